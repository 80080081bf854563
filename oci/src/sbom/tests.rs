//! Catalogers on the committed fixture filesystem (`testdata/sbom/rootfs`, made by
//! `testdata/sbom/make-fixtures.py`), layer walking with whiteouts, and hostile inputs.

use super::*;
use crate::types::media_types as mt;

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/sbom/rootfs")
}

fn purls(s: &Scan) -> Vec<&str> {
    s.packages.iter().map(|p| p.purl.as_str()).collect()
}

#[test]
fn every_cataloger_finds_its_packages() {
    let s = scan_dir(&fixture(), &Limits::default());
    let p = purls(&s);
    for want in [
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12&upstream=glibc",
        "pkg:deb/debian/tzdata@2024a-0%2Bdeb12u1?arch=all&distro=debian-12&upstream=tzdata-src%402024a-0",
        "pkg:apk/alpine/musl@1.2.4-r2?arch=x86_64&distro=debian-12",
        "pkg:apk/alpine/busybox@1.36.1-r5?arch=x86_64&distro=debian-12",
        "pkg:rpm/debian/bash@5.2.15-3.fc39?arch=x86_64&distro=debian-12&epoch=1",
        "pkg:pypi/requests@2.31.0",
        "pkg:pypi/typing-extensions@4.9.0",
        "pkg:npm/lodash@4.17.21",
        "pkg:npm/%40babel/core@7.23.0",
        "pkg:npm/left-pad@1.3.0",
        "pkg:golang/example.com/hello@(devel)",
        "pkg:golang/github.com/google/uuid@v1.6.0",
        "pkg:golang/golang.org/x/text@v0.14.0",
        "pkg:golang/stdlib@1.21.5",
        "pkg:cargo/hello-rs@0.1.0",
        "pkg:cargo/serde@1.0.197",
        "pkg:maven/com.google.guava/guava@33.0.0-jre",
    ] {
        assert!(p.contains(&want), "{want} missing from {p:#?}");
    }
    for absent in [
        "removed-pkg",
        "not-this",
        "not-a-package",
        "gpg-pubkey",
        "v0.3.0",
    ] {
        assert!(!p.iter().any(|x| x.contains(absent)), "{absent} in {p:#?}");
    }
    assert_eq!(s.distro, Some(("debian".into(), "12".into())));
    let doc = spdx_document(
        &Subject {
            name: "app".into(),
            digest: Some(format!("sha256:{}", "a".repeat(64))),
        },
        &[&s],
        "2023-11-14T22:13:20Z",
        "rbuild-test",
    );
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    // root + every package, each CONTAINed by the root, the root DESCRIBED
    let n = s.packages.len();
    assert_eq!(doc["packages"].as_array().unwrap().len(), n + 1);
    assert_eq!(doc["relationships"].as_array().unwrap().len(), n + 1);
    let ids: BTreeSet<&str> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["SPDXID"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), n + 1, "SPDX ids are unique");
    assert!(ids.iter().all(|i| i
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')));
    // same input, same document
    let again = spdx_document(
        &Subject {
            name: "app".into(),
            digest: Some(format!("sha256:{}", "a".repeat(64))),
        },
        &[&scan_dir(&fixture(), &Limits::default())],
        "2023-11-14T22:13:20Z",
        "rbuild-test",
    );
    assert_eq!(doc, again);
}

/// A tar layer from `(path, data, mode)` entries.
fn layer(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, d, mode) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_size(d.len() as u64);
        h.set_mode(*mode);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, p, *d).unwrap();
    }
    b.into_inner().unwrap()
}

fn image(store: &rbuild_cache::Store, layers: &[Vec<u8>]) -> Descriptor {
    let mut ds = Vec::new();
    for l in layers {
        let (d, s) = store.put_blob(l).unwrap();
        ds.push(Descriptor::new(mt::OCI_LAYER_TAR, d, s));
    }
    let (cd, cs) = store.put_blob(b"{}").unwrap();
    let m = Manifest {
        schema_version: 2,
        media_type: Some(mt::OCI_MANIFEST.into()),
        config: Descriptor::new(mt::OCI_CONFIG, cd, cs),
        layers: ds,
        annotations: BTreeMap::new(),
    };
    let bytes = crate::types::canonical_json("m", &m).unwrap();
    let (d, s) = store.put_blob(&bytes).unwrap();
    Descriptor::new(mt::OCI_MANIFEST, d, s)
}

const PKG: &[u8] = b"Package: a\nStatus: install ok installed\nVersion: 1\n";
const PKG2: &[u8] = b"Package: b\nStatus: install ok installed\nVersion: 2\n";

#[test]
fn upper_layers_win_and_whiteouts_hide() {
    let t = tempfile::tempdir().unwrap();
    let store = rbuild_cache::Store::open(t.path()).unwrap();
    let meta = |n: &str| format!("usr/lib/python3/{n}.dist-info/METADATA");
    let py = |n: &str| format!("Name: {n}\nVersion: 1.0\n").into_bytes();
    let (a, b, c) = (meta("a"), meta("b"), meta("c"));
    let m = image(
        &store,
        &[
            layer(&[
                ("var/lib/dpkg/status", PKG, 0o644),
                (&a, &py("a"), 0o644),
                (&b, &py("b"), 0o644),
                (&c, &py("c"), 0o644),
            ]),
            layer(&[
                // the status file replaced; a's metadata deleted; the python dir made opaque
                // (c gone) with b re-added
                ("var/lib/dpkg/status", PKG2, 0o644),
                ("usr/lib/python3/a.dist-info/.wh.METADATA", b"", 0o644),
                ("usr/lib/python3/.wh..wh..opq", b"", 0o644),
                (&b, &py("b"), 0o644),
            ]),
        ],
    );
    let s = scan_image(&store, &m, &Limits::default()).unwrap();
    let names: Vec<&str> = s.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["b", "b"], "{:#?}", s.packages);
    assert_eq!(s.packages[0].ecosystem, "deb");
    assert_eq!(s.packages[1].ecosystem, "pypi");
}

