//! What a replica's configuration resolves to on this node: its environment
//! and the contents of its volumes, from the ConfigMaps and Secrets the
//! controller sent with the assignment set. Pure: no I/O, no clock.
//!
//! ```text
//!   AssignmentSet.config_objects ──▶ ConfigObjects ─┐
//!   assignment (template), node, pod IP ────────────┼─▶ resolve() ─▶ Resolved
//!                                                   │    env: [(name, value, secret?)]
//!                                                   │    volumes: [VolumePlan]
//!                                                   └─▶ Err(sentence) → CreateContainerConfigError
//! ```
//!
//! Env, one row per source, in the manifest's order (the controller's
//! service variables first, then `envFrom`, then `env`, so an `env` entry
//! wins over a key of the same name, as in Kubernetes):
//!
//! | source                         | object/key present | missing, optional | missing     |
//! |--------------------------------|--------------------|-------------------|-------------|
//! | `value`                        | the value          | —                 | —           |
//! | `configMapKeyRef`/`secretKeyRef` | the key's value  | variable left out | error       |
//! | `fieldRef`                     | name, namespace, node, pod IP (always present)  |||
//! | `envFrom` `configMapRef`/`secretRef` | every key whose `prefix`+key is a valid name | nothing | error |
//!
//! Volumes: `emptyDir` and `hostPath` need nothing resolved; a `configMap`
//! or `secret` volume becomes its files (every key, or only `items`, each
//! with its mode), or an error when the object (or an item's key) is
//! missing and the volume is not `optional` (then it is empty).
//!
//! A Secret's values never appear in an error: messages name objects and
//! keys only, and [`Resolved`]'s `Debug` shows variable names.

use std::collections::BTreeMap;

use drover_manifest::{
    EnvFromRef, EnvVarSource, FieldPathRef, HostPathType, KeyRef, ProjectedObject, StorageMedium,
    VolumeSource,
};
use drover_proto::pb;

use crate::assignment::Assignment;

/// A ConfigMap or a Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    /// As Kubernetes' messages name it: `configmap`, `secret`.
    fn noun(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        }
    }
}

/// One object as the node holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct Object {
    pub data: BTreeMap<String, Vec<u8>>,
    pub version: u64,
}

impl std::fmt::Debug for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Object")
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("version", &self.version)
            .finish()
    }
}

/// (kind, namespace, name).
pub type ObjectKey = (Kind, String, String);

/// The ConfigMaps and Secrets this node's replicas reference, as last sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigObjects(pub BTreeMap<ObjectKey, Object>);

impl ConfigObjects {
    /// From the wire; objects of an unknown kind are skipped.
    pub fn from_pb(objects: Vec<pb::ConfigObject>) -> ConfigObjects {
        let mut map = BTreeMap::new();
        for o in objects {
            let kind = match o.kind() {
                pb::ConfigKind::ConfigMap => Kind::ConfigMap,
                pb::ConfigKind::Secret => Kind::Secret,
                pb::ConfigKind::Unspecified => continue,
            };
            map.insert(
                (kind, o.namespace, o.name),
                Object {
                    data: o.data.into_iter().collect(),
                    version: o.version,
                },
            );
        }
        ConfigObjects(map)
    }

    fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Object> {
        self.0.get(&(kind, namespace.to_string(), name.to_string()))
    }

    /// The objects whose presence or version differs between the two.
    pub fn changed(&self, other: &ConfigObjects) -> Vec<ObjectKey> {
        let mut keys: Vec<&ObjectKey> = self.0.keys().chain(other.0.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| self.0.get(*k).map(|o| o.version) != other.0.get(*k).map(|o| o.version))
            .cloned()
            .collect()
    }
}

/// The replica facts `fieldRef` reads that are not in the template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    pub node: String,
    pub pod_ip: String,
}

/// One environment variable and whether its value came from a Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvEntry {
    pub name: String,
    pub value: String,
    pub secret: bool,
}

impl std::fmt::Debug for EnvEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.secret {
            write!(f, "{}=<secret>", self.name)
        } else {
            write!(f, "{}={:?}", self.name, self.value)
        }
    }
}

/// A file of a configMap or secret volume.
#[derive(Clone, PartialEq, Eq)]
pub struct File {
    /// Relative to the volume.
    pub path: String,
    pub bytes: Vec<u8>,
    pub mode: u32,
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} bytes, {:o})",
            self.path,
            self.bytes.len(),
            self.mode
        )
    }
}

