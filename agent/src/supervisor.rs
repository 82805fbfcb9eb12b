//! The supervisor: the one task that owns the node's replica state and
//! carries out what the reconcile decides.
//!
//! ```text
//!   SupervisorHandle::assign ──▶ ┌──────────── supervisor task ────────────┐
//!   runtime events ────────────▶ │ assignments · containers (cache)        │
//!   task outcomes ─────────────▶ │ records (backoff) · busy                │
//!   backoff timer / resync ────▶ │                                          │
//!   probe verdicts ────────────▶ │ probes: workers per running container ───┼──▶ Runtime
//!                                │ reconcile(..., now) → actions            │
//!                                │   bookkeeping: applied here              │
//!                                │   runtime work: one task per replica ────┼──▶ Runtime
//!                                │ statuses → watch channel ────────────────┼──▶ session
//!                                └──────────────────────────────────────────┘
//! ```
//!
//! The container cache starts from a full `list()` and then follows events
//! and task outcomes; a periodic (and on-demand) re-list corrects drift. A
//! re-list that raced with local changes keeps the cache for the replicas
//! touched meanwhile. Until the first assignment set arrives nothing is
//! reconciled: an agent that restarts while no controller answers keeps every
//! container running. On shutdown the supervisor stops deciding and leaves
//! containers as they are (the next agent adopts them).
//!
//! Probes: every running container of an assigned replica gets one worker per
//! probe in its spec ([`crate::probe::worker`]); a new container gets new
//! workers, so probing starts over. Readiness verdicts set the status's
//! `ready`; a liveness failure kills the container (Stop with the replica's
//! grace period), after which the normal exit path backs off and restarts it,
//! counting a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use drover_proto::pb;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, instrument, warn};

use std::path::PathBuf;

use crate::assignment::{Assignment, Prepared, Templates};
use crate::containers::Containers;
use crate::error::{AgentError, Result};
use crate::metrics::{self, StateCounts};
use crate::probe::worker::{self, ProbeReport, Target};
use crate::probe::{ProbeKind, Verdict};
use crate::reconcile::{self, Action, Busy, Failure, Record, Unhealthy};
use crate::resolve::{self, ConfigObjects, Fields, Resolved};
use crate::runtime::{now_unix_ms, ContainerState, Exit, Observed, Runtime, RuntimeEvent, UnixMs};
use crate::status::{self, Readiness, StatusMap};
use crate::volumes::{self, VolumeDirs};

/// Supervisor settings.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Full re-list interval.
    pub resync: Duration,
    /// On shutdown, how long in-flight starts and stops may finish.
    pub drain: Duration,
    /// The node name and the address replicas get for `fieldRef`
    /// (`spec.nodeName`, `status.podIP`).
    pub fields: Fields,
    /// The agent's data directory: replicas' volumes live in its
    /// `volumes/` (None: a replica with volumes cannot start).
    pub data_dir: Option<PathBuf>,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            resync: Duration::from_secs(30),
            drain: Duration::from_secs(10),
            fields: Fields::default(),
            data_dir: None,
        }
    }
}

/// The most inputs taken between two decision passes: a steady stream of
/// events still gets decisions this often.
const MAX_BATCH: usize = 256;

/// One thing that woke the supervisor.
enum Input {
    /// From the handle; None: every handle is gone.
    Msg(Option<Msg>),
    Event(std::result::Result<RuntimeEvent, broadcast::error::RecvError>),
    Joined(std::result::Result<Outcome, tokio::task::JoinError>),
    Probe(ProbeReport),
    /// A backoff or retry deadline.
    Wake,
    /// Time for the periodic re-list.
    Resync,
}

enum Msg {
    Assign {
        /// A whole set: `upserts` replace every assignment.
        whole: bool,
        upserts: Vec<pb::Assignment>,
        removed: Vec<String>,
        terminating: Vec<String>,
        grace: BTreeMap<String, Duration>,
        objects: Vec<pb::ConfigObject>,
    },
    /// Fencing: kill every replica now, without a grace period.
    Fence,
}

/// A change to the node's assignment set, as a session takes it from the
/// controller ([`crate::session::HeldSet::for_supervisor`]): the whole set,
/// or the assignments added or replaced and those removed. The other lists
/// come whole with every change.
#[derive(Debug, Clone, Default)]
pub struct SetChange {
    pub whole: bool,
    pub upserts: Vec<pb::Assignment>,
    pub removed: Vec<String>,
    /// Replicas the controller waits to hear are gone.
    pub terminating: Vec<String>,
    /// Grace periods that replace the containers' own for some of them
    /// (`delete --grace-period`).
    pub terminating_grace_seconds: std::collections::HashMap<String, u32>,
    pub config_objects: Vec<pb::ConfigObject>,
}

/// Cloneable access to the supervisor.
#[derive(Clone)]
pub struct SupervisorHandle {
    tx: mpsc::Sender<Msg>,
    statuses: watch::Receiver<Arc<StatusMap>>,
}

impl SupervisorHandle {
    /// Replace the node's assignments with this full set.
    pub async fn assign(&self, assignments: Vec<pb::Assignment>) -> Result<()> {
        self.assign_set(pb::AssignmentSet {
            assignments,
            ..Default::default()
        })
        .await
    }

    /// Fencing: the controllers are out of reach for longer than
    /// `--stop-after-disconnect` and are replacing this node's replicas
    /// elsewhere; kill them all now (SIGKILL, no grace period). The next
    /// assignment set ends it.
    pub async fn fence(&self) -> Result<()> {
        self.tx
            .send(Msg::Fence)
            .await
            .map_err(|_| AgentError::Config("the supervisor has stopped".into()))
    }

