//! Observability end to end (issue 17): `/metrics` scraped from real
//! controllers and agents moves as the cluster works and parses as
//! Prometheus text; `droverctl top` shows a busy loop at about one core on
//! both runtimes.

use std::time::Duration;

use drover_tests::cluster::{apply, ok};
use drover_tests::docker::{available as docker_available, unique, Containers};
use drover_tests::metrics::{scrape, Samples};
use drover_tests::Cluster;

const T: Duration = Duration::from_secs(90);

async fn metrics_of(addr: &str) -> Samples {
    scrape(addr)
        .await
        .unwrap_or_else(|e| panic!("scraping {addr}: {e:#}"))
}

/// Wait until `series` on `addr` satisfies `ok`; returns its value.
async fn wait_metric(c: &Cluster, addr: &str, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    c.wait_for(&format!("{series} on {addr}"), T, || async {
        let s = scrape(addr).await.map_err(|e| format!("{e:#}"))?;
        match s.get(series) {
            Some(v) if ok(v) => Ok(v),
            other => Err(format!("{series} = {other:?}")),
        }
    })
    .await
    .expect("metric")
}

fn crasher() -> &'static str {
    r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: crasher
  annotations:
    drover.io/restart-backoff-initial: 1s
    drover.io/restart-backoff-max: 2s
spec:
  replicas: 1
  selector:
    matchLabels: {app: crasher}
  template:
    metadata:
      labels: {app: crasher}
    spec:
      containers:
      - name: main
        image: drover/busybox:1
        command: ["sh", "-c", "exit 3"]
        resources:
          requests: {cpu: 10m, memory: 8Mi}
"#
}

