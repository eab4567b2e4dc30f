//! A SQLite database shared by processes on one machine: WAL journal, full
//! fsync on commit (a commit that returned is on disk), and a busy timeout so
//! writers from other processes wait instead of failing.

use rusqlite::Connection;
use std::path::Path;
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

#[derive(Clone)]
pub struct SharedDb {
    conn: Arc<Mutex<Connection>>,
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
        Ok(SharedDb {
            conn: Arc::new(Mutex::new(conn)),
        })
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
}
