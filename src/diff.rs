//! `reyes diff`: a semantic diff of two rule documents, in the terms a reviewer thinks in:
//! groups added and removed, and for the groups in both, members and ingress rules added and
//! removed (plus renames, prefix-list entries and network blocks, which change what rules
//! and `local_cidrs: auto` mean). Text for pull requests, JSON for machines.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde::Serialize;

use crate::doctext::rule_text;
use crate::document::{DocGroup, Document};
use crate::net::Cidr;

/// One side's header facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Side {
    /// Environment.
    pub environment: String,
    /// Serial.
    pub serial: u64,
    /// Policy digest.
    pub policy_digest: String,
}

/// A group that is only on one side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupSummary {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Members.
    pub members: Vec<String>,
    /// Ingress rules, as text.
    pub rules: Vec<String>,
}

/// A group on both sides that differs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GroupChange {
    /// Id.
    pub id: String,
    /// Name (the new one).
    pub name: String,
    /// Old name, if it was renamed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renamed_from: Option<String>,
    /// Network (old, new), if it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<(Option<String>, Option<String>)>,
    /// Members added.
    pub members_added: Vec<String>,
    /// Members removed.
    pub members_removed: Vec<String>,
    /// Rules added, as text.
    pub rules_added: Vec<String>,
    /// Rules removed, as text.
    pub rules_removed: Vec<String>,
}

/// Entries of a named list of prefixes (prefix list or network) that changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CidrsChange {
    /// Id.
    pub id: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    /// Prefixes added.
    pub added: Vec<String>,
    /// Prefixes removed.
    pub removed: Vec<String>,
}

/// The diff of two documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DocDiff {
    /// The old document.
    pub old: Side,
    /// The new document.
    pub new: Side,
    /// Whether the policies are the same (same digest): nothing below then.
    pub policy_unchanged: bool,
    /// Groups only in the new document.
    pub groups_added: Vec<GroupSummary>,
    /// Groups only in the old document.
    pub groups_removed: Vec<GroupSummary>,
    /// Groups in both that differ.
    pub groups_changed: Vec<GroupChange>,
    /// Prefix lists that differ.
    pub prefix_lists: Vec<CidrsChange>,
    /// Networks that differ.
    pub networks: Vec<CidrsChange>,
}

impl DocDiff {
    /// Whether anything in the policy differs.
    pub fn is_empty(&self) -> bool {
        self.groups_added.is_empty()
            && self.groups_removed.is_empty()
            && self.groups_changed.is_empty()
            && self.prefix_lists.is_empty()
            && self.networks.is_empty()
    }
}

fn cidr_strings(c: &[Cidr]) -> Vec<String> {
    c.iter().map(|c| c.to_string()).collect()
}

fn summary(g: &DocGroup) -> GroupSummary {
    GroupSummary {
        id: g.id.clone(),
        name: g.name.clone(),
        members: cidr_strings(&g.members),
        rules: g.ingress.iter().map(rule_text).collect(),
    }
}

/// `(only in a, only in b)`, each in order.
fn sides<T: Ord + Clone>(a: &[T], b: &[T]) -> (Vec<T>, Vec<T>) {
    let (sa, sb): (BTreeSet<&T>, BTreeSet<&T>) = (a.iter().collect(), b.iter().collect());
    (
        sa.difference(&sb).map(|t| (*t).clone()).collect(),
        sb.difference(&sa).map(|t| (*t).clone()).collect(),
    )
}

fn cidrs_changes(old: BTreeMap<&str, &[Cidr]>, new: BTreeMap<&str, &[Cidr]>) -> Vec<CidrsChange> {
    let ids: BTreeSet<&str> = old.keys().chain(new.keys()).copied().collect();
    let mut out = Vec::new();
    for id in ids {
        let (o, n) = (old.get(id), new.get(id));
        let (removed, added) = sides(o.copied().unwrap_or(&[]), n.copied().unwrap_or(&[]));
        let change = match (o, n) {
            (None, Some(_)) => "added",
            (Some(_), None) => "removed",
            _ if removed.is_empty() && added.is_empty() => continue,
            _ => "changed",
        };
        out.push(CidrsChange {
            id: id.to_string(),
            change,
            added: cidr_strings(&added),
            removed: cidr_strings(&removed),
        });
    }
    out
}

