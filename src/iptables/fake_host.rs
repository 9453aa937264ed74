//! A model of a host's ipset and iptables (both families, filter table) behind an
//! [`exec::Fake`](crate::exec::Fake): enough of `ipset list -n | save | restore | destroy`,
//! `iptables-save [-c]` and `iptables-restore --noflush` for apply, undo and flush to run
//! against it, with a failure injected at any call.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::exec::{Call, Fake, Output};

/// One family's filter table: INPUT's rules and the user chains with theirs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterTable {
    pub input: Vec<String>,
    pub chains: BTreeMap<String, Vec<String>>,
}

/// Everything the fake host holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostState {
    /// Set name -> (family, members).
    pub sets: BTreeMap<String, (String, Vec<String>)>,
    /// IPv4, IPv6.
    pub tables: [FilterTable; 2],
}

/// How the call to inject a failure into fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// Fails before doing anything.
    Whole,
    /// For `ipset restore`: the lines before this (1-based) one take effect, then it fails.
    AtLine(usize),
}

#[derive(Default)]
struct Inner {
    state: HostState,
    calls: usize,
    fail: BTreeMap<usize, Injected>,
    /// When set, the next iptables-restore silently drops the first rule with this text (a
    /// kernel that does not hold what it was given).
    drop_spec: Option<String>,
}

/// The fake host and the runner that drives it.
#[derive(Clone)]
pub struct FakeHost {
    inner: Arc<Mutex<Inner>>,
    pub runner: Fake,
}

impl FakeHost {
    pub fn new(state: HostState) -> FakeHost {
        let inner = Arc::new(Mutex::new(Inner {
            state,
            ..Inner::default()
        }));
        let shared = inner.clone();
        let runner = Fake::new(move |call| {
            let mut g = shared.lock().expect("fake host lock");
            let n = g.calls;
            g.calls += 1;
            let injected = g.fail.get(&n).copied();
            Ok(g.answer(call, injected))
        });
        FakeHost { inner, runner }
    }

    pub fn state(&self) -> HostState {
        self.inner.lock().expect("fake host lock").state.clone()
    }

    /// Change what the host holds (someone else's edit).
    pub fn edit(&self, f: impl FnOnce(&mut HostState)) {
        f(&mut self.inner.lock().expect("fake host lock").state)
    }

    /// Fail the `n`th call (0-based, counted from the host's creation).
    pub fn fail_call(&self, n: usize, how: Injected) {
        self.inner
            .lock()
            .expect("fake host lock")
            .fail
            .insert(n, how);
    }

    pub fn drop_rules_matching(&self, spec: &str) {
        self.inner.lock().expect("fake host lock").drop_spec = Some(spec.to_string());
    }
}

impl Inner {
    fn answer(&mut self, call: &Call, injected: Option<Injected>) -> Output {
        if injected == Some(Injected::Whole) {
            return Output::failure("injected failure");
        }
        let args: Vec<&str> = call.args.iter().map(String::as_str).collect();
        let stdin = call.stdin.as_deref().unwrap_or("");
        let fam = usize::from(call.bin.starts_with("ip6"));
        match (call.bin.as_str(), args.as_slice()) {
            ("ipset", ["list", "-n"]) => Output::success(
                self.state
                    .sets
                    .keys()
                    .map(|n| format!("{n}\n"))
                    .collect::<String>(),
            ),
            ("ipset", ["save"]) => Output::success(self.ipset_save()),
            ("ipset", ["restore"]) => {
                let stop = match injected {
                    Some(Injected::AtLine(l)) => Some(l),
                    _ => None,
                };
                self.ipset_restore(stdin, stop)
            }
            ("ipset", ["destroy", name]) => match self.state.sets.remove(*name) {
                Some(_) => Output::success(""),
                None => Output::failure("The set with the given name does not exist"),
            },
            (bin, a) if bin.ends_with("-save") => {
                Output::success(self.save(fam, a.contains(&"-c")))
            }
            (bin, _) if bin.ends_with("-restore") => self.restore(fam, stdin),
            _ => Output::failure(format!("fake host: unexpected call {}", call.line())),
        }
    }

    fn ipset_save(&self) -> String {
        let mut out = String::new();
        for (name, (family, members)) in &self.state.sets {
            out.push_str(&format!(
                "create {name} hash:net family {family} hashsize 1024 maxelem 65536\n"
            ));
            for m in members {
                out.push_str(&format!("add {name} {m}\n"));
            }
        }
        out
    }

