//! Events: what happened to nodes, replicas and deployments, newest last.
//!
//! Commands record events while they apply (a node went NotReady, a replica
//! was scheduled, a container exited), so events are replicated state like
//! everything else: every controller holds the same list, a new leader shows
//! the same history, and `get events -w` can follow any member.
//!
//! Sequence numbers count up from 1, and only the newest [`RETAINED`] events
//! are kept (the oldest go as new ones come), so the list is bounded and
//! apply stays deterministic.

use serde::{Deserialize, Serialize};

/// How many events the store keeps.
pub const RETAINED: u64 = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// What an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvolvedObject {
    /// `Node`, `Replica` or `Deployment`.
    pub kind: String,
    /// Empty for nodes (cluster-scoped).
    pub namespace: String,
    pub name: String,
}

impl InvolvedObject {
    pub fn node(name: &str) -> InvolvedObject {
        InvolvedObject {
            kind: "Node".into(),
            namespace: String::new(),
            name: name.into(),
        }
    }

    pub fn replica(namespace: &str, name: &str) -> InvolvedObject {
        InvolvedObject {
            kind: "Replica".into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn deployment(namespace: &str, name: &str) -> InvolvedObject {
        InvolvedObject {
            kind: "Deployment".into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// An event before the store numbers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub event_type: EventType,
    pub reason: &'static str,
    pub object: InvolvedObject,
    pub message: String,
}

impl NewEvent {
    pub fn normal(reason: &'static str, object: InvolvedObject, message: String) -> NewEvent {
        NewEvent {
            event_type: EventType::Normal,
            reason,
            object,
            message,
        }
    }

    pub fn warning(reason: &'static str, object: InvolvedObject, message: String) -> NewEvent {
        NewEvent {
            event_type: EventType::Warning,
            reason,
            object,
            message,
        }
    }
}

/// An event as the store keeps it. A repeat of the newest event with the
/// same type, reason, object and message is one record, as Kubernetes
/// aggregates them: `count` goes up, and it moves to the end with a new
/// sequence number and time (so `get events -w` shows it again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    /// The time carried by the command that recorded it (the last time, for
    /// a repeated event).
    pub time_unix_ms: i64,
    /// How many times it happened.
    #[serde(default = "once")]
    pub count: u32,
    /// When it first happened.
    #[serde(default)]
    pub first_time_unix_ms: i64,
    pub event_type: EventType,
    pub reason: String,
    pub object: InvolvedObject,
    pub message: String,
}

fn once() -> u32 {
    1
}

impl EventRecord {
    /// What makes two events the same one, repeated: [`same_key`].
    pub(crate) fn same_key(&self) -> u64 {
        same_key(self.event_type, &self.reason, &self.object, &self.message)
    }

    /// Whether this is the event `e` describes, repeated.
    pub(crate) fn repeats(&self, e: &NewEvent) -> bool {
        self.event_type == e.event_type
            && self.reason == e.reason
            && self.object == e.object
            && self.message == e.message
    }
}

/// The repeat key of an event: type, reason, object and message, digested
/// to 64 bits (FNV-1a: the same on every member, whatever Rust built it).
/// A key is 8 bytes in the state's map rather than the whole text: the
/// map's paths are copied at every recorded event while a watch history
/// keeps older versions, and at 10,000 replicas string keys held a fifth of
/// the leader's heap (heaptrack). The store checks the event a key points at
/// before counting a repeat, so two events whose keys collide are never
/// merged, only not counted together. (It was SHA-256's first 8 bytes: 4 %
/// of the raft threads' time at 100,000 replicas, where every bound replica
/// records an event and every event pushed out computes the key again.)
pub(crate) fn same_key(
    event_type: EventType,
    reason: &str,
    object: &InvolvedObject,
    message: &str,
) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for part in [
        event_type.as_str(),
        reason,
        &object.kind,
        &object.namespace,
        &object.name,
        message,
    ] {
        // Each part ends with a 0 byte, so ("ab", "c") and ("a", "bc") differ.
        for b in part.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    }
    h
}

/// Which events a reader wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Events of objects in this namespace, plus cluster-scoped (node) events,
    /// as kubectl shows node events in every namespace's list. `None`: all.
    pub namespace: Option<String>,
    /// Only events of this kind of object (`Node`, `Replica`, `Deployment`).
    pub kind: Option<String>,
    /// Only events of the object with this name.
    pub name: Option<String>,
    /// Only events with a sequence number above this.
    pub after_seq: u64,
}

impl EventFilter {
    pub fn matches(&self, e: &EventRecord) -> bool {
        e.seq > self.after_seq
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| e.object.namespace.is_empty() || e.object.namespace == *ns)
            && self
                .kind
                .as_ref()
                .is_none_or(|k| e.object.kind.eq_ignore_ascii_case(k))
            && self.name.as_ref().is_none_or(|n| e.object.name == *n)
    }
}

/// Names in a message: the first few, then how many more.
pub(crate) fn name_list(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, kind: &str, namespace: &str, name: &str) -> EventRecord {
        EventRecord {
            seq,
            time_unix_ms: 0,
            count: 1,
            first_time_unix_ms: 0,
            event_type: EventType::Normal,
            reason: "Test".into(),
            object: InvolvedObject {
                kind: kind.into(),
                namespace: namespace.into(),
                name: name.into(),
            },
            message: String::new(),
        }
    }

    #[test]
    fn namespace_filter_keeps_node_events() {
        let f = EventFilter {
            namespace: Some("default".into()),
            ..EventFilter::default()
        };
        assert!(f.matches(&event(1, "Node", "", "n1")));
        assert!(f.matches(&event(2, "Replica", "default", "web-1")));
        assert!(!f.matches(&event(3, "Replica", "other", "web-1")));
    }

    #[test]
    fn object_and_sequence_filters() {
        let f = EventFilter {
            kind: Some("replica".into()),
            name: Some("web-1".into()),
            after_seq: 5,
            ..EventFilter::default()
        };
        assert!(f.matches(&event(6, "Replica", "default", "web-1")));
        assert!(!f.matches(&event(5, "Replica", "default", "web-1")));
        assert!(!f.matches(&event(7, "Replica", "default", "web-2")));
        assert!(!f.matches(&event(8, "Node", "", "web-1")));
    }

    #[test]
    fn the_repeat_key_is_fixed_and_tells_part_boundaries_apart() {
        let object = |name: &str| InvolvedObject {
            kind: "Replica".into(),
            namespace: "default".into(),
            name: name.into(),
        };
        // Pinned: members built by different compilers must agree.
        assert_eq!(
            same_key(
                EventType::Normal,
                "Scheduled",
                &object("web-1"),
                "placed on n1"
            ),
            0x7095_7c02_353a_0719
        );
        assert_ne!(
            same_key(EventType::Normal, "ab", &object("x"), "c"),
            same_key(EventType::Normal, "a", &object("x"), "bc")
        );
    }

    #[test]
    fn long_name_lists_are_cut() {
        let names: Vec<String> = (0..7).map(|i| format!("r{i}")).collect();
        assert_eq!(name_list(&names), "r0, r1, r2, r3, r4 and 2 more");
        assert_eq!(name_list(&names[..2]), "r0, r1");
    }
}
