//! Benchmark (not a test) of the iptables backend, and of the nft backend's per-packet cost
//! (`--variants nftables`): synthetic documents with 1k, 10k and 100k
//! member addresses (20 per group, 4 ingress rules per group, every group a destination:
//! `--all-groups`), applied through `IptablesBackend` inside a network namespace created for
//! each run, then re-applied with one member of every group replaced (every set changes).
//!
//! Run as root:
//!
//! ```text
//! cargo bench --bench iptables -- [--sizes 1000,10000,100000] [--runs 3]
//!     [--variants legacy,nft,nftables] [--layouts tree,auto,rules,sets] [--write BENCHMARKS.md]
//! ```
//!
//! Layouts (iptables dispatch): `tree` (the default), `auto` (rules up to 64 prefixes per chain,
//! a set beyond), `rules`, `sets`. `nftables` ignores the layout: its dispatch is a verdict map.
//!
//! Each run is a fresh child process (`ip netns exec NS <this binary> --child ...`) in a fresh
//! namespace. Wall times come from `--runs` timed runs. Peak RSS comes from one more run per row
//! in which every tool (ipset, iptables-save, iptables-restore, ...) is started through a shim
//! that runs it under `/usr/bin/time -f %M`: the largest tool process, and reyes itself (VmHWM,
//! which includes building the synthetic document). (getrusage(RUSAGE_CHILDREN) cannot be used:
//! a spawned child's max RSS starts from its parent's at exec.)

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use reyes::backend::Backend;
use reyes::compile::{compile, HostContext, Target};
use reyes::config::{Enforce, IptablesVariant};
use reyes::inventory::{Group, Host, Inventory, Rule, Sources};
use reyes::iptables::{DispatchLayout, IptablesBackend, Options};
use reyes::net::Cidr;
use reyes::nft::NftBackend;
use reyes::proto::{PortRange, Proto};

const PER_GROUP: usize = 20;

fn addr(i: usize) -> Cidr {
    // 10.0.0.0/8 and up; neighbours belong to different groups, so nothing merges.
    let i = i as u32 + 1;
    Cidr::host(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
        0x0a00_0000 + i,
    )))
}

/// `size` addresses in `size / 20` groups; `shift` replaces member 0 of every group.
fn inventory(size: usize, shift: bool) -> Inventory {
    let groups = size.div_ceil(PER_GROUP);
    let gid = |g: usize| format!("sg-{g:05}");
    let mut inv = Inventory::default();
    for g in 0..groups {
        let from_group = |o: usize| Sources {
            groups: vec![gid((g + o) % groups)],
            ..Default::default()
        };
        let tcp = |a, b| Some(PortRange { first: a, last: b });
        inv.groups.push(Group {
            id: gid(g),
            name: format!("group {g}"),
            network: None,
            ingress: vec![
                Rule {
                    proto: Proto::Tcp,
                    ports: tcp(443, 443),
                    icmp_type: None,
                    icmp_code: None,
                    from: from_group(1),
                },
                Rule {
                    proto: Proto::Tcp,
                    ports: tcp(8000, 8100),
                    icmp_type: None,
                    icmp_code: None,
                    from: from_group(7),
                },
                Rule {
                    proto: Proto::Udp,
                    ports: tcp(53, 53),
                    icmp_type: None,
                    icmp_code: None,
                    from: Sources {
                        cidrs: vec![format!("172.16.{}.0/24", g % 256).parse().unwrap()],
                        ..Default::default()
                    },
                },
                Rule {
                    proto: Proto::Icmp,
                    ports: None,
                    icmp_type: Some(8),
                    icmp_code: None,
                    from: from_group(13),
                },
            ],
            egress: None,
        });
        for j in 0..PER_GROUP {
            let i = if shift && j == 0 {
                size + g
            } else {
                j * groups + g
            };
            inv.hosts.push(Host {
                id: format!("eni-{g}-{j}"),
                addresses: vec![addr(i)],
                groups: vec![gid(g)],
                subnet: None,
            });
        }
    }
    inv
}

