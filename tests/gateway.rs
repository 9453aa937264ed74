//! Gateway mode and egress against the real thing: the rendered nft script and the netlink
//! batch are taken by the kernel and list back exactly as rendered; the iptables backend
//! hangs its chains off FORWARD and OUTPUT with one jump each and removes them again; and
//! plain (non-IPsec) traffic forwarded through a gateway namespace is untouched by either
//! backend; and a connection a server behind the gateway opened through it, labelled by the
//! forward chain's egress part, is cut by revocation when its egress rule goes away (cidr
//! mode). This machine's kernel has no ESP: what happens to IPsec traffic is the qemu
//! guest's test (tests/ipsec.rs).

mod common;
mod testbed;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use common::Netns;
use reyes::backend::Backend;
use reyes::compile::{compile, HostContext, Ruleset, Target};
use reyes::config::{IptablesVariant, Mode};
use reyes::document::{build, BuildOptions};
use reyes::inventory::static_file;
use reyes::iptables::IptablesBackend;
use reyes::nft::{netlink, render};

/// examples/gateway-inventory.yaml's document.
fn document() -> reyes::document::Document {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/gateway-inventory.yaml");
    let inv = static_file::load(&path).expect("load examples/gateway-inventory.yaml");
    let opts = BuildOptions::new(
        "demo",
        1,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        Duration::from_secs(3600),
    );
    build(&inv, &opts).expect("build").document
}

/// The gateway 10.1.0.1 (in no group) for the VPC, with egress.
fn gateway(egress: bool) -> Ruleset {
    let mut ctx = HostContext::new(Target::Host(vec!["10.1.0.1".parse().unwrap()]));
    ctx.mode = Mode::Gateway;
    ctx.gateway_cidrs = vec![
        "10.1.0.0/16".parse().unwrap(),
        "fd00:1::/56".parse().unwrap(),
    ];
    ctx.egress = egress;
    ctx.log_drop = true;
    compile(&document(), &ctx).expect("compile")
}

#[test]
fn gateway_with_egress_nft_render() {
    insta::assert_snapshot!(
        "nft__gateway_example__10_1_0_1__egress",
        render::render(&gateway(true)).unwrap()
    );
}

#[test]
fn gateway_with_egress_iptables_render() {
    insta::assert_snapshot!(
        "iptables__gateway_example__10_1_0_1__egress",
        reyes::iptables::render::render(&gateway(true), &Default::default()).unwrap()
    );
}

#[test]
fn gateway_tables_are_taken_by_the_kernel_and_list_back_as_rendered() {
    if !common::netns_available() {
        return;
    }
    for egress in [false, true] {
        let rs = gateway(egress);
        let script = render::render(&rs).unwrap();
        let want = common::normalise(common::table_block(&script));
        let ns = Netns::new("gwnft");
        ns.nft_apply(&script);
        let live = ns
            .nft_list_table("inet", "reyes")
            .expect("table after nft -f");
        assert_eq!(common::normalise(&live), want, "nft -f, egress {egress}");
        ns.ok(&["nft", "delete", "table", "inet", "reyes"]);
        let owned = rs.clone();
        ns.enter(move || netlink::apply_owned(owned).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| panic!("netlink apply: {e}\n{script}"));
        let live = ns
            .nft_list_table("inet", "reyes")
            .expect("table after netlink");
        assert_eq!(common::normalise(&live), want, "netlink, egress {egress}");
    }
}

fn iptables_ready(v: IptablesVariant) -> bool {
    let sfx = if v == IptablesVariant::Legacy {
        "legacy"
    } else {
        "nft"
    };
    let ok = ["iptables", "ip6tables"].iter().all(|t| {
        std::process::Command::new(format!("{t}-{sfx}"))
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    }) && std::process::Command::new("ipset")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("REYES_REQUIRE_NETNS").as_deref() == Ok("1") {
            panic!("iptables-{sfx} and ipset are required (REYES_REQUIRE_NETNS=1)");
        }
        common::skipped(&format!("iptables-{sfx} or ipset not installed"));
    }
    ok
}

fn iptables_tool(v: IptablesVariant, tool: &str) -> String {
    let sfx = if v == IptablesVariant::Legacy {
        "legacy"
    } else {
        "nft"
    };
    format!("{tool}-{sfx}")
}

