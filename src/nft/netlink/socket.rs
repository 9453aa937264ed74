//! The only I/O of the netlink transport: a NETLINK_NETFILTER socket that sends one batch in
//! one `sendmsg`, reads every reply, and names the object behind each failure.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket as NlSocket, SocketAddr};

use super::batch::{Batch, What};
use super::sys::*;
use super::wire::{Emit, Message};

/// Per-reply receive-buffer budget: an ACK is a small skb, but the socket is charged its
/// true size (about 700 bytes on x86_64); 1 KiB leaves room.
const RCVBUF_PER_REPLY: usize = 1024;
/// Floor and ceiling of the receive buffer we ask for.
const RCVBUF_MIN: usize = 1 << 20;
const RCVBUF_MAX: usize = 1 << 30;
/// Most iovecs one sendmsg takes (UIO_MAXIOV).
const MAX_IOVECS: usize = 1024;

/// One message the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The message (None: the batch as a whole, e.g. its commit, or a summary of further
    /// refused messages).
    pub what: Option<What>,
    /// The errno (positive).
    pub errno: i32,
    /// The kernel's extended-ACK text or the attribute it pointed at, if any.
    pub detail: Option<String>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.what {
            Some(w) => write!(f, "{w}: ")?,
            None => write!(f, "batch: ")?,
        }
        let text = io::Error::from_raw_os_error(self.errno).to_string();
        let text = text.split(" (os error").next().unwrap_or_default();
        write!(f, "{} ({text})", errno_name(self.errno))?;
        if let Some(d) = &self.detail {
            write!(f, " [{d}]")?;
        }
        Ok(())
    }
}

fn refusals_text(r: &[Refusal]) -> String {
    match r {
        [] => "no reason given".into(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!(
            "{first}; {} more message(s) failed after it, first: {}",
            rest.len(),
            rest[0]
        ),
    }
}

/// The netlink transport failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// No NETLINK_NETFILTER socket (no nf_tables, or sandboxed).
    #[error("cannot open a netfilter netlink socket: {0}")]
    Open(#[source] io::Error),
    /// sendmsg failed (EPERM without CAP_NET_ADMIN is reported per message, not here).
    #[error("sending the nf_tables batch ({len} bytes) failed: {source}")]
    Send {
        /// Batch size.
        len: usize,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Reading replies failed.
    #[error("reading the kernel's replies failed: {0}")]
    Recv(#[source] io::Error),
    /// Replies were lost: the outcome is unknown (the kernel commits or aborts as a whole).
    #[error("the kernel's replies overflowed the socket receive buffer (ENOBUFS) after {got} of {expected}: the outcome of the transaction is unknown")]
    Overflow {
        /// Replies read.
        got: usize,
        /// Replies expected.
        expected: usize,
    },
    /// The kernel refused the transaction; nothing was changed.
    #[error("the kernel refused the transaction (nothing was changed): {}", refusals_text(.0))]
    Refused(Vec<Refusal>),
    /// Fewer replies than messages and no error: should not happen.
    #[error("the kernel acknowledged {acked} of {expected} messages and reported no error")]
    Incomplete {
        /// ACKs read.
        acked: usize,
        /// Messages sent.
        expected: usize,
    },
    /// A reply we could not make sense of.
    #[error("malformed netlink reply: {0}")]
    Malformed(String),
}

impl NetlinkError {
    /// The errno of the first refusal, if the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Refused(r) => r.first().map(|r| r.errno),
            _ => None,
        }
    }
}

/// errno's symbolic name, for messages.
pub fn errno_name(e: i32) -> &'static str {
    match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ELOOP => "ELOOP",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ENOBUFS => "ENOBUFS",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::ENODATA => "ENODATA",
        libc::EBADMSG => "EBADMSG",
        libc::EDOM => "EDOM",
        _ => "error",
    }
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: usize,
) -> io::Result<()> {
    let v: libc::c_int = value.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: `v` lives across the call and its exact size is passed; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One parsed reply.
#[derive(Debug)]
enum Reply {
    /// NLMSG_ERROR with error 0.
    Ack { seq: u32 },
    /// NLMSG_ERROR with an errno.
    Error {
        seq: u32,
        errno: i32,
        msg: Option<String>,
        offset: Option<u32>,
    },
    /// Any other message (a GET answer, NLMSG_DONE ...).
    Data { ty: u16, seq: u32, body: Vec<u8> },
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Walk netlink attributes: (type without flags, payload).
pub(crate) fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16_at(b, 0)? as usize;
        let ty = u16_at(b, 2)? & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = b.get(super::wire::align(len)..).unwrap_or(&[]);
        Some((ty, payload))
    })
}

