//! `reyes query` and `reyes test`: judge flows against a document with the evaluator.
//!
//! Both judge the policy itself (flow tests): each flow is compiled for its destination
//! as the host, in ipsec mode, and marked as having arrived over IPsec, so it is in scope and
//! the answer is the security-group verdict (plus what a follower always accepts: IKE, ESP/AH,
//! ICMP errors, neighbour discovery). A config given with `--config` adds its follower context
//! (enforce mode, managed and local CIDRs, failsafe), and `--enforce`, `--no-ipsec`,
//! `--established` change the scope, to ask what a given follower would do.
//!
//! With egress (`--egress`, `follower.egress`), a flow from an address of the document must
//! also pass its source's egress rules: judged as the source sending it over IPsec. In gateway
//! mode (`--mode gateway`, `follower.mode`) both are judged as a gateway forwarding the flow
//! would: the forward chain of a gateway for every group (and `follower.gateway_cidrs`), the
//! flow arriving over IPsec for the destination's rules and leaving over IPsec for the
//! source's egress rules.

use std::collections::HashMap;
use std::fmt::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::compile::{Hook, HostContext, Origin, Ruleset, Target};
use crate::config::{Config, Enforce, Mode};
use crate::doctext::rule_text;
use crate::document::Document;
use crate::error::{CmdResult, ExitKind, Failure};
use crate::eval::{self, ConnState, Decision, Evaluation, Flow};
use crate::net::Family;
use crate::proto::Proto;

/// How a flow reaches the host (beyond the document).
#[derive(Debug, Clone, Default)]
pub struct ScopeOptions {
    /// Enforcement mode (overrides the config's; default ipsec).
    pub enforce: Option<Enforce>,
    /// The flow did not arrive over IPsec (default: it did).
    pub no_ipsec: bool,
    /// The flow belongs to an established connection.
    pub established: bool,
    /// Mode (overrides the config's; default host).
    pub mode: Option<Mode>,
    /// Also judge the source's egress rules (or the config's `follower.egress`).
    pub egress: bool,
}

/// `query` options.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    /// The document.
    pub document: PathBuf,
    /// Source.
    pub from: IpAddr,
    /// Destination.
    pub to: IpAddr,
    /// Protocol.
    pub proto: Proto,
    /// tcp/udp port (absent: every port).
    pub port: Option<u16>,
    /// icmp type (absent: every type).
    pub icmp_type: Option<u8>,
    /// icmp code (absent: every code).
    pub icmp_code: Option<u8>,
    /// Scope.
    pub scope: ScopeOptions,
}

/// Every failure of `query` and `test` exits 2 (a usage error).
pub fn as_usage(f: Failure) -> Failure {
    Failure {
        kind: ExitKind::Usage,
        error: f.error,
    }
}

fn usage(msg: String) -> Failure {
    Failure::usage(anyhow::anyhow!(msg))
}

/// Compiles the document once per destination.
struct Judge<'a> {
    doc: &'a Document,
    base: HostContext,
    scope: ScopeOptions,
    cache: HashMap<IpAddr, Ruleset>,
    /// Host mode with egress: the ruleset of each source.
    senders: HashMap<IpAddr, Ruleset>,
    /// Gateway mode: the gateway's ruleset.
    gateway: Option<Ruleset>,
}