/// The rules of a built-in chain, as `iptables -S CHAIN` prints them.
fn rules(ns: &Netns, v: IptablesVariant, tool: &str, chain: &str) -> Vec<String> {
    ns.ok(&[&iptables_tool(v, tool), "-w", "-S", chain])
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_string)
        .collect()
}

fn iptables_jumps(v: IptablesVariant) {
    if !common::netns_available() || !iptables_ready(v) {
        return;
    }
    let ns = Netns::new("gwipt");
    let tool = iptables_tool(v, "iptables");
    ns.ok(&[
        &tool, "-w", "-A", "FORWARD", "-p", "tcp", "--dport", "9999", "-j", "DROP",
    ]);
    let b = IptablesBackend::new(v);
    let gw = gateway(true);
    ns.enter(|| b.apply(&gw)).unwrap();
    for t in ["iptables", "ip6tables"] {
        let fwd = rules(&ns, v, t, "FORWARD");
        assert_eq!(fwd[0], "-A FORWARD -j REYES-FORWARD", "{t}: {fwd:?}");
        let out = rules(&ns, v, t, "OUTPUT");
        assert_eq!(out, ["-A OUTPUT -j REYES-OUTPUT"], "{t}");
        assert_eq!(
            rules(&ns, v, t, "INPUT"),
            ["-A INPUT -j REYES-INPUT"],
            "{t}"
        );
    }
    assert_eq!(
        rules(&ns, v, "iptables", "FORWARD")[1],
        "-A FORWARD -p tcp -m tcp --dport 9999 -j DROP"
    );
    // Applying again changes nothing (one jump each); a host-mode ruleset takes the jumps
    // from FORWARD and OUTPUT away again, and leaves the host's own rule.
    ns.enter(|| b.apply(&gw)).unwrap();
    assert_eq!(rules(&ns, v, "iptables", "FORWARD").len(), 2);
    let mut ctx = HostContext::new(Target::Host(vec!["10.1.0.10".parse().unwrap()]));
    ctx.egress = false;
    let host = compile(&document(), &ctx).unwrap();
    ns.enter(|| b.apply(&host)).unwrap();
    for t in ["iptables", "ip6tables"] {
        assert!(
            !rules(&ns, v, t, "FORWARD")
                .iter()
                .any(|r| r.contains("REYES")),
            "{t}"
        );
        assert!(rules(&ns, v, t, "OUTPUT").is_empty(), "{t}");
    }
    assert_eq!(rules(&ns, v, "iptables", "FORWARD").len(), 1);
    ns.enter(|| b.apply(&gw)).unwrap();
    ns.enter(|| b.flush()).unwrap();
    for t in ["iptables", "ip6tables"] {
        for chain in ["INPUT", "FORWARD", "OUTPUT"] {
            assert!(
                !rules(&ns, v, t, chain).iter().any(|r| r.contains("REYES")),
                "{t} {chain} after flush"
            );
        }
    }
}

#[test]
fn iptables_legacy_jumps_from_forward_and_output() {
    iptables_jumps(IptablesVariant::Legacy);
}

#[test]
fn iptables_nft_jumps_from_forward_and_output() {
    iptables_jumps(IptablesVariant::Nft);
}

/// peer (10.9.0.5, fd00:9::5) -- gateway (forwarding) -- server (10.1.0.10, fd00:1::10).
struct Topology {
    peer: Netns,
    gw: Netns,
    server: Netns,
}

fn topology() -> Topology {
    let t = Topology {
        peer: Netns::new("gwpeer"),
        gw: Netns::new("gwgw"),
        server: Netns::new("gwsrv"),
    };
    for (ns, dev, other, addr4, addr6, gw4, gw6) in [
        (
            &t.peer,
            "p0",
            "g0",
            "10.9.0.5/24",
            "fd00:9::5/64",
            "10.9.0.1",
            "fd00:9::1",
        ),
        (
            &t.server,
            "s0",
            "g1",
            "10.1.0.10/24",
            "fd00:1::10/64",
            "10.1.0.1",
            "fd00:1::1",
        ),
    ] {
        ns.ok(&[
            "ip", "link", "add", dev, "type", "veth", "peer", "name", other,
        ]);
        ns.ok(&["ip", "link", "set", other, "netns", &t.gw.name]);
        ns.ok(&["ip", "addr", "add", addr4, "dev", dev]);
        ns.ok(&["ip", "-6", "addr", "add", addr6, "dev", dev, "nodad"]);
        ns.ok(&["ip", "link", "set", dev, "up"]);
        ns.ok(&["ip", "route", "add", "default", "via", gw4]);
        ns.ok(&["ip", "-6", "route", "add", "default", "via", gw6]);
    }
    for (dev, a4, a6) in [
        ("g0", "10.9.0.1/24", "fd00:9::1/64"),
        ("g1", "10.1.0.1/24", "fd00:1::1/64"),
    ] {
        t.gw.ok(&["ip", "addr", "add", a4, "dev", dev]);
        t.gw.ok(&["ip", "-6", "addr", "add", a6, "dev", dev, "nodad"]);
        t.gw.ok(&["ip", "link", "set", dev, "up"]);
    }
    t.gw.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    t.gw.ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    t
}

