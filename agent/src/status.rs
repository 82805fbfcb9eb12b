//! Replica status as the controller sees it: derived, never stored.
//!
//! The supervisor recomputes every replica's status from the same inputs the
//! reconcile uses and publishes the whole map; the session sends only what
//! changed since its last report ([`changed`]). A replica that leaves the map
//! (stopped and removed) is reported once as GONE. Deriving status instead of
//! emitting "report" actions means no transition can be forgotten.
//!
//! ```text
//!   busy stopping / unassigned & present ─▶ TERMINATING
//!   running                              ─▶ RUNNING (reason: last exit, if any;
//!                                           ready: readiness probe verdict)
//!   exited, backing off                  ─▶ CRASH_LOOP_BACK_OFF (+ next restart)
//!   start failed                         ─▶ FAILED (ErrImagePull, PortInUse, …)
//!   otherwise                            ─▶ PENDING (ContainerCreating)
//! ```
//!
//! A running container is ready at once without a readiness probe, and only
//! once its probe passes with one; an adopted container whose assignment has
//! not arrived yet is not ready (its probes are not known). A container killed by its liveness probe
//! shows reason `Unhealthy` and kubelet's "Liveness probe failed: …".

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use drover_proto::pb::{ReplicaState, ReplicaStatus};
use imbl::ordmap::DiffItem;

use crate::assignment::Assignment;
use crate::reconcile::{Busy, Failure, Record, Unhealthy};
use crate::runtime::{ContainerState, Exit, Observed, PublishedPort};

/// Every replica's status, by name: a persistent map, so that publishing
/// it is a cheap clone and [`changed`] a walk of what differs. The statuses
/// are shared: a change copies the map's path to it, up to 64 entries a
/// node, and copying a status was several strings each (in the placement
/// bench's in-process agents, a sixth of their time).
pub type StatusMap = imbl::OrdMap<String, Shared>;

/// A status as [`StatusMap`] holds it: shared, and compared by pointer
/// first. [`update`] replaces only the statuses that changed, so an entry
/// it left alone is the same allocation in the map before and after, and
/// [`changed`]'s walk of a changed leaf skips it at a pointer's cost
/// (prost's messages are not `Eq`, so `Arc`'s own `==` compared every
/// entry field by field: a twentieth of the placement bench's agents).
#[derive(Debug, Clone)]
pub struct Shared(Arc<ReplicaStatus>);

impl Shared {
    pub fn new(status: ReplicaStatus) -> Shared {
        Shared(Arc::new(status))
    }
}

impl PartialEq for Shared {
    fn eq(&self, other: &Shared) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl std::ops::Deref for Shared {
    type Target = ReplicaStatus;

    fn deref(&self) -> &ReplicaStatus {
        &self.0
    }
}

/// What the agent knows about one replica.
pub struct Inputs<'a> {
    pub name: &'a str,
    /// None: not assigned (or no assignment set received yet).
    pub assigned: Option<&'a Assignment>,
    /// Whether an assignment set has been received at all.
    pub have_assignments: bool,
    pub container: Option<&'a Observed>,
    pub record: Option<&'a Record>,
    pub busy: Option<Busy>,
    /// The readiness probe's standing verdict, when one is running.
    pub readiness: Option<Readiness<'a>>,
}

/// A readiness probe's verdict for one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness<'a> {
    pub container_id: &'a str,
    pub ready: bool,
    /// The failure that made it not ready, if it failed.
    pub message: Option<&'a str>,
}

