//! The `nft` binary as a transport: pipe the rendered script to `nft -f -` (one transaction),
//! read our table back with `nft -s -p list table inet reyes`.

use std::sync::Arc;

use crate::backend::NamedCount;
use crate::compile::TABLE;
use crate::exec::{Runner, ToolFailure};

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
    #[error("nft refused the ruleset (nothing was changed): {}", .0.stderr)]
    Refused(ToolFailure),
    /// Read-back failed.
    #[error("nft list failed: {}", .0.stderr)]
    List(ToolFailure),
}

/// Runs the `nft` binary.
#[derive(Debug, Clone)]
pub struct NftCli {
    bin: String,
    runner: Arc<dyn Runner>,
}

impl Default for NftCli {
    fn default() -> Self {
        NftCli::with_binary(std::env::var("REYES_NFT").unwrap_or_else(|_| "nft".to_string()))
    }
}

impl NftCli {
    /// Use this `nft` binary (or wrapper).
    pub fn with_binary(bin: impl Into<String>) -> NftCli {
        NftCli {
            bin: bin.into(),
            runner: crate::exec::system(),
        }
    }

    /// The same binary, run by `runner` (tests use a fake).
    pub fn with_runner(self, runner: Arc<dyn Runner>) -> NftCli {
        NftCli { runner, ..self }
    }

    /// Run nft: whether it succeeded, its output, and its failure (for the error, if it failed).
    fn run(
        &self,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<(bool, String, ToolFailure), NftError> {
        let out = self
            .runner
            .run(&self.bin, args, stdin)
            .map_err(|e| NftError::Spawn {
                bin: e.bin,
                source: e.source,
            })?;
        let failure = ToolFailure::new(&self.bin, args, &out);
        Ok((out.ok, out.stdout, failure))
    }

    /// Apply a script in one transaction.
    pub fn apply(&self, script: &str) -> Result<(), NftError> {
        let (ok, _, failure) = self.run(&["-f", "-"], Some(script))?;
        if ok {
            Ok(())
        } else {
            Err(NftError::Refused(failure))
        }
    }

    /// Check a script without applying it (`nft -c -f -`).
    pub fn check(&self, script: &str) -> Result<(), NftError> {
        let (ok, _, failure) = self.run(&["-c", "-f", "-"], Some(script))?;
        if ok {
            Ok(())
        } else {
            Err(NftError::Refused(failure))
        }
    }

    /// Our table as nft prints it (stateless, numeric protocols), or `None` if absent.
    pub fn list_table(&self) -> Result<Option<String>, NftError> {
        let (ok, stdout, failure) =
            self.run(&["-s", "-p", "list", "table", "inet", TABLE], None)?;
        if ok {
            Ok(Some(stdout))
        } else if failure.stderr.contains("No such file or directory") {
            Ok(None)
        } else {
            Err(NftError::List(failure))
        }
    }

    /// Whether our base chain exists (cheap presence check).
    pub fn table_present(&self) -> Result<bool, NftError> {
        let (ok, _, failure) = self.run(
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
        } else if failure.stderr.contains("No such file or directory") {
            Ok(false)
        } else {
            Err(NftError::List(failure))
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

    /// Packets and bytes of every named counter of the table whose name starts with
    /// `prefix`, in listing order; empty when the table is absent.
    pub fn counters(&self, prefix: &str) -> Result<Vec<NamedCount>, NftError> {
        let (ok, stdout, _) = self.run(&["list", "counters", "table", "inet", TABLE], None)?;
        if !ok {
            return Ok(Vec::new());
        }
        Ok(parse_counters(&stdout, prefix))
    }
}

/// `counter NAME { packets P bytes B }` blocks of an `nft list counters` listing.
fn parse_counters(text: &str, prefix: &str) -> Vec<NamedCount> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let (Some(name), Some(&"{")) = (words.get(i + 1), words.get(i + 2)) else {
            continue;
        };
        if *w != "counter" || !name.starts_with(prefix) {
            continue;
        }
        let rest = &words[i + 3..];
        let end = rest.iter().position(|w| *w == "}").unwrap_or(rest.len());
        let num = |key: &str| {
            rest[..end]
                .windows(2)
                .find(|w| w[0] == key)
                .and_then(|w| w[1].parse::<u64>().ok())
        };
        if let Some(c) = num("packets").zip(num("bytes")) {
            out.push((name.to_string(), c));
        }
    }
    out
}

#[cfg(test)]
mod counter_tests {
    #[test]
    fn parses_named_counters_by_prefix() {
        let text = "table inet reyes {\n\tcounter accepted {\n\t\tpackets 3 bytes 180\n\t}\n\
                    \tcounter audit_g_sg_a {\n\t\tpackets 2 bytes 120\n\t}\n\
                    \tcounter audit_p_1a2b {\n\t\tpackets 0 bytes 0\n\t}\n}\n";
        assert_eq!(
            super::parse_counters(text, "audit_"),
            vec![
                ("audit_g_sg_a".to_string(), (2, 120)),
                ("audit_p_1a2b".to_string(), (0, 0))
            ]
        );
    }
}
