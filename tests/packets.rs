//! Real packets through an applied ruleset, compared with the evaluator.
//!
//! A host namespace loads the nft script rendered from a compiled document; a peer namespace
//! sends TCP connects, UDP datagrams (echoed), ICMP echo requests, and raw packets of other
//! ICMP types and IP protocols (recorded by the host's raw sockets). Each outcome is compared
//! with `eval`'s verdict for that flow. This kernel has no ESP, so the policy is put in scope
//! with `enforce: cidr`; in ipsec mode, plain traffic must pass untouched.
//!
//! `differential_kernel_equals_eval` generates inventories and flows (seed from
//! REYES_KERNEL_SEED, number of cases from REYES_KERNEL_CASES) and prints the seed and the
//! minimal failing case on a mismatch.

mod common;
mod testbed;

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use proptest::prelude::*;
use proptest::test_runner::{
    Config as PtConfig, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner,
};

use reyes::compile::{compile, HostContext, Origin, Ruleset, Target};
use reyes::config::{Enforce, Failsafe};
use reyes::document::{build, BuildOptions, Document};
use reyes::eval::{evaluate, ConnState, Decision, Evaluation};
use reyes::inventory::{Group, Host, Inventory, Network, PrefixList, Rule, Sources};
use reyes::net::Cidr;
use reyes::proto::{PortRange, Proto};

use common::docs;
use testbed::{Outcome, Probe, ProbeFlow, Testbed, TCP_PORTS, UDP_PORTS};

/// How long a probe waits for a sign of life. A dropped probe costs this much; probes of one
/// case run concurrently.
const TIMEOUT: Duration = Duration::from_millis(400);
/// A probe that should have gone through but timed out is tried again with this, in case the
/// machine was merely busy.
const RETRY_TIMEOUT: Duration = Duration::from_secs(3);

const HOST: [&str; 6] = [
    "10.10.0.1",
    "10.10.0.2",
    "10.10.1.1",
    "fd00:10::1",
    "fd00:10::2",
    "fd00:10:0:1::1",
];
/// Managed (10.20/16, fd00:20::/32), local (10.30/16, fd00:30::/32) and unmanaged sources.
const PEER: [&str; 10] = [
    "10.20.0.1",
    "10.20.0.2",
    "10.20.1.1",
    "10.30.0.1",
    "192.168.77.1",
    "fd00:20::1",
    "fd00:20::2",
    "fd00:20:0:1::1",
    "fd00:30::1",
    "fd77::1",
];
const MANAGED: [&str; 2] = ["10.0.0.0/8", "fd00::/16"];

fn bed() -> Option<Testbed> {
    if !common::netns_available() {
        return None;
    }
    Some(Testbed::new(&HOST, &PEER))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cidrs(v: &[&str]) -> Vec<Cidr> {
    v.iter().map(|c| c.parse().unwrap()).collect()
}

fn build_opts(serial: u64, excluded: Vec<String>) -> BuildOptions {
    BuildOptions {
        excluded_group_ids: excluded,
        ..docs::options("test", serial, SystemTime::now())
    }
}

fn document(yaml: &str, serial: u64) -> Document {
    docs::document(yaml, &build_opts(serial, vec![]))
}

fn context(enforce: Enforce, local: &[&str], failsafe: Vec<Failsafe>) -> HostContext {
    HostContext {
        target: Target::Host(HOST.iter().map(|a| ip(a)).collect()),
        enforce,
        managed_cidrs: cidrs(&MANAGED),
        local_cidrs: Some(cidrs(local)),
        failsafe,
        log_accept: false,
        log_drop: true,
        allow_unknown_host: true,
        action: reyes::config::Action::Drop,
        mode: reyes::config::Mode::Host,
        gateway_cidrs: vec![],
        egress: false,
    }
}

/// Compile, render, load into the host.
fn apply(bed: &Testbed, doc: &Document, ctx: &HostContext) -> Ruleset {
    let rs = compile(doc, ctx).unwrap();
    bed.apply(&reyes::nft::render::render(&rs).unwrap());
    rs
}

fn pf(src: &str, dst: &str, probe: Probe) -> ProbeFlow {
    ProbeFlow {
        src: ip(src),
        dst: ip(dst),
        probe,
    }
}

/// A probe's outcome and eval's verdict, with a retry for "should pass but timed out".
struct Checked {
    flow: ProbeFlow,
    outcome: Outcome,
    eval: Evaluation,
}

impl Checked {
    fn agrees(&self) -> bool {
        self.outcome.through() == (self.eval.decision == Decision::Allow)
    }
}

impl std::fmt::Display for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: kernel {:?}, eval {} by {:?}",
            self.flow, self.outcome, self.eval.decision, self.eval.decided_by
        )
    }
}

