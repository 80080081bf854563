//! Registry client against the real CNCF distribution registry on 127.0.0.1:5055 and against a
//! tiny in-test HTTP server (bearer-token flow, corrupted blobs).
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use std::collections::BTreeMap;
use std::fs;

use common::{ensure_registry, serve, sha256, Response, REG};
use rbuild_oci::types::media_types as mt;
use rbuild_oci::{
    ContentStore, Descriptor, Manifest, OciError, Platform, Reference, RegistryClient,
    RegistryConfig,
};

fn client() -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        user_agent: "rbuild-test".into(),
        ..Default::default()
    })
    .unwrap()
}

fn amd64() -> Platform {
    Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    }
}

fn config_platform() -> Platform {
    // busybox in the test registry is built for the host.
    Platform::host()
}

#[test]
fn resolve_and_fetch_busybox() {
    ensure_registry();
    let c = client();
    let r = Reference::parse(&format!("{REG}/library/busybox:latest")).unwrap();
    let res = c.resolve(&r, &config_platform()).unwrap();
    assert_eq!(res.manifest_digest, sha256(&res.manifest));
    assert_eq!(res.reference.tag.as_deref(), Some("latest"));
    assert_eq!(
        res.reference.digest.as_deref(),
        Some(res.manifest_digest.as_str())
    );
    assert_eq!(res.config_desc.digest, sha256(&res.config));
    let config: serde_json::Value = serde_json::from_slice(&res.config).unwrap();
    assert_eq!(config["os"], "linux");
    assert!(config["rootfs"]["diff_ids"].as_array().unwrap().len() == res.layers.len());
    assert!(!res.layers.is_empty());

    let dir = tempfile::tempdir().unwrap();
    let store = rbuild_cache::Store::open(dir.path()).unwrap();
    for l in &res.layers {
        c.fetch_blob(&r, l, &store).unwrap();
        assert!(store.has_blob(&l.digest));
        let bytes = fs::read(ContentStore::blob_path(&store, &l.digest).unwrap()).unwrap();
        assert_eq!(sha256(&bytes), l.digest);
        assert_eq!(bytes.len() as u64, l.size);
        // a second fetch is a no-op
        c.fetch_blob(&r, l, &store).unwrap();
    }
    // a layer we fetched extracts into a real rootfs
    let root = tempfile::tempdir().unwrap();
    for l in &res.layers {
        rbuild_oci::apply_layer(store.open_blob(&l.digest).unwrap(), root.path()).unwrap();
    }
    assert!(root.path().join("bin/busybox").is_file());
    assert!(fs::symlink_metadata(root.path().join("bin/sh"))
        .unwrap()
        .file_type()
        .is_symlink());

    // by digest gives the same manifest
    let by_digest =
        Reference::parse(&format!("{REG}/library/busybox@{}", res.manifest_digest)).unwrap();
    let res2 = c.resolve(&by_digest, &config_platform()).unwrap();
    assert_eq!(res2.manifest, res.manifest);
}

#[test]
fn missing_tag_and_unreachable_registry_give_clear_errors() {
    ensure_registry();
    let c = client();
    let r = Reference::parse(&format!("{REG}/library/busybox:nope")).unwrap();
    let err = c.resolve(&r, &amd64()).unwrap_err();
    assert!(matches!(err, OciError::ManifestUnknown { .. }));
    assert_eq!(
        err.to_string(),
        format!("pull {REG}/library/busybox:nope: manifest unknown: registry {REG} has no library/busybox:nope")
    );

    let r = Reference::parse("127.0.0.1:1/library/busybox:latest").unwrap();
    let err = c.resolve(&r, &amd64()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot reach registry 127.0.0.1:1: connection refused"
    );
}

#[test]
fn docker_io_mirror() {
    ensure_registry();
    let mut mirrors = BTreeMap::new();
    mirrors.insert("docker.io".to_string(), vec![format!("http://{REG}")]);
    let c = RegistryClient::new(RegistryConfig {
        mirrors: mirrors.clone(),
        ..Default::default()
    })
    .unwrap();
    let r = Reference::parse("busybox").unwrap();
    let res = c.resolve(&r, &config_platform()).unwrap();
    assert_eq!(
        res.reference.familiar(),
        format!("busybox:latest@{}", res.manifest_digest)
    );
    let dir = tempfile::tempdir().unwrap();
    let store = rbuild_cache::Store::open(dir.path()).unwrap();
    c.fetch_blob(&r, &res.layers[0], &store).unwrap();
    assert!(store.has_blob(&res.layers[0].digest));

    // bare host:port form, and a missing tag reported from the mirror
    mirrors.insert("docker.io".to_string(), vec![REG.to_string()]);
    let c = RegistryClient::new(RegistryConfig {
        mirrors,
        ..Default::default()
    })
    .unwrap();
    let err = c
        .resolve(
            &Reference::parse("busybox:nope").unwrap(),
            &config_platform(),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("pull busybox:nope: manifest unknown: registry {REG} has no library/busybox:nope")
    );
}

