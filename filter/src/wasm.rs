//! Proxy-Wasm glue: registers the root and HTTP contexts and implements
//! [`Host`] over the ABI hostcalls.
//!
//! The SDK's `Context`/`HttpContext` convenience methods `unwrap()` every
//! hostcall result; this module calls `proxy_wasm::hostcalls` directly and
//! turns failures into logged errors instead. Callout headers are only read
//! when the host reported some (a failed call has none, and reading a missing
//! map is an error on Envoy).
//!
//! Body watchdog: Envoy only delivers a request body to a filter that paused
//! at the headers when the plugin config sets
//! `allow_on_headers_stop_iteration: true`; otherwise the request would hang
//! until the stream idle timeout. Until a body callback has been seen in this
//! VM (which proves the setting is on), held requests are registered with the
//! root context, whose 1 s tick answers 500 for those whose body has not
//! arrived within the grace period and logs the fix. After the first body
//! callback the watchdog switches itself off.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{
    Action as WasmAction, BufferType, ContextType, LogLevel as WasmLogLevel, MapType, MetricType,
};

use crate::config::Config;
use crate::logic::{Action, Headers, Host, HttpFilter, LogLevel};

proxy_wasm::main! {{
    // Also installs a panic hook that logs the message (a panic would still
    // abort the VM; the code is written so none is reachable).
    proxy_wasm::set_log_level(WasmLogLevel::Info);
    proxy_wasm::set_root_context(|_context_id| -> Box<dyn RootContext> {
        Box::new(FilterRoot {
            config: None,
            watchdog: Rc::new(Watchdog::default()),
        })
    });
}}

fn log(level: LogLevel, message: &str) {
    let level = match level {
        LogLevel::Debug => WasmLogLevel::Debug,
        LogLevel::Info => WasmLogLevel::Info,
        LogLevel::Warn => WasmLogLevel::Warn,
        LogLevel::Error => WasmLogLevel::Error,
    };
    // Nothing sensible to do if logging itself fails.
    let _ = hostcalls::log(level, message);
}

/// Smallest time a held request may wait for its first body chunk before
/// the watchdog gives up on it (the bridge timeout when that is larger).
const MIN_BODY_GRACE_MS: u64 = 5000;
const WATCHDOG_TICK: Duration = Duration::from_secs(1);

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A request held at its headers, waiting for its body.
struct Held {
    context_id: u32,
    /// Milliseconds since the epoch.
    deadline_ms: u64,
    filter: Weak<RefCell<HttpFilter>>,
}

/// Requests held at their headers whose body has not arrived yet (see the
/// module doc). Shared by the root context and the HTTP contexts of one VM
/// (one Envoy worker thread).
#[derive(Default)]
struct Watchdog {
    /// A body callback has been seen: the proxy delivers bodies.
    confirmed: Cell<bool>,
    waiting: RefCell<Vec<Held>>,
}

impl Watchdog {
    fn register(&self, context_id: u32, grace_ms: u64, filter: &Rc<RefCell<HttpFilter>>) {
        if self.confirmed.get() {
            return;
        }
        if let Ok(mut waiting) = self.waiting.try_borrow_mut() {
            waiting.push(Held {
                context_id,
                deadline_ms: now_ms().saturating_add(grace_ms),
                filter: Rc::downgrade(filter),
            });
        }
    }

    fn forget_all(&self) {
        if let Ok(mut waiting) = self.waiting.try_borrow_mut() {
            waiting.clear();
        }
    }

    fn forget(&self, context_id: u32) {
        if let Ok(mut waiting) = self.waiting.try_borrow_mut() {
            waiting.retain(|held| held.context_id != context_id);
        }
    }

    fn body_arrived(&self, context_id: u32) {
        if !self.confirmed.get() {
            self.confirmed.set(true);
            log(
                LogLevel::Debug,
                "openhqm: request bodies reach the filter; body watchdog off",
            );
        }
        self.forget(context_id);
    }

    /// Answers the held requests whose deadline has passed.
    fn check(&self) {
        let now = now_ms();
        let expired: Vec<Held> = match self.waiting.try_borrow_mut() {
            Ok(mut waiting) => {
                let (expired, kept) = waiting.drain(..).partition(|held| held.deadline_ms <= now);
                *waiting = kept;
                expired
            }
            Err(_) => return,
        };
        for held in expired {
            let Some(filter) = held.filter.upgrade() else {
                continue;
            };
            if hostcalls::set_effective_context(held.context_id).is_err() {
                continue;
            }
            if let Ok(mut filter) = filter.try_borrow_mut() {
                filter.on_body_stalled(&mut WasmHost);
            };
        }
    }
}

