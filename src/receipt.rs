//! Receipts: with `follower.receipts: true`, after every run a follower writes a small JSON
//! report of what it enforces to the store (`receipts/<host id>.json` beside the document),
//! and keeps the same in its state directory (`receipt.json`), where the next run takes the
//! last success, the last refusal and the table digest of the last apply from.
//!
//! Receipts report; they never influence enforcement. A receipt that cannot be written is
//! logged and counted (`reyes_follower_receipt_failures_total`), never a failed run. For
//! `reyes fleet` they are untrusted input: whoever can write to the store can write one.

use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError};
use crate::config::{AutoOr, Backend as BackendChoice, Config, HostId, HostIdError};
use crate::error::{ExitKind, Failure};
use crate::state::{Applied, StateDir, StateError};
use crate::store::{self, ReceiptLimits, StoreError};
use crate::timefmt::rfc3339;

/// The receipt format this reyes writes.
pub const FORMAT: u32 = 1;
/// The largest receipt `reyes fleet` reads.
pub const MAX_BYTES: u64 = 64 * 1024;
/// The most receipts `reyes fleet` reads.
pub const MAX_RECEIPTS: usize = 100_000;
/// The most bytes of receipts `reyes fleet` holds in all (a receipt is about 1 KiB, so
/// 100000 real ones fit several times over; a store filled with large ones cannot exhaust
/// the memory of the machine running it).
pub const MAX_TOTAL_BYTES: u64 = 512 * 1024 * 1024;
/// Listing limits for `reyes fleet`.
pub const LIMITS: ReceiptLimits = ReceiptLimits {
    max_bytes: MAX_BYTES,
    max_count: MAX_RECEIPTS,
    max_total: MAX_TOTAL_BYTES,
};
/// Addresses listed in a receipt, at most.
const MAX_ADDRESSES: usize = 256;
/// Characters of an error message kept in a receipt.
const MAX_MESSAGE: usize = 1000;
/// The copy in the state directory.
pub const STATE_FILE: &str = "receipt.json";

/// A receipt could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// The configured or discovered host id is not usable.
    #[error("follower.host_id: {0}")]
    HostId(#[from] HostIdError),
    /// The hostname could not be read (for a default host id).
    #[error("cannot read the hostname for the host id (set follower.host_id): {0}")]
    Hostname(#[source] std::io::Error),
    /// The state directory failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The store failed.
    #[error("cannot write the receipt: {0}")]
    Store(#[from] StoreError),
    /// Serialising failed.
    #[error("cannot serialise the receipt: {0}")]
    Json(#[from] serde_json::Error),
}

/// How the run a receipt reports ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// A document was applied.
    Applied,
    /// The document's policy was already live.
    Unchanged,
    /// The store said nothing changed.
    NotModified,
    /// The disable file exists: nothing was done.
    Disabled,
    /// The document was refused (exit 3).
    Refused,
    /// The run failed otherwise (exit 1 or 2).
    Failed,
}

impl RunOutcome {
    /// The outcome of a run that failed with `f`.
    pub fn of_failure(f: &Failure) -> RunOutcome {
        match f.kind {
            ExitKind::Refused => RunOutcome::Refused,
            _ => RunOutcome::Failed,
        }
    }

    fn succeeded(self) -> bool {
        matches!(
            self,
            RunOutcome::Applied | RunOutcome::Unchanged | RunOutcome::NotModified
        )
    }
}

/// The applied document, as the state directory records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedFacts {
    /// Serial.
    pub serial: u64,
    /// Policy digest.
    pub policy_digest: String,
    /// sha256 of the document bytes.
    pub document_digest: String,
    /// The document's issue time.
    pub issued_at: String,
    /// When it was applied.
    pub applied_at: String,
    /// Backend it went through.
    pub backend: String,
}

/// The last refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRefusal {
    /// When.
    pub at: String,
    /// The reason (as the `reason` label of the refusal metric).
    pub reason: String,
    /// The message.
    pub message: String,
}

