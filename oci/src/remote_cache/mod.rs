//! Remote build cache (`--cache-to` / `--cache-from`, issue #13): the format, its export to a
//! registry or a local OCI layout directory, and its import.
//!
//! A cache is an OCI image manifest whose config has media type [`CACHE_CONFIG_MEDIA_TYPE`]
//! (a [`CacheConfig`]: canonical JSON) and whose layers are the layer blobs, so every registry
//! stores it and `skopeo inspect --raw` reads it. The inline form is the same JSON in the
//! annotation [`INLINE_ANNOTATION`] of a pushed image's manifest (its `layers` = the image's).
//! See docs/cache.md.
//!
//! Everything read is hostile: manifests (≤ [`MAX_MANIFEST`]) and configs (≤ [`MAX_CONFIG`])
//! are digest- and size-verified before they are parsed, the config is validated against the
//! manifest ([`validate`]), layer blobs enter the content store only through checked commits,
//! and a local layout is walked through directory fds that never follow a symlink.

mod export;
mod layout;
mod open;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::compress::Compression;
use crate::digest::digest_hex;
use crate::reference::Reference;
use crate::types::{canonical_json, Descriptor};
use crate::OciError;

pub use export::export_cache;
pub use open::ImportedCache;

/// Media type of a cache's config blob.
pub const CACHE_CONFIG_MEDIA_TYPE: &str = "application/vnd.rbuild.cache.config.v1+json";
/// Manifest annotation holding an inline cache's config JSON.
pub const INLINE_ANNOTATION: &str = "dev.rbuild.cache.v1";
/// The format version this build reads and writes.
pub const CACHE_VERSION: u32 = 1;
/// Largest manifest (or local `index.json`) read.
pub const MAX_MANIFEST: u64 = 4 << 20;
/// Largest cache config (and inline cache's image config) read.
pub const MAX_CONFIG: u64 = 64 << 20;
/// BuildKit's cache config media type (named in the refusal of a BuildKit cache).
pub const BUILDKIT_CACHE_CONFIG: &str = "application/vnd.buildkit.cacheconfig.v0";

/// The cache config blob (canonical JSON, keys sorted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheConfig {
    /// Format version ([`CACHE_VERSION`]).
    pub version: u32,
    /// One per manifest layer, same order.
    pub layers: Vec<CacheLayerInfo>,
    /// Cache records: a key and the layers of its result.
    pub records: Vec<CacheRecord>,
    /// `RUN --mount=type=cache` directories carried as layers.
    #[serde(default)]
    pub mounts: Vec<CacheMount>,
    /// Opaque per-step JSON (explain records).
    #[serde(default)]
    pub steps: BTreeMap<String, serde_json::Value>,
}

/// A layer's uncompressed digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheLayerInfo {
    /// `sha256:…` of the uncompressed tar.
    pub diff_id: String,
}

/// One cached step result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// The solver's cache key (host independent), `sha256:…`.
    pub key: String,
    /// The result's layers, bottom first.
    pub chain: Vec<ChainLink>,
    /// Which build made it (for `--explain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    /// When (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<i64>,
}

/// One layer of a record's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLink {
    /// Index into [`CacheConfig::layers`] (and the manifest's layers).
    pub layer: usize,
    /// When rbuild made the layer (Unix seconds); `None` for base-image layers.
    pub created: Option<i64>,
}

/// A cache mount directory carried as a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheMount {
    /// The `cachemounts-v1` directory name (`<12 hex>-<safe id>`).
    pub name: String,
    /// Index into [`CacheConfig::layers`].
    pub layer: usize,
}

impl CacheConfig {
    /// The canonical JSON of the config (the config blob, and the inline annotation's value).
    pub fn to_canonical_json(&self) -> Result<Vec<u8>, OciError> {
        canonical_json("cache config", self)
    }
}

/// Where a cache lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLocation {
    /// A tag in a registry (`host/repo:tag`, tag `latest` when none).
    Registry(Reference),
    /// An OCI image layout directory.
    Local(PathBuf),
}

impl CacheLocation {
    /// How messages name the cache: "registry cache REF" / "local cache DIR".
    pub fn origin(&self) -> String {
        match self {
            CacheLocation::Registry(r) => format!("registry cache {}", with_tag(r).familiar()),
            CacheLocation::Local(p) => format!("local cache {}", p.display()),
        }
    }
}

/// The reference with tag `latest` when it has neither tag nor digest.
fn with_tag(r: &Reference) -> Reference {
    match (&r.tag, &r.digest) {
        (None, None) => r.with_tag("latest"),
        _ => r.clone(),
    }
}

/// A layer to export: a blob in the content store and its diff id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportLayer {
    /// The blob (an uncompressed tar written by rbuild, or a compressed blob as pulled).
    pub blob: Descriptor,
    /// Its uncompressed digest.
    pub diff_id: String,
}

/// What to export: the layers, and the config without `layers` (filled from these).
#[derive(Debug, Clone, PartialEq)]
pub struct CacheExport {
    /// Manifest layers, in the order the records' indexes use.
    pub layers: Vec<ExportLayer>,
    /// The config; its `layers` is replaced.
    pub config: CacheConfig,
}

