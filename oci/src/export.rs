//! Exporters: an image (manifest in the content store) as an OCI image-layout tar, or as a
//! docker archive (`manifest.json` plus the OCI layout files, as `docker save` of Docker 25+
//! writes). Output is deterministic: entries in a fixed order (layers in manifest order,
//! config, manifest, then the layout files), mtimes 0, owner 0:0, fixed modes.
//!
//! [`export_archive`] converts while exporting: a layer that must be compressed for a file
//! output is compressed straight into the archive (parallel gzip / zstd), so the cold path
//! writes it once instead of into the content store and again into the archive.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};

use serde::Serialize;

use crate::compress::cpus;
use crate::convert::{
    assemble_manifest, convert_layers, plan_layer, ConvertOpts, LayerJob, LayerPlan, SMALL_LAYER,
};
use crate::digest::{digest_hex, HashingWriter};
use crate::image_store::read_manifest;
use crate::reference::Reference;
use crate::store::{ContentStore, StreamFn};
use crate::types::{canonical_json, media_types as mt, Descriptor, Index, Manifest};
use crate::OciError;

/// Annotation containerd uses for the full image name.
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// A tar writer for archives: ustar headers, data padded to 512 bytes, two zero blocks at the
/// end. On a seekable sink a blob can be written before its size and digest are known
/// ([`ArchiveWriter::streamed_blob`]).
struct ArchiveWriter<W: Write> {
    w: W,
}

const BLOCK: usize = 512;
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> Result<tar::Header, OciError> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_path(path)
        .map_err(OciError::io("archive entry", path))?;
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h.set_cksum();
    Ok(h)
}

fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

impl<W: Write> ArchiveWriter<W> {
    fn raw(&mut self, bytes: &[u8], what: &str) -> Result<(), OciError> {
        self.w
            .write_all(bytes)
            .map_err(OciError::io("write archive entry", what))
    }

    fn dir(&mut self, path: &str) -> Result<(), OciError> {
        let h = header(path, tar::EntryType::Directory, 0o755, 0)?;
        self.raw(h.as_bytes(), path)
    }

    fn file(&mut self, path: &str, size: u64, data: impl Read) -> Result<(), OciError> {
        let h = header(path, tar::EntryType::Regular, 0o644, size)?;
        self.raw(h.as_bytes(), path)?;
        let n = std::io::copy(&mut data.take(size), &mut self.w)
            .map_err(OciError::io("write archive entry", path))?;
        if n != size {
            return Err(OciError::DigestMismatch {
                what: format!("archive entry {path}"),
                expected: format!("{size} bytes"),
                actual: format!("{n} bytes"),
            });
        }
        self.raw(&[0u8; BLOCK][..padding(size)], path)
    }

    /// A blob from the store, checked against its descriptor's size.
    fn store_blob(&mut self, store: &dyn ContentStore, d: &Descriptor) -> Result<(), OciError> {
        let hex = digest_hex(&d.digest)?;
        let f = store.open_blob(&d.digest)?;
        let actual = f
            .metadata()
            .map_err(OciError::io("stat blob", &d.digest))?
            .len();
        if actual != d.size {
            return Err(OciError::DigestMismatch {
                what: format!("stored blob {}", d.digest),
                expected: format!("{} bytes", d.size),
                actual: format!("{actual} bytes"),
            });
        }
        self.file(&format!("blobs/sha256/{hex}"), d.size, f)
    }

    fn finish(mut self) -> Result<W, OciError> {
        self.raw(&[0u8; 2 * BLOCK], "end of archive")?;
        self.w
            .flush()
            .map_err(OciError::io("finish archive", "tar"))?;
        Ok(self.w)
    }
}