fn put(url: &str, content_type: &str, body: &[u8]) -> String {
    let resp = ureq::put(url)
        .header("Content-Type", content_type)
        .send(body)
        .unwrap();
    assert!(resp.status().is_success(), "PUT {url}: {}", resp.status());
    resp.headers()
        .get("docker-content-digest")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

fn mount_blob(repo: &str, digest: &str) {
    let resp = ureq::post(format!(
        "http://{REG}/v2/{repo}/blobs/uploads/?mount={digest}&from=library/busybox"
    ))
    .send_empty()
    .unwrap();
    assert_eq!(resp.status().as_u16(), 201, "mount {digest}");
}

fn upload_blob(repo: &str, data: &[u8]) -> String {
    let digest = sha256(data);
    let resp = ureq::post(format!("http://{REG}/v2/{repo}/blobs/uploads/"))
        .send_empty()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let loc = resp
        .headers()
        .get("location")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let url = if loc.starts_with("http") {
        loc
    } else {
        format!("http://{REG}{loc}")
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    put(
        &format!("{url}{sep}digest={digest}"),
        "application/octet-stream",
        data,
    );
    digest
}

#[test]
fn index_resolve_picks_platform() {
    ensure_registry();
    let c = client();
    let host = config_platform();
    let base = c
        .resolve(
            &Reference::parse(&format!("{REG}/library/busybox:latest")).unwrap(),
            &host,
        )
        .unwrap();
    // Build the index in a repository of its own (blobs mounted from library/busybox), so the
    // shared busybox repository is left as setup.sh made it.
    let repo = "rbuild-oci-test/multi";
    for l in &base.layers {
        mount_blob(repo, &l.digest);
    }
    mount_blob(repo, &base.config_desc.digest);
    put(
        &format!("http://{REG}/v2/{repo}/manifests/{}", base.manifest_digest),
        mt::OCI_MANIFEST,
        &base.manifest,
    );
    // A second "platform": same layers, config claiming riscv64.
    let mut cfg: serde_json::Value = serde_json::from_slice(&base.config).unwrap();
    cfg["architecture"] = "riscv64".into();
    let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
    let cfg_digest = upload_blob(repo, &cfg_bytes);
    let mut m: Manifest = serde_json::from_slice(&base.manifest).unwrap();
    m.config = Descriptor::new(mt::OCI_CONFIG, cfg_digest.clone(), cfg_bytes.len() as u64);
    m.media_type = Some(mt::OCI_MANIFEST.into());
    let other = serde_json::to_vec(&m).unwrap();
    let other_digest = sha256(&other);
    put(
        &format!("http://{REG}/v2/{repo}/manifests/{other_digest}"),
        mt::OCI_MANIFEST,
        &other,
    );

    let mut d_other = Descriptor::new(mt::OCI_MANIFEST, other_digest.clone(), other.len() as u64);
    d_other.platform = Some(Platform {
        os: "linux".into(),
        architecture: "riscv64".into(),
        variant: None,
    });
    let mut d_host = Descriptor::new(
        mt::OCI_MANIFEST,
        base.manifest_digest.clone(),
        base.manifest.len() as u64,
    );
    d_host.platform = Some(host.clone());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": mt::OCI_INDEX,
        "manifests": [d_other, d_host],
    });
    let index_bytes = serde_json::to_vec(&index).unwrap();
    put(
        &format!("http://{REG}/v2/{repo}/manifests/multi"),
        mt::OCI_INDEX,
        &index_bytes,
    );

    let r = Reference::parse(&format!("{REG}/{repo}:multi")).unwrap();
    let res = c.resolve(&r, &host).unwrap();
    assert_eq!(res.manifest_digest, base.manifest_digest);
    assert_eq!(res.config, base.config);
    // layers of the chosen manifest are fetchable from that repository
    let dir = tempfile::tempdir().unwrap();
    let store = rbuild_cache::Store::open(dir.path()).unwrap();
    c.fetch_blob(&r, &res.layers[0], &store).unwrap();

    let riscv = Platform {
        os: "linux".into(),
        architecture: "riscv64".into(),
        variant: None,
    };
    let res = c.resolve(&r, &riscv).unwrap();
    assert_eq!(res.manifest_digest, other_digest);
    assert_eq!(res.config_desc.digest, cfg_digest);
    let parsed: serde_json::Value = serde_json::from_slice(&res.config).unwrap();
    assert_eq!(parsed["architecture"], "riscv64");

    let s390 = Platform {
        os: "linux".into(),
        architecture: "s390x".into(),
        variant: None,
    };
    let err = c.resolve(&r, &s390).unwrap_err();
    assert!(matches!(err, OciError::NoMatchingPlatform { .. }), "{err}");
    assert!(err.to_string().contains("linux/riscv64"), "{err}");
}

