//! Retry policy: which outcomes retry, and how long to wait before the next
//! attempt (exponential backoff with full jitter, capped, honouring the
//! backend's `Retry-After` up to the same cap).

use crate::config::{RetryOverride, StatusSet, WorkerConfig};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total attempts, the first one included (`max_retries + 1`).
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
    /// Longest backend `Retry-After` honoured.
    pub retry_after_max: Duration,
    retry_on: StatusSet,
    never_retry: StatusSet,
}

impl RetryPolicy {
    pub fn from_config(w: &WorkerConfig) -> Result<RetryPolicy, String> {
        Self::for_endpoint(w, &RetryOverride::default())
    }

    /// The worker's policy with one endpoint's overrides applied.
    pub fn for_endpoint(w: &WorkerConfig, o: &RetryOverride) -> Result<RetryPolicy, String> {
        let secs = |v: f64| Duration::try_from_secs_f64(v).map_err(|e| e.to_string());
        Ok(RetryPolicy {
            max_attempts: o.max_retries.unwrap_or(w.max_retries).saturating_add(1),
            base: secs(o.retry_delay_base.unwrap_or(w.retry_delay_base))?,
            cap: secs(o.retry_delay_max.unwrap_or(w.retry_delay_max))?,
            retry_after_max: Duration::from_secs(w.retry_after_max_seconds),
            retry_on: StatusSet::parse(o.retry_on_status.as_ref().unwrap_or(&w.retry_on_status))?,
            never_retry: StatusSet::parse(
                o.no_retry_on_status
                    .as_ref()
                    .unwrap_or(&w.no_retry_on_status),
            )?,
        })
    }

    /// The same policy with another attempt budget (a routing-table
    /// route's `max_retries`).
    pub fn with_max_retries(&self, max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts: max_retries.saturating_add(1),
            ..self.clone()
        }
    }

    /// Whether a backend answer with this status is worth another attempt.
    pub fn retries_status(&self, status: u16) -> bool {
        self.retry_on.contains(status) && !self.never_retry.contains(status)
    }

    /// Whether attempt number `attempt` (1-based) may be followed by another.
    pub fn has_attempts_left(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The ceiling of the backoff after attempt `attempt` (1-based):
    /// `min(cap, base * 2^(attempt-1))`.
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        backoff_ceiling(self.base, self.cap, attempt)
    }

    /// The delay before the next attempt: full jitter over the ceiling, or
    /// the backend's `Retry-After` (up to `retry_after_max`) when it gave one.
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut fastrand::Rng,
    ) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.retry_after_max);
        }
        full_jitter(self.base, self.cap, attempt, rng)
    }
}

/// Exponential backoff with full jitter: a uniform delay up to
/// `min(cap, base * 2^(attempt-1))` (attempt is 1-based).
pub fn full_jitter(
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: &mut fastrand::Rng,
) -> Duration {
    let ceiling = backoff_ceiling(base, cap, attempt);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.u64(0..=nanos))
}

fn backoff_ceiling(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    base.saturating_mul(1u32 << exp).min(cap)
}

/// Parse an HTTP `Retry-After` value given in seconds. (HTTP-dates are
/// accepted by the spec too; backends that send them get the backoff.)
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::from_config(&WorkerConfig::default()).unwrap()
    }

    #[test]
    fn default_statuses() {
        let p = policy();
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(p.retries_status(s), "{s}");
        }
        for s in [200, 201, 400, 404, 409, 422, 501] {
            assert!(!p.retries_status(s), "{s}");
        }
    }

    #[test]
    fn status_set_syntax() {
        let set = StatusSet::parse(&["4xx".into(), "500-502".into(), "599".into()]).unwrap();
        assert!(set.contains(404) && set.contains(501) && set.contains(599));
        assert!(!set.contains(503));
        assert!(StatusSet::parse(&["6xx".into()]).is_err());
        assert!(StatusSet::parse(&["99".into()]).is_err());
        assert!(StatusSet::parse(&["502-500".into()]).is_err());
    }

    #[test]
    fn endpoint_overrides() {
        let o = RetryOverride {
            max_retries: Some(0),
            retry_on_status: Some(vec!["503".into()]),
            ..Default::default()
        };
        let p = RetryPolicy::for_endpoint(&WorkerConfig::default(), &o).unwrap();
        assert!(!p.has_attempts_left(1));
        assert!(p.retries_status(503) && !p.retries_status(500));
        assert_eq!(p.base, Duration::from_secs(1));
        assert_eq!(p.with_max_retries(2).max_attempts, 3);
    }

    #[test]
    fn an_empty_retry_list_is_the_originals_any_answer_completes() {
        let env = [(
            "OPENHQM_WORKER__RETRY_ON_STATUS".to_string(),
            "[]".to_string(),
        )];
        let config = crate::config::Config::from_sources(None, &env).unwrap();
        let p = RetryPolicy::from_config(&config.worker).unwrap();
        for s in [408, 429, 500, 503, 599] {
            assert!(!p.retries_status(s), "{s}");
        }
    }

    #[test]
    fn attempts() {
        let p = policy(); // max_retries 3 -> 4 attempts
        assert!(p.has_attempts_left(1) && p.has_attempts_left(3));
        assert!(!p.has_attempts_left(4));
    }

    #[test]
    fn schedule_doubles_then_caps() {
        let p = policy(); // base 1 s, cap 60 s
        let ceilings: Vec<u64> = (1..=8).map(|a| p.backoff_ceiling(a).as_secs()).collect();
        assert_eq!(ceilings, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(p.backoff_ceiling(1000).as_secs(), 60);
    }

    #[test]
    fn jitter_stays_under_the_ceiling_and_varies() {
        let p = policy();
        let mut rng = fastrand::Rng::with_seed(7);
        let delays: Vec<Duration> = (0..200).map(|_| p.delay(4, None, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(8)));
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 100, "full jitter should spread delays");
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let p = policy();
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(7)), &mut rng),
            Duration::from_secs(7)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(600)), &mut rng),
            Duration::from_secs(300)
        );
        assert_eq!(parse_retry_after(" 12 "), Some(Duration::from_secs(12)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
