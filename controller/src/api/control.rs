//! `drover.v1.Control`: the API droverctl speaks. Every handler validates its
//! input before anything is proposed, so a refused request changes nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use drover_manifest::{self as manifest, ParseOptions};
use drover_proto::selector::{self, ListSelector};
use drover_proto::{names, pb};

use super::{config, services, watch};
use crate::cluster::{now_unix_ms, Cluster};
use crate::config::validate_address;
use crate::orchestrator::rollout;
use crate::store::events::{EventFilter, EventRecord};
use crate::store::node_meta::NodeMetaChange;
use crate::store::{
    ApplyOutcome, Command, ObjectRef, ReplicaRecord, State, StoredDeployment, Write, WriteResult,
};

pub struct ControlService {
    pub cluster: Cluster,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;
type ChangeStream = Pin<Box<dyn Stream<Item = Result<pb::Change, Status>> + Send>>;

/// The shortest time between two messages of a `WatchChanges` stream.
const CHANGE_BATCH: Duration = Duration::from_millis(100);

/// How long `cluster add` waits for the new member to catch up before it
/// would become a voter.
const CATCH_UP: Duration = Duration::from_secs(20);

fn event_filter(req: &pb::ListEventsRequest) -> Result<EventFilter, Status> {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    if !req.namespace.is_empty() {
        check_name("namespace", &req.namespace)?;
    }
    let kind = some(&req.object_kind);
    if let Some(k) = &kind {
        if !["node", "replica", "deployment"].contains(&k.to_ascii_lowercase().as_str()) {
            return Err(Status::invalid_argument(format!(
                "object kind {k:?} has no events; use Node, Replica or Deployment"
            )));
        }
    }
    Ok(EventFilter {
        namespace: some(&req.namespace),
        kind,
        name: some(&req.object_name),
        after_seq: req.after_seq,
    })
}

fn event_to_pb(e: EventRecord) -> pb::Event {
    pb::Event {
        seq: e.seq,
        time_unix_ms: e.time_unix_ms,
        r#type: e.event_type.as_str().to_string(),
        reason: e.reason,
        object_kind: e.object.kind,
        namespace: e.object.namespace,
        name: e.object.name,
        message: e.message,
        count: e.count,
        first_time_unix_ms: e.first_time_unix_ms,
    }
}

/// kubectl's READY / UP-TO-DATE / AVAILABLE for one deployment: replicas
/// that report ready, that run the current template, and that have been
/// ready for `minReadySeconds`.
fn deployment_status(
    d: &StoredDeployment,
    mine: &[&ReplicaRecord],
    draining: &HashSet<String>,
    now: i64,
) -> pb::DeploymentStatus {
    let c = rollout::counts(d, mine, draining, now);
    let revisions = d
        .revisions
        .iter()
        .map(|r| pb::Revision {
            number: r.number,
            hash: r.hash.clone(),
            created_unix_ms: r.created_unix_ms,
            change_cause: r.change_cause.clone(),
            template_json: serde_json::to_string(&r.template).unwrap_or_default(),
            replicas: mine.iter().filter(|x| x.revision == r.hash).count() as u32,
        })
        .collect();
    pb::DeploymentStatus {
        replicas: c.total,
        ready: c.ready,
        updated: c.updated,
        available: c.available,
        revision: d.current_revision_number(),
        paused: d.rollout.paused,
        failed: d.rollout.failed.clone().unwrap_or_default(),
        rolled_back: d.rollout.rolled_back.clone().unwrap_or_default(),
        complete: rollout::is_complete(d.deployment.spec.replicas, &c),
        updated_available: c.updated_available,
        revisions,
        progress_unix_ms: d.rollout.progress_unix_ms,
    }
}

/// A List request's selectors, or INVALID_ARGUMENT naming what is wrong.
fn list_selector(
    labels: &str,
    fields: &str,
    kind: &'static str,
    supported: &[&str],
) -> Result<ListSelector, Status> {
    ListSelector::parse(labels, fields, kind, supported)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A replica's labels: those of the template it runs (its revision's), else
/// the deployment's current template's.
pub(super) fn replica_labels(d: &StoredDeployment, revision: &str) -> HashMap<String, String> {
    let template = d
        .revisions
        .iter()
        .find(|r| r.hash == revision)
        .map(|r| &r.template)
        .unwrap_or(&d.deployment.spec.template);
    template
        .metadata
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A deployment as the List, Get and Watch calls answer it, its status
/// counted from its replicas in `state` at time `now` (O(its replicas)).
pub(super) fn deployment_pb(
    state: &State,
    d: &StoredDeployment,
    now: i64,
) -> Result<pb::Deployment, Status> {
    let m = &d.deployment.metadata;
    let key = ObjectRef {
        namespace: m.namespace.clone(),
        name: m.name.clone(),
    };
    let mine: Vec<&ReplicaRecord> = state.replicas_of(&key).map(|r| r.as_ref()).collect();
    // Only the nodes of its replicas matter to its counts.
    let draining: HashSet<String> = mine
        .iter()
        .filter_map(|r| r.node.as_ref())
        .filter(|n| state.node(n).is_some_and(|n| n.draining))
        .cloned()
        .collect();
    to_pb(d, &mine, &draining, now)
}

fn to_pb(
    d: &StoredDeployment,
    mine: &[&ReplicaRecord],
    draining: &HashSet<String>,
    now: i64,
) -> Result<pb::Deployment, Status> {
    let spec_json =
        serde_json::to_string(&d.deployment).map_err(|e| Status::internal(e.to_string()))?;
    Ok(pb::Deployment {
        namespace: d.deployment.metadata.namespace.clone(),
        name: d.deployment.metadata.name.clone(),
        spec_json,
        generation: d.generation,
        created_unix_ms: d.created_unix_ms,
        updated_unix_ms: d.updated_unix_ms,
        status: Some(deployment_status(d, mine, draining, now)),
    })
}

/// A list page: at most `limit` (0: no limit) of the `items` that `keep`
/// passes, in the order given, and the continue token of the next page when
/// more may follow (the key of the last item looked at, as kubectl's
/// `continue`). Pages are read at their own request's state: an object
/// added or removed behind the page already read is not seen.
/// Each item comes with its `(namespace, name)`, borrowed: only the last
/// one's becomes a token (a listing of 100,000 replicas made a key of two
/// strings for each). `expected`: how many items there may be (0: not
/// known), so that the page is allocated once (growing a 10,000-replica
/// page, copying it and faulting its fresh pages in, was a third of the
/// listing).
pub(super) fn paged<'k, T>(
    items: impl Iterator<Item = ((&'k str, &'k str), T)>,
    limit: u32,
    expected: usize,
    keep: impl Fn(&T) -> bool,
) -> (Vec<T>, String) {
    let room = match limit {
        0 => expected,
        limit => expected.min(limit as usize),
    };
    let mut page = Vec::with_capacity(room);
    for ((namespace, name), item) in items {
        if !keep(&item) {
            continue;
        }
        page.push(item);
        if limit != 0 && page.len() == limit as usize {
            return (page, format!("{namespace}/{name}"));
        }
    }
    (page, String::new())
}

/// Where a page starts: after the key a continue token names (empty: at the
/// first object).
pub(super) fn page_start(token: &str) -> Result<Option<ObjectRef>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    match token.split_once('/') {
        Some((ns, name)) if names::check_name("namespace", ns).is_ok() && !name.is_empty() => {
            Ok(Some(key_of(ns, name)))
        }
        _ => Err(Status::invalid_argument(format!(
            "continue token {token:?} is not one a drover controller gave: list again from the start"
        ))),
    }
}

