//! `bench endpoints`: what keeping the Service table up to date costs the
//! leader at scale, in this process, on a `State` built by applying the
//! commands the real loops write (no network, no agents).
//!
//! ```text
//!  State: N nodes (Docker) · D deployments × R replicas, all ready, ports published
//!         S Services, Service i selecting deployment i
//!  full:        table(state, [], everything)              every Service recomputed
//!  status batch: ReportStatus of B replicas over K deployments, then
//!               table(state, previous, touched)           only the Services selecting them
//! ```
//!
//! Each figure is the median of `rounds`, beside the full recompute in the
//! same run (the cost a status batch had when it recomputed every Service
//! of its namespace: here all are in `default`). The incremental table is
//! compared with a full one after every batch and the line says whether
//! they were equal.

use std::time::{Duration, Instant};

use drover_controller::dispatcher::services::{changes_since, table, Route};
use drover_controller::fixtures::deployment;
use drover_controller::store::objects::PublishedPort;
use drover_controller::store::{
    Command, NodeRegistration, ObjectRef, ReplicaObserved, ReplicaPhase, ReplicaRecord, Resources,
    State, Touched,
};
use drover_manifest::{
    ClusterIp, ContainerPort, ObjectMeta, PortRef, Protocol, Service, ServicePort, ServiceSpec,
    ServiceType,
};

use super::measure::percentile;

pub struct Config {
    pub nodes: usize,
    pub deployments: usize,
    pub replicas: usize,
    pub services: usize,
    pub rounds: usize,
}

/// Applies commands to a state, index by index, as a follower does.
struct Applier {
    state: State,
    index: u64,
}

impl Applier {
    fn apply(&mut self, command: &Command) -> anyhow::Result<()> {
        self.index += 1;
        self.state
            .apply(self.index, 1, command)
            .map_err(|e| anyhow::anyhow!("command refused: {e}"))?;
        Ok(())
    }
}

