//! The backend that is live is state, not config: the host record names the backend (and nft
//! transport) of the last apply, and the kernel confirms it. This module opens that backend,
//! picks the backend for a run, and removes a backend's objects: the other backend's after
//! a switch (flag, config change or `auto` fallback), and both for `reyes flush`.
//!
//! Removing only ever touches reyes' own objects: `table inet reyes`; the `REYES-*` chains,
//! the jump to them and the `reyes-*` ipsets, in every installed iptables variant.

use crate::backend::{Backend, BackendError};
use crate::config::{Backend as BackendChoice, FollowerConfig, NftTransport};
use crate::hostrecord::HostRecord;
use crate::iptables::IptablesBackend;
use crate::nft::NftBackend;

/// One of the two backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `table inet reyes`.
    Nft,
    /// ipset + iptables chains.
    Iptables,
}

impl Kind {
    /// Both, nft first.
    pub const BOTH: [Kind; 2] = [Kind::Nft, Kind::Iptables];

    /// `nft` / `iptables`, as [`Backend::name`] says.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Nft => "nft",
            Kind::Iptables => "iptables",
        }
    }

    /// The kind a backend name (as recorded) stands for.
    pub fn of(name: &str) -> Option<Kind> {
        match name {
            "nft" => Some(Kind::Nft),
            "iptables" => Some(Kind::Iptables),
            _ => None,
        }
    }

    /// The other one.
    pub fn other(self) -> Kind {
        match self {
            Kind::Nft => Kind::Iptables,
            Kind::Iptables => Kind::Nft,
        }
    }

    /// What reyes has in this backend now, one phrase each (empty: nothing). Reads only; the
    /// iptables side is looked at in every installed variant.
    pub fn owned(self) -> Result<Vec<String>, BackendError> {
        match self {
            Kind::Nft => Ok(crate::nft::owned()?.into_iter().collect()),
            Kind::Iptables => crate::iptables::owned(&crate::iptables::installed()),
        }
    }

    /// Remove everything reyes has in this backend; returns what was removed.
    pub fn remove(self) -> Result<Vec<String>, BackendError> {
        match self {
            Kind::Nft => Ok(crate::nft::remove_owned()?.into_iter().collect()),
            Kind::Iptables => crate::iptables::remove_owned(),
        }
    }
}

/// The backend (and nft transport) a recorded apply went through, with this config's
/// iptables variant. `None` for a record naming neither backend.
pub fn open_recorded(fcfg: &FollowerConfig, r: &HostRecord) -> Option<Box<dyn Backend>> {
    Some(match Kind::of(&r.backend)? {
        Kind::Nft if r.transport == "netlink" => Box::new(NftBackend::netlink()),
        Kind::Nft => Box::new(NftBackend::new()),
        Kind::Iptables => Box::new(IptablesBackend::new(fcfg.iptables_variant)),
    })
}

/// The backend for a run with `choice` (the flag, else the config). Where the choice leaves
/// room (`auto`, or nft with transport `auto`), the recorded backend and transport are kept
/// while its objects are live: the choice is made once, not probed again every run.
pub fn select(
    fcfg: &FollowerConfig,
    choice: BackendChoice,
    recorded: Option<&HostRecord>,
) -> Result<Box<dyn Backend>, BackendError> {
    if let Some(r) = recorded {
        let kind = Kind::of(&r.backend);
        let keep = match choice {
            BackendChoice::Auto => kind.is_some(),
            BackendChoice::Nft => {
                kind == Some(Kind::Nft) && fcfg.nft_transport == NftTransport::Auto
            }
            BackendChoice::Iptables => false,
        };
        if let Some(b) = open_recorded(fcfg, r).filter(|_| keep) {
            if b.present().unwrap_or(false) {
                return Ok(b);
            }
        }
    }
    crate::probe::select(choice, fcfg.nft_transport, fcfg.iptables_variant)
}

/// After `current` went live: when the previous apply went through the other backend
/// (`previous`, as recorded), remove that backend's objects. With nothing recorded (a first
/// apply, or a state directory that was wiped), the other backend is looked at too: reyes
/// objects there are leftovers of an earlier install and are removed, so that one backend
/// enforces, not two. A failure is logged, not returned: the new rules are live, and the old
/// ones can only drop more; `reyes status` shows them and `reyes flush` removes them.
pub fn remove_previous(current: &dyn Backend, previous: Option<&str>) -> Vec<String> {
    let Some(now) = Kind::of(current.name()) else {
        return Vec::new();
    };
    let before = match previous {
        Some(p) => match Kind::of(p) {
            Some(k) => k,
            None => return Vec::new(),
        },
        None => match now.other().owned() {
            Ok(left) if !left.is_empty() => now.other(),
            // Nothing there, or no way to look (the other backend's tools are not installed).
            _ => return Vec::new(),
        },
    };
    if now == before {
        return Vec::new();
    }
    match before.remove() {
        Ok(removed) => {
            if !removed.is_empty() {
                tracing::info!(
                    backend = now.name(),
                    removed = %removed.join("; "),
                    "switched backend: removed the {} backend's objects",
                    before.name()
                );
            }
            removed
        }
        Err(e) => {
            tracing::error!(
                backend = now.name(),
                error = %e,
                "switched backend, but the {} backend's objects could not be removed (run `reyes flush --backend {}`)",
                before.name(),
                before.name()
            );
            Vec::new()
        }
    }
}

/// Remove every reyes object of `kinds`, as far as possible: one kind's failure does not
/// stop the other. Returns what was removed, or the first failure.
pub fn remove(kinds: &[Kind]) -> Result<Vec<String>, BackendError> {
    let mut removed = Vec::new();
    let mut first_error = None;
    for k in kinds {
        match k.remove() {
            Ok(r) => removed.extend(r),
            Err(e) => {
                tracing::error!(backend = k.name(), error = %e, "cannot remove reyes' objects");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_name() {
        for k in Kind::BOTH {
            assert_eq!(Kind::of(k.name()), Some(k));
            assert_eq!(k.other().other(), k);
        }
        assert_eq!(Kind::of("-"), None);
    }
}
