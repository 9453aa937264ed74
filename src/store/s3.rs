//! An S3 store (aws-sdk-s3): the document at `KEY`, gzipped, with its signature in the same
//! object's metadata; the signature also at `KEY.sig` for gpg users.
//!
//! **One GET, one consistent pair.** The document object is uploaded gzipped
//! (`Content-Encoding: gzip`, `Content-Type: application/json`) with user metadata
//! [`DIGEST_METADATA`] (`x-amz-meta-document-sha256`, hex sha256 of the uncompressed bytes) and
//! [`SIGNATURE_METADATA`] (`x-amz-meta-signature`, the signature file, base64). A follower
//! reads both from one response, so it cannot see a document with another publication's
//! signature. S3 limits user metadata to 2 KB ([`METADATA_LIMIT`]); a signature too large for
//! it (many co-signers, large RSA keys) is written first to its own object, named by its
//! digest (`KEY.sig.<sha256 of the signature>`, never rewritten), and the document object
//! carries that digest instead ([`SIGNATURE_DIGEST_METADATA`]): the reader fetches exactly that
//! object and checks its digest. A reader that finds it gone (the next publication removed it)
//! reads the document again.
//!
//! `KEY.sig` is written after the document, with [`DIGEST_METADATA`] naming the document it
//! signs, for `gpg --verify` after `gunzip`; reyes reads it only for a document object without
//! the metadata above (uploaded by another tool or an older reyes), and then treats a digest
//! that does not match the document as a torn pair: it reads again a few times, then refuses.
//!
//! Bodies are read up to the document size limit, then decompressed up to the same limit (a
//! gzip bomb is refused as too large). A body is decompressed when it starts with the gzip
//! magic bytes, so an HTTP stack that already decoded `Content-Encoding: gzip` (the AWS SDK
//! for Rust does not) is handled too.
//!
//! Fetches are conditional: with the ETag of the document the follower applied last, S3
//! answers 304 Not Modified and nothing else is read.
//!
//! Publications are conditional too, so two leaders never overwrite each other unseen: the
//! document object is written with `If-Match` on the ETag the leader read (or
//! `If-None-Match: *` when there was none); S3 answers 412 (or 409 for a concurrent conditional
//! write, 404 when the object vanished) and the leader stops with [`StoreError::Conflict`].
//! A co-signer rewrites the document object (the same bytes, so the same ETag) with the longer
//! signature, on the same condition: two co-signers writing at the same instant both succeed
//! and the later one wins; the other finds its signature missing at its next run and signs
//! again.
//!
//! The SDK is async; the store keeps a current-thread tokio runtime of its own and blocks on it.

use std::collections::HashMap;
use std::time::Duration;

mod receipts;

use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::get_object::{GetObjectError, GetObjectOutput};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use base64::Engine;
use sha2::Digest;

use super::s3_error::S3Failure;
use super::{Expect, FetchOutcome, Fetched, ReceiptLimits, ReceiptListing, Store, StoreError};
use crate::config::{HostId, S3Config};
use crate::document::limits;
use crate::fsutil::{gunzip_limited, gzip, is_gzip, GunzipError};

/// User metadata key: hex sha256 of the (uncompressed) document, on the document object and on
/// `KEY.sig`.
pub const DIGEST_METADATA: &str = "document-sha256";

/// User metadata key on the document object: its signature file, base64.
pub const SIGNATURE_METADATA: &str = "signature";

/// User metadata key on the document object, instead of [`SIGNATURE_METADATA`] when the
/// signature does not fit: hex sha256 of the signature, stored at `KEY.sig.<that digest>`.
pub const SIGNATURE_DIGEST_METADATA: &str = "signature-sha256";

/// S3's limit on user metadata: the sum of the UTF-8 bytes of every key and value. Keys are
/// counted here with their `x-amz-meta-` prefix, to stay on the safe side.
pub const METADATA_LIMIT: usize = 2048;

/// Reads of a torn pair before it is refused.
const TORN_ATTEMPTS: u32 = 5;

