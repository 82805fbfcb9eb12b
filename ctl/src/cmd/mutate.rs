//! Changing a deployment without a file: `label`, `annotate`, `set image`,
//! `set env`, `patch`, `edit` and `rollout restart` (and `label|annotate
//! node`, which sends only its changes: see `label_nodes`).
//!
//! ```text
//!  GetDeployment ─▶ the stored model ─▶ the verb's change ─▶ Apply(YAML, expected_generation)
//!       ▲                                                        │
//!       └──── ABORTED: someone else wrote in between (retry) ◀───┘
//! ```
//!
//! Each is a normal apply of the whole changed deployment, so the controller
//! validates it with the same parser, records a revision when the template
//! changed, emits the same events, and `rollout status` follows it as after
//! `apply`. The apply carries the generation that was read: the controller
//! refuses it if the deployment changed in between, so two concurrent edits
//! cannot silently lose one. Non-interactive verbs then read and change again
//! (a few times); `edit` keeps the user's text and says so.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context};
use drover_manifest::{self as manifest, ParseOptions};
use drover_proto::pb;
use serde_json::Value;
use tonic::Code;

use super::get::{list_deployments, not_found, Selectors};
use super::{print, Env};
use crate::client::{Client, ClientError};
use crate::output;
use crate::resource::{ResourceKind, Selection};
use crate::verbs_cli::{EditArgs, LabelArgs, PatchArgs, SetCommand, SetEnvArgs, SetImageArgs};

/// How many times a verb reads and changes again after a concurrent write.
const CONFLICT_RETRIES: usize = 5;

/// What one change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changed {
    Yes,
    No,
}

/// The one deployment `TYPE NAME` or `TYPE/NAME` names, for `verb`.
fn one_deployment(resources: &[String], verb: &str) -> anyhow::Result<String> {
    let selection = Selection::parse(resources)?;
    if selection.kind != ResourceKind::Deployment {
        bail!(
            "droverctl {verb} works on deployments, not {} (e.g. droverctl {verb} deployment/web ...)",
            selection.kind.plural()
        );
    }
    match selection.names.as_slice() {
        [name] => Ok(name.clone()),
        [] => bail!("name the deployment (e.g. droverctl {verb} deployment/web ...)"),
        _ => bail!("name exactly one deployment"),
    }
}

/// Apply `text` as the new version of a deployment read at `generation`.
async fn apply_if(
    client: &mut Client,
    namespace: &str,
    file: &str,
    text: String,
    generation: u64,
) -> Result<pb::ApplyResponse, ClientError> {
    let request = pb::ApplyRequest {
        files: vec![pb::ManifestFile {
            name: file.to_string(),
            content: text,
        }],
        namespace: namespace.to_string(),
        expected_generation: generation,
        ..Default::default()
    };
    client
        .call(|mut c| {
            let request = request.clone();
            async move { c.apply(request).await }
        })
        .await
}

/// Read, change and apply one deployment, again after a concurrent write.
pub async fn update(
    client: &mut Client,
    namespace: &str,
    name: &str,
    mut change: impl FnMut(&mut manifest::Deployment) -> anyhow::Result<()>,
) -> anyhow::Result<Changed> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let d = super::rollout::fetch(client, namespace, name).await?;
        let before = output::model_of(&d)?;
        let mut after = before.clone();
        change(&mut after)?;
        if after == before {
            return Ok(Changed::No);
        }
        let text = output::to_yaml(&manifest::render_kubernetes(&after))?;
        let file = format!("deployment/{name}");
        match apply_if(client, namespace, &file, text, d.generation).await {
            Ok(_) => return Ok(Changed::Yes),
            Err(e) if e.code() == Some(Code::Aborted) && attempt < CONFLICT_RETRIES => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// `deployment.apps/web labeled`, or the name alone with `-o name`.
fn done(name: &str, what: &str, changed: Changed, output: &Option<String>) -> String {
    let slash = ResourceKind::Deployment.slash_name(name);
    match (output.is_some(), changed) {
        (true, _) => format!("{slash}\n"),
        (false, Changed::Yes) => format!("{slash} {what}\n"),
        (false, Changed::No) => format!("{slash} {what} (no change)\n"),
    }
}

/// `KEY=VALUE` sets, `KEY-` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    Set(String, String),
    Remove(String),
}

