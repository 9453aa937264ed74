//! The YAML configuration (every key: docs/config.md), validated up front.
//!
//! Unknown keys are errors, and every error names the file, line and column. Relative paths
//! are taken relative to the directory of the config file.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::net::Cidr;

mod limits;
mod receipts;
mod trust;
use crate::proto::{PortRange, Proto};
pub use limits::Limits;
pub use receipts::{FleetConfig, HostId, HostIdError, HostState, MAX_HOST_ID};
pub use trust::{S3Config, SigningConfig, TrustedKey};

/// Where the config is read from when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/reyes/reyes.yaml";

/// A config that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed or does not match the schema.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// Which file.
        path: PathBuf,
        /// 1-based line (0 when unknown).
        line: u64,
        /// 1-based column (0 when unknown).
        column: u64,
        /// What is wrong and what is expected.
        message: String,
    },
}

/// The longest `signing.validity` accepted: longer lets a stolen document be replayed for
/// longer, and far-future times overflow.
pub const MAX_VALIDITY: Duration = Duration::from_secs(366 * 24 * 3600);

/// A value that is well-formed YAML but not acceptable; serde reports it with its location.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// `inventory` names no source or several.
    #[error("inventory: give exactly one of `file`, `aws_json` or `ec2`")]
    InventorySource,
    /// A list that must not be empty.
    #[error("{0}: list at least one {1}")]
    EmptyList(&'static str, &'static str),
    /// A failsafe port on a protocol without ports.
    #[error("failsafe: `port` needs proto tcp or udp, not {0}")]
    FailsafePort(Proto),
    /// A failsafe source of the wrong family.
    #[error("failsafe: {0} cannot come from {1}")]
    FailsafeFamily(Proto, Cidr),
    /// `enforce: cidr` without managed CIDRs.
    #[error("follower.managed_cidrs: `enforce: cidr` needs at least one managed CIDR")]
    ManagedCidrs,
    /// gateway_cidrs without gateway mode.
    #[error(
        "follower.gateway_cidrs: only used with `mode: gateway` (this follower is in host mode)"
    )]
    GatewayCidrs,
    /// Not a duration.
    #[error("bad duration {input:?} ({source}): expected e.g. 90s, 5m, 1h")]
    Duration {
        /// The text.
        input: String,
        /// Why.
        #[source]
        source: humantime::DurationError,
    },
    /// A zero duration.
    #[error("duration {0:?} must be greater than zero")]
    ZeroDuration(String),
    /// `signing.validity` over [`MAX_VALIDITY`].
    #[error("signing.validity {0:?} is over the maximum of 366 days")]
    ValidityTooLong(String),
    /// Not an OpenPGP fingerprint.
    #[error(
        "{0:?} is not an OpenPGP fingerprint (40 or 64 hex digits; `gpg --fingerprint` shows it)"
    )]
    Fingerprint(String),
    /// A `not_before`/`not_after` that is not a time.
    #[error("signing.trusted_fingerprints: {0}")]
    Time(#[from] crate::timefmt::TimeError),
    /// A key window that closes before it opens.
    #[error("signing.trusted_fingerprints: {0}: not_before is after not_after")]
    EmptyWindow(String),
    /// `signing.threshold: 0`.
    #[error("signing.threshold must be at least 1")]
    Threshold,
    /// Plain http to a host that is not loopback.
    #[error("store.s3.endpoint {0:?}: plain http is allowed only to a loopback address (credentials and documents would cross the network in clear); use https, or set store.s3.allow_http: true")]
    PlainHttp(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Signed into every document; a follower refuses any other.
    pub environment: String,
    /// Where documents are published and fetched.
    pub store: StoreConfig,
    /// Keys: the leader's secret key, the followers' keyring and allowlist.
    #[serde(default)]
    pub signing: SigningConfig,
    /// The leader's inventory source (followers need none).
    #[serde(default)]
    pub inventory: Option<InventoryConfig>,
    /// How a follower enforces the document.
    #[serde(default)]
    pub follower: FollowerConfig,
    /// Leader settings besides the inventory and signing.
    #[serde(default)]
    pub leader: LeaderConfig,
    /// How `reyes fleet` judges the followers' receipts.
    #[serde(default)]
    pub fleet: FleetConfig,
}

/// Leader settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderConfig {
    /// Prometheus text file written after every run (node_exporter textfile collector).
    #[serde(default)]
    pub metrics_file: Option<PathBuf>,
}

