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
//!
//! Span export (with `tracing` configured): finished spans go into the root
//! context's [`Exporter`], shared with its HTTP contexts; the root exports
//! them on its tick (every `flush_ms`) with `dispatch_http_call`, so the
//! answers come back to the root whatever became of the requests. When a
//! request fills a batch, its context shortens the root's tick to
//! [`FLUSH_SOON`] (the tick period belongs to the root context); the next
//! tick exports and restores the period.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{
    Action as WasmAction, BufferType, ContextType, LogLevel as WasmLogLevel, MapType, MetricType,
};

use openhqm_trace::Span;

use crate::config::Config;
use crate::logic::{response_status, Action, Headers, Host, HttpFilter, LogLevel};
use crate::spans::{Exporter, Recorded};

proxy_wasm::main! {{
    // Also installs a panic hook that logs the message (a panic would still
    // abort the VM; the code is written so none is reachable).
    proxy_wasm::set_log_level(WasmLogLevel::Info);
    proxy_wasm::set_root_context(|_context_id| -> Box<dyn RootContext> {
        Box::new(FilterRoot {
            config: None,
            watchdog: Rc::new(Watchdog::default()),
            exporter: None,
            tick: Duration::ZERO,
            export_failing: false,
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
/// The root's tick when a request filled a batch of spans.
const FLUSH_SOON: Duration = Duration::from_millis(1);

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
    fn check(&self, exporter: Option<&RefCell<Exporter>>) {
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
                filter.on_body_stalled(&mut WasmHost { exporter });
            };
        }
    }
}

/// Root context: owns the parsed configuration, shared with every request.
struct FilterRoot {
    config: Option<Rc<Config>>,
    watchdog: Rc<Watchdog>,
    /// Finished spans of this root's requests (with `tracing` configured).
    exporter: Option<Rc<RefCell<Exporter>>>,
    /// The tick period last set.
    tick: Duration,
    /// The last export failed (logged once until one succeeds).
    export_failing: bool,
}

impl FilterRoot {
    /// The tick this root needs: each second while the body watchdog is on,
    /// each `flush_ms` while spans are exported, none otherwise.
    fn wanted_tick(&self) -> Duration {
        let flush = self
            .config
            .as_ref()
            .and_then(|c| c.tracing.as_ref())
            .map(|t| Duration::from_millis(t.flush_ms));
        match (self.watchdog.confirmed.get(), flush) {
            (false, Some(flush)) => flush.min(WATCHDOG_TICK),
            (false, None) => WATCHDOG_TICK,
            (true, Some(flush)) => flush,
            (true, None) => Duration::ZERO,
        }
    }

    /// Sets the wanted tick if it changed (or, with `force`, if a request
    /// may have changed it behind the root's back).
    fn update_tick(&mut self, force: bool) {
        let wanted = self.wanted_tick();
        if wanted == self.tick && !force {
            return;
        }
        match hostcalls::set_tick_period(wanted) {
            Ok(()) => self.tick = wanted,
            Err(status) => log(
                LogLevel::Warn,
                &format!("openhqm: cannot set the tick period: {status:?}"),
            ),
        }
    }

    /// Exports what is due; whether a request had asked for this tick.
    fn export_spans(&mut self) -> bool {
        let Some(Ok(mut exporter)) = self.exporter.as_ref().map(|e| e.try_borrow_mut()) else {
            return false;
        };
        let asked = exporter.flush_requested();
        let done = exporter.tick(now_ms(), &mut |cluster, headers, body, timeout| {
            hostcalls::dispatch_http_call(
                cluster,
                headers.to_vec(),
                Some(body),
                Vec::new(),
                timeout,
            )
            .map_err(|status| format!("{status:?}"))
        });
        let cluster = exporter.config().otlp_cluster.clone();
        drop(exporter);
        count(Counter::SpansDropped, done.dropped);
        if let Some(e) = done.error {
            self.export_failed(&format!("cannot call the OTLP cluster {cluster:?}: {e}"));
        }
        asked
    }

    fn export_failed(&mut self, problem: &str) {
        if !self.export_failing {
            self.export_failing = true;
            log(
                LogLevel::Warn,
                &format!(
                    "openhqm: span export failed ({problem}); spans are dropped and counted in \
                     openhqm_filter_spans_dropped_total until an export succeeds"
                ),
            );
        }
    }
}

impl Context for FilterRoot {
    /// The answer to a span export (the only calls the root makes).
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        _body_size: usize,
        _num_trailers: usize,
    ) {
        let status = if num_headers > 0 {
            hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders)
                .ok()
                .and_then(|headers| response_status(&headers))
        } else {
            None
        };
        let result = match self.exporter.as_ref().map(|e| e.try_borrow_mut()) {
            Some(Ok(mut exporter)) => exporter.on_response(token_id, status),
            _ => None,
        };
        match result {
            Some(Ok(spans)) => {
                count(Counter::SpansExported, spans);
                if self.export_failing {
                    self.export_failing = false;
                    log(LogLevel::Info, "openhqm: span export works again");
                }
            }
            Some(Err(spans)) => {
                count(Counter::SpansDropped, spans);
                let status = status.map_or_else(|| "no answer".to_string(), |s| s.to_string());
                self.export_failed(&format!("the collector answered {status}"));
            }
            None => {}
        }
    }
}

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
                self.exporter = config.tracing.as_ref().map(|tracing| {
                    log(
                        LogLevel::Info,
                        &format!(
                            "openhqm: exporting spans to cluster {:?} {:?} every {} ms",
                            tracing.otlp_cluster, tracing.otlp_path, tracing.flush_ms
                        ),
                    );
                    // Defined now so the stats exist (at 0) from the start.
                    count(Counter::SpansExported, 0);
                    count(Counter::SpansDropped, 0);
                    Rc::new(RefCell::new(Exporter::new(tracing.clone())))
                });
                self.config = Some(Rc::new(config));
                self.update_tick(true);
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
            self.watchdog.forget_all();
        } else {
            self.watchdog.check(self.exporter.as_deref());
        }
        let asked = self.export_spans();
        // Drops to the export period (or to none) once the watchdog is off,
        // and back from FLUSH_SOON after an early export.
        self.update_tick(asked);
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
            exporter: self.exporter.clone(),
        }))
    }
}

