//! drover's manifest library: Kubernetes `apps/v1` Deployment, `v1` Service,
//! `v1` ConfigMap and `v1` Secret manifests, the subset drover supports — decoding,
//! validation and rendering.
//!
//! droverctl runs it for early errors; the controller runs it again as the
//! authority. **What it may depend on:** `drover-proto` (the name, quantity
//! and image grammars) and serde; no I/O of its own (callers read the files
//! and pass their text), no PKI, no networking.
//!
//! ```text
//!  files ──split──▶ documents ──strict decode──▶ Deployment ──validate──▶ Parsed
//!                                                ConfigMap, Secret
//!   (name, text)    (index, YAML)  (field paths,     (defaults)   (k8s rules)
//!                                   unknown keys)
//! ```
//!
//! - `document.rs`: YAML text → one `Node` tree per document
//!   (duplicate keys kept, merge keys applied, bounded against alias bombs);
//! - `decode.rs`: strict decoding with field paths, defaults and per-field rules
//!   (the name, image and [`quantity`] grammars of `drover_proto`), against
//!   the field lists of `schema.rs`; `decode/config.rs` for ConfigMaps,
//!   Secrets, volumes and env from them (a Secret's values never appear in
//!   an error), `decode/service.rs` for Services;
//! - `validate.rs`: the rules that relate several fields;
//! - `render.rs`: back to Kubernetes' shape ([`render_kubernetes`]).
//!
//! Every error names the file, the document index and the field path, e.g.
//! `web.yaml[1]: spec.template.spec.containers[0].resources.limits.memory:
//! invalid quantity "12XB"`. Parsing is all or nothing: one bad document fails
//! the whole call.

mod decode;
mod document;
mod explain;
mod model;
mod path;
mod render;
mod schema;
mod validate;

use std::collections::HashMap;

pub use decode::service_env;
/// Resource quantities live in the shared model; re-exported so manifest users
/// find them next to the fields they fill.
pub use drover_proto::quantity;
pub use drover_proto::quantity::{format_cpu_millis, format_memory_bytes};
pub use explain::{explain, Explained};
pub use model::*;
pub use render::{render_config_map, render_kubernetes, render_secret, render_service};

use decode::{decode_document, Problem};
use document::{check_flow_cost, Documents};

/// Errors one call reports at most; past this the input is garbage, and
/// listing every problem of a 4 MiB file would only bury the first ones.
pub const MAX_ERRORS: usize = 1000;

/// How strictly to parse.
#[derive(Debug, Clone)]
pub struct ParseOptions {
    /// `--validate=false`: unknown or unsupported fields become warnings.
    pub lenient: bool,
    /// Skip documents whose kind is not Deployment, with one warning each.
    pub skip_unsupported_kinds: bool,
    /// Largest `spec.replicas` accepted.
    pub max_replicas: u32,
    /// The namespace of objects whose manifest names none (`-n`, else the
    /// context's); `None` means "default".
    pub namespace: Option<String>,
    /// The namespace came from `-n`: a manifest that names another one is
    /// refused, as kubectl does. A context's namespace is only a default.
    pub enforce_namespace: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            lenient: false,
            skip_unsupported_kinds: false,
            max_replicas: DEFAULT_MAX_REPLICAS,
            namespace: None,
            enforce_namespace: false,
        }
    }
}

/// Default cap on `spec.replicas`.
pub const DEFAULT_MAX_REPLICAS: u32 = 10_000;

/// One problem in one place: `web.yaml[1]: spec.replicas: must be ≥ 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file as the user named it ("web.yaml", "-" for stdin).
    pub file: String,
    /// Index of the YAML document in the file (0-based), when the error is in one.
    pub document: Option<usize>,
    /// Field path like `spec.template.spec.containers[0].image`; empty for the whole document.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(doc) = self.document {
            write!(f, "[{doc}]")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every error found in one parse, in file and document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl std::fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

/// The result of a successful parse.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    pub deployments: Vec<Deployment>,
    pub config_maps: Vec<ConfigMap>,
    pub secrets: Vec<Secret>,
    pub services: Vec<Service>,
    /// One line each: skipped kinds, unknown fields under `lenient`.
    pub warnings: Vec<String>,
}

