//! The Service table agents get with their assignment sets: every Service
//! with its ready endpoints, as the data path needs it (`pb::ServiceRoute`).
//!
//! It is the same for every node, built by the book beside the node sets,
//! and sent as a change (routes added or changed, keys removed) like the
//! assignments. A rebuild recomputes only the Services whose endpoints may
//! have changed ([`table`]):
//!
//! | what changed (`Touched`)                          | Services recomputed                          |
//! |---------------------------------------------------|----------------------------------------------|
//! | everything, a Service, a node's record            | all                                          |
//! | a deployment's own record (templates, revisions)  | all of its namespace                         |
//! | only a deployment's replicas (a status batch)     | those selecting one of its kept templates    |
//! | nothing of the above                              | none                                         |
//!
//! A replica counts for a Service only through its revision's template
//! (`endpoints`), so a Service selecting none of a deployment's templates
//! cannot change when that deployment's replicas do. Cost of a status batch
//! touching k deployments: k × (Services of their namespace) selector
//! matches, plus [`crate::endpoints::endpoints`] for each Service selected;
//! a property test checks the result equals recomputing everything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use drover_proto::pb;

use crate::endpoints::endpoints;
use crate::store::services::StoredService;
use crate::store::{ObjectRef, State, Touched};

/// `"<namespace>/<name>"`, the key routes are sorted and removed by.
pub fn key(r: &pb::ServiceRoute) -> String {
    format!("{}/{}", r.namespace, r.name)
}

/// One Service's route now.
pub fn route(state: &State, s: &StoredService) -> pb::ServiceRoute {
    let eps = endpoints(state, s);
    let ports = s
        .service
        .spec
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut list: Vec<String> = eps
                .endpoints
                .iter()
                .filter_map(|e| {
                    e.ports
                        .iter()
                        .find(|q| q.port == p.port && q.protocol == p.protocol)
                        .map(|q| format!("{}:{}", e.ip, q.target_port))
                })
                .collect();
            list.sort();
            pb::ServiceRoutePort {
                protocol: p.protocol.as_str().to_string(),
                port: u32::from(p.port),
                node_port: u32::from(s.node_ports.get(i).copied().unwrap_or_default()),
                endpoints: list,
            }
        })
        .collect();
    pb::ServiceRoute {
        namespace: s.service.metadata.namespace.clone(),
        name: s.service.metadata.name.clone(),
        cluster_ip: s.cluster_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        ports,
    }
}

/// A route shared by the tables that have not changed it: a rebuild
/// copies a pointer per unchanged Service, and comparing two tables is a
/// pointer comparison per route ([`same`]).
pub type Route = Arc<pb::ServiceRoute>;

/// The table after `changes`, sorted by key; `previous` gives the routes
/// of the Services nothing in `changes` can have changed (the module's
/// table).
pub fn table(state: &State, previous: &[Route], changes: &Touched) -> Vec<Route> {
    if state.service_count() == 0 {
        return Vec::new();
    }
    let everything = changes.all || changes.services || !changes.node_records.is_empty();
    let (namespaces, selected) = if everything {
        (BTreeSet::new(), BTreeSet::new())
    } else {
        dirty(state, changes)
    };
    let old: BTreeMap<(&str, &str), &Route> = previous
        .iter()
        .map(|r| ((r.namespace.as_str(), r.name.as_str()), r))
        .collect();
    state
        .services(None)
        .map(|s| {
            let m = &s.service.metadata;
            let stale = everything
                || namespaces.contains(m.namespace.as_str())
                || selected.contains(&s.key());
            match old.get(&(m.namespace.as_str(), m.name.as_str())) {
                Some(r) if !stale => Route::clone(r),
                _ => Arc::new(route(state, s)),
            }
        })
        .collect()
}

/// Whether two tables hold the same routes (a pointer comparison for a
/// route they share).
pub fn same(a: &[Route], b: &[Route]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y) || x == y)
}

