//! `bitwise`: register 1 = (register 1 & mask) ^ xor; used for prefixes and bit flags.

use super::Expression;
use crate::nft::netlink::sys::*;
use crate::nft::netlink::wire::Attr;

/// Mask register 1 in place (`xor` is all zeroes, as nft sends it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitwise {
    /// Mask; its length is the operand length.
    pub mask: Vec<u8>,
}

impl Expression for Bitwise {
    const NAME: &'static str = "bitwise";

    fn data(&self) -> Vec<Attr<'_>> {
        vec![
            Attr::U32(NFTA_BITWISE_SREG, NFT_REG_1),
            Attr::U32(NFTA_BITWISE_DREG, NFT_REG_1),
            Attr::U32(NFTA_BITWISE_LEN, self.mask.len() as u32),
            Attr::data(NFTA_BITWISE_MASK, self.mask.as_slice()),
            Attr::data(NFTA_BITWISE_XOR, vec![0u8; self.mask.len()]),
        ]
    }
}
