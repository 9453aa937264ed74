//! The smaller commands: render, verify, sign, keygen, flush, restore, status.

mod status;

pub use status::{status, StatusFormat};

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::compile::{HostContext, Target};
use crate::config::{Backend as BackendChoice, Config, Enforce};
use crate::document::Document;
use crate::error::{Classify, CmdResult, Failure};
use crate::follower::{self, FollowerOptions, Outcome};
use crate::fsutil::write_atomic;
use crate::hostrecord::{self, HostRecord};
use crate::live::Kind;
use crate::load::{compile_for, load_document, read_document, read_signature};
use crate::signing::{self, read_passphrase, SigningError, SigningKey};
use crate::state::StateDir;

/// `render` options.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// The document.
    pub document: PathBuf,
    /// Verify this signature first.
    pub signature: Option<PathBuf>,
    /// Backend whose text to print.
    pub backend: Option<BackendChoice>,
    /// Host addresses (default: this host's, per config).
    pub hosts: Vec<IpAddr>,
    /// Every group as destinations.
    pub all_groups: bool,
    /// Scope override.
    pub enforce: Option<Enforce>,
    /// Mode override.
    pub mode: Option<crate::config::Mode>,
    /// `gateway_cidrs` override (when not empty).
    pub gateway_cidrs: Vec<crate::net::Cidr>,
    /// Enforce egress rules.
    pub egress: bool,
    /// Logging overrides.
    pub log_accept: bool,
    /// Logging overrides.
    pub log_drop: bool,
    /// Render even if no group holds the host's addresses.
    pub allow_unknown_host: bool,
    /// Print the counts of sets, elements, rules and batch bytes instead of the text.
    pub stats: bool,
}

/// `reyes render`.
pub fn render(cfg: Option<&Config>, o: &RenderOptions) -> CmdResult<String> {
    let doc = match &o.signature {
        Some(sig) => {
            let cfg = cfg.ok_or_else(|| {
                Failure::usage(anyhow::anyhow!(
                    "--signature needs a config with signing.keyring"
                ))
            })?;
            let trust = follower::trust_root(cfg)?;
            let bytes = read_document(&o.document)?;
            let sig = read_signature(sig)?;
            follower::verify_document(
                &trust,
                &bytes,
                &sig,
                &cfg.environment,
                SystemTime::now(),
                false,
            )?
            .document
        }
        None => load_document(&o.document)?,
    };
    let fcfg = cfg.map(|c| c.follower.clone()).unwrap_or_default();
    let target = if o.all_groups {
        Target::AllGroups
    } else if !o.hosts.is_empty() {
        Target::Host(o.hosts.clone())
    } else {
        match cfg {
            Some(c) => Target::Host(follower::host_addresses(c)?),
            None => Target::Host(crate::net::local_addresses().runtime()?),
        }
    };
    let mut ctx = HostContext::from_config(&fcfg, target);
    if let Some(e) = o.enforce {
        ctx.enforce = e;
        if e == Enforce::Cidr && ctx.managed_cidrs.is_empty() {
            return Err(Failure::usage(anyhow::anyhow!(
                "--enforce cidr needs follower.managed_cidrs in the config"
            )));
        }
    }
    if let Some(m) = o.mode {
        ctx.mode = m;
    }
    if !o.gateway_cidrs.is_empty() {
        if ctx.mode != crate::config::Mode::Gateway {
            return Err(Failure::usage(anyhow::anyhow!(
                "--gateway-cidr needs gateway mode (--mode gateway or follower.mode: gateway)"
            )));
        }
        ctx.gateway_cidrs.clone_from(&o.gateway_cidrs);
    }
    if ctx.mode == crate::config::Mode::Host {
        ctx.gateway_cidrs.clear();
    }
    ctx.egress |= o.egress;
    ctx.log_accept |= o.log_accept;
    ctx.log_drop |= o.log_drop;
    ctx.allow_unknown_host |= o.allow_unknown_host;
    let rs = crate::load::compile_for(&doc, &ctx)?;
    let choice = o.backend.unwrap_or(match fcfg.backend {
        BackendChoice::Auto => BackendChoice::Nft,
        b => b,
    });
    let backend = crate::probe::select(
        choice,
        crate::config::NftTransport::Cli,
        fcfg.iptables_variant,
    )
    .usage()?;
    if o.stats {
        let bytes = backend.batch_bytes(&rs).runtime()?;
        return Ok(crate::capacity::Stats::of(&rs, bytes).to_string());
    }
    backend.render(&rs).runtime()
}