fn check(bed: &Testbed, rs: &Ruleset, flows: &[ProbeFlow]) -> Vec<Checked> {
    let mut out: Vec<Checked> = bed
        .probe_all(flows, TIMEOUT)
        .into_iter()
        .zip(flows)
        .map(|(outcome, flow)| Checked {
            flow: *flow,
            outcome,
            eval: evaluate(rs, &flow.flow()).unwrap(),
        })
        .collect();
    let retry: Vec<usize> = (0..out.len())
        .filter(|i| !out[*i].agrees() && !out[*i].outcome.through())
        .collect();
    if !retry.is_empty() {
        let again: Vec<ProbeFlow> = retry.iter().map(|i| out[*i].flow).collect();
        for (i, o) in retry.into_iter().zip(bed.probe_all(&again, RETRY_TIMEOUT)) {
            out[i].outcome = o;
        }
    }
    out
}

fn assert_agree(results: &[Checked]) {
    let bad: Vec<String> = results
        .iter()
        .filter(|c| !c.agrees())
        .map(|c| c.to_string())
        .collect();
    assert!(
        bad.is_empty(),
        "kernel and eval disagree:\n{}",
        bad.join("\n")
    );
}

const POLICY: &str = r#"
groups:
  - id: sg-host
    ingress:
      - {proto: tcp, ports: 443, from: {cidrs: [10.20.0.0/16, "fd00:20::/32"]}}
      - {proto: icmp, icmp_type: 8, from: {cidrs: [10.20.0.2]}}
hosts:
  - {id: host, addresses: [10.10.0.1, 10.10.0.2, 10.10.1.1, "fd00:10::1", "fd00:10::2", "fd00:10:0:1::1"], groups: [sg-host]}
"#;

fn probes_from(srcs: &[&str], v4: &str, v6: &str) -> Vec<ProbeFlow> {
    let mut v = Vec::new();
    for s in srcs {
        let d = if ip(s).is_ipv4() { v4 } else { v6 };
        for p in [
            Probe::Tcp(443),
            Probe::Tcp(22),
            Probe::Udp(5432),
            Probe::Echo,
        ] {
            v.push(pf(s, d, p));
        }
    }
    v
}

#[test]
fn cidr_mode_enforces_managed_sources_and_leaves_local_and_unmanaged_alone() {
    let Some(bed) = bed() else { return };
    let rs = apply(
        &bed,
        &document(POLICY, 1),
        &context(Enforce::Cidr, &["10.30.0.0/16", "fd00:30::/32"], vec![]),
    );
    let results = check(&bed, &rs, &probes_from(&PEER, "10.10.0.1", "fd00:10::1"));
    assert_agree(&results);
    for c in &results {
        let src = c.flow.src.to_string();
        let managed = src.starts_with("10.20.") || src.starts_with("fd00:20:");
        let allowed = !managed
            || c.flow.probe == Probe::Tcp(443)
            || (src == "10.20.0.2" && c.flow.probe == Probe::Echo);
        assert_eq!(c.outcome.through(), allowed, "{c}");
        if !managed {
            assert!(
                matches!(&c.eval.decided_by, Origin::Base(why) if why.starts_with("out of scope")),
                "{c}"
            );
        }
    }
}

