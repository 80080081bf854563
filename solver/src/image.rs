//! Layers and images: committing a step's snapshot as a layer, writing layer tars when an image
//! needs them ([`materialize_layers`]), and assembling the final image (config with diff ids and
//! timestamps, OCI manifest) in the local image store.

use std::collections::BTreeMap;

use rbuild_graph::ImageConfig;
use rbuild_oci::{Descriptor, ImageStore, LayerOpts};

use crate::{Chain, Layer, SolveError, Solver};

/// Media type of the uncompressed layers rbuild writes.
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// The OCI annotation for the image's creation time.
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";

/// The image a build produced.
#[derive(Debug, Clone)]
pub struct ImageResult {
    pub manifest: Descriptor,
    /// Digest of the config blob: the image id.
    pub config_digest: String,
    pub config: Vec<u8>,
}

impl Solver {
    /// Commit a step's snapshot as a layer. Its tar blob (and so its diff id) is not written
    /// here: [`materialize_layers`] writes it when an image needs the layer, so layers of
    /// intermediate stages never cost a tar.
    pub(crate) fn commit_layer(&self, snap: &rbuild_cache::Snapshot) -> Result<Layer, SolveError> {
        // No sync here: the marker counts during this boot only until the store settles it
        // (one syncfs for many snapshots, `Store::settle_snapshots`), so a crash never leaves
        // a committed snapshot with missing data, and a step does not wait for the disk.
        self.cfg.store.commit_snapshot_unsynced(&snap.id)?;
        let created = self
            .cfg
            .source_date_epoch
            .unwrap_or_else(rbuild_oci::time::now_secs);
        Ok(Layer {
            snapshot: snap.id.clone(),
            diff_id: String::new(),
            blob: String::new(),
            size: 0,
            media_type: LAYER_TAR.to_string(),
            created: Some(created),
        })
    }
}

/// Metadata namespace remembering the tar blob written for a snapshot
/// (`<snapshot>|<source date epoch or ->` → [`rbuild_cache::BlobInfo`] JSON).
pub(crate) const LAYER_TAR_NS: &str = "layer-tar";

fn tar_meta_key(snapshot: &str, source_date_epoch: Option<i64>) -> String {
    match source_date_epoch {
        Some(e) => format!("{snapshot}|{e}"),
        None => format!("{snapshot}|-"),
    }
}

/// The snapshot a `layer-tar` metadata key belongs to.
pub(crate) fn tar_meta_snapshot(key: &str) -> &str {
    key.split('|').next().unwrap_or(key)
}

/// Bytes per chunk handed from the tar builder to the thread that hashes and writes them.
const TAR_CHUNK: usize = 1 << 20;

/// A `Write` that cuts the stream into [`TAR_CHUNK`] buffers for another thread.
struct ChunkSender {
    buf: Vec<u8>,
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
}

impl std::io::Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = TAR_CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == TAR_CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(TAR_CHUNK));
        self.tx
            .send(full)
            .map_err(|_| std::io::Error::other("layer blob writer stopped"))
    }
}

/// Write the deterministic tar of a layer directory into the content store. The tar is built
/// on the calling thread while another thread hashes and writes it (a pipeline of 1 MiB
/// chunks), so reading the files overlaps with hashing and writing.
pub(crate) fn write_layer_blob(
    store: &rbuild_cache::Store,
    dir: &std::path::Path,
    source_date_epoch: Option<i64>,
) -> Result<rbuild_cache::BlobInfo, SolveError> {
    use std::io::Write as _;
    let mut w = store.blob_writer()?;
    let opts = LayerOpts { source_date_epoch };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let (built, written) = std::thread::scope(|s| {
        let writer = s.spawn(move || -> std::io::Result<rbuild_cache::BlobWriter> {
            for chunk in rx {
                w.write_all(&chunk)?;
            }
            Ok(w)
        });
        let mut out = ChunkSender {
            buf: Vec::with_capacity(TAR_CHUNK),
            tx,
        };
        let built = rbuild_oci::write_layer(dir, &mut out, &opts)
            .map_err(SolveError::from)
            .and_then(|()| {
                out.flush().map_err(|e| {
                    SolveError::io(format!("writing layer tar of {}", dir.display()), e)
                })
            });
        drop(out);
        (built, writer.join())
    });
    let w = match written {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => {
            return Err(SolveError::io(
                format!("writing layer tar of {}", dir.display()),
                e,
            ))
        }
        Err(_) => {
            return Err(SolveError::io(
                "writing a layer tar",
                std::io::Error::other("writer thread panicked"),
            ))
        }
    };
    built?;
    Ok(w.commit(None)?)
}

