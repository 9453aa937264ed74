//! Property: the IR walk agrees with a direct reading of the semantics.

use super::*;

/// Whether `src` is in the prefixes.
fn within(cidrs: &[Cidr], a: &IpAddr) -> bool {
    cidrs.iter().any(|c| c.contains(a))
}

/// The semantics of docs/design.md, read straight off the document and host context, for a
/// concrete flow.
/// Returns the (group, rule) pairs that allow it, or why it is accepted otherwise.
fn reference(
    d: &Document,
    c: &HostContext,
    f: &Flow,
) -> Result<BTreeSet<(String, usize)>, &'static str> {
    let p = &d.policy;
    if f.iif.as_deref() == Some("lo") {
        return Err("loopback");
    }
    if f.state != ConnState::New {
        return Err("conntrack");
    }
    match c.enforce {
        Enforce::Ipsec if !f.via_ipsec => return Err("scope"),
        Enforce::Ipsec => {}
        Enforce::Cidr => {
            let local = c
                .local_cidrs
                .clone()
                .unwrap_or_else(|| crate::compile::auto_local_cidrs(p, &c.target));
            if !within(&c.managed_cidrs, &f.src) || within(&local, &f.src) {
                return Err("scope");
            }
        }
    }
    let n = f.proto.number().unwrap();
    let v4 = f.family() == Family::V4;
    let ty = f.icmp_type.unwrap_or(0);
    if (f.proto == Proto::Udp && matches!(f.port, Some(500 | 4500)))
        || n == 50
        || n == 51
        || (v4 && f.proto == Proto::Icmp && [3, 11, 12].contains(&ty))
        || (!v4 && f.proto == Proto::Icmpv6 && [1, 2, 3, 4, 133, 134, 135, 136].contains(&ty))
    {
        return Err("always");
    }
    for fs in &c.failsafe {
        let proto_ok = match fs.proto {
            Proto::All => true,
            Proto::Tcp | Proto::Udp => {
                f.proto == fs.proto && fs.port.is_none_or(|r| r.contains(f.port.unwrap()))
            }
            other => f.proto == other,
        };
        if proto_ok && fs.from.is_none_or(|from| from.contains(&f.src)) {
            return Err("failsafe");
        }
    }
    let dst_is_target = match &c.target {
        Target::AllGroups => true,
        Target::Host(addrs) => addrs.contains(&f.dst),
    };
    let mut out = BTreeSet::new();
    if !dst_is_target {
        return Ok(out);
    }
    for g in p.groups.iter().filter(|g| within(&g.members, &f.dst)) {
        for (i, r) in g.ingress.iter().enumerate() {
            let proto_ok = match r.proto {
                Proto::All => true,
                Proto::Tcp | Proto::Udp => {
                    f.proto == r.proto && r.ports.unwrap().contains(f.port.unwrap())
                }
                Proto::Icmp | Proto::Icmpv6 => {
                    f.proto == r.proto
                        && r.icmp_type.is_none_or(|t| t == ty)
                        && r.icmp_code.is_none_or(|code| Some(code) == f.icmp_code)
                }
                Proto::Number(x) => n == x,
            };
            let family_ok = match r.proto {
                Proto::Icmp => v4,
                Proto::Icmpv6 => !v4,
                _ => true,
            };
            let src_ok = within(&r.from.cidrs, &f.src)
                || r.from
                    .groups
                    .iter()
                    .any(|s| p.group(s).is_some_and(|s| within(&s.members, &f.src)))
                || r.from
                    .prefix_lists
                    .iter()
                    .any(|l| p.prefix_list(l).is_some_and(|l| within(&l.cidrs, &f.src)));
            if proto_ok && family_ok && src_ok {
                out.insert((g.id.clone(), i));
            }
        }
    }
    Ok(out)
}

/// A small address universe, so that members, sources and flows overlap often.
fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0u8..3, 0u8..6).prop_map(|(a, b)| IpAddr::from([10, a, 0, b])),
        (0u16..3, 0u16..6).prop_map(|(a, b)| IpAddr::from([0xfd00, a, 0, 0, 0, 0, 0, b])),
    ]
}

fn cidr() -> impl Strategy<Value = Cidr> {
    (addr(), 0u8..4).prop_map(|(a, k)| {
        let len = match (a, k) {
            (IpAddr::V4(_), k) => [32, 30, 24, 8][k as usize],
            (IpAddr::V6(_), k) => [128, 126, 64, 8][k as usize],
        };
        Cidr::new(ipnet::IpNet::new(a, len).unwrap())
    })
}

