//! `droverctl get deployments|replicas|nodes|configmaps|secrets -w`
//! (`--watch-only`, `--output-watch-events`, every `-o`), as kubectl prints
//! watches: the list, then a line (or an object) per change.
//!
//! ```text
//!  Watch(from 0) ──▶ batch {A, initial}: print the table        cursor = A
//!               ──▶ batch {i, events}: print each change        cursor = i
//!  stream breaks ──▶ Watch(from cursor) on the next controller: the changes after i
//!  OUT_OF_RANGE ──▶ Watch(from 0): a new list; print only what differs from
//!                   what was printed (DELETED for what is gone)
//! ```
//!
//! Every controller serves the same changes after an index (it names the
//! same state everywhere), so a resume repeats and skips nothing. On top of
//! that, [`Printed`] remembers, per object, the index of the last change
//! printed and its content: a change at or below it is never printed again,
//! and a new list prints only the objects whose content differs.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use drover_proto::pb;
use drover_proto::pb::watch_event::Object;
use serde_json::{json, Value};
use tonic::Code;

use super::config_objects::{self, Item};
use super::get::Selectors;
use super::services;
use super::{print, Env};
use crate::cli::{GetArgs, OutputFormat};
use crate::client::{is_transport_failure, status_sentence, Client};
use crate::output::events::Columns;
use crate::output::template::{CustomColumns, Template};
use crate::output::{self, nodes, now_ms, replicas};
use crate::resource::ResourceKind;
use crate::Interrupted;

/// How long a watch keeps trying to reach a controller before it gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(60);
/// Column widths a watch table leaves at least, for rows wider than the
/// listed ones (`MODIFIED`, `ContainerCreating`).
const WATCH_MIN_WIDTHS: [(&str, usize); 3] = [("EVENT", 8), ("NAME", 24), ("STATUS", 17)];

/// An event type as kubectl prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Modified,
    Deleted,
}

impl Change {
    fn as_str(self) -> &'static str {
        match self {
            Change::Added => "ADDED",
            Change::Modified => "MODIFIED",
            Change::Deleted => "DELETED",
        }
    }

    fn of(t: pb::WatchEventType) -> Change {
        match t {
            pb::WatchEventType::Added => Change::Added,
            pb::WatchEventType::Deleted => Change::Deleted,
            pb::WatchEventType::Modified | pb::WatchEventType::Unspecified => Change::Modified,
        }
    }
}

/// Deleted objects remembered before the older ones are forgotten (a
/// forgotten one is treated as never printed, which is what a deletion is
/// to a new list; a correct server never sends a change at or below the
/// index the watch resumed from).
const TOMBSTONES: usize = 4096;

/// What was printed for each object: the index of its last printed change
/// and, unless that was a deletion, its content.
#[derive(Debug, Default)]
pub struct Printed {
    objects: BTreeMap<(String, String), (u64, Option<Object>)>,
    tombstones: usize,
}

