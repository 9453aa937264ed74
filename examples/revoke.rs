//! Time revocation: `revoke N` creates N tracked UDP connections labelled by reyes (through
//! ctnetlink, no packets), then judges them against a policy that still allows them (the walk
//! and the judging alone) and against one that denies them all (walk, judging and N
//! deletes). Run it inside a fresh network namespace (scripts/bench-revoke does).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use reyes::compile::{compile, HostContext, Target, CT_LABEL};
use reyes::config::Enforce;
use reyes::conntrack::kernel::{Kernel, NewConnection};
use reyes::conntrack::revoke;
use reyes::document::{build, BuildOptions};
use reyes::inventory::static_file;

const V1: &str = r#"
groups:
  - id: sg-db
    ingress: [{proto: udp, ports: 5432, from: {cidrs: [10.20.0.0/16]}}]
hosts:
  - {id: db, addresses: [10.10.0.1], groups: [sg-db]}
"#;

fn main() -> ExitCode {
    let n: usize = match std::env::args().nth(1).map(|a| a.parse()) {
        Some(Ok(n)) => n,
        _ => {
            eprintln!("usage: revoke N (inside a network namespace)");
            return ExitCode::from(2);
        }
    };
    match run(n) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("revoke: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let ruleset = |yaml: &str, serial: u64| -> Result<_, Box<dyn std::error::Error>> {
        let inv = static_file::parse(yaml, "bench")?;
        let opts = BuildOptions::new(
            "bench",
            serial,
            SystemTime::now(),
            std::time::Duration::from_secs(3600),
        );
        let doc = build(&inv, &opts)?.document;
        let mut ctx = HostContext::new(Target::Host(vec!["10.10.0.1".parse()?]));
        ctx.enforce = Enforce::Cidr;
        ctx.managed_cidrs = vec!["10.0.0.0/8".parse()?];
        ctx.local_cidrs = Some(vec![]);
        Ok(compile(&doc, &ctx)?)
    };
    let v1 = ruleset(V1, 1)?;
    let v2 = ruleset(&V1.replace("ports: 5432", "ports: 5433"), 2)?;
    reyes::nft::netlink::apply(&v1)?;
    let conns: Vec<NewConnection> = (0..n)
        .map(|i| NewConnection {
            src: SocketAddr::from((
                [10, 20, (i / 60000 / 250) as u8, (1 + i / 60000 % 250) as u8],
                1024 + (i % 60000) as u16,
            )),
            dst: SocketAddr::from(([10, 10, 0, 1], 5432)),
            proto: 17,
            label: Some(CT_LABEL),
            timeout: 3600,
        })
        .collect();
    let mut k = Kernel::open()?;
    let t = Instant::now();
    k.create(&conns)?;
    let created = t.elapsed().as_secs_f64();
    let kept = revoke(&v1, &mut k)?;
    let cut = revoke(&v2, &mut k)?;
    println!(
        "connections={n} create={created:.3}s walk_and_judge={:.3}s (tracked {}, revoked {}) revoke={:.3}s (revoked {}, gone {})",
        kept.seconds, kept.tracked, kept.revoked, cut.seconds, cut.revoked, cut.gone
    );
    Ok(())
}