/// Compare two documents.
pub fn diff(old: &Document, new: &Document) -> DocDiff {
    let side = |d: &Document| Side {
        environment: d.environment.clone(),
        serial: d.serial,
        policy_digest: d.policy_digest.clone(),
    };
    let (po, pn) = (&old.policy, &new.policy);
    let og: BTreeMap<&str, &DocGroup> = po.groups.iter().map(|g| (g.id.as_str(), g)).collect();
    let ng: BTreeMap<&str, &DocGroup> = pn.groups.iter().map(|g| (g.id.as_str(), g)).collect();
    let mut d = DocDiff {
        old: side(old),
        new: side(new),
        policy_unchanged: po == pn,
        groups_added: ng
            .iter()
            .filter(|(id, _)| !og.contains_key(*id))
            .map(|(_, g)| summary(g))
            .collect(),
        groups_removed: og
            .iter()
            .filter(|(id, _)| !ng.contains_key(*id))
            .map(|(_, g)| summary(g))
            .collect(),
        groups_changed: vec![],
        prefix_lists: cidrs_changes(
            po.prefix_lists
                .iter()
                .map(|p| (p.id.as_str(), p.cidrs.as_slice()))
                .collect(),
            pn.prefix_lists
                .iter()
                .map(|p| (p.id.as_str(), p.cidrs.as_slice()))
                .collect(),
        ),
        networks: cidrs_changes(
            po.networks
                .iter()
                .map(|n| (n.id.as_str(), n.cidrs.as_slice()))
                .collect(),
            pn.networks
                .iter()
                .map(|n| (n.id.as_str(), n.cidrs.as_slice()))
                .collect(),
        ),
    };
    for (id, o) in &og {
        let Some(n) = ng.get(id) else { continue };
        if o == n {
            continue;
        }
        let (members_removed, members_added) = sides(&o.members, &n.members);
        let (rules_removed, rules_added) = sides(&o.ingress, &n.ingress);
        d.groups_changed.push(GroupChange {
            id: id.to_string(),
            name: n.name.clone(),
            renamed_from: (o.name != n.name).then(|| o.name.clone()),
            network: (o.network != n.network).then(|| (o.network.clone(), n.network.clone())),
            members_added: cidr_strings(&members_added),
            members_removed: cidr_strings(&members_removed),
            rules_added: rules_added.iter().map(rule_text).collect(),
            rules_removed: rules_removed.iter().map(rule_text).collect(),
        });
    }
    d
}

