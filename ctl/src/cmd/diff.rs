//! `droverctl diff -f FILE|DIR|- [-R]`: what `apply` would change, as a
//! unified diff of each stored deployment and the one the files describe,
//! both rendered as `get -o yaml` prints them. Exit 0 when nothing would
//! change, 1 when something would (as kubectl), with the diff on stdout.
//!
//! The files are parsed with the same code and defaults the controller uses,
//! so a field left out of a file that equals its default is no difference.
//! ConfigMaps and Secrets are compared too; a Secret's values never print:
//! each is `***`, marked `(before)`/`(after)` where it changes, as kubectl.

use anyhow::bail;
use drover_manifest::{self as manifest, ParseOptions};
use drover_proto::pb;
use similar::TextDiff;
use tonic::Code;

use super::{config_objects, print, Env};
use crate::cli::DiffArgs;
use crate::files;
use crate::output;
use crate::resource::ResourceKind;
use crate::AlreadyReported;

pub async fn run(env: &Env, args: DiffArgs) -> anyhow::Result<()> {
    let inputs = files::collect(
        &args.filenames,
        args.recursive,
        &mut std::io::stdin().lock(),
        drover_proto::MAX_REQUEST_BYTES,
    )?;
    let parsed = manifest::parse_files(&inputs, &env.parse_options(ParseOptions::default())?)?;
    if parsed.deployments.is_empty()
        && parsed.config_maps.is_empty()
        && parsed.secrets.is_empty()
        && parsed.services.is_empty()
    {
        bail!("no objects passed to diff");
    }
    let (mut client, _) = env.client()?;
    let mut changed = 0;
    let mut text = String::new();
    let mut add = |live: String, merged: String, id: String| {
        if live == merged {
            return;
        }
        changed += 1;
        let diff = TextDiff::from_lines(&live, &merged);
        text.push_str(
            &diff
                .unified_diff()
                .context_radius(3)
                .header(&format!("live/{id}"), &format!("merged/{id}"))
                .to_string(),
        );
    };
    for c in &parsed.config_maps {
        let m = &c.metadata;
        let live = config_objects::list(
            &mut client,
            ResourceKind::ConfigMap,
            &m.namespace,
            std::slice::from_ref(&m.name),
            "",
            false,
            None,
        )
        .await?;
        let live = match live.first().map(|i| &i.object) {
            Some(config_objects::Object::ConfigMap(l)) => {
                output::to_yaml(&manifest::render_config_map(l))?
            }
            _ => String::new(),
        };
        let merged = output::to_yaml(&manifest::render_config_map(c))?;
        add(
            live,
            merged,
            format!("configmap/{}/{}", m.namespace, m.name),
        );
    }
    for s in &parsed.secrets {
        let m = &s.metadata;
        // Values are compared, never shown: both sides are masked.
        let live = config_objects::list(
            &mut client,
            ResourceKind::Secret,
            &m.namespace,
            std::slice::from_ref(&m.name),
            "",
            true,
            None,
        )
        .await?;
        let live = match live.first().map(|i| &i.object) {
            Some(config_objects::Object::Secret(l)) => Some(l.clone()),
            _ => None,
        };
        let (before, after) = config_objects::masked_pair(live.as_ref(), s);
        let before = match before {
            Some(v) => output::to_yaml(&v)?,
            None => String::new(),
        };
        add(
            before,
            output::to_yaml(&after)?,
            format!("secret/{}/{}", m.namespace, m.name),
        );
    }
    for sv in &parsed.services {
        let m = &sv.metadata;
        let live = super::services::list(
            &mut client,
            &m.namespace,
            std::slice::from_ref(&m.name),
            "",
            None,
        )
        .await?;
        // The new side keeps what was allocated for the live one, as an
        // apply would (an address or node port the file leaves out stays).
        let (live, merged) = match live.first().map(|i| &i.object) {
            Some(l) => (
                output::to_yaml(&manifest::render_service(
                    &l.service,
                    l.cluster_ip,
                    &l.node_ports,
                ))?,
                output::to_yaml(&manifest::render_service(sv, l.cluster_ip, &l.node_ports))?,
            ),
            None => (
                String::new(),
                output::to_yaml(&manifest::render_service(sv, None, &[]))?,
            ),
        };
        add(live, merged, format!("service/{}/{}", m.namespace, m.name));
    }
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
        add(live, merged, format!("{namespace}/{name}"));
    }
    print(&text)?;
    if changed > 0 {
        // Differences are not an error to report, only an exit status.
        return Err(AlreadyReported(0).into());
    }
    Ok(())
}
