//! The netlink seam of the nft backend: what it asks of the kernel's nf_tables, as a trait with
//! the real socket ([`Netlink`]) and a fake for tests ([`FakeKernel`]).

use std::fmt;
use std::sync::{Arc, Mutex};

use super::netlink::{self, readback::Outline, Batch, NetlinkError, Socket};
use crate::backend::NamedCount;

/// What the nft backend asks of nf_tables over netlink.
pub trait Kernel: fmt::Debug + Send + Sync {
    /// Send one batch (one transaction, or a check-only batch).
    fn apply(&self, batch: &Batch) -> Result<(), NetlinkError>;
    /// Whether `table inet reyes` has its base chain.
    fn table_present(&self) -> Result<bool, NetlinkError>;
    /// Our table in outline (chains, rule counts, set and map elements).
    fn outline(&self) -> Result<Outline, NetlinkError>;
    /// The digest of our table as it is (see [`netlink::digest`]), `None` without a table.
    fn digest(&self) -> Result<Option<String>, NetlinkError>;
    /// Our named counters' packets and bytes.
    fn counters(&self) -> Result<Vec<NamedCount>, NetlinkError>;
}

/// The kernel, through a NETLINK_NETFILTER socket opened per call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Netlink;

impl Kernel for Netlink {
    fn apply(&self, batch: &Batch) -> Result<(), NetlinkError> {
        Socket::open()?.apply(batch)
    }

    fn table_present(&self) -> Result<bool, NetlinkError> {
        netlink::table_present()
    }

    fn outline(&self) -> Result<Outline, NetlinkError> {
        netlink::readback::outline(&Socket::open()?)
    }

    fn digest(&self) -> Result<Option<String>, NetlinkError> {
        netlink::digest::digest(&Socket::open()?)
    }

    fn counters(&self) -> Result<Vec<NamedCount>, NetlinkError> {
        netlink::digest::counters(&Socket::open()?)
    }
}

/// What a [`FakeKernel`] answers to the next call of each kind.
#[derive(Debug, Default)]
pub struct FakeState {
    /// The message count of each batch applied, in order.
    pub applied: Vec<usize>,
    /// Results for the next `apply` calls, in order (then `Ok`).
    pub apply_results: Vec<Result<(), NetlinkError>>,
    /// Whether the table is present.
    pub present: bool,
    /// Outlines for the next `outline` calls, in order (then the empty outline).
    pub outlines: Vec<Outline>,
    /// What the next `digest` calls answer, in order (then `digest`).
    pub digests: Vec<Option<String>>,
    /// What `digest` answers (`None`: no table).
    pub digest: Option<String>,
    /// What `counters` answers.
    pub counters: Vec<NamedCount>,
    /// Read requests answered (table presence, outline, digest, counters).
    pub reads: usize,
}

/// A kernel for tests: records the batches it is sent and answers from [`FakeState`].
#[derive(Debug, Clone, Default)]
pub struct FakeKernel {
    /// Shared with the test.
    pub state: Arc<Mutex<FakeState>>,
}

impl FakeKernel {
    fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> Result<T, NetlinkError> {
        self.state
            .lock()
            .map(|mut s| f(&mut s))
            .map_err(|_| NetlinkError::Malformed("fake kernel poisoned".into()))
    }
}

impl Kernel for FakeKernel {
    fn apply(&self, batch: &Batch) -> Result<(), NetlinkError> {
        self.with(|s| {
            s.applied.push(batch.len());
            if s.apply_results.is_empty() {
                Ok(())
            } else {
                s.apply_results.remove(0)
            }
        })?
    }

    fn table_present(&self) -> Result<bool, NetlinkError> {
        self.with(|s| {
            s.reads += 1;
            s.present
        })
    }

    fn outline(&self) -> Result<Outline, NetlinkError> {
        self.with(|s| {
            s.reads += 1;
            if s.outlines.is_empty() {
                Outline::default()
            } else {
                s.outlines.remove(0)
            }
        })
    }

    fn digest(&self) -> Result<Option<String>, NetlinkError> {
        self.with(|s| {
            s.reads += 1;
            if s.digests.is_empty() {
                s.digest.clone()
            } else {
                s.digests.remove(0)
            }
        })
    }

    fn counters(&self) -> Result<Vec<NamedCount>, NetlinkError> {
        self.with(|s| {
            s.reads += 1;
            s.counters.clone()
        })
    }
}
