//! [`CommandProcessor`]: each message is handed to one of a pool of
//! long-lived child processes (any language) over JSON lines.
//!
//! The worker writes one line per message to a child's stdin:
//! `{"correlation_id", "attempt", "payload", "headers", "metadata"}`, and
//! reads one line back from its stdout: `{"correlation_id", "result"}` (and
//! optionally `"status_code"`, default 200) on success, or
//! `{"correlation_id", "error": "text", "retry": true|false}`. A child's
//! stderr goes to the worker's log. See docs/processors.md.

use super::{json_response, Job, Processor};
use crate::backend_call::Attempt;
use serde_json::Value;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Longest answer line a child may write.
const MAX_LINE: usize = 64 * 1024 * 1024;
/// Longest stderr line logged as one entry (longer ones are split).
const MAX_LOG_LINE: usize = 16 * 1024;
/// Restart backoff of a child that died: doubling from the first to the
/// last, back to the first once a child has lived `STABLE_AFTER`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// On shutdown, how long a child has to exit after its stdin is closed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// A pool of child processes running one program; each handles one message
/// at a time, and a message waits for a free child.
pub struct CommandProcessor {
    argv: Vec<String>,
    timeout: Duration,
    permits: Semaphore,
    idle: Mutex<Vec<Slot>>,
    closed: AtomicBool,
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: u32,
    started: Instant,
}

/// One place in the pool: a running child, or when to start the next one.
struct Slot {
    running: Option<Running>,
    backoff: Duration,
    restart_at: Option<Instant>,
}

enum Read {
    Line(Vec<u8>),
    Exited,
    TooLong,
}

impl CommandProcessor {
    /// Start `processes` children running `argv` (program, then arguments).
    /// Fails when the program cannot be started at all. Call it inside the
    /// Tokio runtime.
    pub fn start(argv: Vec<String>, processes: usize, timeout: Duration) -> Result<Self, String> {
        let has_program = argv.first().is_some_and(|p| !p.trim().is_empty());
        if !has_program {
            return Err("worker.command: no program to run".into());
        }
        if processes == 0 {
            return Err("worker.command_processes must be at least 1".into());
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err("CommandProcessor::start must be called inside the Tokio runtime".into());
        }
        let mut slots = Vec::with_capacity(processes);
        for _ in 0..processes {
            slots.push(Slot {
                running: Some(spawn(&argv)?),
                backoff: FIRST_BACKOFF,
                restart_at: None,
            });
        }
        Ok(Self {
            argv,
            timeout,
            permits: Semaphore::new(processes),
            idle: Mutex::new(slots),
            closed: AtomicBool::new(false),
        })
    }

    /// Stop taking messages and end the children: stdin is closed (a
    /// well-behaved child exits on EOF), then those still running after a
    /// grace period are killed. A child busy with a message is killed when
    /// that message's attempt ends.
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.permits.close();
        let slots = std::mem::take(&mut *self.lock_idle());
        let mut ending = tokio::task::JoinSet::new();
        for slot in slots {
            if let Some(Running {
                mut child,
                stdin,
                pid,
                ..
            }) = slot.running
            {
                drop(stdin);
                ending.spawn(async move {
                    match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
                        Ok(Ok(status)) => {
                            tracing::info!(processor_pid = pid, %status, "processor stopped")
                        }
                        _ => {
                            let _ = child.kill().await;
                            tracing::warn!(
                                processor_pid = pid,
                                "processor did not exit on EOF; killed"
                            );
                        }
                    }
                });
            }
        }
        while ending.join_next().await.is_some() {}
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pids of the idle children (tests check restarts with it).
    #[cfg(test)]
    fn idle_pids(&self) -> Vec<u32> {
        self.lock_idle()
            .iter()
            .filter_map(|s| s.running.as_ref().map(|r| r.pid))
            .collect()
    }
}