impl<W: Write + Seek> ArchiveWriter<W> {
    /// Write a blob whose digest and size are known only once `write` is done: a placeholder
    /// header, the data (hashed on the way), then the real header written in place.
    fn streamed_blob(&mut self, write: &mut StreamFn<'_>) -> Result<(String, u64), OciError> {
        let seek_err = OciError::io("seek in archive", "tar");
        let start = self.w.stream_position().map_err(seek_err)?;
        self.raw(&[0u8; BLOCK], "blob header")?;
        let mut hw = HashingWriter::new(&mut self.w);
        write(&mut hw)?;
        let (_, digest, size) = hw.finish();
        self.raw(&[0u8; BLOCK][..padding(size)], &digest)?;
        let h = header(
            &format!("blobs/sha256/{}", digest_hex(&digest)?),
            tar::EntryType::Regular,
            0o644,
            size,
        )?;
        let end = self
            .w
            .stream_position()
            .map_err(OciError::io("seek in archive", "tar"))?;
        self.w
            .seek(SeekFrom::Start(start))
            .map_err(OciError::io("seek in archive", "tar"))?;
        self.raw(h.as_bytes(), &digest)?;
        self.w
            .seek(SeekFrom::Start(end))
            .map_err(OciError::io("seek in archive", "tar"))?;
        Ok((digest, size))
    }
}

/// Archive formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// An OCI image layout tar.
    Oci,
    /// A docker archive (`manifest.json` with the OCI layout files alongside).
    Docker,
}