fn is_key_change(arg: &str) -> bool {
    arg.contains('=') || (arg.ends_with('-') && !arg.contains('/'))
}

/// Parse `KEY=VALUE` / `KEY-` arguments; `labels` also checks values as label values.
pub fn parse_key_changes(args: &[String], labels: bool) -> anyhow::Result<Vec<KeyChange>> {
    let what = if labels { "label" } else { "annotation" };
    let mut changes = Vec::new();
    for a in args {
        let change = if let Some((k, v)) = a.split_once('=') {
            KeyChange::Set(k.to_string(), v.to_string())
        } else if let Some(k) = a.strip_suffix('-') {
            KeyChange::Remove(k.to_string())
        } else {
            bail!("{a:?} is not KEY=VALUE or KEY- (a {what} to set or remove)");
        };
        let key = match &change {
            KeyChange::Set(k, _) | KeyChange::Remove(k) => k,
        };
        drover_proto::names::qualified_name(key)
            .map_err(|e| anyhow::anyhow!("invalid {what} key {key:?}: {e}"))?;
        if let (true, KeyChange::Set(_, v)) = (labels, &change) {
            drover_proto::names::label_value(v)
                .map_err(|e| anyhow::anyhow!("invalid label value {v:?}: {e}"))?;
        }
        changes.push(change);
    }
    Ok(changes)
}

/// Apply key changes to a map; a changed value needs `overwrite`.
pub fn change_keys(
    map: &mut std::collections::BTreeMap<String, String>,
    changes: &[KeyChange],
    overwrite: bool,
    what: &str,
) -> anyhow::Result<()> {
    for c in changes {
        match c {
            KeyChange::Set(k, v) => {
                if let Some(old) = map.get(k) {
                    if old != v && !overwrite {
                        bail!("{what} {k:?} already has a value ({old}), and --overwrite is false");
                    }
                }
                map.insert(k.clone(), v.clone());
            }
            KeyChange::Remove(k) => {
                map.remove(k);
            }
        }
    }
    Ok(())
}

/// `droverctl label` (`labels`) and `droverctl annotate`.
pub async fn label(env: &Env, args: LabelArgs, labels: bool) -> anyhow::Result<()> {
    let verb = if labels { "label" } else { "annotate" };
    let (resources, keys): (Vec<String>, Vec<String>) =
        args.args.iter().cloned().partition(|a| !is_key_change(a));
    if keys.is_empty() {
        bail!(
            "give at least one KEY=VALUE or KEY- (e.g. droverctl {verb} deployment/web tier=front)"
        );
    }
    let changes = parse_key_changes(&keys, labels)?;
    let selection = Selection::parse(&resources)?;
    if selection.kind == ResourceKind::Node {
        return label_nodes(env, &args, selection.names, &changes, labels).await;
    }
    if selection.kind != ResourceKind::Deployment {
        bail!(
            "droverctl {verb} works on deployments and nodes, not {}",
            selection.kind.plural()
        );
    }
    let selecting = args.selector.is_some() || args.all;
    let (mut client, settings) = env.client()?;
    let namespace = settings.namespace;
    let names = match (selection.names.is_empty(), selecting) {
        (false, false) => selection.names,
        (true, true) => {
            let selectors =
                Selectors::new(ResourceKind::Deployment, args.selector.as_deref(), None)?;
            list_deployments(&mut client, &namespace, &selectors, None)
                .await?
                .into_iter()
                .map(|d| d.name)
                .collect()
        }
        (true, false) => bail!("name the deployments, or select them with -l or --all"),
        (false, true) => bail!("give names, -l or --all, one of them"),
    };
    let what = if labels { "labeled" } else { "annotated" };
    for name in &names {
        let changed = update(&mut client, &namespace, name, |d| {
            let map = if labels {
                &mut d.metadata.labels
            } else {
                &mut d.metadata.annotations
            };
            change_keys(
                map,
                &changes,
                args.overwrite,
                if labels { "label" } else { "annotation" },
            )
        })
        .await?;
        print(&done(name, what, changed, &args.output))?;
    }
    Ok(())
}