/// Split a datagram into replies.
fn parse_replies(mut d: &[u8], out: &mut Vec<Reply>) -> Result<(), NetlinkError> {
    while d.len() >= NLMSG_HDRLEN {
        let bad = |what: &str| NetlinkError::Malformed(what.to_string());
        let len = u32_at(d, 0).ok_or_else(|| bad("short header"))? as usize;
        let ty = u16_at(d, 4).ok_or_else(|| bad("short header"))?;
        let flags = u16_at(d, 6).ok_or_else(|| bad("short header"))?;
        let seq = u32_at(d, 8).ok_or_else(|| bad("short header"))?;
        if len < NLMSG_HDRLEN || len > d.len() {
            return Err(bad(&format!("length {len} of a {}-byte datagram", d.len())));
        }
        let body = &d[NLMSG_HDRLEN..len];
        if ty == NLMSG_ERROR {
            let errno = u32_at(body, 0).ok_or_else(|| bad("short error"))? as i32;
            // The request's header follows; its sequence number is what names the object.
            let orig_len = u32_at(body, 4).unwrap_or(0) as usize;
            let orig_seq = u32_at(body, 12).ok_or_else(|| bad("short error"))?;
            if errno == 0 {
                out.push(Reply::Ack { seq: orig_seq });
            } else {
                let mut msg = None;
                let mut offset = None;
                if flags & NLM_F_ACK_TLVS != 0 {
                    let skip = if flags & NLM_F_CAPPED != 0 {
                        NLMSG_HDRLEN
                    } else {
                        super::wire::align(orig_len.max(NLMSG_HDRLEN).min(body.len()))
                    };
                    for (t, p) in attrs(body.get(4 + skip..).unwrap_or(&[])) {
                        match t {
                            NLMSGERR_ATTR_MSG => {
                                let s = p.split(|c| *c == 0).next().unwrap_or(&[]);
                                msg = Some(String::from_utf8_lossy(s).into_owned());
                            }
                            NLMSGERR_ATTR_OFFS => offset = u32_at(p, 0),
                            _ => {}
                        }
                    }
                }
                out.push(Reply::Error {
                    seq: orig_seq,
                    errno: errno.checked_neg().unwrap_or(errno),
                    msg,
                    offset,
                });
            }
        } else {
            out.push(Reply::Data {
                ty,
                seq,
                body: body.to_vec(),
            });
        }
        d = d.get(super::wire::align(len)..).unwrap_or(&[]);
    }
    Ok(())
}

/// Name the expression of a NEWRULE message that an error offset points into.
fn describe_offset(msg: &[u8], offset: u32) -> Option<String> {
    let off = offset as usize;
    let mut at = NLMSG_HDRLEN + 4;
    for (ty, payload) in attrs(msg.get(at..)?) {
        let start = at;
        let end = start + 4 + payload.len();
        at = start + super::wire::align(4 + payload.len());
        if !(start..end).contains(&off) {
            continue;
        }
        if ty == NFTA_RULE_EXPRESSIONS && u16_at(msg, 4)? & 0xff == NFT_MSG_NEWRULE {
            let mut eat = start + 4;
            for (i, (_, e)) in attrs(payload).enumerate() {
                let estart = eat;
                eat += super::wire::align(4 + e.len());
                if (estart..eat).contains(&off) {
                    let name = attrs(e)
                        .find(|(t, _)| *t == NFTA_EXPR_NAME)
                        .map(|(_, n)| {
                            String::from_utf8_lossy(n.split(|c| *c == 0).next().unwrap_or(&[]))
                                .into_owned()
                        })
                        .unwrap_or_default();
                    return Some(format!("expression {} ({name})", i + 1));
                }
            }
        }
        if ty == NFTA_SET_ELEM_LIST_ELEMENTS && u16_at(msg, 4)? & 0xff == NFT_MSG_NEWSETELEM {
            let mut eat = start + 4;
            for (i, (_, e)) in attrs(payload).enumerate() {
                let estart = eat;
                eat += super::wire::align(4 + e.len());
                if (estart..eat).contains(&off) {
                    return Some(format!("element {} of this message", i + 1));
                }
            }
        }
        return Some(format!("attribute {ty}"));
    }
    None
}

/// A NETLINK_NETFILTER socket.
pub struct Socket {
    sock: NlSocket,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("fd", &self.sock.as_raw_fd())
            .finish()
    }
}

