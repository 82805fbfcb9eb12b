//! Fencing (`--stop-after-disconnect`): since when the controllers have not
//! confirmed contact, and whether this node's replicas were killed for it.
//!
//! Contact is an acknowledged heartbeat or an assignment set, as they
//! arrive: the controller judges the node by the heartbeats it receives, so
//! the agent, counting from the acknowledgement of the last one, kills its
//! replicas before the controller replaces them elsewhere (the controller
//! refuses a limit that could not). A controller that does not acknowledge
//! heartbeats (an older version) is judged by its sessions' ends instead.
//!
//! ```text
//!   contact(now) ──▶ deadline = now + limit ──(no contact until then)──▶ fence
//!   fenced ──▶ no deadline until the next contact
//! ```
//!
//! Pure: the caller passes `now` in (the session its tokio clock, the
//! simulator its simulated one), so the same rule runs in both.

use std::ops::Add;
use std::time::Duration;

/// The fencing state of one agent, over any monotonic instant type.
#[derive(Debug, Clone)]
pub struct Fence<I> {
    limit: Option<Duration>,
    last_contact: I,
    /// The current or last session's controller acknowledges heartbeats.
    pub acked: bool,
    fenced: bool,
}

impl<I: Copy + Add<Duration, Output = I>> Fence<I> {
    /// `limit` None: fencing is off and there is never a deadline.
    pub fn new(limit: Option<Duration>, now: I) -> Fence<I> {
        Fence {
            limit,
            last_contact: now,
            acked: false,
            fenced: false,
        }
    }

    /// A controller confirmed contact (acknowledged a heartbeat, or sent an
    /// assignment set).
    pub fn contact(&mut self, now: I) {
        self.last_contact = now;
        self.fenced = false;
    }

    /// A session that delivered assignments ended: without acknowledged
    /// heartbeats, its end is the last contact known.
    pub fn session_ended(&mut self, now: I) {
        if !self.acked {
            self.contact(now);
        }
    }

    /// When to fence, unless already fenced or fencing is off.
    pub fn deadline(&self) -> Option<I> {
        self.limit
            .filter(|_| !self.fenced)
            .map(|limit| self.last_contact + limit)
    }

    /// The replicas were killed: no deadline until the next contact.
    pub fn fenced(&mut self) {
        self.fenced = true;
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    pub fn last_contact(&self) -> I {
        self.last_contact
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn off_has_no_deadline() {
        let f = Fence::new(None, Instant::now());
        assert_eq!(f.deadline(), None);
    }

    #[test]
    fn the_deadline_counts_from_the_last_contact_and_a_fence_clears_it_until_the_next() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(2);
        let mut f = Fence::new(Some(limit), t0);
        assert_eq!(f.deadline(), Some(t0 + limit));
        let t1 = t0 + Duration::from_millis(700);
        f.contact(t1);
        assert_eq!(f.deadline(), Some(t1 + limit));
        f.fenced();
        assert!(f.is_fenced());
        assert_eq!(f.deadline(), None);
        let t2 = t1 + Duration::from_secs(5);
        f.contact(t2);
        assert_eq!(f.deadline(), Some(t2 + limit));
    }

    #[test]
    fn a_session_end_counts_as_contact_only_without_acknowledged_heartbeats() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(2);
        let later = t0 + Duration::from_secs(1);
        let mut f = Fence::new(Some(limit), t0);
        f.session_ended(later);
        assert_eq!(f.deadline(), Some(later + limit));
        let mut acked = Fence::new(Some(limit), t0);
        acked.acked = true;
        acked.session_ended(later);
        assert_eq!(acked.deadline(), Some(t0 + limit));
    }
}
