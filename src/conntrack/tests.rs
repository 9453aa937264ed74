use super::kernel::{answers, delete_message, parse_entry, Answer, IPCTNL_MSG_CT_DELETE};
use super::*;
use crate::compile::tests::{ctx, doc};
use crate::compile::{compile, Hook, Ruleset, Verdict};
use crate::nft::netlink::expr::label_bits;
use crate::nft::netlink::wire::{Attr, Emit};

const POLICY: &str = r#"
groups:
  - id: sg-db
    ingress:
      - {proto: tcp, ports: 5432, from: {groups: [sg-app]}}
      - {proto: icmp, from: {groups: [sg-app]}}
  - id: sg-app
hosts:
  - {id: db, addresses: [10.0.0.1, "fd00::1"], groups: [sg-db]}
  - {id: app, addresses: [10.0.0.2, "fd00::2"], groups: [sg-app]}
  - {id: old, addresses: [10.0.0.3], groups: [sg-app]}
"#;

/// The same estate without `old` in sg-app: its connections are now denied.
fn tighter() -> String {
    POLICY.replace(
        "{id: old, addresses: [10.0.0.3], groups: [sg-app]}",
        "{id: old, addresses: [10.0.0.3]}",
    )
}

fn ruleset(yaml: &str) -> Ruleset {
    compile(&doc(yaml), &ctx(&["10.0.0.1", "fd00::1"])).unwrap()
}

fn entry(src: &str, dst: &str, proto: u8, port: Option<u16>, labelled: bool) -> Entry {
    Entry {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        proto,
        port,
        icmp: None,
        labels: labelled.then(|| label_bits(CT_LABEL)),
        id: Some(7),
        tuple: vec![],
        zone: None,
    }
}

/// A conntrack table in memory: what the walk finds, what was deleted.
#[derive(Default)]
struct Fake {
    entries: Vec<Entry>,
    deleted: Vec<Entry>,
    fail_delete: Option<i32>,
}

impl Conntrack for Fake {
    fn walk(&mut self, each: &mut dyn FnMut(Entry)) -> Result<(), ConntrackError> {
        self.entries.iter().cloned().for_each(each);
        Ok(())
    }

    fn delete(&mut self, entries: &[Entry]) -> Result<Deleted, ConntrackError> {
        if let Some(errno) = self.fail_delete {
            return Err(ConntrackError::Refused {
                what: "delete",
                errno,
            });
        }
        let mut d = Deleted::default();
        for e in entries {
            if let Some(i) = self.entries.iter().position(|x| x == e) {
                self.deleted.push(self.entries.remove(i));
                d.deleted += 1;
            } else {
                d.gone += 1;
            }
        }
        Ok(d)
    }
}

#[test]
fn denied_labelled_connections_are_deleted_and_nothing_else() {
    let mut t = Fake {
        entries: vec![
            // Still allowed: app -> db:5432.
            entry("10.0.0.2", "10.0.0.1", 6, Some(5432), true),
            // Denied now: old is no longer in sg-app.
            entry("10.0.0.3", "10.0.0.1", 6, Some(5432), true),
            // Denied, but not labelled (out of scope, or older than reyes): untouched.
            entry("10.0.0.3", "10.0.0.1", 6, Some(5433), false),
            // Never allowed, labelled (by an earlier policy): denied, deleted.
            entry("10.0.0.2", "10.0.0.1", 17, Some(53), true),
            // IPv6, still allowed.
            entry("fd00::2", "fd00::1", 6, Some(5432), true),
        ],
        ..Fake::default()
    };
    let r = revoke(&ruleset(&tighter()), &mut t).unwrap();
    assert_eq!((r.tracked, r.labelled, r.revoked, r.gone), (5, 4, 2, 0));
    let gone: Vec<String> = t.deleted.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        gone,
        [
            "10.0.0.3 -> 10.0.0.1 tcp/5432",
            "10.0.0.2 -> 10.0.0.1 udp/53"
        ]
    );
    assert_eq!(t.entries.len(), 3);
}

