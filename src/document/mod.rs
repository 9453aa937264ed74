//! The v1 rule document: what a leader signs and every follower enforces.
//!
//! The bytes are canonical: compact JSON, fields in a fixed order, every list sorted and
//! de-duplicated, one trailing newline. The same inventory gives the same bytes whatever order
//! the inventory listed things in, and [`Document::parse`] refuses anything that is not exactly
//! canonical, so one document has one spelling (and one `policy_digest`).
//! The JSON Schema is `schema/rules.v1.schema.json`.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::net::Cidr;
use crate::proto::{PortRange, Proto};

/// The `format` field of every v1 document.
pub const FORMAT: &str = "reyes/v1";

mod build;
pub use build::{build, build_policy, BuildOptions, Built};

/// Hard limits: a document over any of them is refused before it can cost memory or kernel time.
pub mod limits {
    /// Bytes of `rules.json`.
    pub const MAX_DOCUMENT_BYTES: u64 = 64 * 1024 * 1024;
    /// Bytes of `rules.json.sig`.
    pub const MAX_SIGNATURE_BYTES: u64 = 64 * 1024;
    /// Groups.
    pub const MAX_GROUPS: usize = 100_000;
    /// Members over all groups.
    pub const MAX_MEMBERS: usize = 2_000_000;
    /// Ingress rules over all groups.
    pub const MAX_RULES: usize = 1_000_000;
    /// Sources (groups + cidrs + prefix lists) of one rule.
    pub const MAX_SOURCES_PER_RULE: usize = 100_000;
    /// Networks and prefix lists (each).
    pub const MAX_NETWORKS: usize = 100_000;
    /// Length of an id or name.
    pub const MAX_ID_LEN: usize = 255;
}

/// A document that cannot be accepted; each message names the field.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// Over a hard limit.
    #[error("document over limits: {0}")]
    TooLarge(String),
    /// Not valid JSON for this schema.
    #[error("malformed document: {0}")]
    Malformed(String),
    /// Valid, but not the one canonical spelling (unsorted or duplicated lists or ids).
    #[error("document not canonical: {0}")]
    NotCanonical(String),
}

/// A network and its blocks (the VPC CIDRs; `local_cidrs: auto` uses them).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocNetwork {
    /// Id.
    pub id: String,
    /// Blocks, sorted.
    pub cidrs: Vec<Cidr>,
}

/// A prefix list and its entries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocPrefixList {
    /// Id.
    pub id: String,
    /// Entries, sorted.
    pub cidrs: Vec<Cidr>,
}

/// Where a rule admits traffic from.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocSources {
    /// Prefixes.
    pub cidrs: Vec<Cidr>,
    /// Members of these groups (ids of groups in this document).
    pub groups: Vec<String>,
    /// Entries of these prefix lists (ids in this document).
    pub prefix_lists: Vec<String>,
}

/// One ingress rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocRule {
    /// Protocol.
    pub proto: Proto,
    /// tcp/udp port range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
    /// icmp/icmpv6 type (absent = any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    /// icmp/icmpv6 code (absent = any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    /// Sources.
    pub from: DocSources,
}

/// One egress rule: like an ingress rule, with destinations instead of sources.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocEgressRule {
    /// Protocol.
    pub proto: Proto,
    /// tcp/udp port range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
    /// icmp/icmpv6 type (absent = any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    /// icmp/icmpv6 code (absent = any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    /// Destinations.
    pub to: DocSources,
}

impl DocEgressRule {
    /// The rule with its destinations in the place of an ingress rule's sources (the shape
    /// checks and the rule text are the same).
    pub fn as_rule(&self) -> DocRule {
        DocRule {
            proto: self.proto,
            ports: self.ports,
            icmp_type: self.icmp_type,
            icmp_code: self.icmp_code,
            from: self.to.clone(),
        }
    }
}

/// A security group with its resolved members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocGroup {
    /// Id, unique.
    pub id: String,
    /// Name.
    pub name: String,
    /// Network, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Member addresses and prefixes, sorted.
    pub members: Vec<Cidr>,
    /// Ingress rules, sorted.
    pub ingress: Vec<DocRule>,
    /// Egress rules, sorted. Absent: the inventory said nothing about egress (a leader
    /// before egress, or a static inventory without `egress:`), and egress is not restricted;
    /// present and empty: no egress is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<DocEgressRule>>,
}

