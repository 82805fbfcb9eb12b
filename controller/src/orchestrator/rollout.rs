//! The rollout planner: one deployment's replicas → what to create and remove
//! next, so that the replica set moves to the current template within the
//! strategy's bounds.
//!
//! ```text
//!  desired (spec.replicas), strategy, current revision ─┐
//!  replicas (revision, slot, node, ready-since)         ├─ plan() ─▶ create / remove
//!  draining nodes, now                                  ─┘  (pure)
//! ```
//!
//! Counting is done in *units*: a replica, or a replica on a draining node
//! together with the replacement made for it (both run the same revision and
//! stand for one copy). A unit is available when one of its replicas has been
//! ready for `minReadySeconds`.
//!
//! RollingUpdate, with `surge` and `unavailable` resolved from the strategy
//! (surge rounds up, unavailable rounds down, both zero → unavailable 1, as
//! Kubernetes does), keeps two bounds at every step:
//!
//! ```text
//!  total units     ≤ desired + surge          (creates only up to this)
//!  available units ≥ desired − unavailable    (removes only above this)
//! ```
//!
//! Each call creates new-revision units while under the total bound, removes
//! old-revision units that are not available (that costs no availability),
//! then removes available old units only as far as availability stays above
//! the floor. As new units become available, the next call removes more old
//! ones, which makes room for more new ones: the rollout advances.
//!
//! Recreate removes every old unit first and creates new ones only once no
//! old replica is left, terminating ones included.
//!
//! A terminating replica (removed, its agent still stopping it) is in no
//! count and never removed again; it keeps its slot number taken until it
//! is gone, so a replacement never reuses its name.
//!
//! Drain: a unit whose replica sits on a draining node gets a replacement of
//! the same revision; the old replica is removed once the replacement is
//! available, or at once when the old one is not available anyway or the
//! replacement cannot be placed anywhere.

use std::collections::{BTreeSet, HashSet};

use drover_manifest::{IntOrPercent, Strategy};

use crate::store::{Booking, ObjectRef, ReplicaObserved, ReplicaRecord, StoredDeployment};

use super::replica_name;

/// The strategy's bounds for `desired` replicas, resolved to counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub surge: u32,
    pub unavailable: u32,
}

/// Kubernetes' rounding: maxSurge rounds up, maxUnavailable rounds down; if
/// both come out zero, one replica may be unavailable so the rollout moves.
pub fn bounds(strategy: &Strategy, desired: u32) -> Bounds {
    match strategy {
        Strategy::Recreate => Bounds {
            surge: 0,
            unavailable: desired,
        },
        Strategy::RollingUpdate {
            max_surge,
            max_unavailable,
        } => {
            let surge = resolve(*max_surge, desired, true);
            let unavailable = resolve(*max_unavailable, desired, false).min(desired);
            if surge == 0 && unavailable == 0 {
                Bounds {
                    surge: 0,
                    unavailable: 1,
                }
            } else {
                Bounds { surge, unavailable }
            }
        }
    }
}

/// The most units `desired` replicas may have under `strategy` at any
/// step: `desired + surge` (the first bound above). The planner creates only
/// up to it, and the state machine refuses a creation beyond it.
pub fn max_units(strategy: &Strategy, desired: u32) -> u32 {
    desired.saturating_add(bounds(strategy, desired).surge)
}

/// How many units one deployment's `replicas` make (terminating ones make
/// none): what `max_units` bounds.
pub fn unit_count(replicas: &[&ReplicaRecord], draining: &HashSet<String>) -> u32 {
    u32::try_from(units(replicas, draining).len()).unwrap_or(u32::MAX)
}

fn resolve(v: IntOrPercent, desired: u32, round_up: bool) -> u32 {
    match v {
        IntOrPercent::Int(n) => n,
        IntOrPercent::Percent(p) => {
            let scaled = u64::from(desired) * u64::from(p);
            let n = if round_up {
                scaled.div_ceil(100)
            } else {
                scaled / 100
            };
            u32::try_from(n).unwrap_or(u32::MAX)
        }
    }
}

/// What the planner wants done for one deployment.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Actions {
    pub create: Vec<ReplicaRecord>,
    pub remove: Vec<ObjectRef>,
    /// Replicas on a draining node removed before a replacement could run,
    /// because the replacement cannot be placed anywhere (for the log).
    pub dropped_without_replacement: Vec<ObjectRef>,
}

/// Counts of one deployment's replicas, kubectl's way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Units (a drained replica and its replacement count once).
    pub total: u32,
    /// Units running the current template.
    pub updated: u32,
    pub ready: u32,
    pub available: u32,
    /// Units running the current template that are available.
    pub updated_available: u32,
}

