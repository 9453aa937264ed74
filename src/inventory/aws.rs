//! AWS shapes (as `aws ec2 describe-*` prints them) and their one conversion into the
//! [`Inventory`]. Both the AWS CLI JSON importer and the EC2 API source go through here, so
//! AWS semantics (`-1`, port ranges, ICMP type/code in FromPort/ToPort, group pairs) live in one
//! place.

use serde::Deserialize;

use super::{Group, Host, Inventory, Network, PrefixList, Rule, Sources, Subnet};
use crate::net::Cidr;
use crate::proto::{PortError, PortRange, Proto, ProtoError};

/// `describe-security-groups` -> `SecurityGroups[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SecurityGroup {
    /// `sg-...`.
    pub group_id: String,
    /// Name.
    #[serde(default)]
    pub group_name: String,
    /// VPC.
    #[serde(default)]
    pub vpc_id: Option<String>,
    /// Ingress permissions.
    #[serde(default)]
    pub ip_permissions: Vec<IpPermission>,
    /// Egress permissions (absent: not described, egress unrestricted).
    #[serde(default)]
    pub ip_permissions_egress: Option<Vec<IpPermission>>,
}

/// One permission: protocol, ports and every kind of source.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpPermission {
    /// `-1`, `tcp`, `udp`, `icmp`, `icmpv6`, or a number.
    pub ip_protocol: String,
    /// First port, or ICMP type.
    #[serde(default)]
    pub from_port: Option<i64>,
    /// Last port, or ICMP code.
    #[serde(default)]
    pub to_port: Option<i64>,
    /// IPv4 sources.
    #[serde(default)]
    pub ip_ranges: Vec<IpRange>,
    /// IPv6 sources.
    #[serde(default)]
    pub ipv6_ranges: Vec<Ipv6Range>,
    /// Prefix list sources.
    #[serde(default)]
    pub prefix_list_ids: Vec<PrefixListId>,
    /// Group sources.
    #[serde(default)]
    pub user_id_group_pairs: Vec<UserIdGroupPair>,
}

/// `IpRanges[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpRange {
    /// The prefix.
    pub cidr_ip: String,
}

/// `Ipv6Ranges[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ipv6Range {
    /// The prefix.
    pub cidr_ipv6: String,
}

/// `PrefixListIds[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PrefixListId {
    /// `pl-...`.
    pub prefix_list_id: String,
}

/// `UserIdGroupPairs[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UserIdGroupPair {
    /// The referenced group (absent for EC2-Classic name-only pairs, which are ignored).
    #[serde(default)]
    pub group_id: Option<String>,
    /// Owning account.
    #[serde(default)]
    pub user_id: Option<String>,
    /// VPC of the referenced group (peering).
    #[serde(default)]
    pub vpc_id: Option<String>,
}

/// `describe-network-interfaces` -> `NetworkInterfaces[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkInterface {
    /// `eni-...`.
    pub network_interface_id: String,
    /// Subnet.
    #[serde(default)]
    pub subnet_id: Option<String>,
    /// VPC.
    #[serde(default)]
    pub vpc_id: Option<String>,
    /// Primary private IPv4.
    #[serde(default)]
    pub private_ip_address: Option<String>,
    /// Every private IPv4 (primary and secondaries).
    #[serde(default)]
    pub private_ip_addresses: Vec<PrivateIp>,
    /// IPv6 addresses.
    #[serde(default)]
    pub ipv6_addresses: Vec<Ipv6Address>,
    /// Delegated IPv4 prefixes.
    #[serde(default)]
    pub ipv4_prefixes: Vec<Ipv4Prefix>,
    /// Delegated IPv6 prefixes.
    #[serde(default)]
    pub ipv6_prefixes: Vec<Ipv6Prefix>,
    /// Groups of this interface.
    #[serde(default)]
    pub groups: Vec<GroupIdentifier>,
}

/// `PrivateIpAddresses[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PrivateIp {
    /// The address.
    pub private_ip_address: String,
}

/// `Ipv6Addresses[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ipv6Address {
    /// The address.
    pub ipv6_address: String,
}

/// `Ipv4Prefixes[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ipv4Prefix {
    /// The prefix.
    pub ipv4_prefix: String,
}

/// `Ipv6Prefixes[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ipv6Prefix {
    /// The prefix.
    pub ipv6_prefix: String,
}

/// `Groups[]` of an interface.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GroupIdentifier {
    /// `sg-...`.
    pub group_id: String,
}

