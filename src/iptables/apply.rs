//! Installing a plan with the tools: `ipset restore` and one variant's `iptables-restore`
//! (and `ip6tables-restore`), every step undone when a later one fails; and flush.
//!
//! Only reyes' objects are ever named: chains `REYES-*`, sets `reyes-*`, and the one jump
//! rule `-A INPUT -j REYES-INPUT`. Every `iptables-restore` runs with `--noflush`, so the
//! host's other chains and rules are never flushed, reordered or removed. All I/O goes through
//! the [`Tools`]' runner, so every path here runs against a fake in tests.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::backend::{BackendError, Cause, Failed, Mismatch, Undo};
use crate::exec::ToolFailure;
use crate::net::Family;

use super::compare::{compare_sets, compare_table};
use super::names::TEMP_SUFFIX;
use super::render::{self, Jump, Plan, Table};
use super::save::{list_sets, read_sets, read_table, Counters, TableState};
use super::Tools;

pub use super::save::legacy_loaded;

/// What holds after a complete undo.
const UNDONE: &str = "the previous chains and sets are as they were";

/// Feed `ipset restore` (nothing when the script has no statement).
fn ipset_restore(tools: &Tools, script: &str) -> Result<(), ToolFailure> {
    if !script
        .lines()
        .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        return Ok(());
    }
    tools.run_checked(&tools.ipset, &["restore"], Some(script))
}

/// Feed one family's `iptables-restore --noflush`.
fn table_restore(tools: &Tools, fam: Family, script: &str) -> Result<(), ToolFailure> {
    tools.run_checked(
        tools.restore(fam),
        &["--wait=30", "--noflush"],
        Some(script),
    )
}

/// Destroy sets, best effort: one `ipset restore`, and if that stops at an error, each
/// remaining set on its own. Returns what could not be destroyed (sets already gone are fine).
fn destroy_sets(tools: &Tools, names: &[String]) -> Vec<String> {
    if names.is_empty() {
        return Vec::new();
    }
    let script = match render::destroy_script(names) {
        Ok(s) => s,
        Err(e) => return vec![format!("the destroy script did not render: {e}")],
    };
    if ipset_restore(tools, &script).is_ok() {
        return Vec::new();
    }
    let mut failed = Vec::new();
    for n in names {
        match tools.run_checked(&tools.ipset, &["destroy", n], None) {
            Ok(()) => {}
            Err(e) if e.stderr.contains("does not exist") => {}
            Err(e) => failed.push(format!("{n}: {}", e.stderr)),
        }
    }
    failed
}

/// How long each step of an apply took, and what could not be cleaned up.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Step name and duration, in order.
    pub phases: Vec<(&'static str, Duration)>,
    /// Non-fatal problems (a set that could not be destroyed).
    pub warnings: Vec<String>,
}

struct Timer(Instant);

impl Timer {
    fn lap(&mut self, rep: &mut Report, name: &'static str) {
        rep.phases.push((name, self.0.elapsed()));
        self.0 = Instant::now();
    }
}

fn rendered<T>(r: Result<T, render::RenderError>) -> Result<T, BackendError> {
    r.map_err(|e| BackendError::io("rendering the iptables scripts failed", e))
}

/// The script that puts a table's reyes chains back as `before` had them, after `plan_table`
/// was committed over them.
fn rollback_script(before: &TableState, plan_table: &Table) -> Result<String, render::RenderError> {
    let mut chains: BTreeSet<String> = before.chains.keys().cloned().collect();
    chains.extend(plan_table.chains.iter().cloned());
    let lines = before
        .chains
        .iter()
        .flat_map(|(c, specs)| {
            specs.iter().map(move |s| render::Line {
                chain: c.clone(),
                spec: s.clone(),
                comment: None,
            })
        })
        .collect();
    let t = Table {
        family: plan_table.family,
        chains: chains.into_iter().collect(),
        lines,
    };
    let created: Vec<String> = plan_table
        .chains
        .iter()
        .filter(|c| !before.chains.contains_key(*c))
        .cloned()
        .collect();
    // The jumps from FORWARD and OUTPUT as they were: the commit inserted those `before`
    // lacked and deleted those to chains the plan no longer has.
    let other: Vec<render::OtherJump> = render::OtherJump::between(plan_table, before)
        .into_iter()
        .map(|j| render::OtherJump {
            delete: usize::from(j.insert),
            insert: j.delete > 0,
            ..j
        })
        .collect();
    render::table_script_with(
        &t,
        Jump::Leave,
        &created,
        usize::from(before.jumps == 0),
        &other,
    )
}

/// Where the sets are in an apply that is being undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sets {
    /// The new members are staged in the temporaries; the live sets are untouched.
    Staged,
    /// The temporaries and the live sets were swapped.
    Swapped,
}

