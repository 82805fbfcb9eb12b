//! The control loops only the leader runs: orchestrator, scheduler and node
//! monitor.
//!
//! ```text
//!  leadership ──is_leader──▶ start loops ──(ReadIndex: state is current)──▶
//!      loop { wait for an applied change ─▶ rollout::progress        ─▶ RolloutProgress (+ Undo)
//!             (or 2 s: minReadySeconds,  ─▶ orchestrator::reconcile ─┐
//!              progress deadlines)       ─▶ scheduler::schedule ─────┴▶ Reconcile entry,
//!                                           (the new replicas first)     new replicas bound
//!                                        ─▶ scheduler::schedule      ─▶ Schedule entry
//!                                           (replicas still unbound) }
//!      loop { every node-timeout/10      ─▶ nodes::assess           ─▶ NodeDown / NodeUp }
//!  leadership lost ─▶ cancel
//! ```
//!
//! A round looks only at what changed: the deployments touched since the
//! last round (the store's change feed), plus those still in motion; the
//! scheduler looks only at unbound replicas. A new leader's first round looks
//! at everything: it needs nothing from the old one, and continues a rollout
//! or a drain where it stands (the times a rollout is judged by are in the
//! store, stamped by the leader that proposed them). Decisions go through
//! raft like any write; the state machine skips those that became stale (a
//! slot taken, a replica gone).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cluster::now_unix_ms;
use crate::dispatcher::Heartbeats;
use crate::nodes::{self, Verdict};
use crate::orchestrator::{self, rollout};
use crate::raft::node::Handle;
use crate::scheduler::{self, Decision, NodeInfo, Pending, Placed};
use crate::store::{
    Booking, ChangeFeed, Command, NodeCondition, ObjectRef, ReplicaRecord, Resources,
    RolloutRecord, State, Store, StoredDeployment, Touched, Write,
};

/// Shortest pause between two rounds, so a stream of status batches does not
/// make the loops spin.
const MIN_ROUND: Duration = Duration::from_millis(20);
/// When the round after one that started at `started`, ended at `ended` and
/// computed for `computed` may start: at least [`MIN_ROUND`] after it ended,
/// and no sooner than `started + 2 × computed`, so that under load (tens of
/// thousands of replicas changing at once) the loops compute for at most
/// half of the time, about half of a core, and status batches, sessions and
/// heartbeats keep theirs. The time a round spent waiting for its entries
/// to commit counts as the pause: the loops computed nothing meanwhile.
fn next_round_at<T>(started: T, ended: T, computed: Duration) -> T
where
    T: std::ops::Add<Duration, Output = T> + Ord,
{
    (ended + MIN_ROUND).max(started + computed * 2)
}

/// A round runs at least this often even when nothing was applied.
const MAX_ROUND: Duration = Duration::from_secs(2);
/// At most this many replicas are created, and placed, per round: each
/// round's entries stay a few MiB however much was applied at once, agents
/// start on the first ones sooner, and what is left waits for the next
/// round (its deployments stay unsettled; unbound replicas stay unbound).
const MAX_PER_ROUND: usize = 10_000;

/// Settings of the leader loops.
#[derive(Clone)]
pub struct LoopConfig {
    /// No heartbeat for this long: the node is NotReady and its replicas move.
    pub node_timeout: Duration,
    pub heartbeats: Heartbeats,
}

/// Run the leader loops whenever this controller leads, until `shutdown`.
///
/// They need this member's raft node (`handle`: its leadership, proposals
/// and reads) and its state (`store`), nothing else: a deposed leader's loops
/// never forward a write to the new leader.
pub async fn run(handle: Handle, store: Store, cfg: LoopConfig, shutdown: CancellationToken) {
    let mut leadership = handle.leadership_watch();
    loop {
        let view = *leadership.borrow_and_update();
        if view.is_leader {
            let token = shutdown.child_token();
            let leading = Leading {
                handle: handle.clone(),
                store: store.clone(),
                term: view.term,
            };
            let task = tokio::spawn(loops(leading, cfg.clone(), token.clone()));
            info!(term = view.term, "leading: control loops started");
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => { token.cancel(); let _ = task.await; return; }
                    r = leadership.changed() => {
                        if r.is_err() { token.cancel(); return; }
                        let now = *leadership.borrow_and_update();
                        if !now.is_leader || now.term != view.term { break; }
                    }
                }
            }
            token.cancel();
            let _ = task.await;
            info!("no longer leading: control loops stopped");
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = leadership.changed() => if r.is_err() { return },
        }
    }
}

/// The leader loops' way into raft: only as the leader of `term`.
///
/// A loop's decisions are made on this leader's view (its heartbeats, its
/// round's reads); once leadership is lost they must not reach the log, so
/// they are proposed here only, never forwarded to a new leader or retried
/// into a later term.
#[derive(Clone)]
struct Leading {
    handle: Handle,
    store: Store,
    term: u64,
}

