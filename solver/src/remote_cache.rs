//! The remote cache: results imported from and exported to registries and directories
//! (`--cache-from` / `--cache-to`; format and transport in [`rbuild_oci::remote_cache`],
//! docs/cache.md).
//!
//! Import is lazy. A key that misses the local index but is in an imported cache becomes a
//! chain whose layers not yet in the store are *lazy*: an empty `snapshot`, with the diff id,
//! blob digest and size the cache names. Nothing is downloaded for it unless a step that must
//! run reads it or it is the build's result (the scheduler demands it, [`crate::sched`]). Materializing fetches the blob (digest and size verified), unpacks it
//! with the uncompressed stream checked against the record's diff id (a layer a build made is
//! kept as the uncompressed tar rbuild itself would have written, so the image is
//! byte-identical to the exporting machine's), and records the key in the local index: from
//! then on it is an ordinary local result (GC, `du`, `prune`). A record is only ever used for
//! its own key.
//!
//! Export collects the keyed results of this solver's builds: `mode=min` the ones whose layers
//! are all in the exported image, `mode=max` all of them, plus, when asked, the directories of
//! the `RUN --mount=type=cache` mounts the build used.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rbuild_oci::remote_cache::{
    CacheConfig, CacheExport, CacheLayerInfo, CacheMount, CacheRecord, ChainLink, ExportLayer,
    ImportedCache,
};
use rbuild_oci::Descriptor;

use crate::image::{materialize_layers, LAYER_TAR};
use crate::ops::image::{LAYER_NS, VERIFIED_NS};
use crate::results::Record;
use crate::{Chain, Layer, Progress, SolveError, Solver};

/// Which results a cache export holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// The steps whose layers are all in the exported image (BuildKit's default).
    #[default]
    Min,
    /// Every step of every stage built.
    Max,
}

/// Where a lazy layer comes from: (import, layer index in it).
type LazySource = (usize, usize);

/// Per-solver memory of the remote cache.
#[derive(Debug, Default)]
pub(crate) struct RemoteState {
    /// Key → (import, record index), over all imports (the first import naming a key wins).
    index: HashMap<String, (usize, usize)>,
    /// Diff id → where its lazy layer can be fetched.
    lazy: std::sync::Mutex<HashMap<String, LazySource>>,
    /// Keyed results of this solver's builds (for export).
    pub(crate) solved: std::sync::Mutex<BTreeMap<String, Chain>>,
}

impl RemoteState {
    pub(crate) fn new(imports: &[ImportedCache]) -> Self {
        let mut index = HashMap::new();
        for (i, imp) in imports.iter().enumerate() {
            for (r, rec) in imp.config.records.iter().enumerate() {
                index.entry(rec.key.clone()).or_insert((i, r));
            }
        }
        RemoteState {
            index,
            ..Default::default()
        }
    }
}

fn is_lazy(l: &Layer) -> bool {
    l.snapshot.is_empty()
}

impl Solver {
    /// The imported record for `key`, as a chain of layers that are local where the store has
    /// them and lazy otherwise; with the import's description (`registry cache REF`).
    pub(crate) fn lookup_remote(&self, key: &str) -> Result<Option<(String, Record)>, SolveError> {
        let Some(&(i, r)) = self.remote.index.get(key) else {
            return Ok(None);
        };
        let Some(imp) = self.cfg.cache_imports.get(i) else {
            return Ok(None);
        };
        let Some(rec) = imp.config.records.get(r) else {
            return Ok(None);
        };
        let mut chain = Vec::with_capacity(rec.chain.len());
        for link in &rec.chain {
            let (Some(desc), Some(info)) = (
                imp.layers.get(link.layer),
                imp.config.layers.get(link.layer),
            ) else {
                return Ok(None);
            };
            let layer = match self.local_layer(&info.diff_id, desc, link.created)? {
                Some(l) => l,
                None => {
                    if let Ok(mut lazy) = self.remote.lazy.lock() {
                        lazy.entry(info.diff_id.clone()).or_insert((i, link.layer));
                    }
                    Layer {
                        snapshot: String::new(),
                        diff_id: info.diff_id.clone(),
                        blob: desc.digest.clone(),
                        size: desc.size,
                        media_type: desc.media_type.clone(),
                        created: link.created,
                    }
                }
            };
            chain.push(layer);
        }
        Ok(Some((
            imp.origin.clone(),
            Record {
                chain,
                build: rec.build.clone(),
                time: rec.time,
            },
        )))
    }

    /// The imports searched, for explanations of a miss (`None` when there are none).
    pub(crate) fn import_origins(&self) -> Option<String> {
        let o: Vec<&str> = self
            .cfg
            .cache_imports
            .iter()
            .map(|i| i.origin.as_str())
            .collect();
        (!o.is_empty()).then(|| o.join(", "))
    }

