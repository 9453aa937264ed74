//! The backend-neutral ruleset: named address sets, a destination dispatch map, chains of
//! rules made of typed matches, and verdicts. Every backend translates this and nothing else;
//! the evaluator judges flows against it.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::config::Enforce;
use crate::net::{Family, Range};
use crate::proto::PortRange;

/// Name of the table (nft) and prefix of chains and sets (iptables).
pub const TABLE: &str = "reyes";
/// Named counter of accepted in-scope packets.
pub const COUNTER_ACCEPTED: &str = "accepted";
/// Named counter of dropped packets.
pub const COUNTER_DROPPED: &str = "dropped";
/// Prefix of the named counters of audit mode, one per dispatched chain (`audit_g_sg_0abc`).
pub const AUDIT_COUNTER_PREFIX: &str = "audit_";
/// Name of the base chain.
pub const INPUT_CHAIN: &str = "input";
/// The conntrack label bit (0-127) reyes sets on every in-scope connection it lets through:
/// the connections a later policy is re-judged against (`follower.revoke`). Labels, not the
/// ct mark or the packet mark, because other tools (kube-proxy, Calico, policy routing) own
/// those; nothing else on a reyes host is expected to use this bit.
pub const CT_LABEL: u8 = 29;
/// The conntrack label bit reyes sets on every in-scope connection its egress judgement lets
/// through (the output chain, and the egress part of a gateway's forward chain). A bit of its
/// own: revocation must re-judge such a connection as egress (by its source's groups), not as
/// ingress, and one connection can pass both judgements on a gateway.
pub const CT_LABEL_EGRESS: u8 = 30;
/// Name of the gateway's base chain on the forward hook.
pub const FORWARD_CHAIN: &str = "forward";
/// Name of the egress base chain on the output hook.
pub const OUTPUT_CHAIN: &str = "output";

/// A chain, set or group name. Shared: the same name appears in thousands of dispatch entries,
/// jumps, lookups and origins of a large estate, and each of them holds a pointer, not a copy.
pub type Name = Arc<str>;

/// What a named set is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SetPurpose {
    /// Members of a group.
    Members(String),
    /// `managed_cidrs` (cidr mode).
    Managed,
    /// `local_cidrs` (cidr mode).
    Local,
    /// `gateway_cidrs` (gateway mode).
    Gateway,
}

/// A named set of address intervals of one family: disjoint, sorted, merged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddrSet {
    /// Name (`m4_sg_0abc`, `managed6`, ...).
    pub name: Name,
    /// Family.
    pub family: Family,
    /// Elements.
    pub elements: Vec<Range>,
    /// What it holds.
    pub purpose: SetPurpose,
}

/// A source-address condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum AddrMatch {
    /// In a named set.
    Set(Name),
    /// In these intervals (disjoint, sorted).
    Literal(Vec<Range>),
}

/// A conntrack state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CtState {
    /// Part of a known connection.
    Established,
    /// Related to a known connection (ICMP errors, FTP data ...).
    Related,
}

/// A transport protocol with ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PortProto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// One condition of a rule. A rule matches when all its matches do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Match {
    /// Arrived on this interface.
    Iif(String),
    /// Conntrack state is one of these.
    CtState(Vec<CtState>),
    /// `true`: arrived through an IPsec SA; `false`: did not.
    Ipsec(bool),
    /// `true`: leaves through an IPsec SA (the route has an xfrm policy); `false`: does not.
    IpsecOut(bool),
    /// Source address of `family` is (or, negated, is not) in the set. Implies the family.
    Saddr {
        /// Family.
        family: Family,
        /// Where.
        addrs: AddrMatch,
        /// `!=`.
        negate: bool,
    },
    /// Destination address of `family` is (or, negated, is not) in the set. Implies the family.
    Daddr {
        /// Family.
        family: Family,
        /// Where.
        addrs: AddrMatch,
        /// `!=`.
        negate: bool,
    },
    /// Layer-4 protocol number is one of these.
    L4Proto(Vec<u8>),
    /// TCP or UDP destination port in one of these ranges.
    Dport {
        /// Protocol.
        proto: PortProto,
        /// Ranges (disjoint, sorted).
        ports: Vec<PortRange>,
    },
    /// ICMP (`v6: false`) or ICMPv6 with a type in `types` and, if given, this code. Implies
    /// the family.
    Icmp {
        /// ICMPv6?
        v6: bool,
        /// Types.
        types: Vec<u8>,
        /// Code.
        code: Option<u8>,
    },
    /// At most `rate` per second, bursts of `burst` (a rate limiter: stops matching when over).
    Limit {
        /// Packets per second.
        rate: u32,
        /// Burst.
        burst: u32,
    },
}

