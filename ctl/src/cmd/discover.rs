//! `droverctl api-resources` and `droverctl explain TYPE[.FIELD...]`.
//!
//! api-resources lists the types [`ResourceKind`] parses (so every name it
//! prints is one droverctl accepts); explain walks the manifest parser's own
//! schema ([`drover_manifest::explain`]).

use anyhow::bail;

use super::print;
use crate::output::Table;
use crate::resource::ResourceKind;
use crate::verbs_cli::{ApiResourcesArgs, ExplainArgs};

/// `apps/v1` for deployments, `v1` for the rest (as kubectl shows them).
fn api_version(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Deployment => "apps/v1",
        ResourceKind::Replica
        | ResourceKind::Node
        | ResourceKind::Event
        | ResourceKind::ConfigMap
        | ResourceKind::Secret
        | ResourceKind::Service
        | ResourceKind::Endpoints => "v1",
    }
}

fn kind_name(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Deployment => "Deployment",
        ResourceKind::Replica => "Replica",
        ResourceKind::Node => "Node",
        ResourceKind::Event => "Event",
        ResourceKind::ConfigMap => "ConfigMap",
        ResourceKind::Secret => "Secret",
        ResourceKind::Service => "Service",
        ResourceKind::Endpoints => "Endpoints",
    }
}

/// kubectl's short names (each also one of [`ResourceKind::aliases`]).
fn short_name(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Deployment => "deploy",
        ResourceKind::Replica => "po",
        ResourceKind::Node => "no",
        ResourceKind::Event => "ev",
        ResourceKind::ConfigMap => "cm",
        // kubectl has no short name for secrets either.
        ResourceKind::Secret => "",
        ResourceKind::Service => "svc",
        ResourceKind::Endpoints => "ep",
    }
}

/// What the verbs can do with each type, kubectl's VERBS column.
fn verbs(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Deployment => {
            "annotate,apply,delete,describe,diff,edit,get,label,patch,rollout,scale,set,wait"
        }
        ResourceKind::Replica => "describe,get,logs,wait",
        ResourceKind::Node => "annotate,cordon,describe,drain,get,label,uncordon,wait",
        ResourceKind::Event => "get,watch",
        ResourceKind::ConfigMap | ResourceKind::Secret => "apply,delete,describe,diff,get",
        ResourceKind::Service => "apply,delete,describe,get",
        ResourceKind::Endpoints => "get",
    }
}

/// The api-resources table (or the names alone with `-o name`).
pub fn api_resources_text(args: &ApiResourcesArgs) -> String {
    if args.output.as_deref() == Some("name") {
        return ResourceKind::ALL
            .iter()
            .map(|k| format!("{}\n", k.plural()))
            .collect();
    }
    let wide = args.output.as_deref() == Some("wide");
    let mut headers = vec!["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"];
    if wide {
        headers.push("VERBS");
    }
    let mut t = Table::new(headers);
    for k in ResourceKind::ALL {
        let mut row = vec![
            k.plural().to_string(),
            short_name(k).to_string(),
            api_version(k).to_string(),
            k.namespaced().to_string(),
            kind_name(k).to_string(),
        ];
        if wide {
            row.push(verbs(k).to_string());
        }
        t.push(row);
    }
    let text = t.render();
    if args.no_headers {
        crate::output::without_header(&text)
    } else {
        text
    }
}

pub fn api_resources(args: ApiResourcesArgs) -> anyhow::Result<()> {
    print(&api_resources_text(&args))
}

/// The explain text for `TYPE[.FIELD...]`.
pub fn explain_text(path: &str) -> anyhow::Result<String> {
    let (ty, rest) = path.split_once('.').unwrap_or((path, ""));
    let kind = ResourceKind::parse(ty)?;
    if kind != ResourceKind::Deployment {
        bail!(
            "only deployments have a schema to explain (e.g. droverctl explain deployment.spec); droverctl get {} -o yaml shows a {}'s fields",
            kind.plural(),
            kind.singular()
        );
    }
    let e = drover_manifest::explain(rest).map_err(anyhow::Error::msg)?;
    let mut out = "KIND:     Deployment\nVERSION:  apps/v1\n".to_string();
    if !e.path.is_empty() {
        let last = e.path.rsplit('.').next().unwrap_or_default();
        out.push_str(&format!("\nFIELD:    {last} <{}>\n", e.kind));
        out.push_str(&format!("PATH:     deployment.{}\n", e.path));
    }
    out.push_str("\nFIELDS:\n");
    let width = e.fields.iter().map(|(f, _)| f.len()).max().unwrap_or(0);
    for (field, object) in &e.fields {
        let note = if *object { "<Object>" } else { "" };
        out.push_str(format!("  {field:width$}  {note}\n").trim_end());
        out.push('\n');
    }
    if !e.defaulted.is_empty() {
        out.push_str("\nACCEPTED ONLY AT THEIR KUBERNETES DEFAULT:\n");
        for (field, value) in &e.defaulted {
            out.push_str(&format!("  {field}: {value}\n"));
        }
    }
    if !e.server_set.is_empty() {
        out.push_str(&format!(
            "\nSET BY THE SERVER (ignored by apply):\n  {}\n",
            e.server_set.join(", ")
        ));
    }
    if !e.unsupported.is_empty() {
        out.push_str(&format!(
            "\nKUBERNETES FIELDS DROVER DOES NOT SUPPORT (refused by apply):\n  {}\n",
            e.unsupported.join(", ")
        ));
    }
    Ok(out)
}

pub fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    print(&explain_text(&args.path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_resources_lists_what_droverctl_parses() {
        let text = api_resources_text(&ApiResourcesArgs {
            output: None,
            no_headers: false,
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "NAME          SHORTNAMES   APIVERSION   NAMESPACED   KIND"
        );
        assert_eq!(
            lines[1],
            "deployments   deploy       apps/v1      true         Deployment"
        );
        // By column: secrets have no short name, as in kubectl.
        let at = lines[0].find("SHORTNAMES").unwrap();
        for line in &lines[1..] {
            let name = line.split_whitespace().next().unwrap();
            let short = line[at..].split_whitespace().next().unwrap();
            if name == "secrets" {
                assert_eq!(short, "v1", "no short name: {line}");
                continue;
            }
            assert_eq!(
                ResourceKind::parse(name),
                ResourceKind::parse(short),
                "{line}"
            );
        }
    }

    #[test]
    fn explain_shows_a_fields_subfields() {
        let text = explain_text("deployment.spec.strategy").unwrap();
        assert!(text.contains("FIELD:    strategy <Strategy>"), "{text}");
        assert!(text.contains("  rollingUpdate  <Object>\n"), "{text}");
        assert!(text.contains("  type\n"), "{text}");
        assert!(explain_text("deploy.spec.nope").is_err());
        assert!(explain_text("nodes").is_err());
    }
}
