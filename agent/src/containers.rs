//! The supervisor's cache of the node's containers, by id and by replica.
//!
//! The supervisor decides only for the replicas whose inputs changed (see
//! [`crate::supervisor`]), so it must find one replica's containers without
//! walking the node's: a second index keeps the ids of each replica's
//! containers. A replica's containers never change replica, so the index
//! changes only where a container is added or removed.
//!
//! Cost: `of` and `current` are O(log n + the replica's containers);
//! `insert` and `remove` O(log n).

use std::collections::{BTreeMap, BTreeSet};

use crate::runtime::Observed;

#[derive(Debug, Default)]
pub struct Containers {
    by_id: BTreeMap<String, Observed>,
    /// Replica → the ids of its containers (never an empty set).
    by_replica: BTreeMap<String, BTreeSet<String>>,
}

impl Containers {
    pub fn new(list: impl IntoIterator<Item = Observed>) -> Containers {
        let mut c = Containers::default();
        for o in list {
            c.insert(o);
        }
        c
    }

    /// Add a container, replacing the one with its id.
    pub fn insert(&mut self, o: Observed) {
        self.remove(&o.container_id);
        self.by_replica
            .entry(o.replica.clone())
            .or_default()
            .insert(o.container_id.clone());
        self.by_id.insert(o.container_id.clone(), o);
    }

    pub fn remove(&mut self, container_id: &str) -> Option<Observed> {
        let o = self.by_id.remove(container_id)?;
        self.unindex(&o.replica, container_id);
        Some(o)
    }

    fn unindex(&mut self, replica: &str, container_id: &str) {
        if let Some(ids) = self.by_replica.get_mut(replica) {
            ids.remove(container_id);
            if ids.is_empty() {
                self.by_replica.remove(replica);
            }
        }
    }

    /// Change a container in place (its state); its replica must stay.
    /// Returns what `change` returned, or None when there is no such
    /// container.
    pub fn update<T>(
        &mut self,
        container_id: &str,
        change: impl FnOnce(&mut Observed) -> T,
    ) -> Option<T> {
        let o = self.by_id.get_mut(container_id)?;
        let replica = o.replica.clone();
        let out = change(o);
        assert_eq!(o.replica, replica, "a container cannot change replica");
        Some(out)
    }

    pub fn contains(&self, container_id: &str) -> bool {
        self.by_id.contains_key(container_id)
    }

    /// Keep only the containers `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&Observed) -> bool) {
        let gone: Vec<String> = self
            .by_id
            .values()
            .filter(|o| !keep(o))
            .map(|o| o.container_id.clone())
            .collect();
        for id in gone {
            self.remove(&id);
        }
    }

    pub fn values(&self) -> impl Iterator<Item = &Observed> {
        self.by_id.values()
    }

    /// The replicas that have a container here.
    pub fn replicas(&self) -> impl Iterator<Item = &str> {
        self.by_replica.keys().map(String::as_str)
    }

    /// `replica`'s containers.
    pub fn of<'a>(&'a self, replica: &str) -> impl Iterator<Item = &'a Observed> + 'a {
        self.by_replica
            .get(replica)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
    }

    /// `replica`'s current container, as [`crate::reconcile::by_replica`]
    /// ranks them.
    pub fn current(&self, replica: &str) -> Option<&Observed> {
        crate::reconcile::by_replica(self.of(replica))
            .0
            .into_values()
            .next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{ContainerState, Exit};

    fn container(replica: &str, id: &str, state: ContainerState, started: i64) -> Observed {
        Observed {
            replica: replica.into(),
            container_id: id.into(),
            state,
            started_unix_ms: started,
            namespace: "default".into(),
            deployment: "web".into(),
            revision: "rev1".into(),
            spec_hash: String::new(),
            image: "drover/busybox:1".into(),
            restarts: 0,
            grace: None,
            published_ports: Vec::new(),
        }
    }

    fn exited() -> ContainerState {
        ContainerState::Exited(Exit {
            code: 1,
            oom_killed: false,
            finished_unix_ms: 5,
        })
    }

    #[test]
    fn the_index_follows_inserts_removes_and_retains() {
        let mut c = Containers::new([
            container("a", "1", exited(), 1),
            container("a", "2", ContainerState::Running, 2),
            container("b", "3", ContainerState::Running, 3),
        ]);
        let ids = |c: &Containers, r: &str| -> Vec<String> {
            c.of(r).map(|o| o.container_id.clone()).collect()
        };
        assert_eq!(ids(&c, "a"), ["1", "2"]);
        assert_eq!(c.current("a").map(|o| o.container_id.as_str()), Some("2"));
        assert_eq!(c.replicas().collect::<Vec<_>>(), ["a", "b"]);

        c.remove("2");
        assert_eq!(c.current("a").map(|o| o.container_id.as_str()), Some("1"));
        c.retain(|o| o.replica != "a");
        assert_eq!(ids(&c, "a"), Vec::<String>::new());
        assert_eq!(c.replicas().collect::<Vec<_>>(), ["b"]);
        assert!(c.remove("1").is_none());

        // The same id again under another replica moves in the index.
        c.insert(container("c", "3", ContainerState::Running, 4));
        assert_eq!(c.replicas().collect::<Vec<_>>(), ["c"]);
        assert_eq!(c.values().count(), 1);

        assert_eq!(c.update("3", |o| o.killed(9)), Some(()));
        assert_eq!(c.current("c").map(|o| o.is_running()), Some(false));
        assert_eq!(c.update("nope", |o| o.killed(9)), None);
    }
}
