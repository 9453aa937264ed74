//! A test bed of network namespaces for real traffic through an applied ruleset.
//!
//! `host` runs the ruleset and a [`Server`]: TCP listeners that accept and echo, UDP sockets
//! that echo, and raw sockets that record the probes of any other protocol (a raw socket gets
//! a copy of every packet of its protocol that the input hook let through). `peer` holds many
//! source addresses on the other end of one veth pair; probes bind one of them. Both families;
//! private and ULA addresses only, and nothing leaves the two namespaces.
//!
//! Probes run in threads that enter the peer namespace with `setns`; every wait is bounded by
//! a timeout, and results arrive through the sockets themselves or a condition variable.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reyes::eval::Flow;
use reyes::proto::Proto;

use crate::common::Netns;

/// TCP ports the host listens on.
pub const TCP_PORTS: [u16; 5] = [22, 80, 443, 5432, 8080];
/// UDP ports the host echoes on (500 and 4500 are IKE's, always accepted).
pub const UDP_PORTS: [u16; 6] = [53, 443, 500, 4500, 5432, 8080];
/// IPv4 protocols the host records raw.
pub const RAW4: [u8; 6] = [1, 47, 50, 51, 132, 253];
/// IPv6 protocols the host records raw (no extension-header numbers: their payload would be
/// parsed as headers).
pub const RAW6: [u8; 5] = [58, 47, 50, 132, 253];

const MAGIC: &[u8; 8] = b"reyesprb";

pub use crate::common::{enter_netns as enter, in_netns};

