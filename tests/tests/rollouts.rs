//! Rolling updates end to end with the process runtime: the bounds hold while
//! replicas are replaced (sampled every 100 ms), a revision that never becomes
//! ready stalls, fails at its progress deadline and rolls back by itself,
//! `rollout undo` restores the previous template, and a leader change in the
//! middle of a rollout does not stop it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_pki::Security;
use drover_proto::pb;
use drover_tests::cluster::{err, ok};
use drover_tests::Cluster;

const T: Duration = Duration::from_secs(90);

struct Spec<'a> {
    replicas: u32,
    surge: u32,
    unavailable: u32,
    /// What each replica prints: a new word is a new template.
    word: &'a str,
    /// A readiness probe command that never passes.
    never_ready: bool,
    deadline_seconds: u32,
    auto_rollback: bool,
    cause: &'a str,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Spec {
            replicas: 6,
            surge: 1,
            unavailable: 1,
            word: "one",
            never_ready: false,
            deadline_seconds: 600,
            auto_rollback: false,
            cause: "",
        }
    }
}

fn manifest(s: &Spec<'_>) -> String {
    let probe = if s.never_ready {
        "        readinessProbe:\n          exec:\n            command: [\"false\"]\n          periodSeconds: 1\n"
    } else {
        "        readinessProbe:\n          exec:\n            command: [\"true\"]\n          periodSeconds: 1\n"
    };
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  annotations:
    drover.io/auto-rollback: "{auto}"
    kubernetes.io/change-cause: "{cause}"
spec:
  replicas: {replicas}
  minReadySeconds: 1
  progressDeadlineSeconds: {deadline}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: {surge}
      maxUnavailable: {unavailable}
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: main
        image: drover/busybox:1
        command: ["sh", "-c", "while true; do echo {word}; sleep 1; done"]
{probe}        resources:
          requests:
            cpu: 50m
            memory: 8Mi
"#,
        auto = s.auto_rollback,
        cause = s.cause,
        replicas = s.replicas,
        deadline = s.deadline_seconds,
        surge = s.surge,
        unavailable = s.unavailable,
        word = s.word,
    )
}

fn apply(c: &Cluster, spec: &Spec<'_>, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["apply", "-f", "-"];
    args.extend_from_slice(extra);
    c.ctl()
        .run_with_stdin(&args, Some(manifest(spec).as_bytes()))
}

/// One look at the deployment, as the controllers see it.
#[derive(Debug, Clone)]
struct Sample {
    total: u32,
    available: u32,
    revisions: usize,
}

