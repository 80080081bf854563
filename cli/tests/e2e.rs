//! End-to-end builds through the real CLI, with real parts: the CNCF distribution registry on
//! 127.0.0.1:5055 (seeded with busybox by `.ci/setup.sh`, reached through rbuild's mirror
//! setting as `docker.io/library/busybox`), real namespaces and overlayfs (root), and skopeo and
//! umoci as independent readers of what rbuild writes. A missing prerequisite fails the test
//! with the reason; nothing is skipped.
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
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tempfile::TempDir;

struct Project {
    dir: TempDir,
    store: TempDir,
}

impl Project {
    fn new(dockerfile: &str) -> Self {
        require_env();
        common::require_tools(&["skopeo", "umoci", "tar"]);
        let p = Project {
            dir: tempfile::tempdir().unwrap(),
            store: tempfile::tempdir().unwrap(),
        };
        p.file("Dockerfile", dockerfile);
        p
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, rel: &str, content: &str) -> &Self {
        let p = self.dir.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
        self
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
        c.args(args)
            .env("RBUILD_ROOT", self.store.path())
            .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
            .env("RBUILD_PROGRESS", "plain")
            .env_remove("SOURCE_DATE_EPOCH")
            .current_dir(self.dir.path());
        c
    }

    fn rbuild(&self, args: &[&str]) -> Run {
        Run {
            out: self.cmd(args).output().unwrap(),
        }
    }

    /// `rbuild ARGS… .` in the project dir.
    fn build(&self, args: &[&str]) -> Run {
        let mut a: Vec<&str> = args.to_vec();
        a.push(".");
        self.rbuild(&a)
    }

    fn layout(&self, name: &str) -> String {
        format!(
            "{}/layout-v1:{}",
            self.store.path().display(),
            full_name(name)
        )
    }

    /// `tar -tv` listing of layer `i` (negative counts from the top) of an image.
    /// The image config, read by skopeo from the local store's OCI layout.
    fn config(&self, name: &str) -> Value {
        skopeo_inspect("--config", &self.layout(name))
    }

    fn manifest(&self, name: &str) -> Value {
        skopeo_inspect("--raw", &self.layout(name))
    }

    /// The image's root filesystem, unpacked by umoci from the local store.
    fn unpack(&self, name: &str) -> Unpacked {
        umoci_unpack(&self.layout(name))
    }

    fn layer_listing(&self, name: &str, i: isize) -> String {
        let m = self.manifest(name);
        let layers = m["layers"].as_array().unwrap();
        let idx = if i < 0 { layers.len() as isize + i } else { i } as usize;
        let digest = layers[idx]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        tar_listing(&self.store.path().join("blobs-v1/sha256").join(digest))
    }
}

fn full_name(name: &str) -> String {
    let (repo, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r.to_string(), t.to_string()),
        _ => (name.to_string(), "latest".to_string()),
    };
    if repo.contains('/') && repo.split('/').next().unwrap().contains(['.', ':']) {
        format!("{repo}:{tag}")
    } else if repo.contains('/') {
        format!("docker.io/{repo}:{tag}")
    } else {
        format!("docker.io/library/{repo}:{tag}")
    }
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
fn issue_example_builds_with_the_expected_files_and_config() {
    let p = Project::new(ISSUE_EXAMPLE);
    p.file("version.txt", "1.2.3");
    p.build(&["-t", "app:v1"]).ok();
    let root = p.unpack("app:v1");
    assert_eq!(root.read("/app/out.txt"), "built 1.2.3\n");
    assert!(
        root.exists("/bin/busybox"),
        "the busybox base layer is present"
    );
    // The build stage's files are not in the final image.
    assert!(!root.exists("/src/version.txt"));
    let cfg = p.config("app:v1");
    let c = &cfg["config"];
    let env: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"GREETING=hello"), "{env:?}");
    assert!(env.iter().any(|e| e.starts_with("PATH=")), "{env:?}");
    assert_eq!(c["User"], "1000:1000");
    assert!(c["ExposedPorts"]["8080/tcp"].is_object());
    assert_eq!(c["Labels"]["org.opencontainers.image.title"], "demo");
    assert_eq!(c["Entrypoint"], serde_json::json!(["cat"]));
    assert_eq!(c["Cmd"], serde_json::json!(["/app/out.txt"]));
    assert_eq!(cfg["os"], "linux");
    assert_eq!(cfg["rootfs"]["type"], "layers");
    let diff_ids = cfg["rootfs"]["diff_ids"].as_array().unwrap();
    let layers = p.manifest("app:v1")["layers"].as_array().unwrap().len();
    assert_eq!(diff_ids.len(), layers);
    let history = cfg["history"].as_array().unwrap();
    let non_empty = history.iter().filter(|h| h["empty_layer"] != true).count();
    assert_eq!(
        non_empty, layers,
        "one non-empty history entry per layer: {history:?}"
    );
    // rbuild images lists it
    let images = p.rbuild(&["images"]).ok().stdout();
    assert!(
        images
            .lines()
            .any(|l| l.starts_with("app ") && l.contains(" v1 ")),
        "{images}"
    );
}