/// Where an archive goes.
pub enum ArchiveSink<'a> {
    /// A file: layers that must be compressed are compressed straight into it (their tar
    /// header is written after the data, by seeking back), never into the content store.
    File(&'a mut File),
    /// Any stream (stdout, a pipe): layers are converted into the content store first.
    Stream(&'a mut dyn Write),
}

/// Export the image `manifest`, converted with `opts` (compression, media types,
/// annotations), as an archive. Entries: `blobs/`, the layers in manifest order, the config,
/// the manifest, then `index.json`, `manifest.json` (docker) and `oci-layout` — the same bytes
/// whichever sink is used. Returns the exported manifest's descriptor.
pub fn export_archive(
    store: &(dyn ContentStore + Sync),
    manifest: &Descriptor,
    opts: &ConvertOpts,
    names: &[Reference],
    format: ArchiveFormat,
    sink: ArchiveSink<'_>,
) -> Result<Descriptor, OciError> {
    if crate::index::is_index(manifest) {
        // A multi-platform image: converted through the store, then written as it is.
        let mut desc = crate::index::convert_index(store, manifest, opts)?;
        desc.annotations.extend(opts.descriptor_annotations.clone());
        match sink {
            ArchiveSink::File(f) => export_index(store, &desc, names, format, f)?,
            ArchiveSink::Stream(out) => export_index(store, &desc, names, format, out)?,
        }
        return Ok(desc);
    }
    let m = read_manifest(store, manifest)?;
    // Small layers go through the store (cached, several at once); big ones that need
    // compressing are compressed into the archive on all cores when the sink can seek.
    let stream_big = matches!(sink, ArchiveSink::File(_));
    let pick: Vec<(usize, &Descriptor)> = m
        .layers
        .iter()
        .enumerate()
        .filter(|(_, l)| !stream_big || l.size < SMALL_LAYER)
        .collect();
    let mut done = convert_layers(store, &pick, opts);
    let mut plans = Vec::with_capacity(m.layers.len());
    for (i, l) in m.layers.iter().enumerate() {
        plans.push(match done.remove(&i) {
            Some(r) => LayerPlan::Ready(r?),
            None => plan_layer(store, l, opts)?,
        });
    }
    let finalize = |layers| {
        assemble_manifest(&m, manifest, layers, opts).map(|(mut d, bytes)| {
            d.annotations.extend(opts.descriptor_annotations.clone());
            (d, bytes)
        })
    };
    match sink {
        ArchiveSink::File(f) => {
            let threads = cpus();
            with_writer(f, |w| {
                write_archive(w, store, &m, plans, finalize, names, format, |w, job| {
                    w.streamed_blob(&mut |out| job.compress_into(store, threads, out))
                })
            })
        }
        ArchiveSink::Stream(out) => with_writer(out, |w| {
            write_archive(w, store, &m, plans, finalize, names, format, not_converted)
        }),
    }
}

/// Run `f` on a buffered archive writer over `out`, then end the archive.
fn with_writer<W: Write, T>(
    out: W,
    f: impl FnOnce(&mut ArchiveWriter<BufWriter<W>>) -> Result<T, OciError>,
) -> Result<T, OciError> {
    let mut w = ArchiveWriter {
        w: BufWriter::with_capacity(1 << 20, out),
    };
    let r = f(&mut w)?;
    w.finish()?;
    Ok(r)
}

/// Write the archive's entries. `finalize` turns the final layer descriptors into the
/// manifest (descriptor and, when it is not the stored one, its bytes); `stream` writes a layer
/// that must be compressed.
#[allow(clippy::too_many_arguments)]
fn write_archive<W: Write>(
    w: &mut ArchiveWriter<W>,
    store: &dyn ContentStore,
    m: &Manifest,
    plans: Vec<LayerPlan>,
    finalize: impl FnOnce(Vec<Descriptor>) -> Result<(Descriptor, Option<Vec<u8>>), OciError>,
    names: &[Reference],
    format: ArchiveFormat,
    mut stream: impl FnMut(&mut ArchiveWriter<W>, &LayerJob) -> Result<(String, u64), OciError>,
) -> Result<Descriptor, OciError> {
    w.dir("blobs/")?;
    w.dir("blobs/sha256/")?;
    let mut written = BTreeSet::new();
    let mut streamed: BTreeMap<String, Descriptor> = BTreeMap::new();
    let mut layers = Vec::with_capacity(plans.len());
    for plan in plans {
        let d = match plan {
            LayerPlan::Ready(d) => {
                if written.insert(d.digest.clone()) {
                    w.store_blob(store, &d)?;
                }
                d
            }
            LayerPlan::Compress(job) => match streamed.get(&job.src.digest) {
                Some(d) => d.clone(),
                None => {
                    let (digest, size) = stream(w, &job)?;
                    written.insert(digest.clone());
                    let mut d = job.out.clone();
                    d.digest = digest;
                    d.size = size;
                    streamed.insert(job.src.digest.clone(), d.clone());
                    d
                }
            },
        };
        layers.push(d);
    }
    let layer_paths = layers
        .iter()
        .map(|d| Ok(format!("blobs/sha256/{}", digest_hex(&d.digest)?)))
        .collect::<Result<Vec<_>, OciError>>()?;
    let (manifest, bytes) = finalize(layers)?;
    if written.insert(m.config.digest.clone()) {
        w.store_blob(store, &m.config)?;
    }
    if written.insert(manifest.digest.clone()) {
        match &bytes {
            Some(b) => w.file(
                &format!("blobs/sha256/{}", digest_hex(&manifest.digest)?),
                b.len() as u64,
                &b[..],
            )?,
            None => w.store_blob(store, &manifest)?,
        }
    }
    let index = canonical_json("index.json", &layout_index(&manifest, names))?;
    w.file("index.json", index.len() as u64, &index[..])?;
    if format == ArchiveFormat::Docker {
        let json = docker_manifest_json(&m.config, layer_paths, names)?;
        w.file("manifest.json", json.len() as u64, &json[..])?;
    }
    w.file("oci-layout", OCI_LAYOUT.len() as u64, OCI_LAYOUT)?;
    Ok(manifest)
}

/// The `stream` of [`write_archive`] for sinks that cannot seek: every layer is converted
/// into the store beforehand, so this is never reached.
fn not_converted<W: Write>(
    _: &mut ArchiveWriter<W>,
    job: &LayerJob,
) -> Result<(String, u64), OciError> {
    Err(OciError::Store {
        op: format!("export layer {}", job.src.digest),
        reason: "not converted".into(),
    })
}

/// index.json: one entry per name (or one unnamed entry).
fn layout_index(manifest: &Descriptor, names: &[Reference]) -> Index {
    let mut index = Index {
        schema_version: 2,
        media_type: Some(mt::OCI_INDEX.into()),
        manifests: Vec::new(),
        annotations: BTreeMap::new(),
    };
    let mut full_names: Vec<String> = names
        .iter()
        .map(|n| {
            let mut n = n.clone();
            n.digest = None;
            n.to_string()
        })
        .collect();
    full_names.sort();
    full_names.dedup();
    // the manifest's descriptor annotations (`--annotation manifest-descriptor:`) on each entry
    let entry = || {
        let mut d = Descriptor::new(
            manifest.media_type.clone(),
            manifest.digest.clone(),
            manifest.size,
        );
        d.annotations = manifest.annotations.clone();
        d.annotations.remove(mt::ANNOTATION_REF_NAME);
        d.annotations.remove(ANNOTATION_CONTAINERD_NAME);
        d
    };
    if full_names.is_empty() {
        index.manifests.push(entry());
    }
    for n in full_names {
        let mut d = entry();
        d.annotations
            .insert(mt::ANNOTATION_REF_NAME.into(), n.clone());
        d.annotations.insert(ANNOTATION_CONTAINERD_NAME.into(), n);
        index.manifests.push(d);
    }
    index
}

#[derive(Serialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// `manifest.json` of a docker archive. Names without a tag are left out of `RepoTags`.
fn docker_manifest_json(
    config: &Descriptor,
    layers: Vec<String>,
    names: &[Reference],
) -> Result<Vec<u8>, OciError> {
    let mut tags: Vec<String> = names
        .iter()
        .filter(|n| n.tag.is_some())
        .map(|n| {
            let mut n = n.clone();
            n.digest = None;
            n.familiar()
        })
        .collect();
    tags.sort();
    tags.dedup();
    let entry = DockerManifestEntry {
        config: format!("blobs/sha256/{}", digest_hex(&config.digest)?),
        repo_tags: tags,
        layers,
    };
    canonical_json("manifest.json", &vec![entry])
}

/// Write a stored image as it is (no conversion).
fn export_stored(
    store: &dyn ContentStore,
    manifest: &Descriptor,
    names: &[Reference],
    format: ArchiveFormat,
    out: impl Write,
) -> Result<(), OciError> {
    if crate::index::is_index(manifest) {
        return export_index(store, manifest, names, format, out);
    }
    let m = read_manifest(store, manifest)?;
    let plans = m.layers.iter().cloned().map(LayerPlan::Ready).collect();
    let finalize = |_| Ok((manifest.clone(), None));
    with_writer(out, |w| {
        write_archive(w, store, &m, plans, finalize, names, format, not_converted)
    })?;
    Ok(())
}

/// Write a stored index (multi-platform image) as an OCI layout: `index.json` points at the
/// index (with `index`'s descriptor annotations, once per name); every platform's manifest,
/// config and layers are in `blobs/`. A docker archive cannot hold an index (BuildKit's error).
fn export_index(
    store: &dyn ContentStore,
    index: &Descriptor,
    names: &[Reference],
    format: ArchiveFormat,
    out: impl Write,
) -> Result<(), OciError> {
    if format == ArchiveFormat::Docker {
        return Err(crate::index::docker_archive_error());
    }
    let blobs = crate::index::index_blobs(store, index)?;
    with_writer(out, |w| {
        w.dir("blobs/")?;
        w.dir("blobs/sha256/")?;
        for d in &blobs {
            w.store_blob(store, d)?;
        }
        let layout = canonical_json("index.json", &layout_index(index, names))?;
        w.file("index.json", layout.len() as u64, &layout[..])?;
        w.file("oci-layout", OCI_LAYOUT.len() as u64, OCI_LAYOUT)
    })
}

/// Write a stored image as an OCI image layout tar. `names` become
/// `org.opencontainers.image.ref.name` (and `io.containerd.image.name`) annotations with the
/// full normalised name.
pub fn export_oci_archive(
    store: &dyn ContentStore,
    manifest: &Descriptor,
    names: &[Reference],
    out: impl Write,
) -> Result<(), OciError> {
    export_stored(store, manifest, names, ArchiveFormat::Oci, out)
}

/// Write a stored image as a docker archive (`docker load`, `skopeo docker-archive:`), with
/// the OCI layout files alongside `manifest.json`.
pub fn export_docker_archive(
    store: &dyn ContentStore,
    manifest: &Descriptor,
    names: &[Reference],
    out: impl Write,
) -> Result<(), OciError> {
    export_stored(store, manifest, names, ArchiveFormat::Docker, out)
}
