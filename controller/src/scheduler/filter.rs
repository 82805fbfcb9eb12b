//! The filters, in the order used to explain a failure, and the reason string
//! built from them when no node is left.
//!
//! The first three (ready, cordon, selector) depend only on the node and the
//! replica's nodeSelector and are worked out once per selector
//! ([`EligibleNodes`]); the last three depend on what has been placed so far
//! and are checked per replica ([`dynamic_failure`]).

use std::collections::BTreeMap;

use super::view::{requested_host_ports, ClusterView, NodeState};
use super::{NodeInfo, Pending};

/// The reason given to every replica when the cluster has no nodes at all.
pub(super) const NO_NODES_REASON: &str = "0/0 nodes are available: no nodes registered.";

/// Why a node cannot take a replica. Declared in filter order: a node failing
/// several filters is counted under the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FilterFailure {
    NotReady,
    Cordoned,
    SelectorMismatch,
    HostPortTaken,
    InsufficientCpu,
    InsufficientMemory,
}

impl FilterFailure {
    const ALL: [FilterFailure; 6] = [
        FilterFailure::NotReady,
        FilterFailure::Cordoned,
        FilterFailure::SelectorMismatch,
        FilterFailure::HostPortTaken,
        FilterFailure::InsufficientCpu,
        FilterFailure::InsufficientMemory,
    ];

    /// kubectl's words for it.
    fn message(self) -> &'static str {
        match self {
            FilterFailure::NotReady => "node(s) were not ready",
            FilterFailure::Cordoned => "node(s) were unschedulable",
            FilterFailure::SelectorMismatch => "node(s) didn't match Pod's node affinity/selector",
            FilterFailure::HostPortTaken => {
                "node(s) didn't have free ports for the requested pod ports"
            }
            FilterFailure::InsufficientCpu => "Insufficient cpu",
            FilterFailure::InsufficientMemory => "Insufficient memory",
        }
    }
}

/// How many nodes failed each filter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct FailureHistogram([u32; FilterFailure::ALL.len()]);

impl FailureHistogram {
    pub(super) fn record(&mut self, failure: FilterFailure) {
        self.0[failure as usize] += 1;
    }

    /// `0/3 nodes are available: 1 node(s) were unschedulable, 2 Insufficient memory.`
    ///
    /// Items are sorted as whole `"K reason"` strings, byte by byte, exactly as
    /// Kubernetes' `FitError` does with Go's `sort.Strings` — so a count of 10
    /// sorts before a count of 2, and "Insufficient …" (upper case) before
    /// "node(s) …" when the counts' digits tie.
    pub(super) fn reason(&self, node_count: usize) -> String {
        let mut items: Vec<String> = FilterFailure::ALL
            .iter()
            .zip(self.0)
            .filter(|&(_, count)| count > 0)
            .map(|(failure, count)| format!("{count} {}", failure.message()))
            .collect();
        items.sort();
        format!("0/{node_count} nodes are available: {}.", items.join(", "))
    }
}

/// The nodes that pass the static filters for one nodeSelector, and how many
/// failed each.
#[derive(Debug)]
pub(super) struct EligibleNodes {
    /// Indices into the view's nodes, ascending (so in name order).
    pub(super) nodes: Vec<usize>,
    pub(super) rejected: FailureHistogram,
}

impl EligibleNodes {
    pub(super) fn new(view: &ClusterView<'_>, selector: &BTreeMap<String, String>) -> Self {
        let mut eligible = EligibleNodes {
            nodes: Vec::new(),
            rejected: FailureHistogram::default(),
        };
        for (index, node) in view.nodes().iter().enumerate() {
            match static_failure(node.info, selector) {
                Some(failure) => eligible.rejected.record(failure),
                None => eligible.nodes.push(index),
            }
        }
        eligible
    }
}

fn static_failure(node: &NodeInfo, selector: &BTreeMap<String, String>) -> Option<FilterFailure> {
    if !node.ready {
        return Some(FilterFailure::NotReady);
    }
    if node.cordoned {
        return Some(FilterFailure::Cordoned);
    }
    let matches = selector
        .iter()
        .all(|(key, value)| node.labels.get(key) == Some(value));
    if !matches {
        return Some(FilterFailure::SelectorMismatch);
    }
    None
}

/// The first of host ports, cpu and memory that `replica` fails on `node`,
/// given everything bound to it so far.
pub(super) fn dynamic_failure(node: &NodeState<'_>, replica: &Pending) -> Option<FilterFailure> {
    if requested_host_ports(&replica.host_ports).any(|port| node.host_ports.contains(&port)) {
        return Some(FilterFailure::HostPortTaken);
    }
    if !node.cpu_fits(replica.requests.cpu_millis) {
        return Some(FilterFailure::InsufficientCpu);
    }
    if !node.memory_fits(replica.requests.memory_bytes) {
        return Some(FilterFailure::InsufficientMemory);
    }
    None
}
