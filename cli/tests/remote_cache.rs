//! Remote cache (`--cache-to` / `--cache-from`, issue 13; docs/cache.md) through the real CLI
//! with real parts: the plain registry ($RBUILD_TEST_REGISTRY, default 127.0.0.1:5055) and the
//! TLS + htpasswd one ($RBUILD_TEST_TLS_REGISTRY, default 127.0.0.1:5056, CA
//! $RBUILD_TEST_TLS_CA, user rbuild / rbuild-secret), both started by `.ci/setup.sh`; the
//! rootless test user ($RBUILD_TEST_ROOTLESS_USER, default rbuild-test); skopeo, curl, tar,
//! zip and unzip as independent readers and carriers.
//!
//! Which steps ran is read from the plain progress (`#N CACHED`), image identity from
//! `--metadata-file`, registry contents from skopeo and the registry API. Every RUN that
//! matters writes `$RANDOM` into its result, so a step that ran again instead of coming from
//! the cache gives another image digest. A missing prerequisite fails the test; nothing skips.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use common::progress::Build;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tempfile::TempDir;

const CACHE_CONFIG: &str = "application/vnd.rbuild.cache.config.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INLINE_ANNOTATION: &str = "dev.rbuild.cache.v1";
const TLS_USER: &str = "rbuild";
const TLS_PASSWORD: &str = "rbuild-secret";

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn registry() -> String {
    env_or("RBUILD_TEST_REGISTRY", common::REGISTRY)
}

fn tls_registry() -> String {
    env_or("RBUILD_TEST_TLS_REGISTRY", "127.0.0.1:5056")
}

fn tls_ca() -> PathBuf {
    let work = env_or("RBUILD_TEST_WORK", "/tmp/rbuild-test-env");
    PathBuf::from(env_or("RBUILD_TEST_TLS_CA", &format!("{work}/tls/ca.crt")))
}

fn rootless_user() -> common::TestUser {
    common::test_user(&env_or("RBUILD_TEST_ROOTLESS_USER", common::RANGED_USER))
}

fn require() {
    common::require_env();
    let tls = tls_registry();
    assert!(
        std::net::TcpStream::connect(&tls).is_ok(),
        "the TLS test registry on {tls} is not running: run `bash .ci/setup.sh` first"
    );
    assert!(
        tls_ca().is_file(),
        "{} is missing: run `bash .ci/setup.sh` first",
        tls_ca().display()
    );
    common::require_tools(&["skopeo", "curl", "tar", "zip", "unzip", "touch", "cp"]);
}

/// A repository name unique to this test and run.
fn unique(prefix: &str) -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("rbuild-rc/{prefix}-{}-{n}", std::process::id())
}

fn sha256(data: &[u8]) -> String {
    rbuild_graph::sha256_digest(data)
}

