//! The cluster's runtime objects: nodes (one per agent) and replicas (one per
//! running copy of a deployment), as the store keeps them.
//!
//! ```text
//!  NodeRecord     registered by its agent's Hello
//!  ReplicaRecord  created by the orchestrator, bound to a node by the
//!                 scheduler, status reported by the agent
//!  TokenRecord    a join token (its secret's hash only)
//! ```

use std::collections::BTreeMap;

use drover_manifest::{PodSpec, Protocol};
use serde::{Deserialize, Serialize};

/// A join token as the store keeps it: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    /// "agent" or "controller".
    pub role: String,
    pub secret_sha256: String,
    pub created_unix_ms: i64,
    pub expires_unix_ms: i64,
    pub revoked: bool,
}

impl TokenRecord {
    pub fn secret_hash(&self) -> &str {
        &self.secret_sha256
    }
}

/// CPU in millicores and memory in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// What a replica holds on its node: the requests and host ports of its own
/// revision's template, kept in the record so it is booked right to the end
/// (a terminating replica of a deleted deployment has no template left).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Booking {
    pub requests: Resources,
    /// `(hostPort, protocol)`; port 0 means none and is ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_ports: Vec<(u16, Protocol)>,
}

impl Booking {
    /// No requests and no host port.
    pub fn is_nothing(&self) -> bool {
        self.requests == Resources::default() && self.host_ports.iter().all(|p| p.0 == 0)
    }

    /// What a replica of `pod` holds: the sum of its containers' requests and
    /// their host ports.
    pub fn of(pod: &PodSpec) -> Booking {
        let requests = pod
            .containers
            .iter()
            .fold(Resources::default(), |acc, c| Resources {
                cpu_millis: acc.cpu_millis + c.resources.requests.cpu_millis.unwrap_or(0),
                memory_bytes: acc.memory_bytes + c.resources.requests.memory_bytes.unwrap_or(0),
            });
        let host_ports = pod
            .containers
            .iter()
            .flat_map(|c| c.ports.iter())
            .filter_map(|p| p.host_port.map(|h| (h, p.protocol)))
            .collect();
        Booking {
            requests,
            host_ports,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeCondition {
    Ready,
    NotReady,
}

/// A host with an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    /// Where the agent serves logs.
    pub address: String,
    pub runtime: String,
    pub agent_version: String,
    /// The agent process that registered last.
    pub incarnation: String,
    pub registered_unix_ms: i64,
    pub condition: NodeCondition,
    pub condition_since_unix_ms: i64,
    /// Cordoned nodes get no new replicas.
    pub cordoned: bool,
    /// Draining nodes are cordoned and have their replicas replaced elsewhere,
    /// each new replica running before the old one is removed.
    #[serde(default)]
    pub draining: bool,
}

/// What an agent last reported about a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ReplicaPhase {
    /// Not bound to a node yet, or bound and not yet reported.
    #[default]
    Pending,
    Running,
    CrashLoopBackOff,
    Failed,
    Terminating,
    /// Stopped and removed from its node: the agent has nothing left of it.
    Gone,
}

/// Every field is left out of the encoding at its default (a fresh replica's
/// is `{}`), and a missing one decodes to its default: the records in
/// `Reconcile` and `ReportStatus` entries and in snapshots are about half the
/// size, and so is their decoding on every member (command format 9).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplicaObserved {
    #[serde(skip_serializing_if = "is_default")]
    pub phase: ReplicaPhase,
    #[serde(skip_serializing_if = "is_default")]
    pub ready: bool,
    #[serde(skip_serializing_if = "is_default")]
    pub restarts: u32,
    #[serde(skip_serializing_if = "is_default")]
    pub last_exit_code: Option<i64>,
    #[serde(skip_serializing_if = "is_default")]
    pub reason: String,
    #[serde(skip_serializing_if = "is_default")]
    pub message: String,
    #[serde(skip_serializing_if = "is_default")]
    pub container_id: String,
    #[serde(skip_serializing_if = "is_default")]
    pub image: String,
    #[serde(skip_serializing_if = "is_default")]
    pub started_unix_ms: i64,
    #[serde(skip_serializing_if = "is_default")]
    pub finished_unix_ms: i64,
    #[serde(skip_serializing_if = "is_default")]
    pub next_restart_unix_ms: i64,
    /// When the agent's report was committed.
    #[serde(skip_serializing_if = "is_default")]
    pub reported_unix_ms: i64,
    /// The node whose agent reported this. It counts only while the replica
    /// is bound to that node: a replica moved elsewhere is Pending until its
    /// new node reports, and one moved away and back is again what was said.
    #[serde(skip_serializing_if = "is_default")]
    pub node: String,
    /// When the replica last became ready (set by the store from the commit
    /// time of the report that first said so; 0 while not ready). A replica
    /// is available once it has been ready for the deployment's
    /// `minReadySeconds`.
    #[serde(skip_serializing_if = "is_default")]
    pub ready_since_unix_ms: i64,
    /// Where a Docker replica's container ports are published on its node,
    /// as its agent last reported them (empty for the process runtime, and
    /// in reports from before this was kept). A Service reaches the
    /// replica there (`endpoints`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published_ports: Vec<PublishedPort>,
}

