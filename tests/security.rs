//! Signed-policy security: what an attacker with store write access, a replayed file, a
//! retired or stolen key can and cannot do. Each test here is named in docs/security.md.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openpgp::cert::prelude::*;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::stream::{Message, Signer};
use openpgp::serialize::Serialize;
use openpgp::types::{ReasonForRevocation, SignatureType};
use openpgp::Packet;
use reyes::config::{Config, TrustedKey};
use reyes::document::{self, BuildOptions, Document, DocumentError};
use reyes::error::ExitKind;
use reyes::follower::verify_document;
use reyes::leader::{self, LeaderOptions, LeaderOutcome, MAX_SERIAL};
use reyes::signing::{append_signature, SigningKey, TrustRoot};
use reyes::store::{directory::DirectoryStore, Expect, FetchOutcome, Store, StoreError};
use sequoia_openpgp as openpgp;

use common::{reyes_bin, text};

const DAY: Duration = Duration::from_secs(86_400);

fn now() -> SystemTime {
    // Whole seconds, like every time in a document.
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    UNIX_EPOCH + Duration::from_secs(s)
}

/// A certificate with a signing subkey, created `age` ago, valid for `validity` (None: no
/// expiry).
fn cert(name: &str, age: Duration, validity: Option<Duration>) -> Cert {
    CertBuilder::new()
        .set_creation_time(now() - age)
        .set_validity_period(validity)
        .add_userid(name)
        .add_signing_subkey()
        .generate()
        .unwrap()
        .0
}

/// A detached signature made at `at` by the cert's signing key valid then (whatever its state
/// now): what an attacker holding an old or retired key can make.
fn sign_raw(cert: &Cert, data: &[u8], at: SystemTime) -> Vec<u8> {
    let p = StandardPolicy::new();
    let key = cert
        .keys()
        .with_policy(&p, at)
        .for_signing()
        .secret()
        .next()
        .expect("a signing key valid at that time")
        .key()
        .clone()
        .into_keypair()
        .unwrap();
    let mut out = Vec::new();
    let m = Message::new(&mut out);
    let mut s = Signer::new(m, key)
        .unwrap()
        .detached()
        .creation_time(at)
        .build()
        .unwrap();
    std::io::Write::write_all(&mut s, data).unwrap();
    s.finalize().unwrap();
    out
}

fn public(c: &Cert) -> Cert {
    c.clone().strip_secret_key_material()
}

fn example_inventory() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/inventory.yaml")
}

/// The example policy as a document issued at `issued_at`.
fn doc(serial: u64, issued_at: SystemTime) -> document::Built {
    let inv = reyes::inventory::static_file::load(&example_inventory()).unwrap();
    document::build(&inv, &BuildOptions::new("prod", serial, issued_at, DAY)).unwrap()
}

fn refused_with(r: Result<impl std::fmt::Debug, reyes::error::Failure>, needle: &str) {
    let f = r.expect_err("must be refused");
    assert_eq!(f.kind, ExitKind::Refused, "{f}");
    assert!(f.to_string().contains(needle), "{needle:?} not in: {f}");
}

// ---------------------------------------------------------------- key validity (item 2)

#[test]
fn expired_key_signatures_are_refused_now() {
    // Valid from 3 days ago for 1 day: it signed while valid, it is expired now.
    let c = cert("old", 3 * DAY, Some(DAY));
    let made = now() - 3 * DAY + Duration::from_secs(3600);
    let d = doc(1, made);
    let sig = sign_raw(&c, &d.bytes, made);
    let root = TrustRoot::from_certs(vec![public(&c)], &[]);
    // At the time it was made it was fine...
    root.verify_at(&d.bytes, &sig, made + Duration::from_secs(60))
        .unwrap();
    // ...but keys are checked as they are now.
    let e = root
        .verify_at(&d.bytes, &sig, now())
        .unwrap_err()
        .to_string();
    assert!(e.contains("expired"), "{e}");
    refused_with(
        verify_document(&root, &d.bytes, &sig, "prod", now(), false),
        "expired",
    );
}

