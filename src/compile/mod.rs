//! document + host context -> [`Ruleset`]. All security semantics live here (docs/design.md,
//! "Semantics"); backends only translate the result.
//!
//! For an inbound packet to a local address, in the base chain, in order:
//! 1. loopback and established/related connections are accepted;
//! 2. traffic out of scope is accepted (ipsec mode: did not arrive through an IPsec SA; cidr
//!    mode: source outside `managed_cidrs` or inside `local_cidrs`);
//!    every connection still in scope is labelled with [`CT_LABEL`] (the label stays only on
//!    connections that are accepted: a dropped packet's connection is never confirmed), so
//!    that a later policy can be judged against the connections open (`follower.revoke`);
//! 3. IKE (udp 500/4500), ESP and AH, the ICMP errors path MTU discovery needs, and IPv6
//!    neighbour discovery are accepted, then the failsafe entries;
//! 4. the destination address is looked up in a dispatch map that jumps to the chain of its
//!    group (or a profile chain jumping to each of its groups): a rule there whose source,
//!    protocol and ports match accepts;
//! 5. everything else is dropped (logged at a limited rate if `log_drop`).
//!
//! In audit mode (`follower.action: audit`) the dispatch map jumps to an audit chain per
//! group or profile chain instead: it jumps to that chain, and what no rule there accepted is
//! logged (rate-limited), counted in a named counter of its own (`audit_<chain>`) and accepted.
//! Destinations in no group still reach the final drop.

mod audit;
pub use audit::audit_counter_groups;
mod gateway;
pub mod ir;
mod layout;
mod rules;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::{Digest, Sha256};

pub use ir::*;
pub use layout::{Layout, INLINE_MAX};
use rules::{group_rule, proto_matches, Shared};

use crate::config::{Action, AutoOr, Enforce, Failsafe, FollowerConfig, Mode};
use crate::document::{Document, Policy};
use crate::net::{self, Cidr, Family, Range};
use crate::proto::{self, PortRange, Proto};

/// Drop-log rate limit: packets per second, and burst.
pub const LOG_DROP_RATE: (u32, u32) = (5, 10);
/// Audit-log rate limit of each audit chain: packets per second, and burst.
pub const LOG_AUDIT_RATE: (u32, u32) = (5, 10);
/// Accept-log rate limit of each accepting rule: packets per second, and burst.
pub const LOG_ACCEPT_RATE: (u32, u32) = (5, 10);

/// The follower-side facts and settings the ruleset depends on besides the document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct HostContext {
    /// This host's addresses, or every group.
    pub target: Target,
    /// Scope.
    pub enforce: Enforce,
    /// cidr mode: enforced sources.
    pub managed_cidrs: Vec<Cidr>,
    /// cidr mode: exempt sources (`None` = auto from the document's networks).
    pub local_cidrs: Option<Vec<Cidr>>,
    /// Always accepted.
    pub failsafe: Vec<Failsafe>,
    /// Log accepts.
    pub log_accept: bool,
    /// Log drops.
    pub log_drop: bool,
    /// Apply even if no group has one of the host's addresses.
    pub allow_unknown_host: bool,
    /// Drop, or (audit) log, count and accept in-scope traffic no rule allows. Left out of
    /// the serialised form when `drop`, so that the digest of a context from before this
    /// setting existed does not change.
    #[serde(default, skip_serializing_if = "is_drop")]
    pub action: Action,
    /// host | gateway (gateway: a forward chain judges forwarded traffic). Left out of the
    /// serialised form when `host`, like the two below when empty and off, so that the digest
    /// of a context from before these settings existed does not change.
    #[serde(default, skip_serializing_if = "is_host")]
    pub mode: Mode,
    /// Gateway mode: forwarded traffic to (and, with egress, from) these is judged (empty:
    /// every address of the document).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway_cidrs: Vec<Cidr>,
    /// Enforce the groups' egress rules on traffic leaving over IPsec (output chain, and
    /// the forward chain in gateway mode).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub egress: bool,
}

