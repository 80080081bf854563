//! Image conversion for export and push: re-encode layers (gzip, zstd or uncompressed), switch
//! between OCI and Docker media types, and add manifest annotations. The result is a new
//! manifest in the content store (the config is unchanged: diff ids are of uncompressed tars).
//! Compressed variants are remembered in the store's metadata table (namespace `compressed`:
//! source blob + algorithm + level → compressed blob), so a second export or push of the same
//! layer does not compress again.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::compress::{compress, cpus, decompressor, Compression};
use crate::digest::digest_hex;
use crate::image_store::read_manifest;
use crate::store::ContentStore;
use crate::types::{canonical_json, media_types as mt, Descriptor, Manifest};
use crate::OciError;

/// Docker's uncompressed layer media type.
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// How to convert an image.
#[derive(Debug, Clone)]
pub struct ConvertOpts {
    /// Target layer compression.
    pub compression: Compression,
    /// Compression level (None: the algorithm's default).
    pub level: Option<i32>,
    /// Re-encode layers that are already compressed with another algorithm.
    pub force: bool,
    /// OCI media types (true) or Docker schema 2 media types (false).
    pub oci_media_types: bool,
    /// Annotations added to the manifest.
    pub annotations: BTreeMap<String, String>,
    /// Annotations on the manifest's descriptor (an archive's `index.json` entries).
    pub descriptor_annotations: BTreeMap<String, String>,
}

impl Default for ConvertOpts {
    fn default() -> Self {
        ConvertOpts {
            compression: Compression::Gzip,
            level: None,
            force: false,
            oci_media_types: true,
            annotations: BTreeMap::new(),
            descriptor_annotations: BTreeMap::new(),
        }
    }
}

fn layer_media_type(c: Compression, oci: bool) -> &'static str {
    match (c, oci) {
        (Compression::Uncompressed, true) => mt::OCI_LAYER_TAR,
        (Compression::Uncompressed, false) => DOCKER_LAYER_TAR,
        (Compression::Gzip, true) => mt::OCI_LAYER_GZIP,
        (Compression::Gzip, false) => mt::DOCKER_LAYER_GZIP,
        // Docker has no zstd media type; BuildKit uses the OCI one in Docker manifests too.
        (Compression::Zstd, _) => mt::OCI_LAYER_ZSTD,
    }
}

/// A layer that must be re-encoded: where from, to what, and its cache key.
#[derive(Debug, Clone)]
pub struct LayerJob {
    /// The source layer.
    pub src: Descriptor,
    /// Its compression.
    pub have: Compression,
    /// The target compression.
    pub want: Compression,
    /// The target level.
    pub level: i32,
    /// The descriptor to fill in (media type set; digest and size are the source's).
    pub out: Descriptor,
}

impl LayerJob {
    fn cache_key(&self) -> String {
        format!("{}|{}|{}", self.src.digest, self.want.name(), self.level)
    }

    /// Decompress the source blob and compress it into `w` on `threads` threads.
    pub fn compress_into(
        &self,
        store: &dyn ContentStore,
        threads: usize,
        w: &mut dyn std::io::Write,
    ) -> Result<(), OciError> {
        let src = store.open_blob(&self.src.digest)?;
        let mut reader = decompressor(self.have, std::io::BufReader::with_capacity(1 << 20, src))
            .map_err(OciError::io("decompress layer", &self.src.digest))?;
        compress(self.want, Some(self.level), threads, &mut reader, w)
            .map_err(OciError::io("compress layer", &self.src.digest))
    }

    /// Remember that the layer compressed this way is the stored blob `digest` (`size` bytes).
    fn remember(&self, store: &dyn ContentStore, digest: &str, size: u64) {
        store.meta_put("compressed", &self.cache_key(), &format!("{digest} {size}"));
    }
}

/// What converting one layer takes.
#[derive(Debug, Clone)]
pub enum LayerPlan {
    /// Nothing to compress: the blob (in the store) under this descriptor.
    Ready(Descriptor),
    /// The layer must be re-encoded.
    Compress(LayerJob),
}

