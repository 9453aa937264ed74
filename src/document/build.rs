//! Inventory -> policy -> document: what the leader builds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use super::{
    rfc3339, DocEgressRule, DocGroup, DocNetwork, DocPrefixList, DocRule, DocSources, Document,
    DocumentError, Policy, FORMAT,
};
use crate::inventory::Inventory;
use crate::net::Cidr;
use crate::proto::PortRange;

/// What the leader puts around the policy.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Environment.
    pub environment: String,
    /// Serial.
    pub serial: u64,
    /// Issue time.
    pub issued_at: SystemTime,
    /// not_after - issued_at.
    pub validity: Duration,
    /// Groups left out, by name.
    pub excluded_group_names: Vec<String>,
    /// Groups left out, by id.
    pub excluded_group_ids: Vec<String>,
    /// Subnets (name or id) whose groups cover the whole subnet.
    pub dynamic_subnets: Vec<String>,
}

impl BuildOptions {
    /// Options with no exclusions and no dynamic subnets.
    pub fn new(
        environment: &str,
        serial: u64,
        issued_at: SystemTime,
        validity: Duration,
    ) -> BuildOptions {
        BuildOptions {
            environment: environment.to_string(),
            serial,
            issued_at,
            validity,
            excluded_group_names: Vec::new(),
            excluded_group_ids: Vec::new(),
            dynamic_subnets: Vec::new(),
        }
    }
}

/// A built document, its bytes, and what the leader should report.
#[derive(Debug, Clone)]
pub struct Built {
    /// The document.
    pub document: Document,
    /// Its canonical bytes.
    pub bytes: Vec<u8>,
    /// Unresolvable references and other oddities, for the operator.
    pub warnings: Vec<String>,
}

/// Turn an inventory into the policy (no header): excluded groups removed, members resolved
/// from interfaces (and dynamic subnets), references checked, everything sorted.
pub fn build_policy(inv: &Inventory, opts: &BuildOptions, warnings: &mut Vec<String>) -> Policy {
    let excluded: BTreeSet<&str> = inv
        .groups
        .iter()
        .filter(|g| {
            opts.excluded_group_ids.contains(&g.id) || opts.excluded_group_names.contains(&g.name)
        })
        .map(|g| g.id.as_str())
        .collect();
    let dynamic = dynamic_subnets(inv, opts, warnings);
    let members = resolve_members(inv, &excluded, &dynamic, warnings);
    let known = Known {
        members: &members,
        excluded: &excluded,
        prefix_lists: inv
            .prefix_lists
            .iter()
            .map(|p| (p.id.as_str(), p.cidrs.as_slice()))
            .collect(),
    };
    let mut used_prefix_lists: BTreeSet<&str> = BTreeSet::new();
    let mut groups = Vec::new();
    for g in inv
        .groups
        .iter()
        .filter(|g| !excluded.contains(g.id.as_str()))
    {
        let mut rules: BTreeSet<DocRule> = BTreeSet::new();
        for (i, r) in g.ingress.iter().enumerate() {
            let at = format!("group {} ingress[{i}]", g.id);
            let Some(from) = sources(&r.from, &known, &at, &mut used_prefix_lists, warnings) else {
                warnings.push(format!("{at}: no source left; rule dropped"));
                continue;
            };
            rules.insert(doc_rule(r, from));
        }
        let egress = g.egress.as_ref().map(|egress| {
            let mut rules: BTreeSet<DocEgressRule> = BTreeSet::new();
            for (i, r) in egress.iter().enumerate() {
                let at = format!("group {} egress[{i}]", g.id);
                let Some(to) = sources(&r.from, &known, &at, &mut used_prefix_lists, warnings)
                else {
                    warnings.push(format!("{at}: no destination left; rule dropped"));
                    continue;
                };
                let d = doc_rule(r, to);
                rules.insert(DocEgressRule {
                    proto: d.proto,
                    ports: d.ports,
                    icmp_type: d.icmp_type,
                    icmp_code: d.icmp_code,
                    to: d.from,
                });
            }
            rules.into_iter().collect()
        });
        groups.push(DocGroup {
            id: g.id.clone(),
            name: g.name.clone(),
            network: g.network.clone(),
            members: members
                .get(g.id.as_str())
                .map(|m| m.iter().copied().collect())
                .unwrap_or_default(),
            ingress: rules.into_iter().collect(),
            egress,
        });
    }
    groups.sort_by(|a, b| a.id.cmp(&b.id));
    groups.dedup_by(|a, b| a.id == b.id);
    Policy {
        networks: networks(inv),
        prefix_lists: prefix_lists(&known.prefix_lists, &used_prefix_lists),
        groups,
    }
}

