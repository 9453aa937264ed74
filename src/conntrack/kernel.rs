//! The conntrack table over ctnetlink (`NFNL_SUBSYS_CTNETLINK` on a NETLINK_NETFILTER socket):
//! one dump of both families (`IPCTNL_MSG_CT_GET` with `NLM_F_DUMP`), and deletes
//! (`IPCTNL_MSG_CT_DELETE` naming the original tuple, zone and id), many per `sendmsg`, each
//! acknowledged. The attribute walk and message layout are the nf_tables transport's
//! ([`crate::nft::netlink::wire`]); the parsing here is pure and tested on bytes.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket as NlSocket, SocketAddr};

use super::{Conntrack, ConntrackError, Deleted, Entry};
use crate::nft::netlink::socket::attrs;
use crate::nft::netlink::sys::{
    NFPROTO_IPV4, NFPROTO_IPV6, NFPROTO_UNSPEC, NLA_F_NESTED, NLMSG_DONE, NLMSG_ERROR,
    NLMSG_HDRLEN, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST,
};
use crate::nft::netlink::wire::{align, emit_header, Attr, Emit};

// linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h
/// NFNL_SUBSYS_CTNETLINK.
pub const NFNL_SUBSYS_CTNETLINK: u16 = 1;
/// IPCTNL_MSG_CT_NEW (what a dump answers with).
pub const IPCTNL_MSG_CT_NEW: u16 = 0;
/// IPCTNL_MSG_CT_GET.
pub const IPCTNL_MSG_CT_GET: u16 = 1;
/// IPCTNL_MSG_CT_DELETE.
pub const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TIMEOUT: u16 = 7;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_LABELS: u16 = 22;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;

const NLM_F_EXCL: u16 = 0x200;
/// Requests sent per `sendmsg`: their ACKs must all fit the receive buffer at once.
const DELETES_PER_SEND: usize = 512;
/// Receive buffer asked for (the ACKs of one send, or dump datagrams).
const RCVBUF: usize = 8 << 20;

/// One tuple direction: addresses, protocol, ports or ICMP type and code.
#[derive(Debug, Default)]
struct Tuple {
    src: Option<IpAddr>,
    proto: Option<u8>,
    sport: Option<u16>,
    dport: Option<u16>,
    icmp_type: Option<u8>,
    icmp_code: Option<u8>,
}

fn ip_of(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?))),
        _ => None,
    }
}

fn be16(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(..2)?.try_into().ok()?))
}

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

