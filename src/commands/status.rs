//! `reyes status`: what is live, through the backend that is live (the one recorded with the
//! last apply, unless `--backend` names one), as text or as JSON with the same facts. With
//! the netlink transport nothing needs the `nft` binary: presence, the digest and the
//! counters are read over netlink.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::backend::Counters;
use crate::config::{Backend as BackendChoice, Config};
use crate::document::{parse_time, rfc3339};
use crate::error::{Classify, CmdResult};
use crate::follower::{self, drift};
use crate::hostrecord;
use crate::live::Kind;
use crate::state::{Applied, StateDir};

use super::backend_failure;

/// How `reyes status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatusFormat {
    /// `key: value` lines.
    #[default]
    Text,
    /// One JSON object (documented in docs/operations.md).
    Json,
}

/// Packets and bytes.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
struct Count {
    packets: u64,
    bytes: u64,
}

impl From<(u64, u64)> for Count {
    fn from((packets, bytes): (u64, u64)) -> Count {
        Count { packets, bytes }
    }
}

/// One audit counter.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
struct AuditCount {
    counter: String,
    /// The destination groups it counts for (several when addresses share a profile chain;
    /// empty when the applied document cannot be compiled again to tell).
    groups: Vec<String>,
    packets: u64,
    bytes: u64,
}

/// The counters, for JSON.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
struct CounterFacts {
    accepted: Option<Count>,
    dropped: Option<Count>,
    audit: Vec<AuditCount>,
}

/// The applied document, for JSON.
#[derive(Debug, Clone, Serialize)]
struct AppliedFacts {
    serial: u64,
    environment: String,
    issued_at: String,
    age_seconds: Option<u64>,
    not_after: String,
    expired: bool,
    policy_digest: String,
    applied_at: String,
    applied_backend: String,
    signer: String,
}

/// Everything `reyes status` reports.
#[derive(Debug, Clone, Serialize)]
struct Facts {
    backend: &'static str,
    transport: &'static str,
    live: bool,
    rules: Option<&'static str>,
    applied: Option<AppliedFacts>,
    counters: Option<CounterFacts>,
    other_backend_live: Vec<String>,
    state_dir: String,
    checked_at: String,
}

fn applied_facts(a: &Applied, now: SystemTime) -> AppliedFacts {
    AppliedFacts {
        serial: a.serial,
        environment: a.environment.clone(),
        issued_at: a.issued_at.clone(),
        age_seconds: parse_time(&a.issued_at)
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .map(|d| d.as_secs()),
        not_after: a.not_after.clone(),
        expired: parse_time(&a.not_after).is_ok_and(|t| t < now),
        policy_digest: a.policy_digest.clone(),
        applied_at: a.applied_at.clone(),
        applied_backend: a.backend.clone(),
        signer: a.signer.clone(),
    }
}

fn counter_facts(c: &Counters, groups: &BTreeMap<String, Vec<String>>) -> CounterFacts {
    CounterFacts {
        accepted: c.accepted.map(Count::from),
        dropped: c.dropped.map(Count::from),
        audit: c
            .audit
            .iter()
            .map(|(name, (p, b))| AuditCount {
                counter: name.clone(),
                groups: groups.get(name).cloned().unwrap_or_default(),
                packets: *p,
                bytes: *b,
            })
            .collect(),
    }
}

/// `drift` as a JSON word.
fn rules_word(d: drift::Drift) -> &'static str {
    match d {
        drift::Drift::Intact => "as_applied",
        drift::Drift::Missing => "missing",
        drift::Drift::Different => "different",
        drift::Drift::Unknown => "unknown",
    }
}

