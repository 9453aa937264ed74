//! The follower: fetch, verify the bytes, parse, check environment / expiry / serial, compile
//! for this host, apply in one transaction, record. Every refusal leaves the live rules exactly
//! as they were. Every run also compares the kernel with what was applied ([`drift`]).

pub mod drift;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crate::backend::{Backend, BackendError};
use crate::capacity::Stats;
use crate::compile::{HostContext, Ruleset, Target};
use crate::config::{AutoOr, Backend as BackendChoice, Config, Limits};
use crate::conntrack;
use crate::document::{rfc3339, Document};
use crate::error::{Classify, CmdResult, Failure};
use crate::hostrecord::{self, HostRecord};
use crate::load::compile_for;
use crate::metrics::{self, AppliedFacts, FetchResult, FollowerMetrics, Report};
use crate::signing::{SigningError, TrustRoot, VerifiedSigner};
use crate::state::{Applied, StateDir, StoreVersion};
use crate::store::{self, FetchOutcome, Fetched, Store, StoreError};

/// Command-line overrides of the follower config.
#[derive(Debug, Clone, Default)]
pub struct FollowerOptions {
    /// Print what would be applied and a diff against the live rules; change nothing.
    pub dry_run: bool,
    /// Backend override.
    pub backend: Option<BackendChoice>,
    /// Force accept logging on.
    pub log_accept: bool,
    /// Force drop logging on.
    pub log_drop: bool,
    /// Apply even if the document names none of this host's addresses.
    pub allow_unknown_host: bool,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The disable file exists.
    Disabled,
    /// The store said nothing changed.
    NotModified,
    /// Same policy and host context as live: no kernel work (the record may have moved on to a
    /// re-signed serial).
    Unchanged {
        /// Serial now recorded.
        serial: u64,
    },
    /// Applied.
    Applied {
        /// Serial applied.
        serial: u64,
    },
    /// Dry run: printed only.
    DryRun,
}

pub use crate::error::Refusal;

fn refuse(reason: &'static str, message: String) -> Failure {
    Failure::refused(Refusal::new(reason, message))
}

/// A verified, parsed document and the bytes it came from.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The document.
    pub document: Document,
    /// Its bytes (as signed).
    pub bytes: Vec<u8>,
    /// The signature.
    pub signature: Vec<u8>,
    /// Who signed.
    pub signer: VerifiedSigner,
}

/// Load the configured keyring and allowlist.
pub fn trust_root(cfg: &Config) -> CmdResult<TrustRoot> {
    let keyring = cfg.signing.keyring.as_ref().ok_or_else(|| {
        Failure::usage(anyhow::anyhow!(
            "signing.keyring is not set: followers need the leader's certificate to verify documents"
        ))
    })?;
    TrustRoot::load(keyring, &cfg.signing.trusted_fingerprints)
        .and_then(|t| t.with_threshold(cfg.signing.threshold))
        .usage()
}

fn store_failure(e: StoreError) -> Failure {
    match e {
        StoreError::MissingSignature(_)
        | StoreError::TooLarge(_)
        | StoreError::Corrupt(_)
        | StoreError::Mismatched(_) => Failure::refused(e),
        StoreError::Unsupported(_) | StoreError::Config(_) => Failure::usage(e),
        StoreError::NotFound(_) | StoreError::Io(_) | StoreError::Conflict(_) => {
            Failure::runtime(e)
        }
    }
}

/// Verify signature bytes, then parse, then check environment and expiry (not serial).
pub fn verify_document(
    trust: &TrustRoot,
    bytes: &[u8],
    signature: &[u8],
    environment: &str,
    now: SystemTime,
    check_expiry: bool,
) -> CmdResult<Verified> {
    let signature_failure = |e: SigningError| match e {
        SigningError::Rejected(m) => refuse("signature", format!("signature refused: {m}")),
        other => Failure::usage(other),
    };
    let signer = trust
        .verify_at(bytes, signature, now)
        .map_err(signature_failure)?;
    let document = Document::parse(bytes).refused()?;
    if document.environment != environment {
        return Err(refuse(
            "environment",
            format!(
                "document is for environment {:?}, this follower is {:?} (check `environment` in the config and the store it reads)",
                document.environment, environment
            ),
        ));
    }
    let not_after = document
        .not_after_time()
        .map_err(|e| Failure::refused(anyhow::anyhow!(e)))?;
    if check_expiry && now > not_after {
        return Err(refuse(
            "expired",
            format!(
                "document serial {} expired at {} (now {}): is the leader running and publishing?",
                document.serial,
                document.not_after,
                rfc3339(now)
            ),
        ));
    }
    let issued_at = document.issued_at_time().refused()?;
    signer
        .check_issued_at(issued_at)
        .map_err(signature_failure)?;
    Ok(Verified {
        document,
        bytes: bytes.to_vec(),
        signature: signature.to_vec(),
        signer,
    })
}

