//! The AWS CLI JSON importer against realistic `aws ec2 describe-*` output
//! (tests/fixtures/aws/): the document it leads to, exactly; determinism under any order of
//! files and lists; and errors that name the file.

mod support;

use std::path::Path;

use reyes::config::{AwsJsonInput, Config};
use reyes::document::{self, Document};
use reyes::inventory::{self, aws_json, Inventory};
use serde_json::json;
use support::{sg, PL_MONITORING, PL_VPN6};

#[test]
fn aws_fixtures_give_exactly_this_document() {
    let built = support::aws_built();
    let doc = &built.document;
    assert_eq!(doc.format, "reyes/v1");
    assert_eq!(doc.environment, "prod");
    assert_eq!(doc.serial, 42);
    assert_eq!(doc.issued_at, "2026-01-01T00:00:00Z");
    assert_eq!(doc.not_after, "2026-01-01T01:00:00Z");
    assert_eq!(doc.policy_digest, doc.policy.digest());

    // What each group became, written out in full. Group ids sort as strings; rules sort by
    // protocol (tcp, udp, icmp, icmpv6, all, numbers), then ports, then ICMP type and code.
    let expected = json!({
        "networks": [
            // The disassociated 10.22.0.0/16 block is left out.
            {"id": "vpc-0a4c8e2f3b5d7a901", "cidrs": ["10.20.0.0/16", "10.21.0.0/16", "2600:1f18:4a3:6e00::/56"]},
            {"id": "vpc-0b7d1f3a5c9e2b468", "cidrs": ["10.30.0.0/16"]},
            {"id": "vpc-0c1e3a5b7d9f24680", "cidrs": ["172.31.0.0/16"]},
        ],
        // Only the prefix lists that rules use; the AWS-managed S3 list is not.
        "prefix_lists": [
            {"id": PL_MONITORING, "cidrs": ["10.50.0.0/24", "10.50.1.0/24", "10.50.8.16/28"]},
            {"id": PL_VPN6, "cidrs": ["fd00:ab:1::/48", "fd00:ab:2::/48"]},
        ],
        "groups": [
            {
                "id": sg::DEFAULT_APP, "name": "default", "network": "vpc-0a4c8e2f3b5d7a901",
                "members": ["10.20.1.20", "2600:1f18:4a3:6e01::20"],
                "ingress": [
                    {"proto": "all", "from": {"cidrs": [], "groups": [sg::DEFAULT_APP], "prefix_lists": []}},
                ],
            },
            {
                // The ALB's interface belongs to no instance (requester-managed).
                "id": sg::ALB, "name": "app-alb", "network": "vpc-0a4c8e2f3b5d7a901",
                "members": ["10.20.0.37", "2600:1f18:4a3:6e00:8c2:4f1a:9b3e:25"],
                "ingress": [
                    {"proto": "tcp", "ports": "80", "from": {"cidrs": ["0.0.0.0/0", "::/0"], "groups": [], "prefix_lists": []}},
                    {"proto": "tcp", "ports": "443", "from": {"cidrs": ["0.0.0.0/0", "::/0"], "groups": [], "prefix_lists": []}},
                ],
            },
            {
                // Public IPs (Association) are not members: only private addresses are.
                "id": sg::BASTION, "name": "ops-bastion", "network": "vpc-0b7d1f3a5c9e2b468",
                "members": ["10.30.0.4"],
                "ingress": [
                    {"proto": "tcp", "ports": "22", "from": {"cidrs": ["203.0.113.0/24", "2001:db8:1234::/48"], "groups": [], "prefix_lists": []}},
                    // icmp with FromPort/ToPort -1: any type, any code.
                    {"proto": "icmp", "from": {"cidrs": ["10.0.0.0/8"], "groups": [], "prefix_lists": []}},
                ],
            },
            {
                "id": sg::MONITORING, "name": "ops-monitoring", "network": "vpc-0b7d1f3a5c9e2b468",
                "members": ["10.30.0.50", "10.30.0.51"],
                "ingress": [
                    {"proto": "tcp", "ports": "0-65535", "from": {"cidrs": [], "groups": [sg::BASTION], "prefix_lists": []}},
                    {"proto": "tcp", "ports": "3000", "from": {"cidrs": ["10.30.0.0/24"], "groups": [], "prefix_lists": [PL_VPN6]}},
                    // A group in the other (peered) VPC.
                    {"proto": "tcp", "ports": "9090", "from": {"cidrs": [], "groups": [sg::WEB], "prefix_lists": []}},
                ],
            },
            {
                "id": sg::DEFAULT_SHARED, "name": "default", "network": "vpc-0b7d1f3a5c9e2b468",
                "members": [],
                "ingress": [
                    {"proto": "all", "from": {"cidrs": [], "groups": [sg::DEFAULT_SHARED], "prefix_lists": []}},
                ],
            },
            {
                // web-1 (secondary IPv4s, two IPv6s; also in the excluded debug-open), web-2,
                // and a spare interface attached to nothing.
                "id": sg::WEB, "name": "app-web", "network": "vpc-0a4c8e2f3b5d7a901",
                "members": [
                    "10.20.1.10", "10.20.1.11", "10.20.1.12", "10.20.1.20", "10.20.1.99",
                    "2600:1f18:4a3:6e01::10", "2600:1f18:4a3:6e01::11", "2600:1f18:4a3:6e01::20",
                ],
                "ingress": [
                    // The bastion's group is in the peered VPC: resolved like any other.
                    {"proto": "tcp", "ports": "22", "from": {"cidrs": [], "groups": [sg::BASTION], "prefix_lists": []}},
                    {"proto": "tcp", "ports": "443", "from": {"cidrs": [], "groups": [sg::ALB], "prefix_lists": []}},
                    // Self-reference.
                    {"proto": "tcp", "ports": "8000-8100", "from": {"cidrs": [], "groups": [sg::WEB], "prefix_lists": []}},
                    {"proto": "tcp", "ports": "9100", "from": {"cidrs": [], "groups": [], "prefix_lists": [PL_MONITORING]}},
                    // tcp 80 from legacy-nat (excluded) is gone: it had no other source.
                    {"proto": "icmp", "icmp_type": 3, "icmp_code": 4, "from": {"cidrs": ["0.0.0.0/0"], "groups": [], "prefix_lists": []}},
                    {"proto": "icmp", "icmp_type": 8, "from": {"cidrs": ["10.0.0.0/8"], "groups": [], "prefix_lists": []}},
                    {"proto": "icmpv6", "icmp_type": 128, "from": {"cidrs": ["2600:1f18:4a3:6e00::/56"], "groups": [], "prefix_lists": []}},
                ],
            },
            {
                // One instance, two interfaces.
                "id": sg::DB, "name": "app-db", "network": "vpc-0a4c8e2f3b5d7a901",
                "members": ["10.20.2.30", "10.20.2.31"],
                "ingress": [
                    {"proto": "tcp", "ports": "0-65535", "from": {"cidrs": [], "groups": [sg::DB], "prefix_lists": []}},
                    // The partner account's group (not in the inventory) is dropped from this
                    // rule, and the 6432 rule it was the only source of is gone.
                    {"proto": "tcp", "ports": "5432", "from": {"cidrs": [], "groups": [sg::WEB, sg::WORKERS], "prefix_lists": []}},
                    {"proto": "udp", "ports": "60000-61000", "from": {"cidrs": [], "groups": [sg::BASTION], "prefix_lists": []}},
                ],
            },
            {
                // The worker's address and delegated /28, plus the whole dynamic subnet
                // `workers` (IPv4 and IPv6).
                "id": sg::WORKERS, "name": "app-workers", "network": "vpc-0a4c8e2f3b5d7a901",
                "members": [
                    "10.21.8.0/22", "10.21.8.15", "10.21.9.16/28",
                    "2600:1f18:4a3:6e08::/64", "2600:1f18:4a3:6e08::15",
                ],
                "ingress": [
                    {"proto": "tcp", "ports": "8080", "from": {"cidrs": [], "groups": [sg::ALB], "prefix_lists": []}},
                    // tcp 9000-9010 from debug-open (excluded) is gone.
                    {"proto": "udp", "ports": "8125", "from": {"cidrs": ["10.20.0.0/16", "10.21.0.0/16"], "groups": [], "prefix_lists": []}},
                    {"proto": "all", "from": {"cidrs": [], "groups": [sg::WORKERS], "prefix_lists": []}},
                ],
            },
            {
                "id": sg::VPN_GW, "name": "app-vpn-gw", "network": "vpc-0a4c8e2f3b5d7a901",
                "members": ["10.20.0.10"],
                "ingress": [
                    {"proto": "tcp", "ports": "179", "from": {"cidrs": ["198.51.100.1"], "groups": [], "prefix_lists": []}},
                    {"proto": "udp", "ports": "500", "from": {"cidrs": ["198.51.100.0/24"], "groups": [], "prefix_lists": []}},
                    {"proto": "udp", "ports": "4500", "from": {"cidrs": ["198.51.100.0/24"], "groups": [], "prefix_lists": []}},
                    {"proto": "47", "from": {"cidrs": ["198.51.100.0/24"], "groups": [], "prefix_lists": []}},
                    {"proto": "50", "from": {"cidrs": ["198.51.100.0/24"], "groups": [], "prefix_lists": []}},
                ],
            },
        ],
    });
    let mut expected = expected;
    // Every fixture group keeps EC2's default egress rule: allow all (IPv6 too where the
    // fixture lists the IPv6 one).
    let dual = [sg::ALB, sg::WEB, sg::WORKERS];
    for g in expected["groups"].as_array_mut().unwrap() {
        let v6 = dual.contains(&g["id"].as_str().unwrap());
        let cidrs = if v6 {
            json!(["0.0.0.0/0", "::/0"])
        } else {
            json!(["0.0.0.0/0"])
        };
        g["egress"] =
            json!([{"proto": "all", "to": {"cidrs": cidrs, "groups": [], "prefix_lists": []}}]);
    }
    let got = serde_json::to_value(&doc.policy).unwrap();
    assert_eq!(
        got,
        expected,
        "document policy differs; got:\n{}",
        serde_json::to_string_pretty(&got).unwrap()
    );
}