/// Packets and bytes of a named counter of the host's `inet reyes` table (`None`: absent).
fn nft_counter(bed: &Testbed, name: &str) -> Option<u64> {
    let out = bed
        .host
        .run(&["nft", "list", "counter", "inet", "reyes", name], None);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "packets")
        .and_then(|w| w[1].parse().ok())
}

#[test]
fn audit_mode_accepts_and_counts_what_drop_mode_drops() {
    let Some(bed) = bed() else { return };
    let doc = document(POLICY, 1);
    let mut ctx = context(Enforce::Cidr, &["10.30.0.0/16", "fd00:30::/32"], vec![]);
    ctx.action = reyes::config::Action::Audit;
    let rs = apply(&bed, &doc, &ctx);
    let allowed = pf("10.20.0.1", "10.10.0.1", Probe::Tcp(443));
    let denied = pf("10.20.0.1", "10.10.0.1", Probe::Tcp(22));
    let denied6 = pf("fd00:20::1", "fd00:10::1", Probe::Udp(5432));

    // An allowed flow passes and is not counted as a would-be drop.
    let r = check(&bed, &rs, &[allowed]);
    assert!(r[0].outcome.through(), "{}", r[0]);
    assert_eq!(r[0].eval.decision, Decision::Allow);
    assert_eq!(nft_counter(&bed, "audit_g_sg_host"), Some(0));
    // A flow no rule allows passes too, is counted in its group's audit counter, and eval
    // still calls it a deny (by audit).
    let r = check(&bed, &rs, &[denied, denied6]);
    for c in &r {
        assert!(c.outcome.through(), "{c}");
        assert_eq!(c.eval.decision, Decision::Deny, "{c}");
        assert!(c.eval.audited(), "{c}");
    }
    let audited = nft_counter(&bed, "audit_g_sg_host").unwrap_or(0);
    assert!(audited >= 2, "audit counter {audited}");
    assert_eq!(nft_counter(&bed, "dropped"), Some(0));

    // The same document in drop mode: the flow is dropped, there is no audit counter.
    ctx.action = reyes::config::Action::Drop;
    let rs = apply(&bed, &doc, &ctx);
    let r = check(&bed, &rs, &[allowed, denied]);
    assert_agree(&r);
    assert!(
        r[0].outcome.through() && !r[1].outcome.through(),
        "{}\n{}",
        r[0],
        r[1]
    );
    assert_eq!(nft_counter(&bed, "audit_g_sg_host"), None);
    assert!(nft_counter(&bed, "dropped").unwrap_or(0) >= 1);
}

#[test]
fn ipsec_mode_leaves_plain_traffic_untouched() {
    let Some(bed) = bed() else { return };
    let rs = apply(
        &bed,
        &document(POLICY, 1),
        &context(Enforce::Ipsec, &[], vec![]),
    );
    assert!(
        bed.host.nft_list_table("inet", "reyes").is_some(),
        "the table is loaded"
    );
    let results = check(&bed, &rs, &probes_from(&PEER, "10.10.0.2", "fd00:10::2"));
    assert_agree(&results);
    for c in &results {
        assert!(c.outcome.through(), "{c}");
        assert_eq!(
            c.eval.decided_by,
            Origin::Base("out of scope: not over IPsec".into()),
            "{c}"
        );
        // Over IPsec, the policy would decide.
        let mut over = c.flow.flow();
        over.via_ipsec = true;
        let e = evaluate(&rs, &over).unwrap();
        let src = c.flow.src.to_string();
        let from_20 = src.starts_with("10.20.") || src.starts_with("fd00:20:");
        let allowed = (from_20 && c.flow.probe == Probe::Tcp(443))
            || (src == "10.20.0.2" && c.flow.probe == Probe::Echo);
        assert_eq!(e.decision == Decision::Allow, allowed, "{}", over);
    }
}

