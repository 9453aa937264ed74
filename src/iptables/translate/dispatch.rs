//! The destination dispatch: which group (or profile) chain a packet's destination goes to.
//!
//! iptables walks a chain's rules one by one, so one `-d PREFIX -g CHAIN` rule per destination
//! costs a packet time linear in the number of destinations (370 µs at 100k). The default
//! layout is a tree instead ([`DispatchLayout::Tree`]): at most `fanout` rules per chain, each
//! either a leaf (`-d PREFIX -g CHAIN`) or `-m iprange --dst-range LO-HI -g NODE` for a
//! contiguous run of the destinations, in address order. A packet walks at most `fanout` rules
//! per level and `log_fanout(n)` levels. A node that holds no rule for the packet's
//! destination goes on where the dispatch would (the rest of the chain that dispatched).

use std::collections::BTreeMap;

use super::*;
use crate::compile::Rule;
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
        if let DispatchLayout::Tree(fanout) = self.opts.dispatch {
            return self.dispatch_tree(chain, &parts, r, fanout.max(2), comment);
        }
        let mut by_chain: BTreeMap<&str, Vec<Range>> = BTreeMap::new();
        for e in self.rs.dispatch(self.fam) {
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
            };
            let goto = format!("-g {target}");
            let specs = if as_rules {
                let dst: Vec<String> = prefixes.iter().map(dst_text).collect();
                parts.specs(&dst, "", &goto)
            } else {
                let body = format!("d{}_{target_ir}", self.fam.digit());
                let set = IpSet::new(
                    set_name(&body),
                    self.fam,
                    set_members(&ranges),
                    format!("destinations of {target_ir}"),
                );
                let name = self.add_set(set)?;
                parts.specs(&[], &format!("-m set --match-set {name} dst"), &goto)
            };
            let comment = if first { comment.clone() } else { None };
            first = false;
            self.push_all(chain, specs, comment);
        }
        Ok(())
    }

    /// The tree layout: leaves in address order, split into nodes of at most `fanout` rules.
    fn dispatch_tree(
        &mut self,
        chain: &str,
        parts: &Parts,
        r: &Cont,
        fanout: usize,
        comment: Option<String>,
    ) -> Result<(), RenderError> {
        let mut leaves: Vec<(Cidr, String)> = Vec::new();
        for e in self.rs.dispatch(self.fam) {
            let target = self.variant(&e.chain, r)?;
            leaves.extend(
                e.range
                    .to_prefixes()
                    .into_iter()
                    .map(|c| (c, target.clone())),
            );
        }
        let site = Site {
            chain,
            tag: format!("{CHAIN_PREFIX}D{}-{}", self.fam.digit(), hash_hex(chain, 2)),
            fanout,
            next: r,
        };
        let mut nodes = 0;
        self.tree_node(&site, chain, Some(parts), &leaves, &mut nodes, comment)
    }

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
                let specs = parts.specs(&[dst_text(c)], "", &format!("-g {target}"));
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
            let range = format!("-m iprange --dst-range {lo}-{hi}");
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
}

/// `-d PREFIX` (nothing for a /0).
fn dst_text(c: &Cidr) -> String {
    if c.net().prefix_len() == 0 {
        String::new()
    } else {
        format!("-d {}", cidr_text(c))
    }
}