#[test]
fn revoked_subkey_signatures_are_refused_even_when_made_before_the_revocation() {
    let c = cert("sub", 2 * DAY, None);
    let made = now() - DAY;
    let d = doc(1, made);
    let sig = sign_raw(&c, &d.bytes, made);
    // Retire the signing subkey an hour ago (a soft revocation: signatures made before it
    // stay valid in OpenPGP's model, which is exactly what a thief of the old key exploits).
    let p = StandardPolicy::new();
    let sub = c
        .keys()
        .subkeys()
        .with_policy(&p, None)
        .for_signing()
        .next()
        .unwrap()
        .key()
        .clone();
    let mut primary = c
        .primary_key()
        .key()
        .clone()
        .parts_into_secret()
        .unwrap()
        .into_keypair()
        .unwrap();
    let rev = SubkeyRevocationBuilder::new()
        .set_reason_for_revocation(ReasonForRevocation::KeyRetired, b"rotated")
        .unwrap()
        .set_signature_creation_time(now() - Duration::from_secs(3600))
        .unwrap()
        .build(&mut primary, &c, &sub, None)
        .unwrap();
    let (revoked, _) = c
        .insert_packets(std::iter::once(Packet::from(rev)))
        .unwrap();
    let root = TrustRoot::from_certs(vec![public(&revoked)], &[]);
    root.verify_at(&d.bytes, &sig, made + Duration::from_secs(60))
        .unwrap();
    let e = root
        .verify_at(&d.bytes, &sig, now())
        .unwrap_err()
        .to_string();
    assert!(e.contains("revoked"), "{e}");
}

#[test]
fn primary_revoked_by_a_revocation_certificate_in_the_keyring() {
    let c = cert("prim", 2 * DAY, None);
    let made = now() - DAY;
    let d = doc(1, made);
    let sig = sign_raw(&c, &d.bytes, made);
    let mut primary = c
        .primary_key()
        .key()
        .clone()
        .parts_into_secret()
        .unwrap()
        .into_keypair()
        .unwrap();
    let rev = CertRevocationBuilder::new()
        .set_reason_for_revocation(ReasonForRevocation::KeyRetired, b"retired")
        .unwrap()
        .set_signature_creation_time(now() - Duration::from_secs(3600))
        .unwrap()
        .build(&mut primary, &c, None)
        .unwrap();
    assert_eq!(rev.typ(), SignatureType::KeyRevocation);
    // A keyring directory: the certificate as exported, and the revocation certificate as a
    // separate file (as `gpg --gen-revoke` writes it).
    let dir = tempfile::tempdir().unwrap();
    let mut cert_bytes = Vec::new();
    public(&c).serialize(&mut cert_bytes).unwrap();
    std::fs::write(dir.path().join("leader.pgp"), &cert_bytes).unwrap();
    let before = TrustRoot::load(dir.path(), &[]).unwrap();
    before.verify_at(&d.bytes, &sig, now()).unwrap();
    let mut rev_bytes = Vec::new();
    Packet::from(rev).serialize(&mut rev_bytes).unwrap();
    std::fs::write(dir.path().join("leader.rev"), &rev_bytes).unwrap();
    let after = TrustRoot::load(dir.path(), &[]).unwrap();
    let e = after
        .verify_at(&d.bytes, &sig, now())
        .unwrap_err()
        .to_string();
    assert!(e.contains("revoked"), "{e}");
}

#[test]
fn backdated_signatures_are_refused() {
    let c = cert("k", 3 * DAY, None);
    let issued = now();
    let d = doc(1, issued);
    let root = TrustRoot::from_certs(vec![public(&c)], &[]);
    // Made at issued_at: fine.
    let good = sign_raw(&c, &d.bytes, issued);
    verify_document(&root, &d.bytes, &good, "prod", now(), true).unwrap();
    // Made a day, or ten minutes, before the document says it was issued.
    for at in [issued - DAY, issued - Duration::from_secs(600)] {
        let sig = sign_raw(&c, &d.bytes, at);
        refused_with(
            verify_document(&root, &d.bytes, &sig, "prod", now(), true),
            "backdated",
        );
    }
    // The signature is good in itself: only the skew check catches it.
    let old = sign_raw(&c, &d.bytes, issued - DAY);
    root.verify_at(&d.bytes, &old, now()).unwrap();
}

