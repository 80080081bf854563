//! `--metadata-file`: the build result as JSON, with buildx's key names so tools that read
//! buildx metadata (and docker/build-push-action's `metadata` output) work unchanged:
//!
//! ```json
//! {
//!   "containerimage.config.digest": "sha256:…",     // the image id
//!   "containerimage.descriptor": {"mediaType": "…", "digest": "sha256:…", "size": 1234},
//!   "containerimage.digest": "sha256:…",            // the manifest digest (pushed one when pushing)
//!   "image.name": "docker.io/library/app:v1,docker.io/library/app:latest"
//! }
//! ```
//!
//! `image.name` is present only when the build was tagged. rbuild adds
//! `"rbuild.source-date-epoch": {"value": 1700000000, "source": "git-commit"}`: the epoch every
//! timestamp was pinned to (`value` null when none) and where it came from (`crate::epoch`).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use rbuild_oci::Reference;
use rbuild_solver::ImageResult;
use serde_json::{json, Value};

/// The metadata object for a built image.
pub fn metadata(image: &ImageResult, tags: &[Reference], multi_platform: bool) -> Value {
    let mut m = json!({
        "containerimage.config.digest": image.config_digest,
        "containerimage.descriptor": image.manifest,
        "containerimage.digest": image.manifest.digest,
    });
    if multi_platform {
        // A multi-platform build has no single config (buildx leaves the key out too; a
        // single image whose push is an index only for its attestations keeps it).
        if let Some(o) = m.as_object_mut() {
            o.remove("containerimage.config.digest");
        }
    }
    if !tags.is_empty() {
        let names: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        m["image.name"] = json!(names.join(","));
    }
    m
}

/// Write the metadata file (pretty JSON, like buildx).
pub fn write(
    path: &Path,
    image: &ImageResult,
    tags: &[Reference],
    epoch: &crate::epoch::Epoch,
    multi_platform: bool,
) -> Result<()> {
    let mut m = metadata(image, tags, multi_platform);
    m["rbuild.source-date-epoch"] = json!({"value": epoch.value, "source": epoch.source.as_str()});
    let text = serde_json::to_string_pretty(&m)?;
    fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_buildx_names() {
        let image = ImageResult {
            manifest: rbuild_oci::Descriptor {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest: "sha256:aa".into(),
                size: 7,
                annotations: Default::default(),
                platform: None,
            },
            config_digest: "sha256:bb".into(),
            config: Vec::new(),
        };
        let tags = [
            Reference::parse("app:v1").unwrap(),
            Reference::parse("x/y").unwrap(),
        ];
        let m = metadata(&image, &tags, false);
        assert_eq!(m["containerimage.digest"], "sha256:aa");
        assert_eq!(m["containerimage.config.digest"], "sha256:bb");
        assert_eq!(
            m["containerimage.descriptor"]["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(m["containerimage.descriptor"]["size"], 7);
        assert_eq!(
            m["image.name"],
            "docker.io/library/app:v1,docker.io/x/y:latest"
        );
        assert!(metadata(&image, &[], false).get("image.name").is_none());
        // several platforms: no single config
        assert!(metadata(&image, &tags, true)
            .get("containerimage.config.digest")
            .is_none());
    }
}
