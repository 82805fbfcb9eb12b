//! ConfigMaps and Secrets in the state machine, and the commands that write
//! them (called from `command.rs`).
//!
//! ```text
//!  configmap/<ns>/<name>   StoredConfigMap (JSON)
//!  secret/<ns>/<name>      StoredSecret (JSON; data base64, like the raft log
//!                          entry that wrote it; the data dir is 0700)
//! ```
//!
//! An apply writes its ConfigMaps, Secrets and Deployments in one entry: an
//! immutable object whose data or type would change refuses the whole entry,
//! and nothing is written. `generation` counts changes; the dispatcher sends
//! it to agents as the object's version, so they rewrite mounted files only
//! when it moves.

use serde::{Deserialize, Serialize};

use drover_manifest::{ConfigMap, Secret};

use super::command::{ApplyOutcome, ObjectRef, View, WriteError};
use super::{Store, StoreError};

pub const CONFIG_MAP_PREFIX: &str = "configmap/";
pub const SECRET_PREFIX: &str = "secret/";

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

    fn prefix(self) -> &'static str {
        match self {
            ConfigKind::ConfigMap => CONFIG_MAP_PREFIX,
            ConfigKind::Secret => SECRET_PREFIX,
        }
    }

    pub fn key(self, namespace: &str, name: &str) -> String {
        format!("{}{namespace}/{name}", self.prefix())
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

/// Create or update `config_maps` and `secrets`; refused, writing nothing,
/// when an immutable one would change (its data, type, or immutability).
pub(super) fn apply(
    view: &mut View<'_>,
    config_maps: &[ConfigMap],
    secrets: &[Secret],
    now: i64,
) -> Result<Result<Vec<ConfigResult>, WriteError>, StoreError> {
    let mut results = Vec::new();
    for c in config_maps {
        let t = target(&c.metadata);
        let key = ConfigKind::ConfigMap.key(&t.namespace, &t.name);
        let (stored, outcome) = match view.get::<StoredConfigMap>(&key)? {
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
                    return Ok(Err(immutable(ConfigKind::ConfigMap, &t)));
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
        view.put(key, &stored)?;
        results.push((ConfigKind::ConfigMap, t, outcome, stored.generation));
    }
    for s in secrets {
        let t = target(&s.metadata);
        let key = ConfigKind::Secret.key(&t.namespace, &t.name);
        let (stored, outcome) = match view.get::<StoredSecret>(&key)? {
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
                    return Ok(Err(immutable(ConfigKind::Secret, &t)));
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
        view.put(key, &stored)?;
        results.push((ConfigKind::Secret, t, outcome, stored.generation));
    }
    Ok(Ok(results))
}

/// Delete ConfigMaps or Secrets; with `ignore_not_found` false, one missing
/// name refuses the whole command.
pub(super) fn delete(
    view: &mut View<'_>,
    kind: ConfigKind,
    refs: &[ObjectRef],
    ignore_not_found: bool,
) -> Result<Result<Vec<ObjectRef>, WriteError>, StoreError> {
    let mut deleted = Vec::new();
    for r in refs {
        let key = kind.key(&r.namespace, &r.name);
        let exists = match kind {
            ConfigKind::ConfigMap => view.get::<StoredConfigMap>(&key)?.is_some(),
            ConfigKind::Secret => view.get::<StoredSecret>(&key)?.is_some(),
        };
        if !exists {
            if ignore_not_found {
                continue;
            }
            return Ok(Err(WriteError::ConfigNotFound {
                kind: kind.as_str().to_string(),
                namespace: r.namespace.clone(),
                name: r.name.clone(),
            }));
        }
        view.remove(key);
        deleted.push(r.clone());
    }
    Ok(Ok(deleted))
}

impl Store {
    /// Every ConfigMap, or those of one namespace, by namespace and name.
    pub fn config_maps(&self, namespace: Option<&str>) -> Result<Vec<StoredConfigMap>, StoreError> {
        self.scan(&namespace_prefix(CONFIG_MAP_PREFIX, namespace))
    }

    /// One ConfigMap.
    pub fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<StoredConfigMap>, StoreError> {
        let key = ConfigKind::ConfigMap.key(namespace, name);
        self.get_raw(&key)?
            .map(|v| super::from_json(&key, &v))
            .transpose()
    }

    /// One Secret.
    pub fn secret(&self, namespace: &str, name: &str) -> Result<Option<StoredSecret>, StoreError> {
        let key = ConfigKind::Secret.key(namespace, name);
        self.get_raw(&key)?
            .map(|v| super::from_json(&key, &v))
            .transpose()
    }

    /// Every Secret, or those of one namespace, by namespace and name.
    pub fn secrets(&self, namespace: Option<&str>) -> Result<Vec<StoredSecret>, StoreError> {
        self.scan(&namespace_prefix(SECRET_PREFIX, namespace))
    }
}

fn namespace_prefix(prefix: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{prefix}{ns}/"),
        None => prefix.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::deployment;
    use crate::store::{Command, WriteResult};
    use drover_manifest::{Bytes, ObjectMeta};

    fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new()
            .path(dir.path())
            .temporary(true)
            .open()
            .expect("sled");
        let store = Store::open(&db).expect("store");
        (dir, store)
    }

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
            now_unix_ms: 1_000,
        }
    }

    #[test]
    fn objects_are_created_configured_and_left_unchanged() {
        let (_dir, store) = temp_store();
        let outcomes = |result: Result<WriteResult, WriteError>| match result {
            Ok(WriteResult::AppliedConfig {
                config,
                deployments,
            }) => (
                config
                    .into_iter()
                    .map(|(k, r, o, g)| (k, r.name, o, g))
                    .collect::<Vec<_>>(),
                deployments.len(),
            ),
            other => panic!("{other:?}"),
        };
        let first = store
            .apply(
                1,
                1,
                &apply_config(
                    vec![config_map("app", "hello", false)],
                    vec![secret("db", "s3cr3t", false)],
                    vec![deployment("web", 1)],
                ),
            )
            .expect("store");
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
        let second = store
            .apply(
                2,
                1,
                &apply_config(
                    vec![config_map("app", "bonjour", false)],
                    vec![secret("db", "s3cr3t", false)],
                    vec![],
                ),
            )
            .expect("store");
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
            store.config_maps(Some("default")).expect("list")[0]
                .config_map
                .data["greeting"],
            "bonjour"
        );
        assert_eq!(
            store.secrets(None).expect("list")[0].secret.data["password"].0,
            b"s3cr3t"
        );
        assert!(store.secrets(Some("other")).expect("list").is_empty());
    }

    #[test]
    fn an_immutable_object_refuses_a_change_and_the_whole_apply_writes_nothing() {
        let (_dir, store) = temp_store();
        store
            .apply(
                1,
                1,
                &apply_config(vec![], vec![secret("db", "one", true)], vec![]),
            )
            .expect("store")
            .expect("created");
        let before = store.state_hash().expect("hash");
        // A new deployment and a ConfigMap ride along: none of them is written.
        let refused = store
            .apply(
                2,
                1,
                &apply_config(
                    vec![config_map("app", "hello", false)],
                    vec![secret("db", "two", true)],
                    vec![deployment("web", 1)],
                ),
            )
            .expect("store");
        let e = refused.expect_err("refused");
        assert_eq!(
            e.to_string(),
            "Secret \"db\" in namespace \"default\" is immutable: its data cannot change; delete \
             it and apply it again"
        );
        assert!(!e.to_string().contains("two"));
        assert!(store.config_maps(None).expect("list").is_empty());
        assert!(store.deployments(None).expect("list").is_empty());
        // The state is exactly as before (the hash leaves out the applied index).
        assert_eq!(before, store.state_hash().expect("hash"));
        assert_eq!(
            store.secrets(None).expect("list")[0].secret.data["password"].0,
            b"one"
        );
        // Making it mutable again is a change too.
        assert!(store
            .apply(
                3,
                1,
                &apply_config(vec![], vec![secret("db", "one", false)], vec![])
            )
            .expect("store")
            .is_err());
        // The same object again is fine.
        assert!(store
            .apply(
                4,
                1,
                &apply_config(vec![], vec![secret("db", "one", true)], vec![])
            )
            .expect("store")
            .is_ok());
    }

    #[test]
    fn delete_is_all_or_nothing_unless_missing_names_are_ignored() {
        let (_dir, store) = temp_store();
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
            .expect("store")
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
        let refused = store
            .apply(2, 1, &delete(vec![r("a"), r("nope")], false))
            .expect("store");
        assert_eq!(
            refused.expect_err("refused").to_string(),
            "configmap \"nope\" not found in namespace \"default\""
        );
        assert_eq!(store.config_maps(None).expect("list").len(), 2);
        let deleted = store
            .apply(3, 1, &delete(vec![r("a"), r("nope")], true))
            .expect("store");
        assert_eq!(deleted, Ok(WriteResult::Deleted(vec![r("a")])));
        assert_eq!(store.config_maps(None).expect("list").len(), 1);
    }

    #[test]
    fn changing_a_templates_volumes_or_env_sources_is_a_new_revision() {
        let (_dir, store) = temp_store();
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
                .expect("store")
                .expect("applied");
            let stored = store
                .deployment("default", "web")
                .expect("read")
                .expect("there");
            hashes.push(stored.revisions.last().expect("revision").hash.clone());
            assert_eq!(stored.current_revision_number(), index, "revision {index}");
        }
        hashes.dedup();
        assert_eq!(hashes.len(), 3, "each change is a new revision: {hashes:?}");
    }
}