/// A replica, or a replica on a draining node with its replacement.
struct Unit<'a> {
    /// The replica that stays: the replacement when there is one.
    primary: &'a ReplicaRecord,
    /// The replica on a draining node this unit's primary replaces.
    drained: Option<&'a ReplicaRecord>,
}

impl Unit<'_> {
    fn members(&self) -> impl Iterator<Item = &ReplicaRecord> {
        std::iter::once(self.primary).chain(self.drained)
    }
    fn available(&self, min_ready: u32, now: i64) -> bool {
        self.members().any(|r| r.is_available(min_ready, now))
    }
    fn ready(&self) -> bool {
        self.members().any(ReplicaRecord::is_ready)
    }
}

fn units<'a>(replicas: &[&'a ReplicaRecord], draining: &HashSet<String>) -> Vec<Unit<'a>> {
    let on_draining = |r: &ReplicaRecord| r.node.as_ref().is_some_and(|n| draining.contains(n));
    let replaced: HashSet<&str> = replicas
        .iter()
        .filter_map(|r| r.replaces.as_deref())
        .collect();
    let mut out = Vec::new();
    // A terminating replica is on its way out: it counts for nothing but
    // its slot (see `SlotBook`) and, under Recreate, the wait.
    for r in replicas.iter().filter(|r| !r.is_terminating()) {
        // A drained replica with a replacement is counted with it.
        if on_draining(r) && replaced.contains(r.name.as_str()) {
            continue;
        }
        let drained = r.replaces.as_deref().and_then(|name| {
            replicas
                .iter()
                .copied()
                .find(|o| o.name == name && on_draining(o))
        });
        out.push(Unit {
            primary: r,
            drained,
        });
    }
    out
}

/// kubectl's READY / UP-TO-DATE / AVAILABLE for one deployment's replicas.
pub fn counts(
    d: &StoredDeployment,
    replicas: &[&ReplicaRecord],
    draining: &HashSet<String>,
    now: i64,
) -> Counts {
    let current = d.current_revision_hash();
    let min_ready = d.deployment.spec.min_ready_seconds;
    let mut c = Counts::default();
    for u in units(replicas, draining) {
        let updated = u.primary.revision == current;
        let available = u.available(min_ready, now);
        c.total += 1;
        c.updated += u32::from(updated);
        c.ready += u32::from(u.ready());
        c.available += u32::from(available);
        c.updated_available += u32::from(updated && available);
    }
    c
}

/// Plan the next step for one deployment. `replicas` are this deployment's.
pub fn plan(
    d: &StoredDeployment,
    replicas: &[&ReplicaRecord],
    draining: &HashSet<String>,
    now: i64,
) -> Actions {
    let spec = &d.deployment.spec;
    let current = d.current_revision_hash();
    let desired = spec.replicas;
    let min_ready = spec.min_ready_seconds;
    let units = units(replicas, draining);
    let mut out = Builder {
        d,
        now,
        slots: SlotBook::new(replicas),
        removed: HashSet::new(),
        actions: Actions::default(),
    };

    // Drain: a replacement per unit still on a draining node, and the old
    // replica removed once the replacement can take over.
    let on_draining = |r: &ReplicaRecord| r.node.as_ref().is_some_and(|n| draining.contains(n));
    for u in &units {
        match u.drained {
            None if on_draining(u.primary) => {
                out.create(&u.primary.revision, Some(u.primary.name.clone()));
            }
            Some(old) => {
                let replacement = u.primary;
                let unplaceable =
                    replacement.node.is_none() && !replacement.pending_reason.is_empty();
                let old_available = old.is_available(min_ready, now);
                if replacement.is_available(min_ready, now) || !old_available || unplaceable {
                    if unplaceable && old_available {
                        out.actions
                            .dropped_without_replacement
                            .push(object_ref(old));
                    }
                    out.remove(old);
                }
            }
            None => {}
        }
    }

    let (new_units, mut old_units): (Vec<&Unit<'_>>, Vec<&Unit<'_>>) =
        units.iter().partition(|u| u.primary.revision == current);
    // Oldest revisions and highest slots go first.
    let order = |u: &&Unit<'_>| {
        (
            d.revision_by_hash(&u.primary.revision).map(|r| r.number),
            std::cmp::Reverse(u.primary.slot),
        )
    };
    old_units.sort_by_key(order);
    let paused = d.rollout.paused;

    match &spec.strategy {
        Strategy::Recreate => {
            // As Kubernetes: no new replica starts while an old one still
            // runs, including one that is being stopped.
            let old_stopping = replicas
                .iter()
                .any(|r| r.is_terminating() && r.revision != current);
            if old_units.is_empty() && !old_stopping {
                out.scale_new(&new_units, desired, desired, &current, min_ready);
            } else if !paused {
                for u in &old_units {
                    out.remove_unit(u);
                }
            }
        }
        Strategy::RollingUpdate { .. } => {
            let b = bounds(&spec.strategy, desired);
            let total = units.len() as u32;
            // A paused or failed rollout starts no more new replicas than
            // plain scaling needs.
            let stopped = paused || d.rollout.failed.is_some();
            let max_total = if stopped && !old_units.is_empty() {
                total.min(desired)
            } else {
                max_units(&spec.strategy, desired)
            };
            let room = max_total.saturating_sub(total);
            let scaled_down_available =
                out.scale_new(&new_units, desired, room, &current, min_ready);
            if !stopped {
                let floor = desired.saturating_sub(b.unavailable);
                let mut available = (units.iter().filter(|u| u.available(min_ready, now)).count()
                    as u32)
                    .saturating_sub(scaled_down_available);
                // Not available: removing them costs nothing.
                for u in old_units.iter().filter(|u| !u.available(min_ready, now)) {
                    out.remove_unit(u);
                }
                for u in old_units.iter().filter(|u| u.available(min_ready, now)) {
                    if available <= floor {
                        break;
                    }
                    out.remove_unit(u);
                    available -= 1;
                }
            }
        }
    }
    out.actions
}

