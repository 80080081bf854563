//! Image indexes (multi-platform images): writing an index over per-platform manifests,
//! reading one back, converting it for an output (each manifest converted, a new index over
//! them), listing its blobs (for `export_oci_archive`), and pushing it (each manifest by digest, then the
//! index under the tag).
//!
//! The index is canonical JSON (`application/vnd.oci.image.index.v1+json`), each manifest
//! descriptor carrying its `platform`, in the order the platforms were given (as BuildKit).

use std::collections::{BTreeMap, BTreeSet};

use crate::attest;
use crate::convert::{convert_image, ConvertOpts};
use crate::digest::digest_hex;
use crate::image_store::read_manifest;
use crate::push::{PushOpts, PushReport};
use crate::reference::Reference;
use crate::registry::RegistryClient;
use crate::store::ContentStore;
use crate::types::{canonical_json, media_types as mt, parse_json, Descriptor, Index, Platform};
use crate::OciError;

/// Whether a descriptor points at an index (OCI) or a manifest list (Docker).
pub fn is_index(desc: &Descriptor) -> bool {
    desc.media_type == mt::OCI_INDEX || desc.media_type == mt::DOCKER_MANIFEST_LIST
}

/// Store an OCI index over `manifests` (each with its `platform`); returns its descriptor.
pub fn put_index(
    store: &dyn ContentStore,
    manifests: &[Descriptor],
    annotations: &BTreeMap<String, String>,
) -> Result<Descriptor, OciError> {
    for m in manifests {
        digest_hex(&m.digest)?;
        if m.platform.is_none() {
            return Err(OciError::Store {
                op: format!("write index: manifest {}", m.digest),
                reason: "an index entry needs a platform".into(),
            });
        }
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(mt::OCI_INDEX.into()),
        manifests: manifests.to_vec(),
        annotations: annotations.clone(),
    };
    let bytes = canonical_json("index", &index)?;
    let (digest, size) = store.put_blob(&bytes)?;
    Ok(Descriptor::new(mt::OCI_INDEX, digest, size))
}

/// Read and parse an index blob, verifying its digest.
pub fn read_index(store: &dyn ContentStore, desc: &Descriptor) -> Result<Index, OciError> {
    let data = store.read_blob(&desc.digest)?;
    crate::digest::verify(&format!("index {}", desc.digest), &data, &desc.digest, None)?;
    parse_json(&format!("index {}", desc.digest), &data)
}

/// The entry of `index` for `platform` (the first that matches).
pub fn pick(index: &Index, platform: &Platform) -> Option<Descriptor> {
    index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
        .cloned()
}

/// Convert every manifest of an index with `opts` and store a new index over the results
/// (platforms, descriptor annotations and the index's own annotations kept).
pub fn convert_index(
    store: &(dyn ContentStore + Sync),
    desc: &Descriptor,
    opts: &ConvertOpts,
) -> Result<Descriptor, OciError> {
    let index = read_index(store, desc)?;
    let mut manifests = Vec::with_capacity(index.manifests.len());
    // attestation manifests are not converted: they follow their image (`attest::retarget`)
    let mut moved = BTreeMap::new();
    for m in index
        .manifests
        .iter()
        .filter(|m| !attest::is_attestation(m))
    {
        let mut d = convert_image(store, m, opts)?;
        d.platform = m.platform.clone();
        d.annotations.extend(m.annotations.clone());
        if d.digest != m.digest {
            moved.insert(m.digest.clone(), d.digest.clone());
        }
        manifests.push(d);
    }
    for m in index.manifests.iter().filter(|m| attest::is_attestation(m)) {
        manifests.push(attest::retarget(store, m, &moved)?);
    }
    if manifests == index.manifests {
        return Ok(desc.clone());
    }
    put_index(store, &manifests, &index.annotations)
}

