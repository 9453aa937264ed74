//! The whole pipeline against the real thing: `reyes keygen`, `reyes leader` into a directory
//! store, `reyes follower` applying into a network namespace through `nft -f -`, GnuPG in
//! both directions, and every refusal leaving the live ruleset byte-for-byte as it was.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use common::{
    code, netns_available, normalise, reyes_bin, stderr, stdout, table_block, text, Netns,
};

const HOST: &str = "10.1.0.12";

/// A leader + follower set-up in a temp dir, and a namespace for the follower.
struct Rig {
    dir: tempfile::TempDir,
    ns: Netns,
    /// The leader key's fingerprint, as `reyes keygen` printed it.
    fp: String,
}

fn write(p: &Path, s: &str) {
    std::fs::write(p, s).unwrap();
}

impl Rig {
    fn new(tag: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        std::fs::copy(
            examples.join("inventory.yaml"),
            dir.path().join("inventory.yaml"),
        )
        .unwrap();
        let mut rig = Rig {
            dir,
            ns: Netns::new(tag),
            fp: String::new(),
        };
        let o = rig.cmd(&[
            "keygen",
            "--name",
            "leader",
            "--output-dir",
            rig.p("keys").to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        rig.fp = String::from_utf8(o.stdout).unwrap().trim().to_string();
        assert_eq!(rig.fp.len(), 40, "fingerprint: {:?}", rig.fp);
        rig.config("prod", "");
        rig
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Write reyes.yaml; `extra_signing` lines go under `signing:`.
    fn config(&self, environment: &str, extra_signing: &str) {
        let cfg = format!(
            "environment: {environment}\nstore:\n  directory: store\nsigning:\n  key: keys/leader.secret.asc\n  keyring: keys/leader.cert.asc\n  validity: 1h\n{extra_signing}inventory:\n  file: inventory.yaml\n  dynamic_subnets: [workers]\nfollower:\n  backend: nft\n  addresses: [{HOST}]\n  failsafe: [{{proto: tcp, port: 22, from: 10.9.0.0/24}}]\n  disable_file: disabled\n  state_dir: state\n"
        );
        write(&self.p("reyes.yaml"), &cfg);
    }

    fn cfg(&self) -> String {
        self.p("reyes.yaml").to_str().unwrap().to_string()
    }

    /// Run reyes on the host (leader, render, sign ...).
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new(reyes_bin())
            .args(args)
            .env_remove("REYES_CONFIG")
            .output()
            .unwrap()
    }

    fn with_cfg(&self, args: &[&str]) -> Output {
        let cfg = self.cfg();
        let mut a = vec!["--config", cfg.as_str()];
        a.extend_from_slice(args);
        self.cmd(&a)
    }

    fn leader(&self) -> Output {
        self.with_cfg(&["leader", "--once"])
    }

    /// Run the follower and require success.
    fn follow(&self) {
        let o = self.follower(&[]);
        assert_eq!(code(&o), 0, "follower: {}", text(&o));
    }

    /// Run the leader and require success.
    fn lead(&self) {
        let o = self.leader();
        assert_eq!(code(&o), 0, "leader: {}", text(&o));
    }

    /// Run the follower inside the namespace.
    fn follower(&self, extra: &[&str]) -> Output {
        let cfg = self.cfg();
        let mut a = vec!["--config", cfg.as_str(), "follower", "--once"];
        a.extend_from_slice(extra);
        self.ns.reyes(&a)
    }

    fn render(&self) -> String {
        let doc = self.p("store/current/rules.json");
        let o = self.with_cfg(&[
            "render",
            "--document",
            doc.to_str().unwrap(),
            "--host",
            HOST,
        ]);
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8(o.stdout).unwrap()
    }

    fn live(&self) -> Option<String> {
        self.ns.nft_list_table("inet", "reyes")
    }

    fn ruleset(&self) -> String {
        self.ns.nft_ruleset()
    }
}

#[test]
fn apply_equals_render_and_reapply_replaces_atomically() {
    if !netns_available() {
        return;
    }
    let rig = Rig::new("apply");
    rig.lead();
    let o = rig.follower(&[]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    // nft_transport defaults to auto, and this kernel takes the netlink probe.
    assert!(
        stderr(&o).contains("nft transport: netlink"),
        "{}",
        text(&o)
    );
    let live = rig.live().expect("table inet reyes exists");
    assert_eq!(normalise(&live), normalise(table_block(&rig.render())));
    assert!(live.contains("chain g_sg_web"), "{live}");

    // A changed inventory: a new rule for sg-web, re-published and re-applied.
    let inv = std::fs::read_to_string(rig.p("inventory.yaml")).unwrap().replace(
        "      - {proto: tcp, ports: 9100, from: {prefix_lists: [pl-monitoring]}}",
        "      - {proto: tcp, ports: 9100, from: {prefix_lists: [pl-monitoring]}}\n      - {proto: udp, ports: 5353, from: {cidrs: [10.77.0.0/16]}}",
    );
    write(&rig.p("inventory.yaml"), &inv);
    rig.lead();
    let o = rig.follower(&[]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let live2 = rig.live().unwrap();
    assert!(
        live2.contains("ip saddr 10.77.0.0/16 udp dport 5353"),
        "{live2}"
    );
    assert_eq!(normalise(&live2), normalise(table_block(&rig.render())));

    // Unchanged: no kernel work, says so.
    let o = rig.follower(&[]);
    assert_eq!(code(&o), 0);
    assert!(stderr(&o).contains("nothing to change"), "{}", text(&o));
}

#[test]
fn other_tables_are_byte_identical_after_apply_reapply_and_flush() {
    if !netns_available() {
        return;
    }
    let rig = Rig::new("others");
    rig.ns.nft_apply(
        "table inet other {\n set keep { type ipv4_addr; elements = { 192.0.2.1 }; }\n chain c { type filter hook input priority 10; policy accept; tcp dport 1234 counter accept; }\n}\ntable ip filter {\n chain INPUT { type filter hook input priority 0; policy accept; ip saddr 198.51.100.0/24 counter drop; }\n}\n",
    );
    let others = |r: &Rig| {
        (
            r.ns.nft_list_table("inet", "other"),
            r.ns.nft_list_table("ip", "filter"),
        )
    };
    let before = others(&rig);
    assert!(before.0.is_some() && before.1.is_some());
    rig.lead();
    rig.follow();
    assert_eq!(others(&rig), before, "apply touched another table");
    // Re-apply with a changed context (logging) forces a new transaction.
    let o = rig.follower(&["--log-drop"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(rig.live().unwrap().contains("log prefix"));
    assert_eq!(others(&rig), before, "re-apply touched another table");
    let o = rig.ns.reyes(&["--config", &rig.cfg(), "flush"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(rig.live().is_none(), "flush left table inet reyes");
    assert_eq!(others(&rig), before, "flush touched another table");
}

#[test]
fn kernel_rejection_leaves_previous_table_exactly() {
    if !netns_available() {
        return;
    }
    let rig = Rig::new("reject");
    rig.lead();
    rig.follow();
    let before = rig.ruleset();
    // An nft wrapper that runs inside the namespace, so the library's own apply path is used.
    let wrapper = rig.p("nft-in-ns");
    write(
        &wrapper,
        &format!("#!/bin/sh\nexec ip netns exec {} nft \"$@\"\n", rig.ns.name),
    );
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let doc = reyes::load::load_document(&rig.p("store/current/rules.json")).unwrap();
    let ctx = reyes::compile::HostContext {
        target: reyes::compile::Target::Host(vec![HOST.parse().unwrap()]),
        enforce: reyes::config::Enforce::Ipsec,
        managed_cidrs: vec![],
        local_cidrs: None,
        failsafe: vec![],
        log_accept: false,
        log_drop: false,
        allow_unknown_host: false,
        action: reyes::config::Action::Drop,
        mode: reyes::config::Mode::Host,
        gateway_cidrs: vec![],
        egress: false,
    };
    let mut rs = reyes::compile::compile(&doc, &ctx).unwrap();
    // The last chain gets a name nft cannot parse: the whole transaction must fail.
    let last = rs.chains.len() - 1;
    rs.chains[last].name = "bad name".into();
    use reyes::backend::Backend;
    let err = reyes::nft::NftBackend::with_nft(wrapper.to_str().unwrap())
        .apply(&rs)
        .unwrap_err();
    assert!(
        matches!(err, reyes::backend::BackendError::Refused(_)),
        "{err}"
    );
    assert_eq!(
        rig.ruleset(),
        before,
        "a refused transaction changed the live ruleset"
    );
}

/// Apply once, then check that `f` (which breaks something) makes the follower exit 3 with a
/// message containing `needle`, leaving the ruleset exactly as it was.
fn refused_unchanged(rig: &Rig, needle: &str, extra: &[&str]) {
    let before = rig.ruleset();
    let o = rig.follower(extra);
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(
        stderr(&o).contains(needle),
        "expected {needle:?} in:\n{}",
        text(&o)
    );
    assert_eq!(rig.ruleset(), before, "refusal changed the live ruleset");
}

/// Leave only the plain `rules.json` in the store, as a tool other than the leader would, so
/// a test's edits to it are what followers read. (Readers take the .gz when it is as new as
/// rules.json, and file times are too coarse to tell an edit made right after a publish.)
fn plain_document_only(rig: &Rig) {
    std::fs::remove_file(rig.p("store/current/rules.json.gz")).unwrap();
}

fn flip_byte(p: &Path, at: usize) {
    let mut b = std::fs::read(p).unwrap();
    let i = at.min(b.len() - 1);
    b[i] ^= 0x01;
    std::fs::write(p, b).unwrap();
}

#[test]
fn tampered_documents_and_signatures_are_refused() {
    if !netns_available() {
        return;
    }
    let rig = Rig::new("tamper");
    rig.lead();
    rig.follow();
    let doc = rig.p("store/current/rules.json");
    let sig = rig.p("store/current/rules.json.sig");
    let (good_doc, good_sig) = (std::fs::read(&doc).unwrap(), std::fs::read(&sig).unwrap());

    // Publish a newer one so a good pair would be applied; then break it in turn.
    let mut inv = std::fs::read_to_string(rig.p("inventory.yaml")).unwrap();
    inv = inv.replace("addresses: [10.1.0.5, ", "addresses: [10.1.0.5, 10.1.0.6, ");
    write(&rig.p("inventory.yaml"), &inv);
    rig.lead();
    let (new_doc, new_sig) = (std::fs::read(&doc).unwrap(), std::fs::read(&sig).unwrap());
    plain_document_only(&rig);

    flip_byte(&doc, new_doc.len() / 2);
    refused_unchanged(&rig, "signature refused", &[]);
    std::fs::write(&doc, &new_doc).unwrap();

    flip_byte(&sig, new_sig.len() - 10);
    refused_unchanged(&rig, "signature", &[]);

    // A signature from another upload (torn pair): the new document with the old signature.
    std::fs::write(&sig, &good_sig).unwrap();
    refused_unchanged(&rig, "signature refused", &[]);

    // The signature object is missing (removed from the published version itself).
    std::fs::remove_file(rig.p("store/current/rules.json.sig")).unwrap();
    refused_unchanged(&rig, "unsigned", &[]);

    // Signed by a key that is not in the keyring.
    let o = rig.cmd(&[
        "keygen",
        "--name",
        "intruder",
        "--output-dir",
        rig.p("keys").to_str().unwrap(),
    ]);
    assert!(o.status.success());
    rig.config("prod", "");
    let cfg_text = std::fs::read_to_string(rig.p("reyes.yaml"))
        .unwrap()
        .replace("keys/leader.secret.asc", "keys/intruder.secret.asc");
    write(&rig.p("intruder.yaml"), &cfg_text);
    let o = rig.cmd(&[
        "--config",
        rig.p("intruder.yaml").to_str().unwrap(),
        "sign",
        "--document",
        doc.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    refused_unchanged(&rig, "signature refused", &[]);

    // Good signature, but the signer is not on the allowlist.
    std::fs::write(&doc, &new_doc).unwrap();
    std::fs::write(&sig, &new_sig).unwrap();
    rig.config(
        "prod",
        "  trusted_fingerprints: [\"0123456789ABCDEF0123456789ABCDEF01234567\"]\n",
    );
    refused_unchanged(&rig, "trusted_fingerprints", &[]);

    // With the allowlist naming the leader (spaces and case as gpg prints them), it applies.
    let spaced: String = rig
        .fp
        .to_lowercase()
        .chars()
        .collect::<Vec<_>>()
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(" ");
    rig.config("prod", &format!("  trusted_fingerprints: [\"{spaced}\"]\n"));
    let o = rig.follower(&[]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        rig.live().unwrap().contains("10.1.0.5-10.1.0.6"),
        "{}",
        rig.live().unwrap()
    );
    assert_ne!(good_doc, new_doc);
}

#[test]
fn replay_expiry_and_environment_are_refused() {
    if !netns_available() {
        return;
    }
    let rig = Rig::new("replay");
    rig.lead();
    let old = (
        std::fs::read(rig.p("store/current/rules.json")).unwrap(),
        std::fs::read(rig.p("store/current/rules.json.sig")).unwrap(),
    );
    // A newer serial with a different policy is applied...
    let inv = std::fs::read_to_string(rig.p("inventory.yaml"))
        .unwrap()
        .replace(
            "addresses: [10.1.1.20]",
            "addresses: [10.1.1.20, 10.1.1.22]",
        );
    write(&rig.p("inventory.yaml"), &inv);
    rig.lead();
    rig.follow();
    // ...then the older pair is replayed.
    plain_document_only(&rig);
    std::fs::write(rig.p("store/current/rules.json"), &old.0).unwrap();
    std::fs::write(rig.p("store/current/rules.json.sig"), &old.1).unwrap();
    refused_unchanged(&rig, "older than the applied serial", &[]);

    // Expired: a document issued two hours ago with one hour of validity, properly signed.
    let inv = reyes::inventory::static_file::load(&rig.p("inventory.yaml")).unwrap();
    let built = reyes::document::build(
        &inv,
        &reyes::document::BuildOptions {
            environment: "prod".into(),
            serial: u64::MAX / 2,
            issued_at: SystemTime::now() - Duration::from_secs(7200),
            validity: Duration::from_secs(3600),
            excluded_group_names: vec![],
            excluded_group_ids: vec![],
            dynamic_subnets: vec!["workers".into()],
        },
    )
    .unwrap();
    std::fs::write(rig.p("store/current/rules.json"), &built.bytes).unwrap();
    let o = rig.with_cfg(&[
        "sign",
        "--document",
        rig.p("store/current/rules.json").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    refused_unchanged(&rig, "expired", &[]);

    // Another environment: the follower is configured for "staging".
    rig.lead();
    rig.config("staging", "");
    refused_unchanged(&rig, "environment", &[]);
}

#[test]
fn malformed_oversized_unknown_host_and_disabled() {
    if !netns_available() {
        return;
    }
    let rig = Rig::new("bad");
    rig.lead();
    rig.follow();
    let doc = rig.p("store/current/rules.json");
    let sign = |r: &Rig| {
        // The worst case of coarse file times: the old .gz looks newer than the edit.
        let gz = r.p("store/current/rules.json.gz");
        std::fs::File::options()
            .write(true)
            .open(&gz)
            .unwrap()
            .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
            .unwrap();
        let o = r.with_cfg(&["sign", "--document", doc.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        // The .gz followers read is rewritten to what was signed, whatever the file times.
        let z = std::fs::read(r.p("store/current/rules.json.gz")).unwrap();
        let plain = std::fs::read(&doc).unwrap();
        assert_eq!(
            reyes::fsutil::gunzip_limited(&z, 1 << 30).unwrap(),
            plain,
            "sign left a stale rules.json.gz"
        );
    };
    // Validly signed, but not a document.
    std::fs::write(&doc, b"{\"format\":\"reyes/v1\",\"groups\":[]}\n").unwrap();
    sign(&rig);
    refused_unchanged(&rig, "malformed document", &[]);
    // Validly signed, but not canonical (pretty-printed).
    rig.lead();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&doc).unwrap()).unwrap();
    std::fs::write(&doc, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    sign(&rig);
    refused_unchanged(&rig, "canonical", &[]);
    // Oversized: refused before it is read whole.
    plain_document_only(&rig);
    let f = std::fs::File::create(&doc).unwrap();
    f.set_len(reyes::document::limits::MAX_DOCUMENT_BYTES + 1)
        .unwrap();
    refused_unchanged(&rig, "larger than the limit", &[]);
    // A gzip bomb as rules.json.gz (what followers read): ~64 KiB that decompress past the
    // 64 MiB limit. Refused (3), never decompressed further, nothing applied.
    rig.lead();
    let bomb = reyes::fsutil::gzip(&vec![
        b' ';
        (reyes::document::limits::MAX_DOCUMENT_BYTES + 1)
            as usize
    ]);
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    std::fs::write(rig.p("store/current/rules.json.gz"), bomb).unwrap();
    refused_unchanged(&rig, "decompresses to more than the limit", &[]);

    // A document that names none of this host's addresses.
    rig.lead();
    let cfg = std::fs::read_to_string(rig.p("reyes.yaml"))
        .unwrap()
        .replace(HOST, "192.0.2.99");
    write(&rig.p("reyes.yaml"), &cfg);
    refused_unchanged(&rig, "none of this host's addresses", &[]);
    let o = rig.follower(&["--allow-unknown-host"]);
    assert_eq!(code(&o), 0, "{}", text(&o));

    // The disable file: nothing changes, exit 0.
    rig.config("prod", "");
    rig.lead();
    write(&rig.p("disabled"), "maintenance\n");
    let before = rig.ruleset();
    let o = rig.follower(&[]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(stderr(&o).contains("disable file"), "{}", text(&o));
    assert_eq!(rig.ruleset(), before);
}

#[test]
fn resigned_policy_costs_no_kernel_work_and_restore_reapplies() {
    if !netns_available() {
        return;
    }
    let rig = Rig::new("resign");
    rig.lead();
    rig.follow();
    // Re-sign the same policy with a newer serial, as a leader does to extend not_after.
    let inv = reyes::inventory::static_file::load(&rig.p("inventory.yaml")).unwrap();
    let old = reyes::load::load_document(&rig.p("store/current/rules.json")).unwrap();
    let built = reyes::document::build(
        &inv,
        &reyes::document::BuildOptions {
            environment: "prod".into(),
            serial: old.serial + 10,
            issued_at: SystemTime::now(),
            validity: Duration::from_secs(3600),
            excluded_group_names: vec![],
            excluded_group_ids: vec![],
            dynamic_subnets: vec!["workers".into()],
        },
    )
    .unwrap();
    assert_eq!(built.document.policy_digest, old.policy_digest);
    std::fs::write(rig.p("store/current/rules.json"), &built.bytes).unwrap();
    let o = rig.with_cfg(&[
        "sign",
        "--document",
        rig.p("store/current/rules.json").to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let o = rig.follower(&[]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        stderr(&o).contains("policy unchanged (re-signed)"),
        "{}",
        text(&o)
    );
    let status = rig.ns.reyes(&["--config", &rig.cfg(), "status"]);
    assert_eq!(code(&status), 0, "{}", text(&status));
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(&format!("serial: {}", old.serial + 10))
    );

    // Flush, then restore from last-good.
    assert_eq!(code(&rig.ns.reyes(&["--config", &rig.cfg(), "flush"])), 0);
    assert!(rig.live().is_none());
    let status = rig.ns.reyes(&["--config", &rig.cfg(), "status"]);
    assert_eq!(
        code(&status),
        1,
        "status must fail when the table is missing"
    );
    let o = rig.ns.reyes(&["--config", &rig.cfg(), "restore"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(
        normalise(&rig.live().unwrap()),
        normalise(table_block(&rig.render()))
    );
}

#[test]
fn dry_run_changes_nothing_and_shows_the_diff() {
    if !netns_available() {
        return;
    }
    let rig = Rig::new("dry");
    rig.lead();
    let before = rig.ruleset();
    let o = rig.follower(&["--dry-run"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("table inet reyes {"), "{out}");
    assert!(out.contains("+ chain g_sg_web {"), "{out}");
    assert_eq!(rig.ruleset(), before);
    assert!(!rig.p("state/applied.json").exists());
}

#[test]
fn gnupg_interop_both_directions() {
    if !netns_available() {
        return;
    }
    let rig = Rig::new("gpg");
    let home = rig.p("gnupg");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let gpg = |args: &[&str]| -> Output {
        Command::new("gpg")
            .env("GNUPGHOME", &home)
            .args([
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "s3cret",
            ])
            .args(args)
            .output()
            .unwrap()
    };
    // reyes signs, gpg verifies.
    rig.lead();
    let o = gpg(&["--import", rig.p("keys/leader.cert.asc").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = gpg(&[
        "--verify",
        rig.p("store/current/rules.json.sig").to_str().unwrap(),
        rig.p("store/current/rules.json").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "gpg --verify failed: {}", text(&o));
    assert!(stderr(&o).contains("Good signature"));

    // A key made by gpg with a passphrase becomes the leader's key.
    let o = gpg(&[
        "--quick-gen-key",
        "gpg leader <leader@example.org>",
        "ed25519",
        "sign",
        "never",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = gpg(&["--armor", "--export-secret-keys", "leader@example.org"]);
    assert!(o.status.success() && !o.stdout.is_empty(), "{}", text(&o));
    std::fs::write(rig.p("keys/gpg.secret.asc"), &o.stdout).unwrap();
    let o = gpg(&["--armor", "--export", "leader@example.org"]);
    std::fs::write(rig.p("keys/gpg.cert.asc"), &o.stdout).unwrap();
    write(&rig.p("keys/pass"), "s3cret\n");
    let cfg = std::fs::read_to_string(rig.p("reyes.yaml"))
        .unwrap()
        .replace(
            "keys/leader.secret.asc",
            "keys/gpg.secret.asc\n  passphrase_file: keys/pass",
        )
        .replace("keys/leader.cert.asc", "keys/gpg.cert.asc");
    write(&rig.p("reyes.yaml"), &cfg);
    let o = rig.leader();
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = rig.follower(&[]);
    assert_eq!(code(&o), 0, "{}", text(&o));

    // gpg signs a document; reyes verifies it (and the follower would apply it).
    let doc = rig.p("store/current/rules.json");
    let sig = rig.p("store/current/rules.json.sig");
    let o = gpg(&[
        "--local-user",
        "leader@example.org",
        "--detach-sign",
        "--output",
        sig.to_str().unwrap(),
        doc.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = rig.with_cfg(&[
        "verify",
        "--document",
        doc.to_str().unwrap(),
        "--signature",
        sig.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o));

    // A text-mode signature and a SHA-1 signature are refused.
    let o = gpg(&[
        "--local-user",
        "leader@example.org",
        "--textmode",
        "--detach-sign",
        "--output",
        sig.to_str().unwrap(),
        doc.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = rig.with_cfg(&[
        "verify",
        "--document",
        doc.to_str().unwrap(),
        "--signature",
        sig.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(stderr(&o).contains("binary"), "{}", text(&o));
    let o = gpg(&[
        "--local-user",
        "leader@example.org",
        "--digest-algo",
        "SHA1",
        "--detach-sign",
        "--output",
        sig.to_str().unwrap(),
        doc.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = rig.with_cfg(&[
        "verify",
        "--document",
        doc.to_str().unwrap(),
        "--signature",
        sig.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 3, "{}", text(&o));
}

#[test]
fn config_errors_exit_2_with_location() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yaml");
    write(
        &cfg,
        "environment: prod\nstore:\n  directory: /tmp/x\nfollower:\n  enforse: cidr\n",
    );
    let o = Command::new(reyes_bin())
        .args(["--config", cfg.to_str().unwrap(), "follower", "--once"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(stderr(&o).contains("bad.yaml:5:"), "{}", text(&o));
    // A follower without a keyring is a configuration error, named, exit 2.
    write(
        &cfg,
        "environment: prod\nstore:\n  directory: store\nfollower:\n  state_dir: state\n",
    );
    let o = Command::new(reyes_bin())
        .args(["--config", cfg.to_str().unwrap(), "follower", "--once"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(stderr(&o).contains("signing.keyring"), "{}", text(&o));
    // A document that does not exist for `render`: exit 2 naming it.
    let o = Command::new(reyes_bin())
        .args([
            "render",
            "--document",
            "/nonexistent/rules.json",
            "--host",
            "10.0.0.1",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(
        stderr(&o).contains("/nonexistent/rules.json"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_document_over_the_limits_is_refused_and_the_live_rules_stay() {
    if !netns_available() {
        return;
    }
    let rig = Rig::new("limits");
    rig.lead();
    rig.follow();
    // What the limits bound, as `render --stats` counts it.
    let doc = rig.p("store/current/rules.json");
    let o = rig.with_cfg(&[
        "render",
        "--document",
        doc.to_str().unwrap(),
        "--host",
        HOST,
        "--stats",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let stats = stdout(&o);
    let rules: usize = stats
        .lines()
        .find_map(|l| l.strip_prefix("rules: "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no rules count in:\n{stats}"));
    for key in ["sets: ", "elements: ", "chains: ", "batch bytes: "] {
        assert!(stats.contains(key), "{key:?} missing in:\n{stats}");
    }
    // A new rule, and a limit just under the new count.
    let inv = std::fs::read_to_string(rig.p("inventory.yaml")).unwrap().replace(
        "      - {proto: tcp, ports: 9100, from: {prefix_lists: [pl-monitoring]}}",
        "      - {proto: tcp, ports: 9100, from: {prefix_lists: [pl-monitoring]}}\n      - {proto: udp, ports: 5353, from: {cidrs: [10.77.0.0/16]}}",
    );
    write(&rig.p("inventory.yaml"), &inv);
    rig.lead();
    let cfg = std::fs::read_to_string(rig.p("reyes.yaml")).unwrap()
        + &format!("  limits: {{rules: {rules}}}\n");
    write(&rig.p("reyes.yaml"), &cfg);
    refused_unchanged(&rig, "over follower.limits.rules", &[]);
    // Within the limits again: applied.
    let cfg = cfg.replace(
        &format!("limits: {{rules: {rules}}}"),
        "limits: {rules: 100000}",
    );
    write(&rig.p("reyes.yaml"), &cfg);
    rig.follow();
    assert!(rig
        .live()
        .unwrap()
        .contains("ip saddr 10.77.0.0/16 udp dport 5353"));
}
