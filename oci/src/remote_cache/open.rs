//! Opening a cache (`--cache-from`): the manifest (an index resolved to the build's
//! platform), then its config, each digest- and size-verified and bounded before it is
//! parsed; the config validated against the manifest. What is found instead of an rbuild
//! cache (a plain image, a BuildKit cache, another artifact) is named in the error. Layer
//! blobs are fetched later, one by one, on demand ([`ImportedCache::fetch_layer`]), each
//! through a checked commit into the content store.

use std::io::Read;

use rbuild_cache::Store;

use super::layout::Layout;
use super::{
    validate, with_tag, CacheConfig, CacheLocation, BUILDKIT_CACHE_CONFIG, CACHE_CONFIG_MEDIA_TYPE,
    INLINE_ANNOTATION, MAX_CONFIG, MAX_MANIFEST,
};
use crate::digest::digest_hex;
use crate::progress::{Action, Meter, MeteredReader, TransferProgress};
use crate::reference::Reference;
use crate::registry::RegistryClient;
use crate::store::ContentStore;
use crate::types::{media_types as mt, parse_json, Descriptor, Index, Manifest, Platform};
use crate::OciError;

/// An opened cache: manifest and config fetched and verified, config validated.
#[derive(Debug, Clone)]
pub struct ImportedCache {
    /// How messages name it: "registry cache 127.0.0.1:5055/c:latest", "inline cache of
    /// IMAGE", "local cache DIR".
    pub origin: String,
    /// The manifest's layers (index = [`super::ChainLink::layer`]).
    pub layers: Vec<Descriptor>,
    /// The validated config.
    pub config: CacheConfig,
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    Registry(Reference),
    Local(Layout),
}

fn not_a_cache(origin: &str, found: impl Into<String>) -> OciError {
    OciError::NotACache {
        origin: origin.to_string(),
        found: found.into(),
    }
}

fn invalid(origin: &str, reason: impl Into<String>) -> OciError {
    OciError::InvalidCache {
        origin: origin.to_string(),
        reason: reason.into(),
    }
}

fn is_manifest_type(m: &str) -> bool {
    m == mt::OCI_MANIFEST || m == mt::DOCKER_MANIFEST
}

fn is_index_type(m: &str) -> bool {
    m == mt::OCI_INDEX || m == mt::DOCKER_MANIFEST_LIST
}

