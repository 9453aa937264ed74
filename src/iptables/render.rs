//! IR -> what the iptables backend runs: the input of `ipset restore` (stage, swap, cleanup)
//! and of `iptables-restore --noflush` / `ip6tables-restore --noflush`, through the templates
//! in `compat/` (embedded in the binary).
//!
//! # Translation
//!
//! The IR's base chain is an nftables base chain with its own hook: its `accept` is not final
//! (another table can still drop what it accepts), its `drop` is. In iptables our chains hang
//! off the host's INPUT chain, where `-j ACCEPT` would be final for the whole filter table and
//! skip every rule the host has after our jump. So an IR `accept` becomes `-j RETURN` back to
//! INPUT, whose remaining rules then decide, exactly like the other tables would under nft.
//!
//! For `RETURN` to leave all of reyes' chains at once, every chain below `REYES-INPUT` is
//! entered with a goto (`-g`), never a call, so the only frame on the stack is INPUT's. An IR
//! jump or dispatch (a call that comes back) is turned into continuation-passing style: the
//! rules after it go into a segment chain (`REYES-INPUT-1`), and the target chain ends with a
//! goto to that segment instead of returning. A group chain reached from a profile chain
//! continues into the next group of the profile; such a variant of a chain gets its own name
//! (`REYES-G-web-1a2b3c4d`), the variant reached straight from dispatch keeps the plain name.
//!
//! Other differences from nft, all mechanical:
//! - one IR rule with alternatives (several protocols, ICMP types, source prefixes, port lists
//!   longer than multiport's 15 slots) becomes one iptables rule per alternative; the
//!   alternatives are disjoint, so a packet still matches at most one of them;
//! - member sets are `hash:net` ipsets (intervals split into prefixes; `/0` into two `/1`,
//!   which `hash:net` cannot hold); literal prefix lists of more than a few entries become sets;
//! - the destination dispatch becomes `-d PREFIX -g CHAIN` rules for chains with few
//!   destination prefixes and a `hash:net` set per chain otherwise ([`DispatchLayout`]);
//! - named counters become chains (`REYES-ACCEPTED`, `REYES-DROPPED`) holding one rule with
//!   the verdict, whose packet counter `status` reads;
//! - log prefixes longer than iptables' 29 characters are shortened (head + hash);
//! - protocol 0 and ICMP type 255, which iptables' `-p` and `--icmp-type` read as "any", are
//!   matched with `u32`.
//!
//! Each rule is written exactly as `iptables-save` prints it (up to protocol names and address
//! spelling, which the comparison normalises), so the apply can read its chains back and
//! compare them with what it rendered.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use minijinja::{context, Environment};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::compile::{
    AddrMatch, CtState, Match, Origin, PortProto, Rule, Ruleset, SetPurpose, Verdict,
    COUNTER_ACCEPTED, COUNTER_DROPPED,
};
use crate::net::{Cidr, Family, Range};
use crate::proto::PortRange;

const TMPL_RULESET: &str = include_str!("../../compat/ruleset.j2");
const TMPL_STAGE: &str = include_str!("../../compat/ipset-stage.j2");
const TMPL_SWAP: &str = include_str!("../../compat/ipset-swap.j2");
const TMPL_DESTROY: &str = include_str!("../../compat/ipset-destroy.j2");
const TMPL_FILTER: &str = include_str!("../../compat/filter.j2");

/// Prefix of every chain reyes owns.
pub const CHAIN_PREFIX: &str = "REYES-";
/// The chain INPUT jumps to.
pub const BASE_CHAIN: &str = "REYES-INPUT";
/// The built-in chain that holds our one jump.
pub const HOOK_CHAIN: &str = "INPUT";
/// The jump rule (as `iptables-save` prints it after `-A INPUT `).
pub const JUMP_SPEC: &str = "-j REYES-INPUT";
/// Prefix of every ipset reyes owns.
pub const SET_PREFIX: &str = "reyes-";
/// Suffix of the temporary set a set's new members are staged in.
pub const TEMP_SUFFIX: &str = "-t";
/// Longest chain name iptables takes.
pub const MAX_CHAIN_NAME: usize = 28;
/// Longest ipset name.
pub const MAX_SET_NAME: usize = 31;
/// Longest `--log-prefix`.
pub const MAX_LOG_PREFIX: usize = 29;
/// Ports one `-m multiport` match holds (a range takes two).
pub const MULTIPORT_SLOTS: usize = 15;
const MAX_SET_BODY: usize = MAX_SET_NAME - SET_PREFIX.len() - TEMP_SUFFIX.len();

/// The scripts could not be rendered: a template bug, or an IR construct this backend cannot
/// express (never produced by the compiler; the message says which).
#[derive(Debug, thiserror::Error)]
#[error("iptables render: {0}")]
pub struct RenderError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, RenderError> {
    Err(RenderError(msg.into()))
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
}