impl Printed {
    /// The changes of one batch at `index` worth printing: those newer than
    /// what was printed for their object.
    pub fn changes(&mut self, index: u64, events: Vec<pb::WatchEvent>) -> Vec<(Change, Object)> {
        let mut out = Vec::new();
        for e in events {
            let change = Change::of(e.r#type());
            let Some(object) = e.object else { continue };
            let key = key_of(&object);
            if self.objects.get(&key).is_some_and(|(i, _)| *i >= index) {
                continue;
            }
            let kept = (change != Change::Deleted).then(|| object.clone());
            self.tombstones += usize::from(kept.is_none());
            self.objects.insert(key, (index, kept));
            out.push((change, object));
        }
        if self.tombstones > TOMBSTONES {
            self.objects
                .retain(|_, (at, o)| o.is_some() || *at >= index);
            self.tombstones = self.objects.values().filter(|(_, o)| o.is_none()).count();
        }
        out
    }

    /// A list at `index` after a watch could not resume: the objects whose
    /// content differs from what was printed (ADDED when not printed or
    /// deleted), and a DELETED for each printed object the list lacks.
    pub fn relist(&mut self, index: u64, objects: Vec<Object>) -> Vec<(Change, Object)> {
        let mut out = Vec::new();
        let mut listed = std::collections::BTreeSet::new();
        for object in objects {
            let key = key_of(&object);
            listed.insert(key.clone());
            let change = match self.objects.get(&key) {
                Some((_, Some(old))) if *old == object => continue,
                Some((_, Some(_))) => Change::Modified,
                _ => Change::Added,
            };
            self.objects.insert(key, (index, Some(object.clone())));
            out.push((change, object));
        }
        for (key, (at, last)) in self.objects.iter_mut() {
            if listed.contains(key) {
                continue;
            }
            if let Some(gone) = last.take() {
                *at = index;
                self.tombstones += 1;
                out.push((Change::Deleted, gone));
            }
        }
        out
    }
}

fn key_of(object: &Object) -> (String, String) {
    match object {
        Object::Deployment(d) => (d.namespace.clone(), d.name.clone()),
        Object::Replica(r) => (r.namespace.clone(), r.name.clone()),
        Object::Node(n) => (String::new(), n.name.clone()),
        Object::Config(c) => (c.namespace.clone(), c.name.clone()),
    }
}

/// `get KIND -w`: list, then follow changes until Ctrl-C.
pub async fn run(
    env: &Env,
    args: &GetArgs,
    kind: ResourceKind,
    names: &[String],
    selectors: &Selectors,
) -> anyhow::Result<()> {
    let watch_kind = match kind {
        ResourceKind::Deployment => pb::WatchKind::Deployment,
        ResourceKind::Replica => pb::WatchKind::Replica,
        ResourceKind::Node => pb::WatchKind::Node,
        ResourceKind::ConfigMap => pb::WatchKind::ConfigMap,
        ResourceKind::Secret => pb::WatchKind::Secret,
        ResourceKind::Event => bail!("events are watched by droverctl get events -w"),
        ResourceKind::Service => pb::WatchKind::Service,
        ResourceKind::Endpoints => pb::WatchKind::Endpoints,
    };
    let (mut client, settings) = env.client()?;
    let namespace = if args.all_namespaces || !kind.namespaced() {
        String::new()
    } else {
        settings.namespace.clone()
    };
    let mut fields = selectors.fields.clone();
    if let Some(d) = &args.deployment {
        if !fields.is_empty() {
            fields.push(',');
        }
        fields.push_str(&format!("spec.deployment={d}"));
    }
    let request = pb::WatchRequest {
        kind: watch_kind as i32,
        namespace,
        label_selector: selectors.labels.clone(),
        field_selector: fields,
        from_index: 0,
    };
    let mut printer = Printer::new(kind, args, names);
    let interrupted = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(interrupted);
    tokio::select! {
        result = follow(&mut client, request, &mut printer) => result,
        () = &mut interrupted => Err(Interrupted.into()),
    }
}

/// Open the watch, print what it sends, and open it again (from the last
/// complete index, on whichever controller answers) when it breaks.
async fn follow(
    client: &mut Client,
    mut request: pb::WatchRequest,
    printer: &mut Printer,
) -> anyhow::Result<()> {
    let mut printed = Printed::default();
    let mut cursor = 0u64;
    let mut listed = false;
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        request.from_index = cursor;
        let open = client
            .call(|mut c| {
                let request = request.clone();
                async move { c.watch(request).await }
            })
            .await;
        let mut stream = match open {
            Ok(stream) => stream,
            Err(e) if e.code().is_none_or(|c| c == Code::Unavailable) => {
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > RECONNECT_FOR {
                    return Err(e.into());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mut pending: Vec<pb::WatchEvent> = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(batch)) => {
                    failing_since = None;
                    pending.extend(batch.events);
                    if batch.more {
                        continue;
                    }
                    let events = std::mem::take(&mut pending);
                    if batch.initial && !listed {
                        let objects = events.into_iter().filter_map(|e| e.object).collect();
                        printer.list(batch.index, &mut printed, objects)?;
                        listed = true;
                    } else if batch.initial {
                        let objects = events.into_iter().filter_map(|e| e.object).collect();
                        let changes = printed.relist(batch.index, printer.keep(objects));
                        printer.changes(batch.index, changes)?;
                    } else {
                        let changes = printed.changes(batch.index, printer.keep_events(events));
                        printer.changes(batch.index, changes)?;
                    }
                    cursor = batch.index;
                }
                // The controller ended the stream (shutting down): resume elsewhere.
                Ok(None) => break,
                // Kubernetes' 410 Gone: the index is older than the history.
                Err(status) if status.code() == Code::OutOfRange => {
                    cursor = 0;
                    break;
                }
                Err(status)
                    if is_transport_failure(&status) || status.code() == Code::Unavailable =>
                {
                    break
                }
                Err(status) => bail!("{}", status_sentence(&status)),
            }
        }
    }
}

/// Prints a watch in the format asked for.
struct Printer {
    kind: ResourceKind,
    format: Option<OutputFormat>,
    all_namespaces: bool,
    no_headers: bool,
    watch_only: bool,
    events: bool,
    names: Vec<String>,
    columns: Option<Columns>,
}

impl Printer {
    fn new(kind: ResourceKind, args: &GetArgs, names: &[String]) -> Printer {
        Printer {
            kind,
            format: args.output.clone(),
            all_namespaces: args.all_namespaces && kind.namespaced(),
            no_headers: args.no_headers,
            watch_only: args.watch_only,
            events: args.output_watch_events,
            names: names.to_vec(),
            columns: None,
        }
    }