impl HostContext {
    /// ipsec mode for `target`, no failsafe entries, no logging, unknown hosts refused.
    pub fn new(target: Target) -> HostContext {
        HostContext {
            target,
            enforce: Enforce::Ipsec,
            managed_cidrs: Vec::new(),
            local_cidrs: None,
            failsafe: Vec::new(),
            log_accept: false,
            log_drop: false,
            allow_unknown_host: false,
            action: Action::Drop,
            mode: Mode::Host,
            gateway_cidrs: Vec::new(),
            egress: false,
        }
    }

    /// The context a follower config gives, for a host with `addresses`.
    pub fn from_config(cfg: &FollowerConfig, target: Target) -> HostContext {
        HostContext {
            target,
            enforce: cfg.enforce,
            managed_cidrs: cfg.managed_cidrs.clone(),
            local_cidrs: match &cfg.local_cidrs {
                AutoOr::Auto => None,
                AutoOr::List(l) => Some(l.clone()),
            },
            failsafe: cfg.failsafe.clone(),
            log_accept: cfg.log_accept,
            log_drop: cfg.log_drop,
            allow_unknown_host: cfg.allow_unknown_host,
            action: cfg.action,
            mode: cfg.mode,
            gateway_cidrs: cfg.gateway_cidrs.clone(),
            egress: cfg.egress,
        }
    }

    /// A digest of everything here, to tell whether a re-apply is needed.
    pub fn digest(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        format!("sha256:{}", crate::digest::hex(&Sha256::digest(bytes)))
    }
}

fn is_drop(a: &Action) -> bool {
    *a == Action::Drop
}

fn is_host(m: &Mode) -> bool {
    *m == Mode::Host
}

/// The document cannot be compiled for this host.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// No group holds any of the host's addresses.
    #[error(
        "the document names none of this host's addresses ({0}); refusing to apply (a wrong \
         environment or stale inventory?). Pass --allow-unknown-host to apply anyway"
    )]
    UnknownHost(String),
    /// Gateway mode, and no group has a member in `gateway_cidrs`.
    #[error(
        "gateway mode: the document has no address in follower.gateway_cidrs ({0}) and none of \
         this host's; refusing to apply (a wrong environment or gateway_cidrs?). Pass \
         --allow-unknown-host to apply anyway"
    )]
    NoGatewayDestination(String),
}

/// Turn a group id into a name part: `[a-z0-9_]`, bounded length.
fn sanitize(id: &str) -> String {
    let mut s: String = id
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(200);
    s
}

fn short_hash(s: &str) -> String {
    crate::digest::short_sha256(s.as_bytes(), 6)
}

/// Name parts for every group id, unique even when sanitising makes two ids equal.
fn name_parts(policy: &Policy) -> BTreeMap<&str, String> {
    let mut by_name: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for g in &policy.groups {
        by_name
            .entry(sanitize(&g.id))
            .or_default()
            .push(g.id.as_str());
    }
    let mut out = BTreeMap::new();
    for (name, ids) in by_name {
        if let [only] = ids.as_slice() {
            out.insert(*only, name);
        } else {
            for id in ids {
                out.insert(id, format!("{name}_{}", short_hash(id)));
            }
        }
    }
    out
}

fn ranges_of(cidrs: &[Cidr], family: Family) -> Vec<Range> {
    net::merge(
        cidrs
            .iter()
            .filter(|c| c.family() == family)
            .map(|c| c.range())
            .collect(),
    )
}

/// The names one group gives the ruleset, made once and shared by every rule that uses them.
struct GroupNames {
    id: Name,
    chain: Name,
    /// The chain of its egress rules.
    egress: Name,
    members: [Name; 2],
    /// `group <id>`: the source part of the origin of rules that allow this group.
    source: Name,
}

impl GroupNames {
    fn members(&self, family: Family) -> &Name {
        match family {
            Family::V4 => &self.members[0],
            Family::V6 => &self.members[1],
        }
    }
}

/// Compile a verified document for a host.
pub fn compile(doc: &Document, ctx: &HostContext) -> Result<Ruleset, CompileError> {
    compile_with(doc, ctx, Layout::default())
}