/// Attempts per S3 request (SDK default: 3).
const MAX_ATTEMPTS: u32 = 4;

/// An S3 bucket and key.
pub struct S3Store {
    rt: tokio::runtime::Runtime,
    client: Client,
    bucket: String,
    key: String,
    sig_key: String,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("key", &self.key)
            .finish()
    }
}

/// An object as read, bounded in size (not yet decompressed).
struct Object {
    bytes: Vec<u8>,
    etag: Option<String>,
    metadata: HashMap<String, String>,
}

impl Object {
    fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(|v| v.trim())
    }
}

/// A write condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cond<'a> {
    /// Unconditional.
    None,
    /// `If-None-Match: *`.
    Absent,
    /// `If-Match: ETAG`.
    Etag(&'a str),
}

impl<'a> From<Option<&'a str>> for Cond<'a> {
    /// The ETag read, or no object at all.
    fn from(etag: Option<&'a str>) -> Self {
        etag.map_or(Cond::Absent, Cond::Etag)
    }
}

enum Get {
    Object(Object),
    NotModified,
    NotFound,
}

/// What an upload is.
struct Put<'a> {
    body: &'a [u8],
    content_type: &'static str,
    gzipped: bool,
    metadata: &'a [(&'static str, String)],
}

/// The signature of a document object, or why it has none yet.
enum Signature {
    /// Found: the bytes, and the pinned object they came from, if any.
    Found(Vec<u8>, Option<String>),
    /// The pair is torn (or its signature object was just replaced): read again; this error
    /// if it stays so.
    Retry(StoreError),
}

/// Hex sha256.
pub fn digest(bytes: &[u8]) -> String {
    crate::digest::hex(&sha2::Sha256::digest(bytes))
}

