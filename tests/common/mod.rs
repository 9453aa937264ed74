//! Shared helpers for integration tests: network namespaces the tests create and delete, and
//! running the reyes binary.
#![allow(dead_code)]

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The reyes binary under test.
pub fn reyes_bin() -> &'static str {
    env!("CARGO_BIN_EXE_reyes")
}

/// Report a test that cannot run here as skipped, on a line the test runner shows: written to
/// the process's standard error directly, which the runner does not capture (`eprintln!` in
/// a passing test would be swallowed).
pub fn skipped(reason: &str) {
    use std::io::Write;
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {reason}");
}

/// Kernel tests need root (to create namespaces). Without it they are skipped with a message,
/// unless REYES_REQUIRE_NETNS=1 (set by CI), where skipping is a failure.
pub fn netns_available() -> bool {
    let root = unsafe_geteuid() == 0;
    let have_ip = Command::new("ip")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let ok = root && have_ip;
    if !ok {
        if std::env::var("REYES_REQUIRE_NETNS").as_deref() == Ok("1") {
            panic!("network namespace tests need root and iproute2 (REYES_REQUIRE_NETNS=1)");
        }
        skipped("network namespace tests need root and iproute2");
    }
    ok
}

fn unsafe_geteuid() -> u32 {
    // Read it from /proc to avoid an unsafe libc call in tests.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(u32::MAX)
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace, deleted on drop.
pub struct Netns {
    /// Its name (for `ip netns exec`).
    pub name: String,
}

impl Netns {
    /// Create a fresh namespace with loopback up.
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("reyes-t-{tag}-{}-{n}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns { name };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Run a command inside, with optional stdin.
    pub fn run(&self, argv: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ip netns exec");
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            let _ = pipe.write_all(text.as_bytes());
        }
        child.wait_with_output().expect("wait")
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, argv: &[&str]) -> String {
        let o = self.run(argv, None);
        assert!(
            o.status.success(),
            "{argv:?} in {} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `nft -f -` with this script; panics on failure.
    pub fn nft_apply(&self, script: &str) {
        let o = self.run(&["nft", "-f", "-"], Some(script));
        assert!(
            o.status.success(),
            "nft -f failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// `nft -s -p list table FAMILY NAME`, or None if absent.
    pub fn nft_list_table(&self, family: &str, table: &str) -> Option<String> {
        let o = self.run(&["nft", "-s", "-p", "list", "table", family, table], None);
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// `nft list ruleset` (with counters), for byte-for-byte comparisons.
    pub fn nft_ruleset(&self) -> String {
        self.ok(&["nft", "list", "ruleset"])
    }

    /// Run the reyes binary inside; returns the output.
    pub fn reyes(&self, args: &[&str]) -> Output {
        let mut argv = vec![reyes_bin()];
        argv.extend_from_slice(args);
        self.run(&argv, None)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Collapse whitespace (nft wraps long element lists).
pub fn normalise(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The `table ... {` block of a rendered script.
pub fn table_block(script: &str) -> &str {
    match script.find("table inet reyes {") {
        Some(i) => &script[i..],
        None => script,
    }
}

/// Output as text, for messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

impl Netns {
    /// Run `f` on a thread that has entered this namespace (setns is per thread), so library
    /// code opens its sockets, and spawns its commands, in here.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.name, f)
    }
}

/// Move the calling thread into network namespace `name` (only this thread).
pub fn enter_netns(name: &str) {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{name}");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

/// Run `f` on a thread that has entered network namespace `name`. Sockets it creates belong
/// to that namespace and can be used from any thread afterwards. A panic in `f` is the
/// caller's panic.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(name);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// A built example binary (`cargo test` builds examples next to the test binaries).
pub fn example_bin(name: &str) -> std::path::PathBuf {
    let exe = std::path::Path::new(reyes_bin());
    exe.parent().unwrap().join("examples").join(name)
}

/// Run the reyes binary with `args` (outside any namespace). REYES_CONFIG is removed, so a
/// command without `--config` never reads a config the caller's environment points at.
pub fn reyes(args: &[&str]) -> Output {
    Command::new(reyes_bin())
        .args(args)
        .env_remove("REYES_CONFIG")
        .output()
        .expect("run reyes")
}

/// The exit code (-1 when killed by a signal).
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Document builders: build options with nothing excluded, and documents built from a
/// static inventory given as YAML text.
pub mod docs {
    use std::time::{Duration, SystemTime};

    use reyes::document::{build, BuildOptions, Built, Document};
    use reyes::inventory::static_file;

    /// A fixed issue time (2027-01-15), for byte-stable documents.
    pub fn fixed_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    /// Options for `environment` and `serial`, issued at `issued_at`, valid for an hour,
    /// nothing excluded, no dynamic subnets.
    pub fn options(environment: &str, serial: u64, issued_at: SystemTime) -> BuildOptions {
        BuildOptions {
            environment: environment.into(),
            serial,
            issued_at,
            validity: Duration::from_secs(3600),
            excluded_group_names: vec![],
            excluded_group_ids: vec![],
            dynamic_subnets: vec![],
        }
    }

    /// Build the static inventory `yaml` with `opts`.
    pub fn built(yaml: &str, opts: &BuildOptions) -> Built {
        let inv = static_file::parse(yaml, "inventory").expect("test inventory");
        build(&inv, opts).expect("build the test document")
    }

    /// The document of [`built`].
    pub fn document(yaml: &str, opts: &BuildOptions) -> Document {
        built(yaml, opts).document
    }

    /// examples/inventory.yaml as text.
    pub fn example_inventory() -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/inventory.yaml");
        std::fs::read_to_string(&p).expect("read examples/inventory.yaml")
    }
}

/// examples/inventory.yaml with four more load balancers (sg-lb), apart from each other: five
/// intervals, more than the default layout inlines ([`reyes::compile::INLINE_MAX`]), so that
/// sg-lb, a source group, gets a named set (`m4_sg_lb`, ipset `reyes-m4_sg_lb`). For tests
/// about sets, drift in their elements, and their removal.
#[allow(dead_code)]
pub fn example_inventory_with_sets() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/inventory.yaml");
    let mut text = std::fs::read_to_string(path).expect("examples/inventory.yaml");
    for i in 2..=5 {
        text.push_str(&format!(
            "  - {{id: eni-lb{i}, addresses: [10.1.{i}.5], groups: [sg-lb]}}\n"
        ));
    }
    text
}