    /// Replace the node's assignments with this full set; `terminating` are
    /// replicas the controller waits to hear are gone (each is reported
    /// GONE once nothing of it is left here, or at once if nothing was).
    /// `terminating_grace_seconds` replace the containers' own grace periods
    /// for some of them (`delete --grace-period`).
    pub async fn assign_set(&self, set: pb::AssignmentSet) -> Result<()> {
        self.change_set(SetChange {
            whole: true,
            upserts: set.assignments,
            removed: Vec::new(),
            terminating: set.terminating,
            terminating_grace_seconds: set.terminating_grace_seconds,
            config_objects: set.config_objects,
        })
        .await
    }

    /// Change the node's assignments: a whole set replaces them (as
    /// [`Self::assign_set`]); a change touches only the replicas it names,
    /// at a cost in its size rather than the node's.
    pub async fn change_set(&self, change: SetChange) -> Result<()> {
        let grace = change
            .terminating_grace_seconds
            .into_iter()
            .map(|(replica, s)| (replica, Duration::from_secs(u64::from(s))))
            .collect();
        self.tx
            .send(Msg::Assign {
                whole: change.whole,
                upserts: change.upserts,
                removed: change.removed,
                terminating: change.terminating,
                grace,
                objects: change.config_objects,
            })
            .await
            .map_err(|_| AgentError::Config("the supervisor has stopped".into()))
    }

    /// Every replica's current status, updated on each change.
    pub fn statuses(&self) -> watch::Receiver<Arc<StatusMap>> {
        self.statuses.clone()
    }
}

/// One piece of runtime work for a replica.
enum Step {
    Stop {
        container_id: String,
        grace: Duration,
    },
    /// Stop a container whose liveness probe failed.
    Kill {
        container_id: String,
        grace: Duration,
    },
    Remove {
        container_id: String,
    },
    /// Keep an exited container's output as the replica's previous run
    /// (`logs --previous`) before it is removed for a restart.
    KeepPrevious {
        container_id: String,
    },
    /// Prepare the replica's volumes, then create and start its container;
    /// `config` is its resolved env and volumes, or why they cannot be.
    Start {
        assignment: Box<Assignment>,
        restarts: u32,
        config: std::result::Result<Resolved, String>,
        volumes: Option<Arc<VolumeDirs>>,
    },
}

enum Done {
    Stopped,
    Killed {
        container_id: String,
    },
    Removed {
        container_id: String,
    },
    Started(Observed),
    StartFailed {
        error: AgentError,
        assignment: Box<Assignment>,
    },
    Failed(AgentError),
}

enum Outcome {
    Steps {
        replica: String,
        done: Vec<Done>,
    },
    Listed {
        since_epoch: u64,
        result: Result<Vec<Observed>>,
    },
    /// A stop under way was given a shorter grace ([`Supervisor::hurry_stops`]);
    /// the first stop's own outcome says when the container is gone.
    Hurried,
}

/// The task owning the node's replica state.
pub struct Supervisor<R: Runtime> {
    runtime: Arc<R>,
    cfg: SupervisorConfig,
    inbox: mpsc::Receiver<Msg>,
    events: broadcast::Receiver<RuntimeEvent>,
    events_open: bool,
    /// None until the first assignment set.
    assignments: Option<BTreeMap<String, Assignment>>,
    /// Assignments that did not decode, with why.
    invalid: BTreeMap<String, Failure>,
    /// The templates of the assignments, each decoded once.
    templates: Templates,
    /// Replicas the controller waits to hear are gone (see `assign_set`).
    terminating: std::collections::BTreeSet<String>,
    /// Fenced: stops kill at once (see `SupervisorHandle::fence`).
    fencing: bool,
    /// Grace periods that replace a container's own when it is stopped
    /// (`delete --grace-period`), by replica.
    stop_grace: BTreeMap<String, Duration>,
    containers: Containers,
    records: BTreeMap<String, Record>,
    busy: BTreeMap<String, Busy>,
    /// The container and grace of each replica's stop under way.
    stopping: BTreeMap<String, (String, Duration)>,
    tasks: JoinSet<Outcome>,
    /// Local-change counter and, per replica, the epoch of its last change:
    /// lets a re-list that raced with local changes keep the newer cache.
    epoch: u64,
    touched: BTreeMap<String, u64>,
    listing: bool,
    /// Exits of containers not in the cache yet: a container that dies at
    /// once can be reported before its start task returns.
    early_exits: BTreeMap<String, Exit>,
    statuses: watch::Sender<Arc<StatusMap>>,
    /// The replicas whose inputs changed since the last pass: each pass
    /// decides, probes and reports for these only (see [`Stale`]).
    stale: Stale,
    /// Deadlines of the records (backoff, retry), with their replica: a
    /// pass decides again for a replica whose deadline came. Entries a later
    /// change made moot only cost that replica one more decision.
    due: BTreeSet<(UnixMs, String)>,
    /// The published map's replicas per state (the metric).
    counts: StateCounts,
    /// Probe workers by replica, for its current running container.
    probes: BTreeMap<String, Probing>,
    probe_tx: mpsc::Sender<ProbeReport>,
    probe_rx: mpsc::Receiver<ProbeReport>,
    /// The ConfigMaps and Secrets of the last assignment set.
    objects: ConfigObjects,
    volumes: Option<Arc<VolumeDirs>>,
}