impl<'a> Judge<'a> {
    fn new(doc: &'a Document, cfg: Option<&Config>, scope: &ScopeOptions) -> CmdResult<Judge<'a>> {
        let fcfg = cfg.map(|c| c.follower.clone()).unwrap_or_default();
        let mut base = HostContext::from_config(&fcfg, Target::AllGroups);
        base.log_accept = false;
        base.log_drop = false;
        base.allow_unknown_host = true;
        if let Some(e) = scope.enforce {
            base.enforce = e;
        }
        if let Some(m) = scope.mode {
            base.mode = m;
        }
        if base.mode == Mode::Host {
            base.gateway_cidrs.clear();
        }
        base.egress |= scope.egress;
        if base.enforce == Enforce::Cidr && base.managed_cidrs.is_empty() {
            return Err(usage(
                "--enforce cidr needs follower.managed_cidrs from a config (--config)".into(),
            ));
        }
        Ok(Judge {
            doc,
            base,
            scope: scope.clone(),
            cache: HashMap::new(),
            senders: HashMap::new(),
            gateway: None,
        })
    }

    fn flow(
        &self,
        src: IpAddr,
        dst: IpAddr,
        proto: Proto,
        port: Option<u16>,
        icmp: (Option<u8>, Option<u8>),
    ) -> Flow {
        let mut f = Flow::new(src, dst, proto).via_ipsec(!self.scope.no_ipsec);
        f.port = port;
        (f.icmp_type, f.icmp_code) = icmp;
        if self.scope.established {
            f.state = ConnState::Established;
        }
        f
    }

    /// The verdict of the destination's rules and, with egress, of the source's: the first
    /// that denies, else the destination's.
    fn judge(&mut self, f: &Flow) -> CmdResult<Evaluation> {
        let ingress = self.judge_ingress(f)?;
        let sender_known = self
            .doc
            .policy
            .groups
            .iter()
            .any(|g| g.members.iter().any(|m| m.contains(&f.src)));
        if ingress.decision == Decision::Deny || !self.base.egress || !sender_known {
            return Ok(ingress);
        }
        let egress = self.judge_egress(f)?;
        Ok(if egress.decision == Decision::Deny {
            egress
        } else {
            ingress
        })
    }

    fn judge_ingress(&mut self, f: &Flow) -> CmdResult<Evaluation> {
        if self.base.mode == Mode::Gateway {
            let f = f.clone().at(Hook::Forward);
            return evaluate(self.gateway()?, &f);
        }
        if !self.cache.contains_key(&f.dst) {
            let ctx = HostContext {
                target: Target::Host(vec![f.dst]),
                egress: false,
                ..self.base.clone()
            };
            let rs = crate::load::compile_for(self.doc, &ctx).map_err(as_usage)?;
            self.cache.insert(f.dst, rs);
        }
        evaluate(&self.cache[&f.dst], f)
    }

    /// The flow as its source sends it over IPsec (or, in gateway mode, as the gateway
    /// forwards it into IPsec): judged by the source's egress rules.
    fn judge_egress(&mut self, f: &Flow) -> CmdResult<Evaluation> {
        let mut out = f
            .clone()
            .via_ipsec(false)
            .leaves_ipsec(!self.scope.no_ipsec);
        if self.base.mode == Mode::Gateway {
            out = out.at(Hook::Forward);
            return evaluate(self.gateway()?, &out);
        }
        out = out.at(Hook::Output);
        if !self.senders.contains_key(&f.src) {
            let ctx = HostContext {
                target: Target::Host(vec![f.src]),
                ..self.base.clone()
            };
            let rs = crate::load::compile_for(self.doc, &ctx).map_err(as_usage)?;
            self.senders.insert(f.src, rs);
        }
        evaluate(&self.senders[&f.src], &out)
    }

    fn gateway(&mut self) -> CmdResult<&Ruleset> {
        if self.gateway.is_none() {
            let ctx = HostContext {
                target: Target::Host(vec![]),
                ..self.base.clone()
            };
            let rs = crate::load::compile_for(self.doc, &ctx).map_err(as_usage)?;
            self.gateway = Some(rs);
        }
        self.gateway
            .as_ref()
            .ok_or_else(|| usage("internal error: no gateway ruleset".into()))
    }
}

fn evaluate(rs: &Ruleset, f: &Flow) -> CmdResult<Evaluation> {
    eval::evaluate(rs, f).map_err(|e| Failure::usage(anyhow::anyhow!("internal error: {e}")))
}

/// What decided, as text, with the document's rule where there is one.
pub fn explain(doc: &Document, cfg: Option<&Config>, e: &Evaluation) -> Vec<String> {
    let rule = |o: &Origin| match o {
        Origin::GroupRule {
            group,
            rule,
            source,
        } => {
            let text = doc
                .policy
                .group(group)
                .and_then(|g| g.ingress.get(*rule))
                .map(rule_text)
                .unwrap_or_else(|| "?".into());
            format!("{group} ingress[{rule}]: {text} (matched {source})")
        }
        Origin::EgressRule { group, rule, dest } => {
            let text = doc
                .policy
                .group(group)
                .and_then(|g| g.egress.as_ref()?.get(*rule))
                .map(|r| rule_text(&r.as_rule()).replacen(" from ", " to ", 1))
                .unwrap_or_else(|| "?".into());
            format!("{group} egress[{rule}]: {text} (matched {dest})")
        }
        Origin::Failsafe(i) => {
            let what = cfg
                .and_then(|c| c.follower.failsafe.get(*i))
                .map(|f| {
                    let mut s = f.proto.to_string();
                    if let Some(p) = f.port {
                        let _ = write!(s, " {p}");
                    }
                    if let Some(c) = f.from {
                        let _ = write!(s, " from {c}");
                    }
                    s
                })
                .unwrap_or_default();
            format!("follower.failsafe[{i}]: {what}")
        }
        other => other.to_string(),
    };
    match e.decision {
        Decision::Allow if !e.matched.is_empty() => e.matched.iter().map(rule).collect(),
        Decision::Allow => match &e.decided_by {
            Origin::Base(why) => vec![format!("always accepted: {why}")],
            o => vec![rule(o)],
        },
        Decision::Deny => {
            let groups = if !e.source_groups.is_empty() {
                format!("source groups: {}", e.source_groups.join(" "))
            } else if matches!(&e.decided_by, Origin::Base(w) if w.contains("egress")) {
                "the source is in no group".to_string()
            } else if e.dest_groups.is_empty() {
                "the destination is in no group".to_string()
            } else {
                format!("destination groups: {}", e.dest_groups.join(" "))
            };
            vec![format!("{} ({groups})", rule(&e.decided_by))]
        }
    }
}

/// What a flow leaves open (every protocol, port, ICMP type or code), for the DENY note.
fn open_fields(f: &Flow) -> Option<&'static str> {
    if f.proto == Proto::All {
        Some("protocol")
    } else if f.proto.has_ports() && f.port.is_none() {
        Some("port")
    } else if f.proto.is_icmp() && f.icmp_type.is_none() {
        Some("ICMP type")
    } else if f.proto.is_icmp() && f.icmp_code.is_none() {
        Some("ICMP code")
    } else {
        None
    }
}

