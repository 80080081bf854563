//! Store garbage collection: leases, pruning (`rbuild prune`, the automatic GC after a build)
//! and the sweep of whatever nothing keeps.
//!
//! Safety rests on two rules:
//!
//! * **Leases.** Every build holds the store lock `lease` *shared* from before it resolves its
//!   base images until its image is tagged and exported ([`lease`]). GC holds it *exclusively*
//!   ([`gc_lock`]), so it never runs while a build might be using (or about to record) a
//!   snapshot or blob; builds starting during a GC wait for it.
//! * **Roots.** Pinned blobs ([`GcRoots::pinned_blobs`]: for rbuild, those of tagged images)
//!   are never removed. Everything else lives as long as a cache index record references it:
//!   snapshots and blobs of the remaining records' layers are kept, the rest is swept.
//!
//! Which records go: all (`--all`), those unused for longer than `until`, unreadable ones
//! (including those naming a snapshot id that is not one, such as a path),
//! and then — least recently used first — as many as needed to bring the store under
//! `keep_storage` (a ceiling: nothing is removed when the store is already below it). Costs
//! of a record are the allocated sizes of the snapshots and blobs that no kept record or pin
//! shares.
//!
//! This module knows the store and nothing of what the index records mean: the caller's
//! [`GcRoots`] says which layers a record names, which blobs are pinned and which metadata
//! records belong to a snapshot (they go with it, and keep their blob as long as it lives).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::{CacheError, Store, StoreLock};

const LEASE_LOCK: &str = "lease";

/// Prefix of the lock that serialises building one index key (`key-<hex of the key>`); the
/// sweep removes those of keys no longer in the index.
pub const KEY_LOCK_PREFIX: &str = "key-";

/// What to prune.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneOptions {
    /// Remove every cache entry (and cache mounts, and the context stat cache).
    pub all: bool,
    /// Remove entries not used for longer than this.
    pub until: Option<Duration>,
    /// Then remove least recently used entries until the store is at most this big.
    pub keep_storage: Option<u64>,
}

/// What a prune did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Index records removed.
    pub entries_removed: u64,
    /// Snapshot directories removed.
    pub snapshots_removed: u64,
    /// Blobs removed.
    pub blobs_removed: u64,
    /// Store size before (bytes allocated).
    pub bytes_before: u64,
    /// Store size after.
    pub bytes_after: u64,
}

/// One layer an index record references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    /// Snapshot id.
    pub snapshot: String,
    /// Digest of its blob; empty while none was written (a snapshot-owned metadata record
    /// may name it, see [`GcRoots::snapshot_meta`]).
    pub blob: String,
}

/// What a metadata record of a [`GcRoots::snapshot_namespaces`] namespace belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The snapshot: the record is removed when the snapshot is.
    pub snapshot: String,
    /// A blob the record names (e.g. a tar written for the snapshot), kept while it lives.
    pub blob: Option<String>,
}

/// What the store's users know and the GC needs: the meaning of index records and pins.
pub trait GcRoots {
    /// The caller's error type (a [`CacheError`] converts into it).
    type Error: From<CacheError>;

    /// Blobs never removed, computed once per prune under the GC lock.
    fn pinned_blobs(&self, store: &Store) -> Result<HashSet<String>, Self::Error>;

    /// The layers an index record's value references; `None` when the value cannot be read
    /// (such a record is always removed).
    fn record_layers(&self, value: &str) -> Option<Vec<LayerRef>>;

    /// Metadata namespaces whose records belong to a snapshot, in sweep order.
    fn snapshot_namespaces(&self) -> Vec<&'static str>;

    /// The snapshot a record (`key` → `value`) of such a namespace belongs to, and its blob.
    fn snapshot_meta(&self, namespace: &str, key: &str, value: &str) -> SnapshotMeta;
}

/// Hold the build lease (shared): GC waits until it is dropped.
pub fn lease(store: &Store) -> Result<StoreLock, CacheError> {
    store.lock_shared(LEASE_LOCK)
}

/// Take the GC lock (the lease, exclusively): waits for running builds when `wait`, otherwise
/// returns `None` while any build holds a lease.
pub fn gc_lock(store: &Store, wait: bool) -> Result<Option<StoreLock>, CacheError> {
    if wait {
        Ok(Some(store.lock(LEASE_LOCK)?))
    } else {
        store.try_lock(LEASE_LOCK)
    }
}