#[test]
fn leader_warnings_name_what_was_dropped() {
    let built = support::aws_built();
    let expected = [
        format!("group {} ingress[7]: source group {} is excluded; it matches no addresses", sg::WEB, sg::LEGACY),
        format!("group {} ingress[7]: no source left; rule dropped", sg::WEB),
        format!(
            "group {} ingress[0]: source group {} is not in the inventory (another account, region or VPC not covered?); it matches no addresses",
            sg::DB,
            sg::PARTNER
        ),
        format!(
            "group {} ingress[2]: source group {} is not in the inventory (another account, region or VPC not covered?); it matches no addresses",
            sg::DB,
            sg::PARTNER
        ),
        format!("group {} ingress[2]: no source left; rule dropped", sg::DB),
        format!("group {} ingress[2]: source group {} is excluded; it matches no addresses", sg::WORKERS, sg::DEBUG),
        format!("group {} ingress[2]: no source left; rule dropped", sg::WORKERS),
    ];
    assert_eq!(built.warnings, expected);
}

#[test]
fn excluded_and_unknown_groups_are_gone_everywhere() {
    let built = support::aws_built();
    let text = String::from_utf8(built.bytes.clone()).unwrap();
    // Not as groups, not as sources, not as anything: excluded by name, by id, and the other
    // account's group.
    for id in [sg::LEGACY, sg::DEBUG, sg::PARTNER] {
        assert!(!text.contains(id), "{id} is still in the document");
    }
    assert!(!text.contains("legacy-nat") && !text.contains("debug-open"));
    // Nor are the addresses only they held: the NAT instance and any public IP.
    for addr in ["10.20.0.200", "192.0.2.50", "192.0.2.10", "192.0.2.20"] {
        assert!(
            !text.contains(&format!("\"{addr}\"")),
            "{addr} is in the document"
        );
    }
    // And the compiled ruleset for every group has no set or chain for them.
    let all = support::render_cases();
    let aws: Vec<_> = all
        .iter()
        .filter(|c| c.name.starts_with("nft__aws_fixtures__"))
        .collect();
    assert_eq!(aws.len(), 8);
    for case in aws {
        for id in [sg::LEGACY, sg::DEBUG, sg::PARTNER] {
            let part = id.replace('-', "_");
            assert!(!case.script.contains(&part), "{}: {part}", case.name);
        }
    }
}

