//! `droverctl wait TYPE/NAME... | TYPE -l SEL | TYPE --all --for=... [--timeout=30s]`,
//! and the wait behind `delete` (until no replica of a deleted deployment is left).
//!
//! ```text
//!  open WatchChanges ─▶ read the objects (Get/List, the same objects -o json prints)
//!        ▲                 ├─ every one meets the condition ─▶ "<kind>/<name> condition met", exit 0
//!        │                 ├─ --timeout passed              ─▶ exit 1: what was waited for, what it is now
//!        └── a change ◀────┘  else: until the controller applies a change (or the deadline)
//! ```
//!
//! The controller's `WatchChanges` stream says when its state changed (at most
//! ten times a second); the objects are read again only then. A broken stream
//! is opened again, on another controller if need be.

use std::time::{Duration, Instant};

use anyhow::bail;
use drover_proto::pb;
use serde_json::Value;

use super::get::{self, fetch_named, not_found, pick, Selectors};
use super::{print, Env};
use crate::client::Client;
use crate::output::template::Template;
use crate::output::{self, nodes, replicas};
use crate::resource::{ResourceKind, Selection};
use crate::verbs_cli::WaitArgs;

/// What `--for` asks for.
#[derive(Debug, Clone)]
pub enum For {
    /// `condition=NAME[=VALUE]`: the object's `status.conditions` entry of
    /// that type has that status (default `True`).
    Condition { name: String, value: String },
    /// `delete`: the object is gone (a deployment: its replicas too).
    Delete,
    /// `jsonpath={PATH}[=VALUE]`: the path's value equals VALUE (or, without
    /// one, the path matches something).
    JsonPath {
        path: String,
        template: Template,
        value: Option<String>,
    },
}

impl For {
    pub fn parse(text: &str) -> anyhow::Result<For> {
        if text == "delete" {
            return Ok(For::Delete);
        }
        if let Some(rest) = text.strip_prefix("condition=") {
            let (name, value) = match rest.split_once('=') {
                Some((n, v)) => (n, v),
                None => (rest, "True"),
            };
            if name.is_empty() || value.is_empty() {
                bail!("--for={text}: give condition=NAME or condition=NAME=VALUE (e.g. condition=Available)");
            }
            return Ok(For::Condition {
                name: name.to_string(),
                value: value.to_string(),
            });
        }
        if let Some(rest) = text.strip_prefix("jsonpath=") {
            let (path, value) = split_jsonpath(rest);
            if path.is_empty() {
                bail!("--for={text}: give jsonpath={{PATH}}=VALUE (e.g. jsonpath='{{.status.readyReplicas}}'=3)");
            }
            let template = Template::parse_relaxed(path)?;
            return Ok(For::JsonPath {
                path: path.to_string(),
                template,
                value: value.map(str::to_string),
            });
        }
        bail!("--for={text:?} is not condition=NAME[=VALUE], delete or jsonpath={{PATH}}[=VALUE]")
    }

    /// `condition=Available`, as the user wrote it (for messages).
    fn describe(&self) -> String {
        match self {
            For::Condition { name, value } if value == "True" => format!("condition={name}"),
            For::Condition { name, value } => format!("condition={name}={value}"),
            For::Delete => "delete".to_string(),
            For::JsonPath { path, value, .. } => match value {
                Some(v) => format!("jsonpath={path}={v}"),
                None => format!("jsonpath={path}"),
            },
        }
    }