/// `reyes query`: the text to print and the decision.
pub fn query(cfg: Option<&Config>, o: &QueryOptions) -> CmdResult<(String, Decision)> {
    let doc = crate::load::load_document(&o.document).map_err(as_usage)?;
    let mut judge = Judge::new(&doc, cfg, &o.scope)?;
    let f = judge.flow(o.from, o.to, o.proto, o.port, (o.icmp_type, o.icmp_code));
    f.check().map_err(|m| usage(format!("flow {f}: {m}")))?;
    let e = judge.judge(&f)?;
    let mut out = format!("{} {f}\n", e.decision);
    for line in explain(&doc, cfg, &e) {
        let _ = writeln!(out, "  {line}");
    }
    if e.decision == Decision::Deny {
        if let Some(open) = open_fields(&f) {
            let _ = writeln!(
                out,
                "  note: this asks about every {open}: ALLOW needs one rule that covers them all"
            );
        }
    }
    Ok((out, e.decision))
}

/// An end of a flow in FLOWS.yaml: an address or `{group: ID}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// One address.
    Addr(IpAddr),
    /// Every member of the group (a prefix member by its network address).
    Group(String),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Addr(a) => write!(f, "{a}"),
            Endpoint::Group(g) => write!(f, "group {g}"),
        }
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Endpoint, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Endpoint;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an IP address or {group: GROUP-ID}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Endpoint, E> {
                v.trim().parse().map(Endpoint::Addr).map_err(|_| {
                    E::custom(format!(
                        "{v:?} is not an IP address (or use {{group: GROUP-ID}})"
                    ))
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Endpoint, A::Error> {
                let mut group: Option<String> = None;
                while let Some(k) = m.next_key::<String>()? {
                    match k.as_str() {
                        "group" if group.is_none() => group = Some(m.next_value()?),
                        "group" => return Err(de::Error::duplicate_field("group")),
                        other => return Err(de::Error::unknown_field(other, &["group"])),
                    }
                }
                group
                    .map(Endpoint::Group)
                    .ok_or_else(|| de::Error::missing_field("group"))
            }
        }
        d.deserialize_any(V)
    }
}

/// allow | deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// The flow must be accepted.
    Allow,
    /// The flow must be dropped.
    Deny,
}

impl Expect {
    fn decision(self) -> Decision {
        match self {
            Expect::Allow => Decision::Allow,
            Expect::Deny => Decision::Deny,
        }
    }
}

/// One expectation of FLOWS.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    /// What it checks, for messages.
    #[serde(default)]
    pub name: Option<String>,
    /// Source.
    pub from: Endpoint,
    /// Destination.
    pub to: Endpoint,
    /// Protocol.
    pub proto: Proto,
    /// tcp/udp port (absent: every port).
    #[serde(default)]
    pub port: Option<u16>,
    /// icmp/icmpv6 type (absent: every type).
    #[serde(default)]
    pub icmp_type: Option<u8>,
    /// icmp/icmpv6 code (absent: every code).
    #[serde(default)]
    pub icmp_code: Option<u8>,
    /// allow | deny.
    pub expect: Expect,
}