/// The document's form of an inventory rule with its resolved peers.
fn doc_rule(r: &crate::inventory::Rule, peers: DocSources) -> DocRule {
    let (icmp_type, icmp_code) = if r.proto.is_icmp() {
        (r.icmp_type, r.icmp_code)
    } else {
        (None, None)
    };
    DocRule {
        proto: r.proto,
        ports: r
            .proto
            .has_ports()
            .then(|| r.ports.unwrap_or(PortRange::ALL)),
        icmp_type,
        icmp_code: icmp_type.and(icmp_code),
        from: peers,
    }
}

/// What a rule's sources may name: the groups kept (with their members), the groups left out,
/// and the prefix lists of the inventory.
struct Known<'a> {
    members: &'a BTreeMap<&'a str, BTreeSet<Cidr>>,
    excluded: &'a BTreeSet<&'a str>,
    prefix_lists: BTreeMap<&'a str, &'a [Cidr]>,
}

/// The subnets named in `dynamic_subnets` (by id or name), by id.
fn dynamic_subnets<'a>(
    inv: &'a Inventory,
    opts: &BuildOptions,
    warnings: &mut Vec<String>,
) -> BTreeMap<&'a str, &'a [Cidr]> {
    let mut dynamic = BTreeMap::new();
    for want in &opts.dynamic_subnets {
        let found: Vec<_> = inv
            .subnets
            .iter()
            .filter(|s| s.id == *want || s.name.as_deref() == Some(want.as_str()))
            .collect();
        if found.is_empty() {
            warnings.push(format!(
                "dynamic_subnets: {want:?} matches no subnet in the inventory"
            ));
        }
        for s in found {
            dynamic.insert(s.id.as_str(), s.cidrs.as_slice());
        }
    }
    dynamic
}

/// Every kept group's members: its interfaces' addresses, and the whole subnet of an interface
/// in a dynamic subnet.
fn resolve_members<'a>(
    inv: &'a Inventory,
    excluded: &BTreeSet<&str>,
    dynamic: &BTreeMap<&str, &[Cidr]>,
    warnings: &mut Vec<String>,
) -> BTreeMap<&'a str, BTreeSet<Cidr>> {
    let mut members: BTreeMap<&str, BTreeSet<Cidr>> = inv
        .groups
        .iter()
        .filter(|g| !excluded.contains(g.id.as_str()))
        .map(|g| (g.id.as_str(), BTreeSet::new()))
        .collect();
    for h in &inv.hosts {
        for gid in &h.groups {
            match members.get_mut(gid.as_str()) {
                Some(set) => {
                    set.extend(h.addresses.iter().copied());
                    if let Some(cidrs) = h.subnet.as_deref().and_then(|s| dynamic.get(s)) {
                        set.extend(cidrs.iter().copied());
                    }
                }
                None if excluded.contains(gid.as_str()) => {}
                None => warnings.push(format!(
                    "interface {}: group {gid} is not in the inventory; ignored",
                    h.id
                )),
            }
        }
    }
    members
}

