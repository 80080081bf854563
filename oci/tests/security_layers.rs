//! Hostile layers and archives against the layer applier (`apply_layer`, `apply_layer_verified`)
//! and the `ADD` extractor (`extract_archive`): path escapes, links, whiteouts, devices, bombs,
//! truncation, odd entry kinds, sparse files, diff_id lies. Every attack either fails or stays
//! inside the destination, and a canary directory beside the destination is checked unchanged
//! after each one. Needs root (device nodes, chown, trusted.* xattrs); fails loudly otherwise.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::tars::T;
use rbuild_oci::{apply_layer, apply_layer_verified, extract_archive, OciError};
use tar::EntryType as E;

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the layer security tests need root (mknod, chown, trusted xattrs); run them as root"
    );
}

/// A destination with a canary directory beside it (`base/dest`, `base/host`).
struct Scene {
    _base: tempfile::TempDir,
    dest: PathBuf,
    host: PathBuf,
}

fn scene() -> Scene {
    let base = tempfile::tempdir().unwrap();
    let dest = base.path().join("dest");
    let host = base.path().join("host");
    fs::create_dir(&dest).unwrap();
    fs::create_dir_all(host.join("sub")).unwrap();
    fs::write(host.join("canary"), "host data").unwrap();
    fs::write(host.join("sub/inner"), "inner").unwrap();
    Scene {
        _base: base,
        dest,
        host,
    }
}

/// Everything observable about a tree: type, mode, owner, content, link target, xattrs.
fn observe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in walk(root) {
        let md = fs::symlink_metadata(&e).unwrap();
        let rel = e.strip_prefix(root).unwrap().display().to_string();
        let what = if md.is_file() {
            format!("{:?}", fs::read(&e).unwrap())
        } else if md.file_type().is_symlink() {
            fs::read_link(&e).unwrap().display().to_string()
        } else {
            String::new()
        };
        out.insert(
            rel,
            format!(
                "{:o} {}:{} {} {what}",
                md.mode(),
                md.uid(),
                md.gid(),
                md.nlink()
            ),
        );
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = vec![dir.to_path_buf()];
    if fs::symlink_metadata(dir)
        .map(|m| m.is_dir())
        .unwrap_or(false)
    {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for n in names {
            v.extend(walk(&n));
        }
    }
    v
}

/// Apply `layer` with each applier on a fresh scene; the canary must be unchanged after each.
/// Returns the results (layer, archive).
fn attack(name: &str, layer: &[u8]) -> Vec<Result<(), OciError>> {
    let mut results = Vec::new();
    for mode in 0..2 {
        let s = scene();
        let before = observe(&s.host);
        let r = if mode == 0 {
            apply_layer(layer, &s.dest)
        } else {
            extract_archive(layer, &s.dest, None)
        };
        assert_eq!(
            observe(&s.host),
            before,
            "{name} (mode {mode}, result {r:?}) changed the host canary"
        );
        results.push(r);
    }
    results
}

fn assert_refused(name: &str, layer: &[u8]) {
    for r in attack(name, layer) {
        assert!(r.is_err(), "{name} was accepted");
    }
}