/// A registry behind bearer auth that serves a layer whose bytes do not match its digest.
#[test]
fn bearer_token_flow_and_corrupt_blob() {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let good_layer = b"the real layer bytes".to_vec();
    let bad_layer = b"THE REAL LAYER BYTES".to_vec(); // same size, different content
    let config_d = sha256(&config);
    let layer_d = sha256(&good_layer);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": mt::OCI_MANIFEST,
        "config": {"mediaType": mt::OCI_CONFIG, "digest": config_d, "size": config.len()},
        "layers": [{"mediaType": mt::OCI_LAYER_GZIP, "digest": layer_d, "size": good_layer.len()}],
    }))
    .unwrap();
    let (m2, c2, cd2, ld2) = (
        manifest.clone(),
        config.clone(),
        config_d.clone(),
        layer_d.clone(),
    );
    let (addr, log) = serve(move |req, addr| {
        if req.path.starts_with("/token") {
            return Response::new(200, r#"{"token":"s3cret","expires_in":300}"#);
        }
        if req.header("authorization") != Some("Bearer s3cret") {
            return Response::new(401, r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#).header(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="http://{addr}/token",service="tiny.test",scope="repository:team/app:pull""#),
            );
        }
        match req.path.as_str() {
            "/v2/team/app/manifests/v1" => {
                Response::new(200, m2.clone()).header("Content-Type", mt::OCI_MANIFEST)
            }
            p if p == format!("/v2/team/app/blobs/{cd2}") => Response::new(200, c2.clone()),
            p if p == format!("/v2/team/app/blobs/{ld2}") => Response::new(200, bad_layer.clone()),
            _ => Response::new(
                404,
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            ),
        }
    });
    let c = client();
    let r = Reference::parse(&format!("{addr}/team/app:v1")).unwrap();
    let res = c.resolve(&r, &amd64()).unwrap();
    assert_eq!(res.config, config);
    assert_eq!(res.layers[0].digest, layer_d);
    {
        let log = log.lock().unwrap();
        assert!(
            log.iter().any(|l| l
                .starts_with("GET /token?service=tiny.test&scope=repository%3Ateam%2Fapp%3Apull")),
            "{log:?}"
        );
        assert!(
            log.iter()
                .any(|l| l.contains("/manifests/v1 auth=Bearer s3cret")),
            "{log:?}"
        );
        // token is cached: one token request only
        assert_eq!(
            log.iter().filter(|l| l.starts_with("GET /token")).count(),
            1,
            "{log:?}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let store = rbuild_cache::Store::open(dir.path()).unwrap();
    let err = c.fetch_blob(&r, &res.layers[0], &store).unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&layer_d), "{err}");
    assert!(!store.has_blob(&layer_d));
    assert!(!store.has_blob(&sha256(b"THE REAL LAYER BYTES")));
    // nothing left behind in blobs or tmp
    let blobs: Vec<_> = fs::read_dir(dir.path().join("blobs-v1/sha256"))
        .unwrap()
        .collect();
    assert!(blobs.is_empty(), "{blobs:?}");
    if let Ok(tmp) = fs::read_dir(store.tmp_dir()) {
        assert_eq!(tmp.count(), 0);
    }

    // a manifest that does not match the digest it was asked by is rejected
    let wrong = Reference::parse(&format!("{addr}/team/app@{}", sha256(b"other"))).unwrap();
    assert!(c.resolve(&wrong, &amd64()).is_err());
}

#[test]
fn corrupt_manifest_by_digest_is_rejected() {
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},"layers":[]}"#.to_vec();
    let asked = sha256(b"what the client asked for");
    let (addr, _log) = serve(move |_req, _| {
        Response::new(200, manifest.clone()).header("Content-Type", mt::OCI_MANIFEST)
    });
    let r = Reference::parse(&format!("{addr}/x@{asked}")).unwrap();
    let err = client().resolve(&r, &amd64()).unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err}");
}

#[test]
fn basic_auth_hook() {
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": mt::OCI_MANIFEST,
        "config": {"mediaType": mt::OCI_CONFIG, "digest": sha256(b"{}"), "size": 2},
        "layers": [],
    }))
    .unwrap();
    let (addr, _log) = serve(move |req, _| {
        // "user:pass"
        if req.header("authorization") != Some("Basic dXNlcjpwYXNz") {
            return Response::new(401, "").header("WWW-Authenticate", r#"Basic realm="tiny""#);
        }
        if req.path.contains("/manifests/") {
            Response::new(200, manifest.clone()).header("Content-Type", mt::OCI_MANIFEST)
        } else {
            Response::new(200, "{}")
        }
    });
    let r = Reference::parse(&format!("{addr}/private/app:v1")).unwrap();
    let c = client();
    let err = c.resolve(&r, &amd64()).unwrap_err();
    assert!(matches!(err, OciError::Auth { .. }), "{err}");
    assert!(err.to_string().contains("basic auth"), "{err}");
    c.set_basic_auth(&addr, "user", "pass");
    let res = c.resolve(&r, &amd64()).unwrap();
    assert_eq!(res.config, b"{}");
}
