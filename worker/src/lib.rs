//! `openhqm-worker` as a library: consumes the request queue and calls the backend (proxy
//! mode) or runs the example processor, at a pace the backend can bear.

mod admin;
mod backend_call;
pub mod callback;
pub mod flow;
mod processor;
mod proxy;
pub mod routing;
mod runner;
mod work;

pub use backend_call::Attempt;
pub use openhqm_core::model::StoredResponse;
pub use processor::{CommandProcessor, ExampleProcessor, Job, Processor};

use openhqm_core::retry::RetryPolicy;
use openhqm_core::startup::{open_queue_or_exit, spawn_purge_expired};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

const PROGRAM: &str = "openhqm-worker";

fn fail(msg: impl std::fmt::Display) -> ! {
    openhqm_core::startup::fail(PROGRAM, msg)
}

/// Run the program with the process's configuration (`--config`, the
/// environment); what the `openhqm-worker` binary does. Call it from your
/// own `main` after registering custom backends (`openhqm_core::registry`).
pub fn main() {
    openhqm_core::startup::run_worker_program(PROGRAM, run);
}

/// The processor given to [`main_with_processor`], if any.
static CUSTOM: OnceLock<Arc<dyn Processor>> = OnceLock::new();

/// Run the program, like [`main`], with your own [`Processor`] handling
/// every message when proxy mode is off (instead of the example processor
/// or `worker.command`). See `worker/examples/custom_processor.rs`.
pub fn main_with_processor(processor: Arc<dyn Processor>) {
    // Only the first registration counts; `main` runs once per process.
    let _ = CUSTOM.set(processor);
    main();
}

/// The processor registered with [`main_with_processor`].
pub(crate) fn custom_processor() -> Option<Arc<dyn Processor>> {
    CUSTOM.get().cloned()
}

async fn run(config: openhqm_core::config::Config) {
    let policy = RetryPolicy::from_config(&config.worker)
        .unwrap_or_else(|e| fail(format!("worker retry settings: {e}")));
    let backend = openhqm_core::open_queue_backend(&config).unwrap_or_else(|e| fail(e));
    let requests =
        open_queue_or_exit(PROGRAM, backend.as_ref(), &config.queue.request_queue_name).await;
    let dlq = open_queue_or_exit(PROGRAM, backend.as_ref(), &config.queue.dlq_name).await;
    let responses = if config.publishes_responses() {
        Some(open_queue_or_exit(PROGRAM, backend.as_ref(), &config.queue.response_queue_name).await)
    } else {
        None
    };
    let store = openhqm_core::open_result_store(&config).unwrap_or_else(|e| fail(e));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(config.worker.concurrency)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_else(|e| fail(format!("cannot build the HTTP client: {e}")));
    let metrics = Arc::new(admin::Metrics::new());
    // Everything that can be wrong with the configuration fails here, before
    // a message is taken.
    let routing = routing::RoutingTable::from_config(&config).unwrap_or_else(|e| fail(e));
    // Proxy mode routes to endpoints; otherwise the table still reshapes
    // the payload the processor gets (as the original's processor did).
    let (proxy, local_routing) = if config.proxy.enabled {
        let proxy =
            proxy::Proxy::new(&config, metrics.clone(), routing).unwrap_or_else(|e| fail(e));
        (Some(proxy), None)
    } else {
        (None, routing)
    };
    let processor = choose_processor(&config).unwrap_or_else(|e| fail(e));
    // Its own client: callbacks must not follow redirects off the allow-list.
    let callbacks = callback::http_client(&config.callbacks)
        .and_then(|client| callback::CallbackSender::new(client, &config.callbacks))
        .unwrap_or_else(|e| fail(e));
    let admin = if config.worker.admin_port != 0 {
        let addr = admin::serve(&config, metrics.clone(), requests.clone(), dlq.clone())
            .await
            .unwrap_or_else(|e| fail(e));
        addr.to_string()
    } else {
        "off".to_string()
    };

    tracing::info!(
        queue = requests.name(),
        proxy = config.proxy.enabled,
        concurrency = config.worker.concurrency,
        admin = %admin,
        "openhqm-worker started"
    );
    spawn_purge_expired(store.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        openhqm_core::shutdown::signal().await;
        let _ = stop_tx.send(true);
    });
    let worker = Arc::new(runner::Worker::new(runner::Parts {
        config,
        requests: requests.clone(),
        dlq: dlq.clone(),
        responses,
        store,
        http,
        policy,
        metrics,
        proxy,
        routing: local_routing,
        processor,
        callbacks,
    }));
    // Dead letters must not be dropped by a broker that keeps only what is
    // subscribed to (MQTT); nothing is consumed until that is assured.
    if retain_until_done(dlq.as_ref(), stop_rx.clone()).await {
        worker.run(stop_rx).await;
    }
    let _ = requests.close().await;
    let _ = dlq.close().await;
    tracing::info!("openhqm-worker stopped");
}

/// The processor used when proxy mode is off: one registered in code
/// (`main_with_processor`), else `worker.command`, else the built-in example.
fn choose_processor(
    config: &openhqm_core::config::Config,
) -> Result<Arc<dyn processor::Processor>, String> {
    if let Some(custom) = custom_processor() {
        return Ok(custom);
    }
    if !config.worker.command.is_empty() {
        let command = CommandProcessor::start(
            config.worker.command.clone(),
            config.worker.command_processes,
            config.worker.command_timeout(),
        )
        .map_err(|e| format!("worker.command: {e}"))?;
        return Ok(Arc::new(command));
    }
    Ok(Arc::new(processor::ExampleProcessor))
}

/// Call `retain_unconsumed` on a publish-only queue until it succeeds (the
/// broker may still be starting) or a stop is requested; false when stopped.
async fn retain_until_done(
    queue: &dyn openhqm_core::queue::Queue,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let mut pause = Duration::from_millis(500);
    loop {
        match queue.retain_unconsumed().await {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!(queue = queue.name(), error = %e, retry_in_ms = pause.as_millis() as u64, "cannot secure the queue yet")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return false,
        }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}
