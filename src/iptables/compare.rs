//! Comparing what is live with a plan: the read-back check of an apply, the live view
//! (`reyes status`), the diff of a dry run, presence and counters.

use std::collections::{BTreeMap, BTreeSet};

use crate::backend::BackendError;
use crate::net::Family;

use super::names::{BASE_CHAIN, HOOK_CHAIN, JUMP_SPEC, OTHER_HOOKS};
use super::render::{Plan, Table};
use super::save::{normalise_spec, read_sets, read_table, Counters, SetState, TableState};
use super::Tools;

/// Compare what a table should hold with what it holds: the first difference, if any.
pub fn compare_table(table: &Table, live: &TableState) -> Option<String> {
    let tool = table.tool();
    if live.jumps == 0 {
        return Some(format!("{tool}: no -A {HOOK_CHAIN} {JUMP_SPEC}"));
    }
    for (hook, base) in OTHER_HOOKS {
        let want = table.chains.iter().any(|c| c == base);
        let have = live.other_jumps.get(hook).copied().unwrap_or(0);
        if want && have == 0 {
            return Some(format!("{tool}: no -A {hook} -j {base}"));
        }
        if !want && have > 0 {
            return Some(format!("{tool}: unexpected -A {hook} -j {base}"));
        }
    }
    let want = table.expected();
    for (chain, specs) in &want {
        let Some(got) = live.chains.get(chain) else {
            return Some(format!("{tool}: chain {chain} is missing"));
        };
        let a: Vec<String> = specs.iter().map(|s| normalise_spec(s)).collect();
        let b: Vec<String> = got.iter().map(|s| normalise_spec(s)).collect();
        if a != b {
            let i = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            return Some(format!(
                "{tool}: chain {chain} rule {}: rendered {:?}, live {:?}",
                i + 1,
                a.get(i).map(String::as_str).unwrap_or("(none)"),
                b.get(i).map(String::as_str).unwrap_or("(none)")
            ));
        }
    }
    if let Some(extra) = live.chains.keys().find(|c| !want.contains_key(*c)) {
        return Some(format!("{tool}: unexpected chain {extra}"));
    }
    None
}

/// Compare the live sets with the plan's: the first difference, if any.
pub fn compare_sets(plan: &Plan, live: &BTreeMap<String, SetState>) -> Option<String> {
    for s in &plan.sets {
        let Some(l) = live.get(&s.name) else {
            return Some(format!("set {} is missing", s.name));
        };
        if l.kind != "hash:net" || l.family != s.family {
            return Some(format!(
                "set {} is {} family {}, not hash:net family {}",
                s.name, l.kind, l.family, s.family
            ));
        }
        let want: BTreeSet<&str> = s.members.iter().map(String::as_str).collect();
        let got: BTreeSet<&str> = l.members.iter().map(String::as_str).collect();
        if want != got {
            let missing = want.difference(&got).next();
            let extra = got.difference(&want).next();
            return Some(format!(
                "set {}: members differ (missing {missing:?}, unexpected {extra:?})",
                s.name
            ));
        }
    }
    None
}

/// Everything of reyes' that is live, as text (sets with members, then each table's chains),
/// or `None` if nothing is.
pub fn live_text(tools: &Tools) -> Result<Option<String>, BackendError> {
    let lines = live_lines(tools)?;
    if lines.is_empty() {
        return Ok(None);
    }
    let mut out = String::new();
    let mut section = "";
    for (sec, l) in lines {
        if sec != section {
            out.push_str(&format!("# {sec}\n"));
            section = sec;
        }
        out.push_str(&l);
        out.push('\n');
    }
    Ok(Some(out))
}

fn section(fam: Family) -> &'static str {
    match fam {
        Family::V4 => "iptables filter table (IPv4): reyes' chains",
        Family::V6 => "ip6tables filter table (IPv6): reyes' chains",
    }
}

const SETS_SECTION: &str = "ipset: reyes' sets";

/// The live state as tagged statements: `(section, statement)`.
pub fn live_lines(tools: &Tools) -> Result<Vec<(&'static str, String)>, BackendError> {
    let mut out = Vec::new();
    for (name, s) in read_sets(tools)? {
        out.push((
            SETS_SECTION,
            format!("create {name} {} family {}", s.kind, s.family),
        ));
        out.extend(
            s.members
                .iter()
                .map(|m| (SETS_SECTION, format!("add {name} {m}"))),
        );
    }
    for fam in Family::BOTH {
        let st = read_table(tools, fam, Counters::Without)?;
        for _ in 0..st.jumps {
            out.push((section(fam), format!("-A {HOOK_CHAIN} {JUMP_SPEC}")));
        }
        for (hook, n) in &st.other_jumps {
            if let Some((_, base)) = OTHER_HOOKS.iter().find(|(h, _)| h == hook) {
                for _ in 0..*n {
                    out.push((section(fam), format!("-A {hook} -j {base}")));
                }
            }
        }
        for (c, specs) in &st.chains {
            out.push((section(fam), format!(":{c}")));
            out.extend(specs.iter().map(|s| {
                (
                    section(fam),
                    format!("-A {c} {}", normalise_spec(s))
                        .trim_end()
                        .to_string(),
                )
            }));
        }
    }
    Ok(out)
}

