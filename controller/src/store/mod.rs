//! The replicated state machine: what every controller agrees on.
//!
//! It lives in the `state` tree of the controller's sled database, beside the
//! raft log. Keys are grouped by prefix:
//!
//! ```text
//!  meta/applied          (index, term) of the last applied entry
//!  meta/snapshot         SnapshotMetadata of the last snapshot installed here
//!  deploy/<ns>/<name>    StoredDeployment (JSON)
//!  member/<id:be64>      Member (JSON): where each controller listens
//!  node/<name>           NodeRecord (JSON): a host with an agent
//!  replica/<ns>/<name>   ReplicaRecord (JSON): one copy of a deployment
//!  event/<seq:020>       EventRecord (JSON): node and replica lifecycle, newest last
//! ```
//!
//! [`Store::apply`] is deterministic: the same entries in the same order give the
//! same bytes on every member. Timestamps arrive inside the command, chosen by
//! the controller that proposed it, never read from the clock here. Each entry's
//! effects and the new applied index are written in one sled batch, so a crash
//! leaves either all of an entry applied or none of it.

mod command;
pub mod config_objects;
pub mod events;
pub mod node_meta;
pub mod objects;
mod snapshot;

use std::collections::BTreeMap;

use drover_manifest::{Deployment, PodTemplate};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use command::{
    ApplyOutcome, Command, NodeRegistration, ObjectRef, RolloutRecord, Write, WriteError,
    WriteResult, CHANGE_CAUSE_ANNOTATION,
};
pub use objects::{
    Booking, NodeCondition, NodeRecord, ReplicaObserved, ReplicaPhase, ReplicaRecord, Resources,
    TokenRecord,
};

const APPLIED_KEY: &[u8] = b"meta/applied";
const SNAPSHOT_META_KEY: &[u8] = b"meta/snapshot";
const META_PREFIX: &[u8] = b"meta/";
const DEPLOY_PREFIX: &str = "deploy/";
const MEMBER_PREFIX: &[u8] = b"member/";

/// Storage failures of the state machine. All are fatal for the controller:
/// the state on disk is not what drover wrote.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
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

/// Handle to the state machine. Cheap to clone; reads may run on any task,
/// writes only from the raft node task.
#[derive(Clone)]
pub struct Store {
    pub(crate) tree: sled::Tree,
}

impl Store {
    pub fn open(db: &sled::Db) -> Result<Store, StoreError> {
        Ok(Store {
            tree: db.open_tree("state")?,
        })
    }

    /// `(index, term)` of the last applied entry; `(0, 0)` for a fresh store.
    pub fn applied(&self) -> Result<(u64, u64), StoreError> {
        match self.tree.get(APPLIED_KEY)? {
            None => Ok((0, 0)),
            Some(v) => decode_applied(&v),
        }
    }

