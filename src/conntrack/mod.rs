//! Revocation: after a policy change, cut the tracked connections the new policy denies.
//!
//! reyes' input chain, and a gateway's forward chain, label every in-scope connection they let
//! through with the conntrack label bit [`CT_LABEL`] (a dropped packet's connection is never
//! confirmed, so only accepted ones keep it); egress judgements (the output chain, the egress
//! part of the forward chain) set [`CT_LABEL_EGRESS`] instead. After an apply, [`revoke`]
//! walks the conntrack table of both families, judges the connection of every labelled entry
//! with the evaluator against the ruleset just applied, as a new connection would be judged
//! (ingress for the one bit, egress for the other, both when both are set), and deletes those
//! it now denies. The next packet of a deleted connection is a new one to conntrack and meets
//! the new rules (and the drop).
//! Unlabelled entries (out of scope, opened before reyes, or through another path) are never
//! touched.
//!
//! The walk and the deletes go through [`Conntrack`]: the kernel over ctnetlink
//! ([`kernel::Kernel`]) or a fake in tests.

pub mod kernel;

use std::net::IpAddr;
use std::time::Instant;

use crate::compile::{Hook, Ruleset, Target, CT_LABEL, CT_LABEL_EGRESS};
use crate::eval::{evaluate, Decision, EvalError, Flow};
use crate::net::Family;
use crate::proto::{self, Proto};

/// One tracked connection, as the walk needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Source of the original direction (who opened it).
    pub src: IpAddr,
    /// Destination as reyes' input chain saw it: the source of the reply direction (after any
    /// destination NAT; without NAT the original destination).
    pub dst: IpAddr,
    /// Layer-4 protocol number.
    pub proto: u8,
    /// tcp/udp: the destination port as reyes saw it (the reply direction's source port).
    pub port: Option<u16>,
    /// icmp/icmpv6: type and code of the original direction.
    pub icmp: Option<(u8, u8)>,
    /// The 128 label bits, when the connection has a label extension.
    pub labels: Option<[u8; 16]>,
    /// The kernel's id of the entry (a delete names it, so that a new connection with the
    /// same tuple is not deleted in its place).
    pub id: Option<u32>,
    /// The original-direction tuple as the kernel sent it (`CTA_TUPLE_ORIG`'s payload): what a
    /// delete sends back.
    pub tuple: Vec<u8>,
    /// Conntrack zone, when not the default.
    pub zone: Option<u16>,
}

impl Entry {
    /// The address family.
    pub fn family(&self) -> Family {
        Family::of(&self.src)
    }

    /// Whether reyes labelled it.
    pub fn labelled(&self, bit: u8) -> bool {
        let want = crate::nft::netlink::expr::label_bits(bit);
        self.labels
            .is_some_and(|l| l.iter().zip(want).any(|(have, w)| have & w != 0))
    }

    /// Whether reyes labelled it at all (ingress or egress).
    pub fn labelled_any(&self) -> bool {
        self.labelled(CT_LABEL) || self.labelled(CT_LABEL_EGRESS)
    }

    /// The flow a new connection like this one is, as ingress judges it: in scope, so arrived
    /// over IPsec in ipsec mode (the label is only set on in-scope traffic).
    pub fn flow(&self) -> Flow {
        self.bare_flow().via_ipsec(true)
    }

    /// The flow as egress judges it: leaving over IPsec (in scope, as the label says).
    pub fn egress_flow(&self) -> Flow {
        self.bare_flow().leaves_ipsec(true)
    }

    fn bare_flow(&self) -> Flow {
        let proto = Proto::from_number(self.proto);
        let mut f = Flow::new(self.src, self.dst, proto);
        if proto.has_ports() {
            f.port = self.port;
        }
        if proto.is_icmp() {
            if let Some((t, c)) = self.icmp {
                f = f.icmp(t, Some(c));
            }
        }
        f
    }
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.proto {
            proto::TCP => "tcp".to_string(),
            proto::UDP => "udp".to_string(),
            proto::ICMP => "icmp".to_string(),
            proto::ICMPV6 => "icmpv6".to_string(),
            n => format!("proto {n}"),
        };
        write!(f, "{} -> {} {name}", self.src, self.dst)?;
        if let Some(p) = self.port {
            write!(f, "/{p}")?;
        }
        if let Some((t, c)) = self.icmp {
            write!(f, " type {t} code {c}")?;
        }
        Ok(())
    }
}

/// What a batch of deletes did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Entries deleted.
    pub deleted: usize,
    /// Entries already gone (ended, or replaced by a new connection with the same tuple).
    pub gone: usize,
}

/// The conntrack table: walked, and entries deleted.
pub trait Conntrack {
    /// Hand every tracked connection of both families to `each`.
    fn walk(&mut self, each: &mut dyn FnMut(Entry)) -> Result<(), ConntrackError>;
    /// Delete these entries.
    fn delete(&mut self, entries: &[Entry]) -> Result<Deleted, ConntrackError>;
}

