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
    Container, Deployment, IntOrPercent, PortRef, Probe, ProbeHandler, ResourceList, Strategy,
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
                Value::Object(entry)
            })
            .collect();
        out.insert("env".into(), env);
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
