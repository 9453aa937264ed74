//! What the kernel holds in our table, read over netlink without the `nft` binary: a digest of
//! everything an apply sets (chains, rules with their expressions, sets with their elements,
//! named objects), the named counters' values, and the ruleset generation.
//!
//! The digest leaves out what changes without anyone changing the rules: object handles, the
//! generation id in each reply, reference counts, counter values (of named counters and of
//! anonymous `counter` expressions) and element expirations. Two reads of an untouched table
//! give the same digest; any rule, element, chain, set or object added, removed or altered
//! gives another one.

use sha2::{Digest, Sha256};

use super::socket::{attrs, NetlinkError, Socket};
use super::sys::*;
use super::table::Table;
use super::wire::{Attr, Message, MsgType};
use crate::backend::NamedCount;

// Attribute numbers of linux/netfilter/nf_tables.h that the encoder does not need.
const NFTA_CHAIN_HANDLE: u16 = 2;
const NFTA_CHAIN_USE: u16 = 6;
const NFTA_CHAIN_COUNTERS: u16 = 8;
const NFTA_CHAIN_ID: u16 = 11;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_SET_OBJ_TYPE: u16 = 15;
const NFTA_SET_ELEM_KEY_END: u16 = 9;
const NFTA_SET_ELEM_OBJREF: u16 = 8;
const NFTA_GEN_ID: u16 = 1;
/// Expressions whose dumped data is state (values that count packets), not configuration.
const STATEFUL_EXPRESSIONS: [&str; 4] = ["counter", "quota", "last", "connlimit"];

fn string(p: &[u8]) -> String {
    String::from_utf8_lossy(p.split(|c| *c == 0).next().unwrap_or(&[])).into_owned()
}

fn be_u32(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

fn be_u64(p: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(p.get(..8)?.try_into().ok()?))
}

/// Attributes of a dumped message body (after its `nfgenmsg`, which carries the generation).
fn body_attrs(body: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    attrs(body.get(4..).unwrap_or(&[]))
}

fn dump<'a>(kind: MsgType, attrs: Vec<Attr<'a>>) -> Message<'a> {
    let mut m = Message::new(kind, attrs);
    m.flags = NLM_F_REQUEST | NLM_F_DUMP;
    m
}

/// Whether the body names our table in attribute `table_attr`.
fn ours(body: &[u8], table_attr: u16) -> bool {
    body_attrs(body).any(|(ty, p)| ty == table_attr && string(p) == Table::REYES.name())
}

fn find(body: &[u8], ty: u16) -> Option<&[u8]> {
    body_attrs(body).find(|(t, _)| *t == ty).map(|(_, p)| p)
}

