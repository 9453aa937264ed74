//! The host context of the last apply, kept beside last-good in the state directory as
//! `host-context.json`: the addresses, enforce mode, CIDRs, failsafe entries and logging the
//! ruleset was compiled with, and the backend and nft transport it went through.
//!
//! `reyes restore` runs at boot before the network is configured, when address discovery
//! finds nothing; it compiles last-good with this record instead, so the host comes up with
//! exactly the table it had.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::compile::HostContext;
use crate::state::StateDir;

/// File name in the state directory.
pub const FILE: &str = "host-context.json";

/// The host record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HostRecordError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("{path} is corrupt ({source}); it is rewritten by the next apply")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// What an apply used besides the document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// The compile context (addresses, enforce mode, options).
    pub context: HostContext,
    /// `nft` or `iptables`.
    pub backend: String,
    /// `netlink`, `cli`, or `-`.
    pub transport: String,
}

fn path(state: &StateDir) -> PathBuf {
    state.path().join(FILE)
}

/// The record, if there is one.
pub fn load(state: &StateDir) -> Result<Option<HostRecord>, HostRecordError> {
    let p = path(state);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| HostRecordError::Corrupt { path: p, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(HostRecordError::Io { path: p, source }),
    }
}

/// Write the record, unless the file already says exactly this (a steady state writes
/// nothing).
pub fn save(state: &StateDir, r: &HostRecord) -> Result<(), HostRecordError> {
    let p = path(state);
    let mut bytes = serde_json::to_vec_pretty(r).map_err(|source| HostRecordError::Corrupt {
        path: p.clone(),
        source,
    })?;
    bytes.push(b'\n');
    if std::fs::read(&p).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    write(&p, &bytes)
}

fn write(p: &Path, bytes: &[u8]) -> Result<(), HostRecordError> {
    crate::store::directory::write_atomic(p, bytes).map_err(|source| HostRecordError::Io {
        path: p.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::Target;

    #[test]
    fn round_trip_and_no_rewrite_when_equal() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        assert_eq!(load(&s).unwrap(), None);
        let mut ctx = HostContext::new(Target::Host(vec!["10.1.0.12".parse().unwrap()]));
        ctx.log_drop = true;
        ctx.failsafe = crate::config::Config::parse(
            "environment: p\nstore: {directory: s}\nfollower:\n  failsafe: [{proto: tcp, port: 22, from: 10.9.0.0/24}]\n",
            Path::new("x.yaml"),
        )
        .unwrap()
        .follower
        .failsafe;
        let r = HostRecord {
            context: ctx,
            backend: "nft".into(),
            transport: "netlink".into(),
        };
        save(&s, &r).unwrap();
        assert_eq!(load(&s).unwrap(), Some(r.clone()));
        // Same record: the file is not touched.
        let before = std::fs::metadata(d.path().join(FILE))
            .unwrap()
            .modified()
            .unwrap();
        let ino = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p).unwrap().ino()
        };
        let i1 = ino(&d.path().join(FILE));
        save(&s, &r).unwrap();
        assert_eq!(ino(&d.path().join(FILE)), i1);
        assert_eq!(
            std::fs::metadata(d.path().join(FILE))
                .unwrap()
                .modified()
                .unwrap(),
            before
        );
        std::fs::write(d.path().join(FILE), b"{").unwrap();
        let e = load(&s).unwrap_err();
        assert!(e.to_string().contains(FILE), "{e}");
    }
}
