//! Pieces of iptables rule specs, written as `iptables-save` prints them: protocols, ports,
//! limits, ICMP through `u32`, set members.

use std::fmt::Write;

use crate::compile::{Origin, PortProto, SetPurpose};
use crate::net::{Cidr, Range};
use crate::proto::PortRange;

use super::names::{clean, MULTIPORT_SLOTS};
use super::plan::{err, RenderError};

/// Prefixes of intervals, `/0` split into two `/1` (a `hash:net` set cannot hold `/0`).
pub(super) fn set_members(ranges: &[Range]) -> Vec<Cidr> {
    let mut out = Vec::new();
    for r in ranges {
        if *r == Range::all(r.family) {
            let half = Range::all(r.family).hi / 2;
            out.extend(
                Range {
                    family: r.family,
                    lo: 0,
                    hi: half,
                }
                .to_prefixes(),
            );
            out.extend(
                Range {
                    family: r.family,
                    lo: half + 1,
                    hi: r.hi,
                }
                .to_prefixes(),
            );
        } else {
            out.extend(r.to_prefixes());
        }
    }
    out
}

/// A prefix as iptables prints it: always with its length.
pub fn cidr_text(c: &Cidr) -> String {
    format!("{}/{}", c.net().network(), c.net().prefix_len())
}

pub(super) fn purpose_text(p: &SetPurpose) -> String {
    match p {
        SetPurpose::Members(g) => format!("members of {g}"),
        SetPurpose::Managed => "managed_cidrs".into(),
        SetPurpose::Local => "local_cidrs".into(),
        SetPurpose::Gateway => "gateway_cidrs".into(),
    }
}

pub(super) fn origin_text(o: &Origin) -> String {
    clean(&o.to_string())
}

/// A `-m limit` as iptables prints it: the kernel keeps 10000/rate as an integer, and the
/// default burst (5) is not printed.
pub(super) fn limit_text(rate: u32, burst: u32) -> Result<String, RenderError> {
    if !(1..=10_000).contains(&rate) || !(1..=10_000).contains(&burst) {
        return err(format!(
            "limit rate {rate}/second burst {burst}: iptables takes 1-10000 for both"
        ));
    }
    let printed = 10_000 / (10_000 / rate);
    let mut s = format!("-m limit --limit {printed}/sec");
    if burst != 5 {
        let _ = write!(s, " --limit-burst {burst}");
    }
    Ok(s)
}

/// Protocol names iptables' own table knows (and prints when /etc/protocols has no entry);
/// other protocols are rendered as numbers.
pub const BUILTIN_PROTOS: &[(&str, u8)] = &[
    ("tcp", 6),
    ("sctp", 132),
    ("udp", 17),
    ("udplite", 136),
    ("icmp", 1),
    ("ipv6-icmp", 58),
    ("icmpv6", 58),
    ("esp", 50),
    ("ah", 51),
    ("ipv6-mh", 135),
    ("mh", 135),
    ("all", 0),
];

pub(super) fn proto_text(n: u8) -> String {
    match n {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "ipv6-icmp".into(),
        50 => "esp".into(),
        51 => "ah".into(),
        132 => "sctp".into(),
        136 => "udplite".into(),
        n => n.to_string(),
    }
}

pub(super) fn port_text(r: &PortRange) -> String {
    if r.first == r.last {
        r.first.to_string()
    } else {
        format!("{}:{}", r.first, r.last)
    }
}

/// `(-p part, -m part)` alternatives for a port match.
pub(super) fn port_alternatives(proto: PortProto, ports: &[PortRange]) -> Vec<(String, String)> {
    let name = match proto {
        PortProto::Tcp => "tcp",
        PortProto::Udp => "udp",
    };
    let p = format!("-p {name}");
    if let [one] = ports {
        if *one == PortRange::ALL {
            return vec![(p, String::new())];
        }
        return vec![(p, format!("-m {name} --dport {}", port_text(one)))];
    }
    let mut out = Vec::new();
    let mut chunk: Vec<String> = Vec::new();
    let mut slots = 0;
    for r in ports {
        let need = if r.first == r.last { 1 } else { 2 };
        if slots + need > MULTIPORT_SLOTS {
            out.push((
                p.clone(),
                format!("-m multiport --dports {}", chunk.join(",")),
            ));
            chunk.clear();
            slots = 0;
        }
        chunk.push(port_text(r));
        slots += need;
    }
    if !chunk.is_empty() {
        out.push((p, format!("-m multiport --dports {}", chunk.join(","))));
    }
    out
}

/// The `u32` expression for "the first byte (type) / second byte (code) of the IPv4 payload".
pub(super) fn u32_icmp(t: u8, code: Option<u8>) -> String {
    let mut e = format!("0x0>>0x16&0x3c@0x0>>0x18={t:#x}");
    if let Some(c) = code {
        let _ = write!(e, "&&0x0>>0x16&0x3c@0x0>>0x10&0xff={c:#x}");
    }
    format!("-m u32 --u32 \"{e}\"")
}
