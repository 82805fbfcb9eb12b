//! The Service table agents get with their assignment sets: every Service
//! with its ready endpoints, as the data path needs it (`pb::ServiceRoute`).
//!
//! It is the same for every node, built by the book beside the node sets,
//! and sent as a change (routes added or changed, keys removed) like the
//! assignments. A rebuild recomputes only the Services of the namespaces
//! whose deployments changed (a readiness report touches its deployment);
//! a Service or node change recomputes them all. Cost per Service: what
//! [`crate::endpoints::endpoints`] costs.

use std::collections::{BTreeMap, BTreeSet};

use drover_proto::pb;

use crate::endpoints::endpoints;
use crate::store::services::StoredService;
use crate::store::{State, Touched};

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

/// The table after `changes`, sorted by key; `previous` gives the routes
/// of the Services whose namespace nothing touched.
pub fn table(
    state: &State,
    previous: &[pb::ServiceRoute],
    changes: &Touched,
) -> Vec<pb::ServiceRoute> {
    if state.service_count() == 0 {
        return Vec::new();
    }
    let everything = changes.all || changes.services || !changes.node_records.is_empty();
    let namespaces: BTreeSet<&str> = changes
        .deployments
        .iter()
        .chain(&changes.deployment_records)
        .map(|d| d.namespace.as_str())
        .collect();
    let old: BTreeMap<String, &pb::ServiceRoute> = previous.iter().map(|r| (key(r), r)).collect();
    state
        .services(None)
        .map(|s| {
            let m = &s.service.metadata;
            let k = format!("{}/{}", m.namespace, m.name);
            match old.get(&k) {
                Some(r) if !everything && !namespaces.contains(m.namespace.as_str()) => {
                    pb::ServiceRoute::clone(r)
                }
                _ => route(state, s),
            }
        })
        .collect()
}

/// What changed from `sent` to `now` (both sorted by key): routes added or
/// changed, and the keys of those removed.
pub fn changes_since(
    now: &[pb::ServiceRoute],
    sent: &[pb::ServiceRoute],
) -> (Vec<pb::ServiceRoute>, Vec<String>) {
    let old: BTreeMap<String, &pb::ServiceRoute> = sent.iter().map(|r| (key(r), r)).collect();
    let new_keys: BTreeSet<String> = now.iter().map(key).collect();
    let changed = now
        .iter()
        .filter(|r| old.get(&key(r)).is_none_or(|o| *o != *r))
        .cloned()
        .collect();
    let removed = old
        .keys()
        .filter(|k| !new_keys.contains(*k))
        .cloned()
        .collect();
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
        let sent = [r("a", &["10.0.0.1:80"]), r("b", &[]), r("c", &[])];
        let now = [
            r("a", &["10.0.0.1:80", "10.0.0.2:80"]),
            r("c", &[]),
            r("d", &[]),
        ];
        let (changed, removed) = changes_since(&now, &sent);
        let names: Vec<&str> = changed.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "d"]);
        assert_eq!(removed, ["default/b"]);
    }
}
