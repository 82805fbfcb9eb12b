//! `droverctl rollout status|history|undo|pause|resume deployment NAME`, and
//! the wait behind `apply --wait`.
//!
//! ```text
//!  wait: GetDeployment every 250 ms ─▶ one line per change of progress
//!        ├─ every replica updated and available, no old left ─▶ done (exit 0)
//!        ├─ progress deadline passed (failed)                 ─▶ exit 1 with the reason
//!        ├─ rolled back by drover.io/auto-rollback            ─▶ exit 1 with the reason
//!        └─ --timeout                                         ─▶ exit 1 with where it stands
//! ```

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::bail;
use drover_proto::pb;
use indicatif::{ProgressBar, ProgressStyle};
use tonic::Code;

use super::get::not_found;
use super::{print, Env};
use crate::cli::{RolloutCommand, RolloutStatusArgs, RolloutTarget, RolloutUndoArgs};
use crate::client::Client;
use crate::output::{self, rfc3339, Table};
use crate::resource::{ResourceKind, Selection};

const POLL: Duration = Duration::from_millis(250);

pub async fn run(env: &Env, cmd: RolloutCommand) -> anyhow::Result<()> {
    match cmd {
        RolloutCommand::Status(args) => status(env, args).await,
        RolloutCommand::History(target) => history(env, target).await,
        RolloutCommand::Undo(args) => undo(env, args).await,
        RolloutCommand::Pause(target) => pause(env, target, true).await,
        RolloutCommand::Resume(target) => pause(env, target, false).await,
        RolloutCommand::Restart(args) => {
            super::mutate::restart(env, &args.target.resources, &args.output).await
        }
    }
}

/// The one deployment a rollout command names.
fn deployment_name(target: &RolloutTarget) -> anyhow::Result<String> {
    let selection = Selection::parse(&target.resources)?;
    if selection.kind != ResourceKind::Deployment {
        bail!(
            "rollouts are about deployments, not {} (e.g. droverctl rollout status deployment web)",
            selection.kind.plural()
        );
    }
    match selection.names.as_slice() {
        [name] => Ok(name.clone()),
        [] => bail!("name the deployment (e.g. droverctl rollout status deployment web)"),
        _ => bail!("name exactly one deployment"),
    }
}

/// One deployment, or the kubectl sentence when it does not exist.
pub(super) async fn fetch(
    client: &mut Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<pb::Deployment> {
    let answer = client
        .call(|mut c| {
            let request = pb::GetDeploymentRequest {
                namespace: namespace.to_string(),
                name: name.to_string(),
                read: None,
            };
            async move { c.get_deployment(request).await }
        })
        .await;
    match answer {
        Ok(d) => Ok(d),
        Err(e) if e.code() == Some(Code::NotFound) => {
            bail!("{}", not_found(ResourceKind::Deployment, name, namespace))
        }
        Err(e) => Err(e.into()),
    }
}

/// Where a rollout stands, in kubectl's words.
#[derive(Debug, PartialEq, Eq)]
enum Stage {
    Waiting(String),
    Done(String),
    Failed(String),
}

fn stage(d: &pb::Deployment, desired: u32, started_at_revision: u64) -> Stage {
    let s = d.status.clone().unwrap_or_default();
    let name = &d.name;
    if !s.rolled_back.is_empty() && s.revision != started_at_revision {
        return Stage::Failed(format!("deployment {name:?} {}", s.rolled_back));
    }
    if !s.failed.is_empty() {
        return Stage::Failed(format!(
            "deployment {name:?} exceeded its progress deadline: {}",
            s.failed
        ));
    }
    if s.complete {
        return Stage::Done(format!("deployment {name:?} successfully rolled out"));
    }
    if s.paused {
        return Stage::Failed(format!(
            "deployment {name:?} is paused; `droverctl rollout resume deployment {name}` continues it"
        ));
    }
    let waiting = |what: String| {
        Stage::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {what}..."
        ))
    };
    if s.updated < desired {
        waiting(format!(
            "{} out of {desired} new replicas have been updated",
            s.updated
        ))
    } else if s.replicas > s.updated {
        waiting(format!(
            "{} old replicas are pending termination",
            s.replicas - s.updated
        ))
    } else {
        waiting(format!(
            "{} of {} updated replicas are available",
            s.updated_available, s.updated
        ))
    }
}

