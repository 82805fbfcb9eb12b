//! Strict decoding: one YAML document ([`Node`]) into a [`Deployment`], the
//! way Kubernetes' strict decoder and field validation would take it.
//!
//! Every object is walked entry by entry, in document order, so problems are
//! reported in the order a reader meets them, each with its field path:
//!
//! - a key the object does not have is `unknown field "foo"`; a real
//!   Kubernetes field drover lacks is `field "volumes" is not supported by
//!   drover`; both become warnings under `lenient`, and both are refused even
//!   when their value is null. Problems with a key are reported at the path of
//!   the object holding it; problems with a value at the value's own path;
//! - server-set fields (`status`, `metadata.uid`, …) are skipped, and so are
//!   the defaults `kubectl get -o yaml` prints for fields drover lacks
//!   (`dnsPolicy: ClusterFirst`, …) as long as they hold exactly that default;
//! - a supported key whose value is null counts as absent;
//! - duplicate keys are refused;
//! - every value is checked where it is read: types (no string-for-number or
//!   number-for-string coercion), ranges, names, quantities, image
//!   references. Rules relating several fields live in `validate.rs`.
//!
//! Defaults are filled in as Kubernetes' defaulting does.

use std::collections::{BTreeMap, HashSet};

use super::document::Node;
use super::path::FieldPath;
use super::schema::{
    suggestion, Schema, CONTAINER, CONTAINER_PORT, DEPLOYMENT_SPEC, DOCUMENT, ENV_VAR, EXEC_ACTION,
    HTTP_GET, HTTP_HEADER, LABEL_SELECTOR, OBJECT_META, POD_SPEC, POD_TEMPLATE, PROBE, RESOURCES,
    ROLLING_UPDATE, STRATEGY, TCP_SOCKET, TEMPLATE_META,
};
use super::{
    Container, ContainerPort, Deployment, DeploymentSpec, EnvVar, HttpHeader, HttpScheme,
    IntOrPercent, LabelSelector, Object, ObjectMeta, ParseOptions, PodSpec, PodTemplate, PortRef,
    Probe, ProbeHandler, Protocol, PullPolicy, ResourceList, Resources, Strategy, TemplateMeta,
};
use drover_proto::{image, names, quantity};

/// One finding at one place in a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    /// The same problem inside the object at `prefix` (`items[2]`).
    pub(crate) fn under(self, prefix: &str) -> Problem {
        let path = match (prefix.is_empty(), self.path.is_empty()) {
            (true, _) => self.path,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{}", self.path),
        };
        Problem { path, ..self }
    }
}

mod config;
mod service;

pub use service::service_env;

/// What decoding one document found.
#[derive(Debug, Default)]
pub(crate) struct DocumentReport {
    /// Present only when `errors` is empty.
    pub object: Option<Object>,
    pub errors: Vec<Problem>,
    /// Skipped kinds and, under `lenient`, unknown or unsupported fields.
    pub warnings: Vec<Problem>,
}

/// The only apiVersion and kind drover applies.
pub(crate) const API_VERSION: &str = "apps/v1";
pub(crate) const KIND: &str = "Deployment";
/// ConfigMap and Secret are `v1`.
pub(crate) const CORE_API_VERSION: &str = "v1";
pub(crate) const CONFIG_MAP_KIND: &str = "ConfigMap";
pub(crate) const SECRET_KIND: &str = "Secret";
pub(crate) const SERVICE_KIND: &str = "Service";

/// Largest value of Kubernetes' int32 fields.
const MAX_INT32: i64 = i32::MAX as i64;
/// Total size Kubernetes allows for an object's annotations.
const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;
/// Kubernetes' rolling-update default for both maxSurge and maxUnavailable.
const DEFAULT_ROLLING_PERCENT: IntOrPercent = IntOrPercent::Percent(25);

/// Decodes one non-empty document.
pub(crate) fn decode_document(node: &Node, opts: &ParseOptions) -> DocumentReport {
    let mut decoder = Decoder {
        opts,
        errors: Vec::new(),
        warnings: Vec::new(),
        skipped: false,
    };
    let object = decoder.object(node);
    if object.is_none() && decoder.errors.is_empty() && !decoder.skipped {
        // Every path that gives up records why; should one ever miss, the
        // document must still not vanish silently from an apply.
        decoder.error(
            &FieldPath::root(),
            "could not be decoded (a drover bug: please report it with this manifest)",
        );
    }
    DocumentReport {
        object: object.filter(|_| decoder.errors.is_empty()),
        errors: decoder.errors,
        warnings: decoder.warnings,
    }
}

/// Which probe a [`Probe`] is; Kubernetes holds liveness probes to `successThreshold: 1`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ProbeKind {
    Liveness,
    Readiness,
}

/// Which label-like map is being read: they share a key grammar but not value rules.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StringMap {
    /// Labels, selectors, node selectors: values are label values.
    Labels,
    /// Annotations: any value, 256 KiB in total.
    Annotations,
}

struct Decoder<'o> {
    opts: &'o ParseOptions,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
    /// The document is of another kind and `skip_unsupported_kinds` is set.
    skipped: bool,
}

