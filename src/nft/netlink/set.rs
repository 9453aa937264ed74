//! Sets, verdict maps and their elements.
//!
//! Interval sets are sent the way nft sends them: each interval `[lo, hi]` becomes a start
//! element `lo` and an end element `hi + 1` flagged `NFT_SET_ELEM_INTERVAL_END`; a list that
//! does not start at zero begins with an end element at zero; an interval that reaches the
//! top of the key space has no end element and carries libnftnl's "interval open" user data
//! instead. Element lists are split over several NEWSETELEM messages so that no nested
//! attribute passes the 16-bit netlink attribute length.

use super::expr::Verdict;
use super::sys::*;
use super::table::Table;
use super::wire::{Attr, Message, MsgType, Udata};
use crate::compile::PortProto;

/// The name nft gives anonymous sets; the kernel replaces `%d` with a free number.
pub const ANONYMOUS_NAME: &str = "__set%d";

/// Largest `NFTA_SET_ELEM_LIST_ELEMENTS` payload per message (the attribute length is 16 bits).
pub const MAX_ELEMENTS_PAYLOAD: usize = 65_000;

/// What a set's keys are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `ipv4_addr` (`ip saddr` in an anonymous set).
    Ipv4Addr,
    /// `ipv6_addr` (`ip6 saddr`).
    Ipv6Addr,
    /// `meta l4proto` values.
    L4Proto,
    /// TCP or UDP destination ports.
    Port(PortProto),
    /// `icmp type` values.
    IcmpType,
    /// `icmpv6 type` values.
    Icmpv6Type,
}

impl KeyKind {
    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            KeyKind::Ipv4Addr => 4,
            KeyKind::Ipv6Addr => 16,
            KeyKind::Port(_) => 2,
            KeyKind::L4Proto | KeyKind::IcmpType | KeyKind::Icmpv6Type => 1,
        }
    }

    fn nft_type(self) -> u32 {
        match self {
            KeyKind::Ipv4Addr => TYPE_IPADDR,
            KeyKind::Ipv6Addr => TYPE_IP6ADDR,
            KeyKind::L4Proto => TYPE_INET_PROTOCOL,
            KeyKind::Port(_) => TYPE_INET_SERVICE,
            KeyKind::IcmpType => TYPE_ICMP_TYPE,
            KeyKind::Icmpv6Type => TYPE_ICMP6_TYPE,
        }
    }

    fn byteorder(self) -> u32 {
        match self {
            KeyKind::L4Proto => BYTEORDER_HOST_ENDIAN,
            _ => BYTEORDER_BIG_ENDIAN,
        }
    }

    /// nft's `typeof` description of the key's expression, as it stores it for anonymous sets.
    fn typeof_udata(self) -> Udata {
        let payload = |desc: u32, field: u32| {
            Udata::new()
                .u32(NFTNL_UDATA_SET_TYPEOF_EXPR, EXPR_PAYLOAD)
                .nest(
                    NFTNL_UDATA_SET_TYPEOF_DATA,
                    Udata::new().u32(0, desc).u32(1, field),
                )
        };
        match self {
            KeyKind::Ipv4Addr => payload(PROTO_DESC_IP, IPHDR_SADDR),
            KeyKind::Ipv6Addr => payload(PROTO_DESC_IP6, IP6HDR_SADDR),
            KeyKind::Port(PortProto::Tcp) => payload(PROTO_DESC_TCP, TH_DPORT),
            KeyKind::Port(PortProto::Udp) => payload(PROTO_DESC_UDP, TH_DPORT),
            KeyKind::IcmpType => payload(PROTO_DESC_ICMP, ICMPHDR_TYPE),
            KeyKind::Icmpv6Type => payload(PROTO_DESC_ICMPV6, ICMPHDR_TYPE),
            KeyKind::L4Proto => Udata::new()
                .u32(NFTNL_UDATA_SET_TYPEOF_EXPR, EXPR_META)
                .nest(
                    NFTNL_UDATA_SET_TYPEOF_DATA,
                    Udata::new().u32(0, NFT_META_L4PROTO),
                ),
        }
    }
}

