//! Push and pull of whole images between the content store and a registry.
//!
//! Push: for every blob (layers on parallel threads, then the config) `HEAD` first and skip
//! what the registry has; else try a cross-repository mount when the store remembers a
//! repository on the same registry that has the blob (metadata namespace `blob-source`);
//! else upload — monolithic (`POST` + `PUT ?digest=`) for blobs up to the chunk size, chunked
//! (`POST`, `PATCH` with `Content-Range` per chunk, final `PUT ?digest=`) above it. Each blob
//! upload is retried with backoff on 5xx and connection errors. The manifest is `PUT` last.
//!
//! Pull: resolve for the platform, fetch config and layers (digest- and size-verified while
//! streaming; nothing unverified is stored), store the manifest bytes as they were served.

use std::sync::Mutex;

use crate::digest::digest_hex;
use crate::image_store::read_manifest;
use crate::reference::Reference;
use crate::registry::{backoff, retryable, Body, Endpoint, RegistryClient};
use crate::store::ContentStore;
use crate::types::{Descriptor, Platform};
use crate::OciError;

/// Push options.
#[derive(Clone)]
pub struct PushOpts {
    /// Blobs larger than this go up in `PATCH` chunks of this size; smaller ones in one `PUT`.
    pub chunk_size: u64,
    /// Concurrent blob uploads.
    pub jobs: usize,
    /// Receives the bytes sent per blob.
    pub progress: std::sync::Arc<dyn crate::progress::TransferProgress>,
}

impl std::fmt::Debug for PushOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushOpts")
            .field("chunk_size", &self.chunk_size)
            .field("jobs", &self.jobs)
            .finish_non_exhaustive()
    }
}

impl Default for PushOpts {
    fn default() -> Self {
        PushOpts {
            chunk_size: 64 << 20,
            jobs: 4,
            progress: std::sync::Arc::new(crate::progress::NoTransferProgress),
        }
    }
}

/// What happened to each blob during a push (for progress and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// Digest of the manifest pushed.
    pub manifest_digest: String,
    /// Blobs the registry already had (HEAD answered 200).
    pub existing: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
    /// Blobs uploaded.
    pub uploaded: usize,
}

enum Outcome {
    Existing,
    Mounted,
    Uploaded,
}

fn location(ep: &Endpoint, resp: &ureq::http::Response<ureq::Body>) -> Option<String> {
    let loc = resp.headers().get("location")?.to_str().ok()?.to_string();
    if loc.starts_with("http://") || loc.starts_with("https://") {
        Some(loc)
    } else if loc.starts_with('/') {
        Some(format!("{}{}", ep.base, loc))
    } else {
        Some(format!("{}/{}", ep.base, loc))
    }
}

fn with_query(url: &str, q: &str) -> String {
    if url.contains('?') {
        format!("{url}&{q}")
    } else {
        format!("{url}?{q}")
    }
}

