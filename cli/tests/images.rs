//! Images and registries through the real CLI with real parts: the plain registry on
//! 127.0.0.1:5055 and the TLS + htpasswd registry on 127.0.0.1:5056 (both started by
//! `.ci/setup.sh`, which also generates the test CA), skopeo and umoci as independent readers,
//! and a fresh `~/.docker/config.json` per test (HOME points into a temp dir). A missing
//! prerequisite fails the test with the reason; nothing is skipped.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use common::REGISTRY;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tempfile::TempDir;

const TLS_REGISTRY: &str = "127.0.0.1:5056";
const USER: &str = "rbuild";
const PASSWORD: &str = "rbuild-secret";

fn test_work() -> PathBuf {
    PathBuf::from(
        std::env::var("RBUILD_TEST_WORK").unwrap_or_else(|_| "/tmp/rbuild-test-env".into()),
    )
}

fn ca_file() -> PathBuf {
    test_work().join("tls/ca.crt")
}

fn require_env() {
    common::require_env();
    assert!(
        std::net::TcpStream::connect(TLS_REGISTRY).is_ok(),
        "the test registry on {TLS_REGISTRY} is not running: run `bash .ci/setup.sh` first"
    );
    assert!(
        ca_file().is_file(),
        "{} is missing: run `bash .ci/setup.sh` first",
        ca_file().display()
    );
    common::require_tools(&["skopeo", "umoci", "tar"]);
}

/// A unique repository name per test and run.
fn unique(prefix: &str) -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{n}", std::process::id())
}

struct Env {
    dir: TempDir,
    home: TempDir,
    certs: TempDir,
}

