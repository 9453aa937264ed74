//! IR -> nft script text, through the template in `nft-templates/` (embedded in the binary).
//!
//! The table block is written exactly as `nft -s -p list table inet reyes` prints it (symbolic
//! ICMP names, numeric protocols, elements in address order), so the read-back after an apply
//! can be compared with what was rendered, normalised only for whitespace.

use std::fmt::Write;

use minijinja::{context, Environment};
use serde::Serialize;

use crate::compile::{
    AddrKey, AddrMatch, CtState, Match, PortProto, Rule, Ruleset, Target, Verdict, INPUT_CHAIN,
    TABLE,
};
use crate::net::{Family, Range};

const TEMPLATE: &str = include_str!("../../nft-templates/ruleset.nft.j2");

/// The script could not be rendered (a template bug; never input-dependent).
#[derive(Debug, thiserror::Error)]
#[error("nft template: {0}")]
pub struct RenderError(pub minijinja::Error);

#[derive(Serialize)]
struct SetView {
    name: String,
    #[serde(rename = "type")]
    ty: &'static str,
    elements: String,
}

#[derive(Serialize)]
struct ChainView {
    name: String,
    hook: Option<String>,
    rules: Vec<String>,
}

fn addr_type(f: Family) -> &'static str {
    match f {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    }
}

fn join_ranges(rs: &[Range]) -> String {
    let mut s = String::new();
    for (i, r) in rs.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{r}");
    }
    s
}

/// The name of a dispatch map.
pub fn map_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "dst4",
        Family::V6 => "dst6",
    }
}

fn saddr_kw(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip saddr",
        Family::V6 => "ip6 saddr",
    }
}

fn daddr_kw(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip daddr",
        Family::V6 => "ip6 daddr",
    }
}

fn addr_text(kw: &str, addrs: &AddrMatch, negate: bool) -> String {
    let op = if negate { "!= " } else { "" };
    let what = match addrs {
        AddrMatch::Set(name) => format!("@{name}"),
        AddrMatch::Literal(rs) => list(rs, |r| r.to_string()),
    };
    format!("{kw} {op}{what}")
}

/// nft's names for ICMP types (as `nft list` prints them).
pub fn icmp_type_name(t: u8) -> Option<&'static str> {
    Some(match t {
        0 => "echo-reply",
        3 => "destination-unreachable",
        4 => "source-quench",
        5 => "redirect",
        8 => "echo-request",
        9 => "router-advertisement",
        10 => "router-solicitation",
        11 => "time-exceeded",
        12 => "parameter-problem",
        13 => "timestamp-request",
        14 => "timestamp-reply",
        15 => "info-request",
        16 => "info-reply",
        17 => "address-mask-request",
        18 => "address-mask-reply",
        _ => return None,
    })
}

/// nft's names for ICMP codes.
pub fn icmp_code_name(c: u8) -> Option<&'static str> {
    Some(match c {
        0 => "net-unreachable",
        1 => "host-unreachable",
        2 => "prot-unreachable",
        3 => "port-unreachable",
        4 => "frag-needed",
        9 => "net-prohibited",
        10 => "host-prohibited",
        13 => "admin-prohibited",
        _ => return None,
    })
}

/// nft's names for ICMPv6 types.
pub fn icmpv6_type_name(t: u8) -> Option<&'static str> {
    Some(match t {
        1 => "destination-unreachable",
        2 => "packet-too-big",
        3 => "time-exceeded",
        4 => "parameter-problem",
        128 => "echo-request",
        129 => "echo-reply",
        130 => "mld-listener-query",
        131 => "mld-listener-report",
        132 => "mld-listener-done",
        133 => "nd-router-solicit",
        134 => "nd-router-advert",
        135 => "nd-neighbor-solicit",
        136 => "nd-neighbor-advert",
        137 => "nd-redirect",
        138 => "router-renumbering",
        141 => "ind-neighbor-solicit",
        142 => "ind-neighbor-advert",
        143 => "mld2-listener-report",
        _ => return None,
    })
}

/// nft's names for ICMPv6 codes.
pub fn icmpv6_code_name(c: u8) -> Option<&'static str> {
    Some(match c {
        0 => "no-route",
        1 => "admin-prohibited",
        3 => "addr-unreachable",
        4 => "port-unreachable",
        5 => "policy-fail",
        6 => "reject-route",
        _ => return None,
    })
}

/// A symbol table: number -> nft's name.
type Namer = fn(u8) -> Option<&'static str>;

