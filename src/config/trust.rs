//! The store and signing sections: where documents live, and whose signatures count.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{normalise_fingerprint, parse_duration, ser_duration, ValueError, MAX_VALIDITY};

/// S3 store settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, try_from = "RawS3")]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Object key of the document; the signature is at `KEY.sig`.
    pub key: String,
    /// Region (default: from the environment).
    #[serde(default)]
    pub region: Option<String>,
    /// An S3-compatible endpoint (path-style addressing is used when set).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Allow an `http://` endpoint that is not a loopback address.
    #[serde(default)]
    pub allow_http: bool,
}

/// Refuse a plain-http endpoint to anything but loopback unless allowed.
fn check_endpoint(endpoint: &str, allow_http: bool) -> Result<(), ValueError> {
    let Some(rest) = endpoint
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("http://"))
        .map(|_| &endpoint[7..])
    else {
        return Ok(());
    };
    if allow_http {
        return Ok(());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(ValueError::PlainHttp(endpoint.to_string()))
    }
}

/// A trusted signer: a primary-key fingerprint, optionally only within a time window (key
/// rotation). In YAML either the fingerprint alone or
/// `{fingerprint: ..., not_before: RFC3339, not_after: RFC3339}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// Upper-case hex.
    pub fingerprint: String,
    /// Signatures count only from this time on.
    pub not_before: Option<SystemTime>,
    /// Signatures count only until this time.
    pub not_after: Option<SystemTime>,
}

impl TrustedKey {
    /// A fingerprint without a window.
    pub fn new(fingerprint: &str) -> Result<TrustedKey, ValueError> {
        Ok(TrustedKey {
            fingerprint: normalise_fingerprint(fingerprint)?,
            not_before: None,
            not_after: None,
        })
    }

    /// Whether the window holds `t`.
    pub fn valid_at(&self, t: SystemTime) -> bool {
        self.not_before.is_none_or(|nb| t >= nb) && self.not_after.is_none_or(|na| t <= na)
    }
}

impl Serialize for TrustedKey {
    /// The plain fingerprint, or the windowed form when a window is set (as it is written).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if self.not_before.is_none() && self.not_after.is_none() {
            return s.serialize_str(&self.fingerprint);
        }
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("fingerprint", &self.fingerprint)?;
        if let Some(t) = self.not_before {
            m.serialize_entry("not_before", &crate::timefmt::rfc3339(t))?;
        }
        if let Some(t) = self.not_after {
            m.serialize_entry("not_after", &crate::timefmt::rfc3339(t))?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for TrustedKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Plain(String),
            Windowed {
                fingerprint: String,
                #[serde(default)]
                not_before: Option<String>,
                #[serde(default)]
                not_after: Option<String>,
            },
        }
        let time = |t: Option<String>| {
            t.map(|t| crate::timefmt::parse_time(&t))
                .transpose()
                .map_err(ValueError::from)
        };
        let k = match Raw::deserialize(d)? {
            Raw::Plain(f) => TrustedKey::new(&f),
            Raw::Windowed {
                fingerprint,
                not_before,
                not_after,
            } => (|| {
                let k = TrustedKey {
                    fingerprint: normalise_fingerprint(&fingerprint)?,
                    not_before: time(not_before)?,
                    not_after: time(not_after)?,
                };
                match (k.not_before, k.not_after) {
                    (Some(b), Some(a)) if b > a => Err(ValueError::EmptyWindow(k.fingerprint)),
                    _ => Ok(k),
                }
            })(),
        };
        k.map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    bucket: String,
    key: String,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    allow_http: bool,
}

impl TryFrom<RawS3> for S3Config {
    type Error = ValueError;
    fn try_from(r: RawS3) -> Result<Self, ValueError> {
        if let Some(e) = &r.endpoint {
            check_endpoint(e, r.allow_http)?;
        }
        Ok(S3Config {
            bucket: r.bucket,
            key: r.key,
            region: r.region,
            endpoint: r.endpoint,
            allow_http: r.allow_http,
        })
    }
}

/// Signing and verification keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// Leader: the OpenPGP secret key (exported by GnuPG or made by `reyes keygen`).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Passphrase for `key`, first line of this file.
    #[serde(default)]
    pub passphrase_file: Option<PathBuf>,
    /// Follower: a certificate file, or a directory of them.
    #[serde(default)]
    pub keyring: Option<PathBuf>,
    /// Optional allowlist of primary-key fingerprints (hex, spaces ignored), each optionally
    /// with a `not_before`/`not_after` window.
    #[serde(default)]
    pub trusted_fingerprints: Vec<TrustedKey>,
    /// `not_after = issued_at + validity` (at most [`MAX_VALIDITY`]).
    #[serde(
        default = "default_validity",
        deserialize_with = "de_validity",
        serialize_with = "ser_duration"
    )]
    pub validity: Duration,
    /// A document applies only with good signatures by this many distinct trusted primary
    /// keys (k of n).
    #[serde(default = "default_threshold", deserialize_with = "de_threshold")]
    pub threshold: usize,
}

fn default_threshold() -> usize {
    1
}

fn de_threshold<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        0 => Err(serde::de::Error::custom(ValueError::Threshold)),
        n => Ok(n),
    }
}

fn de_validity<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    let v = parse_duration(&s).map_err(serde::de::Error::custom)?;
    if v > MAX_VALIDITY {
        return Err(serde::de::Error::custom(ValueError::ValidityTooLong(s)));
    }
    Ok(v)
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            key: None,
            passphrase_file: None,
            keyring: None,
            trusted_fingerprints: Vec::new(),
            validity: default_validity(),
            threshold: default_threshold(),
        }
    }
}

fn default_validity() -> Duration {
    Duration::from_secs(3600)
}
