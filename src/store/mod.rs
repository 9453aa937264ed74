//! Where documents are published and fetched: `rules.json` and `rules.json.sig` side by side.

pub mod directory;
#[cfg(feature = "aws")]
pub mod s3;
#[cfg(feature = "aws")]
pub mod s3_error;

use std::time::Duration;

use crate::config::StoreConfig;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Nothing published there (yet).
    #[error("{0}")]
    NotFound(String),
    /// The document is there but its signature is not.
    #[error("{0}")]
    MissingSignature(String),
    /// The signature belongs to another document (a torn pair that did not heal on re-reading).
    #[error("{0}")]
    Mismatched(String),
    /// An object is larger than a follower accepts.
    #[error("{0}")]
    TooLarge(String),
    /// I/O or network failure.
    #[error("{0}")]
    Io(String),
    /// The store's configuration cannot work (e.g. an S3 key naming a prefix).
    #[error("{0}")]
    Config(String),
    /// The configured store is not available in this build.
    #[error("{0}")]
    Unsupported(String),
    /// Another writer changed the store since it was read (a conditional write failed, or
    /// the store lock could not be taken in time): nothing was written.
    #[error("{0}")]
    Conflict(String),
}

#[cfg(feature = "aws")]
impl From<s3_error::S3Failure> for StoreError {
    fn from(e: s3_error::S3Failure) -> StoreError {
        StoreError::Io(e.to_string())
    }
}

impl From<crate::fsutil::ReadError> for StoreError {
    fn from(e: crate::fsutil::ReadError) -> StoreError {
        use crate::fsutil::ReadError;
        match e {
            ReadError::NotFound { .. } => StoreError::NotFound(e.to_string()),
            ReadError::TooLarge { .. } => StoreError::TooLarge(e.to_string()),
            ReadError::Io { .. } => StoreError::Io(e.to_string()),
        }
    }
}

/// A document and its signature as fetched, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// `rules.json` bytes.
    pub document: Vec<u8>,
    /// `rules.json.sig` bytes.
    pub signature: Vec<u8>,
    /// An opaque version tag (an ETag) for conditional fetches, when the store has one.
    pub version: Option<String>,
    /// The signature object's version tag, when the store has one.
    pub signature_version: Option<String>,
}

/// What a conditional publication expects the store to hold, so that two leaders never
/// overwrite each other's publication unseen.
#[derive(Debug, Clone, Copy)]
pub enum Expect<'a> {
    /// No condition.
    Any,
    /// Nothing published yet.
    Absent,
    /// Still exactly this pair.
    Current(&'a Fetched),
}

/// Held while a writer works on a store that needs a lock (a directory); released on drop.
#[derive(Debug)]
pub struct StoreLock {
    _file: std::fs::File,
}

/// The result of a conditional fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The store says nothing changed since `version`.
    Unchanged,
    /// New bytes.
    Fetched(Fetched),
}

/// A place to publish and fetch signed documents.
pub trait Store {
    /// Fetch both objects; with `if_changed_from`, a store that can tell may answer
    /// [`FetchOutcome::Unchanged`].
    fn fetch(&self, if_changed_from: Option<&str>) -> Result<FetchOutcome, StoreError>;
    /// Publish the document, then its signature.
    fn publish(&self, document: &[u8], signature: &[u8]) -> Result<(), StoreError>;
    /// Publish only if the store still holds what `expect` says ([`StoreError::Conflict`]
    /// otherwise, with nothing written). A directory store checks under [`Store::lock`],
    /// which the caller holds; S3 uses conditional writes.
    fn publish_expecting(
        &self,
        document: &[u8],
        signature: &[u8],
        expect: Expect<'_>,
    ) -> Result<(), StoreError> {
        let _ = expect;
        self.publish(document, signature)
    }
    /// Replace only the signature of the document `current` holds (co-signing), if the store
    /// still holds `current`.
    fn publish_signature(&self, current: &Fetched, signature: &[u8]) -> Result<(), StoreError> {
        self.publish_expecting(&current.document, signature, Expect::Current(current))
    }
    /// Serialise writers: held from reading the store to publishing. Stores whose writes are
    /// conditional need none.
    fn lock(&self, timeout: Duration) -> Result<Option<StoreLock>, StoreError> {
        let _ = timeout;
        Ok(None)
    }
    /// For messages: where this store is.
    fn describe(&self) -> String;
}

/// Open the configured store.
pub fn open(cfg: &StoreConfig) -> Result<Box<dyn Store>, StoreError> {
    match cfg {
        StoreConfig::Directory(d) => Ok(Box::new(directory::DirectoryStore::new(d.clone()))),
        #[cfg(feature = "aws")]
        StoreConfig::S3(s) => Ok(Box::new(s3::S3Store::new(s)?)),
        #[cfg(not(feature = "aws"))]
        StoreConfig::S3(s) => Err(StoreError::Unsupported(format!(
            "store.s3 (bucket {}): this reyes was built without the `aws` feature; \
             use a directory store or a build with S3 support",
            s.bucket
        ))),
    }
}

impl StoreLock {
    /// Wrap a locked file.
    pub fn new(file: std::fs::File) -> StoreLock {
        StoreLock { _file: file }
    }
}
