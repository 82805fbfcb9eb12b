//! The Control API's ConfigMap and Secret calls, and their part of an
//! apply. `ListSecrets` answers key names and sizes only, so viewers can
//! see what a Secret holds without its values; `RevealSecrets` (admins
//! only: its name is no read verb to the authorization layer) answers the
//! values, base64 in the JSON as `kubectl get -o yaml` shows them.

use tonic::Status;

use drover_manifest::{ConfigMap, Secret};
use drover_proto::selector::Selector;
use drover_proto::{names, pb};

use crate::cluster::{write_error, Cluster};
use crate::store::config_objects::{ConfigKind, ConfigResult, StoredConfigMap, StoredSecret};
use crate::store::{ApplyOutcome, Command, ObjectRef, Write, WriteResult};

/// `ApplyResult` for one applied ConfigMap or Secret.
pub(super) fn result_pb(
    (kind, r, outcome, generation): ConfigResult,
    outcome_pb: fn(ApplyOutcome) -> pb::ApplyOutcome,
) -> pb::ApplyResult {
    pb::ApplyResult {
        namespace: r.namespace,
        name: r.name,
        outcome: outcome_pb(outcome) as i32,
        generation,
        kind: kind.as_str().to_string(),
    }
}

/// What an apply of these objects would do, as `--dry-run=server` reports
/// it; an immutable object that would change is refused as the apply would be.
pub(super) fn dry_run(
    cluster: &Cluster,
    config_maps: &[ConfigMap],
    secrets: &[Secret],
) -> Result<Vec<ConfigResult>, Status> {
    let mut out = Vec::new();
    let immutable = |kind: ConfigKind, m: &drover_manifest::ObjectMeta| {
        write_error(crate::store::WriteError::Immutable {
            kind: kind.as_str().to_string(),
            namespace: m.namespace.clone(),
            name: m.name.clone(),
        })
    };
    let stored_maps = cluster.store.config_maps(None);
    for c in config_maps {
        let m = &c.metadata;
        let old = stored_maps.iter().find(|s| {
            s.config_map.metadata.namespace == m.namespace && s.config_map.metadata.name == m.name
        });
        let (outcome, generation) = match old {
            None => (ApplyOutcome::Created, 1),
            Some(o) if o.config_map == *c => (ApplyOutcome::Unchanged, o.generation),
            Some(o)
                if o.config_map.immutable
                    && (o.config_map.data != c.data
                        || o.config_map.binary_data != c.binary_data
                        || !c.immutable) =>
            {
                return Err(immutable(ConfigKind::ConfigMap, m))
            }
            Some(o) => (ApplyOutcome::Configured, o.generation + 1),
        };
        out.push((ConfigKind::ConfigMap, reference(m), outcome, generation));
    }
    let stored_secrets = cluster.store.secrets(None);
    for s in secrets {
        let m = &s.metadata;
        let old = stored_secrets.iter().find(|o| {
            o.secret.metadata.namespace == m.namespace && o.secret.metadata.name == m.name
        });
        let (outcome, generation) = match old {
            None => (ApplyOutcome::Created, 1),
            Some(o) if o.secret == *s => (ApplyOutcome::Unchanged, o.generation),
            Some(o)
                if o.secret.immutable
                    && (o.secret.data != s.data || o.secret.kind != s.kind || !s.immutable) =>
            {
                return Err(immutable(ConfigKind::Secret, m))
            }
            Some(o) => (ApplyOutcome::Configured, o.generation + 1),
        };
        out.push((ConfigKind::Secret, reference(m), outcome, generation));
    }
    Ok(out)
}

fn reference(m: &drover_manifest::ObjectMeta) -> ObjectRef {
    ObjectRef {
        namespace: m.namespace.clone(),
        name: m.name.clone(),
    }
}

/// Which objects a list asks for.
pub(super) struct Filter {
    pub(super) namespace: Option<String>,
    names: Vec<String>,
    labels: Option<Selector>,
}

impl Filter {
    pub(super) fn new(req: &pb::ListConfigRequest) -> Result<Filter, Status> {
        let namespace = (!req.namespace.is_empty()).then(|| req.namespace.clone());
        if let Some(ns) = &namespace {
            names::dns1123_label(ns)
                .map_err(|e| Status::invalid_argument(format!("invalid namespace {ns:?}: {e}")))?;
        }
        for name in &req.names {
            names::dns1123_subdomain(name)
                .map_err(|e| Status::invalid_argument(format!("invalid name {name:?}: {e}")))?;
        }
        let labels = if req.label_selector.is_empty() {
            None
        } else {
            Some(
                Selector::parse_labels(&req.label_selector)
                    .map_err(|e| Status::invalid_argument(format!("invalid -l: {e}")))?,
            )
        };
        Ok(Filter {
            namespace,
            names: req.names.clone(),
            labels,
        })
    }

    pub(super) fn keeps(&self, m: &drover_manifest::ObjectMeta) -> bool {
        (self.names.is_empty() || self.names.contains(&m.name))
            && self
                .labels
                .as_ref()
                .is_none_or(|l| l.matches_labels(&m.labels))
    }
}

