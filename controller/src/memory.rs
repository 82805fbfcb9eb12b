//! Giving freed memory back to the system. glibc's malloc keeps what the
//! program frees for reuse: in one arena per thread that contended for one
//! (up to eight per core), and in the middle of each heap, where only a trim
//! returns it. A controller's big transients (a snapshot's encoding, a round
//! over thousands of unsettled deployments, a burst of assignment sets) are
//! freed from whichever worker or blocking thread ran them; without these two
//! measures the process's resident size stays near its highest peak.
//!
//! - [`limit_arenas`] at start: [`ARENAS`] arenas, shared by all threads.
//! - [`trim_every`]: a task that asks malloc to return free pages every
//!   [`TRIM_PERIOD`] (on a blocking thread: a trim walks every arena).
//!
//! Both do nothing where the C library is not glibc.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Arenas for the whole process: enough that two workers and a blocking
/// thread rarely wait for one another's allocations.
pub const ARENAS: i32 = 4;

/// How often free memory is returned.
pub const TRIM_PERIOD: Duration = Duration::from_secs(10);

/// Limit malloc to [`ARENAS`] arenas. Call before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; called before other
    // threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Return the free pages of every arena to the system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes malloc's own locks; it is safe to call from
    // any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trim every [`TRIM_PERIOD`] until `stop`.
pub async fn trim_every(stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TRIM_PERIOD) => {}
        }
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}
