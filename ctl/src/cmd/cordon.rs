//! `droverctl cordon NODE` and `droverctl uncordon NODE`, as kubectl prints them.

use drover_proto::pb;
use tonic::Code;

use super::{print, Env};
use crate::cli::CordonArgs;

pub async fn run(env: &Env, args: CordonArgs, cordoned: bool) -> anyhow::Result<()> {
    let node = args
        .node
        .strip_prefix("node/")
        .or_else(|| args.node.strip_prefix("nodes/"))
        .unwrap_or(&args.node)
        .to_string();
    let (mut client, _) = env.client()?;
    let answer = client
        .call(|mut c| {
            let request = pb::CordonNodeRequest {
                node: node.clone(),
                cordoned,
            };
            async move { c.cordon_node(request).await }
        })
        .await;
    let verb = if cordoned { "cordoned" } else { "uncordoned" };
    match answer {
        Ok(_) if args.output.is_some() => print(&format!("node/{node}\n")),
        Ok(r) if r.changed => print(&format!("node/{node} {verb}\n")),
        Ok(_) => print(&format!("node/{node} already {verb}\n")),
        Err(e) if e.code() == Some(Code::NotFound) => anyhow::bail!("node {node:?} not found"),
        Err(e) => Err(e.into()),
    }
}
