//! `meta`: load packet metadata into register 1.

use super::Expression;
use crate::nft::netlink::sys::*;
use crate::nft::netlink::wire::Attr;

/// Which metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    /// Input interface index (4 bytes, host order).
    Iif,
    /// Netfilter family of the packet (1 byte: NFPROTO_IPV4 / _IPV6).
    NfProto,
    /// Layer-4 protocol (1 byte).
    L4Proto,
    /// Whether the packet has a security path, i.e. arrived through IPsec (1 byte, 0 or 1).
    Secpath,
}

/// Load metadata into register 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// What.
    pub key: MetaKey,
}

impl Expression for Meta {
    const NAME: &'static str = "meta";

    fn data(&self) -> Vec<Attr<'_>> {
        let key = match self.key {
            MetaKey::Iif => NFT_META_IIF,
            MetaKey::NfProto => NFT_META_NFPROTO,
            MetaKey::L4Proto => NFT_META_L4PROTO,
            MetaKey::Secpath => NFT_META_SECPATH,
        };
        vec![
            Attr::U32(NFTA_META_KEY, key),
            Attr::U32(NFTA_META_DREG, NFT_REG_1),
        ]
    }
}
