//! IR -> one nf_tables batch. No I/O: interface names are resolved by the caller's function.
//!
//! The expressions are the ones nft itself generates for the rendered text (checked against
//! `nft --debug=netlink` and the golden files in tests/golden/), so that `nft list` prints our
//! table exactly as `reyes render` wrote it.

use std::collections::HashMap;

use super::batch::{Batch, BatchBuilder};
use super::chain::{Chain, InputHook};
use super::counter::Counter;
use super::expr::{
    Bitwise, Cmp, CmpOp, Ct, Expr, Immediate, Limit, Log, Lookup, Meta, MetaKey, Objref, Payload,
    PayloadBase, Range as RangeExpr, Verdict as NlVerdict,
};
use super::rule::Rule as NlRule;
use super::set::{self, Element, Key, KeyKind, Set, SetElems, SetKind};
use super::sys::*;
use super::table::Table;
use crate::compile::{
    AddrMatch, CtState, Match, Origin, PortProto, Rule, Ruleset, Verdict, COUNTER_ACCEPTED,
    COUNTER_DROPPED, INPUT_CHAIN,
};
use crate::net::{Family, Range};
use crate::nft::render::map_name;
use crate::proto::PortRange;

/// The IR cannot be expressed as nf_tables messages.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// `iif NAME` names an interface this host does not have.
    #[error("chain {chain} rule {rule}: no interface named {name:?} on this host")]
    UnknownInterface {
        /// Chain.
        chain: String,
        /// Rule position (1-based).
        rule: usize,
        /// Interface.
        name: String,
    },
    /// A match with nothing to match (an empty list).
    #[error("chain {chain} rule {rule}: empty {what} list")]
    Empty {
        /// Chain.
        chain: String,
        /// Rule position (1-based).
        rule: usize,
        /// Which list.
        what: &'static str,
    },
}

/// How an IR rule is described in errors.
pub fn origin_text(o: &Origin) -> String {
    match o {
        Origin::Base(s) => s.clone(),
        Origin::Failsafe(i) => format!("follower.failsafe[{i}]"),
        Origin::GroupRule {
            group,
            rule,
            source,
        } => format!("group {group} ingress[{rule}], source {source}"),
        Origin::Profile(s) => format!("profile {s}"),
    }
}

fn family_bytes(f: Family) -> usize {
    match f {
        Family::V4 => 4,
        Family::V6 => 16,
    }
}

fn nfproto(f: Family) -> u8 {
    match f {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

fn saddr_offset(f: Family) -> u32 {
    match f {
        Family::V4 => 12,
        Family::V6 => 8,
    }
}

fn daddr_offset(f: Family) -> u32 {
    match f {
        Family::V4 => 16,
        Family::V6 => 24,
    }
}

fn addr_key(f: Family) -> KeyKind {
    match f {
        Family::V4 => KeyKind::Ipv4Addr,
        Family::V6 => KeyKind::Ipv6Addr,
    }
}

fn be(v: u128, len: usize) -> Vec<u8> {
    Key::from_u128(v, len).as_slice().to_vec()
}

fn prefix_mask(len: u8, bytes: usize) -> Vec<u8> {
    let bits = bytes * 8;
    let v: u128 = if len == 0 {
        0
    } else {
        let ones = (u128::MAX >> (128 - bits)) & !((1u128 << (bits - len as usize)) - 1);
        if bits == 128 {
            u128::MAX << (128 - len as usize)
        } else {
            ones
        }
    };
    be(v, bytes)
}

fn payload(base: PayloadBase, offset: u32, len: usize) -> Expr {
    Expr::Payload(Payload {
        base,
        offset,
        len: len as u32,
    })
}

fn meta(key: MetaKey) -> Expr {
    Expr::Meta(Meta { key })
}

fn cmp(op: CmpOp, data: impl Into<Vec<u8>>) -> Expr {
    Expr::Cmp(Cmp::new(op, data))
}

/// Builds the batch.
struct Encoder<'r, 'f> {
    table: &'static Table,
    batch: BatchBuilder,
    next_set_id: u32,
    set_ids: HashMap<String, u32>,
    ifindex: &'f dyn Fn(&str) -> Option<u32>,
    rs: &'r Ruleset,
}

/// Where a rule is, for messages.
struct Place<'a> {
    chain: &'a str,
    index: usize,
    origin: &'a Origin,
}

impl Place<'_> {
    fn text(&self) -> String {
        format!(
            "chain {} rule {} ({})",
            self.chain,
            self.index,
            origin_text(self.origin)
        )
    }
}

