//! How results look: kubectl's borderless tables, human ages, timestamps,
//! `-o name|yaml|json`, and the aligned key/value blocks of `describe`.
//!
//! Everything here is a pure function of its inputs (the clock is passed in),
//! so each format is unit-tested exactly. Deployments are here; nodes and
//! replicas have a module each.

pub mod events;
pub mod nodes;
pub mod replicas;
pub mod template;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use drover_manifest as manifest;
use drover_proto::pb;
use serde_json::{json, Value};

use crate::resource::ResourceKind;

/// Columns are separated by three spaces, as kubectl's printer does.
const COLUMN_GAP: usize = 3;

/// A table: a header row and data rows, every cell left-aligned, no borders.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Table {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// Render with every column padded to its widest cell; no trailing spaces.
    pub fn render(&self) -> String {
        self.render_with(COLUMN_GAP, "")
    }

    /// A table inside a describe text: columns `gap` apart (kubectl's
    /// describers use 2), every line after `indent`, a `----` line under the
    /// headers.
    pub fn render_described(&self, gap: usize, indent: &str) -> String {
        let mut t = self.clone();
        let rule = t
            .headers
            .iter()
            .map(|h| "-".repeat(h.chars().count()))
            .collect();
        t.rows.insert(0, rule);
        t.render_with(gap, indent)
    }

    fn render_with(&self, gap: usize, indent: &str) -> String {
        let columns = std::iter::once(&self.headers)
            .chain(&self.rows)
            .map(Vec::len)
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = indent.to_string();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    let pad = widths[i] - cell.chars().count() + gap;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// kubectl's `HumanDuration`: `45s`, `3m12s`, `15m`, `5h`, `5h3m`, `3d`, `3d4h`, `2y`.
pub fn human_duration(d: Duration) -> String {
    let seconds = d.as_secs();
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{days}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// The AGE column: time from `created_ms` to `now_ms`. A creation time up to a
/// second in the future is clock skew and shows as `0s`; more is `<invalid>`.
pub fn age(created_ms: i64, now_ms: i64) -> String {
    if created_ms <= 0 {
        return "<unknown>".to_string();
    }
    let delta = now_ms.saturating_sub(created_ms);
    if delta < -1000 {
        return "<invalid>".to_string();
    }
    human_duration(Duration::from_millis(delta.max(0) as u64))
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub use drover_proto::timestamp::{rfc1123z, rfc3339};

/// Lines of `key:<TAB>value` aligned like Go's tabwriter (padding 2), which
/// kubectl's describe uses: consecutive lines with a tab form a block whose
/// values start in one column; a line without a tab ends the block. Unlike
/// tabwriter, a key at another indentation also starts a new block, so a
/// nested section never pushes its parent's values to the right. A line
/// starting with a tab (empty key) continues the value above.
pub fn align_tabs(text: &str) -> String {
    fn indentation(line: &str) -> usize {
        line.len() - line.trim_start_matches(' ').len()
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < lines.len() {
        if !lines[i].contains('\t') {
            out.push_str(lines[i].trim_end());
            out.push('\n');
            i += 1;
            continue;
        }
        let level = indentation(lines[i]);
        let end = lines[i + 1..]
            .iter()
            .position(|l| !l.contains('\t') || (!l.starts_with('\t') && indentation(l) != level))
            .map_or(lines.len(), |p| i + 1 + p);
        let width = lines[i..end]
            .iter()
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0)
            + 2;
        for line in &lines[i..end] {
            if let Some((key, value)) = line.split_once('\t') {
                let pad = width - key.chars().count();
                let joined = format!("{key}{}{}", " ".repeat(pad), value.replace('\t', " "));
                out.push_str(joined.trim_end());
                out.push('\n');
            }
        }
        i = end;
    }
    out
}

/// The stored model of a deployment. `spec_json` is the JSON of
/// [`manifest::Deployment`]; a bare [`manifest::DeploymentSpec`] is accepted too.
pub fn model_of(d: &pb::Deployment) -> anyhow::Result<manifest::Deployment> {
    if let Ok(model) = serde_json::from_str::<manifest::Deployment>(&d.spec_json) {
        return Ok(model);
    }
    let spec =
        serde_json::from_str::<manifest::DeploymentSpec>(&d.spec_json).with_context(|| {
            format!(
                "the controller sent an unreadable spec for deployment {:?} (version skew?)",
                d.name
            )
        })?;
    Ok(manifest::Deployment {
        metadata: manifest::ObjectMeta {
            name: d.name.clone(),
            namespace: d.namespace.clone(),
            ..Default::default()
        },
        spec,
    })
}

fn status_of(d: &pb::Deployment) -> pb::DeploymentStatus {
    d.status.clone().unwrap_or_default()
}

/// One row of `get deployments`: `[NAMESPACE] NAME READY UP-TO-DATE AVAILABLE AGE [wide...]`.
pub fn deployment_row(
    d: &pb::Deployment,
    model: Option<&manifest::Deployment>,
    wide: bool,
    all_namespaces: bool,
    now_ms: i64,
) -> Vec<String> {
    let status = status_of(d);
    // READY is ready/desired, as in kubectl; without a readable spec, the
    // observed count is the best denominator there is.
    let desired = model.map_or(status.replicas, |m| m.spec.replicas);
    let mut row = Vec::new();
    if all_namespaces {
        row.push(d.namespace.clone());
    }
    row.push(d.name.clone());
    row.push(format!("{}/{}", status.ready, desired));
    row.push(status.updated.to_string());
    row.push(status.available.to_string());
    row.push(age(d.created_unix_ms, now_ms));
    if wide {
        let (containers, images, selector) = match model {
            Some(m) => {
                let cs = &m.spec.template.spec.containers;
                (
                    join_or_none(cs.iter().map(|c| c.name.as_str())),
                    join_or_none(cs.iter().map(|c| c.image.as_str())),
                    labels_inline(&m.spec.selector.match_labels),
                )
            }
            None => (none(), none(), none()),
        };
        row.extend([containers, images, selector]);
    }
    row
}

/// The headers matching [`deployment_row`].
pub fn deployment_headers(wide: bool, all_namespaces: bool) -> Vec<&'static str> {
    let mut h = Vec::new();
    if all_namespaces {
        h.push("NAMESPACE");
    }
    h.extend(["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    if wide {
        h.extend(["CONTAINERS", "IMAGES", "SELECTOR"]);
    }
    h
}

/// The `get deployments` table.
pub fn deployments_table(
    items: &[(pb::Deployment, Option<manifest::Deployment>)],
    wide: bool,
    all_namespaces: bool,
    now_ms: i64,
) -> String {
    let mut t = Table::new(deployment_headers(wide, all_namespaces));
    for (d, model) in items {
        t.push(deployment_row(
            d,
            model.as_ref(),
            wide,
            all_namespaces,
            now_ms,
        ));
    }
    t.render()
}

/// `deployment.apps/web`, one per line.
pub fn names(kind: ResourceKind, items: &[pb::Deployment]) -> String {
    items
        .iter()
        .map(|d| format!("{}\n", kind.slash_name(&d.name)))
        .collect()
}

/// The Kubernetes-shaped object kubectl would print for `-o yaml|json`.
pub fn kubernetes_object(d: &pb::Deployment, model: &manifest::Deployment) -> Value {
    let mut obj = manifest::render_kubernetes(model);
    let status = status_of(d);
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("generation".into(), json!(d.generation));
        if d.created_unix_ms > 0 {
            meta.insert(
                "creationTimestamp".into(),
                json!(rfc3339(d.created_unix_ms)),
            );
        }
    }
    if let Some(map) = obj.as_object_mut() {
        map.insert(
            "status".into(),
            json!({
                "replicas": status.replicas,
                "readyReplicas": status.ready,
                "updatedReplicas": status.updated,
                "availableReplicas": status.available,
                "conditions": deployment_conditions(&status, model)
                    .iter()
                    .map(|c| json!({
                        "type": c.kind,
                        "status": c.status,
                        "reason": c.reason,
                        "message": c.message,
                    }))
                    .collect::<Vec<_>>(),
            }),
        );
    }
    obj
}

/// One of a deployment's conditions: type, status, reason, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub kind: &'static str,
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// Kubernetes' Available and Progressing conditions, for describe, `-o
/// yaml|json|jsonpath` and `wait --for=condition=...`. Available: at least
/// `replicas - maxUnavailable` replicas are available (a percentage rounds
/// down; Recreate allows none unavailable, as Kubernetes computes it).
/// Progressing: False once the progress deadline passed, Unknown while
/// paused, else True.
pub fn deployment_conditions(
    status: &pb::DeploymentStatus,
    model: &manifest::Deployment,
) -> [Condition; 2] {
    let desired = model.spec.replicas;
    let max_unavailable = match &model.spec.strategy {
        manifest::Strategy::RollingUpdate {
            max_unavailable, ..
        } => match max_unavailable {
            manifest::IntOrPercent::Int(n) => *n,
            manifest::IntOrPercent::Percent(p) => {
                u32::try_from(u64::from(desired) * u64::from(*p) / 100).unwrap_or(u32::MAX)
            }
        },
        manifest::Strategy::Recreate => 0,
    }
    .min(desired);
    let minimum = desired - max_unavailable;
    let available = if status.available >= minimum {
        Condition {
            kind: "Available",
            status: "True",
            reason: "MinimumReplicasAvailable",
            message: "Deployment has minimum availability.".to_string(),
        }
    } else {
        Condition {
            kind: "Available",
            status: "False",
            reason: "MinimumReplicasUnavailable",
            message: format!(
                "Deployment does not have minimum availability: {} of at least {minimum} replicas available.",
                status.available
            ),
        }
    };
    let (progressing, reason, message) = if !status.failed.is_empty() {
        ("False", "ProgressDeadlineExceeded", status.failed.clone())
    } else if status.paused {
        (
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused.".to_string(),
        )
    } else if status.complete {
        (
            "True",
            "NewReplicaSetAvailable",
            format!("Revision {} has successfully progressed.", status.revision),
        )
    } else {
        (
            "True",
            "ReplicaSetUpdated",
            format!("Revision {} is progressing.", status.revision),
        )
    };
    [
        available,
        Condition {
            kind: "Progressing",
            status: progressing,
            reason,
            message,
        },
    ]
}

/// Whether `-o` prints a table (which `--no-headers` shortens).
pub fn is_table(format: Option<&crate::cli::OutputFormat>) -> bool {
    use crate::cli::OutputFormat;
    matches!(
        format,
        None | Some(OutputFormat::Wide | OutputFormat::CustomColumns(_))
    )
}

/// A table's text without its header line (`--no-headers`).
pub fn without_header(table: &str) -> String {
    table
        .split_once('\n')
        .map(|(_, rest)| rest.to_string())
        .unwrap_or_default()
}

/// Several objects in one, as kubectl prints a list.
pub fn kubernetes_list(items: Vec<Value>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": items,
        "metadata": { "resourceVersion": "" },
    })
}