/// Collects one deployment's actions.
struct Builder<'d> {
    d: &'d StoredDeployment,
    now: i64,
    slots: SlotBook,
    removed: HashSet<String>,
    actions: Actions,
}

impl Builder<'_> {
    fn create(&mut self, rev: &str, replaces: Option<String>) {
        let meta = &self.d.deployment.metadata;
        let slot = self.slots.take(rev);
        let pod = self
            .d
            .revision_by_hash(rev)
            .map_or(&self.d.deployment.spec.template.spec, |r| &r.template.spec);
        self.actions.create.push(ReplicaRecord {
            namespace: meta.namespace.clone(),
            name: replica_name(&meta.name, rev, slot),
            deployment: meta.name.clone(),
            slot,
            revision: rev.to_string(),
            node: None,
            bound_at: 0,
            pending_reason: String::new(),
            created_unix_ms: self.now,
            observed: ReplicaObserved::default(),
            replaces,
            terminating_since_unix_ms: 0,
            booking: Some(Booking::of(pod)),
            stop_grace_seconds: None,
        });
    }

    fn remove(&mut self, r: &ReplicaRecord) {
        if self.removed.insert(r.name.clone()) {
            self.actions.remove.push(object_ref(r));
        }
    }

    fn remove_unit(&mut self, u: &Unit<'_>) {
        for r in u.members() {
            self.remove(r);
        }
    }

    /// Bring the current revision to `desired` units: create within `room`,
    /// or remove the excess (not available first, then highest slots).
    /// Returns how many available units it removed.
    fn scale_new(
        &mut self,
        new_units: &[&Unit<'_>],
        desired: u32,
        room: u32,
        current: &str,
        min_ready: u32,
    ) -> u32 {
        let have = new_units.len() as u32;
        let now = self.now;
        let mut removed_available = 0;
        if have < desired {
            for _ in 0..(desired - have).min(room) {
                self.create(current, None);
            }
        } else if have > desired {
            let mut sorted = new_units.to_vec();
            sorted.sort_by_key(|u| {
                (
                    u.available(min_ready, now),
                    std::cmp::Reverse(u.primary.slot),
                )
            });
            for u in sorted.into_iter().take((have - desired) as usize) {
                removed_available += u32::from(u.available(min_ready, now));
                self.remove_unit(u);
            }
        }
        removed_available
    }
}

/// Slot numbers in use per revision, handing out the lowest free one.
///
/// Slots are only ever taken while a plan is built, never given back, so
/// the lowest free slot only grows: each revision keeps where the last
/// search ended and the next starts there. Taking n slots costs
/// O(n log n) in all (searching from 0 each time cost O(n² log n): 1.4 s of
/// the leader for one 10,000-replica deployment).
struct SlotBook {
    /// `(revision, slots in use, no free slot below this)`.
    used: Vec<(String, BTreeSet<u32>, u32)>,
}

impl SlotBook {
    fn new(replicas: &[&ReplicaRecord]) -> SlotBook {
        let mut book = SlotBook { used: Vec::new() };
        for r in replicas {
            book.entry(&r.revision).0.insert(r.slot);
        }
        book
    }

    fn entry(&mut self, rev: &str) -> (&mut BTreeSet<u32>, &mut u32) {
        let i = match self.used.iter().position(|(r, _, _)| r == rev) {
            Some(i) => i,
            None => {
                self.used.push((rev.to_string(), BTreeSet::new(), 0));
                self.used.len() - 1
            }
        };
        let (_, used, free_from) = &mut self.used[i];
        (used, free_from)
    }

    fn take(&mut self, rev: &str) -> u32 {
        let (used, free_from) = self.entry(rev);
        let slot = (*free_from..)
            .find(|s| !used.contains(s))
            .unwrap_or(*free_from);
        used.insert(slot);
        *free_from = slot.saturating_add(1);
        slot
    }
}

