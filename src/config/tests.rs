use super::*;

const MINIMAL: &str = "environment: prod\nstore:\n  directory: /srv/reyes\n";

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::parse(MINIMAL, Path::new("x.yaml")).unwrap();
    assert_eq!(c.environment, "prod");
    assert_eq!(c.follower.enforce, Enforce::Ipsec);
    assert_eq!(c.follower.iptables_variant, IptablesVariant::Auto);
    assert_eq!(c.signing.validity, Duration::from_secs(3600));
    assert!(matches!(c.store, StoreConfig::Directory(_)));
}

#[test]
fn unknown_key_is_an_error_with_location() {
    let text = format!("{MINIMAL}follower:\n  enforse: cidr\n");
    let e = Config::parse(&text, Path::new("x.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("x.yaml:5:"), "{e}");
    assert!(e.contains("enforse"), "{e}");
}

#[test]
fn two_stores_refused() {
    let text = "environment: prod\nstore:\n  directory: /a\n  s3: {bucket: b, key: k}\n";
    assert!(Config::parse(text, Path::new("x.yaml")).is_err());
}

#[test]
fn inventory_needs_exactly_one_source() {
    let text = format!("{MINIMAL}inventory:\n  excluded_group_names: [a]\n");
    let e = Config::parse(&text, Path::new("x.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("exactly one of"), "{e}");
    let text = format!("{MINIMAL}inventory:\n  file: a.yaml\n  aws_json: [b.json]\n");
    assert!(Config::parse(&text, Path::new("x.yaml")).is_err());
}

#[test]
fn cidr_mode_needs_managed_cidrs() {
    let text = format!("{MINIMAL}follower:\n  enforce: cidr\n");
    let e = Config::parse(&text, Path::new("x.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("managed_cidrs"), "{e}");
}

#[test]
fn full_config_parses() {
    let text = r#"
environment: prod
store:
  s3: {bucket: b, key: prod/rules.json, region: us-east-1, endpoint: "http://127.0.0.1:5000"}
signing:
  key: leader.secret.asc
  keyring: trusted/
  trusted_fingerprints: ["AAAA BBBB CCCC DDDD EEEE  FFFF 0000 1111 2222 3333"]
  validity: 90m
inventory:
  aws_json: [sgs.json, {path: pl.json, prefix_list: pl-123}]
  excluded_group_names: [default]
  dynamic_subnets: [subnet-1]
follower:
  backend: nft
  iptables_variant: legacy
  enforce: cidr
  managed_cidrs: [10.0.0.0/8, "fd00::/8"]
  local_cidrs: auto
  addresses: [10.1.0.10]
  failsafe: [{proto: tcp, port: 22, from: 10.9.0.0/24}]
  log_drop: true
"#;
    let c = Config::parse(text, Path::new("x.yaml")).unwrap();
    assert_eq!(c.signing.trusted_fingerprints[0].fingerprint.len(), 40);
    assert_eq!(c.signing.validity, Duration::from_secs(5400));
    assert_eq!(c.follower.failsafe.len(), 1);
    assert_eq!(c.follower.iptables_variant, IptablesVariant::Legacy);
    let inv = c.inventory.unwrap();
    match inv.source {
        InventorySource::AwsJson(f) => assert_eq!(f[1].prefix_list.as_deref(), Some("pl-123")),
        _ => panic!("wrong source"),
    }
}

#[test]
fn bad_values_are_named() {
    for (yaml, needle) in [
        ("follower:\n  failsafe: [{proto: icmp, port: 22}]\n", "port"),
        ("follower:\n  managed_cidrs: [10.0.0.1/8]\n", "host bits"),
        ("signing:\n  validity: soon\n", "duration"),
        ("signing:\n  trusted_fingerprints: [abc]\n", "fingerprint"),
        ("follower:\n  addresses: sometimes\n", "auto"),
    ] {
        let text = format!("{MINIMAL}{yaml}");
        let e = Config::parse(&text, Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{yaml}: {e}");
    }
}