fn tool(prog: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(prog).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `skopeo inspect --raw [--config] docker://REF` on the plain registry.
fn registry_json(reference: &str, config: bool) -> Value {
    let target = format!("docker://{reference}");
    let mut args = vec!["inspect", "--raw", "--tls-verify=false"];
    if config {
        args.push("--config");
    }
    args.push(&target);
    serde_json::from_slice(&tool("skopeo", &args)).unwrap()
}

/// A blob of `repo` on the plain registry, through the distribution API.
fn registry_blob(repo: &str, digest: &str) -> Vec<u8> {
    tool(
        "curl",
        &[
            "-sfL",
            &format!("http://{}/v2/{repo}/blobs/{digest}", registry()),
        ],
    )
}

/// The cache manifest and its config, read from the plain registry.
fn registry_cache(repo: &str, tag: &str) -> (Value, Value) {
    let m = registry_json(&format!("{}/{repo}:{tag}", registry()), false);
    assert_eq!(m["mediaType"], OCI_MANIFEST, "{m}");
    assert_eq!(m["config"]["mediaType"], CACHE_CONFIG, "{m}");
    let digest = m["config"]["digest"].as_str().unwrap();
    let bytes = registry_blob(repo, digest);
    assert_eq!(sha256(&bytes), digest);
    let c: Value = serde_json::from_slice(&bytes).unwrap();
    check_cache_config(&m, &c);
    (m, c)
}

/// What docs/cache.md promises of every cache: version 1, one `layers` entry per manifest
/// layer, chain indexes in range, records keyed by sha256 digests.
fn check_cache_config(manifest: &Value, config: &Value) {
    assert_eq!(config["version"], 1, "{config}");
    let n = manifest["layers"].as_array().unwrap().len();
    assert_eq!(config["layers"].as_array().unwrap().len(), n, "{config}");
    let records = config["records"].as_array().unwrap();
    assert!(!records.is_empty(), "{config}");
    for r in records {
        assert!(r["key"].as_str().unwrap().starts_with("sha256:"), "{r}");
        for link in r["chain"].as_array().unwrap() {
            assert!((link["layer"].as_u64().unwrap() as usize) < n, "{r}");
        }
    }
}

/// The image (manifest digest, config digest) a `--metadata-file` names.
fn image_of(meta: &Path) -> (String, String) {
    let m: Value = serde_json::from_slice(&fs::read(meta).unwrap()).unwrap();
    (
        m["containerimage.digest"].as_str().unwrap().to_string(),
        m["containerimage.config.digest"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

/// Read a blob from an rbuild store.
fn store_blob(store: &Path, digest: &str) -> Option<Vec<u8>> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    fs::read(store.join("blobs-v1/sha256").join(hex)).ok()
}

fn has_blob(store: &Path, digest: &str) -> bool {
    store_blob(store, digest).is_some()
}

/// The `rootfs.diff_ids` of the image config `config` (a digest) in the store.
fn diff_ids_in_store(store: &Path, config: &str) -> BTreeSet<String> {
    let c: Value = serde_json::from_slice(&store_blob(store, config).unwrap()).unwrap();
    c["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

/// No RUN step ran and at least one came from the cache.
fn assert_no_run_ran(b: &Build) {
    assert!(
        b.ran_matching("] RUN ").is_empty(),
        "RUN steps ran: {:?}\n{}",
        b.ran_matching("] RUN "),
        b.lines.join("\n")
    );
    assert!(
        !b.cached_matching("] RUN ").is_empty(),
        "no cached RUN step:\n{}",
        b.lines.join("\n")
    );
}

/// A build context, a docker config home and a certs.d directory with the TLS CA.
struct Env {
    ctx: TempDir,
    home: TempDir,
    certs: TempDir,
    scratch: TempDir,
}

impl Env {
    fn new(dockerfile: &str) -> Env {
        require();
        let e = Env {
            ctx: tempfile::tempdir().unwrap(),
            home: tempfile::tempdir().unwrap(),
            certs: tempfile::tempdir().unwrap(),
            scratch: tempfile::tempdir().unwrap(),
        };
        e.file("Dockerfile", dockerfile);
        let d = e.certs.path().join(tls_registry());
        fs::create_dir_all(&d).unwrap();
        fs::copy(tls_ca(), d.join("ca.crt")).unwrap();
        e
    }

    fn file(&self, rel: &str, content: &str) {
        let p = self.ctx.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    /// A fresh path under this test's scratch directory.
    fn path(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    /// A new empty store.
    fn store(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// docker config with `password` for the TLS registry (none: no credentials).
    fn login(&self, password: Option<&str>) {
        let dir = self.home.path().join(".docker");
        fs::create_dir_all(&dir).unwrap();
        let auths = match password {
            Some(p) => {
                use base64::Engine;
                let auth =
                    base64::engine::general_purpose::STANDARD.encode(format!("{TLS_USER}:{p}"));
                json!({ tls_registry(): { "auth": auth } })
            }
            None => json!({}),
        };
        fs::write(
            dir.join("config.json"),
            json!({ "auths": auths }).to_string(),
        )
        .unwrap();
    }

    /// `rbuild build --progress=plain ARGS… .` in `dir` on `store`.
    fn cmd(&self, dir: &Path, store: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
        c.arg("build")
            .args(args)
            .arg(".")
            .env("RBUILD_ROOT", store)
            .env("HOME", self.home.path())
            .env_remove("DOCKER_CONFIG")
            .env_remove("SSL_CERT_FILE")
            .env("RBUILD_CERTS_DIR", self.certs.path())
            .env(
                "RBUILD_REGISTRY_MIRRORS",
                format!("docker.io={}", registry()),
            )
            .env("RBUILD_PROGRESS", "plain")
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("RBUILD_RUNTIME")
            .current_dir(dir);
        c
    }

    fn build_in(&self, dir: &Path, store: &Path, args: &[&str]) -> Build {
        Build::parse(self.cmd(dir, store, args).output().unwrap())
    }

    fn build(&self, store: &Path, args: &[&str]) -> Build {
        self.build_in(self.ctx.path(), store, args)
    }

    /// [`Env::build`] with `--metadata-file`: the build must succeed; returns it and its
    /// image (manifest digest, config digest).
    fn built(&self, store: &Path, args: &[&str]) -> (Build, (String, String)) {
        let meta = self.path(&format!("meta-{}.json", unique("m").replace('/', "-")));
        let mut a = args.to_vec();
        a.extend(["--metadata-file", meta.to_str().unwrap()]);
        let b = self.build(store, &a).ok();
        (b, image_of(&meta))
    }

    /// `rbuild build --cache-from FROM -o type=local,dest=OUT` (OUT emptied first) in `dir`
    /// on the store `store` (made when missing).
    fn build_from(&self, dir: &Path, store: &str, from: &str, out: &Path) -> Build {
        let _ = fs::remove_dir_all(out);
        let o = format!("type=local,dest={}", out.display());
        self.build_in(dir, &self.store(store), &["--cache-from", from, "-o", &o])
    }

    /// A copy of the context at another path, every file with another mtime.
    fn copy_ctx(&self, name: &str) -> PathBuf {
        let dst = self.path(name);
        fs::create_dir_all(&dst).unwrap();
        let src = format!("{}/.", self.ctx.path().display());
        tool("cp", &["-r", &src, dst.to_str().unwrap()]);
        tool(
            "sh",
            &[
                "-c",
                "find \"$1\" -exec touch -h -d '2001-02-03 04:05:06' {} +",
                "sh",
                dst.to_str().unwrap(),
            ],
        );
        dst
    }
}

/// The text of `file` in a `-o type=local` output directory.
fn out_file(dir: &Path, file: &str) -> String {
    fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
}

const APP: &str = "FROM busybox\n\
WORKDIR /app\n\
COPY src/ /app/src/\n\
RUN cat /app/src/*.txt > /app/all && echo \"$RANDOM$RANDOM\" > /app/nonce\n\
RUN wc -c /app/all > /app/size\n";

#[test]
fn max_export_fills_an_empty_store_elsewhere_as_another_user_with_no_run() {
    let e = Env::new(APP);
    e.file("src/a.txt", "alpha\n");
    e.file("src/b.txt", "beta\n");
    let repo = unique("cross");
    let cache = format!("{}/{repo}:max", registry());
    let store_a = e.store("a");
    let to = format!("type=registry,ref={cache},mode=max");
    let (_, img_a) = e.built(&store_a, &["--cache-to", &to]);
    let (manifest, config) = registry_cache(&repo, "max");
    // nothing of machine A in the config: no context or store path, no host name
    let text = config.to_string();
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let mut local = vec![
        e.ctx.path().to_str().unwrap().to_string(),
        store_a.to_str().unwrap().to_string(),
    ];
    if host.trim().len() >= 6 {
        local.push(host.trim().to_string());
    }
    for l in local {
        assert!(!text.contains(&l), "{l:?} in the cache config: {text}");
    }
    assert!(
        manifest["layers"].as_array().unwrap().len() >= 3,
        "{manifest}"
    );

    // Machine B: another path, other mtimes, the rootless user, an empty store of its own.
    let user = rootless_user();
    let ctx_b = e.copy_ctx("ctx-b");
    common::open_up(e.scratch.path());
    tool("chmod", &["-R", "a+rX", ctx_b.to_str().unwrap()]);
    let home_b = e.store("home-b");
    let store_b = e.store("b-store");
    user.own(&home_b);
    user.own(&store_b);
    let meta_b = home_b.join("b.json");
    let mut c = e.cmd(
        &ctx_b,
        &store_b,
        &[
            "--explain",
            "--cache-from",
            &cache,
            "--metadata-file",
            meta_b.to_str().unwrap(),
        ],
    );
    c.env("HOME", &home_b);
    let mut c = user.wrap(&c);
    c.env("HOME", &home_b);
    let b = Build::parse(c.output().unwrap()).ok();
    assert_no_run_ran(&b);
    assert_eq!(
        img_a,
        image_of(&meta_b),
        "the image from the cache differs from machine A's"
    );
    let why = b.why("RUN cat /app/src");
    assert!(
        why.contains(&repo),
        "--explain does not name the cache: {why}"
    );
}

#[test]
fn min_holds_the_final_stage_and_max_the_intermediate_ones_downloaded_lazily() {
    let e = Env::new(
        "FROM busybox AS builder\n\
COPY tool.txt /tool.txt\n\
RUN cat /tool.txt > /built && echo \"$RANDOM$RANDOM\" >> /built\n\
FROM busybox\n\
COPY app.txt /app.txt\n\
COPY --from=builder /built /built\n\
RUN cat /app.txt /built > /out && echo \"$RANDOM$RANDOM\" >> /out\n",
    );
    e.file("tool.txt", "tool\n");
    e.file("app.txt", "app v1\n");
    let repo = unique("minmax");
    let min = format!("{}/{repo}:min", registry());
    let max = format!("{}/{repo}:max", registry());
    let out_a = e.path("out-a");
    let (_, img_a) = e.built(
        &e.store("a"),
        &[
            "--cache-to",
            &format!("type=registry,ref={min}"),
            "--cache-to",
            &format!("type=registry,ref={max},mode=max,compression=zstd"),
            "-o",
            &format!("type=local,dest={}", out_a.display()),
        ],
    );
    let (m_min, _) = registry_cache(&repo, "min");
    let (m_max, _) = registry_cache(&repo, "max");
    assert!(
        m_max["layers"].as_array().unwrap().len() > m_min["layers"].as_array().unwrap().len(),
        "max holds no more layers than min:\n{m_min}\n{m_max}"
    );
    assert!(
        m_max["layers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["mediaType"].as_str().unwrap().ends_with("+zstd")),
        "compression=zstd not applied: {m_max}"
    );
    let built_a = out_file(&out_a, "built");

    // unchanged context: both caches give the final image without running anything
    for cache in [&min, &max] {
        let store = e.store(&format!("same-{}", cache.rsplit(':').next().unwrap()));
        let (b, img) = e.built(&store, &["--cache-from", cache]);
        assert_no_run_ran(&b);
        assert_eq!(img.0, img_a.0, "{cache}");
        // lazy: layers of the cache that the image does not contain were never downloaded
        let (m, c) = registry_cache(&repo, cache.rsplit(':').next().unwrap());
        let in_image = diff_ids_in_store(&store, &img.1);
        for (i, l) in m["layers"].as_array().unwrap().iter().enumerate() {
            let diff_id = c["layers"][i]["diff_id"].as_str().unwrap();
            if !in_image.contains(diff_id) {
                let digest = l["digest"].as_str().unwrap();
                assert!(
                    !has_blob(&store, digest) && !has_blob(&store, diff_id),
                    "{cache}: layer {i} ({digest}) was downloaded though the image does not need it"
                );
            }
        }
    }

    // the final stage changes: with min the builder stage runs again, with max it is a hit
    e.file("app.txt", "app v2\n");
    let out = e.path("out-min");
    let b = e.build_from(e.ctx.path(), "changed-min", &min, &out).ok();
    b.assert_ran("RUN cat /tool.txt")
        .assert_ran("RUN cat /app.txt");
    assert_ne!(
        out_file(&out, "built"),
        built_a,
        "the builder stage did not run"
    );
    let out = e.path("out-max");
    let b = e.build_from(e.ctx.path(), "changed-max", &max, &out).ok();
    b.assert_cached("RUN cat /tool.txt")
        .assert_ran("RUN cat /app.txt");
    assert_eq!(
        out_file(&out, "built"),
        built_a,
        "the builder's result did not come from the cache"
    );
    assert!(out_file(&out, "out").starts_with("app v2\n"));
}

/// Every file under `layout/blobs`, as `sha256:<name>`, after checking that the layout holds
/// nothing but regular files and directories and that every blob matches its name.
fn layout_blobs(layout: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![layout.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            let t = fs::symlink_metadata(&p).unwrap().file_type();
            assert!(
                t.is_dir() || t.is_file(),
                "{} is neither file nor dir",
                p.display()
            );
            if t.is_dir() {
                stack.push(p);
            } else if p.parent().unwrap() == layout.join("blobs/sha256") {
                let name = format!("sha256:{}", p.file_name().unwrap().to_str().unwrap());
                assert_eq!(sha256(&fs::read(&p).unwrap()), name, "{}", p.display());
                out.insert(name);
            }
        }
    }
    out
}

/// The blobs `index.json` references (manifests, their configs and layers), and the manifest
/// named `tag`.
fn layout_referenced(layout: &Path, tag: &str) -> (BTreeSet<String>, Value) {
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mut refs = BTreeSet::new();
    let mut named = None;
    for d in index["manifests"].as_array().unwrap() {
        let digest = d["digest"].as_str().unwrap().to_string();
        let m: Value = serde_json::from_slice(
            &fs::read(layout.join("blobs/sha256").join(&digest[7..])).unwrap(),
        )
        .unwrap();
        refs.insert(digest);
        refs.insert(m["config"]["digest"].as_str().unwrap().to_string());
        for l in m["layers"].as_array().unwrap() {
            refs.insert(l["digest"].as_str().unwrap().to_string());
        }
        if d["annotations"]["org.opencontainers.image.ref.name"] == tag {
            named = Some(m);
        }
    }
    (
        refs,
        named.unwrap_or_else(|| panic!("no manifest named {tag} in {index}")),
    )
}

#[test]
fn a_local_cache_dir_survives_tar_and_zip_and_does_not_grow() {
    let e = Env::new(
        "FROM busybox\nCOPY a.txt /a.txt\nRUN cat /a.txt > /b && echo \"$RANDOM$RANDOM\" >> /b\n",
    );
    e.file("a.txt", "one\n");
    let parent = e.path("cachedirs");
    let dir = parent.join("c");
    let store_a = e.store("a");
    let to = format!("type=local,dest={},mode=max", dir.display());
    let (_, img_a) = e.built(&store_a, &["--cache-to", &to]);
    // an OCI layout of plain files, readable by skopeo
    let layout: Value = serde_json::from_slice(&fs::read(dir.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let files1 = layout_blobs(&dir);
    let (refs1, m) = layout_referenced(&dir, "latest");
    assert_eq!(files1, refs1, "blobs that index.json does not reference");
    assert_eq!(m["config"]["mediaType"], CACHE_CONFIG);
    let raw: Value = serde_json::from_slice(&tool(
        "skopeo",
        &["inspect", "--raw", &format!("oci:{}:latest", dir.display())],
    ))
    .unwrap();
    assert_eq!(raw, m);
    let config: Value = serde_json::from_slice(
        &fs::read(
            dir.join("blobs/sha256")
                .join(&m["config"]["digest"].as_str().unwrap()[7..]),
        )
        .unwrap(),
    )
    .unwrap();
    check_cache_config(&m, &config);

    // carried by tar and by zip (as CI caches do), restored elsewhere
    let tarball = e.path("c.tar");
    tool(
        "tar",
        &[
            "-C",
            parent.to_str().unwrap(),
            "-cf",
            tarball.to_str().unwrap(),
            "c",
        ],
    );
    let from_tar = e.store("from-tar");
    tool(
        "tar",
        &[
            "-C",
            from_tar.to_str().unwrap(),
            "-xf",
            tarball.to_str().unwrap(),
        ],
    );
    let zipfile = e.path("c.zip");
    let st = Command::new("zip")
        .args(["-qr", zipfile.to_str().unwrap(), "c"])
        .current_dir(&parent)
        .status()
        .unwrap();
    assert!(st.success());
    let from_zip = e.store("from-zip");
    tool(
        "unzip",
        &[
            "-q",
            zipfile.to_str().unwrap(),
            "-d",
            from_zip.to_str().unwrap(),
        ],
    );
    for (name, restored) in [("s-tar", from_tar.join("c")), ("s-zip", from_zip.join("c"))] {
        let src = format!("type=local,src={}", restored.display());
        let (b, img) = e.built(&e.store(name), &["--cache-from", &src]);
        assert_no_run_ran(&b);
        assert_eq!(img, img_a, "{}", restored.display());
    }

    // a second export to the same directory keeps only what it needs
    e.file("a.txt", "two\n");
    e.build(&store_a, &["--cache-to", &to]).ok();
    let files2 = layout_blobs(&dir);
    let (refs2, _) = layout_referenced(&dir, "latest");
    assert_eq!(files2, refs2, "blobs of the first export were left behind");
    assert!(
        refs1.difference(&refs2).next().is_some(),
        "the second export reused every blob of the first"
    );

    // a tag of its own
    let tagged = format!("type=local,dest={},tag=v2", e.path("tagged").display());
    e.build(&store_a, &["--cache-to", &tagged]).ok();
    layout_referenced(&e.path("tagged"), "v2");

    // a directory that is not a cache is never written into nor cleaned
    let other = e.store("not-a-cache");
    fs::write(other.join("notes.txt"), "keep me\n").unwrap();
    let b = e.build(
        &store_a,
        &[
            "--cache-to",
            &format!("type=local,dest={}", other.display()),
        ],
    );
    assert_eq!(b.out.status.code(), Some(1), "{}", b.lines.join("\n"));
    assert_eq!(
        fs::read_to_string(other.join("notes.txt")).unwrap(),
        "keep me\n"
    );
    assert_eq!(
        fs::read_dir(&other).unwrap().count(),
        1,
        "files were added to {other:?}"
    );
}

#[test]
fn inline_cache_round_trip_through_the_pushed_image() {
    let e = Env::new(
        "FROM busybox\nCOPY a.txt /a.txt\nRUN cat /a.txt > /b && echo \"$RANDOM$RANDOM\" >> /b\n",
    );
    e.file("a.txt", "inline\n");
    let image = format!("{}/{}:img", registry(), unique("inline"));
    let (_, img_a) = e.built(
        &e.store("a"),
        &["-t", &image, "--push", "--cache-to", "type=inline"],
    );
    // The push is an index (the image and its provenance attestation): the inline cache is
    // on the image's own manifest, as BuildKit keeps it in the image's config.
    let top = registry_json(&image, false);
    let m = match top["manifests"].as_array() {
        Some(list) => {
            let repo = image.rsplit_once(':').unwrap().0;
            let d = list[0]["digest"].as_str().unwrap();
            registry_json(&format!("{repo}@{d}"), false)
        }
        None => top,
    };
    let c = registry_json(&image, true);
    let inline: Value = serde_json::from_str(
        m["annotations"][INLINE_ANNOTATION]
            .as_str()
            .unwrap_or_else(|| {
                panic!("no {INLINE_ANNOTATION} annotation on the pushed manifest: {m}")
            }),
    )
    .unwrap();
    check_cache_config(&m, &inline);
    let layers: Vec<&Value> = inline["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["diff_id"])
        .collect();
    let diff_ids: Vec<&Value> = c["rootfs"]["diff_ids"].as_array().unwrap().iter().collect();
    assert_eq!(layers, diff_ids);

    let (b, img_b) = e.built(&e.store("b"), &["--cache-from", &image]);
    assert_no_run_ran(&b);
    assert_eq!(img_b.1, img_a.1, "another image config");

    // without a push there is nowhere to put it: a warning, as buildx, and a good build
    let b = e.build(&e.store("c"), &["--cache-to", "type=inline"]).ok();
    let err = b.stderr();
    assert!(err.contains("WARNING") && err.contains("inline"), "{err}");
}

#[test]
fn cache_mounts_travel_only_when_asked() {
    let e = Env::new(
        "FROM busybox\nCOPY v.txt /v.txt\n\
RUN --mount=type=cache,target=/var/cache/pkgs,id=pkgs cat /v.txt >> /var/cache/pkgs/log && cp /var/cache/pkgs/log /seen\n",
    );
    e.file("v.txt", "one\n");
    let with = e.path("with-mounts");
    let without = e.path("without-mounts");
    e.build(
        &e.store("a"),
        &[
            "--cache-to",
            &format!(
                "type=local,dest={},mode=max,cache-mounts=true",
                with.display()
            ),
            "--cache-to",
            &format!("type=local,dest={},mode=max", without.display()),
        ],
    )
    .ok();
    let config = |dir: &Path| -> Value {
        let (_, m) = layout_referenced(dir, "latest");
        let d = m["config"]["digest"].as_str().unwrap().to_string();
        serde_json::from_slice(&fs::read(dir.join("blobs/sha256").join(&d[7..])).unwrap()).unwrap()
    };
    let mounts = config(&with)["mounts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(mounts.len(), 1, "{}", config(&with));
    assert!(
        mounts[0]["name"].as_str().unwrap().ends_with("pkgs"),
        "{mounts:?}"
    );
    assert!(
        config(&without)["mounts"]
            .as_array()
            .is_none_or(|m| m.is_empty()),
        "cache mounts exported without cache-mounts=true"
    );

    // the step must run on machine B (v.txt changed): its cache mount starts from A's content
    e.file("v.txt", "two\n");
    for (dir, want) in [(&with, "one\ntwo\n"), (&without, "two\n")] {
        let out = e.path(&format!(
            "out-{}",
            dir.file_name().unwrap().to_str().unwrap()
        ));
        let name = dir.file_name().unwrap().to_str().unwrap();
        let src = format!("type=local,src={}", dir.display());
        let b = e
            .build_from(e.ctx.path(), &format!("b-{name}"), &src, &out)
            .ok();
        b.assert_ran("RUN --mount=type=cache");
        assert_eq!(out_file(&out, "seen"), want, "{}", dir.display());
    }
}

#[test]
fn one_changed_context_file_runs_only_the_steps_that_depend_on_it() {
    let e = Env::new(
        "FROM busybox\n\
COPY a.txt /a.txt\n\
RUN cat /a.txt > /a.out && echo \"$RANDOM\" >> /a.out\n\
COPY b.txt /b.txt\n\
RUN cat /b.txt > /b.out\n",
    );
    e.file("a.txt", "a\n");
    e.file("b.txt", "b1\n");
    let repo = unique("onefile");
    let cache = format!("{}/{repo}:c", registry());
    let out_a = e.path("out-a");
    e.build(
        &e.store("a"),
        &[
            "--cache-to",
            &format!("type=registry,ref={cache},mode=max"),
            "-o",
            &format!("type=local,dest={}", out_a.display()),
        ],
    )
    .ok();
    let ctx = e.copy_ctx("ctx-b");
    fs::write(ctx.join("b.txt"), "b2\n").unwrap();
    let out = e.path("out-b");
    let b = e.build_from(&ctx, "b", &cache, &out).ok();
    b.assert_cached("COPY a.txt")
        .assert_cached("RUN cat /a.txt")
        .assert_ran("COPY b.txt")
        .assert_ran("RUN cat /b.txt");
    assert_eq!(out_file(&out, "a.out"), out_file(&out_a, "a.out"));
    assert_eq!(out_file(&out, "b.out"), "b2\n");

    // a record is only ever used for its own key: another command misses
    let other = e.path("other");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("a.txt"), "a\n").unwrap();
    fs::write(
        other.join("Dockerfile"),
        "FROM busybox\nCOPY a.txt /a.txt\nRUN cat /a.txt > /a.out && echo \"$RANDOM\" >> /a.out # other\n",
    )
    .unwrap();
    let b = e
        .build_in(&other, &e.store("other"), &["--cache-from", &cache])
        .ok();
    b.assert_cached("COPY a.txt").assert_ran("RUN cat /a.txt");
}

#[test]
fn tls_registry_with_login_round_trip_and_a_wrong_password_is_a_warning() {
    let e = Env::new(
        "FROM busybox\nCOPY a.txt /a.txt\nRUN cat /a.txt > /b && echo \"$RANDOM\" > /nonce\n",
    );
    e.file("a.txt", "secret registry\n");
    let cache = format!("{}/{}:c", tls_registry(), unique("tls"));
    e.login(Some(TLS_PASSWORD));
    let (_, img_a) = e.built(
        &e.store("a"),
        &["--cache-to", &format!("type=registry,ref={cache},mode=max")],
    );
    let (b, img_b) = e.built(&e.store("b"), &["--cache-from", &cache]);
    assert_no_run_ran(&b);
    assert_eq!(img_a, img_b);

    for password in [Some("wrong-password"), None] {
        e.login(password);
        let out = e.path("out");
        let store = format!("c-{}", password.is_some());
        let b = e.build_from(e.ctx.path(), &store, &cache, &out).ok();
        let err = b.stderr();
        assert!(
            err.contains(&format!("WARNING: cache import from {cache} failed")),
            "{password:?}: {err}"
        );
        assert!(
            !err.contains("wrong-password"),
            "the password is printed: {err}"
        );
        b.assert_ran("RUN cat /a.txt");
        assert_eq!(out_file(&out, "b"), "secret registry\n");
    }
}

/// A gzip'd tar holding `/b` = `EVIL` and `/evil`.
fn evil_layer() -> Vec<u8> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (name, data) in [("b", &b"EVIL\n"[..]), ("evil", &b"planted\n"[..])] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// Write `data` as a blob of `layout`, returning its descriptor fields.
fn put_blob(layout: &Path, data: &[u8]) -> (String, u64) {
    let d = sha256(data);
    fs::write(layout.join("blobs/sha256").join(&d[7..]), data).unwrap();
    (d, data.len() as u64)
}

/// Replace the manifest named `latest` of `layout` by `m` (index.json updated).
fn replace_manifest(layout: &Path, m: &Value) {
    let bytes = serde_json::to_vec(m).unwrap();
    let (d, size) = put_blob(layout, &bytes);
    let p = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    for desc in index["manifests"].as_array_mut().unwrap() {
        if desc["annotations"]["org.opencontainers.image.ref.name"] == "latest" {
            desc["digest"] = json!(d);
            desc["size"] = json!(size);
        }
    }
    fs::write(p, serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn broken_and_hostile_imports_are_warnings_and_never_enter_the_store() {
    let e = Env::new(
        "FROM busybox\nCOPY a.txt /a.txt\nRUN cat /a.txt > /b && echo \"$RANDOM\" > /nonce\n",
    );
    e.file("a.txt", "good\n");
    let good = e.path("good");
    e.build(
        &e.store("a"),
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=max", good.display()),
        ],
    )
    .ok();
    let (_, manifest) = layout_referenced(&good, "latest");
    let layers: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let evil = evil_layer();
    let evil_digest = sha256(&evil);

    // variants of the good cache, each broken in one way
    let variant = |name: &str, f: &dyn Fn(&Path)| -> String {
        let d = e.path(name);
        tool("cp", &["-r", good.to_str().unwrap(), d.to_str().unwrap()]);
        f(&d);
        format!("type=local,src={}", d.display())
    };
    let truncated = variant("truncated", &|d| {
        for l in &layers {
            let p = d.join("blobs/sha256").join(&l[7..]);
            let len = fs::metadata(&p).unwrap().len();
            fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
        }
    });
    let swapped = variant("swapped", &|d| {
        // other bytes under the layer's name (its digest no longer matches)
        for l in &layers {
            let p = d.join("blobs/sha256").join(&l[7..]);
            let len = fs::metadata(&p).unwrap().len() as usize;
            let mut bytes = evil.clone();
            bytes.resize(len.max(bytes.len()), 0);
            fs::write(&p, bytes).unwrap();
        }
    });
    let wrong_diff_id = variant("diffid", &|d| {
        // a well-formed blob, manifest and index, but the config's diff_ids are the real ones
        let (digest, size) = put_blob(d, &evil);
        let mut m = manifest.clone();
        for l in m["layers"].as_array_mut().unwrap() {
            l["digest"] = json!(digest);
            l["size"] = json!(size);
        }
        replace_manifest(d, &m);
    });
    let bad_config = variant("config", &|d| {
        let c = manifest["config"]["digest"].as_str().unwrap();
        let p = d.join("blobs/sha256").join(&c[7..]);
        let mut text = fs::read(&p).unwrap();
        text.truncate(text.len() - 1);
        fs::write(p, text).unwrap();
    });
    let buildkit = variant("buildkit", &|d| {
        let (digest, size) = put_blob(d, b"{\"layers\":[],\"records\":[]}");
        let mut m = manifest.clone();
        m["config"] = json!({
            "mediaType": "application/vnd.buildkit.cacheconfig.v0",
            "digest": digest,
            "size": size
        });
        replace_manifest(d, &m);
    });
    let missing_dir = format!("type=local,src={}", e.path("never-written").display());
    let missing_ref = format!("{}/{}:none", registry(), unique("missing"));
    let plain_image = format!("{}/library/busybox:latest", registry());

    for (what, from) in [
        ("404", missing_ref.as_str()),
        ("an image without inline cache", plain_image.as_str()),
        ("a missing directory", missing_dir.as_str()),
        ("truncated blobs", truncated.as_str()),
        ("blobs that do not match their digest", swapped.as_str()),
        (
            "layers whose content is not their diff_id",
            wrong_diff_id.as_str(),
        ),
        ("a corrupt config", bad_config.as_str()),
        ("a BuildKit cache", buildkit.as_str()),
    ] {
        let out = e.path("out");
        let name = format!("s-{}", what.replace(' ', "-"));
        let b = e.build_from(e.ctx.path(), &name, from, &out);
        let store = e.path(&name);
        assert!(
            b.out.status.success(),
            "{what}: the build failed:\n{}",
            b.lines.join("\n")
        );
        let err = b.stderr();
        assert!(
            err.contains("WARNING") && err.contains("cache"),
            "{what}: no warning:\n{err}"
        );
        b.assert_ran("RUN cat /a.txt");
        assert_eq!(out_file(&out, "b"), "good\n", "{what}");
        assert!(
            !out.join("evil").exists(),
            "{what}: the planted file is in the result"
        );
        assert!(
            !has_blob(&store, &evil_digest),
            "{what}: the evil blob entered the store"
        );
        if what == "a BuildKit cache" {
            assert!(
                err.contains("application/vnd.buildkit.cacheconfig.v0"),
                "{err}"
            );
        }
    }
}

#[test]
fn export_failure_exits_1_unless_ignore_error_and_never_writes_through_symlinks() {
    let e = Env::new("FROM busybox\nRUN echo x > /x\n");
    let store = e.store("a");
    let unreachable = "type=registry,ref=127.0.0.1:1/rbuild-rc/nowhere:c";
    let b = e.build(&store, &["--cache-to", unreachable]);
    assert_eq!(b.out.status.code(), Some(1), "{}", b.lines.join("\n"));
    assert!(b.stderr().contains("127.0.0.1:1"), "{}", b.stderr());
    let b = e
        .build(
            &store,
            &["--cache-to", &format!("{unreachable},ignore-error=true")],
        )
        .ok();
    assert!(
        b.stderr().contains("WARNING") && b.stderr().contains("127.0.0.1:1"),
        "{}",
        b.stderr()
    );

    // a layout whose blobs dir and index.json are symlinks out of it: nothing outside changes
    let victim = e.store("victim");
    fs::create_dir_all(victim.join("sha256")).unwrap();
    let precious = victim.join("sha256").join("0".repeat(64));
    fs::write(&precious, "precious\n").unwrap();
    let victim_index = victim.join("index.json");
    fs::write(&victim_index, "{\"victim\":true}\n").unwrap();
    let dest = e.store("evil-dest");
    fs::write(
        dest.join("oci-layout"),
        "{\"imageLayoutVersion\":\"1.0.0\"}",
    )
    .unwrap();
    std::os::unix::fs::symlink(&victim, dest.join("blobs")).unwrap();
    std::os::unix::fs::symlink(&victim_index, dest.join("index.json")).unwrap();
    let b = e.build(
        &store,
        &["--cache-to", &format!("type=local,dest={}", dest.display())],
    );
    let listing = |d: &Path| -> BTreeSet<String> {
        fs::read_dir(d.join("sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        fs::read_to_string(&precious).unwrap(),
        "precious\n",
        "exit {:?}",
        b.out.status
    );
    assert_eq!(
        listing(&victim),
        BTreeSet::from(["0".repeat(64)]),
        "files written outside dest"
    );
    assert_eq!(
        fs::read_to_string(&victim_index).unwrap(),
        "{\"victim\":true}\n"
    );
}

/// The usual CI job: import and export the same cache. A fully cached job on an empty store
/// writes back the very same cache (same manifest, same blobs) and unpacks only the layers of
/// its own result — never the builder stage's, which it re-exports as the blobs it imported.
#[test]
fn a_cached_job_that_imports_and_exports_one_cache_rewrites_it_unchanged() {
    require();
    let e = Env::new(
        "FROM busybox AS builder\nCOPY a.txt /a.txt\nRUN cat /a.txt > /built && echo \"$RANDOM$RANDOM\" >> /built\n\
FROM busybox\nCOPY --from=builder /built /built\n",
    );
    e.file("a.txt", "ci\n");
    let dir = e.path("cache");
    let to = format!("type=local,dest={},mode=max", dir.display());
    e.built(&e.store("a"), &["--cache-to", &to]);
    let (_, m1) = layout_referenced(&dir, "latest");
    let blobs1 = layout_blobs(&dir);
    let from = format!("type=local,src={}", dir.display());
    let store_b = e.store("b");
    let (b, _) = e.built(&store_b, &["--cache-from", &from, "--cache-to", &to]);
    assert!(
        b.ran_matching("] RUN ").is_empty(),
        "{}",
        b.lines.join("\n")
    );
    let (_, m2) = layout_referenced(&dir, "latest");
    assert_eq!(m1, m2, "the rewritten cache manifest differs");
    assert_eq!(blobs1, layout_blobs(&dir));
    // B unpacked the final image's layers (busybox and the copied file), nothing of the builder.
    let snapshots = fs::read_dir(store_b.join("snapshots-v1")).unwrap().count();
    assert_eq!(snapshots, 2, "snapshots in store B");
}
