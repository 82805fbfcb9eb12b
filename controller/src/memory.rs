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

/// mimalloc 2's option numbers (the order of `mi_option_e` in its
/// `mimalloc.h`; `libmimalloc-sys` names only some of them, and a test pins
/// these against the named neighbours).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Set mimalloc up for a long-running server; the binary runs this before
/// its first allocation (from its initialisers, `main.rs`), since an arena
/// is committed as the option says when it is reserved:
/// - **freed pages go back at once** (`purge_delay` 0, against 10 ms later:
///   a page freed by a thread that then sleeps stays resident);
/// - **arenas are committed as they are used**, not all at once
///   (`arena_eager_commit` 0: with eager commit, purged pages are only
///   reset, and stay in the resident size until the system needs them).
///
/// After placing 100,000 replicas and a 60 s hold: followers 238 / 246 MiB
/// and the leader 323 MiB with mimalloc's defaults; 213-221 / 313 MiB with
/// the purge delay at 0; 190 / 191 / 287 MiB with both. An
/// `MIMALLOC_PURGE_DELAY` or `MIMALLOC_ARENA_EAGER_COMMIT` in the
/// environment is left to win.
pub fn configure_allocator() {
    for (option, env) in [
        (MI_OPTION_PURGE_DELAY, c"MIMALLOC_PURGE_DELAY"),
        (MI_OPTION_ARENA_EAGER_COMMIT, c"MIMALLOC_ARENA_EAGER_COMMIT"),
    ] {
        // SAFETY: getenv reads the environment (nothing writes it this
        // early); mi_option_set writes one entry of mimalloc's option table
        // and may be called at any time, before its initialisation too.
        unsafe {
            if libc::getenv(env.as_ptr()).is_null() {
                libmimalloc_sys::mi_option_set(option, 0);
            }
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_numbers_sit_between_their_named_neighbours() {
        // mimalloc.h: eager_commit (3), arena_eager_commit (4),
        // purge_decommits (5), allow_large_os_pages (6), ...,
        // eager_commit_delay (14), purge_delay (15), use_numa_nodes (16).
        assert_eq!(
            MI_OPTION_ARENA_EAGER_COMMIT + 2,
            libmimalloc_sys::mi_option_large_os_pages
        );
        assert_eq!(
            MI_OPTION_PURGE_DELAY - 1,
            libmimalloc_sys::mi_option_eager_commit_delay
        );
        assert_eq!(
            MI_OPTION_PURGE_DELAY + 1,
            libmimalloc_sys::mi_option_use_numa_nodes
        );
    }
}
