//! Strict decoding of the `v1` Service kind: the subset SPEC.md lists, with
//! Kubernetes' validation of what one Service can judge alone.
//!
//! | field | rule |
//! |---|---|
//! | `spec.selector` | required, not empty (drover has no hand-made endpoints) |
//! | `spec.ports` | at least one; `port` 1–65535; names unique and required when there are several; (port, protocol) unique |
//! | `spec.ports[].protocol` | TCP (default) or UDP |
//! | `spec.ports[].targetPort` | a number or a container port name; default `port` |
//! | `spec.ports[].nodePort` | only with `type: NodePort`; 30000–32767; unique in the Service |
//! | `spec.clusterIP` | `""`/absent (allocate), `None` (headless, not with NodePort), or an IPv4 address |
//!
//! Whether a `clusterIP` lies in the cluster's range and whether an address
//! or a `nodePort` is free are the controller's to decide (`store/services.rs`).

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use super::{Decoder, FieldPath, Node, StringMap, SERVICE_KIND};
use crate::schema::{SERVICE, SERVICE_PORT, SERVICE_SPEC};
use crate::{
    ClusterIp, PortRef, Protocol, Service, ServicePort, ServiceSpec, ServiceType, NODE_PORT_RANGE,
};
use drover_proto::names;

impl Decoder<'_> {
    pub(super) fn service(&mut self, node: &Node) -> Option<Service> {
        let root = FieldPath::root();
        let mut metadata = None;
        let mut spec = None;
        let mut api_version_seen = false;
        self.fields(node, &root, &SERVICE, |d, key, value, path| match key {
            "apiVersion" => {
                api_version_seen = true;
                d.core_api_version(value, &path, SERVICE_KIND);
            }
            "metadata" => metadata = Some(d.object_meta(Some(value), &path)),
            "spec" => spec = Some(d.service_spec(Some(value), &path)),
            _ => {}
        })?;
        if !api_version_seen {
            self.error(&root.field("apiVersion"), "missing required field");
        }
        let metadata = metadata.unwrap_or_else(|| self.object_meta(None, &root.field("metadata")));
        // Kubernetes holds Service names to DNS-1035 labels: they become
        // DNS names and environment variable prefixes.
        if let Some(m) = &metadata {
            if !m.name.starts_with(|c: char| c.is_ascii_lowercase()) || m.name.contains('.') {
                self.error(
                    &root.field("metadata").field("name"),
                    format!(
                        "invalid Service name {:?}: must start with a lowercase letter and \
                         contain no '.' (a DNS-1035 label)",
                        m.name
                    ),
                );
            }
        }
        let spec = spec.unwrap_or_else(|| self.service_spec(None, &root.field("spec")));
        Some(Service {
            metadata: metadata?,
            spec: spec?,
        })
    }

    fn service_spec(&mut self, node: Option<&Node>, path: &FieldPath) -> Option<ServiceSpec> {
        let mut kind = Some(ServiceType::ClusterIP);
        let mut selector = None;
        let mut ports = None;
        let mut cluster_ip = Some(ClusterIp::Allocate);
        self.optional_fields(node, path, &SERVICE_SPEC, |d, key, value, path| match key {
            "type" => {
                let types = [
                    ("ClusterIP", ServiceType::ClusterIP),
                    ("NodePort", ServiceType::NodePort),
                ];
                kind = d.one_of(value, &path, &types);
            }
            "selector" => selector = Some(d.string_map(value, &path, StringMap::Labels)),
            "ports" => ports = Some(d.service_ports(value, &path)),
            "clusterIP" => cluster_ip = d.cluster_ip(value, &path),
            "sessionAffinity" => {
                d.one_of(value, &path, &[("None", ())]);
            }
            _ => {}
        })?;
        let selector = match selector {
            None => {
                self.error(
                    &path.field("selector"),
                    "missing required field: drover needs a selector to find a Service's \
                     endpoints (Services without one are not supported)",
                );
                None
            }
            Some(Some(s)) if s.is_empty() => {
                self.error(
                    &path.field("selector"),
                    "must not be empty: drover needs a selector to find a Service's endpoints",
                );
                None
            }
            Some(s) => s,
        };
        let ports = match ports {
            None => {
                self.error(&path.field("ports"), "missing required field");
                None
            }
            Some(Some(p)) if p.is_empty() => {
                self.error(&path.field("ports"), "must have at least one port");
                None
            }
            Some(p) => p,
        };
        let (kind, ports, cluster_ip) = (kind?, ports?, cluster_ip?);
        let mut ok = true;
        if kind == ServiceType::NodePort && cluster_ip == ClusterIp::Headless {
            self.error(
                &path.field("clusterIP"),
                "a NodePort Service cannot be headless (clusterIP: None)",
            );
            ok = false;
        }
        let ports_path = path.field("ports");
        let mut names_seen = HashSet::new();
        let mut ports_seen = HashSet::new();
        let mut node_ports_seen = HashSet::new();
        for (i, p) in ports.iter().enumerate() {
            let at = ports_path.index(i);
            match &p.name {
                None if ports.len() > 1 => {
                    self.error(
                        &at.field("name"),
                        "required when the Service has more than one port",
                    );
                    ok = false;
                }
                Some(name) if !names_seen.insert(name.as_str()) => {
                    self.error(&at.field("name"), format!("duplicate port name {name:?}"));
                    ok = false;
                }
                _ => {}
            }
            if !ports_seen.insert((p.port, p.protocol)) {
                self.error(
                    &at,
                    format!(
                        "duplicate port {}/{}: another entry has the same port and protocol",
                        p.port,
                        p.protocol.as_str()
                    ),
                );
                ok = false;
            }
            if let Some(node_port) = p.node_port {
                if kind != ServiceType::NodePort {
                    self.error(
                        &at.field("nodePort"),
                        "may be set only when spec.type is NodePort",
                    );
                    ok = false;
                } else if !node_ports_seen.insert((node_port, p.protocol)) {
                    self.error(
                        &at.field("nodePort"),
                        format!("duplicate nodePort {node_port} in this Service"),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(ServiceSpec {
            kind,
            selector: selector?,
            ports,
            cluster_ip,
        })
    }

    fn service_ports(&mut self, node: &Node, path: &FieldPath) -> Option<Vec<ServicePort>> {
        let items = self.list(node, path)?;
        let ports: Vec<Option<ServicePort>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.service_port(item, &path.index(i)))
            .collect();
        ports.into_iter().collect()
    }

    fn service_port(&mut self, node: &Node, path: &FieldPath) -> Option<ServicePort> {
        let mut name = Some(None);
        let mut protocol = Some(Protocol::Tcp);
        let mut port = None;
        let mut target_port = Some(None);
        let mut node_port = Some(None);
        self.fields(node, path, &SERVICE_PORT, |d, key, value, path| match key {
            "name" => {
                name = d
                    .string(value, &path)
                    .filter(|n| d.check(&path, n, "port name", names::dns1123_label(n)))
                    .map(Some);
            }
            "protocol" => {
                let protocols = [("TCP", Protocol::Tcp), ("UDP", Protocol::Udp)];
                protocol = d.one_of(value, &path, &protocols);
            }
            "port" => port = Some(d.port_number(value, &path)),
            "targetPort" => target_port = d.port_ref(value, &path).map(Some),
            "nodePort" => {
                node_port = match value {
                    // kubectl prints nodePort: 0 for none on older servers.
                    Node::Int(0) => Some(None),
                    _ => d
                        .int(
                            value,
                            &path,
                            i64::from(*NODE_PORT_RANGE.start()),
                            i64::from(*NODE_PORT_RANGE.end()),
                        )
                        .and_then(|n| u16::try_from(n).ok())
                        .map(Some),
                };
            }
            _ => {}
        })?;
        let port = port.unwrap_or_else(|| {
            self.error(&path.field("port"), "missing required field");
            None
        })?;
        Some(ServicePort {
            name: name?,
            protocol: protocol?,
            port,
            target_port: target_port?.unwrap_or(PortRef::Number(port)),
            node_port: node_port?,
        })
    }

    fn cluster_ip(&mut self, node: &Node, path: &FieldPath) -> Option<ClusterIp> {
        let text = self.string(node, path)?;
        match text.as_str() {
            "" => Some(ClusterIp::Allocate),
            "None" => Some(ClusterIp::Headless),
            _ => match text.parse::<Ipv4Addr>() {
                Ok(ip) if ip.is_unspecified() || ip.is_broadcast() || ip.is_loopback() => {
                    self.error(path, format!("{ip} cannot be a Service's address"));
                    None
                }
                Ok(ip) => Some(ClusterIp::Address(ip)),
                Err(_) => {
                    self.error(
                        path,
                        format!(
                            "invalid clusterIP {text:?}: must be an IPv4 address, \"None\" for a \
                             headless Service, or empty to have one allocated"
                        ),
                    );
                    None
                }
            },
        }
    }
}

/// The Kubernetes variables a replica started after `service` existed gets:
/// `NAME_SERVICE_HOST`, `NAME_SERVICE_PORT` (the first port) and
/// `NAME_SERVICE_PORT_<PORT NAME>` per named port, the name upper-cased with
/// `-` as `_`. A headless Service (no `cluster_ip`) gives none, as in
/// Kubernetes.
pub fn service_env(service: &Service, cluster_ip: Option<Ipv4Addr>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let Some(ip) = cluster_ip else {
        return env;
    };
    let prefix = env_name(&service.metadata.name);
    env.insert(format!("{prefix}_SERVICE_HOST"), ip.to_string());
    if let Some(first) = service.spec.ports.first() {
        env.insert(format!("{prefix}_SERVICE_PORT"), first.port.to_string());
    }
    for p in &service.spec.ports {
        if let Some(name) = &p.name {
            env.insert(
                format!("{prefix}_SERVICE_PORT_{}", env_name(name)),
                p.port.to_string(),
            );
        }
    }
    env
}

fn env_name(name: &str) -> String {
    name.to_ascii_uppercase().replace(['-', '.'], "_")
}