fn plural(n: usize, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

fn label(id: &str, name: &str) -> String {
    if id == name {
        id.to_string()
    } else {
        format!("{id} ({name})")
    }
}

/// The diff as text for a pull request: `+` added, `-` removed, `~` changed.
pub fn text(d: &DocDiff) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "serial {} -> {}, policy {} -> {}",
        d.old.serial, d.new.serial, d.old.policy_digest, d.new.policy_digest
    );
    if d.old.environment != d.new.environment {
        let _ = writeln!(
            s,
            "environment {} -> {}",
            d.old.environment, d.new.environment
        );
    }
    if d.is_empty() {
        s.push_str("no policy changes\n");
        return s;
    }
    for g in &d.groups_added {
        let _ = writeln!(
            s,
            "+ group {}: {}, {}",
            label(&g.id, &g.name),
            plural(g.members.len(), "member"),
            plural(g.rules.len(), "rule")
        );
        for m in &g.members {
            let _ = writeln!(s, "    + member {m}");
        }
        for r in &g.rules {
            let _ = writeln!(s, "    + rule {r}");
        }
    }
    for g in &d.groups_removed {
        let _ = writeln!(
            s,
            "- group {}: {}, {}",
            label(&g.id, &g.name),
            plural(g.members.len(), "member"),
            plural(g.rules.len(), "rule")
        );
    }
    for g in &d.groups_changed {
        let _ = writeln!(s, "~ group {}", label(&g.id, &g.name));
        if let Some(old) = &g.renamed_from {
            let _ = writeln!(s, "    renamed from {old}");
        }
        if let Some((o, n)) = &g.network {
            let _ = writeln!(
                s,
                "    network {} -> {}",
                o.as_deref().unwrap_or("none"),
                n.as_deref().unwrap_or("none")
            );
        }
        for m in &g.members_added {
            let _ = writeln!(s, "    + member {m}");
        }
        for m in &g.members_removed {
            let _ = writeln!(s, "    - member {m}");
        }
        for r in &g.rules_added {
            let _ = writeln!(s, "    + rule {r}");
        }
        for r in &g.rules_removed {
            let _ = writeln!(s, "    - rule {r}");
        }
    }
    for (what, list) in [("prefix list", &d.prefix_lists), ("network", &d.networks)] {
        for c in list {
            let mark = match c.change {
                "added" => '+',
                "removed" => '-',
                _ => '~',
            };
            let _ = writeln!(s, "{mark} {what} {}", c.id);
            for a in &c.added {
                let _ = writeln!(s, "    + {a}");
            }
            for r in &c.removed {
                let _ = writeln!(s, "    - {r}");
            }
        }
    }
    let _ = writeln!(
        s,
        "{} added, {} removed, {} changed",
        plural(d.groups_added.len(), "group"),
        d.groups_removed.len(),
        d.groups_changed.len()
    );
    s
}