    /// The store's own copy of a layer with this diff id, when it has one that is complete:
    /// the snapshot, and the blob an image of it needs (for a layer a build made, its
    /// uncompressed tar; for a base layer, this very compressed blob, seen to unpack to the
    /// diff id).
    fn local_layer(
        &self,
        diff_id: &str,
        desc: &Descriptor,
        created: Option<i64>,
    ) -> Result<Option<Layer>, SolveError> {
        let store = &self.cfg.store;
        let Some(snapshot) = store.meta_get(LAYER_NS, diff_id)? else {
            return Ok(None);
        };
        if !store.snapshot_exists(&snapshot) {
            return Ok(None);
        }
        if created.is_some() {
            if !store.has_blob(diff_id) {
                return Ok(None);
            }
            let size = store
                .open_blob(diff_id)?
                .metadata()
                .map_err(|e| SolveError::io(format!("reading blob {diff_id}"), e))?
                .len();
            return Ok(Some(Layer {
                snapshot,
                diff_id: diff_id.to_string(),
                blob: diff_id.to_string(),
                size,
                media_type: LAYER_TAR.to_string(),
                created,
            }));
        }
        let verified = store.meta_get(VERIFIED_NS, &desc.digest)?;
        if verified.as_deref() == Some(diff_id) && store.has_blob(&desc.digest) {
            return Ok(Some(Layer::of_blob(snapshot, diff_id, desc, None)));
        }
        Ok(None)
    }