/// The entry of a (verified, bounded) index for `platform`: refuses a BuildKit cache index,
/// malformed digests, oversized or nested entries.
fn pick_from_index(origin: &str, data: &[u8], platform: &Platform) -> Result<Descriptor, OciError> {
    let index: Index = parse_json(&format!("index of {origin}"), data)?;
    if index
        .manifests
        .iter()
        .any(|d| d.media_type == BUILDKIT_CACHE_CONFIG)
    {
        return Err(not_a_cache(
            origin,
            "a BuildKit cache (an index with an application/vnd.buildkit.cacheconfig.v0 \
             entry); rbuild reads caches exported by rbuild --cache-to",
        ));
    }
    for d in &index.manifests {
        digest_hex(&d.digest)
            .map_err(|_| invalid(origin, format!("index entry {:?}", d.digest)))?;
    }
    let chosen = crate::index::pick(&index, platform).ok_or_else(|| {
        not_a_cache(
            origin,
            format!(
                "an image index without a manifest for {platform} (available: {})",
                index
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    if !is_manifest_type(&chosen.media_type) {
        return Err(invalid(
            origin,
            format!(
                "index entry for {platform} has media type {:?}, not an image manifest",
                chosen.media_type
            ),
        ));
    }
    if chosen.size > MAX_MANIFEST {
        return Err(invalid(
            origin,
            format!("manifest {} is {} bytes", chosen.digest, chosen.size),
        ));
    }
    Ok(chosen)
}

/// Classify a verified manifest and read its config with `fetch` (which verifies digest and
/// size): a cache manifest, or an image with the inline annotation. Returns the config and
/// whether it was inline.
fn read_config(
    origin: &str,
    manifest: &Manifest,
    fetch: &mut dyn FnMut(&Descriptor) -> Result<Vec<u8>, OciError>,
) -> Result<(CacheConfig, bool), OciError> {
    let cfg = &manifest.config;
    digest_hex(&cfg.digest).map_err(|_| invalid(origin, format!("config {:?}", cfg.digest)))?;
    if cfg.size > MAX_CONFIG {
        return Err(invalid(
            origin,
            format!("config is {} bytes (at most {MAX_CONFIG})", cfg.size),
        ));
    }
    match cfg.media_type.as_str() {
        CACHE_CONFIG_MEDIA_TYPE => {
            let data = fetch(cfg)?;
            let config: CacheConfig = parse_json(&format!("cache config of {origin}"), &data)?;
            validate(origin, &config, &manifest.layers)?;
            Ok((config, false))
        }
        BUILDKIT_CACHE_CONFIG => Err(not_a_cache(
            origin,
            "a BuildKit cache (config media type application/vnd.buildkit.cacheconfig.v0); \
             rbuild reads caches exported by rbuild --cache-to",
        )),
        mt::OCI_CONFIG | mt::DOCKER_CONFIG => {
            let Some(json) = manifest.annotations.get(INLINE_ANNOTATION) else {
                return Err(not_a_cache(
                    origin,
                    format!(
                        "a plain image without inline cache (its manifest has no \
                         {INLINE_ANNOTATION} annotation; push it with --cache-to type=inline)"
                    ),
                ));
            };
            let config: CacheConfig =
                parse_json(&format!("inline cache of {origin}"), json.as_bytes())?;
            validate(origin, &config, &manifest.layers)?;
            // The inline layers must be the image's: its config's diff_ids, same order.
            let data = fetch(cfg)?;
            let image: serde_json::Value = parse_json(&format!("image config of {origin}"), &data)?;
            let diff_ids: Vec<&str> = image
                .pointer("/rootfs/diff_ids")
                .and_then(|a| a.as_array())
                .map(|a| a.iter().filter_map(|d| d.as_str()).collect())
                .unwrap_or_default();
            let ours: Vec<&str> = config.layers.iter().map(|l| l.diff_id.as_str()).collect();
            if diff_ids != ours {
                return Err(invalid(
                    origin,
                    "the inline cache's layers are not the image's (its config's \
                     rootfs.diff_ids differ)",
                ));
            }
            Ok((config, true))
        }
        other => Err(not_a_cache(
            origin,
            format!("an OCI manifest whose config has media type {other:?}"),
        )),
    }
}

impl ImportedCache {
    /// Open the cache at `from` (see the module docs); a local layout's entry named
    /// `latest`, or its only entry.
    pub fn open(
        client: &RegistryClient,
        from: &CacheLocation,
        platform: &Platform,
    ) -> Result<Self, OciError> {
        Self::open_tag(client, from, platform, None)
    }

    /// [`ImportedCache::open`] choosing a local layout's entry by name (`type=local,tag=T`);
    /// `tag` is ignored for a registry (the reference names the tag).
    pub fn open_tag(
        client: &RegistryClient,
        from: &CacheLocation,
        platform: &Platform,
        tag: Option<&str>,
    ) -> Result<Self, OciError> {
        match from {
            CacheLocation::Registry(r) => Self::open_registry(client, r, platform),
            CacheLocation::Local(dir) => Self::open_local(dir, platform, tag),
        }
    }

    fn open_registry(
        client: &RegistryClient,
        r: &Reference,
        platform: &Platform,
    ) -> Result<Self, OciError> {
        let r = with_tag(r);
        let mut origin = format!("registry cache {}", r.familiar());
        let (mut data, mut media_type, _) = client.fetch_manifest(&r, r.object())?;
        let check_size = |data: &[u8]| {
            if data.len() as u64 > MAX_MANIFEST {
                return Err(invalid(
                    &origin,
                    format!("manifest is {} bytes (at most {MAX_MANIFEST})", data.len()),
                ));
            }
            Ok(())
        };
        check_size(&data)?;
        let looks_like_index = media_type.is_empty()
            && serde_json::from_slice::<serde_json::Value>(&data)
                .map(|v| v.get("manifests").is_some())
                .unwrap_or(false);
        if is_index_type(&media_type) || looks_like_index {
            let chosen = pick_from_index(&origin, &data, platform)?;
            let (d, m, _) = client.fetch_manifest(&r, &chosen.digest)?;
            if d.len() as u64 != chosen.size {
                return Err(OciError::DigestMismatch {
                    what: format!("size of manifest {} of {origin}", chosen.digest),
                    expected: format!("{} bytes", chosen.size),
                    actual: format!("{} bytes", d.len()),
                });
            }
            data = d;
            media_type = if m.is_empty() { chosen.media_type } else { m };
        }
        if !media_type.is_empty() && !is_manifest_type(&media_type) {
            return Err(not_a_cache(
                &origin,
                format!("a document of media type {media_type:?}"),
            ));
        }
        let manifest: Manifest = parse_json(&format!("manifest of {origin}"), &data)?;
        let (config, inline) = read_config(&origin, &manifest, &mut |d| {
            client.fetch_blob_bytes(&r, d, MAX_CONFIG)
        })?;
        if inline {
            origin = format!("inline cache of {}", r.familiar());
        }
        Ok(ImportedCache {
            origin,
            layers: manifest.layers,
            config,
            source: Source::Registry(r),
        })
    }

    fn open_local(
        dir: &std::path::Path,
        platform: &Platform,
        tag: Option<&str>,
    ) -> Result<Self, OciError> {
        let origin = format!("local cache {}", dir.display());
        let layout = Layout::open(dir, &origin)?;
        let marker = layout.read_file("oci-layout", 4096).map_err(|e| match e {
            OciError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                not_a_cache(
                    &origin,
                    "a directory without an oci-layout file (not an OCI layout)",
                )
            }
            other => other,
        })?;
        let marker: serde_json::Value = parse_json(&format!("oci-layout of {origin}"), &marker)?;
        if !marker
            .get("imageLayoutVersion")
            .is_some_and(|v| v.is_string())
        {
            return Err(invalid(&origin, "oci-layout has no imageLayoutVersion"));
        }
        let index = layout
            .index()?
            .ok_or_else(|| not_a_cache(&origin, "an OCI layout without index.json"))?;
        let name_of = |d: &Descriptor| d.annotations.get(mt::ANNOTATION_REF_NAME).cloned();
        let names = || {
            index
                .manifests
                .iter()
                .map(|d| name_of(d).unwrap_or_else(|| "(unnamed)".into()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let want = tag.unwrap_or("latest");
        let entry = match index
            .manifests
            .iter()
            .find(|d| name_of(d).as_deref() == Some(want))
        {
            Some(d) => d.clone(),
            None if tag.is_none() && index.manifests.len() == 1 => index.manifests[0].clone(),
            None => {
                return Err(invalid(
                    &origin,
                    format!(
                        "index.json has no entry named {want:?} (entries: {})",
                        names()
                    ),
                ))
            }
        };
        digest_hex(&entry.digest)
            .map_err(|_| invalid(&origin, format!("index.json entry {:?}", entry.digest)))?;
        let mut desc = entry;
        if is_index_type(&desc.media_type) {
            let data = layout.read_blob(&desc, MAX_MANIFEST)?;
            desc = pick_from_index(&origin, &data, platform)?;
        }
        if !is_manifest_type(&desc.media_type) {
            return Err(not_a_cache(
                &origin,
                format!("an index.json entry of media type {:?}", desc.media_type),
            ));
        }
        let data = layout.read_blob(&desc, MAX_MANIFEST)?;
        let manifest: Manifest = parse_json(&format!("manifest of {origin}"), &data)?;
        let (config, _) =
            read_config(&origin, &manifest, &mut |d| layout.read_blob(d, MAX_CONFIG))?;
        Ok(ImportedCache {
            origin,
            layers: manifest.layers,
            config,
            source: Source::Local(layout),
        })
    }

    /// Fetch layer `index`'s blob into the content store, verified against its digest and
    /// size (a registry: streamed download; a local layout: `blobs/sha256/<hex>`, never
    /// through a symlink), committed only when it matches. A no-op when the store has it.
    pub fn fetch_layer(
        &self,
        client: &RegistryClient,
        store: &Store,
        index: usize,
        progress: &dyn TransferProgress,
    ) -> Result<(), OciError> {
        let desc = self.layers.get(index).ok_or_else(|| {
            invalid(
                &self.origin,
                format!("no layer {index} (the cache has {})", self.layers.len()),
            )
        })?;
        digest_hex(&desc.digest)?;
        if ContentStore::has_blob(store, &desc.digest) {
            return Ok(());
        }
        match &self.source {
            Source::Registry(r) => {
                client.fetch_blob_with_progress(r, desc, store, progress)?;
                crate::push::remember_source(store, &desc.digest, &r.name());
                Ok(())
            }
            Source::Local(layout) => {
                let f = layout.open_blob(desc)?;
                let meter = Meter::start(progress, &desc.digest, Action::Downloading, desc.size);
                let mut reader = MeteredReader::new(
                    std::io::BufReader::with_capacity(1 << 20, f).take(desc.size.saturating_add(1)),
                    &meter,
                );
                let res = store.ingest(&mut reader, &desc.digest, desc.size);
                meter.finish(res.is_ok());
                res
            }
        }
    }

    /// Fetch layer `index` and unpack it into `dest` in one pass: the blob is decompressed and
    /// applied as it arrives while its bytes go to the content store, so download and unpack
    /// overlap. The uncompressed stream must hash to `diff_id` (else
    /// [`OciError::DiffIdMismatch`]) and the blob to its digest and size (else the blob is not
    /// committed and the call fails); on any error `dest` holds a partial tree the caller
    /// removes. With `keep_tar` the uncompressed tar is kept in the store too, as
    /// [`crate::apply_layer_verified_keeping_tar`] does, and returned. A blob the store already
    /// has is applied from the store.
    #[allow(clippy::too_many_arguments)]
    pub fn fetch_and_apply(
        &self,
        client: &RegistryClient,
        store: &Store,
        index: usize,
        dest: &std::path::Path,
        diff_id: &str,
        keep_tar: bool,
        progress: &dyn TransferProgress,
    ) -> Result<Option<rbuild_cache::BlobInfo>, OciError> {
        let desc = self.layers.get(index).ok_or_else(|| {
            invalid(
                &self.origin,
                format!("no layer {index} (the cache has {})", self.layers.len()),
            )
        })?;
        let hex = digest_hex(&desc.digest)?;
        let apply = |reader: &mut dyn Read| -> Result<Option<rbuild_cache::BlobInfo>, OciError> {
            if keep_tar {
                crate::apply_layer_verified_keeping_tar(reader, dest, &desc.digest, diff_id, store)
                    .map(Some)
            } else {
                crate::apply_layer_verified(reader, dest, &desc.digest, diff_id).map(|()| None)
            }
        };
        if ContentStore::has_blob(store, &desc.digest) {
            let f = ContentStore::open_blob(store, &desc.digest)?;
            return apply(&mut std::io::BufReader::with_capacity(1 << 20, f));
        }
        let source: Box<dyn Read + Send> = match &self.source {
            Source::Registry(r) => client.open_blob_stream(r, desc)?,
            Source::Local(layout) => Box::new(
                std::io::BufReader::with_capacity(1 << 20, layout.open_blob(desc)?)
                    .take(desc.size.saturating_add(1)),
            ),
        };
        let store_err = |op: String| {
            move |e: rbuild_cache::CacheError| OciError::Store {
                op,
                reason: e.to_string(),
            }
        };
        let mut blob = store
            .blob_writer()
            .map_err(store_err(format!("ingest {}", desc.digest)))?;
        let meter = Meter::start(progress, &desc.digest, Action::Downloading, desc.size);
        let applied = {
            let mut tee = crate::layer::Tee {
                inner: MeteredReader::new(source, &meter),
                out: Some(&mut blob),
            };
            apply(&mut tee).and_then(|kept| {
                // What the tar reader left (the compression's trailer, padding) is part of
                // the blob too.
                std::io::copy(&mut tee, &mut std::io::sink())
                    .map_err(OciError::io("download blob", &desc.digest))?;
                Ok(kept)
            })
        };
        meter.finish(applied.is_ok());
        let kept = applied?;
        blob.commit(Some((&desc.digest, Some(desc.size))))
            .map_err(|e| match e {
                rbuild_cache::CacheError::DigestMismatch { expected, actual } => {
                    OciError::DigestMismatch {
                        what: format!("blob {} in {}", desc.digest, self.origin),
                        expected,
                        actual,
                    }
                }
                rbuild_cache::CacheError::SizeMismatch {
                    expected, actual, ..
                } => OciError::DigestMismatch {
                    what: format!("size of blob {} in {}", desc.digest, self.origin),
                    expected: format!("{expected} bytes"),
                    actual: format!("{actual} bytes"),
                },
                other => OciError::Store {
                    op: format!("commit blob {hex}"),
                    reason: other.to_string(),
                },
            })?;
        if let Source::Registry(r) = &self.source {
            crate::push::remember_source(store, &desc.digest, &r.name());
        }
        Ok(kept)
    }
}

// The solver shares imports between its worker threads.
const _: fn() = || {
    fn shared<T: Send + Sync + Clone>() {}
    shared::<ImportedCache>();
};
