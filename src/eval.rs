//! The flow evaluator: judges a flow against a compiled [`Ruleset`], walking the IR exactly as
//! the kernel walks the applied table, and says which rule decided.
//!
//! It reads the IR, not the document, so it judges what is applied: the base chain in order,
//! `Dispatch` looks the destination up in the family's dispatch map and jumps to that chain,
//! `Jump` evaluates a chain and comes back when it falls off its end, the first `Accept` or
//! `Drop` is final, a chain that falls off the end of the base chain meets its policy
//! (accept). Counters and log statements change nothing; a `Limit` match is taken as not
//! matching (it only ever rate-limits a log rule).
//!
//! A flow is one packet's worth of facts (addresses, protocol, port or ICMP type and code,
//! whether it arrived over IPsec, its conntrack state). A fact may be left open (`proto: all`,
//! a tcp flow without a port, an ICMP flow without a type or code): the flow then stands for
//! every packet with any value there, and the answer is ALLOW only when one rule accepts all of
//! them (a rule for `all`, a port range covering every port, an ICMP rule for any type ...).

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::compile::{
    AddrKey, AddrMatch, CtState, Hook, Match, Origin, PortProto, Rule, Ruleset, Verdict,
};
use crate::net::{Family, Range};
use crate::proto::Proto;

/// The kernel's bound on nested jumps (`NFT_JUMP_STACK_SIZE`).
pub const MAX_JUMP_DEPTH: usize = 16;

/// The conntrack state a packet is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnState {
    /// The first packet of a connection (or untracked).
    #[default]
    New,
    /// Part of a known connection.
    Established,
    /// Related to a known connection (ICMP errors ...).
    Related,
}

/// A flow to judge: what the kernel sees of one inbound packet. `None` in an optional field
/// means "any value" (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// Source address.
    pub src: IpAddr,
    /// Destination (local) address.
    pub dst: IpAddr,
    /// Protocol; `All` stands for every protocol.
    pub proto: Proto,
    /// tcp/udp destination port (`None`: every port).
    pub port: Option<u16>,
    /// icmp/icmpv6 type (`None`: every type).
    pub icmp_type: Option<u8>,
    /// icmp/icmpv6 code (`None`: every code).
    pub icmp_code: Option<u8>,
    /// Arrived through an IPsec SA.
    pub via_ipsec: bool,
    /// Conntrack state.
    pub state: ConnState,
    /// Input interface, when it matters (`lo`); `None` is some other interface.
    pub iif: Option<String>,
    /// Where the packet meets the firewall: addressed to this host (input, the default),
    /// routed on by it (forward: a gateway), or sent by it (output: egress).
    #[serde(skip_serializing_if = "is_input")]
    pub hook: Hook,
    /// Leaves through an IPsec SA (forward and output).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub leaves_ipsec: bool,
}

fn is_input(h: &Hook) -> bool {
    *h == Hook::Input
}

impl Flow {
    /// A new flow of `proto` from `src` to `dst`, every port/type open, not over IPsec, new.
    pub fn new(src: IpAddr, dst: IpAddr, proto: Proto) -> Flow {
        Flow {
            src,
            dst,
            proto,
            port: None,
            icmp_type: None,
            icmp_code: None,
            via_ipsec: false,
            state: ConnState::New,
            iif: None,
            hook: Hook::Input,
            leaves_ipsec: false,
        }
    }

    /// Met at `hook` (input, forward or output).
    pub fn at(mut self, hook: Hook) -> Flow {
        self.hook = hook;
        self
    }

    /// Marked as leaving over IPsec (or not).
    pub fn leaves_ipsec(mut self, yes: bool) -> Flow {
        self.leaves_ipsec = yes;
        self
    }

    /// With a destination port.
    pub fn port(mut self, port: u16) -> Flow {
        self.port = Some(port);
        self
    }

    /// With an ICMP type and optionally a code.
    pub fn icmp(mut self, icmp_type: u8, icmp_code: Option<u8>) -> Flow {
        self.icmp_type = Some(icmp_type);
        self.icmp_code = icmp_code;
        self
    }

    /// Marked as having arrived over IPsec (or not).
    pub fn via_ipsec(mut self, yes: bool) -> Flow {
        self.via_ipsec = yes;
        self
    }

