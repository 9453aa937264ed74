//! Apply, undo and flush against a fake host (no root): a failure injected at every call of
//! an apply leaves the previous chains and sets exactly as they were.

use std::sync::Arc;

use super::apply::{apply, flush};
use super::fake_host::{FakeHost, HostState, Injected};
use super::render::{plan, DispatchLayout, Options, Plan};
use super::{Tools, Variant};
use crate::backend::BackendError;
use crate::compile::tests::{compile_sets, ctx, doc, TWO};

const HOST_RULE: &str = "-p tcp -m tcp --dport 2222 -j DROP";

fn host_only() -> HostState {
    let mut st = HostState::default();
    for t in &mut st.tables {
        t.input.push(HOST_RULE.to_string());
    }
    st
}

fn tools(h: &FakeHost) -> Tools {
    Tools::with_runner(Variant::Nft, Arc::new(h.runner.clone()))
}

fn plan_a() -> Plan {
    let rs = compile_sets(&doc(TWO), &ctx(&["10.0.0.1"])).unwrap();
    plan(&rs, &Options::default()).unwrap()
}

/// Another host's rules, with sets for everything (more ipset steps to fail).
fn plan_b() -> Plan {
    let rs = compile_sets(&doc(TWO), &ctx(&["10.0.0.1", "10.0.0.2", "fd00::2"])).unwrap();
    let opts = Options {
        dispatch: DispatchLayout::Sets,
        literal_rules_max: 0,
    };
    plan(&rs, &opts).unwrap()
}

/// The host after a clean apply of `p` over `start`.
fn applied(start: HostState, p: &Plan) -> HostState {
    let h = FakeHost::new(start);
    apply(&tools(&h), p).unwrap();
    h.state()
}

#[test]
fn apply_installs_only_reyes_objects_and_flush_removes_them() {
    let h = FakeHost::new(host_only());
    let rep = apply(&tools(&h), &plan_a()).unwrap();
    assert!(rep.warnings.is_empty(), "{:?}", rep.warnings);
    let st = h.state();
    for t in &st.tables {
        assert_eq!(t.input, ["-j REYES-INPUT", HOST_RULE]);
        assert!(t.chains.contains_key("REYES-INPUT"));
    }
    assert!(!st.sets.is_empty());
    assert!(st
        .sets
        .keys()
        .all(|n| n.starts_with("reyes-") && !n.ends_with("-t")));
    flush(&[tools(&h)]).unwrap();
    assert_eq!(h.state(), host_only());
}

#[test]
fn a_failure_at_any_call_leaves_the_previous_rules_as_they_were() {
    let before = applied(host_only(), &plan_a());
    let after = applied(before.clone(), &plan_b());
    assert_ne!(before, after);
    let probe = FakeHost::new(before.clone());
    apply(&tools(&probe), &plan_b()).unwrap();
    let calls = probe.runner.calls();
    assert!(calls.len() >= 8, "{} calls", calls.len());
    let mut refused = 0;
    for (i, call) in calls.iter().enumerate() {
        let mut hows = vec![Injected::Whole];
        if call.line() == "ipset restore" {
            hows.push(Injected::AtLine(2));
        }
        for how in hows {
            let h = FakeHost::new(before.clone());
            h.fail_call(i, how);
            match apply(&tools(&h), &plan_b()) {
                Err(e) => {
                    refused += 1;
                    assert_eq!(h.state(), before, "call {i} ({}) {how:?}: {e}", call.line());
                    let text = e.to_string();
                    if i > 0 {
                        assert!(text.contains("are as they were"), "call {i}: {text}");
                    }
                }
                Ok(rep) => {
                    // Only the cleanup may fail without failing the apply; the new rules stand.
                    assert_eq!(h.state().tables, after.tables, "call {i} {how:?}");
                    assert!(
                        !rep.warnings.is_empty() || how != Injected::Whole || i + 2 >= calls.len()
                    );
                }
            }
        }
    }
    assert!(
        refused >= calls.len() - 2,
        "{refused} of {} calls",
        calls.len()
    );
}

#[test]
fn a_read_back_mismatch_is_undone() {
    let before = applied(host_only(), &plan_a());
    let h = FakeHost::new(before.clone());
    h.drop_rules_matching("-g REYES-DROPPED");
    let e = apply(&tools(&h), &plan_b()).unwrap_err();
    assert!(matches!(e, BackendError::Mismatch(_)), "{e}");
    assert!(e.to_string().contains("are as they were"), "{e}");
    assert_eq!(h.state(), before);
}

#[test]
fn a_failed_undo_is_reported() {
    let before = applied(host_only(), &plan_a());
    let probe = FakeHost::new(before.clone());
    apply(&tools(&probe), &plan_b()).unwrap();
    let calls = probe.runner.calls();
    let v6 = calls
        .iter()
        .position(|c| c.bin == "ip6tables-restore")
        .unwrap();
    let h = FakeHost::new(before);
    h.fail_call(v6, Injected::Whole);
    // The undo's first step puts the IPv4 chains back; fail it too.
    h.fail_call(v6 + 1, Injected::Whole);
    let e = apply(&tools(&h), &plan_b()).unwrap_err();
    assert!(matches!(e, BackendError::Refused(_)), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("ip6tables-restore refused reyes' chains"),
        "{text}"
    );
    assert!(
        text.contains("putting the previous iptables chains back failed"),
        "{text}"
    );
}