/// Exactly one store.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// `rules.json` and `rules.json.sig` in this directory.
    Directory(PathBuf),
    /// An S3 object and `KEY.sig` beside it.
    S3(S3Config),
}

/// One AWS CLI JSON file, optionally naming the prefix list its entries belong to.
#[derive(Debug, Clone, Serialize)]
pub struct AwsJsonInput {
    /// The file.
    pub path: PathBuf,
    /// For `get-managed-prefix-list-entries` output, which has no id of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_list: Option<String>,
}

impl<'de> Deserialize<'de> for AwsJsonInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Path(PathBuf),
            Entry {
                path: PathBuf,
                prefix_list: Option<String>,
            },
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Path(path) => AwsJsonInput {
                path,
                prefix_list: None,
            },
            Raw::Entry { path, prefix_list } => AwsJsonInput { path, prefix_list },
        })
    }
}

/// EC2 API source settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2Config {
    /// Regions to read.
    pub regions: Vec<String>,
    /// VPC ids to read (default: all in those regions).
    #[serde(default)]
    pub vpcs: Vec<String>,
    /// An EC2-compatible endpoint (tests).
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// Exactly one inventory source.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InventorySource {
    /// The static YAML inventory.
    File(PathBuf),
    /// AWS CLI `describe-*` outputs.
    AwsJson(Vec<AwsJsonInput>),
    /// The live EC2 API.
    Ec2(Ec2Config),
}

/// The leader's inventory settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "RawInventory")]
pub struct InventoryConfig {
    /// Where the inventory comes from.
    #[serde(flatten)]
    pub source: InventorySource,
    /// Groups left out entirely, by name.
    pub excluded_group_names: Vec<String>,
    /// Groups left out entirely, by id.
    pub excluded_group_ids: Vec<String>,
    /// Subnets (by name or id) whose groups cover the whole subnet CIDR.
    pub dynamic_subnets: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    aws_json: Option<Vec<AwsJsonInput>>,
    #[serde(default)]
    ec2: Option<Ec2Config>,
    #[serde(default)]
    excluded_group_names: Vec<String>,
    #[serde(default)]
    excluded_group_ids: Vec<String>,
    #[serde(default)]
    dynamic_subnets: Vec<String>,
}

impl TryFrom<RawInventory> for InventoryConfig {
    type Error = ValueError;
    fn try_from(r: RawInventory) -> Result<Self, ValueError> {
        let source = match (r.file, r.aws_json, r.ec2) {
            (Some(f), None, None) => InventorySource::File(f),
            (None, Some(j), None) => {
                if j.is_empty() {
                    return Err(ValueError::EmptyList("inventory.aws_json", "file"));
                }
                InventorySource::AwsJson(j)
            }
            (None, None, Some(e)) => {
                if e.regions.is_empty() {
                    return Err(ValueError::EmptyList("inventory.ec2.regions", "region"));
                }
                InventorySource::Ec2(e)
            }
            _ => return Err(ValueError::InventorySource),
        };
        Ok(InventoryConfig {
            source,
            excluded_group_names: r.excluded_group_names,
            excluded_group_ids: r.excluded_group_ids,
            dynamic_subnets: r.dynamic_subnets,
        })
    }
}

/// Which firewall a follower drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// nftables when usable, else iptables.
    #[default]
    Auto,
    /// nftables: the `inet reyes` table.
    Nft,
    /// ipset + iptables-restore in reyes' own chains.
    Iptables,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::Nft => "nft",
            Backend::Iptables => "iptables",
        })
    }
}

