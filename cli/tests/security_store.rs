//! The store and the images in it against hostile images and careless copies, through the real
//! CLI: diff_id poisoning (pull, FROM, `--build-context docker-image://`, `rbuild pull`,
//! `rbuild load`), the store's permissions (other host users reach nothing), local exports
//! that must never rewrite the host, a store copied without whiteouts/xattrs, and rootless
//! builds of images carrying device nodes. Needs root, the test registry and the test users;
//! fails loudly without them.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{require_env, require_tools, test_user, Project, Run, REGISTRY};
use rbuild_oci::{ContentStore, Descriptor, Platform, Reference, RegistryClient, RegistryConfig};

fn client() -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        user_agent: "rbuild-test".into(),
        ..Default::default()
    })
    .unwrap()
}

/// One layer entry: path, kind, data, mode, (major, minor).
type Entry<'a> = (&'a str, tar::EntryType, &'a [u8], u32, (u32, u32));

/// A layer tar from entries.
fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, data, mode, (maj, min)) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(*kind);
        h.set_path(path).unwrap();
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(*maj).unwrap();
            h.set_device_minor(*min).unwrap();
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn sha256(data: &[u8]) -> String {
    rbuild_oci::digest::sha256_digest(data)
}

/// An image in a scratch store: busybox's layers (unless `replace_base`) plus `extra` layers
/// (uncompressed tars) whose config diff_ids are `claims` (the real digest where `None`).
struct Made {
    _dir: tempfile::TempDir,
    store: rbuild_cache::Store,
    manifest: Descriptor,
    blobs: Vec<(String, Vec<u8>)>,
}

fn make_image(extra: &[Vec<u8>], claims: &[Option<String>], replace_base: bool) -> Made {
    let dir = tempfile::tempdir().unwrap();
    let store = rbuild_cache::Store::open(dir.path()).unwrap();
    let c = client();
    let base = c
        .resolve(
            &Reference::parse(&format!("{REGISTRY}/library/busybox:latest")).unwrap(),
            &Platform::host(),
        )
        .unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(&base.config).unwrap();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut blobs = Vec::new();
    if !replace_base {
        let r = Reference::parse(&format!("{REGISTRY}/library/busybox:latest")).unwrap();
        for l in &base.layers {
            c.fetch_blob(&r, l, &store).unwrap();
            blobs.push((l.digest.clone(), store.read_blob(&l.digest).unwrap()));
        }
        layers = base.layers.clone();
        diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap().clone();
    }
    for (l, claim) in extra.iter().zip(claims) {
        let (d, s) = store.put_blob(l).unwrap();
        blobs.push((d.clone(), l.clone()));
        layers.push(Descriptor::new(
            "application/vnd.oci.image.layer.v1.tar",
            d,
            s,
        ));
        diff_ids.push(claim.clone().unwrap_or_else(|| sha256(l)).into());
    }
    config["rootfs"]["diff_ids"] = diff_ids.into();
    config["history"] = serde_json::json!([]);
    let config = serde_json::to_vec(&config).unwrap();
    let (cd, cs) = store.put_blob(&config).unwrap();
    blobs.push((cd.clone(), config.clone()));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": layers,
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let (md, ms) = store.put_blob(&manifest).unwrap();
    blobs.push((md.clone(), manifest));
    Made {
        _dir: dir,
        store,
        manifest: Descriptor::new("application/vnd.oci.image.manifest.v1+json", md, ms),
        blobs,
    }
}

fn push(m: &Made, name: &str) {
    client()
        .push_image(
            &m.store,
            &m.manifest,
            &Reference::parse(name).unwrap(),
            &Default::default(),
        )
        .unwrap();
}

/// An OCI layout archive of `m` (index.json naming it `name`).
fn oci_archive(m: &Made, name: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_path(path).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": m.manifest.media_type, "digest": m.manifest.digest, "size": m.manifest.size,
        "annotations": {"org.opencontainers.image.ref.name": name}}]});
    add(&mut b, "index.json", &serde_json::to_vec(&index).unwrap());
    for (d, data) in &m.blobs {
        add(&mut b, &format!("blobs/sha256/{}", &d[7..]), data);
    }
    b.into_inner().unwrap()
}