/// `reyes verify`: prints the facts; refuses like a follower would (except the serial).
pub fn verify(cfg: &Config, document: &Path, signature: &Path) -> CmdResult<String> {
    let trust = follower::trust_root(cfg)?;
    let bytes = read_document(document)?;
    let sig = read_signature(signature)?;
    let v = follower::verify_document(
        &trust,
        &bytes,
        &sig,
        &cfg.environment,
        SystemTime::now(),
        true,
    )
    .map_err(|f| f.context(document.display().to_string()))?;
    let d = &v.document;
    Ok(format!(
        "OK {}\nserial: {}\nenvironment: {}\nissued_at: {}\nnot_after: {}\nsigner: {}\npolicy_digest: {}\ngroups: {}\n",
        document.display(),
        d.serial,
        d.environment,
        d.issued_at,
        d.not_after,
        v.signer.fingerprints.join(", "),
        d.policy_digest,
        d.policy.groups.len()
    ))
}

/// `reyes sign`: a detached signature with the configured key, made at the document's
/// `issued_at` when it is a document (followers refuse signatures made far from it), or
/// now. With `append`, the signature is added to the existing signature file (k-of-n
/// co-signing) instead of replacing it.
pub fn sign(
    cfg: &Config,
    document: &Path,
    output: Option<&Path>,
    append: bool,
) -> CmdResult<PathBuf> {
    let key = SigningKey::from_config(&cfg.signing).usage()?;
    let bytes = std::fs::read(document)
        .usage()
        .map_err(|f| f.context(format!("cannot read {}", document.display())))?;
    let at = match Document::parse(&bytes).ok().map(|d| d.issued_at_time()) {
        Some(Ok(t)) => t,
        _ => SystemTime::now(),
    };
    let mut sig = match key.sign_at(&bytes, at) {
        Ok(s) => s,
        // A key newer than the document (or retired since): sign now; followers will judge.
        Err(e @ SigningError::Key(_)) => {
            tracing::warn!(error = %e, "cannot sign at the document's issued_at; signing with the current time");
            key.sign(&bytes).usage()?
        }
        Err(e) => return Err(Failure::usage(e)),
    };
    let out = output.map(Path::to_path_buf).unwrap_or_else(|| {
        let mut p = document.as_os_str().to_owned();
        p.push(".sig");
        PathBuf::from(p)
    });
    refresh_gzip_sibling(document, &bytes)?;
    if append {
        let existing = read_signature(&out)
            .map_err(|f| f.context(format!("--append: cannot read {}", out.display())))?;
        sig = signing::append_signature(&existing, &sig)
            .usage()
            .map_err(|f| f.context(format!("--append to {}", out.display())))?;
    }
    write_atomic(&out, &sig)
        .runtime()
        .map_err(|f| f.context(format!("cannot write {}", out.display())))?;
    Ok(out)
}

/// A store directory holds `rules.json.gz` beside `rules.json`, and readers take the .gz when
/// it is as new as the plain file. File times are coarse (a few ms), so a hand edit made just
/// after a publish can look no newer than the old .gz: signing the edit must also rewrite the
/// .gz, or followers read the old document against the new signature. Written before the
/// signature, so a reader never sees the new signature beside an old .gz.
fn refresh_gzip_sibling(document: &Path, bytes: &[u8]) -> CmdResult<()> {
    let mut gz = document.as_os_str().to_owned();
    gz.push(".gz");
    let gz = PathBuf::from(gz);
    if !gz.exists() {
        return Ok(());
    }
    write_atomic(&gz, &crate::fsutil::gzip(bytes))
        .runtime()
        .map_err(|f| f.context(format!("cannot rewrite {} to match", gz.display())))?;
    tracing::info!(path = %gz.display(), "rewrote the gzipped copy to match the signed document");
    Ok(())
}

/// `reyes keygen`: writes NAME.secret.asc (0600) and NAME.cert.asc, returns the fingerprint.
pub fn keygen(name: &str, dir: &Path, passphrase_file: Option<&Path>) -> CmdResult<String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(Failure::usage(anyhow::anyhow!(
            "--name {name:?}: use letters, digits, '-', '_' and '.'"
        )));
    }
    let pass = passphrase_file.map(read_passphrase).transpose().usage()?;
    let (secret, public, fp) = signing::keygen(name, pass).usage()?;
    std::fs::create_dir_all(dir).runtime()?;
    let sp = dir.join(format!("{name}.secret.asc"));
    let cp = dir.join(format!("{name}.cert.asc"));
    if sp.exists() {
        return Err(Failure::usage(anyhow::anyhow!(
            "{} exists; refusing to overwrite a key",
            sp.display()
        )));
    }
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&sp)
            .runtime()?;
        f.write_all(&secret).runtime()?;
        f.sync_all().runtime()?;
    }
    write_atomic(&cp, &public).runtime()?;
    Ok(fp)
}

