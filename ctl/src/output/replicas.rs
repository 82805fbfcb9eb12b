//! How replicas look: the `get replicas` table (kubectl's pod table) and the
//! Kubernetes-shaped object of `-o yaml|json`.
//!
//! ```text
//! NAME          READY   STATUS              RESTARTS      AGE   NODE     PORTS
//! web-7f9c2-0   1/1     Running             0             5m    n1       8080/TCP
//! web-7f9c2-1   0/1     CrashLoopBackOff    3 (12s ago)   5m    n2       8080/TCP
//! web-7f9c2-2   0/1     ContainerCreating   0             4s    n1       8080/TCP
//! web-7f9c2-3   0/1     Pending             0             4s    <none>   8080/TCP
//! ```

use drover_proto::pb::{self, ReplicaState};
use serde_json::{json, Map, Value};

use super::{age, none, one_line, or_none, rfc3339, Table};
use crate::resource::ResourceKind;

/// The last status the replica's agent reported (all defaults when none yet).
pub fn status_of(r: &pb::Replica) -> pb::ReplicaStatus {
    r.status.clone().unwrap_or_default()
}

/// The replica's state; no report yet (or a state this client does not
/// know) counts as Pending.
pub fn state(r: &pb::Replica) -> ReplicaState {
    match r.status.as_ref().map(|s| s.state()) {
        None | Some(ReplicaState::Unspecified) => ReplicaState::Pending,
        Some(s) => s,
    }
}

/// The STATUS column, as kubectl words a pod's status: `Pending` while
/// unscheduled, `ContainerCreating` once bound but not started, `Running`,
/// `CrashLoopBackOff`, the reason of a failure (`ErrImagePull`, `PortInUse`,
/// `Error`...), `Terminating`, and `Gone` once its agent removed it.
pub fn status_text(r: &pb::Replica) -> String {
    match state(r) {
        ReplicaState::Unspecified | ReplicaState::Pending => {
            if r.node.is_empty() {
                "Pending".into()
            } else {
                "ContainerCreating".into()
            }
        }
        ReplicaState::Running => "Running".into(),
        ReplicaState::CrashLoopBackOff => "CrashLoopBackOff".into(),
        ReplicaState::Failed => {
            let reason = r.status.as_ref().map(|s| one_line(&s.reason));
            match reason {
                Some(reason) if !reason.is_empty() => reason,
                _ => "Failed".into(),
            }
        }
        ReplicaState::Terminating => "Terminating".into(),
        ReplicaState::Gone => "Gone".into(),
    }
}

/// The state's own name, for `-o yaml|json` and describe.
pub fn state_name(s: ReplicaState) -> &'static str {
    drover_proto::selector::replica_state_name(s)
}

/// `1/1` or `0/1`: drover replicas have one container.
pub fn ready(r: &pb::Replica) -> String {
    let ready = r.status.as_ref().is_some_and(|s| s.ready);
    format!("{}/1", u8::from(ready))
}

/// `0`, or kubectl's `3 (12s ago)` once a restarted container has exited.
pub fn restarts(r: &pb::Replica, now_ms: i64) -> String {
    let s = status_of(r);
    if s.restarts > 0 && s.finished_unix_ms > 0 {
        format!("{} ({} ago)", s.restarts, age(s.finished_unix_ms, now_ms))
    } else {
        s.restarts.to_string()
    }
}

