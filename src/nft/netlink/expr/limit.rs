//! `limit`: match at most `rate` packets per second, with bursts of `burst`.

use super::Expression;
use crate::nft::netlink::sys::*;
use crate::nft::netlink::wire::Attr;

/// A packet rate limit per second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Packets per second.
    pub rate: u64,
    /// Burst, packets.
    pub burst: u32,
}

impl Expression for Limit {
    const NAME: &'static str = "limit";

    fn data(&self) -> Vec<Attr<'_>> {
        vec![
            Attr::U64(NFTA_LIMIT_RATE, self.rate),
            Attr::U64(NFTA_LIMIT_UNIT, 1),
            Attr::U32(NFTA_LIMIT_BURST, self.burst),
            Attr::U32(NFTA_LIMIT_TYPE, NFT_LIMIT_PKTS),
            Attr::U32(NFTA_LIMIT_FLAGS, 0),
        ]
    }
}
