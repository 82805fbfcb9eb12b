//! CPU and memory in use, for `droverctl top`: read every `--usage-interval`,
//! turned into rates, sent to the leader with the session's status.
//!
//! ```text
//!   every interval:  reading = { host: /proc/stat + /proc/meminfo,
//!                                replicas: Runtime::usage() }   (CPU time so far, memory now)
//!                    usage   = rates(previous reading, reading)  (pure)
//!                    ──▶ watch channel ──▶ session: StatusReport{usage} ──▶ leader
//!                    ──▶ metrics (drover_agent_*_cpu_cores, *_memory_bytes)
//! ```
//!
//! CPU is a counter (nanoseconds used so far), so a rate needs two readings:
//! a replica shows up from its second sample on, as with metrics-server. A
//! counter that went backwards (the container was replaced between two
//! readings) counts as a new replica.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_proto::pb;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::runtime::{Consumed, Runtime};

/// One reading: counters at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub at: Instant,
    pub host: Consumed,
    pub replicas: BTreeMap<String, Consumed>,
}

/// Rates between two readings. Pure.
pub fn rates(previous: &Reading, now: &Reading) -> pb::Usage {
    let window = now.at.saturating_duration_since(previous.at);
    let rate = |before: &Consumed, after: &Consumed| -> Option<pb::ResourceUsage> {
        let used = after.cpu_ns.checked_sub(before.cpu_ns)?;
        Some(pb::ResourceUsage {
            cpu_millis: millicores(used, window),
            memory_bytes: after.memory_bytes,
        })
    };
    pb::Usage {
        node: rate(&previous.host, &now.host),
        replicas: now
            .replicas
            .iter()
            .filter_map(|(replica, after)| {
                let usage = rate(previous.replicas.get(replica)?, after)?;
                Some(pb::ReplicaUsage {
                    replica: replica.clone(),
                    usage: Some(usage),
                })
            })
            .collect(),
        window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
    }
}

/// CPU nanoseconds used over `window`, in thousandths of a core.
fn millicores(used_ns: u64, window: Duration) -> u64 {
    let window_ns = window.as_nanos();
    if window_ns == 0 {
        return 0;
    }
    u64::try_from(u128::from(used_ns) * 1000 / window_ns).unwrap_or(u64::MAX)
}

/// Sample every `every` until `shutdown`, publishing each usage on `tx`.
pub async fn run<R: Runtime>(
    runtime: Arc<R>,
    every: Duration,
    tx: watch::Sender<Option<pb::Usage>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous: Option<Reading> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let replicas = match runtime.usage().await {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "could not read the replicas' usage");
                continue;
            }
        };
        let host = match tokio::task::spawn_blocking(host_consumed).await {
            Ok(Some(h)) => h,
            _ => Consumed::default(),
        };
        let reading = Reading {
            at: Instant::now(),
            host,
            replicas,
        };
        if let Some(previous) = &previous {
            let usage = rates(previous, &reading);
            crate::metrics::get().usage(&usage);
            tx.send_replace(Some(usage));
        }
        previous = Some(reading);
    }
}

/// The host's CPU time so far (every CPU's non-idle time) and memory in use
/// (MemTotal − MemAvailable), from /proc.
pub fn host_consumed() -> Option<Consumed> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    Some(Consumed {
        cpu_ns: ticks_to_ns(host_busy_ticks(&stat)?),
        memory_bytes: host_memory_in_use(&meminfo)?,
    })
}

/// Non-idle ticks of the `cpu` line of /proc/stat (user, nice, system, irq,
/// softirq, steal; not idle or iowait; guest time is inside user already).
pub fn host_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    Some(at(0) + at(1) + at(2) + at(5) + at(6) + at(7))
}

/// MemTotal − MemAvailable from /proc/meminfo, in bytes.
pub fn host_memory_in_use(meminfo: &str) -> Option<u64> {
    let kib = |key: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some(kib("MemTotal:")?.saturating_sub(kib("MemAvailable:")?) * 1024)
}

/// Clock ticks (USER_HZ) to nanoseconds.
pub fn ticks_to_ns(ticks: u64) -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0).unwrap_or(100);
    ticks.saturating_mul(1_000_000_000 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at: Instant, host_ns: u64, replicas: &[(&str, u64)]) -> Reading {
        Reading {
            at,
            host: Consumed {
                cpu_ns: host_ns,
                memory_bytes: 7,
            },
            replicas: replicas
                .iter()
                .map(|(r, ns)| {
                    (
                        r.to_string(),
                        Consumed {
                            cpu_ns: *ns,
                            memory_bytes: 1 << 20,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn one_busy_core_over_the_window_is_a_thousand_millicores() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let usage = rates(
            &reading(t0, 0, &[("default.a", 1_000), ("default.old", 5)]),
            &reading(
                t1,
                3_000_000_000,
                &[("default.a", 2_000_001_000), ("default.new", 9)],
            ),
        );
        assert_eq!(usage.node.map(|n| n.cpu_millis), Some(1500));
        assert_eq!(usage.window_ms, 2000);
        let rows: Vec<(String, u64, u64)> = usage
            .replicas
            .iter()
            .map(|r| {
                let u = r.usage.unwrap_or_default();
                (r.replica.clone(), u.cpu_millis, u.memory_bytes)
            })
            .collect();
        // default.new has one reading only; default.old is gone.
        assert_eq!(rows, vec![("default.a".into(), 1000, 1 << 20)]);
    }

    #[test]
    fn a_counter_that_went_backwards_is_skipped_once() {
        let t0 = Instant::now();
        let usage = rates(
            &reading(t0, 10, &[("default.a", 5_000_000_000)]),
            &reading(t0 + Duration::from_secs(1), 5, &[("default.a", 1_000)]),
        );
        assert!(usage.replicas.is_empty());
        assert_eq!(usage.node, None);
    }

    #[test]
    fn proc_files_are_read_as_the_kernel_writes_them() {
        let stat = "cpu  100 5 50 9000 40 1 2 3 0 0\ncpu0 50 2 25 4500 20 0 1 1 0 0\nintr 1 2\n";
        assert_eq!(host_busy_ticks(stat), Some(100 + 5 + 50 + 1 + 2 + 3));
        let meminfo =
            "MemTotal:        8000 kB\nMemFree:         1000 kB\nMemAvailable:    3000 kB\n";
        assert_eq!(host_memory_in_use(meminfo), Some(5000 * 1024));
        assert_eq!(host_busy_ticks("intr 1\n"), None);
        assert!(host_consumed().is_some(), "this machine's /proc reads");
    }
}
