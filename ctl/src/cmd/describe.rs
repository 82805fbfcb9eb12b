//! `droverctl describe deployment|replica|node [NAME...]`: kubectl's multi-line view.
//!
//! The text is built as `key:\tvalue` lines and aligned by
//! [`output::align_tabs`], the same way kubectl's describers feed a tabwriter.
//! `Events:` are the object's stored events (`get events` shows the same);
//! for a replica whose events were already dropped, the section says what its
//! current state implies: why it is not scheduled, cannot start or backs off.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use drover_manifest::quantity::{format_cpu_millis, format_memory_bytes};
use drover_manifest::{self as manifest, IntOrPercent, PortRef, Probe, ProbeHandler, Strategy};
use drover_proto::pb::{self, ReplicaState};

use anyhow::bail;

use super::get::{fetch_named, list_nodes, list_replicas, not_found, pick};
use super::{print, Env};
use crate::cli::DescribeArgs;
use crate::client::{Client, ClientError};
use crate::output::{
    self, age, human_duration, labels_inline, nodes, now_ms, one_line, or_none, replicas, rfc1123z,
    Table,
};
use crate::resource::{ResourceKind, Selection};
use crate::AlreadyReported;

pub async fn run(env: &Env, args: DescribeArgs) -> anyhow::Result<()> {
    let selection = Selection::parse(&args.resources)?;
    let (mut client, settings) = env.client()?;
    let namespace = settings.namespace;
    let listed = selection.names.is_empty();
    let now = now_ms();
    let (texts, missing) = match selection.kind {
        ResourceKind::Deployment => {
            let (items, missing) = if listed {
                let mut items = client
                    .call(|mut c| {
                        let request = pb::ListDeploymentsRequest {
                            namespace: namespace.clone(),
                            read: None,
                            ..Default::default()
                        };
                        async move { c.list_deployments(request).await }
                    })
                    .await?
                    .deployments;
                items.sort_by(|a, b| a.name.cmp(&b.name));
                (items, Vec::new())
            } else {
                fetch_named(&mut client, &namespace, &selection.names, None).await?
            };
            let events = list_events(&mut client, &namespace, "Deployment", &items).await?;
            let mut texts = Vec::new();
            for d in &items {
                let mine = events_of(&events, &d.namespace, &d.name);
                texts.push(describe_deployment(d, &output::model_of(d)?, &mine, now));
            }
            (texts, missing)
        }
        ResourceKind::Replica => {
            let all = list_replicas(&mut client, &namespace, "", None).await?;
            let (items, missing) = pick(all, &selection.names, |r| &r.name);
            let events = list_events(&mut client, &namespace, "Replica", &items).await?;
            let texts = items
                .iter()
                .map(|r| describe_replica(r, &events_of(&events, &r.namespace, &r.name), now))
                .collect();
            (texts, missing)
        }
        ResourceKind::Node => {
            let all = list_nodes(&mut client, None).await?;
            let (items, missing) = pick(all, &selection.names, |n| &n.name);
            let bound = if items.is_empty() {
                Vec::new()
            } else {
                list_replicas(&mut client, "", "", None).await?
            };
            let events = list_events(&mut client, "", "Node", &items).await?;
            let texts = items
                .iter()
                .map(|n| {
                    let mine: Vec<pb::Replica> =
                        bound.iter().filter(|r| r.node == n.name).cloned().collect();
                    describe_node(n, &mine, &events_of(&events, "", &n.name), now)
                })
                .collect();
            (texts, missing)
        }
        ResourceKind::ConfigMap | ResourceKind::Secret => {
            // A Secret is described from ListSecrets: key names and sizes, no values.
            let all = super::config_objects::list(
                &mut client,
                selection.kind,
                &namespace,
                &selection.names,
                "",
                false,
                None,
            )
            .await?;
            let (items, missing) = pick(all, &selection.names, |i| &i.record.name);
            (
                items.iter().map(super::config_objects::describe).collect(),
                missing,
            )
        }
        ResourceKind::Service => {
            let all =
                super::services::list(&mut client, &namespace, &selection.names, "", None).await?;
            let (items, missing) = pick(all, &selection.names, |i| &i.record.name);
            let endpoints = if items.is_empty() {
                Vec::new()
            } else {
                super::services::list_endpoints(&mut client, &namespace, &selection.names, "", None)
                    .await?
            };
            let texts = items
                .iter()
                .map(|i| {
                    let mine = endpoints
                        .iter()
                        .find(|e| e.record.name == i.record.name)
                        .map(|e| &e.object);
                    super::services::describe(i, mine)
                })
                .collect();
            (texts, missing)
        }
        ResourceKind::Event | ResourceKind::Endpoints => {
            bail!(
                "droverctl describe does not handle {}; list them with droverctl get {}",
                selection.kind.plural(),
                selection.kind.plural()
            )
        }
    };
    if listed && texts.is_empty() {
        let everywhere = !selection.kind.namespaced();
        crate::print_note(&super::get::no_resources(&namespace, everywhere));
    }
    print(&texts.join("\n"))?;
    if missing.is_empty() {
        return Ok(());
    }
    for name in &missing {
        crate::print_error(&not_found(selection.kind, name, &namespace));
    }
    Err(AlreadyReported(missing.len()).into())
}

