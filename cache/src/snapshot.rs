//! Snapshots: layer directories in overlayfs "upper" format under `snapshots-v1/<id>/`.
//!
//! `<id>/fs` is the layer, `<id>/work` the overlay workdir, `<id>/owner` the pid of the process
//! that allocated it, and `<id>/committed` a marker written by [`Store::commit_snapshot`] (the
//! data is on disk: the marker is empty) or [`Store::commit_snapshot_unsynced`] (the data may
//! still be only in the page cache: the marker holds `boot <kernel boot id>`, and counts only
//! during that boot — after a crash or reboot the snapshot is treated as uncommitted and removed).
//! [`Store::settle_snapshots`] makes unsynced snapshots durable with one `syncfs` and empties
//! their markers. [`Store::open`] removes uncommitted snapshots whose owner is dead (a crash
//! mid-build) and unsynced ones from an earlier boot.
//! Ids are 10 lowercase base32 characters, keeping overlay mount option strings short.

use crate::error::{CacheError, Result};
use crate::store::{pid_prefix, Store, SNAPSHOTS_DIR};
use crate::util;
use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;

const ID_LEN: usize = 10;
const COMMITTED: &str = "committed";
const OWNER: &str = "owner";
/// [`Store::open`] settles snapshots committed unsynced at least this long ago. By then the
/// kernel has normally written their data back (default dirty expiry: 30 s), so the `syncfs`
/// costs little on a quiet machine; but it also flushes every other process's dirty data on
/// that filesystem, so it should not run at every open. The price of the delay: a crash or
/// reboot within this window of a build drops that build's step snapshots (cache misses,
/// never wrong data).
pub(crate) const SETTLE_AFTER: std::time::Duration = std::time::Duration::from_secs(600);
/// Uncommitted snapshots without a readable owner file are removed after this long.
const ORPHAN_SECS: u64 = 3600;
/// Prefix of an unsynced marker's content.
const BOOT_PREFIX: &str = "boot ";

/// This kernel boot's id (`/proc/sys/kernel/random/boot_id`), if readable.
fn boot_id() -> Option<&'static str> {
    static ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
    .as_deref()
}

/// What a snapshot's `committed` marker says.
#[derive(Debug, PartialEq, Eq)]
enum Marker {
    /// No marker: not committed.
    Missing,
    /// Committed and on disk.
    Synced,
    /// Committed during this boot, maybe not on disk yet.
    ThisBoot,
    /// Committed unsynced during an earlier boot: not trusted.
    Stale,
    /// The marker cannot be read: not trusted, left alone.
    Unreadable,
}

fn read_marker(dir: &std::path::Path) -> Marker {
    match fs::read(dir.join(COMMITTED)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Marker::Missing,
        Err(_) => Marker::Unreadable,
        Ok(b) if b.is_empty() => Marker::Synced,
        Ok(b) => match std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.strip_prefix(BOOT_PREFIX))
        {
            Some(id) if Some(id.trim()) == boot_id() => Marker::ThisBoot,
            _ => Marker::Stale,
        },
    }
}

fn committed(m: &Marker) -> bool {
    matches!(m, Marker::Synced | Marker::ThisBoot)
}

/// A snapshot allocated by [`Store::new_snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Short id (`[a-z2-7]{10}`).
    pub id: String,
    /// The layer directory (overlay upperdir).
    pub fs: PathBuf,
    /// The overlay workdir (same filesystem as `fs`).
    pub work: PathBuf,
}

/// A snapshot id is `[a-z0-9]{1,32}`: never a path outside `snapshots-v1/`.
pub(crate) fn valid_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 32
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(CacheError::InvalidSnapshotId { id: id.to_string() });
    }
    Ok(())
}