/// The host ports: `8080/TCP,8443/TCP`, or `<none>`.
pub fn ports(r: &pb::Replica) -> String {
    if r.host_ports.is_empty() {
        return none();
    }
    r.host_ports
        .iter()
        .map(|p| format!("{p}/TCP"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Docker's 64-hex-digit ids shortened to 12, as `docker ps` shows them;
/// anything else (a process runtime's id) as is.
pub fn short_container_id(id: &str) -> String {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        id[..12].to_string()
    } else {
        or_none(&one_line(id))
    }
}

/// List order: by namespace, deployment, slot number, then name.
pub fn sort(replicas: &mut [pb::Replica]) {
    replicas.sort_by(|a, b| {
        (&a.namespace, &a.deployment, a.slot, &a.name).cmp(&(
            &b.namespace,
            &b.deployment,
            b.slot,
            &b.name,
        ))
    });
}

/// The headers matching [`row`].
pub fn headers(wide: bool, all_namespaces: bool) -> Vec<&'static str> {
    let mut h = Vec::new();
    if all_namespaces {
        h.push("NAMESPACE");
    }
    h.extend([
        "NAME", "READY", "STATUS", "RESTARTS", "AGE", "NODE", "PORTS",
    ]);
    if wide {
        h.extend(["CONTAINER-ID", "IMAGE", "REVISION"]);
    }
    h
}

/// One row of `get replicas`.
pub fn row(r: &pb::Replica, wide: bool, all_namespaces: bool, now_ms: i64) -> Vec<String> {
    let mut row = Vec::new();
    if all_namespaces {
        row.push(r.namespace.clone());
    }
    row.extend([
        r.name.clone(),
        ready(r),
        status_text(r),
        restarts(r, now_ms),
        age(r.created_unix_ms, now_ms),
        or_none(&r.node),
        ports(r),
    ]);
    if wide {
        let s = status_of(r);
        row.extend([
            short_container_id(&s.container_id),
            or_none(&one_line(&s.image)),
            or_none(&r.revision),
        ]);
    }
    row
}

/// The `get replicas` table, in the order given.
pub fn table(replicas: &[pb::Replica], wide: bool, all_namespaces: bool, now_ms: i64) -> String {
    let mut t = Table::new(headers(wide, all_namespaces));
    for r in replicas {
        t.push(row(r, wide, all_namespaces, now_ms));
    }
    t.render()
}

/// `replica/web-7f9c2-3`, one per line.
pub fn names(replicas: &[pb::Replica]) -> String {
    replicas
        .iter()
        .map(|r| format!("{}\n", ResourceKind::Replica.slash_name(&r.name)))
        .collect()
}

/// A Kubernetes-ish object for `-o yaml|json`: metadata with the owning
/// deployment as owner reference, spec (what was decided) and status (what
/// the agent last reported). Unset fields are left out.
pub fn kubernetes_object(r: &pb::Replica) -> Value {
    let s = status_of(r);
    let mut metadata = json!({
        "name": r.name,
        "namespace": r.namespace,
        "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "Deployment", "name": r.deployment }],
    });
    if r.created_unix_ms > 0 {
        metadata["creationTimestamp"] = json!(rfc3339(r.created_unix_ms));
    }
    if !r.labels.is_empty() {
        let labels: std::collections::BTreeMap<_, _> = r.labels.iter().collect();
        metadata["labels"] = json!(labels);
    }
    let mut spec = Map::new();
    spec.insert("deployment".into(), json!(r.deployment));
    spec.insert("slot".into(), json!(r.slot));
    spec.insert("revision".into(), json!(r.revision));
    if !r.node.is_empty() {
        spec.insert("nodeName".into(), json!(r.node));
    }
    if !r.host_ports.is_empty() {
        spec.insert("hostPorts".into(), json!(r.host_ports));
    }
    let mut status = Map::new();
    status.insert("state".into(), json!(state_name(state(r))));
    status.insert("ready".into(), json!(s.ready));
    status.insert(
        "conditions".into(),
        json!([{ "type": "Ready", "status": if s.ready { "True" } else { "False" } }]),
    );
    status.insert("restartCount".into(), json!(s.restarts));
    let texts = [
        ("reason", &s.reason),
        ("message", &s.message),
        ("containerID", &s.container_id),
        ("image", &s.image),
        ("pendingReason", &r.pending_reason),
        ("nodeAddress", &r.node_address),
    ];
    for (key, value) in texts {
        if !value.is_empty() {
            status.insert(key.into(), json!(value));
        }
    }
    if let Some(code) = s.last_exit_code {
        status.insert("lastExitCode".into(), json!(code));
    }
    let times = [
        ("startedAt", s.started_unix_ms),
        ("finishedAt", s.finished_unix_ms),
        ("nextRestartAt", s.next_restart_unix_ms),
    ];
    for (key, ms) in times {
        if ms > 0 {
            status.insert(key.into(), json!(rfc3339(ms)));
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Replica",
        "metadata": metadata,
        "spec": spec,
        "status": status,
    })
}

#[cfg(test)]
pub(crate) mod fixtures {
    use drover_proto::pb::{self, ReplicaState};

    /// `web-7f9c2-<slot>` created at `created_ms`, on `node` ("" = unscheduled).
    pub fn replica(slot: u32, node: &str, state: ReplicaState, created_ms: i64) -> pb::Replica {
        let name = format!("web-7f9c2-{slot}");
        pb::Replica {
            namespace: "default".into(),
            name: name.clone(),
            deployment: "web".into(),
            slot,
            revision: "7f9c2".into(),
            node: node.into(),
            pending_reason: String::new(),
            created_unix_ms: created_ms,
            status: Some(pb::ReplicaStatus {
                replica: format!("default.{name}"),
                state: state as i32,
                ready: state == ReplicaState::Running,
                image: "drover/busybox:1".into(),
                revision: "7f9c2".into(),
                ..Default::default()
            }),
            node_address: if node.is_empty() {
                String::new()
            } else {
                "127.0.0.1:7101".into()
            },
            host_ports: vec![8080],
            labels: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::replica;
    use super::*;

    const T0: i64 = 1_717_243_200_000;

    fn with_status(mut r: pb::Replica, f: impl FnOnce(&mut pb::ReplicaStatus)) -> pb::Replica {
        if let Some(s) = r.status.as_mut() {
            f(s);
        }
        r
    }

    #[test]
    fn status_maps_every_state_like_kubectl() {
        let p = |node: &str, st| status_text(&replica(0, node, st, T0));
        assert_eq!(p("", ReplicaState::Pending), "Pending");
        assert_eq!(p("n1", ReplicaState::Pending), "ContainerCreating");
        assert_eq!(p("n1", ReplicaState::Unspecified), "ContainerCreating");
        assert_eq!(p("n1", ReplicaState::Running), "Running");
        assert_eq!(p("n1", ReplicaState::CrashLoopBackOff), "CrashLoopBackOff");
        assert_eq!(p("n1", ReplicaState::Failed), "Failed");
        assert_eq!(p("n1", ReplicaState::Terminating), "Terminating");
        assert_eq!(p("n1", ReplicaState::Gone), "Gone");
        for reason in ["ErrImagePull", "PortInUse", "Error"] {
            let r = with_status(replica(0, "n1", ReplicaState::Failed, T0), |s| {
                s.reason = reason.into()
            });
            assert_eq!(status_text(&r), reason);
        }
        let mut none_yet = replica(0, "", ReplicaState::Pending, T0);
        none_yet.status = None;
        assert_eq!(status_text(&none_yet), "Pending");
        assert_eq!(ready(&none_yet), "0/1");
        let unknown = with_status(replica(0, "n1", ReplicaState::Running, T0), |s| {
            s.state = 99
        });
        assert_eq!(status_text(&unknown), "ContainerCreating");
    }

    #[test]
    fn restarts_say_how_long_ago_like_kubectl() {
        let r = replica(0, "n1", ReplicaState::Running, T0);
        assert_eq!(restarts(&r, T0), "0");
        let r = with_status(r, |s| {
            s.restarts = 3;
            s.finished_unix_ms = T0 - 12_000;
        });
        assert_eq!(restarts(&r, T0), "3 (12s ago)");
        let r = with_status(r, |s| s.finished_unix_ms = 0);
        assert_eq!(restarts(&r, T0), "3");
    }

    #[test]
    fn container_ids_shorten_like_docker_ps() {
        let long = "a".repeat(64);
        assert_eq!(short_container_id(&long), "aaaaaaaaaaaa");
        assert_eq!(short_container_id("proc-1234"), "proc-1234");
        assert_eq!(short_container_id(""), "<none>");
    }

    #[test]
    fn get_replicas_table_and_wide() {
        let crashing = with_status(replica(1, "n2", ReplicaState::CrashLoopBackOff, T0), |s| {
            s.restarts = 3;
            s.finished_unix_ms = T0 + 288_000;
            s.last_exit_code = Some(1);
        });
        let mut pending = replica(3, "", ReplicaState::Pending, T0 + 296_000);
        pending.host_ports.clear();
        let failed = with_status(replica(2, "n1", ReplicaState::Failed, T0), |s| {
            s.reason = "ErrImagePull".into();
        });
        let items = [
            replica(0, "n1", ReplicaState::Running, T0),
            crashing,
            failed,
            pending,
        ];
        assert_eq!(
            table(&items, false, false, T0 + 300_000),
            "NAME          READY   STATUS             RESTARTS      AGE   NODE     PORTS\n\
             web-7f9c2-0   1/1     Running            0             5m    n1       8080/TCP\n\
             web-7f9c2-1   0/1     CrashLoopBackOff   3 (12s ago)   5m    n2       8080/TCP\n\
             web-7f9c2-2   0/1     ErrImagePull       0             5m    n1       8080/TCP\n\
             web-7f9c2-3   0/1     Pending            0             4s    <none>   <none>\n"
        );
        let mut running = replica(0, "n1", ReplicaState::Running, T0);
        if let Some(s) = running.status.as_mut() {
            s.container_id = format!("0123456789ab{}", "f".repeat(52));
        }
        assert_eq!(
            table(&[running], true, true, T0 + 300_000),
            "NAMESPACE   NAME          READY   STATUS    RESTARTS   AGE   NODE   PORTS      CONTAINER-ID   IMAGE              REVISION\n\
             default     web-7f9c2-0   1/1     Running   0          5m    n1     8080/TCP   0123456789ab   drover/busybox:1   7f9c2\n"
        );
    }

    #[test]
    fn sorting_follows_slot_numbers() {
        let mut items = vec![
            replica(10, "n1", ReplicaState::Running, T0),
            replica(9, "n1", ReplicaState::Running, T0),
            replica(2, "n1", ReplicaState::Running, T0),
        ];
        sort(&mut items);
        let order: Vec<u32> = items.iter().map(|r| r.slot).collect();
        assert_eq!(order, [2, 9, 10]);
    }

    #[test]
    fn names_and_the_kubernetes_object() {
        let mut r = replica(3, "", ReplicaState::Pending, T0);
        r.pending_reason = "0/3 nodes are available: 3 insufficient memory".into();
        assert_eq!(names(std::slice::from_ref(&r)), "replica/web-7f9c2-3\n");
        let v = kubernetes_object(&r);
        assert_eq!(v["kind"], "Replica");
        assert_eq!(v["metadata"]["ownerReferences"][0]["name"], "web");
        assert_eq!(v["spec"]["slot"], 3);
        assert!(v["spec"].get("nodeName").is_none());
        assert_eq!(v["status"]["state"], "Pending");
        assert_eq!(
            v["status"]["pendingReason"],
            "0/3 nodes are available: 3 insufficient memory"
        );
        assert!(v["status"].get("lastExitCode").is_none());
    }
}