#[test]
fn trusted_fingerprint_windows_rotate_keys() {
    let c = cert("k", 3 * DAY, None);
    let fp = c.fingerprint().to_hex();
    let d = doc(1, now());
    let sig = sign_raw(&c, &d.bytes, now());
    let window = |nb: Option<SystemTime>, na: Option<SystemTime>| TrustedKey {
        fingerprint: fp.clone(),
        not_before: nb,
        not_after: na,
    };
    let ok = TrustRoot::from_certs(vec![public(&c)], &[window(Some(now() - DAY), None)]);
    ok.verify_at(&d.bytes, &sig, now()).unwrap();
    for w in [
        window(None, Some(now() - Duration::from_secs(60))),
        window(Some(now() + DAY), None),
    ] {
        let root = TrustRoot::from_certs(vec![public(&c)], &[w]);
        let e = root
            .verify_at(&d.bytes, &sig, now())
            .unwrap_err()
            .to_string();
        assert!(e.contains("window"), "{e}");
    }
    // In YAML.
    let yaml = format!(
        "environment: prod\nstore: {{directory: /s}}\nsigning:\n  trusted_fingerprints:\n    - {fp}\n    - {{fingerprint: \"{fp}\", not_before: \"2026-01-01T00:00:00Z\", not_after: \"2027-01-01T00:00:00Z\"}}\n"
    );
    let cfg = Config::parse(&yaml, Path::new("x.yaml")).unwrap();
    assert_eq!(cfg.signing.trusted_fingerprints.len(), 2);
    assert!(cfg.signing.trusted_fingerprints[1].not_after.is_some());
    let bad = yaml.replace("2026-01-01T00:00:00Z", "2028-01-01T00:00:00Z");
    let e = Config::parse(&bad, Path::new("x.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not_before is after not_after"), "{e}");
}

// ---------------------------------------------------------------- k of n (item 3)

#[test]
fn threshold_two_needs_two_distinct_good_signatures() {
    let a = cert("a", DAY, None);
    let b = cert("b", DAY, None);
    let issued = now();
    let d = doc(1, issued);
    let allow: Vec<TrustedKey> = [&a, &b]
        .iter()
        .map(|c| TrustedKey::new(&c.fingerprint().to_hex()).unwrap())
        .collect();
    let root = TrustRoot::from_certs(vec![public(&a), public(&b)], &allow)
        .with_threshold(2)
        .unwrap();
    let sa = sign_raw(&a, &d.bytes, issued);
    let sb = sign_raw(&b, &d.bytes, issued);
    // One signature: refused.
    refused_with(
        verify_document(&root, &d.bytes, &sa, "prod", now(), true),
        "threshold",
    );
    // The same key twice counts once.
    let twice = append_signature(&sa, &sign_raw(&a, &d.bytes, issued)).unwrap();
    refused_with(
        verify_document(&root, &d.bytes, &twice, "prod", now(), true),
        "threshold",
    );
    // Two distinct keys: accepted.
    let both = append_signature(&sa, &sb).unwrap();
    let v = verify_document(&root, &d.bytes, &both, "prod", now(), true).unwrap();
    assert_eq!(v.signer.fingerprints.len(), 2);
    // One good and one bad signature (b's over other bytes): refused, as gpg reports it.
    let other = doc(2, issued);
    let bad = append_signature(&sa, &sign_raw(&b, &other.bytes, issued)).unwrap();
    refused_with(
        verify_document(&root, &d.bytes, &bad, "prod", now(), true),
        "bad signature",
    );
    // Even at threshold 1, a bad signature beside a good one is a refusal.
    let one = TrustRoot::from_certs(vec![public(&a), public(&b)], &allow);
    refused_with(
        verify_document(&one, &d.bytes, &bad, "prod", now(), true),
        "bad signature",
    );
    // A signature by a key outside the keyring beside a good one: refused.
    let stranger = cert("x", DAY, None);
    let mixed = append_signature(&sa, &sign_raw(&stranger, &d.bytes, issued)).unwrap();
    assert!(one.verify_at(&d.bytes, &mixed, now()).is_err());
    // A threshold no keyring can meet is a configuration error.
    let e = TrustRoot::from_certs(vec![public(&a)], &[])
        .with_threshold(2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("threshold"), "{e}");
}

// ---------------------------------------------------------------- canonical (item 4)

