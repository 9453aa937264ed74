//! The live EC2 API as an inventory source (aws-sdk-ec2).
//!
//! For every configured region (concurrently), with the VPC filter when `vpcs` is set:
//! DescribeVpcs, DescribeSecurityGroups, DescribeNetworkInterfaces, DescribeSubnets (only when
//! `dynamic_subnets` is set), DescribeManagedPrefixLists, and GetManagedPrefixListEntries for
//! every prefix list a security group refers to. Every call goes through the SDK paginators;
//! throttling (`RequestLimitExceeded`) and transient errors are retried with exponential
//! backoff by the SDK's retry strategy, with more attempts than its default.
//!
//! The SDK types are copied into the AWS shapes of [`super::aws`] and converted by
//! [`AwsInventory::into_inventory`], the same conversion the AWS CLI JSON importer uses.
//!
//! The SDK is async; reyes is not. [`load`] runs the calls on a current-thread tokio runtime of
//! its own and returns when every region has been read.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_ec2::config::{ConfigBag, Intercept, Region, RuntimeComponents};
use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::types::{self as t, Filter};
use aws_sdk_ec2::Client;

use super::aws::{
    AwsInventory, AwsSubnet, BlockState, CidrAssociation, GroupIdentifier, IpPermission, IpRange,
    Ipv4Prefix, Ipv6Address, Ipv6CidrAssociation, Ipv6Prefix, Ipv6Range, NetworkInterface,
    PrefixListEntry, PrefixListId, PrivateIp, SecurityGroup, Tag, UserIdGroupPair, Vpc,
};
use super::{Inventory, InventoryError};
use crate::config::Ec2Config;

/// Attempts per call (the SDK default is 3): describe calls of a large estate are throttled
/// first, and a leader run that gives up costs a whole interval.
pub const MAX_ATTEMPTS: u32 = 10;

/// What to read besides the always-needed shapes.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Also DescribeSubnets (needed for `dynamic_subnets` only).
    pub subnets: bool,
}

/// Counts HTTP requests (attempts, retries included) made by the clients it is attached to.
#[derive(Debug, Clone, Default)]
pub struct RequestCounter(Arc<AtomicUsize>);

impl RequestCounter {
    /// Requests so far.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "reyes::RequestCounter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A current-thread runtime for one blocking call into the async SDK.
pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// The shared SDK config: the default credential chain (environment, profile, web identity,
/// ECS, instance metadata), `max_attempts` attempts with exponential backoff (unless
/// AWS_MAX_ATTEMPTS or AWS_RETRY_MODE say otherwise), bounded timeouts.
pub(crate) async fn sdk_config(region: Option<&str>, max_attempts: u32) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(
        aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(60))
            .build(),
    );
    // AWS_MAX_ATTEMPTS / AWS_RETRY_MODE (environment or profile) still win when set.
    if std::env::var_os("AWS_MAX_ATTEMPTS").is_none()
        && std::env::var_os("AWS_RETRY_MODE").is_none()
    {
        loader = loader.retry_config(
            aws_config::retry::RetryConfig::standard().with_max_attempts(max_attempts),
        );
    }
    if let Some(r) = region {
        loader = loader.region(Region::new(r.to_string()));
    }
    loader.load().await
}

fn client(
    shared: &aws_config::SdkConfig,
    region: &str,
    endpoint: Option<&str>,
    counter: &RequestCounter,
) -> Client {
    let mut b = aws_sdk_ec2::config::Builder::from(shared)
        .region(Region::new(region.to_string()))
        .interceptor(counter.clone());
    if let Some(e) = endpoint {
        b = b.endpoint_url(e);
    }
    Client::from_conf(b.build())
}

/// Read every configured region into one inventory.
pub fn load(cfg: &Ec2Config, opts: &ReadOptions) -> Result<Inventory, InventoryError> {
    let counter = RequestCounter::default();
    let aws = read(cfg, opts, &counter)?;
    tracing::info!(
        regions = cfg.regions.len(),
        vpcs = aws.vpcs.len(),
        security_groups = aws.security_groups.len(),
        interfaces = aws.interfaces.len(),
        prefix_lists = aws.prefix_lists.len(),
        api_requests = counter.get(),
        "read the EC2 inventory"
    );
    aws.into_inventory()
        .map_err(|e| InventoryError::Invalid(e.to_string()))
}

