//! Where a source group's addresses go: into a named set, or into the rules themselves.
//!
//! The layout follows what nf_tables costs (docs/design.md, "Set layout"): the kernel keeps a
//! table's sets in a list and finds a set by name by walking it from the head, both when a
//! rule names the set and when a set is created (the name must be new). A table with S sets
//! therefore costs about S² steps to build plus, for each rule that names a set, the set's
//! place in the list. So:
//! - a source group with at most [`INLINE_MAX`] address intervals (of a family) gets no set:
//!   each rule that allows it becomes one rule per interval (an anonymous set would be worse:
//!   it joins the same list, and its name is allocated by scanning the whole list);
//! - groups with identical member lists share one set (named after the first of them);
//! - sets are created most-referenced first, so that most lookups stop early in the list.
//!
//! ipsets are found by name in a list too, so the iptables backend gains the same way.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use super::ir::{AddrSet, Name, SetPurpose};
use super::GroupNames;
use crate::document::Policy;
use crate::net::{Family, Range};

/// Source groups with at most this many intervals of a family are written into the rules.
pub const INLINE_MAX: usize = 4;

/// The set layout choices (the defaults are measured: BENCHMARKS.md, "Set layout").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Source groups and literal lists with at most this many intervals go into the rules.
    pub inline_max: usize,
    /// Groups with identical member lists share a set.
    pub share: bool,
    /// Sets are created most-referenced first (otherwise by name).
    pub by_refs: bool,
}

impl Default for Layout {
    fn default() -> Layout {
        Layout {
            inline_max: INLINE_MAX,
            share: true,
            by_refs: true,
        }
    }
}

impl Layout {
    /// One set per (source group, family), sets by name, nothing inlined: the layout before
    /// this one, kept for comparison.
    pub const PLAIN: Layout = Layout {
        inline_max: 0,
        share: false,
        by_refs: false,
    };
}

/// Where the addresses of one source group of one family are.
#[derive(Debug, Clone)]
pub(super) enum Source {
    /// In the rules: one rule per interval.
    Inline(Vec<Range>),
    /// In this named set.
    Set(Name),
}

/// A member set being planned.
struct Planned {
    name: Name,
    family: Family,
    elements: Vec<Range>,
    groups: Vec<String>,
    refs: usize,
}

/// The source layout of one compile: which group goes where, and the member sets with how
/// often rules name them.
pub(super) struct SourceLayout {
    pub(super) layout: Layout,
    by_group: HashMap<(Family, usize), (Source, Option<usize>)>,
    sets: Vec<Planned>,
    /// Hash of (family, elements) -> sets with it (to share identical lists).
    by_elements: HashMap<u64, Vec<usize>>,
}

fn elements_hash(family: Family, elements: &[Range]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    family.hash(&mut h);
    elements.hash(&mut h);
    h.finish()
}

impl SourceLayout {
    pub(super) fn new(layout: Layout) -> SourceLayout {
        SourceLayout {
            layout,
            by_group: HashMap::new(),
            sets: Vec::new(),
            by_elements: HashMap::new(),
        }
    }

    /// Where group `gi`'s addresses of `family` go, counted as one more rule naming it.
    pub(super) fn source(
        &mut self,
        policy: &Policy,
        names: &[GroupNames],
        family: Family,
        gi: usize,
    ) -> Source {
        if let Some((src, set)) = self.by_group.get(&(family, gi)) {
            if let Some(i) = set {
                self.sets[*i].refs += 1;
            }
            return src.clone();
        }
        let g = &policy.groups[gi];
        let elements = super::ranges_of(&g.members, family);
        let (src, set) = if elements.len() <= self.layout.inline_max {
            (Source::Inline(elements), None)
        } else {
            let i = self.set_for(names[gi].members(family), family, elements, &g.id);
            self.sets[i].refs += 1;
            (Source::Set(self.sets[i].name.clone()), Some(i))
        };
        self.by_group.insert((family, gi), (src.clone(), set));
        src
    }

    /// The set holding exactly `elements`: an existing one, or a new one named `name`.
    fn set_for(&mut self, name: &Name, family: Family, elements: Vec<Range>, group: &str) -> usize {
        let key = elements_hash(family, &elements);
        let same = self.by_elements.entry(key).or_default();
        if self.layout.share {
            for &i in same.iter() {
                let s = &mut self.sets[i];
                if s.family == family && s.elements == elements {
                    s.groups.push(group.to_string());
                    return i;
                }
            }
        }
        let i = self.sets.len();
        same.push(i);
        self.sets.push(Planned {
            name: name.clone(),
            family,
            elements,
            groups: vec![group.to_string()],
            refs: 0,
        });
        i
    }

    /// The member sets, most-referenced first (then by name).
    pub(super) fn into_sets(self) -> Vec<AddrSet> {
        let mut sets = self.sets;
        if self.layout.by_refs {
            sets.sort_by(|a, b| b.refs.cmp(&a.refs).then_with(|| a.name.cmp(&b.name)));
        } else {
            sets.sort_by(|a, b| a.name.cmp(&b.name));
        }
        sets.into_iter()
            .map(|p| AddrSet {
                name: p.name,
                family: p.family,
                elements: p.elements,
                purpose: SetPurpose::Members(p.groups.join(", ")),
            })
            .collect()
    }
}
