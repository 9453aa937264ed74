//! `reyes fleet`: every follower's receipt against the published document, host by host:
//! current, lagging, ahead, refusing, failing, drifted, disabled, silent, or malformed, and
//! whether each is outside the tolerance `fleet` configures (then the command exits 1, so a
//! monitor can page on it).
//!
//! Receipts are untrusted: whoever can write to the store can write one. Each is read with a
//! size limit, parsed without trusting it, must carry the host id its name says and this
//! environment, and everything taken from it is printed with control characters escaped. A
//! receipt that fails any of this is reported as malformed; it never stops the report.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::{Config, FleetConfig, HostId, HostState};
use crate::document::Document;
use crate::error::{CmdResult, Failure};
use crate::receipt::{Receipt, RunOutcome};
use crate::store::{self, FetchOutcome, ListedReceipt, ReceiptListing, StoreError};
use crate::timefmt::{parse_time, rfc3339};

/// The published document, as far as `fleet` needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Published {
    /// Serial.
    pub serial: u64,
    /// Policy digest.
    pub policy_digest: String,
    /// Issue time.
    pub issued_at: String,
    /// Expiry.
    pub not_after: String,
    /// Whether its signatures were checked (`signing.keyring` set).
    pub verified: bool,
}

/// One host's line.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    /// The host id, or for a malformed entry its name in the store (escaped).
    pub host: String,
    /// Its state.
    pub state: HostState,
    /// Outside the configured tolerance.
    pub outside_tolerance: bool,
    /// What the state means for this host (escaped).
    pub detail: String,
    /// Seconds since the receipt was written.
    pub receipt_age_seconds: Option<u64>,
    /// The serial it runs.
    pub serial: Option<u64>,
    /// The receipt itself, when it is one.
    pub receipt: Option<Receipt>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Fleet {
    /// When it was made.
    pub now: String,
    /// The published document.
    pub published: Option<Published>,
    /// Why there is no (usable) published document, or what is wrong with it.
    pub published_problem: Option<String>,
    /// Hosts per state.
    pub counts: BTreeMap<HostState, usize>,
    /// Hosts outside tolerance.
    pub outside_tolerance: usize,
    /// More receipts than reyes reads were there: the rest are not in this report.
    pub truncated: bool,
    /// Every host, by state then id.
    pub hosts: Vec<HostReport>,
}