/// Which iptables the iptables backend drives (`follower.iptables_variant`).
///
/// Both variants run the same `iptables-restore` language, but keep their rules in different
/// places in the kernel (x_tables for legacy, an nf_tables table for nft); rules of one are
/// invisible to the other's tools, so reyes refuses to put its chains in one variant while the
/// host's filter table is in use through the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IptablesVariant {
    /// The variant whose filter table is in use; if neither is, the one `iptables -V` names.
    #[default]
    Auto,
    /// `iptables-legacy` (x_tables).
    Legacy,
    /// `iptables-nft` (x_tables rules in nf_tables).
    Nft,
}

impl fmt::Display for IptablesVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IptablesVariant::Auto => "auto",
            IptablesVariant::Legacy => "legacy",
            IptablesVariant::Nft => "nft",
        })
    }
}

/// How the nft backend reaches the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NftTransport {
    /// Netlink when the kernel accepts a probe batch, else the `nft` binary.
    #[default]
    Auto,
    /// Pipe the rendered script to `nft -f -`.
    Cli,
    /// Our own nf_tables netlink encoder.
    Netlink,
}

/// Which traffic a follower holds to the security groups.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Enforce {
    /// Traffic that arrived through an IPsec SA.
    #[default]
    Ipsec,
    /// Traffic from `managed_cidrs` outside `local_cidrs`.
    Cidr,
}

/// What a follower judges: traffic to itself, or also the traffic it forwards.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Traffic addressed to this host (the input hook).
    #[default]
    Host,
    /// Also the traffic this host forwards (the forward hook): a VPN gateway judging the
    /// decrypted traffic for every destination behind it by the destination's groups.
    Gateway,
}

/// What a follower does with in-scope traffic that no rule allows.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Drop it.
    #[default]
    Drop,
    /// Log it (rate-limited), count it per destination group, and accept it (staged rollout).
    Audit,
}

/// `auto`, or an explicit list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AutoOr<T> {
    /// Work it out (see the key's documentation).
    #[default]
    Auto,
    /// Exactly these.
    List(Vec<T>),
}

impl<T: Serialize> Serialize for AutoOr<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AutoOr::Auto => s.serialize_str("auto"),
            AutoOr::List(l) => l.serialize(s),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for AutoOr<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw<T> {
            Word(String),
            List(Vec<T>),
        }
        match Raw::<T>::deserialize(d)? {
            Raw::Word(w) if w == "auto" => Ok(AutoOr::Auto),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "expected `auto` or a list, found {w:?}"
            ))),
            Raw::List(l) => Ok(AutoOr::List(l)),
        }
    }
}