#[test]
fn cross_vpc_reference_is_resolved_through_peering() {
    let doc = support::aws_built().document;
    let web = doc.policy.group(sg::WEB).unwrap();
    let bastion = doc.policy.group(sg::BASTION).unwrap();
    assert_ne!(web.network, bastion.network);
    let ssh = web
        .ingress
        .iter()
        .find(|r| r.ports.map(|p| p.first) == Some(22))
        .unwrap();
    assert_eq!(ssh.from.groups, [sg::BASTION]);
    assert_eq!(bastion.members, ["10.30.0.4".parse().unwrap()]);
    // And the other way round: monitoring (shared-services) admits app-web (app).
    let mon = doc.policy.group(sg::MONITORING).unwrap();
    assert!(mon.ingress.iter().any(|r| r.from.groups == [sg::WEB]));
}

#[test]
fn the_config_file_reads_the_same_inventory() {
    let cfg = Config::load(&support::aws_dir().join("reyes.yaml")).unwrap();
    let inv_cfg = cfg.inventory.as_ref().unwrap();
    let inv = inventory::load(inv_cfg).unwrap();
    assert_eq!(inv, support::aws_inventory());
    let opts = support::aws_options();
    assert_eq!(inv_cfg.excluded_group_names, opts.excluded_group_names);
    assert_eq!(inv_cfg.excluded_group_ids, opts.excluded_group_ids);
    assert_eq!(inv_cfg.dynamic_subnets, opts.dynamic_subnets);
}