/// At most `max` characters of untrusted text, control characters escaped.
pub fn clean(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A duration in its two largest units: `45s`, `3m 20s`, `2h 5m`, `12d 3h`.
fn ago(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (days, hours, mins) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, m) => format!("{m}m {secs}s"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// An entry that is not a usable receipt: the host (or the entry's name) and why.
#[derive(Debug)]
struct Malformed {
    host: String,
    detail: String,
}

fn malformed(host: impl Into<String>, detail: impl Into<String>) -> Malformed {
    Malformed {
        host: host.into(),
        detail: detail.into(),
    }
}

/// A receipt's name and body as a receipt of that host, or why not.
fn receipt_of(entry: ListedReceipt, environment: &str) -> Result<(HostId, Receipt), Malformed> {
    let shown = clean(&entry.name, 140);
    let Some(id) = HostId::from_file_name(&entry.name) else {
        return Err(malformed(shown, "not a receipt name (<host id>.json)"));
    };
    let host = id.to_string();
    let bytes = entry
        .body
        .map_err(|e| malformed(&host, clean(&e.to_string(), 300)))?;
    let r = Receipt::parse(&bytes).map_err(|e| malformed(&host, clean(&e.to_string(), 300)))?;
    if r.host_id != id {
        return Err(malformed(
            host,
            format!(
                "the receipt names host {:?}, not the one its name says",
                clean(r.host_id.as_str(), 140)
            ),
        ));
    }
    if r.environment != environment {
        return Err(malformed(
            host,
            format!(
                "receipt for environment {:?}, not {environment:?}",
                clean(&r.environment, 80)
            ),
        ));
    }
    Ok((id, r))
}

/// Since when, if `t` is a time (a future time counts as now).
fn since(t: &str, now: SystemTime) -> Option<Duration> {
    let t = parse_time(t).ok()?;
    Some(now.duration_since(t).unwrap_or_default())
}

/// The state of a host whose receipt is `r`, what it means, and whether it is outside the
/// tolerance (before `fleet.tolerate`).
pub fn classify(
    r: &Receipt,
    published: Option<&Published>,
    cfg: &FleetConfig,
    now: SystemTime,
) -> (HostState, String, bool) {
    let Some(age) = since(&r.written_at, now) else {
        return (
            HostState::Malformed,
            format!("written_at {:?} is not a time", clean(&r.written_at, 40)),
            true,
        );
    };
    let serial = r.applied.as_ref().map(|a| a.serial);
    let runs = match serial {
        Some(s) => format!("runs serial {s}"),
        None => "nothing applied".to_string(),
    };
    if age > cfg.silent_after() {
        let detail = format!(
            "no receipt for {} (silent after {}); {runs}",
            ago(age),
            ago(cfg.silent_after())
        );
        return (HostState::Silent, detail, true);
    }
    if r.disabled {
        return (
            HostState::Disabled,
            format!("disable file present; {runs}"),
            true,
        );
    }
    let error = || clean(r.error.as_deref().unwrap_or("no message"), 300);
    match r.outcome {
        RunOutcome::Refused => {
            let reason = r
                .last_refusal
                .as_ref()
                .map_or("other", |l| l.reason.as_str());
            let detail = format!("{}: {}; {runs}", clean(reason, 40), error());
            return (HostState::Refusing, detail, true);
        }
        RunOutcome::Failed => {
            return (HostState::Failing, format!("{}; {runs}", error()), true);
        }
        _ => {}
    }
    if r.drifted() == Some(true) {
        let detail = format!(
            "live table {} is not the table applied ({}); {runs}",
            short(r.live.digest.as_deref()),
            short(r.live.applied_digest.as_deref())
        );
        return (HostState::Drifted, detail, true);
    }
    let (Some(a), Some(p)) = (&r.applied, published) else {
        let detail = match published {
            None => format!("{runs}; no published document to compare with"),
            Some(_) => runs,
        };
        let state = if r.applied.is_some() {
            HostState::Current
        } else {
            HostState::Lagging
        };
        return (state, detail, r.applied.is_none());
    };
    if a.serial > p.serial {
        let detail = format!(
            "runs serial {}, newer than the published {} (was the store rolled back?)",
            a.serial, p.serial
        );
        return (HostState::Ahead, detail, true);
    }
    if a.serial < p.serial {
        let behind = since(&p.issued_at, now).unwrap_or_default();
        let same = if a.policy_digest == p.policy_digest {
            " (same policy)"
        } else {
            ""
        };
        let detail = format!(
            "runs serial {}{same}; {} published {} ago",
            a.serial,
            p.serial,
            ago(behind)
        );
        return (HostState::Lagging, detail, behind > cfg.lagging_after());
    }
    (HostState::Current, runs, false)
}

fn short(d: Option<&str>) -> String {
    match d {
        Some(d) => clean(d.get(..19).unwrap_or(d), 19),
        None => "-".into(),
    }
}

/// Judge every receipt of a listing against the published document.
pub fn judge(
    published: Option<&Published>,
    listing: ReceiptListing,
    cfg: &FleetConfig,
    environment: &str,
    now: SystemTime,
) -> Vec<HostReport> {
    let mut hosts: Vec<HostReport> = listing
        .receipts
        .into_iter()
        .map(|entry| match receipt_of(entry, environment) {
            Err(m) => HostReport {
                host: m.host,
                state: HostState::Malformed,
                outside_tolerance: !cfg.tolerate.contains(&HostState::Malformed),
                detail: m.detail,
                receipt_age_seconds: None,
                serial: None,
                receipt: None,
            },
            Ok((id, r)) => {
                let (state, detail, outside) = classify(&r, published, cfg, now);
                HostReport {
                    host: id.to_string(),
                    state,
                    outside_tolerance: outside && !cfg.tolerate.contains(&state),
                    detail,
                    receipt_age_seconds: since(&r.written_at, now).map(|d| d.as_secs()),
                    serial: r.applied.as_ref().map(|a| a.serial),
                    receipt: Some(r),
                }
            }
        })
        .collect();
    let rank = |s: HostState| HostState::ALL.iter().position(|x| *x == s);
    hosts.sort_by(|a, b| (rank(a.state), &a.host).cmp(&(rank(b.state), &b.host)));
    hosts
}

/// The published document: verified when `signing.keyring` is set, else parsed only.
fn published(cfg: &Config, store: &dyn store::Store, now: SystemTime) -> CmdResult<Published> {
    let f = match store.fetch(None).map_err(Failure::runtime)? {
        FetchOutcome::Fetched(f) => f,
        FetchOutcome::Unchanged => {
            return Err(Failure::runtime(anyhow::anyhow!(
                "the store answered not-modified to an unconditional fetch"
            )))
        }
    };
    let (doc, verified) = if cfg.signing.keyring.is_some() {
        let trust = crate::follower::trust_root(cfg)?;
        let v = crate::follower::verify_document(
            &trust,
            &f.document,
            &f.signature,
            &cfg.environment,
            now,
            false,
        )
        .map_err(|e| e.context("the published document does not verify"))?;
        (v.document, true)
    } else {
        let d = Document::parse(&f.document)
            .map_err(|e| Failure::refused(e).context("the published document does not parse"))?;
        (d, false)
    };
    Ok(Published {
        serial: doc.serial,
        policy_digest: doc.policy_digest.clone(),
        issued_at: doc.issued_at.clone(),
        not_after: doc.not_after.clone(),
        verified,
    })
}

/// Read every receipt, then the published document, and judge.
pub fn fleet(cfg: &Config, now: SystemTime) -> CmdResult<Fleet> {
    let store = store::open(&cfg.store).map_err(Failure::usage)?;
    // Receipts first: a host cannot then look ahead of a document published meanwhile.
    let listing = store
        .receipts(crate::receipt::LIMITS)
        .map_err(|e| match e {
            StoreError::Unsupported(_) | StoreError::Config(_) => Failure::usage(e),
            other => Failure::runtime(other),
        })?;
    let truncated = listing.truncated;
    let (published, mut problem) = match published(cfg, store.as_ref(), now) {
        Ok(p) => (Some(p), None),
        Err(f) => (None, Some(f.to_string())),
    };
    if let Some(p) = &published {
        if parse_time(&p.not_after).is_ok_and(|t| now > t) {
            problem = Some(format!(
                "the published document (serial {}) expired at {}: followers refuse it",
                p.serial, p.not_after
            ));
        }
    }
    let hosts = judge(
        published.as_ref(),
        listing,
        &cfg.fleet,
        &cfg.environment,
        now,
    );
    let mut counts = BTreeMap::new();
    for h in &hosts {
        *counts.entry(h.state).or_default() += 1;
    }
    Ok(Fleet {
        now: rfc3339(now),
        outside_tolerance: hosts.iter().filter(|h| h.outside_tolerance).count(),
        published,
        published_problem: problem,
        counts,
        truncated,
        hosts,
    })
}

impl Fleet {
    /// 1 when a host is outside tolerance, the published document has a problem, or not
    /// every receipt was read; else 0.
    pub fn exit_code(&self) -> u8 {
        let bad = self.outside_tolerance > 0 || self.published_problem.is_some() || self.truncated;
        u8::from(bad)
    }

    /// The JSON report.
    pub fn json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()));
        s.push('\n');
        s
    }

    /// The text report: the published document, counts, then one line per host (`!` marks
    /// those outside tolerance).
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        match &self.published {
            Some(p) => {
                let _ = writeln!(
                    out,
                    "published: serial {}, policy {}, issued {}, not after {}{}",
                    p.serial,
                    short(Some(&p.policy_digest)),
                    p.issued_at,
                    p.not_after,
                    if p.verified {
                        ""
                    } else {
                        " (signature not checked: no signing.keyring)"
                    }
                );
            }
            None => out.push_str("published: none\n"),
        }
        if let Some(m) = &self.published_problem {
            let _ = writeln!(out, "problem: {}", clean(m, 400));
        }
        let counts: Vec<String> = HostState::ALL
            .iter()
            .filter_map(|s| self.counts.get(s).map(|n| format!("{n} {s}")))
            .collect();
        let _ = writeln!(
            out,
            "hosts: {}{}{}",
            self.hosts.len(),
            if counts.is_empty() {
                String::new()
            } else {
                format!(" ({})", counts.join(", "))
            },
            if self.truncated {
                format!(
                    "; more than {} receipts, the rest not read",
                    crate::receipt::MAX_RECEIPTS
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(out, "outside tolerance: {}", self.outside_tolerance);
        if self.hosts.is_empty() {
            return out;
        }
        let rows: Vec<[String; 5]> = self
            .hosts
            .iter()
            .map(|h| {
                [
                    format!(
                        "{} {}",
                        if h.outside_tolerance { "!" } else { " " },
                        h.state
                    ),
                    h.host.clone(),
                    h.serial.map_or("-".into(), |s| s.to_string()),
                    h.receipt_age_seconds
                        .map_or("-".into(), |s| ago(Duration::from_secs(s))),
                    h.detail.clone(),
                ]
            })
            .collect();
        let head = ["  STATE", "HOST", "SERIAL", "RECEIPT AGE", "DETAIL"].map(String::from);
        let mut width = [0usize; 4];
        for r in std::iter::once(&head).chain(&rows) {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        out.push('\n');
        for r in std::iter::once(&head).chain(&rows) {
            let line = format!(
                "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                w0 = width[0],
                w1 = width[1],
                w2 = width[2],
                w3 = width[3]
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }
}

#[cfg(test)]
mod tests;
