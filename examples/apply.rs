//! Apply a rule document straight to the kernel (no signature, no state): the apply half of a
//! follower, for benchmarks and kernel tests. Run it inside a network namespace.
//!
//! `apply DOC.json [--all-groups | --host ADDR ...] [--transport netlink|cli]
//!        [--enforce ipsec|cidr --managed CIDR ...] [--log-accept] [--log-drop]
//!        [--layout default|plain|inline=N,share=0|1,refs=0|1] [--render]`
//!
//! `--layout` chooses the set layout (`compile::Layout`; `plain`: one set per source group,
//! by name, nothing inlined), for comparing layouts; `--render` prints the nft script of that
//! layout instead of applying it.
//!
//! Exit 0 applied, 1 refused (the message names the object), 2 usage. With REYES_APPLY_STATS
//! set, prints RSS and peak RSS after each stage (read, parsed, compiled, encoded, applied).

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use reyes::backend::Backend;
use reyes::compile::{self, HostContext, Target};
use reyes::config::{Enforce, FollowerConfig};
use reyes::document::Document;

/// The system allocator, counting live and peak heap bytes for the stage report.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            let now = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut doc = None;
    let mut hosts = Vec::new();
    let mut all = false;
    let mut transport = "netlink".to_string();
    let mut fcfg = FollowerConfig::default();
    let mut set_layout = compile::Layout::default();
    let mut render = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--all-groups" => all = true,
            "--host" => hosts.extend(it.next().and_then(|h| h.parse::<std::net::IpAddr>().ok())),
            "--transport" => transport = it.next().cloned().unwrap_or_default(),
            "--enforce" => {
                fcfg.enforce = match it.next().map(String::as_str) {
                    Some("cidr") => Enforce::Cidr,
                    _ => Enforce::Ipsec,
                }
            }
            "--managed" => fcfg
                .managed_cidrs
                .extend(it.next().and_then(|c| c.parse::<reyes::net::Cidr>().ok())),
            "--log-accept" => fcfg.log_accept = true,
            "--log-drop" => fcfg.log_drop = true,
            "--render" => render = true,
            "--layout" => match it.next().map(|l| parse_layout(l)) {
                Some(Some(l)) => set_layout = l,
                _ => {
                    eprintln!("apply: --layout default|plain|inline=N,share=0|1,refs=0|1");
                    return ExitCode::from(2);
                }
            },
            other if doc.is_none() && !other.starts_with("--") => doc = Some(other.to_string()),
            other => {
                eprintln!("apply: unexpected argument {other:?}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(doc) = doc else {
        eprintln!(
            "usage: apply DOC.json [--all-groups | --host ADDR ...] [--transport netlink|cli]"
        );
        return ExitCode::from(2);
    };
    let bytes = match std::fs::read(&doc) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("apply: {doc}: {e}");
            return ExitCode::from(2);
        }
    };
    stats("read");
    let document = match Document::parse(&bytes) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("apply: {doc}: {e}");
            return ExitCode::from(2);
        }
    };
    drop(bytes);
    stats("parsed");
    let target = if all {
        Target::AllGroups
    } else {
        Target::Host(hosts)
    };
    let mut ctx = HostContext::from_config(&fcfg, target);
    ctx.allow_unknown_host = true;
    let rs = match compile::compile_with(&document, &ctx, set_layout) {
        Ok(rs) => rs,
        Err(e) => {
            eprintln!("apply: {e}");
            return ExitCode::from(2);
        }
    };
    drop(document);
    stats("compiled");
    if render {
        return match reyes::nft::render::render(&rs) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("apply: {e}");
                ExitCode::from(1)
            }
        };
    }
    let result = match transport.as_str() {
        "netlink" => netlink_apply(rs),
        "cli" => reyes::nft::NftBackend::new()
            .apply(&rs)
            .map_err(|e| e.to_string()),
        other => {
            eprintln!("apply: unknown transport {other:?}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apply: {e}");
            ExitCode::from(1)
        }
    }
}

/// `default`, `plain`, or `inline=N,share=0|1,refs=0|1` (each part changes the default).
fn parse_layout(text: &str) -> Option<compile::Layout> {
    match text {
        "default" => return Some(compile::Layout::default()),
        "plain" => return Some(compile::Layout::PLAIN),
        _ => {}
    }
    let mut l = compile::Layout::default();
    for part in text.split(',') {
        let (k, v) = part.split_once('=')?;
        match k {
            "inline" => l.inline_max = v.parse().ok()?,
            "share" => l.share = v == "1",
            "refs" => l.by_refs = v == "1",
            _ => return None,
        }
    }
    Some(l)
}

fn netlink_apply(rs: reyes::compile::Ruleset) -> Result<(), String> {
    use reyes::nft::netlink;
    // The ruleset is not needed afterwards: encode it part by part, dropping what is done.
    let batch = netlink::encode_owned(rs, &netlink::ifindex).map_err(|e| e.to_string())?;
    stats(&format!(
        "encoded: {} messages, {} bytes",
        batch.len(),
        batch.byte_len()
    ));
    if std::env::var_os("REYES_APPLY_STATS").is_some() {
        let mut by_type = std::collections::BTreeMap::<u16, (usize, usize)>::new();
        for m in batch.messages() {
            let t = m.get(4..6).map_or(0, |b| u16::from_ne_bytes([b[0], b[1]]));
            let e = by_type.entry(t & 0xff).or_default();
            e.0 += 1;
            e.1 += m.len();
        }
        for (t, (n, bytes)) in by_type {
            eprintln!("  message type {t}: {n} messages, {bytes} bytes");
        }
    }
    let r = netlink::Socket::open()
        .and_then(|s| s.apply(&batch))
        .map_err(|e| e.to_string());
    stats("applied");
    r
}

/// With REYES_APPLY_STATS set: peak RSS so far, after each stage.
fn stats(stage: &str) {
    if std::env::var_os("REYES_APPLY_STATS").is_none() {
        return;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string()
    };
    eprintln!(
        "{stage}: RSS {} kB, peak {} kB; heap {} kB, heap peak {} kB",
        field("VmRSS:"),
        field("VmHWM:"),
        LIVE.load(Ordering::Relaxed) / 1024,
        PEAK.load(Ordering::Relaxed) / 1024,
    );
}
