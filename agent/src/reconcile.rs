//! The agent's reconcile: a pure decision from what should run, what runs,
//! and what the agent remembers, to the actions that close the gap.
//!
//! ```text
//!   AssignmentSet ──┐                        ┌──▶ Start / Restart ─┐
//!   runtime events ─┼─▶ reconcile(assigned,  ├──▶ Stop, Remove     ├─▶ runtime
//!   backoff timer ──┤     observed, records, ├──▶ Adopt            │   (a task per
//!   task finished ──┘     busy, now)         ├──▶ BackOff, Forget ─┘    replica)
//!                                            │    (bookkeeping only)
//!        ▲                                   │
//!        └──────── outcomes update observed & records ◀──┘
//! ```
//!
//! Per replica (assigned ∪ observed ∪ remembered), skipping any replica whose
//! previous actions are still running (`busy`):
//!
//! | assigned | current container           | actions                              |
//! |----------|-----------------------------|--------------------------------------|
//! | yes      | none                        | Start (unless backing off / failed)  |
//! | yes      | running, unknown to us      | Adopt (same id; never restarted)     |
//! | yes      | running, its liveness kill failed | Stop again                     |
//! | yes      | other revision or spec hash | Stop, Remove, Start                  |
//! | yes      | exited, not yet seen        | BackOff (delay from the policy)      |
//! | yes      | exited, backoff elapsed     | Restart (remove, then start)         |
//! | yes      | created, never started      | Remove, Start                        |
//! | no       | any                         | Stop (if running), Remove            |
//! | no       | none, but remembered        | Forget                               |
//!
//! A replica has one *current* container (running first, then the newest);
//! any other container of it is a stray and is stopped and removed. Nothing
//! here reads a clock or touches the runtime: `now` comes in, and the same
//! inputs always give the same actions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::assignment::Assignment;
use crate::backoff::BackoffPolicy;
use crate::error::AgentError;
use crate::runtime::{ContainerState, Exit, Observed, UnixMs};

/// What the agent remembers about a replica between reconciles: its restart
/// and backoff state. Lost on an agent restart, except the restart count,
/// which each container carries (label `drover.restarts`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The container the agent started or adopted as this replica's current one.
    pub container_id: Option<String>,
    /// Restarts so far (shown as RESTARTS).
    pub restarts: u32,
    /// How the last container ended.
    pub last_exit: Option<Exit>,
    /// The exited container whose exit has been accounted for (backoff
    /// scheduled), so it is not counted twice.
    pub handled_exit: Option<String>,
    /// The delay used before the last attempt: the next one doubles it.
    pub delay: Option<Duration>,
    /// No start or restart before this time (backing off).
    pub next_attempt_unix_ms: Option<UnixMs>,
    /// Why the last start failed, if it did.
    pub failure: Option<Failure>,
    /// A stop or remove failed: leave the replica alone until then.
    pub retry_io_at: Option<UnixMs>,
    /// The liveness probe failure that got a container killed, until another
    /// container of the replica exits for its own reasons.
    pub unhealthy: Option<Unhealthy>,
}

/// A container killed because its liveness probe failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unhealthy {
    pub container_id: String,
    /// The probe's failure, e.g. `HTTP probe failed with statuscode: 500`.
    pub message: String,
}

/// A start that did not work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `ErrImagePull`, `PortInUse`, `InvalidSpec`, …
    pub reason: String,
    /// One sentence, the engine's own where there is one.
    pub message: String,
    /// False: starting again cannot help until the spec changes.
    pub retryable: bool,
    /// The revision that failed: a new revision gets a fresh try.
    pub revision: String,
}

impl Failure {
    pub fn from_error(e: &AgentError, revision: &str) -> Failure {
        Failure {
            reason: e.reason().to_string(),
            message: e.status_message(),
            retryable: e.is_retryable(),
            revision: revision.to_string(),
        }
    }
}

impl Record {
    /// A container of this replica started (or was adopted).
    pub fn started(&mut self, container_id: &str, restarts: u32) {
        self.container_id = Some(container_id.to_string());
        self.restarts = restarts;
        self.handled_exit = None;
        self.next_attempt_unix_ms = None;
        self.failure = None;
        self.retry_io_at = None;
    }

    /// A start failed: back off like a crash (it never ran, so no reset).
    pub fn start_failed(&mut self, failure: Failure, policy: &BackoffPolicy, now: UnixMs) {
        let delay = policy.next_delay(self.delay, None);
        self.container_id = None;
        self.delay = Some(delay);
        self.next_attempt_unix_ms = failure.retryable.then(|| now + millis(delay));
        self.failure = Some(failure);
    }

