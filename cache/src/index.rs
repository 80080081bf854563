//! The SQLite side of the store (`index-v1.db`): the cache index, a generic metadata table,
//! the build-context stat cache, and flock-based advisory locks.
//!
//! Schema (version 1, recorded in `PRAGMA user_version`):
//!
//! ```sql
//! CREATE TABLE cache_index(key TEXT PRIMARY KEY, value TEXT NOT NULL,
//!                          created_at INTEGER NOT NULL, last_used INTEGER NOT NULL) WITHOUT ROWID;
//! CREATE INDEX cache_index_last_used ON cache_index(last_used);
//! CREATE TABLE meta(ns TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
//!                   PRIMARY KEY(ns, key)) WITHOUT ROWID;
//! CREATE TABLE stat_cache(path BLOB PRIMARY KEY, dev INTEGER NOT NULL, ino INTEGER NOT NULL,
//!                         size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
//!                         ctime_ns INTEGER NOT NULL, mode INTEGER NOT NULL,
//!                         hashed_at_ns INTEGER NOT NULL, digest BLOB NOT NULL) WITHOUT ROWID;
//! ```
//!
//! The database runs in WAL mode with `synchronous=NORMAL` and a 60 s busy timeout; every write
//! is an `IMMEDIATE` transaction so concurrent rbuild processes queue instead of failing.

use crate::error::{CacheError, Result};
use crate::store::{Store, LOCKS_DIR};
use crate::util;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cache_index(key TEXT PRIMARY KEY, value TEXT NOT NULL,
    created_at INTEGER NOT NULL, last_used INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cache_index_last_used ON cache_index(last_used);
CREATE TABLE IF NOT EXISTS meta(ns TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY(ns, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stat_cache(path BLOB PRIMARY KEY, dev INTEGER NOT NULL,
    ino INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL, mode INTEGER NOT NULL, hashed_at_ns INTEGER NOT NULL,
    digest BLOB NOT NULL) WITHOUT ROWID;
PRAGMA user_version = 1;
";

/// Busy timeout for all connections.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn open_db(path: &Path) -> Result<Connection> {
    let err = |op: &'static str| {
        let path = path.to_path_buf();
        move |source| CacheError::Db { op, path, source }
    };
    let mut conn = Connection::open(path).map_err(err("open"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(err("busy_timeout"))?;
    // journal_mode=WAL is persistent in the file; setting it again is cheap. Switching a new
    // database to WAL needs an exclusive lock, and SQLite reports SQLITE_BUSY for it without
    // calling the busy handler when another process is opening the same new store: retry.
    let started = std::time::Instant::now();
    loop {
        match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
            Ok(_) => break,
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && started.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(err("enable WAL")(e)),
        }
    }
    conn.execute_batch("PRAGMA synchronous=NORMAL;")
        .map_err(err("pragma synchronous"))?;
    // Leave the WAL in place when closing: a checkpoint on every exit costs two fsyncs, and
    // the next writer would have to re-sync a fresh WAL header. SQLite's automatic checkpoint
    // (every 1000 pages) keeps the WAL bounded.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .map_err(err("no checkpoint on close"))?;
    // An existing store needs no schema transaction (a write on every open).
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err("read schema version"))?;
    if version == 1 {
        return Ok(conn);
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err("begin schema"))?;
    tx.execute_batch(SCHEMA).map_err(err("create schema"))?;
    tx.commit().map_err(err("commit schema"))?;
    Ok(conn)
}

/// One row of the cache index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Cache key.
    pub key: String,
    /// Solver-defined JSON.
    pub value: String,
    /// Unix seconds when this value was first stored.
    pub created_at: i64,
    /// Unix seconds of the last put/touch.
    pub last_used: i64,
}

/// An exclusive advisory lock on `locks/<name>.lock`; released when dropped.
#[derive(Debug)]
pub struct StoreLock {
    _file: fs::File,
    path: PathBuf,
}