/// The stored events about objects of `kind` in `namespace` ("" = all), when
/// there is anything to describe.
async fn list_events<T>(
    client: &mut Client,
    namespace: &str,
    kind: &str,
    items: &[T],
) -> Result<Vec<pb::Event>, ClientError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    Ok(client
        .call(|mut c| {
            let request = pb::ListEventsRequest {
                namespace: namespace.to_string(),
                object_kind: kind.to_string(),
                ..Default::default()
            };
            async move { c.list_events(request).await }
        })
        .await?
        .events)
}

/// The events about one object, oldest first.
fn events_of(events: &[pb::Event], namespace: &str, name: &str) -> Vec<pb::Event> {
    events
        .iter()
        .filter(|e| e.name == name && e.namespace == namespace)
        .cloned()
        .collect()
}

/// The `Events:` section: the object's stored events, oldest first, in
/// kubectl's columns.
fn events_section(w: &mut String, events: &[pb::Event], now_ms: i64) {
    if events.is_empty() {
        line(w, 0, "Events", "<none>");
        return;
    }
    heading(w, 0, "Events");
    let mut t = Table::new(["Type", "Reason", "Age", "Message"]);
    for e in events {
        t.push(vec![
            one_line(&e.r#type),
            one_line(&e.reason),
            crate::output::events::last_seen(e, now_ms),
            one_line(&e.message),
        ]);
    }
    w.push_str(&t.render_described(2, "  "));
}

/// The reason a replica's container last exited (`Error`, `OOMKilled`...),
/// when its status carries one: agents report the exit reason while the
/// container runs again, backs off or is being restarted.
fn exit_reason(r: &pb::Replica, s: &pb::ReplicaStatus) -> Option<String> {
    let reason = one_line(&s.reason);
    let exit_state = matches!(
        replicas::state(r),
        ReplicaState::Running | ReplicaState::CrashLoopBackOff | ReplicaState::Pending
    );
    (s.last_exit_code.is_some()
        && exit_state
        && !reason.is_empty()
        && reason != "ContainerCreating")
        .then_some(reason)
}

/// The whole describe text of one replica.
///
/// `events` are the replica's stored events; without any (the oldest are
/// dropped), the section says what its current state implies.
pub fn describe_replica(r: &pb::Replica, events: &[pb::Event], now_ms: i64) -> String {
    let s = replicas::status_of(r);
    let state = replicas::state(r);
    let status = replicas::status_text(r);
    let exit = exit_reason(r, &s);
    let mut w = String::new();
    line(&mut w, 0, "Name", &r.name);
    line(&mut w, 0, "Namespace", &r.namespace);
    line(&mut w, 0, "Deployment", &r.deployment);
    line(&mut w, 0, "Slot", &r.slot.to_string());
    line(&mut w, 0, "Revision", &or_none(&r.revision));
    let node = match (r.node.as_str(), r.node_address.as_str()) {
        ("", _) => "<none>".to_string(),
        (node, "") => node.to_string(),
        (node, address) => format!("{node}/{address}"),
    };
    line(&mut w, 0, "Node", &node);
    if r.created_unix_ms > 0 {
        line(&mut w, 0, "Created", &rfc1123z(r.created_unix_ms));
    }
    line(&mut w, 0, "Image", &or_none(&one_line(&s.image)));
    line(
        &mut w,
        0,
        "Container ID",
        &or_none(&one_line(&s.container_id)),
    );
    line(&mut w, 0, "Status", &status);
    let reason = one_line(&s.reason);
    if !reason.is_empty() && reason != status && exit.is_none() {
        line(&mut w, 0, "Reason", &reason);
    }
    let message = one_line(&s.message);
    if !message.is_empty() {
        line(&mut w, 0, "Message", &message);
    }
    if state == ReplicaState::Running && s.started_unix_ms > 0 {
        line(&mut w, 0, "Started", &rfc1123z(s.started_unix_ms));
    }
    line(&mut w, 0, "Ready", if s.ready { "True" } else { "False" });
    line(&mut w, 0, "Restart Count", &s.restarts.to_string());
    // Docker: where the node publishes its ports (a Service reaches it there).
    if !s.published_ports.is_empty() {
        let published: Vec<String> = s
            .published_ports
            .iter()
            .map(|p| format!("{}->{}/{}", p.host_port, p.container_port, p.protocol))
            .collect();
        line(&mut w, 0, "Published", &published.join(", "));
    }
    let backing_off = matches!(state, ReplicaState::CrashLoopBackOff | ReplicaState::Failed);
    if backing_off && s.next_restart_unix_ms > 0 {
        let when = s.next_restart_unix_ms.saturating_sub(now_ms);
        let relative = if when > 0 {
            format!(
                "in {}",
                human_duration(std::time::Duration::from_millis(when.unsigned_abs()))
            )
        } else {
            "due now".to_string()
        };
        line(
            &mut w,
            0,
            "Next Restart",
            &format!("{} ({relative})", rfc1123z(s.next_restart_unix_ms)),
        );
    }
    if let Some(code) = s.last_exit_code {
        line(&mut w, 0, "Last State", "Terminated");
        if let Some(reason) = &exit {
            line(&mut w, 1, "Reason", reason);
        }
        line(&mut w, 1, "Exit Code", &code.to_string());
        // While it runs again, `started` is the new run's start, not the last one's.
        if state != ReplicaState::Running && s.started_unix_ms > 0 {
            line(&mut w, 1, "Started", &rfc1123z(s.started_unix_ms));
        }
        if s.finished_unix_ms > 0 {
            line(&mut w, 1, "Finished", &rfc1123z(s.finished_unix_ms));
        }
    }
    let derived = replica_events(r, &s, state);
    if !events.is_empty() || derived.is_empty() {
        events_section(&mut w, events, now_ms);
    } else {
        heading(&mut w, 0, "Events");
        let mut t = Table::new(["Type", "Reason", "Message"]);
        for (kind, reason, message) in derived {
            t.push(vec![kind.into(), reason.into(), message]);
        }
        w.push_str(&t.render_described(2, "  "));
    }
    output::align_tabs(&w)
}

/// What kubectl would list as the replica's recent warnings, from its state.
fn replica_events(
    r: &pb::Replica,
    s: &pb::ReplicaStatus,
    state: ReplicaState,
) -> Vec<(&'static str, &'static str, String)> {
    let mut events = Vec::new();
    if r.node.is_empty() {
        let reason = match one_line(&r.pending_reason) {
            reason if reason.is_empty() => "not scheduled to a node yet".to_string(),
            reason => reason,
        };
        events.push(("Warning", "FailedScheduling", reason));
        return events;
    }
    let message = one_line(&s.message);
    match state {
        ReplicaState::Failed => {
            let reason = one_line(&s.reason);
            let text = match (reason.is_empty(), message.is_empty()) {
                (_, false) => message,
                (false, true) => reason,
                (true, true) => "the container cannot be started".to_string(),
            };
            events.push(("Warning", "Failed", text));
        }
        ReplicaState::CrashLoopBackOff => {
            let text = if message.is_empty() {
                "Back-off restarting failed container".to_string()
            } else {
                message
            };
            events.push(("Warning", "BackOff", text));
        }
        _ => {}
    }
    events
}

/// The whole describe text of one node; `bound` are the replicas on it.
pub fn describe_node(
    n: &pb::Node,
    bound: &[pb::Replica],
    events: &[pb::Event],
    now_ms: i64,
) -> String {
    let mut w = String::new();
    line(&mut w, 0, "Name", &n.name);
    multi(&mut w, 0, "Labels", labels_lines(&nodes::labels(n)));
    let condition = match one_line(&n.condition) {
        c if c.is_empty() => "Unknown".to_string(),
        c => c,
    };
    let status = if n.condition_since_unix_ms > 0 {
        format!(
            "{condition} since {} ({} ago)",
            rfc1123z(n.condition_since_unix_ms),
            age(n.condition_since_unix_ms, now_ms)
        )
    } else {
        condition
    };
    line(&mut w, 0, "Status", &status);
    line(
        &mut w,
        0,
        "Cordoned",
        if n.cordoned { "true" } else { "false" },
    );
    line(&mut w, 0, "Address", &or_none(&one_line(&n.address)));
    line(&mut w, 0, "Runtime", &or_none(&one_line(&n.runtime)));
    line(
        &mut w,
        0,
        "Agent Version",
        &or_none(&one_line(&n.agent_version)),
    );
    if n.registered_unix_ms > 0 {
        line(
            &mut w,
            0,
            "CreationTimestamp",
            &rfc1123z(n.registered_unix_ms),
        );
    }
    heading(&mut w, 0, "Capacity");
    line(&mut w, 1, "cpu", &format_cpu_millis(n.cpu_millis));
    line(&mut w, 1, "memory", &format_memory_bytes(n.memory_bytes));
    heading(&mut w, 0, "Allocated resources");
    let mut t = Table::new(["Resource", "Requests"]);
    t.push(vec!["cpu".into(), nodes::allocated_cpu(n)]);
    t.push(vec!["memory".into(), nodes::allocated_memory(n)]);
    w.push_str(&t.render_described(2, "  "));
    line(
        &mut w,
        0,
        "Replicas",
        &format!("({} in total)", bound.len()),
    );
    if !bound.is_empty() {
        let mut t = Table::new(["NAMESPACE", "NAME", "STATUS", "READY", "RESTARTS", "AGE"]);
        for r in bound {
            t.push(vec![
                r.namespace.clone(),
                r.name.clone(),
                replicas::status_text(r),
                replicas::ready(r),
                replicas::restarts(r, now_ms),
                age(r.created_unix_ms, now_ms),
            ]);
        }
        w.push_str(&t.render_described(2, "  "));
    }
    events_section(&mut w, events, now_ms);
    output::align_tabs(&w)
}

/// The whole describe text of one deployment.
pub fn describe_deployment(
    d: &pb::Deployment,
    m: &manifest::Deployment,
    events: &[pb::Event],
    now_ms: i64,
) -> String {
    let status = d.status.clone().unwrap_or_default();
    let spec = &m.spec;
    let mut w = String::new();
    line(&mut w, 0, "Name", &d.name);
    line(&mut w, 0, "Namespace", &d.namespace);
    if d.created_unix_ms > 0 {
        line(&mut w, 0, "CreationTimestamp", &rfc1123z(d.created_unix_ms));
    }
    multi(&mut w, 0, "Labels", labels_lines(&m.metadata.labels));
    multi(
        &mut w,
        0,
        "Annotations",
        annotation_lines(&m.metadata.annotations),
    );
    line(
        &mut w,
        0,
        "Selector",
        &labels_inline(&spec.selector.match_labels),
    );
    line(
        &mut w,
        0,
        "Replicas",
        &format!(
            "{} desired | {} updated | {} total | {} available | {} unavailable",
            spec.replicas,
            status.updated,
            status.replicas,
            status.available,
            spec.replicas.saturating_sub(status.available)
        ),
    );
    match &spec.strategy {
        Strategy::RollingUpdate {
            max_surge,
            max_unavailable,
        } => {
            line(&mut w, 0, "StrategyType", "RollingUpdate");
            line(
                &mut w,
                0,
                "MinReadySeconds",
                &spec.min_ready_seconds.to_string(),
            );
            line(
                &mut w,
                0,
                "RollingUpdateStrategy",
                &format!(
                    "{} max unavailable, {} max surge",
                    int_or_percent(max_unavailable),
                    int_or_percent(max_surge)
                ),
            );
        }
        Strategy::Recreate => {
            line(&mut w, 0, "StrategyType", "Recreate");
            line(
                &mut w,
                0,
                "MinReadySeconds",
                &spec.min_ready_seconds.to_string(),
            );
        }
    }
    heading(&mut w, 0, "Pod Template");
    let template = &spec.template;
    multi(&mut w, 1, "Labels", labels_lines(&template.metadata.labels));
    if !template.metadata.annotations.is_empty() {
        multi(
            &mut w,
            1,
            "Annotations",
            annotation_lines(&template.metadata.annotations),
        );
    }
    heading(&mut w, 1, "Containers");
    for c in &template.spec.containers {
        container(&mut w, c);
    }
    multi(
        &mut w,
        1,
        "Node-Selectors",
        labels_lines(&template.spec.node_selector),
    );
    rollout_state(&mut w, &status, m);
    events_section(&mut w, events, now_ms);
    output::align_tabs(&w)
}

/// kubectl's Conditions (Available, Progressing) and the revision table.
fn rollout_state(w: &mut String, status: &pb::DeploymentStatus, m: &manifest::Deployment) {
    let conditions = output::deployment_conditions(status, m);
    heading(w, 0, "Conditions");
    let mut t = Table::new(["Type", "Status", "Reason"]);
    for c in &conditions {
        t.push(vec![c.kind.into(), c.status.into(), c.reason.into()]);
    }
    w.push_str(&t.render_described(2, "  "));
    if !status.failed.is_empty() {
        line(w, 0, "RolloutFailure", &status.failed);
    }
    if !status.rolled_back.is_empty() {
        line(w, 0, "RolledBack", &status.rolled_back);
    }
    if status.revisions.is_empty() {
        line(w, 0, "Revisions", "<none>");
        return;
    }
    heading(w, 0, "Revisions");
    let mut t = Table::new(["Revision", "Hash", "Replicas", "Changed", "Change-Cause"]);
    for r in &status.revisions {
        t.push(vec![
            r.number.to_string(),
            r.hash.clone(),
            r.replicas.to_string(),
            rfc1123z(r.created_unix_ms),
            or_none(&r.change_cause),
        ]);
    }
    w.push_str(&t.render_described(2, "  "));
}

fn container(w: &mut String, c: &manifest::Container) {
    // kubectl indents a container's name by three spaces and its fields by four.
    let _ = writeln!(w, "   {}:", c.name);
    line(w, 2, "Image", &c.image);
    let ports: Vec<String> = c
        .ports
        .iter()
        .map(|p| format!("{}/{}", p.container_port, protocol(p.protocol)))
        .collect();
    match ports.len() {
        0 => line(w, 2, "Port", "<none>"),
        1 => line(w, 2, "Port", &ports[0]),
        _ => line(w, 2, "Ports", &ports.join(", ")),
    }
    if c.ports.iter().any(|p| p.host_port.is_some()) {
        let host: Vec<String> = c
            .ports
            .iter()
            .map(|p| format!("{}/{}", p.host_port.unwrap_or(0), protocol(p.protocol)))
            .collect();
        let key = if host.len() == 1 {
            "Host Port"
        } else {
            "Host Ports"
        };
        line(w, 2, key, &host.join(", "));
    }
    list(w, 2, "Command", &c.command);
    list(w, 2, "Args", &c.args);
    if let Some(dir) = &c.working_dir {
        line(w, 2, "Working Dir", dir);
    }
    resources(w, "Limits", &c.resources.limits);
    resources(w, "Requests", &c.resources.requests);
    if let Some(p) = &c.liveness_probe {
        line(w, 2, "Liveness", &probe(p));
    }
    if let Some(p) = &c.readiness_probe {
        line(w, 2, "Readiness", &probe(p));
    }
    if c.env.is_empty() {
        line(w, 2, "Environment", "<none>");
    } else {
        heading(w, 2, "Environment");
        for e in &c.env {
            line(w, 3, &e.name, &e.value);
        }
    }
}

fn resources(w: &mut String, title: &str, r: &manifest::ResourceList) {
    if r.cpu_millis.is_none() && r.memory_bytes.is_none() {
        return;
    }
    heading(w, 2, title);
    if let Some(cpu) = r.cpu_millis {
        line(w, 3, "cpu", &format_cpu_millis(cpu));
    }
    if let Some(mem) = r.memory_bytes {
        line(w, 3, "memory", &format_memory_bytes(mem));
    }
}

/// `http-get http://:8080/healthz delay=0s timeout=1s period=10s #success=1 #failure=3`
pub fn probe(p: &Probe) -> String {
    let what = match &p.handler {
        ProbeHandler::Exec { command } => format!("exec [{}]", command.join(" ")),
        ProbeHandler::HttpGet {
            path, port, scheme, ..
        } => {
            let scheme = match scheme {
                manifest::HttpScheme::Http => "http",
                manifest::HttpScheme::Https => "https",
            };
            format!("http-get {scheme}://:{}{path}", port_ref(port))
        }
        ProbeHandler::TcpSocket { port } => format!("tcp-socket :{}", port_ref(port)),
    };
    format!(
        "{what} delay={}s timeout={}s period={}s #success={} #failure={}",
        p.initial_delay_seconds,
        p.timeout_seconds,
        p.period_seconds,
        p.success_threshold,
        p.failure_threshold
    )
}

fn port_ref(p: &PortRef) -> String {
    match p {
        PortRef::Number(n) => n.to_string(),
        PortRef::Name(name) => name.clone(),
    }
}

fn protocol(p: manifest::Protocol) -> &'static str {
    match p {
        manifest::Protocol::Tcp => "TCP",
        manifest::Protocol::Udp => "UDP",
        manifest::Protocol::Sctp => "SCTP",
    }
}

