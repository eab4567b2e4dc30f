//! Per-endpoint flow control: how many requests may be in flight to one
//! backend endpoint, how fast they may start, a circuit breaker that stops
//! calling a failing backend, consistent instance choice, and in-order
//! processing per partition key.

pub mod breaker;
pub mod ordering;
pub mod rate;
pub mod sticky;

pub use breaker::{BreakerSettings, BreakerState, CircuitBreaker, OnChange, Pass};
pub use ordering::{KeyOrder, Ticket, Turn};
pub use rate::RateLimiter;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// One endpoint's limits; each is off when `None` (or empty).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowSettings {
    /// Requests in flight at once (0 is treated as 1).
    pub max_concurrency: Option<usize>,
    /// (requests per second, burst).
    pub rate: Option<(f64, u32)>,
    pub breaker: Option<BreakerSettings>,
    /// Instance URLs to spread requests over; empty: the caller's own URL.
    pub instances: Vec<String>,
}

/// Why [`EndpointFlow::admit`] let a request not go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The deadline passed, or will have passed before the request could go
    /// (the breaker stays open beyond it, or the next rate slot is after it).
    Deadline,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Deadline => {
                f.write_str("the deadline passed before the backend could be called")
            }
        }
    }
}

impl std::error::Error for Refused {}

/// Leave to call the backend once: holds a concurrency permit and the
/// breaker's pass. Call [`Admission::finish`] with the outcome; dropping it
/// releases both and counts nothing.
#[derive(Debug)]
#[must_use = "finish the admission with the outcome of the call"]
pub struct Admission {
    pass: Option<Pass>,
    _permit: Option<OwnedSemaphorePermit>,
    _in_flight: InFlight,
}

impl Admission {
    /// Whether this call is a half-open breaker probe.
    pub fn is_probe(&self) -> bool {
        self.pass.as_ref().is_some_and(Pass::is_probe)
    }

    /// Record the outcome on the breaker and release the permit.
    pub fn finish(mut self, success: bool) {
        if let Some(pass) = self.pass.take() {
            pass.record(success);
        }
    }
}

#[derive(Debug)]
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// All of one endpoint's flow controls.
#[derive(Debug)]
pub struct EndpointFlow {
    name: String,
    permits: Option<Arc<Semaphore>>,
    rate: Option<RateLimiter>,
    breaker: Option<CircuitBreaker>,
    instances: Vec<String>,
    round_robin: AtomicUsize,
    in_flight: Arc<AtomicUsize>,
}

