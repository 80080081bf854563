//! Remote cache (issue #13) at the oci level: export → open → fetch round trips through the
//! real registry (127.0.0.1:5055, and the TLS + htpasswd one on 5056) and through local OCI
//! layout directories (also after `tar` and `zip`/`unzip`), garbage collection of a re-export,
//! and the attacks: foreign and malformed manifests and configs, tampered blobs, symlinks in a
//! layout, oversized documents, wrong credentials. Each attack checks that nothing entered
//! the store and nothing outside changed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Command;

use common::{ensure_registry, serve, sha256, Response};
use rbuild_oci::progress::NoTransferProgress;
use rbuild_oci::remote_cache::{
    export_cache, CacheConfig, CacheExport, CacheExportOpts, CacheLocation, CacheMount,
    CacheRecord, ChainLink, ExportLayer, ImportedCache, CACHE_CONFIG_MEDIA_TYPE, INLINE_ANNOTATION,
};
use rbuild_oci::types::{canonical_json, media_types as mt};
use rbuild_oci::{
    Compression, ContentStore, Descriptor, Manifest, OciError, Platform, Reference, RegistryClient,
    RegistryConfig,
};

const TLS_REG: &str = "127.0.0.1:5056";

fn reg() -> String {
    ensure_registry();
    std::env::var("RBUILD_TEST_REGISTRY").unwrap_or_else(|_| common::REG.to_string())
}

fn unique(name: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("rcache/{name}-{}-{n}", std::process::id())
}

fn client() -> RegistryClient {
    RegistryClient::new(RegistryConfig::default()).unwrap()
}

fn new_store() -> (tempfile::TempDir, rbuild_cache::Store) {
    let t = tempfile::tempdir().unwrap();
    let s = rbuild_cache::Store::open(t.path()).unwrap();
    (t, s)
}

/// An uncompressed layer tar (one file) in the store, as rbuild keeps its own layers.
fn layer(store: &rbuild_cache::Store, name: &str, body: &[u8]) -> ExportLayer {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    b.append_data(&mut h, name, body).unwrap();
    let tar = b.into_inner().unwrap();
    let (d, s) = store.put_blob(&tar).unwrap();
    ExportLayer {
        blob: Descriptor::new(mt::OCI_LAYER_TAR, d.clone(), s),
        diff_id: d,
    }
}

fn key(n: u8) -> String {
    format!("sha256:{}", hex_of(n))
}

