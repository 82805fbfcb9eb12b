//! The Control API's Service calls, and their part of an apply.
//!
//! `ListServices` answers each Service with what was allocated for it
//! (`ServiceRecord`); `ListEndpoints` computes each one's endpoints from the
//! state the read sees (`endpoints::endpoints`, cost proportional to what
//! the Service selects). Both reuse the ConfigMap list messages: a JSON
//! record per object.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use tonic::Status;

use drover_manifest::Service;
use drover_proto::{names, pb};

use super::config::{refs_to_delete, write_delete, Filter};
use super::control::{page_start, paged};
use crate::cluster::Cluster;
use crate::endpoints::{endpoints, Endpoint};
use crate::store::services::{ServiceResult, StoredService};
use crate::store::{ApplyOutcome, Command, ObjectRef, State};

/// A Service as `ListServices` answers it (`ConfigRecord.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub service: Service,
    /// `None`: headless.
    pub cluster_ip: Option<Ipv4Addr>,
    /// Per port, 0 for none.
    pub node_ports: Vec<u16>,
}

/// A Service's endpoints as `ListEndpoints` answers them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointsRecord {
    pub endpoints: Vec<Endpoint>,
}

/// `ApplyResult` for one applied Service.
pub(super) fn result_pb(
    (r, outcome, generation): ServiceResult,
    outcome_pb: fn(ApplyOutcome) -> pb::ApplyOutcome,
) -> pb::ApplyResult {
    pb::ApplyResult {
        namespace: r.namespace,
        name: r.name,
        outcome: outcome_pb(outcome) as i32,
        generation,
        kind: "Service".to_string(),
    }
}

/// What an apply of these Services would do (`--dry-run=server`); whether
/// an address is free is decided only by the apply itself.
pub(super) fn dry_run(cluster: &Cluster, services: &[Service]) -> Vec<ServiceResult> {
    services
        .iter()
        .map(|s| {
            let m = &s.metadata;
            let r = ObjectRef {
                namespace: m.namespace.clone(),
                name: m.name.clone(),
            };
            let snapshot = cluster.store.snapshot();
            match snapshot.service(&m.namespace, &m.name) {
                None => (r, ApplyOutcome::Created, 1),
                Some(o) if o.service == *s => (r, ApplyOutcome::Unchanged, o.generation),
                Some(o) => (r, ApplyOutcome::Configured, o.generation + 1),
            }
        })
        .collect()
}

fn record(s: &StoredService, json: String) -> pb::ConfigRecord {
    pb::ConfigRecord {
        namespace: s.service.metadata.namespace.clone(),
        name: s.service.metadata.name.clone(),
        json,
        generation: s.generation,
        created_unix_ms: s.created_unix_ms,
        updated_unix_ms: s.updated_unix_ms,
        sizes: Default::default(),
    }
}

/// A Service as `ListServices` and a watch of services answer it.
pub(super) fn service_pb(s: &StoredService) -> pb::ConfigRecord {
    let view = ServiceRecord {
        service: s.service.clone(),
        cluster_ip: s.cluster_ip,
        node_ports: s.node_ports.clone(),
    };
    record(s, serde_json::to_string(&view).unwrap_or_default())
}

/// A Service's endpoints in `state`, as `ListEndpoints` and a watch of
/// endpoints answer them.
pub(super) fn endpoints_pb(state: &State, s: &StoredService) -> pb::ConfigRecord {
    let view = EndpointsRecord {
        endpoints: endpoints(state, s).endpoints,
    };
    record(s, serde_json::to_string(&view).unwrap_or_default())
}

/// `ListServices`.
pub(super) async fn list(
    cluster: &Cluster,
    req: pb::ListConfigRequest,
) -> Result<pb::ListConfigResponse, Status> {
    list_page(cluster, req, |_, s| service_pb(s)).await
}

/// `ListEndpoints`: one record per Service, its endpoints now.
pub(super) async fn list_endpoints(
    cluster: &Cluster,
    req: pb::ListConfigRequest,
) -> Result<pb::ListConfigResponse, Status> {
    list_page(cluster, req, endpoints_pb).await
}

/// One page of the Services `req` selects, each answered by `answer`: at
/// most `limit` (0: all) after its continue token, read from one state
/// snapshot (`paged`, as `ListDeployments` and `ListReplicas` page). Only
/// the Services on the page are answered, so a page of endpoints costs what
/// its Services select.
async fn list_page(
    cluster: &Cluster,
    req: pb::ListConfigRequest,
    answer: fn(&State, &StoredService) -> pb::ConfigRecord,
) -> Result<pb::ListConfigResponse, Status> {
    let filter = Filter::new(&req)?;
    let after = page_start(&req.continue_token)?;
    cluster.read_barrier(req.read.as_ref()).await?;
    let state = cluster.store.snapshot();
    let (applied_index, _) = state.applied();
    let (page, continue_token) = paged(
        state
            .services_after(filter.namespace.as_deref(), after.as_ref())
            .map(|s| {
                let m = &s.service.metadata;
                ((m.namespace.as_str(), m.name.as_str()), s)
            }),
        req.limit,
        state.service_count(),
        |s| filter.keeps(&s.service.metadata),
    );
    Ok(pb::ListConfigResponse {
        objects: page.into_iter().map(|s| answer(&state, s)).collect(),
        applied_index,
        continue_token,
    })
}

/// `DeleteServices`.
pub(super) async fn delete(
    cluster: &Cluster,
    req: pb::DeleteConfigRequest,
) -> Result<pb::DeleteConfigResponse, Status> {
    let ignore_not_found = req.ignore_not_found;
    let refs = refs_to_delete(req, "Service ", names::dns1123_label)?;
    let command = Command::DeleteServices {
        refs,
        ignore_not_found,
    };
    write_delete(cluster, command).await
}
