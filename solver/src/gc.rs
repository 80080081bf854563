//! Store garbage collection as the solver sees it: the mechanism (leases, pruning, the sweep)
//! is [`rbuild_cache::gc`]; this module tells it what only the solver and `oci` know —
//! which blobs tagged images pin, which layers an index [`Record`] names, and which metadata
//! records (`layer-snapshot`, `layer-tar`) belong to a snapshot.
//!
//! Roots: blobs of tagged images (every manifest in `layout-v1/index.json`, its config and
//! layers) are never removed; a `layer-tar` blob lives as long as its snapshot.

use std::collections::HashSet;

use rbuild_cache::gc::{GcRoots, LayerRef, SnapshotMeta};
use rbuild_cache::Store;

pub use rbuild_cache::gc::{gc_lock, lease, PruneOptions, PruneReport};

use crate::image::{tar_meta_snapshot, LAYER_TAR_NS};
use crate::results::Record;
use crate::SolveError;

/// Metadata namespace mapping a pulled layer's diff id to its snapshot (see `source.rs`).
use crate::ops::image::LAYER_NS;

/// Prune the store. The caller must hold [`gc_lock`].
pub fn prune(store: &Store, opts: &PruneOptions) -> Result<PruneReport, SolveError> {
    rbuild_cache::gc::prune(store, opts, &SolverRoots)
}

/// Automatic GC after a build: when the store is bigger than `ceiling`, prune least recently
/// used entries down to it. Skipped (returns `None`) while another build holds a lease.
pub fn auto_gc(store: &Store, ceiling: u64) -> Result<Option<PruneReport>, SolveError> {
    rbuild_cache::gc::auto_gc(store, ceiling, &SolverRoots)
}

/// The solver's records and the local image store's tags, as GC roots.
struct SolverRoots;

impl GcRoots for SolverRoots {
    type Error = SolveError;

    fn pinned_blobs(&self, store: &Store) -> Result<HashSet<String>, SolveError> {
        pinned_blobs(store)
    }

    fn record_layers(&self, value: &str) -> Option<Vec<LayerRef>> {
        let rec = serde_json::from_str::<Record>(value).ok()?;
        Some(
            rec.chain
                .into_iter()
                .map(|l| LayerRef {
                    snapshot: l.snapshot,
                    blob: l.blob,
                })
                .collect(),
        )
    }

    fn snapshot_namespaces(&self) -> Vec<&'static str> {
        vec![LAYER_NS, LAYER_TAR_NS]
    }

    fn snapshot_meta(&self, namespace: &str, key: &str, value: &str) -> SnapshotMeta {
        if namespace == LAYER_TAR_NS {
            // `<snapshot>|<epoch>` → the tar's BlobInfo.
            SnapshotMeta {
                snapshot: tar_meta_snapshot(key).to_string(),
                blob: serde_json::from_str::<rbuild_cache::BlobInfo>(value)
                    .ok()
                    .map(|info| info.digest),
            }
        } else {
            // diff id → snapshot
            SnapshotMeta {
                snapshot: value.to_string(),
                blob: None,
            }
        }
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
