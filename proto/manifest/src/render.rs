//! A stored [`Deployment`] back in Kubernetes' shape, for `droverctl get -o
//! yaml|json` and `diff`: `apiVersion`/`kind`, quantities as strings (`"250m"`,
//! `"64Mi"`), probes with their handler as a field (`httpGet: {...}`), the
//! strategy as `{type, rollingUpdate}`, and every default spelled out as
//! `kubectl get -o yaml` prints it. What this renders parses back to the same
//! Deployment.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::decode::{API_VERSION, KIND};
use super::quantity::{format_cpu_millis, format_memory_bytes};
use super::{
    Bytes, ClusterIp, ConfigMap, Container, Deployment, EnvFromRef, EnvVarSource, IntOrPercent,
    KeyRef, PortRef, Probe, ProbeHandler, ProjectedObject, ResourceList, Secret, Service,
    StorageMedium, Strategy, Volume, VolumeSource,
};

/// `d` as a Kubernetes `apps/v1` Deployment object.
pub fn render_kubernetes(d: &Deployment) -> Value {
    let spec = &d.spec;
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(d.metadata.name));
    metadata.insert("namespace".into(), json!(d.metadata.namespace));
    insert_map(&mut metadata, "labels", &d.metadata.labels);
    insert_map(&mut metadata, "annotations", &d.metadata.annotations);

    let mut template_metadata = Map::new();
    insert_map(
        &mut template_metadata,
        "labels",
        &spec.template.metadata.labels,
    );
    insert_map(
        &mut template_metadata,
        "annotations",
        &spec.template.metadata.annotations,
    );

    let pod = &spec.template.spec;
    let mut pod_spec = Map::new();
    pod_spec.insert(
        "containers".into(),
        pod.containers.iter().map(container).collect(),
    );
    insert_map(&mut pod_spec, "nodeSelector", &pod.node_selector);
    pod_spec.insert("restartPolicy".into(), json!(pod.restart_policy));
    pod_spec.insert(
        "terminationGracePeriodSeconds".into(),
        json!(pod.termination_grace_period_seconds),
    );
    if !pod.volumes.is_empty() {
        pod_spec.insert(
            "volumes".into(),
            pod.volumes.iter().map(render_volume).collect(),
        );
    }

    json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {
            "replicas": spec.replicas,
            "selector": { "matchLabels": spec.selector.match_labels },
            "minReadySeconds": spec.min_ready_seconds,
            "revisionHistoryLimit": spec.revision_history_limit,
            "progressDeadlineSeconds": spec.progress_deadline_seconds,
            "strategy": strategy(&spec.strategy),
            "template": { "metadata": template_metadata, "spec": pod_spec },
        },
    })
}

fn insert_map(object: &mut Map<String, Value>, key: &str, map: &BTreeMap<String, String>) {
    if !map.is_empty() {
        object.insert(key.into(), json!(map));
    }
}

fn strategy(strategy: &Strategy) -> Value {
    match strategy {
        Strategy::RollingUpdate {
            max_surge,
            max_unavailable,
        } => json!({
            "type": "RollingUpdate",
            "rollingUpdate": {
                "maxSurge": int_or_percent(*max_surge),
                "maxUnavailable": int_or_percent(*max_unavailable),
            },
        }),
        Strategy::Recreate => json!({ "type": "Recreate" }),
    }
}

fn int_or_percent(value: IntOrPercent) -> Value {
    match value {
        IntOrPercent::Int(n) => json!(n),
        IntOrPercent::Percent(p) => json!(format!("{p}%")),
    }
}

