//! The node monitor: heartbeats → Ready / NotReady, as a pure decision.
//!
//! ```text
//!  heartbeats (leader memory) ─┐
//!  nodes (store)              ─┼─ assess() ──▶ [Down(n1), Up(n2)] ──▶ NodeDown / NodeUp entries
//!  leading since, now, timeout ┤      │
//!  mass silence held since    ─┘◀─────┘
//! ```
//!
//! A Ready node whose agent was not heard from for `timeout` goes NotReady and
//! its replicas are unbound, so the scheduler places them elsewhere at once. A
//! NotReady node whose agent is heard from again is Ready again; replicas that
//! were moved away stay where they are (its agent then stops its copies), so a
//! flapping heartbeat moves each replica at most once.
//!
//! Two rules keep the monitor from moving a whole cluster's replicas because
//! of its own trouble rather than the nodes':
//!
//! - **A new leader** has no heartbeat history. A node it has not heard from
//!   yet is judged from when it started leading, after **twice** the timeout:
//!   its agents must first learn that it leads (those of a leader that died
//!   without closing its connections notice only when their keepalive gives
//!   up, up to 4 s) and then reconnect, a thousand at once in a big cluster.
//! - **Mass silence.** When more than half of the Ready nodes, and at least
//!   [`MASS_SILENCE_NODES`], fall silent together, it is far more likely that
//!   this controller cannot hear them (it is overloaded, or cut off from them)
//!   than that they all failed in the same moment. Their Down verdicts are
//!   held for up to [`MASS_SILENCE_HOLD`] timeouts, then believed (a real mass
//!   failure is still handled, later). Kubernetes' node lifecycle controller
//!   stops evicting in the same situation ("full disruption"). Up verdicts
//!   are never held.
//!
//! **Cost.** O(nodes) per look.

use std::time::{Duration, Instant};

use crate::store::NodeCondition;

/// At least this many nodes silent together may be a mass silence.
pub const MASS_SILENCE_NODES: usize = 3;
/// A mass silence is held for at most this many timeouts.
pub const MASS_SILENCE_HOLD: u32 = 3;
/// A new leader judges nodes it has not heard from after this many timeouts.
pub const NEW_LEADER_GRACE: u32 = 2;

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

/// One look's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assessment {
    pub verdicts: Vec<Verdict>,
    /// Set while a mass silence is held: `(silent, ready)` nodes.
    pub held: Option<(usize, usize)>,
}