#[test]
fn layer_directories_give_the_same_packages_as_layer_tars() {
    // needs root for the whiteout device and the trusted.* xattr (as the store's root mode)
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (whiteout devices); run the tests as root"
    );
    let t = tempfile::tempdir().unwrap();
    let (lower, upper) = (t.path().join("l"), t.path().join("u"));
    let put = |root: &Path, rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    let meta = |n: &str| format!("usr/lib/python3/{n}.dist-info/METADATA");
    let py = |n: &str| format!("Name: {n}\nVersion: 1.0\n").into_bytes();
    put(&lower, "var/lib/dpkg/status", PKG);
    for n in ["a", "b", "c"] {
        put(&lower, &meta(n), &py(n));
    }
    put(&lower, "usr/lib/node/d/x", b"");
    put(
        &lower,
        "app/node_modules/left/package.json",
        br#"{"name":"left","version":"1.0.0"}"#,
    );
    put(&upper, "var/lib/dpkg/status", PKG2);
    put(&upper, &meta("b"), &py("b"));
    // a: whited out; python3/ opaque (c gone); node_modules/left deleted as a directory
    let wh = |rel: &str| {
        std::fs::create_dir_all(upper.join(rel).parent().unwrap()).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            upper.join(rel).as_path(),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0),
            0,
        )
        .unwrap();
    };
    wh("usr/lib/python3/a.dist-info/METADATA");
    wh("app/node_modules/left");
    rustix::fs::setxattr(
        upper.join("usr/lib/python3").as_path(),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let s = scan_layer_dirs(
        &[lower, upper],
        "trusted.overlay.opaque",
        &Limits::default(),
    );
    let names: Vec<&str> = s.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["b", "b"], "{:#?}", s.packages);
}

#[test]
fn hostile_inputs_are_bounded_and_never_panic() {
    let t = tempfile::tempdir().unwrap();
    let store = rbuild_cache::Store::open(t.path()).unwrap();
    // a 1 GiB zip bomb entry in a jar: inflated at most to the limit
    let bomb = {
        use std::io::Write;
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            e.write_all(&zeros).unwrap();
        }
        e.finish().unwrap()
    };
    let jar = {
        let name = b"META-INF/maven/g/a/pom.properties";
        let mut z = Vec::new();
        z.extend_from_slice(b"PK\x03\x04");
        z.extend_from_slice(&[20, 0, 0, 0, 8, 0]);
        z.extend_from_slice(&[0; 8]);
        z.extend_from_slice(&(bomb.len() as u32).to_le_bytes());
        z.extend_from_slice(&u32::MAX.to_le_bytes());
        z.extend_from_slice(&(name.len() as u16).to_le_bytes());
        z.extend_from_slice(&[0, 0]);
        z.extend_from_slice(name);
        z.extend_from_slice(&bomb);
        let cd = z.len();
        z.extend_from_slice(b"PK\x01\x02");
        z.extend_from_slice(&[20, 0, 20, 0, 0, 0, 8, 0]);
        z.extend_from_slice(&[0; 8]);
        z.extend_from_slice(&(bomb.len() as u32).to_le_bytes());
        z.extend_from_slice(&u32::MAX.to_le_bytes());
        z.extend_from_slice(&(name.len() as u16).to_le_bytes());
        z.extend_from_slice(&[0; 12]);
        z.extend_from_slice(&0u32.to_le_bytes());
        z.extend_from_slice(name);
        let cd_len = z.len() - cd;
        z.extend_from_slice(b"PK\x05\x06");
        z.extend_from_slice(&[0, 0, 0, 0, 1, 0, 1, 0]);
        z.extend_from_slice(&(cd_len as u32).to_le_bytes());
        z.extend_from_slice(&(cd as u32).to_le_bytes());
        z.extend_from_slice(&[0, 0]);
        z
    };
    let limits = Limits {
        max_file: 1 << 20,
        ..Limits::default()
    };
    // inflating stops at 1 MiB: no properties, no package, no 64 MiB buffer
    let mut budget = java::Budget::new(limits.max_file, 1 << 30);
    assert!(java::parse_jar(&jar, "/x.jar", &mut budget).is_empty());
    // malformed ELF headers: section tables pointing anywhere, truncated files
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(64, 0xff);
    assert_eq!(elf::section(&elf, ".dep-v0"), None);
    for n in 0..elf.len() {
        let _ = elf::section(&elf[..n], ".go.buildinfo");
        let _ = gobin::parse(&elf[..n], "/x");
        let _ = rust::parse(&elf[..n], "/x", 1 << 20);
        let _ = java::parse_jar(
            &jar[..n.min(jar.len())],
            "/x",
            &mut java::Budget::new(1 << 20, 1 << 20),
        );
        let _ = rpm::parse_header(&elf[..n], "/x");
    }
    // a Go blob whose string length points past the end
    let mut go = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec();
    go.extend_from_slice(b"\xff Go buildinf:\x08\x02");
    go.resize(48, 0);
    go.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(gobin::parse(&go, "/x").is_empty());
    // rpm header claiming huge counts
    let mut h = 0xffff_ffffu32.to_be_bytes().to_vec();
    h.extend_from_slice(&[0xff; 16]);
    assert!(rpm::parse_header(&h, "/x").is_none());
    // too many entries: the scan stops and says so; a file over the limit is not read
    let many: Vec<(String, Vec<u8>)> = (0..50).map(|i| (format!("f{i}"), Vec::new())).collect();
    let entries: Vec<(&str, &[u8], u32)> = many
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice(), 0o644))
        .collect();
    let big = vec![b'x'; 2 << 20];
    let m = image(
        &store,
        &[
            layer(&entries),
            layer(&[("var/lib/dpkg/status", &big, 0o644)]),
        ],
    );
    let s = scan_image(
        &store,
        &m,
        &Limits {
            max_entries: 10,
            ..limits
        },
    )
    .unwrap();
    assert!(s.packages.is_empty());
    assert!(
        s.notes.iter().any(|n| n.contains("over the")),
        "{:?}",
        s.notes
    );
    assert!(
        s.notes.iter().any(|n| n.contains("more than 10 files")),
        "{:?}",
        s.notes
    );
    // a layer of long paths stops at the path budget
    let s = scan_image(
        &store,
        &m,
        &Limits {
            max_path_bytes: 40,
            ..Limits::default()
        },
    )
    .unwrap();
    assert!(
        s.notes.iter().any(|n| n.contains("paths longer than 40")),
        "{:?}",
        s.notes
    );
    // a garbage rpm database is an error note, not a panic
    assert!(rpm::parse_sqlite(b"not sqlite at all", "/db").is_err());
}