fn container(c: &Container) -> Value {
    let mut out = Map::new();
    out.insert("name".into(), json!(c.name));
    out.insert("image".into(), json!(c.image));
    out.insert(
        "imagePullPolicy".into(),
        json!(c.image_pull_policy.as_str()),
    );
    if !c.command.is_empty() {
        out.insert("command".into(), json!(c.command));
    }
    if !c.args.is_empty() {
        out.insert("args".into(), json!(c.args));
    }
    if !c.env.is_empty() {
        let env = c
            .env
            .iter()
            .map(|var| {
                let mut entry = Map::new();
                entry.insert("name".into(), json!(var.name));
                if !var.value.is_empty() {
                    entry.insert("value".into(), json!(var.value));
                }
                if let Some(source) = &var.value_from {
                    entry.insert("valueFrom".into(), env_var_source(source));
                }
                Value::Object(entry)
            })
            .collect();
        out.insert("env".into(), env);
    }
    if !c.env_from.is_empty() {
        let env_from = c
            .env_from
            .iter()
            .map(|source| {
                let mut entry = Map::new();
                if !source.prefix.is_empty() {
                    entry.insert("prefix".into(), json!(source.prefix));
                }
                let (field, reference) = match &source.source {
                    EnvFromRef::ConfigMapRef(r) => ("configMapRef", r),
                    EnvFromRef::SecretRef(r) => ("secretRef", r),
                };
                let mut r = Map::new();
                r.insert("name".into(), json!(reference.name));
                if reference.optional {
                    r.insert("optional".into(), json!(true));
                }
                entry.insert(field.into(), Value::Object(r));
                Value::Object(entry)
            })
            .collect();
        out.insert("envFrom".into(), env_from);
    }
    if !c.volume_mounts.is_empty() {
        let mounts = c
            .volume_mounts
            .iter()
            .map(|m| {
                let mut entry = Map::new();
                entry.insert("name".into(), json!(m.name));
                entry.insert("mountPath".into(), json!(m.mount_path));
                if m.read_only {
                    entry.insert("readOnly".into(), json!(true));
                }
                if !m.sub_path.is_empty() {
                    entry.insert("subPath".into(), json!(m.sub_path));
                }
                Value::Object(entry)
            })
            .collect();
        out.insert("volumeMounts".into(), mounts);
    }
    if let Some(dir) = &c.working_dir {
        out.insert("workingDir".into(), json!(dir));
    }
    if !c.ports.is_empty() {
        let ports = c
            .ports
            .iter()
            .map(|port| {
                let mut entry = Map::new();
                if let Some(name) = &port.name {
                    entry.insert("name".into(), json!(name));
                }
                entry.insert("containerPort".into(), json!(port.container_port));
                if let Some(host_port) = port.host_port {
                    entry.insert("hostPort".into(), json!(host_port));
                }
                entry.insert("protocol".into(), json!(port.protocol.as_str()));
                Value::Object(entry)
            })
            .collect();
        out.insert("ports".into(), ports);
    }
    let mut resources = Map::new();
    for (key, list) in [
        ("requests", &c.resources.requests),
        ("limits", &c.resources.limits),
    ] {
        if let Some(rendered) = resource_list(list) {
            resources.insert(key.into(), rendered);
        }
    }
    out.insert("resources".into(), Value::Object(resources));
    if let Some(probe) = &c.liveness_probe {
        out.insert("livenessProbe".into(), render_probe(probe));
    }
    if let Some(probe) = &c.readiness_probe {
        out.insert("readinessProbe".into(), render_probe(probe));
    }
    Value::Object(out)
}