/// `label|annotate node`: the changes go to the controller as they are
/// (set these keys, remove those), so concurrent ones compose; `--overwrite`
/// is checked against the node as read first, as kubectl does.
async fn label_nodes(
    env: &Env,
    args: &LabelArgs,
    names: Vec<String>,
    changes: &[KeyChange],
    labels: bool,
) -> anyhow::Result<()> {
    let (what, done_word) = if labels {
        ("label", "labeled")
    } else {
        ("annotation", "annotated")
    };
    let selecting = args.selector.is_some() || args.all;
    let (mut client, _) = env.client()?;
    let selectors = Selectors::new(ResourceKind::Node, args.selector.as_deref(), None)?;
    let all = super::get::list_nodes_selected(&mut client, &selectors, None).await?;
    let targets: Vec<pb::Node> = match (names.is_empty(), selecting) {
        (false, false) => {
            let (found, missing) = super::get::pick(all, &names, |n: &pb::Node| &n.name);
            if let Some(name) = missing.first() {
                bail!("{}", not_found(ResourceKind::Node, name, ""));
            }
            found
        }
        (true, true) => all,
        (true, false) => bail!("name the nodes, or select them with -l or --all"),
        (false, true) => bail!("give names, -l or --all, one of them"),
    };
    for node in &targets {
        let mut current: std::collections::BTreeMap<String, String> = if labels {
            node.labels.clone().into_iter().collect()
        } else {
            node.annotations.clone().into_iter().collect()
        };
        // The rule deployments follow, checked on what was read.
        change_keys(&mut current, changes, args.overwrite, what)?;
        let mut request = pb::ChangeNodeMetaRequest {
            node: node.name.clone(),
            ..Default::default()
        };
        for c in changes {
            match (c, labels) {
                (KeyChange::Set(k, v), true) => {
                    request.set_labels.insert(k.clone(), v.clone());
                }
                (KeyChange::Set(k, v), false) => {
                    request.set_annotations.insert(k.clone(), v.clone());
                }
                (KeyChange::Remove(k), true) => request.remove_labels.push(k.clone()),
                (KeyChange::Remove(k), false) => request.remove_annotations.push(k.clone()),
            }
        }
        let changed = client
            .call(|mut c| {
                let request = request.clone();
                async move { c.change_node_meta(request).await }
            })
            .await?
            .changed;
        let slash = ResourceKind::Node.slash_name(&node.name);
        print(&match (args.output.is_some(), changed) {
            (true, _) => format!("{slash}\n"),
            (false, true) => format!("{slash} {done_word}\n"),
            (false, false) => format!("{slash} {done_word} (no change)\n"),
        })?;
    }
    Ok(())
}

pub async fn set(env: &Env, cmd: SetCommand) -> anyhow::Result<()> {
    match cmd {
        SetCommand::Image(args) => set_image(env, args).await,
        SetCommand::Env(args) => set_env(env, args).await,
    }
}