#[test]
fn an_unchanged_policy_revokes_nothing_and_deletes_nothing() {
    let mut t = Fake {
        entries: vec![
            entry("10.0.0.3", "10.0.0.1", 6, Some(5432), true),
            entry("fd00::2", "fd00::1", 6, Some(5432), true),
        ],
        fail_delete: Some(libc::EPERM),
        ..Fake::default()
    };
    let r = revoke(&ruleset(POLICY), &mut t).unwrap();
    assert_eq!((r.labelled, r.revoked), (2, 0));
}

/// A VPN gateway (10.0.0.254, in no group) in front of the estate.
fn gateway(yaml: &str) -> Ruleset {
    let mut c = ctx(&["10.0.0.254"]);
    c.mode = crate::config::Mode::Gateway;
    compile(&doc(yaml), &c).unwrap()
}

#[test]
fn a_gateway_judges_forwarded_connections_on_the_forward_hook() {
    let old = entry("10.0.0.3", "10.0.0.1", 6, Some(5432), true);
    let app = entry("10.0.0.2", "10.0.0.1", 6, Some(5432), true);
    let ike = entry("10.0.0.3", "10.0.0.254", 17, Some(500), true);
    let rs = gateway(&tighter());
    assert_eq!(hook_of(&rs, &old), Hook::Forward);
    assert_eq!(hook_of(&rs, &ike), Hook::Input, "to the gateway itself");
    assert_eq!(hook_of(&ruleset(&tighter()), &old), Hook::Input, "a host");
    // The forward chain labels what it judges.
    let (_, fwd) = rs.base_chain(Hook::Forward).unwrap();
    assert!(fwd.iter().any(|r| r.verdict == Verdict::CtLabel(CT_LABEL)));

    assert!(allowed(&gateway(POLICY), &old).unwrap());
    let mut t = Fake {
        entries: vec![old.clone(), app.clone(), ike.clone()],
        ..Fake::default()
    };
    let r = revoke(&rs, &mut t).unwrap();
    assert_eq!((r.labelled, r.revoked), (3, 1));
    assert_eq!(t.deleted, vec![old]);
}

#[test]
fn icmp_connections_are_judged_by_type_and_code() {
    let mut ping = entry("10.0.0.3", "10.0.0.1", 1, None, true);
    ping.icmp = Some((8, 0));
    assert!(allowed(&ruleset(POLICY), &ping).unwrap());
    assert!(!allowed(&ruleset(&tighter()), &ping).unwrap());
}

#[test]
fn a_failed_delete_is_an_error_naming_the_errno() {
    let mut t = Fake {
        entries: vec![entry("10.0.0.3", "10.0.0.1", 6, Some(5432), true)],
        fail_delete: Some(libc::EPERM),
        ..Fake::default()
    };
    let e = revoke(&ruleset(&tighter()), &mut t).unwrap_err();
    assert!(e.to_string().contains("delete request: 1"), "{e}");
}

#[test]
fn another_label_bit_is_not_ours() {
    let mut e = entry("10.0.0.3", "10.0.0.1", 6, Some(5432), false);
    e.labels = Some(label_bits(5));
    assert!(!e.labelled(CT_LABEL) && !e.labelled_any());
    e.labels = Some(label_bits(CT_LABEL_EGRESS));
    assert!(!e.labelled(CT_LABEL) && e.labelled_any());
    e.labels = Some([0xff; 16]);
    assert!(e.labelled(CT_LABEL));
}

/// sg-app may send to sg-db on 5432; egress_tighter() takes that away (ingress unchanged).
const EGRESS: &str = r#"
groups:
  - id: sg-db
    ingress:
      - {proto: tcp, ports: 5432, from: {groups: [sg-app]}}
    egress: []
  - id: sg-app
    ingress:
      - {proto: tcp, ports: 8080, from: {cidrs: [10.0.0.0/8]}}
    egress:
      - {proto: tcp, ports: 5432, to: {groups: [sg-db]}}
      - {proto: tcp, ports: 443, to: {cidrs: [10.9.0.0/16]}}
hosts:
  - {id: db, addresses: [10.0.0.1], groups: [sg-db]}
  - {id: app, addresses: [10.0.0.2], groups: [sg-app]}
"#;

