//! `payload`: load `len` bytes at `offset` of a header into a register.

use super::Expression;
use crate::nft::netlink::sys::*;
use crate::nft::netlink::wire::Attr;

/// Which header an offset counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBase {
    /// The IPv4 / IPv6 header.
    Network,
    /// The TCP / UDP / ICMP header.
    Transport,
}

/// Load header bytes into register 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// Header.
    pub base: PayloadBase,
    /// Byte offset.
    pub offset: u32,
    /// Bytes.
    pub len: u32,
}

impl Expression for Payload {
    const NAME: &'static str = "payload";

    fn data(&self) -> Vec<Attr<'_>> {
        let base = match self.base {
            PayloadBase::Network => NFT_PAYLOAD_NETWORK_HEADER,
            PayloadBase::Transport => NFT_PAYLOAD_TRANSPORT_HEADER,
        };
        vec![
            Attr::U32(NFTA_PAYLOAD_DREG, NFT_REG_1),
            Attr::U32(NFTA_PAYLOAD_BASE, base),
            Attr::U32(NFTA_PAYLOAD_OFFSET, self.offset),
            Attr::U32(NFTA_PAYLOAD_LEN, self.len),
        ]
    }
}
