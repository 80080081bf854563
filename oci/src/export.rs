//! Exporters: an image (manifest in the content store) as an OCI image-layout tar, or as a
//! docker archive (`manifest.json` plus the OCI layout files, as `docker save` of Docker 25+
//! writes). Output is deterministic: entries sorted, fixed mtimes (0), owner 0:0, fixed modes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

use serde::Serialize;

use crate::digest::digest_hex;
use crate::image_store::read_manifest;
use crate::reference::Reference;
use crate::store::ContentStore;
use crate::types::{canonical_json, media_types as mt, Descriptor, Index};
use crate::OciError;

/// Annotation containerd uses for the full image name.
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

struct ArchiveWriter<W: Write> {
    builder: tar::Builder<W>,
}

impl<W: Write> ArchiveWriter<W> {
    fn header(
        path: &str,
        kind: tar::EntryType,
        mode: u32,
        size: u64,
    ) -> Result<tar::Header, OciError> {
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

    fn dir(&mut self, path: &str) -> Result<(), OciError> {
        let h = Self::header(path, tar::EntryType::Directory, 0o755, 0)?;
        self.builder
            .append(&h, std::io::empty())
            .map_err(OciError::io("write archive entry", path))
    }

    fn file(&mut self, path: &str, size: u64, data: impl Read) -> Result<(), OciError> {
        let h = Self::header(path, tar::EntryType::Regular, 0o644, size)?;
        self.builder
            .append(&h, data.take(size))
            .map_err(OciError::io("write archive entry", path))
    }

    fn finish(mut self) -> Result<(), OciError> {
        self.builder
            .finish()
            .map_err(OciError::io("finish archive", "tar"))
    }
}

/// Manifest, config and layer descriptors of an image, deduplicated, sorted by digest.
fn image_blobs(
    store: &dyn ContentStore,
    manifest: &Descriptor,
) -> Result<(Vec<Descriptor>, crate::Manifest), OciError> {
    let m = read_manifest(store, manifest)?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for d in std::iter::once(manifest)
        .chain(std::iter::once(&m.config))
        .chain(m.layers.iter())
    {
        digest_hex(&d.digest)?;
        if seen.insert(d.digest.clone()) {
            out.push(d.clone());
        }
    }
    out.sort_by(|a, b| a.digest.cmp(&b.digest));
    Ok((out, m))
}

/// index.json of an exported layout: one entry per name (or one unnamed entry).
pub(crate) fn layout_index(manifest: &Descriptor, names: &[Reference]) -> Index {
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
    if full_names.is_empty() {
        index.manifests.push(Descriptor::new(
            manifest.media_type.clone(),
            manifest.digest.clone(),
            manifest.size,
        ));
    }
    for n in full_names {
        let mut d = Descriptor::new(
            manifest.media_type.clone(),
            manifest.digest.clone(),
            manifest.size,
        );
        d.annotations
            .insert(mt::ANNOTATION_REF_NAME.into(), n.clone());
        d.annotations.insert(ANNOTATION_CONTAINERD_NAME.into(), n);
        index.manifests.push(d);
    }
    index
}

fn write_layout<W: Write>(
    w: &mut ArchiveWriter<W>,
    store: &dyn ContentStore,
    manifest: &Descriptor,
    names: &[Reference],
    blobs: &[Descriptor],
    extra: &[(&str, Vec<u8>)],
) -> Result<(), OciError> {
    let index = layout_index(manifest, names);
    let index_json = canonical_json("index.json", &index)?;
    let oci_layout: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("index.json".into(), index_json),
        ("oci-layout".into(), oci_layout.to_vec()),
    ];
    for (name, data) in extra {
        files.push((name.to_string(), data.clone()));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));

    w.dir("blobs/")?;
    w.dir("blobs/sha256/")?;
    for d in blobs {
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
        w.file(&format!("blobs/sha256/{hex}"), d.size, f)?;
    }
    for (name, data) in &files {
        w.file(name, data.len() as u64, &data[..])?;
    }
    Ok(())
}

/// Write the image as an OCI image layout tar. `names` become `org.opencontainers.image.ref.name`
/// (and `io.containerd.image.name`) annotations with the full normalised name.
pub fn export_oci_archive(
    store: &dyn ContentStore,
    manifest: &Descriptor,
    names: &[Reference],
    out: impl Write,
) -> Result<(), OciError> {
    // An index (multi-platform image): index.json points at it; every platform's blobs go in.
    let blobs = if crate::index::is_index(manifest) {
        crate::index::index_blobs(store, manifest)?
    } else {
        image_blobs(store, manifest)?.0
    };
    let mut w = ArchiveWriter {
        builder: tar::Builder::new(out),
    };
    write_layout(&mut w, store, manifest, names, &blobs, &[])?;
    w.finish()
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

/// Write the image as a docker archive (`docker load`, `skopeo docker-archive:`), with the OCI
/// layout files alongside `manifest.json`. Names without a tag are left out of `RepoTags`.
pub fn export_docker_archive(
    store: &dyn ContentStore,
    manifest: &Descriptor,
    names: &[Reference],
    out: impl Write,
) -> Result<(), OciError> {
    if crate::index::is_index(manifest) {
        return Err(crate::index::docker_archive_error());
    }
    let (blobs, m) = image_blobs(store, manifest)?;
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
    let blob_path = |d: &Descriptor| -> Result<String, OciError> {
        Ok(format!("blobs/sha256/{}", digest_hex(&d.digest)?))
    };
    let entry = DockerManifestEntry {
        config: blob_path(&m.config)?,
        repo_tags: tags,
        layers: m.layers.iter().map(blob_path).collect::<Result<_, _>>()?,
    };
    let manifest_json = canonical_json("manifest.json", &vec![entry])?;
    let mut w = ArchiveWriter {
        builder: tar::Builder::new(out),
    };
    write_layout(
        &mut w,
        store,
        manifest,
        names,
        &blobs,
        &[("manifest.json", manifest_json)],
    )?;
    w.finish()
}