/// Decide how to convert one layer: a media-type change only, a compressed variant already in
/// the store (the `compressed` cache), or a re-encoding.
pub fn plan_layer(
    store: &dyn ContentStore,
    layer: &Descriptor,
    opts: &ConvertOpts,
) -> Result<LayerPlan, OciError> {
    let have = Compression::of_media_type(&layer.media_type).ok_or_else(|| {
        OciError::UnsupportedMediaType {
            what: format!("layer {}", layer.digest),
            media_type: layer.media_type.clone(),
        }
    })?;
    let want = if have == opts.compression || (have != Compression::Uncompressed && !opts.force) {
        have
    } else {
        opts.compression
    };
    let mut out = layer.clone();
    out.media_type = layer_media_type(want, opts.oci_media_types).to_string();
    if want == have {
        return Ok(LayerPlan::Ready(out));
    }
    let job = LayerJob {
        src: layer.clone(),
        have,
        want,
        level: opts.level.unwrap_or(want.default_level()),
        out,
    };
    if let Some(v) = store.meta_get("compressed", &job.cache_key()) {
        if let Some((d, s)) = v.split_once(' ') {
            if let Ok(size) = s.parse::<u64>() {
                if digest_hex(d).is_ok() && store.has_blob(d) {
                    let mut out = job.out;
                    out.digest = d.to_string();
                    out.size = size;
                    return Ok(LayerPlan::Ready(out));
                }
            }
        }
    }
    Ok(LayerPlan::Compress(job))
}

/// Re-encode one layer blob into the content store (cached). Returns the new descriptor.
pub fn convert_layer(
    store: &dyn ContentStore,
    layer: &Descriptor,
    opts: &ConvertOpts,
    threads: usize,
) -> Result<Descriptor, OciError> {
    let job = match plan_layer(store, layer, opts)? {
        LayerPlan::Ready(d) => return Ok(d),
        LayerPlan::Compress(job) => job,
    };
    let (digest, size) = store.write_stream(&mut |w| job.compress_into(store, threads, w))?;
    job.remember(store, &digest, size);
    let mut out = job.out;
    out.digest = digest;
    out.size = size;
    Ok(out)
}

/// Layers below this size are converted several at once (one core each); bigger ones one after
/// the other on all cores.
pub const SMALL_LAYER: u64 = 8 << 20;

/// Convert `layers` (index, descriptor) into the store: big ones one after the other on all
/// cores, small ones several at once.
pub fn convert_layers(
    store: &(dyn ContentStore + Sync),
    layers: &[(usize, &Descriptor)],
    opts: &ConvertOpts,
) -> BTreeMap<usize, Result<Descriptor, OciError>> {
    let threads = cpus();
    let results: Mutex<BTreeMap<usize, Result<Descriptor, OciError>>> = Mutex::new(BTreeMap::new());
    let (small, big): (Vec<_>, Vec<_>) = layers.iter().partition(|(_, l)| l.size < SMALL_LAYER);
    for (i, l) in &big {
        let r = convert_layer(store, l, opts, threads);
        if let Ok(mut g) = results.lock() {
            g.insert(*i, r);
        }
    }
    let next = Mutex::new(small.into_iter());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let job = next.lock().ok().and_then(|mut it| it.next());
                let Some((i, l)) = job else { return };
                let r = convert_layer(store, l, opts, 1);
                if let Ok(mut g) = results.lock() {
                    g.insert(i, r);
                }
            });
        }
    });
    results.into_inner().unwrap_or_default()
}

/// The converted manifest of `m` (stored under `manifest`) with `layers`: media types and
/// annotations per `opts`. Returns its descriptor and canonical bytes, or `None` for the bytes
/// when nothing changed (the original manifest is reused).
pub fn assemble_manifest(
    m: &Manifest,
    manifest: &Descriptor,
    layers: Vec<Descriptor>,
    opts: &ConvertOpts,
) -> Result<(Descriptor, Option<Vec<u8>>), OciError> {
    let (manifest_mt, config_mt) = if opts.oci_media_types {
        (mt::OCI_MANIFEST, mt::OCI_CONFIG)
    } else {
        (mt::DOCKER_MANIFEST, mt::DOCKER_CONFIG)
    };
    let mut annotations = m.annotations.clone();
    annotations.extend(opts.annotations.clone());
    let new = Manifest {
        schema_version: 2,
        media_type: Some(manifest_mt.to_string()),
        config: Descriptor {
            media_type: config_mt.to_string(),
            ..m.config.clone()
        },
        layers,
        annotations,
    };
    if new == *m && manifest.media_type == manifest_mt {
        return Ok((manifest.clone(), None));
    }
    let bytes = canonical_json("manifest", &new)?;
    let desc = Descriptor::new(
        manifest_mt,
        crate::digest::sha256_digest(&bytes),
        bytes.len() as u64,
    );
    Ok((desc, Some(bytes)))
}

