//! The assignment book: every node's full assignment set, kept up to date
//! from the store's change feed (while leading) and shared by all sessions:
//! one node's change rebuilds that node's set only.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use drover_manifest::PodTemplate;
use drover_proto::pb;
use prost::bytes::Bytes;

use super::config;
use crate::cluster::Cluster;
use crate::store::{ReplicaRecord, State, StoredDeployment, Touched};

/// Annotations of a deployment that agents act on.
const AGENT_ANNOTATION_PREFIX: &str = "drover.io/";

/// The least time between two rebuilds of the book.
const SETTLE: Duration = Duration::from_millis(10);
/// Between two rebuilds the book waits this many times as long as the last
/// one took (at least [`SETTLE`]), so it takes at most a quarter of a core.
const PACE: u32 = 3;

/// What one node must run, and the replicas it must confirm gone.
#[derive(Debug, Default, PartialEq)]
pub struct NodeSet {
    /// Sorted by replica id.
    pub assignments: Vec<Assigned>,
    /// Agent ids of the replicas bound here that are terminating, sorted:
    /// the agent stops them (they are not assigned) and reports each one
    /// gone, also one it never had.
    pub terminating: Vec<String>,
    /// When each of `terminating` was created, in the same order: not sent,
    /// but part of the set's equality, so that a name that came back as a
    /// new replica and is terminating again makes a set that differs from
    /// the one sent and goes to the agent, which repeats its `Gone` for it
    /// (`drover_agent::session::resend`).
    pub terminating_created: Vec<i64>,
    /// Grace periods (seconds) replacing the container's own for some of
    /// the terminating replicas (`delete --grace-period`).
    pub terminating_grace_seconds: HashMap<String, u32>,
    /// The ConfigMaps and Secrets the assigned replicas reference
    /// ([`super::config`]), whole in every message, sorted.
    pub config_objects: Vec<pb::ConfigObject>,
}

/// One replica in its node's set: what its `pb::Assignment` carries, with
/// what the replicas of one revision share held once. The book holds every
/// assigned replica; as `pb::Assignment`s (four strings and two maps each)
/// 100,000 of them held 44 MB on the leader, as these about 8 MB.
#[derive(Debug, Clone, PartialEq)]
pub struct Assigned {
    /// The replica's agent id (`namespace.name`).
    pub replica: Box<str>,
    pub slot: u32,
    /// The entry that bound it here (`ReplicaRecord::bound_at`): placed back
    /// after being moved away, it differs, so the agent says its status again.
    pub bound_at: u64,
    /// Its revision, and what that runs.
    pub runs: Arc<Runs>,
    /// Kubernetes' service variables for it ([`service_env`]): the same
    /// `Arc` for neighbours in the set that get the same variables.
    pub service_env: Arc<HashMap<String, String>>,
}

/// What every replica of one revision runs.
#[derive(Debug, PartialEq, Eq)]
pub struct Runs {
    pub namespace: String,
    pub deployment: String,
    pub revision: String,
    /// The template as JSON, one buffer per revision from book to book.
    pub template_json: Bytes,
    /// The deployment's annotations that agents act on.
    pub annotations: HashMap<String, String>,
}

impl Assigned {
    /// The assignment as agents get it.
    pub fn to_pb(&self) -> pb::Assignment {
        let runs = &*self.runs;
        pb::Assignment {
            replica: self.replica.to_string(),
            namespace: runs.namespace.clone(),
            deployment: runs.deployment.clone(),
            slot: self.slot,
            bound_at: self.bound_at,
            revision: runs.revision.clone(),
            template_json: runs.template_json.clone(),
            annotations: runs.annotations.clone(),
            service_env: HashMap::clone(&self.service_env),
        }
    }
}

impl NodeSet {
    /// Every assignment, as agents get them (the whole set).
    pub fn assignments_pb(&self) -> Vec<pb::Assignment> {
        self.assignments.iter().map(Assigned::to_pb).collect()
    }

