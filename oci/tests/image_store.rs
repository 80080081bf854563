//! Local image store (OCI layout on the content store) and the OCI / docker archive exporters,
//! read back by skopeo and umoci. The image is busybox pulled from the test registry plus a layer
//! made by write_layer (with a whiteout deleting a busybox file).
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::{ensure_registry, sha256, REG};
use rbuild_oci::types::media_types as mt;
use rbuild_oci::{
    export_docker_archive, export_oci_archive, write_layer, Descriptor, ImageStore, LayerOpts,
    Platform, Reference, RegistryClient, RegistryConfig,
};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// busybox layers + one rbuild layer; returns (config bytes, layers).
fn build_image(store: &rbuild_cache::Store) -> (Vec<u8>, Vec<Descriptor>) {
    ensure_registry();
    let c = RegistryClient::new(RegistryConfig::default()).unwrap();
    let r = Reference::parse(&format!("{REG}/library/busybox:latest")).unwrap();
    let res = c.resolve(&r, &Platform::host()).unwrap();
    for l in &res.layers {
        c.fetch_blob(&r, l, store).unwrap();
    }
    // upper dir: a new file, a new dir, and a whiteout of /etc/group
    let up = tempfile::tempdir().unwrap();
    fs::create_dir_all(up.path().join("app")).unwrap();
    fs::write(up.path().join("app/hello.txt"), b"hello from rbuild\n").unwrap();
    fs::create_dir_all(up.path().join("etc")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        up.path().join("etc/group").as_path(),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
    let mut layer = Vec::new();
    write_layer(
        up.path(),
        &mut layer,
        &LayerOpts {
            source_date_epoch: Some(0),
        },
    )
    .unwrap();
    let info = store.write_blob(&layer).unwrap();
    let mut layers = res.layers.clone();
    layers.push(Descriptor::new(
        mt::OCI_LAYER_TAR,
        info.digest.clone(),
        info.size,
    ));
    let mut cfg: serde_json::Value = serde_json::from_slice(&res.config).unwrap();
    cfg["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(info.digest.clone().into());
    cfg["history"] = serde_json::Value::Array(vec![]);
    (serde_json::to_vec(&cfg).unwrap(), layers)
}

#[test]
fn image_store_tag_list_get_and_skopeo_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = rbuild_cache::Store::open(dir.path()).unwrap();
    let (config, layers) = build_image(&store);
    let images = ImageStore::open(&store).unwrap();
    assert_eq!(images.layout_dir(), dir.path().join("layout-v1"));
    assert_eq!(
        fs::read_link(dir.path().join("layout-v1/blobs")).unwrap(),
        Path::new("../blobs-v1")
    );
    let mut ann = BTreeMap::new();
    ann.insert(
        "org.opencontainers.image.title".to_string(),
        "test".to_string(),
    );
    let desc = images.put_image(&config, &layers, &ann).unwrap();
    assert_eq!(desc.media_type, mt::OCI_MANIFEST);
    // reproducible
    assert_eq!(images.put_image(&config, &layers, &ann).unwrap(), desc);
    let bytes = store.read_blob(&desc.digest).unwrap();
    assert_eq!(sha256(&bytes), desc.digest);
    let text = String::from_utf8(bytes).unwrap();
    assert!(!text.contains(' ') || !text.contains(": "), "compact JSON");
    assert!(
        text.starts_with(r#"{"annotations":"#),
        "sorted keys: {text}"
    );

    let app = Reference::parse("app:v1").unwrap();
    let other = Reference::parse(&format!("{REG}/x:2")).unwrap();
    images.tag(&app, &desc).unwrap();
    images.tag(&other, &desc).unwrap();
    images.tag(&app, &desc).unwrap(); // re-tag replaces, no duplicate
    let list = images.list().unwrap();
    let names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        vec![format!("{REG}/x:2").as_str(), "docker.io/library/app:v1"]
    );
    assert_eq!(images.get(&app).unwrap().unwrap().digest, desc.digest);
    let m = images.read_manifest(&desc).unwrap();
    assert_eq!(m.layers, layers);
    assert_eq!(m.config.media_type, mt::OCI_CONFIG);
    assert_eq!(m.annotations, ann);

    // skopeo reads the local store as an OCI layout
    let layout = images.layout_dir();
    let out = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:docker.io/library/app:v1", layout.display())));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Digest"], desc.digest.as_str());
    assert_eq!(v["Layers"].as_array().unwrap().len(), layers.len());
    let out = run(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}:{REG}/x:2", layout.display())));
    assert_eq!(sha256(out.as_bytes()), desc.digest);

    assert!(images.untag(&other).unwrap());
    assert!(!images.untag(&other).unwrap());
    assert!(images.get(&other).unwrap().is_none());
    assert_eq!(images.list().unwrap().len(), 1);
    // a second handle sees the same state
    let again = ImageStore::open(&store).unwrap();
    assert_eq!(again.list().unwrap().len(), 1);
}