    /// `chain` with every lazy layer fetched and unpacked; when there was one, the result is
    /// recorded under `key` in the local index. Transfers are reported on `vertex`.
    pub(crate) fn ensure_local(
        &self,
        key: &str,
        chain: &Chain,
        vertex: usize,
        progress: &dyn Progress,
    ) -> Result<Chain, SolveError> {
        if !chain.iter().any(is_lazy) {
            return Ok(chain.clone());
        }
        // Lazy layers are fetched and unpacked in parallel (at most 4 at once).
        let lazy: Vec<usize> = (0..chain.len()).filter(|&i| is_lazy(&chain[i])).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let done: std::sync::Mutex<Vec<(usize, Result<Layer, SolveError>)>> =
            std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..lazy.len().min(4) {
                s.spawn(|| loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(&i) = lazy.get(k) else { return };
                    let r = self.materialize_layer(&chain[i], vertex, progress);
                    if let Ok(mut d) = done.lock() {
                        d.push((i, r));
                    }
                });
            }
        });
        let mut out = chain.clone();
        let done = done.into_inner().map_err(|_| SolveError::Cancelled)?;
        if done.len() != lazy.len() {
            return Err(SolveError::Cancelled);
        }
        for (i, r) in done {
            out[i] = r?;
        }
        let _lock = self.key_lock(key)?;
        if self.lookup_local(key)?.is_none() {
            match self.lookup_remote(key)? {
                Some((_, imported)) => self.record_as(key, &out, imported.build, imported.time)?,
                None => self.record(key, &out)?,
            }
        }
        Ok(out)
    }

    /// The import a lazy layer comes from, and its index there.
    fn lazy_source(&self, l: &Layer) -> Result<(&ImportedCache, usize), SolveError> {
        let source = self
            .remote
            .lazy
            .lock()
            .ok()
            .and_then(|m| m.get(&l.diff_id).copied());
        source
            .and_then(|(i, index)| self.cfg.cache_imports.get(i).map(|imp| (imp, index)))
            .ok_or_else(|| SolveError::BadRecord {
                key: l.diff_id.clone(),
                message: "a layer of an imported cache record has no source".into(),
            })
    }

    /// Fetch the blobs of the lazy layers of `chain` into the content store (digest and size
    /// verified), without unpacking them: what an export of an imported record needs.
    fn fetch_lazy_blobs(&self, chain: &Chain, progress: &dyn Progress) -> Result<(), SolveError> {
        for l in chain.iter().filter(|l| is_lazy(l)) {
            let (imp, index) = self.lazy_source(l)?;
            let transfers = crate::VertexTransfers {
                vertex: 0,
                progress,
            };
            imp.fetch_layer(&self.cfg.registry, &self.cfg.store, index, &transfers)
                .map_err(|e| SolveError::Step {
                    step: format!("importing cache from {}", imp.origin),
                    message: e.to_string(),
                    lines: None,
                })?;
        }
        Ok(())
    }

    /// Fetch, verify and unpack one lazy layer.
    fn materialize_layer(
        &self,
        l: &Layer,
        vertex: usize,
        progress: &dyn Progress,
    ) -> Result<Layer, SolveError> {
        let store = &self.cfg.store;
        let hex: String = l
            .diff_id
            .trim_start_matches("sha256:")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let _lock = store.lock(&format!("layer-{hex}"))?;
        let desc = Descriptor {
            media_type: l.media_type.clone(),
            digest: l.blob.clone(),
            size: l.size,
            annotations: BTreeMap::new(),
            platform: None,
        };
        if let Some(local) = self.local_layer(&l.diff_id, &desc, l.created)? {
            return Ok(local);
        }
        let (imp, index) = self.lazy_source(l)?;
        let transfers = crate::VertexTransfers { vertex, progress };
        // A blob fetched here that then fails its diff id check leaves the store again.
        let fetched_now = !store.has_blob(&l.blob);
        let snap = store.new_snapshot()?;
        // Downloaded and unpacked in one pass; a layer a build made keeps its tar.
        let keep_tar = l.created.is_some();
        let applied = imp
            .fetch_and_apply(
                &self.cfg.registry,
                store,
                index,
                &snap.fs,
                &l.diff_id,
                keep_tar,
                &transfers,
            )
            .map(|kept| match kept {
                Some(info) => (info.digest, info.size, LAYER_TAR.to_string()),
                None => (l.blob.clone(), l.size, l.media_type.clone()),
            });
        let (blob, size, media_type) = match applied {
            Ok(v) => v,
            Err(e) => {
                let _ = store.remove_snapshot(&snap.id);
                if fetched_now {
                    let _ = store.remove_blob(&l.blob);
                }
                return Err(SolveError::Step {
                    step: format!("importing cache from {}", imp.origin),
                    message: e.to_string(),
                    lines: None,
                });
            }
        };
        store.meta_put(VERIFIED_NS, &l.blob, &l.diff_id)?;
        store.commit_snapshot_unsynced(&snap.id)?;
        store.meta_put(LAYER_NS, &l.diff_id, &snap.id)?;
        Ok(Layer {
            snapshot: snap.id,
            diff_id: l.diff_id.clone(),
            blob,
            size,
            media_type,
            created: l.created,
        })
    }

    /// The imported cache mount directory named `name` (a `cachemounts-v1` dir name), unpacked
    /// into `dest` (an empty directory); `false` when no import has it.
    pub(crate) fn import_cache_mount(
        &self,
        name: &str,
        dest: &std::path::Path,
    ) -> Result<bool, SolveError> {
        for imp in &self.cfg.cache_imports {
            let Some(m) = imp.config.mounts.iter().find(|m| m.name == name) else {
                continue;
            };
            let (Some(desc), Some(info)) =
                (imp.layers.get(m.layer), imp.config.layers.get(m.layer))
            else {
                continue;
            };
            let store = &self.cfg.store;
            let fetched_now = !store.has_blob(&desc.digest);
            let fetched = imp
                .fetch_layer(
                    &self.cfg.registry,
                    store,
                    m.layer,
                    &rbuild_oci::progress::NoTransferProgress,
                )
                .and_then(|()| {
                    let file =
                        store
                            .open_blob(&desc.digest)
                            .map_err(|e| rbuild_oci::OciError::Store {
                                op: format!("open blob {}", desc.digest),
                                reason: e.to_string(),
                            })?;
                    rbuild_oci::apply_layer_verified(
                        std::io::BufReader::new(file),
                        dest,
                        &desc.digest,
                        &info.diff_id,
                    )
                });
            return match fetched {
                Ok(()) => Ok(true),
                Err(e) => {
                    if fetched_now {
                        let _ = store.remove_blob(&desc.digest);
                    }
                    Err(SolveError::Step {
                        step: format!("importing cache mount {name} from {}", imp.origin),
                        message: e.to_string(),
                        lines: None,
                    })
                }
            };
        }
        Ok(false)
    }

    /// What a cache export of this solver's builds holds: `roots` are the chains of the
    /// exported images (what `mode=min` keeps), `mounts` adds the build's cache mounts.
    pub fn cache_export(
        &self,
        roots: &[Chain],
        mode: CacheMode,
        mounts: bool,
        progress: &dyn Progress,
    ) -> Result<CacheExport, SolveError> {
        let solved = self
            .remote
            .solved
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        let in_roots: BTreeSet<(String, String)> = roots
            .iter()
            .flatten()
            .map(|l| (l.snapshot.clone(), l.diff_id.clone()))
            .collect();
        let root_snapshots: BTreeSet<&str> = in_roots.iter().map(|(s, _)| s.as_str()).collect();
        let root_diffs: BTreeSet<&str> = in_roots
            .iter()
            .map(|(_, d)| d.as_str())
            .filter(|d| !d.is_empty())
            .collect();
        let epoch = self.cfg.source_date_epoch;
        let mut layers: Vec<ExportLayer> = Vec::new();
        let mut infos: Vec<CacheLayerInfo> = Vec::new();
        let mut by_blob: HashMap<String, usize> = HashMap::new();
        let mut records = Vec::new();
        // One entry per layer: by diff id (an imported layer may be here both as the blob it
        // was imported as and as the tar it was unpacked to), else by blob.
        let mut add_layer = |blob: Descriptor, diff_id: String| -> usize {
            let id = if diff_id.is_empty() {
                blob.digest.clone()
            } else {
                diff_id.clone()
            };
            if let Some(&i) = by_blob.get(&id) {
                return i;
            }
            let i = layers.len();
            by_blob.insert(id, i);
            infos.push(CacheLayerInfo {
                diff_id: diff_id.clone(),
            });
            layers.push(ExportLayer { blob, diff_id });
            i
        };
        for (key, chain) in &solved {
            let kept = mode == CacheMode::Max
                || chain.iter().all(|l| {
                    root_snapshots.contains(l.snapshot.as_str())
                        || (!l.diff_id.is_empty() && root_diffs.contains(l.diff_id.as_str()))
                });
            if !kept {
                continue;
            }
            // An imported layer nothing here unpacked is exported as the blob it was imported
            // as: fetched (verified) into the content store, never unpacked.
            self.fetch_lazy_blobs(chain, progress)?;
            let full = materialize_layers(&self.cfg.store, chain, epoch)?;
            let rec = match self.lookup_local(key)? {
                Some(r) => Some(r),
                None => self.lookup_remote(key)?.map(|(_, r)| r),
            };
            let chain_links = full
                .iter()
                .map(|l| ChainLink {
                    layer: add_layer(
                        Descriptor {
                            media_type: l.media_type.clone(),
                            digest: l.blob.clone(),
                            size: l.size,
                            annotations: BTreeMap::new(),
                            platform: None,
                        },
                        l.diff_id.clone(),
                    ),
                    created: l.created,
                })
                .collect();
            records.push(CacheRecord {
                key: key.clone(),
                chain: chain_links,
                build: rec.as_ref().and_then(|r| r.build.clone()),
                time: rec.as_ref().and_then(|r| r.time),
            });
        }
        let mut mount_entries = Vec::new();
        if mounts {
            let base = self.cfg.store.root().join("cachemounts-v1");
            for name in self.mounts.used_names() {
                let dir = base.join(&name);
                if !dir.is_dir() {
                    continue;
                }
                let info = crate::image::write_layer_blob(&self.cfg.store, &dir, None)?;
                let layer = add_layer(
                    Descriptor {
                        media_type: LAYER_TAR.to_string(),
                        digest: info.digest.clone(),
                        size: info.size,
                        annotations: BTreeMap::new(),
                        platform: None,
                    },
                    info.digest,
                );
                mount_entries.push(CacheMount { name, layer });
            }
        }
        Ok(CacheExport {
            layers,
            config: CacheConfig {
                version: 1,
                layers: infos,
                records,
                mounts: mount_entries,
                steps: BTreeMap::new(),
            },
        })
    }

    /// The inline cache of an image whose layers are `chain` (the build's result): the records
    /// of this build whose layers are all in it, `layers` = the image's layers.
    pub fn inline_cache(&self, chain: &Chain) -> Result<CacheConfig, SolveError> {
        let chain = &materialize_layers(&self.cfg.store, chain, self.cfg.source_date_epoch)?;
        let data = self.cache_export(
            std::slice::from_ref(chain),
            CacheMode::Min,
            false,
            &crate::NoProgress,
        )?;
        let position: HashMap<&str, usize> = chain
            .iter()
            .enumerate()
            .map(|(i, l)| (l.blob.as_str(), i))
            .collect();
        let mut records = Vec::new();
        'rec: for r in data.config.records {
            let mut links = Vec::with_capacity(r.chain.len());
            for link in &r.chain {
                let Some(blob) = data.layers.get(link.layer).map(|l| l.blob.digest.as_str()) else {
                    continue 'rec;
                };
                let Some(&i) = position.get(blob) else {
                    continue 'rec;
                };
                links.push(ChainLink {
                    layer: i,
                    created: link.created,
                });
            }
            records.push(CacheRecord { chain: links, ..r });
        }
        Ok(CacheConfig {
            version: 1,
            layers: chain
                .iter()
                .map(|l| CacheLayerInfo {
                    diff_id: l.diff_id.clone(),
                })
                .collect(),
            records,
            mounts: Vec::new(),
            steps: BTreeMap::new(),
        })
    }
}
