//! The destination dispatch: which group (or profile) chain a packet's destination goes to.
//!
//! iptables walks a chain's rules one by one, so one `-d PREFIX -g CHAIN` rule per destination
//! costs a packet time linear in the number of destinations (370 µs at 100k). The default
//! layout is a tree instead ([`DispatchLayout::Tree`]): at most `fanout` rules per chain, each
//! either a leaf (`-d PREFIX -g CHAIN`) or `-m iprange --dst-range LO-HI -g NODE` for a
//! contiguous run of the destinations, in address order. A packet walks at most `fanout` rules
//! per level and `log_fanout(n)` levels. A node that holds no rule for the packet's
//! destination goes on where the dispatch would (the rest of the chain that dispatched).
//!
//! The gateway's and egress hooks dispatch through maps ([`Verdict::DispatchBy`]), some by the
//! source address: the same layouts, on `-s` / `--src-range`.

use std::collections::BTreeMap;

use super::*;
use crate::compile::{AddrKey, DispatchEntry, Rule, Verdict};
use crate::iptables::plan::DispatchLayout;

impl Translator<'_> {
    pub(super) fn dispatch(
        &mut self,
        chain: &str,
        rule: &Rule,
        r: &Cont,
    ) -> Result<(), RenderError> {
        if self.primary.is_none() {
            self.primary = Some(r.clone());
        }
        let Some(parts) = self.conditions(rule)? else {
            return Ok(());
        };
        let comment = Some(origin_text(&rule.origin));
        let rs = self.rs;
        let (entries, dir, map): (&[DispatchEntry], Dir, &str) = match &rule.verdict {
            Verdict::DispatchBy { map, key, .. } => {
                let Some(m) = rs.map(map) else {
                    return err(format!(
                        "a rule looks up map {map}, which the ruleset does not define"
                    ));
                };
                let dir = match key {
                    AddrKey::Source => Dir::Src,
                    AddrKey::Destination => Dir::Dst,
                };
                (m.entries.as_slice(), dir, &**map)
            }
            _ => (rs.dispatch(self.fam), Dir::Dst, ""),
        };
        // A source dispatch under a rule that already matches sources cannot add `-s`.
        let addr_free = dir == Dir::Dst || parts.src.is_empty();
        if let (DispatchLayout::Tree(fanout), true) = (self.opts.dispatch, addr_free) {
            let site = Site {
                chain,
                tag: tree_tag(chain, map, self.fam),
                fanout: fanout.max(2),
                next: r,
                dir,
            };
            let mut leaves: Vec<(Cidr, String)> = Vec::new();
            for e in entries {
                let target = self.variant(&e.chain, r)?;
                leaves.extend(
                    e.range
                        .to_prefixes()
                        .into_iter()
                        .map(|c| (c, target.clone())),
                );
            }
            let mut nodes = 0;
            return self.tree_node(&site, chain, Some(&parts), &leaves, &mut nodes, comment);
        }
        let word = match dir {
            Dir::Src => "src",
            Dir::Dst => "dst",
        };
        let mut by_chain: BTreeMap<&str, Vec<Range>> = BTreeMap::new();
        for e in entries {
            by_chain.entry(&*e.chain).or_default().push(e.range);
        }
        let mut first = true;
        for (target_ir, ranges) in by_chain {
            let target = self.variant(target_ir, r)?;
            let prefixes: Vec<Cidr> = ranges.iter().flat_map(|r| r.to_prefixes()).collect();
            let as_rules = match self.opts.dispatch {
                DispatchLayout::Rules => true,
                DispatchLayout::Sets => false,
                DispatchLayout::Auto(max) => prefixes.len() <= max,
                DispatchLayout::Tree(_) => true,
            } && addr_free;
            let goto = format!("-g {target}");
            let specs = if as_rules {
                let addrs: Vec<String> = prefixes.iter().map(|c| addr_text(c, dir)).collect();
                with_addr(&parts, &addrs, dir, "", &goto)
            } else {
                // The input map's sets keep their names; other maps' sets carry the map's.
                let body = if map.is_empty() {
                    format!("d{}_{target_ir}", self.fam.digit())
                } else {
                    format!("{map}_{target_ir}")
                };
                let set = IpSet::new(
                    set_name(&body),
                    self.fam,
                    set_members(&ranges),
                    format!("destinations of {target_ir}"),
                );
                let name = self.add_set(set)?;
                parts.specs(&[], &format!("-m set --match-set {name} {word}"), &goto)
            };
            let comment = if first { comment.clone() } else { None };
            first = false;
            self.push_all(chain, specs, comment);
        }
        Ok(())
    }

    /// The tree layout, leaves in address order, split into nodes of at most `fanout` rules.
    /// Rules for `leaves` in chain `into` (the dispatching chain itself when `parts` is given:
    /// its rule's conditions go on each line there).
    fn tree_node(
        &mut self,
        site: &Site<'_>,
        into: &str,
        parts: Option<&Parts>,
        leaves: &[(Cidr, String)],
        nodes: &mut usize,
        comment: Option<String>,
    ) -> Result<(), RenderError> {
        // Below the dispatching chain the rule's conditions already hold: no conditions.
        let none = Parts {
            protos: vec![(String::new(), String::new())],
            ..Parts::default()
        };
        let parts = parts.unwrap_or(&none);
        let mut comment = comment;
        if leaves.len() <= site.fanout {
            for (c, target) in leaves {
                let addr = [addr_text(c, site.dir)];
                let specs = with_addr(parts, &addr, site.dir, "", &format!("-g {target}"));
                self.push_all(into, specs, comment.take());
            }
            return Ok(());
        }
        // The largest power of the fanout below the count: every node but the last full.
        let mut per = site.fanout;
        while per * site.fanout < leaves.len() {
            per *= site.fanout;
        }
        for run in leaves.chunks(per) {
            *nodes += 1;
            let node = shorten(&format!("{}-{}", site.tag, nodes), MAX_CHAIN_NAME);
            self.declare(&node)?;
            let (lo, hi) = match (run.first(), run.last()) {
                (Some(a), Some(b)) => (a.0.range().lo_addr(), b.0.range().hi_addr()),
                _ => continue,
            };
            let range = match site.dir {
                Dir::Src => format!("-m iprange --src-range {lo}-{hi}"),
                Dir::Dst => format!("-m iprange --dst-range {lo}-{hi}"),
            };
            let specs = parts.specs(&[], &range, &format!("-g {node}"));
            self.push_all(into, specs, comment.take());
            self.tree_node(site, &node, None, run, nodes, None)?;
            if let Cont::Chain(next) = site.next {
                self.push(
                    &node,
                    format!("-g {next}"),
                    Some(format!(
                        "no group chain for the destination (dispatch of {}): go on",
                        site.chain
                    )),
                );
            }
        }
        Ok(())
    }
}

