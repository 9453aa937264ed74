//! Snapshots of the rendered nft scripts (insta, reviewed like code) for the static example
//! inventory and the AWS CLI fixtures, in every combination of target (one host, all groups),
//! enforce mode (ipsec; cidr with managed 10.0.0.0/8 and fd00::/8) and logging; and the proof
//! that the kernel takes each of them and reads back exactly what was rendered.
//!
//! To accept intended changes: `INSTA_UPDATE=always cargo test --test snapshots`, then review
//! the diff of tests/snapshots/ like code.

mod common;
mod support;

use std::collections::BTreeSet;

use common::Netns;
use reyes::config::Enforce;
use support::{Inv, Tgt};

macro_rules! nft_snapshots {
    ($($test:ident => ($inv:ident, $tgt:ident, $enforce:ident, $log:expr);)*) => {
        $(
            #[test]
            fn $test() {
                let case = support::render_case(Inv::$inv, Tgt::$tgt, Enforce::$enforce, $log);
                insta::assert_snapshot!(case.name, case.script);
            }
        )*

        /// The cases that have a snapshot test above.
        const SNAPSHOTTED: &[(Inv, Tgt, Enforce, bool)] = &[$((Inv::$inv, Tgt::$tgt, Enforce::$enforce, $log)),*];
    };
}

nft_snapshots! {
    static_example_host_ipsec => (StaticExample, Host, Ipsec, false);
    static_example_host_ipsec_logging => (StaticExample, Host, Ipsec, true);
    static_example_host_cidr => (StaticExample, Host, Cidr, false);
    static_example_host_cidr_logging => (StaticExample, Host, Cidr, true);
    static_example_all_groups_ipsec => (StaticExample, AllGroups, Ipsec, false);
    static_example_all_groups_ipsec_logging => (StaticExample, AllGroups, Ipsec, true);
    static_example_all_groups_cidr => (StaticExample, AllGroups, Cidr, false);
    static_example_all_groups_cidr_logging => (StaticExample, AllGroups, Cidr, true);
    aws_fixtures_host_ipsec => (AwsFixtures, Host, Ipsec, false);
    aws_fixtures_host_ipsec_logging => (AwsFixtures, Host, Ipsec, true);
    aws_fixtures_host_cidr => (AwsFixtures, Host, Cidr, false);
    aws_fixtures_host_cidr_logging => (AwsFixtures, Host, Cidr, true);
    aws_fixtures_all_groups_ipsec => (AwsFixtures, AllGroups, Ipsec, false);
    aws_fixtures_all_groups_ipsec_logging => (AwsFixtures, AllGroups, Ipsec, true);
    aws_fixtures_all_groups_cidr => (AwsFixtures, AllGroups, Cidr, false);
    aws_fixtures_all_groups_cidr_logging => (AwsFixtures, AllGroups, Cidr, true);
}

#[test]
fn every_case_has_a_snapshot_and_no_snapshot_is_stale() {
    assert_eq!(SNAPSHOTTED, support::MATRIX.as_slice());
    let want: BTreeSet<String> = support::render_cases()
        .iter()
        .map(|c| format!("snapshots__{}.snap", c.name))
        .collect();
    assert_eq!(
        want.len(),
        support::MATRIX.len(),
        "case names must be unique"
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let have: BTreeSet<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("snapshots__nft__") && n.ends_with(".snap"))
                .collect()
        })
        .unwrap_or_default();
    // Missing ones fail their own test (insta refuses to create snapshots under CI); here,
    // no file may be left over from a case that no longer exists.
    let stale: Vec<&String> = have.difference(&want).collect();
    assert!(
        stale.is_empty(),
        "stale snapshots in {}: {stale:?}",
        dir.display()
    );
}

#[test]
fn rendering_is_deterministic() {
    let a: Vec<String> = support::render_cases()
        .into_iter()
        .map(|c| c.script)
        .collect();
    let b: Vec<String> = support::render_cases()
        .into_iter()
        .map(|c| c.script)
        .collect();
    assert_eq!(a, b);
}