/// A rule's sources, sorted, with unknown and excluded references reported and left out;
/// `None` when no source is left.
fn sources<'a>(
    from: &'a crate::inventory::Sources,
    known: &Known,
    at: &str,
    used_prefix_lists: &mut BTreeSet<&'a str>,
    warnings: &mut Vec<String>,
) -> Option<DocSources> {
    let cidrs: BTreeSet<Cidr> = from.cidrs.iter().copied().collect();
    let mut groups = BTreeSet::new();
    for s in &from.groups {
        if known.members.contains_key(s.as_str()) {
            groups.insert(s.clone());
        } else if known.excluded.contains(s.as_str()) {
            warnings.push(format!(
                "{at}: source group {s} is excluded; it matches no addresses"
            ));
        } else {
            warnings.push(format!(
                "{at}: source group {s} is not in the inventory \
                 (another account, region or VPC not covered?); it matches no addresses"
            ));
        }
    }
    let mut pls = BTreeSet::new();
    for p in &from.prefix_lists {
        if known.prefix_lists.contains_key(p.as_str()) {
            pls.insert(p.clone());
            used_prefix_lists.insert(p.as_str());
        } else {
            warnings.push(format!(
                "{at}: prefix list {p} is not in the inventory; it matches no addresses"
            ));
        }
    }
    let out = DocSources {
        cidrs: cidrs.into_iter().collect(),
        groups: groups.into_iter().collect(),
        prefix_lists: pls.into_iter().collect(),
    };
    (!(out.cidrs.is_empty() && out.groups.is_empty() && out.prefix_lists.is_empty())).then_some(out)
}

/// The inventory's networks, each with its blocks sorted, by id.
fn networks(inv: &Inventory) -> Vec<DocNetwork> {
    let mut networks: Vec<DocNetwork> = inv
        .networks
        .iter()
        .map(|n| {
            let mut cidrs = n.cidrs.clone();
            cidrs.sort();
            cidrs.dedup();
            DocNetwork {
                id: n.id.clone(),
                cidrs,
            }
        })
        .collect();
    networks.sort();
    networks.dedup_by(|a, b| a.id == b.id);
    networks
}

/// The prefix lists some rule uses, each with its entries sorted.
fn prefix_lists(all: &BTreeMap<&str, &[Cidr]>, used: &BTreeSet<&str>) -> Vec<DocPrefixList> {
    let mut pls: Vec<DocPrefixList> = used
        .iter()
        .map(|id| {
            let mut cidrs = all.get(id).map(|c| c.to_vec()).unwrap_or_default();
            cidrs.sort();
            cidrs.dedup();
            DocPrefixList {
                id: (*id).to_string(),
                cidrs,
            }
        })
        .collect();
    pls.sort();
    pls
}

/// Build a complete document from an inventory.
pub fn build(inv: &Inventory, opts: &BuildOptions) -> Result<Built, DocumentError> {
    let mut warnings = Vec::new();
    let not_after = opts
        .issued_at
        .checked_add(opts.validity)
        // RFC 3339 ends at 9999-12-31T23:59:59Z (and formatting a later time panics).
        .filter(|t| *t <= SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799))
        .ok_or_else(|| {
            DocumentError::Malformed(format!(
                "not_after: issued_at + validity ({}s) is beyond any representable time",
                opts.validity.as_secs()
            ))
        })?;
    let policy = build_policy(inv, opts, &mut warnings);
    let document = Document {
        format: FORMAT.to_string(),
        environment: opts.environment.clone(),
        serial: opts.serial,
        issued_at: rfc3339(opts.issued_at),
        not_after: rfc3339(not_after),
        policy_digest: policy.digest(),
        policy,
    };
    let bytes = document.to_bytes();
    // The leader must never publish what a follower would refuse.
    let reparsed = Document::parse(&bytes)?;
    debug_assert_eq!(reparsed, document);
    Ok(Built {
        document,
        bytes,
        warnings,
    })
}