/// The part of a key that names its lock file: the hex after the algorithm, alphanumerics only.
pub fn key_lock_stem(key: &str) -> String {
    key.rsplit(':')
        .next()
        .unwrap_or(key)
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect()
}

/// The store lock that serialises building one key: `key-<hex>` (the solver takes it; a
/// prune removes the lock files of keys it removed).
pub fn key_lock_name(key: &str) -> String {
    format!("{KEY_LOCK_PREFIX}{}", key_lock_stem(key))
}

/// An index record during a prune: key, last use (unix seconds), its layers if readable.
type Entry = (String, i64, Option<Vec<LayerRef>>);

/// Prune the store. The caller must hold [`gc_lock`].
pub fn prune<R: GcRoots>(
    store: &Store,
    opts: &PruneOptions,
    roots: &R,
) -> Result<PruneReport, R::Error> {
    let mut report = PruneReport {
        bytes_before: store.usage()?.total(),
        ..PruneReport::default()
    };
    let pinned = roots.pinned_blobs(store)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    // Entries, least recently used first, with their layers (unreadable ones always go).
    let mut entries: Vec<Entry> = store
        .index_list()?
        .into_iter()
        .map(|e| {
            // A record naming something that cannot be a snapshot id (a path) is unreadable.
            let layers = roots.record_layers(&e.value).filter(|ls| {
                ls.iter()
                    .all(|l| crate::snapshot::valid_id(&l.snapshot).is_ok())
            });
            (e.key, e.last_used, layers)
        })
        .collect();
    let mut remove: Vec<String> = Vec::new();
    entries.retain(|(key, last_used, layers)| {
        let old = opts
            .until
            .is_some_and(|u| *last_used < now - u.as_secs() as i64);
        if opts.all || old || layers.is_none() {
            remove.push(key.clone());
            false
        } else {
            true
        }
    });
    if let Some(limit) = opts.keep_storage {
        let (kept, over) = over_ceiling(store, roots, entries, &pinned, limit)?;
        entries = kept;
        remove.extend(over);
    }
    for key in &remove {
        if store.index_delete(key)? {
            report.entries_removed += 1;
        }
    }
    let (snaps, blobs) = sweep(store, roots, &entries, pinned)?;
    report.snapshots_removed = snaps;
    report.blobs_removed = blobs;
    if opts.all {
        store.remove_cache_mounts()?;
        crate::context::prune_stat_cache(store)?;
    }
    report.bytes_after = store.usage()?.total();
    Ok(report)
}