fn object_ref(r: &ReplicaRecord) -> ObjectRef {
    ObjectRef {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
    }
}

/// The annotation that rolls a failed rollout back to the previous revision.
pub const AUTO_ROLLBACK_ANNOTATION: &str = "drover.io/auto-rollback";

/// What the leader should record about a rollout's progress, if anything
/// changed: `(progress_unix_ms, available_updated, failed)`.
pub fn progress(d: &StoredDeployment, c: &Counts, now: i64) -> Option<(i64, u32, Option<String>)> {
    let r = &d.rollout;
    if r.paused || r.failed.is_some() {
        return None;
    }
    if r.progress_unix_ms == 0 {
        return Some((now, c.updated_available, None));
    }
    if c.updated_available > r.available_updated {
        return Some((now, c.updated_available, None));
    }
    if c.updated_available < r.available_updated {
        return Some((r.progress_unix_ms, c.updated_available, None));
    }
    let spec = &d.deployment.spec;
    let desired = spec.replicas;
    if is_complete(spec.replicas, c) {
        return None;
    }
    let deadline = i64::from(spec.progress_deadline_seconds) * 1000;
    if now - r.progress_unix_ms <= deadline {
        return None;
    }
    let reason = format!(
        "ProgressDeadlineExceeded: revision {} made no progress for {}s ({} of {desired} updated replicas available)",
        d.current_revision_number(),
        spec.progress_deadline_seconds,
        c.updated_available,
    );
    Some((r.progress_unix_ms, c.updated_available, Some(reason)))
}

/// Every unit runs the current template and is available, and no others are left.
pub fn is_complete(desired: u32, c: &Counts) -> bool {
    c.updated == desired && c.updated_available == desired && c.total == desired
}

/// Whether a failed rollout should roll back by itself: asked for, there is
/// a revision to go back to, and the current one is not itself an automatic
/// rollback (two broken revisions must not take turns forever).
pub fn wants_auto_rollback(d: &StoredDeployment) -> bool {
    d.rollout.rolled_back.is_none()
        && d.deployment
            .metadata
            .annotations
            .get(AUTO_ROLLBACK_ANNOTATION)
            .is_some_and(|v| v == "true")
        && d.revisions.len() >= 2
}

#[cfg(test)]
mod tests {
    use drover_manifest::Strategy as Rollout;
    use proptest::prelude::{any, prop_assert, prop_assume, prop_oneof, proptest, ProptestConfig};
    use proptest::strategy::Strategy as _;

    use super::*;
    use crate::fixtures::deployment;
    use crate::store::{ReplicaPhase, RolloutState};

    fn stored(replicas: u32, strategy: Rollout) -> StoredDeployment {
        let mut d = deployment("web", replicas);
        d.spec.strategy = strategy;
        StoredDeployment {
            deployment: d,
            generation: 1,
            created_unix_ms: 0,
            updated_unix_ms: 0,
            revisions: Vec::new(),
            rollout: RolloutState::default(),
        }
    }

    proptest! {
        /// The slot book hands out the lowest free slot of a revision each
        /// time, as searching from 0 every time would.
        #[test]
        fn slots_taken_are_the_lowest_free_ones(
            held in proptest::collection::btree_set(0u32..64, 0..40),
            takes in proptest::collection::vec(any::<bool>(), 0..100),
        ) {
            let mut book = SlotBook {
                used: vec![("a".to_string(), held.clone(), 0)],
            };
            let mut naive = [held, BTreeSet::new()];
            for on_a in takes {
                let (rev, i) = if on_a { ("a", 0) } else { ("b", 1) };
                let want = (0..).find(|s| !naive[i].contains(s)).unwrap_or(0);
                naive[i].insert(want);
                prop_assert!(book.take(rev) == want, "revision {rev}: slot {want}");
            }
        }
    }

    fn rolling(surge: IntOrPercent, unavailable: IntOrPercent) -> Rollout {
        Rollout::RollingUpdate {
            max_surge: surge,
            max_unavailable: unavailable,
        }
    }

    /// A deployment's replicas as the store holds them, driven step by step.
    struct Sim {
        d: StoredDeployment,
        replicas: Vec<ReplicaRecord>,
        draining: HashSet<String>,
        now: i64,
    }

    impl Sim {
        /// `desired` ready replicas of the deployment's current template.
        fn settled(d: StoredDeployment) -> Sim {
            let mut sim = Sim {
                d,
                replicas: Vec::new(),
                draining: HashSet::new(),
                now: 1_000,
            };
            for _ in 0..4 {
                sim.step();
                sim.bind_all();
                sim.make_ready(|_| true);
            }
            sim.now += i64::from(sim.d.deployment.spec.min_ready_seconds) * 1000;
            assert!(is_complete(sim.d.deployment.spec.replicas, &sim.counts()));
            sim
        }