fn resource_list(list: &ResourceList) -> Option<Value> {
    let mut out = Map::new();
    if let Some(millis) = list.cpu_millis {
        out.insert("cpu".into(), json!(format_cpu_millis(millis)));
    }
    if let Some(bytes) = list.memory_bytes {
        out.insert("memory".into(), json!(format_memory_bytes(bytes)));
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

fn render_probe(probe: &Probe) -> Value {
    let (handler, action) = match &probe.handler {
        ProbeHandler::Exec { command } => ("exec", json!({ "command": command })),
        ProbeHandler::HttpGet {
            path,
            port,
            scheme,
            http_headers,
        } => {
            let mut action = Map::new();
            action.insert("path".into(), json!(path));
            action.insert("port".into(), port_ref(port));
            action.insert("scheme".into(), json!(scheme.as_str()));
            if !http_headers.is_empty() {
                let headers = http_headers
                    .iter()
                    .map(|h| json!({ "name": h.name, "value": h.value }))
                    .collect();
                action.insert("httpHeaders".into(), headers);
            }
            ("httpGet", Value::Object(action))
        }
        ProbeHandler::TcpSocket { port } => ("tcpSocket", json!({ "port": port_ref(port) })),
    };
    let mut out = Map::new();
    out.insert(handler.into(), action);
    out.insert(
        "initialDelaySeconds".into(),
        json!(probe.initial_delay_seconds),
    );
    out.insert("periodSeconds".into(), json!(probe.period_seconds));
    out.insert("timeoutSeconds".into(), json!(probe.timeout_seconds));
    out.insert("failureThreshold".into(), json!(probe.failure_threshold));
    out.insert("successThreshold".into(), json!(probe.success_threshold));
    Value::Object(out)
}

fn port_ref(port: &PortRef) -> Value {
    match port {
        PortRef::Number(n) => json!(n),
        PortRef::Name(name) => json!(name),
    }
}

fn key_ref(r: &KeyRef) -> Value {
    let mut out = Map::new();
    out.insert("name".into(), json!(r.name));
    out.insert("key".into(), json!(r.key));
    if r.optional {
        out.insert("optional".into(), json!(true));
    }
    Value::Object(out)
}

fn env_var_source(source: &EnvVarSource) -> Value {
    match source {
        EnvVarSource::ConfigMapKeyRef(r) => json!({ "configMapKeyRef": key_ref(r) }),
        EnvVarSource::SecretKeyRef(r) => json!({ "secretKeyRef": key_ref(r) }),
        EnvVarSource::FieldRef { field_path } => {
            json!({ "fieldRef": { "apiVersion": "v1", "fieldPath": field_path.as_str() } })
        }
    }
}

fn render_volume(v: &Volume) -> Value {
    let mut out = Map::new();
    out.insert("name".into(), json!(v.name));
    let (field, source) = match &v.source {
        VolumeSource::EmptyDir {
            medium,
            size_limit_bytes,
        } => {
            let mut e = Map::new();
            if *medium == StorageMedium::Memory {
                e.insert("medium".into(), json!("Memory"));
            }
            if let Some(bytes) = size_limit_bytes {
                e.insert("sizeLimit".into(), json!(format_memory_bytes(*bytes)));
            }
            ("emptyDir", Value::Object(e))
        }
        VolumeSource::HostPath { path, kind } => {
            ("hostPath", json!({ "path": path, "type": kind.as_str() }))
        }
        VolumeSource::ConfigMap(p) => ("configMap", projected(p, "name")),
        VolumeSource::Secret(p) => ("secret", projected(p, "secretName")),
    };
    out.insert(field.into(), source);
    Value::Object(out)
}

fn projected(p: &ProjectedObject, name_field: &str) -> Value {
    let mut out = Map::new();
    out.insert(name_field.into(), json!(p.name));
    if !p.items.is_empty() {
        let items = p
            .items
            .iter()
            .map(|item| {
                let mut entry = Map::new();
                entry.insert("key".into(), json!(item.key));
                entry.insert("path".into(), json!(item.path));
                if let Some(mode) = item.mode {
                    entry.insert("mode".into(), json!(mode));
                }
                Value::Object(entry)
            })
            .collect();
        out.insert("items".into(), items);
    }
    // Decimal, as `kubectl get -o yaml` prints it (420 is 0644).
    out.insert("defaultMode".into(), json!(p.default_mode));
    if p.optional {
        out.insert("optional".into(), json!(true));
    }
    Value::Object(out)
}

fn core_metadata(meta: &super::ObjectMeta) -> Map<String, Value> {
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(meta.name));
    metadata.insert("namespace".into(), json!(meta.namespace));
    insert_map(&mut metadata, "labels", &meta.labels);
    insert_map(&mut metadata, "annotations", &meta.annotations);
    metadata
}

/// `c` as a Kubernetes `v1` ConfigMap (`binaryData` base64).
pub fn render_config_map(c: &ConfigMap) -> Value {
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!("v1"));
    out.insert("kind".into(), json!("ConfigMap"));
    out.insert("metadata".into(), Value::Object(core_metadata(&c.metadata)));
    if !c.data.is_empty() {
        out.insert("data".into(), json!(c.data));
    }
    if !c.binary_data.is_empty() {
        out.insert("binaryData".into(), base64_map(&c.binary_data));
    }
    if c.immutable {
        out.insert("immutable".into(), json!(true));
    }
    Value::Object(out)
}

