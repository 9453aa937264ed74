//! Fuzzing the parsers that take outside input, on the stable toolchain, with no extra crates:
//! a seeded mutation fuzzer (bit and byte flips, inserts, deletes, duplicated ranges, splices
//! between seeds, and a dictionary of tokens and edge-case numbers for JSON, YAML and
//! OpenPGP) run against each target under `catch_unwind`, timing every execution.
//!
//! Targets: the document parser with its canonical check, the signature parser/verifier, the
//! config loader, the static YAML inventory, the AWS CLI JSON inventory, and the EC2 inventory
//! through its SDK-shape conversion. Seeds are the repository's own valid inputs
//! (examples/, tests/fixtures/aws/, a freshly built and signed document) plus
//! tests/fuzz/corpus/; any input that ever panicked is kept in tests/fuzz/crashes/ and
//! replayed by [`crash_reproducers`].
//!
//! `cargo test --test fuzz` runs a short smoke run (CI). `scripts/fuzz` runs 10^6 executions
//! per target in release mode and prints the figures recorded in docs/security.md.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reyes::config::Config;
use reyes::document::{self, BuildOptions, Document};
use reyes::inventory::{aws, aws_json, ec2, static_file};
use reyes::signing::{keygen, SigningKey, TrustRoot};

/// An execution slower than this counts as a hang.
const HANG: Duration = Duration::from_secs(2);

/// xorshift64*: deterministic, so a run can be repeated from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const DICT: &[&[u8]] = &[
    b"0",
    b"-1",
    b"65535",
    b"65536",
    b"4294967296",
    b"18446744073709551615",
    b"18446744073709551616",
    b"9007199254740993",
    b"-9223372036854775808",
    b"1e999",
    b"0.5",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b"\"\"",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b",",
    b":",
    b"[",
    b"]",
    b"{",
    b"}",
    b"\n",
    b"\n  - ",
    b": ",
    b"&a ",
    b"*a",
    b"!!binary ",
    b"<<: *a",
    b"---\n",
    b"0.0.0.0/0",
    b"::/0",
    b"10.0.0.1/33",
    b"fe80::1%eth0",
    b"1970-01-01T00:00:00Z",
    b"9999-12-31T23:59:59Z",
    b"10000-01-01T00:00:00Z",
    b"\"serial\":",
    b"\"groups\":",
    b"\"members\":",
    b"\"ingress\":",
    b"\"from\":",
    b"\"IpProtocol\":\"-1\"",
    b"\"FromPort\":",
    b"\"ToPort\":",
    b"\xc2\x88",
    b"\xff\xfe",
    b"\x88\x5e",
    b"\xc2\x00",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &[u8], max: usize) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(6) {
        let len = v.len();
        match rng.below(11) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                v.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                let chunk = v[i..i + n].to_vec();
                let at = rng.below(len + 1);
                v.splice(at..at, chunk);
            }
            5 | 6 => {
                let t = DICT[rng.below(DICT.len())];
                let i = rng.below(len + 1);
                v.splice(i..i, t.iter().copied());
            }
            7 if len > 0 => {
                // Overwrite a digit run with a dictionary number.
                let i = rng.below(len);
                if let Some(s) = v[i..].iter().position(u8::is_ascii_digit) {
                    let s = i + s;
                    let e = v[s..]
                        .iter()
                        .position(|b| !b.is_ascii_digit())
                        .map_or(v.len(), |e| s + e);
                    let t = DICT[rng.below(8)];
                    v.splice(s..e, t.iter().copied());
                }
            }
            8 => {
                // Splice: our head, another seed's tail.
                let other = &seeds[rng.below(seeds.len())];
                let a = rng.below(len + 1);
                let b = rng.below(other.len() + 1);
                v.truncate(a);
                v.extend_from_slice(&other[b..]);
            }
            9 if len > 0 => v.truncate(rng.below(len)),
            _ if len > 1 => {
                let (a, b) = (rng.below(len), rng.below(len));
                v.swap(a, b);
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v.truncate(max);
    v
}

/// What a target runs on each input.
type Run = Box<dyn Fn(&[u8])>;

/// A fuzz target: seeds and the function that must never panic or hang.
struct Target {
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    run: Run,
}

/// What a run found.
#[derive(Debug, Default)]
struct Stats {
    execs: u64,
    elapsed: Duration,
    panics: u64,
    hangs: u64,
    slowest: Duration,
}

fn crash_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/crashes")
}