// ---- minimal socket calls (std has no bind-before-connect, raw or ping sockets) ----

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn domain(a: &IpAddr) -> libc::c_int {
    if a.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

fn socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned by the OwnedFd from here on.
    let fd = check(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: fd was just returned by socket() and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bind(fd: &OwnedFd, a: SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr(a);
    // SAFETY: ss holds a valid sockaddr of length len.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    })
    .map(|_| ())
}

fn set_int(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: v lives across the call; the length matches.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

fn send_to(fd: &OwnedFd, buf: &[u8], a: SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr(a);
    // SAFETY: buf and ss are valid for the call.
    check(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        ) as libc::c_int
    })
    .map(|_| ())
}

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of its length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Wait until `fd` has one of `events`, at most `timeout`.
fn poll_one(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut p = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe {
            libc::poll(
                &mut p,
                1,
                left.as_millis().min(i32::MAX as u128) as libc::c_int,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(n > 0);
    }
}

fn has_token(buf: &[u8], token: u64) -> bool {
    let mut want = MAGIC.to_vec();
    want.extend_from_slice(&token.to_be_bytes());
    buf.windows(want.len()).any(|w| w == want.as_slice())
}

fn find_tokens(buf: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 16 <= buf.len() {
        if &buf[i..i + 8] == MAGIC {
            out.push(u64::from_be_bytes(buf[i + 8..i + 16].try_into().unwrap()));
            i += 16;
        } else {
            i += 1;
        }
    }
    out
}

fn payload(token: u64) -> Vec<u8> {
    let mut v = token.to_be_bytes().to_vec(); // varies the first bytes (ports, ids) per probe
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&token.to_be_bytes());
    v
}

/// The internet checksum.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

static TOKEN: AtomicU64 = AtomicU64::new(1);
static PORT: AtomicU32 = AtomicU32::new(0);

fn next_token() -> u64 {
    (u64::from(std::process::id()) << 32) | TOKEN.fetch_add(1, Ordering::SeqCst)
}

/// A source port (or ICMP id) not used before by this process, so that no probe meets the
/// conntrack entry of an earlier one.
fn next_port() -> u16 {
    20000 + (PORT.fetch_add(1, Ordering::SeqCst) % 40000) as u16
}

// ---- the host side ----

/// What the host's raw sockets have seen.
#[derive(Default)]
struct Seen {
    tokens: Mutex<HashSet<u64>>,
    cv: Condvar,
}

impl Seen {
    fn wait(&self, token: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut set = self.tokens.lock().unwrap();
        loop {
            if set.remove(&token) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            set = self.cv.wait_timeout(set, left).unwrap().0;
        }
    }
}

/// Listeners in the host namespace, served by one thread until dropped.
pub struct Server {
    stop: UnixStream,
    thread: Option<JoinHandle<()>>,
    seen: Arc<Seen>,
}

enum Sock {
    Listener(TcpListener),
    Stream(TcpStream),
    Udp(UdpSocket),
    Raw(OwnedFd),
    Stop(UnixStream),
}

impl Sock {
    fn fd(&self) -> RawFd {
        match self {
            Sock::Listener(s) => s.as_raw_fd(),
            Sock::Stream(s) => s.as_raw_fd(),
            Sock::Udp(s) => s.as_raw_fd(),
            Sock::Raw(s) => s.as_raw_fd(),
            Sock::Stop(s) => s.as_raw_fd(),
        }
    }
}

impl Server {
    /// Start serving in namespace `ns` on `addrs` (UDP binds each address, so that replies
    /// come from the address the probe was sent to).
    pub fn start(ns: &str, addrs: &[IpAddr]) -> Server {
        let (stop, stop_rx) = UnixStream::pair().unwrap();
        let seen = Arc::new(Seen::default());
        let mut socks = in_netns(ns, || {
            let mut v = vec![Sock::Stop(stop_rx)];
            for p in TCP_PORTS {
                // Dual-stack: net.ipv6.bindv6only is 0 in a new namespace.
                let l =
                    TcpListener::bind(("::", p)).unwrap_or_else(|e| panic!("listen tcp {p}: {e}"));
                l.set_nonblocking(true).unwrap();
                v.push(Sock::Listener(l));
            }
            for a in addrs {
                for p in UDP_PORTS {
                    let u = UdpSocket::bind((*a, p))
                        .unwrap_or_else(|e| panic!("bind udp {a} {p}: {e}"));
                    u.set_nonblocking(true).unwrap();
                    v.push(Sock::Udp(u));
                }
            }
            for (d, protos) in [(libc::AF_INET, &RAW4[..]), (libc::AF_INET6, &RAW6[..])] {
                for p in protos {
                    let fd = socket(d, libc::SOCK_RAW | libc::SOCK_NONBLOCK, i32::from(*p))
                        .unwrap_or_else(|e| panic!("raw socket {p}: {e}"));
                    v.push(Sock::Raw(fd));
                }
            }
            v
        });
        let seen2 = seen.clone();
        let thread = std::thread::spawn(move || serve(&mut socks, &seen2));
        Server {
            stop,
            thread: Some(thread),
            seen,
        }
    }
}

fn serve(socks: &mut Vec<Sock>, seen: &Seen) {
    let mut buf = vec![0u8; 65536];
    loop {
        let mut fds: Vec<libc::pollfd> = socks
            .iter()
            .map(|s| libc::pollfd {
                fd: s.fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: fds is a valid array of pollfd of that length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            assert_eq!(
                io::Error::last_os_error().kind(),
                io::ErrorKind::Interrupted
            );
            continue;
        }
        let mut new = Vec::new();
        let mut closed = Vec::new();
        for (i, p) in fds.iter().enumerate() {
            if p.revents == 0 {
                continue;
            }
            match &mut socks[i] {
                Sock::Stop(_) => return,
                Sock::Listener(l) => {
                    while let Ok((s, _)) = l.accept() {
                        s.set_nonblocking(true).unwrap();
                        new.push(Sock::Stream(s));
                    }
                }
                Sock::Stream(s) => match s.read(&mut buf) {
                    Ok(0) | Err(_) => closed.push(i),
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            closed.push(i);
                        }
                    }
                },
                Sock::Udp(u) => {
                    while let Ok((n, from)) = u.recv_from(&mut buf) {
                        let _ = u.send_to(&buf[..n], from);
                    }
                }
                Sock::Raw(fd) => {
                    let mut got = Vec::new();
                    while let Ok(n) = recv(fd.as_raw_fd(), &mut buf) {
                        got.extend(find_tokens(&buf[..n]));
                    }
                    if !got.is_empty() {
                        seen.tokens.lock().unwrap().extend(got);
                        seen.cv.notify_all();
                    }
                }
            }
        }
        for i in closed.into_iter().rev() {
            socks.swap_remove(i);
        }
        socks.extend(new);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.write_all(b"x");
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---- probes from the peer side ----

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connect to this port.
    Tcp(u16),
    /// A UDP datagram to this port, expecting the echo.
    Udp(u16),
    /// An ICMP (IPv4) or ICMPv6 echo request, expecting the reply.
    Echo,
    /// An ICMP or ICMPv6 message of this type and code, seen (or not) by the host's raw socket.
    Icmp(u8, u8),
    /// A packet of this IP protocol, seen (or not) by the host's raw socket.
    Proto(u8),
}

/// What came of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Connected, replied, or received by the host: it went through.
    Through(&'static str),
    /// Nothing within the timeout.
    TimedOut,
}

impl Outcome {
    /// Whether it went through.
    pub fn through(self) -> bool {
        matches!(self, Outcome::Through(_))
    }
}

/// A probe from a source to a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeFlow {
    /// Source (a peer address).
    pub src: IpAddr,
    /// Destination (a host address).
    pub dst: IpAddr,
    /// What to send.
    pub probe: Probe,
}