/// The expressions of one rule under construction, with the protocol dependency nft
/// leaves out when an earlier match already established it.
struct RuleExprs {
    exprs: Vec<Expr>,
    family: Option<Family>,
}

impl RuleExprs {
    fn need_family(&mut self, f: Family) {
        if self.family != Some(f) {
            self.exprs.push(meta(MetaKey::NfProto));
            self.exprs.push(cmp(CmpOp::Eq, [nfproto(f)]));
            self.family = Some(f);
        }
    }

    fn push(&mut self, e: Expr) {
        self.exprs.push(e);
    }
}

/// Encode the whole ruleset as one transaction that replaces `table inet reyes`:
/// NEWTABLE, DELTABLE, NEWTABLE, then chains, counters, sets with their elements, maps,
/// and rules (each preceded by its anonymous sets). `ifindex` resolves `iif` names.
pub fn encode(rs: &Ruleset, ifindex: &dyn Fn(&str) -> Option<u32>) -> Result<Batch, EncodeError> {
    let mut e = Encoder {
        table: &Table::REYES,
        batch: BatchBuilder::new(first_seq()),
        next_set_id: 1,
        set_ids: HashMap::new(),
        ifindex,
        rs,
    };
    e.run()?;
    Ok(e.batch.finish())
}

/// A sequence number base that differs between runs (as nft's does), so a stale reply on a
/// reused port cannot be taken for ours.
fn first_seq() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}

/// The batch that removes `table inet reyes` (and nothing else), whether or not it exists.
pub fn flush_batch() -> Batch {
    let t = &Table::REYES;
    let mut b = BatchBuilder::new(first_seq());
    b.push(t.create(), format!("table inet {}", t.name()));
    b.push(t.delete(), format!("table inet {}", t.name()));
    b.finish()
}

/// The probe: create and delete `table inet reyes_probe` in a batch without BATCH_END, so the
/// kernel checks both messages (permission included) and then aborts: nothing is committed,
/// nothing is notified.
pub fn probe_batch() -> Batch {
    let t = &Table::PROBE;
    let mut b = BatchBuilder::new(first_seq());
    b.push(t.create(), format!("table inet {}", t.name()));
    b.push(t.delete(), format!("table inet {}", t.name()));
    b.finish_check_only()
}

impl Encoder<'_, '_> {
    fn run(&mut self) -> Result<(), EncodeError> {
        let t = self.table;
        let tname = format!("table inet {}", t.name());
        self.batch.push(t.create(), tname.clone());
        self.batch.push(t.delete(), tname.clone());
        self.batch.push(t.create(), tname);

        let input = Chain {
            table: t,
            name: INPUT_CHAIN.to_string(),
            hook: Some(InputHook),
        };
        self.batch
            .push(input.message(), format!("base chain {INPUT_CHAIN}"));
        for c in &self.rs.chains {
            let chain = Chain {
                table: t,
                name: c.name.to_string(),
                hook: None,
            };
            self.batch
                .push(chain.message(), format!("chain {}", c.name));
        }
        for name in [COUNTER_ACCEPTED, COUNTER_DROPPED] {
            let c = Counter {
                table: t,
                name: name.to_string(),
            };
            self.batch.push(c.message(), format!("counter {name}"));
        }
        for s in &self.rs.sets {
            let elements = set::interval_elements(
                s.elements.iter().map(|r| (r.lo, r.hi, None)),
                family_bytes(s.family),
            );
            self.named_set(&s.name, addr_key(s.family), SetKind::Named, &elements);
        }
        for f in Family::BOTH {
            let elements = set::interval_elements(
                self.rs.dispatch(f).iter().map(|d| {
                    (
                        d.range.lo,
                        d.range.hi,
                        Some(NlVerdict::Jump(d.chain.to_string())),
                    )
                }),
                family_bytes(f),
            );
            self.named_set(map_name(f), addr_key(f), SetKind::VerdictMap, &elements);
        }
        let rs = self.rs;
        for (i, r) in rs.input.iter().enumerate() {
            self.rule(INPUT_CHAIN, i + 1, r)?;
        }
        for c in &rs.chains {
            for (i, r) in c.rules.iter().enumerate() {
                self.rule(&c.name, i + 1, r)?;
            }
        }
        Ok(())
    }