/// Pings from the peer to the server (through the gateway) until one is answered or a
/// deadline passes (the first packets wait for neighbour discovery).
fn ping(t: &Topology, dst: &str) -> bool {
    let v6 = dst.contains(':');
    let mut argv = vec!["ping", "-c", "1", "-W", "1"];
    if v6 {
        argv.insert(1, "-6");
    }
    argv.push(dst);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let o = t.peer.run(&argv, None);
        if o.status.success() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            eprintln!("ping {dst}: {}", common::text(&o));
            return false;
        }
    }
}

fn plain_forwarding_untouched(apply: impl Fn(&Netns, &Ruleset), dropped: impl Fn(&Netns) -> u64) {
    let t = topology();
    assert!(ping(&t, "10.1.0.10"), "no IPv4 path before reyes");
    assert!(ping(&t, "fd00:1::10"), "no IPv6 path before reyes");
    apply(&t.gw, &gateway(true));
    // ICMP echo is allowed by no rule of the server's groups: over IPsec it would be dropped;
    // in the clear it is not reyes' business.
    assert!(ping(&t, "10.1.0.10"), "IPv4 forwarding broken by reyes");
    assert!(ping(&t, "fd00:1::10"), "IPv6 forwarding broken by reyes");
    assert_eq!(dropped(&t.gw), 0);
}

#[test]
fn nft_gateway_leaves_plain_forwarding_alone() {
    if !common::netns_available() {
        return;
    }
    plain_forwarding_untouched(
        |gw, rs| gw.nft_apply(&render::render(rs).unwrap()),
        |gw| {
            let out = gw.ok(&["nft", "list", "counter", "inet", "reyes", "dropped"]);
            out.split_whitespace()
                .skip_while(|w| *w != "packets")
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(u64::MAX)
        },
    );
}

#[test]
fn iptables_gateway_leaves_plain_forwarding_alone() {
    if !common::netns_available() || !iptables_ready(IptablesVariant::Nft) {
        return;
    }
    plain_forwarding_untouched(
        |gw, rs| {
            let b = IptablesBackend::new(IptablesVariant::Nft);
            gw.enter(|| b.apply(rs)).unwrap();
        },
        |gw| {
            let out = gw.ok(&[
                "iptables-nft",
                "-w",
                "-v",
                "-x",
                "-n",
                "-L",
                "REYES-DROPPED",
            ]);
            out.lines()
                .nth(2)
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(u64::MAX)
        },
    );
}

/// The server (sg-web, behind the gateway) may send tcp 5432 and 8080 to the office peer;
/// [`forward_egress_v2`] takes 5432 away.
const FORWARD_EGRESS: &str = r#"
groups:
  - id: sg-web
    ingress: []
    egress:
      - {proto: tcp, ports: 5432, to: {groups: [sg-office]}}
      - {proto: tcp, ports: 8080, to: {groups: [sg-office]}}
  - id: sg-office
    ingress: []
hosts:
  - {id: web, addresses: [10.1.0.10, "fd00:1::10"], groups: [sg-web]}
  - {id: office, addresses: [10.9.0.5, "fd00:9::5"], groups: [sg-office]}
"#;

fn forward_egress_v2() -> String {
    FORWARD_EGRESS.replace(
        "      - {proto: tcp, ports: 5432, to: {groups: [sg-office]}}\n",
        "",
    )
}

