//! RFC 3339 UTC times, as the document and the config write them.

use std::time::SystemTime;

/// A time field that is not RFC 3339 UTC.
#[derive(Debug, thiserror::Error)]
#[error("{input:?} is not an RFC 3339 UTC time ({source})")]
pub struct TimeError {
    /// The text.
    pub input: String,
    /// Why.
    #[source]
    pub source: humantime::TimestampError,
}

/// Format a time as RFC 3339 UTC to the second.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Parse an RFC 3339 UTC time.
pub fn parse_time(s: &str) -> Result<SystemTime, TimeError> {
    humantime::parse_rfc3339(s).map_err(|source| TimeError {
        input: s.to_string(),
        source,
    })
}