/// `describe-vpcs` -> `Vpcs[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Vpc {
    /// `vpc-...`.
    pub vpc_id: String,
    /// Primary IPv4 block.
    #[serde(default)]
    pub cidr_block: Option<String>,
    /// Every IPv4 block.
    #[serde(default)]
    pub cidr_block_association_set: Vec<CidrAssociation>,
    /// IPv6 blocks.
    #[serde(default)]
    pub ipv6_cidr_block_association_set: Vec<Ipv6CidrAssociation>,
}

/// `CidrBlockAssociationSet[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CidrAssociation {
    /// The block.
    pub cidr_block: String,
    /// Its state; only `associated` blocks count.
    #[serde(default)]
    pub cidr_block_state: Option<BlockState>,
}

/// `Ipv6CidrBlockAssociationSet[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ipv6CidrAssociation {
    /// The block.
    pub ipv6_cidr_block: String,
    /// Its state; only `associated` blocks count.
    #[serde(default)]
    pub ipv6_cidr_block_state: Option<BlockState>,
}

/// A CIDR association state.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BlockState {
    /// `associated`, `disassociated`, ...
    #[serde(default)]
    pub state: String,
}

/// `describe-subnets` -> `Subnets[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AwsSubnet {
    /// `subnet-...`.
    pub subnet_id: String,
    /// VPC.
    #[serde(default)]
    pub vpc_id: Option<String>,
    /// IPv4 block.
    #[serde(default)]
    pub cidr_block: Option<String>,
    /// IPv6 blocks.
    #[serde(default)]
    pub ipv6_cidr_block_association_set: Vec<Ipv6CidrAssociation>,
    /// Tags (the `Name` tag names the subnet).
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// A tag.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    /// Key.
    pub key: String,
    /// Value.
    #[serde(default)]
    pub value: String,
}

/// `describe-managed-prefix-lists` -> `PrefixLists[]` (no entries).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ManagedPrefixList {
    /// `pl-...`.
    pub prefix_list_id: String,
}

/// `get-managed-prefix-list-entries` -> `Entries[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PrefixListEntry {
    /// The prefix.
    pub cidr: String,
}

/// Every AWS shape the inventory needs, gathered from any number of calls or files.
#[derive(Debug, Clone, Default)]
pub struct AwsInventory {
    /// Security groups.
    pub security_groups: Vec<SecurityGroup>,
    /// Network interfaces.
    pub interfaces: Vec<NetworkInterface>,
    /// VPCs.
    pub vpcs: Vec<Vpc>,
    /// Subnets.
    pub subnets: Vec<AwsSubnet>,
    /// Prefix lists and their entries.
    pub prefix_lists: Vec<(String, Vec<PrefixListEntry>)>,
}

/// An AWS shape that cannot be converted, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {problem}")]
pub struct ConvertError {
    /// Which object (and field).
    pub place: String,
    /// What is wrong with it.
    pub problem: Problem,
}

/// What is wrong with an AWS field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Not an address or prefix.
    #[error("{0:?} is not an IP address or prefix")]
    Address(String),
    /// Not a protocol.
    #[error("IpProtocol: {0}")]
    Protocol(ProtoError),
    /// A port outside 0-65535.
    #[error("{field} {value} is out of range")]
    Port {
        /// `FromPort` or `ToPort`.
        field: &'static str,
        /// The value.
        value: i64,
    },
    /// A backwards port range.
    #[error("{0}")]
    Ports(PortError),
    /// An ICMP type or code outside 0-255.
    #[error("ICMP {field} {value} is out of range 0-255")]
    Icmp {
        /// `type` or `code`.
        field: &'static str,
        /// The value.
        value: i64,
    },
}

fn problem(place: &str, problem: Problem) -> ConvertError {
    ConvertError {
        place: place.to_string(),
        problem,
    }
}

fn cidr(s: &str, what: &str) -> Result<Cidr, ConvertError> {
    // AWS prints canonical prefixes; tolerate host bits rather than refuse a whole estate.
    let s = s.trim();
    if let Ok(a) = s.parse::<std::net::IpAddr>() {
        return Ok(Cidr::host(a));
    }
    s.parse::<ipnet::IpNet>()
        .map(Cidr::new)
        .map_err(|_| problem(what, Problem::Address(s.to_string())))
}

