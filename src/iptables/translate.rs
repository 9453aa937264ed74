//! The continuation-passing translation of the IR into reyes' chains (see [`super::render`]
//! for why): one [`Translator`] per family.

use std::collections::{BTreeMap, BTreeSet};

use crate::compile::{
    AddrKey, AddrMatch, ChainPolicy, CtState, Hook, Match, PortProto, Rule, Ruleset, Verdict,
};
use crate::net::{Cidr, Family, Range};
use crate::proto::{self, PortRange};

use super::matches::*;
use super::names::*;
use super::plan::{err, IpSet, Line, Options, RenderError, Table};

mod dispatch;

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
#[derive(Debug, Default, Clone)]
struct Parts {
    src: Vec<String>,
    dst: Vec<String>,
    iface: String,
    protos: Vec<(String, String)>,
    ct: String,
    policy: String,
    policy_out: String,
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
        let dst: &[String] = match (dst.is_empty(), self.dst.is_empty()) {
            (false, _) => dst,
            (true, false) => &self.dst,
            (true, true) => &none,
        };
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
                        &self.policy_out,
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
                Match::Saddr { family, .. } | Match::Daddr { family, .. } if *family != fam => {
                    return false
                }
                Match::Icmp { v6, .. } if *v6 != (fam == Family::V6) => return false,
                _ => {}
            }
        }
        match &r.verdict {
            Verdict::Dispatch(f) | Verdict::DispatchBy { family: f, .. } => *f == fam,
            _ => true,
        }
    }

    /// The conditions of a rule; `None` when it can never match in this family.
    fn conditions(&mut self, rule: &Rule) -> Result<Option<Parts>, RenderError> {
        let fam = self.fam;
        let mut p = Parts::default();
        let mut iface: Option<&str> = None;
        let mut ct: Option<BTreeSet<u8>> = None;
        let mut ipsec: Option<bool> = None;
        let mut ipsec_out: Option<bool> = None;
        let mut dst_used = false;
        let mut protos: Option<BTreeSet<u8>> = None;
        let mut dport: Option<(PortProto, &[PortRange])> = None;
        let mut icmp: Option<(&[u8], Option<u8>)> = None;
        let mut src_used = false;
        for m in &rule.matches {
            match m {
                Match::Iif(name) => {
                    if iface.is_some_and(|i| i != name) {
                        return Ok(None);
                    }
                    iface = Some(name);
                }
                Match::CtState(states) => intersect(&mut ct, &ct_bits(states)),
                Match::Ipsec(b) => {
                    if ipsec.is_some_and(|prev| prev != *b) {
                        return Ok(None);
                    }
                    ipsec = Some(*b);
                }
                Match::IpsecOut(b) => {
                    if ipsec_out.is_some_and(|prev| prev != *b) {
                        return Ok(None);
                    }
                    ipsec_out = Some(*b);
                }
                Match::Saddr { addrs, negate, .. } => {
                    if !self.source(&mut p, &mut src_used, addrs, *negate, Dir::Src)? {
                        return Ok(None);
                    }
                }
                Match::Daddr { addrs, negate, .. } => {
                    if !self.source(&mut p, &mut dst_used, addrs, *negate, Dir::Dst)? {
                        return Ok(None);
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
                        &[if *proto == PortProto::Tcp {
                            proto::TCP
                        } else {
                            proto::UDP
                        }],
                    );
                }
                Match::Icmp { v6, types, code } => {
                    if icmp.is_some() {
                        return err("a rule with two ICMP matches");
                    }
                    icmp = Some((types, *code));
                    intersect(
                        &mut protos,
                        &[if *v6 { proto::ICMPV6 } else { proto::ICMP }],
                    );
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
            p.ct = ct_text(&states);
        }
        if let Some(b) = ipsec {
            p.policy = format!(
                "-m policy --dir in --pol {}",
                if b { "ipsec" } else { "none" }
            );
        }
        if let Some(b) = ipsec_out {
            p.policy_out = format!(
                "-m policy --dir out --pol {}",
                if b { "ipsec" } else { "none" }
            );
        }
        p.protos = match protos {
            None => vec![(String::new(), String::new())],
            Some(set) => {
                let alts = proto_alternatives(fam, &set, dport, icmp);
                if alts.is_empty() {
                    return Ok(None);
                }
                alts
            }
        };
        Ok(Some(p))
    }

    /// Add a source (or destination) address match to `p`; `false` when it can never match.
    /// The first literal list small enough becomes `-s` (`-d`) alternatives (`src_used`), the
    /// others sets.
    fn source(
        &mut self,
        p: &mut Parts,
        src_used: &mut bool,
        addrs: &AddrMatch,
        negate: bool,
        dir: Dir,
    ) -> Result<bool, RenderError> {
        let bang = if negate { "! " } else { "" };
        let (flag, word) = match dir {
            Dir::Src => ("-s", "src"),
            Dir::Dst => ("-d", "dst"),
        };
        let alternatives = match dir {
            Dir::Src => &mut p.src,
            Dir::Dst => &mut p.dst,
        };
        let ranges = match addrs {
            AddrMatch::Set(name) => {
                let Some(set) = self.ir_sets.get(&**name) else {
                    return err(format!(
                        "a rule matches set {name}, which the ruleset does not define"
                    ));
                };
                p.sets
                    .push(format!("-m set {bang}--match-set {set} {word}"));
                return Ok(true);
            }
            AddrMatch::Literal(ranges) => ranges,
        };
        let prefixes: Vec<Cidr> = ranges.iter().flat_map(|r| r.to_prefixes()).collect();
        if !negate {
            if prefixes.is_empty() {
                return Ok(false);
            }
            if !*src_used && prefixes.len() <= self.opts.literal_rules_max {
                *src_used = true;
                *alternatives = prefixes
                    .iter()
                    .map(|c| {
                        if c.net().prefix_len() == 0 {
                            String::new()
                        } else {
                            format!("{flag} {}", cidr_text(c))
                        }
                    })
                    .collect();
            } else {
                let set = self.literal_set(ranges)?;
                p.sets.push(format!("-m set --match-set {set} {word}"));
            }
        } else {
            if prefixes.is_empty() {
                return Ok(true);
            }
            if prefixes.iter().any(|c| c.net().prefix_len() == 0) {
                return Ok(false);
            }
            if !*src_used && prefixes.len() == 1 {
                *src_used = true;
                *alternatives = vec![format!("! {flag} {}", cidr_text(&prefixes[0]))];
            } else {
                let set = self.literal_set(ranges)?;
                p.sets.push(format!("-m set ! --match-set {set} {word}"));
            }
        }
        Ok(true)
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
        let term: Option<String> = match (&rule.verdict, rule.counter.as_deref()) {
            (v, Some(c)) => Some(self.counter_target(c, v)?),
            (Verdict::Accept, None) => Some("-j RETURN".into()),
            (Verdict::Drop, None) => Some("-j DROP".into()),
            (Verdict::Continue, None) => None,
            // A match that sets the label and always matches, as `iptables-save` prints it.
            (Verdict::CtLabel(bit), None) if rule.log.is_none() => {
                Some(format!("-m connlabel --label \"{bit}\" --set"))
            }
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
                &only.counter,
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
            crate::compile::ChainKind::Audit { .. } => "end of the audit chain".to_string(),
            crate::compile::ChainKind::Egress(g) => {
                format!("no egress rule of {} accepts it", clean(g))
            }
            crate::compile::ChainKind::EgressProfile(_) => "end of the egress profile".to_string(),
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
                Verdict::Jump(_) | Verdict::Dispatch(_) | Verdict::DispatchBy { .. } => {
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
                        let why = match &rule.verdict {
                            Verdict::Dispatch(_) => "no group chain for the destination",
                            Verdict::DispatchBy {
                                key: AddrKey::Source,
                                ..
                            } => "no egress chain for the source",
                            Verdict::DispatchBy { .. } => "no group chain for the destination",
                            _ => "jump not taken",
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

    fn run(mut self) -> Result<Table, RenderError> {
        let rs = self.rs;
        // reyes' chains hang off INPUT and return to it: the IR's accept policy.
        if rs.base.hook != Hook::Input || rs.base.policy != ChainPolicy::Accept {
            return err(format!(
                "a base chain at hook {} with policy {}: iptables takes input with policy accept",
                rs.base.hook.name(),
                rs.base.policy.name()
            ));
        }
        self.declare(BASE_CHAIN)?;
        for c in &rs.base.counters {
            self.counter_target(&c.name, &c.verdict)?;
        }
        let mut seg = 0;
        self.seq(BASE_CHAIN, &rs.input, &Cont::Exit, &mut seg, "end of chain")?;
        let mut chains: Vec<String> = vec![BASE_CHAIN.to_string()];
        for h in &rs.hooked {
            let name = hook_base_chain(h.hook).to_string();
            self.declare(&name)?;
            let mut seg = 0;
            self.seq(&name, &h.rules, &Cont::Exit, &mut seg, "end of chain")?;
            chains.push(name);
        }
        let bases = chains.clone();
        chains.extend(self.chains.keys().filter(|c| !bases.contains(c)).cloned());
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

/// Which address a match or lookup reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Src,
    Dst,
}

/// Translate the ruleset's chains for one family; sets it needs are added to `sets`.
pub(super) fn translate(
    rs: &Ruleset,
    fam: Family,
    opts: Options,
    ir_sets: &BTreeMap<String, String>,
    sets: &mut BTreeMap<String, IpSet>,
) -> Result<Table, RenderError> {
    Translator {
        rs,
        fam,
        opts,
        ir_sets,
        sets,
        chains: BTreeMap::new(),
        variants: BTreeMap::new(),
        primary: None,
        counters: BTreeMap::new(),
    }
    .run()
}

/// `(-p part, -m part)` alternatives for the protocols a rule allows, with its port or ICMP
/// match where the protocol carries it; empty when none can match in `fam`.
fn proto_alternatives(
    fam: Family,
    protos: &BTreeSet<u8>,
    dport: Option<(PortProto, &[PortRange])>,
    icmp: Option<(&[u8], Option<u8>)>,
) -> Vec<(String, String)> {
    let mut alts = Vec::new();
    for &n in protos {
        match (dport, icmp) {
            (Some((pp, ports)), _)
                if n == if pp == PortProto::Tcp {
                    proto::TCP
                } else {
                    proto::UDP
                } =>
            {
                alts.extend(port_alternatives(pp, ports));
            }
            (_, Some((types, code))) if n == proto::ICMP || n == proto::ICMPV6 => {
                alts.extend(types.iter().map(|t| icmp_alternative(fam, *t, code)));
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
    alts
}

fn icmp_alternative(fam: Family, t: u8, code: Option<u8>) -> (String, String) {
    let c = code.map(|c| format!("/{c}")).unwrap_or_default();
    match fam {
        Family::V4 if t == 255 => ("-p icmp".into(), u32_icmp(t, code)),
        Family::V4 => ("-p icmp".into(), format!("-m icmp --icmp-type {t}{c}")),
        Family::V6 => (
            "-p ipv6-icmp".into(),
            format!("-m icmp6 --icmpv6-type {t}{c}"),
        ),
    }
}

/// Keep only the values also in `with` (all of `with` when there were none yet).
fn intersect(protos: &mut Option<BTreeSet<u8>>, with: &[u8]) {
    let with: BTreeSet<u8> = with.iter().copied().collect();
    *protos = Some(match protos.take() {
        None => with,
        Some(p) => p.intersection(&with).copied().collect(),
    });
}

/// Conntrack states as bits, in the order the conntrack match prints them.
fn ct_bits(states: &[CtState]) -> Vec<u8> {
    states
        .iter()
        .map(|s| match s {
            CtState::Related => 0,
            CtState::Established => 1,
        })
        .collect()
}

/// `-m conntrack` for states in bit order (0 related, 1 established), as iptables prints it.
fn ct_text(states: &BTreeSet<u8>) -> String {
    let names: Vec<&str> = states
        .iter()
        .map(|s| if *s == 0 { "RELATED" } else { "ESTABLISHED" })
        .collect();
    format!("-m conntrack --ctstate {}", names.join(","))
}
