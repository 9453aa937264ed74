//! Gateway mode (the forward chain) and egress (the output chain), judged by the evaluator.

use super::*;
use crate::compile::Hook;
use crate::config::Mode;

const ESTATE: &str = r#"
groups:
  - id: sg-web
    ingress: [{proto: tcp, ports: 443, from: {groups: [sg-lb]}}]
    egress: [{proto: tcp, ports: 5432, to: {groups: [sg-db]}}]
  - id: sg-db
    ingress: [{proto: tcp, ports: 5432, from: {groups: [sg-web]}}]
    egress: []
  - id: sg-lb
    ingress: [{proto: all, from: {cidrs: [0.0.0.0/0, "::/0"]}}]
hosts:
  - {id: web, addresses: [10.0.1.10, "fd00:1::10"], groups: [sg-web]}
  - {id: db, addresses: [10.0.2.20, "fd00:1::20"], groups: [sg-db]}
  - {id: lb, addresses: [10.9.0.5, "fd00:9::5"], groups: [sg-lb]}
"#;

/// A gateway at 10.0.0.1 (in no group) for 10.0.0.0/16 and fd00:1::/64.
fn gateway(egress: bool) -> Ruleset {
    let mut c = ctx(Target::Host(vec![ip("10.0.0.1")]));
    c.allow_unknown_host = false;
    c.mode = Mode::Gateway;
    c.gateway_cidrs = vec![
        "10.0.0.0/16".parse().unwrap(),
        "fd00:1::/64".parse().unwrap(),
    ];
    c.egress = egress;
    compile(&doc(ESTATE), &c).unwrap()
}

fn fwd(src: &str, dst: &str, port: u16) -> Flow {
    fl(src, dst, "tcp").port(port).at(Hook::Forward)
}

#[test]
fn forwarded_ipsec_traffic_is_judged_by_the_destination_groups() {
    let rs = gateway(false);
    let e = judge(&rs, &fwd("10.9.0.5", "10.0.1.10", 443));
    assert_eq!(e.decision, Decision::Allow, "{e:?}");
    assert_eq!(group_rule(&e.decided_by), Some(("sg-web", 0)));
    assert_eq!(e.chains[0], "forward");
    assert_eq!(e.dest_groups, ["sg-web"]);
    let e = judge(&rs, &fwd("fd00:9::5", "fd00:1::10", 443));
    assert_eq!(e.decision, Decision::Allow, "{e:?}");
    // The db only takes the web servers.
    let e = judge(&rs, &fwd("10.9.0.5", "10.0.2.20", 5432));
    assert_eq!(e.decision, Decision::Deny, "{e:?}");
    assert_eq!(e.dest_groups, ["sg-db"]);
    // In gateway_cidrs, in no group: dropped like a host's unknown destination.
    assert!(!allows(&rs, &fwd("10.9.0.5", "10.0.3.3", 443)));
}

#[test]
fn forwarded_traffic_out_of_scope_is_untouched() {
    let rs = gateway(false);
    // Not over IPsec.
    let e = judge(&rs, &fwd("10.9.0.5", "10.0.2.20", 5432).via_ipsec(false));
    assert_eq!(e.decision, Decision::Allow);
    assert!(e.decided_by.to_string().contains("out of scope"), "{e:?}");
    // Over IPsec, but to a destination outside gateway_cidrs.
    let e = judge(&rs, &fwd("10.0.2.20", "10.9.0.5", 22));
    assert_eq!(e.decision, Decision::Allow);
    assert!(e.decided_by.to_string().contains("gateway_cidrs"), "{e:?}");
    // Established connections.
    let mut f = fwd("10.9.0.5", "10.0.2.20", 5432);
    f.state = ConnState::Established;
    assert!(allows(&rs, &f));
    // ESP itself.
    assert!(allows(
        &rs,
        &fl("10.9.0.5", "10.0.2.20", "50").at(Hook::Forward)
    ));
}

#[test]
fn the_gateway_input_chain_stays_a_host_chain() {
    let rs = gateway(false);
    // 10.0.0.1 is in no group: in-scope traffic to the gateway itself is dropped.
    assert!(!allows(&rs, &fl("10.9.0.5", "10.0.0.1", "tcp").port(443)));
    // Host mode has no forward chain at all: forwarded traffic is not reyes' business.
    let mut c = ctx(Target::Host(vec![ip("10.0.1.10")]));
    c.egress = false;
    let host = compile(&doc(ESTATE), &c).unwrap();
    assert!(host.hooked.is_empty() && host.maps.is_empty());
    let e = judge(&host, &fwd("10.9.0.5", "10.0.2.20", 5432));
    assert_eq!(e.decision, Decision::Allow);
    assert!(e.chains.is_empty(), "{e:?}");
}

