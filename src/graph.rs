//! `reyes graph`: the estate's reachability from a rule document, as a graph.
//!
//! Nodes are the groups, plus one node per literal source CIDR and per prefix list a rule
//! names. There is one edge per (source, destination group), labelled with every
//! protocol/port the destination's ingress rules admit from that source. `--group` keeps one
//! group's neighbourhood; `--from`/`--to` highlights the edges a flow between two addresses
//! can take: from a source that holds `from` (a group member, a CIDR, a prefix-list entry)
//! to a group that holds `to`, as `reyes query` reads the rules.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use serde::Serialize;

use crate::document::{DocRule, Policy};
use crate::proto::Proto;

/// `reyes graph` failed.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// `--group` names no group of the document.
    #[error("--group {0}: no group with that id or name in the document")]
    UnknownGroup(String),
    /// Graphviz is not installed.
    #[error(
        "--format svg needs Graphviz's `dot` ({0}): install graphviz (apt-get install graphviz), \
         or print DOT with --format dot and render it elsewhere"
    )]
    NoDot(#[source] std::io::Error),
    /// `dot` ran and failed.
    #[error("graphviz `dot` failed: {0}")]
    Dot(String),
}

/// What kind of node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A security group.
    Group,
    /// A literal source prefix.
    Cidr,
    /// A managed prefix list.
    PrefixList,
}

/// A node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// Stable id: the group id, `cidr:PREFIX` or the prefix-list id.
    pub id: String,
    /// Kind.
    pub kind: NodeKind,
    /// What to show: group name and id, the prefix, the list id.
    pub label: String,
    /// Number of member prefixes (groups) or entries (prefix lists).
    pub members: usize,
    /// On the `--from`/`--to` path.
    pub highlighted: bool,
}

/// An edge: `from` may reach the members of group `to` with `services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Edge {
    /// Source node id.
    pub from: String,
    /// Destination group id.
    pub to: String,
    /// `tcp/443`, `udp/53-54`, `icmp/8`, `all`, ... sorted.
    pub services: Vec<String>,
    /// On the `--from`/`--to` path.
    pub highlighted: bool,
}

/// The graph, sorted (deterministic output).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Graph {
    /// Nodes, by id.
    pub nodes: Vec<Node>,
    /// Edges, by (from, to).
    pub edges: Vec<Edge>,
}

/// Options of `reyes graph`.
#[derive(Debug, Clone, Default)]
pub struct GraphOptions {
    /// Only edges into or out of this group (id or name).
    pub group: Option<String>,
    /// Highlight the path from this address...
    pub from: Option<IpAddr>,
    /// ...to this one.
    pub to: Option<IpAddr>,
}

/// One rule's service, as an edge label shows it.
pub fn service(r: &DocRule) -> String {
    let p = match r.proto {
        Proto::Number(n) => format!("proto {n}"),
        p => p.to_string(),
    };
    match (r.ports, r.icmp_type, r.icmp_code) {
        (Some(ports), _, _) => format!("{p}/{ports}"),
        (None, Some(t), Some(c)) => format!("{p}/{t}:{c}"),
        (None, Some(t), None) => format!("{p}/{t}"),
        _ => p,
    }
}

/// Build the graph of `policy`.
pub fn build(policy: &Policy, o: &GraphOptions) -> Result<Graph, GraphError> {
    let focus = match &o.group {
        Some(g) => Some(
            policy
                .groups
                .iter()
                .find(|x| &x.id == g || &x.name == g)
                .map(|x| x.id.clone())
                .ok_or_else(|| GraphError::UnknownGroup(g.clone()))?,
        ),
        None => None,
    };
    let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for dst in &policy.groups {
        for rule in &dst.ingress {
            let svc = service(rule);
            let sources = rule
                .from
                .groups
                .iter()
                .cloned()
                .chain(rule.from.cidrs.iter().map(|c| format!("cidr:{c}")))
                .chain(rule.from.prefix_lists.iter().cloned());
            for src in sources {
                edges
                    .entry((src, dst.id.clone()))
                    .or_default()
                    .insert(svc.clone());
            }
        }
    }
    if let Some(f) = &focus {
        edges.retain(|(s, d), _| s == f || d == f);
    }
    let holds_from = |id: &str| o.from.is_some_and(|a| node_holds(policy, id, &a));
    let holds_to = |id: &str| o.to.is_some_and(|a| node_holds(policy, id, &a));
    let mut g = Graph::default();
    let mut ids: BTreeSet<String> = BTreeSet::new();
    for ((from, to), services) in edges {
        let highlighted = holds_from(&from) && holds_to(&to);
        ids.insert(from.clone());
        ids.insert(to.clone());
        g.edges.push(Edge {
            from,
            to,
            services: services.into_iter().collect(),
            highlighted,
        });
    }
    match &focus {
        Some(f) => {
            ids.insert(f.clone());
        }
        None => ids.extend(policy.groups.iter().map(|x| x.id.clone())),
    }
    for id in ids {
        let highlighted = g
            .edges
            .iter()
            .any(|e| e.highlighted && (e.from == id || e.to == id));
        g.nodes.push(node(policy, &id, highlighted));
    }
    Ok(g)
}

