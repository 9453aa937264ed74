//! Driving the tools: `ipset` and one variant's `iptables-save` / `iptables-restore` (and the
//! ip6tables pair); reading reyes' objects back; apply with rollback; flush.
//!
//! Only reyes' objects are ever named: chains `REYES-*`, sets `reyes-*`, and the one jump
//! rule `-A INPUT -j REYES-INPUT`. Every `iptables-restore` runs with `--noflush`, so the
//! host's other chains and rules are never flushed, reordered or removed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::backend::BackendError;
use crate::net::{Cidr, Family};

use super::render::{
    self, Plan, Table, BASE_CHAIN, CHAIN_PREFIX, HOOK_CHAIN, JUMP_SPEC, SET_PREFIX, TEMP_SUFFIX,
};
use super::{Tools, Variant};

/// What a tool printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit status 0.
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error, trimmed.
    pub stderr: String,
}

/// Run a tool, feeding `stdin` from another thread (so a large script cannot deadlock against
/// the tool's own output).
pub fn run(bin: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, BackendError> {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BackendError::Io(format!("cannot run {bin}: {e}")))?;
    let pipe = child.stdin.take();
    let out = std::thread::scope(|s| {
        if let (Some(text), Some(mut pipe)) = (stdin, pipe) {
            // A write error (the tool exited early) shows in its status and stderr.
            s.spawn(move || {
                let _ = pipe.write_all(text.as_bytes());
            });
        }
        child.wait_with_output()
    })
    .map_err(|e| BackendError::Io(format!("cannot run {bin}: {e}")))?;
    Ok(Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// reyes' objects in one family's filter table, as `iptables-save` prints them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableState {
    /// Our chains (`REYES-*`) and their rules, verbatim after `-A CHAIN `, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// How many `-A INPUT -j REYES-INPUT` rules there are.
    pub jumps: usize,
    /// 1-based position of the first of them in INPUT.
    pub jump_position: Option<usize>,
    /// Packets and bytes per our chain (summed over its rules), when read with counters.
    pub counters: BTreeMap<String, (u64, u64)>,
}

/// Parse `iptables-save -t filter [-c]` output, keeping reyes' objects.
pub fn parse_save(text: &str) -> TableState {
    let mut st = TableState::default();
    let mut input_rules = 0;
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if name.starts_with(CHAIN_PREFIX) {
                st.chains.entry(name.to_string()).or_default();
            }
            continue;
        }
        let (count, rest) = match line.strip_prefix('[') {
            Some(r) => match r.split_once("] ") {
                Some((c, rest)) => (parse_counter(c), rest),
                None => continue,
            },
            None => (None, line),
        };
        let Some(rule) = rest.strip_prefix("-A ") else {
            continue;
        };
        let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
        if chain == HOOK_CHAIN {
            input_rules += 1;
            if spec == JUMP_SPEC {
                st.jumps += 1;
                st.jump_position.get_or_insert(input_rules);
            }
        } else if chain.starts_with(CHAIN_PREFIX) {
            st.chains
                .entry(chain.to_string())
                .or_default()
                .push(spec.to_string());
            if let Some((p, b)) = count {
                let e = st.counters.entry(chain.to_string()).or_default();
                e.0 += p;
                e.1 += b;
            }
        }
    }
    st
}

fn parse_counter(c: &str) -> Option<(u64, u64)> {
    let (p, b) = c.split_once(':')?;
    Some((p.parse().ok()?, b.parse().ok()?))
}

/// Whether the legacy (x_tables) filter table of a family exists in this network namespace.
/// Reading it with `iptables-legacy-save` would create it, so this is asked first.
pub fn legacy_loaded(fam: Family) -> bool {
    let file = match fam {
        Family::V4 => "ip_tables_names",
        Family::V6 => "ip6_tables_names",
    };
    // thread-self: /proc/self/net is the namespace of the main thread.
    std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))
        .map(|s| s.lines().any(|l| l.trim() == "filter"))
        .unwrap_or(false)
}