impl Leading {
    async fn write(&self, command: Command) -> Result<(), String> {
        let now = self.handle.leadership();
        if !now.is_leader || now.term != self.term {
            return Err(format!("leadership of term {} lost", self.term));
        }
        match self.handle.propose(Write::Command(command)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

async fn loops(leading: Leading, cfg: LoopConfig, token: CancellationToken) {
    let leading_since = Instant::now();
    // The state is current once a ReadIndex round succeeds: the leader has
    // committed an entry of its term and applied everything before it.
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            r = leading.handle.read_barrier() => if r.is_ok() { break },
        }
    }
    tokio::spawn(monitor(leading.clone(), cfg, leading_since, token.clone()));
    let mut applied = leading.handle.applied();
    let mut orchestration = Orchestration::new(&leading.store);
    loop {
        let started = tokio::time::Instant::now();
        // A round in flight when leadership is lost is abandoned there.
        let computed = tokio::select! {
            _ = token.cancelled() => return,
            r = round(&leading, &mut orchestration) => r.unwrap_or_else(|e| {
                // What the round did not get to is looked at again.
                orchestration.retry_all();
                warn!(error = %e, "control loop round failed");
                Duration::ZERO
            }),
        };
        let ended = tokio::time::Instant::now();
        tokio::select! {
            _ = token.cancelled() => return,
            _ = applied.changed() => {}
            _ = tokio::time::sleep(MAX_ROUND) => {}
        }
        tokio::time::sleep_until(next_round_at(started, ended, computed)).await;
    }
}

/// The node monitor: turn heartbeat silence into NotReady (and back).
async fn monitor(
    leading: Leading,
    cfg: LoopConfig,
    leading_since: Instant,
    token: CancellationToken,
) {
    let period =
        (cfg.node_timeout / 10).clamp(Duration::from_millis(50), Duration::from_millis(500));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut held_since = None;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let state = leading.store.snapshot();
        let commands = monitor_commands(
            &state,
            |node| cfg.heartbeats.last(node),
            leading_since,
            Instant::now(),
            cfg.node_timeout,
            now_unix_ms(),
            &mut held_since,
        );
        for (verdict, command) in commands {
            let written = tokio::select! {
                _ = token.cancelled() => return,
                r = leading.write(command) => r,
            };
            if let Err(e) = written {
                warn!(verdict = ?verdict, error = %e, "node monitor could not commit a node condition");
            }
        }
    }
}

/// The node monitor's entries now: each node whose heartbeat silence (as
/// `last_heartbeat` tells it, this leader's memory) changes its condition,
/// with the `NodeDown`/`NodeUp` entry that says so. Pure; the simulator's
/// leader proposes the same.
pub fn monitor_commands(
    state: &State,
    last_heartbeat: impl Fn(&str) -> Option<Instant>,
    leading_since: Instant,
    now: Instant,
    timeout: Duration,
    now_unix_ms: i64,
    held_since: &mut Option<Instant>,
) -> Vec<(Verdict, Command)> {
    let observed: Vec<nodes::Observed> = state
        .nodes()
        .map(|n| nodes::Observed {
            last_heartbeat: last_heartbeat(&n.name),
            name: n.name.clone(),
            condition: n.condition,
        })
        .collect();
    let was_held = held_since.is_some();
    let assessment = nodes::assess(&observed, leading_since, now, timeout, held_since);
    match assessment.held {
        Some((silent, ready)) if !was_held => warn!(
            silent,
            ready,
            hold = ?timeout * nodes::MASS_SILENCE_HOLD,
            "most nodes fell silent at once: this controller is more likely overloaded or cut off \
             than they all failed; holding their NotReady"
        ),
        None if was_held => info!("mass silence no longer held: nodes are judged one by one again"),
        _ => {}
    }
    assessment
        .verdicts
        .into_iter()
        .map(|verdict| {
            let command = match &verdict {
                Verdict::Down(node) => {
                    warn!(node = %node, timeout = ?timeout, "node NotReady: no heartbeat; moving its replicas");
                    Command::NodeDown {
                        node: node.clone(),
                        now_unix_ms,
                    }
                }
                Verdict::Up(node) => {
                    info!(node = %node, "node Ready again");
                    Command::NodeUp {
                        node: node.clone(),
                        now_unix_ms,
                    }
                }
            };
            (verdict, command)
        })
        .collect()
}

/// What the orchestrator remembers between rounds of one leadership: the
/// changes applied since its last look, and the deployments that need a
/// look every round until they settle (a rollout under way, a replica not
/// yet available for `minReadySeconds`, a progress deadline running).
pub struct Orchestration {
    feed: ChangeFeed,
    unsettled: BTreeSet<ObjectRef>,
}

impl Orchestration {
    /// A new leader's: its first round looks at everything.
    pub fn new(store: &Store) -> Orchestration {
        Orchestration {
            feed: store.subscribe(),
            unsettled: BTreeSet::new(),
        }
    }

    /// The next round's decisions: the changes applied since the last
    /// round (taken first: the state read after is at least that new), the
    /// deployments they touch and the unsettled ones, decided at `now`.
    pub fn next(&mut self, store: &Store, now: i64) -> Decisions {
        let mut round = self.begin(store);
        let decisions = round.decide(now);
        self.end(round);
        decisions
    }

    /// [`Orchestration::next`] in three steps, so that the deciding (a walk
    /// over every replica of every changed deployment) can run off the
    /// runtime's workers: take the round's input here, decide anywhere,
    /// then hand the unsettled set back with [`Orchestration::end`].
    pub fn begin(&mut self, store: &Store) -> RoundInput {
        RoundInput {
            changes: self.feed.take(),
            state: store.snapshot(),
            unsettled: std::mem::take(&mut self.unsettled),
        }
    }

    pub fn end(&mut self, round: RoundInput) {
        self.unsettled = round.unsettled;
    }

    /// A round failed: what it did not get to is looked at again.
    pub fn retry_all(&self) {
        self.feed.reset();
    }
}

/// What one round decides from: the changes applied since the last round,
/// the state read after them, and the deployments still unsettled.
pub struct RoundInput {
    changes: Touched,
    state: Arc<State>,
    unsettled: BTreeSet<ObjectRef>,
}

impl RoundInput {
    pub fn decide(&mut self, now: i64) -> Decisions {
        let todo = to_look_at(&self.state, &self.changes, &self.unsettled);
        decide(&self.state, &todo, &mut self.unsettled, now)
    }
}

/// One round's decisions, before they are proposed.
#[derive(Debug, Default)]
pub struct Decisions {
    pub records: Vec<RolloutRecord>,
    /// `(deployment, revision failing, why)`.
    pub rollbacks: Vec<(ObjectRef, u64, String)>,
    pub plan: orchestrator::Plan,
}

/// The deployments a round looks at: those changed since the last one (a
/// deployment or one of its replicas), those on nodes whose record changed
/// (a drain starts or ends, a node is lost), and the unsettled ones.
fn to_look_at(
    state: &State,
    changes: &Touched,
    unsettled: &BTreeSet<ObjectRef>,
) -> BTreeSet<ObjectRef> {
    if changes.all {
        let mut all: BTreeSet<ObjectRef> = state.deployments_with_replicas().cloned().collect();
        all.extend(state.deployments(None).map(|d| deployment_ref(d)));
        return all;
    }
    let mut todo: BTreeSet<ObjectRef> = changes.deployments.clone();
    todo.extend(unsettled.iter().cloned());
    for node in &changes.node_records {
        todo.extend(state.replicas_on(node).map(|r| ObjectRef {
            namespace: r.namespace.clone(),
            name: r.deployment.clone(),
        }));
    }
    todo
}

