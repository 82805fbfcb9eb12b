//! Commands: the writes that go through the raft log, and what applying them
//! does to the state.
//!
//! A [`Write`] is what a client asks for; the raft node turns membership writes
//! into raft configuration changes and everything else into a [`Command`]
//! entry. Applying a command is a pure function of the current state and the
//! command: refusals (`WriteError`) are decided the same way on every member.

use serde::{Deserialize, Serialize};

use drover_proto::manifest::Deployment;

use super::{deploy_key, from_json, to_json, Store, StoreError, StoredDeployment};

/// A namespaced object name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A state-machine command, as stored in a raft entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create or update deployments, all in one entry (all or nothing).
    Apply {
        deployments: Vec<Deployment>,
        now_unix_ms: i64,
    },
    /// Delete deployments; with `ignore_not_found` false, one missing name
    /// refuses the whole command.
    Delete {
        refs: Vec<ObjectRef>,
        ignore_not_found: bool,
    },
    Scale {
        target: ObjectRef,
        replicas: u32,
        now_unix_ms: i64,
    },
}

/// What a client may ask the cluster to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Write {
    Command(Command),
    AddMember { id: u64, address: String },
    RemoveMember { id: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyOutcome {
    Created,
    Configured,
    Unchanged,
}

/// The result of an applied write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteResult {
    Applied(Vec<(ObjectRef, ApplyOutcome, u64)>),
    Deleted(Vec<ObjectRef>),
    Scaled {
        previous: u32,
        replicas: u32,
        generation: u64,
    },
    MembershipChanged,
}

/// A write the state machine refused; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WriteError {
    #[error("deployment {name:?} not found in namespace {namespace:?}")]
    NotFound { namespace: String, name: String },
}

pub(super) fn execute(
    store: &Store,
    command: &Command,
    batch: &mut sled::Batch,
) -> Result<Result<WriteResult, WriteError>, StoreError> {
    match command {
        Command::Apply {
            deployments,
            now_unix_ms,
        } => {
            let mut results = Vec::with_capacity(deployments.len());
            for d in deployments {
                let target = ObjectRef {
                    namespace: d.metadata.namespace.clone(),
                    name: d.metadata.name.clone(),
                };
                let key = deploy_key(&target.namespace, &target.name);
                let existing: Option<StoredDeployment> = match store.get_raw(&key)? {
                    Some(v) => Some(from_json(&key, &v)?),
                    None => None,
                };
                let (stored, outcome) = match existing {
                    None => (
                        StoredDeployment {
                            deployment: d.clone(),
                            generation: 1,
                            created_unix_ms: *now_unix_ms,
                            updated_unix_ms: *now_unix_ms,
                        },
                        ApplyOutcome::Created,
                    ),
                    Some(old) if old.deployment == *d => {
                        results.push((target, ApplyOutcome::Unchanged, old.generation));
                        continue;
                    }
                    Some(old) => (
                        StoredDeployment {
                            deployment: d.clone(),
                            generation: old.generation + 1,
                            created_unix_ms: old.created_unix_ms,
                            updated_unix_ms: *now_unix_ms,
                        },
                        ApplyOutcome::Configured,
                    ),
                };
                batch.insert(key.as_bytes(), to_json(&stored)?);
                results.push((target, outcome, stored.generation));
            }
            Ok(Ok(WriteResult::Applied(results)))
        }
        Command::Delete {
            refs,
            ignore_not_found,
        } => {
            let mut deleted = Vec::new();
            for r in refs {
                let key = deploy_key(&r.namespace, &r.name);
                if store.get_raw(&key)?.is_some() {
                    batch.remove(key.as_bytes());
                    if !deleted.contains(r) {
                        deleted.push(r.clone());
                    }
                } else if !ignore_not_found {
                    *batch = sled::Batch::default();
                    return Ok(Err(WriteError::NotFound {
                        namespace: r.namespace.clone(),
                        name: r.name.clone(),
                    }));
                }
            }
            Ok(Ok(WriteResult::Deleted(deleted)))
        }
        Command::Scale {
            target,
            replicas,
            now_unix_ms,
        } => {
            let key = deploy_key(&target.namespace, &target.name);
            let Some(raw) = store.get_raw(&key)? else {
                return Ok(Err(WriteError::NotFound {
                    namespace: target.namespace.clone(),
                    name: target.name.clone(),
                }));
            };
            let mut stored: StoredDeployment = from_json(&key, &raw)?;
            let previous = stored.deployment.spec.replicas;
            if previous != *replicas {
                stored.deployment.spec.replicas = *replicas;
                stored.generation += 1;
                stored.updated_unix_ms = *now_unix_ms;
                batch.insert(key.as_bytes(), to_json(&stored)?);
            }
            Ok(Ok(WriteResult::Scaled {
                previous,
                replicas: *replicas,
                generation: stored.generation,
            }))
        }
    }
}
