use std::time::UNIX_EPOCH;

use super::*;
use crate::receipt::{AppliedFacts, LastRefusal, LiveTable};

const T0: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0 + secs)
}

fn published() -> Published {
    Published {
        serial: 10,
        policy_digest: "sha256:p10".into(),
        issued_at: rfc3339(at(0)),
        not_after: rfc3339(at(3600)),
        verified: true,
    }
}

fn receipt(host: &str, serial: u64, policy: &str, written: u64) -> Receipt {
    Receipt {
        format: crate::receipt::FORMAT,
        host_id: HostId::new(host).unwrap(),
        environment: "prod".into(),
        addresses: vec!["10.1.0.12".parse().unwrap()],
        written_at: rfc3339(at(written)),
        reyes_version: "0.1.0".into(),
        outcome: RunOutcome::NotModified,
        error: None,
        disabled: false,
        applied: Some(AppliedFacts {
            serial,
            policy_digest: policy.into(),
            document_digest: "sha256:d".into(),
            issued_at: rfc3339(at(0)),
            applied_at: rfc3339(at(0)),
            backend: "nft".into(),
        }),
        live: LiveTable {
            digest: Some("sha256:a".into()),
            applied_digest: Some("sha256:a".into()),
            applied_for: Some("k".into()),
        },
        last_success: Some(rfc3339(at(written))),
        last_refusal: None,
    }
}

fn entry(name: &str, r: &Receipt) -> ListedReceipt {
    ListedReceipt {
        name: name.into(),
        body: Ok(serde_json::to_vec(r).unwrap()),
    }
}

/// A sample fleet: one host in every state.
fn sample() -> ReceiptListing {
    let now = 600;
    let current = receipt("web-1", 10, "sha256:p10", now - 20);
    let lagging = receipt("web-2", 9, "sha256:p10", now - 30);
    let mut refusing = receipt("db-1", 9, "sha256:p9", now - 10);
    refusing.outcome = RunOutcome::Refused;
    refusing.error = Some("signature refused: no trusted signature\u{1b}[2J".into());
    refusing.last_refusal = Some(LastRefusal {
        at: rfc3339(at(now - 10)),
        reason: "signature".into(),
        message: "x".into(),
    });
    let mut disabled = receipt("bastion-1", 8, "sha256:p8", now - 40);
    disabled.outcome = RunOutcome::Disabled;
    disabled.disabled = true;
    let mut drifted = receipt("web-3", 10, "sha256:p10", now - 5);
    drifted.live.digest = Some("absent".into());
    let silent = receipt("old-1", 7, "sha256:p7", 0);
    let mut failing = receipt("web-4", 10, "sha256:p10", now - 15);
    failing.outcome = RunOutcome::Failed;
    failing.error = Some("cannot read s3://b/prod/rules.json: timed out".into());
    let ahead = receipt("web-5", 11, "sha256:p11", now - 15);
    let other_env = Receipt {
        environment: "staging".into(),
        ..receipt("stg-1", 10, "sha256:p10", now - 15)
    };
    let impostor = receipt("web-1", 10, "sha256:p10", now - 15);
    ReceiptListing {
        receipts: vec![
            entry("web-1.json", &current),
            entry("web-2.json", &lagging),
            entry("db-1.json", &refusing),
            entry("bastion-1.json", &disabled),
            entry("web-3.json", &drifted),
            entry("old-1.json", &silent),
            entry("web-4.json", &failing),
            entry("web-5.json", &ahead),
            entry("stg-1.json", &other_env),
            entry("web-6.json", &impostor),
            ListedReceipt {
                name: "junk.json".into(),
                body: Ok(b"{\"format\": 1, \"host_id\": \"junk\"".to_vec()),
            },
            ListedReceipt {
                name: "huge.json".into(),
                body: Err(StoreError::TooLarge(
                    "huge.json is larger than the limit of 65536 bytes".into(),
                )),
            },
            ListedReceipt {
                name: "notes\u{7}.txt".into(),
                body: Ok(b"hello".to_vec()),
            },
        ],
        truncated: false,
    }
}

