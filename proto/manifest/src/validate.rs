//! Kubernetes' rules that relate several fields of a Deployment, checked once
//! every field has decoded on its own (so one mistake is not reported twice):
//!
//! - `spec.selector.matchLabels` must select the template's labels;
//! - a container's ports are unique by containerPort/protocol, by
//!   hostPort/protocol and by name;
//! - a probe's named port is one of the container's port names;
//! - a resource request is at most its limit;
//! - volume names are unique, and every `volumeMounts[].name` is one of
//!   them; a container's mount paths are unique.

use std::collections::HashMap;

use super::decode::Problem;
use super::path::FieldPath;
use super::quantity::{format_cpu_millis, format_memory_bytes};
use super::{Container, Deployment, PortRef, Probe, ProbeHandler, Volume};

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
    let pod = spec.field("template").field("spec");
    let volumes = validate_volumes(&deployment.spec.template.spec.volumes, &pod, &mut problems);
    let containers = pod.field("containers");
    for (i, container) in deployment.spec.template.spec.containers.iter().enumerate() {
        validate_container(container, &containers.index(i), &mut problems);
        validate_mounts(container, &volumes, &containers.index(i), &mut problems);
    }
    problems
}

/// Volume names must be unique; returns the names.
fn validate_volumes<'a>(
    volumes: &'a [Volume],
    pod: &FieldPath,
    problems: &mut Vec<Problem>,
) -> HashMap<&'a str, usize> {
    let mut names = HashMap::new();
    for (i, volume) in volumes.iter().enumerate() {
        if let Some(first) = names.insert(volume.name.as_str(), i) {
            names.insert(volume.name.as_str(), first);
            problems.push(Problem {
                path: pod.field("volumes").index(i).field("name").to_string(),
                message: format!(
                    "duplicate volume name {:?} (also volumes[{first}])",
                    volume.name
                ),
            });
        }
    }
    names
}

fn validate_mounts(
    container: &Container,
    volumes: &HashMap<&str, usize>,
    path: &FieldPath,
    problems: &mut Vec<Problem>,
) {
    let mounts = path.field("volumeMounts");
    let mut paths: HashMap<String, usize> = HashMap::new();
    for (i, mount) in container.volume_mounts.iter().enumerate() {
        if !volumes.contains_key(mount.name.as_str()) {
            problems.push(Problem {
                path: mounts.index(i).field("name").to_string(),
                message: format!(
                    "no volume named {:?} in spec.template.spec.volumes",
                    mount.name
                ),
            });
        }
        let normal = mount.mount_path.trim_end_matches('/').to_string();
        if let Some(first) = paths.insert(normal.clone(), i) {
            paths.insert(normal, first);
            problems.push(Problem {
                path: mounts.index(i).field("mountPath").to_string(),
                message: format!(
                    "duplicate mount path {:?} (also volumeMounts[{first}])",
                    mount.mount_path
                ),
            });
        }
    }
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