/// A container port published on a host port of the replica's node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub container_port: u16,
    pub protocol: Protocol,
    pub host_port: u16,
}

/// One copy of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub namespace: String,
    /// `<deployment>-<revision>-<slot>`.
    pub name: String,
    pub deployment: String,
    pub slot: u32,
    /// Hash of the pod template this replica runs.
    pub revision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The log index of the entry that bound it to `node` (0 while unbound,
    /// and for a binding by an entry older than format
    /// [`BINDINGS_NUMBERED`](super::BINDINGS_NUMBERED)). Its agent gets it
    /// with the assignment: a replica moved away and placed back on the same
    /// node is a new assignment there, so the agent says its status again
    /// (the store ignored what it said while the replica was elsewhere).
    #[serde(default, skip_serializing_if = "is_default")]
    pub bound_at: u64,
    /// Why the scheduler could not place it, while unbound.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pending_reason: String,
    pub created_unix_ms: i64,
    #[serde(default, skip_serializing_if = "is_default")]
    pub observed: ReplicaObserved,
    /// The replica on a draining node that this one replaces: the old one is
    /// removed once this one is available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// When the replica was removed from its deployment while its node still
    /// ran it (0: not terminating). A terminating replica is no longer
    /// assigned, so its agent stops it, but it still holds its node's
    /// resources and host ports, and its slot, until the agent reports it
    /// gone or the node is lost; then the record is deleted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub terminating_since_unix_ms: i64,
    /// What it holds on its node (`None` in records from before this was
    /// kept: its revision's template says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booking: Option<Booking>,
    /// The grace period it is stopped with instead of its template's, once
    /// terminating (`delete --grace-period`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_seconds: Option<u32>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl ReplicaRecord {
    /// The last report, if it came from the node the replica is bound to now.
    pub fn current_status(&self) -> Option<&ReplicaObserved> {
        (self.node.as_deref() == Some(self.observed.node.as_str())).then_some(&self.observed)
    }

    /// The id agents and Docker use: unique in the cluster, `<ns>.<name>`
    /// (namespaces are DNS labels, so the first dot separates the two).
    pub fn agent_id(&self) -> String {
        // Concatenated, not `format!`ted: a node's set names every replica
        // on it at each rebuild, and the formatting machinery was a quarter
        // of a rebuild.
        let mut id = String::with_capacity(self.namespace.len() + 1 + self.name.len());
        id.push_str(&self.namespace);
        id.push('.');
        id.push_str(&self.name);
        id
    }

    pub fn key(&self) -> super::ObjectRef {
        super::ObjectRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// Removed from its deployment, waiting for its agent to stop it.
    pub fn is_terminating(&self) -> bool {
        self.terminating_since_unix_ms != 0
    }

    /// Its phase as `get replicas` shows it: `Terminating` once removed from
    /// its deployment, else what its node last reported, `Pending` while
    /// unbound or not yet reported by the node it is bound to.
    pub fn phase(&self) -> ReplicaPhase {
        if self.is_terminating() {
            ReplicaPhase::Terminating
        } else {
            self.current_status()
                .map_or(ReplicaPhase::Pending, |o| o.phase)
        }
    }

    /// Running and ready now, as its node last reported (a terminating
    /// replica never is: it is being stopped).
    pub fn is_ready(&self) -> bool {
        !self.is_terminating()
            && self
                .current_status()
                .is_some_and(|o| o.ready && o.phase == ReplicaPhase::Running)
    }

    /// Ready for at least `min_ready_seconds` at `now` (Kubernetes'
    /// "available"). With 0 seconds, ready is available.
    pub fn is_available(&self, min_ready_seconds: u32, now_unix_ms: i64) -> bool {
        self.is_ready()
            && self.current_status().is_some_and(|o| {
                min_ready_seconds == 0
                    || o.ready_since_unix_ms + i64::from(min_ready_seconds) * 1000 <= now_unix_ms
            })
    }
}

/// Split an agent id back into namespace and name.
pub fn parse_agent_id(id: &str) -> Option<(&str, &str)> {
    id.split_once('.')
}
