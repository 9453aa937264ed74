//! The nftables backend: one table, `inet reyes`, replaced in one transaction, sent either
//! through our own netlink encoder ([`netlink`]) or as a script to `nft -f -` ([`cli`]).
//!
//! [`NftBackend::plan`] is pure (the script, and the netlink batch); the apply does all I/O
//! through two seams, `nft` through an [`crate::exec::Runner`] and nf_tables through a
//! [`kernel::Kernel`], so every rollback path runs against fakes in tests.

pub mod cli;
pub mod kernel;
pub mod netlink;
pub mod render;
#[cfg(test)]
mod rollback_tests;

use std::sync::Arc;

use crate::backend::{Backend, BackendError, Counters, Mismatch, Undo};
use crate::compile::{Ruleset, AUDIT_COUNTER_PREFIX, COUNTER_ACCEPTED, COUNTER_DROPPED};

use kernel::Kernel;

/// How rulesets reach the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// The rendered script through `nft -f -`.
    #[default]
    Cli,
    /// One nf_tables batch from our own encoder; `nft` (when installed) only reads back.
    Netlink,
}

/// What an apply sends: the script, and the batch when the transport is netlink.
#[derive(Debug)]
pub struct Plan {
    /// The `nft -f` script (also what the read-back through `nft` is compared with).
    pub script: String,
    /// The netlink batch.
    pub batch: Option<netlink::Batch>,
}

/// nftables through netlink or the `nft` binary.
#[derive(Debug, Clone)]
pub struct NftBackend {
    cli: cli::NftCli,
    transport: Transport,
    kernel: Arc<dyn Kernel>,
}

impl Default for NftBackend {
    fn default() -> Self {
        NftBackend {
            cli: cli::NftCli::default(),
            transport: Transport::Cli,
            kernel: Arc::new(kernel::Netlink),
        }
    }
}

/// What was live before an apply, to put back after a failed read-back.
enum Previous {
    /// `nft list` of our table (`None`: there was none).
    Listed(Option<String>),
    /// Without `nft`: whether our table existed.
    Present(bool),
}

impl NftBackend {
    /// Using `nft` from PATH (or `$REYES_NFT`).
    pub fn new() -> NftBackend {
        NftBackend::default()
    }

    /// Applying through our netlink encoder (read-back through `nft` when it is installed).
    pub fn netlink() -> NftBackend {
        NftBackend {
            transport: Transport::Netlink,
            ..NftBackend::default()
        }
    }

    /// Using this `nft` binary (or a wrapper, e.g. one that enters a network namespace).
    pub fn with_nft(bin: impl Into<String>) -> NftBackend {
        NftBackend {
            cli: cli::NftCli::with_binary(bin),
            ..NftBackend::default()
        }
    }

    /// The same backend with another transport.
    pub fn with_transport(self, transport: Transport) -> NftBackend {
        NftBackend { transport, ..self }
    }

    /// The same backend with other seams: `nft` run by `runner`, nf_tables reached through
    /// `kernel` (tests pass fakes).
    pub fn with_seams(
        self,
        runner: Arc<dyn crate::exec::Runner>,
        kernel: Arc<dyn Kernel>,
    ) -> NftBackend {
        NftBackend {
            cli: self.cli.with_runner(runner),
            kernel,
            ..self
        }
    }

    /// The transport in use.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// What an apply of `rs` sends (no I/O but interface-index look-ups).
    pub fn plan(&self, rs: &Ruleset) -> Result<Plan, BackendError> {
        let script = render::render(rs)
            .map_err(|e| BackendError::io("rendering the nft script failed", e))?;
        let batch = match self.transport {
            Transport::Cli => None,
            Transport::Netlink => Some(
                netlink::encode(rs, &netlink::ifindex)
                    .map_err(|e| BackendError::refused("encoding the ruleset failed", e))?,
            ),
        };
        Ok(Plan { script, batch })
    }

    fn send(&self, batch: &netlink::Batch) -> Result<(), BackendError> {
        self.kernel.apply(batch).map_err(|e| match e {
            netlink::NetlinkError::Refused(_) => BackendError::refused("nf_tables", e),
            other => BackendError::io("nf_tables", other),
        })
    }

    /// Our table as `nft` lists it; `Ok(None)` also when `nft` is not installed and the
    /// transport does not need it.
    fn list_for_readback(&self) -> Result<Option<String>, BackendError> {
        match self.cli.list_table() {
            Err(cli::NftError::Spawn { .. }) if self.transport == Transport::Netlink => Ok(None),
            other => other.map_err(err),
        }
    }

