//! `openhqm-worker`: consumes the request queue and calls the backend (proxy
//! mode) or runs the example processor, at a pace the backend can bear.

mod backend_call;
mod processor;
mod runner;

use openhqm_core::retry::RetryPolicy;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("openhqm-worker: {msg}");
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    let config = openhqm_core::load_config_or_exit("openhqm-worker");
    openhqm_core::telemetry::init_logging(&config.monitoring);

    let policy = RetryPolicy::from_config(&config.worker)
        .unwrap_or_else(|e| fail(format!("worker retry settings: {e}")));
    let backend = openhqm_core::open_queue_backend(&config).unwrap_or_else(|e| fail(e));
    let requests = backend
        .open(&config.queue.request_queue_name)
        .await
        .unwrap_or_else(|e| {
            fail(format!(
                "cannot open queue `{}`: {e}",
                config.queue.request_queue_name
            ))
        });
    let dlq = backend
        .open(&config.queue.dlq_name)
        .await
        .unwrap_or_else(|e| {
            fail(format!(
                "cannot open queue `{}`: {e}",
                config.queue.dlq_name
            ))
        });
    let store = openhqm_core::open_result_store(&config).unwrap_or_else(|e| fail(e));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(config.worker.concurrency)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_else(|e| fail(format!("cannot build the HTTP client: {e}")));

    tracing::info!(
        queue = requests.name(),
        proxy = config.proxy.enabled,
        concurrency = config.worker.concurrency,
        "openhqm-worker started"
    );
    let purge_store = store.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let _ = purge_store.purge_expired().await;
        }
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        openhqm_core::shutdown::signal().await;
        let _ = stop_tx.send(true);
    });
    let worker = Arc::new(runner::Worker::new(
        config,
        requests.clone(),
        dlq.clone(),
        store,
        http,
        policy,
    ));
    worker.run(stop_rx).await;
    let _ = requests.close().await;
    let _ = dlq.close().await;
    tracing::info!("openhqm-worker stopped");
}
