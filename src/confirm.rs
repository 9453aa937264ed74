//! Commit-confirm, as iptables-apply and network gear do it: `reyes follower --once --confirm
//! 60s` applies, and the previous ruleset is put back after 60 s unless `reyes confirm` runs
//! first.
//!
//! Before anything is applied, the previous last-good document and host record are copied to
//! `STATE/confirm/previous/`, `STATE/confirm/pending.json` names the change, and a detached
//! `reyes confirm-revert` process is started in a session of its own (no terminal, so a
//! dropped ssh connection or Ctrl-C does not reach it; it also ignores SIGTERM, SIGINT and
//! SIGHUP). It waits for the deadline; `reyes confirm` removes `pending.json` and it exits
//! without doing anything. At the deadline it takes the state lock, puts the previous document
//! back with the previous host context (or, when nothing was applied before, flushes reyes'
//! objects) and forgets the store's version tag. The applying process can be killed at any
//! point: the revert does not depend on it. Its log is `STATE/confirm/revert.log`.
//!
//! A follower service still running with the new config would apply the change again at its
//! next run: stop it (or create the disable file) while trying out a change.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::{Backend as BackendChoice, Config};
use crate::daemon::Signals;
use crate::document::rfc3339;
use crate::error::{Classify, CmdResult, ExitKind, Failure};
use crate::follower::{self, FollowerOptions, Outcome};
use crate::hostrecord::{self, HostRecord};
use crate::metrics::{unix, FollowerMetrics, Report};
use crate::state::StateDir;
use crate::store::directory::{read_limited, write_atomic, DOCUMENT, SIGNATURE};

const DIR: &str = "confirm";
const PENDING: &str = "pending.json";
const PREVIOUS: &str = "previous";
const LOG: &str = "revert.log";
const OUTCOME: &str = "outcome";

/// A change waiting for `reyes confirm`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pending {
    /// Names this change (the revert process is started with it).
    token: String,
    /// Unix seconds after which the previous ruleset is put back.
    deadline: f64,
    /// Whether a previous document was kept (otherwise the revert flushes).
    previous: bool,
    /// `--backend` of the apply, if given.
    backend: Option<String>,
}

fn dir(state: &StateDir) -> PathBuf {
    state.path().join(DIR)
}

fn read_pending(state: &StateDir) -> CmdResult<Option<Pending>> {
    let p = dir(state).join(PENDING);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .runtime()
            .map_err(|f| f.context(format!("{} is corrupt", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Failure::runtime(e).context(format!("cannot read {}", p.display()))),
    }
}

fn write_file(p: &Path, bytes: &[u8]) -> CmdResult<()> {
    write_atomic(p, bytes)
        .runtime()
        .map_err(|f| f.context(format!("cannot write {}", p.display())))
}

fn remove(p: &Path) -> CmdResult<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Failure::runtime(e).context(format!("cannot remove {}", p.display())))
        }
        _ => Ok(()),
    }
}

/// Copy last-good and the host record to `confirm/previous/`; whether there was a last-good.
fn keep_previous(state: &StateDir) -> CmdResult<bool> {
    let prev = dir(state).join(PREVIOUS);
    let _ = std::fs::remove_dir_all(&prev);
    let Some((doc, sig)) = state.last_good().runtime()? else {
        return Ok(false);
    };
    std::fs::create_dir_all(&prev)
        .runtime()
        .map_err(|f| f.context(format!("cannot create {}", prev.display())))?;
    write_file(&prev.join(DOCUMENT), &doc)?;
    write_file(&prev.join(SIGNATURE), &sig)?;
    if let Ok(Some(r)) = hostrecord::load(state) {
        let bytes = serde_json::to_vec_pretty(&r).runtime()?;
        write_file(&prev.join(hostrecord::FILE), &bytes)?;
    }
    Ok(true)
}

fn backend_name(b: BackendChoice) -> &'static str {
    match b {
        BackendChoice::Auto => "auto",
        BackendChoice::Nft => "nft",
        BackendChoice::Iptables => "iptables",
    }
}

fn backend_choice(s: &str) -> Option<BackendChoice> {
    match s {
        "nft" => Some(BackendChoice::Nft),
        "iptables" => Some(BackendChoice::Iptables),
        "auto" => Some(BackendChoice::Auto),
        _ => None,
    }
}