    /// Whether `object` meets the condition, and if not, what it is now.
    /// `None` is an object that does not exist; `leftover` counts the
    /// replicas a deleted deployment still has.
    pub fn check(&self, object: Option<&Value>, leftover: usize) -> Result<(), String> {
        match (self, object) {
            (For::Delete, None) if leftover == 0 => Ok(()),
            (For::Delete, None) => Err(format!(
                "deleted, but {leftover} of its replicas are still on their hosts"
            )),
            (For::Delete, Some(_)) => Err("it still exists".to_string()),
            (_, None) => Err("it does not exist".to_string()),
            (For::Condition { name, value }, Some(o)) => {
                let conditions = o["status"]["conditions"].as_array();
                let found = conditions.into_iter().flatten().find(|c| {
                    c["type"]
                        .as_str()
                        .is_some_and(|t| t.eq_ignore_ascii_case(name))
                });
                match found {
                    None => Err(format!("it has no condition {name}")),
                    Some(c) => {
                        let status = c["status"].as_str().unwrap_or_default();
                        if status.eq_ignore_ascii_case(value) {
                            return Ok(());
                        }
                        let why = c["message"].as_str().or(c["reason"].as_str());
                        Err(match why {
                            Some(why) if !why.is_empty() => {
                                format!("condition {name} is {status} ({why})")
                            }
                            _ => format!("condition {name} is {status}"),
                        })
                    }
                }
            }
            (
                For::JsonPath {
                    path,
                    template,
                    value,
                },
                Some(o),
            ) => match (template.values(o), value) {
                (Some(_), None) => Ok(()),
                (Some(found), Some(want)) if found.join(" ") == *want => Ok(()),
                (Some(found), Some(want)) => {
                    Err(format!("{path} is {:?}, not {want:?}", found.join(" ")))
                }
                (None, _) => Err(format!("{path} matches nothing")),
            },
        }
    }
}

/// `{.status.x}=3` → (`{.status.x}`, Some("3")); `.status.x=3` likewise; no `=VALUE` → None.
fn split_jsonpath(text: &str) -> (&str, Option<&str>) {
    if text.starts_with('{') {
        let mut depth = 0usize;
        for (i, c) in text.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        let rest = &text[i + 1..];
                        return (&text[..=i], rest.strip_prefix('='));
                    }
                }
                _ => {}
            }
        }
        return (text, None);
    }
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' => depth = depth.saturating_sub(1),
            '=' if depth == 0 => return (&text[..i], Some(&text[i + 1..])),
            _ => {}
        }
    }
    (text, None)
}

/// Which objects a wait is about.
enum Target {
    Names(Vec<String>),
    Selected(Selectors),
}

/// One object as last read: its `kind/name`, its Kubernetes-shaped object
/// (None once gone) and, for a deployment, how many replicas it has.
struct Seen {
    name: String,
    object: Option<Value>,
    replicas: usize,
}

pub async fn run(env: &Env, args: WaitArgs) -> anyhow::Result<()> {
    let condition = For::parse(&args.for_condition)?;
    let selection = Selection::parse(&args.resources)?;
    let kind = selection.kind;
    if kind == ResourceKind::Event {
        bail!("events cannot be waited for; wait for deployments, replicas or nodes");
    }
    let selectors = Selectors::new(
        kind,
        args.selector.as_deref(),
        args.field_selector.as_deref(),
    )?;
    let target = match (selection.names.is_empty(), selectors.is_empty(), args.all) {
        (false, true, false) => Target::Names(selection.names),
        (true, false, false) | (true, true, true) => Target::Selected(selectors),
        (true, true, false) => bail!(
            "name the objects, or select them with -l / --field-selector or --all (e.g. droverctl wait deployment/web --for=condition=Available)"
        ),
        _ => bail!("give names, a selector (-l, --field-selector) or --all, one of them"),
    };
    let (mut client, settings) = env.client()?;
    let namespace = settings.namespace;
    let deadline = Instant::now() + args.timeout;
    let mut changes = Changes::default();
    loop {
        let seen = observe(&mut client, kind, &namespace, &target, &condition).await?;
        if seen.is_empty() && !matches!(condition, For::Delete) {
            bail!("no matching resources found");
        }
        let unmet: Vec<(String, String)> = seen
            .iter()
            .filter_map(|s| {
                condition
                    .check(s.object.as_ref(), s.replicas)
                    .err()
                    .map(|now| (s.name.clone(), now))
            })
            .collect();
        if unmet.is_empty() {
            let text: String = seen
                .iter()
                .map(|s| format!("{} condition met\n", s.name))
                .collect();
            return print(&text);
        }
        if !changes.next(&mut client, deadline).await {
            let lines: Vec<String> = unmet
                .iter()
                .map(|(name, now)| {
                    format!(
                        "timed out after {} waiting for {} on {name}: {now}",
                        output::human_duration(args.timeout),
                        condition.describe()
                    )
                })
                .collect();
            bail!("{}", lines.join("\n"));
        }
    }
}

