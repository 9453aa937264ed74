//! Where documents are published and fetched: `rules.json` and `rules.json.sig` side by side.

pub mod directory;
#[cfg(feature = "aws")]
pub mod s3;
pub mod s3_error;

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
}

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
