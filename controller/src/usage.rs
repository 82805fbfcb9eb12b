//! CPU and memory in use, as the agents last reported it: the leader's
//! memory behind `droverctl top`. Never replicated, never on disk.
//!
//! ```text
//!   agent ──StatusReport{usage} every few s──▶ dispatcher ──record(node, usage)──▶ book
//!   droverctl top ──Control.Top──▶ leader: top(nodes, replicas, book.latest(now)) ──▶ rows
//! ```
//!
//! **Trust.** An agent speaks for its own node only (the dispatcher's
//! NodeRestriction), and [`top`] shows a replica's usage only from the node
//! the replica is bound to: an agent cannot put figures on another node's
//! replicas. One sample per node is kept, so memory is bounded by the node
//! count and the session message limit.
//!
//! **Freshness.** A sample older than [`MAX_AGE`] counts as none: a node
//! whose agent went quiet shows `<unknown>`, as `kubectl top` does, and a
//! controller that leads again does not serve figures from its last term.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use drover_proto::pb;

use crate::store::{NodeRecord, ReplicaRecord};

/// Samples older than this are not shown (agents sample every 5 s).
pub const MAX_AGE: Duration = Duration::from_secs(20);

/// One node's latest sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub at: Instant,
    pub node: pb::ResourceUsage,
    /// Agent replica id (`<namespace>.<name>`) → usage.
    pub replicas: HashMap<String, pb::ResourceUsage>,
}

/// Node name → its latest sample.
#[derive(Debug, Default)]
pub struct Book(Mutex<HashMap<String, Sample>>);

static BOOK: OnceLock<Book> = OnceLock::new();

/// The process-wide book (one controller per process).
pub fn book() -> &'static Book {
    BOOK.get_or_init(Book::default)
}

/// Keep `node`'s sample, if the report carries one (instrumentation: the
/// dispatcher, where a StatusReport arrives).
pub fn record(node: &str, usage: Option<&pb::Usage>) {
    if let Some(usage) = usage {
        book().insert(node, usage, Instant::now());
    }
}

impl Book {
    pub fn insert(&self, node: &str, usage: &pb::Usage, at: Instant) {
        let sample = Sample {
            at,
            node: usage.node.unwrap_or_default(),
            replicas: usage
                .replicas
                .iter()
                .map(|r| (r.replica.clone(), r.usage.unwrap_or_default()))
                .collect(),
        };
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(node.to_string(), sample);
    }

    /// Samples taken within [`MAX_AGE`] of `now`.
    pub fn latest(&self, now: Instant) -> BTreeMap<String, Sample> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter(|(_, s)| now.saturating_duration_since(s.at) <= MAX_AGE)
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }
}

/// The `top` answer: every node (sampled or not) with its capacity, and every
/// given replica that its bound node reported usage for. Pure; cost
/// O(nodes + replicas).
pub fn top(
    nodes: &[NodeRecord],
    replicas: &[ReplicaRecord],
    samples: &BTreeMap<String, Sample>,
) -> pb::TopResponse {
    let nodes = nodes
        .iter()
        .map(|n| {
            let sample = samples.get(&n.name);
            pb::NodeTop {
                name: n.name.clone(),
                sampled: sample.is_some(),
                usage: sample.map(|s| s.node),
                capacity: Some(pb::ResourceUsage {
                    cpu_millis: n.capacity.cpu_millis,
                    memory_bytes: n.capacity.memory_bytes,
                }),
            }
        })
        .collect();
    let replicas = replicas
        .iter()
        .filter(|r| !r.is_terminating())
        .filter_map(|r| {
            let node = r.node.as_ref()?;
            let usage = samples.get(node)?.replicas.get(&r.agent_id())?;
            Some(pb::ReplicaTop {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                node: node.clone(),
                usage: Some(*usage),
            })
        })
        .collect();
    pb::TopResponse { nodes, replicas }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NodeCondition, Resources};

    fn node(name: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            labels: Default::default(),
            capacity: Resources {
                cpu_millis: 2000,
                memory_bytes: 4 << 30,
            },
            address: String::new(),
            runtime: "process".into(),
            agent_version: String::new(),
            incarnation: String::new(),
            registered_unix_ms: 0,
            condition: NodeCondition::Ready,
            condition_since_unix_ms: 0,
            cordoned: false,
            draining: false,
        }
    }

    fn replica(name: &str, node: Option<&str>) -> ReplicaRecord {
        serde_json::from_value(serde_json::json!({
            "namespace": "default",
            "name": name,
            "deployment": "web",
            "slot": 0,
            "revision": "abc",
            "node": node,
            "pending_reason": "",
            "created_unix_ms": 0,
            "observed": serde_json::to_value(crate::store::ReplicaObserved::default()).expect("json"),
        }))
        .expect("a replica record")
    }

    fn usage(cpu: u64, replicas: &[(&str, u64)]) -> pb::Usage {
        pb::Usage {
            node: Some(pb::ResourceUsage {
                cpu_millis: cpu,
                memory_bytes: 1 << 20,
            }),
            replicas: replicas
                .iter()
                .map(|(r, cpu)| pb::ReplicaUsage {
                    replica: r.to_string(),
                    usage: Some(pb::ResourceUsage {
                        cpu_millis: *cpu,
                        memory_bytes: 1 << 10,
                    }),
                })
                .collect(),
            window_ms: 5000,
        }
    }

    #[test]
    fn a_replica_shows_only_what_its_own_node_reported() {
        let book = Book::default();
        let t0 = Instant::now();
        // n2 claims n1's replica: ignored.
        book.insert("n1", &usage(900, &[("default.web-a", 800)]), t0);
        book.insert(
            "n2",
            &usage(100, &[("default.web-a", 5), ("default.web-b", 7)]),
            t0,
        );
        let answer = top(
            &[node("n1"), node("n2"), node("n3")],
            &[
                replica("web-a", Some("n1")),
                replica("web-b", Some("n2")),
                replica("web-c", None),
            ],
            &book.latest(t0),
        );
        let rows: Vec<(String, u64)> = answer
            .replicas
            .iter()
            .map(|r| (r.name.clone(), r.usage.map_or(0, |u| u.cpu_millis)))
            .collect();
        assert_eq!(rows, vec![("web-a".into(), 800), ("web-b".into(), 7)]);
        let sampled: Vec<(String, bool)> = answer
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.sampled))
            .collect();
        assert_eq!(
            sampled,
            vec![
                ("n1".into(), true),
                ("n2".into(), true),
                ("n3".into(), false)
            ]
        );
    }

    #[test]
    fn a_sample_older_than_max_age_counts_as_none() {
        let book = Book::default();
        let t0 = Instant::now();
        book.insert("n1", &usage(900, &[]), t0);
        assert_eq!(book.latest(t0 + MAX_AGE).len(), 1);
        assert!(book
            .latest(t0 + MAX_AGE + Duration::from_millis(1))
            .is_empty());
    }
}
