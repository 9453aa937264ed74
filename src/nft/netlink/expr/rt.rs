//! `rt`: load routing data into register 1.

use super::Expression;
use crate::nft::netlink::sys::*;
use crate::nft::netlink::wire::Attr;

/// Load whether the packet's route has an xfrm (IPsec) transform, i.e. it leaves through an
/// IPsec SA (1 byte, 0 or 1): `rt ipsec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtIpsec;

impl Expression for RtIpsec {
    const NAME: &'static str = "rt";

    fn data(&self) -> Vec<Attr<'_>> {
        vec![
            Attr::U32(NFTA_RT_KEY, NFT_RT_XFRM),
            Attr::U32(NFTA_RT_DREG, NFT_REG_1),
        ]
    }
}