/// Replicas whose decision, probes or status may have changed: every change
/// to what they derive from (assignment, container, record, busy,
/// readiness, the invalid and terminating lists) marks its replica, and a
/// pass decides, syncs probes and recomputes the status of only those (and
/// of the replicas whose deadline came), for a cost in the replicas that
/// changed rather than in all of the node's. Debug builds check each result
/// against the one computed for every replica.
enum Stale {
    /// Any replica (the first set, a re-list, changed configuration).
    All,
    Some(BTreeSet<String>),
}

impl Stale {
    /// Mark `replica`'s status for the next publish.
    fn mark(&mut self, replica: &str) {
        if let Stale::Some(names) = self {
            if !names.contains(replica) {
                names.insert(replica.to_string());
            }
        }
    }
}

/// The probes of one running container.
struct Probing {
    container_id: String,
    ready: bool,
    readiness_failure: Option<String>,
    /// Cancels the workers when this entry is dropped.
    _workers: DropGuard,
}

/// Early exits kept at most (they are matched within milliseconds).
const EARLY_EXITS: usize = 256;

impl<R: Runtime> Supervisor<R> {
    /// List what already runs, publish its status, and start the task.
    pub async fn start(
        runtime: Arc<R>,
        cfg: SupervisorConfig,
        shutdown: CancellationToken,
    ) -> Result<(SupervisorHandle, tokio::task::JoinHandle<()>)> {
        // Subscribe before listing: an exit between the two is not lost.
        let events = runtime.events();
        let listed = runtime.list().await?;
        info!(
            containers = listed.len(),
            runtime = runtime.kind(),
            "found existing containers"
        );
        let containers = Containers::new(listed);
        let (tx, inbox) = mpsc::channel(16);
        let (statuses, rx) = watch::channel(Arc::new(StatusMap::new()));
        let (probe_tx, probe_rx) = mpsc::channel(64);
        let mut sup = Supervisor {
            runtime,
            cfg,
            inbox,
            events,
            events_open: true,
            assignments: None,
            invalid: BTreeMap::new(),
            templates: Templates::default(),
            terminating: Default::default(),
            fencing: false,
            stop_grace: BTreeMap::new(),
            containers,
            records: BTreeMap::new(),
            busy: BTreeMap::new(),
            stopping: BTreeMap::new(),
            tasks: JoinSet::new(),
            epoch: 0,
            touched: BTreeMap::new(),
            listing: false,
            early_exits: BTreeMap::new(),
            statuses,
            stale: Stale::All,
            due: BTreeSet::new(),
            counts: StateCounts::default(),
            probes: BTreeMap::new(),
            probe_tx,
            probe_rx,
            objects: ConfigObjects::default(),
            volumes: None,
        };
        sup.volumes = sup
            .cfg
            .data_dir
            .as_deref()
            .map(|dir| Arc::new(VolumeDirs::new(dir)));
        sup.publish();
        let handle = SupervisorHandle { tx, statuses: rx };
        let task = tokio::spawn(sup.run(shutdown));
        Ok((handle, task))
    }

