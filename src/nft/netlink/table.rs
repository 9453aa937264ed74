//! `table inet reyes`: the handle every other object is created in.

use super::sys::*;
use super::wire::{Attr, Message, MsgType};

/// An inet table. Objects are built from a `&Table`, so a batch can only ever name the
/// table it was built for: reyes' own ([`Table::REYES`]), or the throwaway probe table.
#[derive(Debug, PartialEq, Eq)]
pub struct Table {
    name: &'static str,
}

impl Table {
    /// `table inet reyes`.
    pub const REYES: Table = Table {
        name: crate::compile::TABLE,
    };

    /// `table inet reyes_probe`: used only by the transport probe, never committed.
    pub(crate) const PROBE: Table = Table {
        name: "reyes_probe",
    };

    /// Its name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// NEWTABLE (creates it, or does nothing if it exists).
    pub fn create(&self) -> Message<'static> {
        Message::new(
            MsgType::NewTable,
            vec![
                Attr::str(NFTA_TABLE_NAME, self.name),
                Attr::U32(NFTA_TABLE_FLAGS, 0),
            ],
        )
    }

    /// DELTABLE (removes it with everything in it).
    pub fn delete(&self) -> Message<'static> {
        Message::new(
            MsgType::DelTable,
            vec![Attr::str(NFTA_TABLE_NAME, self.name)],
        )
    }

    /// GETTABLE of this table (not a dump).
    pub fn get(&self) -> Message<'static> {
        Message::new(
            MsgType::GetTable,
            vec![Attr::str(NFTA_TABLE_NAME, self.name)],
        )
    }
}