const PORTS: [u16; 8] = [0, 1, 22, 80, 443, 500, 4500, 65535];

fn port_range() -> impl Strategy<Value = PortRange> {
    (0usize..PORTS.len(), 0usize..PORTS.len()).prop_map(|(a, b)| PortRange {
        first: PORTS[a.min(b)],
        last: PORTS[a.max(b)],
    })
}

fn inv_rule(ngroups: usize) -> impl Strategy<Value = InvRule> {
    let proto = prop_oneof![
        Just(Proto::Tcp),
        Just(Proto::Udp),
        Just(Proto::Icmp),
        Just(Proto::Icmpv6),
        Just(Proto::All),
        Just(Proto::Number(47)),
        Just(Proto::Number(50)),
        Just(Proto::Number(132)),
    ];
    let icmp = proptest::option::of((
        prop_oneof![Just(0u8), Just(3), Just(8), Just(128), Just(133)],
        proptest::option::of(0u8..3),
    ));
    (
        proto,
        port_range(),
        icmp,
        proptest::collection::vec(cidr(), 0..3),
        proptest::collection::vec(0..ngroups, 0..3),
        any::<bool>(),
    )
        .prop_map(|(proto, ports, icmp, cidrs, groups, pl)| InvRule {
            proto,
            ports: proto.has_ports().then_some(ports),
            icmp_type: icmp.filter(|_| proto.is_icmp()).map(|(t, _)| t),
            icmp_code: icmp.filter(|_| proto.is_icmp()).and_then(|(_, c)| c),
            from: Sources {
                groups: groups.into_iter().map(|g| format!("sg-{g}")).collect(),
                cidrs: if cidrs.is_empty() && !pl {
                    vec!["10.0.0.0/30".parse().unwrap()]
                } else {
                    cidrs
                },
                prefix_lists: if pl { vec!["pl-a".into()] } else { vec![] },
            },
        })
}

prop_compose! {
    fn inventory()(ngroups in 1usize..5)(
        rules in proptest::collection::vec(proptest::collection::vec(inv_rule(ngroups), 0..4), ngroups),
        hosts in proptest::collection::vec((proptest::collection::vec(cidr(), 1..3), proptest::collection::vec(0..ngroups, 0..3)), 1..6),
        pl in proptest::collection::vec(cidr(), 0..3),
        net in proptest::collection::vec(cidr(), 0..3),
    ) -> Inventory {
        Inventory {
            networks: vec![Network { id: "vpc-a".into(), cidrs: net }],
            subnets: vec![],
            groups: rules.into_iter().enumerate().map(|(i, ingress)| Group { id: format!("sg-{i}"), name: format!("g{i}"), network: None, ingress, egress: None }).collect(),
            hosts: hosts.into_iter().enumerate().map(|(i, (addresses, groups))| Host {
                id: format!("h{i}"),
                addresses,
                groups: groups.into_iter().map(|g| format!("sg-{g}")).collect(),
                subnet: None,
            }).collect(),
            prefix_lists: vec![PrefixList { id: "pl-a".into(), cidrs: pl }],
        }
    }
}

fn failsafe() -> impl Strategy<Value = Failsafe> {
    (
        prop_oneof![
            Just(Proto::Tcp),
            Just(Proto::Udp),
            Just(Proto::All),
            Just(Proto::Number(47))
        ],
        proptest::option::of(port_range()),
        proptest::option::of(cidr()),
    )
        .prop_map(|(proto, port, from)| Failsafe {
            proto,
            port: port.filter(|_| proto.has_ports()),
            from,
        })
}

prop_compose! {
    fn context()(
        cidr_mode in any::<bool>(),
        managed in proptest::collection::vec(cidr(), 0..3),
        local in proptest::option::of(proptest::collection::vec(cidr(), 0..2)),
        failsafe in proptest::collection::vec(failsafe(), 0..2),
        logs in (any::<bool>(), any::<bool>()),
        target in proptest::option::of(proptest::collection::vec(addr(), 0..3)),
    ) -> HostContext {
        HostContext {
            target: target.map_or(Target::AllGroups, Target::Host),
            enforce: if cidr_mode { Enforce::Cidr } else { Enforce::Ipsec },
            managed_cidrs: managed,
            local_cidrs: local,
            failsafe,
            log_accept: logs.0,
            log_drop: logs.1,
            allow_unknown_host: true,
            action: crate::config::Action::Drop,
            mode: crate::config::Mode::Host,
            gateway_cidrs: vec![],
            egress: false,
        }
    }
}

