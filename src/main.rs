//! The `reyes` binary: argument parsing and exit codes only.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use reyes::commands::{self, RenderOptions};
use reyes::config::{self, Backend, Config, Enforce, Mode};
use reyes::error::{CmdResult, Failure};
use reyes::eval::Decision;
use reyes::follower::{self, FollowerOptions};
use reyes::leader::{self, LeaderOptions};
use reyes::proto::Proto;
use reyes::query::{self, QueryOptions, ScopeOptions};

#[derive(Parser)]
#[command(
    name = "reyes",
    version,
    about = "Security-group rules for traffic that arrives over IPsec, as an nftables table"
)]
struct Cli {
    /// Config file [default: /etc/reyes/reyes.yaml].
    #[arg(long, global = true, env = "REYES_CONFIG")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Read the inventory, build, sign and publish the rule document.
    Leader {
        /// Run once and exit.
        #[arg(long, conflicts_with = "interval")]
        once: bool,
        /// Run forever, once per DUR (90s, 5m, 1h).
        #[arg(long, value_parser = config::parse_duration)]
        interval: Option<Duration>,
        /// Print the canonical document; publish nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write the document here too (with --dry-run: instead of stdout).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Co-sign: check that the stored document's policy is what this leader's inventory
        /// gives, and append this leader's signature (for signing.threshold above 1).
        #[arg(long, conflicts_with_all = ["dry_run", "output"])]
        cosign: bool,
    },
    /// Fetch, verify, compile and apply the rule document.
    Follower {
        /// Run once and exit.
        #[arg(long, conflicts_with = "interval")]
        once: bool,
        /// Run forever, once per DUR.
        #[arg(long, value_parser = config::parse_duration)]
        interval: Option<Duration>,
        /// Print what would be applied and a diff against the live rules; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Backend (overrides follower.backend).
        #[arg(long, value_enum)]
        backend: Option<Backend>,
        /// Log accepted in-scope packets.
        #[arg(long)]
        log_accept: bool,
        /// Log dropped packets (rate-limited).
        #[arg(long)]
        log_drop: bool,
        /// Apply even if the document names none of this host's addresses.
        #[arg(long)]
        allow_unknown_host: bool,
        /// Commit-confirm: put the previous ruleset back after DUR unless `reyes confirm`
        /// runs first (a detached process does it, so it happens even if this one is killed).
        #[arg(long, value_parser = config::parse_duration, conflicts_with_all = ["dry_run", "interval"])]
        confirm: Option<Duration>,
    },
    /// Keep the change applied by `follower --once --confirm` (cancel its revert).
    Confirm,
    /// Internal: the detached process that reverts an unconfirmed change.
    #[command(hide = true)]
    ConfirmRevert {
        /// The pending change this process guards.
        #[arg(long)]
        token: String,
    },
    /// Print the exact ruleset a follower would apply.
    Render {
        /// The document.
        #[arg(long)]
        document: PathBuf,
        /// Verify this signature first (needs signing.keyring).
        #[arg(long)]
        signature: Option<PathBuf>,
        /// Backend whose text to print.
        #[arg(long, value_enum)]
        backend: Option<Backend>,
        /// A host address (repeat for several) [default: this host's].
        #[arg(long = "host")]
        hosts: Vec<IpAddr>,
        /// Every group's members as destinations.
        #[arg(long, conflicts_with = "hosts")]
        all_groups: bool,
        /// Scope (overrides follower.enforce).
        #[arg(long, value_enum)]
        enforce: Option<Enforce>,
        /// host | gateway (overrides follower.mode): gateway adds the forward chain.
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        /// Gateway mode: judge forwarded traffic to these CIDRs only (repeat; overrides
        /// follower.gateway_cidrs).
        #[arg(long = "gateway-cidr")]
        gateway_cidrs: Vec<reyes::net::Cidr>,
        /// Enforce egress rules (output chain; forward chain in gateway mode).
        #[arg(long)]
        egress: bool,
        /// Log accepts.
        #[arg(long)]
        log_accept: bool,
        /// Log drops.
        #[arg(long)]
        log_drop: bool,
        /// Render even if no group holds the host's addresses.
        #[arg(long)]
        allow_unknown_host: bool,
        /// Print the counts of sets, elements, chains, rules and batch bytes (what
        /// follower.limits bounds) instead of the ruleset.
        #[arg(long)]
        stats: bool,
    },
    /// Check a signed document; print its facts.
    Verify {
        /// The document.
        #[arg(long)]
        document: PathBuf,
        /// Its detached signature.
        #[arg(long)]
        signature: PathBuf,
    },
    /// Make a detached signature with the configured key.
    Sign {
        /// The document.
        #[arg(long)]
        document: PathBuf,
        /// Where [default: DOCUMENT.sig].
        #[arg(long)]
        output: Option<PathBuf>,
        /// Add the signature to the existing signature file (co-signing) instead of
        /// replacing it.
        #[arg(long)]
        append: bool,
    },
    /// Make a new signing key.
    Keygen {
        /// Key name: files NAME.secret.asc and NAME.cert.asc.
        #[arg(long)]
        name: String,
        /// Directory to write them to.
        #[arg(long)]
        output_dir: PathBuf,
        /// Protect the secret key with the passphrase in this file.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// What is live: backend, serial, age, counters, drift. Exit 1 when reyes' rules are not
    /// live.
    Status {
        /// Backend to look at (default: the one the last apply went through).
        #[arg(long, value_enum)]
        backend: Option<Backend>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = StatusFormatArg::Text)]
        format: StatusFormatArg,
    },
    /// Re-apply the last good document (boot time).
    Restore {
        /// Backend (overrides follower.backend).
        #[arg(long, value_enum)]
        backend: Option<Backend>,
        /// Apply even if the document names none of this host's addresses.
        #[arg(long)]
        allow_unknown_host: bool,
    },
    /// Remove reyes' own table, chains and sets of both backends, nothing else; says what
    /// was removed.
    Flush {
        /// Only this backend's objects (default: both, whatever the config says).
        #[arg(long, value_enum)]
        backend: Option<Backend>,
    },
    /// Would this flow be accepted? Prints ALLOW or DENY and the rules that decide.
    /// Exit 0 ALLOW, 1 DENY, 2 error.
    Query {
        /// The document.
        #[arg(long)]
        document: PathBuf,
        /// Source address.
        #[arg(long)]
        from: IpAddr,
        /// Destination address.
        #[arg(long)]
        to: IpAddr,
        /// tcp, udp, icmp, icmpv6, all, or a protocol number.
        #[arg(long, value_parser = parse_proto)]
        proto: Proto,
        /// tcp/udp destination port [default: every port].
        #[arg(long, conflicts_with_all = ["icmp_type", "icmp_code"])]
        port: Option<u16>,
        /// icmp/icmpv6 type [default: every type].
        #[arg(long)]
        icmp_type: Option<u8>,
        /// icmp/icmpv6 code [default: every code].
        #[arg(long, requires = "icmp_type")]
        icmp_code: Option<u8>,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Run flow expectations: one line per failure, then `N passed, N failed`.
    /// Exit 0 all passed, 1 some failed, 2 error.
    Test {
        /// The document.
        #[arg(long)]
        document: PathBuf,
        /// The expectations (a YAML list of flows; see `reyes-test(1)`).
        flows: PathBuf,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Semantic diff of two documents: groups, members, rules added and removed.
    Diff {
        /// The old document.
        old: PathBuf,
        /// The new document.
        new: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = DiffFormat::Text)]
        format: DiffFormat,
    },
    /// Check the config, or print the commented example the package ships.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// The estate's reachability as a graph: groups as nodes, an edge per (source, destination
    /// group) labelled with protocols and ports.
    Graph {
        /// The document.
        #[arg(long)]
        document: PathBuf,
        /// Output format (svg runs Graphviz's `dot`).
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
        /// Only this group's neighbourhood (id or name).
        #[arg(long)]
        group: Option<String>,
        /// Highlight the edges a flow from this address...
        #[arg(long, requires = "to")]
        from: Option<IpAddr>,
        /// ...to this address can take.
        #[arg(long, requires = "from")]
        to: Option<IpAddr>,
    },
    /// Every follower's receipt against the published document: hosts by state (current,
    /// lagging, refusing, failing, drifted, disabled, silent, malformed). Exit 1 when a host is
    /// outside the tolerance `fleet` configures, 0 otherwise.
    Fleet {
        /// Output format.
        #[arg(long, value_enum, default_value_t = DiffFormat::Text)]
        format: DiffFormat,
    },
    /// Print a shell completion script (bash, zsh, fish).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: reyes::clidoc::Shell,
    },
    /// Write the man pages (reyes.1, reyes-COMMAND.1) into a directory (package build).
    #[command(hide = true)]
    Manpages {
        /// Where to write them.
        output_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the config (--config, default /etc/reyes/reyes.yaml) and print the effective
    /// values, defaults filled in. Exit 2 with file:line:column on errors.
    Check,
    /// Print the commented default config (/etc/reyes/reyes.yaml in the package).
    Example,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Dot,
    Svg,
    Json,
}