fn ruleset(size: usize, serial: u64, shift: bool) -> reyes::compile::Ruleset {
    let doc = reyes::document::build(
        &inventory(size, shift),
        &reyes::document::BuildOptions {
            environment: "bench".into(),
            serial,
            issued_at: SystemTime::now(),
            validity: Duration::from_secs(3600),
            excluded_group_names: vec![],
            excluded_group_ids: vec![],
            dynamic_subnets: vec![],
        },
    )
    .unwrap()
    .document;
    // cidr mode, every source managed: traffic is in scope, so the packet test reaches the
    // dispatch.
    let ctx = HostContext {
        target: Target::AllGroups,
        enforce: Enforce::Cidr,
        managed_cidrs: vec!["0.0.0.0/0".parse().unwrap()],
        local_cidrs: None,
        failsafe: vec![],
        log_accept: false,
        log_drop: true,
        allow_unknown_host: false,
        action: reyes::config::Action::Drop,
        mode: reyes::config::Mode::Host,
        gateway_cidrs: vec![],
        egress: false,
    };
    compile(&doc, &ctx).unwrap()
}

fn layout(name: &str) -> Options {
    match name {
        "rules" => Options {
            dispatch: DispatchLayout::Rules,
            ..Options::default()
        },
        "sets" => Options {
            dispatch: DispatchLayout::Sets,
            ..Options::default()
        },
        "auto" => Options {
            dispatch: DispatchLayout::Auto(64),
            ..Options::default()
        },
        _ => Options::default(),
    }
}