/// Convert one permission (AWS semantics) into a rule.
pub fn convert_permission(p: &IpPermission, ctx: &str) -> Result<Rule, ConvertError> {
    let proto: Proto = p
        .ip_protocol
        .parse()
        .map_err(|e| problem(ctx, Problem::Protocol(e)))?;
    let port = |v: Option<i64>, field: &'static str| -> Result<Option<i64>, ConvertError> {
        match v {
            None | Some(-1) => Ok(None),
            Some(n) if (0..=65535).contains(&n) => Ok(Some(n)),
            Some(value) => Err(problem(ctx, Problem::Port { field, value })),
        }
    };
    let (from, to) = (port(p.from_port, "FromPort")?, port(p.to_port, "ToPort")?);
    let (mut ports, mut icmp_type, mut icmp_code) = (None, None, None);
    match proto {
        Proto::Tcp | Proto::Udp => {
            ports = Some(match (from, to) {
                (Some(a), Some(b)) => PortRange::new(a as u16, b as u16)
                    .map_err(|e| problem(ctx, Problem::Ports(e)))?,
                (Some(a), None) => PortRange::new(a as u16, a as u16)
                    .map_err(|e| problem(ctx, Problem::Ports(e)))?,
                _ => PortRange::ALL,
            })
        }
        Proto::Icmp | Proto::Icmpv6 => {
            let byte = |value: i64, field: &'static str| {
                u8::try_from(value).map_err(|_| problem(ctx, Problem::Icmp { field, value }))
            };
            icmp_type = from.map(|t| byte(t, "type")).transpose()?;
            icmp_code = if icmp_type.is_some() {
                to.map(|c| byte(c, "code")).transpose()?
            } else {
                None
            };
        }
        Proto::All | Proto::Number(_) => {}
    }
    let mut sources = Sources::default();
    for r in &p.ip_ranges {
        sources.cidrs.push(cidr(&r.cidr_ip, ctx)?);
    }
    for r in &p.ipv6_ranges {
        sources.cidrs.push(cidr(&r.cidr_ipv6, ctx)?);
    }
    for pl in &p.prefix_list_ids {
        sources.prefix_lists.push(pl.prefix_list_id.clone());
    }
    for pair in &p.user_id_group_pairs {
        if let Some(g) = &pair.group_id {
            sources.groups.push(g.clone());
        }
    }
    Ok(Rule {
        proto,
        ports,
        icmp_type,
        icmp_code,
        from: sources,
    })
}

/// One network interface as a host: its addresses and prefixes, deduplicated.
fn host(eni: &NetworkInterface) -> Result<Host, ConvertError> {
    let ctx = format!("network interface {}", eni.network_interface_id);
    let mut addresses = Vec::new();
    if let Some(a) = &eni.private_ip_address {
        addresses.push(cidr(a, &ctx)?);
    }
    for a in &eni.private_ip_addresses {
        addresses.push(cidr(&a.private_ip_address, &ctx)?);
    }
    for a in &eni.ipv6_addresses {
        addresses.push(cidr(&a.ipv6_address, &ctx)?);
    }
    for p in &eni.ipv4_prefixes {
        addresses.push(cidr(&p.ipv4_prefix, &ctx)?);
    }
    for p in &eni.ipv6_prefixes {
        addresses.push(cidr(&p.ipv6_prefix, &ctx)?);
    }
    addresses.sort();
    addresses.dedup();
    Ok(Host {
        id: eni.network_interface_id.clone(),
        addresses,
        groups: eni.groups.iter().map(|g| g.group_id.clone()).collect(),
        subnet: eni.subnet_id.clone(),
    })
}