/// Walking or changing the conntrack table failed.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// No netfilter netlink socket.
    #[error("cannot open a conntrack netlink socket: {0}")]
    Open(#[source] std::io::Error),
    /// Sending a request failed.
    #[error("sending a conntrack {what} request failed: {source}")]
    Send {
        /// Which request.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading the kernel's answers failed.
    #[error("reading the kernel's conntrack {what} answers failed: {source}")]
    Recv {
        /// Which request.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a request.
    #[error("the kernel refused the conntrack {what} request: {errno} ({})", std::io::Error::from_raw_os_error(*.errno))]
    Refused {
        /// Which request.
        what: &'static str,
        /// errno.
        errno: i32,
    },
    /// An answer we could not make sense of.
    #[error("malformed conntrack netlink answer: {0}")]
    Malformed(String),
    /// The ruleset could not judge a connection.
    #[error("judging tracked connections: {0}")]
    Eval(#[from] EvalError),
}

/// What a revocation found and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Revocation {
    /// Tracked connections walked (both families).
    pub tracked: usize,
    /// Of those, labelled by reyes.
    pub labelled: usize,
    /// Deleted because the new policy denies them.
    pub revoked: usize,
    /// Denied, but gone by the time of the delete.
    pub gone: usize,
    /// Seconds the walk, judging and deletes took.
    pub seconds: f64,
}

/// The hook a labelled connection passed: the forward hook on a gateway (a ruleset with a
/// forward chain) for a connection to none of the host's own addresses, else the input hook.
/// (Ingress labels come only from the input chain and the forward chain's ingress part.)
pub fn hook_of(rs: &Ruleset, e: &Entry) -> Hook {
    if forwarded(rs, &e.dst) {
        Hook::Forward
    } else {
        Hook::Input
    }
}

/// The hook an egress-labelled connection passed: the output hook when this host opened it
/// (its source is one of the host's addresses, or no addresses are known), else the forward
/// hook of a gateway (a host behind it opened it), else output.
pub fn egress_hook_of(rs: &Ruleset, e: &Entry) -> Hook {
    if forwarded(rs, &e.src) {
        Hook::Forward
    } else {
        Hook::Output
    }
}

/// Whether a connection whose end on this side is `ours` went through a gateway's forward
/// hook: the ruleset has a forward chain and `ours` is none of the host's own addresses.
fn forwarded(rs: &Ruleset, ours: &IpAddr) -> bool {
    rs.base_chain(Hook::Forward).is_some()
        && match &rs.meta.target {
            Target::Host(own) => !own.contains(ours),
            Target::AllGroups => false,
        }
}

/// Whether the ruleset still allows a new connection like `e`, by every judgement that
/// labelled it: ingress for [`CT_LABEL`], egress for [`CT_LABEL_EGRESS`].
pub fn allowed(rs: &Ruleset, e: &Entry) -> Result<bool, EvalError> {
    if e.labelled(CT_LABEL) && !allows(rs, &e.flow().at(hook_of(rs, e)))? {
        return Ok(false);
    }
    if e.labelled(CT_LABEL_EGRESS) && !allows(rs, &e.egress_flow().at(egress_hook_of(rs, e)))? {
        return Ok(false);
    }
    Ok(true)
}

fn allows(rs: &Ruleset, flow: &Flow) -> Result<bool, EvalError> {
    if flow.check().is_err() {
        // Nothing a rule could judge (an IPv6 extension header as the protocol): keep it.
        return Ok(true);
    }
    Ok(evaluate(rs, flow)?.decision == Decision::Allow)
}

/// The labelled entries of `entries` that `rs` denies.
pub fn denied(rs: &Ruleset, entries: Vec<Entry>) -> Result<Vec<Entry>, EvalError> {
    let mut out = Vec::new();
    for e in entries {
        if e.labelled_any() && !allowed(rs, &e)? {
            out.push(e);
        }
    }
    Ok(out)
}

/// How many revoked connections are logged one by one before only the count is.
const LOGGED: usize = 20;

/// Walk the table, judge every connection reyes labelled (ingress or egress) against `rs`
/// (the ruleset just applied), and delete those it denies.
pub fn revoke(rs: &Ruleset, table: &mut dyn Conntrack) -> Result<Revocation, ConntrackError> {
    let started = Instant::now();
    let mut tracked = 0;
    let mut labelled = Vec::new();
    table.walk(&mut |e| {
        tracked += 1;
        if e.labelled_any() {
            labelled.push(e);
        }
    })?;
    let n_labelled = labelled.len();
    let deny = denied(rs, labelled)?;
    for e in deny.iter().take(LOGGED) {
        tracing::info!(connection = %e, "revoking: the new policy denies it");
    }
    if deny.len() > LOGGED {
        tracing::info!(
            more = deny.len() - LOGGED,
            "revoking further connections the new policy denies"
        );
    }
    let d = if deny.is_empty() {
        Deleted::default()
    } else {
        table.delete(&deny)?
    };
    Ok(Revocation {
        tracked,
        labelled: n_labelled,
        revoked: d.deleted,
        gone: d.gone,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests;