/// `follower --once --confirm TIMEOUT`: arm the revert, then apply. Nothing to confirm (an
/// unchanged document, a refusal) disarms it at once.
pub fn apply_with_confirm(
    config_path: &Path,
    cfg: &Config,
    opts: &FollowerOptions,
    timeout: Duration,
    now: SystemTime,
) -> CmdResult<Outcome> {
    let state = StateDir::open(&cfg.follower.state_dir).runtime()?;
    let token = format!(
        "{}-{}",
        std::process::id(),
        now.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let deadline = unix(now) + timeout.as_secs_f64();
    {
        let _lock = state.lock(cfg.follower.lock_timeout).runtime()?;
        if let Some(p) = read_pending(&state)? {
            return Err(Failure::runtime(anyhow::anyhow!(
                "a change is already waiting for confirmation (until {}): run `reyes confirm` or let it be reverted first",
                Duration::try_from_secs_f64(p.deadline)
                    .ok()
                    .and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d))
                    .map_or_else(|| format!("{} s after 1970", p.deadline), rfc3339)
            )));
        }
        std::fs::create_dir_all(dir(&state)).runtime()?;
        let pending = Pending {
            token: token.clone(),
            deadline,
            previous: keep_previous(&state)?,
            backend: opts.backend.map(|b| backend_name(b).to_string()),
        };
        write_file(
            &dir(&state).join(PENDING),
            &serde_json::to_vec_pretty(&pending).runtime()?,
        )?;
        if let Err(f) = spawn_reverter(config_path, &state, &token) {
            let _ = remove(&dir(&state).join(PENDING));
            return Err(f);
        }
    }
    let result = follower::cycle(cfg, opts, &mut FollowerMetrics::default());
    let keep_armed = match &result {
        Ok(Outcome::Applied { .. }) => true,
        Ok(_) => false,
        // The kernel may or may not have taken it: reverting to the previous is harmless.
        Err(f) => f.kind == ExitKind::Runtime,
    };
    if keep_armed {
        tracing::warn!(
            timeout = %humantime::format_duration(timeout),
            "run `reyes confirm` to keep this change; otherwise the previous ruleset is put back"
        );
    } else {
        let _lock = state.lock(cfg.follower.lock_timeout).runtime()?;
        if read_pending(&state)?.is_some_and(|p| p.token == token) {
            remove(&dir(&state).join(PENDING))?;
        }
        tracing::info!("nothing was changed: no confirmation needed, the revert is cancelled");
    }
    result
}

/// Start the detached `reyes confirm-revert`.
fn spawn_reverter(config_path: &Path, state: &StateDir, token: &str) -> CmdResult<()> {
    let exe = std::env::current_exe()
        .runtime()
        .map_err(|f| f.context("cannot find the reyes binary to start the revert"))?;
    let log_path = dir(state).join(LOG);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .runtime()
        .map_err(|f| f.context(format!("cannot open {}", log_path.display())))?;
    let child = Command::new(exe)
        .arg("--config")
        .arg(config_path)
        .args(["confirm-revert", "--token", token])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .runtime()
        .map_err(|f| f.context("cannot start the revert process"))?;
    tracing::info!(pid = child.id(), log = %log_path.display(), "revert armed");
    Ok(())
}

/// `reyes confirm`: keep the pending change.
pub fn confirm(cfg: &Config) -> CmdResult<String> {
    let state = StateDir::open(&cfg.follower.state_dir).runtime()?;
    let _lock = state.lock(cfg.follower.lock_timeout).runtime()?;
    match read_pending(&state)? {
        Some(_) => {
            remove(&dir(&state).join(PENDING))?;
            let _ = std::fs::remove_dir_all(dir(&state).join(PREVIOUS));
            let applied = state.applied().runtime()?;
            let serial = applied.map_or("-".to_string(), |a| a.serial.to_string());
            let msg = format!("confirmed: serial {serial} stays applied");
            let _ = write_atomic(&dir(&state).join(OUTCOME), format!("{msg}\n").as_bytes());
            Ok(msg)
        }
        None => {
            let last = std::fs::read_to_string(dir(&state).join(OUTCOME)).unwrap_or_default();
            Err(Failure::runtime(anyhow::anyhow!(
                "nothing is waiting for confirmation{}",
                if last.is_empty() {
                    String::new()
                } else {
                    format!(" (last: {})", last.trim())
                }
            )))
        }
    }
}

