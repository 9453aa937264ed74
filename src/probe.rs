//! Which backend, and which nft transport, to use on this host: one list of the nf_tables
//! features reyes' table uses ([`Feature`]), built into one probe ruleset that is checked both
//! as `nft -c` text and as a check-only netlink batch, so both probes test the same features.
//! Neither commits anything: `nft -c` and a batch without BATCH_END are validated by the
//! kernel and then aborted.

use crate::backend::{Backend, BackendError};
use crate::compile::{
    AddrMatch, AddrSet, BaseChain, Chain, ChainKind, DispatchEntry, Log, Match, Meta, Origin, Rule,
    Ruleset, SetPurpose, Target, Verdict, COUNTER_ACCEPTED,
};
use crate::config::{Backend as BackendChoice, Enforce, IptablesVariant, NftTransport};
use crate::net::{Cidr, Family};
use crate::nft::kernel::{self, Kernel};
use crate::nft::{cli::NftCli, netlink, render, NftBackend};

/// An nf_tables feature reyes' table uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// Named sets with interval flags (member and managed sets).
    IntervalSet,
    /// An interval verdict map (the destination dispatch).
    VerdictMap,
    /// Named counters (`accepted`, `dropped`).
    NamedCounter,
    /// `meta ipsec exists` / `missing` (the secpath match).
    MetaIpsec,
    /// `limit rate` (log rate limiting).
    Limit,
    /// `log prefix`.
    Log,
}

impl Feature {
    /// Every feature, in probe order.
    pub const ALL: [Feature; 6] = [
        Feature::IntervalSet,
        Feature::VerdictMap,
        Feature::NamedCounter,
        Feature::MetaIpsec,
        Feature::Limit,
        Feature::Log,
    ];

    /// What the feature is and which kernel module provides it.
    pub fn describe(self) -> &'static str {
        match self {
            Feature::IntervalSet => "interval sets (nft_set_rbtree or nft_set_pipapo)",
            Feature::VerdictMap => "verdict maps (nft_set_rbtree)",
            Feature::NamedCounter => "named counters (nft_counter)",
            Feature::MetaIpsec => "meta ipsec, the secpath match (nft_meta with CONFIG_XFRM)",
            Feature::Limit => "limit (nft_limit)",
            Feature::Log => "log (nft_log)",
        }
    }

    /// Add what uses this feature to the probe ruleset.
    fn add_to(self, rs: &mut Ruleset) {
        let rule = |matches: Vec<Match>, verdict: Verdict| Rule {
            matches,
            log: None,
            counter: None,
            verdict,
            origin: Origin::Base("probe".into()),
        };
        match self {
            Feature::IntervalSet => {
                let elements = ["10.0.0.0/8", "192.0.2.0/29"]
                    .iter()
                    .filter_map(|c| c.parse::<Cidr>().ok())
                    .map(|c| c.range())
                    .collect();
                rs.sets.push(AddrSet {
                    name: "probe4".into(),
                    family: Family::V4,
                    elements,
                    purpose: SetPurpose::Managed,
                });
                let saddr = Match::Saddr {
                    family: Family::V4,
                    addrs: AddrMatch::Set("probe4".into()),
                    negate: false,
                };
                rs.input.push(rule(vec![saddr], Verdict::Continue));
            }
            Feature::VerdictMap => {
                rs.chains.push(Chain {
                    name: "probe".into(),
                    kind: ChainKind::Group("probe".into()),
                    rules: Vec::new(),
                });
                if let Ok(c) = "fd00::/8".parse::<Cidr>() {
                    rs.dispatch6.push(DispatchEntry {
                        range: c.range(),
                        chain: "probe".into(),
                    });
                }
                rs.input
                    .push(rule(Vec::new(), Verdict::Dispatch(Family::V6)));
            }
            Feature::NamedCounter => rs.input.push(Rule {
                counter: Some(COUNTER_ACCEPTED.into()),
                ..rule(Vec::new(), Verdict::Continue)
            }),
            Feature::MetaIpsec => rs
                .input
                .push(rule(vec![Match::Ipsec(true)], Verdict::Continue)),
            Feature::Limit => rs.input.push(rule(
                vec![Match::Limit { rate: 5, burst: 10 }],
                Verdict::Continue,
            )),
            Feature::Log => rs.input.push(Rule {
                log: Some(Log {
                    prefix: "reyes probe: ".into(),
                }),
                ..rule(Vec::new(), Verdict::Continue)
            }),
        }
    }
}

