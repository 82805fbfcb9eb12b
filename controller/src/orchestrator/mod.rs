//! The orchestrator: deployments → exactly `replicas` replica objects each.
//!
//! ```text
//!  deployments ─┐
//!               ├─ reconcile() ──▶ Plan { create, remove } ──▶ Command::Reconcile
//!  replicas   ──┘   (pure)
//! ```
//!
//! A replica is named `<deployment>-<revision>-<slot>`, where the revision is
//! a hash of the pod template and the slot a number unique within the
//! revision (the lowest free one). Scaling down removes the highest slots; a
//! template change is rolled out by [`rollout::plan`] within the strategy's
//! bounds; a replica on a draining node is replaced before it is removed; a
//! deleted deployment loses all its replicas.

pub mod rollout;

use std::collections::{BTreeMap, HashSet};

use crate::store::{ObjectRef, ReplicaRecord, StoredDeployment};

pub fn replica_name(deployment: &str, revision: &str, slot: u32) -> String {
    format!("{deployment}-{revision}-{slot}")
}

/// What the orchestrator wants changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub create: Vec<ReplicaRecord>,
    pub remove: Vec<ObjectRef>,
    /// Replicas on draining nodes removed with no replacement running,
    /// because none could be placed (the leader logs them).
    pub dropped_without_replacement: Vec<ObjectRef>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.remove.is_empty()
    }
}

/// Compare desired deployments with existing replicas. `draining` names the
/// nodes being drained; `now` stamps created replicas and decides which
/// replicas have been ready for `minReadySeconds`.
pub fn reconcile(
    deployments: &[StoredDeployment],
    replicas: &[ReplicaRecord],
    draining: &HashSet<String>,
    now_unix_ms: i64,
) -> Plan {
    let mut by_deployment = group(replicas);
    let mut plan = Plan::default();
    for d in deployments {
        let meta = &d.deployment.metadata;
        let existing = by_deployment
            .remove(&(meta.namespace.as_str(), meta.name.as_str()))
            .unwrap_or_default();
        let actions = rollout::plan(d, &existing, draining, now_unix_ms);
        plan.create.extend(actions.create);
        plan.remove.extend(actions.remove);
        plan.dropped_without_replacement
            .extend(actions.dropped_without_replacement);
    }
    // Whatever is left belongs to deleted deployments.
    for r in by_deployment.into_values().flatten() {
        if !r.is_terminating() {
            plan.remove.push(object_ref(r));
        }
    }
    plan.remove.sort();
    plan
}

/// Replicas grouped by `(namespace, deployment)`.
pub fn group(replicas: &[ReplicaRecord]) -> BTreeMap<(&str, &str), Vec<&ReplicaRecord>> {
    let mut by_deployment: BTreeMap<(&str, &str), Vec<&ReplicaRecord>> = BTreeMap::new();
    for r in replicas {
        by_deployment
            .entry((r.namespace.as_str(), r.deployment.as_str()))
            .or_default()
            .push(r);
    }
    by_deployment
}

fn object_ref(r: &ReplicaRecord) -> ObjectRef {
    ObjectRef {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::deployment;
    use crate::store::revision;

    fn stored(name: &str, replicas: u32) -> StoredDeployment {
        StoredDeployment {
            deployment: deployment(name, replicas),
            generation: 1,
            created_unix_ms: 0,
            updated_unix_ms: 0,
            revisions: Vec::new(),
            rollout: Default::default(),
        }
    }

    /// Apply a plan to a replica list, as the store would.
    fn run(
        deployments: &[StoredDeployment],
        mut replicas: Vec<ReplicaRecord>,
    ) -> Vec<ReplicaRecord> {
        let plan = reconcile(deployments, &replicas, &HashSet::new(), 7);
        replicas.retain(|r| !plan.remove.contains(&object_ref(r)));
        replicas.extend(plan.create);
        replicas.sort_by(|a, b| (&a.deployment, a.slot).cmp(&(&b.deployment, b.slot)));
        replicas
    }

    fn names(replicas: &[ReplicaRecord]) -> Vec<String> {
        replicas.iter().map(|r| r.name.clone()).collect()
    }

    #[test]
    fn a_new_deployment_gets_one_replica_per_slot_with_readable_names() {
        let d = stored("web", 3);
        let rev = revision(&d.deployment.spec.template);
        let replicas = run(&[d], vec![]);
        assert_eq!(
            names(&replicas),
            [0, 1, 2].map(|s| format!("web-{rev}-{s}"))
        );
        assert!(replicas
            .iter()
            .all(|r| r.node.is_none() && r.created_unix_ms == 7));
        assert_eq!(rev.len(), 10);
    }

    #[test]
    fn reconcile_is_idempotent() {
        let ds = [stored("web", 3), stored("api", 2)];
        let replicas = run(&ds, vec![]);
        assert!(reconcile(&ds, &replicas, &HashSet::new(), 8).is_empty());
    }

    #[test]
    fn scale_down_removes_the_highest_slots_and_scale_up_refills() {
        let replicas = run(&[stored("web", 5)], vec![]);
        let down = run(&[stored("web", 2)], replicas);
        assert_eq!(down.iter().map(|r| r.slot).collect::<Vec<_>>(), [0, 1]);
        let up = run(&[stored("web", 4)], down.clone());
        assert_eq!(up.iter().map(|r| r.slot).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(up[..2], down[..], "existing replicas are kept as they are");
    }

    #[test]
    fn a_template_change_replaces_every_replica() {
        let old = run(&[stored("web", 2)], vec![]);
        let mut changed = stored("web", 2);
        changed.deployment.spec.template.spec.containers[0].image = "drover/busybox:2".into();
        // Nothing is ready here, so the rollout is bounded by surge alone.
        let mut new = old.clone();
        for _ in 0..4 {
            new = run(std::slice::from_ref(&changed), new);
        }
        assert_eq!(new.len(), 2);
        assert!(new.iter().all(|r| old.iter().all(|o| o.name != r.name)));
        assert!(new.iter().all(|r| r.revision != old[0].revision));
    }

    #[test]
    fn a_deleted_deployment_loses_its_replicas_and_others_stay() {
        let replicas = run(&[stored("web", 2), stored("api", 1)], vec![]);
        let left = run(&[stored("api", 1)], replicas);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].deployment, "api");
    }

    #[test]
    fn duplicate_slots_are_collapsed() {
        let mut replicas = run(&[stored("web", 1)], vec![]);
        let mut twin = replicas[0].clone();
        twin.name.push_str("-twin");
        replicas.push(twin);
        let plan = reconcile(&[stored("web", 1)], &replicas, &HashSet::new(), 0);
        assert_eq!(plan.remove.len(), 1);
        assert!(plan.create.is_empty());
    }

    #[test]
    fn the_revision_is_stable_and_ignores_replica_count() {
        let a = revision(&stored("web", 1).deployment.spec.template);
        let b = revision(&stored("web", 9).deployment.spec.template);
        assert_eq!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
