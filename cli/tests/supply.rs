//! Supply chain: reproducible-by-default builds (the git commit time as the source date epoch),
//! through the real CLI and the test registry.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

fn git(dir: &Path, args: &[&str], date: &str) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env("GIT_AUTHOR_DATE", date)
        .env("GIT_COMMITTER_DATE", date)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rbuild build --metadata-file` of `context` with its own store; returns the metadata.
fn build_in(context: &Path, store: &Path, extra: &[&str]) -> Value {
    let meta = context.parent().unwrap().join("meta.json");
    let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
    c.arg("build")
        .args(extra)
        .arg("--metadata-file")
        .arg(&meta)
        .arg(context)
        .env("RBUILD_ROOT", store)
        .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
        .env("RBUILD_PROGRESS", "plain")
        .env_remove("RBUILD_RUNTIME")
        .env_remove("SOURCE_DATE_EPOCH");
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "build of {}: {}",
        context.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&fs::read(&meta).unwrap()).unwrap()
}

const DOCKERFILE: &str =
    "FROM busybox\nCOPY a.txt /a.txt\nRUN echo x > /x && mkdir -p /made\nWORKDIR /w\n";

#[test]
fn two_clones_two_stores_give_the_same_digest_without_flags() {
    require_env();
    require_tools(&["git", "touch"]);
    let root = tempfile::tempdir().unwrap();
    let origin = root.path().join("origin");
    fs::create_dir(&origin).unwrap();
    fs::write(origin.join("Dockerfile"), DOCKERFILE).unwrap();
    fs::write(origin.join("a.txt"), "same\n").unwrap();
    git(&origin, &["init", "-q"], "@1700000000 +0000");
    git(&origin, &["add", "."], "@1700000000 +0000");
    git(&origin, &["commit", "-q", "-m", "one"], "@1700000000 +0000");

    // two clones at different paths, each built in its own store, at different times and with
    // different file mtimes
    let one = root.path().join("x/one");
    let two = root.path().join("y/z/two");
    for c in [&one, &two] {
        fs::create_dir_all(c.parent().unwrap()).unwrap();
        let status = Command::new("git")
            .args(["clone", "-q"])
            .arg(&origin)
            .arg(c)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let s1 = tempfile::tempdir().unwrap();
    let s2 = tempfile::tempdir().unwrap();
    let m1 = build_in(&one, s1.path(), &["-t", "rep:1"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let status = Command::new("touch")
        .args(["-d", "@1750000000"])
        .arg(two.join("a.txt"))
        .status()
        .unwrap();
    assert!(status.success());
    let m2 = build_in(&two, s2.path(), &[]);
    let d1 = m1["containerimage.digest"].as_str().unwrap();
    let d2 = m2["containerimage.digest"].as_str().unwrap();
    eprintln!("clone one: {d1}\nclone two: {d2}");
    assert_eq!(d1, d2, "same commit, two clones, two stores: same digest");
    assert_eq!(
        m1["rbuild.source-date-epoch"],
        serde_json::json!({"value": 1_700_000_000, "source": "git-commit"})
    );
    // the config's created is the commit time
    let out = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .args(["inspect", "rep:1"])
        .env("RBUILD_ROOT", s1.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2023-11-14T22:13:20Z"),
        "created is the commit time: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // one context file changed and committed: another digest
    fs::write(two.join("a.txt"), "changed\n").unwrap();
    git(&two, &["commit", "-q", "-am", "two"], "@1700001000 +0000");
    let m3 = build_in(&two, s2.path(), &[]);
    let d3 = m3["containerimage.digest"].as_str().unwrap();
    eprintln!("changed: {d3}");
    assert_ne!(d1, d3);
    assert_eq!(m3["rbuild.source-date-epoch"]["value"], 1_700_001_000);

    // SOURCE_DATE_EPOCH still wins; outside a work tree there is no epoch (build time)
    let m4 = build_in(&two, s2.path(), &["--build-arg", "SOURCE_DATE_EPOCH=5"]);
    assert_eq!(
        m4["rbuild.source-date-epoch"],
        serde_json::json!({"value": 5, "source": "build-arg:SOURCE_DATE_EPOCH"})
    );
    let plain = root.path().join("plain/ctx");
    fs::create_dir_all(&plain).unwrap();
    fs::write(plain.join("Dockerfile"), DOCKERFILE).unwrap();
    fs::write(plain.join("a.txt"), "same\n").unwrap();
    let m5 = build_in(&plain, s2.path(), &[]);
    assert_eq!(
        m5["rbuild.source-date-epoch"],
        serde_json::json!({"value": null, "source": "none"})
    );

    // a git URL context: the commit checked out gives the epoch
    let url = format!("file://{}/.git", origin.display());
    let m6 = build_in_url(&url, s2.path(), root.path());
    assert_eq!(
        m6["rbuild.source-date-epoch"],
        serde_json::json!({"value": 1_700_000_000, "source": "git-commit"})
    );
}

fn build_in_url(url: &str, store: &Path, work: &Path) -> Value {
    let meta = work.join("url-meta.json");
    let out = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .args(["build", "--metadata-file"])
        .arg(&meta)
        .arg(url)
        .env("RBUILD_ROOT", store)
        .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
        .env("RBUILD_PROGRESS", "plain")
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&fs::read(&meta).unwrap()).unwrap()
}
