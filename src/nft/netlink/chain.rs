//! Chains: regular ones (jump targets) and reyes' one base chain.

use super::sys::*;
use super::table::Table;
use super::wire::{Attr, Message, MsgType};

/// The hook of a base chain, from the IR's [`BaseChain`](crate::compile::BaseChain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseHook {
    /// `NF_INET_*`.
    pub hooknum: u32,
    /// Priority.
    pub priority: i32,
    /// `NF_ACCEPT` or `NF_DROP`.
    pub policy: i32,
}

impl BaseHook {
    /// The hook of the IR's base chain.
    pub fn of(b: &crate::compile::BaseChain) -> BaseHook {
        BaseHook::at(b, b.hook)
    }

    /// A base chain like the IR's, at another hook.
    pub fn at(b: &crate::compile::BaseChain, hook: crate::compile::Hook) -> BaseHook {
        use crate::compile::Hook;
        BaseHook {
            hooknum: match hook {
                Hook::Input => NF_INET_LOCAL_IN,
                Hook::Forward => NF_INET_FORWARD,
                Hook::Output => NF_INET_LOCAL_OUT,
            },
            priority: b.priority,
            policy: match b.policy {
                crate::compile::ChainPolicy::Accept => NF_ACCEPT,
                crate::compile::ChainPolicy::Drop => NF_DROP,
            },
        }
    }
}

/// A chain of `table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain<'t> {
    /// Table.
    pub table: &'t Table,
    /// Name.
    pub name: String,
    /// Base chain hook, if any.
    pub hook: Option<BaseHook>,
}

impl Chain<'_> {
    /// NEWCHAIN.
    pub fn message(&self) -> Message<'_> {
        let mut attrs = vec![
            Attr::str(NFTA_CHAIN_TABLE, self.table.name()),
            Attr::str(NFTA_CHAIN_NAME, &self.name),
        ];
        if let Some(h) = self.hook {
            attrs.push(Attr::str(NFTA_CHAIN_TYPE, "filter"));
            attrs.push(Attr::U32(NFTA_CHAIN_POLICY, h.policy as u32));
            attrs.push(Attr::Nested(
                NFTA_CHAIN_HOOK,
                vec![
                    Attr::U32(NFTA_HOOK_HOOKNUM, h.hooknum),
                    Attr::U32(NFTA_HOOK_PRIORITY, h.priority as u32),
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
