//! The follower's apply path against a fake kernel and a fake iptables host (no root): an
//! unchanged kernel costs zero write messages, and drift (missing or altered rules) is
//! re-applied and counted.

use std::sync::Arc;
use std::time::SystemTime;

use super::drift::{self, Drift};
use super::{apply_verified, Guards, Outcome, Verified};
use crate::backend::Backend;
use crate::compile::compile;
use crate::compile::tests::{ctx, doc, TWO};
use crate::exec::{Fake, SpawnError};
use crate::iptables::fake_host::{FakeHost, HostState};
use crate::iptables::{IptablesBackend, Options, Tools, Variant};
use crate::metrics::Report;
use crate::nft::kernel::FakeKernel;
use crate::nft::netlink::readback::Outline;
use crate::nft::NftBackend;
use crate::signing::VerifiedSigner;
use crate::state::StateDir;

const HOST: &str = "10.0.0.1";

fn verified() -> Verified {
    let document = doc(TWO);
    Verified {
        bytes: document.to_bytes(),
        document,
        signature: b"sig".to_vec(),
        signer: VerifiedSigner {
            fingerprint: "A".into(),
            fingerprints: vec!["A".into()],
            signed_at: vec![],
        },
    }
}

fn no_nft() -> Fake {
    Fake::new(|call| {
        Err(SpawnError {
            bin: call.bin.clone(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    })
}

/// Apply through `b`, returning the outcome and the drift repairs it counted.
fn run(b: &dyn Backend, state: &StateDir) -> (Outcome, u64) {
    let mut report = Report::default();
    let o = apply_verified(
        &verified(),
        &ctx(&[HOST]),
        b,
        state,
        SystemTime::now(),
        &mut report,
        &Guards::default(),
    )
    .unwrap();
    (o, report.drift_repairs)
}

#[test]
fn nft_unchanged_kernel_gets_zero_writes_and_drift_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let kernel = FakeKernel::default();
    let b = NftBackend::netlink().with_seams(Arc::new(no_nft()), Arc::new(kernel.clone()));
    let outline = Outline::of(&compile(&doc(TWO), &ctx(&[HOST])).unwrap());
    let set = |f: &dyn Fn(&mut crate::nft::kernel::FakeState)| f(&mut kernel.state.lock().unwrap());
    let writes = || kernel.state.lock().unwrap().applied.len();

    // First apply: one batch; the digest read after it is recorded.
    set(&|s| {
        s.outlines = vec![outline.clone()];
        s.digest = Some("sha256:1".into());
    });
    assert!(matches!(run(&b, &state).0, Outcome::Applied { .. }));
    assert_eq!(writes(), 1);
    assert_eq!(state.live_digest().unwrap().digest, "sha256:1");

    // Unchanged, three times: reads only, zero write messages.
    let reads = kernel.state.lock().unwrap().reads;
    for _ in 0..3 {
        assert_eq!(run(&b, &state), (Outcome::Unchanged { serial: 1 }, 0));
    }
    assert_eq!(writes(), 1, "an unchanged kernel gets no batch");
    assert!(
        kernel.state.lock().unwrap().reads > reads,
        "but it is looked at"
    );

    // Someone altered the table: re-applied, counted.
    set(&|s| {
        s.outlines = vec![outline.clone()];
        s.digest = Some("sha256:2".into());
    });
    assert_eq!(drift::check(&b, &state), Drift::Different);
    assert_eq!(run(&b, &state), (Outcome::Applied { serial: 1 }, 1));
    assert_eq!(writes(), 2);

    // Someone deleted the table: the run finds none, re-applies, and records the new digest.
    set(&|s| {
        s.outlines = vec![outline.clone()];
        s.digests = vec![None];
        s.digest = Some("sha256:3".into());
    });
    assert_eq!(run(&b, &state), (Outcome::Applied { serial: 1 }, 1));
    assert_eq!(writes(), 3);
    assert_eq!(state.live_digest().unwrap().digest, "sha256:3");
    assert_eq!(run(&b, &state), (Outcome::Unchanged { serial: 1 }, 0));
    assert_eq!(writes(), 3);
}

#[test]
fn iptables_unchanged_host_gets_zero_writes_and_a_deleted_rule_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let host = FakeHost::new(HostState::default());
    let tools = Tools::with_runner(Variant::Nft, Arc::new(host.runner.clone()));
    let b = IptablesBackend::with_tools(tools, Options::default());
    assert!(matches!(run(&b, &state).0, Outcome::Applied { .. }));
    let applied = host.state();

    let writes = || {
        host.runner
            .calls()
            .iter()
            .filter(|c| {
                !(c.bin.ends_with("-save") || c.args == ["save"] || c.args == ["list", "-n"])
            })
            .count()
    };
    let before = writes();
    for _ in 0..3 {
        assert_eq!(run(&b, &state), (Outcome::Unchanged { serial: 1 }, 0));
    }
    assert_eq!(
        writes(),
        before,
        "an unchanged host gets no restore or destroy"
    );

    // Someone deleted a rule from one of reyes' chains.
    host.edit(|st| {
        let chain = st.tables[0]
            .chains
            .iter_mut()
            .find(|(n, rules)| n.starts_with("REYES-") && !rules.is_empty())
            .unwrap()
            .1;
        chain.pop();
    });
    assert_ne!(host.state(), applied);
    assert_eq!(drift::check(&b, &state), Drift::Different);
    assert_eq!(run(&b, &state), (Outcome::Applied { serial: 1 }, 1));
    assert_eq!(
        host.state(),
        applied,
        "repaired to exactly what was applied"
    );
    assert_eq!(run(&b, &state), (Outcome::Unchanged { serial: 1 }, 0));
}
