//! `droverctl get deployments [NAME...] [-o wide|yaml|json|name] [-A] [--stale]`
//!
//! Without names: one List call (the whole namespace, or every namespace with
//! `-A`). With names: one Get per name; the ones found are printed, each
//! missing one is an `error:` line and the exit code is 1, as with kubectl.

use anyhow::bail;
use drover_proto::pb;
use tonic::Code;

use super::{print, Env};
use crate::cli::{GetArgs, OutputFormat};
use crate::client::{Client, ClientError};
use crate::output::{self, now_ms};
use crate::resource::{ResourceKind, Selection};
use crate::AlreadyReported;

pub async fn run(env: &Env, args: GetArgs) -> anyhow::Result<()> {
    let selection = Selection::parse(&args.resources)?;
    if args.all_namespaces && !selection.names.is_empty() {
        bail!("a resource cannot be retrieved by name across all namespaces");
    }
    let (mut client, settings) = env.client()?;
    let namespace = settings.namespace;
    let read = Some(pb::ReadOptions { stale: args.stale });

    let (items, missing) = if selection.names.is_empty() {
        let list_ns = if args.all_namespaces {
            String::new()
        } else {
            namespace.clone()
        };
        let mut items = client
            .call(|mut c| {
                let request = pb::ListDeploymentsRequest {
                    namespace: list_ns.clone(),
                    read,
                };
                async move { c.list_deployments(request).await }
            })
            .await?
            .deployments;
        items.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        (items, Vec::new())
    } else {
        fetch_named(&mut client, &namespace, &selection.names, read).await?
    };

    let listed = selection.names.is_empty();
    let text = render(
        selection.kind,
        &items,
        args.output,
        args.all_namespaces,
        listed,
    )?;
    match text {
        Some(text) => print(&text)?,
        None => {
            if missing.is_empty() {
                crate::print_note(&no_resources(&namespace, args.all_namespaces));
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    for name in &missing {
        crate::print_error(&not_found(selection.kind, name, &namespace));
    }
    Err(AlreadyReported(missing.len()).into())
}

/// Get each name; the ones that do not exist come back in the second list.
pub async fn fetch_named(
    client: &mut Client,
    namespace: &str,
    names: &[String],
    read: Option<pb::ReadOptions>,
) -> Result<(Vec<pb::Deployment>, Vec<String>), ClientError> {
    let mut items = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        let answer = client
            .call(|mut c| {
                let request = pb::GetDeploymentRequest {
                    namespace: namespace.to_string(),
                    name: name.clone(),
                    read,
                };
                async move { c.get_deployment(request).await }
            })
            .await;
        match answer {
            Ok(d) => items.push(d),
            Err(e) if e.code() == Some(Code::NotFound) => missing.push(name.clone()),
            Err(e) => return Err(e),
        }
    }
    Ok((items, missing))
}

/// `deployment "x" not found in namespace "default"`
pub fn not_found(kind: ResourceKind, name: &str, namespace: &str) -> String {
    format!(
        "{} {name:?} not found in namespace {namespace:?}",
        kind.singular()
    )
}

/// kubectl's note, on stderr, for an empty table.
pub fn no_resources(namespace: &str, all_namespaces: bool) -> String {
    if all_namespaces {
        "No resources found\n".to_string()
    } else {
        format!("No resources found in {namespace} namespace.\n")
    }
}

/// The text for stdout, or None for an empty table (the caller says "No resources found").
///
/// `listed` is true for a list request: `-o yaml|json` then always prints a
/// `List`, even of one item or none, as kubectl does; a request by names prints
/// one object alone.
pub fn render(
    kind: ResourceKind,
    items: &[pb::Deployment],
    format: Option<OutputFormat>,
    all_namespaces: bool,
    listed: bool,
) -> anyhow::Result<Option<String>> {
    match format {
        None | Some(OutputFormat::Wide) => {
            if items.is_empty() {
                return Ok(None);
            }
            let rows: Vec<_> = items
                .iter()
                .map(|d| (d.clone(), output::model_of(d).ok()))
                .collect();
            let wide = format == Some(OutputFormat::Wide);
            Ok(Some(output::deployments_table(
                &rows,
                wide,
                all_namespaces,
                now_ms(),
            )))
        }
        Some(OutputFormat::Name) if items.is_empty() => Ok(None),
        Some(OutputFormat::Name) => Ok(Some(output::names(kind, items))),
        Some(f @ (OutputFormat::Yaml | OutputFormat::Json)) => {
            if !listed && items.is_empty() {
                return Ok(Some(String::new()));
            }
            let objects = items
                .iter()
                .map(|d| Ok(output::kubernetes_object(d, &output::model_of(d)?)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let value = if !listed && objects.len() == 1 {
                objects.into_iter().next().unwrap_or_default()
            } else {
                output::kubernetes_list(objects)
            };
            let text = if f == OutputFormat::Yaml {
                output::to_yaml(&value)?
            } else {
                output::to_json(&value)?
            };
            Ok(Some(text))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::fixtures::{api, model};

    const T0: i64 = 1_717_243_200_000;

    #[test]
    fn messages_match_kubectl() {
        assert_eq!(
            not_found(ResourceKind::Deployment, "x", "default"),
            "deployment \"x\" not found in namespace \"default\""
        );
        assert_eq!(
            no_resources("default", false),
            "No resources found in default namespace.\n"
        );
    }

    #[test]
    fn an_empty_table_prints_nothing_but_an_empty_list_prints_a_list() {
        let k = ResourceKind::Deployment;
        assert_eq!(render(k, &[], None, false, true).unwrap(), None);
        let json = render(k, &[], Some(OutputFormat::Json), false, true)
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["kind"], "List");
        assert_eq!(v["items"], serde_json::json!([]));
    }

    #[test]
    fn one_named_object_prints_alone_and_several_as_a_list() {
        let k = ResourceKind::Deployment;
        let web = api(&model("web", 3), T0, 2);
        let one = render(
            k,
            std::slice::from_ref(&web),
            Some(OutputFormat::Json),
            false,
            false,
        )
        .unwrap()
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&one).unwrap();
        assert_eq!(v["kind"], "Deployment");
        assert_eq!(v["metadata"]["name"], "web");
        assert_eq!(v["metadata"]["generation"], 1);
        assert_eq!(v["metadata"]["creationTimestamp"], "2024-06-01T12:00:00Z");
        assert_eq!(v["status"]["readyReplicas"], 2);
        assert_eq!(v["status"]["replicas"], 3);

        let other = api(&model("api", 1), T0, 1);
        let yaml = render(k, &[web, other], Some(OutputFormat::Yaml), false, false)
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(v["kind"], "List");
        assert_eq!(v["items"][1]["metadata"]["name"], "api");
        assert!(!yaml.starts_with("---"));
    }
}