/// Read FLOWS.yaml: a list of [`FlowSpec`], each with its line and column.
pub fn parse_flows(text: &str, path: &Path) -> CmdResult<Vec<Spanned<FlowSpec>>> {
    if text.trim().is_empty() {
        return Ok(vec![]);
    }
    serde_saphyr::from_str(text).map_err(|e| Failure::usage(crate::config::yaml_error(path, &e)))
}

/// What `test` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestReport {
    /// One line per failed flow.
    pub failures: Vec<String>,
    /// Flows that met their expectation.
    pub passed: usize,
}

impl TestReport {
    /// The report as printed: failures, then `N passed, N failed`.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for f in &self.failures {
            let _ = writeln!(s, "{f}");
        }
        let _ = writeln!(s, "{} passed, {} failed", self.passed, self.failures.len());
        s
    }
}

fn members(doc: &Document, e: &Endpoint, at: &str) -> CmdResult<Vec<IpAddr>> {
    match e {
        Endpoint::Addr(a) => Ok(vec![*a]),
        Endpoint::Group(g) => {
            let group = doc
                .policy
                .group(g)
                .ok_or_else(|| usage(format!("{at}: group {g:?} is not in the document")))?;
            let mut v: Vec<IpAddr> = group.members.iter().map(|c| c.net().network()).collect();
            v.dedup();
            Ok(v)
        }
    }
}

/// Run the expectations of `flows` against `doc`. Each entry is expanded to every pair of
/// (source, destination) addresses of one family (of the ICMP's family for icmp/icmpv6);
/// each pair counts as one flow.
pub fn run_tests(
    doc: &Document,
    cfg: Option<&Config>,
    scope: &ScopeOptions,
    path: &Path,
    flows: &[Spanned<FlowSpec>],
) -> CmdResult<TestReport> {
    let mut judge = Judge::new(doc, cfg, scope)?;
    let mut report = TestReport::default();
    for (i, s) in flows.iter().enumerate() {
        let spec = &s.value;
        let at = format!(
            "{}:{}:{}",
            path.display(),
            s.referenced.line(),
            s.referenced.column()
        );
        let what = match &spec.name {
            Some(n) => format!("{at}: {n}"),
            None => format!("{at}: flow {}", i + 1),
        };
        let froms = members(doc, &spec.from, &at)?;
        let tos = members(doc, &spec.to, &at)?;
        let family_ok = |a: &IpAddr| match spec.proto {
            Proto::Icmp => Family::of(a) == Family::V4,
            Proto::Icmpv6 => Family::of(a) == Family::V6,
            _ => true,
        };
        let mut pairs = 0;
        for src in froms.iter().filter(|a| family_ok(a)) {
            for dst in tos.iter().filter(|a| Family::of(a) == Family::of(src)) {
                pairs += 1;
                let f = judge.flow(
                    *src,
                    *dst,
                    spec.proto,
                    spec.port,
                    (spec.icmp_type, spec.icmp_code),
                );
                f.check().map_err(|m| usage(format!("{at}: {m}")))?;
                let e = judge.judge(&f)?;
                if e.decision == spec.expect.decision() {
                    report.passed += 1;
                } else {
                    report.failures.push(format!(
                        "FAIL {what}: {f}: expected {}, got {}: {}",
                        spec.expect.decision(),
                        e.decision,
                        explain(doc, cfg, &e).join("; ")
                    ));
                }
            }
        }
        if pairs == 0 {
            report.failures.push(format!(
                "FAIL {what}: no flow to check: {} and {} have no addresses of one family{}",
                spec.from,
                spec.to,
                if spec.proto.is_icmp() {
                    format!(" that {} applies to", spec.proto)
                } else {
                    String::new()
                }
            ));
        }
    }
    Ok(report)
}