/// How far an apply got, for [`undo`].
struct Progress<'a> {
    plan: &'a Plan,
    /// Live sets this apply created (empty, as swap partners).
    created: &'a [String],
    /// reyes' chains in each table before the apply.
    before: [TableState; 2],
    /// Tables committed so far.
    committed: Vec<Family>,
    sets: Sets,
}

/// Undo every step done so far.
fn undo(tools: &Tools, p: &Progress) -> Undo {
    let mut failures = Vec::new();
    for fam in &p.committed {
        let (b, t) = match fam {
            Family::V4 => (&p.before[0], &p.plan.v4),
            Family::V6 => (&p.before[1], &p.plan.v6),
        };
        let res = rollback_script(b, t)
            .map_err(Cause::from)
            .and_then(|s| table_restore(tools, *fam, &s).map_err(Cause::from));
        if let Err(e) = res {
            failures.push(format!(
                "putting the previous {} chains back failed: {e}",
                t.tool()
            ));
        }
    }
    if p.sets == Sets::Swapped {
        if let Err(e) = swap_back(tools, p.plan) {
            failures.push(format!(
                "swapping the previous set members back failed: {e}"
            ));
        }
    }
    let mut gone: Vec<String> = p.plan.sets.iter().map(|s| s.temp.clone()).collect();
    gone.extend(p.created.iter().cloned());
    for f in destroy_sets(tools, &gone) {
        failures.push(format!("could not remove {f}"));
    }
    Undo {
        done: UNDONE,
        failures,
    }
}

fn swap_back(tools: &Tools, plan: &Plan) -> Result<(), Cause> {
    // A swap is its own inverse.
    let script = render::swap_script(plan)?;
    ipset_restore(tools, &script)?;
    Ok(())
}