    /// What changed from `sent` to this set: the assignments added or
    /// changed, and the replicas no longer assigned. Both sets are sorted by
    /// replica id, so this is one merge pass.
    pub fn changes_since(&self, sent: &NodeSet) -> (Vec<pb::Assignment>, Vec<String>) {
        let (mut changed, mut removed) = (Vec::new(), Vec::new());
        let (mut old, mut new) = (
            sent.assignments.iter().peekable(),
            self.assignments.iter().peekable(),
        );
        loop {
            match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some(o), Some(n)) if o.replica == n.replica => {
                    if o != n {
                        changed.push(n.to_pb());
                    }
                    old.next();
                    new.next();
                }
                (Some(o), Some(n)) if o.replica < n.replica => {
                    removed.push(o.replica.to_string());
                    old.next();
                }
                (Some(o), None) => {
                    removed.push(o.replica.to_string());
                    old.next();
                }
                (_, Some(n)) => {
                    changed.push(n.to_pb());
                    new.next();
                }
            }
        }
        (changed, removed)
    }
}

/// Node name → its set.
#[derive(Debug, Default)]
pub struct Assignments {
    by_node: HashMap<String, Arc<NodeSet>>,
    /// Every Service with its ready endpoints, sorted by key, the same for
    /// every node ([`super::services`]); the same `Arc` while unchanged.
    pub services: Arc<Vec<super::services::Route>>,
    /// The leadership term this book was built in, once the leader had
    /// applied everything committed before it (0: not built as leader yet).
    /// Sessions send nothing older: a new leader still applying its
    /// predecessor's last entries would hand agents a set that lacks them.
    pub term: u64,
    /// Every revision's template JSON, encoded once and shared by all the
    /// assignments that run it, from one book to the next.
    json: JsonCache,
    /// What each revision's replicas get, from one book to the next (a
    /// deployment's entries go when its record changes): the same
    /// `Arc<Runs>` in every book, so comparing sets compares pointers.
    revisions: RevisionCache,
}

/// `(namespace, deployment, revision hash)` → the revision's template as
/// JSON. A revision's template never changes (its hash names it), so an
/// entry stays right until its revision goes.
type JsonCache = Arc<std::sync::Mutex<HashMap<(String, String, String), Bytes>>>;

/// namespace → deployment → revision → what its replicas get.
type Revisions = HashMap<String, HashMap<String, HashMap<String, Revision>>>;
type RevisionCache = Arc<std::sync::Mutex<Revisions>>;

impl Assignments {
    /// Whether both books give every node the same set and the same
    /// Services (what sessions send; the term aside).
    #[cfg(test)]
    pub fn same_sets(&self, other: &Assignments) -> bool {
        let nodes: BTreeSet<&String> = self.by_node.keys().chain(other.by_node.keys()).collect();
        self.services == other.services
            && nodes
                .into_iter()
                .all(|n| self.for_node(n) == other.for_node(n))
    }

    pub fn for_node(&self, node: &str) -> Arc<NodeSet> {
        self.by_node.get(node).cloned().unwrap_or_default()
    }