#[test]
fn established_connection_survives_a_policy_change_that_denies_it() {
    let Some(bed) = bed() else { return };
    let ctx = context(Enforce::Cidr, &[], vec![]);
    let v1 = POLICY.replace("ports: 443,", "ports: \"443-8080\",");
    apply(&bed, &document(&v1, 1), &ctx);
    let pairs = [("10.20.0.1", "10.10.0.1"), ("fd00:20::1", "fd00:10::1")];
    let mut conns: Vec<_> = pairs
        .iter()
        .map(|(s, d)| {
            testbed::in_netns(&bed.peer.name, || {
                testbed::tcp_connect(ip(s), std::net::SocketAddr::new(ip(d), 8080), RETRY_TIMEOUT)
                    .unwrap()
                    .expect("v1 allows 8080")
            })
        })
        .collect();
    for c in &mut conns {
        assert!(testbed::echo(c, b"before", RETRY_TIMEOUT));
    }
    let rs = apply(&bed, &document(POLICY, 2), &ctx);
    let new: Vec<ProbeFlow> = pairs
        .iter()
        .map(|(s, d)| pf(s, d, Probe::Tcp(8080)))
        .collect();
    let results = check(&bed, &rs, &new);
    assert_agree(&results);
    assert!(
        results.iter().all(|c| !c.outcome.through()),
        "v2 denies new connections"
    );
    for (c, p) in conns.iter_mut().zip(&new) {
        assert!(
            testbed::echo(c, b"after the change", RETRY_TIMEOUT),
            "established connection {p} cut"
        );
        let mut f = p.flow();
        f.state = ConnState::Established;
        assert_eq!(evaluate(&rs, &f).unwrap().decision, Decision::Allow);
    }
}

#[test]
fn failsafe_entry_stays_open_when_the_document_denies_it() {
    let Some(bed) = bed() else { return };
    let failsafe = vec![
        Failsafe {
            proto: Proto::Tcp,
            port: Some(PortRange {
                first: 22,
                last: 22,
            }),
            from: Some("10.20.0.0/24".parse().unwrap()),
        },
        Failsafe {
            proto: Proto::Tcp,
            port: Some(PortRange {
                first: 22,
                last: 22,
            }),
            from: Some("fd00:20::/64".parse().unwrap()),
        },
    ];
    let rs = apply(
        &bed,
        &document(POLICY, 1),
        &context(Enforce::Cidr, &[], failsafe),
    );
    let flows: Vec<ProbeFlow> = ["10.20.0.1", "10.20.1.1", "fd00:20::1", "fd00:20:0:1::1"]
        .iter()
        .map(|s| {
            pf(
                s,
                if ip(s).is_ipv4() {
                    "10.10.1.1"
                } else {
                    "fd00:10:0:1::1"
                },
                Probe::Tcp(22),
            )
        })
        .collect();
    let results = check(&bed, &rs, &flows);
    assert_agree(&results);
    let through: Vec<bool> = results.iter().map(|c| c.outcome.through()).collect();
    assert_eq!(through, [true, false, true, false]);
    assert_eq!(results[0].eval.decided_by, Origin::Failsafe(0));
    assert_eq!(results[2].eval.decided_by, Origin::Failsafe(1));
    // The document alone denies it.
    let mut policy_only = results[0].flow.flow();
    policy_only.via_ipsec = true;
    let plain = compile(&document(POLICY, 1), &context(Enforce::Ipsec, &[], vec![])).unwrap();
    assert_eq!(
        evaluate(&plain, &policy_only).unwrap().decision,
        Decision::Deny
    );
}

// ---- the differential test ----

/// Prefixes around the bed's addresses, so that members and sources overlap.
const POOL: [&str; 18] = [
    "10.0.0.0/8",
    "10.10.0.0/16",
    "10.10.0.0/24",
    "10.20.0.0/16",
    "10.20.0.0/24",
    "10.20.1.0/24",
    "10.30.0.0/16",
    "192.168.77.0/24",
    "0.0.0.0/0",
    "fd00::/16",
    "fd00:10::/32",
    "fd00:10::/64",
    "fd00:20::/32",
    "fd00:20::/64",
    "fd00:20:0:1::/64",
    "fd00:30::/32",
    "fd77::/16",
    "::/0",
];