#[test]
fn oci_and_docker_archives_are_read_by_skopeo_and_umoci() {
    let dir = tempfile::tempdir().unwrap();
    let store = rbuild_cache::Store::open(dir.path()).unwrap();
    let (config, layers) = build_image(&store);
    let images = ImageStore::open(&store).unwrap();
    let desc = images
        .put_image(&config, &layers, &BTreeMap::new())
        .unwrap();
    let names = vec![Reference::parse("app:v1").unwrap()];
    let work = tempfile::tempdir().unwrap();

    // OCI archive: deterministic
    let oci = work.path().join("image-oci.tar");
    let mut a = Vec::new();
    export_oci_archive(&store, &desc, &names, &mut a).unwrap();
    let mut b = Vec::new();
    export_oci_archive(&store, &desc, &names, &mut b).unwrap();
    assert!(a == b, "oci archive is deterministic");
    fs::write(&oci, &a).unwrap();
    let listing = run(Command::new("tar").arg("-tf").arg(&oci));
    let entries: Vec<&str> = listing.lines().collect();
    // fixed order: blob dirs, layers, config, manifest, then the layout files
    assert_eq!(entries[..2], ["blobs/", "blobs/sha256/"]);
    assert_eq!(entries[entries.len() - 2..], ["index.json", "oci-layout"]);

    let out = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", oci.display())));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Digest"], desc.digest.as_str());
    run(Command::new("skopeo").arg("inspect").arg(format!(
        "oci-archive:{}:docker.io/library/app:v1",
        oci.display()
    )));

    // umoci unpacks it (layers applied: busybox + our file + whiteout of /etc/group)
    let layout = work.path().join("layout");
    fs::create_dir(&layout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&oci)
        .arg("-C")
        .arg(&layout));
    let bundle = work.path().join("bundle");
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:docker.io/library/app:v1", layout.display()))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        fs::read(rootfs.join("app/hello.txt")).unwrap(),
        b"hello from rbuild\n"
    );
    assert!(rootfs.join("bin/busybox").is_file());
    assert!(rootfs.join("etc/passwd").is_file());
    assert!(
        !rootfs.join("etc/group").exists(),
        "whiteout applied by umoci"
    );

    // no names: still a valid single-image archive
    let mut c = Vec::new();
    export_oci_archive(&store, &desc, &[], &mut c).unwrap();
    let unnamed = work.path().join("unnamed.tar");
    fs::write(&unnamed, &c).unwrap();
    run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", unnamed.display())));

    // docker archive
    let docker = work.path().join("image-docker.tar");
    let mut d = Vec::new();
    export_docker_archive(&store, &desc, &names, &mut d).unwrap();
    let mut d2 = Vec::new();
    export_docker_archive(&store, &desc, &names, &mut d2).unwrap();
    assert!(d == d2, "docker archive is deterministic");
    fs::write(&docker, &d).unwrap();
    let mut ar = tar::Archive::new(&d[..]);
    let mut manifest_json = None;
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some("manifest.json") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            manifest_json = Some(s);
        }
    }
    let mj: serde_json::Value = serde_json::from_str(&manifest_json.unwrap()).unwrap();
    assert_eq!(mj[0]["RepoTags"][0], "app:v1");
    assert_eq!(mj[0]["Layers"].as_array().unwrap().len(), layers.len());
    let out = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("docker-archive:{}", docker.display())));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Layers"].as_array().unwrap().len(), layers.len());
    assert_eq!(v["Os"], "linux");
    // full read of every blob: copy it into an OCI layout and unpack with umoci
    let copied = work.path().join("copied");
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("docker-archive:{}", docker.display()))
        .arg(format!("oci:{}:t", copied.display())));
    let bundle2 = work.path().join("bundle2");
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:t", copied.display()))
        .arg(&bundle2));
    assert_eq!(
        fs::read(bundle2.join("rootfs/app/hello.txt")).unwrap(),
        b"hello from rbuild\n"
    );
    assert!(!bundle2.join("rootfs/etc/group").exists());
    // and the docker archive is also an OCI layout
    run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", docker.display())));
    let _ = store.has_blob(&desc.digest);
}

#[test]
fn concurrent_tagging_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = rbuild_cache::Store::open(dir.path()).unwrap();
    let images = ImageStore::open(&store).unwrap();
    let layer = store.write_blob(b"not really a tar").unwrap();
    let desc = images
        .put_image(
            b"{}",
            &[Descriptor::new(mt::OCI_LAYER_TAR, layer.digest, layer.size)],
            &BTreeMap::new(),
        )
        .unwrap();
    let mut handles = vec![];
    for i in 0..8 {
        // separate handles and separate Store instances, as separate processes would have
        let root = dir.path().to_path_buf();
        let desc = desc.clone();
        handles.push(std::thread::spawn(move || {
            let store = rbuild_cache::Store::open(&root).unwrap();
            let images = ImageStore::open(&store).unwrap();
            for j in 0..5 {
                images
                    .tag(&Reference::parse(&format!("app{i}:v{j}")).unwrap(), &desc)
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(images.list().unwrap().len(), 40);
    // missing blobs are refused
    let missing = Descriptor::new(mt::OCI_MANIFEST, sha256(b"missing"), 7);
    assert!(images
        .tag(&Reference::parse("x").unwrap(), &missing)
        .is_err());
    assert!(images
        .put_image(b"{}", &[missing], &BTreeMap::new())
        .is_err());
}