#[async_trait::async_trait]
impl Processor for CommandProcessor {
    async fn process(&self, job: &Job) -> Attempt {
        let retry = |error: &str| Attempt::Retry {
            error: error.to_string(),
            response: None,
            retry_after: None,
        };
        let Ok(permit) = self.permits.acquire().await else {
            return retry("the processor is shutting down");
        };
        let Some(slot) = self.lock_idle().pop() else {
            return retry("the processor is shutting down");
        };
        let mut lease = Lease {
            owner: self,
            slot: Some(slot),
            finished: false,
            _permit: permit,
        };
        let attempt = match lease.slot.as_mut() {
            Some(slot) => slot.run(job, &self.argv, self.timeout).await,
            None => retry("the processor is shutting down"),
        };
        lease.finished = true;
        attempt
    }
}

/// A slot taken from the pool; it goes back when the attempt ends, also
/// when the attempt is abandoned midway (then its child is out of sync
/// and is replaced).
struct Lease<'a> {
    owner: &'a CommandProcessor,
    slot: Option<Slot>,
    finished: bool,
    _permit: SemaphorePermit<'a>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(mut slot) = self.slot.take() {
            if !self.finished || self.owner.closed.load(Ordering::SeqCst) {
                slot.discard();
            }
            if !self.owner.closed.load(Ordering::SeqCst) {
                self.owner.lock_idle().push(slot);
            }
        }
    }
}

fn spawn(argv: &[String]) -> Result<Running, String> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| "worker.command: no program to run".to_string())?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the processor `{program}`: {e}"))?;
    let pid = child.id().unwrap_or_default();
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(format!("cannot connect to the processor `{program}`"));
    };
    tokio::spawn(async move {
        let mut reader = BufReader::new(stderr);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match (&mut reader)
                .take(MAX_LOG_LINE as u64)
                .read_until(b'\n', &mut buf)
                .await
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end();
                    if !line.is_empty() {
                        tracing::info!(processor_pid = pid, "{line}");
                    }
                }
            }
        }
    });
    tracing::info!(processor_pid = pid, program = %program, "processor started");
    Ok(Running {
        child,
        stdin,
        stdout: BufReader::new(stdout),
        pid,
        started: Instant::now(),
    })
}

impl Slot {
    /// One attempt: make sure a child runs, write the job, read the answer.
    async fn run(&mut self, job: &Job, argv: &[String], timeout: Duration) -> Attempt {
        if let Err(e) = self.ensure_running(argv).await {
            tracing::error!(error = %e, retry_in_ms = self.backoff.as_millis() as u64, "processor could not be started");
            return Attempt::Retry {
                error: "the processor could not be started".into(),
                response: None,
                retry_after: None,
            };
        }
        let Some(running) = self.running.as_mut() else {
            return Attempt::Retry {
                error: "the processor could not be started".into(),
                response: None,
                retry_after: None,
            };
        };
        let pid = running.pid;
        let mut line = match serde_json::to_vec(job) {
            Ok(l) => l,
            Err(e) => {
                return Attempt::Fail {
                    error: format!("the message cannot be written as JSON: {e}"),
                    response: None,
                }
            }
        };
        line.push(b'\n');
        let exchange = async {
            if running.stdin.write_all(&line).await.is_err() || running.stdin.flush().await.is_err()
            {
                return Read::Exited;
            }
            read_answer(&mut running.stdout).await
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => {
                tracing::warn!(processor_pid = pid, correlation_id = %job.correlation_id, timeout_s = timeout.as_secs_f64(), "processor timed out; restarting it");
                self.discard();
                Attempt::Retry {
                    error: "processor timed out".into(),
                    response: None,
                    retry_after: None,
                }
            }
            Ok(Read::Exited) => {
                self.exited().await;
                Attempt::Retry {
                    error: "the processor exited".into(),
                    response: None,
                    retry_after: None,
                }
            }
            Ok(Read::TooLong) => {
                tracing::error!(processor_pid = pid, correlation_id = %job.correlation_id, max_bytes = MAX_LINE, "processor answer too long; restarting it");
                self.discard();
                Attempt::Fail {
                    error: format!("the processor's answer is longer than {MAX_LINE} bytes"),
                    response: None,
                }
            }
            Ok(Read::Line(bytes)) => self.interpret(job, &bytes),
        }
    }

