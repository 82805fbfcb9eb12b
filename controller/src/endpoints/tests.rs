//! The endpoints contract, case by case, on states built by applying the
//! commands the real loops write.

use std::collections::BTreeMap;

use drover_manifest::{
    ClusterIp, ContainerPort, Deployment, ObjectMeta, PortRef, Protocol, Service, ServicePort,
    ServiceSpec, ServiceType,
};

use super::*;
use crate::fixtures::deployment;
use crate::store::{
    Command, NodeRegistration, ReplicaObserved, ReplicaPhase, ReplicaRecord, Resources,
};

/// A small cluster: applies commands in order, index by index.
struct Cluster {
    state: State,
    index: u64,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            state: State::default(),
            index: 1,
        }
    }

    fn apply(&mut self, command: Command) {
        self.index += 1;
        self.state
            .apply(self.index, 1, &command)
            .unwrap_or_else(|e| panic!("{command:?} refused: {e}"));
    }

    fn node(&mut self, name: &str, address: &str) -> &mut Cluster {
        self.node_with(name, address, "process")
    }

    fn node_with(&mut self, name: &str, address: &str, runtime: &str) -> &mut Cluster {
        self.apply(Command::RegisterNode {
            node: NodeRegistration {
                name: name.into(),
                labels: Default::default(),
                capacity: Resources {
                    cpu_millis: 4000,
                    memory_bytes: 1 << 32,
                },
                address: address.into(),
                runtime: runtime.into(),
                agent_version: "0.1.0".into(),
                incarnation: "i1".into(),
            },
            now_unix_ms: 1,
        });
        self
    }

    fn deployment(&mut self, d: Deployment) -> &mut Cluster {
        self.apply(Command::Apply {
            deployments: vec![d],
            now_unix_ms: 1,
        });
        self
    }

    /// Replica `slot` of `deployment`'s current revision, bound to `node`,
    /// reported `ready` there.
    fn replica(&mut self, deployment: &str, slot: u32, node: &str, ready: bool) -> String {
        let revision = self
            .state
            .deployment("default", deployment)
            .expect("deployment applied")
            .current_revision_hash();
        let name = format!("{deployment}-{revision}-{slot}");
        self.apply(Command::Reconcile {
            create: vec![ReplicaRecord {
                namespace: "default".into(),
                name: name.clone(),
                deployment: deployment.into(),
                slot,
                revision,
                node: None,
                bound_at: 0,
                pending_reason: String::new(),
                created_unix_ms: 1,
                observed: ReplicaObserved::default(),
                replaces: None,
                terminating_since_unix_ms: 0,
                booking: None,
                stop_grace_seconds: None,
            }],
            remove: vec![],
            now_unix_ms: 1,
        });
        let key = ObjectRef {
            namespace: "default".into(),
            name: name.clone(),
        };
        self.apply(Command::Schedule {
            place: vec![(key.clone(), node.into())],
            unschedulable: vec![],
            now_unix_ms: 1,
        });
        self.report(&name, node, ready);
        name
    }

    fn report(&mut self, replica: &str, node: &str, ready: bool) {
        let key = ObjectRef {
            namespace: "default".into(),
            name: replica.into(),
        };
        self.apply(Command::ReportStatus {
            reports: vec![(
                node.into(),
                key,
                ReplicaObserved {
                    phase: ReplicaPhase::Running,
                    ready,
                    ..Default::default()
                },
            )],
            now_unix_ms: 2,
        });
    }

    /// `replica` reported ready on `node`, its ports published as given.
    fn report_published(&mut self, replica: &str, node: &str, published: Vec<PublishedPort>) {
        let key = ObjectRef {
            namespace: "default".into(),
            name: replica.into(),
        };
        self.apply(Command::ReportStatus {
            reports: vec![(
                node.into(),
                key,
                ReplicaObserved {
                    phase: ReplicaPhase::Running,
                    ready: true,
                    published_ports: published,
                    ..Default::default()
                },
            )],
            now_unix_ms: 3,
        });
    }

    fn service(&mut self, s: Service) -> StoredService {
        let key = (s.metadata.namespace.clone(), s.metadata.name.clone());
        self.apply(Command::ApplyConfig {
            deployments: vec![],
            config_maps: vec![],
            secrets: vec![],
            services: vec![s],
            service_range: None,
            now_unix_ms: 1,
        });
        StoredService::clone(self.state.service(&key.0, &key.1).expect("stored"))
    }
}

