//! A failed S3 request as one line a user can act on: the operation, the object, the AWS error
//! code and message, and what to do. Never the SDK's debug dump (response headers, the XML
//! body, internal type names).

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// An S3 request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {op} s3://{bucket}/{key}: {reason}{}", hint.map(|h| format!(": {h}")).unwrap_or_default())]
pub struct S3Failure {
    /// `read`, `write` or `delete`.
    pub op: &'static str,
    /// The bucket.
    pub bucket: String,
    /// The object key.
    pub key: String,
    /// The AWS error code (`NoSuchBucket`, `AccessDenied`, ...), when S3 answered with one.
    pub code: Option<String>,
    /// What went wrong: the code and S3's message, or the transport's reason.
    pub reason: String,
    /// What to do about it, when known.
    pub hint: Option<&'static str>,
}

impl S3Failure {
    /// Describe `e`, a failed `op` (`read`, `write`, `delete`) of `bucket`/`key`.
    pub fn new<E, R>(op: &'static str, bucket: &str, key: &str, e: &SdkError<E, R>) -> S3Failure
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let code = e.code().map(str::to_string);
        let reason = match (&code, e.message()) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.clone(),
            (None, _) => transport_reason(e),
        };
        let hint = match code.as_deref() {
            Some(c) => code_hint(c, op),
            None => match e {
                SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                    Some("check the network and store.s3.endpoint / store.s3.region")
                }
                _ => None,
            },
        };
        S3Failure {
            op,
            bucket: bucket.to_string(),
            key: key.to_string(),
            code,
            reason,
            hint,
        }
    }
}

/// The innermost cause of a failure without an AWS error code (connection refused, DNS,
/// timeout), on one line.
fn transport_reason<E, R>(e: &SdkError<E, R>) -> String
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let kind = match e {
        SdkError::ConstructionFailure(_) => "the request could not be built",
        SdkError::TimeoutError(_) => "timed out",
        SdkError::DispatchFailure(_) => "the request could not be sent",
        SdkError::ResponseError(_) => "the response could not be read",
        SdkError::ServiceError(_) => "S3 refused the request",
        _ => "the request failed",
    };
    let mut inner: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut last = None;
    while let Some(s) = inner {
        last = Some(s.to_string());
        inner = s.source();
    }
    match last {
        Some(l) if !l.is_empty() => format!("{kind} ({})", one_line(&l)),
        _ => kind.to_string(),
    }
}

fn one_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    line.chars().take(200).collect()
}

/// What to do about an AWS error code.
fn code_hint(code: &str, op: &str) -> Option<&'static str> {
    Some(match code {
        "NoSuchBucket" => "create it or fix store.s3.bucket",
        "AccessDenied" | "AllAccessDisabled" if op == "list" => {
            "allow s3:ListBucket on the bucket, for this prefix, for these credentials"
        }
        "AccessDenied" | "AllAccessDisabled" if op == "delete" => {
            "allow s3:DeleteObject on KEY.sig.* for the leaders, or remove the object by hand"
        }
        "AccessDenied" | "AllAccessDisabled" if op == "write" => {
            "allow s3:PutObject on this key for these credentials, or fix store.s3.bucket / store.s3.key"
        }
        "AccessDenied" | "AllAccessDisabled" => {
            "allow s3:GetObject on this key for these credentials, or fix store.s3.bucket / store.s3.key"
        }
        "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" => {
            "check the AWS credentials this host uses"
        }
        "ExpiredToken" | "TokenRefreshRequired" => "refresh the AWS credentials",
        "PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException" => {
            "set store.s3.region to the bucket's region"
        }
        "SlowDown" | "ServiceUnavailable" | "InternalError" | "RequestTimeout" => {
            "S3 is busy or failing; the next run tries again"
        }
        "PreconditionFailed" => "another writer changed the object in between; run again",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_with_code_message_and_hint() {
        let f = S3Failure {
            op: "write",
            bucket: "b".into(),
            key: "prod/rules.json".into(),
            code: Some("NoSuchBucket".into()),
            reason: "NoSuchBucket: The specified bucket does not exist".into(),
            hint: code_hint("NoSuchBucket", "write"),
        };
        assert_eq!(
            f.to_string(),
            "cannot write s3://b/prod/rules.json: NoSuchBucket: The specified bucket does not exist: create it or fix store.s3.bucket"
        );
        assert!(code_hint("AccessDenied", "read")
            .unwrap()
            .contains("GetObject"));
        assert!(code_hint("AccessDenied", "write")
            .unwrap()
            .contains("PutObject"));
        assert_eq!(code_hint("Whatever", "read"), None);
    }
}
