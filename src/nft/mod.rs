//! The nftables backend: one table, `inet reyes`, replaced in one transaction, sent either
//! through our own netlink encoder ([`netlink`]) or as a script to `nft -f -` ([`cli`]).

pub mod cli;
pub mod netlink;
pub mod render;

use crate::backend::{Backend, BackendError, Counters};
use crate::compile::{Ruleset, COUNTER_ACCEPTED, COUNTER_DROPPED};

/// How rulesets reach the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// The rendered script through `nft -f -`.
    #[default]
    Cli,
    /// One nf_tables batch from our own encoder; `nft` (when installed) only reads back.
    Netlink,
}

/// nftables through netlink or the `nft` binary.
#[derive(Debug, Clone, Default)]
pub struct NftBackend {
    cli: cli::NftCli,
    transport: Transport,
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
            transport: Transport::Cli,
        }
    }

    /// The same backend with another transport.
    pub fn with_transport(self, transport: Transport) -> NftBackend {
        NftBackend { transport, ..self }
    }

    /// The transport in use.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    fn netlink_apply(&self, rs: &Ruleset) -> Result<(), BackendError> {
        netlink::apply(rs).map_err(|e| match e {
            netlink::ApplyError::Encode(_) => BackendError::Refused(e.to_string()),
            netlink::ApplyError::Netlink(netlink::NetlinkError::Refused(_)) => {
                BackendError::Refused(e.to_string())
            }
            other => BackendError::Io(other.to_string()),
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
}

/// Whether the kernel takes our netlink batches, and why not.
pub fn probe_netlink() -> Result<(), String> {
    netlink::probe().map_err(|e| e.to_string())
}

fn err(e: cli::NftError) -> BackendError {
    match e {
        cli::NftError::Refused { .. } => BackendError::Refused(e.to_string()),
        other => BackendError::Io(other.to_string()),
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
        render::render(rs).map_err(|e| BackendError::Io(e.to_string()))
    }

    fn live(&self) -> Result<Option<String>, BackendError> {
        self.cli.list_table().map_err(err)
    }

    fn present(&self) -> Result<bool, BackendError> {
        if self.transport == Transport::Netlink {
            return netlink::table_present().map_err(|e| BackendError::Io(e.to_string()));
        }
        self.cli.table_present().map_err(err)
    }

    /// Apply, read back, compare with the render; on a mismatch put the previous table back
    /// (or remove ours if there was none) and fail.
    fn apply(&self, rs: &Ruleset) -> Result<(), BackendError> {
        let script = self.render(rs)?;
        let previous = self.list_for_readback()?;
        match self.transport {
            Transport::Cli => self.cli.apply(&script).map_err(err)?,
            Transport::Netlink => {
                self.netlink_apply(rs)?;
                if !self.nft_installed() {
                    // Without nft, compare what netlink dumps (chains, rule counts, every set
                    // and map element) with the IR.
                    let diff = netlink::readback::verify(rs)
                        .map_err(|e| BackendError::Io(format!("netlink read-back: {e}")))?;
                    if diff.is_empty() {
                        return Ok(());
                    }
                    return Err(BackendError::Mismatch(format!(
                        "the kernel's table differs from the ruleset (nft is not installed, so the previous table cannot be put back):\n  {}",
                        diff.join("\n  ")
                    )));
                }
            }
        }
        let live = self.cli.list_table().map_err(err)?.unwrap_or_default();
        let want = render::normalise(render::table_block(&script));
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
        let rollback = match self.cli.apply(&restore) {
            Ok(()) => "the previous table was put back".to_string(),
            Err(e) => format!("putting the previous table back failed too: {e}"),
        };
        Err(BackendError::Mismatch(format!(
            "the kernel's table differs from the rendered ruleset near\n  rendered: ...{}\n  live:     ...{}\n{rollback}",
            context(&want),
            context(&got)
        )))
    }

    fn flush(&self) -> Result<(), BackendError> {
        match self.transport {
            Transport::Cli => self.cli.apply(&render::flush_script()).map_err(err),
            Transport::Netlink => netlink::Socket::open()
                .and_then(|s| s.apply(&netlink::flush_batch()))
                .map_err(|e| BackendError::Io(e.to_string())),
        }
    }

    fn counters(&self) -> Result<Counters, BackendError> {
        Ok(Counters {
            accepted: self.cli.counter(COUNTER_ACCEPTED).map_err(err)?,
            dropped: self.cli.counter(COUNTER_DROPPED).map_err(err)?,
        })
    }
}