/// The live table's digest, and the one it had right after the last apply.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LiveTable {
    /// sha256 of the live table as the backend lists it (reyes' objects only, no counter
    /// values), or `absent` when reyes has no table; none when it could not be listed (nothing
    /// applied yet, or no `nft` binary to list with).
    pub digest: Option<String>,
    /// The same right after the last apply of the applied policy (absent: not known yet).
    pub applied_digest: Option<String>,
    /// What the applied digest belongs to: policy digest, host context digest, backend.
    pub applied_for: Option<String>,
}

impl LiveTable {
    /// Whether the table changed since it was applied (absent: not known).
    pub fn drifted(&self) -> Option<bool> {
        Some(self.digest.as_ref()? != self.applied_digest.as_ref()?)
    }
}

/// What a follower reports after a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// [`FORMAT`].
    pub format: u32,
    /// The host.
    pub host_id: HostId,
    /// The follower's environment.
    pub environment: String,
    /// Its addresses (configured or discovered).
    pub addresses: Vec<IpAddr>,
    /// When this receipt was written.
    pub written_at: String,
    /// The reyes version.
    pub reyes_version: String,
    /// How the run ended.
    pub outcome: RunOutcome,
    /// The run's error, when it failed or refused.
    pub error: Option<String>,
    /// The disable file exists.
    pub disabled: bool,
    /// What is applied (none: nothing yet).
    pub applied: Option<AppliedFacts>,
    /// The live table.
    pub live: LiveTable,
    /// The last run that succeeded (applied, unchanged or not modified).
    pub last_success: Option<String>,
    /// The last refusal, whenever it was.
    pub last_refusal: Option<LastRefusal>,
}

/// Why a stored receipt is not one.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON, or not a receipt.
    #[error("not a receipt: {0}")]
    Json(#[from] serde_json::Error),
    /// A format this reyes does not know.
    #[error("receipt format {0} is not known to this reyes (it reads format {FORMAT})")]
    Format(u32),
}

impl Receipt {
    /// Parse untrusted bytes.
    pub fn parse(bytes: &[u8]) -> Result<Receipt, ParseError> {
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head = serde_json::from_slice(bytes)?;
        if head.format != FORMAT {
            return Err(ParseError::Format(head.format));
        }
        Ok(serde_json::from_slice(bytes)?)
    }

    /// Whether the live table changed since it was applied (absent: not known).
    pub fn drifted(&self) -> Option<bool> {
        self.live.drifted()
    }
}

/// What a run was, for its receipt.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    /// How it ended.
    pub outcome: RunOutcome,
    /// Its failure, when it failed.
    pub failure: Option<&'a Failure>,
}

/// The host id: `follower.host_id`, or the hostname.
pub fn host_id(cfg: &Config) -> Result<HostId, ReceiptError> {
    if let Some(id) = &cfg.follower.host_id {
        return Ok(id.clone());
    }
    let name =
        std::fs::read_to_string("/proc/sys/kernel/hostname").map_err(ReceiptError::Hostname)?;
    Ok(HostId::new(name.trim())?)
}

fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// What the live digest belongs to.
fn applied_key(a: &Applied) -> String {
    format!("{} {} {}", a.policy_digest, a.context_digest, a.backend)
}

