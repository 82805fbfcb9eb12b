//! The scheduler's accounting for one call: what each node already holds.
//!
//! Built once from the placed replicas, then updated by [`ClusterView::commit`]
//! after every placement, so deciding a replica never rescans `placed`.

use std::collections::{HashMap, HashSet};

use drover_manifest::Protocol;

use super::{NodeInfo, Pending, Placed, Resources};

/// One node and what is bound to it so far.
#[derive(Debug)]
pub(super) struct NodeState<'a> {
    pub(super) info: &'a NodeInfo,
    /// Sum of the requests of the replicas bound to the node. May exceed
    /// `allocatable` if the node shrank under replicas already placed.
    pub(super) used: Resources,
    pub(super) host_ports: HashSet<(u16, Protocol)>,
}

impl NodeState<'_> {
    /// Whether `request` fits in what is left of the node's allocatable.
    pub(super) fn cpu_fits(&self, request: u64) -> bool {
        request
            <= self
                .info
                .allocatable
                .cpu_millis
                .saturating_sub(self.used.cpu_millis)
    }

    pub(super) fn memory_fits(&self, request: u64) -> bool {
        request
            <= self
                .info
                .allocatable
                .memory_bytes
                .saturating_sub(self.used.memory_bytes)
    }

    fn bind(&mut self, requests: Resources, host_ports: &[(u16, Protocol)]) {
        self.used.cpu_millis = self.used.cpu_millis.saturating_add(requests.cpu_millis);
        self.used.memory_bytes = self.used.memory_bytes.saturating_add(requests.memory_bytes);
        self.host_ports.extend(requested_host_ports(host_ports));
    }
}

/// The host ports a replica actually binds: port 0 means "none".
pub(super) fn requested_host_ports(
    host_ports: &[(u16, Protocol)],
) -> impl Iterator<Item = (u16, Protocol)> + '_ {
    host_ports.iter().copied().filter(|&(port, _)| port != 0)
}

/// Every node, sorted by name, with its usage; nodes are referred to by their
/// index in that order.
#[derive(Debug)]
pub(super) struct ClusterView<'a> {
    nodes: Vec<NodeState<'a>>,
    spread: Spread<'a>,
}

impl<'a> ClusterView<'a> {
    pub(super) fn new(nodes: &'a [NodeInfo], placed: &'a [Placed]) -> Self {
        let mut sorted: Vec<&NodeInfo> = nodes.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let mut view = ClusterView {
            nodes: sorted
                .into_iter()
                .map(|info| NodeState {
                    info,
                    used: info.in_use,
                    host_ports: requested_host_ports(&info.ports_in_use).collect(),
                })
                .collect(),
            spread: Spread::new(nodes.len()),
        };

        let index_by_name: HashMap<&str, usize> = view
            .nodes
            .iter()
            .enumerate()
            .map(|(index, node)| (node.info.name.as_str(), index))
            .collect();
        for replica in placed {
            // A replica bound to a node that is gone holds nothing anywhere.
            if let Some(&index) = index_by_name.get(replica.node.as_str()) {
                view.nodes[index].bind(replica.requests, &replica.host_ports);
                view.spread.record(&replica.deployment, index);
            }
        }
        view
    }

    pub(super) fn nodes(&self) -> &[NodeState<'a>] {
        &self.nodes
    }

    pub(super) fn name(&self, index: usize) -> &'a str {
        &self.nodes[index].info.name
    }

    /// The nodes, and for each (by index) how many replicas of `deployment`
    /// it holds.
    pub(super) fn nodes_and_spread(&mut self, deployment: &'a str) -> (&[NodeState<'a>], &[u32]) {
        (&self.nodes, self.spread.focus(deployment))
    }

    /// Binds `replica` to the node at `index` for the rest of this call.
    pub(super) fn commit(&mut self, index: usize, replica: &'a Pending) {
        self.nodes[index].bind(replica.requests, &replica.host_ports);
        self.spread.record(&replica.deployment, index);
    }
}

/// Replicas per deployment per node.
///
/// Kept sparse (most deployments touch few nodes), with a dense copy of the
/// counts of one deployment — the one being scheduled — so scoring a node is an
/// index, not a hash lookup. Pending replicas arrive grouped by deployment, so
/// the dense copy is rarely rebuilt; when it is, that costs one pass over the
/// nodes, no more than scoring them.
#[derive(Debug)]
struct Spread<'a> {
    sparse: HashMap<&'a str, HashMap<usize, u32>>,
    focus: Option<&'a str>,
    dense: Vec<u32>,
}

impl<'a> Spread<'a> {
    fn new(node_count: usize) -> Self {
        Spread {
            sparse: HashMap::new(),
            focus: None,
            dense: vec![0; node_count],
        }
    }

    fn record(&mut self, deployment: &'a str, node: usize) {
        *self
            .sparse
            .entry(deployment)
            .or_default()
            .entry(node)
            .or_default() += 1;
        if self.focus == Some(deployment) {
            self.dense[node] += 1;
        }
    }

    fn focus(&mut self, deployment: &'a str) -> &[u32] {
        if self.focus != Some(deployment) {
            self.dense.fill(0);
            if let Some(counts) = self.sparse.get(deployment) {
                for (&node, &count) in counts {
                    self.dense[node] = count;
                }
            }
            self.focus = Some(deployment);
        }
        &self.dense
    }
}
