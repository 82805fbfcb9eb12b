//! Kubernetes' rules that relate several fields of a Deployment, checked once
//! every field has decoded on its own (so one mistake is not reported twice):
//!
//! - `spec.selector.matchLabels` must select the template's labels;
//! - a container's ports are unique by containerPort/protocol, by
//!   hostPort/protocol and by name;
//! - a probe's named port is one of the container's port names;
//! - a resource request is at most its limit.

use std::collections::HashMap;

use super::decode::Problem;
use super::path::FieldPath;
use super::quantity::{format_cpu_millis, format_memory_bytes};
use super::{Container, Deployment, PortRef, Probe, ProbeHandler};

/// Every cross-field problem of `deployment`, in field order.
pub(crate) fn validate(deployment: &Deployment) -> Vec<Problem> {
    let mut problems = Vec::new();
    let spec = FieldPath::root().field("spec");
    let template_labels = &deployment.spec.template.metadata.labels;
    let missing: Vec<String> = deployment
        .spec
        .selector
        .match_labels
        .iter()
        .filter(|(key, value)| template_labels.get(*key) != Some(*value))
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    if !missing.is_empty() {
        problems.push(Problem {
            path: spec.field("selector").to_string(),
            message: format!(
                "selector does not match template labels (spec.template.metadata.labels \
                 lacks {})",
                missing.join(", ")
            ),
        });
    }
    let containers = spec.field("template").field("spec").field("containers");
    for (i, container) in deployment.spec.template.spec.containers.iter().enumerate() {
        validate_container(container, &containers.index(i), &mut problems);
    }
    problems
}

fn validate_container(container: &Container, path: &FieldPath, problems: &mut Vec<Problem>) {
    let mut report = |path: FieldPath, message: String| {
        problems.push(Problem {
            path: path.to_string(),
            message,
        })
    };

    let ports = path.field("ports");
    let mut container_ports = HashMap::new();
    let mut host_ports = HashMap::new();
    let mut names = HashMap::new();
    for (i, port) in container.ports.iter().enumerate() {
        let path = ports.index(i);
        let protocol = port.protocol.as_str();
        if let Some(first) = container_ports.insert((port.container_port, port.protocol), i) {
            report(
                path.field("containerPort"),
                format!(
                    "duplicate port {}/{protocol} (also ports[{first}])",
                    port.container_port
                ),
            );
        }
        if let Some(host_port) = port.host_port {
            if let Some(first) = host_ports.insert((host_port, port.protocol), i) {
                report(
                    path.field("hostPort"),
                    format!("duplicate host port {host_port}/{protocol} (also ports[{first}])"),
                );
            }
        }
        if let Some(name) = &port.name {
            if let Some(first) = names.insert(name.as_str(), i) {
                report(
                    path.field("name"),
                    format!("duplicate port name {name:?} (also ports[{first}])"),
                );
            }
        }
    }

    for (field, probe) in [
        ("livenessProbe", &container.liveness_probe),
        ("readinessProbe", &container.readiness_probe),
    ] {
        if let Some((handler, PortRef::Name(name))) = probe.as_ref().and_then(probe_port) {
            if !names.contains_key(name.as_str()) {
                report(
                    path.field(field).field(handler).field("port"),
                    format!("no container port is named {name:?}"),
                );
            }
        }
    }

    let requests = &container.resources.requests;
    let limits = &container.resources.limits;
    let requests_path = path.field("resources").field("requests");
    if let (Some(request), Some(limit)) = (requests.cpu_millis, limits.cpu_millis) {
        if request > limit {
            report(
                requests_path.field("cpu"),
                format!(
                    "must be less than or equal to the cpu limit ({})",
                    format_cpu_millis(limit)
                ),
            );
        }
    }
    if let (Some(request), Some(limit)) = (requests.memory_bytes, limits.memory_bytes) {
        if request > limit {
            report(
                requests_path.field("memory"),
                format!(
                    "must be less than or equal to the memory limit ({})",
                    format_memory_bytes(limit)
                ),
            );
        }
    }
}

/// The probe's handler field name and port, for handlers that have a port.
fn probe_port(probe: &Probe) -> Option<(&'static str, &PortRef)> {
    match &probe.handler {
        ProbeHandler::HttpGet { port, .. } => Some(("httpGet", port)),
        ProbeHandler::TcpSocket { port } => Some(("tcpSocket", port)),
        ProbeHandler::Exec { .. } => None,
    }
}