fn service(selector: &[(&str, &str)], target: PortRef) -> Service {
    Service {
        metadata: ObjectMeta {
            name: "backend".into(),
            namespace: "default".into(),
            ..Default::default()
        },
        spec: ServiceSpec {
            kind: ServiceType::ClusterIP,
            selector: selector
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            ports: vec![ServicePort {
                name: Some("http".into()),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: target,
                node_port: None,
            }],
            cluster_ip: ClusterIp::Allocate,
        },
    }
}

fn with_named_port(mut d: Deployment, name: &str, port: u16) -> Deployment {
    d.spec.template.spec.containers[0].ports = vec![ContainerPort {
        name: Some(name.into()),
        container_port: port,
        host_port: None,
        protocol: Protocol::Tcp,
    }];
    d
}

fn replicas_of(e: &Endpoints) -> Vec<(&str, &str, u16)> {
    e.endpoints
        .iter()
        .map(|e| (e.replica.as_str(), e.ip.as_str(), e.ports[0].target_port))
        .collect()
}

#[test]
fn ready_replicas_whose_template_labels_match_are_endpoints() {
    let mut c = Cluster::new();
    c.node("n1", "10.213.1.101:7101")
        .node("n2", "10.213.2.101:7101");
    c.deployment(deployment("backend", 2))
        .deployment(deployment("frontend", 1));
    let b0 = c.replica("backend", 0, "n1", true);
    let b1 = c.replica("backend", 1, "n2", true);
    c.replica("frontend", 0, "n1", true);
    let svc = c.service(service(&[("app", "backend")], PortRef::Number(8080)));
    let e = endpoints(&c.state, &svc);
    assert_eq!(
        replicas_of(&e),
        [
            (b0.as_str(), "10.213.1.101", 8080),
            (b1.as_str(), "10.213.2.101", 8080)
        ]
    );
    assert_eq!(e.endpoints[0].ports[0].port, 80);
}

#[test]
fn unready_replicas_and_lost_nodes_leave_the_endpoints() {
    let mut c = Cluster::new();
    c.node("n1", "10.213.1.101:7101")
        .node("n2", "10.213.2.101:7101");
    c.deployment(deployment("backend", 2));
    let b0 = c.replica("backend", 0, "n1", true);
    let b1 = c.replica("backend", 1, "n2", false);
    let svc = c.service(service(&[("app", "backend")], PortRef::Number(8080)));
    assert_eq!(
        replicas_of(&endpoints(&c.state, &svc)),
        [(b0.as_str(), "10.213.1.101", 8080)],
        "an unready replica is no endpoint"
    );
    c.report(&b1, "n2", true);
    assert_eq!(endpoints(&c.state, &svc).endpoints.len(), 2, "ready now");
    c.report(&b0, "n1", false);
    assert_eq!(
        replicas_of(&endpoints(&c.state, &svc)),
        [(b1.as_str(), "10.213.2.101", 8080)],
        "failing readiness leaves"
    );
    c.apply(Command::NodeDown {
        node: "n2".into(),
        now_unix_ms: 10,
    });
    assert!(
        endpoints(&c.state, &svc).endpoints.is_empty(),
        "a lost node's replica leaves"
    );
}

#[test]
fn named_target_ports_resolve_per_replica_template() {
    let mut c = Cluster::new();
    c.node("n1", "10.213.1.101:7101");
    c.deployment(with_named_port(deployment("a", 1), "web", 8081));
    // Another deployment with the same label, its own port number for the name.
    let mut b = with_named_port(deployment("b", 1), "web", 9090);
    b.spec
        .template
        .metadata
        .labels
        .insert("tier".into(), "api".into());
    b.spec
        .template
        .metadata
        .labels
        .insert("app".into(), "b".into());
    c.deployment(b);
    // And one without the named port at all.
    let mut other = deployment("c", 1);
    other
        .spec
        .template
        .metadata
        .labels
        .insert("tier".into(), "api".into());
    c.deployment(other);
    let mut a = with_named_port(deployment("a", 1), "web", 8081);
    a.spec
        .template
        .metadata
        .labels
        .insert("tier".into(), "api".into());
    c.deployment(a);
    let ra = c.replica("a", 0, "n1", true);
    let rb = c.replica("b", 0, "n1", true);
    c.replica("c", 0, "n1", true);
    let svc = c.service(service(&[("tier", "api")], PortRef::Name("web".into())));
    assert_eq!(
        replicas_of(&endpoints(&c.state, &svc)),
        [
            (ra.as_str(), "10.213.1.101", 8081),
            (rb.as_str(), "10.213.1.101", 9090)
        ],
        "each replica's own port for the name; none without it"
    );
}

