//! `Watch`: `droverctl get KIND -w`, served by any controller from its own
//! history of recent states (`store/history.rs`).
//!
//! ```text
//!  from_index 0 ── read barrier, list at applied index A ──▶ batch {A, initial}
//!  from_index F ── (wait until F is applied here) ─────────▶ cursor F
//!  loop: each version v after the cursor:
//!          diff(state before v, v.state) on the keys v touched, for this kind
//!          ──▶ batch {v.index, ADDED|MODIFIED|DELETED rows}      cursor = v.index
//!        nothing for a while ──▶ batch {applied, no events} (a bookmark)
//!        cursor older than the history ──▶ OUT_OF_RANGE: the client lists again
//! ```
//!
//! An index names the same state on every controller, so the batches after
//! an index are the same wherever they are computed: a client resumes on
//! another controller from the last index it received, and sees no change
//! twice and none skipped. A row is what the kind's List call answers, so a
//! watch line and a `get` line are the same. Each version's diff looks only
//! at the keys it touched (a replica's, its deployment's, its node's), never
//! at every object of the kind.
//!
//! Adding a kind: a `WatchKind` value, and its arms in [`Kind`]'s keys and
//! row functions.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::Status;

use drover_proto::pb::watch_event::Object;
use drover_proto::selector::{self, ListSelector};
use drover_proto::{names, pb};

use super::config::{config_map_pb, secret_pb};
use super::control::{deployment_pb, replica_labels};
use super::services::{endpoints_pb, service_pb};
use crate::cluster::wire::observed_to_pb;
use crate::cluster::{now_unix_ms, Cluster};
use crate::store::history::{Since, KEPT_VERSIONS};
use crate::store::{
    NodeCondition, NodeRecord, ObjectRef, ReplicaRecord, State, StoredDeployment, Touched,
};

pub(super) type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchBatch, Status>> + Send>>;

/// The most events in one message; a bigger batch is split (`more`).
const MAX_EVENTS: usize = 500;
/// How many versions one round diffs before it sends what it has.
const VERSIONS_PER_ROUND: usize = 256;
/// An idle watch still hears the applied index this often, so that a
/// resume starts near the end of the history rather than before it.
const BOOKMARK: Duration = Duration::from_secs(1);
/// How long a resume waits for this controller to apply the index asked for.
const CATCH_UP: Duration = Duration::from_secs(30);

