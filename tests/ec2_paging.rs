//! The EC2 source against a local HTTP test double that answers recorded EC2 XML responses:
//! NextToken pages on every call, `RequestLimitExceeded` (503) before success, an error that
//! is not retried, and the request count of a leader run for a large estate. (moto_server does
//! not paginate most describe calls and never throttles, so these cases are covered here.)

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex, Once};

use reyes::config::Ec2Config;
use reyes::inventory::ec2::{self, ReadOptions, RequestCounter};
use reyes::inventory::InventoryError;

static ENV: Once = Once::new();

/// Credentials for the default chain, and nothing that reaches beyond this machine. Set once,
/// before any test of this binary reads the environment.
fn env() {
    ENV.call_once(|| {
        for (k, v) in [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/dev/null"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ] {
            std::env::set_var(k, v);
        }
    });
}

/// One request as the double saw it: the action, its form parameters, the region it was
/// signed for.
#[derive(Debug, Clone)]
struct Request {
    action: String,
    params: BTreeMap<String, String>,
    region: String,
}

type Handler = dyn Fn(&Request, usize) -> (u16, String) + Send + Sync;

/// A tiny HTTP/1.1 server on 127.0.0.1 answering EC2 query requests with `handler(request,
/// nth call of that action)`. Every response closes the connection.
struct Double {
    port: u16,
    log: Arc<Mutex<Vec<Request>>>,
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(h, 16).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

impl Double {
    fn start(handler: Box<Handler>) -> Double {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log: Arc<Mutex<Vec<Request>>> = Arc::default();
        let handler: Arc<Handler> = Arc::from(handler);
        let l = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut len = 0usize;
                let mut region = String::new();
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    let lower = l.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if lower.starts_with("authorization:") {
                        // Credential=AKID/DATE/REGION/ec2/aws4_request
                        if let Some(c) = l.split("Credential=").nth(1) {
                            region = c.split('/').nth(2).unwrap_or("").to_string();
                        }
                    }
                }
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let params: BTreeMap<String, String> = String::from_utf8(body)
                    .unwrap()
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap_or((p, ""));
                        (url_decode(k), url_decode(v))
                    })
                    .collect();
                let req = Request {
                    action: params.get("Action").cloned().unwrap_or_default(),
                    params,
                    region,
                };
                let nth = {
                    let mut log = l.lock().unwrap();
                    let n = log.iter().filter(|r| r.action == req.action).count();
                    log.push(req.clone());
                    n
                };
                let (status, body) = handler(&req, nth);
                let reason = if status == 200 { "OK" } else { "Error" };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: text/xml;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.flush();
            }
        });
        Double { port, log }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }

    fn count(&self, action: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.action == action)
            .count()
    }
}

fn ok(action: &str, inner: &str) -> (u16, String) {
    (
        200,
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<{action}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r-1</requestId>{inner}</{action}Response>"#
        ),
    )
}

fn error(status: u16, code: &str) -> (u16, String) {
    (
        status,
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>{code}</Code><Message>{code} (test double)</Message></Error></Errors><RequestID>r-e</RequestID></Response>"#
        ),
    )
}

fn throttled() -> (u16, String) {
    error(503, "RequestLimitExceeded")
}

fn token(t: Option<&str>) -> String {
    t.map(|t| format!("<nextToken>{t}</nextToken>"))
        .unwrap_or_default()
}

fn items(tag: &str, items: &[String]) -> String {
    format!(
        "<{tag}>{}</{tag}>",
        items
            .iter()
            .map(|i| format!("<item>{i}</item>"))
            .collect::<String>()
    )
}