    /// Only the objects named on the command line, if any were.
    fn keep(&self, objects: Vec<Object>) -> Vec<Object> {
        objects
            .into_iter()
            .filter(|o| self.names.is_empty() || self.names.contains(&key_of(o).1))
            .collect()
    }

    fn keep_events(&self, events: Vec<pb::WatchEvent>) -> Vec<pb::WatchEvent> {
        events
            .into_iter()
            .filter(|e| {
                self.names.is_empty()
                    || e.object
                        .as_ref()
                        .is_some_and(|o| self.names.contains(&key_of(o).1))
            })
            .collect()
    }

    fn wide(&self) -> bool {
        self.format == Some(OutputFormat::Wide)
    }

    fn table(&self) -> bool {
        matches!(self.format, None | Some(OutputFormat::Wide))
    }

    /// The first list: the table (with `--watch-only`, nothing), as `get`.
    fn list(
        &mut self,
        index: u64,
        printed: &mut Printed,
        objects: Vec<Object>,
    ) -> anyhow::Result<()> {
        let objects = self.keep(objects);
        let changes = printed.relist(index, objects);
        let now = now_ms();
        if self.table() {
            let headers = self.headers();
            let mut rows: Vec<Vec<String>> = Vec::new();
            for (_, o) in &changes {
                rows.push(self.cells(Change::Added, o, now)?);
            }
            let typical = headers
                .iter()
                .map(|h| {
                    let width = WATCH_MIN_WIDTHS
                        .iter()
                        .find(|(name, _)| name == h)
                        .map_or(0, |(_, w)| *w);
                    " ".repeat(width)
                })
                .collect();
            rows.push(typical);
            let columns = Columns::fit(&headers, &rows);
            rows.pop();
            let mut text = String::new();
            if !self.no_headers {
                text = columns.line(&headers) + "\n";
            }
            if !self.watch_only {
                for r in &rows {
                    text.push_str(&columns.line(r));
                    text.push('\n');
                }
            }
            self.columns = Some(columns);
            return print(&text);
        }
        if self.watch_only {
            return Ok(());
        }
        if let Some(OutputFormat::CustomColumns(spec)) = &self.format {
            let objects = changes
                .iter()
                .map(|(c, o)| self.object(*c, o, index))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let table = CustomColumns::parse(spec)?.render(&objects);
            return print(&if self.no_headers {
                output::without_header(&table)
            } else {
                table
            });
        }
        self.changes(index, changes)
    }

    /// One line (or object) per change.
    fn changes(&mut self, index: u64, changes: Vec<(Change, Object)>) -> anyhow::Result<()> {
        let now = now_ms();
        let mut text = String::new();
        for (change, o) in &changes {
            if self.table() {
                let cells = self.cells(*change, o, now)?;
                let line = match &self.columns {
                    Some(c) => c.line(&cells),
                    None => cells.join("   "),
                };
                text.push_str(&line);
                text.push('\n');
                continue;
            }
            let value = self.object(*change, o, index)?;
            text.push_str(&match self.format.as_ref() {
                Some(OutputFormat::Name) => {
                    let name = format!("{}\n", self.kind.slash_name(&key_of(o).1));
                    if self.events {
                        format!("{}   {name}", change.as_str())
                    } else {
                        name
                    }
                }
                Some(OutputFormat::Yaml) => format!("---\n{}", output::to_yaml(&value)?),
                Some(OutputFormat::JsonPath(t)) => Template::parse(t)?.render(&value),
                Some(OutputFormat::CustomColumns(spec)) => {
                    output::without_header(&CustomColumns::parse(spec)?.render(&[value]))
                }
                _ => output::to_json(&value)?,
            });
        }
        print(&text)
    }

