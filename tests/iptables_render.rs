//! Snapshot tests of what `reyes render --backend iptables` prints for the example inventory:
//! both enforce modes, with and without logging, and every group as destinations. Reviewed
//! like code: a change here is a change to what hosts run.

mod common;

use common::docs;
use reyes::compile::{compile, HostContext, Target};
use reyes::config::{Enforce, Failsafe};
use reyes::iptables::render;

fn example() -> reyes::document::Document {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/inventory.yaml"
    ))
    .unwrap();
    let inv = reyes::inventory::static_file::parse(&text, "examples/inventory.yaml").unwrap();
    let opts = reyes::document::BuildOptions {
        dynamic_subnets: vec!["workers".into()],
        ..docs::options("demo", 7, docs::fixed_time())
    };
    reyes::document::build(&inv, &opts).unwrap().document
}

fn ctx(enforce: Enforce, logging: bool) -> HostContext {
    HostContext {
        // eni-web2 (web and ops) and an IPv6 address of eni-web1 (web): a profile chain and
        // both families.
        target: Target::Host(vec![
            "10.1.0.12".parse().unwrap(),
            "fd00:1::10".parse().unwrap(),
        ]),
        enforce,
        managed_cidrs: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
        local_cidrs: None,
        failsafe: vec![Failsafe {
            proto: "tcp".parse().unwrap(),
            port: Some("22".parse().unwrap()),
            from: Some("10.9.0.0/24".parse().unwrap()),
        }],
        log_accept: logging,
        log_drop: logging,
        allow_unknown_host: false,
        action: reyes::config::Action::Drop,
        mode: reyes::config::Mode::Host,
        gateway_cidrs: vec![],
        egress: false,
    }
}

fn render(c: &HostContext) -> String {
    let rs = compile(&example(), c).unwrap();
    let text = render::render(&rs, &render::Options::default()).unwrap();
    assert_eq!(
        text,
        render::render(&rs, &render::Options::default()).unwrap(),
        "not deterministic"
    );
    text
}

#[test]
fn ipsec() {
    insta::assert_snapshot!(render(&ctx(Enforce::Ipsec, false)));
}

#[test]
fn ipsec_logging() {
    insta::assert_snapshot!(render(&ctx(Enforce::Ipsec, true)));
}

#[test]
fn cidr() {
    insta::assert_snapshot!(render(&ctx(Enforce::Cidr, false)));
}

#[test]
fn cidr_logging() {
    insta::assert_snapshot!(render(&ctx(Enforce::Cidr, true)));
}

#[test]
fn all_groups() {
    let mut c = ctx(Enforce::Ipsec, false);
    c.target = Target::AllGroups;
    insta::assert_snapshot!(render(&c));
}

#[test]
fn audit() {
    let mut c = ctx(Enforce::Ipsec, false);
    c.action = reyes::config::Action::Audit;
    insta::assert_snapshot!(render(&c));
}