fn hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Put shims for the tools first in PATH: each runs the real tool under /usr/bin/time, which
/// appends "TOOL MAXRSS_KB" to the returned log.
fn shims(variant: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("reyes-bench-shims-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("rss.log");
    let path = std::env::var("PATH").unwrap_or_default();
    let mut tools = vec!["ipset".to_string()];
    for t in ["iptables", "ip6tables"] {
        for op in ["save", "restore"] {
            tools.push(format!("{t}-{variant}-{op}"));
        }
    }
    for t in tools {
        let real = std::env::split_paths(&path)
            .map(|d| d.join(&t))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{t} not found"));
        let shim = dir.join(&t);
        std::fs::write(
            &shim,
            format!(
                "#!/bin/sh\nexec /usr/bin/time -a -o {} -f '{t} %M' {} \"$@\"\n",
                log.display(),
                real.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::env::set_var("PATH", format!("{}:{path}", dir.display()));
    log
}

fn sh(args: &[&str]) -> String {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

const PACKETS: u32 = 2000;

/// The worst-placed destination of a dispatch layout: the one a packet reaches last. With the
/// tree (and nft's verdict map, where it does not matter) the highest address; with one rule
/// or set per group chain, the last chain's.
fn worst_destination(rs: &reyes::compile::Ruleset, layout_name: &str) -> std::net::IpAddr {
    let last = if matches!(layout_name, "rules" | "sets" | "auto") {
        rs.dispatch4
            .iter()
            .max_by(|x, y| x.chain.cmp(&y.chain).then(x.range.lo.cmp(&y.range.lo)))
    } else {
        rs.dispatch4.iter().max_by_key(|e| e.range.lo)
    };
    last.unwrap().range.lo_addr()
}

/// Time per packet through INPUT for the worst-placed destination `dst`: UDP from a peer
/// namespace over a veth pair to a port no rule allows, so every packet walks the scope rules,
/// the dispatch, the destination's group chain and the drop. The sender's send() includes the
/// receiving side (veth delivers in the sender's softirq).
fn per_packet_us(b: &dyn Backend, dst: std::net::IpAddr) -> f64 {
    let peer = format!("reyes-bench-peer-{}", std::process::id());
    sh(&["ip", "netns", "add", &peer]);
    sh(&[
        "ip", "link", "add", "bv0", "type", "veth", "peer", "name", "bv1", "netns", &peer,
    ]);
    sh(&["ip", "addr", "add", &format!("{dst}/32"), "dev", "bv0"]);
    sh(&["ip", "link", "set", "bv0", "up"]);
    sh(&["ip", "route", "add", "172.31.0.0/24", "dev", "bv0"]);
    let mac = std::fs::read_to_string("/sys/class/net/bv0/address")
        .unwrap()
        .trim()
        .to_string();
    sh(&[
        "ip",
        "-n",
        &peer,
        "addr",
        "add",
        "172.31.0.2/24",
        "dev",
        "bv1",
    ]);
    sh(&["ip", "-n", &peer, "link", "set", "bv1", "up"]);
    sh(&[
        "ip",
        "-n",
        &peer,
        "route",
        "add",
        &format!("{dst}/32"),
        "dev",
        "bv1",
    ]);
    sh(&[
        "ip",
        "-n",
        &peer,
        "neigh",
        "add",
        &dst.to_string(),
        "lladdr",
        &mac,
        "dev",
        "bv1",
        "nud",
        "permanent",
    ]);
    let before = b.counters().unwrap().dropped.unwrap_or_default().0;
    let elapsed = std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(format!("/var/run/netns/{peer}")).unwrap();
            // SAFETY: setns on a valid namespace fd affects only this thread.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let sock = std::net::UdpSocket::bind("172.31.0.2:0").unwrap();
            sock.connect((dst, 9)).unwrap();
            for _ in 0..100 {
                let _ = sock.send(b"warm");
            }
            let t = Instant::now();
            for _ in 0..PACKETS {
                let _ = sock.send(b"probe");
            }
            t.elapsed()
        })
        .join()
        .unwrap()
    });
    let dropped = b.counters().unwrap().dropped.unwrap_or_default().0 - before;
    sh(&["ip", "netns", "del", &peer]);
    assert!(
        dropped >= u64::from(PACKETS),
        "only {dropped} of {} packets reached the drop",
        PACKETS + 100
    );
    elapsed.as_secs_f64() * 1e6 / f64::from(PACKETS)
}

/// One run, inside the namespace: print one JSON line.
fn child(size: usize, variant: &str, layout_name: &str, rss: bool) {
    if variant == "nftables" {
        return child_nft(size, layout_name);
    }
    let log = rss.then(|| shims(variant));
    let choice = if variant == "legacy" {
        IptablesVariant::Legacy
    } else {
        IptablesVariant::Nft
    };
    let b = IptablesBackend::with_options(choice, layout(layout_name));
    let rs1 = ruleset(size, 1, false);
    let rs2 = ruleset(size, 2, true);
    let plan = b.plan(&rs1).unwrap();
    let t = Instant::now();
    b.apply(&rs1).unwrap();
    let apply = t.elapsed();
    let t = Instant::now();
    let plan2 = b.plan(&rs2).unwrap();
    let rep = b.apply_plan(&plan2).unwrap();
    let reapply = t.elapsed();
    let packet_us = per_packet_us(&b, worst_destination(&rs2, layout_name));
    let phases: BTreeMap<&str, f64> = rep
        .phases
        .iter()
        .map(|(n, d)| (*n, d.as_secs_f64() * 1000.0))
        .collect();
    let out = serde_json::json!({
        "size": size,
        "variant": variant,
        "layout": layout_name,
        "sets": plan.sets.len(),
        "set_elements": plan.sets.iter().map(|s| s.members.len()).sum::<usize>(),
        "rules4": plan.v4.lines.len(),
        "chains4": plan.v4.chains.len(),
        "apply_ms": apply.as_secs_f64() * 1000.0,
        "reapply_ms": reapply.as_secs_f64() * 1000.0,
        "reapply_phases_ms": phases,
        "packet_us": packet_us,
        "reyes_hwm_kb": hwm_kb(),
    });
    let mut out = out;
    if let Some(log) = log {
        let text = std::fs::read_to_string(&log).unwrap();
        let mut peak: BTreeMap<String, u64> = BTreeMap::new();
        for l in text.lines() {
            let mut w = l.split_whitespace();
            if let (Some(t), Some(kb)) = (w.next(), w.next().and_then(|k| k.parse::<u64>().ok())) {
                let e = peak.entry(t.to_string()).or_default();
                *e = (*e).max(kb);
            }
        }
        out["tools_peak_kb"] = serde_json::json!(peak);
        let _ = std::fs::remove_dir_all(log.parent().unwrap());
    }
    println!("{out}");
}

/// [`child`] for the nftables backend (netlink): the dispatch is a verdict map.
fn child_nft(size: usize, layout_name: &str) {
    let b = NftBackend::netlink();
    let rs1 = ruleset(size, 1, false);
    let rs2 = ruleset(size, 2, true);
    let t = Instant::now();
    b.apply(&rs1).unwrap();
    let apply = t.elapsed();
    let t = Instant::now();
    b.apply(&rs2).unwrap();
    let reapply = t.elapsed();
    let packet_us = per_packet_us(&b, worst_destination(&rs2, layout_name));
    let out = serde_json::json!({
        "size": size,
        "variant": "nftables",
        "layout": layout_name,
        "sets": rs1.sets.len() + 2,
        "set_elements": rs1.element_count(),
        "rules4": rs1.rule_count(),
        "chains4": rs1.chains.len() + 1,
        "apply_ms": apply.as_secs_f64() * 1000.0,
        "reapply_ms": reapply.as_secs_f64() * 1000.0,
        "reapply_phases_ms": {},
        "packet_us": packet_us,
        "reyes_hwm_kb": hwm_kb(),
    });
    println!("{out}");
}

fn arg<'a>(args: &'a [String], name: &str, default: &'a str) -> &'a str {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or(default)
}

const SECTION: &str = "## iptables backend (ipset + iptables-restore)";

/// Put the table in `path` under [`SECTION`], replacing an earlier run's.
fn write_section(path: &str, table: &str) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".to_string());
    let host = |cmd: &[&str]| {
        Command::new(cmd[0])
            .args(&cmd[1..])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let body = format!(
        "{SECTION}\n\n\
         Synthetic estates (benches/iptables.rs): N member addresses in N/20 groups, 4 ingress rules per group \
         (two from other groups, one from a CIDR, ICMP echo from a group), every group a destination (`--all-groups`: \
         the largest layout; a follower applies only its own addresses' groups). Each run applies into a fresh network \
         namespace through `IptablesBackend` (render, ipset stage + swap, iptables-restore, ip6tables-restore, \
         read-back, cleanup), then re-applies with one member of every group replaced; variant `nftables` \
         through `NftBackend` over netlink (one batch, read-back) instead. Per packet: \
         send() time of a UDP packet from a peer namespace (veth) to the worst-placed destination (the \
         one the dispatch reaches last: the highest address for `tree`, the last chain's for `rules`, `sets` \
         and `auto`), in scope and allowed by no rule, so it walks the scope rules, the dispatch, one group \
         chain and the drop. Run on {}.\n\n\
         Machine: {} CPUs, kernel {}, {}, {}.\n\n{table}",
        reyes::document::rfc3339(SystemTime::now()),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        host(&["uname", "-r"]),
        host(&["iptables-legacy", "-V"]),
        host(&["ipset", "-v"]).lines().next().unwrap_or_default(),
    );
    let out = match text.find(SECTION) {
        Some(i) => {
            let rest = &text[i + SECTION.len()..];
            let end = rest
                .find("\n## ")
                .map(|j| i + SECTION.len() + j + 1)
                .unwrap_or(text.len());
            format!("{}{body}{}", &text[..i], &text[end..])
        }
        None => format!("{}\n\n{body}", text.trim_end_matches('\n')),
    };
    std::fs::write(path, out).unwrap();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(
            args[i + 1].parse().unwrap(),
            &args[i + 2],
            &args[i + 3],
            args.iter().any(|a| a == "--rss"),
        );
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("the iptables benchmark runs under `cargo bench --bench iptables` (as root)");
        return;
    }
    let sizes: Vec<usize> = arg(&args, "--sizes", "1000,10000,100000")
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let runs: usize = arg(&args, "--runs", "3").parse().unwrap();
    let variants: Vec<&str> = arg(&args, "--variants", "legacy,nft").split(',').collect();
    let layouts: Vec<&str> = arg(&args, "--layouts", "tree").split(',').collect();
    let exe = std::env::current_exe().unwrap();
    let mut rows = Vec::new();
    for variant in &variants {
        for layout_name in &layouts {
            for &size in &sizes {
                let mut results: Vec<serde_json::Value> = Vec::new();
                let mut rss = serde_json::Value::Null;
                for run in 0..=runs {
                    let ns = format!("reyes-bench-{}-{run}", std::process::id());
                    let _ = Command::new("ip").args(["netns", "del", &ns]).output();
                    let ok = Command::new("ip")
                        .args(["netns", "add", &ns])
                        .status()
                        .unwrap();
                    assert!(ok.success(), "ip netns add (run as root)");
                    let out = Command::new("ip")
                        .args(["netns", "exec", &ns])
                        .arg(&exe)
                        .args(["--child", &size.to_string(), variant, layout_name])
                        .args(if run == runs { &["--rss"][..] } else { &[][..] })
                        .output()
                        .unwrap();
                    let _ = Command::new("ip").args(["netns", "del", &ns]).output();
                    assert!(
                        out.status.success(),
                        "child failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                    eprintln!("{v}");
                    if run == runs {
                        rss = v;
                    } else {
                        results.push(v);
                    }
                }
                let tools_peak = match rss["tools_peak_kb"].as_object() {
                    Some(tools) => tools
                        .iter()
                        .map(|(t, kb)| (t.clone(), kb.as_u64().unwrap()))
                        .max_by_key(|x| x.1)
                        .map(|(t, kb)| format!("{:.1} ({t})", kb as f64 / 1024.0))
                        .unwrap_or_else(|| "-".into()),
                    None => "- (netlink)".into(),
                };
                let f = |k: &str| median(results.iter().map(|r| r[k].as_f64().unwrap()).collect());
                let phases: Vec<String> = results[0]["reapply_phases_ms"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(|k| {
                        format!(
                            "{k} {:.0}",
                            median(
                                results
                                    .iter()
                                    .map(|r| r["reapply_phases_ms"][k].as_f64().unwrap())
                                    .collect()
                            )
                        )
                    })
                    .collect();
                let r = &results[0];
                // nftables ignores the layout: its dispatch is a verdict map.
                let shown = if *variant == "nftables" {
                    "vmap"
                } else {
                    layout_name
                };
                rows.push(format!(
                    "| {variant} | {shown} | {size} | {} / {} | {} / {} | {:.0} | {:.0} | {:.1} | {tools_peak} | {:.1} | {} |",
                    r["sets"],
                    r["set_elements"],
                    r["rules4"],
                    r["chains4"],
                    f("apply_ms"),
                    f("reapply_ms"),
                    f("packet_us"),
                    rss["reyes_hwm_kb"].as_f64().unwrap() / 1024.0,
                    phases.join(", "),
                ));
            }
        }
    }
    let cmd = format!(
        "cargo bench --no-default-features --bench iptables -- {}",
        args.iter()
            .skip(1)
            .filter(|a| *a != "--bench")
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    );
    let table = format!(
        "Command: `{}`\n\n{runs} timed runs per row, medians; peak RSS from one more run with the tools under /usr/bin/time. \
         Wall times in ms (apply: fresh namespace; re-apply: every set changes); peak RSS in MiB.\n\n\
         | variant | dispatch | addresses | sets / elements | IPv4 rules / chains | apply | re-apply | per packet (µs) | tools peak RSS | reyes peak RSS | re-apply phases (ms) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n{}\n",
        cmd.trim_end(),
        rows.join("\n")
    );
    println!("{table}");
    if let Some(path) = args
        .iter()
        .position(|a| a == "--write")
        .and_then(|i| args.get(i + 1))
    {
        write_section(path, &table);
    }
}
