//! Labels and annotations an admin gives a node (`droverctl label|annotate
//! node`). They are kept apart from the labels the agent registers (its
//! `--labels`), and laid over them on every registration, so an agent's
//! reconnect does not undo them:
//!
//! ```text
//!  node labels = agent's --labels − removed_labels + labels     (nodeSelector matches these)
//! ```
//!
//! A change carries only what it sets and removes, so two admins labelling
//! the same node at once both land.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::command::{WriteError, WriteResult};
use super::objects::NodeRecord;
use super::state::State;

/// What admins set on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    pub name: String,
    /// Labels set by admins (they win over the agent's).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Agent labels admins removed.
    #[serde(default)]
    pub removed_labels: BTreeSet<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl NodeMeta {
    /// The agent's labels with the admins' changes laid over them.
    pub fn labels_over(&self, agent: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut labels: BTreeMap<String, String> = agent
            .iter()
            .filter(|(k, _)| !self.removed_labels.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.extend(self.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        labels
    }
}

/// One `label`/`annotate node` request: keys to set and to remove.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMetaChange {
    pub set_labels: BTreeMap<String, String>,
    pub remove_labels: BTreeSet<String>,
    pub set_annotations: BTreeMap<String, String>,
    pub remove_annotations: BTreeSet<String>,
}

/// A registering node's labels: the agent's, with the admins' changes.
pub(super) fn registered_labels(
    state: &State,
    name: &str,
    agent: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    match state.node_meta(name) {
        Some(meta) => meta.labels_over(agent),
        None => agent.clone(),
    }
}

/// Apply a change to a node's admin labels and annotations, and to the labels
/// the scheduler matches. The node must exist.
pub(super) fn change(
    state: &mut State,
    node: &str,
    change: &NodeMetaChange,
) -> Result<WriteResult, WriteError> {
    let Some(record) = state.node(node) else {
        return Err(WriteError::NodeNotFound(node.to_string()));
    };
    let mut record = NodeRecord::clone(record);
    let old = state.node_meta(node).cloned().unwrap_or_else(|| NodeMeta {
        name: node.to_string(),
        ..NodeMeta::default()
    });
    let mut meta = old.clone();
    for (k, v) in &change.set_labels {
        meta.labels.insert(k.clone(), v.clone());
        meta.removed_labels.remove(k);
    }
    for k in &change.remove_labels {
        meta.labels.remove(k);
        meta.removed_labels.insert(k.clone());
    }
    for (k, v) in &change.set_annotations {
        meta.annotations.insert(k.clone(), v.clone());
    }
    for k in &change.remove_annotations {
        meta.annotations.remove(k);
    }
    // The record's labels already carry the old changes; lay the new ones over.
    let labels = {
        let mut l = record.labels.clone();
        for k in &change.remove_labels {
            l.remove(k);
        }
        l.extend(
            change
                .set_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        l
    };
    let changed = usize::from(labels != record.labels || meta.annotations != old.annotations);
    if meta != old {
        state.put_node_meta(meta);
    }
    if labels != record.labels {
        record.labels = labels;
        state.put_node(record);
    }
    Ok(WriteResult::Changed(changed))
}
