//! Real AWS wire APIs: `reyes leader` reading EC2 and publishing to S3, `reyes follower`
//! polling S3 and applying in a network namespace, all against moto_server on 127.0.0.1.
//!
//! One moto_server serves the whole test binary: started on a free port on first use, reset
//! (POST /moto-api/reset) at the start of every test, tests run one at a time, and the server
//! is stopped when this process exits (its wrapper shell waits on our pipe). moto_server is
//! found through REYES_MOTO_SERVER (set by scripts/test), then the venv that scripts/setup
//! makes; without it these tests are skipped with a note, or fail under REYES_REQUIRE_MOTO=1.
//!
//! The estate is built through the SDK, so the test knows every id and address it expects.

mod common;
mod moto;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::Duration;

use aws_sdk_ec2::types as ec2t;
use aws_sdk_s3::primitives::ByteStream;
use common::{code, netns_available, normalise, reyes_bin, stderr, table_block, text, Netns};
use moto::{forward_into, free_port, moto, AWS_ENV};
use serde_json::{json, Value};

const BUCKET: &str = "reyes-test";
const KEY: &str = "prod/rules.json";
const EAST: &str = "us-east-1";
const WEST: &str = "us-west-2";

// ---------------------------------------------------------------------------------------------
// SDK clients for building the estate

struct Aws {
    rt: tokio::runtime::Runtime,
    east: aws_sdk_ec2::Client,
    west: aws_sdk_ec2::Client,
    s3: aws_sdk_s3::Client,
}

impl Aws {
    fn new(port: u16) -> Aws {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conf = |region: &'static str| {
            rt.block_on(
                aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(region))
                    .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                        "testing", "testing", None, None, "test",
                    ))
                    .endpoint_url(format!("http://127.0.0.1:{port}"))
                    .load(),
            )
        };
        let (e, w) = (conf(EAST), conf(WEST));
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&e)
                .force_path_style(true)
                .build(),
        );
        let aws = Aws {
            east: aws_sdk_ec2::Client::new(&e),
            west: aws_sdk_ec2::Client::new(&w),
            s3,
            rt,
        };
        aws.rt
            .block_on(aws.s3.create_bucket().bucket(BUCKET).send())
            .unwrap();
        aws
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    fn get(&self, key: &str) -> Option<(Vec<u8>, String, BTreeMap<String, String>)> {
        let o = self
            .block(self.s3.get_object().bucket(BUCKET).key(key).send())
            .ok()?;
        let etag = o.e_tag().unwrap_or_default().to_string();
        let meta = o
            .metadata()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let bytes = self.block(o.body.collect()).unwrap().into_bytes().to_vec();
        Some((bytes, etag, meta))
    }

    fn put(&self, key: &str, bytes: &[u8], meta: &BTreeMap<String, String>) {
        let mut req = self
            .s3
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(ByteStream::from(bytes.to_vec()));
        for (k, v) in meta {
            req = req.metadata(k, v);
        }
        self.block(req.send()).unwrap();
    }

    fn delete(&self, key: &str) {
        self.block(self.s3.delete_object().bucket(BUCKET).key(key).send())
            .unwrap();
    }

    /// The published document, decompressed and parsed.
    fn document(&self) -> Value {
        serde_json::from_slice(&gunzip(&self.get(KEY).expect("published document").0)).unwrap()
    }
}

/// The document bytes of a body: decompressed when gzipped.
fn gunzip(body: &[u8]) -> Vec<u8> {
    if reyes::fsutil::is_gzip(body) {
        reyes::fsutil::gunzip_limited(body, 1 << 26).unwrap()
    } else {
        body.to_vec()
    }
}

/// Everything the test created, to write the expected document from.
#[derive(Debug, Default)]
struct Estate {
    vpc_a: String,
    vpc_b: String,
    vpc_c: String,
    /// VPC A's Amazon-provided IPv6 block, e.g. 2400:6500:1234:5600::/56.
    v6_block: String,
    /// Subnet A1's /64 without the `/64`, ending in `::`.
    v6_subnet: String,
    web: String,
    lb: String,
    db: String,
    west: String,
    pl4: String,
    pl6: String,
    /// Every id of an ENI the test made, with its groups.
    enis: Vec<String>,
}

impl Estate {
    fn v6(&self, host: &str) -> String {
        format!("{}{host}", self.v6_subnet)
    }
}

fn perm(proto: &str, from: i32, to: i32) -> aws_sdk_ec2::types::builders::IpPermissionBuilder {
    ec2t::IpPermission::builder()
        .ip_protocol(proto)
        .from_port(from)
        .to_port(to)
}

fn v4(c: &str) -> ec2t::IpRange {
    ec2t::IpRange::builder().cidr_ip(c).build()
}

fn v6(c: &str) -> ec2t::Ipv6Range {
    ec2t::Ipv6Range::builder().cidr_ipv6(c).build()
}

fn pair(g: &str) -> ec2t::UserIdGroupPair {
    ec2t::UserIdGroupPair::builder().group_id(g).build()
}