fn egress_tighter() -> String {
    EGRESS.replace(
        "      - {proto: tcp, ports: 5432, to: {groups: [sg-db]}}\n",
        "",
    )
}

fn egress_entry(src: &str, dst: &str, port: u16) -> Entry {
    Entry {
        labels: Some(label_bits(CT_LABEL_EGRESS)),
        ..entry(src, dst, 6, Some(port), false)
    }
}

#[test]
fn egress_labelled_connections_are_judged_as_egress_on_the_output_hook() {
    let host = |yaml: &str| {
        let mut c = ctx(&["10.0.0.2"]);
        c.egress = true;
        compile(&doc(yaml), &c).unwrap()
    };
    let (before, after) = (host(EGRESS), host(&egress_tighter()));
    // The output chain labels what its egress rules let through, with the egress bit.
    let (_, out) = after.base_chain(Hook::Output).unwrap();
    assert!(out
        .iter()
        .any(|r| r.verdict == Verdict::CtLabel(CT_LABEL_EGRESS)));
    assert!(!out.iter().any(|r| r.verdict == Verdict::CtLabel(CT_LABEL)));

    let to_db = egress_entry("10.0.0.2", "10.0.0.1", 5432);
    let to_web = egress_entry("10.0.0.2", "10.9.0.7", 443);
    assert_eq!(egress_hook_of(&after, &to_db), Hook::Output);
    assert!(allowed(&before, &to_db).unwrap());
    assert!(!allowed(&after, &to_db).unwrap());
    assert!(allowed(&after, &to_web).unwrap());
    // Judged as ingress, the same tuple would be a connection *to* 10.0.0.1, which is not
    // this host: the egress bit is what makes it judged by the source's egress rules.
    let mut t = Fake {
        entries: vec![to_db.clone(), to_web],
        ..Fake::default()
    };
    let r = revoke(&after, &mut t).unwrap();
    assert_eq!((r.labelled, r.revoked), (2, 1), "{r:?}");
    assert_eq!(t.deleted, vec![to_db]);
}

#[test]
fn a_gateway_judges_egress_labelled_forwarded_connections_by_their_source() {
    let gw = |yaml: &str| {
        let mut c = ctx(&["10.0.0.254"]);
        c.mode = crate::config::Mode::Gateway;
        c.egress = true;
        compile(&doc(yaml), &c).unwrap()
    };
    let (before, after) = (gw(EGRESS), gw(&egress_tighter()));
    let (_, fwd) = after.base_chain(Hook::Forward).unwrap();
    for bit in [CT_LABEL, CT_LABEL_EGRESS] {
        assert!(
            fwd.iter().any(|r| r.verdict == Verdict::CtLabel(bit)),
            "{bit}"
        );
    }
    // app (behind the gateway) to db, leaving over IPsec: forwarded egress.
    let e = egress_entry("10.0.0.2", "10.0.0.1", 5432);
    assert_eq!(egress_hook_of(&after, &e), Hook::Forward);
    assert!(allowed(&before, &e).unwrap());
    assert!(!allowed(&after, &e).unwrap());
    // The gateway's own connection out: the output hook (no output chain without host
    // egress groups: allowed, nothing to judge it by).
    let own = egress_entry("10.0.0.254", "10.0.0.1", 5432);
    assert_eq!(egress_hook_of(&after, &own), Hook::Output);
    // Labelled by both judgements: denied when either now denies it. Ingress still allows
    // app -> db 5432 (sg-db's ingress), egress no longer does.
    let mut both = e.clone();
    let (i, g) = (label_bits(CT_LABEL), label_bits(CT_LABEL_EGRESS));
    both.labels = Some(std::array::from_fn(|k| i[k] | g[k]));
    let mut ingress_only = both.clone();
    ingress_only.labels = Some(i);
    assert!(allowed(&after, &ingress_only).unwrap());
    assert!(!allowed(&after, &both).unwrap());
}

fn tuple(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Attr<'static> {
    Attr::Nested(
        0,
        vec![
            Attr::Nested(
                1,
                vec![Attr::bytes(1, src.to_vec()), Attr::bytes(2, dst.to_vec())],
            ),
            Attr::Nested(
                2,
                vec![
                    Attr::bytes(1, vec![6u8]),
                    Attr::bytes(2, sport.to_be_bytes().to_vec()),
                    Attr::bytes(3, dport.to_be_bytes().to_vec()),
                ],
            ),
        ],
    )
}

