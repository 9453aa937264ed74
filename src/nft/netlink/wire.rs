//! The byte layer: netlink attributes and nf_tables messages, written through one small trait.
//!
//! Everything here is pure: [`Emit`] computes a length and writes bytes into a slice, nothing
//! else. nf_tables wants its integers in network byte order (the kernel reads them with
//! `ntohl`), so [`Attr::U32`] and [`Attr::U64`] are big-endian; the few host-order values
//! (register contents such as an interface index) are passed as [`Attr::Bytes`].

use std::borrow::Cow;

use super::sys::*;

/// Something that knows its wire length and can write itself.
pub trait Emit {
    /// Bytes [`Emit::emit`] writes (padding included).
    fn buffer_len(&self) -> usize;
    /// Write exactly `buffer_len()` bytes at the start of `buf`.
    fn emit(&self, buf: &mut [u8]);

    /// The bytes, in a fresh vector.
    fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.buffer_len()];
        self.emit(&mut v);
        v
    }
}

/// Netlink alignment (4 bytes).
pub const fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attr<'a> {
    /// A 32-bit integer in network byte order.
    U32(u16, u32),
    /// A 64-bit integer in network byte order.
    U64(u16, u64),
    /// A NUL-terminated string.
    Str(u16, Cow<'a, str>),
    /// Raw bytes.
    Bytes(u16, Cow<'a, [u8]>),
    /// Nested attributes (sent with `NLA_F_NESTED`).
    Nested(u16, Vec<Attr<'a>>),
}

impl<'a> Attr<'a> {
    /// A string attribute borrowing `s`.
    pub fn str(kind: u16, s: &'a str) -> Attr<'a> {
        Attr::Str(kind, Cow::Borrowed(s))
    }

    /// A bytes attribute owning `b`.
    pub fn bytes(kind: u16, b: impl Into<Cow<'a, [u8]>>) -> Attr<'a> {
        Attr::Bytes(kind, b.into())
    }

    /// `NFTA_DATA_VALUE` inside `kind`: how nf_tables carries constants.
    pub fn data(kind: u16, value: impl Into<Cow<'a, [u8]>>) -> Attr<'a> {
        Attr::Nested(kind, vec![Attr::bytes(NFTA_DATA_VALUE, value)])
    }

    fn payload_len(&self) -> usize {
        match self {
            Attr::U32(..) => 4,
            Attr::U64(..) => 8,
            Attr::Str(_, s) => s.len() + 1,
            Attr::Bytes(_, b) => b.len(),
            Attr::Nested(_, v) => v.buffer_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Attr::U32(k, _) | Attr::U64(k, _) | Attr::Str(k, _) | Attr::Bytes(k, _) => *k,
            Attr::Nested(k, _) => *k | NLA_F_NESTED,
        }
    }
}

impl Emit for Attr<'_> {
    fn buffer_len(&self) -> usize {
        align(4 + self.payload_len())
    }

    fn emit(&self, buf: &mut [u8]) {
        let len = 4 + self.payload_len();
        // No attribute reyes builds reaches u16::MAX: set elements are split into messages of
        // at most `set::MAX_ELEMENTS_PAYLOAD` (65000) bytes, names and user data are capped at
        // 255, and rule expressions are a handful of small attributes. A wrapped length could
        // only come from a bug in the encoder; nothing checks it here.
        buf[0..2].copy_from_slice(&(len as u16).to_ne_bytes());
        buf[2..4].copy_from_slice(&self.kind().to_ne_bytes());
        let body = &mut buf[4..len];
        match self {
            Attr::U32(_, v) => body.copy_from_slice(&v.to_be_bytes()),
            Attr::U64(_, v) => body.copy_from_slice(&v.to_be_bytes()),
            Attr::Str(_, s) => {
                body[..s.len()].copy_from_slice(s.as_bytes());
                body[s.len()] = 0;
            }
            Attr::Bytes(_, b) => body.copy_from_slice(b),
            Attr::Nested(_, v) => v.emit(body),
        }
        let end = align(len);
        buf[len..end].fill(0);
    }
}

impl Emit for [Attr<'_>] {
    fn buffer_len(&self) -> usize {
        self.iter().map(Emit::buffer_len).sum()
    }

    fn emit(&self, buf: &mut [u8]) {
        let mut at = 0;
        for a in self {
            let n = a.buffer_len();
            a.emit(&mut buf[at..at + n]);
            at += n;
        }
    }
}

impl Emit for Vec<Attr<'_>> {
    fn buffer_len(&self) -> usize {
        self.as_slice().buffer_len()
    }

    fn emit(&self, buf: &mut [u8]) {
        self.as_slice().emit(buf)
    }
}

/// libnftnl's user-data TLVs (one-byte type and length): how nft tells itself, in the
/// kernel's opaque `USERDATA` attributes, how to print keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Udata(Vec<u8>);

impl Udata {
    /// Empty.
    pub fn new() -> Udata {
        Udata::default()
    }

    /// A host-order u32 value.
    pub fn u32(mut self, kind: u8, v: u32) -> Udata {
        self.0.extend_from_slice(&[kind, 4]);
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }

    /// A nested TLV list.
    pub fn nest(mut self, kind: u8, inner: Udata) -> Udata {
        self.0.extend_from_slice(&[kind, inner.0.len() as u8]);
        self.0.extend_from_slice(&inner.0);
        self
    }

    /// The bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// What an nf_tables message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    /// NFT_MSG_NEWTABLE.
    NewTable,
    /// NFT_MSG_DELTABLE.
    DelTable,
    /// NFT_MSG_NEWCHAIN.
    NewChain,
    /// NFT_MSG_NEWRULE.
    NewRule,
    /// NFT_MSG_NEWSET.
    NewSet,
    /// NFT_MSG_NEWSETELEM.
    NewSetElem,
    /// NFT_MSG_NEWOBJ.
    NewObj,
    /// NFT_MSG_GETTABLE.
    GetTable,
    /// NFT_MSG_GETCHAIN.
    GetChain,
    /// NFT_MSG_GETGEN.
    GetGen,
    /// NFT_MSG_GETRULE.
    GetRule,
    /// NFT_MSG_GETSET.
    GetSet,
    /// NFT_MSG_GETSETELEM.
    GetSetElem,
    /// NFT_MSG_GETOBJ.
    GetObj,
}

impl MsgType {
    /// The NFT_MSG_* number.
    pub fn code(self) -> u16 {
        match self {
            MsgType::NewTable => NFT_MSG_NEWTABLE,
            MsgType::DelTable => NFT_MSG_DELTABLE,
            MsgType::NewChain => NFT_MSG_NEWCHAIN,
            MsgType::NewRule => NFT_MSG_NEWRULE,
            MsgType::NewSet => NFT_MSG_NEWSET,
            MsgType::NewSetElem => NFT_MSG_NEWSETELEM,
            MsgType::NewObj => NFT_MSG_NEWOBJ,
            MsgType::GetTable => NFT_MSG_GETTABLE,
            MsgType::GetChain => NFT_MSG_GETCHAIN,
            MsgType::GetGen => NFT_MSG_GETGEN,
            MsgType::GetRule => NFT_MSG_GETRULE,
            MsgType::GetSet => NFT_MSG_GETSET,
            MsgType::GetSetElem => NFT_MSG_GETSETELEM,
            MsgType::GetObj => NFT_MSG_GETOBJ,
        }
    }

    /// The name nft's debug output and the kernel's headers use.
    pub fn name(self) -> &'static str {
        match self {
            MsgType::NewTable => "NEWTABLE",
            MsgType::DelTable => "DELTABLE",
            MsgType::NewChain => "NEWCHAIN",
            MsgType::NewRule => "NEWRULE",
            MsgType::NewSet => "NEWSET",
            MsgType::NewSetElem => "NEWSETELEM",
            MsgType::NewObj => "NEWOBJ",
            MsgType::GetTable => "GETTABLE",
            MsgType::GetChain => "GETCHAIN",
            MsgType::GetGen => "GETGEN",
            MsgType::GetRule => "GETRULE",
            MsgType::GetSet => "GETSET",
            MsgType::GetSetElem => "GETSETELEM",
            MsgType::GetObj => "GETOBJ",
        }
    }

    /// nft's flags for this message in a batch (before `NLM_F_ACK`).
    pub fn flags(self) -> u16 {
        match self {
            MsgType::NewTable | MsgType::DelTable => NLM_F_REQUEST,
            MsgType::NewRule => NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND,
            MsgType::NewChain | MsgType::NewSet | MsgType::NewSetElem | MsgType::NewObj => {
                NLM_F_REQUEST | NLM_F_CREATE
            }
            MsgType::GetTable
            | MsgType::GetChain
            | MsgType::GetGen
            | MsgType::GetRule
            | MsgType::GetSet
            | MsgType::GetSetElem
            | MsgType::GetObj => NLM_F_REQUEST,
        }
    }
}

impl std::fmt::Display for MsgType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One nf_tables message: netlink header, `nfgenmsg`, attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    /// What it asks for.
    pub kind: MsgType,
    /// Netlink flags.
    pub flags: u16,
    /// Sequence number.
    pub seq: u32,
    /// `nfgen_family`.
    pub family: u8,
    /// Attributes.
    pub attrs: Vec<Attr<'a>>,
}

impl<'a> Message<'a> {
    /// A message with nft's flags plus `NLM_F_ACK`, for the inet family.
    pub fn new(kind: MsgType, attrs: Vec<Attr<'a>>) -> Message<'a> {
        Message {
            kind,
            flags: kind.flags() | NLM_F_ACK,
            seq: 0,
            family: NFPROTO_INET,
            attrs,
        }
    }
}

/// Write a netlink + nfgenmsg header.
pub fn emit_header(
    buf: &mut [u8],
    len: usize,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
) {
    buf[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    buf[4..6].copy_from_slice(&ty.to_ne_bytes());
    buf[6..8].copy_from_slice(&flags.to_ne_bytes());
    buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    buf[12..16].copy_from_slice(&0u32.to_ne_bytes());
    buf[16] = family;
    buf[17] = NFNETLINK_V0;
    buf[18..20].copy_from_slice(&res_id.to_be_bytes());
}

impl Emit for Message<'_> {
    fn buffer_len(&self) -> usize {
        NLMSG_HDRLEN + 4 + self.attrs.buffer_len()
    }

    fn emit(&self, buf: &mut [u8]) {
        let len = self.buffer_len();
        emit_header(
            buf,
            len,
            (NFNL_SUBSYS_NFTABLES << 8) | self.kind.code(),
            self.flags,
            self.seq,
            self.family,
            0,
        );
        self.attrs.emit(&mut buf[20..len]);
    }
}

/// NFNL_MSG_BATCH_BEGIN or _END: brackets a transaction for the nf_tables subsystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMarker {
    /// Begin (true) or end.
    pub begin: bool,
    /// Sequence number.
    pub seq: u32,
}

impl Emit for BatchMarker {
    fn buffer_len(&self) -> usize {
        NLMSG_HDRLEN + 4
    }

    fn emit(&self, buf: &mut [u8]) {
        let ty = if self.begin {
            NFNL_MSG_BATCH_BEGIN
        } else {
            NFNL_MSG_BATCH_END
        };
        emit_header(
            buf,
            20,
            ty,
            NLM_F_REQUEST,
            self.seq,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested_flagged() {
        let a = Attr::Nested(4, vec![Attr::str(1, "reyes"), Attr::U32(2, 1)]);
        let b = a.to_vec();
        assert_eq!(b.len(), 4 + 12 + 8);
        assert_eq!(&b[0..4], &[24, 0, 4, 0x80]);
        assert_eq!(
            &b[4..16],
            &[10, 0, 1, 0, b'r', b'e', b'y', b'e', b's', 0, 0, 0]
        );
        assert_eq!(&b[16..24], &[8, 0, 2, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn batch_markers_name_the_nftables_subsystem() {
        let b = BatchMarker {
            begin: true,
            seq: 7,
        }
        .to_vec();
        assert_eq!(
            b,
            [20, 0, 0, 0, 0x10, 0, 1, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]
        );
    }
}