/// What happens when a rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// Accept (in this table; another table may still drop).
    Accept,
    /// Drop.
    Drop,
    /// Go on with the next rule (a rule that only logs).
    Continue,
    /// Set this conntrack label bit (0-127) on the packet's connection, then go on with the
    /// next rule: marks a connection as judged by reyes (see [`CT_LABEL`]).
    CtLabel(u8),
    /// Evaluate the chain, then come back.
    Jump(Name),
    /// Look the destination address up in the dispatch map of this family and jump to its
    /// chain; go on if absent.
    Dispatch(Family),
    /// Look the key address up in this map of [`Ruleset::maps`] and jump to its chain; go on
    /// if absent.
    DispatchBy {
        /// The map's name.
        map: Name,
        /// Its family.
        family: Family,
        /// Which address it looks up.
        key: AddrKey,
    },
}

/// A log statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Log {
    /// Prefix (at most 127 bytes, no quotes).
    pub prefix: String,
}

/// Why a rule is there: what `query` reports and errors name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Origin {
    /// Always accepted or structural (loopback, conntrack, scope, IKE/ESP, ICMP errors, ND,
    /// dispatch, logging, the final drop).
    Base(String),
    /// `follower.failsafe[index]`.
    Failsafe(usize),
    /// `groups[group].ingress[rule]` of the document, source `source`.
    GroupRule {
        /// Group id.
        group: Name,
        /// Index in the group's ingress list.
        rule: usize,
        /// Which source of the rule this is (`group sg-lb`, `cidrs`).
        source: Name,
    },
    /// `groups[group].egress[rule]` of the document, destination `dest`.
    EgressRule {
        /// Group id.
        group: Name,
        /// Index in the group's egress list.
        rule: usize,
        /// Which destination of the rule this is (`group sg-db`, `cidrs`).
        dest: Name,
    },
    /// A profile chain's jump to a group chain.
    Profile(Name),
    /// Audit mode: no rule of these destination groups allows it, but it is accepted (and
    /// counted and logged) instead of dropped.
    Audit(Vec<String>),
}

/// One wording for every backend's comments and errors and for `query`.
impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Base(why) => f.write_str(why),
            Origin::Failsafe(i) => write!(f, "failsafe[{i}]"),
            Origin::GroupRule {
                group,
                rule,
                source,
            } => write!(f, "{group} ingress[{rule}] from {source}"),
            Origin::EgressRule { group, rule, dest } => {
                write!(f, "{group} egress[{rule}] to {dest}")
            }
            Origin::Profile(g) => write!(f, "the rules of {g}"),
            Origin::Audit(gs) => write!(
                f,
                "audit mode: no rule of {} allows it; accepted, logged and counted instead of \
                 dropped",
                gs.join(", ")
            ),
        }
    }
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Conditions, all of which must hold.
    pub matches: Vec<Match>,
    /// Log when matched.
    pub log: Option<Log>,
    /// Named counter to count matched packets in.
    pub counter: Option<Name>,
    /// Verdict.
    pub verdict: Verdict,
    /// Why the rule is there.
    pub origin: Origin,
}

/// What a chain is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ChainKind {
    /// The ingress rules of one group.
    Group(String),
    /// Destinations in several groups: jumps to each group's chain (the union of their rules).
    Profile(Vec<String>),
    /// The egress rules of one group.
    Egress(String),
    /// Sources in several groups: jumps to each group's egress chain.
    EgressProfile(Vec<String>),
    /// Audit mode: what the dispatch map jumps to instead of the group or profile chain `of`
    /// (whose destination groups are `groups`): a jump to `of`, then what no rule there
    /// accepted is logged, counted and accepted.
    Audit {
        /// The group or profile chain.
        of: Name,
        /// Its destination groups.
        groups: Vec<String>,
    },
}

/// A regular (non-base) chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chain {
    /// Name (`g_sg_0abc`, `p_1a2b...`).
    pub name: Name,
    /// What it is for.
    pub kind: ChainKind,
    /// Rules, in order.
    pub rules: Vec<Rule>,
}

/// Which address a dispatch map looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AddrKey {
    /// The source address (egress: judged by the sender's groups).
    Source,
    /// The destination address (ingress: judged by the receiver's groups).
    Destination,
}

/// A dispatch map besides the input chain's two: the forward and output chains' lookups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DispatchMap {
    /// Name (`fdst4`, `osrc6`, ...).
    pub name: Name,
    /// Family of the key.
    pub family: Family,
    /// Which address is looked up.
    pub key: AddrKey,
    /// Entries (disjoint, sorted).
    pub entries: Vec<DispatchEntry>,
}

/// A base chain on another hook than input, sharing the input chain's priority, policy and
/// counters ([`BaseChain`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HookedChain {
    /// Name ([`FORWARD_CHAIN`], [`OUTPUT_CHAIN`]).
    pub name: Name,
    /// The hook.
    pub hook: Hook,
    /// Rules, in order.
    pub rules: Vec<Rule>,
}

/// Which destinations are dispatched where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DispatchEntry {
    /// Destination interval.
    pub range: Range,
    /// Chain to jump to.
    pub chain: Name,
}

/// Who the ruleset was compiled for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Target {
    /// A host with these addresses.
    Host(Vec<IpAddr>),
    /// Every group's members as destinations.
    AllGroups,
}

/// Facts about the ruleset, for headers and `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Meta {
    /// Document environment.
    pub environment: String,
    /// Document serial.
    pub serial: u64,
    /// Document policy digest.
    pub policy_digest: String,
    /// Enforcement scope.
    pub enforce: Enforce,
    /// For whom.
    pub target: Target,
}