/// [`compile`] with a set layout other than the default (for benchmarks: the same semantics,
/// other sets and rules).
pub fn compile_with(
    doc: &Document,
    ctx: &HostContext,
    set_layout: Layout,
) -> Result<Ruleset, CompileError> {
    use gateway::Judged;
    let policy = &doc.policy;
    let names = group_names(policy);

    // Who is judged: the host's addresses (input; output with egress) and, in gateway mode,
    // the addresses behind the gateway (forward).
    let forward = gateway::forward_labels(policy, ctx);
    let labelled = destinations(policy, ctx, forward.as_deref())?;

    // Group chains for every group that is a destination somewhere.
    let mut is_dest = vec![false; policy.groups.len()];
    for (_, gi) in labelled.iter().chain(forward.iter().flatten()) {
        is_dest[*gi] = true;
    }
    let mut chains: Vec<Chain> = Vec::new();
    let mut layout = layout::SourceLayout::new(set_layout);
    let mut sources: BTreeMap<String, Name> = BTreeMap::new();
    let mut shared = Shared {
        policy,
        names: &names,
        ctx,
        layout: &mut layout,
        sources: &mut sources,
    };
    for (gi, g) in policy.groups.iter().enumerate() {
        if !is_dest[gi] {
            continue;
        }
        let mut rules = Vec::new();
        for (i, r) in g.ingress.iter().enumerate() {
            group_rule(&mut shared, gi, i, r, false, &mut rules);
        }
        rules.shrink_to_fit();
        chains.push(Chain {
            name: names[gi].chain.clone(),
            kind: ChainKind::Group(g.id.clone()),
            rules,
        });
    }

    // Dispatch: one entry per disjoint destination interval; several groups -> a profile chain.
    let mut profiles: BTreeMap<Vec<usize>, Name> = BTreeMap::new();
    let [mut dispatch4, mut dispatch6] =
        gateway::dispatch_entries(&labelled, &names, Judged::Ingress, &mut profiles);
    let mut hook_maps = gateway::HookMaps {
        forward_dst: forward
            .as_ref()
            .map(|f| gateway::dispatch_entries(f, &names, Judged::Ingress, &mut profiles)),
        forward_src: None,
        output_src: None,
    };
    gateway::profile_chains(profiles, &names, Judged::Ingress, &mut chains);
    if ctx.egress {
        let mut senders: BTreeSet<usize> = labelled.iter().map(|(_, gi)| *gi).collect();
        let mut profiles: BTreeMap<Vec<usize>, Name> = BTreeMap::new();
        hook_maps.output_src = Some(gateway::dispatch_entries(
            &labelled,
            &names,
            Judged::Egress,
            &mut profiles,
        ));
        if let Some(f) = &forward {
            senders.extend(f.iter().map(|(_, gi)| *gi));
            hook_maps.forward_src = Some(gateway::dispatch_entries(
                f,
                &names,
                Judged::Egress,
                &mut profiles,
            ));
        }
        gateway::egress_chains(&mut shared, &senders, &mut chains);
        gateway::profile_chains(profiles, &names, Judged::Egress, &mut chains);
    }
    drop(labelled);
    drop(forward);
    let mut base = BaseChain::reyes();
    if ctx.action == Action::Audit {
        let entries = [&mut dispatch4, &mut dispatch6]
            .into_iter()
            .chain(hook_maps.entries_mut());
        audit::audit_chains(&mut chains, entries, &mut base);
    }
    chains.sort_by(|a, b| a.name.cmp(&b.name));
    let (maps, hooked) = hook_maps.finish(ctx);

    let sets = sets(policy, ctx, layout);

    Ok(Ruleset {
        meta: Meta {
            environment: doc.environment.clone(),
            serial: doc.serial,
            policy_digest: doc.policy_digest.clone(),
            enforce: ctx.enforce,
            target: ctx.target.clone(),
        },
        sets,
        dispatch4,
        dispatch6,
        chains,
        input: base_chain(ctx),
        base,
        hooked,
        maps,
    })
}

/// The names of each group's chain, member sets and source label, in group order.
fn group_names(policy: &Policy) -> Vec<GroupNames> {
    let parts = name_parts(policy);
    policy
        .groups
        .iter()
        .map(|g| {
            let part = parts
                .get(g.id.as_str())
                .cloned()
                .unwrap_or_else(|| sanitize(&g.id));
            GroupNames {
                id: Name::from(g.id.as_str()),
                chain: Name::from(format!("g_{part}")),
                egress: Name::from(format!("e_{part}")),
                members: Family::BOTH.map(|f| Name::from(format!("m{}_{part}", f.digit()))),
                source: Name::from(format!("group {}", g.id)),
            }
        })
        .collect()
}