#[test]
fn duplicate_ids_and_unsorted_lists_are_refused() {
    let d = doc(1, now());
    let reencode = |mut x: Document| {
        x.policy_digest = x.policy.digest();
        x.to_bytes()
    };
    // A group twice (the digest fixed up, so only the canonical check can catch it).
    let mut dup = d.document.clone();
    let g = dup.policy.groups[0].clone();
    dup.policy.groups.insert(0, g);
    let e = Document::parse(&reencode(dup)).unwrap_err();
    assert!(matches!(e, DocumentError::NotCanonical(_)), "{e}");
    assert!(e.to_string().contains("appears twice"), "{e}");
    // A network id twice.
    let mut dup = d.document.clone();
    let n = dup.policy.networks[0].clone();
    dup.policy.networks.push(n);
    let e = Document::parse(&reencode(dup)).unwrap_err().to_string();
    assert!(e.contains("networks"), "{e}");
    // A prefix list id twice.
    let mut dup = d.document.clone();
    let p = dup.policy.prefix_lists[0].clone();
    dup.policy.prefix_lists.push(p);
    let e = Document::parse(&reencode(dup)).unwrap_err().to_string();
    assert!(e.contains("prefix_lists"), "{e}");
    // Members out of order.
    let mut unsorted = d.document.clone();
    let g = unsorted
        .policy
        .groups
        .iter_mut()
        .find(|g| g.members.len() > 1)
        .unwrap();
    g.members.reverse();
    let e = Document::parse(&reencode(unsorted))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not sorted") && e.contains("members"), "{e}");
    // Through the follower's checks: exit 3 with the reason.
    let c = cert("k", DAY, None);
    let mut dup = d.document.clone();
    let g = dup.policy.groups[0].clone();
    dup.policy.groups.insert(0, g);
    let bytes = reencode(dup);
    let sig = sign_raw(&c, &bytes, now());
    let root = TrustRoot::from_certs(vec![public(&c)], &[]);
    refused_with(
        verify_document(&root, &bytes, &sig, "prod", now(), true),
        "appears twice",
    );
}

// ---------------------------------------------------------------- leader (item 1)

/// A leader set-up: key, keyring, directory store, the example inventory.
struct Lead {
    dir: tempfile::TempDir,
}

impl Lead {
    fn new(names: &[&str]) -> Lead {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(example_inventory(), dir.path().join("inventory.yaml")).unwrap();
        std::fs::create_dir(dir.path().join("keyring")).unwrap();
        for n in names {
            let (secret, public, _) = reyes::signing::keygen(n, None).unwrap();
            std::fs::write(dir.path().join(format!("{n}.secret.asc")), secret).unwrap();
            std::fs::write(dir.path().join(format!("keyring/{n}.asc")), public).unwrap();
        }
        Lead { dir }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self, key: &str, extra: &str) -> Config {
        self.config_with(key, extra, "inventory.yaml", "keyring", key)
    }

    /// A config named `name`.yaml with this inventory file and keyring.
    fn config_with(
        &self,
        key: &str,
        extra: &str,
        inventory: &str,
        keyring: &str,
        name: &str,
    ) -> Config {
        let text = format!(
            "environment: prod\nstore:\n  directory: store\nsigning:\n  key: {key}.secret.asc\n  keyring: {keyring}\n  validity: 1h\n{extra}inventory:\n  file: {inventory}\n  dynamic_subnets: [workers]\n"
        );
        let path = self.p(&format!("{name}.yaml"));
        std::fs::write(&path, text).unwrap();
        Config::load(&path).unwrap()
    }

    fn store(&self) -> DirectoryStore {
        DirectoryStore::new(self.p("store"))
    }

    fn stored(&self) -> reyes::store::Fetched {
        match self.store().fetch(None).unwrap() {
            FetchOutcome::Fetched(f) => f,
            FetchOutcome::Unchanged => panic!("unchanged"),
        }
    }

    fn stored_doc(&self) -> Document {
        Document::parse(&self.stored().document).unwrap()
    }
}

fn published(o: LeaderOutcome) -> u64 {
    match o {
        LeaderOutcome::Published { serial, .. } => serial,
        other => panic!("not published: {other:?}"),
    }
}

#[test]
fn a_forged_serial_in_the_store_does_not_freeze_the_leader() {
    let l = Lead::new(&["leader"]);
    let cfg = l.config("leader", "");
    let t0 = now();
    let s1 = published(leader::run_once(&cfg, &LeaderOptions::default(), t0).unwrap());
    // An attacker with write access to the store (no key) sets the serial to 2^64-1.
    let doc_path = l.p("store/current/rules.json");
    let text = std::fs::read_to_string(&doc_path).unwrap();
    let forged = text.replace(
        &format!("\"serial\":{s1},"),
        "\"serial\":18446744073709551615,",
    );
    assert_ne!(text, forged);
    // Both copies of the document (the .gz is what readers take when it is as new).
    std::fs::write(
        l.p("store/current/rules.json.gz"),
        reyes::fsutil::gzip(forged.as_bytes()),
    )
    .unwrap();
    std::fs::write(&doc_path, forged).unwrap();
    // The next run ignores the unverifiable document: its serial moves on from the time,
    // not from the forgery.
    let s2 = published(
        leader::run_once(&cfg, &LeaderOptions::default(), t0 + Duration::from_secs(5)).unwrap(),
    );
    assert!(s2 > s1 && s2 <= MAX_SERIAL, "serial {s2}");
    assert_eq!(l.stored_doc().serial, s2);
    // And a forged document with the same policy is not taken as "unchanged".
    let trust = reyes::follower::trust_root(&cfg).unwrap();
    let f = l.stored();
    verify_document(&trust, &f.document, &f.signature, "prod", now(), true).unwrap();
}

