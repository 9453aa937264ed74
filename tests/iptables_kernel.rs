//! Kernel tests of the iptables backend, with iptables-legacy and with iptables-nft, in
//! network namespaces the tests create (never the host's own firewall): ownership (the host's
//! rules, chains and sets survive apply, re-apply and flush byte for byte), atomic set
//! replacement, rollback of failed applies, variant detection, and real TCP/UDP/ICMP flows
//! between two namespaces in `enforce: cidr` mode.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{docs, enter_netns as enter, netns_available, text, Netns};
use reyes::backend::{Backend, BackendError};
use reyes::compile::{compile_with, HostContext, Layout, Ruleset, Target};
use reyes::config::{Enforce, IptablesVariant};
use reyes::iptables::{self, render, IptablesBackend, Variant};

// ---------------------------------------------------------------------------------------
// helpers

/// Run `f` on a thread that has entered the namespace (commands it spawns run there too).
fn in_ns<R: Send>(ns: &Netns, f: impl FnOnce() -> R + Send) -> R {
    ns.enter(f)
}

fn doc(yaml: &str, serial: u64) -> reyes::document::Document {
    docs::document(yaml, &docs::options("test", serial, docs::fixed_time()))
}

fn host(addrs: &[&str], enforce: Enforce, managed: &[&str]) -> HostContext {
    HostContext {
        target: Target::Host(addrs.iter().map(|a| a.parse().unwrap()).collect()),
        enforce,
        managed_cidrs: managed.iter().map(|c| c.parse().unwrap()).collect(),
        local_cidrs: None,
        failsafe: vec![],
        log_accept: true,
        log_drop: true,
        allow_unknown_host: false,
        action: reyes::config::Action::Drop,
        mode: reyes::config::Mode::Host,
        gateway_cidrs: vec![],
        egress: false,
    }
}

fn ruleset(yaml: &str, ctx: &HostContext) -> Ruleset {
    // A set for every source group: these tests are about ipsets, and their groups are small
    // enough for the default layout to inline.
    compile_with(&doc(yaml, 1), ctx, Layout::PLAIN).unwrap()
}

fn choice(v: Variant) -> IptablesVariant {
    match v {
        Variant::Legacy => IptablesVariant::Legacy,
        Variant::Nft => IptablesVariant::Nft,
    }
}

fn bin(v: Variant, tool: &str) -> String {
    // tool: iptables, ip6tables, iptables-save, ...
    let (base, op) = tool
        .split_once('-')
        .map(|(b, o)| (b, format!("-{o}")))
        .unwrap_or((tool, String::new()));
    let sfx = match v {
        Variant::Legacy => "legacy",
        Variant::Nft => "nft",
    };
    format!("{base}-{sfx}{op}")
}