fn int_or_percent(v: &IntOrPercent) -> String {
    match v {
        IntOrPercent::Int(n) => n.to_string(),
        IntOrPercent::Percent(p) => format!("{p}%"),
    }
}

fn labels_lines(labels: &BTreeMap<String, String>) -> Vec<String> {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn annotation_lines(annotations: &BTreeMap<String, String>) -> Vec<String> {
    annotations
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect()
}

fn indent(level: usize) -> String {
    "  ".repeat(level)
}

/// `key:\tvalue` at a nesting level.
fn line(w: &mut String, level: usize, key: &str, value: &str) {
    let _ = writeln!(w, "{}{key}:\t{value}", indent(level));
}

/// A title on its own line (ends an alignment block, as in kubectl).
fn heading(w: &mut String, level: usize, title: &str) {
    let _ = writeln!(w, "{}{title}:", indent(level));
}

/// The first value beside the key, the rest aligned under it; `<none>` when empty.
fn multi(w: &mut String, level: usize, key: &str, values: Vec<String>) {
    let mut values = values.into_iter();
    match values.next() {
        None => line(w, level, key, "<none>"),
        Some(first) => {
            line(w, level, key, &first);
            for v in values {
                let _ = writeln!(w, "\t{v}");
            }
        }
    }
}

/// `Command:` and one element per line below it, as kubectl shows argv.
fn list(w: &mut String, level: usize, key: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    heading(w, level, key);
    for item in items {
        let _ = writeln!(w, "{}{item}", indent(level + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::fixtures::{api, labels, model};
    use crate::output::nodes::fixtures::node;
    use crate::output::replicas::fixtures::replica;
    use drover_manifest::*;

    const T0: i64 = 1_717_243_200_000;

    #[test]
    fn describe_reads_like_kubectl() {
        let mut web = model("web", 3);
        web.metadata.annotations = labels(&[("team", "blue")]);
        web.metadata.labels = labels(&[("app", "web"), ("tier", "front")]);
        let c = &mut web.spec.template.spec.containers[0];
        c.command = vec!["nginx".into(), "-g".into()];
        c.env = vec![EnvVar {
            name: "MODE".into(),
            value: "fast".into(),
            value_from: None,
        }];
        c.resources.limits = ResourceList {
            cpu_millis: Some(500),
            memory_bytes: Some(128 * 1024 * 1024),
        };
        c.liveness_probe = Some(Probe {
            handler: ProbeHandler::HttpGet {
                path: "/healthz".into(),
                port: PortRef::Number(80),
                scheme: HttpScheme::Http,
                http_headers: vec![],
            },
            initial_delay_seconds: 0,
            period_seconds: 10,
            timeout_seconds: 1,
            failure_threshold: 3,
            success_threshold: 1,
        });
        let d = api(&web, T0, 1);
        let text = describe_deployment(&d, &web, &[], T0);
        let expected = [
            "Name:                   web",
            "Namespace:              default",
            "CreationTimestamp:      Sat, 01 Jun 2024 12:00:00 +0000",
            "Labels:                 app=web",
            "                        tier=front",
            "Annotations:            team: blue",
            "Selector:               app=web",
            "Replicas:               3 desired | 3 updated | 3 total | 1 available | 2 unavailable",
            "StrategyType:           RollingUpdate",
            "MinReadySeconds:        0",
            "RollingUpdateStrategy:  25% max unavailable, 25% max surge",
            "Pod Template:",
            "  Labels:  app=web",
            "  Containers:",
            "   nginx:",
            "    Image:  nginx:1.27",
            "    Port:   80/TCP",
            "    Command:",
            "      nginx",
            "      -g",
            "    Limits:",
            "      cpu:     500m",
            "      memory:  128Mi",
            "    Liveness:  http-get http://:80/healthz delay=0s timeout=1s period=10s #success=1 #failure=3",
            "    Environment:",
            "      MODE:  fast",
            "  Node-Selectors:  <none>",
            "Conditions:",
            "  Type         Status  Reason",
            "  ----         ------  ------",
            "  Available    False   MinimumReplicasUnavailable",
            "  Progressing  True    ReplicaSetUpdated",
            "Revisions:  <none>",
            "Events:     <none>",
        ];
        assert_eq!(text, expected.join("\n") + "\n");
    }

    #[test]
    fn describe_replica_pending_shows_the_scheduling_reason() {
        let mut r = replica(3, "", ReplicaState::Pending, T0);
        r.pending_reason =
            "0/3 nodes are available: 2 insufficient memory, 1 node(s) were cordoned".into();
        let expected = [
            "Name:           web-7f9c2-3",
            "Namespace:      default",
            "Deployment:     web",
            "Slot:           3",
            "Revision:       7f9c2",
            "Node:           <none>",
            "Created:        Sat, 01 Jun 2024 12:00:00 +0000",
            "Image:          drover/busybox:1",
            "Container ID:   <none>",
            "Status:         Pending",
            "Ready:          False",
            "Restart Count:  0",
            "Events:",
            "  Type     Reason            Message",
            "  ----     ------            -------",
            "  Warning  FailedScheduling  0/3 nodes are available: 2 insufficient memory, 1 node(s) were cordoned",
        ];
        assert_eq!(
            describe_replica(&r, &[], T0 + 5_000),
            expected.join("\n") + "\n"
        );
    }

    #[test]
    fn describe_replica_crash_looping_shows_the_last_state_and_next_restart() {
        let mut r = replica(1, "n1", ReplicaState::CrashLoopBackOff, T0);
        if let Some(s) = r.status.as_mut() {
            s.restarts = 3;
            s.last_exit_code = Some(1);
            s.reason = "Error".into();
            s.message = "back-off 8s restarting the container (exit code 1)".into();
            s.container_id = "c0ffee".into();
            s.started_unix_ms = T0 + 60_000;
            s.finished_unix_ms = T0 + 62_000;
            s.next_restart_unix_ms = T0 + 70_000;
        }
        let expected = [
            "Name:           web-7f9c2-1",
            "Namespace:      default",
            "Deployment:     web",
            "Slot:           1",
            "Revision:       7f9c2",
            "Node:           n1/127.0.0.1:7101",
            "Created:        Sat, 01 Jun 2024 12:00:00 +0000",
            "Image:          drover/busybox:1",
            "Container ID:   c0ffee",
            "Status:         CrashLoopBackOff",
            "Message:        back-off 8s restarting the container (exit code 1)",
            "Ready:          False",
            "Restart Count:  3",
            "Next Restart:   Sat, 01 Jun 2024 12:01:10 +0000 (in 6s)",
            "Last State:     Terminated",
            "  Reason:     Error",
            "  Exit Code:  1",
            "  Started:    Sat, 01 Jun 2024 12:01:00 +0000",
            "  Finished:   Sat, 01 Jun 2024 12:01:02 +0000",
            "Events:",
            "  Type     Reason   Message",
            "  ----     ------   -------",
            "  Warning  BackOff  back-off 8s restarting the container (exit code 1)",
        ];
        assert_eq!(
            describe_replica(&r, &[], T0 + 64_000),
            expected.join("\n") + "\n"
        );
    }

    #[test]
    fn describe_replica_failed_and_running() {
        let mut r = replica(2, "n1", ReplicaState::Failed, T0);
        if let Some(s) = r.status.as_mut() {
            s.reason = "PortInUse".into();
            s.message = "Bind for 0.0.0.0:8080 failed:\nport is already allocated".into();
        }
        let text = describe_replica(&r, &[], T0);
        assert!(text.contains("\nStatus:         PortInUse\n"), "{text}");
        assert!(!text.contains("Reason:"), "{text}");
        assert!(text.contains(
            "  Warning  Failed  Bind for 0.0.0.0:8080 failed: port is already allocated\n"
        ));

        let mut r = replica(0, "n1", ReplicaState::Running, T0);
        if let Some(s) = r.status.as_mut() {
            s.restarts = 1;
            s.last_exit_code = Some(137);
            s.reason = "OOMKilled".into();
            s.started_unix_ms = T0 + 10_000;
            s.finished_unix_ms = T0 + 9_000;
            s.published_ports = vec![pb::PublishedPort {
                container_port: 8081,
                protocol: "TCP".into(),
                host_port: 49153,
            }];
        }
        let text = describe_replica(&r, &[], T0 + 20_000);
        assert!(
            text.contains("\nRestart Count:  1\nPublished:      49153->8081/TCP\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "\nStarted:        Sat, 01 Jun 2024 12:00:10 +0000\nReady:          True\n"
            ),
            "{text}"
        );
        assert!(text.contains("Last State:     Terminated\n  Reason:     OOMKilled\n  Exit Code:  137\n  Finished:   Sat, 01 Jun 2024 12:00:09 +0000\n"), "{text}");
        assert!(
            text.ends_with("  Finished:   Sat, 01 Jun 2024 12:00:09 +0000\nEvents:  <none>\n"),
            "{text}"
        );
    }

    #[test]
    fn describe_node_lists_its_replicas() {
        let mut n = node("n1", T0);
        n.cordoned = true;
        let mut running = replica(0, "n1", ReplicaState::Running, T0);
        running.namespace = "prod".into();
        let bound = [
            running,
            replica(2, "n1", ReplicaState::Pending, T0 + 290_000),
        ];
        let expected = [
            "Name:               n1",
            "Labels:             zone=a",
            "Status:             Ready since Sat, 01 Jun 2024 12:00:00 +0000 (5m ago)",
            "Cordoned:           true",
            "Address:            127.0.0.1:7101",
            "Runtime:            docker",
            "Agent Version:      0.1.0",
            "CreationTimestamp:  Sat, 01 Jun 2024 12:00:00 +0000",
            "Capacity:",
            "  cpu:     2",
            "  memory:  2Gi",
            "Allocated resources:",
            "  Resource  Requests",
            "  --------  --------",
            "  cpu       500m (25%)",
            "  memory    64Mi (3%)",
            "Replicas:  (2 in total)",
            "  NAMESPACE  NAME         STATUS             READY  RESTARTS  AGE",
            "  ---------  ----         ------             -----  --------  ---",
            "  prod       web-7f9c2-0  Running            1/1    0         5m",
            "  default    web-7f9c2-2  ContainerCreating  0/1    0         10s",
            "Events:",
            "  Type    Reason              Age  Message",
            "  ----    ------              ---  -------",
            "  Normal  NodeNotSchedulable  60s  Node n1 status is now: NotSchedulable (cordoned)",
        ];
        let events = [pb::Event {
            seq: 1,
            time_unix_ms: T0 + 240_000,
            r#type: "Normal".into(),
            reason: "NodeNotSchedulable".into(),
            object_kind: "Node".into(),
            namespace: String::new(),
            name: "n1".into(),
            message: "Node n1 status is now: NotSchedulable (cordoned)".into(),
            count: 1,
            first_time_unix_ms: 0,
        }];
        assert_eq!(
            describe_node(&n, &bound, &events, T0 + 300_000),
            expected.join("\n") + "\n"
        );
        let text = describe_node(&node("n2", T0), &[], &[], T0);
        assert!(
            text.ends_with("Replicas:  (0 in total)\nEvents:    <none>\n"),
            "{text}"
        );
    }

    #[test]
    fn probes_of_every_kind() {
        let base = |handler| Probe {
            handler,
            initial_delay_seconds: 5,
            period_seconds: 5,
            timeout_seconds: 1,
            failure_threshold: 3,
            success_threshold: 1,
        };
        assert_eq!(
            probe(&base(ProbeHandler::Exec {
                command: vec!["cat".into(), "/tmp/healthy".into()]
            })),
            "exec [cat /tmp/healthy] delay=5s timeout=1s period=5s #success=1 #failure=3"
        );
        assert_eq!(
            probe(&base(ProbeHandler::TcpSocket {
                port: PortRef::Name("http".into())
            })),
            "tcp-socket :http delay=5s timeout=1s period=5s #success=1 #failure=3"
        );
    }
}
