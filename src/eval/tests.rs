use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::*;
use crate::compile::{compile, HostContext, Target};
use crate::config::{Enforce, Failsafe};
use crate::document::{build, BuildOptions, Document};
use crate::inventory::{
    static_file, Group, Host, Inventory, Network, PrefixList, Rule as InvRule, Sources,
};
use crate::net::Cidr;
use crate::proto::PortRange;

fn opts(excluded: Vec<String>) -> BuildOptions {
    BuildOptions {
        environment: "test".into(),
        serial: 1,
        issued_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        validity: Duration::from_secs(3600),
        excluded_group_names: vec![],
        excluded_group_ids: excluded,
        dynamic_subnets: vec![],
    }
}

fn doc(yaml: &str) -> Document {
    build(&static_file::parse(yaml, "t").unwrap(), &opts(vec![]))
        .unwrap()
        .document
}

fn ctx(target: Target) -> HostContext {
    HostContext {
        target,
        enforce: Enforce::Ipsec,
        managed_cidrs: vec![],
        local_cidrs: None,
        failsafe: vec![],
        log_accept: false,
        log_drop: false,
        allow_unknown_host: true,
        action: crate::config::Action::Drop,
        mode: crate::config::Mode::Host,
        gateway_cidrs: vec![],
        egress: false,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A flow over IPsec (in scope in ipsec mode).
fn fl(src: &str, dst: &str, proto: &str) -> Flow {
    Flow::new(ip(src), ip(dst), proto.parse().unwrap()).via_ipsec(true)
}

fn judge(rs: &Ruleset, f: &Flow) -> Evaluation {
    evaluate(rs, f).unwrap()
}

fn allows(rs: &Ruleset, f: &Flow) -> bool {
    judge(rs, f).decision == Decision::Allow
}

fn group_rule(o: &Origin) -> Option<(&str, usize)> {
    match o {
        Origin::GroupRule { group, rule, .. } => Some((&**group, *rule)),
        _ => None,
    }
}

const ESTATE: &str = r#"
networks:
  - {id: vpc-a, cidrs: [10.1.0.0/16, "fd00:1::/56"]}
prefix_lists:
  - {id: pl-mon, cidrs: [10.50.0.0/24]}
groups:
  - id: sg-web
    ingress:
      - {proto: tcp, ports: 443, from: {groups: [sg-lb]}}
      - {proto: tcp, ports: "8000-8100", from: {groups: [sg-web], cidrs: [10.1.0.0/24]}}
      - {proto: tcp, ports: 9100, from: {prefix_lists: [pl-mon]}}
      - {proto: icmp, icmp_type: 8, from: {cidrs: [10.0.0.0/8]}}
      - {proto: icmpv6, icmp_type: 128, icmp_code: 0, from: {cidrs: ["fd00::/8"]}}
  - id: sg-lb
    ingress:
      - {proto: tcp, ports: 443, from: {cidrs: [0.0.0.0/0, "::/0"]}}
  - id: sg-db
    ingress:
      - {proto: udp, ports: "60000-61000", from: {groups: [sg-ops]}}
      - {proto: 47, from: {groups: [sg-ops]}}
      - {proto: icmp, from: {groups: [sg-ops]}}
  - id: sg-ops
    ingress:
      - {proto: all, from: {cidrs: [10.9.0.0/24, "fd00:9::/64"]}}
hosts:
  - {id: lb1, addresses: [10.1.0.5, "fd00:1::5"], groups: [sg-lb]}
  - {id: web1, addresses: [10.1.0.10, "fd00:1::10"], groups: [sg-web]}
  - {id: web2, addresses: [10.1.0.12], groups: [sg-web, sg-ops]}
  - {id: db1, addresses: [10.1.1.20], groups: [sg-db]}
  - {id: bastion, addresses: [10.9.0.4, "fd00:9::4"], groups: [sg-ops]}
"#;

fn estate(target: Target) -> Ruleset {
    compile(&doc(ESTATE), &ctx(target)).unwrap()
}

#[test]
fn group_source_allows_members_only() {
    let rs = estate(Target::AllGroups);
    let e = judge(&rs, &fl("10.1.0.5", "10.1.0.10", "tcp").port(443));
    assert_eq!(e.decision, Decision::Allow);
    assert_eq!(group_rule(&e.decided_by), Some(("sg-web", 0)));
    assert_eq!(e.dest_groups, ["sg-web"]);
    assert!(
        e.chains
            .starts_with(&["input".to_string(), "g_sg_web".to_string()]),
        "{:?}",
        e.chains
    );
    // Not a member of sg-lb.
    let e = judge(&rs, &fl("10.1.0.6", "10.1.0.10", "tcp").port(443));
    assert_eq!(e.decision, Decision::Deny);
    assert_eq!(
        e.decided_by,
        Origin::Base("no rule of the destination's groups allows it".into())
    );
    assert_eq!(e.dest_groups, ["sg-web"]);
    assert!(e.matched.is_empty());
    // Right source, wrong port.
    assert!(!allows(&rs, &fl("10.1.0.5", "10.1.0.10", "tcp").port(444)));
    // IPv6 member of sg-lb.
    assert!(allows(&rs, &fl("fd00:1::5", "fd00:1::10", "tcp").port(443)));
    assert!(!allows(
        &rs,
        &fl("fd00:1::6", "fd00:1::10", "tcp").port(443)
    ));
    // udp is not tcp.
    assert!(!allows(&rs, &fl("10.1.0.5", "10.1.0.10", "udp").port(443)));
}

#[test]
fn port_ranges_are_inclusive_and_open_ports_need_full_cover() {
    let rs = estate(Target::AllGroups);
    for (port, ok) in [
        (7999, false),
        (8000, true),
        (8050, true),
        (8100, true),
        (8101, false),
    ] {
        assert_eq!(
            allows(&rs, &fl("10.1.0.99", "10.1.0.10", "tcp").port(port)),
            ok,
            "port {port}"
        );
    }
    // "every tcp port" is not allowed by a range...
    assert!(!allows(&rs, &fl("10.1.0.99", "10.1.0.10", "tcp")));
    // ... but is by an `all` rule.
    let e = judge(&rs, &fl("10.9.0.7", "10.1.0.12", "tcp"));
    assert_eq!(e.decision, Decision::Allow);
    assert_eq!(group_rule(&e.decided_by), Some(("sg-ops", 0)));
    // Prefix list entries are sources.
    assert!(allows(&rs, &fl("10.50.0.3", "10.1.0.10", "tcp").port(9100)));
    assert!(!allows(
        &rs,
        &fl("10.50.1.3", "10.1.0.10", "tcp").port(9100)
    ));
}

#[test]
fn union_over_the_destinations_groups_lists_every_matching_rule() {
    let rs = estate(Target::AllGroups);
    // web2 is in sg-web and sg-ops: a profile chain jumps to both.
    let e = judge(&rs, &fl("10.1.0.12", "10.1.0.12", "tcp").port(8080));
    assert_eq!(e.decision, Decision::Allow);
    assert_eq!(e.dest_groups, ["sg-ops", "sg-web"]);
    let m: Vec<_> = e.matched.iter().filter_map(group_rule).collect();
    // sg-web rule 1 matches twice (group sg-web and the cidrs), nothing of sg-ops.
    assert_eq!(m, [("sg-web", 1), ("sg-web", 1)]);
    assert_eq!(e.matched[0], e.decided_by);
    // From the bastion: sg-ops' all-rule and nothing of sg-web.
    let e = judge(&rs, &fl("10.9.0.4", "10.1.0.12", "tcp").port(8080));
    assert_eq!(
        e.matched.iter().filter_map(group_rule).collect::<Vec<_>>(),
        [("sg-ops", 0)]
    );
    // Same answers when compiled for the host alone.
    let host = estate(Target::Host(vec![ip("10.1.0.12")]));
    assert_eq!(
        judge(&host, &fl("10.9.0.4", "10.1.0.12", "tcp").port(8080)).matched,
        e.matched
    );
}

#[test]
fn icmp_types_codes_and_wildcards() {
    let rs = estate(Target::AllGroups);
    // Rule icmp type 8, any code.
    assert!(allows(
        &rs,
        &fl("10.2.0.1", "10.1.0.10", "icmp").icmp(8, Some(0))
    ));
    assert!(allows(
        &rs,
        &fl("10.2.0.1", "10.1.0.10", "icmp").icmp(8, Some(7))
    ));
    assert!(allows(
        &rs,
        &fl("10.2.0.1", "10.1.0.10", "icmp").icmp(8, None)
    ));
    assert!(!allows(
        &rs,
        &fl("10.2.0.1", "10.1.0.10", "icmp").icmp(13, Some(0))
    ));
    assert!(
        !allows(&rs, &fl("10.2.0.1", "10.1.0.10", "icmp")),
        "every type is more than type 8"
    );
    // icmpv6 type 128 code 0 only.
    assert!(allows(
        &rs,
        &fl("fd00:2::1", "fd00:1::10", "icmpv6").icmp(128, Some(0))
    ));
    assert!(!allows(
        &rs,
        &fl("fd00:2::1", "fd00:1::10", "icmpv6").icmp(128, Some(1))
    ));
    assert!(
        !allows(
            &rs,
            &fl("fd00:2::1", "fd00:1::10", "icmpv6").icmp(128, None)
        ),
        "every code is more than code 0"
    );
    assert!(!allows(
        &rs,
        &fl("fd00:2::1", "fd00:1::10", "icmpv6").icmp(129, Some(0))
    ));
    // icmp with no type in the rule: every type and code, IPv4 only.
    assert!(allows(&rs, &fl("10.9.0.4", "10.1.1.20", "icmp")));
    assert!(allows(
        &rs,
        &fl("10.9.0.4", "10.1.1.20", "icmp").icmp(13, Some(0))
    ));
}

#[test]
fn protocol_numbers_and_all() {
    let rs = estate(Target::AllGroups);
    // sg-db: proto 47 from sg-ops.
    assert!(allows(&rs, &fl("10.9.0.4", "10.1.1.20", "47")));
    assert!(!allows(&rs, &fl("10.9.0.4", "10.1.1.20", "48")));
    assert!(
        !allows(&rs, &fl("10.9.0.4", "10.1.1.20", "all")),
        "no rule allows every protocol"
    );
    // sg-ops: all from 10.9.0.0/24, any protocol, in both families.
    for p in ["all", "tcp", "udp", "47", "132", "icmp"] {
        assert!(allows(&rs, &fl("10.9.0.9", "10.9.0.4", p)), "{p}");
    }
    assert!(allows(
        &rs,
        &fl("fd00:9::9", "fd00:9::4", "icmpv6").icmp(128, Some(0))
    ));
    assert!(!allows(&rs, &fl("10.8.0.9", "10.9.0.4", "all")));
}

#[test]
fn destinations_outside_every_group_are_dropped() {
    let rs = estate(Target::AllGroups);
    let e = judge(&rs, &fl("10.9.0.4", "10.1.7.7", "tcp").port(22));
    assert_eq!(e.decision, Decision::Deny);
    assert!(e.dest_groups.is_empty());
    assert_eq!(e.chains, ["input"]);
    // A host target dispatches only its own addresses.
    let rs = estate(Target::Host(vec![ip("10.1.0.10")]));
    assert!(!allows(&rs, &fl("10.9.0.4", "10.9.0.4", "tcp").port(22)));
    assert!(allows(&rs, &fl("10.1.0.5", "10.1.0.10", "tcp").port(443)));
}

#[test]
fn always_accepted_traffic() {
    let rs = estate(Target::AllGroups);
    let base = |f: Flow| {
        let e = judge(&rs, &f);
        assert_eq!(e.decision, Decision::Allow, "{f}");
        match e.decided_by {
            Origin::Base(why) => why,
            o => panic!("{f}: decided by {o:?}"),
        }
    };
    let (a, d, a6, d6) = ("192.0.2.1", "10.1.1.20", "2001:db8::1", "fd00:1::10");
    assert_eq!(base(fl(a, d, "udp").port(500)), "IKE");
    assert_eq!(base(fl(a, d, "udp").port(4500)), "IKE");
    assert!(!allows(&rs, &fl(a, d, "udp").port(501)));
    assert!(!allows(&rs, &fl(a, d, "tcp").port(500)));
    assert_eq!(base(fl(a, d, "50")), "ESP and AH");
    assert_eq!(base(fl(a, d, "51")), "ESP and AH");
    assert_eq!(base(fl(a6, d6, "50")), "ESP and AH");
    for t in [3, 11, 12] {
        base(fl(a, d, "icmp").icmp(t, Some(4)));
        base(fl(a, d, "icmp").icmp(t, None));
    }
    assert!(!allows(&rs, &fl(a, d, "icmp").icmp(8, Some(0))));
    for t in [1, 2, 3, 4, 133, 134, 135, 136] {
        base(fl(a6, d6, "icmpv6").icmp(t, Some(0)));
    }
    assert!(!allows(&rs, &fl(a6, d6, "icmpv6").icmp(137, Some(0))));
    // Established and related, loopback.
    let mut f = fl(a, d, "tcp").port(22);
    assert!(!allows(&rs, &f));
    f.state = ConnState::Established;
    assert_eq!(base(f.clone()), "established or related connection");
    f.state = ConnState::Related;
    base(f.clone());
    f.state = ConnState::New;
    f.iif = Some("lo".into());
    assert_eq!(base(f), "loopback");
}

#[test]
fn ipsec_scope() {
    let rs = estate(Target::AllGroups);
    let f = fl("192.0.2.1", "10.1.1.20", "tcp").port(22);
    assert!(!allows(&rs, &f));
    let e = judge(&rs, &f.clone().via_ipsec(false));
    assert_eq!(
        (e.decision, e.decided_by),
        (
            Decision::Allow,
            Origin::Base("out of scope: not over IPsec".into())
        )
    );
}

#[test]
fn cidr_scope_local_and_unmanaged_sources_pass() {
    let d = doc(ESTATE);
    let mut c = ctx(Target::Host(vec![ip("10.1.1.20"), ip("fd00:1::10")]));
    c.enforce = Enforce::Cidr;
    c.managed_cidrs = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
    // local_cidrs auto: vpc-a's blocks.
    let rs = compile(&d, &c).unwrap();
    let why = |f: &Flow| {
        let e = judge(&rs, f);
        (e.decision, e.decided_by.to_string())
    };
    // ipsec does not matter in cidr mode.
    for via in [false, true] {
        let f = |s: &str, dst: &str| fl(s, dst, "tcp").port(22).via_ipsec(via);
        assert_eq!(
            why(&f("10.2.0.1", "10.1.1.20")).0,
            Decision::Deny,
            "managed, not local: enforced"
        );
        assert_eq!(
            why(&f("10.1.9.9", "10.1.1.20")),
            (
                Decision::Allow,
                "out of scope: source in local_cidrs".into()
            )
        );
        assert_eq!(
            why(&f("192.168.1.1", "10.1.1.20")),
            (
                Decision::Allow,
                "out of scope: source not in managed_cidrs".into()
            )
        );
        assert_eq!(why(&f("fd00:2::1", "fd00:1::10")).0, Decision::Deny);
        assert_eq!(why(&f("fd00:1::99", "fd00:1::10")).0, Decision::Allow);
        assert_eq!(why(&f("2001:db8::1", "fd00:1::10")).0, Decision::Allow);
    }
    // An explicit local list replaces auto.
    c.local_cidrs = Some(vec![]);
    let rs = compile(&d, &c).unwrap();
    assert_eq!(
        judge(&rs, &fl("10.1.9.9", "10.1.1.20", "tcp").port(22)).decision,
        Decision::Deny
    );
}

#[test]
fn failsafe_beats_the_document() {
    let d = doc(ESTATE);
    let mut c = ctx(Target::Host(vec![ip("10.1.1.20"), ip("fd00:1::10")]));
    c.failsafe = vec![
        Failsafe {
            proto: Proto::Tcp,
            port: Some(PortRange {
                first: 22,
                last: 22,
            }),
            from: Some("10.9.0.0/24".parse().unwrap()),
        },
        Failsafe {
            proto: Proto::Udp,
            port: None,
            from: None,
        },
    ];
    c.log_drop = true;
    c.log_accept = true;
    let rs = compile(&d, &c).unwrap();
    let e = judge(&rs, &fl("10.9.0.77", "10.1.1.20", "tcp").port(22));
    assert_eq!(
        (e.decision, e.decided_by),
        (Decision::Allow, Origin::Failsafe(0))
    );
    assert!(!allows(&rs, &fl("10.9.1.77", "10.1.1.20", "tcp").port(22)));
    assert!(!allows(&rs, &fl("10.9.0.77", "10.1.1.20", "tcp").port(23)));
    let e = judge(&rs, &fl("2001:db8::1", "fd00:1::10", "udp").port(9));
    assert_eq!(e.decided_by, Origin::Failsafe(1));
    // Logging (a rate-limited log rule before the drop) changes no verdict.
    let e = judge(&rs, &fl("10.2.0.1", "10.1.1.20", "tcp").port(80));
    assert_eq!(e.decision, Decision::Deny);
    assert_eq!(
        e.decided_by,
        Origin::Base("no rule of the destination's groups allows it".into())
    );
}

#[test]
fn broken_rulesets_are_errors() {
    let all = ctx(Target::AllGroups);
    let mut rs = crate::compile::tests::compile_sets(&doc(ESTATE), &all).unwrap();
    let f = fl("10.1.0.5", "10.1.0.10", "tcp").port(443);
    rs.sets.clear();
    assert!(matches!(evaluate(&rs, &f), Err(EvalError::UnknownSet(_))));
    let mut rs = estate(Target::AllGroups);
    rs.chains.clear();
    assert!(matches!(evaluate(&rs, &f), Err(EvalError::UnknownChain(_))));
    let mut rs = estate(Target::AllGroups);
    let name = rs
        .dispatch4
        .iter()
        .find(|e| e.range.contains(&f.dst))
        .unwrap()
        .chain
        .clone();
    let chain = rs.chains.iter_mut().find(|c| c.name == name).unwrap();
    chain.rules.insert(
        0,
        crate::compile::Rule {
            matches: vec![],
            log: None,
            counter: None,
            verdict: crate::compile::Verdict::Jump(name.clone()),
            origin: Origin::Base("loop".into()),
        },
    );
    assert_eq!(evaluate(&rs, &f), Err(EvalError::TooDeep));
}

#[test]
fn flow_checks() {
    let f = |s: &str, d: &str, p: &str| Flow::new(ip(s), ip(d), p.parse().unwrap());
    assert!(f("10.0.0.1", "fd00::1", "tcp").check().is_err());
    assert!(f("10.0.0.1", "10.0.0.2", "udp").port(53).check().is_ok());
    assert!(f("10.0.0.1", "10.0.0.2", "all").port(53).check().is_err());
    assert!(f("10.0.0.1", "10.0.0.2", "tcp")
        .icmp(8, None)
        .check()
        .is_err());
    assert!(f("10.0.0.1", "10.0.0.2", "icmp")
        .icmp(8, Some(0))
        .check()
        .is_ok());
    assert!(f("fd00::1", "fd00::2", "icmp").check().is_err());
    assert!(f("10.0.0.1", "10.0.0.2", "icmpv6").check().is_err());
    assert!(
        f("fd00::1", "fd00::2", "51").check().is_err(),
        "AH is an extension header in IPv6"
    );
    assert!(f("10.0.0.1", "10.0.0.2", "51").check().is_ok());
    let mut g = f("10.0.0.1", "10.0.0.2", "icmp");
    g.icmp_code = Some(1);
    assert!(g.check().is_err());
    assert_eq!(
        f("10.0.0.1", "10.0.0.2", "tcp").port(22).to_string(),
        "10.0.0.1 -> 10.0.0.2 tcp/22"
    );
}

mod gateway;
mod properties;

/// Audit mode: what the policy allows is allowed; what it does not is still a deny, decided by
/// the audit chain (accepted, logged and counted by the kernel).
#[test]
fn audit_mode_still_denies_what_the_policy_does_not_allow() {
    use crate::compile::tests::{ctx, doc, TWO};
    use crate::config::Action;
    let d = doc(TWO);
    let mut c = ctx(&["10.0.0.1", "10.0.0.2"]);
    c.action = Action::Audit;
    let rs = compile(&d, &c).unwrap();
    let drop = compile(&d, &ctx(&["10.0.0.1", "10.0.0.2"])).unwrap();
    // eval: what the policy allows is allowed; what it does not is still a deny, by audit.
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let ok = Flow::new(ip("10.9.0.7"), ip("10.0.0.1"), Proto::Tcp).port(22);
    let e = evaluate(&rs, &ok.via_ipsec(true)).unwrap();
    assert_eq!(e.decision, Decision::Allow);
    assert!(!e.audited());
    let bad = Flow::new(ip("10.9.0.7"), ip("10.0.0.1"), Proto::Tcp).port(23);
    let e = evaluate(&rs, &bad.clone().via_ipsec(true)).unwrap();
    assert_eq!(e.decision, Decision::Deny);
    assert!(e.audited(), "{:?}", e.decided_by);
    assert_eq!(e.dest_groups, vec!["sg-a".to_string(), "sg-b".to_string()]);
    let e = evaluate(&drop, &bad.via_ipsec(true)).unwrap();
    assert_eq!(e.decision, Decision::Deny);
    assert!(!e.audited());
}
