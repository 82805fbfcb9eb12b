//! The scheduler: which node each unassigned replica should run on.
//!
//! A pure decision in the style of Kubernetes' default scheduler, simplified. It
//! reads no clock, does no I/O and draws no random numbers: the same inputs give
//! the same [`Decision`]s on every controller. The leader's runner gathers the
//! inputs from the store, calls [`schedule`], and commits the placements of one
//! call as one raft entry.
//!
//! ```text
//!  placed ──▶ ClusterView: per node, resources in use, host ports in use and
//!             replicas per deployment (built once per call)
//!                     │
//!  pending ──▶ for each replica, in the order given:
//!     ┌───────────────┴──────────────────────────────────────────────────────────┐
//!     │ filter  ready ▸ not cordoned ▸ nodeSelector ▸ host ports ▸ cpu ▸ memory  │
//!     │         each rejected node is counted once, by the first filter it fails │
//!     │         ──▶ none left: Unschedulable { "0/N nodes are available: …" }    │
//!     │ score   lowest (replicas of the same deployment on the node,             │
//!     │                 dominant share after placing, node name)                 │
//!     │         ──▶ Place { node }                                               │
//!     └───────────────┬──────────────────────────────────────────────────────────┘
//!                     │ commit: usage += requests, host ports ∪= requested,
//!                     ▼         replicas of the deployment on the node += 1
//!            the next replica sees this placement
//! ```
//!
//! Filters, in the order used to explain a failure: the node is Ready; it is not
//! cordoned; every nodeSelector label is on the node; no requested host port
//! (port and protocol) is already taken on it; the cpu request fits what is
//! left of its allocatable; the memory request fits likewise. A request of zero
//! always fits, even on a full node.
//!
//! Score, compared in order, lower is better:
//! 1. *spread*: replicas of the same deployment already on the node;
//! 2. *least allocated*: the node's dominant share after placing — the larger of
//!    its cpu and memory fractions in use (as in DRF), compared exactly as
//!    fractions. Kubernetes' `LeastAllocated` averages the two instead; the
//!    maximum keeps one resource from filling up while the other looks idle;
//! 3. node name, so ties resolve the same way whatever order nodes arrive in.
//!
//! Cost: O(nodes + placed) to build the view; nothing rescans `placed`. Nodes
//! that fail the static filters (ready, cordon, selector) are worked out once
//! per distinct nodeSelector. A replica whose shape (deployment, requests,
//! selector, host ports) comes once in the call costs O(eligible nodes); the
//! replicas of a shape that comes several times share its [`candidates`]: one
//! pass to build them, then O(log nodes) per replica plus the nodes placed on
//! since that shape's last replica (at most [`MAX_CANDIDATES`] entries held at
//! once; beyond that, replicas are scored node by node).

mod candidates;
mod filter;
mod score;
mod view;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use drover_manifest::Protocol;

use candidates::{Candidates, Shape};
use filter::{EligibleNodes, FailureHistogram};
use score::Score;
use view::ClusterView;

pub use crate::store::Resources;

/// A node as the scheduler sees it. Names are unique (the store keys nodes by
/// name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// What replicas may request in total on this node.
    pub allocatable: Resources,
    pub ready: bool,
    pub cordoned: bool,
    /// What replicas bound to the node and *not* listed in `placed` hold:
    /// the caller may pass the node's totals here and list in `placed` only
    /// the replicas that matter for spread, with nothing held.
    pub in_use: Resources,
    /// Host ports those replicas hold.
    pub ports_in_use: Vec<(u16, Protocol)>,
}

/// A replica already bound to a node (running, starting, or terminating — it
/// still holds its resources and host ports).
///
/// A `Placed` naming a node that is not in the node list is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub node: String,
    /// `"namespace/name"` of the owning deployment.
    pub deployment: String,
    pub requests: Resources,
    /// Host ports it holds; port 0 means "no host port" (as in Kubernetes) and
    /// is ignored.
    pub host_ports: Vec<(u16, Protocol)>,
}

/// A replica that needs a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub replica: String,
    /// `"namespace/name"` of the owning deployment.
    pub deployment: String,
    pub requests: Resources,
    /// Labels the node must carry, all of them, with these values.
    pub node_selector: BTreeMap<String, String>,
    /// Host ports it needs; port 0 means "no host port" and is ignored.
    pub host_ports: Vec<(u16, Protocol)>,
}

/// What to do with one pending replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Bind the replica to the node.
    Place { replica: String, node: String },
    /// No node passes every filter; the replica stays Pending. `reason` is in
    /// kubectl's words, e.g.
    /// `0/3 nodes are available: 1 node(s) were unschedulable, 2 Insufficient memory.`
    Unschedulable { replica: String, reason: String },
}