    /// A [`Action::BackOff`]: the exit of `container_id` is accounted for,
    /// the next attempt waits until `restart_at`.
    pub fn backed_off(
        &mut self,
        container_id: &str,
        exit: Exit,
        restarts: u32,
        delay: Duration,
        restart_at: UnixMs,
    ) {
        if self
            .unhealthy
            .as_ref()
            .is_some_and(|u| u.container_id != container_id)
        {
            // This exit was the container's own doing.
            self.unhealthy = None;
        }
        self.container_id = Some(container_id.to_string());
        self.handled_exit = Some(container_id.to_string());
        self.last_exit = Some(exit);
        self.restarts = restarts;
        self.delay = Some(delay);
        self.next_attempt_unix_ms = Some(restart_at);
    }

    /// The times its decision may change without any other input: the
    /// next start attempt (backing off) and the retry of a failed stop.
    pub fn deadlines(&self) -> impl Iterator<Item = UnixMs> {
        [self.next_attempt_unix_ms, self.retry_io_at]
            .into_iter()
            .flatten()
    }

    /// A container of this replica was deleted.
    pub fn removed(&mut self, container_id: &str) {
        if self.container_id.as_deref() == Some(container_id) {
            self.container_id = None;
        }
    }
}

/// What the runner is doing to a replica right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// Creating, pulling or (re)starting its container.
    Starting,
    /// Stopping or removing its containers.
    Stopping,
}

/// One step for the runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create and start the replica's container.
    Start { replica: String, restarts: u32 },
    /// Take over a running container found on the node (after an agent
    /// restart): bookkeeping only, the container is not touched.
    Adopt {
        replica: String,
        container_id: String,
        restarts: u32,
    },
    /// Stop a container (SIGTERM, SIGKILL after `grace`).
    Stop {
        replica: String,
        container_id: String,
        grace: Duration,
    },
    /// Delete a container.
    Remove {
        replica: String,
        container_id: String,
    },
    /// Account for a crash and schedule the restart: bookkeeping only.
    BackOff {
        replica: String,
        container_id: String,
        exit: Exit,
        restarts: u32,
        delay: Duration,
        restart_at: UnixMs,
    },
    /// Replace an exited container: remove it, start a new one.
    Restart {
        replica: String,
        container_id: String,
        restarts: u32,
    },
    /// Drop the memory of a replica that is neither assigned nor present.
    Forget { replica: String },
}

impl Action {
    pub fn replica(&self) -> &str {
        match self {
            Action::Start { replica, .. }
            | Action::Adopt { replica, .. }
            | Action::Stop { replica, .. }
            | Action::Remove { replica, .. }
            | Action::BackOff { replica, .. }
            | Action::Restart { replica, .. }
            | Action::Forget { replica } => replica,
        }
    }

    /// Whether the runtime must do something (as opposed to bookkeeping).
    pub fn touches_runtime(&self) -> bool {
        matches!(
            self,
            Action::Start { .. }
                | Action::Stop { .. }
                | Action::Remove { .. }
                | Action::Restart { .. }
        )
    }
}

/// Grace period for containers of replicas no longer assigned (their spec is
/// gone with the assignment): Kubernetes' default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Decide what to do. See the module docs for the table.
pub fn reconcile<'a>(
    assignments: &BTreeMap<String, Assignment>,
    observed: impl IntoIterator<Item = &'a Observed>,
    records: &BTreeMap<String, Record>,
    busy: &BTreeMap<String, Busy>,
    now: UnixMs,
) -> Vec<Action> {
    let mut by_name: BTreeMap<&str, Vec<&Observed>> = BTreeMap::new();
    for o in observed {
        by_name.entry(o.replica.as_str()).or_default().push(o);
    }
    let names: BTreeSet<&str> = assignments
        .keys()
        .map(String::as_str)
        .chain(by_name.keys().copied())
        .chain(records.keys().map(String::as_str))
        .collect();
    let mut actions = Vec::new();
    for name in names {
        decide(
            name,
            assignments.get(name),
            by_name.get(name).into_iter().flatten().copied(),
            records.get(name),
            busy.contains_key(name),
            now,
            &mut actions,
        );
    }
    actions
}

