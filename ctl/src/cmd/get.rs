//! `droverctl get deployments|replicas|nodes|configmaps|secrets|services|endpoints [NAME...]` (events: see `events.rs`)
//! `droverctl get deployments|replicas|nodes [NAME...] [-o wide|yaml|json|name] [-A] [--stale]`
//! `droverctl get KIND -w|--watch-only [--output-watch-events]`: see `watch.rs`
//!
//! Deployments without names: one List call (the whole namespace, or every
//! namespace with `-A`); with names: one Get per name. Replicas and nodes are
//! always listed (replicas in the namespace, optionally of one
//! `--deployment`) and then picked by name. Found ones are printed, each
//! missing one is an `error:` line and the exit code is 1, as with kubectl.

use anyhow::bail;
use drover_proto::pb;
use drover_proto::pb::control_client::ControlClient;
use serde_json::Value;
use tonic::transport::Channel;
use tonic::Code;

use super::{config_objects, print, services, Env};
use crate::cli::{GetArgs, OutputFormat};
use crate::client::{Client, ClientError};
use crate::output::template::{CustomColumns, Template};
use crate::output::{self, nodes, now_ms, replicas};
use crate::resource::{ResourceKind, Selection};
use crate::AlreadyReported;
use drover_proto::selector::{self, ListSelector};