/// busybox's (only) layer diff_id.
fn busybox_diff_id() -> String {
    let base = client()
        .resolve(
            &Reference::parse(&format!("{REGISTRY}/library/busybox:latest")).unwrap(),
            &Platform::host(),
        )
        .unwrap();
    let config: serde_json::Value = serde_json::from_slice(&base.config).unwrap();
    config["rootfs"]["diff_ids"][0]
        .as_str()
        .unwrap()
        .to_string()
}

const MISMATCH: &str = "layers from manifest don't match image configuration";

fn assert_poison_refused(r: &Run, what: &str) {
    assert!(!r.out.status.success(), "{what} accepted:\n{}", r.all());
    assert!(r.all().contains(MISMATCH), "{what}:\n{}", r.all());
}

#[test]
fn diff_id_poisoning_is_refused_everywhere_and_busybox_stays_real() {
    require_env();
    let real = busybox_diff_id();
    let evil = layer(&[
        ("bin/", tar::EntryType::Directory, b"", 0o755, (0, 0)),
        ("bin/sh", tar::EntryType::Regular, b"#!evil", 0o755, (0, 0)),
        ("poisoned", tar::EntryType::Regular, b"evil", 0o644, (0, 0)),
    ]);
    let made = make_image(&[evil], &[Some(real.clone())], true);
    let name = format!("{REGISTRY}/evil/poison:latest");
    push(&made, &name);

    // busybox is in the store first: the lying image must not get its snapshot either, not
    // even on a second try (its blob stays in the content store after the first refusal).
    let p = Project::new("FROM busybox\nRUN true\n");
    p.build(&[]).ok();
    p.file("Dockerfile", &format!("FROM {name}\nRUN true\n"));
    assert_poison_refused(&p.build(&[]), "FROM");
    assert_poison_refused(&p.build(&[]), "FROM, again");
    p.file("Dockerfile", "FROM base\nRUN true\n");
    assert_poison_refused(
        &p.build(&["--build-context", &format!("base=docker-image://{name}")]),
        "--build-context docker-image://",
    );
    let pulled = Run {
        out: p.cmd(&["pull", &name]).output().unwrap(),
    };
    assert_poison_refused(&pulled, "rbuild pull");
    let arch = p.path().join("evil.tar");
    fs::write(&arch, oci_archive(&made, "evil:1")).unwrap();
    let loaded = Run {
        out: p
            .cmd(&["load", "-i", arch.to_str().unwrap()])
            .output()
            .unwrap(),
    };
    assert_poison_refused(&loaded, "rbuild load");
    // The same lie as a classic docker archive (manifest.json, config, <id>/layer.tar).
    let mut b = tar::Builder::new(Vec::new());
    let cfg = made
        .blobs
        .iter()
        .find(|(_, d)| d.starts_with(b"{") && String::from_utf8_lossy(d).contains("diff_ids"))
        .unwrap()
        .1
        .clone();
    let evil_blob = made.blobs[0].1.clone();
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": "config.json", "RepoTags": ["evil:2"], "Layers": ["abc/layer.tar"]}]))
    .unwrap();
    for (path, data) in [
        ("manifest.json", &manifest),
        ("config.json", &cfg),
        ("abc/layer.tar", &evil_blob),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_path(path).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    let arch = p.path().join("evil-docker.tar");
    fs::write(&arch, b.into_inner().unwrap()).unwrap();
    let loaded = Run {
        out: p
            .cmd(&["load", "-i", arch.to_str().unwrap()])
            .output()
            .unwrap(),
    };
    assert_poison_refused(&loaded, "rbuild load (docker archive)");
    let images = p.cmd(&["images"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&images.stdout).contains("evil"),
        "nothing was tagged"
    );

    // The same store then runs the real busybox.
    p.file(
        "Dockerfile",
        "FROM busybox\nRUN test ! -e /poisoned && /bin/sh -c 'echo real > /real' && busybox true\n",
    );
    p.build(&[]).ok();
}

#[test]
fn blob_size_and_manifest_mismatches_leave_nothing_in_the_store() {
    require_env();
    require_tools(&["curl"]);
    // A doctored manifest: the layer descriptor's size is wrong (its digest is right).
    let l = layer(&[("f", tar::EntryType::Regular, b"data", 0o644, (0, 0))]);
    let made = make_image(std::slice::from_ref(&l), &[None], false);
    let name = format!("{REGISTRY}/evil/size:latest");
    // Push the honest image, then overwrite the tag with a manifest claiming another size.
    push(&made, &name);
    let mut m: serde_json::Value =
        serde_json::from_slice(&made.store.read_blob(&made.manifest.digest).unwrap()).unwrap();
    let n = m["layers"].as_array().unwrap().len();
    m["layers"][n - 1]["size"] = (l.len() as u64 - 1).into();
    let body = serde_json::to_vec(&m).unwrap();
    let st = Command::new("curl")
        .args(["-sf", "-X", "PUT", "-H"])
        .arg("Content-Type: application/vnd.oci.image.manifest.v1+json")
        .arg("--data-binary")
        .arg("@-")
        .arg(format!("http://{REGISTRY}/v2/evil/size/manifests/latest"))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&body)?;
            c.wait()
        })
        .unwrap();
    assert!(st.success(), "curl PUT manifest");
    let p = Project::new(&format!("FROM {name}\nRUN true\n"));
    let r = p.build(&[]).fails();
    assert!(
        r.all().contains("digest mismatch") || r.all().contains("size"),
        "{}",
        r.all()
    );
    // No snapshot of the bad layer, no layer blob of the wrong size.
    let bad = sha256(&l);
    assert!(!p
        .store
        .path()
        .join("blobs-v1/sha256")
        .join(&bad[7..])
        .exists());
    // A manifest whose bytes do not match the digest asked for: refused.
    let pinned = format!("{REGISTRY}/evil/size@{}", sha256(b"not this manifest"));
    p.file("Dockerfile", &format!("FROM {pinned}\nRUN true\n"));
    p.build(&[]).fails();
}