#[test]
fn path_escapes_are_refused_or_contained() {
    require_root();
    // A fixed host directory the absolute attacks aim at.
    let fixed = tempfile::tempdir().unwrap();
    fs::write(fixed.path().join("canary"), "fixed").unwrap();
    let abs = fixed.path().display().to_string();
    let before = observe(fixed.path());
    let mut n = 0;

    let mut t = T::new();
    t.file("../host/canary", b"pwned");
    assert_refused("dotdot", &t.done());
    let mut t = T::new();
    t.file("a/../../host/canary", b"pwned");
    assert_refused("inner dotdot", &t.done());
    n += 2;

    // Absolute paths are relative to the layer root: contained.
    let mut t = T::new();
    t.file(&format!("{abs}/canary"), b"pwned");
    for r in attack("absolute", &t.done()) {
        assert!(r.is_ok(), "absolute path: {r:?}");
    }
    n += 1;

    for (name, build) in [
        ("symlink to absolute dir then write", {
            let mut t = T::new();
            t.symlink("l", &abs).file("l/canary", b"pwned");
            t.done()
        }),
        ("symlink to ../ then write", {
            let mut t = T::new();
            t.symlink("l", "../host").file("l/canary", b"pwned");
            t.done()
        }),
        ("symlink chain", {
            let mut t = T::new();
            t.symlink("a", "b")
                .symlink("b", &abs)
                .file("a/canary", b"pwned");
            t.done()
        }),
        ("symlink loop", {
            let mut t = T::new();
            t.symlink("a", "b").symlink("b", "a").file("a/x", b"pwned");
            t.done()
        }),
        ("hardlink to absolute host file", {
            let mut t = T::new();
            t.hardlink("h", &format!("{abs}/canary"));
            t.done()
        }),
        ("hardlink through an escaping symlink", {
            let mut t = T::new();
            t.symlink("l", &abs).hardlink("h", "l/canary");
            t.done()
        }),
        ("hardlink with ..", {
            let mut t = T::new();
            t.hardlink("h", "../host/canary");
            t.done()
        }),
        ("whiteout with ..", {
            let mut t = T::new();
            t.file("../.wh.canary", b"");
            t.done()
        }),
        ("whiteout through an escaping symlink", {
            let mut t = T::new();
            t.symlink("l", &abs).file("l/.wh.canary", b"");
            t.done()
        }),
        ("opaque marker through an escaping symlink", {
            let mut t = T::new();
            t.symlink("l", &abs).file("l/.wh..wh..opq", b"");
            t.done()
        }),
        ("whiteout of ..", {
            let mut t = T::new();
            t.file(".wh...", b"");
            t.done()
        }),
    ] {
        let rs = attack(name, &build);
        // The layer applier must refuse these; the ADD extractor keeps .wh.* as plain names
        // (contained either way).
        if !name.starts_with("whiteout of")
            && !name.contains("opaque")
            && !name.contains("whiteout through")
        {
            assert!(rs[0].is_err(), "{name}: accepted by the layer applier");
        }
        n += 1;
    }

    // Symlink, then a file at the same name: the symlink itself is replaced, never followed.
    let mut t = T::new();
    t.symlink("c", &format!("{abs}/canary")).file("c", b"pwned");
    for r in attack("symlink then file over it", &t.done()) {
        assert!(r.is_ok(), "{r:?}");
    }
    n += 1;
    assert_eq!(observe(fixed.path()), before, "the fixed host dir changed");
    assert!(n >= 14);
}

#[test]
fn odd_whiteouts_devices_duplicates_and_names_are_contained() {
    require_root();
    // Opaque marker at the root, a whiteout of a missing path, devices, setuid, duplicates.
    let mut t = T::new();
    t.file(".wh..wh..opq", b"")
        .file("nothere/.wh.x", b"")
        .dev("kmsg", E::Char, 1, 11, 0o666)
        .dev("loop0", E::Block, 7, 0, 0o660);
    t.raw("suid", E::Regular, 0o4755, (0, 0), None, b"#!/bin/sh", &[]);
    t.file("dup", b"1")
        .dir("dup/")
        .file("dup/x", b"2")
        .file("dup", b"3");
    let layer = t.done();
    for r in attack("odd whiteouts, devices, duplicates", &layer) {
        r.unwrap();
    }
    let s = scene();
    apply_layer(&layer[..], &s.dest).unwrap();
    let k = fs::symlink_metadata(s.dest.join("kmsg")).unwrap();
    assert!(
        k.file_type().is_char_device(),
        "device kept in the layer dir"
    );
    assert_eq!(rustix::fs::major(k.rdev()), 1);
    assert_eq!(
        fs::read(s.dest.join("dup")).unwrap(),
        b"3",
        "last entry wins"
    );
    assert_eq!(
        fs::symlink_metadata(s.dest.join("suid")).unwrap().mode() & 0o7777,
        0o4755
    );

    // Very long names and deep nesting: extracted or refused cleanly, never a panic.
    let mut t = T::new();
    let long = ["x".repeat(200), "y".repeat(200), "z".repeat(200)].join("/");
    t.raw(
        "short",
        E::Regular,
        0o644,
        (0, 0),
        None,
        b"long",
        &[("path", long.as_bytes())],
    );
    let too_long = "n".repeat(300);
    t.raw(
        "short2",
        E::Regular,
        0o644,
        (0, 0),
        None,
        b"x",
        &[("path", too_long.as_bytes())],
    );
    let rs = attack("long names", &t.done());
    assert!(rs[0].is_err(), "a 300-byte component cannot exist");
    let s = scene();
    let mut t = T::new();
    t.raw(
        "short",
        E::Regular,
        0o644,
        (0, 0),
        None,
        b"long",
        &[("path", long.as_bytes())],
    );
    apply_layer(&t.done()[..], &s.dest).unwrap();
    assert_eq!(fs::read(s.dest.join(&long)).unwrap(), b"long");

    let deep = "d/".repeat(3000) + "leaf";
    let mut t = T::new();
    t.raw(
        "deep",
        E::Regular,
        0o644,
        (0, 0),
        None,
        b"deep",
        &[("path", deep.as_bytes())],
    );
    let _ = attack("deep nesting", &t.done());
}