/// One dispatch being laid out as a tree.
struct Site<'a> {
    /// The chain that dispatches.
    chain: &'a str,
    /// Prefix of its node chains.
    tag: String,
    fanout: usize,
    /// Where a destination without a chain goes on.
    next: &'a Cont,
    /// Which address the dispatch reads.
    dir: Dir,
}

/// Prefix of a dispatch's node chains: the input dispatch's as before maps existed; a map's
/// own, so that the forward chain's two dispatches do not share node names.
fn tree_tag(chain: &str, map: &str, fam: Family) -> String {
    let key = if map.is_empty() {
        chain.to_string()
    } else {
        format!("{chain}/{map}")
    };
    format!("{CHAIN_PREFIX}D{}-{}", fam.digit(), hash_hex(&key, 2))
}

/// `-d PREFIX` or `-s PREFIX` (nothing for a /0).
fn addr_text(c: &Cidr, dir: Dir) -> String {
    if c.net().prefix_len() == 0 {
        String::new()
    } else {
        let flag = match dir {
            Dir::Src => "-s",
            Dir::Dst => "-d",
        };
        format!("{flag} {}", cidr_text(c))
    }
}

/// `parts`' alternatives with one more address condition (`addrs`, one alternative each).
fn with_addr(parts: &Parts, addrs: &[String], dir: Dir, set: &str, target: &str) -> Vec<String> {
    match dir {
        Dir::Dst => parts.specs(addrs, set, target),
        Dir::Src => {
            let mut p = parts.clone();
            p.src = addrs.to_vec();
            p.specs(&[], set, target)
        }
    }
}
