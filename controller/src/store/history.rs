//! The recent versions of the state, kept so that a watch can be served from
//! an applied index: what changed at index `i` is the difference between the
//! version at `i` and the one before it, on the keys touched at `i` only.
//!
//! ```text
//!  raft task ── Store::update ──▶ State at i ──push──▶ History [base, v(a), v(b), …, v(i)]
//!                                                         │ changes after base are servable
//!  Watch (any controller) ◀── versions after `from` ──────┘  notified via `latest`
//! ```
//!
//! Every member applies the same log, so index `i` names the same state on
//! every controller: a client that saw everything up to `i` on one resumes on
//! another from `i`, and nothing is repeated or skipped. The history is
//! bounded ([`KEPT_VERSIONS`] entries that changed something, and at most
//! [`KEPT_TOUCHES`] objects touched by them together); an index older
//! than its base is answered the way Kubernetes answers 410 Gone, and so is
//! one from before an installed raft snapshot (the history restarts there).
//!
//! Cost: a version is an `Arc<State>` (persistent maps, so it shares all but
//! the paths its changes copied) and the touched keys. Pushing one is O(1)
//! under the store's write lock; the diffing is the watchers' work.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::watch;

use super::state::{State, Touched};

/// How many versions that changed something each controller keeps. A watch
/// that falls further behind (or resumes from an older index) lists again.
pub const KEPT_VERSIONS: usize = 1_000;

/// The most objects the kept versions may have touched, together. A version
/// costs the map paths its changes copied, about one per object it touched:
/// at 10,000 replicas 1,000 versions stay far below this, but at 100,000
/// replicas, where a status batch touches hundreds, the count alone kept
/// gigabytes (4 GiB per controller in `bench placement --deployments 1000`).
/// A copied path of the 100,000-replica map is about 10 KB (five levels of
/// sixteen keys, the keys' strings cloned), so this keeps about 100 MB:
/// a watch may fall 10,000 object changes behind before it lists again
/// (Kubernetes' watch cache keeps 100 events per kind by default).
pub const KEPT_TOUCHES: usize = 10_000;

/// The state after an applied entry that changed something, and what it
/// touched.
#[derive(Clone)]
pub struct Version {
    pub index: u64,
    pub state: Arc<State>,
    pub touched: Touched,
}

/// What a watcher asking for the changes after an index gets.
pub enum Since {
    /// The state at the index asked for (or the newest older version kept,
    /// which is the same state), then every version after it, oldest first.
    Versions {
        base: Arc<State>,
        after: Vec<Version>,
    },
    /// The index is older than the oldest version kept: list again.
    Gone { oldest: u64 },
    /// This controller has not applied that index yet.
    Ahead { applied: u64 },
}

pub struct History {
    /// `versions[0]` is the base: its own changes are no longer servable.
    versions: VecDeque<Version>,
    capacity: usize,
    /// The bound on [`History::touches`] ([`KEPT_TOUCHES`]).
    max_touches: usize,
    /// The objects the kept versions touched, summed ([`weight`]).
    touches: usize,
    latest: watch::Sender<u64>,
}

/// What a version costs to keep, in objects touched (at least 1).
fn weight(t: &Touched) -> usize {
    1 + t.replicas.len()
        + t.deployments.len()
        + t.deployment_records.len()
        + t.nodes.len()
        + t.node_records.len()
}

impl History {
    /// A history that starts at `state` (decoded from a snapshot, or empty).
    pub fn new(state: Arc<State>, capacity: usize) -> History {
        History::with_limits(state, capacity, KEPT_TOUCHES)
    }

    /// [`History::new`] with a bound on the objects the kept versions
    /// touched, together, as well as on their count.
    pub fn with_limits(state: Arc<State>, capacity: usize, max_touches: usize) -> History {
        let index = state.applied().0;
        let (latest, _) = watch::channel(index);
        let mut versions = VecDeque::new();
        versions.push_back(Version {
            index,
            state,
            touched: Touched::default(),
        });
        History {
            versions,
            capacity: capacity.max(1),
            max_touches,
            touches: 1,
            latest,
        }
    }

    /// Start again from `state` (a raft snapshot installed): what happened
    /// between the newest version and it is unknown here, so a watch from an
    /// older index lists again.
    pub fn restart(&mut self, state: Arc<State>) {
        let index = state.applied().0;
        self.versions.clear();
        touched_nothing(&mut self.versions, index, state);
        self.touches = 1;
        self.latest.send_replace(index);
    }

    /// Record the state after an applied entry. An index not above the
    /// newest version (tests that apply at one index twice) starts the
    /// history again from it, so an index never names two states.
    pub fn push(&mut self, state: Arc<State>, touched: Touched) {
        let index = state.applied().0;
        let newest = self.versions.back().map_or(0, |v| v.index);
        if index <= newest {
            return self.restart(state);
        }
        self.touches += weight(&touched);
        self.versions.push_back(Version {
            index,
            state,
            touched,
        });
        // Keep the base and the newest version whatever they cost.
        while self.versions.len() > 2
            && (self.versions.len() > self.capacity + 1 || self.touches > self.max_touches)
        {
            if let Some(dropped) = self.versions.pop_front() {
                self.touches -= weight(&dropped.touched);
            }
        }
        self.latest.send_replace(index);
    }

