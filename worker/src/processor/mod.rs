//! Processing a message in the worker instead of forwarding it to a backend
//! (proxy mode off): the [`Processor`] trait for processing of your own, the
//! built-in example ([`ExampleProcessor`]: `{"operation": "echo" |
//! "uppercase" | "reverse" | "error", "data": ...}`, as in the original), and
//! [`CommandProcessor`], which hands each message to a long-lived child
//! process in any language.

mod command;

pub use command::CommandProcessor;

use crate::backend_call::Attempt;
use crate::work::Work;
use openhqm_core::model::StoredResponse;
use openhqm_core::time::now_rfc3339;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Processing of your own, embedded in your own worker binary (see
/// `worker/examples/custom_processor.rs` and
/// `openhqm_worker::main_with_processor`).
#[async_trait::async_trait]
pub trait Processor: Send + Sync + 'static {
    /// One attempt at one message. Answered = final success (stored as the
    /// result); Retry = transient (retried with backoff, then
    /// dead-lettered); Fail = permanent.
    async fn process(&self, job: &Job) -> Attempt;
}

/// One message, as a processor sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub correlation_id: String,
    /// 1 on the first delivery, then 2, 3, ...
    pub attempt: u32,
    /// Submit API: the `payload`; a captured request: its body, as JSON.
    pub payload: Value,
    /// Submit API: the client's `headers`; a captured request: its (text)
    /// headers, names lowercased, repeated ones joined with ", ".
    pub headers: BTreeMap<String, String>,
    /// The submission's `metadata` (`priority`, `endpoint`, `callback_url`,
    /// ...), as an object.
    pub metadata: Value,
}

impl Job {
    /// The job for one attempt at a message; an error (for a permanent
    /// failure) when a captured request's body is not JSON.
    pub(crate) fn from_work(work: &Work, attempt: u32) -> Result<Job, String> {
        Ok(Job {
            correlation_id: work.correlation_id.clone(),
            attempt,
            payload: work.payload()?,
            headers: work.headers(),
            metadata: serde_json::to_value(&work.metadata).unwrap_or_else(|_| json!({})),
        })
    }
}

/// The built-in example processor: [`run`], answering 200 application/json.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExampleProcessor;

#[async_trait::async_trait]
impl Processor for ExampleProcessor {
    async fn process(&self, job: &Job) -> Attempt {
        match run(&job.payload) {
            Ok(out) => Attempt::Answered(json_response(200, &out)),
            Err(error) => Attempt::Fail {
                error,
                response: None,
            },
        }
    }
}

/// A JSON answer as stored for the client.
pub(crate) fn json_response(status: u16, body: &Value) -> StoredResponse {
    StoredResponse::new(
        status,
        vec![("content-type".into(), "application/json".into())],
        body.to_string().as_bytes(),
    )
}

/// Output on success; on failure a message for the client. Failures of the
/// example processor are deterministic, so they are not retried.
pub fn run(payload: &Value) -> Result<Value, String> {
    let operation = payload
        .get("operation")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let data = payload
        .get("data")
        .cloned()
        .unwrap_or(Value::String(String::new()));
    let text = || match &data {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let output = match operation {
        "echo" => data.clone(),
        "uppercase" => Value::String(text().to_uppercase()),
        "reverse" => Value::String(text().chars().rev().collect()),
        "error" => return Err("Test error".into()),
        other => Value::String(format!("Unknown operation: {other}")),
    };
    Ok(json!({"output": output, "processed_at": now_rfc3339()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations() {
        assert_eq!(
            run(&json!({"operation": "echo", "data": {"a": 1}})).unwrap()["output"],
            json!({"a": 1})
        );
        assert_eq!(
            run(&json!({"operation": "uppercase", "data": "abc"})).unwrap()["output"],
            "ABC"
        );
        assert_eq!(
            run(&json!({"operation": "reverse", "data": "héllo"})).unwrap()["output"],
            "olléh"
        );
        assert_eq!(
            run(&json!({"operation": "error"})).unwrap_err(),
            "Test error"
        );
        assert_eq!(
            run(&json!({"operation": "x"})).unwrap()["output"],
            "Unknown operation: x"
        );
        assert_eq!(
            run(&json!({})).unwrap()["output"],
            "Unknown operation: unknown"
        );
    }

    #[tokio::test]
    async fn example_processor_answers_json() {
        let job = Job {
            correlation_id: "c".into(),
            attempt: 1,
            payload: json!({"operation": "uppercase", "data": "abc"}),
            headers: BTreeMap::new(),
            metadata: json!({}),
        };
        let Attempt::Answered(resp) = ExampleProcessor.process(&job).await else {
            panic!("expected an answer")
        };
        assert_eq!(resp.status_code, 200);
        assert_eq!(resp.header("content-type"), Some("application/json"));
        let body: Value = serde_json::from_slice(&resp.body_bytes().unwrap()).unwrap();
        assert_eq!(body["output"], "ABC");
        let job = Job {
            payload: json!({"operation": "error"}),
            ..job
        };
        match ExampleProcessor.process(&job).await {
            Attempt::Fail { error, .. } => assert_eq!(error, "Test error"),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn jobs_from_envelopes() {
        use openhqm_core::envelope::{Envelope, HttpRequest, Metadata, Source, ENVELOPE_VERSION};
        let job_of =
            |env: &Envelope, attempt| Job::from_work(&Work::from_envelope(env.clone()), attempt);
        let api = Envelope {
            version: ENVELOPE_VERSION,
            correlation_id: "67e55044-10b1-426f-9247-bb680e5fe0c8".into(),
            submitted_at: "t".into(),
            source: Source::Api,
            metadata: Metadata {
                priority: Some("high".into()),
                extra: [("callback_url".to_string(), json!("https://h/cb"))]
                    .into_iter()
                    .collect(),
                ..Default::default()
            },
            traceparent: None,
            payload: Some(json!({"operation": "echo", "data": 1})),
            headers: [("x-tenant".to_string(), "t1".to_string())]
                .into_iter()
                .collect(),
            request: None,
            partition_key: None,
        };
        let job = job_of(&api, 2).unwrap();
        assert_eq!(job.attempt, 2);
        assert_eq!(job.payload, json!({"operation": "echo", "data": 1}));
        assert_eq!(job.headers["x-tenant"], "t1");
        assert_eq!(
            job.metadata,
            json!({"priority": "high", "callback_url": "https://h/cb"})
        );
        let (body, body_encoding) = openhqm_core::model::encode_body(br#"{"a":[1]}"#);
        let mut captured = api.clone();
        captured.source = Source::Filter;
        captured.payload = None;
        captured.metadata = Metadata::default();
        captured.request = Some(HttpRequest {
            method: "POST".into(),
            path: "/p".into(),
            query: None,
            authority: None,
            headers: vec![("Accept".into(), "a".into()), ("accept".into(), "b".into())],
            headers_b64: vec![],
            body,
            body_encoding,
            route: None,
        });
        let job = job_of(&captured, 1).unwrap();
        assert_eq!(job.payload, json!({"a": [1]}));
        assert_eq!(job.headers["accept"], "a, b");
        assert_eq!(job.metadata, json!({}));
        let (body, body_encoding) = openhqm_core::model::encode_body(b"plain");
        if let Some(r) = captured.request.as_mut() {
            r.body = body;
            r.body_encoding = body_encoding;
        }
        assert!(job_of(&captured, 1).unwrap_err().contains("not JSON"));
    }
}