    fn nft_installed(&self) -> bool {
        !matches!(self.cli.table_present(), Err(cli::NftError::Spawn { .. }))
    }

    /// After a netlink apply without `nft`: compare what netlink dumps (chains, rule counts,
    /// every set and map element) with the IR; on a difference put `previous` back through
    /// netlink, or remove our table again when there was none before.
    fn verify_netlink(
        &self,
        rs: &Ruleset,
        had_table: bool,
        previous: &dyn Fn() -> Option<Ruleset>,
    ) -> Result<(), BackendError> {
        let live = self
            .kernel
            .outline()
            .map_err(|e| BackendError::io("netlink read-back", e))?;
        let diff = netlink::readback::Outline::of(rs).diff(&live);
        if diff.is_empty() {
            return Ok(());
        }
        let previous = if had_table { previous() } else { None };
        let undo = if had_table && previous.is_none() {
            Undo {
                done: "",
                failures: vec![
                    "nft is not installed and the previous table was replaced, so it cannot be put back: \
                     apply the last good document again (reyes restore)"
                        .into(),
                ],
            }
        } else {
            self.restore_netlink(previous.as_ref())
        };
        Err(BackendError::Mismatch(Mismatch {
            what: "the kernel's table differs from the ruleset".into(),
            diff,
            undo,
        }))
    }

    /// Put back `previous` through netlink, or remove our table when there is none.
    fn restore_netlink(&self, previous: Option<&Ruleset>) -> Undo {
        let res = match previous {
            Some(rs) => netlink::encode(rs, &netlink::ifindex)
                .map_err(|e| e.to_string())
                .and_then(|b| self.kernel.apply(&b).map_err(|e| e.to_string())),
            None => self
                .kernel
                .apply(&netlink::flush_batch())
                .map_err(|e| e.to_string()),
        };
        match res {
            Ok(()) => Undo::complete(match previous {
                Some(_) => "the previous table was put back",
                None => "there was no table before; ours was removed again",
            }),
            Err(e) => Undo {
                done: "",
                failures: vec![format!("putting the previous table back failed too: {e}")],
            },
        }
    }

    /// Compare `nft list` with the script; on a difference put `previous` back through `nft`.
    fn verify_listed(&self, script: &str, previous: Option<String>) -> Result<(), BackendError> {
        let live = self.cli.list_table().map_err(err)?.unwrap_or_default();
        let want = render::normalise(render::table_block(script));
        let got = render::normalise(&live);
        if want == got {
            return Ok(());
        }
        let at = want
            .chars()
            .zip(got.chars())
            .take_while(|(a, b)| a == b)
            .count();
        let context = |s: &str| {
            s.chars()
                .skip(at.saturating_sub(60))
                .take(160)
                .collect::<String>()
        };
        let restore = match previous {
            Some(old) => format!("{}{}", render::flush_script(), old),
            None => render::flush_script(),
        };
        let undo = match self.cli.apply(&restore) {
            Ok(()) => Undo::complete("the previous table was put back"),
            Err(e) => Undo {
                done: "",
                failures: vec![format!("putting the previous table back failed too: {e}")],
            },
        };
        Err(BackendError::Mismatch(Mismatch {
            what: "the kernel's table differs from the rendered ruleset near".into(),
            diff: vec![
                format!("rendered: ...{}", context(&want)),
                format!("live:     ...{}", context(&got)),
            ],
            undo,
        }))
    }
}

/// What reyes owns in nftables, as one phrase (`nft table inet reyes (5 chains, 40 rules, 7
/// sets)`), or `None`. Read over netlink, so no `nft` binary is needed; a kernel without
/// nf_tables holds nothing of ours.
pub fn owned() -> Result<Option<String>, BackendError> {
    let Ok(sock) = netlink::Socket::open() else {
        return Ok(None);
    };
    let read = |e| BackendError::io("reading our table over netlink", e);
    if !netlink::digest::table_exists(&sock).map_err(read)? {
        return Ok(None);
    }
    let o = netlink::readback::outline(&sock).map_err(read)?;
    Ok(Some(format!(
        "nft table inet {} ({} chains, {} rules, {} sets and maps)",
        crate::compile::TABLE,
        o.chains.len(),
        o.chains.values().sum::<usize>(),
        o.sets.len()
    )))
}

