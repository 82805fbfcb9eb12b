//! `droverctl top nodes` and `droverctl top replicas`: CPU and memory in use,
//! as `kubectl top` prints them, from the samples agents send the leader.
//!
//! ```text
//! NAME   CPU(cores)   CPU%   MEMORY(bytes)   MEMORY%
//! n1     1013m        50%    812Mi           20%
//! n2     <unknown>    <unknown>   <unknown>  <unknown>    (no recent sample)
//! ```
//!
//! CPU is averaged over the agents' last sampling interval (5 s by default);
//! a replica appears from its agent's second sample on.

use drover_proto::pb;

use super::{print, Env};
use crate::cli::{TopCommand, TopSort};
use crate::output::{percent, without_header, Table};

pub async fn run(env: &Env, cmd: TopCommand) -> anyhow::Result<()> {
    let (args, nodes) = match cmd {
        TopCommand::Nodes(a) => (a, true),
        TopCommand::Replicas(a) => (a, false),
    };
    let (mut client, settings) = env.client()?;
    let namespace = if args.all_namespaces || nodes {
        String::new()
    } else {
        settings.namespace.clone()
    };
    let answer = client
        .call(|mut c| {
            let request = pb::TopRequest {
                namespace: namespace.clone(),
            };
            async move { c.top(request).await }
        })
        .await?;
    let text = if nodes {
        nodes_table(&answer.nodes, args.sort_by)
    } else {
        if answer.replicas.is_empty() {
            anyhow::bail!(
                "no usage sampled yet for replicas in {}: agents send a sample every few seconds, and a replica shows from its second one",
                if namespace.is_empty() { "any namespace".to_string() } else { format!("namespace {namespace:?}") }
            );
        }
        replicas_table(&answer.replicas, args.all_namespaces, args.sort_by)
    };
    print(&if args.no_headers {
        without_header(&text)
    } else {
        text
    })
}

/// kubectl's CPU cell: always millicores.
fn cpu(millis: u64) -> String {
    format!("{millis}m")
}

/// kubectl's memory cell: always whole MiB.
fn memory(bytes: u64) -> String {
    format!("{}Mi", bytes / (1024 * 1024))
}

fn pct(part: u64, whole: u64) -> String {
    percent(part, whole).map_or_else(|| "<unknown>".to_string(), |p| format!("{p}%"))
}

/// The `top nodes` table. Pure.
pub fn nodes_table(nodes: &[pb::NodeTop], sort: Option<TopSort>) -> String {
    let mut rows: Vec<&pb::NodeTop> = nodes.iter().collect();
    let key = |n: &pb::NodeTop, s: TopSort| {
        let u = n.usage.unwrap_or_default();
        match s {
            TopSort::Cpu => u.cpu_millis,
            TopSort::Memory => u.memory_bytes,
        }
    };
    match sort {
        Some(s) => rows.sort_by(|a, b| key(b, s).cmp(&key(a, s)).then(a.name.cmp(&b.name))),
        None => rows.sort_by(|a, b| a.name.cmp(&b.name)),
    }
    let mut t = Table::new(["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"]);
    for n in rows {
        let cap = n.capacity.unwrap_or_default();
        match n.usage.filter(|_| n.sampled) {
            Some(u) => t.push(vec![
                n.name.clone(),
                cpu(u.cpu_millis),
                pct(u.cpu_millis, cap.cpu_millis),
                memory(u.memory_bytes),
                pct(u.memory_bytes, cap.memory_bytes),
            ]),
            None => t.push(vec![
                n.name.clone(),
                "<unknown>".into(),
                "<unknown>".into(),
                "<unknown>".into(),
                "<unknown>".into(),
            ]),
        }
    }
    t.render()
}

/// The `top replicas` table (NAMESPACE first with -A). Pure.
pub fn replicas_table(
    replicas: &[pb::ReplicaTop],
    all_namespaces: bool,
    sort: Option<TopSort>,
) -> String {
    let mut rows: Vec<&pb::ReplicaTop> = replicas.iter().collect();
    let key = |r: &pb::ReplicaTop, s: TopSort| {
        let u = r.usage.unwrap_or_default();
        match s {
            TopSort::Cpu => u.cpu_millis,
            TopSort::Memory => u.memory_bytes,
        }
    };
    let by_name = |a: &&pb::ReplicaTop, b: &&pb::ReplicaTop| {
        (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
    };
    match sort {
        Some(s) => rows.sort_by(|a, b| key(b, s).cmp(&key(a, s)).then(by_name(a, b))),
        None => rows.sort_by(by_name),
    }
    let mut headers = vec!["NAME", "CPU(cores)", "MEMORY(bytes)"];
    if all_namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let mut t = Table::new(headers);
    for r in rows {
        let u = r.usage.unwrap_or_default();
        let mut row = vec![r.name.clone(), cpu(u.cpu_millis), memory(u.memory_bytes)];
        if all_namespaces {
            row.insert(0, r.namespace.clone());
        }
        t.push(row);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(cpu_millis: u64, memory_bytes: u64) -> Option<pb::ResourceUsage> {
        Some(pb::ResourceUsage {
            cpu_millis,
            memory_bytes,
        })
    }

    #[test]
    fn nodes_print_as_kubectl_top_nodes() {
        let nodes = vec![
            pb::NodeTop {
                name: "n2".into(),
                sampled: false,
                usage: None,
                capacity: usage(2000, 4 << 30),
            },
            pb::NodeTop {
                name: "n1".into(),
                sampled: true,
                usage: usage(1013, 812 << 20),
                capacity: usage(2000, 4 << 30),
            },
        ];
        assert_eq!(
            nodes_table(&nodes, None),
            "NAME   CPU(cores)   CPU%        MEMORY(bytes)   MEMORY%\n\
             n1     1013m        50%         812Mi           19%\n\
             n2     <unknown>    <unknown>   <unknown>       <unknown>\n"
        );
    }

    #[test]
    fn replicas_print_as_kubectl_top_pods_sorted_on_request() {
        let row = |ns: &str, name: &str, cpu: u64, mem: u64| pb::ReplicaTop {
            namespace: ns.into(),
            name: name.into(),
            node: "n1".into(),
            usage: usage(cpu, mem),
        };
        let rows = vec![
            row("default", "web-a-0", 2, 3 << 20),
            row("batch", "busy-b-0", 998, 1 << 20),
        ];
        assert_eq!(
            replicas_table(&rows, false, None),
            "NAME       CPU(cores)   MEMORY(bytes)\n\
             busy-b-0   998m         1Mi\n\
             web-a-0    2m           3Mi\n"
        );
        assert_eq!(
            replicas_table(&rows, true, Some(TopSort::Memory)),
            "NAMESPACE   NAME       CPU(cores)   MEMORY(bytes)\n\
             default     web-a-0    2m           3Mi\n\
             batch       busy-b-0   998m         1Mi\n"
        );
    }
}