/// Run `args` as `user` from a shell (setpriv itself may still open the program as root).
fn as_user(user: &common::TestUser, args: &[&str]) -> std::process::Output {
    let mut c = Command::new("sh");
    c.arg("-c").arg("exec \"$0\" \"$@\"").args(args);
    user.wrap(&c).output().unwrap()
}

/// The first committed snapshot dir holding `rel`.
fn snapshot_with(store: &Path, rel: &str) -> std::path::PathBuf {
    for e in fs::read_dir(store.join("snapshots-v1")).unwrap() {
        let p = e.unwrap().path().join("fs").join(rel);
        if fs::symlink_metadata(&p).is_ok() {
            return p;
        }
    }
    panic!("no snapshot holds {rel}");
}

#[test]
fn the_store_is_private_to_its_owner() {
    require_env();
    let other = test_user(common::SINGLE_USER);
    let p = Project::new(
        "FROM busybox\nRUN cp /bin/busybox /suidsh && chmod 4755 /suidsh && echo secret > /secret && chmod 644 /secret\n",
    );
    // A store root that is not there yet is made 0700 (no window: mkdir with that mode).
    let fresh = p.store.path().join("nested/store");
    let r = p
        .cmd(&["build", "."])
        .env("RBUILD_ROOT", &fresh)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(fs::metadata(&fresh).unwrap().mode() & 0o7777, 0o700);
    // An existing world-readable store is made private at open.
    fs::set_permissions(&fresh, fs::Permissions::from_mode(0o755)).unwrap();
    p.cmd(&["images"])
        .env("RBUILD_ROOT", &fresh)
        .output()
        .unwrap();
    assert_eq!(fs::metadata(&fresh).unwrap().mode() & 0o7777, 0o700);
    // The path leading to the store is open to others (as /var/lib is): only the store
    // itself stops them.
    let nested = p.store.path().join("nested");
    for d in [p.store.path(), nested.as_path()] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }

    // A pulled layer with device nodes (c 1 11 kmsg, b 7 0 loop0) in the same store.
    p.file(
        "Dockerfile",
        &format!("FROM {}\nRUN true\n", devnodes_image()),
    );
    let r = p
        .cmd(&["build", "."])
        .env("RBUILD_ROOT", &fresh)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let kmsg = snapshot_with(&fresh, "dev/kmsg");
    let loop0 = snapshot_with(&fresh, "dev/loop0");
    assert!(fs::symlink_metadata(&kmsg)
        .unwrap()
        .file_type()
        .is_char_device());
    let suid = snapshot_with(&fresh, "suidsh");
    let secret = snapshot_with(&fresh, "secret");
    assert_eq!(fs::metadata(&suid).unwrap().mode() & 0o7777, 0o4755);
    for args in [
        vec![suid.to_str().unwrap(), "id", "-u"],
        vec!["cat", secret.to_str().unwrap()],
        vec!["ls", fresh.join("snapshots-v1").to_str().unwrap()],
        vec!["cat", fresh.join("index-v1.db").to_str().unwrap()],
        vec!["cat", kmsg.to_str().unwrap()],
        vec![
            "dd",
            &format!("if={}", loop0.display()),
            "of=/dev/null",
            "count=1",
        ],
    ] {
        let out = as_user(&other, &args);
        assert!(!out.status.success(), "{args:?} worked as {}", other.name);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The host is unchanged: the secret is still the only copy, nothing ran as root.
    assert_eq!(fs::read_to_string(&secret).unwrap(), "secret\n");
}