/// Read every configured region into AWS shapes, counting requests.
pub fn read(
    cfg: &Ec2Config,
    opts: &ReadOptions,
    counter: &RequestCounter,
) -> Result<AwsInventory, InventoryError> {
    let rt =
        runtime().map_err(|e| InventoryError::Api(format!("cannot start the AWS runtime: {e}")))?;
    rt.block_on(async {
        // The first region also serves the credential providers that need one (STS).
        let shared = sdk_config(cfg.regions.first().map(String::as_str), MAX_ATTEMPTS).await;
        let handles: Vec<_> = cfg
            .regions
            .iter()
            .map(|region| {
                let c = client(&shared, region, cfg.endpoint.as_deref(), counter);
                tokio::spawn(read_region(
                    c,
                    region.clone(),
                    cfg.vpcs.clone(),
                    opts.clone(),
                ))
            })
            .collect();
        let mut all = AwsInventory::default();
        for h in handles {
            let part = join(h).await?;
            all.vpcs.extend(part.vpcs);
            all.subnets.extend(part.subnets);
            all.security_groups.extend(part.security_groups);
            all.interfaces.extend(part.interfaces);
            all.prefix_lists.extend(part.prefix_lists);
        }
        Ok(all)
    })
}

async fn join<T>(
    h: tokio::task::JoinHandle<Result<T, InventoryError>>,
) -> Result<T, InventoryError> {
    h.await
        .map_err(|e| InventoryError::Api(format!("EC2 inventory task failed: {e}")))?
}

fn api_error<E>(region: &str, op: &str, e: E) -> InventoryError
where
    E: std::error::Error,
{
    InventoryError::Api(format!("EC2 {op} in {region}: {}", DisplayErrorContext(e)))
}

fn vpc_filter(vpcs: &[String]) -> Option<Filter> {
    (!vpcs.is_empty()).then(|| {
        Filter::builder()
            .name("vpc-id")
            .set_values(Some(vpcs.to_vec()))
            .build()
    })
}

/// The entries of the prefix lists that some rule of `sgs` refers to (AWS lists a dozen
/// managed ones per region that no rule may use), fetched concurrently.
async fn prefix_list_entries(
    c: &Client,
    region: &str,
    sgs: &[SecurityGroup],
    pls: &[t::ManagedPrefixList],
) -> Result<Vec<(String, Vec<PrefixListEntry>)>, InventoryError> {
    let used: BTreeSet<&str> = sgs
        .iter()
        .flat_map(|g| {
            g.ip_permissions
                .iter()
                .chain(g.ip_permissions_egress.iter().flatten())
        })
        .flat_map(|p| &p.prefix_list_ids)
        .map(|p| p.prefix_list_id.as_str())
        .collect();
    let wanted: Vec<String> = pls
        .iter()
        .filter_map(|p| p.prefix_list_id())
        .filter(|id| used.contains(id))
        .map(str::to_string)
        .collect();
    for id in used.iter().filter(|id| !wanted.iter().any(|w| w == *id)) {
        tracing::warn!(region, prefix_list = %id, "a security group refers to a prefix list that DescribeManagedPrefixLists does not show: it matches nothing");
    }
    let entry_handles: Vec<_> = wanted
        .into_iter()
        .map(|id| {
            let c = c.clone();
            let region = region.to_string();
            tokio::spawn(async move {
                let entries: Vec<t::PrefixListEntry> = c
                    .get_managed_prefix_list_entries()
                    .prefix_list_id(&id)
                    .max_results(100)
                    .into_paginator()
                    .items()
                    .send()
                    .try_collect()
                    .await
                    .map_err(|e| {
                        api_error(&region, &format!("GetManagedPrefixListEntries {id}"), e)
                    })?;
                Ok::<_, InventoryError>((id, entries))
            })
        })
        .collect();
    let mut prefix_lists = Vec::new();
    for h in entry_handles {
        let (id, entries) = join(h).await?;
        prefix_lists.push((
            id,
            entries
                .iter()
                .filter_map(|e| e.cidr())
                .map(|c| PrefixListEntry {
                    cidr: c.to_string(),
                })
                .collect(),
        ));
    }
    Ok(prefix_lists)
}