/// The status of one replica.
pub fn replica_status(i: &Inputs<'_>) -> ReplicaStatus {
    let record = i.record;
    let container = i.container;
    let exit: Option<Exit> = match container.map(|c| c.state) {
        Some(ContainerState::Exited(e)) => Some(e),
        _ => record.and_then(|r| r.last_exit),
    };
    let mut s = ReplicaStatus {
        replica: i.name.to_string(),
        ready: false,
        restarts: record.map_or_else(|| container.map_or(0, |c| c.restarts), |r| r.restarts),
        last_exit_code: exit.map(|e| e.code),
        container_id: container
            .map(|c| c.container_id.clone())
            .unwrap_or_default(),
        image: container
            .map(|c| c.image.clone())
            .or_else(|| i.assigned.map(|a| a.container().image.clone()))
            .unwrap_or_default(),
        started_unix_ms: container.map_or(0, |c| c.started_unix_ms),
        finished_unix_ms: exit.map_or(0, |e| e.finished_unix_ms),
        revision: i
            .assigned
            .map(|a| a.revision.clone())
            .or_else(|| container.map(|c| c.revision.clone()))
            .unwrap_or_default(),
        published_ports: container
            .filter(|c| c.is_running())
            .map(|c| c.published_ports.iter().map(published_pb).collect())
            .unwrap_or_default(),
        ..Default::default()
    };
    let unassigned = i.have_assignments && i.assigned.is_none();
    let state = if i.busy == Some(Busy::Stopping) || (unassigned && container.is_some()) {
        ReplicaState::Terminating
    } else {
        match container.map(|c| c.state) {
            Some(ContainerState::Running) => {
                let c = container.map_or("", |c| c.container_id.as_str());
                let probed = i
                    .assigned
                    .is_some_and(|a| a.container().readiness_probe.is_some());
                match i.readiness.filter(|r| r.container_id == c) {
                    Some(r) => {
                        s.ready = r.ready;
                        if let (false, Some(m)) = (r.ready, r.message) {
                            s.message = format!("Readiness probe failed: {m}");
                        }
                    }
                    // Without its assignment (an agent that just restarted
                    // and adopted it) nobody knows whether it has a readiness
                    // probe: it is not ready until the spec says it needs none.
                    None => s.ready = i.assigned.is_some() && !probed,
                }
                if s.restarts > 0 {
                    if let Some(e) = exit {
                        s.reason = e.reason().to_string();
                    }
                }
                if let Some(u) = unhealthy(record) {
                    s.reason = "Unhealthy".into();
                    s.message = if u.container_id == c {
                        format!("Liveness probe failed: {}", u.message)
                    } else {
                        format!("restarted after: Liveness probe failed: {}", u.message)
                    };
                }
                ReplicaState::Running
            }
            Some(ContainerState::Exited(e)) if i.busy == Some(Busy::Starting) => {
                s.reason = e.reason().to_string();
                if let Some(u) = unhealthy(record) {
                    s.reason = "Unhealthy".into();
                    s.message = format!("Liveness probe failed: {}", u.message);
                }
                ReplicaState::Pending
            }
            Some(ContainerState::Exited(e)) => {
                s.reason = e.reason().to_string();
                let liveness = unhealthy(record).map(|u| {
                    s.reason = "Unhealthy".into();
                    format!("Liveness probe failed: {}; ", u.message)
                });
                if let Some(r) = record {
                    s.next_restart_unix_ms = r.next_attempt_unix_ms.unwrap_or(0);
                    if let Some(d) = r.delay {
                        s.message = format!(
                            "{}back-off {} restarting the container (exit code {})",
                            liveness.unwrap_or_default(),
                            drover_proto::duration::short(d),
                            e.code
                        );
                    }
                }
                ReplicaState::CrashLoopBackOff
            }
            Some(ContainerState::Created) => {
                s.reason = "ContainerCreating".into();
                ReplicaState::Pending
            }
            None => match record.and_then(|r| r.failure.as_ref()) {
                Some(f) if i.busy.is_none() => failed(&mut s, f, record),
                _ => {
                    s.reason = "ContainerCreating".into();
                    ReplicaState::Pending
                }
            },
        }
    };
    s.state = state as i32;
    s
}

fn published_pb(p: &PublishedPort) -> drover_proto::pb::PublishedPort {
    drover_proto::pb::PublishedPort {
        container_port: u32::from(p.container_port),
        protocol: p.protocol.as_str().to_string(),
        host_port: u32::from(p.host_port),
    }
}

fn unhealthy(record: Option<&Record>) -> Option<&Unhealthy> {
    record.and_then(|r| r.unhealthy.as_ref())
}

fn failed(s: &mut ReplicaStatus, f: &Failure, record: Option<&Record>) -> ReplicaState {
    s.reason = f.reason.clone();
    s.message = f.message.clone();
    s.next_restart_unix_ms = record.and_then(|r| r.next_attempt_unix_ms).unwrap_or(0);
    ReplicaState::Failed
}

/// Everything on one node the statuses derive from: the supervisor's state
/// (and the simulator's agent, which keeps the same).
pub struct Node<'a> {
    /// None until the first assignment set.
    pub assignments: Option<&'a BTreeMap<String, Assignment>>,
    /// Assignments that did not decode, with why.
    pub invalid: &'a BTreeMap<String, Failure>,
    /// Replicas the controller waits to hear are gone.
    pub terminating: &'a BTreeSet<String>,
    pub records: &'a BTreeMap<String, Record>,
    pub busy: &'a BTreeMap<String, Busy>,
}