#[test]
fn serials_above_2_pow_53_are_refused_with_exit_1() {
    let l = Lead::new(&["leader"]);
    let cfg = l.config("leader", "");
    // A validly signed document at the limit (as a stolen key could publish).
    let key = SigningKey::from_config(&cfg.signing).unwrap();
    let d = doc(MAX_SERIAL, now());
    let sig = key.sign_at(&d.bytes, now()).unwrap();
    l.store().publish(&d.bytes, &sig).unwrap();
    let f = leader::run_once(&cfg, &LeaderOptions::default(), now()).unwrap_err();
    assert_eq!(f.kind, ExitKind::Runtime, "{f}");
    assert!(f.to_string().contains("2^53"), "{f}");
    // Nothing was published over it.
    assert_eq!(l.stored_doc().serial, MAX_SERIAL);
}

#[test]
fn leaders_cosign_and_followers_need_the_threshold() {
    let l = Lead::new(&["a", "b"]);
    let extra = "  threshold: 2\n";
    let a = l.config("a", extra);
    let b = l.config("b", extra);
    let t = now();
    let serial = published(leader::run_once(&a, &LeaderOptions::default(), t).unwrap());
    let trust = reyes::follower::trust_root(&a).unwrap();
    let f = l.stored();
    // One stolen leader key is not enough.
    refused_with(
        verify_document(&trust, &f.document, &f.signature, "prod", now(), true),
        "threshold",
    );
    // A's next run sees its own publication waiting for co-signers and leaves it alone.
    assert_eq!(
        leader::run_once(&a, &LeaderOptions::default(), t + Duration::from_secs(1)).unwrap(),
        LeaderOutcome::Fresh { serial }
    );
    let cosign = LeaderOptions {
        cosign: true,
        ..Default::default()
    };
    assert_eq!(
        leader::run_once(&b, &cosign, t + Duration::from_secs(2)).unwrap(),
        LeaderOutcome::Cosigned { serial }
    );
    let f = l.stored();
    let v = verify_document(&trust, &f.document, &f.signature, "prod", now(), true).unwrap();
    assert_eq!(v.signer.fingerprints.len(), 2);
    assert_eq!(
        leader::run_once(&b, &cosign, t + Duration::from_secs(3)).unwrap(),
        LeaderOutcome::AlreadySigned { serial }
    );
    // A co-signer whose inventory differs refuses (exit 3) and leaves the store alone.
    let inv = std::fs::read_to_string(l.p("inventory.yaml")).unwrap();
    std::fs::write(
        l.p("inventory.yaml"),
        inv.replace("10.50.0.0/24", "10.51.0.0/24"),
    )
    .unwrap();
    let before = l.stored();
    let e = leader::run_once(&b, &cosign, t + Duration::from_secs(4)).unwrap_err();
    assert_eq!(e.kind, ExitKind::Refused, "{e}");
    assert!(e.to_string().contains("not co-signing"), "{e}");
    assert_eq!(l.stored(), before);
}

#[test]
fn directory_store_writes_are_conditional_and_locked() {
    let d = tempfile::tempdir().unwrap();
    let a = DirectoryStore::new(d.path().to_path_buf());
    let b = DirectoryStore::new(d.path().to_path_buf());
    a.publish_expecting(b"doc-1", b"sig-1", Expect::Absent)
        .unwrap();
    let e = b
        .publish_expecting(b"doc-x", b"sig-x", Expect::Absent)
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    let FetchOutcome::Fetched(seen) = b.fetch(None).unwrap() else {
        panic!()
    };
    a.publish_expecting(b"doc-2", b"sig-2", Expect::Current(&seen))
        .unwrap();
    let e = b
        .publish_expecting(b"doc-3", b"sig-3", Expect::Current(&seen))
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    // One leader at a time holds the store's lock.
    let held = a.lock(Duration::from_secs(1)).unwrap();
    assert!(held.is_some());
    let e = b.lock(Duration::from_millis(100)).unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    drop(held);
    b.lock(Duration::from_millis(100)).unwrap();
}