impl RegistryClient {
    fn push_blob_once(
        &self,
        ep: &Endpoint,
        target: &Reference,
        store: &dyn ContentStore,
        desc: &Descriptor,
        opts: &PushOpts,
        progress: &dyn crate::progress::TransferProgress,
    ) -> Result<Outcome, OciError> {
        let repo = &target.repository;
        let mount_from = store
            .meta_get("blob-source", &desc.digest)
            .and_then(|v| {
                v.split_whitespace()
                    .find_map(|s| s.strip_prefix(&format!("{}/", target.registry)))
                    .map(str::to_string)
            })
            .filter(|src| src != repo);
        let mut scope = format!("repository:{repo}:pull,push");
        if let Some(src) = &mount_from {
            scope.push_str(&format!(" repository:{src}:pull"));
        }
        let blob_url = format!("{}/v2/{repo}/blobs/{}", ep.base, desc.digest);
        let head = self.send(ep, "HEAD", &blob_url, &scope, &[], Body::Empty, true)?;
        if head.status().is_success() {
            return Ok(Outcome::Existing);
        }
        if head.status().as_u16() != 404 {
            return Err(Self::http_err(
                &format!("check blob {}", desc.digest),
                target,
                ep,
                head,
            ));
        }
        let mut start = format!("{}/v2/{repo}/blobs/uploads/", ep.base);
        if let Some(src) = &mount_from {
            start = format!("{start}?mount={}&from={src}", desc.digest);
        }
        let resp = self.send(ep, "POST", &start, &scope, &[], Body::Empty, false)?;
        let status = resp.status().as_u16();
        if status == 201 && mount_from.is_some() {
            return Ok(Outcome::Mounted);
        }
        if status != 202 {
            return Err(Self::http_err(
                &format!("start upload of {}", desc.digest),
                target,
                ep,
                resp,
            ));
        }
        let mut loc = location(ep, &resp).ok_or_else(|| OciError::Http {
            op: format!("start upload of {}", desc.digest),
            reference: target.familiar(),
            registry: ep.host.clone(),
            status,
            detail: ": no Location header".into(),
        })?;
        let path = store.blob_path(&desc.digest)?;
        let octet = ("Content-Type", "application/octet-stream".to_string());
        let mut offset = 0u64;
        let meter = crate::progress::Meter::start(
            progress,
            &desc.digest,
            crate::progress::Action::Uploading,
            desc.size,
        );
        if desc.size > opts.chunk_size {
            while offset < desc.size {
                let len = opts.chunk_size.min(desc.size - offset);
                let range = ("Content-Range", format!("{}-{}", offset, offset + len - 1));
                let body = Body::File {
                    path: &path,
                    offset,
                    len,
                    meter: Some(&meter),
                };
                let resp = self.send(
                    ep,
                    "PATCH",
                    &loc,
                    &scope,
                    &[octet.clone(), range],
                    body,
                    false,
                )?;
                if resp.status().as_u16() != 202 {
                    return Err(Self::http_err(
                        &format!("upload chunk of {}", desc.digest),
                        target,
                        ep,
                        resp,
                    ));
                }
                if let Some(l) = location(ep, &resp) {
                    loc = l;
                }
                offset += len;
            }
        }
        let put_url = with_query(&loc, &format!("digest={}", desc.digest));
        let body = if offset < desc.size {
            Body::File {
                path: &path,
                offset,
                len: desc.size - offset,
                meter: Some(&meter),
            }
        } else {
            Body::Empty
        };
        let headers = if offset < desc.size {
            vec![octet]
        } else {
            vec![("Content-Length", "0".to_string())]
        };
        let resp = self.send(ep, "PUT", &put_url, &scope, &headers, body, false);
        meter.finish(matches!(&resp, Ok(r) if r.status().as_u16() == 201));
        let resp = resp?;
        if resp.status().as_u16() != 201 {
            return Err(Self::http_err(
                &format!("finish upload of {}", desc.digest),
                target,
                ep,
                resp,
            ));
        }
        Ok(Outcome::Uploaded)
    }

