//! Drift: what the kernel holds compared with what was applied, on every run, including a
//! run the store answers "not modified". After each apply the backend's digest of reyes'
//! objects (read back from the kernel, counters left out) is recorded in the state directory;
//! a later run reads the digest again and re-applies when the objects are missing or differ.
//! Looking costs reads only: an untouched kernel gets no write.

use std::time::SystemTime;

use crate::backend::Backend;
use crate::compile::HostContext;
use crate::config::Config;
use crate::error::{Classify, CmdResult, Failure};
use crate::metrics::Report;
use crate::signing::TrustRoot;
use crate::state::{LiveDigest, StateDir};

use super::{apply_verified, verify_document, Guards, Outcome};

/// What the kernel holds, compared with what was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drift {
    /// What was applied, exactly.
    Intact,
    /// Nothing of ours is live.
    Missing,
    /// Ours, but added to, removed from or altered.
    Different,
    /// Live, but no digest was recorded for this backend (state from an older reyes, or a
    /// record that could not be written): not known to be intact.
    Unknown,
}

impl Drift {
    /// How the log and `reyes status` say it.
    pub fn describe(self) -> &'static str {
        match self {
            Drift::Intact => "as applied",
            Drift::Missing => "missing",
            Drift::Different => "different from what was applied",
            Drift::Unknown => "not known to be as applied",
        }
    }
}

/// Compare the kernel with the digest recorded at the last apply through `backend`. When the
/// digest cannot be read, presence decides (as before digests were recorded), with a warning.
pub fn check(backend: &dyn Backend, state: &StateDir) -> Drift {
    let live = match backend.digest() {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(backend = backend.name(), error = %e, "cannot read reyes' objects back to look for drift; checking presence only");
            return match backend.present() {
                Ok(true) => Drift::Intact,
                _ => Drift::Missing,
            };
        }
    };
    let Some(live) = live else {
        return Drift::Missing;
    };
    match state.live_digest() {
        Some(r) if r.backend == backend.name() && r.digest == live => Drift::Intact,
        Some(r) if r.backend == backend.name() => Drift::Different,
        _ => Drift::Unknown,
    }
}

/// Log a drift found before re-applying, and count it as a repair (an unknown state is
/// re-applied, but not counted).
pub fn note(drift: Drift, backend: &dyn Backend, serial: u64, report: &mut Report) {
    match drift {
        Drift::Intact => {}
        Drift::Unknown => tracing::info!(
            backend = backend.name(),
            serial,
            "no digest of the applied rules is recorded for this backend: applying again"
        ),
        Drift::Missing | Drift::Different => {
            report.drift_repairs += 1;
            tracing::warn!(
                backend = backend.name(),
                serial,
                drift = drift.describe(),
                "drift: reyes' rules in the kernel are {}; re-applying",
                drift.describe()
            );
        }
    }
}

/// Record the digest of what the kernel holds right after an apply (a failure costs one
/// more apply at the next run, so it is a warning).
pub fn record(backend: &dyn Backend, state: &StateDir) {
    let result = match backend.digest() {
        Ok(Some(digest)) => state
            .record_live_digest(&LiveDigest {
                backend: backend.name().to_string(),
                digest,
            })
            .map_err(|e| e.to_string()),
        Ok(None) => Err("nothing of reyes' is live after the apply".to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = result {
        tracing::warn!(backend = backend.name(), error = %e, "cannot record the digest of the applied rules; the next run applies again");
    }
}

/// The store said "not modified": look at the kernel, and when the rules drifted, re-apply
/// last-good (verified again) with this run's host context.
pub fn heal_not_modified(
    cfg: &Config,
    trust: &TrustRoot,
    ctx: &HostContext,
    backend: &dyn Backend,
    state: &StateDir,
    now: SystemTime,
    report: &mut Report,
) -> CmdResult<Outcome> {
    if check(backend, state) == Drift::Intact {
        return Ok(Outcome::NotModified);
    }
    let (bytes, sig) = state.last_good().runtime()?.ok_or_else(|| {
        Failure::runtime(anyhow::anyhow!(
            "reyes' rules drifted, and there is no last-good document in {} to re-apply",
            state.path().display()
        ))
    })?;
    let v = verify_document(trust, &bytes, &sig, &cfg.environment, now, false)
        .map_err(|f| f.context("last-good document"))?;
    // The same document again: no capacity check or revocation (its rules were applied before).
    apply_verified(&v, ctx, backend, state, now, report, &Guards::default())
}
