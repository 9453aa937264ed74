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
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        std::fs::copy(
            examples.join("inventory.yaml"),
            dir.path().join("inventory.yaml"),
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
