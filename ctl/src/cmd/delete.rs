//! `droverctl delete -f FILE|DIR|- [-R]` and `droverctl delete deployment NAME...`
//!
//! Names from files come from parsing them with the manifest parser, each in
//! the namespace its document names. Parsing is lenient and skips other kinds:
//! what matters for deleting is which deployments the files describe. All
//! names go in one request; the controller deletes all or none.

use anyhow::bail;
use drover_manifest::{self as manifest, ParseOptions};
use drover_proto::pb;

use super::{print, Env};
use crate::cli::DeleteArgs;
use crate::files;
use crate::resource::{ResourceKind, Selection};

pub async fn run(env: &Env, args: DeleteArgs) -> anyhow::Result<()> {
    let (refs, kind) = if !args.filenames.is_empty() {
        let inputs = files::collect(
            &args.filenames,
            args.recursive,
            &mut std::io::stdin().lock(),
            drover_proto::MAX_REQUEST_BYTES,
        )?;
        let opts = env.parse_options(ParseOptions {
            lenient: true,
            skip_unsupported_kinds: true,
            ..ParseOptions::default()
        })?;
        let parsed = manifest::parse_files(&inputs, &opts)?;
        let refs: Vec<pb::DeploymentRef> = parsed
            .deployments
            .iter()
            .map(|d| pb::DeploymentRef {
                namespace: d.metadata.namespace.clone(),
                name: d.metadata.name.clone(),
            })
            .collect();
        if refs.is_empty() {
            bail!("no deployments in the given files");
        }
        (refs, ResourceKind::Deployment)
    } else {
        if args.resources.is_empty() {
            bail!("give TYPE NAME... or -f FILE (e.g. droverctl delete deployment web)");
        }
        let selection = Selection::parse(&args.resources)?;
        match selection.kind {
            ResourceKind::Deployment => {}
            ResourceKind::Replica => {
                bail!("droverctl cannot delete replicas; scale or delete their deployment instead")
            }
            ResourceKind::Node => {
                bail!("droverctl cannot delete nodes; only deployments can be deleted")
            }
            ResourceKind::Event => {
                bail!("droverctl cannot delete events; the oldest are dropped as new ones come")
            }
        }
        if selection.names.is_empty() {
            bail!(
                "resource(s) were provided, but no name was specified (e.g. droverctl delete {} web)",
                selection.kind.singular()
            );
        }
        let namespace = env.settings()?.namespace;
        let refs = selection
            .names
            .iter()
            .map(|name| pb::DeploymentRef {
                namespace: namespace.clone(),
                name: name.clone(),
            })
            .collect();
        (refs, selection.kind)
    };

    let (mut client, _) = env.client()?;
    let request = pb::DeleteDeploymentsRequest {
        deployments: refs,
        ignore_not_found: args.ignore_not_found,
    };
    let response = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.delete_deployments(request).await }
        })
        .await?;
    print(&deleted_lines(kind, &response.deleted))
}

/// `deployment.apps "web" deleted`, one per deleted deployment.
pub fn deleted_lines(kind: ResourceKind, deleted: &[pb::DeploymentRef]) -> String {
    deleted
        .iter()
        .map(|r| format!("{} deleted\n", kind.quoted_name(&r.name)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_lines_quote_names() {
        let deleted = [
            pb::DeploymentRef {
                namespace: "default".into(),
                name: "web".into(),
            },
            pb::DeploymentRef {
                namespace: "prod".into(),
                name: "api".into(),
            },
        ];
        assert_eq!(
            deleted_lines(ResourceKind::Deployment, &deleted),
            "deployment.apps \"web\" deleted\ndeployment.apps \"api\" deleted\n"
        );
    }
}
