//! A token bucket per peer address for anonymous `Join` calls.
//!
//! ```text
//!  Join from IP ──▶ bucket[IP]: refill RATE/s up to BURST ──token?──yes──▶ the join goes on
//!                                                            └─no──▶ ResourceExhausted, a sentence
//! ```
//!
//! Join is the one call anyone who completes a TLS handshake may make, and
//! each costs a linearizable read and a signature. The bucket is per IP (not
//! per port: a new connection is a new port), so one host cannot hammer the
//! controllers while hosts joining at their own pace are never refused. The
//! table itself is bounded ([`MAX_TRACKED`]): full buckets carry no
//! information and are dropped first, then the longest idle one, so a flood
//! from many addresses costs a fixed amount of memory.
//!
//! Pure: the caller passes `now`. Cost: O(1) per call, O(MAX_TRACKED) once
//! the table is full.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Joins one address may make at once.
pub const BURST: f64 = 20.0;
/// Joins per second an address earns back.
pub const PER_SECOND: f64 = 1.0;
/// Addresses tracked at most.
pub const MAX_TRACKED: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    seen: Instant,
}

/// What [`JoinLimiter::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admission {
    Admitted,
    /// Refused; the next token comes after this long. `first` is true for
    /// the first refusal since the address was last admitted (log that one
    /// only, so a flood does not flood the log too).
    Refused {
        retry_after: Duration,
        first: bool,
    },
}

#[derive(Debug)]
pub struct JoinLimiter {
    burst: f64,
    per_second: f64,
    max_tracked: usize,
    buckets: HashMap<IpAddr, (Bucket, bool)>,
}

impl Default for JoinLimiter {
    fn default() -> JoinLimiter {
        JoinLimiter::new(BURST, PER_SECOND, MAX_TRACKED)
    }
}

impl JoinLimiter {
    pub fn new(burst: f64, per_second: f64, max_tracked: usize) -> JoinLimiter {
        JoinLimiter {
            burst,
            per_second,
            max_tracked: max_tracked.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Take a token for a join from `ip` at `now`.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Admission {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.max_tracked {
            self.make_room(now);
        }
        let (bucket, refused_before) = self.buckets.entry(ip).or_insert((
            Bucket {
                tokens: self.burst,
                seen: now,
            },
            false,
        ));
        let earned = now.saturating_duration_since(bucket.seen).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + earned).min(self.burst);
        bucket.seen = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            *refused_before = false;
            return Admission::Admitted;
        }
        let first = !*refused_before;
        *refused_before = true;
        let missing = 1.0 - bucket.tokens;
        Admission::Refused {
            retry_after: Duration::from_secs_f64(missing / self.per_second.max(f64::MIN_POSITIVE)),
            first,
        }
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// Drop the buckets that have refilled (they would start full anyway);
    /// if none has, the one idle longest.
    fn make_room(&mut self, now: Instant) {
        let (burst, rate) = (self.burst, self.per_second);
        self.buckets.retain(|_, (b, _)| {
            let earned = now.saturating_duration_since(b.seen).as_secs_f64() * rate;
            b.tokens + earned < burst
        });
        if self.buckets.len() >= self.max_tracked {
            if let Some(oldest) = self
                .buckets
                .iter()
                .min_by_key(|(_, (b, _))| b.seen)
                .map(|(ip, _)| *ip)
            {
                self.buckets.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_burst_is_admitted_then_one_per_interval() {
        let mut l = JoinLimiter::new(3.0, 2.0, 16);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.admit(ip(1), t0), Admission::Admitted);
        }
        assert_eq!(
            l.admit(ip(1), t0),
            Admission::Refused {
                retry_after: Duration::from_millis(500),
                first: true
            }
        );
        assert!(matches!(
            l.admit(ip(1), t0),
            Admission::Refused { first: false, .. }
        ));
        // Another address is not affected.
        assert_eq!(l.admit(ip(2), t0), Admission::Admitted);
        // Half a second earns one token back.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.admit(ip(1), t1), Admission::Admitted);
        assert!(matches!(
            l.admit(ip(1), t1),
            Admission::Refused { first: true, .. }
        ));
        // Idle long enough, the bucket is full again, not more.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(l.admit(ip(1), t2), Admission::Admitted);
        }
        assert!(matches!(l.admit(ip(1), t2), Admission::Refused { .. }));
    }

    #[test]
    fn the_table_stays_bounded_under_a_flood_from_many_addresses() {
        let mut l = JoinLimiter::new(2.0, 1.0, 4);
        let t0 = Instant::now();
        // ip(1) is flooding: its bucket is empty.
        for _ in 0..3 {
            l.admit(ip(1), t0);
        }
        for n in 2..=200 {
            l.admit(ip(n), t0 + Duration::from_millis(u64::from(n)));
            assert!(l.tracked() <= 4);
        }
        // ip(1), idle longest, was evicted: at worst an address starts
        // again from a full bucket, and is limited from there.
        let late = t0 + Duration::from_millis(300);
        assert_eq!(l.admit(ip(1), late), Admission::Admitted);
        assert_eq!(l.admit(ip(1), late), Admission::Admitted);
        assert!(matches!(l.admit(ip(1), late), Admission::Refused { .. }));
    }
}
