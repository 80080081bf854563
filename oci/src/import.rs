//! Import of image archives (`rbuild load`): OCI image-layout tars and docker archives (both
//! the Docker 25+ layout form and the classic `<id>/layer.tar` form). Every file is streamed
//! into the content store once: files under `blobs/sha256/` are verified against their names
//! (a mismatch is an error and nothing is stored), other files are stored by their content
//! digest. Then `index.json` (OCI) or `manifest.json` (docker) says which images and names the
//! archive holds; an OCI entry may be an image index (a multi-platform image, loaded whole).
//! Every image's layers are then checked against its config's diff_ids (each layer
//! decompressed and hashed, as `docker load` does): an archive whose config claims another
//! layer's diff_id is refused before anything can share that layer by diff_id.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use serde::Deserialize;

use crate::digest::digest_hex;
use crate::reference::Reference;
use crate::store::ContentStore;
use crate::types::{canonical_json, media_types as mt, parse_json, Descriptor, Index, Manifest};
use crate::OciError;

/// One image found in an archive.
#[derive(Debug, Clone)]
pub struct Imported {
    /// Names the archive gives it (may be empty).
    pub names: Vec<Reference>,
    /// Its manifest in the content store.
    pub manifest: Descriptor,
}

#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

const SMALL: u64 = 4 << 20;

/// Import an archive from `src`.
pub fn import_archive(store: &dyn ContentStore, src: impl Read) -> Result<Vec<Imported>, OciError> {
    let mut files: HashMap<String, (String, u64)> = HashMap::new();
    let mut small: HashMap<String, Vec<u8>> = HashMap::new();
    let mut archive = tar::Archive::new(crate::layer::TarGuard::new(src));
    let entries = archive
        .entries()
        .map_err(OciError::io("read archive", "tar"))?;
    for e in entries {
        let mut e = e.map_err(OciError::io("read archive", "tar"))?;
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = String::from_utf8_lossy(&e.path_bytes())
            .trim_start_matches("./")
            .to_string();
        let size = e.size();
        if path.ends_with(".json") && size <= SMALL {
            let mut buf = Vec::new();
            e.read_to_end(&mut buf)
                .map_err(OciError::io("read archive entry", &path))?;
            let (d, s) = store.put_blob(&buf)?;
            files.insert(path.clone(), (d, s));
            small.insert(path, buf);
            continue;
        }
        if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            let digest = format!("sha256:{hex}");
            digest_hex(&digest)?;
            if !store.has_blob(&digest) {
                store.ingest(&mut e, &digest, size)?;
            }
            files.insert(path, (digest, size));
        } else {
            let (d, s) = store.write_stream(&mut |w| {
                std::io::copy(&mut e, w)
                    .map(|_| ())
                    .map_err(OciError::io("read archive entry", &path))
            })?;
            files.insert(path, (d, s));
        }
    }
    let mut out = Vec::new();
    if let Some(m) = small.get("manifest.json") {
        let entries: Vec<DockerEntry> = parse_json("manifest.json", m)?;
        for entry in entries {
            let (cd, cs) = files
                .get(&entry.config)
                .cloned()
                .ok_or_else(|| missing(&entry.config))?;
            let mut layers = Vec::new();
            for l in &entry.layers {
                let (ld, ls) = files.get(l).cloned().ok_or_else(|| missing(l))?;
                let mut head = [0u8; 4];
                let n = store
                    .open_blob(&ld)?
                    .read(&mut head)
                    .map_err(OciError::io("read", l))?;
                let media = if n >= 2 && head[..2] == [0x1f, 0x8b] {
                    mt::OCI_LAYER_GZIP
                } else if n == 4 && head == [0x28, 0xb5, 0x2f, 0xfd] {
                    mt::OCI_LAYER_ZSTD
                } else {
                    mt::OCI_LAYER_TAR
                };
                layers.push(Descriptor::new(media, ld, ls));
            }
            let manifest = Manifest {
                schema_version: 2,
                media_type: Some(mt::OCI_MANIFEST.into()),
                config: Descriptor::new(mt::OCI_CONFIG, cd, cs),
                layers,
                annotations: BTreeMap::new(),
            };
            let bytes = canonical_json("manifest", &manifest)?;
            let (md, ms) = store.put_blob(&bytes)?;
            let names = entry
                .repo_tags
                .unwrap_or_default()
                .iter()
                .filter_map(|t| Reference::parse(t).ok())
                .collect();
            out.push(Imported {
                names,
                manifest: Descriptor::new(mt::OCI_MANIFEST, md, ms),
            });
        }
        for i in &out {
            verify_diff_ids(store, &i.manifest)?;
        }
        return Ok(out);
    }
    let index = small
        .get("index.json")
        .ok_or_else(|| missing("index.json or manifest.json"))?;
    let index: Index = parse_json("index.json", index)?;
    for d in index.manifests {
        if !store.has_blob(&d.digest) {
            return Err(missing(&format!("blobs/sha256/{}", digest_hex(&d.digest)?)));
        }
        if crate::index::is_index(&d) {
            // A multi-platform image: every manifest, config and layer must be there.
            for b in crate::index::index_blobs(store, &d)? {
                if !store.has_blob(&b.digest) {
                    return Err(missing(&format!("blobs/sha256/{}", digest_hex(&b.digest)?)));
                }
            }
        }
        let names = d
            .annotations
            .get(mt::ANNOTATION_REF_NAME)
            .or_else(|| d.annotations.get("io.containerd.image.name"))
            .and_then(|n| Reference::parse(n).ok())
            .into_iter()
            .collect();
        out.push(Imported {
            names,
            manifest: Descriptor::new(d.media_type, d.digest, d.size),
        });
    }
    for i in &out {
        if crate::index::is_index(&i.manifest) {
            let index = crate::index::read_index(store, &i.manifest)?;
            for m in &index.manifests {
                if !crate::index::is_index(m) {
                    verify_diff_ids(store, m)?;
                }
            }
        } else {
            verify_diff_ids(store, &i.manifest)?;
        }
    }
    Ok(out)
}