    async fn run(mut self, shutdown: CancellationToken) {
        let mut resync = tokio::time::interval(self.cfg.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        loop {
            // The next deadline; one that passed since the last pass is due
            // at once.
            let wake = self.due.first().map(|(at, _)| {
                let wait = (at - now_unix_ms()).clamp(0, 24 * 3600 * 1000);
                tokio::time::Instant::now() + Duration::from_millis(wait as u64)
            });
            let input = tokio::select! {
                _ = shutdown.cancelled() => break,
                msg = self.inbox.recv() => Input::Msg(msg),
                ev = self.events.recv(), if self.events_open => Input::Event(ev),
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => Input::Joined(joined),
                Some(report) = self.probe_rx.recv() => Input::Probe(report),
                _ = sleep_until(wake) => Input::Wake,
                _ = resync.tick() => Input::Resync,
            };
            if self.take(input).is_break() {
                break;
            }
            // Whatever else is already waiting is taken before deciding: one
            // pass (reconcile, probes, statuses) for a burst of events, not
            // one per event.
            for _ in 0..MAX_BATCH {
                let Some(input) = self.ready() else { break };
                if self.take(input).is_break() {
                    return self.stop().await;
                }
            }
            self.pass();
            self.publish();
        }
        self.stop().await;
    }

    /// An input that is already waiting, without waiting for one.
    fn ready(&mut self) -> Option<Input> {
        match self.inbox.try_recv() {
            Ok(msg) => return Some(Input::Msg(Some(msg))),
            Err(mpsc::error::TryRecvError::Disconnected) => return Some(Input::Msg(None)),
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        if self.events_open {
            match self.events.try_recv() {
                Ok(ev) => return Some(Input::Event(Ok(ev))),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    return Some(Input::Event(Err(broadcast::error::RecvError::Lagged(n))))
                }
                Err(broadcast::error::TryRecvError::Closed) => {
                    return Some(Input::Event(Err(broadcast::error::RecvError::Closed)))
                }
                Err(broadcast::error::TryRecvError::Empty) => {}
            }
        }
        if let Some(joined) = self.tasks.try_join_next() {
            return Some(Input::Joined(joined));
        }
        self.probe_rx.try_recv().ok().map(Input::Probe)
    }

    /// Take one input into the supervisor's state; `Break` when the
    /// handle is gone and the supervisor should stop.
    fn take(&mut self, input: Input) -> std::ops::ControlFlow<()> {
        match input {
            Input::Msg(Some(Msg::Assign {
                whole,
                upserts,
                removed,
                terminating,
                grace,
                objects,
            })) => {
                self.fencing = false;
                self.terminate(terminating.into_iter().collect());
                self.stop_grace = grace;
                self.hurry_stops();
                if whole || self.assignments.is_none() {
                    self.assign(upserts);
                } else {
                    self.change(upserts, removed);
                }
                self.config_objects(ConfigObjects::from_pb(objects));
            }
            Input::Msg(Some(Msg::Fence)) => {
                self.fencing = true;
                self.hurry_stops();
                self.terminate(BTreeSet::new());
                self.assign(Vec::new());
            }
            Input::Msg(None) => return std::ops::ControlFlow::Break(()),
            Input::Event(Ok(ev)) => self.on_event(ev),
            Input::Event(Err(broadcast::error::RecvError::Lagged(n))) => {
                warn!(missed = n, "runtime events were dropped; re-listing");
                self.relist();
            }
            Input::Event(Err(broadcast::error::RecvError::Closed)) => {
                warn!("the runtime's event stream closed; relying on periodic re-lists");
                self.events_open = false;
            }
            Input::Joined(Ok(outcome)) => self.on_outcome(outcome),
            Input::Joined(Err(e)) => warn!(error = %e, "a runtime task failed"),
            Input::Probe(report) => self.on_probe(report),
            Input::Wake => {}
            Input::Resync => self.relist(),
        }
        std::ops::ControlFlow::Continue(())
    }

    /// Stop deciding: probes end, in-flight work finishes briefly.
    async fn stop(&mut self) {
        self.probes.clear();
        self.drain().await;
    }

    /// Let in-flight work finish (briefly) so no half-made container is
    /// left; containers themselves keep running.
    async fn drain(&mut self) {
        if self.tasks.is_empty() {
            return;
        }
        info!(
            tasks = self.tasks.len(),
            "waiting for in-flight container operations"
        );
        let deadline = tokio::time::Instant::now() + self.cfg.drain;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(Ok(outcome))) => self.on_outcome(outcome),
                Ok(Some(Err(_))) => {}
                Ok(None) => break,
                Err(_) => {
                    warn!("in-flight container operations did not finish; abandoning them");
                    self.tasks.abort_all();
                    break;
                }
            }
        }
        self.publish();
    }

    /// A stop under way whose replica now has a shorter grace (a delete's
    /// `--grace-period` reaching a replica a rollout was already stopping
    /// with its template's 60 s; or fencing, none at all) is stopped again
    /// with it, as kubelet shortens a terminating pod's grace: the runtime
    /// kills the container then, and the first stop returns with it.
    fn hurry_stops(&mut self) {
        for (replica, (container_id, grace)) in &mut self.stopping {
            let shorter = if self.fencing {
                Duration::ZERO
            } else {
                match self.stop_grace.get(replica) {
                    Some(g) => *g,
                    None => continue,
                }
            };
            if shorter >= *grace {
                continue;
            }
            info!(replica = %replica, container = %container_id, from = ?*grace, to = ?shorter,
                "a stop under way was given a shorter grace period");
            *grace = shorter;
            let runtime = self.runtime.clone();
            let container_id = container_id.clone();
            let replica = replica.clone();
            self.tasks.spawn(async move {
                if let Err(e) = runtime.stop(&container_id, shorter).await {
                    warn!(replica = %replica, container = %container_id, error = %e,
                        "stopping again with a shorter grace period failed");
                }
                Outcome::Hurried
            });
        }
    }

    /// The controller's list of replicas it waits to hear are gone.
    fn terminate(&mut self, terminating: BTreeSet<String>) {
        let old = std::mem::replace(&mut self.terminating, terminating);
        for name in old.symmetric_difference(&self.terminating) {
            self.stale.mark(name);
        }
    }

    fn touch(&mut self, replica: &str) {
        self.stale.mark(replica);
        self.epoch += 1;
        self.touched.insert(replica.to_string(), self.epoch);
    }

    /// Replace the node's assignments with the whole `set`.
    fn assign(&mut self, set: Vec<pb::Assignment>) {
        let first = self.assignments.is_none();
        let mut previous = self.assignments.take().unwrap_or_default();
        let mut next = BTreeMap::new();
        let invalid = std::mem::take(&mut self.invalid);
        for name in invalid.keys() {
            self.stale.mark(name);
        }
        for a in set {
            let before = previous.remove(&a.replica);
            self.put_assignment(&mut next, before, a);
        }
        for name in previous.keys() {
            self.stale.mark(name);
        }
        drop(previous);
        self.templates.prune();
        if first {
            self.stale = Stale::All;
        }
        debug!(replicas = next.len(), "assignment set received");
        self.assignments = Some(next);
    }

    /// Apply a change to the node's assignments: `upserts` added or
    /// replaced, `removed` gone; the others stay as they are (the same
    /// result as the whole set, at the change's cost).
    fn change(&mut self, upserts: Vec<pb::Assignment>, removed: Vec<String>) {
        let mut current = self.assignments.take().unwrap_or_default();
        for name in &removed {
            let assigned = current.remove(name).is_some();
            if self.invalid.remove(name).is_some() || assigned {
                self.stale.mark(name);
            }
        }
        for a in upserts {
            if self.invalid.remove(&a.replica).is_some() {
                self.stale.mark(&a.replica);
            }
            let before = current.remove(&a.replica);
            self.put_assignment(&mut current, before, a);
        }
        self.templates.prune();
        debug!(replicas = current.len(), "assignment change received");
        self.assignments = Some(current);
    }

    /// Decode `a` into `next` (or the invalid list), keeping the decoded
    /// `before` when `a` repeats it, and mark its replica when it changed.
    fn put_assignment(
        &mut self,
        next: &mut BTreeMap<String, Assignment>,
        before: Option<Assignment>,
        a: pb::Assignment,
    ) {
        let changed = before.as_ref().is_none_or(|p| p.revision != a.revision);
        let kept = before.filter(|b| b.repeated_by(&a));
        if kept.is_none() {
            self.stale.mark(&a.replica);
        }
        let decoded = match kept {
            Some(kept) => Ok(kept),
            None => Assignment::from_pb_after(a, None, &mut self.templates),
        };
        match decoded {
            Ok(a) => {
                if changed {
                    for w in a.backoff_policy().1 {
                        warn!(replica = %a.replica, deployment = %a.deployment, warning = %w, "restart backoff");
                    }
                }
                next.insert(a.replica.clone(), a);
            }
            Err((replica, e)) => {
                warn!(replica = %replica, error = %e, "assignment cannot be run");
                self.invalid.insert(replica, Failure::from_error(&e, ""));
            }
        }
    }

    /// Take the set's ConfigMaps and Secrets. When any changed: replicas
    /// waiting on a missing one try again now (not after their backoff),
    /// and the files of running replicas' configMap and secret volumes are
    /// rewritten in place (see [`crate::volumes`]).
    fn config_objects(&mut self, objects: ConfigObjects) {
        let changed = self.objects.changed(&objects);
        self.objects = objects;
        if changed.is_empty() {
            return;
        }
        debug!(objects = changed.len(), "configuration objects changed");
        let mut retried = Vec::new();
        for (name, r) in self.records.iter_mut() {
            if r.failure.as_ref().is_some_and(|f| f.reason == CONFIG_ERROR) {
                r.next_attempt_unix_ms = None;
                retried.push(name.clone());
            }
        }
        for name in retried {
            self.stale.mark(&name);
        }
        let (Some(volumes), Some(assignments)) = (&self.volumes, &self.assignments) else {
            return;
        };
        for (name, a) in assignments {
            if self.busy.contains_key(name) {
                // A start in flight prepares from what it resolved; the next
                // set or restart brings it up to date.
                continue;
            }
            // A missing object keeps the files a running replica has, as
            // kubelet does; a start reports it.
            let Ok(plans) = resolve::volumes(a, &self.objects) else {
                continue;
            };
            match volumes.refresh(name, &plans) {
                Ok(updated) => {
                    for volume in updated {
                        info!(replica = %name, volume = %volume, "volume files updated");
                    }
                }
                Err(e) => warn!(replica = %name, error = %e, "could not update volume files"),
            }
        }
    }

    fn on_event(&mut self, ev: RuntimeEvent) {
        match ev {
            RuntimeEvent::Exited {
                replica,
                container_id,
                exit,
            } => {
                let exited = self.containers.update(&container_id, |c| {
                    let first = !matches!(c.state, ContainerState::Exited(_));
                    if first {
                        c.state = ContainerState::Exited(exit);
                    }
                    first
                });
                match exited {
                    None => {
                        if self.early_exits.len() >= EARLY_EXITS {
                            self.early_exits.pop_first();
                        }
                        self.early_exits.insert(container_id, exit);
                    }
                    Some(true) => {
                        info!(replica = %replica, container = %container_id, code = exit.code,
                            oom_killed = exit.oom_killed, "container exited");
                        self.touch(&replica);
                    }
                    Some(false) => {}
                }
            }
            RuntimeEvent::Removed {
                replica,
                container_id,
            } => {
                if self.containers.remove(&container_id).is_some() {
                    info!(replica = %replica, container = %container_id, "container removed outside the agent");
                    self.touch(&replica);
                }
            }
            RuntimeEvent::Resync => self.relist(),
        }
    }

    /// Start a background re-list unless one is running.
    fn relist(&mut self) {
        if self.listing {
            return;
        }
        self.listing = true;
        let runtime = self.runtime.clone();
        let since_epoch = self.epoch;
        self.tasks.spawn(async move {
            Outcome::Listed {
                since_epoch,
                result: runtime.list().await,
            }
        });
    }

    fn on_outcome(&mut self, outcome: Outcome) {
        let now = now_unix_ms();
        match outcome {
            Outcome::Listed {
                since_epoch,
                result,
            } => {
                self.listing = false;
                match result {
                    Ok(list) => {
                        self.apply_list(list, since_epoch);
                        self.collect_volumes();
                    }
                    Err(e) => warn!(error = %e, "re-listing containers failed"),
                }
            }
            Outcome::Hurried => {}
            Outcome::Steps { replica, done } => {
                self.busy.remove(&replica);
                self.stopping.remove(&replica);
                self.touch(&replica);
                for d in done {
                    self.apply_done(&replica, d, now);
                }
            }
        }
    }

    fn apply_done(&mut self, replica: &str, done: Done, now: UnixMs) {
        match done {
            Done::Stopped => {}
            Done::Killed { container_id } => {
                // The runtime usually reports the exit first; when it has
                // not, the container is known to be stopped all the same.
                self.containers.update(&container_id, |c| c.killed(now));
            }
            Done::Removed { container_id } => {
                self.containers.remove(&container_id);
                if let Some(r) = self.records.get_mut(replica) {
                    r.removed(&container_id);
                }
            }
            Done::Started(mut o) => {
                info!(replica, container = %o.container_id, restarts = o.restarts, "replica started");
                if let Some(exit) = self.early_exits.remove(&o.container_id) {
                    o.state = ContainerState::Exited(exit);
                }
                self.records
                    .entry(replica.to_string())
                    .or_default()
                    .started(&o.container_id, o.restarts);
                self.containers.insert(o);
            }
            Done::StartFailed { error, assignment } => {
                warn!(replica, reason = error.reason(), error = %error, "replica failed to start");
                let (policy, _) = assignment.backoff_policy();
                let failure = Failure::from_error(&error, &assignment.revision);
                self.records
                    .entry(replica.to_string())
                    .or_default()
                    .start_failed(failure, &policy, now);
            }
            Done::Failed(error) => {
                warn!(replica, error = %error, "container operation failed; retrying in 1s");
                self.records
                    .entry(replica.to_string())
                    .or_default()
                    .retry_io_at = Some(now + 1000);
            }
        }
    }

    /// Remove the volumes of replicas this node no longer has (assigned,
    /// present or being worked on): those an agent restart forgot.
    fn collect_volumes(&mut self) {
        let (Some(volumes), Some(assignments)) = (&self.volumes, &self.assignments) else {
            return;
        };
        let keep: std::collections::BTreeSet<&str> = assignments
            .keys()
            .map(String::as_str)
            .chain(self.containers.values().map(|c| c.replica.as_str()))
            .chain(self.busy.keys().map(String::as_str))
            .collect();
        for replica in volumes.collect_garbage(&keep) {
            info!(replica = %replica, "removed the volumes of a replica that left this node");
        }
    }

    fn apply_list(&mut self, list: Vec<Observed>, since_epoch: u64) {
        let keep: std::collections::BTreeSet<String> = self
            .touched
            .iter()
            .filter(|(_, e)| **e > since_epoch)
            .map(|(r, _)| r.clone())
            .chain(self.busy.keys().cloned())
            .collect();
        self.containers.retain(|c| keep.contains(&c.replica));
        for o in list {
            if !keep.contains(&o.replica) {
                self.containers.insert(o);
            }
        }
        self.stale = Stale::All;
        // Old touch marks only matter for lists started before them.
        let epoch = self.epoch;
        self.touched.retain(|_, e| *e > since_epoch || *e == epoch);
    }

    /// One pass over the replicas marked stale and those whose deadline
    /// came: decide and start their actions, then sync their probes. The
    /// marks stay for [`Self::publish`].
    fn pass(&mut self) {
        let now = now_unix_ms();
        while let Some((at, _)) = self.due.first() {
            if *at > now {
                break;
            }
            if let Some((_, name)) = self.due.pop_first() {
                self.stale.mark(&name);
            }
        }
        let names: Vec<String> = match &self.stale {
            Stale::All => self.every_replica().into_iter().collect(),
            Stale::Some(names) => names.iter().cloned().collect(),
        };
        self.reconcile(&names, now);
        self.sync_probes(&names);
    }

    /// Every replica the node knows of in any way.
    fn every_replica(&self) -> BTreeSet<String> {
        let empty = BTreeMap::new();
        let assignments = self.assignments.as_ref().unwrap_or(&empty);
        assignments
            .keys()
            .map(String::as_str)
            .chain(self.containers.replicas())
            .chain(self.records.keys().map(String::as_str))
            .chain(self.busy.keys().map(String::as_str))
            .chain(self.probes.keys().map(String::as_str))
            .map(str::to_string)
            .collect()
    }

    /// Decide for `names` (sorted) at `now`, start the actions, and keep
    /// the deadlines the decisions leave.
    fn reconcile(&mut self, names: &[String], now: UnixMs) {
        let Some(assignments) = &self.assignments else {
            return;
        };
        let mut actions = Vec::new();
        for name in names {
            reconcile::decide(
                name,
                assignments.get(name),
                self.containers.of(name),
                self.records.get(name),
                self.busy.contains_key(name),
                now,
                &mut actions,
            );
        }
        debug_assert_eq!(
            actions,
            reconcile::reconcile(
                assignments,
                self.containers.values(),
                &self.records,
                &self.busy,
                now
            ),
            "deciding for the replicas marked differs from deciding for all: a change left its replica unmarked, or a deadline was lost"
        );
        for (replica, actions) in reconcile::per_replica(actions, self.fencing, &self.stop_grace) {
            let mut steps = Vec::new();
            let mut busy = Busy::Stopping;
            for action in actions {
                reconcile::keep_books(&mut self.records, &action);
                match action {
                    Action::Adopt {
                        container_id,
                        restarts,
                        ..
                    } => {
                        info!(replica = %replica, container = %container_id, restarts, "adopted a running container");
                    }
                    Action::BackOff {
                        container_id,
                        exit,
                        delay,
                        ..
                    } => {
                        info!(replica = %replica, container = %container_id, code = exit.code,
                            reason = exit.reason(), ?delay, "container exited; restarting after backoff");
                        crate::metrics::get().restart();
                    }
                    Action::Forget { .. } => {
                        self.touched.remove(&replica);
                        self.runtime.forget_previous(&replica);
                        if let Some(volumes) = &self.volumes {
                            if let Err(e) = volumes.remove(&replica) {
                                warn!(replica = %replica, error = %e, "could not remove the replica's volumes");
                            }
                        }
                    }
                    Action::Stop {
                        container_id,
                        grace,
                        ..
                    } => steps.push(Step::Stop {
                        container_id,
                        grace,
                    }),
                    Action::Remove { container_id, .. } => {
                        steps.push(Step::Remove { container_id })
                    }
                    Action::Start { restarts, .. } => {
                        if let Some(a) = assignments.get(&replica) {
                            busy = Busy::Starting;
                            steps.push(Step::Start {
                                assignment: Box::new(a.clone()),
                                restarts,
                                config: resolve::resolve(a, &self.objects, &self.cfg.fields),
                                volumes: self.volumes.clone(),
                            });
                        }
                    }
                    Action::Restart {
                        container_id,
                        restarts,
                        ..
                    } => {
                        if let Some(a) = assignments.get(&replica) {
                            busy = Busy::Starting;
                            steps.push(Step::KeepPrevious {
                                container_id: container_id.clone(),
                            });
                            steps.push(Step::Remove { container_id });
                            steps.push(Step::Start {
                                assignment: Box::new(a.clone()),
                                restarts,
                                config: resolve::resolve(a, &self.objects, &self.cfg.fields),
                                volumes: self.volumes.clone(),
                            });
                        }
                    }
                }
            }
            self.stale.mark(&replica);
            if steps.is_empty() {
                continue;
            }
            self.busy.insert(replica.clone(), busy);
            if let Some(Step::Stop {
                container_id,
                grace,
            }) = steps.iter().find(|s| matches!(s, Step::Stop { .. }))
            {
                self.stopping
                    .insert(replica.clone(), (container_id.clone(), *grace));
            }
            let runtime = self.runtime.clone();
            self.tasks.spawn(run_steps(runtime, replica, steps));
        }
        for name in names {
            if self.busy.contains_key(name) {
                continue; // decided again when its work is done
            }
            if let Some(r) = self.records.get(name) {
                for at in r.deadlines().filter(|at| *at > now) {
                    self.due.insert((at, name.clone()));
                }
            }
        }
    }

    /// Give the running container of each of `names` that is assigned its
    /// probe workers, and stop the workers of containers that no longer run.
    fn sync_probes(&mut self, names: &[String]) {
        let empty = BTreeMap::new();
        let assignments = self.assignments.as_ref().unwrap_or(&empty);
        for name in names {
            let c = probed(name, assignments, &self.containers, &self.busy);
            let kept = self
                .probes
                .get(name)
                .map(|p| c.is_some_and(|c| c.container_id == p.container_id));
            if kept == Some(false) {
                self.probes.remove(name);
                self.stale.mark(name);
            }
            let (None | Some(false), Some(c), Some(a)) = (kept, c, assignments.get(name)) else {
                continue;
            };
            let spec = a.container();
            let cancel = CancellationToken::new();
            let target = Target {
                replica: name.to_string(),
                container_id: c.container_id.clone(),
                started_unix_ms: c.started_unix_ms,
                container: spec.clone(),
            };
            for (kind, probe) in [
                (ProbeKind::Liveness, &spec.liveness_probe),
                (ProbeKind::Readiness, &spec.readiness_probe),
            ] {
                if let Some(probe) = probe {
                    worker::spawn(
                        self.runtime.clone(),
                        target.clone(),
                        kind,
                        probe.clone(),
                        self.probe_tx.clone(),
                        cancel.child_token(),
                    );
                }
            }
            self.stale.mark(name);
            self.probes.insert(
                name.to_string(),
                Probing {
                    container_id: c.container_id.clone(),
                    ready: spec.readiness_probe.is_none(),
                    readiness_failure: None,
                    _workers: cancel.drop_guard(),
                },
            );
        }
        debug_assert_eq!(
            self.probes
                .iter()
                .map(|(name, p)| (name.as_str(), p.container_id.as_str()))
                .collect::<BTreeMap<_, _>>(),
            self.every_replica()
                .iter()
                .filter_map(|name| {
                    let c = probed(name, assignments, &self.containers, &self.busy)?;
                    Some((
                        assignments.get_key_value(name)?.0.as_str(),
                        c.container_id.as_str(),
                    ))
                })
                .collect::<BTreeMap<_, _>>(),
            "the probes synced for the replicas marked differ from those of all: a change left its replica unmarked"
        );
    }

    /// A probe's verdict flipped for a container.
    fn on_probe(&mut self, report: ProbeReport) {
        let Some(p) = self
            .probes
            .get_mut(&report.replica)
            .filter(|p| p.container_id == report.container_id)
        else {
            return; // from a container already replaced
        };
        match (report.kind, report.verdict) {
            (ProbeKind::Readiness, verdict) => {
                p.ready = verdict == Verdict::Success;
                p.readiness_failure = (!p.ready).then_some(report.message);
                self.stale.mark(&report.replica);
            }
            (ProbeKind::Liveness, Verdict::Success) => {}
            (ProbeKind::Liveness, Verdict::Failure) => {
                p.ready = false;
                self.stale.mark(&report.replica);
                if self.busy.contains_key(&report.replica) {
                    return;
                }
                let Some(grace) = self
                    .assignments
                    .as_ref()
                    .and_then(|a| a.get(&report.replica))
                    .map(|a| a.grace())
                else {
                    return;
                };
                warn!(replica = %report.replica, container = %report.container_id,
                    reason = "Unhealthy", message = %report.message,
                    "liveness probe failed; killing the container to restart it");
                self.records
                    .entry(report.replica.clone())
                    .or_default()
                    .unhealthy = Some(Unhealthy {
                    container_id: report.container_id.clone(),
                    message: report.message,
                });
                self.touch(&report.replica);
                self.busy.insert(report.replica.clone(), Busy::Starting);
                let steps = vec![Step::Kill {
                    container_id: report.container_id,
                    grace,
                }];
                let runtime = self.runtime.clone();
                self.tasks.spawn(run_steps(runtime, report.replica, steps));
            }
        }
    }

    /// Bring the statuses of the replicas marked stale up to date and
    /// publish the map if it changed.
    fn publish(&mut self) {
        let stale = std::mem::replace(&mut self.stale, Stale::Some(BTreeSet::new()));
        if matches!(&stale, Stale::Some(names) if names.is_empty()) {
            return;
        }
        let node = status::Node {
            assignments: self.assignments.as_ref(),
            invalid: &self.invalid,
            terminating: &self.terminating,
            records: &self.records,
            busy: &self.busy,
        };
        let probes = &self.probes;
        let readiness = |name: &str| {
            probes.get(name).map(|p| Readiness {
                container_id: &p.container_id,
                ready: p.ready,
                message: p.readiness_failure.as_deref(),
            })
        };
        let containers = &self.containers;
        let mut counts = self.counts;
        let map = match &stale {
            Stale::All => {
                let map = status::status_map(&node, containers.values(), readiness);
                counts = metrics::state_counts(&map);
                map
            }
            Stale::Some(names) => {
                let mut map = (**self.statuses.borrow()).clone();
                for s in names.iter().filter_map(|name| map.get(name)) {
                    counts[metrics::state_slot(s)] -= 1;
                }
                let current = |name: &str| containers.current(name);
                let names = names.iter().map(String::as_str);
                status::update(&mut map, names.clone(), &node, current, readiness);
                for s in names.filter_map(|name| map.get(name)) {
                    counts[metrics::state_slot(s)] += 1;
                }
                map
            }
        };
        debug_assert_eq!(
            map,
            status::status_map(&node, self.containers.values(), readiness),
            "the statuses brought up to date differ from all of them recomputed: a change left its replica unmarked"
        );
        debug_assert_eq!(counts, metrics::state_counts(&map));
        if counts != self.counts {
            self.counts = counts;
            metrics::get().replicas(&counts);
        }
        self.statuses.send_if_modified(|old| {
            if **old == map {
                false
            } else {
                *old = Arc::new(map);
                true
            }
        });
    }
}