/// Pretty JSON with a final newline.
pub fn to_json(v: &Value) -> anyhow::Result<String> {
    let mut s = serde_json::to_string_pretty(v).context("cannot encode JSON")?;
    s.push('\n');
    Ok(s)
}

/// YAML as kubectl prints it (no leading `---`).
pub fn to_yaml(v: &Value) -> anyhow::Result<String> {
    let s = serde_norway::to_string(v).context("cannot encode YAML")?;
    let s = s.strip_prefix("---\n").unwrap_or(&s).to_string();
    Ok(if s.ends_with('\n') { s } else { s + "\n" })
}

/// `app=web,tier=front`, or `<none>`.
pub fn labels_inline(labels: &BTreeMap<String, String>) -> String {
    join_or_none(labels.iter().map(|(k, v)| format!("{k}={v}")))
}

fn join_or_none<S: AsRef<str>>(items: impl Iterator<Item = S>) -> String {
    let joined: Vec<String> = items.map(|s| s.as_ref().to_string()).collect();
    if joined.is_empty() {
        none()
    } else {
        joined.join(",")
    }
}

/// kubectl's placeholder for an empty value.
pub fn none() -> String {
    "<none>".to_string()
}

/// `text`, or `<none>` when it is empty.
pub fn or_none(text: &str) -> String {
    if text.is_empty() {
        none()
    } else {
        text.to_string()
    }
}

