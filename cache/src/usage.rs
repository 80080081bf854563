//! Disk usage of the store's parts, for `rbuild du`, `rbuild prune` and automatic GC.
//!
//! Sizes are allocated bytes (`st_blocks * 512`), each inode counted once per walk (hard
//! links inside one tree are not double counted), which is what `du` reports.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{CacheError, Result};
use crate::store::{Store, BLOBS_DIR, DB_FILE, SNAPSHOTS_DIR, TMP_DIR};

/// Allocated size and entry count of a tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub entries: u64,
}

impl Usage {
    fn add(&mut self, other: Usage) {
        self.bytes += other.bytes;
        self.entries += other.entries;
    }
}

/// Usage of the store, by part.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreUsage {
    /// `blobs-v1` (entries = blobs).
    pub blobs: Usage,
    /// `snapshots-v1` (entries = snapshots).
    pub snapshots: Usage,
    /// `index-v1.db` with its WAL and shared-memory files (entries = cache index rows).
    pub index: Usage,
    /// `cachemounts-v1` (entries = cache mount directories).
    pub cache_mounts: Usage,
    /// `tmp/` (entries = top-level entries).
    pub tmp: Usage,
}

impl StoreUsage {
    /// Sum of all parts.
    pub fn total(&self) -> u64 {
        self.blobs.bytes
            + self.snapshots.bytes
            + self.index.bytes
            + self.cache_mounts.bytes
            + self.tmp.bytes
    }
}

/// The directory of `RUN --mount=type=cache` directories.
pub const CACHE_MOUNTS_DIR: &str = "cachemounts-v1";

/// Allocated size of the tree at `path` (0 when it does not exist). Entries vanishing during
/// the walk (a concurrent build cleaning up) are skipped.
pub fn tree_usage(path: &Path) -> Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack: Vec<PathBuf> = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = match fs::symlink_metadata(&p) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(CacheError::io("stat", &p, e)),
        };
        if md.nlink() > 1 && !md.is_dir() && !seen.insert((md.dev(), md.ino())) {
            continue;
        }
        total += md.blocks() * 512;
        if md.is_dir() {
            let rd = match fs::read_dir(&p) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(CacheError::io("read directory", &p, e)),
            };
            for ent in rd {
                let ent = ent.map_err(|e| CacheError::io("read directory", &p, e))?;
                stack.push(ent.path());
            }
        }
    }
    Ok(total)
}

fn children(path: &Path) -> Result<Vec<PathBuf>> {
    match fs::read_dir(path) {
        Ok(rd) => rd
            .map(|e| {
                e.map(|e| e.path())
                    .map_err(|e| CacheError::io("read directory", path, e))
            })
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(CacheError::io("read directory", path, e)),
    }
}

fn part(path: &Path) -> Result<Usage> {
    let mut u = Usage::default();
    for c in children(path)? {
        u.add(Usage {
            bytes: tree_usage(&c)?,
            entries: 1,
        });
    }
    Ok(u)
}

impl Store {
    /// Measure every part of the store.
    pub fn usage(&self) -> Result<StoreUsage, CacheError> {
        let root = self.root();
        let mut index = Usage::default();
        for suffix in ["", "-wal", "-shm"] {
            index.bytes += tree_usage(&root.join(format!("{DB_FILE}{suffix}")))?;
        }
        index.entries = self.index_count()?;
        Ok(StoreUsage {
            blobs: part(&root.join(BLOBS_DIR))?,
            snapshots: part(&root.join(SNAPSHOTS_DIR))?,
            index,
            cache_mounts: part(&root.join(CACHE_MOUNTS_DIR))?,
            tmp: part(&root.join(TMP_DIR))?,
        })
    }

    /// Allocated size of one snapshot directory (0 when absent).
    pub fn snapshot_usage(&self, id: &str) -> Result<u64, CacheError> {
        crate::snapshot::valid_id(id)?;
        tree_usage(&self.root().join(SNAPSHOTS_DIR).join(id))
    }

    /// Remove every cache mount directory (`rbuild prune --all`). Returns bytes freed.
    pub fn remove_cache_mounts(&self) -> Result<u64, CacheError> {
        let dir = self.root().join(CACHE_MOUNTS_DIR);
        let mut freed = 0;
        for c in children(&dir)? {
            freed += tree_usage(&c)?;
            crate::util::remove_tree(&c)?;
        }
        Ok(freed)
    }

    /// Remove `locks/<prefix>*.lock` files whose name (without prefix and suffix) is not in
    /// `keep`. Call only while holding the exclusive `lease` lock (no build is running).
    pub fn remove_locks(&self, prefix: &str, keep: &HashSet<String>) -> Result<u64, CacheError> {
        let dir = self.root().join(crate::store::LOCKS_DIR);
        let mut n = 0;
        for c in children(&dir)? {
            let name = c
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some(stem) = name
                .strip_prefix(prefix)
                .and_then(|s| s.strip_suffix(".lock"))
            else {
                continue;
            };
            if !keep.contains(stem) {
                match fs::remove_file(&c) {
                    Ok(()) => n += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(CacheError::io("remove", &c, e)),
                }
            }
        }
        Ok(n)
    }
}
