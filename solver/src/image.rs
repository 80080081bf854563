//! Layers and images: committing a snapshot as a layer blob, and assembling the final image
//! (config with diff ids and timestamps, OCI manifest) in the local image store.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use rbuild_graph::ImageConfig;
use rbuild_oci::{Descriptor, ImageStore, LayerOpts};

use crate::{Chain, Layer, SolveError, Solver};

/// Media type of the uncompressed layers rbuild writes.
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// The OCI annotation for the image's creation time.
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";

/// The image a build produced.
#[derive(Debug, Clone)]
pub struct ImageResult {
    pub manifest: Descriptor,
    /// Digest of the config blob: the image id.
    pub config_digest: String,
    pub config: Vec<u8>,
}

impl Solver {
    /// Write a snapshot's upper dir as a deterministic tar into the content store and commit
    /// the snapshot.
    pub(crate) fn commit_layer(&self, snap: &rbuild_cache::Snapshot) -> Result<Layer, SolveError> {
        let store = &self.cfg.store;
        let mut w = store.blob_writer()?;
        let opts = LayerOpts {
            source_date_epoch: self.cfg.source_date_epoch,
        };
        rbuild_oci::write_layer(&snap.fs, &mut w, &opts)?;
        let info = w.commit(None)?;
        store.commit_snapshot(&snap.id)?;
        let created = self.cfg.source_date_epoch.unwrap_or_else(unix_now);
        Ok(Layer {
            snapshot: snap.id.clone(),
            diff_id: info.digest.clone(),
            blob: info.digest,
            size: info.size,
            media_type: LAYER_TAR.to_string(),
            created: Some(created),
        })
    }
}

/// Build the final image from a chain and the frontend's config, store it in the local image
/// store and return its descriptors. New history entries and `created` get
/// `source_date_epoch` when set, else the time the newest layer of the chain was made (so a
/// fully cached rebuild gives the same image id), else the current time.
pub fn finalize_image(
    store: &rbuild_cache::Store,
    chain: &Chain,
    config: &ImageConfig,
    source_date_epoch: Option<i64>,
    annotations: &BTreeMap<String, String>,
) -> Result<ImageResult, SolveError> {
    let now = source_date_epoch
        .or_else(|| chain.iter().filter_map(|l| l.created).max())
        .unwrap_or_else(unix_now);
    let stamp = rfc3339(now);
    let mut cfg = config.clone();
    cfg.rootfs.kind = "layers".to_string();
    cfg.rootfs.diff_ids = chain.iter().map(|l| l.diff_id.clone()).collect();
    cfg.created = Some(stamp.clone());
    for h in cfg.history.iter_mut() {
        if h.created.is_none() {
            h.created = Some(stamp.clone());
        }
    }
    let bytes = cfg.to_canonical_json()?;
    let images = ImageStore::open(store)?;
    let layers: Vec<Descriptor> = chain
        .iter()
        .map(|l| Descriptor {
            media_type: l.media_type.clone(),
            digest: l.blob.clone(),
            size: l.size,
            annotations: BTreeMap::new(),
            platform: None,
        })
        .collect();
    // org.opencontainers.image.created = the config's created (so SOURCE_DATE_EPOCH and
    // --reproducible keep the manifest digest stable); an explicit --annotation wins
    let mut annotations = annotations.clone();
    annotations
        .entry(ANNOTATION_CREATED.to_string())
        .or_insert(stamp);
    let manifest = images.put_image(&bytes, &layers, &annotations)?;
    Ok(ImageResult {
        manifest,
        config_digest: rbuild_graph::sha256_digest(&bytes),
        config: bytes,
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a unix time (UTC).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
