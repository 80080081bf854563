//! Store garbage collection: `rbuild prune` and the automatic GC after a build.
//!
//! Safety rests on two rules:
//!
//! * **Leases.** Every build holds the store lock `lease` *shared* from before it resolves its
//!   base images until its image is tagged and exported ([`lease`]). GC holds it *exclusively*
//!   ([`gc_lock`]), so it never runs while a build might be using (or about to record) a
//!   snapshot or blob; builds starting during a GC wait for it.
//! * **Roots.** Blobs of tagged images (every manifest in `layout-v1/index.json`, its config
//!   and layers) are never removed. Everything else lives as long as a cache index entry
//!   references it: snapshots and blobs of the remaining entries' chains are kept, the rest
//!   is swept.
//!
//! Which entries go: all (`--all`), those unused for longer than `until`, and then — least
//! recently used first — as many as needed to bring the store under `keep_storage` (a
//! ceiling: nothing is removed when the store is already below it). Costs of an entry are the
//! allocated sizes of the snapshots and blobs that no kept entry or tagged image shares.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use rbuild_cache::{Store, StoreLock};

use crate::results::Record;
use crate::SolveError;

/// Metadata namespace mapping a pulled layer's diff id to its snapshot (see `source.rs`).
const LAYER_NS: &str = "layer-snapshot";
const LEASE_LOCK: &str = "lease";

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
    pub entries_removed: u64,
    pub snapshots_removed: u64,
    pub blobs_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Hold the build lease (shared): GC waits until it is dropped.
pub fn lease(store: &Store) -> Result<StoreLock, SolveError> {
    Ok(store.lock_shared(LEASE_LOCK)?)
}

/// Take the GC lock (the lease, exclusively): waits for running builds when `wait`, otherwise
/// returns `None` while any build holds a lease.
pub fn gc_lock(store: &Store, wait: bool) -> Result<Option<StoreLock>, SolveError> {
    if wait {
        Ok(Some(store.lock(LEASE_LOCK)?))
    } else {
        Ok(store.try_lock(LEASE_LOCK)?)
    }
}

/// Blobs that tagged images need: manifests, configs and layers named by the local image
/// layout's `index.json`.
fn pinned_blobs(store: &Store) -> Result<HashSet<String>, SolveError> {
    let mut out = HashSet::new();
    let path = store.root().join("layout-v1").join("index.json");
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(SolveError::io(format!("reading {}", path.display()), e)),
    };
    let index: rbuild_oci::Index =
        serde_json::from_slice(&data).map_err(|e| SolveError::BadRecord {
            key: path.display().to_string(),
            message: e.to_string(),
        })?;
    for m in index.manifests {
        pin_tree(store, &m, &mut out);
    }
    Ok(out)
}

/// Pin a tagged manifest (its config and layers) or a tagged index (each of its manifests,
/// with their configs and layers). A blob we cannot read pins nothing more, but is kept.
fn pin_tree(store: &Store, desc: &rbuild_oci::Descriptor, out: &mut HashSet<String>) {
    out.insert(desc.digest.clone());
    let Ok(bytes) = store.read_blob(&desc.digest) else {
        return;
    };
    if rbuild_oci::index::is_index(desc) {
        if let Ok(index) = serde_json::from_slice::<rbuild_oci::Index>(&bytes) {
            for m in index
                .manifests
                .iter()
                .filter(|m| !rbuild_oci::index::is_index(m))
            {
                pin_tree(store, m, out);
            }
        }
        return;
    }
    if let Ok(manifest) = serde_json::from_slice::<rbuild_oci::Manifest>(&bytes) {
        out.insert(manifest.config.digest.clone());
        out.extend(manifest.layers.into_iter().map(|l| l.digest));
    }
}

