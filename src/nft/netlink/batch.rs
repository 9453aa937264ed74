//! A transaction: BATCH_BEGIN, the messages, BATCH_END, held in chunks of whole messages that
//! one `sendmsg` sends together, with what each sequence number stands for so that a failing
//! reply can be traced to its object.
//!
//! Memory is the point of the layout. A 100k-address ruleset is a 37 MB batch of ~100k
//! messages; it must be whole when it is sent (the kernel takes one transaction per skb), so
//! nothing else may be large at that moment. The bytes live in chunks (no doubling `Vec`, no
//! copy into one buffer), and each message's description is a small [`Label`] pointing at
//! shared chain names and rule origins; the words are made only for a message that failed.

use super::wire::{BatchMarker, Emit, Message, MsgType};
use crate::compile::{Name, Origin};

/// The first chunks are small, so that they are served from memory the process already has
/// (such as the ruleset parts freed as they are encoded); later ones are large, so that even a
/// very large batch needs few iovecs.
const CHUNK_SMALL: usize = 64 * 1024;
/// How many small chunks before the large ones.
const CHUNKS_SMALL: usize = 512;
/// Size of the later chunks.
const CHUNK_LARGE: usize = 1024 * 1024;

/// What one message of a batch is about, in words.
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

/// What one message is about, compactly (16 bytes, indices into the batch's tables);
/// [`Batch::what`] turns it into text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// Free text, by index.
    Text(u32),
    /// A regular chain, by name index.
    Chain(u32),
    /// A named set, or (`map`) a verdict map, by name index.
    Set {
        /// Index into the batch's names.
        name: u32,
        /// A verdict map.
        map: bool,
    },
    /// Rule `rule` (1-based) of the chain named `chain`, there because of origin `origin`.
    Rule {
        /// Index into the batch's names.
        chain: u32,
        /// Position in the chain, 1-based.
        rule: u32,
        /// Index into the batch's origins.
        origin: u32,
    },
    /// The anonymous set of such a rule.
    Anonymous {
        /// Index into the batch's names.
        chain: u32,
        /// Position in the chain, 1-based.
        rule: u32,
        /// Index into the batch's origins.
        origin: u32,
    },
    /// Elements `first..=last` (1-based) of the set made by message number `set`.
    Elements {
        /// Index of the set's NEWSET message in the batch.
        set: u32,
        /// First element in this message.
        first: u32,
        /// Last element in this message.
        last: u32,
    },
}

/// The bytes of a batch in chunks, each filled to its capacity: a message may continue in
/// the next chunk (the kernel sees the concatenation of the iovecs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Chunks {
    chunks: Vec<Vec<u8>>,
    len: usize,
    /// Where each message starts, as a byte offset.
    starts: Vec<usize>,
    scratch: Vec<u8>,
}

impl Chunks {
    fn new_chunk(&mut self) {
        let size = if self.chunks.len() < CHUNKS_SMALL {
            CHUNK_SMALL
        } else {
            CHUNK_LARGE
        };
        self.chunks.push(Vec::with_capacity(size));
    }

    fn room(&self) -> usize {
        self.chunks.last().map_or(0, |c| c.capacity() - c.len())
    }

    fn append(&mut self, e: &dyn Emit) {
        let n = e.buffer_len();
        self.starts.push(self.len);
        self.len += n;
        if self.room() == 0 {
            self.new_chunk();
        }
        if self.room() >= n {
            if let Some(c) = self.chunks.last_mut() {
                let at = c.len();
                c.resize(at + n, 0);
                e.emit(&mut c[at..]);
            }
            return;
        }
        // Across chunks: write it once, then fill this chunk and continue in new ones.
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.resize(n, 0);
        e.emit(&mut scratch);
        let mut rest = scratch.as_slice();
        while !rest.is_empty() {
            if self.room() == 0 {
                self.new_chunk();
            }
            let take = self.room().min(rest.len());
            if let Some(c) = self.chunks.last_mut() {
                c.extend_from_slice(&rest[..take]);
            }
            rest = &rest[take..];
        }
        self.scratch = scratch;
    }

    /// The bytes `at..at + len`, borrowed when they lie in one chunk.
    fn slice(&self, mut at: usize, len: usize) -> std::borrow::Cow<'_, [u8]> {
        let mut out = Vec::new();
        for c in &self.chunks {
            if at >= c.len() {
                at -= c.len();
                continue;
            }
            let want = len - out.len();
            let end = (at + want).min(c.len());
            if out.is_empty() && end - at == len {
                return std::borrow::Cow::Borrowed(&c[at..end]);
            }
            out.extend_from_slice(&c[at..end]);
            at = 0;
            if out.len() == len {
                break;
            }
        }
        std::borrow::Cow::Owned(out)
    }
}