/// Gather the facts: through `--backend`, else the recorded backend, else the config's.
fn facts(cfg: &Config, backend: Option<BackendChoice>) -> CmdResult<Facts> {
    let state = StateDir::open(&cfg.follower.state_dir).runtime()?;
    let applied = state.applied().runtime()?;
    let recorded = hostrecord::load(&state).ok().flatten();
    let from_record = recorded
        .as_ref()
        .filter(|_| backend.is_none())
        .and_then(|r| crate::live::open_recorded(&cfg.follower, r));
    let b = match from_record {
        Some(b) => b,
        None => follower::open_backend(cfg, backend)?,
    };
    let present = b.present().map_err(backend_failure)?;
    let now = SystemTime::now();
    let (rules, counters) = if present {
        let d = drift::check(b.as_ref(), &state);
        let c = b.counters().runtime()?;
        let groups = if c.audit.is_empty() {
            BTreeMap::new()
        } else {
            audit_groups(&state, recorded.as_ref(), b.name())
        };
        (Some(rules_word(d)), Some(counter_facts(&c, &groups)))
    } else {
        (None, None)
    };
    let other_backend_live = match Kind::of(b.name()).map(|k| k.other().owned()) {
        Some(Ok(found)) => found,
        Some(Err(e)) => vec![format!("(could not be read: {e})")],
        None => Vec::new(),
    };
    Ok(Facts {
        backend: b.name(),
        transport: b.transport(),
        live: present,
        rules,
        applied: applied.as_ref().map(|a| applied_facts(a, now)),
        counters,
        other_backend_live,
        state_dir: state.path().display().to_string(),
        checked_at: rfc3339(now),
    })
}

/// Audit mode: the destination groups of each audit counter, by the name `backend` reports
/// it under, from the last-good document compiled again for the recorded host context. Only
/// names are taken from it (the counts are the kernel's), so it is not verified again; when
/// it cannot be read the groups are left out.
fn audit_groups(
    state: &StateDir,
    recorded: Option<&hostrecord::HostRecord>,
    backend: &str,
) -> BTreeMap<String, Vec<String>> {
    let compiled = (|| {
        let (bytes, _) = state.last_good().ok()??;
        let doc = crate::document::Document::parse(&bytes).ok()?;
        crate::compile::compile(&doc, &recorded?.context).ok()
    })();
    let Some(rs) = compiled else {
        return BTreeMap::new();
    };
    crate::compile::audit_counter_groups(&rs)
        .into_iter()
        .map(|(name, groups)| match backend {
            "iptables" => (crate::iptables::names::counter_chain(&name), groups),
            _ => (name, groups),
        })
        .collect()
}

/// The counters part of the text: accepted, dropped, and in audit mode the would-be drops
/// per destination group (or profile) chain.
fn counters_text(c: &CounterFacts) -> String {
    let fmt = |c: Option<Count>| {
        c.map_or("-".to_string(), |c| {
            format!("{} packets, {} bytes", c.packets, c.bytes)
        })
    };
    let mut out = format!(
        "accepted: {}\ndropped: {}\n",
        fmt(c.accepted),
        fmt(c.dropped)
    );
    if !c.audit.is_empty() {
        out.push_str("audit (accepted, would be dropped), by destination group chain:\n");
        for a in &c.audit {
            let groups = if a.groups.is_empty() {
                String::new()
            } else {
                format!(" ({})", a.groups.join(", "))
            };
            out.push_str(&format!(
                "  {}{groups}: {}\n",
                a.counter,
                fmt(Some(Count {
                    packets: a.packets,
                    bytes: a.bytes
                }))
            ));
        }
    }
    out
}