fn named(v: u8, f: Namer) -> String {
    f(v).map(str::to_string).unwrap_or_else(|| v.to_string())
}

fn list<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
    if items.len() == 1 {
        f(&items[0])
    } else {
        let parts: Vec<String> = items.iter().map(f).collect();
        format!("{{ {} }}", parts.join(", "))
    }
}

fn match_text(m: &Match) -> String {
    match m {
        Match::Iif(name) => format!("iif \"{name}\""),
        Match::CtState(states) => {
            let s: Vec<&str> = states
                .iter()
                .map(|s| match s {
                    CtState::Established => "established",
                    CtState::Related => "related",
                })
                .collect();
            format!("ct state {}", s.join(","))
        }
        Match::Ipsec(true) => "meta ipsec exists".into(),
        Match::Ipsec(false) => "meta ipsec missing".into(),
        Match::IpsecOut(true) => "rt ipsec exists".into(),
        Match::IpsecOut(false) => "rt ipsec missing".into(),
        Match::Saddr {
            family,
            addrs,
            negate,
        } => addr_text(saddr_kw(*family), addrs, *negate),
        Match::Daddr {
            family,
            addrs,
            negate,
        } => addr_text(daddr_kw(*family), addrs, *negate),
        Match::L4Proto(ps) => format!("meta l4proto {}", list(ps, |p| p.to_string())),
        Match::Dport { proto, ports } => {
            let kw = match proto {
                PortProto::Tcp => "tcp",
                PortProto::Udp => "udp",
            };
            format!("{kw} dport {}", list(ports, |p| p.to_string()))
        }
        Match::Icmp { v6, types, code } => {
            let (kw, tn, cn): (&str, Namer, Namer) = if *v6 {
                ("icmpv6", icmpv6_type_name, icmpv6_code_name)
            } else {
                ("icmp", icmp_type_name, icmp_code_name)
            };
            let mut s = format!("{kw} type {}", list(types, |t| named(*t, tn)));
            if let Some(c) = code {
                let _ = write!(s, " {kw} code {}", named(*c, cn));
            }
            s
        }
        Match::Limit { rate, burst } => format!("limit rate {rate}/second burst {burst} packets"),
    }
}

/// One rule as nft prints it.
pub fn rule_text(r: &Rule) -> String {
    let mut parts: Vec<String> = r.matches.iter().map(match_text).collect();
    if let Some(log) = &r.log {
        parts.push(format!("log prefix \"{}\"", log.prefix.replace('"', "")));
    }
    if let Some(c) = &r.counter {
        parts.push(format!("counter name \"{c}\""));
    }
    match &r.verdict {
        Verdict::Accept => parts.push("accept".into()),
        Verdict::Drop => parts.push("drop".into()),
        Verdict::Continue => {}
        Verdict::CtLabel(bit) => parts.push(format!("ct label set {bit}")),
        Verdict::Jump(c) => parts.push(format!("jump {c}")),
        Verdict::Dispatch(f) => {
            parts.push(format!("{} vmap @{}", daddr_kw(*f), map_name(*f)));
        }
        Verdict::DispatchBy { map, family, key } => {
            let kw = match key {
                AddrKey::Source => saddr_kw(*family),
                AddrKey::Destination => daddr_kw(*family),
            };
            parts.push(format!("{kw} vmap @{map}"));
        }
    }
    parts.join(" ")
}

/// A short description of the target, for the header.
pub fn target_text(t: &Target) -> String {
    match t {
        Target::AllGroups => "all groups".into(),
        Target::Host(a) if a.is_empty() => "a host with no addresses".into(),
        Target::Host(a) => {
            let v: Vec<String> = a.iter().map(|a| a.to_string()).collect();
            format!("host {}", v.join(" "))
        }
    }
}

/// `type filter hook input priority filter; policy accept;` for a base chain at `hook`.
fn hook_text(b: &crate::compile::BaseChain, hook: crate::compile::Hook) -> String {
    let priority = match b.priority {
        crate::compile::PRIORITY_FILTER => "filter".to_string(),
        p => p.to_string(),
    };
    format!(
        "type filter hook {} priority {priority}; policy {};",
        hook.name(),
        b.policy.name()
    )
}

