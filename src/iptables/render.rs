//! IR -> what the iptables backend runs: the input of `ipset restore` (stage, swap, cleanup)
//! and of `iptables-restore --noflush` / `ip6tables-restore --noflush`, through the templates
//! in `compat/` (embedded in the binary).
//!
//! # Translation
//!
//! The IR's base chain is an nftables base chain with its own hook: its `accept` is not final
//! (another table can still drop what it accepts), its `drop` is. In iptables our chains hang
//! off the host's INPUT chain, where `-j ACCEPT` would be final for the whole filter table and
//! skip every rule the host has after our jump. So an IR `accept` becomes `-j RETURN` back to
//! INPUT, whose remaining rules then decide, exactly like the other tables would under nft.
//!
//! For `RETURN` to leave all of reyes' chains at once, every chain below `REYES-INPUT` is
//! entered with a goto (`-g`), never a call, so the only frame on the stack is INPUT's. An IR
//! jump or dispatch (a call that comes back) is turned into continuation-passing style: the
//! rules after it go into a segment chain (`REYES-INPUT-1`), and the target chain ends with a
//! goto to that segment instead of returning. A group chain reached from a profile chain
//! continues into the next group of the profile; such a variant of a chain gets its own name
//! (`REYES-G-web-1a2b3c4d`), the variant reached straight from dispatch keeps the plain name.
//!
//! Other differences from nft, all mechanical:
//! - one IR rule with alternatives (several protocols, ICMP types, source prefixes, port lists
//!   longer than multiport's 15 slots) becomes one iptables rule per alternative; the
//!   alternatives are disjoint, so a packet still matches at most one of them;
//! - member sets are `hash:net` ipsets (intervals split into prefixes; `/0` into two `/1`,
//!   which `hash:net` cannot hold); literal prefix lists of more than a few entries become sets;
//! - the destination dispatch becomes a tree of chains of at most 32 rules each:
//!   `-d PREFIX -g CHAIN` leaves in address order, `-m iprange --dst-range LO-HI -g NODE`
//!   above them, so a packet's walk grows with the logarithm of the destinations
//!   ([`DispatchLayout`]);
//! - named counters become chains (`REYES-ACCEPTED`, `REYES-DROPPED`) holding one rule with
//!   the verdict, whose packet counter `status` reads;
//! - log prefixes longer than iptables' 29 characters are shortened (head + hash);
//! - protocol 0 and ICMP type 255, which iptables' `-p` and `--icmp-type` read as "any", are
//!   matched with `u32`.
//!
//! Each rule is written exactly as `iptables-save` prints it (up to protocol names and address
//! spelling, which the comparison normalises), so the apply can read its chains back and
//! compare them with what it rendered.

use std::collections::{BTreeMap, BTreeSet};

use minijinja::{context, Environment};

use crate::compile::Ruleset;
use crate::net::Family;

pub use super::matches::{cidr_text, BUILTIN_PROTOS};
use super::matches::{purpose_text, set_members};
use super::names::clean;
pub use super::names::{
    chain_name, counter_chain, family_kw, log_prefix, set_name, shorten, BASE_CHAIN, CHAIN_PREFIX,
    HOOK_CHAIN, JUMP_SPEC, MAX_CHAIN_NAME, MAX_LOG_PREFIX, MAX_SET_NAME, MULTIPORT_SLOTS,
    OTHER_HOOKS, SET_PREFIX,
};
use super::plan::err;
pub use super::plan::{DispatchLayout, Header, IpSet, Line, Options, Plan, RenderError, Table};

const TMPL_RULESET: &str = include_str!("../../compat/ruleset.j2");
const TMPL_STAGE: &str = include_str!("../../compat/ipset-stage.j2");
const TMPL_SWAP: &str = include_str!("../../compat/ipset-swap.j2");
const TMPL_DESTROY: &str = include_str!("../../compat/ipset-destroy.j2");
const TMPL_FILTER: &str = include_str!("../../compat/filter.j2");

