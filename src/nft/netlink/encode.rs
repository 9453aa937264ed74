//! IR -> one nf_tables batch. No I/O: interface names are resolved by the caller's function.
//!
//! The expressions are the ones nft itself generates for the rendered text (checked against
//! `nft --debug=netlink` and the golden files in tests/golden/), so that `nft list` prints our
//! table exactly as `reyes render` wrote it.

use std::collections::HashMap;

use super::batch::{Batch, BatchBuilder, Label};
use super::chain::{BaseHook, Chain};
use super::counter::Counter;
use super::expr::{
    label_bits, Bitwise, Cmp, CmpOp, Ct, CtSetLabel, Expr, Immediate, Limit, Load, Log, Lookup,
    Meta, MetaKey, Objref, Payload, PayloadBase, Range as RangeExpr, RtIpsec, Verdict as NlVerdict,
};
use super::rule::Rule as NlRule;
use super::set::{self, Element, Key, KeyKind, Set, SetElems, SetKind};
use super::sys::*;
use super::table::Table;
use super::wire::Emit;
use crate::compile::{
    AddrKey, AddrMatch, AddrSet, BaseChain, CtState, DispatchEntry, HookedChain, Match, Name,
    PortProto, Rule, Ruleset, Verdict, INPUT_CHAIN,
};
use crate::net::{Family, Range};
use crate::nft::render::map_name;
use crate::proto::PortRange;

mod matchers;

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
struct Encoder<'f> {
    table: &'static Table,
    batch: BatchBuilder,
    next_set_id: u32,
    set_ids: HashMap<Name, u32>,
    ifindex: &'f dyn Fn(&str) -> Option<u32>,
    /// Elements of the set being sent, at most one message's worth.
    pending: Vec<Element>,
    /// Name index of the base chain; the hooked chains follow, then regular chain `i` at
    /// `first_regular + i`.
    input_name: u32,
    /// Name index of the first regular chain.
    first_regular: u32,
}

/// Which chain rules belong to.
#[derive(Clone, Copy)]
enum Chained {
    /// The input base chain.
    Input,
    /// Hooked chain `k` of [`Ruleset::hooked`].
    Hooked(usize),
    /// Regular chain `i` of [`Ruleset::chains`].
    Regular(usize),
}

/// Where a rule is, for messages.
struct Place<'a> {
    chain: &'a str,
    chain_index: u32,
    index: usize,
    origin: u32,
}

impl Place<'_> {
    fn label(&self) -> Label {
        Label::Rule {
            chain: self.chain_index,
            rule: self.index as u32,
            origin: self.origin,
        }
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
    Ok(encoder_for(rs, ifindex)?.batch.finish())
}

/// [`encode`], closed without BATCH_END: the kernel checks every message, then aborts the
/// transaction and commits nothing (the netlink side of the probe).
pub fn encode_check_only(
    rs: &Ruleset,
    ifindex: &dyn Fn(&str) -> Option<u32>,
) -> Result<Batch, EncodeError> {
    Ok(encoder_for(rs, ifindex)?.batch.finish_check_only())
}

fn encoder_for<'f>(
    rs: &Ruleset,
    ifindex: &'f dyn Fn(&str) -> Option<u32>,
) -> Result<Encoder<'f>, EncodeError> {
    let mut e = Encoder::new(ifindex);
    e.reserve(rs);
    e.head(&rs.base, &rs.hooked, rs.chains.iter().map(|c| &c.name));
    for s in &rs.sets {
        e.named_set(s);
    }
    for f in Family::BOTH {
        e.map(&Name::from(map_name(f)), f, rs.dispatch(f));
    }
    for m in &rs.maps {
        e.map(&m.name, m.family, &m.entries);
    }
    e.rules(Chained::Input, INPUT_CHAIN, &rs.input)?;
    for (k, c) in rs.hooked.iter().enumerate() {
        e.rules(Chained::Hooked(k), &c.name, &c.rules)?;
    }
    for (i, c) in rs.chains.iter().enumerate() {
        e.rules(Chained::Regular(i), &c.name, &c.rules)?;
    }
    Ok(e)
}