impl StoreLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Store {
    fn write_tx<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut conn = self.db();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.db_err(op, e))?;
        let out = f(&tx).map_err(|e| self.db_err(op, e))?;
        tx.commit().map_err(|e| self.db_err(op, e))?;
        Ok(out)
    }

    /// Look up a cache key.
    pub fn index_get(&self, key: &str) -> Result<Option<IndexEntry>, CacheError> {
        let conn = self.db();
        let mut st = conn
            .prepare_cached(
                "SELECT key, value, created_at, last_used FROM cache_index WHERE key = ?1",
            )
            .map_err(|e| self.db_err("index_get", e))?;
        st.query_row([key], |r| {
            Ok(IndexEntry {
                key: r.get(0)?,
                value: r.get(1)?,
                created_at: r.get(2)?,
                last_used: r.get(3)?,
            })
        })
        .optional()
        .map_err(|e| self.db_err("index_get", e))
    }

    /// Insert or replace a cache entry. `created_at` is kept when the value is unchanged.
    pub fn index_put(&self, key: &str, value: &str) -> Result<(), CacheError> {
        let now = util::now_secs();
        self.write_tx("index_put", |tx| {
            tx.prepare_cached(
                "INSERT INTO cache_index(key, value, created_at, last_used) VALUES(?1, ?2, ?3, ?3)
                 ON CONFLICT(key) DO UPDATE SET
                   created_at = CASE WHEN value = excluded.value THEN created_at ELSE excluded.created_at END,
                   value = excluded.value, last_used = excluded.last_used",
            )?
            .execute(params![key, value, now])?;
            Ok(())
        })
    }

    /// Update `last_used` of a key (no-op when absent).
    pub fn index_touch(&self, key: &str) -> Result<(), CacheError> {
        let now = util::now_secs();
        self.write_tx("index_touch", |tx| {
            tx.prepare_cached("UPDATE cache_index SET last_used = ?2 WHERE key = ?1")?
                .execute(params![key, now])?;
            Ok(())
        })
    }

    /// Delete a cache key; returns whether it existed.
    pub fn index_delete(&self, key: &str) -> Result<bool, CacheError> {
        self.write_tx("index_delete", |tx| {
            Ok(tx
                .prepare_cached("DELETE FROM cache_index WHERE key = ?1")?
                .execute([key])?
                > 0)
        })
    }

    /// All index entries, least recently used first (for GC and `du`).
    pub fn index_list(&self) -> Result<Vec<IndexEntry>, CacheError> {
        let conn = self.db();
        let mut st = conn
            .prepare_cached(
                "SELECT key, value, created_at, last_used FROM cache_index ORDER BY last_used, key",
            )
            .map_err(|e| self.db_err("index_list", e))?;
        let rows = st
            .query_map([], |r| {
                Ok(IndexEntry {
                    key: r.get(0)?,
                    value: r.get(1)?,
                    created_at: r.get(2)?,
                    last_used: r.get(3)?,
                })
            })
            .map_err(|e| self.db_err("index_list", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.db_err("index_list", e))
    }

    /// Number of cache index rows.
    pub fn index_count(&self) -> Result<u64, CacheError> {
        let conn = self.db();
        conn.query_row("SELECT COUNT(*) FROM cache_index", [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| n.max(0) as u64)
        .map_err(|e| self.db_err("index_count", e))
    }

    /// Read `(ns, key)` from the metadata table.
    pub fn meta_get(&self, ns: &str, key: &str) -> Result<Option<String>, CacheError> {
        let conn = self.db();
        let mut st = conn
            .prepare_cached("SELECT value FROM meta WHERE ns = ?1 AND key = ?2")
            .map_err(|e| self.db_err("meta_get", e))?;
        st.query_row([ns, key], |r| r.get(0))
            .optional()
            .map_err(|e| self.db_err("meta_get", e))
    }

    /// Upsert `(ns, key) -> value`.
    pub fn meta_put(&self, ns: &str, key: &str, value: &str) -> Result<(), CacheError> {
        self.write_tx("meta_put", |tx| {
            tx.prepare_cached(
                "INSERT INTO meta(ns, key, value) VALUES(?1, ?2, ?3)
                 ON CONFLICT(ns, key) DO UPDATE SET value = excluded.value",
            )?
            .execute([ns, key, value])?;
            Ok(())
        })
    }

    /// Delete `(ns, key)` (no-op when absent).
    pub fn meta_delete(&self, ns: &str, key: &str) -> Result<(), CacheError> {
        self.write_tx("meta_delete", |tx| {
            tx.prepare_cached("DELETE FROM meta WHERE ns = ?1 AND key = ?2")?
                .execute([ns, key])?;
            Ok(())
        })
    }

    /// All `(key, value)` pairs of a namespace, sorted by key.
    pub fn meta_list(&self, ns: &str) -> Result<Vec<(String, String)>, CacheError> {
        let conn = self.db();
        let mut st = conn
            .prepare_cached("SELECT key, value FROM meta WHERE ns = ?1 ORDER BY key")
            .map_err(|e| self.db_err("meta_list", e))?;
        let rows = st
            .query_map([ns], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.db_err("meta_list", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.db_err("meta_list", e))
    }

    /// Take an exclusive advisory lock on `locks/<name>.lock`, blocking until it is free.
    /// Locks exclude each other across processes and across handles/threads of one process.
    pub fn lock(&self, name: &str) -> Result<StoreLock, CacheError> {
        self.lock_impl(name, true)?
            .ok_or_else(|| CacheError::InvalidLockName {
                name: name.to_string(),
            })
    }

    /// Like [`Store::lock`] but returns `None` instead of waiting when the lock is held.
    pub fn try_lock(&self, name: &str) -> Result<Option<StoreLock>, CacheError> {
        self.lock_impl(name, false)
    }

    /// Take a shared advisory lock on `locks/<name>.lock` (many holders; excludes the
    /// exclusive [`Store::lock`]), blocking until no exclusive holder remains. Builds hold the
    /// shared `lease` lock while they run; garbage collection takes it exclusively.
    pub fn lock_shared(&self, name: &str) -> Result<StoreLock, CacheError> {
        self.lock_with(name, true, true)?
            .ok_or_else(|| CacheError::InvalidLockName {
                name: name.to_string(),
            })
    }

    fn lock_impl(&self, name: &str, block: bool) -> Result<Option<StoreLock>> {
        self.lock_with(name, block, false)
    }

    fn lock_with(&self, name: &str, block: bool, shared: bool) -> Result<Option<StoreLock>> {
        if name.is_empty()
            || name.len() > 200
            || name.starts_with('.')
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(CacheError::InvalidLockName {
                name: name.to_string(),
            });
        }
        let path = self.inner.root.join(LOCKS_DIR).join(format!("{name}.lock"));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| CacheError::io("open lock file", &path, e))?;
        use rustix::fs::FlockOperation as Op;
        let op = match (block, shared) {
            (true, false) => Op::LockExclusive,
            (false, false) => Op::NonBlockingLockExclusive,
            (true, true) => Op::LockShared,
            (false, true) => Op::NonBlockingLockShared,
        };
        loop {
            match rustix::fs::flock(&file, op) {
                Ok(()) => return Ok(Some(StoreLock { _file: file, path })),
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::WOULDBLOCK) if !block => return Ok(None),
                Err(e) => return Err(CacheError::io("flock", &path, e.into())),
            }
        }
    }
}
