//! Unit tests of the resolver: links, loops, clamping, magic links, swaps mid-walk.

use super::*;
use std::fs;
use std::os::unix::fs::symlink;

fn tree() -> (tempfile::TempDir, Root) {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    fs::create_dir_all(r.join("usr/bin")).unwrap();
    fs::write(r.join("usr/bin/sh"), "sh").unwrap();
    fs::create_dir_all(r.join("etc")).unwrap();
    fs::write(r.join("etc/passwd"), "inside").unwrap();
    symlink("/usr/bin", r.join("bin")).unwrap();
    symlink("../../../../etc", r.join("usr/escape")).unwrap();
    let root = Root::new(r).unwrap();
    (t, root)
}

fn rel(root: &Root, p: &str, follow: bool) -> String {
    root.resolve(p, follow)
        .unwrap()
        .rel
        .to_string_lossy()
        .into_owned()
}

#[test]
fn absolute_links_restart_at_the_root() {
    let (_t, root) = tree();
    assert_eq!(rel(&root, "/bin/sh", true), "usr/bin/sh");
    assert_eq!(rel(&root, "bin/sh", false), "usr/bin/sh");
    assert_eq!(rel(&root, "/bin", false), "bin");
    assert_eq!(rel(&root, "/bin", true), "usr/bin");
}

#[test]
fn dotdot_is_clamped_at_the_root() {
    let (_t, root) = tree();
    assert_eq!(rel(&root, "/usr/escape/passwd", true), "etc/passwd");
    assert_eq!(rel(&root, "../../../etc/passwd", true), "etc/passwd");
    assert_eq!(rel(&root, "/../..", true), "");
    let r = root.resolve("/..", true).unwrap();
    assert_eq!(r.name, ".");
    let mut s = String::new();
    use std::io::Read;
    let f = root.open("/usr/escape/passwd", OFlags::RDONLY).unwrap();
    File::from(f).read_to_string(&mut s).unwrap();
    assert_eq!(s, "inside");
}

#[test]
fn missing_components() {
    let (_t, root) = tree();
    let r = root.resolve("/usr/new", true).unwrap();
    assert!(r.fd.is_none());
    assert_eq!(r.rel, Path::new("usr/new"));
    assert_eq!(
        root.resolve_path("/bin/new/x/../y", true).unwrap(),
        Path::new("usr/bin/new/y")
    );
    assert_eq!(
        root.resolve_path("/nope/../../etc/passwd", true).unwrap(),
        Path::new("etc/passwd")
    );
    let e = root.resolve("/nope/x", true).unwrap_err();
    assert!(matches!(e, FsRootError::NotFound { .. }), "{e}");
    let e = root.resolve("/usr/bin/sh/x", true).unwrap_err();
    assert!(matches!(e, FsRootError::NotADirectory { .. }), "{e}");
    assert!(root
        .open("/nope", OFlags::RDONLY)
        .unwrap_err()
        .is_not_found());
    // A dangling link resolves to its (missing) target inside the root.
    symlink("/made/here", root.path().join("dangling")).unwrap();
    let r = root.resolve("/dangling", true).unwrap_err();
    assert!(r.is_not_found());
    fs::create_dir(root.path().join("made")).unwrap();
    let r = root.resolve("/dangling", true).unwrap();
    assert_eq!(r.rel, Path::new("made/here"));
    assert!(r.fd.is_none());
}

#[test]
fn symlink_loops_fail() {
    let (_t, root) = tree();
    symlink("loop", root.path().join("loop")).unwrap();
    symlink("b", root.path().join("a")).unwrap();
    symlink("a", root.path().join("b")).unwrap();
    for p in ["/loop", "/loop/x", "/a/x"] {
        let e = root.resolve(p, true).unwrap_err();
        assert!(matches!(e, FsRootError::SymlinkLoop { .. }), "{p}: {e}");
        assert_eq!(
            root.open(p, OFlags::RDONLY).unwrap_err().errno(),
            Errno::LOOP
        );
    }
    // Not following the last component: the link itself.
    let r = root.resolve("/loop", false).unwrap();
    assert_eq!(r.rel, Path::new("loop"));
}

#[test]
fn proc_magic_links_are_not_followed() {
    let (_t, root) = tree();
    // A link to the host's root through procfs: inside the tree it is a plain path.
    symlink("/proc/self/root/etc", root.path().join("magic")).unwrap();
    let e = root.resolve("/magic/passwd", true).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(root.open("/magic/passwd", OFlags::RDONLY).is_err());
    // Even when the tree has a /proc that is the real one.
    let t2 = tempfile::tempdir().unwrap();
    symlink("/proc", t2.path().join("proc")).unwrap();
    symlink("/proc/self/root/etc/hostname", t2.path().join("m")).unwrap();
    let root2 = Root::new(t2.path()).unwrap();
    assert!(root2.open("/m", OFlags::RDONLY).is_err());
    assert!(root2.resolve("/m", true).is_err());
}

