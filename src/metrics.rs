//! Prometheus text exposition for node_exporter's textfile collector: `follower.metrics_file`
//! and `leader.metrics_file`, rewritten atomically (temporary file + rename) after every run,
//! so the collector never reads half a file.
//!
//! Counters (`*_total`) count from the start of the process: a `--once` run from a timer
//! starts them afresh each time, which Prometheus treats as a counter reset.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::backend::Counters;
use crate::error::{ExitKind, Failure};

/// The metrics file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the metrics file {path}: {source}")]
pub struct MetricsError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// What a follower's fetch found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchResult {
    /// New bytes.
    Changed,
    /// The store said not modified.
    Unchanged,
    /// The fetch failed (store unreachable, missing signature, too large, ...).
    Error,
}

impl FetchResult {
    fn label(self) -> &'static str {
        match self {
            FetchResult::Changed => "changed",
            FetchResult::Unchanged => "unchanged",
            FetchResult::Error => "error",
        }
    }
}

/// What one follower run found out on the way, for the metrics (filled as far as it got).
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The fetch, when one was made.
    pub fetch: Option<FetchResult>,
    /// Backend name, once opened.
    pub backend: Option<&'static str>,
    /// nft transport (`netlink`, `cli`) or `-` for iptables.
    pub transport: Option<&'static str>,
    /// Seconds the kernel apply took, when there was one.
    pub apply_seconds: Option<f64>,
    /// Live counters after the run.
    pub counters: Option<Counters>,
    /// Tables or chains found missing or altered and re-applied.
    pub drift_repairs: u64,
    /// Receipts that could not be written (`follower.receipts`).
    pub receipt_failures: u64,
    /// Tracked connections deleted because a new policy denies them.
    pub revoked: u64,
    /// Revocation was attempted and failed.
    pub revoke_failed: bool,
}

/// Facts of the applied document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppliedFacts {
    /// Serial.
    pub serial: u64,
    /// issued_at, Unix seconds.
    pub issued_at: f64,
    /// not_after, Unix seconds.
    pub not_after: f64,
}

/// The follower's metrics, kept across the runs of a service.
#[derive(Debug, Clone, Default)]
pub struct FollowerMetrics {
    /// Environment (a label of the info metric).
    pub environment: String,
    backend: String,
    transport: String,
    applied: Option<AppliedFacts>,
    last_success: Option<f64>,
    last_run: Option<f64>,
    apply_seconds: Option<f64>,
    refusals: BTreeMap<&'static str, u64>,
    failures: u64,
    drift_repairs: u64,
    receipt_failures: u64,
    revoked: u64,
    revoke_failures: u64,
    fetches: BTreeMap<&'static str, u64>,
    counters: Counters,
}

/// Why a document was refused, for the `reason` label: the [`Refusal`](crate::error::Refusal)
/// reason, or the kind of typed error behind the failure.
pub fn refusal_reason(f: &Failure) -> &'static str {
    if let Some(r) = f.error.downcast_ref::<crate::error::Refusal>() {
        return r.reason;
    }
    if f.error
        .downcast_ref::<crate::document::DocumentError>()
        .is_some()
    {
        return "malformed";
    }
    if f.error
        .downcast_ref::<crate::compile::CompileError>()
        .is_some()
    {
        return "unknown_host";
    }
    match f.error.downcast_ref::<crate::store::StoreError>() {
        Some(crate::store::StoreError::TooLarge(_)) => "too_large",
        Some(crate::store::StoreError::MissingSignature(_)) => "missing_signature",
        Some(crate::store::StoreError::Mismatched(_)) => "torn_pair",
        _ => "other",
    }
}

