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
/// Times past the year 9999 (RFC 3339's last) are written as seconds since the epoch
/// instead: they can come from outside (a state file), and formatting must not fail.
pub fn rfc3339(t: SystemTime) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if write!(s, "{}", humantime::format_rfc3339_seconds(t)).is_err() {
        s.clear();
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        s = format!("{secs} s after 1970-01-01 (past the year 9999)");
    }
    s
}

/// Parse an RFC 3339 UTC time.
pub fn parse_time(s: &str) -> Result<SystemTime, TimeError> {
    humantime::parse_rfc3339(s).map_err(|source| TimeError {
        input: s.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_past_the_year_9999_are_written_as_seconds_not_a_panic() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_800);
        assert_eq!(
            rfc3339(t),
            "253402300800 s after 1970-01-01 (past the year 9999)"
        );
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799);
        assert_eq!(rfc3339(t), "9999-12-31T23:59:59Z");
    }
}