/// A ruleset that uses each of `features` (and nothing else of note).
pub fn probe_ruleset(features: &[Feature]) -> Ruleset {
    let mut rs = Ruleset {
        meta: Meta {
            environment: "probe".into(),
            serial: 0,
            policy_digest: String::new(),
            enforce: Enforce::Ipsec,
            target: Target::AllGroups,
        },
        sets: Vec::new(),
        dispatch4: Vec::new(),
        dispatch6: Vec::new(),
        chains: Vec::new(),
        input: Vec::new(),
        base: BaseChain::reyes(),
        hooked: Vec::new(),
        maps: Vec::new(),
    };
    for f in features {
        f.add_to(&mut rs);
    }
    rs
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The probe could not be built (a bug).
    #[error("building the probe failed: {0}")]
    Build(String),
    /// `nft -c` refused the probe or could not be run.
    #[error(transparent)]
    Nft(#[from] crate::nft::cli::NftError),
    /// The kernel refused the check-only batch or could not be reached.
    #[error(transparent)]
    Netlink(#[from] netlink::NetlinkError),
}

/// `nft -c` of the probe ruleset with `features`.
pub fn check_nft(nft: &NftCli, features: &[Feature]) -> Result<(), ProbeError> {
    let text =
        render::render(&probe_ruleset(features)).map_err(|e| ProbeError::Build(e.to_string()))?;
    Ok(nft.check(&text)?)
}

/// The check-only netlink batch of the probe ruleset with `features`.
pub fn check_netlink(kernel: &dyn Kernel, features: &[Feature]) -> Result<(), ProbeError> {
    let batch = netlink::encode_check_only(&probe_ruleset(features), &|_| None)
        .map_err(|e| ProbeError::Build(e.to_string()))?;
    Ok(kernel.apply(&batch)?)
}

/// The features a failing probe lacks, each probed on its own.
pub fn missing(check: impl Fn(&[Feature]) -> Result<(), ProbeError>) -> Vec<Feature> {
    Feature::ALL
        .into_iter()
        .filter(|f| check(&[*f]).is_err())
        .collect()
}

/// Whether `nft` is installed and the kernel takes every [`Feature`] (in check mode).
pub fn nft_usable() -> bool {
    check_nft(&NftCli::default(), &Feature::ALL).is_ok()
}

/// Whether the kernel takes our netlink batches with every [`Feature`], and why not (naming
/// the missing features).
pub fn probe_netlink() -> Result<(), ProbeError> {
    probe_netlink_with(&kernel::Netlink)
}

/// [`probe_netlink`] through this kernel.
pub fn probe_netlink_with(kernel: &dyn Kernel) -> Result<(), ProbeError> {
    let all = check_netlink(kernel, &Feature::ALL);
    if let Err(e) = &all {
        let lacking = missing(|f| check_netlink(kernel, f));
        if !lacking.is_empty() {
            let names: Vec<&str> = lacking.iter().map(|f| f.describe()).collect();
            tracing::info!(missing = %names.join(", "), reason = %e, "netlink probe failed");
        }
    }
    all
}

/// Pick a backend. `auto` takes nft when the kernel accepts what reyes' table uses (through
/// netlink, or `nft` in check mode), and iptables otherwise; `transport` is how nft is reached
/// and `variant` the iptables variant.
pub fn select(
    choice: BackendChoice,
    transport: NftTransport,
    variant: IptablesVariant,
) -> Result<Box<dyn Backend>, BackendError> {
    match choice {
        BackendChoice::Nft => Ok(Box::new(nft_backend(transport))),
        BackendChoice::Iptables => Ok(Box::new(crate::iptables::IptablesBackend::new(variant))),
        BackendChoice::Auto => {
            let netlink = transport != NftTransport::Cli && probe_netlink().is_ok();
            if netlink || nft_usable() {
                Ok(Box::new(nft_backend(transport)))
            } else {
                tracing::info!("nftables is not usable here (no nft, or the kernel lacks a feature reyes uses): using iptables");
                Ok(Box::new(crate::iptables::IptablesBackend::new(variant)))
            }
        }
    }
}

fn nft_backend(transport: NftTransport) -> NftBackend {
    match transport {
        NftTransport::Cli => NftBackend::new(),
        NftTransport::Netlink => NftBackend::netlink(),
        NftTransport::Auto => match probe_netlink() {
            Ok(()) => {
                tracing::info!("nft transport: netlink (the kernel accepted the probe batch)");
                NftBackend::netlink()
            }
            Err(why) => {
                tracing::info!(reason = %why, "nft transport: nft -f (netlink probe failed)");
                NftBackend::new()
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{Fake, Output};
    use std::sync::Arc;

    #[test]
    fn one_feature_list_drives_both_probes() {
        let text = render::render(&probe_ruleset(&Feature::ALL)).unwrap();
        for needle in [
            "flags interval",
            "vmap",
            "counter name",
            "meta ipsec",
            "limit rate 5/second",
            "log prefix \"reyes probe: \"",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        let batch = netlink::encode_check_only(&probe_ruleset(&Feature::ALL), &|_| None).unwrap();
        let full = netlink::encode(&probe_ruleset(&Feature::ALL), &|_| None).unwrap();
        assert!(
            batch.byte_len() < full.byte_len(),
            "check-only has no BATCH_END"
        );
    }

    #[test]
    fn nft_probe_checks_the_feature_text_and_names_what_is_missing() {
        // An nft that refuses any script using `limit`.
        let fake = Fake::new(|call| {
            let text = call.stdin.clone().unwrap_or_default();
            Ok(if text.contains("limit rate") {
                Output::failure("Error: Could not process rule: No such file or directory")
            } else {
                Output::success("")
            })
        });
        let nft = NftCli::with_binary("nft").with_runner(Arc::new(fake.clone()));
        assert!(check_nft(&nft, &Feature::ALL).is_err());
        assert_eq!(missing(|f| check_nft(&nft, f)), vec![Feature::Limit]);
        assert!(fake.calls().iter().all(|c| c.args == ["-c", "-f", "-"]));
    }

    #[test]
    fn netlink_probe_sends_one_check_only_batch() {
        let k = kernel::FakeKernel::default();
        probe_netlink_with(&k).unwrap();
        let st = k.state.lock().unwrap();
        assert_eq!(st.applied.len(), 1);
    }
}