/// Text from a remote party (a Docker error, a scheduling reason) made fit
/// for one table cell or describe line: control characters become spaces.
pub fn one_line(text: &str) -> String {
    let spaced: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    spaced.trim().to_string()
}

/// `part` as a whole percentage of `whole`, rounded down as kubectl does;
/// None when `whole` is 0.
pub fn percent(part: u64, whole: u64) -> Option<u64> {
    if whole == 0 {
        return None;
    }
    let p = u128::from(part) * 100 / u128::from(whole);
    Some(u64::try_from(p).unwrap_or(u64::MAX))
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Hand-built deployments for output tests.

    use drover_manifest::*;
    use drover_proto::pb;
    use std::collections::BTreeMap;

    pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A deployment of `replicas` nginx replicas named `name`.
    pub fn model(name: &str, replicas: u32) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                labels: labels(&[("app", name)]),
                annotations: BTreeMap::new(),
            },
            spec: DeploymentSpec {
                replicas,
                selector: LabelSelector {
                    match_labels: labels(&[("app", name)]),
                },
                min_ready_seconds: 0,
                revision_history_limit: 10,
                progress_deadline_seconds: 600,
                strategy: Strategy::RollingUpdate {
                    max_surge: IntOrPercent::Percent(25),
                    max_unavailable: IntOrPercent::Percent(25),
                },
                template: PodTemplate {
                    metadata: TemplateMeta {
                        labels: labels(&[("app", name)]),
                        annotations: BTreeMap::new(),
                    },
                    spec: PodSpec {
                        containers: vec![Container {
                            name: "nginx".into(),
                            image: "nginx:1.27".into(),
                            image_pull_policy: PullPolicy::IfNotPresent,
                            ports: vec![ContainerPort {
                                name: None,
                                container_port: 80,
                                host_port: None,
                                protocol: Protocol::Tcp,
                            }],
                            ..Container::default()
                        }],
                        node_selector: BTreeMap::new(),
                        restart_policy: "Always".into(),
                        termination_grace_period_seconds: 30,
                        volumes: Vec::new(),
                    },
                },
            },
        }
    }

    /// The API object for `model`, created at `created_ms`.
    pub fn api(model: &Deployment, created_ms: i64, ready: u32) -> pb::Deployment {
        pb::Deployment {
            namespace: model.metadata.namespace.clone(),
            name: model.metadata.name.clone(),
            spec_json: serde_json::to_string(model).expect("model encodes"),
            generation: 1,
            created_unix_ms: created_ms,
            updated_unix_ms: created_ms,
            status: Some(pb::DeploymentStatus {
                replicas: model.spec.replicas,
                ready,
                updated: model.spec.replicas,
                available: ready,
                ..Default::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    const T0: i64 = 1_717_243_200_000; // 2024-06-01T12:00:00Z, a Saturday

    #[test]
    fn tables_are_plain_columns_three_spaces_apart() {
        let mut t = Table::new(["NAME", "READY", "AGE"]);
        t.push(vec!["web".into(), "3/3".into(), "5m".into()]);
        t.push(vec!["a-longer-name".into(), "10/10".into(), "3d".into()]);
        assert_eq!(
            t.render(),
            "NAME            READY   AGE\n\
             web             3/3     5m\n\
             a-longer-name   10/10   3d\n"
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        let s = Duration::from_secs;
        assert_eq!(human_duration(s(45)), "45s");
        assert_eq!(human_duration(s(119)), "119s");
        assert_eq!(human_duration(s(3 * 60 + 12)), "3m12s");
        assert_eq!(human_duration(s(4 * 60)), "4m");
        assert_eq!(human_duration(s(15 * 60 + 7)), "15m");
        assert_eq!(human_duration(s(5 * 3600)), "5h");
        assert_eq!(human_duration(s(5 * 3600 + 3 * 60)), "5h3m");
        assert_eq!(human_duration(s(20 * 3600)), "20h");
        assert_eq!(human_duration(s(3 * 86_400)), "3d");
        assert_eq!(human_duration(s(3 * 86_400 + 4 * 3600)), "3d4h");
        assert_eq!(human_duration(s(30 * 86_400)), "30d");
        assert_eq!(human_duration(s(3 * 365 * 86_400)), "3y");
        assert_eq!(human_duration(s(10 * 365 * 86_400)), "10y");

        assert_eq!(age(T0, T0 + 45_000), "45s");
        assert_eq!(age(T0, T0 - 500), "0s");
        assert_eq!(age(T0, T0 - 5_000), "<invalid>");
        assert_eq!(age(0, T0), "<unknown>");
    }

    #[test]
    fn get_rows_show_ready_over_desired() {
        let web = model("web", 3);
        let api_obj = api(&web, T0, 1);
        let table = deployments_table(
            &[(api_obj.clone(), Some(web.clone()))],
            false,
            false,
            T0 + 192_000,
        );
        assert_eq!(
            table,
            "NAME   READY   UP-TO-DATE   AVAILABLE   AGE\n\
             web    1/3     3            1           3m12s\n"
        );
        let wide = deployments_table(&[(api_obj, Some(web))], true, true, T0 + 5_000);
        assert_eq!(
            wide,
            "NAMESPACE   NAME   READY   UP-TO-DATE   AVAILABLE   AGE   CONTAINERS   IMAGES       SELECTOR\n\
             default     web    1/3     3            1           5s    nginx        nginx:1.27   app=web\n"
        );
    }

    #[test]
    fn unreadable_specs_still_list() {
        let mut d = api(&model("web", 3), T0, 2);
        d.spec_json = "{not json".into();
        assert!(model_of(&d).is_err());
        let row = deployment_row(&d, None, true, false, T0);
        assert_eq!(
            row,
            ["web", "2/3", "3", "2", "0s", "<none>", "<none>", "<none>"]
        );
    }

    #[test]
    fn a_bare_spec_is_read_too() {
        let web = model("web", 2);
        let mut d = api(&web, T0, 0);
        d.spec_json = serde_json::to_string(&web.spec).unwrap();
        let back = model_of(&d).unwrap();
        assert_eq!(back.spec, web.spec);
        assert_eq!(back.metadata.name, "web");
    }

    #[test]
    fn output_name_is_group_qualified() {
        let items = [api(&model("web", 1), T0, 0), api(&model("api", 1), T0, 0)];
        assert_eq!(
            names(ResourceKind::Deployment, &items),
            "deployment.apps/web\ndeployment.apps/api\n"
        );
    }

    #[test]
    fn described_tables_are_indented_and_ruled() {
        let mut t = Table::new(["Type", "Reason", "Message"]);
        t.push(vec![
            "Warning".into(),
            "FailedScheduling".into(),
            "0/3 nodes".into(),
        ]);
        assert_eq!(
            t.render_described(2, "  "),
            "  Type     Reason            Message\n\
            \x20 ----     ------            -------\n\
            \x20 Warning  FailedScheduling  0/3 nodes\n"
        );
    }

    #[test]
    fn remote_text_is_one_line_and_percentages_round_down() {
        assert_eq!(
            one_line(" port is\nalready\tallocated\r\n"),
            "port is already allocated"
        );
        assert_eq!(percent(500, 2000), Some(25));
        assert_eq!(percent(64, 2048), Some(3));
        assert_eq!(percent(1, 0), None);
        assert_eq!(percent(u64::MAX, 1), Some(u64::MAX));
    }

    #[test]
    fn describe_blocks_align_like_tabwriter() {
        let text =
            "Name:\tweb\nReplicas:\t3 desired\nPod Template:\n  Labels:\tapp=web\n\tother=x\n";
        let expected = [
            "Name:      web",
            "Replicas:  3 desired",
            "Pod Template:",
            "  Labels:  app=web",
            "           other=x",
        ];
        assert_eq!(align_tabs(text), expected.join("\n") + "\n");
    }
}