/// Every blob of an index: the index, then per manifest the manifest, its config and layers;
/// deduplicated, sorted by digest.
pub fn index_blobs(
    store: &dyn ContentStore,
    desc: &Descriptor,
) -> Result<Vec<Descriptor>, OciError> {
    let index = read_index(store, desc)?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut add = |d: &Descriptor| -> Result<(), OciError> {
        digest_hex(&d.digest)?;
        if seen.insert(d.digest.clone()) {
            out.push(Descriptor::new(
                d.media_type.clone(),
                d.digest.clone(),
                d.size,
            ));
        }
        Ok(())
    };
    add(desc)?;
    for m in &index.manifests {
        add(m)?;
        let manifest = read_manifest(store, m)?;
        add(&manifest.config)?;
        for l in &manifest.layers {
            add(l)?;
        }
    }
    out.sort_by(|a, b| a.digest.cmp(&b.digest));
    Ok(out)
}

/// The error of a docker archive of an index (the format holds single-platform images only),
/// worded as BuildKit's.
pub fn docker_archive_error() -> OciError {
    OciError::Store {
        op: "export docker archive".into(),
        reason: "docker exporter does not currently support exporting manifest lists; \
                 build one platform, or use type=oci"
            .into(),
    }
}

impl RegistryClient {
    /// Push an index: every manifest (with its blobs) by digest, then the index as `target`.
    /// The report sums the blobs of all manifests; its digest is the index's.
    pub fn push_index(
        &self,
        store: &(dyn ContentStore + Sync),
        desc: &Descriptor,
        target: &Reference,
        opts: &PushOpts,
    ) -> Result<PushReport, OciError> {
        let index = read_index(store, desc)?;
        let mut total = PushReport::default();
        for m in &index.manifests {
            let mut by_digest = target.clone();
            by_digest.tag = None;
            by_digest.digest = Some(m.digest.clone());
            let rep = self.push_image(store, m, &by_digest, opts)?;
            total.existing += rep.existing;
            total.mounted += rep.mounted;
            total.uploaded += rep.uploaded;
        }
        self.put_manifest(store, desc, target)?;
        total.manifest_digest = desc.digest.clone();
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Manifest;

    fn platform(arch: &str) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: None,
        }
    }

    #[test]
    fn an_index_lists_its_platforms_and_every_blob_once() {
        let t = tempfile::tempdir().unwrap();
        let store = rbuild_cache::Store::open(t.path()).unwrap();
        let (ld, ls) = store.put_blob(b"shared layer").unwrap();
        let mut entries = Vec::new();
        for arch in ["amd64", "arm64"] {
            let (cd, cs) = store
                .put_blob(format!("{{\"architecture\":\"{arch}\"}}").as_bytes())
                .unwrap();
            let m = Manifest {
                schema_version: 2,
                media_type: Some(mt::OCI_MANIFEST.into()),
                config: Descriptor::new(mt::OCI_CONFIG, cd, cs),
                layers: vec![Descriptor::new(mt::OCI_LAYER_TAR, ld.clone(), ls)],
                annotations: BTreeMap::new(),
            };
            let (md, ms) = store.put_blob(&canonical_json("m", &m).unwrap()).unwrap();
            let mut d = Descriptor::new(mt::OCI_MANIFEST, md, ms);
            d.platform = Some(platform(arch));
            entries.push(d);
        }
        let desc = put_index(&store, &entries, &BTreeMap::new()).unwrap();
        assert!(is_index(&desc));
        let index = read_index(&store, &desc).unwrap();
        assert_eq!(index.manifests, entries);
        assert_eq!(pick(&index, &platform("arm64")), Some(entries[1].clone()));
        assert_eq!(pick(&index, &platform("s390x")), None);
        // index + 2 manifests + 2 configs + 1 shared layer
        assert_eq!(index_blobs(&store, &desc).unwrap().len(), 6);
        // converting keeps the platforms; nothing to change → the same index
        let same = convert_index(
            &store,
            &desc,
            &ConvertOpts {
                compression: crate::Compression::Uncompressed,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(same, desc);
        let mut bare = entries[0].clone();
        bare.platform = None;
        assert!(put_index(&store, &[bare], &BTreeMap::new()).is_err());
    }
}