/// The netfilter hook reyes' base chain is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Hook {
    /// Packets addressed to this host (`input`; `INPUT` in iptables).
    Input,
    /// Packets this host routes on (`forward`; `FORWARD`).
    Forward,
    /// Packets this host sends (`output`; `OUTPUT`).
    Output,
}

impl Hook {
    /// nftables' name of the hook.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
        }
    }
}

/// What the base chain does with a packet its rules leave undecided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ChainPolicy {
    /// Let it through (to the other tables, or the host's own rules after reyes' jump).
    Accept,
    /// Drop it.
    Drop,
}

impl ChainPolicy {
    /// nftables' name of the policy.
    pub fn name(self) -> &'static str {
        match self {
            ChainPolicy::Accept => "accept",
            ChainPolicy::Drop => "drop",
        }
    }
}

/// The priority of nftables' `filter` (0).
pub const PRIORITY_FILTER: i32 = 0;

/// Where and how the base chain hooks in, and the named counters the ruleset keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseChain {
    /// The hook.
    pub hook: Hook,
    /// Its priority among the hook's chains ([`PRIORITY_FILTER`]).
    pub priority: i32,
    /// What happens to a packet no rule decided.
    pub policy: ChainPolicy,
    /// The named counters rules count into (read by `reyes status`), in order.
    pub counters: Vec<NamedCounter>,
}

/// A named counter, and the verdict of the rules that count into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedCounter {
    /// Its name ([`COUNTER_ACCEPTED`], [`COUNTER_DROPPED`]).
    pub name: Name,
    /// What the rules counting into it do with the packet.
    pub verdict: Verdict,
}

impl BaseChain {
    /// reyes' base chain: input, priority filter, policy accept, counting accepted and dropped.
    pub fn reyes() -> BaseChain {
        BaseChain {
            hook: Hook::Input,
            priority: PRIORITY_FILTER,
            policy: ChainPolicy::Accept,
            counters: vec![
                NamedCounter {
                    name: Name::from(COUNTER_ACCEPTED),
                    verdict: Verdict::Accept,
                },
                NamedCounter {
                    name: Name::from(COUNTER_DROPPED),
                    verdict: Verdict::Drop,
                },
            ],
        }
    }
}

/// The whole compiled ruleset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ruleset {
    /// Facts.
    pub meta: Meta,
    /// Named address sets, in the order they are created: the scope sets, then member sets
    /// most-referenced first (see `compile::layout`).
    pub sets: Vec<AddrSet>,
    /// IPv4 destination dispatch (disjoint, sorted).
    pub dispatch4: Vec<DispatchEntry>,
    /// IPv6 destination dispatch (disjoint, sorted).
    pub dispatch6: Vec<DispatchEntry>,
    /// Group and profile chains, sorted by name.
    pub chains: Vec<Chain>,
    /// The base chain's rules, in order (hooked as [`Ruleset::base`] says).
    pub input: Vec<Rule>,
    /// The base chain's hook, priority, policy and named counters.
    pub base: BaseChain,
    /// Base chains on the other hooks (gateway mode: forward; egress: output), in order.
    pub hooked: Vec<HookedChain>,
    /// The dispatch maps their rules look up, by name.
    pub maps: Vec<DispatchMap>,
}

impl Ruleset {
    /// A set by name.
    pub fn set(&self, name: &str) -> Option<&AddrSet> {
        self.sets.iter().find(|s| &*s.name == name)
    }

    /// A chain by name.
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| &*c.name == name)
    }

    /// The dispatch map of a family.
    pub fn dispatch(&self, family: Family) -> &[DispatchEntry] {
        match family {
            Family::V4 => &self.dispatch4,
            Family::V6 => &self.dispatch6,
        }
    }

    /// A map of [`Ruleset::maps`] by name.
    pub fn map(&self, name: &str) -> Option<&DispatchMap> {
        self.maps.iter().find(|m| &*m.name == name)
    }

    /// The base chain on `hook`, if the ruleset has one: its name and rules.
    pub fn base_chain(&self, hook: Hook) -> Option<(&str, &[Rule])> {
        if hook == self.base.hook {
            return Some((INPUT_CHAIN, &self.input));
        }
        self.hooked
            .iter()
            .find(|c| c.hook == hook)
            .map(|c| (&*c.name, c.rules.as_slice()))
    }

    /// Number of elements in all sets and maps (for logs and benchmarks).
    pub fn element_count(&self) -> usize {
        self.sets.iter().map(|s| s.elements.len()).sum::<usize>()
            + self.dispatch4.len()
            + self.dispatch6.len()
            + self.maps.iter().map(|m| m.entries.len()).sum::<usize>()
    }

    /// Number of rules in all chains.
    pub fn rule_count(&self) -> usize {
        self.input.len()
            + self.hooked.iter().map(|c| c.rules.len()).sum::<usize>()
            + self.chains.iter().map(|c| c.rules.len()).sum::<usize>()
    }
}
