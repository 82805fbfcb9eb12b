//! `droverctl diff -f FILE|DIR|- [-R]`: what `apply` would change, as a
//! unified diff of each stored deployment and the one the files describe,
//! both rendered as `get -o yaml` prints them. Exit 0 when nothing would
//! change, 1 when something would (as kubectl), with the diff on stdout.
//!
//! The files are parsed with the same code and defaults the controller uses,
//! so a field left out of a file that equals its default is no difference.

use anyhow::bail;
use drover_manifest::{self as manifest, ParseOptions};
use drover_proto::pb;
use similar::TextDiff;
use tonic::Code;

use super::{print, Env};
use crate::cli::DiffArgs;
use crate::files;
use crate::output;
use crate::AlreadyReported;

pub async fn run(env: &Env, args: DiffArgs) -> anyhow::Result<()> {
    let inputs = files::collect(
        &args.filenames,
        args.recursive,
        &mut std::io::stdin().lock(),
        drover_proto::MAX_REQUEST_BYTES,
    )?;
    let parsed = manifest::parse_files(&inputs, &env.parse_options(ParseOptions::default())?)?;
    if parsed.deployments.is_empty() {
        bail!("no objects passed to diff");
    }
    let (mut client, _) = env.client()?;
    let mut changed = 0;
    let mut text = String::new();
    for d in &parsed.deployments {
        let (namespace, name) = (&d.metadata.namespace, &d.metadata.name);
        let answer = client
            .call(|mut c| {
                let request = pb::GetDeploymentRequest {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    read: None,
                };
                async move { c.get_deployment(request).await }
            })
            .await;
        let live = match answer {
            Ok(stored) => {
                output::to_yaml(&manifest::render_kubernetes(&output::model_of(&stored)?))?
            }
            Err(e) if e.code() == Some(Code::NotFound) => String::new(),
            Err(e) => return Err(e.into()),
        };
        let merged = output::to_yaml(&manifest::render_kubernetes(d))?;
        if live == merged {
            continue;
        }
        changed += 1;
        let diff = TextDiff::from_lines(&live, &merged);
        text.push_str(
            &diff
                .unified_diff()
                .context_radius(3)
                .header(
                    &format!("live/{namespace}/{name}"),
                    &format!("merged/{namespace}/{name}"),
                )
                .to_string(),
        );
    }
    print(&text)?;
    if changed > 0 {
        // Differences are not an error to report, only an exit status.
        return Err(AlreadyReported(0).into());
    }
    Ok(())
}
