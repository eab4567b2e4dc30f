//! A worker with processing of its own: one type implementing
//! `openhqm_worker::Processor`, handed to `main_with_processor`. Every
//! message (proxy mode off) goes to it; the worker does the rest (leases,
//! retries with backoff, dead letters, results, callbacks).
//!
//! This one counts words: submit `{"payload": {"text": "a b a"}}` and the
//! result is `{"words": 3, "distinct": 2, "top": [["a", 2], ["b", 1]]}`.
//!
//! ```sh
//! cargo run -p openhqm-worker --example custom_processor
//! ```

use openhqm_worker::{Attempt, Job, Processor, StoredResponse};
use std::collections::BTreeMap;
use std::sync::Arc;

struct WordCount;

#[async_trait::async_trait]
impl Processor for WordCount {
    async fn process(&self, job: &Job) -> Attempt {
        let Some(text) = job.payload.get("text").and_then(|t| t.as_str()) else {
            // Retrying will not make the text appear: a permanent failure.
            return Attempt::Fail {
                error: "the payload needs a `text` string".into(),
                response: None,
            };
        };
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for word in text.split_whitespace() {
            *counts.entry(word.to_lowercase()).or_default() += 1;
        }
        let mut top: Vec<(String, u64)> = counts.clone().into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(10);
        let body = serde_json::json!({
            "words": counts.values().sum::<u64>(),
            "distinct": counts.len(),
            "top": top,
        });
        Attempt::Answered(StoredResponse::new(
            200,
            vec![("content-type".into(), "application/json".into())],
            body.to_string().as_bytes(),
        ))
    }
}

fn main() {
    openhqm_worker::main_with_processor(Arc::new(WordCount));
}
