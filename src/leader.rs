//! The leader: read the inventory, build the canonical document, sign it, publish it.
//!
//! Serials are strictly increasing: the larger of the current Unix time and the stored
//! document's serial + 1, where "the stored document" counts only if its signatures verify
//! against the trust root (signing.keyring, or the leader's own certificate when none is
//! configured) *now*: an attacker who can write to the store cannot push the serial (a forged
//! serial of 2^64-1 would freeze every follower forever). Serials above 2^53 are refused.
//! When the policy is unchanged and the stored document is fresh, nothing is published;
//! otherwise the same policy is re-signed with a new serial and not_after, which followers
//! accept without kernel work. "Fresh" ([`is_fresh`]): the stored document verifies now (as
//! above) with enough signers (`signing.threshold` trusted keys, or this leader's own signature
//! on a publication awaiting co-signers), and more than half of this leader's
//! `signing.validity` is left before its `not_after`. Whose key signed it does not matter, so
//! hot-spare leaders with different keys leave each other's publications alone: the store
//! changes only when the policy does, or once every `validity / 2`.
//!
//! Leaders serialise their writes: a directory store is locked from reading to publishing,
//! and S3 writes are conditional on the ETag read, so two leaders never publish the same serial
//! with different bytes.
//!
//! In co-signing mode (`leader --cosign`, for `signing.threshold` above 1) the leader does not
//! publish a document: it recomputes the policy from its own inventory, checks that the stored
//! document's policy digest is the same, and appends its signature to the stored one.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::document::{self, BuildOptions, Document};
use crate::error::{Classify, CmdResult, Failure};
use crate::inventory::{self, Inventory, InventoryError};
use crate::metrics::{LeaderMetrics, LeaderRun};
use crate::signing::{append_signature, SigningKey, TrustRoot, VerifiedSigner};
use crate::store::{self, Expect, FetchOutcome, Fetched, Store, StoreError};

/// The largest serial a leader publishes: 2^53, the largest integer every JSON reader holds
/// exactly. Far above any Unix time, far below where u64 arithmetic could wrap.
pub const MAX_SERIAL: u64 = 1 << 53;

/// How far ahead of the co-signer's clock (as Unix time) a serial may be.
pub const COSIGN_SERIAL_AHEAD: Duration = Duration::from_secs(86_400);

/// How long a leader waits for another leader's lock on a directory store.
pub const STORE_LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// Command-line options.
#[derive(Debug, Clone, Default)]
pub struct LeaderOptions {
    /// Print the document, publish nothing.
    pub dry_run: bool,
    /// Also write the document here (with `--dry-run`: instead of stdout).
    pub output: Option<PathBuf>,
    /// Co-sign the stored document instead of publishing one.
    pub cosign: bool,
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
    /// Co-signing: appended this leader's signature to the stored document.
    Cosigned {
        /// Its serial.
        serial: u64,
    },
    /// Co-signing: the stored document already carries this leader's signature.
    AlreadySigned {
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

fn store_failure(e: StoreError) -> Failure {
    match e {
        StoreError::Unsupported(_) | StoreError::Config(_) => Failure::usage(e),
        other => Failure::runtime(other),
    }
}

/// What the store holds, as far as a conditional write is concerned.
enum Raw {
    /// Nothing published.
    Absent,
    /// A pair (not yet verified).
    Pair(Fetched),
    /// Something unusable (torn, oversized, unsigned): it will be replaced.
    Unusable,
}

impl Raw {
    fn expect(&self) -> Expect<'_> {
        match self {
            Raw::Absent => Expect::Absent,
            Raw::Pair(f) => Expect::Current(f),
            Raw::Unusable => Expect::Any,
        }
    }
}

fn read_store(store: &dyn Store) -> CmdResult<Raw> {
    match store.fetch(None) {
        Ok(FetchOutcome::Fetched(f)) => Ok(Raw::Pair(f)),
        Ok(FetchOutcome::Unchanged) | Err(StoreError::NotFound(_)) => Ok(Raw::Absent),
        Err(
            e @ (StoreError::MissingSignature(_)
            | StoreError::TooLarge(_)
            | StoreError::Corrupt(_)
            | StoreError::Mismatched(_)),
        ) => {
            tracing::warn!(error = %e, "the stored document is unusable; it will be replaced");
            Ok(Raw::Unusable)
        }
        Err(e) => Err(store_failure(e).context("cannot read the stored document")),
    }
}

/// A stored document whose signatures verify now.
struct Previous {
    document: Document,
    signers: VerifiedSigner,
}

/// The trust root the leader checks stored documents and its own signatures against.
fn leader_trust(cfg: &Config, key: &SigningKey) -> CmdResult<TrustRoot> {
    match &cfg.signing.keyring {
        Some(k) => TrustRoot::load(k, &cfg.signing.trusted_fingerprints).usage(),
        None => Ok(key.own_trust_root()),
    }
}

/// The stored pair, if every signature on it is good now, it has enough signers (the
/// threshold, or at least this leader's own: its publication awaiting co-signers; a co-signer
/// takes any trusted signer), and it parses for this environment. Anything else is logged and
/// ignored: its serial and policy are never trusted.
fn verify_previous(
    cfg: &Config,
    trust: &TrustRoot,
    own: &str,
    f: &Fetched,
    now: SystemTime,
    cosigning: bool,
) -> Option<Previous> {
    let checked = (|| -> anyhow::Result<Previous> {
        let signers = trust.check_signatures(&f.document, &f.signature, now)?;
        if !cosigning
            && signers.fingerprints.len() < cfg.signing.threshold
            && !signers.fingerprints.iter().any(|s| s == own)
        {
            anyhow::bail!(
                "signed by {} of the {} keys signing.threshold needs, and not by this leader",
                signers.fingerprints.len(),
                cfg.signing.threshold
            );
        }
        let document = Document::parse(&f.document)?;
        if document.environment != cfg.environment {
            anyhow::bail!("it is for environment {:?}", document.environment);
        }
        signers.check_issued_at(document.issued_at_time()?)?;
        Ok(Previous { document, signers })
    })();
    match checked {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "the stored document does not verify; ignoring its serial and policy");
            None
        }
    }
}