/// An entry that is always accepted, whatever the document says.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, try_from = "RawFailsafe")]
pub struct Failsafe {
    /// Protocol.
    pub proto: Proto,
    /// Port or range (tcp/udp only; absent = every port).
    pub port: Option<PortRange>,
    /// Source prefix (absent = anywhere, both families).
    pub from: Option<Cidr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailsafe {
    proto: Proto,
    #[serde(default)]
    port: Option<PortRange>,
    #[serde(default)]
    from: Option<Cidr>,
}

impl TryFrom<RawFailsafe> for Failsafe {
    type Error = ValueError;
    fn try_from(r: RawFailsafe) -> Result<Self, ValueError> {
        if r.port.is_some() && !r.proto.has_ports() {
            return Err(ValueError::FailsafePort(r.proto));
        }
        if let Some(from) = &r.from {
            let fam_ok = match r.proto {
                Proto::Icmp => from.family() == crate::net::Family::V4,
                Proto::Icmpv6 => from.family() == crate::net::Family::V6,
                _ => true,
            };
            if !fam_ok {
                return Err(ValueError::FailsafeFamily(r.proto, *from));
            }
        }
        Ok(Failsafe {
            proto: r.proto,
            port: r.port,
            from: r.from,
        })
    }
}

/// Follower settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, try_from = "RawFollower")]
pub struct FollowerConfig {
    /// auto | nft | iptables.
    pub backend: Backend,
    /// How nft is reached: cli | netlink | auto.
    pub nft_transport: NftTransport,
    /// iptables backend: auto | legacy | nft.
    pub iptables_variant: IptablesVariant,
    /// ipsec | cidr.
    pub enforce: Enforce,
    /// cidr mode: sources that are enforced...
    pub managed_cidrs: Vec<Cidr>,
    /// ...except these (auto: the CIDRs of this host's networks in the document).
    pub local_cidrs: AutoOr<Cidr>,
    /// This host's addresses (auto: from its interfaces).
    pub addresses: AutoOr<IpAddr>,
    /// Always accepted.
    pub failsafe: Vec<Failsafe>,
    /// Log accepted in-scope packets.
    pub log_accept: bool,
    /// Log dropped packets, rate-limited.
    pub log_drop: bool,
    /// drop | audit: what happens to in-scope traffic no rule allows.
    pub action: Action,
    /// When present, the follower changes nothing and exits 0.
    pub disable_file: PathBuf,
    /// last-good document, applied record, lock.
    pub state_dir: PathBuf,
    /// Apply even when the document names none of this host's addresses.
    pub allow_unknown_host: bool,
    /// Prometheus text file written after every run (node_exporter textfile collector).
    pub metrics_file: Option<PathBuf>,
    /// How long a run waits for another holding the state directory's lock.
    #[serde(serialize_with = "ser_duration")]
    pub lock_timeout: Duration,
    /// Write a receipt (`receipts/<host id>.json`) to the store after every run.
    pub receipts: bool,
    /// This host's id in receipts (absent: the hostname).
    pub host_id: Option<HostId>,
    /// After a policy change, delete the tracked connections the new policy denies.
    pub revoke: bool,
    /// The largest ruleset applied (the capacity guard).
    pub limits: Limits,
    /// host | gateway: a gateway also judges the traffic it forwards.
    pub mode: Mode,
    /// Gateway mode: only forwarded traffic to (and, with egress, from) these CIDRs is judged
    /// (empty: every address of the document).
    pub gateway_cidrs: Vec<Cidr>,
    /// Enforce the security groups' egress rules on traffic leaving over IPsec.
    pub egress: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFollower {
    #[serde(default)]
    backend: Backend,
    #[serde(default)]
    nft_transport: NftTransport,
    #[serde(default)]
    iptables_variant: IptablesVariant,
    #[serde(default)]
    enforce: Enforce,
    #[serde(default)]
    managed_cidrs: Vec<Cidr>,
    #[serde(default)]
    local_cidrs: AutoOr<Cidr>,
    #[serde(default)]
    addresses: AutoOr<IpAddr>,
    #[serde(default)]
    failsafe: Vec<Failsafe>,
    #[serde(default)]
    log_accept: bool,
    #[serde(default)]
    log_drop: bool,
    #[serde(default)]
    action: Action,
    #[serde(default = "default_disable_file")]
    disable_file: PathBuf,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default)]
    allow_unknown_host: bool,
    #[serde(default)]
    metrics_file: Option<PathBuf>,
    #[serde(default = "default_lock_timeout", deserialize_with = "de_duration")]
    lock_timeout: Duration,
    #[serde(default)]
    receipts: bool,
    #[serde(default)]
    host_id: Option<HostId>,
    #[serde(default = "default_true")]
    revoke: bool,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    gateway_cidrs: Vec<Cidr>,
    #[serde(default)]
    egress: bool,
}

fn default_true() -> bool {
    true
}

fn default_lock_timeout() -> Duration {
    Duration::from_secs(300)
}