#[test]
fn a_rootless_store_is_private_too() {
    require_env();
    let owner = test_user(common::RANGED_USER);
    let other = test_user(common::SINGLE_USER);
    let dir = tempfile::tempdir().unwrap();
    common::open_up(dir.path());
    let ctx = dir.path().join("ctx");
    fs::create_dir(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN echo secret > /secret\n",
    )
    .unwrap();
    common::open_up(&ctx);
    let store = dir.path().join("store");
    fs::create_dir(&store).unwrap();
    owner.own(&store);
    fs::set_permissions(&store, fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
    c.args(["build", "."])
        .env("RBUILD_ROOT", &store)
        .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
        .env("RBUILD_PROGRESS", "plain")
        .current_dir(&ctx);
    let out = owner.wrap(&c).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::metadata(&store).unwrap().mode() & 0o7777, 0o700);
    let secret = snapshot_with(&store, "secret");
    let o = as_user(&other, &["cat", secret.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("Permission denied"));
    // And a store another user owns gets a hint about the store, not "needs root".
    let mut c2 = Command::new(env!("CARGO_BIN_EXE_rbuild"));
    c2.args(["build", "."])
        .env("RBUILD_ROOT", store.join("sub"))
        .env("RBUILD_PROGRESS", "plain")
        .current_dir(&ctx);
    let o = other.wrap(&c2).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("RBUILD_ROOT")
            && err.contains("cannot use the store")
            && err.contains("owned by"),
        "{err}"
    );
    assert!(!err.contains("needs root"), "{err}");
}

/// An image like debian's: device nodes in /dev, plus files, on busybox.
fn devnodes_image() -> String {
    let l = layer(&[
        ("dev/", tar::EntryType::Directory, b"", 0o755, (0, 0)),
        ("dev/full", tar::EntryType::Char, b"", 0o666, (1, 7)),
        ("dev/null", tar::EntryType::Char, b"", 0o666, (1, 3)),
        ("dev/zero", tar::EntryType::Char, b"", 0o666, (1, 5)),
        ("dev/random", tar::EntryType::Char, b"", 0o666, (1, 8)),
        ("dev/urandom", tar::EntryType::Char, b"", 0o666, (1, 9)),
        ("dev/tty", tar::EntryType::Char, b"", 0o666, (5, 0)),
        ("dev/kmsg", tar::EntryType::Char, b"", 0o644, (1, 11)),
        ("dev/loop0", tar::EntryType::Block, b"", 0o660, (7, 0)),
        ("etc/", tar::EntryType::Directory, b"", 0o755, (0, 0)),
        (
            "etc/devtest",
            tar::EntryType::Regular,
            b"devnodes\n",
            0o644,
            (0, 0),
        ),
        ("usr/", tar::EntryType::Directory, b"", 0o755, (0, 0)),
        (
            "usr/suid",
            tar::EntryType::Regular,
            b"#!/bin/sh\n",
            0o4755,
            (0, 0),
        ),
        ("opt/devs/", tar::EntryType::Directory, b"", 0o755, (0, 0)),
        ("opt/devs/full", tar::EntryType::Char, b"", 0o666, (1, 7)),
        ("opt/devs/kmsg", tar::EntryType::Char, b"", 0o644, (1, 11)),
        ("opt/devs/loop0", tar::EntryType::Block, b"", 0o660, (7, 0)),
    ]);
    let made = make_image(&[l], &[None], false);
    let name = format!("{REGISTRY}/test/devnodes:latest");
    push(&made, &name);
    name
}