/// `droverctl set image deployment/web CONTAINER=IMAGE... (* = every container)`.
async fn set_image(env: &Env, args: SetImageArgs) -> anyhow::Result<()> {
    let (resources, pairs): (Vec<String>, Vec<String>) =
        args.args.iter().cloned().partition(|a| !a.contains('='));
    let name = one_deployment(&resources, "set image")?;
    if pairs.is_empty() {
        bail!("give CONTAINER=IMAGE (e.g. droverctl set image deployment/web web=nginx:1.27)");
    }
    let mut images = Vec::new();
    for p in &pairs {
        let (container, image) = p.split_once('=').unwrap_or((p, ""));
        if container.is_empty() || image.is_empty() {
            bail!("{p:?} is not CONTAINER=IMAGE");
        }
        drover_proto::image::parse(image)
            .map_err(|e| anyhow::anyhow!("invalid image {image:?}: {e}"))?;
        images.push((container.to_string(), image.to_string()));
    }
    let (mut client, settings) = env.client()?;
    let changed = update(&mut client, &settings.namespace, &name, |d| {
        let containers = &mut d.spec.template.spec.containers;
        for (container, image) in &images {
            let mut found = false;
            for c in containers.iter_mut() {
                if container == "*" || c.name == *container {
                    c.image = image.clone();
                    found = true;
                }
            }
            if !found {
                bail!("deployment {name:?} has no container named {container:?}");
            }
        }
        Ok(())
    })
    .await?;
    print(&done(&name, "image updated", changed, &args.output))
}

/// `droverctl set env deployment/web NAME=VALUE... NAME-... [-c CONTAINER]`.
async fn set_env(env: &Env, args: SetEnvArgs) -> anyhow::Result<()> {
    let (resources, pairs): (Vec<String>, Vec<String>) =
        args.args.iter().cloned().partition(|a| !is_key_change(a));
    let name = one_deployment(&resources, "set env")?;
    if pairs.is_empty() {
        bail!("give NAME=VALUE or NAME- (e.g. droverctl set env deployment/web LOG_LEVEL=debug)");
    }
    let mut changes = Vec::new();
    for p in &pairs {
        let change = match p.split_once('=') {
            Some((k, v)) => KeyChange::Set(k.to_string(), v.to_string()),
            None => KeyChange::Remove(p.trim_end_matches('-').to_string()),
        };
        let key = match &change {
            KeyChange::Set(k, _) | KeyChange::Remove(k) => k,
        };
        drover_proto::names::env_var_name(key)
            .map_err(|e| anyhow::anyhow!("invalid environment variable name {key:?}: {e}"))?;
        changes.push(change);
    }
    let (mut client, settings) = env.client()?;
    let changed = update(&mut client, &settings.namespace, &name, |d| {
        let mut matched = false;
        for c in d.spec.template.spec.containers.iter_mut() {
            if args.container.as_ref().is_some_and(|want| *want != c.name) {
                continue;
            }
            matched = true;
            for change in &changes {
                match change {
                    KeyChange::Set(k, v) => match c.env.iter_mut().find(|e| e.name == *k) {
                        Some(e) => {
                            e.value = v.clone();
                            e.value_from = None;
                        }
                        None => c.env.push(manifest::EnvVar {
                            name: k.clone(),
                            value: v.clone(),
                            value_from: None,
                        }),
                    },
                    KeyChange::Remove(k) => c.env.retain(|e| e.name != *k),
                }
            }
        }
        if let (false, Some(want)) = (matched, &args.container) {
            bail!("deployment {name:?} has no container named {want:?}");
        }
        Ok(())
    })
    .await?;
    print(&done(&name, "env updated", changed, &args.output))
}

/// `droverctl rollout restart deployment/web`: a new revision that differs
/// only in the template annotation `kubectl.kubernetes.io/restartedAt`.
pub async fn restart(
    env: &Env,
    resources: &[String],
    output: &Option<String>,
) -> anyhow::Result<()> {
    let name = one_deployment(resources, "rollout restart")?;
    let (mut client, settings) = env.client()?;
    let now = drover_proto::timestamp::rfc3339(crate::output::now_ms());
    let changed = update(&mut client, &settings.namespace, &name, |d| {
        d.spec
            .template
            .metadata
            .annotations
            .insert(RESTARTED_AT.to_string(), now.clone());
        Ok(())
    })
    .await?;
    print(&done(&name, "restarted", changed, output))
}