#[test]
fn a_gateway_with_nothing_behind_it_is_refused() {
    let mut c = ctx(Target::Host(vec![ip("192.0.2.1")]));
    c.allow_unknown_host = false;
    c.mode = Mode::Gateway;
    c.gateway_cidrs = vec!["172.16.0.0/12".parse().unwrap()];
    let e = compile(&doc(ESTATE), &c).unwrap_err();
    assert!(e.to_string().contains("gateway_cidrs"), "{e}");
    c.allow_unknown_host = true;
    assert!(compile(&doc(ESTATE), &c).is_ok());
}

#[test]
fn egress_is_enforced_on_what_leaves_over_ipsec() {
    let web = |egress| {
        let mut c = ctx(Target::Host(vec![ip("10.0.1.10"), ip("fd00:1::10")]));
        c.egress = egress;
        compile(&doc(ESTATE), &c).unwrap()
    };
    let out = |dst: &str, port| {
        let src = if dst.contains(':') {
            "fd00:1::10"
        } else {
            "10.0.1.10"
        };
        Flow::new(ip(src), ip(dst), Proto::Tcp)
            .port(port)
            .leaves_ipsec(true)
            .at(Hook::Output)
    };
    let rs = web(true);
    let e = judge(&rs, &out("10.0.2.20", 5432));
    assert_eq!(e.decision, Decision::Allow, "{e:?}");
    assert!(
        matches!(&e.decided_by, Origin::EgressRule { group, rule: 0, .. } if &**group == "sg-web"),
        "{e:?}"
    );
    assert_eq!(e.source_groups, ["sg-web"]);
    let e = judge(&rs, &out("fd00:1::20", 5432));
    assert_eq!(e.decision, Decision::Allow, "{e:?}");
    let e = judge(&rs, &out("10.0.2.20", 22));
    assert_eq!(e.decision, Decision::Deny, "{e:?}");
    assert!(e.decided_by.to_string().contains("egress"), "{e:?}");
    // Not leaving over IPsec: out of scope.
    assert!(allows(&rs, &out("10.0.2.20", 22).leaves_ipsec(false)));
    // Off by default: no output chain.
    let rs = web(false);
    assert!(rs.base_chain(Hook::Output).is_none());
    assert!(allows(&rs, &out("10.0.2.20", 22)));
}

#[test]
fn egress_absent_is_unrestricted_and_empty_allows_nothing() {
    let host = |a: &str| {
        let mut c = ctx(Target::Host(vec![ip(a)]));
        c.egress = true;
        compile(&doc(ESTATE), &c).unwrap()
    };
    let out = |src: &str| {
        Flow::new(ip(src), ip("10.0.1.10"), Proto::Tcp)
            .port(443)
            .leaves_ipsec(true)
            .at(Hook::Output)
    };
    let e = judge(&host("10.9.0.5"), &out("10.9.0.5"));
    assert_eq!(e.decision, Decision::Allow, "{e:?}");
    assert!(e.decided_by.to_string().contains("unrestricted"), "{e:?}");
    assert!(!allows(&host("10.0.2.20"), &out("10.0.2.20")));
}

#[test]
fn a_gateway_with_egress_judges_senders_behind_it() {
    let rs = gateway(true);
    let leaving = |src: &str, dst: &str, port| {
        Flow::new(ip(src), ip(dst), Proto::Tcp)
            .port(port)
            .leaves_ipsec(true)
            .at(Hook::Forward)
    };
    // The web servers may reach the db, wherever it is.
    assert!(allows(&rs, &leaving("10.0.1.10", "10.0.2.20", 5432)));
    let e = judge(&rs, &leaving("10.0.1.10", "10.9.0.5", 80));
    assert_eq!(e.decision, Decision::Deny, "{e:?}");
    assert_eq!(e.source_groups, ["sg-web"]);
    // The db may send nothing.
    assert!(!allows(&rs, &leaving("10.0.2.20", "10.9.0.5", 80)));
    // A sender outside gateway_cidrs is not this gateway's.
    assert!(allows(&rs, &leaving("10.9.0.5", "10.0.1.10", 80)));
    // Arriving over IPsec is still judged by the destination.
    assert!(allows(&rs, &fwd("10.9.0.5", "10.0.1.10", 443)));
    assert!(!allows(&rs, &fwd("10.9.0.5", "10.0.1.10", 80)));
}

#[test]
fn gateway_and_egress_in_audit_mode_accept_and_count() {
    let mut c = ctx(Target::Host(vec![ip("10.0.1.10")]));
    c.mode = Mode::Gateway;
    c.egress = true;
    c.action = crate::config::Action::Audit;
    let rs = compile(&doc(ESTATE), &c).unwrap();
    let e = judge(&rs, &fwd("10.9.0.5", "10.0.2.20", 5432));
    assert!(e.audited(), "{e:?}");
    let out = Flow::new(ip("10.0.1.10"), ip("10.9.0.5"), Proto::Tcp)
        .port(80)
        .leaves_ipsec(true)
        .at(Hook::Output);
    assert!(judge(&rs, &out).audited());
}