/// Root context: owns the parsed configuration, shared with every request.
struct FilterRoot {
    config: Option<Rc<Config>>,
    watchdog: Rc<Watchdog>,
}

impl Context for FilterRoot {}

impl RootContext for FilterRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let bytes = if plugin_configuration_size == 0 {
            Vec::new()
        } else {
            match hostcalls::get_buffer(
                BufferType::PluginConfiguration,
                0,
                plugin_configuration_size,
            ) {
                Ok(bytes) => bytes.unwrap_or_default(),
                Err(status) => {
                    log(
                        LogLevel::Error,
                        &format!("openhqm: cannot read the plugin configuration: {status:?}"),
                    );
                    return false;
                }
            }
        };
        match Config::parse(&bytes) {
            Ok(config) => {
                log(
                    LogLevel::Info,
                    &format!(
                        "openhqm: filter configured: bridge cluster {:?}, {} capture route(s), \
                         max body {} bytes, relay under {:?}",
                        config.bridge_cluster,
                        config.routes.len(),
                        config.max_body_bytes,
                        config.api_prefix
                    ),
                );
                self.config = Some(Rc::new(config));
                if !self.watchdog.confirmed.get() {
                    if let Err(status) = hostcalls::set_tick_period(WATCHDOG_TICK) {
                        log(
                            LogLevel::Warn,
                            &format!("openhqm: no tick for the body watchdog: {status:?}"),
                        );
                    }
                }
                true
            }
            Err(e) => {
                log(LogLevel::Error, &e.to_string());
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if self.watchdog.confirmed.get() {
            // Bodies are delivered: nothing left to watch.
            let _ = hostcalls::set_tick_period(Duration::ZERO);
            self.watchdog.forget_all();
            return;
        }
        self.watchdog.check();
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Without a configuration (Envoy rejects the filter then, so this
        // should not happen) the context passes everything through.
        let grace_ms = self.config.as_ref().map_or(MIN_BODY_GRACE_MS, |c| {
            c.bridge_timeout_ms.max(MIN_BODY_GRACE_MS)
        });
        Some(Box::new(FilterHttp {
            context_id,
            grace_ms,
            filter: self
                .config
                .clone()
                .map(|config| Rc::new(RefCell::new(HttpFilter::new(config)))),
            watchdog: Rc::clone(&self.watchdog),
        }))
    }
}

/// One HTTP request.
struct FilterHttp {
    context_id: u32,
    grace_ms: u64,
    filter: Option<Rc<RefCell<HttpFilter>>>,
    watchdog: Rc<Watchdog>,
}

impl FilterHttp {
    /// Runs `f` on the request's filter; `Continue` when there is none.
    fn with_filter(&self, f: impl FnOnce(&mut HttpFilter) -> Action) -> WasmAction {
        match self.filter.as_ref().map(|filter| filter.try_borrow_mut()) {
            Some(Ok(mut filter)) => to_wasm(f(&mut filter)),
            Some(Err(_)) => {
                log(LogLevel::Error, "openhqm: re-entrant filter call ignored");
                WasmAction::Pause
            }
            None => WasmAction::Continue,
        }
    }
}

fn to_wasm(action: Action) -> WasmAction {
    match action {
        Action::Continue => WasmAction::Continue,
        Action::Pause => WasmAction::Pause,
    }
}

impl Context for FilterHttp {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        self.with_filter(|filter| {
            filter.on_call_response(&mut WasmHost, token_id, num_headers, body_size);
            Action::Continue
        });
    }

    fn on_done(&mut self) -> bool {
        self.watchdog.forget(self.context_id);
        true
    }
}

