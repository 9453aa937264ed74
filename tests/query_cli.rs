//! `reyes query`, `reyes test` and `reyes diff` as a user runs them: output and exit codes.

mod common;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

// No config: query and test must not read /etc/reyes/reyes.yaml (`reyes` removes REYES_CONFIG).
use common::{docs, reyes, stdout as out};

const INV: &str = r#"
networks: [{id: vpc-a, cidrs: [10.1.0.0/16, "fd00:1::/56"]}]
groups:
  - id: sg-web
    name: web
    ingress:
      - {proto: tcp, ports: 443, from: {groups: [sg-lb]}}
      - {proto: icmpv6, icmp_type: 128, from: {cidrs: ["fd00::/8"]}}
  - id: sg-lb
    name: lb
    ingress: [{proto: tcp, ports: 443, from: {cidrs: [0.0.0.0/0]}}]
hosts:
  - {id: lb1, addresses: [10.1.0.5, "fd00:1::5"], groups: [sg-lb]}
  - {id: web1, addresses: [10.1.0.10, "fd00:1::10"], groups: [sg-web]}
"#;

fn write_doc(dir: &Path, name: &str, yaml: &str, serial: u64) -> PathBuf {
    let b = docs::built(yaml, &docs::options("prod", serial, SystemTime::now()));
    let p = dir.join(name);
    std::fs::write(&p, &b.bytes).unwrap();
    p
}