/// Seconds since the epoch.
pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl FollowerMetrics {
    /// Take in one run: what it reported, how it ended, what is applied now, when.
    pub fn observe(
        &mut self,
        report: &Report,
        result: Result<(), &Failure>,
        applied: Option<AppliedFacts>,
        now: SystemTime,
    ) {
        let now = unix(now);
        self.last_run = Some(now);
        if let Some(b) = report.backend {
            self.backend = b.to_string();
        }
        if let Some(t) = report.transport {
            self.transport = t.to_string();
        }
        if let Some(f) = report.fetch {
            *self.fetches.entry(f.label()).or_default() += 1;
        }
        if report.apply_seconds.is_some() {
            self.apply_seconds = report.apply_seconds;
        }
        if let Some(c) = &report.counters {
            self.counters = c.clone();
        }
        self.drift_repairs += report.drift_repairs;
        self.receipt_failures += report.receipt_failures;
        self.revoked += report.revoked;
        self.revoke_failures += u64::from(report.revoke_failed);
        if applied.is_some() {
            self.applied = applied;
        }
        match result {
            Ok(()) => self.last_success = Some(now),
            Err(f) if f.kind == ExitKind::Refused => {
                *self.refusals.entry(refusal_reason(f)).or_default() += 1;
            }
            Err(_) => self.failures += 1,
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut w = Writer::default();
        w.metric(
            "reyes_follower_info",
            "gauge",
            "The follower's backend, nft transport, environment and version (always 1).",
            &[(
                &[
                    ("backend", or_dash(&self.backend)),
                    ("transport", or_dash(&self.transport)),
                    ("environment", or_dash(&self.environment)),
                    ("version", env!("CARGO_PKG_VERSION")),
                ],
                1.0,
            )],
        );
        let gauges: [(&str, &str, Option<f64>); 6] = [
            (
                "reyes_follower_applied_serial",
                "Serial of the applied document.",
                self.applied.as_ref().map(|a| a.serial as f64),
            ),
            (
                "reyes_follower_document_issued_timestamp_seconds",
                "issued_at of the applied document.",
                self.applied.as_ref().map(|a| a.issued_at),
            ),
            (
                "reyes_follower_document_not_after_timestamp_seconds",
                "not_after (expiry) of the applied document.",
                self.applied.as_ref().map(|a| a.not_after),
            ),
            (
                "reyes_follower_last_success_timestamp_seconds",
                "When a run last succeeded.",
                self.last_success,
            ),
            (
                "reyes_follower_last_run_timestamp_seconds",
                "When the last run ended.",
                self.last_run,
            ),
            (
                "reyes_follower_apply_duration_seconds",
                "How long the last kernel apply took.",
                self.apply_seconds,
            ),
        ];
        for (name, help, v) in gauges {
            if let Some(v) = v {
                w.metric(name, "gauge", help, &[(&[], v)]);
            }
        }
        let refusals: Vec<_> = self
            .refusals
            .iter()
            .map(|(r, n)| ([("reason", *r)], *n as f64))
            .collect();
        w.labelled(
            "reyes_follower_refusals_total",
            "Documents refused, by reason (the live rules stayed as they were).",
            &refusals,
        );
        w.metric(
            "reyes_follower_failures_total",
            "counter",
            "Runs that failed for a reason other than a refused document (store, kernel, config).",
            &[(&[], self.failures as f64)],
        );
        w.metric(
            "reyes_follower_drift_repairs_total",
            "counter",
            "Times the live rules were found missing or altered and re-applied.",
            &[(&[], self.drift_repairs as f64)],
        );
        w.metric(
            "reyes_follower_receipt_failures_total",
            "counter",
            "Receipts that could not be written to the store (follower.receipts).",
            &[(&[], self.receipt_failures as f64)],
        );
        w.metric(
            "reyes_follower_revoked_connections_total",
            "counter",
            "Tracked connections deleted because a new policy denies them (follower.revoke).",
            &[(&[], self.revoked as f64)],
        );
        w.metric(
            "reyes_follower_revoke_failures_total",
            "counter",
            "Revocations that failed (the rules were applied; denied connections lived on).",
            &[(&[], self.revoke_failures as f64)],
        );
        let fetches: Vec<_> = ["changed", "unchanged", "error"]
            .iter()
            .map(|r| {
                (
                    [("result", *r)],
                    self.fetches.get(r).copied().unwrap_or(0) as f64,
                )
            })
            .collect();
        w.labelled(
            "reyes_follower_fetches_total",
            "Document fetches, by result.",
            &fetches,
        );
        let c = &self.counters;
        for (what, v) in [("accepted", c.accepted), ("dropped", c.dropped)] {
            if let Some((packets, bytes)) = v {
                w.metric(
                    &format!("reyes_{what}_packets_total"),
                    "counter",
                    &format!("Packets {what} by reyes' rules (the kernel's named counter)."),
                    &[(&[], packets as f64)],
                );
                w.metric(
                    &format!("reyes_{what}_bytes_total"),
                    "counter",
                    &format!("Bytes {what} by reyes' rules (the kernel's named counter)."),
                    &[(&[], bytes as f64)],
                );
            }
        }
        if !c.audit.is_empty() {
            let packets: Vec<([(&str, &str); 1], f64)> = c
                .audit
                .iter()
                .map(|(name, (p, _))| ([("counter", name.as_str())], *p as f64))
                .collect();
            w.labelled(
                "reyes_audit_packets_total",
                "Audit mode: packets no rule allows, accepted instead of dropped, by the named \
                 counter of the destination's group or profile chain.",
                &packets,
            );
        }
        w.out
    }
}

/// The leader's metrics, kept across the runs of a service.
#[derive(Debug, Clone, Default)]
pub struct LeaderMetrics {
    /// Environment (a label of the info metric).
    pub environment: String,
    serial: Option<u64>,
    last_success: Option<f64>,
    last_run: Option<f64>,
    duration: Option<f64>,
    runs: BTreeMap<&'static str, u64>,
}

/// How a leader run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderRun {
    /// Published this serial.
    Published(u64),
    /// The stored document, this serial, is fresh: nothing published.
    Fresh(u64),
    /// Failed.
    Failed,
}

