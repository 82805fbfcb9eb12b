//! The feasible nodes for many replicas of one shape in one call, best first,
//! so each placement costs O(log nodes) instead of a pass over every node.
//!
//! Replicas of one *shape* (deployment, requests, nodeSelector and host ports)
//! get the same score and the same filters on every node. Within one call a
//! node's score for a shape only grows (a placement adds to its usage and, for
//! its deployment, to its spread) and a node that fails a dynamic filter keeps
//! failing it (resources and host ports are only taken). So a min-heap of
//! `(score, node index)` whose stored scores may be stale is enough:
//!
//! ```text
//!   pop the smallest (stored, index)
//!     ├─ the node fails a dynamic filter now ─▶ drop it (it never fits again)
//!     ├─ its score now == stored ─▶ the best node: every other entry's
//!     │   score is ≥ its stored one ≥ this ─▶ place, push it back
//!     └─ its score now > stored ─▶ push (now, index), pop again
//! ```
//!
//! This picks exactly the node [`super::schedule`]'s pass over the eligible
//! nodes picks (lowest score, then lowest index, which is name order); debug
//! builds check every pick against that pass, and a property test compares
//! whole calls.
//!
//! Cost: building is one score per eligible node (as one pass) and a heapify;
//! each pick pops the stale entries of the nodes placed on since this shape's
//! last pick, then O(log nodes).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use drover_manifest::Protocol;

use super::filter::{self, EligibleNodes};
use super::score::Score;
use super::view::ClusterView;
use super::{Pending, Resources};

/// What makes two pending replicas interchangeable for the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Shape<'a> {
    deployment: &'a str,
    requests: Resources,
    selector: &'a BTreeMap<String, String>,
    host_ports: &'a [(u16, Protocol)],
}

impl<'a> Shape<'a> {
    pub(super) fn of(replica: &'a Pending) -> Shape<'a> {
        Shape {
            deployment: &replica.deployment,
            requests: replica.requests,
            selector: &replica.node_selector,
            host_ports: &replica.host_ports,
        }
    }
}

/// The nodes one shape may still go to, smallest stored `(score, index)` first.
#[derive(Debug)]
pub(super) struct Candidates {
    heap: BinaryHeap<Reverse<(Score, usize)>>,
}

impl Candidates {
    /// Every eligible node that passes the dynamic filters for `replica` now.
    pub(super) fn new<'a>(
        view: &mut ClusterView<'a>,
        eligible: &EligibleNodes,
        replica: &'a Pending,
    ) -> Candidates {
        let (nodes, spread) = view.nodes_and_spread(&replica.deployment);
        let entries: Vec<Reverse<(Score, usize)>> = eligible
            .nodes
            .iter()
            .filter(|&&index| filter::dynamic_failure(&nodes[index], replica).is_none())
            .map(|&index| {
                let score = Score::new(spread[index], &nodes[index], replica.requests);
                Reverse((score, index))
            })
            .collect();
        Candidates {
            heap: BinaryHeap::from(entries),
        }
    }

    /// How many entries it holds (for the caller's memory bound).
    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }

    /// The best node for `replica` (of this shape) now, or None when no node
    /// fits it any more.
    pub(super) fn best<'a>(
        &mut self,
        view: &mut ClusterView<'a>,
        replica: &'a Pending,
    ) -> Option<usize> {
        let (nodes, spread) = view.nodes_and_spread(&replica.deployment);
        while let Some(Reverse((stored, index))) = self.heap.pop() {
            let node = &nodes[index];
            if filter::dynamic_failure(node, replica).is_some() {
                continue;
            }
            let now = Score::new(spread[index], node, replica.requests);
            self.heap.push(Reverse((now, index)));
            if now == stored {
                return Some(index);
            }
        }
        None
    }
}