fn is_hex_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The document object's metadata for this pair, and the signature's own object when the
/// signature does not fit in it.
pub fn document_metadata(
    document: &[u8],
    signature: &[u8],
) -> (Vec<(&'static str, String)>, Option<String>) {
    let size = |m: &[(&str, String)]| {
        m.iter()
            .map(|(k, v)| "x-amz-meta-".len() + k.len() + v.len())
            .sum::<usize>()
    };
    let mut meta = vec![(DIGEST_METADATA, digest(document))];
    let b64 = base64::engine::general_purpose::STANDARD.encode(signature);
    meta.push((SIGNATURE_METADATA, b64));
    if size(&meta) <= METADATA_LIMIT {
        return (meta, None);
    }
    let d = digest(signature);
    meta.pop();
    meta.push((SIGNATURE_DIGEST_METADATA, d.clone()));
    (meta, Some(d))
}

impl S3Store {
    /// A store at `s3://bucket/key`, with the default credential chain, the configured (or
    /// environment's) region, and path-style addressing when an endpoint is given.
    pub fn new(cfg: &S3Config) -> Result<S3Store, StoreError> {
        if cfg.key.is_empty() || cfg.key.ends_with('/') {
            return Err(StoreError::Config(format!(
                "store.s3.key {:?}: name an object (e.g. prod/rules.json), not a prefix",
                cfg.key
            )));
        }
        let rt = crate::inventory::ec2::runtime()
            .map_err(|e| StoreError::Io(format!("cannot start the AWS runtime: {e}")))?;
        let shared = rt.block_on(crate::inventory::ec2::sdk_config(
            cfg.region.as_deref(),
            MAX_ATTEMPTS,
        ));
        let mut b = aws_sdk_s3::config::Builder::from(&shared);
        if let Some(e) = &cfg.endpoint {
            b = b.endpoint_url(e).force_path_style(true);
        }
        Ok(S3Store {
            rt,
            client: Client::from_conf(b.build()),
            bucket: cfg.bucket.clone(),
            key: cfg.key.clone(),
            sig_key: format!("{}.sig", cfg.key),
        })
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, key)
    }

    /// Where a signature too large for metadata is stored.
    fn pinned_key(&self, signature_digest: &str) -> String {
        format!("{}.{signature_digest}", self.sig_key)
    }

    async fn get(
        &self,
        key: &str,
        if_none_match: Option<&str>,
        max: u64,
    ) -> Result<Get, StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_if_none_match(if_none_match.map(str::to_string))
            .send()
            .await;
        let out: GetObjectOutput = match out {
            Ok(o) => o,
            Err(e) => {
                if e.raw_response().map(|r| r.status().as_u16()) == Some(304) {
                    return Ok(Get::NotModified);
                }
                if let SdkError::ServiceError(se) = &e {
                    if matches!(se.err(), GetObjectError::NoSuchKey(_))
                        || se.raw().status().as_u16() == 404
                    {
                        return Ok(Get::NotFound);
                    }
                }
                return Err(S3Failure::new("read", &self.bucket, key, &e).into());
            }
        };
        let too_large = || {
            StoreError::TooLarge(format!(
                "{} is larger than the limit of {max} bytes",
                self.url(key)
            ))
        };
        if out.content_length().is_some_and(|n| n > max as i64) {
            return Err(too_large());
        }
        let etag = out.e_tag().map(str::to_string);
        let metadata = out.metadata().cloned().unwrap_or_default();
        let mut body = out.body;
        let mut bytes = Vec::new();
        while let Some(chunk) = body.try_next().await.map_err(|e| {
            StoreError::Io(format!(
                "cannot read {}: {}",
                self.url(key),
                DisplayErrorContext(e)
            ))
        })? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > max {
                return Err(too_large());
            }
        }
        Ok(Get::Object(Object {
            bytes,
            etag,
            metadata,
        }))
    }

    /// The document's bytes: decompressed, with the document size limit, when gzipped.
    fn decode(&self, body: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        if !is_gzip(&body) {
            return Ok(body);
        }
        gunzip_limited(&body, limits::MAX_DOCUMENT_BYTES).map_err(|e| match e {
            GunzipError::TooLarge { .. } => {
                StoreError::TooLarge(format!("{}: {e}", self.url(&self.key)))
            }
            GunzipError::Corrupt { .. } => {
                StoreError::Corrupt(format!("{}: {e}", self.url(&self.key)))
            }
        })
    }

    async fn put(&self, key: &str, put: Put<'_>, cond: Cond<'_>) -> Result<(), StoreError> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(put.content_type)
            .body(ByteStream::from(put.body.to_vec()));
        if put.gzipped {
            req = req.content_encoding("gzip");
        }
        for (k, v) in put.metadata {
            req = req.metadata(*k, v);
        }
        req = match cond {
            Cond::None => req,
            Cond::Absent => req.if_none_match("*"),
            Cond::Etag(e) => req.if_match(e),
        };
        req.send().await.map(|_| ()).map_err(|e| {
            let status = e.raw_response().map(|r| r.status().as_u16());
            if cond != Cond::None && matches!(status, Some(412 | 409 | 404)) {
                return StoreError::Conflict(format!(
                    "{} changed since it was read (HTTP {}; another leader published?); not overwritten",
                    self.url(key),
                    status.unwrap_or(0)
                ));
            }
            S3Failure::new("write", &self.bucket, key, &e).into()
        })
    }

    /// Remove an obsolete pinned signature object; a failure is only logged (it costs storage,
    /// not correctness).
    async fn remove(&self, key: &str) {
        let r = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        if let Err(e) = r {
            let f = S3Failure::new("delete", &self.bucket, key, &e);
            tracing::warn!(error = %f, "an obsolete signature object was left behind");
        }
    }

    /// The signature that goes with this document object.
    async fn signature_of(&self, doc: &Object, document: &[u8]) -> Result<Signature, StoreError> {
        let have = digest(document);
        if let Some(want) = doc.meta(DIGEST_METADATA) {
            if !want.eq_ignore_ascii_case(&have) {
                return Err(StoreError::Corrupt(format!(
                    "{}: its {DIGEST_METADATA} is {want}, but its content has sha256 {have}",
                    self.url(&self.key)
                )));
            }
        }
        if let Some(b64) = doc.meta(SIGNATURE_METADATA) {
            let sig = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| {
                    StoreError::Corrupt(format!(
                        "{}: its x-amz-meta-{SIGNATURE_METADATA} is not base64 ({e})",
                        self.url(&self.key)
                    ))
                })?;
            return Ok(Signature::Found(sig, None));
        }
        if let Some(d) = doc.meta(SIGNATURE_DIGEST_METADATA) {
            return self.pinned_signature(d).await;
        }
        self.legacy_signature(&have).await
    }

    /// The signature at `KEY.sig.<digest>`, checked against its name.
    async fn pinned_signature(&self, d: &str) -> Result<Signature, StoreError> {
        let d = d.to_ascii_lowercase();
        if !is_hex_digest(&d) {
            return Err(StoreError::Corrupt(format!(
                "{}: its x-amz-meta-{SIGNATURE_DIGEST_METADATA} is not a sha256 ({d:?})",
                self.url(&self.key)
            )));
        }
        let key = self.pinned_key(&d);
        match self.get(&key, None, limits::MAX_SIGNATURE_BYTES).await? {
            Get::Object(o) => {
                let have = digest(&o.bytes);
                if have != d {
                    return Err(StoreError::Mismatched(format!(
                        "{} has sha256 {have}, not the digest it is named by",
                        self.url(&key)
                    )));
                }
                Ok(Signature::Found(o.bytes, Some(key)))
            }
            Get::NotModified | Get::NotFound => Ok(Signature::Retry(StoreError::MissingSignature(
                format!(
                    "{} does not exist: the document's signature is gone (replaced by a newer publication that could not be read?)",
                    self.url(&key)
                ),
            ))),
        }
    }

    /// `KEY.sig`, for a document object without signature metadata.
    async fn legacy_signature(&self, have: &str) -> Result<Signature, StoreError> {
        let sig = match self
            .get(&self.sig_key, None, limits::MAX_SIGNATURE_BYTES)
            .await?
        {
            Get::Object(o) => o,
            Get::NotModified | Get::NotFound => {
                return Err(StoreError::MissingSignature(format!(
                "{} does not exist and {} carries no signature metadata: the document is unsigned",
                self.url(&self.sig_key),
                self.url(&self.key)
            )))
            }
        };
        match sig.meta(DIGEST_METADATA).map(str::to_ascii_lowercase) {
            Some(want) if want != have => Ok(Signature::Retry(StoreError::Mismatched(format!(
                "{} is the signature of another document (its {DIGEST_METADATA} is {want}, {} has sha256 {have}): \
                 a leader stopped between its two uploads, or two leaders wrote at once",
                self.url(&self.sig_key),
                self.url(&self.key)
            )))),
            _ => Ok(Signature::Found(sig.bytes, None)),
        }
    }

    async fn fetch_async(&self, if_changed_from: Option<&str>) -> Result<FetchOutcome, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A retry after a torn read must not be answered "not modified".
            let cond = if attempt == 1 { if_changed_from } else { None };
            let doc = match self
                .get(&self.key, cond, limits::MAX_DOCUMENT_BYTES)
                .await?
            {
                Get::NotModified => return Ok(FetchOutcome::Unchanged),
                Get::NotFound => {
                    return Err(StoreError::NotFound(format!(
                        "{} does not exist",
                        self.url(&self.key)
                    )))
                }
                Get::Object(o) => o,
            };
            let mut doc = doc;
            let document = self.decode(std::mem::take(&mut doc.bytes))?;
            match self.signature_of(&doc, &document).await? {
                Signature::Found(signature, signature_object) => {
                    return Ok(FetchOutcome::Fetched(Fetched {
                        document,
                        signature,
                        version: doc.etag,
                        signature_object,
                    }))
                }
                Signature::Retry(e) if attempt >= TORN_ATTEMPTS => return Err(e),
                Signature::Retry(e) => {
                    tracing::warn!(attempt, error = %e, "document and signature are from different publications; reading again");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
            }
        }
    }

    /// Upload a pair: the signature's own object first when it does not fit in metadata, then
    /// the document object (on `cond`: this is where writers are serialised), then `KEY.sig`.
    /// Then remove `obsolete`, the signature object of the pair replaced.
    async fn upload(
        &self,
        document: &[u8],
        signature: &[u8],
        cond: Cond<'_>,
        obsolete: Option<&str>,
    ) -> Result<(), StoreError> {
        let (meta, pinned) = document_metadata(document, signature);
        let pinned = pinned.map(|d| self.pinned_key(&d));
        let sig_put = |metadata| Put {
            body: signature,
            content_type: "application/pgp-signature",
            gzipped: false,
            metadata,
        };
        if let Some(k) = &pinned {
            self.put(k, sig_put(&[]), Cond::None).await?;
        }
        let z = gzip(document);
        let doc_put = Put {
            body: &z,
            content_type: "application/json",
            gzipped: true,
            metadata: &meta,
        };
        self.put(&self.key, doc_put, cond).await?;
        let sig_meta = [(DIGEST_METADATA, digest(document))];
        self.put(&self.sig_key, sig_put(&sig_meta), Cond::None)
            .await?;
        if let Some(old) = obsolete.filter(|o| Some(*o) != pinned.as_deref()) {
            self.remove(old).await;
        }
        Ok(())
    }
}