/// One replica's row of the table: the actions [`reconcile`] takes for
/// `name`, from its assignment, its containers (`observed`: this replica's
/// only), its record and whether it is busy. Appended to `actions`; none
/// for a replica that is neither assigned, present nor remembered. The
/// supervisor calls it for the replicas whose inputs changed and those
/// whose deadline ([`Record::deadlines`]) came, instead of for all.
pub fn decide<'a>(
    name: &str,
    assigned: Option<&Assignment>,
    observed: impl IntoIterator<Item = &'a Observed>,
    record: Option<&Record>,
    busy: bool,
    now: UnixMs,
    actions: &mut Vec<Action>,
) {
    if busy {
        return;
    }
    if record.and_then(|r| r.retry_io_at).is_some_and(|t| now < t) {
        return;
    }
    let (current, strays) = by_replica(observed);
    let container = current.get(name).copied();
    if assigned.is_none() && container.is_none() && record.is_none() {
        return;
    }
    // The assignment's grace; once it is gone, the one the container was
    // made with.
    let grace = |c: &Observed| {
        assigned
            .map(Assignment::grace)
            .or(c.grace)
            .unwrap_or(DEFAULT_GRACE)
    };
    for stray in strays {
        stop_and_remove(actions, stray, grace(stray));
    }
    match (assigned, container) {
        (None, Some(c)) => stop_and_remove(actions, c, grace(c)),
        (None, None) => actions.push(Action::Forget {
            replica: name.to_string(),
        }),
        (Some(a), None) => {
            if may_start(a, record, now) {
                actions.push(Action::Start {
                    replica: name.to_string(),
                    restarts: record.map_or(0, |r| r.restarts),
                });
            }
        }
        (Some(a), Some(c)) if !same_spec(a, c) => {
            stop_and_remove(actions, c, grace(c));
            actions.push(Action::Start {
                replica: name.to_string(),
                restarts: 0,
            });
        }
        (Some(a), Some(c)) => {
            let restarts = record.map_or(c.restarts, |r| r.restarts);
            let known = record.and_then(|r| r.container_id.as_deref()) == Some(&c.container_id);
            match c.state {
                ContainerState::Running if !known => actions.push(Action::Adopt {
                    replica: name.to_string(),
                    container_id: c.container_id.clone(),
                    restarts: c.restarts.max(record.map_or(0, |r| r.restarts)),
                }),
                // Killed for a failed liveness probe, yet running: the
                // kill failed. Kill it again (once the retry delay of a
                // failed stop has passed: see the check above).
                ContainerState::Running
                    if record
                        .and_then(|r| r.unhealthy.as_ref())
                        .is_some_and(|u| u.container_id == c.container_id) =>
                {
                    actions.push(Action::Stop {
                        replica: name.to_string(),
                        container_id: c.container_id.clone(),
                        grace: grace(c),
                    });
                }
                ContainerState::Running => {}
                ContainerState::Created => {
                    actions.push(Action::Remove {
                        replica: name.to_string(),
                        container_id: c.container_id.clone(),
                    });
                    actions.push(Action::Start {
                        replica: name.to_string(),
                        restarts,
                    });
                }
                ContainerState::Exited(exit) => {
                    let handled =
                        record.and_then(|r| r.handled_exit.as_deref()) == Some(&c.container_id);
                    if !handled {
                        let (policy, _) = a.backoff_policy();
                        let ran_for = (c.started_unix_ms > 0
                            && exit.finished_unix_ms >= c.started_unix_ms)
                            .then(|| {
                                Duration::from_millis(
                                    (exit.finished_unix_ms - c.started_unix_ms) as u64,
                                )
                            });
                        let delay = policy.next_delay(record.and_then(|r| r.delay), ran_for);
                        actions.push(Action::BackOff {
                            replica: name.to_string(),
                            container_id: c.container_id.clone(),
                            exit,
                            restarts,
                            delay,
                            restart_at: now + millis(delay),
                        });
                    } else if record
                        .and_then(|r| r.next_attempt_unix_ms)
                        .is_none_or(|t| now >= t)
                    {
                        actions.push(Action::Restart {
                            replica: name.to_string(),
                            container_id: c.container_id.clone(),
                            restarts: restarts.saturating_add(1),
                        });
                    }
                }
            }
        }
    }
}

/// What the bookkeeping actions do to the records (Adopt, BackOff,
/// Forget); the runtime ones change them through their outcomes
/// ([`Record::started`], [`Record::removed`], ...).
pub fn keep_books(records: &mut BTreeMap<String, Record>, action: &Action) {
    match action {
        Action::Adopt {
            replica,
            container_id,
            restarts,
        } => records
            .entry(replica.clone())
            .or_default()
            .started(container_id, *restarts),
        Action::BackOff {
            replica,
            container_id,
            exit,
            restarts,
            delay,
            restart_at,
        } => records.entry(replica.clone()).or_default().backed_off(
            container_id,
            *exit,
            *restarts,
            *delay,
            *restart_at,
        ),
        Action::Forget { replica } => {
            records.remove(replica);
        }
        Action::Start { .. }
        | Action::Stop { .. }
        | Action::Remove { .. }
        | Action::Restart { .. } => {}
    }
}

/// The actions as a runner carries them out: grouped per replica, in
/// order (a replica's steps run in sequence, different replicas in
/// parallel), each Stop with the grace it gets on this node: none while
/// fenced (`--stop-after-disconnect` kills at once), else a delete's
/// `--grace-period` when the controller sent one, else the decided one.
pub fn per_replica(
    actions: Vec<Action>,
    fencing: bool,
    stop_grace: &BTreeMap<String, Duration>,
) -> BTreeMap<String, Vec<Action>> {
    let mut groups: BTreeMap<String, Vec<Action>> = BTreeMap::new();
    for mut a in actions {
        if let Action::Stop { replica, grace, .. } = &mut a {
            if fencing {
                *grace = Duration::ZERO;
            } else if let Some(g) = stop_grace.get(replica.as_str()) {
                *grace = *g;
            }
        }
        groups.entry(a.replica().to_string()).or_default().push(a);
    }
    groups
}