fn eni(
    id: &str,
    vpc: &str,
    groups: &[&str],
    v4: &[&str],
    v6: &[&str],
    p4: &[&str],
    p6: &[&str],
) -> String {
    format!(
        "<networkInterfaceId>{id}</networkInterfaceId><subnetId>subnet-1</subnetId><vpcId>{vpc}</vpcId>\
         <privateIpAddress>{}</privateIpAddress>{}{}{}{}{}",
        v4[0],
        items(
            "privateIpAddressesSet",
            &v4.iter()
                .map(|a| format!("<privateIpAddress>{a}</privateIpAddress>"))
                .collect::<Vec<_>>()
        ),
        items(
            "ipv6AddressesSet",
            &v6.iter()
                .map(|a| format!("<ipv6Address>{a}</ipv6Address>"))
                .collect::<Vec<_>>()
        ),
        items(
            "ipv4PrefixSet",
            &p4.iter()
                .map(|a| format!("<ipv4Prefix>{a}</ipv4Prefix>"))
                .collect::<Vec<_>>()
        ),
        items(
            "ipv6PrefixSet",
            &p6.iter()
                .map(|a| format!("<ipv6Prefix>{a}</ipv6Prefix>"))
                .collect::<Vec<_>>()
        ),
        items(
            "groupSet",
            &groups
                .iter()
                .map(|g| format!("<groupId>{g}</groupId><groupName>{g}</groupName>"))
                .collect::<Vec<_>>()
        ),
    )
}

fn sg(id: &str, vpc: &str, perms: &[String]) -> String {
    format!(
        "<groupId>{id}</groupId><groupName>name-{id}</groupName><vpcId>{vpc}</vpcId>{}",
        items("ipPermissions", perms)
    )
}

fn perm(proto: &str, from: i32, to: i32, sources: &str) -> String {
    format!(
        "<ipProtocol>{proto}</ipProtocol><fromPort>{from}</fromPort><toPort>{to}</toPort>{sources}"
    )
}

fn cfg(d: &Double, regions: &[&str], vpcs: &[&str]) -> Ec2Config {
    Ec2Config {
        regions: regions.iter().map(|s| s.to_string()).collect(),
        vpcs: vpcs.iter().map(|s| s.to_string()).collect(),
        endpoint: Some(d.endpoint()),
    }
}