impl AwsInventory {
    /// The one conversion of AWS shapes into an [`Inventory`].
    pub fn into_inventory(self) -> Result<Inventory, ConvertError> {
        let mut inv = Inventory::default();
        for vpc in &self.vpcs {
            let ctx = format!("VPC {}", vpc.vpc_id);
            let mut cidrs = Vec::new();
            if let Some(c) = &vpc.cidr_block {
                cidrs.push(cidr(c, &ctx)?);
            }
            for a in &vpc.cidr_block_association_set {
                if a.cidr_block_state
                    .as_ref()
                    .is_none_or(|s| s.state == "associated")
                {
                    cidrs.push(cidr(&a.cidr_block, &ctx)?);
                }
            }
            for a in &vpc.ipv6_cidr_block_association_set {
                if a.ipv6_cidr_block_state
                    .as_ref()
                    .is_none_or(|s| s.state == "associated")
                {
                    cidrs.push(cidr(&a.ipv6_cidr_block, &ctx)?);
                }
            }
            cidrs.sort();
            cidrs.dedup();
            inv.networks.push(Network {
                id: vpc.vpc_id.clone(),
                cidrs,
            });
        }
        for s in &self.subnets {
            let ctx = format!("subnet {}", s.subnet_id);
            let mut cidrs = Vec::new();
            if let Some(c) = &s.cidr_block {
                cidrs.push(cidr(c, &ctx)?);
            }
            for a in &s.ipv6_cidr_block_association_set {
                if a.ipv6_cidr_block_state
                    .as_ref()
                    .is_none_or(|st| st.state == "associated")
                {
                    cidrs.push(cidr(&a.ipv6_cidr_block, &ctx)?);
                }
            }
            let name = s
                .tags
                .iter()
                .find(|t| t.key == "Name")
                .map(|t| t.value.clone());
            inv.subnets.push(Subnet {
                id: s.subnet_id.clone(),
                name,
                network: s.vpc_id.clone(),
                cidrs,
            });
        }
        for sg in &self.security_groups {
            let mut ingress = Vec::new();
            for (i, p) in sg.ip_permissions.iter().enumerate() {
                ingress.push(convert_permission(
                    p,
                    &format!("security group {} IpPermissions[{i}]", sg.group_id),
                )?);
            }
            let egress = match &sg.ip_permissions_egress {
                None => None,
                Some(perms) => Some(
                    perms
                        .iter()
                        .enumerate()
                        .map(|(i, p)| {
                            convert_permission(
                                p,
                                &format!("security group {} IpPermissionsEgress[{i}]", sg.group_id),
                            )
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            inv.groups.push(Group {
                id: sg.group_id.clone(),
                name: if sg.group_name.is_empty() {
                    sg.group_id.clone()
                } else {
                    sg.group_name.clone()
                },
                network: sg.vpc_id.clone(),
                ingress,
                egress,
            });
        }
        for eni in &self.interfaces {
            inv.hosts.push(host(eni)?);
        }
        for (id, entries) in &self.prefix_lists {
            let ctx = format!("prefix list {id}");
            let cidrs = entries
                .iter()
                .map(|e| cidr(&e.cidr, &ctx))
                .collect::<Result<Vec<_>, _>>()?;
            inv.prefix_lists.push(PrefixList {
                id: id.clone(),
                cidrs,
            });
        }
        Ok(inv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(json: &str) -> Rule {
        let p: IpPermission = serde_json::from_str(json).unwrap();
        convert_permission(&p, "t").unwrap()
    }

    #[test]
    fn aws_protocol_forms() {
        let r = perm(r#"{"IpProtocol":"-1","IpRanges":[{"CidrIp":"10.0.0.0/8"}]}"#);
        assert_eq!((r.proto, r.ports), (Proto::All, None));
        let r = perm(r#"{"IpProtocol":"tcp","FromPort":8000,"ToPort":8100,"IpRanges":[]}"#);
        assert_eq!(
            r.ports,
            Some(PortRange {
                first: 8000,
                last: 8100
            })
        );
        let r = perm(r#"{"IpProtocol":"icmp","FromPort":3,"ToPort":4}"#);
        assert_eq!((r.icmp_type, r.icmp_code), (Some(3), Some(4)));
        let r = perm(r#"{"IpProtocol":"icmp","FromPort":-1,"ToPort":-1}"#);
        assert_eq!((r.icmp_type, r.icmp_code), (None, None));
        let r = perm(r#"{"IpProtocol":"icmp","FromPort":8,"ToPort":-1}"#);
        assert_eq!((r.icmp_type, r.icmp_code), (Some(8), None));
        let r = perm(r#"{"IpProtocol":"50","FromPort":-1,"ToPort":-1}"#);
        assert_eq!(r.proto, Proto::Number(50));
        let r = perm(r#"{"IpProtocol":"58","FromPort":128,"ToPort":-1}"#);
        assert_eq!((r.proto, r.icmp_type), (Proto::Icmpv6, Some(128)));
        let r = perm(r#"{"IpProtocol":"udp","FromPort":-1,"ToPort":-1}"#);
        assert_eq!(r.ports, Some(PortRange::ALL));
    }

    #[test]
    fn bad_permissions_name_the_place() {
        let p: IpPermission =
            serde_json::from_str(r#"{"IpProtocol":"tcp","FromPort":90000,"ToPort":1}"#).unwrap();
        let e = convert_permission(&p, "security group sg-1 IpPermissions[2]").unwrap_err();
        let e = e.to_string();
        assert!(e.contains("sg-1") && e.contains("90000"), "{e}");
    }
}