/// Whether an assigned replica with no container may be started now.
fn may_start(a: &Assignment, record: Option<&Record>, now: UnixMs) -> bool {
    let Some(r) = record else { return true };
    if let Some(f) = &r.failure {
        if !f.retryable && f.revision == a.revision {
            return false;
        }
    }
    r.next_attempt_unix_ms.is_none_or(|t| now >= t)
}

/// Whether a container runs what the assignment asks: the same revision
/// and, when the container recorded one, the same full template hash (a
/// revision is only a short prefix of it).
fn same_spec(a: &Assignment, c: &Observed) -> bool {
    c.revision == a.revision && (c.spec_hash.is_empty() || c.spec_hash == a.spec_hash)
}

fn stop_and_remove(actions: &mut Vec<Action>, c: &Observed, grace: Duration) {
    if c.is_running() {
        actions.push(Action::Stop {
            replica: c.replica.clone(),
            container_id: c.container_id.clone(),
            grace,
        });
    }
    actions.push(Action::Remove {
        replica: c.replica.clone(),
        container_id: c.container_id.clone(),
    });
}

/// Each replica's current container (running first, then the most recently
/// started), and the strays: every other container.
pub fn by_replica<'a>(
    observed: impl IntoIterator<Item = &'a Observed>,
) -> (BTreeMap<&'a str, &'a Observed>, Vec<&'a Observed>) {
    let mut current: BTreeMap<&str, &Observed> = BTreeMap::new();
    let mut strays = Vec::new();
    let rank = |o: &'a Observed| (o.is_running(), o.started_unix_ms, o.container_id.as_str());
    for o in observed {
        match current.get(o.replica.as_str()) {
            Some(prev) if rank(prev) >= rank(o) => strays.push(o),
            Some(prev) => {
                strays.push(*prev);
                current.insert(&o.replica, o);
            }
            None => {
                current.insert(&o.replica, o);
            }
        }
    }
    (current, strays)
}

/// When the reconcile must run again without any event: the earliest
/// backoff or retry deadline of a replica that is not busy, after the time
/// the last reconcile decided at. Deadlines up to `decided_at` were seen by
/// that reconcile; waking for them again would only spin.
pub fn next_wakeup(
    records: &BTreeMap<String, Record>,
    busy: &BTreeMap<String, Busy>,
    decided_at: UnixMs,
) -> Option<UnixMs> {
    records
        .iter()
        .filter(|(name, _)| !busy.contains_key(*name))
        .flat_map(|(_, r)| r.deadlines())
        .filter(|t| *t > decided_at)
        .min()
}