fn deployment_ref(d: &StoredDeployment) -> ObjectRef {
    ObjectRef {
        namespace: d.deployment.metadata.namespace.clone(),
        name: d.deployment.metadata.name.clone(),
    }
}

/// Decide a round for the deployments in `todo`: rollout progress, rollbacks
/// and the replicas to create and remove. Pure: the state and `now` in,
/// decisions out; `unsettled` keeps the deployments still in motion.
///
/// Cost: O(replicas of the deployments looked at), never all replicas.
pub fn decide(
    state: &State,
    todo: &BTreeSet<ObjectRef>,
    unsettled: &mut BTreeSet<ObjectRef>,
    now: i64,
) -> Decisions {
    let draining: HashSet<String> = state
        .nodes()
        .filter(|n| n.draining)
        .map(|n| n.name.clone())
        .collect();
    let mut out = Decisions::default();
    for target in todo {
        let mine: Vec<&ReplicaRecord> = state.replicas_of(target).map(|r| &**r).collect();
        let Some(d) = state.deployment(&target.namespace, &target.name) else {
            // A deleted deployment loses its replicas; the terminating ones
            // go when their agents report them stopped.
            let orphans: Vec<ObjectRef> = mine
                .iter()
                .filter(|r| !r.is_terminating())
                .map(|r| r.key())
                .collect();
            unsettled.remove(target);
            out.plan.remove.extend(orphans);
            continue;
        };
        let counts = rollout::counts(d, &mine, &draining, now);
        let mut failed = d.rollout.failed.clone();
        let progress = rollout::progress(d, &counts, now);
        if let Some((progress_unix_ms, available_updated, now_failed)) = &progress {
            if let Some(reason) = now_failed {
                warn!(deployment = %target, reason = %reason, "rollout failed");
            }
            failed = now_failed.clone();
            out.records.push(RolloutRecord {
                target: target.clone(),
                revision: d.current_revision_hash(),
                progress_unix_ms: *progress_unix_ms,
                available_updated: *available_updated,
                failed: now_failed.clone(),
            });
        }
        let rollback = failed.filter(|_| rollout::wants_auto_rollback(d));
        let actions = rollout::plan(d, &mine, &draining, now);
        let settled = actions.create.is_empty()
            && actions.remove.is_empty()
            && progress.is_none()
            && rollback.is_none()
            && rollout::is_complete(d.deployment.spec.replicas, &counts);
        if settled {
            unsettled.remove(target);
        } else {
            unsettled.insert(target.clone());
        }
        if let Some(reason) = rollback {
            out.rollbacks
                .push((target.clone(), d.current_revision_number(), reason));
        }
        out.plan.create.extend(actions.create);
        out.plan.remove.extend(actions.remove);
        out.plan
            .dropped_without_replacement
            .extend(actions.dropped_without_replacement);
    }
    out.plan.remove.sort();
    out
}

/// The entries a round's decisions become, in the order a round proposes
/// them (each after the previous one applied): rollout progress, automatic
/// rollbacks, then the replicas to create (at most [`MAX_PER_ROUND`]) and
/// remove. Pure; the simulator's leader proposes the same.
pub fn decision_commands(decisions: Decisions, now: i64) -> Vec<Command> {
    let mut commands = Vec::new();
    if !decisions.records.is_empty() {
        commands.push(Command::RolloutProgress {
            records: decisions.records,
            now_unix_ms: now,
        });
    }
    for (target, revision, reason) in decisions.rollbacks {
        info!(deployment = %target, "rollout failed: rolling back to the previous revision");
        commands.push(Command::Undo {
            target,
            to_revision: None,
            reason: Some(format!(
                "rolled back from revision {revision} by {}: {reason}",
                rollout::AUTO_ROLLBACK_ANNOTATION
            )),
            now_unix_ms: now,
        });
    }
    let mut plan = decisions.plan;
    plan.create.truncate(MAX_PER_ROUND);
    for r in &plan.dropped_without_replacement {
        warn!(replica = %r, "draining: no other node can take this replica; removing it without a replacement");
    }
    if !plan.is_empty() {
        debug!(
            create = plan.create.len(),
            remove = plan.remove.len(),
            "orchestrator"
        );
        commands.push(Command::Reconcile {
            create: plan.create,
            remove: plan.remove,
            now_unix_ms: now,
        });
    }
    commands
}

/// `command` with the replicas a `Reconcile` creates bound where the
/// scheduler places them: [`schedule`]'s pass over the new replicas, on the
/// nodes as the state has them (what the entry removes holds what it held:
/// a bound replica stays, terminating, until its node reports it gone), its
/// choices written into the new records ([`CREATES_BOUND`](crate::store::CREATES_BOUND)).
/// Creating and binding a replica is then one entry, one record written
/// and one watch event on every member instead of two. The new replicas
/// are placed before older unbound ones, which the scheduler's own pass
/// after the entry places in what is left, giving pending reasons to what
/// fits nowhere. Any other command comes back as it was. Pure; the
/// simulator's leader binds its creations with it too.
///
/// Cost: one scheduler pass over the new replicas, which the pass after the
/// entry then no longer makes.
pub fn bind_creations(state: &State, command: Command) -> Command {
    let Command::Reconcile {
        mut create,
        remove,
        now_unix_ms,
    } = command
    else {
        return command;
    };
    let (place, _) = schedule_these(state, create.iter());
    let placed: HashMap<(&str, &str), &String> = place
        .iter()
        .map(|(r, node)| ((r.namespace.as_str(), r.name.as_str()), node))
        .collect();
    for r in &mut create {
        if let Some(node) = placed.get(&(r.namespace.as_str(), r.name.as_str())) {
            r.node = Some(String::clone(node));
        }
    }
    Command::Reconcile {
        create,
        remove,
        now_unix_ms,
    }
}

