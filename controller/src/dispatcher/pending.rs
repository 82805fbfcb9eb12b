//! Replica statuses on their way into the raft log.
//!
//! ```text
//!  sessions ──push──▶ Pending { newest per (node, replica) } ──take──▶ one ReportStatus entry
//!                           ▲                                            │ commit failed
//!                           └──────────────── restore (older only) ◀─────┘
//! ```
//!
//! Agents send a status only when it changes, so a report that is lost stays
//! lost: a lost "ready" stalled a rollout until its deadline. Nothing here
//! drops a report: a burst coalesces to the newest status per node and
//! replica (memory is bounded by the replicas, not by the messages), and a
//! batch whose commit failed goes back unless a newer report took its place.
//! Keyed by node too: while a replica moves, its old node's last word must
//! not replace its new node's (the store ignores the old one).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::store::{ObjectRef, ReplicaObserved};

/// The reports the map keeps room for between batches (a few hundred KiB).
const KEPT_ROOM: usize = 4096;

/// One replica status as a node reported it.
pub type Report = (String, ObjectRef, ReplicaObserved);

#[derive(Default)]
pub struct Pending {
    map: Mutex<HashMap<(String, ObjectRef), ReplicaObserved>>,
    ready: Notify,
}

impl Pending {
    /// Keep `report`, replacing an older one for the same node and replica.
    pub fn push(&self, (node, target, observed): Report) {
        self.lock().insert((node, target), observed);
        self.ready.notify_one();
    }

    /// Wait until something was pushed since the last `take`.
    pub async fn wait(&self) {
        self.ready.notified().await;
    }

    /// Everything pending, in a stable order (replica, then node). The map
    /// keeps room for [`KEPT_ROOM`] reports: the next batch, about as large,
    /// does not grow it again from nothing, and a burst's room is given back.
    pub fn take(&self) -> Vec<Report> {
        let mut map = self.lock();
        let mut reports: Vec<Report> = map.drain().map(|((n, t), o)| (n, t, o)).collect();
        map.shrink_to(KEPT_ROOM);
        drop(map);
        reports.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
        reports
    }

    /// Put back a batch that did not commit; a report pushed since wins.
    pub fn restore(&self, reports: Vec<Report>) {
        if reports.is_empty() {
            return;
        }
        let mut map = self.lock();
        for (node, target, observed) in reports {
            map.entry((node, target)).or_insert(observed);
        }
        drop(map);
        self.ready.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, ObjectRef), ReplicaObserved>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: &str, replica: &str, ready: bool) -> Report {
        let observed = ReplicaObserved {
            node: node.into(),
            ready,
            ..Default::default()
        };
        (
            node.into(),
            ObjectRef {
                namespace: "default".into(),
                name: replica.into(),
            },
            observed,
        )
    }

    #[test]
    fn a_burst_coalesces_to_the_newest_status_per_node_and_replica() {
        let p = Pending::default();
        p.push(report("n1", "web-0", false));
        p.push(report("n1", "web-0", true));
        p.push(report("n2", "web-0", false));
        p.push(report("n1", "web-1", true));
        let batch = p.take();
        assert_eq!(batch.len(), 3);
        assert!(batch[0].2.ready, "n1's newest word on web-0");
        assert_eq!((batch[1].0.as_str(), batch[1].2.ready), ("n2", false));
        assert!(p.take().is_empty(), "taken once");
    }

    #[test]
    fn a_batch_that_did_not_commit_comes_back_unless_a_newer_report_arrived() {
        let p = Pending::default();
        p.push(report("n1", "web-0", true));
        p.push(report("n1", "web-1", true));
        let failed = p.take();
        // While the commit was failing, web-1 changed again.
        p.push(report("n1", "web-1", false));
        p.restore(failed);
        let retry = p.take();
        assert_eq!(retry.len(), 2, "the lost 'ready' of web-0 is retried");
        assert!(retry[0].2.ready, "web-0 as it was reported");
        assert!(
            !retry[1].2.ready,
            "web-1's newer report wins over the failed one"
        );
    }

    #[tokio::test]
    async fn a_push_wakes_the_batcher() {
        let p = std::sync::Arc::new(Pending::default());
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.wait().await }
        });
        p.push(report("n1", "web-0", true));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
    }
}