/// Every replica's status on a node: each assigned, present or busy
/// replica's [`replica_status`], a FAILED one for each assignment that
/// did not decode, and GONE for each terminating replica nothing is left
/// of (the entry stays while the controller asks, so a reconnect repeats it).
pub fn status_map<'a>(
    node: &Node<'a>,
    containers: impl IntoIterator<Item = &'a Observed>,
    readiness: impl Fn(&str) -> Option<Readiness<'a>>,
) -> StatusMap {
    let (current, _) = crate::reconcile::by_replica(containers);
    let empty = BTreeMap::new();
    let assignments = node.assignments.unwrap_or(&empty);
    let mut names: BTreeSet<&str> = assignments.keys().map(String::as_str).collect();
    names.extend(current.keys().copied());
    names.extend(node.busy.keys().map(String::as_str));
    names.extend(node.invalid.keys().map(String::as_str));
    names.extend(node.terminating.iter().map(String::as_str));
    names
        .into_iter()
        .filter_map(|name| {
            let container = current.get(name).copied();
            Some((
                name.to_string(),
                Shared::new(status_of(name, node, container, &readiness)?),
            ))
        })
        .collect()
}

/// [`status_map`] brought up to date in place for the replicas in `names`
/// only: those whose inputs changed since `map` was made (the supervisor
/// marks them). The same map as a full [`status_map`], for a pass's cost in
/// the replicas that changed rather than in all of the node's: `current`
/// gives a replica's current container (as [`crate::reconcile::by_replica`]
/// ranks them) without walking the node's.
pub fn update<'a>(
    map: &mut StatusMap,
    names: impl IntoIterator<Item = &'a str>,
    node: &Node<'a>,
    current: impl Fn(&str) -> Option<&'a Observed>,
    readiness: impl Fn(&str) -> Option<Readiness<'a>>,
) {
    for name in names {
        match status_of(name, node, current(name), &readiness) {
            Some(s) if map.get(name).map(|old| &**old) != Some(&s) => {
                map.insert(name.to_string(), Shared::new(s));
            }
            Some(_) => {}
            None => {
                map.remove(name);
            }
        }
    }
}

/// One replica's entry in [`status_map`]: its [`replica_status`] when it is
/// assigned, present or busy, FAILED over that when its assignment did not
/// decode, GONE when only the controller's terminating list names it, and
/// none otherwise.
fn status_of<'a>(
    name: &str,
    node: &Node<'a>,
    container: Option<&'a Observed>,
    readiness: &impl Fn(&str) -> Option<Readiness<'a>>,
) -> Option<ReplicaStatus> {
    if let Some(f) = node.invalid.get(name) {
        let mut s = gone(name);
        s.state = ReplicaState::Failed as i32;
        s.reason = f.reason.clone();
        s.message = f.message.clone();
        return Some(s);
    }
    let assigned = node.assignments.and_then(|a| a.get(name));
    let busy = node.busy.get(name).copied();
    if assigned.is_some() || container.is_some() || busy.is_some() {
        return Some(replica_status(&Inputs {
            name,
            assigned,
            have_assignments: node.assignments.is_some(),
            container,
            record: node.records.get(name),
            busy,
            readiness: readiness(name),
        }));
    }
    node.terminating.contains(name).then(|| gone(name))
}

/// What to report after `prev`: every replica whose status differs, and a
/// GONE status for every replica that disappeared, in name order.
pub fn changed(prev: &StatusMap, next: &StatusMap) -> Vec<ReplicaStatus> {
    prev.diff(next)
        .map(|d| match d {
            DiffItem::Add(_, s) | DiffItem::Update { new: (_, s), .. } => ReplicaStatus::clone(s),
            DiffItem::Remove(name, _) => gone(name),
        })
        .collect()
}

