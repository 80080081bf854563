//! Data-driven end-to-end conformance cases through the real CLI.
//!
//! Every directory under `testdata/conformance/<case>/` is one build:
//!
//! - `context/` is the build context (it holds the `Dockerfile` unless `expected.json` names
//!   another with `"args": ["-f", …]`); `{{HTTP}}` and `{{GIT}}` in the Dockerfile are replaced
//!   with the URL of a tiny HTTP server serving `<case>/http/` and the URL of a git repository
//!   made from `<case>/git/` (commit 1 tagged `v1`, then commit 2 writing `VERSION`), served by
//!   the same server with git's dumb HTTP protocol.
//! - `expected.json` says what the image must contain, mirroring what BuildKit produced for the
//!   same Dockerfile (`"buildkit"` records the comparison or a known difference):
//!   `files` (path → `content`, `mode` (octal text), `uid`, `gid`, `type` (`file`/`dir`/`symlink`),
//!   `target`), `absent` (paths), `config` (keys of the image config's `config` object compared
//!   exactly; `null` = absent), `image` (top-level config keys), `history` (substrings of
//!   `created_by`, in order, with `empty_layer` flags), or `error` (substrings the failed build's
//!   stderr must contain), or `exit_code` with `stdout` / `stdout_lacks` substrings (for
//!   `--check` runs, which build nothing).
//!
//! The image filesystem is reconstructed from the layer tars themselves (whiteouts applied), so
//! owners are the ones in the image, not the ones an unpacker maps.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use common::REGISTRY;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn require_env() {
    common::require_env();
    common::require_tools(&["git"]);
}

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/conformance")
}

/// Serve files under `root` on 127.0.0.1 (one thread per connection, GET only). `Last-Modified`
/// is fixed; a path ending in `.cd` is answered with `Content-Disposition: attachment;
/// filename="served-name.txt"`.
fn http_server(root: PathBuf) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            let root = root.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut first = String::new();
                if r.read_line(&mut first).is_err() {
                    return;
                }
                let mut if_none_match = None;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("if-none-match") {
                            if_none_match = Some(v.trim().to_string());
                        }
                    }
                }
                let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
                let path = path.split('?').next().unwrap_or("/");
                let file = root.join(path.trim_start_matches('/'));
                let resp = match fs::read(&file) {
                    Ok(body)
                        if !path.contains("..")
                            && Some(etag_of(&body)) == if_none_match =>
                    {
                        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
                    }
                    Ok(body) if !path.contains("..") => {
                        // Every full response is logged, so tests can count transfers.
                        let mut log = fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(root.join(".served"))
                            .unwrap();
                        writeln!(log, "{path}").unwrap();
                        let mut head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\nETag: {}\r\nConnection: close\r\n",
                            body.len(),
                            etag_of(&body)
                        );
                        if path.ends_with(".cd") {
                            head.push_str(
                                "Content-Disposition: attachment; filename=\"served-name.txt\"\r\n",
                            );
                        }
                        head.push_str("\r\n");
                        let mut v = head.into_bytes();
                        v.extend_from_slice(&body);
                        v
                    }
                    _ => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = s.write_all(&resp);
            });
        }
    });
    format!("http://{addr}")
}

/// A strong ETag derived from the body (FNV-1a).
fn etag_of(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("\"{h:016x}\"")
}

/// How many full (200) responses the test server sent for `path`.
fn served(root: &Path, path: &str) -> usize {
    fs::read_to_string(root.join(".served"))
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == path)
        .count()
}

fn git_repo(src: &Path, dest: &Path) -> String {
    let run = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(dest)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            // Fixed dates make commit ids stable, so cases can pin them with --checksum.
            .env("GIT_AUTHOR_DATE", "2020-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2020-01-01T00:00:00Z")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    copy_dir(src, dest);
    run(&["init", "-q", "-b", "main"]);
    run(&["add", "-A"]);
    run(&["commit", "-q", "-m", "one"]);
    run(&["tag", "v1"]);
    fs::write(dest.join("VERSION"), "2\n").unwrap();
    run(&["add", "-A"]);
    run(&["commit", "-q", "-m", "two"]);
    format!("file://{}", dest.display())
}