/// The policy part: what `policy_digest` covers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Networks, by id.
    pub networks: Vec<DocNetwork>,
    /// Prefix lists, by id.
    pub prefix_lists: Vec<DocPrefixList>,
    /// Groups, by id.
    pub groups: Vec<DocGroup>,
}

impl Policy {
    /// `sha256:` and the hex digest of the canonical policy JSON.
    pub fn digest(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        let d = Sha256::digest(&bytes);
        format!("sha256:{}", hex(&d))
    }

    /// A group by id.
    pub fn group(&self, id: &str) -> Option<&DocGroup> {
        self.groups
            .binary_search_by(|g| g.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.groups[i])
    }

    /// A prefix list by id.
    pub fn prefix_list(&self, id: &str) -> Option<&DocPrefixList> {
        self.prefix_lists
            .binary_search_by(|p| p.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.prefix_lists[i])
    }
}

/// A rule document. On the wire the policy's fields sit beside the header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Always [`FORMAT`].
    pub format: String,
    /// The environment it is for.
    pub environment: String,
    /// Strictly increasing.
    pub serial: u64,
    /// RFC 3339 UTC.
    pub issued_at: String,
    /// RFC 3339 UTC; refused after this.
    pub not_after: String,
    /// Digest of `policy`.
    pub policy_digest: String,
    /// What is enforced.
    pub policy: Policy,
}

#[derive(Serialize)]
struct WireRef<'a> {
    format: &'a str,
    environment: &'a str,
    serial: u64,
    issued_at: &'a str,
    not_after: &'a str,
    policy_digest: &'a str,
    networks: &'a [DocNetwork],
    prefix_lists: &'a [DocPrefixList],
    groups: &'a [DocGroup],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    format: String,
    environment: String,
    serial: u64,
    issued_at: String,
    not_after: String,
    policy_digest: String,
    networks: Vec<DocNetwork>,
    prefix_lists: Vec<DocPrefixList>,
    groups: Vec<DocGroup>,
}

impl Serialize for Document {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireRef {
            format: &self.format,
            environment: &self.environment,
            serial: self.serial,
            issued_at: &self.issued_at,
            not_after: &self.not_after,
            policy_digest: &self.policy_digest,
            networks: &self.policy.networks,
            prefix_lists: &self.policy.prefix_lists,
            groups: &self.policy.groups,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        Ok(Document {
            format: w.format,
            environment: w.environment,
            serial: w.serial,
            issued_at: w.issued_at,
            not_after: w.not_after,
            policy_digest: w.policy_digest,
            policy: Policy {
                networks: w.networks,
                prefix_lists: w.prefix_lists,
                groups: w.groups,
            },
        })
    }
}

pub use crate::digest::hex;

pub use crate::timefmt::{parse_time, rfc3339, TimeError};

impl Document {
    /// The canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// `not_after` as a time (validated by [`Document::parse`]).
    pub fn not_after_time(&self) -> Result<SystemTime, TimeError> {
        parse_time(&self.not_after)
    }

    /// `issued_at` as a time.
    pub fn issued_at_time(&self) -> Result<SystemTime, TimeError> {
        parse_time(&self.issued_at)
    }

