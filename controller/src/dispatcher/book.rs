//! The assignment book: every node's full assignment set, rebuilt from the
//! store once per applied change (while leading) and shared by all sessions.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use drover_proto::pb;

use super::config;
use crate::cluster::Cluster;
use crate::store::{revision, Store, StoreError, StoredDeployment};

/// Annotations of a deployment that agents act on.
const AGENT_ANNOTATION_PREFIX: &str = "drover.io/";

/// What one node must run, and the replicas it must confirm gone.
#[derive(Debug, Default, PartialEq)]
pub struct NodeSet {
    /// Sorted by replica id.
    pub assignments: Vec<pb::Assignment>,
    /// Agent ids of the replicas bound here that are terminating, sorted:
    /// the agent stops them (they are not assigned) and reports each one
    /// gone, also one it never had.
    pub terminating: Vec<String>,
    /// Grace periods (seconds) replacing the container's own for some of
    /// the terminating replicas (`delete --grace-period`).
    pub terminating_grace_seconds: HashMap<String, u32>,
    /// The ConfigMaps and Secrets the assigned replicas reference
    /// ([`super::config`]), sorted.
    pub config_objects: Vec<pb::ConfigObject>,
}

/// Node name → its set.
#[derive(Debug, Default)]
pub struct Assignments {
    by_node: HashMap<String, Arc<NodeSet>>,
    /// The leadership term this book was built in, once the leader had
    /// applied everything committed before it (0: not built as leader yet).
    /// Sessions send nothing older: a new leader still applying its
    /// predecessor's last entries would hand agents a set that lacks them.
    pub term: u64,
}

impl Assignments {
    pub fn for_node(&self, node: &str) -> Arc<NodeSet> {
        self.by_node.get(node).cloned().unwrap_or_default()
    }

    /// Build from the store. Each replica runs its own revision's template
    /// (during a rollout, old and new side by side); a replica whose revision
    /// is no longer kept is left out, so it stops.
    pub fn build(store: &Store, previous: &Assignments) -> Result<Assignments, StoreError> {
        let stored = store.deployments(None)?;
        let deployments: HashMap<(String, String), Templates<'_>> = stored
            .iter()
            .map(|d| {
                let m = &d.deployment.metadata;
                let annotations: HashMap<String, String> = m
                    .annotations
                    .iter()
                    .filter(|(k, _)| k.starts_with(AGENT_ANNOTATION_PREFIX))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let templates = Templates {
                    current: revision(&d.deployment.spec.template),
                    current_json: serde_json::to_string(&d.deployment.spec.template)
                        .unwrap_or_default(),
                    deployment: d,
                    old: HashMap::new(),
                    annotations,
                };
                ((m.namespace.clone(), m.name.clone()), templates)
            })
            .collect();
        let mut deployments = deployments;
        let mut by_node: HashMap<String, NodeSet> = HashMap::new();
        // Config references per template, and per node.
        let mut references: HashMap<(String, String, String), Vec<config::Reference>> =
            HashMap::new();
        let mut wanted: HashMap<String, BTreeSet<config::Reference>> = HashMap::new();
        for r in store.replicas(None)? {
            let Some(node) = r.node.clone() else { continue };
            if r.is_terminating() {
                let set = by_node.entry(node).or_default();
                if let Some(grace) = r.stop_grace_seconds {
                    set.terminating_grace_seconds.insert(r.agent_id(), grace);
                }
                set.terminating.push(r.agent_id());
                continue;
            }
            let Some(templates) = deployments.get_mut(&(r.namespace.clone(), r.deployment.clone()))
            else {
                continue;
            };
            let Some(template) = templates.json(&r.revision) else {
                continue;
            };
            let refs = references
                .entry((
                    r.namespace.clone(),
                    r.deployment.clone(),
                    r.revision.clone(),
                ))
                .or_insert_with(|| templates.references(&r.revision));
            wanted
                .entry(node.clone())
                .or_default()
                .extend(refs.iter().cloned());
            by_node
                .entry(node)
                .or_default()
                .assignments
                .push(pb::Assignment {
                    replica: r.agent_id(),
                    namespace: r.namespace.clone(),
                    deployment: r.deployment.clone(),
                    slot: r.slot,
                    revision: r.revision.clone(),
                    template_json: template,
                    annotations: templates.annotations.clone(),
                });
        }
        for (node, objects) in config::objects_by_node(store, &wanted)? {
            by_node.entry(node).or_default().config_objects = objects;
        }
        let by_node = by_node
            .into_iter()
            .map(|(node, mut set)| {
                set.assignments.sort_by(|a, b| a.replica.cmp(&b.replica));
                set.terminating.sort();
                // Keep the old Arc when nothing changed, so sessions compare cheaply.
                let shared = match previous.by_node.get(&node) {
                    Some(old) if **old == set => old.clone(),
                    _ => Arc::new(set),
                };
                (node, shared)
            })
            .collect();
        Ok(Assignments { by_node, term: 0 })
    }
}