fn flow() -> impl Strategy<Value = Flow> {
    (
        addr(),
        addr(),
        0u8..8,
        0usize..PORTS.len(),
        prop_oneof![
            Just(0u8),
            Just(3),
            Just(8),
            Just(11),
            Just(128),
            Just(133),
            Just(136)
        ],
        0u8..3,
        any::<bool>(),
        0u8..12,
    )
        .prop_map(|(src, dst, p, port, ty, code, via, st)| {
            let dst = if Family::of(&src) == Family::of(&dst) {
                dst
            } else {
                src // same family: a flow to itself (over the network, not lo)
            };
            let v4 = src.is_ipv4();
            let proto = match p {
                0 => Proto::Tcp,
                1 => Proto::Udp,
                2 if v4 => Proto::Icmp,
                2 => Proto::Icmpv6,
                3 => Proto::Number(47),
                4 => Proto::Number(50),
                5 => Proto::Number(132),
                6 if v4 => Proto::Number(51),
                6 => Proto::Number(253),
                _ => Proto::Number(99),
            };
            let mut f = Flow::new(src, dst, proto).via_ipsec(via);
            if proto.has_ports() {
                f = f.port(PORTS[port].saturating_add(u16::from(code) % 2));
            }
            if proto.is_icmp() {
                f = f.icmp(ty, Some(code));
            }
            f.state = match st {
                0 => ConnState::Established,
                1 => ConnState::Related,
                _ => ConnState::New,
            };
            if st == 2 {
                f.iif = Some("lo".into());
            }
            f
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn walk_agrees_with_the_semantics(
        inv in inventory(),
        excluded in proptest::option::of(0usize..4),
        c in context(),
        flows in proptest::collection::vec(flow(), 1..24),
    ) {
        let d = build(&inv, &opts(excluded.map(|e| format!("sg-{e}")).into_iter().collect())).unwrap().document;
        let rs = compile(&d, &c).unwrap();
        for f in &flows {
            prop_assert!(f.check().is_ok(), "{f}");
            let e = evaluate(&rs, f).unwrap();
            let want = reference(&d, &c, f);
            match &want {
                Err(_) => prop_assert_eq!(e.decision, Decision::Allow, "{}: {:?}", f, e),
                Ok(rules) if rules.is_empty() => prop_assert_eq!(e.decision, Decision::Deny, "{}: {:?}", f, e),
                Ok(rules) => {
                    prop_assert_eq!(e.decision, Decision::Allow, "{}: {:?}", f, e);
                    let got: BTreeSet<(String, usize)> = e.matched.iter().filter_map(group_rule).map(|(g, r)| (g.to_string(), r)).collect();
                    prop_assert_eq!(&got, rules, "{}", f);
                    prop_assert_eq!(Some(&e.decided_by), e.matched.first());
                }
            }
        }
    }

    /// An open port / type / code is allowed only if every value is.
    #[test]
    fn open_fields_allow_only_what_every_value_allows(
        inv in inventory(),
        c in context(),
        f in flow(),
    ) {
        let d = build(&inv, &opts(vec![])).unwrap().document;
        let rs = compile(&d, &c).unwrap();
        let mut open = f.clone();
        open.port = None;
        open.icmp_type = None;
        open.icmp_code = None;
        if evaluate(&rs, &open).unwrap().decision == Decision::Allow {
            let mut concrete = open.clone();
            for v in [0u16, 1, 22, 443, 500, 65535] {
                if open.proto.has_ports() { concrete.port = Some(v); }
                if open.proto.is_icmp() { concrete.icmp_type = Some(v as u8); concrete.icmp_code = Some((v % 3) as u8); }
                prop_assert_eq!(evaluate(&rs, &concrete).unwrap().decision, Decision::Allow, "{}", concrete);
            }
        }
        let mut all = f.clone();
        all.proto = Proto::All;
        all.port = None;
        all.icmp_type = None;
        all.icmp_code = None;
        if evaluate(&rs, &all).unwrap().decision == Decision::Allow {
            prop_assert_eq!(evaluate(&rs, &f).unwrap().decision, Decision::Allow, "{}", f);
        }
    }
}