/// What [`live_lines`] reads after `plan` is applied.
pub fn planned_lines(plan: &Plan) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for s in &plan.sets {
        out.push((
            SETS_SECTION,
            format!("create {} hash:net family {}", s.name, s.family),
        ));
        out.extend(
            s.members
                .iter()
                .map(|m| (SETS_SECTION, format!("add {} {m}", s.name))),
        );
    }
    for t in plan.tables() {
        out.push((section(t.family), format!("-A {HOOK_CHAIN} {JUMP_SPEC}")));
        for (hook, base) in OTHER_HOOKS {
            if t.chains.iter().any(|c| c == base) {
                out.push((section(t.family), format!("-A {hook} -j {base}")));
            }
        }
        for (c, specs) in t.expected() {
            out.push((section(t.family), format!(":{c}")));
            out.extend(specs.iter().map(|s| {
                (
                    section(t.family),
                    format!("-A {c} {}", normalise_spec(s))
                        .trim_end()
                        .to_string(),
                )
            }));
        }
    }
    out
}

/// Statements only in `old` (`- `) and only in `new` (`+ `), each tagged with its section.
pub fn diff(old: &[(&'static str, String)], new: &[(&'static str, String)]) -> Vec<String> {
    fn count<'a>(v: &'a [(&'static str, String)]) -> BTreeMap<(&'static str, &'a str), usize> {
        let mut m = BTreeMap::new();
        for (s, l) in v {
            *m.entry((*s, l.as_str())).or_default() += 1;
        }
        m
    }
    let (mut ca, mut cb) = (count(old), count(new));
    let mut out = Vec::new();
    for (s, l) in old {
        match cb.get_mut(&(*s, l.as_str())) {
            Some(n) if *n > 0 => *n -= 1,
            _ => out.push(format!("- [{s}] {l}")),
        }
    }
    for (s, l) in new {
        match ca.get_mut(&(*s, l.as_str())) {
            Some(n) if *n > 0 => *n -= 1,
            _ => out.push(format!("+ [{s}] {l}")),
        }
    }
    out
}

/// Whether reyes' base chain and its jump exist in both tables.
pub fn present(tools: &Tools) -> Result<bool, BackendError> {
    for fam in Family::BOTH {
        let st = read_table(tools, fam, Counters::Without)?;
        if st.jumps == 0 || !st.chains.contains_key(BASE_CHAIN) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Every counter chain whose name starts with `prefix`, with its packets and bytes summed
/// over both tables, sorted by name.
pub fn counters_with_prefix(
    tables: &[TableState],
    prefix: &str,
) -> Vec<crate::backend::NamedCount> {
    let names: std::collections::BTreeSet<&String> = tables
        .iter()
        .flat_map(|t| t.chains.keys())
        .filter(|c| c.starts_with(prefix))
        .collect();
    names
        .into_iter()
        .filter_map(|c| counter(tables, c).map(|n| (c.clone(), n)))
        .collect()
}

/// Packets and bytes counted by a counter chain, summed over both tables; `None` if the chain
/// exists in neither.
pub fn counter(tables: &[TableState], chain: &str) -> Option<(u64, u64)> {
    let mut found = None;
    for t in tables {
        if t.chains.contains_key(chain) {
            let (p, b) = t.counters.get(chain).copied().unwrap_or_default();
            let e: &mut (u64, u64) = found.get_or_insert((0, 0));
            e.0 = e.0.saturating_add(p);
            e.1 = e.1.saturating_add(b);
        }
    }
    found
}

/// Names, at most four, then how many more.
fn some_names(names: &[String]) -> String {
    const SHOWN: usize = 4;
    let mut s = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// What reyes owns in one variant's filter tables (both families), as one phrase such as
/// `iptables-nft chains REYES-INPUT, REYES-G-WEB (12 rules, 2 jumps from INPUT)`; `None`
/// when it owns nothing there.
pub fn owned_chains(tools: &Tools) -> Result<Option<String>, BackendError> {
    let mut chains = BTreeSet::new();
    let (mut rules, mut jumps) = (0, 0);
    for fam in Family::BOTH {
        let st = read_table(tools, fam, Counters::Without)?;
        rules += st.chains.values().map(Vec::len).sum::<usize>();
        jumps += st.jumps;
        chains.extend(st.chains.into_keys());
    }
    if chains.is_empty() && jumps == 0 {
        return Ok(None);
    }
    let chains: Vec<String> = chains.into_iter().collect();
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    Ok(Some(format!(
        "{} chains {} ({}, {} from {HOOK_CHAIN})",
        tools.variant.name(),
        some_names(&chains),
        plural(rules, "rule", "rules"),
        plural(jumps, "jump", "jumps"),
    )))
}

/// reyes' ipsets as one phrase (`ipsets reyes-a, reyes-b`), or `None` when there are none.
pub fn owned_sets(tools: &Tools) -> Result<Option<String>, BackendError> {
    let sets = super::save::list_sets(tools)?;
    Ok((!sets.is_empty()).then(|| format!("ipsets {}", some_names(&sets))))
}