fn with_kind(a: Attr<'static>, kind: u16) -> Attr<'static> {
    match a {
        Attr::Nested(_, v) => Attr::Nested(kind, v),
        other => other,
    }
}

/// A dump message's attributes as the kernel sends them: a DNAT'ed connection from
/// 10.0.0.3:40000 to 192.0.2.1:80, answered by 10.0.0.1:8080, labelled, in zone 5.
fn dumped() -> Vec<u8> {
    let attrs = vec![
        with_kind(tuple([10, 0, 0, 3], [192, 0, 2, 1], 40000, 80), 1),
        with_kind(tuple([10, 0, 0, 1], [10, 0, 0, 3], 8080, 40000), 2),
        Attr::U32(3, 0x18e),
        Attr::U32(12, 0xdead_beef),
        Attr::bytes(18, 5u16.to_be_bytes().to_vec()),
        Attr::bytes(22, label_bits(CT_LABEL).to_vec()),
    ];
    attrs.to_vec()
}

#[test]
fn a_dumped_entry_is_judged_by_what_the_input_chain_saw() {
    let e = parse_entry(&dumped()).unwrap();
    assert_eq!(e.to_string(), "10.0.0.3 -> 10.0.0.1 tcp/8080");
    assert_eq!((e.id, e.zone), (Some(0xdead_beef), Some(5)));
    assert!(e.labelled(CT_LABEL));
    // The original tuple is kept byte for byte, to be sent back in the delete.
    let orig = tuple([10, 0, 0, 3], [192, 0, 2, 1], 40000, 80).to_vec();
    assert_eq!(e.tuple, orig[4..]);
}

#[test]
fn truncated_dump_messages_never_panic() {
    let d = dumped();
    for n in 0..d.len() {
        let _ = parse_entry(&d[..n]);
    }
    assert!(parse_entry(&d[..40]).is_none());
}

#[test]
fn a_delete_names_the_original_tuple_zone_and_id() {
    let e = parse_entry(&dumped()).unwrap();
    let m = delete_message(&e, 9);
    assert_eq!(
        u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
        m.len()
    );
    assert_eq!(
        u16::from_ne_bytes([m[4], m[5]]),
        (1 << 8) | IPCTNL_MSG_CT_DELETE
    );
    assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 9);
    assert_eq!(m[16], 2, "AF_INET");
    // The tuple goes back as a nested CTA_TUPLE_ORIG, then the zone and the id.
    let body = &m[20..];
    let n = 4 + e.tuple.len();
    assert_eq!(&body[0..4], &[n as u8, 0, 1, 0x80]);
    assert_eq!(&body[4..n], &e.tuple[..]);
    assert_eq!(&body[n..n + 8], &[6, 0, 18, 0, 0, 5, 0, 0]);
    assert_eq!(&body[n + 8..n + 16], &[8, 0, 12, 0, 0xde, 0xad, 0xbe, 0xef]);
}

#[test]
fn acks_and_errors_name_their_request() {
    let mut d = Vec::new();
    for (seq, errno) in [(3u32, 0i32), (4, -libc::ENOENT)] {
        d.extend_from_slice(&36u32.to_ne_bytes());
        d.extend_from_slice(&2u16.to_ne_bytes());
        d.extend_from_slice(&0x100u16.to_ne_bytes());
        d.extend_from_slice(&seq.to_ne_bytes());
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&errno.to_ne_bytes());
        d.extend_from_slice(&[0; 8]);
        d.extend_from_slice(&seq.to_ne_bytes());
        d.extend_from_slice(&[0; 4]);
    }
    assert_eq!(
        answers(&d).unwrap(),
        [
            Answer::Status { seq: 3, errno: 0 },
            Answer::Status {
                seq: 4,
                errno: libc::ENOENT
            }
        ]
    );
    for n in 0..d.len() {
        let _ = answers(&d[..n]);
    }
}
