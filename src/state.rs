//! The follower's state directory: `last-good/rules.json` + `.sig` (the last document applied,
//! verified), `applied.json` (what is live), `store-version.json` (the store's version tag, an
//! ETag, of that document, for conditional fetches), `live-digest.json` (the digest of what
//! the kernel held after that apply, to notice drift) and `lock` (one follower at a time).
//! Everything is written atomically (write, fsync, rename).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{read_limited, write_atomic};
use crate::store::directory::{lock_file, LockError, DOCUMENT, SIGNATURE};

/// A state-directory operation failed.
#[derive(Debug, thiserror::Error)]
#[error("state directory {dir}: {msg}")]
pub struct StateError {
    dir: String,
    msg: String,
}

/// A document and its detached signature.
pub type DocumentPair = (Vec<u8>, Vec<u8>);

/// What was applied last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Document serial.
    pub serial: u64,
    /// Environment.
    pub environment: String,
    /// Document issue time.
    pub issued_at: String,
    /// Document expiry.
    pub not_after: String,
    /// Policy digest.
    pub policy_digest: String,
    /// sha256 of the document bytes.
    pub document_digest: String,
    /// Digest of the host context it was compiled with.
    pub context_digest: String,
    /// Backend used.
    pub backend: String,
    /// When it was applied (RFC 3339).
    pub applied_at: String,
    /// Fingerprint of the signer.
    pub signer: String,
    /// reyes version that applied it.
    pub reyes_version: String,
}

/// The store's version tag of the applied document: the next fetch asks the store for
/// anything but this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreVersion {
    /// Which store (its description), so a changed config does not reuse a tag.
    pub store: String,
    /// The tag (an S3 ETag).
    pub version: String,
    /// sha256 of the document bytes it was fetched with (as in [`Applied::document_digest`]).
    pub document_digest: String,
}

const STORE_VERSION: &str = "store-version.json";

/// The digest of reyes' objects as the kernel held them right after the last apply (see
/// [`crate::backend::Backend::digest`]): each run compares the kernel with it to find drift.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveDigest {
    /// The backend it was read through.
    pub backend: String,
    /// `sha256:<hex>`.
    pub digest: String,
}

const LIVE_DIGEST: &str = "live-digest.json";

