//! The `nft` binary as a transport: pipe the rendered script to `nft -f -` (one transaction),
//! read our table back with `nft -s -p list table inet reyes`.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::compile::TABLE;

/// `nft` failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The binary could not be run.
    #[error(
        "cannot run {bin}: {source} (install the nftables package, or use --backend iptables)"
    )]
    Spawn {
        /// Which binary.
        bin: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel or nft refused the script; nothing was changed.
    #[error("nft refused the ruleset (nothing was changed): {stderr}")]
    Refused {
        /// What nft said.
        stderr: String,
    },
    /// Read-back failed.
    #[error("nft list failed: {0}")]
    List(String),
}

/// Runs the `nft` binary.
#[derive(Debug, Clone)]
pub struct NftCli {
    bin: String,
}

impl Default for NftCli {
    fn default() -> Self {
        NftCli {
            bin: std::env::var("REYES_NFT").unwrap_or_else(|_| "nft".to_string()),
        }
    }
}

impl NftCli {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<(bool, String, String), NftError> {
        let mut child = Command::new(&self.bin)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NftError::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error (nft exited early) shows up in its exit status and stderr.
            let _ = pipe.write_all(text.as_bytes());
        }
        let out = child.wait_with_output().map_err(|source| NftError::Spawn {
            bin: self.bin.clone(),
            source,
        })?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }

    /// Apply a script in one transaction.
    pub fn apply(&self, script: &str) -> Result<(), NftError> {
        let (ok, _, stderr) = self.run(&["-f", "-"], Some(script))?;
        if ok {
            Ok(())
        } else {
            Err(NftError::Refused { stderr })
        }
    }

    /// Check a script without applying it (`nft -c -f -`).
    pub fn check(&self, script: &str) -> Result<(), NftError> {
        let (ok, _, stderr) = self.run(&["-c", "-f", "-"], Some(script))?;
        if ok {
            Ok(())
        } else {
            Err(NftError::Refused { stderr })
        }
    }

    /// Our table as nft prints it (stateless, numeric protocols), or `None` if absent.
    pub fn list_table(&self) -> Result<Option<String>, NftError> {
        let (ok, stdout, stderr) = self.run(&["-s", "-p", "list", "table", "inet", TABLE], None)?;
        if ok {
            Ok(Some(stdout))
        } else if stderr.contains("No such file or directory") {
            Ok(None)
        } else {
            Err(NftError::List(stderr))
        }
    }

    /// Whether our base chain exists (cheap presence check).
    pub fn table_present(&self) -> Result<bool, NftError> {
        let (ok, _, stderr) = self.run(
            &[
                "-s",
                "list",
                "chain",
                "inet",
                TABLE,
                crate::compile::INPUT_CHAIN,
            ],
            None,
        )?;
        if ok {
            Ok(true)
        } else if stderr.contains("No such file or directory") {
            Ok(false)
        } else {
            Err(NftError::List(stderr))
        }
    }

    /// A named counter's packets and bytes.
    pub fn counter(&self, name: &str) -> Result<Option<(u64, u64)>, NftError> {
        let (ok, stdout, _) = self.run(&["list", "counter", "inet", TABLE, name], None)?;
        if !ok {
            return Ok(None);
        }
        let words: Vec<&str> = stdout.split_whitespace().collect();
        let num = |key: &str| {
            words
                .windows(2)
                .find(|w| w[0] == key)
                .and_then(|w| w[1].parse::<u64>().ok())
        };
        Ok(num("packets").zip(num("bytes")))
    }
}
