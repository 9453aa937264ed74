//! The Debian package and what ships around the binary.
//!
//! One .deb is built per test run from the binary this test run built (`scripts/build-deb
//! --binary`, so no release build), then: lintian reports no errors; `systemd-analyze verify`
//! passes on every unit; installed into a scratch root with `dpkg -x`, the binary runs
//! `--version` and `render` on the example, and the conffile, units, man pages and completions
//! are where the docs say. Also: examples/cloud-init.yaml passes `cloud-init schema`, and
//! scripts/check-links finds no broken relative link in the Markdown.
//!
//! A missing tool (cargo-deb, lintian, systemd-analyze, cloud-init) prints a `skipped` line,
//! and fails instead under REYES_REQUIRE_TOOLS=1 (scripts/test sets it as root).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn required() -> bool {
    std::env::var("REYES_REQUIRE_TOOLS").as_deref() == Ok("1")
}

fn skip(test: &str, why: &str) {
    if required() {
        panic!("{test}: {why} (REYES_REQUIRE_TOOLS=1): run scripts/setup");
    }
    eprintln!("skipped: {test}: {why} (scripts/setup installs it)");
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The package built from this test run's binary, and the scratch root it is unpacked in.
struct Built {
    _dir: tempfile::TempDir,
    deb: PathBuf,
    root: PathBuf,
}

/// `None` when cargo-deb is missing (skipped).
fn package() -> Option<&'static Built> {
    static DEB: OnceLock<Option<Built>> = OnceLock::new();
    DEB.get_or_init(|| {
        if !have("cargo-deb", "--version") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(repo().join("scripts/build-deb"))
            .arg("--fast")
            .arg("--binary")
            .arg(env!("CARGO_BIN_EXE_reyes"))
            .arg("--output")
            .arg(dir.path())
            .output()
            .unwrap();
        ok(&out, "scripts/build-deb --binary");
        let deb = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .expect("no .deb written");
        let root = dir.path().join("root");
        let out = Command::new("dpkg")
            .arg("-x")
            .arg(&deb)
            .arg(&root)
            .output()
            .unwrap();
        ok(&out, "dpkg -x");
        Some(Built {
            _dir: dir,
            deb,
            root,
        })
    })
    .as_ref()
}

fn package_or_skip(test: &str) -> Option<&'static Built> {
    let p = package();
    if p.is_none() {
        skip(test, "cargo-deb is not installed");
    }
    p
}

const UNITS: [&str; 3] = [
    "reyes-follower.service",
    "reyes-leader.service",
    "reyes-restore.service",
];

fn unit_dir(root: &Path) -> PathBuf {
    ["lib/systemd/system", "usr/lib/systemd/system"]
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.join(UNITS[0]).exists())
        .expect("no systemd units in the package")
}

#[test]
fn installed_binary_runs_version_and_render() {
    let Some(p) = package_or_skip("deb install") else {
        return;
    };
    let bin = p.root.join("usr/bin/reyes");
    let out = Command::new(&bin).arg("--version").output().unwrap();
    ok(&out, "reyes --version");
    assert_eq!(
        text(&out.stdout).trim(),
        format!("reyes {}", env!("CARGO_PKG_VERSION"))
    );
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("rules.json");
    std::fs::write(&doc, support::static_built().bytes).unwrap();
    let out = Command::new(&bin)
        .env_remove("REYES_CONFIG")
        .args(["render", "--host", "10.1.0.12", "--document"])
        .arg(&doc)
        .output()
        .unwrap();
    ok(&out, "installed reyes render");
    let s = text(&out.stdout);
    assert!(
        s.contains("table inet reyes") && s.contains("g_sg_web"),
        "{s}"
    );
    // The installed binary is stripped.
    let out = Command::new("file").arg(&bin).output();
    if let Ok(out) = out {
        let f = text(&out.stdout);
        assert!(f.contains("stripped") && !f.contains("not stripped"), "{f}");
    }
}

#[test]
fn package_holds_conffile_units_man_pages_completions_and_docs() {
    let Some(p) = package_or_skip("deb contents") else {
        return;
    };
    let out = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&p.deb)
        .arg("Package")
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout).trim(), "reyes");
    let ctl = tempfile::tempdir().unwrap();
    let out = Command::new("dpkg-deb")
        .arg("-e")
        .arg(&p.deb)
        .arg(ctl.path())
        .output()
        .unwrap();
    ok(&out, "dpkg-deb -e");
    let conffiles = std::fs::read_to_string(ctl.path().join("conffiles")).unwrap();
    assert!(
        conffiles.lines().any(|l| l == "/etc/reyes/reyes.yaml"),
        "{conffiles}"
    );
    let postinst = std::fs::read_to_string(ctl.path().join("postinst")).unwrap();
    assert!(postinst.contains("reyes-restore.service"), "{postinst}");
    let shipped = std::fs::read_to_string(repo().join("packaging/reyes.yaml")).unwrap();
    assert_eq!(
        std::fs::read_to_string(p.root.join("etc/reyes/reyes.yaml")).unwrap(),
        shipped
    );
    let units = unit_dir(&p.root);
    for u in UNITS {
        let text = std::fs::read_to_string(units.join(u)).unwrap();
        assert!(
            text.contains("ProtectSystem=strict") && text.contains("NoNewPrivileges=yes"),
            "{u}"
        );
    }
    for f in [
        "usr/share/man/man1/reyes.1.gz",
        "usr/share/man/man1/reyes-follower.1.gz",
        "usr/share/man/man1/reyes-config.1.gz",
        "usr/share/bash-completion/completions/reyes",
        "usr/share/zsh/vendor-completions/_reyes",
        "usr/share/fish/vendor_completions.d/reyes.fish",
        "usr/share/doc/reyes/copyright",
        "usr/share/doc/reyes/changelog.Debian.gz",
        "usr/share/doc/reyes/operations.md",
        "usr/share/doc/reyes/config.md",
        "usr/share/doc/reyes/examples/cloud-init.yaml",
    ] {
        assert!(p.root.join(f).exists(), "{f} missing from the package");
    }
}

