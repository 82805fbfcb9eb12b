//! `droverctl get KIND -w` end to end (issue 17): real controllers, real
//! agents, droverctl as a user runs it. A watch prints each change once, in
//! order, and carries on on another controller when the one it reads from
//! is killed, with no change repeated or skipped.

use std::time::Duration;

use drover_pki::Role;
use drover_tests::cluster::{apply, apply_noted, ok, Options, Running};
use drover_tests::Cluster;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const T: Duration = Duration::from_secs(90);

/// One change as `-o json --output-watch-events` prints it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    kind: String,
    name: String,
    index: u64,
    generation: u64,
    spec_replicas: u64,
    status_replicas: u64,
    note: String,
}

/// The complete JSON objects printed so far (a partly written last one is
/// left for the next look).
fn seen(watch: &Running) -> Vec<Seen> {
    let out = watch.output();
    let start = out.find('{').unwrap_or(out.len());
    serde_json::Deserializer::from_str(&out[start..])
        .into_iter::<Value>()
        .map_while(Result::ok)
        .map(|v| {
            let o = &v["object"];
            let m = &o["metadata"];
            Seen {
                kind: v["type"].as_str().unwrap_or_default().to_string(),
                name: m["name"].as_str().unwrap_or_default().to_string(),
                index: m["resourceVersion"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                generation: m["generation"].as_u64().unwrap_or(0),
                spec_replicas: o["spec"]["replicas"].as_u64().unwrap_or(0),
                status_replicas: o["status"]["replicas"].as_u64().unwrap_or(0),
                note: m["annotations"]["drover.io/note"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            }
        })
        .collect()
}

/// Wait until `watch` printed a change that `done` accepts.
async fn wait_seen(c: &Cluster, watch: &Running, what: &str, done: impl Fn(&Seen) -> bool) {
    c.wait_for(what, T, || async {
        let all = seen(watch);
        if all.iter().any(&done) {
            Ok(())
        } else {
            Err(format!("{all:?}\n{}", watch.output()))
        }
    })
    .await
    .expect(what);
}

/// Wait until the output holds a line with all of `words`.
async fn wait_line(c: &Cluster, watch: &Running, words: &[&str]) -> String {
    c.wait_for(&format!("a line with {words:?}"), T, || async {
        let out = watch.output();
        out.lines()
            .find(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                words.iter().all(|w| cells.contains(w))
            })
            .map(str::to_string)
            .ok_or(out)
    })
    .await
    .expect("line")
}

fn strictly_increasing(changes: &[Seen]) {
    for pair in changes.windows(2) {
        assert!(
            pair[0].index < pair[1].index,
            "a change printed twice or out of order: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_watch_prints_its_changes_in_order() {
    let c = Cluster::start(3).await.expect("cluster");
    let mut client = c.client(0).await.expect("client");
    apply(&mut client, "web", 1).await.expect("apply");

    let json = c.ctl().spawn(&[
        "get",
        "deployments",
        "-w",
        "-o",
        "json",
        "--output-watch-events",
    ]);
    let table = c
        .ctl()
        .spawn(&["get", "deploy", "-w", "--output-watch-events"]);
    // A viewer may watch what it may list.
    let pki = c.pki.as_ref().expect("a secure cluster");
    let viewer = pki.client(Role::Viewer, "watcher").expect("viewer");
    let viewing = c.ctl().as_identity(&viewer).spawn(&["get", "deploy", "-w"]);
    wait_seen(&c, &json, "web listed", |s| s.name == "web").await;
    wait_line(&c, &table, &["ADDED", "web"]).await;
    wait_line(&c, &viewing, &["web"]).await;

    ok(&c
        .ctl()
        .run(&["scale", "deployment", "web", "--replicas", "3"]));
    wait_seen(&c, &json, "scaled to 3", |s| s.status_replicas == 3).await;
    apply_noted(&mut client, "web", 3, "edited")
        .await
        .expect("edit");
    wait_seen(&c, &json, "edited", |s| s.note == "edited").await;
    ok(&c.ctl().run(&["delete", "deployment", "web"]));
    wait_seen(&c, &json, "deleted", |s| s.kind == "DELETED").await;
    wait_line(&c, &table, &["DELETED", "web"]).await;

    let all = seen(&json);
    strictly_increasing(&all[1..]);
    assert_eq!(all[0].kind, "ADDED", "{all:?}");
    assert_eq!(all[0].spec_replicas, 1);
    let last = all.last().expect("changes");
    assert_eq!(last.kind, "DELETED");
    assert_eq!(
        all.iter().filter(|s| s.kind == "DELETED").count(),
        1,
        "{all:?}"
    );
    // Scale, then edit, then delete: generations 1, 2, 3 in that order, and
    // the replicas created one by one after the scale.
    let generations: Vec<u64> = all.iter().map(|s| s.generation).collect();
    assert!(generations.windows(2).all(|w| w[0] <= w[1]), "{all:?}");
    for g in 1..=3 {
        assert!(generations.contains(&g), "generation {g} missing: {all:?}");
    }
    let scaled = all
        .iter()
        .position(|s| s.spec_replicas == 3)
        .expect("scale");
    let edited = all.iter().position(|s| s.note == "edited").expect("edit");
    assert!(scaled < edited, "{all:?}");
    let counts: Vec<u64> = all[..edited].iter().map(|s| s.status_replicas).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{all:?}");
    assert!(counts.contains(&3), "{all:?}");

    // The table: the header, the listed row, then a row per change, READY
    // counting against the new desired count after the scale.
    let text = table.output();
    let lines: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["EVENT", "NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    assert!(lines[1].starts_with("ADDED"), "{text}");
    wait_line(&c, &table, &["MODIFIED", "web", "0/3"]).await;
    assert_eq!(
        text.lines().filter(|l| l.starts_with("DELETED")).count(),
        1,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_on_another_controller_without_repeating_or_missing_a_change() {
    const LAST: u32 = 30;
    const KILL_AT: u32 = 12;
    let mut c = Cluster::start(3).await.expect("cluster");
    let mut client = c.client(1).await.expect("client");
    apply(&mut client, "web", 1).await.expect("apply");
    let args = [
        "get",
        "deployments",
        "-w",
        "-o",
        "json",
        "--output-watch-events",
    ];
    // `moving` reads from controller 0 first (the first --server), which is
    // killed midway; `steady` reads from controller 1 only, which is not.
    let moving = c.ctl().spawn(&args);
    let steady = c.ctl_at(1).spawn(&args);
    wait_seen(&c, &moving, "listed", |s| s.name == "web").await;
    wait_seen(&c, &steady, "listed", |s| s.name == "web").await;

    for n in 2..=LAST {
        if n == KILL_AT {
            // Let the watch see a few changes from controller 0 first.
            wait_seen(&c, &moving, "changes before the kill", |s| {
                s.spec_replicas == KILL_AT as u64 - 1
            })
            .await;
            c.kill(0);
        }
        let replicas = n.to_string();
        ok(&c
            .ctl()
            .run(&["scale", "deployment", "web", "--replicas", &replicas]));
    }
    let done = |s: &Seen| s.spec_replicas == LAST as u64 && s.status_replicas == LAST as u64;
    wait_seen(&c, &moving, "the last change", done).await;
    wait_seen(&c, &steady, "the last change", done).await;

    let moved = seen(&moving);
    let stayed = seen(&steady);
    strictly_increasing(&moved[1..]);
    strictly_increasing(&stayed[1..]);
    // After both lists, both watches printed exactly the same changes: the
    // one that moved missed none and repeated none.
    let from = moved[0].index.max(stayed[0].index);
    let after = |all: &[Seen]| -> Vec<Seen> {
        all.iter()
            .filter(|s| s.index > from)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(after(&moved), after(&stayed));
    // And every scale is in it, in the order made.
    let specs: Vec<u64> = moved.iter().map(|s| s.spec_replicas).collect();
    assert!(specs.windows(2).all(|w| w[0] <= w[1]), "{moved:?}");
    for n in 1..=LAST as u64 {
        assert!(specs.contains(&n), "scale to {n} missing: {moved:?}");
    }
    assert!(
        moving.output().lines().all(|l| !l.starts_with("error")),
        "{}",
        moving.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_and_node_watches_show_phase_changes() {
    let mut c = Cluster::with_agents(3, "process", &["n1"])
        .await
        .expect("cluster");
    let replicas = c
        .ctl()
        .spawn(&["get", "replicas", "-w", "--output-watch-events"]);
    let nodes = c
        .ctl()
        .spawn(&["get", "nodes", "-w", "--output-watch-events"]);
    wait_line(&c, &nodes, &["ADDED", "n1", "Ready"]).await;

    let mut client = c.client(0).await.expect("client");
    apply(&mut client, "web", 1).await.expect("apply");
    // Created bound to n1 (one entry): added on its node, not started yet.
    wait_line(&c, &replicas, &["ADDED", "ContainerCreating", "n1"]).await;
    wait_line(&c, &replicas, &["MODIFIED", "Running"]).await;

    ok(&c.ctl().run(&["cordon", "n1"]));
    wait_line(&c, &nodes, &["MODIFIED", "n1", "Ready,SchedulingDisabled"]).await;
    c.kill_agent(0);
    wait_line(
        &c,
        &nodes,
        &["MODIFIED", "n1", "NotReady,SchedulingDisabled"],
    )
    .await;

    // ContainerCreating, then Running, each printed once for the replica:
    // the replica's rows in order never go back to a phase they left.
    let text = replicas.output();
    let phases: Vec<&str> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    let first_running = phases
        .iter()
        .position(|p| *p == "Running")
        .expect("Running");
    assert!(
        phases[..first_running].iter().all(|p| *p != "Running"),
        "{text}"
    );
    assert!(phases.contains(&"ContainerCreating"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_too_far_behind_lists_again_and_prints_only_what_differs() {
    // Each controller keeps only 3 changes: a watch away for more resumes
    // with a new list (Kubernetes' 410 Gone).
    let mut c = Cluster::start_with(
        3,
        Options {
            extra_args: vec!["--watch-history".into(), "3".into()],
            ..Options::default()
        },
    )
    .await
    .expect("cluster");
    let mut client = c.client(1).await.expect("client");
    for name in ["a", "b", "c"] {
        apply(&mut client, name, 0).await.expect("apply");
    }
    let watch = c.ctl().spawn(&[
        "get",
        "deployments",
        "-w",
        "-o",
        "json",
        "--output-watch-events",
    ]);
    wait_seen(&c, &watch, "listed", |s| s.name == "c").await;
    let listed = seen(&watch).len();
    assert_eq!(listed, 3);

    // The watch is stopped while its controller dies and the cluster moves on.
    let pid = Pid::from_raw(watch.pid() as i32);
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    c.kill(0);
    ok(&c
        .ctl()
        .run(&["scale", "deployment", "a", "--replicas", "2"]));
    ok(&c.ctl().run(&["delete", "deployment", "b"]));
    // Five changes at least, more than the 3 kept.
    for name in ["d", "e", "f"] {
        apply(&mut client, name, 0).await.expect("apply");
    }
    apply_noted(&mut client, "c", 0, "")
        .await
        .expect("c unchanged");
    kill(pid, Signal::SIGCONT).expect("SIGCONT");

    wait_seen(&c, &watch, "a scaled", |s| {
        s.name == "a" && s.status_replicas == 2
    })
    .await;
    wait_seen(&c, &watch, "f added", |s| s.name == "f").await;
    let all = seen(&watch);
    let after = &all[listed..];
    let b: Vec<&Seen> = after.iter().filter(|s| s.name == "b").collect();
    assert_eq!(b.len(), 1, "{after:?}");
    assert_eq!(b[0].kind, "DELETED");
    for name in ["d", "e", "f"] {
        let added: Vec<&Seen> = after.iter().filter(|s| s.name == name).collect();
        assert_eq!(added.len(), 1, "{name}: {after:?}");
        assert_eq!(added[0].kind, "ADDED");
        // The deletion of b and the creations came from one new list, not
        // from the changes one by one (those have an index each).
        assert_eq!(added[0].index, b[0].index, "{after:?}");
    }
    // c did not change: not printed again.
    assert!(after.iter().all(|s| s.name != "c"), "{after:?}");
}
