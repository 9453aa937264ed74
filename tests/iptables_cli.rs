//! The iptables backend through the binary: leader publishes a signed document, the follower
//! applies it with `--backend iptables` inside a namespace, `status` reads the counters,
//! a dry run shows no difference, `flush` removes reyes' objects, and a variant that would
//! mix with the host's is refused with exit code 2.

mod common;

use std::path::Path;
use std::process::Command;

use common::{netns_available, reyes, text, Netns};

fn tools_available() -> bool {
    let ok = [
        "iptables-legacy-restore",
        "ip6tables-legacy-restore",
        "ipset",
    ]
    .iter()
    .all(|b| {
        Command::new(b).arg("--version").output().is_ok()
            || Command::new(b).arg("-v").output().is_ok()
    });
    if !ok {
        if std::env::var("REYES_REQUIRE_NETNS").as_deref() == Ok("1") {
            panic!("iptables-legacy and ipset are required (REYES_REQUIRE_NETNS=1)");
        }
        common::skipped("iptables-legacy or ipset not installed");
    }
    ok
}

fn config(dir: &Path, variant: &str) -> String {
    let d = dir.display();
    format!(
        "environment: test\nstore:\n  directory: {d}/store\nsigning:\n  key: {d}/keys/leader.secret.asc\n  keyring: {d}/keys/leader.cert.asc\n\
         inventory:\n  file: {d}/inventory.yaml\nfollower:\n  backend: iptables\n  iptables_variant: {variant}\n  enforce: ipsec\n\
         \x20 addresses: [10.1.0.12]\n  log_drop: true\n  state_dir: {d}/state\n  disable_file: {d}/disabled\n"
    )
}

#[test]
fn follower_applies_through_iptables_and_flush_removes_it() {
    if !netns_available() || !tools_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("store")).unwrap();
    // Enough load balancers for sg-lb to get an ipset (reyes-m4_sg_lb).
    std::fs::write(
        d.join("inventory.yaml"),
        common::example_inventory_with_sets(),
    )
    .unwrap();
    let cfg = d.join("reyes.yaml");
    std::fs::write(&cfg, config(d, "legacy")).unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let o = reyes(&[
        "keygen",
        "--name",
        "leader",
        "--output-dir",
        d.join("keys").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = reyes(&["--config", cfg_s, "leader", "--once"]);
    assert!(o.status.success(), "{}", text(&o));

    let ns = Netns::new("cli");
    ns.ok(&[
        "iptables-legacy",
        "-w",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "2222",
        "-j",
        "DROP",
    ]);
    let before = ns.ok(&["iptables-legacy-save", "-t", "filter"]);

    let o = ns.reyes(&["--config", cfg_s, "follower", "--once"]);
    assert!(o.status.success(), "{}", text(&o));
    let rules = ns.ok(&["iptables-legacy", "-S", "INPUT"]);
    assert!(
        rules.contains("-A INPUT -j REYES-INPUT\n-A INPUT -p tcp -m tcp --dport 2222 -j DROP"),
        "{rules}"
    );
    let sets = ns.ok(&["ipset", "list", "-n"]);
    assert!(sets.contains("reyes-m4_sg_lb"), "{sets}");

    // What `render` prints is what was applied: every chain line is in the kernel.
    let doc = d.join("store/rules.json");
    let o = reyes(&[
        "--config",
        cfg_s,
        "render",
        "--document",
        doc.to_str().unwrap(),
        "--backend",
        "iptables",
        "--host",
        "10.1.0.12",
        "--log-drop",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let rendered = String::from_utf8_lossy(&o.stdout).into_owned();
    let live = ns.ok(&["iptables-legacy-save", "-t", "filter"]);
    let v4 = rendered
        .split("### 3.")
        .nth(1)
        .unwrap()
        .split("### 4.")
        .next()
        .unwrap();
    for l in v4.lines().filter(|l| l.starts_with("-A REYES-")) {
        assert!(
            live.lines().any(|x| x == l),
            "rendered line not live: {l}\n{live}"
        );
    }

    let o = ns.reyes(&["--config", cfg_s, "status"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.contains("backend: iptables")
            && s.contains("live: yes")
            && s.contains("dropped: 0 packets, 0 bytes"),
        "{s}"
    );

    // Unchanged document: nothing to do; a dry run finds no difference.
    let o = ns.reyes(&["--config", cfg_s, "follower", "--once"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = ns.reyes(&["--config", cfg_s, "follower", "--once", "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let diff = out.split("# diff against the live ruleset").nth(1).unwrap();
    assert_eq!(
        diff.lines()
            .filter(|l| l.starts_with("- ") || l.starts_with("+ "))
            .count(),
        0,
        "{diff}"
    );

    // The other variant would mix with the host's rules: a configuration error.
    let other = d.join("other.yaml");
    std::fs::write(&other, config(d, "nft")).unwrap();
    let o = ns.reyes(&["--config", other.to_str().unwrap(), "status"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = ns.reyes(&[
        "--config",
        other.to_str().unwrap(),
        "follower",
        "--once",
        "--log-accept",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("in use through iptables-legacy"),
        "{}",
        text(&o)
    );

    let o = ns.reyes(&["--config", cfg_s, "flush"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        ns.ok(&["iptables-legacy-save", "-t", "filter"])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>(),
        before
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
    );
    assert_eq!(ns.ok(&["ipset", "list", "-n"]), "");
    let o = ns.reyes(&["--config", cfg_s, "status"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}