impl EndpointFlow {
    /// `on_breaker_change` is called on every breaker transition (unused
    /// without a breaker).
    pub fn new(name: String, settings: FlowSettings, on_breaker_change: OnChange) -> Self {
        let FlowSettings {
            max_concurrency,
            rate,
            breaker,
            instances,
        } = settings;
        EndpointFlow {
            permits: max_concurrency
                .map(|n| Arc::new(Semaphore::new(n.clamp(1, Semaphore::MAX_PERMITS)))),
            rate: rate.map(|(per_second, burst)| RateLimiter::new(per_second, burst)),
            breaker: breaker.map(|s| CircuitBreaker::new(name.clone(), s, on_breaker_change)),
            name,
            instances,
            round_robin: AtomicUsize::new(0),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Wait until a request may go: while the breaker is open, then for a
    /// concurrency permit, then for a rate token. `Refused::Deadline` when
    /// `deadline` passes first, or is sure to.
    pub async fn admit(&self, deadline: Option<Instant>) -> Result<Admission, Refused> {
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(Refused::Deadline);
        }
        loop {
            let pass = match &self.breaker {
                Some(breaker) => Some(wait_for_pass(breaker, deadline).await?),
                None => None,
            };
            // Permit before token: a token is spent only by a request that
            // can then go at once, so requests reach the backend at the
            // limiter's pace instead of banking tokens while parked on the
            // semaphore and leaving together in a burst above the rate.
            let permit = match &self.permits {
                Some(permits) => {
                    let acquire = permits.clone().acquire_owned();
                    let acquired = match deadline {
                        Some(d) => tokio::time::timeout_at(d, acquire)
                            .await
                            .map_err(|_| Refused::Deadline)?,
                        None => acquire.await,
                    };
                    // The semaphore is never closed.
                    acquired.ok()
                }
                None => None,
            };
            if let Some(rate) = &self.rate {
                if !rate.acquire_before(deadline).await {
                    return Err(Refused::Deadline);
                }
            }
            // The breaker may have opened while this waited; ask again.
            if pass.as_ref().is_some_and(|p| !p.is_current()) {
                continue;
            }
            return Ok(Admission {
                pass,
                _permit: permit,
                _in_flight: InFlight::new(&self.in_flight),
            });
        }
    }

    /// The instance URL for `key` (sticky) or the next in turn (no key);
    /// `None` when no instances are configured.
    pub fn instance(&self, key: Option<&str>) -> Option<&str> {
        if self.instances.is_empty() {
            return None;
        }
        let i = sticky::pick(&self.instances, key, &self.round_robin);
        Some(&self.instances[i])
    }

    pub fn breaker_state(&self) -> Option<BreakerState> {
        self.breaker.as_ref().map(CircuitBreaker::state)
    }

    /// Admissions not yet finished or dropped.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Wait for the breaker's pass, sleeping the wait it returns (never
/// spinning).
async fn wait_for_pass(
    breaker: &CircuitBreaker,
    deadline: Option<Instant>,
) -> Result<Pass, Refused> {
    loop {
        let wait = match breaker.try_pass() {
            Ok(pass) => return Ok(pass),
            Err(wait) => wait,
        };
        let wake = Instant::now() + wait;
        match deadline {
            // Open beyond the deadline: nothing can change that, so refuse
            // now rather than hold the request until then.
            Some(d) if wake > d && breaker.state() == BreakerState::Open => {
                return Err(Refused::Deadline)
            }
            Some(d) if d <= Instant::now() => return Err(Refused::Deadline),
            Some(d) => tokio::time::sleep_until(wake.min(d)).await,
            None => tokio::time::sleep_until(wake).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    fn no_op() -> OnChange {
        Box::new(|_, _, _| {})
    }

    fn opens_at_once(open_for: Duration) -> BreakerSettings {
        BreakerSettings {
            failure_threshold: 1,
            open_for,
            ..BreakerSettings::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_never_exceeds_the_limit() {
        let flow = Arc::new(EndpointFlow::new(
            "api".into(),
            FlowSettings {
                max_concurrency: Some(4),
                ..FlowSettings::default()
            },
            no_op(),
        ));
        let current = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..20u64 {
            let (flow, current, max, done) =
                (flow.clone(), current.clone(), max.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let admission = flow.admit(None).await.unwrap();
                let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(now, Ordering::SeqCst);
                assert!(flow.in_flight() <= 4);
                tokio::time::sleep(Duration::from_millis(10 + i % 3)).await;
                current.fetch_sub(1, Ordering::SeqCst);
                admission.finish(true);
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(flow.in_flight(), 4);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(max.load(Ordering::SeqCst), 4);
        assert_eq!(done.load(Ordering::SeqCst), 20);
        assert_eq!(flow.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_inside_the_open_period_is_refused() {
        let flow = EndpointFlow::new(
            "api".into(),
            FlowSettings {
                breaker: Some(opens_at_once(Duration::from_secs(10))),
                ..FlowSettings::default()
            },
            no_op(),
        );
        flow.admit(None).await.unwrap().finish(false);
        assert_eq!(flow.breaker_state(), Some(BreakerState::Open));
        let start = Instant::now();
        let refused = flow.admit(Some(start + Duration::from_secs(3))).await;
        assert_eq!(refused.unwrap_err(), Refused::Deadline);
        // Refused at once: waiting could not have helped.
        assert_eq!(Instant::now(), start);
        // A deadline already past is refused too.
        assert_eq!(
            flow.admit(Some(start)).await.unwrap_err(),
            Refused::Deadline
        );
        assert_eq!(flow.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn admit_waits_for_half_open_and_the_probe_closes() {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let sink = changes.clone();
        let flow = EndpointFlow::new(
            "api".into(),
            FlowSettings {
                max_concurrency: Some(2),
                breaker: Some(opens_at_once(Duration::from_secs(5))),
                ..FlowSettings::default()
            },
            Box::new(move |name, from, to| sink.lock().unwrap().push((name.to_string(), from, to))),
        );
        flow.admit(None).await.unwrap().finish(false);
        let start = Instant::now();
        let probe = flow
            .admit(Some(start + Duration::from_secs(6)))
            .await
            .unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
        assert!(probe.is_probe());
        assert_eq!(flow.breaker_state(), Some(BreakerState::HalfOpen));
        // While the probe is out, others wait (and meet their deadline).
        let other = flow
            .admit(Some(Instant::now() + Duration::from_millis(350)))
            .await;
        assert_eq!(other.unwrap_err(), Refused::Deadline);
        probe.finish(true);
        assert_eq!(flow.breaker_state(), Some(BreakerState::Closed));
        let next = flow.admit(None).await.unwrap();
        assert!(!next.is_probe());
        assert_eq!(
            *changes.lock().unwrap(),
            [
                ("api".to_string(), BreakerState::Closed, BreakerState::Open),
                (
                    "api".to_string(),
                    BreakerState::Open,
                    BreakerState::HalfOpen
                ),
                (
                    "api".to_string(),
                    BreakerState::HalfOpen,
                    BreakerState::Closed
                ),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_the_probe_when_it_is_dropped() {
        let flow = Arc::new(EndpointFlow::new(
            "api".into(),
            FlowSettings {
                breaker: Some(opens_at_once(Duration::from_secs(1))),
                ..FlowSettings::default()
            },
            no_op(),
        ));
        flow.admit(None).await.unwrap().finish(false);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let probe = flow.admit(None).await.unwrap();
        let waiter = tokio::spawn({
            let flow = flow.clone();
            async move { flow.admit(None).await.map(|a| a.is_probe()) }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!waiter.is_finished());
        drop(probe);
        let got = tokio::time::timeout(Duration::from_millis(150), waiter).await;
        assert_eq!(got.unwrap().unwrap(), Ok(true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_breaker_that_opens_while_waiting_for_a_permit_is_asked_again() {
        let flow = Arc::new(EndpointFlow::new(
            "api".into(),
            FlowSettings {
                max_concurrency: Some(1),
                breaker: Some(opens_at_once(Duration::from_secs(10))),
                ..FlowSettings::default()
            },
            no_op(),
        ));
        let first = flow.admit(None).await.unwrap();
        let start = Instant::now();
        let waiter = tokio::spawn({
            let flow = flow.clone();
            async move {
                let a = flow.admit(None).await.unwrap();
                (Instant::now(), a.is_probe())
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The waiter passed the closed breaker and sits on the semaphore;
        // now the call in flight fails and the breaker opens.
        first.finish(false);
        let (at, probe) = waiter.await.unwrap();
        assert_eq!(at - start, Duration::from_secs(11));
        assert!(
            probe,
            "admitted as the half-open probe, not on a stale pass"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_is_applied_after_the_permit() {
        let flow = Arc::new(EndpointFlow::new(
            "api".into(),
            FlowSettings {
                max_concurrency: Some(1),
                rate: Some((10.0, 1)),
                ..FlowSettings::default()
            },
            no_op(),
        ));
        // The first call holds the only permit for 1 s, the others for 10 ms.
        // Had the others taken their tokens while parked on the semaphore,
        // they would start 10 ms apart after the first; they must start at
        // the rate's 100 ms spacing.
        let starts = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..5u64 {
            let (flow, starts) = (flow.clone(), starts.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i)).await;
                let a = flow.admit(None).await.unwrap();
                starts.lock().unwrap().push(Instant::now() - start);
                let hold = if i == 0 { 1000 } else { 10 };
                tokio::time::sleep(Duration::from_millis(hold)).await;
                a.finish(true);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let ms: Vec<u128> = starts
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(ms, [0, 1000, 1100, 1200, 1300]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_slot_beyond_the_deadline_is_refused() {
        let flow = EndpointFlow::new(
            "api".into(),
            FlowSettings {
                rate: Some((1.0, 1)),
                ..FlowSettings::default()
            },
            no_op(),
        );
        let first = flow.admit(None).await.unwrap();
        let soon = Instant::now() + Duration::from_millis(500);
        assert_eq!(flow.admit(Some(soon)).await.unwrap_err(), Refused::Deadline);
        first.finish(true);
        assert_eq!(flow.in_flight(), 0);
    }

    #[test]
    fn instances_sticky_round_robin_or_none() {
        let flow = EndpointFlow::new(
            "api".into(),
            FlowSettings {
                instances: vec!["http://a".into(), "http://b".into()],
                ..FlowSettings::default()
            },
            no_op(),
        );
        let k = flow.instance(Some("order-17")).unwrap().to_string();
        assert!((0..10).all(|_| flow.instance(Some("order-17")) == Some(k.as_str())));
        let rr: Vec<&str> = (0..4).map(|_| flow.instance(None).unwrap()).collect();
        assert_eq!(rr, ["http://a", "http://b", "http://a", "http://b"]);
        let bare = EndpointFlow::new("api".into(), FlowSettings::default(), no_op());
        assert_eq!(bare.instance(Some("k")), None);
        assert_eq!(bare.breaker_state(), None);
    }
}