fn any_cidr() -> impl Strategy<Value = Cidr> {
    prop_oneof![
        (0..POOL.len()).prop_map(|i| POOL[i].parse().unwrap()),
        (0..PEER.len()).prop_map(|i| PEER[i].parse().unwrap()),
        (0..HOST.len()).prop_map(|i| HOST[i].parse().unwrap()),
    ]
}

/// Port boundaries around the probed ports.
const BOUNDS: [u16; 14] = [
    0, 21, 22, 23, 53, 442, 443, 444, 500, 4500, 5432, 8079, 8080, 65535,
];

fn ports() -> impl Strategy<Value = PortRange> {
    (0..BOUNDS.len(), 0..BOUNDS.len()).prop_map(|(a, b)| PortRange {
        first: BOUNDS[a.min(b)],
        last: BOUNDS[a.max(b)],
    })
}

fn rule(ngroups: usize) -> impl Strategy<Value = Rule> {
    let proto = prop_oneof![
        3 => Just(Proto::Tcp),
        3 => Just(Proto::Udp),
        2 => Just(Proto::Icmp),
        2 => Just(Proto::Icmpv6),
        2 => Just(Proto::All),
        1 => Just(Proto::Number(47)),
        1 => Just(Proto::Number(132)),
        1 => Just(Proto::Number(253)),
    ];
    let icmp = proptest::option::of((
        prop_oneof![
            Just(0u8),
            Just(8),
            Just(13),
            Just(128),
            Just(129),
            Just(135)
        ],
        proptest::option::of(0u8..2),
    ));
    (
        proto,
        ports(),
        icmp,
        proptest::collection::vec(any_cidr(), 0..3),
        proptest::collection::vec(0..ngroups, 0..3),
        any::<bool>(),
    )
        .prop_map(move |(proto, ports, icmp, cidrs, groups, pl)| {
            let pl = pl || (cidrs.is_empty() && groups.is_empty());
            Rule {
                proto,
                ports: proto.has_ports().then_some(ports),
                icmp_type: icmp.filter(|_| proto.is_icmp()).map(|(t, _)| t),
                icmp_code: icmp.filter(|_| proto.is_icmp()).and_then(|(_, c)| c),
                from: Sources {
                    groups: groups.into_iter().map(|g| format!("sg-{g}")).collect(),
                    cidrs,
                    prefix_lists: if pl { vec!["pl-1".into()] } else { vec![] },
                },
            }
        })
}

/// One generated case: what the leader read, what it excluded, the follower's context, and the
/// flows to send.
#[derive(Debug, Clone)]
struct Case {
    inventory: Inventory,
    excluded: Vec<String>,
    ctx: HostContext,
    flows: Vec<ProbeFlow>,
}

fn subset<T: Clone + std::fmt::Debug>(items: &'static [T]) -> impl Strategy<Value = Vec<T>> {
    proptest::sample::subsequence(items, 0..=items.len())
}

fn probe_flow() -> impl Strategy<Value = ProbeFlow> {
    let v4 = prop_oneof![
        4 => (0..TCP_PORTS.len()).prop_map(|i| Probe::Tcp(TCP_PORTS[i])),
        3 => (0..UDP_PORTS.len()).prop_map(|i| Probe::Udp(UDP_PORTS[i])),
        2 => Just(Probe::Echo),
        2 => (prop_oneof![Just(0u8), Just(3), Just(11), Just(13)], 0u8..2).prop_map(|(t, c)| Probe::Icmp(t, c)),
        2 => prop_oneof![Just(47u8), Just(50), Just(51), Just(132), Just(253)].prop_map(Probe::Proto),
    ];
    let v6 = prop_oneof![
        4 => (0..TCP_PORTS.len()).prop_map(|i| Probe::Tcp(TCP_PORTS[i])),
        3 => (0..UDP_PORTS.len()).prop_map(|i| Probe::Udp(UDP_PORTS[i])),
        2 => Just(Probe::Echo),
        2 => (prop_oneof![Just(1u8), Just(129), Just(135), Just(137)], 0u8..2).prop_map(|(t, c)| Probe::Icmp(t, c)),
        2 => prop_oneof![Just(47u8), Just(50), Just(132), Just(253)].prop_map(Probe::Proto),
    ];
    // Mostly managed, non-local sources: the ones the policy decides for.
    let src = || prop_oneof![6 => 0..3usize, 1 => 3..5usize];
    let v4f = (src(), 0..3usize, v4).prop_map(|(s, d, probe)| ProbeFlow {
        src: ip(PEER[s]),
        dst: ip(HOST[d]),
        probe,
    });
    let v6f = (src(), 3..6usize, v6).prop_map(|(s, d, probe)| ProbeFlow {
        src: ip(PEER[s + 5]),
        dst: ip(HOST[d]),
        probe,
    });
    prop_oneof![v4f, v6f]
}

