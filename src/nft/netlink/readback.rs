//! Read-back over netlink: dump our table's chains, sets (with element counts) and rules and
//! compare their shape with the IR. Used after a netlink apply when `nft` is not installed
//! (with `nft`, the full text comparison in the backend is stricter).

use std::collections::BTreeMap;

use super::set;
use super::socket::{attrs, NetlinkError, Socket};
use super::sys::*;
use super::table::Table;
use super::wire::{Attr, Message, MsgType};
use crate::compile::{Ruleset, INPUT_CHAIN};
use crate::net::Family;
use crate::nft::render::map_name;

/// What the kernel holds in our table, in outline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outline {
    /// Rules per chain, by chain name.
    pub chains: BTreeMap<String, usize>,
    /// Elements (as sent: interval starts and ends) per named set or map.
    pub sets: BTreeMap<String, usize>,
}

impl Outline {
    /// The outline the IR should produce.
    pub fn of(rs: &Ruleset) -> Outline {
        let mut o = Outline::default();
        o.chains.insert(INPUT_CHAIN.to_string(), rs.input.len());
        for c in &rs.chains {
            o.chains.insert(c.name.to_string(), c.rules.len());
        }
        for s in &rs.sets {
            let n = set::interval_elements(
                s.elements.iter().map(|r| (r.lo, r.hi, None)),
                family_len(s.family),
            )
            .count();
            o.sets.insert(s.name.to_string(), n);
        }
        for f in Family::BOTH {
            let n = set::interval_elements(
                rs.dispatch(f)
                    .iter()
                    .map(|d| (d.range.lo, d.range.hi, None)),
                family_len(f),
            )
            .count();
            o.sets.insert(map_name(f).to_string(), n);
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
        cmp("set (elements)", &self.sets, &live.sets);
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
        let mut n = 0;
        for (_, body) in sock.dump(req, 5 + i as u32)? {
            for (ty, p) in body_attrs(&body) {
                if ty == NFTA_SET_ELEM_LIST_ELEMENTS {
                    n += attrs(p).count();
                }
            }
        }
        o.sets.insert(name, n);
    }
    Ok(o)
}

/// Compare our live table's outline with the IR: empty when they agree.
pub fn verify(rs: &Ruleset) -> Result<Vec<String>, NetlinkError> {
    let sock = Socket::open()?;
    Ok(Outline::of(rs).diff(&outline(&sock)?))
}