#[test]
fn lintian_reports_no_errors() {
    let Some(p) = package_or_skip("lintian") else {
        return;
    };
    if !have("lintian", "--version") {
        return skip("lintian", "lintian is not installed");
    }
    let out = Command::new("lintian")
        .args(["--fail-on", "error", "--no-tag-display-limit"])
        .arg(&p.deb)
        .output()
        .unwrap();
    let report = text(&out.stdout);
    eprintln!("lintian:\n{report}");
    ok(&out, "lintian --fail-on error");
    assert!(!report.lines().any(|l| l.starts_with("E: ")), "{report}");
}

#[test]
fn systemd_analyze_verifies_every_unit() {
    let Some(p) = package_or_skip("systemd-analyze verify") else {
        return;
    };
    if !have("systemd-analyze", "--version") {
        return skip("systemd-analyze verify", "systemd-analyze is not installed");
    }
    // verify checks that ExecStart's binary exists and that the Documentation= man pages
    // resolve: point the units at the unpacked binary and `man` at the unpacked pages.
    let units = unit_dir(&p.root);
    let dir = tempfile::tempdir().unwrap();
    let bin = p.root.join("usr/bin/reyes");
    for u in UNITS {
        let unit = std::fs::read_to_string(units.join(u)).unwrap();
        assert!(unit.contains("ExecStart=/usr/bin/reyes "), "{u}");
        let local = unit.replace("/usr/bin/reyes", &bin.display().to_string());
        std::fs::write(dir.path().join(u), local).unwrap();
    }
    for u in UNITS {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(dir.path().join(u))
            .env("MANPATH", p.root.join("usr/share/man"))
            .output()
            .unwrap();
        ok(&out, &format!("systemd-analyze verify {u}"));
        // Unknown keys and bad values are only warnings to verify: none allowed.
        let e = text(&out.stderr);
        assert!(e.trim().is_empty(), "systemd-analyze verify {u}:\n{e}");
    }
    // The follower's exposure score (0 best, 10 worst), for the record, and kept low.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(dir.path().join("reyes-follower.service"))
        .output()
        .unwrap();
    let s = text(&out.stdout);
    let line = s
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{s}"));
    eprintln!("{}", line.trim());
    let score: f64 = line
        .split(": ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    assert!(
        score <= 2.5,
        "reyes-follower.service exposure {score} (was 1.9)"
    );
}

#[test]
fn cloud_init_example_is_valid_cloud_config() {
    if !have("cloud-init", "--version") {
        return skip("cloud-init schema", "cloud-init is not installed");
    }
    let file = repo().join("examples/cloud-init.yaml");
    let out = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&file)
        .output()
        .unwrap();
    ok(&out, "cloud-init schema examples/cloud-init.yaml");
    // The checker is not a rubber stamp: a wrong type fails.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "#cloud-config\nruncmd: 5\n").unwrap();
    let out = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    // The config the example writes is one reyes accepts.
    let yaml = std::fs::read_to_string(&file).unwrap();
    let body: String = yaml
        .split("content: |\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with("      "))
        .map(|l| format!("{}\n", &l[6..]))
        .collect();
    let cfg = dir.path().join("reyes.yaml");
    std::fs::write(&cfg, body).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_reyes"))
        .arg("--config")
        .arg(&cfg)
        .args(["config", "check"])
        .output()
        .unwrap();
    ok(&out, "reyes config check on the cloud-init config");
}

#[test]
fn markdown_links_resolve_inside_the_repository() {
    if !have("python3", "--version") {
        return skip("check-links", "python3 is not installed");
    }
    let out = Command::new(repo().join("scripts/check-links"))
        .output()
        .unwrap();
    ok(&out, "scripts/check-links");
    // And it does catch a broken link and a link out of the repository.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("README.md"),
        "# T\n[a](missing.md) [b](../outside.md) [c](#t) [d](#nope) `[e](x.md)`\n",
    )
    .unwrap();
    let out = Command::new(repo().join("scripts/check-links"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let s = text(&out.stdout);
    assert!(s.contains("missing.md: no such file"), "{s}");
    assert!(
        s.contains("../outside.md: points outside the repository"),
        "{s}"
    );
    assert!(s.contains("#nope: no heading"), "{s}");
    assert!(!s.contains("#t:") && !s.contains("x.md"), "{s}");
}
