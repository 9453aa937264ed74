//! The follower as an unattended service, in network namespaces: boot-time restore with the
//! recorded host context (a fresh namespace without addresses ends with the same table), and
//! commit-confirm (`follower --once --confirm` + `reyes confirm`): confirmed in time, not
//! confirmed, and the applying process killed. The detached revert process is waited for as
//! a child (this test process is made a subreaper), never by sleeping. Also a follower's
//! metrics file after a real apply, checked with `promtool check metrics`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{netns_available, normalise, reyes_bin, text, Netns};

const HOST: &str = "10.1.0.12";

struct Rig {
    dir: tempfile::TempDir,
    ns: Netns,
}

fn write(p: &Path, s: &str) {
    std::fs::write(p, s).unwrap();
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

impl Rig {
    /// Keys, inventory, and a config with `addresses` (`auto` or a list).
    fn new(tag: &str, addresses: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        // Enough load balancers for sg-lb to get a set: drift in set elements is tested.
        std::fs::write(
            dir.path().join("inventory.yaml"),
            common::example_inventory_with_sets(),
        )
        .unwrap();
        let rig = Rig {
            dir,
            ns: Netns::new(tag),
        };
        let keys = rig.p("keys");
        let o = rig.cmd(&[
            "keygen",
            "--name",
            "leader",
            "--output-dir",
            keys.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let cfg = format!(
            "environment: prod\nstore:\n  directory: store\nsigning:\n  key: keys/leader.secret.asc\n  keyring: keys/leader.cert.asc\n  validity: 1h\ninventory:\n  file: inventory.yaml\n  dynamic_subnets: [workers]\nfollower:\n  backend: nft\n  addresses: {addresses}\n  failsafe: [{{proto: tcp, port: 22, from: 10.9.0.0/24}}]\n  disable_file: disabled\n  state_dir: state\n  metrics_file: follower.prom\n"
        );
        write(&rig.p("reyes.yaml"), &cfg);
        rig
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn cfg(&self) -> String {
        self.p("reyes.yaml").to_str().unwrap().to_string()
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new(reyes_bin())
            .args(args)
            .env_remove("REYES_CONFIG")
            .output()
            .unwrap()
    }

    fn lead(&self) {
        let cfg = self.cfg();
        let o = self.cmd(&["--config", &cfg, "leader", "--once"]);
        assert_eq!(code(&o), 0, "leader: {}", text(&o));
    }

    /// reyes with this config inside `ns`.
    fn reyes_in(&self, ns: &Netns, args: &[&str]) -> Output {
        let cfg = self.cfg();
        let mut a = vec!["--config", cfg.as_str()];
        a.extend_from_slice(args);
        ns.reyes(&a)
    }

    fn follow(&self) {
        let o = self.reyes_in(&self.ns, &["follower", "--once"]);
        assert_eq!(code(&o), 0, "follower: {}", text(&o));
    }

    /// A second document: one more rule for sg-web.
    fn change_policy(&self) {
        let inv = std::fs::read_to_string(self.p("inventory.yaml")).unwrap().replace(
            "      - {proto: tcp, ports: 9100, from: {prefix_lists: [pl-monitoring]}}",
            "      - {proto: tcp, ports: 9100, from: {prefix_lists: [pl-monitoring]}}\n      - {proto: udp, ports: 5353, from: {cidrs: [10.77.0.0/16]}}",
        );
        write(&self.p("inventory.yaml"), &inv);
        self.lead();
    }

    fn live(&self, ns: &Netns) -> Option<String> {
        ns.nft_list_table("inet", "reyes").map(|t| normalise(&t))
    }
}

#[test]
fn boot_restore_without_addresses_uses_the_recorded_host_context() {
    if !netns_available() {
        return;
    }
    let rig = Rig::new("boot", "auto");
    // The host's address on a veth (left down: no link-local address to discover).
    rig.ns.ok(&[
        "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
    ]);
    rig.ns
        .ok(&["ip", "addr", "add", &format!("{HOST}/24"), "dev", "v0"]);
    rig.lead();
    rig.follow();
    let before = rig.live(&rig.ns).expect("table after the first apply");
    assert!(before.contains("10.1.0.12"), "{before}");
    let record = std::fs::read_to_string(rig.p("state/host-context.json")).unwrap();
    assert!(record.contains(HOST), "{record}");

    // "Reboot": a fresh namespace with no addresses at all, as before network-pre.target.
    let boot = Netns::new("boot2");
    let o = rig.reyes_in(&boot, &["restore"]);
    assert_eq!(code(&o), 0, "restore: {}", text(&o));
    assert!(
        stderr(&o).contains("recorded at the last apply"),
        "{}",
        text(&o)
    );
    assert_eq!(rig.live(&boot).as_deref(), Some(before.as_str()));

    // Without the record (state from an older reyes): still never refused at boot; the
    // table goes in for no known address rather than none.
    std::fs::remove_file(rig.p("state/host-context.json")).unwrap();
    let bare = Netns::new("boot3");
    let o = rig.reyes_in(&bare, &["restore"]);
    assert_eq!(code(&o), 0, "restore: {}", text(&o));
    assert!(stderr(&o).contains("no known address"), "{}", text(&o));
    let t = rig.live(&bare).expect("a table even without a record");
    assert!(t.contains("tcp dport 22"), "failsafe kept: {t}");
}

/// Make this process the reaper of orphaned descendants, so the detached revert process
/// (whose parent, the follower, has exited) can be waited for.
fn become_subreaper() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag; no pointers.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "prctl: {}", std::io::Error::last_os_error());
}

/// The pid the follower logged with "revert armed".
fn armed_pid(log: &str) -> libc::pid_t {
    let line = log
        .lines()
        .find(|l| l.contains("revert armed"))
        .unwrap_or_else(|| panic!("no 'revert armed' line in\n{log}"));
    let at = line.find("pid=").expect("pid= in the line") + 4;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

/// Wait (as its reaper) for the revert process to exit; its exit code.
fn wait_reverter(pid: libc::pid_t) -> i32 {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut status = 0;
        // SAFETY: waitpid on a pid that is (now) our child, with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        let _ = tx.send((r, status));
    });
    let (r, status) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the revert process did not exit within 60 s");
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    libc::WEXITSTATUS(status)
}

fn confirm_rig(tag: &str) -> (Rig, String) {
    become_subreaper();
    let rig = Rig::new(tag, &format!("[{HOST}]"));
    rig.lead();
    rig.follow();
    let a = rig.live(&rig.ns).unwrap();
    rig.change_policy();
    (rig, a)
}

#[test]
fn confirm_in_time_keeps_the_change() {
    if !netns_available() {
        return;
    }
    let (rig, a) = confirm_rig("confirm-ok");
    let o = rig.reyes_in(&rig.ns, &["follower", "--once", "--confirm", "60s"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let pid = armed_pid(&stderr(&o));
    let b = rig.live(&rig.ns).unwrap();
    assert_ne!(a, b);
    assert!(b.contains("udp dport 5353"), "{b}");
    let o = rig.reyes_in(&rig.ns, &["confirm"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("confirmed"));
    assert_eq!(wait_reverter(pid), 0);
    assert_eq!(rig.live(&rig.ns).as_deref(), Some(b.as_str()));
    let log = std::fs::read_to_string(rig.p("state/confirm/revert.log")).unwrap();
    assert!(log.contains("nothing to revert"), "{log}");
    // Nothing is pending any more.
    let o = rig.reyes_in(&rig.ns, &["confirm"]);
    assert_eq!(code(&o), 1, "{}", text(&o));
}

#[test]
fn unconfirmed_change_is_reverted() {
    if !netns_available() {
        return;
    }
    let (rig, a) = confirm_rig("confirm-no");
    let o = rig.reyes_in(&rig.ns, &["follower", "--once", "--confirm", "2s"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let pid = armed_pid(&stderr(&o));
    assert!(rig.live(&rig.ns).unwrap().contains("udp dport 5353"));
    assert_eq!(wait_reverter(pid), 0);
    assert_eq!(rig.live(&rig.ns).as_deref(), Some(a.as_str()));
    let o = rig.reyes_in(&rig.ns, &["confirm"]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(stderr(&o).contains("not confirmed in time"), "{}", text(&o));
    // The next plain run applies the newer document again (it is what the store holds).
    rig.follow();
    assert!(rig.live(&rig.ns).unwrap().contains("udp dport 5353"));
}

#[test]
fn revert_happens_when_the_applying_process_is_killed() {
    if !netns_available() {
        return;
    }
    let (rig, a) = confirm_rig("confirm-kill");
    let cfg = rig.cfg();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &rig.ns.name, reyes_bin(), "--config", &cfg])
        .args(["follower", "--once", "--confirm", "3s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut pid = None;
    for l in lines.by_ref() {
        let l = l.unwrap();
        seen.push_str(&l);
        seen.push('\n');
        if l.contains("revert armed") {
            pid = Some(armed_pid(&l));
        }
        // Killed as soon as the new table is in: the revert must not need this process.
        if l.contains("applied") && !l.contains("revert") {
            let _ = child.kill();
            break;
        }
    }
    let _ = child.wait();
    let pid = pid.unwrap_or_else(|| panic!("no 'revert armed' before the apply:\n{seen}"));
    assert_eq!(wait_reverter(pid), 0);
    assert_eq!(rig.live(&rig.ns).as_deref(), Some(a.as_str()));
}

#[test]
fn follower_metrics_file_after_an_apply_passes_promtool() {
    if !netns_available() {
        return;
    }
    let rig = Rig::new("metrics", &format!("[{HOST}]"));
    rig.lead();
    rig.follow();
    rig.follow();
    let m = std::fs::read_to_string(rig.p("follower.prom")).unwrap();
    eprintln!("{m}");
    for want in [
        "reyes_follower_info{backend=\"nft\",transport=\"",
        "reyes_follower_applied_serial ",
        "reyes_follower_fetches_total{result=\"",
        "reyes_accepted_packets_total ",
    ] {
        assert!(m.contains(want), "{want:?} missing:\n{m}");
    }
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(rig.p("follower.prom")).unwrap())
        .output()
    {
        Ok(o) => assert!(o.status.success(), "promtool: {}", text(&o)),
        Err(e) if std::env::var("CI").is_err() => {
            eprintln!("skipped: promtool not found ({e})")
        }
        Err(e) => panic!("promtool is needed under CI: {e}"),
    }
}

/// The ruleset generation inside `ns` (bumped by every committed nf_tables transaction).
fn generation(ns: &Netns) -> u32 {
    common::in_netns(&ns.name, || {
        let sock = reyes::nft::netlink::Socket::open().unwrap();
        reyes::nft::netlink::digest::generation(&sock).unwrap()
    })
}

/// The first named set of `table inet reyes` whose elements are IPv4 addresses.
fn an_ipv4_set(ns: &Netns) -> String {
    let t = ns.nft_list_table("inet", "reyes").expect("table");
    let mut name = None;
    for l in t.lines().map(str::trim) {
        if let Some(n) = l
            .strip_prefix("set ")
            .and_then(|r| r.split_whitespace().next())
        {
            name = Some(n.to_string());
        } else if l == "type ipv4_addr" {
            if let Some(n) = name.take() {
                return n;
            }
        }
    }
    panic!("no IPv4 set in\n{t}");
}

fn follow_logged(rig: &Rig, args: &[&str]) -> String {
    let mut a = vec!["follower", "--once"];
    a.extend_from_slice(args);
    let o = rig.reyes_in(&rig.ns, &a);
    assert_eq!(code(&o), 0, "follower: {}", text(&o));
    stderr(&o)
}

fn metric(rig: &Rig, name: &str) -> String {
    let m = std::fs::read_to_string(rig.p("follower.prom")).unwrap();
    m.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{name} missing:\n{m}"))
        .to_string()
}

#[test]
fn unchanged_runs_write_nothing_and_drift_is_repaired() {
    if !netns_available() {
        return;
    }
    let rig = Rig::new("drift", &format!("[{HOST}]"));
    rig.lead();
    rig.follow();
    let applied = rig.live(&rig.ns).expect("table");

    // Unchanged: the kernel is read, never written (the generation stays where it was).
    let gen = generation(&rig.ns);
    for _ in 0..2 {
        let log = follow_logged(&rig, &[]);
        assert!(log.contains("nothing to change"), "{log}");
    }
    assert_eq!(
        generation(&rig.ns),
        gen,
        "an unchanged run committed a transaction"
    );
    assert_eq!(
        metric(&rig, "reyes_follower_drift_repairs_total"),
        "reyes_follower_drift_repairs_total 0"
    );

    // An element added by someone else: found, logged, re-applied, counted.
    let set = an_ipv4_set(&rig.ns);
    rig.ns.ok(&[
        "nft",
        "add",
        "element",
        "inet",
        "reyes",
        &set,
        "{ 192.0.2.99 }",
    ]);
    assert_ne!(rig.live(&rig.ns).as_deref(), Some(applied.as_str()));
    let log = follow_logged(&rig, &[]);
    assert!(
        log.contains("drift") && log.contains("different from what was applied"),
        "{log}"
    );
    assert_eq!(rig.live(&rig.ns).as_deref(), Some(applied.as_str()));
    assert_eq!(
        metric(&rig, "reyes_follower_drift_repairs_total"),
        "reyes_follower_drift_repairs_total 1"
    );

    // A rule deleted by someone else.
    let listing = rig
        .ns
        .ok(&["nft", "-a", "list", "chain", "inet", "reyes", "input"]);
    let handle = listing
        .lines()
        .rev()
        .filter_map(|l| {
            l.rsplit_once("# handle ")
                .map(|(_, h)| h.trim().to_string())
        })
        .next()
        .expect("a rule with a handle");
    rig.ns.ok(&[
        "nft", "delete", "rule", "inet", "reyes", "input", "handle", &handle,
    ]);
    let log = follow_logged(&rig, &[]);
    assert!(log.contains("different from what was applied"), "{log}");
    assert_eq!(rig.live(&rig.ns).as_deref(), Some(applied.as_str()));

    // The table deleted.
    rig.ns.ok(&["nft", "delete", "table", "inet", "reyes"]);
    let log = follow_logged(&rig, &[]);
    assert!(log.contains("drift") && log.contains("missing"), "{log}");
    assert_eq!(rig.live(&rig.ns).as_deref(), Some(applied.as_str()));

    // And quiet again.
    let gen = generation(&rig.ns);
    follow_logged(&rig, &[]);
    assert_eq!(generation(&rig.ns), gen);
}

/// `iptables-save` and `ip6tables-save` lines of reyes' own, and reyes' ipsets.
fn iptables_reyes(ns: &Netns) -> Vec<String> {
    let mut out = Vec::new();
    for tool in ["iptables-save", "ip6tables-save"] {
        out.extend(
            ns.ok(&[tool])
                .lines()
                .filter(|l| l.contains("REYES"))
                .map(str::to_string),
        );
    }
    out.extend(
        ns.ok(&["ipset", "list", "-n"])
            .lines()
            .filter(|l| l.starts_with("reyes-"))
            .map(str::to_string),
    );
    out
}

fn iptables_available() -> bool {
    let ok = ["iptables-save", "ip6tables-save", "ipset"]
        .iter()
        .all(|t| {
            Command::new(t)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if !ok {
        common::skipped("iptables-save, ip6tables-save or ipset is not installed");
    }
    ok
}

fn status(rig: &Rig, ns: &Netns, args: &[&str]) -> (i32, String) {
    let mut a = vec!["status"];
    a.extend_from_slice(args);
    let o = rig.reyes_in(ns, &a);
    (code(&o), String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn a_fresh_state_directory_still_removes_the_other_backend() {
    if !netns_available() || !iptables_available() {
        return;
    }
    let rig = Rig::new("fresh", &format!("[{HOST}]"));
    rig.lead();
    follow_logged(&rig, &["--backend", "iptables"]);
    assert!(!iptables_reyes(&rig.ns).is_empty());
    // The state directory is lost (a reinstall, a wiped disk): nothing says iptables applied.
    std::fs::remove_dir_all(rig.p("state")).unwrap();
    let log = follow_logged(&rig, &[]);
    assert!(
        log.contains("removed the iptables backend's objects"),
        "{log}"
    );
    assert!(rig.live(&rig.ns).is_some());
    assert_eq!(iptables_reyes(&rig.ns), Vec::<String>::new());
    // And a first apply with nothing of the other backend's around removes nothing.
    std::fs::remove_dir_all(rig.p("state")).unwrap();
    let log = follow_logged(&rig, &[]);
    assert!(!log.contains("removed the"), "{log}");
}

#[test]
fn switching_backend_removes_the_other_and_flush_removes_both() {
    if !netns_available() || !iptables_available() {
        return;
    }
    let rig = Rig::new("switch", &format!("[{HOST}]"));
    rig.lead();
    rig.follow();
    assert!(rig.live(&rig.ns).is_some());
    assert!(iptables_reyes(&rig.ns).is_empty());

    // nft -> iptables (by flag): iptables live, then the nft table removed.
    let log = follow_logged(&rig, &["--backend", "iptables"]);
    assert!(log.contains("removed the nft backend's objects"), "{log}");
    assert!(rig.live(&rig.ns).is_none(), "nft table left behind");
    let ipt = iptables_reyes(&rig.ns);
    assert!(
        ipt.iter().any(|l| l.contains("-A INPUT -j REYES-INPUT")),
        "{ipt:?}"
    );
    let (c, s) = status(&rig, &rig.ns, &[]);
    assert_eq!(c, 0, "{s}");
    assert!(s.starts_with("backend: iptables\nlive: yes\n"), "{s}");

    // And back (the config says nft): nft live, the iptables chains and sets removed.
    let log = follow_logged(&rig, &[]);
    assert!(
        log.contains("removed the iptables backend's objects"),
        "{log}"
    );
    assert!(rig.live(&rig.ns).is_some());
    assert_eq!(iptables_reyes(&rig.ns), Vec::<String>::new());
    let (c, s) = status(&rig, &rig.ns, &[]);
    assert_eq!(c, 0, "{s}");
    assert!(s.starts_with("backend: nft"), "{s}");

    // Applied with iptables, flushed with the config saying nft: nothing of reyes' is left,
    // and flush says what it removed.
    follow_logged(&rig, &["--backend", "iptables"]);
    let o = rig.reyes_in(&rig.ns, &["flush"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!("flush: {said}");
    assert!(
        said.starts_with("removed: ")
            && said.contains("chains REYES-")
            && said.contains("ipsets reyes-"),
        "{said}"
    );
    assert_eq!(iptables_reyes(&rig.ns), Vec::<String>::new());
    assert!(rig.live(&rig.ns).is_none());
    let o = rig.reyes_in(&rig.ns, &["flush"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "removed: nothing (no reyes objects were live)\n"
    );
    let (c, s) = status(&rig, &rig.ns, &[]);
    assert_eq!(c, 1, "status must fail when nothing is live: {s}");
}

#[test]
fn iptables_rule_deleted_from_a_reyes_chain_is_repaired() {
    if !netns_available() || !iptables_available() {
        return;
    }
    let rig = Rig::new("iptdrift", &format!("[{HOST}]"));
    let cfg = std::fs::read_to_string(rig.p("reyes.yaml")).unwrap();
    write(
        &rig.p("reyes.yaml"),
        &cfg.replace("backend: nft", "backend: iptables"),
    );
    rig.lead();
    rig.follow();
    let applied = iptables_reyes(&rig.ns);
    let rule = applied
        .iter()
        .find(|l| l.starts_with("-A REYES-") && !l.starts_with("-A REYES-INPUT"))
        .expect("a rule in a REYES chain")
        .clone();
    let mut del = vec!["iptables", "-D"];
    del.extend(rule.trim_start_matches("-A ").split_whitespace());
    rig.ns.ok(&del);
    assert_ne!(iptables_reyes(&rig.ns), applied);
    let log = follow_logged(&rig, &[]);
    assert!(
        log.contains("backend=iptables") || log.contains("iptables"),
        "{log}"
    );
    assert!(log.contains("different from what was applied"), "{log}");
    assert_eq!(iptables_reyes(&rig.ns), applied);
    let log = follow_logged(&rig, &[]);
    assert!(log.contains("nothing to change"), "{log}");
}

#[test]
fn status_without_the_nft_binary_and_as_json() {
    if !netns_available() {
        return;
    }
    let rig = Rig::new("status", &format!("[{HOST}]"));
    let cfg = std::fs::read_to_string(rig.p("reyes.yaml")).unwrap();
    write(
        &rig.p("reyes.yaml"),
        &cfg.replace("backend: nft\n", "backend: nft\n  nft_transport: netlink\n"),
    );
    rig.lead();
    rig.follow();
    // No nft (nor anything else) in PATH.
    let no_nft = |args: &[&str]| {
        let cfg = rig.cfg();
        let mut argv = vec![
            "env",
            "PATH=/nonexistent",
            reyes_bin(),
            "--config",
            &cfg,
            "status",
        ];
        argv.extend_from_slice(args);
        let o = rig.ns.run(&argv, None);
        (code(&o), String::from_utf8_lossy(&o.stdout).into_owned(), o)
    };
    let (c, s, o) = no_nft(&[]);
    assert_eq!(c, 0, "{}", text(&o));
    assert!(
        s.starts_with("backend: nft (netlink)\nlive: yes\nserial: "),
        "{s}"
    );
    assert!(s.contains("accepted: 0 packets, 0 bytes\ndropped: "), "{s}");

    let (c, j, o) = no_nft(&["--format", "json"]);
    assert_eq!(c, 0, "{}", text(&o));
    let v: serde_json::Value = serde_json::from_str(&j).unwrap_or_else(|e| panic!("{e}: {j}"));
    let applied: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rig.p("state/applied.json")).unwrap()).unwrap();
    assert_eq!(v["backend"], "nft");
    assert_eq!(v["transport"], "netlink");
    assert_eq!(v["live"], true);
    assert_eq!(v["rules"], "as_applied");
    assert_eq!(v["applied"]["serial"], applied["serial"]);
    assert_eq!(v["applied"]["policy_digest"], applied["policy_digest"]);
    assert_eq!(v["counters"]["accepted"]["packets"], 0);
    assert!(v["counters"]["dropped"]["bytes"].is_u64(), "{j}");
    assert_eq!(v["other_backend_live"], serde_json::json!([]));

    // Altered by someone else: both formats say so.
    let set = an_ipv4_set(&rig.ns);
    rig.ns.ok(&[
        "nft",
        "add",
        "element",
        "inet",
        "reyes",
        &set,
        "{ 192.0.2.99 }",
    ]);
    let (_, s, _) = no_nft(&[]);
    assert!(s.contains("rules: DIFFERENT from what was applied"), "{s}");
    let (_, j, _) = no_nft(&["--format", "json"]);
    assert!(j.contains("\"rules\": \"different\""), "{j}");

    // Not live: exit 1, and the JSON says so.
    rig.ns.ok(&["nft", "delete", "table", "inet", "reyes"]);
    let (c, j, _) = no_nft(&["--format", "json"]);
    assert_eq!(c, 1);
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(v["live"], false);
    assert_eq!(v["counters"], serde_json::Value::Null);
}

/// Audit mode on a host whose address is in two groups (one profile chain): `reyes status`
/// names the groups behind each would-be-drop counter, in text and JSON, on both backends.
#[test]
fn status_names_the_groups_of_each_audit_counter() {
    if !netns_available() {
        return;
    }
    for backend in ["nft", "iptables"] {
        let rig = Rig::new("audit", &format!("[{HOST}]"));
        let cfg = std::fs::read_to_string(rig.p("reyes.yaml"))
            .unwrap()
            .replace(
                "  backend: nft\n",
                &format!("  backend: {backend}\n  action: audit\n"),
            );
        write(&rig.p("reyes.yaml"), &cfg);
        rig.lead();
        rig.follow();
        let o = rig.reyes_in(&rig.ns, &["status"]);
        assert_eq!(code(&o), 0, "{backend} status: {}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let line = out
            .lines()
            .find(|l| l.contains("audit_") || l.contains("AUDIT_"))
            .unwrap_or_else(|| panic!("{backend}: no audit counter in\n{out}"));
        assert!(
            line.contains("(sg-ops, sg-web): 0 packets"),
            "{backend}: {line}"
        );
        let o = rig.reyes_in(&rig.ns, &["status", "--format", "json"]);
        assert_eq!(code(&o), 0, "{backend} status json: {}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let audit = v["counters"]["audit"].as_array().unwrap();
        assert_eq!(audit.len(), 1, "{backend}: {v}");
        assert_eq!(audit[0]["groups"], serde_json::json!(["sg-ops", "sg-web"]));
    }
}