impl Decoder<'_> {
    fn error(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.errors.push(Problem {
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// An unknown or unsupported field: an error, or a warning under `lenient`.
    fn field_problem(&mut self, path: &FieldPath, message: String) {
        let problem = Problem {
            path: path.to_string(),
            message,
        };
        if self.opts.lenient {
            self.warnings.push(problem);
        } else {
            self.errors.push(problem);
        }
    }

    // ----- the document -------------------------------------------------

    /// A Deployment, Service, ConfigMap or Secret, by the document's kind.
    fn object(&mut self, node: &Node) -> Option<Object> {
        match node.get("kind") {
            Some(Node::Str(kind)) if kind == CONFIG_MAP_KIND => {
                self.config_map(node).map(Object::ConfigMap)
            }
            Some(Node::Str(kind)) if kind == SECRET_KIND => self.secret(node).map(Object::Secret),
            Some(Node::Str(kind)) if kind == SERVICE_KIND => {
                self.service(node).map(Object::Service)
            }
            _ => self.document(node).map(|d| Object::Deployment(Box::new(d))),
        }
    }

    fn document(&mut self, node: &Node) -> Option<Deployment> {
        let root = FieldPath::root();
        if !matches!(node, Node::Map(_)) {
            self.error(
                &root,
                format!(
                    "expected a Kubernetes object (a mapping with apiVersion and kind), found {}",
                    node.kind()
                ),
            );
            return None;
        }
        // The kind decides whose rules apply: a Service's fields are not ours to judge.
        match node.get("kind") {
            Some(Node::Str(kind)) if kind == KIND => {}
            Some(Node::Str(kind)) => {
                self.unsupported_kind(node, kind);
                return None;
            }
            None | Some(Node::Null) => {
                self.error(&root.field("kind"), "missing required field");
                return None;
            }
            Some(other) => {
                self.error(
                    &root.field("kind"),
                    format!("expected a string, found {}", other.kind()),
                );
                return None;
            }
        }

        let mut metadata = None;
        let mut spec = None;
        let mut api_version_seen = false;
        self.fields(node, &root, &DOCUMENT, |d, key, value, path| match key {
            "apiVersion" => {
                api_version_seen = true;
                if let Some(version) = d.string(value, &path) {
                    if version != API_VERSION {
                        d.error(
                            &path,
                            format!(
                                "{version:?} is not supported for {KIND}: use \
                                     apiVersion: {API_VERSION}"
                            ),
                        );
                    }
                }
            }
            "metadata" => metadata = Some(d.object_meta(Some(value), &path)),
            "spec" => spec = Some(d.deployment_spec(Some(value), &path)),
            _ => {}
        })?;
        if !api_version_seen {
            self.error(&root.field("apiVersion"), "missing required field");
        }
        let metadata = metadata.unwrap_or_else(|| self.object_meta(None, &root.field("metadata")));
        let spec = spec.unwrap_or_else(|| self.deployment_spec(None, &root.field("spec")));
        Some(Deployment {
            metadata: metadata?,
            spec: spec?,
        })
    }

    fn unsupported_kind(&mut self, node: &Node, kind: &str) {
        let what = match node.get("metadata").and_then(|m| m.get("name")) {
            Some(Node::Str(name)) => format!("{kind} {name:?}"),
            _ => kind.to_string(),
        };
        if self.opts.skip_unsupported_kinds {
            self.skipped = true;
            self.warnings.push(Problem {
                path: String::new(),
                message: format!(
                    "skipped {what} (drover applies {API_VERSION} {KIND}, v1 Service, v1 \
                     ConfigMap and v1 Secret)"
                ),
            });
        } else {
            self.error(
                &FieldPath::root().field("kind"),
                format!(
                    "{what} is not supported: drover applies {API_VERSION} {KIND}, v1 \
                     Service, v1 ConfigMap and v1 Secret (use --skip-unsupported-kinds to skip \
                     other kinds)"
                ),
            );
        }
    }

    // ----- objects ------------------------------------------------------

    /// The entries of a mapping with string keys, duplicates refused (the first is kept).
    fn entries<'n>(
        &mut self,
        node: &'n Node,
        path: &FieldPath,
    ) -> Option<Vec<(&'n str, &'n Node)>> {
        let Node::Map(raw) = node else {
            self.error(path, format!("expected an object, found {}", node.kind()));
            return None;
        };
        let mut entries: Vec<(&str, &Node)> = Vec::with_capacity(raw.len());
        let mut seen = HashSet::new();
        for (key, value) in raw {
            let Some(key) = key.as_str() else {
                self.error(
                    path,
                    format!("keys must be strings, found {} (quote it)", key.kind()),
                );
                continue;
            };
            if seen.insert(key) {
                entries.push((key, value));
            } else {
                self.error(path, format!("duplicate key {key:?}"));
            }
        }
        Some(entries)
    }

    /// Walks an object's entries in document order: calls `on_field` with
    /// each supported key whose value is not null (null counts as absent),
    /// skips server-set fields and reports the rest where it meets them.
    /// `None` if `node` is not an object.
    fn fields<'n>(
        &mut self,
        node: &'n Node,
        path: &FieldPath,
        schema: &Schema,
        mut on_field: impl FnMut(&mut Self, &'n str, &'n Node, FieldPath),
    ) -> Option<()> {
        for (key, value) in self.entries(node, path)? {
            if schema.supported.contains(&key) {
                if !matches!(value, Node::Null) {
                    on_field(self, key, value, path.field(key));
                }
            } else if schema.server_set.contains(&key) {
                self.refuse_duplicates_within(value, &path.field(key));
            } else if let Some((_, default)) = schema.defaulted.iter().find(|(k, _)| *k == key) {
                if !default.matches(value) {
                    let message = format!(
                        "field {key:?} is not supported by drover (only its Kubernetes \
                         default {} is accepted)",
                        default.describe()
                    );
                    self.field_problem(path, message);
                }
            } else if schema.unsupported.contains(&key) {
                self.field_problem(path, format!("field {key:?} is not supported by drover"));
            } else {
                let message = match suggestion(key, schema.supported) {
                    Some(known) => format!("unknown field {key:?} (did you mean {known:?}?)"),
                    None => format!("unknown field {key:?}"),
                };
                self.field_problem(path, message);
            }
        }
        Some(())
    }

    /// Like [`Decoder::fields`], with an absent object read as an empty one
    /// so that its required fields are reported by their own paths.
    fn optional_fields<'n>(
        &mut self,
        node: Option<&'n Node>,
        path: &FieldPath,
        schema: &Schema,
        on_field: impl FnMut(&mut Self, &'n str, &'n Node, FieldPath),
    ) -> Option<()> {
        match node {
            Some(node) => self.fields(node, path, schema, on_field),
            None => Some(()),
        }
    }

    /// Kubernetes refuses duplicate keys anywhere, even in fields it then drops.
    fn refuse_duplicates_within(&mut self, node: &Node, path: &FieldPath) {
        match node {
            Node::Map(_) => {
                for (key, value) in self.entries(node, path).into_iter().flatten() {
                    self.refuse_duplicates_within(value, &path.field(key));
                }
            }
            Node::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.refuse_duplicates_within(item, &path.index(i));
                }
            }
            _ => {}
        }
    }

    // ----- scalars and lists --------------------------------------------

    fn string(&mut self, node: &Node, path: &FieldPath) -> Option<String> {
        match node {
            Node::Str(s) => Some(s.clone()),
            Node::Int(_) | Node::UInt(_) | Node::Float(_) | Node::Bool(_) => {
                self.error(
                    path,
                    format!("expected a string, found {} (quote it)", node.kind()),
                );
                None
            }
            _ => {
                self.error(path, format!("expected a string, found {}", node.kind()));
                None
            }
        }
    }

    fn list<'n>(&mut self, node: &'n Node, path: &FieldPath) -> Option<&'n [Node]> {
        match node {
            Node::Seq(items) => Some(items),
            _ => {
                self.error(path, format!("expected a list, found {}", node.kind()));
                None
            }
        }
    }

    /// A string naming one of `choices`.
    fn one_of<T: Copy>(
        &mut self,
        node: &Node,
        path: &FieldPath,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let text = self.string(node, path)?;
        let found = choices
            .iter()
            .find(|(name, _)| *name == text)
            .map(|&(_, value)| value);
        if found.is_none() {
            let names: Vec<String> = choices
                .iter()
                .map(|(name, _)| format!("{name:?}"))
                .collect();
            self.error(
                path,
                format!(
                    "unsupported value {text:?}: supported values are {}",
                    names.join(", ")
                ),
            );
        }
        found
    }

    fn strings(&mut self, node: &Node, path: &FieldPath) -> Option<Vec<String>> {
        let items = self.list(node, path)?;
        let strings: Vec<Option<String>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.string(item, &path.index(i)))
            .collect();
        strings.into_iter().collect()
    }

    /// An integer in `min..=max` (Kubernetes' int32 fields: `max` ≤ 2^31 - 1).
    fn int(&mut self, node: &Node, path: &FieldPath, min: i64, max: i64) -> Option<i64> {
        let value = match node {
            Node::Int(n) => *n,
            Node::UInt(_) => i64::MAX,
            Node::Str(_) => {
                self.error(
                    path,
                    format!(
                        "expected an integer, found {} (remove the quotes)",
                        node.kind()
                    ),
                );
                return None;
            }
            Node::Float(_) => {
                self.error(path, "expected an integer, found a fractional number");
                return None;
            }
            _ => {
                self.error(path, format!("expected an integer, found {}", node.kind()));
                return None;
            }
        };
        if value < min {
            self.error(path, format!("must be greater than or equal to {min}"));
            None
        } else if value > max {
            self.error(path, format!("must be less than or equal to {max}"));
            None
        } else {
            Some(value)
        }
    }

    /// A non-negative count or duration, at least `min`.
    fn count(&mut self, node: &Node, path: &FieldPath, min: u32) -> Option<u32> {
        self.int(node, path, i64::from(min), MAX_INT32)
            .and_then(|n| u32::try_from(n).ok())
    }

    fn port_number(&mut self, node: &Node, path: &FieldPath) -> Option<u16> {
        if let Node::Int(n) = node {
            if !(1..=65535).contains(n) {
                self.error(
                    path,
                    format!("must be between 1 and 65535, inclusive (got {n})"),
                );
                return None;
            }
        }
        self.int(node, path, 1, 65535)
            .and_then(|n| u16::try_from(n).ok())
    }

    /// A label-like map: keys are qualified names, values per `kind`.
    fn string_map(
        &mut self,
        node: &Node,
        path: &FieldPath,
        kind: StringMap,
    ) -> Option<BTreeMap<String, String>> {
        let mut map = BTreeMap::new();
        let mut ok = true;
        let mut total_bytes = 0;
        for (key, value) in self.entries(node, path)? {
            let entry_path = path.key(key);
            if let Err(reason) = names::qualified_name(key) {
                self.error(path, format!("invalid key {key:?}: {reason}"));
                ok = false;
            }
            let Some(value) = self.string(value, &entry_path) else {
                ok = false;
                continue;
            };
            match kind {
                StringMap::Labels => {
                    if let Err(reason) = names::label_value(&value) {
                        self.error(&entry_path, format!("invalid value {value:?}: {reason}"));
                        ok = false;
                    }
                }
                StringMap::Annotations => total_bytes += key.len() + value.len(),
            }
            map.insert(key.to_string(), value);
        }
        if total_bytes > MAX_ANNOTATIONS_BYTES {
            self.error(
                path,
                format!("annotations take {total_bytes} bytes, more than the {MAX_ANNOTATIONS_BYTES}-byte limit"),
            );
            ok = false;
        }
        ok.then_some(map)
    }

    // ----- metadata -----------------------------------------------------

    fn object_meta(&mut self, node: Option<&Node>, path: &FieldPath) -> Option<ObjectMeta> {
        let mut name = None;
        let mut namespace = Some(
            self.opts
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
        );
        let mut labels = Some(BTreeMap::new());
        let mut annotations = Some(BTreeMap::new());
        let mut name_seen = false;
        self.optional_fields(node, path, &OBJECT_META, |d, key, value, path| match key {
            "name" => {
                name_seen = true;
                name = d
                    .string(value, &path)
                    .filter(|name| d.object_name(name, &path));
            }
            "namespace" => {
                namespace = d
                    .string(value, &path)
                    .filter(|ns| d.check(&path, ns, "namespace", names::dns1123_label(ns)))
                    .filter(|ns| d.namespace_matches_flag(ns, &path));
            }
            "labels" => labels = d.string_map(value, &path, StringMap::Labels),
            "annotations" => {
                annotations = d.string_map(value, &path, StringMap::Annotations);
            }
            _ => {}
        })?;
        if !name_seen {
            self.error(&path.field("name"), "missing required field");
        }
        Some(ObjectMeta {
            name: name?,
            namespace: namespace?,
            labels: labels?,
            annotations: annotations?,
        })
    }

    /// Kubernetes allows 253 characters; replica names are derived from the
    /// Deployment's, so drover keeps it to a label's 63.
    fn object_name(&mut self, name: &str, path: &FieldPath) -> bool {
        if name.len() > names::MAX_LABEL_LEN {
            self.error(
                path,
                format!(
                    "invalid name {name:?}: must be no more than {} characters (drover \
                     derives replica names from it)",
                    names::MAX_LABEL_LEN
                ),
            );
            return false;
        }
        self.check(path, name, "name", names::dns1123_subdomain(name))
    }

    /// A manifest's own namespace must agree with `-n` when both are given.
    fn namespace_matches_flag(&mut self, namespace: &str, path: &FieldPath) -> bool {
        match self.opts.namespace.as_deref() {
            Some(flag) if self.opts.enforce_namespace && flag != namespace => {
                self.error(
                    path,
                    format!(
                        "the namespace from the provided object {namespace:?} does not match \
                         the namespace {flag:?} given with -n; drop -n or pass -n {namespace}"
                    ),
                );
                false
            }
            _ => true,
        }
    }

    /// Reports `result` as `invalid <what> "<value>": <reason>`.
    fn check(
        &mut self,
        path: &FieldPath,
        value: &str,
        what: &str,
        result: Result<(), String>,
    ) -> bool {
        match result {
            Ok(()) => true,
            Err(reason) => {
                self.error(path, format!("invalid {what} {value:?}: {reason}"));
                false
            }
        }
    }

    // ----- the Deployment spec ------------------------------------------

    fn deployment_spec(&mut self, node: Option<&Node>, path: &FieldPath) -> Option<DeploymentSpec> {
        let mut replicas = Some(1);
        let mut selector = None;
        let mut template = None;
        let mut strategy = None;
        let mut min_ready_seconds = Some(0);
        let mut revision_history_limit = Some(10);
        let mut progress_deadline_seconds = Some(600);
        self.optional_fields(
            node,
            path,
            &DEPLOYMENT_SPEC,
            |d, key, value, path| match key {
                "replicas" => replicas = d.replicas(value, &path),
                "selector" => selector = Some(d.selector(value, &path)),
                "template" => template = Some(d.pod_template(Some(value), &path)),
                "strategy" => strategy = Some(d.strategy(value, &path)),
                "minReadySeconds" => min_ready_seconds = d.count(value, &path, 0),
                "revisionHistoryLimit" => revision_history_limit = d.count(value, &path, 0),
                "progressDeadlineSeconds" => {
                    progress_deadline_seconds = d.count(value, &path, 1);
                }
                _ => {}
            },
        )?;
        if let (Some(deadline), Some(min_ready)) = (progress_deadline_seconds, min_ready_seconds) {
            if deadline <= min_ready {
                self.error(
                    &path.field("progressDeadlineSeconds"),
                    format!("must be greater than minReadySeconds ({min_ready})"),
                );
            }
        }
        let selector = selector.unwrap_or_else(|| {
            self.error(&path.field("selector"), "missing required field");
            None
        });
        let template = template.unwrap_or_else(|| {
            self.error(&path.field("template"), "missing required field");
            None
        });
        let strategy = strategy.unwrap_or(Some(Strategy::RollingUpdate {
            max_surge: DEFAULT_ROLLING_PERCENT,
            max_unavailable: DEFAULT_ROLLING_PERCENT,
        }));
        Some(DeploymentSpec {
            replicas: replicas?,
            selector: selector?,
            min_ready_seconds: min_ready_seconds?,
            revision_history_limit: revision_history_limit?,
            progress_deadline_seconds: progress_deadline_seconds?,
            strategy: strategy?,
            template: template?,
        })
    }

    fn replicas(&mut self, node: &Node, path: &FieldPath) -> Option<u32> {
        let cap = self.opts.max_replicas;
        let n = self.int(node, path, 0, i64::MAX)?;
        if n > i64::from(cap) {
            self.error(
                path,
                format!("must be less than or equal to {cap}, the cluster's replica cap"),
            );
            return None;
        }
        u32::try_from(n).ok()
    }

    fn selector(&mut self, node: &Node, path: &FieldPath) -> Option<LabelSelector> {
        let mut match_labels = None;
        self.fields(node, path, &LABEL_SELECTOR, |d, key, value, path| {
            if key == "matchLabels" {
                match_labels = Some(d.string_map(value, &path, StringMap::Labels));
            }
        })?;
        let match_labels = match match_labels {
            Some(labels) => labels?,
            None => BTreeMap::new(),
        };
        if match_labels.is_empty() {
            self.error(
                &path.field("matchLabels"),
                "must not be empty: a Deployment finds its replicas by these labels",
            );
            return None;
        }
        Some(LabelSelector { match_labels })
    }

    fn strategy(&mut self, node: &Node, path: &FieldPath) -> Option<Strategy> {
        let mut recreate = Some(false);
        let mut rolling_update = None;
        self.fields(node, path, &STRATEGY, |d, key, value, path| match key {
            "type" => {
                recreate = d.one_of(
                    value,
                    &path,
                    &[("RollingUpdate", false), ("Recreate", true)],
                );
            }
            "rollingUpdate" => rolling_update = Some((value, path)),
            _ => {}
        })?;
        match (recreate?, rolling_update) {
            (true, Some((_, path))) => {
                self.error(
                    &path,
                    "may not be specified when strategy type is \"Recreate\"",
                );
                None
            }
            (true, None) => Some(Strategy::Recreate),
            (false, None) => Some(Strategy::RollingUpdate {
                max_surge: DEFAULT_ROLLING_PERCENT,
                max_unavailable: DEFAULT_ROLLING_PERCENT,
            }),
            (false, Some((node, path))) => self.rolling_update(node, &path),
        }
    }

    fn rolling_update(&mut self, node: &Node, path: &FieldPath) -> Option<Strategy> {
        let mut max_surge = Some(DEFAULT_ROLLING_PERCENT);
        let mut max_unavailable = Some(DEFAULT_ROLLING_PERCENT);
        self.fields(
            node,
            path,
            &ROLLING_UPDATE,
            |d, key, value, path| match key {
                "maxSurge" => max_surge = d.int_or_percent(value, &path, None),
                "maxUnavailable" => max_unavailable = d.int_or_percent(value, &path, Some(100)),
                _ => {}
            },
        )?;
        let (max_surge, max_unavailable) = (max_surge?, max_unavailable?);
        let is_zero =
            |v: IntOrPercent| matches!(v, IntOrPercent::Int(0) | IntOrPercent::Percent(0));
        if is_zero(max_surge) && is_zero(max_unavailable) {
            self.error(
                &path.field("maxUnavailable"),
                "may not be 0 when maxSurge is 0: the rollout could never make progress",
            );
            return None;
        }
        Some(Strategy::RollingUpdate {
            max_surge,
            max_unavailable,
        })
    }

    /// `3` or `"25%"`; `max_percent` bounds percentages (maxUnavailable: 100%).
    fn int_or_percent(
        &mut self,
        node: &Node,
        path: &FieldPath,
        max_percent: Option<u32>,
    ) -> Option<IntOrPercent> {
        let Node::Str(text) = node else {
            let n = self.int(node, path, 0, MAX_INT32)?;
            return u32::try_from(n).ok().map(IntOrPercent::Int);
        };
        let percent = text
            .strip_suffix('%')
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<u32>().ok());
        match (percent, max_percent) {
            (None, _) => {
                self.error(
                    path,
                    format!(
                        "invalid value {text:?}: must be an integer or a percentage like \"25%\""
                    ),
                );
                None
            }
            (Some(p), Some(max)) if p > max => {
                self.error(path, format!("must not be greater than {max}%"));
                None
            }
            (Some(p), _) => Some(IntOrPercent::Percent(p)),
        }
    }

    // ----- the pod template ---------------------------------------------

    fn pod_template(&mut self, node: Option<&Node>, path: &FieldPath) -> Option<PodTemplate> {
        let mut metadata = Some(TemplateMeta::default());
        let mut spec = None;
        self.optional_fields(node, path, &POD_TEMPLATE, |d, key, value, path| match key {
            "metadata" => metadata = d.template_meta(value, &path),
            "spec" => spec = Some(d.pod_spec(Some(value), &path)),
            _ => {}
        })?;
        let spec = spec.unwrap_or_else(|| self.pod_spec(None, &path.field("spec")));
        Some(PodTemplate {
            metadata: metadata?,
            spec: spec?,
        })
    }

    fn template_meta(&mut self, node: &Node, path: &FieldPath) -> Option<TemplateMeta> {
        let mut labels = Some(BTreeMap::new());
        let mut annotations = Some(BTreeMap::new());
        self.fields(
            node,
            path,
            &TEMPLATE_META,
            |d, key, value, path| match key {
                "labels" => labels = d.string_map(value, &path, StringMap::Labels),
                "annotations" => {
                    annotations = d.string_map(value, &path, StringMap::Annotations);
                }
                _ => {}
            },
        )?;
        Some(TemplateMeta {
            labels: labels?,
            annotations: annotations?,
        })
    }

    fn pod_spec(&mut self, node: Option<&Node>, path: &FieldPath) -> Option<PodSpec> {
        let mut containers = None;
        let mut node_selector = Some(BTreeMap::new());
        let mut restart_policy = Some("Always".to_string());
        let mut termination_grace_period_seconds = Some(30);
        let mut volumes = Some(Vec::new());
        self.optional_fields(node, path, &POD_SPEC, |d, key, value, path| match key {
            "containers" => containers = Some(d.containers(value, &path)),
            "volumes" => volumes = d.volumes(value, &path),
            "nodeSelector" => node_selector = d.string_map(value, &path, StringMap::Labels),
            "restartPolicy" => {
                restart_policy = d.string(value, &path).filter(|policy| {
                    let ok = policy == "Always";
                    if !ok {
                        d.error(
                            &path,
                            format!(
                                "unsupported value {policy:?}: a Deployment's replicas \
                                     always restart, so only \"Always\" is supported"
                            ),
                        );
                    }
                    ok
                });
            }
            "terminationGracePeriodSeconds" => {
                termination_grace_period_seconds = d.count(value, &path, 0);
            }
            _ => {}
        })?;
        let containers = containers.unwrap_or_else(|| {
            self.error(&path.field("containers"), "missing required field");
            None
        });
        Some(PodSpec {
            containers: containers?,
            node_selector: node_selector?,
            restart_policy: restart_policy?,
            termination_grace_period_seconds: termination_grace_period_seconds?,
            volumes: volumes?,
        })
    }

    fn containers(&mut self, node: &Node, path: &FieldPath) -> Option<Vec<Container>> {
        let items = self.list(node, path)?;
        match items.len() {
            0 => self.error(path, "must have one container, found none"),
            1 => {}
            _ => self.error(
                path,
                "drover runs one container per replica; multi-container replicas are not \
                 supported yet",
            ),
        }
        let containers: Vec<Option<Container>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.container(item, &path.index(i)))
            .collect();
        let containers: Option<Vec<Container>> = containers.into_iter().collect();
        containers.filter(|c| c.len() == 1)
    }

    // ----- the container ------------------------------------------------

    fn container(&mut self, node: &Node, path: &FieldPath) -> Option<Container> {
        let mut name = None;
        let mut image = None;
        let mut pull_policy = Some(None);
        let mut command = Some(Vec::new());
        let mut args = Some(Vec::new());
        let mut env = Some(Vec::new());
        let mut env_from = Some(Vec::new());
        let mut volume_mounts = Some(Vec::new());
        let mut working_dir = Some(None);
        let mut ports = Some(Vec::new());
        let mut resources = Some(Resources::default());
        let mut liveness_probe = Some(None);
        let mut readiness_probe = Some(None);
        self.fields(node, path, &CONTAINER, |d, key, value, path| match key {
            "name" => {
                name = Some(d.string(value, &path).filter(|name| {
                    d.check(&path, name, "container name", names::dns1123_label(name))
                }));
            }
            "image" => image = Some(d.image(value, &path)),
            "imagePullPolicy" => {
                let policies = [
                    ("Always", PullPolicy::Always),
                    ("IfNotPresent", PullPolicy::IfNotPresent),
                    ("Never", PullPolicy::Never),
                ];
                pull_policy = d.one_of(value, &path, &policies).map(Some);
            }
            "command" => command = d.strings(value, &path),
            "args" => args = d.strings(value, &path),
            "env" => env = d.env(value, &path),
            "envFrom" => env_from = d.env_from(value, &path),
            "volumeMounts" => volume_mounts = d.volume_mounts(value, &path),
            "workingDir" => working_dir = d.string(value, &path).map(Some),
            "ports" => ports = d.ports(value, &path),
            "resources" => resources = d.resources(value, &path),
            "livenessProbe" => {
                liveness_probe = d.probe(value, &path, ProbeKind::Liveness);
            }
            "readinessProbe" => {
                readiness_probe = d.probe(value, &path, ProbeKind::Readiness);
            }
            _ => {}
        })?;
        let name = name.unwrap_or_else(|| {
            self.error(&path.field("name"), "missing required field");
            None
        });
        let image = image.unwrap_or_else(|| {
            self.error(&path.field("image"), "missing required field");
            None
        });
        let (image, floats) = image?;
        let image_pull_policy = pull_policy?.unwrap_or(if floats {
            PullPolicy::Always
        } else {
            PullPolicy::IfNotPresent
        });
        Some(Container {
            name: name?,
            image,
            image_pull_policy,
            command: command?,
            args: args?,
            env: env?,
            env_from: env_from?,
            volume_mounts: volume_mounts?,
            working_dir: working_dir?,
            ports: ports?,
            resources: resources?,
            liveness_probe: liveness_probe?,
            readiness_probe: readiness_probe?,
        })
    }

    /// The reference, and whether Kubernetes would pull it every time.
    fn image(&mut self, node: &Node, path: &FieldPath) -> Option<(String, bool)> {
        let reference = self.string(node, path)?;
        match image::parse(&reference) {
            Ok(parsed) => {
                let floats = parsed.floats();
                Some((reference, floats))
            }
            Err(reason) => {
                self.error(
                    path,
                    format!("invalid image reference {reference:?}: {reason}"),
                );
                None
            }
        }
    }

    fn env(&mut self, node: &Node, path: &FieldPath) -> Option<Vec<EnvVar>> {
        let items = self.list(node, path)?;
        let vars: Vec<Option<EnvVar>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.env_var(item, &path.index(i)))
            .collect();
        vars.into_iter().collect()
    }

    fn env_var(&mut self, node: &Node, path: &FieldPath) -> Option<EnvVar> {
        let mut name = None;
        let mut value = Some(String::new());
        let mut value_from = Some(None);
        self.fields(node, path, &ENV_VAR, |d, key, field, path| match key {
            "name" => {
                name = Some(d.string(field, &path).filter(|name| {
                    d.check(
                        &path,
                        name,
                        "environment variable name",
                        names::env_var_name(name),
                    )
                }));
            }
            "value" => value = d.string(field, &path),
            "valueFrom" => value_from = d.env_var_source(field, &path).map(Some),
            _ => {}
        })?;
        let name = name.unwrap_or_else(|| {
            self.error(&path.field("name"), "missing required field");
            None
        });
        if let (Some(value), Some(Some(_))) = (&value, &value_from) {
            if !value.is_empty() {
                self.error(
                    &path.field("valueFrom"),
                    "may not be specified when `value` is not empty",
                );
                return None;
            }
        }
        Some(EnvVar {
            name: name?,
            value: value?,
            value_from: value_from?,
        })
    }

    fn ports(&mut self, node: &Node, path: &FieldPath) -> Option<Vec<ContainerPort>> {
        let items = self.list(node, path)?;
        let ports: Vec<Option<ContainerPort>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.port(item, &path.index(i)))
            .collect();
        ports.into_iter().collect()
    }

    fn port(&mut self, node: &Node, path: &FieldPath) -> Option<ContainerPort> {
        let mut name = Some(None);
        let mut container_port = None;
        let mut host_port = Some(None);
        let mut protocol = Some(Protocol::Tcp);
        self.fields(node, path, &CONTAINER_PORT, |d, key, value, path| {
            match key {
                "name" => {
                    name = d
                        .string(value, &path)
                        .filter(|name| {
                            d.check(&path, name, "port name", names::iana_svc_name(name))
                        })
                        .map(Some);
                }
                "containerPort" => container_port = Some(d.port_number(value, &path)),
                // Kubernetes reads hostPort 0 as "no host port".
                "hostPort" => {
                    host_port = match value {
                        Node::Int(0) => Some(None),
                        _ => d.port_number(value, &path).map(Some),
                    };
                }
                "protocol" => {
                    let protocols = [
                        ("TCP", Protocol::Tcp),
                        ("UDP", Protocol::Udp),
                        ("SCTP", Protocol::Sctp),
                    ];
                    protocol = d.one_of(value, &path, &protocols);
                }
                _ => {}
            }
        })?;
        let container_port = container_port.unwrap_or_else(|| {
            self.error(&path.field("containerPort"), "missing required field");
            None
        });
        Some(ContainerPort {
            name: name?,
            container_port: container_port?,
            host_port: host_port?,
            protocol: protocol?,
        })
    }

    fn resources(&mut self, node: &Node, path: &FieldPath) -> Option<Resources> {
        let mut requests = Some(ResourceList::default());
        let mut limits = Some(ResourceList::default());
        self.fields(node, path, &RESOURCES, |d, key, value, path| match key {
            "requests" => requests = d.resource_list(value, &path),
            "limits" => limits = d.resource_list(value, &path),
            _ => {}
        })?;
        Some(Resources {
            requests: requests?,
            limits: limits?,
        })
    }

    fn resource_list(&mut self, node: &Node, path: &FieldPath) -> Option<ResourceList> {
        let mut list = ResourceList::default();
        let mut ok = true;
        for (key, value) in self.entries(node, path)? {
            let amount = match key {
                "cpu" => &mut list.cpu_millis,
                "memory" => &mut list.memory_bytes,
                _ => {
                    let message = format!(
                        "resource {key:?} is not supported by drover (only cpu and memory)"
                    );
                    self.field_problem(path, message);
                    continue;
                }
            };
            if matches!(value, Node::Null) {
                continue;
            }
            let path = path.field(key);
            let parse = if key == "cpu" {
                quantity::parse_cpu_millis
            } else {
                quantity::parse_memory_bytes
            };
            *amount = self.quantity(value, &path, parse);
            ok &= amount.is_some();
        }
        ok.then_some(list)
    }

    /// A quantity, written as a string (`"500m"`) or a YAML number (`0.5`).
    fn quantity(
        &mut self,
        node: &Node,
        path: &FieldPath,
        parse: fn(&str) -> Result<u64, quantity::QuantityError>,
    ) -> Option<u64> {
        let text = match node {
            Node::Str(s) => s.clone(),
            Node::Int(n) => n.to_string(),
            Node::UInt(n) => n.to_string(),
            Node::Float(f) => f.to_string(),
            _ => {
                self.error(
                    path,
                    format!(
                        "expected a quantity such as \"500m\" or \"64Mi\", found {}",
                        node.kind()
                    ),
                );
                return None;
            }
        };
        match parse(&text) {
            Ok(amount) => Some(amount),
            Err(quantity::QuantityError::Syntax) => {
                self.error(path, format!("invalid quantity {text:?}"));
                None
            }
            Err(reason) => {
                self.error(path, format!("invalid quantity {text:?}: {reason}"));
                None
            }
        }
    }

    // ----- probes -------------------------------------------------------

    /// `Some(None)`: the probe is dropped, its only handler unsupported (under `lenient`).
    fn probe(&mut self, node: &Node, path: &FieldPath, kind: ProbeKind) -> Option<Option<Probe>> {
        let mut handlers = Vec::new();
        let mut initial_delay_seconds = Some(0);
        let mut period_seconds = Some(10);
        let mut timeout_seconds = Some(1);
        let mut failure_threshold = Some(3);
        let mut success_threshold = Some(1);
        self.fields(node, path, &PROBE, |d, key, value, path| match key {
            "exec" => handlers.push(d.exec_action(value, &path)),
            "httpGet" => handlers.push(d.http_get(value, &path)),
            "tcpSocket" => handlers.push(d.tcp_socket(value, &path)),
            "initialDelaySeconds" => initial_delay_seconds = d.count(value, &path, 0),
            "periodSeconds" => period_seconds = d.count(value, &path, 1),
            "timeoutSeconds" => timeout_seconds = d.count(value, &path, 1),
            "failureThreshold" => failure_threshold = d.count(value, &path, 1),
            "successThreshold" => {
                success_threshold = d.count(value, &path, 1).filter(|&n| {
                    let ok = kind == ProbeKind::Readiness || n == 1;
                    if !ok {
                        d.error(&path, "must be 1 for a liveness probe");
                    }
                    ok
                });
            }
            _ => {}
        })?;
        // An unsupported grpc handler has been reported already, as an error
        // or, under `lenient`, as a warning: then the probe goes.
        let grpc = node.get("grpc").is_some_and(|g| !matches!(g, Node::Null));
        let handler = match handlers.len() {
            0 if grpc && self.opts.lenient => {
                self.warnings.push(Problem {
                    path: path.to_string(),
                    message: "probe ignored: drover has no grpc probes".to_string(),
                });
                return Some(None);
            }
            0 if grpc => None,
            0 => {
                self.error(path, "must specify one of exec, httpGet or tcpSocket");
                None
            }
            1 => handlers.pop().flatten(),
            _ => {
                self.error(path, "may specify only one of exec, httpGet or tcpSocket");
                None
            }
        };
        Some(Some(Probe {
            handler: handler?,
            initial_delay_seconds: initial_delay_seconds?,
            period_seconds: period_seconds?,
            timeout_seconds: timeout_seconds?,
            failure_threshold: failure_threshold?,
            success_threshold: success_threshold?,
        }))
    }

    fn exec_action(&mut self, node: &Node, path: &FieldPath) -> Option<ProbeHandler> {
        let mut command = None;
        self.fields(node, path, &EXEC_ACTION, |d, key, value, path| {
            if key == "command" {
                command = Some(d.strings(value, &path));
            }
        })?;
        let command = match command {
            Some(command) => command?,
            None => Vec::new(),
        };
        if command.is_empty() {
            self.error(&path.field("command"), "missing required field");
            return None;
        }
        Some(ProbeHandler::Exec { command })
    }

    fn http_get(&mut self, node: &Node, path: &FieldPath) -> Option<ProbeHandler> {
        let mut probe_path = Some("/".to_string());
        let mut port = None;
        let mut scheme = Some(HttpScheme::Http);
        let mut http_headers = Some(Vec::new());
        self.fields(node, path, &HTTP_GET, |d, key, value, path| match key {
            "path" => probe_path = d.string(value, &path),
            "port" => port = Some(d.port_ref(value, &path)),
            "scheme" => {
                let schemes = [("HTTP", HttpScheme::Http), ("HTTPS", HttpScheme::Https)];
                scheme = d.one_of(value, &path, &schemes);
            }
            "httpHeaders" => http_headers = d.http_headers(value, &path),
            _ => {}
        })?;
        let port = port.unwrap_or_else(|| {
            self.error(&path.field("port"), "missing required field");
            None
        });
        Some(ProbeHandler::HttpGet {
            path: probe_path?,
            port: port?,
            scheme: scheme?,
            http_headers: http_headers?,
        })
    }

    fn http_headers(&mut self, node: &Node, path: &FieldPath) -> Option<Vec<HttpHeader>> {
        let items = self.list(node, path)?;
        let headers: Vec<Option<HttpHeader>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.http_header(item, &path.index(i)))
            .collect();
        headers.into_iter().collect()
    }

    fn http_header(&mut self, node: &Node, path: &FieldPath) -> Option<HttpHeader> {
        let mut name = None;
        let mut value = Some(String::new());
        self.fields(node, path, &HTTP_HEADER, |d, key, field, path| match key {
            "name" => {
                name = Some(d.string(field, &path).filter(|name| {
                    d.check(&path, name, "header name", names::http_header_name(name))
                }));
            }
            "value" => value = d.string(field, &path),
            _ => {}
        })?;
        let name = name.unwrap_or_else(|| {
            self.error(&path.field("name"), "missing required field");
            None
        });
        Some(HttpHeader {
            name: name?,
            value: value?,
        })
    }

    fn tcp_socket(&mut self, node: &Node, path: &FieldPath) -> Option<ProbeHandler> {
        let mut port = None;
        self.fields(node, path, &TCP_SOCKET, |d, key, value, path| {
            if key == "port" {
                port = Some(d.port_ref(value, &path));
            }
        })?;
        let port = port.unwrap_or_else(|| {
            self.error(&path.field("port"), "missing required field");
            None
        });
        Some(ProbeHandler::TcpSocket { port: port? })
    }

    /// A probe port: a number, or the name of a container port (checked in `validate.rs`).
    fn port_ref(&mut self, node: &Node, path: &FieldPath) -> Option<PortRef> {
        let Node::Str(name) = node else {
            return self.port_number(node, path).map(PortRef::Number);
        };
        if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
            self.error(
                path,
                format!("invalid port {name:?}: a port number must not be quoted"),
            );
            return None;
        }
        self.check(path, name, "port name", names::iana_svc_name(name))
            .then(|| PortRef::Name(name.clone()))
    }
}