/// Render the full script: header comments, `add table`, `delete table`, the table block.
pub fn render(rs: &Ruleset) -> Result<String, RenderError> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    env.add_template("ruleset", TEMPLATE).map_err(RenderError)?;
    let sets: Vec<SetView> = rs
        .sets
        .iter()
        .map(|s| SetView {
            name: s.name.to_string(),
            ty: addr_type(s.family),
            elements: join_ranges(&s.elements),
        })
        .collect();
    let map_view = |name: &str, f: Family, entries: &[crate::compile::DispatchEntry]| {
        let elements = entries
            .iter()
            .map(|e| format!("{} : jump {}", e.range, e.chain))
            .collect::<Vec<_>>()
            .join(", ");
        SetView {
            name: name.to_string(),
            ty: addr_type(f),
            elements,
        }
    };
    let mut maps: Vec<SetView> = Family::BOTH
        .iter()
        .map(|f| map_view(map_name(*f), *f, rs.dispatch(*f)))
        .collect();
    maps.extend(
        rs.maps
            .iter()
            .map(|m| map_view(&m.name, m.family, &m.entries)),
    );
    let mut chains = vec![ChainView {
        name: INPUT_CHAIN.to_string(),
        hook: Some(hook_text(&rs.base, rs.base.hook)),
        rules: rs.input.iter().map(rule_text).collect(),
    }];
    chains.extend(rs.hooked.iter().map(|c| ChainView {
        name: c.name.to_string(),
        hook: Some(hook_text(&rs.base, c.hook)),
        rules: c.rules.iter().map(rule_text).collect(),
    }));
    chains.extend(rs.chains.iter().map(|c| ChainView {
        name: c.name.to_string(),
        hook: None,
        rules: c.rules.iter().map(rule_text).collect(),
    }));
    let enforce = match rs.meta.enforce {
        crate::config::Enforce::Ipsec => "ipsec",
        crate::config::Enforce::Cidr => "cidr",
    };
    let tmpl = env.get_template("ruleset").map_err(RenderError)?;
    tmpl.render(context! {
        table => TABLE,
        environment => rs.meta.environment,
        policy_digest => rs.meta.policy_digest,
        target => target_text(&rs.meta.target),
        enforce => enforce,
        hooks => rs.hooked.iter().map(|c| c.hook.name()).collect::<Vec<_>>().join(" and "),
        counters => rs.base.counters.iter().map(|c| &*c.name).collect::<Vec<_>>(),
        sets => sets,
        maps => maps,
        chains => chains,
    })
    .map_err(RenderError)
}

/// The `table inet reyes { ... }` block of a rendered script.
pub fn table_block(script: &str) -> &str {
    let head = format!("table inet {TABLE} {{");
    match script.find(&head) {
        Some(i) => &script[i..],
        None => script,
    }
}

/// Collapse all whitespace runs to one space: `nft list` wraps long element lists.
pub fn normalise(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The script that removes reyes' table, and only it, whether or not it exists.
pub fn flush_script() -> String {
    format!("add table inet {TABLE}\ndelete table inet {TABLE}\n")
}

/// Statements of a table listing, one per line, with wrapped element lists joined and then
/// split into one `element X` line each: the unit a ruleset diff is read in.
fn statements(text: &str) -> Vec<String> {
    let mut joined: Vec<String> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        match joined.last_mut() {
            Some(prev) if prev.ends_with(',') => {
                prev.push(' ');
                prev.push_str(t);
            }
            _ => joined.push(t.to_string()),
        }
    }
    let mut out = Vec::new();
    for s in joined {
        if let Some(body) = s
            .strip_prefix("elements = {")
            .and_then(|b| b.strip_suffix('}'))
        {
            out.extend(body.split(',').map(|e| format!("element {}", e.trim())));
        } else {
            out.push(s);
        }
    }
    out
}

/// Lines only in `old` (`- `) and only in `new` (`+ `), in order: a diff of two table
/// listings that ignores nft's line wrapping. Empty when they are equivalent.
pub fn diff(old: &str, new: &str) -> Vec<String> {
    use std::collections::BTreeMap;
    let (a, b) = (statements(old), statements(new));
    let count = |v: &[String]| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for s in v {
            *m.entry(s.clone()).or_default() += 1;
        }
        m
    };
    let (mut ca, mut cb) = (count(&a), count(&b));
    let mut out = Vec::new();
    for s in &a {
        match cb.get_mut(s) {
            Some(n) if *n > 0 => *n -= 1,
            _ => out.push(format!("- {s}")),
        }
    }
    for s in &b {
        match ca.get_mut(s) {
            Some(n) if *n > 0 => *n -= 1,
            _ => out.push(format!("+ {s}")),
        }
    }
    out
}
