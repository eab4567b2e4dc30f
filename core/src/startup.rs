//! What the bridge and worker binaries share at start-up: failing clearly
//! before a port is bound, opening queues, and housekeeping tasks.

use crate::config::Config;
use crate::queue::{Queue, QueueBackend};
use crate::store::ResultStore;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Print `program: msg` and exit 2 (configuration or start-up error).
pub fn fail(program: &str, msg: impl Display) -> ! {
    eprintln!("{program}: {msg}");
    std::process::exit(2);
}

/// What a program's `main` does: read the configuration (exit 2 on error,
/// before anything binds a port), set up logging, and run `body` on a
/// multi-threaded tokio runtime.
pub fn run_program<F, Fut>(program: &str, body: F)
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = ()>,
{
    run_program_with_commands(program, &[], "", |config, _| body(config));
}

/// [`run_program`] for a program with subcommands (`commands`, described
/// by `help` in `--help`): `body` also gets the subcommand and its
/// arguments, empty when none was named. Logging is set up only to run the
/// server: a subcommand's output is its own.
pub fn run_program_with_commands<F, Fut>(program: &str, commands: &[&str], help: &str, body: F)
where
    F: FnOnce(Config, Vec<String>) -> Fut,
    Fut: Future<Output = ()>,
{
    let (config, command) = crate::load_program_or_exit(program, commands, help);
    run_loaded(program, config, command, body);
}

/// [`run_program`] for the worker, which also takes the original's
/// positional arguments (`crate::original_args`).
pub fn run_worker_program<F, Fut>(program: &str, body: F)
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = ()>,
{
    let config = crate::load_worker_or_exit(program);
    run_loaded(program, config, Vec::new(), |config, _| body(config));
}

fn run_loaded<F, Fut>(program: &str, config: Config, command: Vec<String>, body: F)
where
    F: FnOnce(Config, Vec<String>) -> Fut,
    Fut: Future<Output = ()>,
{
    if command.is_empty() {
        crate::telemetry::init_logging(&config.monitoring);
        log_startup_notes(program, &config);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(program, format!("cannot start the async runtime: {e}")));
    let serving = command.is_empty();
    let monitoring = config.monitoring.clone();
    runtime.block_on(async move {
        if serving {
            if let Err(e) = crate::telemetry::start_tracing(&monitoring, program) {
                fail(program, e);
            }
        }
        body(config, command).await;
        crate::telemetry::flush_tracing().await;
    });
}

/// Open a named queue or stop the program, naming the queue.
pub async fn open_queue_or_exit(
    program: &str,
    backend: &dyn QueueBackend,
    name: &str,
) -> Arc<dyn Queue> {
    match backend.open(name).await {
        Ok(q) => q,
        Err(e) => fail(program, format!("cannot open queue `{name}`: {e}")),
    }
}

/// Remove expired results every minute, for stores that do not expire them
/// themselves.
pub fn spawn_purge_expired(store: Arc<dyn ResultStore>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            match store.purge_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(purged = n, "expired results removed"),
                Err(e) => tracing::warn!(error = %e, "purging expired results failed"),
            }
        }
    })
}

/// The start-up line (backends, result store, data directory, and what was
/// inferred) and a warning per accepted-but-ignored key.
pub fn log_startup_notes(program: &str, config: &Config) {
    let mut line = crate::config::backend_line(config);
    if !config.notes.inferred.is_empty() {
        line = format!("{line} (inferred: {})", config.notes.inferred.join("; "));
    }
    // Printed whatever the log level: where the data goes is never hidden
    // (at WARN, the level the original's manifests rarely lower to).
    if tracing::enabled!(tracing::Level::INFO) {
        tracing::info!(program, "{line}");
    } else {
        tracing::warn!(program, "{line}");
    }
    for key in &config.notes.ignored {
        tracing::warn!(program, "accepted but without effect here: {key}");
    }
}