/// A minimal executable in Go 1.13–1.17's build-info format: an ELF header, one `PT_LOAD`
/// segment mapping the whole file at 0x400000, the 32-byte `\xff Go buildinf:` header at a
/// 16-byte-aligned offset with two pointers to Go string headers, and the strings.
fn pre118_go_elf(is64: bool, big_endian: bool, version: &str, modinfo: &str) -> Vec<u8> {
    let ps: usize = if is64 { 8 } else { 4 };
    let put = |d: &mut Vec<u8>, at: usize, v: u64, n: usize| {
        let b = if big_endian {
            v.to_be_bytes()[8 - n..].to_vec()
        } else {
            v.to_le_bytes()[..n].to_vec()
        };
        d[at..at + n].copy_from_slice(&b);
    };
    let base = 0x40_0000u64;
    let (ehsize, phsize) = if is64 { (64, 56) } else { (52, 32) };
    let blob = 128usize;
    let vh = blob + 32;
    let mh = vh + 2 * ps;
    let vdata = mh + 2 * ps;
    let mdata = vdata + version.len();
    let mut d = vec![0u8; mdata + modinfo.len()];
    d[..4].copy_from_slice(b"\x7fELF");
    d[4] = if is64 { 2 } else { 1 };
    d[5] = if big_endian { 2 } else { 1 };
    d[6] = 1;
    let len = d.len() as u64;
    if is64 {
        put(&mut d, 0x20, ehsize as u64, 8);
        put(&mut d, 0x36, phsize, 2);
        put(&mut d, 0x38, 1, 2);
        let ph = ehsize;
        put(&mut d, ph, 1, 4);
        put(&mut d, ph + 8, 0, 8);
        put(&mut d, ph + 16, base, 8);
        put(&mut d, ph + 32, len, 8);
    } else {
        put(&mut d, 0x1C, ehsize as u64, 4);
        put(&mut d, 0x2A, phsize, 2);
        put(&mut d, 0x2C, 1, 2);
        let ph = ehsize;
        put(&mut d, ph, 1, 4);
        put(&mut d, ph + 4, 0, 4);
        put(&mut d, ph + 8, base, 4);
        put(&mut d, ph + 16, len, 4);
    }
    d[blob..blob + 14].copy_from_slice(b"\xff Go buildinf:");
    d[blob + 14] = ps as u8;
    d[blob + 15] = u8::from(big_endian);
    put(&mut d, blob + 16, base + vh as u64, ps);
    put(&mut d, blob + 16 + ps, base + mh as u64, ps);
    put(&mut d, vh, base + vdata as u64, ps);
    put(&mut d, vh + ps, version.len() as u64, ps);
    put(&mut d, mh, base + mdata as u64, ps);
    put(&mut d, mh + ps, modinfo.len() as u64, ps);
    d[vdata..mdata].copy_from_slice(version.as_bytes());
    d[mdata..].copy_from_slice(modinfo.as_bytes());
    d
}

#[test]
fn go_binaries_before_1_18_give_their_modules() {
    // sentinel-framed module text as Go 1.13–1.17 link it (ASCII stand-ins of 16 bytes each)
    let modinfo = format!(
        "{}path\texample.com/old\nmod\texample.com/old\t(devel)\t\ndep\tgolang.org/x/sys\tv0.0.0-20210630005230-0f9fa26af87c\th1:x=\n\n{}",
        "0123456789abcdef", "fedcba9876543210"
    );
    for (is64, be) in [(true, false), (false, true), (true, true), (false, false)] {
        let elf = pre118_go_elf(is64, be, "go1.16.15", &modinfo);
        let got: Vec<String> = gobin::parse(&elf, "/old")
            .into_iter()
            .map(|p| p.purl)
            .collect();
        assert_eq!(
            got,
            [
                "pkg:golang/example.com/old@(devel)",
                "pkg:golang/golang.org/x/sys@v0.0.0-20210630005230-0f9fa26af87c",
                "pkg:golang/stdlib@1.16.15",
            ],
            "64-bit {is64}, big-endian {be}"
        );
        // hostile: every truncation and every single-byte corruption of the pointer words is
        // either a clean miss or a (possibly different) answer, never a panic or a read
        // outside the file
        for n in 0..elf.len() {
            let _ = gobin::parse(&elf[..n], "/x");
        }
        for at in 128 + 16..128 + 64 {
            for v in [0u8, 0x7f, 0xff] {
                let mut bad = elf.clone();
                bad[at] = v;
                let _ = gobin::parse(&bad, "/x");
            }
        }
    }
    // a string header claiming 4 GiB is refused, not allocated
    let mut elf = pre118_go_elf(true, false, "go1.17", &modinfo);
    let vh = 128 + 32;
    elf[vh + 8..vh + 16].copy_from_slice(&(u32::MAX as u64).to_le_bytes());
    assert!(gobin::parse(&elf, "/x").is_empty());
}

