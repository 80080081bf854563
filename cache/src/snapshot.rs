//! Snapshots: layer directories in overlayfs "upper" format under `snapshots-v1/<id>/`.
//!
//! `<id>/fs` is the layer, `<id>/work` the overlay workdir, `<id>/owner` the pid of the process
//! that allocated it, and `<id>/committed` a marker written by [`Store::commit_snapshot`].
//! [`Store::open`] removes uncommitted snapshots whose owner is dead (a crash mid-build).
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
/// Uncommitted snapshots without a readable owner file are removed after this long.
const ORPHAN_SECS: u64 = 3600;

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

fn valid_id(id: &str) -> Result<()> {
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

    /// The layer directory of a committed snapshot.
    pub fn snapshot_fs(&self, id: &str) -> Result<PathBuf, CacheError> {
        valid_id(id)?;
        let dir = self.snapshot_dir(id);
        let fs_dir = dir.join("fs");
        if !fs_dir.is_dir() {
            return Err(CacheError::SnapshotNotFound { id: id.to_string() });
        }
        if !dir.join(COMMITTED).exists() {
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
            if valid_id(&id).is_ok() && ent.path().join(COMMITTED).exists() {
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
            if dir.join(COMMITTED).exists() {
                continue;
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