fn hex_of(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// A config: record i has the chain 0..=i; one cache mount on the last layer.
fn config(n: usize) -> CacheConfig {
    CacheConfig {
        version: 1,
        layers: vec![],
        records: (0..n)
            .map(|i| CacheRecord {
                key: key(i as u8 + 1),
                chain: (0..=i)
                    .map(|l| ChainLink {
                        layer: l,
                        created: (l > 0).then_some(1_700_000_000 + l as i64),
                    })
                    .collect(),
                build: Some("b1".into()),
                time: Some(1_700_000_100),
            })
            .collect(),
        mounts: vec![CacheMount {
            name: "0123456789ab-npm".into(),
            layer: n - 1,
        }],
        steps: BTreeMap::from([("s".to_string(), serde_json::json!({"k": [1, 2]}))]),
    }
}

fn export_of(layers: Vec<ExportLayer>) -> CacheExport {
    let n = layers.len();
    CacheExport {
        layers,
        config: config(n),
    }
}

fn platform() -> Platform {
    Platform::host()
}

fn export(
    c: &RegistryClient,
    a: &rbuild_cache::Store,
    to: &CacheLocation,
    data: &CacheExport,
) -> Result<Descriptor, OciError> {
    export_cache(
        c,
        a,
        to,
        data,
        &CacheExportOpts::default(),
        &NoTransferProgress,
    )
}

fn open_cache(c: &RegistryClient, from: &CacheLocation) -> Result<ImportedCache, OciError> {
    ImportedCache::open(c, from, &platform())
}

/// Open `from` into a fresh store, fetch every layer and check each against its diff id.
fn open_and_fetch_all(c: &RegistryClient, from: &CacheLocation, data: &CacheExport) {
    let cache = ImportedCache::open(c, from, &platform()).unwrap();
    let mut want = data.config.clone();
    want.layers = data
        .layers
        .iter()
        .map(|l| rbuild_oci::remote_cache::CacheLayerInfo {
            diff_id: l.diff_id.clone(),
        })
        .collect();
    assert_eq!(cache.config, want);
    assert_eq!(cache.layers.len(), data.layers.len());
    let (_t, b) = new_store();
    for (i, l) in data.layers.iter().enumerate() {
        let log = Log::default();
        cache.fetch_layer(c, &b, i, &log).unwrap();
        let d = &cache.layers[i];
        let last = log.0.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last.id, d.digest);
        assert!(last.done && last.current == d.size && last.total == d.size);
        assert!(ContentStore::has_blob(&b, &d.digest));
        let got = rbuild_oci::layer_diff_id(
            ContentStore::open_blob(&b, &d.digest).unwrap(),
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(got, l.diff_id);
        // again: a no-op
        cache.fetch_layer(c, &b, i, &NoTransferProgress).unwrap();
    }
    assert!(cache
        .fetch_layer(c, &b, data.layers.len(), &NoTransferProgress)
        .is_err());
}

/// Records every progress report.
#[derive(Default)]
struct Log(std::sync::Mutex<Vec<rbuild_oci::progress::Transfer>>);

impl rbuild_oci::progress::TransferProgress for Log {
    fn transfer(&self, t: &rbuild_oci::progress::Transfer) {
        self.0.lock().unwrap().push(t.clone());
    }
}

fn blob_names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn hex(d: &str) -> String {
    d.strip_prefix("sha256:").unwrap().to_string()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every blob a layout's manifests reach, with the manifests themselves (hex names).
fn referenced(dir: &Path) -> BTreeSet<String> {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mut out = BTreeSet::new();
    for m in index["manifests"].as_array().unwrap() {
        let d = m["digest"].as_str().unwrap();
        out.insert(hex(d));
        let man: Manifest =
            serde_json::from_slice(&fs::read(dir.join("blobs/sha256").join(hex(d))).unwrap())
                .unwrap();
        out.insert(hex(&man.config.digest));
        out.extend(man.layers.iter().map(|l| hex(&l.digest)));
    }
    out
}

#[test]
fn registry_round_trip_compresses_once_and_skopeo_reads_it() {
    let reg = reg();
    let c = client();
    let (_t, a) = new_store();
    let data = export_of(vec![
        layer(&a, "one", &vec![b'1'; 200_000]),
        layer(&a, "two", b"second layer"),
    ]);
    let r = Reference::parse(&format!("{reg}/{}:v1", unique("rt"))).unwrap();
    let to = CacheLocation::Registry(r.clone());
    let opts = CacheExportOpts::default();
    let log = Log::default();
    let desc = export_cache(&c, &a, &to, &data, &opts, &log).unwrap();
    assert_eq!(desc.media_type, mt::OCI_MANIFEST);
    let uploads: Vec<_> = log
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|t| t.done && t.action == rbuild_oci::progress::Action::Uploading)
        .map(|t| (t.id.clone(), t.current))
        .collect();
    assert_eq!(uploads.len(), 3, "two layers and the config: {uploads:?}");
    let cache = open_cache(&c, &to).unwrap();
    assert_eq!(cache.origin, format!("registry cache {}", r.familiar()));
    assert!(cache
        .layers
        .iter()
        .all(|l| l.media_type == mt::OCI_LAYER_GZIP));
    assert!(cache.layers[0].size < 200_000);
    open_and_fetch_all(&c, &to, &data);
    // A second export compresses nothing again (the store's `compressed` cache) and gives the
    // same manifest.
    use std::os::unix::fs::MetadataExt;
    let inode = |d: &str| fs::metadata(a.blob_path(d).unwrap()).unwrap().ino();
    let before: Vec<u64> = cache.layers.iter().map(|l| inode(&l.digest)).collect();
    let blobs_before = a.list_blobs().unwrap().len();
    let again = export_cache(&c, &a, &to, &data, &opts, &NoTransferProgress).unwrap();
    assert_eq!(again, desc);
    assert_eq!(a.list_blobs().unwrap().len(), blobs_before);
    let after: Vec<u64> = cache.layers.iter().map(|l| inode(&l.digest)).collect();
    assert_eq!(before, after, "no layer compressed (and committed) again");
    // zstd, docker media types
    let z = CacheExportOpts {
        compression: Compression::Zstd,
        ..Default::default()
    };
    export_cache(&c, &a, &to, &data, &z, &NoTransferProgress).unwrap();
    let cache = open_cache(&c, &to).unwrap();
    assert!(cache
        .layers
        .iter()
        .all(|l| l.media_type == mt::OCI_LAYER_ZSTD));
    open_and_fetch_all(&c, &to, &data);
    // Docker layer media types (oci-mediatypes=false) in the OCI manifest: the registry takes it
    let docker = CacheExportOpts {
        oci_media_types: false,
        ..Default::default()
    };
    export_cache(&c, &a, &to, &data, &docker, &NoTransferProgress).unwrap();
    let cache = open_cache(&c, &to).unwrap();
    assert!(cache
        .layers
        .iter()
        .all(|l| l.media_type == mt::DOCKER_LAYER_GZIP));
    open_and_fetch_all(&c, &to, &data);
    // skopeo (an independent client) reads the pushed manifest
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}", r.familiar()))
        .output()
        .expect("skopeo (installed by .ci/setup.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["mediaType"], mt::OCI_MANIFEST);
    assert_eq!(m["config"]["mediaType"], CACHE_CONFIG_MEDIA_TYPE);
    assert_eq!(m["layers"].as_array().unwrap().len(), 2);
    // a reference without a tag means :latest
    let bare = Reference::parse(&format!("{reg}/{}", unique("bare"))).unwrap();
    export_cache(
        &c,
        &a,
        &CacheLocation::Registry(bare.clone()),
        &data,
        &opts,
        &NoTransferProgress,
    )
    .unwrap();
    let l = open_cache(&c, &CacheLocation::Registry(bare.with_tag("latest"))).unwrap();
    assert_eq!(l.layers.len(), 2);
}

#[test]
fn local_round_trip_survives_tar_and_zip() {
    let c = client();
    let (_t, a) = new_store();
    let data = export_of(vec![
        layer(&a, "one", &vec![b'x'; 100_000]),
        layer(&a, "two", b"two"),
        layer(&a, "three", b"three"),
    ]);
    let w = tempfile::tempdir().unwrap();
    let dir = w.path().join("cache");
    let to = CacheLocation::Local(dir.clone());
    export(&c, &a, &to, &data).unwrap();
    assert_eq!(
        fs::read(dir.join("oci-layout")).unwrap(),
        br#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(
        index["manifests"][0]["annotations"][mt::ANNOTATION_REF_NAME],
        "latest"
    );
    assert_eq!(blob_names(&dir), referenced(&dir));
    open_and_fetch_all(&c, &to, &data);

    // tar, as CI caches do
    run(Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-cf")
        .arg(w.path().join("c.tar"))
        .arg("."));
    let from_tar = w.path().join("from-tar");
    fs::create_dir(&from_tar).unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(&from_tar)
        .arg("-xf")
        .arg(w.path().join("c.tar")));
    open_and_fetch_all(&c, &CacheLocation::Local(from_tar), &data);

    // zip / unzip (GitLab's cache:, actions/upload-artifact)
    run(Command::new("zip")
        .current_dir(&dir)
        .arg("-qr")
        .arg(w.path().join("c.zip"))
        .arg("."));
    let from_zip = w.path().join("from-zip");
    run(Command::new("unzip")
        .arg("-q")
        .arg(w.path().join("c.zip"))
        .arg("-d")
        .arg(&from_zip));
    open_and_fetch_all(&c, &CacheLocation::Local(from_zip.clone()), &data);
    // and an export into the restored copy updates it in place
    export(&c, &a, &CacheLocation::Local(from_zip.clone()), &data).unwrap();
    assert_eq!(blob_names(&from_zip), referenced(&from_zip));
}

