//! The nf_tables expressions reyes' rules are made of, one type per file. Each knows its
//! kernel name and its `NFTA_EXPR_DATA` attributes (in the order nft sends them); a rule
//! nests them as `NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA }`.

mod bitwise;
mod cmp;
mod ct;
mod immediate;
mod limit;
mod log;
mod lookup;
mod meta;
mod objref;
mod payload;
mod range;
mod rt;

pub use bitwise::Bitwise;
pub use cmp::{Cmp, CmpOp};
pub use ct::{label_bits, Ct, CtSetLabel};
pub use immediate::{Immediate, Load, Verdict};
pub use limit::Limit;
pub use log::Log;
pub use lookup::Lookup;
pub use meta::{Meta, MetaKey};
pub use objref::Objref;
pub use payload::{Payload, PayloadBase};
pub use range::Range;
pub use rt::RtIpsec;

use super::sys::*;
use super::wire::{Attr, Emit};

/// One expression: a kernel name and its data attributes.
pub trait Expression {
    /// The kernel's name for it (`payload`, `cmp`, ...).
    const NAME: &'static str;
    /// `NFTA_EXPR_DATA` contents.
    fn data(&self) -> Vec<Attr<'_>>;
}

/// Any expression reyes uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Load header bytes.
    Payload(Payload),
    /// Compare a register with a constant.
    Cmp(Cmp),
    /// Mask and xor a register.
    Bitwise(Bitwise),
    /// Compare a register with an inclusive range.
    Range(Range),
    /// Look a register up in a set (or a verdict map).
    Lookup(Lookup),
    /// Load packet metadata.
    Meta(Meta),
    /// Load conntrack state.
    Ct(Ct),
    /// Set conntrack labels from register 1.
    CtSetLabel(CtSetLabel),
    /// Load a constant (data) into register 1.
    Load(Load),
    /// Load whether the route leaves through IPsec.
    RtIpsec(RtIpsec),
    /// Load a constant (a verdict).
    Immediate(Immediate),
    /// Use a named stateful object (a counter).
    Objref(Objref),
    /// Log the packet.
    Log(Log),
    /// Rate limit.
    Limit(Limit),
}

impl Expr {
    fn parts(&self) -> (&'static str, Vec<Attr<'_>>) {
        fn p<E: Expression>(e: &E) -> (&'static str, Vec<Attr<'_>>) {
            (E::NAME, e.data())
        }
        match self {
            Expr::Payload(e) => p(e),
            Expr::Cmp(e) => p(e),
            Expr::Bitwise(e) => p(e),
            Expr::Range(e) => p(e),
            Expr::Lookup(e) => p(e),
            Expr::Meta(e) => p(e),
            Expr::Ct(e) => p(e),
            Expr::CtSetLabel(e) => p(e),
            Expr::Load(e) => p(e),
            Expr::RtIpsec(e) => p(e),
            Expr::Immediate(e) => p(e),
            Expr::Objref(e) => p(e),
            Expr::Log(e) => p(e),
            Expr::Limit(e) => p(e),
        }
    }

    /// The `NFTA_LIST_ELEM` attribute a rule carries.
    pub fn attr(&self) -> Attr<'_> {
        let (name, data) = self.parts();
        Attr::Nested(
            NFTA_LIST_ELEM,
            vec![
                Attr::str(NFTA_EXPR_NAME, name),
                Attr::Nested(NFTA_EXPR_DATA, data),
            ],
        )
    }
}

impl Emit for Expr {
    fn buffer_len(&self) -> usize {
        self.attr().buffer_len()
    }

    fn emit(&self, buf: &mut [u8]) {
        self.attr().emit(buf)
    }
}

macro_rules! from_exprs {
    ($($t:ident),*) => {$(
        impl From<$t> for Expr {
            fn from(e: $t) -> Expr {
                Expr::$t(e)
            }
        }
    )*};
}
from_exprs!(
    Payload, Cmp, Bitwise, Range, Lookup, Meta, Ct, CtSetLabel, Load, RtIpsec, Immediate, Objref,
    Log, Limit
);