/// Samples `web` every 100 ms from any controller that answers, until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(addresses: Vec<String>, security: Security) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, samples) = (stop.clone(), samples.clone());
            async move {
                while !stop.load(Ordering::SeqCst) {
                    for address in &addresses {
                        let Ok(mut client) =
                            drover_tests::cluster::connect(address, &security).await
                        else {
                            continue;
                        };
                        let request = pb::GetDeploymentRequest {
                            namespace: "default".into(),
                            name: "web".into(),
                            read: None,
                        };
                        let asked = tokio::time::timeout(
                            Duration::from_secs(1),
                            client.get_deployment(request),
                        )
                        .await;
                        if let Ok(Ok(d)) = asked {
                            let s = d.into_inner().status.unwrap_or_default();
                            let revisions = s.revisions.iter().filter(|r| r.replicas > 0).count();
                            samples.lock().expect("samples").push(Sample {
                                total: s.replicas,
                                available: s.available,
                                revisions,
                            });
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Sampler {
            stop,
            samples,
            task,
        }
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let samples = self.samples.lock().expect("samples").clone();
        samples
    }
}

fn assert_bounds(samples: &[Sample], desired: u32, surge: u32, unavailable: u32) {
    assert!(samples.len() > 10, "too few samples: {samples:?}");
    for s in samples {
        assert!(
            s.total <= desired + surge,
            "{} replicas > {desired} + maxSurge {surge}: {s:?}",
            s.total
        );
        assert!(
            s.available + unavailable >= desired,
            "{} available < {desired} - maxUnavailable {unavailable}: {s:?}",
            s.available
        );
    }
    assert!(
        samples.iter().any(|s| s.revisions == 2),
        "never saw old and new replicas side by side: the update was not gradual"
    );
}

async fn words_running(c: &Cluster, word: &str, want: usize) -> Result<(), String> {
    let replicas = c.running_replicas("web", want).await?;
    let out = c.ctl().run(&["get", "deployment", "web", "-o", "json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains(&format!("echo {word};")) {
        return Err(format!("template is not {word:?} yet"));
    }
    let revisions: std::collections::BTreeSet<String> =
        replicas.iter().map(|r| r.revision.clone()).collect();
    if revisions.len() == 1 {
        Ok(())
    } else {
        Err(format!("revisions still mixed: {revisions:?}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_keeps_the_bounds_and_undo_restores_the_template() {
    let c = Cluster::with_agents(1, "process", &["n1", "n2", "n3"])
        .await
        .expect("cluster");
    let v1 = Spec {
        cause: "first",
        ..Spec::default()
    };
    let out = ok(&apply(&c, &v1, &["--wait", "--timeout", "90s"]));
    assert!(out.contains("successfully rolled out"), "{out}");
    let listed = ok(&c.ctl().run(&["get", "deployments"]));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("web ") && l.contains(" 6/6 ")),
        "{listed}"
    );

    let sampler = Sampler::start(c.addresses(), c.security.clone());
    let v2 = Spec {
        word: "two",
        cause: "second",
        ..Spec::default()
    };
    let out = ok(&apply(&c, &v2, &["--wait", "--timeout", "90s"]));
    let samples = sampler.finish().await;
    eprintln!("apply --wait printed:\n{out}");
    // Progress is printed from before the end (the controller may have
    // started the first new replica before the first line).
    let first: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("deployment.apps/web: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no progress line: {out}"));
    assert!(first < 6, "progress lines: {out}");
    assert!(
        out.contains("deployment.apps/web: 6 of 6 updated, 6 ready, 6 available"),
        "{out}"
    );
    assert!(out.contains("successfully rolled out"), "{out}");
    assert_bounds(&samples, 6, 1, 1);
    c.wait_for("6 of the new revision", T, || words_running(&c, "two", 6))
        .await
        .expect("rolled out");

    let history = ok(&c.ctl().run(&["rollout", "history", "deployment", "web"]));
    let rows: Vec<&str> = history.lines().skip(2).collect();
    assert_eq!(rows.len(), 2, "{history}");
    assert!(
        rows[0].starts_with("1 ") && rows[0].ends_with("first"),
        "{history}"
    );
    assert!(
        rows[1].starts_with("2 ") && rows[1].ends_with("second"),
        "{history}"
    );

    let out = ok(&c.ctl().run(&["rollout", "undo", "deployment", "web"]));
    assert!(out.contains("rolled back (now revision 3)"), "{out}");
    let out = ok(&c
        .ctl()
        .run(&["rollout", "status", "deployment", "web", "--timeout", "90s"]));
    assert!(out.contains("successfully rolled out"), "{out}");
    c.wait_for("6 of the old template again", T, || {
        words_running(&c, "one", 6)
    })
    .await
    .expect("undone");
    let history = ok(&c.ctl().run(&["rollout", "history", "deployment", "web"]));
    let numbers: Vec<&str> = history
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        numbers,
        ["2", "3"],
        "the undone-to template moved to revision 3: {history}"
    );
    let e = err(&c
        .ctl()
        .run(&["rollout", "undo", "deployment", "web", "--to-revision", "9"]));
    assert!(e.contains("has no revision 9"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_that_never_becomes_ready_fails_at_its_deadline_and_rolls_back() {
    let c = Cluster::with_agents(1, "process", &["n1", "n2", "n3"])
        .await
        .expect("cluster");
    let v1 = Spec {
        replicas: 4,
        surge: 1,
        unavailable: 0,
        deadline_seconds: 10,
        auto_rollback: true,
        ..Spec::default()
    };
    ok(&apply(&c, &v1, &["--wait", "--timeout", "90s"]));

    let sampler = Sampler::start(c.addresses(), c.security.clone());
    let broken = Spec {
        word: "broken",
        never_ready: true,
        ..v1
    };
    let e = err(&apply(&c, &broken, &["--wait", "--timeout", "90s"]));
    let samples = sampler.finish().await;
    eprintln!("apply --wait of a never-ready revision:\n{e}");
    assert!(e.contains("rolled back from revision 2"), "{e}");
    assert!(e.contains("ProgressDeadlineExceeded"), "{e}");
    assert_bounds(&samples, 4, 1, 0);
    c.wait_for("back on the first template", T, || {
        words_running(&c, "one", 4)
    })
    .await
    .expect("rolled back");
    let listed = ok(&c.ctl().run(&["get", "deployments"]));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("web ") && l.contains(" 4/4 ")),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_continues_a_rollout_within_the_bounds() {
    let mut c = Cluster::with_agents(3, "process", &["n1", "n2", "n3"])
        .await
        .expect("cluster");
    let v1 = Spec::default();
    ok(&apply(&c, &v1, &["--wait", "--timeout", "90s"]));
    let sampler = Sampler::start(c.addresses(), c.security.clone());
    let v2 = Spec {
        word: "two",
        ..Spec::default()
    };
    ok(&apply(&c, &v2, &[]));
    // Kill the leader once old and new replicas run side by side.
    c.wait_for("a rollout in progress", T, || async {
        let s = c.running_replicas("web", 7).await;
        match s {
            Ok(list) if list.iter().any(|r| r.revision != list[0].revision) => Ok(()),
            Ok(_) => Err("one revision".into()),
            Err(e) => Err(e),
        }
    })
    .await
    .expect("mid-rollout");
    let leader = c.wait_for_leader(T).await.expect("leader");
    c.kill(leader);
    let survivor = (0..3).find(|i| *i != leader).expect("another controller");
    let out = ok(&c.ctl_at(survivor).run(&[
        "rollout",
        "status",
        "deployment",
        "web",
        "--timeout",
        "90s",
    ]));
    assert!(out.contains("successfully rolled out"), "{out}");
    let samples = sampler.finish().await;
    assert_bounds(&samples, 6, 1, 1);
    c.wait_for("6 of the new revision", T, || words_running(&c, "two", 6))
        .await
        .expect("rolled out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_shows_the_change_and_a_server_dry_run_stores_nothing() {
    let c = Cluster::start(1).await.expect("cluster");
    let v1 = Spec::default();
    let v2 = Spec {
        word: "two",
        ..Spec::default()
    };
    let diff = |spec: &Spec<'_>| {
        c.ctl()
            .run_with_stdin(&["diff", "-f", "-"], Some(manifest(spec).as_bytes()))
    };
    let new = diff(&v1);
    assert_eq!(
        new.status.code(),
        Some(1),
        "a new deployment is a difference"
    );
    assert!(String::from_utf8_lossy(&new.stdout).contains("+++ merged/default/web"));
    ok(&apply(&c, &v1, &[]));
    let same = diff(&v1);
    assert_eq!(same.status.code(), Some(0), "{same:?}");
    assert!(same.stdout.is_empty());

    let changed = diff(&v2);
    assert_eq!(changed.status.code(), Some(1));
    let text = String::from_utf8_lossy(&changed.stdout);
    assert!(text.contains("--- live/default/web"), "{text}");
    assert!(
        text.contains("-        - while true; do echo one; sleep 1; done"),
        "{text}"
    );
    assert!(
        text.contains("+        - while true; do echo two; sleep 1; done"),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with(['+', '-'])).count(),
        4,
        "{text}"
    );

    let out = ok(&apply(&c, &v2, &["--dry-run=server"]));
    assert!(out.contains("configured (server dry run)"), "{out}");
    assert_eq!(
        diff(&v2).status.code(),
        Some(1),
        "the dry run stored nothing"
    );
    let history = ok(&c.ctl().run(&["rollout", "history", "deployment", "web"]));
    assert_eq!(history.lines().count(), 3, "one revision: {history}");
}

/// A rollout that moves the host port (8080 → 9090) with `maxUnavailable: 0`:
/// the surge replica needs 9090 on a host whose old replica still holds only
/// 8080. Booking old replicas with the new template's ports made every host
/// look taken, and the rollout deadlocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_changes_the_host_port_books_old_replicas_with_their_own_port() {
    let c = Cluster::with_agents(1, "process", &["n1", "n2"])
        .await
        .expect("cluster");
    let web = |port: u16| {
        format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: main
        image: drover/busybox:1
        command: ["sh", "-c", "while true; do sleep 1; done"]
        ports:
        - containerPort: {port}
          hostPort: {port}
"#
        )
    };
    for port in [8080, 9090] {
        let out = c.ctl().run_with_stdin(
            &["apply", "-f", "-", "--wait", "--timeout", "60s"],
            Some(web(port).as_bytes()),
        );
        assert!(
            out.status.success(),
            "the rollout to host port {port} must finish: {}{}",
            String::from_utf8_lossy(&out.stdout),
            err(&out)
        );
    }
    let replicas = ok(&c.ctl().run(&["get", "replicas", "-o", "wide"]));
    assert_eq!(
        replicas.lines().filter(|l| l.contains("Running")).count(),
        2,
        "{replicas}"
    );
}

/// Recreate with a 30 s grace period and a container that takes 4 s to stop
/// while it keeps its host port (really bound: the process runtime shares
/// this machine's network, hence one node): the new revision starts only once
/// the old replica is gone from its host, and never finds the port taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_starts_nothing_new_until_terminating_replicas_are_gone() {
    let c = Cluster::with_agents(1, "process", &["n1"])
        .await
        .expect("cluster");
    let slow = |version: &str| {
        format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: slow
spec:
  replicas: 1
  strategy:
    type: Recreate
  selector:
    matchLabels:
      app: slow
  template:
    metadata:
      labels:
        app: slow
    spec:
      terminationGracePeriodSeconds: 30
      containers:
      - name: main
        image: drover/busybox:1
        env:
        - name: VERSION
          value: "{version}"
        command:
        - sh
        - -c
        - |
          (trap '' TERM; exec busybox httpd -f -p 127.0.0.1:8080) &
          p=$!
          trap 'sleep 4; kill -9 $p; exit 0' TERM
          wait $p; wait $p
        ports:
        - containerPort: 8080
          hostPort: 8080
"#
        )
    };
    let out = c.ctl().run_with_stdin(
        &["apply", "-f", "-", "--wait", "--timeout", "60s"],
        Some(slow("1").as_bytes()),
    );
    assert!(out.status.success(), "{}", err(&out));
    let old: Vec<String> = c
        .running_replicas("slow", 1)
        .await
        .expect("running")
        .into_iter()
        .map(|r| r.name)
        .collect();

    let out = c
        .ctl()
        .run_with_stdin(&["apply", "-f", "-"], Some(slow("2").as_bytes()));
    assert!(out.status.success(), "{}", err(&out));

    // Sample what the cluster says until the new revision runs: an old
    // replica is listed until its agent reports it gone from the host, so a
    // sample with an old replica and a Running new one is two revisions at once.
    let mut client = c.client(0).await.expect("client");
    let saw_terminating = Arc::new(AtomicBool::new(false));
    let new = c
        .wait_for("the new revision running", Duration::from_secs(90), || {
            let mut client = client.clone();
            let old = old.clone();
            let saw = saw_terminating.clone();
            async move {
                let list = client
                    .list_replicas(pb::ListReplicasRequest {
                        namespace: "default".into(),
                        deployment: "slow".into(),
                        read: None,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.message().to_string())?
                    .into_inner()
                    .replicas;
                let state = |r: &pb::Replica| r.status.clone().unwrap_or_default().state();
                let olds: Vec<&pb::Replica> =
                    list.iter().filter(|r| old.contains(&r.name)).collect();
                let running_new: Vec<&pb::Replica> = list
                    .iter()
                    .filter(|r| !old.contains(&r.name) && state(r) == pb::ReplicaState::Running)
                    .collect();
                if olds
                    .iter()
                    .any(|r| state(r) == pb::ReplicaState::Terminating)
                {
                    saw.store(true, Ordering::Relaxed);
                }
                assert!(
                    olds.is_empty() || running_new.is_empty(),
                    "two revisions at once: {list:?}"
                );
                if olds.is_empty() && running_new.len() == 1 {
                    Ok(running_new.into_iter().cloned().collect::<Vec<_>>())
                } else {
                    Err(format!("{list:?}"))
                }
            }
        })
        .await
        .expect("rollout");
    assert!(
        saw_terminating.load(Ordering::Relaxed),
        "old replicas were listed as Terminating while they stopped"
    );
    for r in &new {
        let s = r.status.clone().unwrap_or_default();
        assert_eq!(s.restarts, 0, "{} never failed to start: {s:?}", r.name);
    }
    let events = client
        .list_events(pb::ListEventsRequest {
            namespace: "default".into(),
            ..Default::default()
        })
        .await
        .expect("events")
        .into_inner()
        .events;
    let at = |reason: &str, names: &[String]| -> Vec<i64> {
        events
            .iter()
            .filter(|e| e.reason == reason && names.contains(&e.name))
            .map(|e| e.time_unix_ms)
            .collect()
    };
    let new_names: Vec<String> = new.iter().map(|r| r.name.clone()).collect();
    let stopped = at("Stopped", &old);
    assert_eq!(
        stopped.len(),
        1,
        "the old replica reported gone: {events:?}"
    );
    let last_stop = stopped.into_iter().max().unwrap_or_default();
    let first_start = at("Scheduled", &new_names)
        .into_iter()
        .min()
        .unwrap_or_default();
    assert!(
        first_start >= last_stop,
        "new replicas were placed only after the old ones were gone: {events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e.reason == "Exited" || e.message.contains("PortInUse")),
        "no replica hit a taken port: {events:?}"
    );
}
