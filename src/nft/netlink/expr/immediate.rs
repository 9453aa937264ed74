//! `immediate`: set the verdict register.

use super::Expression;
use crate::nft::netlink::sys::*;
use crate::nft::netlink::wire::Attr;

/// A verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// NF_ACCEPT.
    Accept,
    /// NF_DROP.
    Drop,
    /// NFT_JUMP to a chain.
    Jump(crate::compile::Name),
}

impl Verdict {
    /// `NFTA_DATA_VERDICT { CODE, [CHAIN] }` inside attribute `kind`.
    pub fn attr(&self, kind: u16) -> Attr<'_> {
        let mut v = Vec::with_capacity(2);
        let code = match self {
            Verdict::Accept => NF_ACCEPT,
            Verdict::Drop => NF_DROP,
            Verdict::Jump(_) => NFT_JUMP,
        };
        v.push(Attr::U32(NFTA_VERDICT_CODE, code as u32));
        if let Verdict::Jump(chain) = self {
            v.push(Attr::str(NFTA_VERDICT_CHAIN, chain));
        }
        Attr::Nested(kind, vec![Attr::Nested(NFTA_DATA_VERDICT, v)])
    }
}

/// Set the verdict register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Immediate {
    /// The verdict.
    pub verdict: Verdict,
}

impl Expression for Immediate {
    const NAME: &'static str = "immediate";

    fn data(&self) -> Vec<Attr<'_>> {
        vec![
            Attr::U32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT),
            self.verdict.attr(NFTA_IMMEDIATE_DATA),
        ]
    }
}

/// Load a constant into register 1 (the first half of `ct label set N`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    /// The bytes, as the register holds them.
    pub value: Vec<u8>,
}

impl Expression for Load {
    const NAME: &'static str = "immediate";

    fn data(&self) -> Vec<Attr<'_>> {
        vec![
            Attr::U32(NFTA_IMMEDIATE_DREG, NFT_REG_1),
            Attr::data(NFTA_IMMEDIATE_DATA, self.value.as_slice()),
        ]
    }
}
