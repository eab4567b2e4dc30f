//! One way to serve HTTP for every listener we run (the bridge's API, the
//! worker's admin port): a header-read timeout, an idle keep-alive timeout,
//! a body-read timeout and a cap on open connections, so idle or half-sent
//! connections cannot use up the process's file descriptors. Settings are
//! `server.*` (docs/operations.md, "Connections").

mod body;
mod io;

pub use body::{classify as classify_body_error, BodyFailure, BodyTimeout, TimeoutBody};

use crate::config::{ConfigError, ServerConfig};
use axum::Router;
use hyper_util::rt::TokioIo;
use io::{Activity, Watched};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// The connection settings of `server.*`, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub fn from_config(c: &ServerConfig) -> Result<Limits, ConfigError> {
        for (key, v) in [
            (
                "server.header_read_timeout_seconds",
                c.header_read_timeout_seconds,
            ),
            ("server.idle_timeout_seconds", c.idle_timeout_seconds),
            (
                "server.body_read_timeout_seconds",
                c.body_read_timeout_seconds,
            ),
        ] {
            if !(v > 0.0 && v <= 86_400.0) {
                return Err(ConfigError::new(
                    key,
                    "must be more than 0 and at most 86400 seconds",
                ));
            }
        }
        let max_connections = match c.max_connections {
            Some(0) => {
                return Err(ConfigError::new(
                    "server.max_connections",
                    "must be at least 1",
                ))
            }
            Some(n) => n.min(Semaphore::MAX_PERMITS).min(u32::MAX as usize),
            None => default_max_connections(),
        };
        Ok(Limits {
            header_read_timeout: Duration::from_secs_f64(c.header_read_timeout_seconds),
            idle_timeout: Duration::from_secs_f64(c.idle_timeout_seconds),
            body_read_timeout: Duration::from_secs_f64(c.body_read_timeout_seconds),
            max_connections,
        })
    }
}

/// Half the soft open-file limit (the other half is for the broker, the
/// backends and the files), at least 64; 512 when the limit is unknown.
pub fn default_max_connections() -> usize {
    soft_fd_limit()
        .map(|n| (n / 2).clamp(64, 1 << 20) as usize)
        .unwrap_or(512)
}

#[cfg(unix)]
fn soft_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and reads nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    // rlim_t is u64 on Linux but not on every unix.
    #[allow(clippy::unnecessary_cast)]
    let cur = lim.rlim_cur as u64;
    (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(cur)
}

#[cfg(not(unix))]
fn soft_fd_limit() -> Option<u64> {
    None
}

/// Bind `host:port` for the listener configured by `key`. A port the
/// operator set (`explicit`) must be had: anything else is an error naming
/// the key. A default port that is taken (a second worker on one host) is
/// a warning, and the listener gets an ephemeral port instead; the caller
/// logs where it ended up.
pub async fn bind(key: &str, host: &str, port: u16, explicit: bool) -> Result<TcpListener, String> {
    let addr = format!("{host}:{port}");
    match TcpListener::bind(&addr).await {
        Ok(l) => Ok(l),
        Err(e) if !explicit && port != 0 && e.kind() == std::io::ErrorKind::AddrInUse => {
            let fallback = TcpListener::bind(format!("{host}:0"))
                .await
                .map_err(|e2| format!("`{key}`: cannot listen on {host}:0 either: {e2}"))?;
            let actual = fallback.local_addr().map(|a| a.port()).unwrap_or(0);
            tracing::warn!(
                key,
                default_port = port,
                port = actual,
                "the default port of `{key}` ({port}) is taken; listening on an ephemeral port instead (set `{key}` to choose one)"
            );
            Ok(fallback)
        }
        Err(e) => Err(format!("`{key}`: cannot listen on {addr}: {e}")),
    }
}

/// Serve `router` on `listener` under `limits` until `shutdown` resolves;
/// then stop accepting, let requests in progress finish and return.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut last_refusal_log: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, typically: pause rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refuse(stream, limits.max_connections, &mut last_refusal_log);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            connection(stream, router, limits, stop).await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a slot until it ends.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

/// Over the cap: a 503 (best effort, never waiting on the client) and close.
fn refuse(stream: TcpStream, max: usize, last_log: &mut Option<tokio::time::Instant>) {
    let answer = io::json_answer(
        503,
        "too_many_connections",
        &format!("this server holds at most {max} connections (server.max_connections); retry"),
    );
    let _ = stream.try_write(&answer);
    let now = tokio::time::Instant::now();
    let due = match last_log {
        Some(t) => now.duration_since(*t) >= Duration::from_secs(10),
        None => true,
    };
    if due {
        *last_log = Some(now);
        tracing::warn!(
            max_connections = max,
            "connection refused: at the connection cap"
        );
    }
}

/// Closes the `in_flight` count however the request ends.
struct InFlight {
    activity: Arc<Activity>,
    answered: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.request_done(self.answered);
    }
}

async fn connection(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched::new(stream, activity.clone()));
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let activity = activity.clone();
            let mut router = router.clone();
            activity.request_started();
            async move {
                let mut guard = InFlight {
                    activity,
                    answered: false,
                };
                let req = req
                    .map(|b| axum::body::Body::new(TimeoutBody::new(b, limits.body_read_timeout)));
                let resp = tower_service::Service::call(&mut router, req).await;
                guard.answered = true;
                resp
            }
        })
    };
    // Our own timer does the header and idle timeouts (hyper's header
    // timeout also runs on idle keep-alive connections).
    let conn = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            reason = watchdog(&activity, &limits) => {
                tracing::debug!(reason, "closing connection");
                return;
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Resolves when the connection has been quiet too long: no complete
/// header block within `header_read_timeout` of its first byte (or of
/// accept), or no request within `idle_timeout` of the last answer.
async fn watchdog(activity: &Activity, limits: &Limits) -> &'static str {
    let header_ms = limits.header_read_timeout.as_millis() as u64;
    let idle_ms = limits.idle_timeout.as_millis() as u64;
    loop {
        let now = activity.now_ms();
        let (deadline, reason) = if activity
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
        {
            (now + header_ms.min(idle_ms), "")
        } else if let Some(started) = activity.head_started() {
            (started + header_ms, "header read timeout")
        } else {
            (activity.last_io() + idle_ms, "idle timeout")
        };
        if now >= deadline && !reason.is_empty() {
            return reason;
        }
        let wait = deadline.saturating_sub(now).max(5);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}