    /// The book after `changes`: only the sets of the nodes they touch are
    /// built again (a node whose replicas changed, or that runs a replica of
    /// a deployment whose record changed); every other node keeps its set,
    /// the same `Arc`. With `changes.all`, every node's set is built.
    ///
    /// Each replica runs its own revision's template (during a rollout, old
    /// and new side by side); a replica whose revision is no longer kept is
    /// left out, so it stops.
    ///
    /// Cost: O(replicas on the touched nodes), plus one template encoding
    /// per revision they run.
    pub fn build(state: &State, previous: &Assignments, changes: &Touched) -> Assignments {
        // A ConfigMap or Secret changed: every node's set is built again
        // (config changes are rare; finding only the nodes that reference
        // the changed objects would need an index of references).
        let (mut by_node, nodes): (HashMap<String, Arc<NodeSet>>, BTreeSet<String>) =
            if changes.all || changes.config_objects {
                (
                    HashMap::new(),
                    state.nodes_with_replicas().cloned().collect(),
                )
            } else {
                let mut nodes = changes.nodes.clone();
                for d in &changes.deployment_records {
                    nodes.extend(state.replicas_of(d).filter_map(|r| r.node.clone()));
                }
                // A deleted deployment's replicas are still indexed under it.
                (previous.by_node.clone(), nodes)
            };
        let mut revisions = previous.revisions.lock().unwrap_or_else(|e| e.into_inner());
        if changes.all {
            revisions.clear();
        }
        for d in &changes.deployment_records {
            if let Some(deployments) = revisions.get_mut(&d.namespace) {
                deployments.remove(&d.name);
            }
        }
        let mut templates = TemplateCache {
            json: previous.json.clone(),
            revisions: &mut revisions,
        };
        for node in nodes {
            let set = node_set(state, &node, &mut templates);
            if set == NodeSet::default() {
                by_node.remove(&node);
                continue;
            }
            // Keep the old Arc when nothing changed, so sessions compare cheaply.
            let shared = match previous.by_node.get(&node) {
                Some(old) if **old == set => old.clone(),
                _ => Arc::new(set),
            };
            by_node.insert(node, shared);
        }
        let table = super::services::table(state, &previous.services, changes);
        let services = if super::services::same(&table, &previous.services) {
            previous.services.clone()
        } else {
            Arc::new(table)
        };
        // Revisions go only with a change to their deployment's record.
        if changes.all || !changes.deployment_records.is_empty() {
            forget_gone_revisions(state, &previous.json);
        }
        Assignments {
            by_node,
            services,
            term: 0,
            json: previous.json.clone(),
            revisions: previous.revisions.clone(),
        }
    }
}

/// One node's set, from the replicas bound to it.
fn node_set(state: &State, node: &str, templates: &mut TemplateCache) -> NodeSet {
    let mut set = NodeSet::default();
    let mut references = BTreeSet::new();
    // The revision of the previous replica, with what it runs: a node's
    // replicas come in key order, so a deployment's are adjacent and share
    // one lookup of their deployment, template and references.
    let mut last: Option<(&ReplicaRecord, Option<Arc<Runs>>)> = None;
    let mut terminating = Vec::new();
    for r in state.replicas_on(node) {
        if r.is_terminating() {
            if let Some(grace) = r.stop_grace_seconds {
                set.terminating_grace_seconds.insert(r.agent_id(), grace);
            }
            terminating.push((r.agent_id(), r.created_unix_ms));
            continue;
        }
        let same_revision = last.as_ref().is_some_and(|(p, _)| {
            p.revision == r.revision && p.deployment == r.deployment && p.namespace == r.namespace
        });
        if !same_revision {
            let found = templates.revision(state, &r.namespace, &r.deployment, &r.revision);
            if let Some((_, read)) = &found {
                references.extend(read.iter().cloned());
            }
            last = Some((r, found.map(|(runs, _)| runs)));
        }
        let Some((_, Some(runs))) = &last else {
            continue;
        };
        let env = service_env(state, r);
        let env = match set.assignments.last() {
            Some(prev) if *prev.service_env == env => prev.service_env.clone(),
            _ => Arc::new(env),
        };
        set.assignments.push(Assigned {
            replica: r.agent_id().into_boxed_str(),
            slot: r.slot,
            bound_at: r.bound_at,
            runs: runs.clone(),
            service_env: env,
        });
    }
    set.assignments.sort_by(|a, b| a.replica.cmp(&b.replica));
    terminating.sort();
    (set.terminating, set.terminating_created) = terminating.into_iter().unzip();
    set.config_objects = config::objects(state, &references);
    set
}