    fn push_blob(
        &self,
        ep: &Endpoint,
        target: &Reference,
        store: &dyn ContentStore,
        desc: &Descriptor,
        opts: &PushOpts,
        progress: &dyn crate::progress::TransferProgress,
    ) -> Result<Outcome, OciError> {
        digest_hex(&desc.digest)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.push_blob_once(ep, target, store, desc, opts, progress) {
                Err(e) if retryable(&e) && attempt < 3 => backoff(attempt),
                other => return other,
            }
        }
    }

    /// Push the image `manifest` (in `store`, with all its blobs) as `target` (tag or
    /// digest). Returns what was done; the manifest digest is the one pushed.
    pub fn push_image(
        &self,
        store: &(dyn ContentStore + Sync),
        manifest: &Descriptor,
        target: &Reference,
        opts: &PushOpts,
    ) -> Result<PushReport, OciError> {
        self.push_image_reporting(store, manifest, target, opts, opts.progress.as_ref())
    }

    /// [`RegistryClient::push_image`] reporting the bytes sent to `progress` (instead of
    /// `opts.progress`).
    pub(crate) fn push_image_reporting(
        &self,
        store: &(dyn ContentStore + Sync),
        manifest: &Descriptor,
        target: &Reference,
        opts: &PushOpts,
        progress: &dyn crate::progress::TransferProgress,
    ) -> Result<PushReport, OciError> {
        let ep = self.registry_endpoint(target);
        let m = read_manifest(store, manifest)?;
        let mut blobs: Vec<Descriptor> = Vec::new();
        for d in m.layers.iter() {
            if !blobs.iter().any(|b| b.digest == d.digest) {
                blobs.push(d.clone());
            }
        }
        let report = Mutex::new(PushReport::default());
        let first_err: Mutex<Option<OciError>> = Mutex::new(None);
        let next = Mutex::new(blobs.iter());
        let record = |r: Result<Outcome, OciError>| match r {
            Ok(o) => {
                if let Ok(mut rep) = report.lock() {
                    match o {
                        Outcome::Existing => rep.existing += 1,
                        Outcome::Mounted => rep.mounted += 1,
                        Outcome::Uploaded => rep.uploaded += 1,
                    }
                }
            }
            Err(e) => {
                if let Ok(mut f) = first_err.lock() {
                    f.get_or_insert(e);
                }
            }
        };
        std::thread::scope(|s| {
            for _ in 0..opts.jobs.max(1) {
                s.spawn(|| loop {
                    if first_err.lock().map(|f| f.is_some()).unwrap_or(true) {
                        return;
                    }
                    let job = next.lock().ok().and_then(|mut it| it.next());
                    let Some(d) = job else { return };
                    record(self.push_blob(&ep, target, store, d, opts, progress));
                });
            }
        });
        if let Some(e) = first_err.lock().ok().and_then(|mut f| f.take()) {
            return Err(e);
        }
        record(self.push_blob(&ep, target, store, &m.config, opts, progress));
        if let Some(e) = first_err.lock().ok().and_then(|mut f| f.take()) {
            return Err(e);
        }
        self.put_manifest(store, manifest, target)?;
        let src = format!("{}/{}", target.registry, target.repository);
        for d in blobs.iter().chain(std::iter::once(&m.config)) {
            remember_source(store, &d.digest, &src);
        }
        let mut rep = report.into_inner().unwrap_or_default();
        rep.manifest_digest = manifest.digest.clone();
        Ok(rep)
    }

    /// `PUT` a manifest or index blob (digest-verified) as `target` (its tag or digest).
    pub(crate) fn put_manifest(
        &self,
        store: &dyn ContentStore,
        manifest: &Descriptor,
        target: &Reference,
    ) -> Result<(), OciError> {
        let ep = self.registry_endpoint(target);
        let bytes = store.read_blob(&manifest.digest)?;
        crate::digest::verify(
            &format!("manifest {}", manifest.digest),
            &bytes,
            &manifest.digest,
            None,
        )?;
        let object = target
            .tag
            .clone()
            .or_else(|| target.digest.clone())
            .unwrap_or_else(|| "latest".to_string());
        let url = format!("{}/v2/{}/manifests/{object}", ep.base, target.repository);
        let scope = format!("repository:{}:pull,push", target.repository);
        let resp = self.send(
            &ep,
            "PUT",
            &url,
            &scope,
            &[("Content-Type", manifest.media_type.clone())],
            Body::Bytes(&bytes),
            true,
        )?;
        if resp.status().as_u16() != 201 && !resp.status().is_success() {
            return Err(Self::http_err("push manifest of", target, &ep, resp));
        }
        Ok(())
    }

    /// Pull an image into the store: manifest (as served), config and layers, all verified
    /// (digests, sizes, and each layer's uncompressed sha256 against the config's diff_ids).
    /// Returns the manifest descriptor (to tag in the image store).
    pub fn pull_image(
        &self,
        r: &Reference,
        platform: &Platform,
        store: &dyn ContentStore,
    ) -> Result<Descriptor, OciError> {
        self.pull_image_with_progress(r, platform, store, &crate::progress::NoTransferProgress)
    }

    /// [`RegistryClient::pull_image`], reporting each layer's bytes to `progress`.
    pub fn pull_image_with_progress(
        &self,
        r: &Reference,
        platform: &Platform,
        store: &dyn ContentStore,
        progress: &dyn crate::progress::TransferProgress,
    ) -> Result<Descriptor, OciError> {
        let resolved = self.resolve(r, platform)?;
        let src = format!("{}/{}", r.registry, r.repository);
        for l in &resolved.layers {
            self.fetch_blob_with_progress(r, l, store, progress)?;
            remember_source(store, &l.digest, &src);
        }
        store.put_blob(&resolved.config)?;
        let (digest, size) = store.put_blob(&resolved.manifest)?;
        let media_type = serde_json::from_slice::<serde_json::Value>(&resolved.manifest)
            .ok()
            .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
            .unwrap_or_else(|| crate::types::media_types::OCI_MANIFEST.to_string());
        let desc = Descriptor::new(media_type, digest, size);
        // Layers are tagged only when they are what the config claims (docker pull checks
        // the same while it unpacks).
        crate::import::verify_diff_ids(store, &desc)?;
        Ok(desc)
    }
}

/// Remember that `repo` (`registry/repository`) has blob `digest`, for cross-repo mounts.
pub(crate) fn remember_source(store: &dyn ContentStore, digest: &str, repo: &str) {
    let mut v: Vec<String> = store
        .meta_get("blob-source", digest)
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    if !v.iter().any(|x| x == repo) {
        v.push(repo.to_string());
        if v.len() > 8 {
            v.remove(0);
        }
        store.meta_put("blob-source", digest, &v.join(" "));
    }
}