/// What one volume is on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumePlan {
    /// A directory of the replica's own, created empty.
    EmptyDir {
        memory: bool,
        size_limit_bytes: Option<u64>,
    },
    /// A path of the host, checked (or created) per `kind`.
    HostPath { path: String, kind: HostPathType },
    /// Files written by the agent and updated in place when the object
    /// changes. `secret`: directories 0700 and no file readable by others.
    Files { secret: bool, files: Vec<File> },
}

/// A replica's resolved configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// The manifest's variables, resolved, in order (later ones win).
    pub env: Vec<EnvEntry>,
    /// By volume name.
    pub volumes: BTreeMap<String, VolumePlan>,
}

/// Resolve `a`'s env and volumes against `objects`. The error is the
/// sentence a `CreateContainerConfigError` status carries.
pub fn resolve(
    a: &Assignment,
    objects: &ConfigObjects,
    fields: &Fields,
) -> Result<Resolved, String> {
    let volumes = volumes(a, objects)?;
    let env = env(a, objects, fields)?;
    Ok(Resolved { env, volumes })
}

/// The env of `a`'s container.
pub fn env(
    a: &Assignment,
    objects: &ConfigObjects,
    fields: &Fields,
) -> Result<Vec<EnvEntry>, String> {
    let ns = a.namespace.as_str();
    let c = a.container();
    // Service variables first: every later row with the same name wins.
    let mut out: Vec<EnvEntry> = a.service_env_entries().collect();
    for source in &c.env_from {
        let (kind, r) = match &source.source {
            EnvFromRef::ConfigMapRef(r) => (Kind::ConfigMap, r),
            EnvFromRef::SecretRef(r) => (Kind::Secret, r),
        };
        let Some(object) = objects.get(kind, ns, &r.name) else {
            if r.optional {
                continue;
            }
            return Err(not_found(kind, &r.name));
        };
        for (key, bytes) in &object.data {
            let name = format!("{}{key}", source.prefix);
            // Kubernetes skips keys that are no valid variable name (and
            // says so in an event); so does drover, silently per key.
            if drover_proto::names::env_var_name(&name).is_err() {
                continue;
            }
            out.push(EnvEntry {
                name,
                value: String::from_utf8_lossy(bytes).into_owned(),
                secret: kind == Kind::Secret,
            });
        }
    }
    for var in &c.env {
        let entry = match &var.value_from {
            None => Some(EnvEntry {
                name: var.name.clone(),
                value: var.value.clone(),
                secret: false,
            }),
            Some(EnvVarSource::ConfigMapKeyRef(r)) => key_value(objects, Kind::ConfigMap, ns, r)?
                .map(|value| EnvEntry {
                    name: var.name.clone(),
                    value,
                    secret: false,
                }),
            Some(EnvVarSource::SecretKeyRef(r)) => {
                key_value(objects, Kind::Secret, ns, r)?.map(|value| EnvEntry {
                    name: var.name.clone(),
                    value,
                    secret: true,
                })
            }
            Some(EnvVarSource::FieldRef { field_path }) => Some(EnvEntry {
                name: var.name.clone(),
                value: match field_path {
                    FieldPathRef::MetadataName => a.hostname().to_string(),
                    FieldPathRef::MetadataNamespace => a.namespace.clone(),
                    FieldPathRef::SpecNodeName => fields.node.clone(),
                    FieldPathRef::StatusPodIp => fields.pod_ip.clone(),
                },
                secret: false,
            }),
        };
        out.extend(entry);
    }
    Ok(out)
}

/// A key's value; `Ok(None)` when it is missing and optional.
fn key_value(
    objects: &ConfigObjects,
    kind: Kind,
    namespace: &str,
    r: &KeyRef,
) -> Result<Option<String>, String> {
    match objects.get(kind, namespace, &r.name) {
        None if r.optional => Ok(None),
        None => Err(not_found(kind, &r.name)),
        Some(o) => match o.data.get(&r.key) {
            Some(bytes) => Ok(Some(String::from_utf8_lossy(bytes).into_owned())),
            None if r.optional => Ok(None),
            None => Err(missing_key(kind, namespace, &r.name, &r.key)),
        },
    }
}