/// Read the objects of a wait.
async fn observe(
    client: &mut Client,
    kind: ResourceKind,
    namespace: &str,
    target: &Target,
    condition: &For,
) -> anyhow::Result<Vec<Seen>> {
    let deleting = matches!(condition, For::Delete);
    let mut seen = Vec::new();
    match kind {
        ResourceKind::Deployment => {
            let (found, missing) = match target {
                Target::Names(names) => fetch_named(client, namespace, names, None).await?,
                Target::Selected(s) => (
                    get::list_deployments(client, namespace, s, None).await?,
                    Vec::new(),
                ),
            };
            for d in &found {
                let model = output::model_of(d)?;
                seen.push(Seen {
                    name: kind.slash_name(&d.name),
                    object: Some(output::kubernetes_object(d, &model)),
                    replicas: 0,
                });
            }
            for name in missing {
                if !deleting {
                    bail!("{}", not_found(kind, &name, namespace));
                }
                let left = get::list_replicas(client, namespace, &name, None).await?;
                seen.push(Seen {
                    name: kind.slash_name(&name),
                    object: None,
                    replicas: left.len(),
                });
            }
        }
        ResourceKind::Replica => {
            let selectors = match target {
                Target::Selected(s) => s.clone(),
                Target::Names(_) => Selectors::default(),
            };
            let all = get::list_replicas_selected(client, namespace, "", &selectors, None).await?;
            let names = match target {
                Target::Names(n) => n.clone(),
                Target::Selected(_) => Vec::new(),
            };
            let (found, missing) = pick(all, &names, |r| &r.name);
            seen.extend(found.iter().map(|r| Seen {
                name: kind.slash_name(&r.name),
                object: Some(replicas::kubernetes_object(r)),
                replicas: 0,
            }));
            seen.extend(missing_objects(kind, namespace, missing, deleting)?);
        }
        ResourceKind::Node => {
            let selectors = match target {
                Target::Selected(s) => s.clone(),
                Target::Names(_) => Selectors::default(),
            };
            let all = get::list_nodes_selected(client, &selectors, None).await?;
            let names = match target {
                Target::Names(n) => n.clone(),
                Target::Selected(_) => Vec::new(),
            };
            let (found, missing) = pick(all, &names, |n: &pb::Node| &n.name);
            seen.extend(found.iter().map(|n| Seen {
                name: kind.slash_name(&n.name),
                object: Some(nodes::kubernetes_object(n)),
                replicas: 0,
            }));
            seen.extend(missing_objects(kind, namespace, missing, deleting)?);
        }
        ResourceKind::Event => bail!("events cannot be waited for"),
        ResourceKind::ConfigMap
        | ResourceKind::Secret
        | ResourceKind::Service
        | ResourceKind::Endpoints => bail!(
            "{} have no conditions to wait for; wait for the deployments that use them",
            kind.plural()
        ),
    }
    Ok(seen)
}

/// Named objects that do not exist: met for `--for=delete`, else an error.
fn missing_objects(
    kind: ResourceKind,
    namespace: &str,
    missing: Vec<String>,
    deleting: bool,
) -> anyhow::Result<Vec<Seen>> {
    if let (false, Some(name)) = (deleting, missing.first()) {
        bail!("{}", not_found(kind, name, namespace));
    }
    Ok(missing
        .into_iter()
        .map(|name| Seen {
            name: kind.slash_name(&name),
            object: None,
            replicas: 0,
        })
        .collect())
}

/// The controller's `WatchChanges` stream: [`Changes::next`] returns when the
/// cluster's state may have changed.
#[derive(Default)]
pub struct Changes {
    stream: Option<tonic::Streaming<pb::Change>>,
}

/// How long to wait before opening a broken stream again.
const REOPEN: Duration = Duration::from_millis(250);

impl Changes {
    /// Wait for the next change; false once `deadline` passed first.
    pub async fn next(&mut self, client: &mut Client, deadline: Instant) -> bool {
        self.next_until(client, Some(deadline)).await
    }