    fn set_id(&mut self) -> u32 {
        let id = self.next_set_id;
        self.next_set_id += 1;
        id
    }

    fn named_set(&mut self, name: &str, key: KeyKind, kind: SetKind, elements: &[Element]) {
        let id = self.set_id();
        self.set_ids.insert(name.to_string(), id);
        let what = match kind {
            SetKind::VerdictMap => "map",
            _ => "set",
        };
        let s = Set {
            table: self.table,
            name: name.to_string(),
            id,
            key,
            kind,
        };
        self.batch.push(s.message(), format!("{what} {name}"));
        self.elements(name, id, elements, &format!("{what} {name}"));
    }

    fn elements(&mut self, name: &str, id: u32, elements: &[Element], what: &str) {
        let total = elements.len();
        for r in set::chunks(elements) {
            let m = SetElems {
                table: self.table,
                set: name,
                set_id: id,
                elements: &elements[r.clone()],
            };
            self.batch.push(
                m.message(),
                format!("{what} elements {}-{} of {total}", r.start + 1, r.end),
            );
        }
    }

    /// An anonymous set for the rule at `place`; returns the lookup.
    fn anonymous(
        &mut self,
        place: &Place<'_>,
        key: KeyKind,
        interval: bool,
        elements: Vec<Element>,
        invert: bool,
    ) -> Expr {
        let id = self.set_id();
        let s = Set {
            table: self.table,
            name: set::ANONYMOUS_NAME.to_string(),
            id,
            key,
            kind: SetKind::Anonymous {
                interval,
                size: elements.len() as u32,
            },
        };
        let what = format!("anonymous set of {}", place.text());
        self.batch.push(s.message(), what.clone());
        self.elements(set::ANONYMOUS_NAME, id, &elements, &what);
        Expr::Lookup(Lookup {
            set: set::ANONYMOUS_NAME.to_string(),
            set_id: Some(id),
            verdict_map: false,
            invert,
        })
    }

    fn rule(&mut self, chain: &str, index: usize, r: &Rule) -> Result<(), EncodeError> {
        let place = Place {
            chain,
            index,
            origin: &r.origin,
        };
        let mut x = RuleExprs {
            exprs: Vec::new(),
            family: None,
        };
        for m in &r.matches {
            self.matcher(&place, m, &mut x)?;
        }
        if let Some(log) = &r.log {
            x.push(Expr::Log(Log {
                prefix: log.prefix.replace('"', ""),
            }));
        }
        if let Some(c) = r.counter {
            x.push(Expr::Objref(Objref {
                counter: c.to_string(),
            }));
        }
        match &r.verdict {
            Verdict::Accept => x.push(Expr::Immediate(Immediate {
                verdict: NlVerdict::Accept,
            })),
            Verdict::Drop => x.push(Expr::Immediate(Immediate {
                verdict: NlVerdict::Drop,
            })),
            Verdict::Continue => {}
            Verdict::Jump(c) => x.push(Expr::Immediate(Immediate {
                verdict: NlVerdict::Jump(c.to_string()),
            })),
            Verdict::Dispatch(f) => {
                x.need_family(*f);
                x.push(payload(
                    PayloadBase::Network,
                    daddr_offset(*f),
                    family_bytes(*f),
                ));
                let name = map_name(*f);
                x.push(Expr::Lookup(Lookup {
                    set: name.to_string(),
                    set_id: self.set_ids.get(name).copied(),
                    verdict_map: true,
                    invert: false,
                }));
            }
        }
        let rule = NlRule {
            table: self.table,
            chain: chain.to_string(),
            exprs: x.exprs,
        };
        self.batch.push(rule.message(), place.text());
        Ok(())
    }

