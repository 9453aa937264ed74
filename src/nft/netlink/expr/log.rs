//! `log`: log the packet with a prefix.

use super::Expression;
use crate::nft::netlink::sys::*;
use crate::nft::netlink::wire::Attr;

/// Log with this prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    /// Prefix (at most 127 bytes).
    pub prefix: String,
}

impl Expression for Log {
    const NAME: &'static str = "log";

    fn data(&self) -> Vec<Attr<'_>> {
        vec![Attr::str(NFTA_LOG_PREFIX, &self.prefix)]
    }
}
