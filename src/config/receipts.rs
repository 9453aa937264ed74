//! Receipts: the follower's host id, and the `fleet` section (how `reyes fleet` judges them).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{de_duration, ser_duration};

/// The longest host id: it names a file and an S3 object.
pub const MAX_HOST_ID: usize = 128;

/// A host id that is not usable as a receipt name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host id {shown:?}: {why} (1 to 128 of A-Z a-z 0-9 . _ : -, not starting with . or -)")]
pub struct HostIdError {
    /// The id, shortened and with control characters escaped.
    pub shown: String,
    /// What is wrong.
    pub why: &'static str,
}

/// A host's name in the fleet: the receipt is `receipts/<host id>.json`. Only letters, digits,
/// `.`, `_`, `:` and `-`, at most [`MAX_HOST_ID`], not starting with `.` or `-`: never a path
/// separator, `..`, a hidden file or an option. (`:` lets an S3 user id, `ROLEID:SESSION`, be
/// a host id, for IAM policies that allow each host only its own receipt.)
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(String);

impl HostId {
    /// Check `s`.
    pub fn new(s: &str) -> Result<HostId, HostIdError> {
        let err = |why| HostIdError {
            shown: s.chars().take(MAX_HOST_ID + 8).collect(),
            why,
        };
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.len() > MAX_HOST_ID {
            return Err(err("too long"));
        }
        if s.starts_with(['.', '-']) {
            return Err(err("starts with . or -"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return Err(err("has a character outside the allowed set"));
        }
        Ok(HostId(s.to_string()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The receipt's file (and object) name: `<id>.json`.
    pub fn file_name(&self) -> String {
        format!("{}.json", self.0)
    }

    /// The host id a receipt file (or object) name stands for, if it is one.
    pub fn from_file_name(name: &str) -> Option<HostId> {
        HostId::new(name.strip_suffix(".json")?).ok()
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for HostId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HostId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostId::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A host state `reyes fleet` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// Runs the published serial.
    Current,
    /// Runs an older serial.
    Lagging,
    /// Runs a newer serial than the store holds (the store went back).
    Ahead,
    /// Refused the published document (exit 3).
    Refusing,
    /// Its last run failed otherwise (store, kernel, config).
    Failing,
    /// Its live table is not what it applied.
    Drifted,
    /// Its disable file exists.
    Disabled,
    /// No receipt for longer than `fleet.silent_after` intervals.
    Silent,
    /// Its receipt cannot be read, is too large, or is not a receipt.
    Malformed,
}

impl HostState {
    /// Every state, in report order.
    pub const ALL: [HostState; 9] = [
        HostState::Malformed,
        HostState::Silent,
        HostState::Refusing,
        HostState::Failing,
        HostState::Drifted,
        HostState::Ahead,
        HostState::Lagging,
        HostState::Disabled,
        HostState::Current,
    ];

    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            HostState::Current => "current",
            HostState::Lagging => "lagging",
            HostState::Ahead => "ahead",
            HostState::Refusing => "refusing",
            HostState::Failing => "failing",
            HostState::Drifted => "drifted",
            HostState::Disabled => "disabled",
            HostState::Silent => "silent",
            HostState::Malformed => "malformed",
        }
    }
}

impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How `reyes fleet` judges the receipts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// How often the followers run (their `--interval`): the unit of the two below.
    #[serde(
        default = "default_interval",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub interval: Duration,
    /// A host whose newest receipt is older than this many intervals is silent.
    #[serde(default = "default_intervals")]
    pub silent_after: u32,
    /// A host still behind the published serial this many intervals after that document was
    /// issued is outside tolerance (before that it is lagging, but within it).
    #[serde(default = "default_intervals")]
    pub lagging_after: u32,
    /// States that never make `reyes fleet` exit 1 (e.g. `[disabled]`).
    #[serde(default)]
    pub tolerate: Vec<HostState>,
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_intervals() -> u32 {
    3
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            interval: default_interval(),
            silent_after: default_intervals(),
            lagging_after: default_intervals(),
            tolerate: Vec::new(),
        }
    }
}

impl FleetConfig {
    /// How old a receipt may be before its host is silent.
    pub fn silent_after(&self) -> Duration {
        self.interval.saturating_mul(self.silent_after)
    }

    /// How long after a document's issue a host may still run an older one.
    pub fn lagging_after(&self) -> Duration {
        self.interval.saturating_mul(self.lagging_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids() {
        for ok in [
            "i-0abc123",
            "web-1.prod.example.com",
            "a",
            "A_b.c-9",
            "AROAEXAMPLEID:i-0abc123",
        ] {
            assert_eq!(HostId::new(ok).unwrap().as_str(), ok);
        }
        let long = "a".repeat(MAX_HOST_ID + 1);
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-rf",
            "a/b",
            "../x",
            "a\\b",
            "a b",
            "a\nb",
            "é",
            "a;b",
            long.as_str(),
        ] {
            assert!(HostId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            HostId::new(&"a".repeat(MAX_HOST_ID))
                .unwrap()
                .as_str()
                .len(),
            128
        );
        let e = HostId::new("a\u{1b}[2J").unwrap_err().to_string();
        assert!(e.contains("\\u{1b}"), "control characters are escaped: {e}");
        assert_eq!(
            HostId::from_file_name("web-1.json"),
            Some(HostId::new("web-1").unwrap())
        );
        assert_eq!(HostId::from_file_name("web-1.txt"), None);
        assert_eq!(HostId::from_file_name(".json"), None);
        assert_eq!(HostId::new("x").unwrap().file_name(), "x.json");
    }

    #[test]
    fn a_bad_host_id_in_the_config_names_its_line() {
        let text = "environment: p\nstore: {directory: s}\nfollower:\n  receipts: true\n  host_id: ../etc/x\n";
        let e = crate::config::Config::parse(text, std::path::Path::new("r.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("r.yaml:5:"), "{e}");
        assert!(e.contains("host id \"../etc/x\""), "{e}");
        let text = "environment: p\nstore: {directory: s}\nfleet: {tolerate: [sleepy]}\n";
        assert!(crate::config::Config::parse(text, std::path::Path::new("r.yaml")).is_err());
    }

    #[test]
    fn fleet_defaults_and_durations() {
        let f = FleetConfig::default();
        assert_eq!(f.silent_after(), Duration::from_secs(180));
        assert_eq!(f.lagging_after(), Duration::from_secs(180));
        let f: FleetConfig =
            serde_saphyr::from_str("interval: 5m\nsilent_after: 2\ntolerate: [disabled]\n")
                .unwrap();
        assert_eq!(f.silent_after(), Duration::from_secs(600));
        assert_eq!(f.tolerate, [HostState::Disabled]);
    }
}
