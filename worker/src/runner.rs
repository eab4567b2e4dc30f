//! The consume loop: receive, process with bounded concurrency, settle each
//! message (ack, nack with backoff, or dead-letter) only after its outcome is
//! recorded, and hand work back on shutdown.

use crate::backend_call::{self, Attempt};
use crate::processor;
use openhqm_core::config::Config;
use openhqm_core::envelope::{Envelope, Source};
use openhqm_core::model::{result_json, RequestRecord, Status, StoredResponse};
use openhqm_core::queue::{dead_letter, Delivery, Message, Queue, QueueError, Receipt};
use openhqm_core::retry::RetryPolicy;
use openhqm_core::store::{PutOutcome, ResultStore};
use openhqm_core::time::now_rfc3339;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

pub struct Worker {
    pub config: Config,
    pub requests: Arc<dyn Queue>,
    pub dlq: Arc<dyn Queue>,
    /// Where final outcomes are published, when `publishes_responses`.
    pub responses: Option<Arc<dyn Queue>>,
    pub store: Arc<dyn ResultStore>,
    pub http: reqwest::Client,
    pub policy: RetryPolicy,
    pub lease: Duration,
    pub ttl: Duration,
    /// Receipts of messages being worked on, to hand back on shutdown.
    in_flight: Mutex<HashSet<Receipt>>,
}

