//! `ct`: load conntrack state into register 1.

use super::Expression;
use crate::nft::netlink::sys::*;
use crate::nft::netlink::wire::Attr;

/// Load the conntrack state bits (4 bytes, host order) into register 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ct;

impl Expression for Ct {
    const NAME: &'static str = "ct";

    fn data(&self) -> Vec<Attr<'_>> {
        vec![
            Attr::U32(NFTA_CT_KEY, NFT_CT_STATE),
            Attr::U32(NFTA_CT_DREG, NFT_REG_1),
        ]
    }
}

/// Set the conntrack labels from register 1 (`ct label set N`): the kernel ORs the register's
/// bits into the connection's 128 label bits, leaving the others as they were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtSetLabel;

impl Expression for CtSetLabel {
    const NAME: &'static str = "ct";

    fn data(&self) -> Vec<Attr<'_>> {
        vec![
            Attr::U32(NFTA_CT_KEY, NFT_CT_LABELS),
            Attr::U32(NFTA_CT_SREG, NFT_REG_1),
        ]
    }
}

/// The 16 bytes of a conntrack label bitmap with only `bit` (0-127) set, as the kernel holds
/// it (an array of host-order longs, bit `n` in long `n / BITS`).
pub fn label_bits(bit: u8) -> [u8; 16] {
    let mut words = [0u64; 2];
    let bit = usize::from(bit % 128);
    words[bit / 64] |= 1u64 << (bit % 64);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&words[0].to_ne_bytes());
    out[8..].copy_from_slice(&words[1].to_ne_bytes());
    out
}
