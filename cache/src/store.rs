//! [`Store`]: the handle on one store root, its directory layout and crash repair on open.
//!
//! Layout (see design.md "Store layout"):
//! `blobs-v1/sha256/<hex>`, `snapshots-v1/<id>/{fs,work,owner,committed}`, `tmp/`, `locks/`,
//! `index-v1.db` (SQLite, WAL).
//!
//! The root is private to its owner (0700, as `/var/lib/docker` is 0710): snapshots hold
//! image files as they are (setuid binaries, device nodes) and must not be reachable by other
//! host users. It is created 0700 (no window) and an existing root is re-moded at open.
//!
//! `sentinel-v1/` holds a whiteout (char 0:0) and an opaque directory, written when the store
//! is made and checked at every open: a store copied without device nodes or xattrs (zip,
//! `cp -r`, a CI cache) has lost every layer's whiteouts too, and is refused
//! ([`CacheError::CopiedStore`]) instead of showing deleted files again.
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
pub(crate) const STALE_TMP_SECS: u64 = 24 * 3600;

pub(crate) const BLOBS_DIR: &str = "blobs-v1/sha256";
pub(crate) const SNAPSHOTS_DIR: &str = "snapshots-v1";
pub(crate) const TMP_DIR: &str = "tmp";
pub(crate) const LOCKS_DIR: &str = "locks";
pub(crate) const DB_FILE: &str = "index-v1.db";
const SENTINEL_DIR: &str = "sentinel-v1";

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
        make_private_root(root)?;
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
        store.check_sentinel()?;
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

    /// Check the sentinel's whiteout and opaque directory; make them in a store that has none
    /// yet (new, or made by an older rbuild). Where this process cannot make them (no whiteout
    /// support) nothing is recorded and nothing is checked.
    fn check_sentinel(&self) -> Result<(), CacheError> {
        let dir = self.inner.root.join(SENTINEL_DIR);
        let wh = dir.join("whiteout");
        let opq = dir.join("opaque");
        let recorded = self.meta_get("store", "sentinel")?.is_some();
        if !recorded && !dir.exists() {
            let made = (|| -> std::io::Result<()> {
                let tmp = self.new_tmp_path("sentinel");
                fs::create_dir(&tmp)?;
                fs::write(tmp.join("file"), b"rbuild store sentinel\n")?;
                crate::overlay::make_whiteout_at(
                    rustix::fs::CWD,
                    tmp.join("whiteout").as_os_str(),
                )?;
                fs::create_dir(tmp.join("opaque"))?;
                rustix::fs::lsetxattr(
                    tmp.join("opaque"),
                    crate::overlay::opaque_xattr(),
                    b"y",
                    rustix::fs::XattrFlags::empty(),
                )?;
                fs::rename(&tmp, &dir)
            })();
            if made.is_ok() {
                self.meta_put("store", "sentinel", "1")?;
            }
            return Ok(());
        }
        let copied = |what: &str| CacheError::CopiedStore {
            path: self.inner.root.clone(),
            what: what.to_string(),
        };
        if !dir.is_dir() {
            return Err(copied("sentinel-v1/ is missing"));
        }
        match fs::symlink_metadata(&wh) {
            Ok(md) if crate::overlay::is_whiteout(&wh, &md) => {}
            _ => {
                return Err(copied(
                    "sentinel-v1/whiteout is no longer a whiteout device",
                ))
            }
        }
        let mut buf = [0u8; 4];
        match rustix::fs::lgetxattr(&opq, crate::overlay::opaque_xattr(), &mut buf) {
            Ok(1) if buf[0] == b'y' => {}
            _ => {
                return Err(copied(&format!(
                    "sentinel-v1/opaque has lost its {} xattr",
                    crate::overlay::opaque_xattr()
                )))
            }
        }
        if !recorded {
            self.meta_put("store", "sentinel", "1")?;
        }
        Ok(())
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

/// Create `root` (and missing parents) with mode 0700, so it is never reachable by others even
/// for a moment; re-mode an existing root this user owns to 0700. A root that cannot be
/// created or written is [`CacheError::StoreNotWritable`], naming the directory and its owner.
fn make_private_root(root: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let not_writable = |op: &'static str, e: io::Error| {
        let mut at = root;
        while !at.exists() {
            match at.parent() {
                Some(p) => at = p,
                None => break,
            }
        }
        let overflow = fs::read_to_string("/proc/sys/kernel/overflowuid")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let owner = match fs::metadata(at) {
            Ok(m) if crate::overlay::rootless() && Some(m.uid()) == overflow => {
                "another user (outside this rootless user namespace)".to_string()
            }
            Ok(m) => format!("uid {}", m.uid()),
            Err(_) => "unknown".into(),
        };
        CacheError::StoreNotWritable {
            path: root.to_path_buf(),
            op,
            at: at.to_path_buf(),
            owner,
            source: e,
        }
    };
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(not_writable("create directory", e))
        }
        Err(e) => return Err(CacheError::io("create directory", root, e)),
    }
    let md = fs::metadata(root).map_err(|e| CacheError::io("stat", root, e))?;
    let me = rustix::process::geteuid().as_raw();
    if md.uid() == me && md.mode() & 0o7777 != 0o700 {
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(|e| CacheError::io("make private", root, e))?;
    }
    if rustix::fs::access(
        root,
        rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
    )
    .is_err()
    {
        return Err(not_writable(
            "write",
            io::Error::from(io::ErrorKind::PermissionDenied),
        ));
    }
    Ok(())
}

/// The pid in a `<pid>-…` name.
pub(crate) fn pid_prefix(name: &str) -> Option<i32> {
    let (pid, _) = name.split_once('-')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}