/// The recorded estate: every call in two or three pages, two throttled attempts.
fn paged_estate(req: &Request, nth: usize) -> (u16, String) {
    let next = req.params.get("NextToken").map(String::as_str);
    match (req.action.as_str(), next) {
        ("DescribeVpcs", _) if nth == 0 => throttled(),
        ("DescribeVpcs", None) => ok(
            "DescribeVpcs",
            &items(
                "vpcSet",
                &["<vpcId>vpc-1</vpcId><cidrBlock>10.0.0.0/16</cidrBlock>\
                   <cidrBlockAssociationSet>\
                     <item><cidrBlock>10.0.0.0/16</cidrBlock><cidrBlockState><state>associated</state></cidrBlockState></item>\
                     <item><cidrBlock>10.99.0.0/16</cidrBlock><cidrBlockState><state>disassociated</state></cidrBlockState></item>\
                   </cidrBlockAssociationSet>\
                   <ipv6CidrBlockAssociationSet><item><ipv6CidrBlock>2600:1f18:1::/56</ipv6CidrBlock>\
                     <ipv6CidrBlockState><state>associated</state></ipv6CidrBlockState></item></ipv6CidrBlockAssociationSet>"
                    .to_string()],
            ),
        ),
        ("DescribeSecurityGroups", None) => ok(
            "DescribeSecurityGroups",
            &format!(
                "{}{}",
                items(
                    "securityGroupInfo",
                    &[sg(
                        "sg-1",
                        "vpc-1",
                        &[
                            perm(
                                "tcp",
                                443,
                                443,
                                "<groups><item><userId>1</userId><groupId>sg-2</groupId></item></groups>\
                                 <prefixListIds><item><prefixListId>pl-1</prefixListId></item></prefixListIds>",
                            ),
                            perm(
                                "udp",
                                5000,
                                5010,
                                "<ipv6Ranges><item><cidrIpv6>2001:db8::/64</cidrIpv6></item></ipv6Ranges>",
                            ),
                        ],
                    )]
                ),
                token(Some("sg-p2"))
            ),
        ),
        ("DescribeSecurityGroups", Some("sg-p2")) => ok(
            "DescribeSecurityGroups",
            &items(
                "securityGroupInfo",
                &[sg(
                    "sg-2",
                    "vpc-1",
                    &[perm(
                        "icmp",
                        8,
                        -1,
                        "<ipRanges><item><cidrIp>10.0.0.0/8</cidrIp></item></ipRanges>",
                    )],
                )],
            ),
        ),
        ("DescribeNetworkInterfaces", None) => ok(
            "DescribeNetworkInterfaces",
            &format!(
                "{}{}",
                items(
                    "networkInterfaceSet",
                    &[eni(
                        "eni-1",
                        "vpc-1",
                        &["sg-1"],
                        &["10.0.0.10", "10.0.0.11"],
                        &["2600:1f18:1::10"],
                        &["10.0.5.0/28"],
                        &["2600:1f18:1:1::/80"]
                    )]
                ),
                token(Some("eni-p2"))
            ),
        ),
        ("DescribeNetworkInterfaces", Some("eni-p2")) => ok(
            "DescribeNetworkInterfaces",
            &format!(
                "{}{}",
                items(
                    "networkInterfaceSet",
                    &[eni("eni-2", "vpc-1", &["sg-2"], &["10.0.0.20"], &[], &[], &[])]
                ),
                token(Some("eni-p3"))
            ),
        ),
        // The third page is throttled once.
        ("DescribeNetworkInterfaces", Some("eni-p3")) if nth == 2 => throttled(),
        ("DescribeNetworkInterfaces", Some("eni-p3")) => ok(
            "DescribeNetworkInterfaces",
            &items(
                "networkInterfaceSet",
                &[eni(
                    "eni-3",
                    "vpc-1",
                    &["sg-1", "sg-2"],
                    &["10.0.0.30"],
                    &[],
                    &[],
                    &[],
                )],
            ),
        ),
        ("DescribeManagedPrefixLists", None) => ok(
            "DescribeManagedPrefixLists",
            &format!(
                "{}{}",
                items(
                    "prefixListSet",
                    &["<prefixListId>pl-1</prefixListId>".into(), "<prefixListId>pl-unused</prefixListId>".into()]
                ),
                token(Some("pl-p2"))
            ),
        ),
        ("DescribeManagedPrefixLists", Some("pl-p2")) => ok(
            "DescribeManagedPrefixLists",
            &items("prefixListSet", &["<prefixListId>pl-aws-s3</prefixListId>".into()]),
        ),
        ("GetManagedPrefixListEntries", None) => ok(
            "GetManagedPrefixListEntries",
            &format!(
                "{}{}",
                items("entrySet", &["<cidr>192.0.2.0/24</cidr>".into()]),
                token(Some("e-p2"))
            ),
        ),
        ("GetManagedPrefixListEntries", Some("e-p2")) => ok(
            "GetManagedPrefixListEntries",
            &items("entrySet", &["<cidr>198.51.100.0/24</cidr>".into()]),
        ),
        ("DescribeSubnets", None) => ok(
            "DescribeSubnets",
            &items(
                "subnetSet",
                &["<subnetId>subnet-1</subnetId><vpcId>vpc-1</vpcId><cidrBlock>10.0.0.0/24</cidrBlock>\
                   <tagSet><item><key>Name</key><value>dyn</value></item></tagSet>"
                    .into()],
            ),
        ),
        other => panic!("unexpected request {other:?}: {req:?}"),
    }
}