impl LeaderMetrics {
    /// Take in one run that took `seconds` and ended at `now`.
    pub fn observe(&mut self, run: LeaderRun, seconds: f64, now: SystemTime) {
        let now = unix(now);
        self.last_run = Some(now);
        self.duration = Some(seconds);
        let label = match run {
            LeaderRun::Published(s) => {
                self.serial = Some(s);
                "published"
            }
            LeaderRun::Fresh(s) => {
                self.serial = Some(s);
                "fresh"
            }
            LeaderRun::Failed => "failed",
        };
        if label != "failed" {
            self.last_success = Some(now);
        }
        *self.runs.entry(label).or_default() += 1;
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut w = Writer::default();
        w.metric(
            "reyes_leader_info",
            "gauge",
            "The leader's environment and version (always 1).",
            &[(
                &[
                    ("environment", or_dash(&self.environment)),
                    ("version", env!("CARGO_PKG_VERSION")),
                ],
                1.0,
            )],
        );
        let gauges = [
            (
                "reyes_leader_document_serial",
                "Serial of the document in the store (published or found fresh).",
                self.serial.map(|s| s as f64),
            ),
            (
                "reyes_leader_last_success_timestamp_seconds",
                "When a run last succeeded.",
                self.last_success,
            ),
            (
                "reyes_leader_last_run_timestamp_seconds",
                "When the last run ended.",
                self.last_run,
            ),
            (
                "reyes_leader_run_duration_seconds",
                "How long the last run took.",
                self.duration,
            ),
        ];
        for (name, help, v) in gauges {
            if let Some(v) = v {
                w.metric(name, "gauge", help, &[(&[], v)]);
            }
        }
        let runs: Vec<_> = ["published", "fresh", "failed"]
            .iter()
            .map(|r| {
                (
                    [("result", *r)],
                    self.runs.get(r).copied().unwrap_or(0) as f64,
                )
            })
            .collect();
        w.labelled(
            "reyes_leader_runs_total",
            "Leader runs, by result (fresh: the stored document was kept).",
            &runs,
        );
        w.out
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// Writes metric families.
#[derive(Default)]
struct Writer {
    out: String,
}

type Sample<'a> = (&'a [(&'a str, &'a str)], f64);

impl Writer {
    fn metric(&mut self, name: &str, kind: &str, help: &str, samples: &[Sample<'_>]) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            self.out.push_str(name);
            if !labels.is_empty() {
                let l: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                let _ = write!(self.out, "{{{}}}", l.join(","));
            }
            let _ = writeln!(self.out, " {}", number(*v));
        }
    }

