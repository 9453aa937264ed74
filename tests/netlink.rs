//! The netlink transport against the real kernel and the real `nft`: every ruleset applied
//! through our encoder must list exactly as `reyes render` wrote it, and exactly as the same
//! ruleset applied through `nft -f`. Plus golden bytes, a 100k-address batch, atomic failure
//! that names the culprit, other tables untouched, and CAP_NET_ADMIN alone being enough.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::{netns_available, normalise, table_block, text, Netns};
use proptest::prelude::*;
use reyes::compile::{
    self, AddrMatch, AddrSet, Chain, ChainKind, CtState, DispatchEntry, HostContext, Log, Match,
    Meta, Origin, PortProto, Rule, Ruleset, SetPurpose, Target, Verdict,
};
use reyes::config::{Config, Enforce};
use reyes::document::{self, BuildOptions, Document};
use reyes::net::{Family, Range};
use reyes::nft::netlink::{self, wire::Emit};
use reyes::nft::render;
use reyes::proto::PortRange;

/// The config scripts/capture-golden renders with (keep in step).
const GOLDEN_CONFIG: &str = "environment: golden
store: {directory: store}
inventory: {file: inventory.yaml, dynamic_subnets: [workers]}
follower:
  managed_cidrs: [10.0.0.0/8]
  failsafe: [{proto: tcp, port: 22, from: 10.9.0.0/24}]
";

fn config() -> Config {
    Config::parse(GOLDEN_CONFIG, Path::new("golden.yaml")).expect("golden config")
}

fn build(inventory_text: &str, dynamic: &[&str]) -> Document {
    let inv = reyes::inventory::static_file::parse(inventory_text, "inventory.yaml").unwrap();
    let opts = BuildOptions {
        environment: "golden".into(),
        serial: 1,
        issued_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        validity: Duration::from_secs(3600),
        excluded_group_names: vec![],
        excluded_group_ids: vec![],
        dynamic_subnets: dynamic.iter().map(|s| s.to_string()).collect(),
    };
    document::build(&inv, &opts).unwrap().document
}

fn example_document() -> Document {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/inventory.yaml"),
    )
    .unwrap();
    build(&text, &["workers"])
}

fn ruleset(doc: &Document, target: Target, enforce: Enforce, logs: bool) -> Ruleset {
    let cfg = config();
    let mut ctx = HostContext::from_config(&cfg.follower, target);
    ctx.enforce = enforce;
    ctx.log_accept = logs;
    ctx.log_drop = logs;
    // A set for every source group (the layout the golden files were taken with): these
    // tests are about sets, and the example's groups are small enough to be inlined.
    compile::compile_with(doc, &ctx, compile::Layout::PLAIN).unwrap()
}

/// Apply through netlink inside `ns`, with the encoder that consumes the ruleset (what
/// `examples/apply` and the benchmark use; the borrowing one gives the same bytes, see the
/// unit tests of `nft::netlink::encode`, and is what the follower's backend uses).
fn nl_apply(ns: &Netns, rs: &Ruleset) -> Result<(), String> {
    let rs = rs.clone();
    ns.enter(move || netlink::apply_owned(rs).map_err(|e| e.to_string()))
}

/// The oracle: netlink apply lists as rendered; `nft -f` of the render lists identically.
fn check_equivalent(ns: &Netns, rs: &Ruleset) {
    let script = render::render(rs).unwrap();
    nl_apply(ns, rs).unwrap_or_else(|e| panic!("netlink apply: {e}\n{script}"));
    let via_netlink = ns
        .nft_list_table("inet", "reyes")
        .expect("table after netlink");
    assert_eq!(
        normalise(&via_netlink),
        normalise(table_block(&script)),
        "netlink listing differs from the render:\n--- rendered\n{}\n--- listed\n{via_netlink}",
        table_block(&script)
    );
    let outline = {
        let rs = rs.clone();
        ns.enter(move || netlink::readback::verify(&rs).map_err(|e| e.to_string()))
    };
    assert_eq!(outline, Ok(vec![]), "netlink read-back outline");
    ns.nft_apply(&script);
    let via_nft = ns.nft_list_table("inet", "reyes").unwrap();
    assert_eq!(via_netlink, via_nft, "netlink and nft -f listings differ");
}