/// [`encode`], taking the ruleset and dropping each part of it once it is encoded: the same
/// bytes, but the ruleset and the batch are never both whole in memory (at 100k addresses
/// each is tens of MB). Only the chain names and rule origins stay, to name a failing message.
pub fn encode_owned(
    rs: Ruleset,
    ifindex: &dyn Fn(&str) -> Option<u32>,
) -> Result<Batch, EncodeError> {
    // Pages the caller freed before this call (the parsed document, say) go back first.
    release_free_memory();
    let mut e = Encoder::new(ifindex);
    e.reserve(&rs);
    let Ruleset {
        sets,
        dispatch4,
        dispatch6,
        chains,
        input,
        base,
        hooked,
        maps,
        meta: _,
    } = rs;
    e.head(&base, &hooked, chains.iter().map(|c| &c.name));
    for s in sets {
        e.named_set(&s);
    }
    e.map(&Name::from(map_name(Family::V4)), Family::V4, &dispatch4);
    drop(dispatch4);
    e.map(&Name::from(map_name(Family::V6)), Family::V6, &dispatch6);
    drop(dispatch6);
    for m in maps {
        e.map(&m.name, m.family, &m.entries);
    }
    release_free_memory();
    e.rules(Chained::Input, INPUT_CHAIN, &input)?;
    drop(input);
    for (k, c) in hooked.iter().enumerate() {
        e.rules(Chained::Hooked(k), &c.name, &c.rules)?;
    }
    drop(hooked);
    let mut trimmed_at = 0;
    for (i, c) in chains.into_iter().enumerate() {
        e.rules(Chained::Regular(i), &c.name, &c.rules)?;
        drop(c);
        // The chains just encoded are free memory now; give whole free pages back, so that
        // the growing batch takes the place of the shrinking ruleset instead of adding to it.
        if e.batch.byte_len() - trimmed_at >= RELEASE_EVERY {
            release_free_memory();
            trimmed_at = e.batch.byte_len();
        }
    }
    Ok(e.batch.finish())
}

/// How much batch growth between two [`release_free_memory`] calls while encoding chains.
const RELEASE_EVERY: usize = 2 << 20;

/// Return the allocator's free pages to the kernel (glibc keeps freed memory mapped; without
/// this the encoded batch would be added to the freed ruleset's pages rather than take their
/// place). A few milliseconds per call at 100k addresses; nothing on other C libraries.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only changes the allocator's own bookkeeping and mappings of free
    // memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
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

impl<'f> Encoder<'f> {
    fn new(ifindex: &'f dyn Fn(&str) -> Option<u32>) -> Encoder<'f> {
        Encoder {
            table: &Table::REYES,
            batch: BatchBuilder::new(first_seq()),
            next_set_id: 1,
            set_ids: HashMap::new(),
            ifindex,
            pending: Vec::new(),
            input_name: 0,
            first_regular: 0,
        }
    }

    /// The table (created, deleted, created: works whether or not it exists), the base
    /// chains, the regular chains and the counters.
    fn head<'n>(
        &mut self,
        base: &BaseChain,
        hooked: &[HookedChain],
        chains: impl Iterator<Item = &'n Name>,
    ) {
        let t = self.table;
        let tname = format!("table inet {}", t.name());
        self.batch.push(t.create(), tname.clone());
        self.batch.push(t.delete(), tname.clone());
        self.batch.push(t.create(), tname);

        let input = Chain {
            table: t,
            name: INPUT_CHAIN.to_string(),
            hook: Some(BaseHook::of(base)),
        };
        self.batch
            .push(input.message(), format!("base chain {INPUT_CHAIN}"));
        self.input_name = self.batch.add_name(Name::from(INPUT_CHAIN));
        for h in hooked {
            let chain = Chain {
                table: t,
                name: h.name.to_string(),
                hook: Some(BaseHook::at(base, h.hook)),
            };
            self.batch
                .push(chain.message(), format!("base chain {}", h.name));
            self.batch.add_name(h.name.clone());
        }
        self.first_regular = self.input_name + 1 + hooked.len() as u32;
        for name in chains {
            let chain = Chain {
                table: t,
                name: name.to_string(),
                hook: None,
            };
            let n = self.batch.add_name(name.clone());
            self.batch.push_labelled(chain.message(), Label::Chain(n));
        }
        for name in base.counters.iter().map(|c| &c.name) {
            let c = Counter {
                table: t,
                name: name.to_string(),
            };
            self.batch.push(c.message(), format!("counter {name}"));
        }
    }

    fn named_set(&mut self, s: &AddrSet) {
        let elements = set::interval_elements(
            s.elements.iter().map(|r| (r.lo, r.hi, None)),
            family_bytes(s.family),
        );
        self.declare(&s.name, addr_key(s.family), SetKind::Named, elements);
    }

    fn map(&mut self, name: &Name, f: Family, entries: &[DispatchEntry]) {
        let elements = set::interval_elements(
            entries.iter().map(|d| {
                (
                    d.range.lo,
                    d.range.hi,
                    Some(NlVerdict::Jump(d.chain.clone())),
                )
            }),
            family_bytes(f),
        );
        self.declare(name, addr_key(f), SetKind::VerdictMap, elements);
    }