/// Give every layer of `chain` its tar blob, diff id and size: layers committed by steps get
/// their tar written now (in parallel, one thread per layer up to the core count), or found
/// where an earlier build wrote it (metadata `layer-tar`).
pub fn materialize_layers(
    store: &rbuild_cache::Store,
    chain: &Chain,
    source_date_epoch: Option<i64>,
) -> Result<Chain, SolveError> {
    let pending: Vec<usize> = (0..chain.len())
        .filter(|i| chain[*i].blob.is_empty())
        .collect();
    let mut out = chain.clone();
    if pending.is_empty() {
        return Ok(out);
    }
    let one = |l: &Layer| -> Result<rbuild_cache::BlobInfo, SolveError> {
        let key = tar_meta_key(&l.snapshot, source_date_epoch);
        if let Some(json) = store.meta_get(LAYER_TAR_NS, &key)? {
            if let Ok(info) = serde_json::from_str::<rbuild_cache::BlobInfo>(&json) {
                if store.has_blob(&info.digest) {
                    return Ok(info);
                }
            }
        }
        let dir = store.snapshot_fs(&l.snapshot)?;
        let info = write_layer_blob(store, &dir, source_date_epoch)?;
        let json = serde_json::to_string(&info).map_err(|e| SolveError::BadRecord {
            key: key.clone(),
            message: e.to_string(),
        })?;
        store.meta_put(LAYER_TAR_NS, &key, &json)?;
        Ok(info)
    };
    let width = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, pending.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<(usize, Result<rbuild_cache::BlobInfo, SolveError>)>> =
        std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..width {
            s.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(&i) = pending.get(k) else { return };
                let r = one(&chain[i]);
                if let Ok(mut v) = results.lock() {
                    v.push((i, r));
                }
            });
        }
    });
    let results = results.into_inner().map_err(|_| SolveError::Cancelled)?;
    if results.len() != pending.len() {
        return Err(SolveError::Cancelled);
    }
    for (i, r) in results {
        let info = r?;
        let l = &mut out[i];
        l.diff_id = info.digest.clone();
        l.blob = info.digest;
        l.size = info.size;
    }
    Ok(out)
}

/// Build the final image from a chain and the frontend's config, store it in the local image
/// store and return its descriptors. New history entries and `created` get
/// `source_date_epoch` when set, else the time the newest layer of the chain was made (so a
/// fully cached rebuild gives the same image id), else the current time.
pub fn finalize_image(
    store: &rbuild_cache::Store,
    chain: &Chain,
    config: &ImageConfig,
    source_date_epoch: Option<i64>,
    annotations: &BTreeMap<String, String>,
) -> Result<ImageResult, SolveError> {
    let chain = &materialize_layers(store, chain, source_date_epoch)?;
    let now = source_date_epoch
        .or_else(|| chain.iter().filter_map(|l| l.created).max())
        .unwrap_or_else(rbuild_oci::time::now_secs);
    let stamp = rbuild_oci::time::rfc3339(now);
    let mut cfg = config.clone();
    cfg.rootfs.kind = "layers".to_string();
    cfg.rootfs.diff_ids = chain.iter().map(|l| l.diff_id.clone()).collect();
    cfg.created = Some(stamp.clone());
    for h in cfg.history.iter_mut() {
        if h.created.is_none() {
            h.created = Some(stamp.clone());
        }
    }
    let bytes = cfg.to_canonical_json()?;
    let images = ImageStore::open(store)?;
    let layers: Vec<Descriptor> = chain
        .iter()
        .map(|l| Descriptor {
            media_type: l.media_type.clone(),
            digest: l.blob.clone(),
            size: l.size,
            annotations: BTreeMap::new(),
            platform: None,
        })
        .collect();
    // org.opencontainers.image.created = the config's created (so SOURCE_DATE_EPOCH and
    // --reproducible keep the manifest digest stable); an explicit --annotation wins
    let mut annotations = annotations.clone();
    annotations
        .entry(ANNOTATION_CREATED.to_string())
        .or_insert(stamp);
    let manifest = images.put_image(&bytes, &layers, &annotations)?;
    Ok(ImageResult {
        manifest,
        config_digest: rbuild_graph::sha256_digest(&bytes),
        config: bytes,
    })
}
