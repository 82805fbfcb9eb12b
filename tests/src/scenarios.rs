//! Scenarios the process and Docker suites both run: the same user-visible
//! behaviour, checked the same way, whatever runs the replicas.

use std::time::{Duration, Instant};

use crate::cluster::ok;
use crate::Cluster;

/// What a user saw of a crashing replica.
#[derive(Debug)]
pub struct CrashLoop {
    /// (restart count, when it was first seen), in order.
    pub restarts: Vec<(u32, Duration)>,
    /// CrashLoopBackOff was shown at least once.
    pub backoff_seen: bool,
    /// The last exit code `get replicas -o json` showed while backing off.
    pub exit_code_in_backoff: Option<i64>,
}

impl CrashLoop {
    /// Time between consecutive restarts.
    pub fn gaps(&self) -> Vec<Duration> {
        self.restarts.windows(2).map(|w| w[1].1 - w[0].1).collect()
    }

    /// Each wait clearly longer than the one before (1 s, 2 s, 4 s...).
    pub fn gaps_grow(&self) -> bool {
        self.gaps()
            .windows(2)
            .all(|g| g[1] > g[0] + Duration::from_millis(500))
    }
}

/// Apply the crasher example without its start-up sleep (it exits 1 at once,
/// backoff 1 s doubling), then watch `get replicas -o json` until `restarts`
/// restarts were seen or `timeout` passed.
pub async fn crash_loop(c: &Cluster, restarts: usize, timeout: Duration) -> CrashLoop {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/crasher.yaml"
    ))
    .expect("crasher example");
    let manifest = example.replace("sleep 3; ", "");
    let file = c.dir.path().join("crasher.yaml");
    std::fs::write(&file, manifest).expect("write");
    ok(&c.ctl().run(&["apply", "-f", &file.to_string_lossy()]));

    let start = Instant::now();
    let mut seen = CrashLoop {
        restarts: Vec::new(),
        backoff_seen: false,
        exit_code_in_backoff: None,
    };
    while seen.restarts.len() < restarts && start.elapsed() < timeout {
        let out = c.ctl().run(&["get", "replicas", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let item = &v["items"][0];
        let count = item["status"]["restartCount"].as_u64().unwrap_or(0) as u32;
        if item["status"]["state"]
            .as_str()
            .is_some_and(|s| s.contains("CrashLoopBackOff"))
        {
            seen.backoff_seen = true;
            seen.exit_code_in_backoff = item["status"]["lastExitCode"].as_i64();
        }
        if count > 0 && seen.restarts.last().is_none_or(|(r, _)| count > *r) {
            seen.restarts.push((count, start.elapsed()));
        }
        // Sampling, not waiting for a condition: the times are the result.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}
