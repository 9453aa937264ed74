//! What a follower needs from a firewall backend. Backends translate the IR; they decide
//! nothing about semantics.

use crate::compile::Ruleset;
use crate::config::{Backend as BackendChoice, NftTransport};

/// A backend operation failed. In every case the live rules are as they were before.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The kernel or tool refused the transaction.
    #[error("{0}")]
    Refused(String),
    /// Applied, but the read-back did not match; rolled back.
    #[error("{0}")]
    Mismatch(String),
    /// Could not run the tool or read state.
    #[error("{0}")]
    Io(String),
    /// The backend is not available in this build or on this host.
    #[error("{0}")]
    Unsupported(String),
}

/// Packet and byte counts of the named counters, when present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Accepted in-scope packets, bytes.
    pub accepted: Option<(u64, u64)>,
    /// Dropped packets, bytes.
    pub dropped: Option<(u64, u64)>,
}

/// A firewall backend.
pub trait Backend {
    /// `nft` or `iptables`.
    fn name(&self) -> &'static str;
    /// The exact text that would be applied.
    fn render(&self, rs: &Ruleset) -> Result<String, BackendError>;
    /// What is live now (our objects only), or `None` if nothing of ours is.
    fn live(&self) -> Result<Option<String>, BackendError>;
    /// Whether our objects exist (cheap).
    fn present(&self) -> Result<bool, BackendError>;
    /// Replace our objects with the ruleset, atomically, and check what the kernel holds.
    fn apply(&self, rs: &Ruleset) -> Result<(), BackendError>;
    /// Remove our objects, and nothing else.
    fn flush(&self) -> Result<(), BackendError>;
    /// Accept/drop counters.
    fn counters(&self) -> Result<Counters, BackendError>;
}

/// Pick a backend. nft goes through netlink when `transport` says so, or, for `auto`, when
/// the kernel accepts a check-only probe batch (the choice and its reason are logged).
pub fn select(
    choice: BackendChoice,
    transport: NftTransport,
) -> Result<Box<dyn Backend>, BackendError> {
    match choice {
        BackendChoice::Nft | BackendChoice::Auto => Ok(Box::new(match transport {
            NftTransport::Cli => crate::nft::NftBackend::new(),
            NftTransport::Netlink => crate::nft::NftBackend::netlink(),
            NftTransport::Auto => match crate::nft::probe_netlink() {
                Ok(()) => {
                    tracing::info!("nft transport: netlink (the kernel accepted the probe batch)");
                    crate::nft::NftBackend::netlink()
                }
                Err(why) => {
                    tracing::info!(reason = %why, "nft transport: nft -f (netlink probe failed)");
                    crate::nft::NftBackend::new()
                }
            },
        })),
        BackendChoice::Iptables => Err(BackendError::Unsupported(
            "the iptables backend is not supported yet in this build: use --backend nft".into(),
        )),
    }
}