/// One region: the describe calls run concurrently, then the entries of the prefix lists that
/// the region's security groups use.
async fn read_region(
    c: Client,
    region: String,
    vpcs: Vec<String>,
    opts: ReadOptions,
) -> Result<AwsInventory, InventoryError> {
    let filters = vpc_filter(&vpcs).map(|f| vec![f]);
    let r = region.as_str();
    // Spawned, so the calls of a region run concurrently (and with the other regions').
    let vpcs_h = tokio::spawn({
        let (c, f, region) = (c.clone(), filters.clone(), region.clone());
        async move {
            c.describe_vpcs()
                .set_filters(f)
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(|e| api_error(&region, "DescribeVpcs", e))
        }
    });
    let sgs_h = tokio::spawn({
        let (c, f, region) = (c.clone(), filters.clone(), region.clone());
        async move {
            c.describe_security_groups()
                .set_filters(f)
                .max_results(1000)
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(|e| api_error(&region, "DescribeSecurityGroups", e))
        }
    });
    let enis_h = tokio::spawn({
        let (c, f, region) = (c.clone(), filters.clone(), region.clone());
        async move {
            c.describe_network_interfaces()
                .set_filters(f)
                .max_results(1000)
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(|e| api_error(&region, "DescribeNetworkInterfaces", e))
        }
    });
    let subnets_h = tokio::spawn({
        let (c, f, region) = (c.clone(), filters.clone(), region.clone());
        async move {
            if !opts.subnets {
                return Ok(Vec::new());
            }
            c.describe_subnets()
                .set_filters(f)
                .max_results(1000)
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(|e| api_error(&region, "DescribeSubnets", e))
        }
    });
    let pls_h = tokio::spawn({
        let (c, region) = (c.clone(), region.clone());
        async move {
            c.describe_managed_prefix_lists()
                .max_results(100)
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(|e| api_error(&region, "DescribeManagedPrefixLists", e))
        }
    });
    let vpcs: Vec<t::Vpc> = join(vpcs_h).await?;
    let sgs: Vec<t::SecurityGroup> = join(sgs_h).await?;
    let enis: Vec<t::NetworkInterface> = join(enis_h).await?;
    let subnets: Vec<t::Subnet> = join(subnets_h).await?;
    let pls: Vec<t::ManagedPrefixList> = join(pls_h).await?;

    let sgs: Vec<SecurityGroup> = sgs.iter().map(security_group).collect();
    let prefix_lists = prefix_list_entries(&c, &region, &sgs, &pls).await?;
    tracing::debug!(
        region = r,
        vpcs = vpcs.len(),
        security_groups = sgs.len(),
        interfaces = enis.len(),
        subnets = subnets.len(),
        prefix_lists = prefix_lists.len(),
        "read region"
    );
    Ok(AwsInventory {
        security_groups: sgs,
        interfaces: enis.iter().map(interface).collect(),
        vpcs: vpcs.iter().map(vpc).collect(),
        subnets: subnets.iter().map(subnet).collect(),
        prefix_lists,
    })
}

fn s(v: Option<&str>) -> String {
    v.unwrap_or_default().to_string()
}

fn so(v: Option<&str>) -> Option<String> {
    v.map(str::to_string)
}

/// SDK -> AWS shape: a security group.
pub fn security_group(g: &t::SecurityGroup) -> SecurityGroup {
    SecurityGroup {
        group_id: s(g.group_id()),
        group_name: s(g.group_name()),
        vpc_id: so(g.vpc_id()),
        ip_permissions: g.ip_permissions().iter().map(permission).collect(),
        ip_permissions_egress: Some(g.ip_permissions_egress().iter().map(permission).collect()),
    }
}