        fn step(&mut self) -> Actions {
            let refs: Vec<&ReplicaRecord> = self.replicas.iter().collect();
            let actions = plan(&self.d, &refs, &self.draining, self.now);
            self.replicas.retain(|r| {
                !actions
                    .remove
                    .iter()
                    .any(|o| o.name == r.name && o.namespace == r.namespace)
            });
            self.replicas.extend(actions.create.iter().cloned());
            self.now += 100;
            actions
        }

        /// Bind unbound replicas round-robin to n1..n3, skipping draining nodes.
        fn bind_all(&mut self) {
            let nodes: Vec<String> = ["n1", "n2", "n3"]
                .into_iter()
                .map(String::from)
                .filter(|n| !self.draining.contains(n))
                .collect();
            for (i, r) in self.replicas.iter_mut().enumerate() {
                if r.node.is_none() {
                    r.node = Some(nodes[i % nodes.len()].clone());
                }
            }
        }

        fn make_ready(&mut self, mut which: impl FnMut(&ReplicaRecord) -> bool) {
            let now = self.now;
            for r in &mut self.replicas {
                if let Some(node) = r.node.clone() {
                    if !r.is_ready() && which(r) {
                        r.observed = ReplicaObserved {
                            phase: ReplicaPhase::Running,
                            ready: true,
                            node,
                            ready_since_unix_ms: now,
                            ..Default::default()
                        };
                    }
                }
            }
        }

        fn counts(&self) -> Counts {
            let refs: Vec<&ReplicaRecord> = self.replicas.iter().collect();
            counts(&self.d, &refs, &self.draining, self.now)
        }

        fn change_template(&mut self, image: &str) {
            self.d.deployment.spec.template.spec.containers[0].image = image.into();
            self.d.rollout = RolloutState::default();
        }
    }

    /// Apply `actions` as the store does when every replica is bound: the
    /// removed ones stay, terminating, until `gone` drops them.
    fn terminate(sim: &mut Sim, actions: &Actions) {
        for r in &mut sim.replicas {
            if actions.remove.iter().any(|o| o.name == r.name) {
                r.terminating_since_unix_ms = sim.now;
            }
        }
    }

    #[test]
    fn recreate_waits_until_terminating_old_replicas_are_gone() {
        let mut sim = Sim::settled(stored(3, Rollout::Recreate));
        sim.change_template("drover/busybox:2");
        let refs: Vec<&ReplicaRecord> = sim.replicas.iter().collect();
        let a = plan(&sim.d, &refs, &sim.draining, sim.now);
        assert_eq!((a.create.len(), a.remove.len()), (0, 3));
        terminate(&mut sim, &a);
        let refs: Vec<&ReplicaRecord> = sim.replicas.iter().collect();
        let a = plan(&sim.d, &refs, &sim.draining, sim.now);
        assert!(
            a.create.is_empty() && a.remove.is_empty(),
            "nothing new while old ones are stopping, nothing removed twice: {a:?}"
        );
        assert_eq!(
            sim.counts().total,
            0,
            "terminating replicas count for nothing"
        );
        sim.replicas.truncate(2);
        let refs: Vec<&ReplicaRecord> = sim.replicas.iter().collect();
        assert!(plan(&sim.d, &refs, &sim.draining, sim.now)
            .create
            .is_empty());
        sim.replicas.clear();
        let a = sim.step();
        assert_eq!(a.create.len(), 3, "all gone: the new revision starts");
    }

    #[test]
    fn a_terminating_replica_keeps_its_slot_so_a_new_one_never_takes_its_name() {
        let mut sim = Sim::settled(stored(
            3,
            rolling(IntOrPercent::Int(1), IntOrPercent::Int(0)),
        ));
        sim.d.deployment.spec.replicas = 2;
        let refs: Vec<&ReplicaRecord> = sim.replicas.iter().collect();
        let a = plan(&sim.d, &refs, &sim.draining, sim.now);
        assert_eq!(a.remove.len(), 1);
        let stopping = a.remove[0].name.clone();
        terminate(&mut sim, &a);
        sim.d.deployment.spec.replicas = 3;
        let refs: Vec<&ReplicaRecord> = sim.replicas.iter().collect();
        let a = plan(&sim.d, &refs, &sim.draining, sim.now);
        assert_eq!(a.create.len(), 1, "scaled back up at once");
        assert_ne!(a.create[0].name, stopping);
        assert_eq!(a.create[0].slot, 3);
    }

