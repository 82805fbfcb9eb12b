//! The replicated state machine: what every controller agrees on.
//!
//! The state lives in memory ([`State`]: typed records and the indexes the
//! loops need) and changes only by applying committed raft entries, in log
//! order, on the raft node's task. It reaches the disk as raft snapshots
//! (`raft/storage.rs`: the encoded state beside the log in sled); at start a
//! controller decodes its last snapshot and re-applies the log after it.
//!
//! ```text
//!  raft task ── apply(entry) ──▶ State (owned through Arc, copy on write)
//!                                   │ snapshot(): Arc<State>, free
//!  API, leader loops, dispatcher ◀──┘ read without locks held
//! ```
//!
//! [`State::apply`] is deterministic: the same entries in the same order give
//! the same state on every member. Timestamps arrive inside the command,
//! chosen by the controller that proposed it, never read from the clock here.

mod command;
pub mod config_objects;
pub mod events;
pub mod history;
pub mod node_meta;
pub mod objects;
pub mod services;
pub mod state;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use drover_manifest::{Deployment, PodTemplate};
use history::{History, Since};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use command::{
    ApplyOutcome, Command, NodeRegistration, ObjectRef, RolloutRecord, Write, WriteError,
    WriteResult, BINDINGS_NUMBERED, CHANGE_CAUSE_ANNOTATION, COMMAND_FORMAT, CREATES_BOUND,
    DECISIONS_RECHECKED,
};
pub use objects::{
    Booking, NodeCondition, NodeRecord, ReplicaObserved, ReplicaPhase, ReplicaRecord, Resources,
    TokenRecord,
};
pub use state::{Held, State, Touched};

/// A snapshot that does not decode: fatal for the controller, the state on
/// disk or on the wire is not what drover wrote.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("corrupt state entry {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// A deployment as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredDeployment {
    pub deployment: Deployment,
    /// Bumped on every change to the spec (apply that changes it, scale).
    pub generation: u64,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
    /// Templates this deployment ran, oldest first; the last is the current
    /// one. Kept up to `revisionHistoryLimit` old ones, plus any a replica
    /// still runs (a rollout in progress).
    #[serde(default)]
    pub revisions: Vec<Revision>,
    #[serde(default)]
    pub rollout: RolloutState,
}

impl StoredDeployment {
    /// The revision with this template hash, if it is still kept.
    pub fn revision_by_hash(&self, hash: &str) -> Option<&Revision> {
        self.revisions.iter().find(|r| r.hash == hash)
    }

    /// The template of the revision with this hash, the current one's
    /// included; `None` once the revision is no longer kept.
    pub fn template_by_hash(&self, hash: &str) -> Option<&PodTemplate> {
        if hash == self.current_revision_hash() {
            Some(&self.deployment.spec.template)
        } else {
            self.revision_by_hash(hash).map(|r| &r.template)
        }
    }

    /// The hash of the current template: its newest revision's (computed for
    /// a deployment stored before revisions existed).
    pub fn current_revision_hash(&self) -> String {
        match self.revisions.last() {
            Some(r) => r.hash.clone(),
            None => revision(&self.deployment.spec.template),
        }
    }

    /// The number of the current revision (0 for a deployment stored before
    /// revisions existed and not changed since).
    pub fn current_revision_number(&self) -> u64 {
        self.revisions.last().map_or(0, |r| r.number)
    }
}

/// One template a deployment has run, as `rollout history` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    /// 1, 2, …; a rollback moves the old template to the next number.
    pub number: u64,
    /// The template hash in replica names (`<deployment>-<hash>-<slot>`).
    pub hash: String,
    pub template: PodTemplate,
    /// When this template became current.
    pub created_unix_ms: i64,
    /// The `kubernetes.io/change-cause` annotation when it became current.
    pub change_cause: String,
}

/// Hex digits of the template hash in replica names: 40 bits, Kubernetes'
/// pod-template-hash length (agents decide "same spec" on the full SHA-256
/// of the template, not on this).
const REVISION_LEN: usize = 10;