#[test]
fn truncated_and_corrupt_streams_fail_cleanly() {
    require_root();
    let mut t = T::new();
    t.file("big", &vec![7u8; 10_000]).file("after", b"x");
    let full = t.done();
    for cut in [100, 511, 512, 700, 5000, 10_500] {
        let rs = attack("truncated", &full[..cut]);
        assert!(rs[0].is_err(), "cut at {cut} accepted");
    }
    // A gzip stream cut short.
    let gz = gzip(&full);
    assert!(attack("truncated gzip", &gz[..gz.len() / 2])[0].is_err());
    // A header whose checksum is wrong.
    let mut bad = full.clone();
    bad[0] ^= 1;
    assert!(attack("bad checksum", &bad)[0].is_err());
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Peak resident memory of this process (VmHWM), in KiB.
fn peak_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

/// A gzip stream of a tar whose first header is `kind` with `size` bytes of zeros.
fn bomb(kind: u8, size: u64) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::new(kind));
    h.as_old_mut().name[..4].copy_from_slice(b"bomb");
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h.set_cksum();
    e.write_all(h.as_bytes()).unwrap();
    if kind == b'x' {
        e.write_all(b"999999999 comment=").unwrap();
    }
    let zeros = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        e.write_all(&zeros[..n]).unwrap();
        left -= n as u64;
    }
    e.finish().unwrap()
}

#[test]
fn bombs_are_bounded() {
    require_root();
    // Extension headers the parser would read into memory whole: refused at the header.
    for kind in [b'x', b'L', b'K', b'g'] {
        let layer = bomb(kind, 300 << 20);
        let before = peak_kib();
        let rs = attack("extension header bomb", &layer);
        assert!(rs.iter().all(|r| r.is_err()), "{} accepted", kind as char);
        let grown = peak_kib().saturating_sub(before);
        assert!(
            grown < 100 << 10,
            "{}: peak memory grew by {grown} KiB",
            kind as char
        );
    }
    // A file bomb onto a small filesystem: disk full is a clean error, the canary unchanged.
    let s = scene();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&s.dest)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    let layer = bomb(b'0', 64 << 20);
    assert!(layer.len() < 1 << 20, "the bomb is small: {}", layer.len());
    let before = observe(&s.host);
    let err = apply_layer(&layer[..], &s.dest).unwrap_err();
    let _ = std::process::Command::new("umount").arg(&s.dest).status();
    assert!(err.to_string().contains("No space left"), "{err}");
    assert_eq!(observe(&s.host), before);
}

#[test]
fn entry_kinds_are_extracted_or_refused_never_dropped() {
    require_root();
    // GNU sparse ('S'), multivolume ('M'), old GNU long names ('N'), volume label ('V'),
    // unknown ('Z'): refused with the entry named.
    for kind in [b'S', b'M', b'N', b'V', b'Z'] {
        let mut t = T::new();
        t.typed("weird", kind, 0, b"").file("after", b"x");
        for r in attack("odd entry kind", &t.done()) {
            let e = r.expect_err("odd kind accepted");
            let m = e.to_string();
            assert!(m.contains("weird") || m.contains("sparse"), "{m}");
        }
    }
    // A pax global header is not a file: skipped, the rest extracted.
    let mut t = T::new();
    t.typed("pax_global_header", b'g', 0, b"")
        .file("after", b"x");
    let s = scene();
    apply_layer(&t.done()[..], &s.dest).unwrap();
    assert_eq!(fs::read(s.dest.join("after")).unwrap(), b"x");
}