/// What a conditional fetch found.
enum Found {
    /// The store says the object is the one applied last (no bytes were read).
    NotModified,
    /// New bytes, verified, with the store's version tag of the document.
    Verified(Box<Verified>, Option<String>),
}

/// Fetch and verify, fetching again if the pair did not verify but changed meanwhile (a torn
/// read between the leader's two writes): a torn pair is never applied. With
/// `if_changed_from`, the first fetch is conditional.
fn fetch_verified(
    store: &dyn Store,
    trust: &TrustRoot,
    cfg: &Config,
    now: SystemTime,
    if_changed_from: Option<&str>,
) -> CmdResult<Found> {
    let mut last: Option<Fetched> = None;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let cond = if attempt == 1 { if_changed_from } else { None };
        let fetched = match store.fetch(cond).map_err(store_failure)? {
            FetchOutcome::Fetched(f) => f,
            FetchOutcome::Unchanged if cond.is_some() => return Ok(Found::NotModified),
            FetchOutcome::Unchanged => {
                return Err(Failure::runtime(anyhow::anyhow!(
                    "store answered not-modified to an unconditional fetch"
                )))
            }
        };
        match verify_document(
            trust,
            &fetched.document,
            &fetched.signature,
            &cfg.environment,
            now,
            true,
        ) {
            Ok(v) => return Ok(Found::Verified(Box::new(v), fetched.version)),
            Err(f) => {
                let changed = last.as_ref().is_some_and(|l| *l != fetched) || last.is_none();
                if attempt >= 3 || !changed {
                    return Err(f.context(store.describe()));
                }
                tracing::warn!(attempt, error = %f, "document did not verify; fetching again in case it was being replaced");
                std::thread::sleep(Duration::from_millis(200 * attempt));
                last = Some(fetched);
            }
        }
    }
}

/// The version tag to fetch conditionally with: only when what is live is exactly what that
/// tag was fetched with, compiled for this same host context, backend and reyes version (so a
/// changed config or upgrade still recompiles).
fn conditional_version(
    state: &StateDir,
    applied: Option<&Applied>,
    store: &dyn Store,
    ctx: &HostContext,
    backend: &dyn Backend,
) -> Option<String> {
    let a = applied?;
    let sv = state.store_version()?;
    (sv.store == store.describe()
        && sv.document_digest == a.document_digest
        && a.context_digest == ctx.digest()
        && a.backend == backend.name()
        && a.reyes_version == env!("CARGO_PKG_VERSION"))
    .then_some(sv.version)
}

/// This host's addresses per config.
pub fn host_addresses(cfg: &Config) -> CmdResult<Vec<IpAddr>> {
    match &cfg.follower.addresses {
        AutoOr::List(l) => Ok(l.clone()),
        AutoOr::Auto => crate::net::local_addresses().runtime(),
    }
}

/// The host context a follower run uses.
pub fn host_context(cfg: &Config, opts: &FollowerOptions) -> CmdResult<HostContext> {
    let mut ctx = HostContext::from_config(&cfg.follower, Target::Host(host_addresses(cfg)?));
    ctx.log_accept |= opts.log_accept;
    ctx.log_drop |= opts.log_drop;
    ctx.allow_unknown_host |= opts.allow_unknown_host;
    Ok(ctx)
}

fn backend_failure(e: BackendError) -> Failure {
    match e {
        BackendError::Unsupported(_) => Failure::usage(e),
        other => Failure::runtime(other),
    }
}

/// The backend for a run: the flag's, else the config's, keeping the recorded backend where
/// the choice leaves room (see [`crate::live::select`]).
pub fn open_live_backend(
    cfg: &Config,
    choice: Option<BackendChoice>,
    state: &StateDir,
) -> CmdResult<Box<dyn Backend>> {
    let recorded = hostrecord::load(state).ok().flatten();
    crate::live::select(
        &cfg.follower,
        choice.unwrap_or(cfg.follower.backend),
        recorded.as_ref(),
    )
    .map_err(backend_failure)
}

/// Open the configured (or overridden) backend.
pub fn open_backend(cfg: &Config, choice: Option<BackendChoice>) -> CmdResult<Box<dyn Backend>> {
    crate::probe::select(
        choice.unwrap_or(cfg.follower.backend),
        cfg.follower.nft_transport,
        cfg.follower.iptables_variant,
    )
    .map_err(backend_failure)
}

