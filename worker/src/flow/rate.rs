//! A fair token-bucket rate limiter (GCRA, "next free slot" reservation).
//!
//! Each caller reserves the instant at which it may go while holding a short
//! std lock, then sleeps until that instant outside the lock. Reservations are
//! handed out in the order callers reach the lock, so callers are served in
//! arrival order and a late `try_acquire` never jumps ahead of a waiter.
//!
//! Guarantee: over any window of length `T`, at most `burst + rate * T`
//! callers are admitted.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Admits at most `per_second` callers per second on average, and up to
/// `burst` at once after an idle period.
#[derive(Debug)]
pub struct RateLimiter {
    /// Time between two admissions at the steady rate.
    interval: Duration,
    /// How far ahead of the theoretical schedule a caller may go
    /// (`(burst - 1) * interval`).
    tolerance: Duration,
    /// Theoretical arrival time of the next caller: the schedule has been
    /// booked up to here.
    tat: Mutex<Option<Instant>>,
}

/// The slowest rate honoured; lower (or non-finite) rates are raised to it
/// rather than panicking. Configuration should reject them first.
const MIN_RATE: f64 = 1e-6;

impl RateLimiter {
    /// `per_second` should be positive: lower values (and NaN) are treated
    /// as one admission per ~11.5 days, infinity as no limit. `burst` 0 is
    /// treated as 1.
    pub fn new(per_second: f64, burst: u32) -> Self {
        // NaN fails the comparison; an infinite rate means no spacing.
        let rate = if per_second > MIN_RATE {
            per_second
        } else {
            MIN_RATE
        };
        let interval = Duration::from_secs_f64(1.0 / rate);
        let tolerance = interval.saturating_mul(burst.max(1) - 1);
        RateLimiter {
            interval,
            tolerance,
            tat: Mutex::new(None),
        }
    }

    /// Book the next free slot if it is no later than `limit` (or
    /// unconditionally when `limit` is `None`); returns the instant at which
    /// the caller may go.
    fn reserve(&self, now: Instant, limit: Option<Instant>) -> Option<Instant> {
        let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        let base = match *tat {
            Some(t) if t > now => t,
            _ => now,
        };
        let go = base
            .checked_sub(self.tolerance)
            .map_or(now, |earliest| earliest.max(now));
        if limit.is_some_and(|limit| go > limit) {
            return None;
        }
        *tat = Some(base + self.interval);
        Some(go)
    }

    /// Wait for a token. Callers are served in the order they call this.
    /// A cancelled call (future dropped while waiting) still uses its slot.
    pub async fn acquire(&self) {
        if let Some(go) = self.reserve(Instant::now(), None) {
            tokio::time::sleep_until(go).await;
        }
    }

    /// Wait for a token if one can be had by `deadline`; false at once
    /// (and nothing is booked) when the next free slot is later than that.
    pub async fn acquire_before(&self, deadline: Option<Instant>) -> bool {
        match self.reserve(Instant::now(), deadline) {
            Some(go) => {
                tokio::time::sleep_until(go).await;
                true
            }
            None => false,
        }
    }

    /// Take a token if one is free right now (and nobody is waiting ahead).
    pub fn try_acquire(&self) -> bool {
        let now = Instant::now();
        self.reserve(now, Some(now)).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Every window `[t_i, t_j]` of admission instants holds at most
    /// `burst + rate * (t_j - t_i)` admissions.
    fn assert_window_bound(times: &[Instant], rate: f64, burst: u32) {
        for i in 0..times.len() {
            for j in i..times.len() {
                let span = (times[j] - times[i]).as_secs_f64();
                let count = (j - i + 1) as f64;
                assert!(
                    count <= burst as f64 + rate * span + 1e-9,
                    "{count} admitted in {span} s at {rate}/s burst {burst}"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ten_seconds_at_twenty_per_second_admits_the_rate_plus_the_burst() {
        let limiter = RateLimiter::new(20.0, 5);
        let start = Instant::now();
        let end = start + Duration::from_secs(10);
        let mut times = Vec::new();
        loop {
            limiter.acquire().await;
            let now = Instant::now();
            if now > end {
                break;
            }
            times.push(now);
        }
        assert!(
            (200..=205).contains(&times.len()),
            "admitted {}",
            times.len()
        );
        // The burst goes at once after idle, then one every 50 ms.
        assert!(times[..5].iter().all(|t| *t == start));
        assert_eq!(times[5] - start, Duration::from_millis(50));
        assert_window_bound(&times, 20.0, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn many_concurrent_callers_respect_the_window_bound() {
        let limiter = Arc::new(RateLimiter::new(7.0, 3));
        let times = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..40u64 {
            let limiter = limiter.clone();
            let times = times.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 37)).await;
                limiter.acquire().await;
                times.lock().unwrap().push(Instant::now());
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut times = times.lock().unwrap().clone();
        times.sort();
        assert_eq!(times.len(), 40);
        assert_window_bound(&times, 7.0, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn burst_is_available_after_idle_and_not_more() {
        let limiter = RateLimiter::new(2.0, 3);
        for _ in 0..3 {
            assert!(limiter.try_acquire());
        }
        assert!(!limiter.try_acquire());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(limiter.try_acquire());
        assert!(!limiter.try_acquire());
        tokio::time::sleep(Duration::from_secs(60)).await;
        let admitted = (0..10).filter(|_| limiter.try_acquire()).count();
        assert_eq!(admitted, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn callers_are_served_in_arrival_order() {
        let limiter = Arc::new(RateLimiter::new(1.0, 1));
        assert!(limiter.try_acquire());
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Spawned in reverse so that spawn order and arrival order differ.
        for i in (0..8u64).rev() {
            let limiter = limiter.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 10)).await;
                limiter.acquire().await;
                order.lock().unwrap().push((i, Instant::now()));
            }));
        }
        // A latecomer's try_acquire must not jump the queue.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!limiter.try_acquire());
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        let ids: Vec<u64> = order.iter().map(|(i, _)| *i).collect();
        assert_eq!(ids, (0..8).collect::<Vec<_>>());
        // One per second, the first one second after the initial token.
        for (k, (_, at)) in order.iter().enumerate() {
            let expected = Duration::from_secs(k as u64 + 1);
            let start = order[0].1 - Duration::from_secs(1);
            assert_eq!(*at - start, expected);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_before_refuses_without_booking_a_slot() {
        let limiter = RateLimiter::new(1.0, 1);
        assert!(limiter.try_acquire());
        let soon = Instant::now() + Duration::from_millis(500);
        assert!(!limiter.acquire_before(Some(soon)).await);
        // The refused call did not book the slot at t+1s.
        let later = Instant::now() + Duration::from_secs(1);
        let start = Instant::now();
        assert!(limiter.acquire_before(Some(later)).await);
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
    }

    #[test]
    fn nonsense_settings_do_not_panic() {
        let limiter = RateLimiter::new(0.0, 0);
        assert!(limiter.try_acquire());
        assert!(!limiter.try_acquire());
        let limiter = RateLimiter::new(f64::NAN, 1);
        assert!(limiter.try_acquire());
        let limiter = RateLimiter::new(f64::INFINITY, u32::MAX);
        assert!((0..1000).all(|_| limiter.try_acquire()));
        let limiter = RateLimiter::new(1e-9, u32::MAX);
        assert!(limiter.try_acquire());
    }
}