/// The plan of each of `a`'s volumes.
pub fn volumes(
    a: &Assignment,
    objects: &ConfigObjects,
) -> Result<BTreeMap<String, VolumePlan>, String> {
    let mut out = BTreeMap::new();
    for v in &a.template.spec.volumes {
        let plan = match &v.source {
            VolumeSource::EmptyDir {
                medium,
                size_limit_bytes,
            } => VolumePlan::EmptyDir {
                memory: *medium == StorageMedium::Memory,
                size_limit_bytes: *size_limit_bytes,
            },
            VolumeSource::HostPath { path, kind } => VolumePlan::HostPath {
                path: path.clone(),
                kind: *kind,
            },
            VolumeSource::ConfigMap(p) => files(objects, Kind::ConfigMap, &a.namespace, p)?,
            VolumeSource::Secret(p) => files(objects, Kind::Secret, &a.namespace, p)?,
        };
        out.insert(v.name.clone(), plan);
    }
    Ok(out)
}

fn files(
    objects: &ConfigObjects,
    kind: Kind,
    namespace: &str,
    p: &ProjectedObject,
) -> Result<VolumePlan, String> {
    let secret = kind == Kind::Secret;
    // Secrets are never readable by others on the host, whatever the mode.
    let mode = |m: u32| if secret { m & 0o770 } else { m };
    let Some(object) = objects.get(kind, namespace, &p.name) else {
        if p.optional {
            return Ok(VolumePlan::Files {
                secret,
                files: Vec::new(),
            });
        }
        return Err(not_found(kind, &p.name));
    };
    let files = if p.items.is_empty() {
        object
            .data
            .iter()
            .map(|(key, bytes)| File {
                path: key.clone(),
                bytes: bytes.clone(),
                mode: mode(p.default_mode),
            })
            .collect()
    } else {
        let mut files = Vec::new();
        for item in &p.items {
            match object.data.get(&item.key) {
                Some(bytes) => files.push(File {
                    path: item.path.clone(),
                    bytes: bytes.clone(),
                    mode: mode(item.mode.unwrap_or(p.default_mode)),
                }),
                None if p.optional => {}
                None => return Err(missing_key(kind, namespace, &p.name, &item.key)),
            }
        }
        files
    };
    Ok(VolumePlan::Files { secret, files })
}

fn not_found(kind: Kind, name: &str) -> String {
    format!("{} {name:?} not found", kind.noun())
}

