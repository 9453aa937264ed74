//! Receipts and `reyes fleet`, end to end: a leader publishes, five followers (each in its own
//! network namespace, applying with nft) write receipts after every run, and `reyes fleet`
//! reads them back: one current, one lagging, one refusing (it trusts another key), one
//! disabled, one whose table was changed behind its back, plus planted receipts: a silent
//! host, garbage, an oversized object, and one that claims another host's id. Run with a
//! directory store, and with S3 (moto_server). Exit codes follow the configured tolerance.

mod common;
#[cfg(feature = "aws")]
mod moto;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{code, netns_available, reyes_bin, stdout, text, Netns};
use serde_json::Value;

/// Where the test's store is, and how its processes reach it.
enum StoreKind {
    Directory,
    #[cfg(feature = "aws")]
    S3 {
        port: u16,
    },
}

const BUCKET: &str = "reyes-receipts";

struct Rig {
    dir: tempfile::TempDir,
    kind: StoreKind,
}

/// One follower: its namespace (and, for S3, the forward to moto), config and host id.
struct Follower {
    ns: Netns,
    #[cfg(feature = "aws")]
    _fwd: Option<moto::Forward>,
    config: PathBuf,
    id: &'static str,
}

impl Rig {
    fn new(kind: StoreKind) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        std::fs::copy(
            examples.join("inventory.yaml"),
            dir.path().join("inventory.yaml"),
        )
        .unwrap();
        let rig = Rig { dir, kind };
        for name in ["leader", "other"] {
            let o = rig.reyes(&[
                "keygen",
                "--name",
                name,
                "--output-dir",
                rig.p(name).to_str().unwrap(),
            ]);
            assert_eq!(code(&o), 0, "{}", text(&o));
        }
        rig
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn store_yaml(&self) -> String {
        match self.kind {
            StoreKind::Directory => "store:\n  directory: store\n".into(),
            #[cfg(feature = "aws")]
            StoreKind::S3 { port } => format!(
                "store:\n  s3: {{bucket: {BUCKET}, key: prod/rules.json, region: us-east-1, endpoint: \"http://127.0.0.1:{port}\"}}\n"
            ),
        }
    }

    fn env(&self) -> Vec<(&'static str, &'static str)> {
        match self.kind {
            StoreKind::Directory => Vec::new(),
            #[cfg(feature = "aws")]
            StoreKind::S3 { .. } => moto::AWS_ENV.to_vec(),
        }
    }

    /// The leader's config, with a `fleet` section.
    fn leader_config(&self, file: &str, fleet: &str) -> PathBuf {
        let cfg = format!(
            "environment: prod\n{}signing:\n  key: leader/leader.secret.asc\n  keyring: leader/leader.cert.asc\n  validity: 1h\ninventory:\n  file: inventory.yaml\nfleet: {fleet}\n",
            self.store_yaml()
        );
        std::fs::write(self.p(file), cfg).unwrap();
        self.p(file)
    }

    fn reyes(&self, args: &[&str]) -> Output {
        Command::new(reyes_bin())
            .args(args)
            .env_remove("REYES_CONFIG")
            .envs(self.env())
            .output()
            .unwrap()
    }

    fn lead(&self) {
        let cfg = self.leader_config("leader.yaml", "{}");
        let o = self.reyes(&["--config", cfg.to_str().unwrap(), "leader", "--once"]);
        assert_eq!(code(&o), 0, "leader: {}", text(&o));
    }

    /// A follower `id` at `address`, trusting `key`'s certificate.
    fn follower(&self, id: &'static str, address: &str, key: &str) -> Follower {
        let cfg = format!(
            "environment: prod\n{}signing:\n  keyring: {key}/{key}.cert.asc\nfollower:\n  backend: nft\n  addresses: [{address}]\n  state_dir: state-{id}\n  disable_file: disabled-{id}\n  receipts: true\n  host_id: {id}\n",
            self.store_yaml()
        );
        let config = self.p(&format!("{id}.yaml"));
        std::fs::write(&config, cfg).unwrap();
        let ns = Netns::new(&format!("rc{}", id.len()));
        Follower {
            #[cfg(feature = "aws")]
            _fwd: match self.kind {
                StoreKind::S3 { port } => Some(moto::forward_into(&ns, port)),
                StoreKind::Directory => None,
            },
            ns,
            config,
            id,
        }
    }

    fn follow(&self, f: &Follower) -> Output {
        let mut argv: Vec<String> = vec!["env".into()];
        argv.extend(self.env().iter().map(|(k, v)| format!("{k}={v}")));
        argv.extend(
            [
                reyes_bin(),
                "--config",
                f.config.to_str().unwrap(),
                "follower",
                "--once",
            ]
            .map(String::from),
        );
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        f.ns.run(&argv, None)
    }