impl Env {
    fn new(dockerfile: &str) -> Env {
        require_env();
        let e = Env {
            dir: tempfile::tempdir().unwrap(),
            home: tempfile::tempdir().unwrap(),
            certs: tempfile::tempdir().unwrap(),
        };
        fs::write(e.dir.path().join("Dockerfile"), dockerfile).unwrap();
        // per-registry CA, the /etc/docker/certs.d convention
        let d = e.certs.path().join(TLS_REGISTRY);
        fs::create_dir_all(&d).unwrap();
        fs::copy(ca_file(), d.join("ca.crt")).unwrap();
        e
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, rel: &str, data: &[u8]) {
        let p = self.dir.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    fn cmd(&self, store: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
        c.args(args)
            .env("RBUILD_ROOT", store)
            .env("HOME", self.home.path())
            .env_remove("DOCKER_CONFIG")
            .env_remove("SSL_CERT_FILE")
            .env("RBUILD_CERTS_DIR", self.certs.path())
            .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
            .env("RBUILD_PROGRESS", "plain")
            .env_remove("SOURCE_DATE_EPOCH")
            .current_dir(self.dir.path());
        c
    }

    fn run(&self, store: &Path, args: &[&str]) -> Output {
        self.cmd(store, args).output().unwrap()
    }

    fn ok(&self, store: &Path, args: &[&str]) -> String {
        let out = self.run(store, args);
        assert!(
            out.status.success(),
            "rbuild {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// [`Env::ok`] with SOURCE_DATE_EPOCH=1700000000 (2023-11-14T22:13:20Z).
    fn ok_epoch(&self, store: &Path, args: &[&str]) {
        let out = self
            .cmd(store, args)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rbuild {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn fails(&self, store: &Path, args: &[&str]) -> String {
        let out = self.run(store, args);
        assert!(
            !out.status.success(),
            "rbuild {args:?} should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

fn tool(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// umoci-unpack an OCI layout `dir:tag` and return the file's content.
fn umoci_read(layout_ref: &str, file: &str) -> String {
    let t = tempfile::tempdir().unwrap();
    let bundle = t.path().join("b");
    tool(
        "umoci",
        &["unpack", "--image", layout_ref, bundle.to_str().unwrap()],
    );
    fs::read_to_string(bundle.join("rootfs").join(file)).unwrap()
}

fn untar(archive: &Path) -> TempDir {
    let x = tempfile::tempdir().unwrap();
    tool(
        "tar",
        &[
            "-xf",
            archive.to_str().unwrap(),
            "-C",
            x.path().to_str().unwrap(),
        ],
    );
    x
}

/// Copy an image with skopeo into a gzip OCI layout (skopeo must decode every layer to
/// re-encode it); returns the `dir:tag` reference and the temp dir holding it.
fn skopeo_to_gzip(src: &str, extra: &[&str]) -> (String, TempDir) {
    let t = tempfile::tempdir().unwrap();
    let dest = format!("{}/l:t", t.path().display());
    let mut args = vec!["copy", "-q"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--dest-compress-format", "gzip", "--dest-compress", src]);
    let d = format!("oci:{dest}");
    args.push(&d);
    tool("skopeo", &args);
    (dest, t)
}

/// Pseudo-random (incompressible) bytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn push_and_pull_round_trip_on_a_plain_registry_with_cross_repo_mount() {
    let e = Env::new("FROM busybox\nCOPY data.bin /data.bin\nRUN echo pushed > /pushed\n");
    e.file("data.bin", &noise(300_000, 7));
    let store = tempfile::tempdir().unwrap();
    let repo = unique("rbuild-e2e/push");
    let name = format!("{REGISTRY}/{repo}:v1");
    e.ok(
        store.path(),
        &[
            "build",
            "-t",
            &name,
            "--push",
            "--provenance=false",
            "--annotation",
            "org.example.k=v",
            ".",
        ],
    );
    // skopeo reads it from the registry
    let raw = json(&tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{name}"),
        ],
    ));
    let layers = raw["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    assert!(layers
        .iter()
        .all(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"));
    assert_eq!(raw["annotations"]["org.example.k"], "v");
    // a second name in another repository on the same registry: blobs are mounted
    let other = format!("{REGISTRY}/{}:v2", unique("rbuild-e2e/mount"));
    e.ok(store.path(), &["tag", &name, &other]);
    let out = e.cmd(store.path(), &["push", &other]).output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0 uploaded, 4 mounted"), "{err}");
    // pull into a clean store: same config, the files are there
    let store2 = tempfile::tempdir().unwrap();
    e.ok(store2.path(), &["pull", &name]);
    let a = json(&e.ok(store.path(), &["inspect", &name]));
    let b = json(&e.ok(store2.path(), &["inspect", &name]));
    assert_eq!(a["Id"], b["Id"]);
    assert_eq!(b["Manifest"]["annotations"]["org.example.k"], "v");
    let layout = format!("{}/layout-v1:{name}", store2.path().display());
    assert_eq!(umoci_read(&layout, "pushed"), "pushed\n");
}

#[test]
fn tls_registry_with_htpasswd_needs_login_and_rejects_a_wrong_password() {
    let e = Env::new("FROM busybox\nCOPY big.bin /big.bin\n");
    e.file("big.bin", &noise(3 << 20, 11));
    let store = tempfile::tempdir().unwrap();
    let name = format!("{TLS_REGISTRY}/{}:1", unique("secure/app"));
    e.ok(store.path(), &["build", "-t", &name, "."]);
    // no credentials yet
    let err = e.fails(store.path(), &["push", &name]);
    assert!(err.contains("requires basic auth"), "{err}");
    // wrong password: a clear error and nothing saved
    let mut c = e.cmd(
        store.path(),
        &["login", TLS_REGISTRY, "-u", USER, "--password-stdin"],
    );
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"wrong\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rejected the credentials"), "{err}");
    assert!(!e.home.path().join(".docker/config.json").exists());
    // right password: saved in ~/.docker/config.json as docker does
    let mut child = e
        .cmd(
            store.path(),
            &["login", TLS_REGISTRY, "-u", USER, "--password-stdin"],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = json(&fs::read_to_string(e.home.path().join(".docker/config.json")).unwrap());
    assert_eq!(
        cfg["auths"][TLS_REGISTRY]["auth"], "cmJ1aWxkOnJidWlsZC1zZWNyZXQ=",
        "base64 of user:password"
    );
    // chunked upload (1 MiB chunks) of a 3 MiB layer, zstd
    e.ok(
        store.path(),
        &["push", "--chunk-mib", "1", "--compression", "zstd", &name],
    );
    let cert_dir = e.certs.path().join(TLS_REGISTRY);
    let raw = json(&tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--cert-dir",
            cert_dir.to_str().unwrap(),
            "--creds",
            &format!("{USER}:{PASSWORD}"),
            &format!("docker://{name}"),
        ],
    ));
    assert_eq!(
        raw["layers"][1]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    // pull into a clean store over TLS with the saved credentials; the big file is intact
    let store2 = tempfile::tempdir().unwrap();
    e.ok(store2.path(), &["pull", &name]);
    let (layout, _keep) = skopeo_to_gzip(
        &format!("oci:{}/layout-v1:{name}", store2.path().display()),
        &[],
    );
    let t = tempfile::tempdir().unwrap();
    let bundle = t.path().join("b");
    tool(
        "umoci",
        &["unpack", "--image", &layout, bundle.to_str().unwrap()],
    );
    assert_eq!(
        fs::read(bundle.join("rootfs/big.bin")).unwrap(),
        noise(3 << 20, 11)
    );
    // logout removes the credentials; then pulls are refused again
    e.ok(store.path(), &["logout", TLS_REGISTRY]);
    let store3 = tempfile::tempdir().unwrap();
    let err = e.fails(store3.path(), &["pull", &name]);
    assert!(err.contains("requires basic auth"), "{err}");
}

#[test]
fn every_output_type_is_readable_by_independent_tools() {
    let e = Env::new("FROM busybox\nRUN echo out > /out && rm /bin/vi\nCOPY f.txt /f.txt\n");
    e.file("f.txt", b"file\n");
    let store = tempfile::tempdir().unwrap();
    e.ok(
        store.path(),
        &[
            "build",
            "--provenance=false",
            "-t",
            "outs:1",
            "-o",
            "type=oci,dest=gz.tar",
            "-o",
            "type=oci,dest=zst.tar,compression=zstd,compression-level=5,force-compression=true",
            "-o",
            "type=oci,dest=plain.tar,compression=uncompressed,force-compression=true",
            "-o",
            "type=docker,dest=docker.tar",
            "-o",
            "type=local,dest=rootfs",
            "-o",
            "type=tar,dest=rootfs.tar",
            "-o",
            "type=image,name=other:2",
            ".",
        ],
    );
    let p = e.path();
    for (file, mt) in [
        ("gz.tar", "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("zst.tar", "application/vnd.oci.image.layer.v1.tar+zstd"),
        ("plain.tar", "application/vnd.oci.image.layer.v1.tar"),
    ] {
        let archive = p.join(file);
        let raw = json(&tool(
            "skopeo",
            &[
                "inspect",
                "--raw",
                &format!("oci-archive:{}", archive.display()),
            ],
        ));
        for l in raw["layers"].as_array().unwrap() {
            assert_eq!(l["mediaType"], mt, "{file}");
        }
        // umoci 0.4.7 cannot read zstd: skopeo decodes it (re-encoding to gzip) first
        let x = untar(&archive);
        let mut layout = format!("{}:docker.io/library/outs:1", x.path().display());
        let _keep;
        if file == "zst.tar" {
            let (l, t) = skopeo_to_gzip(&format!("oci-archive:{}", archive.display()), &[]);
            layout = l;
            _keep = t;
        }
        assert_eq!(umoci_read(&layout, "out"), "out\n", "{file}");
        assert_eq!(umoci_read(&layout, "f.txt"), "file\n", "{file}");
    }
    // docker archive: docker media types, RepoTags, read by skopeo
    let x = untar(&p.join("docker.tar"));
    let m = json(&fs::read_to_string(x.path().join("manifest.json")).unwrap());
    assert_eq!(m[0]["RepoTags"], serde_json::json!(["outs:1"]));
    let info = json(&tool(
        "skopeo",
        &[
            "inspect",
            &format!("docker-archive:{}", p.join("docker.tar").display()),
        ],
    ));
    assert_eq!(info["Layers"].as_array().unwrap().len(), 3);
    // local: the flattened rootfs, whiteouts applied
    assert_eq!(fs::read_to_string(p.join("rootfs/out")).unwrap(), "out\n");
    assert!(p.join("rootfs/bin/busybox").exists());
    assert!(!p.join("rootfs/bin/vi").exists(), "deleted files are gone");
    let listing = tool("tar", &["-tf", p.join("rootfs.tar").to_str().unwrap()]);
    assert!(listing.lines().any(|l| l == "f.txt"), "{listing}");
    assert!(!listing.contains(".wh."), "{listing}");
    assert!(!listing.lines().any(|l| l == "bin/vi"), "{listing}");
    // type=image,name= tagged another name
    let images = e.ok(store.path(), &["images"]);
    assert!(images.lines().any(|l| l.starts_with("other ")), "{images}");
}

#[test]
fn two_clean_stores_give_the_same_digests_with_source_date_epoch() {
    let e = Env::new("FROM busybox\nCOPY a.txt /a.txt\nRUN echo x > /x\n");
    e.file("a.txt", b"same\n");
    let mut digests = Vec::new();
    // both newer than SOURCE_DATE_EPOCH, so clamped to it
    for mtime in ["@1710000000", "@1720000000"] {
        let store = tempfile::tempdir().unwrap();
        // a different mtime on the context file each time
        let f = e.path().join("a.txt");
        tool("touch", &["-d", mtime, f.to_str().unwrap()]);
        e.ok_epoch(
            store.path(),
            &["build", "-t", "r:1", "-o", "type=oci,dest=r.tar", "."],
        );
        let local = json(&e.ok(store.path(), &["inspect", "r:1"]));
        let exported = fs::read(e.path().join("r.tar")).unwrap();
        digests.push((local["Digest"].clone(), local["Id"].clone(), exported));
        assert_eq!(local["Config"]["created"], "2023-11-14T22:13:20Z");
    }
    assert_eq!(digests[0].0, digests[1].0, "same manifest digest");
    assert_eq!(digests[0].1, digests[1].1, "same image id");
    assert!(digests[0].2 == digests[1].2, "byte-identical OCI archives");
    // --reproducible pins created without SOURCE_DATE_EPOCH
    let store = tempfile::tempdir().unwrap();
    e.ok(store.path(), &["build", "--reproducible", "-t", "r:2", "."]);
    let img = json(&e.ok(store.path(), &["inspect", "r:2"]));
    assert_eq!(img["Config"]["created"], "1970-01-01T00:00:00Z");
}

#[test]
fn save_load_tag_rmi_history_and_inspect() {
    let e = Env::new("FROM busybox\nRUN echo saved > /saved\nLABEL a=b\n");
    let store = tempfile::tempdir().unwrap();
    e.ok(store.path(), &["build", "-t", "s:1", "."]);
    e.ok(store.path(), &["tag", "s:1", "s:copy"]);
    let history = e.ok(store.path(), &["history", "s:1"]);
    assert!(history.contains("RUN /bin/sh -c echo saved"), "{history}");
    assert!(history.contains("LABEL a=b"), "{history}");
    let info = json(&e.ok(store.path(), &["inspect", "s:copy"]));
    assert_eq!(info["Config"]["config"]["Labels"]["a"], "b");
    assert_eq!(
        info["Manifest"]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    for format in ["docker", "oci"] {
        let file = e.path().join(format!("{format}.tar"));
        e.ok(
            store.path(),
            &[
                "save",
                "--format",
                format,
                "-o",
                file.to_str().unwrap(),
                "s:1",
            ],
        );
        let store2 = tempfile::tempdir().unwrap();
        let out = e.ok(store2.path(), &["load", "-i", file.to_str().unwrap()]);
        assert!(out.contains("Loaded image: s:1"), "{out}");
        let loaded = json(&e.ok(store2.path(), &["inspect", "s:1"]));
        assert_eq!(loaded["Id"], info["Id"], "{format}");
        let layout = format!(
            "{}/layout-v1:docker.io/library/s:1",
            store2.path().display()
        );
        assert_eq!(umoci_read(&layout, "saved"), "saved\n");
    }
    // a corrupted archive blob is refused and nothing is named
    let file = e.path().join("docker.tar");
    let x = untar(&file);
    let m = json(&fs::read_to_string(x.path().join("manifest.json")).unwrap());
    let layer = x.path().join(m[0]["Layers"][1].as_str().unwrap());
    let mut data = fs::read(&layer).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    fs::write(&layer, data).unwrap();
    let bad = e.path().join("bad.tar");
    tool(
        "tar",
        &[
            "-cf",
            bad.to_str().unwrap(),
            "-C",
            x.path().to_str().unwrap(),
            ".",
        ],
    );
    let store3 = tempfile::tempdir().unwrap();
    let err = e.fails(store3.path(), &["load", "-i", bad.to_str().unwrap()]);
    assert!(
        err.contains("digest mismatch") || err.contains("mismatch"),
        "{err}"
    );
    assert!(!e.ok(store3.path(), &["images"]).contains("s "));
    // rmi
    e.ok(store.path(), &["rmi", "s:copy"]);
    let err = e.fails(store.path(), &["inspect", "s:copy"]);
    assert!(err.contains("not found"), "{err}");
    let err = e.fails(store.path(), &["rmi", "s:copy"]);
    assert!(err.contains("no such image"), "{err}");
}

#[test]
fn load_without_a_docker_daemon_is_a_clear_error() {
    let e = Env::new("FROM busybox\n");
    let store = tempfile::tempdir().unwrap();
    let out = e
        .cmd(store.path(), &["build", "--load", "-t", "l:1", "."])
        .env("RBUILD_DOCKER", "/nonexistent/docker")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--load: no docker daemon answers"), "{err}");
}

#[test]
fn credentials_go_through_a_docker_credential_helper_when_configured() {
    let e = Env::new("FROM busybox\nRUN echo helper > /helper\n");
    let store = tempfile::tempdir().unwrap();
    let name = format!("{TLS_REGISTRY}/{}:1", unique("helper/app"));
    e.ok(store.path(), &["build", "-t", &name, "."]);
    // a credential helper speaking docker's protocol, keeping secrets in one file
    let bin = e.home.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let secrets = e.home.path().join("secrets.json");
    let helper = bin.join("docker-credential-rbtest");
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\nset -e\ncase \"$1\" in\n  store) cat > {s} ;;\n  get) server=$(cat); if [ -f {s} ]; then cat {s}; else echo 'credentials not found in native keychain'; exit 1; fi ;;\n  erase) rm -f {s} ;;\nesac\n",
            s = secrets.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir_all(e.home.path().join(".docker")).unwrap();
    fs::write(
        e.home.path().join(".docker/config.json"),
        r#"{"credsStore":"rbtest","auths":{}}"#,
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let run = |args: &[&str], stdin: &str| {
        let mut child = e
            .cmd(store.path(), args)
            .env("PATH", &path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(&["push", &name], "");
    assert!(!out.status.success(), "no credentials in the helper yet");
    let out = run(
        &["login", TLS_REGISTRY, "-u", USER, "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = json(&fs::read_to_string(&secrets).unwrap());
    assert_eq!(saved["Username"], USER);
    assert_eq!(saved["Secret"], PASSWORD);
    let cfg = fs::read_to_string(e.home.path().join(".docker/config.json")).unwrap();
    assert!(
        !cfg.contains(PASSWORD),
        "the secret is not in config.json: {cfg}"
    );
    let out = run(&["push", &name], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The layer blobs of an extracted OCI archive, in manifest order.
fn archive_layers(x: &Path) -> Vec<PathBuf> {
    let index = json(&fs::read_to_string(x.join("index.json")).unwrap());
    let m = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = |d: &str| x.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
    let manifest = json(&fs::read_to_string(blob(&m)).unwrap());
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| blob(l["digest"].as_str().unwrap()))
        .collect()
}

#[test]
fn a_big_layer_is_compressed_into_the_archive_as_standard_gzip() {
    // > 8 MiB: compressed on all cores straight into the archive file (not through the store);
    // half incompressible, half text, so members are both stored and deflated
    let e = Env::new("FROM busybox\nCOPY big.bin /big.bin\n");
    let mut big = noise(6 << 20, 11);
    big.extend(b"layer text ".iter().cycle().take(6 << 20));
    e.file("big.bin", &big);
    let store = tempfile::tempdir().unwrap();
    e.ok(
        store.path(),
        &[
            "build",
            "--provenance=false",
            "-t",
            "big:1",
            "-o",
            "type=oci,dest=file.tar",
            "-o",
            "type=docker,dest=docker.tar",
            ".",
        ],
    );
    // the same export to stdout goes through the store: the same bytes
    let out = e.run(
        store.path(),
        &[
            "build",
            "--provenance=false",
            "-t",
            "big:1",
            "-o",
            "type=oci,dest=-",
            ".",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = fs::read(e.path().join("file.tar")).unwrap();
    assert!(file == out.stdout, "file and stdout archives differ");
    let x = untar(&e.path().join("file.tar"));
    let layers = archive_layers(x.path());
    assert_eq!(layers.len(), 2);
    for l in &layers {
        tool("gzip", &["-t", l.to_str().unwrap()]);
    }
    // gzip -dc gives a tar whose big.bin is the context file, byte for byte
    let tar = Command::new("gzip")
        .arg("-dc")
        .arg(&layers[1])
        .output()
        .unwrap();
    assert!(tar.status.success());
    let mut a = tar::Archive::new(&tar.stdout[..]);
    let mut found = false;
    for ent in a.entries().unwrap() {
        let mut ent = ent.unwrap();
        if ent.path().unwrap().to_str() == Some("big.bin") {
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut ent, &mut body).unwrap();
            assert!(body == big, "big.bin differs after gzip -dc");
            found = true;
        }
    }
    assert!(found, "big.bin is in the layer");
    // skopeo (Go's gzip) and umoci read the archive
    let info = json(&tool(
        "skopeo",
        &[
            "inspect",
            &format!("oci-archive:{}", e.path().join("file.tar").display()),
        ],
    ));
    assert_eq!(info["Layers"].as_array().unwrap().len(), 2);
    let layout = format!("{}:docker.io/library/big:1", x.path().display());
    let t = tempfile::tempdir().unwrap();
    let bundle = t.path().join("b");
    tool(
        "umoci",
        &["unpack", "--image", &layout, bundle.to_str().unwrap()],
    );
    assert!(fs::read(bundle.join("rootfs/big.bin")).unwrap() == big);
    // the docker archive of the same build: streamed the same way, read by skopeo
    let info = json(&tool(
        "skopeo",
        &[
            "inspect",
            &format!("docker-archive:{}", e.path().join("docker.tar").display()),
        ],
    ));
    assert_eq!(info["Layers"].as_array().unwrap().len(), 2);
    let x = untar(&e.path().join("docker.tar"));
    let m = json(&fs::read_to_string(x.path().join("manifest.json")).unwrap());
    assert_eq!(m[0]["RepoTags"], serde_json::json!(["big:1"]));
    let layer = x.path().join(m[0]["Layers"][1].as_str().unwrap());
    tool("gzip", &["-t", layer.to_str().unwrap()]);
}

#[test]
fn writing_to_a_closed_pipe_exits_quietly() {
    let e = Env::new("FROM busybox\n");
    let store = tempfile::tempdir().unwrap();
    e.ok(store.path(), &["build", "-t", "pipe:1", "."]);
    for args in [
        &["inspect", "pipe:1"][..],
        &["history", "pipe:1"][..],
        &["build", "-q", "-o", "type=tar,dest=-", "."][..],
        &["save", "pipe:1"][..],
    ] {
        // The reader of stdout is closed right after the spawn. On a busy machine rbuild can
        // write its (small) output into the pipe before that happens — or a process another
        // test thread forks at that moment holds a copy of the read end until it execs — and
        // then succeeds: such a run (exit 0) is tried again, at most 5 times.
        let mut tries = 0;
        loop {
            tries += 1;
            let mut child = e
                .cmd(store.path(), args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            drop(child.stdout.take());
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!err.contains("panicked"), "{args:?}: {err}");
            assert!(!err.contains("Broken pipe"), "{args:?}: {err}");
            if out.status.code() == Some(0) && tries < 5 {
                continue;
            }
            assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
            break;
        }
    }
    // and through a shell pipeline, like `rbuild inspect | head -1`
    let rb = env!("CARGO_BIN_EXE_rbuild");
    let script = format!(
        "set -o pipefail; {rb} build -q -o type=tar,dest=- . | head -c 10 >/dev/null; echo status=$?"
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .env("RBUILD_ROOT", store.path())
        .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
        .current_dir(e.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("status=141"), "{text} {err}");
    assert!(!err.contains("panicked") && !err.contains("Error"), "{err}");
}

#[test]
fn metadata_file_reports_the_pushed_manifest_digest() {
    let e = Env::new("FROM busybox\nRUN echo meta > /meta\n");
    let store = tempfile::tempdir().unwrap();
    let name = format!("{REGISTRY}/{}:v1", unique("rbuild-e2e/meta"));
    e.ok(
        store.path(),
        &[
            "build",
            "-t",
            &name,
            "--push",
            "--metadata-file",
            "meta.json",
            ".",
        ],
    );
    // (metadata file, digest skopeo reads from the registry)
    let digests = |file: &str, name: &str| {
        let meta = json(&fs::read_to_string(e.path().join(file)).unwrap());
        let remote = json(&tool(
            "skopeo",
            &["inspect", "--tls-verify=false", &format!("docker://{name}")],
        ));
        (meta, remote["Digest"].clone())
    };
    let (meta, remote) = digests("meta.json", &name);
    assert_eq!(meta["containerimage.digest"], remote);
    assert_eq!(meta["containerimage.descriptor"]["digest"], remote);
    // the pushed manifest has gzip layers: not the local (uncompressed) one
    let local = json(&e.ok(store.path(), &["inspect", &name]));
    assert_ne!(meta["containerimage.digest"], local["Digest"]);
    // type=registry output too
    let name2 = format!("{REGISTRY}/{}:v2", unique("rbuild-e2e/meta"));
    e.ok(
        store.path(),
        &[
            "build",
            "-o",
            &format!("type=registry,name={name2}"),
            "--metadata-file",
            "meta2.json",
            ".",
        ],
    );
    let (meta2, remote2) = digests("meta2.json", &name2);
    assert_eq!(meta2["containerimage.digest"], remote2);
}

#[test]
fn annotations_at_manifest_and_descriptor_levels_and_created() {
    let e = Env::new("FROM busybox\nRUN echo a > /a\n");
    let store = tempfile::tempdir().unwrap();
    e.ok_epoch(
        store.path(),
        &[
            "build",
            "-t",
            "ann:1",
            "--annotation",
            "org.example.m=1",
            "--annotation",
            "manifest:org.example.m2=2",
            "--annotation",
            "manifest-descriptor:org.example.d=3",
            "--annotation",
            "manifest[plan9/mips]:org.example.other=4",
            "--provenance=false",
            "-o",
            "type=oci,dest=ann.tar",
            ".",
        ],
    );
    let raw = json(&tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci-archive:{}", e.path().join("ann.tar").display()),
        ],
    ));
    let a = &raw["annotations"];
    assert_eq!(a["org.example.m"], "1");
    assert_eq!(a["org.example.m2"], "2");
    assert!(a.get("org.example.d").is_none() && a.get("org.example.other").is_none());
    // created = the config's created (SOURCE_DATE_EPOCH)
    assert_eq!(
        a["org.opencontainers.image.created"],
        "2023-11-14T22:13:20Z"
    );
    let local = json(&e.ok(store.path(), &["inspect", "ann:1"]));
    assert_eq!(
        local["Manifest"]["annotations"]["org.opencontainers.image.created"],
        local["Config"]["created"]
    );
    // the descriptor annotation is on the index.json entry
    let x = untar(&e.path().join("ann.tar"));
    let index = json(&fs::read_to_string(x.path().join("index.json")).unwrap());
    let entry = &index["manifests"][0]["annotations"];
    assert_eq!(entry["org.example.d"], "3");
    assert_eq!(
        entry["org.opencontainers.image.ref.name"],
        "docker.io/library/ann:1"
    );
    // index levels need an index: a usage error naming the flag
    for bad in ["index:k=v", "index-descriptor:k=v"] {
        let out = e.run(store.path(), &["build", "--annotation", bad, "."]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("--annotation") && err.contains("index"),
            "{err}"
        );
    }
}

#[test]
fn add_url_trusts_the_hosts_certs_d_ca_like_the_registry_client() {
    // ADD <url> goes through the registry client's agent: the TLS registry's CA in certs.d makes
    // the handshake succeed (its /v2/ then answers 401); without it the certificate is refused.
    let e = Env::new(&format!(
        "FROM scratch\nADD https://{TLS_REGISTRY}/v2/ /x\n"
    ));
    let store = tempfile::tempdir().unwrap();
    let err = e.fails(store.path(), &["build", "."]);
    assert!(err.contains("HTTP 401"), "TLS with the certs.d CA: {err}");
    let empty = tempfile::tempdir().unwrap();
    let out = e
        .cmd(store.path(), &["build", "."])
        .env("RBUILD_CERTS_DIR", empty.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("HTTP 401"), "{err}");
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
}