impl Socket {
    /// Open and bind a socket in the current network namespace.
    pub fn open() -> Result<Socket, NetlinkError> {
        let mut sock = NlSocket::new(NETLINK_NETFILTER).map_err(NetlinkError::Open)?;
        sock.bind_auto().map_err(NetlinkError::Open)?;
        // Errors carry only the request's header (enough for its sequence number) plus the
        // kernel's pointer to the offending attribute.
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_ext_ack(true);
        // Blocking reads (GET answers) give up rather than hang if the kernel never answers.
        let tv = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        // SAFETY: `tv` lives across the call and its exact size is passed; read only.
        let _ = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(Socket { sock })
    }

    fn size_buffers(&self, send: usize, replies: usize) {
        let fd = self.sock.as_raw_fd();
        // The whole batch must fit one skb: the kernel processes a batch per sendmsg.
        let snd = send + 64 * 1024;
        if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, snd).is_err() {
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, snd);
        }
        // Every ACK is queued before sendmsg returns, so all must fit at once.
        let rcv = (replies * RCVBUF_PER_REPLY).clamp(RCVBUF_MIN, RCVBUF_MAX);
        if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, rcv).is_err() {
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, rcv);
        }
    }

    fn send(&self, bytes: &[u8]) -> Result<(), NetlinkError> {
        let kernel = SocketAddr::new(0, 0);
        let n = self
            .sock
            .send_to(bytes, &kernel, 0)
            .map_err(|source| NetlinkError::Send {
                len: bytes.len(),
                source,
            })?;
        if n != bytes.len() {
            return Err(NetlinkError::Send {
                len: bytes.len(),
                source: io::Error::new(io::ErrorKind::WriteZero, format!("sent {n} bytes")),
            });
        }
        Ok(())
    }

    /// Read every queued reply (the kernel answers a batch before sendmsg returns), one
    /// datagram at a time, handing each to `each`; returns how many there were.
    fn drain(&self, expected: usize, mut each: impl FnMut(Reply)) -> Result<usize, NetlinkError> {
        let mut got = 0;
        let mut replies = Vec::new();
        let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
        loop {
            buf.clear();
            match self.sock.recv(&mut buf, libc::MSG_DONTWAIT) {
                Ok(0) => break,
                Ok(n) => {
                    let n = n.min(buf.len());
                    replies.clear();
                    parse_replies(&buf[..n], &mut replies)?;
                    got += replies.len();
                    replies.drain(..).for_each(&mut each);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Err(NetlinkError::Overflow { got, expected })
                }
                Err(e) => return Err(NetlinkError::Recv(e)),
            }
        }
        Ok(got)
    }

    /// Send a batch's chunks in one `sendmsg` (one iovec per chunk): the kernel copies them
    /// into one skb, which is one transaction.
    fn send_batch(&self, batch: &Batch) -> Result<(), NetlinkError> {
        let len = batch.byte_len();
        let fail = |source: io::Error| NetlinkError::Send { len, source };
        // More chunks than one sendmsg takes (only for batches of hundreds of MB): join them.
        let joined;
        let chunks: Vec<&[u8]> = if batch.chunks().len() > MAX_IOVECS {
            joined = batch.to_bytes();
            vec![joined.as_slice()]
        } else {
            batch.chunks().collect()
        };
        let mut iov: Vec<libc::iovec> = chunks
            .iter()
            .map(|c| libc::iovec {
                iov_base: c.as_ptr() as *mut libc::c_void,
                iov_len: c.len(),
            })
            .collect();
        // SAFETY: all-zero is a valid sockaddr_nl; family set below, pid 0 and groups 0 = the
        // kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: all-zero is a valid msghdr (no name, no iovecs, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut kernel as *mut libc::sockaddr_nl).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len() as _;
        loop {
            // SAFETY: `msg` points at `kernel` and `iov`, whose entries point into `chunks`;
            // all outlive the call, and the kernel only reads them.
            let n = unsafe { libc::sendmsg(self.sock.as_raw_fd(), &msg, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(fail(e));
            }
            if n as usize != len {
                return Err(fail(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("sent {n} bytes"),
                )));
            }
            return Ok(());
        }
    }

    /// Send the batch in one sendmsg, read every reply, and fail with every refusal named.
    pub fn apply(&self, batch: &Batch) -> Result<(), NetlinkError> {
        self.size_buffers(batch.byte_len(), batch.len());
        // Nothing stale may be mistaken for a reply to this batch.
        let _ = self.drain(0, |_| {});
        self.send_batch(batch)?;
        let mut acked = 0;
        let mut refused = Vec::new();
        // Past this many, refusals (e.g. EPERM on every message) are counted, not described.
        const DESCRIBED: usize = 32;
        let mut more: Option<(i32, usize)> = None;
        self.drain(batch.len(), |r| match r {
            Reply::Ack { seq } => {
                if batch.contains(seq) {
                    acked += 1;
                }
            }
            Reply::Error { errno, .. } if refused.len() >= DESCRIBED => {
                let m = more.get_or_insert((errno, 0));
                m.1 += 1;
            }
            Reply::Error {
                seq,
                errno,
                msg,
                offset,
            } => {
                let what = batch.what(seq);
                let at = offset.and_then(|o| {
                    let m = batch.message(seq)?;
                    describe_offset(&m, o)
                });
                let detail = match (msg, at) {
                    (Some(m), Some(a)) => Some(format!("{m}; at {a}")),
                    (Some(m), None) => Some(m),
                    (None, Some(a)) => Some(format!("at {a}")),
                    (None, None) => None,
                };
                refused.push(Refusal {
                    what,
                    errno,
                    detail,
                });
            }
            Reply::Data { .. } => {}
        })?;
        if let Some((errno, n)) = more {
            refused.push(Refusal {
                what: None,
                errno,
                detail: Some(format!("and {n} more refused message(s), not described")),
            });
        }
        if !refused.is_empty() {
            return Err(NetlinkError::Refused(refused));
        }
        if acked < batch.len() {
            return Err(NetlinkError::Incomplete {
                acked,
                expected: batch.len(),
            });
        }
        Ok(())
    }

    /// Send a dump request and return every data message until NLMSG_DONE.
    pub fn dump(&self, msg: Message<'_>, seq: u32) -> Result<Vec<(u16, Vec<u8>)>, NetlinkError> {
        self.request(msg, seq)
    }

    /// Send one GET request (not a dump) and return the data replies, or the errno.
    pub fn get(&self, msg: Message<'_>, seq: u32) -> Result<Vec<(u16, Vec<u8>)>, NetlinkError> {
        self.request(msg, seq)
    }

    /// Send a request and collect the data replies with its sequence number until NLMSG_DONE
    /// (a dump) or the ACK (a GET); an error reply for it is the result. Reads block (with the
    /// socket's receive timeout), as the kernel answers synchronously.
    fn request(&self, mut msg: Message<'_>, seq: u32) -> Result<Vec<(u16, Vec<u8>)>, NetlinkError> {
        msg.seq = seq;
        let _ = self.drain(0, |_| {});
        self.send(&msg.to_vec())?;
        let mut out = Vec::new();
        let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
        let mut replies = Vec::new();
        loop {
            buf.clear();
            let n = match self.sock.recv(&mut buf, 0) {
                Ok(n) => n.min(buf.len()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(NetlinkError::Recv(e)),
            };
            replies.clear();
            parse_replies(&buf[..n], &mut replies)?;
            for r in replies.drain(..) {
                match r {
                    Reply::Data { ty, seq: s, .. } if s == seq && ty == NLMSG_DONE => {
                        return Ok(out)
                    }
                    Reply::Data { ty, seq: s, body } if s == seq => out.push((ty, body)),
                    Reply::Error {
                        seq: s,
                        errno,
                        msg: m,
                        ..
                    } if s == seq => {
                        return Err(NetlinkError::Refused(vec![Refusal {
                            what: None,
                            errno,
                            detail: m,
                        }]))
                    }
                    Reply::Ack { seq: s } if s == seq => return Ok(out),
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_replies_name_their_sequence_number_and_never_panic() {
        // NLMSG_ERROR, capped, with an offset TLV: errno -2, original header seq 42.
        let mut d = Vec::new();
        d.extend_from_slice(&44u32.to_ne_bytes());
        d.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        d.extend_from_slice(&(NLM_F_CAPPED | NLM_F_ACK_TLVS).to_ne_bytes());
        d.extend_from_slice(&[0; 8]);
        d.extend_from_slice(&(-2i32).to_ne_bytes());
        d.extend_from_slice(&100u32.to_ne_bytes());
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&42u32.to_ne_bytes());
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&[8, 0, 2, 0, 24, 0, 0, 0]);
        let mut out = Vec::new();
        parse_replies(&d, &mut out).unwrap();
        match &out[..] {
            [Reply::Error {
                seq: 42,
                errno: 2,
                offset: Some(24),
                ..
            }] => {}
            other => panic!("{other:?}"),
        }
        // Every truncation of it is an error or nothing, never a panic.
        for n in 0..d.len() {
            let _ = parse_replies(&d[..n], &mut Vec::new());
        }
        let mut junk = d.clone();
        junk[0] = 255;
        assert!(parse_replies(&junk, &mut Vec::new()).is_err());
    }
}