/// Layout choices. The defaults are measured (BENCHMARKS.md): a `-d`/`-s` rule that does not
/// match costs a packet ~2 ns, a set lookup ~200 ns, and every extra ipset slows each ipset
/// command down (the kernel finds sets by name in a list), so rules win until a chain has
/// dozens of prefixes.
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
            dispatch: DispatchLayout::Auto(64),
            literal_rules_max: 16,
        }
    }
}

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
    fn new(name: String, family: Family, members: Vec<Cidr>, purpose: String) -> IpSet {
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

/// `inet` / `inet6`.
pub fn family_kw(f: Family) -> &'static str {
    match f {
        Family::V4 => "inet",
        Family::V6 => "inet6",
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

fn hash_hex(s: &str, bytes: usize) -> String {
    crate::document::hex(&Sha256::digest(s.as_bytes())[..bytes])
}

/// Bound a name: longer ones keep their head and end in `-` and 8 hex digits of a hash of the
/// whole name, so they stay deterministic and (up to the hash) distinct.
pub fn shorten(name: &str, max: usize) -> String {
    if name.len() <= max && name.is_ascii() {
        return name.to_string();
    }
    let head: String = name.chars().filter(char::is_ascii).take(max - 9).collect();
    format!("{head}-{}", hash_hex(name, 4))
}

/// The iptables chain of an IR chain: `g_X` -> `REYES-G-X`, `p_X` -> `REYES-P-X`.
pub fn chain_name(ir: &str) -> String {
    let body = if let Some(r) = ir.strip_prefix("g_") {
        format!("G-{r}")
    } else if let Some(r) = ir.strip_prefix("p_") {
        format!("P-{r}")
    } else {
        format!("C-{ir}")
    };
    shorten(&format!("{CHAIN_PREFIX}{body}"), MAX_CHAIN_NAME)
}

/// The chain counting a named counter: `accepted` -> `REYES-ACCEPTED`.
pub fn counter_chain(counter: &str) -> String {
    let up: String = counter
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    shorten(&format!("{CHAIN_PREFIX}{up}"), MAX_CHAIN_NAME)
}

/// The ipset of an IR set name (or another body): `reyes-BODY`, bounded so that the temporary
/// name (`reyes-BODY-t`) fits too.
pub fn set_name(body: &str) -> String {
    format!("{SET_PREFIX}{}", shorten(body, MAX_SET_BODY))
}

/// Prefixes of intervals, `/0` split into two `/1` (a `hash:net` set cannot hold `/0`).
fn set_members(ranges: &[Range]) -> Vec<Cidr> {
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

fn purpose_text(p: &SetPurpose) -> String {
    match p {
        SetPurpose::Members(g) => format!("members of {g}"),
        SetPurpose::Managed => "managed_cidrs".into(),
        SetPurpose::Local => "local_cidrs".into(),
    }
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn origin_text(o: &Origin) -> String {
    clean(&match o {
        Origin::Base(why) => why.clone(),
        Origin::Failsafe(i) => format!("failsafe[{i}]"),
        Origin::GroupRule {
            group,
            rule,
            source,
        } => format!("{group} ingress[{rule}] from {source}"),
        Origin::Profile(g) => format!("the rules of {g}"),
    })
}

/// A log prefix iptables takes: no quotes or backslashes, ASCII, at most 29 characters
/// (longer ones: head, `~`, 6 hex digits of a hash of the whole prefix, `: `). Returns the
/// prefix and, when shortened, a note for the script.
pub fn log_prefix(p: &str) -> (String, Option<String>) {
    let c: String = p
        .chars()
        .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
        .collect();
    if c.len() <= MAX_LOG_PREFIX && c.is_ascii() {
        return (c, None);
    }
    let head: String = c
        .chars()
        .filter(char::is_ascii)
        .take(MAX_LOG_PREFIX - 9)
        .collect();
    let short = format!("{head}~{}: ", hash_hex(&c, 3));
    let note = format!(
        "log prefix \"{c}\" shortened to \"{short}\" (iptables takes {MAX_LOG_PREFIX} characters)"
    );
    (short, Some(note))
}

/// A `-m limit` as iptables prints it: the kernel keeps 10000/rate as an integer, and the
/// default burst (5) is not printed.
fn limit_text(rate: u32, burst: u32) -> Result<String, RenderError> {
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

fn proto_text(n: u8) -> String {
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

fn port_text(r: &PortRange) -> String {
    if r.first == r.last {
        r.first.to_string()
    } else {
        format!("{}:{}", r.first, r.last)
    }
}

/// `(-p part, -m part)` alternatives for a port match.
fn port_alternatives(proto: PortProto, ports: &[PortRange]) -> Vec<(String, String)> {
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
fn u32_icmp(t: u8, code: Option<u8>) -> String {
    let mut e = format!("0x0>>0x16&0x3c@0x0>>0x18={t:#x}");
    if let Some(c) = code {
        let _ = write!(e, "&&0x0>>0x16&0x3c@0x0>>0x10&0xff={c:#x}");
    }
    format!("-m u32 --u32 \"{e}\"")
}

/// A continuation: what happens when a chain runs off its end.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Cont {
    /// Return to INPUT (the IR base chain's policy accept).
    Exit,
    /// Go to this chain.
    Chain(String),
}

impl Cont {
    fn key(&self) -> &str {
        match self {
            Cont::Exit => "exit",
            Cont::Chain(c) => c,
        }
    }
}

/// The conditions of one rule in one family, as alternatives.
#[derive(Debug, Default)]
struct Parts {
    src: Vec<String>,
    iface: String,
    protos: Vec<(String, String)>,
    ct: String,
    policy: String,
    sets: Vec<String>,
    limit: String,
}

fn join(pieces: &[&str]) -> String {
    let mut s = String::new();
    for p in pieces.iter().filter(|p| !p.is_empty()) {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(p);
    }
    s
}

impl Parts {
    /// Every alternative, with an extra destination condition (dispatch) and a target.
    fn specs(&self, dst: &[String], dst_set: &str, target: &str) -> Vec<String> {
        let none = [String::new()];
        let src: &[String] = if self.src.is_empty() {
            &none
        } else {
            &self.src
        };
        let dst: &[String] = if dst.is_empty() { &none } else { dst };
        let mut out = Vec::new();
        for s in src {
            for d in dst {
                for (p, pm) in &self.protos {
                    let sets = self.sets.join(" ");
                    out.push(join(&[
                        s,
                        d,
                        &self.iface,
                        p,
                        &self.ct,
                        &self.policy,
                        &sets,
                        dst_set,
                        pm,
                        &self.limit,
                        target,
                    ]));
                }
            }
        }
        out
    }
}

struct Translator<'a> {
    rs: &'a Ruleset,
    fam: Family,
    opts: Options,
    ir_sets: &'a BTreeMap<String, String>,
    sets: &'a mut BTreeMap<String, IpSet>,
    chains: BTreeMap<String, Vec<Line>>,
    variants: BTreeMap<(String, Cont), String>,
    primary: Option<Cont>,
    counters: BTreeMap<String, (String, &'static str)>,
}

impl<'a> Translator<'a> {
    fn declare(&mut self, name: &str) -> Result<(), RenderError> {
        if self.chains.contains_key(name) {
            return err(format!("two chains would be named {name}"));
        }
        self.chains.insert(name.to_string(), Vec::new());
        Ok(())
    }

    fn push(&mut self, chain: &str, spec: String, comment: Option<String>) {
        self.chains
            .entry(chain.to_string())
            .or_default()
            .push(Line {
                chain: chain.to_string(),
                spec,
                comment,
            });
    }

    fn push_all(&mut self, chain: &str, specs: Vec<String>, comment: Option<String>) {
        for (i, s) in specs.into_iter().enumerate() {
            self.push(chain, s, if i == 0 { comment.clone() } else { None });
        }
    }

    fn add_set(&mut self, set: IpSet) -> Result<String, RenderError> {
        let name = set.name.clone();
        match self.sets.get(&name) {
            Some(s) if s.members != set.members || s.family != set.family => {
                err(format!("two sets would be named {name}"))
            }
            Some(_) => Ok(name),
            None => {
                self.sets.insert(name.clone(), set);
                Ok(name)
            }
        }
    }

    fn literal_set(&mut self, ranges: &[Range]) -> Result<String, RenderError> {
        let members = set_members(ranges);
        let text: Vec<String> = members.iter().map(|c| c.to_string()).collect();
        let body = format!("l{}_{}", self.fam.digit(), hash_hex(&text.join(","), 6));
        self.add_set(IpSet::new(
            set_name(&body),
            self.fam,
            members,
            "a rule's source prefixes".into(),
        ))
    }

    /// Whether a rule can match packets of this family at all.
    fn applies(&self, r: &Rule) -> bool {
        let fam = self.fam;
        for m in &r.matches {
            match m {
                Match::Saddr { family, .. } if *family != fam => return false,
                Match::Icmp { v6, .. } if *v6 != (fam == Family::V6) => return false,
                _ => {}
            }
        }
        !matches!(r.verdict, Verdict::Dispatch(f) if f != fam)
    }

    /// The conditions of a rule; `None` when it can never match in this family.
    fn conditions(&mut self, rule: &Rule) -> Result<Option<Parts>, RenderError> {
        let fam = self.fam;
        let mut p = Parts::default();
        let mut iface: Option<&str> = None;
        let mut ct: Option<BTreeSet<u8>> = None;
        let mut ipsec: Option<bool> = None;
        let mut protos: Option<BTreeSet<u8>> = None;
        let mut dport: Option<(PortProto, &[PortRange])> = None;
        let mut icmp: Option<(&[u8], Option<u8>)> = None;
        let mut src_used = false;
        let intersect = |protos: &mut Option<BTreeSet<u8>>, with: &[u8]| {
            let with: BTreeSet<u8> = with.iter().copied().collect();
            *protos = Some(match protos.take() {
                None => with,
                Some(p) => p.intersection(&with).copied().collect(),
            });
        };
        for m in &rule.matches {
            match m {
                Match::Iif(name) => {
                    if iface.is_some_and(|i| i != name) {
                        return Ok(None);
                    }
                    iface = Some(name);
                }
                Match::CtState(states) => {
                    // Bit order, as the conntrack match prints them.
                    let s: BTreeSet<u8> = states
                        .iter()
                        .map(|s| match s {
                            CtState::Related => 0,
                            CtState::Established => 1,
                        })
                        .collect();
                    ct = Some(match ct.take() {
                        None => s,
                        Some(prev) => prev.intersection(&s).copied().collect(),
                    });
                }
                Match::Ipsec(b) => {
                    if ipsec.is_some_and(|prev| prev != *b) {
                        return Ok(None);
                    }
                    ipsec = Some(*b);
                }
                Match::Saddr { addrs, negate, .. } => {
                    let bang = if *negate { "! " } else { "" };
                    match addrs {
                        AddrMatch::Set(name) => {
                            let Some(set) = self.ir_sets.get(&**name) else {
                                return err(format!(
                                    "a rule matches set {name}, which the ruleset does not define"
                                ));
                            };
                            p.sets.push(format!("-m set {bang}--match-set {set} src"));
                        }
                        AddrMatch::Literal(ranges) => {
                            let prefixes: Vec<Cidr> =
                                ranges.iter().flat_map(|r| r.to_prefixes()).collect();
                            if !negate {
                                if prefixes.is_empty() {
                                    return Ok(None);
                                }
                                if !src_used && prefixes.len() <= self.opts.literal_rules_max {
                                    src_used = true;
                                    p.src = prefixes
                                        .iter()
                                        .map(|c| {
                                            if c.net().prefix_len() == 0 {
                                                String::new()
                                            } else {
                                                format!("-s {}", cidr_text(c))
                                            }
                                        })
                                        .collect();
                                } else {
                                    let set = self.literal_set(ranges)?;
                                    p.sets.push(format!("-m set --match-set {set} src"));
                                }
                            } else {
                                if prefixes.is_empty() {
                                    continue;
                                }
                                if prefixes.iter().any(|c| c.net().prefix_len() == 0) {
                                    return Ok(None);
                                }
                                if !src_used && prefixes.len() == 1 {
                                    src_used = true;
                                    p.src = vec![format!("! -s {}", cidr_text(&prefixes[0]))];
                                } else {
                                    let set = self.literal_set(ranges)?;
                                    p.sets.push(format!("-m set ! --match-set {set} src"));
                                }
                            }
                        }
                    }
                }
                Match::L4Proto(ps) => intersect(&mut protos, ps),
                Match::Dport { proto, ports } => {
                    if dport.is_some() {
                        return err("a rule with two port matches");
                    }
                    dport = Some((*proto, ports));
                    intersect(
                        &mut protos,
                        &[if *proto == PortProto::Tcp { 6 } else { 17 }],
                    );
                }
                Match::Icmp { v6, types, code } => {
                    if icmp.is_some() {
                        return err("a rule with two ICMP matches");
                    }
                    icmp = Some((types, *code));
                    intersect(&mut protos, &[if *v6 { 58 } else { 1 }]);
                }
                Match::Limit { rate, burst } => {
                    if !p.limit.is_empty() {
                        return err("a rule with two limits");
                    }
                    p.limit = limit_text(*rate, *burst)?;
                }
            }
        }
        if let Some(i) = iface {
            p.iface = format!("-i {i}");
        }
        if let Some(states) = ct {
            if states.is_empty() {
                return Ok(None);
            }
            let names: Vec<&str> = states
                .iter()
                .map(|s| if *s == 0 { "RELATED" } else { "ESTABLISHED" })
                .collect();
            p.ct = format!("-m conntrack --ctstate {}", names.join(","));
        }
        if let Some(b) = ipsec {
            p.policy = format!(
                "-m policy --dir in --pol {}",
                if b { "ipsec" } else { "none" }
            );
        }
        p.protos = match protos {
            None => vec![(String::new(), String::new())],
            Some(set) => {
                let mut alts = Vec::new();
                for n in set {
                    match (dport, icmp) {
                        (Some((pp, ports)), _)
                            if n == if pp == PortProto::Tcp { 6 } else { 17 } =>
                        {
                            alts.extend(port_alternatives(pp, ports));
                        }
                        (_, Some((types, code))) if n == 1 || n == 58 => {
                            for t in types {
                                alts.push(match fam {
                                    Family::V4 if *t == 255 => {
                                        ("-p icmp".into(), u32_icmp(*t, code))
                                    }
                                    Family::V4 => {
                                        let c = code.map(|c| format!("/{c}")).unwrap_or_default();
                                        ("-p icmp".into(), format!("-m icmp --icmp-type {t}{c}"))
                                    }
                                    Family::V6 => {
                                        let c = code.map(|c| format!("/{c}")).unwrap_or_default();
                                        (
                                            "-p ipv6-icmp".into(),
                                            format!("-m icmp6 --icmpv6-type {t}{c}"),
                                        )
                                    }
                                });
                            }
                        }
                        // `-p 0` means "any protocol" to iptables: match the header field.
                        // IPv6: the transport protocol after extension headers is never 0.
                        _ if n == 0 => {
                            if fam == Family::V4 {
                                alts.push((String::new(), "-m u32 --u32 \"0x6&0xff=0x0\"".into()));
                            }
                        }
                        _ => alts.push((format!("-p {}", proto_text(n)), String::new())),
                    }
                }
                if alts.is_empty() {
                    return Ok(None);
                }
                alts
            }
        };
        Ok(Some(p))
    }

    /// The target that counts in `counter` and then does `verdict`.
    fn counter_target(&mut self, counter: &str, verdict: &Verdict) -> Result<String, RenderError> {
        let (body, call) = match verdict {
            Verdict::Accept => ("-j RETURN", false),
            Verdict::Drop => ("-j DROP", false),
            Verdict::Continue => ("", true),
            other => return err(format!("counter {counter} on a {other:?} rule")),
        };
        let name = counter_chain(counter);
        match self.counters.get(counter) {
            Some((_, b)) if *b != body => {
                return err(format!(
                    "counter {counter} used with two different verdicts"
                ))
            }
            Some(_) => {}
            None => {
                self.declare(&name)?;
                self.push(
                    &name,
                    body.to_string(),
                    Some(format!("named counter {counter} (read by `reyes status`)")),
                );
                self.counters
                    .insert(counter.to_string(), (name.clone(), body));
            }
        }
        Ok(format!("{} {name}", if call { "-j" } else { "-g" }))
    }

    /// A rule whose verdict is accept, drop or continue.
    fn plain(&mut self, chain: &str, rule: &Rule) -> Result<(), RenderError> {
        let Some(parts) = self.conditions(rule)? else {
            return Ok(());
        };
        let comment = Some(origin_text(&rule.origin));
        let term: Option<String> = match (&rule.verdict, rule.counter) {
            (v, Some(c)) => Some(self.counter_target(c, v)?),
            (Verdict::Accept, None) => Some("-j RETURN".into()),
            (Verdict::Drop, None) => Some("-j DROP".into()),
            (Verdict::Continue, None) => None,
            (other, None) => return err(format!("unexpected verdict {other:?}")),
        };
        let Some(log) = &rule.log else {
            if let Some(t) = term {
                self.push_all(chain, parts.specs(&[], "", &t), comment);
            }
            return Ok(());
        };
        let (prefix, note) = log_prefix(&log.prefix);
        let comment = match note {
            Some(n) => Some(format!("{}; {n}", origin_text(&rule.origin))),
            None => comment,
        };
        let log_t = format!("-j LOG --log-prefix \"{prefix}\"");
        let limited = !parts.limit.is_empty();
        match term {
            None => self.push_all(chain, parts.specs(&[], "", &log_t), comment),
            Some(t) if !limited => {
                let mut specs = Vec::new();
                for (l, v) in parts
                    .specs(&[], "", &log_t)
                    .into_iter()
                    .zip(parts.specs(&[], "", &t))
                {
                    specs.push(l);
                    specs.push(v);
                }
                self.push_all(chain, specs, comment);
            }
            Some(t) => {
                // A rate limit must be consumed once: log and verdict in a helper chain.
                let helper = shorten(
                    &format!(
                        "{CHAIN_PREFIX}LOG-{}",
                        hash_hex(&format!("{chain}\n{log_t}\n{t}"), 4)
                    ),
                    MAX_CHAIN_NAME,
                );
                if !self.chains.contains_key(&helper) {
                    self.declare(&helper)?;
                    self.push(&helper, log_t, None);
                    self.push(&helper, t.clone(), None);
                }
                let enter = if t.starts_with("-j ") && t != "-j RETURN" && t != "-j DROP" {
                    "-j"
                } else {
                    "-g"
                };
                self.push_all(
                    chain,
                    parts.specs(&[], "", &format!("{enter} {helper}")),
                    comment,
                );
            }
        }
        Ok(())
    }

    /// What "run `rest`, then `k`" is, as a continuation: `k` itself when nothing in `rest`
    /// applies, the target when `rest` is one unconditional jump, a new segment chain otherwise.
    fn rest_cont(
        &mut self,
        chain: &str,
        rest: &[Rule],
        k: &Cont,
        seg: &mut usize,
    ) -> Result<Cont, RenderError> {
        let live: Vec<&Rule> = rest.iter().filter(|r| self.applies(r)).collect();
        if live.is_empty() {
            return Ok(k.clone());
        }
        if let [only] = live.as_slice() {
            if let (Verdict::Jump(c), true, None, None) = (
                &only.verdict,
                only.matches.is_empty(),
                &only.log,
                only.counter,
            ) {
                return Ok(Cont::Chain(self.variant(c, k)?));
            }
        }
        *seg += 1;
        let name = shorten(&format!("{chain}-{seg}"), MAX_CHAIN_NAME);
        self.declare(&name)?;
        self.seq(&name, rest, k, seg, "end of chain")?;
        Ok(Cont::Chain(name))
    }

    /// The chain for IR chain `c` running off into `k`.
    fn variant(&mut self, c: &str, k: &Cont) -> Result<String, RenderError> {
        let key = (c.to_string(), k.clone());
        if let Some(n) = self.variants.get(&key) {
            return Ok(n.clone());
        }
        let rs = self.rs;
        let Some(chain) = rs.chain(c) else {
            return err(format!(
                "a jump to chain {c}, which the ruleset does not define"
            ));
        };
        let plain = chain_name(c);
        let name = if self.primary.as_ref() == Some(k) {
            plain
        } else {
            shorten(&format!("{plain}-{}", hash_hex(k.key(), 4)), MAX_CHAIN_NAME)
        };
        self.variants.insert(key, name.clone());
        self.declare(&name)?;
        let mut seg = 0;
        let end = match &chain.kind {
            crate::compile::ChainKind::Group(g) => format!("no rule of {} accepts it", clean(g)),
            crate::compile::ChainKind::Profile(_) => "end of the profile".to_string(),
        };
        self.seq(&name, &chain.rules, k, &mut seg, &end)?;
        Ok(name)
    }

    /// Emit `rules` into `chain`, which runs off into `k` (`end` says why, in a comment).
    fn seq(
        &mut self,
        chain: &str,
        rules: &[Rule],
        k: &Cont,
        seg: &mut usize,
        end: &str,
    ) -> Result<(), RenderError> {
        for (i, rule) in rules.iter().enumerate() {
            if !self.applies(rule) {
                continue;
            }
            match &rule.verdict {
                Verdict::Jump(_) | Verdict::Dispatch(_) => {
                    if rule.log.is_some() || rule.counter.is_some() {
                        return err("a jump or dispatch rule that logs or counts");
                    }
                    let r = self.rest_cont(chain, &rules[i + 1..], k, seg)?;
                    let conditional = match &rule.verdict {
                        Verdict::Jump(c) => {
                            let target = self.variant(c, &r)?;
                            if let Some(parts) = self.conditions(rule)? {
                                self.push_all(
                                    chain,
                                    parts.specs(&[], "", &format!("-g {target}")),
                                    Some(origin_text(&rule.origin)),
                                );
                            }
                            !rule.matches.is_empty()
                        }
                        _ => {
                            self.dispatch(chain, rule, &r)?;
                            true
                        }
                    };
                    if let (true, Cont::Chain(next)) = (conditional, &r) {
                        let why = if matches!(rule.verdict, Verdict::Dispatch(_)) {
                            "no group chain for the destination"
                        } else {
                            "jump not taken"
                        };
                        self.push(chain, format!("-g {next}"), Some(format!("{why}: go on")));
                    }
                    return Ok(());
                }
                _ => self.plain(chain, rule)?,
            }
        }
        if let Cont::Chain(next) = k {
            self.push(chain, format!("-g {next}"), Some(format!("{end}: go on")));
        }
        Ok(())
    }

    fn dispatch(&mut self, chain: &str, rule: &Rule, r: &Cont) -> Result<(), RenderError> {
        if self.primary.is_none() {
            self.primary = Some(r.clone());
        }
        let Some(parts) = self.conditions(rule)? else {
            return Ok(());
        };
        let mut by_chain: BTreeMap<&str, Vec<Range>> = BTreeMap::new();
        for e in self.rs.dispatch(self.fam) {
            by_chain.entry(&*e.chain).or_default().push(e.range);
        }
        let mut first = true;
        for (target_ir, ranges) in by_chain {
            let target = self.variant(target_ir, r)?;
            let prefixes: Vec<Cidr> = ranges.iter().flat_map(|r| r.to_prefixes()).collect();
            let as_rules = match self.opts.dispatch {
                DispatchLayout::Rules => true,
                DispatchLayout::Sets => false,
                DispatchLayout::Auto(max) => prefixes.len() <= max,
            };
            let goto = format!("-g {target}");
            let specs = if as_rules {
                let dst: Vec<String> = prefixes
                    .iter()
                    .map(|c| {
                        if c.net().prefix_len() == 0 {
                            String::new()
                        } else {
                            format!("-d {}", cidr_text(c))
                        }
                    })
                    .collect();
                parts.specs(&dst, "", &goto)
            } else {
                let body = format!("d{}_{target_ir}", self.fam.digit());
                let set = IpSet::new(
                    set_name(&body),
                    self.fam,
                    set_members(&ranges),
                    format!("destinations of {target_ir}"),
                );
                let name = self.add_set(set)?;
                parts.specs(&[], &format!("-m set --match-set {name} dst"), &goto)
            };
            let comment = first.then(|| origin_text(&rule.origin));
            first = false;
            self.push_all(chain, specs, comment);
        }
        Ok(())
    }

    fn run(mut self) -> Result<Table, RenderError> {
        self.declare(BASE_CHAIN)?;
        self.counter_target(COUNTER_ACCEPTED, &Verdict::Accept)?;
        self.counter_target(COUNTER_DROPPED, &Verdict::Drop)?;
        let rs = self.rs;
        let mut seg = 0;
        self.seq(BASE_CHAIN, &rs.input, &Cont::Exit, &mut seg, "end of chain")?;
        let mut chains: Vec<String> = vec![BASE_CHAIN.to_string()];
        chains.extend(self.chains.keys().filter(|c| *c != BASE_CHAIN).cloned());
        let mut lines = Vec::new();
        for c in &chains {
            lines.extend(self.chains.remove(c).unwrap_or_default());
        }
        Ok(Table {
            family: self.fam,
            chains,
            lines,
        })
    }
}

/// Translate a ruleset.
pub fn plan(rs: &Ruleset, opts: &Options) -> Result<Plan, RenderError> {
    let mut sets: BTreeMap<String, IpSet> = BTreeMap::new();
    let mut ir_sets: BTreeMap<String, String> = BTreeMap::new();
    for s in &rs.sets {
        let name = set_name(&s.name);
        if sets.contains_key(&name) {
            return err(format!("two sets would be named {name}"));
        }
        ir_sets.insert(s.name.to_string(), name.clone());
        sets.insert(
            name.clone(),
            IpSet::new(
                name,
                s.family,
                set_members(&s.elements),
                purpose_text(&s.purpose),
            ),
        );
    }
    let mut translate = |fam: Family| {
        Translator {
            rs,
            fam,
            opts: *opts,
            ir_sets: &ir_sets,
            sets: &mut sets,
            chains: BTreeMap::new(),
            variants: BTreeMap::new(),
            primary: None,
            counters: BTreeMap::new(),
        }
        .run()
    };
    let v4 = translate(Family::V4)?;
    let v6 = translate(Family::V6)?;
    Ok(Plan {
        header: Header {
            environment: clean(&rs.meta.environment),
            policy_digest: clean(&rs.meta.policy_digest),
            target: crate::nft::render::target_text(&rs.meta.target),
            enforce: match rs.meta.enforce {
                crate::config::Enforce::Ipsec => "ipsec",
                crate::config::Enforce::Cidr => "cidr",
            },
        },
        sets: sets.into_values().collect(),
        v4,
        v6,
    })
}

fn env() -> Result<Environment<'static>, RenderError> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    for (name, text) in [
        ("ruleset", TMPL_RULESET),
        ("stage", TMPL_STAGE),
        ("swap", TMPL_SWAP),
        ("destroy", TMPL_DESTROY),
        ("filter", TMPL_FILTER),
    ] {
        env.add_template(name, text)
            .map_err(|e| RenderError(e.to_string()))?;
    }
    Ok(env)
}

fn render_tmpl(name: &str, ctx: minijinja::Value) -> Result<String, RenderError> {
    let env = env()?;
    let t = env
        .get_template(name)
        .map_err(|e| RenderError(e.to_string()))?;
    t.render(ctx).map_err(|e| RenderError(e.to_string()))
}

/// `ipset restore` input that fills every set's temporary twin, and creates (empty) the live
/// sets named in `create_live` (those that do not exist yet, so the swap has a partner).
pub fn stage_script(plan: &Plan, create_live: &BTreeSet<String>) -> Result<String, RenderError> {
    let live: Vec<&IpSet> = plan
        .sets
        .iter()
        .filter(|s| create_live.contains(&s.name))
        .collect();
    render_tmpl("stage", context! { sets => plan.sets, create_live => live })
}

/// `ipset restore` input that swaps every temporary set with its live set.
pub fn swap_script(plan: &Plan) -> Result<String, RenderError> {
    render_tmpl("swap", context! { sets => plan.sets })
}

/// `ipset restore` input that destroys these sets.
pub fn destroy_script(names: &[String]) -> Result<String, RenderError> {
    render_tmpl("destroy", context! { names => names })
}

/// `iptables-restore --noflush` input for one table: declares (and so creates or flushes) our
/// chains, fills them, deletes `delete_jumps` jumps from INPUT, deletes the chains in `stale`
/// (ours, no longer used), and inserts the jump from INPUT when `insert_jump`.
pub fn table_script(
    table: &Table,
    insert_jump: bool,
    stale: &[String],
    delete_jumps: usize,
) -> Result<String, RenderError> {
    render_tmpl(
        "filter",
        context! {
            chains => table.chains,
            lines => table.lines,
            stale => stale,
            insert_jump => insert_jump,
            delete_jumps => delete_jumps,
            hook => HOOK_CHAIN,
            base => BASE_CHAIN,
        },
    )
}

/// The whole text for `reyes render --backend iptables`: every script an apply on a host
/// without reyes' objects runs, in order.
pub fn render(rs: &Ruleset, opts: &Options) -> Result<String, RenderError> {
    let plan = plan(rs, opts)?;
    render_plan(&plan)
}

/// [`render`] of a plan.
pub fn render_plan(plan: &Plan) -> Result<String, RenderError> {
    let all: BTreeSet<String> = plan.sets.iter().map(|s| s.name.clone()).collect();
    let temps: Vec<String> = plan.sets.iter().map(|s| s.temp.clone()).collect();
    render_tmpl(
        "ruleset",
        context! {
            header => plan.header,
            stage => stage_script(plan, &all)?,
            swap => swap_script(plan)?,
            filter4 => table_script(&plan.v4, true, &[], 0)?,
            filter6 => table_script(&plan.v6, true, &[], 0)?,
            cleanup => destroy_script(&temps)?,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile, Target};

    use crate::compile::tests::{ctx, doc, TWO};

    fn specs(t: &Table, chain: &str) -> Vec<String> {
        t.lines
            .iter()
            .filter(|l| l.chain == chain)
            .map(|l| l.spec.clone())
            .collect()
    }

    #[test]
    fn names_are_bounded_and_deterministic() {
        assert_eq!(
            chain_name("g_sg_0123456789abcdef0"),
            "REYES-G-sg_0123456789abcdef0"
        );
        let long = chain_name("g_sg_0123456789abcdef0_and_more");
        assert_eq!(long.len(), MAX_CHAIN_NAME);
        assert_eq!(long, chain_name("g_sg_0123456789abcdef0_and_more"));
        assert_ne!(long, chain_name("g_sg_0123456789abcdef0_and_mord"));
        assert_eq!(
            set_name("m4_sg_0123456789abcdef0"),
            "reyes-m4_sg_0123456789abcdef0"
        );
        let s = set_name("d4_g_sg_0123456789abcdef0");
        assert!(s.len() + TEMP_SUFFIX.len() <= MAX_SET_NAME, "{s}");
        assert_eq!(counter_chain("accepted"), "REYES-ACCEPTED");
    }

    #[test]
    fn log_prefixes_fit() {
        assert_eq!(
            log_prefix("reyes drop: "),
            ("reyes drop: ".to_string(), None)
        );
        let (p, note) = log_prefix("reyes accept sg-0123456789abcdef0/12: ");
        assert_eq!(p.len(), MAX_LOG_PREFIX);
        assert!(
            p.starts_with("reyes accept sg-0123~") && p.ends_with(": "),
            "{p}"
        );
        assert!(note.unwrap().contains("sg-0123456789abcdef0/12"));
    }

    #[test]
    fn ports_and_limits_as_iptables_prints_them() {
        let r = |a, b| PortRange { first: a, last: b };
        assert_eq!(
            port_alternatives(PortProto::Udp, &[r(500, 500), r(4500, 4500)]),
            vec![("-p udp".into(), "-m multiport --dports 500,4500".into())]
        );
        assert_eq!(
            port_alternatives(PortProto::Tcp, &[r(8000, 8100)]),
            vec![("-p tcp".into(), "-m tcp --dport 8000:8100".into())]
        );
        let many: Vec<PortRange> = (0..10).map(|i| r(i * 10, i * 10 + 1)).collect();
        let alts = port_alternatives(PortProto::Tcp, &many);
        assert_eq!(alts.len(), 2, "{alts:?}");
        assert_eq!(
            limit_text(5, 10).unwrap(),
            "-m limit --limit 5/sec --limit-burst 10"
        );
        assert_eq!(limit_text(9999, 5).unwrap(), "-m limit --limit 10000/sec");
        assert!(limit_text(0, 5).is_err());
    }

    #[test]
    fn accept_returns_and_groups_continue_into_the_tail() {
        let rs = compile(&doc(TWO), &ctx(&["10.0.0.1"])).unwrap();
        let p = plan(&rs, &Options::default()).unwrap();
        let base = specs(&p.v4, BASE_CHAIN);
        assert_eq!(base[0], "-i lo -j RETURN");
        assert_eq!(
            base[1],
            "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
        );
        assert_eq!(base[2], "-m policy --dir in --pol none -j RETURN");
        assert!(
            base.contains(&"-p esp -j RETURN".to_string())
                && base.contains(&"-p ah -j RETURN".to_string())
        );
        // 10.0.0.1 is in two groups: a profile chain, reached by goto.
        let d = base
            .iter()
            .find(|s| s.starts_with("-d 10.0.0.1/32"))
            .unwrap();
        assert!(d.contains("-g REYES-P-"), "{d}");
        assert_eq!(base.last().unwrap(), "-g REYES-INPUT-1");
        assert_eq!(specs(&p.v4, "REYES-INPUT-1"), vec!["-g REYES-DROPPED"]);
        assert_eq!(specs(&p.v4, "REYES-DROPPED"), vec!["-j DROP"]);
        assert_eq!(specs(&p.v4, "REYES-ACCEPTED"), vec!["-j RETURN"]);
        // The profile goes to a variant of sg-a that continues into sg-b, which continues into
        // the tail.
        let prof = d.rsplit(' ').next().unwrap();
        let first = specs(&p.v4, prof);
        assert_eq!(first.len(), 1);
        let a = first[0].strip_prefix("-g ").unwrap();
        assert!(a.starts_with("REYES-G-sg_a-"), "{a}");
        let a_rules = specs(&p.v4, a);
        assert!(
            a_rules
                .contains(&"-s 10.9.0.0/24 -p tcp -m tcp --dport 22 -g REYES-ACCEPTED".to_string()),
            "{a_rules:?}"
        );
        assert!(a_rules.iter().any(
            |s| s.starts_with("-p tcp -m set --match-set reyes-m4_sg_b src -m tcp --dport 22")
        ));
        assert_eq!(a_rules.last().unwrap(), "-g REYES-G-sg_b");
        assert_eq!(
            specs(&p.v4, "REYES-G-sg_b").last().unwrap(),
            "-g REYES-INPUT-1"
        );
        // No IPv6 destination: the v6 table has no group chains.
        assert!(
            !p.v6.chains.iter().any(|c| c.starts_with("REYES-G-")),
            "{:?}",
            p.v6.chains
        );
    }

    #[test]
    fn dispatch_layouts() {
        let mut c = ctx(&[]);
        c.target = Target::AllGroups;
        let rs = compile(&doc(TWO), &c).unwrap();
        let rules = plan(
            &rs,
            &Options {
                dispatch: DispatchLayout::Rules,
                ..Options::default()
            },
        )
        .unwrap();
        assert!(!rules.sets.iter().any(|s| s.name.starts_with("reyes-d")));
        let sets = plan(
            &rs,
            &Options {
                dispatch: DispatchLayout::Sets,
                ..Options::default()
            },
        )
        .unwrap();
        assert!(
            sets.sets.iter().any(|s| s.name == "reyes-d4_g_sg_b"),
            "{:?}",
            sets.sets.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        assert!(specs(&sets.v4, BASE_CHAIN)
            .iter()
            .any(|s| s == "-m set --match-set reyes-d4_g_sg_b dst -g REYES-G-sg_b"));
    }

    #[test]
    fn odd_protocols_and_icmp() {
        let yaml = r#"
groups:
  - id: sg-a
    ingress:
      - {proto: 0, from: {cidrs: [10.0.0.0/8, "fd00::/8"]}}
      - {proto: icmp, icmp_type: 255, icmp_code: 3, from: {cidrs: [10.0.0.0/8]}}
      - {proto: icmpv6, icmp_type: 1, icmp_code: 4, from: {cidrs: ["fd00::/8"]}}
      - {proto: 47, from: {cidrs: [0.0.0.0/0]}}
hosts:
  - {id: h, addresses: [10.0.0.1, "fd00::1"], groups: [sg-a]}
"#;
        let rs = compile(&doc(yaml), &ctx(&["10.0.0.1", "fd00::1"])).unwrap();
        let p = plan(&rs, &Options::default()).unwrap();
        let g4 = specs(&p.v4, "REYES-G-sg_a");
        assert!(
            g4.contains(
                &"-s 10.0.0.0/8 -m u32 --u32 \"0x6&0xff=0x0\" -g REYES-ACCEPTED".to_string()
            ),
            "{g4:?}"
        );
        assert!(g4.iter().any(|s| s.contains("-p icmp -m u32 --u32 \"0x0>>0x16&0x3c@0x0>>0x18=0xff&&0x0>>0x16&0x3c@0x0>>0x10&0xff=0x3\"")), "{g4:?}");
        assert!(
            g4.contains(&"-p 47 -g REYES-ACCEPTED".to_string()),
            "{g4:?}"
        );
        let g6 = specs(&p.v6, "REYES-G-sg_a");
        assert!(!g6.iter().any(|s| s.contains("u32")), "{g6:?}");
        assert!(
            g6.contains(
                &"-s fd00::/8 -p ipv6-icmp -m icmp6 --icmpv6-type 1/4 -g REYES-ACCEPTED"
                    .to_string()
            ),
            "{g6:?}"
        );
    }

    #[test]
    fn logging_and_long_literals() {
        let yaml = r#"
groups:
  - id: sg-a
    ingress:
      - {proto: tcp, ports: 80, from: {cidrs: [10.1.0.0/24, 10.3.0.0/24, 10.5.0.0/24, 10.7.0.0/24, 10.9.0.0/24]}}
      - {proto: udp, ports: 53, from: {cidrs: [10.1.0.0/24, 10.3.0.0/24]}}
hosts:
  - {id: h, addresses: [10.0.0.1], groups: [sg-a]}
"#;
        let mut c = ctx(&["10.0.0.1"]);
        c.log_accept = true;
        c.log_drop = true;
        let rs = compile(&doc(yaml), &c).unwrap();
        let p = plan(
            &rs,
            &Options {
                literal_rules_max: 4,
                ..Options::default()
            },
        )
        .unwrap();
        let g = specs(&p.v4, "REYES-G-sg_a");
        // Five prefixes: a set; two: one rule each. Accepts are logged first, by rate-limited
        // rules of their own (a limit on the accepting rule would stop it accepting).
        assert!(
            g[0].starts_with("-p tcp -m set --match-set reyes-l4_")
                && g[0].ends_with(
                    "-m limit --limit 5/sec --limit-burst 10 -j LOG --log-prefix \"reyes accept sg-a/0: \""
                ),
            "{g:?}"
        );
        assert!(g[1].ends_with("-g REYES-ACCEPTED"));
        assert!(!g[1].contains("limit"), "{g:?}");
        assert_eq!(
            g[2],
            "-s 10.1.0.0/24 -p udp -m udp --dport 53 -m limit --limit 5/sec --limit-burst 10 -j LOG --log-prefix \"reyes accept sg-a/1: \""
        );
        assert_eq!(
            g[3],
            "-s 10.3.0.0/24 -p udp -m udp --dport 53 -m limit --limit 5/sec --limit-burst 10 -j LOG --log-prefix \"reyes accept sg-a/1: \""
        );
        assert_eq!(
            g[4],
            "-s 10.1.0.0/24 -p udp -m udp --dport 53 -g REYES-ACCEPTED"
        );
        let tail = specs(&p.v4, "REYES-INPUT-1");
        assert_eq!(
            tail,
            vec![
                "-m limit --limit 5/sec --limit-burst 10 -j LOG --log-prefix \"reyes drop: \"",
                "-g REYES-DROPPED"
            ]
        );
        let l = p
            .sets
            .iter()
            .find(|s| s.name.starts_with("reyes-l4_"))
            .unwrap();
        assert_eq!(l.members.len(), 5);
    }

    #[test]
    fn whole_space_is_split_for_sets() {
        let m = set_members(&[Range::all(Family::V4)]);
        assert_eq!(
            m.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            vec!["0.0.0.0/1", "128.0.0.0/1"]
        );
        let m = set_members(&[Range::all(Family::V6)]);
        assert_eq!(
            m.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            vec!["::/1", "8000::/1"]
        );
    }

    #[test]
    fn render_is_deterministic() {
        let rs = compile(&doc(TWO), &ctx(&["10.0.0.1", "10.0.0.2", "fd00::2"])).unwrap();
        let a = render(&rs, &Options::default()).unwrap();
        let b = render(&rs, &Options::default()).unwrap();
        assert_eq!(a, b);
        assert!(a.contains("-I INPUT 1 -j REYES-INPUT"), "{a}");
        assert!(a.contains("swap reyes-m4_sg_b-t reyes-m4_sg_b"), "{a}");
    }
}