/// Translate a ruleset.
pub fn plan(rs: &Ruleset, opts: &Options) -> Result<Plan, RenderError> {
    let mut sets: BTreeMap<String, IpSet> = BTreeMap::new();
    let mut ir_sets: BTreeMap<String, String> = BTreeMap::new();
    for s in &rs.sets {
        let name = set_name(&s.name);
        if sets.contains_key(&name) {
            return err(format!("two sets would be named {name}"));
        }
        ir_sets.insert(s.name.to_string(), name.clone());
        sets.insert(
            name.clone(),
            IpSet::new(
                name,
                s.family,
                set_members(&s.elements),
                purpose_text(&s.purpose),
            ),
        );
    }
    let v4 = super::translate::translate(rs, Family::V4, *opts, &ir_sets, &mut sets)?;
    let v6 = super::translate::translate(rs, Family::V6, *opts, &ir_sets, &mut sets)?;
    Ok(Plan {
        header: Header {
            environment: clean(&rs.meta.environment),
            policy_digest: clean(&rs.meta.policy_digest),
            target: crate::nft::render::target_text(&rs.meta.target),
            enforce: match rs.meta.enforce {
                crate::config::Enforce::Ipsec => "ipsec",
                crate::config::Enforce::Cidr => "cidr",
            },
        },
        sets: sets.into_values().collect(),
        v4,
        v6,
    })
}

fn env() -> Result<Environment<'static>, RenderError> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    for (name, text) in [
        ("ruleset", TMPL_RULESET),
        ("stage", TMPL_STAGE),
        ("swap", TMPL_SWAP),
        ("destroy", TMPL_DESTROY),
        ("filter", TMPL_FILTER),
    ] {
        env.add_template(name, text)
            .map_err(|error| RenderError::Template { name, error })?;
    }
    Ok(env)
}

fn render_tmpl(name: &'static str, ctx: minijinja::Value) -> Result<String, RenderError> {
    let env = env()?;
    let t = env
        .get_template(name)
        .map_err(|error| RenderError::Template { name, error })?;
    t.render(ctx)
        .map_err(|error| RenderError::Template { name, error })
}

/// `ipset restore` input that fills every set's temporary twin, and creates (empty) the live
/// sets named in `create_live` (those that do not exist yet, so the swap has a partner).
pub fn stage_script(plan: &Plan, create_live: &BTreeSet<String>) -> Result<String, RenderError> {
    let live: Vec<&IpSet> = plan
        .sets
        .iter()
        .filter(|s| create_live.contains(&s.name))
        .collect();
    render_tmpl("stage", context! { sets => plan.sets, create_live => live })
}

/// `ipset restore` input that swaps every temporary set with its live set.
pub fn swap_script(plan: &Plan) -> Result<String, RenderError> {
    render_tmpl("swap", context! { sets => plan.sets })
}

/// `ipset restore` input that destroys these sets.
pub fn destroy_script(names: &[String]) -> Result<String, RenderError> {
    render_tmpl("destroy", context! { names => names })
}

/// Whether a table script inserts the jump from INPUT to reyes' base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jump {
    /// Insert it as the first rule of INPUT (it is absent).
    Insert,
    /// Leave INPUT's rules as they are.
    Leave,
}

/// What a table script does with the jump from FORWARD or OUTPUT to reyes' chain for that
/// hook (gateway mode, egress).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OtherJump {
    /// The built-in chain (`FORWARD`, `OUTPUT`).
    pub hook: &'static str,
    /// reyes' chain (`REYES-FORWARD`, `REYES-OUTPUT`).
    pub base: &'static str,
    /// How many jumps to delete.
    pub delete: usize,
    /// Insert one as the first rule.
    pub insert: bool,
}

impl OtherJump {
    /// The jumps that take the chains from `live` to `table`: insert the jump for each base
    /// chain `table` has and `live` has no jump to; delete every jump to a base chain `table`
    /// no longer has.
    pub fn between(table: &Table, live: &super::save::TableState) -> Vec<OtherJump> {
        OTHER_HOOKS
            .iter()
            .filter_map(|(hook, base)| {
                let want = table.chains.iter().any(|c| c == base);
                let have = live.other_jumps.get(*hook).copied().unwrap_or(0);
                let j = OtherJump {
                    hook,
                    base,
                    delete: if want { 0 } else { have },
                    insert: want && have == 0,
                };
                (j.delete > 0 || j.insert).then_some(j)
            })
            .collect()
    }
}

/// `iptables-restore --noflush` input for one table: declares (and so creates or flushes) our
/// chains, fills them, deletes `delete_jumps` jumps from INPUT, deletes the chains in `stale`
/// (ours, no longer used), and inserts the jump from INPUT with [`Jump::Insert`]. The jumps
/// from FORWARD and OUTPUT: with [`Jump::Insert`], one for each base chain of `table`.
pub fn table_script(
    table: &Table,
    jump: Jump,
    stale: &[String],
    delete_jumps: usize,
) -> Result<String, RenderError> {
    let other = match jump {
        Jump::Insert => OtherJump::between(table, &Default::default()),
        Jump::Leave => Vec::new(),
    };
    table_script_with(table, jump, stale, delete_jumps, &other)
}