/// kubectl's restart annotation on the pod template.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// The deployment as `edit` and `patch` see it: `get -o yaml` without status.
fn editable(d: &pb::Deployment) -> anyhow::Result<Value> {
    Ok(manifest::render_kubernetes(&output::model_of(d)?))
}

/// `droverctl patch deployment/web --type merge|json -p PATCH`.
pub async fn patch(env: &Env, args: PatchArgs) -> anyhow::Result<()> {
    let name = one_deployment(&args.resources, "patch")?;
    let patch: Value = serde_norway::from_str(&args.patch)
        .map_err(|e| anyhow::anyhow!("the patch is not JSON or YAML: {e}"))?;
    let json_patch = match args.patch_type.as_str() {
        "merge" => None,
        "json" => Some(
            serde_json::from_value::<json_patch::Patch>(patch.clone()).map_err(|e| {
                anyhow::anyhow!(
                    "the patch is not a JSON patch (a list of {{\"op\", \"path\", ...}}): {e}"
                )
            })?,
        ),
        other => bail!(
            "--type {other} is not supported: drover has no strategic merge; use --type merge or --type json"
        ),
    };
    let (mut client, settings) = env.client()?;
    let namespace = settings.namespace;
    let mut attempt = 0;
    let changed = loop {
        attempt += 1;
        let d = super::rollout::fetch(&mut client, &namespace, &name).await?;
        let before = editable(&d)?;
        let mut after = before.clone();
        match &json_patch {
            None => json_patch::merge(&mut after, &patch),
            Some(p) => json_patch::patch(&mut after, p)
                .map_err(|e| anyhow::anyhow!("cannot apply the JSON patch: {e}"))?,
        }
        if after == before {
            break Changed::No;
        }
        check_identity(&after, &namespace, &name)?;
        let text = serde_json::to_string_pretty(&after)?;
        match apply_if(&mut client, &namespace, "patch", text, d.generation).await {
            Ok(_) => break Changed::Yes,
            Err(e) if e.code() == Some(Code::Aborted) && attempt < CONFLICT_RETRIES => continue,
            Err(e) => return Err(e.into()),
        }
    };
    print(&done(&name, "patched", changed, &args.output))
}

/// A patch or an edit may not rename the object or move it.
fn check_identity(object: &Value, namespace: &str, name: &str) -> anyhow::Result<()> {
    let got_name = object["metadata"]["name"].as_str().unwrap_or_default();
    let got_ns = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or(namespace);
    if got_name != name || got_ns != namespace {
        bail!(
            "metadata.name and metadata.namespace cannot be changed (deployment {name:?} in {namespace:?})"
        );
    }
    if object["kind"].as_str() != Some("Deployment") {
        bail!("kind cannot be changed: this is a Deployment");
    }
    Ok(())
}

/// The editor command: `KUBE_EDITOR`, `EDITOR`, else `vi` (as kubectl).
fn editor() -> String {
    ["KUBE_EDITOR", "EDITOR"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "vi".to_string())
}

/// Run the editor on `path` through the shell, so `EDITOR="code -w"` works.
fn run_editor(path: &std::path::Path) -> anyhow::Result<()> {
    let editor = editor();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(path)
        .status()
        .with_context(|| format!("cannot run the editor {editor:?}"))?;
    if !status.success() {
        bail!("the editor {editor:?} exited with {status}; nothing was changed");
    }
    Ok(())
}

