//! How events look: kubectl's `get events` table and a Kubernetes-shaped `Event`.
//!
//! ```text
//! LAST SEEN   TYPE      REASON         OBJECT              MESSAGE
//! 2m          Normal    Scheduled      replica/web-1a2b3-0   Successfully assigned default/web-1a2b3-0 to n2
//! 5s          Warning   NodeNotReady   node/n1             Node n1 status is now: NotReady ...
//! ```
//!
//! `get events -w` prints rows as they come, so its columns cannot be padded
//! to the widest cell of the whole list: [`Columns`] fixes the widths from the
//! first batch and later rows reuse them.

use drover_proto::pb;
use serde_json::{json, Value};

use super::{age, one_line, rfc3339};

/// `replica/web-1a2b3-0`, `node/n1`, `deployment.apps/web`.
pub fn object(e: &pb::Event) -> String {
    let kind = match e.object_kind.as_str() {
        "Deployment" => "deployment.apps".to_string(),
        other => other.to_ascii_lowercase(),
    };
    format!("{kind}/{}", e.name)
}

/// The table's headers.
pub fn headers(wide: bool, all_namespaces: bool) -> Vec<&'static str> {
    let mut h = Vec::new();
    if all_namespaces {
        h.push("NAMESPACE");
    }
    h.extend(["LAST SEEN", "TYPE", "REASON", "OBJECT"]);
    if wide {
        h.extend(["SEQ", "TIME"]);
    }
    h.push("MESSAGE");
    h
}

/// One row, in the order of [`headers`].
pub fn row(e: &pb::Event, wide: bool, all_namespaces: bool, now_ms: i64) -> Vec<String> {
    let mut r = Vec::new();
    if all_namespaces {
        r.push(one_line(&e.namespace));
    }
    r.extend([
        last_seen(e, now_ms),
        one_line(&e.r#type),
        one_line(&e.reason),
        one_line(&object(e)),
    ]);
    if wide {
        r.extend([e.seq.to_string(), rfc3339(e.time_unix_ms)]);
    }
    r.push(one_line(&e.message));
    r
}

/// kubectl's LAST SEEN: `5s`, or `5s (x3 over 2m)` for a repeated event.
pub fn last_seen(e: &pb::Event, now_ms: i64) -> String {
    let last = age(e.time_unix_ms, now_ms);
    if e.count > 1 {
        let first = if e.first_time_unix_ms > 0 {
            e.first_time_unix_ms
        } else {
            e.time_unix_ms
        };
        format!("{last} (x{} over {})", e.count, age(first, now_ms))
    } else {
        last
    }
}

/// Column widths fixed once, for rows printed one at a time.
#[derive(Debug, Clone)]
pub struct Columns {
    widths: Vec<usize>,
}

impl Columns {
    /// Widths that fit the headers and `rows` (the last column is never padded).
    pub fn fit(headers: &[&str], rows: &[Vec<String>]) -> Columns {
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for r in rows {
            for (w, cell) in widths.iter_mut().zip(r) {
                *w = (*w).max(cell.chars().count());
            }
        }
        Columns { widths }
    }

    /// One line, columns three spaces apart, no trailing spaces.
    pub fn line<S: AsRef<str>>(&self, cells: &[S]) -> String {
        let mut out = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            let cell = cell.as_ref();
            out.push_str(cell);
            if i < last {
                let width = self.widths.get(i).copied().unwrap_or(0);
                let pad = width.saturating_sub(cell.chars().count()) + super::COLUMN_GAP;
                out.push_str(&" ".repeat(pad));
            }
        }
        out.truncate(out.trim_end().len());
        out
    }
}

/// `event/<seq>` lines for `-o name`.
pub fn name(e: &pb::Event) -> String {
    format!("event/{}", e.seq)
}

/// The event as a Kubernetes `v1` Event.
pub fn kubernetes_object(e: &pb::Event) -> Value {
    let mut metadata = json!({ "name": e.seq.to_string() });
    if !e.namespace.is_empty() {
        metadata["namespace"] = json!(e.namespace);
    }
    let mut involved = json!({ "kind": e.object_kind, "name": e.name });
    if !e.namespace.is_empty() {
        involved["namespace"] = json!(e.namespace);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": metadata,
        "involvedObject": involved,
        "type": e.r#type,
        "reason": e.reason,
        "message": e.message,
        "count": e.count.max(1),
        "firstTimestamp": rfc3339(if e.first_time_unix_ms > 0 { e.first_time_unix_ms } else { e.time_unix_ms }),
        "lastTimestamp": rfc3339(e.time_unix_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, name: &str, message: &str) -> pb::Event {
        pb::Event {
            seq: 7,
            time_unix_ms: 1_717_243_200_000,
            r#type: "Warning".into(),
            reason: "NodeNotReady".into(),
            object_kind: kind.into(),
            namespace: if kind == "Node" { "" } else { "default" }.into(),
            name: name.into(),
            message: message.into(),
            count: 1,
            first_time_unix_ms: 0,
        }
    }

    #[test]
    fn rows_read_like_kubectl() {
        let e = event("Node", "n1", "Node n1 status is now: NotReady");
        let now = e.time_unix_ms + 65_000;
        assert_eq!(
            row(&e, false, false, now),
            [
                "65s",
                "Warning",
                "NodeNotReady",
                "node/n1",
                "Node n1 status is now: NotReady"
            ]
        );
        let d = event("Deployment", "web", "Scaled from 1 to 3 replicas");
        assert_eq!(object(&d), "deployment.apps/web");
        assert_eq!(row(&d, true, true, now)[0], "default");
        assert_eq!(row(&d, true, true, now)[5], "7");
    }

    #[test]
    fn a_repeated_event_says_how_often_and_since_when() {
        let mut e = event("Replica", "web-1", "Back-off restarting failed container");
        e.count = 3;
        e.first_time_unix_ms = e.time_unix_ms - 115_000;
        let now = e.time_unix_ms + 5_000;
        assert_eq!(last_seen(&e, now), "5s (x3 over 2m)");
        assert_eq!(kubernetes_object(&e)["count"], 3);
    }

    #[test]
    fn fixed_columns_pad_all_but_the_last() {
        let rows = vec![vec!["1s".to_string(), "Normal".into(), "x".into()]];
        let c = Columns::fit(&["LAST SEEN", "TYPE", "MESSAGE"], &rows);
        assert_eq!(
            c.line(&["LAST SEEN", "TYPE", "MESSAGE"]),
            "LAST SEEN   TYPE     MESSAGE"
        );
        assert_eq!(c.line(&["1s", "Warning", "y"]), "1s          Warning   y");
        assert_eq!(c.line(&["1s", "Normal", ""]), "1s          Normal");
    }

    #[test]
    fn the_kubernetes_shape_names_the_object() {
        let v = kubernetes_object(&event("Replica", "web-1", "m"));
        assert_eq!(v["involvedObject"]["name"], "web-1");
        assert_eq!(v["metadata"]["namespace"], "default");
        let n = kubernetes_object(&event("Node", "n1", "m"));
        assert!(n["metadata"].get("namespace").is_none());
    }
}