/// Which groups (by index, which is id order) each local address or member interval belongs
/// to: the host's addresses, or every member of every group.
/// In gateway mode (`forward`: the forward chain's destinations) a gateway whose own
/// addresses are in no group is fine as long as something behind it is.
fn destinations(
    policy: &Policy,
    ctx: &HostContext,
    forward: Option<&[(Range, usize)]>,
) -> Result<Vec<(Range, usize)>, CompileError> {
    let mut labelled: Vec<(Range, usize)> = Vec::new();
    match &ctx.target {
        Target::Host(addrs) => {
            for a in addrs {
                for (gi, g) in policy.groups.iter().enumerate() {
                    if g.members.iter().any(|m| m.contains(a)) {
                        labelled.push((Range::single(a), gi));
                    }
                }
            }
            if let Some(f) = forward {
                gateway::check_destinations(ctx, f, !labelled.is_empty())?;
            } else if labelled.is_empty() && !ctx.allow_unknown_host {
                let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                let list = if list.is_empty() {
                    "none found".to_string()
                } else {
                    list.join(", ")
                };
                return Err(CompileError::UnknownHost(list));
            }
        }
        Target::AllGroups => {
            let members = policy.groups.iter().map(|g| g.members.len()).sum();
            labelled.reserve_exact(members);
            for (gi, g) in policy.groups.iter().enumerate() {
                labelled.extend(g.members.iter().map(|m| (m.range(), gi)));
            }
        }
    }

    Ok(labelled)
}

/// The scope sets, then the member sets of the source groups that have one (most-referenced
/// first): the order the kernel creates and lists them in.
fn sets(policy: &Policy, ctx: &HostContext, layout: layout::SourceLayout) -> Vec<AddrSet> {
    let mut sets = Vec::new();
    if ctx.enforce == Enforce::Cidr {
        let local: Vec<Cidr> = match &ctx.local_cidrs {
            Some(l) => l.clone(),
            None => auto_local_cidrs(policy, &ctx.target),
        };
        for family in Family::BOTH {
            sets.push(AddrSet {
                name: Name::from(format!("managed{}", family.digit())),
                family,
                elements: ranges_of(&ctx.managed_cidrs, family),
                purpose: SetPurpose::Managed,
            });
            sets.push(AddrSet {
                name: Name::from(format!("local{}", family.digit())),
                family,
                elements: ranges_of(&local, family),
                purpose: SetPurpose::Local,
            });
        }
    }
    sets.extend(gateway::gateway_sets(ctx));
    let by_refs = layout.layout.by_refs;
    sets.extend(layout.into_sets());
    if !by_refs {
        sets.sort_by(|a, b| a.name.cmp(&b.name));
    }
    sets
}

/// `local_cidrs: auto`: the blocks of every network that holds one of the host's addresses
/// (every network, for `--all-groups`).
pub fn auto_local_cidrs(policy: &Policy, target: &Target) -> Vec<Cidr> {
    let mut out = Vec::new();
    for n in &policy.networks {
        let hit = match target {
            Target::AllGroups => true,
            Target::Host(addrs) => addrs.iter().any(|a| n.cidrs.iter().any(|c| c.contains(a))),
        };
        if hit {
            out.extend(n.cidrs.iter().copied());
        }
    }
    out.sort();
    out.dedup();
    out
}

fn base(matches: Vec<Match>, verdict: Verdict, why: &str) -> Rule {
    Rule {
        matches,
        log: None,
        counter: None,
        verdict,
        origin: Origin::Base(why.to_string()),
    }
}