    /// The address family (of the source).
    pub fn family(&self) -> Family {
        Family::of(&self.src)
    }

    /// Whether the flow is one a packet can have: both addresses of one family, ports only for
    /// tcp/udp, ICMP type and code only for the ICMP of the family, a code only with a type.
    pub fn check(&self) -> Result<(), FlowError> {
        if Family::of(&self.src) != Family::of(&self.dst) {
            return Err(FlowError::MixedFamilies(self.src, self.dst));
        }
        if self.port.is_some() && !self.proto.has_ports() {
            return Err(FlowError::PortWithout(self.proto));
        }
        if (self.icmp_type.is_some() || self.icmp_code.is_some()) && !self.proto.is_icmp() {
            return Err(FlowError::IcmpWithout(self.proto));
        }
        if self.icmp_code.is_some() && self.icmp_type.is_none() {
            return Err(FlowError::CodeWithoutType);
        }
        match (self.proto, self.family()) {
            (Proto::Icmp, Family::V6) | (Proto::Icmpv6, Family::V4) => {
                Err(FlowError::IcmpFamily(self.proto, self.src))
            }
            // nftables' `meta l4proto` skips these to the header after them (as the kernel does).
            (Proto::Number(n @ (0 | 43 | 44 | 51 | 60)), Family::V6) => {
                Err(FlowError::ExtensionHeader(n))
            }
            _ => Ok(()),
        }
    }
}

/// A flow no packet can have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// Source and destination of different families.
    #[error("{0} and {1} are of different address families")]
    MixedFamilies(IpAddr, IpAddr),
    /// A port for a protocol without ports.
    #[error("a port only applies to tcp and udp, not {0}")]
    PortWithout(Proto),
    /// An ICMP type or code for another protocol.
    #[error("an ICMP type or code only applies to icmp and icmpv6, not {0}")]
    IcmpWithout(Proto),
    /// A code without a type.
    #[error("an ICMP code needs an ICMP type")]
    CodeWithoutType,
    /// icmp with IPv6 addresses, or icmpv6 with IPv4 ones.
    #[error("{}", icmp_family_text(*.0, .1))]
    IcmpFamily(Proto, IpAddr),
    /// An IPv6 extension header as the protocol.
    #[error("protocol {0} is an IPv6 extension header: the firewall judges the protocol after it; ask about that one")]
    ExtensionHeader(u8),
}

fn icmp_family_text(proto: Proto, src: &IpAddr) -> String {
    if proto == Proto::Icmp {
        format!("icmp is IPv4's; {src} is IPv6 (use icmpv6)")
    } else {
        format!("icmpv6 is IPv6's; {src} is IPv4 (use icmp)")
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {} {}", self.src, self.dst, self.proto)?;
        if let Some(p) = self.port {
            write!(f, "/{p}")?;
        } else if self.proto.has_ports() {
            write!(f, "/any port")?;
        }
        if self.proto.is_icmp() {
            match (self.icmp_type, self.icmp_code) {
                (Some(t), Some(c)) => write!(f, " type {t} code {c}")?,
                (Some(t), None) => write!(f, " type {t}")?,
                _ => write!(f, " any type")?,
            }
        }
        match (self.via_ipsec, self.leaves_ipsec) {
            (true, true) => write!(f, " (in and out over IPsec)")?,
            (true, false) => write!(f, " (over IPsec)")?,
            (false, true) => write!(f, " (leaving over IPsec)")?,
            (false, false) => {}
        }
        match self.hook {
            Hook::Input => {}
            Hook::Forward => write!(f, " (forwarded)")?,
            Hook::Output => write!(f, " (sent)")?,
        }
        match self.state {
            ConnState::New => {}
            ConnState::Established => write!(f, " (established)")?,
            ConnState::Related => write!(f, " (related)")?,
        }
        Ok(())
    }
}

/// ALLOW or DENY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Decision {
    /// Accepted (in reyes' table).
    Allow,
    /// Dropped.
    Deny,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Decision::Allow => "ALLOW",
            Decision::Deny => "DENY",
        })
    }
}

