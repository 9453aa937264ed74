//! `cmp`: compare register 1 with a constant; the rule stops here when false.

use super::Expression;
use crate::nft::netlink::sys::*;
use crate::nft::netlink::wire::Attr;

/// A comparison (`enum nft_cmp_ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// ==
    Eq,
    /// !=
    Neq,
    /// <=
    Lte,
    /// >=
    Gte,
}

/// Compare register 1 with `data` (as many bytes as were loaded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmp {
    /// Operation.
    pub op: CmpOp,
    /// Constant, in the register's byte order.
    pub data: Vec<u8>,
}

impl Cmp {
    /// `op` against `data`.
    pub fn new(op: CmpOp, data: impl Into<Vec<u8>>) -> Cmp {
        Cmp {
            op,
            data: data.into(),
        }
    }
}

impl Expression for Cmp {
    const NAME: &'static str = "cmp";

    fn data(&self) -> Vec<Attr<'_>> {
        let op = match self.op {
            CmpOp::Eq => 0,
            CmpOp::Neq => 1,
            CmpOp::Lte => 3,
            CmpOp::Gte => 5,
        };
        vec![
            Attr::U32(NFTA_CMP_SREG, NFT_REG_1),
            Attr::U32(NFTA_CMP_OP, op),
            Attr::data(NFTA_CMP_DATA, self.data.as_slice()),
        ]
    }
}
