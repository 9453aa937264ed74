//! A directory store: `DIR/rules.json`, `DIR/rules.json.gz` and `DIR/rules.json.sig`.
//!
//! Each publication goes into its own version directory, `DIR/.versions/<digest>/`, whose
//! three files are written to temporary names, fsynced and renamed. Then one symlink,
//! `DIR/current`, is switched to it with an atomic rename: that rename is the publication.
//! `DIR/rules.json`, `DIR/rules.json.gz` and `DIR/rules.json.sig` are symlinks through
//! `current`, so other readers (gpg, a web server, rsync) see plain files, while our reader
//! resolves `current` once and reads from that one version: it never sees a document from one
//! publication with the signature of another. The last few versions are kept so a reader that
//! resolved an older `current` can finish. A directory of plain files (written by hand or
//! another tool) is read as it is.
//!
//! `rules.json.gz` is the document gzipped (for fleets that read the directory over a network
//! mount or a web server). The reader takes it, decompressing with the document size limit (a
//! bomb is refused as too large), unless it is absent or `rules.json` was modified after it
//! (a hand edit, or another tool that writes only the plain files): then `rules.json`. The
//! signature is over the uncompressed bytes either way.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use sha2::Digest;

use std::time::Duration;

use super::{
    Expect, FetchOutcome, Fetched, ReceiptLimits, ReceiptListing, Store, StoreError, StoreLock,
};
use crate::config::HostId;
use crate::document::limits;

/// Name of the document file.
pub const DOCUMENT: &str = "rules.json";
/// Name of the gzipped document file.
pub const DOCUMENT_GZ: &str = "rules.json.gz";
/// Name of the signature file.
pub const SIGNATURE: &str = "rules.json.sig";

/// A store in a local (or network-mounted) directory.
#[derive(Debug, Clone)]
pub struct DirectoryStore {
    dir: PathBuf,
}

impl DirectoryStore {
    /// A store in `dir`.
    pub fn new(dir: PathBuf) -> DirectoryStore {
        DirectoryStore { dir }
    }
}

use crate::fsutil::{gunzip_limited, gzip, GunzipError};
pub use crate::fsutil::{parent_dir, read_limited, write_atomic};

/// Versions kept besides the current one.
const KEEP_VERSIONS: usize = 3;

