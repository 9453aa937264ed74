//! The iptables backend, for hosts without a usable nftables: reyes' own chains (`REYES-*`)
//! in the filter table, filled by `iptables-restore --noflush` (and `ip6tables-restore`), and
//! its own `hash:net` ipsets (`reyes-*`), filled under temporary names and swapped in.
//!
//! Ownership: the only rule outside reyes' chains is one `-A INPUT -j REYES-INPUT`, inserted
//! as the first rule of INPUT when (and only when) no such jump exists. Nothing else of the
//! host's is flushed, reordered or removed; `reyes flush` removes exactly the jump, the
//! `REYES-*` chains and the `reyes-*` sets.
//!
//! Semantics: reyes' drop is final; its accept is `-j RETURN` to INPUT, so the host's own
//! INPUT rules after the jump still see (and may drop) everything reyes lets through, as
//! another table would under nftables. See [`render`] for the translation.
//!
//! Order of an apply (see [`apply::apply`]): stage the new members in temporary sets, swap
//! them with the live sets, commit the IPv4 chains, commit the IPv6 chains, read everything
//! back and compare, destroy the temporaries (now holding the old members) and sets no longer
//! used. A failure at any step before the last undoes the steps before it.
//!
//! Variants: `iptables-legacy` and `iptables-nft` keep separate rule sets that cannot see each
//! other. `follower.iptables_variant` (auto | legacy | nft) picks one; reyes refuses to use one
//! while the host's filter table is in use through the other ([`detect`]).

pub mod apply;
pub mod compare;
#[cfg(test)]
pub(crate) mod fake_host;
pub mod matches;
pub mod names;
pub mod plan;
pub mod render;
#[cfg(test)]
mod rollback_tests;
pub mod save;
mod translate;

use std::sync::{Arc, OnceLock};

use crate::backend::{Backend, BackendError, Counters, Unsupported};
use crate::compile::{Ruleset, AUDIT_COUNTER_PREFIX, COUNTER_ACCEPTED, COUNTER_DROPPED};
use crate::config::IptablesVariant;
use crate::exec::{Output, Runner, ToolFailure};
use crate::net::Family;

pub use render::{DispatchLayout, Options, Plan};

/// One of the two iptables implementations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// x_tables (`iptables-legacy`).
    Legacy,
    /// x_tables rules in nf_tables (`iptables-nft`).
    Nft,
}

impl Variant {
    /// `iptables-legacy` / `iptables-nft`.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Legacy => "iptables-legacy",
            Variant::Nft => "iptables-nft",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Variant::Legacy => "legacy",
            Variant::Nft => "nft",
        }
    }

    fn other(self) -> Variant {
        match self {
            Variant::Legacy => Variant::Nft,
            Variant::Nft => Variant::Legacy,
        }
    }
}

/// The binaries of one variant, and ipset, and how they are run.
#[derive(Debug, Clone)]
pub struct Tools {
    /// Which variant.
    pub variant: Variant,
    /// `iptables-save`.
    pub save4: String,
    /// `iptables-restore`.
    pub restore4: String,
    /// `ip6tables-save`.
    pub save6: String,
    /// `ip6tables-restore`.
    pub restore6: String,
    /// `ipset`.
    pub ipset: String,
    /// Runs them.
    pub runner: Arc<dyn Runner>,
}

impl Tools {
    /// `iptables-save` or `ip6tables-save`.
    pub fn save(&self, f: Family) -> &str {
        match f {
            Family::V4 => &self.save4,
            Family::V6 => &self.save6,
        }
    }

    /// `iptables-restore` or `ip6tables-restore`.
    pub fn restore(&self, f: Family) -> &str {
        match f {
            Family::V4 => &self.restore4,
            Family::V6 => &self.restore6,
        }
    }

    /// The binaries of a variant: `iptables-legacy-save` etc., or the plain names when
    /// `iptables -V` says they are that variant (older distributions have no suffixed names).
    pub fn find(v: Variant) -> Result<Tools, Unsupported> {
        let (s4, r4, s6, r6) = binaries(v)?;
        if !in_path("ipset") {
            return Err(Unsupported::new(
                "ipset is not installed (the iptables backend needs it)",
                "install the ipset package",
            ));
        }
        Ok(Tools {
            variant: v,
            save4: s4,
            restore4: r4,
            save6: s6,
            restore6: r6,
            ipset: "ipset".into(),
            runner: crate::exec::system(),
        })
    }