/// Two VPCs in us-east-1 (A with an IPv6 block, B peered with A) and one in us-west-2; four
/// groups with every rule form moto accepts; instances with several interfaces and secondary
/// addresses; a standalone interface; two managed prefix lists.
fn build_estate(aws: &Aws) -> Estate {
    let (e, w) = (&aws.east, &aws.west);
    let mut s = Estate::default();
    let vpc = |c: &aws_sdk_ec2::Client, cidr: &str, v6: bool| -> String {
        aws.block(
            c.create_vpc()
                .cidr_block(cidr)
                .set_amazon_provided_ipv6_cidr_block(v6.then_some(true))
                .send(),
        )
        .unwrap()
        .vpc()
        .unwrap()
        .vpc_id()
        .unwrap()
        .to_string()
    };
    s.vpc_a = vpc(e, "10.1.0.0/16", true);
    s.vpc_b = vpc(e, "10.2.0.0/16", false);
    s.vpc_c = vpc(w, "10.3.0.0/16", false);
    aws.block(
        e.associate_vpc_cidr_block()
            .vpc_id(&s.vpc_a)
            .cidr_block("10.11.0.0/16")
            .send(),
    )
    .unwrap();
    let described = aws
        .block(e.describe_vpcs().vpc_ids(&s.vpc_a).send())
        .unwrap();
    s.v6_block = described.vpcs()[0].ipv6_cidr_block_association_set()[0]
        .ipv6_cidr_block()
        .unwrap()
        .to_string();
    // The /56's first /64 but one: 2400:6500:1234:5600::/56 -> 2400:6500:1234:5601::
    let net: ipnet::Ipv6Net = s.v6_block.parse().unwrap();
    // moto prints the random block with leading zeros in a group at times ("2400:6500:0389:...");
    // documents hold the canonical form.
    s.v6_block = net.to_string();
    let seg = net.network().segments();
    let sub = std::net::Ipv6Addr::new(seg[0], seg[1], seg[2], seg[3] | 1, 0, 0, 0, 0);
    s.v6_subnet = format!("{sub}");
    let subnet = |c: &aws_sdk_ec2::Client, vpc: &str, cidr: &str, v6: Option<String>| -> String {
        aws.block(
            c.create_subnet()
                .vpc_id(vpc)
                .cidr_block(cidr)
                .set_ipv6_cidr_block(v6)
                .send(),
        )
        .unwrap()
        .subnet()
        .unwrap()
        .subnet_id()
        .unwrap()
        .to_string()
    };
    let sub_a = subnet(e, &s.vpc_a, "10.1.1.0/24", Some(format!("{sub}/64")));
    let sub_b = subnet(e, &s.vpc_b, "10.2.1.0/24", None);
    let sub_c = subnet(w, &s.vpc_c, "10.3.1.0/24", None);
    let pcx = aws
        .block(
            e.create_vpc_peering_connection()
                .vpc_id(&s.vpc_a)
                .peer_vpc_id(&s.vpc_b)
                .send(),
        )
        .unwrap()
        .vpc_peering_connection()
        .unwrap()
        .vpc_peering_connection_id()
        .unwrap()
        .to_string();

    let pl = |name: &str, family: &str, cidrs: &[&str]| -> String {
        let mut b = e
            .create_managed_prefix_list()
            .prefix_list_name(name)
            .max_entries(10)
            .address_family(family);
        for c in cidrs {
            b = b.entries(ec2t::AddPrefixListEntry::builder().cidr(*c).build());
        }
        aws.block(b.send())
            .unwrap()
            .prefix_list()
            .unwrap()
            .prefix_list_id()
            .unwrap()
            .to_string()
    };
    s.pl4 = pl("corp", "IPv4", &["192.0.2.0/24", "198.51.100.0/24"]);
    s.pl6 = pl("corp6", "IPv6", &["2001:db8:100::/48"]);

    let group = |c: &aws_sdk_ec2::Client, name: &str, vpc: &str| -> String {
        aws.block(
            c.create_security_group()
                .group_name(name)
                .description(name)
                .vpc_id(vpc)
                .send(),
        )
        .unwrap()
        .group_id()
        .unwrap()
        .to_string()
    };
    s.web = group(e, "web", &s.vpc_a);
    s.lb = group(e, "lb", &s.vpc_a);
    s.db = group(e, "db", &s.vpc_b);
    s.west = group(w, "west", &s.vpc_c);

    let ingress = |c: &aws_sdk_ec2::Client, g: &str, perms: Vec<ec2t::IpPermission>| {
        aws.block(
            c.authorize_security_group_ingress()
                .group_id(g)
                .set_ip_permissions(Some(perms))
                .send(),
        )
        .unwrap();
    };
    ingress(
        e,
        &s.web,
        vec![
            perm("tcp", 443, 443)
                .ip_ranges(v4("10.9.0.0/16"))
                .ipv6_ranges(v6("2001:db8::/64"))
                .build(),
            perm("icmp", 8, 0).ip_ranges(v4("10.0.0.0/8")).build(),
            perm("icmpv6", 128, -1).ipv6_ranges(v6("::/0")).build(),
            perm("udp", 5000, 5010)
                .user_id_group_pairs(pair(&s.lb))
                .build(),
            perm("tcp", 22, 22)
                .prefix_list_ids(ec2t::PrefixListId::builder().prefix_list_id(&s.pl4).build())
                .prefix_list_ids(ec2t::PrefixListId::builder().prefix_list_id(&s.pl6).build())
                .build(),
            // Every protocol from the group itself.
            perm("-1", -1, -1).user_id_group_pairs(pair(&s.web)).build(),
            // A protocol number (moto answers 500 unless ports are given).
            perm("50", -1, -1).ip_ranges(v4("10.8.0.0/16")).build(),
            // A group in the peered VPC B.
            perm("tcp", 5432, 5432)
                .user_id_group_pairs(
                    ec2t::UserIdGroupPair::builder()
                        .group_id(&s.db)
                        .vpc_id(&s.vpc_b)
                        .vpc_peering_connection_id(&pcx)
                        .build(),
                )
                .build(),
        ],
    );
    ingress(
        e,
        &s.lb,
        vec![perm("tcp", 80, 80)
            .ip_ranges(v4("0.0.0.0/0"))
            .ipv6_ranges(v6("::/0"))
            .build()],
    );
    ingress(
        e,
        &s.db,
        vec![perm("tcp", 5432, 5432)
            .user_id_group_pairs(
                ec2t::UserIdGroupPair::builder()
                    .group_id(&s.web)
                    .vpc_id(&s.vpc_a)
                    .vpc_peering_connection_id(&pcx)
                    .build(),
            )
            .build()],
    );
    ingress(
        w,
        &s.west,
        vec![perm("tcp", 9000, 9100).ip_ranges(v4("10.1.0.0/16")).build()],
    );

    // Instances: the primary interface is made by RunInstances.
    let instance = |c: &aws_sdk_ec2::Client, subnet: &str, g: &str, ip: &str| -> (String, String) {
        let out = aws
            .block(
                c.run_instances()
                    .image_id("ami-12c6146b")
                    .min_count(1)
                    .max_count(1)
                    .network_interfaces(
                        ec2t::InstanceNetworkInterfaceSpecification::builder()
                            .device_index(0)
                            .subnet_id(subnet)
                            .groups(g)
                            .private_ip_address(ip)
                            .build(),
                    )
                    .send(),
            )
            .unwrap();
        let i = &out.instances()[0];
        (
            i.instance_id().unwrap().to_string(),
            i.network_interfaces()[0]
                .network_interface_id()
                .unwrap()
                .to_string(),
        )
    };
    let (i_web, eni_web) = instance(e, &sub_a, &s.web, "10.1.1.10");
    aws.block(
        e.assign_private_ip_addresses()
            .network_interface_id(&eni_web)
            .private_ip_addresses("10.1.1.11")
            .send(),
    )
    .unwrap();
    let (_, eni_lb) = instance(e, &sub_a, &s.lb, "10.1.1.30");
    let (_, eni_db) = instance(e, &sub_b, &s.db, "10.2.1.10");
    let (_, eni_west) = instance(w, &sub_c, &s.west, "10.3.1.10");

    let eni = |ips: &[&str], groups: &[&str], v6: &str| -> String {
        let mut b = e.create_network_interface().subnet_id(&sub_a);
        for g in groups {
            b = b.groups(*g);
        }
        for (i, ip) in ips.iter().enumerate() {
            b = b.private_ip_addresses(
                ec2t::PrivateIpAddressSpecification::builder()
                    .primary(i == 0)
                    .private_ip_address(*ip)
                    .build(),
            );
        }
        let id = aws
            .block(b.send())
            .unwrap()
            .network_interface()
            .unwrap()
            .network_interface_id()
            .unwrap()
            .to_string();
        aws.block(
            e.assign_ipv6_addresses()
                .network_interface_id(&id)
                .ipv6_addresses(v6)
                .send(),
        )
        .unwrap();
        id
    };
    // A second interface of the web instance, in two groups, with an IPv6 address.
    let eni_second = eni(&["10.1.1.20", "10.1.1.21"], &[&s.web, &s.lb], &s.v6("20"));
    aws.block(
        e.attach_network_interface()
            .network_interface_id(&eni_second)
            .instance_id(&i_web)
            .device_index(1)
            .send(),
    )
    .unwrap();
    // An interface of no instance (as a load balancer's or an endpoint's is).
    let eni_alone = eni(&["10.1.1.50", "10.1.1.51"], &[&s.web], &s.v6("50"));
    s.enis = vec![eni_web, eni_lb, eni_db, eni_west, eni_second, eni_alone];
    s
}