fn fuzz(t: &Target, execs: u64, seed: u64) -> Stats {
    let mut rng = Rng(seed | 1);
    let mut st = Stats::default();
    let max = t.seeds.iter().map(Vec::len).max().unwrap_or(64) * 2 + 64;
    let start = Instant::now();
    let mut current = t.seeds[0].clone();
    for i in 0..execs {
        // Mostly fresh mutants of a seed; sometimes keep stacking on the last one.
        if i % 8 == 0 || rng.below(4) == 0 {
            current = t.seeds[rng.below(t.seeds.len())].clone();
        }
        current = mutate(&mut rng, &t.seeds, &current, max);
        let t0 = Instant::now();
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| (t.run)(&current)));
        let took = t0.elapsed();
        st.slowest = st.slowest.max(took);
        if took > HANG {
            st.hangs += 1;
            save(t.name, "hang", &current);
        }
        if r.is_err() {
            st.panics += 1;
            save(t.name, "panic", &current);
        }
        st.execs += 1;
    }
    st.elapsed = start.elapsed();
    st
}

fn save(target: &str, kind: &str, input: &[u8]) {
    let dir = crash_dir().join(target);
    let _ = std::fs::create_dir_all(&dir);
    let h = reyes::follower::sha256(input);
    let name = format!("{kind}-{}", &h[7..23]);
    let _ = std::fs::write(dir.join(name), input);
    eprintln!("fuzz {target}: {kind}, input kept in tests/fuzz/crashes/{target}/");
}

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(manifest(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Extra seeds kept in tests/fuzz/corpus/TARGET/.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = manifest("tests/fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn example_document() -> document::Built {
    let inv = static_file::load(&manifest("examples/inventory.yaml")).unwrap();
    let now = UNIX_EPOCH
        + Duration::from_secs(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        );
    document::build(
        &inv,
        &BuildOptions::new("prod", 7, now, Duration::from_secs(3600)),
    )
    .unwrap()
}

fn aws_fixtures() -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifest("tests/fixtures/aws"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn with_corpus(name: &'static str, mut seeds: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    seeds.extend(corpus(name));
    seeds
}

fn targets() -> Vec<Target> {
    let built = example_document();
    let dir = tempfile::tempdir().unwrap();
    let (secret, public, _) = keygen("fuzz", None).unwrap();
    let kp = dir.path().join("k.asc");
    std::fs::write(&kp, &secret).unwrap();
    let key = SigningKey::load(&kp, None).unwrap();
    let sig = key.sign(&built.bytes).unwrap();
    let cert = openpgp::Cert::from_bytes(&public).unwrap();
    let root = TrustRoot::from_certs(vec![cert], &[]);
    let doc_bytes = built.bytes.clone();
    vec![
        Target {
            name: "document",
            seeds: with_corpus("document", vec![built.bytes.clone()]),
            run: Box::new(|b| {
                if let Ok(d) = Document::parse(b) {
                    // A document that parses re-encodes to exactly its bytes.
                    assert_eq!(d.to_bytes(), b);
                }
            }),
        },
        Target {
            name: "signature",
            seeds: with_corpus("signature", vec![sig.clone()]),
            run: Box::new(move |b| {
                let now = SystemTime::now();
                let _ = root.verify_at(&doc_bytes, b, now);
                let _ = reyes::signing::append_signature(b, b);
            }),
        },
        Target {
            name: "config",
            seeds: with_corpus(
                "config",
                vec![
                    read("examples/reyes.yaml"),
                    read("tests/fixtures/aws/reyes.yaml"),
                ],
            ),
            run: Box::new(|b| {
                if let Ok(s) = std::str::from_utf8(b) {
                    let _ = Config::parse(s, Path::new("fuzz.yaml"));
                }
            }),
        },
        Target {
            name: "static_inventory",
            seeds: with_corpus("static_inventory", vec![read("examples/inventory.yaml")]),
            run: Box::new(|b| {
                if let Ok(s) = std::str::from_utf8(b) {
                    if let Ok(inv) = static_file::parse(s, "fuzz.yaml") {
                        build_any(&inv);
                    }
                }
            }),
        },
        Target {
            name: "aws_json",
            seeds: with_corpus("aws_json", aws_fixtures()),
            run: Box::new(|b| {
                if let Ok(s) = std::str::from_utf8(b) {
                    let p = Path::new("pl-0fuzz.json");
                    if let Ok(inv) = aws_json::parse(s, p, None) {
                        build_any(&inv);
                    }
                }
            }),
        },
        Target {
            name: "ec2",
            seeds: with_corpus("ec2", aws_fixtures()),
            run: Box::new(ec2_shapes),
        },
    ]
}

/// Whatever parsed must also build into a document without a panic.
fn build_any(inv: &reyes::inventory::Inventory) {
    let opts = BuildOptions::new(
        "prod",
        1,
        UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        Duration::from_secs(3600),
    );
    let _ = document::build(inv, &opts);
}

/// The EC2 source: the fuzzed JSON read as AWS shapes, turned into the SDK's types (what the
/// EC2 API client hands over), converted back by the EC2 source's shape conversion, and into
/// an inventory and a document.
fn ec2_shapes(b: &[u8]) {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Any {
        #[serde(default)]
        security_groups: Vec<aws::SecurityGroup>,
        #[serde(default)]
        network_interfaces: Vec<aws::NetworkInterface>,
        #[serde(default)]
        vpcs: Vec<aws::Vpc>,
        #[serde(default)]
        subnets: Vec<aws::AwsSubnet>,
    }
    let Ok(a) = serde_json::from_slice::<Any>(b) else {
        return;
    };
    let inv = aws::AwsInventory {
        security_groups: a
            .security_groups
            .iter()
            .map(|g| ec2::security_group(&sdk::group(g)))
            .collect(),
        interfaces: a
            .network_interfaces
            .iter()
            .map(|n| ec2::interface(&sdk::interface(n)))
            .collect(),
        vpcs: a.vpcs.iter().map(|v| ec2::vpc(&sdk::vpc(v))).collect(),
        subnets: a
            .subnets
            .iter()
            .map(|s| ec2::subnet(&sdk::subnet(s)))
            .collect(),
        prefix_lists: Vec::new(),
    };
    if let Ok(inv) = inv.into_inventory() {
        build_any(&inv);
    }
}

/// AWS shapes -> SDK types.
mod sdk {
    use aws_sdk_ec2::types as t;
    use reyes::inventory::aws;

    fn port(p: Option<i64>) -> Option<i32> {
        p.and_then(|p| i32::try_from(p).ok())
    }

    pub fn group(g: &aws::SecurityGroup) -> t::SecurityGroup {
        let mut b = t::SecurityGroup::builder()
            .group_id(&g.group_id)
            .group_name(&g.group_name)
            .set_vpc_id(g.vpc_id.clone());
        for p in &g.ip_permissions {
            let mut pb = t::IpPermission::builder()
                .ip_protocol(&p.ip_protocol)
                .set_from_port(port(p.from_port))
                .set_to_port(port(p.to_port));
            for r in &p.ip_ranges {
                pb = pb.ip_ranges(t::IpRange::builder().cidr_ip(&r.cidr_ip).build());
            }
            for r in &p.ipv6_ranges {
                pb = pb.ipv6_ranges(t::Ipv6Range::builder().cidr_ipv6(&r.cidr_ipv6).build());
            }
            for r in &p.prefix_list_ids {
                pb = pb.prefix_list_ids(
                    t::PrefixListId::builder()
                        .prefix_list_id(&r.prefix_list_id)
                        .build(),
                );
            }
            for u in &p.user_id_group_pairs {
                pb = pb.user_id_group_pairs(
                    t::UserIdGroupPair::builder()
                        .set_group_id(u.group_id.clone())
                        .set_user_id(u.user_id.clone())
                        .set_vpc_id(u.vpc_id.clone())
                        .build(),
                );
            }
            b = b.ip_permissions(pb.build());
        }
        b.build()
    }

    pub fn interface(n: &aws::NetworkInterface) -> t::NetworkInterface {
        let mut b = t::NetworkInterface::builder()
            .network_interface_id(&n.network_interface_id)
            .set_subnet_id(n.subnet_id.clone())
            .set_vpc_id(n.vpc_id.clone())
            .set_private_ip_address(n.private_ip_address.clone());
        for a in &n.private_ip_addresses {
            b = b.private_ip_addresses(
                t::NetworkInterfacePrivateIpAddress::builder()
                    .private_ip_address(&a.private_ip_address)
                    .build(),
            );
        }
        for a in &n.ipv6_addresses {
            b = b.ipv6_addresses(
                t::NetworkInterfaceIpv6Address::builder()
                    .ipv6_address(&a.ipv6_address)
                    .build(),
            );
        }
        for a in &n.ipv4_prefixes {
            b = b.ipv4_prefixes(
                t::Ipv4PrefixSpecification::builder()
                    .ipv4_prefix(&a.ipv4_prefix)
                    .build(),
            );
        }
        for a in &n.ipv6_prefixes {
            b = b.ipv6_prefixes(
                t::Ipv6PrefixSpecification::builder()
                    .ipv6_prefix(&a.ipv6_prefix)
                    .build(),
            );
        }
        for g in &n.groups {
            b = b.groups(t::GroupIdentifier::builder().group_id(&g.group_id).build());
        }
        b.build()
    }

    fn ipv6_assoc(a: &aws::Ipv6CidrAssociation) -> t::VpcIpv6CidrBlockAssociation {
        let mut b = t::VpcIpv6CidrBlockAssociation::builder().ipv6_cidr_block(&a.ipv6_cidr_block);
        if let Some(s) = &a.ipv6_cidr_block_state {
            b = b.ipv6_cidr_block_state(
                t::VpcCidrBlockState::builder()
                    .state(t::VpcCidrBlockStateCode::from(s.state.as_str()))
                    .build(),
            );
        }
        b.build()
    }

    pub fn vpc(v: &aws::Vpc) -> t::Vpc {
        let mut b = t::Vpc::builder()
            .vpc_id(&v.vpc_id)
            .set_cidr_block(v.cidr_block.clone());
        for a in &v.cidr_block_association_set {
            let mut ab = t::VpcCidrBlockAssociation::builder().cidr_block(&a.cidr_block);
            if let Some(s) = &a.cidr_block_state {
                ab = ab.cidr_block_state(
                    t::VpcCidrBlockState::builder()
                        .state(t::VpcCidrBlockStateCode::from(s.state.as_str()))
                        .build(),
                );
            }
            b = b.cidr_block_association_set(ab.build());
        }
        for a in &v.ipv6_cidr_block_association_set {
            b = b.ipv6_cidr_block_association_set(ipv6_assoc(a));
        }
        b.build()
    }

    pub fn subnet(s: &aws::AwsSubnet) -> t::Subnet {
        let mut b = t::Subnet::builder()
            .subnet_id(&s.subnet_id)
            .set_vpc_id(s.vpc_id.clone())
            .set_cidr_block(s.cidr_block.clone());
        for a in &s.ipv6_cidr_block_association_set {
            let mut ab =
                t::SubnetIpv6CidrBlockAssociation::builder().ipv6_cidr_block(&a.ipv6_cidr_block);
            if let Some(st) = &a.ipv6_cidr_block_state {
                ab = ab.ipv6_cidr_block_state(
                    t::SubnetCidrBlockState::builder()
                        .state(t::SubnetCidrBlockStateCode::from(st.state.as_str()))
                        .build(),
                );
            }
            b = b.ipv6_cidr_block_association_set(ab.build());
        }
        for tag in &s.tags {
            b = b.tags(t::Tag::builder().key(&tag.key).value(&tag.value).build());
        }
        b.build()
    }
}

use openpgp::parse::Parse;
use sequoia_openpgp as openpgp;

/// Executions per target: REYES_FUZZ_EXECS, or a short smoke run.
fn execs() -> u64 {
    std::env::var("REYES_FUZZ_EXECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// Every target, REYES_FUZZ_EXECS executions each (REYES_FUZZ_TARGET picks one): no panic,
/// no hang. Prints one figures line per target.
#[test]
fn fuzz_targets() {
    let n = execs();
    let only = std::env::var("REYES_FUZZ_TARGET").ok();
    let seed: u64 = std::env::var("REYES_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_2026);
    // Panics are counted and their inputs kept; do not print a backtrace per input.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut results = Vec::new();
    for t in targets() {
        if only.as_deref().is_some_and(|o| o != t.name) {
            continue;
        }
        let st = fuzz(&t, n, seed);
        results.push((t.name, st));
    }
    std::panic::set_hook(hook);
    for (name, st) in &results {
        println!(
            "fuzz {name:<17} execs={} time={:.1}s execs/s={:.0} panics={} hangs={} slowest={:.1}ms",
            st.execs,
            st.elapsed.as_secs_f64(),
            st.execs as f64 / st.elapsed.as_secs_f64().max(1e-9),
            st.panics,
            st.hangs,
            st.slowest.as_secs_f64() * 1000.0
        );
    }
    for (name, st) in &results {
        assert_eq!(
            st.panics, 0,
            "{name}: panics (inputs in tests/fuzz/crashes/)"
        );
        assert_eq!(st.hangs, 0, "{name}: hangs (inputs in tests/fuzz/crashes/)");
    }
}

/// Every input that once panicked or hung, replayed through its target: none may now.
#[test]
fn crash_reproducers() {
    let targets = targets();
    let mut replayed = 0;
    for t in &targets {
        let dir = crash_dir().join(t.name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let input = std::fs::read(e.path()).unwrap();
            let t0 = Instant::now();
            (t.run)(&input);
            assert!(t0.elapsed() < HANG, "{}: slow", e.path().display());
            replayed += 1;
        }
    }
    println!("replayed {replayed} crash reproducers");
}