/// Whether a verified stored document is fresh: more than half of `validity` left before its
/// `not_after`. (The caller has checked its signers: see [`verify_previous`].)
pub fn is_fresh(document: &Document, validity: Duration, now: SystemTime) -> bool {
    document
        .not_after_time()
        .ok()
        .and_then(|t| t.checked_sub(validity / 2))
        .is_some_and(|t| now < t)
}

/// The next serial: after the verified previous one, and not before now.
fn next_serial(previous: Option<&Previous>, now_secs: u64) -> CmdResult<u64> {
    let serial = match previous {
        Some(p) => p.document.serial.checked_add(1).map(|n| n.max(now_secs)),
        None => Some(now_secs),
    };
    match serial {
        Some(s) if s <= MAX_SERIAL => Ok(s),
        _ => Err(Failure::runtime(anyhow::anyhow!(
            "refusing to publish: the next serial would be above 2^53 = {MAX_SERIAL} (the stored serial is {}); serials must stay exact in JSON and leave room to move forward",
            previous.map_or(0, |p| p.document.serial)
        ))),
    }
}

fn build_options(cfg: &Config, serial: u64, now: SystemTime) -> CmdResult<BuildOptions> {
    let inv_cfg = inventory_config(cfg)?;
    Ok(BuildOptions {
        environment: cfg.environment.clone(),
        serial,
        issued_at: now,
        validity: cfg.signing.validity,
        excluded_group_names: inv_cfg.excluded_group_names.clone(),
        excluded_group_ids: inv_cfg.excluded_group_ids.clone(),
        dynamic_subnets: inv_cfg.dynamic_subnets.clone(),
    })
}

fn inventory_config(cfg: &Config) -> CmdResult<&crate::config::InventoryConfig> {
    cfg.inventory.as_ref().ok_or_else(|| {
        Failure::usage(anyhow::anyhow!("inventory is not configured: the leader needs `inventory: {{file: ...}}`, `aws_json` or `ec2`"))
    })
}

fn dry_run(cfg: &Config, inv: &Inventory, opts: &LeaderOptions, now: SystemTime) -> CmdResult<()> {
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let built = build_and_write(cfg, inv, opts, now_secs, now)?;
    if opts.output.is_none() {
        use std::io::Write;
        std::io::stdout().write_all(&built.bytes).runtime()?;
    }
    Ok(())
}

/// Build the document with this serial, report its warnings, and write it to `--output` when
/// given.
fn build_and_write(
    cfg: &Config,
    inv: &Inventory,
    opts: &LeaderOptions,
    serial: u64,
    now: SystemTime,
) -> CmdResult<document::Built> {
    let built = document::build(inv, &build_options(cfg, serial, now)?).runtime()?;
    for w in &built.warnings {
        tracing::warn!("{w}");
    }
    if let Some(out) = &opts.output {
        std::fs::write(out, &built.bytes)
            .runtime()
            .map_err(|f| f.context(format!("cannot write {}", out.display())))?;
    }
    Ok(built)
}