/// Named set, verdict map, or anonymous set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKind {
    /// A named interval set (`set m4_sg_web { type ipv4_addr; flags interval; }`).
    Named,
    /// A named interval verdict map (`map dst4 { type ipv4_addr : verdict; flags interval; }`).
    VerdictMap,
    /// An anonymous constant set bound to one rule.
    Anonymous {
        /// Holds intervals.
        interval: bool,
        /// Number of elements sent (nft's `NFTA_SET_DESC_SIZE`).
        size: u32,
    },
}

/// A set of `table`, identified within the batch by `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set<'t> {
    /// Table.
    pub table: &'t Table,
    /// Name ([`ANONYMOUS_NAME`] for anonymous sets).
    pub name: String,
    /// Id within the batch (`NFTA_SET_ID`), for references before the commit.
    pub id: u32,
    /// Keys.
    pub key: KeyKind,
    /// Kind.
    pub kind: SetKind,
}

impl Set<'_> {
    fn flags(&self) -> u32 {
        match self.kind {
            SetKind::Named => NFT_SET_INTERVAL,
            SetKind::VerdictMap => NFT_SET_INTERVAL | NFT_SET_MAP,
            SetKind::Anonymous { interval, .. } => {
                NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | if interval { NFT_SET_INTERVAL } else { 0 }
            }
        }
    }

    /// NEWSET.
    pub fn message(&self) -> Message<'_> {
        let mut attrs = vec![
            Attr::str(NFTA_SET_TABLE, self.table.name()),
            Attr::str(NFTA_SET_NAME, &self.name),
            Attr::U32(NFTA_SET_FLAGS, self.flags()),
            Attr::U32(NFTA_SET_KEY_TYPE, self.key.nft_type()),
            Attr::U32(NFTA_SET_KEY_LEN, self.key.key_len() as u32),
        ];
        let mut udata = Udata::new().u32(NFTNL_UDATA_SET_KEYBYTEORDER, self.key.byteorder());
        match self.kind {
            SetKind::Named => {}
            SetKind::VerdictMap => {
                attrs.push(Attr::U32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT));
                attrs.push(Attr::U32(NFTA_SET_DATA_LEN, 0));
                udata = udata
                    .u32(NFTNL_UDATA_SET_DATABYTEORDER, BYTEORDER_INVALID)
                    .u32(NFTNL_UDATA_SET_DATA_INTERVAL, 0);
            }
            SetKind::Anonymous { interval, .. } => {
                if interval {
                    udata = udata.u32(NFTNL_UDATA_SET_MERGE_ELEMENTS, 1);
                }
                udata = udata.nest(NFTNL_UDATA_SET_KEY_TYPEOF, self.key.typeof_udata());
            }
        }
        attrs.push(Attr::U32(NFTA_SET_ID, self.id));
        if let SetKind::Anonymous { size, .. } = self.kind {
            attrs.push(Attr::Nested(
                NFTA_SET_DESC,
                vec![Attr::U32(NFTA_SET_DESC_SIZE, size)],
            ));
        }
        attrs.push(Attr::bytes(NFTA_SET_USERDATA, udata.into_bytes()));
        Message::new(MsgType::NewSet, attrs)
    }
}

/// A key of at most 16 bytes, in network byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    bytes: [u8; 16],
    len: u8,
}

