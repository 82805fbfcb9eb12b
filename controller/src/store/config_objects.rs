//! ConfigMaps and Secrets in the state machine, and the commands that write
//! them (called from `command.rs`).
//!
//! They live in [`State`]'s `config_maps` and `secrets` maps (and so in its
//! snapshots, base64 like the raft log entry that wrote them; the data dir
//! is 0700).
//!
//! An apply writes its ConfigMaps, Secrets and Deployments in one entry: an
//! immutable object whose data or type would change refuses the whole entry,
//! and nothing is written. `generation` counts changes; the dispatcher sends
//! it to agents as the object's version, so they rewrite mounted files only
//! when it moves.

use serde::{Deserialize, Serialize};

use drover_manifest::{ConfigMap, Secret};

use super::command::{ApplyOutcome, ObjectRef, WriteError};
use super::state::State;
use super::Store;

/// Which of the two kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ConfigKind {
    ConfigMap,
    Secret,
}

impl ConfigKind {
    /// `ConfigMap`, `Secret`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigKind::ConfigMap => "ConfigMap",
            ConfigKind::Secret => "Secret",
        }
    }
}

/// A ConfigMap as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredConfigMap {
    pub config_map: ConfigMap,
    pub generation: u64,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
}

/// A Secret as the store keeps it (its `Debug` shows no values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    pub secret: Secret,
    pub generation: u64,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
}

/// One applied object's result: kind, name, outcome, generation.
pub type ConfigResult = (ConfigKind, ObjectRef, ApplyOutcome, u64);

fn target(meta: &drover_manifest::ObjectMeta) -> ObjectRef {
    ObjectRef {
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
    }
}

fn immutable(kind: ConfigKind, t: &ObjectRef) -> WriteError {
    WriteError::Immutable {
        kind: kind.as_str().to_string(),
        namespace: t.namespace.clone(),
        name: t.name.clone(),
    }
}

/// Create or update `config_maps` and `secrets`; refused (the caller,
/// `State::apply`, rolls everything back) when an immutable one would change
/// (its data, type, or immutability).
pub(super) fn apply(
    state: &mut State,
    config_maps: &[ConfigMap],
    secrets: &[Secret],
    now: i64,
) -> Result<Vec<ConfigResult>, WriteError> {
    let mut results = Vec::new();
    for c in config_maps {
        let t = target(&c.metadata);
        let (stored, outcome) = match state.config_map(&t.namespace, &t.name) {
            None => (
                StoredConfigMap {
                    config_map: c.clone(),
                    generation: 1,
                    created_unix_ms: now,
                    updated_unix_ms: now,
                },
                ApplyOutcome::Created,
            ),
            Some(old) if old.config_map == *c => {
                results.push((
                    ConfigKind::ConfigMap,
                    t,
                    ApplyOutcome::Unchanged,
                    old.generation,
                ));
                continue;
            }
            Some(old) => {
                let o = &old.config_map;
                // Kubernetes: only metadata may change on an immutable object.
                if o.immutable
                    && (o.data != c.data || o.binary_data != c.binary_data || !c.immutable)
                {
                    return Err(immutable(ConfigKind::ConfigMap, &t));
                }
                (
                    StoredConfigMap {
                        config_map: c.clone(),
                        generation: old.generation + 1,
                        created_unix_ms: old.created_unix_ms,
                        updated_unix_ms: now,
                    },
                    ApplyOutcome::Configured,
                )
            }
        };
        let generation = stored.generation;
        state.put_config_map(stored);
        results.push((ConfigKind::ConfigMap, t, outcome, generation));
    }
    for s in secrets {
        let t = target(&s.metadata);
        let (stored, outcome) = match state.secret(&t.namespace, &t.name) {
            None => (
                StoredSecret {
                    secret: s.clone(),
                    generation: 1,
                    created_unix_ms: now,
                    updated_unix_ms: now,
                },
                ApplyOutcome::Created,
            ),
            Some(old) if old.secret == *s => {
                results.push((
                    ConfigKind::Secret,
                    t,
                    ApplyOutcome::Unchanged,
                    old.generation,
                ));
                continue;
            }
            Some(old) => {
                let o = &old.secret;
                if o.immutable && (o.data != s.data || o.kind != s.kind || !s.immutable) {
                    return Err(immutable(ConfigKind::Secret, &t));
                }
                (
                    StoredSecret {
                        secret: s.clone(),
                        generation: old.generation + 1,
                        created_unix_ms: old.created_unix_ms,
                        updated_unix_ms: now,
                    },
                    ApplyOutcome::Configured,
                )
            }
        };
        let generation = stored.generation;
        state.put_secret(stored);
        results.push((ConfigKind::Secret, t, outcome, generation));
    }
    Ok(results)
}