fn text(f: &Facts) -> String {
    let mut out = match f.transport {
        "-" => format!("backend: {}\n", f.backend),
        t => format!("backend: {} ({t})\n", f.backend),
    };
    let missing = match f.backend {
        "nft" => "table missing",
        _ => "chains and sets missing",
    };
    match &f.applied {
        Some(_) if f.live => out.push_str("live: yes\n"),
        Some(_) => out.push_str(&format!("live: NO ({missing}: run `reyes restore`)\n")),
        None => out.push_str(&format!(
            "nothing applied yet (state {})\nlive: {}\n",
            f.state_dir,
            if f.live { "yes" } else { "no" }
        )),
    }
    match f.rules {
        Some("different") => out.push_str("rules: DIFFERENT from what was applied (altered by someone else; the follower re-applies at its next run)\n"),
        Some("unknown") => out.push_str("rules: not known to be as applied (no digest recorded; the follower re-applies at its next run)\n"),
        Some(_) | None => {}
    }
    if let Some(a) = &f.applied {
        let age = a
            .age_seconds
            .map(|s| humantime::format_duration(Duration::from_secs(s)).to_string())
            .unwrap_or_else(|| "?".into());
        out.push_str(&format!(
            "serial: {}\nenvironment: {}\nissued_at: {} (age {age})\nnot_after: {}{}\npolicy_digest: {}\napplied_at: {}\nsigner: {}\n",
            a.serial,
            a.environment,
            a.issued_at,
            a.not_after,
            if a.expired { " (EXPIRED: is the leader publishing?)" } else { "" },
            a.policy_digest,
            a.applied_at,
            a.signer,
        ));
    }
    for o in &f.other_backend_live {
        out.push_str(&format!(
            "also live, of the other backend: {o} (`reyes flush --backend {}` removes it)\n",
            Kind::of(f.backend).map_or("auto", |k| k.other().name())
        ));
    }
    if let Some(c) = &f.counters {
        out.push_str(&counters_text(c));
    }
    out.push_str(&format!("checked_at: {}\n", f.checked_at));
    out
}

/// `reyes status`: the report, and whether reyes' rules are live (exit 1 when not).
pub fn status(
    cfg: &Config,
    backend: Option<BackendChoice>,
    format: StatusFormat,
) -> CmdResult<(String, bool)> {
    let f = facts(cfg, backend)?;
    let out = match format {
        StatusFormat::Text => text(&f),
        StatusFormat::Json => {
            let mut s = serde_json::to_string_pretty(&f).runtime()?;
            s.push('\n');
            s
        }
    };
    Ok((out, f.live))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            backend: "nft",
            transport: "netlink",
            live: true,
            rules: Some("as_applied"),
            applied: None,
            counters: Some(CounterFacts {
                accepted: Some((3, 180).into()),
                dropped: None,
                audit: vec![],
            }),
            other_backend_live: vec![],
            state_dir: "/var/lib/reyes".into(),
            checked_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn status_lists_audit_counters_only_when_there_are_some() {
        let mut c = facts().counters.unwrap();
        assert_eq!(
            counters_text(&c),
            "accepted: 3 packets, 180 bytes\ndropped: -\n"
        );
        c.audit = vec![
            AuditCount {
                counter: "audit_g_sg_web".into(),
                groups: vec!["sg-web".into()],
                packets: 2,
                bytes: 120,
            },
            AuditCount {
                counter: "audit_p_1a2b".into(),
                groups: vec!["sg-db".into(), "sg-web".into()],
                packets: 0,
                bytes: 0,
            },
        ];
        let t = counters_text(&c);
        assert!(
            t.ends_with(
                "audit (accepted, would be dropped), by destination group chain:\n  \
                 audit_g_sg_web (sg-web): 2 packets, 120 bytes\n  \
                 audit_p_1a2b (sg-db, sg-web): 0 packets, 0 bytes\n"
            ),
            "{t}"
        );
    }

    #[test]
    fn text_and_json_tell_the_same_facts() {
        let mut f = facts();
        f.rules = Some("different");
        f.other_backend_live = vec!["ipsets reyes-m4_a".into()];
        let t = text(&f);
        assert!(t.starts_with("backend: nft (netlink)\n"), "{t}");
        assert!(t.contains("rules: DIFFERENT"), "{t}");
        assert!(
            t.contains("also live, of the other backend: ipsets reyes-m4_a (`reyes flush --backend iptables` removes it)"),
            "{t}"
        );
        let j: serde_json::Value = serde_json::to_value(&f).unwrap();
        assert_eq!(j["backend"], "nft");
        assert_eq!(j["transport"], "netlink");
        assert_eq!(j["live"], true);
        assert_eq!(j["rules"], "different");
        assert_eq!(j["counters"]["accepted"]["packets"], 3);
        assert_eq!(j["counters"]["dropped"], serde_json::Value::Null);
        assert_eq!(j["other_backend_live"][0], "ipsets reyes-m4_a");
        assert_eq!(j["applied"], serde_json::Value::Null);
    }
}