/// The answer for one flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evaluation {
    /// ALLOW or DENY.
    pub decision: Decision,
    /// The rule whose verdict was final (the first to match, as in the kernel).
    pub decided_by: Origin,
    /// For an ALLOW by the groups: every group rule (and source) that matches, in chain order;
    /// the first is `decided_by`. Empty otherwise.
    pub matched: Vec<Origin>,
    /// The groups the destination was dispatched to (empty: it is in no group here).
    pub dest_groups: Vec<String>,
    /// The chains entered, in order (the base chain first).
    pub chains: Vec<String>,
    /// For a dispatch by source (egress): the groups the source was dispatched to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_groups: Vec<String>,
}

impl Evaluation {
    /// A deny that audit mode accepts (and logs and counts) instead of dropping.
    pub fn audited(&self) -> bool {
        matches!(self.decided_by, Origin::Audit(_))
    }
}

/// The ruleset is not one the kernel would have loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// A rule names a set that does not exist.
    #[error("ruleset names set {0:?}, which it does not define")]
    UnknownSet(String),
    /// A rule looks up a dispatch map that does not exist.
    #[error("ruleset looks up map {0:?}, which it does not define")]
    UnknownMap(String),
    /// A rule or dispatch entry names a chain that does not exist.
    #[error("ruleset jumps to chain {0:?}, which it does not define")]
    UnknownChain(String),
    /// Jumps nest deeper than the kernel allows (or loop).
    #[error("chains nest deeper than {MAX_JUMP_DEPTH} jumps (a loop?)")]
    TooDeep,
}

/// How much of a flow a match covers: none, part (of an open field) or all of its packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cover {
    None,
    Part,
    All,
}

impl Cover {
    fn from_bool(b: bool) -> Cover {
        if b {
            Cover::All
        } else {
            Cover::None
        }
    }
}

/// What a chain walk ended in.
enum Walk<'r> {
    /// A final verdict and the rule that gave it.
    Final(Decision, &'r Origin),
    /// Fell off the end of the chain.
    Return,
}

struct Evaluator<'r> {
    rs: &'r Ruleset,
    flow: &'r Flow,
    chains: Vec<String>,
    dest_groups: Vec<String>,
    source_groups: Vec<String>,
    dispatched: Option<&'r str>,
}

/// Judge `flow` against `rs`, in the base chain of the flow's hook. A ruleset without a chain
/// on that hook lets everything through there.
pub fn evaluate(rs: &Ruleset, flow: &Flow) -> Result<Evaluation, EvalError> {
    let Some((name, rules)) = rs.base_chain(flow.hook) else {
        return Ok(Evaluation {
            decision: Decision::Allow,
            decided_by: Origin::Base(format!("no reyes chain on the {} hook", flow.hook.name())),
            matched: vec![],
            dest_groups: vec![],
            chains: vec![],
            source_groups: vec![],
        });
    };
    let mut ev = Evaluator {
        rs,
        flow,
        chains: vec![name.to_string()],
        dest_groups: vec![],
        source_groups: vec![],
        dispatched: None,
    };
    let (decision, origin) = match ev.chain(rules, 0)? {
        Walk::Final(d, o) => (d, o.clone()),
        // The base chain's policy is accept.
        Walk::Return => (
            Decision::Allow,
            Origin::Base("base chain policy accept".into()),
        ),
    };
    let mut matched = Vec::new();
    if decision == Decision::Allow
        && matches!(origin, Origin::GroupRule { .. } | Origin::EgressRule { .. })
    {
        if let Some(c) = ev.dispatched {
            ev.collect(c, 0, &mut matched)?;
        }
    }
    Ok(Evaluation {
        decision,
        decided_by: origin,
        matched,
        dest_groups: ev.dest_groups,
        chains: ev.chains,
        source_groups: ev.source_groups,
    })
}