fn busy(name: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: main
        image: drover/busybox:1
        command: ["sh", "-c", "while :; do :; done"]
        resources:
          requests: {{cpu: 100m, memory: 8Mi}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_applies_crashes_and_a_leader_kill() {
    let mut c = Cluster::start(3).await.expect("cluster");
    c.start_agent("n1", "process", &["--cpu", "4", "--memory", "4Gi"])
        .expect("agent");
    c.wait_nodes_ready(1, T).await.expect("node");
    let agent = c.agents[0].metrics.clone();
    let leader = c.wait_for_leader(T).await.expect("leader");
    let addrs: Vec<String> = c.controllers.iter().map(|x| x.metrics.clone()).collect();
    let at = |i: usize| addrs[i].clone();

    // Exactly one member says it leads.
    for i in 0..3 {
        let want = if i == leader { 1.0 } else { 0.0 };
        wait_metric(&c, &at(i), "drover_raft_leader", |v| v == want).await;
    }

    // An apply bumps the committed proposals of the member that served it
    // (leader, or a follower relaying it through raft), and its apply
    // counter by exactly one.
    let committed = "drover_raft_proposals_total{outcome=\"committed\"}";
    let applied = "drover_apply_requests_total{outcome=\"applied\"}";
    let before = metrics_of(&at(1)).await;
    let served_before = before.value(applied);
    let mut client = c.client(1).await.expect("client");
    apply(&mut client, "web", 2).await.expect("apply");
    let after = metrics_of(&at(1)).await;
    assert!(
        after.value(committed) > before.value(committed),
        "proposals: {} -> {}",
        before.value(committed),
        after.value(committed)
    );
    assert_eq!(metrics_of(&at(1)).await.value(applied), served_before + 1.0);

    // The state gauges follow, on the leader and on the agent.
    wait_metric(
        &c,
        &at(leader),
        "drover_objects{kind=\"deployment\"}",
        |v| v == 1.0,
    )
    .await;
    wait_metric(&c, &at(leader), "drover_replicas{phase=\"Running\"}", |v| {
        v == 2.0
    })
    .await;
    wait_metric(&c, &at(leader), "drover_scheduler_placements_total", |v| {
        v >= 2.0
    })
    .await;
    wait_metric(&c, &at(leader), "drover_dispatcher_sessions", |v| v == 1.0).await;
    wait_metric(
        &c,
        &agent,
        "drover_agent_replicas{state=\"Running\"}",
        |v| v == 2.0,
    )
    .await;
    wait_metric(
        &c,
        &agent,
        "drover_agent_session_state{state=\"established\"}",
        |v| v == 1.0,
    )
    .await;
    wait_metric(
        &c,
        &agent,
        "drover_agent_heartbeats_acknowledged_total",
        |v| v > 0.0,
    )
    .await;
    let started = metrics_of(&agent)
        .await
        .value("drover_agent_runtime_operation_seconds{operation=\"start\"}");
    assert!(started >= 2.0, "two starts timed, saw {started}");

    // A linearizable read waits for a ReadIndex round, and is timed.
    let reads = "drover_raft_read_index_seconds";
    let reads_before = metrics_of(&at(leader)).await.value(reads);
    ok(&c.ctl_at(leader).run(&["get", "deployments"]));
    assert!(metrics_of(&at(leader)).await.value(reads) > reads_before);

    // A crash bumps the agent's restarts.
    let restarts = "drover_agent_restarts_total";
    let restarts_before = metrics_of(&agent).await.value(restarts);
    ok(&c
        .ctl()
        .run_with_stdin(&["apply", "-f", "-"], Some(crasher().as_bytes())));
    wait_metric(&c, &agent, restarts, |v| v >= restarts_before + 2.0).await;

    // Killing the leader bumps leader changes on both survivors.
    let changes = "drover_raft_leader_changes_total";
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let mut seen = Vec::new();
    for i in &survivors {
        seen.push(metrics_of(&at(*i)).await.value(changes));
    }
    c.kill(leader);
    for (i, before) in survivors.iter().zip(seen) {
        wait_metric(&c, &at(*i), changes, |v| v > before).await;
    }
    let new_leader = c.wait_for_leader(T).await.expect("new leader");
    wait_metric(&c, &at(new_leader), "drover_raft_leader", |v| v == 1.0).await;
    wait_metric(&c, &at(new_leader), "drover_raft_term", |v| v >= 2.0).await;
}

/// The CPU(cores) of `replica`'s row in `droverctl top replicas`, in millicores.
fn top_cpu(table: &str, prefix: &str) -> Option<u64> {
    table
        .lines()
        .find(|l| l.starts_with(prefix))?
        .split_whitespace()
        .nth(1)?
        .strip_suffix('m')?
        .parse()
        .ok()
}

/// One busy loop at a time: two on a two-core machine would each get less
/// than the core they are expected to show.
static ONE_BUSY_LOOP: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Wait until `top replicas` shows the busy loop between half a core and a
/// core and a half (generous: the machine is shared), then check `top nodes`.
async fn busy_loop_shows_about_one_core(c: &Cluster, name: &str, node: &str) {
    let _alone = ONE_BUSY_LOOP.lock().await;
    ok(&c
        .ctl()
        .run_with_stdin(&["apply", "-f", "-"], Some(busy(name).as_bytes())));
    let millis = c
        .wait_for("a busy loop near one core in top replicas", T, || async {
            let out = c.ctl().run(&["top", "replicas"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            match top_cpu(&text, &format!("{name}-")) {
                Some(m) if (500..=1500).contains(&m) => Ok(m),
                _ => Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr))),
            }
        })
        .await
        .expect("top replicas");
    eprintln!("{name}: {millis}m");
    let out = ok(&c.ctl().run(&["top", "nodes"]));
    let row = out
        .lines()
        .find(|l| l.starts_with(node))
        .unwrap_or_else(|| panic!("no row for {node}:\n{out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells.len(), 5, "{out}");
    let node_millis: u64 = cells[1]
        .strip_suffix('m')
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("CPU(cores) of {node}: {out}"));
    assert!(node_millis >= 500, "the host runs the busy loop: {out}");
    assert!(cells[2].ends_with('%') && cells[4].ends_with('%'), "{out}");
    assert!(cells[3].ends_with("Mi"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_a_busy_loop_near_one_core_on_the_process_runtime() {
    let mut c = Cluster::start(1).await.expect("cluster");
    c.start_agent(
        "n1",
        "process",
        &["--cpu", "4", "--memory", "4Gi", "--usage-interval", "1s"],
    )
    .expect("agent");
    c.wait_nodes_ready(1, T).await.expect("node");
    busy_loop_shows_about_one_core(&c, "busy", "n1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_a_busy_loop_near_one_core_on_docker() {
    if !docker_available() {
        return;
    }
    let node = unique("top");
    let _cleanup = Containers(vec![node.clone()]);
    let mut c = Cluster::start(1).await.expect("cluster");
    c.start_agent(
        &node,
        "docker",
        &["--cpu", "4", "--memory", "4Gi", "--usage-interval", "1s"],
    )
    .expect("agent");
    c.wait_nodes_ready(1, T).await.expect("node");
    busy_loop_shows_about_one_core(&c, &unique("busy"), &node).await;
}