    fn empty(&self, place: &Place<'_>, what: &'static str) -> EncodeError {
        EncodeError::Empty {
            chain: place.chain.to_string(),
            rule: place.index,
            what,
        }
    }

    fn matcher(
        &mut self,
        place: &Place<'_>,
        m: &Match,
        x: &mut RuleExprs,
    ) -> Result<(), EncodeError> {
        match m {
            Match::Iif(name) => {
                let idx = (self.ifindex)(name).ok_or_else(|| EncodeError::UnknownInterface {
                    chain: place.chain.to_string(),
                    rule: place.index,
                    name: name.clone(),
                })?;
                x.push(meta(MetaKey::Iif));
                x.push(cmp(CmpOp::Eq, idx.to_ne_bytes()));
            }
            Match::CtState(states) => {
                let bits = states.iter().fold(0u32, |b, s| {
                    b | match s {
                        CtState::Established => NF_CT_STATE_ESTABLISHED_BIT,
                        CtState::Related => NF_CT_STATE_RELATED_BIT,
                    }
                });
                x.push(Expr::Ct(Ct));
                x.push(Expr::Bitwise(Bitwise {
                    mask: bits.to_ne_bytes().to_vec(),
                }));
                x.push(cmp(CmpOp::Neq, [0u8; 4]));
            }
            Match::Ipsec(present) => {
                x.push(meta(MetaKey::Secpath));
                x.push(cmp(CmpOp::Eq, [u8::from(*present)]));
            }
            Match::Saddr {
                family,
                addrs,
                negate,
            } => {
                let f = *family;
                let width = family_bytes(f);
                x.need_family(f);
                match addrs {
                    AddrMatch::Set(name) => {
                        x.push(payload(PayloadBase::Network, saddr_offset(f), width));
                        x.push(Expr::Lookup(Lookup {
                            set: name.to_string(),
                            set_id: self.set_ids.get(&**name).copied(),
                            verdict_map: false,
                            invert: *negate,
                        }));
                    }
                    AddrMatch::Literal(ranges) => match ranges.as_slice() {
                        [] => return Err(self.empty(place, "address")),
                        [r] => single_range(x, f, r, *negate),
                        many => {
                            x.push(payload(PayloadBase::Network, saddr_offset(f), width));
                            let elements = set::interval_elements(
                                many.iter().map(|r| (r.lo, r.hi, None)),
                                width,
                            );
                            let l = self.anonymous(place, addr_key(f), true, elements, *negate);
                            x.push(l);
                        }
                    },
                }
            }
            Match::L4Proto(protos) => {
                x.push(meta(MetaKey::L4Proto));
                match protos.as_slice() {
                    [] => return Err(self.empty(place, "protocol")),
                    [p] => x.push(cmp(CmpOp::Eq, [*p])),
                    many => {
                        let elements = many
                            .iter()
                            .map(|p| Element::key(Key::from_u128(*p as u128, 1)))
                            .collect();
                        let l = self.anonymous(place, KeyKind::L4Proto, false, elements, false);
                        x.push(l);
                    }
                }
            }
            Match::Dport { proto, ports } => {
                let num = match proto {
                    PortProto::Tcp => 6u8,
                    PortProto::Udp => 17,
                };
                x.push(meta(MetaKey::L4Proto));
                x.push(cmp(CmpOp::Eq, [num]));
                x.push(payload(PayloadBase::Transport, 2, 2));
                match ports.as_slice() {
                    [] => return Err(self.empty(place, "port")),
                    [p] if p.first == p.last => {
                        x.push(cmp(CmpOp::Eq, p.first.to_be_bytes()));
                    }
                    [p] => {
                        x.push(cmp(CmpOp::Gte, p.first.to_be_bytes()));
                        x.push(cmp(CmpOp::Lte, p.last.to_be_bytes()));
                    }
                    many => {
                        let interval = many.iter().any(|p| p.first != p.last);
                        let elements = port_elements(many, interval);
                        let l =
                            self.anonymous(place, KeyKind::Port(*proto), interval, elements, false);
                        x.push(l);
                    }
                }
            }
            Match::Icmp { v6, types, code } => {
                let (f, l4, key) = if *v6 {
                    (Family::V6, 58u8, KeyKind::Icmpv6Type)
                } else {
                    (Family::V4, 1u8, KeyKind::IcmpType)
                };
                x.need_family(f);
                x.push(meta(MetaKey::L4Proto));
                x.push(cmp(CmpOp::Eq, [l4]));
                match (types.as_slice(), code) {
                    ([], _) => return Err(self.empty(place, "ICMP type")),
                    ([t], Some(c)) => {
                        x.push(payload(PayloadBase::Transport, 0, 2));
                        x.push(cmp(CmpOp::Eq, [*t, *c]));
                    }
                    ([t], None) => {
                        x.push(payload(PayloadBase::Transport, 0, 1));
                        x.push(cmp(CmpOp::Eq, [*t]));
                    }
                    (many, code) => {
                        x.push(payload(PayloadBase::Transport, 0, 1));
                        let elements = many
                            .iter()
                            .map(|t| Element::key(Key::from_u128(*t as u128, 1)))
                            .collect();
                        let l = self.anonymous(place, key, false, elements, false);
                        x.push(l);
                        if let Some(c) = code {
                            x.push(payload(PayloadBase::Transport, 1, 1));
                            x.push(cmp(CmpOp::Eq, [*c]));
                        }
                    }
                }
            }
            Match::Limit { rate, burst } => x.push(Expr::Limit(Limit {
                rate: u64::from(*rate),
                burst: *burst,
            })),
        }
        Ok(())
    }
}