    /// Size the label tables once: a message per rule, chain and set, a few per map.
    fn reserve(&mut self, rs: &Ruleset) {
        let rules = rs.rule_count();
        let messages = rules + rs.chains.len() + 2 * rs.sets.len() + 64;
        self.batch.reserve(messages, rules);
    }

    /// The rules of a chain.
    fn rules(&mut self, which: Chained, chain: &str, rules: &[Rule]) -> Result<(), EncodeError> {
        let chain_index = match which {
            Chained::Input => self.input_name,
            Chained::Hooked(k) => self.input_name + 1 + k as u32,
            Chained::Regular(i) => self.first_regular + i as u32,
        };
        for (i, r) in rules.iter().enumerate() {
            let origin = self.batch.add_origin(r.origin.clone());
            let place = Place {
                chain,
                chain_index,
                index: i + 1,
                origin,
            };
            self.rule(&place, r)?;
        }
        Ok(())
    }

    fn set_id(&mut self) -> u32 {
        let id = self.next_set_id;
        self.next_set_id += 1;
        id
    }

    /// A named set or map and its elements.
    fn declare(
        &mut self,
        name: &Name,
        key: KeyKind,
        kind: SetKind,
        elements: impl Iterator<Item = Element>,
    ) {
        let id = self.set_id();
        self.set_ids.insert(name.clone(), id);
        let s = Set {
            table: self.table,
            name: name.to_string(),
            id,
            key,
            kind,
        };
        let label = Label::Set {
            name: self.batch.add_name(name.clone()),
            map: kind == SetKind::VerdictMap,
        };
        let at = self.batch.push_labelled(s.message(), label);
        self.elements(name, id, at, elements);
    }

    /// NEWSETELEM messages for `elements`, each as full as the attribute length allows,
    /// holding at most one message's worth of elements at a time.
    fn elements(
        &mut self,
        name: &str,
        id: u32,
        set_msg: u32,
        elements: impl Iterator<Item = Element>,
    ) {
        let mut size = 0;
        let mut sent = 0u32;
        for e in elements {
            let n = e.attr(1).buffer_len();
            if size + n > set::MAX_ELEMENTS_PAYLOAD && !self.pending.is_empty() {
                sent = self.flush_elements(name, id, set_msg, sent);
                size = 0;
            }
            size += n;
            self.pending.push(e);
        }
        if !self.pending.is_empty() {
            self.flush_elements(name, id, set_msg, sent);
        }
    }

    fn flush_elements(&mut self, name: &str, id: u32, set_msg: u32, sent: u32) -> u32 {
        let n = self.pending.len() as u32;
        // Named as nft names it (name and id), so the batch stays byte-equal to nft's
        // (tests/golden). `set: None` would have the kernel (6.11+) find the set by id in one
        // step instead of walking the table's set list by name: not measured on its own yet.
        let m = SetElems {
            table: self.table,
            set: Some(name),
            set_id: id,
            elements: &self.pending,
        };
        let label = Label::Elements {
            set: set_msg,
            first: sent + 1,
            last: sent + n,
        };
        self.batch.push_labelled(m.message(), label);
        self.pending.clear();
        sent + n
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
        let label = Label::Anonymous {
            chain: place.chain_index,
            rule: place.index as u32,
            origin: place.origin,
        };
        let at = self.batch.push_labelled(s.message(), label);
        self.elements(set::ANONYMOUS_NAME, id, at, elements.into_iter());
        Expr::Lookup(Lookup {
            set: set::ANONYMOUS_NAME.to_string(),
            set_id: Some(id),
            verdict_map: false,
            invert,
        })
    }

    fn rule(&mut self, place: &Place<'_>, r: &Rule) -> Result<(), EncodeError> {
        let mut x = RuleExprs {
            exprs: Vec::new(),
            family: None,
        };
        for m in &r.matches {
            self.matcher(place, m, &mut x)?;
        }
        if let Some(log) = &r.log {
            x.push(Expr::Log(Log {
                prefix: log.prefix.replace('"', ""),
            }));
        }
        if let Some(c) = &r.counter {
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
            Verdict::CtLabel(bit) => {
                x.push(Expr::Load(Load {
                    value: label_bits(*bit).to_vec(),
                }));
                x.push(Expr::CtSetLabel(CtSetLabel));
            }
            Verdict::Jump(c) => x.push(Expr::Immediate(Immediate {
                verdict: NlVerdict::Jump(c.clone()),
            })),
            Verdict::Dispatch(f) => self.vmap(&mut x, *f, daddr_offset(*f), map_name(*f)),
            Verdict::DispatchBy { map, family, key } => {
                let offset = match key {
                    AddrKey::Source => saddr_offset(*family),
                    AddrKey::Destination => daddr_offset(*family),
                };
                self.vmap(&mut x, *family, offset, map);
            }
        }
        let rule = NlRule {
            table: self.table,
            chain: place.chain.to_string(),
            exprs: x.exprs,
        };
        self.batch.push_labelled(rule.message(), place.label());
        Ok(())
    }

