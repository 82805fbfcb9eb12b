//! `droverctl scale deployment NAME... --replicas N` (also `deployment/NAME`, `deploy NAME`).

use anyhow::bail;
use drover_proto::pb;
use tonic::Code;

use super::get::not_found;
use super::{print, Env};
use crate::cli::ScaleArgs;
use crate::resource::{ResourceKind, Selection};
use crate::AlreadyReported;

pub async fn run(env: &Env, args: ScaleArgs) -> anyhow::Result<()> {
    let selection = Selection::parse(&args.resources)?;
    if selection.kind != ResourceKind::Deployment {
        bail!(
            "only deployments can be scaled, not {} (e.g. droverctl scale deployment web --replicas 3)",
            selection.kind.plural()
        );
    }
    if selection.names.is_empty() {
        bail!(
            "resource(s) were provided, but no name was specified (e.g. droverctl scale {} web --replicas 3)",
            selection.kind.singular()
        );
    }
    let (mut client, settings) = env.client()?;
    let namespace = settings.namespace;
    let mut failures = 0;
    for name in &selection.names {
        let answer = client
            .call(|mut c| {
                let request = pb::ScaleRequest {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    replicas: args.replicas,
                };
                async move { c.scale(request).await }
            })
            .await;
        match answer {
            Ok(_) if args.output.is_some() => {
                print(&format!("{}\n", selection.kind.slash_name(name)))?
            }
            Ok(_) => print(&format!("{} scaled\n", selection.kind.slash_name(name)))?,
            Err(e) if e.code() == Some(Code::NotFound) => {
                failures += 1;
                crate::print_error(&not_found(selection.kind, name, &namespace));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if failures > 0 {
        return Err(AlreadyReported(failures).into());
    }
    Ok(())
}