    /// The receipt the follower keeps in its state directory (the bytes it put in the store).
    fn local_receipt(&self, f: &Follower) -> Vec<u8> {
        std::fs::read(self.p(&format!("state-{}/receipt.json", f.id))).unwrap()
    }

    /// Put an object among the receipts, as anyone who can write to the store could.
    fn plant(&self, name: &str, bytes: &[u8]) {
        match self.kind {
            StoreKind::Directory => {
                std::fs::write(self.p("store/receipts").join(name), bytes).unwrap()
            }
            #[cfg(feature = "aws")]
            StoreKind::S3 { port } => {
                let path = format!("/{BUCKET}/prod/receipts/{name}");
                assert_eq!(moto::http(port, "PUT", &path, bytes).unwrap(), 200);
            }
        }
    }

    fn fleet(&self, cfg: &Path, format: &str) -> Output {
        self.reyes(&[
            "--config",
            cfg.to_str().unwrap(),
            "fleet",
            "--format",
            format,
        ])
    }

    /// Add a rule to sg-web, so the next leader run publishes another policy.
    fn change_policy(&self) {
        let inv = std::fs::read_to_string(self.p("inventory.yaml")).unwrap().replace(
            "      - {proto: tcp, ports: 9100, from: {prefix_lists: [pl-monitoring]}}",
            "      - {proto: tcp, ports: 9100, from: {prefix_lists: [pl-monitoring]}}\n      - {proto: udp, ports: 5353, from: {cidrs: [10.77.0.0/16]}}",
        );
        std::fs::write(self.p("inventory.yaml"), inv).unwrap();
        self.lead();
    }
}

