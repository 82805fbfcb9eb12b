//! How good a feasible node is for a replica; lower is better.
//!
//! All integer arithmetic: fractions are compared by cross-multiplying in
//! `u128`, so every controller ranks nodes identically, with no rounding.

use std::cmp::Ordering;

use super::view::NodeState;
use super::Resources;

/// Compared field by field: spread first, then least allocated. The caller
/// breaks remaining ties by node name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Score {
    /// Replicas of the same deployment already on the node.
    same_deployment: u32,
    /// The larger of the node's cpu and memory fractions in use once the
    /// replica is placed.
    dominant_share: Share,
}

impl Score {
    pub(super) fn new(same_deployment: u32, node: &NodeState<'_>, requests: Resources) -> Self {
        let allocatable = node.info.allocatable;
        let cpu = Share::new(
            node.used.cpu_millis.saturating_add(requests.cpu_millis),
            allocatable.cpu_millis,
        );
        let memory = Share::new(
            node.used.memory_bytes.saturating_add(requests.memory_bytes),
            allocatable.memory_bytes,
        );
        Score {
            same_deployment,
            dominant_share: cpu.max(memory),
        }
    }
}

/// `used / total` as an exact fraction. A resource a node has none of counts as
/// empty while nothing uses it and as infinitely full once something does
/// (only possible for replicas bound before the node shrank).
#[derive(Debug, Clone, Copy)]
struct Share {
    used: u64,
    total: u64,
}

impl Share {
    fn new(used: u64, total: u64) -> Self {
        match (used, total) {
            (0, 0) => Share { used: 0, total: 1 },
            (_, 0) => Share { used: 1, total: 0 },
            _ => Share { used, total },
        }
    }
}

impl Ord for Share {
    fn cmp(&self, other: &Self) -> Ordering {
        // a/b vs c/d ⇔ a·d vs c·b; with the normalisation in `new`, a total of 0
        // only appears as 1/0, which this ranks above every finite share and
        // equal to itself.
        let left = u128::from(self.used) * u128::from(other.total);
        let right = u128::from(other.used) * u128::from(self.total);
        left.cmp(&right)
    }
}

impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Share {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Share {}

#[cfg(test)]
mod tests {
    use super::Share;

    #[test]
    fn shares_compare_as_fractions() {
        assert_eq!(Share::new(1, 2), Share::new(2, 4));
        assert!(Share::new(1, 3) < Share::new(1, 2));
        assert!(
            Share::new(3, 2) > Share::new(1, 1),
            "over-committed ranks above full"
        );
    }

    #[test]
    fn a_resource_the_node_lacks_is_empty_until_used() {
        assert_eq!(Share::new(0, 0), Share::new(0, 5));
        assert!(Share::new(1, 0) > Share::new(u64::MAX, 1));
        assert_eq!(Share::new(1, 0), Share::new(7, 0));
    }
}
