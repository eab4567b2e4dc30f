//! The consume loop: receive, process with bounded concurrency, settle each
//! message (ack, nack with backoff, or dead-letter) only after its outcome is
//! recorded, and hand work back on shutdown.

use crate::admin::Metrics;
use crate::backend_call::Attempt;
use crate::callback::CallbackSender;
use crate::flow::ordering::{KeyOrder, Ticket};
use crate::processor::{Job, Processor};
use crate::proxy::{Proxy, ThisAttempt};
use crate::routing::{RouteError, RoutingTable};
use crate::work::{Work, WorkBody};
use openhqm_core::config::Config;
use openhqm_core::model::{result_json, RequestRecord, Status, StoredResponse};
use openhqm_core::queue::{dead_letter, Delivery, Message, Queue, QueueError, Receipt};
use openhqm_core::retry::RetryPolicy;
use openhqm_core::store::{PutOutcome, ResultStore};
use openhqm_core::telemetry::TraceSpan;
use openhqm_core::time::now_rfc3339;
use openhqm_trace::SpanKind;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

/// Everything a worker is made of; built by `lib.rs` from the configuration.
pub struct Parts {
    pub config: Config,
    pub requests: Arc<dyn Queue>,
    pub dlq: Arc<dyn Queue>,
    /// Where final outcomes are published, when `publishes_responses`.
    pub responses: Option<Arc<dyn Queue>>,
    pub store: Arc<dyn ResultStore>,
    pub http: reqwest::Client,
    /// The worker-wide retry policy (processors; endpoints may override).
    pub policy: RetryPolicy,
    pub metrics: Arc<Metrics>,
    /// Proxy mode: endpoints, routing table and flow control.
    pub proxy: Option<Proxy>,
    /// Used when proxy mode is off.
    pub processor: Arc<dyn Processor>,
    /// Proxy mode off: the routing table reshapes what the processor gets.
    pub routing: Option<RoutingTable>,
    pub callbacks: Option<CallbackSender>,
}

pub struct Worker {
    config: Config,
    requests: Arc<dyn Queue>,
    dlq: Arc<dyn Queue>,
    responses: Option<Arc<dyn Queue>>,
    store: Arc<dyn ResultStore>,
    http: reqwest::Client,
    policy: RetryPolicy,
    metrics: Arc<Metrics>,
    proxy: Option<Proxy>,
    processor: Arc<dyn Processor>,
    routing: Option<RoutingTable>,
    callbacks: Option<CallbackSender>,
    lease: Duration,
    ttl: Duration,
    /// Per-partition-key turns, so same-key messages run one at a time in
    /// the order they were received.
    order: KeyOrder,
    /// Receipts of messages being worked on, to hand back on shutdown.
    in_flight: Mutex<HashSet<Receipt>>,
}

/// How long one receive call waits for work; also how quickly a stop
/// request is noticed.
const RECEIVE_WAIT: Duration = Duration::from_millis(500);

/// A wall-clock deadline as a tokio instant (past ones become "now").
fn to_instant(t: SystemTime) -> tokio::time::Instant {
    let left = t
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + left
}

impl Worker {
    pub fn new(p: Parts) -> Worker {
        Worker {
            lease: Duration::from_secs(p.config.worker.lease_seconds),
            ttl: Duration::from_secs(p.config.cache.ttl_seconds),
            config: p.config,
            requests: p.requests,
            dlq: p.dlq,
            responses: p.responses,
            store: p.store,
            http: p.http,
            policy: p.policy,
            metrics: p.metrics,
            proxy: p.proxy,
            processor: p.processor,
            routing: p.routing,
            callbacks: p.callbacks,
            order: KeyOrder::default(),
            in_flight: Mutex::new(HashSet::new()),
        }
    }

