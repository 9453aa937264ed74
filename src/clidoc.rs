//! What the package ships beside the binary, generated from the clap definitions: man pages
//! (`reyes.1` and one `reyes-COMMAND.1` per subcommand) and shell completions, plus
//! `reyes config check` / `reyes config example`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Command;

use crate::config::Config;

/// The commented configuration the package installs as `/etc/reyes/reyes.yaml`.
pub const EXAMPLE_CONFIG: &str = include_str!("../packaging/reyes.yaml");

/// Generating man pages or completions failed.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The effective config could not be printed.
    #[error("cannot print the effective config: {0}")]
    Print(String),
}

/// Shells `reyes completions` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    /// bash (bash-completion).
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

/// The completion script for `shell`, for the command `cmd` (named `reyes`).
pub fn completions(cmd: &mut Command, shell: Shell) -> Vec<u8> {
    let mut out = Vec::new();
    let name = cmd.get_name().to_string();
    match shell {
        Shell::Bash => clap_complete::generate(clap_complete::Shell::Bash, cmd, name, &mut out),
        Shell::Zsh => clap_complete::generate(clap_complete::Shell::Zsh, cmd, name, &mut out),
        Shell::Fish => clap_complete::generate(clap_complete::Shell::Fish, cmd, name, &mut out),
    }
    out
}

/// Write `reyes.1` and `reyes-COMMAND.1` for every visible subcommand into `dir` (created if
/// missing); returns the files written.
pub fn write_man_pages(cmd: Command, dir: &Path) -> Result<Vec<PathBuf>, DocError> {
    std::fs::create_dir_all(dir).map_err(|source| DocError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut cmd = cmd;
    cmd.build();
    let top = cmd.get_name().to_string();
    let mut pages = vec![(top.clone(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        let name = format!("{top}-{}", sub.get_name());
        pages.push((
            name.clone(),
            sub.clone()
                .name(name)
                .bin_name(format!("{top} {}", sub.get_name())),
        ));
    }
    let mut written = Vec::new();
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        let man = clap_mangen::Man::new(page)
            .section("1")
            .manual("reyes manual")
            .source(format!("reyes {}", env!("CARGO_PKG_VERSION")));
        let res = man.render(&mut buf).and_then(|()| {
            let mut f = std::fs::File::create(&path)?;
            f.write_all(&buf)
        });
        res.map_err(|source| DocError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

/// `reyes config check`: the effective config (every default filled in, relative paths
/// resolved) as YAML.
pub fn effective_config(cfg: &Config) -> Result<String, DocError> {
    serde_saphyr::to_string(cfg).map_err(|e| DocError::Print(e.to_string()))
}
