//! `objref`: count in a named counter object (`counter name "accepted"`).

use super::Expression;
use crate::nft::netlink::sys::*;
use crate::nft::netlink::wire::Attr;

/// Use the named counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Objref {
    /// Counter name.
    pub counter: String,
}

impl Expression for Objref {
    const NAME: &'static str = "objref";

    fn data(&self) -> Vec<Attr<'_>> {
        vec![
            Attr::U32(NFTA_OBJREF_IMM_TYPE, NFT_OBJECT_COUNTER),
            // libnftnl sends this one name without its NUL (the kernel accepts both).
            Attr::bytes(NFTA_OBJREF_IMM_NAME, self.counter.as_bytes()),
        ]
    }
}
