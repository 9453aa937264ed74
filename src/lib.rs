//! reyes: security-group rules for traffic that arrives over IPsec.
//!
//! A leader reads an inventory ([`inventory`]), builds a canonical rule document
//! ([`document`]), signs it ([`signing`]) and publishes it ([`store`]). A follower fetches and
//! verifies it, compiles it for its host ([`compile`]) and applies it atomically through a
//! backend: [`nft`], replacing only its own `inet reyes` table, or [`iptables`] (ipset +
//! iptables-restore in its own chains) on hosts without a usable nftables. The evaluator ([`eval`])
//! judges flows against the compiled ruleset for `query` and `test` ([`query`]); [`diff`]
//! compares two documents.
#![deny(missing_docs)]
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod backend;
pub mod capacity;
pub mod clidoc;
pub mod commands;
pub mod compile;
pub mod config;
pub mod confirm;
pub mod conntrack;
pub mod daemon;
pub mod diff;
pub mod digest;
pub mod doctext;
pub mod document;
pub mod error;
pub mod eval;
pub mod exec;
pub mod fleet;
pub mod follower;
pub mod fsutil;
pub mod graph;
pub mod hostrecord;
pub mod inventory;
pub mod iptables;
pub mod leader;
pub mod live;
pub mod load;
pub mod metrics;
pub mod net;
pub mod nft;
pub mod probe;
pub mod proto;
pub mod query;
pub mod receipt;
pub mod sdnotify;
pub mod signing;
pub mod state;
pub mod store;
pub mod timefmt;