pub async fn run(env: &Env, args: GetArgs) -> anyhow::Result<()> {
    let selection = Selection::parse(&args.resources)?;
    let kind = selection.kind;
    if kind == ResourceKind::Event {
        if args.selector.is_some() || args.field_selector.is_some() {
            bail!("events cannot be selected by -l or --field-selector; use --for TYPE/NAME");
        }
        if args.watch_only || args.output_watch_events {
            bail!("events are watched with -w alone (droverctl get events -w)");
        }
        return super::events::run(env, &args, &selection.names).await;
    }
    if args.for_object.is_some() {
        bail!("--for only applies to events (e.g. droverctl get events --for node/n1)");
    }
    if args.deployment.is_some() && kind != ResourceKind::Replica {
        bail!(
            "--deployment only applies to replicas (e.g. droverctl get replicas --deployment web)"
        );
    }
    if args.all_namespaces && !selection.names.is_empty() && kind.namespaced() {
        bail!("a resource cannot be retrieved by name across all namespaces");
    }
    let selectors = Selectors::new(
        kind,
        args.selector.as_deref(),
        args.field_selector.as_deref(),
    )?;
    if !selection.names.is_empty() && !selectors.is_empty() {
        bail!("give names or a selector (-l, --field-selector), not both");
    }
    if args.watch || args.watch_only {
        return super::watch::run(env, &args, kind, &selection.names, &selectors).await;
    }
    if args.output_watch_events {
        bail!("--output-watch-events only applies to a watch (-w or --watch-only)");
    }
    let (mut client, settings) = env.client()?;
    let namespace = settings.namespace;
    let read = Some(pb::ReadOptions { stale: args.stale });
    let listed = selection.names.is_empty();
    let list_ns = if args.all_namespaces {
        String::new()
    } else {
        namespace.clone()
    };
    let format = args.output.clone();

    let (text, missing) = match kind {
        ResourceKind::Deployment => {
            let (items, missing) = if listed {
                (
                    list_deployments(&mut client, &list_ns, &selectors, read).await?,
                    Vec::new(),
                )
            } else {
                fetch_named(&mut client, &namespace, &selection.names, read).await?
            };
            let text = render(kind, &items, format, args.all_namespaces, listed)?;
            (text, missing)
        }
        ResourceKind::Replica => {
            let deployment = args.deployment.as_deref().unwrap_or_default();
            let all =
                list_replicas_selected(&mut client, &list_ns, deployment, &selectors, read).await?;
            let (items, missing) = pick(all, &selection.names, |r| &r.name);
            let text = render_replicas(&items, format, args.all_namespaces, listed)?;
            (text, missing)
        }
        ResourceKind::Node => {
            let all = list_nodes_selected(&mut client, &selectors, read).await?;
            let (items, missing) = pick(all, &selection.names, |n| &n.name);
            (render_nodes(&items, format, listed)?, missing)
        }
        ResourceKind::ConfigMap | ResourceKind::Secret => {
            // A Secret's values only for the formats that print them.
            let reveal = matches!(
                format,
                Some(
                    OutputFormat::Yaml
                        | OutputFormat::Json
                        | OutputFormat::JsonPath(_)
                        | OutputFormat::CustomColumns(_)
                )
            );
            let all = config_objects::list(
                &mut client,
                kind,
                &list_ns,
                &selection.names,
                &selectors.labels,
                reveal,
                read,
            )
            .await?;
            let (items, missing) = pick(all, &selection.names, |i| &i.record.name);
            let text = render_as(
                &items,
                format,
                listed,
                |_| config_objects::table(kind, &items, args.all_namespaces, now_ms()),
                || config_objects::names(kind, &items),
                |i| Ok(config_objects::kubernetes_object(i)),
            )?;
            (text, missing)
        }
        ResourceKind::Service => {
            let all = services::list(
                &mut client,
                &list_ns,
                &selection.names,
                &selectors.labels,
                read,
            )
            .await?;
            let (items, missing) = pick(all, &selection.names, |i| &i.record.name);
            let text = render_as(
                &items,
                format,
                listed,
                |wide| services::table(&items, args.all_namespaces, wide, now_ms()),
                || services::names(kind, &items),
                |i| Ok(services::kubernetes_object(i)),
            )?;
            (text, missing)
        }
        ResourceKind::Endpoints => {
            let all = services::list_endpoints(
                &mut client,
                &list_ns,
                &selection.names,
                &selectors.labels,
                read,
            )
            .await?;
            let (items, missing) = pick(all, &selection.names, |i| &i.record.name);
            let text = render_as(
                &items,
                format,
                listed,
                |_| services::endpoints_table(&items, args.all_namespaces, now_ms()),
                || services::names(kind, &items),
                |i| Ok(services::endpoints_object(i)),
            )?;
            (text, missing)
        }
        ResourceKind::Event => bail!("events are listed by droverctl get events"),
    };
    match text {
        Some(text) => {
            let text = if args.no_headers && output::is_table(args.output.as_ref()) {
                output::without_header(&text)
            } else {
                text
            };
            print(&text)?
        }
        None => {
            if missing.is_empty() {
                let everywhere = args.all_namespaces || !kind.namespaced();
                crate::print_note(&no_resources(&namespace, everywhere));
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    for name in &missing {
        crate::print_error(&not_found(kind, name, &namespace));
    }
    Err(AlreadyReported(missing.len()).into())
}

/// `-l` and `--field-selector` as typed, checked with the parser the
/// controller evaluates them with (so a typo is caught before any call).
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    pub labels: String,
    pub fields: String,
}

impl Selectors {
    pub fn new(
        kind: ResourceKind,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> anyhow::Result<Selectors> {
        let labels = labels.unwrap_or_default().to_string();
        let fields = fields.unwrap_or_default().to_string();
        let supported = match kind {
            ResourceKind::Deployment => selector::DEPLOYMENT_FIELDS,
            ResourceKind::Replica => selector::REPLICA_FIELDS,
            ResourceKind::Node => selector::NODE_FIELDS,
            ResourceKind::Event
            | ResourceKind::ConfigMap
            | ResourceKind::Secret
            | ResourceKind::Service
            | ResourceKind::Endpoints => &[],
        };
        ListSelector::parse(&labels, &fields, kind.plural(), supported)?;
        Ok(Selectors { labels, fields })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.trim().is_empty() && self.fields.trim().is_empty()
    }
}

/// Deployments and replicas are listed this many at a time (kubectl's
/// `--chunk-size` default): a list of any size stays within gRPC's message
/// limit, and each page is one short read on the controller.
pub const CHUNK_SIZE: u32 = 500;

/// The deployments in `namespace` ("" = all) that the selectors match, by namespace and name.
pub async fn list_deployments(
    client: &mut Client,
    namespace: &str,
    selectors: &Selectors,
    read: Option<pb::ReadOptions>,
) -> Result<Vec<pb::Deployment>, ClientError> {
    let mut items = all_pages(client, |mut c, continue_token| {
        let request = pb::ListDeploymentsRequest {
            namespace: namespace.to_string(),
            read,
            label_selector: selectors.labels.clone(),
            field_selector: selectors.fields.clone(),
            limit: CHUNK_SIZE,
            continue_token,
        };
        async move { c.list_deployments(request).await }
    })
    .await?;
    items.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(items)
}

/// A List answer that comes in pages.
pub(crate) trait Page {
    type Item;
    /// The page's items and the next page's continue token ("" = last).
    fn split(self) -> (Vec<Self::Item>, String);
}

impl Page for pb::ListDeploymentsResponse {
    type Item = pb::Deployment;
    fn split(self) -> (Vec<pb::Deployment>, String) {
        (self.deployments, self.continue_token)
    }
}

impl Page for pb::ListConfigResponse {
    type Item = pb::ConfigRecord;
    fn split(self) -> (Vec<pb::ConfigRecord>, String) {
        (self.objects, self.continue_token)
    }
}

impl Page for pb::ListReplicasResponse {
    type Item = pb::Replica;
    fn split(self) -> (Vec<pb::Replica>, String) {
        (self.replicas, self.continue_token)
    }
}

/// Every page of a List call: `rpc` makes the request for a continue token.
pub(crate) async fn all_pages<P, F, Fut>(
    client: &mut Client,
    mut rpc: F,
) -> Result<Vec<P::Item>, ClientError>
where
    P: Page,
    F: FnMut(ControlClient<Channel>, String) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<P>, tonic::Status>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = client.call(|c| rpc(c, token.clone())).await?.split();
        items.extend(page);
        if next.is_empty() {
            return Ok(items);
        }
        token = next;
    }
}

/// Every replica in `namespace` ("" = all), of `deployment` ("" = all), in list order.
pub async fn list_replicas(
    client: &mut Client,
    namespace: &str,
    deployment: &str,
    read: Option<pb::ReadOptions>,
) -> Result<Vec<pb::Replica>, ClientError> {
    list_replicas_selected(client, namespace, deployment, &Selectors::default(), read).await
}

/// [`list_replicas`], only those the selectors match.
pub async fn list_replicas_selected(
    client: &mut Client,
    namespace: &str,
    deployment: &str,
    selectors: &Selectors,
    read: Option<pb::ReadOptions>,
) -> Result<Vec<pb::Replica>, ClientError> {
    let mut items = all_pages(client, |mut c, continue_token| {
        let request = pb::ListReplicasRequest {
            namespace: namespace.to_string(),
            deployment: deployment.to_string(),
            read,
            label_selector: selectors.labels.clone(),
            field_selector: selectors.fields.clone(),
            limit: CHUNK_SIZE,
            continue_token,
        };
        async move { c.list_replicas(request).await }
    })
    .await?;
    replicas::sort(&mut items);
    Ok(items)
}

/// Every node, by name.
pub async fn list_nodes(
    client: &mut Client,
    read: Option<pb::ReadOptions>,
) -> Result<Vec<pb::Node>, ClientError> {
    list_nodes_selected(client, &Selectors::default(), read).await
}

/// [`list_nodes`], only those the selectors match.
pub async fn list_nodes_selected(
    client: &mut Client,
    selectors: &Selectors,
    read: Option<pb::ReadOptions>,
) -> Result<Vec<pb::Node>, ClientError> {
    let mut items = client
        .call(|mut c| {
            let request = pb::ListNodesRequest {
                read,
                label_selector: selectors.labels.clone(),
                field_selector: selectors.fields.clone(),
            };
            async move { c.list_nodes(request).await }
        })
        .await?
        .nodes;
    items.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(items)
}

/// All `items` when no names are given; else the named ones in the order
/// named, and the names matching none.
pub fn pick<T: Clone>(
    items: Vec<T>,
    names: &[String],
    name_of: impl Fn(&T) -> &str,
) -> (Vec<T>, Vec<String>) {
    if names.is_empty() {
        return (items, Vec::new());
    }
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        match items.iter().find(|item| name_of(item) == name) {
            Some(item) => found.push(item.clone()),
            None => missing.push(name.clone()),
        }
    }
    (found, missing)
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

/// `deployment "x" not found in namespace "default"`; `node "x" not found`.
pub fn not_found(kind: ResourceKind, name: &str, namespace: &str) -> String {
    if kind.namespaced() {
        format!(
            "{} {name:?} not found in namespace {namespace:?}",
            kind.singular()
        )
    } else {
        format!("{} {name:?} not found", kind.singular())
    }
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
    render_as(
        items,
        format,
        listed,
        |wide| {
            let rows: Vec<_> = items
                .iter()
                .map(|d| (d.clone(), output::model_of(d).ok()))
                .collect();
            output::deployments_table(&rows, wide, all_namespaces, now_ms())
        },
        || output::names(kind, items),
        |d| Ok(output::kubernetes_object(d, &output::model_of(d)?)),
    )
}

/// [`render`] for replicas.
pub fn render_replicas(
    items: &[pb::Replica],
    format: Option<OutputFormat>,
    all_namespaces: bool,
    listed: bool,
) -> anyhow::Result<Option<String>> {
    render_as(
        items,
        format,
        listed,
        |wide| replicas::table(items, wide, all_namespaces, now_ms()),
        || replicas::names(items),
        |r| Ok(replicas::kubernetes_object(r)),
    )
}

/// [`render`] for nodes.
pub fn render_nodes(
    items: &[pb::Node],
    format: Option<OutputFormat>,
    listed: bool,
) -> anyhow::Result<Option<String>> {
    render_as(
        items,
        format,
        listed,
        |wide| nodes::table(items, wide, now_ms()),
        || nodes::names(items),
        |n| Ok(nodes::kubernetes_object(n)),
    )
}

/// The output formats, given how to print a table (`wide` or not), the
/// `-o name` lines and one object.
fn render_as<T>(
    items: &[T],
    format: Option<OutputFormat>,
    listed: bool,
    table: impl FnOnce(bool) -> String,
    names: impl FnOnce() -> String,
    object: impl Fn(&T) -> anyhow::Result<Value>,
) -> anyhow::Result<Option<String>> {
    let wide = format == Some(OutputFormat::Wide);
    match format {
        None | Some(OutputFormat::Wide) => {
            if items.is_empty() {
                return Ok(None);
            }
            Ok(Some(table(wide)))
        }
        Some(OutputFormat::Name) if items.is_empty() => Ok(None),
        Some(OutputFormat::Name) => Ok(Some(names())),
        Some(OutputFormat::CustomColumns(spec)) => {
            if items.is_empty() {
                return Ok(None);
            }
            let objects = items
                .iter()
                .map(object)
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(Some(CustomColumns::parse(&spec)?.render(&objects)))
        }
        Some(f @ (OutputFormat::Yaml | OutputFormat::Json | OutputFormat::JsonPath(_))) => {
            if !listed && items.is_empty() {
                return Ok(Some(String::new()));
            }
            let objects = items
                .iter()
                .map(object)
                .collect::<anyhow::Result<Vec<_>>>()?;
            let value = if !listed && objects.len() == 1 {
                objects.into_iter().next().unwrap_or_default()
            } else {
                output::kubernetes_list(objects)
            };
            let text = match f {
                OutputFormat::Yaml => output::to_yaml(&value)?,
                OutputFormat::JsonPath(t) => Template::parse(&t)?.render(&value),
                _ => output::to_json(&value)?,
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
        assert_eq!(
            not_found(ResourceKind::Replica, "web-1", "prod"),
            "replica \"web-1\" not found in namespace \"prod\""
        );
        assert_eq!(
            not_found(ResourceKind::Node, "n9", "default"),
            "node \"n9\" not found"
        );
    }

    #[test]
    fn picking_by_name_keeps_the_order_named_and_reports_the_rest() {
        let items = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let names = ["c".to_string(), "x".to_string(), "a".to_string()];
        let (found, missing) = pick(items.clone(), &names, |s| s.as_str());
        assert_eq!(found, ["c", "a"]);
        assert_eq!(missing, ["x"]);
        assert_eq!(pick(items.clone(), &[], |s| s.as_str()).0, items);
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