    /// Run until `stop` turns true, then drain within the grace period.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let concurrency = self.config.worker.concurrency;
        let permits = Arc::new(Semaphore::new(concurrency));
        let mut tasks = JoinSet::new();
        let mut failures = 0u32;
        while !*stop.borrow() {
            while tasks.try_join_next().is_some() {}
            // Wait for room before taking work: what is received is leased.
            let first = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = stop.changed() => break,
            };
            let mut held = vec![first];
            while held.len() < self.config.worker.batch_size {
                match permits.clone().try_acquire_owned() {
                    Ok(p) => held.push(p),
                    Err(_) => break,
                }
            }
            let batch = match self
                .requests
                .receive(held.len(), RECEIVE_WAIT, self.lease)
                .await
            {
                Ok(b) => {
                    failures = 0;
                    b
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let pause = Duration::from_millis(200u64.saturating_mul(1 << failures.min(6)));
                    tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "receive failed");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {},
                        _ = stop.changed() => {},
                    }
                    continue;
                }
            };
            for delivery in batch {
                let Some(permit) = held.pop() else { break };
                self.track(&delivery.receipt, true);
                // Taken here, in receive order: spawned tasks start in any order.
                let ticket = delivery
                    .message
                    .key
                    .as_deref()
                    .map(|k| self.order.ticket(k));
                let me = self.clone();
                tasks.spawn(async move {
                    let receipt = delivery.receipt.clone();
                    me.handle(delivery, ticket).await;
                    me.track(&receipt, false);
                    drop(permit);
                });
            }
        }
        self.drain(tasks).await;
    }

    fn track(&self, receipt: &Receipt, add: bool) {
        let mut set = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if add {
            set.insert(receipt.clone());
        } else {
            set.remove(receipt);
        }
    }

    /// Finish in-flight work within the grace period; hand back the rest
    /// (nack without delay) so another worker takes it at once. Nothing
    /// unfinished is acked.
    async fn drain(&self, mut tasks: JoinSet<()>) {
        let grace = Duration::from_secs(self.config.worker.shutdown_grace_seconds);
        let pending = tasks.len();
        tracing::info!(
            in_flight = pending,
            grace_s = grace.as_secs(),
            "stopped taking work; draining"
        );
        let finished =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if finished.is_err() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        let left: Vec<Receipt> = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for receipt in &left {
            match self.requests.nack(receipt, Duration::ZERO).await {
                Ok(()) | Err(QueueError::LeaseLost) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "handing a message back failed; it returns when its lease ends")
                }
            }
        }
        tracing::info!(handed_back = left.len(), "drained");
    }

    async fn handle(&self, delivery: Delivery, ticket: Option<Ticket>) {
        let started = Instant::now();
        self.metrics.active.inc();
        let outcome = self.handle_inner(&delivery, ticket, started).await;
        self.metrics.active.dec();
        self.metrics
            .processing_duration
            .with_label_values(&[outcome])
            .observe(started.elapsed().as_secs_f64());
        self.metrics.processed.with_label_values(&[outcome]).inc();
    }

    /// Work one delivery through to a settled message; returns the outcome
    /// label for metrics.
    async fn handle_inner(
        &self,
        delivery: &Delivery,
        ticket: Option<Ticket>,
        started: Instant,
    ) -> &'static str {
        let mut work = match Work::from_message(
            &delivery.message,
            self.config.worker.message_format,
            self.requests.name(),
        ) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(message_id = %delivery.message.id, error = %e, "undecodable message; dead-lettering");
                self.settle_dead(delivery, &e).await;
                return "dead_lettered";
            }
        };
        // `partitioning.*` set on the worker only (as the original's
        // StatefulSet does): the key still picks the backend instance.
        if work.partition_key.is_none() && self.config.partitioning.enabled {
            work.partition_key = self
                .config
                .partitioning
                .key_for(&work.routing_view())
                .unwrap_or_else(|e| {
                    tracing::debug!(correlation_id = %work.correlation_id, error = %e, "no partition key");
                    None
                });
        }
        // The consumer span (`process <destination>`, as the messaging
        // conventions name it) continues the trace the message carries;
        // every log line about the message names its correlation ID.
        let mut trace = TraceSpan::start(
            format!("process {}", self.requests.name()),
            SpanKind::Consumer,
            work.traceparent.as_deref(),
        );
        trace.messaging(
            &openhqm_core::telemetry::messaging_system(&self.config.queue),
            "process",
            self.requests.name(),
            &work.correlation_id,
        );
        trace.attr("openhqm.correlation_id", work.correlation_id.clone());
        trace.attr("openhqm.attempt", i64::from(delivery.attempt));
        let log_span = tracing::info_span!(
            "message",
            correlation_id = %work.correlation_id,
            trace_id = tracing::field::Empty,
        );
        if let Some(t) = trace.trace_id() {
            log_span.record("trace_id", t);
        }
        let outcome = async {
            // Leased from here on: keep the lease while waiting our turn too.
            let keeper = self.keep_lease(delivery.receipt.clone());
            let _turn = match ticket {
                Some(t) => Some(t.turn().await),
                None => None,
            };
            let outcome = self.process(delivery, &work, &trace, started).await;
            keeper.abort();
            tracing::debug!(outcome, "settled");
            outcome
        }
        .instrument(log_span)
        .await;
        trace.attr("openhqm.outcome", outcome);
        if matches!(outcome, "failed" | "timeout") {
            trace.set_error(outcome);
        }
        outcome
    }

    async fn process(
        &self,
        delivery: &Delivery,
        work: &Work,
        trace: &TraceSpan,
        started: Instant,
    ) -> &'static str {
        let id = &work.correlation_id;
        let existing = match self.store.get(id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(correlation_id = %id, error = %e, "result store unavailable; retrying later");
                self.nack(delivery, self.policy.base.max(Duration::from_secs(1)))
                    .await;
                return "deferred";
            }
        };
        if let Some(done) = existing.as_ref().filter(|r| r.status.is_final()) {
            // A redelivery of work already finished (the ack, or the response
            // publish, was lost): no second backend call, but the response
            // and the callback go out again so each is delivered at least once.
            tracing::info!(correlation_id = %id, "already final; settling duplicate delivery");
            if self.publish_response(done).await {
                self.callback(work, done).await;
                self.ack(delivery).await;
            } else {
                self.nack(delivery, Duration::from_secs(1)).await;
            }
            return "duplicate";
        }
        let mut record = existing.unwrap_or_else(|| RequestRecord::pending(id, &work.submitted_at));
        let deadline = work.deadline().map(to_instant);
        if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
            return self.expire(delivery, work, record, started).await;
        }
        record.status = Status::Processing;
        record.attempts = delivery.attempt;
        record.updated_at = now_rfc3339();
        if let Err(e) = self.store.put(&record, self.ttl).await {
            tracing::warn!(correlation_id = %id, error = %e, "could not record PROCESSING; continuing");
        }
        tracing::debug!(correlation_id = %id, attempt = delivery.attempt, "processing");

        let plan = if self.config.proxy.enabled {
            match self.proxy.as_ref().map(|p| p.plan(work)) {
                Some(Ok(plan)) => Some(plan),
                Some(Err(error)) => {
                    return self
                        .fail(delivery, work, record, &error, None, started)
                        .await
                }
                None => None,
            }
        } else {
            None
        };
        let policy = plan.as_ref().map_or(&self.policy, |p| &p.policy);
        let endpoint = plan.as_ref().map_or("processor", |p| p.name);
        // Keyed messages retry here, holding their turn, so a later message
        // with the same key cannot overtake them; others go back to the queue.
        let keyed = work.partition_key.is_some();
        let mut attempt = delivery.attempt;
        loop {
            let result = match (&plan, &self.proxy) {
                (Some(plan), Some(proxy)) => {
                    proxy
                        .call(
                            &self.http,
                            &self.config,
                            plan,
                            work,
                            &ThisAttempt {
                                attempt,
                                deadline,
                                trace,
                            },
                        )
                        .await
                }
                _ => self.run_processor(work, attempt).await,
            };
            match result {
                Attempt::Answered(resp) => {
                    tracing::debug!(correlation_id = %id, status_code = resp.status_code, attempt, "completed");
                    record.status = Status::Completed;
                    record.error = None;
                    record.attempts = attempt;
                    return if self
                        .finish(delivery, work, record, Some(resp), started)
                        .await
                    {
                        "completed"
                    } else {
                        "deferred"
                    };
                }
                Attempt::Expired => return self.expire(delivery, work, record, started).await,
                Attempt::Retry {
                    error,
                    response,
                    retry_after,
                } if policy.has_attempts_left(attempt) => {
                    self.metrics.errors.with_label_values(&["retry"]).inc();
                    self.metrics.retries.with_label_values(&[endpoint]).inc();
                    let delay = policy.delay(attempt, retry_after, &mut fastrand::Rng::new());
                    tracing::warn!(correlation_id = %id, attempt, %error, retry_in_ms = delay.as_millis() as u64, "attempt failed; will retry");
                    record.status = Status::Pending;
                    record.error = Some(error);
                    record.response = response;
                    record.attempts = attempt;
                    record.updated_at = now_rfc3339();
                    let _ = self.store.put(&record, self.ttl).await;
                    if !keyed {
                        self.nack(delivery, delay).await;
                        return "retried";
                    }
                    let wake = tokio::time::Instant::now() + delay;
                    if deadline.is_some_and(|d| d <= wake) {
                        return self.expire(delivery, work, record, started).await;
                    }
                    tokio::time::sleep_until(wake).await;
                    attempt += 1;
                }
                Attempt::Retry {
                    error, response, ..
                }
                | Attempt::Fail { error, response } => {
                    self.metrics.errors.with_label_values(&["fail"]).inc();
                    let error = if policy.has_attempts_left(attempt) {
                        error
                    } else {
                        format!("{error} (after {attempt} attempts)")
                    };
                    record.attempts = attempt;
                    return self
                        .fail(delivery, work, record, &error, response, started)
                        .await;
                }
            }
        }
    }

    /// Final FAILED: recorded, then the message goes to the DLQ.
    async fn fail(
        &self,
        delivery: &Delivery,
        work: &Work,
        mut record: RequestRecord,
        error: &str,
        response: Option<StoredResponse>,
        started: Instant,
    ) -> &'static str {
        tracing::error!(correlation_id = %work.correlation_id, attempt = record.attempts, %error, "failed; dead-lettering");
        record.status = Status::Failed;
        record.error = Some(error.to_string());
        if self.finish_record(work, record, response, started).await {
            self.settle_dead(delivery, error).await;
            "failed"
        } else {
            self.nack(delivery, Duration::from_secs(1)).await;
            "deferred"
        }
    }

    /// Final TIMEOUT: the client's deadline passed before the request could
    /// be sent. Not a failure of the backend, so not dead-lettered.
    async fn expire(
        &self,
        delivery: &Delivery,
        work: &Work,
        mut record: RequestRecord,
        started: Instant,
    ) -> &'static str {
        tracing::warn!(correlation_id = %work.correlation_id, "deadline passed before the request could be sent");
        record.status = Status::Timeout;
        record.error =
            Some("the request's deadline (metadata.timeout) passed before it could be sent".into());
        if self.finish(delivery, work, record, None, started).await {
            "timeout"
        } else {
            "deferred"
        }
    }

    async fn run_processor(&self, work: &Work, attempt: u32) -> Attempt {
        let job = Job::from_work(work, attempt)
            .map_err(|e| format!("the processor takes JSON: {e}"))
            .and_then(|job| self.route_job(work, job));
        match job {
            Ok(job) => self.processor.process(&job).await,
            Err(error) => Attempt::Fail {
                error,
                response: None,
            },
        }
    }

    /// Proxy mode off with a routing table: the matched route's body and
    /// mapped headers are what the processor gets (its endpoint, method and
    /// query have nothing to go to). No match and no fallback: unchanged.
    fn route_job(&self, work: &Work, mut job: Job) -> Result<Job, String> {
        let Some(table) = &self.routing else {
            return Ok(job);
        };
        if matches!(work.body, WorkBody::Captured(_)) {
            return Ok(job);
        }
        match table.route(&work.routing_view()) {
            Ok(routed) => {
                tracing::debug!(
                    route = routed.route.as_deref().unwrap_or("fallback"),
                    "routed for the processor"
                );
                job.payload = routed.body;
                for (name, value) in routed.headers {
                    job.headers.insert(name.to_ascii_lowercase(), value);
                }
                Ok(job)
            }
            Err(RouteError::NoRoute) => Ok(job),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Extend the lease while the work goes on, so a slow backend call is not
    /// redelivered to another worker.
    fn keep_lease(&self, receipt: Receipt) -> tokio::task::JoinHandle<()> {
        let queue = self.requests.clone();
        let lease = self.lease;
        // In the message's log span: its warnings name the correlation ID.
        tokio::spawn(
            async move {
                let every = (lease / 3).max(Duration::from_millis(100));
                loop {
                    tokio::time::sleep(every).await;
                    match queue.extend_lease(&receipt, lease).await {
                        Ok(()) => {}
                        Err(QueueError::LeaseLost) => {
                            tracing::warn!(
                                "lease lost while processing; the message may be processed twice"
                            );
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "lease extension failed; will try again")
                        }
                    }
                }
            }
            .in_current_span(),
        )
    }

    /// Acceptance -> final outcome, by the route that captured the request.
    fn observe_latency(&self, work: &Work) {
        let Ok(submitted) = humantime::parse_rfc3339(&work.submitted_at) else {
            return;
        };
        let Ok(age) = std::time::SystemTime::now().duration_since(submitted) else {
            return;
        };
        let route = match &work.body {
            WorkBody::Captured(req) => req.route.as_deref().unwrap_or("unnamed"),
            WorkBody::Api { .. } => "api",
            WorkBody::Foreign { .. } => "foreign",
        };
        let route = self.metrics.request_routes.get(route);
        self.metrics
            .request_latency
            .with_label_values(&[&route])
            .observe(age.as_secs_f64());
    }

    /// Record the final outcome, publish it to the response queue and call
    /// the client's callback; true when stored and published (or another
    /// worker's final outcome was already stored: it publishes its own), so
    /// the message may be settled.
    async fn finish_record(
        &self,
        work: &Work,
        mut record: RequestRecord,
        response: Option<StoredResponse>,
        started: Instant,
    ) -> bool {
        let now = now_rfc3339();
        record.response = response;
        record.processing_time_ms =
            Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        record.completed_at = Some(now.clone());
        record.updated_at = now;
        match self.store.put(&record, self.ttl).await {
            Ok(PutOutcome::Written) => {
                self.observe_latency(work);
                if !self.publish_response(&record).await {
                    return false;
                }
                self.callback(work, &record).await;
                true
            }
            Ok(PutOutcome::KeptFinal) => true,
            Err(e) => {
                tracing::warn!(correlation_id = %record.correlation_id, error = %e, "could not store the result; will redo the work");
                false
            }
        }
    }

    /// One signed call to the client's callback URL per final outcome. A
    /// receiver that stays down does not hold the queue: after the retries
    /// the failure is logged and counted, and the result stays fetchable.
    async fn callback(&self, work: &Work, record: &RequestRecord) {
        let (Some(url), Some(sender)) = (work.callback_url(), &self.callbacks) else {
            return;
        };
        let result = match sender.deliver(url, record).await {
            Ok(()) => "delivered",
            Err(e) => {
                tracing::warn!(correlation_id = %record.correlation_id, error = %e, "completion callback not delivered");
                "failed"
            }
        };
        self.metrics.callbacks.with_label_values(&[result]).inc();
    }

    /// Publish a final outcome to the response queue (when enabled), as the
    /// same JSON the API's response endpoint serves.
    async fn publish_response(&self, record: &RequestRecord) -> bool {
        let Some(queue) = &self.responses else {
            return true;
        };
        let message = Message {
            id: record.correlation_id.clone(),
            body: result_json(record).to_string().into_bytes(),
            attributes: [("status".to_string(), record.status.as_str().to_string())]
                .into_iter()
                .collect(),
            key: None,
        };
        match queue.publish(message).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(correlation_id = %record.correlation_id, error = %e, "could not publish the response; will retry");
                false
            }
        }
    }

    /// Store a final outcome and settle the message: ack when recorded,
    /// otherwise hand it back to be done again. True when acked.
    async fn finish(
        &self,
        delivery: &Delivery,
        work: &Work,
        record: RequestRecord,
        response: Option<StoredResponse>,
        started: Instant,
    ) -> bool {
        if self.finish_record(work, record, response, started).await {
            self.ack(delivery).await;
            true
        } else {
            self.nack(delivery, Duration::from_secs(1)).await;
            false
        }
    }

    async fn settle_dead(&self, delivery: &Delivery, error: &str) {
        match dead_letter(self.requests.as_ref(), self.dlq.as_ref(), delivery, error).await {
            Ok(()) => self
                .metrics
                .dlq_published
                .with_label_values(&[self.dlq.name()])
                .inc(),
            Err(e) => {
                tracing::warn!(error = %e, "dead-lettering failed; the message will be redelivered")
            }
        }
    }

    async fn ack(&self, delivery: &Delivery) {
        match self.requests.ack(&delivery.receipt).await {
            Ok(()) => {}
            Err(QueueError::LeaseLost) => {
                tracing::warn!(message_id = %delivery.message.id, "ack after the lease ended; another worker has it")
            }
            Err(e) => {
                tracing::warn!(message_id = %delivery.message.id, error = %e, "ack failed; the message will be redelivered")
            }
        }
    }

    async fn nack(&self, delivery: &Delivery, delay: Duration) {
        if let Err(e) = self.requests.nack(&delivery.receipt, delay).await {
            tracing::warn!(message_id = %delivery.message.id, error = %e, "nack failed; the message returns when its lease ends");
        }
    }
}
