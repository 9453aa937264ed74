//! The static YAML inventory (docs/config.md, "The static inventory").
//!
//! Beside `networks`, `groups` and `hosts`, a file may list `subnets` (for
//! `dynamic_subnets`) and `prefix_lists`, and a host may name its `subnet`.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

use super::{Group, Host, Inventory, InventoryError, Network, PrefixList, Rule, Sources, Subnet};
use crate::net::Cidr;
use crate::proto::{PortRange, Proto};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    networks: Vec<RawNetwork>,
    #[serde(default)]
    subnets: Vec<RawSubnet>,
    #[serde(default)]
    groups: Vec<RawGroup>,
    #[serde(default)]
    hosts: Vec<RawHost>,
    #[serde(default)]
    prefix_lists: Vec<RawPrefixList>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    id: String,
    #[serde(default)]
    cidrs: Vec<Cidr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubnet {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    network: Option<String>,
    cidrs: Vec<Cidr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    ingress: Vec<RawRule>,
    #[serde(default)]
    egress: Option<Vec<RawEgressRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSources {
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    cidrs: Vec<Cidr>,
    #[serde(default)]
    prefix_lists: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, try_from = "RuleFields")]
struct RawRule(Rule);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFields {
    proto: Proto,
    #[serde(default)]
    ports: Option<PortRange>,
    #[serde(default)]
    icmp_type: Option<u8>,
    #[serde(default)]
    icmp_code: Option<u8>,
    from: RawSources,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

/// An egress rule: a rule with `to` for `from`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, try_from = "EgressFields")]
struct RawEgressRule(Rule);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EgressFields {
    proto: Proto,
    #[serde(default)]
    ports: Option<PortRange>,
    #[serde(default)]
    icmp_type: Option<u8>,
    #[serde(default)]
    icmp_code: Option<u8>,
    to: RawSources,
    #[serde(default)]
    description: Option<String>,
}

impl TryFrom<EgressFields> for RawEgressRule {
    type Error = RuleError;
    fn try_from(f: EgressFields) -> Result<Self, RuleError> {
        let RawRule(rule) = RawRule::try_from(RuleFields {
            proto: f.proto,
            ports: f.ports,
            icmp_type: f.icmp_type,
            icmp_code: f.icmp_code,
            from: f.to,
            description: f.description,
        })?;
        Ok(RawEgressRule(rule))
    }
}

/// A rule whose fields do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// tcp/udp without `ports`.
    #[error("rule: `ports` is required for {0} (use \"0-65535\" for every port)")]
    PortsRequired(Proto),
    /// `ports` for another protocol.
    #[error("rule: `ports` only applies to tcp and udp, not {0}")]
    PortsNotApplicable(Proto),
    /// ICMP fields for another protocol.
    #[error("rule: icmp_type/icmp_code only apply to icmp and icmpv6, not {0}")]
    IcmpNotApplicable(Proto),
    /// A code without a type.
    #[error("rule: icmp_code needs icmp_type")]
    CodeWithoutType,
    /// No source (or, egress, destination) at all.
    #[error("rule: `from` (or, egress, `to`) lists no groups, cidrs or prefix_lists")]
    NoSource,
}