impl HttpContext for FilterHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> WasmAction {
        let mut held = false;
        let action = self.with_filter(|filter| {
            let action = filter.on_request_headers(&mut WasmHost, end_of_stream);
            held = filter.awaits_first_body_chunk();
            action
        });
        if let (true, Some(filter)) = (held, self.filter.as_ref()) {
            self.watchdog
                .register(self.context_id, self.grace_ms, filter);
        }
        action
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> WasmAction {
        self.watchdog.body_arrived(self.context_id);
        self.with_filter(|filter| filter.on_request_body(&mut WasmHost, body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> WasmAction {
        self.watchdog.body_arrived(self.context_id);
        self.with_filter(|filter| filter.on_request_trailers(&mut WasmHost))
    }
}

/// [`Host`] over the Proxy-Wasm hostcalls of the current context.
struct WasmHost;

impl Host for WasmHost {
    fn request_headers(&mut self) -> Headers {
        match hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
            Ok(headers) => headers,
            Err(status) => {
                log(
                    LogLevel::Error,
                    &format!("openhqm: cannot read request headers: {status:?}"),
                );
                Vec::new()
            }
        }
    }

    fn request_header(&mut self, name: &str) -> Option<Vec<u8>> {
        match hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name) {
            Ok(value) => value,
            Err(status) => {
                log(
                    LogLevel::Error,
                    &format!("openhqm: cannot read request header {name}: {status:?}"),
                );
                None
            }
        }
    }

    fn request_body(&mut self, size: usize) -> Option<Vec<u8>> {
        match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size) {
            Ok(body) => body,
            Err(status) => {
                log(
                    LogLevel::Error,
                    &format!("openhqm: cannot read request body: {status:?}"),
                );
                None
            }
        }
    }

    fn dispatch_http_call(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, String> {
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), body, Vec::new(), timeout)
            .map_err(|status| format!("{status:?}"))
    }

    fn call_response_headers(&mut self) -> Headers {
        match hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders) {
            Ok(headers) => headers,
            Err(status) => {
                log(
                    LogLevel::Warn,
                    &format!("openhqm: cannot read bridge response headers: {status:?}"),
                );
                Vec::new()
            }
        }
    }

    fn call_response_body(&mut self, size: usize) -> Option<Vec<u8>> {
        match hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size) {
            Ok(body) => body,
            Err(status) => {
                log(
                    LogLevel::Warn,
                    &format!("openhqm: cannot read bridge response body: {status:?}"),
                );
                None
            }
        }
    }

    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        if let Err(e) = hostcalls::send_http_response(status, headers.to_vec(), Some(body)) {
            log(
                LogLevel::Error,
                &format!("openhqm: cannot send the {status} response: {e:?}"),
            );
        }
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        log(level, message);
    }

    fn resume_request(&mut self) {
        if let Err(status) = hostcalls::resume_http_request() {
            log(
                LogLevel::Error,
                &format!("openhqm: cannot resume the request: {status:?}"),
            );
        }
    }

    fn count_passthrough(&mut self, _route: &str) {
        // One Envoy stat for all routes (route names in stat names would be
        // unbounded); the log line names the route.
        if let Some(id) = passthrough_metric() {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }

    fn new_uuid(&mut self) -> String {
        let bytes = random_bytes().unwrap_or_else(fallback_bytes);
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .hyphenated()
            .to_string()
    }
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    /// WASI `random_get` (the host's CSPRNG; what `getrandom` uses on WASI).
    fn random_get(buf: *mut u8, buf_len: usize) -> u16;
}

/// 16 random bytes from the host; `None` if the host refuses.
fn random_bytes() -> Option<[u8; 16]> {
    let mut bytes = [0u8; 16];
    // SAFETY: `bytes` is a live, writable 16-byte buffer for the whole call
    // and the host writes at most `buf_len` bytes into it.
    let errno = unsafe { random_get(bytes.as_mut_ptr(), bytes.len()) };
    (errno == 0).then_some(bytes)
}

thread_local! {
    static PASSTHROUGH_METRIC: Cell<Option<u32>> = const { Cell::new(None) };
}

/// `openhqm_filter_passthrough_total`: requests served from the app because
/// the bridge failed, defined on first use (per VM).
fn passthrough_metric() -> Option<u32> {
    PASSTHROUGH_METRIC.with(|cell| {
        if cell.get().is_none() {
            cell.set(
                hostcalls::define_metric(MetricType::Counter, "openhqm_filter_passthrough_total")
                    .ok(),
            );
        }
        cell.get()
    })
}

thread_local! {
    static FALLBACK_STATE: Cell<u64> = const { Cell::new(0) };
}

/// Unique-enough bytes when the host has no randomness (never expected on
/// Envoy): SplitMix64 over the clock and a counter, so IDs never repeat
/// within a VM.
fn fallback_bytes() -> [u8; 16] {
    log(
        LogLevel::Warn,
        "openhqm: host random_get failed; using clock-based correlation IDs",
    );
    let now = hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    let mut out = [0u8; 16];
    FALLBACK_STATE.with(|state| {
        let mut seed = state.get() ^ now;
        for half in out.chunks_exact_mut(8) {
            seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            half.copy_from_slice(&z.to_le_bytes());
        }
        state.set(seed);
    });
    out
}