/// A real Go 1.17.2 executable: esbuild 0.13.15 from npm (`esbuild-linux-64`), fetched by
/// `.ci/setup.sh` into `$RBUILD_TEST_WORK/go117/esbuild`.
#[test]
fn a_real_go_1_17_executable_gives_its_modules() {
    let work = std::env::var("RBUILD_TEST_WORK").unwrap_or_else(|_| "/tmp/rbuild-test-env".into());
    let path = Path::new(&work).join("go117/esbuild");
    let data = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run `bash .ci/setup.sh` (it fetches esbuild-linux-64@0.13.15 from npm)",
            path.display()
        )
    });
    let got: Vec<String> = gobin::parse(&data, "/esbuild")
        .into_iter()
        .map(|p| p.purl)
        .collect();
    assert!(
        got.contains(&"pkg:golang/stdlib@1.17.2".to_string()),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|p| p.starts_with("pkg:golang/github.com/evanw/esbuild@")),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|p| p.starts_with("pkg:golang/golang.org/x/sys@v0.0.0-")),
        "{got:?}"
    );
}

fn run(dir: &Path, cmd: &str, args: &[&str]) {
    let out = std::process::Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (run `bash .ci/setup.sh`)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(root: &Path, rel: &str, data: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn pom(root: &Path, g: &str, a: &str, v: &str) {
    write(
        root,
        &format!("META-INF/maven/{g}/{a}/pom.properties"),
        &format!("groupId={g}\nartifactId={a}\nversion={v}\n"),
    );
}

fn found(s: &Scan) -> Vec<(String, String)> {
    s.packages
        .iter()
        .map(|p| (p.location.clone(), p.purl.clone()))
        .collect()
}

/// Archives made by the real tools: Info-ZIP's `zip` (`-fz` zip64, `-0` stored as Spring Boot
/// needs), the JDK's `jar`, and Python's zipfile past 65535 entries (zip64 end records).
#[test]
fn nested_and_zip64_java_archives_give_every_package() {
    let t = tempfile::tempdir().unwrap();
    let (w, out) = (t.path().join("work"), t.path().join("image"));
    std::fs::create_dir_all(&out).unwrap();
    // guava.jar: zip64 extra fields and end records forced
    let g = w.join("guava");
    pom(&g, "com.google.guava", "guava", "33.0.0-jre");
    run(&g, "zip", &["-q", "-r", "-fz", "../guava.jar", "META-INF"]);
    // commons.jar: manifest only, made by the JDK's jar tool
    let c = w.join("commons");
    write(
        &c,
        "manifest.txt",
        "Implementation-Title: commons-lang3\nImplementation-Version: 3.14.0\nImplementation-Vendor-Id: org.apache.commons\n",
    );
    write(&c, "org/apache/commons/lang3/A.class", "x");
    run(&c, "jar", &["cfm", "../commons.jar", "manifest.txt", "org"]);
    // app.jar: Spring Boot's layout, nested jars stored
    let a = w.join("app");
    pom(&a, "com.example", "app", "1.0.0");
    std::fs::create_dir_all(a.join("BOOT-INF/lib")).unwrap();
    std::fs::copy(w.join("guava.jar"), a.join("BOOT-INF/lib/guava.jar")).unwrap();
    std::fs::copy(w.join("commons.jar"), a.join("BOOT-INF/lib/commons.jar")).unwrap();
    run(
        &a,
        "zip",
        &["-q", "-0", "-r", &format!("{}/app.jar", out.display()), "."],
    );
    // app.ear > web.war > WEB-INF/lib/commons.jar, all deflated
    let e = w.join("web");
    std::fs::create_dir_all(e.join("WEB-INF/lib")).unwrap();
    std::fs::copy(w.join("commons.jar"), e.join("WEB-INF/lib/commons.jar")).unwrap();
    std::fs::create_dir_all(w.join("ear")).unwrap();
    run(&e, "zip", &["-q", "-9", "-r", "../ear/web.war", "WEB-INF"]);
    run(
        &w.join("ear"),
        "zip",
        &["-q", "-9", &format!("{}/app.ear", out.display()), "web.war"],
    );
    // a "fully executable" Spring Boot jar: a launch script before the zip, offsets unchanged
    let mut exec = b"#!/bin/sh\nexec java -jar \"$0\" \"$@\"\nexit 0\n".to_vec();
    exec.extend(std::fs::read(out.join("app.jar")).unwrap());
    std::fs::write(out.join("app-exec.jar"), exec).unwrap();
    // big.jar: 66000 entries, the pom.properties last
    run(
        &w,
        "python3",
        &[
            "-c",
            &format!(
                "import zipfile\nwith zipfile.ZipFile('{}/big.jar','w') as z:\n for i in range(66000): z.writestr(f'x/{{i}}','')\n z.writestr('META-INF/maven/org.big/big/pom.properties','groupId=org.big\\nartifactId=big\\nversion=9\\n')",
                out.display()
            ),
        ],
    );
    let zip64 = |p: &Path| {
        std::fs::read(p)
            .unwrap()
            .windows(4)
            .any(|w| w == b"PK\x06\x06")
    };
    assert!(zip64(&w.join("guava.jar")) && zip64(&out.join("big.jar")));

    let s = scan_dir(&out, &Limits::default());
    let got = found(&s);
    let want = [
        ("/app-exec.jar", "pkg:maven/com.example/app@1.0.0"),
        (
            "/app-exec.jar:BOOT-INF/lib/commons.jar",
            "pkg:maven/org.apache.commons/commons-lang3@3.14.0",
        ),
        (
            "/app-exec.jar:BOOT-INF/lib/guava.jar",
            "pkg:maven/com.google.guava/guava@33.0.0-jre",
        ),
        (
            "/app.ear:web.war:WEB-INF/lib/commons.jar",
            "pkg:maven/org.apache.commons/commons-lang3@3.14.0",
        ),
        ("/app.jar", "pkg:maven/com.example/app@1.0.0"),
        (
            "/app.jar:BOOT-INF/lib/commons.jar",
            "pkg:maven/org.apache.commons/commons-lang3@3.14.0",
        ),
        (
            "/app.jar:BOOT-INF/lib/guava.jar",
            "pkg:maven/com.google.guava/guava@33.0.0-jre",
        ),
        ("/big.jar", "pkg:maven/org.big/big@9"),
    ];
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(l, p)| (l.to_string(), p.to_string()))
        .collect();
    assert_eq!(got_sorted, want);
    assert!(s.notes.is_empty(), "{:?}", s.notes);
}

/// A stored zip of `(name, data)` entries; `extra_cd` more central directory entries all
/// pointing at the first local header.
fn stored_zip(files: &[(&str, &[u8])], extra_cd: usize) -> Vec<u8> {
    let mut z = Vec::new();
    let mut cd = Vec::new();
    let mut first = None;
    for (name, data) in files {
        let off = z.len() as u32;
        first.get_or_insert(off);
        z.extend_from_slice(b"PK\x03\x04\x14\0\0\0\0\0\0\0\0\0\0\0\0\0");
        z.extend_from_slice(&(data.len() as u32).to_le_bytes());
        z.extend_from_slice(&(data.len() as u32).to_le_bytes());
        z.extend_from_slice(&(name.len() as u16).to_le_bytes());
        z.extend_from_slice(&[0, 0]);
        z.extend_from_slice(name.as_bytes());
        z.extend_from_slice(data);
        cd.push((name.to_string(), data.len() as u32, off));
    }
    let (n0, l0, o0) = cd[0].clone();
    for _ in 0..extra_cd {
        cd.push((n0.clone(), l0, o0));
    }
    let cd_start = z.len() as u32;
    for (name, len, off) in &cd {
        z.extend_from_slice(b"PK\x01\x02\x14\0\x14\0\0\0\0\0\0\0\0\0\0\0\0\0");
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(name.len() as u16).to_le_bytes());
        z.extend_from_slice(&[0; 12]);
        z.extend_from_slice(&off.to_le_bytes());
        z.extend_from_slice(name.as_bytes());
    }
    let cd_len = z.len() as u32 - cd_start;
    let n = cd.len().min(0xffff) as u16;
    z.extend_from_slice(b"PK\x05\x06\0\0\0\0");
    z.extend_from_slice(&n.to_le_bytes());
    z.extend_from_slice(&n.to_le_bytes());
    z.extend_from_slice(&cd_len.to_le_bytes());
    z.extend_from_slice(&cd_start.to_le_bytes());
    z.extend_from_slice(&[0, 0]);
    z
}

