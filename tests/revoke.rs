//! Revocation against the real kernel: TCP connections between two namespaces through an
//! applied ruleset, a policy change that denies some of them, and the conntrack walk
//! (`reyes::conntrack::revoke` over ctnetlink) that cuts exactly those. Both backends label
//! the connections they accept; the walk judges only labelled ones.
//!
//! This kernel has no ESP, so the policy is put in scope with `enforce: cidr`.

mod common;
mod testbed;

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, SystemTime};

use reyes::compile::{compile, HostContext, Ruleset, Target, CT_LABEL, CT_LABEL_EGRESS};
use reyes::config::{Action, Enforce, IptablesVariant};
use reyes::conntrack::kernel::{Kernel, NewConnection};
use reyes::conntrack::{revoke, Conntrack, Entry, Revocation};
use reyes::document::Document;

use common::docs;
use testbed::Testbed;

const HOST: [&str; 2] = ["10.10.0.1", "fd00:10::1"];
/// Managed sources, and one outside `managed_cidrs` (out of scope).
const PEER: [&str; 4] = ["10.20.0.1", "10.20.0.2", "fd00:20::1", "192.168.77.1"];
const WAIT: Duration = Duration::from_secs(3);
/// How long a cut connection gets to show a sign of life (none must come).
const DEAD: Duration = Duration::from_millis(1500);

/// sg-db allows 5432 from both peers and fd00:20::1, and 8080 from 10.20.0.1.
const V1: &str = r#"
groups:
  - id: sg-db
    ingress:
      - {proto: tcp, ports: 5432, from: {cidrs: [10.20.0.1/32, 10.20.0.2/32, "fd00:20::1/128"]}}
      - {proto: tcp, ports: 8080, from: {cidrs: [10.20.0.1/32]}}
hosts:
  - {id: db, addresses: [10.10.0.1, "fd00:10::1"], groups: [sg-db]}
"#;