/// A stable short hash of a pod template: the same template gives the same
/// revision on every controller and across versions of this process.
pub fn revision(template: &PodTemplate) -> String {
    let json = serde_json::to_vec(template).unwrap_or_default();
    let digest = Sha256::digest(&json);
    digest
        .iter()
        .flat_map(|b| [b >> 4, b & 0xf])
        .take(REVISION_LEN)
        .map(|n| char::from_digit(u32::from(n), 16).unwrap_or('0'))
        .collect()
}

/// Where the current rollout stands, as the leader's planner records it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RolloutState {
    /// `rollout pause`: no replicas are replaced until resumed.
    #[serde(default)]
    pub paused: bool,
    /// When the rollout last made progress (a new template, a new replica
    /// becoming available); the progress deadline counts from here.
    #[serde(default)]
    pub progress_unix_ms: i64,
    /// Updated replicas available when progress was last recorded.
    #[serde(default)]
    pub available_updated: u32,
    /// Why the rollout failed, once its progress deadline passed.
    #[serde(default)]
    pub failed: Option<String>,
    /// Set when the current revision is an automatic rollback: why.
    #[serde(default)]
    pub rolled_back: Option<String>,
}

/// A controller and where its gRPC listener is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub address: String,
}

/// Handle to the state machine: the current [`State`], shared. Cheap to
/// clone; reads may run on any task, writes only from the raft node task
/// (and tests).
#[derive(Clone, Default)]
pub struct Store {
    current: Arc<RwLock<Arc<State>>>,
    feeds: Arc<Mutex<Vec<Weak<Mutex<Touched>>>>>,
    /// Recent versions, for watches (pushed under `current`'s write lock, so
    /// a snapshot's index is always in it or older than its base).
    history: Arc<Mutex<History>>,
}

/// What changed in the state since its holder last looked: a loop takes it
/// each round and looks only at that (a new feed starts with everything).
pub struct ChangeFeed {
    pending: Arc<Mutex<Touched>>,
}

impl ChangeFeed {
    /// The changes since the last call. Take them before reading the state:
    /// the state read after is at least as new as every change taken.
    pub fn take(&self) -> Touched {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Ask for one look at everything at the next [`ChangeFeed::take`].
    pub fn reset(&self) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .all = true;
    }
}

impl Store {
    pub fn new(state: State) -> Store {
        let state = Arc::new(state);
        Store {
            history: Arc::new(Mutex::new(History::new(
                Arc::clone(&state),
                history::KEPT_VERSIONS,
            ))),
            current: Arc::new(RwLock::new(state)),
            feeds: Arc::default(),
        }
    }

    /// An empty store that keeps `kept` versions for watches (see
    /// [`history`]).
    pub fn with_history(kept: usize) -> Store {
        Store {
            history: Arc::new(Mutex::new(History::new(Arc::default(), kept))),
            ..Store::default()
        }
    }

    /// The state at applied index `index` and the versions after it (at most
    /// `limit`), for a watch: see [`history`].
    pub fn since(&self, index: u64, limit: usize) -> Since {
        let applied = self.applied().0;
        self.history().since(index, applied, limit)
    }

