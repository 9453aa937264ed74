//! The follower's state directory: `last-good/rules.json` + `.sig` (the last document applied,
//! verified), `applied.json` (what is live), `store-version.json` (the store's version tag, an
//! ETag, of that document, for conditional fetches) and `lock` (one follower at a time).
//! Everything is written atomically (write, fsync, rename).

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{read_limited, write_atomic};
use crate::store::directory::{DOCUMENT, SIGNATURE};

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
    /// Open (creating it, mode 0700) the state directory.
    pub fn open(root: &Path) -> Result<StateDir, StateError> {
        let s = StateDir {
            root: root.to_path_buf(),
        };
        fs::create_dir_all(root).map_err(|e| s.err(format!("cannot create: {e}")))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(root, fs::Permissions::from_mode(0o700));
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

    /// Take the lock, waiting for another follower to finish.
    pub fn lock(&self) -> Result<StateLock, StateError> {
        let p = self.root.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| self.err(format!("cannot open lock: {e}")))?;
        if f.try_lock().is_err() {
            tracing::info!(lock = %p.display(), "another follower holds the lock; waiting");
            f.lock()
                .map_err(|e| self.err(format!("cannot lock: {e}")))?;
        }
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
        let _held = s.lock().unwrap();
        let f = OpenOptions::new()
            .write(true)
            .open(d.path().join("lock"))
            .unwrap();
        assert!(f.try_lock().is_err());
    }
}