#[test]
fn every_call_is_paginated_and_throttling_is_retried() {
    env();
    let d = Double::start(Box::new(paged_estate));
    let counter = RequestCounter::default();
    let aws = ec2::read(
        &cfg(&d, &["eu-west-1"], &[]),
        &ReadOptions { subnets: true },
        &counter,
    )
    .unwrap();

    // Every page's items arrived.
    let ids = |v: Vec<&str>| v.join(",");
    assert_eq!(
        ids(aws
            .interfaces
            .iter()
            .map(|i| i.network_interface_id.as_str())
            .collect()),
        "eni-1,eni-2,eni-3"
    );
    assert_eq!(
        ids(aws
            .security_groups
            .iter()
            .map(|g| g.group_id.as_str())
            .collect()),
        "sg-1,sg-2"
    );
    assert_eq!(
        aws.prefix_lists.len(),
        1,
        "entries only for the prefix list a rule uses"
    );
    assert_eq!(aws.prefix_lists[0].0, "pl-1");
    assert_eq!(
        ids(aws.prefix_lists[0]
            .1
            .iter()
            .map(|e| e.cidr.as_str())
            .collect()),
        "192.0.2.0/24,198.51.100.0/24"
    );

    // The request count: pages, plus one retry for each throttled attempt.
    let per_action: BTreeMap<String, usize> =
        d.requests().iter().fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r.action.clone()).or_default() += 1;
            m
        });
    let want: BTreeMap<String, usize> = [
        ("DescribeVpcs", 2),
        ("DescribeSecurityGroups", 2),
        ("DescribeNetworkInterfaces", 4),
        ("DescribeSubnets", 1),
        ("DescribeManagedPrefixLists", 2),
        ("GetManagedPrefixListEntries", 2),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(per_action, want);
    assert_eq!(
        counter.get(),
        13,
        "the client-side count agrees with the server's"
    );
    for r in d.requests() {
        assert_eq!(r.region, "eu-west-1");
        if r.action == "DescribeNetworkInterfaces" || r.action == "DescribeSecurityGroups" {
            assert_eq!(
                r.params.get("MaxResults").map(String::as_str),
                Some("1000"),
                "{r:?}"
            );
        }
        assert!(
            !r.params.keys().any(|k| k.starts_with("Filter")),
            "no VPC filter without vpcs: {r:?}"
        );
    }

    // And the one conversion gives the inventory: every address of every page.
    let inv = aws.into_inventory().unwrap();
    let eni1 = inv.hosts.iter().find(|h| h.id == "eni-1").unwrap();
    let a: Vec<String> = eni1.addresses.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        a,
        [
            "10.0.0.10",
            "10.0.0.11",
            "10.0.5.0/28",
            "2600:1f18:1::10",
            "2600:1f18:1:1::/80"
        ]
    );
    let net: Vec<String> = inv.networks[0]
        .cidrs
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(
        net,
        ["10.0.0.0/16", "2600:1f18:1::/56"],
        "a disassociated block does not count"
    );
    assert_eq!(inv.subnets[0].name.as_deref(), Some("dyn"));
}

#[test]
fn vpc_filter_is_sent_on_every_vpc_scoped_call_and_regions_are_read_concurrently() {
    env();
    let d = Double::start(Box::new(|req: &Request, _| {
        let empty = |tag: &str| ok(&req.action, &format!("<{tag}/>"));
        match req.action.as_str() {
            "DescribeVpcs" => empty("vpcSet"),
            "DescribeSecurityGroups" => empty("securityGroupInfo"),
            "DescribeNetworkInterfaces" => empty("networkInterfaceSet"),
            "DescribeManagedPrefixLists" => empty("prefixListSet"),
            other => panic!("unexpected {other}"),
        }
    }));
    let counter = RequestCounter::default();
    ec2::read(
        &cfg(&d, &["us-east-1", "ap-south-1"], &["vpc-a", "vpc-b"]),
        &ReadOptions::default(),
        &counter,
    )
    .unwrap();
    let reqs = d.requests();
    assert_eq!(
        reqs.len(),
        8,
        "4 calls in each of 2 regions, no DescribeSubnets: {reqs:?}"
    );
    let mut regions: Vec<&str> = reqs.iter().map(|r| r.region.as_str()).collect();
    regions.sort();
    regions.dedup();
    assert_eq!(regions, ["ap-south-1", "us-east-1"]);
    for r in &reqs {
        if r.action == "DescribeManagedPrefixLists" {
            continue;
        }
        assert_eq!(
            r.params.get("Filter.1.Name").map(String::as_str),
            Some("vpc-id"),
            "{r:?}"
        );
        assert_eq!(
            r.params.get("Filter.1.Value.1").map(String::as_str),
            Some("vpc-a")
        );
        assert_eq!(
            r.params.get("Filter.1.Value.2").map(String::as_str),
            Some("vpc-b")
        );
    }
}

