//! The node monitor: heartbeats → Ready / NotReady, as a pure decision.
//!
//! ```text
//!  heartbeats (leader memory) ─┐
//!  nodes (store)              ─┼─ assess() ──▶ [Down(n1), Up(n2)] ──▶ NodeDown / NodeUp entries
//!  leading since, now, timeout ┘
//! ```
//!
//! A Ready node whose agent was not heard from for `timeout` goes NotReady and
//! its replicas are unbound, so the scheduler places them elsewhere at once. A
//! new leader has no heartbeat history: it counts every node as heard from
//! when it started leading, which grants one full timeout of grace. A NotReady
//! node whose agent is heard from again is Ready again; replicas that were
//! moved away stay where they are (its agent then stops its copies), so a
//! flapping heartbeat moves each replica at most once.

use std::time::{Duration, Instant};

use crate::store::NodeCondition;

/// What the monitor knows about one node.
#[derive(Debug, Clone)]
pub struct Observed {
    pub name: String,
    pub condition: NodeCondition,
    pub last_heartbeat: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Down(String),
    Up(String),
}

/// Decide which nodes change condition now.
pub fn assess(
    nodes: &[Observed],
    leading_since: Instant,
    now: Instant,
    timeout: Duration,
) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    for n in nodes {
        // Heard from, as far as this leader can tell.
        let heard = n
            .last_heartbeat
            .map_or(leading_since, |h| h.max(leading_since));
        let silent = now.saturating_duration_since(heard);
        match n.condition {
            NodeCondition::Ready if silent > timeout => {
                verdicts.push(Verdict::Down(n.name.clone()))
            }
            NodeCondition::NotReady => {
                // Only a heartbeat received while leading revives a node.
                if n.last_heartbeat.is_some_and(|h| h >= leading_since) && silent <= timeout {
                    verdicts.push(Verdict::Up(n.name.clone()));
                }
            }
            NodeCondition::Ready => {}
        }
    }
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(3);

    fn node(name: &str, condition: NodeCondition, last: Option<Instant>) -> Observed {
        Observed {
            name: name.into(),
            condition,
            last_heartbeat: last,
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_silent_ready_node_goes_down_after_the_timeout_and_not_before() {
        let t0 = Instant::now();
        let nodes = [node("n1", NodeCondition::Ready, Some(t0))];
        assert!(assess(&nodes, t0, t0 + secs(2.9), TIMEOUT).is_empty());
        assert!(assess(&nodes, t0, t0 + secs(3.0), TIMEOUT).is_empty());
        assert_eq!(
            assess(&nodes, t0, t0 + secs(3.1), TIMEOUT),
            [Verdict::Down("n1".into())]
        );
    }

    #[test]
    fn heartbeats_keep_a_node_ready() {
        let t0 = Instant::now();
        let nodes = [node("n1", NodeCondition::Ready, Some(t0 + secs(9.5)))];
        assert!(assess(&nodes, t0, t0 + secs(10.0), TIMEOUT).is_empty());
    }

    #[test]
    fn a_new_leader_grants_one_full_timeout_of_grace() {
        let old_heartbeat = Instant::now();
        let leading_since = old_heartbeat + secs(60.0);
        let never = node("n1", NodeCondition::Ready, None);
        let stale = node("n2", NodeCondition::Ready, Some(old_heartbeat));
        let nodes = [never, stale];
        assert!(assess(&nodes, leading_since, leading_since + secs(2.9), TIMEOUT).is_empty());
        assert_eq!(
            assess(&nodes, leading_since, leading_since + secs(3.1), TIMEOUT),
            [Verdict::Down("n1".into()), Verdict::Down("n2".into())]
        );
    }

    #[test]
    fn a_not_ready_node_comes_back_only_with_a_fresh_heartbeat() {
        let t0 = Instant::now();
        let leading_since = t0 + secs(5.0);
        // Heard from before this leader started: not evidence it is alive now.
        let stale = [node("n1", NodeCondition::NotReady, Some(t0))];
        assert!(assess(&stale, leading_since, leading_since + secs(1.0), TIMEOUT).is_empty());
        let fresh = [node(
            "n1",
            NodeCondition::NotReady,
            Some(leading_since + secs(6.0)),
        )];
        assert_eq!(
            assess(&fresh, leading_since, leading_since + secs(6.5), TIMEOUT),
            [Verdict::Up("n1".into())]
        );
        // A NotReady node that stays silent is left alone (no repeated Down).
        let silent = [node("n1", NodeCondition::NotReady, None)];
        assert!(assess(&silent, leading_since, leading_since + secs(100.0), TIMEOUT).is_empty());
    }

    #[test]
    fn a_flapping_heartbeat_changes_condition_once_per_transition() {
        let t0 = Instant::now();
        let mut condition = NodeCondition::Ready;
        let mut downs = 0;
        // Heartbeats arrive for 2 s, stop for 4 s, resume, stop again...
        let beats: Vec<f64> = (0..4)
            .flat_map(|cycle| (0..4).map(move |i| cycle as f64 * 6.0 + i as f64 * 0.5))
            .collect();
        let mut last = None;
        let mut t = 0.0;
        while t < 24.0 {
            last = beats
                .iter()
                .copied()
                .rfind(|b| *b <= t)
                .map(|b| t0 + secs(b))
                .or(last);
            for v in assess(&[node("n1", condition, last)], t0, t0 + secs(t), TIMEOUT) {
                match v {
                    Verdict::Down(_) => {
                        downs += 1;
                        condition = NodeCondition::NotReady;
                    }
                    Verdict::Up(_) => condition = NodeCondition::Ready,
                }
            }
            t += 0.1;
        }
        assert_eq!(downs, 4, "one Down per silence, not one per tick");
    }
}
