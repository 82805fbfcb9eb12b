//! The process runtime's side of debugging sessions, with real processes:
//! exec on pipes and on a pseudo-terminal (with a resize), the replica's
//! process group, and a restart's previous run kept for `logs --previous`.

mod common;

use std::time::Duration;

use common::{collect_logs, shell};
use drover_agent::runtime::{
    ExecInput, ExecSession, ExecSpec, LogOptions, ProcessRuntime, Runtime, WindowSize,
};
use drover_agent::AgentError;

const T: Duration = Duration::from_secs(20);

/// Everything the session writes until its output ends, then its exit code.
async fn finish(mut session: ExecSession) -> (String, i64) {
    let mut out = Vec::new();
    while let Some(chunk) = tokio::time::timeout(T, session.output.recv())
        .await
        .expect("output within the limit")
    {
        out.extend(chunk.data);
    }
    let code = tokio::time::timeout(T, session.exit)
        .await
        .expect("exit within the limit")
        .expect("exit code");
    (String::from_utf8_lossy(&out).into_owned(), code)
}

fn spec(command: &[&str], stdin: bool, tty: Option<WindowSize>) -> ExecSpec {
    ExecSpec {
        command: command.iter().map(|s| s.to_string()).collect(),
        stdin,
        tty,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_pipes_stdin_through_and_reports_the_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = ProcessRuntime::open(dir.path(), "n1").expect("open");
    let o = rt
        .start(&shell("box-r-0", "exec sleep 30"), 0)
        .await
        .expect("start");
    let session = rt
        .exec_session(
            "box-r-0",
            spec(
                &["sh", "-c", "tr a-z A-Z; echo \"in $PWD\"; exit 4"],
                true,
                None,
            ),
        )
        .await
        .expect("exec");
    session
        .input
        .send(ExecInput::Stdin(b"shout\n".to_vec()))
        .await
        .expect("stdin");
    session
        .input
        .send(ExecInput::CloseStdin)
        .await
        .expect("close");
    let (out, code) = finish(session).await;
    let work = dir.path().join("process/work/box-r-0");
    assert_eq!(out, format!("SHOUT\nin {}\n", work.display()));
    assert_eq!(code, 4);
    let missing = rt
        .exec_session("box-r-0", spec(&["no-such-program-x"], false, None))
        .await
        .err()
        .expect("refused");
    assert!(
        missing.to_string().contains("no-such-program-x"),
        "{missing}"
    );
    rt.remove(&o.container_id).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_on_a_terminal_sees_its_size_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = ProcessRuntime::open(dir.path(), "n1").expect("open");
    let o = rt
        .start(&shell("box-r-0", "exec sleep 30"), 0)
        .await
        .expect("start");
    let script = "stty size; read line; stty size; test -t 0 && echo on-a-terminal";
    let size = WindowSize { cols: 91, rows: 33 };
    let mut session = rt
        .exec_session("box-r-0", spec(&["sh", "-c", script], true, Some(size)))
        .await
        .expect("exec");
    // The size it started with, before anything changes it.
    let mut first = Vec::new();
    while !String::from_utf8_lossy(&first).contains('\n') {
        let chunk = tokio::time::timeout(T, session.output.recv())
            .await
            .expect("output within the limit")
            .expect("the first size");
        first.extend(chunk.data);
    }
    assert_eq!(String::from_utf8_lossy(&first).trim_end(), "33 91");
    let input = session.input.clone();
    // The resize goes first: the shell reads the size again only after the line.
    input
        .send(ExecInput::Resize(WindowSize {
            cols: 132,
            rows: 50,
        }))
        .await
        .expect("resize");
    input
        .send(ExecInput::Stdin(b"go\n".to_vec()))
        .await
        .expect("line");
    let (out, code) = finish(session).await;
    let lines: Vec<&str> = out.lines().map(str::trim_end).collect();
    assert_eq!(lines, ["go", "50 132", "on-a-terminal"], "{out:?}");
    assert_eq!(code, 0);
    rt.remove(&o.container_id).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_replica_stops_its_exec_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = ProcessRuntime::open(dir.path(), "n1").expect("open");
    let o = rt
        .start(&shell("box-r-0", "exec sleep 30"), 0)
        .await
        .expect("start");
    let session = rt
        .exec_session("box-r-0", spec(&["sleep", "300"], false, None))
        .await
        .expect("exec");
    rt.stop(&o.container_id, Duration::from_secs(5))
        .await
        .expect("stop");
    // SIGTERM reached the session too: it is in the replica's process group.
    let (_, code) = finish(session).await;
    assert_eq!(code, 128 + 15);
    let refused = rt
        .exec_session("box-r-0", spec(&["true"], false, None))
        .await
        .err()
        .expect("a stopped replica runs no exec");
    assert!(matches!(refused, AgentError::Unsupported(_)), "{refused}");
    rt.remove(&o.container_id).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_run_is_the_previous_log_until_forgotten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = ProcessRuntime::open(dir.path(), "n1").expect("open");
    let previous = LogOptions {
        previous: true,
        ..Default::default()
    };
    assert!(matches!(
        rt.logs("box-r-0", previous).await.err(),
        Some(AgentError::NoPreviousRun(_))
    ));
    let first = rt
        .start(
            &shell("box-r-0", "echo first run; echo its error >&2; exit 2"),
            0,
        )
        .await
        .expect("start");
    common::eventually("the first run's exit", T, || async {
        let listed = rt.list().await.ok()?;
        listed.iter().all(|o| !o.is_running()).then_some(())
    })
    .await;
    rt.keep_previous("box-r-0", &first.container_id)
        .await
        .expect("keep");
    rt.remove(&first.container_id).await.expect("remove");
    let second = rt
        .start(&shell("box-r-0", "echo second run; exec sleep 30"), 1)
        .await
        .expect("restart");
    let (out, err) = collect_logs(rt.logs("box-r-0", previous).await.expect("previous")).await;
    assert_eq!((out.as_str(), err.as_str()), ("first run\n", "its error\n"));
    let timed = LogOptions {
        timestamps: true,
        ..previous
    };
    assert!(matches!(
        rt.logs("box-r-0", timed).await.err(),
        Some(AgentError::Unsupported(_))
    ));
    rt.forget_previous("box-r-0");
    assert!(matches!(
        rt.logs("box-r-0", previous).await.err(),
        Some(AgentError::NoPreviousRun(_))
    ));
    rt.remove(&second.container_id).await.expect("remove");
}
