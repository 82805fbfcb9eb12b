//! `droverctl describe deployment [NAME...]`: kubectl's multi-line view.
//!
//! The text is built as `key:\tvalue` lines and aligned by
//! [`output::align_tabs`], the same way kubectl's describers feed a tabwriter.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use drover_proto::manifest::quantity::{format_cpu_millis, format_memory_bytes};
use drover_proto::manifest::{self, IntOrPercent, PortRef, Probe, ProbeHandler, Strategy};
use drover_proto::pb;

use super::get::{fetch_named, not_found};
use super::{print, Env};
use crate::cli::DescribeArgs;
use crate::output::{self, labels_inline, rfc1123z};
use crate::resource::Selection;
use crate::AlreadyReported;

pub async fn run(env: &Env, args: DescribeArgs) -> anyhow::Result<()> {
    let selection = Selection::parse(&args.resources)?;
    let (mut client, settings) = env.client()?;
    let namespace = settings.namespace;
    let (items, missing) = if selection.names.is_empty() {
        let mut items = client
            .call(|mut c| {
                let request = pb::ListDeploymentsRequest {
                    namespace: namespace.clone(),
                    read: None,
                };
                async move { c.list_deployments(request).await }
            })
            .await?
            .deployments;
        items.sort_by(|a, b| a.name.cmp(&b.name));
        if items.is_empty() {
            crate::print_note(&super::get::no_resources(&namespace, false));
        }
        (items, Vec::new())
    } else {
        fetch_named(&mut client, &namespace, &selection.names, None).await?
    };

    let mut texts = Vec::new();
    for d in &items {
        texts.push(describe_deployment(d, &output::model_of(d)?));
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

/// The whole describe text of one deployment.
pub fn describe_deployment(d: &pb::Deployment, m: &manifest::Deployment) -> String {
    let status = d.status.unwrap_or_default();
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
    output::align_tabs(&w)
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
    use drover_proto::manifest::*;

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
        let text = describe_deployment(&d, &web);
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
        ];
        assert_eq!(text, expected.join("\n") + "\n");
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
