//! The controller's memory: its allocator, and giving freed memory back.
//!
//! **Allocator.** The binary allocates with mimalloc 2 (`main.rs`). With
//! glibc's malloc, allocating and freeing were about a third of the raft
//! threads' samples in a profile of the 100,000-replica placement
//! (`malloc_consolidate` alone 9 %: every free of a large buffer, such as
//! an applied entry's, merges all of an arena's small free chunks).
//! Alternating runs of that placement, the same build otherwise: 12.3-14.5 s
//! with glibc, 10.0-11.3 s with mimalloc, the leader's CPU 9.4-11.6 s
//! against 7.4-8.6 s. The cost: after a 60 s hold the
//! followers were at 296-299 MiB against 259-261 MiB, the leader at 431 MiB
//! against 384 MiB. Version 2 rather than 3: at 10,000 replicas version 3
//! kept the controllers at 146-268 MiB, version 2 at 114-198 MiB. (The
//! agent and the bench process gained nothing measurable from mimalloc and
//! keep glibc's.)
//!
//! **Returning memory.** [`trim_every`] asks the allocator to return free
//! pages every [`TRIM_PERIOD`] (on a blocking thread: it walks the whole
//! heap). A controller's big transients (a snapshot's encoding, a round over
//! thousands of unsettled deployments, a burst of assignment sets) are freed
//! from whichever thread ran them; without this the resident size stays
//! near its highest peak. glibc's malloc is trimmed as well: the library's
//! in-process users (the test suites' clusters) allocate with it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often free memory is returned.
pub const TRIM_PERIOD: Duration = Duration::from_secs(10);

/// Return free pages to the system: mimalloc's (forced collection) and
/// glibc's (every arena).
pub fn trim() {
    // SAFETY: mi_collect may be called from any thread at any time.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
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
