//! How nodes look: the `get nodes` table and the Kubernetes-shaped `Node`.
//!
//! ```text
//! NAME   STATUS                     AGE   LABELS   CPU   MEMORY   ALLOCATED
//! n1     Ready                      5m    zone=a   2     4Gi      cpu 500m (25%), mem 64Mi (1%)
//! n2     Ready,SchedulingDisabled   5m    <none>   2     4Gi      cpu 0 (0%), mem 0 (0%)
//! ```

use std::collections::BTreeMap;

use drover_manifest::quantity::{format_cpu_millis, format_memory_bytes};
use drover_proto::pb;
use serde_json::{json, Value};

use super::{age, labels_inline, one_line, or_none, percent, rfc3339, Table};
use crate::resource::ResourceKind;

/// `Ready`, `NotReady`, `Ready,SchedulingDisabled` (cordoned), as kubectl shows them.
pub fn status(n: &pb::Node) -> String {
    let condition = match one_line(&n.condition) {
        c if c.is_empty() => "Unknown".to_string(),
        c => c,
    };
    if n.cordoned {
        format!("{condition},SchedulingDisabled")
    } else {
        condition
    }
}

/// The node's labels, sorted.
pub fn labels(n: &pb::Node) -> BTreeMap<String, String> {
    n.labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `500m (25%)`: an amount and its share of the capacity (no share of nothing).
pub fn share(amount: String, used: u64, capacity: u64) -> String {
    match percent(used, capacity) {
        Some(p) => format!("{amount} ({p}%)"),
        None => amount,
    }
}

/// The CPU requests bound to the node: `500m (25%)`.
pub fn allocated_cpu(n: &pb::Node) -> String {
    share(
        format_cpu_millis(n.allocated_cpu_millis),
        n.allocated_cpu_millis,
        n.cpu_millis,
    )
}

/// The memory requests bound to the node: `64Mi (3%)`.
pub fn allocated_memory(n: &pb::Node) -> String {
    share(
        format_memory_bytes(n.allocated_memory_bytes),
        n.allocated_memory_bytes,
        n.memory_bytes,
    )
}

/// The ALLOCATED column: `cpu 500m (25%), mem 64Mi (3%)`.
pub fn allocated(n: &pb::Node) -> String {
    format!("cpu {}, mem {}", allocated_cpu(n), allocated_memory(n))
}

/// The headers matching [`row`].
pub fn headers(wide: bool) -> Vec<&'static str> {
    let mut h = vec![
        "NAME",
        "STATUS",
        "AGE",
        "LABELS",
        "CPU",
        "MEMORY",
        "ALLOCATED",
    ];
    if wide {
        h.extend(["ADDRESS", "RUNTIME", "VERSION", "REPLICAS"]);
    }
    h
}

/// One row of `get nodes`.
pub fn row(n: &pb::Node, wide: bool, now_ms: i64) -> Vec<String> {
    let mut row = vec![
        n.name.clone(),
        status(n),
        age(n.registered_unix_ms, now_ms),
        labels_inline(&labels(n)),
        format_cpu_millis(n.cpu_millis),
        format_memory_bytes(n.memory_bytes),
        allocated(n),
    ];
    if wide {
        row.extend([
            or_none(&one_line(&n.address)),
            or_none(&one_line(&n.runtime)),
            or_none(&one_line(&n.agent_version)),
            n.replicas.to_string(),
        ]);
    }
    row
}

/// The `get nodes` table, in the order given.
pub fn table(nodes: &[pb::Node], wide: bool, now_ms: i64) -> String {
    let mut t = Table::new(headers(wide));
    for n in nodes {
        t.push(row(n, wide, now_ms));
    }
    t.render()
}

/// `node/n1`, one per line.
pub fn names(nodes: &[pb::Node]) -> String {
    nodes
        .iter()
        .map(|n| format!("{}\n", ResourceKind::Node.slash_name(&n.name)))
        .collect()
}

/// A Kubernetes-ish `v1/Node` for `-o yaml|json`. drover reserves nothing for
/// the system, so `allocatable` equals `capacity`; `allocated` (the requests
/// bound to the node) and `nodeInfo` are drover's own.
pub fn kubernetes_object(n: &pb::Node) -> Value {
    let mut metadata = json!({ "name": n.name, "labels": labels(n) });
    if n.registered_unix_ms > 0 {
        metadata["creationTimestamp"] = json!(rfc3339(n.registered_unix_ms));
    }
    if !n.annotations.is_empty() {
        let annotations: BTreeMap<_, _> = n.annotations.iter().collect();
        metadata["annotations"] = json!(annotations);
    }
    let capacity = json!({
        "cpu": format_cpu_millis(n.cpu_millis),
        "memory": format_memory_bytes(n.memory_bytes),
    });
    let condition_status = match n.condition.as_str() {
        "Ready" => "True",
        "NotReady" => "False",
        _ => "Unknown",
    };
    let mut condition = json!({ "type": "Ready", "status": condition_status });
    if n.condition_since_unix_ms > 0 {
        condition["lastTransitionTime"] = json!(rfc3339(n.condition_since_unix_ms));
    }
    let addresses: Vec<Value> = if n.address.is_empty() {
        Vec::new()
    } else {
        vec![json!({ "type": "AgentAddress", "address": n.address })]
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": metadata,
        "spec": { "unschedulable": n.cordoned },
        "status": {
            "capacity": capacity.clone(),
            "allocatable": capacity,
            "allocated": {
                "cpu": format_cpu_millis(n.allocated_cpu_millis),
                "memory": format_memory_bytes(n.allocated_memory_bytes),
            },
            "conditions": [condition],
            "addresses": addresses,
            "nodeInfo": {
                "runtime": n.runtime,
                "agentVersion": n.agent_version,
            },
            "replicas": n.replicas,
        },
    })
}

