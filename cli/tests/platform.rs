//! `--platform` for a platform other than the host's, through the real CLI: steps without a
//! process build anywhere; a RUN step of a foreign architecture needs a binfmt_misc emulator,
//! and without one the build stops before it starts, naming the platform and the RUN line.
//! Several platforms at once (buildx-style) make an OCI image index over one manifest per
//! platform: tagged, exported (`type=oci`, per-platform `type=local` directories), pushed (each
//! manifest by digest, then the index), kept by `prune --all`, and usable as a base image.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use std::process::Command;

use common::{Project, REGISTRY};
use serde_json::Value;

/// A platform that is not the host's.
fn foreign() -> &'static str {
    if std::env::consts::ARCH == "aarch64" {
        "linux/amd64"
    } else {
        "linux/arm64"
    }
}

#[test]
fn a_copy_only_image_builds_for_a_foreign_platform() {
    let p = Project::new("FROM scratch\nCOPY a.txt /a.txt\n");
    p.file("a.txt", "A");
    let meta = p.path().join("meta.json");
    p.build(&[
        "--platform",
        foreign(),
        "--metadata-file",
        meta.to_str().unwrap(),
    ])
    .ok();
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let config = m["containerimage.config.digest"].as_str().unwrap();
    let blob = p
        .store
        .path()
        .join("blobs-v1/sha256")
        .join(config.trim_start_matches("sha256:"));
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(blob).unwrap()).unwrap();
    let arch = foreign().rsplit('/').next().unwrap();
    assert_eq!(cfg["architecture"], arch, "{cfg}");
    assert_eq!(cfg["os"], "linux");
}

#[test]
fn a_foreign_run_step_without_an_emulator_names_the_platform_and_the_line_before_anything_runs() {
    // A foreign platform this host has no emulator for (so the error must happen); a host
    // that can emulate every candidate cannot run this test, which then fails loudly.
    let binfmt = std::path::Path::new("/proc/sys/fs/binfmt_misc");
    let candidates = [
        (
            foreign(),
            if foreign().ends_with("arm64") {
                "qemu-aarch64"
            } else {
                "qemu-x86_64"
            },
        ),
        ("linux/riscv64", "qemu-riscv64"),
        ("linux/s390x", "qemu-s390x"),
        ("linux/ppc64le", "qemu-ppc64le"),
        ("linux/mips64le", "qemu-mips64el"),
    ];
    let Some(&(foreign, _)) = candidates
        .iter()
        .find(|(_, qemu)| !binfmt.join(qemu).exists())
    else {
        panic!("every candidate platform has a binfmt_misc emulator here: {candidates:?}");
    };
    let p = Project::new("FROM scratch\nCOPY a.txt /a.txt\nRUN [\"/a.txt\"]\n");
    p.file("a.txt", "A");
    let r = p.build(&["--platform", foreign]).fails();
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    let err = r.stderr();
    assert!(err.contains(foreign), "{err}");
    assert!(err.contains("binfmt_misc"), "{err}");
    assert!(err.contains(">>> RUN [\"/a.txt\"]"), "{err}");
    // With the host's platform first, every platform is checked before anything runs.
    let both = format!("{},{}", common::host_platform(), foreign);
    let r = p.build(&["--platform", &both]).fails();
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    let err = r.stderr();
    assert!(err.contains(foreign), "{err}");
    assert!(err.contains(">>> RUN [\"/a.txt\"]"), "{err}");
    assert!(
        !err.contains(&format!("[{} ", common::host_platform())),
        "the host platform's steps ran first: {err}"
    );
}

/// A Dockerfile whose files and label depend on the target platform without a RUN step.
const PER_PLATFORM: &str = "FROM scratch\nARG TARGETPLATFORM\nARG TARGETARCH\nCOPY a.txt /a-$TARGETARCH.txt\nLABEL platform=$TARGETPLATFORM\n";

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
}

