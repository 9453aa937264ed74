//! A transaction: BATCH_BEGIN, the messages, BATCH_END, as one byte buffer, with what each
//! sequence number stands for so a failing reply can be traced to its object.

use super::sys::*;
use super::wire::{BatchMarker, Emit, Message, MsgType};

/// What one message of a batch is about: its type and the object, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct What {
    /// Message type.
    pub kind: MsgType,
    /// The object, e.g. `chain g_sg_web rule 3 (group sg-web ingress[2], source group sg-lb)`.
    pub object: String,
}

impl std::fmt::Display for What {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.object)
    }
}

/// Builds a [`Batch`].
#[derive(Debug)]
pub struct BatchBuilder {
    bytes: Vec<u8>,
    first_seq: u32,
    whats: Vec<What>,
}

impl BatchBuilder {
    /// A batch whose BATCH_BEGIN has sequence number `first_seq`.
    pub fn new(first_seq: u32) -> BatchBuilder {
        let mut b = BatchBuilder {
            bytes: Vec::with_capacity(64 * 1024),
            first_seq,
            whats: Vec::new(),
        };
        b.append(&BatchMarker {
            begin: true,
            seq: first_seq,
        });
        b
    }

    fn append(&mut self, e: &dyn Emit) {
        let at = self.bytes.len();
        self.bytes.resize(at + e.buffer_len(), 0);
        e.emit(&mut self.bytes[at..]);
    }

    fn next_seq(&self) -> u32 {
        self.first_seq
            .wrapping_add(1)
            .wrapping_add(self.whats.len() as u32)
    }

    /// Append a message (its sequence number is assigned here), described by `object`.
    pub fn push(&mut self, mut msg: Message<'_>, object: impl Into<String>) {
        msg.seq = self.next_seq();
        self.whats.push(What {
            kind: msg.kind,
            object: object.into(),
        });
        self.append(&msg);
    }

    /// Close with BATCH_END.
    pub fn finish(mut self) -> Batch {
        let end = BatchMarker {
            begin: false,
            seq: self.next_seq(),
        };
        self.append(&end);
        Batch {
            bytes: self.bytes,
            first_seq: self.first_seq,
            whats: self.whats,
        }
    }

    /// Close without BATCH_END: the kernel checks every message and then aborts the
    /// transaction, committing nothing (what `nft -c` relies on).
    pub fn finish_check_only(self) -> Batch {
        Batch {
            bytes: self.bytes,
            first_seq: self.first_seq,
            whats: self.whats,
        }
    }
}

/// An encoded transaction, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    bytes: Vec<u8>,
    first_seq: u32,
    whats: Vec<What>,
}

impl Batch {
    /// The bytes to send (in one `sendmsg`).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of messages between BEGIN and END (each asks for an ACK).
    pub fn len(&self) -> usize {
        self.whats.len()
    }

    /// No messages.
    pub fn is_empty(&self) -> bool {
        self.whats.is_empty()
    }

    /// What the message with sequence number `seq` is about.
    pub fn what(&self, seq: u32) -> Option<&What> {
        let i = seq.wrapping_sub(self.first_seq).wrapping_sub(1) as usize;
        self.whats.get(i)
    }

    /// Each message's bytes, BEGIN and END included.
    pub fn messages(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            let rest = self.bytes.get(at..)?;
            let len = u32::from_ne_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let len = crate::nft::netlink::wire::align(len.max(NLMSG_HDRLEN));
            let m = rest.get(..len.min(rest.len()))?;
            at += len;
            Some(m)
        })
    }
}