#[test]
fn subnets_keep_their_name_tag() {
    let inv = support::aws_inventory();
    let names: Vec<(&str, Option<&str>)> = inv
        .subnets
        .iter()
        .map(|s| (s.id.as_str(), s.name.as_deref()))
        .collect();
    assert_eq!(
        names,
        [
            ("subnet-0a11c2e3f4a5b6c70", Some("app-public-a")),
            ("subnet-0a22d3f4a5b6c7d81", Some("app-private-a")),
            ("subnet-0a33e4a5b6c7d8e92", Some("app-data-a")),
            ("subnet-0a44f5b6c7d8e9fa3", Some("workers")),
            ("subnet-0b55a6c7d8e9fab04", Some("shared-ops-a")),
            ("subnet-0c66b7d8e9fabc015", None),
        ]
    );
    // A dynamic subnet given by id works like one given by name.
    let mut opts = support::aws_options();
    opts.dynamic_subnets = vec!["subnet-0a44f5b6c7d8e9fa3".into()];
    let by_id = document::build(&inv, &opts).unwrap();
    assert_eq!(by_id.bytes, support::aws_built().bytes);
    // One that matches nothing is reported.
    opts.dynamic_subnets = vec!["no-such-subnet".into()];
    let none = document::build(&inv, &opts).unwrap();
    assert!(none.warnings.contains(
        &"dynamic_subnets: \"no-such-subnet\" matches no subnet in the inventory".to_string()
    ));
    let workers = none.document.policy.group(sg::WORKERS).unwrap();
    let m: Vec<String> = workers.members.iter().map(|c| c.to_string()).collect();
    assert_eq!(m, ["10.21.8.15", "10.21.9.16/28", "2600:1f18:4a3:6e08::15"]);
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

fn shuffle_inventory(inv: &mut Inventory, rng: &mut Rng) {
    rng.shuffle(&mut inv.networks);
    for n in &mut inv.networks {
        rng.shuffle(&mut n.cidrs);
    }
    rng.shuffle(&mut inv.subnets);
    for s in &mut inv.subnets {
        rng.shuffle(&mut s.cidrs);
    }
    rng.shuffle(&mut inv.groups);
    for g in &mut inv.groups {
        rng.shuffle(&mut g.ingress);
        for r in &mut g.ingress {
            rng.shuffle(&mut r.from.groups);
            rng.shuffle(&mut r.from.cidrs);
            rng.shuffle(&mut r.from.prefix_lists);
        }
    }
    rng.shuffle(&mut inv.hosts);
    for h in &mut inv.hosts {
        rng.shuffle(&mut h.addresses);
        rng.shuffle(&mut h.groups);
    }
    rng.shuffle(&mut inv.prefix_lists);
    for p in &mut inv.prefix_lists {
        rng.shuffle(&mut p.cidrs);
    }
}

#[test]
fn any_order_of_files_and_lists_gives_the_same_bytes() {
    let reference = support::aws_built().bytes;
    let opts = support::aws_options();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut changed_order = 0;
    for _ in 0..64 {
        let mut files = support::aws_inputs();
        rng.shuffle(&mut files);
        let mut inv = aws_json::load(&files).unwrap();
        let before = inv.clone();
        shuffle_inventory(&mut inv, &mut rng);
        if inv != before {
            changed_order += 1;
        }
        let built = document::build(&inv, &opts).unwrap();
        assert_eq!(
            String::from_utf8(built.bytes).unwrap(),
            String::from_utf8(reference.clone()).unwrap(),
            "file order {:?}",
            files
                .iter()
                .map(|f| f.path.file_name().unwrap().to_owned())
                .collect::<Vec<_>>()
        );
    }
    assert!(
        changed_order > 60,
        "the shuffles hardly shuffled ({changed_order}/64)"
    );
    // The bytes are a document a follower accepts as is.
    assert_eq!(
        Document::parse(&reference).unwrap(),
        support::aws_built().document
    );
}

fn load_one(dir: &Path, name: &str, text: &str, prefix_list: Option<&str>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let files = [AwsJsonInput {
        path,
        prefix_list: prefix_list.map(str::to_string),
    }];
    aws_json::load(&files)
        .expect_err("should be refused")
        .to_string()
}

#[test]
fn malformed_json_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    // A real fixture with one comma missing, as a truncated copy-paste would leave it.
    let good =
        std::fs::read_to_string(support::aws_dir().join("describe-security-groups.app.json"))
            .unwrap();
    let needle = "\"Description\": \"Web servers behind the ALB\",";
    let broken_line = good
        .lines()
        .position(|l| l.trim() == needle)
        .expect("fixture line")
        + 1;
    let bad = good.replacen(needle, "\"Description\": \"Web servers behind the ALB\"", 1);
    let path = dir.path().join("sgs.json");
    let e = load_one(dir.path(), "sgs.json", &bad, None);
    // serde_json reports the next token, on the line after the missing comma.
    let want = format!("{}:{}:", path.display(), broken_line + 1);
    assert!(e.starts_with(&want), "{e:?} should start with {want:?}");
    assert!(e.contains("expected `,` or `}`"), "{e}");

    // A value of the wrong type is placed the same way.
    let bad = good.replacen("\"FromPort\": 443,", "\"FromPort\": \"https\",", 1);
    let line = good
        .lines()
        .position(|l| l.trim() == "\"FromPort\": 443,")
        .unwrap()
        + 1;
    let e = load_one(dir.path(), "sgs2.json", &bad, None);
    assert!(
        e.starts_with(&format!(
            "{}:{line}:",
            dir.path().join("sgs2.json").display()
        )),
        "{e}"
    );

    // Not JSON at all.
    let e = load_one(dir.path(), "empty.json", "", None);
    assert!(
        e.starts_with(&format!("{}:1:", dir.path().join("empty.json").display())),
        "{e}"
    );
}