/// One canonical record: a tag and length-framed fields, so that no two different records
/// hash alike.
fn record(tag: &str, fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(tag.len() as u32).to_be_bytes());
    out.extend_from_slice(tag.as_bytes());
    for f in fields {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// The attributes of `body` except those in `skip`, in order, re-framed.
fn keep(body: &[u8], skip: &[u16]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ty, p) in body_attrs(body).filter(|(ty, _)| !skip.contains(ty)) {
        out.extend_from_slice(&ty.to_be_bytes());
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// A rule's expressions, each as its name and (unless it only counts) its data.
fn expressions(list: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (_, e) in attrs(list) {
        let name = attrs(e)
            .find(|(t, _)| *t == NFTA_EXPR_NAME)
            .map(|(_, n)| string(n))
            .unwrap_or_default();
        let data = if STATEFUL_EXPRESSIONS.contains(&name.as_str()) {
            &[][..]
        } else {
            attrs(e)
                .find(|(t, _)| *t == NFTA_EXPR_DATA)
                .map_or(&[][..], |(_, d)| d)
        };
        out.extend(record(&name, &[data]));
    }
    out
}

/// One dumped element: key, key end, flags, data (a verdict), object reference.
fn element(e: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ty, p) in attrs(e) {
        if matches!(
            ty,
            NFTA_SET_ELEM_KEY
                | NFTA_SET_ELEM_KEY_END
                | NFTA_SET_ELEM_FLAGS
                | NFTA_SET_ELEM_DATA
                | NFTA_SET_ELEM_OBJREF
        ) {
            out.extend_from_slice(&ty.to_be_bytes());
            out.extend_from_slice(&(p.len() as u32).to_be_bytes());
            out.extend_from_slice(p);
        }
    }
    out
}

/// Whether `table inet reyes` exists (a GETTABLE, not a dump).
pub fn table_exists(sock: &Socket) -> Result<bool, NetlinkError> {
    match sock.get(Table::REYES.get(), 1) {
        Ok(replies) => Ok(!replies.is_empty()),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The canonical records of our table: chains, rules, sets with elements, objects. Sorted
/// where the kernel's order carries no meaning; rules kept in their order within a chain.
fn records(sock: &Socket) -> Result<Vec<Vec<u8>>, NetlinkError> {
    let t = Table::REYES.name();
    let mut out = Vec::new();
    let mut chains = Vec::new();
    for (_, body) in sock.dump(dump(MsgType::GetChain, vec![]), 2)? {
        if ours(&body, NFTA_CHAIN_TABLE) {
            let skip = [
                NFTA_CHAIN_HANDLE,
                NFTA_CHAIN_USE,
                NFTA_CHAIN_COUNTERS,
                NFTA_CHAIN_ID,
            ];
            chains.push(record("chain", &[&keep(&body, &skip)]));
        }
    }
    chains.sort();
    out.extend(chains);
    let mut rules: std::collections::BTreeMap<String, Vec<Vec<u8>>> = Default::default();
    let req = dump(MsgType::GetRule, vec![Attr::str(NFTA_RULE_TABLE, t)]);
    for (_, body) in sock.dump(req, 3)? {
        if !ours(&body, NFTA_RULE_TABLE) {
            continue;
        }
        let chain = find(&body, NFTA_RULE_CHAIN).map(string).unwrap_or_default();
        let exprs = find(&body, NFTA_RULE_EXPRESSIONS).map(expressions);
        let udata = find(&body, NFTA_RULE_USERDATA).unwrap_or_default();
        let r = record("rule", &[&exprs.unwrap_or_default(), udata]);
        rules.entry(chain).or_default().push(r);
    }
    for (chain, list) in rules {
        out.push(record("rules of", &[chain.as_bytes()]));
        out.extend(list);
    }
    let mut sets = Vec::new();
    let req = dump(MsgType::GetSet, vec![Attr::str(NFTA_SET_TABLE, t)]);
    for (_, body) in sock.dump(req, 4)? {
        if !ours(&body, NFTA_SET_TABLE) {
            continue;
        }
        let name = find(&body, NFTA_SET_NAME).map(string).unwrap_or_default();
        let kept: Vec<u8> = [
            NFTA_SET_FLAGS,
            NFTA_SET_KEY_TYPE,
            NFTA_SET_KEY_LEN,
            NFTA_SET_DATA_TYPE,
            NFTA_SET_DATA_LEN,
            NFTA_SET_OBJ_TYPE,
        ]
        .iter()
        .flat_map(|ty| {
            record(
                "a",
                &[&ty.to_be_bytes(), find(&body, *ty).unwrap_or_default()],
            )
        })
        .collect();
        sets.push((name, kept));
    }
    sets.sort();
    for (i, (name, kept)) in sets.into_iter().enumerate() {
        out.push(record("set", &[name.as_bytes(), &kept]));
        let req = dump(
            MsgType::GetSetElem,
            vec![
                Attr::str(NFTA_SET_ELEM_LIST_TABLE, t),
                Attr::Str(NFTA_SET_ELEM_LIST_SET, name.into()),
            ],
        );
        let mut elements = Vec::new();
        for (_, body) in sock.dump(req, 10 + i as u32)? {
            for (ty, p) in body_attrs(&body) {
                if ty == NFTA_SET_ELEM_LIST_ELEMENTS {
                    elements.extend(attrs(p).map(|(_, e)| record("element", &[&element(e)])));
                }
            }
        }
        elements.sort();
        out.extend(elements);
    }
    let mut objects: Vec<Vec<u8>> = objects(sock)?
        .into_iter()
        .map(|(name, ty, _)| record("object", &[name.as_bytes(), &ty.to_be_bytes()]))
        .collect();
    objects.sort();
    out.extend(objects);
    Ok(out)
}

/// A named object: name, type, and for a counter its packets and bytes.
type Object = (String, u32, Option<(u64, u64)>);

/// Our table's named objects.
fn objects(sock: &Socket) -> Result<Vec<Object>, NetlinkError> {
    let req = dump(
        MsgType::GetObj,
        vec![Attr::str(NFTA_OBJ_TABLE, Table::REYES.name())],
    );
    let mut out = Vec::new();
    for (_, body) in sock.dump(req, 6)? {
        if !ours(&body, NFTA_OBJ_TABLE) {
            continue;
        }
        let name = find(&body, NFTA_OBJ_NAME).map(string).unwrap_or_default();
        let ty = find(&body, NFTA_OBJ_TYPE).and_then(be_u32).unwrap_or(0);
        let counts = (ty == NFT_OBJECT_COUNTER)
            .then(|| find(&body, NFTA_OBJ_DATA))
            .flatten()
            .and_then(|data| {
                let get = |want: u16| {
                    attrs(data)
                        .find(|(t, _)| *t == want)
                        .and_then(|(_, p)| be_u64(p))
                };
                get(NFTA_COUNTER_PACKETS).zip(get(NFTA_COUNTER_BYTES))
            });
        out.push((name, ty, counts));
    }
    Ok(out)
}

/// The digest of our table as the kernel holds it (`sha256:<hex>`), or `None` when there is
/// no table.
pub fn digest(sock: &Socket) -> Result<Option<String>, NetlinkError> {
    if !table_exists(sock)? {
        return Ok(None);
    }
    let mut h = Sha256::new();
    for r in records(sock)? {
        h.update(&r);
    }
    Ok(Some(format!(
        "sha256:{}",
        crate::digest::hex(&h.finalize())
    )))
}

/// Every named counter of our table with its packets and bytes, sorted by name; empty when
/// there is no table.
pub fn counters(sock: &Socket) -> Result<Vec<NamedCount>, NetlinkError> {
    let mut out: Vec<NamedCount> = objects(sock)?
        .into_iter()
        .filter_map(|(name, _, c)| Some((name, c?)))
        .collect();
    out.sort();
    Ok(out)
}

/// The ruleset generation: the kernel bumps it on every committed transaction, so an equal
/// generation before and after means nothing was written in between (by anyone).
pub fn generation(sock: &Socket) -> Result<u32, NetlinkError> {
    let mut m = Message::new(MsgType::GetGen, vec![]);
    m.family = NFPROTO_UNSPEC;
    let replies = sock.get(m, 7)?;
    replies
        .iter()
        .find_map(|(_, body)| find(body, NFTA_GEN_ID).and_then(be_u32))
        .ok_or_else(|| NetlinkError::Malformed("GETGEN answered without NFTA_GEN_ID".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let len = 4 + payload.len();
        let mut v = Vec::new();
        v.extend_from_slice(&(len as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn expr(name: &str, data: &[u8]) -> Vec<u8> {
        let mut e = attr(NFTA_EXPR_NAME, format!("{name}\0").as_bytes());
        e.extend(attr(NFTA_EXPR_DATA, data));
        attr(NFTA_LIST_ELEM, &e)
    }

    #[test]
    fn counter_values_do_not_change_a_rule_but_other_data_does() {
        let rule = |counted: &[u8], port: &[u8]| {
            let mut l = expr("counter", counted);
            l.extend(expr("cmp", port));
            expressions(&l)
        };
        assert_eq!(rule(b"1111", b"22"), rule(b"9999", b"22"));
        assert_ne!(rule(b"1111", b"22"), rule(b"1111", b"23"));
    }

    #[test]
    fn skipped_attributes_and_the_generation_are_left_out() {
        // nfgenmsg (family, version, res_id = generation), then a name and a handle.
        let body = |generation: u8, handle: &[u8]| {
            let mut b = vec![1, 0, 0, generation];
            b.extend(attr(NFTA_CHAIN_NAME, b"input\0"));
            b.extend(attr(NFTA_CHAIN_HANDLE, handle));
            b
        };
        let skip = [NFTA_CHAIN_HANDLE];
        assert_eq!(
            keep(&body(1, b"\0\0\0\x01"), &skip),
            keep(&body(9, b"\0\0\0\x07"), &skip)
        );
        assert_ne!(keep(&body(1, b"a"), &[]), keep(&body(1, b"b"), &[]));
        assert_ne!(record("a", &[b"bc"]), record("ab", &[b"c"]));
    }
}