fn node(policy: &Policy, id: &str, highlighted: bool) -> Node {
    let (kind, label, members) = if let Some(c) = id.strip_prefix("cidr:") {
        (NodeKind::Cidr, c.to_string(), 1)
    } else if let Some(grp) = policy.group(id) {
        let label = if grp.name.is_empty() || grp.name == grp.id {
            grp.id.clone()
        } else {
            format!("{}\n{}", grp.name, grp.id)
        };
        (NodeKind::Group, label, grp.members.len())
    } else {
        let n = policy.prefix_list(id).map_or(0, |p| p.cidrs.len());
        (NodeKind::PrefixList, id.to_string(), n)
    };
    Node {
        id: id.to_string(),
        kind,
        label,
        members,
        highlighted,
    }
}

/// Whether the source or destination node `id` holds `addr`.
fn node_holds(policy: &Policy, id: &str, addr: &IpAddr) -> bool {
    if let Some(c) = id.strip_prefix("cidr:") {
        return crate::net::Cidr::parse_canonical(c).is_ok_and(|c| c.contains(addr));
    }
    if let Some(g) = policy.group(id) {
        return g.members.iter().any(|m| m.contains(addr));
    }
    policy
        .prefix_list(id)
        .is_some_and(|p| p.cidrs.iter().any(|m| m.contains(addr)))
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The graph in Graphviz DOT.
pub fn dot(g: &Graph) -> String {
    let mut s = String::new();
    s.push_str("digraph reyes {\n");
    s.push_str("  rankdir=LR;\n  node [fontname=\"Helvetica\", fontsize=10];\n");
    s.push_str("  edge [fontname=\"Helvetica\", fontsize=9];\n");
    for n in &g.nodes {
        let shape = match n.kind {
            NodeKind::Group => "box, style=rounded",
            NodeKind::Cidr => "ellipse",
            NodeKind::PrefixList => "folder",
        };
        let mut attrs = format!("label={}, shape={shape}", quote(&n.label));
        if n.highlighted {
            attrs.push_str(", color=red, penwidth=2");
        }
        let _ = writeln!(s, "  {} [{attrs}];", quote(&n.id));
    }
    for e in &g.edges {
        let mut attrs = format!("label={}", quote(&e.services.join("\n")));
        if e.highlighted {
            attrs.push_str(", color=red, fontcolor=red, penwidth=2");
        }
        let _ = writeln!(s, "  {} -> {} [{attrs}];", quote(&e.from), quote(&e.to));
    }
    s.push_str("}\n");
    s
}

/// The graph as pretty JSON.
pub fn json(g: &Graph) -> String {
    let mut s = serde_json::to_string_pretty(g).unwrap_or_else(|_| String::from("{}"));
    s.push('\n');
    s
}

/// Render DOT to SVG with Graphviz (`dot -Tsvg`; `REYES_DOT` names another binary).
pub fn svg(dot_text: &str) -> Result<Vec<u8>, GraphError> {
    let bin = std::env::var_os("REYES_DOT").unwrap_or_else(|| "dot".into());
    let mut child = Command::new(bin)
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(GraphError::NoDot)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(dot_text.as_bytes())
            .map_err(|e| GraphError::Dot(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| GraphError::Dot(e.to_string()))?;
    if !out.status.success() {
        return Err(GraphError::Dot(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{DocGroup, DocSources};
    use crate::net::Cidr;
    use crate::proto::PortRange;

    fn cidr(s: &str) -> Cidr {
        Cidr::parse_canonical(s).unwrap()
    }

    fn policy() -> Policy {
        let rule = |proto, ports: Option<(u16, u16)>, groups: &[&str], cidrs: &[&str]| DocRule {
            proto,
            ports: ports.map(|(a, b)| PortRange::new(a, b).unwrap()),
            icmp_type: None,
            icmp_code: None,
            from: DocSources {
                cidrs: cidrs.iter().map(|c| cidr(c)).collect(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                prefix_lists: vec![],
            },
        };
        let group = |id: &str, name: &str, members: &[&str], ingress| DocGroup {
            id: id.into(),
            name: name.into(),
            network: None,
            members: members.iter().map(|c| cidr(c)).collect(),
            ingress,
            egress: None,
        };
        Policy {
            networks: vec![],
            prefix_lists: vec![],
            groups: vec![
                group(
                    "sg-db",
                    "db",
                    &["10.0.3.0/24"],
                    vec![rule(Proto::Tcp, Some((5432, 5432)), &["sg-web"], &[])],
                ),
                group(
                    "sg-lb",
                    "lb",
                    &["10.0.1.0/24"],
                    vec![rule(Proto::Tcp, Some((443, 443)), &[], &["0.0.0.0/0"])],
                ),
                group(
                    "sg-web",
                    "web",
                    &["10.0.2.0/24"],
                    vec![
                        rule(Proto::Tcp, Some((443, 443)), &["sg-lb"], &[]),
                        rule(Proto::Tcp, Some((8080, 8081)), &["sg-lb"], &[]),
                        rule(Proto::Icmp, None, &["sg-lb"], &[]),
                    ],
                ),
            ],
        }
    }

    #[test]
    fn one_edge_per_source_and_destination_with_every_service() {
        let g = build(&policy(), &GraphOptions::default()).unwrap();
        let e: Vec<_> = g
            .edges
            .iter()
            .map(|e| (e.from.as_str(), e.to.as_str(), e.services.join(",")))
            .collect();
        assert_eq!(
            e,
            [
                ("cidr:0.0.0.0/0", "sg-lb", "tcp/443".to_string()),
                ("sg-lb", "sg-web", "icmp,tcp/443,tcp/8080-8081".to_string()),
                ("sg-web", "sg-db", "tcp/5432".to_string()),
            ]
        );
        assert_eq!(g.nodes.len(), 4);
    }

    #[test]
    fn group_keeps_its_neighbourhood_and_unknown_group_is_an_error() {
        let o = GraphOptions {
            group: Some("db".into()),
            ..Default::default()
        };
        let g = build(&policy(), &o).unwrap();
        assert_eq!(g.edges.len(), 1);
        let ids: Vec<_> = g.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["sg-db", "sg-web"]);
        let o = GraphOptions {
            group: Some("nope".into()),
            ..Default::default()
        };
        assert!(matches!(
            build(&policy(), &o),
            Err(GraphError::UnknownGroup(_))
        ));
    }

    #[test]
    fn from_to_highlights_only_the_edges_a_flow_can_take() {
        let o = GraphOptions {
            from: Some("10.0.1.5".parse().unwrap()),
            to: Some("10.0.2.9".parse().unwrap()),
            ..Default::default()
        };
        let g = build(&policy(), &o).unwrap();
        let hl: Vec<_> = g
            .edges
            .iter()
            .filter(|e| e.highlighted)
            .map(|e| (e.from.as_str(), e.to.as_str()))
            .collect();
        assert_eq!(hl, [("sg-lb", "sg-web")]);
        let d = dot(&g);
        assert!(d.contains(
            "\"sg-lb\" -> \"sg-web\" [label=\"icmp\\ntcp/443\\ntcp/8080-8081\", color=red"
        ));
        assert!(!d.contains("\"sg-web\" -> \"sg-db\" [label=\"tcp/5432\", color=red"));
        // The internet reaches the lb, so a flow from anywhere to the lb takes that edge.
        let o = GraphOptions {
            from: Some("192.0.2.1".parse().unwrap()),
            to: Some("10.0.1.1".parse().unwrap()),
            ..Default::default()
        };
        let g = build(&policy(), &o).unwrap();
        assert!(g.edges[0].highlighted && g.edges.iter().filter(|e| e.highlighted).count() == 1);
    }

    #[test]
    fn dot_quotes_names() {
        assert_eq!(quote("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
    }
}