#[test]
fn hostile_nested_archives_stay_within_their_budget() {
    let pom = |i: usize| format!("groupId=g\nartifactId=a{i}\nversion=1\n").into_bytes();
    // ten archives stored one in the other: read to depth 4, the rest named in a note
    let mut jar = stored_zip(&[("META-INF/maven/g/a0/pom.properties", &pom(0))], 0);
    for i in 1..10 {
        let p = pom(i);
        jar = stored_zip(
            &[("in.jar", &jar), ("META-INF/maven/g/a/pom.properties", &p)],
            0,
        );
    }
    let mut b = java::Budget::new(1 << 20, 1 << 20);
    let got = java::parse_jar(&jar, "/deep.jar", &mut b);
    assert_eq!(got.len(), 5, "{got:#?}");
    assert_eq!(got[4].location, "/deep.jar:in.jar:in.jar:in.jar:in.jar");
    assert!(
        b.notes
            .iter()
            .any(|n| n.contains("more than 4 archives deep")),
        "{:?}",
        b.notes
    );
    // fan-out: 60000 directory entries all naming one nested archive with 60000 entries of
    // its own: the entry budget (200000 in all) stops it, not 3.6e9 visits
    let inner = stored_zip(&[("x.jar", b"not a zip")], 60_000);
    let outer = stored_zip(&[("in.jar", &inner)], 60_000);
    let mut b = java::Budget::new(1 << 20, 1 << 20);
    assert!(java::parse_jar(&outer, "/fan.jar", &mut b).is_empty());
    assert_eq!(b.entries, 0);
    assert!(
        b.notes.iter().any(|n| n.contains("zip entries")),
        "{:?}",
        b.notes
    );
    // 50000 pom.properties entries pointing at one 1 MiB deflate stream: one inflating
    // budget for all of them (4 MiB here), not 50000 × 1 MiB
    let bomb = {
        use std::io::Write;
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&vec![b'x'; 1 << 20]).unwrap();
        e.finish().unwrap()
    };
    let mut z = stored_zip(&[("META-INF/maven/g/a/pom.properties", &bomb)], 50_000);
    // make every directory entry (and the local header) say deflate
    let mut i = 0;
    while let Some(p) = z[i..]
        .windows(4)
        .position(|w| w == b"PK\x01\x02" || w == b"PK\x03\x04")
    {
        let at = i + p;
        let m = if &z[at..at + 4] == b"PK\x01\x02" {
            at + 10
        } else {
            at + 8
        };
        z[m] = 8;
        i = at + 4;
    }
    let mut b = java::Budget::new(1 << 20, 4 << 20);
    assert!(java::parse_jar(&z, "/bomb.jar", &mut b).is_empty());
    assert_eq!(b.bytes, 0);
    assert!(
        b.notes.iter().any(|n| n.contains("budget")),
        "{:?}",
        b.notes
    );
    // zip64 records pointing anywhere, truncated at every length: no panic
    let mut z64 = stored_zip(&[("a.jar", b"PK\x06\x07")], 0);
    let eocd = z64.len() - 22;
    let mut loc = b"PK\x06\x07\0\0\0\0".to_vec();
    loc.extend_from_slice(&u64::MAX.to_le_bytes());
    loc.extend_from_slice(&[1, 0, 0, 0]);
    z64.splice(eocd..eocd, loc);
    for n in 0..z64.len() {
        let _ = java::parse_jar(&z64[..n], "/x", &mut java::Budget::new(1 << 20, 1 << 20));
    }
}

