//! How every benchmark measures: a polling clock, percentiles, durations
//! printed one way, and resident memory read from `/proc`.

use std::fmt;
use std::time::{Duration, Instant};

use tokio::time::{Interval, MissedTickBehavior};

/// A fixed-cadence poll with a deadline: `while poll.next().await { … }`.
/// A slow check delays the next tick instead of bunching ticks up, so the
/// polling load stays at most one check per period.
pub struct Poll {
    interval: Interval,
    deadline: Instant,
}

impl Poll {
    pub fn new(every: Duration, timeout: Duration) -> Poll {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Poll {
            interval,
            deadline: Instant::now() + timeout,
        }
    }

    /// Wait for the next tick (the first is immediate); false once the
    /// deadline has passed.
    pub async fn next(&mut self) -> bool {
        self.interval.tick().await;
        Instant::now() <= self.deadline
    }
}

/// Poll `check` every `every` until it returns `Ok`, or fail after `timeout`
/// with the last thing it reported.
pub async fn poll_until<T, F, Fut>(
    what: &str,
    every: Duration,
    timeout: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut poll = Poll::new(every, timeout);
    let mut last = String::from("never checked");
    while poll.next().await {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
    }
    anyhow::bail!("{what}: not reached within {timeout:?}; last: {last}")
}

/// The `p` quantile (0..=1, nearest rank) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of unsorted samples (the lower one of an even count).
pub fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    percentile(&sorted, 0.5)
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// CPUs this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// VmHWM (the peak resident size), KiB.
    pub peak_kib: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Option<Memory> {
        Memory::read(&format!("/proc/{pid}/status"))
    }

    pub fn of_self() -> Option<Memory> {
        Memory::read("/proc/self/status")
    }

    fn read(path: &str) -> Option<Memory> {
        let text = std::fs::read_to_string(path).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = text.lines().find(|l| l.starts_with(name))?;
            line[name.len()..].split_whitespace().next()?.parse().ok()
        };
        Some(Memory {
            rss_kib: field("VmRSS:")?,
            peak_kib: field("VmHWM:")?,
        })
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RSS {:.1} MiB (peak {:.1} MiB)",
            self.rss_kib as f64 / 1024.0,
            self.peak_kib as f64 / 1024.0
        )
    }
}

/// `Memory::of(pid)` for printing: "not running" when there is nothing to read.
pub fn memory_of(pid: Option<u32>) -> String {
    match pid.and_then(Memory::of) {
        Some(m) => m.to_string(),
        None => "not running".to_string(),
    }
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    cpu_time_at(&format!("/proc/{pid}/stat"))
}

/// [`cpu_time`] of this process.
pub fn own_cpu_time() -> Option<Duration> {
    cpu_time_at("/proc/self/stat")
}

fn cpu_time_at(path: &str) -> Option<Duration> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    // utime and stime are fields 14 and 15 of proc(5); `fields[0]` is field 3.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_sec > 0).then(|| Duration::from_secs_f64(ticks as f64 / per_sec as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let s: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        assert_eq!(percentile(&s, 0.5), Duration::from_millis(5));
        assert_eq!(percentile(&s, 0.99), Duration::from_millis(10));
        assert_eq!(percentile(&s, 0.0), Duration::from_millis(1));
        assert_eq!(
            median(&[
                Duration::from_millis(3),
                Duration::from_millis(1),
                Duration::from_millis(2)
            ]),
            Duration::from_millis(2)
        );
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn own_memory_is_readable() {
        let m = Memory::of_self().expect("/proc/self/status");
        assert!(m.rss_kib > 0 && m.peak_kib >= m.rss_kib);
    }

    #[test]
    fn own_cpu_time_grows() {
        let before = own_cpu_time().expect("/proc/self/stat");
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(own_cpu_time().expect("/proc/self/stat") > before);
    }
}