    /// A counter with one label, one sample per value (an empty family is still declared).
    fn labelled(&mut self, name: &str, help: &str, samples: &[([(&str, &str); 1], f64)]) {
        let s: Vec<Sample<'_>> = samples.iter().map(|(l, v)| (&l[..], *v)).collect();
        self.metric(name, "counter", help, &s);
    }
}

fn number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Write `text` to `path` atomically.
pub fn write(path: &Path, text: &str) -> Result<(), MetricsError> {
    crate::store::directory::write_atomic(path, text.as_bytes()).map_err(|source| MetricsError {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follower_metrics_count_runs_and_keep_facts() {
        let mut m = FollowerMetrics {
            environment: "prod".into(),
            ..Default::default()
        };
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let report = Report {
            fetch: Some(FetchResult::Changed),
            backend: Some("nft"),
            transport: Some("netlink"),
            apply_seconds: Some(0.25),
            counters: Some(Counters {
                accepted: Some((3, 180)),
                dropped: Some((1, 60)),
                audit: vec![("audit_g_sg_web".into(), (4, 240))],
            }),
            drift_repairs: 0,
            receipt_failures: 1,
            revoked: 3,
            revoke_failed: false,
        };
        let facts = AppliedFacts {
            serial: 42,
            issued_at: 1_699_999_000.0,
            not_after: 1_700_086_400.0,
        };
        m.observe(&report, Ok(()), Some(facts), t);
        let refused = Failure::refused(crate::error::Refusal::new("expired", "old".into()));
        let r2 = Report {
            fetch: Some(FetchResult::Unchanged),
            ..Default::default()
        };
        m.observe(&r2, Err(&refused), None, t);
        m.observe(
            &Report::default(),
            Err(&Failure::runtime(anyhow::anyhow!("x"))),
            None,
            t,
        );
        let text = m.render();
        for line in [
            "reyes_follower_info{backend=\"nft\",transport=\"netlink\",environment=\"prod\",version=\"",
            "reyes_follower_applied_serial 42\n",
            "reyes_follower_document_not_after_timestamp_seconds 1700086400\n",
            "reyes_follower_last_success_timestamp_seconds 1700000000\n",
            "reyes_follower_apply_duration_seconds 0.25\n",
            "reyes_follower_refusals_total{reason=\"expired\"} 1\n",
            "reyes_follower_failures_total 1\n",
            "reyes_follower_receipt_failures_total 1\n",
            "reyes_follower_fetches_total{result=\"changed\"} 1\n",
            "reyes_follower_fetches_total{result=\"unchanged\"} 1\n",
            "reyes_follower_fetches_total{result=\"error\"} 0\n",
            "reyes_accepted_packets_total 3\n",
            "reyes_dropped_bytes_total 60\n",
            "reyes_audit_packets_total{counter=\"audit_g_sg_web\"} 4\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }

    #[test]
    fn labels_are_escaped() {
        let m = FollowerMetrics {
            environment: "a\"b\\c\nd".into(),
            ..Default::default()
        };
        assert!(m.render().contains("environment=\"a\\\"b\\\\c\\nd\""));
    }

    #[test]
    fn leader_metrics() {
        let mut m = LeaderMetrics::default();
        let t = UNIX_EPOCH + std::time::Duration::from_secs(10);
        m.observe(LeaderRun::Published(7), 1.5, t);
        m.observe(LeaderRun::Fresh(7), 0.5, t);
        m.observe(LeaderRun::Failed, 0.1, t);
        let text = m.render();
        assert!(text.contains("reyes_leader_document_serial 7\n"), "{text}");
        assert!(text.contains("reyes_leader_runs_total{result=\"failed\"} 1\n"));
        assert!(text.contains("reyes_leader_runs_total{result=\"published\"} 1\n"));
        assert!(text.contains("reyes_leader_run_duration_seconds 0.1\n"));
    }

    #[test]
    fn write_is_atomic_replace() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("reyes.prom");
        write(&p, "a 1\n").unwrap();
        write(&p, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a 2\n");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        let e = write(&d.path().join("no/such/dir.prom"), "x").unwrap_err();
        assert!(e.to_string().contains("no/such/dir.prom"), "{e}");
    }
}
