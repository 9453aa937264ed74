//! Chains: regular ones (jump targets) and reyes' one base chain.

use super::sys::*;
use super::table::Table;
use super::wire::{Attr, Message, MsgType};

/// The hook of a base chain: reyes has exactly one kind,
/// `type filter hook input priority filter; policy accept;`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputHook;

/// A chain of `table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain<'t> {
    /// Table.
    pub table: &'t Table,
    /// Name.
    pub name: String,
    /// Base chain hook, if any.
    pub hook: Option<InputHook>,
}

impl Chain<'_> {
    /// NEWCHAIN.
    pub fn message(&self) -> Message<'_> {
        let mut attrs = vec![
            Attr::str(NFTA_CHAIN_TABLE, self.table.name()),
            Attr::str(NFTA_CHAIN_NAME, &self.name),
        ];
        if self.hook.is_some() {
            attrs.push(Attr::str(NFTA_CHAIN_TYPE, "filter"));
            attrs.push(Attr::U32(NFTA_CHAIN_POLICY, NF_ACCEPT as u32));
            attrs.push(Attr::Nested(
                NFTA_CHAIN_HOOK,
                vec![
                    Attr::U32(NFTA_HOOK_HOOKNUM, NF_INET_LOCAL_IN),
                    Attr::U32(NFTA_HOOK_PRIORITY, 0),
                ],
            ));
        }
        Message::new(MsgType::NewChain, attrs)
    }

    /// GETCHAIN of this chain (not a dump).
    pub fn get(&self) -> Message<'_> {
        Message::new(
            MsgType::GetChain,
            vec![
                Attr::str(NFTA_CHAIN_TABLE, self.table.name()),
                Attr::str(NFTA_CHAIN_NAME, &self.name),
            ],
        )
    }
}
