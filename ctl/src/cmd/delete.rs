//! `droverctl delete -f FILE|DIR|- [-R]`, `droverctl delete deployment NAME...`
//! and `droverctl delete configmap|secret NAME...` (see `config_objects.rs`)
//!
//! Names from files come from parsing them with the manifest parser, each in
//! the namespace its document names. Parsing is lenient and skips other kinds:
//! what matters for deleting is which deployments the files describe. All
//! names go in one request; the controller deletes all or none.
//!
//! As kubectl's `--wait=true`, it then waits until the deleted deployments'
//! replicas are gone from their hosts (`--wait=false` returns at once):
//! until `ListReplicas` lists none of them, in any state.

use anyhow::bail;
use drover_manifest::{self as manifest, ParseOptions};
use drover_proto::pb;

use std::time::Instant;

use super::get::{list_deployments, list_replicas, no_resources, Selectors};
use super::wait::Changes;
use super::{print, Env};
use crate::cli::{DeleteArgs, WaitLimit};
use crate::client::Client;
use crate::files;
use crate::output;
use crate::resource::{ResourceKind, Selection};

pub async fn run(env: &Env, mut args: DeleteArgs) -> anyhow::Result<()> {
    if args.filenames.is_empty() && !args.resources.is_empty() {
        let selection = Selection::parse(&args.resources)?;
        if selection.kind == ResourceKind::Node {
            return delete_nodes(env, &args, &selection.names).await;
        }
    }
    let grace = check_grace(&args)?;
    if args.force {
        crate::print_warning(
            "Immediate deletion does not wait for confirmation that the running replicas have stopped.",
        );
        args.wait = false;
    }
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
        // The files' ConfigMaps and Secrets go first, one call per kind and
        // namespace; then the deployments.
        let mut config_lines = String::new();
        for (kind, objects) in [
            (
                ResourceKind::ConfigMap,
                parsed
                    .config_maps
                    .iter()
                    .map(|c| &c.metadata)
                    .collect::<Vec<_>>(),
            ),
            (
                ResourceKind::Secret,
                parsed.secrets.iter().map(|s| &s.metadata).collect(),
            ),
        ] {
            let namespaces: std::collections::BTreeSet<&str> =
                objects.iter().map(|m| m.namespace.as_str()).collect();
            for ns in namespaces {
                let names: Vec<String> = objects
                    .iter()
                    .filter(|m| m.namespace == ns)
                    .map(|m| m.name.clone())
                    .collect();
                let (mut client, _) = env.client()?;
                config_lines.push_str(
                    &super::config_objects::delete(
                        &mut client,
                        kind,
                        ns,
                        &names,
                        args.ignore_not_found,
                    )
                    .await?,
                );
            }
        }
        let services: Vec<&manifest::ObjectMeta> =
            parsed.services.iter().map(|s| &s.metadata).collect();
        let namespaces: std::collections::BTreeSet<&str> =
            services.iter().map(|m| m.namespace.as_str()).collect();
        for ns in namespaces {
            let names: Vec<String> = services
                .iter()
                .filter(|m| m.namespace == ns)
                .map(|m| m.name.clone())
                .collect();
            let (mut client, _) = env.client()?;
            config_lines.push_str(
                &super::services::delete(&mut client, ns, &names, args.ignore_not_found).await?,
            );
        }
        if parsed.deployments.is_empty() && !config_lines.is_empty() {
            return print(&config_lines);
        }
        print(&config_lines)?;
        let refs: Vec<pb::DeploymentRef> = parsed
            .deployments
            .iter()
            .map(|d| pb::DeploymentRef {
                namespace: d.metadata.namespace.clone(),
                name: d.metadata.name.clone(),
            })
            .collect();
        if refs.is_empty() {
            bail!("no deployments, services, configmaps or secrets in the given files");
        }
        (refs, ResourceKind::Deployment)
    } else {
        if args.resources.is_empty() {
            bail!("give TYPE NAME... or -f FILE (e.g. droverctl delete deployment web)");
        }
        let selecting = args.selector.is_some() || args.field_selector.is_some() || args.all;
        let selection = Selection::parse(&args.resources)?;
        match selection.kind {
            ResourceKind::Deployment => {}
            ResourceKind::Service => {
                if selecting {
                    bail!("services are deleted by name (e.g. droverctl delete svc NAME)");
                }
                if selection.names.is_empty() {
                    bail!(
                        "resource(s) were provided, but no name was specified (e.g. droverctl delete svc NAME)"
                    );
                }
                let namespace = env.settings()?.namespace;
                let (mut client, _) = env.client()?;
                let lines = super::services::delete(
                    &mut client,
                    &namespace,
                    &selection.names,
                    args.ignore_not_found,
                )
                .await?;
                return print(&lines);
            }
            ResourceKind::Endpoints => {
                bail!("endpoints follow their Service; delete the Service (droverctl delete svc NAME)")
            }
            ResourceKind::ConfigMap | ResourceKind::Secret => {
                if args.selector.is_some() || args.field_selector.is_some() || args.all {
                    bail!(
                        "{} are deleted by name (e.g. droverctl delete {} NAME)",
                        selection.kind.plural(),
                        selection.kind.singular()
                    );
                }
                if selection.names.is_empty() {
                    bail!(
                        "resource(s) were provided, but no name was specified (e.g. droverctl delete {} NAME)",
                        selection.kind.singular()
                    );
                }
                let namespace = env.settings()?.namespace;
                let (mut client, _) = env.client()?;
                let lines = super::config_objects::delete(
                    &mut client,
                    selection.kind,
                    &namespace,
                    &selection.names,
                    args.ignore_not_found,
                )
                .await?;
                return print(&lines);
            }
            ResourceKind::Replica => {
                bail!("droverctl cannot delete replicas; scale or delete their deployment instead")
            }
            ResourceKind::Node => return delete_nodes(env, &args, &selection.names).await,
            ResourceKind::Event => {
                bail!("droverctl cannot delete events; the oldest are dropped as new ones come")
            }
        }
        if selecting && !selection.names.is_empty() {
            bail!("give names, a selector (-l, --field-selector) or --all, one of them");
        }
        if selection.names.is_empty() && !selecting {
            bail!(
                "resource(s) were provided, but no name was specified (e.g. droverctl delete {} web, or -l app=web, or --all)",
                selection.kind.singular()
            );
        }
        let namespace = env.settings()?.namespace;
        let names = if selecting {
            let selectors = Selectors::new(
                selection.kind,
                args.selector.as_deref(),
                args.field_selector.as_deref(),
            )?;
            let (mut client, _) = env.client()?;
            let found = list_deployments(&mut client, &namespace, &selectors, None).await?;
            if found.is_empty() {
                crate::print_note(&no_resources(&namespace, false));
                return Ok(());
            }
            found.into_iter().map(|d| d.name).collect()
        } else {
            selection.names.clone()
        };
        let refs = names
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
        grace_period_seconds: grace,
    };
    let response = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.delete_deployments(request).await }
        })
        .await?;
    if args.output.is_some() {
        let names: String = response
            .deleted
            .iter()
            .map(|r| format!("{}\n", kind.slash_name(&r.name)))
            .collect();
        print(&names)?;
    } else {
        print(&deleted_lines(kind, &response.deleted))?;
    }
    if args.wait {
        wait_gone(&mut client, &response.deleted, args.timeout).await?;
    }
    Ok(())
}