/// The status of a replica that was stopped and removed.
pub fn gone(replica: &str) -> ReplicaStatus {
    ReplicaStatus {
        replica: replica.to_string(),
        state: ReplicaState::Gone as i32,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn observed(state: ContainerState) -> Observed {
        Observed {
            replica: "web-r-0".into(),
            namespace: "default".into(),
            deployment: "web".into(),
            revision: "rev1".into(),
            spec_hash: String::new(),
            container_id: "c1".into(),
            image: "drover/busybox:1".into(),
            restarts: 0,
            started_unix_ms: 1000,
            state,
            grace: None,
            published_ports: Vec::new(),
        }
    }

    fn status(
        a: Option<&Assignment>,
        c: Option<&Observed>,
        r: Option<&Record>,
        busy: Option<Busy>,
    ) -> ReplicaStatus {
        replica_status(&Inputs {
            name: "web-r-0",
            assigned: a,
            have_assignments: true,
            container: c,
            record: r,
            busy,
            readiness: None,
        })
    }

    #[test]
    fn a_running_container_is_running_and_ready() {
        let a = fixtures::assignment("web-r-0");
        let s = status(
            Some(&a),
            Some(&observed(ContainerState::Running)),
            None,
            None,
        );
        assert_eq!(s.state(), ReplicaState::Running);
        assert!(s.ready);
        assert_eq!(s.container_id, "c1");
        assert_eq!(s.revision, "rev1");
        assert_eq!(s.last_exit_code, None);
    }

    #[test]
    fn published_ports_are_reported_while_the_container_runs() {
        let a = fixtures::assignment("web-r-0");
        let mut c = observed(ContainerState::Running);
        c.published_ports = vec![PublishedPort {
            container_port: 8081,
            protocol: drover_manifest::Protocol::Udp,
            host_port: 49153,
        }];
        let s = status(Some(&a), Some(&c), None, None);
        assert_eq!(
            s.published_ports,
            vec![drover_proto::pb::PublishedPort {
                container_port: 8081,
                protocol: "UDP".into(),
                host_port: 49153,
            }]
        );
        c.state = ContainerState::Exited(Exit {
            code: 1,
            oom_killed: false,
            finished_unix_ms: 2000,
        });
        let s = status(Some(&a), Some(&c), None, None);
        assert!(
            s.published_ports.is_empty(),
            "an exited container publishes nothing"
        );
    }

    #[test]
    fn backing_off_shows_crash_loop_with_exit_code_reason_and_next_restart() {
        let a = fixtures::assignment("web-r-0");
        let exit = Exit {
            code: 137,
            oom_killed: true,
            finished_unix_ms: 5000,
        };
        let r = Record {
            restarts: 2,
            delay: Some(std::time::Duration::from_secs(4)),
            next_attempt_unix_ms: Some(9000),
            handled_exit: Some("c1".into()),
            ..Default::default()
        };
        let s = status(
            Some(&a),
            Some(&observed(ContainerState::Exited(exit))),
            Some(&r),
            None,
        );
        assert_eq!(s.state(), ReplicaState::CrashLoopBackOff);
        assert_eq!(s.reason, "OOMKilled");
        assert_eq!(s.last_exit_code, Some(137));
        assert_eq!(s.restarts, 2);
        assert_eq!(s.next_restart_unix_ms, 9000);
        assert_eq!(s.finished_unix_ms, 5000);
        assert!(s.message.contains("back-off 4s"), "{}", s.message);
    }

    #[test]
    fn after_a_restart_running_keeps_the_last_exit() {
        let a = fixtures::assignment("web-r-0");
        let r = Record {
            restarts: 1,
            last_exit: Some(Exit {
                code: 1,
                oom_killed: false,
                finished_unix_ms: 10,
            }),
            ..Default::default()
        };
        let s = status(
            Some(&a),
            Some(&observed(ContainerState::Running)),
            Some(&r),
            None,
        );
        assert_eq!(s.state(), ReplicaState::Running);
        assert_eq!(
            (s.restarts, s.last_exit_code, s.reason.as_str()),
            (1, Some(1), "Error")
        );
    }

    #[test]
    fn readiness_follows_the_probe_of_the_current_container_only() {
        let mut a = fixtures::assignment("web-r-0");
        a.template_mut().spec.containers[0].readiness_probe = Some(drover_manifest::Probe {
            handler: drover_manifest::ProbeHandler::Exec {
                command: vec!["true".into()],
            },
            initial_delay_seconds: 0,
            period_seconds: 10,
            timeout_seconds: 1,
            failure_threshold: 3,
            success_threshold: 1,
        });
        let c = observed(ContainerState::Running);
        let with = |readiness| {
            replica_status(&Inputs {
                name: "web-r-0",
                assigned: Some(&a),
                have_assignments: true,
                container: Some(&c),
                record: None,
                busy: None,
                readiness,
            })
        };
        assert!(!with(None).ready, "a probed container starts not ready");
        let adopted = replica_status(&Inputs {
            name: "web-r-0",
            assigned: None,
            have_assignments: false,
            container: Some(&c),
            record: None,
            busy: None,
            readiness: None,
        });
        assert_eq!(adopted.state(), ReplicaState::Running);
        assert!(
            !adopted.ready,
            "an adopted container is not ready before its spec and probes are known"
        );
        let passed = Readiness {
            container_id: "c1",
            ready: true,
            message: None,
        };
        assert!(with(Some(passed)).ready);
        let stale = Readiness {
            container_id: "old",
            ..passed
        };
        assert!(!with(Some(stale)).ready, "another container's verdict");
        let failed = with(Some(Readiness {
            container_id: "c1",
            ready: false,
            message: Some("HTTP probe failed with statuscode: 503"),
        }));
        assert!(!failed.ready);
        assert_eq!(failed.state(), ReplicaState::Running);
        assert_eq!(
            failed.message,
            "Readiness probe failed: HTTP probe failed with statuscode: 503"
        );
    }

    #[test]
    fn a_liveness_kill_shows_unhealthy_while_backing_off() {
        let a = fixtures::assignment("web-r-0");
        let r = Record {
            restarts: 0,
            delay: Some(std::time::Duration::from_secs(1)),
            next_attempt_unix_ms: Some(9000),
            handled_exit: Some("c1".into()),
            unhealthy: Some(Unhealthy {
                container_id: "c1".into(),
                message: "command exited with code 1".into(),
            }),
            ..Default::default()
        };
        let exit = Exit {
            code: 143,
            oom_killed: false,
            finished_unix_ms: 5000,
        };
        let s = status(
            Some(&a),
            Some(&observed(ContainerState::Exited(exit))),
            Some(&r),
            None,
        );
        assert_eq!(s.state(), ReplicaState::CrashLoopBackOff);
        assert_eq!(s.reason, "Unhealthy");
        assert!(
            s.message
                .starts_with("Liveness probe failed: command exited with code 1; back-off 1s"),
            "{}",
            s.message
        );
    }

    #[test]
    fn a_failed_start_is_failed_with_the_engine_message() {
        let a = fixtures::assignment("web-r-0");
        let r = Record {
            failure: Some(Failure {
                reason: "ErrImagePull".into(),
                message: "pull access denied for nope".into(),
                retryable: true,
                revision: "rev1".into(),
            }),
            next_attempt_unix_ms: Some(42),
            ..Default::default()
        };
        let s = status(Some(&a), None, Some(&r), None);
        assert_eq!(s.state(), ReplicaState::Failed);
        assert_eq!(s.reason, "ErrImagePull");
        assert_eq!(s.message, "pull access denied for nope");
        assert_eq!(s.next_restart_unix_ms, 42);
        assert_eq!(s.image, "drover/busybox:1");
    }

    #[test]
    fn starting_is_pending_and_unassigned_is_terminating() {
        let a = fixtures::assignment("web-r-0");
        assert_eq!(
            status(Some(&a), None, None, Some(Busy::Starting)).state(),
            ReplicaState::Pending
        );
        assert_eq!(
            status(None, Some(&observed(ContainerState::Running)), None, None).state(),
            ReplicaState::Terminating
        );
        // Before the first assignment set, what runs is just running.
        let s = replica_status(&Inputs {
            name: "web-r-0",
            assigned: None,
            have_assignments: false,
            container: Some(&observed(ContainerState::Running)),
            record: None,
            busy: None,
            readiness: None,
        });
        assert_eq!(s.state(), ReplicaState::Running);
    }

    #[test]
    fn changes_include_new_differing_and_gone_replicas() {
        let a = fixtures::assignment("web-r-0");
        let running = status(
            Some(&a),
            Some(&observed(ContainerState::Running)),
            None,
            None,
        );
        let pending = status(Some(&a), None, None, Some(Busy::Starting));
        let prev: StatusMap = [
            ("web-r-0".to_string(), pending),
            ("old-r-0".to_string(), gone("old-r-0")),
            ("same-r-0".to_string(), gone("same-r-0")),
        ]
        .into_iter()
        .map(|(k, v)| (k, Shared::new(v)))
        .collect();
        let next: StatusMap = [
            ("web-r-0".to_string(), running.clone()),
            ("same-r-0".to_string(), gone("same-r-0")),
        ]
        .into_iter()
        .map(|(k, v)| (k, Shared::new(v)))
        .collect();
        let out = changed(&prev, &next);
        // In name order.
        assert_eq!(out, vec![gone("old-r-0"), running]);
        assert!(changed(&next, &next).is_empty());
    }
}
