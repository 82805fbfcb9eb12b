//! The ConfigMaps and Secrets each node gets with its assignment set: those
//! its replicas' templates reference (env `valueFrom`, `envFrom`, volumes)
//! and that exist. Agents never ask for them; a change to one changes the
//! sets of the nodes that use it, which the sessions then send.
//!
//! An object's `version` is a hash of its contents (see [`content_version`]).
//!
//! Cost: references are collected once per (deployment, revision) template
//! per build, and each node's referenced objects are point reads of the
//! in-memory state. A change to any ConfigMap or Secret rebuilds every
//! node's set (they are rare).

use std::collections::{BTreeMap, BTreeSet};

use drover_manifest::{EnvFromRef, EnvVarSource, PodTemplate, VolumeSource};
use drover_proto::pb;

use crate::store::config_objects::ConfigKind;
use crate::store::State;

/// (kind, namespace, name) of a referenced object.
pub type Reference = (ConfigKind, String, String);

/// Every object `template` (of a replica in `namespace`) references.
pub fn references(namespace: &str, template: &PodTemplate) -> Vec<Reference> {
    let mut out = BTreeSet::new();
    let mut add = |kind, name: &str| {
        out.insert((kind, namespace.to_string(), name.to_string()));
    };
    for c in &template.spec.containers {
        for e in &c.env {
            match &e.value_from {
                Some(EnvVarSource::ConfigMapKeyRef(r)) => add(ConfigKind::ConfigMap, &r.name),
                Some(EnvVarSource::SecretKeyRef(r)) => add(ConfigKind::Secret, &r.name),
                _ => {}
            }
        }
        for e in &c.env_from {
            match &e.source {
                EnvFromRef::ConfigMapRef(r) => add(ConfigKind::ConfigMap, &r.name),
                EnvFromRef::SecretRef(r) => add(ConfigKind::Secret, &r.name),
            }
        }
    }
    for v in &template.spec.volumes {
        match &v.source {
            VolumeSource::ConfigMap(p) => add(ConfigKind::ConfigMap, &p.name),
            VolumeSource::Secret(p) => add(ConfigKind::Secret, &p.name),
            _ => {}
        }
    }
    out.into_iter().collect()
}

/// The wire objects for `references` (one node's), sorted; objects that do
/// not exist are left out (the agent then reports the replica
/// CreateContainerConfigError).
pub fn objects(state: &State, references: &BTreeSet<Reference>) -> Vec<pb::ConfigObject> {
    let mut out = Vec::new();
    for (kind, namespace, name) in references {
        let data: Option<BTreeMap<String, Vec<u8>>> = match kind {
            ConfigKind::ConfigMap => state.config_map(namespace, name).map(|c| {
                c.config_map
                    .files()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_vec()))
                    .collect()
            }),
            ConfigKind::Secret => state.secret(namespace, name).map(|s| {
                s.secret
                    .data
                    .iter()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect()
            }),
        };
        let Some(data) = data else { continue };
        let version = content_version(&data);
        out.push(pb::ConfigObject {
            kind: match kind {
                ConfigKind::ConfigMap => pb::ConfigKind::ConfigMap,
                ConfigKind::Secret => pb::ConfigKind::Secret,
            } as i32,
            namespace: namespace.clone(),
            name: name.clone(),
            data: data.into_iter().collect(),
            version,
        });
    }
    out
}

/// An object's version for agents: a hash of its keys and values, so it
/// moves exactly when what a replica sees does (also across a delete and
/// a re-create, which restart the generation).
fn content_version(files: &BTreeMap<String, Vec<u8>>) -> u64 {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for (k, v) in files {
        hash.update((k.len() as u64).to_le_bytes());
        hash.update(k.as_bytes());
        hash.update((v.len() as u64).to_le_bytes());
        hash.update(v);
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_manifest::{
        EnvFromSource, EnvVar, KeyRef, ObjectRef, ProjectedObject, StorageMedium, Volume,
    };

    #[test]
    fn a_template_references_every_object_it_reads_once() {
        let mut d = crate::fixtures::deployment("web", 1);
        let t = &mut d.spec.template;
        let key = |name: &str| KeyRef {
            name: name.into(),
            key: "k".into(),
            optional: false,
        };
        t.spec.containers[0].env = vec![
            EnvVar {
                name: "A".into(),
                value: String::new(),
                value_from: Some(EnvVarSource::ConfigMapKeyRef(key("app"))),
            },
            EnvVar {
                name: "B".into(),
                value: String::new(),
                value_from: Some(EnvVarSource::SecretKeyRef(key("db"))),
            },
        ];
        t.spec.containers[0].env_from = vec![EnvFromSource {
            prefix: String::new(),
            source: EnvFromRef::ConfigMapRef(ObjectRef {
                name: "app".into(),
                optional: true,
            }),
        }];
        let projected = |name: &str| ProjectedObject {
            name: name.into(),
            items: vec![],
            default_mode: 0o644,
            optional: false,
        };
        t.spec.volumes = vec![
            Volume {
                name: "tls".into(),
                source: VolumeSource::Secret(projected("tls")),
            },
            Volume {
                name: "scratch".into(),
                source: VolumeSource::EmptyDir {
                    medium: StorageMedium::Disk,
                    size_limit_bytes: None,
                },
            },
        ];
        let r = |kind, name: &str| (kind, "prod".to_string(), name.to_string());
        assert_eq!(
            references("prod", t),
            [
                r(ConfigKind::ConfigMap, "app"),
                r(ConfigKind::Secret, "db"),
                r(ConfigKind::Secret, "tls"),
            ]
        );
        assert!(references("prod", &crate::fixtures::deployment("x", 1).spec.template).is_empty());
    }

    #[test]
    fn the_version_moves_exactly_when_the_contents_do() {
        let files = |v: &str| BTreeMap::from([("k".to_string(), v.as_bytes().to_vec())]);
        assert_eq!(content_version(&files("a")), content_version(&files("a")));
        assert_ne!(content_version(&files("a")), content_version(&files("b")));
        let renamed = BTreeMap::from([("l".to_string(), b"a".to_vec())]);
        assert_ne!(content_version(&files("a")), content_version(&renamed));
    }
}