/// Raw `iptables-save -t filter` output of a family, or `None` for a legacy table that does
/// not exist (and must not be created by looking).
pub fn save_text(
    tools: &Tools,
    fam: Family,
    counters: bool,
) -> Result<Option<String>, BackendError> {
    if tools.variant == Variant::Legacy && !legacy_loaded(fam) {
        return Ok(None);
    }
    let bin = tools.save(fam);
    let mut args = vec!["-t", "filter"];
    if counters {
        args.push("-c");
    }
    let out = run(bin, &args, None)?;
    if !out.ok {
        return Err(BackendError::Io(format!(
            "{bin} -t filter failed: {}",
            out.stderr
        )));
    }
    Ok(Some(out.stdout))
}

/// reyes' objects in one family's filter table.
pub fn read_table(tools: &Tools, fam: Family, counters: bool) -> Result<TableState, BackendError> {
    Ok(save_text(tools, fam, counters)?
        .map(|t| parse_save(&t))
        .unwrap_or_default())
}

/// One of reyes' ipsets as `ipset save` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetState {
    /// `hash:net`.
    pub kind: String,
    /// `inet` / `inet6`.
    pub family: String,
    /// Members, normalised (`10.0.0.1`, `10.0.0.0/8`).
    pub members: Vec<String>,
}

/// reyes' ipsets (`reyes-*`, temporaries included), by name.
pub fn read_sets(tools: &Tools) -> Result<BTreeMap<String, SetState>, BackendError> {
    let out = run(&tools.ipset, &["save"], None)?;
    if !out.ok {
        return Err(BackendError::Io(format!(
            "ipset save failed: {}",
            out.stderr
        )));
    }
    let mut sets: BTreeMap<String, SetState> = BTreeMap::new();
    for line in out.stdout.lines() {
        let mut w = line.split_whitespace();
        match (w.next(), w.next()) {
            (Some("create"), Some(name)) if name.starts_with(SET_PREFIX) => {
                let kind = w.next().unwrap_or_default().to_string();
                let rest: Vec<&str> = w.collect();
                let family = rest
                    .windows(2)
                    .find(|p| p[0] == "family")
                    .map(|p| p[1].to_string())
                    .unwrap_or_default();
                sets.insert(
                    name.to_string(),
                    SetState {
                        kind,
                        family,
                        members: Vec::new(),
                    },
                );
            }
            (Some("add"), Some(name)) if name.starts_with(SET_PREFIX) => {
                let m = w.next().unwrap_or_default();
                let m = m
                    .parse::<Cidr>()
                    .map(|c| c.to_string())
                    .unwrap_or_else(|_| m.to_string());
                sets.entry(name.to_string()).or_default().members.push(m);
            }
            _ => {}
        }
    }
    Ok(sets)
}

/// Names of reyes' ipsets (`ipset list -n`), temporaries included.
pub fn list_sets(tools: &Tools) -> Result<Vec<String>, BackendError> {
    let out = run(&tools.ipset, &["list", "-n"], None)?;
    if !out.ok {
        return Err(BackendError::Io(format!(
            "ipset list -n failed: {}",
            out.stderr
        )));
    }
    Ok(out
        .stdout
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with(SET_PREFIX))
        .map(str::to_string)
        .collect())
}

fn ipset_restore(tools: &Tools, script: &str) -> Result<(), String> {
    if !script
        .lines()
        .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        return Ok(());
    }
    let out = run(&tools.ipset, &["restore"], Some(script)).map_err(|e| e.to_string())?;
    if out.ok {
        Ok(())
    } else {
        Err(out.stderr)
    }
}

fn table_restore(tools: &Tools, fam: Family, script: &str) -> Result<(), String> {
    let bin = tools.restore(fam);
    let out = run(bin, &["--wait=30", "--noflush"], Some(script)).map_err(|e| e.to_string())?;
    if out.ok {
        Ok(())
    } else {
        Err(format!("{bin}: {}", out.stderr))
    }
}