fn failsafe() -> impl Strategy<Value = Failsafe> {
    (
        prop_oneof![
            Just(Proto::Tcp),
            Just(Proto::Udp),
            Just(Proto::All),
            Just(Proto::Number(253))
        ],
        proptest::option::of(ports()),
        proptest::option::of(any_cidr()),
    )
        .prop_map(|(proto, port, from)| Failsafe {
            proto,
            port: port.filter(|_| proto.has_ports()),
            from,
        })
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..5).prop_flat_map(|ngroups| {
        let groups = proptest::collection::vec(proptest::collection::vec(rule(ngroups), 0..6), ngroups);
        let members = |pool: &'static [&'static str]| proptest::collection::vec((subset(pool), proptest::collection::vec(0..ngroups, 1..3)), 1..4);
        let extra = proptest::collection::vec((proptest::collection::vec(any_cidr(), 1..3), proptest::collection::vec(0..ngroups, 1..3)), 0..2);
        (
            groups,
            members(&HOST),
            members(&PEER),
            extra,
            proptest::collection::vec(any_cidr(), 0..3),
            prop_oneof![3 => Just(None), 1 => (0..ngroups).prop_map(Some)],
            (
                prop_oneof![3 => subset(&["10.30.0.0/16", "fd00:30::/32", "10.20.1.0/24"]).prop_map(Some), 1 => Just(None)],
                subset(&["10.10.0.0/16", "10.30.0.0/16", "fd00:10::/32", "fd00:30::/32", "10.20.1.0/24"]),
                prop_oneof![3 => Just(vec![]), 1 => proptest::collection::vec(failsafe(), 1..3)],
            ),
            (
                prop_oneof![9 => Just(Enforce::Cidr), 1 => Just(Enforce::Ipsec)],
                prop_oneof![2 => Just(vec![]), 1 => subset(&HOST)],
                any::<(bool, bool)>(),
            ),
            proptest::collection::vec(probe_flow(), 24),
        )
            .prop_map(|(rules, host_ifaces, peer_ifaces, extra, pl, excluded, (local, networks, failsafe), (enforce, target, logs), flows)| {
                let mut hosts = Vec::new();
                let named = |g: Vec<usize>| g.into_iter().map(|g| format!("sg-{g}")).collect::<Vec<_>>();
                for (i, (addrs, groups)) in host_ifaces.into_iter().chain(peer_ifaces).enumerate() {
                    let addresses: Vec<Cidr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
                    if !addresses.is_empty() {
                        hosts.push(Host { id: format!("eni-{i}"), addresses, groups: named(groups), subnet: None });
                    }
                }
                for (i, (addresses, groups)) in extra.into_iter().enumerate() {
                    hosts.push(Host { id: format!("eni-x{i}"), addresses, groups: named(groups), subnet: None });
                }
                let inventory = Inventory {
                    networks: vec![Network { id: "vpc-1".into(), cidrs: cidrs(&networks) }],
                    subnets: vec![],
                    groups: rules.into_iter().enumerate().map(|(i, ingress)| Group { id: format!("sg-{i}"), name: format!("g{i}"), network: None, ingress, egress: None }).collect(),
                    hosts,
                    prefix_lists: vec![PrefixList { id: "pl-1".into(), cidrs: pl }],
                };
                let ctx = HostContext {
                    target: Target::Host(if target.is_empty() { HOST.iter().map(|a| ip(a)).collect() } else { target.iter().map(|a| ip(a)).collect() }),
                    enforce,
                    managed_cidrs: cidrs(&MANAGED),
                    local_cidrs: local.map(|l| cidrs(&l)),
                    failsafe,
                    log_accept: logs.0,
                    log_drop: logs.1,
                    allow_unknown_host: true,
                    action: reyes::config::Action::Drop,
                    mode: reyes::config::Mode::Host,
                    gateway_cidrs: vec![],
                    egress: false,
                };
                Case { inventory, excluded: excluded.map(|e| format!("sg-{e}")).into_iter().collect(), ctx, flows }
            })
    })
}

