//! The terms of the raft log's entries, kept in memory so that raft's
//! `term(index)` does not read and decode a whole entry from sled.
//!
//! raft-rs asks for terms all the time: the leader for the entry before every
//! append it sends (`maybe_send_append`), every member after each fsync
//! (`on_persist_entries` checks the persisted entry's term), and a follower
//! for every append it receives (`match_term`). Reading the entry meant a sled
//! lookup and a protobuf decode of all of its data, tens of kilobytes for a
//! placement's entries: 3.7 % of all CPU in a profile of the 30,000-replica
//! placement (and the page faults of those buffers on top).
//!
//! A log's terms never decrease along its indexes, so they are kept as runs:
//! `(first index of the run, term)`, one per term change, a handful for a
//! whole log.
//!
//! ```text
//!   index   from ... 17 18 19 20 21 22
//!   term         ...  3  3  4  4  4  7      runs: (from, 3), (19, 4), (22, 7)
//! ```
//!
//! Only the entries appended since this member started (or since its last
//! snapshot install) are known: `from` is the first index covered, and a
//! lookup below it answers `None` (the caller reads the entry, as before).
//! The caller keeps the log's bounds; a lookup past its last entry is the
//! caller's to refuse.

/// The terms of the entries from [`Terms::from`] to the log's last entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Terms {
    /// The first index covered.
    from: u64,
    /// `(first index, term)`, ascending in both; the first run starts at
    /// `from` (none while nothing is covered).
    runs: Vec<(u64, u64)>,
}

impl Terms {
    /// Nothing known yet; the next entry the log receives is `next`.
    pub fn starting_at(next: u64) -> Terms {
        Terms {
            from: next,
            runs: Vec::new(),
        }
    }

    /// The term of entry `index`, if it is covered. `index` must not be past
    /// the log's last entry (the log knows its end; this does not).
    pub fn get(&self, index: u64) -> Option<u64> {
        if index < self.from {
            return None;
        }
        // The last run that starts at or before `index`.
        let after = self.runs.partition_point(|&(start, _)| start <= index);
        after.checked_sub(1).map(|run| self.runs[run].1)
    }

    /// Record entries `(index, term)` just written, contiguous from the first:
    /// everything known at and after the first index is replaced (a follower's
    /// conflicting tail is overwritten), and a first index below `from`
    /// restarts the coverage there.
    pub fn record(&mut self, entries: impl IntoIterator<Item = (u64, u64)>) {
        let mut entries = entries.into_iter().peekable();
        let Some(&(head, _)) = entries.peek() else {
            return;
        };
        if head < self.from {
            self.from = head;
            self.runs.clear();
        } else {
            let keep = self.runs.partition_point(|&(start, _)| start < head);
            self.runs.truncate(keep);
        }
        for (index, term) in entries {
            if self.runs.last().is_none_or(|&(_, last)| last != term) {
                self.runs.push((index, term));
            }
        }
    }

    /// The entries before `first_index` left the log: drop the runs that
    /// cover nothing else, so the list stays as short as the log's terms.
    pub fn forget_before(&mut self, first_index: u64) {
        if first_index <= self.from {
            return;
        }
        // Runs that end before `first_index` are those followed by another
        // run starting at or before it.
        let starting_by = self
            .runs
            .partition_point(|&(start, _)| start <= first_index);
        let drop = starting_by.saturating_sub(1);
        self.runs.drain(..drop);
        self.from = first_index;
        if let Some(first) = self.runs.first_mut() {
            first.0 = first.0.max(first_index);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn recorded(from: u64, entries: &[(u64, u64)]) -> Terms {
        let mut terms = Terms::starting_at(from);
        terms.record(entries.iter().copied());
        terms
    }

    #[test]
    fn nothing_is_known_before_anything_is_recorded() {
        let terms = Terms::starting_at(10);
        assert_eq!(terms.get(9), None);
        assert_eq!(terms.get(10), None);
    }

    #[test]
    fn runs_answer_for_every_index_they_cover() {
        let terms = recorded(17, &[(17, 3), (18, 3), (19, 4), (20, 4), (21, 4), (22, 7)]);
        assert_eq!(terms.runs, vec![(17, 3), (19, 4), (22, 7)]);
        let got: Vec<_> = (16..=22).map(|i| terms.get(i)).collect();
        assert_eq!(
            got,
            [None, Some(3), Some(3), Some(4), Some(4), Some(4), Some(7)]
        );
    }

    #[test]
    fn an_overwritten_tail_takes_the_new_terms() {
        let mut terms = recorded(1, &[(1, 1), (2, 1), (3, 2), (4, 2)]);
        terms.record([(3, 3), (4, 3), (5, 3)]);
        assert_eq!(terms.get(2), Some(1));
        assert_eq!(terms.get(3), Some(3));
        assert_eq!(terms.get(5), Some(3));
        assert_eq!(terms.runs, vec![(1, 1), (3, 3)]);
    }

    #[test]
    fn a_write_below_the_coverage_restarts_it_there() {
        let mut terms = recorded(10, &[(10, 5), (11, 5)]);
        terms.record([(8, 6), (9, 6)]);
        assert_eq!(terms.get(7), None);
        assert_eq!(terms.get(8), Some(6));
        assert_eq!(terms.get(9), Some(6));
    }

    #[test]
    fn compaction_keeps_the_run_it_cuts_through() {
        let mut terms = recorded(1, &[(1, 1), (2, 1), (3, 2), (4, 2), (5, 3)]);
        terms.forget_before(4);
        assert_eq!(terms.get(3), None);
        assert_eq!(terms.get(4), Some(2));
        assert_eq!(terms.get(5), Some(3));
        assert_eq!(terms.runs, vec![(4, 2), (5, 3)]);
    }

    proptest! {
        /// After any appends (with overwrites) and compactions, every covered
        /// index answers the term a plain map of the log holds, and the
        /// uncovered ones answer nothing.
        #[test]
        fn agrees_with_a_map_of_the_log(
            start in 1u64..5,
            steps in prop::collection::vec((0u8..3, 0u64..6, 1usize..6, 0u64..3), 1..40),
        ) {
            let mut log: std::collections::BTreeMap<u64, u64> = Default::default();
            let mut first = start;
            let mut terms = Terms::starting_at(start);
            let mut term = 1;
            for (kind, back, len, bump) in steps {
                let last = log.keys().next_back().copied().unwrap_or(first - 1);
                if kind < 2 {
                    // Append at most `back` entries before the end (never
                    // before the first index), with terms that only grow.
                    let head = last.saturating_sub(back).max(first).min(last + 1);
                    log.retain(|&i, _| i < head);
                    term += bump;
                    let entries: Vec<(u64, u64)> =
                        (head..head + len as u64).map(|i| (i, term)).collect();
                    log.extend(entries.iter().copied());
                    terms.record(entries);
                } else if last >= first {
                    let to = (first + back).min(last + 1);
                    log.retain(|&i, _| i >= to);
                    first = to;
                    terms.forget_before(to);
                }
                for (&index, &want) in &log {
                    let got = terms.get(index);
                    prop_assert!(got.is_none() || got == Some(want), "index {index}: {got:?} vs {want}");
                    if index >= start {
                        prop_assert_eq!(got, Some(want), "index {} is covered", index);
                    }
                }
            }
        }
    }
}
