//! Gateway mode and egress: the base chains on the forward and output hooks, their dispatch
//! maps and the egress chains of the groups.
//!
//! Forward chain (gateway mode), for a packet the gateway routes, in order:
//! 1. established/related connections are accepted, and in ipsec mode what neither arrived
//!    nor leaves over IPsec (out of scope); then IKE, ESP/AH and the ICMP errors as on hosts;
//! 2. in scope for ingress (arrived over IPsec; cidr mode: source managed and not local): a
//!    destination outside `gateway_cidrs` is out of scope (accepted); the destination is looked
//!    up in the forward map (every group's members, or those in `gateway_cidrs`) and judged by
//!    its groups' ingress rules; what none accepts is dropped;
//! 3. with egress, in scope for egress (leaves over IPsec; cidr mode: destination managed and
//!    not local): the same with the source, the sources map and the groups' egress rules.
//!
//! A packet that both arrives and leaves over IPsec is judged by its destination's ingress
//! rules only: the first verdict is final.
//!
//! Output chain (egress on): what leaves over IPsec (cidr mode: to a managed, non-local
//! destination) is judged by the egress rules of the source address's groups, after the
//! always-accepted list; what none accepts is dropped.
//!
//! A group whose document entry has no `egress` list (the inventory said nothing about
//! egress) may send anything: its egress chain accepts everything.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    base, ipsec_and_icmp_rules, ranges_of, short_hash, CompileError, GroupNames, HostContext,
    Shared, LOG_DROP_RATE,
};
use crate::compile::ir::*;
use crate::config::{Enforce, Mode};
use crate::document::Policy;
use crate::net::{self, Family, Range};

/// Names of the forward chain's maps (destination, source) and the output chain's.
const FORWARD_DST: [&str; 2] = ["fdst4", "fdst6"];
const FORWARD_SRC: [&str; 2] = ["fsrc4", "fsrc6"];
const OUTPUT_SRC: [&str; 2] = ["osrc4", "osrc6"];

fn pick(names: [&str; 2], f: Family) -> Name {
    Name::from(match f {
        Family::V4 => names[0],
        Family::V6 => names[1],
    })
}

/// Gateway mode: every member interval of every group, clipped to `gateway_cidrs` when set,
/// with its group. `None` in host mode.
pub(super) fn forward_labels(policy: &Policy, ctx: &HostContext) -> Option<Vec<(Range, usize)>> {
    if ctx.mode != Mode::Gateway {
        return None;
    }
    let gw: Vec<Range> = net::merge(ctx.gateway_cidrs.iter().map(|c| c.range()).collect());
    let mut out = Vec::new();
    for (gi, g) in policy.groups.iter().enumerate() {
        for m in &g.members {
            let r = m.range();
            if gw.is_empty() {
                out.push((r, gi));
                continue;
            }
            for c in gw.iter().filter(|c| c.family == r.family) {
                let (lo, hi) = (r.lo.max(c.lo), r.hi.min(c.hi));
                if lo <= hi {
                    out.push((
                        Range {
                            family: r.family,
                            lo,
                            hi,
                        },
                        gi,
                    ));
                }
            }
        }
    }
    Some(out)
}

/// Refuse a gateway that would judge nothing: no destination behind it and none of its own
/// addresses in the document.
pub(super) fn check_destinations(
    ctx: &HostContext,
    forward: &[(Range, usize)],
    host_known: bool,
) -> Result<(), CompileError> {
    if forward.is_empty() && !host_known && !ctx.allow_unknown_host {
        let list: Vec<String> = ctx.gateway_cidrs.iter().map(|c| c.to_string()).collect();
        let list = if list.is_empty() {
            "every address".to_string()
        } else {
            list.join(", ")
        };
        return Err(CompileError::NoGatewayDestination(list));
    }
    Ok(())
}

/// Which chain a dispatch entry of a group goes to, and how profiles of several groups are
/// named and built.
#[derive(Clone, Copy)]
pub(super) enum Judged {
    /// Ingress: group chains `g_X`, profiles `p_HASH`.
    Ingress,
    /// Egress: egress chains `e_X`, profiles `pe_HASH`.
    Egress,
}

impl Judged {
    fn chain(self, n: &GroupNames) -> &Name {
        match self {
            Judged::Ingress => &n.chain,
            Judged::Egress => &n.egress,
        }
    }

