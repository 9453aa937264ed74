//! Exit codes (0 ok, 1 runtime, 2 usage/config, 3 document refused) and the failure type
//! the commands return.
//!
//! Library modules have their own typed errors; the orchestration layer (leader, follower,
//! commands) classifies each failure once, here, into the code a script sees.

use std::fmt;

/// What kind of failure, and so which exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// 1: runtime failure (store unreachable, kernel refused, I/O). Live rules unchanged.
    Runtime,
    /// 2: usage or configuration error.
    Usage,
    /// 3: document refused (signature, signer, environment, expiry, serial, malformed, limits,
    /// unknown host). Live rules unchanged.
    Refused,
}

impl ExitKind {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            ExitKind::Runtime => 1,
            ExitKind::Usage => 2,
            ExitKind::Refused => 3,
        }
    }
}

/// A classified failure: the exit kind plus the error chain to print.
#[derive(Debug)]
pub struct Failure {
    /// Which exit code.
    pub kind: ExitKind,
    /// What went wrong, with context.
    pub error: anyhow::Error,
}

impl Failure {
    /// Exit 1.
    pub fn runtime(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            kind: ExitKind::Runtime,
            error: error.into(),
        }
    }
    /// Exit 2.
    pub fn usage(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            kind: ExitKind::Usage,
            error: error.into(),
        }
    }
    /// Exit 3.
    pub fn refused(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            kind: ExitKind::Refused,
            error: error.into(),
        }
    }
    /// Add context to the message, keeping the kind.
    pub fn context(self, ctx: impl fmt::Display + Send + Sync + 'static) -> Failure {
        Failure {
            kind: self.kind,
            error: self.error.context(ctx),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

/// Result of a command.
pub type CmdResult<T = ()> = Result<T, Failure>;

/// Attach an exit kind to any error.
pub trait Classify<T> {
    /// Exit 1 on error.
    fn runtime(self) -> CmdResult<T>;
    /// Exit 2 on error.
    fn usage(self) -> CmdResult<T>;
    /// Exit 3 on error.
    fn refused(self) -> CmdResult<T>;
}

impl<T, E: Into<anyhow::Error>> Classify<T> for Result<T, E> {
    fn runtime(self) -> CmdResult<T> {
        self.map_err(Failure::runtime)
    }
    fn usage(self) -> CmdResult<T> {
        self.map_err(Failure::usage)
    }
    fn refused(self) -> CmdResult<T> {
        self.map_err(Failure::refused)
    }
}

/// A document refused for a reason that has no typed error of its own; `reason` is the
/// `reason` label of the refusal metric.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// `signature`, `environment`, `expired`, `serial`.
    pub reason: &'static str,
    message: String,
}

impl Refusal {
    /// A refusal for `reason`.
    pub fn new(reason: &'static str, message: String) -> Refusal {
        Refusal { reason, message }
    }
}
