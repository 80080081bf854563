//! Push protocol details against a tiny in-test registry that misbehaves on purpose: a 5xx
//! on the first HEAD and on the first upload PUT must be retried, large blobs go up in PATCH
//! chunks with correct Content-Range, and the manifest is PUT last with its media type.
//! (Round trips with the real CNCF registry are in cli/tests/images.rs.)
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{serve, Response};
use rbuild_oci::push::PushOpts;
use rbuild_oci::types::{canonical_json, media_types as mt};
use rbuild_oci::{ContentStore, Descriptor, Manifest, Reference, RegistryClient, RegistryConfig};

#[test]
fn push_retries_5xx_and_uploads_big_blobs_in_chunks() {
    let t = tempfile::tempdir().unwrap();
    let store = rbuild_cache::Store::open(t.path()).unwrap();
    let layer: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
    let (ld, ls) = store.put_blob(&layer).unwrap();
    let (cd, cs) = store.put_blob(b"{}").unwrap();
    let m = Manifest {
        schema_version: 2,
        media_type: Some(mt::OCI_MANIFEST.into()),
        config: Descriptor::new(mt::OCI_CONFIG, cd.clone(), cs),
        layers: vec![Descriptor::new(mt::OCI_LAYER_TAR, ld.clone(), ls)],
        annotations: BTreeMap::new(),
    };
    let (md, ms) = store.put_blob(&canonical_json("m", &m).unwrap()).unwrap();
    let heads = Arc::new(AtomicUsize::new(0));
    let puts = Arc::new(AtomicUsize::new(0));
    let (h2, p2) = (heads.clone(), puts.clone());
    let (addr, log) = serve(move |req, _| {
        let p = req.path.as_str();
        match req.method.as_str() {
            "HEAD" if h2.fetch_add(1, Ordering::SeqCst) == 0 => Response::new(503, ""),
            "HEAD" => Response::new(404, ""),
            "POST" => Response::new(202, "").header("Location", "/v2/team/app/blobs/uploads/u1"),
            "PATCH" => Response::new(202, "").header("Location", "/v2/team/app/blobs/uploads/u1"),
            "PUT" if p.contains("/blobs/uploads/") => {
                if p2.fetch_add(1, Ordering::SeqCst) == 0 {
                    Response::new(500, "")
                } else {
                    Response::new(201, "")
                }
            }
            "PUT" if p.contains("/manifests/v1") => {
                assert_eq!(req.header("content-type"), Some(mt::OCI_MANIFEST));
                Response::new(201, "")
            }
            _ => Response::new(400, "unexpected"),
        }
    });
    let client = RegistryClient::new(RegistryConfig::default()).unwrap();
    let target = Reference::parse(&format!("{addr}/team/app:v1")).unwrap();
    let transfers = std::sync::Arc::new(Transfers::default());
    let opts = PushOpts {
        chunk_size: 1000,
        jobs: 1,
        progress: transfers.clone(),
    };
    let rep = client
        .push_image(
            &store,
            &Descriptor::new(mt::OCI_MANIFEST, md.clone(), ms),
            &target,
            &opts,
        )
        .unwrap();
    assert_eq!(rep.manifest_digest, md);
    assert_eq!(rep.uploaded, 2);
    let log = log.lock().unwrap().clone();
    let patches: Vec<&String> = log.iter().filter(|l| l.starts_with("PATCH")).collect();
    // the 2500-byte layer: 3 chunks on the first try; the PUT failed with 500, so the whole
    // upload was retried (3 more chunks); the 2-byte config goes up in one PUT
    assert_eq!(patches.len(), 6, "{log:#?}");
    assert!(
        log.iter()
            .any(|l| l.starts_with(&format!("PUT /v2/team/app/blobs/uploads/u1?digest={ld}"))),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with(&format!("PUT /v2/team/app/blobs/uploads/u1?digest={cd}"))),
        "{log:#?}"
    );
    assert!(
        log.last()
            .unwrap()
            .starts_with("PUT /v2/team/app/manifests/v1"),
        "manifest last: {log:#?}"
    );
    // layer: 503 + 404, again 404 after the failed PUT (the blob upload restarts); config: 404
    assert_eq!(heads.load(Ordering::SeqCst), 4, "HEAD 503 retried");
    // byte progress: the layer's last report is its whole size, done; each attempt starts at 0
    let t = transfers.0.lock().unwrap();
    let layer: Vec<_> = t.iter().filter(|x| x.id == ld).collect();
    let last = layer.last().unwrap();
    assert!(
        last.done && last.current == 2500 && last.total == 2500,
        "{layer:#?}"
    );
    assert_eq!(
        layer.iter().filter(|x| x.current == 0 && !x.done).count(),
        2,
        "{layer:#?}"
    );
    assert_eq!(layer.iter().filter(|x| x.done).count(), 2, "{layer:#?}");
}

/// Records every transfer report.
#[derive(Default)]
struct Transfers(std::sync::Mutex<Vec<rbuild_oci::progress::Transfer>>);

impl rbuild_oci::progress::TransferProgress for Transfers {
    fn transfer(&self, t: &rbuild_oci::progress::Transfer) {
        self.0.lock().unwrap().push(t.clone());
    }
}

#[test]
fn push_skips_blobs_the_registry_has() {
    let t = tempfile::tempdir().unwrap();
    let store = rbuild_cache::Store::open(t.path()).unwrap();
    let (ld, ls) = store.put_blob(b"layer").unwrap();
    let (cd, cs) = store.put_blob(b"{}").unwrap();
    let m = Manifest {
        schema_version: 2,
        media_type: Some(mt::OCI_MANIFEST.into()),
        config: Descriptor::new(mt::OCI_CONFIG, cd, cs),
        layers: vec![Descriptor::new(mt::OCI_LAYER_TAR, ld, ls)],
        annotations: BTreeMap::new(),
    };
    let (md, ms) = store.put_blob(&canonical_json("m", &m).unwrap()).unwrap();
    let (addr, log) = serve(move |req, _| match req.method.as_str() {
        "HEAD" => Response::new(200, ""),
        "PUT" if req.path.contains("/manifests/") => Response::new(201, ""),
        _ => Response::new(400, "unexpected"),
    });
    let client = RegistryClient::new(RegistryConfig::default()).unwrap();
    let target = Reference::parse(&format!("{addr}/team/app:v1")).unwrap();
    let rep = client
        .push_image(
            &store,
            &Descriptor::new(mt::OCI_MANIFEST, md, ms),
            &target,
            &PushOpts::default(),
        )
        .unwrap();
    assert_eq!((rep.existing, rep.uploaded), (2, 0));
    assert_eq!(
        log.lock().unwrap().len(),
        3,
        "two HEADs and the manifest PUT"
    );
}