/// Split `entries` (least recently used first) into those kept and the keys to remove so
/// that what the sweep leaves is at most `limit` bytes.
fn over_ceiling<R: GcRoots>(
    store: &Store,
    roots: &R,
    entries: Vec<Entry>,
    pinned: &HashSet<String>,
    limit: u64,
) -> Result<(Vec<Entry>, Vec<String>), CacheError> {
    let mut snap_refs: HashMap<String, usize> = HashMap::new();
    let mut blob_refs: HashMap<String, usize> = HashMap::new();
    // Blobs written later for snapshots (named by snapshot metadata) count as their layers'.
    let mut owned: HashMap<String, String> = HashMap::new();
    for ns in roots.snapshot_namespaces() {
        for (key, value) in store.meta_list(ns)? {
            let m = roots.snapshot_meta(ns, &key, &value);
            if let Some(blob) = m.blob {
                owned.insert(m.snapshot, blob);
            }
        }
    }
    let blob_of = |l: &LayerRef| -> String {
        if l.blob.is_empty() {
            owned.get(&l.snapshot).cloned().unwrap_or_default()
        } else {
            l.blob.clone()
        }
    };
    for (_, _, layers) in &entries {
        for l in layers.iter().flatten() {
            *snap_refs.entry(l.snapshot.clone()).or_default() += 1;
            *blob_refs.entry(blob_of(l)).or_default() += 1;
        }
    }
    let blob_sizes: BTreeMap<String, u64> = store
        .list_blobs()?
        .into_iter()
        .map(|b| (b.digest, b.size))
        .collect();
    // What the sweep alone would leave: referenced snapshots and blobs, pinned blobs, and
    // everything that is not a snapshot or blob (index, cache mounts …).
    let usage = store.usage()?;
    let mut snap_sizes: HashMap<String, u64> = HashMap::new();
    let mut live_snaps = 0u64;
    for id in snap_refs.keys() {
        let s = store.snapshot_usage(id)?;
        snap_sizes.insert(id.clone(), s);
        live_snaps += s;
    }
    let live_blobs: u64 = blob_sizes
        .iter()
        .filter(|(d, _)| blob_refs.contains_key(*d) || pinned.contains(*d))
        .map(|(_, s)| *s)
        .sum();
    let mut total = usage
        .total()
        .saturating_sub(usage.snapshots.bytes)
        .saturating_sub(usage.blobs.bytes)
        + live_snaps
        + live_blobs;
    let mut kept = Vec::new();
    let mut remove = Vec::new();
    for (key, last_used, layers) in entries {
        if total <= limit {
            kept.push((key, last_used, layers));
            continue;
        }
        for l in layers.iter().flatten() {
            if let Some(n) = snap_refs.get_mut(&l.snapshot) {
                *n -= 1;
                if *n == 0 {
                    total = total.saturating_sub(*snap_sizes.get(&l.snapshot).unwrap_or(&0));
                }
            }
            let blob = blob_of(l);
            if let Some(n) = blob_refs.get_mut(&blob) {
                *n -= 1;
                if *n == 0 && !pinned.contains(&blob) {
                    total = total.saturating_sub(*blob_sizes.get(&blob).unwrap_or(&0));
                }
            }
        }
        remove.push(key);
    }
    Ok((kept, remove))
}

/// Remove every snapshot, blob, snapshot-owned metadata record and key lock that neither the
/// remaining `entries` nor `pinned` keep. Returns (snapshots, blobs) removed.
fn sweep<R: GcRoots>(
    store: &Store,
    roots: &R,
    entries: &[Entry],
    pinned: HashSet<String>,
) -> Result<(u64, u64), CacheError> {
    let mut live_snaps: HashSet<String> = HashSet::new();
    let mut live_blobs: HashSet<String> = pinned;
    let mut live_keys: HashSet<String> = HashSet::new();
    for (key, _, layers) in entries {
        live_keys.insert(key_lock_stem(key));
        for l in layers.iter().flatten() {
            live_snaps.insert(l.snapshot.clone());
            live_blobs.insert(l.blob.clone());
        }
    }
    // Metadata owned by a snapshot lives (and keeps its blob) as long as the snapshot.
    for ns in roots.snapshot_namespaces() {
        for (key, value) in store.meta_list(ns)? {
            let m = roots.snapshot_meta(ns, &key, &value);
            if live_snaps.contains(&m.snapshot) {
                live_blobs.extend(m.blob);
            } else {
                store.meta_delete(ns, &key)?;
            }
        }
    }
    let mut snaps = 0;
    for id in store.list_snapshots()? {
        if !live_snaps.contains(&id) {
            store.remove_snapshot(&id)?;
            snaps += 1;
        }
    }
    let mut blobs = 0;
    for b in store.list_blobs()? {
        if !live_blobs.contains(&b.digest) {
            store.remove_blob(&b.digest)?;
            blobs += 1;
        }
    }
    store.remove_locks(KEY_LOCK_PREFIX, &live_keys)?;
    Ok((snaps, blobs))
}

/// Automatic GC after a build: when the store is bigger than `ceiling`, prune least recently
/// used entries down to it. Skipped (returns `None`) while another build holds a lease.
pub fn auto_gc<R: GcRoots>(
    store: &Store,
    ceiling: u64,
    roots: &R,
) -> Result<Option<PruneReport>, R::Error> {
    if store.usage()?.total() <= ceiling {
        return Ok(None);
    }
    let Some(_gc) = gc_lock(store, false)? else {
        return Ok(None);
    };
    prune(
        store,
        &PruneOptions {
            keep_storage: Some(ceiling),
            ..PruneOptions::default()
        },
        roots,
    )
    .map(Some)
}
