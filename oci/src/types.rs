//! OCI data types shared by the registry client, the image store and the exporters:
//! platforms, descriptors, image manifests and indexes, media types, canonical JSON.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::OciError;

/// Media type strings (OCI and Docker).
pub mod media_types {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI uncompressed layer.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI gzip layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI zstd layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Docker schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker gzip layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Annotation naming a tag in an OCI layout's index.json.
    pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
}

/// An OS/architecture pair (with optional variant) as used in image indexes: the same type
/// as the build graph's (`rbuild_platform`).
pub use rbuild_platform::Platform;

/// A content descriptor (OCI image spec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Annotations (omitted when empty).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Platform (index entries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// A descriptor with no annotations and no platform.
    pub fn new(media_type: impl Into<String>, digest: impl Into<String>, size: u64) -> Self {
        Descriptor {
            media_type: media_type.into(),
            digest: digest.into(),
            size,
            annotations: BTreeMap::new(),
            platform: None,
        }
    }
}

/// An image manifest (OCI or Docker schema 2; same shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    #[serde(default = "two")]
    pub schema_version: u32,
    /// Manifest media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Config blob.
    pub config: Descriptor,
    /// Layer blobs, base first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Annotations (omitted when empty).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index / manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    #[serde(default = "two")]
    pub schema_version: u32,
    /// Index media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Manifests.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// Annotations (omitted when empty).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn two() -> u32 {
    2
}

/// Serialise to canonical JSON: object keys sorted bytewise, no insignificant whitespace.
/// Independent of serde_json's `preserve_order` feature.
pub fn canonical_json<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>, OciError> {
    let value = serde_json::to_value(v).map_err(|e| OciError::InvalidJson {
        what: what.to_string(),
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    write_canonical(&value, &mut out);
    Ok(out)
}

fn write_canonical(v: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String((*k).clone()).to_string().as_bytes());
                out.push(b':');
                if let Some(child) = map.get(*k) {
                    write_canonical(child, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

/// Parse JSON bytes into `T`, mapping errors to [`OciError::InvalidJson`].
pub fn parse_json<T: serde::de::DeserializeOwned>(what: &str, data: &[u8]) -> Result<T, OciError> {
    serde_json::from_slice(data).map_err(|e| OciError::InvalidJson {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_json_is_camel_case_and_canonical() {
        let mut d = Descriptor::new(media_types::OCI_LAYER_TAR, "sha256:ab", 3);
        assert_eq!(
            canonical_json("d", &d).unwrap(),
            br#"{"digest":"sha256:ab","mediaType":"application/vnd.oci.image.layer.v1.tar","size":3}"#
        );
        d.annotations.insert("z".into(), "1".into());
        d.annotations.insert("a".into(), "2".into());
        d.platform = Some(Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        });
        let s = String::from_utf8(canonical_json("d", &d).unwrap()).unwrap();
        assert_eq!(
            s,
            r#"{"annotations":{"a":"2","z":"1"},"digest":"sha256:ab","mediaType":"application/vnd.oci.image.layer.v1.tar","platform":{"architecture":"arm64","os":"linux","variant":"v8"},"size":3}"#
        );
        let back: Descriptor = parse_json("d", s.as_bytes()).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn platform_matching() {
        let p = |a: &str, v: Option<&str>| Platform {
            os: "linux".into(),
            architecture: a.into(),
            variant: v.map(str::to_string),
        };
        assert!(p("amd64", None).matches(&p("amd64", None)));
        assert!(!p("amd64", None).matches(&p("arm64", None)));
        assert!(p("arm64", None).matches(&p("arm64", Some("v8"))));
        assert!(p("arm64", Some("v8")).matches(&p("arm64", None)));
        assert!(!p("arm", Some("v7")).matches(&p("arm", Some("v6"))));
        assert_eq!(p("arm", Some("v7")).to_string(), "linux/arm/v7");
    }
}
