//! The replicated state, in memory: typed records and the indexes the loops
//! read, changed only by [`State::apply`].
//!
//! ```text
//!  State ─┬─ deployments   (ns, name)  → Arc<StoredDeployment>   templates once per revision
//!         ├─ replicas      (ns, name)  → Arc<ReplicaRecord>
//!         ├─ nodes         name        → Arc<NodeRecord>
//!         ├─ node_metas, tokens, members, events (newest last, at most RETAINED)
//!         ├─ config_maps, secrets, services (ns, name)
//!         └─ indexes (derived, never stored):
//!              by_deployment  (ns, deployment) → replica keys
//!              by_node        node → replicas bound there
//!              unbound        replicas with no node
//!              held           node → requests and host ports its replicas hold
//!              cluster_ips    address → the Service holding it
//!              node_ports     port → the Service holding it
//! ```
//!
//! Every map is a persistent map (`imbl`): cloning the state costs a handful
//! of reference counts, and a change copies only the path to what it changes.
//! So readers take a snapshot (`Arc<State>`) at no cost and keep it as long as
//! they like, and a raft snapshot is the state cloned between two applies,
//! encoded on another thread.
//!
//! `apply` is deterministic and does no I/O: the same commands in the same
//! order give the same state (and [`State::state_hash`]) on every member. A
//! refused command changes nothing: the state is put back as it was.
//!
//! Cost: reads by key and index updates are O(log n); `replicas_of`,
//! `replicas_on` and `unbound` walk only what they return.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet, Vector};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::command::{self, Command, ObjectRef, WriteError, WriteResult};
use super::config_objects::{StoredConfigMap, StoredSecret};
use super::events::{EventFilter, EventRecord, NewEvent, RETAINED};
use super::node_meta::NodeMeta;
use super::objects::{Booking, NodeRecord, ReplicaPhase, ReplicaRecord, Resources, TokenRecord};
use super::services::StoredService;
use super::{Member, StoreError, StoredDeployment};

/// What changed since the last [`State::take_touched`]: the leader loops
/// look only at these deployments, the dispatcher rebuilds only these nodes'
/// assignment sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Everything may have changed (a snapshot replaced the state, or a
    /// subscriber just started): look at it all once.
    pub all: bool,
    /// Deployments whose record or replicas changed.
    pub deployments: BTreeSet<ObjectRef>,
    /// Nodes whose record changed or that gained or lost a replica, or one
    /// of whose replicas changed more than its status (what its agent is
    /// given, or where it is bound).
    pub nodes: BTreeSet<String>,
    /// Nodes whose record changed (condition, cordon, drain, labels).
    pub node_records: BTreeSet<String>,
    /// Deployments whose own record changed what agents run (created,
    /// deleted, a new spec or revision list); a record whose rollout
    /// progress alone changed is in `deployments` only.
    pub deployment_records: BTreeSet<ObjectRef>,
    /// A ConfigMap or Secret changed (created, changed, deleted).
    pub config_objects: bool,
    /// Replicas whose record changed (created, changed, deleted): what a
    /// watch of replicas looks at, instead of every replica of a deployment.
    /// The state's own shared keys: every feed merges every entry's set, and
    /// a placement's entries name thousands (copying two strings per key per
    /// feed was 3.5 % of a leader's time at 100,000 replicas).
    pub replicas: BTreeSet<Arc<ObjectRef>>,
    /// A Service changed (created, changed, deleted).
    pub services: bool,
}

impl Touched {
    /// Everything, for a first look.
    pub fn everything() -> Touched {
        Touched {
            all: true,
            ..Touched::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.all
            && self.deployments.is_empty()
            && self.nodes.is_empty()
            && self.node_records.is_empty()
            && self.deployment_records.is_empty()
            && !self.config_objects
            && self.replicas.is_empty()
            && !self.services
    }

    /// Add `other` to this set.
    pub fn merge(&mut self, other: &Touched) {
        // A look at everything needs no list: keeping one would only copy
        // every change into it (a follower's assignment-book feed is not
        // read until it leads, and would hold every key ever touched).
        if self.all {
            return;
        }
        if other.all {
            *self = Touched::everything();
            return;
        }
        self.config_objects |= other.config_objects;
        self.services |= other.services;
        self.deployments.extend(other.deployments.iter().cloned());
        self.nodes.extend(other.nodes.iter().cloned());
        self.node_records.extend(other.node_records.iter().cloned());
        self.deployment_records
            .extend(other.deployment_records.iter().cloned());
        self.replicas.extend(other.replicas.iter().cloned());
    }
}

/// Requests and host ports bound to one node, as its replicas' bookings say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    pub requests: Resources,
    pub host_ports: Vec<(u16, drover_manifest::Protocol)>,
}