    fn profile_prefix(self) -> &'static str {
        match self {
            Judged::Ingress => "p_",
            Judged::Egress => "pe_",
        }
    }
}

/// One dispatch entry per disjoint interval of `labelled`: to the chain of its group, or to
/// the profile chain of its groups (made once per set of groups, in `profiles`).
pub(super) fn dispatch_entries(
    labelled: &[(Range, usize)],
    names: &[GroupNames],
    judged: Judged,
    profiles: &mut BTreeMap<Vec<usize>, Name>,
) -> [Vec<DispatchEntry>; 2] {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    net::partition_each(labelled, |range, groups| {
        let chain = match groups {
            [one] => judged.chain(&names[**one]).clone(),
            many => {
                let key: Vec<usize> = many.iter().map(|g| **g).collect();
                profiles
                    .entry(key)
                    .or_insert_with(|| {
                        let ids: Vec<&str> = many.iter().map(|g| &*names[**g].id).collect();
                        Name::from(format!(
                            "{}{}",
                            judged.profile_prefix(),
                            short_hash(&ids.join(","))
                        ))
                    })
                    .clone()
            }
        };
        let entry = DispatchEntry { range, chain };
        match range.family {
            Family::V4 => v4.push(entry),
            Family::V6 => v6.push(entry),
        }
    });
    v4.shrink_to_fit();
    v6.shrink_to_fit();
    [v4, v6]
}

/// The profile chains of `profiles`: a jump to each group's chain.
pub(super) fn profile_chains(
    profiles: BTreeMap<Vec<usize>, Name>,
    names: &[GroupNames],
    judged: Judged,
    chains: &mut Vec<Chain>,
) {
    for (groups, name) in profiles {
        let rules = groups
            .iter()
            .map(|g| Rule {
                matches: vec![],
                log: None,
                counter: None,
                verdict: Verdict::Jump(judged.chain(&names[*g]).clone()),
                origin: Origin::Profile(names[*g].id.clone()),
            })
            .collect();
        let ids: Vec<String> = groups.iter().map(|g| names[*g].id.to_string()).collect();
        chains.push(Chain {
            name,
            kind: match judged {
                Judged::Ingress => ChainKind::Profile(ids),
                Judged::Egress => ChainKind::EgressProfile(ids),
            },
            rules,
        });
    }
}

/// The egress chain of every group in `groups`.
pub(super) fn egress_chains(sh: &mut Shared<'_>, groups: &BTreeSet<usize>, out: &mut Vec<Chain>) {
    let (policy, names) = (sh.policy, sh.names);
    for &gi in groups {
        let g = &policy.groups[gi];
        let mut rules = Vec::new();
        match &g.egress {
            None => rules.push(base(
                vec![],
                Verdict::Accept,
                &format!(
                    "{}: no egress rules in the document (egress unrestricted)",
                    names[gi].id
                ),
            )),
            Some(egress) => {
                for (i, r) in egress.iter().enumerate() {
                    super::group_rule(sh, gi, i, &r.as_rule(), true, &mut rules);
                }
            }
        }
        rules.shrink_to_fit();
        out.push(Chain {
            name: names[gi].egress.clone(),
            kind: ChainKind::Egress(g.id.clone()),
            rules,
        });
    }
}

/// The maps of the forward chain (gateway mode) and the output chain (egress), in that order.
pub(super) struct HookMaps {
    /// Forward: destination -> ingress chains.
    pub forward_dst: Option<[Vec<DispatchEntry>; 2]>,
    /// Forward: source -> egress chains.
    pub forward_src: Option<[Vec<DispatchEntry>; 2]>,
    /// Output: source -> egress chains.
    pub output_src: Option<[Vec<DispatchEntry>; 2]>,
}

impl HookMaps {
    /// Every entry list, for audit mode's wrappers.
    pub fn entries_mut(&mut self) -> impl Iterator<Item = &mut Vec<DispatchEntry>> {
        [
            &mut self.forward_dst,
            &mut self.forward_src,
            &mut self.output_src,
        ]
        .into_iter()
        .flatten()
        .flat_map(|pair| pair.iter_mut())
    }