fn permission(p: &t::IpPermission) -> IpPermission {
    IpPermission {
        ip_protocol: s(p.ip_protocol()),
        from_port: p.from_port().map(i64::from),
        to_port: p.to_port().map(i64::from),
        ip_ranges: p
            .ip_ranges()
            .iter()
            .filter_map(|r| r.cidr_ip())
            .map(|c| IpRange { cidr_ip: c.into() })
            .collect(),
        ipv6_ranges: p
            .ipv6_ranges()
            .iter()
            .filter_map(|r| r.cidr_ipv6())
            .map(|c| Ipv6Range {
                cidr_ipv6: c.into(),
            })
            .collect(),
        prefix_list_ids: p
            .prefix_list_ids()
            .iter()
            .filter_map(|r| r.prefix_list_id())
            .map(|c| PrefixListId {
                prefix_list_id: c.into(),
            })
            .collect(),
        user_id_group_pairs: p
            .user_id_group_pairs()
            .iter()
            .map(|u| UserIdGroupPair {
                group_id: so(u.group_id()),
                user_id: so(u.user_id()),
                vpc_id: so(u.vpc_id()),
            })
            .collect(),
    }
}

/// SDK -> AWS shape: a network interface.
pub fn interface(n: &t::NetworkInterface) -> NetworkInterface {
    NetworkInterface {
        network_interface_id: s(n.network_interface_id()),
        subnet_id: so(n.subnet_id()),
        vpc_id: so(n.vpc_id()),
        private_ip_address: so(n.private_ip_address()),
        private_ip_addresses: n
            .private_ip_addresses()
            .iter()
            .filter_map(|a| a.private_ip_address())
            .map(|a| PrivateIp {
                private_ip_address: a.into(),
            })
            .collect(),
        ipv6_addresses: n
            .ipv6_addresses()
            .iter()
            .filter_map(|a| a.ipv6_address())
            .map(|a| Ipv6Address {
                ipv6_address: a.into(),
            })
            .collect(),
        ipv4_prefixes: n
            .ipv4_prefixes()
            .iter()
            .filter_map(|a| a.ipv4_prefix())
            .map(|a| Ipv4Prefix {
                ipv4_prefix: a.into(),
            })
            .collect(),
        ipv6_prefixes: n
            .ipv6_prefixes()
            .iter()
            .filter_map(|a| a.ipv6_prefix())
            .map(|a| Ipv6Prefix {
                ipv6_prefix: a.into(),
            })
            .collect(),
        groups: n
            .groups()
            .iter()
            .filter_map(|g| g.group_id())
            .map(|g| GroupIdentifier { group_id: g.into() })
            .collect(),
    }
}

fn state(code: Option<&str>) -> Option<BlockState> {
    code.map(|c| BlockState { state: c.into() })
}

/// SDK -> AWS shape: a VPC with every IPv4 and IPv6 block.
pub fn vpc(v: &t::Vpc) -> Vpc {
    Vpc {
        vpc_id: s(v.vpc_id()),
        cidr_block: so(v.cidr_block()),
        cidr_block_association_set: v
            .cidr_block_association_set()
            .iter()
            .filter_map(|a| {
                Some(CidrAssociation {
                    cidr_block: a.cidr_block()?.into(),
                    cidr_block_state: state(
                        a.cidr_block_state()
                            .and_then(|s| s.state())
                            .map(|s| s.as_str()),
                    ),
                })
            })
            .collect(),
        ipv6_cidr_block_association_set: v
            .ipv6_cidr_block_association_set()
            .iter()
            .filter_map(|a| {
                Some(Ipv6CidrAssociation {
                    ipv6_cidr_block: a.ipv6_cidr_block()?.into(),
                    ipv6_cidr_block_state: state(
                        a.ipv6_cidr_block_state()
                            .and_then(|s| s.state())
                            .map(|s| s.as_str()),
                    ),
                })
            })
            .collect(),
    }
}

/// SDK -> AWS shape: a subnet.
pub fn subnet(n: &t::Subnet) -> AwsSubnet {
    AwsSubnet {
        subnet_id: s(n.subnet_id()),
        vpc_id: so(n.vpc_id()),
        cidr_block: so(n.cidr_block()),
        ipv6_cidr_block_association_set: n
            .ipv6_cidr_block_association_set()
            .iter()
            .filter_map(|a| {
                Some(Ipv6CidrAssociation {
                    ipv6_cidr_block: a.ipv6_cidr_block()?.into(),
                    ipv6_cidr_block_state: state(
                        a.ipv6_cidr_block_state()
                            .and_then(|s| s.state())
                            .map(|s| s.as_str()),
                    ),
                })
            })
            .collect(),
        tags: n
            .tags()
            .iter()
            .map(|t| Tag {
                key: s(t.key()),
                value: s(t.value()),
            })
            .collect(),
    }
}