/// How `query` and `test` take a flow to arrive. By default it is in scope: over IPsec, in
/// ipsec mode; `--config` adds that config's follower context (enforce, managed/local CIDRs,
/// failsafe).
#[derive(Args)]
struct ScopeArgs {
    /// Enforcement mode to judge under (overrides follower.enforce; cidr needs --config).
    #[arg(long, value_enum)]
    enforce: Option<Enforce>,
    /// The flow did not arrive over IPsec.
    #[arg(long, conflicts_with = "via_ipsec")]
    no_ipsec: bool,
    /// The flow arrived over IPsec (the default).
    #[arg(long)]
    via_ipsec: bool,
    /// The flow is part of an established connection.
    #[arg(long)]
    established: bool,
    /// host | gateway (overrides follower.mode): gateway judges the flow as a gateway
    /// forwarding it would (the forward chain, every group, follower.gateway_cidrs).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Also judge the source's egress rules (as follower.egress: true does).
    #[arg(long)]
    egress: bool,
}

impl ScopeArgs {
    fn options(&self) -> ScopeOptions {
        ScopeOptions {
            enforce: self.enforce,
            no_ipsec: self.no_ipsec,
            established: self.established,
            mode: self.mode,
            egress: self.egress,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum StatusFormatArg {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum DiffFormat {
    Text,
    Json,
}

fn parse_proto(s: &str) -> Result<Proto, reyes::proto::ProtoError> {
    s.parse()
}

fn config_path(cli: &Option<PathBuf>) -> PathBuf {
    cli.clone()
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH))
}

fn load_config(path: &Path) -> CmdResult<Config> {
    Config::load(path).map_err(Failure::usage)
}

/// A config for commands that can do without one: only when given or present.
fn optional_config(cli: &Option<PathBuf>) -> CmdResult<Option<Config>> {
    let p = config_path(cli);
    if cli.is_some() || p.exists() {
        load_config(&p).map(Some)
    } else {
        Ok(None)
    }
}

fn init_logging(cli: &Cli) {
    let level = if cli.quiet {
        "error"
    } else {
        match cli.verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("REYES_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match cli.log_format {
        LogFormat::Text => b.with_target(false).init(),
        LogFormat::Json => b.json().init(),
    }
}

/// The config of `query` and `test`: only one named with --config (or REYES_CONFIG), so that
/// the answer does not depend on the machine it is asked on.
fn explicit_config(cli: &Option<PathBuf>) -> CmdResult<Option<Config>> {
    cli.as_deref().map(load_config).transpose()
}

fn run(cli: Cli) -> CmdResult<u8> {
    match cli.command {
        c @ (Command::Leader { .. }
        | Command::Follower { .. }
        | Command::Restore { .. }
        | Command::Status { .. }
        | Command::Flush { .. }
        | Command::Confirm
        | Command::Fleet { .. }
        | Command::ConfirmRevert { .. }) => run_host(&cli.config, c),
        c @ (Command::Config { .. }
        | Command::Graph { .. }
        | Command::Completions { .. }
        | Command::Manpages { .. }) => run_tools(&cli.config, c),
        c @ (Command::Query { .. } | Command::Test { .. } | Command::Diff { .. }) => {
            run_eval(&cli.config, c)
        }
        c => run_documents(&cli.config, c),
    }
}

/// The commands that run against this host or its store: leader, follower, restore, status,
/// flush, fleet.
fn run_host(config: &Option<PathBuf>, command: Command) -> CmdResult<u8> {
    let now = SystemTime::now();
    match command {
        Command::Leader {
            once: _,
            interval,
            dry_run,
            output,
            cosign,
        } => {
            let path = config_path(config);
            let cfg = load_config(&path)?;
            let opts = LeaderOptions {
                dry_run,
                output,
                cosign,
            };
            match interval {
                Some(i) => leader::run_interval(&path, cfg, &opts, i)?,
                None => {
                    let mut m = reyes::metrics::LeaderMetrics::default();
                    leader::cycle(&cfg, &opts, &mut m).map(|o| tracing::debug!(?o))?
                }
            }
            Ok(0)
        }
        Command::Follower {
            once: _,
            interval,
            dry_run,
            backend,
            log_accept,
            log_drop,
            allow_unknown_host,
            confirm,
        } => {
            let path = config_path(config);
            let cfg = load_config(&path)?;
            let opts = FollowerOptions {
                dry_run,
                backend,
                log_accept,
                log_drop,
                allow_unknown_host,
            };
            match (interval, confirm) {
                (Some(i), _) => follower::run_interval(&path, cfg, &opts, i)?,
                (None, Some(timeout)) => {
                    reyes::confirm::apply_with_confirm(&path, &cfg, &opts, timeout, now)
                        .map(|o| tracing::debug!(?o))?
                }
                (None, None) => {
                    let mut m = reyes::metrics::FollowerMetrics::default();
                    follower::cycle(&cfg, &opts, &mut m).map(|o| tracing::debug!(?o))?
                }
            }
            Ok(0)
        }
        Command::Confirm => {
            let cfg = load_config(&config_path(config))?;
            println!("{}", reyes::confirm::confirm(&cfg)?);
            Ok(0)
        }
        Command::ConfirmRevert { token } => {
            let cfg = load_config(&config_path(config))?;
            reyes::confirm::revert_when_due(&cfg, &token).map(|()| 0)
        }
        Command::Restore {
            backend,
            allow_unknown_host,
        } => {
            let cfg = load_config(&config_path(config))?;
            let opts = FollowerOptions {
                backend,
                allow_unknown_host,
                ..Default::default()
            };
            commands::restore(&cfg, &opts)
                .map(|o| tracing::debug!(?o))
                .map(|()| 0)
        }
        Command::Status { backend, format } => {
            let cfg = load_config(&config_path(config))?;
            let format = match format {
                StatusFormatArg::Text => commands::StatusFormat::Text,
                StatusFormatArg::Json => commands::StatusFormat::Json,
            };
            let (out, live) = commands::status(&cfg, backend, format)?;
            print!("{out}");
            if live {
                Ok(0)
            } else {
                tracing::error!("reyes rules are not live");
                Ok(1)
            }
        }
        Command::Flush { backend } => {
            let cfg = optional_config(config)?;
            print!("{}", commands::flush(cfg.as_ref(), backend)?);
            Ok(0)
        }
        Command::Fleet { format } => {
            let cfg = load_config(&config_path(config))?;
            let f = reyes::fleet::fleet(&cfg, now)?;
            match format {
                DiffFormat::Text => print!("{}", f.text()),
                DiffFormat::Json => print!("{}", f.json()),
            }
            Ok(f.exit_code())
        }
        _ => unreachable!("run() dispatches only these commands here"),
    }
}

/// The commands on document and key files: render, verify, sign, keygen.
fn run_documents(config: &Option<PathBuf>, command: Command) -> CmdResult<u8> {
    match command {
        Command::Render {
            document,
            signature,
            backend,
            hosts,
            all_groups,
            enforce,
            mode,
            gateway_cidrs,
            egress,
            log_accept,
            log_drop,
            allow_unknown_host,
            stats,
        } => {
            let cfg = optional_config(config)?;
            let o = RenderOptions {
                document,
                signature,
                backend,
                hosts,
                all_groups,
                enforce,
                mode,
                gateway_cidrs,
                egress,
                log_accept,
                log_drop,
                allow_unknown_host,
                stats,
            };
            let text = commands::render(cfg.as_ref(), &o)?;
            print!("{text}");
            Ok(0)
        }
        Command::Verify {
            document,
            signature,
        } => {
            let cfg = load_config(&config_path(config))?;
            print!("{}", commands::verify(&cfg, &document, &signature)?);
            Ok(0)
        }
        Command::Sign {
            document,
            output,
            append,
        } => {
            let cfg = load_config(&config_path(config))?;
            let out = commands::sign(&cfg, &document, output.as_deref(), append)?;
            println!("{}", out.display());
            Ok(0)
        }
        Command::Keygen {
            name,
            output_dir,
            passphrase_file,
        } => {
            let fp = commands::keygen(&name, &output_dir, passphrase_file.as_deref())?;
            println!("{fp}");
            Ok(0)
        }
        _ => unreachable!("run() dispatches only these commands here"),
    }
}

/// The commands that evaluate documents: query, test, diff.
fn run_eval(config: &Option<PathBuf>, command: Command) -> CmdResult<u8> {
    match command {
        Command::Query {
            document,
            from,
            to,
            proto,
            port,
            icmp_type,
            icmp_code,
            scope,
        } => {
            let cfg = explicit_config(config).map_err(query::as_usage)?;
            let o = QueryOptions {
                document,
                from,
                to,
                proto,
                port,
                icmp_type,
                icmp_code,
                scope: scope.options(),
            };
            let (text, decision) = query::query(cfg.as_ref(), &o)?;
            print!("{text}");
            Ok(match decision {
                Decision::Allow => 0,
                Decision::Deny => 1,
            })
        }
        Command::Test {
            document,
            flows,
            scope,
        } => {
            let cfg = explicit_config(config).map_err(query::as_usage)?;
            let report = query::test(cfg.as_ref(), &document, &flows, &scope.options())?;
            print!("{}", report.text());
            Ok(if report.failures.is_empty() { 0 } else { 1 })
        }
        Command::Diff { old, new, format } => {
            let d = reyes::diff::diff(
                &reyes::load::load_document(&old)?,
                &reyes::load::load_document(&new)?,
            );
            match format {
                DiffFormat::Text => print!("{}", reyes::diff::text(&d)),
                DiffFormat::Json => print!("{}", reyes::diff::json(&d)),
            }
            Ok(0)
        }
        _ => unreachable!("run() dispatches only these commands here"),
    }
}

/// The commands about reyes itself: config, graph, completions, man pages.
fn run_tools(config: &Option<PathBuf>, command: Command) -> CmdResult<u8> {
    match command {
        Command::Config { action } => config_command(config, action),
        Command::Graph {
            document,
            format,
            group,
            from,
            to,
        } => {
            let doc = reyes::load::load_document(&document)?;
            let o = reyes::graph::GraphOptions { group, from, to };
            let g = reyes::graph::build(&doc.policy, &o).map_err(Failure::usage)?;
            match format {
                GraphFormat::Dot => print!("{}", reyes::graph::dot(&g)),
                GraphFormat::Json => print!("{}", reyes::graph::json(&g)),
                GraphFormat::Svg => {
                    let svg =
                        reyes::graph::svg(&reyes::graph::dot(&g)).map_err(Failure::runtime)?;
                    write_stdout(&svg)?;
                }
            }
            Ok(0)
        }
        Command::Completions { shell } => {
            write_stdout(&reyes::clidoc::completions(&mut Cli::command(), shell))?;
            Ok(0)
        }
        Command::Manpages { output_dir } => {
            let pages = reyes::clidoc::write_man_pages(Cli::command(), &output_dir)
                .map_err(Failure::runtime)?;
            for p in pages {
                println!("{}", p.display());
            }
            Ok(0)
        }
        _ => unreachable!("run() dispatches only these commands here"),
    }
}

fn config_command(cli: &Option<PathBuf>, action: ConfigAction) -> CmdResult<u8> {
    match action {
        ConfigAction::Check => {
            let path = config_path(cli);
            let cfg = load_config(&path)?;
            let text = reyes::clidoc::effective_config(&cfg).map_err(Failure::runtime)?;
            println!(
                "# {}: OK; effective values, defaults filled in",
                path.display()
            );
            print!("{text}");
        }
        ConfigAction::Example => print!("{}", reyes::clidoc::EXAMPLE_CONFIG),
    }
    Ok(0)
}

fn write_stdout(bytes: &[u8]) -> CmdResult<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(Failure::runtime)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("reyes: error: {f}");
            ExitCode::from(f.kind.code())
        }
    }
}
