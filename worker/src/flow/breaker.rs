//! A circuit breaker per backend endpoint.
//!
//! Closed: requests pass; consecutive failures and a sliding window of
//! outcomes are counted, and either can open the breaker. Open: requests are
//! refused for `open_for`. The first `try_pass` after that turns it half-open
//! and lets up to `half_open_probes` probes through; when that many probes
//! have succeeded it closes, and one failed probe re-opens it (for a fresh
//! `open_for`). What counts as a failure is the caller's business.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// When to open and how to recover.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker; 0 turns this rule off.
    pub failure_threshold: u32,
    /// Open when failures / total in the window reaches this (0.0..=1.0).
    pub error_ratio: Option<f64>,
    /// The ratio rule applies only once the window holds this many outcomes.
    pub min_requests: u32,
    /// Length of the sliding window for the ratio rule.
    pub window: Duration,
    /// How long the breaker stays open before letting probes through.
    pub open_for: Duration,
    /// Probes let through while half-open; this many must succeed to close.
    /// 0 is treated as 1.
    pub half_open_probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failure_threshold: 5,
            error_ratio: None,
            min_requests: 20,
            window: Duration::from_secs(30),
            open_for: Duration::from_secs(10),
            half_open_probes: 1,
        }
    }
}

/// The breaker's state as reported to metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// Gauge value: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Called with (breaker name, from, to) on every transition, outside the
/// breaker's lock.
pub type OnChange = Box<dyn Fn(&str, BreakerState, BreakerState) + Send + Sync>;

/// How long a caller is told to wait when half-open and every probe slot is
/// taken.
pub const PROBE_BUSY_WAIT: Duration = Duration::from_millis(100);

const BUCKETS: usize = 10;

/// Outcomes over the last `window`, in `BUCKETS` time buckets.
#[derive(Debug)]
struct Window {
    width_nanos: u128,
    /// (bucket index since the epoch, successes, failures); index
    /// `u64::MAX` marks an empty slot.
    slots: [(u64, u32, u32); BUCKETS],
}

impl Window {
    fn new(window: Duration) -> Self {
        let width = (window / BUCKETS as u32).max(Duration::from_millis(1));
        Window {
            width_nanos: width.as_nanos(),
            slots: [(u64::MAX, 0, 0); BUCKETS],
        }
    }

    fn reset(&mut self) {
        self.slots = [(u64::MAX, 0, 0); BUCKETS];
    }

    fn index(&self, since_epoch: Duration) -> u64 {
        u64::try_from(since_epoch.as_nanos() / self.width_nanos).unwrap_or(u64::MAX - 1)
    }

    fn add(&mut self, since_epoch: Duration, failed: bool) {
        let idx = self.index(since_epoch);
        let slot = &mut self.slots[(idx % BUCKETS as u64) as usize];
        if slot.0 != idx {
            *slot = (idx, 0, 0);
        }
        if failed {
            slot.2 = slot.2.saturating_add(1);
        } else {
            slot.1 = slot.1.saturating_add(1);
        }
    }

    /// (total, failures) in the window ending now.
    fn totals(&self, since_epoch: Duration) -> (u64, u64) {
        let cur = self.index(since_epoch);
        self.slots
            .iter()
            .filter(|(idx, _, _)| *idx != u64::MAX && cur - idx < BUCKETS as u64)
            .fold((0, 0), |(total, failed), (_, ok, bad)| {
                (total + *ok as u64 + *bad as u64, failed + *bad as u64)
            })
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: u32, succeeded: u32 },
}

