//! Harness for the end-to-end tests: starts the real binaries (bridge,
//! worker, sample app) and a real Envoy with the real filter, each test on
//! its own ports and data directory, and prints their logs when a test fails.
//!
//! The binaries must be built first (`make test` does it).

use serde_json::Value;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// A workspace binary, built by `make test` (debug profile).
pub fn bin(name: &str) -> PathBuf {
    let p = target_dir().join("debug").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `make test` (it builds the binaries first)",
        p.display()
    );
    p
}

pub fn wasm_path() -> PathBuf {
    let p = target_dir().join("wasm32-wasip1/wasm-release/openhqm_filter.wasm");
    assert!(
        p.exists(),
        "{} is missing: run `make test` (it builds the filter first)",
        p.display()
    );
    p
}

pub fn envoy_path() -> PathBuf {
    if let Some(p) = std::env::var_os("OPENHQM_ENVOY") {
        return PathBuf::from(p);
    }
    let p = target_dir().join("tools/envoy");
    assert!(
        p.exists(),
        "Envoy is missing: run `make test` (deploy/local/ensure-tools.sh installs it)"
    );
    p
}

/// A port nobody listens on right now, for a process the test starts.
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`): a port
/// from that range (what binding port 0 gives) can be handed to an outgoing
/// connection as its source port between this call and the child's bind,
/// and then Envoy or a bridge fails with "address in use". Ports are also
/// never handed out twice by one test process.
pub fn free_port() -> u16 {
    static HANDED_OUT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u32>().ok())
        })
        .unwrap_or(32_768);
    if ephemeral_start > LOW + 1_000 {
        let span = ephemeral_start - LOW;
        // Spread processes apart; within one, walk on from the last port.
        let base = std::process::id().wrapping_mul(7_919);
        for _ in 0..span {
            let n = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
            let port = LOW + base.wrapping_add(n) % span;
            if let Ok(port) = u16::try_from(port) {
                if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                    return port;
                }
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to clean up, like a crashed pod.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: the polite stop Kubernetes sends.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON log lines of an OpenHQM binary.
    pub fn log_events(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One isolated set-up: a directory, ports, and the processes of one test.
pub struct Stack {
    pub dir: PathBuf,
    pub app_port: u16,
    pub bridge_port: u16,
    pub envoy_port: u16,
    pub admin_port: u16,
    /// Extra top-level keys for the filter's plugin configuration (JSON
    /// members, e.g. `"trust_inbound_correlation": true,`), inserted into
    /// the test's copy of envoy/envoy.yaml.
    pub filter_config_extra: String,
    /// Ports of bridges beyond the first, all in Envoy's bridge cluster.
    pub extra_bridge_ports: Vec<u16>,
    /// Admin (`/metrics`) ports of the workers started, in order.
    pub worker_admin_ports: Vec<u16>,
    /// An OTLP/HTTP receiver on this port becomes Envoy's `otel` cluster
    /// (the commented example in envoy/envoy.yaml, enabled).
    pub otel_port: Option<u16>,
    /// Extra `OPENHQM_*` variables for bridge and workers.
    pub env: Vec<(String, String)>,
    pub procs: Vec<Proc>,
    spawned: usize,
}

impl Stack {
    /// A stack whose worker proxies to the sample app (the sidecar pattern).
    pub fn new(test: &str) -> Stack {
        let dir = std::env::temp_dir().join(format!(
            "openhqm-e2e-{test}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(dir.join("logs")).expect("test directory");
        let app_port = free_port();
        let bridge_port = free_port();
        let mut stack = Stack {
            env: Vec::new(),
            extra_bridge_ports: Vec::new(),
            worker_admin_ports: Vec::new(),
            otel_port: None,
            filter_config_extra: String::new(),
            envoy_port: free_port(),
            admin_port: free_port(),
            app_port,
            bridge_port,
            dir,
            procs: Vec::new(),
            spawned: 0,
        };
        let data = stack.dir.join("data");
        stack.set("OPENHQM_QUEUE__DATA_DIR", &data.to_string_lossy());
        stack.set("OPENHQM_SERVER__HOST", "127.0.0.1");
        stack.set("OPENHQM_SERVER__PORT", &bridge_port.to_string());
        stack.set("OPENHQM_PROXY__ENABLED", "true");
        stack.set("OPENHQM_PROXY__DEFAULT_ENDPOINT", "app");
        stack.set(
            "OPENHQM_PROXY__ENDPOINTS",
            // `app` is the sidecar's upstream (captured paths are appended);
            // `orders` is a full URL for messages from the submit API.
            &format!(
                r#"{{"app": {{"url": "http://127.0.0.1:{app_port}", "timeout": 10}},
                    "orders": {{"url": "http://127.0.0.1:{app_port}/orders", "timeout": 10}}}}"#
            ),
        );
        stack.set(
            "OPENHQM_PROXY__FORWARD_HEADERS",
            r#"["content-type", "x-sample-delay-ms", "x-sample-fail-times", "x-sample-fail-status"]"#,
        );
        stack.set("OPENHQM_MONITORING__LOG_FORMAT", "json");
        // Every step of every request in the logs (tests read them).
        stack.set("OPENHQM_MONITORING__LOG_LEVEL", "debug");
        stack.set("OPENHQM_WORKER__RETRY_DELAY_BASE", "0.05");
        stack.set("OPENHQM_WORKER__RETRY_DELAY_MAX", "0.2");
        stack
    }

    pub fn set(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn bridge_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.bridge_port)
    }

    pub fn envoy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.envoy_port)
    }

    pub fn app_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.app_port)
    }

    /// Start a process with the stack's environment; output goes to a log file.
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Proc {
        self.spawned += 1;
        let log = self
            .dir
            .join("logs")
            .join(format!("{:02}-{name}.log", self.spawned));
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // Tests must not pick up a developer's own settings.
        for (k, _) in std::env::vars() {
            if (k.starts_with("OPENHQM_") && k != "OPENHQM_ENVOY") || k.starts_with("OTEL_") {
                cmd.env_remove(k);
            }
        }
        cmd.env_remove("RUST_LOG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// Keep a process in the stack (its log is printed if the test fails).
    pub fn keep(&mut self, p: Proc) -> usize {
        self.procs.push(p);
        self.procs.len() - 1
    }

    pub async fn start_app(&mut self, delay_ms: u64) -> usize {
        let port = self.app_port.to_string();
        let delay = delay_ms.to_string();
        let p = self.spawn(
            "sample-app",
            &bin("openhqm-sample-app"),
            &["--port", &port, "--delay-ms", &delay],
            &[],
        );
        let i = self.keep(p);
        wait_ready(
            &format!("{}/healthz", self.app_url()),
            Duration::from_secs(20),
        )
        .await;
        i
    }

    pub async fn start_bridge(&mut self) -> usize {
        let p = self.spawn("bridge", &bin("openhqm-bridge"), &[], &[]);
        let i = self.keep(p);
        wait_ready(
            &format!("{}/health", self.bridge_url()),
            Duration::from_secs(20),
        )
        .await;
        i
    }

    /// Another bridge on its own port, sharing the queue and result store;
    /// Envoy (started after) balances captures and lookups over all bridges.
    pub async fn add_bridge(&mut self) -> (usize, u16) {
        let port = free_port();
        let port_s = port.to_string();
        let p = self.spawn(
            "bridge",
            &bin("openhqm-bridge"),
            &[],
            &[("OPENHQM_SERVER__PORT", &port_s)],
        );
        let i = self.keep(p);
        wait_ready(
            &format!("http://127.0.0.1:{port}/health"),
            Duration::from_secs(20),
        )
        .await;
        self.extra_bridge_ports.push(port);
        (i, port)
    }

    /// A worker with its own admin port (`/metrics`), recorded in
    /// `worker_admin_ports` in start order.
    pub fn start_worker(&mut self) -> usize {
        let port = free_port();
        let port_s = port.to_string();
        let p = self.spawn(
            "worker",
            &bin("openhqm-worker"),
            &[],
            &[("OPENHQM_WORKER__ADMIN_PORT", &port_s)],
        );
        self.worker_admin_ports.push(port);
        self.keep(p)
    }

    /// Wait until a worker (by start order) answers `/health/ready`: its
    /// queue is reachable and it is consuming.
    pub async fn wait_worker_ready(&self, n: usize) {
        wait_ready(
            &format!(
                "http://127.0.0.1:{}/health/ready",
                self.worker_admin_ports[n]
            ),
            Duration::from_secs(20),
        )
        .await;
    }

    /// A worker's Prometheus text (by start order), or "" while it is down.
    pub async fn worker_metrics(&self, n: usize) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.worker_admin_ports[n]);
        match client().get(url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Envoy with the shipped envoy/envoy.yaml, moved to this stack's ports.
    pub async fn start_envoy(&mut self) -> usize {
        let mut shipped = std::fs::read_to_string(repo_root().join("envoy/envoy.yaml"))
            .expect("envoy/envoy.yaml");
        // More bridges: more endpoints in the bridge cluster.
        let bridge_endpoint = "              - endpoint:\n                  address:\n                    socket_address: { address: 127.0.0.1, port_value: 9000 }\n";
        assert!(
            shipped.contains(bridge_endpoint),
            "envoy.yaml's bridge endpoint changed shape"
        );
        let mut endpoints = bridge_endpoint.to_string();
        for port in &self.extra_bridge_ports {
            endpoints.push_str(
                &bridge_endpoint.replace("port_value: 9000", &format!("port_value: {port}")),
            );
        }
        shipped = shipped.replace(bridge_endpoint, &endpoints);
        if let Some(port) = self.otel_port {
            let start = shipped
                .find("    # - name: otel\n")
                .expect("envoy.yaml's commented otel cluster");
            let end = shipped[start..]
                .find("port_value: 4318 }\n")
                .map(|i| start + i + "port_value: 4318 }\n".len())
                .expect("envoy.yaml's commented otel cluster");
            let cluster = shipped[start..end]
                .replace("    # ", "    ")
                .replace("type: STRICT_DNS", "type: STATIC")
                .replace(
                    "address: otel-collector, port_value: 4318",
                    &format!("address: 127.0.0.1, port_value: {port}"),
                );
            shipped.replace_range(start..end, &cluster);
        }
        if !self.filter_config_extra.is_empty() {
            let anchor = "\"max_wait_ms\": 30000,";
            assert!(
                shipped.contains(anchor),
                "envoy.yaml's filter config changed shape"
            );
            // One line: the JSON sits in an indented YAML block scalar.
            let extra = self
                .filter_config_extra
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            shipped = shipped.replace(anchor, &format!("{anchor} {extra}"));
        }
        let config = shipped
            .replace(
                "port_value: 8000",
                &format!("port_value: {}", self.envoy_port),
            )
            .replace(
                "port_value: 8080",
                &format!("port_value: {}", self.app_port),
            )
            .replace(
                "port_value: 9000",
                &format!("port_value: {}", self.bridge_port),
            )
            .replace(
                "port_value: 9901",
                &format!("port_value: {}", self.admin_port),
            )
            .replace(
                "target/wasm32-wasip1/wasm-release/openhqm_filter.wasm",
                &wasm_path().to_string_lossy(),
            );
        for port in [
            self.envoy_port,
            self.app_port,
            self.bridge_port,
            self.admin_port,
        ] {
            assert!(
                config.contains(&format!("port_value: {port}")),
                "envoy.yaml no longer uses the expected ports"
            );
        }
        let path = self.dir.join("envoy.yaml");
        std::fs::write(&path, config).expect("write envoy config");
        let p = self.spawn(
            "envoy",
            &envoy_path(),
            &[
                "-c",
                &path.to_string_lossy(),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warn",
            ],
            &[],
        );
        let i = self.keep(p);
        wait_ready(
            &format!("http://127.0.0.1:{}/ready", self.admin_port),
            Duration::from_secs(30),
        )
        .await;
        i
    }

    /// The sample app, bridge, one worker and Envoy.
    pub async fn start_all(&mut self, app_delay_ms: u64) {
        self.start_app(app_delay_ms).await;
        self.start_bridge().await;
        self.start_worker();
        self.start_envoy().await;
    }

    /// The sample app's own counters: `max_in_flight`, `in_flight`, `served`.
    pub async fn app_stats(&self) -> Value {
        client()
            .get(format!("{}/stats", self.app_url()))
            .send()
            .await
            .expect("GET /stats")
            .json()
            .await
            .expect("stats JSON")
    }

    pub fn proc(&mut self, i: usize) -> &mut Proc {
        &mut self.procs[i]
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- logs of the failed test ({}) ----", self.dir.display());
            for p in &self.procs {
                let text = p.log_text();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!(
                    "== {} ({}) ==\n{}",
                    p.name,
                    p.log.display(),
                    tail.join("\n")
                );
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A response header as text.
pub fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// Wait until `url` answers 2xx.
pub async fn wait_ready(url: &str, timeout: Duration) {
    let c = client();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = c.get(url).timeout(Duration::from_secs(1)).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not become ready within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Follow a response URL until the result is final; the final JSON body.
pub async fn await_result(base: &str, location: &str, timeout: Duration) -> Value {
    let c = client();
    let deadline = Instant::now() + timeout;
    loop {
        let r = c
            .get(format!("{base}{location}"))
            .send()
            .await
            .expect("GET response");
        let code = r.status().as_u16();
        let body: Value = r.json().await.expect("JSON body");
        match code {
            200 => return body,
            202 => {}
            other => panic!("unexpected {other} from {location}: {body}"),
        }
        assert!(
            Instant::now() < deadline,
            "{location} not final within {timeout:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Keys matching `pattern` on the shared Redis (127.0.0.1:6379), by
/// redis-cli: the test's own view of the store, not the code's under test.
pub fn redis_keys(pattern: &str) -> Vec<String> {
    let out = Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "6379",
            "--scan",
            "--pattern",
            pattern,
        ])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Delete the shared Redis's keys matching `pattern` (a test's leftovers).
pub fn redis_delete(pattern: &str) {
    for key in redis_keys(pattern) {
        let _ = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", "6379", "DEL", &key])
            .output();
    }
}

/// A private redis-server on `port` (nothing saved unless `extra` says so),
/// kept in the stack; returns once it accepts connections.
pub fn start_private_redis(stack: &mut Stack, port: u16, extra: &[&str]) -> usize {
    let port_s = port.to_string();
    let mut args = vec!["--port", &port_s, "--bind", "127.0.0.1", "--save", ""];
    args.extend_from_slice(extra);
    let p = stack.spawn("redis-server", Path::new("redis-server"), &args, &[]);
    let i = stack.keep(p);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "private redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    i
}
