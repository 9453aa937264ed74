//! The smaller commands: render, verify, sign, keygen, flush, restore, status.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::compile::{HostContext, Target};
use crate::config::{Backend as BackendChoice, Config, Enforce};
use crate::document::rfc3339;
use crate::error::{Classify, CmdResult, Failure};
use crate::follower::{self, FollowerOptions, Outcome};
use crate::fsutil::write_atomic;
use crate::load::{load_document, read_document, read_signature};
use crate::signing::{self, read_passphrase, SigningKey};
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
    /// Logging overrides.
    pub log_accept: bool,
    /// Logging overrides.
    pub log_drop: bool,
    /// Render even if no group holds the host's addresses.
    pub allow_unknown_host: bool,
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
        v.signer.fingerprint,
        d.policy_digest,
        d.policy.groups.len()
    ))
}

/// `reyes sign`.
pub fn sign(cfg: &Config, document: &Path, output: Option<&Path>) -> CmdResult<PathBuf> {
    let key = SigningKey::from_config(&cfg.signing).usage()?;
    let bytes = std::fs::read(document)
        .usage()
        .map_err(|f| f.context(format!("cannot read {}", document.display())))?;
    let sig = key.sign(&bytes).usage()?;
    let out = output.map(Path::to_path_buf).unwrap_or_else(|| {
        let mut p = document.as_os_str().to_owned();
        p.push(".sig");
        PathBuf::from(p)
    });
    write_atomic(&out, &sig)
        .runtime()
        .map_err(|f| f.context(format!("cannot write {}", out.display())))?;
    Ok(out)
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

/// `reyes flush`.
pub fn flush(cfg: Option<&Config>, backend: Option<BackendChoice>) -> CmdResult<()> {
    let choice = backend
        .or(cfg.map(|c| c.follower.backend))
        .unwrap_or_default();
    let transport = cfg.map(|c| c.follower.nft_transport).unwrap_or_default();
    let variant = cfg.map(|c| c.follower.iptables_variant).unwrap_or_default();
    let b = crate::probe::select(choice, transport, variant).usage()?;
    b.flush().map_err(backend_failure)
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
pub fn restore(cfg: &Config, opts: &FollowerOptions) -> CmdResult<Outcome> {
    let state = StateDir::open(&cfg.follower.state_dir).runtime()?;
    let _lock = state.lock().runtime()?;
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
    let ctx = follower::host_context(cfg, opts)?;
    let backend = follower::open_backend(cfg, opts.backend)?;
    follower::apply_verified(&v, &ctx, backend.as_ref(), &state, now)
}

/// `reyes status`: what is live. Fails (exit 1) when reyes' rules are not live.
pub fn status(cfg: &Config, backend: Option<BackendChoice>) -> CmdResult<String> {
    let state = StateDir::open(&cfg.follower.state_dir).runtime()?;
    let applied = state.applied().runtime()?;
    let b = follower::open_backend(cfg, backend)?;
    let present = b.present().map_err(backend_failure)?;
    let mut out = String::new();
    let now = SystemTime::now();
    match &applied {
        Some(a) => {
            let age = crate::document::parse_time(&a.issued_at)
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .map(|d| {
                    humantime::format_duration(std::time::Duration::from_secs(d.as_secs()))
                        .to_string()
                })
                .unwrap_or_else(|| "?".into());
            let expired = crate::document::parse_time(&a.not_after).is_ok_and(|t| t < now);
            out.push_str(&format!(
                "backend: {}\nlive: {}\nserial: {}\nenvironment: {}\nissued_at: {} (age {age})\nnot_after: {}{}\npolicy_digest: {}\napplied_at: {}\nsigner: {}\n",
                a.backend,
                if present { "yes" } else { "NO (table missing: run `reyes restore`)" },
                a.serial,
                a.environment,
                a.issued_at,
                a.not_after,
                if expired { " (EXPIRED: is the leader publishing?)" } else { "" },
                a.policy_digest,
                a.applied_at,
                a.signer,
            ));
        }
        None => out.push_str(&format!(
            "nothing applied yet (state {})\nlive: {}\n",
            state.path().display(),
            if present { "yes" } else { "no" }
        )),
    }
    if present {
        let c = b.counters().runtime()?;
        let fmt = |c: Option<(u64, u64)>| {
            c.map_or("-".to_string(), |(p, by)| {
                format!("{p} packets, {by} bytes")
            })
        };
        out.push_str(&format!(
            "accepted: {}\ndropped: {}\n",
            fmt(c.accepted),
            fmt(c.dropped)
        ));
    }
    out.push_str(&format!("checked_at: {}\n", rfc3339(now)));
    if !present {
        return Err(Failure::runtime(anyhow::anyhow!(
            "{out}reyes rules are not live"
        )));
    }
    Ok(out)
}
