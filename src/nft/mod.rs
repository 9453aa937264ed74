//! The nftables backend: one table, `inet reyes`, replaced in one transaction.

pub mod cli;
pub mod render;

use crate::backend::{Backend, BackendError, Counters};
use crate::compile::{Ruleset, COUNTER_ACCEPTED, COUNTER_DROPPED};

/// nftables through the `nft` binary.
#[derive(Debug, Clone, Default)]
pub struct NftBackend {
    cli: cli::NftCli,
}

impl NftBackend {
    /// Using `nft` from PATH (or `$REYES_NFT`).
    pub fn new() -> NftBackend {
        NftBackend::default()
    }
}

fn err(e: cli::NftError) -> BackendError {
    match e {
        cli::NftError::Refused { .. } => BackendError::Refused(e.to_string()),
        other => BackendError::Io(other.to_string()),
    }
}

impl Backend for NftBackend {
    fn name(&self) -> &'static str {
        "nft"
    }

    fn render(&self, rs: &Ruleset) -> Result<String, BackendError> {
        render::render(rs).map_err(|e| BackendError::Io(e.to_string()))
    }

    fn live(&self) -> Result<Option<String>, BackendError> {
        self.cli.list_table().map_err(err)
    }

    fn present(&self) -> Result<bool, BackendError> {
        self.cli.table_present().map_err(err)
    }

    /// Apply, read back, compare with the render; on a mismatch put the previous table back
    /// (or remove ours if there was none) and fail.
    fn apply(&self, rs: &Ruleset) -> Result<(), BackendError> {
        let script = self.render(rs)?;
        let previous = self.cli.list_table().map_err(err)?;
        self.cli.apply(&script).map_err(err)?;
        let live = self.cli.list_table().map_err(err)?.unwrap_or_default();
        let want = render::normalise(render::table_block(&script));
        let got = render::normalise(&live);
        if want == got {
            return Ok(());
        }
        let at = want
            .chars()
            .zip(got.chars())
            .take_while(|(a, b)| a == b)
            .count();
        let context = |s: &str| {
            s.chars()
                .skip(at.saturating_sub(60))
                .take(160)
                .collect::<String>()
        };
        let restore = match previous {
            Some(old) => format!("{}{}", render::flush_script(), old),
            None => render::flush_script(),
        };
        let rollback = match self.cli.apply(&restore) {
            Ok(()) => "the previous table was put back".to_string(),
            Err(e) => format!("putting the previous table back failed too: {e}"),
        };
        Err(BackendError::Mismatch(format!(
            "the kernel's table differs from the rendered ruleset near\n  rendered: ...{}\n  live:     ...{}\n{rollback}",
            context(&want),
            context(&got)
        )))
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.cli.apply(&render::flush_script()).map_err(err)
    }

    fn counters(&self) -> Result<Counters, BackendError> {
        Ok(Counters {
            accepted: self.cli.counter(COUNTER_ACCEPTED).map_err(err)?,
            dropped: self.cli.counter(COUNTER_DROPPED).map_err(err)?,
        })
    }
}
