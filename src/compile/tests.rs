use super::*;
use crate::document::{build, BuildOptions};
use crate::inventory::static_file;
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

pub(crate) fn doc(yaml: &str) -> Document {
    let inv = static_file::parse(yaml, "t").unwrap();
    build(
        &inv,
        &BuildOptions::new(
            "test",
            1,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            Duration::from_secs(3600),
        ),
    )
    .unwrap()
    .document
}

pub(crate) fn ctx(addrs: &[&str]) -> HostContext {
    HostContext::new(Target::Host(
        addrs.iter().map(|a| a.parse().unwrap()).collect(),
    ))
}

/// [`compile`] with a named set for every source group, however small (the default layout
/// writes small groups into the rules): for tests of how sets are handled.
pub(crate) fn compile_sets(d: &Document, c: &HostContext) -> Result<Ruleset, CompileError> {
    let layout = Layout {
        inline_max: 0,
        ..Layout::default()
    };
    compile_with(d, c, layout)
}

pub(crate) const TWO: &str = r#"
groups:
  - id: sg-a
    ingress: [{proto: tcp, ports: 22, from: {groups: [sg-b], cidrs: [10.9.0.0/24, 10.9.0.5]}}]
  - id: sg-b
    ingress: [{proto: all, from: {cidrs: ["fd00::/8"]}}]
hosts:
  - {id: h1, addresses: [10.0.0.1], groups: [sg-a, sg-b]}
  - {id: h2, addresses: [10.0.0.2, "fd00::2"], groups: [sg-b]}
"#;

#[test]
fn unknown_host_refused_unless_allowed() {
    let d = doc(TWO);
    assert!(matches!(
        compile(&d, &ctx(&["192.0.2.1"])),
        Err(CompileError::UnknownHost(_))
    ));
    let mut c = ctx(&["192.0.2.1"]);
    c.allow_unknown_host = true;
    let rs = compile(&d, &c).unwrap();
    assert!(rs.dispatch4.is_empty() && rs.chains.is_empty());
}

#[test]
fn address_in_two_groups_gets_a_profile_chain() {
    let rs = compile(&doc(TWO), &ctx(&["10.0.0.1"])).unwrap();
    assert_eq!(rs.dispatch4.len(), 1);
    let p = rs.chain(&rs.dispatch4[0].chain).unwrap();
    assert_eq!(
        p.kind,
        ChainKind::Profile(vec!["sg-a".into(), "sg-b".into()])
    );
    let a = rs.chain("g_sg_a").unwrap();
    // v4: one rule for the group source, one for the merged literals; v6: the group source.
    assert_eq!(a.rules.len(), 3);
    assert_eq!(
        a.rules[1].matches[0],
        Match::Saddr {
            family: Family::V4,
            addrs: AddrMatch::Literal(vec!["10.9.0.0/24".parse::<Cidr>().unwrap().range()]),
            negate: false
        }
    );
    // sg-b is small: its members are in the rules (10.0.0.1-10.0.0.2 merged), no set.
    assert_eq!(
        a.rules[0].matches[0],
        Match::Saddr {
            family: Family::V4,
            addrs: AddrMatch::Literal(vec![Range {
                family: Family::V4,
                lo: 0x0a00_0001,
                hi: 0x0a00_0002,
            }]),
            negate: false
        }
    );
    assert!(rs.sets.is_empty());
    let rs = compile_sets(&doc(TWO), &ctx(&["10.0.0.1"])).unwrap();
    assert!(rs.set("m4_sg_b").is_some());
    assert_eq!(rs.set("m6_sg_b").unwrap().elements.len(), 1);
    assert!(rs.set("m4_sg_a").is_none(), "sg-a is never a source");
}

#[test]
fn colliding_sanitised_ids_stay_distinct() {
    let yaml = "groups:\n  - {id: sg-a}\n  - {id: sg_a}\nhosts:\n  - {id: h, addresses: [10.0.0.1], groups: [sg-a, sg_a]}\n";
    let rs = compile(&doc(yaml), &ctx(&["10.0.0.1"])).unwrap();
    let names: BTreeSet<&str> = rs.chains.iter().map(|c| &*c.name).collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn failsafe_and_cidr_scope() {
    let mut c = ctx(&["10.0.0.2"]);
    c.enforce = Enforce::Cidr;
    c.managed_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
    c.failsafe = vec![Failsafe {
        proto: Proto::Tcp,
        port: Some(PortRange {
            first: 22,
            last: 22,
        }),
        from: None,
    }];
    let rs = compile(&doc(TWO), &c).unwrap();
    assert_eq!(rs.set("managed4").unwrap().elements.len(), 1);
    assert!(rs.set("managed6").unwrap().elements.is_empty());
    assert!(rs.input.iter().any(|r| r.origin == Origin::Failsafe(0)));
}

#[test]
fn audit_wraps_each_dispatched_chain_and_eval_still_denies() {
    let d = doc(TWO);
    let mut c = ctx(&["10.0.0.1", "10.0.0.2"]);
    c.action = Action::Audit;
    let rs = compile(&d, &c).unwrap();
    let drop = compile(&d, &ctx(&["10.0.0.1", "10.0.0.2"])).unwrap();
    // Every dispatch entry jumps to an audit chain of the chain it jumps to in drop mode.
    assert_eq!(rs.dispatch4.len(), drop.dispatch4.len());
    for (a, b) in rs.dispatch4.iter().zip(&drop.dispatch4) {
        assert_eq!(&*a.chain, format!("a_{}", b.chain));
        let w = rs.chain(&a.chain).unwrap();
        assert_eq!(
            w.kind,
            ChainKind::Audit {
                of: b.chain.clone(),
                groups: match &drop.chain(&b.chain).unwrap().kind {
                    ChainKind::Group(g) => vec![g.clone()],
                    ChainKind::Profile(gs) => gs.clone(),
                    other => panic!("{other:?}"),
                }
            }
        );
        let counter = format!("audit_{}", b.chain);
        assert_eq!(w.rules[0].verdict, Verdict::Jump(b.chain.clone()));
        assert!(w.rules[1]
            .log
            .as_ref()
            .unwrap()
            .prefix
            .starts_with("reyes audit "));
        assert!(matches!(w.rules[1].matches[..], [Match::Limit { .. }]));
        assert_eq!(w.rules[1].verdict, Verdict::Continue);
        assert_eq!(w.rules[2].counter.as_deref(), Some(counter.as_str()));
        assert_eq!(w.rules[2].verdict, Verdict::Accept);
        assert!(rs
            .base
            .counters
            .iter()
            .any(|n| *n.name == *counter && n.verdict == Verdict::Accept));
    }
    // The group and profile chains themselves, the base chain and the final drop are unchanged.
    for ch in &drop.chains {
        assert_eq!(rs.chain(&ch.name), Some(ch));
    }
    assert_eq!(rs.input, drop.input);
    assert_eq!(rs.chains.len(), drop.chains.len() + drop.dispatch4.len());
}

#[test]
fn drop_mode_keeps_the_context_digest_audit_changes_it() {
    let c = ctx(&["10.0.0.1"]);
    let json = serde_json::to_string(&c).unwrap();
    assert!(!json.contains("action"), "{json}");
    let mut a = c.clone();
    a.action = Action::Audit;
    assert_ne!(a.digest(), c.digest());
    let back: HostContext = serde_json::from_str(&json).unwrap();
    assert_eq!(back, c);
}