#[test]
fn a_rebuild_with_nothing_changed_is_fully_cached_and_runs_no_step() {
    let p = Project::new(
        "FROM busybox\nCOPY a.txt /a.txt\nRUN cat /proc/sys/kernel/random/uuid > /uuid\nRUN echo second > /second\n",
    );
    p.file("a.txt", "A");
    let first = p.build(&["-t", "c:1"]).ok();
    assert!(first.stderr().contains("DONE"), "{}", first.stderr());
    let uuid1 = p.unpack("c:1").read("/uuid");
    let m1 = p.manifest("c:1");
    let second = p.build(&["-t", "c:1"]).ok();
    let err = second.stderr();
    assert_eq!(
        err.matches("CACHED").count(),
        4,
        "FROM, COPY and both RUNs are cached:\n{err}"
    );
    assert_eq!(
        p.unpack("c:1").read("/uuid"),
        uuid1,
        "the RUN step did not run again"
    );
    assert_eq!(
        p.manifest("c:1"),
        m1,
        "a fully cached rebuild yields the same image"
    );
    // --no-cache runs it again.
    p.build(&["--no-cache", "-t", "c:2"]).ok();
    assert_ne!(p.unpack("c:2").read("/uuid"), uuid1);
}

#[test]
fn a_failing_run_reports_the_exit_code_the_line_and_the_output() {
    let p = Project::new("FROM busybox\nRUN echo preparing\nRUN echo 'something broke' >&2; exit 3\nRUN echo never\n");
    let r = p.build(&["-t", "f:1"]).fails();
    assert_eq!(r.out.status.code(), Some(1));
    let err = r.stderr();
    assert!(err.contains("exit code 3"), "{err}");
    assert!(err.contains("something broke"), "{err}");
    assert!(err.contains("Dockerfile:3"), "{err}");
    assert!(
        err.contains(">>> RUN echo 'something broke' >&2; exit 3"),
        "{err}"
    );
    assert!(!err.contains("never\n#"), "later steps do not run: {err}");
    // nothing was tagged
    assert!(!p.rbuild(&["images"]).ok().stdout().contains("f "));
}

#[test]
fn copy_of_a_directory_copies_its_contents_and_wildcards_match_per_segment() {
    let p = Project::new(
        "FROM busybox\nCOPY src /dst\nCOPY *.txt /texts/\nCOPY one.txt two.txt /both/\nCOPY src/sub/ /subonly\n",
    );
    p.file("src/a", "a")
        .file("src/sub/b", "b")
        .file("one.txt", "1")
        .file("two.txt", "2")
        .file("three.md", "3");
    p.build(&["-t", "cp:1"]).ok();
    let r = p.unpack("cp:1");
    assert_eq!(r.read("/dst/a"), "a");
    assert_eq!(r.read("/dst/sub/b"), "b");
    assert!(
        !r.exists("/dst/src"),
        "directory contents, not the directory itself"
    );
    assert_eq!(r.read("/texts/one.txt"), "1");
    assert_eq!(r.read("/texts/two.txt"), "2");
    assert!(!r.exists("/texts/three.md"));
    assert_eq!(r.read("/both/two.txt"), "2");
    assert_eq!(r.read("/subonly/b"), "b");
}