/// Builds a [`Batch`].
#[derive(Debug)]
pub struct BatchBuilder {
    bytes: Chunks,
    first_seq: u32,
    kinds: Vec<MsgType>,
    labels: Vec<Label>,
    texts: Vec<Box<str>>,
    names: Vec<Name>,
    origins: Vec<Origin>,
}

impl BatchBuilder {
    /// A batch whose BATCH_BEGIN has sequence number `first_seq`.
    pub fn new(first_seq: u32) -> BatchBuilder {
        let mut b = BatchBuilder {
            bytes: Chunks::default(),
            first_seq,
            kinds: Vec::new(),
            labels: Vec::new(),
            texts: Vec::new(),
            names: Vec::new(),
            origins: Vec::new(),
        };
        b.bytes.append(&BatchMarker {
            begin: true,
            seq: first_seq,
        });
        b
    }

    /// Room for `rules` rule origins and about `messages` messages, so that these tables are
    /// allocated once, not grown by doubling.
    pub fn reserve(&mut self, messages: usize, rules: usize) {
        self.kinds.reserve(messages);
        self.labels.reserve(messages);
        self.origins.reserve_exact(rules);
    }

    fn next_seq(&self) -> u32 {
        self.first_seq
            .wrapping_add(1)
            .wrapping_add(self.labels.len() as u32)
    }

    /// Append a message (its sequence number is assigned here), described by `object`.
    pub fn push(&mut self, msg: Message<'_>, object: impl Into<String>) {
        let text: String = object.into();
        self.texts.push(text.into_boxed_str());
        let i = (self.texts.len() - 1) as u32;
        self.push_labelled(msg, Label::Text(i));
    }

    /// Append a message described by `label`; returns its index in the batch.
    pub fn push_labelled(&mut self, mut msg: Message<'_>, label: Label) -> u32 {
        let index = self.labels.len() as u32;
        msg.seq = self.next_seq();
        self.kinds.push(msg.kind);
        self.labels.push(label);
        self.bytes.append(&msg);
        index
    }

    /// Register a chain or set name for labels; returns its index.
    pub fn add_name(&mut self, name: Name) -> u32 {
        self.names.push(name);
        (self.names.len() - 1) as u32
    }

    /// Register a rule origin for [`Label::Rule`]; returns its index.
    pub fn add_origin(&mut self, origin: Origin) -> u32 {
        self.origins.push(origin);
        (self.origins.len() - 1) as u32
    }

    /// Bytes so far.
    pub fn byte_len(&self) -> usize {
        self.bytes.len
    }

    /// Close with BATCH_END.
    pub fn finish(mut self) -> Batch {
        let end = BatchMarker {
            begin: false,
            seq: self.next_seq(),
        };
        self.bytes.append(&end);
        self.finish_check_only()
    }

    /// Close without BATCH_END: the kernel checks every message and then aborts the
    /// transaction, committing nothing (what `nft -c` relies on).
    pub fn finish_check_only(mut self) -> Batch {
        self.bytes.scratch = Vec::new();
        Batch {
            bytes: self.bytes,
            first_seq: self.first_seq,
            kinds: self.kinds,
            labels: self.labels,
            texts: self.texts,
            names: self.names,
            origins: self.origins,
        }
    }
}

/// An encoded transaction, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    bytes: Chunks,
    first_seq: u32,
    kinds: Vec<MsgType>,
    labels: Vec<Label>,
    texts: Vec<Box<str>>,
    names: Vec<Name>,
    origins: Vec<Origin>,
}

impl Batch {
    /// The bytes to send, in chunks (one `sendmsg` with one iovec each; a message may span two).
    pub fn chunks(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.bytes.chunks.iter().map(Vec::as_slice)
    }

    /// Total size in bytes.
    pub fn byte_len(&self) -> usize {
        self.bytes.len
    }