fn states(hosts: &[HostReport]) -> Vec<(String, HostState, bool)> {
    hosts
        .iter()
        .map(|h| (h.host.clone(), h.state, h.outside_tolerance))
        .collect()
}

#[test]
fn every_state_of_a_sample_fleet() {
    let p = published();
    let cfg = FleetConfig::default(); // interval 1m, silent after 3, lagging after 3
    let hosts = judge(Some(&p), sample(), &cfg, "prod", at(600));
    use HostState::*;
    let s = |h: &str, st, o| (h.to_string(), st, o);
    assert_eq!(
        states(&hosts),
        vec![
            s("huge", Malformed, true),
            s("junk", Malformed, true),
            s("notes\\u{7}.txt", Malformed, true),
            s("stg-1", Malformed, true),
            s("web-6", Malformed, true),
            s("old-1", Silent, true),
            s("db-1", Refusing, true),
            s("web-4", Failing, true),
            s("web-3", Drifted, true),
            s("web-5", Ahead, true),
            // Published 10 min ago, lagging_after is 3 min: outside tolerance.
            s("web-2", Lagging, true),
            s("bastion-1", Disabled, true),
            s("web-1", Current, false),
        ]
    );
    let detail = |h: &str| hosts.iter().find(|x| x.host == h).unwrap().detail.clone();
    assert!(
        detail("db-1").starts_with("signature: signature refused"),
        "{}",
        detail("db-1")
    );
    assert!(
        detail("db-1").contains("\\u{1b}[2J"),
        "control characters escaped: {}",
        detail("db-1")
    );
    assert!(
        detail("web-2").contains("runs serial 9 (same policy); 10 published 10m 0s ago"),
        "{}",
        detail("web-2")
    );
    assert!(
        detail("old-1").contains("no receipt for 10m 0s (silent after 3m 0s)"),
        "{}",
        detail("old-1")
    );
    assert!(
        detail("web-6").contains("names host \"web-1\""),
        "{}",
        detail("web-6")
    );
    assert!(detail("stg-1").contains("staging"), "{}", detail("stg-1"));
    assert!(
        detail("huge").contains("larger than the limit"),
        "{}",
        detail("huge")
    );
    assert!(
        detail("junk").starts_with("not a receipt"),
        "{}",
        detail("junk")
    );
}

#[test]
fn tolerance() {
    let p = published();
    // Just published: lagging is within tolerance; disabled tolerated by config.
    let cfg = FleetConfig {
        tolerate: vec![HostState::Disabled],
        ..FleetConfig::default()
    };
    let mut listing = sample();
    listing
        .receipts
        .retain(|r| ["web-1.json", "web-2.json", "bastion-1.json"].contains(&r.name.as_str()));
    let hosts = judge(Some(&p), listing, &cfg, "prod", at(120));
    assert!(
        hosts.iter().all(|h| !h.outside_tolerance),
        "{:?}",
        states(&hosts)
    );
    assert_eq!(
        hosts.iter().find(|h| h.host == "web-2").unwrap().state,
        HostState::Lagging
    );
}

fn report(hosts: Vec<HostReport>, published: Option<Published>) -> Fleet {
    let mut counts = BTreeMap::new();
    for h in &hosts {
        *counts.entry(h.state).or_default() += 1;
    }
    Fleet {
        now: rfc3339(at(600)),
        outside_tolerance: hosts.iter().filter(|h| h.outside_tolerance).count(),
        published,
        published_problem: None,
        counts,
        truncated: false,
        hosts,
    }
}