/// Start a watch: validate, list if asked, then stream from the history.
pub(super) async fn watch(cluster: &Cluster, req: pb::WatchRequest) -> Result<WatchStream, Status> {
    let view = View::new(&req)?;
    let store = cluster.store.clone();
    let id = cluster.handle.id();
    let mut versions = store.watch_versions();
    let (tx, rx) = mpsc::channel(16);
    let mut cursor = req.from_index;
    let mut initial = None;
    if cursor == 0 {
        cluster.read_barrier(None).await?;
        let state = store.snapshot();
        cursor = state.applied().0;
        let now = now_unix_ms();
        let events = view
            .all_keys(&state)
            .iter()
            .filter_map(|k| view.row(&state, k, now))
            .map(|o| event(pb::WatchEventType::Added, o))
            .collect();
        initial = Some(events);
    }
    tokio::spawn(async move {
        if let Some(events) = initial {
            if !send(&tx, cursor, true, events).await {
                return;
            }
        }
        let mut sent_index = cursor;
        let mut sent_at = Instant::now();
        let mut waiting_since: Option<Instant> = None;
        loop {
            // Read the applied index before the history: every version up
            // to it is then in what `since` returns.
            let applied = store.applied().0;
            match store.since(cursor, VERSIONS_PER_ROUND) {
                Since::Gone { oldest } => {
                    let _ = tx
                        .send(Err(Status::out_of_range(format!(
                            "index {cursor} is older than the last {KEPT_VERSIONS} changes \
                             controller {id} keeps (from index {oldest}); list again"
                        ))))
                        .await;
                    return;
                }
                Since::Ahead { applied } => {
                    let since = *waiting_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > CATCH_UP {
                        let _ = tx
                            .send(Err(Status::unavailable(format!(
                                "controller {id} has applied up to index {applied}, behind the \
                                 watch's index {cursor}; ask another controller"
                            ))))
                            .await;
                        return;
                    }
                }
                Since::Versions { base, after } => {
                    waiting_since = None;
                    let full = after.len() == VERSIONS_PER_ROUND;
                    let mut prev = base;
                    for v in after {
                        let events = view.diff(&prev, &v.state, &v.touched, now_unix_ms());
                        if !events.is_empty() {
                            if !send(&tx, v.index, false, events).await {
                                return;
                            }
                            sent_index = v.index;
                            sent_at = Instant::now();
                        }
                        cursor = v.index;
                        prev = v.state;
                    }
                    if full {
                        continue;
                    }
                    cursor = cursor.max(applied);
                    if cursor > sent_index && sent_at.elapsed() >= BOOKMARK {
                        if !send(&tx, cursor, false, Vec::new()).await {
                            return;
                        }
                        sent_index = cursor;
                        sent_at = Instant::now();
                    }
                }
            }
            let pause = if waiting_since.is_some() {
                Duration::from_millis(100)
            } else {
                BOOKMARK
            };
            tokio::select! {
                changed = versions.changed() => if changed.is_err() {
                    let _ = tx.send(Err(Status::unavailable("controller shutting down"))).await;
                    return;
                },
                () = tokio::time::sleep(pause) => {}
                () = tx.closed() => return,
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Send `events` at `index` in messages of at most [`MAX_EVENTS`]; false
/// when the client went away.
///
/// Each message holds its own events only: splitting the rest off the
/// front instead left every message with the whole list's allocation and
/// moved the rest once per message, so a list of 100,000 replicas to a
/// client that lagged pinned hundreds of MiB in the stream's queue (a
/// follower at 1 GiB) and moved 10 million events.
async fn send(
    tx: &mpsc::Sender<Result<pb::WatchBatch, Status>>,
    index: u64,
    initial: bool,
    events: Vec<pb::WatchEvent>,
) -> bool {
    let mut events = events.into_iter();
    loop {
        let batch: Vec<pb::WatchEvent> = events.by_ref().take(MAX_EVENTS).collect();
        let more = events.len() > 0;
        let batch = pb::WatchBatch {
            index,
            initial,
            events: batch,
            more,
        };
        if tx.send(Ok(batch)).await.is_err() {
            return false;
        }
        if !more {
            return true;
        }
    }
}

fn event(kind: pb::WatchEventType, object: Object) -> pb::WatchEvent {
    pb::WatchEvent {
        r#type: kind as i32,
        object: Some(object),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Deployment,
    Replica,
    Node,
    ConfigMap,
    Secret,
    Service,
    Endpoints,
}

/// What one watch shows: a kind, a namespace (or all) and the selectors.
struct View {
    kind: Kind,
    namespace: Option<String>,
    select: ListSelector,
}

impl View {
    fn new(req: &pb::WatchRequest) -> Result<View, Status> {
        let (kind, plural, fields) = match req.kind() {
            pb::WatchKind::Deployment => {
                (Kind::Deployment, "deployments", selector::DEPLOYMENT_FIELDS)
            }
            pb::WatchKind::Replica => (Kind::Replica, "replicas", selector::REPLICA_FIELDS),
            pb::WatchKind::Node => (Kind::Node, "nodes", selector::NODE_FIELDS),
            pb::WatchKind::ConfigMap => (Kind::ConfigMap, "configmaps", &[][..]),
            pb::WatchKind::Secret => (Kind::Secret, "secrets", &[][..]),
            pb::WatchKind::Service => (Kind::Service, "services", &[][..]),
            pb::WatchKind::Endpoints => (Kind::Endpoints, "endpoints", &[][..]),
            pb::WatchKind::Unspecified => {
                return Err(Status::invalid_argument(format!(
                    "watch kind {} is not one this controller knows; droverctl watches \
                     deployments, replicas, nodes, configmaps, secrets, services and endpoints",
                    req.kind
                )))
            }
        };
        let namespace =
            (!req.namespace.is_empty() && kind != Kind::Node).then(|| req.namespace.clone());
        if let Some(ns) = &namespace {
            names::check_name("namespace", ns)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let select = ListSelector::parse(&req.label_selector, &req.field_selector, plural, fields)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(View {
            kind,
            namespace,
            select,
        })
    }

    fn in_namespace(&self, k: &ObjectRef) -> bool {
        self.namespace.as_ref().is_none_or(|ns| *ns == k.namespace)
    }

    /// Every object of the kind in the namespace (nodes: namespace "").
    fn all_keys(&self, s: &State) -> Vec<ObjectRef> {
        let ns = self.namespace.as_deref();
        let r = |namespace: &str, name: &str| ObjectRef {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        match self.kind {
            Kind::Deployment => s
                .deployments(ns)
                .map(|d| {
                    let m = &d.deployment.metadata;
                    r(&m.namespace, &m.name)
                })
                .collect(),
            Kind::Replica => s.replicas(ns).map(|x| r(&x.namespace, &x.name)).collect(),
            Kind::Node => s.nodes().map(|n| r("", &n.name)).collect(),
            Kind::ConfigMap => s
                .config_maps(ns)
                .iter()
                .map(|c| {
                    r(
                        &c.config_map.metadata.namespace,
                        &c.config_map.metadata.name,
                    )
                })
                .collect(),
            Kind::Secret => s
                .secrets(ns)
                .iter()
                .map(|x| r(&x.secret.metadata.namespace, &x.secret.metadata.name))
                .collect(),
            Kind::Service | Kind::Endpoints => s
                .services(ns)
                .map(|x| r(&x.service.metadata.namespace, &x.service.metadata.name))
                .collect(),
        }
    }

    /// The objects whose rows may differ between `prev` and `new`, from
    /// what the version touched.
    fn touched_keys(&self, prev: &State, new: &State, t: &Touched) -> BTreeSet<ObjectRef> {
        let all = |view: &View| -> BTreeSet<ObjectRef> {
            let mut keys: BTreeSet<_> = view.all_keys(prev).into_iter().collect();
            keys.extend(view.all_keys(new));
            keys
        };
        if t.all {
            return all(self);
        }
        let node = |name: &String| ObjectRef {
            namespace: String::new(),
            name: name.clone(),
        };
        let keys: BTreeSet<ObjectRef> = match self.kind {
            // A deployment's row counts its replicas: t.deployments holds
            // those whose record or replicas changed.
            Kind::Deployment => t.deployments.clone(),
            // A replica's row shows its node's address.
            Kind::Replica => {
                let mut keys: BTreeSet<ObjectRef> =
                    t.replicas.iter().map(|k| ObjectRef::clone(k)).collect();
                for n in &t.node_records {
                    for s in [prev, new] {
                        keys.extend(s.replicas_on(n).map(|r| ObjectRef {
                            namespace: r.namespace.clone(),
                            name: r.name.clone(),
                        }));
                    }
                }
                keys
            }
            // A node's row counts the replicas bound there.
            Kind::Node => t.nodes.iter().chain(&t.node_records).map(node).collect(),
            Kind::ConfigMap | Kind::Secret if t.config_objects => all(self),
            Kind::ConfigMap | Kind::Secret => BTreeSet::new(),
            Kind::Service if t.services => all(self),
            Kind::Service => BTreeSet::new(),
            // Endpoints follow replicas (ready, bound, gone) and nodes
            // (Ready or not): the Services of the namespaces whose replicas
            // changed, every one when a node's record changed.
            Kind::Endpoints if t.services || !t.node_records.is_empty() => all(self),
            Kind::Endpoints => {
                let namespaces: BTreeSet<&str> =
                    t.replicas.iter().map(|r| r.namespace.as_str()).collect();
                let mut keys = BTreeSet::new();
                for ns in namespaces {
                    for s in [prev, new] {
                        keys.extend(s.services(Some(ns)).map(|x| ObjectRef {
                            namespace: x.service.metadata.namespace.clone(),
                            name: x.service.metadata.name.clone(),
                        }));
                    }
                }
                keys
            }
        };
        keys.into_iter().filter(|k| self.in_namespace(k)).collect()
    }

    /// The events between two consecutive versions: a row that appears is
    /// ADDED, one that changes MODIFIED, one that goes (or stops matching
    /// the selectors) DELETED with its last content.
    fn diff(&self, prev: &State, new: &State, t: &Touched, now: i64) -> Vec<pb::WatchEvent> {
        let mut events = Vec::new();
        for k in self.touched_keys(prev, new, t) {
            let before = self.row(prev, &k, now);
            let after = self.row(new, &k, now);
            let change = match (before, after) {
                (None, Some(a)) => (pb::WatchEventType::Added, a),
                (Some(b), None) => (pb::WatchEventType::Deleted, b),
                (Some(b), Some(a)) if b != a => (pb::WatchEventType::Modified, a),
                _ => continue,
            };
            events.push(event(change.0, change.1));
        }
        events
    }

    /// The row of object `k` in state `s`, when it exists and matches.
    fn row(&self, s: &State, k: &ObjectRef, now: i64) -> Option<Object> {
        match self.kind {
            Kind::Deployment => {
                let d = s.deployment(&k.namespace, &k.name)?;
                let m = &d.deployment.metadata;
                if !self.select.deployment(&m.namespace, &m.name, &m.labels) {
                    return None;
                }
                deployment_pb(s, d, now).ok().map(Object::Deployment)
            }
            Kind::Replica => {
                let r = replica_pb(s, s.replica(&k.namespace, &k.name)?);
                self.select.replica(&r).then_some(Object::Replica(r))
            }
            Kind::Node => {
                let n = node_pb(s, s.node(&k.name)?);
                self.select.node(&n).then_some(Object::Node(n))
            }
            Kind::ConfigMap => {
                let c = s.config_map(&k.namespace, &k.name)?;
                self.select
                    .labels
                    .matches_labels(&c.config_map.metadata.labels)
                    .then(|| Object::Config(config_map_pb(c.as_ref().clone())))
            }
            Kind::Secret => {
                let x = s.secret(&k.namespace, &k.name)?;
                self.select
                    .labels
                    .matches_labels(&x.secret.metadata.labels)
                    .then(|| Object::Config(secret_pb(x.as_ref().clone(), false)))
            }
            Kind::Service | Kind::Endpoints => {
                let x = s.service(&k.namespace, &k.name)?;
                if !self
                    .select
                    .labels
                    .matches_labels(&x.service.metadata.labels)
                {
                    return None;
                }
                Some(Object::Config(if self.kind == Kind::Service {
                    service_pb(x)
                } else {
                    endpoints_pb(s, x)
                }))
            }
        }
    }
}

/// A replica as `ListReplicas` answers it.
pub(super) fn replica_pb(s: &State, r: &Arc<ReplicaRecord>) -> pb::Replica {
    ReplicaRows::new(s).row(r)
}

/// Replicas as `ListReplicas` answers them, one after another: what the
/// replicas of one revision share (labels, host ports) is worked out once
/// per run of them. A listing goes in key order, so a deployment's replicas
/// of a revision are adjacent; working them out for each replica was a
/// third of a 10,000-replica listing.
pub(super) struct ReplicaRows<'s> {
    state: &'s State,
    /// `(namespace, deployment, revision)` of the last row, with its labels
    /// and host ports.
    last: Option<(RevisionOf<'s>, HashMap<String, String>, Vec<u32>)>,
}

type RevisionOf<'s> = (&'s str, &'s str, &'s str);

impl<'s> ReplicaRows<'s> {
    pub(super) fn new(state: &'s State) -> ReplicaRows<'s> {
        ReplicaRows { state, last: None }
    }

    pub(super) fn row(&mut self, r: &'s ReplicaRecord) -> pb::Replica {
        let s = self.state;
        let of = (
            r.namespace.as_str(),
            r.deployment.as_str(),
            r.revision.as_str(),
        );
        let (_, labels, host_ports) = match &self.last {
            Some(last) if last.0 == of => last,
            _ => {
                let deployment = s.deployment(&r.namespace, &r.deployment);
                let labels = deployment
                    .map(|d| replica_labels(d, &r.revision))
                    .unwrap_or_default();
                let host_ports = deployment
                    .map(|d| {
                        containers(d)
                            .iter()
                            .flat_map(|c| c.ports.iter().filter_map(|p| p.host_port.map(u32::from)))
                            .collect()
                    })
                    .unwrap_or_default();
                self.last.insert((of, labels, host_ports))
            }
        };
        let (labels, host_ports) = (labels.clone(), host_ports.clone());
        pb::Replica {
            status: Some(observed_to_pb(r)),
            node_address: r
                .node
                .as_ref()
                .and_then(|n| s.node(n))
                .map(|n| n.address.clone())
                .unwrap_or_default(),
            node: r.node.clone().unwrap_or_default(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            deployment: r.deployment.clone(),
            slot: r.slot,
            revision: r.revision.clone(),
            pending_reason: r.pending_reason.clone(),
            created_unix_ms: r.created_unix_ms,
            host_ports,
            labels,
        }
    }
}

/// The containers of a deployment's current template.
fn containers(d: &StoredDeployment) -> &[drover_manifest::Container] {
    &d.deployment.spec.template.spec.containers
}

/// A node as `ListNodes` answers it: what its replicas request (by their
/// deployment's current template), its admins' annotations.
pub(super) fn node_pb(s: &State, n: &Arc<NodeRecord>) -> pb::Node {
    let mut requests: HashMap<(&str, &str), (u64, u64)> = HashMap::new();
    let (mut cpu, mut memory, mut count) = (0, 0, 0);
    for r in s.replicas_on(&n.name) {
        let Some(d) = s.deployment(&r.namespace, &r.deployment) else {
            continue;
        };
        let (c, m) = *requests
            .entry((
                &d.deployment.metadata.namespace,
                &d.deployment.metadata.name,
            ))
            .or_insert_with(|| {
                containers(d).iter().fold((0, 0), |(c, m), x| {
                    (
                        c + x.resources.requests.cpu_millis.unwrap_or(0),
                        m + x.resources.requests.memory_bytes.unwrap_or(0),
                    )
                })
            });
        cpu += c;
        memory += m;
        count += 1;
    }
    let annotations = s
        .node_meta(&n.name)
        .map(|m| {
            m.annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    pb::Node {
        condition: match n.condition {
            NodeCondition::Ready => "Ready".into(),
            NodeCondition::NotReady => "NotReady".into(),
        },
        labels: n
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        condition_since_unix_ms: n.condition_since_unix_ms,
        cordoned: n.cordoned,
        cpu_millis: n.capacity.cpu_millis,
        memory_bytes: n.capacity.memory_bytes,
        allocated_cpu_millis: cpu,
        allocated_memory_bytes: memory,
        replicas: count,
        address: n.address.clone(),
        runtime: n.runtime.clone(),
        agent_version: n.agent_version.clone(),
        registered_unix_ms: n.registered_unix_ms,
        annotations,
        name: n.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(i: usize) -> pb::WatchEvent {
        event(
            pb::WatchEventType::Added,
            Object::Replica(pb::Replica {
                name: format!("web-{i}"),
                ..Default::default()
            }),
        )
    }

    #[tokio::test]
    async fn a_long_list_goes_in_messages_that_hold_only_their_own_events() {
        let (tx, mut rx) = mpsc::channel(16);
        let n = 2 * MAX_EVENTS + 234;
        let sender =
            tokio::spawn(async move { send(&tx, 7, true, (0..n).map(replica).collect()).await });
        let mut names = Vec::new();
        let mut shapes = Vec::new();
        while let Some(Ok(batch)) = rx.recv().await {
            assert!(
                batch.events.capacity() <= MAX_EVENTS,
                "a message keeps room for {} events",
                batch.events.capacity()
            );
            shapes.push((batch.index, batch.initial, batch.events.len(), batch.more));
            names.extend(batch.events.into_iter().map(|e| match e.object {
                Some(Object::Replica(r)) => r.name,
                other => panic!("{other:?}"),
            }));
        }
        assert!(sender.await.expect("sender"), "the client was there");
        assert_eq!(
            shapes,
            vec![
                (7, true, MAX_EVENTS, true),
                (7, true, MAX_EVENTS, true),
                (7, true, 234, false)
            ]
        );
        let want: Vec<String> = (0..n).map(|i| format!("web-{i}")).collect();
        assert_eq!(names, want, "every event once, in order");
    }

    #[tokio::test]
    async fn an_empty_list_is_one_message_and_a_client_gone_is_told() {
        let (tx, mut rx) = mpsc::channel(16);
        assert!(send(&tx, 3, false, Vec::new()).await);
        let bookmark = rx.recv().await.expect("a message").expect("ok");
        assert_eq!(
            (bookmark.index, bookmark.events.len(), bookmark.more),
            (3, 0, false)
        );
        drop(rx);
        assert!(!send(&tx, 4, false, vec![replica(1)]).await);
    }
}