    #[test]
    fn bounds_round_like_kubernetes() {
        let pct = IntOrPercent::Percent;
        let b = bounds(&rolling(pct(25), pct(25)), 10);
        assert_eq!(
            b,
            Bounds {
                surge: 3,
                unavailable: 2
            }
        );
        let b = bounds(&rolling(IntOrPercent::Int(0), pct(25)), 1);
        assert_eq!(
            b,
            Bounds {
                surge: 0,
                unavailable: 1
            },
            "both zero: one may be unavailable"
        );
        let b = bounds(&rolling(IntOrPercent::Int(2), IntOrPercent::Int(9)), 4);
        assert_eq!(
            b,
            Bounds {
                surge: 2,
                unavailable: 4
            }
        );
    }

    #[test]
    fn a_rolling_update_surges_then_replaces_as_new_replicas_become_ready() {
        let d = stored(4, rolling(IntOrPercent::Int(1), IntOrPercent::Int(0)));
        let mut sim = Sim::settled(d);
        let old_rev = sim.replicas[0].revision.clone();
        sim.change_template("drover/busybox:2");
        let a = sim.step();
        assert_eq!(
            (a.create.len(), a.remove.len()),
            (1, 0),
            "one surge replica, nothing removed"
        );
        let a = sim.step();
        assert!(
            a.create.is_empty() && a.remove.is_empty(),
            "waits while the new one is not ready"
        );
        sim.bind_all();
        sim.make_ready(|_| true);
        let a = sim.step();
        assert_eq!(
            a.remove.len(),
            1,
            "one old replica goes once the new one is available"
        );
        assert!(a.remove[0].name.contains(&old_rev));
        assert_eq!(
            a.create.len(),
            0,
            "room opens only after the removal is committed"
        );
        let a = sim.step();
        assert_eq!(a.create.len(), 1);
    }

    #[test]
    fn min_ready_seconds_delays_availability() {
        let mut d = stored(2, rolling(IntOrPercent::Int(1), IntOrPercent::Int(0)));
        d.deployment.spec.min_ready_seconds = 5;
        let mut sim = Sim::settled(d);
        sim.now += 10_000;
        sim.change_template("drover/busybox:2");
        sim.step();
        sim.bind_all();
        sim.make_ready(|_| true);
        assert_eq!(sim.counts().ready, 3);
        assert_eq!(
            sim.counts().available,
            2,
            "ready for less than minReadySeconds"
        );
        assert!(sim.step().remove.is_empty());
        sim.now += 5_000;
        assert_eq!(sim.counts().available, 3);
        assert_eq!(sim.step().remove.len(), 1);
    }

    #[test]
    fn recreate_removes_all_old_replicas_before_starting_new_ones() {
        let mut sim = Sim::settled(stored(3, Rollout::Recreate));
        sim.change_template("drover/busybox:2");
        let a = sim.step();
        assert_eq!((a.create.len(), a.remove.len()), (0, 3));
        let a = sim.step();
        assert_eq!((a.create.len(), a.remove.len()), (3, 0));
    }

    #[test]
    fn a_paused_or_failed_rollout_replaces_nothing_more() {
        for stop in [
            |s: &mut RolloutState| s.paused = true,
            |s: &mut RolloutState| s.failed = Some("ProgressDeadlineExceeded".into()),
        ] {
            let mut sim = Sim::settled(stored(
                4,
                rolling(IntOrPercent::Int(1), IntOrPercent::Int(1)),
            ));
            sim.change_template("drover/busybox:2");
            stop(&mut sim.d.rollout);
            let a = sim.step();
            assert!(a.create.is_empty() && a.remove.is_empty(), "{a:?}");
        }
    }

    #[test]
    fn scaling_alone_changes_only_the_count() {
        let mut sim = Sim::settled(stored(
            2,
            rolling(IntOrPercent::Int(1), IntOrPercent::Int(0)),
        ));
        sim.d.deployment.spec.replicas = 5;
        assert_eq!(sim.step().create.len(), 3);
        sim.d.deployment.spec.replicas = 1;
        let a = sim.step();
        assert_eq!(a.remove.len(), 4);
        assert_eq!(sim.replicas.len(), 1);
        assert_eq!(sim.replicas[0].slot, 0, "the highest slots go first");
    }

    #[test]
    fn drain_starts_a_replacement_before_removing_the_old_replica() {
        let mut sim = Sim::settled(stored(
            3,
            rolling(IntOrPercent::Int(1), IntOrPercent::Int(0)),
        ));
        let on_n1: Vec<String> = sim
            .replicas
            .iter()
            .filter(|r| r.node.as_deref() == Some("n1"))
            .map(|r| r.name.clone())
            .collect();
        assert_eq!(on_n1.len(), 1);
        sim.draining.insert("n1".into());
        let a = sim.step();
        assert_eq!(a.create.len(), 1);
        assert_eq!(a.create[0].replaces.as_deref(), Some(on_n1[0].as_str()));
        assert!(
            a.remove.is_empty(),
            "the old one runs until its replacement is ready"
        );
        assert_eq!(
            sim.counts().total,
            3,
            "a replica and its replacement count once"
        );
        assert!(sim.step().is_noop());
        sim.bind_all();
        sim.make_ready(|_| true);
        let a = sim.step();
        assert_eq!(a.remove.len(), 1);
        assert_eq!(a.remove[0].name, on_n1[0]);
        assert!(sim.replicas.iter().all(|r| r.node.as_deref() != Some("n1")));
        assert!(sim.step().is_noop());
        assert!(is_complete(3, &sim.counts()));
    }