#[test]
fn unrecognised_and_ambiguous_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_one(
        dir.path(),
        "instances.json",
        r#"{"Reservations": []}"#,
        None,
    );
    assert!(
        e.starts_with(&dir.path().join("instances.json").display().to_string()),
        "{e}"
    );
    assert!(e.contains("SecurityGroups"), "{e}");
    // Entries whose prefix list is neither in the file name nor given.
    let e = load_one(
        dir.path(),
        "entries.json",
        r#"{"Entries": [{"Cidr": "10.0.0.0/8"}]}"#,
        None,
    );
    assert!(
        e.contains("entries.json") && e.contains("prefix_list"),
        "{e}"
    );
}

#[test]
fn invalid_values_name_the_group_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let good =
        std::fs::read_to_string(support::aws_dir().join("describe-security-groups.app.json"))
            .unwrap();
    let bad = good.replacen(
        "\"CidrIp\": \"198.51.100.1/32\"",
        "\"CidrIp\": \"198.51.100.1/33\"",
        1,
    );
    assert_ne!(bad, good);
    let e = load_one(dir.path(), "sgs.json", &bad, None);
    assert!(
        e.contains(&dir.path().join("sgs.json").display().to_string()),
        "{e}"
    );
    assert!(
        e.contains(&format!("security group {} IpPermissions[4]", sg::VPN_GW)),
        "{e}"
    );
    assert!(e.contains("198.51.100.1/33"), "{e}");
}
