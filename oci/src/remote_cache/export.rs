//! Writing a cache: layers compressed through `convert`'s cached conversion (no layer
//! compressed twice across exports), the config and an OCI manifest over them, then a push
//! (blobs HEAD-checked, mounted or uploaded by `push`, the manifest last) or a local layout
//! (blobs, `oci-layout`, then `index.json` replaced atomically, then every blob no longer
//! referenced removed).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use rbuild_cache::Store;

use super::layout::LayoutWriter;
use super::{
    validate, with_tag, CacheExport, CacheExportOpts, CacheLayerInfo, CacheLocation,
    CACHE_CONFIG_MEDIA_TYPE, CACHE_VERSION,
};
use crate::convert::{convert_layers, ConvertOpts};
use crate::digest::{digest_hex, sha256_digest};
use crate::progress::{Action, Meter, TransferProgress};
use crate::push::PushOpts;
use crate::registry::RegistryClient;
use crate::store::ContentStore;
use crate::types::{canonical_json, media_types as mt, Descriptor, Index, Manifest};
use crate::OciError;

/// Export `data` to `to`: compress its layers per `opts` (reusing the store's `compressed`
/// metadata cache), then push to the registry (existing blobs skipped, cross-repository
/// mounts tried, the manifest last) or write the layout directory (blobs by tmp + fsync +
/// rename, `index.json` replaced atomically, unreferenced blobs removed; a directory that is
/// neither empty nor a layout is refused; symlinks are never followed). Returns the manifest
/// descriptor.
pub fn export_cache(
    client: &RegistryClient,
    store: &Store,
    to: &CacheLocation,
    data: &CacheExport,
    opts: &CacheExportOpts,
    progress: &dyn TransferProgress,
) -> Result<Descriptor, OciError> {
    let origin = to.origin();
    // A destination directory rbuild will not write into is refused before any work.
    let writer = match to {
        CacheLocation::Local(dir) => Some(LayoutWriter::prepare(dir)?),
        CacheLocation::Registry(_) => None,
    };
    for l in &data.layers {
        digest_hex(&l.blob.digest)?;
        digest_hex(&l.diff_id)?;
        if !ContentStore::has_blob(store, &l.blob.digest) {
            return Err(OciError::Store {
                op: format!("export {origin}: layer {}", l.blob.digest),
                reason: "blob is not in the content store".into(),
            });
        }
    }
    let conv = ConvertOpts {
        compression: opts.compression,
        level: opts.level,
        force: opts.force,
        oci_media_types: opts.oci_media_types,
        annotations: BTreeMap::new(),
        descriptor_annotations: BTreeMap::new(),
    };
    let jobs: Vec<(usize, &Descriptor)> = data.layers.iter().map(|l| &l.blob).enumerate().collect();
    let mut converted = convert_layers(store, &jobs, &conv);
    let mut layers = Vec::with_capacity(data.layers.len());
    for (i, l) in data.layers.iter().enumerate() {
        let d = converted.remove(&i).unwrap_or_else(|| {
            Err(OciError::Store {
                op: format!("compress layer {}", l.blob.digest),
                reason: "not converted".into(),
            })
        })?;
        layers.push(Descriptor::new(d.media_type, d.digest, d.size));
    }
    let mut config = data.config.clone();
    config.version = CACHE_VERSION;
    config.layers = data
        .layers
        .iter()
        .map(|l| CacheLayerInfo {
            diff_id: l.diff_id.clone(),
        })
        .collect();
    validate(&origin, &config, &layers)?;
    let config_bytes = config.to_canonical_json()?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(mt::OCI_MANIFEST.into()),
        config: Descriptor::new(
            CACHE_CONFIG_MEDIA_TYPE,
            sha256_digest(&config_bytes),
            config_bytes.len() as u64,
        ),
        layers,
        annotations: BTreeMap::new(),
    };
    let manifest_bytes = canonical_json("cache manifest", &manifest)?;
    let desc = Descriptor::new(
        mt::OCI_MANIFEST,
        sha256_digest(&manifest_bytes),
        manifest_bytes.len() as u64,
    );
    match to {
        CacheLocation::Registry(r) => {
            store.put_blob(&config_bytes)?;
            store.put_blob(&manifest_bytes)?;
            let target = with_tag(r);
            client.push_image_reporting(store, &desc, &target, &PushOpts::default(), progress)?;
        }
        CacheLocation::Local(dir) => {
            let w = match writer {
                Some(w) => w,
                None => LayoutWriter::prepare(dir)?,
            };
            write_layout(
                &w,
                store,
                &manifest,
                &desc,
                &config_bytes,
                &manifest_bytes,
                opts,
                progress,
            )?;
        }
    }
    Ok(desc)
}