impl TryFrom<RuleFields> for RawRule {
    type Error = RuleError;
    fn try_from(f: RuleFields) -> Result<Self, RuleError> {
        if f.proto.has_ports() && f.ports.is_none() {
            return Err(RuleError::PortsRequired(f.proto));
        }
        if !f.proto.has_ports() && f.ports.is_some() {
            return Err(RuleError::PortsNotApplicable(f.proto));
        }
        if !f.proto.is_icmp() && (f.icmp_type.is_some() || f.icmp_code.is_some()) {
            return Err(RuleError::IcmpNotApplicable(f.proto));
        }
        if f.icmp_code.is_some() && f.icmp_type.is_none() {
            return Err(RuleError::CodeWithoutType);
        }
        if f.from.groups.is_empty() && f.from.cidrs.is_empty() && f.from.prefix_lists.is_empty() {
            return Err(RuleError::NoSource);
        }
        Ok(RawRule(Rule {
            proto: f.proto,
            ports: f.ports,
            icmp_type: f.icmp_type,
            icmp_code: f.icmp_code,
            from: Sources {
                groups: f.from.groups,
                cidrs: f.from.cidrs,
                prefix_lists: f.from.prefix_lists,
            },
        }))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    id: String,
    addresses: Vec<Cidr>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    subnet: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrefixList {
    id: String,
    cidrs: Vec<Cidr>,
}

/// Read a static inventory file.
pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
    let text = super::read(path)?;
    parse(&text, &path.display().to_string())
}

/// A name in a static inventory that refers to nothing, or an id used twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    /// Two groups with one id.
    #[error("groups: id {0:?} appears twice")]
    DuplicateGroup(String),
    /// A rule's source group is not in the file.
    #[error("group {group} {list}[{rule}]: {peers}.groups names {name:?}, which is not a group in this file")]
    SourceGroup {
        /// The group of the rule.
        group: String,
        /// `ingress` or `egress`.
        list: &'static str,
        /// `from` or `to`.
        peers: &'static str,
        /// The rule's index.
        rule: usize,
        /// The missing group.
        name: String,
    },
    /// A rule's prefix list is not in the file.
    #[error("group {group} {list}[{rule}]: {peers}.prefix_lists names {name:?}, which is not in prefix_lists")]
    PrefixList {
        /// The group of the rule.
        group: String,
        /// `ingress` or `egress`.
        list: &'static str,
        /// `from` or `to`.
        peers: &'static str,
        /// The rule's index.
        rule: usize,
        /// The missing prefix list.
        name: String,
    },
    /// A host's group is not in the file.
    #[error("host {host}: group {name:?} is not a group in this file")]
    HostGroup {
        /// The host.
        host: String,
        /// The missing group.
        name: String,
    },
    /// A host's subnet is not in the file.
    #[error("host {host}: subnet {name:?} is not in subnets")]
    HostSubnet {
        /// The host.
        host: String,
        /// The missing subnet.
        name: String,
    },
}

/// Every group, prefix list and subnet a rule or host names exists, and group ids are unique:
/// the first dangling reference, if any.
fn check_references(f: &File) -> Result<(), RefError> {
    let mut group_ids = BTreeSet::new();
    for g in &f.groups {
        if !group_ids.insert(g.id.as_str()) {
            return Err(RefError::DuplicateGroup(g.id.clone()));
        }
    }
    let pl_ids: BTreeSet<&str> = f.prefix_lists.iter().map(|p| p.id.as_str()).collect();
    let subnet_ids: BTreeSet<&str> = f.subnets.iter().map(|s| s.id.as_str()).collect();
    for g in &f.groups {
        let ingress = g.ingress.iter().map(|r| ("ingress", "from", &r.0));
        let egress = g.egress.iter().flatten().map(|r| ("egress", "to", &r.0));
        let mut index = [0usize; 2];
        for (list, peers, r) in ingress.chain(egress) {
            let slot = &mut index[usize::from(list == "egress")];
            let rule = *slot;
            *slot += 1;
            if let Some(src) = r
                .from
                .groups
                .iter()
                .find(|s| !group_ids.contains(s.as_str()))
            {
                return Err(RefError::SourceGroup {
                    group: g.id.clone(),
                    list,
                    peers,
                    rule,
                    name: src.clone(),
                });
            }
            if let Some(pl) = r
                .from
                .prefix_lists
                .iter()
                .find(|p| !pl_ids.contains(p.as_str()))
            {
                return Err(RefError::PrefixList {
                    group: g.id.clone(),
                    list,
                    peers,
                    rule,
                    name: pl.clone(),
                });
            }
        }
    }
    for h in &f.hosts {
        if let Some(g) = h.groups.iter().find(|g| !group_ids.contains(g.as_str())) {
            return Err(RefError::HostGroup {
                host: h.id.clone(),
                name: g.clone(),
            });
        }
        if let Some(s) = h
            .subnet
            .as_ref()
            .filter(|s| !subnet_ids.contains(s.as_str()))
        {
            return Err(RefError::HostSubnet {
                host: h.id.clone(),
                name: s.clone(),
            });
        }
    }
    Ok(())
}