/// The base chain: everything that does not depend on the groups.
fn base_chain(ctx: &HostContext) -> Vec<Rule> {
    let mut r = vec![
        base(vec![Match::Iif("lo".into())], Verdict::Accept, "loopback"),
        base(
            vec![Match::CtState(vec![CtState::Established, CtState::Related])],
            Verdict::Accept,
            "established or related connection",
        ),
    ];
    r.extend(scope_rules(ctx.enforce));
    r.push(base(
        vec![],
        Verdict::CtLabel(CT_LABEL),
        "label the connection as judged by reyes (revocation)",
    ));
    r.extend(ipsec_and_icmp_rules());
    for (i, f) in ctx.failsafe.iter().enumerate() {
        for rule in failsafe_rules(f) {
            r.push(Rule {
                origin: Origin::Failsafe(i),
                ..rule
            });
        }
    }
    r.push(base(
        vec![],
        Verdict::Dispatch(Family::V4),
        "dispatch by destination",
    ));
    r.push(base(
        vec![],
        Verdict::Dispatch(Family::V6),
        "dispatch by destination",
    ));
    if ctx.log_drop {
        r.push(Rule {
            matches: vec![Match::Limit {
                rate: LOG_DROP_RATE.0,
                burst: LOG_DROP_RATE.1,
            }],
            log: Some(Log {
                prefix: "reyes drop: ".into(),
            }),
            counter: None,
            verdict: Verdict::Continue,
            origin: Origin::Base("log drop (rate-limited)".into()),
        });
    }
    r.push(Rule {
        matches: vec![],
        log: None,
        counter: Some(Name::from(COUNTER_DROPPED)),
        verdict: Verdict::Drop,
        origin: Origin::Base("no rule of the destination's groups allows it".into()),
    });
    r
}

/// What `enforce` leaves out of scope, accepted before any group rule.
fn scope_rules(enforce: Enforce) -> Vec<Rule> {
    let mut r = Vec::new();
    match enforce {
        Enforce::Ipsec => r.push(base(
            vec![Match::Ipsec(false)],
            Verdict::Accept,
            "out of scope: not over IPsec",
        )),
        Enforce::Cidr => {
            for f in Family::BOTH {
                r.push(base(
                    vec![Match::Saddr {
                        family: f,
                        addrs: AddrMatch::Set(Name::from(format!("managed{}", f.digit()))),
                        negate: true,
                    }],
                    Verdict::Accept,
                    "out of scope: source not in managed_cidrs",
                ));
            }
            for f in Family::BOTH {
                r.push(base(
                    vec![Match::Saddr {
                        family: f,
                        addrs: AddrMatch::Set(Name::from(format!("local{}", f.digit()))),
                        negate: false,
                    }],
                    Verdict::Accept,
                    "out of scope: source in local_cidrs",
                ));
            }
        }
    }
    r
}

/// IKE, ESP and AH, and the ICMP and ICMPv6 messages a host needs, always accepted.
fn ipsec_and_icmp_rules() -> Vec<Rule> {
    let ike = |port| PortRange {
        first: port,
        last: port,
    };
    vec![
        base(
            vec![Match::Dport {
                proto: PortProto::Udp,
                ports: vec![ike(proto::IKE_PORT), ike(proto::IKE_NAT_T_PORT)],
            }],
            Verdict::Accept,
            "IKE",
        ),
        base(
            vec![Match::L4Proto(vec![proto::ESP, proto::AH])],
            Verdict::Accept,
            "ESP and AH",
        ),
        base(
            vec![Match::Icmp {
                v6: false,
                types: vec![3, 11, 12],
                code: None,
            }],
            Verdict::Accept,
            "ICMP errors (path MTU discovery)",
        ),
        base(
            vec![Match::Icmp {
                v6: true,
                types: vec![1, 2, 3, 4, 133, 134, 135, 136],
                code: None,
            }],
            Verdict::Accept,
            "ICMPv6 errors and neighbour discovery",
        ),
    ]
}

fn failsafe_rules(f: &Failsafe) -> Vec<Rule> {
    let proto_matches = proto_matches(f.proto, f.port, None, None);
    let families: Vec<Family> = match (f.from, f.proto) {
        (Some(c), _) => vec![c.family()],
        (None, Proto::Icmp) => vec![Family::V4],
        (None, Proto::Icmpv6) => vec![Family::V6],
        (None, _) => vec![],
    };
    let mut out = Vec::new();
    if families.is_empty() {
        out.push(base(proto_matches.clone(), Verdict::Accept, "failsafe"));
    }
    for fam in families {
        let mut m = Vec::new();
        if let Some(c) = f.from {
            m.push(Match::Saddr {
                family: fam,
                addrs: AddrMatch::Literal(vec![c.range()]),
                negate: false,
            });
        }
        m.extend(proto_matches.clone());
        out.push(base(m, Verdict::Accept, "failsafe"));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests;