#[test]
fn example_inventory_lists_as_rendered_in_every_mode() {
    if !netns_available() {
        return;
    }
    let ns = Netns::new("nl-eq");
    let doc = example_document();
    for target in [
        Target::AllGroups,
        Target::Host(vec!["10.1.0.12".parse().unwrap()]),
    ] {
        for enforce in [Enforce::Ipsec, Enforce::Cidr] {
            for logs in [false, true] {
                let rs = ruleset(&doc, target.clone(), enforce, logs);
                check_equivalent(&ns, &rs);
            }
        }
    }
}

#[test]
fn audit_mode_lists_as_rendered_through_netlink_and_nft() {
    if !netns_available() {
        return;
    }
    let ns = Netns::new("nl-audit");
    let doc = example_document();
    for target in [
        Target::AllGroups,
        Target::Host(vec!["10.1.0.12".parse().unwrap()]),
    ] {
        let cfg = config();
        let mut ctx = HostContext::from_config(&cfg.follower, target);
        ctx.action = reyes::config::Action::Audit;
        let rs = compile::compile(&doc, &ctx).unwrap();
        assert!(rs
            .base
            .counters
            .iter()
            .any(|c| c.name.starts_with("audit_")));
        check_equivalent(&ns, &rs);
    }
}

#[test]
fn netlink_read_back_notices_a_different_table() {
    if !netns_available() {
        return;
    }
    let ns = Netns::new("nl-readback");
    let doc = example_document();
    let rs = ruleset(&doc, Target::AllGroups, Enforce::Ipsec, false);
    nl_apply(&ns, &rs).unwrap();
    let mut other = rs.clone();
    other.chains[0].rules.pop();
    other.sets[0].elements.clear();
    let chain = other.chains[0].name.clone();
    let set = other.sets[0].name.clone();
    let diff = ns
        .enter(move || netlink::readback::verify(&other).map_err(|e| e.to_string()))
        .unwrap();
    assert!(
        diff.iter()
            .any(|l| l.contains(&format!("chain (rules) {chain}"))),
        "{diff:?}"
    );
    assert!(
        diff.iter()
            .any(|l| l.contains(&format!("set (elements) {set}"))),
        "{diff:?}"
    );

    // Same counts, other contents: one member moved, one destination dispatched elsewhere.
    let mut moved = rs.clone();
    let s = moved
        .sets
        .iter_mut()
        .find(|s| s.family == Family::V4 && !s.elements.is_empty())
        .unwrap();
    let set = s.name.clone();
    let last = s.elements.last_mut().unwrap();
    let was = *last;
    *last = Range {
        family: Family::V4,
        lo: 0xffff_ff01,
        hi: 0xffff_ff01,
    };
    assert!(was.hi < 0xffff_ff00, "{was:?}");
    let d = &mut moved.dispatch4[0];
    let old_chain = d.chain.clone();
    let new_chain = moved
        .chains
        .iter()
        .find(|c| c.name != old_chain)
        .unwrap()
        .name
        .clone();
    moved.dispatch4[0].chain = new_chain.clone();
    let diff = ns
        .enter(move || netlink::readback::verify(&moved).map_err(|e| e.to_string()))
        .unwrap();
    let has = |needle: &str| diff.iter().any(|l| l.contains(needle));
    assert!(
        has(&format!("- set {set}: element 255.255.255.1 is not live")),
        "{diff:?}"
    );
    assert!(
        has(&format!(": jump {new_chain} is not live"))
            && has(&format!(": jump {old_chain} is not in the ruleset")),
        "{diff:?}"
    );
    assert!(
        !diff
            .iter()
            .any(|l| l.contains("(elements)") || l.contains("(rules)")),
        "counts agree: {diff:?}"
    );
}

#[test]
fn the_backend_applies_checks_and_flushes_without_the_nft_binary() {
    use reyes::backend::Backend;
    use reyes::nft::{NftBackend, Transport};
    if !netns_available() {
        return;
    }
    let ns = Netns::new("nl-nonft");
    ns.nft_apply(OTHER);
    let doc = example_document();
    let rs = ruleset(&doc, Target::AllGroups, Enforce::Ipsec, true);
    let r = rs.clone();
    let present = ns
        .enter(move || {
            let b = NftBackend::with_nft("/nonexistent/nft").with_transport(Transport::Netlink);
            b.apply(&r).map_err(|e| e.to_string())?;
            b.present().map_err(|e| e.to_string())
        })
        .unwrap();
    assert!(present);
    let live = ns.nft_list_table("inet", "reyes").unwrap();
    assert_eq!(
        normalise(&live),
        normalise(table_block(&render::render(&rs).unwrap()))
    );
    let present = ns
        .enter(|| {
            let b = NftBackend::with_nft("/nonexistent/nft").with_transport(Transport::Netlink);
            b.flush().map_err(|e| e.to_string())?;
            b.present().map_err(|e| e.to_string())
        })
        .unwrap();
    assert!(!present);
    assert!(ns.nft_list_table("inet", "reyes").is_none());
    assert!(ns.nft_list_table("ip", "other").is_some());
}