/// Kubernetes' service variables for `r`: those of the Services of its
/// namespace created no later than it (a replica's env is fixed when it is
/// created, as a pod's is). Headless Services give none. Cost: the Services
/// of one namespace.
fn service_env(state: &State, r: &ReplicaRecord) -> HashMap<String, String> {
    state
        .services(Some(&r.namespace))
        .filter(|s| s.created_unix_ms <= r.created_unix_ms)
        .flat_map(|s| drover_manifest::service_env(&s.service, s.cluster_ip))
        .collect()
}

/// What the replicas of one revision get: what it runs and the ConfigMaps
/// and Secrets it reads; `None` when its deployment is gone or no longer
/// keeps the revision.
type Revision = Option<(Arc<Runs>, Arc<Vec<config::Reference>>)>;

/// Templates as agents get them, encoded once per revision, with the
/// deployment's annotations that agents act on.
struct TemplateCache<'a> {
    /// The book's JSON encodings, shared across builds.
    json: JsonCache,
    /// The book's revisions, shared across builds. Looked up by `&str` at
    /// each level: a node's replicas of many deployments cost no key
    /// allocation and no deployment lookup but the first per revision.
    revisions: &'a mut Revisions,
}

impl TemplateCache<'_> {
    fn revision(
        &mut self,
        state: &State,
        namespace: &str,
        deployment: &str,
        hash: &str,
    ) -> Revision {
        if let Some(found) = self
            .revisions
            .get(namespace)
            .and_then(|d| d.get(deployment))
            .and_then(|r| r.get(hash))
        {
            return found.clone();
        }
        let found = state.deployment(namespace, deployment).and_then(|d| {
            let template = d.template_by_hash(hash)?;
            Some((
                self.runs(d, hash, template),
                Arc::new(config::references(namespace, template)),
            ))
        });
        self.revisions
            .entry(namespace.to_string())
            .or_default()
            .entry(deployment.to_string())
            .or_default()
            .insert(hash.to_string(), found.clone());
        found
    }

    fn runs(&self, d: &StoredDeployment, hash: &str, template: &PodTemplate) -> Arc<Runs> {
        let m = &d.deployment.metadata;
        let key = (m.namespace.clone(), m.name.clone(), hash.to_string());
        let mut shared = self.json.lock().unwrap_or_else(|e| e.into_inner());
        let template_json = shared
            .entry(key)
            .or_insert_with(|| serde_json::to_vec(template).unwrap_or_default().into())
            .clone();
        let annotations = m
            .annotations
            .iter()
            .filter(|(k, _)| k.starts_with(AGENT_ANNOTATION_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Arc::new(Runs {
            namespace: m.namespace.clone(),
            deployment: m.name.clone(),
            revision: hash.to_string(),
            template_json,
            annotations,
        })
    }
}

/// Drop the JSON of revisions no deployment keeps any more, once the
/// cache holds more entries than the state has revisions.
fn forget_gone_revisions(state: &State, json: &JsonCache) {
    let mut json = json.lock().unwrap_or_else(|e| e.into_inner());
    let kept: usize = state.deployments(None).map(|d| d.revisions.len() + 1).sum();
    if json.len() <= kept {
        return;
    }
    json.retain(|(namespace, name, hash), _| {
        state
            .deployment(namespace, name)
            .is_some_and(|d| d.template_by_hash(hash).is_some())
    });
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
            let feed = cluster.store.subscribe();
            // How long the last rebuild took.
            let mut last_build = Duration::ZERO;
            loop {
                let view = *leadership.borrow_and_update();
                if view.is_leader && view.term != current_term {
                    // A new term's book is built whole.
                    feed.reset();
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
                    let changes = feed.take();
                    if !changes.is_empty() || previous.term != current_term {
                        // Off the runtime's worker threads, as the
                        // scheduler: a rebuild of many nodes' sets must not
                        // hold up the sessions' heartbeats.
                        let state = cluster.store.snapshot();
                        let started = std::time::Instant::now();
                        let built = tokio::task::spawn_blocking(move || {
                            Assignments::build(&state, &previous, &changes)
                        })
                        .await;
                        last_build = started.elapsed();
                        match built {
                            Ok(mut a) => {
                                a.term = current_term;
                                tx.send_replace(Arc::new(a));
                            }
                            Err(e) => {
                                // The changes taken are lost with it: the
                                // next book is built whole.
                                error!(error = %e, "rebuilding the assignment book failed");
                                feed.reset();
                            }
                        }
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = applied.changed() => if r.is_err() { return },
                    r = leadership.changed() => if r.is_err() { return },
                }
                // Let a burst of applies settle into one rebuild, and wait
                // [`PACE`] times as long as the last rebuild took: under a
                // stream of bindings (100,000 replicas placed at once, every
                // node touched by every rebuild) each rebuild then covers
                // more changes for about the same cost, and every session
                // sends its agent fewer, larger changes (both the leader's
                // and the agents' CPU over the followers' fell by about a
                // tenth from waiting once to waiting three times; docs/
                // performance.md, session 20). A quiet cluster's rebuilds
                // take well under a millisecond: the 10 ms floor rules.
                tokio::time::sleep((last_build * PACE).max(SETTLE)).await;
            }
        });
        AssignmentBook { rx }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Assignments>> {
        self.rx.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{prop_assert_eq, proptest};

    fn set(replicas: &[(u8, u8)]) -> NodeSet {
        let mut s = NodeSet::default();
        for (id, rev) in replicas {
            s.assignments.push(Assigned {
                replica: format!("default.r{id:03}").into_boxed_str(),
                slot: 0,
                bound_at: 1,
                runs: Arc::new(Runs {
                    namespace: "default".into(),
                    deployment: "r".into(),
                    revision: format!("rev{rev}"),
                    template_json: Bytes::new(),
                    annotations: HashMap::new(),
                }),
                service_env: Arc::default(),
            });
        }
        s.assignments.sort_by(|a, b| a.replica.cmp(&b.replica));
        s.assignments.dedup_by(|a, b| a.replica == b.replica);
        s
    }

    #[test]
    fn a_change_names_what_was_added_changed_and_removed_only() {
        let before = set(&[(1, 1), (2, 1), (3, 1)]);
        let after = set(&[(2, 1), (3, 2), (4, 1)]);
        let (changed, removed) = after.changes_since(&before);
        let names: Vec<&str> = changed.iter().map(|a| a.replica.as_str()).collect();
        assert_eq!(names, ["default.r003", "default.r004"]);
        assert_eq!(removed, ["default.r001"]);
        assert_eq!(after.changes_since(&after), (vec![], vec![]));
    }

    #[test]
    fn a_replica_placed_back_on_its_node_is_a_change_there() {
        let before = set(&[(1, 1), (2, 1)]);
        let mut after = set(&[(1, 1), (2, 1)]);
        after.assignments[1].bound_at = 7;
        let (changed, removed) = after.changes_since(&before);
        assert_eq!(changed.len(), 1);
        assert_eq!(
            (changed[0].replica.as_str(), changed[0].bound_at),
            ("default.r002", 7)
        );
        assert!(removed.is_empty());
    }

    proptest! {
        #[test]
        fn applying_the_change_to_the_old_set_gives_the_new_one(
            before in proptest::collection::vec((0u8..20, 0u8..3), 0..20),
            after in proptest::collection::vec((0u8..20, 0u8..3), 0..20),
        ) {
            let (before, after) = (set(&before), set(&after));
            let (changed, removed) = after.changes_since(&before);
            let mut by_id: std::collections::BTreeMap<String, pb::Assignment> = before
                .assignments_pb()
                .into_iter()
                .map(|a| (a.replica.clone(), a))
                .collect();
            for id in &removed {
                by_id.remove(id);
            }
            for a in changed {
                by_id.insert(a.replica.clone(), a);
            }
            prop_assert_eq!(by_id.into_values().collect::<Vec<_>>(), after.assignments_pb());
        }
    }
}