impl ProbeFlow {
    /// The flow the evaluator judges: a new connection, not over IPsec.
    pub fn flow(&self) -> Flow {
        let v4 = self.src.is_ipv4();
        let icmp = if v4 { Proto::Icmp } else { Proto::Icmpv6 };
        match self.probe {
            Probe::Tcp(p) => Flow::new(self.src, self.dst, Proto::Tcp).port(p),
            Probe::Udp(p) => Flow::new(self.src, self.dst, Proto::Udp).port(p),
            Probe::Echo => {
                Flow::new(self.src, self.dst, icmp).icmp(if v4 { 8 } else { 128 }, Some(0))
            }
            Probe::Icmp(t, c) => Flow::new(self.src, self.dst, icmp).icmp(t, Some(c)),
            Probe::Proto(n) => Flow::new(self.src, self.dst, Proto::from_number(n)),
        }
    }
}

impl std::fmt::Display for ProbeFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {} {:?}", self.src, self.dst, self.probe)
    }
}

/// Open a TCP connection from `src` (a fresh port) to `dst`; `None` if nothing answered in
/// time. Call from a thread inside the peer namespace.
pub fn tcp_connect(
    src: IpAddr,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<Option<TcpStream>> {
    let fd = socket(domain(&src), libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0)?;
    set_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind(&fd, SocketAddr::new(src, next_port()))?;
    let (ss, len) = sockaddr(dst);
    // SAFETY: ss holds a valid sockaddr of length len.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    if !poll_one(fd.as_raw_fd(), libc::POLLOUT, timeout)? {
        return Ok(None);
    }
    let s = TcpStream::from(fd);
    if let Some(e) = s.take_error()? {
        return Err(e);
    }
    s.set_nonblocking(false)?;
    Ok(Some(s))
}

/// A TCP connection from `src` to `dst` opened in namespace `ns`, which answers an echo:
/// panics (naming the flow) when it does not connect or does not echo within `timeout`.
pub fn open_echoing(ns: &str, src: IpAddr, dst: SocketAddr, timeout: Duration) -> TcpStream {
    let mut s = in_netns(ns, || {
        tcp_connect(src, dst, timeout)
            .unwrap_or_else(|e| panic!("{src} -> {dst}: {e}"))
            .unwrap_or_else(|| panic!("{src} -> {dst} did not connect"))
    });
    assert!(echo(&mut s, b"hello", timeout), "{src} -> {dst}: no echo");
    s
}

/// Send `data` on an open connection and wait for its echo, at most `timeout`.
pub fn echo(s: &mut TcpStream, data: &[u8], timeout: Duration) -> bool {
    s.set_read_timeout(Some(timeout)).unwrap();
    if s.write_all(data).is_err() {
        return false;
    }
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got).is_ok() && got == data
}

