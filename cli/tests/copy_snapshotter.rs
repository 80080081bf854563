//! End-to-end builds on the copy snapshotter (`RBUILD_SNAPSHOTTER=copy`: no overlayfs; each step
//! runs in a materialized copy of its input and the layer is computed by a diff), through the
//! real CLI, with the same real parts as `e2e.rs`: the CNCF distribution registry on
//! 127.0.0.1:5055 (seeded by `.ci/setup.sh`), real namespaces (root), and skopeo, umoci and tar
//! as independent readers. Each build is compared with the overlayfs build of the same
//! Dockerfile (both with `SOURCE_DATE_EPOCH=0`): the layers must be the same, byte for byte.
//! A missing prerequisite fails the test with the reason; nothing is skipped.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use common::image::{skopeo_inspect, tar_listing, umoci_unpack, Unpacked};
use common::{require_env, Run, REGISTRY};

use std::fs;
use std::process::Command;

use serde_json::Value;
use tempfile::TempDir;

/// A build context plus a store, built with one snapshotter (`copy` or `overlay`).
struct Project {
    dir: TempDir,
    store: TempDir,
    snapshotter: &'static str,
}

impl Project {
    fn new(dockerfile: &str, snapshotter: &'static str, files: &[(&str, &str)]) -> Self {
        require_env();
        common::require_tools(&["skopeo", "umoci", "tar"]);
        let p = Project {
            dir: tempfile::tempdir().unwrap(),
            store: tempfile::tempdir().unwrap(),
            snapshotter,
        };
        p.file("Dockerfile", dockerfile);
        for (rel, content) in files {
            p.file(rel, content);
        }
        p
    }

    fn file(&self, rel: &str, content: &str) {
        let p = self.dir.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    /// `rbuild -t TAG .` with this project's snapshotter and SOURCE_DATE_EPOCH=0.
    fn build(&self, tag: &str) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_rbuild"))
            .args(["build", "-t", tag, "."])
            .env("RBUILD_ROOT", self.store.path())
            .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
            .env("RBUILD_PROGRESS", "plain")
            .env("RBUILD_SNAPSHOTTER", self.snapshotter)
            .env("SOURCE_DATE_EPOCH", "0")
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        Run { out }
    }

    fn layout(&self, name: &str) -> String {
        format!(
            "{}/layout-v1:docker.io/library/{name}",
            self.store.path().display()
        )
    }

    fn skopeo(&self, what: &str, name: &str) -> Value {
        skopeo_inspect(what, &self.layout(name))
    }

    /// The image's root filesystem, unpacked by umoci from the local store.
    fn unpack(&self, name: &str) -> Unpacked {
        umoci_unpack(&self.layout(name))
    }

