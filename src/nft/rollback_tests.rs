//! The nft backend's apply, read-back and rollback against a fake `nft` and a fake kernel
//! (no root).

use std::sync::{Arc, Mutex};

use super::kernel::FakeKernel;
use super::netlink::{self, readback::Outline, NetlinkError, Refusal};
use super::{render, NftBackend, Transport};
use crate::backend::{Backend, BackendError};
use crate::compile::compile;
use crate::compile::tests::{ctx, doc, TWO};
use crate::exec::{Fake, Output, SpawnError};

fn ruleset(addrs: &[&str]) -> crate::compile::Ruleset {
    compile(&doc(TWO), &ctx(addrs)).unwrap()
}

fn no_nft() -> Fake {
    Fake::new(|call| {
        Err(SpawnError {
            bin: call.bin.clone(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    })
}

#[test]
fn cli_mismatch_puts_the_listed_table_back() {
    const OLD: &str = "table inet reyes {\n\tchain input {\n\t}\n}\n";
    let applied = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = applied.clone();
    let fake = Fake::new(move |call| {
        Ok(match call.args.first().map(String::as_str) {
            // Before the apply: the old table; after it: something else than rendered.
            Some("-s") if log.lock().unwrap().is_empty() => Output::success(OLD),
            Some("-s") => Output::success("table inet reyes {\n}\n"),
            Some("-f") => {
                log.lock()
                    .unwrap()
                    .push(call.stdin.clone().unwrap_or_default());
                Output::success("")
            }
            _ => Output::failure("unexpected"),
        })
    });
    let b = NftBackend::new().with_seams(Arc::new(fake), Arc::new(FakeKernel::default()));
    let e = b.apply(&ruleset(&["10.0.0.1"])).unwrap_err();
    assert!(matches!(e, BackendError::Mismatch(_)), "{e}");
    assert!(
        e.to_string().contains("the previous table was put back"),
        "{e}"
    );
    let scripts = applied.lock().unwrap();
    assert_eq!(scripts.len(), 2);
    assert_eq!(scripts[1], format!("{}{OLD}", render::flush_script()));
}

#[test]
fn cli_refusal_keeps_the_command_and_stderr() {
    let fake = Fake::new(|call| {
        Ok(match call.args.first().map(String::as_str) {
            Some("-s") => Output::failure("Error: No such file or directory"),
            _ => Output::failure("Error: Could not process rule: Operation not supported"),
        })
    });
    let b = NftBackend::new().with_seams(Arc::new(fake), Arc::new(FakeKernel::default()));
    let e = b.apply(&ruleset(&["10.0.0.1"])).unwrap_err();
    let BackendError::Refused(f) = &e else {
        panic!("{e}")
    };
    let cli = f.cause.downcast_ref::<super::cli::NftError>().unwrap();
    let super::cli::NftError::Refused(t) = cli else {
        panic!("{cli}")
    };
    assert_eq!(t.args, ["-f", "-"]);
    assert!(t.stderr.contains("Operation not supported"));
}

#[test]
fn netlink_refusal_keeps_the_refusals() {
    let k = FakeKernel::default();
    k.state
        .lock()
        .unwrap()
        .apply_results
        .push(Err(NetlinkError::Refused(vec![Refusal {
            what: None,
            errno: libc::EOPNOTSUPP,
            detail: None,
        }])));
    let b = NftBackend::netlink().with_seams(Arc::new(no_nft()), Arc::new(k.clone()));
    let e = b.apply(&ruleset(&["10.0.0.1"])).unwrap_err();
    let BackendError::Refused(f) = &e else {
        panic!("{e}")
    };
    let n = f.cause.downcast_ref::<NetlinkError>().unwrap();
    assert_eq!(n.errno(), Some(libc::EOPNOTSUPP));
}

#[test]
fn netlink_mismatch_without_nft_removes_a_new_table() {
    let k = FakeKernel::default();
    k.state.lock().unwrap().outlines.push(Outline::default());
    let b = NftBackend::netlink().with_seams(Arc::new(no_nft()), Arc::new(k.clone()));
    let e = b.apply(&ruleset(&["10.0.0.1"])).unwrap_err();
    assert!(matches!(e, BackendError::Mismatch(_)), "{e}");
    assert!(e.to_string().contains("ours was removed again"), "{e}");
    let st = k.state.lock().unwrap();
    assert_eq!(st.applied.len(), 2);
    assert_eq!(st.applied[1], netlink::flush_batch().len());
}

#[test]
fn netlink_mismatch_without_nft_puts_the_previous_ruleset_back() {
    let previous = ruleset(&["10.0.0.2", "fd00::2"]);
    let k = FakeKernel::default();
    {
        let mut st = k.state.lock().unwrap();
        st.present = true;
        st.outlines.push(Outline::default());
    }
    let b = NftBackend::netlink().with_seams(Arc::new(no_nft()), Arc::new(k.clone()));
    let e = b
        .apply_replacing(&ruleset(&["10.0.0.1"]), &|| Some(previous.clone()))
        .unwrap_err();
    assert!(
        e.to_string().contains("the previous table was put back"),
        "{e}"
    );
    let st = k.state.lock().unwrap();
    let want = netlink::encode(&previous, &netlink::ifindex).unwrap().len();
    assert_eq!(st.applied, vec![st.applied[0], want]);
    drop(st);
    // Without the previous ruleset it says so, and what to do.
    let k2 = FakeKernel::default();
    k2.state.lock().unwrap().present = true;
    k2.state.lock().unwrap().outlines.push(Outline::default());
    let b = b.with_seams(Arc::new(no_nft()), Arc::new(k2));
    let e = b.apply(&ruleset(&["10.0.0.1"])).unwrap_err();
    assert!(e.to_string().contains("reyes restore"), "{e}");
}

#[test]
fn netlink_apply_that_reads_back_right_succeeds() {
    let rs = ruleset(&["10.0.0.1"]);
    let k = FakeKernel::default();
    k.state.lock().unwrap().outlines.push(Outline::of(&rs));
    let b = NftBackend::netlink().with_seams(Arc::new(no_nft()), Arc::new(k.clone()));
    assert_eq!(b.transport(), Transport::Netlink);
    b.apply(&rs).unwrap();
    assert_eq!(k.state.lock().unwrap().applied.len(), 1);
}