/// The content of a 1 MiB sparse file with "hello" at 0 and "world" at 512 KiB.
fn sparse_expected() -> Vec<u8> {
    let mut v = vec![0u8; 1 << 20];
    v[..5].copy_from_slice(b"hello");
    v[512 << 10..(512 << 10) + 5].copy_from_slice(b"world");
    v
}

fn check_sparse(dest: &Path) {
    let p = dest.join("dir/sparse.bin");
    assert_eq!(fs::read(&p).unwrap(), sparse_expected());
    let md = fs::metadata(&p).unwrap();
    assert!(
        md.blocks() * 512 < 512 << 10,
        "holes kept: {} blocks",
        md.blocks()
    );
    assert!(!dest.join("dir/GNUSparseFile.0").exists());
}

#[test]
fn pax_sparse_files_are_extracted_with_their_holes() {
    require_root();
    let off = (512u64 << 10).to_string();
    // PAX 1.0: the map leads the data.
    let mut map = format!("2\n0\n5\n{off}\n5\n").into_bytes();
    map.resize(512, 0);
    map.extend_from_slice(b"helloworld");
    let mut t = T::new();
    t.raw(
        "dir/GNUSparseFile.0/sparse.bin",
        E::Regular,
        0o644,
        (0, 0),
        None,
        &map,
        &[
            ("GNU.sparse.major", b"1"),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.name", b"dir/sparse.bin"),
            ("GNU.sparse.realsize", b"1048576"),
        ],
    );
    let v10 = t.done();
    // PAX 0.1: the map in a record.
    let map01 = format!("0,5,{off},5");
    let mut t = T::new();
    t.raw(
        "dir/GNUSparseFile.0/sparse.bin",
        E::Regular,
        0o644,
        (0, 0),
        None,
        b"helloworld",
        &[
            ("GNU.sparse.major", b"0"),
            ("GNU.sparse.minor", b"1"),
            ("GNU.sparse.name", b"dir/sparse.bin"),
            ("GNU.sparse.size", b"1048576"),
            ("GNU.sparse.map", map01.as_bytes()),
        ],
    );
    let v01 = t.done();
    // PAX 0.0: repeated offset/numbytes records.
    let mut t = T::new();
    t.raw(
        "dir/sparse.bin",
        E::Regular,
        0o644,
        (0, 0),
        None,
        b"helloworld",
        &[
            ("GNU.sparse.size", b"1048576"),
            ("GNU.sparse.numblocks", b"2"),
            ("GNU.sparse.offset", b"0"),
            ("GNU.sparse.numbytes", b"5"),
            ("GNU.sparse.offset", off.as_bytes()),
            ("GNU.sparse.numbytes", b"5"),
        ],
    );
    let v00 = t.done();
    for layer in [&v10, &v01, &v00] {
        for r in attack("sparse", layer) {
            r.unwrap();
        }
        let s = scene();
        apply_layer(&layer[..], &s.dest).unwrap();
        check_sparse(&s.dest);
        let s = scene();
        extract_archive(&layer[..], &s.dest, None).unwrap();
        check_sparse(&s.dest);
    }
    // A lying map: chunks beyond the size, or not accounting for the data.
    for (map, size) in [
        (format!("0,5,{off},5"), "1000"),
        ("0,3".to_string(), "1048576"),
    ] {
        let mut t = T::new();
        t.raw(
            "dir/GNUSparseFile.0/sparse.bin",
            E::Regular,
            0o644,
            (0, 0),
            None,
            b"helloworld",
            &[
                ("GNU.sparse.major", b"0"),
                ("GNU.sparse.minor", b"1"),
                ("GNU.sparse.name", b"dir/sparse.bin"),
                ("GNU.sparse.size", size.as_bytes()),
                ("GNU.sparse.map", map.as_bytes()),
            ],
        );
        assert_refused("bad sparse map", &t.done());
    }
}

