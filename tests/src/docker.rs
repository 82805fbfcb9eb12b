//! Docker for the suites that run real containers: whether the engine is
//! there (and the workload image built), unique node names, and cleanup of
//! every container a test's nodes made.
//!
//! The Docker suites are gated on a Docker socket: skipped (with a note) when
//! there is none, unless `DROVER_REQUIRE_DOCKER=1`, which CI sets so they
//! cannot silently skip.

use std::path::Path;
use std::process::Command;

use crate::cluster::containers_of;

/// Whether `DROVER_REQUIRE_DOCKER=1` makes a missing Docker a failure.
pub fn required() -> bool {
    std::env::var("DROVER_REQUIRE_DOCKER").as_deref() == Ok("1")
}

/// True when the engine answers, after building `drover/busybox:1` if it is
/// missing; false (after printing why) when Docker is absent and not required.
pub fn available() -> bool {
    let present = Path::new("/var/run/docker.sock").exists()
        && Command::new("docker")
            .arg("info")
            .output()
            .is_ok_and(|o| o.status.success());
    if !present {
        assert!(
            !required(),
            "DROVER_REQUIRE_DOCKER=1 but the Docker engine is not reachable"
        );
        eprintln!(
            "skipping: no Docker engine (set DROVER_REQUIRE_DOCKER=1 to make this a failure)"
        );
        return false;
    }
    let built = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/images/build.sh"
    ))
    .output()
    .expect("run deploy/images/build.sh");
    assert!(
        built.status.success(),
        "building drover/busybox:1 failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    true
}

/// A name no other test (or earlier run) uses: the Docker engine, and with
/// it every container name and node label, is shared by all tests.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{:05x}{}",
        nanos & 0xfffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The containers of the given nodes; all of them are removed when dropped,
/// even when the test fails.
pub struct Containers(pub Vec<String>);

impl Containers {
    /// Ids of the nodes' containers, running or not.
    pub fn ids(&self) -> Vec<String> {
        self.0.iter().flat_map(|n| containers_of(n, true)).collect()
    }

    /// Ids of the nodes' running containers.
    pub fn running(&self) -> Vec<String> {
        self.0
            .iter()
            .flat_map(|n| containers_of(n, false))
            .collect()
    }

    /// The IP addresses of the running containers.
    pub fn addresses(&self) -> Vec<String> {
        let ids = self.running();
        if ids.is_empty() {
            return Vec::new();
        }
        let out = Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            ])
            .args(&ids)
            .output()
            .expect("docker inspect");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect()
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        let ids = self.ids();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .output();
        }
    }
}
