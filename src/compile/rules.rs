//! The rules of the groups' chains: one document rule becomes, for each family, one rule per
//! source group (its member set, or its few intervals inline: [`super::layout`]) and one for its
//! literal prefixes, each with the protocol match and, when accept logging is on, a
//! rate-limited log rule in front.

use std::collections::BTreeMap;

use super::ir::*;
use super::{layout, GroupNames, HostContext, LOG_ACCEPT_RATE};
use crate::document::{DocRule, Policy};
use crate::net::{self, Family, Range};
use crate::proto::{self, PortRange, Proto};

/// The protocol part of a rule. `ports: None` for tcp/udp means every port.
pub(super) fn proto_matches(
    proto: Proto,
    ports: Option<PortRange>,
    icmp_type: Option<u8>,
    icmp_code: Option<u8>,
) -> Vec<Match> {
    match proto {
        Proto::Tcp | Proto::Udp => {
            let p = if proto == Proto::Tcp {
                PortProto::Tcp
            } else {
                PortProto::Udp
            };
            let num = if proto == Proto::Tcp {
                proto::TCP
            } else {
                proto::UDP
            };
            match ports {
                Some(r) if r != PortRange::ALL => vec![Match::Dport {
                    proto: p,
                    ports: vec![r],
                }],
                _ => vec![Match::L4Proto(vec![num])],
            }
        }
        Proto::Icmp | Proto::Icmpv6 => {
            let v6 = proto == Proto::Icmpv6;
            match icmp_type {
                Some(t) => vec![Match::Icmp {
                    v6,
                    types: vec![t],
                    code: icmp_code,
                }],
                None => vec![Match::L4Proto(vec![if v6 {
                    proto::ICMPV6
                } else {
                    proto::ICMP
                }])],
            }
        }
        Proto::All => vec![],
        Proto::Number(n) => vec![Match::L4Proto(vec![n])],
    }
}

fn family_allowed(proto: Proto, family: Family) -> bool {
    match proto {
        Proto::Icmp => family == Family::V4,
        Proto::Icmpv6 => family == Family::V6,
        _ => true,
    }
}

/// What the rules of every group share while they are compiled: the document, the names made
/// once per group, the source layout (member sets so far), and the literal-source descriptions
/// (made once each, so that the rules of a large estate share them).
pub(super) struct Shared<'a> {
    pub(super) policy: &'a Policy,
    pub(super) names: &'a [GroupNames],
    pub(super) ctx: &'a HostContext,
    pub(super) layout: &'a mut layout::SourceLayout,
    pub(super) sources: &'a mut BTreeMap<String, Name>,
}

/// The rules of one document rule, appended to `out`: for each family, one rule per source
/// group with members of that family (naming its member set, or one rule per member interval
/// when it has few: [`layout`]), and one for the literal prefixes (cidrs and prefix-list
/// entries, merged; again one rule per interval when there are few). `egress`: an egress rule,
/// whose `from` holds its destinations.
pub(super) fn group_rule(
    sh: &mut Shared<'_>,
    gi: usize,
    index: usize,
    r: &DocRule,
    egress: bool,
    out: &mut Vec<Rule>,
) {
    let Shared {
        policy,
        names,
        ctx,
        layout,
        sources,
    } = sh;
    let policy: &Policy = policy;
    let gid = &names[gi].id;
    let proto = proto_matches(r.proto, r.ports, r.icmp_type, r.icmp_code);
    let log = ctx.log_accept.then(|| Log {
        prefix: log_prefix(if egress { "egress" } else { "accept" }, gid, index),
    });
    let accepted = Name::from(COUNTER_ACCEPTED);
    let mut push = |family: Family, addrs: AddrMatch, source: Name| {
        let mut matches = Vec::with_capacity(1 + proto.len());
        matches.push(if egress {
            Match::Daddr {
                family,
                addrs,
                negate: false,
            }
        } else {
            Match::Saddr {
                family,
                addrs,
                negate: false,
            }
        });
        matches.extend(proto.iter().cloned());
        let origin = if egress {
            Origin::EgressRule {
                group: gid.clone(),
                rule: index,
                dest: source.clone(),
            }
        } else {
            Origin::GroupRule {
                group: gid.clone(),
                rule: index,
                source: source.clone(),
            }
        };
        if let Some(log) = &log {
            // Logged by a rule of its own, rate-limited like drops: a limit on the accepting
            // rule would stop it accepting once over the rate.
            let mut limited = matches.clone();
            limited.push(Match::Limit {
                rate: LOG_ACCEPT_RATE.0,
                burst: LOG_ACCEPT_RATE.1,
            });
            out.push(Rule {
                matches: limited,
                log: Some(log.clone()),
                counter: None,
                verdict: Verdict::Continue,
                origin: origin.clone(),
            });
        }
        out.push(Rule {
            matches,
            log: None,
            counter: Some(accepted.clone()),
            verdict: Verdict::Accept,
            origin,
        });
    };
    for family in Family::BOTH {
        if !family_allowed(r.proto, family) {
            continue;
        }
        for src in &r.from.groups {
            let Ok(si) = policy
                .groups
                .binary_search_by(|g| g.id.as_str().cmp(src.as_str()))
            else {
                continue;
            };
            let g = &policy.groups[si];
            if g.members.iter().any(|m| m.family() == family) {
                match layout.source(policy, names, family, si) {
                    layout::Source::Set(name) => {
                        push(family, AddrMatch::Set(name), names[si].source.clone())
                    }
                    layout::Source::Inline(ranges) => {
                        for r in ranges {
                            push(
                                family,
                                AddrMatch::Literal(vec![r]),
                                names[si].source.clone(),
                            );
                        }
                    }
                }
            }
        }
        let mut literal: Vec<Range> = r
            .from
            .cidrs
            .iter()
            .filter(|c| c.family() == family)
            .map(|c| c.range())
            .collect();
        let mut what = Vec::new();
        if !literal.is_empty() {
            what.push("cidrs".to_string());
        }
        for pl in &r.from.prefix_lists {
            if let Some(p) = policy.prefix_list(pl) {
                let before = literal.len();
                literal.extend(
                    p.cidrs
                        .iter()
                        .filter(|c| c.family() == family)
                        .map(|c| c.range()),
                );
                if literal.len() > before {
                    what.push(format!("prefix list {pl}"));
                }
            }
        }
        if !literal.is_empty() {
            let what = what.join(", ");
            let source = match sources.get(&what) {
                Some(n) => n.clone(),
                None => sources
                    .entry(what.clone())
                    .or_insert_with(|| Name::from(what))
                    .clone(),
            };
            let literal = net::merge(literal);
            if literal.len() <= layout.layout.inline_max.max(1) {
                for r in literal {
                    push(family, AddrMatch::Literal(vec![r]), source.clone());
                }
            } else {
                push(family, AddrMatch::Literal(literal), source);
            }
        }
    }
}

fn log_prefix(what: &str, gid: &str, index: usize) -> String {
    let mut g: String = gid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._:/@+=-".contains(*c))
        .collect();
    g.truncate(96);
    format!("reyes {what} {g}/{index}: ")
}