/// Convert the image `manifest` (in `store`) and return the new manifest's descriptor. When
/// nothing changes, the original descriptor is returned. Big layers are converted one after
/// the other, each on all cores; small layers run concurrently.
pub fn convert_image(
    store: &(dyn ContentStore + Sync),
    manifest: &Descriptor,
    opts: &ConvertOpts,
) -> Result<Descriptor, OciError> {
    let m = read_manifest(store, manifest)?;
    let all: Vec<(usize, &Descriptor)> = m.layers.iter().enumerate().collect();
    let mut results = convert_layers(store, &all, opts);
    let mut layers = Vec::with_capacity(m.layers.len());
    for (i, l) in m.layers.iter().enumerate() {
        match results.remove(&i) {
            Some(Ok(d)) => layers.push(d),
            Some(Err(e)) => {
                return Err(OciError::Store {
                    op: format!("convert layer {}", l.digest),
                    reason: e.to_string(),
                })
            }
            None => {
                return Err(OciError::Store {
                    op: format!("convert layer {}", l.digest),
                    reason: "not converted".into(),
                })
            }
        }
    }
    match assemble_manifest(&m, manifest, layers, opts)? {
        (desc, None) => Ok(desc),
        (desc, Some(bytes)) => {
            store.put_blob(&bytes)?;
            Ok(desc)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::media_types as mt;
    use std::io::Read;

    #[test]
    fn converting_compresses_once_and_keeps_the_config() {
        let t = tempfile::tempdir().unwrap();
        let store = rbuild_cache::Store::open(t.path()).unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        let body = vec![b'x'; 100_000];
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, "f", &body[..]).unwrap();
        let layer_bytes = tar.into_inner().unwrap();
        let (ld, ls) = store.put_blob(&layer_bytes).unwrap();
        let (cd, cs) = store.put_blob(b"{}").unwrap();
        let m = Manifest {
            schema_version: 2,
            media_type: Some(mt::OCI_MANIFEST.into()),
            config: Descriptor::new(mt::OCI_CONFIG, cd.clone(), cs),
            layers: vec![Descriptor::new(mt::OCI_LAYER_TAR, ld.clone(), ls)],
            annotations: BTreeMap::new(),
        };
        let (md, ms) = store.put_blob(&canonical_json("m", &m).unwrap()).unwrap();
        let desc = Descriptor::new(mt::OCI_MANIFEST, md, ms);
        for (c, oci, want_mt) in [
            (Compression::Gzip, true, mt::OCI_LAYER_GZIP),
            (Compression::Zstd, true, mt::OCI_LAYER_ZSTD),
            (Compression::Gzip, false, mt::DOCKER_LAYER_GZIP),
        ] {
            let opts = ConvertOpts {
                compression: c,
                oci_media_types: oci,
                ..Default::default()
            };
            let nd = convert_image(&store, &desc, &opts).unwrap();
            let nm = read_manifest(&store, &nd).unwrap();
            assert_eq!(nm.config.digest, cd);
            assert_eq!(nm.layers[0].media_type, want_mt);
            assert!(nm.layers[0].size < ls);
            let mut back = Vec::new();
            decompressor(c, store.open_blob(&nm.layers[0].digest).unwrap())
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, layer_bytes);
        }
        // uncompressed + OCI types = the same manifest
        let same = convert_image(
            &store,
            &desc,
            &ConvertOpts {
                compression: Compression::Uncompressed,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(same, desc);
    }
}
