//! `droverctl apply -f FILE|DIR|- [-R] [--validate] [--skip-unsupported-kinds] [--dry-run]`
//!
//! ```text
//!  -f inputs ──files::collect──▶ (name, text)… ──parse_files──▶ errors? print, exit 1,
//!                                                   │           nothing sent
//!                                                   ▼
//!                     --dry-run=client: print "created (dry run)" and stop
//!                                                   ▼
//!                      ApplyRequest{files,…} ──▶ controller ──▶ one line per result
//! ```
//!
//! The files are sent as read, not as parsed: the controller parses them again
//! with the same code, so its document indexes and field paths match ours.

use anyhow::bail;
use drover_manifest::{self as manifest, ParseOptions};
use drover_proto::pb;
use prost::Message as _;

use super::{print, Env};
use crate::cli::{ApplyArgs, DryRun};
use crate::files::{self, human_bytes, human_bytes_ceil};
use crate::resource::ResourceKind;

pub async fn run(env: &Env, args: ApplyArgs) -> anyhow::Result<()> {
    let inputs = files::collect(
        &args.filenames,
        args.recursive,
        &mut std::io::stdin().lock(),
        drover_proto::MAX_REQUEST_BYTES,
    )?;
    let opts = env.parse_options(ParseOptions {
        lenient: !args.validate,
        skip_unsupported_kinds: args.skip_unsupported_kinds,
        ..ParseOptions::default()
    })?;
    let parsed = manifest::parse_files(&inputs, &opts)?;
    if parsed.deployments.is_empty()
        && parsed.config_maps.is_empty()
        && parsed.secrets.is_empty()
        && parsed.services.is_empty()
    {
        warn_all(&parsed.warnings);
        bail!("no objects passed to apply");
    }

    if args.dry_run == DryRun::Client {
        warn_all(&parsed.warnings);
        let names = parsed
            .config_maps
            .iter()
            .map(|c| ResourceKind::ConfigMap.slash_name(&c.metadata.name))
            .chain(
                parsed
                    .secrets
                    .iter()
                    .map(|s| ResourceKind::Secret.slash_name(&s.metadata.name)),
            )
            .chain(
                parsed
                    .services
                    .iter()
                    .map(|s| ResourceKind::Service.slash_name(&s.metadata.name)),
            )
            .chain(
                parsed
                    .deployments
                    .iter()
                    .map(|d| ResourceKind::Deployment.slash_name(&d.metadata.name)),
            );
        let lines: String = names
            .map(|name| {
                if args.output.is_some() {
                    format!("{name}\n")
                } else {
                    format!("{name} created (dry run)\n")
                }
            })
            .collect();
        return print(&lines);
    }

    let request = pb::ApplyRequest {
        files: inputs
            .into_iter()
            .map(|(name, content)| pb::ManifestFile { name, content })
            .collect(),
        dry_run: args.dry_run == DryRun::Server,
        lenient: opts.lenient,
        skip_unsupported_kinds: opts.skip_unsupported_kinds,
        namespace: opts.namespace.clone().unwrap_or_default(),
        enforce_namespace: opts.enforce_namespace,
        ..Default::default()
    };
    let size = request.encoded_len();
    if size > drover_proto::MAX_REQUEST_BYTES {
        bail!(
            "the apply request is {}; one apply accepts at most {}",
            human_bytes_ceil(size as u64),
            human_bytes(drover_proto::MAX_REQUEST_BYTES as u64)
        );
    }
    let (mut client, _) = env.client()?;
    let response = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.apply(request).await }
        })
        .await?;
    warn_all(&response.warnings);
    if args.output.is_some() {
        let names: String = response
            .results
            .iter()
            .map(|r| format!("{}\n", result_kind(r).slash_name(&r.name)))
            .collect();
        print(&names)?;
    } else {
        print(&result_lines(&response.results, args.dry_run))?;
    }
    if args.wait && args.dry_run == DryRun::None {
        for r in response
            .results
            .iter()
            .filter(|r| result_kind(r) == ResourceKind::Deployment)
        {
            super::rollout::wait(
                &mut client,
                &r.namespace,
                &r.name,
                args.timeout.0,
                super::rollout::Show::Counts,
            )
            .await?;
        }
    }
    Ok(())
}

/// `deployment.apps/web created`, one per result, marked for dry runs.
pub fn result_lines(results: &[pb::ApplyResult], dry_run: DryRun) -> String {
    let suffix = match dry_run {
        DryRun::None => "",
        DryRun::Client => " (dry run)",
        DryRun::Server => " (server dry run)",
    };
    results
        .iter()
        .map(|r| {
            let outcome = match pb::ApplyOutcome::try_from(r.outcome) {
                Ok(pb::ApplyOutcome::Created) => "created",
                Ok(pb::ApplyOutcome::Configured) => "configured",
                Ok(pb::ApplyOutcome::Unchanged) => "unchanged",
                _ => "applied",
            };
            format!("{} {outcome}{suffix}\n", result_kind(r).slash_name(&r.name))
        })
        .collect()
}

/// The kind of an applied object (empty: a Deployment, from older controllers).
fn result_kind(r: &pb::ApplyResult) -> ResourceKind {
    match r.kind.as_str() {
        "ConfigMap" => ResourceKind::ConfigMap,
        "Secret" => ResourceKind::Secret,
        "Service" => ResourceKind::Service,
        _ => ResourceKind::Deployment,
    }
}

fn warn_all(warnings: &[String]) {
    for w in warnings {
        crate::print_warning(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, outcome: pb::ApplyOutcome) -> pb::ApplyResult {
        pb::ApplyResult {
            namespace: "default".into(),
            name: name.into(),
            outcome: outcome as i32,
            generation: 1,
            kind: String::new(),
        }
    }

    #[test]
    fn one_line_per_result() {
        let results = [
            result("web", pb::ApplyOutcome::Created),
            result("api", pb::ApplyOutcome::Configured),
            result("db", pb::ApplyOutcome::Unchanged),
        ];
        assert_eq!(
            result_lines(&results, DryRun::None),
            "deployment.apps/web created\n\
             deployment.apps/api configured\n\
             deployment.apps/db unchanged\n"
        );
        assert_eq!(
            result_lines(&results[..1], DryRun::Server),
            "deployment.apps/web created (server dry run)\n"
        );
    }
}