#[test]
fn an_error_that_is_not_throttling_names_region_and_call() {
    env();
    let d = Double::start(Box::new(|req: &Request, _| match req.action.as_str() {
        "DescribeNetworkInterfaces" => error(403, "UnauthorizedOperation"),
        "DescribeVpcs" => ok("DescribeVpcs", "<vpcSet/>"),
        "DescribeSecurityGroups" => ok("DescribeSecurityGroups", "<securityGroupInfo/>"),
        "DescribeManagedPrefixLists" => ok("DescribeManagedPrefixLists", "<prefixListSet/>"),
        other => panic!("unexpected {other}"),
    }));
    let counter = RequestCounter::default();
    let e = ec2::read(
        &cfg(&d, &["eu-central-1"], &[]),
        &ReadOptions::default(),
        &counter,
    )
    .unwrap_err();
    assert!(matches!(e, InventoryError::Api(_)), "{e:?}");
    let m = e.to_string();
    assert!(
        m.contains("DescribeNetworkInterfaces")
            && m.contains("eu-central-1")
            && m.contains("UnauthorizedOperation"),
        "{m}"
    );
    assert_eq!(d.count("DescribeNetworkInterfaces"), 1, "not retried");
}

/// A synthetic estate of `enis` interfaces and `groups` groups (each group refers to the next
/// one and to one of `pls` prefix lists of `entries` entries), served in pages of MaxResults.
fn synthetic(enis: usize, groups: usize, pls: usize, entries: usize) -> Box<Handler> {
    Box::new(move |req: &Request, _| {
        let max: usize = req
            .params
            .get("MaxResults")
            .map_or(usize::MAX, |m| m.parse().unwrap());
        let start: usize = req
            .params
            .get("NextToken")
            .map_or(0, |t| t.parse().unwrap());
        let page = |total: usize, tag: &str, item: &dyn Fn(usize) -> String| {
            let end = total.min(start.saturating_add(max));
            let list: Vec<String> = (start..end).map(item).collect();
            let next = (end < total).then(|| end.to_string());
            ok(
                &req.action,
                &format!("{}{}", items(tag, &list), token(next.as_deref())),
            )
        };
        match req.action.as_str() {
            "DescribeVpcs" => page(1, "vpcSet", &|_| {
                "<vpcId>vpc-1</vpcId><cidrBlock>10.0.0.0/8</cidrBlock>".into()
            }),
            "DescribeSecurityGroups" => page(groups, "securityGroupInfo", &|i| {
                sg(
                    &format!("sg-{i}"),
                    "vpc-1",
                    &[perm(
                        "tcp",
                        443,
                        443,
                        &format!(
                            "<groups><item><groupId>sg-{}</groupId></item></groups>\
                             <prefixListIds><item><prefixListId>pl-{}</prefixListId></item></prefixListIds>",
                            (i + 1) % groups,
                            i % pls.max(1)
                        ),
                    )],
                )
            }),
            "DescribeNetworkInterfaces" => page(enis, "networkInterfaceSet", &|i| {
                let a = format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255);
                let g = format!("sg-{}", i % groups);
                eni(&format!("eni-{i}"), "vpc-1", &[&g], &[&a], &[], &[], &[])
            }),
            "DescribeManagedPrefixLists" => page(pls, "prefixListSet", &|i| {
                format!("<prefixListId>pl-{i}</prefixListId>")
            }),
            "GetManagedPrefixListEntries" => page(entries, "entrySet", &|i| {
                format!("<cidr>192.0.{}.0/24</cidr>", i % 256)
            }),
            other => panic!("unexpected {other}"),
        }
    })
}

fn pages(n: usize, size: usize) -> usize {
    n.div_ceil(size).max(1)
}

#[test]
fn api_requests_of_a_leader_run_for_n_interfaces_and_groups() {
    env();
    let mut table = Vec::new();
    for (enis, groups, pls, entries) in [(10, 5, 1, 3), (1000, 200, 2, 50), (2500, 1200, 3, 250)] {
        let d = Double::start(synthetic(enis, groups, pls, entries));
        let counter = RequestCounter::default();
        let aws = ec2::read(
            &cfg(&d, &["us-east-1"], &[]),
            &ReadOptions::default(),
            &counter,
        )
        .unwrap();
        assert_eq!(aws.interfaces.len(), enis);
        assert_eq!(aws.security_groups.len(), groups);
        let used_pls = pls.min(groups);
        let want = 1 // DescribeVpcs
            + pages(groups, 1000)
            + pages(enis, 1000)
            + pages(pls, 100)
            + used_pls * pages(entries, 100);
        assert_eq!(counter.get(), want, "{enis} ENIs, {groups} groups");
        assert_eq!(d.requests().len(), want);
        table.push(format!(
            "{enis} ENIs, {groups} groups, {pls} prefix lists of {entries} entries: {want} requests"
        ));
    }
    eprintln!(
        "EC2 requests per leader run and region:\n  {}",
        table.join("\n  ")
    );
}