impl Phase {
    fn state(self) -> BreakerState {
        match self {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    /// Bumped on every transition; a pass from an earlier phase is stale and
    /// its outcome is not counted.
    generation: u64,
    consecutive_failures: u32,
    window: Window,
}

struct Shared {
    name: String,
    settings: BreakerSettings,
    on_change: OnChange,
    epoch: Instant,
    inner: Mutex<Inner>,
}

type Transition = Option<(BreakerState, BreakerState)>;

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn probes(&self) -> u32 {
        self.settings.half_open_probes.max(1)
    }

    fn notify(&self, transition: Transition) {
        if let Some((from, to)) = transition {
            tracing::info!(breaker = %self.name, from = from.as_str(), to = to.as_str(), "circuit breaker changed state");
            (self.on_change)(&self.name, from, to);
        }
    }

    /// Move to `phase`, resetting the counters; returns the transition.
    fn enter(&self, inner: &mut Inner, phase: Phase) -> Transition {
        let from = inner.phase.state();
        inner.phase = phase;
        inner.generation += 1;
        inner.consecutive_failures = 0;
        inner.window.reset();
        Some((from, phase.state()))
    }

    fn open(&self, inner: &mut Inner, now: Instant) -> Transition {
        let until = now
            .checked_add(self.settings.open_for)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        self.enter(inner, Phase::Open { until })
    }

    fn record(&self, pass: &Pass, success: bool) {
        let now = Instant::now();
        let transition = {
            let mut inner = self.lock();
            if inner.generation != pass.generation {
                return;
            }
            match inner.phase {
                Phase::Closed => {
                    inner.window.add(now - self.epoch, !success);
                    if success {
                        inner.consecutive_failures = 0;
                        None
                    } else {
                        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                        if self.should_open(&inner, now) {
                            self.open(&mut inner, now)
                        } else {
                            None
                        }
                    }
                }
                Phase::HalfOpen { probing, succeeded } if pass.probe => {
                    if success {
                        let succeeded = succeeded + 1;
                        if succeeded >= self.probes() {
                            self.enter(&mut inner, Phase::Closed)
                        } else {
                            inner.phase = Phase::HalfOpen {
                                probing: probing.saturating_sub(1),
                                succeeded,
                            };
                            None
                        }
                    } else {
                        self.open(&mut inner, now)
                    }
                }
                // A pass of the current generation is a probe exactly when
                // the breaker is half-open, and no pass is issued while open.
                _ => None,
            }
        };
        self.notify(transition);
    }

    fn should_open(&self, inner: &Inner, now: Instant) -> bool {
        let s = &self.settings;
        if s.failure_threshold > 0 && inner.consecutive_failures >= s.failure_threshold {
            return true;
        }
        if let Some(ratio) = s.error_ratio {
            let (total, failed) = inner.window.totals(now - self.epoch);
            if total > 0 && total >= s.min_requests as u64 && failed as f64 / total as f64 >= ratio
            {
                return true;
            }
        }
        false
    }

    /// Give a probe slot back without an outcome.
    fn release(&self, pass: &Pass) {
        if !pass.probe {
            return;
        }
        let mut inner = self.lock();
        if inner.generation != pass.generation {
            return;
        }
        if let Phase::HalfOpen { probing, succeeded } = inner.phase {
            inner.phase = Phase::HalfOpen {
                probing: probing.saturating_sub(1),
                succeeded,
            };
        }
    }
}

/// Permission to send one request. Hand it back with
/// [`CircuitBreaker::record`]; dropping it unrecorded (or passing it to
/// [`CircuitBreaker::forget`]) counts nothing and frees its probe slot.
#[must_use = "record the outcome, or the request is not counted"]
pub struct Pass {
    shared: Arc<Shared>,
    probe: bool,
    generation: u64,
    done: bool,
}

impl Pass {
    /// Whether this pass is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// False once the breaker has changed state since this pass was given
    /// (for example it opened while the caller waited for something else).
    pub fn is_current(&self) -> bool {
        self.shared.lock().generation == self.generation
    }

    /// Record the outcome on the breaker that issued this pass.
    pub fn record(mut self, success: bool) {
        self.done = true;
        self.shared.record(&self, success);
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        if !self.done {
            self.shared.release(self);
        }
    }
}

impl std::fmt::Debug for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pass")
            .field("breaker", &self.shared.name)
            .field("probe", &self.probe)
            .field("generation", &self.generation)
            .finish()
    }
}

/// A circuit breaker; cheap to share by reference, all methods take `&self`.
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