    /// Parse and fully validate document bytes: size and count limits, schema, canonical form,
    /// the policy digest, and every reference. Say nothing about the signature: verify the
    /// bytes first ([`crate::signing`]).
    pub fn parse(bytes: &[u8]) -> Result<Document, DocumentError> {
        if bytes.len() as u64 > limits::MAX_DOCUMENT_BYTES {
            return Err(DocumentError::TooLarge(format!(
                "{} bytes, over the limit of {} bytes",
                bytes.len(),
                limits::MAX_DOCUMENT_BYTES
            )));
        }
        let doc: Document = serde_json::from_slice(bytes).map_err(|e| {
            DocumentError::Malformed(format!("line {} column {}: {e}", e.line(), e.column()))
        })?;
        if doc.format != FORMAT {
            return Err(DocumentError::Malformed(format!(
                "format: {:?} is not {FORMAT:?} (a newer leader? upgrade this follower)",
                doc.format
            )));
        }
        doc.check_limits()?;
        let m = |s: String| DocumentError::Malformed(s);
        parse_time(&doc.issued_at).map_err(|e| m(format!("issued_at: {e}")))?;
        let na = parse_time(&doc.not_after).map_err(|e| m(format!("not_after: {e}")))?;
        if na < parse_time(&doc.issued_at).map_err(|e| m(format!("issued_at: {e}")))? {
            return Err(m("not_after: earlier than issued_at".into()));
        }
        if doc.environment.is_empty() {
            return Err(m("environment: empty".into()));
        }
        // Canonical first: the reference checks binary-search the id lists.
        doc.policy.check_canonical()?;
        doc.check_references()?;
        if doc.to_bytes() != bytes {
            return Err(m(
                "not in canonical form (lists unsorted or duplicated, fields reordered, or whitespace added): \
                 documents must be written by `reyes leader`"
                    .into(),
            ));
        }
        let digest = doc.policy.digest();
        if digest != doc.policy_digest {
            return Err(m(format!(
                "policy_digest: {} does not match the policy ({digest})",
                doc.policy_digest
            )));
        }
        Ok(doc)
    }

    fn check_limits(&self) -> Result<(), DocumentError> {
        let p = &self.policy;
        let over = |what: &str, n: usize, max: usize| {
            if n > max {
                Err(DocumentError::TooLarge(format!(
                    "{n} {what}, over the limit of {max}"
                )))
            } else {
                Ok(())
            }
        };
        over("groups", p.groups.len(), limits::MAX_GROUPS)?;
        over("networks", p.networks.len(), limits::MAX_NETWORKS)?;
        over("prefix lists", p.prefix_lists.len(), limits::MAX_NETWORKS)?;
        over(
            "members",
            p.groups.iter().map(|g| g.members.len()).sum(),
            limits::MAX_MEMBERS,
        )?;
        over(
            "ingress and egress rules",
            p.groups
                .iter()
                .map(|g| g.ingress.len() + g.egress.as_ref().map_or(0, Vec::len))
                .sum(),
            limits::MAX_RULES,
        )?;
        for g in &p.groups {
            for (i, r) in g.ingress.iter().enumerate() {
                let n = r.from.cidrs.len() + r.from.groups.len() + r.from.prefix_lists.len();
                if n > limits::MAX_SOURCES_PER_RULE {
                    return Err(DocumentError::TooLarge(format!(
                        "groups[{}].ingress[{i}]: {n} sources, over the limit of {}",
                        g.id,
                        limits::MAX_SOURCES_PER_RULE
                    )));
                }
            }
            for (i, r) in g.egress.iter().flatten().enumerate() {
                let n = r.to.cidrs.len() + r.to.groups.len() + r.to.prefix_lists.len();
                if n > limits::MAX_SOURCES_PER_RULE {
                    return Err(DocumentError::TooLarge(format!(
                        "groups[{}].egress[{i}]: {n} destinations, over the limit of {}",
                        g.id,
                        limits::MAX_SOURCES_PER_RULE
                    )));
                }
            }
        }
        Ok(())
    }