fn rule(proto: &str, ports: Option<&str>, icmp: Option<(u8, Option<u8>)>, from: Value) -> Value {
    let mut r = json!({"proto": proto, "from": from});
    if let Some(p) = ports {
        r["ports"] = json!(p);
    }
    if let Some((t, c)) = icmp {
        r["icmp_type"] = json!(t);
        if let Some(c) = c {
            r["icmp_code"] = json!(c);
        }
    }
    r
}

fn from(cidrs: &[&str], groups: &[&str], pls: &[&str]) -> Value {
    json!({"cidrs": cidrs, "groups": groups, "prefix_lists": pls})
}

/// The groups part of the document this estate must give (VPC-default groups excluded).
/// `covered` says which of the groups are in the inventory; references to the others are
/// dropped (and reported).
fn expected_groups(s: &Estate, covered: &[&str]) -> Value {
    let (w20, w50) = (s.v6("20"), s.v6("50"));
    let has = |g: &str| covered.contains(&g);
    let mut web_rules = vec![
        rule(
            "tcp",
            Some("22"),
            None,
            from(&[], &[], &{
                let mut p = vec![s.pl4.as_str(), s.pl6.as_str()];
                p.sort();
                p
            }),
        ),
        rule(
            "tcp",
            Some("443"),
            None,
            from(&["10.9.0.0/16", "2001:db8::/64"], &[], &[]),
        ),
    ];
    if has(&s.db) {
        web_rules.push(rule("tcp", Some("5432"), None, from(&[], &[&s.db], &[])));
    }
    web_rules.extend([
        rule("udp", Some("5000-5010"), None, from(&[], &[&s.lb], &[])),
        rule(
            "icmp",
            None,
            Some((8, Some(0))),
            from(&["10.0.0.0/8"], &[], &[]),
        ),
        rule("icmpv6", None, Some((128, None)), from(&["::/0"], &[], &[])),
        rule("all", None, None, from(&[], &[&s.web], &[])),
        rule("50", None, None, from(&["10.8.0.0/16"], &[], &[])),
    ]);
    let mut groups = vec![
        json!({
            "id": s.web, "name": "web", "network": s.vpc_a,
            "members": ["10.1.1.10", "10.1.1.11", "10.1.1.20", "10.1.1.21", "10.1.1.50", "10.1.1.51", w20, w50],
            "ingress": web_rules,
        }),
        json!({
            "id": s.lb, "name": "lb", "network": s.vpc_a,
            "members": ["10.1.1.20", "10.1.1.21", "10.1.1.30", w20],
            "ingress": [rule("tcp", Some("80"), None, from(&["0.0.0.0/0", "::/0"], &[], &[]))],
        }),
    ];
    if has(&s.db) {
        groups.push(json!({
            "id": s.db, "name": "db", "network": s.vpc_b,
            "members": ["10.2.1.10"],
            "ingress": [rule("tcp", Some("5432"), None, from(&[], &[&s.web], &[]))],
        }));
    }
    if has(&s.west) {
        groups.push(json!({
            "id": s.west, "name": "west", "network": s.vpc_c,
            "members": ["10.3.1.10"],
            "ingress": [rule("tcp", Some("9000-9100"), None, from(&["10.1.0.0/16"], &[], &[]))],
        }));
    }
    // EC2's default egress rule (allow all; IPv6 too in a VPC with an IPv6 block), which
    // every group here keeps.
    for g in &mut groups {
        let cidrs = if g["network"] == json!(s.vpc_a) {
            json!(["0.0.0.0/0", "::/0"])
        } else {
            json!(["0.0.0.0/0"])
        };
        g["egress"] = json!([{
            "proto": "all",
            "to": {"cidrs": cidrs, "groups": [], "prefix_lists": []},
        }]);
    }
    groups.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Value::Array(groups)
}

// ---------------------------------------------------------------------------------------------
// A leader/follower rig on one moto_server

struct Rig {
    dir: tempfile::TempDir,
    port: u16,
    aws: Aws,
    estate: Estate,
    _guard: MutexGuard<'static, ()>,
}

/// The follower's own address (the standalone interface in group web).
const HOST: &str = "10.1.1.50";

