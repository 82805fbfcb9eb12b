//! The process runtime with real child processes: start, stop with a grace
//! period, exits, logs, exec, adoption by a new runtime instance, and the
//! supervisor restarting a crasher with backoff.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{collect_logs, eventually, next_exit, shell};
use drover_agent::backoff::{ANNOTATION_INITIAL, ANNOTATION_MAX};
use drover_agent::fixtures;
use drover_agent::runtime::{ContainerState, LogOptions, ProcessRuntime, Runtime};
use drover_agent::supervisor::{Supervisor, SupervisorConfig, SupervisorHandle};
use drover_agent::AgentError;
use drover_proto::pb::ReplicaState;
use tokio_util::sync::CancellationToken;

/// Removes every container of a runtime when dropped (kills leftovers of a
/// failed test).
struct Cleanup<'a>(&'a ProcessRuntime);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let rt = self.0;
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                for o in rt.list().await.unwrap_or_default() {
                    let _ = rt.remove(&o.container_id).await;
                }
            })
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_logs_and_stop_with_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = ProcessRuntime::open(dir.path(), "n1").expect("open");
    let _cleanup = Cleanup(&rt);
    let mut events = rt.events();

    let mut a = shell(
        "web-r-0",
        "echo \"hello $GREETING\"; pwd; echo oops >&2; exec sleep 30",
    );
    let c = &mut a.template_mut().spec.containers[0];
    c.env = vec![drover_manifest::EnvVar {
        name: "GREETING".into(),
        value: "from drover".into(),
        value_from: None,
    }];
    c.working_dir = Some("/tmp".into());

    let o = rt.start(&a, 2).await.expect("start");
    assert_eq!(o.state, ContainerState::Running);
    assert_eq!(o.restarts, 2);
    let listed = rt.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].container_id, o.container_id);
    assert_eq!(listed[0].replica, "web-r-0");
    assert_eq!(listed[0].revision, "rev1");

    let (out, err) = eventually("output", Duration::from_secs(5), || async {
        let logs = rt.logs("web-r-0", LogOptions::default()).await.ok()?;
        let (out, err) = collect_logs(logs).await;
        (out.contains("/tmp") && err.contains("oops")).then_some((out, err))
    })
    .await;
    assert_eq!(out, "hello from drover\n/tmp\n");
    assert_eq!(err, "oops\n");

    let started = Instant::now();
    rt.stop(&o.container_id, Duration::from_secs(10))
        .await
        .expect("stop");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "SIGTERM should end sleep at once"
    );
    let exit = next_exit(&mut events, &o.container_id, Duration::from_secs(10)).await;
    assert_eq!(exit.code, 128 + 15, "killed by SIGTERM");
    assert_eq!(exit.reason(), "Error");
    assert!(matches!(
        rt.list().await.expect("list")[0].state,
        ContainerState::Exited(_)
    ));

    rt.remove(&o.container_id).await.expect("remove");
    assert!(rt.list().await.expect("list").is_empty());
    assert!(matches!(
        rt.logs("web-r-0", LogOptions::default()).await,
        Err(AgentError::UnknownReplica(_))
    ));
    let logs_left = std::fs::read_dir(rt.dir().join("logs"))
        .expect("logs dir")
        .count();
    assert_eq!(logs_left, 0, "remove deletes the log files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_ignoring_sigterm_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = ProcessRuntime::open(dir.path(), "n1").expect("open");
    let _cleanup = Cleanup(&rt);
    let mut events = rt.events();
    // The sleep child inherits the ignored SIGTERM: only SIGKILL to the
    // whole group ends the tree.
    let o = rt
        .start(
            &shell("stubborn-r-0", "trap '' TERM; sleep 30; echo survived"),
            0,
        )
        .await
        .expect("start");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    rt.stop(&o.container_id, Duration::from_millis(700))
        .await
        .expect("stop");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(650),
        "waited the grace period: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "then killed: {took:?}");
    let exit = next_exit(&mut events, &o.container_id, Duration::from_secs(10)).await;
    assert_eq!(exit.code, 128 + 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_are_reported_with_their_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = ProcessRuntime::open(dir.path(), "n1").expect("open");
    let _cleanup = Cleanup(&rt);
    let mut events = rt.events();
    let o = rt
        .start(&shell("crasher-r-0", "echo bye; exit 3"), 0)
        .await
        .expect("start");
    let exit = next_exit(&mut events, &o.container_id, Duration::from_secs(10)).await;
    assert_eq!(exit.code, 3);
    let o = rt
        .start(&shell("done-r-0", "true"), 0)
        .await
        .expect("start");
    let exit = next_exit(&mut events, &o.container_id, Duration::from_secs(10)).await;
    assert_eq!((exit.code, exit.reason()), (0, "Completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followed_logs_stream_until_the_process_ends_and_tail_keeps_the_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = ProcessRuntime::open(dir.path(), "n1").expect("open");
    let _cleanup = Cleanup(&rt);
    rt.start(
        &shell(
            "ticker-r-0",
            "for i in 1 2 3 4; do echo line$i; sleep 0.2; done",
        ),
        0,
    )
    .await
    .expect("start");
    let stream = rt
        .logs(
            "ticker-r-0",
            LogOptions {
                follow: true,
                tail: None,
                ..Default::default()
            },
        )
        .await
        .expect("logs");
    let (out, _) = tokio::time::timeout(Duration::from_secs(10), collect_logs(stream))
        .await
        .expect("follow ends when the process exits");
    assert_eq!(out, "line1\nline2\nline3\nline4\n");

    let stream = rt
        .logs(
            "ticker-r-0",
            LogOptions {
                follow: false,
                tail: Some(2),
                ..Default::default()
            },
        )
        .await
        .expect("logs");
    assert_eq!(collect_logs(stream).await.0, "line3\nline4\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_in_the_replicas_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = ProcessRuntime::open(dir.path(), "n1").expect("open");
    let _cleanup = Cleanup(&rt);
    let mut a = shell("web-r-0", "exec sleep 30");
    a.template_mut().spec.containers[0].env = vec![drover_manifest::EnvVar {
        name: "PROBE".into(),
        value: "ok".into(),
        value_from: None,
    }];
    rt.start(&a, 0).await.expect("start");
    let cmd = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
    let out = rt
        .exec("web-r-0", &cmd("echo $PROBE"), Duration::from_secs(5))
        .await
        .expect("exec");
    assert_eq!((out.exit_code, out.output.as_slice()), (0, &b"ok\n"[..]));
    let out = rt
        .exec("web-r-0", &cmd("exit 4"), Duration::from_secs(5))
        .await
        .expect("exec");
    assert_eq!(out.exit_code, 4);
    let slow = rt
        .exec("web-r-0", &cmd("sleep 5"), Duration::from_millis(200))
        .await;
    assert!(matches!(slow, Err(AgentError::Timeout { .. })), "{slow:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_runtime_adopts_running_processes_with_the_same_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = ProcessRuntime::open(dir.path(), "n1").expect("open");
    let o = first
        .start(&shell("web-r-0", "exec sleep 30"), 1)
        .await
        .expect("start");
    let gone = first
        .start(&shell("short-r-0", "exit 0"), 0)
        .await
        .expect("start");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // "Restart" the agent: the old runtime goes away, its child keeps running.
    drop(first);

    let second = ProcessRuntime::open(dir.path(), "n1").expect("reopen");
    let _cleanup = Cleanup(&second);
    let listed = second.list().await.expect("list");
    let web = listed
        .iter()
        .find(|c| c.replica == "web-r-0")
        .expect("web adopted");
    assert_eq!(web.container_id, o.container_id);
    assert_eq!(web.state, ContainerState::Running);
    assert_eq!(web.restarts, 1);
    let short = listed
        .iter()
        .find(|c| c.replica == "short-r-0")
        .expect("short listed");
    assert_eq!(short.container_id, gone.container_id);
    assert!(matches!(short.state, ContainerState::Exited(_)));

    // The adopted process is still under the agent's control.
    let mut events = second.events();
    second
        .stop(&o.container_id, Duration::from_secs(5))
        .await
        .expect("stop adopted");
    let exit = next_exit(&mut events, &o.container_id, Duration::from_secs(10)).await;
    assert_eq!(exit.code, -1, "an adopted process's exit code is unknown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_fail_with_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = ProcessRuntime::open(dir.path(), "n1").expect("open");
    let no_command = rt.start(&fixtures::assignment("web-r-0"), 0).await;
    assert!(
        matches!(&no_command, Err(AgentError::InvalidSpec(m)) if m.contains("command")),
        "{no_command:?}"
    );
    let missing = rt
        .start(&fixtures::with_command("web-r-1", &["/no/such/binary"]), 0)
        .await;
    assert!(
        matches!(missing, Err(AgentError::StartFailed(_))),
        "{missing:?}"
    );
    assert!(rt.list().await.expect("list").is_empty());
}

/// A process runtime in a fresh directory, and a supervisor over it.
async fn supervised() -> (
    tempfile::TempDir,
    Arc<ProcessRuntime>,
    CancellationToken,
    SupervisorHandle,
    tokio::task::JoinHandle<()>,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Arc::new(ProcessRuntime::open(dir.path(), "n1").expect("open"));
    let shutdown = CancellationToken::new();
    let (sup, task) = Supervisor::start(rt.clone(), SupervisorConfig::default(), shutdown.clone())
        .await
        .expect("supervisor");
    (dir, rt, shutdown, sup, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_restarts_a_crasher_with_backoff_and_counts_restarts() {
    let (_dir, rt, shutdown, sup, task) = supervised().await;
    let _cleanup = Cleanup(&rt);
    let mut crasher = shell("crasher-r-0", "echo crashing; exit 1");
    crasher.annotations = BTreeMap::from([
        (ANNOTATION_INITIAL.to_string(), "200ms".to_string()),
        (ANNOTATION_MAX.to_string(), "400ms".to_string()),
    ]);
    let steady = shell("steady-r-0", "exec sleep 30");
    sup.assign(vec![fixtures::to_pb(&crasher), fixtures::to_pb(&steady)])
        .await
        .expect("assign");

    let mut statuses = sup.statuses();
    let mut seen_backoff = false;
    let crash = eventually("three restarts", Duration::from_secs(15), || {
        let map = statuses.borrow_and_update().clone();
        if let Some(s) = map.get("crasher-r-0") {
            if s.state() == ReplicaState::CrashLoopBackOff {
                seen_backoff = true;
                assert!(s.next_restart_unix_ms > 0, "{s:?}");
            }
        }
        async move {
            let s = map.get("crasher-r-0")?;
            (s.restarts >= 3).then(|| s.clone())
        }
    })
    .await;
    assert!(seen_backoff, "CrashLoopBackOff was reported while waiting");
    assert_eq!(crash.last_exit_code, Some(1));
    assert_eq!(crash.reason, "Error");
    let steady_status = statuses
        .borrow()
        .get("steady-r-0")
        .cloned()
        .expect("steady");
    assert_eq!(steady_status.state(), ReplicaState::Running);
    assert_eq!(steady_status.restarts, 0);

    // Unassign everything: both are stopped, removed and leave the map.
    sup.assign(vec![]).await.expect("assign");
    eventually("all gone", Duration::from_secs(10), || {
        let empty = statuses.borrow().is_empty();
        async move { empty.then_some(()) }
    })
    .await;
    assert!(rt.list().await.expect("list").is_empty());

    shutdown.cancel();
    task.await.expect("supervisor task");
}

/// Starts racing each other all succeed, and every started process is one
/// the runtime knows: concurrent writes of the state file once made a start
/// fail after its process was spawned, leaving an orphan beside the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_all_succeed_and_leave_no_orphan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Arc::new(ProcessRuntime::open(dir.path(), "n1").expect("open"));
    let _cleanup = Cleanup(&rt);
    let mut starts = tokio::task::JoinSet::new();
    for i in 0..16 {
        let rt = rt.clone();
        starts.spawn(async move {
            let a = shell(&format!("r{i}-r-0"), "exec sleep 30");
            rt.start(&a, 0).await
        });
    }
    let mut started = Vec::new();
    while let Some(joined) = starts.join_next().await {
        let o = joined.expect("task").expect("every start succeeds");
        started.push(o.container_id);
    }
    let mut listed: Vec<String> = rt
        .list()
        .await
        .expect("list")
        .into_iter()
        .filter(|o| o.is_running())
        .map(|o| o.container_id)
        .collect();
    started.sort();
    listed.sort();
    assert_eq!(listed, started, "exactly the started processes run");
    // The state file holds them all, as a restarted agent would read it.
    let reopened = ProcessRuntime::open(dir.path(), "n1").expect("reopen");
    assert_eq!(reopened.list().await.expect("list").len(), 16);
}

/// Regression (found by `droverctl lab chaos`, seed 5): a start whose state
/// file could not be written failed after its process was spawned, and
/// nobody waited for that process: its exit was never seen and the replica
/// stayed "Running" after it died (and a retry started it a second time).
/// The write fails here because a directory sits where its temp file goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_state_write_neither_fails_the_start_nor_loses_the_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = ProcessRuntime::open(dir.path(), "n1").expect("open");
    let _cleanup = Cleanup(&rt);
    let blocker = rt.dir().join("state.json.tmp");
    std::fs::create_dir_all(blocker.join("x")).expect("blocking the temp file");

    let o = rt
        .start(&shell("web-r-0", "exec sleep 30"), 0)
        .await
        .expect("the process runs, so the start succeeds");
    rt.stop(&o.container_id, Duration::from_secs(1))
        .await
        .expect("its exit is seen");
    let list = rt.list().await.expect("list");
    assert_eq!(list.len(), 1);
    assert!(
        matches!(list[0].state, ContainerState::Exited(_)),
        "{list:?}"
    );
    std::fs::remove_dir_all(&blocker).expect("unblocking");
}

/// A replica's HOSTNAME is its name, as a container's host name would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_sees_its_name_as_hostname() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = ProcessRuntime::open(dir.path(), "n1").expect("open");
    let _cleanup = Cleanup(&rt);
    let a = shell("default.web-r-0", "echo \"I am $HOSTNAME\"; exec sleep 30");
    rt.start(&a, 0).await.expect("start");
    let out = eventually("output", Duration::from_secs(5), || async {
        let logs = rt
            .logs("default.web-r-0", LogOptions::default())
            .await
            .ok()?;
        let (out, _) = collect_logs(logs).await;
        out.contains("I am").then_some(out)
    })
    .await;
    assert_eq!(out, "I am web-r-0\n");
}

/// Issue 12 item 11: a replica (and an exec in it) gets HOSTNAME, PATH and
/// its manifest's env, never the agent's own environment and its join token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_does_not_inherit_the_agents_environment() {
    // The agent's own environment, as `--join-token` from the environment would leave it.
    std::env::set_var("DROVER_JOIN_TOKEN", "drover-1-leaked-secret");
    std::env::set_var("AGENT_ONLY_MARKER", "agent-private");
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = ProcessRuntime::open(dir.path(), "n1").expect("open");
    let _cleanup = Cleanup(&rt);
    let mut a = shell("default.env-r-0", "env; echo END; exec sleep 30");
    a.template_mut().spec.containers[0].env = vec![drover_manifest::EnvVar {
        name: "GIVEN".into(),
        value: "by-the-manifest".into(),
        value_from: None,
    }];
    rt.start(&a, 0).await.expect("start");
    let out = eventually("output", Duration::from_secs(5), || async {
        let logs = rt
            .logs("default.env-r-0", LogOptions::default())
            .await
            .ok()?;
        let (out, _) = collect_logs(logs).await;
        out.contains("END").then_some(out)
    })
    .await;
    let exec = rt
        .exec(
            "default.env-r-0",
            &["env".to_string()],
            Duration::from_secs(5),
        )
        .await
        .expect("exec");
    let exec_out = String::from_utf8_lossy(&exec.output).into_owned();
    for text in [&out, &exec_out] {
        assert!(!text.contains("leaked-secret"), "{text}");
        assert!(!text.contains("agent-private"), "{text}");
        assert!(text.contains("GIVEN=by-the-manifest"), "{text}");
        assert!(text.contains("HOSTNAME=env-r-0"), "{text}");
        assert!(text.contains("PATH="), "{text}");
    }
}

/// Issue 12 item 12: the state file holds replicas' env values: owner-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_file_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = ProcessRuntime::open(dir.path(), "n1").expect("open");
    let _cleanup = Cleanup(&rt);
    rt.start(&shell("default.quiet-r-0", "exec sleep 30"), 0)
        .await
        .expect("start");
    let state = rt.dir().join("state.json");
    let mode = std::fs::metadata(&state)
        .expect("state.json")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "{}", state.display());
}

/// Issue 12 item 8: after a certificate change the logs service listens
/// again at once, even while a `logs -f` from a vanished client stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logs_service_rebinds_at_once_after_a_renewal() {
    use drover_proto::pb;
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Arc::new(ProcessRuntime::open(dir.path(), "n1").expect("open"));
    let _cleanup = Cleanup(&rt);
    rt.start(
        &shell(
            "default.talker-r-0",
            "while true; do echo tick; sleep 0.2; done",
        ),
        0,
    )
    .await
    .expect("start");
    let incoming =
        tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
    let address = format!("http://{}", incoming.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::watch::channel(drover_pki::Security::Insecure);
    let stop = CancellationToken::new();
    let server = tokio::spawn(drover_agent::server::serve(
        rt.clone(),
        drover_agent::debugging::Sessions::new(Default::default()),
        incoming,
        rx,
        stop.clone(),
    ));
    let request = |follow| pb::LogsRequest {
        replica: "default.talker-r-0".into(),
        follow,
        tail: 1,
        ..Default::default()
    };
    // A follower that never reads again (its client went away without closing).
    let mut follower = pb::agent_client::AgentClient::connect(address.clone())
        .await
        .expect("connect");
    let stream = follower.logs(request(true)).await.expect("follow");
    // The renewal.
    tx.send(drover_pki::Security::Insecure).expect("send");
    // Long enough for the old server to stop accepting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fresh = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(mut c) = pb::agent_client::AgentClient::connect(address.clone()).await {
                if let Ok(r) = c.logs(request(false)).await {
                    return r;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the service answers again while the old follower is open");
    drop(fresh);
    drop(stream);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the service stops")
        .expect("task")
        .expect("a clean stop");
}

/// Issue 12 item 5 (part): a whole log streams in bounded chunks, never as
/// one message the size of the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_log_streams_in_bounded_chunks() {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = ProcessRuntime::open(dir.path(), "n1").expect("open");
    let _cleanup = Cleanup(&rt);
    let o = rt
        .start(&shell("default.big-r-0", "exec sleep 30"), 0)
        .await
        .expect("start");
    let size = 20 * 1024 * 1024;
    let log = rt
        .dir()
        .join("logs")
        .join(format!("{}.stdout", o.container_id));
    std::fs::write(&log, vec![b'x'; size]).expect("a big log");
    let mut stream = rt
        .logs("default.big-r-0", LogOptions::default())
        .await
        .expect("logs");
    let (mut total, mut largest) = (0usize, 0usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        total += chunk.data.len();
        largest = largest.max(chunk.data.len());
    }
    assert_eq!(total, size);
    assert!(
        largest as u64 <= drover_agent::runtime::process::LOG_CHUNK_BYTES,
        "a chunk of {largest} bytes"
    );
}

/// Issue 12 item 5: a replica's log files are rotated at their size cap and
/// count (as Docker's json-file), and `logs`, `logs -f`, `--tail` and
/// `--previous` read across the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_rotate_at_their_size_cap_and_are_read_across_files() {
    use drover_agent::runtime::log_files::{rotated, LogLimits};
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = LogLimits::new(4096, 5).expect("limits");
    let rt = ProcessRuntime::open_with(dir.path(), "n1", limits).expect("open");
    let _cleanup = Cleanup(&rt);
    // 800 lines of 51 bytes (40 800 bytes, ten times a file), a burst of 20
    // every 50 ms: a follower polling every 200 ms stays within the files kept.
    let script = "i=1; while [ $i -le 800 ]; do printf 'line-%04d-%040d\\n' $i 0; \
                  if [ $((i % 20)) -eq 0 ]; then sleep 0.05; fi; i=$((i+1)); done";
    let o = rt
        .start(&shell("chatty-r-0", script), 0)
        .await
        .expect("start");
    let followed = rt
        .logs(
            "chatty-r-0",
            LogOptions {
                follow: true,
                ..Default::default()
            },
        )
        .await
        .expect("logs -f");
    let (out, _) = tokio::time::timeout(Duration::from_secs(30), collect_logs(followed))
        .await
        .expect("follow ends when the process exits");
    let all: String = (1..=800)
        .map(|i| format!("line-{i:04}-{:040}\n", 0))
        .collect();
    assert!(
        out == all,
        "a follower sees every line once, in order, across rotations ({} of {} bytes)",
        out.len(),
        all.len()
    );

    // On disk: at most 5 files per stream, none above 4 KiB.
    let log = rt
        .dir()
        .join("logs")
        .join(format!("{}.stdout", o.container_id));
    let files: Vec<_> = (0..6)
        .map(|k| rotated(&log, k))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(files.len(), 5, "{files:?}");
    assert!(!rotated(&log, 5).exists());
    for f in &files {
        assert!(std::fs::metadata(f).expect("stat").len() <= 4096, "{f:?}");
    }

    // logs: what rotation kept, oldest first, up to the last line.
    let (kept, _) = collect_logs(
        rt.logs("chatty-r-0", LogOptions::default())
            .await
            .expect("logs"),
    )
    .await;
    assert!(all.ends_with(&kept), "a suffix of the output");
    assert!(
        kept.len() > 4 * 4096 && kept.len() <= 5 * 4096,
        "{}",
        kept.len()
    );
    // --tail reads across files.
    let (tail, _) = collect_logs(
        rt.logs(
            "chatty-r-0",
            LogOptions {
                tail: Some(100),
                ..Default::default()
            },
        )
        .await
        .expect("tail"),
    )
    .await;
    assert_eq!(tail.lines().count(), 100);
    assert!(
        tail.starts_with("line-0701-") && all.ends_with(&tail),
        "{tail}"
    );
    // --previous keeps what the files held.
    rt.keep_previous("chatty-r-0", &o.container_id)
        .await
        .expect("keep");
    rt.remove(&o.container_id).await.expect("remove");
    assert!(!rotated(&log, 1).exists(), "removing takes every file");
    let (previous, _) = collect_logs(
        rt.logs(
            "chatty-r-0",
            LogOptions {
                previous: true,
                ..Default::default()
            },
        )
        .await
        .expect("previous"),
    )
    .await;
    assert_eq!(previous, kept);
}

/// A replica already stopping with its template's 60 s (unassigned, as a
/// rollout replaces it) is stopped again when the controller gives it a
/// shorter grace (`delete --grace-period=1`): gone in about a second, not
/// after the 60 s the first stop would wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_grace_reaches_a_stop_already_under_way() {
    let (dir, rt, shutdown, sup, task) = supervised().await;
    let _cleanup = Cleanup(&rt);
    // It notes each SIGTERM and goes on.
    let termed = dir.path().join("termed");
    let mut stubborn = shell(
        "stubborn-r-0",
        &format!(
            "trap 'touch {}' TERM; while true; do sleep 1; done",
            termed.display()
        ),
    );
    stubborn
        .template_mut()
        .spec
        .termination_grace_period_seconds = 60;
    sup.assign(vec![fixtures::to_pb(&stubborn)])
        .await
        .expect("assign");
    let mut statuses = sup.statuses();
    eventually("running", Duration::from_secs(10), || {
        let running = statuses
            .borrow_and_update()
            .get("stubborn-r-0")
            .is_some_and(|s| s.state() == ReplicaState::Running);
        async move { running.then_some(()) }
    })
    .await;

    // Unassigned: its stop begins, with 60 s.
    sup.change_set(drover_agent::supervisor::SetChange {
        removed: vec!["stubborn-r-0".into()],
        terminating: vec!["stubborn-r-0".into()],
        ..Default::default()
    })
    .await
    .expect("unassign");
    eventually("the 60 s stop's SIGTERM", Duration::from_secs(10), || {
        let seen = termed.exists();
        async move { seen.then_some(()) }
    })
    .await;
    assert_eq!(rt.list().await.expect("list").len(), 1, "still stopping");

    let hurried = Instant::now();
    sup.change_set(drover_agent::supervisor::SetChange {
        terminating: vec!["stubborn-r-0".into()],
        terminating_grace_seconds: std::collections::HashMap::from([(
            "stubborn-r-0".to_string(),
            1,
        )]),
        ..Default::default()
    })
    .await
    .expect("shorter grace");
    eventually("gone", Duration::from_secs(20), || {
        let rt = rt.clone();
        async move { rt.list().await.ok()?.is_empty().then_some(()) }
    })
    .await;
    assert!(
        hurried.elapsed() < Duration::from_secs(15),
        "the shorter grace was used: {:?}",
        hurried.elapsed()
    );

    shutdown.cancel();
    task.await.expect("supervisor task");
}