/// Lines starting with `#` at the top: kubectl's header, and the error of a bad edit.
fn strip_comments(text: &str) -> String {
    text.lines()
        .skip_while(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `droverctl edit deployment/web`: the YAML in `$EDITOR`; on save it is
/// checked and applied; a bad edit reopens the editor with the error on top;
/// an unchanged (or emptied) file changes nothing.
pub async fn edit(env: &Env, args: EditArgs) -> anyhow::Result<()> {
    let name = one_deployment(&args.resources, "edit")?;
    let (mut client, settings) = env.client()?;
    let namespace = settings.namespace;
    let d = super::rollout::fetch(&mut client, &namespace, &name).await?;
    let original = output::to_yaml(&editable(&d)?)?;
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let path: PathBuf = dir.path().join(format!("{name}-edit.yaml"));
    let header = "# Edit the deployment below and save to apply it; lines starting with '#' are\n\
                  # ignored, and an empty file cancels the edit.\n#\n";
    let mut content = format!("{header}{original}");
    loop {
        std::fs::write(&path, &content)
            .with_context(|| format!("cannot write {}", path.display()))?;
        run_editor(&path)?;
        let edited = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let body = strip_comments(&edited);
        if body.trim().is_empty() || body.trim() == original.trim() {
            crate::print_note("Edit cancelled, no changes made.\n");
            return Ok(());
        }
        let problem = match check_edit(&body, &namespace, &name) {
            Err(e) => Some(format!("{e:#}")),
            Ok(()) => {
                match apply_if(&mut client, &namespace, "edit", body.clone(), d.generation).await {
                    Ok(_) => None,
                    Err(e) if e.code() == Some(Code::Aborted) => {
                        let keep = std::env::temp_dir().join(format!("droverctl-edit-{name}.yaml"));
                        let saved = std::fs::File::create(&keep)
                            .and_then(|mut f| f.write_all(body.as_bytes()))
                            .is_ok();
                        let where_ = if saved {
                            format!("; your version is saved in {}", keep.display())
                        } else {
                            String::new()
                        };
                        bail!("{e}{where_}");
                    }
                    Err(e) if e.code() == Some(Code::InvalidArgument) => Some(e.to_string()),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        match problem {
            None => return print(&done(&name, "edited", Changed::Yes, &None)),
            Some(error) => {
                let comment: String = error.lines().map(|l| format!("# {l}\n")).collect();
                content = format!(
                    "# Please edit the deployment below. The edit was refused:\n{comment}#\n{body}\n"
                );
            }
        }
    }
}

/// An edit parses as exactly this one deployment (the controller checks it again).
fn check_edit(text: &str, namespace: &str, name: &str) -> anyhow::Result<()> {
    let parsed = manifest::parse_files(
        &[("edit".to_string(), text.to_string())],
        &ParseOptions {
            namespace: Some(namespace.to_string()),
            ..ParseOptions::default()
        },
    )?;
    match parsed.deployments.as_slice() {
        [d] if d.metadata.name == name && d.metadata.namespace == namespace => Ok(()),
        [_] => bail!(
            "metadata.name and metadata.namespace cannot be changed (deployment {name:?} in {namespace:?})"
        ),
        other => bail!("the edit must hold exactly one deployment, not {}", other.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn key_changes_set_remove_and_need_overwrite_to_replace() {
        let changes = parse_key_changes(
            &args(&["tier=front", "old-", "app.kubernetes.io/name=web"]),
            true,
        )
        .unwrap();
        let mut map: BTreeMap<String, String> =
            [("old".to_string(), "x".to_string())].into_iter().collect();
        change_keys(&mut map, &changes, false, "label").unwrap();
        assert_eq!(map.get("tier").map(String::as_str), Some("front"));
        assert!(!map.contains_key("old"));
        let again = parse_key_changes(&args(&["tier=back"]), true).unwrap();
        let e = change_keys(&mut map, &again, false, "label").unwrap_err();
        assert_eq!(
            e.to_string(),
            "label \"tier\" already has a value (front), and --overwrite is false"
        );
        change_keys(&mut map, &again, true, "label").unwrap();
        assert_eq!(map["tier"], "back");
        assert!(parse_key_changes(&args(&["tier=a b"]), true).is_err());
        assert!(parse_key_changes(&args(&["note=a b"]), false).is_ok());
        assert!(parse_key_changes(&args(&["-x=1"]), true).is_err());
    }

    #[test]
    fn comments_on_top_are_dropped() {
        assert_eq!(
            strip_comments("# a\n# b\nkind: X\n# kept\n"),
            "kind: X\n# kept"
        );
    }
}