/// One deployment's templates as agents get them: the current one always
/// encoded, an old revision's only once a replica still runs it (during a
/// rollout), so a long revision history costs nothing here.
struct Templates<'a> {
    deployment: &'a StoredDeployment,
    current: String,
    current_json: String,
    old: HashMap<String, Option<String>>,
    annotations: HashMap<String, String>,
}

impl Templates<'_> {
    /// The ConfigMaps and Secrets the revision's template references.
    fn references(&self, hash: &str) -> Vec<config::Reference> {
        let d = self.deployment;
        let template = if hash == self.current {
            Some(&d.deployment.spec.template)
        } else {
            d.revision_by_hash(hash).map(|r| &r.template)
        };
        template.map_or_else(Vec::new, |t| {
            config::references(&d.deployment.metadata.namespace, t)
        })
    }

    fn json(&mut self, hash: &str) -> Option<String> {
        if hash == self.current {
            return Some(self.current_json.clone());
        }
        let deployment = self.deployment;
        self.old
            .entry(hash.to_string())
            .or_insert_with(|| {
                deployment
                    .revision_by_hash(hash)
                    .map(|r| serde_json::to_string(&r.template).unwrap_or_default())
            })
            .clone()
    }
}

/// Publishes [`Assignments`] to the sessions.
#[derive(Clone)]
pub struct AssignmentBook {
    rx: watch::Receiver<Arc<Assignments>>,
}

impl AssignmentBook {
    pub fn start(cluster: Cluster, shutdown: CancellationToken) -> AssignmentBook {
        let (tx, rx) = watch::channel(Arc::new(Assignments::default()));
        tokio::spawn(async move {
            let mut applied = cluster.handle.applied();
            let mut leadership = cluster.handle.leadership_watch();
            let mut current_term = 0;
            loop {
                let view = *leadership.borrow_and_update();
                if view.is_leader && view.term != current_term {
                    // The state is current once a ReadIndex round of this
                    // term succeeds (as for the leader loops).
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        r = cluster.read_barrier(None) => match r {
                            Ok(()) => current_term = view.term,
                            Err(e) => {
                                debug!(error = %e.message(), "assignment book: state not current yet; retrying");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        },
                    }
                }
                if view.is_leader && view.term == current_term {
                    let previous = tx.borrow().clone();
                    match Assignments::build(&cluster.store, &previous) {
                        Ok(mut a) => {
                            a.term = current_term;
                            tx.send_replace(Arc::new(a));
                        }
                        Err(e) => warn!(error = %e, "could not build the assignment book"),
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = applied.changed() => if r.is_err() { return },
                    r = leadership.changed() => if r.is_err() { return },
                }
                // Let a burst of applies settle into one rebuild.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        AssignmentBook { rx }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Assignments>> {
        self.rx.clone()
    }
}
