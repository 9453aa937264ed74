//! The `reyes` binary: argument parsing and exit codes only.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand, ValueEnum};

use reyes::commands::{self, RenderOptions};
use reyes::config::{self, Backend, Config, Enforce};
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
        /// Log accepts.
        #[arg(long)]
        log_accept: bool,
        /// Log drops.
        #[arg(long)]
        log_drop: bool,
        /// Render even if no group holds the host's addresses.
        #[arg(long)]
        allow_unknown_host: bool,
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
    /// What is live: backend, serial, age, counters.
    Status {
        /// Backend (overrides follower.backend).
        #[arg(long, value_enum)]
        backend: Option<Backend>,
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
    /// Remove reyes' own table (or chains and sets), nothing else.
    Flush {
        /// Backend (overrides follower.backend).
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
        /// The expectations (SPEC "Flow tests").
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
}

impl ScopeArgs {
    fn options(&self) -> ScopeOptions {
        ScopeOptions {
            enforce: self.enforce,
            no_ipsec: self.no_ipsec,
            established: self.established,
        }
    }
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
        | Command::Flush { .. }) => run_host(&cli.config, c),
        c @ (Command::Query { .. } | Command::Test { .. } | Command::Diff { .. }) => {
            run_eval(&cli.config, c)
        }
        c => run_documents(&cli.config, c),
    }
}

/// The commands that run against this host or its store: leader, follower, restore, status, flush.
fn run_host(config: &Option<PathBuf>, command: Command) -> CmdResult<u8> {
    let now = SystemTime::now();
    match command {
        Command::Leader {
            once: _,
            interval,
            dry_run,
            output,
        } => {
            let cfg = load_config(&config_path(config))?;
            let opts = LeaderOptions { dry_run, output };
            match interval {
                Some(i) => leader::run_interval(&cfg, &opts, i),
                None => leader::run_once(&cfg, &opts, now).map(|o| tracing::debug!(?o))?,
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
        } => {
            let cfg = load_config(&config_path(config))?;
            let opts = FollowerOptions {
                dry_run,
                backend,
                log_accept,
                log_drop,
                allow_unknown_host,
            };
            match interval {
                Some(i) => follower::run_interval(&cfg, &opts, i),
                None => follower::run_once(&cfg, &opts, now).map(|o| tracing::debug!(?o))?,
            }
            Ok(0)
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
        Command::Status { backend } => {
            let cfg = load_config(&config_path(config))?;
            print!("{}", commands::status(&cfg, backend)?);
            Ok(0)
        }
        Command::Flush { backend } => {
            let cfg = optional_config(config)?;
            commands::flush(cfg.as_ref(), backend).map(|()| 0)
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
            log_accept,
            log_drop,
            allow_unknown_host,
        } => {
            let cfg = optional_config(config)?;
            let o = RenderOptions {
                document,
                signature,
                backend,
                hosts,
                all_groups,
                enforce,
                log_accept,
                log_drop,
                allow_unknown_host,
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
        Command::Sign { document, output } => {
            let cfg = load_config(&config_path(config))?;
            let out = commands::sign(&cfg, &document, output.as_deref())?;
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
