//! Remote image tools (`rbuild imagetools`): reading an image or index from a registry with
//! its attestations, and assembling an index from images already in registries without
//! pulling their layers (blobs are cross-repository mounted within a registry; only across
//! registries are they copied, through the local content store).

use serde_json::Value;

use crate::attest;
use crate::push::PushOpts;
use crate::reference::Reference;
use crate::registry::RegistryClient;
use crate::store::ContentStore;
use crate::types::{media_types as mt, parse_json, Descriptor, Index, Manifest, Platform};
use crate::OciError;

/// Largest attestation statement or config read (bytes).
pub const MAX_DOCUMENT: u64 = 64 << 20;

/// A manifest or index as a registry serves it.
#[derive(Debug, Clone)]
pub struct Remote {
    pub reference: Reference,
    pub raw: Vec<u8>,
    pub media_type: String,
    pub digest: String,
    /// The entries when it is an index.
    pub index: Option<Index>,
}

impl Remote {
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            self.media_type.clone(),
            self.digest.clone(),
            self.raw.len() as u64,
        )
    }
}

fn is_index_type(media_type: &str) -> bool {
    media_type == mt::OCI_INDEX || media_type == mt::DOCKER_MANIFEST_LIST
}

/// Fetch `r` (tag or digest) as it is.
pub fn fetch(client: &RegistryClient, r: &Reference) -> Result<Remote, OciError> {
    let (raw, media_type, digest) = client.fetch_manifest(r, r.object())?;
    let index = if is_index_type(&media_type) {
        Some(parse_json(&format!("index of {}", r.familiar()), &raw)?)
    } else {
        None
    };
    Ok(Remote {
        reference: r.clone(),
        raw,
        media_type,
        digest,
        index,
    })
}

/// The manifest `desc` of the repository of `r`.
pub fn manifest(
    client: &RegistryClient,
    r: &Reference,
    desc: &Descriptor,
) -> Result<(Vec<u8>, Manifest), OciError> {
    let (raw, _, _) = client.fetch_manifest(r, &desc.digest)?;
    let m = parse_json(&format!("manifest {}", desc.digest), &raw)?;
    Ok((raw, m))
}

/// The image config of the manifest `desc`, parsed.
pub fn config(
    client: &RegistryClient,
    r: &Reference,
    desc: &Descriptor,
) -> Result<Value, OciError> {
    let (_, m) = manifest(client, r, desc)?;
    let bytes = client.fetch_blob_bytes(r, &m.config, MAX_DOCUMENT)?;
    parse_json(&format!("config {}", m.config.digest), &bytes)
}

/// The statements of the attestation manifest `att`: `(predicate type, statement)`.
pub fn statements(
    client: &RegistryClient,
    r: &Reference,
    att: &Descriptor,
) -> Result<Vec<(String, Value)>, OciError> {
    let (_, m) = manifest(client, r, att)?;
    let mut out = Vec::new();
    for l in m.layers.iter().filter(|l| l.media_type == attest::IN_TOTO) {
        let bytes = client.fetch_blob_bytes(r, l, MAX_DOCUMENT)?;
        let v: Value = parse_json(&format!("statement {}", l.digest), &bytes)?;
        let pt = l
            .annotations
            .get(attest::PREDICATE_TYPE_ANNOTATION)
            .cloned()
            .or_else(|| {
                v.get("predicateType")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .unwrap_or_default();
        out.push((pt, v));
    }
    Ok(out)
}

/// The index entries of the sources of `create`: every entry of an index (attestations
/// included), or a single manifest with the platform of its config. Their manifests are put
/// in `store` and their blobs remembered as coming from the source repository, so that a push
/// to the same registry mounts them instead of uploading.
fn source_entries(
    client: &RegistryClient,
    store: &dyn ContentStore,
    src: &Reference,
) -> Result<Vec<Descriptor>, OciError> {
    let remote = fetch(client, src)?;
    let repo = format!("{}/{}", src.registry, src.repository);
    let mut entries = Vec::new();
    let list: Vec<Descriptor> = match &remote.index {
        Some(index) => index.manifests.clone(),
        None => vec![remote.descriptor()],
    };
    for mut d in list {
        let (raw, m) = manifest(client, src, &d)?;
        store.put_blob(&raw)?;
        if d.platform.is_none() {
            let cfg = client.fetch_blob_bytes(src, &m.config, MAX_DOCUMENT)?;
            let v: Value = parse_json(&format!("config {}", m.config.digest), &cfg)?;
            let s = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
            d.platform = Some(Platform {
                os: s("os").unwrap_or_else(|| "linux".into()),
                architecture: s("architecture").unwrap_or_else(|| "amd64".into()),
                variant: s("variant"),
            });
        }
        for b in m.layers.iter().chain(std::iter::once(&m.config)) {
            crate::push::remember_source(store, &b.digest, &repo);
        }
        entries.push(d);
    }
    Ok(entries)
}

/// Assemble one index over the images of `sources` (their indexes' entries, or single
/// manifests) and push it to each target. Blobs in another repository of the same registry
/// are mounted, never downloaded; from another registry they are copied through `store`.
/// Returns the index descriptor.
pub fn create(
    client: &RegistryClient,
    store: &(dyn ContentStore + Sync),
    sources: &[Reference],
    targets: &[Reference],
    annotations: &std::collections::BTreeMap<String, String>,
    dry_run: bool,
) -> Result<(Descriptor, Vec<u8>), OciError> {
    let mut entries: Vec<Descriptor> = Vec::new();
    for src in sources {
        for e in source_entries(client, store, src)? {
            if entries.iter().any(|x| x.digest == e.digest) {
                continue;
            }
            // blobs from another registry are copied through the store
            if targets.iter().any(|t| t.registry != src.registry) {
                let (_, m) = manifest(client, src, &e)?;
                for b in m.layers.iter().chain(std::iter::once(&m.config)) {
                    client.fetch_blob(src, b, store)?;
                }
            }
            entries.push(e);
        }
    }
    let desc = crate::index::put_index(store, &entries, annotations)?;
    let bytes = store.read_blob(&desc.digest)?;
    if !dry_run {
        for t in targets {
            client.push_index(store, &desc, t, &PushOpts::default())?;
        }
    }
    Ok((desc, bytes))
}
