//! Receipts on S3: `PREFIX/receipts/<host id>.json` beside the document `PREFIX/rules.json`.
//! A follower writes only its own key (so its credentials can be limited to it); `reyes fleet`
//! lists the prefix (ListObjectsV2, one level) and reads every object, a few at a time.

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;

use super::S3Store;
use crate::config::HostId;
use crate::store::receipts::{s3_prefix, ListedReceipt, ReceiptLimits, ReceiptListing};
use crate::store::s3_error::S3Failure;
use crate::store::StoreError;

/// Receipts read at once.
const CONCURRENT_READS: usize = 16;

impl S3Store {
    fn receipt_prefix(&self) -> String {
        s3_prefix(&self.key)
    }

    /// Write (replace) `host`'s receipt.
    pub(super) fn put_receipt_object(&self, host: &HostId, body: &[u8]) -> Result<(), StoreError> {
        let key = format!("{}{}", self.receipt_prefix(), host.file_name());
        self.rt.block_on(async {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .content_type("application/json")
                .body(ByteStream::from(body.to_vec()))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| S3Failure::new("write", &self.bucket, &key, &e).into())
        })
    }

    /// Every object directly under the receipts prefix.
    pub(super) fn list_receipt_objects(
        &self,
        limits: ReceiptLimits,
    ) -> Result<ReceiptListing, StoreError> {
        let prefix = self.receipt_prefix();
        self.rt.block_on(async {
            let (listed, truncated) = self.list(&prefix, limits.max_count).await?;
            let mut receipts: Vec<Option<ListedReceipt>> = Vec::new();
            let mut reads = tokio::task::JoinSet::new();
            // What the reads may hold in all: each is charged its listed size (the most it
            // can read when the size is unknown) before it starts.
            let mut spent = 0u64;
            for (i, (key, size)) in listed.into_iter().enumerate() {
                let name = key.strip_prefix(&prefix).unwrap_or(&key).to_string();
                receipts.push(None);
                if size.is_some_and(|n| n > limits.max_bytes as i64) {
                    let body = Err(too_large(&self.bucket, &key, limits.max_bytes));
                    receipts[i] = Some(ListedReceipt { name, body });
                    continue;
                }
                let charge = size.map_or(limits.max_bytes, |n| n.max(0) as u64);
                if spent.saturating_add(charge) > limits.max_total {
                    let what = format!("s3://{}/{key}", self.bucket);
                    let body = Err(limits.budget_spent(&what));
                    receipts[i] = Some(ListedReceipt { name, body });
                    continue;
                }
                spent += charge;
                while reads.len() >= CONCURRENT_READS {
                    if let Some(Ok((j, r))) = reads.join_next().await {
                        receipts[j] = Some(r);
                    }
                }
                let (client, bucket) = (self.client.clone(), self.bucket.clone());
                reads.spawn(async move {
                    let body = read_limited(&client, &bucket, &key, limits.max_bytes).await;
                    (i, ListedReceipt { name, body })
                });
            }
            while let Some(joined) = reads.join_next().await {
                if let Ok((j, r)) = joined {
                    receipts[j] = Some(r);
                }
            }
            Ok(ReceiptListing {
                receipts: receipts.into_iter().flatten().collect(),
                truncated,
            })
        })
    }

    /// Keys and sizes directly under `prefix`, at most `max`; whether there were more.
    async fn list(
        &self,
        prefix: &str,
        max: usize,
    ) -> Result<(Vec<(String, Option<i64>)>, bool), StoreError> {
        let mut found = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .delimiter("/")
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| StoreError::from(S3Failure::new("list", &self.bucket, prefix, &e)))?;
            for o in out.contents() {
                if let Some(k) = o.key() {
                    if found.len() == max {
                        return Ok((found, true));
                    }
                    found.push((k.to_string(), o.size()));
                }
            }
            match (out.is_truncated(), out.next_continuation_token()) {
                (Some(true), Some(t)) => token = Some(t.to_string()),
                _ => return Ok((found, false)),
            }
        }
    }
}

fn too_large(bucket: &str, key: &str, max: u64) -> StoreError {
    StoreError::TooLarge(format!(
        "s3://{bucket}/{key} is larger than the limit of {max} bytes"
    ))
}

/// One object's bytes, at most `max` of them.
async fn read_limited(
    client: &Client,
    bucket: &str,
    key: &str,
    max: u64,
) -> Result<Vec<u8>, StoreError> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| StoreError::from(S3Failure::new("read", bucket, key, &e)))?;
    if out.content_length().is_some_and(|n| n > max as i64) {
        return Err(too_large(bucket, key, max));
    }
    let mut body = out.body;
    let mut bytes = Vec::new();
    while let Some(chunk) = body.try_next().await.map_err(|e| {
        StoreError::Io(format!(
            "cannot read s3://{bucket}/{key}: {}",
            DisplayErrorContext(e)
        ))
    })? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > max {
            return Err(too_large(bucket, key, max));
        }
    }
    Ok(bytes)
}