impl Store {
    fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.inner.root.join(SNAPSHOTS_DIR).join(id)
    }

    /// Allocate a new, uncommitted snapshot with empty `fs` and `work` directories.
    pub fn new_snapshot(&self) -> Result<Snapshot, CacheError> {
        let base = self.inner.root.join(SNAPSHOTS_DIR);
        loop {
            let id = util::base32(util::unique_u64(), ID_LEN);
            let dir = base.join(&id);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(CacheError::io("create snapshot directory", &dir, e)),
            }
            let owner = dir.join(OWNER);
            let mut f =
                fs::File::create(&owner).map_err(|e| CacheError::io("create", &owner, e))?;
            write!(f, "{}-", std::process::id()).map_err(|e| CacheError::io("write", &owner, e))?;
            let fs_dir = dir.join("fs");
            let work = dir.join("work");
            for d in [&fs_dir, &work] {
                fs::create_dir(d).map_err(|e| CacheError::io("create directory", d, e))?;
            }
            return Ok(Snapshot {
                id,
                fs: fs_dir,
                work,
            });
        }
    }

    /// Mark a snapshot committed (writes and fsyncs the `committed` marker).
    pub fn commit_snapshot(&self, id: &str) -> Result<(), CacheError> {
        valid_id(id)?;
        let dir = self.snapshot_dir(id);
        if !dir.join("fs").is_dir() {
            return Err(CacheError::SnapshotNotFound { id: id.to_string() });
        }
        let marker = dir.join(COMMITTED);
        let f = fs::File::create(&marker).map_err(|e| CacheError::io("create", &marker, e))?;
        f.sync_all()
            .map_err(|e| CacheError::io("fsync", &marker, e))?;
        util::fsync_dir(&dir)
    }

    /// Flush everything written to the store's filesystem to disk (`syncfs`): one call makes
    /// many freshly written snapshots durable before their markers are written.
    pub fn sync_filesystem(&self) -> Result<(), CacheError> {
        let base = self.inner.root.join(SNAPSHOTS_DIR);
        let dir = fs::File::open(&base).map_err(|e| CacheError::io("open", &base, e))?;
        rustix::fs::syncfs(&dir).map_err(|e| CacheError::io("syncfs", &base, e.into()))
    }

    /// Mark a snapshot committed without making its data durable first: the marker names this
    /// kernel boot, so after a crash (or any reboot) the snapshot no longer counts unless
    /// [`Store::settle_snapshots`] synced it meanwhile. Without a readable boot id this syncs
    /// and commits durably.
    pub fn commit_snapshot_unsynced(&self, id: &str) -> Result<(), CacheError> {
        valid_id(id)?;
        let Some(boot) = boot_id() else {
            self.sync_filesystem()?;
            return self.commit_snapshot(id);
        };
        let dir = self.snapshot_dir(id);
        if !dir.join("fs").is_dir() {
            return Err(CacheError::SnapshotNotFound { id: id.to_string() });
        }
        let marker = dir.join(COMMITTED);
        fs::write(&marker, format!("{BOOT_PREFIX}{boot}\n"))
            .map_err(|e| CacheError::io("write", &marker, e))
    }

    /// Make snapshots committed unsynced at least `min_age` ago durable: one `syncfs`, then
    /// their markers are emptied (synced). Returns how many were settled. Young ones are left
    /// for later so that a build rarely waits: after the kernel's writeback interval their
    /// data is mostly on disk already and the sync is cheap.
    pub fn settle_snapshots(&self, min_age: std::time::Duration) -> Result<usize, CacheError> {
        let base = self.inner.root.join(SNAPSHOTS_DIR);
        let rd = fs::read_dir(&base).map_err(|e| CacheError::io("read directory", &base, e))?;
        let mut due = Vec::new();
        for ent in rd.flatten() {
            let dir = ent.path();
            if read_marker(&dir) != Marker::ThisBoot {
                continue;
            }
            let old = fs::metadata(dir.join(COMMITTED))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age >= min_age);
            if old {
                due.push(dir);
            }
        }
        if due.is_empty() {
            return Ok(0);
        }
        self.sync_filesystem()?;
        let mut n = 0;
        for dir in &due {
            // A snapshot removed meanwhile (GC) is simply skipped.
            if let Ok(f) = fs::File::create(dir.join(COMMITTED)) {
                if f.sync_all().is_ok() && util::fsync_dir(dir).is_ok() {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// The layer directory of a committed snapshot.
    pub fn snapshot_fs(&self, id: &str) -> Result<PathBuf, CacheError> {
        valid_id(id)?;
        let dir = self.snapshot_dir(id);
        let fs_dir = dir.join("fs");
        if !fs_dir.is_dir() {
            return Err(CacheError::SnapshotNotFound { id: id.to_string() });
        }
        if !committed(&read_marker(&dir)) {
            return Err(CacheError::SnapshotNotCommitted { id: id.to_string() });
        }
        Ok(fs_dir)
    }

    /// Whether a committed snapshot with this id exists.
    pub fn snapshot_exists(&self, id: &str) -> bool {
        self.snapshot_fs(id).is_ok()
    }

    /// Remove a snapshot (committed or not). Removing a missing snapshot is not an error.
    pub fn remove_snapshot(&self, id: &str) -> Result<(), CacheError> {
        valid_id(id)?;
        let dir = self.snapshot_dir(id);
        // Drop the marker first so a crash halfway never leaves a "committed" partial tree.
        match fs::remove_file(dir.join(COMMITTED)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(CacheError::io("remove", dir.join(COMMITTED), e)),
        }
        util::remove_tree(&dir)
    }

    /// Ids of all committed snapshots (for GC).
    pub fn list_snapshots(&self) -> Result<Vec<String>, CacheError> {
        let base = self.inner.root.join(SNAPSHOTS_DIR);
        let rd = fs::read_dir(&base).map_err(|e| CacheError::io("read directory", &base, e))?;
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| CacheError::io("read directory", &base, e))?;
            let id = ent.file_name().to_string_lossy().into_owned();
            if valid_id(&id).is_ok() && committed(&read_marker(&ent.path())) {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Remove uncommitted snapshots left by dead processes.
    pub(crate) fn clean_snapshots(&self) -> Result<()> {
        let base = self.inner.root.join(SNAPSHOTS_DIR);
        let rd = fs::read_dir(&base).map_err(|e| CacheError::io("read directory", &base, e))?;
        for ent in rd {
            let ent = ent.map_err(|e| CacheError::io("read directory", &base, e))?;
            let dir = ent.path();
            match read_marker(&dir) {
                Marker::Synced | Marker::ThisBoot | Marker::Unreadable => continue,
                // Committed unsynced before a reboot: its data may be incomplete.
                Marker::Stale => {
                    util::remove_tree(&dir)?;
                    continue;
                }
                Marker::Missing => {}
            }
            let owner = fs::read_to_string(dir.join(OWNER))
                .ok()
                .and_then(|s| pid_prefix(&s));
            let owner_alive = match owner {
                Some(pid) => util::pid_alive(pid),
                // No (complete) owner file: being created right now, or garbage; judge by age.
                None => ent
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|m| m.elapsed().ok())
                    .is_none_or(|age| age.as_secs() < ORPHAN_SECS),
            };
            if !owner_alive {
                util::remove_tree(&dir)?;
            }
        }
        Ok(())
    }
}