    /// Changes whenever a version that changed something is recorded.
    pub fn watch_versions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.history().subscribe()
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A feed of the changes applied from now on, starting with everything.
    pub fn subscribe(&self) -> ChangeFeed {
        let pending = Arc::new(Mutex::new(Touched::everything()));
        self.feeds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(&pending));
        ChangeFeed { pending }
    }

    fn publish(&self, touched: &Touched) {
        if touched.is_empty() {
            return;
        }
        let mut feeds = self.feeds.lock().unwrap_or_else(PoisonError::into_inner);
        feeds.retain(|feed| match feed.upgrade() {
            Some(pending) => {
                pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .merge(touched);
                true
            }
            None => false,
        });
    }

    /// The state as of now: a consistent snapshot that later applies do not
    /// change.
    pub fn snapshot(&self) -> Arc<State> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Change the state in place (copying what a reader's snapshot still
    /// shares). The raft node task is the only caller outside tests.
    pub fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let (out, touched) = {
            let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
            let state = Arc::make_mut(&mut current);
            let out = f(state);
            let touched = state.take_touched();
            if !touched.is_empty() {
                self.history().push(Arc::clone(&current), touched.clone());
            }
            (out, touched)
        };
        self.publish(&touched);
        out
    }

    /// Replace the whole state (a snapshot installed).
    pub fn replace(&self, state: State) {
        {
            let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
            *current = Arc::new(state);
            self.history().restart(Arc::clone(&current));
        }
        self.publish(&Touched::everything());
    }

    /// Apply one committed command at `(index, term)`, written in this
    /// controller's [`COMMAND_FORMAT`].
    pub fn apply(
        &self,
        index: u64,
        term: u64,
        command: &Command,
    ) -> Result<WriteResult, WriteError> {
        self.apply_entry(index, term, COMMAND_FORMAT, command)
    }

    /// Apply one committed command at `(index, term)` as the command
    /// `format` its entry was written in says.
    pub fn apply_entry(
        &self,
        index: u64,
        term: u64,
        format: u32,
        command: &Command,
    ) -> Result<WriteResult, WriteError> {
        self.update(|s| s.apply_entry(index, term, format, command))
    }

    /// `(index, term)` of the last applied entry; `(0, 0)` for a fresh store.
    pub fn applied(&self) -> (u64, u64) {
        self.snapshot().applied()
    }

    pub fn deployment(&self, namespace: &str, name: &str) -> Option<StoredDeployment> {
        self.snapshot()
            .deployment(namespace, name)
            .map(|d| StoredDeployment::clone(d))
    }

    /// Deployments in one namespace, or all when `namespace` is `None`, sorted
    /// by namespace then name.
    pub fn deployments(&self, namespace: Option<&str>) -> Vec<StoredDeployment> {
        self.snapshot()
            .deployments(namespace)
            .map(|d| StoredDeployment::clone(d))
            .collect()
    }

    /// Deployments keyed by `(namespace, name)`, for joining with replicas.
    pub fn deployments_by_key(
        &self,
        namespace: Option<&str>,
    ) -> std::collections::HashMap<(String, String), StoredDeployment> {
        self.snapshot()
            .deployments(namespace)
            .map(|d| {
                let m = &d.deployment.metadata;
                (
                    (m.namespace.clone(), m.name.clone()),
                    StoredDeployment::clone(d),
                )
            })
            .collect()
    }

    /// Join tokens, by id.
    pub fn tokens(&self) -> Vec<TokenRecord> {
        self.snapshot().tokens().cloned().collect()
    }

    pub fn token(&self, id: &str) -> Option<TokenRecord> {
        self.snapshot().token(id).cloned()
    }

    pub fn nodes(&self) -> Vec<NodeRecord> {
        self.snapshot()
            .nodes()
            .map(|n| NodeRecord::clone(n))
            .collect()
    }

    pub fn node(&self, name: &str) -> Option<NodeRecord> {
        self.snapshot().node(name).map(|n| NodeRecord::clone(n))
    }

    /// How many times node name `name` was deleted: node certificates of an
    /// older epoch are revoked.
    pub fn node_epoch(&self, name: &str) -> u64 {
        self.snapshot().node_epoch(name)
    }

    /// Every node's admin labels and annotations, by node name.
    pub fn node_metas(&self) -> BTreeMap<String, node_meta::NodeMeta> {
        self.snapshot()
            .node_metas()
            .map(|m| (m.name.clone(), m.clone()))
            .collect()
    }

    /// Replicas in one namespace, or all, sorted by namespace then name.
    pub fn replicas(&self, namespace: Option<&str>) -> Vec<ReplicaRecord> {
        self.snapshot()
            .replicas(namespace)
            .map(|r| ReplicaRecord::clone(r))
            .collect()
    }

    /// Stored events that pass `filter`, oldest first, at most `limit` of the
    /// newest ones (0: all).
    pub fn events(&self, filter: &events::EventFilter, limit: usize) -> Vec<events::EventRecord> {
        self.snapshot().events(filter, limit)
    }

    /// The sequence number of the newest stored event (0: none yet).
    pub fn last_event_seq(&self) -> u64 {
        self.snapshot().last_event_seq()
    }

    pub fn members(&self) -> Vec<Member> {
        self.snapshot().members().cloned().collect()
    }

    pub fn member_addresses(&self) -> BTreeMap<u64, String> {
        self.snapshot()
            .members()
            .map(|m| (m.id, m.address.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests;