/// How long the supervisor sleeps, read at `now`, after a reconcile that
/// decided at `decided_at`: until [`next_wakeup`], and not at all when that
/// deadline passed in between (the decision did not see it, and the next
/// event may be the 30 s resync). `None`: no deadline, sleep until an event.
pub fn sleep_for(
    records: &BTreeMap<String, Record>,
    busy: &BTreeMap<String, Busy>,
    decided_at: UnixMs,
    now: UnixMs,
) -> Option<Duration> {
    next_wakeup(records, busy, decided_at)
        .map(|at| Duration::from_millis((at - now).clamp(0, 24 * 3600 * 1000) as u64))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::{ANNOTATION_INITIAL, ANNOTATION_MAX};
    use crate::fixtures;

    const NOW: UnixMs = 1_700_000_000_000;

    fn assigned(names: &[&str]) -> BTreeMap<String, Assignment> {
        names
            .iter()
            .map(|n| (n.to_string(), fixtures::assignment(n)))
            .collect()
    }

    fn running(replica: &str, id: &str) -> Observed {
        Observed {
            replica: replica.into(),
            namespace: "default".into(),
            deployment: replica.split('-').next().unwrap_or_default().into(),
            revision: "rev1".into(),
            spec_hash: String::new(),
            container_id: id.into(),
            image: "drover/busybox:1".into(),
            restarts: 0,
            started_unix_ms: NOW - 5_000,
            state: ContainerState::Running,
            grace: None,
            published_ports: Vec::new(),
        }
    }

    fn exited(replica: &str, id: &str, code: i64, ran_ms: i64) -> Observed {
        let mut o = running(replica, id);
        o.started_unix_ms = NOW - ran_ms - 100;
        o.state = ContainerState::Exited(Exit {
            code,
            oom_killed: false,
            finished_unix_ms: NOW - 100,
        });
        o
    }

    fn known(id: &str) -> Record {
        Record {
            container_id: Some(id.into()),
            ..Default::default()
        }
    }

    fn records(pairs: Vec<(&str, Record)>) -> BTreeMap<String, Record> {
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    fn none_busy() -> BTreeMap<String, Busy> {
        BTreeMap::new()
    }

    /// The supervisor decides replica by replica, for the changed ones
    /// only: each replica's decision must be its rows of the whole one,
    /// whatever else the node holds.
    #[test]
    fn deciding_replica_by_replica_is_the_whole_reconcile() {
        let assignments = assigned(&["a-r-0", "b-r-0", "c-r-0", "d-r-0", "e-r-0"]);
        let mut stray = exited("a-r-0", "a-old", 1, 10);
        stray.started_unix_ms -= 1_000;
        let observed = vec![
            running("a-r-0", "a1"),
            stray,
            exited("b-r-0", "b1", 1, 10),
            running("gone-r-0", "g1"),
            running("e-r-0", "e1"),
        ];
        let records = records(vec![
            ("a-r-0", known("a1")),
            (
                "c-r-0",
                Record {
                    next_attempt_unix_ms: Some(NOW + 1),
                    ..Default::default()
                },
            ),
            ("forgotten-r-0", Record::default()),
            (
                "e-r-0",
                Record {
                    retry_io_at: Some(NOW + 5),
                    ..known("other")
                },
            ),
        ]);
        let busy = BTreeMap::from([("d-r-0".to_string(), Busy::Starting)]);
        let whole = reconcile(&assignments, &observed, &records, &busy, NOW);
        assert!(!whole.is_empty());
        let mut names: Vec<&str> = whole.iter().map(Action::replica).collect();
        names.extend(["c-r-0", "d-r-0", "e-r-0", "nothing-r-0"]);
        names.sort();
        names.dedup();
        let mut one_by_one = Vec::new();
        for name in names {
            decide(
                name,
                assignments.get(name),
                observed.iter().filter(|o| o.replica == name),
                records.get(name),
                busy.contains_key(name),
                NOW,
                &mut one_by_one,
            );
        }
        assert_eq!(one_by_one, whole);
        // c backs off, d is busy, e waits to retry, "nothing" is unknown.
        assert!(whole
            .iter()
            .all(|a| !["c-r-0", "d-r-0", "e-r-0"].contains(&a.replica())));
    }

    #[test]
    fn assigned_and_not_running_starts() {
        let actions = reconcile(
            &assigned(&["web-r-0", "web-r-1"]),
            &[],
            &BTreeMap::new(),
            &none_busy(),
            NOW,
        );
        assert_eq!(
            actions,
            vec![
                Action::Start {
                    replica: "web-r-0".into(),
                    restarts: 0
                },
                Action::Start {
                    replica: "web-r-1".into(),
                    restarts: 0
                },
            ]
        );
    }

    #[test]
    fn running_and_not_assigned_is_stopped_then_removed() {
        let actions = reconcile(
            &assigned(&[]),
            &[running("old-r-0", "c1")],
            &records(vec![("old-r-0", known("c1"))]),
            &none_busy(),
            NOW,
        );
        assert_eq!(
            actions,
            vec![
                Action::Stop {
                    replica: "old-r-0".into(),
                    container_id: "c1".into(),
                    grace: DEFAULT_GRACE
                },
                Action::Remove {
                    replica: "old-r-0".into(),
                    container_id: "c1".into()
                },
            ]
        );
    }

    #[test]
    fn an_unassigned_container_is_stopped_with_the_grace_it_was_made_with() {
        let mut c = running("old-r-0", "c1");
        c.grace = Some(Duration::from_secs(5));
        let actions = reconcile(&assigned(&[]), &[c], &BTreeMap::new(), &none_busy(), NOW);
        assert!(
            matches!(&actions[0], Action::Stop { grace, .. } if *grace == Duration::from_secs(5)),
            "{actions:?}"
        );
    }

    #[test]
    fn an_exited_unassigned_container_is_only_removed() {
        let actions = reconcile(
            &assigned(&[]),
            &[exited("old-r-0", "c1", 1, 1000)],
            &BTreeMap::new(),
            &none_busy(),
            NOW,
        );
        assert_eq!(
            actions,
            vec![Action::Remove {
                replica: "old-r-0".into(),
                container_id: "c1".into()
            }]
        );
    }

    #[test]
    fn the_same_short_revision_with_another_full_spec_hash_is_replaced() {
        let mut set = assigned(&["web-r-0"]);
        let a = set.get_mut("web-r-0").expect("assignment");
        a.spec_hash = "a".repeat(64);
        let decide = |spec_hash: String| {
            let mut c = running("web-r-0", "c1");
            c.spec_hash = spec_hash;
            reconcile(
                &set,
                &[c],
                &records(vec![("web-r-0", known("c1"))]),
                &none_busy(),
                NOW,
            )
        };
        let starts = |actions: &[Action]| actions.iter().any(|x| matches!(x, Action::Start { .. }));
        let actions = decide("b".repeat(64));
        assert!(
            starts(&actions),
            "a collision of the short revision must not keep the old spec: {actions:?}"
        );
        // A container from an agent that did not record the hash is judged
        // by its revision alone (an agent upgrade restarts nothing).
        assert!(decide(String::new()).is_empty());
        assert!(decide("a".repeat(64)).is_empty());
    }

    #[test]
    fn running_but_another_revision_is_replaced_with_the_assigned_grace() {
        let mut set = assigned(&["web-r-0"]);
        let a = set.get_mut("web-r-0").expect("assignment");
        a.revision = "rev2".into();
        a.template_mut().spec.termination_grace_period_seconds = 5;
        let actions = reconcile(
            &set,
            &[running("web-r-0", "c1")],
            &records(vec![("web-r-0", known("c1"))]),
            &none_busy(),
            NOW,
        );
        assert_eq!(
            actions,
            vec![
                Action::Stop {
                    replica: "web-r-0".into(),
                    container_id: "c1".into(),
                    grace: Duration::from_secs(5)
                },
                Action::Remove {
                    replica: "web-r-0".into(),
                    container_id: "c1".into()
                },
                Action::Start {
                    replica: "web-r-0".into(),
                    restarts: 0
                },
            ]
        );
    }

    #[test]
    fn a_known_running_container_needs_nothing() {
        let actions = reconcile(
            &assigned(&["web-r-0"]),
            &[running("web-r-0", "c1")],
            &records(vec![("web-r-0", known("c1"))]),
            &none_busy(),
            NOW,
        );
        assert!(actions.is_empty(), "{actions:?}");
    }

    #[test]
    fn after_an_agent_restart_running_containers_are_adopted_not_restarted() {
        let mut c = running("web-r-0", "c1");
        c.restarts = 4;
        let actions = reconcile(
            &assigned(&["web-r-0"]),
            &[c, running("web-r-1", "c2")],
            &BTreeMap::new(),
            &none_busy(),
            NOW,
        );
        assert_eq!(
            actions,
            vec![
                Action::Adopt {
                    replica: "web-r-0".into(),
                    container_id: "c1".into(),
                    restarts: 4
                },
                Action::Stop {
                    replica: "web-r-1".into(),
                    container_id: "c2".into(),
                    grace: DEFAULT_GRACE
                },
                Action::Remove {
                    replica: "web-r-1".into(),
                    container_id: "c2".into()
                },
            ]
        );
    }

    #[test]
    fn a_crash_backs_off_one_second_then_restarts() {
        let set = assigned(&["web-r-0"]);
        let obs = [exited("web-r-0", "c1", 1, 2_000)];
        let actions = reconcile(
            &set,
            &obs,
            &records(vec![("web-r-0", known("c1"))]),
            &none_busy(),
            NOW,
        );
        let exit = match obs[0].state {
            ContainerState::Exited(e) => e,
            _ => unreachable!(),
        };
        assert_eq!(
            actions,
            vec![Action::BackOff {
                replica: "web-r-0".into(),
                container_id: "c1".into(),
                exit,
                restarts: 0,
                delay: Duration::from_secs(1),
                restart_at: NOW + 1000
            }]
        );

        // Bookkept: nothing until the deadline, then a restart counted.
        let rec = Record {
            container_id: Some("c1".into()),
            handled_exit: Some("c1".into()),
            last_exit: Some(exit),
            delay: Some(Duration::from_secs(1)),
            next_attempt_unix_ms: Some(NOW + 1000),
            ..Default::default()
        };
        let recs = records(vec![("web-r-0", rec)]);
        assert!(reconcile(&set, &obs, &recs, &none_busy(), NOW + 999).is_empty());
        assert_eq!(
            reconcile(&set, &obs, &recs, &none_busy(), NOW + 1000),
            vec![Action::Restart {
                replica: "web-r-0".into(),
                container_id: "c1".into(),
                restarts: 1
            }]
        );
        assert_eq!(next_wakeup(&recs, &none_busy(), NOW), Some(NOW + 1000));
        assert_eq!(
            next_wakeup(&recs, &none_busy(), NOW + 1000),
            None,
            "past is not a wake-up"
        );
    }

    #[test]
    fn a_deadline_passing_between_the_decision_and_the_sleep_wakes_at_once() {
        let rec = Record {
            container_id: Some("c1".into()),
            delay: Some(Duration::from_secs(1)),
            next_attempt_unix_ms: Some(NOW + 1000),
            ..Default::default()
        };
        let recs = records(vec![("web-r-0", rec)]);
        // Decided before the deadline, read the clock after it: due now,
        // not at the next resync.
        assert_eq!(
            sleep_for(&recs, &none_busy(), NOW + 990, NOW + 1010),
            Some(Duration::ZERO)
        );
        // Decided and read before it: sleep the rest.
        assert_eq!(
            sleep_for(&recs, &none_busy(), NOW, NOW + 10),
            Some(Duration::from_millis(990))
        );
        // Decided after it: that decision restarted the replica already.
        assert_eq!(sleep_for(&recs, &none_busy(), NOW + 1000, NOW + 1010), None);
        // A busy replica's deadline waits for its task to finish instead.
        let busy = BTreeMap::from([("web-r-0".to_string(), Busy::Starting)]);
        assert_eq!(sleep_for(&recs, &busy, NOW, NOW + 10), None);
    }

    fn backoff_delay(actions: &[Action]) -> Duration {
        match actions {
            [Action::BackOff { delay, .. }] => *delay,
            other => panic!("expected one BackOff, got {other:?}"),
        }
    }

    #[test]
    fn repeated_crashes_double_the_delay_and_a_long_run_resets_it() {
        let set = assigned(&["web-r-0"]);
        let rec = Record {
            container_id: Some("c2".into()),
            restarts: 3,
            delay: Some(Duration::from_secs(4)),
            ..Default::default()
        };
        let recs = records(vec![("web-r-0", rec)]);
        let short = [exited("web-r-0", "c2", 1, 500)];
        assert_eq!(
            backoff_delay(&reconcile(&set, &short, &recs, &none_busy(), NOW)),
            Duration::from_secs(8)
        );
        let long = [exited("web-r-0", "c2", 1, 60_000)];
        assert_eq!(
            backoff_delay(&reconcile(&set, &long, &recs, &none_busy(), NOW)),
            Duration::from_secs(1)
        );
        let capped = Record {
            delay: Some(Duration::from_secs(30)),
            ..recs["web-r-0"].clone()
        };
        assert_eq!(
            backoff_delay(&reconcile(
                &set,
                &short,
                &records(vec![("web-r-0", capped)]),
                &none_busy(),
                NOW
            )),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn deployment_annotations_set_the_backoff() {
        let mut set = assigned(&["web-r-0"]);
        let a = set.get_mut("web-r-0").expect("assignment");
        a.annotations
            .insert(ANNOTATION_INITIAL.into(), "500ms".into());
        a.annotations.insert(ANNOTATION_MAX.into(), "2s".into());
        let obs = [exited("web-r-0", "c1", 1, 100)];
        let first = reconcile(&set, &obs, &BTreeMap::new(), &none_busy(), NOW);
        assert_eq!(backoff_delay(&first), Duration::from_millis(500));
        let rec = Record {
            delay: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        let later = reconcile(
            &set,
            &obs,
            &records(vec![("web-r-0", rec)]),
            &none_busy(),
            NOW,
        );
        assert_eq!(backoff_delay(&later), Duration::from_secs(2));
    }

    #[test]
    fn an_exited_container_found_after_restart_keeps_its_restart_count() {
        let mut c = exited("web-r-0", "c9", 137, 100);
        c.restarts = 7;
        let actions = reconcile(
            &assigned(&["web-r-0"]),
            &[c],
            &BTreeMap::new(),
            &none_busy(),
            NOW,
        );
        assert!(
            matches!(&actions[..], [Action::BackOff { restarts: 7, .. }]),
            "{actions:?}"
        );
    }

    #[test]
    fn a_failed_start_waits_for_its_backoff_then_retries() {
        let set = assigned(&["web-r-0"]);
        let mut rec = Record::default();
        let failure = Failure::from_error(
            &AgentError::PortInUse {
                message: "port is already allocated".into(),
            },
            "rev1",
        );
        rec.start_failed(failure, &BackoffPolicy::default(), NOW);
        assert_eq!(rec.next_attempt_unix_ms, Some(NOW + 1000));
        assert_eq!(
            rec.failure.as_ref().map(|f| f.reason.as_str()),
            Some("PortInUse")
        );
        let recs = records(vec![("web-r-0", rec.clone())]);
        assert!(reconcile(&set, &[], &recs, &none_busy(), NOW + 500).is_empty());
        assert_eq!(
            reconcile(&set, &[], &recs, &none_busy(), NOW + 1000),
            vec![Action::Start {
                replica: "web-r-0".into(),
                restarts: 0
            }]
        );
        // A second failure doubles the wait.
        rec.start_failed(
            Failure::from_error(
                &AgentError::PortInUse {
                    message: "again".into(),
                },
                "rev1",
            ),
            &BackoffPolicy::default(),
            NOW + 1000,
        );
        assert_eq!(rec.next_attempt_unix_ms, Some(NOW + 3000));
    }

    #[test]
    fn an_invalid_spec_is_not_retried_until_the_revision_changes() {
        let mut set = assigned(&["web-r-0"]);
        let mut rec = Record::default();
        rec.start_failed(
            Failure::from_error(&AgentError::InvalidSpec("no command".into()), "rev1"),
            &BackoffPolicy::default(),
            NOW,
        );
        assert_eq!(rec.next_attempt_unix_ms, None);
        let recs = records(vec![("web-r-0", rec)]);
        assert!(reconcile(&set, &[], &recs, &none_busy(), NOW + 3_600_000).is_empty());
        set.get_mut("web-r-0").expect("assignment").revision = "rev2".into();
        assert_eq!(reconcile(&set, &[], &recs, &none_busy(), NOW).len(), 1);
    }

    #[test]
    fn busy_replicas_are_left_alone() {
        let busy = BTreeMap::from([("web-r-0".to_string(), Busy::Starting)]);
        let actions = reconcile(&assigned(&["web-r-0"]), &[], &BTreeMap::new(), &busy, NOW);
        assert!(actions.is_empty(), "{actions:?}");
    }

    #[test]
    fn a_created_but_never_started_container_is_replaced() {
        let mut c = running("web-r-0", "c1");
        c.state = ContainerState::Created;
        let actions = reconcile(
            &assigned(&["web-r-0"]),
            &[c],
            &BTreeMap::new(),
            &none_busy(),
            NOW,
        );
        assert_eq!(
            actions,
            vec![
                Action::Remove {
                    replica: "web-r-0".into(),
                    container_id: "c1".into()
                },
                Action::Start {
                    replica: "web-r-0".into(),
                    restarts: 0
                },
            ]
        );
    }

    #[test]
    fn stray_containers_of_a_replica_are_removed_and_the_running_one_kept() {
        let old = exited("web-r-0", "c0", 1, 100);
        let actions = reconcile(
            &assigned(&["web-r-0"]),
            &[old, running("web-r-0", "c1")],
            &records(vec![("web-r-0", known("c1"))]),
            &none_busy(),
            NOW,
        );
        assert_eq!(
            actions,
            vec![Action::Remove {
                replica: "web-r-0".into(),
                container_id: "c0".into()
            }]
        );
    }

    #[test]
    fn memory_of_a_gone_replica_is_forgotten() {
        let actions = reconcile(
            &assigned(&[]),
            &[],
            &records(vec![("gone-r-0", Record::default())]),
            &none_busy(),
            NOW,
        );
        assert_eq!(
            actions,
            vec![Action::Forget {
                replica: "gone-r-0".into()
            }]
        );
    }

    #[test]
    fn a_container_whose_liveness_kill_failed_is_killed_again() {
        let set = assigned(&["web-r-0"]);
        let mut record = known("c1");
        record.unhealthy = Some(Unhealthy {
            container_id: "c1".into(),
            message: "HTTP probe failed with statuscode: 500".into(),
        });
        let actions = reconcile(
            &set,
            &[running("web-r-0", "c1")],
            &records(vec![("web-r-0", record.clone())]),
            &none_busy(),
            NOW,
        );
        assert_eq!(
            actions,
            vec![Action::Stop {
                replica: "web-r-0".into(),
                container_id: "c1".into(),
                grace: Duration::from_secs(30)
            }]
        );
        // Not while the failed kill's retry delay runs.
        record.retry_io_at = Some(NOW + 1_000);
        assert!(reconcile(
            &set,
            &[running("web-r-0", "c1")],
            &records(vec![("web-r-0", record)]),
            &none_busy(),
            NOW,
        )
        .is_empty());
    }

    #[test]
    fn a_failed_stop_is_retried_later_not_at_once() {
        let rec = Record {
            container_id: Some("c1".into()),
            retry_io_at: Some(NOW + 1000),
            ..Default::default()
        };
        let recs = records(vec![("old-r-0", rec)]);
        let obs = [running("old-r-0", "c1")];
        assert!(reconcile(&assigned(&[]), &obs, &recs, &none_busy(), NOW).is_empty());
        assert_eq!(
            reconcile(&assigned(&[]), &obs, &recs, &none_busy(), NOW + 1000).len(),
            2
        );
        assert_eq!(next_wakeup(&recs, &none_busy(), NOW), Some(NOW + 1000));
    }

    #[test]
    fn the_same_inputs_give_the_same_actions() {
        let set = assigned(&["a-r-0", "b-r-0", "c-r-0"]);
        let obs = [
            running("b-r-0", "c2"),
            exited("c-r-0", "c3", 2, 10),
            running("z-r-0", "c4"),
        ];
        let first = reconcile(&set, &obs, &BTreeMap::new(), &none_busy(), NOW);
        for _ in 0..10 {
            assert_eq!(
                reconcile(&set, &obs, &BTreeMap::new(), &none_busy(), NOW),
                first
            );
        }
    }

    #[test]
    fn per_replica_keeps_each_replicas_order_and_fencing_kills_without_grace() {
        let obs = [running("a-r-0", "c1"), running("b-r-0", "c2")];
        let actions = reconcile(&assigned(&[]), &obs, &BTreeMap::new(), &none_busy(), NOW);
        let graces = |groups: &BTreeMap<String, Vec<Action>>| -> Vec<(String, Duration)> {
            groups
                .values()
                .flatten()
                .filter_map(|a| match a {
                    Action::Stop { replica, grace, .. } => Some((replica.clone(), *grace)),
                    _ => None,
                })
                .collect()
        };
        let deleted: BTreeMap<String, Duration> =
            [("b-r-0".to_string(), Duration::from_secs(2))].into();
        let groups = per_replica(actions.clone(), false, &deleted);
        assert_eq!(groups.keys().collect::<Vec<_>>(), ["a-r-0", "b-r-0"]);
        for steps in groups.values() {
            assert!(matches!(
                steps[..],
                [Action::Stop { .. }, Action::Remove { .. }]
            ));
        }
        assert_eq!(
            graces(&groups),
            [
                ("a-r-0".to_string(), DEFAULT_GRACE),
                ("b-r-0".to_string(), Duration::from_secs(2))
            ]
        );
        let fenced = per_replica(actions, true, &deleted);
        assert!(graces(&fenced).iter().all(|(_, g)| g.is_zero()));
    }
}
