//! Shared helpers for the agent's integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use drover_agent::assignment::Assignment;
use drover_agent::fixtures;
use futures_util::StreamExt;

/// Poll `check` every 20 ms until it returns Some, or panic after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An assignment running `sh -c SCRIPT`.
pub fn shell(replica: &str, script: &str) -> Assignment {
    fixtures::with_command(replica, &["sh", "-c", script])
}

/// Everything a log stream yields, as (stdout, stderr) text.
pub async fn collect_logs(mut stream: drover_agent::runtime::LogStream) -> (String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("log chunk");
        match chunk.source {
            drover_agent::runtime::LogSource::Stdout => out.extend(chunk.data),
            drover_agent::runtime::LogSource::Stderr => err.extend(chunk.data),
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

pub mod fake;

/// The next exit of `container_id` on the runtime's event stream, or panic
/// after `limit`.
pub async fn next_exit(
    events: &mut tokio::sync::broadcast::Receiver<drover_agent::runtime::RuntimeEvent>,
    container_id: &str,
    limit: Duration,
) -> drover_agent::runtime::Exit {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(drover_agent::runtime::RuntimeEvent::Exited {
                    container_id: id,
                    exit,
                    ..
                }) if id == container_id => return exit,
                Ok(_) => {}
                Err(e) => panic!("event stream: {e}"),
            }
        }
    };
    tokio::time::timeout(limit, wait)
        .await
        .expect("an exit event from the runtime")
}