fn parse_tuple(b: &[u8]) -> Tuple {
    let mut t = Tuple::default();
    for (ty, p) in attrs(b) {
        match ty {
            CTA_TUPLE_IP => {
                for (k, v) in attrs(p) {
                    if k == CTA_IP_V4_SRC || k == CTA_IP_V6_SRC {
                        t.src = ip_of(v);
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, v) in attrs(p) {
                    match k {
                        CTA_PROTO_NUM => t.proto = v.first().copied(),
                        CTA_PROTO_SRC_PORT => t.sport = be16(v),
                        CTA_PROTO_DST_PORT => t.dport = be16(v),
                        CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => {
                            t.icmp_type = v.first().copied()
                        }
                        CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => {
                            t.icmp_code = v.first().copied()
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    t
}

/// One `IPCTNL_MSG_CT_NEW` message's attributes (after the `nfgenmsg`) as an [`Entry`];
/// `None` when a tuple is incomplete.
pub fn parse_entry(body: &[u8]) -> Option<Entry> {
    let mut orig = None;
    let mut reply = None;
    let mut raw = None;
    let mut id = None;
    let mut zone = None;
    let mut labels = None;
    for (ty, p) in attrs(body) {
        match ty {
            CTA_TUPLE_ORIG => {
                orig = Some(parse_tuple(p));
                raw = Some(p.to_vec());
            }
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(p)),
            CTA_ID => id = be32(p),
            CTA_ZONE => zone = be16(p).filter(|z| *z != 0),
            CTA_LABELS => labels = p.get(..16).and_then(|l| <[u8; 16]>::try_from(l).ok()),
            _ => {}
        }
    }
    let (orig, reply) = (orig?, reply?);
    let proto = orig.proto?;
    let icmp = match (orig.icmp_type, orig.icmp_code) {
        (Some(t), Some(c)) => Some((t, c)),
        _ => None,
    };
    Some(Entry {
        src: orig.src?,
        dst: reply.src?,
        proto,
        port: reply.sport,
        icmp,
        labels,
        id,
        tuple: raw?,
        zone,
    })
}

/// The `IPCTNL_MSG_CT_DELETE` request for `e`, with sequence number `seq`.
pub fn delete_message(e: &Entry, seq: u32) -> Vec<u8> {
    let family = match e.family() {
        crate::net::Family::V4 => NFPROTO_IPV4,
        crate::net::Family::V6 => NFPROTO_IPV6,
    };
    let mut attrs = vec![Attr::bytes(
        CTA_TUPLE_ORIG | NLA_F_NESTED,
        e.tuple.as_slice(),
    )];
    if let Some(z) = e.zone {
        attrs.push(Attr::bytes(CTA_ZONE, z.to_be_bytes().to_vec()));
    }
    if let Some(id) = e.id {
        attrs.push(Attr::U32(CTA_ID, id));
    }
    message(
        IPCTNL_MSG_CT_DELETE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        family,
        &attrs,
    )
}

fn message(kind: u16, flags: u16, seq: u32, family: u8, attrs: &[Attr<'_>]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + 4 + attrs.buffer_len();
    let mut buf = vec![0u8; len];
    emit_header(
        &mut buf,
        len,
        (NFNL_SUBSYS_CTNETLINK << 8) | kind,
        flags,
        seq,
        family,
        0,
    );
    attrs.emit(&mut buf[NLMSG_HDRLEN + 4..]);
    buf
}

/// One netlink message of a datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer<'a> {
    /// A conntrack entry (or another data message), its body after the netlink header.
    Data {
        /// nlmsg_type.
        ty: u16,
        /// Sequence number.
        seq: u32,
        /// Body, `nfgenmsg` included.
        body: &'a [u8],
    },
    /// End of a dump.
    Done {
        /// Sequence number.
        seq: u32,
    },
    /// An ACK (errno 0) or error of the request with this sequence number.
    Status {
        /// The request's sequence number.
        seq: u32,
        /// errno (positive), 0 for an ACK.
        errno: i32,
    },
}

/// Split a datagram into messages; a truncated or inconsistent one is an error.
pub fn answers(mut d: &[u8]) -> Result<Vec<Answer<'_>>, ConntrackError> {
    let bad = |w: String| ConntrackError::Malformed(w);
    let mut out = Vec::new();
    while d.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(d[0..4].try_into().map_err(|_| bad("header".into()))?);
        let len = len as usize;
        let ty = u16::from_ne_bytes([d[4], d[5]]);
        let seq = u32::from_ne_bytes(d[8..12].try_into().map_err(|_| bad("header".into()))?);
        if len < NLMSG_HDRLEN || len > d.len() {
            return Err(bad(format!("length {len} of a {}-byte datagram", d.len())));
        }
        let body = &d[NLMSG_HDRLEN..len];
        match ty {
            NLMSG_DONE => out.push(Answer::Done { seq }),
            NLMSG_ERROR => {
                let errno = body
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(i32::from_ne_bytes)
                    .ok_or_else(|| bad("short error message".into()))?;
                let orig_seq = body
                    .get(12..16)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_ne_bytes)
                    .ok_or_else(|| bad("short error message".into()))?;
                out.push(Answer::Status {
                    seq: orig_seq,
                    errno: errno.checked_neg().unwrap_or(errno),
                });
            }
            _ => out.push(Answer::Data { ty, seq, body }),
        }
        d = d.get(align(len)..).unwrap_or(&[]);
    }
    Ok(out)
}

/// The kernel's conntrack table, in the current network namespace.
pub struct Kernel {
    sock: NlSocket,
    seq: u32,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("fd", &self.sock.as_raw_fd())
            .finish()
    }
}

impl Kernel {
    /// Open a socket.
    pub fn open() -> Result<Kernel, ConntrackError> {
        let mut sock = NlSocket::new(NETLINK_NETFILTER).map_err(ConntrackError::Open)?;
        sock.bind_auto().map_err(ConntrackError::Open)?;
        let _ = sock.set_cap_ack(true);
        let fd = sock.as_raw_fd();
        let tv = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        let v: libc::c_int = RCVBUF as libc::c_int;
        // SAFETY: `tv` and `v` live across the calls and their exact sizes are passed; the
        // kernel only reads them. Failures leave the defaults (smaller sends still work).
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            if libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) != 0
            {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        Ok(Kernel { sock, seq: 1 })
    }

    fn send(&self, bytes: &[u8], what: &'static str) -> Result<(), ConntrackError> {
        let n = self
            .sock
            .send_to(bytes, &SocketAddr::new(0, 0), 0)
            .map_err(|source| ConntrackError::Send { what, source })?;
        if n != bytes.len() {
            return Err(ConntrackError::Send {
                what,
                source: io::Error::new(io::ErrorKind::WriteZero, format!("sent {n} bytes")),
            });
        }
        Ok(())
    }

    /// Read one datagram (blocking, with the socket's timeout) into `buf`.
    fn recv<'b>(
        &self,
        buf: &'b mut Vec<u8>,
        what: &'static str,
    ) -> Result<&'b [u8], ConntrackError> {
        loop {
            buf.clear();
            match self.sock.recv(buf, 0) {
                Ok(n) => return Ok(&buf[..n.min(buf.len())]),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(source) => return Err(ConntrackError::Recv { what, source }),
            }
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }
}

impl Conntrack for Kernel {
    fn walk(&mut self, each: &mut dyn FnMut(Entry)) -> Result<(), ConntrackError> {
        let seq = self.next_seq();
        let req = message(
            IPCTNL_MSG_CT_GET,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            NFPROTO_UNSPEC,
            &[],
        );
        self.send(&req, "dump")?;
        let mut buf = Vec::with_capacity(256 * 1024);
        loop {
            let d = self.recv(&mut buf, "dump")?;
            for a in answers(d)? {
                match a {
                    Answer::Done { seq: s } if s == seq => return Ok(()),
                    Answer::Status { seq: s, errno } if s == seq && errno != 0 => {
                        return Err(ConntrackError::Refused {
                            what: "dump",
                            errno,
                        })
                    }
                    Answer::Data { ty, seq: s, body }
                        if s == seq && ty == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW =>
                    {
                        if let Some(e) = body.get(4..).and_then(parse_entry) {
                            each(e);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn delete(&mut self, entries: &[Entry]) -> Result<Deleted, ConntrackError> {
        let (deleted, gone) = self.acked("delete", entries, delete_message)?;
        Ok(Deleted { deleted, gone })
    }
}

/// A connection to create (for tests and benchmarks: a tracked connection without packets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewConnection {
    /// Who opens it.
    pub src: std::net::SocketAddr,
    /// To whom.
    pub dst: std::net::SocketAddr,
    /// tcp or udp.
    pub proto: u8,
    /// A label bit to set.
    pub label: Option<u8>,
    /// Seconds until it expires.
    pub timeout: u32,
}

fn tuple_attr(
    kind: u16,
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
    proto: u8,
) -> Attr<'static> {
    let (s, d, k) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (s.octets().to_vec(), d.octets().to_vec(), 1),
        (s, d) => (ip6(s).to_vec(), ip6(d).to_vec(), 3),
    };
    Attr::Nested(
        kind,
        vec![
            Attr::Nested(CTA_TUPLE_IP, vec![Attr::bytes(k, s), Attr::bytes(k + 1, d)]),
            Attr::Nested(
                CTA_TUPLE_PROTO,
                vec![
                    Attr::bytes(CTA_PROTO_NUM, vec![proto]),
                    Attr::bytes(CTA_PROTO_SRC_PORT, src.port().to_be_bytes().to_vec()),
                    Attr::bytes(CTA_PROTO_DST_PORT, dst.port().to_be_bytes().to_vec()),
                ],
            ),
        ],
    )
}

fn ip6(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The `IPCTNL_MSG_CT_NEW` request creating `c`.
pub fn create_message(c: &NewConnection, seq: u32) -> Vec<u8> {
    let family = if c.src.is_ipv4() {
        NFPROTO_IPV4
    } else {
        NFPROTO_IPV6
    };
    let mut attrs = vec![
        tuple_attr(CTA_TUPLE_ORIG, c.src, c.dst, c.proto),
        tuple_attr(CTA_TUPLE_REPLY, c.dst, c.src, c.proto),
        Attr::U32(CTA_TIMEOUT, c.timeout),
    ];
    if let Some(bit) = c.label {
        attrs.push(Attr::bytes(
            CTA_LABELS,
            crate::nft::netlink::expr::label_bits(bit).to_vec(),
        ));
    }
    message(
        IPCTNL_MSG_CT_NEW,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
        family,
        &attrs,
    )
}

impl Kernel {
    /// Create tracked connections (labels only stick once a rule that sets labels is loaded
    /// in this namespace).
    pub fn create(&mut self, conns: &[NewConnection]) -> Result<(), ConntrackError> {
        self.acked("create", conns, create_message)?;
        Ok(())
    }

    /// Send one request per item, [`DELETES_PER_SEND`] per `sendmsg`, and read every ACK:
    /// (acknowledged, answered ENOENT); any other errno fails.
    fn acked<T>(
        &mut self,
        what: &'static str,
        items: &[T],
        build: impl Fn(&T, u32) -> Vec<u8>,
    ) -> Result<(usize, usize), ConntrackError> {
        let (mut ok, mut gone) = (0, 0);
        let mut buf = Vec::with_capacity(256 * 1024);
        for chunk in items.chunks(DELETES_PER_SEND) {
            let first = self.seq.wrapping_add(1);
            let mut req = Vec::with_capacity(chunk.len() * 128);
            for item in chunk {
                let seq = self.next_seq();
                req.extend_from_slice(&build(item, seq));
            }
            self.send(&req, what)?;
            let mut answered = 0;
            while answered < chunk.len() {
                let d = self.recv(&mut buf, what)?;
                for a in answers(d)? {
                    let Answer::Status { seq, errno } = a else {
                        continue;
                    };
                    if seq.wrapping_sub(first) as usize >= chunk.len() {
                        continue;
                    }
                    answered += 1;
                    match errno {
                        0 => ok += 1,
                        libc::ENOENT => gone += 1,
                        errno => return Err(ConntrackError::Refused { what, errno }),
                    }
                }
            }
        }
        Ok((ok, gone))
    }
}