#[test]
fn probe_is_accepted_and_commits_nothing() {
    if !netns_available() {
        return;
    }
    let ns = Netns::new("nl-probe");
    ns.nft_apply("table ip other {\n chain c {\n }\n}\n");
    let before = ns.nft_ruleset();
    ns.enter(|| netlink::probe().map_err(|e| e.to_string()))
        .expect("probe");
    assert_eq!(ns.nft_ruleset(), before);
    assert!(ns.nft_list_table("inet", "reyes_probe").is_none());
}

/// One message of a golden file: type name, flags, bytes.
fn golden(name: &str) -> Vec<(String, u16, Vec<u8>)> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}.txt"));
    let text = std::fs::read_to_string(&p).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut w = l.split_whitespace();
            let kind = w.next().unwrap().to_string();
            let flags = u16::from_str_radix(w.next().unwrap(), 16).unwrap();
            let hex = w.next().unwrap();
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (kind, flags, bytes)
        })
        .collect()
}

/// Compare our batch with nft's, message by message: same type, same flags but for our
/// NLM_F_ACK, same bytes but for the sequence number.
fn compare_golden(name: &str, rs: &Ruleset) {
    let mut want = golden(name);
    // Set ids only need to be unique in a batch; nft numbers them with a counter that also
    // counts sets it never sends. Number both sides by order of first NEWSET instead.
    renumber_set_ids(want.iter_mut().map(|(_, _, b)| b));
    let batch = netlink::encode(rs, &|n| (n == "lo").then_some(1)).unwrap();
    let mut owned: Vec<Vec<u8>> = batch.messages().map(|m| m.to_vec()).collect();
    renumber_set_ids(owned.iter_mut());
    let ours: Vec<&[u8]> = owned.iter().map(|m| m.as_slice()).collect();
    let ours = &ours[1..ours.len() - 1];
    assert_eq!(ours.len(), want.len(), "{name}: message count");
    for (i, ((kind, flags, w), o)) in want.iter().zip(ours).enumerate() {
        let oflags = u16::from_ne_bytes([o[6], o[7]]);
        assert_eq!(
            oflags & !4,
            *flags,
            "{name} message {} ({kind}): flags",
            i + 1
        );
        let mut o = o.to_vec();
        let mut w = w.clone();
        o[8..12].fill(0);
        o[6..8].fill(0);
        w[8..12].fill(0);
        w[6..8].fill(0);
        assert_eq!(
            hex(&o),
            hex(&w),
            "{name} message {} ({kind}) differs from nft's ({}):\n{}",
            i + 1,
            batch
                .what(u32::from_ne_bytes([
                    ours[i][8],
                    ours[i][9],
                    ours[i][10],
                    ours[i][11]
                ]))
                .map(|w| w.to_string())
                .unwrap_or_default(),
            "ours first, nft second"
        );
    }
}

/// Attributes of `b` as (offset of the header, type, payload range).
fn attr_spans(b: &[u8], from: usize, to: usize) -> Vec<(usize, u16, usize, usize)> {
    let mut out = Vec::new();
    let mut at = from;
    while at + 4 <= to {
        let len = u16::from_ne_bytes([b[at], b[at + 1]]) as usize;
        let ty = u16::from_ne_bytes([b[at + 2], b[at + 3]]) & 0x3fff;
        if len < 4 || at + len > to {
            break;
        }
        out.push((at, ty, at + 4, at + len));
        at += (len + 3) & !3;
    }
    out
}