/// Real rpm header blobs: packages built by `rpmbuild`, installed (`--justdb`) into an
/// sqlite rpmdb by `rpm`, read back from its `Packages` table. One has a 20 KB description,
/// so its header needs overflow pages in every Berkeley DB page size.
fn real_rpm_headers(t: &Path) -> Vec<(u32, Vec<u8>)> {
    let top = t.join("top");
    let mut rpms = Vec::new();
    for (name, version, release, epoch, license, desc) in [
        (
            "hello",
            "2.12",
            "1.el7",
            Some(3),
            "GPLv3+",
            "hello".to_string(),
        ),
        ("world", "1.0", "2", None, "MIT", "world".to_string()),
        ("big", "0.1", "1", None, "BSD", "x ".repeat(10_000)),
    ] {
        let spec = t.join(format!("{name}.spec"));
        let epoch = epoch.map(|e| format!("Epoch: {e}\n")).unwrap_or_default();
        std::fs::write(
            &spec,
            format!(
                "Name: {name}\nVersion: {version}\nRelease: {release}\n{epoch}License: {license}\nSummary: s\nBuildArch: noarch\n%description\n{desc}\n%files\n"
            ),
        )
        .unwrap();
        run(
            t,
            "rpmbuild",
            &[
                "--define",
                &format!("_topdir {}", top.display()),
                "-bb",
                spec.to_str().unwrap(),
            ],
        );
        rpms.push(
            top.join(format!("RPMS/noarch/{name}-{version}-{release}.noarch.rpm"))
                .to_string_lossy()
                .into_owned(),
        );
    }
    let db = t.join("sqlite");
    std::fs::create_dir_all(&db).unwrap();
    let dbpath = format!("_dbpath {}", db.display());
    run(t, "rpm", &["--define", &dbpath, "--initdb"]);
    let mut args = vec![
        "--define",
        &dbpath,
        "-i",
        "--justdb",
        "--nodeps",
        "--ignorearch",
        "--ignoreos",
    ];
    args.extend(rpms.iter().map(String::as_str));
    run(t, "rpm", &args);
    let conn = rusqlite::Connection::open(db.join("rpmdb.sqlite")).unwrap();
    let mut stmt = conn.prepare("SELECT hnum, blob FROM Packages").unwrap();
    let rows: Vec<(u32, Vec<u8>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().any(|(_, b)| b.len() > 16_000));
    rows
}

const RPM_WANT: [&str; 3] = [
    "pkg:rpm/redhat/big@0.1-1?arch=noarch&upstream=big-0.1-1.src.rpm",
    "pkg:rpm/redhat/hello@2.12-1.el7?arch=noarch&epoch=3&upstream=hello-2.12-1.el7.src.rpm",
    "pkg:rpm/redhat/world@1.0-2?arch=noarch&upstream=world-1.0-2.src.rpm",
];

fn rpm_purls(v: Vec<Package>) -> Vec<String> {
    let mut p: Vec<String> = v.into_iter().map(|p| p.purl).collect();
    p.sort();
    p
}

/// A Berkeley DB hash file written by Berkeley DB 5.3 itself (`db_load`, the library
/// CentOS 7's rpm uses) from `(key, value)` pairs, keys the package numbers as rpm writes them.
fn bdb_file(t: &Path, rows: &[(u32, Vec<u8>)], page_size: u32, big_endian: bool) -> Vec<u8> {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut dump =
        format!("VERSION=3\nformat=bytevalue\ntype=hash\ndb_pagesize={page_size}\nHEADER=END\n");
    for (k, v) in rows {
        let key = if big_endian {
            k.to_be_bytes()
        } else {
            k.to_le_bytes()
        };
        dump.push_str(&format!(" {}\n {}\n", hex(&key), hex(v)));
    }
    dump.push_str("DATA=END\n");
    let name = format!("Packages-{page_size}-{big_endian}");
    std::fs::write(t.join("dump"), dump).unwrap();
    let order = if big_endian {
        "db_lorder=4321"
    } else {
        "db_lorder=1234"
    };
    run(t, "db_load", &["-c", order, "-f", "dump", &name]);
    std::fs::read(t.join(name)).unwrap()
}

