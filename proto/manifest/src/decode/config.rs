//! Strict decoding of configuration: the `v1` ConfigMap and Secret kinds, and
//! the pod template's `volumes`, `volumeMounts`, `env[].valueFrom` and
//! `envFrom`. Rules relating several of these fields (a mount naming a
//! volume, unique mount paths) live in `validate.rs`.
//!
//! A Secret's values never appear in a message: errors name the key and
//! what is wrong with its value, never the value.

use std::collections::BTreeMap;

use base64::Engine;

use super::{Decoder, FieldPath, Node, CONFIG_MAP_KIND, CORE_API_VERSION, SECRET_KIND};
use crate::schema::{
    Schema, CONFIG_MAP, CONFIG_MAP_VOLUME, EMPTY_DIR, ENV_FROM_SOURCE, ENV_SOURCE_REF,
    ENV_VAR_SOURCE, HOST_PATH, KEY_SELECTOR, KEY_TO_PATH, OBJECT_FIELD_SELECTOR, SECRET,
    SECRET_VOLUME, VOLUME, VOLUME_MOUNT,
};
use crate::{
    Bytes, ConfigMap, EnvFromRef, EnvFromSource, EnvVarSource, FieldPathRef, HostPathType, KeyRef,
    KeyToPath, ObjectRef, ProjectedObject, Secret, StorageMedium, Volume, VolumeMount,
    VolumeSource, MAX_CONFIG_OBJECT_BYTES,
};
use drover_proto::{names, quantity};

/// The default file mode of configMap volumes: Kubernetes' 0644.
pub(crate) const DEFAULT_MODE: u32 = 0o644;
/// The default file mode of secret volumes: 0400, owner-only (Kubernetes
/// says 0644; drover keeps secrets from other users by default).
pub(crate) const DEFAULT_SECRET_MODE: u32 = 0o400;
/// The largest file mode: permission bits only.
const MAX_MODE: i64 = 0o777;

/// Whether `key` may name a ConfigMap or Secret key, and so a file:
/// Kubernetes' `IsConfigMapKey`.
pub(crate) fn config_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("must not be empty".into());
    }
    if key.len() > 253 {
        return Err("must be no more than 253 characters".into());
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(
            "must consist of alphanumeric characters, '-', '_' or '.' (it becomes a file name)"
                .into(),
        );
    }
    if key == "." || key == ".." || key.starts_with("..") {
        return Err("must not be '.' or '..' or start with '..'".into());
    }
    Ok(())
}

/// A relative path below a volume or mount: not absolute, no `..` element.
pub(crate) fn relative_path(path: &str) -> Result<(), String> {
    if path.starts_with('/') {
        return Err("must be a relative path".into());
    }
    if path.split('/').any(|part| part == "..") {
        return Err("must not contain '..'".into());
    }
    if path.contains('\0') {
        return Err("must not contain a NUL byte".into());
    }
    Ok(())
}