/// The scheduler's entry for the state's unbound replicas, if it decides
/// anything (see [`schedule`]).
pub fn schedule_command(state: &State, now: i64) -> Option<Command> {
    let (place, unschedulable) = schedule(state);
    if place.is_empty() && unschedulable.is_empty() {
        return None;
    }
    debug!(
        place = place.len(),
        unschedulable = unschedulable.len(),
        "scheduler"
    );
    Some(Command::Schedule {
        place,
        unschedulable,
        now_unix_ms: now,
    })
}

/// One round: a pass of the orchestrator and then the scheduler. Returns the
/// time the two passes computed for, commits not counted.
async fn round(leading: &Leading, orchestration: &mut Orchestration) -> Result<Duration, String> {
    let _timer = crate::metrics::get().round("orchestrator");
    let store = &leading.store;
    let now = now_unix_ms();
    // A round over thousands of changed deployments walks every one of
    // their replicas.
    let input = orchestration.begin(store);
    let ((decisions, input), mut computed) = off_workers("orchestrator", move || {
        let mut input = input;
        (input.decide(now), input)
    })
    .await?;
    orchestration.end(input);
    for command in decision_commands(decisions, now) {
        let (command, bound) = match command {
            reconcile @ Command::Reconcile { .. } => {
                let state = store.snapshot();
                let (bound, binding) = off_workers("scheduler", move || {
                    crate::metrics::get().time_scheduler(|| bind_creations(&state, reconcile))
                })
                .await?;
                computed += binding;
                let n = match &bound {
                    Command::Reconcile { create, .. } => {
                        create.iter().filter(|r| r.node.is_some()).count()
                    }
                    _ => 0,
                };
                (bound, n)
            }
            other => (other, 0),
        };
        leading.write(command).await?;
        if bound > 0 {
            crate::metrics::get().scheduled(bound, 0);
        }
    }
    let state = store.snapshot();
    let (command, scheduling) = off_workers("scheduler", move || {
        crate::metrics::get().time_scheduler(|| schedule_command(&state, now_unix_ms()))
    })
    .await?;
    computed += scheduling;
    if let Some(command) = command {
        let decided = match &command {
            Command::Schedule {
                place,
                unschedulable,
                ..
            } => (place.len(), unschedulable.len()),
            _ => (0, 0),
        };
        leading.write(command).await?;
        crate::metrics::get().scheduled(decided.0, decided.1);
    }
    Ok(computed)
}

/// Run a round's `pass` off the runtime's worker threads (with tens of
/// thousands of replicas to look at a pass takes a core for hundreds of
/// milliseconds, and on a worker it held up every session's heartbeats and
/// keep-alives); what it returned and how long it computed.
async fn off_workers<T: Send + 'static>(
    what: &str,
    pass: impl FnOnce() -> T + Send + 'static,
) -> Result<(T, Duration), String> {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let out = pass();
        (out, started.elapsed())
    })
    .await
    .map_err(|e| format!("the {what} pass failed: {e}"))
}

type Placements = (Vec<(ObjectRef, String)>, Vec<(ObjectRef, String)>);

/// Feed the state's unbound replicas to the pure scheduler; keep only
/// decisions that change something (an unchanged pending reason is not
/// rewritten).
///
/// Cost: O(nodes + unbound replicas + the bound replicas of their
/// deployments), from the state's indexes: what nodes hold comes from the
/// per-node totals, and only the pending deployments' bound replicas are
/// listed, for spread.
pub fn schedule(state: &State) -> Placements {
    // Replicas never tried first, so ones that fit nowhere cannot crowd
    // new ones out of a round.
    let untried = state.unbound().filter(|r| r.pending_reason.is_empty());
    let tried = state.unbound().filter(|r| !r.pending_reason.is_empty());
    schedule_these(state, untried.chain(tried).map(|r| r.as_ref()))
}

