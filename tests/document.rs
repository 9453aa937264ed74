//! The rule document: determinism across input order, and agreement with the JSON Schema
//! shipped in schema/.

mod common;

use std::time::{Duration, SystemTime};

use common::docs;

use proptest::prelude::*;
use reyes::document::{build, BuildOptions, Document};
use reyes::inventory::{static_file, Inventory};

fn example() -> Inventory {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/inventory.yaml");
    static_file::load(&p).unwrap()
}

fn opts() -> BuildOptions {
    let issued_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
    BuildOptions {
        dynamic_subnets: vec!["workers".into()],
        ..docs::options("prod", 42, issued_at)
    }
}

/// Reverse or rotate every list by `k`, recursively: a deterministic shuffle.
fn shuffle(inv: &mut Inventory, k: usize) {
    fn rot<T>(v: &mut [T], k: usize) {
        if !v.is_empty() {
            let n = k % v.len();
            v.rotate_left(n);
            if k % 2 == 1 {
                v.reverse();
            }
        }
    }
    rot(&mut inv.networks, k);
    rot(&mut inv.subnets, k + 1);
    rot(&mut inv.groups, k + 2);
    rot(&mut inv.hosts, k + 3);
    rot(&mut inv.prefix_lists, k);
    for n in &mut inv.networks {
        rot(&mut n.cidrs, k);
    }
    for g in &mut inv.groups {
        rot(&mut g.ingress, k + 1);
        for r in &mut g.ingress {
            rot(&mut r.from.cidrs, k);
            rot(&mut r.from.groups, k + 1);
            rot(&mut r.from.prefix_lists, k);
        }
    }
    for h in &mut inv.hosts {
        rot(&mut h.addresses, k);
        rot(&mut h.groups, k + 1);
    }
    for p in &mut inv.prefix_lists {
        rot(&mut p.cidrs, k + 1);
    }
}

proptest! {
    #[test]
    fn same_inventory_any_order_same_bytes(k in 0usize..50) {
        let base = build(&example(), &opts()).unwrap().bytes;
        let mut inv = example();
        shuffle(&mut inv, k);
        prop_assert_eq!(build(&inv, &opts()).unwrap().bytes, base);
    }
}

#[test]
fn duplicated_entries_do_not_change_the_bytes() {
    let base = build(&example(), &opts()).unwrap().bytes;
    let mut inv = example();
    let h = inv.hosts[0].clone();
    inv.hosts.push(h);
    let r = inv.groups[0].ingress[0].clone();
    inv.groups[0].ingress.push(r);
    assert_eq!(build(&inv, &opts()).unwrap().bytes, base);
}

#[test]
fn policy_digest_ignores_the_header() {
    let a = build(&example(), &opts()).unwrap().document;
    let mut o = opts();
    o.serial = 43;
    o.issued_at += Duration::from_secs(600);
    let b = build(&example(), &o).unwrap().document;
    assert_eq!(a.policy_digest, b.policy_digest);
    assert_ne!(a.serial, b.serial);
}

#[test]
fn document_fields_match_the_json_schema() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/rules.v1.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let built = build(&example(), &opts()).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&built.bytes).unwrap();
    let keys =
        |v: &serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    let mut required: Vec<String> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    required.sort();
    let mut top = keys(&doc);
    top.sort();
    assert_eq!(top, required, "top-level fields");
    let group_props = keys(&schema["properties"]["groups"]["items"]["properties"]);
    let rule_props = keys(&schema["$defs"]["rule"]["properties"]);
    for g in doc["groups"].as_array().unwrap() {
        for k in keys(g) {
            assert!(group_props.contains(&k), "group field {k} not in schema");
        }
        for r in g["ingress"].as_array().unwrap() {
            for k in keys(r) {
                assert!(rule_props.contains(&k), "rule field {k} not in schema");
            }
        }
    }
    assert_eq!(
        schema["properties"]["format"]["const"],
        reyes::document::FORMAT
    );
    assert!(Document::parse(&built.bytes).is_ok());
}