    fn headers(&self) -> Vec<&'static str> {
        let wide = self.wide();
        let mut h = if self.events { vec!["EVENT"] } else { vec![] };
        h.extend(match self.kind {
            ResourceKind::Deployment => output::deployment_headers(wide, self.all_namespaces),
            ResourceKind::Replica => replicas::headers(wide, self.all_namespaces),
            ResourceKind::Node => nodes::headers(wide),
            ResourceKind::Service => services::headers(self.all_namespaces, wide),
            ResourceKind::Endpoints => services::endpoints_headers(self.all_namespaces),
            _ => config_objects::headers(self.kind, self.all_namespaces),
        });
        h
    }

    /// A table row, the same as `get` prints.
    fn cells(&self, change: Change, o: &Object, now: i64) -> anyhow::Result<Vec<String>> {
        let wide = self.wide();
        let mut row = if self.events {
            vec![change.as_str().to_string()]
        } else {
            vec![]
        };
        row.extend(match o {
            Object::Deployment(d) => {
                let model = output::model_of(d).ok();
                output::deployment_row(d, model.as_ref(), wide, self.all_namespaces, now)
            }
            Object::Replica(r) => replicas::row(r, wide, self.all_namespaces, now),
            Object::Node(n) => nodes::row(n, wide, now),
            Object::Config(c) => match self.kind {
                ResourceKind::Service => services::row(
                    &services::item(c.clone(), "a service")?,
                    self.all_namespaces,
                    wide,
                    now,
                ),
                ResourceKind::Endpoints => services::endpoints_row(
                    &services::item(c.clone(), "endpoints")?,
                    self.all_namespaces,
                    now,
                ),
                _ => config_objects::row(&self.item(c)?, self.all_namespaces, now),
            },
        });
        Ok(row)
    }

    fn item(&self, record: &pb::ConfigRecord) -> anyhow::Result<Item> {
        config_objects::item(self.kind, record.clone())
    }

    /// The object as `-o json|yaml` prints it, with the index of the change
    /// as its `resourceVersion`; with `--output-watch-events`, wrapped in
    /// `{"type": ..., "object": ...}` as kubectl does.
    fn object(&self, change: Change, o: &Object, index: u64) -> anyhow::Result<Value> {
        let mut value = match o {
            Object::Deployment(d) => output::kubernetes_object(d, &output::model_of(d)?),
            Object::Replica(r) => replicas::kubernetes_object(r),
            Object::Node(n) => nodes::kubernetes_object(n),
            Object::Config(c) => match self.kind {
                ResourceKind::Service => {
                    services::kubernetes_object(&services::item(c.clone(), "a service")?)
                }
                ResourceKind::Endpoints => {
                    services::endpoints_object(&services::item(c.clone(), "endpoints")?)
                }
                _ => config_objects::kubernetes_object(&self.item(c)?),
            },
        };
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(index.to_string()));
        }
        Ok(if self.events {
            json!({ "type": change.as_str(), "object": value })
        } else {
            value
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(name: &str, generation: u64) -> Object {
        Object::Deployment(pb::Deployment {
            namespace: "default".into(),
            name: name.into(),
            generation,
            ..Default::default()
        })
    }

    fn event(t: pb::WatchEventType, o: Object) -> pb::WatchEvent {
        pb::WatchEvent {
            r#type: t as i32,
            object: Some(o),
        }
    }

    fn names(changes: &[(Change, Object)]) -> Vec<(Change, String)> {
        changes
            .iter()
            .map(|(c, o)| (*c, format!("{}@{}", key_of(o).1, generation(o))))
            .collect()
    }

    fn generation(o: &Object) -> u64 {
        match o {
            Object::Deployment(d) => d.generation,
            _ => 0,
        }
    }

    #[test]
    fn a_change_at_or_below_the_last_printed_index_is_not_printed_again() {
        let mut p = Printed::default();
        let listed = p.relist(10, vec![deployment("web", 1)]);
        assert_eq!(names(&listed), [(Change::Added, "web@1".into())]);
        let modified = event(pb::WatchEventType::Modified, deployment("web", 2));
        let first = p.changes(12, vec![modified.clone()]);
        assert_eq!(names(&first), [(Change::Modified, "web@2".into())]);
        // The same batch again (a resume from an older index) prints nothing.
        assert!(p.changes(12, vec![modified.clone()]).is_empty());
        assert!(p.changes(11, vec![modified]).is_empty());
        let next = p.changes(
            13,
            vec![event(pb::WatchEventType::Deleted, deployment("web", 2))],
        );
        assert_eq!(names(&next), [(Change::Deleted, "web@2".into())]);
    }

    #[test]
    fn a_new_list_prints_only_what_differs_from_what_was_printed() {
        let mut p = Printed::default();
        p.relist(
            5,
            vec![deployment("a", 1), deployment("b", 1), deployment("c", 1)],
        );
        p.changes(
            6,
            vec![event(pb::WatchEventType::Deleted, deployment("c", 1))],
        );
        // Missed while away: a changed, b deleted, c and d created.
        let changes = p.relist(
            20,
            vec![deployment("a", 2), deployment("c", 1), deployment("d", 1)],
        );
        assert_eq!(
            names(&changes),
            [
                (Change::Modified, "a@2".into()),
                (Change::Added, "c@1".into()),
                (Change::Added, "d@1".into()),
                (Change::Deleted, "b@1".into()),
            ]
        );
        // The same list again changes nothing.
        let same = p.relist(
            21,
            vec![deployment("a", 2), deployment("c", 1), deployment("d", 1)],
        );
        assert!(same.is_empty());
    }
}