fn copy_dir(src: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dest.join(e.file_name());
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            copy_dir(&e.path(), &to);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(e.path()).unwrap(), &to).unwrap();
        } else {
            fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// One entry of the reconstructed image filesystem.
#[derive(Debug, Clone)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u64,
    gid: u64,
    data: Vec<u8>,
    target: String,
}

fn image_fs(store: &Path, name: &str) -> (BTreeMap<String, Entry>, Value) {
    let layout = format!("{}/layout-v1", store.display());
    let index: Value =
        serde_json::from_slice(&fs::read(format!("{layout}/index.json")).unwrap()).unwrap();
    let want = format!("docker.io/library/{name}:latest");
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == want.as_str())
        .unwrap_or_else(|| panic!("{want} not in the store's index.json"))
        .clone();
    let blob = |d: &str| {
        store
            .join("blobs-v1/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: Value =
        serde_json::from_slice(&fs::read(blob(desc["digest"].as_str().unwrap())).unwrap()).unwrap();
    let config: Value = serde_json::from_slice(
        &fs::read(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let mut files: BTreeMap<String, Entry> = BTreeMap::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let bytes = fs::read(blob(layer["digest"].as_str().unwrap())).unwrap();
        let reader: Box<dyn Read> = if bytes.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::GzDecoder::new(&bytes[..]))
        } else {
            Box::new(&bytes[..])
        };
        let mut ar = tar::Archive::new(reader);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let p = format!(
                "/{}",
                e.path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_start_matches("./")
                    .trim_end_matches('/')
            );
            let (dir, base) = p.rsplit_once('/').unwrap();
            if base == ".wh..wh..opq" {
                let pre = format!("{dir}/");
                files.retain(|k, _| !k.starts_with(&pre));
                continue;
            }
            if let Some(gone) = base.strip_prefix(".wh.") {
                let g = format!("{dir}/{gone}");
                let pre = format!("{g}/");
                files.retain(|k, _| k != &g && !k.starts_with(&pre));
                continue;
            }
            let h = e.header().clone();
            let et = h.entry_type();
            let kind = if et.is_dir() {
                "dir"
            } else if et.is_symlink() {
                "symlink"
            } else {
                "file"
            };
            let mut data = Vec::new();
            let mut target = String::new();
            if et.is_hard_link() {
                let l = format!(
                    "/{}",
                    e.link_name()
                        .unwrap()
                        .unwrap()
                        .to_string_lossy()
                        .trim_start_matches("./")
                );
                if let Some(src) = files.get(&l) {
                    data = src.data.clone();
                }
            } else if kind == "file" {
                e.read_to_end(&mut data).unwrap();
            } else if kind == "symlink" {
                target = e
                    .link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
            }
            if kind != "dir" {
                let pre = format!("{p}/");
                files.retain(|k, _| !k.starts_with(&pre));
            }
            files.insert(
                if p == "/." || p.is_empty() {
                    "/".into()
                } else {
                    p
                },
                Entry {
                    kind,
                    mode: h.mode().unwrap() & 0o7777,
                    uid: h.uid().unwrap(),
                    gid: h.gid().unwrap(),
                    data,
                    target,
                },
            );
        }
    }
    (files, config)
}

