//! Document parts as the one-line text people read in `reyes diff` and `reyes query`.

use std::fmt::Write;

use crate::document::DocRule;
use crate::proto::Proto;

/// A document rule as one line: `tcp 443 from groups sg-lb; cidrs 10.0.0.0/8`.
pub fn rule_text(r: &DocRule) -> String {
    let mut s = match r.proto {
        Proto::Tcp | Proto::Udp => format!(
            "{} {}",
            r.proto,
            r.ports
                .map(|p| p.to_string())
                .unwrap_or_else(|| "0-65535".into())
        ),
        Proto::Icmp | Proto::Icmpv6 => match (r.icmp_type, r.icmp_code) {
            (Some(t), Some(c)) => format!("{} type {t} code {c}", r.proto),
            (Some(t), None) => format!("{} type {t}", r.proto),
            _ => format!("{} any type", r.proto),
        },
        Proto::All => "all".to_string(),
        Proto::Number(n) => format!("proto {n}"),
    };
    let mut from = Vec::new();
    if !r.from.groups.is_empty() {
        from.push(format!("groups {}", r.from.groups.join(" ")));
    }
    if !r.from.cidrs.is_empty() {
        let cidrs: Vec<String> = r.from.cidrs.iter().map(|c| c.to_string()).collect();
        from.push(format!("cidrs {}", cidrs.join(" ")));
    }
    if !r.from.prefix_lists.is_empty() {
        from.push(format!("prefix lists {}", r.from.prefix_lists.join(" ")));
    }
    let _ = write!(s, " from {}", from.join("; "));
    s
}
