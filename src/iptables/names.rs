//! Names of reyes' objects in iptables and ipset: chains, sets, log prefixes, all bounded to
//! what the tools take and deterministic.

use crate::net::Family;

/// Prefix of every chain reyes owns.
pub const CHAIN_PREFIX: &str = "REYES-";
/// The chain INPUT jumps to.
pub const BASE_CHAIN: &str = "REYES-INPUT";
/// The built-in chain that holds our one jump.
pub const HOOK_CHAIN: &str = "INPUT";
/// The jump rule (as `iptables-save` prints it after `-A INPUT `).
pub const JUMP_SPEC: &str = "-j REYES-INPUT";
/// The base chains of the other hooks (gateway mode: FORWARD; egress: OUTPUT), each after the
/// built-in chain that holds its one jump.
pub const OTHER_HOOKS: [(&str, &str); 2] =
    [("FORWARD", "REYES-FORWARD"), ("OUTPUT", "REYES-OUTPUT")];

/// reyes' chain for an IR base chain's hook.
pub fn hook_base_chain(hook: crate::compile::Hook) -> &'static str {
    match hook {
        crate::compile::Hook::Input => BASE_CHAIN,
        crate::compile::Hook::Forward => OTHER_HOOKS[0].1,
        crate::compile::Hook::Output => OTHER_HOOKS[1].1,
    }
}
/// Prefix of every ipset reyes owns.
pub const SET_PREFIX: &str = "reyes-";
/// Suffix of the temporary set a set's new members are staged in.
pub const TEMP_SUFFIX: &str = "-t";
/// Longest chain name iptables takes.
pub const MAX_CHAIN_NAME: usize = 28;
/// Longest ipset name.
pub const MAX_SET_NAME: usize = 31;
/// Longest `--log-prefix`.
pub const MAX_LOG_PREFIX: usize = 29;
/// Ports one `-m multiport` match holds (a range takes two).
pub const MULTIPORT_SLOTS: usize = 15;
const MAX_SET_BODY: usize = MAX_SET_NAME - SET_PREFIX.len() - TEMP_SUFFIX.len();

pub(super) fn hash_hex(s: &str, bytes: usize) -> String {
    crate::digest::short_sha256(s.as_bytes(), bytes)
}

/// Bound a name: longer ones keep their head and end in `-` and 8 hex digits of a hash of the
/// whole name, so they stay deterministic and (up to the hash) distinct.
pub fn shorten(name: &str, max: usize) -> String {
    if name.len() <= max && name.is_ascii() {
        return name.to_string();
    }
    let head: String = name.chars().filter(char::is_ascii).take(max - 9).collect();
    format!("{head}-{}", hash_hex(name, 4))
}

/// The iptables chain of an IR chain: `g_X` -> `REYES-G-X`, `p_X` -> `REYES-P-X`.
pub fn chain_name(ir: &str) -> String {
    let body = if let Some(r) = ir.strip_prefix("g_") {
        format!("G-{r}")
    } else if let Some(r) = ir.strip_prefix("p_") {
        format!("P-{r}")
    } else if let Some(r) = ir.strip_prefix("e_") {
        format!("E-{r}")
    } else if let Some(r) = ir.strip_prefix("pe_") {
        format!("PE-{r}")
    } else {
        format!("C-{ir}")
    };
    shorten(&format!("{CHAIN_PREFIX}{body}"), MAX_CHAIN_NAME)
}

/// The chain counting a named counter: `accepted` -> `REYES-ACCEPTED`.
pub fn counter_chain(counter: &str) -> String {
    let up: String = counter
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    shorten(&format!("{CHAIN_PREFIX}{up}"), MAX_CHAIN_NAME)
}

/// The ipset of an IR set name (or another body): `reyes-BODY`, bounded so that the temporary
/// name (`reyes-BODY-t`) fits too.
pub fn set_name(body: &str) -> String {
    format!("{SET_PREFIX}{}", shorten(body, MAX_SET_BODY))
}

pub(super) fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A log prefix iptables takes: no quotes or backslashes, ASCII, at most 29 characters
/// (longer ones: head, `~`, 6 hex digits of a hash of the whole prefix, `: `). Returns the
/// prefix and, when shortened, a note for the script.
pub fn log_prefix(p: &str) -> (String, Option<String>) {
    let c: String = p
        .chars()
        .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
        .collect();
    if c.len() <= MAX_LOG_PREFIX && c.is_ascii() {
        return (c, None);
    }
    let head: String = c
        .chars()
        .filter(char::is_ascii)
        .take(MAX_LOG_PREFIX - 9)
        .collect();
    let short = format!("{head}~{}: ", hash_hex(&c, 3));
    let note = format!(
        "log prefix \"{c}\" shortened to \"{short}\" (iptables takes {MAX_LOG_PREFIX} characters)"
    );
    (short, Some(note))
}

/// `inet` / `inet6`.
pub fn family_kw(f: Family) -> &'static str {
    match f {
        Family::V4 => "inet",
        Family::V6 => "inet6",
    }
}