    /// Metadata of the last snapshot installed into this store, if any.
    pub fn snapshot_meta(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(SNAPSHOT_META_KEY)?.map(|v| v.to_vec()))
    }

    /// Apply one committed command at `(index, term)`.
    pub fn apply(
        &self,
        index: u64,
        term: u64,
        command: &Command,
    ) -> Result<Result<WriteResult, WriteError>, StoreError> {
        let mut view = command::View::new(self);
        let outcome = command::execute(&mut view, command)?;
        let mut batch = sled::Batch::default();
        if outcome.is_ok() {
            view.store_events()?;
            view.into_batch(&mut batch);
        }
        batch.insert(APPLIED_KEY, encode_applied(index, term).to_vec());
        self.tree.apply_batch(batch)?;
        Ok(outcome)
    }

    /// Advance the applied index over an entry that changes no state (a new
    /// leader's empty entry, an undecodable entry that was logged and skipped).
    pub fn apply_nothing(&self, index: u64, term: u64) -> Result<(), StoreError> {
        self.tree
            .insert(APPLIED_KEY, encode_applied(index, term).to_vec())?;
        Ok(())
    }

    /// Record a membership change together with the applied index.
    pub fn apply_membership(
        &self,
        index: u64,
        term: u64,
        added: Option<&Member>,
        removed: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        if let Some(m) = added {
            batch.insert(member_key(m.id), to_json(m)?);
        }
        if let Some(id) = removed {
            batch.remove(member_key(id));
        }
        batch.insert(APPLIED_KEY, encode_applied(index, term).to_vec());
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    pub fn deployment(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<StoredDeployment>, StoreError> {
        let key = deploy_key(namespace, name);
        match self.tree.get(key.as_bytes())? {
            None => Ok(None),
            Some(v) => from_json(&key, &v).map(Some),
        }
    }

    /// Deployments in one namespace, or all when `namespace` is `None`, sorted
    /// by namespace then name.
    pub fn deployments(
        &self,
        namespace: Option<&str>,
    ) -> Result<Vec<StoredDeployment>, StoreError> {
        let prefix = match namespace {
            Some(ns) => format!("{DEPLOY_PREFIX}{ns}/"),
            None => DEPLOY_PREFIX.to_string(),
        };
        self.scan(&prefix)
    }

    /// Deployments keyed by `(namespace, name)`, for joining with replicas.
    pub fn deployments_by_key(
        &self,
        namespace: Option<&str>,
    ) -> Result<std::collections::HashMap<(String, String), StoredDeployment>, StoreError> {
        Ok(self
            .deployments(namespace)?
            .into_iter()
            .map(|d| {
                let m = &d.deployment.metadata;
                ((m.namespace.clone(), m.name.clone()), d)
            })
            .collect())
    }

    /// Join tokens, by id.
    pub fn tokens(&self) -> Result<Vec<objects::TokenRecord>, StoreError> {
        self.scan(objects::TOKEN_PREFIX)
    }

    pub fn token(&self, id: &str) -> Result<Option<objects::TokenRecord>, StoreError> {
        let key = objects::token_key(id);
        match self.tree.get(key.as_bytes())? {
            None => Ok(None),
            Some(v) => from_json(&key, &v).map(Some),
        }
    }

    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.scan(objects::NODE_PREFIX)
    }

    pub fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        let key = objects::node_key(name);
        match self.tree.get(key.as_bytes())? {
            None => Ok(None),
            Some(v) => from_json(&key, &v).map(Some),
        }
    }

    /// Replicas in one namespace, or all, sorted by namespace then name.
    pub fn replicas(&self, namespace: Option<&str>) -> Result<Vec<ReplicaRecord>, StoreError> {
        match namespace {
            Some(ns) => self.scan(&format!("{}{ns}/", objects::REPLICA_PREFIX)),
            None => self.scan(objects::REPLICA_PREFIX),
        }
    }

    fn scan<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, StoreError> {
        self.tree
            .scan_prefix(prefix.as_bytes())
            .map(|kv| {
                let (k, v) = kv?;
                from_json(&String::from_utf8_lossy(&k), &v)
            })
            .collect()
    }

    /// Stored events that pass `filter`, oldest first, at most `limit` of the
    /// newest ones (0: all).
    pub fn events(
        &self,
        filter: &events::EventFilter,
        limit: usize,
    ) -> Result<Vec<events::EventRecord>, StoreError> {
        let start = events::event_key(filter.after_seq.saturating_add(1));
        let end = events::event_key(u64::MAX);
        let mut found = Vec::new();
        for kv in self.tree.range(start.as_bytes()..=end.as_bytes()) {
            let (k, v) = kv?;
            let e: events::EventRecord = from_json(&String::from_utf8_lossy(&k), &v)?;
            if filter.matches(&e) {
                found.push(e);
            }
        }
        if limit > 0 && found.len() > limit {
            found.drain(..found.len() - limit);
        }
        Ok(found)
    }

    /// The sequence number of the newest stored event (0: none yet).
    pub fn last_event_seq(&self) -> Result<u64, StoreError> {
        let Some(k) = self
            .tree
            .scan_prefix(events::EVENT_PREFIX)
            .keys()
            .next_back()
        else {
            return Ok(0);
        };
        let key = String::from_utf8_lossy(&k?).into_owned();
        key[events::EVENT_PREFIX.len()..]
            .parse::<u64>()
            .map_err(|e| StoreError::Corrupt {
                key,
                reason: e.to_string(),
            })
    }

    pub fn members(&self) -> Result<Vec<Member>, StoreError> {
        self.tree
            .scan_prefix(MEMBER_PREFIX)
            .map(|kv| {
                let (k, v) = kv?;
                from_json(&format!("member/{:?}", k.get(7..)), &v)
            })
            .collect()
    }

    pub fn member_addresses(&self) -> Result<BTreeMap<u64, String>, StoreError> {
        Ok(self
            .members()?
            .into_iter()
            .map(|m| (m.id, m.address))
            .collect())
    }

    /// A short hex digest of every replicated key and value (not `meta/`):
    /// equal on all members that applied the same entries.
    pub fn state_hash(&self) -> Result<String, StoreError> {
        let mut hasher = Sha256::new();
        for kv in self.tree.iter() {
            let (k, v) = kv?;
            if k.starts_with(META_PREFIX) {
                continue;
            }
            hasher.update((k.len() as u64).to_be_bytes());
            hasher.update(&k);
            hasher.update((v.len() as u64).to_be_bytes());
            hasher.update(&v);
        }
        let digest = hasher.finalize();
        Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
    }

    /// The replicated state serialised for a raft snapshot, and the index it
    /// reflects. Called from the node task, so no apply runs concurrently.
    pub fn snapshot_data(&self) -> Result<(Vec<u8>, u64), StoreError> {
        let (applied, _) = self.applied()?;
        let pairs = self
            .tree
            .iter()
            .filter(|kv| !matches!(kv, Ok((k, _)) if k.starts_with(META_PREFIX)));
        Ok((snapshot::encode(pairs)?, applied))
    }

    /// The state a brand-new cluster starts from: just its members.
    pub fn initial_data(members: &BTreeMap<u64, String>) -> Result<Vec<u8>, StoreError> {
        let mut pairs = Vec::new();
        for (id, address) in members {
            let m = Member {
                id: *id,
                address: address.clone(),
            };
            pairs.push(Ok((
                sled::IVec::from(member_key(*id)),
                sled::IVec::from(to_json(&m)?),
            )));
        }
        snapshot::encode(pairs.into_iter())
    }

    /// Replace the whole state with a snapshot's, atomically, and remember the
    /// snapshot's metadata (so a crash before the raft log is truncated to match
    /// can be repaired at start-up).
    pub fn restore(
        &self,
        data: &[u8],
        index: u64,
        term: u64,
        snapshot_meta: &[u8],
    ) -> Result<(), StoreError> {
        let pairs = snapshot::decode(data)?;
        let mut batch = sled::Batch::default();
        for kv in self.tree.iter() {
            let (k, _) = kv?;
            batch.remove(k);
        }
        for (k, v) in pairs {
            batch.insert(k, v);
        }
        batch.insert(APPLIED_KEY, encode_applied(index, term).to_vec());
        batch.insert(SNAPSHOT_META_KEY, snapshot_meta.to_vec());
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    pub(crate) fn get_raw(&self, key: &str) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.tree.get(key.as_bytes())?)
    }
}

pub(crate) fn deploy_key(namespace: &str, name: &str) -> String {
    format!("{DEPLOY_PREFIX}{namespace}/{name}")
}

fn member_key(id: u64) -> Vec<u8> {
    let mut k = MEMBER_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn encode_applied(index: u64, term: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&index.to_be_bytes());
    b[8..].copy_from_slice(&term.to_be_bytes());
    b
}

fn decode_applied(v: &[u8]) -> Result<(u64, u64), StoreError> {
    let corrupt = || StoreError::Corrupt {
        key: "meta/applied".into(),
        reason: format!("expected 16 bytes, found {}", v.len()),
    };
    let index = v
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(corrupt)?;
    let term = v
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(corrupt)?;
    Ok((u64::from_be_bytes(index), u64::from_be_bytes(term)))
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
        key: "(encoding)".into(),
        reason: e.to_string(),
    })
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests;