#[test]
fn query_exit_codes_and_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let doc = write_doc(dir.path(), "rules.json", INV, 1);
    let d = doc.to_str().unwrap();
    let q = |extra: &[&str]| {
        let mut a = vec!["query", "--document", d];
        a.extend_from_slice(extra);
        reyes(&a)
    };
    let o = q(&[
        "--from",
        "10.1.0.5",
        "--to",
        "10.1.0.10",
        "--proto",
        "tcp",
        "--port",
        "443",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(
        out(&o).starts_with("ALLOW 10.1.0.5 -> 10.1.0.10 tcp/443"),
        "{}",
        out(&o)
    );
    assert!(
        out(&o).contains("sg-web ingress[0]: tcp 443 from groups sg-lb (matched group sg-lb)"),
        "{}",
        out(&o)
    );

    let o = q(&[
        "--from",
        "10.1.0.99",
        "--to",
        "10.1.0.10",
        "--proto",
        "tcp",
        "--port",
        "443",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).starts_with("DENY "), "{}", out(&o));
    assert!(
        out(&o).contains("destination groups: sg-web"),
        "{}",
        out(&o)
    );

    let o = q(&[
        "--from",
        "fd00:7::1",
        "--to",
        "fd00:1::10",
        "--proto",
        "icmpv6",
        "--icmp-type",
        "128",
        "--icmp-code",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    // Not over IPsec: out of scope, accepted whatever the document says.
    let o = q(&[
        "--from",
        "10.1.0.99",
        "--to",
        "10.1.0.10",
        "--proto",
        "tcp",
        "--port",
        "22",
        "--no-ipsec",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(out(&o).contains("out of scope"), "{}", out(&o));

    // Errors: 2.
    for bad in [
        &["--from", "10.1.0.5", "--to", "fd00:1::10", "--proto", "tcp"][..],
        &[
            "--from",
            "10.1.0.5",
            "--to",
            "10.1.0.10",
            "--proto",
            "icmp",
            "--icmp-code",
            "1",
        ],
        &["--from", "10.1.0.5", "--to", "10.1.0.10", "--proto", "tcpp"],
        &[
            "--from",
            "10.1.0.5",
            "--to",
            "10.1.0.10",
            "--proto",
            "tcp",
            "--enforce",
            "cidr",
        ],
    ] {
        let o = q(bad);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{bad:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = reyes(&[
        "query",
        "--document",
        "/nonexistent.json",
        "--from",
        "10.1.0.5",
        "--to",
        "10.1.0.10",
        "--proto",
        "all",
    ]);
    assert_eq!(o.status.code(), Some(2));
    // Malformed document: 2 as well, not 3.
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, b"{}").unwrap();
    let o = reyes(&[
        "query",
        "--document",
        broken.to_str().unwrap(),
        "--from",
        "10.1.0.5",
        "--to",
        "10.1.0.10",
        "--proto",
        "all",
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn query_with_a_follower_config() {
    let dir = tempfile::tempdir().unwrap();
    let doc = write_doc(dir.path(), "rules.json", INV, 1);
    let cfg = dir.path().join("reyes.yaml");
    std::fs::write(
        &cfg,
        "environment: prod\nstore: {directory: /nonexistent}\nfollower:\n  enforce: cidr\n  managed_cidrs: [10.0.0.0/8]\n  local_cidrs: [10.1.0.0/24]\n  failsafe: [{proto: tcp, port: 22, from: 10.9.0.0/24}]\n",
    )
    .unwrap();
    let q = |from: &str, port: &str| {
        reyes(&[
            "--config",
            cfg.to_str().unwrap(),
            "query",
            "--document",
            doc.to_str().unwrap(),
            "--from",
            from,
            "--to",
            "10.1.0.10",
            "--proto",
            "tcp",
            "--port",
            port,
        ])
    };
    let o = q("10.9.0.7", "22");
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(
        out(&o).contains("follower.failsafe[0]: tcp 22 from 10.9.0.0/24"),
        "{}",
        out(&o)
    );
    assert_eq!(
        q("10.9.1.7", "22").status.code(),
        Some(1),
        "managed, not local: enforced"
    );
    assert_eq!(q("10.1.0.77", "22").status.code(), Some(0), "local");
    assert_eq!(q("192.168.0.1", "22").status.code(), Some(0), "unmanaged");
}

#[test]
fn test_reports_failures_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let doc = write_doc(dir.path(), "rules.json", INV, 1);
    let flows = dir.path().join("flows.yaml");
    std::fs::write(
        &flows,
        "- name: lb reaches web on 443\n  from: {group: sg-lb}\n  to: {group: sg-web}\n  proto: tcp\n  port: 443\n  expect: allow\n\
         - name: web does not reach lb on 22\n  from: {group: sg-web}\n  to: {group: sg-lb}\n  proto: tcp\n  port: 22\n  expect: deny\n",
    )
    .unwrap();
    let t = |f: &Path| {
        reyes(&[
            "test",
            "--document",
            doc.to_str().unwrap(),
            f.to_str().unwrap(),
        ])
    };
    let o = t(&flows);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    // Each entry expands to one IPv4 and one IPv6 pair of members.
    assert_eq!(out(&o), "4 passed, 0 failed\n");

    std::fs::write(&flows, "- name: wrong\n  from: 10.1.0.5\n  to: 10.1.0.10\n  proto: tcp\n  port: 443\n  expect: deny\n").unwrap();
    let o = t(&flows);
    assert_eq!(o.status.code(), Some(1));
    let lines: Vec<String> = out(&o).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!(
            "FAIL {}:1:3: wrong: 10.1.0.5 -> 10.1.0.10 tcp/443",
            flows.display()
        )),
        "{}",
        lines[0]
    );
    assert_eq!(lines[1], "0 passed, 1 failed");

    std::fs::write(&flows, "- from: 10.1.0.5\n  to: 10.1.0.10\n  proto: tcp\n  port: 443\n  expect: allow\n  extra: 1\n").unwrap();
    let o = t(&flows);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("{}:6:", flows.display())), "{err}");
}

#[test]
fn diff_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let old = write_doc(dir.path(), "old.json", INV, 1);
    let new_inv = INV
        .replace(
            "ports: 443, from: {groups: [sg-lb]}",
            "ports: 8443, from: {groups: [sg-lb]}",
        )
        .replace("[10.1.0.10, ", "[10.1.0.11, ");
    let new = write_doc(dir.path(), "new.json", &new_inv, 2);
    let o = reyes(&["diff", old.to_str().unwrap(), new.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    let t = out(&o);
    assert!(t.contains("~ group sg-web (web)\n    + member 10.1.0.11\n    - member 10.1.0.10\n    + rule tcp 8443 from groups sg-lb\n    - rule tcp 443 from groups sg-lb\n"), "{t}");
    let o = reyes(&[
        "diff",
        "--format",
        "json",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["groups_changed"][0]["id"], "sg-web");
    assert_eq!(v["groups_changed"][0]["members_added"][0], "10.1.0.11");
    assert_eq!(v["old"]["serial"], 1);
    let o = reyes(&["diff", old.to_str().unwrap(), old.to_str().unwrap()]);
    assert!(out(&o).ends_with("no policy changes\n"));
}