    /// Start a child unless one is running, after the restart backoff.
    async fn ensure_running(&mut self, argv: &[String]) -> Result<(), String> {
        if let Some(running) = self.running.as_mut() {
            match running.child.try_wait() {
                Ok(None) => return Ok(()),
                Ok(Some(status)) => {
                    tracing::warn!(processor_pid = running.pid, %status, "processor exited while idle")
                }
                Err(e) => {
                    tracing::warn!(processor_pid = running.pid, error = %e, "processor state unknown")
                }
            }
            self.died();
        }
        if let Some(at) = self.restart_at {
            tokio::time::sleep_until(at.into()).await;
        }
        match spawn(argv) {
            Ok(r) => {
                self.running = Some(r);
                self.restart_at = None;
                Ok(())
            }
            Err(e) => {
                self.died();
                Err(e)
            }
        }
    }

    /// The child died (or never started): the next one starts after the
    /// backoff, which doubles unless the child had run long enough.
    fn died(&mut self) {
        let lived = self.running.take().map(|r| r.started.elapsed());
        if lived.is_some_and(|l| l >= STABLE_AFTER) {
            self.backoff = FIRST_BACKOFF;
        }
        self.restart_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Kill the child (out of sync, or too slow); the next one starts at once.
    fn discard(&mut self) {
        if let Some(mut running) = self.running.take() {
            let _ = running.child.start_kill();
            self.restart_at = None;
        }
    }

    /// The child closed its stdout (or its stdin): log how it ended.
    async fn exited(&mut self) {
        if let Some(running) = self.running.as_mut() {
            match tokio::time::timeout(Duration::from_secs(1), running.child.wait()).await {
                Ok(Ok(status)) => {
                    tracing::warn!(processor_pid = running.pid, %status, "processor exited while handling a message")
                }
                _ => {
                    let _ = running.child.start_kill();
                    tracing::warn!(
                        processor_pid = running.pid,
                        "processor closed its output; killed"
                    )
                }
            }
        }
        self.died();
    }

    fn interpret(&mut self, job: &Job, bytes: &[u8]) -> Attempt {
        let pid = self.running.as_ref().map(|r| r.pid).unwrap_or_default();
        let answer = match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => map,
            _ => {
                let preview: String = String::from_utf8_lossy(bytes).chars().take(120).collect();
                tracing::error!(processor_pid = pid, correlation_id = %job.correlation_id, line = %preview.trim_end(), "processor wrote a line that is not a JSON object; restarting it");
                self.discard();
                return Attempt::Fail {
                    error: "the processor's answer is not a JSON object (its output is out of sync; the processor was restarted)".into(),
                    response: None,
                };
            }
        };
        let answered_for = answer.get("correlation_id").and_then(Value::as_str);
        if answered_for != Some(job.correlation_id.as_str()) {
            tracing::error!(processor_pid = pid, correlation_id = %job.correlation_id, answered_for = ?answered_for, "processor answered for another message; restarting it");
            self.discard();
            return Attempt::Fail {
                error: format!(
                    "the processor answered with correlation_id {}, not this message's (its output is out of sync; the processor was restarted)",
                    answered_for.map_or("missing".to_string(), |c| format!("`{c}`"))
                ),
                response: None,
            };
        }
        if let Some(error) = answer.get("error").filter(|e| !e.is_null()) {
            let error = match error {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            return if answer.get("retry").and_then(Value::as_bool) == Some(true) {
                Attempt::Retry {
                    error,
                    response: None,
                    retry_after: None,
                }
            } else {
                Attempt::Fail {
                    error,
                    response: None,
                }
            };
        }
        let Some(result) = answer.get("result") else {
            return Attempt::Fail {
                error: "the processor's answer has neither `result` nor `error`".into(),
                response: None,
            };
        };
        let status = match answer.get("status_code") {
            None | Some(Value::Null) => 200,
            Some(v) => match v.as_u64().filter(|s| (100..=599).contains(s)) {
                Some(s) => s as u16,
                None => {
                    return Attempt::Fail {
                        error: format!(
                            "the processor's status_code {v} is not an HTTP status (100-599)"
                        ),
                        response: None,
                    }
                }
            },
        };
        Attempt::Answered(json_response(status, result))
    }
}

/// Read one answer line; blank lines are skipped.
async fn read_answer(stdout: &mut BufReader<ChildStdout>) -> Read {
    loop {
        let mut buf = Vec::new();
        let read = (&mut *stdout)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await;
        match read {
            Ok(0) | Err(_) => return Read::Exited,
            Ok(_) if buf.last() != Some(&b'\n') => {
                // Cut off: too long, or the child ended mid-line.
                return if buf.len() > MAX_LINE {
                    Read::TooLong
                } else {
                    Read::Exited
                };
            }
            Ok(_) if buf.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(_) => return Read::Line(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    const EXAMPLE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/command-processor/processor.py"
    );

    fn python(processes: usize, timeout: Duration) -> CommandProcessor {
        CommandProcessor::start(vec!["python3".into(), EXAMPLE.into()], processes, timeout).unwrap()
    }

    fn job(id: &str, payload: Value) -> Job {
        Job {
            correlation_id: id.into(),
            attempt: 1,
            payload,
            headers: BTreeMap::new(),
            metadata: json!({}),
        }
    }

    fn answered(attempt: Attempt) -> (u16, Value) {
        match attempt {
            Attempt::Answered(resp) => (
                resp.status_code,
                serde_json::from_slice(&resp.body_bytes().unwrap()).unwrap(),
            ),
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn retried(attempt: Attempt) -> String {
        match attempt {
            Attempt::Retry { error, .. } => error,
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    fn failed(attempt: Attempt) -> String {
        match attempt {
            Attempt::Fail { error, .. } => error,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn python_example_operations() {
        let p = python(1, Duration::from_secs(10));
        let (status, body) = answered(
            p.process(&job(
                "a",
                json!({"operation": "echo", "data": {"k": [1, 2]}}),
            ))
            .await,
        );
        assert_eq!(status, 200);
        assert_eq!(body["output"], json!({"k": [1, 2]}));
        assert!(body["processed_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')));
        let (_, body) = answered(
            p.process(&job(
                "b",
                json!({"operation": "uppercase", "data": "héllo"}),
            ))
            .await,
        );
        assert_eq!(body["output"], "HÉLLO");
        let (_, body) = answered(
            p.process(&job("c", json!({"operation": "reverse", "data": "abc"})))
                .await,
        );
        assert_eq!(body["output"], "cba");
        let (_, body) = answered(p.process(&job("d", json!({"operation": "nope"}))).await);
        assert_eq!(body["output"], "Unknown operation: nope");
        assert_eq!(
            failed(p.process(&job("e", json!({"operation": "error"}))).await),
            "Test error"
        );
        // The same child served them all.
        assert_eq!(p.idle_pids().len(), 1);
        p.shutdown().await;
        assert_eq!(
            retried(p.process(&job("f", json!({"operation": "echo"}))).await),
            "the processor is shutting down"
        );
    }

    #[tokio::test]
    async fn a_crash_is_retried_on_a_restarted_child() {
        let p = python(1, Duration::from_secs(10));
        let before = p.idle_pids();
        assert_eq!(before.len(), 1);
        assert_eq!(
            retried(p.process(&job("x", json!({"operation": "crash"}))).await),
            "the processor exited"
        );
        assert!(p.idle_pids().is_empty(), "the dead child is not kept");
        let started = Instant::now();
        let (_, body) = answered(
            p.process(&job("y", json!({"operation": "echo", "data": "again"})))
                .await,
        );
        assert_eq!(body["output"], "again");
        assert!(
            started.elapsed() >= FIRST_BACKOFF,
            "restart waits the backoff"
        );
        let after = p.idle_pids();
        assert_eq!(after.len(), 1);
        assert_ne!(before, after, "a new child answered");
        p.shutdown().await;
    }

    /// A child that answers the protocol from sh, except for messages that
    /// ask it to misbehave.
    const SH_CHILD: &str = r#"while IFS= read -r line; do
  case "$line" in
    *garbage*) echo "not json" ;;
    *wrongid*) echo '{"correlation_id":"someone-else","result":1}' ;;
    *) id=${line#*\"correlation_id\":\"}; id=${id%%\"*}
       printf '{"correlation_id":"%s","result":{"pid":%s},"status_code":201}\n' "$id" "$$" ;;
  esac
done"#;

    #[tokio::test]
    async fn garbage_output_fails_and_the_child_is_replaced() {
        let p = CommandProcessor::start(
            vec!["sh".into(), "-c".into(), SH_CHILD.into()],
            1,
            Duration::from_secs(10),
        )
        .unwrap();
        let first = p.idle_pids()[0];
        let (status, body) = answered(p.process(&job("m1", json!("fine"))).await);
        assert_eq!(status, 201);
        assert_eq!(body["pid"], json!(first));

        let error = failed(p.process(&job("m2", json!("garbage"))).await);
        assert!(error.contains("not a JSON object"), "{error}");
        assert!(error.contains("restarted"), "{error}");
        let (_, body) = answered(p.process(&job("m3", json!("fine"))).await);
        let second = body["pid"].as_u64().unwrap();
        assert_ne!(second, u64::from(first), "out of sync: a new child");

        let error = failed(p.process(&job("m4", json!("wrongid"))).await);
        assert!(error.contains("`someone-else`"), "{error}");
        let (_, body) = answered(p.process(&job("m5", json!("fine"))).await);
        assert_ne!(body["pid"].as_u64().unwrap(), second);
        p.shutdown().await;
    }

    #[tokio::test]
    async fn a_slow_child_times_out_and_is_replaced() {
        let p = python(1, Duration::from_millis(700));
        let before = p.idle_pids();
        let started = Instant::now();
        assert_eq!(
            retried(
                p.process(&job("s", json!({"operation": "sleep", "seconds": 30})))
                    .await
            ),
            "processor timed out"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(700) && took < Duration::from_secs(3),
            "{took:?}"
        );
        let (_, body) = answered(
            p.process(&job("t", json!({"operation": "uppercase", "data": "ok"})))
                .await,
        );
        assert_eq!(body["output"], "OK");
        assert_ne!(p.idle_pids(), before);
        p.shutdown().await;
    }

    #[tokio::test]
    async fn children_work_in_parallel() {
        let p = Arc::new(python(2, Duration::from_secs(10)));
        // Warm up both children (the interpreter's start-up is not measured).
        let (w1, w2) = (
            job("w1", json!({"operation": "echo", "data": 1})),
            job("w2", json!({"operation": "echo", "data": 2})),
        );
        let (a, b) = tokio::join!(p.process(&w1), p.process(&w2));
        answered(a);
        answered(b);
        let one = Duration::from_millis(800);
        let started = Instant::now();
        let slow = |id: &str| job(id, json!({"operation": "sleep", "seconds": 0.8}));
        let (p1, p2) = (slow("p1"), slow("p2"));
        let (a, b) = tokio::join!(p.process(&p1), p.process(&p2));
        let took = started.elapsed();
        assert_eq!(answered(a).1["output"], "slept 0.8");
        assert_eq!(answered(b).1["output"], "slept 0.8");
        assert!(took >= one, "{took:?}");
        assert!(
            took < one * 2,
            "two children, two messages at once: {took:?}"
        );
        assert_eq!(p.idle_pids().len(), 2);
        p.shutdown().await;
    }

    #[tokio::test]
    async fn a_program_that_does_not_exist_fails_at_start() {
        let err = CommandProcessor::start(
            vec!["/nonexistent/openhqm-processor".into()],
            1,
            Duration::from_secs(1),
        )
        .err()
        .unwrap();
        assert!(err.contains("cannot start the processor"), "{err}");
        assert!(CommandProcessor::start(vec![], 1, Duration::from_secs(1)).is_err());
        assert!(CommandProcessor::start(vec!["sh".into()], 0, Duration::from_secs(1)).is_err());
    }
}
