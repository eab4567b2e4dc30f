//! `openhqm-bridge` as a library: accepts requests (from the filter or the public API),
//! makes them durable on the queue, and serves their status and results.

mod admin;
mod api;
mod cli;
mod cors;
mod error;
mod idempotency;
mod metrics;
mod prefer;

use axum::routing::{get, post};
use axum::Router;
use openhqm_core::config::Config;
use openhqm_core::queue::{Queue, QueueBackend, QueueError};
use openhqm_core::startup::{open_queue_or_exit, spawn_purge_expired};
use openhqm_core::store::ResultStore;
use std::sync::Arc;
use std::time::Duration;

pub struct AppState {
    pub config: Config,
    pub requests: Arc<dyn Queue>,
    pub store: Arc<dyn ResultStore>,
    pub ttl: Duration,
    pub metrics: Arc<metrics::Metrics>,
    backend: Arc<dyn QueueBackend>,
    /// The dead-letter queue, opened on the first admin call that needs it.
    dlq: tokio::sync::OnceCell<Arc<dyn Queue>>,
}

impl AppState {
    pub fn new(
        config: Config,
        backend: Arc<dyn QueueBackend>,
        requests: Arc<dyn Queue>,
        store: Arc<dyn ResultStore>,
    ) -> AppState {
        AppState {
            ttl: Duration::from_secs(config.cache.ttl_seconds),
            config,
            requests,
            store,
            metrics: Arc::new(metrics::Metrics::new()),
            backend,
            dlq: tokio::sync::OnceCell::new(),
        }
    }

    /// The dead-letter queue (`queue.dlq_name`); a failed open is tried
    /// again on the next call.
    pub async fn dlq(&self) -> Result<Arc<dyn Queue>, QueueError> {
        self.dlq
            .get_or_try_init(|| self.backend.open(&self.config.queue.dlq_name))
            .await
            .cloned()
    }
}

fn router(state: Arc<AppState>) -> Router {
    let metrics = state.metrics.clone();
    let cors = cors::layer(&state.config.server.cors);
    let app = Router::new()
        .merge(admin::routes(state.clone()))
        .route("/api/v1/submit", post(api::submit))
        .route("/api/v1/status/{id}", get(api::status))
        .route("/api/v1/response/{id}", get(api::response))
        .route("/internal/v1/capture", post(api::capture))
        .route("/health", get(api::health))
        .route("/health/ready", get(api::health))
        .route("/health/live", get(api::live))
        .route("/metrics", get(api::metrics))
        .route("/openapi.json", get(api::openapi))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::track,
        ))
        // Every answer is JSON, also the extractors' rejections.
        .layer(axum::middleware::from_fn(error::json_errors))
        .with_state(state);
    // Outermost: a preflight is answered before routing (which would 405),
    // and CORS headers go on error answers too.
    match cors {
        Some(layer) => app.layer(layer),
        None => app,
    }
}

const PROGRAM: &str = "openhqm-bridge";

fn fail(msg: impl std::fmt::Display) -> ! {
    openhqm_core::startup::fail(PROGRAM, msg)
}

/// Run the program with the process's configuration (`--config`, the
/// environment); what the `openhqm-bridge` binary does. Call it from your
/// own `main` after registering custom backends (`openhqm_core::registry`).
pub fn main() {
    openhqm_core::startup::run_program_with_commands(
        PROGRAM,
        &["dlq"],
        cli::HELP,
        |config, command| async move {
            if command.is_empty() {
                run(config).await
            } else {
                std::process::exit(cli::run(config, &command[1..]).await)
            }
        },
    );
}

async fn run(config: openhqm_core::config::Config) {
    // Everything that can be wrong with the configuration or the broker is
    // found before the port is bound.
    let backend = openhqm_core::open_queue_backend(&config).unwrap_or_else(|e| fail(e));
    let requests =
        open_queue_or_exit(PROGRAM, backend.as_ref(), &config.queue.request_queue_name).await;
    let store = openhqm_core::open_result_store(&config).unwrap_or_else(|e| fail(e));
    // Strict, unlike the worker's admin port: clients and Envoy's bridge
    // cluster target this port, so a fallback would only hide the problem.
    let addr = format!("{}:{}", config.server.host, config.server.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .unwrap_or_else(|e| {
            fail(format!(
                "cannot listen on {addr} (server.host/server.port): {e}"
            ))
        });

    let state = Arc::new(AppState::new(config, backend, requests, store.clone()));
    spawn_purge_expired(store);
    tracing::info!(%addr, queue = state.requests.name(), "openhqm-bridge listening");
    // Checked by Config::validate already; this cannot fail here.
    let limits =
        openhqm_core::server::Limits::from_config(&state.config.server).unwrap_or_else(|e| fail(e));
    openhqm_core::server::serve(
        listener,
        router(state.clone()),
        limits,
        openhqm_core::shutdown::signal(),
    )
    .await;
    let _ = state.requests.close().await;
    if let Some(dlq) = state.dlq.get() {
        let _ = dlq.close().await;
    }
    tracing::info!("openhqm-bridge stopped");
}