/// Run one probe. Call from a thread inside the peer namespace.
pub fn probe(p: &ProbeFlow, seen: &Server, timeout: Duration) -> io::Result<Outcome> {
    let token = next_token();
    let d = domain(&p.src);
    let v4 = p.src.is_ipv4();
    match p.probe {
        Probe::Tcp(port) => Ok(
            match tcp_connect(p.src, SocketAddr::new(p.dst, port), timeout) {
                Ok(Some(_)) => Outcome::Through("connected"),
                Ok(None) => Outcome::TimedOut,
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    Outcome::Through("refused")
                }
                Err(e) => return Err(e),
            },
        ),
        Probe::Udp(port) => {
            let fd = socket(d, libc::SOCK_DGRAM, 0)?;
            bind(&fd, SocketAddr::new(p.src, next_port()))?;
            send_to(&fd, &payload(token), SocketAddr::new(p.dst, port))?;
            wait_reply(&fd, token, timeout, |_| true, "replied")
        }
        Probe::Echo => {
            let proto = if v4 {
                libc::IPPROTO_ICMP
            } else {
                libc::IPPROTO_ICMPV6
            };
            let fd = socket(d, libc::SOCK_DGRAM, proto)?;
            // A ping socket's port is its ICMP id.
            bind(&fd, SocketAddr::new(p.src, next_port()))?;
            let mut msg = vec![if v4 { 8 } else { 128 }, 0, 0, 0, 0, 0, 0, 1];
            msg.extend_from_slice(&payload(token));
            send_to(&fd, &msg, SocketAddr::new(p.dst, 0))?;
            let reply = if v4 { 0 } else { 129 };
            wait_reply(
                &fd,
                token,
                timeout,
                |b| b.first() == Some(&reply),
                "replied",
            )
        }
        Probe::Icmp(t, c) => {
            let proto = if v4 {
                libc::IPPROTO_ICMP
            } else {
                libc::IPPROTO_ICMPV6
            };
            let fd = socket(d, libc::SOCK_RAW, proto)?;
            bind(&fd, SocketAddr::new(p.src, 0))?;
            let id = (token as u16).to_be_bytes();
            let mut msg = vec![t, c, 0, 0, id[0], id[1], 0, 1];
            msg.extend_from_slice(&payload(token));
            if v4 {
                let sum = checksum(&msg).to_be_bytes();
                msg[2..4].copy_from_slice(&sum);
            } // the kernel fills in ICMPv6 checksums
            send_to(&fd, &msg, SocketAddr::new(p.dst, 0))?;
            Ok(if seen.seen.wait(token, timeout) {
                Outcome::Through("delivered")
            } else {
                Outcome::TimedOut
            })
        }
        Probe::Proto(n) => {
            let fd = socket(d, libc::SOCK_RAW, i32::from(n))?;
            bind(&fd, SocketAddr::new(p.src, 0))?;
            send_to(&fd, &payload(token), SocketAddr::new(p.dst, 0))?;
            Ok(if seen.seen.wait(token, timeout) {
                Outcome::Through("delivered")
            } else {
                Outcome::TimedOut
            })
        }
    }
}

fn wait_reply(
    fd: &OwnedFd,
    token: u64,
    timeout: Duration,
    ok: impl Fn(&[u8]) -> bool,
    what: &'static str,
) -> io::Result<Outcome> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !poll_one(fd.as_raw_fd(), libc::POLLIN, left)? {
            return Ok(Outcome::TimedOut);
        }
        match recv(fd.as_raw_fd(), &mut buf) {
            Ok(n) if has_token(&buf[..n], token) && ok(&buf[..n]) => {
                return Ok(Outcome::Through(what))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // An ICMP error for an earlier datagram: not ours to judge.
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
            Err(e) => return Err(e),
        }
    }
}

// ---- the bed ----

/// Two namespaces joined by a veth pair, addresses on each side, routes between them, and
/// the host's server running. Namespaces are deleted on drop.
pub struct Testbed {
    /// Serves in `host`.
    pub server: Server,
    /// Runs the ruleset.
    pub host: Netns,
    /// Sends the probes.
    pub peer: Netns,
    /// The host's addresses.
    pub host_addrs: Vec<IpAddr>,
    /// The peer's addresses.
    pub peer_addrs: Vec<IpAddr>,
}

fn sysctl(ns: &Netns, settings: &[(&str, &str)]) {
    for (k, v) in settings {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        ns.ok(&["sh", "-c", &format!("echo '{v}' > {path}")]);
    }
}

