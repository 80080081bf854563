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
}

impl Default for ConvertOpts {
    fn default() -> Self {
        ConvertOpts {
            compression: Compression::Gzip,
            level: None,
            force: false,
            oci_media_types: true,
            annotations: BTreeMap::new(),
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

/// Re-encode one layer blob (cached). Returns the new descriptor.
pub fn convert_layer(
    store: &dyn ContentStore,
    layer: &Descriptor,
    opts: &ConvertOpts,
    threads: usize,
) -> Result<Descriptor, OciError> {
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
        return Ok(out);
    }
    let level = opts.level.unwrap_or(want.default_level());
    let key = format!("{}|{}|{}", layer.digest, want.name(), level);
    if let Some(v) = store.meta_get("compressed", &key) {
        if let Some((d, s)) = v.split_once(' ') {
            if let Ok(size) = s.parse::<u64>() {
                if digest_hex(d).is_ok() && store.has_blob(d) {
                    out.digest = d.to_string();
                    out.size = size;
                    return Ok(out);
                }
            }
        }
    }
    let src = store.open_blob(&layer.digest)?;
    let mut reader = decompressor(have, std::io::BufReader::with_capacity(1 << 20, src))
        .map_err(OciError::io("decompress layer", &layer.digest))?;
    let (digest, size) = store.write_stream(&mut |w| {
        compress(want, Some(level), threads, &mut reader, w)
            .map_err(OciError::io("compress layer", &layer.digest))
    })?;
    store.meta_put("compressed", &key, &format!("{digest} {size}"));
    out.digest = digest;
    out.size = size;
    Ok(out)
}

/// Convert the image `manifest` (in `store`) and return the new manifest's descriptor. When
/// nothing changes, the original descriptor is returned. Layers are converted one after the
/// other, each on all cores (small layers run concurrently).
pub fn convert_image(
    store: &(dyn ContentStore + Sync),
    manifest: &Descriptor,
    opts: &ConvertOpts,
) -> Result<Descriptor, OciError> {
    let m = read_manifest(store, manifest)?;
    let threads = cpus();
    // Big layers use every core inside the compressor; small ones are done in parallel.
    let results: Mutex<BTreeMap<usize, Result<Descriptor, OciError>>> = Mutex::new(BTreeMap::new());
    let (small, big): (Vec<_>, Vec<_>) = m
        .layers
        .iter()
        .enumerate()
        .partition(|(_, l)| l.size < (8 << 20));
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
    let results = results.into_inner().map_err(|_| OciError::Store {
        op: "convert image".into(),
        reason: "a worker thread panicked".into(),
    })?;
    let mut layers = Vec::with_capacity(m.layers.len());
    for i in 0..m.layers.len() {
        match results.get(&i) {
            Some(Ok(d)) => layers.push(d.clone()),
            Some(Err(e)) => {
                return Err(OciError::Store {
                    op: format!("convert layer {}", m.layers[i].digest),
                    reason: e.to_string(),
                })
            }
            None => {
                return Err(OciError::Store {
                    op: format!("convert layer {}", m.layers[i].digest),
                    reason: "not converted".into(),
                })
            }
        }
    }
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
    if new == m && manifest.media_type == manifest_mt {
        return Ok(manifest.clone());
    }
    let bytes = canonical_json("manifest", &new)?;
    let (digest, size) = store.put_blob(&bytes)?;
    Ok(Descriptor::new(manifest_mt, digest, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DirStore;
    use crate::types::media_types as mt;
    use std::io::Read;

    #[test]
    fn converting_compresses_once_and_keeps_the_config() {
        let t = tempfile::tempdir().unwrap();
        let store = DirStore::open(t.path()).unwrap();
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
