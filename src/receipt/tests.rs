use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::error::Refusal;

fn config(dir: &Path) -> Config {
    let text = format!(
        "environment: prod\nstore: {{directory: {d}/store}}\nfollower:\n  addresses: [10.1.0.12, \"fd00::12\"]\n  state_dir: {d}/state\n  disable_file: {d}/disabled\n  receipts: true\n  host_id: web-1\n",
        d = dir.display()
    );
    Config::parse(&text, Path::new("reyes.yaml")).unwrap()
}

fn applied(serial: u64, policy: &str) -> Applied {
    Applied {
        serial,
        environment: "prod".into(),
        issued_at: "2026-01-01T00:00:00Z".into(),
        not_after: "2026-01-01T01:00:00Z".into(),
        policy_digest: policy.into(),
        document_digest: format!("sha256:doc{serial}"),
        context_digest: "ctx".into(),
        backend: "nft".into(),
        applied_at: "2026-01-01T00:00:05Z".into(),
        signer: "A".into(),
        reyes_version: "0".into(),
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_767_225_600 + secs)
}

fn run(outcome: RunOutcome) -> Run<'static> {
    Run {
        outcome,
        failure: None,
    }
}

#[test]
fn the_applied_digest_is_taken_at_apply_and_kept_for_the_same_policy() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let host = HostId::new("web-1").unwrap();
    let a1 = applied(1, "sha256:p1");
    let live = || Some("sha256:live1".to_string());
    let r1 = build(
        &cfg,
        host.clone(),
        run(RunOutcome::Applied),
        Some(&a1),
        None,
        live(),
        at(0),
    );
    assert_eq!(r1.live.applied_digest, live());
    assert_eq!(r1.drifted(), Some(false));
    assert_eq!(r1.last_success.as_deref(), Some("2026-01-01T00:00:00Z"));
    assert_eq!(r1.addresses.len(), 2);
    assert!(!r1.disabled);

    // Not modified, same table: still not drifted; last success moves on.
    let r2 = build(
        &cfg,
        host.clone(),
        run(RunOutcome::NotModified),
        Some(&a1),
        Some(&r1),
        live(),
        at(60),
    );
    assert_eq!(r2.drifted(), Some(false));
    assert_eq!(r2.last_success.as_deref(), Some("2026-01-01T00:01:00Z"));

    // Someone changed the table: drifted.
    let r3 = build(
        &cfg,
        host.clone(),
        run(RunOutcome::NotModified),
        Some(&a1),
        Some(&r2),
        Some("sha256:other".into()),
        at(120),
    );
    assert_eq!(r3.drifted(), Some(true));
    // ... or removed it.
    let r3b = build(
        &cfg,
        host.clone(),
        run(RunOutcome::NotModified),
        Some(&a1),
        Some(&r2),
        Some("absent".into()),
        at(120),
    );
    assert_eq!(r3b.drifted(), Some(true));

    // A refusal: last success kept, the refusal recorded with its reason, drift still judged.
    let f = Failure::refused(Refusal::new("expired", "document serial 1 expired".into()));
    let refused = Run {
        outcome: RunOutcome::Refused,
        failure: Some(&f),
    };
    let r4 = build(
        &cfg,
        host.clone(),
        refused,
        Some(&a1),
        Some(&r3),
        live(),
        at(180),
    );
    assert_eq!(r4.last_success, r3.last_success);
    let lr = r4.last_refusal.clone().unwrap();
    assert_eq!(
        (lr.reason.as_str(), lr.at.as_str()),
        ("expired", "2026-01-01T00:03:00Z")
    );
    assert_eq!(r4.error.as_deref(), Some("document serial 1 expired"));
    assert_eq!(r4.drifted(), Some(false));
    // The next success keeps the last refusal but clears the error.
    let r5 = build(
        &cfg,
        host.clone(),
        run(RunOutcome::Unchanged),
        Some(&a1),
        Some(&r4),
        live(),
        at(240),
    );
    assert_eq!(r5.last_refusal, Some(lr));
    assert_eq!(r5.error, None);

    // Another policy applied by another path (restore, a revert): the old digest does not
    // count for it; drift is unknown until the next apply.
    let a2 = applied(2, "sha256:p2");
    let r6 = build(
        &cfg,
        host,
        run(RunOutcome::NotModified),
        Some(&a2),
        Some(&r5),
        live(),
        at(300),
    );
    assert_eq!(r6.live.applied_digest, None);
    assert_eq!(r6.drifted(), None);
}