/// `reyes test`: the report (exit 0 when nothing failed, else 1).
pub fn test(
    cfg: Option<&Config>,
    document: &Path,
    flows: &Path,
    scope: &ScopeOptions,
) -> CmdResult<TestReport> {
    let doc = crate::load::load_document(document).map_err(as_usage)?;
    let text = std::fs::read_to_string(flows)
        .map_err(|e| usage(format!("cannot read {}: {e}", flows.display())))?;
    let specs = parse_flows(&text, flows)?;
    run_tests(&doc, cfg, scope, flows, &specs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{build, BuildOptions};
    use crate::inventory::static_file;
    use std::time::{Duration, SystemTime};

    const INV: &str = r#"
networks: [{id: vpc-a, cidrs: [10.1.0.0/16]}]
groups:
  - id: sg-web
    ingress:
      - {proto: tcp, ports: 443, from: {groups: [sg-lb]}}
      - {proto: icmp, icmp_type: 8, from: {cidrs: [10.0.0.0/8]}}
  - id: sg-lb
    ingress:
      - {proto: tcp, ports: 443, from: {cidrs: [0.0.0.0/0]}}
  - {id: sg-empty}
hosts:
  - {id: lb1, addresses: [10.1.0.5, "fd00:1::5"], groups: [sg-lb]}
  - {id: lb2, addresses: [10.1.2.0/24], groups: [sg-lb]}
  - {id: web1, addresses: [10.1.0.10, "fd00:1::10"], groups: [sg-web]}
"#;

    fn doc() -> Document {
        let opts = BuildOptions::new(
            "prod",
            1,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            Duration::from_secs(3600),
        );
        build(&static_file::parse(INV, "t").unwrap(), &opts)
            .unwrap()
            .document
    }

    fn run(yaml: &str) -> CmdResult<TestReport> {
        let p = Path::new("flows.yaml");
        let specs = parse_flows(yaml, p)?;
        run_tests(&doc(), None, &ScopeOptions::default(), p, &specs)
    }

    #[test]
    fn groups_expand_to_members_and_families_pair_up() {
        let r = run("- name: lb reaches web\n  from: {group: sg-lb}\n  to: {group: sg-web}\n  proto: tcp\n  port: 443\n  expect: allow\n").unwrap();
        // v4: 10.1.0.5 and 10.1.2.0 to 10.1.0.10; v6: fd00:1::5 to fd00:1::10.
        assert_eq!(
            r,
            TestReport {
                failures: vec![],
                passed: 3
            }
        );
        assert_eq!(r.text(), "3 passed, 0 failed\n");
    }

    #[test]
    fn failures_name_the_line_and_the_reason() {
        let yaml = "- from: 10.1.0.5\n  to: 10.1.0.10\n  proto: tcp\n  port: 443\n  expect: allow\n\
                    - name: no ssh\n  from: 10.1.0.5\n  to: 10.1.0.10\n  proto: tcp\n  port: 22\n  expect: allow\n\
                    - name: ping\n  from: {group: sg-lb}\n  to: {group: sg-web}\n  proto: icmp\n  icmp_type: 8\n  expect: deny\n";
        let r = run(yaml).unwrap();
        assert_eq!(r.passed, 1);
        assert_eq!(r.failures.len(), 3, "{:?}", r.failures);
        assert!(r.failures[0].starts_with("FAIL flows.yaml:6:3: no ssh: 10.1.0.5 -> 10.1.0.10 tcp/22 (over IPsec): expected ALLOW, got DENY"), "{}", r.failures[0]);
        assert!(
            r.failures[0].contains("destination groups: sg-web"),
            "{}",
            r.failures[0]
        );
        assert!(
            r.failures[1].contains("sg-web ingress[1]: icmp type 8 from cidrs 10.0.0.0/8"),
            "{}",
            r.failures[1]
        );
        assert!(r.text().ends_with("1 passed, 3 failed\n"));
    }

    #[test]
    fn errors_have_locations() {
        let e =
            run("- from: 10.1.0.5\n  to: 10.1.0.10\n  proto: tcp\n  expect: maybe\n").unwrap_err();
        assert_eq!(e.kind, ExitKind::Usage);
        assert!(e.to_string().starts_with("flows.yaml:4:"), "{e}");
        let e =
            run("- from: 10.1.0.5\n  to: 10.1.0.10\n  proto: tcp\n  prot: 1\n  expect: allow\n")
                .unwrap_err();
        assert!(e.to_string().contains("prot"), "{e}");
        let e = run("- from: {grp: sg-lb}\n  to: 10.1.0.10\n  proto: tcp\n  expect: allow\n")
            .unwrap_err();
        assert!(e.to_string().starts_with("flows.yaml:1:"), "{e}");
        let e = run("- from: {group: sg-nope}\n  to: 10.1.0.10\n  proto: tcp\n  expect: allow\n")
            .unwrap_err();
        assert!(
            e.to_string().contains("flows.yaml:1:3: group \"sg-nope\""),
            "{e}"
        );
        let e = run(
            "- from: 10.1.0.5\n  to: 10.1.0.10\n  proto: udp\n  icmp_type: 3\n  expect: allow\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("flows.yaml:1:3:"), "{e}");
    }

    #[test]
    fn empty_groups_fail_rather_than_pass_silently() {
        let r = run(
            "- from: {group: sg-empty}\n  to: 10.1.0.10\n  proto: tcp\n  port: 1\n  expect: deny\n",
        )
        .unwrap();
        assert_eq!(r.passed, 0);
        assert!(
            r.failures[0].contains("no flow to check"),
            "{:?}",
            r.failures
        );
    }
}
