//! drover's test harness: real controller processes on loopback addresses,
//! killed and restarted for real, and droverctl run as a user would.
//!
//! ```text
//!  Cluster ──spawn──▶ drover-controller --id 1 --listen 127.0.0.1:P1 --data-dir tmp/c1 ...
//!          ──spawn──▶ drover-controller --id 2 --listen 127.0.0.2:P2 ...
//!          ──spawn──▶ drover-controller --id 3 --listen 127.0.0.3:P3 ...
//!     kill(i) = SIGKILL · stop(i) = SIGTERM · start(i) reuses the sled dir
//! ```
//!
//! Binaries are found beside the test executable (`target/<profile>/`), or in
//! `DROVER_BIN_DIR`. Logs go to each controller's file in the cluster's temp
//! dir and are printed when a test panics; `DROVER_KEEP_TEST_DIR=1` keeps the
//! whole dir (data and logs) for a post-mortem.
//!
//! **Crates it may depend on:** any drover crate — `drover-proto`,
//! `drover-pki` and `drover-agent` as libraries; the controller and droverctl
//! as the binaries it starts. No other crate depends on it.

pub mod cluster;
pub mod docker;
pub mod metrics;
pub mod scenarios;

pub use cluster::{bin, Cluster, Ctl};