#[derive(Default)]
struct Stats {
    flows: usize,
    through: usize,
    by_group: usize,
}

fn seed() -> u64 {
    match std::env::var("REYES_KERNEL_SEED") {
        Ok(s) => u64::from_str_radix(s.trim().trim_start_matches("0x"), 16)
            .expect("REYES_KERNEL_SEED: hex"),
        Err(_) => {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                ^ u64::from(std::process::id())
        }
    }
}

#[test]
fn differential_kernel_equals_eval() {
    let Some(bed) = bed() else { return };
    let cases: u32 = std::env::var("REYES_KERNEL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let seed = seed();
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(seed.rotate_left(i as u32 * 16) ^ i as u64).to_be_bytes());
    }
    let config = PtConfig {
        cases,
        max_shrink_iters: 40,
        failure_persistence: None,
        ..PtConfig::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    let stats = std::cell::RefCell::new(Stats::default());
    let started = Instant::now();
    let serial = std::cell::Cell::new(0u64);
    let result = runner.run(&case(), |c| {
        serial.set(serial.get() + 1);
        let doc = build(&c.inventory, &build_opts(serial.get(), c.excluded.clone()))
            .unwrap()
            .document;
        let rs = compile(&doc, &c.ctx).unwrap();
        let script = reyes::nft::render::render(&rs).unwrap();
        bed.apply(&script);
        let results = check(&bed, &rs, &c.flows);
        let mut st = stats.borrow_mut();
        st.flows += results.len();
        st.through += results.iter().filter(|r| r.outcome.through()).count();
        st.by_group += results
            .iter()
            .filter(|r| {
                r.outcome.through() && matches!(r.eval.decided_by, Origin::GroupRule { .. })
            })
            .count();
        let bad: Vec<String> = results
            .iter()
            .filter(|r| !r.agrees())
            .map(|r| r.to_string())
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(TestCaseError::fail(format!(
                "kernel and eval disagree:\n{}\n\ndocument policy: {}\n\nruleset:\n{script}",
                bad.join("\n"),
                serde_json::to_string(&doc.policy).unwrap()
            )))
        }
    });
    let st = stats.into_inner();
    let elapsed = started.elapsed();
    eprintln!(
        "differential: seed {seed:016x}: {} flows in {cases} cases, {} through ({} by a group rule), {:.1}s",
        st.flows,
        st.through,
        st.by_group,
        elapsed.as_secs_f64()
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, case)) => panic!(
            "kernel and eval disagree (reproduce with REYES_KERNEL_SEED={seed:016x}):\n{why}\n\nminimal case: {case:#?}"
        ),
        Err(TestError::Abort(why)) => panic!("aborted (REYES_KERNEL_SEED={seed:016x}): {why}"),
    }
    // Not vacuous: both outcomes, and the groups (not only the base chain) decide often.
    assert!(
        st.through * 10 >= st.flows && st.through * 10 <= st.flows * 9,
        "{} of {} through",
        st.through,
        st.flows
    );
    assert!(
        st.by_group * 20 >= st.flows,
        "only {} of {} allowed by group rules",
        st.by_group,
        st.flows
    );
}