#[test]
fn ensure_creates_inside_the_root_only() {
    let (t, root) = tree();
    let outside = tempfile::tempdir().unwrap();
    symlink(outside.path(), t.path().join("out")).unwrap();
    let mut seen = Vec::new();
    let r = root
        .ensure("/out/a/b", Create::Dir, None, &mut |p, d| {
            seen.push((p.to_path_buf(), d));
            Ok(())
        })
        .unwrap();
    // The absolute target of `out` restarted at the root: created under it, not outside.
    assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
    let created = t
        .path()
        .join(outside.path().strip_prefix("/").unwrap())
        .join("a/b");
    assert!(created.is_dir(), "{}", created.display());
    assert_eq!(r.rel, created.strip_prefix(t.path()).unwrap());
    assert!(seen.iter().all(|(_, d)| *d));
    let r = root
        .ensure("/etc/hosts", Create::File(0o644), None, &mut |_, _| Ok(()))
        .unwrap();
    assert_eq!(r.rel, Path::new("etc/hosts"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(t.path().join("etc/hosts"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o644
    );
    // Existing entries are not touched, and nothing is reported.
    let mut n = 0;
    root.ensure("/usr/bin", Create::Dir, None, &mut |_, _| {
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 0);
}

#[test]
fn a_component_swapped_mid_walk_never_escapes() {
    // A directory exchanged with a link to a host directory while we resolve beneath it:
    // every outcome must be inside the root (the link is resolved inside) or an error.
    let (t, root) = tree();
    let host = tempfile::tempdir().unwrap();
    fs::write(host.path().join("secret"), "HOST").unwrap();
    fs::create_dir(t.path().join("d")).unwrap();
    fs::write(t.path().join("d/secret"), "ctx").unwrap();
    symlink(host.path(), t.path().join("l")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let (a, b) = (t.path().join("d"), t.path().join("l"));
    let swapper = std::thread::spawn(move || {
        let mut n = 0u64;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = rustix::fs::renameat_with(
                rustix::fs::CWD,
                &a,
                rustix::fs::CWD,
                &b,
                rustix::fs::RenameFlags::EXCHANGE,
            );
            n += 1;
        }
        n
    });
    let mut ok = 0;
    for _ in 0..20_000 {
        for follow in [true, false] {
            if let Ok(fd) = root.open(
                "/d/secret",
                if follow {
                    OFlags::RDONLY
                } else {
                    OFlags::RDONLY | OFlags::NOFOLLOW
                },
            ) {
                let mut s = String::new();
                use std::io::Read;
                File::from(fd).read_to_string(&mut s).unwrap();
                assert_eq!(s, "ctx");
                ok += 1;
            }
            if let Ok(r) = root.resolve("/d/secret", follow) {
                if let Ok(f) = open_file_at(&r.parent, &r.name) {
                    let mut s = String::new();
                    use std::io::Read;
                    (&f).read_to_string(&mut s).unwrap();
                    assert_eq!(s, "ctx");
                }
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 100, "the swapper ran {swaps} times");
    assert!(ok > 0, "no open succeeded at all");
}

#[test]
fn remove_all_at_does_not_follow_links() {
    let t = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("keep"), "x").unwrap();
    fs::create_dir_all(t.path().join("d/e")).unwrap();
    symlink(outside.path(), t.path().join("d/e/link")).unwrap();
    let root = Root::new(t.path()).unwrap();
    remove_all_at(&root, OsStr::new("d")).unwrap();
    assert!(!t.path().join("d").exists());
    assert!(outside.path().join("keep").exists());
    remove_all_at(&root, OsStr::new("missing")).unwrap();
}

#[test]
fn fd_path_and_list_dir() {
    let (_t, root) = tree();
    let r = root.resolve("/usr", true).unwrap();
    let mut names = list_dir(r.fd.as_ref().unwrap()).unwrap();
    names.sort();
    assert_eq!(names, vec![OsString::from("bin"), OsString::from("escape")]);
    let p = fd_path(r.fd.as_ref().unwrap());
    assert!(p.join("bin/sh").exists());
    let e = open_file_at(&r.parent, OsStr::new("usr")).unwrap_err();
    assert!(e.to_string().contains("regular file") || e.raw_os_error().is_some());
}

#[test]
fn ensure_then_resolve_child() {
    let t = tempfile::tempdir().unwrap();
    let root = Root::new(t.path()).unwrap();
    let drel = root.resolve_path("/opt/app", true).unwrap();
    assert_eq!(drel, Path::new("opt/app"));
    root.ensure(
        drel.parent().unwrap(),
        Create::Dir,
        None,
        &mut |_, _| Ok(()),
    )
    .unwrap();
    let r = root.resolve(&drel, true).unwrap();
    assert!(r.fd.is_none());
}

#[test]
fn the_walk_fallback_agrees_with_openat2() {
    let (t, root) = tree();
    symlink("loop", t.path().join("loop")).unwrap();
    symlink("/proc/self/root/etc", t.path().join("magic")).unwrap();
    symlink("../usr/bin/sh", t.path().join("etc/sh")).unwrap();
    let paths = [
        "",
        "/",
        "/bin/sh",
        "bin/sh",
        "/usr/escape/passwd",
        "../../etc/passwd",
        "/etc/sh",
        "/loop",
        "/magic/passwd",
        "/nope",
        "/usr/bin/sh/x",
        "/bin",
        "/usr/bin/../../bin/sh",
    ];
    let id = |fd: &OwnedFd| {
        let st = rustix::fs::fstat(fd).unwrap();
        (st.st_dev, st.st_ino)
    };
    for p in paths {
        for flags in [
            OFlags::RDONLY,
            OFlags::PATH | OFlags::NOFOLLOW,
            OFlags::RDONLY | OFlags::NOFOLLOW,
        ] {
            let a = root.open(p, flags);
            let b = root.open_by_walk(Path::new(p), flags);
            match (&a, &b) {
                (Ok(x), Ok(y)) => assert_eq!(id(x), id(y), "{p} {flags:?}"),
                (Err(x), Err(y)) => assert_eq!(
                    x.is_not_found(),
                    y.is_not_found(),
                    "{p} {flags:?}: {x} vs {y}"
                ),
                _ => panic!("{p} {flags:?}: openat2 {a:?} vs walk {b:?}"),
            }
        }
    }
}