/// `droverctl delete node NAME...` (admin only): the controller forgets the
/// nodes, all or none; a Ready one is refused unless `--force` (its agent is
/// still at work there). Their replicas are rescheduled, their certificates
/// revoked, and their names free for a join token. Nothing to wait for.
async fn delete_nodes(env: &Env, args: &DeleteArgs, names: &[String]) -> anyhow::Result<()> {
    if args.selector.is_some() || args.field_selector.is_some() || args.all {
        bail!("give the names of the nodes to delete (e.g. droverctl delete node n2); -l, --field-selector and --all select deployments only");
    }
    if names.is_empty() {
        bail!(
            "resource(s) were provided, but no name was specified (e.g. droverctl delete node n2)"
        );
    }
    if args.grace_period != -1 {
        bail!("--grace-period applies to deployments' replicas, not to nodes");
    }
    let (mut client, _) = env.client()?;
    let mut nodes = names.to_vec();
    if args.ignore_not_found {
        let known: std::collections::BTreeSet<String> = super::get::list_nodes(&mut client, None)
            .await?
            .into_iter()
            .map(|n| n.name)
            .collect();
        nodes.retain(|n| known.contains(n));
        if nodes.is_empty() {
            return Ok(());
        }
    }
    let request = pb::DeleteNodesRequest {
        nodes,
        force: args.force,
    };
    let response = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.delete_nodes(request).await }
        })
        .await?;
    let lines: String = response
        .deleted
        .iter()
        .map(|n| match args.output {
            Some(_) => format!("{}\n", ResourceKind::Node.slash_name(n)),
            None => format!("{} deleted\n", ResourceKind::Node.quoted_name(n)),
        })
        .collect();
    print(&lines)
}

/// Until no replica of the deleted deployments is listed (in any state:
/// a replica being stopped is still on its host), reading again on each of
/// the controller's changes.
pub async fn wait_gone(
    client: &mut Client,
    deleted: &[pb::DeploymentRef],
    timeout: WaitLimit,
) -> anyhow::Result<()> {
    let deadline = timeout.0.map(|t| Instant::now() + t);
    let mut changes = Changes::default();
    loop {
        // One list per namespace, however many deployments were deleted.
        let mut left = Vec::new();
        let namespaces: std::collections::BTreeSet<&str> =
            deleted.iter().map(|r| r.namespace.as_str()).collect();
        for ns in namespaces {
            let replicas = list_replicas(client, ns, "", None).await?;
            for r in deleted.iter().filter(|r| r.namespace == ns) {
                let n = replicas.iter().filter(|x| x.deployment == r.name).count();
                if n > 0 {
                    left.push((r.name.clone(), n));
                }
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if !changes.next_until(client, deadline).await {
            let what: Vec<String> = left
                .iter()
                .map(|(name, n)| format!("{n} of deployment {name:?}"))
                .collect();
            bail!(
                "timed out after {} waiting for the deleted deployments' replicas to be gone; still there: {} (the deletion goes on)",
                output::human_duration(timeout.0.unwrap_or_default()),
                what.join(", ")
            );
        }
    }
}

/// kubectl's `--grace-period` and `--force`: -1 keeps each replica's
/// template grace period, N gives every replica N seconds to stop, and 0
/// (with `--force` only, as kubectl) kills them at once without waiting.
/// Returns the grace period to send, if any.
fn check_grace(args: &DeleteArgs) -> anyhow::Result<Option<u32>> {
    match (args.grace_period, args.force) {
        (-1, _) => Ok(None),
        (0, true) => Ok(Some(0)),
        (0, false) => bail!("--grace-period=0 needs --force (kubectl's immediate deletion)"),
        (n, _) if n < -1 => bail!("--grace-period must be -1, 0 or more, not {n}"),
        (n, _) => u32::try_from(n)
            .map(Some)
            .map_err(|_| anyhow::anyhow!("--grace-period={n} is too large")),
    }
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