#[test]
fn reexport_removes_unreferenced_blobs_and_nothing_else() {
    let c = client();
    let (_t, a) = new_store();
    let (l1, l2, l3) = (
        layer(&a, "a", b"A"),
        layer(&a, "b", b"B"),
        layer(&a, "c", b"C"),
    );
    let w = tempfile::tempdir().unwrap();
    let dir = w.path().join("cache");
    let to = CacheLocation::Local(dir.clone());
    let opts = CacheExportOpts::default();
    export_cache(
        &c,
        &a,
        &to,
        &export_of(vec![l1.clone(), l2.clone()]),
        &opts,
        &NoTransferProgress,
    )
    .unwrap();
    let first = blob_names(&dir);
    assert_eq!(first.len(), 4);
    // things that are not ours: must all survive
    let outside = w.path().join("outside");
    fs::write(&outside, b"precious").unwrap();
    let sha = dir.join("blobs/sha256");
    fs::write(sha.join("README"), b"keep").unwrap();
    fs::create_dir(sha.join(hex_of(0xee))).unwrap();
    std::os::unix::fs::symlink(&outside, sha.join(hex_of(0xdd))).unwrap();
    fs::write(dir.join("notes.txt"), b"mine").unwrap();
    fs::write(sha.join(hex_of(0xcc).to_uppercase()), b"upper").unwrap();

    export_cache(
        &c,
        &a,
        &to,
        &export_of(vec![l1.clone(), l3.clone()]),
        &opts,
        &NoTransferProgress,
    )
    .unwrap();
    let names = blob_names(&dir);
    let ours: BTreeSet<String> = names
        .iter()
        .filter(|n| {
            n.len() == 64
                && n.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
        .filter(|n| fs::symlink_metadata(sha.join(n)).unwrap().is_file())
        .cloned()
        .collect();
    assert_eq!(
        ours,
        referenced(&dir),
        "exactly the referenced blobs remain"
    );
    assert_eq!(ours.len(), 4);
    assert!(
        names.contains("README") && names.contains(&hex_of(0xee)) && names.contains(&hex_of(0xdd))
    );
    assert!(names.contains(&hex_of(0xcc).to_uppercase()));
    assert_eq!(fs::read(&outside).unwrap(), b"precious");
    assert_eq!(fs::read(dir.join("notes.txt")).unwrap(), b"mine");
    open_and_fetch_all(&c, &to, &export_of(vec![l1.clone(), l3.clone()]));

    // A second tag keeps the first one's blobs; tag= chooses on open.
    let other = CacheExportOpts {
        tag: "other".into(),
        ..Default::default()
    };
    export_cache(
        &c,
        &a,
        &to,
        &export_of(vec![l2.clone()]),
        &other,
        &NoTransferProgress,
    )
    .unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    let c2 = ImportedCache::open_tag(&c, &to, &platform(), Some("other")).unwrap();
    assert_eq!(c2.config.layers[0].diff_id, l2.diff_id);
    let c1 = open_cache(&c, &to).unwrap();
    assert_eq!(c1.layers.len(), 2);
    let e = ImportedCache::open_tag(&c, &to, &platform(), Some("nope")).unwrap_err();
    assert!(e.to_string().contains("no entry named \"nope\""), "{e}");
    let reachable: BTreeSet<String> = referenced(&dir);
    let now: BTreeSet<String> = blob_names(&dir)
        .into_iter()
        .filter(|n| {
            fs::symlink_metadata(sha.join(n)).unwrap().is_file()
                && n.len() == 64
                && n != &hex_of(0xcc).to_uppercase()
        })
        .collect();
    assert_eq!(now, reachable);
}

#[test]
fn export_refuses_a_directory_that_is_not_a_layout_and_symlinked_blobs() {
    let c = client();
    let (_t, a) = new_store();
    let data = export_of(vec![layer(&a, "a", b"A")]);
    let w = tempfile::tempdir().unwrap();
    // a directory with other files (e.g. $HOME by mistake)
    let home = w.path().join("home");
    fs::create_dir(&home).unwrap();
    fs::write(home.join(".bashrc"), b"x").unwrap();
    let e = export(&c, &a, &CacheLocation::Local(home.clone()), &data).unwrap_err();
    assert!(matches!(e, OciError::CacheDest { .. }), "{e}");
    assert!(e.to_string().contains("not an OCI layout"), "{e}");
    let left: Vec<_> = fs::read_dir(&home)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from(".bashrc")]);
    // a file
    let file = w.path().join("file");
    fs::write(&file, b"f").unwrap();
    assert!(export(&c, &a, &CacheLocation::Local(file.clone()), &data).is_err());
    assert_eq!(fs::read(&file).unwrap(), b"f");
    // a layout whose blobs (or blobs/sha256) is a symlink to elsewhere: nothing written there
    for (link_at, make_blobs) in [("blobs", false), ("blobs/sha256", true)] {
        let dest = w.path().join(format!("d-{}", link_at.replace('/', "-")));
        let elsewhere = w
            .path()
            .join(format!("elsewhere-{}", link_at.replace('/', "-")));
        fs::create_dir_all(&elsewhere).unwrap();
        fs::create_dir(&dest).unwrap();
        fs::write(
            dest.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        if make_blobs {
            fs::create_dir(dest.join("blobs")).unwrap();
        }
        std::os::unix::fs::symlink(&elsewhere, dest.join(link_at)).unwrap();
        let e = export(&c, &a, &CacheLocation::Local(dest.clone()), &data).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(
            fs::read_dir(&elsewhere).unwrap().count(),
            0,
            "nothing written through {link_at}"
        );
        assert!(!dest.join("index.json").exists());
    }
    // an empty directory is fine
    let empty = w.path().join("empty");
    fs::create_dir(&empty).unwrap();
    export(&c, &a, &CacheLocation::Local(empty.clone()), &data).unwrap();
    // a symlink planted where a blob goes is replaced, never written through
    let target = w.path().join("target");
    fs::write(&target, b"keep me").unwrap();
    let layer_hex = referenced(&empty)
        .into_iter()
        .find(|h| {
            fs::read(empty.join("blobs/sha256").join(h))
                .map(|b| b.len() > 100)
                .unwrap_or(false)
        })
        .unwrap();
    let p = empty.join("blobs/sha256").join(&layer_hex);
    fs::remove_file(&p).unwrap();
    std::os::unix::fs::symlink(&target, &p).unwrap();
    export(&c, &a, &CacheLocation::Local(empty.clone()), &data).unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"keep me");
    assert!(fs::symlink_metadata(&p).unwrap().is_file());
}

