//! Audit mode (`follower.action: audit`): what no rule of a destination's groups allows is
//! logged, counted per destination group (or profile) chain, and accepted instead of dropped.

use std::collections::BTreeMap;

use super::ir::*;
use super::LOG_AUDIT_RATE;

/// Audit mode: every dispatch entry jumps to the audit chain of its group or profile chain
/// instead (a jump to it, then a rate-limited log, a named counter and accept), and each audit
/// chain's counter joins the base chain's named counters. A wrapper rather than rules at the
/// end of the group chain: profile chains jump to group chains too, and an accept at the end
/// of the first group's chain would hide the rules of the others (and count wrongly).
pub(super) fn audit_chains<'d>(
    chains: &mut Vec<Chain>,
    dispatch: impl IntoIterator<Item = &'d mut Vec<DispatchEntry>>,
    base: &mut BaseChain,
) {
    let mut wrappers: BTreeMap<Name, Name> = BTreeMap::new();
    for entries in dispatch {
        for e in entries.iter_mut() {
            let w = wrappers
                .entry(e.chain.clone())
                .or_insert_with(|| Name::from(format!("a_{}", e.chain)));
            e.chain = w.clone();
        }
    }
    for (of, name) in wrappers {
        let groups = match chains.iter().find(|c| c.name == of).map(|c| &c.kind) {
            Some(ChainKind::Group(g) | ChainKind::Egress(g)) => vec![g.clone()],
            Some(ChainKind::Profile(gs) | ChainKind::EgressProfile(gs)) => gs.clone(),
            _ => vec![],
        };
        let counter = Name::from(format!("{AUDIT_COUNTER_PREFIX}{of}"));
        let origin = Origin::Audit(groups.clone());
        let rules = vec![
            Rule {
                matches: vec![],
                log: None,
                counter: None,
                verdict: Verdict::Jump(of.clone()),
                origin: Origin::Base("audit mode: the rules of the destination".into()),
            },
            Rule {
                matches: vec![Match::Limit {
                    rate: LOG_AUDIT_RATE.0,
                    burst: LOG_AUDIT_RATE.1,
                }],
                log: Some(Log {
                    prefix: audit_prefix(&groups),
                }),
                counter: None,
                verdict: Verdict::Continue,
                origin: origin.clone(),
            },
            Rule {
                matches: vec![],
                log: None,
                counter: Some(counter.clone()),
                verdict: Verdict::Accept,
                origin,
            },
        ];
        base.counters.push(NamedCounter {
            name: counter,
            verdict: Verdict::Accept,
        });
        chains.push(Chain {
            name,
            kind: ChainKind::Audit { of, groups },
            rules,
        });
    }
}

/// Audit mode: each audit counter's destination groups (one for a group chain, every group
/// of the addresses that share a profile chain), so that a count can be told by group name.
pub fn audit_counter_groups(rs: &Ruleset) -> BTreeMap<String, Vec<String>> {
    rs.chains
        .iter()
        .filter_map(|c| match &c.kind {
            ChainKind::Audit { of, groups } => {
                Some((format!("{AUDIT_COUNTER_PREFIX}{of}"), groups.clone()))
            }
            _ => None,
        })
        .collect()
}

fn audit_prefix(groups: &[String]) -> String {
    let mut g: String = groups
        .join(",")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._:/@+=-,".contains(*c))
        .collect();
    g.truncate(96);
    format!("reyes audit {g}: ")
}