impl TryFrom<RawFollower> for FollowerConfig {
    type Error = ValueError;
    fn try_from(r: RawFollower) -> Result<Self, ValueError> {
        if r.enforce == Enforce::Cidr && r.managed_cidrs.is_empty() {
            return Err(ValueError::ManagedCidrs);
        }
        if r.mode == Mode::Host && !r.gateway_cidrs.is_empty() {
            return Err(ValueError::GatewayCidrs);
        }
        Ok(FollowerConfig {
            backend: r.backend,
            nft_transport: r.nft_transport,
            iptables_variant: r.iptables_variant,
            enforce: r.enforce,
            managed_cidrs: r.managed_cidrs,
            local_cidrs: r.local_cidrs,
            addresses: r.addresses,
            failsafe: r.failsafe,
            log_accept: r.log_accept,
            log_drop: r.log_drop,
            action: r.action,
            disable_file: r.disable_file,
            state_dir: r.state_dir,
            allow_unknown_host: r.allow_unknown_host,
            metrics_file: r.metrics_file,
            lock_timeout: r.lock_timeout,
            receipts: r.receipts,
            host_id: r.host_id,
            revoke: r.revoke,
            limits: r.limits,
            mode: r.mode,
            gateway_cidrs: r.gateway_cidrs,
            egress: r.egress,
        })
    }
}

impl Default for FollowerConfig {
    fn default() -> Self {
        FollowerConfig {
            backend: Backend::Auto,
            nft_transport: NftTransport::default(),
            iptables_variant: IptablesVariant::Auto,
            enforce: Enforce::Ipsec,
            managed_cidrs: Vec::new(),
            local_cidrs: AutoOr::Auto,
            addresses: AutoOr::Auto,
            failsafe: Vec::new(),
            log_accept: false,
            log_drop: false,
            action: Action::Drop,
            disable_file: default_disable_file(),
            state_dir: default_state_dir(),
            allow_unknown_host: false,
            metrics_file: None,
            lock_timeout: default_lock_timeout(),
            receipts: false,
            host_id: None,
            revoke: true,
            limits: Limits::default(),
            mode: Mode::Host,
            gateway_cidrs: Vec::new(),
            egress: false,
        }
    }
}

fn default_disable_file() -> PathBuf {
    PathBuf::from("/etc/reyes/disabled")
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/reyes")
}

/// Parse `90s`, `5m`, `1h` (and combinations such as `1h 30m`).
pub fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    let d = humantime::parse_duration(s.trim()).map_err(|source| ValueError::Duration {
        input: s.to_string(),
        source,
    })?;
    if d.is_zero() {
        return Err(ValueError::ZeroDuration(s.to_string()));
    }
    Ok(d)
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// Normalise a fingerprint: hex digits only, upper case; 40 (v4) or 64 (v6) of them.
pub fn normalise_fingerprint(s: &str) -> Result<String, ValueError> {
    let hex: String = s
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    let hex = hex.strip_prefix("0X").unwrap_or(&hex).to_string();
    if !(hex.len() == 40 || hex.len() == 64) || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ValueError::Fingerprint(s.to_string()));
    }
    Ok(hex)
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Config::parse(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        Ok(cfg)
    }

    /// Parse config text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = serde_saphyr::from_str(text).map_err(|e| yaml_error(path, &e))?;
        if cfg.environment.trim().is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line: 0,
                column: 0,
                message: "environment: must not be empty".into(),
            });
        }
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let StoreConfig::Directory(d) = &mut self.store {
            fix(d);
        }
        for p in [
            &mut self.signing.key,
            &mut self.signing.passphrase_file,
            &mut self.signing.keyring,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        if let Some(inv) = &mut self.inventory {
            match &mut inv.source {
                InventorySource::File(f) => fix(f),
                InventorySource::AwsJson(files) => files.iter_mut().for_each(|f| fix(&mut f.path)),
                InventorySource::Ec2(_) => {}
            }
        }
        fix(&mut self.follower.disable_file);
        fix(&mut self.follower.state_dir);
        for p in [
            &mut self.follower.metrics_file,
            &mut self.leader.metrics_file,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
    }
}

/// Turn a serde-saphyr error into file:line:column plus the message.
pub fn yaml_error(path: &Path, e: &serde_saphyr::Error) -> ConfigError {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let message = e.to_string();
    ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        column,
        message,
    }
}

#[cfg(test)]
mod tests;