impl Held {
    /// Whether `b` fits beside what is held, within `capacity`.
    pub fn fits(&self, b: &Booking, capacity: &Resources) -> bool {
        let cpu = self.requests.cpu_millis + b.requests.cpu_millis;
        let memory = self.requests.memory_bytes + b.requests.memory_bytes;
        let port_free =
            |p: &(u16, drover_manifest::Protocol)| p.0 == 0 || !self.host_ports.contains(p);
        cpu <= capacity.cpu_millis
            && memory <= capacity.memory_bytes
            && b.host_ports.iter().all(port_free)
    }

    pub fn add(&mut self, b: &Booking) {
        self.requests.cpu_millis += b.requests.cpu_millis;
        self.requests.memory_bytes += b.requests.memory_bytes;
        self.host_ports
            .extend(b.host_ports.iter().filter(|p| p.0 != 0).copied());
    }

    fn remove(&mut self, b: &Booking) {
        self.requests.cpu_millis = self
            .requests
            .cpu_millis
            .saturating_sub(b.requests.cpu_millis);
        self.requests.memory_bytes = self
            .requests
            .memory_bytes
            .saturating_sub(b.requests.memory_bytes);
        for p in b.host_ports.iter().filter(|p| p.0 != 0) {
            if let Some(i) = self.host_ports.iter().position(|h| h == p) {
                self.host_ports.swap_remove(i);
            }
        }
    }
}

/// A key of the maps and indexes below: shared, so that copying a node of
/// a persistent map (every change copies the path to what it changed, up
/// to 64 keys a node) counts references instead of cloning two strings per
/// key, and dropping an old version frees no strings. A key is made once
/// per insert, and the indexes share the record's.
type Key = Arc<ObjectRef>;

/// A namespaced name, borrowed: looks a [`Key`] up without making one (two
/// strings allocated and freed per lookup, several lookups per replica per
/// entry on every member). Compares as `ObjectRef`'s derived order does.
#[derive(Debug, Clone, Copy)]
struct NameRef<'a> {
    namespace: &'a str,
    name: &'a str,
}

impl equivalent::Equivalent<Key> for NameRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.namespace == key.namespace && self.name == key.name
    }
}

impl equivalent::Comparable<Key> for NameRef<'_> {
    fn compare(&self, key: &Key) -> std::cmp::Ordering {
        (self.namespace, self.name).cmp(&(key.namespace.as_str(), key.name.as_str()))
    }
}

fn name_ref<'a>(namespace: &'a str, name: &'a str) -> NameRef<'a> {
    NameRef { namespace, name }
}

/// Indexes over the records, kept by the write helpers; rebuilt on decode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Indexes {
    by_deployment: OrdMap<Key, OrdSet<Key>>,
    by_node: OrdMap<String, OrdSet<Key>>,
    unbound: OrdSet<Key>,
    held: OrdMap<String, Held>,
    cluster_ips: OrdMap<std::net::Ipv4Addr, ObjectRef>,
    node_ports: OrdMap<u16, ObjectRef>,
    /// Replicas per [`ReplicaRecord::phase`], in [`ReplicaPhase`]'s order.
    phases: [u64; PHASES],
}

/// How many [`ReplicaPhase`]s there are (`Gone` is the last).
const PHASES: usize = ReplicaPhase::Gone as usize + 1;

/// The whole replicated state of the cluster.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// `(index, term)` of the last applied entry.
    applied: (u64, u64),
    members: OrdMap<u64, Member>,
    deployments: OrdMap<Key, Arc<StoredDeployment>>,
    replicas: OrdMap<Key, Arc<ReplicaRecord>>,
    nodes: OrdMap<String, Arc<NodeRecord>>,
    node_metas: OrdMap<String, NodeMeta>,
    /// How many times each node name was deleted (`delete node`): node
    /// certificates carry the epoch they were issued at; older ones are revoked.
    node_epochs: OrdMap<String, u64>,
    tokens: OrdMap<String, TokenRecord>,
    config_maps: OrdMap<Key, Arc<StoredConfigMap>>,
    secrets: OrdMap<Key, Arc<StoredSecret>>,
    services: OrdMap<Key, Arc<StoredService>>,
    events: Vector<Arc<EventRecord>>,
    last_event_seq: u64,
    /// Each retained event's repeat key ([`super::events::same_key`]) → its
    /// sequence number (derived).
    event_keys: OrdMap<u64, u64>,
    index: Indexes,
    /// Not replicated: what changed since the node task last took it.
    touched: Touched,
}

/// Equal states hold the same records (indexes follow from them, `touched`
/// is local bookkeeping).
impl PartialEq for State {
    fn eq(&self, other: &State) -> bool {
        self.applied == other.applied
            && self.members == other.members
            && self.deployments == other.deployments
            && self.replicas == other.replicas
            && self.nodes == other.nodes
            && self.node_metas == other.node_metas
            && self.node_epochs == other.node_epochs
            && self.tokens == other.tokens
            && self.config_maps == other.config_maps
            && self.secrets == other.secrets
            && self.services == other.services
            && self.events == other.events
            && self.last_event_seq == other.last_event_seq
    }
}

