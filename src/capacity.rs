//! The capacity guard: how big a ruleset is (sets, elements, rules, batch bytes), and whether
//! it is within `follower.limits`. A follower refuses a document over the limits before it
//! touches the kernel (exit 3, live rules unchanged); `reyes render --stats` prints the counts.

use std::fmt;

use serde::Serialize;

use crate::compile::Ruleset;
use crate::config::Limits;
use crate::net::Family;
use crate::nft::render::map_name;

/// The size of a ruleset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Named sets, plus the two dispatch maps.
    pub sets: usize,
    /// Elements in all sets and maps.
    pub elements: usize,
    /// The set or map with the most elements, and how many.
    pub largest_set: Option<(String, usize)>,
    /// Rules in all chains.
    pub rules: usize,
    /// Chains (the base chain included).
    pub chains: usize,
    /// Bytes of the batch the backend sends.
    pub batch_bytes: usize,
}

impl Stats {
    /// Count `rs`; `batch_bytes` is the backend's (see [`crate::backend::Backend::batch_bytes`]).
    pub fn of(rs: &Ruleset, batch_bytes: usize) -> Stats {
        let mut largest: Option<(String, usize)> = None;
        let mut consider = |name: &str, n: usize| {
            if largest.as_ref().is_none_or(|(_, m)| n > *m) {
                largest = Some((name.to_string(), n));
            }
        };
        for s in &rs.sets {
            consider(&s.name, s.elements.len());
        }
        for f in Family::BOTH {
            consider(map_name(f), rs.dispatch(f).len());
        }
        Stats {
            sets: rs.sets.len() + 2,
            elements: rs.element_count(),
            largest_set: largest,
            rules: rs.rule_count(),
            chains: rs.chains.len() + 1,
            batch_bytes,
        }
    }

    /// The first figure over `limits`, if any.
    pub fn check(&self, limits: &Limits) -> Result<(), OverLimit> {
        let (largest_name, largest) = self.largest_set.clone().unwrap_or_default();
        let figures = [
            (
                "sets",
                "sets and maps",
                self.sets,
                limits.sets,
                String::new(),
            ),
            (
                "set_elements",
                "elements in one set",
                largest,
                limits.set_elements,
                format!(" ({largest_name})"),
            ),
            (
                "elements",
                "elements in all sets",
                self.elements,
                limits.elements,
                String::new(),
            ),
            ("rules", "rules", self.rules, limits.rules, String::new()),
            (
                "batch_bytes",
                "batch bytes",
                self.batch_bytes,
                limits.batch_bytes,
                String::new(),
            ),
        ];
        for (key, what, value, limit, detail) in figures {
            if value > limit {
                return Err(OverLimit {
                    key,
                    what,
                    value,
                    limit,
                    detail,
                });
            }
        }
        Ok(())
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "sets: {}", self.sets)?;
        writeln!(f, "elements: {}", self.elements)?;
        if let Some((name, n)) = &self.largest_set {
            writeln!(f, "largest set: {name} ({n} elements)")?;
        }
        writeln!(f, "chains: {}", self.chains)?;
        writeln!(f, "rules: {}", self.rules)?;
        writeln!(f, "batch bytes: {}", self.batch_bytes)
    }
}

/// A ruleset over one of `follower.limits`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the ruleset for this host has {value} {what}{detail}, over follower.limits.{key} = {limit}: \
     refusing to apply it (the live rules are unchanged). Raise the limit only on kernels \
     known to take it (docs/operations.md, \"Capacity\"), or make the groups smaller"
)]
pub struct OverLimit {
    /// The config key (`set_elements`).
    pub key: &'static str,
    /// What was counted.
    pub what: &'static str,
    /// The count.
    pub value: usize,
    /// The limit.
    pub limit: usize,
    /// Which set, when it is one set's figure.
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::compile;
    use crate::compile::tests::{ctx, doc, TWO};

    #[test]
    fn counts_and_the_first_figure_over_a_limit_is_named() {
        let rs = compile(&doc(TWO), &ctx(&["10.0.0.1"])).unwrap();
        let s = Stats::of(&rs, 4096);
        assert_eq!(s.sets, rs.sets.len() + 2);
        assert_eq!(s.elements, rs.element_count());
        assert_eq!(s.rules, rs.rule_count());
        assert!(s.check(&Limits::default()).is_ok());
        let e = s
            .check(&Limits {
                batch_bytes: 4095,
                ..Limits::default()
            })
            .unwrap_err();
        assert_eq!((e.key, e.value, e.limit), ("batch_bytes", 4096, 4095));
        let e = s
            .check(&Limits {
                set_elements: 0,
                batch_bytes: 0,
                ..Limits::default()
            })
            .unwrap_err();
        assert_eq!(e.key, "set_elements");
        assert!(
            e.to_string()
                .contains("over follower.limits.set_elements = 0"),
            "{e}"
        );
        let text = s.to_string();
        assert!(text.contains("batch bytes: 4096\n"), "{text}");
    }
}