    /// `ip daddr vmap @name` (or saddr: the header `offset`).
    fn vmap(&self, x: &mut RuleExprs, f: Family, offset: u32, name: &str) {
        x.need_family(f);
        x.push(payload(PayloadBase::Network, offset, family_bytes(f)));
        x.push(Expr::Lookup(Lookup {
            set: name.to_string(),
            set_id: self.set_ids.get(name).copied(),
            verdict_map: true,
            invert: false,
        }));
    }

    fn empty(&self, place: &Place<'_>, what: &'static str) -> EncodeError {
        EncodeError::Empty {
            chain: place.chain.to_string(),
            rule: place.index,
            what,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_element_lists_are_split_under_the_attribute_limit() {
        let no_interfaces = |_: &str| None;
        let mut e = Encoder::new(&no_interfaces);
        let ranges = (0..10_000u128).map(|i| (i * 4 + 1, i * 4 + 2, None));
        e.declare(
            &Name::from("s"),
            KeyKind::Ipv6Addr,
            SetKind::Named,
            set::interval_elements(ranges, 16),
        );
        let batch = e.batch.finish();
        let mut messages = 0;
        let mut elements = 0;
        for m in batch.messages() {
            if u16::from_ne_bytes([m[4], m[5]]) & 0xff != NFT_MSG_NEWSETELEM {
                continue;
            }
            messages += 1;
            let list = super::super::socket::attrs(&m[NLMSG_HDRLEN + 4..])
                .find(|(t, _)| *t == NFTA_SET_ELEM_LIST_ELEMENTS)
                .map(|(_, p)| p)
                .unwrap();
            assert!(list.len() + 4 <= u16::MAX as usize, "{}", list.len());
            elements += super::super::socket::attrs(list).count();
        }
        // A leading end element at zero, then a start and an end per interval.
        assert_eq!(elements, 20_001);
        assert!(messages > 1, "{messages} messages");
        let last = batch.what(batch_last_seq(&batch)).unwrap();
        assert!(
            last.object.starts_with("set s elements ") && last.object.ends_with("-20001 of 20001"),
            "{last}"
        );
    }

    #[test]
    fn the_consuming_encoder_gives_the_same_bytes_and_labels() {
        use crate::compile::{self, tests::doc, tests::TWO, HostContext, Target};
        let lo = |n: &str| (n == "lo").then_some(1);
        for target in [
            Target::AllGroups,
            Target::Host(vec!["10.0.0.1".parse().unwrap()]),
        ] {
            let mut ctx = HostContext::new(target);
            ctx.log_accept = true;
            ctx.log_drop = true;
            let rs = compile::compile(&doc(TWO), &ctx).unwrap();
            let a = encode(&rs, &lo).unwrap();
            let b = encode_owned(rs, &lo).unwrap();
            assert_eq!(a.len(), b.len());
            let strip = |m: &[u8]| {
                let mut m = m.to_vec();
                m[8..12].fill(0);
                m
            };
            let ma: Vec<Vec<u8>> = a.messages().map(|m| strip(&m)).collect();
            let mb: Vec<Vec<u8>> = b.messages().map(|m| strip(&m)).collect();
            assert_eq!(ma, mb);
            let seq = |b: &Batch, i: usize| {
                u32::from_ne_bytes(b.messages().nth(i + 1).unwrap()[8..12].try_into().unwrap())
            };
            for i in 0..a.len() {
                let (wa, wb) = (a.what(seq(&a, i)).unwrap(), b.what(seq(&b, i)).unwrap());
                assert_eq!(wa, wb);
                assert!(!wa.object.contains('?'), "{wa}");
            }
        }
    }

    /// The sequence number of the last message before BATCH_END.
    fn batch_last_seq(batch: &Batch) -> u32 {
        let msgs: Vec<_> = batch.messages().collect();
        let m = &msgs[msgs.len() - 2];
        u32::from_ne_bytes(m[8..12].try_into().unwrap())
    }

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
