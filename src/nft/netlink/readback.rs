//! Read-back over netlink: dump our table's chains, rules, sets and every set and map element,
//! and compare them with the IR: rules are counted per chain, elements compared one by one
//! (key, interval end, map target). Used after a netlink apply when `nft` is not installed
//! (with `nft`, the full text comparison in the backend also covers each rule's expressions).

use std::collections::BTreeMap;

use super::expr::Verdict;
use super::set;
use super::socket::{attrs, NetlinkError, Socket};
use super::sys::*;
use super::table::Table;
use super::wire::{Attr, Message, MsgType};
use crate::compile::{Ruleset, INPUT_CHAIN};
use crate::net::Family;
use crate::nft::render::map_name;

/// One element of a set or map, as sent and as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Elem {
    /// Key bytes (network order).
    pub key: Vec<u8>,
    /// Ends an interval.
    pub end: bool,
    /// A verdict map's jump target.
    pub jump: Option<String>,
}

impl From<set::Element> for Elem {
    fn from(e: set::Element) -> Elem {
        Elem {
            key: e.key.as_slice().to_vec(),
            end: e.end,
            jump: match e.verdict {
                Some(Verdict::Jump(c)) => Some(c.to_string()),
                _ => None,
            },
        }
    }
}

impl std::fmt::Display for Elem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.key.len() {
            4 => {
                let b: [u8; 4] = self.key[..].try_into().map_err(|_| std::fmt::Error)?;
                write!(f, "{}", std::net::Ipv4Addr::from(b))?
            }
            16 => {
                let b: [u8; 16] = self.key[..].try_into().map_err(|_| std::fmt::Error)?;
                write!(f, "{}", std::net::Ipv6Addr::from(b))?
            }
            _ => {
                for b in &self.key {
                    write!(f, "{b:02x}")?;
                }
            }
        }
        write!(f, "{}", if self.end { " (interval end)" } else { "" })?;
        if let Some(c) = &self.jump {
            write!(f, " : jump {c}")?;
        }
        Ok(())
    }
}

/// What the kernel holds in our table, in outline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outline {
    /// Rules per chain, by chain name.
    pub chains: BTreeMap<String, usize>,
    /// Elements (as sent: interval starts and ends), sorted, per named set or map.
    pub sets: BTreeMap<String, Vec<Elem>>,
}

impl Outline {
    /// The outline the IR should produce.
    pub fn of(rs: &Ruleset) -> Outline {
        let mut o = Outline::default();
        o.chains.insert(INPUT_CHAIN.to_string(), rs.input.len());
        for c in &rs.hooked {
            o.chains.insert(c.name.to_string(), c.rules.len());
        }
        for c in &rs.chains {
            o.chains.insert(c.name.to_string(), c.rules.len());
        }
        let sorted = |it: &mut dyn Iterator<Item = set::Element>| {
            let mut v: Vec<Elem> = it.map(Elem::from).collect();
            v.sort();
            v
        };
        for s in &rs.sets {
            let mut it = set::interval_elements(
                s.elements.iter().map(|r| (r.lo, r.hi, None)),
                family_len(s.family),
            );
            o.sets.insert(s.name.to_string(), sorted(&mut it));
        }
        for f in Family::BOTH {
            let mut it = set::interval_elements(
                rs.dispatch(f)
                    .iter()
                    .map(|d| (d.range.lo, d.range.hi, Some(Verdict::Jump(d.chain.clone())))),
                family_len(f),
            );
            o.sets.insert(map_name(f).to_string(), sorted(&mut it));
        }
        for m in &rs.maps {
            let mut it = set::interval_elements(
                m.entries
                    .iter()
                    .map(|d| (d.range.lo, d.range.hi, Some(Verdict::Jump(d.chain.clone())))),
                family_len(m.family),
            );
            o.sets.insert(m.name.to_string(), sorted(&mut it));
        }
        o
    }

    /// Differences, one line each (`-` expected, `+` found).
    pub fn diff(&self, live: &Outline) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |what: &str, a: &BTreeMap<String, usize>, b: &BTreeMap<String, usize>| {
            for (k, v) in a {
                match b.get(k) {
                    None => out.push(format!("- {what} {k} is missing")),
                    Some(w) if w != v => out.push(format!("- {what} {k}: {v} expected, {w} live")),
                    _ => {}
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("+ {what} {k} is not in the ruleset"));
            }
        };
        cmp("chain (rules)", &self.chains, &live.chains);
        let count = |m: &BTreeMap<String, Vec<Elem>>| -> BTreeMap<String, usize> {
            m.iter().map(|(k, v)| (k.clone(), v.len())).collect()
        };
        cmp("set (elements)", &count(&self.sets), &count(&live.sets));
        // Element by element, both lists sorted: the first few differences per set.
        const SHOWN: usize = 5;
        for (name, want) in &self.sets {
            let Some(got) = live.sets.get(name) else {
                continue;
            };
            let (mut i, mut j, mut shown, mut more) = (0, 0, 0, 0);
            let mut note = |line: String| {
                if shown < SHOWN {
                    out.push(line);
                    shown += 1;
                } else {
                    more += 1;
                }
            };
            while i < want.len() || j < got.len() {
                match (want.get(i), got.get(j)) {
                    (Some(a), Some(b)) if a == b => {
                        i += 1;
                        j += 1;
                    }
                    (Some(a), Some(b)) if a < b => {
                        note(format!("- set {name}: element {a} is not live"));
                        i += 1;
                    }
                    (Some(a), None) => {
                        note(format!("- set {name}: element {a} is not live"));
                        i += 1;
                    }
                    (_, Some(b)) => {
                        note(format!("+ set {name}: element {b} is not in the ruleset"));
                        j += 1;
                    }
                    (None, None) => break,
                }
            }
            if more > 0 {
                out.push(format!("  set {name}: {more} more element difference(s)"));
            }
        }
        out
    }
}

