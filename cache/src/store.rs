//! [`Store`]: the handle on one store root, its directory layout and crash repair on open.
//!
//! Layout (see design.md "Store layout"):
//! `blobs-v1/sha256/<hex>`, `snapshots-v1/<id>/{fs,work,owner,committed}`, `tmp/`, `locks/`,
//! `index-v1.db` (SQLite, WAL).
//!
//! Entries in `tmp/` are named `<pid>-<kind>-<unique>`; [`Store::open`] removes those whose pid is
//! no longer alive, and any other entry older than [`STALE_TMP_SECS`].

use crate::error::{CacheError, Result};
use crate::util;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// Age after which an entry in `tmp/` that does not carry a pid prefix is considered stale.
pub const STALE_TMP_SECS: u64 = 24 * 3600;

pub(crate) const BLOBS_DIR: &str = "blobs-v1/sha256";
pub(crate) const SNAPSHOTS_DIR: &str = "snapshots-v1";
pub(crate) const TMP_DIR: &str = "tmp";
pub(crate) const LOCKS_DIR: &str = "locks";
pub(crate) const DB_FILE: &str = "index-v1.db";

pub(crate) struct Inner {
    pub(crate) root: PathBuf,
    pub(crate) db_path: PathBuf,
    pub(crate) db: Mutex<rusqlite::Connection>,
}

/// A handle on an rbuild store. Cheap to clone (an `Arc` inside), `Send + Sync`.
///
/// Several processes may open the same root at once: blobs are committed by atomic rename, the
/// index is SQLite in WAL mode with a long busy timeout, and exclusive work can use [`Store::lock`].
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.inner.root)
            .finish()
    }
}

impl Store {
    /// Open (creating when needed) the store at `root`, then repair what a crashed run left:
    /// stale `tmp/` entries, uncommitted snapshots of dead processes and unsynced ones from an
    /// earlier boot are removed; unsynced snapshots older than
    /// [`SETTLE_AFTER`](crate::snapshot::SETTLE_AFTER) are synced.
    pub fn open(root: &Path) -> Result<Store, CacheError> {
        for sub in [BLOBS_DIR, SNAPSHOTS_DIR, TMP_DIR, LOCKS_DIR] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(|e| CacheError::io("create directory", &p, e))?;
        }
        let root = fs::canonicalize(root).map_err(|e| CacheError::io("canonicalize", root, e))?;
        let db_path = root.join(DB_FILE);
        let conn = crate::index::open_db(&db_path)?;
        let store = Store {
            inner: Arc::new(Inner {
                root,
                db_path,
                db: Mutex::new(conn),
            }),
        };
        store.check_mode()?;
        store.clean_tmp()?;
        store.clean_snapshots()?;
        // Best effort: a failed sync leaves the markers unsynced, which is safe.
        let _ = store.settle_snapshots(crate::snapshot::SETTLE_AFTER);
        Ok(store)
    }

    /// Record the store's mode (root / rootless) on first use; refuse the other mode later.
    fn check_mode(&self) -> Result<(), CacheError> {
        let current = crate::overlay::mode();
        match self.meta_get("store", "mode")? {
            Some(m) if m != current => Err(CacheError::ModeMismatch {
                path: self.inner.root.clone(),
                store: m,
                current,
            }),
            Some(_) => Ok(()),
            None => self.meta_put("store", "mode", current),
        }
    }

    /// The store root (canonical).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// `root/tmp`: scratch space on the store's filesystem (renames into the store are atomic).
    pub fn tmp_dir(&self) -> PathBuf {
        self.inner.root.join(TMP_DIR)
    }

    /// A fresh, not-yet-existing path in `tmp/` named `<pid>-<kind>-<unique>`, so that
    /// [`Store::open`] can remove it if this process dies. `kind` should be a short word.
    pub fn new_tmp_path(&self, kind: &str) -> PathBuf {
        let kind: String = kind
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(32)
            .collect();
        self.tmp_dir().join(format!(
            "{}-{}-{}",
            std::process::id(),
            kind,
            util::base32(util::unique_u64(), 12)
        ))
    }

    pub(crate) fn db(&self) -> MutexGuard<'_, rusqlite::Connection> {
        // A panic while holding the lock cannot leave the connection in a torn state that matters
        // to us (SQLite rolls back), so recover from poisoning.
        match self.inner.db.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub(crate) fn db_err(&self, op: &'static str, source: rusqlite::Error) -> CacheError {
        CacheError::Db {
            op,
            path: self.inner.db_path.clone(),
            source,
        }
    }

    fn clean_tmp(&self) -> Result<()> {
        let dir = self.tmp_dir();
        let rd = fs::read_dir(&dir).map_err(|e| CacheError::io("read directory", &dir, e))?;
        let now = SystemTime::now();
        for ent in rd {
            let ent = ent.map_err(|e| CacheError::io("read directory", &dir, e))?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            let stale = match pid_prefix(&name) {
                Some(pid) => !util::pid_alive(pid),
                None => match ent.metadata() {
                    Ok(md) => md
                        .modified()
                        .ok()
                        .and_then(|m| now.duration_since(m).ok())
                        .is_some_and(|age| age > Duration::from_secs(STALE_TMP_SECS)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                    Err(e) => return Err(CacheError::io("stat", ent.path(), e)),
                },
            };
            if stale {
                util::remove_tree(&ent.path())?;
            }
        }
        Ok(())
    }
}

/// The pid in a `<pid>-…` name.
pub(crate) fn pid_prefix(name: &str) -> Option<i32> {
    let (pid, _) = name.split_once('-')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}