/// Destroy sets, best effort: one `ipset restore`, and if that stops at an error, each
/// remaining set on its own. Returns what could not be destroyed (sets already gone are fine).
fn destroy_sets(tools: &Tools, names: &[String]) -> Vec<String> {
    if names.is_empty() {
        return Vec::new();
    }
    let Ok(script) = render::destroy_script(names) else {
        return vec!["destroy script did not render".into()];
    };
    if ipset_restore(tools, &script).is_ok() {
        return Vec::new();
    }
    let mut failed = Vec::new();
    for n in names {
        match run(&tools.ipset, &["destroy", n], None) {
            Ok(o) if o.ok || o.stderr.contains("does not exist") => {}
            Ok(o) => failed.push(format!("{n}: {}", o.stderr)),
            Err(e) => failed.push(format!("{n}: {e}")),
        }
    }
    failed
}

fn protocols() -> &'static BTreeMap<String, u8> {
    static P: OnceLock<BTreeMap<String, u8>> = OnceLock::new();
    P.get_or_init(|| {
        let mut m: BTreeMap<String, u8> = render::BUILTIN_PROTOS
            .iter()
            .map(|(n, v)| (n.to_string(), *v))
            .collect();
        if let Ok(text) = std::fs::read_to_string("/etc/protocols") {
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or_default();
                let mut w = line.split_whitespace();
                let (Some(name), Some(num)) = (w.next(), w.next()) else {
                    continue;
                };
                let Ok(num) = num.parse::<u8>() else { continue };
                for n in std::iter::once(name).chain(w) {
                    m.entry(n.to_ascii_lowercase()).or_insert(num);
                }
            }
        }
        m
    })
}