impl Decoder<'_> {
    // ----- ConfigMap and Secret -------------------------------------------

    pub(super) fn config_map(&mut self, node: &Node) -> Option<ConfigMap> {
        let root = FieldPath::root();
        let mut metadata = None;
        let mut data = Some(BTreeMap::new());
        let mut binary_data = Some(BTreeMap::new());
        let mut immutable = Some(false);
        let mut api_version_seen = false;
        self.fields(node, &root, &CONFIG_MAP, |d, key, value, path| match key {
            "apiVersion" => {
                api_version_seen = true;
                d.core_api_version(value, &path, CONFIG_MAP_KIND);
            }
            "metadata" => metadata = Some(d.object_meta(Some(value), &path)),
            "data" => data = d.text_map(value, &path),
            "binaryData" => binary_data = d.base64_map(value, &path, "binaryData"),
            "immutable" => immutable = d.boolean(value, &path),
            _ => {}
        })?;
        if !api_version_seen {
            self.error(&root.field("apiVersion"), "missing required field");
        }
        let metadata = metadata.unwrap_or_else(|| self.object_meta(None, &root.field("metadata")));
        let (data, binary_data) = (data?, binary_data?);
        for key in data.keys().filter(|k| binary_data.contains_key(*k)) {
            self.error(
                &root.field("binaryData").key(key),
                format!("duplicate key {key:?}: it is also in data"),
            );
        }
        let size: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            + binary_data
                .iter()
                .map(|(k, v)| k.len() + v.0.len())
                .sum::<usize>();
        self.size_limit(size, CONFIG_MAP_KIND);
        Some(ConfigMap {
            metadata: metadata?,
            data,
            binary_data,
            immutable: immutable?,
        })
    }

    pub(super) fn secret(&mut self, node: &Node) -> Option<Secret> {
        let root = FieldPath::root();
        let mut metadata = None;
        let mut data = Some(BTreeMap::new());
        let mut string_data = Some(BTreeMap::new());
        let mut kind = Some("Opaque".to_string());
        let mut immutable = Some(false);
        let mut api_version_seen = false;
        self.fields(node, &root, &SECRET, |d, key, value, path| match key {
            "apiVersion" => {
                api_version_seen = true;
                d.core_api_version(value, &path, SECRET_KIND);
            }
            "metadata" => metadata = Some(d.object_meta(Some(value), &path)),
            "data" => data = d.base64_map(value, &path, "data"),
            "stringData" => string_data = d.text_map(value, &path),
            "type" => {
                kind = d.string(value, &path).filter(|t| {
                    let ok = !t.is_empty() && t.len() <= 253;
                    if !ok {
                        d.error(&path, "must be 1 to 253 characters");
                    }
                    ok
                });
            }
            "immutable" => immutable = d.boolean(value, &path),
            _ => {}
        })?;
        if !api_version_seen {
            self.error(&root.field("apiVersion"), "missing required field");
        }
        let metadata = metadata.unwrap_or_else(|| self.object_meta(None, &root.field("metadata")));
        // stringData is write-only and wins over data, as in Kubernetes.
        let mut data = data?;
        for (key, value) in string_data? {
            data.insert(key, Bytes(value.into_bytes()));
        }
        let size: usize = data.iter().map(|(k, v)| k.len() + v.0.len()).sum();
        self.size_limit(size, SECRET_KIND);
        Some(Secret {
            metadata: metadata?,
            kind: kind?,
            data,
            immutable: immutable?,
        })
    }

    pub(super) fn core_api_version(&mut self, node: &Node, path: &FieldPath, kind: &str) {
        if let Some(version) = self.string(node, path) {
            if version != CORE_API_VERSION {
                self.error(
                    path,
                    format!("{version:?} is not supported for {kind}: use apiVersion: v1"),
                );
            }
        }
    }

    fn size_limit(&mut self, size: usize, kind: &str) {
        if size > MAX_CONFIG_OBJECT_BYTES {
            self.error(
                &FieldPath::root(),
                format!(
                    "the {kind}'s keys and values take {size} bytes, more than the \
                     {MAX_CONFIG_OBJECT_BYTES}-byte limit of one object"
                ),
            );
        }
    }

    /// The keys of `data` / `stringData`: file-name keys, string values.
    fn text_map(&mut self, node: &Node, path: &FieldPath) -> Option<BTreeMap<String, String>> {
        let mut map = BTreeMap::new();
        let mut ok = true;
        for (key, value) in self.entries(node, path)? {
            ok &= self.check(path, key, "key", config_key(key));
            match value {
                Node::Str(text) => {
                    map.insert(key.to_string(), text.clone());
                }
                // Kubernetes reads a null value as the empty string.
                Node::Null => {
                    map.insert(key.to_string(), String::new());
                }
                other => {
                    self.error(
                        &path.key(key),
                        format!("expected a string, found {} (quote it)", other.kind()),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(map)
    }

    /// `binaryData` / a Secret's `data`: base64 values. The message names the
    /// key, never the value.
    fn base64_map(
        &mut self,
        node: &Node,
        path: &FieldPath,
        field: &str,
    ) -> Option<BTreeMap<String, Bytes>> {
        let mut map = BTreeMap::new();
        let mut ok = true;
        for (key, value) in self.entries(node, path)? {
            ok &= self.check(path, key, "key", config_key(key));
            let text = match value {
                Node::Str(text) => text.as_str(),
                Node::Null => "",
                other => {
                    self.error(
                        &path.key(key),
                        format!("expected a base64 string, found {}", other.kind()),
                    );
                    ok = false;
                    continue;
                }
            };
            // Kubernetes' decoder takes standard base64 with padding; line
            // breaks (`base64` wraps at 76 columns) are not part of it.
            match base64::engine::general_purpose::STANDARD.decode(text.as_bytes()) {
                Ok(bytes) => {
                    map.insert(key.to_string(), Bytes(bytes));
                }
                Err(_) => {
                    self.error(
                        &path.key(key),
                        format!(
                            "the value is not valid base64 (standard alphabet, padded); use \
                             stringData for plain text instead of {field}"
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(map)
    }

    fn boolean(&mut self, node: &Node, path: &FieldPath) -> Option<bool> {
        match node {
            Node::Bool(b) => Some(*b),
            other => {
                self.error(
                    path,
                    format!("expected true or false, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// The name of a ConfigMap or Secret.
    fn object_ref_name(&mut self, node: &Node, path: &FieldPath) -> Option<String> {
        self.string(node, path)
            .filter(|name| self.check(path, name, "name", names::dns1123_subdomain(name)))
    }

    // ----- env ------------------------------------------------------------

    pub(super) fn env_var_source(&mut self, node: &Node, path: &FieldPath) -> Option<EnvVarSource> {
        let mut sources = Vec::new();
        let reported = self.errors.len();
        self.fields(
            node,
            path,
            &ENV_VAR_SOURCE,
            |d, key, value, path| match key {
                "configMapKeyRef" => {
                    sources.push(d.key_ref(value, &path).map(EnvVarSource::ConfigMapKeyRef))
                }
                "secretKeyRef" => {
                    sources.push(d.key_ref(value, &path).map(EnvVarSource::SecretKeyRef))
                }
                "fieldRef" => sources.push(d.field_ref(value, &path)),
                _ => {}
            },
        )?;
        self.exactly_one(
            sources,
            path,
            "configMapKeyRef, secretKeyRef or fieldRef",
            reported,
        )
    }

    fn key_ref(&mut self, node: &Node, path: &FieldPath) -> Option<KeyRef> {
        let mut name = None;
        let mut key = None;
        let mut optional = Some(false);
        self.fields(
            node,
            path,
            &KEY_SELECTOR,
            |d, field, value, path| match field {
                "name" => name = Some(d.object_ref_name(value, &path)),
                "key" => {
                    key = Some(
                        d.string(value, &path)
                            .filter(|k| d.check(&path, k, "key", config_key(k))),
                    );
                }
                "optional" => optional = d.boolean(value, &path),
                _ => {}
            },
        )?;
        let name = self.required(name, path, "name");
        let key = self.required(key, path, "key");
        Some(KeyRef {
            name: name?,
            key: key?,
            optional: optional?,
        })
    }

    fn field_ref(&mut self, node: &Node, path: &FieldPath) -> Option<EnvVarSource> {
        let mut field_path = None;
        self.fields(node, path, &OBJECT_FIELD_SELECTOR, |d, key, value, path| {
            if key == "fieldPath" {
                let choices: Vec<(&str, FieldPathRef)> =
                    FieldPathRef::ALL.iter().map(|f| (f.as_str(), *f)).collect();
                field_path = Some(d.one_of(value, &path, &choices));
            }
        })?;
        let field_path = self.required(field_path, path, "fieldPath");
        Some(EnvVarSource::FieldRef {
            field_path: field_path?,
        })
    }

    pub(super) fn env_from(&mut self, node: &Node, path: &FieldPath) -> Option<Vec<EnvFromSource>> {
        let items = self.list(node, path)?;
        let sources: Vec<Option<EnvFromSource>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.env_from_source(item, &path.index(i)))
            .collect();
        sources.into_iter().collect()
    }

    fn env_from_source(&mut self, node: &Node, path: &FieldPath) -> Option<EnvFromSource> {
        let mut prefix = Some(String::new());
        let mut sources = Vec::new();
        let reported = self.errors.len();
        self.fields(
            node,
            path,
            &ENV_FROM_SOURCE,
            |d, key, value, path| match key {
                "prefix" => {
                    prefix = d.string(value, &path).filter(|p| {
                        p.is_empty() || d.check(&path, p, "prefix", names::env_var_name(p))
                    });
                }
                "configMapRef" => {
                    sources.push(d.object_ref(value, &path).map(EnvFromRef::ConfigMapRef))
                }
                "secretRef" => sources.push(d.object_ref(value, &path).map(EnvFromRef::SecretRef)),
                _ => {}
            },
        )?;
        let source = self.exactly_one(sources, path, "configMapRef or secretRef", reported);
        Some(EnvFromSource {
            prefix: prefix?,
            source: source?,
        })
    }

    fn object_ref(&mut self, node: &Node, path: &FieldPath) -> Option<ObjectRef> {
        let mut name = None;
        let mut optional = Some(false);
        self.fields(
            node,
            path,
            &ENV_SOURCE_REF,
            |d, key, value, path| match key {
                "name" => name = Some(d.object_ref_name(value, &path)),
                "optional" => optional = d.boolean(value, &path),
                _ => {}
            },
        )?;
        let name = self.required(name, path, "name");
        Some(ObjectRef {
            name: name?,
            optional: optional?,
        })
    }

    // ----- volumes ----------------------------------------------------------

    pub(super) fn volumes(&mut self, node: &Node, path: &FieldPath) -> Option<Vec<Volume>> {
        let items = self.list(node, path)?;
        let volumes: Vec<Option<Volume>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.volume(item, &path.index(i)))
            .collect();
        volumes.into_iter().collect()
    }

    fn volume(&mut self, node: &Node, path: &FieldPath) -> Option<Volume> {
        let mut name = None;
        let mut sources = Vec::new();
        let reported = self.errors.len();
        self.fields(node, path, &VOLUME, |d, key, value, path| match key {
            "name" => {
                name = Some(
                    d.string(value, &path)
                        .filter(|n| d.check(&path, n, "volume name", names::dns1123_label(n))),
                );
            }
            "emptyDir" => sources.push(d.empty_dir(value, &path)),
            "hostPath" => sources.push(d.host_path(value, &path)),
            "configMap" => sources.push(
                d.projected(value, &path, &CONFIG_MAP_VOLUME, "name")
                    .map(VolumeSource::ConfigMap),
            ),
            "secret" => sources.push(
                d.projected(value, &path, &SECRET_VOLUME, "secretName")
                    .map(VolumeSource::Secret),
            ),
            _ => {}
        })?;
        let name = self.required(name, path, "name");
        let source = self.exactly_one(
            sources,
            path,
            "emptyDir, hostPath, configMap or secret (the volume types drover supports)",
            reported,
        );
        Some(Volume {
            name: name?,
            source: source?,
        })
    }

    fn empty_dir(&mut self, node: &Node, path: &FieldPath) -> Option<VolumeSource> {
        let mut medium = Some(StorageMedium::Disk);
        let mut size_limit_bytes = Some(None);
        self.fields(node, path, &EMPTY_DIR, |d, key, value, path| match key {
            "medium" => {
                let media = [("", StorageMedium::Disk), ("Memory", StorageMedium::Memory)];
                medium = d.one_of(value, &path, &media);
            }
            "sizeLimit" => {
                size_limit_bytes = d
                    .quantity(value, &path, quantity::parse_memory_bytes)
                    .filter(|&bytes| {
                        let ok = bytes > 0;
                        if !ok {
                            d.error(&path, "must be greater than 0");
                        }
                        ok
                    })
                    .map(Some);
            }
            _ => {}
        })?;
        Some(VolumeSource::EmptyDir {
            medium: medium?,
            size_limit_bytes: size_limit_bytes?,
        })
    }

    fn host_path(&mut self, node: &Node, path: &FieldPath) -> Option<VolumeSource> {
        let mut host = None;
        let mut kind = Some(HostPathType::Unset);
        self.fields(node, path, &HOST_PATH, |d, key, value, path| match key {
            "path" => {
                host = Some(d.string(value, &path).filter(|p| {
                    let ok = p.starts_with('/') && !p.contains('\0');
                    if !ok {
                        d.error(&path, format!("invalid path {p:?}: must be absolute"));
                    }
                    ok && d.check(&path, p, "path", no_dot_dot(p))
                }));
            }
            "type" => {
                let choices: Vec<(&str, HostPathType)> =
                    HostPathType::ALL.iter().map(|t| (t.as_str(), *t)).collect();
                kind = d.one_of(value, &path, &choices);
            }
            _ => {}
        })?;
        let host = self.required(host, path, "path");
        Some(VolumeSource::HostPath {
            path: host?,
            kind: kind?,
        })
    }

    /// A `configMap` (`name`) or `secret` (`secretName`) volume.
    fn projected(
        &mut self,
        node: &Node,
        path: &FieldPath,
        schema: &Schema,
        name_field: &str,
    ) -> Option<ProjectedObject> {
        let mut name = None;
        let mut items = Some(Vec::new());
        let mut default_mode = Some(if name_field == "secretName" {
            DEFAULT_SECRET_MODE
        } else {
            DEFAULT_MODE
        });
        let mut optional = Some(false);
        self.fields(node, path, schema, |d, key, value, path| match key {
            "name" | "secretName" => name = Some(d.object_ref_name(value, &path)),
            "items" => items = d.key_to_paths(value, &path),
            "defaultMode" => default_mode = d.mode(value, &path),
            "optional" => optional = d.boolean(value, &path),
            _ => {}
        })?;
        let name = self.required(name, path, name_field);
        Some(ProjectedObject {
            name: name?,
            items: items?,
            default_mode: default_mode?,
            optional: optional?,
        })
    }

    fn key_to_paths(&mut self, node: &Node, path: &FieldPath) -> Option<Vec<KeyToPath>> {
        let items = self.list(node, path)?;
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let item_path = path.index(i);
            let Some(k) = self.key_to_path(item, &item_path) else {
                ok = false;
                continue;
            };
            if let Some(first) = seen.insert(k.path.clone(), i) {
                self.error(
                    &item_path.field("path"),
                    format!("duplicate path {:?} (also items[{first}])", k.path),
                );
                ok = false;
            }
            out.push(k);
        }
        ok.then_some(out)
    }

    fn key_to_path(&mut self, node: &Node, path: &FieldPath) -> Option<KeyToPath> {
        let mut key = None;
        let mut file = None;
        let mut mode = Some(None);
        self.fields(
            node,
            path,
            &KEY_TO_PATH,
            |d, field, value, path| match field {
                "key" => {
                    key = Some(
                        d.string(value, &path)
                            .filter(|k| d.check(&path, k, "key", config_key(k))),
                    );
                }
                "path" => {
                    file = Some(d.string(value, &path).filter(|p| {
                        let ok = !p.is_empty();
                        if !ok {
                            d.error(&path, "must not be empty");
                        }
                        ok && d.check(&path, p, "path", relative_path(p))
                    }));
                }
                "mode" => mode = d.mode(value, &path).map(Some),
                _ => {}
            },
        )?;
        let key = self.required(key, path, "key");
        let file = self.required(file, path, "path");
        Some(KeyToPath {
            key: key?,
            path: file?,
            mode: mode?,
        })
    }

    /// A file mode: 0 to 0777, as a number (`420`) or YAML 1.1 octal (`0644`),
    /// which Kubernetes manifests use and YAML 1.2 reads as a string.
    fn mode(&mut self, node: &Node, path: &FieldPath) -> Option<u32> {
        if let Node::Str(text) = node {
            let octal = text.len() > 1
                && text.starts_with('0')
                && text.bytes().all(|b| (b'0'..=b'7').contains(&b));
            return match (octal, u32::from_str_radix(text, 8)) {
                (true, Ok(mode)) if i64::from(mode) <= MAX_MODE => Some(mode),
                _ => {
                    self.error(
                        path,
                        format!(
                            "invalid mode {text:?}: must be a number between 0 and 0777 \
                             (octal) or 511 (decimal)"
                        ),
                    );
                    None
                }
            };
        }
        self.int(node, path, 0, MAX_MODE)
            .and_then(|m| u32::try_from(m).ok())
    }

    pub(super) fn volume_mounts(
        &mut self,
        node: &Node,
        path: &FieldPath,
    ) -> Option<Vec<VolumeMount>> {
        let items = self.list(node, path)?;
        let mounts: Vec<Option<VolumeMount>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.volume_mount(item, &path.index(i)))
            .collect();
        mounts.into_iter().collect()
    }

    fn volume_mount(&mut self, node: &Node, path: &FieldPath) -> Option<VolumeMount> {
        let mut name = None;
        let mut mount_path = None;
        let mut read_only = Some(false);
        let mut sub_path = Some(String::new());
        self.fields(node, path, &VOLUME_MOUNT, |d, key, value, path| match key {
            "name" => name = Some(d.string(value, &path)),
            "mountPath" => {
                mount_path = Some(d.string(value, &path).filter(|p| {
                    let ok = p.starts_with('/');
                    if !ok {
                        d.error(&path, format!("invalid mount path {p:?}: must be absolute"));
                    }
                    ok && d.check(&path, p, "mount path", no_dot_dot(p))
                }));
            }
            "readOnly" => read_only = d.boolean(value, &path),
            "subPath" => {
                sub_path = d
                    .string(value, &path)
                    .filter(|p| d.check(&path, p, "subPath", relative_path(p)));
            }
            _ => {}
        })?;
        let name = self.required(name, path, "name");
        let mount_path = self.required(mount_path, path, "mountPath");
        Some(VolumeMount {
            name: name?,
            mount_path: mount_path?,
            read_only: read_only?,
            sub_path: sub_path?,
        })
    }

    // ----- shared -----------------------------------------------------------

    /// A required field's decoded value, or "missing required field" at its path.
    fn required<T>(
        &mut self,
        value: Option<Option<T>>,
        path: &FieldPath,
        field: &str,
    ) -> Option<T> {
        value.unwrap_or_else(|| {
            self.error(&path.field(field), "missing required field");
            None
        })
    }

    /// One of several mutually exclusive fields, as Kubernetes' one-of
    /// validation says it. None found is not repeated when the object's own
    /// errors (from `reported` on) already say why, e.g. an unsupported
    /// volume type.
    fn exactly_one<T>(
        &mut self,
        mut found: Vec<Option<T>>,
        path: &FieldPath,
        choices: &str,
        reported: usize,
    ) -> Option<T> {
        match found.len() {
            0 => {
                if self.errors.len() == reported {
                    self.error(path, format!("must specify one of {choices}"));
                }
                None
            }
            1 => found.pop().flatten(),
            _ => {
                self.error(path, format!("may specify only one of {choices}"));
                None
            }
        }
    }
}

/// No `..` element in an absolute path: what it names is what it says.
fn no_dot_dot(path: &str) -> Result<(), String> {
    if path.split('/').any(|part| part == "..") {
        Err("must not contain '..'".into())
    } else {
        Ok(())
    }
}
