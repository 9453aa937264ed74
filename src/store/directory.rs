//! A directory store: `DIR/rules.json` and `DIR/rules.json.sig`.
//!
//! Each file is written to a temporary name, fsynced, and renamed into place (then the
//! directory is fsynced), so a reader never sees a half-written file. The document is
//! renamed before its signature; a reader that lands between the two renames sees a new
//! document with the old signature, which fails verification: the follower then fetches again
//! and never applies a torn pair.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::{FetchOutcome, Fetched, Store, StoreError};
use crate::document::limits;

/// Name of the document file.
pub const DOCUMENT: &str = "rules.json";
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

/// Read a file, refusing more than `max` bytes (without reading them all).
pub fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>, StoreError> {
    let f = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            StoreError::NotFound(format!("{} does not exist", path.display()))
        }
        _ => StoreError::Io(format!("cannot read {}: {e}", path.display())),
    })?;
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| StoreError::Io(format!("cannot read {}: {e}", path.display())))?;
    if buf.len() as u64 > max {
        return Err(StoreError::TooLarge(format!(
            "{} is larger than the limit of {max} bytes",
            path.display()
        )));
    }
    Ok(buf)
}

/// Write `data` to `path` atomically: temporary file in the same directory, fsync, rename,
/// fsync the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl Store for DirectoryStore {
    fn fetch(&self, _if_changed_from: Option<&str>) -> Result<FetchOutcome, StoreError> {
        let document = read_limited(&self.dir.join(DOCUMENT), limits::MAX_DOCUMENT_BYTES)?;
        let signature = match read_limited(&self.dir.join(SIGNATURE), limits::MAX_SIGNATURE_BYTES) {
            Err(StoreError::NotFound(m)) => {
                return Err(StoreError::MissingSignature(format!(
                    "{m}: the document is unsigned"
                )))
            }
            other => other?,
        };
        Ok(FetchOutcome::Fetched(Fetched {
            document,
            signature,
            version: None,
        }))
    }

    fn publish(&self, document: &[u8], signature: &[u8]) -> Result<(), StoreError> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", self.dir.display())))?;
        for (name, data) in [(DOCUMENT, document), (SIGNATURE, signature)] {
            let p = self.dir.join(name);
            write_atomic(&p, data)
                .map_err(|e| StoreError::Io(format!("cannot write {}: {e}", p.display())))?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
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
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(d.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2);
        fs::remove_file(d.path().join("sub").join(SIGNATURE)).unwrap();
        assert!(matches!(
            s.fetch(None),
            Err(StoreError::MissingSignature(_))
        ));
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
