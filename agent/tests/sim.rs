//! The simulated runtime under the supervisor: many hollow replicas start at
//! once, a crash on cue is restarted with backoff, and an emptied set removes
//! everything.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::eventually;
use drover_agent::backoff::ANNOTATION_INITIAL;
use drover_agent::fixtures;
use drover_agent::runtime::{Runtime, SimRuntime};
use drover_agent::supervisor::{Supervisor, SupervisorConfig};
use drover_proto::pb::ReplicaState;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hollow_replicas_start_crash_restart_and_go() {
    let rt = Arc::new(SimRuntime::new());
    let stop = CancellationToken::new();
    let (sup, task) = Supervisor::start(rt.clone(), SupervisorConfig::default(), stop.clone())
        .await
        .expect("supervisor");
    let set: Vec<_> = (0..200)
        .map(|i| {
            let mut a = fixtures::assignment(&format!("default.sim-r-{i}"));
            a.annotations
                .insert(ANNOTATION_INITIAL.into(), "100ms".into());
            fixtures::to_pb(&a)
        })
        .collect();
    sup.assign(set).await.expect("assign");
    let statuses = sup.statuses();
    eventually("200 running", Duration::from_secs(10), || {
        let n = statuses
            .borrow()
            .values()
            .filter(|s| s.state() == ReplicaState::Running)
            .count();
        async move { (n == 200).then_some(()) }
    })
    .await;

    assert!(rt.crash("default.sim-r-7", 137, true));
    let s = eventually("a restart", Duration::from_secs(10), || {
        let s = statuses.borrow().get("default.sim-r-7").cloned();
        async move { s.filter(|s| s.restarts == 1 && s.state() == ReplicaState::Running) }
    })
    .await;
    assert_eq!(s.last_exit_code, Some(137));
    assert_eq!(s.reason, "OOMKilled");

    sup.assign(vec![]).await.expect("assign");
    eventually("all gone", Duration::from_secs(10), || {
        let empty = statuses.borrow().is_empty();
        async move { empty.then_some(()) }
    })
    .await;
    assert!(rt.list().await.expect("list").is_empty());
    stop.cancel();
    task.await.expect("supervisor");
}