/// [`schedule`] for the replicas `unbound` (the state's own, or ones about
/// to be created), at most [`MAX_PER_ROUND`] of them, on the nodes as the
/// state has them.
fn schedule_these<'a>(
    state: &'a State,
    unbound: impl Iterator<Item = &'a ReplicaRecord>,
) -> Placements {
    let nodes: Vec<NodeInfo> = state
        .nodes()
        .map(|n| {
            let held = state.held(&n.name);
            NodeInfo {
                name: n.name.clone(),
                labels: n.labels.clone(),
                allocatable: n.capacity,
                ready: n.condition == NodeCondition::Ready,
                cordoned: n.cordoned,
                in_use: held.map(|h| h.requests).unwrap_or_default(),
                ports_in_use: held.map(|h| h.host_ports.clone()).unwrap_or_default(),
            }
        })
        .collect();
    let mut pending = Vec::new();
    let mut spread_of: BTreeSet<ObjectRef> = BTreeSet::new();
    let mut reasons: HashMap<String, (&ReplicaRecord, ObjectRef)> = HashMap::new();
    for r in unbound.take(MAX_PER_ROUND) {
        // Replicas of a deleted deployment are not placed.
        let Some(d) = state.deployment(&r.namespace, &r.deployment) else {
            continue;
        };
        // Each replica is placed and booked with its own revision's template
        // (during a rollout the old replicas still hold the old ports and
        // requests, not the new ones), as recorded when it was made.
        let pod = d
            .revision_by_hash(&r.revision)
            .map_or(&d.deployment.spec.template.spec, |rev| &rev.template.spec);
        let booking = r.booking.clone().unwrap_or_else(|| Booking::of(pod));
        let id = r.agent_id();
        reasons.insert(id.clone(), (r, r.key()));
        spread_of.insert(ObjectRef {
            namespace: r.namespace.clone(),
            name: r.deployment.clone(),
        });
        pending.push(Pending {
            replica: id,
            deployment: format!("{}/{}", r.namespace, r.deployment),
            requests: booking.requests,
            node_selector: pod.node_selector.clone(),
            host_ports: booking.host_ports,
        });
    }
    if pending.is_empty() {
        return (Vec::new(), Vec::new());
    }
    // Held resources and ports are in the nodes' totals already; these are
    // listed for spread alone.
    let placed: Vec<Placed> = spread_of
        .iter()
        .flat_map(|d| state.replicas_of(d))
        .filter_map(|r| {
            r.node.as_ref().map(|node| Placed {
                node: node.clone(),
                deployment: format!("{}/{}", r.namespace, r.deployment),
                requests: Resources::default(),
                host_ports: Vec::new(),
            })
        })
        .collect();
    let mut place = Vec::new();
    let mut unschedulable = Vec::new();
    for decision in scheduler::schedule(&pending, &nodes, &placed) {
        match decision {
            Decision::Place { replica, node } => {
                if let Some((_, target)) = reasons.get(&replica) {
                    place.push((target.clone(), node));
                }
            }
            Decision::Unschedulable { replica, reason } => {
                if let Some((record, target)) = reasons.get(&replica) {
                    if record.pending_reason != reason {
                        unschedulable.push((target.clone(), reason));
                    }
                }
            }
        }
    }
    (place, unschedulable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::deployment;
    use crate::store::{NodeRegistration, ReplicaObserved, ReplicaPhase, Resources};
    use drover_manifest::{ContainerPort, Protocol};

    struct Db {
        store: Store,
        index: u64,
    }

    impl Db {
        fn new() -> Db {
            Db {
                store: Store::default(),
                index: 1,
            }
        }

        fn apply(&mut self, command: Command) {
            self.index += 1;
            let result = self.store.apply(self.index, 1, &command);
            assert!(result.is_ok(), "{command:?}: {result:?}");
        }

        /// One orchestrator pass and one scheduler pass, as a leader round.
        fn round(&mut self) -> Placements {
            self.round_at(10)
        }

        fn round_at(&mut self, now: i64) -> Placements {
            let plan = orchestrator::reconcile(
                &self.store.deployments(None),
                &self.store.replicas(None),
                &HashSet::new(),
                now,
            );
            self.apply(Command::Reconcile {
                create: plan.create,
                remove: plan.remove,
                now_unix_ms: now,
            });
            let (place, unschedulable) = schedule(&self.store.snapshot());
            self.apply(Command::Schedule {
                place: place.clone(),
                unschedulable: unschedulable.clone(),
                now_unix_ms: now,
            });
            (place, unschedulable)
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_loops_compute_at_most_half_of_the_time_waiting_for_commits_included() {
        // Times in ms since some instant: (started, ended, computed) → next.
        // A round that computed 100 ms and then waited 300 ms for its
        // entries has paused long enough: the next one waits MIN_ROUND only.
        assert_eq!(next_round_at(ms(0), ms(400), ms(100)), ms(420));
        // One that computed 100 ms and committed in 10 ms waits until 200 ms.
        assert_eq!(next_round_at(ms(0), ms(110), ms(100)), ms(200));
        // A small round still waits MIN_ROUND after it ended.
        assert_eq!(next_round_at(ms(0), ms(3), ms(1)), ms(23));
        for (started, ended, computed) in [(0, 400, 100), (0, 110, 100), (0, 3, 1), (5, 5, 0)] {
            let next = next_round_at(ms(started), ms(ended), ms(computed));
            assert!(
                ms(computed) * 2 <= next - ms(started),
                "at most half computing"
            );
            assert!(next >= ms(ended) + MIN_ROUND);
        }
    }

    fn on_host_port(name: &str, port: u16) -> drover_manifest::Deployment {
        let mut d = deployment(name, 1);
        d.spec.template.spec.containers[0].ports = vec![ContainerPort {
            name: None,
            container_port: port,
            host_port: Some(port),
            protocol: Protocol::Tcp,
        }];
        d
    }

    /// A 2-CPU, 1 GiB process-runtime node.
    fn registration(name: &str) -> NodeRegistration {
        NodeRegistration {
            name: name.into(),
            labels: Default::default(),
            capacity: Resources {
                cpu_millis: 2000,
                memory_bytes: 1 << 30,
            },
            address: "127.0.0.1:1".into(),
            runtime: "process".into(),
            agent_version: "test".into(),
            incarnation: "i1".into(),
        }
    }

    /// `nodes` registered, then `deployments` applied.
    fn db_with(nodes: &[&str], deployments: Vec<drover_manifest::Deployment>) -> Db {
        let mut db = Db::new();
        for n in nodes {
            db.apply(Command::RegisterNode {
                node: registration(n),
                now_unix_ms: 1,
            });
        }
        db.apply(Command::Apply {
            deployments,
            now_unix_ms: 1,
        });
        db
    }

    /// Three nodes; `web` wants 5 replicas on host port 8080 (3 fit), `api` 4.
    fn three_nodes_two_deployments() -> Db {
        let mut web = on_host_port("web", 8080);
        web.spec.replicas = 5;
        db_with(&["n1", "n2", "n3"], vec![web, deployment("api", 4)])
    }

    fn orchestrate(db: &Db) -> Command {
        let plan = orchestrator::reconcile(
            &db.store.deployments(None),
            &db.store.replicas(None),
            &HashSet::new(),
            10,
        );
        Command::Reconcile {
            create: plan.create,
            remove: plan.remove,
            now_unix_ms: 10,
        }
    }

    fn placements(db: &Db) -> Vec<(String, Option<String>, String)> {
        db.store
            .replicas(None)
            .into_iter()
            .map(|r| (r.name, r.node, r.pending_reason))
            .collect()
    }

    fn events(db: &Db) -> Vec<(String, String)> {
        db.store
            .events(&Default::default(), 100)
            .into_iter()
            .map(|e| (e.reason, e.object.name))
            .collect()
    }

    /// Creating replicas bound (one entry) ends where creating them and then
    /// scheduling them (two entries) ends: the same nodes, the same pending
    /// reasons for the ones nothing fits, each new replica's `Scheduled`
    /// event after its deployment's `SuccessfulCreate`.
    #[test]
    fn creations_bound_in_their_entry_end_where_create_then_schedule_ends() {
        let mut two_entries = three_nodes_two_deployments();
        two_entries.round();

        let mut one_entry = three_nodes_two_deployments();
        let command = bind_creations(&one_entry.store.snapshot(), orchestrate(&one_entry));
        let Command::Reconcile { create, .. } = &command else {
            panic!("{command:?}");
        };
        assert_eq!(create.iter().filter(|r| r.node.is_some()).count(), 7);
        one_entry.apply(command);
        let (place, unschedulable) = schedule(&one_entry.store.snapshot());
        assert!(place.is_empty(), "{place:?}");
        assert_eq!(unschedulable.len(), 2, "{unschedulable:?}");
        one_entry.apply(Command::Schedule {
            place,
            unschedulable,
            now_unix_ms: 10,
        });

        assert_eq!(placements(&one_entry), placements(&two_entries));
        let mut expected = events(&two_entries);
        let mut got = events(&one_entry);
        expected.sort();
        got.sort();
        assert_eq!(got, expected);
        let created = events(&one_entry)
            .iter()
            .position(|(reason, _)| reason == "SuccessfulCreate");
        let first_scheduled = events(&one_entry)
            .iter()
            .position(|(reason, _)| reason == "Scheduled");
        assert!(created < first_scheduled, "{:?}", events(&one_entry));
    }

    /// A creation bound to a node that was cordoned (or went NotReady)
    /// after the leader decided is created unbound, with no `Scheduled`
    /// event, for the next scheduler pass.
    #[test]
    fn a_creation_bound_to_a_node_cordoned_since_is_created_unbound() {
        let mut db = db_with(&["n1"], vec![deployment("api", 2)]);
        let command = bind_creations(&db.store.snapshot(), orchestrate(&db));
        db.apply(Command::Cordon {
            node: "n1".into(),
            cordoned: true,
            now_unix_ms: 5,
        });
        db.apply(command);
        let nodes: Vec<Option<String>> = placements(&db).into_iter().map(|p| p.1).collect();
        assert_eq!(nodes, [None, None]);
        assert!(
            !events(&db).iter().any(|(reason, _)| reason == "Scheduled"),
            "{:?}",
            events(&db)
        );
    }

    #[test]
    fn a_terminating_replica_of_a_deleted_deployment_keeps_its_host_port_to_the_end() {
        let mut db = db_with(&["n1"], vec![on_host_port("old", 8080)]);
        let (place, _) = db.round();
        assert_eq!(place.len(), 1);
        let old = place[0].0.clone();

        db.apply(Command::Delete {
            refs: vec![ObjectRef {
                namespace: "default".into(),
                name: "old".into(),
            }],
            ignore_not_found: false,
            now_unix_ms: 2,
            grace_period_seconds: None,
        });
        db.apply(Command::Apply {
            deployments: vec![on_host_port("new", 8080)],
            now_unix_ms: 2,
        });
        let (place, unschedulable) = db.round();
        assert!(place.is_empty(), "8080 is still held on n1: {place:?}");
        assert_eq!(unschedulable.len(), 1);
        assert!(
            unschedulable[0].1.contains("free ports"),
            "{unschedulable:?}"
        );

        // The agent reports the old replica gone: the port is free.
        db.apply(Command::ReportStatus {
            reports: vec![(
                "n1".into(),
                old,
                ReplicaObserved {
                    phase: ReplicaPhase::Gone,
                    ..Default::default()
                },
            )],
            now_unix_ms: 3,
        });
        let (place, _) = db.round();
        assert_eq!(place.len(), 1, "placed once the old one is gone");
    }

    #[test]
    fn a_name_terminating_again_as_a_new_replica_makes_a_new_set_for_its_node() {
        use crate::dispatcher::Assignments;
        let mut db = db_with(&["n1"], vec![deployment("web", 1)]);
        let web = ObjectRef {
            namespace: "default".into(),
            name: "web".into(),
        };
        let scale = |db: &mut Db, replicas: u32, now: i64| {
            db.apply(Command::Scale {
                target: web.clone(),
                replicas,
                now_unix_ms: now,
            });
            db.round_at(now);
        };
        db.round_at(10);
        scale(&mut db, 0, 20);
        let book = |db: &Db| {
            Assignments::build(
                &db.store.snapshot(),
                &Assignments::default(),
                &Touched::everything(),
            )
        };
        let first = book(&db);
        let name = first.for_node("n1").terminating.clone();
        assert_eq!(name.len(), 1, "{:?}", first.for_node("n1"));
        // n1 reports it gone; the slot is free, and the same name comes back
        // as a new replica, bound to n1 and removed again.
        let gone = db.store.replicas(None).remove(0).key();
        db.apply(Command::ReportStatus {
            reports: vec![(
                "n1".into(),
                gone,
                ReplicaObserved {
                    node: "n1".into(),
                    phase: ReplicaPhase::Gone,
                    ..Default::default()
                },
            )],
            now_unix_ms: 30,
        });
        scale(&mut db, 1, 40);
        scale(&mut db, 0, 50);
        let second = book(&db);
        assert_eq!(second.for_node("n1").terminating, name, "the same name");
        assert_ne!(
            *second.for_node("n1"),
            *first.for_node("n1"),
            "a set that differs, so the session sends it and the agent says gone again"
        );
    }

    #[test]
    fn every_assignment_of_a_revision_shares_one_template_buffer_across_books() {
        use crate::dispatcher::Assignments;
        let mut db = Db::new();
        for n in ["n1", "n2"] {
            db.apply(Command::RegisterNode {
                node: registration(n),
                now_unix_ms: 1,
            });
        }
        let feed = db.store.subscribe();
        db.apply(Command::Apply {
            deployments: vec![deployment("web", 2)],
            now_unix_ms: 1,
        });
        db.round();
        let first = Assignments::build(&db.store.snapshot(), &Assignments::default(), &feed.take());
        // A second book after another deployment's replica: only its node's
        // set is built again, the other node keeps the first book's.
        db.apply(Command::Apply {
            deployments: vec![deployment("api", 1)],
            now_unix_ms: 2,
        });
        db.round();
        let second = Assignments::build(&db.store.snapshot(), &first, &feed.take());
        let web: Vec<drover_proto::pb::Assignment> = ["n1", "n2"]
            .iter()
            .flat_map(|n| second.for_node(n).assignments_pb())
            .filter(|a| a.deployment == "web")
            .collect();
        assert_eq!(web.len(), 2);
        assert!(
            ["n1", "n2"]
                .iter()
                .all(|n| !second.for_node(n).assignments.is_empty()),
            "one web replica on each node"
        );
        let buffers: BTreeSet<usize> = web
            .iter()
            .map(|a| a.template_json.as_ptr() as usize)
            .collect();
        assert_eq!(buffers.len(), 1, "one buffer for the revision's template");
    }

    mod incremental {
        //! The incremental round against a from-scratch one: after any
        //! sequence of commands, looking only at what changed (and what is
        //! still in motion) decides exactly what looking at everything does,
        //! and the state's indexes equal ones built from its records.

        use super::*;
        use crate::dispatcher::Assignments;
        use proptest::prelude::{
            prop_assert, prop_assert_eq, prop_oneof, proptest, ProptestConfig,
        };
        use proptest::strategy::{Just, Strategy as _};

        #[derive(Debug, Clone)]
        enum Op {
            Apply {
                d: u8,
                replicas: u32,
                image: u8,
            },
            Delete {
                d: u8,
            },
            Register {
                n: u8,
            },
            NodeDown {
                n: u8,
            },
            Drain {
                n: u8,
            },
            Uncordon {
                n: u8,
            },
            /// Report the `i`th replica (in name order) ready, not ready or gone.
            Report {
                i: usize,
                ready: bool,
                gone: bool,
            },
            Round,
        }

        fn op() -> impl proptest::strategy::Strategy<Value = Op> {
            prop_oneof![
                (0u8..3, 0u32..5, 0u8..2).prop_map(|(d, replicas, image)| Op::Apply {
                    d,
                    replicas,
                    image
                }),
                (0u8..3).prop_map(|d| Op::Delete { d }),
                (0u8..3).prop_map(|n| Op::Register { n }),
                (0u8..3).prop_map(|n| Op::NodeDown { n }),
                (0u8..3).prop_map(|n| Op::Drain { n }),
                (0u8..3).prop_map(|n| Op::Uncordon { n }),
                (0usize..12, proptest::bool::ANY, proptest::bool::ANY)
                    .prop_map(|(i, ready, gone)| Op::Report { i, ready, gone }),
                Just(Op::Round),
                Just(Op::Round),
            ]
        }

        fn node(n: u8) -> String {
            format!("n{n}")
        }

        fn command(state: &State, op: &Op, now: i64) -> Option<Command> {
            Some(match op {
                Op::Apply { d, replicas, image } => {
                    let mut dep = deployment(&format!("d{d}"), *replicas);
                    dep.spec.template.spec.containers[0].image = format!("drover/busybox:{image}");
                    Command::Apply {
                        deployments: vec![dep],
                        now_unix_ms: now,
                    }
                }
                Op::Delete { d } => Command::Delete {
                    refs: vec![ObjectRef {
                        namespace: "default".into(),
                        name: format!("d{d}"),
                    }],
                    ignore_not_found: true,
                    now_unix_ms: now,
                    grace_period_seconds: None,
                },
                Op::Register { n } => Command::RegisterNode {
                    node: NodeRegistration {
                        name: node(*n),
                        labels: Default::default(),
                        capacity: Resources {
                            cpu_millis: 4000,
                            memory_bytes: 1 << 33,
                        },
                        address: "127.0.0.1:1".into(),
                        runtime: "process".into(),
                        agent_version: "test".into(),
                        incarnation: "i".into(),
                    },
                    now_unix_ms: now,
                },
                Op::NodeDown { n } => Command::NodeDown {
                    node: node(*n),
                    now_unix_ms: now,
                },
                Op::Drain { n } => Command::Drain {
                    node: node(*n),
                    now_unix_ms: now,
                },
                Op::Uncordon { n } => Command::Cordon {
                    node: node(*n),
                    cordoned: false,
                    now_unix_ms: now,
                },
                Op::Report { i, ready, gone } => {
                    let r = state.replicas(None).nth(*i)?;
                    let on = r.node.clone()?;
                    Command::ReportStatus {
                        reports: vec![(
                            on,
                            r.key(),
                            ReplicaObserved {
                                phase: if *gone {
                                    ReplicaPhase::Gone
                                } else {
                                    ReplicaPhase::Running
                                },
                                ready: *ready,
                                ..Default::default()
                            },
                        )],
                        now_unix_ms: now,
                    }
                }
                Op::Round => return None,
            })
        }

        fn sorted(mut plan: orchestrator::Plan) -> (Vec<String>, Vec<ObjectRef>) {
            let mut create: Vec<String> = plan.create.drain(..).map(|r| r.name).collect();
            create.sort();
            plan.remove.sort();
            (create, plan.remove)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            #[test]
            fn incremental_rounds_decide_what_a_full_look_decides(ops in proptest::collection::vec(op(), 1..60)) {
                let store = Store::default();
                let mut orchestration = Orchestration::new(&store);
                // The dispatcher's book, built from what each command changed
                // as the leader builds it, against one built from scratch.
                let book_feed = store.subscribe();
                let mut book = Assignments::default();
                let mut index = 1;
                let mut apply = |store: &Store, c: &Command| {
                    index += 1;
                    let _ = store.apply(index, 1, c);
                    let state = store.snapshot();
                    book = Assignments::build(&state, &book, &book_feed.take());
                    let scratch = Assignments::build(&state, &Assignments::default(), &Touched::everything());
                    book.same_sets(&scratch)
                };
                for (step, op) in ops.iter().enumerate() {
                    let now = 1_000 + step as i64;
                    if !matches!(op, Op::Round) {
                        if let Some(c) = command(&store.snapshot(), op, now) {
                            prop_assert!(apply(&store, &c), "the book after {op:?}");
                            prop_assert!(store.snapshot().indexes_match_records(), "after {op:?}");
                        }
                        continue;
                    }
                    // A round: the incremental decisions, then the full ones.
                    let changes = orchestration.feed.take();
                    let state = store.snapshot();
                    let todo = to_look_at(&state, &changes, &orchestration.unsettled);
                    let mine = decide(&state, &todo, &mut orchestration.unsettled, now);
                    let everything: BTreeSet<ObjectRef> = to_look_at(&state, &Touched::everything(), &BTreeSet::new());
                    let all = decide(&state, &everything, &mut BTreeSet::new(), now);
                    let draining: HashSet<String> = state.nodes().filter(|n| n.draining).map(|n| n.name.clone()).collect();
                    let scratch = orchestrator::reconcile(
                        &state.deployments(None).map(|d| StoredDeployment::clone(d)).collect::<Vec<_>>(),
                        &state.replicas(None).map(|r| ReplicaRecord::clone(r)).collect::<Vec<_>>(),
                        &draining,
                        now,
                    );
                    prop_assert_eq!(&mine.records, &all.records);
                    prop_assert_eq!(&mine.rollbacks, &all.rollbacks);
                    let plan = sorted(mine.plan);
                    prop_assert_eq!(&plan, &sorted(all.plan));
                    prop_assert_eq!(&plan, &sorted(scratch));
                    // Carry the round out, as the leader would.
                    if !mine.records.is_empty() {
                        prop_assert!(apply(&store, &Command::RolloutProgress { records: mine.records, now_unix_ms: now }), "the book after progress");
                    }
                    let decided = decide(&store.snapshot(), &BTreeSet::new(), &mut BTreeSet::new(), now);
                    prop_assert!(decided.plan.is_empty());
                    let full = decide(&store.snapshot(), &everything, &mut BTreeSet::new(), now);
                    prop_assert!(apply(&store, &Command::Reconcile { create: full.plan.create, remove: full.plan.remove, now_unix_ms: now }), "the book after a reconcile");
                    let (place, unschedulable) = schedule(&store.snapshot());
                    prop_assert!(apply(&store, &Command::Schedule { place, unschedulable, now_unix_ms: now }), "the book after a schedule");
                    prop_assert!(store.snapshot().indexes_match_records(), "after a round");
                }
            }
        }
    }

    /// The loops driven through a [`Handle::detached`]: the test plays the
    /// raft node, so it can hold a proposal in flight and change leadership
    /// at exactly that moment.
    mod leadership {
        use super::*;
        use crate::raft::node::{Leadership, Msg};
        use tokio::sync::mpsc::error::TryRecvError;

        fn leader_of(term: u64) -> Leadership {
            Leadership {
                leader_id: 1,
                term,
                is_leader: true,
            }
        }

        fn kind(msg: &Msg) -> String {
            match msg {
                Msg::Propose {
                    write: Write::Command(c),
                    ..
                } => {
                    let debug = format!("{c:?}");
                    let variant = debug.split([' ', '{', '(']).next().unwrap_or_default();
                    format!("proposal {variant}")
                }
                Msg::Propose { .. } => "proposal".into(),
                Msg::ReadIndex { .. } => "read".into(),
                Msg::Status { .. } => "status".into(),
                _ => "report".into(),
            }
        }

        #[tokio::test(start_paused = true)]
        async fn a_round_in_flight_is_abandoned_when_leadership_is_lost_and_never_retried_later() {
            // A Ready node that never heartbeats: a node monitor that outlived
            // its leadership would mark it NotReady after the grace period.
            let mut db = Db::new();
            db.apply(Command::RegisterNode {
                node: registration("n1"),
                now_unix_ms: 1,
            });
            db.apply(Command::Apply {
                deployments: vec![deployment("web", 2)],
                now_unix_ms: 1,
            });
            let (handle, mut node) = Handle::detached(1);
            node.leadership.send_replace(leader_of(5));
            let shutdown = CancellationToken::new();
            let cfg = LoopConfig {
                node_timeout: Duration::from_secs(3),
                heartbeats: Heartbeats::default(),
            };
            let loops = tokio::spawn(run(handle, db.store.clone(), cfg, shutdown.clone()));

            // The leader reads first (its barrier), then its first round
            // proposes web's rollout record (then its replicas and their
            // places): hold that first proposal, a commit slow to come.
            let mut in_flight = loop {
                match node.inbox.recv().await {
                    Some(Msg::ReadIndex { reply }) => {
                        let _ = reply.send(Ok(()));
                    }
                    Some(Msg::Propose {
                        write: Write::Command(Command::RolloutProgress { .. }),
                        reply,
                    }) => break reply,
                    Some(other) => panic!("unexpected {} before the first round", kind(&other)),
                    None => panic!("the loops stopped before their first round"),
                }
            };

            // Another member wins a later term while the write is in flight.
            node.leadership.send_replace(Leadership {
                leader_id: 2,
                term: 6,
                is_leader: false,
            });
            tokio::time::timeout(Duration::from_secs(10), in_flight.closed())
                .await
                .expect("the round in flight was not abandoned when leadership was lost");

            // Nothing more is proposed: not the rest of the round (web's
            // replicas, their places), not a retry, not the node monitor's NodeDown for the
            // silent n1 (the clock is paused: this wait costs nothing).
            tokio::time::sleep(Duration::from_secs(30)).await;
            match node.inbox.try_recv() {
                Err(TryRecvError::Empty) => {}
                Ok(msg) => panic!("a deposed leader's loops sent a {}", kind(&msg)),
                Err(TryRecvError::Disconnected) => panic!("the loops' runner stopped"),
            }

            // Leading again in a later term starts over from a fresh read,
            // never from the old term's decisions.
            node.leadership.send_replace(leader_of(7));
            match node.inbox.recv().await {
                Some(Msg::ReadIndex { .. }) => {}
                Some(other) => panic!("a new term began with a {}, not a read", kind(&other)),
                None => panic!("the loops' runner stopped"),
            }
            shutdown.cancel();
            loops.await.expect("the loops' runner ends without a panic");
        }
    }
}
