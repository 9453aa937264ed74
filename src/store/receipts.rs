//! Receipts in a store: `receipts/<host id>.json` beside the document (in a directory store,
//! the `receipts/` directory; on S3, the `receipts/` prefix under the document key's prefix).
//! Each follower writes its own; `reyes fleet` lists them all. They are untrusted reports:
//! a listing reads at most [`ReceiptLimits::max_count`] of them, each at most
//! [`ReceiptLimits::max_bytes`] and [`ReceiptLimits::max_total`] in all, never follows a symlink, and reports what it could not read
//! instead of failing.

use std::fs;
use std::io::Read;
use std::path::Path;

use super::StoreError;
use crate::config::HostId;

/// The receipts' directory (or key prefix) beside the document.
pub const DIR: &str = "receipts";

/// How much of the store a listing reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiptLimits {
    /// Bytes read of one receipt.
    pub max_bytes: u64,
    /// Receipts read.
    pub max_count: usize,
    /// Bytes read in all (what the listing holds in memory): receipts past it are reported
    /// as not read, not read.
    pub max_total: u64,
}

impl ReceiptLimits {
    /// The error for a receipt left unread because the listing's budget is spent.
    pub fn budget_spent(&self, what: &str) -> StoreError {
        StoreError::TooLarge(format!(
            "{what} was not read: the receipts listed before it used the listing's budget of {} bytes",
            self.max_total
        ))
    }
}

/// One entry of the receipts directory (or prefix).
#[derive(Debug)]
pub struct ListedReceipt {
    /// The file (object) name within `receipts/`, as found (not validated).
    pub name: String,
    /// Its bytes, or why they were not read.
    pub body: Result<Vec<u8>, StoreError>,
}

/// What a listing found.
#[derive(Debug, Default)]
pub struct ReceiptListing {
    /// The entries, by name.
    pub receipts: Vec<ListedReceipt>,
    /// More entries than [`ReceiptLimits::max_count`] were there; the rest were not read.
    pub truncated: bool,
}

/// Write `host`'s receipt into `dir/receipts/` (created when missing), atomically.
pub fn put_in_directory(dir: &Path, host: &HostId, body: &[u8]) -> Result<(), StoreError> {
    let rdir = dir.join(DIR);
    let io = |what: &str, e: std::io::Error| {
        StoreError::Io(format!("cannot {what} {}: {e}", rdir.display()))
    };
    fs::create_dir_all(&rdir).map_err(|e| io("create", e))?;
    crate::fsutil::write_atomic(&rdir.join(host.file_name()), body)
        .map_err(|e| io("write a receipt in", e))
}

/// Every receipt in `dir/receipts/` (none when it does not exist). Hidden files (temporary
/// files of a write in progress) are skipped.
pub fn list_directory(dir: &Path, limits: ReceiptLimits) -> Result<ReceiptListing, StoreError> {
    let rdir = dir.join(DIR);
    let entries = match fs::read_dir(&rdir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ReceiptListing::default()),
        Err(e) => {
            return Err(StoreError::Io(format!(
                "cannot list {}: {e}",
                rdir.display()
            )))
        }
    };
    let mut names = Vec::new();
    for e in entries {
        let e = e.map_err(|e| StoreError::Io(format!("cannot list {}: {e}", rdir.display())))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    let truncated = names.len() > limits.max_count;
    names.truncate(limits.max_count);
    let mut spent = 0u64;
    let receipts = names
        .into_iter()
        .map(|name| {
            let path = rdir.join(&name);
            let body = read_regular(&path, limits.max_bytes).and_then(|b| {
                spent = spent.saturating_add(b.len() as u64);
                if spent > limits.max_total {
                    return Err(limits.budget_spent(&path.display().to_string()));
                }
                Ok(b)
            });
            ListedReceipt { name, body }
        })
        .collect();
    Ok(ReceiptListing {
        receipts,
        truncated,
    })
}

/// Read a regular file (never through a symlink), at most `max` bytes.
fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| StoreError::Io(format!("cannot read {}: {e}", path.display()));
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(io)?;
    if !f.metadata().map_err(io)?.is_file() {
        return Err(StoreError::Io(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf).map_err(io)?;
    if buf.len() as u64 > max {
        return Err(StoreError::TooLarge(format!(
            "{} is larger than the limit of {max} bytes",
            path.display()
        )));
    }
    Ok(buf)
}

/// The S3 key prefix of the receipts for a document at `key`: `prod/rules.json` gives
/// `prod/receipts/`, `rules.json` gives `receipts/`.
pub fn s3_prefix(key: &str) -> String {
    match key.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{DIR}/"),
        None => format!("{DIR}/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ReceiptLimits = ReceiptLimits {
        max_bytes: 16,
        max_count: 3,
        max_total: 1 << 20,
    };

    #[test]
    fn a_listing_reads_no_more_than_its_budget_in_all() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join(DIR);
        fs::create_dir_all(&r).unwrap();
        for n in ["a", "b", "c"] {
            fs::write(r.join(format!("{n}.json")), [b'x'; 10]).unwrap();
        }
        let limits = ReceiptLimits {
            max_total: 20,
            ..LIMITS
        };
        let l = list_directory(d.path(), limits).unwrap();
        assert_eq!(l.receipts[0].body.as_ref().unwrap().len(), 10);
        assert_eq!(l.receipts[1].body.as_ref().unwrap().len(), 10);
        let e = l.receipts[2].body.as_ref().unwrap_err().to_string();
        assert!(
            e.contains("c.json") && e.contains("budget of 20 bytes"),
            "{e}"
        );
    }

    #[test]
    fn directory_put_and_list() {
        let d = tempfile::tempdir().unwrap();
        assert!(list_directory(d.path(), LIMITS)
            .unwrap()
            .receipts
            .is_empty());
        let a = HostId::new("web-1").unwrap();
        put_in_directory(d.path(), &a, b"{\"a\":1}").unwrap();
        put_in_directory(d.path(), &a, b"{\"a\":2}").unwrap();
        let r = d.path().join(DIR);
        fs::write(r.join("big.json"), [b'x'; 17]).unwrap();
        fs::write(r.join(".web-2.json.tmp.1"), b"partial").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", r.join("link.json")).unwrap();
        let l = list_directory(d.path(), LIMITS).unwrap();
        assert!(!l.truncated);
        let names: Vec<_> = l.receipts.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["big.json", "link.json", "web-1.json"]);
        assert!(matches!(l.receipts[0].body, Err(StoreError::TooLarge(_))));
        let link = l.receipts[1].body.as_ref().unwrap_err().to_string();
        assert!(link.contains("link.json"), "{link}");
        assert_eq!(l.receipts[2].body.as_ref().unwrap(), b"{\"a\":2}");

        fs::write(r.join("zz.json"), b"{}").unwrap();
        let l = list_directory(d.path(), LIMITS).unwrap();
        assert!(l.truncated);
        assert_eq!(l.receipts.len(), 3);
    }

    #[test]
    fn s3_prefixes() {
        assert_eq!(s3_prefix("prod/rules.json"), "prod/receipts/");
        assert_eq!(s3_prefix("a/b/rules.json"), "a/b/receipts/");
        assert_eq!(s3_prefix("rules.json"), "receipts/");
    }
}
