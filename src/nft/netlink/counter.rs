//! Named counter objects (`counter accepted { }`).

use super::sys::*;
use super::table::Table;
use super::wire::{Attr, Message, MsgType};

/// A named counter of `table`, created at zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter<'t> {
    /// Table.
    pub table: &'t Table,
    /// Name.
    pub name: String,
}

impl Counter<'_> {
    /// NEWOBJ.
    pub fn message(&self) -> Message<'_> {
        Message::new(
            MsgType::NewObj,
            vec![
                Attr::str(NFTA_OBJ_TABLE, self.table.name()),
                Attr::str(NFTA_OBJ_NAME, &self.name),
                Attr::U32(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER),
                Attr::Nested(
                    NFTA_OBJ_DATA,
                    vec![
                        Attr::U64(NFTA_COUNTER_BYTES, 0),
                        Attr::U64(NFTA_COUNTER_PACKETS, 0),
                    ],
                ),
            ],
        )
    }
}