#[test]
fn rootless_builds_unpack_device_nodes_and_exports_keep_them() {
    require_env();
    require_tools(&["tar"]);
    let image = devnodes_image();
    let user = test_user(common::RANGED_USER);
    let dir = tempfile::tempdir().unwrap();
    common::open_up(dir.path());
    let ctx = dir.path().join("ctx");
    fs::create_dir(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {image}\nRUN cat /etc/devtest && test -c /dev/null && echo x > /dev/null && echo hi > /hi\n\
             RUN chown 0:0 /opt/devs/full /opt/devs/loop0 && chmod 600 /opt/devs/kmsg\n"
        ),
    )
    .unwrap();
    common::open_up(&ctx);
    let store = dir.path().join("store");
    fs::create_dir(&store).unwrap();
    user.own(&store);
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    user.own(&out_dir);
    let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
    c.args(["build", "-o"])
        .arg(format!("type=oci,dest={}/img.tar", out_dir.display()))
        .arg(".")
        .env("RBUILD_ROOT", &store)
        .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
        .env("RBUILD_PROGRESS", "plain")
        .current_dir(&ctx);
    let out = user.wrap(&c).output().unwrap();
    assert!(
        out.status.success(),
        "rootless build of an image with device nodes:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The unpacked nodes are marker files in the rootless store.
    let full = snapshot_with(&store, "dev/full");
    assert!(fs::metadata(&full).unwrap().is_file());
    assert_eq!(fs::metadata(&full).unwrap().mode() & 0o7777, 0);
    // The RUN layer, written from the store, carries the devices again for root consumers
    // (kmsg with the mode the step gave it).
    let listing = layer_listing(&out_dir.join("img.tar"));
    for want in [
        "opt/devs/full c 1,7 0666",
        "opt/devs/loop0 b 7,0 0660",
        "opt/devs/kmsg c 1,11 0600",
    ] {
        assert!(
            listing.iter().any(|l| l == want),
            "{want} missing from\n{listing:#?}"
        );
    }
}

/// `path kind maj,min mode` of every device entry in every layer of an OCI archive.
fn layer_listing(archive: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut a = tar::Archive::new(fs::File::open(archive).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().display().to_string();
        if !p.starts_with("blobs/") {
            continue;
        }
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        let plain: Vec<u8> = if data.starts_with(&[0x1f, 0x8b]) {
            let mut v = Vec::new();
            flate2::read::MultiGzDecoder::new(&data[..])
                .read_to_end(&mut v)
                .unwrap();
            v
        } else {
            data
        };
        let mut inner = tar::Archive::new(&plain[..]);
        let Ok(entries) = inner.entries() else {
            continue;
        };
        for ie in entries.flatten() {
            let h = ie.header();
            let k = match h.entry_type() {
                tar::EntryType::Char => "c",
                tar::EntryType::Block => "b",
                _ => continue,
            };
            out.push(format!(
                "{} {k} {},{} {:04o}",
                ie.path().unwrap().display(),
                h.device_major().unwrap().unwrap(),
                h.device_minor().unwrap().unwrap(),
                h.mode().unwrap()
            ));
        }
    }
    out
}

fn tree_state(root: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in walkdir(root) {
        let md = fs::symlink_metadata(&e).unwrap();
        v.push(format!(
            "{} {:o} {}:{} {}",
            e.display(),
            md.mode(),
            md.uid(),
            md.gid(),
            md.mtime()
        ));
    }
    v
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v = vec![dir.to_path_buf()];
    if fs::symlink_metadata(dir).unwrap().is_dir() {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for n in names {
            v.extend(walkdir(&n));
        }
    }
    v
}