/// An ndb `Packages.db` laid out as rpm's `lib/backend/ndb/rpmpkg.c` writes it (Debian's rpm
/// has no ndb backend to write one): header, one page of slots, the blobs.
fn ndb_file(rows: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut d = vec![0u8; 4096];
    for slot in d.chunks_mut(16) {
        slot[..4].copy_from_slice(b"Slot");
    }
    d[..4].copy_from_slice(b"RpmP");
    d[4..8].copy_from_slice(&0u32.to_le_bytes());
    d[8..12].copy_from_slice(&7u32.to_le_bytes());
    d[12..16].copy_from_slice(&1u32.to_le_bytes());
    d[16..20].copy_from_slice(&(rows.len() as u32 + 1).to_le_bytes());
    d[20..32].fill(0);
    for (i, (idx, blob)) in rows.iter().enumerate() {
        let blkoff = d.len() / 16;
        let blkcnt = (16 + blob.len() + 12).div_ceil(16);
        let mut b = Vec::new();
        b.extend_from_slice(b"BlbS");
        b.extend_from_slice(&idx.to_le_bytes());
        b.extend_from_slice(&7u32.to_le_bytes());
        b.extend_from_slice(&(blob.len() as u32).to_le_bytes());
        b.extend_from_slice(blob);
        b.resize(blkcnt * 16 - 12, 0);
        let adler = rpm::adler32(&b);
        b.extend_from_slice(&adler.to_le_bytes());
        b.extend_from_slice(&(blob.len() as u32).to_le_bytes());
        b.extend_from_slice(b"BlbE");
        d.extend_from_slice(&b);
        // slots after the two the header takes; one free slot left between
        let slot = 32 + 16 * (2 * i + 1);
        d[slot + 4..slot + 8].copy_from_slice(&idx.to_le_bytes());
        d[slot + 8..slot + 12].copy_from_slice(&(blkoff as u32).to_le_bytes());
        d[slot + 12..slot + 16].copy_from_slice(&(blkcnt as u32).to_le_bytes());
    }
    d
}

#[test]
fn rpm_berkeley_db_and_ndb_databases_give_their_packages() {
    let t = tempfile::tempdir().unwrap();
    let rows = real_rpm_headers(t.path());
    // the sqlite database itself
    let sqlite = std::fs::read(t.path().join("sqlite/rpmdb.sqlite")).unwrap();
    assert_eq!(rpm_purls(rpm::parse_db(&sqlite, "/db").unwrap()), RPM_WANT);
    // Berkeley DB: small pages (every header on overflow pages), large pages (small headers
    // inline), both byte orders
    for (size, be) in [(512, false), (65536, false), (4096, true), (512, true)] {
        let db = bdb_file(t.path(), &rows, size, be);
        assert_eq!(
            rpm_purls(rpm::parse_db(&db, "/db").unwrap()),
            RPM_WANT,
            "page size {size}, big-endian {be}"
        );
        // every truncation: fewer packages or an error, never a panic
        for n in (0..db.len()).step_by(97) {
            let _ = rpm::parse_db(&db[..n], "/x");
        }
    }
    let ndb = ndb_file(&rows);
    assert_eq!(rpm_purls(rpm::parse_db(&ndb, "/db").unwrap()), RPM_WANT);
    for n in (0..ndb.len()).step_by(7) {
        let _ = rpm::parse_db(&ndb[..n], "/x");
    }
    // a blob whose checksum does not match is skipped
    let mut bad = ndb.clone();
    let last = bad.len() - 20;
    bad[last] ^= 1;
    assert_eq!(rpm::parse_db(&bad, "/db").unwrap().len(), 2);

    // through the scanner, at the places CentOS 7 and SUSE keep them
    let root = t.path().join("root");
    let put = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    put(
        "var/lib/rpm/Packages",
        &bdb_file(t.path(), &rows, 4096, false),
    );
    put("usr/lib/sysimage/rpm/Packages.db", &ndb);
    put("etc/os-release", b"ID=\"centos\"\nVERSION_ID=\"7\"\n");
    let s = scan_dir(&root, &Limits::default());
    let got = found(&s);
    assert_eq!(got.len(), 6, "{got:#?}");
    assert!(got.contains(&(
        "/var/lib/rpm/Packages".into(),
        "pkg:rpm/centos/hello@2.12-1.el7?arch=noarch&distro=centos-7&epoch=3&upstream=hello-2.12-1.el7.src.rpm"
            .into()
    )));
    assert!(got.contains(&(
        "/usr/lib/sysimage/rpm/Packages.db".into(),
        "pkg:rpm/centos/world@1.0-2?arch=noarch&distro=centos-7&upstream=world-1.0-2.src.rpm"
            .into()
    )));
}