    /// The plain tool names of a variant, run by `runner` (tests drive a fake host this way).
    pub fn with_runner(variant: Variant, runner: Arc<dyn Runner>) -> Tools {
        Tools {
            variant,
            save4: "iptables-save".into(),
            restore4: "iptables-restore".into(),
            save6: "ip6tables-save".into(),
            restore6: "ip6tables-restore".into(),
            ipset: "ipset".into(),
            runner,
        }
    }

    /// Run one of the tools.
    pub fn run(
        &self,
        bin: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<Output, BackendError> {
        self.runner
            .run(bin, args, stdin)
            .map_err(|e| BackendError::io("the iptables backend", e))
    }

    /// Run one of the tools; its failure (or that it would not run) as a [`ToolFailure`].
    pub fn run_checked(
        &self,
        bin: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<(), ToolFailure> {
        match self.runner.run(bin, args, stdin) {
            Ok(out) if out.ok => Ok(()),
            Ok(out) => Err(ToolFailure::new(bin, args, &out)),
            Err(e) => Err(ToolFailure {
                tool: bin.to_string(),
                args: args.iter().map(|a| a.to_string()).collect(),
                code: None,
                stderr: e.to_string(),
            }),
        }
    }
}

fn binaries(v: Variant) -> Result<(String, String, String, String), Unsupported> {
    let names = |sfx: &str| {
        (
            format!("iptables{sfx}-save"),
            format!("iptables{sfx}-restore"),
            format!("ip6tables{sfx}-save"),
            format!("ip6tables{sfx}-restore"),
        )
    };
    let suffixed = names(&format!("-{}", v.key()));
    let all = |n: &(String, String, String, String)| {
        in_path(&n.0) && in_path(&n.1) && in_path(&n.2) && in_path(&n.3)
    };
    if all(&suffixed) {
        return Ok(suffixed);
    }
    let plain = names("");
    if default_variant() == Some(v) && all(&plain) {
        return Ok(plain);
    }
    Err(Unsupported::new(
        format!(
            "{} is not installed (no {} and {} in PATH)",
            v.name(),
            suffixed.1,
            suffixed.3
        ),
        "install the iptables package",
    ))
}

fn in_path(bin: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|d| {
        std::fs::metadata(d.join(bin))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// The variant `iptables -V` names ("(legacy)" or "(nf_tables)"; neither: an old legacy-only
/// iptables), or `None` without an `iptables` binary.
pub fn default_variant() -> Option<Variant> {
    let out = crate::exec::System.run("iptables", &["-V"], None).ok()?;
    if !out.ok {
        return None;
    }
    Some(if out.stdout.contains("(nf_tables)") {
        Variant::Nft
    } else {
        Variant::Legacy
    })
}

/// What in a variant's filter tables is in use (one phrase each); empty when nothing is.
/// Never creates a table by looking: a legacy table that does not exist is not read.
pub fn usage(v: Variant) -> Result<Vec<String>, BackendError> {
    let mut out = Vec::new();
    for fam in Family::BOTH {
        let tool = match fam {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        if v == Variant::Legacy && !save::legacy_loaded(fam) {
            continue;
        }
        let Ok((s4, _, s6, _)) = binaries(v) else {
            if v == Variant::Legacy {
                out.push(format!(
                    "a legacy {tool} filter table exists, and no iptables-legacy tools to read it"
                ));
            }
            continue;
        };
        let tools = Tools {
            variant: v,
            save4: s4,
            restore4: String::new(),
            save6: s6,
            restore6: String::new(),
            ipset: String::new(),
            runner: crate::exec::system(),
        };
        if let Some(text) = save::save_text(&tools, fam, save::Counters::Without)? {
            out.extend(describe(&text, tool));
        }
    }
    Ok(out)
}

/// Phrases for what a filter table listing holds besides empty built-in chains.
fn describe(text: &str, tool: &str) -> Vec<String> {
    let mut rules = 0;
    let mut chains = Vec::new();
    let mut policies = Vec::new();
    let mut ours = 0;
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let mut w = decl.split_whitespace();
            let (name, policy) = (w.next().unwrap_or_default(), w.next().unwrap_or_default());
            if name.starts_with(names::CHAIN_PREFIX) {
                ours += 1;
            } else if policy == "-" {
                chains.push(name.to_string());
            } else if policy != "ACCEPT" {
                policies.push(format!("{name} policy {policy}"));
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
            let mine = chain.starts_with(render::CHAIN_PREFIX)
                || (chain == names::HOOK_CHAIN && spec == names::JUMP_SPEC)
                || names::OTHER_HOOKS
                    .iter()
                    .any(|(h, b)| *h == chain && spec.strip_prefix("-j ") == Some(*b));
            if !mine {
                rules += 1;
            }
        }
    }
    let mut out = Vec::new();
    if rules > 0 {
        out.push(format!("{tool}: {rules} rule(s)"));
    }
    if !chains.is_empty() {
        out.push(format!("{tool}: chain(s) {}", chains.join(", ")));
    }
    if !policies.is_empty() {
        out.push(format!("{tool}: {}", policies.join(", ")));
    }
    if ours > 0 {
        out.push(format!("{tool}: reyes' own chains from an earlier run"));
    }
    out
}

/// Pick the variant for `choice` and find its tools. Refuses to use one variant while the
/// host's filter table is in use through the other.
pub fn detect(choice: IptablesVariant) -> Result<Tools, BackendError> {
    let legacy = usage(Variant::Legacy)?;
    let nft = usage(Variant::Nft)?;
    let in_use = |v: Variant| if v == Variant::Legacy { &legacy } else { &nft };
    let refuse = |chosen: Variant| {
        let other = chosen.other();
        let what = in_use(other);
        let only_ours = what
            .iter()
            .all(|w| w.ends_with("reyes' own chains from an earlier run"));
        let advice = if only_ours {
            format!(
                "run `reyes flush` with follower.iptables_variant: {} first, or set it back",
                other.key()
            )
        } else {
            format!(
                "set follower.iptables_variant: {} (or auto), or move the host's rules to {}",
                other.key(),
                chosen.name()
            )
        };
        Unsupported::new(
            format!(
                "follower.iptables_variant is {}, but this host's filter table is in use through {} ({}). \
                 The two keep separate rule sets that cannot see each other, so reyes' chains would not be \
                 ordered with the host's rules",
                chosen.key(),
                other.name(),
                what.join("; "),
            ),
            advice,
        )
    };
    let v = match choice {
        IptablesVariant::Legacy if !nft.is_empty() => return Err(refuse(Variant::Legacy).into()),
        IptablesVariant::Nft if !legacy.is_empty() => return Err(refuse(Variant::Nft).into()),
        IptablesVariant::Legacy => Variant::Legacy,
        IptablesVariant::Nft => Variant::Nft,
        IptablesVariant::Auto => match (legacy.is_empty(), nft.is_empty()) {
            (false, false) => {
                return Err(Unsupported::new(
                    format!(
                        "this host's filter table is in use through both iptables-legacy ({}) and iptables-nft ({}); \
                         reyes will not add its chains to either while it cannot tell how the two are ordered",
                        legacy.join("; "),
                        nft.join("; ")
                    ),
                    "remove the rules of one of them first",
                )
                .into())
            }
            (false, true) => Variant::Legacy,
            (true, false) => Variant::Nft,
            (true, true) => default_variant().unwrap_or(if binaries(Variant::Nft).is_ok() { Variant::Nft } else { Variant::Legacy }),
        },
    };
    Ok(Tools::find(v)?)
}

/// The tools of every variant installed here. Finding and removing reyes' own objects never
/// mixes variants, so this is how both are looked at whatever the config says.
pub fn installed() -> Vec<Tools> {
    [Variant::Legacy, Variant::Nft]
        .into_iter()
        .filter_map(|v| Tools::find(v).ok())
        .collect()
}

/// What reyes owns in the filter tables of `variants` and in ipset, one phrase each (empty
/// when nothing).
pub fn owned(variants: &[Tools]) -> Result<Vec<String>, BackendError> {
    let mut out = Vec::new();
    for tools in variants {
        out.extend(compare::owned_chains(tools)?);
    }
    if let Some(first) = variants.first() {
        out.extend(compare::owned_sets(first)?);
    }
    Ok(out)
}

/// Remove everything reyes owns in iptables and ipset, in every installed variant, whatever
/// the config says; returns what was removed (empty when nothing was there).
pub fn remove_owned() -> Result<Vec<String>, BackendError> {
    let variants = installed();
    let found = owned(&variants)?;
    if !found.is_empty() {
        apply::flush(&variants)?;
    }
    Ok(found)
}

/// ipset + iptables-restore in reyes' own chains.
#[derive(Debug)]
pub struct IptablesBackend {
    choice: IptablesVariant,
    opts: Options,
    tools: OnceLock<Tools>,
}

impl IptablesBackend {
    /// A backend for this variant choice; the variant is detected at the first kernel
    /// operation (rendering needs none).
    pub fn new(choice: IptablesVariant) -> IptablesBackend {
        IptablesBackend::with_options(choice, Options::default())
    }

    /// With explicit layout options (benchmarks).
    pub fn with_options(choice: IptablesVariant, opts: Options) -> IptablesBackend {
        IptablesBackend {
            choice,
            opts,
            tools: OnceLock::new(),
        }
    }

    /// A backend using these tools (no detection), e.g. a fake host's.
    pub fn with_tools(tools: Tools, opts: Options) -> IptablesBackend {
        let choice = match tools.variant {
            Variant::Legacy => IptablesVariant::Legacy,
            Variant::Nft => IptablesVariant::Nft,
        };
        IptablesBackend {
            choice,
            opts,
            tools: OnceLock::from(tools),
        }
    }

    /// The tools of the detected variant (detected once; a failed detection is tried again).
    pub fn tools(&self) -> Result<&Tools, BackendError> {
        if let Some(t) = self.tools.get() {
            return Ok(t);
        }
        let t = detect(self.choice)?;
        Ok(self.tools.get_or_init(|| t))
    }

    /// The plan for a ruleset.
    pub fn plan(&self, rs: &Ruleset) -> Result<Plan, BackendError> {
        render::plan(rs, &self.opts)
            .map_err(|e| BackendError::io("translating the ruleset for iptables failed", e))
    }

    /// Install a plan (see [`apply::apply`]).
    pub fn apply_plan(&self, plan: &Plan) -> Result<apply::Report, BackendError> {
        let tools = self.tools()?;
        let rep = apply::apply(tools, plan)?;
        tracing::debug!(variant = tools.variant.name(), phases = ?rep.phases, "iptables apply");
        Ok(rep)
    }
}

impl Backend for IptablesBackend {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn render(&self, rs: &Ruleset) -> Result<String, BackendError> {
        render::render(rs, &self.opts)
            .map_err(|e| BackendError::io("rendering the iptables scripts failed", e))
    }

    fn live(&self) -> Result<Option<String>, BackendError> {
        compare::live_text(self.tools()?)
    }

    fn present(&self) -> Result<bool, BackendError> {
        compare::present(self.tools()?)
    }

    fn apply(&self, rs: &Ruleset) -> Result<(), BackendError> {
        let plan = self.plan(rs)?;
        self.apply_plan(&plan).map(|_| ())
    }

    /// Removing reyes' own objects never mixes variants, so no variant is refused here: an
    /// explicit variant is flushed as it is, `auto` flushes both (where installed).
    fn flush(&self) -> Result<(), BackendError> {
        let tools = match self.choice {
            IptablesVariant::Legacy => {
                vec![Tools::find(Variant::Legacy)?]
            }
            IptablesVariant::Nft => {
                vec![Tools::find(Variant::Nft)?]
            }
            IptablesVariant::Auto => {
                let (found, missing): (Vec<_>, Vec<_>) = [Variant::Legacy, Variant::Nft]
                    .into_iter()
                    .map(Tools::find)
                    .partition(Result::is_ok);
                let found: Vec<Tools> = found.into_iter().flatten().collect();
                if found.is_empty() {
                    if let Some(Err(e)) = missing.into_iter().last() {
                        return Err(e.into());
                    }
                }
                found
            }
        };
        apply::flush(&tools)
    }

    fn counters(&self) -> Result<Counters, BackendError> {
        let tools = self.tools()?;
        let tables = [
            save::read_table(tools, Family::V4, save::Counters::With)?,
            save::read_table(tools, Family::V6, save::Counters::With)?,
        ];
        Ok(Counters {
            accepted: compare::counter(&tables, &names::counter_chain(COUNTER_ACCEPTED)),
            dropped: compare::counter(&tables, &names::counter_chain(COUNTER_DROPPED)),
            audit: compare::counters_with_prefix(
                &tables,
                &names::counter_chain(AUDIT_COUNTER_PREFIX),
            ),
        })
    }

    fn diff(&self, rs: &Ruleset) -> Result<Vec<String>, BackendError> {
        let plan = self.plan(rs)?;
        let live = compare::live_lines(self.tools()?)?;
        Ok(compare::diff(&live, &compare::planned_lines(&plan)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_ignores_empty_tables_and_names_the_rest() {
        let empty =
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        assert!(describe(empty, "iptables").is_empty());
        let used = "*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:USER - [0:0]\n:REYES-INPUT - [0:0]\n-A INPUT -j REYES-INPUT\n-A INPUT -p tcp -j ACCEPT\n-A REYES-INPUT -j RETURN\nCOMMIT\n";
        let d = describe(used, "iptables");
        assert_eq!(
            d,
            vec![
                "iptables: 1 rule(s)",
                "iptables: chain(s) USER",
                "iptables: INPUT policy DROP",
                "iptables: reyes' own chains from an earlier run"
            ]
        );
    }
}
