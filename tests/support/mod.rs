//! Fixtures shared by tests/aws_json.rs and tests/snapshots.rs: the AWS CLI JSON estate in
//! tests/fixtures/aws/, the static example inventory, fixed build options, and the matrix of
//! rendered nft scripts (inventory x target x enforce mode x logging).
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use reyes::compile::{self, HostContext, Target};
use reyes::config::{AwsJsonInput, Enforce};
use reyes::document::{self, BuildOptions, Built};
use reyes::inventory::{aws_json, static_file, Inventory};

/// Group ids of the AWS fixtures.
pub mod sg {
    /// app-alb (VPC app).
    pub const ALB: &str = "sg-03f1a2b4c6d8e0a11";
    /// app-web (VPC app).
    pub const WEB: &str = "sg-07b2c4d6e8f0a1b22";
    /// app-db (VPC app).
    pub const DB: &str = "sg-0c3d5e7f9a1b2c433";
    /// app-workers (VPC app, in the dynamic subnet `workers`).
    pub const WORKERS: &str = "sg-0d4e6f8a0b2c3d544";
    /// app-vpn-gw (VPC app): ESP, GRE, IKE, BGP.
    pub const VPN_GW: &str = "sg-0e5f7a9b1c3d4e655";
    /// legacy-nat (VPC app): excluded by name.
    pub const LEGACY: &str = "sg-0f6a8b0c2d4e5f766";
    /// debug-open (VPC app): excluded by id.
    pub const DEBUG: &str = "sg-01a7b9c1d3e5f6877";
    /// default (VPC app).
    pub const DEFAULT_APP: &str = "sg-02b8c0d2e4f6a7988";
    /// ops-bastion (VPC shared-services, peered).
    pub const BASTION: &str = "sg-04c9d1e3f5a7b8a99";
    /// ops-monitoring (VPC shared-services, peered).
    pub const MONITORING: &str = "sg-05d0e2f4a6b8c9baa";
    /// default (VPC shared-services).
    pub const DEFAULT_SHARED: &str = "sg-06e1f3a5b7c9d0cbb";
    /// A group of account 444455556666, referenced through peering, not in the inventory.
    pub const PARTNER: &str = "sg-08f2a4b6c8d0e1dcc";
}

/// Prefix list `corp-monitoring` (IPv4; its entries file is named after it).
pub const PL_MONITORING: &str = "pl-0a9b8c7d6e5f40312";
/// Prefix list `corp-vpn-v6` (IPv6; its entries file is mapped explicitly).
pub const PL_VPN6: &str = "pl-0f1e2d3c4b5a69788";

/// The addresses of web-2 (eni-0c3d4c5b6a7f8e903: groups app-web and default).
pub const AWS_HOST: [&str; 2] = ["10.20.1.20", "2600:1f18:4a3:6e01::20"];
/// web2 of examples/inventory.yaml (groups sg-web and sg-ops), as in examples/reyes.yaml.
pub const STATIC_HOST: [&str; 1] = ["10.1.0.12"];

/// `tests/fixtures/aws`.
pub fn aws_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/aws")
}

/// Every AWS fixture file, in the order `tests/fixtures/aws/reyes.yaml` lists them.
pub fn aws_inputs() -> Vec<AwsJsonInput> {
    let d = aws_dir();
    let plain = |name: &str| AwsJsonInput {
        path: d.join(name),
        prefix_list: None,
    };
    vec![
        plain("describe-vpcs.json"),
        plain("describe-subnets.json"),
        plain("describe-security-groups.app.json"),
        plain("describe-security-groups.shared-services.json"),
        plain("describe-network-interfaces.json"),
        plain("describe-managed-prefix-lists.json"),
        plain("get-managed-prefix-list-entries.pl-0a9b8c7d6e5f40312.json"),
        AwsJsonInput {
            path: d.join("get-managed-prefix-list-entries.corp-vpn-v6.json"),
            prefix_list: Some(PL_VPN6.to_string()),
        },
    ]
}

/// The AWS fixtures as an inventory.
pub fn aws_inventory() -> Inventory {
    aws_json::load(&aws_inputs()).expect("load the AWS fixtures")
}

/// 2026-01-01T00:00:00Z: every fixture document is issued then.
pub fn issued_at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

/// The leader settings of tests/fixtures/aws/reyes.yaml, with a fixed serial and time.
pub fn aws_options() -> BuildOptions {
    BuildOptions {
        environment: "prod".into(),
        serial: 42,
        issued_at: issued_at(),
        validity: Duration::from_secs(3600),
        excluded_group_names: vec!["legacy-nat".into()],
        excluded_group_ids: vec![sg::DEBUG.into()],
        dynamic_subnets: vec!["workers".into()],
    }
}

/// The AWS fixtures' document.
pub fn aws_built() -> Built {
    document::build(&aws_inventory(), &aws_options()).expect("build the AWS fixtures' document")
}

