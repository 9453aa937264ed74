//! The commands around the core: `config check` / `config example`, `completions`, `manpages`
//! (checked with `man -l`), and `graph` (a golden DOT for the example estate, and an SVG from
//! Graphviz that headless chromium renders to a non-blank PNG).
//!
//! Tests that need an outside tool (man, bash-completion, dot, chromium) print a `skipped` line
//! when it is missing, and fail instead under REYES_REQUIRE_TOOLS=1 (scripts/test sets it as
//! root, after scripts/setup installed them).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn reyes() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_reyes"));
    c.env_remove("REYES_CONFIG").env_remove("REYES_LOG");
    c
}

fn run(c: &mut Command) -> Output {
    c.output().expect("run reyes")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `Some(path)` when `tool` is on PATH; otherwise prints a skip line (or panics under
/// REYES_REQUIRE_TOOLS=1) and returns `None`.
fn tool(tool: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|f| f.is_file())
    });
    if found.is_none() {
        if std::env::var("REYES_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{test}: `{tool}` is required (REYES_REQUIRE_TOOLS=1): run scripts/setup");
        }
        eprintln!("skipped: {test}: `{tool}` not installed (scripts/setup installs it)");
    }
    found
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn config_example_is_the_shipped_file_and_checks_clean() {
    let out = run(reyes().args(["config", "example"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shipped = std::fs::read_to_string(repo().join("packaging/reyes.yaml")).unwrap();
    assert_eq!(text(&out.stdout), shipped);

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("reyes.yaml");
    std::fs::write(&cfg, &out.stdout).unwrap();
    let out = run(reyes().arg("--config").arg(&cfg).args(["config", "check"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.starts_with(&format!("# {}: OK", cfg.display())), "{s}");
    // Defaults the file does not spell out are filled in.
    for needle in [
        "environment: unconfigured",
        "nft_transport: auto",
        "iptables_variant: auto",
        "validity: 1h",
        "allow_unknown_host: false",
        "action: drop",
        "directory: /var/lib/reyes/store",
    ] {
        assert!(s.contains(needle), "{needle} missing in:\n{s}");
    }
}

#[test]
fn config_check_resolves_relative_paths_and_names_the_error_location() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("reyes.yaml");
    std::fs::write(
        &cfg,
        "environment: prod\nstore: {directory: store}\nfollower:\n  failsafe: [{proto: tcp, port: 22}]\n",
    )
    .unwrap();
    let out = run(reyes().arg("--config").arg(&cfg).args(["config", "check"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    let store = dir.path().join("store");
    assert!(
        s.contains(&format!("directory: {}", store.display())),
        "{s}"
    );
    assert!(
        s.contains("port: '22'") || s.contains("port: \"22\"") || s.contains("port: 22"),
        "{s}"
    );

    std::fs::write(
        &cfg,
        "environment: prod\nstore: {directory: store}\nfollower:\n  enforse: cidr\n",
    )
    .unwrap();
    let out = run(reyes().arg("--config").arg(&cfg).args(["config", "check"]));
    assert_eq!(out.status.code(), Some(2));
    let e = text(&out.stderr);
    assert!(e.contains(&format!("{}:4:", cfg.display())), "{e}");
    assert!(e.contains("enforse"), "{e}");

    let out = run(reyes()
        .arg("--config")
        .arg(dir.path().join("missing.yaml"))
        .args(["config", "check"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn completions_for_every_shell() {
    for (shell, needle) in [
        ("bash", "complete -F _reyes"),
        ("zsh", "#compdef reyes"),
        ("fish", "complete -c reyes"),
    ] {
        let out = run(reyes().args(["completions", shell]));
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let s = text(&out.stdout);
        assert!(s.contains(needle), "{shell}: no {needle:?}");
        assert!(s.contains("follower") && s.contains("graph"), "{shell}");
    }
    let out = run(reyes().args(["completions", "tcsh"]));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bash_completion_loads_and_completes_subcommands() {
    let Some(bash) = tool("bash", "bash completion") else {
        return;
    };
    let helper = Path::new("/usr/share/bash-completion/bash_completion");
    if !helper.exists() {
        if std::env::var("REYES_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("bash-completion is required (REYES_REQUIRE_TOOLS=1)");
        }
        eprintln!("skipped: bash completion: bash-completion not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("reyes.bash");
    let out = run(reyes().args(["completions", "bash"]));
    std::fs::write(&script, &out.stdout).unwrap();
    let probe = format!(
        "source {}; source {}; COMP_WORDS=(reyes fol); COMP_CWORD=1; COMP_LINE='reyes fol'; \
         COMP_POINT=9; _reyes reyes fol reyes; printf '%s\\n' \"${{COMPREPLY[@]}}\"; \
         COMP_WORDS=(reyes config ''); COMP_CWORD=2; _reyes reyes '' config; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        helper.display(),
        script.display()
    );
    let out = Command::new(bash).args(["-c", &probe]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    let words: Vec<&str> = s.lines().collect();
    assert!(words.contains(&"follower"), "{s}");
    assert!(
        words.contains(&"check") && words.contains(&"example"),
        "{s}"
    );
}

#[test]
fn man_pages_for_every_command_render_with_man() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(reyes().arg("manpages").arg(dir.path()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for p in [
        "reyes.1",
        "reyes-follower.1",
        "reyes-leader.1",
        "reyes-config.1",
        "reyes-graph.1",
        "reyes-completions.1",
    ] {
        assert!(pages.contains(&p.to_string()), "{p} not in {pages:?}");
    }
    assert!(!pages
        .iter()
        .any(|p| p.contains("manpages") || p.contains("help")));
    let Some(man) = tool("man", "man -l") else {
        return;
    };
    for p in &pages {
        let out = Command::new(&man)
            .arg("-l")
            .arg(dir.path().join(p))
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .output()
            .unwrap();
        assert!(out.status.success(), "man -l {p}: {}", text(&out.stderr));
        let s = text(&out.stdout);
        assert!(s.contains("NAME") && s.contains("SYNOPSIS"), "{p}:\n{s}");
        let stem = p.trim_end_matches(".1");
        assert!(s.contains(stem), "{p} does not name {stem}");
        assert!(
            !text(&out.stderr).contains("warning"),
            "{p}: {}",
            text(&out.stderr)
        );
    }
}

fn example_document(dir: &Path) -> PathBuf {
    let path = dir.join("rules.json");
    std::fs::write(&path, support::static_built().bytes).unwrap();
    path
}

#[test]
fn graph_of_the_example_matches_the_golden_dot() {
    let dir = tempfile::tempdir().unwrap();
    let doc = example_document(dir.path());
    let out = run(reyes().args(["graph", "--document"]).arg(&doc).args([
        "--from",
        "10.1.0.5",
        "--to",
        "10.1.0.12",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let golden = repo().join("tests/golden/example-graph.dot");
    let want = std::fs::read_to_string(&golden).unwrap_or_default();
    if std::env::var("REYES_UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&golden, &out.stdout).unwrap();
    } else {
        assert_eq!(
            text(&out.stdout),
            want,
            "graph DOT differs from {} (REYES_UPDATE_GOLDEN=1 rewrites it; review the diff)",
            golden.display()
        );
    }
    // From 10.1.0.5 (lb1) to 10.1.0.12 (web2, in web and ops): lb -> web (tcp/443) and
    // 10.0.0.0/8 -> web (icmp echo), and nothing else.
    let s = text(&out.stdout);
    let red: Vec<&str> = s
        .lines()
        .filter(|l| l.contains("-> ") && l.contains("color=red"))
        .collect();
    assert_eq!(red.len(), 2, "{s}");
    assert!(
        red[0].starts_with("  \"cidr:10.0.0.0/8\" -> \"sg-web\""),
        "{s}"
    );
    assert!(red[1].starts_with("  \"sg-lb\" -> \"sg-web\""), "{s}");

    let out = run(reyes()
        .args(["graph", "--format", "json", "--group", "db", "--document"])
        .arg(&doc));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let edges = v["edges"].as_array().unwrap();
    assert!(!edges.is_empty());
    assert!(
        edges
            .iter()
            .all(|e| e["to"] == "sg-db" || e["from"] == "sg-db"),
        "{v}"
    );

    let out = run(reyes()
        .args(["graph", "--group", "nope", "--document"])
        .arg(&doc));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--group nope"));
}

#[test]
fn graph_svg_without_graphviz_says_what_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let doc = example_document(dir.path());
    let out = run(reyes()
        .args(["graph", "--format", "svg", "--document"])
        .arg(&doc)
        .env("REYES_DOT", dir.path().join("no-such-dot")));
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("install graphviz") && e.contains("--format dot"),
        "{e}"
    );
}

/// Share of pixels that differ from the top-left pixel's colour, in a PNG decoded by
/// `python3` (no image crate needed): a blank render is one colour.
fn non_background_share(png: &Path) -> f64 {
    let py = r#"
import sys, zlib, struct
d = open(sys.argv[1], 'rb').read()
assert d[:8] == b'\x89PNG\r\n\x1a\n'
i, idat, w, h, ct = 8, b'', 0, 0, 0
while i < len(d):
    n, t = struct.unpack('>I4s', d[i:i+8]); c = d[i+8:i+8+n]; i += 12 + n
    if t == b'IHDR': w, h, bd, ct = struct.unpack('>IIBB', c[:10])
    if t == b'IDAT': idat += c
bpp = {2: 3, 6: 4, 0: 1, 4: 2}[ct]
raw = zlib.decompress(idat); stride = w * bpp; prev = bytearray(stride); rows = []
for y in range(h):
    f = raw[y*(stride+1)]; line = bytearray(raw[y*(stride+1)+1:(y+1)*(stride+1)])
    for x in range(stride):
        a = line[x-bpp] if x >= bpp else 0; b = prev[x]; c = prev[x-bpp] if x >= bpp else 0
        if f == 1: line[x] = (line[x] + a) & 255
        elif f == 2: line[x] = (line[x] + b) & 255
        elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c; pa, pb, pc = abs(p-a), abs(p-b), abs(p-c)
            line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    rows.append(bytes(line)); prev = line
bg = rows[0][:bpp]
diff = sum(1 for r in rows for x in range(0, stride, bpp) if r[x:x+bpp] != bg)
print(diff / (w * h))
"#;
    let out = Command::new("python3")
        .args(["-c", py])
        .arg(png)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().parse().unwrap()
}

#[test]
fn graph_svg_renders_to_a_non_blank_png_in_chromium() {
    let Some(_) = tool("dot", "graph svg") else {
        return;
    };
    let Some(chromium) = tool("chromium", "graph svg in chromium") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let doc = example_document(dir.path());
    let out = run(reyes()
        .args(["graph", "--format", "svg", "--document"])
        .arg(&doc));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let svg = dir.path().join("estate.svg");
    std::fs::write(&svg, &out.stdout).unwrap();
    let s = text(&out.stdout);
    assert!(s.contains("<svg") && s.contains("sg&#45;web"), "{s}");
    let png = dir.path().join("estate.png");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=800,600",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", svg.display()))
        .output()
        .unwrap();
    assert!(png.exists(), "chromium made no PNG: {}", text(&out.stderr));
    let share = non_background_share(&png);
    assert!(share > 0.005, "the PNG is blank ({share} of pixels drawn)");
}