/// Two regions, each with one VPC, group and interface; the east group admits the west group.
fn two_regions(req: &Request, _: usize) -> (u16, String) {
    let (vpc, cidr, sg_id, eni_id, addr, rules) = match req.region.as_str() {
        "us-east-1" => (
            "vpc-e",
            "10.10.0.0/16",
            "sg-e",
            "eni-e",
            "10.10.0.5",
            vec![perm(
                "tcp",
                443,
                443,
                "<groups><item><groupId>sg-w</groupId><vpcId>vpc-w</vpcId></item></groups>",
            )],
        ),
        "eu-west-1" => (
            "vpc-w",
            "10.20.0.0/16",
            "sg-w",
            "eni-w",
            "10.20.0.5",
            vec![],
        ),
        other => panic!("unexpected region {other}"),
    };
    match req.action.as_str() {
        "DescribeVpcs" => ok(
            "DescribeVpcs",
            &items(
                "vpcSet",
                &[format!("<vpcId>{vpc}</vpcId><cidrBlock>{cidr}</cidrBlock>")],
            ),
        ),
        "DescribeSecurityGroups" => ok(
            "DescribeSecurityGroups",
            &items("securityGroupInfo", &[sg(sg_id, vpc, &rules)]),
        ),
        "DescribeNetworkInterfaces" => ok(
            "DescribeNetworkInterfaces",
            &items(
                "networkInterfaceSet",
                &[eni(eni_id, vpc, &[sg_id], &[addr], &[], &[], &[])],
            ),
        ),
        "DescribeManagedPrefixLists" => ok("DescribeManagedPrefixLists", "<prefixListSet/>"),
        other => panic!("unexpected {other}"),
    }
}

fn build(aws: reyes::inventory::aws::AwsInventory) -> reyes::document::Built {
    let inv = aws.into_inventory().unwrap();
    reyes::document::build(
        &inv,
        &reyes::document::BuildOptions {
            environment: "prod".into(),
            serial: 1,
            issued_at: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
            validity: std::time::Duration::from_secs(3600),
            excluded_group_names: vec![],
            excluded_group_ids: vec![],
            dynamic_subnets: vec![],
        },
    )
    .unwrap()
}

#[test]
fn cross_region_references_resolve_when_both_regions_are_covered() {
    env();
    let d = Double::start(Box::new(two_regions));
    let counter = RequestCounter::default();
    let both = ec2::read(
        &cfg(&d, &["us-east-1", "eu-west-1"], &[]),
        &ReadOptions::default(),
        &counter,
    )
    .unwrap();
    let built = build(both);
    assert!(built.warnings.is_empty(), "{:?}", built.warnings);
    let p = &built.document.policy;
    let east = p.group("sg-e").unwrap();
    assert_eq!(east.ingress.len(), 1);
    assert_eq!(east.ingress[0].from.groups, ["sg-w"]);
    let west: Vec<String> = p
        .group("sg-w")
        .unwrap()
        .members
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(west, ["10.20.0.5"]);

    // Only the east region: the reference is reported and matches nothing (its rule, left
    // with no source, is dropped).
    let east_only = ec2::read(
        &cfg(&d, &["us-east-1"], &[]),
        &ReadOptions::default(),
        &counter,
    )
    .unwrap();
    let built = build(east_only);
    assert!(
        built
            .warnings
            .iter()
            .any(|w| w.contains("source group sg-w is not in the inventory")),
        "{:?}",
        built.warnings
    );
    let p = &built.document.policy;
    assert!(p.group("sg-w").is_none());
    assert!(p.group("sg-e").unwrap().ingress.is_empty());
}