/// Decides a node for each pending replica, in the order given.
///
/// Returns exactly one [`Decision`] per entry of `pending`, in the same order.
/// Each placement counts against the node's resources, host ports and spread
/// for every later replica of the same call, so a batch never over-commits a
/// node or puts one host port on a node twice.
///
/// The `reason` of [`Decision::Unschedulable`] follows kubectl: `0/N nodes are
/// available: ` then one `K <reason>` item per kind of failure (each node is
/// counted once, by the first filter it fails), items sorted as whole strings
/// the way Kubernetes' `sort.Strings` does, then a period. With no nodes at all
/// the reason is `0/0 nodes are available: no nodes registered.`
///
/// The result depends only on the inputs' contents, not on the order of
/// `nodes` or `placed`.
#[must_use]
pub fn schedule(pending: &[Pending], nodes: &[NodeInfo], placed: &[Placed]) -> Vec<Decision> {
    schedule_within(pending, nodes, placed, MAX_CANDIDATES)
}

/// [`schedule`], holding at most `max_candidates` candidate entries at once
/// (0: every replica scored node by node, the reference the tests compare
/// with).
fn schedule_within(
    pending: &[Pending],
    nodes: &[NodeInfo],
    placed: &[Placed],
    max_candidates: usize,
) -> Vec<Decision> {
    if nodes.is_empty() {
        return pending
            .iter()
            .map(|replica| Decision::Unschedulable {
                replica: replica.replica.clone(),
                reason: filter::NO_NODES_REASON.to_string(),
            })
            .collect();
    }

    let mut view = ClusterView::new(nodes, placed);
    // The static filters depend only on the node and the selector, and replicas
    // of one deployment share a selector: evaluate them once per selector.
    let mut eligible_by_selector: HashMap<&BTreeMap<String, String>, EligibleNodes> =
        HashMap::new();
    // Replicas of each shape still to come, and the candidates of the shapes
    // that come more than once (dropped after their last replica).
    let mut to_come: HashMap<Shape, usize> = HashMap::new();
    for replica in pending {
        *to_come.entry(Shape::of(replica)).or_default() += 1;
    }
    // With the entries each held when built, for the bound on all of them.
    let mut candidates: HashMap<Shape, (Candidates, usize)> = HashMap::new();
    let mut held = 0usize;

    pending
        .iter()
        .map(|replica| {
            let eligible = eligible_by_selector
                .entry(&replica.node_selector)
                .or_insert_with(|| EligibleNodes::new(&view, &replica.node_selector));
            let shape = Shape::of(replica);
            let left = to_come.get_mut(&shape).map_or(0, |n| {
                *n -= 1;
                *n
            });
            if left > 0
                && !candidates.contains_key(&shape)
                && held + eligible.nodes.len() <= max_candidates
            {
                let built = Candidates::new(&mut view, eligible, replica);
                let entries = built.len();
                held += entries;
                candidates.insert(shape, (built, entries));
            }
            let picked = candidates.get_mut(&shape).and_then(|(c, _)| {
                let picked = c.best(&mut view, replica);
                debug_assert_eq!(
                    picked,
                    best_node(&mut view, eligible, replica).ok(),
                    "the candidates of a shape picked another node than a pass over every node"
                );
                picked
            });
            if left == 0 {
                if let Some((_, entries)) = candidates.remove(&shape) {
                    held -= entries;
                }
            }
            match picked.map_or_else(|| best_node(&mut view, eligible, replica), Ok) {
                Ok(node) => {
                    view.commit(node, replica);
                    Decision::Place {
                        replica: replica.replica.clone(),
                        node: view.name(node).to_string(),
                    }
                }
                Err(rejected) => Decision::Unschedulable {
                    replica: replica.replica.clone(),
                    reason: rejected.reason(nodes.len()),
                },
            }
        })
        .collect()
}

/// The most candidate entries ([`Candidates`]) held at once in one call: 32
/// bytes each, so at most 32 MiB.
const MAX_CANDIDATES: usize = 1 << 20;

/// The index of the best node for `replica`, or why every node was rejected:
/// a pass over every eligible node.
fn best_node<'a>(
    view: &mut ClusterView<'a>,
    eligible: &EligibleNodes,
    replica: &'a Pending,
) -> Result<usize, FailureHistogram> {
    let (nodes, same_deployment) = view.nodes_and_spread(&replica.deployment);
    let mut rejected = eligible.rejected;
    let mut best: Option<(Score, usize)> = None;

    // `eligible.nodes` is in name order and only a strictly better score
    // replaces `best`, so equal scores go to the first name.
    for &index in &eligible.nodes {
        let node = &nodes[index];
        if let Some(failure) = filter::dynamic_failure(node, replica) {
            rejected.record(failure);
            continue;
        }
        let score = Score::new(same_deployment[index], node, replica.requests);
        if best.as_ref().is_none_or(|(top, _)| score < *top) {
            best = Some((score, index));
        }
    }

    best.map(|(_, index)| index).ok_or(rejected)
}