    #[test]
    fn a_replica_whose_replacement_cannot_be_placed_is_removed_at_once() {
        let mut sim = Sim::settled(stored(
            3,
            rolling(IntOrPercent::Int(1), IntOrPercent::Int(0)),
        ));
        sim.draining.insert("n1".into());
        sim.step();
        for r in &mut sim.replicas {
            if r.node.is_none() {
                r.pending_reason = "no node has enough cpu".into();
            }
        }
        let a = sim.step();
        assert_eq!(a.remove.len(), 1);
        assert_eq!(a.dropped_without_replacement, a.remove);
    }

    #[test]
    fn a_failed_rollout_records_its_deadline_and_rolls_back_once() {
        let mut d = stored(2, rolling(IntOrPercent::Int(1), IntOrPercent::Int(0)));
        d.deployment.spec.progress_deadline_seconds = 10;
        d.rollout.progress_unix_ms = 1_000;
        let stuck = Counts {
            total: 3,
            updated: 1,
            ready: 2,
            available: 2,
            updated_available: 0,
        };
        assert_eq!(progress(&d, &stuck, 11_000), None, "within the deadline");
        let (since, available, failed) = progress(&d, &stuck, 11_001).expect("a record");
        assert_eq!((since, available), (1_000, 0));
        assert!(failed.is_some_and(|f| f.starts_with("ProgressDeadlineExceeded")));
        let better = Counts {
            updated_available: 1,
            ..stuck
        };
        assert_eq!(
            progress(&d, &better, 11_001),
            Some((11_001, 1, None)),
            "progress resets the clock"
        );

        let revision = |number| crate::store::Revision {
            number,
            hash: format!("h{number}"),
            template: d.deployment.spec.template.clone(),
            created_unix_ms: 0,
            change_cause: String::new(),
        };
        d.revisions = vec![revision(1), revision(2)];
        assert!(!wants_auto_rollback(&d), "not asked for");
        d.deployment
            .metadata
            .annotations
            .insert(AUTO_ROLLBACK_ANNOTATION.into(), "true".into());
        assert!(wants_auto_rollback(&d));
        d.rollout.rolled_back = Some("rolled back from revision 2".into());
        assert!(
            !wants_auto_rollback(&d),
            "a rollback that fails too stays put"
        );
    }

    impl Actions {
        fn is_noop(&self) -> bool {
            self.create.is_empty() && self.remove.is_empty()
        }
    }

    fn int_or_percent() -> impl proptest::strategy::Strategy<Value = IntOrPercent> {
        prop_oneof![
            (0u32..6).prop_map(IntOrPercent::Int),
            (0u32..=100).prop_map(IntOrPercent::Percent),
        ]
    }

