//! nf_tables over netlink, without the `nft` binary: our own small encoder.
//!
//! [`encode`] turns the IR into one [`Batch`] (no I/O); [`Socket::apply`] sends it in one
//! `sendmsg` and reads every ACK, naming the object behind any failure. The layout follows
//! google/nftables: one type per kernel object ([`table`], [`chain`], [`set`], [`rule`],
//! [`counter`]) and per expression ([`expr`]), all written through the [`wire::Emit`] trait.

pub mod batch;
pub mod chain;
pub mod counter;
pub mod digest;
pub mod encode;
pub mod expr;
pub mod readback;
pub mod rule;
pub mod set;
pub mod socket;
pub mod sys;
pub mod table;
pub mod wire;

pub use batch::{Batch, What};
pub use encode::{encode, encode_check_only, encode_owned, flush_batch, probe_batch, EncodeError};
pub use socket::{NetlinkError, Refusal, Socket};

/// Interface index by name in the current network namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Whether the kernel takes nf_tables batches from us: a check-only batch (no BATCH_END:
/// validated, then aborted, nothing committed) that creates and deletes `inet reyes_probe`.
pub fn probe() -> Result<(), NetlinkError> {
    Socket::open()?.apply(&probe_batch())
}

/// Encode and apply in one transaction.
pub fn apply(rs: &crate::compile::Ruleset) -> Result<(), ApplyError> {
    let batch = encode(rs, &ifindex)?;
    Socket::open()?.apply(&batch)?;
    Ok(())
}

/// [`apply`], consuming the ruleset while it is encoded (see [`encode_owned`]): for callers that
/// do not need it afterwards, and the lowest peak memory for a large ruleset.
pub fn apply_owned(rs: crate::compile::Ruleset) -> Result<(), ApplyError> {
    let batch = encode_owned(rs, &ifindex)?;
    Socket::open()?.apply(&batch)?;
    Ok(())
}

/// Encoding or applying failed; the live table is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The IR could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The kernel refused or could not be reached.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// Whether `table inet reyes` has its base chain (a GETCHAIN, not a dump).
pub fn table_present() -> Result<bool, NetlinkError> {
    let chain = chain::Chain {
        table: &table::Table::REYES,
        name: crate::compile::INPUT_CHAIN.to_string(),
        hook: None,
    };
    match Socket::open()?.get(chain.get(), 1) {
        Ok(replies) => Ok(!replies.is_empty()),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}