#[test]
fn a_layout_reached_through_symlinks_is_refused() {
    let c = client();
    let (_t, a) = new_store();
    let data = export_of(vec![layer(&a, "a", b"A")]);
    let w = tempfile::tempdir().unwrap();
    let real = w.path().join("real");
    export(&c, &a, &CacheLocation::Local(real.clone()), &data).unwrap();
    // blobs is a symlink to another layout's blobs
    let linked = w.path().join("linked");
    fs::create_dir(&linked).unwrap();
    for f in ["oci-layout", "index.json"] {
        fs::copy(real.join(f), linked.join(f)).unwrap();
    }
    std::os::unix::fs::symlink(real.join("blobs"), linked.join("blobs")).unwrap();
    let e = open_cache(&c, &CacheLocation::Local(linked)).unwrap_err();
    assert!(matches!(e, OciError::InvalidCache { .. }), "{e}");
    assert!(e.to_string().contains("blobs is a symlink"), "{e}");
    // each blob a symlink
    let files = w.path().join("files");
    fs::create_dir_all(files.join("blobs/sha256")).unwrap();
    for f in ["oci-layout", "index.json"] {
        fs::copy(real.join(f), files.join(f)).unwrap();
    }
    for n in blob_names(&real) {
        std::os::unix::fs::symlink(
            real.join("blobs/sha256").join(&n),
            files.join("blobs/sha256").join(&n),
        )
        .unwrap();
    }
    let e = open_cache(&c, &CacheLocation::Local(files)).unwrap_err();
    assert!(e.to_string().contains("symlink"), "{e}");
    // index.json a symlink
    let idx = w.path().join("idx");
    fs::create_dir(&idx).unwrap();
    fs::copy(real.join("oci-layout"), idx.join("oci-layout")).unwrap();
    std::os::unix::fs::symlink(real.join("index.json"), idx.join("index.json")).unwrap();
    run(Command::new("cp")
        .arg("-r")
        .arg(real.join("blobs"))
        .arg(idx.join("blobs")));
    assert!(open_cache(&c, &CacheLocation::Local(idx)).is_err());
    // a fifo as index.json does not hang the open
    let fifo = w.path().join("fifo");
    fs::create_dir(&fifo).unwrap();
    fs::copy(real.join("oci-layout"), fifo.join("oci-layout")).unwrap();
    run(Command::new("mkfifo").arg(fifo.join("index.json")));
    assert!(open_cache(&c, &CacheLocation::Local(fifo)).is_err());
}

#[test]
fn tampered_local_blobs_are_refused_and_nothing_enters_the_store() {
    let c = client();
    let (_t, a) = new_store();
    let data = export_of(vec![
        layer(&a, "a", &vec![b'a'; 5000]),
        layer(&a, "b", b"B"),
    ]);
    let w = tempfile::tempdir().unwrap();
    let dir = w.path().join("cache");
    let to = CacheLocation::Local(dir.clone());
    export(&c, &a, &to, &data).unwrap();
    let cache = open_cache(&c, &to).unwrap();
    let victim = dir.join("blobs/sha256").join(hex(&cache.layers[0].digest));
    let mut bytes = fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff; // same size, other content
    fs::write(&victim, &bytes).unwrap();
    let (_t2, b) = new_store();
    let e = cache
        .fetch_layer(&c, &b, 0, &NoTransferProgress)
        .unwrap_err();
    assert!(matches!(e, OciError::DigestMismatch { .. }), "{e}");
    assert!(
        b.list_blobs().unwrap().is_empty(),
        "nothing unverified stored"
    );
    assert_eq!(fs::read_dir(b.tmp_dir()).map(|d| d.count()).unwrap_or(0), 0);
    // longer than the manifest says
    bytes.extend_from_slice(b"more");
    fs::write(&victim, &bytes).unwrap();
    assert!(cache.fetch_layer(&c, &b, 0, &NoTransferProgress).is_err());
    assert!(b.list_blobs().unwrap().is_empty());
    // the other layer is fine
    cache.fetch_layer(&c, &b, 1, &NoTransferProgress).unwrap();
    // a tampered config: the open refuses
    let config = dir.join("blobs/sha256").join(hex(&{
        let m: Manifest = serde_json::from_slice(
            &fs::read(
                dir.join("blobs/sha256")
                    .join(hex(serde_json::from_slice::<serde_json::Value>(
                        &fs::read(dir.join("index.json")).unwrap(),
                    )
                    .unwrap()["manifests"][0]["digest"]
                        .as_str()
                        .unwrap())),
            )
            .unwrap(),
        )
        .unwrap();
        m.config.digest
    }));
    let mut cb = fs::read(&config).unwrap();
    let pos = cb.windows(3).position(|w| w == b"\"b1").unwrap();
    cb[pos + 2] = b'2';
    fs::write(&config, &cb).unwrap();
    let e = open_cache(&c, &to).unwrap_err();
    assert!(matches!(e, OciError::DigestMismatch { .. }), "{e}");
}

/// Push a hand-made manifest (config bytes with `config_type`, the layers, annotations) to
/// `r`; the blobs go up through the ordinary push.
fn push_raw(
    c: &RegistryClient,
    store: &rbuild_cache::Store,
    r: &Reference,
    config_type: &str,
    config: &[u8],
    layers: &[Descriptor],
    annotations: BTreeMap<String, String>,
) {
    let (cd, cs) = store.put_blob(config).unwrap();
    let m = Manifest {
        schema_version: 2,
        media_type: Some(mt::OCI_MANIFEST.into()),
        config: Descriptor::new(config_type, cd, cs),
        layers: layers.to_vec(),
        annotations,
    };
    let (md, ms) = store.put_blob(&canonical_json("m", &m).unwrap()).unwrap();
    c.push_image(
        store,
        &Descriptor::new(mt::OCI_MANIFEST, md, ms),
        r,
        &Default::default(),
    )
    .unwrap();
}