/// The entries of `map` after `after`, in `namespace` (or all), in key order.
fn in_namespace_after<'a, V>(
    map: &'a OrdMap<Key, V>,
    namespace: Option<&'a str>,
    after: Option<&ObjectRef>,
) -> impl Iterator<Item = (&'a ObjectRef, &'a V)> + 'a {
    let start = match (after, namespace) {
        (Some(a), Some(ns)) if a.namespace.as_str() < ns => Bound::Included(key(ns, "")),
        (Some(a), _) => Bound::Excluded(a.clone()),
        (None, Some(ns)) => Bound::Included(key(ns, "")),
        (None, None) => Bound::Unbounded,
    };
    map.range::<_, ObjectRef>((start, Bound::Unbounded))
        .take_while(move |(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
        .map(|(k, v)| (&**k, v))
}

/// Whether two records of one replica differ in nothing the indexes or its
/// agent's assignment set are built from (only in status, pending reason or
/// the replica it replaces).
fn same_placement(a: &ReplicaRecord, b: &ReplicaRecord) -> bool {
    // Every field named: a new one must be placed on one side or the other.
    let ReplicaRecord {
        namespace,
        name,
        deployment,
        slot,
        revision,
        node,
        bound_at,
        pending_reason: _,
        created_unix_ms,
        observed: _,
        replaces: _,
        terminating_since_unix_ms,
        booking,
        stop_grace_seconds,
    } = a;
    *namespace == b.namespace
        && *name == b.name
        && *deployment == b.deployment
        && *slot == b.slot
        && *revision == b.revision
        && *node == b.node
        && *bound_at == b.bound_at
        && *created_unix_ms == b.created_unix_ms
        && *terminating_since_unix_ms == b.terminating_since_unix_ms
        && *booking == b.booking
        && *stop_grace_seconds == b.stop_grace_seconds
}

fn key(namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

impl State {
    // ---- applying the log -------------------------------------------------

    /// Apply one committed command at `(index, term)`, written in this
    /// controller's [`COMMAND_FORMAT`](super::COMMAND_FORMAT).
    pub fn apply(
        &mut self,
        index: u64,
        term: u64,
        command: &Command,
    ) -> Result<WriteResult, WriteError> {
        self.apply_entry(index, term, super::COMMAND_FORMAT, command)
    }

    /// Apply one committed command at `(index, term)` the way the command
    /// `format` its entry was written in applies it, so an old log replays
    /// to the state it made then. A refused command leaves the records as
    /// they were (only the applied index moves).
    pub fn apply_entry(
        &mut self,
        index: u64,
        term: u64,
        format: u32,
        command: &Command,
    ) -> Result<WriteResult, WriteError> {
        // Only a command that can be refused needs a copy to go back to
        // (a clone is cheap, but every change after it copies a path).
        let before = command.may_be_refused().then(|| self.clone());
        let result = command::execute(self, command, index, format);
        debug_assert!(
            result.is_ok() || before.is_some(),
            "{command:?} was refused but is classified as never refused"
        );
        if let (Err(_), Some(before)) = (&result, before) {
            *self = before;
        }
        self.applied = (index, term);
        result
    }

    /// Move the applied index over an entry that changes no state.
    pub fn apply_nothing(&mut self, index: u64, term: u64) {
        self.applied = (index, term);
    }

    /// Record a membership change.
    pub fn apply_membership(
        &mut self,
        index: u64,
        term: u64,
        added: Option<&Member>,
        removed: Option<u64>,
    ) {
        if let Some(m) = added {
            self.members.insert(m.id, m.clone());
        }
        if let Some(id) = removed {
            self.members.remove(&id);
        }
        self.applied = (index, term);
    }

    /// What changed since the last call.
    pub fn take_touched(&mut self) -> Touched {
        std::mem::take(&mut self.touched)
    }

    // ---- reads -------------------------------------------------------------

    /// `(index, term)` of the last applied entry; `(0, 0)` when empty.
    pub fn applied(&self) -> (u64, u64) {
        self.applied
    }

    pub fn deployment(&self, namespace: &str, name: &str) -> Option<&Arc<StoredDeployment>> {
        self.deployments.get(&name_ref(namespace, name))
    }

    pub fn config_map(&self, namespace: &str, name: &str) -> Option<&Arc<StoredConfigMap>> {
        self.config_maps.get(&name_ref(namespace, name))
    }

    pub fn secret(&self, namespace: &str, name: &str) -> Option<&Arc<StoredSecret>> {
        self.secrets.get(&name_ref(namespace, name))
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<StoredService>> {
        self.services.get(&name_ref(namespace, name))
    }

    /// Services in one namespace, or all, sorted by namespace then name.
    pub fn services<'a>(
        &'a self,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Arc<StoredService>> + 'a {
        self.services
            .iter()
            .filter(move |(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, s)| s)
    }

    /// Services in one namespace, or all, in key order, starting after
    /// `after` (a list page).
    pub fn services_after<'a>(
        &'a self,
        namespace: Option<&'a str>,
        after: Option<&ObjectRef>,
    ) -> impl Iterator<Item = &'a Arc<StoredService>> + 'a {
        in_namespace_after(&self.services, namespace, after).map(|(_, s)| s)
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The Service a cluster IP is allocated to.
    pub fn cluster_ip_holder(&self, ip: std::net::Ipv4Addr) -> Option<&ObjectRef> {
        self.index.cluster_ips.get(&ip)
    }

    /// The Service a node port is allocated to.
    pub fn node_port_holder(&self, port: u16) -> Option<&ObjectRef> {
        self.index.node_ports.get(&port)
    }

    /// Every ConfigMap, or those of one namespace, by namespace and name.
    pub fn config_maps(&self, namespace: Option<&str>) -> Vec<StoredConfigMap> {
        self.config_maps
            .iter()
            .filter(|(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, v)| StoredConfigMap::clone(v))
            .collect()
    }

    /// Every Secret, or those of one namespace, by namespace and name.
    pub fn secrets(&self, namespace: Option<&str>) -> Vec<StoredSecret> {
        self.secrets
            .iter()
            .filter(|(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, v)| StoredSecret::clone(v))
            .collect()
    }

    /// Deployments in one namespace, or all, sorted by namespace then name.
    pub fn deployments<'a>(
        &'a self,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Arc<StoredDeployment>> + 'a {
        self.deployments
            .iter()
            .filter(move |(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, d)| d)
    }

    /// Deployments in key order after `after` (exclusive; `None`: from the
    /// first), in one namespace or all: a list page's start without a scan
    /// of what came before it.
    pub fn deployments_after<'a>(
        &'a self,
        namespace: Option<&'a str>,
        after: Option<&ObjectRef>,
    ) -> impl Iterator<Item = &'a Arc<StoredDeployment>> + 'a {
        in_namespace_after(&self.deployments, namespace, after).map(|(_, d)| d)
    }

    pub fn deployment_count(&self) -> usize {
        self.deployments.len()
    }

    pub fn replica(&self, namespace: &str, name: &str) -> Option<&Arc<ReplicaRecord>> {
        self.replicas.get(&name_ref(namespace, name))
    }

    /// Replicas in one namespace, or all, sorted by namespace then name.
    pub fn replicas<'a>(
        &'a self,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Arc<ReplicaRecord>> + 'a {
        self.replicas
            .iter()
            .filter(move |(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, r)| r)
    }

    /// Replicas in key order after `after` (exclusive; `None`: from the
    /// first), in one namespace or all (see [`State::deployments_after`]).
    pub fn replicas_after<'a>(
        &'a self,
        namespace: Option<&'a str>,
        after: Option<&ObjectRef>,
    ) -> impl Iterator<Item = &'a Arc<ReplicaRecord>> + 'a {
        in_namespace_after(&self.replicas, namespace, after).map(|(_, r)| r)
    }

    pub fn replica_count(&self) -> usize {
        self.replicas.len()
    }

    /// The replicas of one deployment (of every revision, terminating ones
    /// included), by name.
    pub fn replicas_of<'a>(
        &'a self,
        deployment: &ObjectRef,
    ) -> impl Iterator<Item = &'a Arc<ReplicaRecord>> + 'a {
        self.index
            .by_deployment
            .get(deployment)
            .into_iter()
            .flat_map(|keys| keys.iter())
            .filter_map(|k| self.replicas.get(k))
    }

    /// Nodes that replicas are bound to.
    pub fn nodes_with_replicas(&self) -> impl Iterator<Item = &String> + '_ {
        self.index.by_node.keys()
    }

    /// The replicas bound to `node`.
    pub fn replicas_on<'a>(
        &'a self,
        node: &str,
    ) -> impl Iterator<Item = &'a Arc<ReplicaRecord>> + 'a {
        self.index
            .by_node
            .get(node)
            .into_iter()
            .flat_map(|keys| keys.iter())
            .filter_map(|k| self.replicas.get(k))
    }

    /// Every deployment that has replicas (a deleted one's included, until
    /// its replicas are gone).
    pub fn deployments_with_replicas(&self) -> impl Iterator<Item = &ObjectRef> + '_ {
        self.index.by_deployment.keys().map(|k| &**k)
    }

    /// Replicas bound to no node, by namespace and name.
    pub fn unbound(&self) -> impl Iterator<Item = &Arc<ReplicaRecord>> + '_ {
        self.index
            .unbound
            .iter()
            .filter_map(|k| self.replicas.get(k))
    }

    pub fn unbound_count(&self) -> usize {
        self.index.unbound.len()
    }

    /// How many replicas are in `phase` ([`ReplicaRecord::phase`]), kept
    /// as records change: O(1).
    pub fn phase_count(&self, phase: ReplicaPhase) -> u64 {
        self.index.phases[phase as usize]
    }

    /// What the replicas bound to `node` hold.
    pub fn held(&self, node: &str) -> Option<&Held> {
        self.index.held.get(node)
    }

    pub fn node(&self, name: &str) -> Option<&Arc<NodeRecord>> {
        self.nodes.get(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Arc<NodeRecord>> + '_ {
        self.nodes.values()
    }

    pub fn node_meta(&self, name: &str) -> Option<&NodeMeta> {
        self.node_metas.get(name)
    }

    pub fn node_metas(&self) -> impl Iterator<Item = &NodeMeta> + '_ {
        self.node_metas.values()
    }

    /// How many times node name `name` was deleted (0: never).
    pub fn node_epoch(&self, name: &str) -> u64 {
        self.node_epochs.get(name).copied().unwrap_or(0)
    }

    pub fn token(&self, id: &str) -> Option<&TokenRecord> {
        self.tokens.get(id)
    }

    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> + '_ {
        self.tokens.values()
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> + '_ {
        self.members.values()
    }

    /// Stored events that pass `filter`, oldest first, at most `limit` of the
    /// newest ones (0: all).
    pub fn events(&self, filter: &EventFilter, limit: usize) -> Vec<EventRecord> {
        let mut found: Vec<EventRecord> = self
            .events
            .iter()
            .filter(|e| filter.matches(e))
            .map(|e| EventRecord::clone(e))
            .collect();
        if limit > 0 && found.len() > limit {
            found.drain(..found.len() - limit);
        }
        found
    }

    /// The sequence number of the newest event (0: none yet).
    pub fn last_event_seq(&self) -> u64 {
        self.last_event_seq
    }

    /// The indexes as they would be built from the records alone (tests
    /// compare them with the ones kept up to date).
    #[cfg(test)]
    pub(crate) fn indexes_match_records(&self) -> bool {
        let mut fresh = State::default();
        for r in self.replicas.values() {
            fresh.put_replica(ReplicaRecord::clone(r));
        }
        let mut held_a: Vec<(String, Held)> = self.index.held.clone().into_iter().collect();
        let mut held_b: Vec<(String, Held)> = fresh.index.held.clone().into_iter().collect();
        for (_, h) in held_a.iter_mut().chain(held_b.iter_mut()) {
            h.host_ports.sort();
        }
        for sv in self.services.values() {
            fresh.put_service(StoredService::clone(sv));
        }
        self.index.cluster_ips == fresh.index.cluster_ips
            && self.index.node_ports == fresh.index.node_ports
            && self.index.by_deployment == fresh.index.by_deployment
            && self.index.by_node == fresh.index.by_node
            && self.index.unbound == fresh.index.unbound
            && self.index.phases == fresh.index.phases
            && held_a == held_b
    }

    // ---- writes (commands only) --------------------------------------------

    pub(super) fn put_deployment(&mut self, d: StoredDeployment) {
        let k = key(
            &d.deployment.metadata.namespace,
            &d.deployment.metadata.name,
        );
        self.touched.deployments.insert(k.clone());
        let progress_only = self
            .deployments
            .get(&k)
            .is_some_and(|old| old.deployment == d.deployment && old.revisions == d.revisions);
        if !progress_only {
            self.touched.deployment_records.insert(k.clone());
        }
        self.deployments.insert(Arc::new(k), Arc::new(d));
    }

    pub(super) fn put_config_map(&mut self, c: StoredConfigMap) {
        let m = &c.config_map.metadata;
        self.touched.config_objects = true;
        self.config_maps
            .insert(Arc::new(key(&m.namespace, &m.name)), Arc::new(c));
    }

    pub(super) fn remove_config_map(&mut self, k: &ObjectRef) -> Option<Arc<StoredConfigMap>> {
        self.touched.config_objects = true;
        self.config_maps.remove(k)
    }

    pub(super) fn put_secret(&mut self, s: StoredSecret) {
        let m = &s.secret.metadata;
        self.touched.config_objects = true;
        self.secrets
            .insert(Arc::new(key(&m.namespace, &m.name)), Arc::new(s));
    }

    pub(super) fn remove_secret(&mut self, k: &ObjectRef) -> Option<Arc<StoredSecret>> {
        self.touched.config_objects = true;
        self.secrets.remove(k)
    }

    pub(super) fn put_service(&mut self, sv: StoredService) {
        let k = sv.key();
        self.touched.services = true;
        if let Some(ip) = sv.cluster_ip {
            self.index.cluster_ips.insert(ip, k.clone());
        }
        for port in sv.node_ports.iter().filter(|p| **p != 0) {
            self.index.node_ports.insert(*port, k.clone());
        }
        self.services.insert(Arc::new(k), Arc::new(sv));
    }

    pub(super) fn remove_service(&mut self, k: &ObjectRef) -> Option<Arc<StoredService>> {
        let sv = self.services.remove(k)?;
        self.touched.services = true;
        if let Some(ip) = sv.cluster_ip {
            self.index.cluster_ips.remove(&ip);
        }
        for port in &sv.node_ports {
            self.index.node_ports.remove(port);
        }
        Some(sv)
    }

    pub(super) fn remove_deployment(&mut self, k: &ObjectRef) -> Option<Arc<StoredDeployment>> {
        self.touched.deployments.insert(k.clone());
        self.touched.deployment_records.insert(k.clone());
        self.deployments.remove(k)
    }

    pub(super) fn put_replica(&mut self, r: ReplicaRecord) {
        let (k, old) = match self
            .replicas
            .get_key_value(&name_ref(&r.namespace, &r.name))
        {
            // The key already in the map, shared rather than made again.
            Some((held, old)) => (Arc::clone(held), Some(Arc::clone(old))),
            None => (Arc::new(key(&r.namespace, &r.name)), None),
        };
        match old {
            // A status report or a pending reason: the indexes and the
            // node's assignment set stay as they are (at 100,000 replicas
            // re-indexing each reported replica was a tenth of the leader's
            // time, and rebuilding its node's set more).
            Some(old) if same_placement(&old, &r) => {
                self.touched
                    .deployments
                    .insert(key(&r.namespace, &r.deployment));
            }
            old => {
                if let Some(old) = old {
                    self.unindex(&k, &old);
                }
                self.index_replica(&k, &r);
            }
        }
        self.touched.replicas.insert(Arc::clone(&k));
        self.index.phases[r.phase() as usize] += 1;
        if let Some(old) = self.replicas.insert(k, Arc::new(r)) {
            self.index.phases[old.phase() as usize] -= 1;
        }
    }

    pub(super) fn remove_replica(&mut self, k: &ObjectRef) -> Option<Arc<ReplicaRecord>> {
        let (held, old) = self.replicas.remove_with_key(k)?;
        self.index.phases[old.phase() as usize] -= 1;
        self.touched.replicas.insert(held);
        self.unindex(k, &old);
        Some(old)
    }

    fn index_replica(&mut self, k: &Key, r: &ReplicaRecord) {
        let d = key(&r.namespace, &r.deployment);
        match self
            .index
            .by_deployment
            .get_mut(&name_ref(&r.namespace, &r.deployment))
        {
            Some(keys) => {
                keys.insert(Arc::clone(k));
            }
            None => {
                self.index
                    .by_deployment
                    .insert(Arc::new(d.clone()), OrdSet::unit(Arc::clone(k)));
            }
        }
        self.touched.deployments.insert(d);
        match &r.node {
            Some(node) => {
                self.index
                    .by_node
                    .entry(node.clone())
                    .or_default()
                    .insert(k.clone());
                // A node holds an entry only while it holds something, so
                // the index equals one built from the records.
                if let Some(b) = r.booking.as_ref().filter(|b| !b.is_nothing()) {
                    self.index.held.entry(node.clone()).or_default().add(b);
                }
                self.touched.nodes.insert(node.clone());
            }
            None => {
                self.index.unbound.insert(k.clone());
            }
        }
    }

    fn unindex(&mut self, k: &ObjectRef, r: &ReplicaRecord) {
        let d = key(&r.namespace, &r.deployment);
        let deployment = name_ref(&r.namespace, &r.deployment);
        if let Some(keys) = self.index.by_deployment.get_mut(&deployment) {
            keys.remove(k);
            if keys.is_empty() {
                self.index.by_deployment.remove(&deployment);
            }
        }
        self.touched.deployments.insert(d);
        match &r.node {
            Some(node) => {
                if let Some(keys) = self.index.by_node.get_mut(node) {
                    keys.remove(k);
                    if keys.is_empty() {
                        self.index.by_node.remove(node);
                    }
                }
                if let Some(b) = &r.booking {
                    if let Some(h) = self.index.held.get_mut(node) {
                        h.remove(b);
                        if h.requests == Resources::default() && h.host_ports.is_empty() {
                            self.index.held.remove(node);
                        }
                    }
                }
                self.touched.nodes.insert(node.clone());
            }
            None => {
                self.index.unbound.remove(k);
            }
        }
    }

    /// The replicas bound to `node`, as keys.
    pub(super) fn replica_keys_on(&self, node: &str) -> Vec<ObjectRef> {
        self.index
            .by_node
            .get(node)
            .map(|s| s.iter().map(|k| ObjectRef::clone(k)).collect())
            .unwrap_or_default()
    }

    /// The replicas of a deployment, as keys.
    pub(super) fn replica_keys_of(&self, deployment: &ObjectRef) -> Vec<ObjectRef> {
        self.index
            .by_deployment
            .get(deployment)
            .map(|s| s.iter().map(|k| ObjectRef::clone(k)).collect())
            .unwrap_or_default()
    }

    pub(super) fn put_node(&mut self, n: NodeRecord) {
        self.touched.nodes.insert(n.name.clone());
        self.touched.node_records.insert(n.name.clone());
        self.nodes.insert(n.name.clone(), Arc::new(n));
    }

    pub(super) fn put_node_meta(&mut self, m: NodeMeta) {
        // A node's row shows its admin labels and annotations.
        self.touched.node_records.insert(m.name.clone());
        self.node_metas.insert(m.name.clone(), m);
    }

    /// `delete node`: the record and the admins' labels go; the name's epoch
    /// goes up. Its replicas are the caller's to handle first.
    pub(super) fn remove_node(&mut self, name: &str) -> Option<Arc<NodeRecord>> {
        let old = self.nodes.remove(name)?;
        self.touched.nodes.insert(name.to_string());
        self.touched.node_records.insert(name.to_string());
        self.node_metas.remove(name);
        let epoch = self.node_epoch(name) + 1;
        self.node_epochs.insert(name.to_string(), epoch);
        Some(old)
    }

    pub(super) fn put_token(&mut self, t: TokenRecord) {
        self.tokens.insert(t.id.clone(), t);
    }

    /// Number an event after the newest and keep only the newest
    /// [`RETAINED`]. A repeat of a retained event (same type, reason, object
    /// and message) replaces it, counted, at the end.
    pub(super) fn record(&mut self, now: i64, e: NewEvent) {
        let key = super::events::same_key(e.event_type, e.reason, &e.object, &e.message);
        let (count, first) = match self.event_keys.get(&key).copied() {
            Some(seq) => match self.events.binary_search_by(|x| x.seq.cmp(&seq)) {
                Ok(at) if self.events[at].repeats(&e) => {
                    let old = self.events.remove(at);
                    (old.count.saturating_add(1), old.first_time_unix_ms)
                }
                _ => (1, now),
            },
            None => (1, now),
        };
        self.last_event_seq += 1;
        self.event_keys.insert(key, self.last_event_seq);
        self.events.push_back(Arc::new(EventRecord {
            seq: self.last_event_seq,
            time_unix_ms: now,
            count,
            first_time_unix_ms: first,
            event_type: e.event_type,
            reason: e.reason.to_string(),
            object: e.object,
            message: e.message,
        }));
        while self.events.len() as u64 > RETAINED {
            if let Some(gone) = self.events.pop_front() {
                let key = gone.same_key();
                if self.event_keys.get(&key) == Some(&gone.seq) {
                    self.event_keys.remove(&key);
                }
            }
        }
    }

    // ---- snapshots -----------------------------------------------------------

    /// The state encoded for a raft snapshot. Runs on any thread (the state
    /// is a snapshot); the output is the same for equal states.
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        self.encode_to(&mut out)?;
        Ok(out)
    }

    /// [`State::encode`] into `out`, streamed: at 100,000 replicas the
    /// encoding is tens of megabytes, never held whole.
    pub fn encode_to(&self, mut out: impl std::io::Write) -> Result<(), StoreError> {
        out.write_all(MAGIC)
            .map_err(|e| encoding(serde_json::Error::io(e)))?;
        serde_json::to_writer(out, &self.persisted(true)).map_err(encoding)
    }

    /// A state from [`State::encode`]'s bytes, indexes rebuilt.
    pub fn decode(data: &[u8]) -> Result<State, StoreError> {
        let body = data
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| StoreError::Corrupt {
                key: "(snapshot)".into(),
                reason: "not a drover state snapshot (format DRS2)".into(),
            })?;
        let p: Owned = serde_json::from_slice(body).map_err(|e| StoreError::Corrupt {
            key: "(snapshot)".into(),
            reason: e.to_string(),
        })?;
        let mut s = State {
            applied: (p.applied_index, p.applied_term),
            members: p.members.into_iter().map(|m| (m.id, m)).collect(),
            node_metas: p
                .node_metas
                .into_iter()
                .map(|m| (m.name.clone(), m))
                .collect(),
            node_epochs: p.node_epochs.into_iter().collect(),
            tokens: p.tokens.into_iter().map(|t| (t.id.clone(), t)).collect(),
            config_maps: p
                .config_maps
                .into_iter()
                .map(|c| {
                    let m = &c.config_map.metadata;
                    (Arc::new(key(&m.namespace, &m.name)), Arc::new(c))
                })
                .collect(),
            secrets: p
                .secrets
                .into_iter()
                .map(|s| {
                    let m = &s.secret.metadata;
                    (Arc::new(key(&m.namespace, &m.name)), Arc::new(s))
                })
                .collect(),
            event_keys: p.events.iter().map(|e| (e.same_key(), e.seq)).collect(),
            events: p.events.into_iter().map(Arc::new).collect(),
            last_event_seq: p.last_event_seq,
            ..State::default()
        };
        for d in p.deployments {
            s.put_deployment(d);
        }
        for n in p.nodes {
            s.put_node(n);
        }
        for r in p.replicas {
            s.put_replica(r);
        }
        for sv in p.services {
            s.put_service(sv);
        }
        s.touched = Touched::default();
        Ok(s)
    }

    /// A short hex digest of the replicated records (not the applied index):
    /// equal on all members that applied the same entries. Encodes the whole
    /// state: call it off the raft task.
    pub fn state_hash(&self) -> String {
        let mut hasher = HashWriter(Sha256::new());
        if serde_json::to_writer(&mut hasher, &self.persisted(false)).is_err() {
            return "error: unencodable state".into();
        }
        let digest = hasher.0.finalize();
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    fn persisted(&self, with_applied: bool) -> Borrowed<'_> {
        let (applied_index, applied_term) = if with_applied { self.applied } else { (0, 0) };
        Borrowed {
            applied_index,
            applied_term,
            members: Seq(&self.members, |m| m),
            deployments: Seq(&self.deployments, |d| d.as_ref()),
            replicas: Seq(&self.replicas, |r| r.as_ref()),
            nodes: Seq(&self.nodes, |n| n.as_ref()),
            node_metas: Seq(&self.node_metas, |m| m),
            node_epochs: self
                .node_epochs
                .iter()
                .map(|(k, v)| (k.as_str(), *v))
                .collect(),
            tokens: Seq(&self.tokens, |t| t),
            config_maps: Seq(&self.config_maps, |c| c.as_ref()),
            secrets: Seq(&self.secrets, |s| s.as_ref()),
            services: Seq(&self.services, |s| s.as_ref()),
            events: self.events.iter().map(|e| e.as_ref()).collect(),
            last_event_seq: self.last_event_seq,
        }
    }
}