pub use crate::digest::sha256;

/// What a follower run does around a kernel apply besides applying: the capacity guard
/// before it, revocation after it. Restores and rollbacks put back what was applied before
/// and use neither ([`Guards::default`]).
#[derive(Debug, Clone, Default)]
pub struct Guards {
    /// Refuse a ruleset over these (`follower.limits`).
    pub limits: Option<Limits>,
    /// After the apply, delete the tracked connections the new rules deny (`follower.revoke`).
    pub revoke: bool,
}

impl Guards {
    /// The guards a follower config asks for.
    pub fn from_config(cfg: &Config) -> Guards {
        Guards {
            limits: Some(cfg.follower.limits),
            revoke: cfg.follower.revoke,
        }
    }
}

/// Refuse a ruleset over the limits (exit 3), before anything is applied.
fn check_capacity(rs: &Ruleset, backend: &dyn Backend, limits: &Limits) -> CmdResult<()> {
    let bytes = backend.batch_bytes(rs).map_err(backend_failure)?;
    let stats = Stats::of(rs, bytes);
    stats
        .check(limits)
        .map_err(|e| refuse("limits", e.to_string()))
}

/// Delete the tracked connections `rs` denies. A failure is logged, not fatal: the rules
/// are applied, and new connections are judged by them.
fn revoke_connections(rs: &Ruleset, report: &mut Report) {
    let result = conntrack::kernel::Kernel::open().and_then(|mut k| conntrack::revoke(rs, &mut k));
    match result {
        Ok(r) => {
            report.revoked += r.revoked as u64;
            tracing::info!(
                tracked = r.tracked,
                labelled = r.labelled,
                revoked = r.revoked,
                already_gone = r.gone,
                seconds = r.seconds,
                "revocation: tracked connections judged against the new rules"
            );
        }
        Err(e) => {
            report.revoke_failed = true;
            tracing::warn!(error = %e, "revocation failed: open connections the new rules deny may live on until they end");
        }
    }
}