fn tokens(spec: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in spec.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A rule spec in a form that does not depend on how this host's iptables spells things:
/// protocols as numbers (iptables-save prints names from /etc/protocols), addresses
/// canonical.
pub fn normalise_spec(spec: &str) -> String {
    let mut t = tokens(spec);
    for i in 0..t.len().saturating_sub(1) {
        match t[i].as_str() {
            "-p" => {
                let v = t[i + 1].to_ascii_lowercase();
                if let Some(n) = v
                    .parse::<u8>()
                    .ok()
                    .or_else(|| protocols().get(&v).copied())
                {
                    t[i + 1] = n.to_string();
                }
            }
            "-s" | "-d" => {
                if let Ok(net) = t[i + 1].parse::<ipnet::IpNet>() {
                    t[i + 1] = format!("{}/{}", net.network(), net.prefix_len());
                } else if let Ok(a) = t[i + 1].parse::<std::net::IpAddr>() {
                    t[i + 1] = format!("{a}/{}", if a.is_ipv4() { 32 } else { 128 });
                }
            }
            _ => {}
        }
    }
    t.join(" ")
}

/// Compare what a table should hold with what it holds; the first difference, if any.
pub fn compare_table(table: &Table, live: &TableState) -> Result<(), String> {
    let tool = table.tool();
    if live.jumps == 0 {
        return Err(format!("{tool}: no -A {HOOK_CHAIN} {JUMP_SPEC}"));
    }
    let want = table.expected();
    for (chain, specs) in &want {
        let Some(got) = live.chains.get(chain) else {
            return Err(format!("{tool}: chain {chain} is missing"));
        };
        let a: Vec<String> = specs.iter().map(|s| normalise_spec(s)).collect();
        let b: Vec<String> = got.iter().map(|s| normalise_spec(s)).collect();
        if a != b {
            let i = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            return Err(format!(
                "{tool}: chain {chain} rule {}: rendered {:?}, live {:?}",
                i + 1,
                a.get(i).map(String::as_str).unwrap_or("(none)"),
                b.get(i).map(String::as_str).unwrap_or("(none)")
            ));
        }
    }
    if let Some(extra) = live.chains.keys().find(|c| !want.contains_key(*c)) {
        return Err(format!("{tool}: unexpected chain {extra}"));
    }
    Ok(())
}

/// Compare the live sets with the plan's; the first difference, if any.
pub fn compare_sets(plan: &Plan, live: &BTreeMap<String, SetState>) -> Result<(), String> {
    for s in &plan.sets {
        let Some(l) = live.get(&s.name) else {
            return Err(format!("set {} is missing", s.name));
        };
        if l.kind != "hash:net" || l.family != s.family {
            return Err(format!(
                "set {} is {} family {}, not hash:net family {}",
                s.name, l.kind, l.family, s.family
            ));
        }
        let want: BTreeSet<&str> = s.members.iter().map(String::as_str).collect();
        let got: BTreeSet<&str> = l.members.iter().map(String::as_str).collect();
        if want != got {
            let missing = want.difference(&got).next();
            let extra = got.difference(&want).next();
            return Err(format!(
                "set {}: members differ (missing {missing:?}, unexpected {extra:?})",
                s.name
            ));
        }
    }
    Ok(())
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
    r.map_err(|e| BackendError::Io(e.to_string()))
}

/// The script that puts a table's reyes chains back as `before` had them, after `plan_table`
/// was committed over them.
fn rollback_script(before: &TableState, plan_table: &Table) -> Result<String, BackendError> {
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
    rendered(render::table_script(
        &t,
        false,
        &created,
        usize::from(before.jumps == 0),
    ))
}

/// Undo an apply that got as far as swapping the sets and committing `committed` tables.
fn undo(
    tools: &Tools,
    plan: &Plan,
    before: &[TableState; 2],
    committed: &[Family],
    swapped: bool,
    created: &[String],
) -> String {
    let mut notes = Vec::new();
    for fam in committed {
        let (b, t) = match fam {
            Family::V4 => (&before[0], &plan.v4),
            Family::V6 => (&before[1], &plan.v6),
        };
        let res = rollback_script(b, t)
            .map_err(|e| e.to_string())
            .and_then(|s| table_restore(tools, *fam, &s));
        if let Err(e) = res {
            notes.push(format!(
                "putting the previous {} chains back failed: {e}",
                t.tool()
            ));
        }
    }
    if swapped {
        let res = rollback_swap(tools, plan);
        if let Err(e) = res {
            notes.push(format!(
                "swapping the previous set members back failed: {e}"
            ));
        }
    }
    let mut gone: Vec<String> = plan.sets.iter().map(|s| s.temp.clone()).collect();
    gone.extend(created.iter().cloned());
    for f in destroy_sets(tools, &gone) {
        notes.push(format!("could not remove {f}"));
    }
    if notes.is_empty() {
        "the previous chains and sets are as they were".into()
    } else {
        notes.join("; ")
    }
}

fn rollback_swap(tools: &Tools, plan: &Plan) -> Result<(), String> {
    // A swap is its own inverse.
    let script = render::swap_script(plan).map_err(|e| e.to_string())?;
    ipset_restore(tools, &script)
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

/// Install a plan: stage sets, swap, restore both tables, read back and compare, clean up.
/// On any failure before the cleanup, every step done is undone.
pub fn apply(tools: &Tools, plan: &Plan) -> Result<Report, BackendError> {
    let mut rep = Report::default();
    let mut timer = Timer(Instant::now());

    // 0. What exists. Temporaries left by an interrupted run are referenced by nothing.
    let existing = list_sets(tools)?;
    let (temps, live): (Vec<String>, Vec<String>) =
        existing.into_iter().partition(|n| n.ends_with(TEMP_SUFFIX));
    if let Some(f) = destroy_sets(tools, &temps).first() {
        return Err(BackendError::Io(format!(
            "cannot remove a temporary set left by an interrupted run: {f}"
        )));
    }
    let live: BTreeSet<String> = live.into_iter().collect();
    let planned: BTreeSet<String> = plan.sets.iter().map(|s| s.name.clone()).collect();
    let missing: BTreeSet<String> = planned.difference(&live).cloned().collect();
    let created: Vec<String> = missing.iter().cloned().collect();
    timer.lap(&mut rep, "inspect");

    // 1. Stage.
    let stage = rendered(render::stage_script(plan, &missing))?;
    timer.lap(&mut rep, "render");
    if let Err(e) = ipset_restore(tools, &stage) {
        let note = undo(tools, plan, &Default::default(), &[], false, &created);
        return Err(BackendError::Refused(format!(
            "ipset refused the new sets: {e} ({note})"
        )));
    }
    timer.lap(&mut rep, "ipset stage");
    let before = match (
        read_table(tools, Family::V4, false),
        read_table(tools, Family::V6, false),
    ) {
        (Ok(a), Ok(b)) => [a, b],
        (Err(e), _) | (_, Err(e)) => {
            let note = undo(tools, plan, &Default::default(), &[], false, &created);
            return Err(BackendError::Io(format!("{e} ({note})")));
        }
    };
    timer.lap(&mut rep, "save");

    // 2. Swap.
    if let Err(e) = ipset_restore(tools, &rendered(render::swap_script(plan))?) {
        // Swaps before the failing line happened; swap those back.
        let done = error_line(&e).map(|l| l.saturating_sub(1)).unwrap_or(0);
        let mut partial = plan.clone();
        partial.sets.truncate(done);
        let mut note = String::new();
        if let Err(e2) = rollback_swap(tools, &partial) {
            note = format!("; swapping back failed: {e2}");
        }
        let n2 = undo(tools, plan, &Default::default(), &[], false, &created);
        return Err(BackendError::Refused(format!(
            "ipset could not swap the new sets in: {e}{note} ({n2})"
        )));
    }
    timer.lap(&mut rep, "ipset swap");

    // 3, 4. Tables.
    let mut committed = Vec::new();
    for (i, table) in plan.tables().into_iter().enumerate() {
        let b = &before[i];
        let stale: Vec<String> = b
            .chains
            .keys()
            .filter(|c| !table.chains.contains(c))
            .cloned()
            .collect();
        let script = rendered(render::table_script(table, b.jumps == 0, &stale, 0))?;
        if let Err(e) = table_restore(tools, table.family, &script) {
            let note = undo(tools, plan, &before, &committed, true, &created);
            return Err(BackendError::Refused(format!(
                "{}-restore refused reyes' chains: {e} ({note})",
                table.tool()
            )));
        }
        committed.push(table.family);
        timer.lap(
            &mut rep,
            if table.family == Family::V4 {
                "iptables-restore"
            } else {
                "ip6tables-restore"
            },
        );
    }

    // Read back and compare.
    let check = (|| -> Result<(), String> {
        for table in plan.tables() {
            let live = read_table(tools, table.family, false).map_err(|e| e.to_string())?;
            compare_table(table, &live)?;
        }
        compare_sets(plan, &read_sets(tools).map_err(|e| e.to_string())?)
    })();
    timer.lap(&mut rep, "verify");
    if let Err(diff) = check {
        let note = undo(tools, plan, &before, &committed, true, &created);
        return Err(BackendError::Mismatch(format!(
            "the kernel does not hold what was rendered: {diff} ({note})"
        )));
    }

    // 5. Clean up: the temporaries now hold the old members; sets no longer planned are
    // referenced by no chain of ours any more.
    let mut gone: Vec<String> = plan.sets.iter().map(|s| s.temp.clone()).collect();
    gone.extend(live.difference(&planned).cloned());
    for f in destroy_sets(tools, &gone) {
        tracing::warn!("could not destroy an unused reyes set: {f}");
        rep.warnings.push(f);
    }
    timer.lap(&mut rep, "ipset cleanup");
    Ok(rep)
}

/// Remove reyes' chains and its jump from INPUT in each of these variants, then its sets;
/// nothing else.
pub fn flush(variants: &[Tools]) -> Result<(), BackendError> {
    let Some(first) = variants.first() else {
        return Ok(());
    };
    for tools in variants {
        for fam in Family::BOTH {
            let st = read_table(tools, fam, false)?;
            if st.chains.is_empty() && st.jumps == 0 {
                continue;
            }
            let empty = Table {
                family: fam,
                chains: Vec::new(),
                lines: Vec::new(),
            };
            let ours: Vec<String> = st.chains.keys().cloned().collect();
            let script = rendered(render::table_script(&empty, false, &ours, st.jumps))?;
            table_restore(tools, fam, &script).map_err(|e| {
                BackendError::Refused(format!(
                    "removing reyes' chains failed (nothing was changed): {e}"
                ))
            })?;
        }
    }
    let failed = destroy_sets(first, &list_sets(first)?);
    if !failed.is_empty() {
        return Err(BackendError::Refused(format!(
            "reyes' chains are gone, but some of its sets could not be destroyed (still referenced by another rule?): {}",
            failed.join("; ")
        )));
    }
    Ok(())
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
        let st = read_table(tools, fam, false)?;
        for _ in 0..st.jumps {
            out.push((section(fam), format!("-A {HOOK_CHAIN} {JUMP_SPEC}")));
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
        let st = read_table(tools, fam, false)?;
        if st.jumps == 0 || !st.chains.contains_key(BASE_CHAIN) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Packets and bytes counted by a counter chain, summed over both tables; `None` if the chain
/// exists in neither.
pub fn counter(tables: &[TableState], chain: &str) -> Option<(u64, u64)> {
    let mut found = None;
    for t in tables {
        if t.chains.contains_key(chain) {
            let (p, b) = t.counters.get(chain).copied().unwrap_or_default();
            let e: &mut (u64, u64) = found.get_or_insert((0, 0));
            e.0 += p;
            e.1 += b;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_output_is_parsed() {
        let text = "# Generated by iptables-save\n*filter\n:INPUT ACCEPT [0:0]\n:REYES-INPUT - [0:0]\n:USER - [0:0]\n\
                    [1:60] -A INPUT -p tcp -j ACCEPT\n[5:300] -A INPUT -j REYES-INPUT\n[3:120] -A REYES-INPUT -i lo -j RETURN\n\
                    [2:80] -A REYES-INPUT -g REYES-DROPPED\n-A USER -j DROP\nCOMMIT\n";
        let st = parse_save(text);
        assert_eq!(st.jumps, 1);
        assert_eq!(st.jump_position, Some(2));
        assert_eq!(st.chains.len(), 1);
        assert_eq!(
            st.chains["REYES-INPUT"],
            vec!["-i lo -j RETURN", "-g REYES-DROPPED"]
        );
        assert_eq!(st.counters["REYES-INPUT"], (5, 200));
        assert_eq!(
            counter(&[st.clone(), TableState::default()], "REYES-INPUT"),
            Some((5, 200))
        );
        assert_eq!(counter(&[st], "REYES-ACCEPTED"), None);
    }

    #[test]
    fn specs_normalise_protocol_names_and_addresses() {
        assert_eq!(
            normalise_spec("-s 10.0.0.1/32 -p gre -j RETURN"),
            "-s 10.0.0.1/32 -p 47 -j RETURN"
        );
        assert_eq!(normalise_spec("-p 47 -j RETURN"), "-p 47 -j RETURN");
        assert_eq!(
            normalise_spec("-s fd00:0::1/128 -p ipv6-icmp"),
            "-s fd00::1/128 -p 58"
        );
        assert_eq!(
            normalise_spec("-j LOG --log-prefix \"a  b -p x\""),
            "-j LOG --log-prefix \"a  b -p x\""
        );
    }

    #[test]
    fn error_lines() {
        assert_eq!(
            error_line("ipset v7.17: Error in line 3: The set does not exist"),
            Some(3)
        );
        assert_eq!(error_line("something else"), None);
    }
}
