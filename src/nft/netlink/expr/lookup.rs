//! `lookup`: register 1 in a set (optionally inverted), or, with a verdict register as
//! destination, a verdict map lookup (`ip daddr vmap @dst4`).

use super::Expression;
use crate::nft::netlink::sys::*;
use crate::nft::netlink::wire::Attr;

/// Look register 1 up in a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// Set name (`__set%d` for an anonymous set of this batch).
    pub set: String,
    /// The set's id in this batch, when it is created in the same transaction.
    pub set_id: Option<u32>,
    /// Map lookup: the found data goes to the verdict register.
    pub verdict_map: bool,
    /// Match when absent (`!= @set`).
    pub invert: bool,
}

impl Expression for Lookup {
    const NAME: &'static str = "lookup";

    fn data(&self) -> Vec<Attr<'_>> {
        let mut v = vec![Attr::U32(NFTA_LOOKUP_SREG, NFT_REG_1)];
        if self.verdict_map {
            v.push(Attr::U32(NFTA_LOOKUP_DREG, NFT_REG_VERDICT));
        }
        v.push(Attr::str(NFTA_LOOKUP_SET, &self.set));
        if let Some(id) = self.set_id {
            v.push(Attr::U32(NFTA_LOOKUP_SET_ID, id));
        }
        if self.invert {
            v.push(Attr::U32(NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV));
        }
        v
    }
}
