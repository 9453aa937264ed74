//! `follower.limits`: the largest ruleset a follower applies (the capacity guard; over it,
//! the document is refused with exit 3 and the live rules stay as they are).

use serde::{Deserialize, Serialize};

/// The most a follower applies in one transaction. Every key is optional; the defaults are
/// what was measured as safe on Debian's kernels (docs/operations.md, "Capacity").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Named sets and maps.
    pub sets: usize,
    /// Elements (address intervals, dispatch entries) in any one set or map.
    pub set_elements: usize,
    /// Elements in all sets and maps together.
    pub elements: usize,
    /// Rules in all chains.
    pub rules: usize,
    /// Bytes of the batch sent to the kernel (the nf_tables netlink batch; for iptables, the
    /// `ipset restore` and `iptables-restore` input).
    pub batch_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            sets: 50_000,
            set_elements: 1_000_000,
            elements: 2_000_000,
            rules: 500_000,
            batch_bytes: 128 << 20,
        }
    }
}
