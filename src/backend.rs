//! What a follower needs from a firewall backend. Backends translate the IR; they decide
//! nothing about semantics.

use crate::compile::Ruleset;
use crate::config::{Backend as BackendChoice, IptablesVariant, NftTransport};

/// A backend operation failed. In every case the live rules are as they were before.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The kernel or tool refused the transaction.
    #[error("{0}")]
    Refused(String),
    /// Applied, but the read-back did not match; rolled back.
    #[error("{0}")]
    Mismatch(String),
    /// Could not run the tool or read state.
    #[error("{0}")]
    Io(String),
    /// The backend is not available in this build or on this host.
    #[error("{0}")]
    Unsupported(String),
}

/// Packet and byte counts of the named counters, when present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Accepted in-scope packets, bytes.
    pub accepted: Option<(u64, u64)>,
    /// Dropped packets, bytes.
    pub dropped: Option<(u64, u64)>,
}

/// A firewall backend.
pub trait Backend {
    /// `nft` or `iptables`.
    fn name(&self) -> &'static str;
    /// How the kernel is reached: `netlink` or `cli` for nft, `-` where there is no choice.
    fn transport(&self) -> &'static str {
        "-"
    }
    /// The exact text that would be applied.
    fn render(&self, rs: &Ruleset) -> Result<String, BackendError>;
    /// What is live now (our objects only), or `None` if nothing of ours is.
    fn live(&self) -> Result<Option<String>, BackendError>;
    /// Whether our objects exist (cheap).
    fn present(&self) -> Result<bool, BackendError>;
    /// Replace our objects with the ruleset, atomically, and check what the kernel holds.
    fn apply(&self, rs: &Ruleset) -> Result<(), BackendError>;
    /// Remove our objects, and nothing else.
    fn flush(&self) -> Result<(), BackendError>;
    /// Accept/drop counters.
    fn counters(&self) -> Result<Counters, BackendError>;
    /// What applying `rs` would change: lines only live (`- `) and only in `rs` (`+ `).
    /// The default compares nft table listings.
    fn diff(&self, rs: &Ruleset) -> Result<Vec<String>, BackendError> {
        let text = self.render(rs)?;
        let live = self.live()?;
        Ok(crate::nft::render::diff(
            live.as_deref().unwrap_or(""),
            crate::nft::render::table_block(&text),
        ))
    }
}

/// Pick a backend. `auto` takes nft when the kernel accepts what reyes' table uses (through
/// netlink, or `nft` in check mode: [`nft_usable`]), and iptables otherwise; `transport` is how
/// nft is reached and `variant` the iptables variant.
pub fn select(
    choice: BackendChoice,
    transport: NftTransport,
    variant: IptablesVariant,
) -> Result<Box<dyn Backend>, BackendError> {
    match choice {
        BackendChoice::Nft => Ok(Box::new(nft_backend(transport))),
        BackendChoice::Iptables => Ok(Box::new(crate::iptables::IptablesBackend::new(variant))),
        BackendChoice::Auto => {
            let netlink = transport != NftTransport::Cli && crate::nft::probe_netlink().is_ok();
            if netlink || nft_usable() {
                Ok(Box::new(nft_backend(transport)))
            } else {
                tracing::info!("nftables is not usable here (no nft, or the kernel lacks a feature reyes uses): using iptables");
                Ok(Box::new(crate::iptables::IptablesBackend::new(variant)))
            }
        }
    }
}

fn nft_backend(transport: NftTransport) -> crate::nft::NftBackend {
    match transport {
        NftTransport::Cli => crate::nft::NftBackend::new(),
        NftTransport::Netlink => crate::nft::NftBackend::netlink(),
        NftTransport::Auto => match crate::nft::probe_netlink() {
            Ok(()) => {
                tracing::info!("nft transport: netlink (the kernel accepted the probe batch)");
                crate::nft::NftBackend::netlink()
            }
            Err(why) => {
                tracing::info!(reason = %why, "nft transport: nft -f (netlink probe failed)");
                crate::nft::NftBackend::new()
            }
        },
    }
}

/// A table using every nf_tables feature reyes' table needs: interval sets, a verdict map,
/// named counters, `meta ipsec`, limits, logging. Checked with `nft -c`, which has the kernel
/// validate the batch and then aborts it: nothing is ever committed.
pub const NFT_PROBE: &str = r#"table inet reyes_probe {
	counter k {
	}
	set s {
		type ipv4_addr
		flags interval
		elements = { 10.0.0.0/8, 192.0.2.0-192.0.2.9 }
	}
	map m {
		type ipv6_addr : verdict
		flags interval
		elements = { fd00::/8 : jump c }
	}
	chain c {
	}
	chain input {
		type filter hook input priority filter; policy accept;
		meta ipsec exists ip saddr @s counter name "k" accept
		meta ipsec missing ip6 daddr vmap @m
		limit rate 5/second burst 10 packets log prefix "reyes probe: "
	}
}
"#;

/// Whether `nft` is installed and the kernel takes [`NFT_PROBE`] (in check mode).
pub fn nft_usable() -> bool {
    crate::nft::cli::NftCli::default().check(NFT_PROBE).is_ok()
}
