//! moto_server (EC2 and S3) for the AWS tests: one server per test binary on a free port of
//! 127.0.0.1, reset before every test, tests one at a time, stopped when the test process
//! exits. moto_server is found through REYES_MOTO_SERVER, then the venv scripts/setup makes;
//! without it the tests are skipped (a failure under REYES_REQUIRE_MOTO=1). Buckets and
//! objects can be made with plain path-style HTTP requests (moto does not check signatures),
//! so a test needs no SDK. A follower in a network namespace reaches the server through
//! [`forward_into`].
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::common::{self, Netns};

/// Environment for every reyes process that talks to moto: static credentials, no instance
/// metadata, no profile files, few attempts.
pub const AWS_ENV: [(&str, &str); 7] = [
    ("AWS_MAX_ATTEMPTS", "2"),
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/dev/null"),
    ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
];

struct Moto {
    port: u16,
    _stdin: Mutex<ChildStdin>,
    _child: Mutex<Child>,
}

static MOTO: OnceLock<Option<Moto>> = OnceLock::new();
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("REYES_MOTO_SERVER") {
        if !p.is_empty() {
            return Some(PathBuf::from(p));
        }
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let p = cache.join("reyes/venv/bin/moto_server");
    p.exists().then_some(p)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.1 request to 127.0.0.1:port; returns the status.
pub fn http(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {head:?}")))
}

fn start(bin: &Path) -> Moto {
    let port = free_port();
    let log = std::env::temp_dir().join(format!("reyes-moto-{}.log", std::process::id()));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"exec 3<&0; "$0" -H 127.0.0.1 -p "$1" </dev/null >"$2" 2>&1 & pid=$!; read _ <&3; kill $pid; wait $pid; rm -f "$2""#)
        .arg(bin)
        .arg(port.to_string())
        .arg(&log)
        .stdin(Stdio::piped())
        .spawn()
        .expect("start moto_server");
    let stdin = child.stdin.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http(port, "POST", "/moto-api/reset", b"").ok() != Some(200) {
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            panic!(
                "moto_server ({}) did not come up on port {port}: {}",
                bin.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto {
        port,
        _stdin: Mutex::new(stdin),
        _child: Mutex::new(child),
    }
}

/// The shared moto_server, reset, and the lock that keeps other tests off it; `None` (after a
/// skip line) when moto_server is not installed and not required.
pub fn moto() -> Option<(u16, MutexGuard<'static, ()>)> {
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(m) = MOTO.get_or_init(|| binary().map(|b| start(&b))) else {
        if std::env::var("REYES_REQUIRE_MOTO").as_deref() == Ok("1") {
            panic!("moto_server not found (REYES_REQUIRE_MOTO=1): run scripts/setup, or set REYES_MOTO_SERVER");
        }
        common::skipped("moto_server not found (run scripts/setup, or set REYES_MOTO_SERVER)");
        return None;
    };
    assert_eq!(http(m.port, "POST", "/moto-api/reset", b"").unwrap(), 200);
    // For the stores a test process opens itself (default credential chain). Set under the
    // lock, once, before any of them reads the environment.
    static ENV: std::sync::Once = std::sync::Once::new();
    ENV.call_once(|| {
        for (k, v) in AWS_ENV {
            std::env::set_var(k, v);
        }
    });
    Some((m.port, guard))
}

/// Listens on 127.0.0.1:port inside a namespace and forwards each connection to the same port
/// on the host's loopback; stops accepting when dropped.
pub struct Forward {
    stop: Arc<AtomicBool>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16384];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Make moto's port on the host's loopback reachable on 127.0.0.1 inside `ns`.
pub fn forward_into(ns: &Netns, port: u16) -> Forward {
    let target = std::fs::File::open(format!("/var/run/netns/{}", ns.name)).unwrap();
    let listener = std::thread::spawn(move || {
        // SAFETY: setns on the calling thread with a valid namespace fd; the thread ends here.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        TcpListener::bind(("127.0.0.1", port)).unwrap()
    })
    .join()
    .unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((inside, _)) => {
                    inside.set_nonblocking(false).unwrap();
                    let Ok(outside) = TcpStream::connect(("127.0.0.1", port)) else {
                        continue;
                    };
                    let (i2, o2) = (inside.try_clone().unwrap(), outside.try_clone().unwrap());
                    std::thread::spawn(move || pipe(inside, outside));
                    std::thread::spawn(move || pipe(o2, i2));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    Forward { stop }
}