/// `reyes flush`: removes every reyes object of both backends, whatever the config says (an
/// emergency must not depend on which backend the config names), or of the one `backend`
/// names; returns a line saying what was removed. Takes the follower's lock first (the
/// configured state directory, or the default one when it exists), so it never interleaves
/// with an apply.
pub fn flush(cfg: Option<&Config>, backend: Option<BackendChoice>) -> CmdResult<String> {
    let fcfg = cfg.map(|c| c.follower.clone()).unwrap_or_default();
    let _lock = if cfg.is_some() || fcfg.state_dir.is_dir() {
        let state = StateDir::open(&fcfg.state_dir).runtime()?;
        Some(state.lock(fcfg.lock_timeout).runtime()?)
    } else {
        None
    };
    let kinds: &[Kind] = match backend {
        Some(BackendChoice::Nft) => &[Kind::Nft],
        Some(BackendChoice::Iptables) => &[Kind::Iptables],
        Some(BackendChoice::Auto) | None => &Kind::BOTH,
    };
    let removed = crate::live::remove(kinds).map_err(backend_failure)?;
    Ok(if removed.is_empty() {
        "removed: nothing (no reyes objects were live)\n".to_string()
    } else {
        format!("removed: {}\n", removed.join("; "))
    })
}

/// A backend that cannot work on this host (missing tools, mixed iptables variants) is a
/// configuration error; anything else a runtime failure.
fn backend_failure(e: crate::backend::BackendError) -> Failure {
    match e {
        crate::backend::BackendError::Unsupported(_) => Failure::usage(e),
        other => Failure::runtime(other),
    }
}

/// `reyes restore`: re-apply last-good. The signature and environment are checked again; an
/// expired document is still applied (with a warning), because at boot the last verified
/// policy is better than none, and the follower replaces it as soon as it can fetch.
///
/// It never refuses for an unknown host: at boot (before `network-pre.target`) the interfaces
/// have no addresses yet, so when discovery finds none, or finds addresses the document does
/// not name, the host context recorded with the last apply is used (addresses and options);
/// without a record, the table is applied for no known address (in-scope traffic dropped,
/// failsafe entries kept) rather than none. The backend and transport are always the
/// recorded ones, unless `--backend` names one.
pub fn restore(cfg: &Config, opts: &FollowerOptions) -> CmdResult<Outcome> {
    let state = StateDir::open(&cfg.follower.state_dir).runtime()?;
    let _lock = state.lock(cfg.follower.lock_timeout).runtime()?;
    let (bytes, sig) = state.last_good().runtime()?.ok_or_else(|| {
        Failure::runtime(anyhow::anyhow!(
            "no last-good document in {}",
            state.path().display()
        ))
    })?;
    let trust = follower::trust_root(cfg)?;
    let now = SystemTime::now();
    let v = follower::verify_document(&trust, &bytes, &sig, &cfg.environment, now, false)
        .map_err(|f| f.context("last-good document"))?;
    if v.document.not_after_time().is_ok_and(|t| t < now) {
        tracing::warn!(serial = v.document.serial, not_after = %v.document.not_after, "restoring an expired document (boot-time restore); the follower will replace it");
    }
    let recorded = hostrecord::load(&state).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "host record unusable; restoring with discovered addresses");
        None
    });
    let (ctx, _) = restore_context(cfg, opts, &v.document, recorded.as_ref());
    // The backend (and transport) of the last apply: state, not config.
    let from_record = recorded
        .as_ref()
        .filter(|_| opts.backend.is_none())
        .and_then(|r| crate::live::open_recorded(&cfg.follower, r));
    let backend = match from_record {
        Some(b) => b,
        None => follower::open_backend(cfg, opts.backend)?,
    };
    follower::apply_verified(
        &v,
        &ctx,
        backend.as_ref(),
        &state,
        now,
        &mut crate::metrics::Report::default(),
        &follower::Guards::default(),
    )
}

/// The host context to restore with, and whether it is the recorded one.
fn restore_context(
    cfg: &Config,
    opts: &FollowerOptions,
    doc: &Document,
    recorded: Option<&HostRecord>,
) -> (HostContext, bool) {
    let discovered = match follower::host_context(cfg, opts) {
        Ok(ctx) => Some(ctx),
        Err(f) => {
            tracing::warn!(error = %f, "cannot discover this host's addresses");
            None
        }
    };
    let found_any = discovered
        .as_ref()
        .is_some_and(|c| !matches!(&c.target, Target::Host(a) if a.is_empty()));
    if let Some(ctx) = discovered.as_ref().filter(|_| found_any) {
        if compile_for(doc, ctx).is_ok() {
            return (ctx.clone(), false);
        }
    }
    if let Some(r) = recorded {
        let mut ctx = r.context.clone();
        ctx.allow_unknown_host |= opts.allow_unknown_host;
        tracing::warn!(
            discovered = ?discovered.as_ref().map(|c| &c.target),
            recorded = ?ctx.target,
            "this host's discovered addresses are not in the document (or there are none yet, as at boot): restoring with the host context recorded at the last apply"
        );
        return (ctx, true);
    }
    let mut ctx = discovered
        .unwrap_or_else(|| HostContext::from_config(&cfg.follower, Target::Host(Vec::new())));
    if compile_for(doc, &ctx).is_err() {
        tracing::warn!(target = ?ctx.target, "no host record and the document names none of the discovered addresses: restoring the table for no known address (in-scope traffic is dropped until the follower runs)");
        ctx.allow_unknown_host = true;
    }
    (ctx, false)
}