/// How [`wait`] shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// kubectl's `rollout status` lines.
    Kubectl,
    /// Updated/ready/available of desired: a bar redrawn in place on a
    /// terminal, a line per change otherwise (`apply --wait`).
    Counts,
}

/// Follow one deployment's rollout until it completes, fails or `timeout`
/// passes, showing progress whenever it changes.
pub async fn wait(
    client: &mut Client,
    namespace: &str,
    name: &str,
    timeout: Option<Duration>,
    show: Show,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let first = fetch(client, namespace, name).await?;
    let revision = first.status.clone().unwrap_or_default().revision;
    // On a terminal `apply --wait` redraws one bar in place; elsewhere
    // (logs, CI) it prints a line whenever the counts change.
    let bar = (show == Show::Counts && std::io::stdout().is_terminal()).then(|| progress_bar(name));
    let mut last = String::new();
    let mut d = first;
    loop {
        let desired = output::model_of(&d)?.spec.replicas;
        let stage = stage(&d, desired, revision);
        let line = match (&stage, show) {
            (Stage::Waiting(line), Show::Kubectl) => line.clone(),
            (_, Show::Counts) => format!("deployment.apps/{}: {}", d.name, counts(&d, desired)),
            _ => String::new(),
        };
        if let Some(bar) = &bar {
            let s = d.status.clone().unwrap_or_default();
            bar.set_length(u64::from(desired));
            bar.set_position(u64::from(s.updated_available.min(desired)));
            bar.set_message(counts(&d, desired));
        } else if line != last && !line.is_empty() {
            print(&format!("{line}\n"))?;
        }
        last = line;
        let end_bar = || {
            if let Some(bar) = &bar {
                bar.abandon();
            }
        };
        match stage {
            Stage::Done(line) => {
                end_bar();
                return print(&format!("{line}\n"));
            }
            Stage::Failed(line) => {
                end_bar();
                bail!("{line}");
            }
            Stage::Waiting(_) => {}
        }
        if let Some(limit) = timeout.filter(|t| started.elapsed() >= *t) {
            end_bar();
            bail!(
                "timed out after {}s waiting for deployment {name:?}: {}",
                limit.as_secs(),
                last.trim_end_matches("...")
            );
        }
        tokio::time::sleep(POLL).await;
        d = fetch(client, namespace, name).await?;
    }
}

/// `3 of 6 updated, 5 ready, 4 available`.
fn counts(d: &pb::Deployment, desired: u32) -> String {
    let s = d.status.clone().unwrap_or_default();
    format!(
        "{} of {desired} updated, {} ready, {} available",
        s.updated, s.ready, s.available
    )
}