#[test]
fn docker_replicas_are_reached_on_the_host_port_their_agent_reports_published() {
    let mut c = Cluster::new();
    c.node_with("d1", "10.213.1.101:7101", "docker")
        .node_with("d2", "10.213.2.101:7101", "docker");
    let tier = |mut d: Deployment| {
        d.spec
            .template
            .metadata
            .labels
            .insert("tier".into(), "api".into());
        d
    };
    // A hostPort stays what the manifest says.
    let mut fixed = with_named_port(deployment("fixed", 1), "web", 80);
    fixed.spec.template.spec.containers[0].ports[0].host_port = Some(8080);
    // The usual manifest: a containerPort only.
    let plain = with_named_port(deployment("plain", 3), "web", 80);
    c.deployment(tier(fixed)).deployment(tier(plain));
    let f = c.replica("fixed", 0, "d1", true);
    let p0 = c.replica("plain", 0, "d1", true);
    let p1 = c.replica("plain", 1, "d2", true);
    let published = |host_port, protocol| {
        vec![PublishedPort {
            container_port: 80,
            protocol,
            host_port,
        }]
    };
    c.report_published(&f, "d1", published(8080, Protocol::Tcp));
    c.report_published(&p0, "d1", published(49153, Protocol::Tcp));
    // p1 has not reported its published port yet: no entry until it does.
    for target in [PortRef::Name("web".into()), PortRef::Number(80)] {
        let svc = c.service(service(&[("tier", "api")], target));
        assert_eq!(
            replicas_of(&endpoints(&c.state, &svc)),
            [
                (f.as_str(), "10.213.1.101", 8080),
                (p0.as_str(), "10.213.1.101", 49153)
            ],
            "the node's address and the published port"
        );
    }
    // A port published for another protocol is not this one.
    c.report_published(&p1, "d2", published(49160, Protocol::Udp));
    let svc = c.service(service(&[("tier", "api")], PortRef::Number(80)));
    assert_eq!(endpoints(&c.state, &svc).endpoints.len(), 2);
    // Once reported (e.g. after a restart gave it a new port), it is there.
    c.report_published(&p1, "d2", published(49170, Protocol::Tcp));
    assert_eq!(
        replicas_of(&endpoints(&c.state, &svc))[2],
        (p1.as_str(), "10.213.2.101", 49170)
    );
    // A process node's replica is reached on the container port itself.
    c.node("n3", "10.213.3.101:7101");
    let p2 = c.replica("plain", 2, "n3", true);
    assert!(replicas_of(&endpoints(&c.state, &svc)).contains(&(p2.as_str(), "10.213.3.101", 80)));
}

#[test]
fn the_address_is_the_host_part_of_the_node_address() {
    assert_eq!(host_of("10.213.1.101:7101"), "10.213.1.101");
    assert_eq!(host_of("[::1]:7101"), "::1");
    assert_eq!(host_of("10.0.0.1"), "10.0.0.1");
    assert_eq!(host_of("host.example:7101"), "host.example");
}

/// One change the property test makes to the cluster.
#[derive(Debug, Clone)]
enum Step {
    /// A replica (by index among those made so far) reports ready or not,
    /// with a published port or none.
    Report(usize, bool, Option<u16>),
    /// A new replica of deployment `d` (0..4) on node `n` (0..3).
    AddReplica(usize, usize),
    /// Deployment `d`'s template moves to tier `t` (a new revision; its
    /// replicas keep the old one).
    Relabel(usize, usize),
    NodeDown(usize),
    NodeUp(usize),
    /// Service `s` (0..3) selects tier `t` instead.
    Reselect(usize, usize),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::{any, prop_oneof};
    use proptest::strategy::Strategy as _;
    prop_oneof![
        4 => (0..40usize, any::<bool>(), proptest::option::of(49152u16..49160))
            .prop_map(|(r, ready, port)| Step::Report(r, ready, port)),
        3 => (0..4usize, 0..3usize).prop_map(|(d, n)| Step::AddReplica(d, n)),
        1 => (0..4usize, 0..3usize).prop_map(|(d, t)| Step::Relabel(d, t)),
        1 => (0..3usize).prop_map(Step::NodeDown),
        1 => (0..3usize).prop_map(Step::NodeUp),
        1 => (0..3usize, 0..3usize).prop_map(|(s, t)| Step::Reselect(s, t)),
    ]
}