#[test]
fn foreign_and_malformed_registry_caches_are_refused_with_what_was_found() {
    let reg = reg();
    let c = client();
    let (_t, a) = new_store();
    let l = layer(&a, "a", b"A");
    let open = |r: &Reference| open_cache(&c, &CacheLocation::Registry(r.clone()));

    // 404
    let r404 = Reference::parse(&format!("{reg}/{}:nope", unique("missing"))).unwrap();
    let e = open(&r404).unwrap_err();
    assert!(matches!(e, OciError::ManifestUnknown { .. }), "{e}");

    // a plain image (busybox) without the annotation
    let bb = Reference::parse(&format!("{reg}/library/busybox:latest")).unwrap();
    let e = open(&bb).unwrap_err();
    assert!(matches!(e, OciError::NotACache { .. }), "{e}");
    assert!(e.to_string().contains("plain image"), "{e}");

    // a BuildKit cache manifest (image-manifest=true form) and some other artifact
    for (ct, says) in [
        ("application/vnd.buildkit.cacheconfig.v0", "BuildKit cache"),
        (
            "application/vnd.example.thing+json",
            "application/vnd.example.thing+json",
        ),
    ] {
        let r = Reference::parse(&format!("{reg}/{}:1", unique("foreign"))).unwrap();
        push_raw(
            &c,
            &a,
            &r,
            ct,
            b"{}",
            std::slice::from_ref(&l.blob),
            BTreeMap::new(),
        );
        let e = open(&r).unwrap_err();
        assert!(matches!(e, OciError::NotACache { .. }), "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }

    // configs that break the rules
    let mut bad_index = config(1);
    bad_index.layers = vec![rbuild_oci::remote_cache::CacheLayerInfo {
        diff_id: l.diff_id.clone(),
    }];
    bad_index.records[0].chain[0].layer = 7;
    let mut bad_mount = bad_index.clone();
    bad_mount.records[0].chain[0].layer = 0;
    bad_mount.mounts[0].name = "../../../etc".into();
    let mut too_few = bad_mount.clone();
    too_few.mounts.clear();
    too_few.layers.clear();
    too_few.records.clear();
    let mut version = too_few.clone();
    version.layers = bad_index.layers.clone();
    version.version = 9;
    let mut bad_key = version.clone();
    bad_key.version = 1;
    bad_key.records = vec![CacheRecord {
        key: "../x".into(),
        chain: vec![],
        build: None,
        time: None,
    }];
    for (cfg, says) in [
        (bad_index, "refers to layer 7 of 1"),
        (bad_mount, "cache mount name"),
        (too_few, "1 layers but the config describes 0"),
        (version, "format version 9"),
        (bad_key, "record key"),
    ] {
        let r = Reference::parse(&format!("{reg}/{}:1", unique("bad"))).unwrap();
        let bytes = cfg.to_canonical_json().unwrap();
        push_raw(
            &c,
            &a,
            &r,
            CACHE_CONFIG_MEDIA_TYPE,
            &bytes,
            std::slice::from_ref(&l.blob),
            BTreeMap::new(),
        );
        let e = open(&r).unwrap_err();
        assert!(matches!(e, OciError::InvalidCache { .. }), "{e}");
        assert!(e.to_string().contains(says), "{says}: {e}");
    }
    // not JSON of the right shape
    let r = Reference::parse(&format!("{reg}/{}:1", unique("json"))).unwrap();
    push_raw(
        &c,
        &a,
        &r,
        CACHE_CONFIG_MEDIA_TYPE,
        br#"{"version":1}"#,
        std::slice::from_ref(&l.blob),
        BTreeMap::new(),
    );
    assert!(matches!(
        open(&r).unwrap_err(),
        OciError::InvalidJson { .. }
    ));
}

#[test]
fn inline_cache_round_trip_and_mismatched_inline_layers() {
    let reg = reg();
    let c = client();
    let (_t, a) = new_store();
    let layers = [layer(&a, "a", b"A"), layer(&a, "b", b"BB")];
    let mut cfg = config(2);
    cfg.layers = layers
        .iter()
        .map(|l| rbuild_oci::remote_cache::CacheLayerInfo {
            diff_id: l.diff_id.clone(),
        })
        .collect();
    cfg.mounts.clear();
    let image_config = |ids: Vec<String>| {
        serde_json::to_vec(&serde_json::json!({
            "architecture": platform().architecture, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": ids},
        }))
        .unwrap()
    };
    let descs: Vec<Descriptor> = layers.iter().map(|l| l.blob.clone()).collect();
    let ann = BTreeMap::from([(
        INLINE_ANNOTATION.to_string(),
        String::from_utf8(cfg.to_canonical_json().unwrap()).unwrap(),
    )]);
    let r = Reference::parse(&format!("{reg}/{}:1", unique("inline"))).unwrap();
    let ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    push_raw(
        &c,
        &a,
        &r,
        mt::OCI_CONFIG,
        &image_config(ids.clone()),
        &descs,
        ann.clone(),
    );
    let from = CacheLocation::Registry(r.clone());
    let cache = open_cache(&c, &from).unwrap();
    assert_eq!(cache.origin, format!("inline cache of {}", r.familiar()));
    assert_eq!(cache.config, cfg);
    assert_eq!(cache.layers, descs);
    let (_t2, b) = new_store();
    cache.fetch_layer(&c, &b, 1, &NoTransferProgress).unwrap();
    assert_eq!(
        ContentStore::read_blob(&b, &layers[1].blob.digest).unwrap(),
        ContentStore::read_blob(&a, &layers[1].blob.digest).unwrap()
    );
    // an annotation claiming other layers than the image's is refused
    let r2 = Reference::parse(&format!("{reg}/{}:1", unique("inline-bad"))).unwrap();
    let swapped = vec![ids[1].clone(), ids[0].clone()];
    push_raw(
        &c,
        &a,
        &r2,
        mt::OCI_CONFIG,
        &image_config(swapped),
        &descs,
        ann,
    );
    let e = open_cache(&c, &CacheLocation::Registry(r2)).unwrap_err();
    assert!(e.to_string().contains("not the image's"), "{e}");
}

/// The tiny registry: serves `docs` (path → (content type, body)) and 404 for the rest.
fn tiny(
    docs: Vec<(String, String, Vec<u8>)>,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    serve(move |req, _| {
        for (p, ct, body) in &docs {
            if req.path == *p {
                return Response::new(200, body.clone()).header("Content-Type", ct);
            }
        }
        Response::new(
            404,
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#,
        )
    })
}

#[test]
fn hostile_registry_answers_are_refused() {
    let c = client();
    let (_t, a) = new_store();
    let l = layer(&a, "a", &vec![b'q'; 3000]);
    let tarb = ContentStore::read_blob(&a, &l.blob.digest).unwrap();
    let mut cfg = config(1);
    cfg.layers = vec![rbuild_oci::remote_cache::CacheLayerInfo {
        diff_id: l.diff_id.clone(),
    }];
    let cb = cfg.to_canonical_json().unwrap();
    let manifest = |layer_size: u64, config_size: u64| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": mt::OCI_MANIFEST,
            "config": {"mediaType": CACHE_CONFIG_MEDIA_TYPE, "digest": sha256(&cb), "size": config_size},
            "layers": [{"mediaType": mt::OCI_LAYER_TAR, "digest": l.blob.digest, "size": layer_size}],
        }))
        .unwrap()
    };
    let m = manifest(tarb.len() as u64, cb.len() as u64);
    let mut tampered = tarb.clone();
    tampered[600] ^= 1;
    // 1. a blob whose bytes do not match its digest
    let (addr, _) = tiny(vec![
        (
            "/v2/c/manifests/latest".into(),
            mt::OCI_MANIFEST.into(),
            m.clone(),
        ),
        (
            format!("/v2/c/blobs/{}", sha256(&cb)),
            "application/octet-stream".into(),
            cb.clone(),
        ),
        (
            format!("/v2/c/blobs/{}", l.blob.digest),
            "application/octet-stream".into(),
            tampered,
        ),
    ]);
    let from = CacheLocation::Registry(Reference::parse(&format!("{addr}/c")).unwrap());
    let cache = open_cache(&c, &from).unwrap();
    let (_t2, b) = new_store();
    let e = cache
        .fetch_layer(&c, &b, 0, &NoTransferProgress)
        .unwrap_err();
    assert!(matches!(e, OciError::DigestMismatch { .. }), "{e}");
    assert!(b.list_blobs().unwrap().is_empty());

    // 2. a manifest over 4 MiB
    let mut huge = m.clone();
    huge.pop();
    huge.extend_from_slice(br#","annotations":{"x":""#);
    huge.extend(std::iter::repeat_n(b'a', 5 << 20));
    huge.extend_from_slice(b"\"}}");
    let (addr, _) = tiny(vec![(
        "/v2/c/manifests/latest".into(),
        mt::OCI_MANIFEST.into(),
        huge,
    )]);
    let e = open_cache(
        &c,
        &CacheLocation::Registry(Reference::parse(&format!("{addr}/c")).unwrap()),
    )
    .unwrap_err();
    assert!(e.to_string().contains("bytes"), "{e}");

    // 3. a config claimed bigger than 64 MiB: refused before it is fetched
    let (addr, log) = tiny(vec![(
        "/v2/c/manifests/latest".into(),
        mt::OCI_MANIFEST.into(),
        manifest(tarb.len() as u64, 65 << 20),
    )]);
    let e = open_cache(
        &c,
        &CacheLocation::Registry(Reference::parse(&format!("{addr}/c")).unwrap()),
    )
    .unwrap_err();
    assert!(e.to_string().contains("config is"), "{e}");
    assert!(!log.lock().unwrap().iter().any(|l| l.contains("/blobs/")));

    // 4. a manifest served under a tag with a Docker-Content-Digest it does not have
    let (addr, _) = serve({
        let m = m.clone();
        move |_, _| {
            Response::new(200, m.clone())
                .header("Content-Type", mt::OCI_MANIFEST)
                .header(
                    "Docker-Content-Digest",
                    &format!("sha256:{}", "0".repeat(64)),
                )
        }
    });
    let e = open_cache(
        &c,
        &CacheLocation::Registry(Reference::parse(&format!("{addr}/c")).unwrap()),
    )
    .unwrap_err();
    assert!(matches!(e, OciError::DigestMismatch { .. }), "{e}");

    // 5. an index: a BuildKit cache index; one without our platform; one pointing at an index
    let bk = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": mt::OCI_INDEX,
        "manifests": [{"mediaType": "application/vnd.buildkit.cacheconfig.v0", "digest": sha256(b"x"), "size": 1}],
    }))
    .unwrap();
    let other_platform = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": mt::OCI_INDEX,
        "manifests": [{"mediaType": mt::OCI_MANIFEST, "digest": sha256(&m), "size": m.len(),
                       "platform": {"os": "plan9", "architecture": "mips"}}],
    }))
    .unwrap();
    let p = platform();
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": mt::OCI_INDEX,
        "manifests": [{"mediaType": mt::OCI_INDEX, "digest": sha256(&m), "size": m.len(),
                       "platform": {"os": p.os, "architecture": p.architecture}}],
    }))
    .unwrap();
    let wrong_size = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": mt::OCI_INDEX,
        "manifests": [{"mediaType": mt::OCI_MANIFEST, "digest": sha256(&m), "size": 3,
                       "platform": {"os": p.os, "architecture": p.architecture}}],
    }))
    .unwrap();
    for (doc, says) in [
        (bk, "BuildKit cache"),
        (other_platform, "without a manifest for"),
        (nested, "not an image manifest"),
        (wrong_size, "size of manifest"),
    ] {
        let (addr, _) = tiny(vec![
            ("/v2/c/manifests/latest".into(), mt::OCI_INDEX.into(), doc),
            (
                format!("/v2/c/manifests/{}", sha256(&m)),
                mt::OCI_MANIFEST.into(),
                m.clone(),
            ),
        ]);
        let e = open_cache(
            &c,
            &CacheLocation::Registry(Reference::parse(&format!("{addr}/c")).unwrap()),
        )
        .unwrap_err();
        assert!(e.to_string().contains(says), "{says}: {e}");
    }
    // ...and a good index resolves to the platform's manifest
    let good = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": mt::OCI_INDEX,
        "manifests": [{"mediaType": mt::OCI_MANIFEST, "digest": sha256(&m), "size": m.len(),
                       "platform": {"os": p.os, "architecture": p.architecture}}],
    }))
    .unwrap();
    let (addr, _) = tiny(vec![
        ("/v2/c/manifests/latest".into(), mt::OCI_INDEX.into(), good),
        (
            format!("/v2/c/manifests/{}", sha256(&m)),
            mt::OCI_MANIFEST.into(),
            m.clone(),
        ),
        (
            format!("/v2/c/blobs/{}", sha256(&cb)),
            "application/octet-stream".into(),
            cb.clone(),
        ),
    ]);
    let cache = open_cache(
        &c,
        &CacheLocation::Registry(Reference::parse(&format!("{addr}/c")).unwrap()),
    )
    .unwrap();
    assert_eq!(cache.config, cfg);
}