fn v2() -> String {
    // 10.20.0.1 and fd00:20::1 lose 5432; 8080 from 10.20.0.1 stays.
    V1.replace(
        "cidrs: [10.20.0.1/32, 10.20.0.2/32, \"fd00:20::1/128\"]",
        "cidrs: [10.20.0.2/32]",
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn bed() -> Option<Testbed> {
    if !common::netns_available() {
        return None;
    }
    Some(Testbed::new(&HOST, &PEER))
}

fn document(yaml: &str, serial: u64) -> Document {
    docs::document(yaml, &docs::options("test", serial, SystemTime::now()))
}

fn context() -> HostContext {
    HostContext {
        target: Target::Host(HOST.iter().map(|a| ip(a)).collect()),
        enforce: Enforce::Cidr,
        managed_cidrs: vec![
            "10.20.0.0/16".parse().unwrap(),
            "fd00:20::/32".parse().unwrap(),
        ],
        local_cidrs: Some(vec![]),
        failsafe: vec![],
        log_accept: false,
        log_drop: false,
        allow_unknown_host: false,
        action: Action::Drop,
        mode: reyes::config::Mode::Host,
        gateway_cidrs: vec![],
        egress: false,
    }
}

fn ruleset(yaml: &str, serial: u64) -> Ruleset {
    compile(&document(yaml, serial), &context()).unwrap()
}

/// Apply through the nft netlink transport, inside the host namespace.
fn apply_nft(bed: &Testbed, rs: &Ruleset) {
    bed.host
        .enter(|| reyes::nft::netlink::apply(rs))
        .unwrap_or_else(|e| panic!("apply: {e}"));
}

fn revoke_in(bed: &Testbed, rs: &Ruleset) -> Revocation {
    bed.host
        .enter(|| Kernel::open().and_then(|mut k| revoke(rs, &mut k)))
        .unwrap_or_else(|e| panic!("revoke: {e}"))
}

fn walk_in(bed: &Testbed) -> Vec<Entry> {
    bed.host.enter(|| {
        let mut k = Kernel::open().unwrap();
        let mut out = Vec::new();
        k.walk(&mut |e| out.push(e)).unwrap();
        out
    })
}

struct Conn {
    name: String,
    stream: TcpStream,
}

/// A connection from `ns` (the peer for ingress, the host for egress) that echoes.
fn open_in(ns: &str, src: &str, dst: &str, port: u16) -> Conn {
    let to = SocketAddr::new(ip(dst), port);
    Conn {
        name: format!("{src} -> {to}"),
        stream: testbed::open_echoing(ns, ip(src), to, WAIT),
    }
}

/// A connection the peer opens to the host.
fn open(bed: &Testbed, src: &str, dst: &str, port: u16) -> Conn {
    open_in(&bed.peer.name, src, dst, port)
}

#[test]
fn revocation_cuts_the_connections_a_new_policy_denies_and_only_those() {
    let Some(bed) = bed() else { return };
    // Conntrack on (another table uses it), then a connection opened before reyes: tracked,
    // never labelled, so never judged (v1 does not even allow 443).
    bed.host.nft_apply(
        "table inet other {\n  chain c {\n    type filter hook input priority -10;\n    ct state established counter\n  }\n}\n",
    );
    let mut before = open(&bed, "10.20.0.1", "10.10.0.1", 443);
    // Without it, a packet the host sends first (a retransmission) re-tracks a cut connection
    // mid-stream as an outgoing one, and the peer's packets become its replies (see
    // docs/operations.md, "Revocation").
    bed.host
        .ok(&["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0"]);
    apply_nft(&bed, &ruleset(V1, 1));
    let mut denied = vec![
        open(&bed, "10.20.0.1", "10.10.0.1", 5432),
        open(&bed, "fd00:20::1", "fd00:10::1", 5432),
    ];
    let mut kept = [
        open(&bed, "10.20.0.2", "10.10.0.1", 5432),
        // The same two hosts as the first denied one, on a port still allowed.
        open(&bed, "10.20.0.1", "10.10.0.1", 8080),
        // Out of scope (source outside managed_cidrs): accepted before the label.
        open(&bed, "192.168.77.1", "10.10.0.1", 5432),
    ];
    let entries = walk_in(&bed);
    let labelled = |src: &str, port: u16| {
        entries
            .iter()
            .find(|e| e.src == ip(src) && e.port == Some(port))
            .unwrap_or_else(|| panic!("no conntrack entry {src} port {port}: {entries:?}"))
            .labelled(CT_LABEL)
    };
    assert!(labelled("10.20.0.1", 5432) && labelled("fd00:20::1", 5432));
    assert!(
        !labelled("192.168.77.1", 5432),
        "out of scope is not labelled"
    );
    assert!(!labelled("10.20.0.1", 443), "opened before reyes");

    let rs2 = ruleset(&v2(), 2);
    apply_nft(&bed, &rs2);
    // The gap revocation closes: established connections outlive the rule that allowed them.
    for c in &mut denied {
        assert!(testbed::echo(&mut c.stream, b"still", WAIT), "{}", c.name);
    }
    let r = revoke_in(&bed, &rs2);
    assert_eq!((r.revoked, r.gone), (2, 0), "{r:?}");
    assert!(r.labelled >= 4 && r.tracked >= 6, "{r:?}");
    assert_cut("nft", &mut denied);
    assert_alive("nft", &mut kept);
    assert_alive(
        "nft, opened before reyes",
        std::slice::from_mut(&mut before),
    );
    // A second walk finds nothing more to cut.
    let again = revoke_in(&bed, &rs2);
    assert_eq!(again.revoked, 0, "{again:?}");
}

#[test]
fn connections_created_without_packets_are_walked_and_revoked_by_label() {
    let Some(bed) = bed() else { return };
    // Labels stick once a rule that sets them is loaded.
    apply_nft(&bed, &ruleset(V1, 1));
    let conn = |src: &str, sport: u16, label: Option<u8>| NewConnection {
        src: SocketAddr::new(ip(src), sport),
        dst: SocketAddr::new(ip("10.10.0.1"), 5432),
        proto: 6,
        label,
        timeout: 600,
    };
    let made: Vec<NewConnection> = (0..300u16)
        .map(|i| conn("10.20.0.1", 20000 + i, Some(CT_LABEL)))
        .chain((0..50u16).map(|i| conn("10.20.0.1", 30000 + i, None)))
        .chain((0..20u16).map(|i| conn("10.20.0.2", 40000 + i, Some(CT_LABEL))))
        .collect();
    bed.host
        .enter(|| Kernel::open().unwrap().create(&made))
        .unwrap();
    let r = revoke_in(&bed, &ruleset(&v2(), 2));
    assert_eq!((r.labelled, r.revoked), (320, 300), "{r:?}");
    let left = walk_in(&bed);
    let from1 = left.iter().filter(|e| e.src == ip("10.20.0.1")).count();
    let from2 = left.iter().filter(|e| e.src == ip("10.20.0.2")).count();
    assert_eq!(
        (from1, from2),
        (50, 20),
        "unlabelled and still-allowed entries stay"
    );
}

/// Whether ipset is here; if not, a visible skip (a failure when the environment requires it).
fn ipset_available() -> bool {
    let tools = std::process::Command::new("ipset")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !tools {
        if std::env::var("REYES_REQUIRE_NETNS").as_deref() == Ok("1") {
            panic!("ipset is required (REYES_REQUIRE_NETNS=1)");
        }
        common::skipped("ipset not installed");
    }
    tools
}

/// Every one of `conns` is dead: no echo within [`DEAD`].
fn assert_cut(what: &str, conns: &mut [Conn]) {
    for c in conns {
        assert!(
            !testbed::echo(&mut c.stream, b"after", DEAD),
            "{what}: {} lived on after revocation",
            c.name
        );
    }
}

/// Every one of `conns` still echoes.
fn assert_alive(what: &str, conns: &mut [Conn]) {
    for c in conns {
        assert!(
            testbed::echo(&mut c.stream, b"after", WAIT),
            "{what}: {} was cut",
            c.name
        );
    }
}

fn iptables_apply(bed: &Testbed, v: IptablesVariant, rs: &Ruleset) -> Result<(), String> {
    bed.host.enter(|| {
        use reyes::backend::Backend;
        reyes::iptables::IptablesBackend::new(v)
            .apply(rs)
            .map_err(|e| e.to_string())
    })
}

#[test]
fn the_iptables_backend_labels_what_it_accepts() {
    for v in [IptablesVariant::Legacy, IptablesVariant::Nft] {
        let Some(bed) = bed() else { return };
        if !ipset_available() {
            return;
        }
        iptables_apply(&bed, v, &ruleset(V1, 1)).unwrap_or_else(|e| panic!("{v:?}: {e}"));
        bed.host
            .ok(&["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0"]);
        let mut denied = [open(&bed, "10.20.0.1", "10.10.0.1", 5432)];
        let mut kept = [open(&bed, "10.20.0.2", "10.10.0.1", 5432)];
        let rs2 = ruleset(&v2(), 2);
        iptables_apply(&bed, v, &rs2).unwrap_or_else(|e| panic!("{v:?}: {e}"));
        let r = revoke_in(&bed, &rs2);
        assert_eq!((r.labelled, r.revoked), (2, 1), "{v:?}: {r:?}");
        let what = format!("{v:?}");
        assert_cut(&what, &mut denied);
        assert_alive(&what, &mut kept);
    }
}

/// The host (db) may send to 5432 on both peers and fd00:20::1, and to 8080 on 10.20.0.1.
const EGRESS_V1: &str = r#"
groups:
  - id: sg-db
    ingress: []
    egress:
      - {proto: tcp, ports: 5432, to: {cidrs: [10.20.0.1/32, 10.20.0.2/32, "fd00:20::1/128"]}}
      - {proto: tcp, ports: 8080, to: {cidrs: [10.20.0.1/32]}}
hosts:
  - {id: db, addresses: [10.10.0.1, "fd00:10::1"], groups: [sg-db]}
"#;

fn egress_v2() -> String {
    // 10.20.0.1 and fd00:20::1 lose 5432; 8080 to 10.20.0.1 stays.
    EGRESS_V1.replace(
        "cidrs: [10.20.0.1/32, 10.20.0.2/32, \"fd00:20::1/128\"]",
        "cidrs: [10.20.0.2/32]",
    )
}

fn egress_ruleset(yaml: &str, serial: u64) -> Ruleset {
    let mut c = context();
    c.egress = true;
    compile(&document(yaml, serial), &c).unwrap()
}

/// A connection the host opens to a server in the peer namespace.
fn open_out(bed: &Testbed, src: &str, dst: &str, port: u16) -> Conn {
    open_in(&bed.host.name, src, dst, port)
}

/// Egress revocation with one backend: connections this host opened are labelled with the
/// egress bit, re-judged by its egress rules after a policy change, and the denied ones cut.
fn egress_revocation(what: &str, apply: &dyn Fn(&Testbed, &Ruleset)) {
    let Some(bed) = bed() else { return };
    // Servers on the peer side (the bed's own server listens in the host).
    let _servers = testbed::Server::start(&bed.peer.name, &[]);
    bed.host
        .ok(&["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0"]);
    apply(&bed, &egress_ruleset(EGRESS_V1, 1));
    let mut denied = vec![
        open_out(&bed, "10.10.0.1", "10.20.0.1", 5432),
        open_out(&bed, "fd00:10::1", "fd00:20::1", 5432),
    ];
    let mut kept = [
        open_out(&bed, "10.10.0.1", "10.20.0.2", 5432),
        // The same two hosts as the first denied one, on a port still allowed.
        open_out(&bed, "10.10.0.1", "10.20.0.1", 8080),
        // Out of scope (destination outside managed_cidrs): never labelled.
        open_out(&bed, "10.10.0.1", "192.168.77.1", 5432),
    ];
    let entries = walk_in(&bed);
    let find = |dst: &str, port: u16| {
        entries
            .iter()
            .find(|e| e.dst == ip(dst) && e.port == Some(port))
            .unwrap_or_else(|| panic!("{what}: no conntrack entry to {dst}:{port}: {entries:?}"))
    };
    let e = find("10.20.0.1", 5432);
    assert!(
        e.labelled(CT_LABEL_EGRESS) && !e.labelled(CT_LABEL),
        "{what}: {e:?}"
    );
    assert!(find("fd00:20::1", 5432).labelled(CT_LABEL_EGRESS), "{what}");
    assert!(
        !find("192.168.77.1", 5432).labelled_any(),
        "{what}: out of scope is not labelled"
    );

    let rs2 = egress_ruleset(&egress_v2(), 2);
    apply(&bed, &rs2);
    for c in &mut denied {
        assert!(
            testbed::echo(&mut c.stream, b"still", WAIT),
            "{what}: {}",
            c.name
        );
    }
    let r = revoke_in(&bed, &rs2);
    assert_eq!((r.labelled, r.revoked, r.gone), (4, 2, 0), "{what}: {r:?}");
    assert_cut(what, &mut denied);
    assert_alive(what, &mut kept);
}

#[test]
fn egress_revocation_cuts_outgoing_connections_with_nft() {
    egress_revocation("nft", &apply_nft);
}

#[test]
fn egress_revocation_cuts_outgoing_connections_with_iptables() {
    if !ipset_available() {
        return;
    }
    egress_revocation("iptables-legacy", &|bed, rs| {
        iptables_apply(bed, IptablesVariant::Legacy, rs).unwrap_or_else(|e| panic!("{e}"))
    });
}