#[test]
fn local_exports_never_rewrite_the_host() {
    require_env();
    let image = devnodes_image();
    let p = Project::new(&format!("FROM {image}\nRUN echo new > /etc/x\n"));
    let host_state =
        ["/etc/passwd", "/etc/group", "/bin", "/"].map(|f| (f, fs::symlink_metadata(f).unwrap()));

    // dest=/ (and spellings of it) is refused before anything is built, naming the flag.
    for dest in ["/", "//", "/.", "/tmp/.."] {
        let r = p.build(&["-o", &format!("type=local,dest={dest}")]);
        assert_eq!(r.code(), Some(2), "{dest}: {}", r.all());
        assert!(
            r.all().contains("--output type=local") && r.all().contains("refusing"),
            "{}",
            r.all()
        );
    }
    // The store and its parents too.
    let store = p.store.path().to_str().unwrap().to_string();
    for dest in [store.clone(), format!("{store}/tmp"), "/tmp".into()] {
        let r = p
            .cmd(&["build", "-o", &format!("type=local,dest={dest}"), "."])
            .output()
            .unwrap();
        if dest == "/tmp" {
            // /tmp holds the test's store: refused as a parent of the store.
            assert!(!r.status.success());
        } else {
            assert_eq!(r.status.code(), Some(2), "{dest}");
        }
    }
    // type=tar onto a directory is refused.
    p.build(&["-o", "type=tar,dest=/"]).fails();
    for (f, before) in &host_state {
        let now = fs::symlink_metadata(f).unwrap();
        assert_eq!(
            (
                now.mode(),
                now.mtime(),
                now.ino(),
                now.file_type().is_symlink()
            ),
            (
                before.mode(),
                before.mtime(),
                before.ino(),
                before.file_type().is_symlink()
            ),
            "{f} changed"
        );
    }

    // A destination holding a symlink where the image has a directory: never followed.
    let hostdir = tempfile::tempdir().unwrap();
    fs::write(hostdir.path().join("canary"), "host").unwrap();
    let before = tree_state(hostdir.path());
    let dest = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(hostdir.path(), dest.path().join("etc")).unwrap();
    let r = p.build(&["-o", &format!("type=local,dest={}", dest.path().display())]);
    assert!(
        !r.out.status.success(),
        "followed etc -> host dir:\n{}",
        r.all()
    );
    assert!(
        r.all().contains("etc") && r.all().contains("not a directory"),
        "{}",
        r.all()
    );
    assert_eq!(tree_state(hostdir.path()), before, "the host dir changed");
    assert!(fs::symlink_metadata(dest.path().join("etc"))
        .unwrap()
        .file_type()
        .is_symlink());

    // A non-empty destination: existing dirs keep their metadata, unrelated files stay, the
    // image's files are written; set-id bits dropped, devices usable by their owner only.
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path();
    fs::create_dir(d.join("usr")).unwrap();
    fs::set_permissions(d.join("usr"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(d.join("usr"), Some(1234), Some(1234)).unwrap();
    fs::write(d.join("keep"), "mine").unwrap();
    fs::write(d.join("etc_placeholder"), "x").unwrap();
    let usr_before = fs::metadata(d.join("usr")).unwrap();
    p.build(&["-o", &format!("type=local,dest={}", d.display())])
        .ok();
    let usr = fs::metadata(d.join("usr")).unwrap();
    // (Its mtime moves as entries are added inside, as with any writer.)
    assert_eq!(
        (usr.mode(), usr.uid(), usr.gid()),
        (usr_before.mode(), usr_before.uid(), usr_before.gid()),
        "an existing directory was re-moded or re-owned"
    );
    assert_eq!(fs::read_to_string(d.join("keep")).unwrap(), "mine");
    assert_eq!(fs::read_to_string(d.join("etc/x")).unwrap(), "new\n");
    assert_eq!(
        fs::read_to_string(d.join("etc/devtest")).unwrap(),
        "devnodes\n"
    );
    assert_eq!(
        fs::metadata(d.join("usr/suid")).unwrap().mode() & 0o7777,
        0o755
    );
    let kmsg = fs::symlink_metadata(d.join("dev/kmsg")).unwrap();
    assert!(kmsg.file_type().is_char_device());
    assert_eq!(kmsg.mode() & 0o777, 0o600, "devices are owner-only");
    assert_eq!(
        fs::symlink_metadata(d.join("dev/loop0")).unwrap().mode() & 0o777,
        0o600
    );
    // Exporting again into the same dest works (files replaced, never followed).
    p.build(&["-o", &format!("type=local,dest={}", d.display())])
        .ok();

    // type=tar keeps the image as it is (a file nobody executes).
    let t = p.path().join("root.tar");
    p.build(&["-o", &format!("type=tar,dest={}", t.display())])
        .ok();
    let mut a = tar::Archive::new(fs::File::open(&t).unwrap());
    let mut seen = Vec::new();
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        seen.push(format!(
            "{} {:?} {:o}",
            e.path().unwrap().display(),
            h.entry_type(),
            h.mode().unwrap()
        ));
    }
    assert!(
        seen.iter().any(|s| s == "usr/suid Regular 4755"),
        "{seen:#?}"
    );
    assert!(seen.iter().any(|s| s == "dev/kmsg Char 644"), "{seen:#?}");
    assert!(seen.iter().any(|s| s == "etc/x Regular 644"), "{seen:#?}");
}

#[test]
fn a_layer_that_turns_a_symlink_into_a_directory_exports_as_it_builds() {
    require_env();
    // Layer 1: /a -> x (symlink) and /x/; layer 2: /a/b, a file under a path that is a symlink
    // below. The build (overlay) sees a directory /a with b; the export must too.
    let l1 = layer(&[
        ("x/", tar::EntryType::Directory, b"", 0o755, (0, 0)),
        ("a", tar::EntryType::Symlink, b"", 0o777, (0, 0)),
    ]);
    let l1 = {
        // tar::Header::set_link_name for the symlink target
        let mut b = tar::Builder::new(Vec::new());
        let mut a = tar::Archive::new(&l1[..]);
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            let mut h = e.header().clone();
            if h.entry_type() == tar::EntryType::Symlink {
                h.set_link_name("x").unwrap();
                h.set_cksum();
            }
            b.append(&h, &b""[..]).unwrap();
        }
        b.into_inner().unwrap()
    };
    let l2 = layer(&[("a/b", tar::EntryType::Regular, b"in a", 0o644, (0, 0))]);
    let made = make_image(&[l1, l2], &[None, None], false);
    let name = format!("{REGISTRY}/test/symdir:latest");
    push(&made, &name);
    let p = Project::new(&format!(
        "FROM {name}\nRUN test -d /a && ! test -L /a && test \"$(cat /a/b)\" = 'in a' && ! test -e /x/b && echo built-as-dir > /seen\n"
    ));
    let dest = tempfile::tempdir().unwrap();
    p.build(&["-o", &format!("type=local,dest={}", dest.path().display())])
        .ok();
    let a = fs::symlink_metadata(dest.path().join("a")).unwrap();
    assert!(a.is_dir(), "exported /a is not the directory the build saw");
    assert_eq!(fs::read_to_string(dest.path().join("a/b")).unwrap(), "in a");
    assert!(!dest.path().join("x/b").exists());
    let t = p.path().join("r.tar");
    p.build(&["-o", &format!("type=tar,dest={}", t.display())])
        .ok();
}