#[test]
fn hostile_rpm_databases_are_bounded() {
    // Berkeley DB: an overflow chain that loops onto itself, and many items sharing one
    // chain (more bytes than the file)
    let ps = 512usize;
    let mut db = vec![0u8; ps * 4];
    db[12..16].copy_from_slice(&0x0006_1561u32.to_le_bytes());
    db[20..24].copy_from_slice(&(ps as u32).to_le_bytes());
    db[32..36].copy_from_slice(&3u32.to_le_bytes());
    // page 1: hash page with pairs whose values all point at overflow page 2, length 400
    let p1 = ps;
    db[p1 + 8..p1 + 12].copy_from_slice(&1u32.to_le_bytes());
    db[p1 + 25] = 13;
    let pairs = 16;
    db[p1 + 20..p1 + 22].copy_from_slice(&((pairs * 2) as u16).to_le_bytes());
    for i in 0..pairs {
        let koff = ps - 16 * (i + 1);
        let voff = koff - 12;
        db[p1 + 26 + 4 * i..p1 + 28 + 4 * i].copy_from_slice(&(koff as u16).to_le_bytes());
        db[p1 + 28 + 4 * i..p1 + 30 + 4 * i].copy_from_slice(&(voff as u16).to_le_bytes());
        db[p1 + voff] = 3;
        db[p1 + voff + 4..p1 + voff + 8].copy_from_slice(&2u32.to_le_bytes());
        db[p1 + voff + 8..p1 + voff + 12].copy_from_slice(&400u32.to_le_bytes());
    }
    // page 2: overflow page whose next page is itself
    let p2 = 2 * ps;
    db[p2 + 8..p2 + 12].copy_from_slice(&2u32.to_le_bytes());
    db[p2 + 16..p2 + 20].copy_from_slice(&2u32.to_le_bytes());
    db[p2 + 22..p2 + 24].copy_from_slice(&100u16.to_le_bytes());
    db[p2 + 25] = 7;
    let r = rpm::parse_db(&db, "/x");
    assert!(
        matches!(&r, Err(e) if e.contains("more than the file")),
        "{r:?}"
    );
    // a metadata page claiming 2^32 pages of 64 KiB over a 2 KiB file
    let mut huge = db.clone();
    huge[20..24].copy_from_slice(&65536u32.to_le_bytes());
    huge[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(rpm::parse_db(&huge, "/x").unwrap().is_empty());
    huge[20..24].copy_from_slice(&1000u32.to_le_bytes());
    assert!(rpm::parse_db(&huge, "/x").is_err());
    // ndb: slot pages beyond the file, slots pointing into the slot area or past the end
    let mut ndb = vec![0u8; 4096];
    for s in ndb.chunks_mut(16) {
        s[..4].copy_from_slice(b"Slot");
    }
    ndb[..4].copy_from_slice(b"RpmP");
    ndb[4..8].fill(0);
    ndb[12..16].copy_from_slice(&1000u32.to_le_bytes());
    assert!(rpm::parse_db(&ndb, "/x").is_err());
    ndb[12..16].copy_from_slice(&1u32.to_le_bytes());
    ndb[16..32].fill(0);
    for (i, (off, cnt)) in [(1u32, 4u32), (u32::MAX, u32::MAX), (300, u32::MAX / 16)]
        .iter()
        .enumerate()
    {
        let s = 32 + 16 * i;
        ndb[s + 4..s + 8].copy_from_slice(&1u32.to_le_bytes());
        ndb[s + 8..s + 12].copy_from_slice(&off.to_le_bytes());
        ndb[s + 12..s + 16].copy_from_slice(&cnt.to_le_bytes());
    }
    assert!(rpm::parse_db(&ndb, "/x").unwrap().is_empty());
    // garbage is an error, not a panic
    assert!(rpm::parse_db(b"garbage", "/x").is_err());
}

/// Purls are string-equal to syft's: the expected strings are what syft 1.18.1 wrote for the
/// same packages of debian:bookworm and the same Go binary and rpm database
/// (docs/attestations.md, "Side by side with BuildKit"); rbuild wrote `+` raw, `:` and `()`
/// escaped, qualifiers unsorted and no `upstream` before.
#[test]
fn purls_are_written_as_syft_writes_them() {
    let status = "Package: bsdutils\nStatus: install ok installed\nArchitecture: amd64\nSource: util-linux (2.38.1-5+deb12u3)\nVersion: 1:2.38.1-5+deb12u3\n\n\
Package: e2fsprogs\nStatus: install ok installed\nArchitecture: amd64\nSource: e2fsprogs (1.47.0-2)\nVersion: 1.47.0-2+b2\n\n\
Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc\nVersion: 2.36-9+deb12u14\n\n\
Package: libcap2\nStatus: install ok installed\nArchitecture: amd64\nSource: libcap2 (1:2.66-4+deb12u3)\nVersion: 1:2.66-4+deb12u3+b1\n\n\
Package: libstdc++6\nStatus: install ok installed\nArchitecture: amd64\nSource: gcc-12\nVersion: 12.2.0-14+deb12u1\n\n\
Package: tzdata\nStatus: install ok installed\nArchitecture: all\nVersion: 2026b-0+deb12u1\n";
    let t = tempfile::tempdir().unwrap();
    write(t.path(), "var/lib/dpkg/status", status);
    write(t.path(), "etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n");
    let s = scan_dir(t.path(), &Limits::default());
    assert_eq!(
        purls(&s),
        [
            "pkg:deb/debian/bsdutils@1:2.38.1-5%2Bdeb12u3?arch=amd64&distro=debian-12&upstream=util-linux%402.38.1-5%2Bdeb12u3",
            "pkg:deb/debian/e2fsprogs@1.47.0-2%2Bb2?arch=amd64&distro=debian-12&upstream=e2fsprogs%401.47.0-2",
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u14?arch=amd64&distro=debian-12&upstream=glibc",
            "pkg:deb/debian/libcap2@1:2.66-4%2Bdeb12u3%2Bb1?arch=amd64&distro=debian-12&upstream=libcap2%401:2.66-4%2Bdeb12u3",
            "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14%2Bdeb12u1?arch=amd64&distro=debian-12&upstream=gcc-12",
            "pkg:deb/debian/tzdata@2026b-0%2Bdeb12u1?arch=all&distro=debian-12",
        ]
    );
    // syft: pkg:golang/github.com/evanw/esbuild@(devel) for the real Go 1.17 binary above
    let modinfo = "0123456789abcdefpath\tgithub.com/evanw/esbuild/cmd/esbuild\nmod\tgithub.com/evanw/esbuild\t(devel)\t\n\nfedcba9876543210";
    let elf = pre118_go_elf(true, false, "go1.17.2", modinfo);
    assert!(gobin::parse(&elf, "/x")
        .iter()
        .any(|p| p.purl == "pkg:golang/github.com/evanw/esbuild@(devel)"));
}