fn family_len(f: Family) -> usize {
    match f {
        Family::V4 => 4,
        Family::V6 => 16,
    }
}

fn string(p: &[u8]) -> String {
    String::from_utf8_lossy(p.split(|c| *c == 0).next().unwrap_or(&[])).into_owned()
}

/// Attributes of a dumped nf_tables message body (after its `nfgenmsg`).
fn body_attrs(body: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    attrs(body.get(4..).unwrap_or(&[]))
}

fn dump<'a>(kind: MsgType, attrs: Vec<Attr<'a>>) -> Message<'a> {
    let mut m = Message::new(kind, attrs);
    m.flags = NLM_F_REQUEST | NLM_F_DUMP;
    m
}

/// Dump our table's outline.
pub fn outline(sock: &Socket) -> Result<Outline, NetlinkError> {
    let t = &Table::REYES;
    let ours = |body: &[u8], table_attr: u16| {
        body_attrs(body).any(|(ty, p)| ty == table_attr && string(p) == t.name())
    };
    let mut o = Outline::default();
    for (_, body) in sock.dump(dump(MsgType::GetChain, vec![]), 2)? {
        if ours(&body, NFTA_CHAIN_TABLE) {
            if let Some((_, n)) = body_attrs(&body).find(|(ty, _)| *ty == NFTA_CHAIN_NAME) {
                o.chains.insert(string(n), 0);
            }
        }
    }
    let rules = dump(MsgType::GetRule, vec![Attr::str(NFTA_RULE_TABLE, t.name())]);
    for (_, body) in sock.dump(rules, 3)? {
        if ours(&body, NFTA_RULE_TABLE) {
            if let Some((_, c)) = body_attrs(&body).find(|(ty, _)| *ty == NFTA_RULE_CHAIN) {
                *o.chains.entry(string(c)).or_default() += 1;
            }
        }
    }
    let sets = dump(MsgType::GetSet, vec![Attr::str(NFTA_SET_TABLE, t.name())]);
    let mut names = Vec::new();
    for (_, body) in sock.dump(sets, 4)? {
        if !ours(&body, NFTA_SET_TABLE) {
            continue;
        }
        let flags = body_attrs(&body)
            .find(|(ty, _)| *ty == NFTA_SET_FLAGS)
            .and_then(|(_, p)| {
                p.get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            })
            .unwrap_or(0);
        if flags & NFT_SET_ANONYMOUS != 0 {
            continue;
        }
        if let Some((_, n)) = body_attrs(&body).find(|(ty, _)| *ty == NFTA_SET_NAME) {
            names.push(string(n));
        }
    }
    for (i, name) in names.into_iter().enumerate() {
        let req = dump(
            MsgType::GetSetElem,
            vec![
                Attr::str(NFTA_SET_ELEM_LIST_TABLE, t.name()),
                Attr::Str(NFTA_SET_ELEM_LIST_SET, name.clone().into()),
            ],
        );
        let mut elements = Vec::new();
        for (_, body) in sock.dump(req, 5 + i as u32)? {
            for (ty, p) in body_attrs(&body) {
                if ty == NFTA_SET_ELEM_LIST_ELEMENTS {
                    elements.extend(attrs(p).map(|(_, e)| element(e)));
                }
            }
        }
        elements.sort();
        o.sets.insert(name, elements);
    }
    Ok(o)
}

/// One dumped `NFTA_LIST_ELEM`: its key, interval-end flag and verdict-map jump target.
fn element(e: &[u8]) -> Elem {
    let mut out = Elem {
        key: Vec::new(),
        end: false,
        jump: None,
    };
    for (ty, p) in attrs(e) {
        match ty {
            NFTA_SET_ELEM_KEY => {
                if let Some((_, v)) = attrs(p).find(|(t, _)| *t == NFTA_DATA_VALUE) {
                    out.key = v.to_vec();
                }
            }
            NFTA_SET_ELEM_FLAGS => {
                let flags = p
                    .get(..4)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                out.end = flags & NFT_SET_ELEM_INTERVAL_END != 0;
            }
            NFTA_SET_ELEM_DATA => {
                let verdict = attrs(p).find(|(t, _)| *t == NFTA_DATA_VERDICT);
                if let Some((_, v)) = verdict {
                    out.jump = attrs(v)
                        .find(|(t, _)| *t == NFTA_VERDICT_CHAIN)
                        .map(|(_, c)| string(c));
                }
            }
            _ => {}
        }
    }
    out
}

/// Compare our live table's outline with the IR: empty when they agree.
pub fn verify(rs: &Ruleset) -> Result<Vec<String>, NetlinkError> {
    let sock = Socket::open()?;
    Ok(Outline::of(rs).diff(&outline(&sock)?))
}
