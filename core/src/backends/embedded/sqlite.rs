//! A SQLite database shared by processes on one machine: WAL journal, full
//! fsync on commit (a commit that returned is on disk), and a busy timeout so
//! writers from other processes wait instead of failing.
//!
//! Single-statement writes go through [`SharedDb::write`], which commits the
//! writes that arrive together in one transaction (group commit): one fsync
//! for a batch instead of one per request, and no caller hears "done" before
//! its batch is on disk.

use rusqlite::Connection;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long start-up waits for other processes initialising the same file.
const INIT_PATIENCE: Duration = Duration::from_secs(30);

fn init(conn: &Connection, schema: &str) -> rusqlite::Result<()> {
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(schema)
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Writes committed together at most (a batch is whatever is waiting).
const MAX_BATCH: usize = 256;

/// One write for the group-commit thread: runs its statement (given the
/// connection; not run when the transaction could not begin), and returns
/// what to tell the caller once the batch's commit is known.
type Reply = Box<dyn FnOnce(Option<&str>) + Send>;
type Job = Box<dyn FnOnce(Option<&Connection>) -> Reply + Send>;

#[derive(Clone)]
pub struct SharedDb {
    conn: Arc<Mutex<Connection>>,
    writes: mpsc::Sender<Job>,
}

/// Run batches of writes, each in one IMMEDIATE transaction with a savepoint
/// per write (a failing write is undone alone). Ends when every handle is gone.
fn group_commit(conn: Arc<Mutex<Connection>>, jobs: mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let e = format!("cannot begin a transaction: {e}");
            for job in batch {
                job(None)(Some(&e));
            }
            continue;
        }
        let replies: Vec<Reply> = batch.into_iter().map(|job| job(Some(&conn))).collect();
        let committed = conn.execute_batch("COMMIT").map_err(|e| e.to_string());
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        let failure = committed.err();
        for reply in replies {
            reply(failure.as_deref());
        }
    }
}

impl SharedDb {
    pub fn open(path: &Path, schema: &str) -> Result<SharedDb, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
        }
        let conn =
            Connection::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(|e| e.to_string())?;
        // Processes starting together on a fresh directory race to switch it
        // to WAL and create the schema; the loser gets "database is locked"
        // even with a busy timeout, so initialisation is retried.
        let deadline = Instant::now() + INIT_PATIENCE;
        let mut pause = Duration::from_millis(10);
        loop {
            match init(&conn, schema) {
                Ok(()) => break,
                Err(e) if is_busy(&e) && Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(format!("cannot initialise {}: {e}", path.display())),
            }
        }
        let conn = Arc::new(Mutex::new(conn));
        let (writes, jobs) = mpsc::channel::<Job>();
        let committer = conn.clone();
        std::thread::Builder::new()
            .name("sqlite-commit".into())
            .spawn(move || group_commit(committer, jobs))
            .map_err(|e| format!("cannot start the SQLite writer thread: {e}"))?;
        Ok(SharedDb { conn, writes })
    }

    /// Run one write statement in the next group commit; the answer comes
    /// once its batch is committed (or with the error that stopped it).
    pub async fn write<T, F>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<T, String>>();
        let job: Job = Box::new(move |conn: Option<&Connection>| {
            let Some(conn) = conn else {
                return Box::new(move |e: Option<&str>| {
                    let _ = tx.send(Err(e.unwrap_or("not run").to_string()));
                }) as Reply;
            };
            let outcome = conn
                .execute_batch("SAVEPOINT one_write")
                .and_then(|()| match f(conn) {
                    Ok(v) => conn.execute_batch("RELEASE one_write").map(|()| v),
                    Err(e) => {
                        let _ = conn.execute_batch("ROLLBACK TO one_write; RELEASE one_write");
                        Err(e)
                    }
                })
                .map_err(|e| e.to_string());
            Box::new(move |commit_failure: Option<&str>| {
                let answer = match commit_failure {
                    Some(e) => Err(format!("commit failed: {e}")),
                    None => outcome,
                };
                let _ = tx.send(answer);
            })
        });
        self.writes
            .send(job)
            .map_err(|_| "the SQLite writer thread stopped".to_string())?;
        rx.await
            .map_err(|_| "the SQLite write was dropped".to_string())?
    }

    /// Run `f` on the connection off the async runtime.
    pub async fn call<T, F>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("database task failed: {e}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many "processes" (connections on threads) opening one fresh file at
    /// once all succeed: the race that failed CI.
    #[test]
    fn concurrent_first_opens_all_succeed() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("race.db");
            let schema = "CREATE TABLE IF NOT EXISTS t (x INTEGER);";
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let path = path.clone();
                    std::thread::spawn(move || SharedDb::open(&path, schema).map(|_| ()))
                })
                .collect();
            for h in handles {
                h.join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("round {round}: {e}"));
            }
        }
    }

    /// Concurrent writes are committed together; a write that fails is
    /// undone alone and reported to its caller, the others in its batch
    /// stand; a writer that heard "done" finds its row from a fresh
    /// connection (it was committed, not only buffered).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_keeps_writes_independent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let db = SharedDb::open(
            &path,
            "CREATE TABLE IF NOT EXISTS t (x INTEGER PRIMARY KEY);",
        )
        .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200i64 {
            let db = db.clone();
            // Every tenth write repeats a key: a constraint error.
            let x = if i % 10 == 9 { i - 1 } else { i };
            tasks.spawn(async move {
                db.write(move |c| c.execute("INSERT INTO t (x) VALUES (?1)", [x]))
                    .await
            });
        }
        let (mut ok, mut failed) = (0, 0);
        while let Some(r) = tasks.join_next().await {
            match r.unwrap() {
                Ok(1) => ok += 1,
                Ok(n) => panic!("inserted {n} rows"),
                Err(e) => {
                    assert!(e.contains("UNIQUE"), "{e}");
                    failed += 1;
                }
            }
        }
        assert_eq!((ok, failed), (180, 20));
        let other = rusqlite::Connection::open(&path).unwrap();
        let n: i64 = other
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 180);
    }
}
