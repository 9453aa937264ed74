//! Golden bytes per netlink expression: for each expression kind, tests/golden/expr/KIND.txt
//! holds the `NFTA_LIST_ELEM` the real `nft` sends for the rule named in its header
//! (captured by scripts/capture-golden); our encoder must emit the same bytes.

use std::path::Path;

use reyes::nft::netlink::expr::{
    label_bits, Bitwise, Cmp, CmpOp, Ct, CtSetLabel, Expr, Immediate, Limit, Load, Log, Lookup,
    Meta, MetaKey, Objref, Payload, PayloadBase, Range, RtIpsec, Verdict,
};
use reyes::nft::netlink::wire::Emit;

/// Every expression kind, with the value our encoder builds for the rule in its golden file.
fn cases() -> Vec<(&'static str, Expr)> {
    vec![
        (
            "meta",
            Meta {
                key: MetaKey::L4Proto,
            }
            .into(),
        ),
        ("cmp", Cmp::new(CmpOp::Eq, [6u8]).into()),
        (
            "payload",
            Payload {
                base: PayloadBase::Transport,
                offset: 2,
                len: 2,
            }
            .into(),
        ),
        (
            "bitwise",
            Bitwise {
                mask: vec![2, 0, 0, 0],
            }
            .into(),
        ),
        (
            "range",
            Range {
                negate: true,
                from: 1000u16.to_be_bytes().to_vec(),
                to: 2000u16.to_be_bytes().to_vec(),
            }
            .into(),
        ),
        (
            "lookup",
            Lookup {
                set: "s".into(),
                // nft 1.0.6 sends the set's id even for a set of an earlier batch; its ids
                // count from 1.
                set_id: Some(1),
                verdict_map: false,
                invert: false,
            }
            .into(),
        ),
        ("ct", Ct.into()),
        ("rt", RtIpsec.into()),
        (
            "immediate",
            Immediate {
                verdict: Verdict::Jump("x".into()),
            }
            .into(),
        ),
        (
            "objref",
            Objref {
                counter: "c1".into(),
            }
            .into(),
        ),
        (
            "log",
            Log {
                prefix: "reyes ".into(),
            }
            .into(),
        ),
        ("limit", Limit { rate: 10, burst: 5 }.into()),
        ("ct_set_label", CtSetLabel.into()),
        (
            "load",
            Load {
                value: label_bits(29).to_vec(),
            }
            .into(),
        ),
    ]
}

/// The nft command in the header and the bytes of tests/golden/expr/KIND.txt.
fn golden(kind: &str) -> (String, Vec<u8>) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/expr/{kind}.txt"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let command = text
        .lines()
        .find_map(|l| l.strip_prefix("# nft: "))
        .unwrap_or_else(|| panic!("{}: no `# nft:` header", p.display()))
        .to_string();
    let hex: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<String>()
        .split_whitespace()
        .collect();
    assert!(
        hex.len().is_multiple_of(2),
        "{}: odd number of hex digits",
        p.display()
    );
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (command, bytes)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn every_expression_encodes_as_nft_sends_it() {
    for (kind, expr) in cases() {
        let (command, want) = golden(kind);
        assert_eq!(
            hex(&expr.to_vec()),
            hex(&want),
            "{kind}: our bytes differ from nft's for `{command}`"
        );
    }
}

#[test]
fn every_expression_kind_has_a_golden_file_and_a_case() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/expr");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut kinds: Vec<String> = cases().iter().map(|(k, _)| format!("{k}.txt")).collect();
    kinds.sort();
    assert_eq!(files, kinds);
    // One case per variant of `Expr`: this match stops compiling when a kind is added.
    for (kind, e) in cases() {
        let variant = match e {
            Expr::Payload(_) => "payload",
            Expr::Cmp(_) => "cmp",
            Expr::Bitwise(_) => "bitwise",
            Expr::Range(_) => "range",
            Expr::Lookup(_) => "lookup",
            Expr::Meta(_) => "meta",
            Expr::Ct(_) => "ct",
            Expr::CtSetLabel(_) => "ct_set_label",
            Expr::Load(_) => "load",
            Expr::RtIpsec(_) => "rt",
            Expr::Immediate(_) => "immediate",
            Expr::Objref(_) => "objref",
            Expr::Log(_) => "log",
            Expr::Limit(_) => "limit",
        };
        assert_eq!(kind, variant);
    }
    assert_eq!(kinds.len(), 14, "one golden file per expression kind");
}