/// Check an image's manifest against its digest and each layer (size, then its uncompressed
/// sha256) against the manifest and the config's `rootfs.diff_ids`.
pub fn verify_diff_ids(store: &dyn ContentStore, manifest: &Descriptor) -> Result<(), OciError> {
    let data = store.read_blob(&manifest.digest)?;
    crate::digest::verify(
        &format!("manifest {}", manifest.digest),
        &data,
        &manifest.digest,
        None,
    )?;
    let m: Manifest = parse_json(&format!("manifest {}", manifest.digest), &data)?;
    let config: serde_json::Value = parse_json(
        &format!("config {}", m.config.digest),
        &store.read_blob(&m.config.digest)?,
    )?;
    let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d.as_str()).collect())
        .unwrap_or_default();
    if diff_ids.len() != m.layers.len() {
        return Err(OciError::Store {
            op: "load archive".into(),
            reason: format!(
                "image {} has {} layers but its config lists {} diff_ids",
                manifest.digest,
                m.layers.len(),
                diff_ids.len()
            ),
        });
    }
    for (l, expected) in m.layers.iter().zip(diff_ids) {
        let path = store.blob_path(&l.digest)?;
        let size = std::fs::metadata(&path)
            .map_err(OciError::io("stat", &path))?
            .len();
        if size != l.size {
            return Err(OciError::DigestMismatch {
                what: format!("size of layer {}", l.digest),
                expected: l.size.to_string(),
                actual: size.to_string(),
            });
        }
        let actual = crate::layer::layer_diff_id(
            std::io::BufReader::new(store.open_blob(&l.digest)?),
            &path,
        )?;
        if actual != expected {
            return Err(OciError::DiffIdMismatch {
                layer: l.digest.clone(),
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok(())
}

fn missing(what: &str) -> OciError {
    OciError::Store {
        op: "load archive".into(),
        reason: format!("{what} is missing from the archive"),
    }
}
