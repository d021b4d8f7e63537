//! The default store: one SQLite file in WAL mode with full sync, so a
//! committed entry survives the process being killed.

mod breakers;
mod queue;

pub use breakers::SqliteBreakers;

use super::codec::{self, checksum};
use super::{now_ms, offload, BreakerStore, Journal, Store, StoreError};
use crate::journal::{Claimed, Entry, EntryKind, Loaded, RunRecord, RunStatus, Snapshot};
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Append-only list of migrations; `user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE runs (
        rid INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        agent TEXT NOT NULL,
        task TEXT NOT NULL,
        status TEXT NOT NULL,
        step INTEGER NOT NULL DEFAULT 0,
        started_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        output TEXT,
        owner_pid INTEGER
    );
    CREATE TABLE entries (
        rid INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        step INTEGER NOT NULL,
        payload TEXT NOT NULL,
        checksum INTEGER NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (rid, seq)
    ) WITHOUT ROWID;
    CREATE INDEX entries_by_step ON entries (rid, step, kind);
    CREATE TABLE snapshots (
        rid INTEGER PRIMARY KEY,
        seq INTEGER NOT NULL,
        state TEXT NOT NULL,
        checksum INTEGER NOT NULL
    );
",
    "
    CREATE TABLE escalations (
        id TEXT PRIMARY KEY,
        run TEXT NOT NULL,
        step INTEGER NOT NULL,
        reason TEXT NOT NULL,
        record TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        resolved_at INTEGER,
        resolved_by TEXT,
        resolution TEXT
    );
    CREATE INDEX escalations_open ON escalations (resolved_at, created_at);
    CREATE INDEX escalations_by_run ON escalations (run, step);
",
    "
    CREATE TABLE breakers (
        target TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        open_until INTEGER NOT NULL DEFAULT 0,
        opened INTEGER NOT NULL DEFAULT 0,
        version INTEGER NOT NULL DEFAULT 0,
        writer INTEGER NOT NULL DEFAULT 0,
        updated_at INTEGER NOT NULL
    );
",
    // Half-open probes claimed through the store, so `half_open_probes`
    // holds across processes.
    "
    ALTER TABLE breakers ADD COLUMN probes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE breakers ADD COLUMN probe_until INTEGER NOT NULL DEFAULT 0;
",
    // Who last set a breaker by hand (`backstop breakers`, the API); empty
    // when the breaker itself made the last change.
    "
    ALTER TABLE breakers ADD COLUMN set_by TEXT NOT NULL DEFAULT '';
",
    // The run queue: runs any worker may drive (see `Journal::claim`).
    "
    ALTER TABLE runs ADD COLUMN queued INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN queue_gen INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN claims INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN not_before INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX runs_queue ON runs (queued, not_before);
",
    // Failures counted by every process (a breaker's `shared_failures`).
    "
    ALTER TABLE breakers ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE breakers ADD COLUMN failures_until INTEGER NOT NULL DEFAULT 0;
",
];

/// A read-only connection. When even that cannot be had (SQLite must make
/// or grow the WAL's `-shm` index to read, and a read-only directory or a
/// full disk refuses it), the file is read as immutable: SQLite then reads
/// only the main file, without the WAL or any lock. That view can miss the
/// newest writes and is said so on stderr; it never changes the file.
pub(crate) fn connect_read_only(path: &Path) -> rusqlite::Result<Connection> {
    use rusqlite::OpenFlags;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let first = Connection::open_with_flags(path, flags).and_then(|c| {
        c.busy_timeout(BUSY)?;
        c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })?;
        Ok(c)
    });
    match first {
        Ok(c) => Ok(c),
        Err(e) => {
            let mut uri = String::from("file:");
            for b in path.to_string_lossy().bytes() {
                match b {
                    b'%' | b'?' | b'#' => uri.push_str(&format!("%{b:02X}")),
                    _ => uri.push(b as char),
                }
            }
            uri.push_str("?immutable=1");
            let c = Connection::open_with_flags(uri, flags)?;
            c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })?;
            eprintln!(
                "warning: {} could not be read with its write-ahead log ({e}); read as it is on \
                    disk, so the newest writes may be missing",
                path.display()
            );
            Ok(c)
        }
    }
}

pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Opened by [`SqliteStore::open_read_only`].
    read_only: bool,
    /// The schema version the file had before this open migrated it (0
    /// for a file this open made).
    migrated_from: usize,
    /// Declared after `conn`, so it is dropped after the connection closes.
    _open: Registered,
}

/// How long a write waits for another process's write to finish.
const BUSY: std::time::Duration = std::time::Duration::from_secs(10);

/// What the first 100 bytes of a SQLite file say about it, checked without
/// opening it through SQLite (which could change it: closing the last
/// connection folds the WAL into the file and deletes it).
fn check_file(path: &Path) -> Result<(), String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len == 0 {
        return Err(
            "the file is empty (0 bytes): it was cut or emptied after it held a store; \
            refusing to start a new one over it (move it away to start afresh)"
                .into(),
        );
    }
    let mut header = [0u8; 100];
    if len < 100 || f.read_exact(&mut header).is_err() {
        return Err(format!(
            "the file is {len} bytes, too short for a SQLite database: it was cut"
        ));
    }
    if &header[..16] != b"SQLite format 3\0" {
        return Err("it is not a SQLite database".into());
    }
    let page = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536u64,
        n => u64::from(n),
    };
    let pages = u64::from(u32::from_be_bytes(
        header[28..32].try_into().expect("4 bytes"),
    ));
    // The in-header size is valid when the version-valid-for number
    // matches the change counter (SQLite 3.7.0 and later write both).
    let valid = header[24..28] == header[92..96];
    if valid && page >= 512 && pages > 0 && len < pages * page {
        return Err(format!(
            "the file is {len} bytes but its header says {} ({pages} pages of {page}): it was cut",
            pages * page
        ));
    }
    Ok(())
}

/// Stores this process has open, by canonical path, with how many
/// connections. The file check reads the file through a descriptor of its
/// own, and closing any descriptor of a file drops every POSIX lock the
/// process holds on it, SQLite's included: a connection already open would
/// then lose its locks (and another process could fold the WAL under it).
/// So the check runs only while this process has no connection to it.
static OPEN: std::sync::Mutex<Option<std::collections::HashMap<PathBuf, usize>>> =
    std::sync::Mutex::new(None);

/// One connection's place in [`OPEN`].
pub(crate) struct Registered(Option<PathBuf>);

impl Registered {
    /// Runs `check` unless this process has `path` open already, then
    /// counts one more connection to it.
    pub(crate) fn enter(
        path: &Path,
        check: impl FnOnce() -> Result<(), String>,
    ) -> Result<Registered, String> {
        let key = std::fs::canonicalize(path).ok();
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        let map = open.get_or_insert_with(Default::default);
        let already = key
            .as_ref()
            .is_some_and(|k| map.get(k).copied().unwrap_or(0) > 0);
        if !already {
            check()?;
        }
        if let Some(k) = &key {
            *map.entry(k.clone()).or_default() += 1;
        }
        Ok(Registered(key))
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(k) = self.0.take() {
            let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(map) = open.as_mut() {
                if let Some(n) = map.get_mut(&k) {
                    *n -= 1;
                    if *n == 0 {
                        map.remove(&k);
                    }
                }
            }
        }
    }
}

/// The companions a store leaves beside its file; one of them without the
/// file means the store vanished (its runs with it).
fn companions(path: &Path) -> Vec<PathBuf> {
    ["-wal", "-shm", ".locks"]
        .iter()
        .map(|suffix| {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            PathBuf::from(p)
        })
        .filter(|p| p.exists())
        .collect()
}

impl SqliteStore {
    /// Opens the store at `path` for reading and writing, creating it when
    /// nothing is there. A file that is not a sound store, or a store that
    /// vanished, is reported and never modified or replaced.
    ///
    /// The check is what a crash or a cut can damage, in O(1): the header,
    /// and the file's length against it. A full `quick_check` read every page
    /// on every open: 30 ms at 20 MB, growing with history.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_owned();
        let open_err = |message: String| StoreError::Open {
            path: path.display().to_string(),
            message,
        };
        if !path.exists() {
            let left = companions(&path);
            if !left.is_empty() {
                return Err(open_err(format!(
                    "the store is gone but {} of it remain{}: its runs, escalations and breaker \
                        states were lost; refusing to start an empty store in its place (remove {} \
                        to start afresh)",
                    left.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if left.len() == 1 { "s" } else { "" },
                    if left.len() == 1 { "it" } else { "them" },
                )));
            }
            Self::create(&path).map_err(open_err)?;
        }
        let registered = Registered::enter(&path, || check_file(&path))
            .map_err(|m| open_err(format!("{m}; the file was left as it is")))?;
        let conn = Connection::open(&path).map_err(|e| open_err(e.to_string()))?;
        let setup = || -> rusqlite::Result<()> {
            conn.busy_timeout(BUSY)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            Ok(())
        };
        setup().map_err(|e| open_err(format!("{e}; the file was left as it is")))?;
        let mut j = SqliteStore {
            path: path.clone(),
            conn: Mutex::new(conn),
            read_only: false,
            migrated_from: MIGRATIONS.len(),
            _open: registered,
        };
        match j.migrate() {
            Ok(from) => j.migrated_from = from,
            Err(e @ StoreError::Newer { .. }) => return Err(e),
            Err(e) => return Err(open_err(format!("migration failed: {e}"))),
        }
        Ok(j)
    }

    /// A new store, made whole under a temporary name and then renamed into
    /// place: a store file that exists is always a whole one, so an empty
    /// or short one can only mean damage.
    fn create(path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".new-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let made = (|| -> Result<(), StoreError> {
            let conn = Connection::open(&tmp)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            let j = SqliteStore {
                path: tmp.clone(),
                conn: Mutex::new(conn),
                read_only: false,
                migrated_from: 0,
                _open: Registered(None),
            };
            j.migrate()?;
            // Fold the WAL in, so the renamed file holds everything.
            j.lock().pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
            Ok(())
        })();
        // Linked, not renamed, into place: a rename would replace a store
        // another process made (and is writing) meanwhile. Whoever links
        // first wins; the others open the winner's.
        let renamed = made.map_err(|e| e.to_string()).and_then(|()| {
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| e.to_string())?;
            match std::fs::hard_link(&tmp, path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(format!("cannot put it in place: {e}")),
            }
        });
        for suffix in ["", "-wal", "-shm"] {
            let mut p = tmp.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
        renamed.map_err(|e| format!("cannot create the store: {e}"))
    }

    /// Opens the store at `path` for reading only, for commands that only
    /// read (`runs`, `status`, `escalations`): they work on a read-only
    /// file or directory, on a full disk, and while another process holds
    /// the write lock, and never create, migrate or change anything.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_owned();
        let open_err = |message: String| StoreError::Open {
            path: path.display().to_string(),
            message,
        };
        if !path.exists() {
            return Err(StoreError::Missing(path.display().to_string()));
        }
        let registered = Registered::enter(&path, || check_file(&path))
            .map_err(|m| open_err(format!("{m}; the file was left as it is")))?;
        let conn = connect_read_only(&path).map_err(|e| open_err(e.to_string()))?;
        let version: usize = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| open_err(e.to_string()))?;
        if version > MIGRATIONS.len() {
            return Err(StoreError::Newer {
                location: path.display().to_string(),
                found: version as i64,
                known: MIGRATIONS.len() as i64,
            });
        }
        if version < MIGRATIONS.len() {
            return Err(open_err(format!(
                "the store is at schema version {version} of {}: `backstop migrate` (or any \
                    command that writes, such as `backstop run`) brings it up to date",
                MIGRATIONS.len()
            )));
        }
        Ok(SqliteStore {
            path,
            conn: Mutex::new(conn),
            read_only: true,
            migrated_from: version,
            _open: registered,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Brings the file to this backstop's schema; the version it was at.
    /// A newer schema (a later backstop's) is refused, unchanged.
    fn migrate(&self) -> Result<usize, StoreError> {
        let newer = |found: usize| StoreError::Newer {
            location: self.path.display().to_string(),
            found: found as i64,
            known: MIGRATIONS.len() as i64,
        };
        let mut conn = self.lock();
        // Read first: a store that needs nothing takes no write lock (a
        // reader must not wait behind another process's write).
        let current: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if current > MIGRATIONS.len() {
            return Err(newer(current));
        }
        if current == MIGRATIONS.len() {
            return Ok(current);
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: usize = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > MIGRATIONS.len() {
            return Err(newer(version));
        }
        for sql in MIGRATIONS.iter().skip(version) {
            tx.execute_batch(sql)?;
        }
        tx.pragma_update(None, "user_version", MIGRATIONS.len())?;
        tx.commit()?;
        Ok(version)
    }

    /// This backstop's schema version.
    pub fn schema_version() -> i64 {
        MIGRATIONS.len() as i64
    }

    /// [`crate::store::migrate`] for SQLite.
    pub fn migrate_at(path: &Path) -> Result<crate::store::Migrated, StoreError> {
        let existed = path.exists();
        let store = SqliteStore::open(path)?;
        Ok(crate::store::Migrated {
            from: if existed {
                store.migrated_from as i64
            } else {
                0
            },
            to: MIGRATIONS.len() as i64,
        })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rid(conn: &Connection, run: &str) -> Result<i64, StoreError> {
        conn.query_row("SELECT rid FROM runs WHERE id = ?1", [run], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::NoSuchRun(run.to_owned()))
    }

    fn query_entries(
        conn: &Connection,
        run: &str,
        rid: i64,
        after: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut stmt = conn.prepare_cached(
            "SELECT seq, kind, step, payload, checksum, at FROM entries WHERE rid = ?1 AND seq > \
                ?2 ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![rid, after as i64], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get(1)?,
                r.get::<_, i64>(2)? as u64,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?;
        codec::decode_entries(run, after, rows)
    }

    fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<(RunRecord, String)> {
        let status: String = r.get(3)?;
        let output: Option<String> = r.get(7)?;
        Ok((
            RunRecord {
                id: r.get(0)?,
                agent: r.get(1)?,
                task: r.get(2)?,
                status: RunStatus::Running,
                step: r.get::<_, i64>(4)? as u64,
                started_at: r.get(5)?,
                updated_at: r.get(6)?,
                output: output.and_then(|o| serde_json::from_str(&o).ok()),
                owner_pid: r.get::<_, Option<i64>>(8)?.map(|p| p as u32),
                queued: r.get::<_, i64>(9)? != 0,
            },
            status,
        ))
    }

    fn finish_record((rec, status): (RunRecord, String)) -> Result<RunRecord, StoreError> {
        codec::finish_record(rec, &status)
    }

    /// Bytes the database file holds (after a WAL checkpoint).
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        let conn = self.lock();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok((pages * size) as u64)
    }
}

const RUN_COLUMNS: &str =
    "id, agent, task, status, step, started_at, updated_at, output, owner_pid, queued";

/// The blocking calls behind [`Journal`], for tools that own the thread
/// (tests, benchmarks, fuzzers).
impl SqliteStore {
    pub fn create_run(&self, id: &str, agent: &str, task: &str) -> Result<(), StoreError> {
        self.insert_run(id, agent, task, false)
    }

    pub fn create_queued_run(&self, id: &str, agent: &str, task: &str) -> Result<(), StoreError> {
        self.insert_run(id, agent, task, true)
    }

    fn insert_run(
        &self,
        id: &str,
        agent: &str,
        task: &str,
        queued: bool,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let q = i64::from(queued);
        self.lock().execute(
            "INSERT INTO runs (id, agent, task, status, step, started_at, updated_at, queued, \
                queue_gen) VALUES (?1, ?2, ?3, 'running', 0, ?4, ?4, ?5, ?5)",
            params![id, agent, task, now, q],
        )?;
        Ok(())
    }

    pub fn append(
        &self,
        run: &str,
        kind: EntryKind,
        step: u64,
        payload: &Value,
    ) -> Result<u64, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let rid = Self::rid(&tx, run)?;
        let seq: i64 = tx.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM entries WHERE rid = ?1",
            [rid],
            |r| r.get(0),
        )?;
        let text = payload.to_string();
        let sum = checksum(run, seq as u64, kind.as_str(), step, &text);
        let now = now_ms();
        tx.execute(
            "INSERT INTO entries (rid, seq, kind, step, payload, checksum, at) VALUES (?1, ?2, ?3, \
                ?4, ?5, ?6, ?7)",
            params![rid, seq, kind.as_str(), step as i64, text, sum, now],
        )?;
        tx.execute(
            "UPDATE runs SET updated_at = ?2, step = MAX(step, ?3), claims = 0 WHERE rid = ?1",
            params![rid, now, step as i64],
        )?;
        tx.commit()?;
        Ok(seq as u64)
    }

    pub fn write_snapshot(&self, run: &str, snapshot: &Snapshot) -> Result<(), StoreError> {
        let conn = self.lock();
        let rid = Self::rid(&conn, run)?;
        let text = snapshot.state.to_string();
        let sum = checksum(run, snapshot.seq, "snapshot", 0, &text);
        conn.execute(
            "INSERT INTO snapshots (rid, seq, state, checksum) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (rid) DO UPDATE SET
                seq = excluded.seq, state = excluded.state, checksum = excluded.checksum",
            params![rid, snapshot.seq as i64, text, sum],
        )?;
        Ok(())
    }

    pub fn load(&self, run: &str) -> Result<Loaded, StoreError> {
        let conn = self.lock();
        let rid = Self::rid(&conn, run)?;
        let rec = conn.query_row(
            &format!("SELECT {RUN_COLUMNS} FROM runs WHERE rid = ?1"),
            [rid],
            Self::record,
        )?;
        let snap: Option<(i64, String, i64)> = conn
            .query_row(
                "SELECT seq, state, checksum FROM snapshots WHERE rid = ?1",
                [rid],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let snapshot = match snap {
            Some((seq, text, sum)) => Some(codec::decode_snapshot(run, seq, &text, sum)?),
            None => None,
        };
        let after = snapshot.as_ref().map_or(0, |s| s.seq);
        let tail = Self::query_entries(&conn, run, rid, after)?;
        Ok(Loaded {
            run: Self::finish_record(rec)?,
            snapshot,
            tail,
        })
    }

    pub fn entries(&self, run: &str) -> Result<Vec<Entry>, StoreError> {
        let conn = self.lock();
        let rid = Self::rid(&conn, run)?;
        Self::query_entries(&conn, run, rid, 0)
    }

    pub fn find(&self, run: &str, step: u64, kind: EntryKind) -> Result<Option<Entry>, StoreError> {
        let conn = self.lock();
        let rid = Self::rid(&conn, run)?;
        // INDEXED BY: left to itself, SQLite satisfies `ORDER BY seq` with
        // the primary key and scans the whole run backwards looking for a
        // kind a step never had, which made each lookup O(run length) (a
        // 10,000-step resume spent most of its time here).
        let row: Option<(i64, String, i64, String, i64, i64)> = conn
            .prepare_cached(
                "SELECT seq, kind, step, payload, checksum, at
                 FROM entries INDEXED BY entries_by_step
                 WHERE rid = ?1 AND step = ?2 AND kind = ?3 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row(params![rid, step as i64, kind.as_str()], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .optional()?;
        row.map(|(seq, k, st, p, sum, at)| {
            codec::decode_entry(run, (seq as u64, k, st as u64, p, sum, at))
        })
        .transpose()
    }

    pub fn set_status(
        &self,
        run: &str,
        status: RunStatus,
        step: u64,
        output: Option<&Value>,
    ) -> Result<(), StoreError> {
        let n = self.lock().execute(
            "UPDATE runs SET status = ?2, step = MAX(step, ?3), output = COALESCE(?4, output), \
                updated_at = ?5 WHERE id = ?1",
            params![
                run,
                status.as_str(),
                step as i64,
                output.map(|o| o.to_string()),
                now_ms()
            ],
        )?;
        if n == 0 {
            return Err(StoreError::NoSuchRun(run.to_owned()));
        }
        Ok(())
    }

    pub fn set_owner(&self, run: &str, pid: Option<u32>) -> Result<(), StoreError> {
        self.lock().execute(
            "UPDATE runs SET owner_pid = ?2 WHERE id = ?1",
            params![run, pid.map(i64::from)],
        )?;
        Ok(())
    }

    pub fn run(&self, run: &str) -> Result<RunRecord, StoreError> {
        let conn = self.lock();
        let rec = conn
            .query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
                [run],
                Self::record,
            )
            .optional()?
            .ok_or_else(|| StoreError::NoSuchRun(run.to_owned()))?;
        Self::finish_record(rec)
    }

    pub fn runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.recent_runs(u32::MAX)
    }

    pub fn enqueue(&self, run: &str) -> Result<(), StoreError> {
        let n = self.lock().execute(
            "UPDATE runs SET queued = 1, queue_gen = queue_gen + 1, claims = 0, not_before = 0
             WHERE id = ?1",
            [run],
        )?;
        if n == 0 {
            return Err(StoreError::NoSuchRun(run.to_owned()));
        }
        Ok(())
    }

    pub fn claim(&self, max: u32) -> Result<Vec<Claimed>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "UPDATE runs SET claims = claims + 1,
                not_before = ?1 + MIN(60000, 1000 << MIN(claims, 6))
             WHERE rid IN (
                SELECT rid FROM runs WHERE queued = 1 AND not_before <= ?1
                ORDER BY not_before, rid LIMIT ?2
             )
             RETURNING id, queue_gen",
        )?;
        let rows = stmt.query_map(params![now_ms(), max], |r| {
            Ok(Claimed {
                run: r.get(0)?,
                gen: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn dequeue(&self, claimed: &Claimed) -> Result<(), StoreError> {
        self.lock().execute(
            "UPDATE runs SET queued = 0 WHERE id = ?1 AND queue_gen = ?2",
            params![claimed.run, claimed.gen],
        )?;
        Ok(())
    }
}

impl SqliteStore {
    /// The `limit` most recently started runs, newest first.
    pub fn recent_runs(&self, limit: u32) -> Result<Vec<RunRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {RUN_COLUMNS} FROM runs ORDER BY started_at DESC, rid DESC LIMIT ?1"
        ))?;
        let rows = stmt.query_map([limit], Self::record)?;
        let mut out = Vec::new();
        for r in rows {
            // A damaged row is reported in its place; the others stay readable.
            out.push(Self::finish_record(r?)?);
        }
        Ok(out)
    }
}

#[async_trait]
impl Journal for SqliteStore {
    async fn create_run(&self, id: &str, agent: &str, task: &str) -> Result<(), StoreError> {
        offload(|| SqliteStore::create_run(self, id, agent, task))
    }
    async fn create_queued_run(&self, id: &str, agent: &str, task: &str) -> Result<(), StoreError> {
        offload(|| SqliteStore::create_queued_run(self, id, agent, task))
    }
    async fn append(
        &self,
        run: &str,
        kind: EntryKind,
        step: u64,
        payload: &Value,
    ) -> Result<u64, StoreError> {
        offload(|| SqliteStore::append(self, run, kind, step, payload))
    }
    async fn write_snapshot(&self, run: &str, snapshot: &Snapshot) -> Result<(), StoreError> {
        offload(|| SqliteStore::write_snapshot(self, run, snapshot))
    }
    async fn load(&self, run: &str) -> Result<Loaded, StoreError> {
        offload(|| SqliteStore::load(self, run))
    }
    async fn entries(&self, run: &str) -> Result<Vec<Entry>, StoreError> {
        offload(|| SqliteStore::entries(self, run))
    }
    async fn find(
        &self,
        run: &str,
        step: u64,
        kind: EntryKind,
    ) -> Result<Option<Entry>, StoreError> {
        offload(|| SqliteStore::find(self, run, step, kind))
    }
    async fn set_status(
        &self,
        run: &str,
        status: RunStatus,
        step: u64,
        output: Option<&Value>,
    ) -> Result<(), StoreError> {
        offload(|| SqliteStore::set_status(self, run, status, step, output))
    }
    async fn set_owner(&self, run: &str, pid: Option<u32>) -> Result<(), StoreError> {
        offload(|| SqliteStore::set_owner(self, run, pid))
    }
    async fn run(&self, run: &str) -> Result<RunRecord, StoreError> {
        offload(|| SqliteStore::run(self, run))
    }
    async fn runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        offload(|| SqliteStore::runs(self))
    }
    async fn enqueue(&self, run: &str) -> Result<(), StoreError> {
        offload(|| SqliteStore::enqueue(self, run))
    }
    async fn claim(&self, max: u32) -> Result<Vec<Claimed>, StoreError> {
        offload(|| SqliteStore::claim(self, max))
    }
    async fn dequeue(&self, claimed: &Claimed) -> Result<(), StoreError> {
        offload(|| SqliteStore::dequeue(self, claimed))
    }
    async fn recent_runs(&self, limit: u32) -> Result<Vec<RunRecord>, StoreError> {
        offload(|| SqliteStore::recent_runs(self, limit))
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn breakers(&self) -> Result<Box<dyn BreakerStore>, StoreError> {
        Ok(Box::new(if self.read_only {
            SqliteBreakers::read_only(self)?
        } else {
            SqliteBreakers::beside(self)?
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let j = SqliteStore::open(dir.path().join("state.db")).unwrap();
        (dir, j)
    }

    #[test]
    fn migrating_twice_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        SqliteStore::open(&path)
            .unwrap()
            .create_run("r", "a", "t")
            .unwrap();
        let j = SqliteStore::open(&path).unwrap();
        assert_eq!(j.run("r").unwrap().agent, "a");
    }

    #[test]
    fn a_tampered_entry_is_named_and_left_alone() {
        let (d, j) = store();
        j.create_run("r1", "a", "t").unwrap();
        j.create_run("r2", "a", "t").unwrap();
        j.append("r1", EntryKind::ToolResult, 1, &json!({"ok": true}))
            .unwrap();
        j.append("r2", EntryKind::ToolResult, 1, &json!({"ok": true}))
            .unwrap();
        drop(j);
        let conn = Connection::open(d.path().join("state.db")).unwrap();
        conn.execute(
            "UPDATE entries SET payload = '{\"ok\":false}' WHERE rid = 1",
            [],
        )
        .unwrap();
        drop(conn);
        let j = SqliteStore::open(d.path().join("state.db")).unwrap();
        let e = j.load("r1").unwrap_err().to_string();
        assert!(
            e.contains("run r1: journal entry 1 is damaged: checksum mismatch"),
            "{e}"
        );
        assert!(j.load("r2").is_ok(), "other runs stay readable");
        assert_eq!(j.runs().unwrap().len(), 2);
    }

    #[test]
    fn a_tampered_snapshot_is_named() {
        let (d, j) = store();
        j.create_run("r1", "a", "t").unwrap();
        j.append("r1", EntryKind::ToolResult, 1, &json!({"ok": true}))
            .unwrap();
        j.write_snapshot(
            "r1",
            &Snapshot {
                seq: 1,
                state: json!({"next": 1}),
            },
        )
        .unwrap();
        drop(j);
        let conn = Connection::open(d.path().join("state.db")).unwrap();
        conn.execute("UPDATE snapshots SET state = '{\"next\":99}'", [])
            .unwrap();
        drop(conn);
        let j = SqliteStore::open(d.path().join("state.db")).unwrap();
        let e = j.load("r1").unwrap_err().to_string();
        assert!(
            e.contains("run r1: journal entry 1 is damaged: snapshot: checksum mismatch"),
            "{e}"
        );
        // The entries themselves are intact and readable.
        assert_eq!(j.entries("r1").unwrap().len(), 1);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_reported_not_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        std::fs::write(&path, vec![7u8; 4096]).unwrap();
        let e = SqliteStore::open(&path).err().unwrap().to_string();
        assert!(e.contains("state.db") && e.contains("left as it is"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 4096]);
    }
}