/// Apply a verified document through a backend and record it. Skips the kernel when the
/// policy and host context are what was applied and the kernel still holds exactly that (no
/// drift); after switching backend, removes the previous backend's objects.
pub fn apply_verified(
    v: &Verified,
    ctx: &HostContext,
    backend: &dyn Backend,
    state: &StateDir,
    now: SystemTime,
    report: &mut Report,
    guards: &Guards,
) -> CmdResult<Outcome> {
    report.backend = Some(backend.name());
    report.transport = Some(backend.transport());
    let applied = state.applied().runtime()?;
    let doc = &v.document;
    let rs = compile_for(doc, ctx)?;
    let context_digest = ctx.digest();
    let record = Applied {
        serial: doc.serial,
        environment: doc.environment.clone(),
        issued_at: doc.issued_at.clone(),
        not_after: doc.not_after.clone(),
        policy_digest: doc.policy_digest.clone(),
        document_digest: sha256(&v.bytes),
        context_digest: context_digest.clone(),
        backend: backend.name().to_string(),
        applied_at: rfc3339(now),
        signer: v.signer.fingerprint.clone(),
        reyes_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    if let Some(a) = &applied {
        let same = a.policy_digest == doc.policy_digest
            && a.context_digest == context_digest
            && a.backend == backend.name()
            && a.reyes_version == record.reyes_version;
        let drift = if same {
            drift::check(backend, state)
        } else {
            drift::Drift::Unknown
        };
        if same && drift == drift::Drift::Intact {
            if a.serial != doc.serial {
                state.save_last_good(&v.bytes, &v.signature).runtime()?;
                state
                    .record(&Applied {
                        applied_at: a.applied_at.clone(),
                        ..record
                    })
                    .runtime()?;
                tracing::info!(
                    serial = doc.serial,
                    "policy unchanged (re-signed); no kernel work"
                );
            } else {
                tracing::info!(serial = doc.serial, "nothing to change");
            }
            record_host(state, ctx, backend);
            return Ok(Outcome::Unchanged { serial: doc.serial });
        }
        if same {
            drift::note(drift, backend, doc.serial, report);
        }
    }
    // The last good document, for a backend that cannot read the live rules back in full.
    let previous = || {
        let (bytes, _) = state.last_good().ok().flatten()?;
        compile_for(&Document::parse(&bytes).ok()?, ctx).ok()
    };
    if let Some(limits) = &guards.limits {
        check_capacity(&rs, backend, limits)?;
    }
    let started = Instant::now();
    backend
        .apply_replacing(&rs, &previous)
        .map_err(backend_failure)?;
    report.apply_seconds = Some(started.elapsed().as_secs_f64());
    drift::record(backend, state);
    crate::live::remove_previous(backend, applied.as_ref().map(|a| a.backend.as_str()));
    if guards.revoke {
        revoke_connections(&rs, report);
    }
    state.save_last_good(&v.bytes, &v.signature).runtime()?;
    state.record(&record).runtime()?;
    record_host(state, ctx, backend);
    tracing::info!(
        serial = doc.serial,
        backend = backend.name(),
        sets = rs.sets.len(),
        elements = rs.element_count(),
        rules = rs.rule_count(),
        "applied"
    );
    Ok(Outcome::Applied { serial: doc.serial })
}

/// Keep the host context beside last-good for `reyes restore` (a failure costs only the
/// boot-time fallback, so it is a warning).
fn record_host(state: &StateDir, ctx: &HostContext, backend: &dyn Backend) {
    let r = HostRecord {
        context: ctx.clone(),
        backend: backend.name().to_string(),
        transport: backend.transport().to_string(),
    };
    if let Err(e) = hostrecord::save(state, &r) {
        tracing::warn!(error = %e, "cannot record the host context; `reyes restore` at boot falls back to discovered addresses");
    }
}

/// Refuse a serial that does not move forward.
pub fn check_serial(v: &Verified, applied: Option<&Applied>) -> CmdResult<()> {
    let Some(a) = applied else { return Ok(()) };
    let doc = &v.document;
    if doc.serial < a.serial {
        return Err(refuse(
            "serial",
            format!(
                "document serial {} is older than the applied serial {} (replayed or rolled back); refusing",
                doc.serial, a.serial
            ),
        ));
    }
    if doc.serial == a.serial && sha256(&v.bytes) != a.document_digest {
        return Err(refuse(
            "serial",
            format!(
                "document serial {} was already applied with different contents; a serial must never be reused",
                doc.serial
            ),
        ));
    }
    Ok(())
}

/// One follower run.
pub fn run_once(cfg: &Config, opts: &FollowerOptions, now: SystemTime) -> CmdResult<Outcome> {
    run_reported(cfg, opts, now, &mut Report::default())
}

/// One follower run, noting in `report` what it found on the way.
pub fn run_reported(
    cfg: &Config,
    opts: &FollowerOptions,
    now: SystemTime,
    report: &mut Report,
) -> CmdResult<Outcome> {
    if cfg.follower.disable_file.exists() {
        tracing::warn!(file = %cfg.follower.disable_file.display(), "disable file present: changing nothing");
        return Ok(Outcome::Disabled);
    }
    let trust = trust_root(cfg)?;
    let store = store::open(&cfg.store).map_err(store_failure)?;
    let state = StateDir::open(&cfg.follower.state_dir).runtime()?;
    let _lock = state.lock(cfg.follower.lock_timeout).runtime()?;
    let backend = open_live_backend(cfg, opts.backend, &state)?;
    let ctx = host_context(cfg, opts)?;

    let applied = state.applied().runtime()?;
    let cond = if opts.dry_run {
        None
    } else {
        conditional_version(
            &state,
            applied.as_ref(),
            store.as_ref(),
            &ctx,
            backend.as_ref(),
        )
    };
    report.backend = Some(backend.name());
    report.transport = Some(backend.transport());
    let found = fetch_verified(store.as_ref(), &trust, cfg, now, cond.as_deref());
    report.fetch = Some(match &found {
        Ok(Found::Verified(..)) => FetchResult::Changed,
        Ok(Found::NotModified) => FetchResult::Unchanged,
        Err(_) => FetchResult::Error,
    });
    let (v, version) = match found? {
        Found::Verified(v, version) => (*v, version),
        Found::NotModified => {
            // Nothing read, parsed, verified or applied. Still refuse to stay quiet about an
            // expired document: the leader has not published for longer than `validity`.
            let Some(a) = applied.as_ref() else {
                return Err(Failure::runtime(anyhow::anyhow!(
                    "store answered not-modified, but nothing is applied"
                )));
            };
            if let Ok(t) = crate::document::parse_time(&a.not_after) {
                if now > t {
                    return Err(refuse(
                        "expired",
                        format!(
                            "{} is not modified, and the applied document serial {} expired at {}: is the leader running and publishing?",
                            store.describe(),
                            a.serial,
                            a.not_after
                        ),
                    ));
                }
            }
            tracing::info!(serial = a.serial, store = %store.describe(), "not modified");
            let outcome =
                drift::heal_not_modified(cfg, &trust, &ctx, backend.as_ref(), &state, now, report)?;
            if cfg.follower.metrics_file.is_some() {
                report.counters = backend.counters().ok();
            }
            return Ok(outcome);
        }
    };
    check_serial(&v, applied.as_ref())?;

    if opts.dry_run {
        let rs = compile_for(&v.document, &ctx)?;
        let text = backend.render(&rs).map_err(backend_failure)?;
        print!("{text}");
        match backend.diff(&rs) {
            Ok(lines) => {
                println!("\n# diff against the live ruleset (- live, + would apply):");
                for line in lines {
                    println!("{line}");
                }
            }
            Err(e) => println!("\n# the live ruleset could not be read ({e}); no diff"),
        }
        return Ok(Outcome::DryRun);
    }
    let guards = Guards::from_config(cfg);
    let outcome = apply_verified(&v, &ctx, backend.as_ref(), &state, now, report, &guards)?;
    let sv = version.map(|version| StoreVersion {
        store: store.describe(),
        version,
        document_digest: sha256(&v.bytes),
    });
    if let Err(e) = state.record_store_version(sv.as_ref()) {
        tracing::warn!(error = %e, "cannot remember the store version; the next run fetches unconditionally");
    }
    if cfg.follower.metrics_file.is_some() {
        report.counters = backend.counters().ok();
    }
    Ok(outcome)
}

/// One run with metrics: the run, then (when `follower.metrics_file` is set) the metrics file
/// rewritten with what it found.
pub fn cycle(
    cfg: &Config,
    opts: &FollowerOptions,
    metrics: &mut FollowerMetrics,
) -> CmdResult<Outcome> {
    let mut report = Report::default();
    let result = run_reported(cfg, opts, SystemTime::now(), &mut report);
    if cfg.follower.receipts && !opts.dry_run {
        write_receipt(cfg, &result, &mut report);
    }
    if let Some(path) = &cfg.follower.metrics_file {
        metrics.environment = cfg.environment.clone();
        let applied = StateDir::open(&cfg.follower.state_dir)
            .ok()
            .and_then(|s| s.applied().ok().flatten())
            .map(|a| AppliedFacts {
                serial: a.serial,
                issued_at: crate::document::parse_time(&a.issued_at).map_or(0.0, metrics::unix),
                not_after: crate::document::parse_time(&a.not_after).map_or(0.0, metrics::unix),
            });
        let r = result.as_ref().map(|_| ());
        metrics.observe(&report, r, applied, SystemTime::now());
        if let Err(e) = metrics::write(path, &metrics.render()) {
            tracing::warn!(error = %e, "metrics not written");
        }
    }
    result
}

/// Write the run's receipt to the store; a failure is logged and counted, never fatal.
fn write_receipt(cfg: &Config, result: &CmdResult<Outcome>, report: &mut Report) {
    use crate::receipt::{Run, RunOutcome};
    let outcome = match result {
        Ok(Outcome::Applied { .. }) => RunOutcome::Applied,
        Ok(Outcome::Unchanged { .. }) => RunOutcome::Unchanged,
        Ok(Outcome::NotModified) => RunOutcome::NotModified,
        Ok(Outcome::Disabled) => RunOutcome::Disabled,
        Ok(Outcome::DryRun) => return,
        Err(f) => RunOutcome::of_failure(f),
    };
    let run = Run {
        outcome,
        failure: result.as_ref().err(),
    };
    match crate::receipt::write(cfg, run, SystemTime::now()) {
        Ok(bytes) => tracing::debug!(bytes, "receipt written"),
        Err(e) => {
            report.receipt_failures += 1;
            tracing::warn!(error = %e, "receipt not written (enforcement is not affected)");
        }
    }
}

/// Run as a service, once per `interval` (see [`crate::daemon`]); failures are logged and
/// retried with backoff. Returns on SIGTERM/SIGINT.
pub fn run_interval(
    path: &Path,
    cfg: Config,
    opts: &FollowerOptions,
    interval: Duration,
) -> CmdResult<()> {
    let mut metrics = FollowerMetrics::default();
    crate::daemon::run(path, cfg, interval, |cfg| {
        match cycle(cfg, opts, &mut metrics) {
            Ok(o) => {
                tracing::debug!(outcome = ?o, "follower run done");
                true
            }
            Err(f) => {
                tracing::error!(exit = f.kind.code(), "{f}");
                false
            }
        }
    })
}