/// What `changes` (short of everything) makes stale: the namespaces whose
/// every Service is (a deployment's own record changed there, or a
/// deployment is gone), and the Services selecting one of the templates of
/// a deployment whose replicas alone changed.
fn dirty<'a>(state: &State, changes: &'a Touched) -> (BTreeSet<&'a str>, BTreeSet<ObjectRef>) {
    let mut namespaces: BTreeSet<&str> = changes
        .deployment_records
        .iter()
        .map(|d| d.namespace.as_str())
        .collect();
    let mut selected = BTreeSet::new();
    // Per namespace, its Services by the first pair of their selector: a
    // Service can only select labels that contain that pair.
    let mut by_pair: BTreeMap<&str, BTreeMap<(&str, &str), Vec<&StoredService>>> = BTreeMap::new();
    for d in &changes.deployments {
        if namespaces.contains(d.namespace.as_str()) {
            continue;
        }
        let Some(deployment) = state.deployment(&d.namespace, &d.name) else {
            namespaces.insert(d.namespace.as_str());
            continue;
        };
        let index = by_pair.entry(d.namespace.as_str()).or_insert_with(|| {
            let mut index: BTreeMap<(&str, &str), Vec<&StoredService>> = BTreeMap::new();
            for s in state.services_after(Some(&d.namespace), None) {
                if let Some((k, v)) = s.service.spec.selector.iter().next() {
                    index.entry((k.as_str(), v.as_str())).or_default().push(s);
                }
            }
            index
        });
        let templates = std::iter::once(&deployment.deployment.spec.template.metadata.labels)
            .chain(
                deployment
                    .revisions
                    .iter()
                    .map(|r| &r.template.metadata.labels),
            );
        for labels in templates {
            for (k, v) in labels {
                for s in index.get(&(k.as_str(), v.as_str())).into_iter().flatten() {
                    if s.service.selects(labels) {
                        selected.insert(s.key());
                    }
                }
            }
        }
    }
    (namespaces, selected)
}

/// A route's place in a table: namespace, then name.
fn order(r: &Route) -> (&str, &str) {
    (r.namespace.as_str(), r.name.as_str())
}

/// What changed from `sent` to `now` (both as [`table`] orders them, by
/// namespace then name): routes added or changed, and the keys of those
/// removed. One merge pass; a route both share is a pointer comparison.
pub fn changes_since(now: &[Route], sent: &[Route]) -> (Vec<pb::ServiceRoute>, Vec<String>) {
    let (mut changed, mut removed) = (Vec::new(), Vec::new());
    let (mut old, mut new) = (sent.iter().peekable(), now.iter().peekable());
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(o), Some(n)) if order(o) == order(n) => {
                if !Arc::ptr_eq(o, n) && ***o != ***n {
                    changed.push(pb::ServiceRoute::clone(n));
                }
                old.next();
                new.next();
            }
            (Some(o), Some(n)) if order(o) < order(n) => {
                removed.push(key(o));
                old.next();
            }
            (Some(o), None) => {
                removed.push(key(o));
                old.next();
            }
            (_, Some(n)) => {
                changed.push(pb::ServiceRoute::clone(n));
                new.next();
            }
        }
    }
    (changed, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, endpoints: &[&str]) -> pb::ServiceRoute {
        pb::ServiceRoute {
            namespace: "default".into(),
            name: name.into(),
            cluster_ip: "10.96.0.1".into(),
            ports: vec![pb::ServiceRoutePort {
                protocol: "TCP".into(),
                port: 80,
                node_port: 0,
                endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            }],
        }
    }

    #[test]
    fn a_change_names_what_was_added_changed_and_removed_only() {
        let sent = [r("a", &["10.0.0.1:80"]), r("b", &[]), r("c", &[])].map(Arc::new);
        let now = [
            r("a", &["10.0.0.1:80", "10.0.0.2:80"]),
            r("c", &[]),
            r("d", &[]),
        ]
        .map(Arc::new);
        let (changed, removed) = changes_since(&now, &sent);
        let names: Vec<&str> = changed.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "d"]);
        assert_eq!(removed, ["default/b"]);

        // Namespaces in the table's order ("a" before "a-x", though "a-x/…"
        // sorts before "a/…" as a string): a shared route is not sent.
        let in_ns = |ns: &str, name: &str, ep: &[&str]| {
            let mut route = r(name, ep);
            route.namespace = ns.into();
            Arc::new(route)
        };
        let shared = in_ns("a", "b", &[]);
        let sent = [shared.clone(), in_ns("a-x", "c", &[])];
        let now = [shared, in_ns("a-x", "c", &["10.0.0.3:80"])];
        let (changed, removed) = changes_since(&now, &sent);
        assert_eq!(changed.len(), 1);
        assert_eq!(
            (changed[0].namespace.as_str(), changed[0].name.as_str()),
            ("a-x", "c")
        );
        assert!(removed.is_empty());
    }
}