    fn diff_ids(&self, name: &str) -> Vec<String> {
        self.skopeo("--config", name)["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect()
    }

    /// `tar -tv` listings of every layer of an image, bottom first.
    fn layer_listings(&self, name: &str) -> Vec<String> {
        let m = self.skopeo("--raw", name);
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let digest = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
                tar_listing(&self.store.path().join("blobs-v1/sha256").join(digest))
            })
            .collect()
    }

    /// Work directories left in the store's tmp/ (there must be none after a build).
    fn tmp_leftovers(&self) -> Vec<String> {
        fs::read_dir(self.store.path().join("tmp"))
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Build `dockerfile` with the copy snapshotter and with overlayfs; assert both succeed, the
/// copy build leaves no work directory behind, and both images have the same layers (diff
/// ids and `tar -tv` listings). Returns the copy project for further checks.
fn build_both(dockerfile: &str, files: &[(&str, &str)], tag: &str) -> Project {
    let copy = Project::new(dockerfile, "copy", files);
    copy.build(tag).ok();
    assert_eq!(
        copy.tmp_leftovers(),
        Vec::<String>::new(),
        "work directories are removed"
    );
    let overlay = Project::new(dockerfile, "overlay", files);
    overlay.build(tag).ok();
    let (lc, lo) = (copy.layer_listings(tag), overlay.layer_listings(tag));
    assert_eq!(lc.len(), lo.len(), "same number of layers");
    for (i, (c, o)) in lc.iter().zip(&lo).enumerate() {
        assert_eq!(
            c, o,
            "layer {i} differs between the copy and the overlay snapshotter"
        );
    }
    assert_eq!(
        copy.diff_ids(tag),
        overlay.diff_ids(tag),
        "the layers are byte-identical"
    );
    copy
}

const ISSUE_EXAMPLE: &str = r#"ARG BASE=busybox
FROM ${BASE} AS build
WORKDIR /src
COPY . .
RUN echo "built $(cat version.txt)" > /out.txt
FROM busybox
ENV GREETING=hello
COPY --from=build /out.txt /app/out.txt
USER 1000:1000
EXPOSE 8080
LABEL org.opencontainers.image.title=demo
ENTRYPOINT ["cat"]
CMD ["/app/out.txt"]
"#;

#[test]
fn the_issue_example_builds_the_same_image_as_with_overlayfs() {
    let p = build_both(ISSUE_EXAMPLE, &[("version.txt", "1.2.3")], "app:v1");
    let root = p.unpack("app:v1");
    assert_eq!(root.read("/app/out.txt"), "built 1.2.3\n");
    assert!(root.exists("/bin/busybox"), "the base layer is present");
    assert!(!root.exists("/src/version.txt"));
    let listings = p.layer_listings("app:v1");
    let top = listings.last().unwrap();
    assert!(top.contains("app/out.txt"), "{top}");
    assert_eq!(top.lines().count(), 2, "only /app and /app/out.txt:\n{top}");
}

#[test]
fn deleting_a_base_file_in_run_is_a_whiteout() {
    let p = build_both(
        "FROM busybox\nRUN rm /etc/group && mkdir -p /x && echo y > /x/y && hostname > /host\n",
        &[],
        "wh:1",
    );
    let listing = p.layer_listings("wh:1").pop().unwrap();
    assert!(listing.contains("etc/.wh.group"), "{listing}");
    for bad in [
        "etc/hosts",
        "etc/resolv.conf",
        "etc/hostname",
        "proc/",
        "dev/",
        "bin/",
    ] {
        assert!(
            !listing.contains(bad),
            "{bad} is not a change of this step:\n{listing}"
        );
    }
    let r = p.unpack("wh:1");
    assert!(!r.exists("/etc/group"));
    assert!(r.exists("/etc/passwd"));
    assert_eq!(r.read("/x/y"), "y\n");
    assert_eq!(r.read("/host"), "buildkitsandbox\n");
}

#[test]
fn workdir_and_copy_work_on_the_copy_snapshotter() {
    let p = build_both(
        "FROM busybox\nWORKDIR /app/deep\nCOPY f.txt rel/f.txt\nCOPY f.txt ./\nCOPY dir /tree\nRUN pwd > /pwd && cat rel/f.txt >> /pwd\n",
        &[("f.txt", "F"), ("dir/a", "a"), ("dir/sub/b", "b")],
        "wd:1",
    );
    let r = p.unpack("wd:1");
    assert_eq!(r.read("/app/deep/rel/f.txt"), "F");
    assert_eq!(r.read("/app/deep/f.txt"), "F");
    assert_eq!(r.read("/tree/a"), "a");
    assert_eq!(r.read("/tree/sub/b"), "b");
    assert_eq!(r.read("/pwd"), "/app/deep\nF");
    let listings = p.layer_listings("wd:1");
    // The second COPY writes only the new file (and its parents), not the first COPY's.
    let second = &listings[listings.len() - 3];
    assert!(second.contains("app/deep/f.txt"), "{second}");
    assert!(!second.contains("rel/f.txt"), "{second}");
}

#[test]
fn a_replaced_directory_is_opaque() {
    let p = build_both(
        "FROM busybox\nRUN mkdir -p /data/sub && echo 1 > /data/a && echo 2 > /data/sub/b\nRUN rm -rf /data && mkdir /data && echo x > /data/only && rm /bin/ls\n",
        &[],
        "op:1",
    );
    let listing = p.layer_listings("op:1").pop().unwrap();
    assert!(listing.contains("data/.wh..wh..opq"), "{listing}");
    assert!(listing.contains("bin/.wh.ls"), "{listing}");
    let r = p.unpack("op:1");
    assert_eq!(r.names("/data"), ["only"]);
    assert_eq!(r.read("/data/only"), "x\n");
    assert!(!r.exists("/bin/ls"));
    assert!(r.exists("/bin/cat"));
}

#[test]
fn the_copy_snapshotter_really_runs_without_overlayfs() {
    let df = "FROM busybox\nRUN awk '$5 == \"/\"' /proc/self/mountinfo > /rootmount\n";
    let copy = Project::new(df, "copy", &[]);
    copy.build("m:1").ok();
    let m = copy.unpack("m:1").read("/rootmount");
    assert!(!m.is_empty() && !m.contains(" - overlay "), "{m}");
    let overlay = Project::new(df, "overlay", &[]);
    overlay.build("m:1").ok();
    let m = overlay.unpack("m:1").read("/rootmount");
    assert!(m.contains(" - overlay "), "{m}");
}

#[test]
fn a_failing_step_leaves_no_work_directory() {
    let p = Project::new("FROM busybox\nRUN echo x > /x && exit 3\n", "copy", &[]);
    let r = p.build("f:1");
    assert!(!r.out.status.success(), "{}", r.stderr());
    assert!(r.stderr().contains("exit code 3"), "{}", r.stderr());
    assert_eq!(p.tmp_leftovers(), Vec::<String>::new());
    for e in fs::read_dir(p.store.path().join("snapshots-v1")).unwrap() {
        let dir = e.unwrap().path();
        assert!(
            dir.join("committed").exists(),
            "the failed step's snapshot {} is removed",
            dir.display()
        );
    }
}
