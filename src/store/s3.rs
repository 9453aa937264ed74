//! An S3 store (aws-sdk-s3): the document at `KEY`, its signature at `KEY.sig`.
//!
//! The leader uploads the document first, then the signature. The signature object carries the
//! document's sha256 as user metadata ([`DIGEST_METADATA`], on the wire
//! `x-amz-meta-document-sha256`), so a follower that reads between the two uploads (or after a
//! leader died between them, or after another leader's upload of one half) sees at once that
//! the pair is torn, without verifying anything, and reads again. A pair that stays torn is
//! refused. A signature object without the metadata (uploaded by another tool) is passed on
//! as it is: the signature check decides.
//!
//! Fetches are conditional: with the ETag of the document the follower applied last, S3
//! answers 304 Not Modified and nothing else is read.
//!
//! Publications are conditional too, so two leaders never overwrite each other unseen: each
//! object is written with `If-Match` on the ETag the leader read (or `If-None-Match: *` when
//! there was none); S3 answers 412 (or 409 for a concurrent conditional write, 404 when the
//! object vanished) and the leader stops with [`StoreError::Conflict`].
//!
//! The SDK is async; the store keeps a current-thread tokio runtime of its own and blocks on it.

use std::time::Duration;

mod receipts;

use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::get_object::{GetObjectError, GetObjectOutput};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use sha2::Digest;

use super::s3_error::S3Failure;
use super::{Expect, FetchOutcome, Fetched, ReceiptLimits, ReceiptListing, Store, StoreError};
use crate::config::{HostId, S3Config};
use crate::document::limits;

/// User metadata key on the signature object: hex sha256 of the document it signs.
pub const DIGEST_METADATA: &str = "document-sha256";

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

/// An object as read, bounded in size.
struct Object {
    bytes: Vec<u8>,
    etag: Option<String>,
    digest: Option<String>,
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

/// Hex sha256.
pub fn digest(bytes: &[u8]) -> String {
    crate::digest::hex(&sha2::Sha256::digest(bytes))
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
        let digest = out
            .metadata()
            .and_then(|m| m.get(DIGEST_METADATA))
            .map(|d| d.trim().to_ascii_lowercase());
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
            digest,
        }))
    }

    async fn put(
        &self,
        key: &str,
        body: &[u8],
        content_type: &str,
        digest: Option<&str>,
        cond: Cond<'_>,
    ) -> Result<(), StoreError> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body.to_vec()));
        if let Some(d) = digest {
            req = req.metadata(DIGEST_METADATA, d);
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
            let sig = match self
                .get(&self.sig_key, None, limits::MAX_SIGNATURE_BYTES)
                .await?
            {
                Get::Object(o) => o,
                Get::NotModified | Get::NotFound => {
                    return Err(StoreError::MissingSignature(format!(
                        "{} does not exist: the document is unsigned",
                        self.url(&self.sig_key)
                    )))
                }
            };
            let have = digest(&doc.bytes);
            match &sig.digest {
                Some(want) if *want != have => {
                    if attempt >= TORN_ATTEMPTS {
                        return Err(StoreError::Mismatched(format!(
                            "{} is the signature of another document (its {DIGEST_METADATA} is {want}, {} has sha256 {have}): \
                             a leader stopped between its two uploads, or two leaders wrote at once",
                            self.url(&self.sig_key),
                            self.url(&self.key)
                        )));
                    }
                    tracing::warn!(
                        attempt,
                        "document and signature objects are from different uploads; reading again"
                    );
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                _ => {
                    return Ok(FetchOutcome::Fetched(Fetched {
                        document: doc.bytes,
                        signature: sig.bytes,
                        version: doc.etag,
                        signature_version: sig.etag,
                    }))
                }
            }
        }
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
        let (doc_cond, sig_cond) = match expect {
            Expect::Any => (Cond::None, Cond::None),
            Expect::Absent => (Cond::Absent, Cond::None),
            Expect::Current(f) => (Cond::from(f.version.as_deref()), Cond::None),
        };
        // The document write is where leaders are serialised: the one whose If-Match fails
        // stops before touching the signature. The signature is conditional only for
        // co-signers ([`Store::publish_signature`]).
        self.rt.block_on(async {
            self.put(&self.key, document, "application/json", None, doc_cond)
                .await?;
            self.put(
                &self.sig_key,
                signature,
                "application/pgp-signature",
                Some(&digest(document)),
                sig_cond,
            )
            .await
        })
    }

    fn publish_signature(&self, current: &Fetched, signature: &[u8]) -> Result<(), StoreError> {
        self.rt.block_on(self.put(
            &self.sig_key,
            signature,
            "application/pgp-signature",
            Some(&digest(&current.document)),
            Cond::from(current.signature_version.as_deref()),
        ))
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