    /// The maps, named, and the base chains that look them up.
    pub fn finish(self, ctx: &HostContext) -> (Vec<DispatchMap>, Vec<HookedChain>) {
        let mut maps = Vec::new();
        let mut push = |names: [&str; 2], key: AddrKey, pair: Option<[Vec<DispatchEntry>; 2]>| {
            if let Some(pair) = pair {
                for (f, entries) in Family::BOTH.into_iter().zip(pair) {
                    maps.push(DispatchMap {
                        name: pick(names, f),
                        family: f,
                        key,
                        entries,
                    });
                }
            }
        };
        let mut hooked = Vec::new();
        if self.forward_dst.is_some() {
            hooked.push(forward_chain(ctx));
        }
        if self.output_src.is_some() {
            hooked.push(output_chain(ctx));
        }
        push(FORWARD_DST, AddrKey::Destination, self.forward_dst);
        push(FORWARD_SRC, AddrKey::Source, self.forward_src);
        push(OUTPUT_SRC, AddrKey::Source, self.output_src);
        maps.sort_by(|a, b| a.name.cmp(&b.name));
        (maps, hooked)
    }
}

/// The conditions that put a packet in scope, as alternatives: ipsec mode one (arrived over
/// IPsec, or for egress leaves over IPsec), cidr mode one per family (the source, or for egress
/// the destination, in `managed_cidrs` and not in `local_cidrs`).
fn scope_alternatives(enforce: Enforce, judged: Judged) -> Vec<Vec<Match>> {
    match enforce {
        Enforce::Ipsec => vec![vec![match judged {
            Judged::Ingress => Match::Ipsec(true),
            Judged::Egress => Match::IpsecOut(true),
        }]],
        Enforce::Cidr => Family::BOTH
            .into_iter()
            .map(|f| {
                let m = |set: &str, negate| {
                    let addrs = AddrMatch::Set(Name::from(format!("{set}{}", f.digit())));
                    match judged {
                        Judged::Ingress => Match::Saddr {
                            family: f,
                            addrs,
                            negate,
                        },
                        Judged::Egress => Match::Daddr {
                            family: f,
                            addrs,
                            negate,
                        },
                    }
                };
                vec![m("managed", false), m("local", true)]
            })
            .collect(),
    }
}

/// The family a list of matches implies, if any.
fn family_of(matches: &[Match]) -> Option<Family> {
    matches.iter().find_map(|m| match m {
        Match::Saddr { family, .. } | Match::Daddr { family, .. } => Some(*family),
        _ => None,
    })
}

/// The rules judging in-scope packets by one map pair: per scope alternative, the
/// `gateway_cidrs` exemption (forward only), the dispatch, the drop log and the drop.
fn judged_part(
    ctx: &HostContext,
    judged: Judged,
    maps: [&str; 2],
    gateway_scope: bool,
    out: &mut Vec<Rule>,
) {
    let (what, who, drop_log) = match judged {
        Judged::Ingress => ("destination", "the destination's groups", "reyes drop: "),
        Judged::Egress => ("source", "the source's groups", "reyes egress drop: "),
    };
    for alt in scope_alternatives(ctx.enforce, judged) {
        let fam = family_of(&alt);
        let families: Vec<Family> = Family::BOTH
            .into_iter()
            .filter(|f| fam.is_none_or(|x| x == *f))
            .collect();
        let with = |extra: Match| {
            let mut m = alt.clone();
            m.push(extra);
            m
        };
        if gateway_scope && !ctx.gateway_cidrs.is_empty() {
            for &f in &families {
                let addrs = AddrMatch::Set(Name::from(format!("gateway{}", f.digit())));
                let m = match judged {
                    Judged::Ingress => Match::Daddr {
                        family: f,
                        addrs,
                        negate: true,
                    },
                    Judged::Egress => Match::Saddr {
                        family: f,
                        addrs,
                        negate: true,
                    },
                };
                out.push(base(
                    with(m),
                    Verdict::Accept,
                    &format!("out of scope: {what} not in gateway_cidrs"),
                ));
            }
        }
        // What is judged here is labelled, like the input chain's: revocation re-judges these
        // connections against the next policy, on the hook and as the judgement that passed them.
        let (bit, why) = match judged {
            Judged::Ingress => (
                CT_LABEL,
                "label the connection as judged by reyes (revocation)",
            ),
            Judged::Egress => (
                CT_LABEL_EGRESS,
                "label the connection as judged by reyes' egress rules (revocation)",
            ),
        };
        out.push(base(alt.clone(), Verdict::CtLabel(bit), why));
        for &f in &families {
            out.push(base(
                alt.clone(),
                Verdict::DispatchBy {
                    map: pick(maps, f),
                    family: f,
                    key: match judged {
                        Judged::Ingress => AddrKey::Destination,
                        Judged::Egress => AddrKey::Source,
                    },
                },
                &format!("dispatch by {what}"),
            ));
        }
        if ctx.log_drop {
            out.push(Rule {
                matches: with(Match::Limit {
                    rate: LOG_DROP_RATE.0,
                    burst: LOG_DROP_RATE.1,
                }),
                log: Some(Log {
                    prefix: drop_log.into(),
                }),
                counter: None,
                verdict: Verdict::Continue,
                origin: Origin::Base("log drop (rate-limited)".into()),
            });
        }
        out.push(Rule {
            matches: alt,
            log: None,
            counter: Some(Name::from(COUNTER_DROPPED)),
            verdict: Verdict::Drop,
            origin: Origin::Base(match judged {
                Judged::Ingress => format!("no rule of {who} allows it"),
                Judged::Egress => format!("no egress rule of {who} allows it"),
            }),
        });
    }
}