    fn ipset_restore(&mut self, script: &str, stop: Option<usize>) -> Output {
        for (i, line) in script.lines().enumerate() {
            let n = i + 1;
            if stop == Some(n) {
                return Output::failure(format!("ipset v7.17: Error in line {n}: injected"));
            }
            let w: Vec<&str> = line.split_whitespace().collect();
            let sets = &mut self.state.sets;
            let ok = match w.as_slice() {
                [] => true,
                [c, ..] if c.starts_with('#') => true,
                ["create", name, _, "family", fam, ..] => sets
                    .insert(name.to_string(), (fam.to_string(), Vec::new()))
                    .is_none(),
                ["add", name, m] => match sets.get_mut(*name) {
                    Some(s) => {
                        s.1.push(m.to_string());
                        true
                    }
                    None => false,
                },
                ["swap", a, b] => match (sets.get(*a).cloned(), sets.get(*b).cloned()) {
                    (Some(x), Some(y)) if x.0 == y.0 => {
                        sets.insert(a.to_string(), y);
                        sets.insert(b.to_string(), x);
                        true
                    }
                    _ => false,
                },
                ["destroy", name] => sets.remove(*name).is_some(),
                _ => false,
            };
            if !ok {
                return Output::failure(format!(
                    "ipset v7.17: Error in line {n}: refused {line:?}"
                ));
            }
        }
        Output::success("")
    }

    fn save(&self, fam: usize, counters: bool) -> String {
        let t = &self.state.tables[fam];
        let c = if counters { "[0:0] " } else { "" };
        let mut out = String::from(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
        );
        for name in t.chains.keys() {
            out.push_str(&format!(":{name} - [0:0]\n"));
        }
        for r in &t.input {
            out.push_str(&format!("{c}-A INPUT {r}\n"));
        }
        for (name, rules) in &t.chains {
            for r in rules {
                out.push_str(&format!("{c}-A {name} {r}\n"));
            }
        }
        out.push_str("COMMIT\n");
        out
    }

    /// `iptables-restore --noflush`: all or nothing.
    fn restore(&mut self, fam: usize, script: &str) -> Output {
        let mut t = self.state.tables[fam].clone();
        for (i, line) in script.lines().enumerate() {
            let fail =
                |why: &str| Output::failure(format!("iptables-restore: line {}: {why}", i + 1));
            if line.is_empty() || line.starts_with('#') || line == "*filter" || line == "COMMIT" {
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                t.chains.insert(name.to_string(), Vec::new());
                continue;
            }
            let (op, rest) = line.split_once(' ').unwrap_or((line, ""));
            let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
            match op {
                "-A" => {
                    if self.drop_spec.as_deref().is_some_and(|d| spec.contains(d)) {
                        // Once: the undo that follows puts the rule back for real.
                        self.drop_spec = None;
                        continue;
                    }
                    if !self.targets_exist(&t, spec) {
                        return fail("target or set does not exist");
                    }
                    match chain {
                        "INPUT" => t.input.push(spec.to_string()),
                        c => match t.chains.get_mut(c) {
                            Some(rules) => rules.push(spec.to_string()),
                            None => return fail("no such chain"),
                        },
                    }
                }
                "-D" if chain == "INPUT" => match t.input.iter().position(|r| r == spec) {
                    Some(p) => {
                        t.input.remove(p);
                    }
                    None => return fail("no such rule"),
                },
                "-I" if chain == "INPUT" => {
                    let (pos, spec) = spec.split_once(' ').unwrap_or(("1", spec));
                    let at = pos.parse::<usize>().unwrap_or(1).saturating_sub(1);
                    t.input.insert(at.min(t.input.len()), spec.to_string());
                }
                "-X" => {
                    let referenced = t.input.iter().chain(t.chains.values().flatten()).any(|r| {
                        r.ends_with(&format!("-j {chain}")) || r.ends_with(&format!("-g {chain}"))
                    });
                    if referenced || t.chains.remove(chain).is_none() {
                        return fail("cannot delete chain");
                    }
                }
                _ => return fail("unsupported line"),
            }
        }
        self.state.tables[fam] = t;
        Output::success("")
    }

    fn targets_exist(&self, t: &FilterTable, spec: &str) -> bool {
        let w: Vec<&str> = spec.split_whitespace().collect();
        w.windows(2).all(|p| match p {
            ["-j" | "-g", c] if c.starts_with("REYES-") => t.chains.contains_key(*c),
            ["--match-set", s] => self.state.sets.contains_key(*s),
            _ => true,
        })
    }
}