/// examples/inventory.yaml's document, with examples/reyes.yaml's leader settings.
pub fn static_built() -> Built {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/inventory.yaml");
    let inv = static_file::load(&path).expect("load examples/inventory.yaml");
    let opts = BuildOptions {
        environment: "demo".into(),
        serial: 1,
        issued_at: issued_at(),
        validity: Duration::from_secs(3600),
        excluded_group_names: vec![],
        excluded_group_ids: vec![],
        dynamic_subnets: vec!["workers".into()],
    };
    document::build(&inv, &opts).expect("build the example document")
}

/// One rendered script of the matrix.
pub struct Case {
    /// Descriptive, unique: also the snapshot name.
    pub name: String,
    /// The full `nft -f` script.
    pub script: String,
}

/// Which inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inv {
    /// examples/inventory.yaml.
    StaticExample,
    /// tests/fixtures/aws.
    AwsFixtures,
}

/// Which destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tgt {
    /// [`STATIC_HOST`] or [`AWS_HOST`]: an address in two groups (a profile chain).
    Host,
    /// Every group.
    AllGroups,
}

/// Every case of the matrix: inventory x target x enforce mode x logging.
pub const MATRIX: [(Inv, Tgt, Enforce, bool); 16] = {
    use Enforce::{Cidr, Ipsec};
    use Inv::{AwsFixtures, StaticExample};
    use Tgt::{AllGroups, Host};
    [
        (StaticExample, Host, Ipsec, false),
        (StaticExample, Host, Ipsec, true),
        (StaticExample, Host, Cidr, false),
        (StaticExample, Host, Cidr, true),
        (StaticExample, AllGroups, Ipsec, false),
        (StaticExample, AllGroups, Ipsec, true),
        (StaticExample, AllGroups, Cidr, false),
        (StaticExample, AllGroups, Cidr, true),
        (AwsFixtures, Host, Ipsec, false),
        (AwsFixtures, Host, Ipsec, true),
        (AwsFixtures, Host, Cidr, false),
        (AwsFixtures, Host, Cidr, true),
        (AwsFixtures, AllGroups, Ipsec, false),
        (AwsFixtures, AllGroups, Ipsec, true),
        (AwsFixtures, AllGroups, Cidr, false),
        (AwsFixtures, AllGroups, Cidr, true),
    ]
};

fn addrs(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

/// The snapshot name of a case, e.g.
/// `nft__aws_fixtures__host_web2_10_20_1_20_and_v6__enforce_cidr__log_accept_and_drop`.
pub fn case_name(inv: Inv, tgt: Tgt, enforce: Enforce, logging: bool) -> String {
    let inv_name = match inv {
        Inv::StaticExample => "static_example",
        Inv::AwsFixtures => "aws_fixtures",
    };
    let target = match (inv, tgt) {
        (_, Tgt::AllGroups) => "all_groups",
        (Inv::StaticExample, Tgt::Host) => "host_web2_10_1_0_12",
        (Inv::AwsFixtures, Tgt::Host) => "host_web2_10_20_1_20_and_v6",
    };
    let enforce = match enforce {
        Enforce::Ipsec => "enforce_ipsec",
        Enforce::Cidr => "enforce_cidr_managed_10_8_fd00_8",
    };
    let log = if logging {
        "log_accept_and_drop"
    } else {
        "no_logging"
    };
    format!("nft__{inv_name}__{target}__{enforce}__{log}")
}

/// Render one case through the library: compile the document for the target with the
/// enforce mode (cidr: managed 10.0.0.0/8 and fd00::/8, local_cidrs auto) and logging
/// (log_accept and log_drop together), no failsafe.
pub fn render_case(inv: Inv, tgt: Tgt, enforce: Enforce, logging: bool) -> Case {
    let (built, host) = match inv {
        Inv::StaticExample => (static_built(), addrs(&STATIC_HOST)),
        Inv::AwsFixtures => (aws_built(), addrs(&AWS_HOST)),
    };
    let ctx = HostContext {
        target: match tgt {
            Tgt::Host => Target::Host(host),
            Tgt::AllGroups => Target::AllGroups,
        },
        enforce,
        managed_cidrs: match enforce {
            Enforce::Cidr => vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
            Enforce::Ipsec => vec![],
        },
        local_cidrs: None,
        failsafe: vec![],
        log_accept: logging,
        log_drop: logging,
        allow_unknown_host: false,
        action: reyes::config::Action::Drop,
        mode: reyes::config::Mode::Host,
        gateway_cidrs: vec![],
        egress: false,
    };
    let rs = compile::compile(&built.document, &ctx).expect("compile");
    let script = reyes::nft::render::render(&rs).expect("render");
    Case {
        name: case_name(inv, tgt, enforce, logging),
        script,
    }
}

/// Every case of [`MATRIX`], rendered.
pub fn render_cases() -> Vec<Case> {
    MATRIX
        .iter()
        .map(|&(i, t, e, l)| render_case(i, t, e, l))
        .collect()
}