#[test]
fn a_socket_in_the_context_arrives_as_an_empty_regular_file() {
    // BuildKit v0.25 (fsutil stat.go clears the socket bit in the context transfer): the
    // socket is an empty regular file with the socket's permissions, in COPY and in RUN.
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new("FROM busybox\nCOPY . /c/\nRUN stat -c 'SOCK %F %s %a' /c/sub/s.sock\n");
    p.file("sub/keep", "k");
    let sock = p.path().join("sub/s.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o640)).unwrap();
    let r = p.build(&["-t", "sock:1"]).ok();
    assert!(
        r.stderr().contains("SOCK regular empty file 0 640"),
        "{}",
        r.stderr()
    );
    let img = p.unpack("sock:1");
    assert_eq!(img.read("/c/sub/s.sock"), "");
    assert_eq!(img.read("/c/sub/keep"), "k");
}

#[test]
fn copy_parents_pivot_patterns_span_directories_and_key_what_they_copy() {
    // BuildKit v0.25 (testCopyRelativeParents): before the first `/./` a wildcard source,
    // after it an include pattern whose `**` spans directories; kept below the destination.
    let p = Project::new(
        "FROM busybox\nCOPY --parents src*/./x/**/f.txt /o/\nRUN cat /o/x/a/b/f.txt /o/x/f.txt\n",
    );
    p.file("src1/x/a/b/f.txt", "deep1\n")
        .file("src2/x/f.txt", "top2\n")
        .file("src2/x/g.txt", "not copied\n");
    p.build(&["-t", "par:1"]).ok();
    let img = p.unpack("par:1");
    assert_eq!(img.read("/o/x/a/b/f.txt"), "deep1\n");
    assert_eq!(img.read("/o/x/f.txt"), "top2\n");
    assert!(!img.exists("/o/x/g.txt") && !img.exists("/o/src1"));
    // Attack: a context symlink to a host directory where the pattern walks is copied as a
    // link, never followed out of the context.
    let host = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(host.path().join("x/a")).unwrap();
    std::fs::write(host.path().join("x/a/passwd"), "host secret\n").unwrap();
    std::os::unix::fs::symlink(host.path(), p.path().join("src3")).unwrap();
    std::fs::create_dir_all(p.path().join("src4/x")).unwrap();
    std::os::unix::fs::symlink("/etc", p.path().join("src4/x/etc")).unwrap();
    p.file(
        "Dockerfile",
        "FROM busybox\nCOPY --parents src*/./x/**/passwd src4/./x/etc/**/hostname /h/\n",
    );
    p.build(&["-t", "par:3"]).ok();
    let img = p.unpack("par:3");
    assert!(!img.exists("/h/x/a/passwd") && !img.exists("/h/x/etc/hostname"));
    p.file(
        "Dockerfile",
        "FROM busybox\nCOPY --parents src*/./x/**/f.txt /o/\nRUN cat /o/x/a/b/f.txt /o/x/f.txt\n",
    );
    // A change three levels below the pivot reaches the copy (not a stale cache hit).
    p.file("src1/x/a/b/f.txt", "deep2\n");
    let r = p.build(&["-t", "par:2"]).ok();
    assert!(r.stderr().contains("deep2"), "{}", r.stderr());
}

#[test]
fn copy_to_a_relative_dest_uses_workdir_and_creates_parents() {
    let p = Project::new(
        "FROM busybox\nWORKDIR /app/deep\nCOPY f.txt rel/f.txt\nCOPY f.txt ./\nRUN pwd > /pwd\n",
    );
    p.file("f.txt", "F");
    p.build(&["-t", "wd:1"]).ok();
    let r = p.unpack("wd:1");
    assert_eq!(r.read("/app/deep/rel/f.txt"), "F");
    assert_eq!(r.read("/app/deep/f.txt"), "F");
    assert_eq!(r.read("/pwd"), "/app/deep\n");
    assert_eq!(p.config("wd:1")["config"]["WorkingDir"], "/app/deep");
}

#[test]
fn copy_sets_root_ownership_by_default_and_honours_chown_and_chmod() {
    let p = Project::new(
        "FROM busybox\nCOPY plain.txt /plain.txt\nCOPY --chown=1000:1000 --chmod=0600 owned.txt /owned.txt\nCOPY --chown=app owned.txt /byname.txt\nCOPY exec.sh /exec.sh\n",
    );
    p.file("plain.txt", "p")
        .file("owned.txt", "o")
        .file("exec.sh", "#!/bin/sh\n");
    fs::set_permissions(p.path().join("exec.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(
        p.path().join("plain.txt"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::chown(p.path().join("plain.txt"), Some(4321), Some(4321)).unwrap();
    p.build(&["-t", "own:1"]).ok();
    // read ownership from the layer tar (umoci maps owners when unpacking)
    let listing = p.layer_listing("own:1", 1);
    assert!(
        listing.contains("-rw-r----- 0/0"),
        "context files are copied as 0:0 with their mode:\n{listing}"
    );
    let owned = p.layer_listing("own:1", 2);
    assert!(owned.contains("-rw------- 1000/1000"), "{owned}");
    let byname = p.layer_listing("own:1", 3);
    assert!(
        byname.contains("1000/1000"),
        "--chown=app resolves via the image's /etc/passwd:\n{byname}"
    );
    let exec = p.layer_listing("own:1", 4);
    assert!(exec.contains("-rwxr-xr-x 0/0"), "{exec}");
}

#[test]
fn dockerignore_excludes_files_from_copy() {
    let p = Project::new("FROM busybox\nCOPY . /ctx\n");
    p.file(".dockerignore", "*.log\nsecret/\n!secret/keep.txt\n")
        .file("app.txt", "app")
        .file("debug.log", "log")
        .file("sub/nested.log", "nested")
        .file("secret/key", "k")
        .file("secret/keep.txt", "keep");
    p.build(&["-t", "ign:1"]).ok();
    let r = p.unpack("ign:1");
    assert_eq!(r.read("/ctx/app.txt"), "app");
    assert!(!r.exists("/ctx/debug.log"));
    assert!(
        r.exists("/ctx/sub/nested.log"),
        "*.log is anchored at the context root"
    );
    assert!(!r.exists("/ctx/secret/key"));
    assert_eq!(r.read("/ctx/secret/keep.txt"), "keep");
}

#[test]
fn build_args_reach_run_but_never_the_image_config() {
    let p = Project::new(
        "FROM busybox\nARG VERSION=0.1\nARG UNSET\nRUN echo \"v=$VERSION u=$UNSET\" > /v\n",
    );
    p.build(&["--build-arg", "VERSION=2.0", "-t", "args:1"])
        .ok();
    assert_eq!(p.unpack("args:1").read("/v"), "v=2.0 u=\n");
    let env = p.config("args:1")["config"]["Env"].to_string();
    assert!(!env.contains("VERSION"), "{env}");
    p.build(&["-t", "args:2"]).ok();
    assert_eq!(p.unpack("args:2").read("/v"), "v=0.1 u=\n");
}

#[test]
fn env_user_and_workdir_apply_to_run_steps() {
    let p = Project::new(
        "FROM busybox\nENV A=1 B=\"two words\"\nRUN echo \"$A|$B\" > /env\nUSER 1000:1000\nRUN id -u > /tmp/uid && id -g > /tmp/gid\nUSER root\nRUN cp /tmp/uid /uid && cp /tmp/gid /gid\n",
    );
    p.build(&["-t", "eu:1"]).ok();
    let r = p.unpack("eu:1");
    assert_eq!(r.read("/env"), "1|two words\n");
    assert_eq!(r.read("/uid"), "1000\n");
    assert_eq!(r.read("/gid"), "1000\n");
}

#[test]
fn target_selects_a_stage_and_unused_stages_are_not_built() {
    let p = Project::new(
        "FROM busybox AS broken\nRUN exit 1\nFROM busybox AS base\nRUN echo base > /stage\nFROM base AS prod\nRUN echo prod >> /stage\nFROM busybox AS other\nRUN echo other > /stage\n",
    );
    p.build(&["--target", "prod", "-t", "tg:1"]).ok();
    assert_eq!(p.unpack("tg:1").read("/stage"), "base\nprod\n");
    let r = p.build(&["--target", "prd"]).fails();
    assert!(
        r.stderr().contains("prod"),
        "did-you-mean the real stage: {}",
        r.stderr()
    );
}

#[test]
fn from_scratch_with_copy_has_only_the_copied_files() {
    let p = Project::new("FROM scratch\nCOPY hello.txt /hello.txt\nCMD [\"/hello\"]\n");
    p.file("hello.txt", "hi");
    p.build(&["-t", "scratch:1"]).ok();
    let m = p.manifest("scratch:1");
    assert_eq!(m["layers"].as_array().unwrap().len(), 1);
    let listing = p.layer_listing("scratch:1", 0);
    assert!(listing.contains("hello.txt"), "{listing}");
    assert_eq!(listing.lines().count(), 1, "{listing}");
}

#[test]
fn deleting_a_base_file_in_run_becomes_a_whiteout() {
    let p = Project::new("FROM busybox\nRUN rm /etc/group && mkdir -p /x && echo y > /x/y\n");
    p.build(&["-t", "wh:1"]).ok();
    let listing = p.layer_listing("wh:1", -1);
    assert!(listing.contains("etc/.wh.group"), "{listing}");
    let r = p.unpack("wh:1");
    assert!(!r.exists("/etc/group"));
    assert!(r.exists("/etc/passwd"));
    assert_eq!(r.read("/x/y"), "y\n");
}

#[test]
fn sandbox_files_never_land_in_a_layer() {
    let p = Project::new("FROM busybox\nRUN hostname > /host && cat /etc/hosts > /hosts.txt && ls /proc/1 >/dev/null\n");
    p.build(&["-t", "sb:1"]).ok();
    let listing = p.layer_listing("sb:1", -1);
    for bad in [
        "etc/hosts\n",
        "etc/resolv.conf",
        "etc/hostname",
        "proc/",
        "dev/",
    ] {
        assert!(
            !listing.contains(bad),
            "{bad} leaked into the layer:\n{listing}"
        );
    }
    let r = p.unpack("sb:1");
    assert_eq!(r.read("/host"), "buildkitsandbox\n");
    assert!(r.read("/hosts.txt").contains("localhost"));
}

#[test]
fn oci_output_with_tar_false_writes_a_layout_directory_skopeo_reads() {
    // buildx 0.29 / BuildKit v0.25: `tar=false` sends the oci (and docker) exporter's blobs to
    // a layout directory and names the image in its index.json (replacing the same name).
    let p = Project::new("FROM busybox\nRUN echo out > /out\n");
    let build = |tag: &str| {
        p.build(&[
            "-t",
            tag,
            "--provenance=false",
            "--output",
            "type=oci,tar=false,dest=layout",
        ])
        .ok();
    };
    build("o:1");
    let dir = p.path().join("layout");
    assert!(dir.join("oci-layout").is_file() && dir.join("blobs/sha256").is_dir());
    let index = || -> Value {
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap()
    };
    assert_eq!(index()["manifests"].as_array().unwrap().len(), 1);
    let name = index()["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap()
        .to_string();
    let info = skopeo_inspect("--raw", &format!("{}:{name}", dir.display()));
    assert_eq!(info["layers"].as_array().unwrap().len(), 2, "{info}");
    // The same name again: replaced; another name: added beside it.
    build("o:1");
    assert_eq!(index()["manifests"].as_array().unwrap().len(), 1);
    build("o:2");
    assert_eq!(index()["manifests"].as_array().unwrap().len(), 2);
    // Attack: a symlink planted at `blobs` in the destination leading outside it: the
    // export fails and nothing is written through it.
    let outside = tempfile::tempdir().unwrap();
    let planted = p.path().join("planted");
    std::fs::create_dir(&planted).unwrap();
    std::os::unix::fs::symlink(outside.path(), planted.join("blobs")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("idx"), planted.join("index.json")).unwrap();
    p.build(&["--output", "type=oci,tar=false,dest=planted"])
        .fails();
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    // A file where the directory should be, and stdout, are refused.
    std::fs::write(p.path().join("file"), "x").unwrap();
    let r = p
        .build(&["--output", "type=oci,tar=false,dest=file"])
        .fails();
    assert!(r.stderr().contains("is a file"), "{}", r.stderr());
    let r = p.build(&["--output", "type=oci,tar=false,dest=-"]).fails();
    assert!(
        r.stderr().contains("dest cannot be stdout"),
        "{}",
        r.stderr()
    );
}

#[test]
fn oci_output_is_read_by_skopeo_and_umoci() {
    let p = Project::new("FROM busybox\nRUN echo out > /out\n");
    // (no provenance: umoci cannot pick the image among an index's entries)
    p.build(&[
        "-t",
        "o:1",
        "--provenance=false",
        "--output",
        "type=oci,dest=img.tar",
    ])
    .ok();
    let tar = p.path().join("img.tar");
    let out = Command::new("skopeo")
        .args(["inspect", &format!("oci-archive:{}", tar.display())])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["Layers"].as_array().unwrap().len(), 2);
    let x = tempfile::tempdir().unwrap();
    assert!(Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(x.path())
        .status()
        .unwrap()
        .success());
    let bundle = x.path().join("bundle");
    let out = Command::new("umoci")
        .args([
            "unpack",
            "--image",
            &format!("{}:docker.io/library/o:1", x.path().display()),
        ])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read_to_string(bundle.join("rootfs/out")).unwrap(),
        "out\n"
    );
}

#[test]
fn docker_output_is_a_docker_archive_with_repo_tags() {
    let p = Project::new("FROM busybox\nRUN echo d > /d\n");
    p.build(&["-t", "dk:1", "--output", "type=docker,dest=d.tar"])
        .ok();
    let tar = p.path().join("d.tar");
    let out = Command::new("skopeo")
        .args(["inspect", &format!("docker-archive:{}", tar.display())])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let x = tempfile::tempdir().unwrap();
    assert!(Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(x.path())
        .status()
        .unwrap()
        .success());
    let manifest: Value =
        serde_json::from_str(&fs::read_to_string(x.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!(["dk:1"]));
}

#[test]
fn quiet_prints_only_the_image_id() {
    let p = Project::new("FROM busybox\nRUN true\n");
    let r = p.build(&["-q", "-t", "q:1"]).ok();
    let out = r.stdout();
    let line = out.trim();
    assert!(line.starts_with("sha256:") && line.len() == 71, "{out:?}");
    assert_eq!(out.lines().count(), 1);
    assert!(r.stderr().is_empty(), "quiet build printed: {}", r.stderr());
    let cfg_digest = p.manifest("q:1")["config"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(line, cfg_digest);
}

#[test]
fn a_missing_context_file_is_an_error_naming_the_line() {
    let p = Project::new("FROM busybox\nCOPY nothere.txt /x\n");
    let r = p.build(&[]).fails();
    let err = r.stderr();
    assert!(err.contains("nothere.txt"), "{err}");
    assert!(err.contains("Dockerfile:2"), "{err}");
}

#[test]
fn bad_dockerfiles_and_references_give_one_clear_error() {
    let p = Project::new("FROM busybox\nFORM x\n");
    let err = p.build(&[]).fails().stderr();
    assert!(
        err.contains("Dockerfile:2") && err.contains("FROM"),
        "{err}"
    );

    let p = Project::new("FROM busybox\nCOPY --from=nope /a /a\n");
    let err = p.build(&[]).fails().stderr();
    assert!(err.contains("nope"), "{err}");

    let p = Project::new("FROM busybox:does-not-exist\n");
    let err = p.build(&[]).fails().stderr();
    assert!(err.contains("does-not-exist"), "{err}");
    assert!(err.contains("Dockerfile:1"), "{err}");

    let p = Project::new("FROM 127.0.0.1:1/nothing:latest\n");
    let err = p.build(&[]).fails().stderr();
    assert!(err.contains("127.0.0.1:1"), "{err}");

    let p = Project::new("RUN true\n");
    let err = p.build(&[]).fails().stderr();
    assert!(err.to_lowercase().contains("from"), "{err}");
}

#[test]
fn copy_from_an_image_and_from_a_stage_index() {
    let p = Project::new("FROM busybox AS first\nRUN echo one > /one\nFROM scratch\nCOPY --from=busybox /bin/busybox /bb\nCOPY --from=0 /one /one\n");
    p.build(&["-t", "cf:1"]).ok();
    let r = p.unpack("cf:1");
    assert!(r.meta("/bb").len() > 100_000);
    assert_eq!(r.read("/one"), "one\n");
}

#[test]
fn content_changes_miss_the_cache_and_mtime_only_changes_hit() {
    let p = Project::new(
        "FROM busybox\nCOPY a.txt /a.txt\nRUN cat /proc/sys/kernel/random/uuid > /u\n",
    );
    p.file("a.txt", "one");
    p.build(&["-t", "k:1"]).ok();
    let u1 = p.unpack("k:1").read("/u");
    // touch only
    let f = fs::File::options()
        .write(true)
        .open(p.path().join("a.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(100))
        .unwrap();
    drop(f);
    let r = p.build(&["-t", "k:2"]).ok();
    assert_eq!(r.stderr().matches("CACHED").count(), 3, "{}", r.stderr());
    assert_eq!(p.unpack("k:2").read("/u"), u1);
    // content change
    p.file("a.txt", "two");
    p.build(&["-t", "k:3"]).ok();
    let r3 = p.unpack("k:3");
    assert_eq!(r3.read("/a.txt"), "two");
    assert_ne!(r3.read("/u"), u1);
    // mode change
    fs::set_permissions(p.path().join("a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    let r = p.build(&["-t", "k:4"]).ok();
    assert_eq!(
        r.stderr().matches("CACHED").count(),
        1,
        "only FROM is cached: {}",
        r.stderr()
    );
}

#[test]
fn multiple_tags_dockerfile_flag_and_build_is_the_default_command() {
    let p = Project::new("FROM busybox\n");
    p.file(
        "docker/Custom.Dockerfile",
        "FROM busybox\nLABEL which=custom\n",
    );
    p.rbuild(&[
        "build",
        "-f",
        "docker/Custom.Dockerfile",
        "-t",
        "m:1",
        "-t",
        "m:latest",
        ".",
    ])
    .ok();
    assert_eq!(p.config("m:1")["config"]["Labels"]["which"], "custom");
    assert_eq!(p.manifest("m:1"), p.manifest("m:latest"));
    let images = p.rbuild(&["images"]).ok().stdout();
    assert!(
        images.contains(" 1 ") && images.contains(" latest "),
        "{images}"
    );
    let ids = p.rbuild(&["images", "-q"]).ok().stdout();
    assert_eq!(ids.lines().count(), 2);
}

#[test]
fn entrypoint_resets_an_inherited_cmd_and_shell_form_wraps() {
    let p = Project::new("FROM busybox AS a\nCMD [\"sh\"]\nFROM a\nENTRYPOINT echo hi\n");
    p.build(&["-t", "ep:1"]).ok();
    let c = &p.config("ep:1")["config"];
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/bin/sh", "-c", "echo hi"])
    );
    assert!(c["Cmd"].is_null(), "{c}");
}

#[test]
fn run_network_none_has_only_loopback() {
    let p = Project::new("FROM busybox\nRUN --network=none cat /proc/net/dev > /dev.txt\n");
    p.build(&["-t", "net:1"]).ok();
    let dev = p.unpack("net:1").read("/dev.txt");
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .map(|l| l.split(':').next().unwrap().trim())
        .collect();
    assert_eq!(ifaces, ["lo"], "{dev}");
}

#[test]
fn the_store_holds_no_half_written_data_after_a_failed_build() {
    let p = Project::new("FROM busybox\nRUN echo data > /f && exit 7\n");
    p.build(&[]).fails();
    let tmp = p.store.path().join("tmp");
    let left: Vec<_> = fs::read_dir(&tmp)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "tmp is clean after a failed build: {left:?}"
    );
    for snap in fs::read_dir(p.store.path().join("snapshots-v1"))
        .unwrap()
        .flatten()
    {
        assert!(
            snap.path().join("committed").exists(),
            "uncommitted snapshot left: {}",
            snap.path().display()
        );
    }
}

#[test]
fn add_unpacks_local_tar_archives_detected_by_content_and_copies_other_files() {
    let p = Project::new(
        "FROM busybox\nADD bundle.tgz /opt/\nADD plain.tar /plain/\nADD notatar.gz /files/\nCOPY bundle.tgz /copied/\n",
    );
    let src = tempfile::tempdir().unwrap();
    fs::create_dir_all(src.path().join("pkg/bin")).unwrap();
    fs::write(src.path().join("pkg/bin/tool"), "tool").unwrap();
    let tgz = p.path().join("bundle.tgz");
    assert!(Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(src.path())
        .arg("pkg")
        .status()
        .unwrap()
        .success());
    let tar = p.path().join("plain.tar");
    assert!(Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(src.path())
        .arg("pkg")
        .status()
        .unwrap()
        .success());
    p.file("notatar.gz", "just text with a misleading name");
    p.build(&["-t", "add:1"]).ok();
    let r = p.unpack("add:1");
    assert_eq!(r.read("/opt/pkg/bin/tool"), "tool");
    assert_eq!(r.read("/plain/pkg/bin/tool"), "tool");
    assert_eq!(
        r.read("/files/notatar.gz"),
        "just text with a misleading name"
    );
    assert!(r.exists("/copied/bundle.tgz"), "COPY never unpacks");
}