/// How to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheExportOpts {
    /// Layer compression.
    pub compression: Compression,
    /// Compression level (`None`: the algorithm's default).
    pub level: Option<i32>,
    /// Re-encode layers that are already compressed otherwise.
    pub force: bool,
    /// OCI layer media types (true) or Docker ones (false).
    pub oci_media_types: bool,
    /// Local layouts: the `org.opencontainers.image.ref.name` of the manifest.
    pub tag: String,
}

impl Default for CacheExportOpts {
    fn default() -> Self {
        CacheExportOpts {
            compression: Compression::Gzip,
            level: None,
            force: false,
            oci_media_types: true,
            tag: "latest".into(),
        }
    }
}

/// Whether `name` has the shape of a `cachemounts-v1` directory name (`<12 hex>-<id part>`,
/// the id part of `[A-Za-z0-9_-]`, at most 40): never a path, never `.`/`..`.
pub fn is_mount_name(name: &str) -> bool {
    let Some((hex, rest)) = name.split_at_checked(12) else {
        return false;
    };
    let Some(id) = rest.strip_prefix('-') else {
        return false;
    };
    hex.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && id.len() <= 40
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Check a cache config against its manifest's layers: version 1, one diff id per layer,
/// every digest well formed, every layer a tar media type rbuild can decompress, every index
/// in range, every record key a digest, every mount name a safe directory name.
pub fn validate(origin: &str, config: &CacheConfig, layers: &[Descriptor]) -> Result<(), OciError> {
    let bad = |reason: String| OciError::InvalidCache {
        origin: origin.to_string(),
        reason,
    };
    if config.version != CACHE_VERSION {
        return Err(bad(format!(
            "format version {} (this rbuild reads version {CACHE_VERSION})",
            config.version
        )));
    }
    if config.layers.len() != layers.len() {
        return Err(bad(format!(
            "the manifest has {} layers but the config describes {}",
            layers.len(),
            config.layers.len()
        )));
    }
    for (i, (l, info)) in layers.iter().zip(&config.layers).enumerate() {
        digest_hex(&l.digest).map_err(|_| bad(format!("layer {i}: digest {:?}", l.digest)))?;
        digest_hex(&info.diff_id)
            .map_err(|_| bad(format!("layer {i}: diff_id {:?}", info.diff_id)))?;
        if Compression::of_media_type(&l.media_type).is_none() {
            return Err(bad(format!(
                "layer {i} has media type {:?}, not a layer tar",
                l.media_type
            )));
        }
    }
    let n = layers.len();
    for r in &config.records {
        digest_hex(&r.key).map_err(|_| bad(format!("record key {:?}", r.key)))?;
        if let Some(link) = r.chain.iter().find(|c| c.layer >= n) {
            return Err(bad(format!(
                "record {} refers to layer {} of {n}",
                r.key, link.layer
            )));
        }
    }
    for m in &config.mounts {
        if !is_mount_name(&m.name) {
            return Err(bad(format!("cache mount name {:?}", m.name)));
        }
        if m.layer >= n {
            return Err(bad(format!(
                "cache mount {} refers to layer {} of {n}",
                m.name, m.layer
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_names_are_directory_names_only() {
        assert!(is_mount_name("0123456789ab-npm"));
        assert!(is_mount_name("0123456789ab-_root__cache_go-build"));
        assert!(is_mount_name("0123456789ab-"));
        for bad in [
            "",
            "..",
            "0123456789ab",
            "0123456789ab-../x",
            "0123456789ab-a/b",
            "0123456789AB-x",
            "0123456789ab-ä",
            "0123456789ab-a.b",
            "0123456789abx",
            &format!("0123456789ab-{}", "a".repeat(41)),
        ] {
            assert!(!is_mount_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn config_json_is_canonical_and_round_trips() {
        let c = CacheConfig {
            version: 1,
            layers: vec![CacheLayerInfo {
                diff_id: format!("sha256:{}", "a".repeat(64)),
            }],
            records: vec![CacheRecord {
                key: format!("sha256:{}", "b".repeat(64)),
                chain: vec![ChainLink {
                    layer: 0,
                    created: None,
                }],
                build: None,
                time: Some(5),
            }],
            mounts: vec![],
            steps: BTreeMap::new(),
        };
        let j = String::from_utf8(c.to_canonical_json().unwrap()).unwrap();
        assert!(j.starts_with(r#"{"layers":[{"diff_id":"sha256:"#), "{j}");
        assert!(j.contains(r#""chain":[{"created":null,"layer":0}]"#), "{j}");
        let back: CacheConfig = serde_json::from_str(&j).unwrap();
        assert_eq!(back, c);
        let l = vec![Descriptor::new(
            crate::types::media_types::OCI_LAYER_GZIP,
            format!("sha256:{}", "c".repeat(64)),
            1,
        )];
        validate("t", &c, &l).unwrap();
        let mut bad = c.clone();
        bad.records[0].chain[0].layer = 1;
        assert!(validate("t", &bad, &l).is_err());
        let mut bad = c.clone();
        bad.version = 2;
        assert!(validate("t", &bad, &l).is_err());
        assert!(validate("t", &c, &[]).is_err());
    }
}