/// `ListConfigMaps`.
pub(super) async fn list_config_maps(
    cluster: &Cluster,
    req: pb::ListConfigRequest,
) -> Result<pb::ListConfigResponse, Status> {
    cluster.read_barrier(req.read.as_ref()).await?;
    let filter = Filter::new(&req)?;
    let (applied_index, _) = cluster.store.applied();
    let objects = cluster
        .store
        .config_maps(filter.namespace.as_deref())
        .into_iter()
        .filter(|c| filter.keeps(&c.config_map.metadata))
        .map(config_map_pb)
        .collect();
    // One page, whatever `limit` says (the Kubernetes contract allows it).
    Ok(pb::ListConfigResponse {
        objects,
        applied_index,
        continue_token: String::new(),
    })
}

/// `ListSecrets` (`reveal` false: no values) and `RevealSecrets`.
pub(super) async fn list_secrets(
    cluster: &Cluster,
    req: pb::ListConfigRequest,
    reveal: bool,
) -> Result<pb::ListConfigResponse, Status> {
    cluster.read_barrier(req.read.as_ref()).await?;
    let filter = Filter::new(&req)?;
    let (applied_index, _) = cluster.store.applied();
    let objects = cluster
        .store
        .secrets(filter.namespace.as_deref())
        .into_iter()
        .filter(|s| filter.keeps(&s.secret.metadata))
        .map(|s| secret_pb(s, reveal))
        .collect();
    // One page, whatever `limit` says (the Kubernetes contract allows it).
    Ok(pb::ListConfigResponse {
        objects,
        applied_index,
        continue_token: String::new(),
    })
}

pub(super) fn config_map_pb(c: StoredConfigMap) -> pb::ConfigRecord {
    let sizes = c
        .config_map
        .files()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.len() as u64))
        .collect();
    pb::ConfigRecord {
        namespace: c.config_map.metadata.namespace.clone(),
        name: c.config_map.metadata.name.clone(),
        json: serde_json::to_string(&c.config_map).unwrap_or_default(),
        generation: c.generation,
        created_unix_ms: c.created_unix_ms,
        updated_unix_ms: c.updated_unix_ms,
        sizes,
    }
}

pub(super) fn secret_pb(s: StoredSecret, reveal: bool) -> pb::ConfigRecord {
    let sizes = s
        .secret
        .data
        .iter()
        .map(|(k, v)| (k.clone(), v.0.len() as u64))
        .collect();
    let mut secret = s.secret;
    if !reveal {
        secret.data.clear();
    }
    pb::ConfigRecord {
        namespace: secret.metadata.namespace.clone(),
        name: secret.metadata.name.clone(),
        json: serde_json::to_string(&secret).unwrap_or_default(),
        generation: s.generation,
        created_unix_ms: s.created_unix_ms,
        updated_unix_ms: s.updated_unix_ms,
        sizes,
    }
}

/// `DeleteConfigObjects`.
pub(super) async fn delete(
    cluster: &Cluster,
    req: pb::DeleteConfigRequest,
) -> Result<pb::DeleteConfigResponse, Status> {
    let kind = match req.kind() {
        pb::ConfigKind::ConfigMap => ConfigKind::ConfigMap,
        pb::ConfigKind::Secret => ConfigKind::Secret,
        pb::ConfigKind::Unspecified => {
            return Err(Status::invalid_argument(
                "say which kind to delete: ConfigMap or Secret",
            ))
        }
    };
    let ignore_not_found = req.ignore_not_found;
    let refs = refs_to_delete(req, "", names::dns1123_subdomain)?;
    let command = Command::DeleteConfig {
        kind,
        refs,
        ignore_not_found,
    };
    write_delete(cluster, command).await
}

/// The objects a delete request names, in its namespace ("" = default),
/// each name checked with `check`; `what` names the kind in the refusal
/// ("Service ", or "" for a generic "name").
pub(super) fn refs_to_delete(
    req: pb::DeleteConfigRequest,
    what: &str,
    check: fn(&str) -> Result<(), String>,
) -> Result<Vec<ObjectRef>, Status> {
    let namespace = if req.namespace.is_empty() {
        "default".to_string()
    } else {
        req.namespace
    };
    names::dns1123_label(&namespace)
        .map_err(|e| Status::invalid_argument(format!("invalid namespace {namespace:?}: {e}")))?;
    if req.names.is_empty() {
        return Err(Status::invalid_argument(format!(
            "no {what}names given to delete"
        )));
    }
    for name in &req.names {
        check(name)
            .map_err(|e| Status::invalid_argument(format!("invalid {what}name {name:?}: {e}")))?;
    }
    Ok(req
        .names
        .into_iter()
        .map(|name| ObjectRef {
            namespace: namespace.clone(),
            name,
        })
        .collect())
}

/// Commit a delete command; answer the names it deleted.
pub(super) async fn write_delete(
    cluster: &Cluster,
    command: Command,
) -> Result<pb::DeleteConfigResponse, Status> {
    match cluster.write(Write::Command(command)).await? {
        WriteResult::Deleted(refs) => Ok(pb::DeleteConfigResponse {
            deleted: refs.into_iter().map(|r| r.name).collect(),
        }),
        other => Err(Status::internal(format!(
            "unexpected result of a delete: {other:?}"
        ))),
    }
}
