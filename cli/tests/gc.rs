//! `rbuild du`, `rbuild prune` and the automatic GC through the real CLI (test registry on
//! 127.0.0.1:5055 from `.ci/setup.sh`, root for namespaces/overlayfs, umoci as an independent
//! reader). The invariant under test: GC never deletes what a tagged image or a running build
//! needs, and removes what it says it removes.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use tempfile::TempDir;

const REGISTRY: &str = "127.0.0.1:5055";

struct Env {
    store: TempDir,
}

struct Proj {
    dir: TempDir,
}

impl Proj {
    fn new(dockerfile: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
        Proj { dir }
    }
}

fn out_text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

impl Env {
    fn new() -> Self {
        assert!(
            std::net::TcpStream::connect(REGISTRY).is_ok(),
            "the test registry on {REGISTRY} is not running: run `bash .ci/setup.sh` first"
        );
        Env {
            store: tempfile::tempdir().unwrap(),
        }
    }

    fn cmd(&self, dir: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
        c.args(args)
            .env("RBUILD_ROOT", self.store.path())
            .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
            .env("RBUILD_PROGRESS", "plain")
            .env_remove("RBUILD_GC_MAX_STORAGE")
            .env("RBUILD_CONFIG", "/nonexistent")
            .current_dir(dir);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let o = self.cmd(self.store.path(), args).output().unwrap();
        assert!(
            o.status.success(),
            "rbuild {args:?} failed: {}",
            out_text(&o)
        );
        o
    }