/// An open state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// Held while a follower works; released on drop.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateDir {
    /// Open the state directory, creating it with mode 0700 if absent. An existing one keeps
    /// its mode (it is never changed behind the operator's back), but one that others can
    /// write to is refused: whoever can write there can plant last-good documents and records.
    pub fn open(root: &Path) -> Result<StateDir, StateError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let s = StateDir {
            root: root.to_path_buf(),
        };
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| s.err(format!("cannot create: {e}")))?;
        }
        match fs::DirBuilder::new().mode(0o700).create(root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(s.err(format!("cannot create: {e}"))),
        }
        let meta = fs::symlink_metadata(root).map_err(|e| s.err(format!("cannot stat: {e}")))?;
        if !meta.is_dir() {
            return Err(s.err("is not a directory (a symlink or file is refused)".into()));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o022 != 0 {
            return Err(s.err(format!(
                "mode {mode:04o} lets other users write to it; run `chmod 700 {}`",
                root.display()
            )));
        }
        Ok(s)
    }

    fn err(&self, msg: String) -> StateError {
        StateError {
            dir: self.root.display().to_string(),
            msg,
        }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Take the lock, waiting at most `timeout` for another follower (or `flush`, `restore`)
    /// to finish.
    pub fn lock(&self, timeout: std::time::Duration) -> Result<StateLock, StateError> {
        let p = self.root.join("lock");
        let f = lock_file(&p, timeout).map_err(|e| match e {
            LockError::Timeout(_) => self.err(format!(
                "lock {}: {e} (follower.lock_timeout); another reyes run is stuck?",
                p.display()
            )),
            LockError::Io(e) => self.err(format!("cannot lock {}: {e}", p.display())),
        })?;
        Ok(StateLock { _file: f })
    }

    /// The applied record, if any.
    pub fn applied(&self) -> Result<Option<Applied>, StateError> {
        let p = self.root.join("applied.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                self.err(format!(
                    "applied.json is corrupt ({e}); remove it to start afresh"
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(format!("cannot read applied.json: {e}"))),
        }
    }

    /// Record what was applied.
    pub fn record(&self, a: &Applied) -> Result<(), StateError> {
        let mut bytes = serde_json::to_vec_pretty(a).map_err(|e| self.err(e.to_string()))?;
        bytes.push(b'\n');
        write_atomic(&self.root.join("applied.json"), &bytes)
            .map_err(|e| self.err(format!("cannot write applied.json: {e}")))
    }

    /// The store version recorded with the applied document, if any (a corrupt record is
    /// ignored: it only costs one unconditional fetch).
    pub fn store_version(&self) -> Option<StoreVersion> {
        let b = fs::read(self.root.join(STORE_VERSION)).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// Record the store version of the applied document, or forget it (`None`).
    pub fn record_store_version(&self, v: Option<&StoreVersion>) -> Result<(), StateError> {
        let p = self.root.join(STORE_VERSION);
        match v {
            Some(v) => {
                let mut bytes =
                    serde_json::to_vec_pretty(v).map_err(|e| self.err(e.to_string()))?;
                bytes.push(b'\n');
                write_atomic(&p, &bytes)
                    .map_err(|e| self.err(format!("cannot write {STORE_VERSION}: {e}")))
            }
            None => match fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(self.err(format!("cannot remove {STORE_VERSION}: {e}")))
                }
                _ => Ok(()),
            },
        }
    }

    /// The digest recorded after the last apply, if any (a corrupt record is ignored: it
    /// only costs one apply).
    pub fn live_digest(&self) -> Option<LiveDigest> {
        let b = fs::read(self.root.join(LIVE_DIGEST)).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// Record the digest read after an apply (unless it is what is recorded already).
    pub fn record_live_digest(&self, d: &LiveDigest) -> Result<(), StateError> {
        if self.live_digest().as_ref() == Some(d) {
            return Ok(());
        }
        let mut bytes = serde_json::to_vec_pretty(d).map_err(|e| self.err(e.to_string()))?;
        bytes.push(b'\n');
        write_atomic(&self.root.join(LIVE_DIGEST), &bytes)
            .map_err(|e| self.err(format!("cannot write {LIVE_DIGEST}: {e}")))
    }

    /// Keep the verified document and signature as last-good (both or neither).
    pub fn save_last_good(&self, document: &[u8], signature: &[u8]) -> Result<(), StateError> {
        let tmp = self
            .root
            .join(format!("last-good.tmp-{}", std::process::id()));
        let dst = self.root.join("last-good");
        let old = self.root.join("last-good.old");
        let _ = fs::remove_dir_all(&tmp);
        let result = (|| -> std::io::Result<()> {
            fs::create_dir_all(&tmp)?;
            write_atomic(&tmp.join(DOCUMENT), document)?;
            write_atomic(&tmp.join(SIGNATURE), signature)?;
            let _ = fs::remove_dir_all(&old);
            if dst.exists() {
                fs::rename(&dst, &old)?;
            }
            fs::rename(&tmp, &dst)?;
            File::open(&self.root)?.sync_all()?;
            let _ = fs::remove_dir_all(&old);
            Ok(())
        })();
        result.map_err(|e| {
            let _ = fs::remove_dir_all(&tmp);
            self.err(format!("cannot save last-good: {e}"))
        })
    }

    /// The last-good document and signature, if any (falling back to the copy kept while a
    /// save was interrupted).
    pub fn last_good(&self) -> Result<Option<DocumentPair>, StateError> {
        use crate::document::limits::{MAX_DOCUMENT_BYTES, MAX_SIGNATURE_BYTES};
        for dir in ["last-good", "last-good.old"] {
            let d = self.root.join(dir);
            if !d.join(DOCUMENT).exists() {
                continue;
            }
            let doc = read_limited(&d.join(DOCUMENT), MAX_DOCUMENT_BYTES)
                .map_err(|e| self.err(e.to_string()))?;
            let sig = read_limited(&d.join(SIGNATURE), MAX_SIGNATURE_BYTES)
                .map_err(|e| self.err(e.to_string()))?;
            return Ok(Some((doc, sig)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    #[test]
    fn last_good_round_trip_and_replace() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(&d.path().join("st")).unwrap();
        assert!(s.last_good().unwrap().is_none());
        s.save_last_good(b"d1", b"s1").unwrap();
        s.save_last_good(b"d2", b"s2").unwrap();
        assert_eq!(
            s.last_good().unwrap(),
            Some((b"d2".to_vec(), b"s2".to_vec()))
        );
        let names: Vec<_> = fs::read_dir(s.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["last-good"]);
    }

    #[test]
    fn store_version_round_trip_and_forget() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        assert_eq!(s.store_version(), None);
        let v = StoreVersion {
            store: "s3://b/k".into(),
            version: "\"abc\"".into(),
            document_digest: "sha256:00".into(),
        };
        s.record_store_version(Some(&v)).unwrap();
        assert_eq!(s.store_version(), Some(v));
        s.record_store_version(None).unwrap();
        s.record_store_version(None).unwrap();
        assert_eq!(s.store_version(), None);
        // A corrupt record only costs an unconditional fetch.
        fs::write(d.path().join(STORE_VERSION), b"{").unwrap();
        assert_eq!(s.store_version(), None);
    }

    #[test]
    fn lock_is_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        let _held = s.lock(std::time::Duration::from_secs(1)).unwrap();
        let f = OpenOptions::new()
            .write(true)
            .open(d.path().join("lock"))
            .unwrap();
        assert!(f.try_lock().is_err());
    }

    #[test]
    fn lock_waits_at_most_the_timeout() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        let held = s.lock(std::time::Duration::from_secs(1)).unwrap();
        let t = std::time::Instant::now();
        let e = s
            .lock(std::time::Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lock_timeout"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        drop(held);
        s.lock(std::time::Duration::from_millis(200)).unwrap();
    }

    #[test]
    fn created_0700_and_an_existing_mode_is_kept_or_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let new = d.path().join("a/b/state");
        StateDir::open(&new).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&new), 0o700);
        // An existing 0750 directory is used as it is, not chmodded.
        let existing = d.path().join("existing");
        fs::create_dir(&existing).unwrap();
        fs::set_permissions(&existing, fs::Permissions::from_mode(0o750)).unwrap();
        StateDir::open(&existing).unwrap();
        assert_eq!(mode(&existing), 0o750);
        // A world-writable one is refused, and left alone.
        fs::set_permissions(&existing, fs::Permissions::from_mode(0o777)).unwrap();
        let e = StateDir::open(&existing).unwrap_err().to_string();
        assert!(e.contains("chmod 700"), "{e}");
        assert_eq!(mode(&existing), 0o777);
    }

    #[test]
    fn temporary_files_never_follow_a_planted_symlink() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"untouched").unwrap();
        // Plant symlinks at every name the old code used for its temporary file.
        let pid = std::process::id();
        std::os::unix::fs::symlink(&victim, d.path().join(format!(".applied.json.tmp.{pid}")))
            .unwrap();
        let a = Applied {
            serial: 1,
            environment: "prod".into(),
            issued_at: "2026-01-01T00:00:00Z".into(),
            not_after: "2026-01-01T01:00:00Z".into(),
            policy_digest: "sha256:00".into(),
            document_digest: "sha256:00".into(),
            context_digest: "x".into(),
            backend: "nft".into(),
            applied_at: "2026-01-01T00:00:00Z".into(),
            signer: "A".into(),
            reyes_version: "0".into(),
        };
        s.record(&a).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"untouched");
        assert_eq!(s.applied().unwrap(), Some(a));
    }
}