    /// The bytes as one buffer (a copy: for tests and dumps).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes.chunks.concat()
    }

    /// Number of messages between BEGIN and END (each asks for an ACK).
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// No messages.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn index(&self, seq: u32) -> Option<usize> {
        let i = seq.wrapping_sub(self.first_seq).wrapping_sub(1) as usize;
        (i < self.labels.len()).then_some(i)
    }

    /// Whether `seq` is one of this batch's messages.
    pub fn contains(&self, seq: u32) -> bool {
        self.index(seq).is_some()
    }

    /// What the message with sequence number `seq` is about.
    pub fn what(&self, seq: u32) -> Option<What> {
        let i = self.index(seq)?;
        Some(What {
            kind: *self.kinds.get(i)?,
            object: self.describe(i),
        })
    }

    /// The bytes of the message with sequence number `seq`.
    pub fn message(&self, seq: u32) -> Option<std::borrow::Cow<'_, [u8]>> {
        // Message i of the batch is entry i + 1 of `starts` (entry 0 is BATCH_BEGIN).
        let i = self.index(seq)? + 1;
        let start = *self.bytes.starts.get(i)?;
        let end = self
            .bytes
            .starts
            .get(i + 1)
            .copied()
            .unwrap_or(self.bytes.len);
        Some(self.bytes.slice(start, end - start))
    }

    fn describe(&self, index: usize) -> String {
        let Some(label) = self.labels.get(index) else {
            return format!("message {index}");
        };
        let name = |n: u32| self.names.get(n as usize).map_or("?", |n| &**n);
        let origin = |o: u32| self.origins.get(o as usize).map(Origin::to_string);
        let rule = |c: u32, r: u32, o: u32| match origin(o) {
            Some(why) => format!("chain {} rule {r} ({why})", name(c)),
            None => format!("chain {} rule {r}", name(c)),
        };
        match *label {
            Label::Text(t) => self
                .texts
                .get(t as usize)
                .map_or_else(String::new, |t| t.to_string()),
            Label::Chain(n) => format!("chain {}", name(n)),
            Label::Set {
                name: n,
                map: false,
            } => format!("set {}", name(n)),
            Label::Set { name: n, map: true } => format!("map {}", name(n)),
            Label::Rule {
                chain,
                rule: r,
                origin,
            } => rule(chain, r, origin),
            Label::Anonymous {
                chain,
                rule: r,
                origin,
            } => format!("anonymous set of {}", rule(chain, r, origin)),
            Label::Elements { set, first, last } => {
                // The set's message comes before its elements, so this recurses once at most.
                let of = if (set as usize) < index {
                    self.describe(set as usize)
                } else {
                    "set ?".into()
                };
                let total = self
                    .labels
                    .iter()
                    .skip(index)
                    .map_while(|l| match l {
                        Label::Elements { set: s, last, .. } if *s == set => Some(*last),
                        _ => None,
                    })
                    .last()
                    .unwrap_or(last);
                format!("{of} elements {first}-{last} of {total}")
            }
        }
    }

    /// Each message's bytes, BEGIN and END included (copied when a message spans two chunks).
    pub fn messages(&self) -> impl Iterator<Item = std::borrow::Cow<'_, [u8]>> + '_ {
        let starts = &self.bytes.starts;
        (0..starts.len()).map(move |i| {
            let end = starts.get(i + 1).copied().unwrap_or(self.bytes.len);
            self.bytes.slice(starts[i], end - starts[i])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::netlink::table::Table;

    #[test]
    fn chunks_are_full_and_labels_become_words() {
        let t = &Table::REYES;
        let mut b = BatchBuilder::new(100);
        let chain = b.add_name("g_web".into());
        let origin = b.add_origin(Origin::Base("why".into()));
        // Enough messages for several chunks, some spanning two.
        let n = 3 * CHUNK_SMALL / 20;
        for i in 0..n {
            b.push_labelled(
                t.create(),
                Label::Rule {
                    chain,
                    rule: i as u32 + 1,
                    origin,
                },
            );
        }
        let set_name = b.add_name("m4_x".into());
        let set = b.push_labelled(
            t.create(),
            Label::Set {
                name: set_name,
                map: false,
            },
        );
        for (first, last) in [(1, 5), (6, 9)] {
            b.push_labelled(t.create(), Label::Elements { set, first, last });
        }
        let one = t.create().to_vec();
        let batch = b.finish();
        let chunks: Vec<&[u8]> = batch.chunks().collect();
        assert!(chunks.len() > 1, "{} chunks", chunks.len());
        assert!(chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c.len() == CHUNK_SMALL));
        assert_eq!(batch.to_bytes().len(), batch.byte_len());
        let messages: Vec<_> = batch.messages().collect();
        assert_eq!(messages.len(), n + 5);
        // Every message between BEGIN and END reads back whole, spanning chunks or not.
        for (i, m) in messages[1..messages.len() - 1].iter().enumerate() {
            let seq = 101 + i as u32;
            assert_eq!(m.len(), one.len());
            assert_eq!(&m[..8], &one[..8]);
            assert_eq!(&m[8..12], &seq.to_ne_bytes());
            assert_eq!(batch.message(seq).as_deref(), Some(&m[..]));
        }
        let w = batch.what(101).unwrap();
        assert_eq!(w.to_string(), "NEWTABLE chain g_web rule 1 (why)");
        let last = 100 + n as u32 + 3;
        assert_eq!(
            batch.what(last - 1).unwrap().object,
            "set m4_x elements 1-5 of 9"
        );
        assert_eq!(
            batch.what(last).unwrap().object,
            "set m4_x elements 6-9 of 9"
        );
        assert!(batch.contains(last) && !batch.contains(last + 1) && !batch.contains(100));
        assert!(batch.what(last + 1).is_none());
    }
}