/// `nft -c` accepts every script without changing anything; applying it creates exactly the
/// rendered table (as `nft -s -p list table inet reyes` prints it, whitespace aside); applying
/// it again (the table now exists) gives the same table.
#[test]
fn every_rendered_script_is_taken_by_the_kernel_and_read_back_unchanged() {
    if !common::netns_available() {
        return;
    }
    for case in support::render_cases() {
        let ns = Netns::new("snap");
        let check = ns.run(&["nft", "-c", "-f", "-"], Some(&case.script));
        assert!(
            check.status.success(),
            "{}: nft -c refused it\n{}",
            case.name,
            common::text(&check)
        );
        assert!(
            ns.nft_list_table("inet", "reyes").is_none(),
            "{}: nft -c changed the ruleset",
            case.name
        );

        let want = common::normalise(common::table_block(&case.script));
        for attempt in ["first apply", "re-apply over the existing table"] {
            ns.nft_apply(&case.script);
            let live = ns
                .nft_list_table("inet", "reyes")
                .expect("table inet reyes after apply");
            let got = common::normalise(&live);
            if got != want {
                let at = want
                    .chars()
                    .zip(got.chars())
                    .take_while(|(a, b)| a == b)
                    .count();
                let around = |s: &str| {
                    s.chars()
                        .skip(at.saturating_sub(80))
                        .take(200)
                        .collect::<String>()
                };
                panic!(
                    "{} ({attempt}): the kernel's table differs from the render near\n  rendered: ...{}\n  live:     ...{}\nfull listing:\n{live}",
                    case.name,
                    around(&want),
                    around(&got)
                );
            }
        }
    }
}

/// The binary prints what the library renders (so the snapshots are what `reyes render`
/// shows an operator).
#[test]
fn reyes_render_prints_the_snapshotted_script() {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("rules.json");
    std::fs::write(&doc, support::aws_built().bytes).unwrap();
    let cfg = dir.path().join("reyes.yaml");
    std::fs::write(
        &cfg,
        "environment: prod\nstore:\n  directory: store\nfollower:\n  managed_cidrs: [10.0.0.0/8, \"fd00::/8\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::reyes_bin())
        .arg("--config")
        .arg(&cfg)
        .arg("render")
        .arg("--document")
        .arg(&doc)
        .args([
            "--host",
            support::AWS_HOST[0],
            "--host",
            support::AWS_HOST[1],
        ])
        .args(["--enforce", "cidr", "--log-accept", "--log-drop"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    let case = support::render_case(Inv::AwsFixtures, Tgt::Host, Enforce::Cidr, true);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), case.script);
}

/// Audit mode (`follower.action: audit`) for web2 of the example (in two groups: a profile
/// chain): the dispatch map jumps to audit chains that log, count per chain and accept.
fn audit_script() -> String {
    let mut ctx = reyes::compile::HostContext::new(reyes::compile::Target::Host(
        support::STATIC_HOST
            .iter()
            .map(|a| a.parse().unwrap())
            .collect(),
    ));
    ctx.action = reyes::config::Action::Audit;
    let rs = reyes::compile::compile(&support::static_built().document, &ctx).expect("compile");
    reyes::nft::render::render(&rs).expect("render")
}

#[test]
fn audit_static_example_host() {
    insta::assert_snapshot!(
        "audit__nft__static_example__host_web2_10_1_0_12__enforce_ipsec",
        audit_script()
    );
}

#[test]
fn audit_script_is_taken_by_the_kernel_and_read_back_unchanged() {
    if !common::netns_available() {
        return;
    }
    let script = audit_script();
    let ns = Netns::new("snapa");
    ns.nft_apply(&script);
    let live = ns
        .nft_list_table("inet", "reyes")
        .expect("table inet reyes after apply");
    assert_eq!(
        common::normalise(&live),
        common::normalise(common::table_block(&script))
    );
}