/// Decide which nodes change condition now. `held_since` is the monitor's
/// memory between looks: when the mass silence now held began (`None`: none).
pub fn assess(
    nodes: &[Observed],
    leading_since: Instant,
    now: Instant,
    timeout: Duration,
    held_since: &mut Option<Instant>,
) -> Assessment {
    let mut downs = Vec::new();
    let mut ups = Vec::new();
    let mut ready = 0;
    for n in nodes {
        // Heard from while this controller leads, or not (yet).
        let heard = n.last_heartbeat.filter(|h| *h >= leading_since);
        let (silent, allowed) = match heard {
            Some(h) => (now.saturating_duration_since(h), timeout),
            None => (
                now.saturating_duration_since(leading_since),
                timeout * NEW_LEADER_GRACE,
            ),
        };
        match n.condition {
            NodeCondition::Ready => {
                ready += 1;
                if silent > allowed {
                    downs.push(Verdict::Down(n.name.clone()));
                }
            }
            NodeCondition::NotReady => {
                // Only a heartbeat received while leading revives a node.
                if heard.is_some() && silent <= timeout {
                    ups.push(Verdict::Up(n.name.clone()));
                }
            }
        }
    }
    let mass = downs.len() >= MASS_SILENCE_NODES && downs.len() * 2 > ready;
    let mut held = None;
    if !mass {
        *held_since = None;
    } else {
        let since = *held_since.get_or_insert(now);
        if now.saturating_duration_since(since) < timeout * MASS_SILENCE_HOLD {
            held = Some((downs.len(), ready));
            downs.clear();
        }
    }
    downs.extend(ups);
    Assessment {
        verdicts: downs,
        held,
    }
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

    /// One look with no mass silence held before it.
    fn look(nodes: &[Observed], leading_since: Instant, now: Instant) -> Vec<Verdict> {
        assess(nodes, leading_since, now, TIMEOUT, &mut None).verdicts
    }

    #[test]
    fn a_silent_ready_node_goes_down_after_the_timeout_and_not_before() {
        let t0 = Instant::now();
        let nodes = [node("n1", NodeCondition::Ready, Some(t0))];
        assert!(look(&nodes, t0, t0 + secs(2.9)).is_empty());
        assert!(look(&nodes, t0, t0 + secs(3.0)).is_empty());
        assert_eq!(
            look(&nodes, t0, t0 + secs(3.1)),
            [Verdict::Down("n1".into())]
        );
    }

    #[test]
    fn heartbeats_keep_a_node_ready() {
        let t0 = Instant::now();
        let nodes = [node("n1", NodeCondition::Ready, Some(t0 + secs(9.5)))];
        assert!(look(&nodes, t0, t0 + secs(10.0)).is_empty());
    }

    #[test]
    fn a_new_leader_grants_twice_the_timeout_to_nodes_it_has_not_heard_yet() {
        let old_heartbeat = Instant::now();
        let leading_since = old_heartbeat + secs(60.0);
        let never = node("n1", NodeCondition::Ready, None);
        let stale = node("n2", NodeCondition::Ready, Some(old_heartbeat));
        let nodes = [never, stale];
        assert!(look(&nodes, leading_since, leading_since + secs(5.9)).is_empty());
        assert_eq!(
            look(&nodes, leading_since, leading_since + secs(6.1)),
            [Verdict::Down("n1".into()), Verdict::Down("n2".into())]
        );
        // One heard by this leader is judged by the plain timeout again.
        let heard = [node(
            "n3",
            NodeCondition::Ready,
            Some(leading_since + secs(1.0)),
        )];
        assert_eq!(
            look(&heard, leading_since, leading_since + secs(4.1)),
            [Verdict::Down("n3".into())]
        );
    }

    #[test]
    fn a_not_ready_node_comes_back_only_with_a_fresh_heartbeat() {
        let t0 = Instant::now();
        let leading_since = t0 + secs(5.0);
        // Heard from before this leader started: not evidence it is alive now.
        let stale = [node("n1", NodeCondition::NotReady, Some(t0))];
        assert!(look(&stale, leading_since, leading_since + secs(1.0)).is_empty());
        let fresh = [node(
            "n1",
            NodeCondition::NotReady,
            Some(leading_since + secs(6.0)),
        )];
        assert_eq!(
            look(&fresh, leading_since, leading_since + secs(6.5)),
            [Verdict::Up("n1".into())]
        );
        // A NotReady node that stays silent is left alone (no repeated Down).
        let silent = [node("n1", NodeCondition::NotReady, None)];
        assert!(look(&silent, leading_since, leading_since + secs(100.0)).is_empty());
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
            for v in look(&[node("n1", condition, last)], t0, t0 + secs(t)) {
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

    /// `n` Ready nodes named n0.., the first `silent` last heard at `t0`, the
    /// others at `now`.
    fn cluster(n: usize, silent: usize, t0: Instant, now: Instant) -> Vec<Observed> {
        (0..n)
            .map(|i| {
                let last = if i < silent { t0 } else { now };
                node(&format!("n{i}"), NodeCondition::Ready, Some(last))
            })
            .collect()
    }

    #[test]
    fn most_nodes_silent_at_once_are_held_then_believed_after_the_hold() {
        let t0 = Instant::now();
        let mut held_since = None;
        // 6 of 10 silent: a majority, at least 3.
        let at = |s: f64| t0 + secs(s);
        let a = assess(
            &cluster(10, 6, t0, at(3.5)),
            t0,
            at(3.5),
            TIMEOUT,
            &mut held_since,
        );
        assert!(a.verdicts.is_empty(), "{a:?}");
        assert_eq!(a.held, Some((6, 10)));
        assert_eq!(held_since, Some(at(3.5)));
        // Still held just before MASS_SILENCE_HOLD timeouts from its start.
        let a = assess(
            &cluster(10, 6, t0, at(12.4)),
            t0,
            at(12.4),
            TIMEOUT,
            &mut held_since,
        );
        assert!(a.verdicts.is_empty() && a.held.is_some(), "{a:?}");
        // Then believed: a real mass failure is still handled.
        let a = assess(
            &cluster(10, 6, t0, at(12.6)),
            t0,
            at(12.6),
            TIMEOUT,
            &mut held_since,
        );
        assert_eq!(a.verdicts.len(), 6, "{a:?}");
        assert_eq!(a.held, None);
    }

    #[test]
    fn a_mass_silence_that_ends_releases_the_hold_and_minorities_are_not_held() {
        let t0 = Instant::now();
        let at = |s: f64| t0 + secs(s);
        let mut held_since = None;
        let a = assess(
            &cluster(10, 8, t0, at(4.0)),
            t0,
            at(4.0),
            TIMEOUT,
            &mut held_since,
        );
        assert!(a.held.is_some());
        // The agents are heard again: nothing held, nothing down.
        let a = assess(
            &cluster(10, 0, t0, at(5.0)),
            t0,
            at(5.0),
            TIMEOUT,
            &mut held_since,
        );
        assert_eq!(a, Assessment::default());
        assert_eq!(held_since, None);
        // Half the nodes is not more than half: believed at once.
        let a = assess(
            &cluster(10, 5, t0, at(4.0)),
            t0,
            at(4.0),
            TIMEOUT,
            &mut held_since,
        );
        assert_eq!(a.verdicts.len(), 5);
        // Two of three hosts lost (fewer than MASS_SILENCE_NODES): believed at once,
        // as a lab that kills them expects.
        let a = assess(
            &cluster(3, 2, t0, at(4.0)),
            t0,
            at(4.0),
            TIMEOUT,
            &mut held_since,
        );
        assert_eq!(a.verdicts.len(), 2);
        assert_eq!(a.held, None);
    }

    #[test]
    fn up_verdicts_are_never_held() {
        let t0 = Instant::now();
        let at = |s: f64| t0 + secs(s);
        let mut nodes = cluster(10, 7, t0, at(4.0));
        nodes.push(node("back", NodeCondition::NotReady, Some(at(4.0))));
        let a = assess(&nodes, t0, at(4.0), TIMEOUT, &mut None);
        assert_eq!(a.verdicts, [Verdict::Up("back".into())]);
        assert!(a.held.is_some());
    }
}
