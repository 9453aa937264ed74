//! Running the host's tools (`nft`, `iptables-save` / `-restore`, `ipset`): one seam, the
//! [`Runner`], with the real implementation ([`System`]) and a fake for tests ([`Fake`]).
//!
//! Standard input is fed from its own thread, so a large script cannot deadlock against the
//! tool's own output.

use std::collections::VecDeque;
use std::fmt;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// What a tool printed, and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Exit status 0.
    pub ok: bool,
    /// The exit code, when the tool exited (not killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error, trimmed.
    pub stderr: String,
}

impl Output {
    /// A successful run printing `stdout`.
    pub fn success(stdout: impl Into<String>) -> Output {
        Output {
            ok: true,
            code: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    /// A failed run (exit 1) printing `stderr`.
    pub fn failure(stderr: impl Into<String>) -> Output {
        Output {
            ok: false,
            code: Some(1),
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }
}

/// A tool could not be run at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot run {bin}: {source}")]
pub struct SpawnError {
    /// Which binary.
    pub bin: String,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// A tool ran and failed: the command line and what it said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {stderr}", command_line(tool, args))]
pub struct ToolFailure {
    /// Which binary.
    pub tool: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// What it printed on standard error.
    pub stderr: String,
}

impl ToolFailure {
    /// The failure of this invocation.
    pub fn new(tool: &str, args: &[&str], out: &Output) -> ToolFailure {
        ToolFailure {
            tool: tool.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            code: out.code,
            stderr: out.stderr.clone(),
        }
    }
}

fn command_line(tool: &str, args: &[String]) -> String {
    std::iter::once(tool)
        .chain(args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs tools: argv and standard input in; status, standard output and error out.
pub trait Runner: fmt::Debug + Send + Sync {
    /// Run `bin` with `args`, feeding `stdin` when given.
    fn run(&self, bin: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, SpawnError>;
}

/// The real runner: processes on this host.
#[derive(Debug, Clone, Copy, Default)]
pub struct System;

impl Runner for System {
    fn run(&self, bin: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, SpawnError> {
        let spawn_err = |source| SpawnError {
            bin: bin.to_string(),
            source,
        };
        let mut child = Command::new(bin)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let pipe = child.stdin.take();
        let out = std::thread::scope(|s| {
            if let (Some(text), Some(mut pipe)) = (stdin, pipe) {
                // A write error (the tool exited early) shows in its status and stderr.
                s.spawn(move || {
                    let _ = pipe.write_all(text.as_bytes());
                });
            }
            child.wait_with_output()
        })
        .map_err(spawn_err)?;
        Ok(Output {
            ok: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The shared real runner.
pub fn system() -> Arc<dyn Runner> {
    Arc::new(System)
}

/// One call a [`Fake`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The binary.
    pub bin: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// What was fed on standard input.
    pub stdin: Option<String>,
}

impl Call {
    /// `bin arg arg ...`.
    pub fn line(&self) -> String {
        command_line(&self.bin, &self.args)
    }
}

type Responder = dyn FnMut(&Call) -> Result<Output, SpawnError> + Send;

/// A runner for tests: records every call and answers from a closure, which may keep state
/// (e.g. a model of ipset and iptables) and inject failures.
#[derive(Clone)]
pub struct Fake {
    calls: Arc<Mutex<Vec<Call>>>,
    respond: Arc<Mutex<Box<Responder>>>,
}

impl fmt::Debug for Fake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fake").finish_non_exhaustive()
    }
}

impl Fake {
    /// A fake answering each call with `respond`.
    pub fn new(respond: impl FnMut(&Call) -> Result<Output, SpawnError> + Send + 'static) -> Fake {
        Fake {
            calls: Arc::default(),
            respond: Arc::new(Mutex::new(Box::new(respond))),
        }
    }

    /// A fake giving these answers in order (then failing with "no more answers").
    pub fn scripted(answers: impl IntoIterator<Item = Output>) -> Fake {
        let mut queue: VecDeque<Output> = answers.into_iter().collect();
        Fake::new(move |_| {
            Ok(queue
                .pop_front()
                .unwrap_or_else(|| Output::failure("fake: no more answers")))
        })
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Runner for Fake {
    fn run(&self, bin: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, SpawnError> {
        let call = Call {
            bin: bin.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            stdin: stdin.map(str::to_string),
        };
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(call.clone());
        }
        match self.respond.lock() {
            Ok(mut respond) => respond(&call),
            Err(_) => Err(SpawnError {
                bin: bin.to_string(),
                source: std::io::Error::other("fake runner poisoned"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_feeds_large_stdin_without_deadlock() {
        let big = "x".repeat(1 << 20);
        let out = System.run("cat", &[], Some(&big)).unwrap();
        assert!(out.ok);
        assert_eq!(out.stdout.len(), big.len());
        let e = System
            .run("/nonexistent/reyes-tool", &[], None)
            .unwrap_err();
        assert!(e
            .to_string()
            .starts_with("cannot run /nonexistent/reyes-tool"));
    }

    #[test]
    fn fake_records_and_answers() {
        let f = Fake::scripted([Output::success("a"), Output::failure("b")]);
        assert_eq!(f.run("t", &["-x"], Some("in")).unwrap().stdout, "a");
        let out = f.run("t", &[], None).unwrap();
        assert!(!out.ok);
        assert_eq!(ToolFailure::new("t", &["-y"], &out).to_string(), "t -y: b");
        assert_eq!(f.calls()[0].line(), "t -x");
        assert_eq!(f.calls()[0].stdin.as_deref(), Some("in"));
    }
}