// ---------------------------------------------------------------- smaller holes (item 5)

#[test]
fn huge_validity_is_a_config_error_with_location() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("reyes.yaml");
    std::fs::write(
        &cfg,
        "environment: prod\nstore:\n  directory: store\nsigning:\n  validity: 100000000000d\n",
    )
    .unwrap();
    let e = Config::load(&cfg).unwrap_err().to_string();
    assert!(e.contains("reyes.yaml:5:"), "{e}");
    assert!(e.contains("signing.validity"), "{e}");
    let o = Command::new(reyes_bin())
        .args(["--config", cfg.to_str().unwrap(), "leader", "--once"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("reyes.yaml:5:"), "{}", text(&o));
    // Building with an unrepresentable not_after is an error, not a panic.
    let inv = reyes::inventory::static_file::load(&example_inventory()).unwrap();
    let r = document::build(
        &inv,
        &BuildOptions::new("prod", 1, now(), Duration::from_secs(u64::MAX / 4)),
    );
    assert!(r.is_err());
}

#[test]
fn plain_http_endpoints_only_for_loopback() {
    let cfg = |endpoint: &str, extra: &str| {
        Config::parse(
            &format!("environment: prod\nstore:\n  s3: {{bucket: b, key: k, endpoint: \"{endpoint}\"{extra}}}\n"),
            Path::new("x.yaml"),
        )
    };
    for ok in [
        "http://127.0.0.1:5000",
        "http://[::1]:5000/",
        "http://localhost:9000",
        "https://s3.example.com",
    ] {
        cfg(ok, "").unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    let e = cfg("http://10.0.0.5:9000", "").unwrap_err().to_string();
    assert!(e.contains("allow_http") && e.starts_with("x.yaml:"), "{e}");
    assert!(cfg("HTTP://s3.internal", "").is_err());
    cfg("http://10.0.0.5:9000", ", allow_http: true").unwrap();
}

#[test]
fn sign_with_bare_relative_paths_and_append() {
    let l = Lead::new(&["a", "b"]);
    l.config("a", "  threshold: 2\n");
    l.config("b", "  threshold: 2\n");
    let work = l.p("work");
    std::fs::create_dir(&work).unwrap();
    let d = doc(7, now());
    std::fs::write(work.join("rules.json"), &d.bytes).unwrap();
    let run = |cfg: &str, args: &[&str]| {
        let mut a = vec!["--config", cfg];
        a.extend_from_slice(args);
        Command::new(reyes_bin())
            .args(&a)
            .current_dir(&work)
            .env_remove("REYES_CONFIG")
            .output()
            .unwrap()
    };
    let (ca, cb) = (l.p("a.yaml"), l.p("b.yaml"));
    let (ca, cb) = (ca.to_str().unwrap(), cb.to_str().unwrap());
    let o = run(ca, &["sign", "--document", "rules.json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(work.join("rules.json.sig").is_file());
    let o = run(
        ca,
        &["sign", "--document", "rules.json", "--output", "x.sig"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(work.join("x.sig").is_file());
    // Co-sign with --append: then two keys verify.
    let o = run(cb, &["sign", "--document", "rules.json", "--append"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = run(
        ca,
        &[
            "verify",
            "--document",
            "rules.json",
            "--signature",
            "rules.json.sig",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // x.sig has only one signature: threshold 2 refuses it (exit 3).
    let o = run(
        ca,
        &["verify", "--document", "rules.json", "--signature", "x.sig"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    // --append to a missing file is an error, not a fresh file.
    let o = run(
        cb,
        &[
            "sign",
            "--document",
            "rules.json",
            "--output",
            "none.sig",
            "--append",
        ],
    );
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!work.join("none.sig").exists());
}

#[test]
fn flush_waits_for_the_follower_lock_at_most_lock_timeout() {
    if !common::netns_available() {
        return;
    }
    let ns = common::Netns::new("flushlock");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("reyes.yaml");
    std::fs::write(
        &cfg,
        "environment: prod\nstore:\n  directory: store\nfollower:\n  backend: nft\n  state_dir: state\n  lock_timeout: 1s\n",
    )
    .unwrap();
    // Someone else (a follower mid-apply) holds the lock.
    let state = reyes::state::StateDir::open(&dir.path().join("state")).unwrap();
    let held = state.lock(Duration::from_secs(1)).unwrap();
    // A table of reyes' own that a flush would remove.
    ns.nft_apply(
        "table inet reyes {\n  chain input {\n    type filter hook input priority 0;\n  }\n}\n",
    );
    let o = ns.reyes(&["--config", cfg.to_str().unwrap(), "flush"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("lock_timeout"), "{}", text(&o));
    assert!(ns.nft_list_table("inet", "reyes").is_some());
    drop(held);
    let o = ns.reyes(&["--config", cfg.to_str().unwrap(), "flush"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(ns.nft_list_table("inet", "reyes").is_none());
}

#[test]
fn cosigners_refuse_a_serial_far_ahead_of_their_clock() {
    let l = Lead::new(&["a", "b"]);
    let a = l.config("a", "  threshold: 2\n");
    let b = l.config("b", "  threshold: 2\n");
    // A (or a thief of A's key) signs a document whose serial is two days ahead: co-signed, it
    // would stop every later publication.
    let t = now();
    let ahead = t.duration_since(UNIX_EPOCH).unwrap().as_secs() + 2 * 86_400;
    let key = SigningKey::from_config(&a.signing).unwrap();
    let d = doc(ahead, t);
    l.store()
        .publish(&d.bytes, &key.sign_at(&d.bytes, t).unwrap())
        .unwrap();
    let cosign = LeaderOptions {
        cosign: true,
        ..Default::default()
    };
    let e = leader::run_once(&b, &cosign, t).unwrap_err();
    assert_eq!(e.kind, ExitKind::Refused, "{e}");
    assert!(e.to_string().contains("ahead"), "{e}");
}

// ---------------------------------------------------------------- hot spares and torn pairs

#[test]
fn hot_spares_with_other_keys_leave_a_fresh_document_alone() {
    let l = Lead::new(&["a", "b"]);
    let a = l.config("a", "");
    let b = l.config("b", "");
    let once = LeaderOptions::default();
    let at = |secs: u64| now() + Duration::from_secs(secs);
    let t0 = at(0);
    let serial = published(leader::run_once(&a, &once, t0).unwrap());
    let before = l.stored();
    // B has another key, trusted like A's: the document is fresh (validity 1h: more than 30
    // minutes left), so B signs and writes nothing.
    for dt in [1, 60, 29 * 60] {
        let t = t0 + Duration::from_secs(dt);
        assert_eq!(
            leader::run_once(&b, &once, t).unwrap(),
            LeaderOutcome::Fresh { serial },
            "at +{dt}s"
        );
    }
    assert_eq!(l.stored(), before, "nothing written");
    // Past half the validity B re-signs, and A then finds B's document fresh.
    let t1 = t0 + Duration::from_secs(31 * 60);
    let s2 = published(leader::run_once(&b, &once, t1).unwrap());
    assert!(s2 > serial);
    let b_fpr = SigningKey::from_config(&b.signing).unwrap().fingerprint();
    let trust = reyes::follower::trust_root(&a).unwrap();
    let f = l.stored();
    let v = verify_document(&trust, &f.document, &f.signature, "prod", t1, true).unwrap();
    assert_eq!(v.signer.fingerprints, [b_fpr]);
    assert_eq!(
        leader::run_once(&a, &once, t1 + Duration::from_secs(1)).unwrap(),
        LeaderOutcome::Fresh { serial: s2 }
    );
    // A changed policy is published at once, by whichever leader runs first.
    let inv = std::fs::read_to_string(l.p("inventory.yaml")).unwrap();
    std::fs::write(
        l.p("inventory.yaml"),
        inv.replace("10.50.0.0/24", "10.51.0.0/24"),
    )
    .unwrap();
    let s3 = published(leader::run_once(&a, &once, t1 + Duration::from_secs(2)).unwrap());
    assert!(s3 > s2);
    // A leader whose keyring no longer holds B's certificate (B's key rotated out) does not
    // count B's signature: it re-signs at once.
    std::fs::write(l.p("inventory.yaml"), &inv).unwrap();
    let s4 = published(leader::run_once(&b, &once, t1 + Duration::from_secs(3)).unwrap());
    std::fs::create_dir(l.p("keyring-a")).unwrap();
    std::fs::copy(l.p("keyring/a.asc"), l.p("keyring-a/a.asc")).unwrap();
    let a_only = l.config_with("a", "", "inventory.yaml", "keyring-a", "a-only");
    let s5 = published(leader::run_once(&a_only, &once, t1 + Duration::from_secs(4)).unwrap());
    assert!(s5 > s4);
    // With threshold 2, a publication by B alone (awaiting co-signers) is not A's to keep:
    // the other leaders ignore it, as they ignore any document under the threshold.
    let a2 = l.config_with("a", "  threshold: 2\n", "inventory.yaml", "keyring", "a2");
    let b2 = l.config_with("b", "  threshold: 2\n", "inventory.yaml", "keyring", "b2");
    let s6 = published(leader::run_once(&b2, &once, at(2 * 3600)).unwrap());
    let cosign = LeaderOptions {
        cosign: true,
        ..Default::default()
    };
    assert_eq!(
        leader::run_once(&a2, &cosign, at(2 * 3600 + 1)).unwrap(),
        LeaderOutcome::Cosigned { serial: s6 }
    );
    // Co-signed to the threshold, it is fresh for both.
    for c in [&a2, &b2] {
        assert_eq!(
            leader::run_once(c, &once, at(2 * 3600 + 2)).unwrap(),
            LeaderOutcome::Fresh { serial: s6 }
        );
    }
}

/// Two leaders that disagree (so that each publishes whenever the other did last) race on `store`, while a follower
/// fetches and verifies in a loop: every fetch must verify, and serials never go back.
/// Returns (publications by each leader, verified fetches).
pub fn race(a: &Config, b: &Config, runs: usize) -> ([usize; 2], usize) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let trust = reyes::follower::trust_root(a).unwrap();
    let store = reyes::store::open(&a.store).unwrap();
    let running = AtomicUsize::new(2);
    std::thread::scope(|s| {
        let leaders: Vec<_> = [a, b]
            .into_iter()
            .map(|cfg| {
                let running = &running;
                s.spawn(move || {
                    let _done = Done(running);
                    let mut published = 0;
                    for _ in 0..runs {
                        match leader::run_once(cfg, &LeaderOptions::default(), now()) {
                            Ok(LeaderOutcome::Published { .. }) => published += 1,
                            // Its own publication, when the other has not run since.
                            Ok(LeaderOutcome::Fresh { .. }) => {}
                            Ok(other) => panic!("{other:?}"),
                            // The loser of a conditional write writes nothing.
                            Err(f) => assert!(f.to_string().contains("changed since"), "{f}"),
                        }
                    }
                    published
                })
            })
            .collect();
        let (mut verified, mut last_serial) = (0, 0);
        while running.load(Ordering::SeqCst) > 0 || verified == 0 {
            let f = match store.fetch(None) {
                Ok(FetchOutcome::Fetched(f)) => f,
                Err(StoreError::NotFound(_)) => continue,
                other => panic!("fetch during the race: {other:?}"),
            };
            let v = verify_document(&trust, &f.document, &f.signature, "prod", now(), true)
                .unwrap_or_else(|e| panic!("a fetch during the race does not verify: {e}"));
            assert!(v.document.serial >= last_serial, "serial went back");
            last_serial = v.document.serial;
            verified += 1;
        }
        let counts: Vec<usize> = leaders.into_iter().map(|h| h.join().unwrap()).collect();
        ([counts[0], counts[1]], verified)
    })
}

#[test]
fn two_leaders_racing_on_a_directory_never_show_a_torn_pair() {
    let l = Lead::new(&["a", "b"]);
    let inv = std::fs::read_to_string(l.p("inventory.yaml")).unwrap();
    std::fs::write(
        l.p("inventory-b.yaml"),
        inv.replace("10.50.0.0/24", "10.51.0.0/24"),
    )
    .unwrap();
    let a = l.config("a", "");
    let b = l.config_with("b", "", "inventory-b.yaml", "keyring", "b");
    let (published, verified) = race(&a, &b, 30);
    eprintln!("published {published:?}, verified fetches {verified}");
    assert!(published.iter().all(|&n| n > 0), "{published:?}");
    assert!(verified > 0);
    // Every publication has its gzipped copy, and that is what followers read.
    let z = std::fs::read(l.p("store/rules.json.gz")).unwrap();
    assert_eq!(
        reyes::fsutil::gunzip_limited(&z, 1 << 26).unwrap(),
        std::fs::read(l.p("store/rules.json")).unwrap()
    );
}

/// Counts a racing thread out when it ends, panicking or not.
struct Done<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