    /// Build `p`; returns stderr.
    fn build(&self, p: &Proj, args: &[&str]) -> String {
        let mut a = vec!["build"];
        a.extend_from_slice(args);
        a.push(".");
        let o = self.cmd(p.dir.path(), &a).output().unwrap();
        assert!(o.status.success(), "build failed: {}", out_text(&o));
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// `rbuild du` as part → (entries, total bytes line).
    fn du(&self) -> (std::collections::BTreeMap<String, u64>, u64) {
        let o = self.run(&["du"]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let mut parts = std::collections::BTreeMap::new();
        let mut total = 0;
        for l in text.lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            if let Some(t) = l.strip_prefix("total bytes: ") {
                total = t.trim().parse().unwrap();
            } else if w.len() == 3 && w[0] != "PART" {
                parts.insert(w[0].to_string(), w[1].parse().unwrap());
            }
        }
        (parts, total)
    }

    /// The content of `path` in tagged image `name`, unpacked by umoci from the store.
    fn read_from_image(&self, name: &str, path: &str) -> String {
        let t = tempfile::tempdir().unwrap();
        let bundle = t.path().join("b");
        let o = Command::new("umoci")
            .args([
                "unpack",
                "--image",
                &format!(
                    "{}/layout-v1:docker.io/library/{name}",
                    self.store.path().display()
                ),
            ])
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(o.status.success(), "umoci unpack failed: {}", out_text(&o));
        fs::read_to_string(bundle.join("rootfs").join(path)).unwrap()
    }
}

fn ran(stderr: &str, what: &str) -> bool {
    let n = stderr
        .lines()
        .find(|l| l.contains(what) && l.contains(" ["))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no step {what:?} in:\n{stderr}"))
        .to_string();
    !stderr.lines().any(|l| l == format!("{n} CACHED"))
}

fn count_files(dir: &Path) -> u64 {
    fs::read_dir(dir).map(|r| r.count() as u64).unwrap_or(0)
}

#[test]
fn du_counts_what_is_on_disk() {
    let e = Env::new();
    let p = Proj::new("FROM busybox\nRUN head -c 3000000 /dev/urandom > /r\n");
    e.build(&p, &["-t", "du:1"]);
    let (parts, total) = e.du();
    let root = e.store.path();
    assert_eq!(parts["blobs"], count_files(&root.join("blobs-v1/sha256")));
    assert_eq!(parts["snapshots"], count_files(&root.join("snapshots-v1")));
    assert!(parts["index"] >= 2, "{parts:?}");
    // The 3 MB layer is there twice (snapshot and tar blob).
    assert!(total > 6_000_000, "total {total}");
    let out = Command::new("du")
        .args(["-s", "-B1"])
        .arg(root.join("blobs-v1/sha256"))
        .arg(root.join("snapshots-v1"))
        .output()
        .unwrap();
    let sum: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    // Within the two directory inodes and the database of what `du` says.
    assert!(
        total + 16384 >= sum && total <= sum + 4 * 1024 * 1024,
        "rbuild du {total} vs du {sum}"
    );
}

#[test]
fn prune_all_keeps_tagged_images_and_removes_the_rest() {
    let e = Env::new();
    let tagged = Proj::new("FROM busybox\nRUN echo kept > /k\n");
    let other = Proj::new("FROM busybox\nRUN echo other > /o\n");
    e.build(&tagged, &["-t", "keep:1"]);
    e.build(&other, &[]);
    assert!(!ran(&e.build(&other, &[]), "RUN echo other"));
    e.run(&["prune", "--all"]);
    let (parts, _) = e.du();
    assert_eq!(parts["index"], 0, "{parts:?}");
    assert_eq!(parts["snapshots"], 0, "{parts:?}");
    // The tagged image is intact (all its blobs are there) …
    assert_eq!(e.read_from_image("keep:1", "k"), "kept\n");
    // … and the removed cache really is gone: the other build runs again.
    assert!(ran(&e.build(&other, &[]), "RUN echo other"));
}

#[test]
fn prune_waits_for_a_running_build() {
    let e = Env::new();
    let p = Proj::new("FROM busybox\nRUN sleep 2 && echo done > /d\n");
    let build = e
        .cmd(p.dir.path(), &["build", "-t", "running:1", "."])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let prune = e.cmd(e.store.path(), &["prune", "--all"]).output().unwrap();
    let b = build.wait_with_output().unwrap();
    assert!(b.status.success(), "build failed: {}", out_text(&b));
    assert!(prune.status.success(), "prune failed: {}", out_text(&prune));
    // The build's image survived the prune that ran right after it.
    assert_eq!(e.read_from_image("running:1", "d"), "done\n");
}

#[test]
fn keep_storage_removes_least_recently_used_first() {
    let e = Env::new();
    let old = Proj::new("FROM busybox\nRUN head -c 4000000 /dev/urandom > /old\n");
    let new = Proj::new("FROM busybox\nRUN head -c 4000000 /dev/urandom > /new\n");
    e.build(&old, &[]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    e.build(&new, &[]);
    let (_, total) = e.du();
    // Room for everything but one of the two 8 MB (snapshot + blob) steps.
    let keep = total - 6_000_000;
    e.run(&["prune", "--keep-storage", &keep.to_string()]);
    let (_, after) = e.du();
    assert!(after <= keep, "after {after} > keep {keep}");
    assert!(
        !ran(&e.build(&new, &[]), "RUN head"),
        "the newer step was pruned"
    );
    assert!(
        ran(&e.build(&old, &[]), "RUN head"),
        "the older step was kept"
    );
    // A ceiling, not a floor: a big limit removes nothing.
    e.run(&["prune", "--keep-storage", "100GB"]);
    assert!(!ran(&e.build(&new, &[]), "RUN head"));
    assert!(!ran(&e.build(&old, &[]), "RUN head"));
}

#[test]
fn filter_until_removes_only_old_entries() {
    let e = Env::new();
    let p = Proj::new("FROM busybox\nRUN echo x > /x\n");
    e.build(&p, &[]);
    e.run(&["prune", "--filter", "until=1h"]);
    assert!(!ran(&e.build(&p, &[]), "RUN echo"));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    e.run(&["prune", "--filter", "until=1s"]);
    assert!(ran(&e.build(&p, &[]), "RUN echo"));
}

#[test]
fn automatic_gc_is_a_ceiling_and_spares_tagged_images() {
    let e = Env::new();
    let p = Proj::new("FROM busybox\nRUN echo auto > /a\n");
    e.build(&p, &["-t", "auto:1"]);
    // Far above the store's size: nothing is removed.
    let mut c = e.cmd(p.dir.path(), &["build", "."]);
    c.env("RBUILD_GC_MAX_STORAGE", "50GB");
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", out_text(&o));
    assert!(!ran(&String::from_utf8_lossy(&o.stderr), "RUN echo"));
    // A tiny ceiling: the cache goes, the tagged image stays.
    let mut c = e.cmd(p.dir.path(), &["build", "-t", "auto:1", "."]);
    c.env("RBUILD_GC_MAX_STORAGE", "1");
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", out_text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("automatic GC: removed"));
    let (parts, _) = e.du();
    assert_eq!(parts["index"], 0, "{parts:?}");
    assert_eq!(e.read_from_image("auto:1", "a"), "auto\n");
}