fn batch(ns: &Netns, script: &str) {
    let o = ns.run(&["ip", "-batch", "-"], Some(script));
    assert!(
        o.status.success(),
        "ip -batch in {}: {}\n{script}",
        ns.name,
        String::from_utf8_lossy(&o.stderr)
    );
}

fn prefix(a: &IpAddr) -> String {
    if a.is_ipv4() {
        format!("{a}/32")
    } else {
        format!("{a}/128")
    }
}

impl Testbed {
    /// Build the bed. Addresses are parsed; each side routes the other's addresses over the
    /// veth pair.
    pub fn new(host_addrs: &[&str], peer_addrs: &[&str]) -> Testbed {
        let parse = |v: &[&str]| {
            v.iter()
                .map(|a| a.parse::<IpAddr>().unwrap())
                .collect::<Vec<_>>()
        };
        let (host_addrs, peer_addrs) = (parse(host_addrs), parse(peer_addrs));
        let host = Netns::new("host");
        let peer = Netns::new("peer");
        for ns in [&host, &peer] {
            // No duplicate address detection: addresses are usable at once.
            sysctl(
                ns,
                &[
                    ("net.ipv6.conf.all.accept_dad", "0"),
                    ("net.ipv6.conf.default.accept_dad", "0"),
                ],
            );
        }
        // Ping sockets for root in the peer.
        sysctl(&peer, &[("net.ipv4.ping_group_range", "0 2147483647")]);
        host.ok(&[
            "ip", "link", "add", "rh", "type", "veth", "peer", "name", "rp", "netns", &peer.name,
        ]);
        let side = |ns: &Netns, dev: &str, own: &[IpAddr], other: &[IpAddr]| {
            let mut s = format!("link set {dev} up\n");
            for a in own {
                s.push_str(&format!(
                    "addr add {} dev {dev}{}\n",
                    prefix(a),
                    if a.is_ipv6() { " nodad" } else { "" }
                ));
            }
            for a in other {
                s.push_str(&format!("route add {} dev {dev}\n", prefix(a)));
            }
            batch(ns, &s);
        };
        side(&host, "rh", &host_addrs, &peer_addrs);
        side(&peer, "rp", &peer_addrs, &host_addrs);
        let server = Server::start(&host.name, &host_addrs);
        let bed = Testbed {
            server,
            host,
            peer,
            host_addrs,
            peer_addrs,
        };
        bed.wait_ready();
        bed
    }

    /// Wait (bounded) until every peer address reaches every host address of its family with
    /// no ruleset loaded: neighbours resolved, links up.
    fn wait_ready(&self) {
        let flows: Vec<ProbeFlow> = self
            .peer_addrs
            .iter()
            .flat_map(|s| {
                self.host_addrs
                    .iter()
                    .filter(|d| d.is_ipv4() == s.is_ipv4())
                    .map(|d| ProbeFlow {
                        src: *s,
                        dst: *d,
                        probe: Probe::Udp(53),
                    })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut pending = flows;
        while !pending.is_empty() {
            assert!(
                Instant::now() < deadline,
                "test bed not ready: {:?}",
                pending.iter().map(|p| p.to_string()).collect::<Vec<_>>()
            );
            let out = self.probe_all(&pending, Duration::from_millis(500));
            pending = pending
                .into_iter()
                .zip(out)
                .filter(|(_, o)| !o.through())
                .map(|(p, _)| p)
                .collect();
        }
    }

    /// Load an nft script into the host.
    pub fn apply(&self, script: &str) {
        self.host.nft_apply(script);
    }

    /// Remove reyes' table from the host.
    pub fn flush(&self) {
        self.host
            .nft_apply("add table inet reyes\ndelete table inet reyes\n");
    }

    /// Run probes concurrently, one thread each inside the peer namespace.
    pub fn probe_all(&self, flows: &[ProbeFlow], timeout: Duration) -> Vec<Outcome> {
        std::thread::scope(|s| {
            let handles: Vec<_> = flows
                .iter()
                .map(|f| {
                    s.spawn(move || {
                        enter(&self.peer.name);
                        probe(f, &self.server, timeout).unwrap_or_else(|e| panic!("probe {f}: {e}"))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("probe thread"))
                .collect()
        })
    }
}