/// The diff as pretty JSON (one object; see [`DocDiff`]).
pub fn json(d: &DocDiff) -> String {
    let mut s = serde_json::to_string_pretty(d).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{build, BuildOptions};
    use crate::inventory::static_file;
    use std::time::{Duration, SystemTime};

    fn doc(yaml: &str, serial: u64) -> Document {
        let opts = BuildOptions {
            environment: "prod".into(),
            serial,
            issued_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            validity: Duration::from_secs(3600),
            excluded_group_names: vec![],
            excluded_group_ids: vec![],
            dynamic_subnets: vec![],
        };
        build(&static_file::parse(yaml, "t").unwrap(), &opts)
            .unwrap()
            .document
    }

    const OLD: &str = r#"
prefix_lists: [{id: pl-mon, cidrs: [10.50.0.0/24]}]
groups:
  - id: sg-web
    name: web
    ingress:
      - {proto: tcp, ports: 443, from: {groups: [sg-lb]}}
      - {proto: tcp, ports: 9100, from: {prefix_lists: [pl-mon]}}
  - {id: sg-lb, name: lb}
  - {id: sg-old, name: old, ingress: [{proto: all, from: {cidrs: [10.0.0.0/8]}}]}
hosts:
  - {id: a, addresses: [10.1.0.10, 10.1.0.11], groups: [sg-web]}
  - {id: b, addresses: [10.1.0.5], groups: [sg-lb, sg-old]}
"#;

    const NEW: &str = r#"
prefix_lists: [{id: pl-mon, cidrs: [10.50.0.0/24, 10.50.1.0/24]}]
groups:
  - id: sg-web
    name: web
    ingress:
      - {proto: tcp, ports: 8443, from: {groups: [sg-lb]}}
      - {proto: tcp, ports: 9100, from: {prefix_lists: [pl-mon]}}
  - {id: sg-lb, name: balancers}
  - {id: sg-new, name: new, ingress: [{proto: icmp, icmp_type: 8, from: {cidrs: [10.0.0.0/8]}}]}
hosts:
  - {id: a, addresses: [10.1.0.10, 10.1.0.12], groups: [sg-web]}
  - {id: b, addresses: [10.1.0.5], groups: [sg-lb, sg-new]}
"#;

    #[test]
    fn groups_members_and_rules() {
        let d = diff(&doc(OLD, 1), &doc(NEW, 2));
        assert!(!d.policy_unchanged);
        assert_eq!(d.groups_added.len(), 1);
        assert_eq!(d.groups_added[0].id, "sg-new");
        assert_eq!(
            d.groups_added[0].rules,
            ["icmp type 8 from cidrs 10.0.0.0/8"]
        );
        assert_eq!(d.groups_removed[0].id, "sg-old");
        let web = d.groups_changed.iter().find(|g| g.id == "sg-web").unwrap();
        assert_eq!(web.members_added, ["10.1.0.12"]);
        assert_eq!(web.members_removed, ["10.1.0.11"]);
        assert_eq!(web.rules_added, ["tcp 8443 from groups sg-lb"]);
        assert_eq!(web.rules_removed, ["tcp 443 from groups sg-lb"]);
        let lb = d.groups_changed.iter().find(|g| g.id == "sg-lb").unwrap();
        assert_eq!(lb.renamed_from.as_deref(), Some("lb"));
        assert!(lb.members_added.is_empty() && lb.rules_added.is_empty());
        assert_eq!(d.prefix_lists[0].added, ["10.50.1.0/24"]);
        let t = text(&d);
        for want in [
            "serial 1 -> 2",
            "+ group sg-new (new): 1 member, 1 rule",
            "- group sg-old (old): 1 member, 1 rule",
            "~ group sg-web (web)\n    + member 10.1.0.12\n    - member 10.1.0.11\n    + rule tcp 8443 from groups sg-lb\n    - rule tcp 443 from groups sg-lb\n",
            "~ group sg-lb (balancers)\n    renamed from lb\n",
            "~ prefix list pl-mon\n    + 10.50.1.0/24\n",
            "1 group added, 1 removed, 2 changed",
        ] {
            assert!(t.contains(want), "missing {want:?} in:\n{t}");
        }
        let v: serde_json::Value = serde_json::from_str(&json(&d)).unwrap();
        assert_eq!(
            v["groups_changed"][1]["rules_added"][0],
            "tcp 8443 from groups sg-lb"
        );
        assert_eq!(v["groups_added"][0]["members"][0], "10.1.0.5");
    }

    #[test]
    fn same_policy_is_no_change() {
        let d = diff(&doc(OLD, 1), &doc(OLD, 5));
        assert!(d.policy_unchanged && d.is_empty());
        assert!(text(&d).ends_with("no policy changes\n"));
    }

    #[test]
    fn rule_texts() {
        let d = doc(
            "groups:\n  - id: g\n    ingress:\n      - {proto: all, from: {cidrs: [\"fd00::/8\"], groups: [g]}}\n      - {proto: 47, from: {cidrs: [10.0.0.1]}}\n      - {proto: icmpv6, icmp_type: 128, icmp_code: 0, from: {cidrs: [\"fd00::/8\"]}}\n      - {proto: udp, ports: \"1000-2000\", from: {cidrs: [10.0.0.1]}}\n",
            1,
        );
        let t: Vec<String> = d.policy.groups[0].ingress.iter().map(rule_text).collect();
        assert!(
            t.contains(&"all from groups g; cidrs fd00::/8".to_string()),
            "{t:?}"
        );
        assert!(
            t.contains(&"proto 47 from cidrs 10.0.0.1".to_string()),
            "{t:?}"
        );
        assert!(
            t.contains(&"icmpv6 type 128 code 0 from cidrs fd00::/8".to_string()),
            "{t:?}"
        );
        assert!(
            t.contains(&"udp 1000-2000 from cidrs 10.0.0.1".to_string()),
            "{t:?}"
        );
    }
}