/// One leader run.
pub fn run_once(cfg: &Config, opts: &LeaderOptions, now: SystemTime) -> CmdResult<LeaderOutcome> {
    let inv_cfg = inventory_config(cfg)?;
    let store = store::open(&cfg.store).map_err(store_failure)?;
    let inv = inventory::load(inv_cfg).map_err(inventory_failure)?;
    if opts.dry_run {
        dry_run(cfg, &inv, opts, now)?;
        return Ok(LeaderOutcome::DryRun);
    }
    let key = SigningKey::from_config(&cfg.signing).usage()?;
    let trust = leader_trust(cfg, &key)?;
    let _lock = store.lock(STORE_LOCK_TIMEOUT).map_err(store_failure)?;
    let raw = read_store(store.as_ref())?;
    let own = key.fingerprint();
    let previous = match &raw {
        Raw::Pair(f) => verify_previous(cfg, &trust, &own, f, now, opts.cosign),
        _ => None,
    };
    if opts.cosign {
        let Raw::Pair(f) = &raw else {
            return Err(Failure::runtime(anyhow::anyhow!(
                "{}: no document to co-sign",
                store.describe()
            )));
        };
        return cosign(cfg, &inv, store.as_ref(), &key, f, previous.as_ref(), now);
    }
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let serial = next_serial(previous.as_ref(), now_secs)?;
    let built = build_and_write(cfg, &inv, opts, serial, now)?;
    if let Some(p) = previous
        .as_ref()
        .filter(|p| p.document.policy_digest == built.document.policy_digest)
        .filter(|p| is_fresh(&p.document, cfg.signing.validity, now))
    {
        tracing::info!(
            serial = p.document.serial,
            not_after = %p.document.not_after,
            signers = %p.signers.fingerprints.join(","),
            "policy unchanged and still fresh; not publishing"
        );
        return Ok(LeaderOutcome::Fresh {
            serial: p.document.serial,
        });
    }
    let sig = key.sign_at(&built.bytes, now).usage()?;
    // Never publish what our own followers would refuse (co-signatures aside).
    if cfg.signing.keyring.is_some() {
        trust.check_signatures(&built.bytes, &sig, now).map_err(|e| {
            Failure::usage(anyhow::anyhow!(
                "the signature by {own} does not verify against signing.keyring ({e}); followers would refuse it"
            ))
        })?;
    }
    store
        .publish_expecting(&built.bytes, &sig, raw.expect())
        .map_err(store_failure)
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

/// Co-sign the stored document: only a verified, unexpired document for this environment
/// whose policy is exactly what this leader computes from its own inventory.
fn cosign(
    cfg: &Config,
    inv: &Inventory,
    store: &dyn Store,
    key: &SigningKey,
    stored: &Fetched,
    previous: Option<&Previous>,
    now: SystemTime,
) -> CmdResult<LeaderOutcome> {
    let p = previous.ok_or_else(|| {
        Failure::refused(anyhow::anyhow!(
            "{}: the stored document does not verify (see the warning above); not co-signing",
            store.describe()
        ))
    })?;
    let doc = &p.document;
    // A serial far ahead of the clock would stop every later publication (leaders never go
    // backwards): one stolen key must not get co-signers to sign such a freeze.
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if doc.serial > now_secs.saturating_add(COSIGN_SERIAL_AHEAD.as_secs()) {
        return Err(Failure::refused(anyhow::anyhow!(
            "the stored document serial {} is more than {}s ahead of this leader's clock ({now_secs}); not co-signing",
            doc.serial,
            COSIGN_SERIAL_AHEAD.as_secs()
        )));
    }
    if doc.not_after_time().is_ok_and(|t| now > t) {
        return Err(Failure::refused(anyhow::anyhow!(
            "the stored document serial {} expired at {}; not co-signing",
            doc.serial,
            doc.not_after
        )));
    }
    let mut warnings = Vec::new();
    let mine = document::build_policy(inv, &build_options(cfg, doc.serial, now)?, &mut warnings);
    if mine.digest() != doc.policy_digest {
        return Err(Failure::refused(anyhow::anyhow!(
            "the stored document serial {} has policy {}, but this leader's inventory gives {}: not co-signing (compare with `reyes leader --dry-run` and `reyes diff`)",
            doc.serial,
            doc.policy_digest,
            mine.digest()
        )));
    }
    let own = key.fingerprint();
    if p.signers.fingerprints.contains(&own) {
        tracing::info!(serial = doc.serial, "already co-signed by this leader");
        return Ok(LeaderOutcome::AlreadySigned { serial: doc.serial });
    }
    let issued_at = doc.issued_at_time().refused()?;
    let sig = key.sign_at(&stored.document, issued_at).usage()?;
    let combined = append_signature(&stored.signature, &sig).refused()?;
    store
        .publish_signature(stored, &combined)
        .map_err(store_failure)
        .map_err(|f| f.context(format!("co-signing in {}", store.describe())))?;
    tracing::info!(serial = doc.serial, signer = %own, signers = p.signers.fingerprints.len() + 1, "co-signed");
    Ok(LeaderOutcome::Cosigned { serial: doc.serial })
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
            Ok(LeaderOutcome::Fresh { serial })
            | Ok(LeaderOutcome::Cosigned { serial })
            | Ok(LeaderOutcome::AlreadySigned { serial }) => Some(LeaderRun::Fresh(*serial)),
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
