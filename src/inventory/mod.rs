//! The inventory: networks, subnets, security groups with their ingress rules, network
//! interfaces with their addresses and groups, and prefix lists.
//!
//! Every source (static YAML, AWS CLI JSON, the EC2 API) produces the same [`Inventory`];
//! [`crate::document::build`] turns it into a rule document.

pub mod aws;
pub mod aws_json;
#[cfg(feature = "aws")]
pub mod ec2;
pub mod static_file;

use std::path::Path;

use crate::config::{InventoryConfig, InventorySource};
use crate::net::Cidr;
use crate::proto::{PortRange, Proto};

/// An inventory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// A file could not be read.
    #[error("cannot read inventory {path}: {source}")]
    Read {
        /// Which file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is malformed; the message names the place.
    #[error("{0}")]
    Invalid(String),
    /// A cloud API call failed (after the SDK's retries).
    #[error("{0}")]
    Api(String),
    /// The source exists in the config but not in this build yet.
    #[error("{0}")]
    Unsupported(String),
}

/// A network (VPC) and its address blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// Id, e.g. `vpc-0abc`.
    pub id: String,
    /// IPv4 and IPv6 blocks.
    pub cidrs: Vec<Cidr>,
}

/// A subnet, for `dynamic_subnets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    /// Id, e.g. `subnet-0abc`.
    pub id: String,
    /// Name (the `Name` tag), if any.
    pub name: Option<String>,
    /// The network it belongs to.
    pub network: Option<String>,
    /// IPv4 and IPv6 blocks.
    pub cidrs: Vec<Cidr>,
}

/// Where a rule lets traffic come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// Members of these groups (by id).
    pub groups: Vec<String>,
    /// These prefixes.
    pub cidrs: Vec<Cidr>,
    /// Entries of these managed prefix lists (by id).
    pub prefix_lists: Vec<String>,
}

/// One rule of a group: ingress (`from` holds the sources) or egress (`from` holds the
/// destinations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Protocol.
    pub proto: Proto,
    /// tcp/udp: the port range (required).
    pub ports: Option<PortRange>,
    /// icmp/icmpv6: the type (None = any).
    pub icmp_type: Option<u8>,
    /// icmp/icmpv6: the code (None = any).
    pub icmp_code: Option<u8>,
    /// Allowed sources.
    pub from: Sources,
}

/// A security group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Id, unique, e.g. `sg-0abc`.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Network it belongs to.
    pub network: Option<String>,
    /// Ingress rules (allow-only).
    pub ingress: Vec<Rule>,
    /// Egress rules (allow-only; a rule's `from` holds its destinations). `None`: the source
    /// says nothing about egress (egress is then unrestricted).
    pub egress: Option<Vec<Rule>>,
}

/// A network interface (or a static host): addresses and the groups that hold them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Id, e.g. `eni-0abc` or `i-0abc`.
    pub id: String,
    /// Private IPv4 (primary and secondaries), IPv6 addresses, delegated prefixes.
    pub addresses: Vec<Cidr>,
    /// Group ids.
    pub groups: Vec<String>,
    /// Subnet id, for `dynamic_subnets`.
    pub subnet: Option<String>,
}

/// A managed prefix list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixList {
    /// Id, e.g. `pl-0abc`.
    pub id: String,
    /// Its entries.
    pub cidrs: Vec<Cidr>,
}

/// Everything the leader read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Networks (VPCs).
    pub networks: Vec<Network>,
    /// Subnets.
    pub subnets: Vec<Subnet>,
    /// Security groups.
    pub groups: Vec<Group>,
    /// Interfaces / hosts.
    pub hosts: Vec<Host>,
    /// Managed prefix lists.
    pub prefix_lists: Vec<PrefixList>,
}

/// Read the configured inventory source.
pub fn load(cfg: &InventoryConfig) -> Result<Inventory, InventoryError> {
    match &cfg.source {
        InventorySource::File(p) => static_file::load(p),
        InventorySource::AwsJson(files) => aws_json::load(files),
        #[cfg(feature = "aws")]
        InventorySource::Ec2(e) => ec2::load(
            e,
            &ec2::ReadOptions {
                subnets: !cfg.dynamic_subnets.is_empty(),
            },
        ),
        #[cfg(not(feature = "aws"))]
        InventorySource::Ec2(_) => Err(InventoryError::Unsupported(
            "inventory.ec2: this reyes was built without the `aws` feature; \
             use `file` or `aws_json`, or a build with EC2 support"
                .into(),
        )),
    }
}

pub(crate) fn read(path: &Path) -> Result<String, InventoryError> {
    std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
        path: path.display().to_string(),
        source,
    })
}
