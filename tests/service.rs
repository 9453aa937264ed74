//! `--interval` as a service, as a real process: systemd's notification socket (READY=1,
//! WATCHDOG=1, STOPPING=1), SIGHUP with a bad config (kept running on the old one) and with a
//! good one, SIGTERM ending a wait at once with exit 0. Also the metrics file, checked with
//! `promtool check metrics`. Nothing here needs root; every wait is on a message, a log line or
//! the process exit, each with a deadline.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{reyes_bin, text};

const DEADLINE: Duration = Duration::from_secs(30);

fn write(p: &Path, s: &str) {
    std::fs::write(p, s).unwrap();
}

/// Messages on the notify socket until `want` arrives (all of them, in order).
fn until_notified(sock: &UnixDatagram, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let end = Instant::now() + DEADLINE;
    let mut buf = [0u8; 256];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {want:?} on the notify socket; got {seen:?}"
        );
        sock.set_read_timeout(Some(left)).unwrap();
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {want:?} on the notify socket ({e}); got {seen:?}"));
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        seen.push(msg.clone());
        if msg == want {
            return seen;
        }
    }
}

/// Lines of the child's stderr until one contains `want`.
fn until_logged(lines: &mpsc::Receiver<String>, want: &str) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if l.contains(want) => return l,
            Ok(_) => continue,
            Err(e) => panic!("no log line with {want:?} ({e})"),
        }
    }
}

#[test]
fn interval_service_notifies_reloads_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("reyes.yaml");
    let good =
        "environment: test\nstore:\n  directory: store\nleader:\n  metrics_file: leader.prom\n";
    write(&cfg, good);
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();

    let mut child = Command::new(reyes_bin())
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "leader",
            "--interval",
            "1h",
        ])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("REYES_CONFIG")
        .env_remove("REYES_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let (tx, lines) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("reyes: {l}");
            if tx.send(l).is_err() {
                break;
            }
        }
    });

    until_notified(&sock, "READY=1");
    let started = until_logged(&lines, "service started");
    assert!(started.contains("first_run_in="), "{started}");
    // Waiting for the first run (splayed within the hour), the watchdog is fed.
    until_notified(&sock, "WATCHDOG=1");

    // A config that does not load: reported, the service keeps running on the old one.
    write(&cfg, "environment: [\n");
    // SAFETY: kill with a valid pid of our own child and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    until_logged(&lines, "keeping the previous config");
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited on a bad config"
    );
    until_notified(&sock, "WATCHDOG=1");

    write(&cfg, good);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    until_logged(&lines, "config reloaded");

    // SIGTERM while waiting: exit 0 at once.
    let (done_tx, done) = mpsc::channel();
    let t0 = Instant::now();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let status = done
        .recv_timeout(Duration::from_secs(2))
        .expect("still running 2 s after SIGTERM")
        .unwrap();
    let took = t0.elapsed();
    assert_eq!(status.code(), Some(0), "{status:?}");
    eprintln!("SIGTERM to exit: {took:?}");
    until_notified(&sock, "STOPPING=1");
}

/// `promtool check metrics` on `text`; `None` when promtool is missing (skipped, loudly,
/// except under CI where scripts/setup installs it).
fn promtool(text: &str) -> Option<String> {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            if std::env::var("CI").is_ok() {
                panic!("promtool is needed under CI (scripts/setup installs prometheus): {e}");
            }
            eprintln!("skipped: promtool not found ({e}); install Debian's prometheus package");
            return None;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "promtool check metrics: {}\n{text}",
        text_of(&o)
    );
    Some(String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
}

fn text_of(o: &std::process::Output) -> String {
    text(o)
}

#[test]
fn metrics_files_pass_promtool() {
    use reyes::backend::Counters;
    use reyes::error::Failure;
    use reyes::metrics::{
        AppliedFacts, FetchResult, FollowerMetrics, LeaderMetrics, LeaderRun, Report,
    };
    use std::time::SystemTime;

    // A follower's file with every family filled in, as a service accumulates it.
    let mut m = FollowerMetrics::default();
    m.environment = "prod".into();
    let now = SystemTime::now();
    m.observe(
        &Report {
            fetch: Some(FetchResult::Changed),
            backend: Some("nft"),
            transport: Some("netlink"),
            apply_seconds: Some(0.031),
            counters: Some(Counters {
                accepted: Some((12, 840)),
                dropped: Some((3, 180)),
                audit: vec![],
            }),
            drift_repairs: 1,
            revoked: 2,
            revoke_failed: false,
        },
        Ok(()),
        Some(AppliedFacts {
            serial: 1_764_480_000,
            issued_at: 1_764_480_000.0,
            not_after: 1_764_483_600.0,
        }),
        now,
    );
    let refused = Failure::refused(reyes::follower::Refusal::new("expired", "old".into()));
    m.observe(
        &Report {
            fetch: Some(FetchResult::Unchanged),
            ..Default::default()
        },
        Err(&refused),
        None,
        now,
    );
    let follower = m.render();
    let mut l = LeaderMetrics::default();
    l.observe(LeaderRun::Published(7), 0.4, now);
    l.observe(LeaderRun::Failed, 0.1, now);
    let leader = l.render();
    if promtool(&follower).is_none() {
        return;
    }
    promtool(&leader);

    // And the file a real leader run writes (it fails: no inventory; the file says so).
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("reyes.yaml");
    write(
        &cfg,
        "environment: test\nstore:\n  directory: store\nleader:\n  metrics_file: out/leader.prom\n",
    );
    std::fs::create_dir(dir.path().join("out")).unwrap();
    let o = Command::new(reyes_bin())
        .args(["--config", cfg.to_str().unwrap(), "leader", "--once"])
        .env_remove("REYES_CONFIG")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let file = std::fs::read_to_string(dir.path().join("out/leader.prom")).unwrap();
    assert!(
        file.contains("reyes_leader_runs_total{result=\"failed\"} 1\n"),
        "{file}"
    );
    promtool(&file);
}
