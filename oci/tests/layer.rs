//! Layer extraction (overlay format, safety) and deterministic layer creation, checked on the
//! real filesystem (needs root: mknod, chown, trusted.* xattrs) and with GNU tar as reader.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

mod common;

use common::tars::T;
use rbuild_oci::{apply_layer, write_layer, LayerOpts, OciError};
use rustix::fs::XattrFlags;

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    match rustix::fs::lgetxattr(p, name, &mut buf[..]) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

fn is_whiteout(p: &Path) -> bool {
    fs::symlink_metadata(p)
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

#[test]
fn apply_produces_overlay_format() {
    let mut t = T::new();
    t.dir("a/");
    t.raw(
        "a/f",
        tar::EntryType::Regular,
        0o4750,
        (1000, 2000),
        None,
        b"hello",
        &[
            ("SCHILY.xattr.user.color", b"blue"),
            ("SCHILY.xattr.trusted.overlay.evil", b"y"),
        ],
    );
    t.symlink("a/l", "f").hardlink("a/h", "a/f");
    t.file(".wh.gone", b"");
    t.dir("opq/")
        .file("opq/.wh..wh..opq", b"")
        .file("opq/new", b"n");
    t.file("sub/.wh.deleted", b"");
    t.raw(
        "dev/null",
        tar::EntryType::Char,
        0o666,
        (0, 0),
        None,
        b"",
        &[],
    );
    t.raw(
        "dev/fifo",
        tar::EntryType::Fifo,
        0o600,
        (0, 0),
        None,
        b"",
        &[],
    );
    t.raw(
        "./dotted/x",
        tar::EntryType::Regular,
        0o600,
        (0, 0),
        None,
        b"x",
        &[],
    );
    let layer = t.done();

    let dest = tempfile::tempdir().unwrap();
    apply_layer(&layer[..], dest.path()).unwrap();
    let d = dest.path();
    let f = fs::symlink_metadata(d.join("a/f")).unwrap();
    assert_eq!(fs::read(d.join("a/f")).unwrap(), b"hello");
    assert_eq!(f.mode() & 0o7777, 0o4750, "setuid kept after chown");
    assert_eq!((f.uid(), f.gid()), (1000, 2000));
    assert_eq!(f.mtime(), 1_600_000_000);
    assert_eq!(
        xattr(&d.join("a/f"), "user.color").as_deref(),
        Some(&b"blue"[..])
    );
    assert_eq!(
        xattr(&d.join("a/f"), "trusted.overlay.evil"),
        None,
        "overlay xattrs from layers are dropped"
    );
    assert_eq!(fs::read_link(d.join("a/l")).unwrap(), Path::new("f"));
    assert_eq!(
        fs::symlink_metadata(d.join("a/h")).unwrap().ino(),
        f.ino(),
        "hardlink"
    );
    assert!(is_whiteout(&d.join("gone")), "whiteout becomes char 0:0");
    assert!(!d.join(".wh.gone").exists());
    assert!(is_whiteout(&d.join("sub/deleted")));
    assert_eq!(
        xattr(&d.join("opq"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!d.join("opq/.wh..wh..opq").exists());
    assert_eq!(fs::read(d.join("opq/new")).unwrap(), b"n");
    let null = fs::symlink_metadata(d.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(
        (
            rustix::fs::major(null.rdev()),
            rustix::fs::minor(null.rdev())
        ),
        (1, 3)
    );
    assert!(fs::symlink_metadata(d.join("dev/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(fs::read(d.join("dotted/x")).unwrap(), b"x");
    assert_eq!(
        fs::symlink_metadata(d.join("a")).unwrap().mtime(),
        1_600_000_000,
        "dir mtime restored after children"
    );
}

#[test]
fn apply_gzip_and_zstd_and_refuse_xz() {
    let mut t = T::new();
    t.file("hello.txt", b"hi");
    let layer = t.done();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer).unwrap();
    let gz = gz.finish().unwrap();
    let dest = tempfile::tempdir().unwrap();
    apply_layer(&gz[..], dest.path()).unwrap();
    assert_eq!(fs::read(dest.path().join("hello.txt")).unwrap(), b"hi");

    let zst = zstd::encode_all(&layer[..], 3).unwrap();
    let dest = tempfile::tempdir().unwrap();
    apply_layer(&zst[..], dest.path()).unwrap();
    assert_eq!(fs::read(dest.path().join("hello.txt")).unwrap(), b"hi");

    let xz = [0xfdu8, b'7', b'z', b'X', b'Z', 0, 0, 0];
    let err = apply_layer(&xz[..], dest.path()).unwrap_err();
    assert!(matches!(err, OciError::UnsupportedCompression(_)));
    assert!(err.to_string().contains("xz"), "{err}");
}

#[test]
fn malicious_layers_do_not_escape() {
    let outer = tempfile::tempdir().unwrap();
    let victim_dir = outer.path().join("victim");
    fs::create_dir(&victim_dir).unwrap();
    fs::write(victim_dir.join("passwd"), b"original").unwrap();
    let dest = outer.path().join("dest");
    fs::create_dir(&dest).unwrap();

    // `..` is refused and nothing is written next to dest.
    let layer = T::new().file("../escaped", b"x").done();
    let err = apply_layer(&layer[..], &dest).unwrap_err();
    assert!(matches!(err, OciError::UnsafePath { .. }), "{err}");
    assert!(!outer.path().join("escaped").exists());
    let layer = T::new().file("a/../../escaped2", b"x").done();
    assert!(apply_layer(&layer[..], &dest).is_err());
    assert!(!outer.path().join("escaped2").exists());

    // Absolute paths are taken relative to the layer root.
    let abs = format!("{}/abs-file", outer.path().display());
    let layer = T::new().file(&abs, b"x").done();
    apply_layer(&layer[..], &dest).unwrap();
    assert!(!Path::new(&abs).exists());
    assert!(dest.join(abs.trim_start_matches('/')).exists());

    // A symlink to a host directory, then a write through it: refused (the target does not
    // exist inside dest), host untouched.
    let victim_abs = victim_dir.to_str().unwrap().to_string();
    let host_untouched = || {
        assert_eq!(fs::read(victim_dir.join("passwd")).unwrap(), b"original");
        assert_eq!(
            fs::metadata(victim_dir.join("passwd")).unwrap().nlink(),
            1,
            "no hardlink to host file"
        );
        assert_eq!(fs::read_dir(&victim_dir).unwrap().count(), 1);
    };
    let layer = T::new()
        .symlink("evil", &victim_abs)
        .file("evil/passwd", b"pwned")
        .done();
    let err = apply_layer(&layer[..], &dest).unwrap_err();
    assert!(matches!(err, OciError::UnsafePath { .. }), "{err}");
    host_untouched();

    // When the symlink target exists inside dest, the write lands there (in-root resolution).
    fs::create_dir_all(dest.join(victim_abs.trim_start_matches('/'))).unwrap();
    apply_layer(&layer[..], &dest).unwrap();
    let inside = dest.join(victim_abs.trim_start_matches('/')).join("passwd");
    assert_eq!(fs::read(&inside).unwrap(), b"pwned");
    host_untouched();

    // `..` inside a symlink target is clamped to dest.
    let layer = T::new()
        .symlink("rel", "../../../../../../..")
        .file("rel/created-by-layer", b"pwned")
        .done();
    apply_layer(&layer[..], &dest).unwrap();
    assert!(!Path::new("/created-by-layer").exists());
    assert!(!outer.path().join("created-by-layer").exists());
    assert_eq!(fs::read(dest.join("created-by-layer")).unwrap(), b"pwned");

    // A file entry over a symlink replaces the symlink, never writes through it.
    let layer = T::new()
        .symlink("file-link", &format!("{victim_abs}/passwd"))
        .file("file-link", b"pwned")
        .done();
    apply_layer(&layer[..], &dest).unwrap();
    assert!(fs::symlink_metadata(dest.join("file-link"))
        .unwrap()
        .file_type()
        .is_file());
    host_untouched();

    // A hardlink to an absolute host path resolves inside dest.
    let layer = T::new()
        .hardlink("hl", &format!("{victim_abs}/passwd"))
        .done();
    apply_layer(&layer[..], &dest).unwrap();
    assert_eq!(
        fs::symlink_metadata(dest.join("hl")).unwrap().ino(),
        fs::metadata(&inside).unwrap().ino()
    );
    host_untouched();
    let layer = T::new().hardlink("hl2", "/etc/passwd").done();
    assert!(apply_layer(&layer[..], &dest).is_err());
    host_untouched();

    // A whiteout name that tries to climb out.
    let layer = T::new().file("x/.wh...", b"").done();
    assert!(apply_layer(&layer[..], &dest).is_err());
}

/// Build an upper dir exercising every feature; returns its path holder.
fn make_upper() -> tempfile::TempDir {
    let up = tempfile::tempdir().unwrap();
    let u = up.path();
    fs::create_dir_all(u.join("etc/app")).unwrap();
    fs::write(u.join("etc/app/conf"), b"conf\n").unwrap();
    fs::set_permissions(u.join("etc/app/conf"), fs::Permissions::from_mode(0o640)).unwrap();
    rustix::fs::chown(
        u.join("etc/app/conf").as_path(),
        Some(rustix::fs::Uid::from_raw(1000)),
        Some(rustix::fs::Gid::from_raw(1001)),
    )
    .unwrap();
    fs::write(u.join("bin-tool"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(u.join("bin-tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(u.join("bin-tool"), u.join("bin-tool-link")).unwrap();
    std::os::unix::fs::symlink("etc/app/conf", u.join("conf-link")).unwrap();
    rustix::fs::setxattr(
        u.join("bin-tool").as_path(),
        "user.note",
        b"v1",
        XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::setxattr(
        u.join("bin-tool").as_path(),
        "security.capability",
        &[
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
        XattrFlags::empty(),
    )
    .unwrap();
    // whiteout and opaque dir
    rustix::fs::mknodat(
        rustix::fs::CWD,
        u.join("removed").as_path(),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
    fs::create_dir(u.join("opaque")).unwrap();
    fs::write(u.join("opaque/kept"), b"k").unwrap();
    rustix::fs::setxattr(
        u.join("opaque").as_path(),
        "trusted.overlay.opaque",
        b"y",
        XattrFlags::empty(),
    )
    .unwrap();
    // a real device
    rustix::fs::mknodat(
        rustix::fs::CWD,
        u.join("zero").as_path(),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 5),
    )
    .unwrap();
    // long names (> 100 bytes) and a long symlink target
    let long_dir = u.join("d".repeat(60)).join("e".repeat(60));
    fs::create_dir_all(&long_dir).unwrap();
    fs::write(long_dir.join("f".repeat(90)), b"long").unwrap();
    std::os::unix::fs::symlink("t".repeat(150), u.join("long-target")).unwrap();
    // fixed mtimes for everything
    let set = |p: &Path, t: i64| {
        let ts = rustix::fs::Timespec {
            tv_sec: t,
            tv_nsec: 0,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            p,
            &rustix::fs::Timestamps {
                last_access: ts,
                last_modification: ts,
            },
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    };
    let mut all = vec![];
    walk(u, &mut all);
    for p in all.iter().rev() {
        set(p, 1_700_000_000);
    }
    up
}

fn walk(p: &Path, out: &mut Vec<std::path::PathBuf>) {
    let mut names: Vec<_> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for n in names {
        out.push(n.clone());
        if fs::symlink_metadata(&n).unwrap().is_dir() {
            walk(&n, out);
        }
    }
}

fn layer_bytes(upper: &Path, opts: &LayerOpts) -> Vec<u8> {
    let mut out = Vec::new();
    write_layer(upper, &mut out, opts).unwrap();
    out
}

#[test]
fn write_layer_is_deterministic() {
    let up = make_upper();
    let opts = LayerOpts::default();
    let a = layer_bytes(up.path(), &opts);
    // read everything (moves atime), then set atimes explicitly
    let mut all = vec![];
    walk(up.path(), &mut all);
    for p in &all {
        if fs::symlink_metadata(p).unwrap().is_file() {
            let _ = fs::read(p).unwrap();
        }
        let now = rustix::fs::Timespec {
            tv_sec: 1_800_000_000,
            tv_nsec: 5,
        };
        let keep = rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            p.as_path(),
            &rustix::fs::Timestamps {
                last_access: now,
                last_modification: keep,
            },
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
    let b = layer_bytes(up.path(), &opts);
    assert!(a == b, "byte-identical across runs and atime changes");

    // SOURCE_DATE_EPOCH clamps mtimes
    let c = layer_bytes(
        up.path(),
        &LayerOpts {
            source_date_epoch: Some(1_000_000),
        },
    );
    let mut ar = tar::Archive::new(&c[..]);
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        assert!(e.header().mtime().unwrap() <= 1_000_000);
    }
    assert_ne!(a, c);

    // Entry order, whiteouts, opaque marker, hardlink, xattrs.
    let mut ar = tar::Archive::new(&a[..]);
    let mut names = vec![];
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        match name.as_str() {
            "bin-tool-link" => {
                assert_eq!(e.header().entry_type(), tar::EntryType::Link);
                assert_eq!(
                    e.link_name().unwrap().unwrap().to_str().unwrap(),
                    "bin-tool"
                );
            }
            "bin-tool" => {
                let exts: Vec<(String, Vec<u8>)> = e
                    .pax_extensions()
                    .unwrap()
                    .unwrap()
                    .map(|x| {
                        let x = x.unwrap();
                        (x.key().unwrap().to_string(), x.value_bytes().to_vec())
                    })
                    .collect();
                assert!(
                    exts.iter()
                        .any(|(k, v)| k == "SCHILY.xattr.user.note" && v == b"v1"),
                    "{exts:?}"
                );
                assert!(exts
                    .iter()
                    .any(|(k, _)| k == "SCHILY.xattr.security.capability"));
                assert_eq!(e.header().mode().unwrap(), 0o4755);
                assert_eq!(e.header().username_bytes(), Some(&b""[..]));
            }
            "opaque/" => {
                let exts = e.pax_extensions().unwrap();
                assert!(exts.is_none(), "trusted.overlay.* never written");
            }
            "etc/app/conf" => {
                assert_eq!(e.header().uid().unwrap(), 1000);
                assert_eq!(e.header().gid().unwrap(), 1001);
            }
            _ => {}
        }
        names.push(name);
    }
    let long = format!("{}/{}/{}", "d".repeat(60), "e".repeat(60), "f".repeat(90));
    let expected = vec![
        "bin-tool".to_string(),
        "bin-tool-link".into(),
        "conf-link".into(),
        format!("{}/", "d".repeat(60)),
        format!("{}/{}/", "d".repeat(60), "e".repeat(60)),
        long,
        "etc/".into(),
        "etc/app/".into(),
        "etc/app/conf".into(),
        "long-target".into(),
        "opaque/".into(),
        "opaque/.wh..wh..opq".into(),
        "opaque/kept".into(),
        ".wh.removed".into(),
        "zero".into(),
    ];
    assert_eq!(names, expected);
}

#[test]
fn round_trip_write_apply_write() {
    let up = make_upper();
    let a = layer_bytes(up.path(), &LayerOpts::default());
    let dest = tempfile::tempdir().unwrap();
    apply_layer(&a[..], dest.path()).unwrap();
    let d = dest.path();
    // everything that matters survived
    let m = fs::symlink_metadata(d.join("etc/app/conf")).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
        (0o640, 1000, 1001, 1_700_000_000)
    );
    assert_eq!(
        fs::symlink_metadata(d.join("bin-tool")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(
        xattr(&d.join("bin-tool"), "user.note").as_deref(),
        Some(&b"v1"[..])
    );
    assert!(xattr(&d.join("bin-tool"), "security.capability").is_some());
    assert_eq!(
        fs::metadata(d.join("bin-tool")).unwrap().ino(),
        fs::metadata(d.join("bin-tool-link")).unwrap().ino()
    );
    assert!(is_whiteout(&d.join("removed")));
    assert_eq!(
        xattr(&d.join("opaque"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        fs::read_link(d.join("long-target")).unwrap().as_os_str(),
        OsStr::new(&"t".repeat(150))
    );
    let z = fs::symlink_metadata(d.join("zero")).unwrap();
    assert_eq!(z.rdev(), rustix::fs::makedev(1, 5));
    // and re-exporting the extracted tree gives the very same bytes
    let b = layer_bytes(d, &LayerOpts::default());
    if a != b {
        panic!(
            "write → apply → write differs:\n{:#?}\n{:#?}",
            headers(&a),
            headers(&b)
        );
    }
}

#[test]
fn gnu_tar_reads_write_layer_output() {
    let up = make_upper();
    let a = layer_bytes(up.path(), &LayerOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("layer.tar");
    fs::write(&file, &a).unwrap();
    let out = Command::new("tar").arg("-tvf").arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8(out.stdout).unwrap();
    assert!(
        listing.contains(&format!(
            "{}/{}/{}",
            "d".repeat(60),
            "e".repeat(60),
            "f".repeat(90)
        )),
        "{listing}"
    );
    assert!(listing.contains("opaque/.wh..wh..opq"));
    assert!(
        listing.contains("bin-tool-link link to bin-tool"),
        "{listing}"
    );
    assert!(listing.contains(&format!("long-target -> {}", "t".repeat(150))));
    assert!(listing.contains("1000/1001"), "{listing}");
    assert!(listing.contains("-rwsr-xr-x"), "{listing}");
    // GNU tar also extracts it with xattrs
    let x = dir.path().join("x");
    fs::create_dir(&x).unwrap();
    let st = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(&file)
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        xattr(&x.join("bin-tool"), "user.note").as_deref(),
        Some(&b"v1"[..])
    );
}

fn headers(data: &[u8]) -> Vec<String> {
    let mut ar = tar::Archive::new(data);
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            format!(
                "{} {:?} mode={:o} {}:{} mtime={} size={}",
                String::from_utf8_lossy(&e.path_bytes()),
                h.entry_type(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.mtime().unwrap(),
                h.size().unwrap()
            )
        })
        .collect()
}

#[test]
fn later_entries_replace_earlier_ones_without_following_symlinks() {
    let outer = tempfile::tempdir().unwrap();
    let host = outer.path().join("host");
    fs::create_dir(&host).unwrap();
    fs::write(host.join("keep"), b"keep").unwrap();
    let dest = outer.path().join("dest");
    fs::create_dir(&dest).unwrap();
    let host_s = host.to_str().unwrap().to_string();
    let layer = T::new()
        .dir("d/")
        .file("d/a", b"a")
        .symlink("d/out", &host_s)
        .dir("d/sub/")
        .file("d/sub/b", b"b")
        .file("d", b"now a file") // replaces the whole tree
        .dir("w/")
        .file("w/x", b"x")
        .file(".wh.w", b"") // whiteout replaces a directory
        .done();
    apply_layer(&layer[..], &dest).unwrap();
    assert_eq!(fs::read(dest.join("d")).unwrap(), b"now a file");
    assert!(is_whiteout(&dest.join("w")));
    assert_eq!(
        fs::read(host.join("keep")).unwrap(),
        b"keep",
        "symlinked host dir untouched"
    );
    assert_eq!(fs::read_dir(&host).unwrap().count(), 1);
}
