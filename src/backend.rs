//! What a follower needs from a firewall backend, and how a backend fails. Backends translate
//! the IR; they decide nothing about semantics. Choosing a backend is [`crate::probe`]'s job.

use std::fmt;

use crate::compile::Ruleset;

/// The underlying error of a failed step, kept with its type (a tool's command line and
/// standard error, the kernel's netlink refusals, a render error).
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A backend operation failed. In every case the live rules are as they were before (or the
/// message says what could not be put back).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The kernel or a tool refused a step of the transaction.
    #[error("{0}")]
    Refused(Failed),
    /// Applied, but the read-back did not match; rolled back.
    #[error("{0}")]
    Mismatch(Mismatch),
    /// Could not run a tool, render, or read state.
    #[error("{0}")]
    Io(Failed),
    /// The backend is not available in this build or on this host.
    #[error("{0}")]
    Unsupported(Unsupported),
}

impl BackendError {
    /// The kernel or a tool refused `step`.
    pub fn refused(step: impl Into<String>, cause: impl Into<Cause>) -> BackendError {
        BackendError::Refused(Failed::new(step, cause))
    }

    /// `step` could not be done (a tool would not run, state could not be read).
    pub fn io(step: impl Into<String>, cause: impl Into<Cause>) -> BackendError {
        BackendError::Io(Failed::new(step, cause))
    }

    /// The same error, with what undoing the earlier steps did.
    pub fn with_undo(self, undo: Undo) -> BackendError {
        match self {
            BackendError::Refused(f) => BackendError::Refused(f.with_undo(undo)),
            BackendError::Io(f) => BackendError::Io(f.with_undo(undo)),
            other => other,
        }
    }
}

/// A step that failed, why, and what undoing the steps before it did.
#[derive(Debug)]
pub struct Failed {
    /// What was being done.
    pub step: String,
    /// Why it failed. Part of the message (not a separate link of the error chain), so that
    /// one line names the step, the tool and what it said.
    pub cause: Cause,
    /// What undoing the earlier steps did, when there were any.
    pub undo: Option<Undo>,
}

impl Failed {
    /// A failed step, nothing undone (yet).
    pub fn new(step: impl Into<String>, cause: impl Into<Cause>) -> Failed {
        Failed {
            step: step.into(),
            cause: cause.into(),
            undo: None,
        }
    }

    /// With what undoing the earlier steps did.
    pub fn with_undo(self, undo: Undo) -> Failed {
        Failed {
            undo: Some(undo),
            ..self
        }
    }
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.cause)?;
        if let Some(u) = &self.undo {
            write!(f, " ({u})")?;
        }
        Ok(())
    }
}

/// What the kernel holds after an apply is not what was planned.
#[derive(Debug)]
pub struct Mismatch {
    /// Which objects were compared.
    pub what: String,
    /// The differences, one per line.
    pub diff: Vec<String>,
    /// What putting the previous rules back did.
    pub undo: Undo,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.diff.as_slice() {
            [one] => write!(f, "{}: {one} ({})", self.what, self.undo),
            many => write!(f, "{}:\n  {}\n{}", self.what, many.join("\n  "), self.undo),
        }
    }
}

/// What undoing the steps of a failed apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undo {
    /// What holds when every undo step worked.
    pub done: &'static str,
    /// The undo steps that failed.
    pub failures: Vec<String>,
}

impl Undo {
    /// Every undo step worked.
    pub fn complete(done: &'static str) -> Undo {
        Undo {
            done,
            failures: Vec::new(),
        }
    }
}

impl fmt::Display for Undo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.failures.is_empty() {
            f.write_str(self.done)
        } else {
            f.write_str(&self.failures.join("; "))
        }
    }
}

/// A backend, transport or variant that cannot be used here, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {fix}")]
pub struct Unsupported {
    /// What is missing or in the way.
    pub what: String,
    /// What the user can do.
    pub fix: String,
}

impl Unsupported {
    /// `what` is missing or in the way; `fix` says what to do.
    pub fn new(what: impl Into<String>, fix: impl Into<String>) -> Unsupported {
        Unsupported {
            what: what.into(),
            fix: fix.into(),
        }
    }
}

impl From<Unsupported> for BackendError {
    fn from(u: Unsupported) -> BackendError {
        BackendError::Unsupported(u)
    }
}

/// Packet and byte counts of the named counters, when present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Accepted in-scope packets, bytes.
    pub accepted: Option<(u64, u64)>,
    /// Dropped packets, bytes.
    pub dropped: Option<(u64, u64)>,
    /// Audit mode: would-be drops (packets, bytes) by audit counter, one per destination group
    /// or profile (`audit_g_<group>`, `audit_p_<hash>`; in iptables, their counter chains).
    pub audit: Vec<NamedCount>,
}

/// A named counter's name, and its packets and bytes.
pub type NamedCount = (String, (u64, u64));

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
    /// Bytes of what an apply of `rs` sends to the kernel (the capacity guard's batch bytes);
    /// by default, the rendered text.
    fn batch_bytes(&self, rs: &Ruleset) -> Result<usize, BackendError> {
        self.render(rs).map(|t| t.len())
    }
    /// What is live now (our objects only), or `None` if nothing of ours is.
    fn live(&self) -> Result<Option<String>, BackendError>;
    /// Whether our objects exist (cheap).
    fn present(&self) -> Result<bool, BackendError>;
    /// Replace our objects with the ruleset, atomically, and check what the kernel holds.
    fn apply(&self, rs: &Ruleset) -> Result<(), BackendError>;
    /// [`Backend::apply`], able to get the ruleset live now (the last one applied), so that
    /// a backend that cannot read the live rules back in full can still put them back.
    /// `previous` is only called when needed.
    fn apply_replacing(
        &self,
        rs: &Ruleset,
        previous: &dyn Fn() -> Option<Ruleset>,
    ) -> Result<(), BackendError> {
        let _ = previous;
        self.apply(rs)
    }
    /// Remove our objects, and nothing else.
    fn flush(&self) -> Result<(), BackendError>;
    /// A digest of our objects as the kernel holds them now (`sha256:<hex>`), or `None` when
    /// none are live: equal digests mean nothing of ours was added, removed or altered in
    /// between. Counter values are left out. Only reads.
    fn digest(&self) -> Result<Option<String>, BackendError> {
        Ok(self
            .live()?
            .map(|text| crate::digest::sha256(text.as_bytes())))
    }
    /// Accept/drop counters.
    fn counters(&self) -> Result<Counters, BackendError>;
    /// What applying `rs` would change: lines only live (`- `) and only in `rs` (`+ `).
    fn diff(&self, rs: &Ruleset) -> Result<Vec<String>, BackendError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_step_cause_and_undo() {
        let e = BackendError::refused("ipset refused the new sets", "Error in line 3").with_undo(
            Undo::complete("the previous chains and sets are as they were"),
        );
        assert_eq!(
            e.to_string(),
            "ipset refused the new sets: Error in line 3 (the previous chains and sets are as they were)"
        );
        let m = Mismatch {
            what: "x".into(),
            diff: vec!["a".into(), "b".into()],
            undo: Undo {
                done: "ok",
                failures: vec!["f1".into(), "f2".into()],
            },
        };
        assert_eq!(m.to_string(), "x:\n  a\n  b\nf1; f2");
        let u: BackendError = Unsupported::new("no ipset", "install the ipset package").into();
        assert_eq!(u.to_string(), "no ipset: install the ipset package");
    }
}