/// Parse and validate every document of every file, all or nothing.
///
/// `files` are `(name, content)` pairs. Also refuses the same namespace/name
/// twice across the documents of one call, and a file larger than
/// [`drover_proto::MAX_REQUEST_BYTES`]. Reports at most [`MAX_ERRORS`] errors.
///
/// Document indices count every document of the file from 0 in the order
/// they appear, including the empty ones that are skipped: in `"a\n---\n---\nb"`
/// the documents are `[0]` a, `[1]` empty, `[2]` b. A `---` on the first line
/// opens document 0, it does not end an empty one.
pub fn parse_files(
    files: &[(String, String)],
    opts: &ParseOptions,
) -> Result<Parsed, ManifestErrors> {
    let mut errors = Vec::new();
    if let Some(ns) = &opts.namespace {
        if let Err(reason) = drover_proto::names::dns1123_label(ns) {
            errors.push(ManifestError {
                file: "--namespace".into(),
                document: None,
                path: String::new(),
                message: format!("invalid namespace {ns:?}: {reason}"),
            });
            return Err(ManifestErrors(errors));
        }
    }
    let mut parsed = Parsed::default();
    // kind/namespace/name → where it was first defined.
    let mut defined: HashMap<(&'static str, String, String), (String, usize)> = HashMap::new();
    for (file, text) in files {
        if text.len() > drover_proto::MAX_REQUEST_BYTES {
            errors.push(ManifestError {
                file: file.clone(),
                document: None,
                path: String::new(),
                message: format!(
                    "file is {} bytes, more than the {}-byte limit for one apply",
                    text.len(),
                    drover_proto::MAX_REQUEST_BYTES
                ),
            });
            continue;
        }
        if let Err(message) = check_flow_cost(text) {
            errors.push(ManifestError {
                file: file.clone(),
                document: None,
                path: String::new(),
                message,
            });
            continue;
        }
        let at = |index: usize, problem: Problem| ManifestError {
            file: file.clone(),
            document: Some(index),
            path: problem.path,
            message: problem.message,
        };
        for (index, document) in Documents::new(text).enumerate() {
            if errors.len() >= MAX_ERRORS {
                return Err(too_many(errors, file, index));
            }
            let node = match document {
                Ok(Some(node)) => node,
                Ok(None) => continue,
                Err(message) => {
                    errors.push(at(
                        index,
                        Problem {
                            path: String::new(),
                            message: format!("invalid YAML: {message}"),
                        },
                    ));
                    continue;
                }
            };
            let objects = match list_items(&node) {
                Ok(objects) => objects,
                Err(problem) => {
                    errors.push(at(index, problem));
                    continue;
                }
            };
            for (prefix, node) in objects {
                let at = |p: Problem| at(index, p.under(&prefix));
                let report = decode_document(node, opts);
                errors.extend(report.errors.into_iter().map(at));
                parsed
                    .warnings
                    .extend(report.warnings.into_iter().map(|p| at(p).to_string()));
                let Some(object) = report.object else {
                    continue;
                };
                let problems = match &object {
                    Object::Deployment(d) => validate::validate(d),
                    Object::ConfigMap(_) | Object::Secret(_) | Object::Service(_) => Vec::new(),
                };
                if !problems.is_empty() {
                    errors.extend(problems.into_iter().map(at));
                    continue;
                }
                let meta = object.metadata();
                let id = (object.kind(), meta.namespace.clone(), meta.name.clone());
                if let Some((first_file, first_index)) = defined.get(&id) {
                    errors.push(at(Problem {
                        path: "metadata.name".to_string(),
                        message: format!(
                            "{} \"{}/{}\" is already defined in {first_file}[{first_index}]",
                            id.0, id.1, id.2
                        ),
                    }));
                    continue;
                }
                defined.insert(id, (file.clone(), index));
                match object {
                    Object::Deployment(d) => parsed.deployments.push(*d),
                    Object::ConfigMap(c) => parsed.config_maps.push(c),
                    Object::Secret(s) => parsed.secrets.push(s),
                    Object::Service(s) => parsed.services.push(s),
                }
            }
        }
    }
    if let Some(first_dropped) = errors.get(MAX_ERRORS) {
        let (file, index) = (first_dropped.file.clone(), first_dropped.document);
        return Err(too_many(errors, &file, index.unwrap_or_default()));
    }
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(ManifestErrors(errors))
    }
}

/// The objects of one document: the document itself, or, for kubectl's
/// `kind: List` (what `get -o yaml` prints for several objects), each of its
/// `items`, with the path prefix (`items[2]`) their errors are reported under.
fn list_items(node: &document::Node) -> Result<Vec<(String, &document::Node)>, Problem> {
    use document::Node;
    if node.get("kind").and_then(Node::as_str) != Some("List") {
        return Ok(vec![(String::new(), node)]);
    }
    let Node::Map(entries) = node else {
        return Ok(vec![(String::new(), node)]);
    };
    let mut items = Vec::new();
    for (key, value) in entries {
        match key.as_str() {
            Some("kind") => {}
            // Server-set list metadata (resourceVersion) means nothing here.
            Some("metadata") => {}
            Some("apiVersion") => {
                if value.as_str() != Some("v1") {
                    return Err(Problem {
                        path: "apiVersion".into(),
                        message: "a List must have apiVersion: v1".into(),
                    });
                }
            }
            Some("items") => match value {
                Node::Seq(list) => items.extend(
                    list.iter()
                        .enumerate()
                        .map(|(i, item)| (format!("items[{i}]"), item)),
                ),
                Node::Null => {}
                other => {
                    return Err(Problem {
                        path: "items".into(),
                        message: format!("expected a list of objects, found {}", other.kind()),
                    })
                }
            },
            Some(other) => {
                return Err(Problem {
                    path: other.to_string(),
                    message:
                        "unknown field in a List (it holds apiVersion, kind, metadata and items)"
                            .into(),
                })
            }
            None => {
                return Err(Problem {
                    path: String::new(),
                    message: format!("a mapping key must be a string, found {}", key.kind()),
                })
            }
        }
    }
    Ok(items)
}

/// The first [`MAX_ERRORS`] errors and a line saying where parsing stopped.
fn too_many(mut errors: Vec<ManifestError>, file: &str, document: usize) -> ManifestErrors {
    errors.truncate(MAX_ERRORS);
    errors.push(ManifestError {
        file: file.to_string(),
        document: Some(document),
        path: String::new(),
        message: format!("stopped after {MAX_ERRORS} errors"),
    });
    ManifestErrors(errors)
}