/// How long one receive call waits for work; also how quickly a stop
/// request is noticed.
const RECEIVE_WAIT: Duration = Duration::from_millis(500);

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        requests: Arc<dyn Queue>,
        dlq: Arc<dyn Queue>,
        responses: Option<Arc<dyn Queue>>,
        store: Arc<dyn ResultStore>,
        http: reqwest::Client,
        policy: RetryPolicy,
    ) -> Worker {
        Worker {
            lease: Duration::from_secs(config.worker.lease_seconds),
            ttl: Duration::from_secs(config.cache.ttl_seconds),
            config,
            requests,
            dlq,
            responses,
            store,
            http,
            policy,
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
                let me = self.clone();
                tasks.spawn(async move {
                    let receipt = delivery.receipt.clone();
                    me.handle(delivery).await;
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

    async fn handle(&self, delivery: Delivery) {
        let started = Instant::now();
        let env = match Envelope::decode(&delivery.message.body) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(message_id = %delivery.message.id, error = %e, "undecodable message; dead-lettering");
                self.settle_dead(&delivery, &e).await;
                return;
            }
        };
        let id = env.correlation_id.clone();
        let existing = match self.store.get(&id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(correlation_id = %id, error = %e, "result store unavailable; retrying later");
                self.nack(&delivery, self.policy.base.max(Duration::from_secs(1)))
                    .await;
                return;
            }
        };
        if let Some(done) = existing.as_ref().filter(|r| r.status.is_final()) {
            // A redelivery of work already finished (the ack, or the response
            // publish, was lost): no second backend call, but the response is
            // published again so it is delivered at least once.
            tracing::info!(correlation_id = %id, "already final; settling duplicate delivery");
            if self.publish_response(done).await {
                self.ack(&delivery).await;
            } else {
                self.nack(&delivery, Duration::from_secs(1)).await;
            }
            return;
        }
        let mut record = existing.unwrap_or_else(|| RequestRecord::pending(&id, &env.submitted_at));
        record.status = Status::Processing;
        record.attempts = delivery.attempt;
        record.updated_at = now_rfc3339();
        if let Err(e) = self.store.put(&record, self.ttl).await {
            tracing::warn!(correlation_id = %id, error = %e, "could not record PROCESSING; continuing");
        }
        tracing::info!(correlation_id = %id, attempt = delivery.attempt, "processing");

        let keeper = self.keep_lease(delivery.receipt.clone());
        let attempt = self.execute(&env, delivery.attempt).await;
        keeper.abort();

        let elapsed = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match attempt {
            Attempt::Answered(resp) => {
                tracing::info!(correlation_id = %id, status_code = resp.status_code, elapsed_ms = elapsed, "completed");
                record.status = Status::Completed;
                record.error = None;
                self.finish(&delivery, record, Some(resp), elapsed).await;
            }
            Attempt::Retry {
                error,
                response,
                retry_after,
            } if self.policy.has_attempts_left(delivery.attempt) => {
                let mut rng = fastrand::Rng::new();
                let delay = self.policy.delay(delivery.attempt, retry_after, &mut rng);
                tracing::warn!(correlation_id = %id, attempt = delivery.attempt, %error, retry_in_ms = delay.as_millis() as u64, "attempt failed; will retry");
                record.status = Status::Pending;
                record.error = Some(error);
                record.response = response;
                record.updated_at = now_rfc3339();
                let _ = self.store.put(&record, self.ttl).await;
                self.nack(&delivery, delay).await;
            }
            Attempt::Retry {
                error, response, ..
            }
            | Attempt::Fail { error, response } => {
                let error = if self.policy.has_attempts_left(delivery.attempt) {
                    error
                } else {
                    format!("{error} (after {} attempts)", delivery.attempt)
                };
                tracing::error!(correlation_id = %id, attempt = delivery.attempt, %error, "failed; dead-lettering");
                record.status = Status::Failed;
                record.error = Some(error.clone());
                if self.finish_record(record, response, elapsed).await {
                    self.settle_dead(&delivery, &error).await;
                } else {
                    self.nack(&delivery, Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn execute(&self, env: &Envelope, attempt: u32) -> Attempt {
        if self.config.proxy.enabled {
            let Some(endpoint) = self
                .config
                .resolve_endpoint(env.metadata.endpoint.as_deref())
            else {
                return Attempt::Fail {
                    error: "the message names an endpoint that is not configured".into(),
                    response: None,
                };
            };
            return match backend_call::build(&self.config, env, &endpoint, attempt) {
                Ok(out) => {
                    backend_call::send(
                        &self.http,
                        out,
                        &self.policy,
                        self.config.proxy.max_response_size,
                    )
                    .await
                }
                Err(e) => Attempt::Fail {
                    error: e,
                    response: None,
                },
            };
        }
        let payload =
            match env.source {
                Source::Api => env.payload.clone().unwrap_or_default(),
                Source::Filter => {
                    let body = env.request.as_ref().map(|r| r.body_bytes()).transpose();
                    match body.ok().flatten().map(|b| serde_json::from_slice(&b)) {
                        Some(Ok(v)) => v,
                        _ => return Attempt::Fail {
                            error:
                                "the example processor takes a JSON body {\"operation\", \"data\"}"
                                    .into(),
                            response: None,
                        },
                    }
                }
            };
        match processor::run(&payload) {
            Ok(out) => Attempt::Answered(StoredResponse::new(
                200,
                vec![("content-type".into(), "application/json".into())],
                out.to_string().as_bytes(),
            )),
            Err(error) => Attempt::Fail {
                error,
                response: None,
            },
        }
    }

    /// Extend the lease while the work goes on, so a slow backend call is not
    /// redelivered to another worker.
    fn keep_lease(&self, receipt: Receipt) -> tokio::task::JoinHandle<()> {
        let queue = self.requests.clone();
        let lease = self.lease;
        tokio::spawn(async move {
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
                    Err(e) => tracing::warn!(error = %e, "lease extension failed; will try again"),
                }
            }
        })
    }

    /// Record the final outcome; true when it is stored (or a final outcome
    /// was already there).
    /// Record the final outcome and publish it to the response queue; true
    /// when both are done (or another worker's final outcome was already
    /// stored: it publishes its own), so the message may be settled.
    async fn finish_record(
        &self,
        mut record: RequestRecord,
        response: Option<StoredResponse>,
        elapsed: u64,
    ) -> bool {
        let now = now_rfc3339();
        record.response = response;
        record.processing_time_ms = Some(elapsed);
        record.completed_at = Some(now.clone());
        record.updated_at = now;
        match self.store.put(&record, self.ttl).await {
            Ok(PutOutcome::Written) => self.publish_response(&record).await,
            Ok(PutOutcome::KeptFinal) => true,
            Err(e) => {
                tracing::warn!(correlation_id = %record.correlation_id, error = %e, "could not store the result; will redo the work");
                false
            }
        }
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

    async fn finish(
        &self,
        delivery: &Delivery,
        record: RequestRecord,
        response: Option<StoredResponse>,
        elapsed: u64,
    ) {
        if self.finish_record(record, response, elapsed).await {
            self.ack(delivery).await;
        } else {
            self.nack(delivery, Duration::from_secs(1)).await;
        }
    }

    async fn settle_dead(&self, delivery: &Delivery, error: &str) {
        if let Err(e) =
            dead_letter(self.requests.as_ref(), self.dlq.as_ref(), delivery, error).await
        {
            tracing::warn!(error = %e, "dead-lettering failed; the message will be redelivered");
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