impl Store for S3Store {
    fn fetch(&self, if_changed_from: Option<&str>) -> Result<FetchOutcome, StoreError> {
        self.rt.block_on(self.fetch_async(if_changed_from))
    }

    fn publish(&self, document: &[u8], signature: &[u8]) -> Result<(), StoreError> {
        self.publish_expecting(document, signature, Expect::Any)
    }

    fn publish_expecting(
        &self,
        document: &[u8],
        signature: &[u8],
        expect: Expect<'_>,
    ) -> Result<(), StoreError> {
        let (cond, obsolete) = match expect {
            Expect::Any => (Cond::None, None),
            Expect::Absent => (Cond::Absent, None),
            Expect::Current(f) => (
                Cond::from(f.version.as_deref()),
                f.signature_object.as_deref(),
            ),
        };
        self.rt
            .block_on(self.upload(document, signature, cond, obsolete))
    }

    fn describe(&self) -> String {
        self.url(&self.key)
    }

    fn put_receipt(&self, host: &HostId, body: &[u8]) -> Result<(), StoreError> {
        self.put_receipt_object(host, body)
    }

    fn receipts(&self, limits: ReceiptLimits) -> Result<ReceiptListing, StoreError> {
        self.list_receipt_objects(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_goes_in_metadata_while_it_fits() {
        let size = |m: &[(&str, String)]| {
            m.iter()
                .map(|(k, v)| "x-amz-meta-".len() + k.len() + v.len())
                .sum::<usize>()
        };
        let (meta, pinned) = document_metadata(b"doc", &[7u8; 200]);
        assert_eq!(pinned, None);
        assert_eq!(meta[0], (DIGEST_METADATA, digest(b"doc")));
        assert_eq!(meta[1].0, SIGNATURE_METADATA);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&meta[1].1)
            .unwrap();
        assert_eq!(decoded, [7u8; 200]);
        // The largest signature that fits, and one byte more.
        let fits = (0..2048)
            .rev()
            .find(|n| document_metadata(b"doc", &vec![0; *n]).1.is_none())
            .unwrap();
        assert!(size(&document_metadata(b"doc", &vec![0; fits]).0) <= METADATA_LIMIT);
        let (meta, pinned) = document_metadata(b"doc", &vec![0; fits + 1]);
        let d = digest(&vec![0; fits + 1]);
        assert_eq!(pinned.as_deref(), Some(d.as_str()));
        assert_eq!(meta[1], (SIGNATURE_DIGEST_METADATA, d.clone()));
        assert!(is_hex_digest(&d));
        assert!(!is_hex_digest("../x") && !is_hex_digest(&d.to_uppercase()));
        eprintln!("largest signature in metadata: {fits} bytes");
    }
}