pub(super) fn key_of(namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

fn outcome_pb(o: ApplyOutcome) -> pb::ApplyOutcome {
    match o {
        ApplyOutcome::Created => pb::ApplyOutcome::Created,
        ApplyOutcome::Configured => pb::ApplyOutcome::Configured,
        ApplyOutcome::Unchanged => pb::ApplyOutcome::Unchanged,
    }
}

fn unexpected(r: WriteResult) -> Status {
    Status::internal(format!("unexpected result from the state machine: {r:?}"))
}

/// Checks a name the user typed for a lookup or delete, so a typo gets a clear
/// answer rather than "not found": the one name rule, [`names::check_name`].
fn check_name(what: &str, value: &str) -> Result<(), Status> {
    names::check_name(what, value).map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let dry_run = request.get_ref().dry_run;
        let answer = self.apply_files(request).await;
        crate::metrics::get().apply(apply_outcome(dry_run, &answer));
        answer
    }

    async fn list_config_maps(
        &self,
        request: Request<pb::ListConfigRequest>,
    ) -> Result<Response<pb::ListConfigResponse>, Status> {
        config::list_config_maps(&self.cluster, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_secrets(
        &self,
        request: Request<pb::ListConfigRequest>,
    ) -> Result<Response<pb::ListConfigResponse>, Status> {
        config::list_secrets(&self.cluster, request.into_inner(), false)
            .await
            .map(Response::new)
    }

    async fn reveal_secrets(
        &self,
        request: Request<pb::ListConfigRequest>,
    ) -> Result<Response<pb::ListConfigResponse>, Status> {
        config::list_secrets(&self.cluster, request.into_inner(), true)
            .await
            .map(Response::new)
    }

    async fn list_services(
        &self,
        request: Request<pb::ListConfigRequest>,
    ) -> Result<Response<pb::ListConfigResponse>, Status> {
        services::list(&self.cluster, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_endpoints(
        &self,
        request: Request<pb::ListConfigRequest>,
    ) -> Result<Response<pb::ListConfigResponse>, Status> {
        services::list_endpoints(&self.cluster, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn delete_services(
        &self,
        request: Request<pb::DeleteConfigRequest>,
    ) -> Result<Response<pb::DeleteConfigResponse>, Status> {
        services::delete(&self.cluster, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn delete_config_objects(
        &self,
        request: Request<pb::DeleteConfigRequest>,
    ) -> Result<Response<pb::DeleteConfigResponse>, Status> {
        config::delete(&self.cluster, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_deployments(
        &self,
        request: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        let req = request.into_inner();
        self.cluster.read_barrier(req.read.as_ref()).await?;
        let namespace = (!req.namespace.is_empty()).then_some(req.namespace.as_str());
        if let Some(ns) = namespace {
            check_name("namespace", ns)?;
        }
        let select = list_selector(
            &req.label_selector,
            &req.field_selector,
            "deployments",
            selector::DEPLOYMENT_FIELDS,
        )?;
        let after = page_start(&req.continue_token)?;
        let state = self.cluster.store.snapshot();
        let (applied_index, _) = state.applied();
        let now = now_unix_ms();
        let (page, next) = paged(
            state.deployments_after(namespace, after.as_ref()).map(|d| {
                let m = &d.deployment.metadata;
                ((m.namespace.as_str(), m.name.as_str()), d)
            }),
            req.limit,
            state.deployment_count(),
            |d| {
                let m = &d.deployment.metadata;
                select.deployment(&m.namespace, &m.name, &m.labels)
            },
        );
        let deployments = page
            .into_iter()
            .map(|d| deployment_pb(&state, d, now))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListDeploymentsResponse {
            deployments,
            applied_index,
            continue_token: next,
        }))
    }

    async fn get_deployment(
        &self,
        request: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let req = request.into_inner();
        check_name("namespace", &req.namespace)?;
        check_name("deployment name", &req.name)?;
        self.cluster.read_barrier(req.read.as_ref()).await?;
        let state = self.cluster.store.snapshot();
        match state.deployment(&req.namespace, &req.name) {
            Some(d) => Ok(Response::new(deployment_pb(&state, d, now_unix_ms())?)),
            None => Err(Status::not_found(format!(
                "deployment {:?} not found in namespace {:?}",
                req.name, req.namespace
            ))),
        }
    }

    async fn delete_deployments(
        &self,
        request: Request<pb::DeleteDeploymentsRequest>,
    ) -> Result<Response<pb::DeleteDeploymentsResponse>, Status> {
        let req = request.into_inner();
        if req.deployments.is_empty() {
            return Err(Status::invalid_argument("no deployments named to delete"));
        }
        let mut refs = Vec::with_capacity(req.deployments.len());
        for d in req.deployments {
            check_name("namespace", &d.namespace)?;
            check_name("deployment name", &d.name)?;
            refs.push(ObjectRef {
                namespace: d.namespace,
                name: d.name,
            });
        }
        let command = Command::Delete {
            refs,
            ignore_not_found: req.ignore_not_found,
            now_unix_ms: now_unix_ms(),
            grace_period_seconds: req.grace_period_seconds,
        };
        match self.cluster.write(Write::Command(command)).await? {
            WriteResult::Deleted(deleted) => Ok(Response::new(pb::DeleteDeploymentsResponse {
                deleted: deleted
                    .into_iter()
                    .map(|r| pb::DeploymentRef {
                        namespace: r.namespace,
                        name: r.name,
                    })
                    .collect(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn scale(
        &self,
        request: Request<pb::ScaleRequest>,
    ) -> Result<Response<pb::ScaleResponse>, Status> {
        let req = request.into_inner();
        check_name("namespace", &req.namespace)?;
        check_name("deployment name", &req.name)?;
        if req.replicas > self.cluster.max_replicas {
            return Err(Status::invalid_argument(format!(
                "--replicas {} is above this cluster's limit of {} (controller flag --max-replicas)",
                req.replicas, self.cluster.max_replicas
            )));
        }
        let command = Command::Scale {
            target: ObjectRef {
                namespace: req.namespace,
                name: req.name,
            },
            replicas: req.replicas,
            now_unix_ms: now_unix_ms(),
        };
        match self.cluster.write(Write::Command(command)).await? {
            WriteResult::Scaled {
                previous,
                replicas,
                generation,
            } => Ok(Response::new(pb::ScaleResponse {
                previous,
                replicas,
                generation,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let req = request.into_inner();
        let select = list_selector(
            &req.label_selector,
            &req.field_selector,
            "nodes",
            selector::NODE_FIELDS,
        )?;
        self.cluster.read_barrier(req.read.as_ref()).await?;
        let state = self.cluster.store.snapshot();
        let nodes = state
            .nodes()
            .map(|n| watch::node_pb(&state, n))
            .filter(|n| select.node(n))
            .collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn list_replicas(
        &self,
        request: Request<pb::ListReplicasRequest>,
    ) -> Result<Response<pb::ListReplicasResponse>, Status> {
        let req = request.into_inner();
        let namespace = (!req.namespace.is_empty()).then_some(req.namespace.as_str());
        if let Some(ns) = namespace {
            check_name("namespace", ns)?;
        }
        let select = list_selector(
            &req.label_selector,
            &req.field_selector,
            "replicas",
            selector::REPLICA_FIELDS,
        )?;
        let after = page_start(&req.continue_token)?;
        self.cluster.read_barrier(req.read.as_ref()).await?;
        let state = self.cluster.store.snapshot();
        let (applied_index, _) = state.applied();
        // One deployment's replicas come from its index; otherwise the
        // namespace's (or all) in key order.
        let candidates: Box<dyn Iterator<Item = &Arc<ReplicaRecord>>> =
            match (namespace, req.deployment.as_str()) {
                (Some(ns), name) if !name.is_empty() => Box::new(
                    state
                        .replicas_of(&key_of(ns, name))
                        .filter(move |r| after.as_ref().is_none_or(|a| r.name > a.name)),
                ),
                (_, name) => Box::new(
                    state
                        .replicas_after(namespace, after.as_ref())
                        .filter(move |r| name.is_empty() || r.deployment == name),
                ),
            };
        // Every replica, or one deployment's: a page of their number.
        let expected = match (namespace, req.deployment.as_str()) {
            (None, "") => state.replica_count(),
            (Some(ns), name) if !name.is_empty() => state.replicas_of(&key_of(ns, name)).count(),
            _ => 0,
        };
        let mut rows = watch::ReplicaRows::new(&state);
        let (replicas, next) = paged(
            candidates.map(|r| ((r.namespace.as_str(), r.name.as_str()), rows.row(r))),
            req.limit,
            expected,
            |r| select.replica(r),
        );
        Ok(Response::new(pb::ListReplicasResponse {
            replicas,
            continue_token: next,
            applied_index,
        }))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let req = request.into_inner();
        let filter = event_filter(&req)?;
        self.cluster.read_barrier(req.read.as_ref()).await?;
        let events = self
            .cluster
            .store
            .events(&filter, req.limit as usize)
            .into_iter()
            .map(event_to_pb)
            .collect();
        Ok(Response::new(pb::ListEventsResponse { events }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let req = request.into_inner();
        let mut filter = event_filter(&req)?;
        self.cluster.read_barrier(req.read.as_ref()).await?;
        let store = self.cluster.store.clone();
        let mut applied = self.cluster.handle.applied();
        // Every event up to `newest` is in the scan that follows reading it
        // (events are only appended), so the next scan starts past it: events
        // that do not match are read once, not on every applied entry.
        let mut newest = store.last_event_seq();
        let first = store.events(&filter, req.limit as usize);
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let mut batch = first;
            loop {
                for e in batch {
                    newest = newest.max(e.seq);
                    if tx.send(Ok(event_to_pb(e))).await.is_err() {
                        return;
                    }
                }
                filter.after_seq = newest;
                // Until a new event is applied here, or the client leaves.
                let scanned = loop {
                    tokio::select! {
                        changed = applied.changed() => if changed.is_err() {
                            let _ = tx.send(Err(Status::unavailable("controller shutting down"))).await;
                            return;
                        },
                        () = tx.closed() => return,
                    }
                    let seq = store.last_event_seq();
                    if seq > filter.after_seq {
                        newest = seq;
                        break store.events(&filter, 0);
                    }
                };
                batch = scanned;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchStream = watch::WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<watch::WatchStream>, Status> {
        watch::watch(&self.cluster, request.into_inner())
            .await
            .map(Response::new)
    }

    type WatchChangesStream = ChangeStream;

    async fn watch_changes(
        &self,
        _request: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<ChangeStream>, Status> {
        let mut applied = self.cluster.handle.applied();
        let store = self.cluster.store.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let (applied_index, _) = store.applied();
                if tx.send(Ok(pb::Change { applied_index })).await.is_err() {
                    return;
                }
                // Changes in the next 100 ms are one message: a waiting
                // client reads its objects again at most ten times a second.
                tokio::select! {
                    () = tokio::time::sleep(CHANGE_BATCH) => {},
                    () = tx.closed() => return,
                }
                tokio::select! {
                    changed = applied.changed() => if changed.is_err() {
                        let _ = tx.send(Err(Status::unavailable("controller shutting down"))).await;
                        return;
                    },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn drain_node(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::DrainNodeResponse>, Status> {
        let req = request.into_inner();
        check_name("node name", &req.node)?;
        let command = Command::Drain {
            node: req.node,
            now_unix_ms: now_unix_ms(),
        };
        match self.cluster.write(Write::Command(command)).await? {
            WriteResult::Changed(n) => Ok(Response::new(pb::DrainNodeResponse { changed: n > 0 })),
            other => Err(unexpected(other)),
        }
    }

    async fn rollout_undo(
        &self,
        request: Request<pb::RolloutUndoRequest>,
    ) -> Result<Response<pb::RolloutUndoResponse>, Status> {
        let req = request.into_inner();
        check_name("namespace", &req.namespace)?;
        check_name("deployment name", &req.name)?;
        let command = Command::Undo {
            target: ObjectRef {
                namespace: req.namespace,
                name: req.name,
            },
            to_revision: (req.to_revision > 0).then_some(req.to_revision),
            reason: None,
            now_unix_ms: now_unix_ms(),
        };
        match self.cluster.write(Write::Command(command)).await? {
            WriteResult::RolledBack { revision, changed } => {
                Ok(Response::new(pb::RolloutUndoResponse { revision, changed }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn rollout_pause(
        &self,
        request: Request<pb::RolloutPauseRequest>,
    ) -> Result<Response<pb::RolloutPauseResponse>, Status> {
        let req = request.into_inner();
        check_name("namespace", &req.namespace)?;
        check_name("deployment name", &req.name)?;
        let command = Command::PauseRollout {
            target: ObjectRef {
                namespace: req.namespace,
                name: req.name,
            },
            paused: req.paused,
            now_unix_ms: now_unix_ms(),
        };
        match self.cluster.write(Write::Command(command)).await? {
            WriteResult::Changed(n) => {
                Ok(Response::new(pb::RolloutPauseResponse { changed: n > 0 }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn change_node_meta(
        &self,
        request: Request<pb::ChangeNodeMetaRequest>,
    ) -> Result<Response<pb::ChangeNodeMetaResponse>, Status> {
        let req = request.into_inner();
        check_name("node name", &req.node)?;
        let invalid = |e: String| Status::invalid_argument(e);
        for key in req
            .set_labels
            .keys()
            .chain(req.remove_labels.iter())
            .chain(req.set_annotations.keys())
            .chain(req.remove_annotations.iter())
        {
            names::qualified_name(key).map_err(|e| invalid(format!("key {key:?}: {e}")))?;
        }
        for (key, value) in &req.set_labels {
            names::label_value(value)
                .map_err(|e| invalid(format!("label {key:?} value {value:?}: {e}")))?;
        }
        if req.set_labels.is_empty()
            && req.remove_labels.is_empty()
            && req.set_annotations.is_empty()
            && req.remove_annotations.is_empty()
        {
            return Err(invalid("no labels or annotations to set or remove".into()));
        }
        let command = Command::ChangeNodeMeta {
            node: req.node,
            change: NodeMetaChange {
                set_labels: req.set_labels.into_iter().collect(),
                remove_labels: req.remove_labels.into_iter().collect(),
                set_annotations: req.set_annotations.into_iter().collect(),
                remove_annotations: req.remove_annotations.into_iter().collect(),
            },
            now_unix_ms: now_unix_ms(),
        };
        match self.cluster.write(Write::Command(command)).await? {
            WriteResult::Changed(n) => {
                Ok(Response::new(pb::ChangeNodeMetaResponse { changed: n > 0 }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn cordon_node(
        &self,
        request: Request<pb::CordonNodeRequest>,
    ) -> Result<Response<pb::CordonNodeResponse>, Status> {
        let req = request.into_inner();
        check_name("node name", &req.node)?;
        let command = Command::Cordon {
            node: req.node,
            cordoned: req.cordoned,
            now_unix_ms: now_unix_ms(),
        };
        match self.cluster.write(Write::Command(command)).await? {
            WriteResult::Changed(n) => Ok(Response::new(pb::CordonNodeResponse { changed: n > 0 })),
            other => Err(unexpected(other)),
        }
    }

    async fn delete_nodes(
        &self,
        request: Request<pb::DeleteNodesRequest>,
    ) -> Result<Response<pb::DeleteNodesResponse>, Status> {
        let req = request.into_inner();
        if req.nodes.is_empty() {
            return Err(Status::invalid_argument("no node names to delete"));
        }
        for node in &req.nodes {
            check_name("node name", node)?;
        }
        let command = Command::DeleteNodes {
            nodes: req.nodes.clone(),
            force: req.force,
            now_unix_ms: now_unix_ms(),
        };
        match self.cluster.write(Write::Command(command)).await? {
            WriteResult::Changed(_) => {
                let mut deleted = req.nodes;
                deleted.dedup();
                tracing::info!(nodes = ?deleted, force = req.force, "deleted nodes");
                Ok(Response::new(pb::DeleteNodesResponse { deleted }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn top(
        &self,
        request: Request<pb::TopRequest>,
    ) -> Result<Response<pb::TopResponse>, Status> {
        let req = request.into_inner();
        let namespace = (!req.namespace.is_empty()).then_some(req.namespace.as_str());
        if let Some(ns) = namespace {
            check_name("namespace", ns)?;
        }
        // The samples live in the leader's memory only.
        if !self.cluster.handle.leadership().is_leader {
            return Err(Status::unavailable(format!(
                "controller {} is not the leader, and only the leader holds the agents' usage samples; \
                 ask the leader (droverctl tries every --server in turn)",
                self.cluster.handle.id()
            )));
        }
        let store = &self.cluster.store;
        let nodes = store.nodes();
        let replicas = store.replicas(namespace);
        let samples = crate::usage::book().latest(std::time::Instant::now());
        Ok(Response::new(crate::usage::top(
            &nodes, &replicas, &samples,
        )))
    }

    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        Ok(Response::new(self.members_status().await?))
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let req = request.into_inner();
        if req.id == 0 {
            return Err(Status::invalid_argument("member id must be 1 or more"));
        }
        validate_address(&req.address).map_err(Status::invalid_argument)?;
        // A learner first: it gets the log without voting, so the quorum is
        // unchanged until it has caught up. `cluster add` of a member that
        // is still a learner (it did not catch up last time) finishes the job.
        let learner = self
            .members_status()
            .await?
            .members
            .iter()
            .any(|m| m.id == req.id && !m.voter);
        if !learner {
            self.cluster
                .write(Write::AddMember {
                    id: req.id,
                    address: req.address.clone(),
                })
                .await?;
        }
        self.wait_caught_up(req.id, &req.address).await?;
        self.cluster
            .write(Write::PromoteMember { id: req.id })
            .await?;
        Ok(Response::new(pb::MembershipResponse {
            members: self.members_status().await?.members,
        }))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let req = request.into_inner();
        self.cluster
            .write(Write::RemoveMember { id: req.id })
            .await?;
        Ok(Response::new(pb::MembershipResponse {
            members: self.members_status().await?.members,
        }))
    }

    async fn version(
        &self,
        _request: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        Ok(Response::new(pb::VersionResponse {
            version: drover_proto::VERSION.to_string(),
            id: self.cluster.handle.id(),
        }))
    }
}

impl ControlService {
    async fn apply_files(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let req = request.into_inner();
        let total: usize = req.files.iter().map(|f| f.content.len()).sum();
        if total > drover_proto::MAX_REQUEST_BYTES {
            return Err(Status::invalid_argument(format!(
                "the manifests total {total} bytes; one apply accepts at most {} bytes",
                drover_proto::MAX_REQUEST_BYTES
            )));
        }
        if req.files.is_empty() {
            return Err(Status::invalid_argument("no manifest files given"));
        }
        let files: Vec<(String, String)> =
            req.files.into_iter().map(|f| (f.name, f.content)).collect();
        let opts = ParseOptions {
            lenient: req.lenient,
            skip_unsupported_kinds: req.skip_unsupported_kinds,
            max_replicas: self.cluster.max_replicas,
            namespace: Some(req.namespace).filter(|ns| !ns.is_empty()),
            enforce_namespace: req.enforce_namespace,
        };
        let parsed = manifest::parse_files(&files, &opts)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let warnings = parsed.warnings;
        let has_config = !parsed.config_maps.is_empty()
            || !parsed.secrets.is_empty()
            || !parsed.services.is_empty();
        if parsed.deployments.is_empty() && !has_config {
            return Ok(Response::new(pb::ApplyResponse {
                results: vec![],
                warnings,
            }));
        }
        if req.dry_run {
            self.cluster.read_barrier(None).await?;
            let mut results: Vec<pb::ApplyResult> =
                config::dry_run(&self.cluster, &parsed.config_maps, &parsed.secrets)?
                    .into_iter()
                    .map(|r| config::result_pb(r, outcome_pb))
                    .collect();
            results.extend(
                services::dry_run(&self.cluster, &parsed.services)
                    .into_iter()
                    .map(|r| services::result_pb(r, outcome_pb)),
            );
            for d in &parsed.deployments {
                let m = &d.metadata;
                let existing = self.cluster.store.deployment(&m.namespace, &m.name);
                let (outcome, generation) = match existing {
                    None => (ApplyOutcome::Created, 1),
                    Some(old) if old.deployment == *d => (ApplyOutcome::Unchanged, old.generation),
                    Some(old) => (ApplyOutcome::Configured, old.generation + 1),
                };
                results.push(pb::ApplyResult {
                    namespace: m.namespace.clone(),
                    name: m.name.clone(),
                    outcome: outcome_pb(outcome) as i32,
                    generation,
                    kind: "Deployment".into(),
                });
            }
            return Ok(Response::new(pb::ApplyResponse { results, warnings }));
        }
        let command = if req.expected_generation > 0 {
            if has_config {
                return Err(Status::invalid_argument(
                    "an apply with an expected generation holds exactly one deployment and no \
                     ConfigMap, Secret or Service",
                ));
            }
            let [deployment] = <[_; 1]>::try_from(parsed.deployments).map_err(|all| {
                Status::invalid_argument(format!(
                    "an apply with an expected generation holds exactly one deployment, not {}",
                    all.len()
                ))
            })?;
            Command::ApplyIf {
                deployment: Box::new(deployment),
                expected_generation: req.expected_generation,
                now_unix_ms: now_unix_ms(),
            }
        } else if has_config {
            Command::ApplyConfig {
                deployments: parsed.deployments,
                config_maps: parsed.config_maps,
                secrets: parsed.secrets,
                service_range: (!parsed.services.is_empty()).then_some(self.cluster.service_range),
                services: parsed.services,
                now_unix_ms: now_unix_ms(),
            }
        } else {
            Command::Apply {
                deployments: parsed.deployments,
                now_unix_ms: now_unix_ms(),
            }
        };
        let deployment_pb =
            |(r, outcome, generation): (ObjectRef, ApplyOutcome, u64)| pb::ApplyResult {
                namespace: r.namespace,
                name: r.name,
                outcome: outcome_pb(outcome) as i32,
                generation,
                kind: "Deployment".into(),
            };
        match self.cluster.write(Write::Command(command)).await? {
            WriteResult::Applied(results) => Ok(Response::new(pb::ApplyResponse {
                results: results.into_iter().map(deployment_pb).collect(),
                warnings,
            })),
            WriteResult::AppliedConfig {
                config,
                deployments,
                services: applied_services,
            } => Ok(Response::new(pb::ApplyResponse {
                results: config
                    .into_iter()
                    .map(|r| config::result_pb(r, outcome_pb))
                    .chain(
                        applied_services
                            .into_iter()
                            .map(|r| services::result_pb(r, outcome_pb)),
                    )
                    .chain(deployments.into_iter().map(deployment_pb))
                    .collect(),
                warnings,
            })),
            other => Err(unexpected(other)),
        }
    }

    /// Ask every member for its own status, in parallel, each bounded by a
    /// short timeout; an unreachable one is reported, not fatal.
    /// Wait until learner `id` has applied what the leader had committed when
    /// the wait began, or refuse after [`CATCH_UP`] with what is wrong.
    async fn wait_caught_up(&self, id: u64, address: &str) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        let mut target = None;
        loop {
            let status = self.members_status().await?;
            let leader_commit = status
                .members
                .iter()
                .find(|m| m.id == status.leader_id)
                .map(|m| m.commit_index);
            let target = *target.get_or_insert(leader_commit.unwrap_or(0));
            let learner = status.members.iter().find(|m| m.id == id);
            let why = match learner {
                Some(m) if m.reachable && m.applied_index >= target && target > 0 => return Ok(()),
                Some(m) if !m.reachable => format!("it does not answer ({})", m.error),
                Some(m) => format!("it applied {} of {target} entries", m.applied_index),
                None => "it is not in the configuration".to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::deadline_exceeded(format!(
                    "controller {id} at {address} did not catch up within {}: {why}. It was added \
                     as a learner, which does not vote, so the cluster commits as before; start \
                     it (empty, with --join) or fix its address, then run `droverctl cluster add` \
                     again to finish, or `droverctl cluster remove {id}`",
                    drover_proto::duration::short(CATCH_UP)
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn members_status(&self) -> Result<pb::ClusterStatusResponse, Status> {
        let local = self.cluster.local_status().await?;
        let status = self
            .cluster
            .handle
            .status()
            .await
            .map_err(crate::cluster::node_error)?;
        let addresses = self.cluster.store.member_addresses();
        let mut ids: Vec<u64> = status
            .voters
            .iter()
            .chain(status.learners.iter())
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut asks = JoinSet::new();
        for id in ids.iter().copied().filter(|id| *id != local.id) {
            let address = addresses
                .get(&id)
                .cloned()
                .or_else(|| self.cluster.transport.address_of(id))
                .unwrap_or_default();
            let client = self.cluster.client(&address);
            asks.spawn(async move {
                let unreachable = |error: String| pb::MemberStatus {
                    id,
                    address: address.clone(),
                    reachable: false,
                    error,
                    ..Default::default()
                };
                let mut client = match client {
                    Ok(c) => c,
                    Err(e) => return unreachable(e.message().to_string()),
                };
                let call = client.status(pb::StatusRequest {});
                match tokio::time::timeout(Duration::from_secs(1), call).await {
                    Ok(Ok(r)) => r.into_inner(),
                    Ok(Err(s)) => unreachable(short_reason(&s)),
                    Err(_) => unreachable("no answer within 1s".into()),
                }
            });
        }
        let mut members = vec![local.clone()];
        while let Some(r) = asks.join_next().await {
            if let Ok(m) = r {
                members.push(m);
            }
        }
        members.sort_by_key(|m| m.id);
        Ok(pb::ClusterStatusResponse {
            leader_id: local.leader_id,
            term: local.term,
            members,
            answered_by: local.id,
        })
    }
}

/// "connection refused" rather than a transport error chain.
fn short_reason(s: &Status) -> String {
    let m = s.message();
    let lower = format!("{m} {:?}", std::error::Error::source(s)).to_lowercase();
    if lower.contains("refused") {
        "connection refused".into()
    } else if lower.contains("timed out") || lower.contains("deadline") {
        "timed out".into()
    } else if m.is_empty() {
        s.code().description().to_string()
    } else {
        m.to_string()
    }
}

/// The `outcome` label of `drover_apply_requests_total`.
fn apply_outcome(
    dry_run: bool,
    answer: &Result<Response<pb::ApplyResponse>, Status>,
) -> &'static str {
    match answer {
        Ok(_) if dry_run => "dry_run",
        Ok(r)
            if r.get_ref()
                .results
                .iter()
                .all(|x| x.outcome == pb::ApplyOutcome::Unchanged as i32) =>
        {
            "unchanged"
        }
        Ok(_) => "applied",
        Err(s)
            if matches!(
                s.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::AlreadyExists
            ) =>
        {
            "invalid"
        }
        Err(_) => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed<'a>(names: &[&'a str]) -> Vec<((&'a str, &'a str), String)> {
        names
            .iter()
            .map(|n| (("default", *n), n.to_string()))
            .collect()
    }

    #[test]
    fn a_page_holds_at_most_limit_kept_items_and_says_where_the_next_starts() {
        let items = keyed(&["a", "b", "c", "d", "e"]);
        let (page, next) = paged(items.clone().into_iter(), 2, 0, |_| true);
        assert_eq!(page, ["a", "b"]);
        assert_eq!(next, "default/b");
        assert_eq!(
            page_start(&next).ok().flatten(),
            Some(key_of("default", "b"))
        );
        // Skipped items do not count; the token is the last item taken.
        let (page, next) = paged(items.clone().into_iter(), 2, 0, |n| n != "b");
        assert_eq!(
            (page, next.as_str()),
            (vec!["a".into(), "c".into()], "default/c")
        );
        // The last page has no token; no limit is one page.
        let (page, next) = paged(items.clone().into_iter().skip(4), 2, 5, |_| true);
        assert_eq!((page.len(), next.as_str()), (1, ""));
        let (page, next) = paged(items.into_iter(), 0, 5, |_| true);
        assert_eq!((page.len(), next.as_str()), (5, ""));
    }

    #[test]
    fn a_token_no_controller_gave_is_refused_with_a_sentence() {
        assert_eq!(page_start("").ok(), Some(None));
        for bad in ["nothing", "/x", "Bad_NS/x", "default/"] {
            let e = page_start(bad).err().map(|s| s.message().to_string());
            assert!(
                e.as_deref().is_some_and(|m| m.contains("continue token")),
                "{bad}: {e:?}"
            );
        }
    }
}