fn tls_client(password: &str) -> (tempfile::TempDir, RegistryClient) {
    let ca = std::env::var("RBUILD_TEST_TLS_CA")
        .unwrap_or_else(|_| "/tmp/rbuild-test-env/tls/ca.crt".into());
    assert!(
        Path::new(&ca).exists() && std::net::TcpStream::connect(TLS_REG).is_ok(),
        "the TLS test registry on {TLS_REG} (CA {ca}) is not running: run `bash .ci/setup.sh` first"
    );
    let certs = tempfile::tempdir().unwrap();
    fs::create_dir(certs.path().join(TLS_REG)).unwrap();
    fs::copy(&ca, certs.path().join(TLS_REG).join("ca.crt")).unwrap();
    let c = RegistryClient::new(RegistryConfig {
        certs_dir: Some(certs.path().to_path_buf()),
        ..Default::default()
    })
    .unwrap();
    c.set_basic_auth(TLS_REG, "rbuild", password);
    (certs, c)
}

#[test]
fn tls_registry_with_credentials_round_trip_and_wrong_password() {
    ensure_registry();
    let (_c1, good) = tls_client("rbuild-secret");
    let (_t, a) = new_store();
    let data = export_of(vec![layer(&a, "a", b"A"), layer(&a, "b", b"B")]);
    let r = Reference::parse(&format!("{TLS_REG}/{}:1", unique("tls"))).unwrap();
    let to = CacheLocation::Registry(r.clone());
    export(&good, &a, &to, &data).unwrap();
    open_and_fetch_all(&good, &to, &data);
    let (_c2, bad) = tls_client("wrong-password");
    let e = open_cache(&bad, &to).unwrap_err();
    assert!(matches!(e, OciError::Auth { .. }), "{e}");
    assert!(e.to_string().contains("rejected the credentials"), "{e}");
    let e = export(&bad, &a, &to, &data).unwrap_err();
    assert!(matches!(e, OciError::Auth { .. }), "{e}");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn applying_a_layer_keeps_its_tar_only_when_it_matches_the_diff_id() {
    let (_t, a) = new_store();
    let l = layer(&a, "hello.txt", b"hello");
    let tar = ContentStore::read_blob(&a, &l.diff_id).unwrap();
    let gz = gzip(&tar);
    let (_t2, b) = new_store();
    let dest = tempfile::tempdir().unwrap();
    let info = rbuild_oci::apply_layer_verified_keeping_tar(
        &gz[..],
        dest.path(),
        &sha256(&gz),
        &l.diff_id,
        &b,
    )
    .unwrap();
    assert_eq!(info.digest, l.diff_id);
    assert_eq!(info.size, tar.len() as u64);
    assert_eq!(ContentStore::read_blob(&b, &l.diff_id).unwrap(), tar);
    assert_eq!(fs::read(dest.path().join("hello.txt")).unwrap(), b"hello");
    // again (the store has it): same answer
    let dest2 = tempfile::tempdir().unwrap();
    let again =
        rbuild_oci::apply_layer_verified_keeping_tar(&gz[..], dest2.path(), "x", &l.diff_id, &b)
            .unwrap();
    assert_eq!(again, info);
    // a layer claiming another diff_id: error, nothing stored
    let (_t3, c) = new_store();
    let other = key(9);
    let dest3 = tempfile::tempdir().unwrap();
    let e = rbuild_oci::apply_layer_verified_keeping_tar(&gz[..], dest3.path(), "x", &other, &c)
        .unwrap_err();
    assert!(matches!(e, OciError::DiffIdMismatch { .. }), "{e}");
    assert!(c.list_blobs().unwrap().is_empty());
    assert!(!ContentStore::has_blob(&c, &l.diff_id));
    assert!(rbuild_oci::apply_layer_verified_keeping_tar(
        &gz[..],
        dest3.path(),
        "x",
        "not-a-digest",
        &c
    )
    .is_err());
}

#[test]
fn hostile_local_index_and_manifests_are_refused() {
    let c = client();
    let (_t, a) = new_store();
    let data = export_of(vec![layer(&a, "a", b"A")]);
    let w = tempfile::tempdir().unwrap();
    let dir = w.path().join("cache");
    let to = CacheLocation::Local(dir.clone());
    let manifest_digest = export(&c, &a, &to, &data).unwrap().digest;
    let sha = dir.join("blobs/sha256");
    let outside = w.path().join("outside");
    fs::write(&outside, b"precious").unwrap();
    let write_index = |entries: serde_json::Value| {
        fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": entries}))
                .unwrap(),
        )
        .unwrap();
    };
    let entry = |digest: &str, size: usize, name: &str| {
        serde_json::json!({"mediaType": mt::OCI_MANIFEST, "digest": digest, "size": size,
                           "annotations": {mt::ANNOTATION_REF_NAME: name}})
    };
    // an index.json entry whose "digest" is a path
    write_index(serde_json::json!([entry(
        "sha256:../../outside",
        8,
        "latest"
    )]));
    let e = open_cache(&c, &to).unwrap_err();
    assert!(matches!(e, OciError::InvalidCache { .. }), "{e}");
    // a verified manifest whose layer "digest" is a path
    let good: Manifest =
        serde_json::from_slice(&fs::read(sha.join(hex(&manifest_digest))).unwrap()).unwrap();
    let mut evil = good.clone();
    evil.layers[0].digest = "sha256:../../../outside".into();
    let eb = canonical_json("m", &evil).unwrap();
    fs::write(sha.join(hex(&sha256(&eb))), &eb).unwrap();
    write_index(serde_json::json!([entry(&sha256(&eb), eb.len(), "latest")]));
    let e = open_cache(&c, &to).unwrap_err();
    assert!(e.to_string().contains("layer 0: digest"), "{e}");
    // a manifest whose size in index.json is not its size
    write_index(serde_json::json!([entry(&manifest_digest, 3, "latest")]));
    assert!(matches!(
        open_cache(&c, &to).unwrap_err(),
        OciError::DigestMismatch { .. }
    ));
    // an index.json over 4 MiB
    let mut big = b"{\"manifests\":[],\"x\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', (4 << 20) + 10));
    big.extend_from_slice(b"\"}");
    fs::write(dir.join("index.json"), &big).unwrap();
    let e = open_cache(&c, &to).unwrap_err();
    assert!(e.to_string().contains("larger than"), "{e}");
    // an export next to a hostile entry of another name: the entry is dropped, nothing
    // outside the layout is touched, and the cache works again
    write_index(serde_json::json!([
        entry("sha256:../../outside", 8, "other"),
        entry(&sha256(&eb), eb.len(), "evil")
    ]));
    export(&c, &a, &to, &data).unwrap();
    assert_eq!(fs::read(&outside).unwrap(), b"precious");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(blob_names(&dir), referenced(&dir));
    open_and_fetch_all(&c, &to, &data);
}