/// Read a blob of the project's store as JSON.
fn blob(p: &Project, digest: &str) -> Value {
    let path = p
        .store
        .path()
        .join("blobs-v1/sha256")
        .join(digest.trim_start_matches("sha256:"));
    json(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// `skopeo inspect` of the `arch` image of `image` (picked from an index).
fn skopeo_arch(arch: &str, image: &str, tls_verify: bool) -> Value {
    let tls = format!("--tls-verify={tls_verify}");
    let mut args = vec!["--override-arch", arch, "--override-os", "linux", "inspect"];
    if image.starts_with("docker://") {
        args.push(&tls);
    }
    args.push(image);
    skopeo(&args)
}

/// `sha256:<hex>` of `data` (sha256sum).
fn sha256(data: &[u8]) -> String {
    use std::io::Write;
    let mut c = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

fn skopeo(args: &[&str]) -> Value {
    common::require_tools(&["skopeo"]);
    let o = Command::new("skopeo").args(args).output().expect("skopeo");
    assert!(
        o.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    json(&o.stdout)
}

/// Check an index: two manifests, amd64 then arm64, each with a config of that architecture
/// (and the label made from `$TARGETPLATFORM`); returns the manifest digests.
fn check_index(p: &Project, index: &Value) -> Vec<String> {
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{index}"
    );
    let ms = index["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 2, "{index}");
    let mut out = Vec::new();
    for (m, arch) in ms.iter().zip(["amd64", "arm64"]) {
        assert_eq!(m["platform"]["os"], "linux", "{index}");
        assert_eq!(m["platform"]["architecture"], arch, "{index}");
        let manifest = blob(p, m["digest"].as_str().unwrap());
        let config = blob(p, manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(config["architecture"], arch, "{config}");
        assert_eq!(
            config["config"]["Labels"]["platform"],
            format!("linux/{arch}"),
            "{config}"
        );
        out.push(m["digest"].as_str().unwrap().to_string());
    }
    out
}

#[test]
fn two_platforms_make_an_index_that_is_tagged_exported_inspected_and_kept_by_prune() {
    let p = Project::new(PER_PLATFORM);
    p.file("a.txt", "A");
    let meta = p.path().join("meta.json");
    let r = p
        .build(&[
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            "mp:1",
            "--provenance=false",
            "--metadata-file",
            meta.to_str().unwrap(),
            "-o",
            "type=oci,dest=mp.tar",
            "-o",
            "type=local,dest=out",
        ])
        .ok();
    // BuildKit's step names in multi-platform builds
    assert!(
        r.stderr().contains("[linux/arm64 1/1] COPY a.txt"),
        "{}",
        r.stderr()
    );
    let layout = format!(
        "oci:{}/layout-v1:docker.io/library/mp:1",
        p.store.path().display()
    );
    let index = skopeo(&["inspect", "--raw", &layout]);
    let manifests = check_index(&p, &index);

    // --metadata-file: the index is the image's digest
    let m = json(&std::fs::read(&meta).unwrap());
    assert_eq!(
        m["containerimage.descriptor"]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let index_digest = m["containerimage.digest"].as_str().unwrap().to_string();
    assert!(m.get("containerimage.config.digest").is_none(), "{m}");

    // type=oci: index.json → the index; skopeo picks a platform from it
    let tar = format!("oci-archive:{}/mp.tar", p.path().display());
    // (its layers are gzip-compressed, so its manifests are not the store's)
    let exported = skopeo(&["inspect", "--raw", &tar]);
    assert_eq!(
        exported["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{exported}"
    );
    let platforms: Vec<&Value> = exported["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["platform"])
        .collect();
    assert_eq!(
        platforms,
        [
            &index["manifests"][0]["platform"],
            &index["manifests"][1]["platform"]
        ]
    );
    let arm = skopeo_arch("arm64", &tar, true);
    assert_eq!(arm["Architecture"], "arm64", "{arm}");
    assert_eq!(arm["Labels"]["platform"], "linux/arm64", "{arm}");
    // type=local: one directory per platform, as buildx
    assert_eq!(
        std::fs::read_to_string(p.path().join("out/linux_amd64/a-amd64.txt")).unwrap(),
        "A"
    );
    assert_eq!(
        std::fs::read_to_string(p.path().join("out/linux_arm64/a-arm64.txt")).unwrap(),
        "A"
    );
    assert!(!p.path().join("out/linux_arm64/a-amd64.txt").exists());

    // images: one row with both platforms; inspect: the index, or a platform's image
    let images = p.cmd(&["images"]).output().unwrap();
    let images = String::from_utf8_lossy(&images.stdout).to_string();
    let row = images
        .lines()
        .find(|l| l.starts_with("mp "))
        .unwrap_or_else(|| panic!("{images}"));
    assert!(row.contains("linux/amd64,linux/arm64"), "{images}");
    assert!(row.contains(&index_digest[7..19]), "{images}");
    let o = p.cmd(&["inspect", "mp:1"]).output().unwrap();
    let i = json(&o.stdout);
    assert_eq!(i["Digest"], index_digest.as_str());
    assert_eq!(i["Index"]["manifests"].as_array().unwrap().len(), 2, "{i}");
    let o = p
        .cmd(&["inspect", "--platform", "linux/arm64", "mp:1"])
        .output()
        .unwrap();
    let i = json(&o.stdout);
    assert_eq!(i["Config"]["architecture"], "arm64", "{i}");
    assert_eq!(i["Digest"], manifests[1].as_str());

    // prune --all removes the cache but keeps every blob of the tagged index
    let o = p.cmd(&["prune", "--all"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(skopeo(&["inspect", "--raw", &layout]), index);
    check_index(&p, &index);
    for d in &manifests {
        let manifest = blob(&p, d);
        for l in manifest["layers"].as_array().unwrap() {
            let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
            assert!(
                p.store.path().join("blobs-v1/sha256").join(hex).exists(),
                "layer {hex} pruned"
            );
        }
    }
    // history shows the host platform's image
    let o = p.cmd(&["history", "mp:1"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("COPY a.txt"),
        "{o:?}"
    );
    // rbuild load of the type=oci archive into another store keeps the index and its name
    let other = tempfile::tempdir().unwrap();
    let o = p
        .cmd(&["load", "-i", "mp.tar"])
        .env("RBUILD_ROOT", other.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = p
        .cmd(&["images"])
        .env("RBUILD_ROOT", other.path())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("linux/amd64,linux/arm64"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let back = format!("{}/again.tar", p.path().display());
    let o = p
        .cmd(&["save", "--format", "oci", "-o", &back, "mp:1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        skopeo(&["inspect", "--raw", &format!("oci-archive:{back}")]),
        index
    );
}

#[test]
fn outputs_that_cannot_hold_an_index_are_refused_before_the_build() {
    let p = Project::new(PER_PLATFORM);
    p.file("a.txt", "A");
    for args in [&["-o", "type=docker,dest=d.tar"][..], &["--load"][..]] {
        let mut a = vec!["--platform", "linux/amd64,linux/arm64"];
        a.extend_from_slice(args);
        let r = p.build(&a).fails();
        assert_eq!(r.code(), Some(2), "{}", r.stderr());
        assert!(
            r.stderr()
                .contains("docker exporter does not currently support exporting manifest lists"),
            "{}",
            r.stderr()
        );
        assert!(
            !r.stderr().contains("COPY"),
            "nothing may run: {}",
            r.stderr()
        );
    }
    assert!(!p.path().join("d.tar").exists());
}

#[test]
fn a_pushed_multi_platform_image_is_an_index_in_the_registry_and_a_base_image() {
    let p = Project::new(PER_PLATFORM);
    p.file("a.txt", "A");
    let name = format!("{REGISTRY}/rbuild-test/multiplat-{}:v1", std::process::id());
    let meta = p.path().join("meta.json");
    p.build(&[
        "--platform",
        "linux/amd64",
        "--platform",
        "linux/arm64",
        "-t",
        &name,
        "--push",
        "--provenance=false",
        "--metadata-file",
        meta.to_str().unwrap(),
    ])
    .ok();
    let remote = format!("docker://{name}");
    let index = skopeo(&["inspect", "--tls-verify=false", "--raw", &remote]);
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{index}"
    );
    let ms = index["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 2, "{index}");
    assert_eq!(ms[1]["platform"]["architecture"], "arm64");
    // --metadata-file names the pushed index (gzip layers, so not the store's)
    let m = json(&std::fs::read(&meta).unwrap());
    let raw = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw", &remote])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(m["containerimage.digest"], sha256(&raw), "{m}");
    assert_eq!(
        m["containerimage.descriptor"]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let arm = skopeo_arch("arm64", &remote, false);
    assert_eq!(arm["Architecture"], "arm64", "{arm}");
    assert_eq!(arm["Labels"]["platform"], "linux/arm64", "{arm}");
    let amd = skopeo_arch("amd64", &remote, false);
    assert_eq!(amd["Architecture"], "amd64", "{amd}");

    // FROM the pushed index, built for the host: the host's manifest is picked
    let q = Project::new(&format!("FROM {name}\nCOPY b.txt /b.txt\n"));
    q.file("b.txt", "B");
    q.build(&["-o", "type=local,dest=out"]).ok();
    let arch = common::host_platform()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        std::fs::read_to_string(q.path().join(format!("out/a-{arch}.txt"))).unwrap(),
        "A"
    );
    assert_eq!(
        std::fs::read_to_string(q.path().join("out/b.txt")).unwrap(),
        "B"
    );
    // and for the other platform
    q.build(&["--platform", foreign(), "-o", "type=local,dest=out2"])
        .ok();
    let other = foreign().rsplit('/').next().unwrap();
    assert!(q.path().join(format!("out2/a-{other}.txt")).exists());
}

#[test]
fn annotations_reach_the_index_its_descriptor_and_each_platforms_entry() {
    let p = Project::new(PER_PLATFORM);
    p.file("a.txt", "A");
    let args = [
        "--platform",
        "linux/amd64,linux/arm64",
        "--annotation",
        "index:org.opencontainers.image.title=multi",
        "--annotation",
        "index-descriptor:org.example.entry=1",
        "--annotation",
        "manifest-descriptor[linux/arm64]:org.example.arm=yes",
        "--annotation",
        "manifest:org.example.every=1",
        "--annotation",
        "manifest[linux/arm64]:org.example.armonly=1",
        "-o",
        "type=oci,dest=ann.tar",
    ];
    p.build(&args).ok();
    let tar = format!("oci-archive:{}/ann.tar", p.path().display());
    let index = skopeo(&["inspect", "--raw", &tar]);
    assert_eq!(
        index["annotations"]["org.opencontainers.image.title"], "multi",
        "{index}"
    );
    let ms = index["manifests"].as_array().unwrap();
    assert_eq!(ms[1]["annotations"]["org.example.arm"], "yes", "{index}");
    assert!(ms[0].get("annotations").is_none(), "{index}");
    let layout = Command::new("tar")
        .args(["-xOf", "ann.tar", "index.json"])
        .current_dir(p.path())
        .output()
        .unwrap();
    let layout = json(&layout.stdout);
    assert_eq!(
        layout["manifests"][0]["annotations"]["org.example.entry"], "1",
        "{layout}"
    );
    // the manifests carry manifest: annotations
    let manifest = Command::new("tar")
        .args([
            "-xOf",
            "ann.tar",
            &format!(
                "blobs/sha256/{}",
                ms[0]["digest"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("sha256:")
            ),
        ])
        .current_dir(p.path())
        .output()
        .unwrap();
    let manifest = json(&manifest.stdout);
    assert_eq!(
        manifest["annotations"]["org.example.every"], "1",
        "{manifest}"
    );
    assert!(
        manifest["annotations"].get("org.example.armonly").is_none(),
        "an arm64-only annotation on the amd64 manifest: {manifest}"
    );
    // one platform has no index: index levels are refused there
    let r = p
        .build(&["--annotation", "index:org.opencontainers.image.title=x"])
        .fails();
    assert_eq!(r.code(), Some(2), "{}", r.stderr());
    assert!(
        r.stderr().contains("build several platforms"),
        "{}",
        r.stderr()
    );
}

#[test]
fn a_failing_platform_fails_the_build_with_its_own_error() {
    // only amd64 has its file: the arm64 COPY fails; amd64 may finish or be stopped
    let p = Project::new("FROM scratch\nARG TARGETARCH\nCOPY a-$TARGETARCH.txt /a\n");
    p.file("a-amd64.txt", "A");
    let r = p
        .build(&["--platform", "linux/amd64,linux/arm64", "-t", "half:1"])
        .fails();
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    let err = r.stderr();
    assert!(err.contains("a-arm64.txt"), "{err}");
    assert!(!err.contains("ERROR: build cancelled"), "{err}");
    // nothing is tagged
    let o = p.cmd(&["images"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("half"),
        "{o:?}"
    );
}

#[test]
fn explain_compares_each_platform_with_its_own_previous_build() {
    let p = Project::new(PER_PLATFORM);
    p.file("a.txt", "A");
    let args = ["--explain", "--platform", "linux/amd64,linux/arm64"];
    p.build(&args).ok();
    p.file("a.txt", "changed");
    let r = p.build(&args).ok();
    let err = r.stderr();
    // both platforms' COPY missed because of a.txt, and nothing else
    let reasons: Vec<&str> = err
        .lines()
        .filter_map(|l| l.split_once(" EXPLAIN: ").map(|(_, r)| r))
        .filter(|r| r.contains("a.txt"))
        .collect();
    assert_eq!(
        reasons,
        [
            "context files changed: a.txt (changed)",
            "context files changed: a.txt (changed)"
        ],
        "{err}"
    );
}

#[test]
fn a_build_platform_stage_runs_once_for_all_target_platforms() {
    // The RUN runs natively (FROM --platform=$BUILDPLATFORM): no emulator needed, and its
    // key carries the build platform, so the second target platform reuses it.
    let p = Project::new(
        "FROM --platform=$BUILDPLATFORM busybox AS build\nCOPY a.txt /a\nRUN cp /a /b && echo ran-once\nFROM scratch\nARG TARGETARCH\nCOPY --from=build /b /b-$TARGETARCH\n",
    );
    p.file("a.txt", "A");
    let r = p
        .build(&[
            "--platform",
            &format!("{},{}", common::host_platform(), foreign()),
            "-o",
            "type=local,dest=out",
        ])
        .ok();
    let err = r.stderr();
    let ran = err
        .lines()
        .filter(|l| l.ends_with(" ran-once") && !l.contains("RUN"))
        .count();
    assert_eq!(ran, 1, "{err}");
    let arch = |p: &str| p.rsplit('/').next().unwrap().to_string();
    let (host, other) = (arch(common::host_platform()), arch(foreign()));
    for a in [&host, &other] {
        let f = p.path().join(format!("out/linux_{a}/b-{a}"));
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "A", "{}", f.display());
    }
}