    /// [`Changes::next`] with an optional deadline (None waits as long as it takes).
    pub async fn next_until(&mut self, client: &mut Client, deadline: Option<Instant>) -> bool {
        let passed = |d: Option<Instant>| d.is_some_and(|d| Instant::now() >= d);
        if passed(deadline) {
            return false;
        }
        let sleep_until = |d: Option<Instant>| async move {
            match d {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        if self.stream.is_none() {
            let opened = client
                .call(|mut c| async move { c.watch_changes(pb::WatchChangesRequest {}).await })
                .await;
            match opened {
                Ok(mut stream) => {
                    // The first message is the state as of opening: read past it.
                    let first = tokio::select! {
                        m = stream.message() => m,
                        () = sleep_until(deadline) => return false,
                    };
                    if matches!(first, Ok(Some(_))) {
                        self.stream = Some(stream);
                    }
                    // Something may have changed while the stream was closed.
                    return true;
                }
                Err(_) => {
                    // No controller answered; read the objects again after a
                    // pause (their reads say why if the cluster is gone).
                    tokio::select! {
                        () = tokio::time::sleep(REOPEN) => return !passed(deadline),
                        () = sleep_until(deadline) => return false,
                    }
                }
            }
        }
        let Some(stream) = self.stream.as_mut() else {
            return !passed(deadline);
        };
        let message = tokio::select! {
            m = stream.message() => m,
            () = sleep_until(deadline) => return false,
        };
        match message {
            Ok(Some(_)) => true,
            Ok(None) | Err(_) => {
                self.stream = None;
                tokio::select! {
                    () = tokio::time::sleep(REOPEN) => !passed(deadline),
                    () = sleep_until(deadline) => false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(available: &str, ready: u32) -> Value {
        json!({
            "metadata": { "name": "web" },
            "status": {
                "readyReplicas": ready,
                "conditions": [
                    { "type": "Available", "status": available, "message": "1 of at least 3 replicas available." },
                    { "type": "Progressing", "status": "True" },
                ]
            }
        })
    }

    #[test]
    fn conditions_compare_the_status_of_their_type() {
        let f = For::parse("condition=Available").unwrap();
        assert_eq!(f.check(Some(&deployment("True", 3)), 0), Ok(()));
        assert_eq!(
            f.check(Some(&deployment("False", 1)), 0),
            Err("condition Available is False (1 of at least 3 replicas available.)".into())
        );
        let f = For::parse("condition=available=false").unwrap();
        assert_eq!(f.check(Some(&deployment("False", 1)), 0), Ok(()));
        let f = For::parse("condition=Ready").unwrap();
        assert_eq!(
            f.check(Some(&deployment("True", 3)), 0),
            Err("it has no condition Ready".into())
        );
        assert_eq!(f.check(None, 0), Err("it does not exist".into()));
    }

    #[test]
    fn jsonpath_compares_the_printed_value() {
        let f = For::parse("jsonpath={.status.readyReplicas}=3").unwrap();
        assert_eq!(f.check(Some(&deployment("True", 3)), 0), Ok(()));
        assert_eq!(
            f.check(Some(&deployment("True", 2)), 0),
            Err("{.status.readyReplicas} is \"2\", not \"3\"".into())
        );
        let f = For::parse("jsonpath=.status.readyReplicas=2").unwrap();
        assert_eq!(f.check(Some(&deployment("True", 2)), 0), Ok(()));
        let f = For::parse("jsonpath={.status.nothing}").unwrap();
        assert_eq!(
            f.check(Some(&deployment("True", 2)), 0),
            Err("{.status.nothing} matches nothing".into())
        );
        let f = For::parse(r#"jsonpath={.status.conditions[?(@.type=="Available")].status}=True"#)
            .unwrap();
        assert_eq!(f.check(Some(&deployment("True", 2)), 0), Ok(()));
    }

    #[test]
    fn delete_needs_the_object_and_its_replicas_gone() {
        let f = For::parse("delete").unwrap();
        assert_eq!(f.check(None, 0), Ok(()));
        assert_eq!(
            f.check(None, 2),
            Err("deleted, but 2 of its replicas are still on their hosts".into())
        );
        assert_eq!(f.check(Some(&json!({})), 0), Err("it still exists".into()));
    }

    #[test]
    fn bad_conditions_say_what_is_expected() {
        for text in ["condition=", "ready", "jsonpath=", "jsonpath={.x"] {
            assert!(For::parse(text).is_err(), "{text}");
        }
    }
}