#[test]
fn text_and_json_reports() {
    let p = published();
    let hosts = judge(Some(&p), sample(), &FleetConfig::default(), "prod", at(600));
    let f = report(hosts, Some(p.clone()));
    assert_eq!(f.exit_code(), 1);
    let text = f.text();
    println!("{text}");
    assert!(text.starts_with("published: serial 10, policy sha256:p10, issued 2026-01-01T00:00:00Z, not after 2026-01-01T01:00:00Z\n"), "{text}");
    assert!(text.contains("hosts: 13 (5 malformed, 1 silent, 1 refusing, 1 failing, 1 drifted, 1 ahead, 1 lagging, 1 disabled, 1 current)\noutside tolerance: 12\n"), "{text}");
    let line = text.lines().find(|l| l.contains("web-1 ")).unwrap();
    assert!(line.starts_with("  current  "), "{line:?}");
    let line = text.lines().find(|l| l.contains("web-2 ")).unwrap();
    assert!(line.starts_with("! lagging  "), "{line:?}");
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );

    let v: serde_json::Value = serde_json::from_str(&f.json()).unwrap();
    assert_eq!(v["outside_tolerance"], 12);
    assert_eq!(v["counts"]["current"], 1);
    assert_eq!(v["published"]["serial"], 10);
    let web1 = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "web-1")
        .unwrap();
    assert_eq!(web1["state"], "current");
    assert_eq!(web1["receipt"]["applied"]["serial"], 10);
    assert_eq!(web1["receipt_age_seconds"], 20);

    // Only current hosts: exit 0. A published-document problem alone: exit 1.
    let ok = report(
        judge(
            Some(&p),
            ReceiptListing {
                receipts: vec![entry(
                    "web-1.json",
                    &receipt("web-1", 10, "sha256:p10", 590),
                )],
                truncated: false,
            },
            &FleetConfig::default(),
            "prod",
            at(600),
        ),
        Some(p),
    );
    assert_eq!(ok.exit_code(), 0, "{}", ok.text());
    let mut bad = ok.clone();
    bad.published_problem = Some("nothing published".into());
    assert_eq!(bad.exit_code(), 1);
    assert!(bad.text().contains("problem: nothing published"));
    let mut truncated = ok;
    truncated.truncated = true;
    assert_eq!(truncated.exit_code(), 1);
}

#[test]
fn ages() {
    let a = |s| ago(Duration::from_secs(s));
    assert_eq!(
        [
            a(0),
            a(59),
            a(60),
            a(3599),
            a(3600 * 5 + 61),
            a(86_400 * 12 + 3600 * 3 + 5)
        ],
        ["0s", "59s", "1m 0s", "59m 59s", "5h 1m", "12d 3h"]
    );
}

#[test]
fn clean_escapes_and_shortens() {
    assert_eq!(clean("a\u{1b}[31mb\n", 100), "a\\u{1b}[31mb\\n");
    assert_eq!(clean("abcdef", 3), "abc...");
    assert_eq!(clean("\u{9b}x", 10), "\\u{9b}x");
}

#[test]
fn nothing_published_is_a_problem_not_a_crash() {
    let d = tempfile::tempdir().unwrap();
    let text = format!(
        "environment: prod\nstore: {{directory: {}}}\n",
        d.path().join("store").display()
    );
    let cfg = Config::parse(&text, std::path::Path::new("r.yaml")).unwrap();
    let f = fleet(&cfg, at(0)).unwrap();
    assert!(f.hosts.is_empty());
    let problem = f.published_problem.clone().unwrap();
    assert!(problem.contains("does not exist"), "{problem}");
    assert_eq!(f.exit_code(), 1);
    assert!(
        f.text().starts_with("published: none\nproblem: "),
        "{}",
        f.text()
    );

    // A receipt alone: listed, judged without a document to compare with.
    let r = receipt("web-1", 10, "sha256:p10", 0);
    crate::store::receipts::put_in_directory(
        &d.path().join("store"),
        &r.host_id,
        &serde_json::to_vec(&r).unwrap(),
    )
    .unwrap();
    let f = fleet(&cfg, at(30)).unwrap();
    assert_eq!(
        states(&f.hosts),
        [("web-1".to_string(), HostState::Current, false)]
    );
    assert!(
        f.hosts[0].detail.contains("no published document"),
        "{}",
        f.hosts[0].detail
    );
}