const MAGIC: &[u8; 4] = b"DRS2";

fn encoding(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        key: "(encoding)".into(),
        reason: e.to_string(),
    }
}

/// A map's values, serialised as a sequence without copying them.
struct Seq<'a, K, V, T: 'a>(&'a OrdMap<K, V>, fn(&'a V) -> &'a T);

impl<K: Ord + Clone, V: Clone, T> Seq<'_, K, V, T> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Ord + Clone, V: Clone, T: Serialize> Serialize for Seq<'_, K, V, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.values().map(self.1))
    }
}

#[derive(Serialize)]
struct Borrowed<'a> {
    applied_index: u64,
    applied_term: u64,
    members: Seq<'a, u64, Member, Member>,
    deployments: Seq<'a, Key, Arc<StoredDeployment>, StoredDeployment>,
    replicas: Seq<'a, Key, Arc<ReplicaRecord>, ReplicaRecord>,
    nodes: Seq<'a, String, Arc<NodeRecord>, NodeRecord>,
    node_metas: Seq<'a, String, NodeMeta, NodeMeta>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    node_epochs: Vec<(&'a str, u64)>,
    tokens: Seq<'a, String, TokenRecord, TokenRecord>,
    config_maps: Seq<'a, Key, Arc<StoredConfigMap>, StoredConfigMap>,
    secrets: Seq<'a, Key, Arc<StoredSecret>, StoredSecret>,
    /// Left out when empty: states without Services hash as before issue 15.
    #[serde(skip_serializing_if = "Seq::is_empty")]
    services: Seq<'a, Key, Arc<StoredService>, StoredService>,
    events: Vec<&'a EventRecord>,
    last_event_seq: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Owned {
    applied_index: u64,
    applied_term: u64,
    members: Vec<Member>,
    deployments: Vec<StoredDeployment>,
    replicas: Vec<ReplicaRecord>,
    nodes: Vec<NodeRecord>,
    node_metas: Vec<NodeMeta>,
    #[serde(default)]
    node_epochs: Vec<(String, u64)>,
    tokens: Vec<TokenRecord>,
    /// Absent in snapshots from before issue 16.
    #[serde(default)]
    config_maps: Vec<StoredConfigMap>,
    #[serde(default)]
    secrets: Vec<StoredSecret>,
    /// Absent in snapshots from before issue 15, and when there are none.
    #[serde(default)]
    services: Vec<StoredService>,
    events: Vec<EventRecord>,
    last_event_seq: u64,
}

struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The state a brand-new cluster starts from: just its members, at index 1.
pub fn initial(members: &std::collections::BTreeMap<u64, String>) -> State {
    let mut s = State::default();
    for (id, address) in members {
        s.members.insert(
            *id,
            Member {
                id: *id,
                address: address.clone(),
            },
        );
    }
    s.applied = (1, 1);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use equivalent::{Comparable, Equivalent};
    use proptest::prelude::*;

    proptest! {
        /// A borrowed name finds exactly what an `ObjectRef` key finds: it
        /// orders and equals as the derived order does.
        #[test]
        fn a_borrowed_name_orders_as_an_object_ref(
            a in ("[a-c]{0,3}", "[a-c-]{0,4}"),
            b in ("[a-c]{0,3}", "[a-c-]{0,4}"),
        ) {
            let other: Key = Arc::new(key(&b.0, &b.1));
            let borrowed = name_ref(&a.0, &a.1);
            prop_assert_eq!(borrowed.compare(&other), key(&a.0, &a.1).cmp(&other));
            prop_assert_eq!(borrowed.equivalent(&other), a == b);
        }
    }
}