#[test]
fn a_store_copied_without_whiteouts_or_xattrs_is_refused() {
    require_env();
    let p = Project::new("FROM busybox\nRUN rm /bin/ls\n");
    p.build(&[]).ok();
    assert!(p.store.path().join("sentinel-v1/whiteout").exists());
    for how in ["cp -r", "zip-like (devices dropped)"] {
        let copy = tempfile::tempdir().unwrap();
        let dst = copy.path().join("store");
        let st = Command::new("cp")
            .arg("-r")
            .arg(p.store.path())
            .arg(&dst)
            .status()
            .unwrap();
        assert!(st.success());
        if how.starts_with("zip") {
            fs::remove_file(dst.join("sentinel-v1/whiteout")).unwrap();
        }
        let r = p
            .cmd(&["build", "."])
            .env("RBUILD_ROOT", &dst)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{how}: the copied store was used");
        assert!(
            err.contains("copied or restored without its overlay markers")
                && err.contains("--cache-to"),
            "{how}: {err}"
        );
    }
    // `cp -a` keeps everything: that copy works.
    let copy = tempfile::tempdir().unwrap();
    let dst = copy.path().join("store");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(p.store.path())
        .arg(&dst)
        .status()
        .unwrap()
        .success());
    let r = p
        .cmd(&["build", "."])
        .env("RBUILD_ROOT", &dst)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // The original is fine.
    p.build(&[]).ok();
}
