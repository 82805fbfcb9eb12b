//! Runtime stalls: a task that asks to wake every [`PERIOD`] notices when
//! the runtime's workers were too busy (or the process was not scheduled)
//! to run it on time, and says so. Everything on the runtime waited as long:
//! agents' sessions and heartbeats, keep-alive answers, API calls. A stall
//! near a burst of NotReady verdicts tells an overloaded controller from
//! silent nodes.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How often the watching task asks to wake.
pub const PERIOD: Duration = Duration::from_millis(100);
/// The lateness reported as a stall.
pub const STALL: Duration = Duration::from_millis(500);

/// Watch this runtime for stalls until `stop`, calling `on_stall` with
/// each one's length.
pub async fn watch(stop: CancellationToken, on_stall: impl Fn(Duration)) {
    loop {
        let due = Instant::now() + PERIOD;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(due) => {}
        }
        let late = Instant::now().saturating_duration_since(due);
        if late >= STALL {
            on_stall(late);
        }
    }
}

/// The controller's warning for a stall.
pub fn warn(late: Duration) {
    warn!(
        late_ms = late.as_millis() as u64,
        "the runtime was stalled: its tasks (agents' sessions and heartbeats, keep-alive answers, API calls) waited this long for a worker"
    );
}