fn renumber_set_ids<'a>(msgs: impl Iterator<Item = &'a mut Vec<u8>>) {
    let mut map = std::collections::HashMap::new();
    let fix = |b: &mut Vec<u8>, at: usize, map: &mut std::collections::HashMap<u32, u32>| {
        let v = u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
        let n = map.len() as u32 + 1;
        let id = *map.entry(v).or_insert(n);
        b[at..at + 4].copy_from_slice(&id.to_be_bytes());
    };
    for b in msgs {
        if b.len() < 20 || b[5] != 10 {
            continue;
        }
        let kind = b[4];
        let top = attr_spans(b, 20, b.len());
        for (_, ty, s, e) in top {
            match (kind, ty) {
                (9, 10) | (12, 4) if e - s == 4 => fix(b, s, &mut map),
                (6, 4) => {
                    for (_, _, es, ee) in attr_spans(b, s, e) {
                        let parts = attr_spans(b, es, ee);
                        let is_lookup = parts
                            .iter()
                            .any(|(_, t, ps, pe)| *t == 1 && &b[*ps..*pe] == b"lookup\0");
                        if !is_lookup {
                            continue;
                        }
                        for (_, t, ds, de) in parts {
                            if t != 2 {
                                continue;
                            }
                            for (_, dt, vs, ve) in attr_spans(b, ds, de) {
                                if dt == 4 && ve - vs == 4 {
                                    fix(b, vs, &mut map);
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn golden_bytes_match_what_nft_sends() {
    let doc = example_document();
    compare_golden(
        "example-all-groups",
        &ruleset(&doc, Target::AllGroups, Enforce::Ipsec, false),
    );
    compare_golden(
        "example-host-cidr-logs",
        &ruleset(
            &doc,
            Target::Host(vec!["10.1.0.12".parse().unwrap()]),
            Enforce::Cidr,
            true,
        ),
    );
}

#[test]
fn single_messages_round_trip_through_emit() {
    // Each object's bytes are exactly buffer_len long and parse back as its attributes.
    let t = &netlink::table::Table::REYES;
    let m = t.create();
    let b = m.to_vec();
    assert_eq!(b.len(), m.buffer_len());
    assert_eq!(
        u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
        b.len()
    );
}

// ---------------------------------------------------------------------------------------
// Property: random small rulesets (in the shapes the compiler produces) are equivalent.

fn arb_range(f: Family) -> impl Strategy<Value = Range> {
    let bits = match f {
        Family::V4 => 32u32,
        Family::V6 => 128,
    };
    (any::<u128>(), 0u32..=bits, any::<bool>()).prop_map(move |(seed, len, as_range)| {
        let max = Range::all(f).hi;
        let lo = seed & max;
        if as_range {
            let span = (seed >> 64) % 1000;
            let hi = lo.saturating_add(span).min(max);
            Range { family: f, lo, hi }
        } else {
            let host = bits - len;
            let mask = if host >= 128 {
                u128::MAX
            } else {
                (1u128 << host) - 1
            };
            let lo = lo & !mask & max;
            Range {
                family: f,
                lo,
                hi: (lo | mask) & max,
            }
        }
    })
}

fn arb_ranges(f: Family, n: usize) -> impl Strategy<Value = Vec<Range>> {
    prop::collection::vec(arb_range(f), 0..n).prop_map(reyes::net::merge)
}

fn arb_ports() -> impl Strategy<Value = Vec<PortRange>> {
    prop::collection::btree_set((1u16..2000, 0u16..3), 1..4).prop_map(|s| {
        // Spread out so no two touch (nft would merge touching intervals when listing).
        s.into_iter()
            .map(|(p, w)| (p * 30, p * 30 + w))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .map(|(a, b)| PortRange { first: a, last: b })
            .collect()
    })
}

#[derive(Debug, Clone)]
enum L4 {
    None,
    Ports(PortProto, Vec<PortRange>),
    Protos(Vec<u8>),
    Icmp(Vec<u8>, Option<u8>),
}

fn arb_l4() -> impl Strategy<Value = L4> {
    prop_oneof![
        Just(L4::None),
        (any::<bool>(), arb_ports())
            .prop_map(|(t, p)| L4::Ports(if t { PortProto::Tcp } else { PortProto::Udp }, p)),
        prop::collection::btree_set(prop_oneof![Just(47u8), Just(50), Just(51), Just(132)], 1..3)
            .prop_map(|s| L4::Protos(s.into_iter().collect())),
        (
            prop::collection::btree_set(prop_oneof![Just(0u8), Just(3), Just(8), Just(11)], 1..3),
            prop::option::of(prop_oneof![Just(0u8), Just(1), Just(4)])
        )
            .prop_map(|(t, c)| L4::Icmp(t.into_iter().collect(), c)),
    ]
}

#[derive(Debug, Clone)]
struct RuleSpec {
    v6: bool,
    set: Option<usize>,
    literal: Vec<Range>,
    negate: bool,
    l4: L4,
    log: bool,
    counter: bool,
    verdict: u8,
}

fn arb_rule() -> impl Strategy<Value = RuleSpec> {
    (
        any::<bool>(),
        prop::option::of(0usize..2),
        any::<u64>(),
        any::<bool>(),
        arb_l4(),
        any::<bool>(),
        any::<bool>(),
        0u8..4,
    )
        .prop_flat_map(|(v6, set, _s, negate, l4, log, counter, verdict)| {
            let f = if v6 { Family::V6 } else { Family::V4 };
            arb_ranges(f, 4).prop_map(move |literal| RuleSpec {
                v6,
                set,
                literal,
                negate,
                l4: l4.clone(),
                log,
                counter,
                verdict,
            })
        })
}

fn arb_ruleset() -> impl Strategy<Value = Ruleset> {
    (
        prop::collection::vec(arb_ranges(Family::V4, 6), 2),
        prop::collection::vec(arb_ranges(Family::V6, 6), 2),
        prop::collection::vec(prop::collection::vec(arb_rule(), 1..5), 1..4),
        arb_ranges(Family::V4, 5),
        arb_ranges(Family::V6, 3),
    )
        .prop_map(|(s4, s6, chains, d4, d6)| {
            let mut sets = Vec::new();
            for (i, e) in s4.into_iter().enumerate() {
                sets.push(AddrSet {
                    name: format!("m4_s{i}").into(),
                    family: Family::V4,
                    elements: e,
                    purpose: SetPurpose::Members(format!("s{i}")),
                });
            }
            for (i, e) in s6.into_iter().enumerate() {
                sets.push(AddrSet {
                    name: format!("m6_s{i}").into(),
                    family: Family::V6,
                    elements: e,
                    purpose: SetPurpose::Members(format!("s{i}")),
                });
            }
            let n = chains.len();
            let chains: Vec<Chain> = chains
                .into_iter()
                .enumerate()
                .map(|(ci, rules)| Chain {
                    name: format!("g_c{ci}").into(),
                    kind: ChainKind::Group(format!("c{ci}")),
                    rules: rules
                        .into_iter()
                        .enumerate()
                        .filter_map(|(ri, r)| rule_of(r, ci, ri, n))
                        .collect(),
                })
                .collect();
            let dispatch = |rs: Vec<Range>| -> Vec<DispatchEntry> {
                rs.into_iter()
                    .enumerate()
                    .map(|(i, range)| DispatchEntry {
                        range,
                        chain: format!("g_c{}", i % n).into(),
                    })
                    .collect()
            };
            let base = |matches: Vec<Match>, verdict: Verdict| Rule {
                matches,
                log: None,
                counter: None,
                verdict,
                origin: Origin::Base("test".into()),
            };
            let input = vec![
                base(vec![Match::Iif("lo".into())], Verdict::Accept),
                base(
                    vec![Match::CtState(vec![CtState::Established, CtState::Related])],
                    Verdict::Accept,
                ),
                base(vec![Match::Ipsec(false)], Verdict::Accept),
                base(vec![], Verdict::Dispatch(Family::V4)),
                base(vec![], Verdict::Dispatch(Family::V6)),
                Rule {
                    matches: vec![Match::Limit { rate: 5, burst: 10 }],
                    log: Some(Log {
                        prefix: "reyes drop: ".into(),
                    }),
                    counter: None,
                    verdict: Verdict::Continue,
                    origin: Origin::Base("log".into()),
                },
                Rule {
                    counter: Some(reyes::compile::COUNTER_DROPPED.into()),
                    ..base(vec![], Verdict::Drop)
                },
            ];
            Ruleset {
                meta: Meta {
                    environment: "prop".into(),
                    serial: 1,
                    policy_digest: "sha256:0".into(),
                    enforce: Enforce::Ipsec,
                    target: Target::AllGroups,
                },
                sets,
                dispatch4: dispatch(d4),
                dispatch6: dispatch(d6),
                chains,
                input,
                base: reyes::compile::BaseChain::reyes(),
                hooked: vec![],
                maps: vec![],
            }
        })
}

fn rule_of(r: RuleSpec, chain: usize, index: usize, chains: usize) -> Option<Rule> {
    let f = if r.v6 { Family::V6 } else { Family::V4 };
    let addrs = match (r.set, r.literal.is_empty()) {
        (Some(i), _) => AddrMatch::Set(format!("m{}_s{i}", f.digit()).into()),
        (None, false) => AddrMatch::Literal(r.literal),
        (None, true) => AddrMatch::Set(format!("m{}_s0", f.digit()).into()),
    };
    let mut matches = vec![Match::Saddr {
        family: f,
        addrs,
        negate: r.negate,
    }];
    match r.l4 {
        L4::None => {}
        L4::Ports(proto, ports) => matches.push(Match::Dport { proto, ports }),
        L4::Protos(p) => matches.push(Match::L4Proto(p)),
        L4::Icmp(mut types, code) => {
            if r.v6 {
                types = types.iter().map(|t| t + 128).collect();
            }
            matches.push(Match::Icmp {
                v6: r.v6,
                types,
                code,
            })
        }
    }
    let verdict = match r.verdict {
        0 => Verdict::Accept,
        1 => Verdict::Drop,
        2 if chain + 1 < chains => Verdict::Jump(format!("g_c{}", chain + 1).into()),
        _ if r.log => Verdict::Continue,
        _ => Verdict::Accept,
    };
    Some(Rule {
        matches,
        log: r.log.then(|| Log {
            prefix: format!("reyes c{chain}r{index}: "),
        }),
        counter: r.counter.then(|| reyes::compile::COUNTER_ACCEPTED.into()),
        verdict,
        origin: Origin::Base(format!("prop {chain}/{index}")),
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
    #[test]
    fn random_rulesets_list_identically_through_netlink_and_nft(rs in arb_ruleset()) {
        if netns_available() {
            let ns = Netns::new("nl-prop");
            check_equivalent(&ns, &rs);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Scale, atomicity, other tables, capabilities.

fn synth_document(addresses: u32, groups: u32, rules: u32) -> Document {
    let out = std::process::Command::new(common::example_bin("synth"))
        .args([addresses.to_string(), groups.to_string(), rules.to_string()])
        .output()
        .expect("run the synth example (built by cargo test)");
    assert!(out.status.success(), "{}", text(&out));
    build(&String::from_utf8(out.stdout).unwrap(), &[])
}

const OTHER: &str = "table ip other {
	set s {
		type ipv4_addr
		flags interval
		elements = { 192.0.2.0/24 }
	}
	chain c {
		type filter hook input priority -10; policy accept;
		ip saddr @s counter accept
	}
}
table inet reyes_neighbour {
	chain c {
		tcp dport 1 drop
	}
}
";

#[test]
fn a_100k_address_document_applies_in_one_transaction_and_a_bad_last_object_changes_nothing() {
    if !netns_available() {
        return;
    }
    let ns = Netns::new("nl-big");
    ns.nft_apply(OTHER);
    let others = || {
        (
            ns.nft_list_table("ip", "other").unwrap(),
            ns.nft_list_table("inet", "reyes_neighbour").unwrap(),
        )
    };
    let others_before = others();

    let doc = synth_document(100_000, 5_000, 20_000);
    let rs = ruleset(&doc, Target::AllGroups, Enforce::Ipsec, false);
    let members: usize = rs.sets.iter().map(|s| s.elements.len()).sum();
    assert!(members >= 50_000, "{members} intervals");
    assert!(rs.chains.len() >= 5_000, "{} chains", rs.chains.len());
    let batch = netlink::encode(&rs, &netlink::ifindex).unwrap();
    assert!(batch.len() > 5_000, "{} messages", batch.len());
    nl_apply(&ns, &rs).expect("100k apply");
    let live = ns.nft_list_table("inet", "reyes").unwrap();
    let script = render::render(&rs).unwrap();
    assert!(
        normalise(&live) == normalise(table_block(&script)),
        "100k listing differs from the render"
    );
    assert_eq!(others(), others_before);
    let outline = {
        let rs = rs.clone();
        ns.enter(move || netlink::readback::verify(&rs).map_err(|e| e.to_string()))
    };
    assert_eq!(outline, Ok(vec![]), "netlink read-back outline at 100k");

    // The same ruleset with a broken last object: a jump to a chain that does not exist.
    let mut bad = rs.clone();
    let last = bad.chains.last_mut().unwrap();
    let name = last.name.clone();
    last.rules.push(Rule {
        matches: vec![],
        log: None,
        counter: None,
        verdict: Verdict::Jump("g_no_such_chain".into()),
        origin: Origin::Base("deliberately broken".into()),
    });
    let n = last.rules.len();
    let err = nl_apply(&ns, &bad).expect_err("must be refused");
    eprintln!("refusal: {err}");
    let want = format!("NEWRULE chain {name} rule {n} (deliberately broken)");
    assert!(err.contains(&want), "{err}\nshould name: {want}");
    assert!(err.contains("ENOENT"), "{err}");
    assert_eq!(ns.nft_list_table("inet", "reyes").unwrap(), live);
    assert_eq!(others(), others_before);
}

#[test]
fn a_bad_element_is_named_and_changes_nothing() {
    use netlink::batch::BatchBuilder;
    use netlink::set::{Element, Key, KeyKind, Set, SetElems, SetKind};
    use netlink::table::Table;
    if !netns_available() {
        return;
    }
    let ns = Netns::new("nl-badelem");
    ns.nft_apply(OTHER);
    let doc = example_document();
    let rs = ruleset(&doc, Target::AllGroups, Enforce::Ipsec, false);
    nl_apply(&ns, &rs).unwrap();
    let before = ns.nft_ruleset();

    // A replacement whose last object is an element with a 16-byte key in an IPv4 set.
    let t = &Table::REYES;
    let mut b = BatchBuilder::new(1000);
    b.push(t.create(), "table inet reyes");
    b.push(t.delete(), "table inet reyes");
    b.push(t.create(), "table inet reyes");
    let set = Set {
        table: t,
        name: "m4_bad".into(),
        id: 1,
        key: KeyKind::Ipv4Addr,
        kind: SetKind::Named,
    };
    b.push(set.message(), "set m4_bad");
    let elements = [Element::key(Key::from_u128(1, 16))];
    let elems = SetElems {
        table: t,
        set: Some("m4_bad"),
        set_id: 1,
        elements: &elements,
    };
    b.push(elems.message(), "set m4_bad elements 1-1 of 1");
    let batch = b.finish();
    let err = ns
        .enter(move || {
            netlink::Socket::open()
                .and_then(|s| s.apply(&batch))
                .map_err(|e| e.to_string())
        })
        .expect_err("refused");
    eprintln!("refusal: {err}");
    assert!(
        err.contains("NEWSETELEM set m4_bad elements 1-1 of 1: EINVAL"),
        "{err}"
    );
    assert_eq!(ns.nft_ruleset(), before);

    // And flush removes our table only.
    ns.enter(|| {
        netlink::Socket::open()
            .and_then(|s| s.apply(&netlink::flush_batch()))
            .map_err(|e| e.to_string())
    })
    .unwrap();
    assert!(ns.nft_list_table("inet", "reyes").is_none());
    assert!(ns.nft_list_table("ip", "other").is_some());
}

#[test]
fn cap_net_admin_alone_is_enough() {
    if !netns_available() {
        return;
    }
    let ns = Netns::new("nl-caps");
    let dir = tempfile::tempdir().unwrap();
    let doc_path = dir.path().join("doc.json");
    let doc = example_document();
    std::fs::write(&doc_path, doc.to_bytes()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&doc_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let apply = common::example_bin("apply");
    let o = ns.run(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all,+net_admin",
            "--ambient-caps=-all,+net_admin",
            "--bounding-set=-all,+net_admin",
            "--",
            apply.to_str().unwrap(),
            doc_path.to_str().unwrap(),
            "--all-groups",
        ],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    // What the example binary compiles: the default follower config, every group.
    let mut ctx =
        HostContext::from_config(&reyes::config::FollowerConfig::default(), Target::AllGroups);
    ctx.allow_unknown_host = true;
    let rs = compile::compile(&doc, &ctx).unwrap();
    let live = ns.nft_list_table("inet", "reyes").unwrap();
    assert_eq!(
        normalise(&live),
        normalise(table_block(&render::render(&rs).unwrap()))
    );
    // Without it: refused, and the message says which object and why.
    let o = ns.run(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
            apply.to_str().unwrap(),
            doc_path.to_str().unwrap(),
            "--all-groups",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("EPERM"), "{err}");
}