fn states(report: &Value) -> Vec<(String, String, bool)> {
    report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap().to_string(),
                h["state"].as_str().unwrap().to_string(),
                h["outside_tolerance"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn run_fleet_scenario(rig: &Rig) {
    rig.lead();
    let web1 = rig.follower("web-1", "10.1.0.10", "leader");
    let web2 = rig.follower("web-2", "10.1.0.12", "leader");
    let db1 = rig.follower("db-1", "10.1.1.20", "other");
    let bastion = rig.follower("bastion-1", "10.9.0.4", "leader");
    let web3 = rig.follower("web-3", "10.1.0.11", "leader");
    std::fs::write(rig.p("disabled-bastion-1"), b"").unwrap();
    for (f, want) in [(&web1, 0), (&web2, 0), (&db1, 3), (&bastion, 0), (&web3, 0)] {
        let o = rig.follow(f);
        assert_eq!(code(&o), want, "{}: {}", f.id, text(&o));
    }
    let first: Value = serde_json::from_slice(&rig.local_receipt(&web1)).unwrap();
    let serial1 = first["applied"]["serial"].as_u64().unwrap();
    assert_eq!(first["outcome"], "applied");
    assert_eq!(first["live"]["digest"], first["live"]["applied_digest"]);

    // A new document; web-1 and web-3 run again, web-2 does not (it lags).
    rig.change_policy();
    for f in [&web1, &web3] {
        let o = rig.follow(f);
        assert_eq!(code(&o), 0, "{}: {}", f.id, text(&o));
    }
    // Someone adds a rule to web-3's table behind reyes' back; its next run (same document)
    // reports the drift, unless the run already put the applied table back.
    web3.ns.ok(&[
        "nft", "add", "rule", "inet", "reyes", "input", "tcp", "dport", "31337", "accept",
    ]);
    let o = rig.follow(&web3);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let web3_drifted = web3
        .ns
        .nft_list_table("inet", "reyes")
        .unwrap()
        .contains("31337");

    // A host that stopped reporting an hour ago, garbage, an oversized object, an impostor.
    let mut old: Value = serde_json::from_slice(&rig.local_receipt(&web2)).unwrap();
    old["host_id"] = "old-1".into();
    old["written_at"] = "2020-01-01T00:00:00Z".into();
    rig.plant("old-1.json", old.to_string().as_bytes());
    rig.plant("evil.json", b"{\"format\": 1, \"host_id\": \"\x1b[2Jevil\"");
    rig.plant("big.json", &vec![b' '; 70 * 1024]);
    let mut impostor: Value = serde_json::from_slice(&rig.local_receipt(&web1)).unwrap();
    impostor["outcome"] = "applied".into();
    rig.plant("web-9.json", impostor.to_string().as_bytes());

    // Default tolerance: every state but current pages.
    let strict = rig.leader_config("strict.yaml", "{interval: 1m}");
    // The text report, for the test log (`--nocapture`): the same hosts, worst first.
    let t = rig.fleet(&strict, "text");
    assert_eq!(code(&t), 1, "{}", text(&t));
    let shown = String::from_utf8_lossy(&t.stdout).into_owned();
    eprintln!("reyes fleet:\n{shown}");
    assert!(
        shown.contains("hosts: 9 (")
            && shown
                .lines()
                .any(|l| l.contains(" current ") && l.contains(" web-1 ")),
        "{shown}"
    );
    let o = rig.fleet(&strict, "json");
    assert_eq!(code(&o), 1, "{}", text(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let serial2 = report["published"]["serial"].as_u64().unwrap();
    assert!(serial2 > serial1);
    let web3_state = if web3_drifted { "drifted" } else { "current" };
    let want = [
        ("big", "malformed", true),
        ("evil", "malformed", true),
        ("web-9", "malformed", true),
        ("old-1", "silent", true),
        ("db-1", "refusing", true),
        ("bastion-1", "disabled", true),
        ("web-2", "lagging", false),
        ("web-1", "current", false),
    ];
    let got = states(&report);
    for (host, state, outside) in want {
        assert!(
            got.contains(&(host.to_string(), state.to_string(), outside)),
            "{host} {state} {outside} not in {got:?}"
        );
    }
    assert!(
        got.contains(&("web-3".into(), web3_state.into(), web3_drifted)),
        "web-3 {web3_state} (its table {} the one applied): {got:?}",
        if web3_drifted { "is not" } else { "is again" }
    );
    assert_eq!(got.len(), 9, "{got:?}");
    let host = |id: &str| {
        report["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(
        host("db-1")["receipt"]["last_refusal"]["reason"],
        "signature"
    );
    assert_eq!(host("web-2")["serial"].as_u64(), Some(serial1));
    assert_eq!(host("web-1")["serial"].as_u64(), Some(serial2));
    assert!(
        host("big")["detail"]
            .as_str()
            .unwrap()
            .contains("larger than the limit"),
        "{}",
        host("big")
    );

    let o = rig.fleet(&strict, "text");
    assert_eq!(code(&o), 1, "{}", text(&o));
    let t = stdout(&o);
    eprintln!("reyes fleet:\n{t}");
    assert!(t.contains(&format!("published: serial {serial2}")), "{t}");
    assert!(
        !t.contains('\u{1b}'),
        "control characters from a receipt reach the terminal: {t:?}"
    );
    assert!(
        t.lines()
            .any(|l| l.starts_with("! refusing") && l.contains("db-1")),
        "{t}"
    );
    assert!(
        t.lines()
            .any(|l| l.starts_with("  lagging") && l.contains("web-2")),
        "{t}"
    );

    // Tolerating what this fleet has (and a tighter lag would page web-2 only later): exit 0.
    let lenient = rig.leader_config(
        "lenient.yaml",
        "{interval: 1m, tolerate: [malformed, silent, refusing, drifted, disabled]}",
    );
    let o = rig.fleet(&lenient, "text");
    assert_eq!(code(&o), 0, "{}", text(&o));

    // Receipt size.
    eprintln!(
        "receipt sizes: web-1 {} bytes, db-1 (refusing) {} bytes",
        rig.local_receipt(&web1).len(),
        rig.local_receipt(&db1).len()
    );
    assert!(rig.local_receipt(&web1).len() < 4096);
}

#[test]
fn fleet_from_a_directory_store() {
    if !netns_available() {
        return;
    }
    let rig = Rig::new(StoreKind::Directory);
    run_fleet_scenario(&rig);
    // The receipts are plain files, one per host.
    let mut names: Vec<String> = std::fs::read_dir(rig.p("store/receipts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(names.contains(&"web-1.json".to_string()), "{names:?}");
}

#[cfg(feature = "aws")]
#[test]
fn fleet_from_s3() {
    if !netns_available() {
        return;
    }
    let Some((port, _guard)) = moto::moto() else {
        return;
    };
    assert_eq!(
        moto::http(port, "PUT", &format!("/{BUCKET}"), b"").unwrap(),
        200
    );
    let rig = Rig::new(StoreKind::S3 { port });
    run_fleet_scenario(&rig);
}

#[test]
fn a_receipt_that_cannot_be_written_never_fails_the_run() {
    if !netns_available() {
        return;
    }
    let rig = Rig::new(StoreKind::Directory);
    rig.lead();
    let f = rig.follower("web-1", "10.1.0.10", "leader");
    // receipts/ is a file: the write fails.
    std::fs::write(rig.p("store/receipts"), b"in the way").unwrap();
    let cfg = std::fs::read_to_string(&f.config).unwrap() + "  metrics_file: follower.prom\n";
    std::fs::write(&f.config, cfg).unwrap();
    let o = rig.follow(&f);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        common::stderr(&o).contains("receipt not written"),
        "{}",
        text(&o)
    );
    assert!(
        f.ns.nft_list_table("inet", "reyes").is_some(),
        "applied all the same"
    );
    let prom = std::fs::read_to_string(rig.p("follower.prom")).unwrap();
    assert!(
        prom.contains("reyes_follower_receipt_failures_total 1\n"),
        "{prom}"
    );
}
