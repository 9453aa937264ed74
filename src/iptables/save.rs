//! Reading reyes' objects back: `iptables-save` (one family's filter table) and
//! `ipset save` / `ipset list -n`, parsed into what reyes owns; rule specs normalised so that
//! they compare equal however this host's iptables spells them.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::backend::BackendError;
use crate::exec::ToolFailure;
use crate::net::{Cidr, Family};

use super::names::{CHAIN_PREFIX, HOOK_CHAIN, JUMP_SPEC, OTHER_HOOKS, SET_PREFIX};
use super::{Tools, Variant};

/// Whether to read the packet and byte counters with the rules (`iptables-save -c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counters {
    /// Rules only.
    Without,
    /// Rules with their counters.
    With,
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
    /// How many jumps to reyes' base chain of another hook each built-in chain holds
    /// (`-A FORWARD -j REYES-FORWARD`, `-A OUTPUT -j REYES-OUTPUT`), by built-in chain.
    pub other_jumps: BTreeMap<String, usize>,
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
        } else if let Some((hook, _)) = OTHER_HOOKS
            .iter()
            .find(|(h, base)| *h == chain && spec.strip_prefix("-j ") == Some(*base))
        {
            *st.other_jumps.entry(hook.to_string()).or_default() += 1;
        } else if chain.starts_with(CHAIN_PREFIX) {
            st.chains
                .entry(chain.to_string())
                .or_default()
                .push(spec.to_string());
            if let Some((p, b)) = count {
                let e = st.counters.entry(chain.to_string()).or_default();
                e.0 = e.0.saturating_add(p);
                e.1 = e.1.saturating_add(b);
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
    counters: Counters,
) -> Result<Option<String>, BackendError> {
    if tools.variant == Variant::Legacy && !legacy_loaded(fam) {
        return Ok(None);
    }
    let bin = tools.save(fam);
    let mut args = vec!["-t", "filter"];
    if counters == Counters::With {
        args.push("-c");
    }
    let out = tools.run(bin, &args, None)?;
    if !out.ok {
        return Err(BackendError::io(
            "reading the filter table failed",
            ToolFailure::new(bin, &args, &out),
        ));
    }
    Ok(Some(out.stdout))
}

/// reyes' objects in one family's filter table.
pub fn read_table(
    tools: &Tools,
    fam: Family,
    counters: Counters,
) -> Result<TableState, BackendError> {
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
    let out = tools.run(&tools.ipset, &["save"], None)?;
    if !out.ok {
        return Err(BackendError::io(
            "reading reyes' sets failed",
            ToolFailure::new(&tools.ipset, &["save"], &out),
        ));
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
    let out = tools.run(&tools.ipset, &["list", "-n"], None)?;
    if !out.ok {
        return Err(BackendError::io(
            "listing reyes' sets failed",
            ToolFailure::new(&tools.ipset, &["list", "-n"], &out),
        ));
    }
    Ok(out
        .stdout
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with(SET_PREFIX))
        .map(str::to_string)
        .collect())
}

fn protocols() -> &'static BTreeMap<String, u8> {
    static P: OnceLock<BTreeMap<String, u8>> = OnceLock::new();
    P.get_or_init(|| {
        let mut m: BTreeMap<String, u8> = super::matches::BUILTIN_PROTOS
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
            super::super::compare::counter(&[st.clone(), TableState::default()], "REYES-INPUT"),
            Some((5, 200))
        );
        assert_eq!(
            super::super::compare::counter(&[st], "REYES-ACCEPTED"),
            None
        );
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
}
