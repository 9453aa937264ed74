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