/// `reyes confirm-revert --token T`: the detached process. Waits for the deadline of the
/// pending change `token`, then reverts it unless it was confirmed (or replaced) meanwhile.
pub fn revert_when_due(cfg: &Config, token: &str) -> CmdResult<()> {
    // SAFETY: setsid has no memory-safety preconditions; failing (already a group leader)
    // only means we keep the session we have.
    unsafe { libc::setsid() };
    let signals = Signals::block().runtime()?;
    let state = StateDir::open(&cfg.follower.state_dir).runtime()?;
    loop {
        let Some(p) = read_pending(&state)?.filter(|p| p.token == token) else {
            tracing::info!("confirmed (or replaced): nothing to revert");
            return Ok(());
        };
        let left = p.deadline - unix(SystemTime::now());
        if left <= 0.0 {
            break;
        }
        // Signals are ignored: only `reyes confirm` or the deadline ends this process.
        let _ = signals.wait(Duration::from_secs_f64(left.min(0.2)));
    }
    let _lock = state.lock(cfg.follower.lock_timeout).runtime()?;
    let Some(p) = read_pending(&state)?.filter(|p| p.token == token) else {
        tracing::info!("confirmed at the last moment: nothing to revert");
        return Ok(());
    };
    let result = revert(cfg, &state, &p);
    let msg = match &result {
        Ok(what) => format!("not confirmed in time: {what}"),
        Err(f) => format!("not confirmed in time, and the revert FAILED: {f}"),
    };
    tracing::warn!("{msg}");
    remove(&dir(&state).join(PENDING))?;
    let _ = write_atomic(&dir(&state).join(OUTCOME), format!("{msg}\n").as_bytes());
    result.map(|_| ())
}

/// Put the previous document back with its host context, or flush when there was none.
fn revert(cfg: &Config, state: &StateDir, p: &Pending) -> CmdResult<String> {
    use crate::document::limits::{MAX_DOCUMENT_BYTES, MAX_SIGNATURE_BYTES};
    let prev = dir(state).join(PREVIOUS);
    let choice = p.backend.as_deref().and_then(backend_choice);
    if let Err(e) = state.record_store_version(None) {
        tracing::warn!(error = %e, "cannot forget the store version");
    }
    if !p.previous {
        // As `reyes flush`: every reyes object of both backends, whichever one applied.
        let removed = crate::live::remove(&crate::live::Kind::BOTH).runtime()?;
        let what = if removed.is_empty() {
            "nothing was live".to_string()
        } else {
            removed.join("; ")
        };
        return Ok(format!("nothing was applied before: flushed ({what})"));
    }
    let doc = read_limited(&prev.join(DOCUMENT), MAX_DOCUMENT_BYTES).runtime()?;
    let sig = read_limited(&prev.join(SIGNATURE), MAX_SIGNATURE_BYTES).runtime()?;
    let trust = follower::trust_root(cfg)?;
    let now = SystemTime::now();
    let v = follower::verify_document(&trust, &doc, &sig, &cfg.environment, now, false)
        .map_err(|f| f.context("the previous document"))?;
    let record: Option<HostRecord> = std::fs::read(prev.join(hostrecord::FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let (ctx, choice) = match &record {
        Some(r) => (r.context.clone(), choice.or(backend_choice(&r.backend))),
        None => (
            follower::host_context(cfg, &FollowerOptions::default())?,
            choice,
        ),
    };
    let backend = follower::open_backend(cfg, choice)?;
    follower::apply_verified(
        &v,
        &ctx,
        backend.as_ref(),
        state,
        now,
        &mut Report::default(),
        &follower::Guards::default(),
    )?;
    let _ = std::fs::remove_dir_all(&prev);
    Ok(format!(
        "serial {} put back through {}",
        v.document.serial,
        backend.name()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirm_without_pending_says_so_and_removes_pending() {
        let d = tempfile::tempdir().unwrap();
        let cfg = Config::parse(
            "environment: p\nstore: {directory: s}\nfollower:\n  state_dir: st\n",
            Path::new("x.yaml"),
        )
        .unwrap();
        let mut cfg = cfg;
        cfg.follower.state_dir = d.path().join("st");
        let e = confirm(&cfg).unwrap_err();
        assert!(e.to_string().contains("nothing is waiting"), "{e}");
        let state = StateDir::open(&cfg.follower.state_dir).unwrap();
        std::fs::create_dir_all(dir(&state)).unwrap();
        let p = Pending {
            token: "t".into(),
            deadline: 1e12,
            previous: false,
            backend: None,
        };
        write_file(&dir(&state).join(PENDING), &serde_json::to_vec(&p).unwrap()).unwrap();
        assert_eq!(read_pending(&state).unwrap(), Some(p));
        let msg = confirm(&cfg).unwrap();
        assert!(msg.starts_with("confirmed"), "{msg}");
        assert_eq!(read_pending(&state).unwrap(), None);
        let e = confirm(&cfg).unwrap_err();
        assert!(e.to_string().contains("last: confirmed"), "{e}");
    }
}