/// The topology's gateway in cidr mode (this kernel has no ESP): the office's networks are
/// managed, the VPC is `gateway_cidrs`, egress on.
fn forward_egress_gateway(yaml: &str, serial: u64) -> Ruleset {
    let inv = static_file::parse(yaml, "forward-egress").expect("inventory");
    let opts = BuildOptions::new("demo", serial, SystemTime::now(), Duration::from_secs(3600));
    let doc = build(&inv, &opts).expect("build").document;
    let mut ctx = HostContext::new(Target::Host(vec!["10.1.0.1".parse().unwrap()]));
    ctx.mode = Mode::Gateway;
    ctx.enforce = reyes::config::Enforce::Cidr;
    ctx.managed_cidrs = vec![
        "10.9.0.0/16".parse().unwrap(),
        "fd00:9::/56".parse().unwrap(),
    ];
    ctx.local_cidrs = Some(vec![]);
    ctx.gateway_cidrs = vec![
        "10.1.0.0/16".parse().unwrap(),
        "fd00:1::/56".parse().unwrap(),
    ];
    ctx.egress = true;
    compile(&doc, &ctx).expect("compile")
}

/// A TCP connection from the server to the peer (through the gateway) that echoes.
fn open_forwarded(t: &Topology, dst: &str, port: u16) -> TcpStream {
    let src = if dst.contains(':') {
        "fd00:1::10"
    } else {
        "10.1.0.10"
    };
    let to = SocketAddr::new(dst.parse().unwrap(), port);
    testbed::open_echoing(
        &t.server.name,
        src.parse().unwrap(),
        to,
        Duration::from_secs(5),
    )
}

/// Egress revocation on a gateway's forward hook: a connection a host behind the gateway
/// opened to the far side is labelled by the forward chain's egress part, re-judged by the
/// sender's egress rules after a policy change, and cut when they no longer allow it.
fn forward_egress_revocation(what: &str, apply: &dyn Fn(&Netns, &Ruleset)) {
    use reyes::compile::{CT_LABEL, CT_LABEL_EGRESS};
    use reyes::conntrack::{kernel::Kernel, revoke, Conntrack};
    let t = topology();
    assert!(ping(&t, "10.1.0.10") && ping(&t, "fd00:1::10"), "no path");
    let _servers = testbed::Server::start(&t.peer.name, &[]);
    t.gw.ok(&["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0"]);
    apply(&t.gw, &forward_egress_gateway(FORWARD_EGRESS, 1));
    let mut denied = [
        open_forwarded(&t, "10.9.0.5", 5432),
        open_forwarded(&t, "fd00:9::5", 5432),
    ];
    let mut kept = [open_forwarded(&t, "10.9.0.5", 8080)];
    let entries = t.gw.enter(|| {
        let mut out = Vec::new();
        Kernel::open().unwrap().walk(&mut |e| out.push(e)).unwrap();
        out
    });
    let e = entries
        .iter()
        .find(|e| e.port == Some(5432) && e.dst == "10.9.0.5".parse::<std::net::IpAddr>().unwrap())
        .unwrap_or_else(|| panic!("{what}: no entry: {entries:?}"));
    assert!(
        e.labelled(CT_LABEL_EGRESS) && !e.labelled(CT_LABEL),
        "{what}: {e:?}"
    );

    let rs2 = forward_egress_gateway(&forward_egress_v2(), 2);
    apply(&t.gw, &rs2);
    let r =
        t.gw.enter(|| Kernel::open().and_then(|mut k| revoke(&rs2, &mut k)))
            .unwrap_or_else(|e| panic!("{what}: revoke: {e}"));
    assert_eq!((r.labelled, r.revoked, r.gone), (3, 2, 0), "{what}: {r:?}");
    for s in &mut denied {
        assert!(
            !testbed::echo(s, b"after", Duration::from_millis(1500)),
            "{what}: {:?} lived on after revocation",
            s.peer_addr()
        );
    }
    for s in &mut kept {
        assert!(
            testbed::echo(s, b"after", Duration::from_secs(5)),
            "{what}: {:?} was cut",
            s.peer_addr()
        );
    }
}

#[test]
fn nft_gateway_revokes_forwarded_egress() {
    if !common::netns_available() {
        return;
    }
    forward_egress_revocation("nft", &|gw, rs| {
        gw.enter(|| netlink::apply(rs)).expect("netlink apply");
    });
}

#[test]
fn iptables_gateway_revokes_forwarded_egress() {
    if !common::netns_available() || !iptables_ready(IptablesVariant::Legacy) {
        return;
    }
    forward_egress_revocation("iptables-legacy", &|gw, rs| {
        let b = IptablesBackend::new(IptablesVariant::Legacy);
        gw.enter(|| b.apply(rs)).expect("iptables apply");
    });
}