impl CircuitBreaker {
    pub fn new(name: String, settings: BreakerSettings, on_change: OnChange) -> Self {
        let window = Window::new(settings.window);
        CircuitBreaker {
            shared: Arc::new(Shared {
                name,
                settings,
                on_change,
                epoch: Instant::now(),
                inner: Mutex::new(Inner {
                    phase: Phase::Closed,
                    generation: 0,
                    consecutive_failures: 0,
                    window,
                }),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// May a request go now? `Err(wait)` when open (the time left until
    /// half-open) or half-open with every probe slot taken
    /// ([`PROBE_BUSY_WAIT`]).
    pub fn try_pass(&self) -> Result<Pass, Duration> {
        let now = Instant::now();
        let shared = &self.shared;
        let (result, transition, generation) = {
            let mut inner = shared.lock();
            let (result, transition) = match inner.phase {
                Phase::Closed => (Ok(false), None),
                Phase::Open { until } if now < until => (Err(until - now), None),
                Phase::Open { .. } => {
                    let t = shared.enter(
                        &mut inner,
                        Phase::HalfOpen {
                            probing: 1,
                            succeeded: 0,
                        },
                    );
                    (Ok(true), t)
                }
                Phase::HalfOpen { probing, succeeded } => {
                    if probing + succeeded < shared.probes() {
                        inner.phase = Phase::HalfOpen {
                            probing: probing + 1,
                            succeeded,
                        };
                        (Ok(true), None)
                    } else {
                        (Err(PROBE_BUSY_WAIT), None)
                    }
                }
            };
            (result, transition, inner.generation)
        };
        shared.notify(transition);
        result.map(|probe| Pass {
            shared: shared.clone(),
            probe,
            generation,
            done: false,
        })
    }

    /// Record the outcome of a request let through by `pass`. A pass from
    /// another breaker, or from an earlier state, is not counted.
    pub fn record(&self, pass: Pass, success: bool) {
        if Arc::ptr_eq(&pass.shared, &self.shared) {
            pass.record(success);
        }
    }

    /// Give a pass back without an outcome (the request was never sent).
    pub fn forget(&self, pass: Pass) {
        drop(pass);
    }

    /// The current state. Open turns half-open only on the next `try_pass`,
    /// so this reports open until then.
    pub fn state(&self) -> BreakerState {
        self.shared.lock().phase.state()
    }
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.shared.name)
            .field("settings", &self.shared.settings)
            .field("state", &self.state())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BreakerState::{Closed, HalfOpen, Open};

    type Log = Arc<Mutex<Vec<(String, BreakerState, BreakerState)>>>;

    fn breaker(settings: BreakerSettings) -> (CircuitBreaker, Log) {
        let log: Log = Arc::default();
        let sink = log.clone();
        let b = CircuitBreaker::new(
            "backend-a".into(),
            settings,
            Box::new(move |name, from, to| sink.lock().unwrap().push((name.into(), from, to))),
        );
        (b, log)
    }

    fn consecutive(n: u32) -> BreakerSettings {
        BreakerSettings {
            failure_threshold: n,
            open_for: Duration::from_secs(10),
            ..BreakerSettings::default()
        }
    }

    fn outcome(b: &CircuitBreaker, success: bool) {
        let pass = b.try_pass().expect("closed breaker lets requests pass");
        b.record(pass, success);
    }

    fn transitions(log: &Log) -> Vec<(BreakerState, BreakerState)> {
        log.lock()
            .unwrap()
            .iter()
            .map(|(_, f, t)| (*f, *t))
            .collect()
    }

    #[test]
    fn defaults_and_state_names() {
        let d = BreakerSettings::default();
        assert_eq!(
            (d.failure_threshold, d.error_ratio, d.min_requests),
            (5, None, 20)
        );
        assert_eq!(d.window, Duration::from_secs(30));
        assert_eq!(d.open_for, Duration::from_secs(10));
        assert_eq!(d.half_open_probes, 1);
        assert_eq!(
            [Closed, Open, HalfOpen].map(BreakerState::as_gauge),
            [0, 1, 2]
        );
        assert_eq!(
            [Closed, Open, HalfOpen].map(BreakerState::as_str),
            ["closed", "open", "half_open"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_consecutive_failures_and_a_success_resets_the_count() {
        let (b, log) = breaker(consecutive(3));
        outcome(&b, false);
        outcome(&b, false);
        outcome(&b, true);
        outcome(&b, false);
        outcome(&b, false);
        assert_eq!(b.state(), Closed);
        outcome(&b, false);
        assert_eq!(b.state(), Open);
        assert_eq!(b.try_pass().unwrap_err(), Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(b.try_pass().unwrap_err(), Duration::from_secs(6));
        assert_eq!(
            log.lock().unwrap().as_slice(),
            &[("backend-a".to_string(), Closed, Open)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_error_ratio_once_min_requests_is_reached() {
        let (b, _) = breaker(BreakerSettings {
            failure_threshold: 0,
            error_ratio: Some(0.5),
            min_requests: 10,
            ..BreakerSettings::default()
        });
        // 9 outcomes, 6 failed (67 %), but below min_requests.
        for i in 0..9 {
            outcome(&b, i % 3 == 0);
        }
        assert_eq!(b.state(), Closed);
        // The 10th: 7 of 10 failed.
        outcome(&b, false);
        assert_eq!(b.state(), Open);
    }

    #[tokio::test(start_paused = true)]
    async fn stays_closed_below_the_ratio_and_below_min_requests() {
        let (b, _) = breaker(BreakerSettings {
            failure_threshold: 0,
            error_ratio: Some(0.5),
            min_requests: 10,
            ..BreakerSettings::default()
        });
        // Every request fails, but never 10 in the window: the threshold rule
        // is off and the ratio rule needs min_requests.
        for _ in 0..9 {
            outcome(&b, false);
        }
        assert_eq!(b.state(), Closed);
        // Old outcomes leave the window.
        tokio::time::advance(Duration::from_secs(31)).await;
        outcome(&b, false);
        assert_eq!(b.state(), Closed);
        // 40 % failures with plenty of requests stays closed.
        let (b, _) = breaker(BreakerSettings {
            failure_threshold: 0,
            error_ratio: Some(0.5),
            min_requests: 10,
            ..BreakerSettings::default()
        });
        // Failures at 0 and 2 of every 5: the running ratio stays below 50 %.
        for i in 0..100 {
            outcome(&b, i % 5 != 0 && i % 5 != 2);
        }
        assert_eq!(b.state(), Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_after_open_for_and_a_good_probe_closes() {
        let (b, log) = breaker(consecutive(1));
        outcome(&b, false);
        assert_eq!(b.state(), Open);
        tokio::time::advance(Duration::from_secs(10)).await;
        // Lazy: still open until somebody asks.
        assert_eq!(b.state(), Open);
        let probe = b.try_pass().expect("half-open lets a probe through");
        assert!(probe.is_probe());
        assert_eq!(b.state(), HalfOpen);
        // The only probe slot is taken.
        assert_eq!(b.try_pass().unwrap_err(), PROBE_BUSY_WAIT);
        b.record(probe, true);
        assert_eq!(b.state(), Closed);
        let pass = b.try_pass().unwrap();
        assert!(!pass.is_probe());
        assert_eq!(
            transitions(&log),
            [(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_a_fresh_open_for() {
        let (b, log) = breaker(consecutive(1));
        outcome(&b, false);
        tokio::time::advance(Duration::from_secs(12)).await;
        let probe = b.try_pass().unwrap();
        b.record(probe, false);
        assert_eq!(b.state(), Open);
        assert_eq!(b.try_pass().unwrap_err(), Duration::from_secs(10));
        assert_eq!(
            transitions(&log),
            [(Closed, Open), (Open, HalfOpen), (HalfOpen, Open)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn several_probes_must_all_succeed() {
        let (b, log) = breaker(BreakerSettings {
            half_open_probes: 3,
            ..consecutive(1)
        });
        outcome(&b, false);
        tokio::time::advance(Duration::from_secs(10)).await;
        let probes: Vec<Pass> = (0..3).map(|_| b.try_pass().unwrap()).collect();
        assert!(b.try_pass().is_err());
        let mut probes = probes.into_iter();
        b.record(probes.next().unwrap(), true);
        b.record(probes.next().unwrap(), true);
        assert_eq!(b.state(), HalfOpen);
        // A succeeded probe does not free a slot: three successes are needed
        // and one is still out.
        assert!(b.try_pass().is_err());
        b.record(probes.next().unwrap(), true);
        assert_eq!(b.state(), Closed);
        assert_eq!(transitions(&log).last(), Some(&(HalfOpen, Closed)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_or_forgotten_probe_frees_its_slot() {
        let (b, _) = breaker(consecutive(1));
        outcome(&b, false);
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = b.try_pass().unwrap();
        assert!(b.try_pass().is_err());
        drop(probe);
        assert_eq!(b.state(), HalfOpen);
        let probe = b.try_pass().expect("slot freed by the drop");
        assert!(b.try_pass().is_err());
        b.forget(probe);
        let probe = b.try_pass().expect("slot freed by forget");
        b.record(probe, true);
        assert_eq!(b.state(), Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_passes_are_not_counted() {
        let (b, log) = breaker(consecutive(2));
        let late = b.try_pass().unwrap();
        outcome(&b, false);
        outcome(&b, false);
        assert_eq!(b.state(), Open);
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = b.try_pass().unwrap();
        assert!(!late.is_current());
        // The request let through while closed ends now; it is no probe.
        b.record(late, true);
        assert_eq!(b.state(), HalfOpen);
        b.record(probe, true);
        assert_eq!(b.state(), Closed);
        // A pass from another breaker is ignored.
        let (other, _) = breaker(consecutive(1));
        b.record(other.try_pass().unwrap(), false);
        assert_eq!(other.state(), Closed);
        assert_eq!(b.state(), Closed);
        assert_eq!(transitions(&log).len(), 3);
    }

    #[test]
    fn threshold_zero_and_no_ratio_never_opens() {
        let (b, log) = breaker(BreakerSettings {
            failure_threshold: 0,
            ..BreakerSettings::default()
        });
        for _ in 0..1000 {
            outcome(&b, false);
        }
        assert_eq!(b.state(), Closed);
        assert!(log.lock().unwrap().is_empty());
    }
}