/// `name`'s container that should have probes: its current one, when it
/// runs what the replica is assigned and is not being stopped.
fn probed<'a>(
    name: &str,
    assignments: &BTreeMap<String, Assignment>,
    containers: &'a Containers,
    busy: &BTreeMap<String, Busy>,
) -> Option<&'a Observed> {
    let c = containers.current(name)?;
    let assigned = assignments.get(name)?;
    (c.is_running() && busy.get(name) != Some(&Busy::Stopping) && assigned.revision == c.revision)
        .then_some(c)
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The reason a replica that cannot get its configuration shows.
const CONFIG_ERROR: &str = "CreateContainerConfigError";

/// Make the replica's volumes ready and put its env and mounts together.
fn prepare(a: &Assignment, resolved: Resolved, volumes: Option<&VolumeDirs>) -> Result<Prepared> {
    let mounts = if resolved.volumes.is_empty() {
        Vec::new()
    } else {
        let Some(volumes) = volumes else {
            return Err(AgentError::CreateContainerConfig(
                "this agent runs without a data directory, so it has nowhere to keep volumes"
                    .into(),
            ));
        };
        let paths = volumes
            .prepare(&a.replica, &resolved.volumes)
            .map_err(AgentError::CreateContainerConfig)?;
        volumes::mounts(a.container(), &paths, &resolved.volumes)
            .map_err(AgentError::CreateContainerConfig)?
    };
    Ok(Prepared {
        env: resolved.env,
        mounts,
    })
}

