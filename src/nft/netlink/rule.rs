//! Rules: a chain name and a list of expressions, appended in order.

use super::expr::Expr;
use super::sys::*;
use super::table::Table;
use super::wire::{Attr, Message, MsgType};

/// A rule appended to `chain` of `table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule<'t> {
    /// Table.
    pub table: &'t Table,
    /// Chain.
    pub chain: String,
    /// Expressions, evaluated in order.
    pub exprs: Vec<Expr>,
}

impl Rule<'_> {
    /// NEWRULE.
    pub fn message(&self) -> Message<'_> {
        Message::new(
            MsgType::NewRule,
            vec![
                Attr::str(NFTA_RULE_TABLE, self.table.name()),
                Attr::str(NFTA_RULE_CHAIN, &self.chain),
                Attr::Nested(
                    NFTA_RULE_EXPRESSIONS,
                    self.exprs.iter().map(Expr::attr).collect(),
                ),
            ],
        )
    }
}