#[test]
fn disabled_and_nothing_applied() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    std::fs::write(d.path().join("disabled"), b"").unwrap();
    let r = build(
        &cfg,
        HostId::new("h").unwrap(),
        run(RunOutcome::Failed),
        None,
        None,
        None,
        at(0),
    );
    assert!(
        r.disabled,
        "the disable file is reported whatever the outcome"
    );
    assert_eq!(
        (r.applied.clone(), r.last_success.clone(), r.drifted()),
        (None, None, None)
    );
}

#[test]
fn parse_round_trip_and_refusals() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let r = build(
        &cfg,
        HostId::new("web-1").unwrap(),
        run(RunOutcome::Applied),
        Some(&applied(7, "sha256:p")),
        None,
        Some("sha256:l".into()),
        at(0),
    );
    let bytes = serde_json::to_vec(&r).unwrap();
    assert_eq!(Receipt::parse(&bytes).unwrap(), r);
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["format"] = 2.into();
    let e = Receipt::parse(v.to_string().as_bytes()).unwrap_err();
    assert!(matches!(e, ParseError::Format(2)), "{e}");
    v["format"] = 1.into();
    v["host_id"] = "../../etc".into();
    let e = Receipt::parse(v.to_string().as_bytes())
        .unwrap_err()
        .to_string();
    assert!(e.contains("host id"), "{e}");
    for bad in [&b"{"[..], b"[]", b"null", b"{\"format\": 1}", b"\xff\xfe"] {
        assert!(Receipt::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn long_error_messages_are_shortened() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let f = Failure::runtime(anyhow::anyhow!("{}", "é".repeat(5000)));
    let r = build(
        &cfg,
        HostId::new("h").unwrap(),
        Run {
            outcome: RunOutcome::Failed,
            failure: Some(&f),
        },
        None,
        None,
        None,
        at(0),
    );
    assert_eq!(r.error.unwrap().chars().count(), MAX_MESSAGE + 3);
}

#[test]
fn write_keeps_a_copy_and_puts_it_in_a_directory_store() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    std::fs::write(d.path().join("disabled"), b"").unwrap();
    let n = write(&cfg, run(RunOutcome::Disabled), at(0)).unwrap();
    let stored = std::fs::read(d.path().join("store/receipts/web-1.json")).unwrap();
    assert_eq!(stored.len(), n);
    assert_eq!(
        std::fs::read(d.path().join("state").join(STATE_FILE)).unwrap(),
        stored
    );
    let r = Receipt::parse(&stored).unwrap();
    assert_eq!(
        (r.host_id.as_str(), r.outcome, r.disabled),
        ("web-1", RunOutcome::Disabled, true)
    );

    // A store that cannot be written: an error to log and count, the local copy still kept.
    std::fs::remove_dir_all(d.path().join("store")).unwrap();
    std::fs::write(d.path().join("store"), b"not a directory").unwrap();
    let e = write(&cfg, run(RunOutcome::Disabled), at(60)).unwrap_err();
    assert!(matches!(e, ReceiptError::Store(_)), "{e}");
    let local =
        Receipt::parse(&std::fs::read(d.path().join("state").join(STATE_FILE)).unwrap()).unwrap();
    assert_eq!(local.written_at, "2026-01-01T00:01:00Z");
}