/// One HTTP request.
struct FilterHttp {
    context_id: u32,
    grace_ms: u64,
    filter: Option<Rc<RefCell<HttpFilter>>>,
    watchdog: Rc<Watchdog>,
    exporter: Option<Rc<RefCell<Exporter>>>,
}

impl FilterHttp {
    /// Runs `f` on the request's filter; `Continue` when there is none.
    fn with_filter(&self, f: impl FnOnce(&mut HttpFilter, &mut WasmHost) -> Action) -> WasmAction {
        let mut host = WasmHost {
            exporter: self.exporter.as_deref(),
        };
        match self.filter.as_ref().map(|filter| filter.try_borrow_mut()) {
            Some(Ok(mut filter)) => to_wasm(f(&mut filter, &mut host)),
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
        self.with_filter(|filter, host| {
            filter.on_call_response(host, token_id, num_headers, body_size);
            Action::Continue
        });
    }

    fn on_done(&mut self) -> bool {
        self.watchdog.forget(self.context_id);
        self.with_filter(|filter, host| {
            filter.on_done(host);
            Action::Continue
        });
        true
    }
}

impl HttpContext for FilterHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> WasmAction {
        let mut held = false;
        let action = self.with_filter(|filter, host| {
            let action = filter.on_request_headers(host, end_of_stream);
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
        self.with_filter(|filter, host| filter.on_request_body(host, body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> WasmAction {
        self.watchdog.body_arrived(self.context_id);
        self.with_filter(|filter, host| filter.on_request_trailers(host))
    }
}

/// [`Host`] over the Proxy-Wasm hostcalls of the current context.
struct WasmHost<'a> {
    /// Where finished spans go (the root context's).
    exporter: Option<&'a RefCell<Exporter>>,
}

impl Host for WasmHost<'_> {
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
        count(Counter::Passthrough, 1);
    }

    fn new_uuid(&mut self) -> String {
        let mut bytes = [0u8; 16];
        fill_random(&mut bytes);
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .hyphenated()
            .to_string()
    }

    fn random_bytes(&mut self, buf: &mut [u8]) {
        fill_random(buf);
    }

    fn now_unix_nanos(&mut self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    fn export_span(&mut self, span: Span) {
        let recorded = match self.exporter.map(RefCell::try_borrow_mut) {
            Some(Ok(mut exporter)) => exporter.record(span),
            _ => Recorded::Dropped,
        };
        match recorded {
            Recorded::Buffered => {}
            Recorded::FlushSoon => {
                // Sets the tick of this request's root context.
                let _ = hostcalls::set_tick_period(FLUSH_SOON);
            }
            Recorded::Dropped => count(Counter::SpansDropped, 1),
        }
    }
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    /// WASI `random_get` (the host's CSPRNG; what `getrandom` uses on WASI).
    fn random_get(buf: *mut u8, buf_len: usize) -> u16;
}

/// Fills `buf` from the host's CSPRNG (clock-based bytes if it refuses).
fn fill_random(buf: &mut [u8]) {
    // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes for the
    // whole call and the host writes at most `buf_len` bytes into it.
    let errno = unsafe { random_get(buf.as_mut_ptr(), buf.len()) };
    if errno != 0 {
        for chunk in buf.chunks_mut(16) {
            for (byte, random) in chunk.iter_mut().zip(fallback_bytes()) {
                *byte = random;
            }
        }
    }
}

/// The filter's Envoy stats (counters), defined on first use (per VM).
#[derive(Clone, Copy)]
enum Counter {
    /// Requests served from the app because the bridge failed.
    Passthrough,
    /// Spans the collector accepted (2xx).
    SpansExported,
    /// Spans lost: buffer full, export call failed or answered non-2xx.
    SpansDropped,
}

impl Counter {
    fn name(self) -> &'static str {
        match self {
            Counter::Passthrough => "openhqm_filter_passthrough_total",
            Counter::SpansExported => "openhqm_filter_spans_exported_total",
            Counter::SpansDropped => "openhqm_filter_spans_dropped_total",
        }
    }
}

thread_local! {
    static METRICS: Cell<[Option<u32>; 3]> = const { Cell::new([None; 3]) };
}

/// Adds `n` to `counter` (0 just defines it).
fn count(counter: Counter, n: usize) {
    let id = METRICS.with(|cell| {
        let mut ids = cell.get();
        let slot = ids.get_mut(counter as usize)?;
        if slot.is_none() {
            *slot = hostcalls::define_metric(MetricType::Counter, counter.name()).ok();
            let id = *slot;
            cell.set(ids);
            return id;
        }
        *slot
    });
    if let (Some(id), true) = (id, n > 0) {
        let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
    }
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
