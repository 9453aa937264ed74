//! Real IPsec end to end: `enforce: ipsec` on ESP traffic, in an emulated guest kernel (this
//! machine's kernel has no ESP). Each test runs tests/ipsec/run-guest.sh, which boots Debian's
//! stock kernel under qemu (TCG) with the host's / read-only over 9p; inside, this build's
//! `reyes follower` applies a signed document in a network namespace and real TCP, UDP and ICMP
//! go over ESP transport-mode SAs (IPv4 and IPv6), or without any SA. Then, in the same guest,
//! a VPN gateway (`follower.mode: gateway`) judges what it forwards from ESP tunnels to a
//! server behind it and what the server sends into the tunnels (egress), while forwarded
//! traffic that came in plain is left alone. The guest writes
//! one line per check to its second serial port; this file parses that report itself and fails
//! on any check that is missing, unexpected or failed, whatever the script's own verdict.
//!
//! Skips: without qemu or the kernel package (and no way to install them) the script exits 77
//! and the test prints that it skipped, unless REYES_REQUIRE_QEMU=1 (scripts/test sets it as
//! root), where that is a failure. A backend or transport that this build of reyes does not
//! have yet (the follower says "not supported yet" and exits 2) makes the script exit 78: the
//! test prints the skip and passes, and runs for real as soon as the backend lands.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use common::reyes_bin;

/// run-guest.sh: qemu, the kernel or a tool is missing and cannot be installed.
const SKIP_ENV: i32 = 77;
/// run-guest.sh: the follower does not support this backend or transport yet.
const SKIP_BACKEND: i32 = 78;

/// Every check the guest reports for a backend that applies: all must be there and pass.
const CHECKS: &[&str] = &[
    "apply",
    "status",
    "esp_allowed_tcp_v4",
    "esp_allowed_tcp_v6",
    "esp_allowed_icmp_v4",
    "esp_allowed_icmp_v6",
    "plain_untouched_tcp_v4",
    "plain_untouched_tcp_v6",
    "plain_untouched_port_v4",
    "esp_ike_500_v4",
    "esp_ike_4500_v4",
    "esp_ike_500_v6",
    "esp_ike_4500_v6",
    "plain_ike_500_v4",
    "no_drops_while_allowed",
    "esp_denied_group_v4",
    "esp_denied_group_v6",
    "esp_denied_port_v4",
    "esp_denied_port_v6",
    "esp_accepted",
    "log_drop_v4",
    "log_drop_v6",
    "log_accept_v4",
    "log_accept_v6",
    "log_no_plain",
    "status_counts",
    // The VPN gateway (tests/ipsec/gateway-check.sh): ESP tunnels in, forward hook.
    "gw_apply",
    "gw_esp_allowed_tcp_v4",
    "gw_esp_allowed_tcp_v6",
    "gw_plain_untouched_v4",
    "gw_plain_untouched_v6",
    "gw_esp_denied_group_v4",
    "gw_esp_denied_group_v6",
    "gw_esp_denied_port_v4",
    "gw_esp_denied_port_v6",
    "gw_log_forward_drop",
    "gw_egress_allowed_v4",
    "gw_egress_allowed_v6",
    "gw_egress_denied_v4",
    "gw_egress_denied_v6",
    "gw_status_counts",
    "gw_revoke_open",
    "gw_egress_revoke_open",
    "gw_revoke_apply",
    "gw_egress_revoke_apply",
    "gw_revoke_cut",
    "gw_revoke_plain_kept",
    "gw_egress_revoke_cut",
];

