//! `range`: register 1 inside (or outside) an inclusive range; nft uses it for `!= lo-hi`.

use super::Expression;
use crate::nft::netlink::sys::*;
use crate::nft::netlink::wire::Attr;

/// Register 1 in `[from, to]` (or, negated, not in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// NFT_RANGE_NEQ instead of NFT_RANGE_EQ.
    pub negate: bool,
    /// Low end (network byte order).
    pub from: Vec<u8>,
    /// High end.
    pub to: Vec<u8>,
}

impl Expression for Range {
    const NAME: &'static str = "range";

    fn data(&self) -> Vec<Attr<'_>> {
        vec![
            Attr::U32(NFTA_RANGE_SREG, NFT_REG_1),
            Attr::U32(NFTA_RANGE_OP, u32::from(self.negate)),
            Attr::data(NFTA_RANGE_FROM_DATA, self.from.as_slice()),
            Attr::data(NFTA_RANGE_TO_DATA, self.to.as_slice()),
        ]
    }
}
