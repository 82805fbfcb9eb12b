//! `droverctl drain NODE [--timeout D]`: cordon the node, have the leader
//! replace its replicas elsewhere (each new one running before the old one
//! stops, when capacity allows), and wait until the node holds none.
//!
//! ```text
//!  DrainNode ──▶ poll ListReplicas every 500 ms ──▶ none on NODE: done
//!                                              └──▶ --timeout: exit 1, list what is left
//! ```

use std::time::{Duration, Instant};

use anyhow::bail;
use drover_proto::pb;
use tonic::Code;

use super::get::list_replicas;
use super::{print, Env};
use crate::cli::DrainArgs;

const POLL: Duration = Duration::from_millis(500);

pub async fn run(env: &Env, args: DrainArgs) -> anyhow::Result<()> {
    let node = args
        .node
        .strip_prefix("node/")
        .or_else(|| args.node.strip_prefix("nodes/"))
        .unwrap_or(&args.node)
        .to_string();
    let (mut client, _) = env.client()?;
    let answer = client
        .call(|mut c| {
            let request = pb::DrainNodeRequest { node: node.clone() };
            async move { c.drain_node(request).await }
        })
        .await;
    match answer {
        Ok(_) => print(&format!("node/{node} cordoned\n"))?,
        Err(e) if e.code() == Some(Code::NotFound) => bail!("node {node:?} not found"),
        Err(e) => return Err(e.into()),
    }
    let started = Instant::now();
    let mut reported = Vec::new();
    loop {
        let left: Vec<pb::Replica> = list_replicas(&mut client, "", "", None)
            .await?
            .into_iter()
            .filter(|r| r.node == node)
            .collect();
        // Say once per replica that it is being moved, as kubectl says "evicting".
        for r in &left {
            let id = format!("{}/{}", r.namespace, r.name);
            if !reported.contains(&id) {
                print(&format!("moving replica {id}\n"))?;
                reported.push(id);
            }
        }
        if left.is_empty() {
            return print(&format!("node/{node} drained\n"));
        }
        if let Some(limit) = args.timeout.0.filter(|t| started.elapsed() >= *t) {
            let names: Vec<String> = left
                .iter()
                .map(|r| format!("{}/{} ({})", r.namespace, r.name, why_left(r)))
                .collect();
            bail!(
                "node {node:?} still holds {} replica(s) after {}: {}; the drain goes on in the background (`droverctl uncordon {node}` stops it)",
                left.len(),
                drover_proto::duration::short(limit),
                names.join(", ")
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Why a replica is still on the node, from what the cluster says about it.
fn why_left(r: &pb::Replica) -> String {
    match r.status.as_ref() {
        Some(s) if s.state() == pb::ReplicaState::Running && s.ready => {
            "waiting for its replacement to be ready".into()
        }
        _ => crate::output::replicas::status_text(r),
    }
}