/// The receipt for `run`, from what the state directory says (`applied`, the `previous`
/// receipt) and the live table's digest.
pub fn build(
    cfg: &Config,
    host: HostId,
    run: Run<'_>,
    applied: Option<&Applied>,
    previous: Option<&Receipt>,
    live_digest: Option<String>,
    now: SystemTime,
) -> Receipt {
    let now_s = rfc3339(now);
    let key = applied.map(applied_key);
    // The digest of the table as applied: taken right after an apply, kept while the same
    // policy, host context and backend are applied.
    let kept = previous
        .map(|p| &p.live)
        .filter(|l| l.applied_for.is_some() && l.applied_for == key)
        .and_then(|l| l.applied_digest.clone());
    let applied_digest = match run.outcome {
        RunOutcome::Applied => live_digest.clone(),
        _ => kept,
    };
    let last_refusal = match (run.outcome, run.failure) {
        (RunOutcome::Refused, Some(f)) => Some(LastRefusal {
            at: now_s.clone(),
            reason: crate::metrics::refusal_reason(f).to_string(),
            message: shorten(&f.to_string(), MAX_MESSAGE),
        }),
        _ => previous.and_then(|p| p.last_refusal.clone()),
    };
    let mut addresses = match &cfg.follower.addresses {
        AutoOr::List(l) => l.clone(),
        AutoOr::Auto => crate::net::local_addresses().unwrap_or_default(),
    };
    addresses.truncate(MAX_ADDRESSES);
    Receipt {
        format: FORMAT,
        host_id: host,
        environment: cfg.environment.clone(),
        addresses,
        written_at: now_s.clone(),
        reyes_version: env!("CARGO_PKG_VERSION").to_string(),
        outcome: run.outcome,
        error: run.failure.map(|f| shorten(&f.to_string(), MAX_MESSAGE)),
        disabled: run.outcome == RunOutcome::Disabled || cfg.follower.disable_file.exists(),
        applied: applied.map(|a| AppliedFacts {
            serial: a.serial,
            policy_digest: a.policy_digest.clone(),
            document_digest: a.document_digest.clone(),
            issued_at: a.issued_at.clone(),
            applied_at: a.applied_at.clone(),
            backend: a.backend.clone(),
        }),
        live: LiveTable {
            digest: live_digest,
            applied_digest,
            applied_for: key,
        },
        last_success: if run.outcome.succeeded() {
            Some(now_s)
        } else {
            previous.and_then(|p| p.last_success.clone())
        },
        last_refusal,
    }
}

/// The digest of reyes' live objects as `backend` reads them (the one the follower's drift
/// check compares, over netlink where the transport is netlink); `absent` when there are none.
pub fn live_digest(backend: &dyn Backend) -> Result<String, BackendError> {
    Ok(backend.digest()?.unwrap_or_else(|| "absent".to_string()))
}

/// The live digest through the backend the applied record names (none when nothing is
/// applied, or the kernel cannot be read).
fn live_digest_of(cfg: &Config, applied: Option<&Applied>) -> Option<String> {
    let choice = match applied?.backend.as_str() {
        "nft" => BackendChoice::Nft,
        "iptables" => BackendChoice::Iptables,
        _ => return None,
    };
    let backend = crate::probe::select(
        choice,
        cfg.follower.nft_transport,
        cfg.follower.iptables_variant,
    )
    .ok()?;
    live_digest(backend.as_ref())
        .inspect_err(|e| tracing::debug!(error = %e, "receipt: cannot list the live table"))
        .ok()
}

/// Make this run's receipt, keep it in the state directory and write it to the store.
/// Returns its size in bytes.
pub fn write(cfg: &Config, run: Run<'_>, now: SystemTime) -> Result<usize, ReceiptError> {
    let host = host_id(cfg)?;
    let state = StateDir::open(&cfg.follower.state_dir)?;
    let applied = state.applied()?;
    let local = state.path().join(STATE_FILE);
    let previous = crate::fsutil::read_limited(&local, MAX_BYTES)
        .ok()
        .and_then(|b| Receipt::parse(&b).ok());
    let live = live_digest_of(cfg, applied.as_ref());
    let r = build(
        cfg,
        host,
        run,
        applied.as_ref(),
        previous.as_ref(),
        live,
        now,
    );
    let mut bytes = serde_json::to_vec_pretty(&r)?;
    bytes.push(b'\n');
    if let Err(e) = crate::fsutil::write_atomic(&local, &bytes) {
        tracing::warn!(file = %local.display(), error = %e, "cannot keep the receipt in the state directory");
    }
    let store = store::open(&cfg.store)?;
    store.put_receipt(&r.host_id, &bytes)?;
    Ok(bytes.len())
}

#[cfg(test)]
mod tests;