/// Remove our table (over netlink), whatever the config says; returns what was removed.
pub fn remove_owned() -> Result<Option<String>, BackendError> {
    let found = owned()?;
    if found.is_some() {
        NftBackend::netlink().flush()?;
    }
    Ok(found)
}

fn err(e: cli::NftError) -> BackendError {
    match e {
        cli::NftError::Refused(_) => BackendError::refused("nft", e),
        other => BackendError::io("nft", other),
    }
}

impl Backend for NftBackend {
    fn name(&self) -> &'static str {
        "nft"
    }

    fn transport(&self) -> &'static str {
        match self.transport {
            Transport::Netlink => "netlink",
            Transport::Cli => "cli",
        }
    }

    fn render(&self, rs: &Ruleset) -> Result<String, BackendError> {
        render::render(rs).map_err(|e| BackendError::io("rendering the nft script failed", e))
    }

    /// The nf_tables batch: what the netlink transport sends, and (byte for byte, see
    /// tests/golden) what `nft -f` sends for the rendered script.
    fn batch_bytes(&self, rs: &Ruleset) -> Result<usize, BackendError> {
        netlink::encode(rs, &netlink::ifindex)
            .map(|b| b.byte_len())
            .map_err(|e| BackendError::refused("encoding the ruleset failed", e))
    }

    fn live(&self) -> Result<Option<String>, BackendError> {
        self.cli.list_table().map_err(err)
    }

    fn present(&self) -> Result<bool, BackendError> {
        if self.transport == Transport::Netlink {
            return self
                .kernel
                .table_present()
                .map_err(|e| BackendError::io("nf_tables", e));
        }
        self.cli.table_present().map_err(err)
    }

    /// Apply, read back, compare with the render; on a mismatch put the previous table back
    /// (or remove ours if there was none) and fail.
    fn apply(&self, rs: &Ruleset) -> Result<(), BackendError> {
        self.apply_replacing(rs, &|| None)
    }

    /// [`Backend::apply`]; without `nft` the previous table is put back from `previous`.
    fn apply_replacing(
        &self,
        rs: &Ruleset,
        previous: &dyn Fn() -> Option<Ruleset>,
    ) -> Result<(), BackendError> {
        let plan = self.plan(rs)?;
        let before = match self.transport {
            Transport::Netlink if !self.nft_installed() => Previous::Present(self.present()?),
            _ => Previous::Listed(self.list_for_readback()?),
        };
        match &plan.batch {
            None => self.cli.apply(&plan.script).map_err(err)?,
            Some(batch) => self.send(batch)?,
        }
        match before {
            Previous::Present(had_table) => self.verify_netlink(rs, had_table, previous),
            Previous::Listed(old) => self.verify_listed(&plan.script, old),
        }
    }

    fn flush(&self) -> Result<(), BackendError> {
        match self.transport {
            Transport::Cli => self.cli.apply(&render::flush_script()).map_err(err),
            Transport::Netlink => self.send(&netlink::flush_batch()),
        }
    }

    /// Read over netlink whatever the transport: no `nft` binary needed.
    fn digest(&self) -> Result<Option<String>, BackendError> {
        self.kernel
            .digest()
            .map_err(|e| BackendError::io("reading our table over netlink", e))
    }

    /// Over netlink with the netlink transport (no `nft` binary needed), else through `nft`.
    fn counters(&self) -> Result<Counters, BackendError> {
        if self.transport == Transport::Netlink {
            let all = self
                .kernel
                .counters()
                .map_err(|e| BackendError::io("reading our counters over netlink", e))?;
            let get = |name: &str| all.iter().find(|(n, _)| n == name).map(|(_, c)| *c);
            return Ok(Counters {
                accepted: get(COUNTER_ACCEPTED),
                dropped: get(COUNTER_DROPPED),
                audit: all
                    .iter()
                    .filter(|(n, _)| n.starts_with(AUDIT_COUNTER_PREFIX))
                    .cloned()
                    .collect(),
            });
        }
        Ok(Counters {
            accepted: self.cli.counter(COUNTER_ACCEPTED).map_err(err)?,
            dropped: self.cli.counter(COUNTER_DROPPED).map_err(err)?,
            audit: self.cli.counters(AUDIT_COUNTER_PREFIX).map_err(err)?,
        })
    }

    /// Compares nft table listings.
    fn diff(&self, rs: &Ruleset) -> Result<Vec<String>, BackendError> {
        let text = self.render(rs)?;
        let live = self.live()?;
        Ok(render::diff(
            live.as_deref().unwrap_or(""),
            render::table_block(&text),
        ))
    }
}