/// Write the cache into the layout: blobs, `oci-layout`, `index.json` (the entry named
/// `opts.tag` replaced, other names kept when their blobs are intact), then garbage.
#[allow(clippy::too_many_arguments)]
fn write_layout(
    w: &LayoutWriter,
    store: &Store,
    manifest: &Manifest,
    desc: &Descriptor,
    config_bytes: &[u8],
    manifest_bytes: &[u8],
    opts: &CacheExportOpts,
    progress: &dyn TransferProgress,
) -> Result<(), OciError> {
    let tag = match opts.tag.as_str() {
        "" => "latest",
        t => t,
    };
    let mut seen = BTreeSet::new();
    for l in &manifest.layers {
        if !seen.insert(l.digest.clone()) {
            continue;
        }
        let meter = Meter::start(progress, &l.digest, Action::Uploading, l.size);
        let shown = w.path().join("blobs/sha256");
        let res = w.put_blob(l, &mut |f| {
            let mut src = std::io::BufReader::with_capacity(
                1 << 20,
                ContentStore::open_blob(store, &l.digest)?,
            );
            let mut dst = crate::progress::MeteredWriter::new(f, &meter);
            std::io::copy(&mut src, &mut dst).map_err(OciError::io("write blob into", &shown))?;
            Ok(())
        });
        meter.finish(res.is_ok());
        res?;
    }
    for (d, bytes) in [(&manifest.config, config_bytes), (desc, manifest_bytes)] {
        let shown = w.path().join("blobs/sha256");
        w.put_blob(d, &mut |f| {
            f.write_all(bytes)
                .map_err(OciError::io("write blob into", &shown))
        })?;
    }
    // Other names in the layout survive when their blobs are intact.
    let old = w.layout.index().ok().flatten();
    let mut keep: BTreeSet<String> = BTreeSet::new();
    let mut entries = Vec::new();
    for e in old.map(|i| i.manifests).unwrap_or_default() {
        let name = e.annotations.get(mt::ANNOTATION_REF_NAME);
        if name.is_none() || name.map(String::as_str) == Some(tag) {
            continue;
        }
        if let Some(blobs) = w.layout.entry_blobs(&e) {
            keep.extend(blobs);
            entries.push(e);
        }
    }
    let mut entry = desc.clone();
    entry
        .annotations
        .insert(mt::ANNOTATION_REF_NAME.into(), tag.to_string());
    entries.push(entry);
    entries.sort_by(|a, b| {
        a.annotations
            .get(mt::ANNOTATION_REF_NAME)
            .cmp(&b.annotations.get(mt::ANNOTATION_REF_NAME))
    });
    for d in std::iter::once(desc)
        .chain(std::iter::once(&manifest.config))
        .chain(&manifest.layers)
    {
        keep.insert(digest_hex(&d.digest)?.to_string());
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(mt::OCI_INDEX.into()),
        manifests: entries,
        annotations: BTreeMap::new(),
    };
    w.layout
        .put_file("index.json", &canonical_json("index.json", &index)?)?;
    w.collect_garbage(&keep)?;
    Ok(())
}