impl Rig {
    fn new() -> Option<Rig> {
        let (port, guard) = moto()?;
        let aws = Aws::new(port);
        let estate = build_estate(&aws);
        let rig = Rig {
            dir: tempfile::tempdir().unwrap(),
            port,
            aws,
            estate,
            _guard: guard,
        };
        rig.keygen("leader");
        let vpcs = format!(
            "[{}, {}, {}]",
            rig.estate.vpc_a, rig.estate.vpc_b, rig.estate.vpc_c
        );
        rig.config("reyes.yaml", &vpcs, "leader", port);
        Some(rig)
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn keygen(&self, name: &str) -> String {
        let o = self.cmd(&[
            "keygen",
            "--name",
            name,
            "--output-dir",
            self.p("keys").to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    }

    /// Write a config: `vpcs` as YAML, the leader key `key`, the store on `store_port`.
    /// Followers trust every certificate in keys/.
    fn config(&self, file: &str, vpcs: &str, key: &str, store_port: u16) {
        let (port, dir) = (self.port, self.dir.path().display());
        let cfg = format!(
            "environment: prod
store:
  s3: {{bucket: {BUCKET}, key: {KEY}, region: {EAST}, endpoint: \"http://127.0.0.1:{store_port}\"}}
signing:
  key: keys/{key}.secret.asc
  keyring: keys
  validity: 1h
inventory:
  ec2: {{regions: [{EAST}, {WEST}], vpcs: {vpcs}, endpoint: \"http://127.0.0.1:{port}\"}}
  excluded_group_names: [default]
follower:
  backend: nft
  addresses: [{HOST}]
  disable_file: disabled
  state_dir: {dir}/state
"
        );
        std::fs::write(self.p(file), cfg).unwrap();
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new(reyes_bin())
            .args(args)
            .env_remove("REYES_CONFIG")
            .envs(AWS_ENV)
            .output()
            .unwrap()
    }

    fn leader_with(&self, file: &str) -> Output {
        let cfg = self.p(file);
        self.cmd(&["--config", cfg.to_str().unwrap(), "leader", "--once"])
    }

    fn lead(&self) -> Output {
        let o = self.leader_with("reyes.yaml");
        assert_eq!(code(&o), 0, "leader: {}", text(&o));
        o
    }

    /// Run the follower inside `ns` (whose loopback forwards to moto_server).
    fn follower_in(&self, ns: &Netns, file: &str) -> Output {
        let cfg = self.p(file);
        let mut argv: Vec<String> = vec!["env".into()];
        argv.extend(AWS_ENV.iter().map(|(k, v)| format!("{k}={v}")));
        argv.extend(
            [
                reyes_bin(),
                "--config",
                cfg.to_str().unwrap(),
                "follower",
                "--once",
            ]
            .map(String::from),
        );
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        ns.run(&argv, None)
    }

    fn applied(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.p("state/applied.json")).unwrap()).unwrap()
    }

    fn render(&self, doc: &[u8]) -> String {
        std::fs::write(self.p("rendered.json"), doc).unwrap();
        let cfg = self.p("reyes.yaml");
        let o = self.cmd(&[
            "--config",
            cfg.to_str().unwrap(),
            "render",
            "--document",
            self.p("rendered.json").to_str().unwrap(),
            "--host",
            HOST,
        ]);
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8(o.stdout).unwrap()
    }

    /// Replace `from` by `to` in a config file.
    fn edit(&self, file: &str, from: &str, to: &str) {
        let text = std::fs::read_to_string(self.p(file)).unwrap();
        assert!(text.contains(from), "{from:?} not in {file}");
        std::fs::write(self.p(file), text.replace(from, to)).unwrap();
    }

    /// Add a rule to group web (this host's), so the next leader run publishes a different
    /// policy for it.
    fn change_policy(&self, port: i32) {
        self.aws
            .block(
                self.aws
                    .east
                    .authorize_security_group_ingress()
                    .group_id(&self.estate.web)
                    .ip_permissions(perm("tcp", port, port).ip_ranges(v4("10.7.0.0/16")).build())
                    .send(),
            )
            .unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn ec2_leader_publishes_exactly_the_estate_to_s3() {
    let Some(rig) = Rig::new() else { return };
    let s = &rig.estate;
    let o = rig.lead();
    let log = stderr(&o);
    eprintln!("leader:\n{log}");
    assert!(log.contains("published"), "{log}");

    let doc = rig.aws.document();
    assert_eq!(doc["environment"], "prod");
    assert_eq!(
        doc["groups"],
        expected_groups(s, &[&s.web, &s.lb, &s.db, &s.west]),
        "groups of {}",
        serde_json::to_string_pretty(&doc["groups"]).unwrap()
    );
    let mut networks = vec![
        json!({"id": s.vpc_a, "cidrs": ["10.1.0.0/16", "10.11.0.0/16", s.v6_block]}),
        json!({"id": s.vpc_b, "cidrs": ["10.2.0.0/16"]}),
        json!({"id": s.vpc_c, "cidrs": ["10.3.0.0/16"]}),
    ];
    networks.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    assert_eq!(doc["networks"], Value::Array(networks));
    let mut pls = vec![
        json!({"id": s.pl4, "cidrs": ["192.0.2.0/24", "198.51.100.0/24"]}),
        json!({"id": s.pl6, "cidrs": ["2001:db8:100::/48"]}),
    ];
    pls.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    assert_eq!(doc["prefix_lists"], Value::Array(pls));
    // Nothing in this estate is unresolvable.
    assert!(!log.contains("not in the inventory"), "{log}");

    // The document object is gzipped, with its digest and signature in its metadata; the
    // SDK hands out the gzip bytes as stored (it does not decode Content-Encoding: gzip).
    let (body, _, doc_meta) = rig.aws.get(KEY).unwrap();
    assert!(
        reyes::fsutil::is_gzip(&body),
        "the SDK returned decoded bytes"
    );
    let head = rig
        .aws
        .block(rig.aws.s3.head_object().bucket(BUCKET).key(KEY).send())
        .unwrap();
    assert_eq!(head.content_encoding(), Some("gzip"));
    assert_eq!(head.content_type(), Some("application/json"));
    let bytes = gunzip(&body);
    assert!(
        body.len() * 3 < bytes.len(),
        "{} -> {}",
        bytes.len(),
        body.len()
    );
    // The signature object carries the document's digest; gpg-style verification passes.
    let (sig, _, meta) = rig.aws.get(&format!("{KEY}.sig")).unwrap();
    let digest = reyes::store::s3::digest(&bytes);
    assert_eq!(meta.get("document-sha256"), Some(&digest));
    assert_eq!(doc_meta.get("document-sha256"), Some(&digest));
    let (want, pinned) = reyes::store::s3::document_metadata(&bytes, &sig);
    assert!(pinned.is_none(), "one signature fits in metadata");
    assert_eq!(
        doc_meta,
        want.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    );
    std::fs::write(rig.p("doc.json"), &bytes).unwrap();
    std::fs::write(rig.p("doc.json.sig"), &sig).unwrap();
    let cfg = rig.p("reyes.yaml");
    let v = rig.cmd(&[
        "--config",
        cfg.to_str().unwrap(),
        "verify",
        "--document",
        rig.p("doc.json").to_str().unwrap(),
        "--signature",
        rig.p("doc.json.sig").to_str().unwrap(),
    ]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn vpc_filter_and_unresolvable_references_are_reported_and_match_nothing() {
    let Some(rig) = Rig::new() else { return };
    let s = &rig.estate;
    // Only VPC A: the groups of B (peered, same region) and C (other region) are not covered.
    rig.config("a-only.yaml", &format!("[{}]", s.vpc_a), "leader", rig.port);
    let o = rig.leader_with("a-only.yaml");
    assert_eq!(code(&o), 0, "{}", text(&o));
    let log = stderr(&o);
    assert!(
        log.contains(&format!("source group {} is not in the inventory", s.db)),
        "the leader reports the cross-VPC reference it cannot resolve: {log}"
    );
    let doc = rig.aws.document();
    assert_eq!(doc["groups"], expected_groups(s, &[&s.web, &s.lb]));
    assert_eq!(
        doc["networks"],
        json!([{"id": s.vpc_a, "cidrs": ["10.1.0.0/16", "10.11.0.0/16", s.v6_block]}])
    );

    // Without a VPC filter every VPC is read, moto's default VPCs included.
    rig.config("all.yaml", "[]", "leader", rig.port);
    let o = rig.leader_with("all.yaml");
    assert_eq!(code(&o), 0, "{}", text(&o));
    let doc = rig.aws.document();
    let ids: Vec<&str> = doc["networks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    for v in [&s.vpc_a, &s.vpc_b, &s.vpc_c] {
        assert!(ids.contains(&v.as_str()), "{ids:?}");
    }
    assert!(
        ids.len() >= 5,
        "the default VPC of each region too: {ids:?}"
    );
}

#[test]
fn follower_applies_from_s3_and_polls_with_if_none_match() {
    if !netns_available() {
        return;
    }
    let Some(rig) = Rig::new() else { return };
    let ns = Netns::new("s3");
    let _fwd = forward_into(&ns, rig.port);
    rig.lead();

    // First run: applied, exactly what `render` prints for this host.
    let o = rig.follower_in(&ns, "reyes.yaml");
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(stderr(&o).contains("applied"), "{}", text(&o));
    let (doc, etag, _) = rig.aws.get(KEY).unwrap();
    let live = ns.nft_list_table("inet", "reyes").expect("table applied");
    assert_eq!(
        normalise(&live),
        normalise(table_block(&rig.render(&gunzip(&doc)))),
        "the live table is what render prints"
    );
    // Members of web (this host's group; nft merges adjacent addresses), of lb and of db (the
    // sources of web's rules, db in the peered VPC).
    for member in [
        "10.1.1.10/31",
        "10.1.1.50/31",
        "10.1.1.30",
        "10.2.1.10",
        &rig.estate.v6("20"),
    ] {
        assert!(live.contains(member), "{member} in\n{live}");
    }
    let sv: Value =
        serde_json::from_slice(&std::fs::read(rig.p("state/store-version.json")).unwrap()).unwrap();
    assert_eq!(sv["version"], json!(etag));
    let applied = rig.applied();

    // Second run, nothing changed: S3 answers 304 and nothing else happens.
    let o = rig.follower_in(&ns, "reyes.yaml");
    assert_eq!(code(&o), 0, "{}", text(&o));
    let log = stderr(&o);
    eprintln!("second follower run:\n{log}");
    assert!(log.contains("not modified"), "{log}");
    assert!(
        !log.contains("applied") && !log.contains("nothing to change"),
        "{log}"
    );
    assert_eq!(rig.applied(), applied, "state untouched");
    assert_eq!(ns.nft_list_table("inet", "reyes").unwrap(), live);

    // A changed policy is fetched and applied.
    rig.change_policy(8443);
    rig.lead();
    let o = rig.follower_in(&ns, "reyes.yaml");
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(stderr(&o).contains("applied"), "{}", text(&o));
    assert!(!stderr(&o).contains("not modified"), "{}", text(&o));
    let live2 = ns.nft_list_table("inet", "reyes").unwrap();
    assert_ne!(live2, live);
    assert!(live2.contains("8443"), "{live2}");
    assert!(rig.applied()["serial"].as_u64() > applied["serial"].as_u64());
}

#[test]
fn follower_refusals_from_s3_leave_the_live_rules_unchanged() {
    if !netns_available() {
        return;
    }
    let Some(rig) = Rig::new() else { return };
    let ns = Netns::new("s3r");
    let _fwd = forward_into(&ns, rig.port);
    let sig_key = format!("{KEY}.sig");
    rig.lead();
    let o = rig.follower_in(&ns, "reyes.yaml");
    assert_eq!(code(&o), 0, "{}", text(&o));
    let live = ns.nft_list_table("inet", "reyes").unwrap();
    let applied = rig.applied();
    let (_, _, _) = rig.aws.get(KEY).unwrap();
    let (old_sig, _, old_meta) = rig.aws.get(&sig_key).unwrap();

    let unchanged = |what: &str| {
        assert_eq!(
            ns.nft_list_table("inet", "reyes").as_deref(),
            Some(live.as_str()),
            "{what}: live rules changed"
        );
        assert_eq!(rig.applied(), applied, "{what}: state changed");
    };

    // A new document object without signature metadata (another tool's upload) and no
    // signature object: refused (3).
    rig.change_policy(8001);
    rig.lead();
    let (new_body, _, new_meta) = rig.aws.get(KEY).unwrap();
    let (new_sig, _, new_sig_meta) = rig.aws.get(&sig_key).unwrap();
    rig.aws.put(KEY, &new_body, &BTreeMap::new());
    rig.aws.delete(&sig_key);
    let o = rig.follower_in(&ns, "reyes.yaml");
    assert_eq!(code(&o), 3, "missing signature: {}", text(&o));
    assert!(stderr(&o).contains("does not exist"), "{}", text(&o));
    unchanged("missing signature");

    // Such a document with the signature object of another upload, with its digest metadata:
    // the torn pair is read again a few times, then refused (3) without verifying anything.
    rig.aws.put(&sig_key, &old_sig, &old_meta);
    let o = rig.follower_in(&ns, "reyes.yaml");
    assert_eq!(code(&o), 3, "torn pair: {}", text(&o));
    assert!(
        stderr(&o).contains("signature of another document"),
        "{}",
        text(&o)
    );
    unchanged("signature of another upload");

    // The same without the metadata (uploaded by another tool): the signature check refuses (3).
    rig.aws.put(&sig_key, &old_sig, &BTreeMap::new());
    let o = rig.follower_in(&ns, "reyes.yaml");
    assert_eq!(code(&o), 3, "bad signature: {}", text(&o));
    assert!(stderr(&o).contains("signature refused"), "{}", text(&o));
    unchanged("signature of another upload, no metadata");

    // The metadata signature of another document: refused (3), .sig not even read.
    let mut forged = new_meta.clone();
    forged.insert(
        "signature".into(),
        reyes::store::s3::document_metadata(b"", &old_sig).0[1]
            .1
            .clone(),
    );
    rig.aws.put(KEY, &new_body, &forged);
    rig.aws.put(&sig_key, &new_sig, &new_sig_meta);
    let o = rig.follower_in(&ns, "reyes.yaml");
    assert_eq!(code(&o), 3, "metadata signature: {}", text(&o));
    assert!(stderr(&o).contains("signature refused"), "{}", text(&o));
    unchanged("metadata signature of another document");

    // A gzip bomb: 64 KiB that decompress past the 64 MiB document limit, with the real
    // document's metadata. Refused (3) as too large, never decompressed further.
    let bomb = reyes::fsutil::gzip(&vec![
        b' ';
        (reyes::document::limits::MAX_DOCUMENT_BYTES + 1)
            as usize
    ]);
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    rig.aws.put(KEY, &bomb, &new_meta);
    let o = rig.follower_in(&ns, "reyes.yaml");
    assert_eq!(code(&o), 3, "gzip bomb: {}", text(&o));
    assert!(
        stderr(&o).contains("decompresses to more than the limit"),
        "{}",
        text(&o)
    );
    unchanged("gzip bomb");
    rig.aws.put(KEY, &new_body, &new_meta);

    // S3 unreachable: a runtime failure (1).
    rig.config("down.yaml", "[]", "leader", free_port());
    let o = rig.follower_in(&ns, "down.yaml");
    assert_eq!(code(&o), 1, "unreachable: {}", text(&o));
    unchanged("S3 unreachable");

    // The publication as the leader made it: applied.
    let o = rig.follower_in(&ns, "reyes.yaml");
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(ns.nft_list_table("inet", "reyes").unwrap().contains("8001"));
}

#[test]
fn hot_spare_leaders_give_identical_policies_and_cause_no_follower_churn() {
    if !netns_available() {
        return;
    }
    let Some(rig) = Rig::new() else { return };
    let ns = Netns::new("spare");
    let _fwd = forward_into(&ns, rig.port);
    let vpcs = format!(
        "[{}, {}, {}]",
        rig.estate.vpc_a, rig.estate.vpc_b, rig.estate.vpc_c
    );
    // Spare 1 shares the primary's key; spare 2 has its own (followers trust both).
    rig.config("spare1.yaml", &vpcs, "leader", rig.port);
    rig.keygen("spare");
    rig.config("spare2.yaml", &vpcs, "spare", rig.port);

    // The same inventory gives the same policy digest, whichever leader reads it.
    let digest = |file: &str| -> String {
        let cfg = rig.p(file);
        let o = rig.cmd(&["--config", cfg.to_str().unwrap(), "leader", "--dry-run"]);
        assert_eq!(code(&o), 0, "{}", text(&o));
        let d: Value = serde_json::from_slice(&o.stdout).unwrap();
        d["policy_digest"].as_str().unwrap().to_string()
    };
    assert_eq!(digest("reyes.yaml"), digest("spare2.yaml"));

    rig.lead();
    let o = rig.follower_in(&ns, "reyes.yaml");
    assert_eq!(code(&o), 0, "{}", text(&o));
    let (_, etag, _) = rig.aws.get(KEY).unwrap();

    // Other leaders with the same inventory find the stored document fresh and publish
    // nothing, whatever key they have (followers trust both): the object and its ETag stay,
    // followers get 304.
    for file in ["reyes.yaml", "spare1.yaml", "spare2.yaml"] {
        let o = rig.leader_with(file);
        assert_eq!(code(&o), 0, "{}", text(&o));
        assert!(
            stderr(&o).contains("not publishing"),
            "{file}: {}",
            text(&o)
        );
    }
    assert_eq!(rig.aws.get(KEY).unwrap().1, etag);
    let o = rig.follower_in(&ns, "reyes.yaml");
    assert!(stderr(&o).contains("not modified"), "{}", text(&o));

    // A spare for which less than half of its own validity is left re-signs the same policy:
    // followers fetch and verify it, but the policy digest is the same, so there is no
    // kernel work; and the primary then finds the spare's document fresh.
    rig.edit("spare2.yaml", "validity: 1h", "validity: 3h");
    let o = rig.leader_with("spare2.yaml");
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(stderr(&o).contains("published"), "{}", text(&o));
    let etag2 = rig.aws.get(KEY).unwrap().1;
    assert_ne!(etag2, etag);
    let live = ns.nft_list_table("inet", "reyes").unwrap();
    let o = rig.follower_in(&ns, "reyes.yaml");
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        stderr(&o).contains("policy unchanged (re-signed); no kernel work"),
        "{}",
        text(&o)
    );
    assert_eq!(ns.nft_list_table("inet", "reyes").unwrap(), live);
    let o = rig.leader_with("reyes.yaml");
    assert!(stderr(&o).contains("not publishing"), "{}", text(&o));
    assert_eq!(rig.aws.get(KEY).unwrap().1, etag2);
    // And the next follower run is a 304 again.
    let o = rig.follower_in(&ns, "reyes.yaml");
    assert!(stderr(&o).contains("not modified"), "{}", text(&o));
}

#[test]
fn leader_fails_cleanly_when_ec2_is_unreachable() {
    let Some(rig) = Rig::new() else { return };
    // EC2 on a closed port: a runtime failure (1), nothing published.
    let cfg = std::fs::read_to_string(rig.p("reyes.yaml")).unwrap();
    let down = cfg.replacen(
        &format!("endpoint: \"http://127.0.0.1:{}\"}}\n  excluded", rig.port),
        &format!(
            "endpoint: \"http://127.0.0.1:{}\"}}\n  excluded",
            free_port()
        ),
        1,
    );
    assert_ne!(cfg, down);
    std::fs::write(rig.p("down.yaml"), down).unwrap();
    let o = rig.leader_with("down.yaml");
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(stderr(&o).contains("EC2 Describe"), "{}", text(&o));
    assert!(rig.aws.get(KEY).is_none());
}

#[test]
fn not_modified_but_expired_is_still_refused() {
    if !netns_available() {
        return;
    }
    let Some(rig) = Rig::new() else { return };
    let ns = Netns::new("s3x");
    let _fwd = forward_into(&ns, rig.port);
    rig.edit("reyes.yaml", "validity: 1h", "validity: 3s");
    rig.lead();
    let o = rig.follower_in(&ns, "reyes.yaml");
    assert_eq!(code(&o), 0, "{}", text(&o));
    let live = ns.nft_list_table("inet", "reyes").unwrap();
    // The leader stops publishing; the object stays as it is, so S3 keeps answering 304.
    std::thread::sleep(Duration::from_secs(4));
    let o = rig.follower_in(&ns, "reyes.yaml");
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(
        stderr(&o).contains("is not modified, and the applied document serial"),
        "{}",
        text(&o)
    );
    assert_eq!(ns.nft_list_table("inet", "reyes").unwrap(), live);
}

#[test]
fn drift_is_repaired_when_s3_answers_not_modified() {
    if !netns_available() {
        return;
    }
    let Some(rig) = Rig::new() else { return };
    let ns = Netns::new("s3d");
    let _fwd = forward_into(&ns, rig.port);
    rig.lead();
    let o = rig.follower_in(&ns, "reyes.yaml");
    assert_eq!(code(&o), 0, "{}", text(&o));
    let live = ns.nft_list_table("inet", "reyes").expect("table applied");
    let applied = rig.applied();

    // The table deleted by someone else: the next run gets 304, looks, and re-applies
    // last-good.
    ns.ok(&["nft", "delete", "table", "inet", "reyes"]);
    let o = rig.follower_in(&ns, "reyes.yaml");
    assert_eq!(code(&o), 0, "{}", text(&o));
    let log = stderr(&o);
    assert!(log.contains("not modified"), "{log}");
    assert!(log.contains("drift") && log.contains("missing"), "{log}");
    assert_eq!(
        ns.nft_list_table("inet", "reyes").as_deref(),
        Some(live.as_str())
    );
    assert_eq!(rig.applied()["serial"], applied["serial"]);

    // A rule added by someone else: 304 again, repaired again. (Elements added to a set are
    // tests/fleet.rs's case; this estate's groups are small enough to be inlined, no sets.)
    ns.ok(&[
        "nft",
        "insert",
        "rule",
        "inet",
        "reyes",
        "input",
        "ip",
        "saddr",
        "192.0.2.99",
        "accept",
    ]);
    let o = rig.follower_in(&ns, "reyes.yaml");
    assert_eq!(code(&o), 0, "{}", text(&o));
    let log = stderr(&o);
    assert!(log.contains("not modified"), "{log}");
    assert!(log.contains("different from what was applied"), "{log}");
    assert_eq!(
        ns.nft_list_table("inet", "reyes").as_deref(),
        Some(live.as_str())
    );

    // Nothing drifted: 304, and nothing else.
    let o = rig.follower_in(&ns, "reyes.yaml");
    let log = stderr(&o);
    assert!(
        log.contains("not modified") && !log.contains("drift"),
        "{log}"
    );
}

#[test]
fn s3_receipt_listing_reads_no_more_than_its_budget_in_all() {
    use reyes::config::HostId;
    use reyes::store::{s3::S3Store, ReceiptLimits, Store, StoreError};
    let Some(rig) = Rig::new() else { return };
    let cfg = reyes::config::S3Config {
        bucket: BUCKET.into(),
        key: "budget/rules.json".into(),
        region: Some(EAST.into()),
        endpoint: Some(format!("http://127.0.0.1:{}", rig.port)),
        allow_http: false,
    };
    let store = S3Store::new(&cfg).unwrap();
    for h in ["a", "b", "c"] {
        let host = HostId::new(h).unwrap();
        store.put_receipt(&host, &[b'x'; 10]).unwrap();
    }
    let limits = ReceiptLimits {
        max_bytes: 64,
        max_count: 10,
        max_total: 20,
    };
    let l = store.receipts(limits).unwrap();
    let names: Vec<_> = l.receipts.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["a.json", "b.json", "c.json"]);
    assert_eq!(l.receipts[0].body.as_ref().unwrap().len(), 10);
    assert_eq!(l.receipts[1].body.as_ref().unwrap().len(), 10);
    let Err(StoreError::TooLarge(e)) = &l.receipts[2].body else {
        panic!(
            "the third receipt is past the budget: {:?}",
            l.receipts[2].body
        )
    };
    assert!(
        e.contains("budget/receipts/c.json") && e.contains("budget of 20 bytes"),
        "{e}"
    );
    let all = store
        .receipts(ReceiptLimits {
            max_total: 30,
            ..limits
        })
        .unwrap();
    assert!(all.receipts.iter().all(|r| r.body.is_ok()));
}

#[test]
fn s3_store_conditional_fetches_and_torn_pairs() {
    use reyes::store::{s3::S3Store, Expect, FetchOutcome, Store, StoreError};
    let Some(rig) = Rig::new() else { return };
    let cfg = reyes::config::S3Config {
        bucket: BUCKET.into(),
        key: "t/rules.json".into(),
        region: Some(EAST.into()),
        endpoint: Some(format!("http://127.0.0.1:{}", rig.port)),
        allow_http: false,
    };
    let store = S3Store::new(&cfg).unwrap();
    assert_eq!(store.describe(), "s3://reyes-test/t/rules.json");
    assert!(matches!(store.fetch(None), Err(StoreError::NotFound(_))));

    store.publish(b"doc-1", b"sig-1").unwrap();
    let FetchOutcome::Fetched(f) = store.fetch(None).unwrap() else {
        panic!("fetched")
    };
    assert_eq!(
        (f.document.as_slice(), f.signature.as_slice()),
        (&b"doc-1"[..], &b"sig-1"[..])
    );
    let etag = f.version.expect("an ETag");
    assert_eq!(store.fetch(Some(&etag)).unwrap(), FetchOutcome::Unchanged);
    assert!(matches!(
        store.fetch(Some("\"other\"")).unwrap(),
        FetchOutcome::Fetched(_)
    ));

    // A document without its signature: the other upload's signature does not match it.
    rig.aws.put("t/rules.json", b"doc-2", &BTreeMap::new());
    let e = store.fetch(Some(&etag)).unwrap_err();
    assert!(matches!(e, StoreError::Mismatched(_)), "{e}");

    // A bad key is a configuration error.
    let bad = reyes::config::S3Config {
        key: "t/".into(),
        ..cfg.clone()
    };
    assert!(matches!(S3Store::new(&bad), Err(StoreError::Config(_))));

    // A reader racing a writer only ever gets matching pairs, whether the signature travels
    // in the document's metadata or (too large for it: every other one here) in its own
    // object named by its digest.
    let sig = |i: usize| {
        let s = format!("sig-{i}");
        if i % 2 == 1 {
            format!("{s:<3000}")
        } else {
            s
        }
    };
    let writer = {
        let store = S3Store::new(&cfg).unwrap();
        std::thread::spawn(move || {
            for i in 0..40 {
                store
                    .publish(format!("doc-{i}").as_bytes(), sig(i).as_bytes())
                    .unwrap();
            }
        })
    };
    let mut matched = [0, 0];
    while !writer.is_finished() || matched[0] == 0 {
        let FetchOutcome::Fetched(f) = store.fetch(None).unwrap() else {
            panic!("fetched")
        };
        let (d, s) = (
            String::from_utf8(f.document).unwrap(),
            String::from_utf8(f.signature).unwrap(),
        );
        let i: usize = d.trim_start_matches("doc-").parse().unwrap();
        assert_eq!(s, sig(i), "torn pair");
        assert_eq!(f.signature_object.is_some(), i % 2 == 1);
        matched[i % 2] += 1;
    }
    writer.join().unwrap();
    eprintln!("matched pairs (metadata, pinned): {matched:?}");

    // A conditional publication removes the pinned signature object it replaces.
    let FetchOutcome::Fetched(seen) = store.fetch(None).unwrap() else {
        panic!("fetched")
    };
    let pinned = seen
        .signature_object
        .clone()
        .expect("the last one is pinned");
    assert!(rig.aws.get(&pinned).is_some());
    store
        .publish_expecting(b"doc-x", b"sig-x", Expect::Current(&seen))
        .unwrap();
    assert!(rig.aws.get(&pinned).is_none(), "{pinned} removed");
    // A document object naming a signature object that is not there: read again, then
    // refused as unsigned.
    let (body, _, mut meta) = rig.aws.get("t/rules.json").unwrap();
    meta.remove("signature");
    meta.insert("signature-sha256".into(), "ab".repeat(32));
    rig.aws.put("t/rules.json", &body, &meta);
    let e = store.fetch(None).unwrap_err();
    assert!(matches!(e, StoreError::MissingSignature(_)), "{e}");
    // ... or a name that is not a digest: refused as corrupt, nothing else read.
    meta.insert("signature-sha256".into(), "../../elsewhere".into());
    rig.aws.put("t/rules.json", &body, &meta);
    let e = store.fetch(None).unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e}");
}

#[test]
fn s3_publications_are_conditional_on_what_was_read() {
    use reyes::store::{s3::S3Store, Expect, FetchOutcome, Store, StoreError};
    let Some(rig) = Rig::new() else { return };
    let cfg = reyes::config::S3Config {
        bucket: BUCKET.into(),
        key: "c/rules.json".into(),
        region: Some(EAST.into()),
        endpoint: Some(format!("http://127.0.0.1:{}", rig.port)),
        allow_http: false,
    };
    let a = S3Store::new(&cfg).unwrap();
    let b = S3Store::new(&cfg).unwrap();
    // Two leaders both saw an empty store: only the first creates the document.
    a.publish_expecting(b"doc-a", b"sig-a", Expect::Absent)
        .unwrap();
    let e = b
        .publish_expecting(b"doc-b", b"sig-b", Expect::Absent)
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    // Both read doc-a; the first to publish wins, the second gets a conflict (HTTP 412) and
    // writes nothing.
    let FetchOutcome::Fetched(seen) = b.fetch(None).unwrap() else {
        panic!("fetched")
    };
    a.publish_expecting(b"doc-a2", b"sig-a2", Expect::Current(&seen))
        .unwrap();
    let e = b
        .publish_expecting(b"doc-b2", b"sig-b2", Expect::Current(&seen))
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    assert!(e.to_string().contains("412"), "{e}");
    let FetchOutcome::Fetched(now) = a.fetch(None).unwrap() else {
        panic!("fetched")
    };
    assert_eq!(
        (now.document.as_slice(), now.signature.as_slice()),
        (&b"doc-a2"[..], &b"sig-a2"[..])
    );
    // A co-signature rewrites the same document (the same bytes, so the same ETag) with the
    // longer signature.
    b.publish_signature(&now, b"sig-a2+b").unwrap();
    let FetchOutcome::Fetched(cosigned) = a.fetch(None).unwrap() else {
        panic!("fetched")
    };
    assert_eq!(cosigned.signature, b"sig-a2+b");
    assert_eq!(cosigned.version, now.version);
    // It lands only on the document it was made against: after a new publication, a
    // co-signature of the old one is a conflict, and nothing is written.
    a.publish_expecting(b"doc-a3", b"sig-a3", Expect::Current(&cosigned))
        .unwrap();
    let e = b.publish_signature(&now, b"sig-a2+c").unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    let FetchOutcome::Fetched(last) = a.fetch(None).unwrap() else {
        panic!("fetched")
    };
    assert_eq!(
        (last.document.as_slice(), last.signature.as_slice()),
        (&b"doc-a3"[..], &b"sig-a3"[..])
    );
}

// ---------------------------------------------------------------------------------------------
// Leaders in threads of this process, on the example inventory

/// Keys, keyring and inventories for leaders that publish to `race/rules.json` in moto.
struct Leaders {
    dir: tempfile::TempDir,
    port: u16,
}

impl Leaders {
    fn new(port: u16, keys: &[&str]) -> Leaders {
        let dir = tempfile::tempdir().unwrap();
        let inv = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/inventory.yaml");
        let text = std::fs::read_to_string(inv).unwrap();
        std::fs::write(dir.path().join("inventory.yaml"), &text).unwrap();
        // Another leader's view: one subnet differs, so the two always disagree.
        let other = text.replace("10.50.0.0/24", "10.51.0.0/24");
        assert_ne!(other, text);
        std::fs::write(dir.path().join("inventory-b.yaml"), other).unwrap();
        std::fs::create_dir(dir.path().join("keyring")).unwrap();
        for k in keys {
            let (secret, public, _) = reyes::signing::keygen(k, None).unwrap();
            std::fs::write(dir.path().join(format!("{k}.secret.asc")), secret).unwrap();
            std::fs::write(dir.path().join(format!("keyring/{k}.asc")), public).unwrap();
        }
        Leaders { dir, port }
    }

    fn config(&self, key: &str, inventory: &str) -> reyes::config::Config {
        let text = format!(
            "environment: prod
store:
  s3: {{bucket: {BUCKET}, key: race/rules.json, region: {EAST}, endpoint: \"http://127.0.0.1:{}\"}}
signing:
  key: {key}.secret.asc
  keyring: keyring
  validity: 1h
inventory:
  file: {inventory}
  dynamic_subnets: [workers]
",
            self.port
        );
        let path = self.dir.path().join(format!("{key}.yaml"));
        std::fs::write(&path, text).unwrap();
        reyes::config::Config::load(&path).unwrap()
    }
}

#[test]
fn s3_two_leaders_racing_never_show_a_follower_a_torn_pair() {
    use reyes::leader::{self, LeaderOptions, LeaderOutcome};
    use reyes::store::{FetchOutcome, StoreError};
    use std::sync::atomic::AtomicUsize;
    let Some((port, _guard)) = moto() else { return };
    let aws = Aws::new(port);
    let l = Leaders::new(port, &["a", "b"]);
    let (a, b) = (
        l.config("a", "inventory.yaml"),
        l.config("b", "inventory-b.yaml"),
    );
    let trust = reyes::follower::trust_root(&a).unwrap();
    let store = reyes::store::open(&a.store).unwrap();
    let running = AtomicUsize::new(2);
    let now = std::time::SystemTime::now;
    let (published, conflicts, verified) = std::thread::scope(|s| {
        let leaders: Vec<_> = [&a, &b]
            .into_iter()
            .map(|cfg| {
                let running = &running;
                s.spawn(move || {
                    let _done = Done(running);
                    let (mut published, mut conflicts) = (0, 0);
                    for _ in 0..12 {
                        match leader::run_once(cfg, &LeaderOptions::default(), now()) {
                            Ok(LeaderOutcome::Published { .. }) => published += 1,
                            // Its own publication, when the other has not run since.
                            Ok(LeaderOutcome::Fresh { .. }) => {}
                            Ok(other) => panic!("{other:?}"),
                            // The loser of a conditional write writes nothing.
                            Err(f) => {
                                assert!(f.to_string().contains("changed since"), "{f}");
                                conflicts += 1;
                            }
                        }
                    }
                    (published, conflicts)
                })
            })
            .collect();
        let (mut verified, mut last_serial) = (0, 0);
        while running.load(Ordering::SeqCst) > 0 || verified == 0 {
            let f = match store.fetch(None) {
                Ok(FetchOutcome::Fetched(f)) => f,
                Err(StoreError::NotFound(_)) => continue,
                other => panic!("fetch during the race: {other:?}"),
            };
            let v = reyes::follower::verify_document(
                &trust,
                &f.document,
                &f.signature,
                "prod",
                now(),
                true,
            )
            .unwrap_or_else(|e| panic!("a fetch during the race does not verify: {e}"));
            assert!(v.document.serial >= last_serial, "serial went back");
            last_serial = v.document.serial;
            verified += 1;
        }
        let r: Vec<(usize, usize)> = leaders.into_iter().map(|h| h.join().unwrap()).collect();
        ([r[0].0, r[1].0], r[0].1 + r[1].1, verified)
    });
    eprintln!("published {published:?}, conflicts {conflicts}, verified fetches {verified}");
    assert!(published.iter().all(|&n| n > 0), "{published:?}");
    // What is left is one consistent publication, readable by gpg users too.
    let (body, _, meta) = aws.get("race/rules.json").unwrap();
    let (sig, _, sig_meta) = aws.get("race/rules.json.sig").unwrap();
    let doc = gunzip(&body);
    let digest = reyes::store::s3::digest(&doc);
    assert_eq!(meta.get("document-sha256"), Some(&digest));
    assert_eq!(sig_meta.get("document-sha256"), Some(&digest));
    trust.verify(&doc, &sig).unwrap();
}

#[test]
fn s3_cosignatures_too_large_for_metadata_move_to_a_pinned_object() {
    use reyes::leader::{self, LeaderOptions, LeaderOutcome};
    use reyes::store::FetchOutcome;
    let Some((port, _guard)) = moto() else { return };
    let aws = Aws::new(port);
    let names: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    let keys: Vec<&str> = names.iter().map(String::as_str).collect();
    let l = Leaders::new(port, &keys);
    let cfgs: Vec<_> = keys.iter().map(|k| l.config(k, "inventory.yaml")).collect();
    let trust = reyes::follower::trust_root(&cfgs[0]).unwrap();
    let store = reyes::store::open(&cfgs[0].store).unwrap();
    let t = std::time::SystemTime::now();
    let LeaderOutcome::Published { serial, .. } =
        leader::run_once(&cfgs[0], &LeaderOptions::default(), t).unwrap()
    else {
        panic!("published")
    };
    let cosign = LeaderOptions {
        cosign: true,
        ..Default::default()
    };
    let pinned_objects = || {
        let out = aws
            .block(
                aws.s3
                    .list_objects_v2()
                    .bucket(BUCKET)
                    .prefix("race/rules.json.sig.")
                    .send(),
            )
            .unwrap();
        out.contents().len()
    };
    let mut modes = Vec::new();
    for (i, cfg) in cfgs.iter().enumerate().skip(1) {
        assert_eq!(
            leader::run_once(cfg, &cosign, t + Duration::from_secs(i as u64)).unwrap(),
            LeaderOutcome::Cosigned { serial }
        );
        // Followers read all i + 1 signatures, wherever they are.
        let FetchOutcome::Fetched(f) = store.fetch(None).unwrap() else {
            panic!("fetched")
        };
        let v = reyes::follower::verify_document(
            &trust,
            &f.document,
            &f.signature,
            "prod",
            t + Duration::from_secs(i as u64),
            true,
        )
        .unwrap();
        assert_eq!(v.signer.fingerprints.len(), i + 1);
        // In metadata while it fits, else in one object named by its digest (the previous
        // one removed).
        let (_, _, meta) = aws.get("race/rules.json").unwrap();
        let (want, pinned) = reyes::store::s3::document_metadata(&f.document, &f.signature);
        let want: BTreeMap<String, String> =
            want.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(meta, want, "after co-signer {i}");
        let size: usize = meta.iter().map(|(k, v)| 11 + k.len() + v.len()).sum();
        assert!(size <= reyes::store::s3::METADATA_LIMIT, "{size}");
        match &pinned {
            Some(d) => {
                assert_eq!(
                    f.signature_object.as_deref(),
                    Some(format!("race/rules.json.sig.{d}").as_str())
                );
                assert_eq!(pinned_objects(), 1);
            }
            None => assert_eq!(pinned_objects(), 0),
        }
        modes.push(pinned.is_some());
        // gpg users' .sig holds the same signatures.
        assert_eq!(aws.get("race/rules.json.sig").unwrap().0, f.signature);
    }
    eprintln!("pinned after each co-signature: {modes:?}");
    assert!(!modes[0] && modes[modes.len() - 1], "{modes:?}");
}

/// Counts a racing thread out when it ends, panicking or not.
struct Done<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