impl Key {
    /// The low `len` bytes of `v`, big-endian.
    pub fn from_u128(v: u128, len: usize) -> Key {
        let all = v.to_be_bytes();
        let mut bytes = [0; 16];
        let len = len.min(16);
        bytes[..len].copy_from_slice(&all[16 - len..]);
        Key {
            bytes,
            len: len as u8,
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// One set element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Key.
    pub key: Key,
    /// Ends the previous interval (`NFT_SET_ELEM_INTERVAL_END`).
    pub end: bool,
    /// Starts an interval that runs to the top of the key space (no end element follows).
    pub open: bool,
    /// Map data.
    pub verdict: Option<Verdict>,
}

impl Element {
    /// A plain element (non-interval sets, interval starts).
    pub fn key(key: Key) -> Element {
        Element {
            key,
            end: false,
            open: false,
            verdict: None,
        }
    }

    /// The `index`-th element of a list, as nft numbers them.
    pub fn attr(&self, index: u16) -> Attr<'_> {
        let mut v = Vec::with_capacity(3);
        if self.end {
            v.push(Attr::U32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END));
        }
        v.push(Attr::data(NFTA_SET_ELEM_KEY, self.key.as_slice()));
        if let Some(verdict) = &self.verdict {
            v.push(verdict.attr(NFTA_SET_ELEM_DATA));
        }
        if self.open {
            let u = Udata::new().u32(NFTNL_UDATA_SET_ELEM_FLAGS, NFTNL_SET_ELEM_F_INTERVAL_OPEN);
            v.push(Attr::bytes(NFTA_SET_ELEM_USERDATA, u.into_bytes()));
        }
        Attr::Nested(index & NLA_TYPE_MASK, v)
    }
}

/// The elements of closed intervals `[lo, hi]` (sorted, disjoint) over keys of `len` bytes,
/// each start optionally carrying a verdict; produced one at a time.
pub fn interval_elements(
    ranges: impl IntoIterator<Item = (u128, u128, Option<Verdict>)>,
    len: usize,
) -> impl Iterator<Item = Element> {
    let max = if len >= 16 {
        u128::MAX
    } else {
        (1u128 << (8 * len)) - 1
    };
    let end = move |at: u128| Element {
        key: Key::from_u128(at, len),
        end: true,
        open: false,
        verdict: None,
    };
    ranges
        .into_iter()
        .enumerate()
        .flat_map(move |(i, (lo, hi, verdict))| {
            let lead = (i == 0 && lo != 0).then(|| end(0));
            let start = Element {
                key: Key::from_u128(lo, len),
                end: false,
                open: hi >= max,
                verdict,
            };
            let close = (hi < max).then(|| end(hi + 1));
            lead.into_iter().chain(Some(start)).chain(close)
        })
}

/// One NEWSETELEM message: some elements of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetElems<'t, 'e> {
    /// Table.
    pub table: &'t Table,
    /// Set name; `None`: found by its id alone (a set created earlier in the same batch). The
    /// kernel finds a set by name by walking the table's list of sets, by id by walking the
    /// batch's new sets from the newest: for a set just created, the id is one step.
    pub set: Option<&'e str>,
    /// Set id in the batch.
    pub set_id: u32,
    /// The elements.
    pub elements: &'e [Element],
}

impl SetElems<'_, '_> {
    /// NEWSETELEM.
    pub fn message(&self) -> Message<'_> {
        let list = self
            .elements
            .iter()
            .enumerate()
            .map(|(i, e)| e.attr((i + 1) as u16))
            .collect();
        let mut attrs = vec![Attr::str(NFTA_SET_ELEM_LIST_TABLE, self.table.name())];
        if let Some(name) = self.set {
            attrs.push(Attr::str(NFTA_SET_ELEM_LIST_SET, name));
        }
        attrs.push(Attr::U32(NFTA_SET_ELEM_LIST_SET_ID, self.set_id));
        attrs.push(Attr::Nested(NFTA_SET_ELEM_LIST_ELEMENTS, list));
        Message::new(MsgType::NewSetElem, attrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_get_a_leading_end_and_an_open_top() {
        let e = interval_elements(
            [
                (0x0a00_0000, 0x0aff_ffff, None),
                (0xc800_0000, 0xffff_ffff, None),
            ],
            4,
        );
        let keys: Vec<(Vec<u8>, bool, bool)> = e
            .map(|e| (e.key.as_slice().to_vec(), e.end, e.open))
            .collect();
        assert_eq!(
            keys,
            vec![
                (vec![0, 0, 0, 0], true, false),
                (vec![10, 0, 0, 0], false, false),
                (vec![11, 0, 0, 0], true, false),
                (vec![200, 0, 0, 0], false, true),
            ]
        );
    }
}