/// Delete ConfigMaps or Secrets; with `ignore_not_found` false, one missing
/// name refuses the whole command.
pub(super) fn delete(
    state: &mut State,
    kind: ConfigKind,
    refs: &[ObjectRef],
    ignore_not_found: bool,
) -> Result<Vec<ObjectRef>, WriteError> {
    let mut deleted = Vec::new();
    for r in refs {
        let removed = match kind {
            ConfigKind::ConfigMap => state.remove_config_map(r).is_some(),
            ConfigKind::Secret => state.remove_secret(r).is_some(),
        };
        if removed {
            deleted.push(r.clone());
        } else if !ignore_not_found {
            return Err(WriteError::ConfigNotFound {
                kind: kind.as_str().to_string(),
                namespace: r.namespace.clone(),
                name: r.name.clone(),
            });
        }
    }
    Ok(deleted)
}

impl Store {
    /// Every ConfigMap, or those of one namespace, by namespace and name.
    pub fn config_maps(&self, namespace: Option<&str>) -> Vec<StoredConfigMap> {
        self.snapshot().config_maps(namespace)
    }

    /// Every Secret, or those of one namespace, by namespace and name.
    pub fn secrets(&self, namespace: Option<&str>) -> Vec<StoredSecret> {
        self.snapshot().secrets(namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::deployment;
    use crate::store::{Command, WriteResult};
    use drover_manifest::{Bytes, ObjectMeta};

    fn meta(name: &str) -> ObjectMeta {
        ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }
    }

    fn config_map(name: &str, value: &str, immutable: bool) -> ConfigMap {
        ConfigMap {
            metadata: meta(name),
            data: [("greeting".to_string(), value.to_string())].into(),
            immutable,
            ..Default::default()
        }
    }

    fn secret(name: &str, value: &str, immutable: bool) -> Secret {
        Secret {
            metadata: meta(name),
            kind: "Opaque".into(),
            data: [("password".to_string(), Bytes(value.as_bytes().to_vec()))].into(),
            immutable,
        }
    }

    fn apply_config(
        config_maps: Vec<ConfigMap>,
        secrets: Vec<Secret>,
        deployments: Vec<drover_manifest::Deployment>,
    ) -> Command {
        Command::ApplyConfig {
            deployments,
            config_maps,
            secrets,
            services: vec![],
            service_range: None,
            now_unix_ms: 1_000,
        }
    }

    #[test]
    fn objects_are_created_configured_and_left_unchanged() {
        let mut store = State::default();
        let outcomes = |result: Result<WriteResult, WriteError>| match result {
            Ok(WriteResult::AppliedConfig {
                config,
                deployments,
                ..
            }) => (
                config
                    .into_iter()
                    .map(|(k, r, o, g)| (k, r.name, o, g))
                    .collect::<Vec<_>>(),
                deployments.len(),
            ),
            other => panic!("{other:?}"),
        };
        let first = store.apply(
            1,
            1,
            &apply_config(
                vec![config_map("app", "hello", false)],
                vec![secret("db", "s3cr3t", false)],
                vec![deployment("web", 1)],
            ),
        );
        assert_eq!(
            outcomes(first),
            (
                vec![
                    (
                        ConfigKind::ConfigMap,
                        "app".to_string(),
                        ApplyOutcome::Created,
                        1
                    ),
                    (
                        ConfigKind::Secret,
                        "db".to_string(),
                        ApplyOutcome::Created,
                        1
                    ),
                ],
                1
            )
        );
        let second = store.apply(
            2,
            1,
            &apply_config(
                vec![config_map("app", "bonjour", false)],
                vec![secret("db", "s3cr3t", false)],
                vec![],
            ),
        );
        assert_eq!(
            outcomes(second).0,
            vec![
                (
                    ConfigKind::ConfigMap,
                    "app".to_string(),
                    ApplyOutcome::Configured,
                    2
                ),
                (
                    ConfigKind::Secret,
                    "db".to_string(),
                    ApplyOutcome::Unchanged,
                    1
                ),
            ]
        );
        assert_eq!(
            store.config_maps(Some("default"))[0].config_map.data["greeting"],
            "bonjour"
        );
        assert_eq!(store.secrets(None)[0].secret.data["password"].0, b"s3cr3t");
        assert!(store.secrets(Some("other")).is_empty());
    }

    #[test]
    fn an_immutable_object_refuses_a_change_and_the_whole_apply_writes_nothing() {
        let mut store = State::default();
        store
            .apply(
                1,
                1,
                &apply_config(vec![], vec![secret("db", "one", true)], vec![]),
            )
            .expect("created");
        let before = store.state_hash();
        // A new deployment and a ConfigMap ride along: none of them is written.
        let refused = store.apply(
            2,
            1,
            &apply_config(
                vec![config_map("app", "hello", false)],
                vec![secret("db", "two", true)],
                vec![deployment("web", 1)],
            ),
        );
        let e = refused.expect_err("refused");
        assert_eq!(
            e.to_string(),
            "Secret \"db\" in namespace \"default\" is immutable: its data cannot change; delete \
             it and apply it again"
        );
        assert!(!e.to_string().contains("two"));
        assert!(store.config_maps(None).is_empty());
        assert!(store.deployment("default", "web").is_none());
        // The state is exactly as before (the hash leaves out the applied index).
        assert_eq!(before, store.state_hash());
        assert_eq!(store.secrets(None)[0].secret.data["password"].0, b"one");
        // Making it mutable again is a change too.
        assert!(store
            .apply(
                3,
                1,
                &apply_config(vec![], vec![secret("db", "one", false)], vec![])
            )
            .is_err());
        // The same object again is fine.
        assert!(store
            .apply(
                4,
                1,
                &apply_config(vec![], vec![secret("db", "one", true)], vec![])
            )
            .is_ok());
    }

    #[test]
    fn delete_is_all_or_nothing_unless_missing_names_are_ignored() {
        let mut store = State::default();
        store
            .apply(
                1,
                1,
                &apply_config(
                    vec![config_map("a", "x", false), config_map("b", "y", false)],
                    vec![],
                    vec![],
                ),
            )
            .expect("created");
        let r = |name: &str| ObjectRef {
            namespace: "default".into(),
            name: name.into(),
        };
        let delete = |refs: Vec<ObjectRef>, ignore_not_found| Command::DeleteConfig {
            kind: ConfigKind::ConfigMap,
            refs,
            ignore_not_found,
        };
        let refused = store.apply(2, 1, &delete(vec![r("a"), r("nope")], false));
        assert_eq!(
            refused.expect_err("refused").to_string(),
            "configmap \"nope\" not found in namespace \"default\""
        );
        assert_eq!(store.config_maps(None).len(), 2);
        let deleted = store.apply(3, 1, &delete(vec![r("a"), r("nope")], true));
        assert_eq!(deleted, Ok(WriteResult::Deleted(vec![r("a")])));
        assert_eq!(store.config_maps(None).len(), 1);
    }

    #[test]
    fn changing_a_templates_volumes_or_env_sources_is_a_new_revision() {
        let mut store = State::default();
        let plain = deployment("web", 1);
        let mut with_volume = plain.clone();
        with_volume.spec.template.spec.volumes = vec![drover_manifest::Volume {
            name: "config".into(),
            source: drover_manifest::VolumeSource::ConfigMap(drover_manifest::ProjectedObject {
                name: "app".into(),
                items: vec![],
                default_mode: 0o644,
                optional: false,
            }),
        }];
        let mut with_env = plain.clone();
        with_env.spec.template.spec.containers[0].env = vec![drover_manifest::EnvVar {
            name: "A".into(),
            value: String::new(),
            value_from: Some(drover_manifest::EnvVarSource::SecretKeyRef(
                drover_manifest::KeyRef {
                    name: "db".into(),
                    key: "password".into(),
                    optional: false,
                },
            )),
        }];
        let mut hashes = Vec::new();
        for (i, d) in [&plain, &with_volume, &with_env].into_iter().enumerate() {
            let index = i as u64 + 1;
            store
                .apply(index, 1, &apply_config(vec![], vec![], vec![d.clone()]))
                .expect("applied");
            let stored = store.deployment("default", "web").expect("there").clone();
            hashes.push(stored.revisions.last().expect("revision").hash.clone());
            assert_eq!(stored.current_revision_number(), index, "revision {index}");
        }
        hashes.dedup();
        assert_eq!(hashes.len(), 3, "each change is a new revision: {hashes:?}");
    }

    #[test]
    fn a_snapshot_keeps_config_maps_and_secrets() {
        let mut state = State::default();
        state
            .apply(
                1,
                1,
                &apply_config(
                    vec![config_map("app", "hello", true)],
                    vec![secret("db", "s3cr3t", false)],
                    vec![],
                ),
            )
            .expect("applied");
        let back = State::decode(&state.encode().expect("encode")).expect("decode");
        assert!(back == state, "the decoded state equals the encoded one");
        assert_eq!(back.secrets(None)[0].secret.data["password"].0, b"s3cr3t");
        assert!(back.config_maps(Some("default"))[0].config_map.immutable);
    }
}