fn missing_key(kind: Kind, namespace: &str, name: &str, key: &str) -> String {
    let kind = match kind {
        Kind::ConfigMap => "ConfigMap",
        Kind::Secret => "Secret",
    };
    format!("couldn't find key {key} in {kind} {namespace}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use drover_manifest::{EnvFromSource, EnvVar, KeyToPath, ObjectRef, Volume};

    /// (kind, name, data) of one test object.
    type TestObject<'a> = (Kind, &'a str, &'a [(&'a str, &'a str)]);

    fn objects(list: &[TestObject<'_>]) -> ConfigObjects {
        ConfigObjects(
            list.iter()
                .map(|(kind, name, data)| {
                    (
                        (*kind, "default".to_string(), name.to_string()),
                        Object {
                            data: data
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                                .collect(),
                            version: 1,
                        },
                    )
                })
                .collect(),
        )
    }

    fn key(name: &str, key: &str, optional: bool) -> KeyRef {
        KeyRef {
            name: name.into(),
            key: key.into(),
            optional,
        }
    }

    fn var(name: &str, source: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: String::new(),
            value_from: Some(source),
        }
    }

    fn fields() -> Fields {
        Fields {
            node: "n1".into(),
            pod_ip: "10.0.0.7".into(),
        }
    }

    fn pairs(env: &[EnvEntry]) -> Vec<(&str, &str, bool)> {
        env.iter()
            .map(|e| (e.name.as_str(), e.value.as_str(), e.secret))
            .collect()
    }

    #[test]
    fn service_variables_come_first_so_the_containers_own_env_wins() {
        let mut a = fixtures::assignment("default.web-r-0");
        a.service_env = BTreeMap::from([
            ("BACKEND_SERVICE_HOST".to_string(), "10.96.0.9".to_string()),
            ("BACKEND_SERVICE_PORT".to_string(), "80".to_string()),
        ]);
        a.template_mut().spec.containers[0].env = vec![EnvVar {
            name: "BACKEND_SERVICE_PORT".into(),
            value: "8080".into(),
            value_from: None,
        }];
        let expected = [
            ("BACKEND_SERVICE_HOST", "10.96.0.9", false),
            ("BACKEND_SERVICE_PORT", "80", false),
            ("BACKEND_SERVICE_PORT", "8080", false),
        ];
        let env = env(&a, &objects(&[]), &fields()).expect("resolves");
        assert_eq!(
            pairs(&env),
            expected,
            "runtimes apply rows in order: the last wins"
        );
        assert_eq!(pairs(&a.env()), expected, "unprepared too");
    }

    #[test]
    fn env_rows_resolve_in_kubernetes_order() {
        let mut a = fixtures::assignment("default.web-r-0");
        let c = &mut a.template_mut().spec.containers[0];
        c.env_from = vec![
            EnvFromSource {
                prefix: String::new(),
                source: EnvFromRef::ConfigMapRef(ObjectRef {
                    name: "app".into(),
                    optional: false,
                }),
            },
            EnvFromSource {
                prefix: "DB_".into(),
                source: EnvFromRef::SecretRef(ObjectRef {
                    name: "db".into(),
                    optional: false,
                }),
            },
            EnvFromSource {
                prefix: String::new(),
                source: EnvFromRef::SecretRef(ObjectRef {
                    name: "absent".into(),
                    optional: true,
                }),
            },
        ];
        c.env = vec![
            EnvVar {
                name: "MODE".into(),
                value: "plain".into(),
                value_from: None,
            },
            var(
                "GREETING",
                EnvVarSource::ConfigMapKeyRef(key("app", "greeting", false)),
            ),
            var(
                "PASSWORD",
                EnvVarSource::SecretKeyRef(key("db", "password", false)),
            ),
            var(
                "FEATURE",
                EnvVarSource::ConfigMapKeyRef(key("app", "nope", true)),
            ),
            var("GONE", EnvVarSource::SecretKeyRef(key("absent", "k", true))),
            var(
                "POD",
                EnvVarSource::FieldRef {
                    field_path: FieldPathRef::MetadataName,
                },
            ),
            var(
                "NS",
                EnvVarSource::FieldRef {
                    field_path: FieldPathRef::MetadataNamespace,
                },
            ),
            var(
                "NODE",
                EnvVarSource::FieldRef {
                    field_path: FieldPathRef::SpecNodeName,
                },
            ),
            var(
                "IP",
                EnvVarSource::FieldRef {
                    field_path: FieldPathRef::StatusPodIp,
                },
            ),
        ];
        let objects = objects(&[
            (
                Kind::ConfigMap,
                "app",
                &[("greeting", "hello"), ("1st", "x"), ("LEVEL", "3")],
            ),
            (Kind::Secret, "db", &[("password", "s3cr3t")]),
        ]);
        let env = env(&a, &objects, &fields()).expect("resolves");
        assert_eq!(
            pairs(&env),
            [
                ("LEVEL", "3", false),
                ("greeting", "hello", false),
                ("DB_password", "s3cr3t", true),
                ("MODE", "plain", false),
                ("GREETING", "hello", false),
                ("PASSWORD", "s3cr3t", true),
                ("POD", "web-r-0", false),
                ("NS", "default", false),
                ("NODE", "n1", false),
                ("IP", "10.0.0.7", false),
            ],
            "1st is no variable name and is skipped"
        );
        let shown = format!("{env:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("PASSWORD=<secret>"), "{shown}");
    }

    #[test]
    fn a_missing_object_or_key_names_it_and_never_a_value() {
        let mut a = fixtures::assignment("default.web-r-0");
        let objects = objects(&[(Kind::Secret, "db", &[("password", "s3cr3t")])]);
        let cases = [
            (
                EnvVarSource::SecretKeyRef(key("nope", "password", false)),
                "secret \"nope\" not found",
            ),
            (
                EnvVarSource::SecretKeyRef(key("db", "user", false)),
                "couldn't find key user in Secret default/db",
            ),
            (
                EnvVarSource::ConfigMapKeyRef(key("db", "password", false)),
                "configmap \"db\" not found",
            ),
        ];
        for (source, expected) in cases {
            a.template_mut().spec.containers[0].env = vec![var("X", source)];
            assert_eq!(env(&a, &objects, &fields()), Err(expected.to_string()));
        }
        a.template_mut().spec.containers[0].env = vec![];
        a.template_mut().spec.containers[0].env_from = vec![EnvFromSource {
            prefix: String::new(),
            source: EnvFromRef::ConfigMapRef(ObjectRef {
                name: "cfg".into(),
                optional: false,
            }),
        }];
        assert_eq!(
            env(&a, &objects, &fields()),
            Err("configmap \"cfg\" not found".to_string())
        );
    }

    fn projected(name: &str, items: Vec<KeyToPath>, mode: u32, optional: bool) -> ProjectedObject {
        ProjectedObject {
            name: name.into(),
            items,
            default_mode: mode,
            optional,
        }
    }

    #[test]
    fn config_volumes_become_files_with_their_modes() {
        let mut a = fixtures::assignment("default.web-r-0");
        a.template_mut().spec.volumes = vec![
            Volume {
                name: "conf".into(),
                source: VolumeSource::ConfigMap(projected("app", vec![], 0o644, false)),
            },
            Volume {
                name: "one".into(),
                source: VolumeSource::ConfigMap(projected(
                    "app",
                    vec![KeyToPath {
                        key: "greeting".into(),
                        path: "sub/hello.txt".into(),
                        mode: Some(0o600),
                    }],
                    0o644,
                    false,
                )),
            },
            Volume {
                name: "creds".into(),
                // A mode readable by all is kept from others on the host.
                source: VolumeSource::Secret(projected("db", vec![], 0o644, false)),
            },
            Volume {
                name: "maybe".into(),
                source: VolumeSource::Secret(projected("absent", vec![], 0o400, true)),
            },
        ];
        let objects = objects(&[
            (
                Kind::ConfigMap,
                "app",
                &[("greeting", "hello"), ("level", "3")],
            ),
            (Kind::Secret, "db", &[("password", "s3cr3t")]),
        ]);
        let plan = volumes(&a, &objects).expect("resolves");
        let files = |name: &str| match &plan[name] {
            VolumePlan::Files { secret, files } => (
                *secret,
                files
                    .iter()
                    .map(|f| {
                        (
                            f.path.clone(),
                            String::from_utf8_lossy(&f.bytes).into_owned(),
                            f.mode,
                        )
                    })
                    .collect::<Vec<_>>(),
            ),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            files("conf"),
            (
                false,
                vec![
                    ("greeting".into(), "hello".into(), 0o644),
                    ("level".into(), "3".into(), 0o644)
                ]
            )
        );
        assert_eq!(
            files("one"),
            (false, vec![("sub/hello.txt".into(), "hello".into(), 0o600)])
        );
        assert_eq!(
            files("creds"),
            (true, vec![("password".into(), "s3cr3t".into(), 0o640)])
        );
        assert_eq!(files("maybe"), (true, vec![]));
        assert!(!format!("{plan:?}").contains("s3cr3t"));

        a.template_mut().spec.volumes[1].source = VolumeSource::ConfigMap(projected(
            "app",
            vec![KeyToPath {
                key: "nope".into(),
                path: "x".into(),
                mode: None,
            }],
            0o644,
            false,
        ));
        assert_eq!(
            volumes(&a, &objects),
            Err("couldn't find key nope in ConfigMap default/app".to_string())
        );
        a.template_mut().spec.volumes[1].source =
            VolumeSource::Secret(projected("nope", vec![], 0o400, false));
        assert_eq!(
            volumes(&a, &objects),
            Err("secret \"nope\" not found".to_string())
        );
    }

    #[test]
    fn changed_objects_are_found_by_version() {
        let before = objects(&[(Kind::ConfigMap, "a", &[]), (Kind::Secret, "b", &[])]);
        let mut after = before.clone();
        assert!(before.changed(&after).is_empty());
        if let Some(o) = after.0.values_mut().next() {
            o.version = 2;
        }
        after.0.insert(
            (Kind::Secret, "default".into(), "c".into()),
            Object {
                data: BTreeMap::new(),
                version: 1,
            },
        );
        assert_eq!(
            before.changed(&after),
            [
                (Kind::ConfigMap, "default".to_string(), "a".to_string()),
                (Kind::Secret, "default".to_string(), "c".to_string()),
            ]
        );
    }
}