    fn is_zero(v: IntOrPercent) -> bool {
        matches!(v, IntOrPercent::Int(0) | IntOrPercent::Percent(0))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever becomes ready when, every step keeps total ≤ desired +
        /// surge and available ≥ desired − unavailable.
        #[test]
        fn rolling_updates_never_break_the_bounds(
            desired in 1u32..25,
            surge in int_or_percent(),
            unavailable in int_or_percent(),
            readiness in proptest::collection::vec(any::<u64>(), 1..80),
        ) {
            prop_assume!(!(is_zero(surge) && is_zero(unavailable)));
            let strategy = rolling(surge, unavailable);
            let b = bounds(&strategy, desired);
            let mut sim = Sim::settled(stored(desired, strategy));
            sim.change_template("drover/busybox:2");
            for bits in readiness {
                sim.step();
                let c = sim.counts();
                prop_assert!(c.total <= desired + b.surge, "total {} > {desired} + {}", c.total, b.surge);
                prop_assert!(c.available + b.unavailable >= desired, "available {} < {desired} - {}", c.available, b.unavailable);
                sim.bind_all();
                let mut i = 0u32;
                sim.make_ready(|_| { i += 1; bits & (1 << (i % 64)) != 0 });
            }
        }

        /// When new replicas become ready, the rollout completes: every
        /// replica runs the new template, exactly `desired` of them.
        #[test]
        fn rolling_updates_complete_when_new_replicas_become_ready(
            desired in 1u32..25,
            surge in int_or_percent(),
            unavailable in int_or_percent(),
        ) {
            prop_assume!(!(is_zero(surge) && is_zero(unavailable)));
            let mut sim = Sim::settled(stored(desired, rolling(surge, unavailable)));
            sim.change_template("drover/busybox:2");
            let mut steps = 0;
            while !is_complete(desired, &sim.counts()) {
                steps += 1;
                prop_assert!(steps <= 4 * desired + 8, "no progress after {steps} steps: {:?}", sim.counts());
                sim.step();
                sim.bind_all();
                sim.make_ready(|_| true);
            }
            let new_rev = crate::store::revision(&sim.d.deployment.spec.template);
            prop_assert!(sim.replicas.iter().all(|r| r.revision == new_rev));
        }

        /// A new template that never becomes ready stalls the rollout at the
        /// floor: old replicas keep serving.
        #[test]
        fn a_never_ready_revision_stalls_above_the_floor(
            desired in 1u32..25,
            surge in int_or_percent(),
            unavailable in int_or_percent(),
        ) {
            prop_assume!(!(is_zero(surge) && is_zero(unavailable)));
            let strategy = rolling(surge, unavailable);
            let b = bounds(&strategy, desired);
            let mut sim = Sim::settled(stored(desired, strategy));
            sim.change_template("drover/busybox:2");
            for _ in 0..(2 * desired + 4) {
                sim.step();
                sim.bind_all();
            }
            let c = sim.counts();
            prop_assert!(c.available + b.unavailable >= desired);
            prop_assert!(c.total <= desired + b.surge);
            prop_assert!(sim.step().is_noop(), "stalled");
        }

        /// Recreate never runs old and new replicas at the same time.
        #[test]
        fn recreate_never_mixes_revisions(
            desired in 1u32..25,
            readiness in proptest::collection::vec(any::<u64>(), 1..40),
        ) {
            let mut sim = Sim::settled(stored(desired, Rollout::Recreate));
            let old = sim.replicas[0].revision.clone();
            sim.change_template("drover/busybox:2");
            for bits in readiness {
                sim.step();
                let revisions: HashSet<&str> =
                    sim.replicas.iter().map(|r| r.revision.as_str()).collect();
                prop_assert!(revisions.len() <= 1, "mixed: {revisions:?}");
                sim.bind_all();
                let mut i = 0u32;
                sim.make_ready(|_| { i += 1; bits & (1 << (i % 64)) != 0 });
            }
            for _ in 0..3 {
                sim.step();
                sim.bind_all();
                sim.make_ready(|_| true);
            }
            prop_assert!(is_complete(desired, &sim.counts()));
            prop_assert!(sim.replicas.iter().all(|r| r.revision != old));
        }

        /// A drain during a rolling update: the bounds hold (a drained
        /// replica and its replacement count once) and both finish.
        #[test]
        fn a_drain_during_a_rollout_keeps_the_bounds_and_both_finish(
            desired in 1u32..20,
            surge in int_or_percent(),
            unavailable in int_or_percent(),
            readiness in proptest::collection::vec(any::<u64>(), 1..30),
        ) {
            prop_assume!(!(is_zero(surge) && is_zero(unavailable)));
            let strategy = rolling(surge, unavailable);
            let b = bounds(&strategy, desired);
            let mut sim = Sim::settled(stored(desired, strategy));
            sim.change_template("drover/busybox:2");
            sim.draining.insert("n3".into());
            for bits in readiness {
                sim.step();
                let c = sim.counts();
                prop_assert!(c.total <= desired + b.surge, "{c:?}");
                prop_assert!(c.available + b.unavailable >= desired, "{c:?}");
                sim.bind_all();
                let mut i = 0u32;
                sim.make_ready(|_| { i += 1; bits & (1 << (i % 64)) != 0 });
            }
            for _ in 0..(4 * desired + 8) {
                sim.step();
                sim.bind_all();
                sim.make_ready(|_| true);
            }
            prop_assert!(is_complete(desired, &sim.counts()), "{:?}", sim.counts());
            prop_assert!(sim.replicas.iter().all(|r| r.node.as_deref() != Some("n3")));
            prop_assert!(sim.replicas.len() as u32 == desired);
        }

        /// Draining one of three nodes moves every replica off it, keeping at
        /// least `desired` available throughout.
        #[test]
        fn drain_keeps_every_replica_available(desired in 1u32..20) {
            let mut sim = Sim::settled(stored(desired, rolling(IntOrPercent::Int(1), IntOrPercent::Int(0))));
            sim.draining.insert("n2".into());
            for _ in 0..4 {
                sim.step();
                prop_assert!(sim.counts().available >= desired);
                sim.bind_all();
                sim.make_ready(|_| true);
            }
            prop_assert!(sim.replicas.iter().all(|r| r.node.as_deref() != Some("n2")));
            prop_assert!(sim.replicas.len() as u32 == desired);
        }
    }
}