/// The line `ipset restore` stopped at ("Error in line N"), if it says.
fn error_line(stderr: &str) -> Option<usize> {
    let i = stderr.find("Error in line ")?;
    stderr[i + 14..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Step 0: remove temporaries an interrupted run left (referenced by nothing); the live
/// sets of ours, and those of the plan that do not exist yet.
fn inspect(tools: &Tools, plan: &Plan) -> Result<(BTreeSet<String>, Vec<String>), BackendError> {
    let existing = list_sets(tools)?;
    let (temps, live): (Vec<String>, Vec<String>) =
        existing.into_iter().partition(|n| n.ends_with(TEMP_SUFFIX));
    if let Some(f) = destroy_sets(tools, &temps).first() {
        return Err(BackendError::io(
            "cannot remove a temporary set left by an interrupted run",
            f.clone(),
        ));
    }
    let live: BTreeSet<String> = live.into_iter().collect();
    let created = plan
        .sets
        .iter()
        .filter(|s| !live.contains(&s.name))
        .map(|s| s.name.clone())
        .collect();
    Ok((live, created))
}

/// Step 2: swap the staged members in. Swaps before a failing line happened; they are
/// swapped back before the error is returned.
fn swap(tools: &Tools, plan: &Plan) -> Result<(), Failed> {
    let script = render::swap_script(plan)
        .map_err(|e| Failed::new("rendering the swap script failed", e))?;
    let Err(e) = ipset_restore(tools, &script) else {
        return Ok(());
    };
    let done = error_line(&e.stderr)
        .map(|l| l.saturating_sub(1))
        .unwrap_or(0);
    let mut partial = plan.clone();
    partial.sets.truncate(done);
    let mut failed = Failed::new("ipset could not swap the new sets in", e);
    if let Err(e2) = swap_back(tools, &partial) {
        failed.step = format!("{} (swapping back failed: {e2})", failed.step);
    }
    Err(failed)
}

/// Steps 3 and 4: commit each table; `p.committed` records which were.
fn commit_tables(
    tools: &Tools,
    p: &mut Progress,
    rep: &mut Report,
    timer: &mut Timer,
) -> Result<(), Failed> {
    for (i, table) in p.plan.tables().into_iter().enumerate() {
        let b = &p.before[i];
        let stale: Vec<String> = b
            .chains
            .keys()
            .filter(|c| !table.chains.contains(c))
            .cloned()
            .collect();
        let jump = if b.jumps == 0 {
            Jump::Insert
        } else {
            Jump::Leave
        };
        let other = render::OtherJump::between(table, b);
        let script = render::table_script_with(table, jump, &stale, 0, &other)
            .map_err(|e| Failed::new("rendering the chains failed", e))?;
        if let Err(e) = table_restore(tools, table.family, &script) {
            return Err(Failed::new(
                format!("{}-restore refused reyes' chains", table.tool()),
                e,
            ));
        }
        p.committed.push(table.family);
        timer.lap(
            rep,
            if table.family == Family::V4 {
                "iptables-restore"
            } else {
                "ip6tables-restore"
            },
        );
    }
    Ok(())
}

/// Read everything back and compare with the plan: the first difference, if any.
fn verify(tools: &Tools, plan: &Plan) -> Result<Option<String>, BackendError> {
    for table in plan.tables() {
        let live = read_table(tools, table.family, Counters::Without)?;
        if let Some(d) = compare_table(table, &live) {
            return Ok(Some(d));
        }
    }
    Ok(compare_sets(plan, &read_sets(tools)?))
}

/// Install a plan: stage sets, swap, restore both tables, read back and compare, clean up.
/// On any failure before the cleanup, every step done is undone.
pub fn apply(tools: &Tools, plan: &Plan) -> Result<Report, BackendError> {
    let mut rep = Report::default();
    let mut timer = Timer(Instant::now());
    let (live, created) = inspect(tools, plan)?;
    timer.lap(&mut rep, "inspect");
    let mut p = Progress {
        plan,
        created: &created,
        before: Default::default(),
        committed: Vec::new(),
        sets: Sets::Staged,
    };

    // 1. Stage.
    let missing: BTreeSet<String> = created.iter().cloned().collect();
    let stage = rendered(render::stage_script(plan, &missing))?;
    timer.lap(&mut rep, "render");
    if let Err(e) = ipset_restore(tools, &stage) {
        let undo = undo(tools, &p);
        return Err(BackendError::Refused(
            Failed::new("ipset refused the new sets", e).with_undo(undo),
        ));
    }
    timer.lap(&mut rep, "ipset stage");
    let before = read_table(tools, Family::V4, Counters::Without)
        .and_then(|a| read_table(tools, Family::V6, Counters::Without).map(|b| [a, b]));
    p.before = match before {
        Ok(b) => b,
        Err(e) => return Err(e.with_undo(undo(tools, &p))),
    };
    timer.lap(&mut rep, "save");

    // 2. Swap.
    if let Err(f) = swap(tools, plan) {
        let undo = undo(tools, &p);
        return Err(BackendError::Refused(f.with_undo(undo)));
    }
    p.sets = Sets::Swapped;
    timer.lap(&mut rep, "ipset swap");

    // 3, 4. Tables.
    if let Err(f) = commit_tables(tools, &mut p, &mut rep, &mut timer) {
        let undo = undo(tools, &p);
        return Err(BackendError::Refused(f.with_undo(undo)));
    }

    // Read back and compare.
    let check = verify(tools, plan);
    timer.lap(&mut rep, "verify");
    match check {
        Ok(None) => {}
        Ok(Some(diff)) => {
            return Err(BackendError::Mismatch(Mismatch {
                what: "the kernel does not hold what was rendered".into(),
                diff: vec![diff],
                undo: undo(tools, &p),
            }))
        }
        Err(e) => return Err(e.with_undo(undo(tools, &p))),
    }

    // 5. Clean up: the temporaries now hold the old members; sets no longer planned are
    // referenced by no chain of ours any more.
    let planned: BTreeSet<String> = plan.sets.iter().map(|s| s.name.clone()).collect();
    let mut gone: Vec<String> = plan.sets.iter().map(|s| s.temp.clone()).collect();
    gone.extend(live.difference(&planned).cloned());
    for f in destroy_sets(tools, &gone) {
        tracing::warn!("could not destroy an unused reyes set: {f}");
        rep.warnings.push(f);
    }
    timer.lap(&mut rep, "ipset cleanup");
    Ok(rep)
}

/// Sets that could not be destroyed, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct Leftovers(pub Vec<String>);

/// Remove reyes' chains and its jump from INPUT in each of these variants, then its sets;
/// nothing else.
pub fn flush(variants: &[Tools]) -> Result<(), BackendError> {
    let Some(first) = variants.first() else {
        return Ok(());
    };
    for tools in variants {
        for fam in Family::BOTH {
            let st = read_table(tools, fam, Counters::Without)?;
            if st.chains.is_empty() && st.jumps == 0 && st.other_jumps.is_empty() {
                continue;
            }
            let empty = Table {
                family: fam,
                chains: Vec::new(),
                lines: Vec::new(),
            };
            let ours: Vec<String> = st.chains.keys().cloned().collect();
            let other = render::OtherJump::between(&empty, &st);
            let script = rendered(render::table_script_with(
                &empty,
                Jump::Leave,
                &ours,
                st.jumps,
                &other,
            ))?;
            table_restore(tools, fam, &script).map_err(|e| {
                BackendError::refused("removing reyes' chains failed (nothing was changed)", e)
            })?;
        }
    }
    let failed = destroy_sets(first, &list_sets(first)?);
    if !failed.is_empty() {
        return Err(BackendError::refused(
            "reyes' chains are gone, but some of its sets could not be destroyed (still referenced by another rule?)",
            Leftovers(failed),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines() {
        assert_eq!(
            error_line("ipset v7.17: Error in line 3: The set does not exist"),
            Some(3)
        );
        assert_eq!(error_line("something else"), None);
    }
}