#[test]
fn concurrent_exports_to_one_directory_lose_nothing() {
    let c = client();
    let (_t, a) = new_store();
    let w = tempfile::tempdir().unwrap();
    let dir = w.path().join("cache");
    let to = CacheLocation::Local(dir.clone());
    let datas: Vec<CacheExport> = (0..4)
        .map(|i| {
            export_of(vec![
                layer(&a, "shared", b"S"),
                layer(&a, "own", format!("layer {i}").as_bytes()),
            ])
        })
        .collect();
    std::thread::scope(|s| {
        for (i, d) in datas.iter().enumerate() {
            let (c, a, to) = (&c, &a, &to);
            s.spawn(move || {
                let opts = CacheExportOpts {
                    tag: format!("t{i}"),
                    ..Default::default()
                };
                export_cache(c, a, to, d, &opts, &NoTransferProgress).unwrap();
            });
        }
    });
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 4);
    assert_eq!(blob_names(&dir), referenced(&dir));
    for (i, d) in datas.iter().enumerate() {
        let cache = ImportedCache::open_tag(&c, &to, &platform(), Some(&format!("t{i}"))).unwrap();
        assert_eq!(cache.config.layers[1].diff_id, d.layers[1].diff_id);
    }
}

#[test]
fn a_half_written_layout_is_taken_over_by_the_next_export() {
    let c = client();
    let (_t, a) = new_store();
    let data = export_of(vec![layer(&a, "a", b"A")]);
    let w = tempfile::tempdir().unwrap();
    let dir = w.path().join("cache");
    let to = CacheLocation::Local(dir.clone());
    // a directory that does not exist yet (a CI cache miss): a plain I/O error naming it
    let e = open_cache(&c, &CacheLocation::Local(w.path().join("nope"))).unwrap_err();
    assert!(
        matches!(&e, OciError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{e}"
    );
    assert_eq!(e.to_string().matches("nope").count(), 1, "{e}");
    // what a first export killed while writing blobs leaves: the marker, blobs, no index.json
    export(&c, &a, &to, &data).unwrap();
    fs::remove_file(dir.join("index.json")).unwrap();
    let orphan = dir.join("blobs/sha256").join(hex_of(0x42));
    fs::write(&orphan, b"left by a killed export").unwrap();
    let e = open_cache(&c, &to).unwrap_err();
    assert!(matches!(e, OciError::NotACache { .. }), "{e}");
    export(&c, &a, &to, &data).unwrap();
    assert!(!orphan.exists());
    assert_eq!(blob_names(&dir), referenced(&dir));
    open_and_fetch_all(&c, &to, &data);
}

#[test]
fn a_blob_tampered_in_the_real_registry_storage_is_refused() {
    let reg = reg();
    let work = std::env::var("RBUILD_TEST_WORK").unwrap_or_else(|_| "/tmp/rbuild-test-env".into());
    let storage = Path::new(&work).join("registry-data/docker/registry/v2/blobs/sha256");
    assert!(
        storage.is_dir(),
        "the test registry's storage {} (from .ci/setup.sh) is missing",
        storage.display()
    );
    let c = client();
    let (_t, a) = new_store();
    // content unique to this run: no other test shares the blob
    let body = format!(
        "tamper me {} {:?}",
        std::process::id(),
        std::time::SystemTime::now()
    )
    .repeat(100);
    let data = export_of(vec![layer(&a, "a", body.as_bytes())]);
    let r = Reference::parse(&format!("{reg}/{}:1", unique("tamper"))).unwrap();
    let to = CacheLocation::Registry(r);
    export(&c, &a, &to, &data).unwrap();
    let cache = open_cache(&c, &to).unwrap();
    let h = hex(&cache.layers[0].digest);
    let file = storage.join(&h[..2]).join(&h).join("data");
    let mut bytes = fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    fs::write(&file, &bytes).unwrap();
    let (_t2, b) = new_store();
    let e = cache
        .fetch_layer(&c, &b, 0, &NoTransferProgress)
        .unwrap_err();
    assert!(matches!(e, OciError::DigestMismatch { .. }), "{e}");
    assert!(
        b.list_blobs().unwrap().is_empty(),
        "nothing unverified stored"
    );
    bytes[last] ^= 0x55;
    fs::write(&file, &bytes).unwrap();
    cache.fetch_layer(&c, &b, 0, &NoTransferProgress).unwrap();
}
