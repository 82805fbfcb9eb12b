//! Services and their endpoints for `get`, `describe` and `delete`.
//!
//! ```text
//!  get services|svc [-o wide]     ListServices    NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE [SELECTOR]
//!  get endpoints|ep               ListEndpoints   NAME ENDPOINTS AGE
//!  describe svc NAME              both            kubectl's fields, endpoints included
//!  delete svc NAME | -f FILE      DeleteServices
//! ```
//!
//! The controller answers each object as JSON in a `ConfigRecord`; the
//! records below mirror `controller/src/api/services.rs` (droverctl does not
//! link the controller).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use anyhow::Context as _;
use drover_manifest::{self as manifest, Protocol, Service, ServiceType};
use drover_proto::pb;
use serde::Deserialize;
use serde_json::{json, Value};

use super::get::{all_pages, CHUNK_SIZE};
use crate::client::{Client, ClientError};
use crate::output::{self, age, rfc3339, Table};
use crate::resource::ResourceKind;

/// `ListServices`' record.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceRecord {
    pub service: Service,
    pub cluster_ip: Option<Ipv4Addr>,
    pub node_ports: Vec<u16>,
}

/// `ListEndpoints`' record.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EndpointsRecord {
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Endpoint {
    pub replica: String,
    pub node: String,
    pub ip: String,
    pub ports: Vec<EndpointPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EndpointPort {
    pub name: String,
    pub port: u16,
    pub target_port: u16,
    pub protocol: Protocol,
}

/// A listed Service or Endpoints, with its record.
#[derive(Clone)]
pub struct Item<T> {
    pub record: pb::ConfigRecord,
    pub object: T,
}

/// A page of the Services (or their endpoints) a list asks for, the page
/// after `continue_token` ([`CHUNK_SIZE`] at a time, as deployments and
/// replicas are listed).
fn request(
    namespace: &str,
    names: &[String],
    labels: &str,
    read: Option<pb::ReadOptions>,
    continue_token: String,
) -> pb::ListConfigRequest {
    pb::ListConfigRequest {
        namespace: namespace.to_string(),
        read,
        names: names.to_vec(),
        label_selector: labels.to_string(),
        limit: CHUNK_SIZE,
        continue_token,
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    objects: Vec<pb::ConfigRecord>,
    what: &str,
) -> anyhow::Result<Vec<Item<T>>> {
    let mut items = objects
        .into_iter()
        .map(|record| item(record, what))
        .collect::<anyhow::Result<Vec<_>>>()?;
    items.sort_by(|a, b| {
        (&a.record.namespace, &a.record.name).cmp(&(&b.record.namespace, &b.record.name))
    });
    Ok(items)
}

/// The Services in `namespace` ("" = all), by name when `names` is not empty.
pub async fn list(
    client: &mut Client,
    namespace: &str,
    names: &[String],
    labels: &str,
    read: Option<pb::ReadOptions>,
) -> anyhow::Result<Vec<Item<ServiceRecord>>> {
    let objects = all_pages(client, |mut c, token| {
        let request = request(namespace, names, labels, read, token);
        async move { c.list_services(request).await }
    })
    .await
    .map_err(anyhow::Error::from)?;
    decode(objects, "a service")
}

/// The endpoints of the Services in `namespace` ("" = all).
pub async fn list_endpoints(
    client: &mut Client,
    namespace: &str,
    names: &[String],
    labels: &str,
    read: Option<pb::ReadOptions>,
) -> anyhow::Result<Vec<Item<EndpointsRecord>>> {
    let objects = all_pages(client, |mut c, token| {
        let request = request(namespace, names, labels, read, token);
        async move { c.list_endpoints(request).await }
    })
    .await
    .map_err(anyhow::Error::from)?;
    decode(objects, "endpoints")
}

/// kubectl's PORT(S): `80/TCP`, `80:30080/TCP`, comma-separated.
pub fn ports_column(s: &ServiceRecord) -> String {
    s.service
        .spec
        .ports
        .iter()
        .enumerate()
        .map(
            |(i, p)| match s.node_ports.get(i).copied().filter(|n| *n != 0) {
                Some(n) => format!("{}:{n}/{}", p.port, p.protocol.as_str()),
                None => format!("{}/{}", p.port, p.protocol.as_str()),
            },
        )
        .collect::<Vec<_>>()
        .join(",")
}

fn cluster_ip_column(s: &ServiceRecord) -> String {
    s.cluster_ip
        .map_or_else(|| "None".to_string(), |ip| ip.to_string())
}

fn selector_column(s: &Service) -> String {
    s.spec
        .selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE` (`-o wide`: `SELECTOR`).
pub fn table(
    items: &[Item<ServiceRecord>],
    all_namespaces: bool,
    wide: bool,
    now_ms: i64,
) -> String {
    let mut t = Table::new(headers(all_namespaces, wide));
    for item in items {
        t.push(row(item, all_namespaces, wide, now_ms));
    }
    t.render()
}

/// [`table`]'s headers.
pub fn headers(all_namespaces: bool, wide: bool) -> Vec<&'static str> {
    let mut headers = Vec::new();
    if all_namespaces {
        headers.push("NAMESPACE");
    }
    headers.extend([
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
        "AGE",
    ]);
    if wide {
        headers.push("SELECTOR");
    }
    headers
}

/// One Service's row of [`table`] (and of `get svc -w`).
pub fn row(
    item: &Item<ServiceRecord>,
    all_namespaces: bool,
    wide: bool,
    now_ms: i64,
) -> Vec<String> {
    let s = &item.object;
    let mut row = Vec::new();
    if all_namespaces {
        row.push(item.record.namespace.clone());
    }
    row.extend([
        item.record.name.clone(),
        s.service.spec.kind.as_str().to_string(),
        cluster_ip_column(s),
        "<none>".to_string(),
        ports_column(s),
        age(item.record.created_unix_ms, now_ms),
    ]);
    if wide {
        row.push(selector_column(&s.service));
    }
    row
}

/// kubectl's ENDPOINTS: `ip:port` per endpoint and port, at most three,
/// then `+ N more...`; `<none>` when there are none.
pub fn endpoints_column(e: &EndpointsRecord) -> String {
    let all: Vec<String> = e
        .endpoints
        .iter()
        .flat_map(|ep| {
            ep.ports
                .iter()
                .map(move |p| format!("{}:{}", ep.ip, p.target_port))
        })
        .collect();
    match all.len() {
        0 => "<none>".to_string(),
        n if n <= 3 => all.join(","),
        n => format!("{} + {} more...", all[..3].join(","), n - 3),
    }
}

/// `NAME ENDPOINTS AGE`.
pub fn endpoints_table(
    items: &[Item<EndpointsRecord>],
    all_namespaces: bool,
    now_ms: i64,
) -> String {
    let mut t = Table::new(endpoints_headers(all_namespaces));
    for item in items {
        t.push(endpoints_row(item, all_namespaces, now_ms));
    }
    t.render()
}

/// [`endpoints_table`]'s headers.
pub fn endpoints_headers(all_namespaces: bool) -> Vec<&'static str> {
    let mut headers = Vec::new();
    if all_namespaces {
        headers.push("NAMESPACE");
    }
    headers.extend(["NAME", "ENDPOINTS", "AGE"]);
    headers
}

/// One Service's row of [`endpoints_table`] (and of `get ep -w`).
pub fn endpoints_row(
    item: &Item<EndpointsRecord>,
    all_namespaces: bool,
    now_ms: i64,
) -> Vec<String> {
    let mut row = Vec::new();
    if all_namespaces {
        row.push(item.record.namespace.clone());
    }
    row.extend([
        item.record.name.clone(),
        endpoints_column(&item.object),
        age(item.record.created_unix_ms, now_ms),
    ]);
    row
}

/// One record as the controller sent it, its JSON read as `T`.
pub fn item<T: serde::de::DeserializeOwned>(
    record: pb::ConfigRecord,
    what: &str,
) -> anyhow::Result<Item<T>> {
    let object = serde_json::from_str(&record.json).with_context(|| {
        format!(
            "the controller sent {what} {:?} this droverctl cannot read (upgrade droverctl)",
            record.name
        )
    })?;
    Ok(Item { record, object })
}

/// `service/web`, one per line.
pub fn names<T>(kind: ResourceKind, items: &[Item<T>]) -> String {
    items
        .iter()
        .map(|i| format!("{}\n", kind.slash_name(&i.record.name)))
        .collect()
}

fn with_server_metadata(mut obj: Value, record: &pb::ConfigRecord) -> Value {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if record.created_unix_ms > 0 {
            meta.insert(
                "creationTimestamp".into(),
                json!(rfc3339(record.created_unix_ms)),
            );
        }
        meta.insert("generation".into(), json!(record.generation));
    }
    obj
}

/// The Service as `kubectl get -o yaml|json` prints it (allocated address
/// and node ports filled in); it re-applies unchanged.
pub fn kubernetes_object(item: &Item<ServiceRecord>) -> Value {
    let s = &item.object;
    with_server_metadata(
        manifest::render_service(&s.service, s.cluster_ip, &s.node_ports),
        &item.record,
    )
}

/// The Endpoints as kubectl prints them: one subset per distinct port set.
pub fn endpoints_object(item: &Item<EndpointsRecord>) -> Value {
    let mut subsets: BTreeMap<String, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    for ep in &item.object.endpoints {
        let ports: Vec<Value> = ep
            .ports
            .iter()
            .map(|p| {
                let mut port = serde_json::Map::new();
                if !p.name.is_empty() {
                    port.insert("name".into(), json!(p.name));
                }
                port.insert("port".into(), json!(p.target_port));
                port.insert("protocol".into(), json!(p.protocol.as_str()));
                Value::Object(port)
            })
            .collect();
        let key = serde_json::to_string(&ports).unwrap_or_default();
        let entry = subsets.entry(key).or_insert_with(|| (Vec::new(), ports));
        entry.0.push(json!({
            "ip": ep.ip,
            "nodeName": ep.node,
            "targetRef": {"kind": "Replica", "name": ep.replica, "namespace": item.record.namespace},
        }));
    }
    let subsets: Vec<Value> = subsets
        .into_values()
        .map(|(addresses, ports)| json!({"addresses": addresses, "ports": ports}))
        .collect();
    let mut obj = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": item.record.name, "namespace": item.record.namespace},
    });
    if !subsets.is_empty() {
        obj["subsets"] = Value::Array(subsets);
    }
    with_server_metadata(obj, &item.record)
}

/// `describe svc`: kubectl's fields, with the endpoints.
pub fn describe(item: &Item<ServiceRecord>, endpoints: Option<&EndpointsRecord>) -> String {
    let r = &item.record;
    let s = &item.object;
    let meta = &s.service.metadata;
    let mut w = String::new();
    super::config_objects::describe_metadata(&mut w, r, &meta.labels, &meta.annotations);
    let _ = writeln!(w, "Selector:\t{}", selector_column(&s.service));
    let _ = writeln!(w, "Type:\t{}", s.service.spec.kind.as_str());
    let _ = writeln!(w, "IP:\t{}", cluster_ip_column(s));
    for (i, p) in s.service.spec.ports.iter().enumerate() {
        let name = p.name.as_deref().unwrap_or("<unset>");
        let _ = writeln!(w, "Port:\t{name}  {}/{}", p.port, p.protocol.as_str());
        let target = match &p.target_port {
            manifest::PortRef::Number(n) => n.to_string(),
            manifest::PortRef::Name(n) => n.clone(),
        };
        let _ = writeln!(w, "TargetPort:\t{target}/{}", p.protocol.as_str());
        if s.service.spec.kind == ServiceType::NodePort {
            let node_port = s.node_ports.get(i).copied().unwrap_or_default();
            let _ = writeln!(w, "NodePort:\t{name}  {node_port}/{}", p.protocol.as_str());
        }
        let eps = endpoints.map_or_else(
            || "<unknown>".to_string(),
            |e| {
                let list: Vec<String> = e
                    .endpoints
                    .iter()
                    .filter_map(|ep| {
                        ep.ports
                            .iter()
                            .find(|q| q.port == p.port && q.protocol == p.protocol)
                            .map(|q| format!("{}:{}", ep.ip, q.target_port))
                    })
                    .collect();
                if list.is_empty() {
                    "<none>".to_string()
                } else {
                    list.join(",")
                }
            },
        );
        let _ = writeln!(w, "Endpoints:\t{eps}");
    }
    let _ = writeln!(w, "Session Affinity:\tNone");
    output::align_tabs(&w)
}

/// Delete Services by name; returns the `service "x" deleted` lines.
pub async fn delete(
    client: &mut Client,
    namespace: &str,
    names: &[String],
    ignore_not_found: bool,
) -> Result<String, ClientError> {
    let request = pb::DeleteConfigRequest {
        kind: pb::ConfigKind::Unspecified as i32,
        namespace: namespace.to_string(),
        names: names.to_vec(),
        ignore_not_found,
    };
    let response = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.delete_services(request).await }
        })
        .await?;
    Ok(response
        .deleted
        .iter()
        .map(|name| format!("{} deleted\n", ResourceKind::Service.quoted_name(name)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(ip: &str, ports: &[u16]) -> Endpoint {
        Endpoint {
            replica: format!("b-{ip}"),
            node: "n1".into(),
            ip: ip.into(),
            ports: ports
                .iter()
                .map(|p| EndpointPort {
                    name: String::new(),
                    port: 80,
                    target_port: *p,
                    protocol: Protocol::Tcp,
                })
                .collect(),
        }
    }

    #[test]
    fn the_endpoints_column_reads_as_kubectls() {
        let none = EndpointsRecord::default();
        assert_eq!(endpoints_column(&none), "<none>");
        let two = EndpointsRecord {
            endpoints: vec![endpoint("10.0.0.1", &[8080]), endpoint("10.0.0.2", &[8080])],
        };
        assert_eq!(endpoints_column(&two), "10.0.0.1:8080,10.0.0.2:8080");
        let five = EndpointsRecord {
            endpoints: (1..=5)
                .map(|i| endpoint(&format!("10.0.0.{i}"), &[8080]))
                .collect(),
        };
        assert_eq!(
            endpoints_column(&five),
            "10.0.0.1:8080,10.0.0.2:8080,10.0.0.3:8080 + 2 more..."
        );
    }
}