/// A line for the test log even when the harness captures output (libtest captures only the
/// print macros): skips and timings should show in CI logs.
fn note(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// One guest at a time: each is a CPU-bound emulator on a small machine.
static QEMU: Mutex<()> = Mutex::new(());

/// The guest's report (results.txt), parsed.
#[derive(Debug, Default, PartialEq)]
struct Report {
    /// `begin` fields: version, kernel, backend, transport.
    begin: Vec<(String, String)>,
    /// (name, passed, detail) in order.
    checks: Vec<(String, bool, String)>,
    /// `skip` reason.
    skip: Option<String>,
    /// `error` lines.
    errors: Vec<String>,
    /// `end` pass and fail counts.
    end: Option<(usize, usize)>,
    /// Lines that follow none of the forms.
    malformed: Vec<String>,
}

impl Report {
    fn begin(&self, key: &str) -> Option<&str> {
        self.begin
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn parse(text: &str) -> Report {
    let mut r = Report::default();
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        let Some(rest) = line.strip_prefix("REYES-IPSEC ") else {
            if !line.trim().is_empty() {
                r.malformed.push(line.to_string());
            }
            continue;
        };
        let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        match kind {
            "begin" => {
                for kv in rest.split_whitespace() {
                    match kv.split_once('=') {
                        Some((k, v)) => r.begin.push((k.to_string(), v.to_string())),
                        None => r.malformed.push(line.to_string()),
                    }
                }
            }
            "check" => {
                let mut it = rest.splitn(3, ' ');
                match (it.next(), it.next()) {
                    (Some(name), Some(v @ ("pass" | "fail"))) if !name.is_empty() => {
                        r.checks.push((
                            name.to_string(),
                            v == "pass",
                            it.next().unwrap_or("").to_string(),
                        ))
                    }
                    _ => r.malformed.push(line.to_string()),
                }
            }
            "skip" => r.skip = Some(rest.to_string()),
            "error" => r.errors.push(rest.to_string()),
            "end" => {
                let count = |key: &str| {
                    rest.split_whitespace()
                        .find_map(|kv| kv.strip_prefix(key))
                        .and_then(|v| v.parse().ok())
                };
                match (count("pass="), count("fail=")) {
                    (Some(p), Some(f)) => r.end = Some((p, f)),
                    _ => r.malformed.push(line.to_string()),
                }
            }
            _ => r.malformed.push(line.to_string()),
        }
    }
    r
}

/// Run the harness with these arguments. `None`: skipped (said why); otherwise the report,
/// already held to everything a passing run must show.
fn run_guest(backend: &str, transport: &str) -> Option<Report> {
    let _one = QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ipsec/run-guest.sh");
    // Kept when the test fails (console.log, results.txt, qemu.log); removed when it passes or
    // skips.
    let out = tempfile::Builder::new()
        .prefix("reyes-ipsec-out.")
        .tempdir()
        .unwrap()
        .keep();
    let start = Instant::now();
    let o = Command::new("bash")
        .arg(&script)
        .args(["--backend", backend, "--nft-transport", transport])
        .args(["--timeout", "300", "--reyes", reyes_bin(), "--out"])
        .arg(&out)
        .output()
        .expect("run tests/ipsec/run-guest.sh");
    let secs = start.elapsed().as_secs();
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    eprintln!("{log}");
    let code = o.status.code().unwrap_or(-1);
    let results = std::fs::read_to_string(out.join("results.txt")).unwrap_or_default();
    let console = || {
        std::fs::read_to_string(out.join("console.log"))
            .unwrap_or_default()
            .replace('\r', "")
    };
    let what = format!("backend {backend}, nft transport {transport}");
    let done = || {
        let _ = std::fs::remove_dir_all(&out);
    };

    if code == SKIP_ENV {
        if std::env::var("REYES_REQUIRE_QEMU").as_deref() == Ok("1") {
            panic!("IPsec guest test ({what}) skipped, but REYES_REQUIRE_QEMU=1:\n{log}");
        }
        common::skipped(&format!(
            "IPsec guest test ({what}): qemu or the guest kernel is not available"
        ));
        done();
        return None;
    }
    let report = parse(&results);
    if code == SKIP_BACKEND {
        // Only the follower itself may decide this: exit 2, "not supported yet".
        let reason = report.skip.clone().unwrap_or_default();
        assert!(
            reason.contains("exited 2") && reason.contains("not supported yet"),
            "run-guest.sh exited {SKIP_BACKEND} (backend not supported) without the follower saying so: {reason:?}\n{log}"
        );
        common::skipped(&format!("IPsec guest test ({what}): {reason}"));
        done();
        return None;
    }

    let fail = |msg: String| -> ! {
        panic!(
            "IPsec guest test ({what}), run-guest.sh exited {code} after {secs}s: {msg}\n(all output kept in {})\n--- run-guest.sh:\n{log}\n--- results.txt:\n{results}\n--- console.log (last 80 lines):\n{}",
            out.display(),
            console()
                .lines()
                .rev()
                .take(80)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    if report.begin("version") != Some("1") {
        fail("the guest's report has no `begin version=1` line".into());
    }
    if report.begin("backend") != Some(backend) || report.begin("transport") != Some(transport) {
        fail(format!("the guest ran another variant: {:?}", report.begin));
    }
    if !report.errors.is_empty() {
        fail(format!(
            "the guest could not build the rig: {:?}",
            report.errors
        ));
    }
    if let Some(s) = &report.skip {
        fail(format!(
            "the guest skipped ({s}) but run-guest.sh exited {code}"
        ));
    }
    if !report.malformed.is_empty() {
        fail(format!("malformed report lines: {:?}", report.malformed));
    }
    let passed = report.checks.iter().filter(|c| c.1).count();
    let failed: Vec<_> = report.checks.iter().filter(|c| !c.1).collect();
    match report.end {
        Some((p, f)) if (p, f) == (passed, failed.len()) => {}
        other => fail(format!(
            "the report's end line {other:?} does not match its {passed} passed, {} failed checks (or is missing: the guest did not finish)",
            failed.len()
        )),
    }
    if !failed.is_empty() {
        let lines: Vec<_> = failed.iter().map(|c| format!("{}: {}", c.0, c.2)).collect();
        fail(format!("failed checks:\n  {}", lines.join("\n  ")));
    }
    let names: Vec<&str> = report.checks.iter().map(|c| c.0.as_str()).collect();
    let missing: Vec<_> = CHECKS.iter().filter(|c| !names.contains(c)).collect();
    let unexpected: Vec<_> = names.iter().filter(|n| !CHECKS.contains(n)).collect();
    let mut seen = names.clone();
    seen.sort_unstable();
    seen.dedup();
    if !missing.is_empty() || !unexpected.is_empty() || seen.len() != names.len() {
        fail(format!(
            "the checks reported differ from the expected ones: missing {missing:?}, unexpected {unexpected:?}, reported {names:?}"
        ));
    }
    if code != 0 {
        fail("every check passed but the script did not exit 0".into());
    }
    note(&format!(
        "IPsec guest test ({what}): {passed} checks passed on kernel {} in {secs}s",
        report.begin("kernel").unwrap_or("?")
    ));
    done();
    Some(report)
}

#[test]
fn esp_enforced_with_nft_cli() {
    if let Some(r) = run_guest("nft", "cli") {
        assert!(r.begin("kernel").is_some_and(|k| !k.is_empty()));
    }
}

#[test]
fn esp_enforced_with_nft_netlink() {
    run_guest("nft", "netlink");
}

#[test]
fn esp_enforced_with_iptables() {
    run_guest("iptables", "cli");
}

#[test]
fn report_parser() {
    let r = parse(
        "REYES-IPSEC begin version=1 kernel=6.1.0-56-amd64 backend=nft transport=cli\r\n\
         REYES-IPSEC check apply pass follower exited 0\r\n\
         REYES-IPSEC check esp_denied_group_v4 fail FAILED: got through; rc=0\r\n\
         REYES-IPSEC end pass=1 fail=1\r\n",
    );
    assert_eq!(r.begin("kernel"), Some("6.1.0-56-amd64"));
    assert_eq!(r.begin("backend"), Some("nft"));
    assert_eq!(
        r.checks,
        vec![
            ("apply".into(), true, "follower exited 0".into()),
            (
                "esp_denied_group_v4".into(),
                false,
                "FAILED: got through; rc=0".into()
            ),
        ]
    );
    assert_eq!(r.end, Some((1, 1)));
    assert!(r.malformed.is_empty() && r.errors.is_empty() && r.skip.is_none());

    let r = parse("REYES-IPSEC skip follower exited 2: not supported yet\ngarbage\nREYES-IPSEC check x maybe\nREYES-IPSEC end pass=x\n");
    assert_eq!(
        r.skip.as_deref(),
        Some("follower exited 2: not supported yet")
    );
    assert_eq!(r.malformed.len(), 3, "{:?}", r.malformed);
    assert_eq!(r.end, None);
}
