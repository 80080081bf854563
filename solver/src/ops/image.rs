//! Image sources: resolving and pulling base images.
//!
//! Resolution (tag → manifest digest + config) is remembered in the store (`meta` namespace
//! `resolve`), so a rebuild needs no registry round-trip unless `--pull` asks for one. Pulled
//! layers are fetched into the content store (digest and size verified by the registry client)
//! and unpacked into one snapshot per layer, the uncompressed stream hashed on the way and
//! checked against the config's diff_id (a mismatch removes the snapshot and records nothing);
//! a layer already unpacked (same, verified, diff id) is reused.

use std::sync::Mutex;

use rbuild_graph::Platform;
use rbuild_oci::{Reference, RegistryClient};

use super::{now_secs, Cx, Input, Keyed, OpKind, Plan};
use crate::cachekey::image_key;
use crate::explain::StepRecord;
use crate::{Chain, Layer, ResolvedImage, SolveError, Solver};

/// `Source(Image)`: a base image, keyed on its manifest digest and platform.
pub struct ImageOp;

impl OpKind for ImageOp {
    fn plan<'a>(&'a self, cx: Cx<'a>, _inputs: &[Input]) -> Result<Plan<'a>, SolveError> {
        let rbuild_graph::Op::Source(rbuild_graph::SourceOp::Image {
            reference,
            digest,
            platform,
        }) = &cx.node.op
        else {
            return Err(cx.fail("not an image source"));
        };
        let resolved = cx
            .solver
            .resolved_for(reference, digest.as_deref(), platform)
            .map_err(|e| cx.step_error(e))?;
        let key = image_key(&resolved.manifest_digest, platform);
        let at = format!("{}@{}", resolved.reference, resolved.manifest_digest);
        let record = StepRecord {
            key: key.clone(),
            op: at.clone(),
            inputs: Vec::new(),
            build: cx.solver.cfg.cache.build_id.clone(),
            time: now_secs(),
        };
        Ok(Plan::Keyed(Keyed {
            key,
            ignore_cache: false,
            record: Some(record),
            label: Some(format!("base image {at}")),
            announced: None,
            work: Box::new(move |_: &[Input]| {
                let transfers = crate::VertexTransfers {
                    vertex: cx.vertex,
                    progress: cx.progress,
                };
                cx.solver.pull_layers(&resolved, &transfers)
            }),
        }))
    }
}

/// A pulled layer and whether its snapshot is new (still to be committed).
type Pulled = (Layer, bool);

const RESOLVE_NS: &str = "resolve";
pub(crate) const LAYER_NS: &str = "layer-snapshot";
/// Blob digest → the diff_id its uncompressed stream was verified to have.
pub(crate) const VERIFIED_NS: &str = "layer-verified";

pub(crate) fn oci_platform(p: &Platform) -> rbuild_oci::Platform {
    rbuild_oci::Platform {
        os: p.os.clone(),
        architecture: p.architecture.clone(),
        variant: p.variant.clone(),
    }
}

impl Solver {
    /// Resolve an image reference (as written in a Dockerfile) for `platform`.
    pub fn resolve_image(
        &self,
        text: &str,
        platform: &Platform,
    ) -> Result<ResolvedImage, SolveError> {
        let reference = Reference::parse(text)?;
        let key = format!("{}|{}", reference, platform.to_text());
        if let Ok(map) = self.resolved.lock() {
            if let Some(r) = map.get(&key) {
                return Ok(r.clone());
            }
        }
        // A digest-pinned reference never changes; a tag is re-resolved only with --pull.
        if !self.cfg.pull || reference.digest.is_some() {
            if let Some(json) = self.cfg.store.meta_get(RESOLVE_NS, &key)? {
                if let Ok(r) = serde_json::from_str::<ResolvedImage>(&json) {
                    self.remember(&key, &r);
                    return Ok(r);
                }
            }
        }
        let resolved = pull_manifest(&self.cfg.registry, &reference, platform)?;
        let json = serde_json::to_string(&resolved).map_err(|e| SolveError::BadRecord {
            key: key.clone(),
            message: e.to_string(),
        })?;
        self.cfg.store.meta_put(RESOLVE_NS, &key, &json)?;
        self.remember(&key, &resolved);
        Ok(resolved)
    }

    fn remember(&self, key: &str, r: &ResolvedImage) {
        if let Ok(mut map) = self.resolved.lock() {
            map.insert(key.to_string(), r.clone());
            map.insert(
                format!(
                    "{}|{}",
                    r.manifest_digest,
                    key.rsplit('|').next().unwrap_or("")
                ),
                r.clone(),
            );
        }
    }

    /// Find the resolution for an image source node: by reference, or by digest.
    pub(crate) fn resolved_for(
        &self,
        reference: &str,
        digest: Option<&str>,
        platform: &Platform,
    ) -> Result<ResolvedImage, SolveError> {
        if let Some(d) = digest {
            let key = format!("{}|{}", d, platform.to_text());
            if let Ok(map) = self.resolved.lock() {
                if let Some(r) = map.get(&key) {
                    return Ok(r.clone());
                }
            }
            let r = self.resolve_image(reference, platform)?;
            if r.manifest_digest == d {
                return Ok(r);
            }
            // The tag moved since lowering; pin to the digest the graph names.
            let pinned = match reference.split_once('@') {
                Some((name, _)) => format!("{name}@{d}"),
                None => format!("{reference}@{d}"),
            };
            return self.resolve_image(&pinned, platform);
        }
        self.resolve_image(reference, platform)
    }