/// `s` as a Kubernetes `v1` Secret, `data` base64-encoded as kubectl shows
/// it. `mask` replaces every value with `***` (a Secret's diff).
pub fn render_secret(s: &Secret, mask: bool) -> Value {
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!("v1"));
    out.insert("kind".into(), json!("Secret"));
    out.insert("metadata".into(), Value::Object(core_metadata(&s.metadata)));
    out.insert("type".into(), json!(s.kind));
    if !s.data.is_empty() {
        let data = if mask {
            s.data
                .keys()
                .map(|k| (k.clone(), json!("***")))
                .collect::<Map<String, Value>>()
                .into()
        } else {
            base64_map(&s.data)
        };
        out.insert("data".into(), data);
    }
    if s.immutable {
        out.insert("immutable".into(), json!(true));
    }
    Value::Object(out)
}

fn base64_map(map: &BTreeMap<String, Bytes>) -> Value {
    map.iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect::<Map<String, Value>>()
        .into()
}

/// `s` as a Kubernetes `v1` Service, with what the controller allocated
/// filled in as the API server would: `clusterIP` (`None` when headless)
/// and each port's `nodePort` (`node_ports[i]`, 0 for none). The result
/// re-applies unchanged.
pub fn render_service(
    s: &Service,
    cluster_ip: Option<std::net::Ipv4Addr>,
    node_ports: &[u16],
) -> Value {
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!("v1"));
    out.insert("kind".into(), json!("Service"));
    out.insert("metadata".into(), Value::Object(core_metadata(&s.metadata)));
    let mut spec = Map::new();
    spec.insert("type".into(), json!(s.spec.kind.as_str()));
    spec.insert("selector".into(), json!(s.spec.selector));
    let cluster_ip = match (s.spec.cluster_ip, cluster_ip) {
        (ClusterIp::Headless, _) => "None".to_string(),
        (_, Some(ip)) => ip.to_string(),
        (ClusterIp::Address(ip), None) => ip.to_string(),
        (ClusterIp::Allocate, None) => String::new(),
    };
    spec.insert("clusterIP".into(), json!(cluster_ip));
    let ports: Vec<Value> = s
        .spec
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut port = Map::new();
            if let Some(name) = &p.name {
                port.insert("name".into(), json!(name));
            }
            port.insert("protocol".into(), json!(p.protocol.as_str()));
            port.insert("port".into(), json!(p.port));
            port.insert(
                "targetPort".into(),
                match &p.target_port {
                    PortRef::Number(n) => json!(n),
                    PortRef::Name(name) => json!(name),
                },
            );
            if let Some(n) = node_ports
                .get(i)
                .copied()
                .filter(|n| *n != 0)
                .or(p.node_port)
            {
                port.insert("nodePort".into(), json!(n));
            }
            Value::Object(port)
        })
        .collect();
    spec.insert("ports".into(), Value::Array(ports));
    spec.insert("sessionAffinity".into(), json!("None"));
    out.insert("spec".into(), Value::Object(spec));
    Value::Object(out)
}