    /// A receiver that changes whenever a version is pushed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// The oldest index a watch may resume from.
    pub fn oldest(&self) -> u64 {
        self.versions.front().map_or(0, |v| v.index)
    }

    /// The state at `index` and the versions after it (at most `limit`).
    /// `applied` is the store's applied index, which may be past the newest
    /// version (entries that changed nothing a watch shows).
    pub fn since(&self, index: u64, applied: u64, limit: usize) -> Since {
        if index > applied {
            return Since::Ahead { applied };
        }
        let oldest = self.oldest();
        if index < oldest {
            return Since::Gone { oldest };
        }
        // The newest version at or below `index` is the state at `index`.
        let at = self.versions.partition_point(|v| v.index <= index);
        let Some(base) = at.checked_sub(1).and_then(|i| self.versions.get(i)) else {
            return Since::Gone { oldest };
        };
        Since::Versions {
            base: Arc::clone(&base.state),
            after: self.versions.range(at..).take(limit).cloned().collect(),
        }
    }
}

/// An empty state's history, [`KEPT_VERSIONS`] long.
impl Default for History {
    fn default() -> History {
        History::new(Arc::default(), KEPT_VERSIONS)
    }
}

fn touched_nothing(versions: &mut VecDeque<Version>, index: u64, state: Arc<State>) {
    versions.push_back(Version {
        index,
        state,
        touched: Touched::default(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(index: u64) -> Arc<State> {
        let mut s = State::default();
        s.apply_nothing(index, 1);
        Arc::new(s)
    }

    fn indexes(since: Since) -> (u64, Vec<u64>) {
        match since {
            Since::Versions { base, after } => {
                (base.applied().0, after.iter().map(|v| v.index).collect())
            }
            Since::Gone { oldest } => panic!("gone, oldest {oldest}"),
            Since::Ahead { applied } => panic!("ahead of {applied}"),
        }
    }

    #[test]
    fn a_resume_gets_exactly_the_versions_after_its_index() {
        let mut h = History::new(at(1), 10);
        for i in [3, 4, 7] {
            h.push(at(i), Touched::everything());
        }
        assert_eq!(indexes(h.since(1, 7, 100)), (1, vec![3, 4, 7]));
        assert_eq!(indexes(h.since(3, 7, 100)), (3, vec![4, 7]));
        // Index 5 changed nothing: its state is version 4's.
        assert_eq!(indexes(h.since(5, 7, 100)), (4, vec![7]));
        assert_eq!(indexes(h.since(7, 9, 100)), (7, vec![]));
        assert_eq!(indexes(h.since(1, 7, 2)), (1, vec![3, 4]));
        assert!(matches!(h.since(8, 7, 100), Since::Ahead { applied: 7 }));
    }

    #[test]
    fn an_index_older_than_the_history_is_gone() {
        let mut h = History::new(at(1), 2);
        for i in 2..=5 {
            h.push(at(i), Touched::everything());
        }
        assert_eq!(h.oldest(), 3);
        assert!(matches!(h.since(2, 5, 100), Since::Gone { oldest: 3 }));
        assert_eq!(indexes(h.since(3, 5, 100)), (3, vec![4, 5]));
    }

    #[test]
    fn versions_that_touched_many_objects_are_dropped_first_by_their_weight() {
        let touching = |n: usize| Touched {
            replicas: (0..n)
                .map(|i| {
                    std::sync::Arc::new(super::super::ObjectRef {
                        namespace: "default".into(),
                        name: format!("r{i}"),
                    })
                })
                .collect(),
            ..Touched::default()
        };
        // Room for 1,000 versions but only 250 touched objects: four
        // versions of 100 touches do not fit with the base.
        let mut h = History::with_limits(at(1), 1_000, 250);
        for i in 2..=5 {
            h.push(at(i), touching(100));
        }
        assert_eq!(h.oldest(), 4, "versions 2 and 3 (and the base) went first");
        assert_eq!(indexes(h.since(4, 5, 100)), (4, vec![5]));
        // Light versions are kept by count as before.
        let mut h = History::with_limits(at(1), 1_000, 250);
        for i in 2..=100 {
            h.push(at(i), touching(1));
        }
        assert_eq!(h.oldest(), 1);
        // One version heavier than the whole bound is still served.
        h.push(at(101), touching(1_000));
        assert_eq!(indexes(h.since(100, 101, 100)), (100, vec![101]));
    }

    #[test]
    fn an_installed_snapshot_starts_the_history_again() {
        let mut h = History::new(at(0), 10);
        h.push(at(2), Touched::everything());
        h.restart(at(40));
        assert!(matches!(h.since(2, 40, 100), Since::Gone { oldest: 40 }));
        h.push(at(41), Touched::everything());
        assert_eq!(indexes(h.since(40, 41, 100)), (40, vec![41]));
    }

    #[test]
    fn an_older_state_starts_the_history_again() {
        let mut h = History::new(at(5), 10);
        h.push(at(6), Touched::everything());
        h.push(at(4), Touched::everything());
        assert_eq!(h.oldest(), 4);
        assert!(matches!(h.since(3, 4, 100), Since::Gone { .. }));
        assert_eq!(indexes(h.since(4, 4, 100)), (4, vec![]));
    }
}