/// The start every hooked chain shares: established/related, the ipsec-mode scope, then IKE,
/// ESP/AH and the ICMP errors.
fn head(ctx: &HostContext, out_of_scope: Vec<Match>, why: &str) -> Vec<Rule> {
    let mut r = vec![base(
        vec![Match::CtState(vec![CtState::Established, CtState::Related])],
        Verdict::Accept,
        "established or related connection",
    )];
    if ctx.enforce == Enforce::Ipsec {
        r.push(base(out_of_scope, Verdict::Accept, why));
    }
    r.extend(ipsec_and_icmp_rules());
    r
}

/// The end: in cidr mode, what no part took is out of scope (the policy would accept it too;
/// the rule names why).
fn tail(ctx: &HostContext, r: &mut Vec<Rule>) {
    if ctx.enforce == Enforce::Cidr {
        r.push(base(
            vec![],
            Verdict::Accept,
            "out of scope: not from (or, egress, to) managed_cidrs outside local_cidrs",
        ));
    }
}

/// The gateway's forward chain.
fn forward_chain(ctx: &HostContext) -> HookedChain {
    let (scope, why) = if ctx.egress {
        (
            vec![Match::Ipsec(false), Match::IpsecOut(false)],
            "out of scope: neither arrived nor leaves over IPsec",
        )
    } else {
        (vec![Match::Ipsec(false)], "out of scope: not over IPsec")
    };
    let mut rules = head(ctx, scope, why);
    judged_part(ctx, Judged::Ingress, FORWARD_DST, true, &mut rules);
    if ctx.egress {
        judged_part(ctx, Judged::Egress, FORWARD_SRC, true, &mut rules);
    }
    tail(ctx, &mut rules);
    HookedChain {
        name: Name::from(FORWARD_CHAIN),
        hook: Hook::Forward,
        rules,
    }
}

/// The egress chain on the output hook.
fn output_chain(ctx: &HostContext) -> HookedChain {
    let mut rules = head(
        ctx,
        vec![Match::IpsecOut(false)],
        "out of scope: does not leave over IPsec",
    );
    judged_part(ctx, Judged::Egress, OUTPUT_SRC, false, &mut rules);
    tail(ctx, &mut rules);
    HookedChain {
        name: Name::from(OUTPUT_CHAIN),
        hook: Hook::Output,
        rules,
    }
}

/// Gateway mode with `gateway_cidrs`: the sets the forward chain's scope rules name.
pub(super) fn gateway_sets(ctx: &HostContext) -> Vec<AddrSet> {
    if ctx.mode != Mode::Gateway || ctx.gateway_cidrs.is_empty() {
        return Vec::new();
    }
    Family::BOTH
        .into_iter()
        .map(|f| AddrSet {
            name: Name::from(format!("gateway{}", f.digit())),
            family: f,
            elements: ranges_of(&ctx.gateway_cidrs, f),
            purpose: SetPurpose::Gateway,
        })
        .collect()
}