fn check_case(case: &Path, store: &Path, work: &Path) -> Result<(), String> {
    let name = case.file_name().unwrap().to_string_lossy().into_owned();
    let exp: Value = serde_json::from_slice(
        &fs::read(case.join("expected.json")).map_err(|e| format!("expected.json: {e}"))?,
    )
    .map_err(|e| format!("expected.json: {e}"))?;
    let ctx = work.join(&name);
    copy_dir(&case.join("context"), &ctx);
    // Served over HTTP: `<case>/http/` plus, for git cases, a bare repository `repo.git`
    // (dumb HTTP protocol, as a static file server can serve it).
    let srv = work.join(format!("{name}-srv"));
    fs::create_dir_all(&srv).unwrap();
    if case.join("http").exists() {
        copy_dir(&case.join("http"), &srv);
    }
    let mut git = None;
    if case.join("git").exists() {
        let repo = git_repo(&case.join("git"), &work.join(format!("{name}-git")));
        let bare = srv.join("repo.git");
        let ok = Command::new("git")
            .args(["clone", "-q", "--bare", &repo])
            .arg(&bare)
            .status()
            .unwrap()
            .success()
            && Command::new("git")
                .arg("-C")
                .arg(&bare)
                .arg("update-server-info")
                .status()
                .unwrap()
                .success();
        assert!(ok, "preparing the served git repository");
        git = Some(());
    }
    let http = (case.join("http").exists() || git.is_some()).then(|| http_server(srv.clone()));
    let git = git.and(http.as_ref()).map(|h| format!("{h}/repo.git"));
    for e in fs::read_dir(&ctx).unwrap() {
        let p = e.unwrap().path();
        let fname = p.file_name().unwrap().to_string_lossy().into_owned();
        if fname.contains("Dockerfile") && p.is_file() {
            let mut t = fs::read_to_string(&p).unwrap();
            if let Some(h) = &http {
                t = t.replace("{{HTTP}}", h);
            }
            if let Some(g) = &git {
                t = t.replace("{{GIT}}", g);
            }
            fs::write(&p, t).unwrap();
        }
    }
    let tag = format!("conf-{name}");
    let mut args: Vec<String> = vec!["build".into(), "-t".into(), tag.clone()];
    for a in exp["args"].as_array().into_iter().flatten() {
        args.push(a.as_str().unwrap().to_string());
    }
    args.push(".".into());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rbuild"));
    cmd.args(&args)
        .env("RBUILD_ROOT", store)
        .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
        .env("RBUILD_PROGRESS", "plain")
        .env_remove("SOURCE_DATE_EPOCH")
        .current_dir(&ctx);
    for (k, v) in exp["env"].as_object().into_iter().flatten() {
        cmd.env(k, v.as_str().unwrap());
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut errs: Vec<String> = Vec::new();
    // `--check` style cases: exit code and stdout only, no image.
    if let Some(code) = exp.get("exit_code") {
        if out.status.code() != code.as_i64().map(|c| c as i32) {
            errs.push(format!("exit code {:?}, want {code}", out.status.code()));
        }
        for w in exp["stdout"].as_array().into_iter().flatten() {
            let w = w.as_str().unwrap();
            if !stdout.contains(w) {
                errs.push(format!("stdout lacks {w:?}"));
            }
        }
        for w in exp["stdout_lacks"].as_array().into_iter().flatten() {
            let w = w.as_str().unwrap();
            if stdout.contains(w) {
                errs.push(format!("stdout should not contain {w:?}"));
            }
        }
        return if errs.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{}\nstdout:\n{stdout}\nstderr:\n{stderr}",
                errs.join("\n")
            ))
        };
    }
    if let Some(want) = exp.get("error") {
        if out.status.success() {
            return Err(format!("the build should have failed:\n{stderr}"));
        }
        for w in want.as_array().unwrap() {
            let w = w.as_str().unwrap();
            if !stderr.contains(w) {
                errs.push(format!("stderr lacks {w:?}"));
            }
        }
        return if errs.is_empty() {
            Ok(())
        } else {
            Err(format!("{}\nstderr:\n{stderr}", errs.join("\n")))
        };
    }
    if !out.status.success() {
        return Err(format!("build failed:\n{stderr}"));
    }
    for w in exp["stderr"].as_array().into_iter().flatten() {
        let w = w.as_str().unwrap();
        if !stderr.contains(w) {
            errs.push(format!("stderr lacks {w:?}"));
        }
    }
    let (files, config) = image_fs(store, &tag);
    for (path, want) in exp["files"].as_object().into_iter().flatten() {
        let Some(got) = files.get(path) else {
            errs.push(format!("{path}: missing from the image"));
            continue;
        };
        if let Some(c) = want.get("content") {
            let got_s = String::from_utf8_lossy(&got.data);
            if got_s != c.as_str().unwrap() {
                errs.push(format!("{path}: content {got_s:?}, want {c}"));
            }
        }
        if let Some(m) = want.get("mode") {
            let m = u32::from_str_radix(m.as_str().unwrap(), 8).unwrap();
            if got.mode != m {
                errs.push(format!("{path}: mode {:o}, want {m:o}", got.mode));
            }
        }
        for (k, g) in [("uid", got.uid), ("gid", got.gid)] {
            if let Some(w) = want.get(k) {
                if w.as_u64() != Some(g) {
                    errs.push(format!("{path}: {k} {g}, want {w}"));
                }
            }
        }
        if let Some(t) = want.get("type") {
            if got.kind != t.as_str().unwrap() {
                errs.push(format!("{path}: type {}, want {t}", got.kind));
            }
        }
        if let Some(t) = want.get("target") {
            if got.target != t.as_str().unwrap() {
                errs.push(format!("{path}: symlink target {:?}, want {t}", got.target));
            }
        }
    }
    for a in exp["absent"].as_array().into_iter().flatten() {
        let a = a.as_str().unwrap();
        if files.contains_key(a) {
            errs.push(format!("{a}: should not be in the image"));
        }
    }
    for (k, want) in exp["config"].as_object().into_iter().flatten() {
        let got = config["config"].get(k).cloned().unwrap_or(Value::Null);
        if &got != want {
            errs.push(format!("config.{k}: {got}, want {want}"));
        }
    }
    for (k, want) in exp["image"].as_object().into_iter().flatten() {
        let got = config.get(k).cloned().unwrap_or(Value::Null);
        if &got != want {
            errs.push(format!("{k}: {got}, want {want}"));
        }
    }
    if let Some(h) = exp.get("history") {
        let got: Vec<(String, bool)> = config["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["created_by"].as_str().unwrap_or("").to_string(),
                    e["empty_layer"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        let want = h.as_array().unwrap();
        let tail = &got[got.len().saturating_sub(want.len())..];
        if tail.len() != want.len() {
            errs.push(format!("history too short: {got:?}"));
        }
        for (w, g) in want.iter().zip(tail) {
            let sub = w[0].as_str().unwrap();
            let empty = w[1].as_bool().unwrap();
            if !g.0.contains(sub) || g.1 != empty {
                errs.push(format!(
                    "history entry {g:?}, want {sub:?} empty_layer={empty}"
                ));
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("\n"))
    }
}

#[test]
fn conformance_cases_build_like_buildkit() {
    require_env();
    let only = std::env::var("RBUILD_CONFORMANCE_CASE").ok();
    let mut cases: Vec<PathBuf> = fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expected.json").exists())
        .filter(|p| only.as_deref().is_none_or(|o| p.ends_with(o)))
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no conformance cases found");
    let store = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let failures: Vec<String> = std::thread::scope(|s| {
        let chunks: Vec<Vec<PathBuf>> = (0..4)
            .map(|k| cases.iter().skip(k).step_by(4).cloned().collect())
            .collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let (store, work) = (store.path(), work.path());
                s.spawn(move || {
                    chunk
                        .iter()
                        .filter_map(|c| {
                            check_case(c, store, work).err().map(|e| {
                                format!("--- {}:\n{e}", c.file_name().unwrap().to_string_lossy())
                            })
                        })
                        .collect::<Vec<String>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} conformance cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn rbuild(ctx: &Path, store: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .args(args)
        .arg(".")
        .env("RBUILD_ROOT", store)
        .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
        .env("RBUILD_PROGRESS", "plain")
        .env_remove("SOURCE_DATE_EPOCH")
        .current_dir(ctx)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "rbuild {args:?} failed:\n{text}");
    text
}

fn diff_ids(store: &Path, name: &str) -> Vec<String> {
    let (_, config) = image_fs(store, name);
    config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn copy_link_layer_is_reused_when_earlier_steps_change() {
    require_env();
    let ctx = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    fs::write(ctx.path().join("app.txt"), "app\n").unwrap();
    let df = |v: &str| {
        fs::write(
            ctx.path().join("Dockerfile"),
            format!("FROM busybox\nRUN echo {v} > /v\nCOPY --link app.txt /app/\nCOPY app.txt /plain/\n"),
        )
        .unwrap();
    };
    df("one");
    rbuild(ctx.path(), store.path(), &["build", "-t", "linka"]);
    df("two");
    let out = rbuild(ctx.path(), store.path(), &["build", "-t", "linkb"]);
    let a = diff_ids(store.path(), "linka");
    let b = diff_ids(store.path(), "linkb");
    assert_eq!(a.len(), b.len());
    let n = a.len();
    assert_ne!(a[n - 3], b[n - 3], "the RUN layer changed");
    assert_eq!(a[n - 2], b[n - 2], "the --link layer is the same layer");
    assert!(
        cached(&out, "COPY --link app.txt /app/"),
        "the --link copy is a cache hit after an earlier step changed:\n{out}"
    );
    assert!(
        !cached(&out, "COPY app.txt /plain/"),
        "a plain copy after the changed step reruns:\n{out}"
    );
}

#[test]
fn pinned_http_source_is_not_fetched_again_and_unpinned_is_keyed_by_content() {
    require_env();
    let srv = tempfile::tempdir().unwrap();
    fs::write(srv.path().join("f.txt"), "v1\n").unwrap();
    let url = http_server(srv.path().to_path_buf());
    let ctx = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM busybox\nADD {url}/f.txt /f.txt\nRUN cat /f.txt > /copy\n"),
    )
    .unwrap();
    rbuild(ctx.path(), store.path(), &["build", "-t", "h1"]);
    assert_eq!(served(srv.path(), "/f.txt"), 1);
    let again = rbuild(ctx.path(), store.path(), &["build", "-t", "h1"]);
    assert_eq!(
        served(srv.path(), "/f.txt"),
        1,
        "the rebuild revalidated with If-None-Match and got 304"
    );
    assert!(
        cached(&again, "RUN cat /f.txt"),
        "same content, same key:\n{again}"
    );
    fs::write(srv.path().join("f.txt"), "v2\n").unwrap();
    let changed = rbuild(ctx.path(), store.path(), &["build", "-t", "h2"]);
    assert_eq!(
        served(srv.path(), "/f.txt"),
        2,
        "changed content is transferred"
    );
    assert!(
        !cached(&changed, "RUN cat /f.txt"),
        "new content, new key:\n{changed}"
    );
    let (files, _) = image_fs(store.path(), "h2");
    assert_eq!(files["/copy"].data, b"v2\n");
    // Pinned: after one fetch the checksum is the key, so a rebuild makes no request (if it
    // fetched, the changed body would fail the checksum).
    fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM busybox\nADD --checksum={V2_SHA} {url}/f.txt /f.txt\nRUN cat /f.txt > /copy\n"
        ),
    )
    .unwrap();
    rbuild(ctx.path(), store.path(), &["build", "-t", "h3"]);
    fs::write(srv.path().join("f.txt"), "v3\n").unwrap();
    let pinned = rbuild(ctx.path(), store.path(), &["build", "-t", "h3"]);
    assert!(cached(&pinned, "ADD --checksum"), "{pinned}");
    let (files, _) = image_fs(store.path(), "h3");
    assert_eq!(files["/f.txt"].data, b"v2\n");
    assert_eq!(files["/f.txt"].mode, 0o600);
}

const V2_SHA: &str = "sha256:81db67b6a5702b9b68f0016f061c409bf3fb16d062fc854d1b424bb4e9c28c56";

/// Whether the progress output shows the step whose title contains `step` as `CACHED`.
fn cached(out: &str, step: &str) -> bool {
    out.lines()
        .filter(|l| l.contains(step))
        .filter_map(|l| l.split_whitespace().next())
        .any(|id| out.lines().any(|l| l == format!("{id} CACHED")))
}

/// BuildKit's testCopyWildcardCache and testWildcardRenameCache: a wildcard copy's key covers
/// the matched files' contents and names, and nothing else.
#[test]
fn wildcard_copy_keys_cover_matched_contents_and_names() {
    require_env();
    let ctx = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let p = ctx.path();
    fs::write(p.join("foo1"), "1").unwrap();
    fs::write(p.join("foo2"), "2").unwrap();
    fs::write(p.join("bar"), "b").unwrap();
    fs::write(
        p.join("Dockerfile"),
        "FROM busybox\nCOPY foo* /files/\nRUN cat /proc/sys/kernel/random/uuid > /unique\nCOPY bar /files/\n",
    )
    .unwrap();
    let unique = |tag: &str| {
        let (files, _) = image_fs(store.path(), tag);
        files["/unique"].data.clone()
    };
    rbuild(p, store.path(), &["build", "-t", "w1"]);
    fs::write(p.join("bar"), "b2").unwrap();
    rbuild(p, store.path(), &["build", "-t", "w2"]);
    assert_eq!(
        unique("w1"),
        unique("w2"),
        "changing bar keeps the RUN cached"
    );
    fs::write(p.join("foo2"), "22").unwrap();
    rbuild(p, store.path(), &["build", "-t", "w3"]);
    assert_ne!(
        unique("w2"),
        unique("w3"),
        "changing a wildcard match reruns"
    );
    // Renaming a match changes the key, so the RUN that needs the old name runs and fails.
    fs::write(
        p.join("Dockerfile"),
        "FROM busybox\nCOPY foo* /files/\nRUN ls /files/foo1\n",
    )
    .unwrap();
    rbuild(p, store.path(), &["build", "-t", "w4"]);
    fs::rename(p.join("foo1"), p.join("foo3")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .args(["build", "-t", "w5", "."])
        .env("RBUILD_ROOT", store.path())
        .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
        .env("RBUILD_PROGRESS", "plain")
        .current_dir(p)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the renamed match must not hit the cache:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// BuildKit v0.25 keys a RUN's bind mount from another stage by the content of the mounted
/// selection (`ExecOp.CacheMap`: content-based for read-only and `rw` mounts, whose changes
/// are never an output): changing a file of that stage outside `source` keeps the RUN and
/// the steps after it cached; changing a mounted file, or mounting the whole stage, reruns.
/// Checked on the v0.25.2 daemon (docker-modern): the two `source=/src/p` RUNs were CACHED,
/// the whole-stage mount and the step after it ran again.
#[test]
fn a_bind_mount_from_a_stage_is_keyed_by_the_mounted_content() {
    require_env();
    let ctx = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let p = ctx.path();
    fs::create_dir_all(p.join("p")).unwrap();
    fs::create_dir_all(p.join("other")).unwrap();
    fs::write(p.join("p/x"), "x1\n").unwrap();
    fs::write(p.join("other/y"), "y1\n").unwrap();
    let uuid = "cat /proc/sys/kernel/random/uuid";
    fs::write(
        p.join("Dockerfile"),
        format!(
            "FROM busybox AS a\nCOPY p /src/p\nCOPY other /src/other\n\
             FROM busybox\n\
             RUN --mount=type=bind,from=a,source=/src/p,target=/m cat /m/x > /ro; {uuid} > /u1\n\
             RUN --mount=type=bind,from=a,source=src/p/,target=/m,rw echo z > /m/z; {uuid} > /u2\n\
             RUN echo after > /after; {uuid} > /u3\n\
             RUN --mount=type=bind,from=a,target=/m cat /m/src/other/y > /whole; {uuid} > /u4\n"
        ),
    )
    .unwrap();
    let files = |tag: &str| image_fs(store.path(), tag).0;
    let data = |f: &BTreeMap<String, Entry>, p: &str| f[p].data.clone();
    rbuild(p, store.path(), &["build", "-t", "m1"]);
    fs::write(p.join("other/y"), "y2\n").unwrap();
    let out = rbuild(p, store.path(), &["build", "-t", "m2"]);
    let (m1, m2) = (files("m1"), files("m2"));
    for u in ["/u1", "/u2", "/u3"] {
        assert_eq!(
            data(&m1, u),
            data(&m2, u),
            "{u}: the stage changed outside the mounted source: reused\n{out}"
        );
    }
    // A result reused under its second key is reported CACHED, as BuildKit does.
    for step in ["cat /m/x > /ro", "echo z > /m/z", "echo after > /after"] {
        assert!(cached(&out, step), "{step} not CACHED:\n{out}");
    }
    assert_ne!(
        data(&m1, "/u4"),
        data(&m2, "/u4"),
        "the whole stage changed"
    );
    assert_eq!(data(&m2, "/whole"), b"y2\n");
    assert!(!m2.contains_key("/z") && !m2.contains_key("/m/z"));
    // Back to the first content: everything is a plain hit again.
    fs::write(p.join("other/y"), "y1\n").unwrap();
    let back = rbuild(p, store.path(), &["build", "-t", "m3"]);
    assert!(cached(&back, "cat /m/src/other/y"), "{back}");
    // A changed mounted file reruns the steps that mount it and what follows.
    fs::write(p.join("p/x"), "x2\n").unwrap();
    rbuild(p, store.path(), &["build", "-t", "m4"]);
    let m4 = files("m4");
    assert_eq!(data(&m4, "/ro"), b"x2\n");
    for u in ["/u1", "/u2", "/u3", "/u4"] {
        assert_ne!(data(&m1, u), data(&m4, u), "{u}: the mounted file changed");
    }
}

/// Attack: a mounted selection in a stage is a symlink to an absolute path that exists on
/// the host. The content key is computed inside the stage (the link resolved beneath its
/// root, as the mount is), never through the host path: changing the host file changes
/// nothing, and the host file is untouched.
#[test]
fn a_mounted_symlink_is_hashed_inside_the_stage_never_on_the_host() {
    require_env();
    let ctx = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let hp = host.path().to_str().unwrap().to_string();
    fs::write(host.path().join("x"), "host1\n").unwrap();
    let p = ctx.path();
    fs::write(p.join("y"), "y1\n").unwrap();
    fs::write(
        p.join("Dockerfile"),
        format!(
            "FROM busybox AS a\nRUN mkdir -p {hp} /src && echo stage > {hp}/x && ln -s {hp} /src/p\n\
             COPY y /y\n\
             FROM busybox\n\
             RUN --mount=type=bind,from=a,source=/src/p,target=/m cat /m/x > /seen; \
             cat /proc/sys/kernel/random/uuid > /u\n"
        ),
    )
    .unwrap();
    rbuild(p, store.path(), &["build", "-t", "s1"]);
    fs::write(host.path().join("x"), "host2\n").unwrap();
    fs::write(p.join("y"), "y2\n").unwrap();
    rbuild(p, store.path(), &["build", "-t", "s2"]);
    let (s1, s2) = (
        image_fs(store.path(), "s1").0,
        image_fs(store.path(), "s2").0,
    );
    assert_eq!(s1["/seen"].data, b"stage\n");
    assert_eq!(
        s1["/u"].data, s2["/u"].data,
        "the host file is not in the key"
    );
    assert_eq!(fs::read(host.path().join("x")).unwrap(), b"host2\n");
}

/// BuildKit v0.25 keys `COPY --from=stage` by the content of what it copies (`FileOp.CacheMap`:
/// a content hash per copy source), so a stage rebuilt with the same files under the copied
/// paths keeps the copy and later steps cached (checked on the v0.25.2 daemon: a plain, a
/// wildcard copy and the RUN after them were CACHED). A stage's files keep their owners when
/// copied, so an owner change reruns the copy.
#[test]
fn a_copy_from_a_stage_is_keyed_by_the_copied_content_and_owners() {
    require_env();
    let ctx = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let p = ctx.path();
    fs::create_dir_all(p.join("p")).unwrap();
    fs::write(p.join("p/x"), "x1\n").unwrap();
    fs::write(p.join("y"), "y1\n").unwrap();
    fs::write(
        p.join("Dockerfile"),
        "FROM busybox AS a\nARG OWN=0\nCOPY p /src/p\nRUN chown $OWN /src/p/x\nCOPY y /src/y\n\
         FROM busybox\nCOPY --from=a /src/p /x\nCOPY --from=a /src/p/* /star/\n\
         RUN cat /proc/sys/kernel/random/uuid > /u\n",
    )
    .unwrap();
    let u = |tag: &str| image_fs(store.path(), tag).0["/u"].data.clone();
    rbuild(p, store.path(), &["build", "-t", "k1"]);
    fs::write(p.join("y"), "y2\n").unwrap();
    let out = rbuild(p, store.path(), &["build", "-t", "k2"]);
    assert_eq!(u("k1"), u("k2"), "only an uncopied file changed:\n{out}");
    rbuild(
        p,
        store.path(),
        &["build", "-t", "k3", "--build-arg", "OWN=7"],
    );
    let (k3, _) = image_fs(store.path(), "k3");
    assert_eq!(k3["/x/x"].uid, 7);
    assert_ne!(u("k2"), u("k3"), "the copied file's owner changed");
    fs::write(p.join("p/x"), "x2\n").unwrap();
    rbuild(p, store.path(), &["build", "-t", "k4"]);
    let (k4, _) = image_fs(store.path(), "k4");
    assert_eq!(k4["/star/x"].data, b"x2\n");
    assert_ne!(u("k1"), u("k4"), "the copied file changed");
}