    /// Pull every layer of `image` and unpack it; returns the chain (bottom first).
    pub(crate) fn pull_layers(
        &self,
        image: &ResolvedImage,
        transfers: &dyn rbuild_oci::progress::TransferProgress,
    ) -> Result<Chain, SolveError> {
        let config = rbuild_graph::ImageConfig::from_json(&image.config)?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != image.layers.len() {
            return Err(SolveError::Step {
                step: format!("FROM {}", image.reference),
                message: format!(
                    "image has {} layers but its config lists {} diff ids",
                    image.layers.len(),
                    diff_ids.len()
                ),
                lines: None,
            });
        }
        let reference = Reference::parse(&image.reference)?;
        let results: Mutex<Vec<Option<Result<Pulled, SolveError>>>> =
            Mutex::new((0..image.layers.len()).map(|_| None).collect());
        // Layers download and unpack in parallel (bounded by the parallelism setting).
        let width = self.cfg.max_parallelism.clamp(1, 4);
        let next = Mutex::new(0usize);
        std::thread::scope(|s| {
            for _ in 0..width.min(image.layers.len()) {
                s.spawn(|| loop {
                    let i = match next.lock() {
                        Ok(mut n) => {
                            let i = *n;
                            *n += 1;
                            i
                        }
                        Err(_) => return,
                    };
                    if i >= image.layers.len() {
                        return;
                    }
                    let r = self.pull_one(&reference, &image.layers[i], &diff_ids[i], transfers);
                    if let Ok(mut v) = results.lock() {
                        v[i] = Some(r);
                    }
                });
            }
        });
        let results = results.into_inner().map_err(|_| SolveError::Cancelled)?;
        let store = &self.cfg.store;
        let mut chain = Vec::with_capacity(results.len());
        let mut fresh = Vec::new();
        let mut failed = None;
        for r in results {
            match r.ok_or(SolveError::Cancelled).and_then(|r| r) {
                Ok((layer, new)) => {
                    if new {
                        fresh.push((layer.diff_id.clone(), layer.snapshot.clone()));
                    }
                    chain.push(layer);
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        // Unpacked snapshots become durable with one syncfs, then get their markers: a crash
        // never leaves a committed snapshot with missing data.
        let committed = match failed {
            Some(e) => Err(e),
            None if fresh.is_empty() => Ok(()),
            None => store
                .sync_filesystem()
                .map_err(SolveError::from)
                .and_then(|()| {
                    fresh.iter().try_for_each(|(diff_id, id)| {
                        store.commit_snapshot(id)?;
                        store.meta_put(LAYER_NS, diff_id, id)?;
                        Ok(())
                    })
                }),
        };
        if let Err(e) = committed {
            for (_, id) in &fresh {
                if !store.snapshot_exists(id) {
                    let _ = store.remove_snapshot(id);
                }
            }
            return Err(e);
        }
        Ok(chain)
    }

    /// Fetch and unpack one layer; `true` when its snapshot is new and still to be committed.
    fn pull_one(
        &self,
        reference: &Reference,
        desc: &rbuild_oci::Descriptor,
        diff_id: &str,
        transfers: &dyn rbuild_oci::progress::TransferProgress,
    ) -> Result<Pulled, SolveError> {
        let store = &self.cfg.store;
        let layer = |snapshot: String| Layer::of_blob(snapshot, diff_id, desc, None);
        // Reused only when this very blob was seen to unpack to this diff_id: a blob that
        // failed verification once stays in the content store, but never gets another
        // image's snapshot.
        if let Some(id) = store.meta_get(LAYER_NS, diff_id)? {
            let verified = store.meta_get(VERIFIED_NS, &desc.digest)?;
            if verified.as_deref() == Some(diff_id)
                && store.snapshot_exists(&id)
                && store.has_blob(&desc.digest)
            {
                return Ok((layer(id), false));
            }
        }
        self.cfg
            .registry
            .fetch_blob_with_progress(reference, desc, store, transfers)
            .map_err(|source| SolveError::Pull {
                reference: reference.to_string(),
                source: Box::new(source),
            })?;
        let snap = store.new_snapshot()?;
        let file = store.open_blob(&desc.digest)?;
        // The uncompressed stream is checked against the config's diff_id while it is applied:
        // a layer is shared by diff_id with every other image, so a false claim must never be
        // recorded (docker refuses the same way).
        if let Err(e) = rbuild_oci::apply_layer_verified(
            std::io::BufReader::new(file),
            &snap.fs,
            &desc.digest,
            diff_id,
        ) {
            let _ = store.remove_snapshot(&snap.id);
            return Err(e.into());
        }
        store.meta_put(VERIFIED_NS, &desc.digest, diff_id)?;
        Ok((layer(snap.id), true))
    }
}

fn pull_manifest(
    registry: &RegistryClient,
    reference: &Reference,
    platform: &Platform,
) -> Result<ResolvedImage, SolveError> {
    let m = registry
        .resolve(reference, &oci_platform(platform))
        .map_err(|source| SolveError::Pull {
            reference: reference.familiar(),
            source: Box::new(source),
        })?;
    Ok(ResolvedImage {
        reference: m.reference.to_string(),
        manifest_digest: m.manifest_digest,
        config: m.config,
        layers: m.layers,
    })
}