/// Point `link` at `target` atomically (temporary symlink + rename).
fn symlink_atomic(target: &Path, link: &Path) -> std::io::Result<()> {
    let dir = parent_dir(link);
    let name = link.file_name().and_then(|n| n.to_str()).unwrap_or("link");
    let tmp = dir.join(format!(".{name}.lnk.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    fs::rename(&tmp, link).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

impl DirectoryStore {
    /// The document in `base`: `rules.json.gz` decompressed (with the size limit), unless
    /// `rules.json` is newer (edited by hand or written by another tool that left an old .gz)
    /// or the .gz is absent; then `rules.json`.
    fn read_document(&self, base: &Path) -> Result<Vec<u8>, StoreError> {
        let max = limits::MAX_DOCUMENT_BYTES;
        let (plain, gz) = (base.join(DOCUMENT), base.join(DOCUMENT_GZ));
        let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
        let use_gz = match (modified(&gz), modified(&plain)) {
            (Some(z), Some(p)) => z >= p,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !use_gz {
            return Ok(read_limited(&plain, max)?);
        }
        let z = read_limited(&gz, max)?;
        gunzip_limited(&z, max).map_err(|e| match e {
            GunzipError::TooLarge { .. } => StoreError::TooLarge(format!("{}: {e}", gz.display())),
            GunzipError::Corrupt { .. } => StoreError::Corrupt(format!("{}: {e}", gz.display())),
        })
    }

    fn read_pair(&self, base: &Path) -> Result<Fetched, StoreError> {
        let document = self.read_document(base)?;
        let signature = match read_limited(&base.join(SIGNATURE), limits::MAX_SIGNATURE_BYTES)
            .map_err(StoreError::from)
        {
            Err(StoreError::NotFound(m)) => {
                return Err(StoreError::MissingSignature(format!(
                    "{m}: the document is unsigned"
                )))
            }
            other => other?,
        };
        Ok(Fetched {
            document,
            signature,
            version: None,
            signature_object: None,
        })
    }

    /// What is there now, if anything.
    fn current(&self) -> Result<Option<Fetched>, StoreError> {
        match self.fetch(None) {
            Ok(FetchOutcome::Fetched(f)) => Ok(Some(f)),
            Ok(FetchOutcome::Unchanged) => Ok(None),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(
                StoreError::MissingSignature(_) | StoreError::TooLarge(_) | StoreError::Corrupt(_),
            ) => {
                // Something is there that is not a full pair: it is not what anyone expects.
                Ok(Some(Fetched {
                    document: Vec::new(),
                    signature: Vec::new(),
                    version: Some("unreadable".into()),
                    signature_object: None,
                }))
            }
            Err(e) => Err(e),
        }
    }

    fn gc(&self, current: &str) {
        let vdir = self.dir.join(".versions");
        let Ok(entries) = fs::read_dir(&vdir) else {
            return;
        };
        let mut old: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_str() != Some(current))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        old.sort();
        let n = old.len().saturating_sub(KEEP_VERSIONS);
        for (_, p) in old.into_iter().take(n) {
            let _ = fs::remove_dir_all(p);
        }
    }
}

impl Store for DirectoryStore {
    fn fetch(&self, _if_changed_from: Option<&str>) -> Result<FetchOutcome, StoreError> {
        let current = self.dir.join("current");
        let mut attempts = 0;
        loop {
            attempts += 1;
            let base = match fs::read_link(&current) {
                Ok(target) => self.dir.join(target),
                Err(_) => return self.read_pair(&self.dir).map(FetchOutcome::Fetched),
            };
            match self.read_pair(&base) {
                // That version was collected after `current` moved on: resolve it again.
                Err(StoreError::NotFound(_)) | Err(StoreError::MissingSignature(_))
                    if attempts < 5 =>
                {
                    continue
                }
                other => return other.map(FetchOutcome::Fetched),
            }
        }
    }

    fn publish(&self, document: &[u8], signature: &[u8]) -> Result<(), StoreError> {
        let io = |what: &str, e: std::io::Error| {
            StoreError::Io(format!("{what} in {}: {e}", self.dir.display()))
        };
        let id = crate::digest::hex(&sha2::Sha256::digest([document, signature].concat())[..12]);
        let rel = PathBuf::from(".versions").join(&id);
        let vdir = self.dir.join(&rel);
        fs::create_dir_all(&vdir).map_err(|e| io("cannot create a version directory", e))?;
        write_atomic(&vdir.join(DOCUMENT), document)
            .map_err(|e| io("cannot write the document", e))?;
        write_atomic(&vdir.join(DOCUMENT_GZ), &gzip(document))
            .map_err(|e| io("cannot write the gzipped document", e))?;
        write_atomic(&vdir.join(SIGNATURE), signature)
            .map_err(|e| io("cannot write the signature", e))?;
        symlink_atomic(&rel, &self.dir.join("current"))
            .map_err(|e| io("cannot switch `current`", e))?;
        for name in [DOCUMENT, DOCUMENT_GZ, SIGNATURE] {
            let want = PathBuf::from("current").join(name);
            let link = self.dir.join(name);
            if fs::read_link(&link).ok().as_deref() != Some(want.as_path()) {
                symlink_atomic(&want, &link).map_err(|e| io("cannot link", e))?;
            }
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("cannot sync", e))?;
        self.gc(&id);
        Ok(())
    }

    fn publish_expecting(
        &self,
        document: &[u8],
        signature: &[u8],
        expect: Expect<'_>,
    ) -> Result<(), StoreError> {
        let now = self.current()?;
        let ok = match (expect, &now) {
            (Expect::Any, _) | (Expect::Absent, None) => true,
            (Expect::Absent, Some(_)) | (Expect::Current(_), None) => false,
            (Expect::Current(want), Some(have)) => {
                want.document == have.document && want.signature == have.signature
            }
        };
        if !ok {
            return Err(StoreError::Conflict(format!(
                "{} changed since it was read (another leader published?); nothing written",
                self.describe()
            )));
        }
        self.publish(document, signature)
    }

    fn lock(&self, timeout: Duration) -> Result<Option<StoreLock>, StoreError> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", self.dir.display())))?;
        let p = self.dir.join(LOCK);
        let f = lock_file(&p, timeout).map_err(|e| match e {
            LockError::Timeout(t) => StoreError::Conflict(format!(
                "another leader holds {} (waited {}s)",
                p.display(),
                t.as_secs()
            )),
            LockError::Io(e) => StoreError::Io(format!("cannot lock {}: {e}", p.display())),
        })?;
        Ok(Some(StoreLock::new(f)))
    }

    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }

    fn put_receipt(&self, host: &HostId, body: &[u8]) -> Result<(), StoreError> {
        super::receipts::put_in_directory(&self.dir, host, body)
    }

    fn receipts(&self, limits: ReceiptLimits) -> Result<ReceiptListing, StoreError> {
        super::receipts::list_directory(&self.dir, limits)
    }
}

/// The leaders' lock file in a directory store.
pub const LOCK: &str = ".lock";

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process held it for the whole wait.
    #[error("still held by another process after {}s", .0.as_secs())]
    Timeout(Duration),
    /// The lock file could not be opened or locked.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Open (creating it, without following a symlink) and exclusively lock `path`, waiting at
/// most `timeout` for another holder.
pub fn lock_file(path: &Path, timeout: Duration) -> Result<File, LockError> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    // A timeout too long to add to the clock waits as long as the clock can say.
    let now = std::time::Instant::now();
    let deadline = now
        .checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(u32::MAX.into()));
    let mut logged = false;
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(fs::TryLockError::WouldBlock) => {}
            Err(fs::TryLockError::Error(e)) => return Err(LockError::Io(e)),
        }
        if std::time::Instant::now() >= deadline {
            return Err(LockError::Timeout(timeout));
        }
        if !logged {
            tracing::info!(lock = %path.display(), "another process holds the lock; waiting");
            logged = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_then_fetch() {
        let d = tempfile::tempdir().unwrap();
        let s = DirectoryStore::new(d.path().join("sub"));
        assert!(matches!(s.fetch(None), Err(StoreError::NotFound(_))));
        s.publish(b"doc", b"sig").unwrap();
        let FetchOutcome::Fetched(f) = s.fetch(None).unwrap() else {
            panic!()
        };
        assert_eq!(
            (f.document.as_slice(), f.signature.as_slice()),
            (&b"doc"[..], &b"sig"[..])
        );
        // Plain readers see the files through the symlinks; no temporary files are left.
        assert_eq!(
            fs::read(d.path().join("sub").join(DOCUMENT)).unwrap(),
            b"doc"
        );
        let mut names: Vec<_> = fs::read_dir(d.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [".versions", "current", DOCUMENT, DOCUMENT_GZ, SIGNATURE]
        );
        // The .gz is the document, gzipped.
        let z = fs::read(d.path().join("sub").join(DOCUMENT_GZ)).unwrap();
        assert_eq!(gunzip_limited(&z, 100).unwrap(), b"doc");
        // Old versions are collected.
        for i in 0..10 {
            s.publish(format!("doc{i}").as_bytes(), b"sig").unwrap();
        }
        assert_eq!(
            fs::read_dir(d.path().join("sub/.versions"))
                .unwrap()
                .count(),
            KEEP_VERSIONS + 1
        );
        let FetchOutcome::Fetched(f) = s.fetch(None).unwrap() else {
            panic!()
        };
        assert_eq!(f.document, b"doc9");
    }

    #[test]
    fn plain_files_are_read_too() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(DOCUMENT), b"doc").unwrap();
        let s = DirectoryStore::new(d.path().to_path_buf());
        assert!(matches!(
            s.fetch(None),
            Err(StoreError::MissingSignature(_))
        ));
        fs::write(d.path().join(SIGNATURE), b"sig").unwrap();
        assert!(matches!(s.fetch(None), Ok(FetchOutcome::Fetched(_))));
        // Publishing over plain files switches them to the versioned layout.
        s.publish(b"doc2", b"sig2").unwrap();
        let FetchOutcome::Fetched(f) = s.fetch(None).unwrap() else {
            panic!()
        };
        assert_eq!(f.document, b"doc2");
    }

    #[test]
    fn a_reader_never_sees_a_torn_pair() {
        let d = tempfile::tempdir().unwrap();
        let s = DirectoryStore::new(d.path().to_path_buf());
        s.publish(b"doc-0", b"sig-0").unwrap();
        let writer = {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 1..300 {
                    s.publish(format!("doc-{i}").as_bytes(), format!("sig-{i}").as_bytes())
                        .unwrap();
                }
            })
        };
        let mut reads = 0;
        while !writer.is_finished() || reads < 10 {
            let FetchOutcome::Fetched(f) = s.fetch(None).unwrap() else {
                panic!()
            };
            let (doc, sig) = (
                String::from_utf8(f.document).unwrap(),
                String::from_utf8(f.signature).unwrap(),
            );
            assert_eq!(
                doc.trim_start_matches("doc-"),
                sig.trim_start_matches("sig-"),
                "torn pair"
            );
            reads += 1;
        }
        writer.join().unwrap();
    }

    #[test]
    fn the_gzipped_document_is_read_with_the_size_limit() {
        let d = tempfile::tempdir().unwrap();
        let s = DirectoryStore::new(d.path().to_path_buf());
        s.publish(b"doc", b"sig").unwrap();
        let version = d
            .path()
            .join(fs::read_link(d.path().join("current")).unwrap());
        let (plain, gz) = (version.join(DOCUMENT), version.join(DOCUMENT_GZ));
        let set_mtime = |p: &Path, secs: u64| {
            let t = std::time::UNIX_EPOCH + Duration::from_secs(secs);
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        };
        let fetched = || match s.fetch(None) {
            Ok(FetchOutcome::Fetched(f)) => Ok(f.document),
            Ok(FetchOutcome::Unchanged) => panic!("unchanged"),
            Err(e) => Err(e),
        };
        // The reader takes the .gz (as new as rules.json, or newer).
        fs::write(&gz, gzip(b"from the gz")).unwrap();
        set_mtime(&plain, 1_000);
        set_mtime(&gz, 1_000);
        assert_eq!(fetched().unwrap(), b"from the gz");
        // rules.json modified after the .gz (a hand edit): rules.json.
        set_mtime(&plain, 2_000);
        assert_eq!(fetched().unwrap(), b"doc");
        set_mtime(&plain, 1_000);
        // A bomb: a small file that decompresses past the document limit.
        let bomb = gzip(&vec![b' '; (limits::MAX_DOCUMENT_BYTES + 1) as usize]);
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        fs::write(&gz, bomb).unwrap();
        let e = fetched().unwrap_err();
        assert!(matches!(e, StoreError::TooLarge(_)), "{e}");
        assert!(e.to_string().contains(DOCUMENT_GZ), "{e}");
        // Not gzip at all: corrupt.
        fs::write(&gz, b"{}").unwrap();
        let e = fetched().unwrap_err();
        assert!(matches!(e, StoreError::Corrupt(_)), "{e}");
        // Without the .gz (plain files of another tool): rules.json.
        fs::remove_file(&gz).unwrap();
        assert_eq!(fetched().unwrap(), b"doc");
    }

    #[test]
    fn oversized_signature_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = DirectoryStore::new(d.path().to_path_buf());
        s.publish(
            b"doc",
            &vec![0u8; (limits::MAX_SIGNATURE_BYTES + 1) as usize],
        )
        .unwrap();
        assert!(matches!(s.fetch(None), Err(StoreError::TooLarge(_))));
    }
}