fn tools_available(v: Variant) -> bool {
    let ok = ["iptables", "ip6tables", "iptables-save", "iptables-restore"]
        .iter()
        .all(|t| {
            std::process::Command::new(bin(v, t))
                .arg("-V")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        && std::process::Command::new("ipset")
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("REYES_REQUIRE_NETNS").as_deref() == Ok("1") {
            panic!(
                "{} and ipset are required (REYES_REQUIRE_NETNS=1)",
                v.name()
            );
        }
        common::skipped(&format!("{} or ipset not installed", v.name()));
    }
    ok
}

fn ready(v: Variant) -> bool {
    netns_available() && tools_available(v)
}

/// `iptables-save` and `ip6tables-save` of everything, without the timestamp comments.
fn save_all(ns: &Netns, v: Variant) -> String {
    let mut out = String::new();
    for t in ["iptables-save", "ip6tables-save"] {
        let s = ns.ok(&[&bin(v, t)]);
        out.push_str(&format!("## {t}\n"));
        for l in s.lines().filter(|l| !l.starts_with('#')) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// [`save_all`] without reyes' chains, rules and jump: what must never change.
fn others(save: &str) -> String {
    save.lines()
        .filter(|l| {
            !l.starts_with(":REYES-")
                && !l.starts_with("-A REYES-")
                && *l != "-A INPUT -j REYES-INPUT"
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

fn ipset_names(ns: &Netns) -> Vec<String> {
    ns.ok(&["ipset", "list", "-n"])
        .lines()
        .map(str::to_string)
        .collect()
}

fn members(ns: &Netns, set: &str) -> Vec<String> {
    let mut m: Vec<String> = ns
        .ok(&["ipset", "save", set])
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("add {set} ")).map(str::to_string))
        .collect();
    m.sort();
    m
}

fn input_rules(ns: &Netns, v: Variant, tool: &str) -> Vec<String> {
    ns.ok(&[&bin(v, tool), "-S", "INPUT"])
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_string)
        .collect()
}

const ESTATE: &str = r#"
networks:
  - {id: vpc-a, cidrs: [10.1.0.0/16, "fd00:1::/64"]}
groups:
  - id: sg-web
    ingress:
      - {proto: tcp, ports: 8080, from: {groups: [sg-client]}}
      - {proto: tcp, ports: "8443-8444", from: {groups: [sg-client, sg-ops]}}
      - {proto: udp, ports: "5000-5010", from: {cidrs: [10.2.0.0/24, "fd00:2::/120"]}}
      - {proto: icmp, icmp_type: 8, from: {groups: [sg-client]}}
      - {proto: icmpv6, icmp_type: 128, from: {groups: [sg-client]}}
      - {proto: 47, from: {cidrs: [10.2.0.0/24, 10.4.0.0/24, 10.6.0.0/24, 10.8.0.0/24, 10.10.0.0/24]}}
  - id: sg-ops
    ingress:
      - {proto: tcp, ports: 22, from: {cidrs: [10.9.0.0/24]}}
  - id: sg-client
hosts:
  - {id: web, addresses: [10.1.0.10, "fd00:1::10"], groups: [sg-web]}
  - {id: web2, addresses: [10.1.0.11], groups: [sg-web, sg-ops]}
  - {id: client, addresses: [10.2.0.5, "fd00:2::5"], groups: [sg-client]}
  - {id: ops, addresses: [10.9.0.4], groups: [sg-ops]}
"#;

fn estate_with_client(addrs: &str) -> String {
    ESTATE.replace(
        "addresses: [10.2.0.5, \"fd00:2::5\"]",
        &format!("addresses: [{addrs}]"),
    )
}

/// The host's own firewall in the namespace: a rule in INPUT, a user chain with a rule that
/// references a user ipset, an IPv6 rule.
fn user_setup(ns: &Netns, v: Variant) {
    ns.ok(&["ipset", "create", "user-set", "hash:ip", "family", "inet"]);
    ns.ok(&["ipset", "add", "user-set", "192.0.2.7"]);
    ns.ok(&["ipset", "add", "user-set", "10.7.7.7"]);
    let ipt = bin(v, "iptables");
    let ip6t = bin(v, "ip6tables");
    ns.ok(&[
        &ipt, "-w", "-A", "INPUT", "-p", "tcp", "--dport", "9999", "-j", "DROP",
    ]);
    ns.ok(&[&ipt, "-w", "-N", "USER-CHAIN"]);
    ns.ok(&[
        &ipt,
        "-w",
        "-A",
        "USER-CHAIN",
        "-m",
        "set",
        "--match-set",
        "user-set",
        "src",
        "-j",
        "ACCEPT",
    ]);
    ns.ok(&[
        &ipt,
        "-w",
        "-A",
        "INPUT",
        "-p",
        "udp",
        "--dport",
        "53",
        "-j",
        "USER-CHAIN",
    ]);
    ns.ok(&[
        &ip6t, "-w", "-A", "INPUT", "-p", "tcp", "--dport", "9999", "-j", "DROP",
    ]);
}

fn backend(v: Variant) -> IptablesBackend {
    IptablesBackend::new(choice(v))
}

// ---------------------------------------------------------------------------------------
// ownership

fn ownership(v: Variant) {
    if !ready(v) {
        return;
    }
    let ns = Netns::new(&format!(
        "own-{}",
        if v == Variant::Legacy { "l" } else { "n" }
    ));
    user_setup(&ns, v);
    let initial = save_all(&ns, v);
    let user_set = ns.ok(&["ipset", "list", "user-set"]);
    let ctx = host(
        &["10.1.0.10", "10.1.0.11", "fd00:1::10"],
        Enforce::Ipsec,
        &[],
    );
    let rs1 = ruleset(ESTATE, &ctx);
    let rs2 = ruleset(
        &estate_with_client("10.2.0.6, 10.2.0.9, \"fd00:2::7\""),
        &ctx,
    );

    let b = backend(v);
    in_ns(&ns, || {
        assert!(!b.present().unwrap());
        b.apply(&rs1).unwrap();
        assert!(b.present().unwrap());
    });
    let after1 = save_all(&ns, v);
    assert_eq!(
        others(&after1),
        others(&initial),
        "the host's rules changed"
    );
    assert_eq!(ns.ok(&["ipset", "list", "user-set"]), user_set);
    for tool in ["iptables", "ip6tables"] {
        let input = input_rules(&ns, v, tool);
        assert_eq!(input[0], "-A INPUT -j REYES-INPUT", "{tool}: {input:?}");
        assert_eq!(input.iter().filter(|r| r.contains("REYES")).count(), 1);
    }
    assert_eq!(members(&ns, "reyes-m4_sg_client"), vec!["10.2.0.5"]);
    assert_eq!(members(&ns, "reyes-m6_sg_client"), vec!["fd00:2::5"]);
    assert!(!ipset_names(&ns).iter().any(|n| n.ends_with("-t")));

    // Re-apply the same: identical, still one jump.
    in_ns(&ns, || b.apply(&rs1).unwrap());
    assert_eq!(save_all(&ns, v), after1);

    // A new document: the sets hold the new members, nothing else of the host's changed.
    in_ns(&ns, || b.apply(&rs2).unwrap());
    let after2 = save_all(&ns, v);
    assert_eq!(others(&after2), others(&initial));
    assert_eq!(ns.ok(&["ipset", "list", "user-set"]), user_set);
    assert_eq!(
        members(&ns, "reyes-m4_sg_client"),
        vec!["10.2.0.6", "10.2.0.9"]
    );
    assert_eq!(members(&ns, "reyes-m6_sg_client"), vec!["fd00:2::7"]);
    assert!(!ipset_names(&ns).iter().any(|n| n.ends_with("-t")));

    // What is live reads back as what would be applied.
    in_ns(&ns, || {
        assert_eq!(b.diff(&rs2).unwrap(), Vec::<String>::new());
        let d = b.diff(&rs1).unwrap();
        assert!(
            d.contains(&"+ [ipset: reyes' sets] add reyes-m4_sg_client 10.2.0.5".to_string()),
            "{d:?}"
        );
        let live = b.live().unwrap().unwrap();
        assert!(live.contains("-A INPUT -j REYES-INPUT"), "{live}");
        let c = b.counters().unwrap();
        assert!(c.accepted.is_some() && c.dropped.is_some(), "{c:?}");
    });

    // Flush: exactly the initial state again.
    in_ns(&ns, || {
        b.flush().unwrap();
        assert!(!b.present().unwrap());
        assert_eq!(b.live().unwrap(), None);
        b.flush().unwrap();
    });
    assert_eq!(save_all(&ns, v), initial);
    assert_eq!(ipset_names(&ns), vec!["user-set".to_string()]);
    assert_eq!(ns.ok(&["ipset", "list", "user-set"]), user_set);

    // The CLI flushes the same way (nothing left to remove: still fine).
    let o = ns.reyes(&["flush", "--backend", "iptables"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn legacy_apply_reapply_flush_touch_only_reyes() {
    ownership(Variant::Legacy);
}

#[test]
fn nft_apply_reapply_flush_touch_only_reyes() {
    ownership(Variant::Nft);
}

// ---------------------------------------------------------------------------------------
// atomic set replacement

fn atomic_swap(v: Variant) {
    if !ready(v) {
        return;
    }
    let ns = Netns::new(&format!(
        "swap-{}",
        if v == Variant::Legacy { "l" } else { "n" }
    ));
    let ctx = host(&["10.1.0.10"], Enforce::Ipsec, &[]);
    // 10.2.0.6 is a member in both documents; the others come and go.
    let a = ruleset(&estate_with_client("10.2.0.5, 10.2.0.6"), &ctx);
    let b_rs = ruleset(&estate_with_client("10.2.0.6, 10.2.0.7, 10.2.0.8"), &ctx);
    let b = backend(v);
    in_ns(&ns, || b.apply(&a).unwrap());
    let done = AtomicBool::new(false);
    let probes = AtomicUsize::new(0);
    let misses = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&ns.name);
            while !done.load(Ordering::SeqCst) {
                let o = std::process::Command::new("ipset")
                    .args(["test", "reyes-m4_sg_client", "10.2.0.6"])
                    .output()
                    .unwrap();
                probes.fetch_add(1, Ordering::SeqCst);
                if !o.status.success() {
                    misses.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        in_ns(&ns, || {
            for i in 0..6 {
                b.apply(if i % 2 == 0 { &b_rs } else { &a }).unwrap();
            }
        });
        done.store(true, Ordering::SeqCst);
    });
    assert!(probes.load(Ordering::SeqCst) > 0);
    assert_eq!(
        misses.load(Ordering::SeqCst),
        0,
        "a member present before and after was missing during a re-apply"
    );
    assert_eq!(
        members(&ns, "reyes-m4_sg_client"),
        vec!["10.2.0.5", "10.2.0.6"]
    );
    assert!(
        !ipset_names(&ns).iter().any(|n| n.ends_with("-t")),
        "{:?}",
        ipset_names(&ns)
    );
}

#[test]
fn legacy_reapply_swaps_set_members_atomically() {
    atomic_swap(Variant::Legacy);
}

#[test]
fn nft_reapply_swaps_set_members_atomically() {
    atomic_swap(Variant::Nft);
}

// ---------------------------------------------------------------------------------------
// failures leave the previous state

fn failures(v: Variant) {
    if !ready(v) {
        return;
    }
    let ns = Netns::new(&format!(
        "fail-{}",
        if v == Variant::Legacy { "l" } else { "n" }
    ));
    user_setup(&ns, v);
    let ctx = host(&["10.1.0.10", "fd00:1::10"], Enforce::Ipsec, &[]);
    let rs1 = ruleset(ESTATE, &ctx);
    let b = backend(v);
    in_ns(&ns, || b.apply(&rs1).unwrap());
    let tables = save_all(&ns, v);
    let sets = ns.ok(&["ipset", "save"]);

    // The next document has new members, a new set (sg-ops sources) and a new chain.
    let ctx2 = host(
        &["10.1.0.10", "10.1.0.11", "fd00:1::10"],
        Enforce::Ipsec,
        &[],
    );
    let rs2 = ruleset(&estate_with_client("10.2.0.6, \"fd00:2::6\""), &ctx2);
    let good = b.plan(&rs2).unwrap();
    assert!(good.sets.iter().any(|s| s.name == "reyes-m4_sg_ops"));
    let bad_rule = |chain: &str| render::Line {
        chain: chain.into(),
        spec: "-m no_such_match -j RETURN".into(),
        comment: None,
    };

    let mut cases: Vec<(&str, iptables::Plan)> = Vec::new();
    // (what fails, and the one error kind expected: refused before, mismatch after the commit)
    let mut p = good.clone();
    p.sets[0].members.push("fd00::1".into());
    cases.push(("ipset stage", p));
    let mut p = good.clone();
    p.v4.lines.push(bad_rule(render::BASE_CHAIN));
    cases.push(("iptables-restore", p));
    let mut p = good.clone();
    p.v6.lines.push(bad_rule(render::BASE_CHAIN));
    cases.push(("ip6tables-restore after the IPv4 commit", p));
    let mut p = good.clone();
    // Accepted by the kernel, but iptables-save prints it differently: the read-back differs.
    p.v4.lines.push(render::Line {
        chain: render::BASE_CHAIN.into(),
        spec: "-p tcp -m tcp --dport 0:65535 -j RETURN".into(),
        comment: None,
    });
    cases.push(("read-back", p));

    for (what, plan) in cases {
        let r = in_ns(&ns, || b.apply_plan(&plan));
        let e = r.expect_err(what);
        match what {
            "read-back" => assert!(matches!(e, BackendError::Mismatch(_)), "{what}: {e}"),
            _ => assert!(matches!(e, BackendError::Refused(_)), "{what}: {e}"),
        }
        eprintln!("{}: {what}: {e}", v.name());
        assert!(e.to_string().contains("are as they were"), "{what}: {e}");
        assert_eq!(save_all(&ns, v), tables, "{what}: chains changed");
        assert_eq!(ns.ok(&["ipset", "save"]), sets, "{what}: sets changed");
    }
    // And the good plan still applies.
    in_ns(&ns, || b.apply_plan(&good).unwrap());
    assert_eq!(members(&ns, "reyes-m4_sg_client"), vec!["10.2.0.6"]);
    assert!(input_rules(&ns, v, "iptables")
        .contains(&"-A INPUT -p tcp -m tcp --dport 9999 -j DROP".to_string()));
}

#[test]
fn legacy_failed_apply_leaves_previous_chains_and_sets() {
    failures(Variant::Legacy);
}

#[test]
fn nft_failed_apply_leaves_previous_chains_and_sets() {
    failures(Variant::Nft);
}

// ---------------------------------------------------------------------------------------
// every construct the translation emits, read back exactly

fn constructs(v: Variant) {
    if !ready(v) {
        return;
    }
    let ns = Netns::new(&format!(
        "syn-{}",
        if v == Variant::Legacy { "l" } else { "n" }
    ));
    let yaml = r#"
networks:
  - {id: vpc-a, cidrs: [10.1.0.0/16, "fd00:1::/64"]}
prefix_lists:
  - {id: pl-x, cidrs: [10.60.0.0/24, 10.62.0.0/24, 10.64.0.0/24, 10.66.0.0/24, 10.68.0.0/24, "fd00:60::/64"]}
groups:
  - id: sg-a
    ingress:
      - {proto: 0, from: {cidrs: [10.0.0.0/8, "fd00::/8"]}}
      - {proto: icmp, icmp_type: 255, icmp_code: 3, from: {cidrs: [10.0.0.0/8]}}
      - {proto: icmp, icmp_type: 255, from: {cidrs: [10.0.0.0/8]}}
      - {proto: icmp, icmp_type: 3, icmp_code: 4, from: {cidrs: [10.0.0.0/8]}}
      - {proto: icmp, from: {cidrs: [10.0.0.0/8]}}
      - {proto: icmpv6, icmp_type: 1, icmp_code: 4, from: {cidrs: ["fd00::/8"]}}
      - {proto: icmpv6, icmp_type: 255, from: {cidrs: ["fd00::/8"]}}
      - {proto: 47, from: {cidrs: [0.0.0.0/0, "::/0"]}}
      - {proto: 132, from: {cidrs: [10.3.0.0/16]}}
      - {proto: 4, from: {cidrs: [10.3.0.0/16]}}
      - {proto: udp, ports: "0-65535", from: {cidrs: [10.3.0.0/16]}}
      - {proto: tcp, ports: 0, from: {prefix_lists: [pl-x]}}
      - {proto: tcp, ports: "1-65535", from: {groups: [sg-b]}}
      - {proto: all, from: {cidrs: ["fd00:1::1", 10.5.0.1]}}
  - id: sg-b
    ingress:
      - {proto: tcp, ports: 22, from: {groups: [sg-a]}}
hosts:
  - {id: h, addresses: [10.1.0.10, "fd00:1::10"], groups: [sg-a, sg-b]}
  - {id: other, addresses: [10.1.0.20, 10.1.0.21, 10.1.0.22, 10.1.0.23, 10.1.0.24, 10.1.0.40, "fd00:1::20"], groups: [sg-b]}
"#;
    let mut ctx = host(
        &["10.1.0.10", "fd00:1::10"],
        Enforce::Cidr,
        &["10.0.0.0/8", "0.0.0.0/0", "::/0"],
    );
    ctx.failsafe = vec![
        serde_saphyr::from_str("{proto: tcp, port: 22, from: 10.9.0.0/24}").unwrap(),
        serde_saphyr::from_str("{proto: icmp}").unwrap(),
        serde_saphyr::from_str("{proto: udp, port: 53}").unwrap(),
    ];
    let rs = ruleset(yaml, &ctx);
    let mut all = ctx.clone();
    all.target = Target::AllGroups;
    let rs_all = ruleset(yaml, &all);
    let b = backend(v);
    for (opts, rs) in [
        (render::Options::default(), &rs),
        (
            render::Options {
                dispatch: render::DispatchLayout::Sets,
                literal_rules_max: 1,
            },
            &rs,
        ),
        (
            render::Options {
                dispatch: render::DispatchLayout::Auto(2),
                ..Default::default()
            },
            &rs_all,
        ),
        // A dispatch tree of two rules per chain: `-m iprange` nodes in both families.
        (
            render::Options {
                dispatch: render::DispatchLayout::Tree(2),
                ..Default::default()
            },
            &rs_all,
        ),
        // Back to the host's ruleset: the other chains and sets go away.
        (render::Options::default(), &rs),
    ] {
        let b2 = IptablesBackend::with_options(choice(v), opts);
        let plan = b2.plan(rs).unwrap();
        // apply_plan reads everything back and compares it with the plan (an unexpected chain
        // is a difference too).
        in_ns(&ns, || b2.apply_plan(&plan).unwrap());
        let mut want: Vec<String> = plan.sets.iter().map(|s| s.name.clone()).collect();
        want.sort();
        let mut got = ipset_names(&ns);
        got.sort();
        assert_eq!(got, want);
    }
    in_ns(&ns, || b.flush().unwrap());
    assert!(!save_all(&ns, v).contains("REYES"));
    assert!(ipset_names(&ns).is_empty());
}

#[test]
fn legacy_every_construct_reads_back_as_rendered() {
    constructs(Variant::Legacy);
}

#[test]
fn nft_every_construct_reads_back_as_rendered() {
    constructs(Variant::Nft);
}

// ---------------------------------------------------------------------------------------
// variant detection

#[test]
fn variants_are_not_mixed() {
    if !ready(Variant::Legacy) || !ready(Variant::Nft) {
        return;
    }
    // Nothing in use: auto takes what `iptables -V` says; looking creates no legacy table.
    let ns = Netns::new("var-0");
    in_ns(&ns, || {
        let t = iptables::detect(IptablesVariant::Auto).unwrap();
        assert_eq!(Some(t.variant), iptables::default_variant());
        assert!(!iptables::apply::legacy_loaded(reyes::net::Family::V4));
        assert!(!iptables::apply::legacy_loaded(reyes::net::Family::V6));
    });

    let legacy = Netns::new("var-l");
    legacy.ok(&[
        "iptables-legacy",
        "-w",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "2222",
        "-j",
        "DROP",
    ]);
    in_ns(&legacy, || {
        assert_eq!(
            iptables::detect(IptablesVariant::Auto).unwrap().variant,
            Variant::Legacy
        );
        assert_eq!(
            iptables::detect(IptablesVariant::Legacy).unwrap().variant,
            Variant::Legacy
        );
        let e = iptables::detect(IptablesVariant::Nft).unwrap_err();
        assert!(matches!(e, BackendError::Unsupported(_)), "{e}");
        let m = e.to_string();
        assert!(
            m.contains("in use through iptables-legacy")
                && m.contains("iptables: 1 rule(s)")
                && m.contains("iptables_variant: legacy"),
            "{m}"
        );
    });
    // Both in use: auto refuses.
    legacy.ok(&[
        "iptables-nft",
        "-w",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "2223",
        "-j",
        "DROP",
    ]);
    in_ns(&legacy, || {
        let m = iptables::detect(IptablesVariant::Auto)
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("both iptables-legacy") && m.contains("iptables-nft"),
            "{m}"
        );
    });

    // reyes' own chains in one variant count as use: the other is refused with advice to flush.
    let nft = Netns::new("var-n");
    let rs = ruleset(ESTATE, &host(&["10.1.0.10"], Enforce::Ipsec, &[]));
    in_ns(&nft, || {
        IptablesBackend::new(IptablesVariant::Nft)
            .apply(&rs)
            .unwrap();
        assert_eq!(
            iptables::detect(IptablesVariant::Auto).unwrap().variant,
            Variant::Nft
        );
        let m = iptables::detect(IptablesVariant::Legacy)
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("reyes flush") && m.contains("iptables_variant: nft"),
            "{m}"
        );
        // The refusal is what the backend reports too.
        let e = IptablesBackend::new(IptablesVariant::Legacy)
            .apply(&rs)
            .unwrap_err();
        assert!(matches!(e, BackendError::Unsupported(_)), "{e}");
    });
    // The host starts using the other variant: auto refuses to apply, but flushing reyes'
    // own chains is always possible, and then the host's variant is the one in use.
    nft.ok(&[
        "iptables-legacy",
        "-w",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "2222",
        "-j",
        "DROP",
    ]);
    in_ns(&nft, || {
        assert!(IptablesBackend::new(IptablesVariant::Auto)
            .apply(&rs)
            .is_err());
        IptablesBackend::new(IptablesVariant::Auto).flush().unwrap();
        assert_eq!(
            iptables::detect(IptablesVariant::Auto).unwrap().variant,
            Variant::Legacy
        );
    });
    assert!(nft.ok(&["ipset", "list", "-n"]).is_empty());
}

/// `--backend auto` probes nf_tables with `nft -c`: nothing is committed.
#[test]
fn nft_probe_commits_nothing() {
    if !netns_available() {
        return;
    }
    let has_nft = std::process::Command::new("nft")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    let ns = Netns::new("probe");
    let usable = in_ns(&ns, reyes::probe::nft_usable);
    assert_eq!(usable, has_nft);
    if has_nft {
        assert_eq!(ns.nft_ruleset().trim(), "");
    }
}

// ---------------------------------------------------------------------------------------
// traffic between namespaces

const PROBE_ESTATE: &str = r#"
networks:
  - {id: vpc-a, cidrs: [10.1.0.0/16, "fd00:1::/64"]}
groups:
  - id: sg-web
    ingress:
      - {proto: tcp, ports: 8080, from: {groups: [sg-client]}}
      - {proto: udp, ports: "5000-5010", from: {cidrs: [10.2.0.0/24, "fd00:2::/120"]}}
      - {proto: icmp, icmp_type: 8, from: {groups: [sg-client]}}
      - {proto: icmpv6, icmp_type: 128, from: {groups: [sg-client]}}
  - id: sg-client
hosts:
  - {id: web, addresses: [10.1.0.10, "fd00:1::10"], groups: [sg-web]}
  - {id: client, addresses: [10.2.0.5, "fd00:2::5"], groups: [sg-client]}
"#;

const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// A TCP handshake from `src` to `dst` within the timeout (a refusal also counts: the SYN got
/// through).
fn tcp_reaches(src: IpAddr, dst: SocketAddr) -> bool {
    // SAFETY: plain socket calls on a descriptor this function owns and closes.
    unsafe {
        let v6 = src.is_ipv6();
        let fd = libc::socket(
            if v6 { libc::AF_INET6 } else { libc::AF_INET },
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        assert!(fd >= 0);
        let (s, slen) = sockaddr(SocketAddr::new(src, 0));
        assert_eq!(
            libc::bind(fd, &s as *const _ as *const libc::sockaddr, slen),
            0,
            "bind {src}: {}",
            std::io::Error::last_os_error()
        );
        let (d, dlen) = sockaddr(dst);
        let rc = libc::connect(fd, &d as *const _ as *const libc::sockaddr, dlen);
        let mut ok = rc == 0;
        if !ok {
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EINPROGRESS)
            );
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            if libc::poll(&mut p, 1, PROBE_TIMEOUT.as_millis() as i32) == 1 {
                let mut e: libc::c_int = 0;
                let mut l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    &mut e as *mut _ as *mut libc::c_void,
                    &mut l,
                );
                ok = e == 0 || e == libc::ECONNREFUSED;
            }
        }
        libc::close(fd);
        ok
    }
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; we fill the variant matching the family.
    unsafe {
        let mut s: libc::sockaddr_storage = std::mem::zeroed();
        match a {
            SocketAddr::V4(a) => {
                let p = &mut s as *mut _ as *mut libc::sockaddr_in;
                (*p).sin_family = libc::AF_INET as libc::sa_family_t;
                (*p).sin_port = a.port().to_be();
                (*p).sin_addr.s_addr = u32::from(*a.ip()).to_be();
                (
                    s,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
            SocketAddr::V6(a) => {
                let p = &mut s as *mut _ as *mut libc::sockaddr_in6;
                (*p).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                (*p).sin6_port = a.port().to_be();
                (*p).sin6_addr.s6_addr = a.ip().octets();
                (
                    s,
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    }
}

/// A UDP datagram from `src` to the echo server at `dst` gets its answer within the timeout.
fn udp_reaches(src: IpAddr, dst: SocketAddr) -> bool {
    let s = UdpSocket::bind(SocketAddr::new(src, 0)).unwrap();
    s.connect(dst).unwrap();
    s.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
    s.send(b"probe").unwrap();
    let mut buf = [0u8; 16];
    matches!(s.recv(&mut buf), Ok(5))
}

fn probes(v: Variant) {
    if !ready(v) {
        return;
    }
    let tag = if v == Variant::Legacy { "l" } else { "n" };
    let server = Netns::new(&format!("srv-{tag}"));
    let client = Netns::new(&format!("cli-{tag}"));
    server.ok(&[
        "ip",
        "link",
        "add",
        "vs",
        "type",
        "veth",
        "peer",
        "name",
        "vc",
        "netns",
        &client.name,
    ]);
    server.ok(&["ip", "addr", "add", "10.1.0.10/16", "dev", "vs"]);
    server.ok(&["ip", "addr", "add", "fd00:1::10/64", "dev", "vs", "nodad"]);
    server.ok(&["ip", "link", "set", "vs", "up"]);
    for r in ["10.2.0.0/16", "10.3.0.0/16"] {
        server.ok(&["ip", "route", "add", r, "dev", "vs"]);
    }
    for r in ["fd00:2::/64", "fd00:3::/64"] {
        server.ok(&["ip", "-6", "route", "add", r, "dev", "vs"]);
    }
    for a in ["10.2.0.5/16", "10.2.0.6/16", "10.2.1.7/16", "10.3.0.9/16"] {
        client.ok(&["ip", "addr", "add", a, "dev", "vc"]);
    }
    for a in [
        "fd00:2::5/64",
        "fd00:2::6/64",
        "fd00:2::1:7/64",
        "fd00:3::9/64",
    ] {
        client.ok(&["ip", "addr", "add", a, "dev", "vc", "nodad"]);
    }
    client.ok(&["ip", "link", "set", "vc", "up"]);
    client.ok(&["ip", "route", "add", "10.1.0.0/16", "dev", "vc"]);
    client.ok(&["ip", "-6", "route", "add", "fd00:1::/64", "dev", "vc"]);
    // The host's own rule after reyes' jump must still apply to what reyes accepts.
    server.ok(&[
        &bin(v, "iptables"),
        "-w",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "9999",
        "-j",
        "DROP",
    ]);
    server.ok(&[
        &bin(v, "ip6tables"),
        "-w",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "9999",
        "-j",
        "DROP",
    ]);

    let ctx = host(
        &["10.1.0.10", "fd00:1::10"],
        Enforce::Cidr,
        &["10.2.0.0/16", "fd00:2::/64"],
    );
    let rs = ruleset(PROBE_ESTATE, &ctx);
    let b = backend(v);
    in_ns(&server, || b.apply(&rs).unwrap());

    // Servers: TCP listeners (the kernel completes handshakes without accept) and a UDP echo.
    let listeners = in_ns(&server, || {
        [8080u16, 8081, 9999].map(|p| std::net::TcpListener::bind(("::", p)).unwrap())
    });
    let echo = in_ns(&server, || UdpSocket::bind(("::", 5005)).unwrap());
    echo.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();

    let s4: IpAddr = "10.1.0.10".parse().unwrap();
    let s6: IpAddr = "fd00:1::10".parse().unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // (what, proto, source, destination, port, expected)
    let flows: Vec<(&str, &str, IpAddr, IpAddr, u16, bool)> = vec![
        (
            "group member to 8080",
            "tcp",
            ip("10.2.0.5"),
            s4,
            8080,
            true,
        ),
        ("non-member to 8080", "tcp", ip("10.2.0.6"), s4, 8080, false),
        (
            "member to a port no rule allows",
            "tcp",
            ip("10.2.0.5"),
            s4,
            8081,
            false,
        ),
        (
            "out of scope (not managed)",
            "tcp",
            ip("10.3.0.9"),
            s4,
            8081,
            true,
        ),
        (
            "out of scope, but the host drops 9999",
            "tcp",
            ip("10.3.0.9"),
            s4,
            9999,
            false,
        ),
        ("v6 member to 8080", "tcp", ip("fd00:2::5"), s6, 8080, true),
        (
            "v6 non-member to 8080",
            "tcp",
            ip("fd00:2::6"),
            s6,
            8080,
            false,
        ),
        ("v6 out of scope", "tcp", ip("fd00:3::9"), s6, 8081, true),
        (
            "udp from the allowed /24",
            "udp",
            ip("10.2.0.6"),
            s4,
            5005,
            true,
        ),
        (
            "udp from outside the /24",
            "udp",
            ip("10.2.1.7"),
            s4,
            5005,
            false,
        ),
        (
            "v6 udp from the allowed /120",
            "udp",
            ip("fd00:2::6"),
            s6,
            5005,
            true,
        ),
        (
            "v6 udp from outside the /120",
            "udp",
            ip("fd00:2::1:7"),
            s6,
            5005,
            false,
        ),
        ("echo from a member", "icmp", ip("10.2.0.5"), s4, 0, true),
        (
            "echo from a non-member",
            "icmp",
            ip("10.2.0.6"),
            s4,
            0,
            false,
        ),
        (
            "v6 echo from a member",
            "icmp",
            ip("fd00:2::5"),
            s6,
            0,
            true,
        ),
        (
            "v6 echo from a non-member",
            "icmp",
            ip("fd00:2::6"),
            s6,
            0,
            false,
        ),
    ];
    let results: Vec<(String, bool, bool)> = std::thread::scope(|sc| {
        let server_thread = sc.spawn(|| {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = echo.recv_from(&mut buf) {
                if &buf[..n] == b"stop" {
                    break;
                }
                let _ = echo.send_to(&buf[..n], from);
            }
        });
        let handles: Vec<_> = flows
            .iter()
            .map(|(what, proto, src, dst, port, want)| {
                let client = &client;
                sc.spawn(move || {
                    let got = match *proto {
                        "tcp" => {
                            enter(&client.name);
                            tcp_reaches(*src, SocketAddr::new(*dst, *port))
                        }
                        "udp" => {
                            enter(&client.name);
                            udp_reaches(*src, SocketAddr::new(*dst, *port))
                        }
                        _ => {
                            let (s, d) = (src.to_string(), dst.to_string());
                            let fam = if src.is_ipv6() { "-6" } else { "-4" };
                            let o = client.run(
                                &["ping", fam, "-n", "-c", "1", "-W", "2", "-I", &s, &d],
                                None,
                            );
                            o.status.success()
                        }
                    };
                    (format!("{proto} {what}: {src} -> {dst} {port}"), *want, got)
                })
            })
            .collect();
        let results = handles.into_iter().map(|h| h.join().unwrap()).collect();
        in_ns(&server, || {
            let s = UdpSocket::bind(("::1", 0)).unwrap();
            s.send_to(b"stop", ("::1", 5005)).unwrap();
        });
        server_thread.join().unwrap();
        results
    });
    drop(listeners);
    let wrong: Vec<String> = results
        .iter()
        .filter(|(_, want, got)| want != got)
        .map(|(what, want, _)| format!("{what}: expected {}", if *want { "allow" } else { "deny" }))
        .collect();
    assert!(
        wrong.is_empty(),
        "{}:\n{}\n{}",
        v.name(),
        wrong.join("\n"),
        save_all(&server, v)
    );

    let c = in_ns(&server, || b.counters().unwrap());
    assert!(c.accepted.unwrap().0 >= 5, "{c:?}");
    assert!(c.dropped.unwrap().0 >= 5, "{c:?}");

    // Audit mode: the flow no rule allows passes, and is counted in its destination group's
    // audit counter chain.
    let mut audit = ctx.clone();
    audit.action = reyes::config::Action::Audit;
    let rs = ruleset(PROBE_ESTATE, &audit);
    in_ns(&server, || b.apply(&rs).unwrap());
    let _listener = in_ns(&server, || {
        std::net::TcpListener::bind(("::", 8081)).unwrap()
    });
    let audited = std::thread::scope(|sc| {
        sc.spawn(|| {
            enter(&client.name);
            tcp_reaches(ip("10.2.0.5"), SocketAddr::new(s4, 8081))
        })
        .join()
        .unwrap()
    });
    let c = in_ns(&server, || b.counters().unwrap());
    assert!(audited, "{}: audit mode dropped it", v.name());
    assert!(
        c.audit.len() == 1 && c.audit[0].0.starts_with("REYES-AUDIT_") && c.audit[0].1 .0 >= 1,
        "{c:?}"
    );
}

#[test]
fn legacy_traffic_between_namespaces_matches_the_policy() {
    probes(Variant::Legacy);
}

#[test]
fn nft_traffic_between_namespaces_matches_the_policy() {
    probes(Variant::Nft);
}