impl<'r> Evaluator<'r> {
    fn chain_rules(&self, name: &str) -> Result<&'r [Rule], EvalError> {
        self.rs
            .chain(name)
            .map(|c| c.rules.as_slice())
            .ok_or_else(|| EvalError::UnknownChain(name.to_string()))
    }

    fn chain(&mut self, rules: &'r [Rule], depth: usize) -> Result<Walk<'r>, EvalError> {
        for rule in rules {
            let cover = self.rule_cover(rule)?;
            if cover == Cover::None {
                continue;
            }
            match &rule.verdict {
                // Some packets of an open flow are dropped: not every packet is allowed.
                Verdict::Drop => return Ok(Walk::Final(Decision::Deny, &rule.origin)),
                // The rest of an open flow goes on, as the kernel would for those packets.
                _ if cover == Cover::Part => continue,
                // Audit mode accepts what no rule allows: the policy's answer is still deny,
                // and the origin says that the follower lets it through.
                Verdict::Accept if matches!(rule.origin, Origin::Audit(_)) => {
                    return Ok(Walk::Final(Decision::Deny, &rule.origin))
                }
                Verdict::Accept => return Ok(Walk::Final(Decision::Allow, &rule.origin)),
                Verdict::Continue | Verdict::CtLabel(_) => continue,
                Verdict::Jump(name) => {
                    if let Walk::Final(d, o) = self.jump(name, depth)? {
                        return Ok(Walk::Final(d, o));
                    }
                }
                Verdict::Dispatch(family) => {
                    if *family != self.flow.family() {
                        // `ip daddr vmap` on an IPv6 packet: the implied family match fails.
                        continue;
                    }
                    let dst = &self.flow.dst;
                    let Some(entry) = self
                        .rs
                        .dispatch(*family)
                        .iter()
                        .find(|e| e.range.contains(dst))
                    else {
                        continue;
                    };
                    if self.dispatched.is_none() {
                        self.dispatched = Some(&*entry.chain);
                        self.dest_groups = self.groups_of(&entry.chain);
                    }
                    if let Walk::Final(d, o) = self.jump(&entry.chain, depth)? {
                        return Ok(Walk::Final(d, o));
                    }
                }
                Verdict::DispatchBy { map, .. } => {
                    let map = self
                        .rs
                        .map(map)
                        .ok_or_else(|| EvalError::UnknownMap(map.to_string()))?;
                    if map.family != self.flow.family() {
                        continue;
                    }
                    let addr = match map.key {
                        AddrKey::Source => &self.flow.src,
                        AddrKey::Destination => &self.flow.dst,
                    };
                    let Some(entry) = map.entries.iter().find(|e| e.range.contains(addr)) else {
                        continue;
                    };
                    if self.dispatched.is_none() {
                        self.dispatched = Some(&*entry.chain);
                        let groups = self.groups_of(&entry.chain);
                        match map.key {
                            AddrKey::Source => self.source_groups = groups,
                            AddrKey::Destination => self.dest_groups = groups,
                        }
                    }
                    if let Walk::Final(d, o) = self.jump(&entry.chain, depth)? {
                        return Ok(Walk::Final(d, o));
                    }
                }
            }
        }
        Ok(Walk::Return)
    }

    fn jump(&mut self, name: &str, depth: usize) -> Result<Walk<'r>, EvalError> {
        if depth + 1 >= MAX_JUMP_DEPTH {
            return Err(EvalError::TooDeep);
        }
        let rules = self.chain_rules(name)?;
        self.chains.push(name.to_string());
        self.chain(rules, depth + 1)
    }

    /// Every accepting group rule that covers the flow in chain `name` and what it jumps to.
    fn collect(&self, name: &str, depth: usize, out: &mut Vec<Origin>) -> Result<(), EvalError> {
        if depth + 1 >= MAX_JUMP_DEPTH {
            return Err(EvalError::TooDeep);
        }
        for rule in self.chain_rules(name)? {
            if self.rule_cover(rule)? != Cover::All {
                continue;
            }
            match &rule.verdict {
                Verdict::Accept
                    if matches!(
                        rule.origin,
                        Origin::GroupRule { .. } | Origin::EgressRule { .. }
                    ) =>
                {
                    out.push(rule.origin.clone())
                }
                Verdict::Jump(c) => self.collect(c, depth + 1, out)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn groups_of(&self, chain: &str) -> Vec<String> {
        use crate::compile::ChainKind;
        match self.rs.chain(chain).map(|c| &c.kind) {
            Some(ChainKind::Group(g) | ChainKind::Egress(g)) => vec![g.clone()],
            Some(ChainKind::Profile(gs) | ChainKind::EgressProfile(gs)) => gs.clone(),
            Some(ChainKind::Audit { groups, .. }) => groups.clone(),
            None => vec![],
        }
    }

    fn rule_cover(&self, rule: &Rule) -> Result<Cover, EvalError> {
        let mut cover = Cover::All;
        for m in &rule.matches {
            cover = cover.min(self.match_cover(m)?);
            if cover == Cover::None {
                break;
            }
        }
        Ok(cover)
    }

    fn match_cover(&self, m: &Match) -> Result<Cover, EvalError> {
        let f = self.flow;
        Ok(match m {
            Match::Iif(name) => Cover::from_bool(f.iif.as_deref() == Some(name.as_str())),
            Match::CtState(states) => Cover::from_bool(match f.state {
                ConnState::New => false,
                ConnState::Established => states.contains(&CtState::Established),
                ConnState::Related => states.contains(&CtState::Related),
            }),
            Match::Ipsec(want) => Cover::from_bool(f.via_ipsec == *want),
            Match::IpsecOut(want) => Cover::from_bool(f.leaves_ipsec == *want),
            Match::Saddr {
                family,
                addrs,
                negate,
            }
            | Match::Daddr {
                family,
                addrs,
                negate,
            } => {
                // `ip saddr` / `ip6 saddr` imply the family, negated or not.
                if *family != f.family() {
                    return Ok(Cover::None);
                }
                let ranges: &[Range] = match addrs {
                    AddrMatch::Literal(rs) => rs,
                    AddrMatch::Set(name) => {
                        &self
                            .rs
                            .set(name)
                            .ok_or_else(|| EvalError::UnknownSet(name.to_string()))?
                            .elements
                    }
                };
                let addr = if matches!(m, Match::Daddr { .. }) {
                    &f.dst
                } else {
                    &f.src
                };
                let inside = ranges.iter().any(|r| r.contains(addr));
                Cover::from_bool(inside != *negate)
            }
            Match::L4Proto(ps) => match f.proto.number() {
                Some(n) => Cover::from_bool(ps.contains(&n)),
                None => cover_of_values(ps.len(), 256),
            },
            Match::Dport { proto, ports } => {
                let want = match proto {
                    PortProto::Tcp => Proto::Tcp,
                    PortProto::Udp => Proto::Udp,
                };
                if f.proto == Proto::All {
                    return Ok(if ports.is_empty() {
                        Cover::None
                    } else {
                        Cover::Part
                    });
                }
                if f.proto != want {
                    return Ok(Cover::None);
                }
                match f.port {
                    Some(p) => Cover::from_bool(ports.iter().any(|r| r.contains(p))),
                    None => {
                        let n: usize = ports
                            .iter()
                            .map(|r| usize::from(r.last - r.first) + 1)
                            .sum();
                        cover_of_values(n, 65536)
                    }
                }
            }
            Match::Icmp { v6, types, code } => {
                let (family, proto) = if *v6 {
                    (Family::V6, Proto::Icmpv6)
                } else {
                    (Family::V4, Proto::Icmp)
                };
                // `icmp type` implies IPv4 and protocol 1; `icmpv6 type` IPv6 and 58.
                if f.family() != family || !(f.proto == proto || f.proto == Proto::All) {
                    return Ok(Cover::None);
                }
                let by_type = match f.icmp_type {
                    Some(t) => Cover::from_bool(types.contains(&t)),
                    None => cover_of_values(types.len(), 256),
                };
                let by_code = match (code, f.icmp_code) {
                    (None, _) => Cover::All,
                    (Some(c), Some(fc)) => Cover::from_bool(*c == fc),
                    (Some(_), None) => Cover::Part,
                };
                let by_proto = if f.proto == Proto::All {
                    Cover::Part
                } else {
                    Cover::All
                };
                by_type.min(by_code).min(by_proto)
            }
            // Rate limiters only ever guard log rules: never part of the verdict.
            Match::Limit { .. } => Cover::None,
        })
    }
}

/// How much of `total` possible values `n` distinct listed values cover.
fn cover_of_values(n: usize, total: usize) -> Cover {
    if n == 0 {
        Cover::None
    } else if n >= total {
        Cover::All
    } else {
        Cover::Part
    }
}

#[cfg(test)]
mod tests;
