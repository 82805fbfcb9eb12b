//! The ConfigMaps and Secrets each node gets with its assignment set: those
//! its replicas' templates reference (env `valueFrom`, `envFrom`, volumes)
//! and that exist. Agents never ask for them; a change to one changes the
//! sets of the nodes that use it, which the sessions then send.
//!
//! An object's `version` is a hash of its contents (see [`content_version`]).
//!
//! Cost: references are collected once per (deployment, revision) template
//! per rebuild, and the objects are read once per rebuild, only when some
//! replica references one.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use drover_manifest::{EnvFromRef, EnvVarSource, PodTemplate, VolumeSource};
use drover_proto::pb;

use crate::store::config_objects::ConfigKind;
use crate::store::{Store, StoreError};

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

/// The wire objects for `wanted`, by node; objects that do not exist are
/// left out (agents then report the replica CreateContainerConfigError).
pub fn objects_by_node(
    store: &Store,
    wanted: &HashMap<String, BTreeSet<Reference>>,
) -> Result<HashMap<String, Vec<pb::ConfigObject>>, StoreError> {
    if wanted.values().all(BTreeSet::is_empty) {
        return Ok(HashMap::new());
    }
    let mut all: BTreeMap<Reference, pb::ConfigObject> = BTreeMap::new();
    for c in store.config_maps(None)? {
        let m = &c.config_map.metadata;
        let data = c
            .config_map
            .files()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect();
        all.insert(
            (ConfigKind::ConfigMap, m.namespace.clone(), m.name.clone()),
            pb::ConfigObject {
                kind: pb::ConfigKind::ConfigMap as i32,
                namespace: m.namespace.clone(),
                name: m.name.clone(),
                data,
                version: content_version(&c.config_map.files()),
            },
        );
    }
    for s in store.secrets(None)? {
        let m = &s.secret.metadata;
        let files: BTreeMap<&str, &[u8]> = s
            .secret
            .data
            .iter()
            .map(|(k, v)| (k.as_str(), &v.0[..]))
            .collect();
        let version = content_version(&files);
        let data = files
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect();
        all.insert(
            (ConfigKind::Secret, m.namespace.clone(), m.name.clone()),
            pb::ConfigObject {
                kind: pb::ConfigKind::Secret as i32,
                namespace: m.namespace.clone(),
                name: m.name.clone(),
                data,
                version,
            },
        );
    }
    Ok(wanted
        .iter()
        .map(|(node, refs)| {
            let objects = refs.iter().filter_map(|r| all.get(r).cloned()).collect();
            (node.clone(), objects)
        })
        .collect())
}

/// An object's version for agents: a hash of its keys and values, so it
/// moves exactly when what a replica sees does (also across a delete and
/// a re-create, which restart the generation).
fn content_version(files: &BTreeMap<&str, &[u8]>) -> u64 {
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
