//! The leader: read the inventory, build the canonical document, sign it, publish it.
//!
//! Serials are strictly increasing: the larger of the current Unix time and the stored
//! document's serial + 1. When the policy is unchanged and the stored document is still fresh
//! (more than half of `validity` left), nothing is published; otherwise the same policy is
//! re-signed with a new serial and not_after, which followers accept without kernel work.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::document::{self, BuildOptions, Document};
use crate::error::{Classify, CmdResult, Failure};
use crate::inventory::{self, InventoryError};
use crate::metrics::{LeaderMetrics, LeaderRun};
use crate::signing::{SigningKey, TrustRoot};
use crate::store::{self, FetchOutcome, StoreError};

/// Command-line options.
#[derive(Debug, Clone, Default)]
pub struct LeaderOptions {
    /// Print the document, publish nothing.
    pub dry_run: bool,
    /// Also write the document here (with `--dry-run`: instead of stdout).
    pub output: Option<PathBuf>,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderOutcome {
    /// Published this serial.
    Published {
        /// Serial.
        serial: u64,
        /// Policy digest.
        policy_digest: String,
    },
    /// The stored document has the same policy and is fresh.
    Fresh {
        /// Its serial.
        serial: u64,
    },
    /// Printed only.
    DryRun,
}

fn inventory_failure(e: InventoryError) -> Failure {
    match e {
        InventoryError::Unsupported(_) => Failure::usage(e),
        other => Failure::runtime(other),
    }
}

/// The stored document, if one is there and parses, with its signature.
/// A stored document with the bytes and signature it came from.
type Stored = (Document, Vec<u8>, Vec<u8>);

fn stored(store: &dyn store::Store) -> CmdResult<Option<Stored>> {
    match store.fetch(None) {
        Ok(FetchOutcome::Fetched(f)) => match Document::parse(&f.document) {
            Ok(d) => Ok(Some((d, f.document, f.signature))),
            Err(e) => {
                tracing::warn!(error = %e, "the stored document does not parse; it will be replaced");
                Ok(None)
            }
        },
        Ok(FetchOutcome::Unchanged) => Ok(None),
        Err(StoreError::NotFound(_)) | Err(StoreError::MissingSignature(_)) => Ok(None),
        Err(e @ (StoreError::TooLarge(_) | StoreError::Mismatched(_))) => {
            tracing::warn!(error = %e, "the stored document is unusable; it will be replaced");
            Ok(None)
        }
        Err(StoreError::Unsupported(m) | StoreError::Config(m)) => {
            Err(Failure::usage(anyhow::anyhow!(m)))
        }
        Err(e) => Err(Failure::runtime(e).context("cannot read the stored document")),
    }
}

/// One leader run.
pub fn run_once(cfg: &Config, opts: &LeaderOptions, now: SystemTime) -> CmdResult<LeaderOutcome> {
    let inv_cfg = cfg.inventory.as_ref().ok_or_else(|| {
        Failure::usage(anyhow::anyhow!("inventory is not configured: the leader needs `inventory: {{file: ...}}`, `aws_json` or `ec2`"))
    })?;
    let store = store::open(&cfg.store).map_err(|e| match e {
        StoreError::Unsupported(_) | StoreError::Config(_) => Failure::usage(e),
        other => Failure::runtime(other),
    })?;
    let inv = inventory::load(inv_cfg).map_err(inventory_failure)?;
    let previous = stored(store.as_ref())?;
    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let serial = previous.as_ref().map_or(now_secs, |(p, _, _)| {
        now_secs.max(p.serial.saturating_add(1))
    });
    let built = document::build(
        &inv,
        &BuildOptions {
            environment: cfg.environment.clone(),
            serial,
            issued_at: now,
            validity: cfg.signing.validity,
            excluded_group_names: inv_cfg.excluded_group_names.clone(),
            excluded_group_ids: inv_cfg.excluded_group_ids.clone(),
            dynamic_subnets: inv_cfg.dynamic_subnets.clone(),
        },
    )
    .runtime()?;
    for w in &built.warnings {
        tracing::warn!("{w}");
    }
    if let Some(out) = &opts.output {
        std::fs::write(out, &built.bytes)
            .runtime()
            .map_err(|f| f.context(format!("cannot write {}", out.display())))?;
    }
    if opts.dry_run {
        if opts.output.is_none() {
            use std::io::Write;
            std::io::stdout().write_all(&built.bytes).runtime()?;
        }
        return Ok(LeaderOutcome::DryRun);
    }
    let key = SigningKey::from_config(&cfg.signing).usage()?;
    if let Some((p, bytes, sig)) = &previous {
        let fresh_until = p
            .not_after_time()
            .ok()
            .and_then(|t| t.checked_sub(cfg.signing.validity / 2));
        // Fresh, same policy, and signed by this very key (a rotated key re-signs at once).
        if p.policy_digest == built.document.policy_digest
            && p.environment == cfg.environment
            && fresh_until.is_some_and(|t| now < t)
            && key.own_trust_root().verify(bytes, sig).is_ok()
        {
            tracing::info!(serial = p.serial, not_after = %p.not_after, "policy unchanged and still fresh; not publishing");
            return Ok(LeaderOutcome::Fresh { serial: p.serial });
        }
    }
    let sig = key.sign(&built.bytes).usage()?;
    // Never publish what our own followers would refuse.
    if let Some(keyring) = &cfg.signing.keyring {
        if let Ok(root) = TrustRoot::load(keyring, &cfg.signing.trusted_fingerprints) {
            root.verify(&built.bytes, &sig).map_err(|e| {
                Failure::usage(anyhow::anyhow!(
                    "the signature by {} does not verify against signing.keyring ({e}); followers would refuse it",
                    key.fingerprint()
                ))
            })?;
        }
    }
    store
        .publish(&built.bytes, &sig)
        .runtime()
        .map_err(|f| f.context(format!("publishing to {}", store.describe())))?;
    let p = &built.document.policy;
    tracing::info!(
        serial,
        policy_digest = %built.document.policy_digest,
        groups = p.groups.len(),
        members = p.groups.iter().map(|g| g.members.len()).sum::<usize>(),
        bytes = built.bytes.len(),
        store = %store.describe(),
        "published"
    );
    Ok(LeaderOutcome::Published {
        serial,
        policy_digest: built.document.policy_digest.clone(),
    })
}

/// One run with metrics: the run, then (when `leader.metrics_file` is set) the metrics file
/// rewritten.
pub fn cycle(
    cfg: &Config,
    opts: &LeaderOptions,
    metrics: &mut LeaderMetrics,
) -> CmdResult<LeaderOutcome> {
    let started = std::time::Instant::now();
    let result = run_once(cfg, opts, SystemTime::now());
    if let Some(path) = &cfg.leader.metrics_file {
        metrics.environment = cfg.environment.clone();
        let run = match &result {
            Ok(LeaderOutcome::Published { serial, .. }) => Some(LeaderRun::Published(*serial)),
            Ok(LeaderOutcome::Fresh { serial }) => Some(LeaderRun::Fresh(*serial)),
            Ok(LeaderOutcome::DryRun) => None,
            Err(_) => Some(LeaderRun::Failed),
        };
        if let Some(run) = run {
            metrics.observe(run, started.elapsed().as_secs_f64(), SystemTime::now());
            if let Err(e) = crate::metrics::write(path, &metrics.render()) {
                tracing::warn!(error = %e, "metrics not written");
            }
        }
    }
    result
}

/// Run as a service, once per `interval` (see [`crate::daemon`]). Returns on SIGTERM/SIGINT.
pub fn run_interval(
    path: &std::path::Path,
    cfg: Config,
    opts: &LeaderOptions,
    interval: Duration,
) -> CmdResult<()> {
    let mut metrics = LeaderMetrics::default();
    crate::daemon::run(path, cfg, interval, |cfg| {
        match cycle(cfg, opts, &mut metrics) {
            Ok(o) => {
                tracing::debug!(outcome = ?o, "leader run done");
                true
            }
            Err(f) => {
                tracing::error!(exit = f.kind.code(), "{f}");
                false
            }
        }
    })
}