    fn check_references(&self) -> Result<(), DocumentError> {
        let p = &self.policy;
        let m = |s: String| Err(DocumentError::Malformed(s));
        for (what, id) in p
            .networks
            .iter()
            .map(|n| ("networks", &n.id))
            .chain(p.prefix_lists.iter().map(|x| ("prefix_lists", &x.id)))
            .chain(p.groups.iter().map(|g| ("groups", &g.id)))
        {
            check_id(what, id)?;
        }
        for g in &p.groups {
            if g.name.len() > limits::MAX_ID_LEN || g.name.chars().any(char::is_control) {
                return m(format!(
                    "groups[{}].name: too long or has control characters",
                    g.id
                ));
            }
            let ingress = g
                .ingress
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("groups[{}].ingress[{i}]", g.id), "from", r.clone()));
            let egress = g
                .egress
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, r)| (format!("groups[{}].egress[{i}]", g.id), "to", r.as_rule()));
            for (at, peers, r) in ingress.chain(egress) {
                check_rule_shape(&r, peers)
                    .map_err(|e| DocumentError::Malformed(format!("{at}: {e}")))?;
                for src in &r.from.groups {
                    if p.group(src).is_none() {
                        return m(format!(
                            "{at}.{peers}.groups: {src:?} is not a group in this document"
                        ));
                    }
                }
                for pl in &r.from.prefix_lists {
                    if p.prefix_list(pl).is_none() {
                        return m(format!(
                            "{at}.{peers}.prefix_lists: {pl:?} is not a prefix list in this document"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn check_id(what: &str, id: &str) -> Result<(), DocumentError> {
    if id.is_empty() || id.len() > limits::MAX_ID_LEN {
        return Err(DocumentError::Malformed(format!(
            "{what}: id {id:?} must be 1 to {} characters",
            limits::MAX_ID_LEN
        )));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._:/@+=-".contains(c))
    {
        return Err(DocumentError::Malformed(format!(
            "{what}: id {id:?} may only hold letters, digits and ._:/@+=-"
        )));
    }
    Ok(())
}

/// What is wrong with the shape of one rule.
#[derive(Debug, thiserror::Error)]
enum RuleShapeError {
    #[error("ports: required for tcp and udp and only for them (proto {0})")]
    Ports(Proto),
    #[error("icmp_type/icmp_code given for proto {0}")]
    IcmpFields(Proto),
    #[error("icmp_code without icmp_type")]
    CodeWithoutType,
    #[error("{0}: no addresses, groups or prefix lists")]
    NoPeers(&'static str),
}

/// `peers`: `from` (ingress) or `to` (egress), for the message.
fn check_rule_shape(r: &DocRule, peers: &'static str) -> Result<(), RuleShapeError> {
    if r.proto.has_ports() != r.ports.is_some() {
        return Err(RuleShapeError::Ports(r.proto));
    }
    if !r.proto.is_icmp() && (r.icmp_type.is_some() || r.icmp_code.is_some()) {
        return Err(RuleShapeError::IcmpFields(r.proto));
    }
    if r.icmp_code.is_some() && r.icmp_type.is_none() {
        return Err(RuleShapeError::CodeWithoutType);
    }
    if r.from.cidrs.is_empty() && r.from.groups.is_empty() && r.from.prefix_lists.is_empty() {
        return Err(RuleShapeError::NoPeers(peers));
    }
    Ok(())
}

/// `keys` strictly ascending: sorted, and none twice.
fn strictly_sorted<K: Ord + std::fmt::Debug>(
    at: &str,
    keys: impl IntoIterator<Item = K>,
) -> Result<(), DocumentError> {
    let mut prev: Option<K> = None;
    for (i, k) in keys.into_iter().enumerate() {
        if let Some(p) = &prev {
            match p.cmp(&k) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => {
                    return Err(DocumentError::NotCanonical(format!(
                        "{at}: {k:?} appears twice (at {} and {i})",
                        i - 1
                    )))
                }
                std::cmp::Ordering::Greater => {
                    return Err(DocumentError::NotCanonical(format!(
                        "{at}: not sorted ({p:?} before {k:?} at {i})"
                    )))
                }
            }
        }
        prev = Some(k);
    }
    Ok(())
}

impl Policy {
    /// Every list sorted and free of duplicates, every id unique: the lookups binary-search,
    /// and the backends create one set per id.
    pub fn check_canonical(&self) -> Result<(), DocumentError> {
        strictly_sorted("networks", self.networks.iter().map(|n| &n.id))?;
        strictly_sorted("prefix_lists", self.prefix_lists.iter().map(|p| &p.id))?;
        strictly_sorted("groups", self.groups.iter().map(|g| &g.id))?;
        for n in &self.networks {
            strictly_sorted(&format!("networks[{}].cidrs", n.id), &n.cidrs)?;
        }
        for p in &self.prefix_lists {
            strictly_sorted(&format!("prefix_lists[{}].cidrs", p.id), &p.cidrs)?;
        }
        for g in &self.groups {
            strictly_sorted(&format!("groups[{}].members", g.id), &g.members)?;
            strictly_sorted(&format!("groups[{}].ingress", g.id), &g.ingress)?;
            for (i, r) in g.ingress.iter().enumerate() {
                let at = format!("groups[{}].ingress[{i}].from", g.id);
                strictly_sorted(&format!("{at}.cidrs"), &r.from.cidrs)?;
                strictly_sorted(&format!("{at}.groups"), &r.from.groups)?;
                strictly_sorted(&format!("{at}.prefix_lists"), &r.from.prefix_lists)?;
            }
            let Some(egress) = &g.egress else { continue };
            strictly_sorted(&format!("groups[{}].egress", g.id), egress)?;
            for (i, r) in egress.iter().enumerate() {
                let at = format!("groups[{}].egress[{i}].to", g.id);
                strictly_sorted(&format!("{at}.cidrs"), &r.to.cidrs)?;
                strictly_sorted(&format!("{at}.groups"), &r.to.groups)?;
                strictly_sorted(&format!("{at}.prefix_lists"), &r.to.prefix_lists)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::static_file;
    use std::time::Duration;

    pub(crate) const EXAMPLE: &str = r#"
networks:
  - {id: vpc-a, cidrs: [10.1.0.0/16, "fd00:1::/56"]}
subnets:
  - {id: subnet-dyn, name: workers, network: vpc-a, cidrs: [10.1.8.0/24]}
groups:
  - id: sg-web
    name: web
    ingress:
      - {proto: tcp, ports: 443, from: {groups: [sg-lb, sg-gone], cidrs: [10.2.0.0/16]}}
      - {proto: icmp, icmp_type: 8, from: {cidrs: [10.0.0.0/8]}}
  - id: sg-lb
    name: lb
    ingress: []
  - id: sg-gone
    name: legacy
hosts:
  - {id: i-1, addresses: [10.1.0.10, "fd00:1::10"], groups: [sg-web]}
  - {id: i-2, addresses: [10.1.0.20], groups: [sg-lb]}
  - {id: i-3, addresses: [10.1.8.7], groups: [sg-lb], subnet: subnet-dyn}
"#;

    fn opts() -> BuildOptions {
        BuildOptions {
            environment: "prod".into(),
            serial: 7,
            issued_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            validity: Duration::from_secs(3600),
            excluded_group_names: vec!["legacy".into()],
            excluded_group_ids: vec![],
            dynamic_subnets: vec!["workers".into()],
        }
    }

    #[test]
    fn build_resolves_members_and_exclusions() {
        let inv = static_file::parse(EXAMPLE, "x").unwrap();
        let b = build(&inv, &opts()).unwrap();
        let p = &b.document.policy;
        assert!(p.group("sg-gone").is_none());
        let lb = p.group("sg-lb").unwrap();
        let m: Vec<String> = lb.members.iter().map(|c| c.to_string()).collect();
        assert_eq!(m, ["10.1.0.20", "10.1.8.0/24", "10.1.8.7"]);
        let web = p.group("sg-web").unwrap();
        assert_eq!(web.ingress.len(), 2);
        let tcp = web.ingress.iter().find(|r| r.proto == Proto::Tcp).unwrap();
        assert_eq!(tcp.from.groups, ["sg-lb"]);
        assert!(b
            .warnings
            .iter()
            .any(|w| w.contains("sg-gone") && w.contains("excluded")));
        assert_eq!(b.document.not_after, "2027-01-15T09:00:00Z");
    }

    #[test]
    fn parse_round_trips_and_refuses_edits() {
        let inv = static_file::parse(EXAMPLE, "x").unwrap();
        let b = build(&inv, &opts()).unwrap();
        assert_eq!(Document::parse(&b.bytes).unwrap(), b.document);
        // Whitespace.
        let mut spaced = b.bytes.clone();
        spaced.insert(1, b' ');
        assert!(matches!(
            Document::parse(&spaced),
            Err(DocumentError::Malformed(_))
        ));
        // A member added without fixing the digest.
        let text = String::from_utf8(b.bytes.clone())
            .unwrap()
            .replace("\"10.1.0.20\"", "\"10.1.0.20\",\"10.1.0.21\"");
        let e = Document::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("policy_digest"), "{e}");
        // An unknown field.
        let text = String::from_utf8(b.bytes.clone()).unwrap().replacen(
            "{\"format\"",
            "{\"extra\":1,\"format\"",
            1,
        );
        assert!(Document::parse(text.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("extra"));
    }

    #[test]
    fn oversized_refused_before_parsing() {
        let big = vec![b' '; (limits::MAX_DOCUMENT_BYTES + 1) as usize];
        assert!(matches!(
            Document::parse(&big),
            Err(DocumentError::TooLarge(_))
        ));
    }
}