/// Carry out one replica's steps in order, stopping at the first failure.
#[instrument(skip_all, fields(replica = %replica))]
async fn run_steps<R: Runtime>(runtime: Arc<R>, replica: String, steps: Vec<Step>) -> Outcome {
    let mut done = Vec::with_capacity(steps.len());
    for step in steps {
        match step {
            Step::Stop {
                container_id,
                grace,
            } => match crate::metrics::get()
                .time("stop", runtime.stop(&container_id, grace))
                .await
            {
                Ok(()) => done.push(Done::Stopped),
                Err(AgentError::NoSuchContainer { .. }) => {
                    done.push(Done::Removed { container_id });
                }
                Err(e) => {
                    done.push(Done::Failed(e));
                    break;
                }
            },
            Step::Kill {
                container_id,
                grace,
            } => match crate::metrics::get()
                .time("stop", runtime.stop(&container_id, grace))
                .await
            {
                Ok(()) => done.push(Done::Killed { container_id }),
                Err(AgentError::NoSuchContainer { .. }) => {
                    done.push(Done::Removed { container_id });
                }
                Err(e) => {
                    done.push(Done::Failed(e));
                    break;
                }
            },
            Step::KeepPrevious { container_id } => {
                // Losing the previous run's output must not hold up the restart.
                if let Err(e) = runtime.keep_previous(&replica, &container_id).await {
                    warn!(replica = %replica, container = %container_id, error = %e,
                        "could not keep the previous run's output");
                }
            }
            Step::Remove { container_id } => match crate::metrics::get()
                .time("remove", runtime.remove(&container_id))
                .await
            {
                Ok(()) | Err(AgentError::NoSuchContainer { .. }) => {
                    debug!(replica = %replica, container = %container_id, "container removed");
                    done.push(Done::Removed { container_id });
                }
                Err(e) => {
                    done.push(Done::Failed(e));
                    break;
                }
            },
            Step::Start {
                mut assignment,
                restarts,
                config,
                volumes,
            } => {
                let prepared = match config {
                    Ok(resolved) => prepare(&assignment, resolved, volumes.as_deref()),
                    Err(message) => Err(AgentError::CreateContainerConfig(message)),
                };
                let started = match prepared {
                    Ok(prepared) => {
                        assignment.prepared = Some(prepared);
                        crate::metrics::get()
                            .time("start", runtime.start(&assignment, restarts))
                            .await
                    }
                    Err(e) => Err(e),
                };
                match started {
                    Ok(o) => done.push(Done::Started(o)),
                    Err(error) => {
                        done.push(Done::StartFailed { error, assignment });
                        break;
                    }
                }
            }
        }
    }
    Outcome::Steps { replica, done }
}
