//! Test fixtures: small valid objects, as the manifest parser would produce them,
//! and sled databases opened the way tests need them.

use std::collections::BTreeMap;

use drover_manifest::{
    Container, Deployment, DeploymentSpec, IntOrPercent, LabelSelector, ObjectMeta, PodSpec,
    PodTemplate, Strategy, TemplateMeta,
};

/// A minimal valid deployment, as the manifest parser would produce it.
pub fn deployment(name: &str, replicas: u32) -> Deployment {
    let labels: BTreeMap<String, String> = [("app".to_string(), name.to_string())].into();
    Deployment {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        },
        spec: DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: labels.clone(),
            },
            min_ready_seconds: 0,
            revision_history_limit: 10,
            progress_deadline_seconds: 600,
            strategy: Strategy::RollingUpdate {
                max_surge: IntOrPercent::Percent(25),
                max_unavailable: IntOrPercent::Percent(25),
            },
            template: PodTemplate {
                metadata: TemplateMeta {
                    labels,
                    ..Default::default()
                },
                spec: PodSpec {
                    containers: vec![Container {
                        name: "main".into(),
                        image: "drover/busybox:1".into(),
                        ..Default::default()
                    }],
                    restart_policy: "Always".into(),
                    termination_grace_period_seconds: 30,
                    ..Default::default()
                },
            },
        },
    }
}

/// Open (or reopen) a test's sled db at `path` with a cache of `cache_mb`.
/// A db just dropped in this process may still hold its file lock for a
/// moment, until sled's background flusher lets go of it: wait for the lock,
/// for up to 10 s, rather than fail.
pub fn open_test_db(path: &std::path::Path, cache_mb: u64) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(cache_mb << 20)
            .open()
        {
            Ok(db) => return db,
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("open sled at {}: {e}", path.display()),
        }
    }
}