#[cfg(test)]
pub(crate) mod fixtures {
    use drover_proto::pb;

    /// A Ready 2-CPU, 2 GiB node registered at `registered_ms`.
    pub fn node(name: &str, registered_ms: i64) -> pb::Node {
        pb::Node {
            name: name.into(),
            labels: [("zone".to_string(), "a".to_string())].into(),
            condition: "Ready".into(),
            condition_since_unix_ms: registered_ms,
            cordoned: false,
            cpu_millis: 2000,
            memory_bytes: 2 << 30,
            allocated_cpu_millis: 500,
            allocated_memory_bytes: 64 << 20,
            replicas: 2,
            address: "127.0.0.1:7101".into(),
            runtime: "docker".into(),
            agent_version: "0.1.0".into(),
            registered_unix_ms: registered_ms,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::node;
    use super::*;

    const T0: i64 = 1_717_243_200_000;

    #[test]
    fn status_appends_scheduling_disabled_when_cordoned() {
        let mut n = node("n1", T0);
        assert_eq!(status(&n), "Ready");
        n.cordoned = true;
        assert_eq!(status(&n), "Ready,SchedulingDisabled");
        n.condition = "NotReady".into();
        assert_eq!(status(&n), "NotReady,SchedulingDisabled");
        n.condition.clear();
        n.cordoned = false;
        assert_eq!(status(&n), "Unknown");
    }

    #[test]
    fn allocated_shows_amounts_and_shares() {
        let mut n = node("n1", T0);
        assert_eq!(allocated(&n), "cpu 500m (25%), mem 64Mi (3%)");
        n.allocated_cpu_millis = 0;
        n.allocated_memory_bytes = 0;
        assert_eq!(allocated(&n), "cpu 0 (0%), mem 0 (0%)");
        n.cpu_millis = 0;
        assert_eq!(allocated(&n), "cpu 0, mem 0 (0%)");
    }

    #[test]
    fn get_nodes_table_and_wide() {
        let mut n2 = node("n2", T0);
        n2.labels.clear();
        n2.cordoned = true;
        n2.condition = "NotReady".into();
        n2.allocated_cpu_millis = 1500;
        n2.address.clear();
        n2.replicas = 0;
        let nodes = [node("n1", T0), n2];
        assert_eq!(
            table(&nodes, false, T0 + 300_000),
            "NAME   STATUS                        AGE   LABELS   CPU   MEMORY   ALLOCATED\n\
             n1     Ready                         5m    zone=a   2     2Gi      cpu 500m (25%), mem 64Mi (3%)\n\
             n2     NotReady,SchedulingDisabled   5m    <none>   2     2Gi      cpu 1500m (75%), mem 64Mi (3%)\n"
        );
        assert_eq!(
            table(&nodes, true, T0 + 300_000),
            "NAME   STATUS                        AGE   LABELS   CPU   MEMORY   ALLOCATED                        ADDRESS          RUNTIME   VERSION   REPLICAS\n\
             n1     Ready                         5m    zone=a   2     2Gi      cpu 500m (25%), mem 64Mi (3%)    127.0.0.1:7101   docker    0.1.0     2\n\
             n2     NotReady,SchedulingDisabled   5m    <none>   2     2Gi      cpu 1500m (75%), mem 64Mi (3%)   <none>           docker    0.1.0     0\n"
        );
    }

    #[test]
    fn names_and_the_kubernetes_object() {
        let n = node("n1", T0);
        assert_eq!(names(std::slice::from_ref(&n)), "node/n1\n");
        let v = kubernetes_object(&n);
        assert_eq!(v["kind"], "Node");
        assert_eq!(v["metadata"]["labels"]["zone"], "a");
        assert_eq!(v["metadata"]["creationTimestamp"], "2024-06-01T12:00:00Z");
        assert_eq!(v["spec"]["unschedulable"], false);
        assert_eq!(v["status"]["capacity"]["cpu"], "2");
        assert_eq!(v["status"]["allocatable"]["memory"], "2Gi");
        assert_eq!(v["status"]["allocated"]["cpu"], "500m");
        assert_eq!(v["status"]["conditions"][0]["status"], "True");
        assert_eq!(v["status"]["addresses"][0]["address"], "127.0.0.1:7101");
    }
}