#[test]
fn gnu_tar_sparse_archives_pax_extracted_gnu_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src/dir");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("sparse.bin"), sparse_expected()).unwrap();
    // Punch the holes with GNU tar's own view: rewrite it sparse.
    let st = std::process::Command::new("fallocate")
        .args(["--dig-holes"])
        .arg(src.join("sparse.bin"))
        .status()
        .unwrap();
    assert!(st.success(), "fallocate --dig-holes (util-linux) is needed");
    for (fmt, ok) in [
        (&["--format=pax", "--sparse-version=1.0"][..], true),
        (&["--format=pax", "--sparse-version=0.1"][..], true),
        (&["--format=gnu"][..], false),
    ] {
        let out = std::process::Command::new("tar")
            .arg("--sparse")
            .args(fmt)
            .arg("-cf")
            .arg("-")
            .arg("-C")
            .arg(dir.path().join("src"))
            .arg("dir")
            .output()
            .unwrap();
        assert!(out.status.success(), "GNU tar {fmt:?}");
        let s = scene();
        let r = extract_archive(&out.stdout[..], &s.dest, None);
        if ok {
            r.unwrap();
            check_sparse(&s.dest);
        } else {
            let e = r.unwrap_err();
            assert!(e.to_string().contains("GNU sparse"), "{fmt:?}: {e}");
        }
    }
}

#[test]
fn diff_id_is_verified_over_the_uncompressed_stream() {
    require_root();
    let mut t = T::new();
    t.file("bin/sh", b"#!/real");
    let layer = t.done();
    let real = format!("sha256:{}", hex_digest(&layer));
    let gz = gzip(&layer);
    let s = scene();
    apply_layer_verified(&gz[..], &s.dest, "sha256:blob", &real).unwrap();
    let lie = format!("sha256:{}", "0".repeat(64));
    let s = scene();
    let err = apply_layer_verified(&gz[..], &s.dest, "sha256:blob", &lie).unwrap_err();
    assert!(matches!(err, OciError::DiffIdMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("layers from manifest don't match image configuration")
            && msg.contains(&real)
            && msg.contains(&lie),
        "{msg}"
    );
    // Trailing bytes after the end-of-archive blocks count too (they are in the diff_id).
    let mut padded = layer.clone();
    padded.extend_from_slice(&[0u8; 1024]);
    let s = scene();
    assert!(apply_layer_verified(&padded[..], &s.dest, "sha256:blob", &real).is_err());
}

fn hex_digest(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

#[test]
fn device_markers_round_trip_and_cannot_be_forged_by_a_layer() {
    require_root();
    // A marker file (what an unprivileged unpack leaves) is written back as the device.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("full");
    fs::File::create(&f).unwrap();
    fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o0)).unwrap();
    rustix::fs::setxattr(
        &f,
        rbuild_cache::overlay::DEVICE_XATTR,
        b"c 1 7 666",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let mut tar_bytes = Vec::new();
    rbuild_oci::write_layer(dir.path(), &mut tar_bytes, &Default::default()).unwrap();
    let mut a = tar::Archive::new(&tar_bytes[..]);
    let mut found = false;
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some("full") {
            let h = e.header();
            assert_eq!(h.entry_type(), E::Char);
            assert_eq!(h.device_major().unwrap(), Some(1));
            assert_eq!(h.device_minor().unwrap(), Some(7));
            assert_eq!(h.mode().unwrap(), 0o666);
            let pax = e.pax_extensions().unwrap();
            assert!(pax.is_none(), "no rbuild xattr in the tar");
            found = true;
        }
    }
    assert!(found);
    // A layer carrying the marker xattr itself: dropped (only rbuild's unpacker sets it).
    let mut t = T::new();
    t.raw(
        "f",
        E::Regular,
        0o644,
        (0, 0),
        None,
        b"",
        &[("SCHILY.xattr.user.rbuild.device", b"c 1 11 666")],
    );
    let s = scene();
    apply_layer(&t.done()[..], &s.dest).unwrap();
    assert_eq!(rbuild_oci::device_marker_of(&s.dest.join("f")), None);
}
