//! What the iptables backend installs, as data: the sets, and reyes' chains and rules per
//! family ([`Plan`]), and the layout choices that shape it ([`Options`]).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::net::{Cidr, Family};

use super::names::{clean, family_kw, TEMP_SUFFIX};

/// The scripts could not be rendered: a template bug, or an IR construct this backend cannot
/// express (never produced by the compiler; the message says which).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A template failed to compile or render.
    #[error("iptables render: template {name}: {error}")]
    Template {
        /// Which template.
        name: &'static str,
        /// The template engine's error.
        error: minijinja::Error,
    },
    /// The IR holds something iptables cannot express.
    #[error("iptables render: {0}")]
    Unsupported(String),
}

pub(super) fn err<T>(msg: impl Into<String>) -> Result<T, RenderError> {
    Err(RenderError::Unsupported(msg.into()))
}

/// How the destination dispatch is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchLayout {
    /// One `-d PREFIX -g CHAIN` rule per destination prefix.
    Rules,
    /// One `hash:net` set per target chain and one `-m set --match-set S dst -g CHAIN` rule.
    Sets,
    /// Rules for chains with at most this many destination prefixes, a set otherwise.
    Auto(usize),
    /// A tree of chains with at most this many rules each: `-d PREFIX -g CHAIN` leaves in
    /// address order, `-m iprange --dst-range LO-HI -g NODE` above them. A packet walks
    /// O(fanout * log_fanout(n)) rules instead of O(n).
    Tree(usize),
}

/// Layout choices. The defaults are measured (BENCHMARKS.md): a `-d`/`-s` rule that does not
/// match costs a packet ~2 ns, a set lookup ~200 ns, and every extra ipset slows each ipset
/// command down (the kernel finds sets by name in a list), so the dispatch is a tree of short
/// rule lists (no sets), and literal source lists are rules until they are long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Destination dispatch.
    pub dispatch: DispatchLayout,
    /// Literal source prefix lists up to this long become one rule per prefix; longer ones a set.
    pub literal_rules_max: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dispatch: DispatchLayout::Tree(DISPATCH_FANOUT),
            literal_rules_max: 16,
        }
    }
}

/// Rules per chain of the default dispatch tree.
pub const DISPATCH_FANOUT: usize = 32;

/// One ipset: `hash:net` of one family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpSet {
    /// Live name (`reyes-...`).
    pub name: String,
    /// Name the new members are staged under before the swap.
    pub temp: String,
    /// `inet` or `inet6`.
    pub family: &'static str,
    /// Members: disjoint prefixes in address order.
    pub members: Vec<String>,
    /// What it holds (for comments).
    pub purpose: String,
    /// `hashsize` (buckets).
    pub hashsize: usize,
    /// `maxelem`.
    pub maxelem: usize,
}

impl IpSet {
    pub(super) fn new(name: String, family: Family, members: Vec<Cidr>, purpose: String) -> IpSet {
        let n = members.len();
        IpSet {
            temp: format!("{name}{TEMP_SUFFIX}"),
            name,
            family: family_kw(family),
            members: members.iter().map(|c| c.to_string()).collect(),
            purpose: clean(&purpose),
            hashsize: n.next_power_of_two().max(64),
            maxelem: n.next_power_of_two().max(65536),
        }
    }
}

/// One `-A CHAIN SPEC` line, optionally preceded by a comment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    /// Chain.
    pub chain: String,
    /// Everything after `-A CHAIN ` (may be empty: a rule that only counts).
    pub spec: String,
    /// A `# ...` line before it.
    pub comment: Option<String>,
}

/// Our chains in one family's filter table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Table {
    /// Family.
    pub family: Family,
    /// Chains, `REYES-INPUT` first, then by name.
    pub chains: Vec<String>,
    /// Rules, grouped by chain in the order of `chains`.
    pub lines: Vec<Line>,
}

impl Table {
    /// Chain -> rule specs, as the kernel should hold them.
    pub fn expected(&self) -> BTreeMap<String, Vec<String>> {
        let mut m: BTreeMap<String, Vec<String>> = self
            .chains
            .iter()
            .map(|c| (c.clone(), Vec::new()))
            .collect();
        for l in &self.lines {
            m.entry(l.chain.clone()).or_default().push(l.spec.clone());
        }
        m
    }

    /// `iptables` or `ip6tables`.
    pub fn tool(&self) -> &'static str {
        match self.family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

/// Facts for the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Header {
    /// Environment.
    pub environment: String,
    /// Policy digest.
    pub policy_digest: String,
    /// For whom.
    pub target: String,
    /// Scope.
    pub enforce: &'static str,
}

/// Everything an apply installs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Header facts.
    pub header: Header,
    /// Sets, by name.
    pub sets: Vec<IpSet>,
    /// IPv4 chains.
    pub v4: Table,
    /// IPv6 chains.
    pub v6: Table,
}

impl Plan {
    /// Both tables, IPv4 first.
    pub fn tables(&self) -> [&Table; 2] {
        [&self.v4, &self.v6]
    }
}