/// `deployment.apps/web [############------------] 3 of 4 updated, ...`: the
/// bar is the share of desired replicas that are updated and available.
fn progress_bar(name: &str) -> ProgressBar {
    let style = ProgressStyle::with_template("deployment.apps/{prefix} [{bar:24}] {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("#>-");
    ProgressBar::new(0)
        .with_style(style)
        .with_prefix(name.to_string())
}

async fn status(env: &Env, args: RolloutStatusArgs) -> anyhow::Result<()> {
    let name = deployment_name(&args.target)?;
    let (mut client, settings) = env.client()?;
    if args.watch {
        return wait(
            &mut client,
            &settings.namespace,
            &name,
            args.timeout.0,
            Show::Kubectl,
        )
        .await;
    }
    let d = fetch(&mut client, &settings.namespace, &name).await?;
    let desired = output::model_of(&d)?.spec.replicas;
    let revision = d.status.clone().unwrap_or_default().revision;
    match stage(&d, desired, revision) {
        Stage::Done(line) | Stage::Waiting(line) => print(&format!("{line}\n")),
        Stage::Failed(line) => bail!("{line}"),
    }
}

async fn history(env: &Env, target: RolloutTarget) -> anyhow::Result<()> {
    let name = deployment_name(&target)?;
    let (mut client, settings) = env.client()?;
    let d = fetch(&mut client, &settings.namespace, &name).await?;
    let s = d.status.clone().unwrap_or_default();
    let mut table = Table::new([
        "REVISION",
        "CHANGE-TIME",
        "IMAGE",
        "REPLICAS",
        "CHANGE-CAUSE",
    ]);
    for r in &s.revisions {
        let image = serde_json::from_str::<drover_manifest::PodTemplate>(&r.template_json)
            .ok()
            .and_then(|t| t.spec.containers.first().map(|c| c.image.clone()))
            .unwrap_or_default();
        table.push(vec![
            r.number.to_string(),
            rfc3339(r.created_unix_ms),
            image,
            r.replicas.to_string(),
            if r.change_cause.is_empty() {
                "<none>".into()
            } else {
                r.change_cause.clone()
            },
        ]);
    }
    print(&format!("deployment.apps/{name}\n{}", table.render()))
}

async fn undo(env: &Env, args: RolloutUndoArgs) -> anyhow::Result<()> {
    let name = deployment_name(&args.target)?;
    let (mut client, settings) = env.client()?;
    let namespace = settings.namespace;
    let answer = client
        .call(|mut c| {
            let request = pb::RolloutUndoRequest {
                namespace: namespace.clone(),
                name: name.clone(),
                to_revision: args.to_revision,
            };
            async move { c.rollout_undo(request).await }
        })
        .await;
    match answer {
        Ok(r) if r.changed => print(&format!(
            "deployment.apps/{name} rolled back (now revision {})\n",
            r.revision
        )),
        Ok(r) => print(&format!(
            "deployment.apps/{name} skipped rollback (revision {} is already current)\n",
            r.revision
        )),
        Err(e) if e.code() == Some(Code::NotFound) => {
            bail!("{}", not_found(ResourceKind::Deployment, &name, &namespace))
        }
        Err(e) => Err(e.into()),
    }
}

async fn pause(env: &Env, target: RolloutTarget, paused: bool) -> anyhow::Result<()> {
    let name = deployment_name(&target)?;
    let (mut client, settings) = env.client()?;
    let namespace = settings.namespace;
    let answer = client
        .call(|mut c| {
            let request = pb::RolloutPauseRequest {
                namespace: namespace.clone(),
                name: name.clone(),
                paused,
            };
            async move { c.rollout_pause(request).await }
        })
        .await;
    let verb = if paused { "paused" } else { "resumed" };
    match answer {
        Ok(r) if r.changed => print(&format!("deployment.apps/{name} {verb}\n")),
        Ok(_) => print(&format!("deployment.apps/{name} is already {verb}\n")),
        Err(e) if e.code() == Some(Code::NotFound) => {
            bail!("{}", not_found(ResourceKind::Deployment, &name, &namespace))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(status: pb::DeploymentStatus) -> pb::Deployment {
        pb::Deployment {
            name: "web".into(),
            status: Some(status),
            ..Default::default()
        }
    }

    #[test]
    fn stages_read_like_kubectl() {
        let waiting = |s: pb::DeploymentStatus| match stage(&deployment(s), 4, 2) {
            Stage::Waiting(line) => line,
            other => panic!("{other:?}"),
        };
        let updating = pb::DeploymentStatus {
            replicas: 5,
            updated: 1,
            revision: 2,
            ..Default::default()
        };
        assert_eq!(
            waiting(updating),
            "Waiting for deployment \"web\" rollout to finish: 1 out of 4 new replicas have been updated..."
        );
        let old_left = pb::DeploymentStatus {
            replicas: 5,
            updated: 4,
            revision: 2,
            ..Default::default()
        };
        assert!(waiting(old_left).ends_with("1 old replicas are pending termination..."));
        let done = pb::DeploymentStatus {
            complete: true,
            revision: 2,
            ..Default::default()
        };
        assert_eq!(
            stage(&deployment(done), 4, 2),
            Stage::Done("deployment \"web\" successfully rolled out".into())
        );
        let rolled_back = pb::DeploymentStatus {
            complete: true,
            revision: 3,
            rolled_back: "rolled back from revision 2 by drover.io/auto-rollback: ...".into(),
            ..Default::default()
        };
        assert!(matches!(
            stage(&deployment(rolled_back), 4, 2),
            Stage::Failed(line) if line.contains("rolled back from revision 2")
        ));
    }

    #[test]
    fn progress_counts_updated_ready_and_available() {
        let d = deployment(pb::DeploymentStatus {
            updated: 3,
            ready: 5,
            available: 4,
            updated_available: 2,
            ..Default::default()
        });
        assert_eq!(counts(&d, 4), "3 of 4 updated, 5 ready, 4 available");
        let bar = progress_bar("web");
        bar.set_length(4);
        bar.set_position(2);
        assert_eq!(bar.prefix(), "web");
        assert_eq!(bar.position(), 2);
    }
}