/// Parse static inventory text; `name` names the file in errors.
pub fn parse(text: &str, name: &str) -> Result<Inventory, InventoryError> {
    // serde-saphyr's default budget (250k nodes) stops at about 60k hosts; an estate as large
    // as the document limits allow needs more. The input size is bounded by `super::read`.
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = 8_000_000;
    budget.max_events = budget.max_events.max(16_000_000);
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    let f: File = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let (l, c) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        InventoryError::Invalid(format!("{name}:{l}:{c}: {e}"))
    })?;
    check_references(&f).map_err(|msg| InventoryError::Invalid(format!("{name}: {msg}")))?;

    Ok(Inventory {
        networks: f
            .networks
            .into_iter()
            .map(|n| Network {
                id: n.id,
                cidrs: n.cidrs,
            })
            .collect(),
        subnets: f
            .subnets
            .into_iter()
            .map(|s| Subnet {
                id: s.id,
                name: s.name,
                network: s.network,
                cidrs: s.cidrs,
            })
            .collect(),
        groups: f
            .groups
            .into_iter()
            .map(|g| Group {
                name: g.name.unwrap_or_else(|| g.id.clone()),
                id: g.id,
                network: g.network,
                ingress: g.ingress.into_iter().map(|r| r.0).collect(),
                egress: g.egress.map(|e| e.into_iter().map(|r| r.0).collect()),
            })
            .collect(),
        hosts: f
            .hosts
            .into_iter()
            .map(|h| Host {
                id: h.id,
                addresses: h.addresses,
                groups: h.groups,
                subnet: h.subnet,
            })
            .collect(),
        prefix_lists: f
            .prefix_lists
            .into_iter()
            .map(|p| PrefixList {
                id: p.id,
                cidrs: p.cidrs,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_example_parses() {
        let text = r#"
networks:
  - id: vpc-a
    cidrs: [10.1.0.0/16, "fd00:1::/56"]
groups:
  - id: sg-web
    name: web
    network: vpc-a
    ingress:
      - proto: tcp
        ports: 443
        from:
          groups: [sg-lb]
          cidrs: [10.2.0.0/16, "2001:db8::/64"]
      - proto: icmp
        icmp_type: 8
        from: {cidrs: [10.0.0.0/8]}
  - id: sg-lb
hosts:
  - id: i-0abc
    addresses: [10.1.0.10, "fd00:1::10"]
    groups: [sg-web]
"#;
        let inv = parse(text, "inv.yaml").unwrap();
        assert_eq!(inv.groups.len(), 2);
        assert_eq!(
            inv.groups[0].ingress[0].ports,
            Some(PortRange {
                first: 443,
                last: 443
            })
        );
        assert_eq!(inv.groups[1].name, "sg-lb");
        assert_eq!(inv.hosts[0].addresses.len(), 2);
    }

    #[test]
    fn errors_name_file_and_line() {
        let text = "groups:\n  - id: a\n    ingress:\n      - proto: tcp\n        from: {cidrs: [10.0.0.0/8]}\n";
        let e = parse(text, "inv.yaml").unwrap_err().to_string();
        assert!(e.starts_with("inv.yaml:4:"), "{e}");
        assert!(e.contains("ports"), "{e}");
    }

    #[test]
    fn dangling_references_are_errors() {
        let text = "groups:\n  - id: a\n    ingress:\n      - {proto: all, from: {groups: [b]}}\n";
        let e = parse(text, "inv.yaml").unwrap_err().to_string();
        assert!(e.contains("\"b\""), "{e}");
        let text = "hosts:\n  - {id: h, addresses: [10.0.0.1], groups: [nope]}\n";
        assert!(parse(text, "inv.yaml").is_err());
    }
}
