//! Endpoints: which replicas a Service sends connections to. A pure function
//! of the replicated state, like the scheduler: no I/O, no clock.
//!
//! ```text
//!  Service.selector ──▶ deployments of its namespace ──▶ revisions whose template labels match
//!                                                           │ (index: replicas by deployment)
//!                                                           ▼
//!                 replicas of that revision: ready, bound to a Ready node, not terminating
//!                                                           │
//!                                                           ▼
//!                 Endpoint { replica, node, ip: the node's address, ports: targetPort resolved }
//! ```
//!
//! **Contract.** An endpoint is a replica that (1) belongs to a deployment
//! of the Service's namespace, (2) runs a revision whose *template* labels
//! match the selector (a rollout that changes labels moves replicas in or
//! out one by one), (3) is ready as its node last reported, not terminating,
//! and bound to a node whose condition is Ready (a lost node's replicas
//! leave at once, guarantee 10). Its address is the host part of its node's
//! address. A process replica listens on its host's addresses, so its port
//! is the target port. A Docker replica is reachable from other hosts only
//! through a published port (its bridge address is private to its host):
//! its port is the `hostPort` of the container port the target resolves
//! to, or else the host port the engine published that container port on,
//! as its agent reported it (`ReplicaObserved::published_ports`). A port
//! the manifest does not declare, or one not (yet) reported published,
//! gives no entry for that Service port (docs/services.md).
//! Each Service port's `targetPort` is resolved per replica: a number as is,
//! a name against the container's named ports of that replica's template; a
//! replica without the name gets no entry for that port (Kubernetes does the
//! same).
//!
//! **Cost.** O(D + R) for a Service: D the deployments of its namespace (a
//! label match per revision kept), R the replicas of the deployments that
//! match (walked through the by-deployment index). It never scans every
//! replica of the cluster, so recomputing one Service at 100k replicas
//! costs what that Service selects.

use std::collections::BTreeMap;
use std::net::IpAddr;

use drover_manifest::{PodTemplate, PortRef, Protocol};
use serde::{Deserialize, Serialize};

use crate::store::objects::PublishedPort;
use crate::store::services::StoredService;
use crate::store::{NodeCondition, ObjectRef, State};

/// The endpoints of one Service, in replica-name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    pub service: ObjectRef,
    pub endpoints: Vec<Endpoint>,
}

/// One ready replica a Service reaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub replica: String,
    pub node: String,
    /// The host part of the node's address.
    pub ip: String,
    /// Per Service port that resolved for this replica.
    pub ports: Vec<EndpointPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPort {
    /// The Service port's name ("" when unnamed).
    pub name: String,
    /// The Service port (what clients dial on the cluster IP).
    pub port: u16,
    /// Where the replica listens.
    pub target_port: u16,
    pub protocol: Protocol,
}

/// The endpoints of `service` in `state`.
pub fn endpoints(state: &State, service: &StoredService) -> Endpoints {
    let svc = &service.service;
    let namespace = svc.metadata.namespace.as_str();
    let mut out = Vec::new();
    for d in state.deployments_after(Some(namespace), None) {
        // Revision hash → its template, for the revisions the selector matches.
        let mut matching: BTreeMap<String, &PodTemplate> = BTreeMap::new();
        let current = &d.deployment.spec.template;
        if svc.selects(&current.metadata.labels) {
            matching.insert(d.current_revision_hash(), current);
        }
        for r in &d.revisions {
            if svc.selects(&r.template.metadata.labels) {
                matching.entry(r.hash.clone()).or_insert(&r.template);
            }
        }
        if matching.is_empty() {
            continue;
        }
        let key = ObjectRef {
            namespace: namespace.to_string(),
            name: d.deployment.metadata.name.clone(),
        };
        for replica in state.replicas_of(&key) {
            let Some(template) = matching.get(&replica.revision) else {
                continue;
            };
            if !replica.is_ready() {
                continue;
            }
            let Some(node) = replica.node.as_deref().and_then(|n| state.node(n)) else {
                continue;
            };
            if node.condition != NodeCondition::Ready {
                continue;
            }
            let published = (node.runtime == "docker").then(|| {
                replica
                    .current_status()
                    .map_or(&[][..], |o| o.published_ports.as_slice())
            });
            let ports: Vec<EndpointPort> = svc
                .spec
                .ports
                .iter()
                .filter_map(|p| {
                    Some(EndpointPort {
                        name: p.name.clone().unwrap_or_default(),
                        port: p.port,
                        target_port: target_port(&p.target_port, p.protocol, template, published)?,
                        protocol: p.protocol,
                    })
                })
                .collect();
            if ports.is_empty() {
                continue;
            }
            out.push(Endpoint {
                replica: replica.name.clone(),
                node: node.name.clone(),
                ip: host_of(&node.address),
                ports,
            });
        }
    }
    out.sort_by(|a, b| a.replica.cmp(&b.replica));
    Endpoints {
        service: service.key(),
        endpoints: out,
    }
}

/// Where a replica of `template` answers for `target` (a Service port of
/// `protocol`) on its node's address: the container port; or, with
/// `published` (Docker: what its agent reported), the manifest's `hostPort`
/// for that container port, else the host port the engine published it on
/// (`None` when it is neither).
fn target_port(
    target: &PortRef,
    protocol: Protocol,
    template: &PodTemplate,
    published: Option<&[PublishedPort]>,
) -> Option<u16> {
    let ports = || template.spec.containers.iter().flat_map(|c| &c.ports);
    let port = match target {
        PortRef::Number(n) => match published {
            None => return Some(*n),
            Some(_) => ports().find(|p| p.container_port == *n && p.protocol == protocol)?,
        },
        PortRef::Name(name) => ports().find(|p| p.name.as_deref() == Some(name))?,
    };
    let Some(published) = published else {
        return Some(port.container_port);
    };
    port.host_port.or_else(|| {
        published
            .iter()
            .find(|p| p.container_port == port.container_port && p.protocol == port.protocol)
            .map(|p| p.host_port)
    })
}

/// `10.213.1.101` from `10.213.1.101:7101` (or `[::1]:7101`); the address
/// as it is when it has no port.
fn host_of(address: &str) -> String {
    if let Ok(sa) = address.parse::<std::net::SocketAddr>() {
        return sa.ip().to_string();
    }
    if let Ok(ip) = address.parse::<IpAddr>() {
        return ip.to_string();
    }
    address
        .rsplit_once(':')
        .map_or(address, |(host, _)| host)
        .to_string()
}

#[cfg(test)]
mod tests;