fn key(name: &str) -> ObjectRef {
    ObjectRef {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn ready(host_port: u16) -> ReplicaObserved {
    ReplicaObserved {
        phase: ReplicaPhase::Running,
        ready: true,
        published_ports: vec![PublishedPort {
            container_port: 8080,
            protocol: Protocol::Tcp,
            host_port,
        }],
        ..Default::default()
    }
}

pub fn run(cfg: Config) -> anyhow::Result<()> {
    let built = Instant::now();
    let mut a = Applier {
        state: State::default(),
        index: 1,
    };
    let nodes: Vec<String> = (0..cfg.nodes).map(|n| format!("node-{n:04}")).collect();
    for (n, name) in nodes.iter().enumerate() {
        a.apply(&Command::RegisterNode {
            node: NodeRegistration {
                name: name.clone(),
                labels: Default::default(),
                capacity: Resources {
                    cpu_millis: 1_000_000,
                    memory_bytes: 1 << 40,
                },
                address: format!("10.{}.{}.1:7101", 1 + n / 250, n % 250),
                runtime: "docker".into(),
                agent_version: "bench".into(),
                incarnation: "1".into(),
            },
            now_unix_ms: 1,
        })?;
    }
    let names: Vec<String> = (0..cfg.deployments)
        .map(|d| format!("dep-{d:05}"))
        .collect();
    let deployments = names
        .iter()
        .map(|name| {
            let mut d = deployment(name, cfg.replicas as u32);
            d.spec.template.spec.containers[0].ports = vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                host_port: None,
                protocol: Protocol::Tcp,
            }];
            d
        })
        .collect();
    a.apply(&Command::Apply {
        deployments,
        now_unix_ms: 1,
    })?;
    // Every replica: created, placed round-robin, reported ready with its port.
    let mut replicas: Vec<(String, String)> = Vec::new();
    for name in &names {
        let revision = a
            .state
            .deployment("default", name)
            .map(|d| d.current_revision_hash())
            .ok_or_else(|| anyhow::anyhow!("deployment {name} not stored"))?;
        let mut create = Vec::new();
        let mut place = Vec::new();
        for slot in 0..cfg.replicas {
            let replica = format!("{name}-{revision}-{slot}");
            let node = nodes[replicas.len() % nodes.len()].clone();
            create.push(ReplicaRecord {
                namespace: "default".into(),
                name: replica.clone(),
                deployment: name.clone(),
                slot: slot as u32,
                revision: revision.clone(),
                node: None,
                bound_at: 0,
                pending_reason: String::new(),
                created_unix_ms: 1,
                observed: ReplicaObserved::default(),
                replaces: None,
                terminating_since_unix_ms: 0,
                booking: None,
                stop_grace_seconds: None,
            });
            place.push((key(&replica), node.clone()));
            replicas.push((replica, node));
        }
        a.apply(&Command::Reconcile {
            create,
            remove: vec![],
            now_unix_ms: 1,
        })?;
        a.apply(&Command::Schedule {
            place,
            unschedulable: vec![],
            now_unix_ms: 1,
        })?;
    }
    for chunk in replicas.chunks(10_000) {
        let reports = chunk
            .iter()
            .enumerate()
            .map(|(i, (r, n))| (n.clone(), key(r), ready(40_000 + (i % 20_000) as u16)))
            .collect();
        a.apply(&Command::ReportStatus {
            reports,
            now_unix_ms: 2,
        })?;
    }
    let services: Vec<Service> = (0..cfg.services)
        .map(|i| Service {
            metadata: ObjectMeta {
                name: format!("svc-{i:05}"),
                namespace: "default".into(),
                ..Default::default()
            },
            spec: ServiceSpec {
                kind: ServiceType::ClusterIP,
                selector: [("app".to_string(), names[i % names.len()].clone())].into(),
                ports: vec![ServicePort {
                    name: Some("http".into()),
                    protocol: Protocol::Tcp,
                    port: 80,
                    target_port: PortRef::Name("http".into()),
                    node_port: None,
                }],
                cluster_ip: ClusterIp::Allocate,
            },
        })
        .collect();
    a.apply(&Command::ApplyConfig {
        deployments: vec![],
        config_maps: vec![],
        secrets: vec![],
        services,
        service_range: None,
        now_unix_ms: 3,
    })?;
    let _ = a.state.take_touched();
    println!(
        "endpoints: {} nodes, {} deployments x {} replicas = {} ready replicas, {} Services (state built in {:.1} s)",
        cfg.nodes,
        cfg.deployments,
        cfg.replicas,
        replicas.len(),
        cfg.services,
        built.elapsed().as_secs_f64()
    );

    // Baseline: every Service recomputed.
    let mut full_times = Vec::new();
    let mut previous: Vec<Route> = Vec::new();
    for _ in 0..cfg.rounds {
        let t = Instant::now();
        previous = table(&a.state, &[], &Touched::everything());
        full_times.push(t.elapsed());
    }
    let full = median(&mut full_times);
    let endpoints: usize = previous
        .iter()
        .flat_map(|r| &r.ports)
        .map(|p| p.endpoints.len())
        .sum();
    println!(
        "endpoints full recompute: {:.1} ms for {} Services, {} endpoints (median of {})",
        ms(full),
        previous.len(),
        endpoints,
        cfg.rounds
    );

    // Status batches: B reports spread over K deployments, readiness flipped.
    let mut flip = false;
    for (reports, over) in [(1usize, 1usize), (100, 10), (1_000, 100), (1_000, 1_000)] {
        let over = over.min(cfg.deployments);
        let per = reports.div_ceil(over).min(cfg.replicas);
        let mut apply_times = Vec::new();
        let mut table_times = Vec::new();
        let mut diff_times = Vec::new();
        let mut sent_routes = 0;
        let mut equal = true;
        let mut sent = 0;
        for _ in 0..cfg.rounds {
            flip = !flip;
            let batch: Vec<_> = (0..over)
                .flat_map(|d| (0..per).map(move |s| d * cfg.replicas + s))
                .take(reports)
                .map(|i| {
                    let (r, n) = &replicas[i];
                    let mut o = ready(40_000);
                    o.ready = flip;
                    (n.clone(), key(r), o)
                })
                .collect::<Vec<_>>();
            sent = batch.len();
            let t = Instant::now();
            a.apply(&Command::ReportStatus {
                reports: batch,
                now_unix_ms: 4,
            })?;
            apply_times.push(t.elapsed());
            let t = Instant::now();
            let touched = a.state.take_touched();
            let next = table(&a.state, &previous, &touched);
            table_times.push(t.elapsed());
            // What each agent session does with it: the routes to send.
            let t = Instant::now();
            let (changed, removed) = changes_since(&next, &previous);
            diff_times.push(t.elapsed());
            sent_routes = changed.len() + removed.len();
            equal &= next == table(&a.state, &[], &Touched::everything());
            previous = next;
        }
        let incremental = median(&mut table_times);
        println!(
            "endpoints status batch ({sent} reports over {over} deployments): table update {:.2} ms vs full recompute {:.1} ms (full/update {:.1}); apply {:.1} ms; per agent session {:.2} ms to find the {sent_routes} routes to send; equal to full: {}",
            ms(incremental),
            ms(full),
            full.as_secs_f64() / incremental.as_secs_f64().max(1e-9),
            ms(median(&mut apply_times)),
            ms(median(&mut diff_times)),
            if equal { "yes" } else { "NO" }
        );
    }
    Ok(())
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    percentile(times, 0.5)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