/// [`table_script`] with the jumps from FORWARD and OUTPUT given.
pub fn table_script_with(
    table: &Table,
    jump: Jump,
    stale: &[String],
    delete_jumps: usize,
    other: &[OtherJump],
) -> Result<String, RenderError> {
    let insert_jump = jump == Jump::Insert;
    render_tmpl(
        "filter",
        context! {
            chains => table.chains,
            lines => table.lines,
            stale => stale,
            insert_jump => insert_jump,
            delete_jumps => delete_jumps,
            other => other,
            hook => HOOK_CHAIN,
            base => BASE_CHAIN,
        },
    )
}

/// The whole text for `reyes render --backend iptables`: every script an apply on a host
/// without reyes' objects runs, in order.
pub fn render(rs: &Ruleset, opts: &Options) -> Result<String, RenderError> {
    let plan = plan(rs, opts)?;
    render_plan(&plan)
}

/// [`render`] of a plan.
pub fn render_plan(plan: &Plan) -> Result<String, RenderError> {
    let all: BTreeSet<String> = plan.sets.iter().map(|s| s.name.clone()).collect();
    let temps: Vec<String> = plan.sets.iter().map(|s| s.temp.clone()).collect();
    render_tmpl(
        "ruleset",
        context! {
            header => plan.header,
            stage => stage_script(plan, &all)?,
            swap => swap_script(plan)?,
            filter4 => table_script(&plan.v4, Jump::Insert, &[], 0)?,
            filter6 => table_script(&plan.v6, Jump::Insert, &[], 0)?,
            cleanup => destroy_script(&temps)?,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::super::matches::{limit_text, port_alternatives};
    use super::super::names::TEMP_SUFFIX;
    use super::*;
    use crate::compile::{PortProto, Target};
    use crate::net::Range;
    use crate::proto::PortRange;

    use crate::compile::tests::{compile_sets, ctx, doc, TWO};

    fn specs(t: &Table, chain: &str) -> Vec<String> {
        t.lines
            .iter()
            .filter(|l| l.chain == chain)
            .map(|l| l.spec.clone())
            .collect()
    }

    #[test]
    fn names_are_bounded_and_deterministic() {
        assert_eq!(
            chain_name("g_sg_0123456789abcdef0"),
            "REYES-G-sg_0123456789abcdef0"
        );
        let long = chain_name("g_sg_0123456789abcdef0_and_more");
        assert_eq!(long.len(), MAX_CHAIN_NAME);
        assert_eq!(long, chain_name("g_sg_0123456789abcdef0_and_more"));
        assert_ne!(long, chain_name("g_sg_0123456789abcdef0_and_mord"));
        assert_eq!(
            set_name("m4_sg_0123456789abcdef0"),
            "reyes-m4_sg_0123456789abcdef0"
        );
        let s = set_name("d4_g_sg_0123456789abcdef0");
        assert!(s.len() + TEMP_SUFFIX.len() <= MAX_SET_NAME, "{s}");
        assert_eq!(counter_chain("accepted"), "REYES-ACCEPTED");
    }

    #[test]
    fn log_prefixes_fit() {
        assert_eq!(
            log_prefix("reyes drop: "),
            ("reyes drop: ".to_string(), None)
        );
        let (p, note) = log_prefix("reyes accept sg-0123456789abcdef0/12: ");
        assert_eq!(p.len(), MAX_LOG_PREFIX);
        assert!(
            p.starts_with("reyes accept sg-0123~") && p.ends_with(": "),
            "{p}"
        );
        assert!(note.unwrap().contains("sg-0123456789abcdef0/12"));
    }

    #[test]
    fn ports_and_limits_as_iptables_prints_them() {
        let r = |a, b| PortRange { first: a, last: b };
        assert_eq!(
            port_alternatives(PortProto::Udp, &[r(500, 500), r(4500, 4500)]),
            vec![("-p udp".into(), "-m multiport --dports 500,4500".into())]
        );
        assert_eq!(
            port_alternatives(PortProto::Tcp, &[r(8000, 8100)]),
            vec![("-p tcp".into(), "-m tcp --dport 8000:8100".into())]
        );
        let many: Vec<PortRange> = (0..10).map(|i| r(i * 10, i * 10 + 1)).collect();
        let alts = port_alternatives(PortProto::Tcp, &many);
        assert_eq!(alts.len(), 2, "{alts:?}");
        assert_eq!(
            limit_text(5, 10).unwrap(),
            "-m limit --limit 5/sec --limit-burst 10"
        );
        assert_eq!(limit_text(9999, 5).unwrap(), "-m limit --limit 10000/sec");
        assert!(limit_text(0, 5).is_err());
    }

    #[test]
    fn accept_returns_and_groups_continue_into_the_tail() {
        let rs = compile_sets(&doc(TWO), &ctx(&["10.0.0.1"])).unwrap();
        let p = plan(&rs, &Options::default()).unwrap();
        let base = specs(&p.v4, BASE_CHAIN);
        assert_eq!(base[0], "-i lo -j RETURN");
        assert_eq!(
            base[1],
            "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
        );
        assert_eq!(base[2], "-m policy --dir in --pol none -j RETURN");
        assert!(
            base.contains(&"-p esp -j RETURN".to_string())
                && base.contains(&"-p ah -j RETURN".to_string())
        );
        // 10.0.0.1 is in two groups: a profile chain, reached by goto.
        let d = base
            .iter()
            .find(|s| s.starts_with("-d 10.0.0.1/32"))
            .unwrap();
        assert!(d.contains("-g REYES-P-"), "{d}");
        assert_eq!(base.last().unwrap(), "-g REYES-INPUT-1");
        assert_eq!(specs(&p.v4, "REYES-INPUT-1"), vec!["-g REYES-DROPPED"]);
        assert_eq!(specs(&p.v4, "REYES-DROPPED"), vec!["-j DROP"]);
        assert_eq!(specs(&p.v4, "REYES-ACCEPTED"), vec!["-j RETURN"]);
        // The profile goes to a variant of sg-a that continues into sg-b, which continues into
        // the tail.
        let prof = d.rsplit(' ').next().unwrap();
        let first = specs(&p.v4, prof);
        assert_eq!(first.len(), 1);
        let a = first[0].strip_prefix("-g ").unwrap();
        assert!(a.starts_with("REYES-G-sg_a-"), "{a}");
        let a_rules = specs(&p.v4, a);
        assert!(
            a_rules
                .contains(&"-s 10.9.0.0/24 -p tcp -m tcp --dport 22 -g REYES-ACCEPTED".to_string()),
            "{a_rules:?}"
        );
        assert!(a_rules.iter().any(
            |s| s.starts_with("-p tcp -m set --match-set reyes-m4_sg_b src -m tcp --dport 22")
        ));
        assert_eq!(a_rules.last().unwrap(), "-g REYES-G-sg_b");
        assert_eq!(
            specs(&p.v4, "REYES-G-sg_b").last().unwrap(),
            "-g REYES-INPUT-1"
        );
        // No IPv6 destination: the v6 table has no group chains.
        assert!(
            !p.v6.chains.iter().any(|c| c.starts_with("REYES-G-")),
            "{:?}",
            p.v6.chains
        );
    }

    #[test]
    fn dispatch_layouts() {
        let mut c = ctx(&[]);
        c.target = Target::AllGroups;
        let rs = compile_sets(&doc(TWO), &c).unwrap();
        let rules = plan(
            &rs,
            &Options {
                dispatch: DispatchLayout::Rules,
                ..Options::default()
            },
        )
        .unwrap();
        assert!(!rules.sets.iter().any(|s| s.name.starts_with("reyes-d")));
        let sets = plan(
            &rs,
            &Options {
                dispatch: DispatchLayout::Sets,
                ..Options::default()
            },
        )
        .unwrap();
        assert!(
            sets.sets.iter().any(|s| s.name == "reyes-d4_g_sg_b"),
            "{:?}",
            sets.sets.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        assert!(specs(&sets.v4, BASE_CHAIN)
            .iter()
            .any(|s| s == "-m set --match-set reyes-d4_g_sg_b dst -g REYES-G-sg_b"));
    }

    #[test]
    fn odd_protocols_and_icmp() {
        let yaml = r#"
groups:
  - id: sg-a
    ingress:
      - {proto: 0, from: {cidrs: [10.0.0.0/8, "fd00::/8"]}}
      - {proto: icmp, icmp_type: 255, icmp_code: 3, from: {cidrs: [10.0.0.0/8]}}
      - {proto: icmpv6, icmp_type: 1, icmp_code: 4, from: {cidrs: ["fd00::/8"]}}
      - {proto: 47, from: {cidrs: [0.0.0.0/0]}}
hosts:
  - {id: h, addresses: [10.0.0.1, "fd00::1"], groups: [sg-a]}
"#;
        let rs = compile_sets(&doc(yaml), &ctx(&["10.0.0.1", "fd00::1"])).unwrap();
        let p = plan(&rs, &Options::default()).unwrap();
        let g4 = specs(&p.v4, "REYES-G-sg_a");
        assert!(
            g4.contains(
                &"-s 10.0.0.0/8 -m u32 --u32 \"0x6&0xff=0x0\" -g REYES-ACCEPTED".to_string()
            ),
            "{g4:?}"
        );
        assert!(g4.iter().any(|s| s.contains("-p icmp -m u32 --u32 \"0x0>>0x16&0x3c@0x0>>0x18=0xff&&0x0>>0x16&0x3c@0x0>>0x10&0xff=0x3\"")), "{g4:?}");
        assert!(
            g4.contains(&"-p 47 -g REYES-ACCEPTED".to_string()),
            "{g4:?}"
        );
        let g6 = specs(&p.v6, "REYES-G-sg_a");
        assert!(!g6.iter().any(|s| s.contains("u32")), "{g6:?}");
        assert!(
            g6.contains(
                &"-s fd00::/8 -p ipv6-icmp -m icmp6 --icmpv6-type 1/4 -g REYES-ACCEPTED"
                    .to_string()
            ),
            "{g6:?}"
        );
    }

    #[test]
    fn logging_and_long_literals() {
        let yaml = r#"
groups:
  - id: sg-a
    ingress:
      - {proto: tcp, ports: 80, from: {cidrs: [10.1.0.0/24, 10.3.0.0/24, 10.5.0.0/24, 10.7.0.0/24, 10.9.0.0/24]}}
      - {proto: udp, ports: 53, from: {cidrs: [10.1.0.0/24, 10.3.0.0/24]}}
hosts:
  - {id: h, addresses: [10.0.0.1], groups: [sg-a]}
"#;
        let mut c = ctx(&["10.0.0.1"]);
        c.log_accept = true;
        c.log_drop = true;
        let rs = compile_sets(&doc(yaml), &c).unwrap();
        let p = plan(
            &rs,
            &Options {
                literal_rules_max: 4,
                ..Options::default()
            },
        )
        .unwrap();
        let g = specs(&p.v4, "REYES-G-sg_a");
        // Five prefixes: a set; two: one rule each. Accepts are logged first, by rate-limited
        // rules of their own (a limit on the accepting rule would stop it accepting).
        assert!(
            g[0].starts_with("-p tcp -m set --match-set reyes-l4_")
                && g[0].ends_with(
                    "-m limit --limit 5/sec --limit-burst 10 -j LOG --log-prefix \"reyes accept sg-a/0: \""
                ),
            "{g:?}"
        );
        assert!(g[1].ends_with("-g REYES-ACCEPTED"));
        assert!(!g[1].contains("limit"), "{g:?}");
        assert_eq!(
            g[2],
            "-s 10.1.0.0/24 -p udp -m udp --dport 53 -m limit --limit 5/sec --limit-burst 10 -j LOG --log-prefix \"reyes accept sg-a/1: \""
        );
        assert_eq!(
            g[3],
            "-s 10.3.0.0/24 -p udp -m udp --dport 53 -m limit --limit 5/sec --limit-burst 10 -j LOG --log-prefix \"reyes accept sg-a/1: \""
        );
        assert_eq!(
            g[4],
            "-s 10.1.0.0/24 -p udp -m udp --dport 53 -g REYES-ACCEPTED"
        );
        let tail = specs(&p.v4, "REYES-INPUT-1");
        assert_eq!(
            tail,
            vec![
                "-m limit --limit 5/sec --limit-burst 10 -j LOG --log-prefix \"reyes drop: \"",
                "-g REYES-DROPPED"
            ]
        );
        let l = p
            .sets
            .iter()
            .find(|s| s.name.starts_with("reyes-l4_"))
            .unwrap();
        assert_eq!(l.members.len(), 5);
    }

    #[test]
    fn whole_space_is_split_for_sets() {
        let m = set_members(&[Range::all(Family::V4)]);
        assert_eq!(
            m.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            vec!["0.0.0.0/1", "128.0.0.0/1"]
        );
        let m = set_members(&[Range::all(Family::V6)]);
        assert_eq!(
            m.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            vec!["::/1", "8000::/1"]
        );
    }

    /// Follow the dispatch of chain `from` for `dst` as iptables would: the first rule whose
    /// `-d` or `-m iprange` holds it, through `-g`, to a chain that is not a node; counting
    /// the rules looked at.
    fn walk(t: &Table, from: &str, dst: std::net::IpAddr, seen: &mut usize) -> Option<String> {
        let v = crate::net::Range::single(&dst).lo;
        for spec in specs(t, from) {
            *seen += 1;
            let target = spec.rsplit(' ').next().unwrap().to_string();
            let holds = if let Some(d) = spec.strip_prefix("-d ") {
                let c: crate::net::Cidr = d.split(' ').next().unwrap().parse().unwrap();
                c.range().lo <= v && v <= c.range().hi
            } else if let Some(r) = spec.strip_prefix("-m iprange --dst-range ") {
                let (lo, hi) = r.split(' ').next().unwrap().split_once('-').unwrap();
                let (lo, hi): (std::net::IpAddr, std::net::IpAddr) =
                    (lo.parse().unwrap(), hi.parse().unwrap());
                crate::net::Range::single(&lo).lo <= v && v <= crate::net::Range::single(&hi).lo
            } else {
                continue;
            };
            if !holds {
                continue;
            }
            if target.starts_with("REYES-D") {
                return walk(t, &target, dst, seen);
            }
            return Some(target);
        }
        None
    }

    #[test]
    fn dispatch_tree_finds_every_destination_in_few_steps() {
        use std::fmt::Write;
        let mut yaml = String::from("groups:\n");
        for g in 0..300 {
            let _ = writeln!(yaml, "  - {{id: sg-{g:03}}}");
        }
        yaml.push_str("hosts:\n");
        for h in 0..900u32 {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 + 2 * h + 1);
            let _ = writeln!(
                yaml,
                "  - {{id: h{h}, addresses: [{a}, \"fd00::{:x}\"], groups: [sg-{:03}]}}",
                h + 1,
                h % 300
            );
        }
        let mut c = ctx(&[]);
        c.target = Target::AllGroups;
        let rs = crate::compile::compile(&doc(&yaml), &c).unwrap();
        let fanout = 8;
        let p = plan(
            &rs,
            &Options {
                dispatch: DispatchLayout::Tree(fanout),
                ..Options::default()
            },
        )
        .unwrap();
        for (t, dispatch) in [(&p.v4, &rs.dispatch4), (&p.v6, &rs.dispatch6)] {
            assert_eq!(dispatch.len(), 900);
            // Every node holds at most `fanout` rules, and one more to go on.
            for chain in t.chains.iter().filter(|c| c.starts_with("REYES-D")) {
                assert!(specs(t, chain).len() <= fanout + 1, "{chain}");
            }
            let mut worst = 0;
            for e in dispatch.iter() {
                let mut seen = 0;
                let got = walk(t, BASE_CHAIN, e.range.lo_addr(), &mut seen);
                assert_eq!(got, Some(chain_name(&e.chain)), "{}", e.range.lo_addr());
                worst = worst.max(seen);
            }
            // 900 leaves at 8 per chain: four levels; the base chain's own rules come first.
            let base = specs(t, BASE_CHAIN).len();
            assert!(
                worst <= base + 4 * fanout,
                "{worst} rules for one destination"
            );
            // An address between two destinations reaches no group chain.
            let gap = if t.family == Family::V4 {
                "10.0.0.2".parse().unwrap()
            } else {
                "fd00::1:0".parse().unwrap()
            };
            assert_eq!(walk(t, BASE_CHAIN, gap, &mut 0), None);
        }
    }

    #[test]
    fn render_is_deterministic() {
        let rs = compile_sets(&doc(TWO), &ctx(&["10.0.0.1", "10.0.0.2", "fd00::2"])).unwrap();
        let a = render(&rs, &Options::default()).unwrap();
        let b = render(&rs, &Options::default()).unwrap();
        assert_eq!(a, b);
        assert!(a.contains("-I INPUT 1 -j REYES-INPUT"), "{a}");
        assert!(a.contains("swap reyes-m4_sg_b-t reyes-m4_sg_b"), "{a}");
    }
}