/// `ip saddr X` / `!= X` for one interval, the way nft encodes each notation.
fn single_range(x: &mut RuleExprs, f: Family, r: &Range, negate: bool) {
    let width = family_bytes(f);
    let off = saddr_offset(f);
    let eq = if negate { CmpOp::Neq } else { CmpOp::Eq };
    if r.lo == r.hi {
        x.push(payload(PayloadBase::Network, off, width));
        x.push(cmp(eq, be(r.lo, width)));
        return;
    }
    match r.prefix_len() {
        Some(p) if p > 0 && p % 8 == 0 => {
            let n = p as usize / 8;
            x.push(payload(PayloadBase::Network, off, n));
            x.push(cmp(eq, be(r.lo, width)[..n].to_vec()));
        }
        Some(p) => {
            x.push(payload(PayloadBase::Network, off, width));
            x.push(Expr::Bitwise(Bitwise {
                mask: prefix_mask(p, width),
            }));
            x.push(cmp(eq, be(r.lo, width)));
        }
        None if !negate => {
            x.push(payload(PayloadBase::Network, off, width));
            x.push(cmp(CmpOp::Gte, be(r.lo, width)));
            x.push(cmp(CmpOp::Lte, be(r.hi, width)));
        }
        None => {
            x.push(payload(PayloadBase::Network, off, width));
            x.push(Expr::Range(RangeExpr {
                negate: true,
                from: be(r.lo, width),
                to: be(r.hi, width),
            }));
        }
    }
}

fn port_elements(ports: &[PortRange], interval: bool) -> Vec<Element> {
    if interval {
        set::interval_elements(
            ports
                .iter()
                .map(|p| (u128::from(p.first), u128::from(p.last), None)),
            2,
        )
    } else {
        ports
            .iter()
            .map(|p| Element::key(Key::from_u128(u128::from(p.first), 2)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_masks() {
        assert_eq!(prefix_mask(23, 4), vec![0xff, 0xff, 0xfe, 0]);
        assert_eq!(prefix_mask(0, 4), vec![0, 0, 0, 0]);
        let m = prefix_mask(60, 16);
        assert_eq!(&m[..8], &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xf0]);
        assert!(m[8..].iter().all(|b| *b == 0));
        assert_eq!(prefix_mask(7, 16)[0], 0xfe);
    }
}