/// Prune the store. The caller must hold [`gc_lock`].
pub fn prune(store: &Store, opts: &PruneOptions) -> Result<PruneReport, SolveError> {
    let mut report = PruneReport {
        bytes_before: store.usage()?.total(),
        ..PruneReport::default()
    };
    let pinned = pinned_blobs(store)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    // Entries, least recently used first, with their chains (unreadable ones always go).
    let mut entries: Vec<(String, i64, Option<Record>)> = store
        .index_list()?
        .into_iter()
        .map(|e| {
            let rec = serde_json::from_str::<Record>(&e.value).ok();
            (e.key, e.last_used, rec)
        })
        .collect();
    let mut remove: Vec<String> = Vec::new();
    entries.retain(|(key, last_used, rec)| {
        let old = opts
            .until
            .is_some_and(|u| *last_used < now - u.as_secs() as i64);
        if opts.all || old || rec.is_none() {
            remove.push(key.clone());
            false
        } else {
            true
        }
    });
    if let Some(limit) = opts.keep_storage {
        let mut snap_refs: HashMap<String, usize> = HashMap::new();
        let mut blob_refs: HashMap<String, usize> = HashMap::new();
        // Tars written later for step snapshots count as those layers' blobs.
        let mut tars: HashMap<String, String> = HashMap::new();
        for (key, json) in store.meta_list(crate::image::LAYER_TAR_NS)? {
            if let Ok(info) = serde_json::from_str::<rbuild_cache::BlobInfo>(&json) {
                tars.insert(
                    crate::image::tar_meta_snapshot(&key).to_string(),
                    info.digest,
                );
            }
        }
        let blob_of = |l: &crate::Layer| -> String {
            if l.blob.is_empty() {
                tars.get(&l.snapshot).cloned().unwrap_or_default()
            } else {
                l.blob.clone()
            }
        };
        for (_, _, rec) in &entries {
            for l in rec.iter().flat_map(|r| r.chain.iter()) {
                *snap_refs.entry(l.snapshot.clone()).or_default() += 1;
                *blob_refs.entry(blob_of(l)).or_default() += 1;
            }
        }
        let blob_sizes: BTreeMap<String, u64> = store
            .list_blobs()?
            .into_iter()
            .map(|b| (b.digest, b.size))
            .collect();
        // What the sweep alone would leave: referenced snapshots and blobs, pinned blobs,
        // and everything that is not a snapshot or blob (index, cache mounts …).
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
        for (key, last_used, rec) in entries {
            if total <= limit {
                kept.push((key, last_used, rec));
                continue;
            }
            for l in rec.iter().flat_map(|r| r.chain.iter()) {
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
        entries = kept;
    }
    for key in &remove {
        if store.index_delete(key)? {
            report.entries_removed += 1;
        }
    }
    // Sweep.
    let mut live_snaps: HashSet<String> = HashSet::new();
    let mut live_blobs: HashSet<String> = pinned;
    let mut live_keys: HashSet<String> = HashSet::new();
    for (key, _, rec) in &entries {
        live_keys.insert(key.rsplit(':').next().unwrap_or(key).to_string());
        for l in rec.iter().flat_map(|r| r.chain.iter()) {
            live_snaps.insert(l.snapshot.clone());
            live_blobs.insert(l.blob.clone());
        }
    }
    for (diff_id, snap) in store.meta_list(LAYER_NS)? {
        if !live_snaps.contains(&snap) {
            store.meta_delete(LAYER_NS, &diff_id)?;
        }
    }
    // Layer tars written for step snapshots live as long as their snapshot.
    for (key, json) in store.meta_list(crate::image::LAYER_TAR_NS)? {
        if live_snaps.contains(crate::image::tar_meta_snapshot(&key)) {
            if let Ok(info) = serde_json::from_str::<rbuild_cache::BlobInfo>(&json) {
                live_blobs.insert(info.digest);
            }
        } else {
            store.meta_delete(crate::image::LAYER_TAR_NS, &key)?;
        }
    }
    for id in store.list_snapshots()? {
        if !live_snaps.contains(&id) {
            store.remove_snapshot(&id)?;
            report.snapshots_removed += 1;
        }
    }
    for b in store.list_blobs()? {
        if !live_blobs.contains(&b.digest) {
            store.remove_blob(&b.digest)?;
            report.blobs_removed += 1;
        }
    }
    store.remove_locks("key-", &live_keys)?;
    if opts.all {
        store.remove_cache_mounts()?;
        rbuild_cache::context::prune_stat_cache(store)?;
    }
    report.bytes_after = store.usage()?.total();
    Ok(report)
}

/// Automatic GC after a build: when the store is bigger than `ceiling`, prune least recently
/// used entries down to it. Skipped (returns `None`) while another build holds a lease.
pub fn auto_gc(store: &Store, ceiling: u64) -> Result<Option<PruneReport>, SolveError> {
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
    )
    .map(Some)
}