const NODES: [(&str, &str, &str); 3] = [
    ("n1", "10.213.1.101:7101", "process"),
    ("d1", "10.213.2.101:7101", "docker"),
    ("d2", "10.213.3.101:7101", "docker"),
];
const TIERS: [&str; 3] = ["api", "web", "db"];

fn tiered(name: &str, tier: &str) -> Deployment {
    let mut d = with_named_port(deployment(name, 1), "web", 80);
    d.spec
        .template
        .metadata
        .labels
        .insert("tier".into(), tier.into());
    d
}

fn tier_service(s: usize, tier: &str) -> Service {
    let mut svc = service(&[("tier", tier)], PortRef::Name("web".into()));
    svc.metadata.name = format!("svc-{s}");
    svc
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    /// The Service table the book keeps up to date from the store's change
    /// feed (only the Services a change can affect recomputed) equals the
    /// table recomputed from scratch, after every step.
    #[test]
    fn the_incremental_service_table_equals_a_full_recompute(
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        use crate::dispatcher::services::{changes_since, table};
        use crate::store::Touched;
        let mut c = Cluster::new();
        for (name, address, runtime) in NODES {
            c.node_with(name, address, runtime);
        }
        let names = ["a", "b", "c", "e"];
        for (i, name) in names.iter().enumerate() {
            c.deployment(tiered(name, TIERS[i % 3]));
        }
        for (s, tier) in TIERS.iter().enumerate() {
            c.service(tier_service(s, tier));
        }
        let mut replicas: Vec<(String, &str)> = Vec::new();
        let mut slots = [0u32; 4];
        let first = c.state.take_touched();
        let mut previous = table(&c.state, &[], &first);
        for step in steps {
            match step {
                Step::Report(r, ready, port) => {
                    if let Some((name, node)) = replicas.get(r % replicas.len().max(1)).cloned() {
                        let published = port
                            .map(|host_port| PublishedPort {
                                container_port: 80,
                                protocol: Protocol::Tcp,
                                host_port,
                            })
                            .into_iter()
                            .collect();
                        c.apply(Command::ReportStatus {
                            reports: vec![(
                                node.into(),
                                ObjectRef { namespace: "default".into(), name },
                                ReplicaObserved {
                                    phase: ReplicaPhase::Running,
                                    ready,
                                    published_ports: published,
                                    ..Default::default()
                                },
                            )],
                            now_unix_ms: 5,
                        });
                    }
                }
                Step::AddReplica(d, n) => {
                    let node = NODES[n].0;
                    let name = c.replica(names[d], 100 + slots[d], node, true);
                    slots[d] += 1;
                    replicas.push((name, node));
                }
                Step::Relabel(d, t) => {
                    c.deployment(tiered(names[d], TIERS[t]));
                }
                Step::NodeDown(n) => c.apply(Command::NodeDown {
                    node: NODES[n].0.into(),
                    now_unix_ms: 6,
                }),
                Step::NodeUp(n) => c.apply(Command::NodeUp {
                    node: NODES[n].0.into(),
                    now_unix_ms: 7,
                }),
                Step::Reselect(s, t) => {
                    c.service(tier_service(s, TIERS[t]));
                }
            }
            let touched = c.state.take_touched();
            let incremental = table(&c.state, &previous, &touched);
            let full = table(&c.state, &[], &Touched::everything());
            proptest::prop_assert_eq!(&incremental, &full, "after {:?}", touched);
            // An agent that had `previous` and applies the change a session
            // sends ends with the new table.
            let (changed, removed) = changes_since(&incremental, &previous);
            let mut agent: BTreeMap<String, drover_proto::pb::ServiceRoute> = previous
                .iter()
                .map(|r| (format!("{}/{}", r.namespace, r.name), (**r).clone()))
                .collect();
            for k in removed {
                agent.remove(&k);
            }
            for r in changed {
                agent.insert(format!("{}/{}", r.namespace, r.name), r);
            }
            let expected: BTreeMap<String, drover_proto::pb::ServiceRoute> = incremental
                .iter()
                .map(|r| (format!("{}/{}", r.namespace, r.name), (**r).clone()))
                .collect();
            proptest::prop_assert_eq!(agent, expected);
            previous = incremental;
        }
    }
}
