//! Cache precision, explained misses, parallel scheduling and concurrent processes, through the
//! real CLI with real parts (the test registry on 127.0.0.1:5055 seeded by `.ci/setup.sh`, real
//! namespaces and overlayfs as root, skopeo/umoci for base-image changes). Each rule has a hit
//! and a miss; which steps ran is read from the plain progress output (`#N CACHED`), and why
//! from `--explain` (`#N EXPLAIN: …`). A missing prerequisite fails the test with the reason.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use common::progress::Build;
use common::{require_env, REGISTRY};

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

struct Project {
    dir: TempDir,
    store: TempDir,
}

impl Project {
    fn new(dockerfile: &str) -> Self {
        require_env();
        let p = Project {
            dir: tempfile::tempdir().unwrap(),
            store: tempfile::tempdir().unwrap(),
        };
        p.file("Dockerfile", dockerfile);
        p
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    fn file(&self, rel: &str, content: &str) -> &Self {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
        self
    }

    fn cmd(&self, store: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
        c.args(args)
            .arg(".")
            .env("RBUILD_ROOT", store)
            .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
            .env("RBUILD_PROGRESS", "plain")
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("RBUILD_GC_MAX_STORAGE")
            .current_dir(self.dir.path());
        c
    }

    /// `rbuild --explain ARGS… .`
    fn build(&self, args: &[&str]) -> Build {
        let mut a = vec!["build", "--explain"];
        a.extend_from_slice(args);
        Build::parse(self.cmd(self.store.path(), &a).output().unwrap())
    }
}

fn set_mtime(p: &Path, stamp: &str) {
    let st = Command::new("touch")
        .args(["-m", "-d", stamp])
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn mtime_only_change_hits_and_content_change_misses_naming_the_file() {
    let p = Project::new("FROM busybox\nCOPY a.txt /a.txt\nRUN cat /a.txt > /b\n");
    p.file("a.txt", "one\n");
    let b1 = p.build(&[]).ok();
    b1.assert_ran("COPY a.txt").assert_ran("RUN cat");
    assert!(
        b1.why("COPY a.txt").contains("no earlier build"),
        "{}",
        b1.why("COPY a.txt")
    );
    set_mtime(&p.path("a.txt"), "2001-01-01 00:00:00");
    let b2 = p.build(&[]).ok();
    b2.assert_cached("COPY a.txt").assert_cached("RUN cat");
    assert!(
        b2.why("COPY a.txt").starts_with("cache hit: from build b"),
        "{}",
        b2.why("COPY a.txt")
    );
    p.file("a.txt", "two\n");
    let b3 = p.build(&[]).ok();
    b3.assert_ran("COPY a.txt").assert_ran("RUN cat");
    assert_eq!(
        b3.why("COPY a.txt"),
        "context files changed: a.txt (changed)"
    );
    assert!(
        b3.why("RUN cat")
            .starts_with("earlier step changed: [2/3] COPY a.txt"),
        "{}",
        b3.why("RUN cat")
    );
}

#[test]
fn mode_change_misses() {
    let p = Project::new("FROM busybox\nCOPY a.sh /a.sh\n");
    p.file("a.sh", "echo hi\n");
    fs::set_permissions(p.path("a.sh"), fs::Permissions::from_mode(0o644)).unwrap();
    p.build(&[]).ok().assert_ran("COPY a.sh");
    p.build(&[]).ok().assert_cached("COPY a.sh");
    fs::set_permissions(p.path("a.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    let b = p.build(&[]).ok();
    b.assert_ran("COPY a.sh");
    assert_eq!(b.why("COPY a.sh"), "context files changed: a.sh (changed)");
}

#[test]
fn wildcard_rename_misses_and_non_matching_file_hits() {
    let p = Project::new("FROM busybox\nCOPY *.txt /d/\n");
    p.file("a.txt", "a").file("b.txt", "b");
    p.build(&[]).ok().assert_ran("COPY *.txt");
    p.file("other.md", "not matched");
    p.build(&[]).ok().assert_cached("COPY *.txt");
    fs::rename(p.path("b.txt"), p.path("c.txt")).unwrap();
    let b = p.build(&[]).ok();
    b.assert_ran("COPY *.txt");
    let why = b.why("COPY *.txt");
    assert!(
        why.contains("c.txt (added)") && why.contains("b.txt (removed)"),
        "{why}"
    );
}

#[test]
fn a_file_left_out_by_copy_exclude_does_not_change_the_key() {
    let p = Project::new(
        "FROM busybox\nCOPY --exclude=*.log --exclude=src/tmp.txt src /d/\nRUN ls -R /d > /list\n",
    );
    p.file("src/a.txt", "a")
        .file("src/debug.log", "1")
        .file("src/tmp.txt", "t")
        .file("src/sub/x.log", "x");
    p.build(&[]).ok().assert_ran("COPY --exclude");
    // Only excluded files change: the copy and what follows hit.
    p.file("src/debug.log", "2")
        .file("src/tmp.txt", "t2")
        .file("src/new.log", "n");
    p.build(&[])
        .ok()
        .assert_cached("COPY --exclude")
        .assert_cached("RUN ls");
    // A copied file changes: the copy runs again, naming it.
    p.file("src/a.txt", "a2");
    let b = p.build(&[]).ok();
    b.assert_ran("COPY --exclude");
    assert!(
        b.why("COPY --exclude").contains("src/a.txt"),
        "{}",
        b.why("COPY --exclude")
    );
}

#[test]
fn unrelated_file_change_hits_steps_that_do_not_read_it() {
    let p = Project::new(
        "FROM busybox\nCOPY a.txt /a\nRUN cat /a > /a2\nCOPY b.txt /b\nRUN cat /b > /b2\n",
    );
    p.file("a.txt", "a").file("b.txt", "b");
    p.build(&[]).ok();
    p.file("b.txt", "b changed");
    let b = p.build(&[]).ok();
    b.assert_cached("COPY a.txt")
        .assert_cached("RUN cat /a")
        .assert_ran("COPY b.txt")
        .assert_ran("RUN cat /b");
    assert_eq!(
        b.why("COPY b.txt"),
        "context files changed: b.txt (changed)"
    );
    // A file no step reads at all: everything hits.
    p.file("unused.bin", "x");
    let b = p.build(&[]).ok();
    for s in ["COPY a.txt", "RUN cat /a", "COPY b.txt", "RUN cat /b"] {
        b.assert_cached(s);
    }
}

#[test]
fn build_arg_change_misses_only_after_its_declaration() {
    let p = Project::new(
        "FROM busybox\nRUN echo before > /1\nARG V=1\nRUN echo $V > /v\nRUN echo after > /2\n",
    );
    p.build(&["--build-arg", "V=1"]).ok();
    p.build(&["--build-arg", "V=1"])
        .ok()
        .assert_cached("RUN echo before")
        .assert_cached("RUN echo $V");
    let b = p.build(&["--build-arg", "V=2"]).ok();
    b.assert_cached("RUN echo before")
        .assert_ran("RUN echo $V")
        .assert_ran("RUN echo after");
    assert_eq!(
        b.why("RUN echo $V"),
        r#"build arg/env changed: V="1" → V="2""#
    );
    // The later step sees V too, and its input (the step before) changed.
    assert_eq!(
        b.why("RUN echo after"),
        r#"build arg/env changed: V="1" → V="2"; earlier step changed: [3/4] RUN echo $V > /v"#
    );
}

#[test]
fn proxy_arg_change_hits() {
    let p = Project::new("FROM busybox\nRUN echo proxied > /p\n");
    p.build(&["--build-arg", "HTTP_PROXY=http://proxy-a:3128"])
        .ok()
        .assert_ran("RUN echo");
    p.build(&["--build-arg", "HTTP_PROXY=http://proxy-b:3128"])
        .ok()
        .assert_cached("RUN echo");
    // A non-proxy arg that the step sees does change the key.
    let p = Project::new("FROM busybox\nARG X\nRUN echo x > /p\n");
    p.build(&["--build-arg", "X=1"]).ok().assert_ran("RUN echo");
    p.build(&["--build-arg", "X=2"]).ok().assert_ran("RUN echo");
}

#[test]
fn cache_mount_contents_never_enter_the_key() {
    let p = Project::new(
        "FROM busybox\nARG N\nRUN --mount=type=cache,target=/c,id=shared echo $N >> /c/log && cp /c/log /log\n",
    );
    p.build(&["--build-arg", "N=1"]).ok().assert_ran("RUN");
    // Changes the cache mount's contents (a miss, because N is seen by the step) …
    p.build(&["--build-arg", "N=2"]).ok().assert_ran("RUN");
    // … which the first variant's key does not see: it hits.
    p.build(&["--build-arg", "N=1"]).ok().assert_cached("RUN");
}

#[test]
fn no_cache_filter_reruns_only_the_named_stage() {
    let p = Project::new(
        "FROM busybox AS one\nRUN echo one > /one\nFROM busybox AS two\nRUN echo two > /two\nFROM busybox\nCOPY --from=one /one /one\nCOPY --from=two /two /two\n",
    );
    p.build(&[]).ok();
    let b = p.build(&["--no-cache-filter", "two"]).ok();
    b.assert_cached("RUN echo one").assert_ran("RUN echo two");
    assert!(b.why("RUN echo two").contains("--no-cache-filter"));
    let b = p.build(&["--no-cache"]).ok();
    b.assert_ran("RUN echo one").assert_ran("RUN echo two");
}

fn skopeo(args: &[&str]) {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Push busybox with an extra label as `rbuildtest/<repo>:latest` (a new manifest digest).
fn push_variant(repo: &str, label: &str) {
    let t = tempfile::tempdir().unwrap();
    let layout = format!("{}/l", t.path().display());
    skopeo(&[
        "copy",
        "-q",
        "--src-tls-verify=false",
        &format!("docker://{REGISTRY}/library/busybox:latest"),
        &format!("oci:{layout}:latest"),
    ]);
    let st = Command::new("umoci")
        .args(["config", "--image", &format!("{layout}:latest")])
        .arg(format!("--config.label=variant={label}"))
        .status()
        .unwrap();
    assert!(st.success(), "umoci config failed");
    skopeo(&[
        "copy",
        "-q",
        "--dest-tls-verify=false",
        &format!("oci:{layout}:latest"),
        &format!("docker://{REGISTRY}/rbuildtest/{repo}:latest"),
    ]);
}

#[test]
fn base_image_digest_change_misses_with_pull_and_is_named() {
    let repo = format!("cache-base-{}", std::process::id());
    push_variant(&repo, "1");
    let p = Project::new(&format!("FROM rbuildtest/{repo}\nRUN echo on-base > /x\n"));
    p.build(&[]).ok().assert_ran("RUN echo");
    push_variant(&repo, "2");
    // Without --pull the store's memory of the tag is used: a hit.
    p.build(&[]).ok().assert_cached("RUN echo");
    let b = p.build(&["--pull"]).ok();
    b.assert_ran("RUN echo");
    let why = b.why("RUN echo");
    assert!(
        why.starts_with("base image changed: docker.io/rbuildtest/"),
        "{why}"
    );
    // And the re-resolved tag sticks: the next build hits.
    p.build(&[]).ok().assert_cached("RUN echo");
}

#[test]
fn independent_stages_run_in_parallel() {
    let p = Project::new(
        "FROM busybox AS a\nRUN sleep 1 && echo a > /a\nFROM busybox AS b\nRUN sleep 1 && echo b > /b\nFROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n",
    );
    let b = p.build(&["--max-parallelism", "4"]).ok();
    // Progress events are emitted in order: both steps start before either is done.
    let num = |what: &str| {
        b.lines
            .iter()
            .find(|l| l.contains(what) && l.contains("] RUN"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap()
            .to_string()
    };
    let (na, nb) = (num("[a 2/2]"), num("[b 2/2]"));
    let pos = |pat: &str| b.lines.iter().position(|l| l.starts_with(pat)).unwrap();
    let started = pos(&format!("{na} [a")).max(pos(&format!("{nb} [b")));
    let first_done = pos(&format!("{na} DONE")).min(pos(&format!("{nb} DONE")));
    assert!(
        started < first_done,
        "stages did not overlap:\n{}",
        b.lines.join("\n")
    );
}

#[test]
fn first_failure_fails_the_build_and_records_nothing_for_it() {
    let p = Project::new(
        "FROM busybox AS a\nRUN exit 3\nFROM busybox AS b\nRUN echo b > /b\nFROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n",
    );
    let out = p.cmd(p.store.path(), &["build"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exit code 3"), "{err}");
    // The failed step is not cached: it fails again.
    let out = p.cmd(p.store.path(), &["build"]).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn eight_concurrent_processes_share_one_store() {
    require_env();
    let store = tempfile::tempdir().unwrap();
    let projects: Vec<Project> = (0..8)
        .map(|i| {
            let p = Project::new(&format!(
                "FROM busybox\nRUN sleep 1 && echo shared > /s\nRUN echo {i} > /i\n"
            ));
            p.file("x", &i.to_string());
            p
        })
        .collect();
    let children: Vec<_> = projects
        .iter()
        .map(|p| {
            p.cmd(store.path(), &["build", "--explain"])
                .stderr(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let builds: Vec<Build> = children
        .into_iter()
        .map(|c| Build::parse(c.wait_with_output().unwrap()).ok())
        .collect();
    // The shared step was built by exactly one process; the others waited and reused it.
    let ran = builds.iter().filter(|b| b.ran("RUN sleep 1")).count();
    assert_eq!(ran, 1, "the shared step ran {ran} times");
    // Nothing was lost: every build is fully cached afterwards.
    for p in &projects {
        let out = p.cmd(store.path(), &["build"]).output().unwrap();
        let b = Build::parse(out).ok();
        b.assert_cached("RUN sleep 1").assert_cached("RUN echo");
    }
}

#[test]
fn sigterm_stops_running_steps_and_leaves_the_store_usable() {
    sigterm_case("builtin", "31.7");
}

#[test]
fn sigterm_stops_running_runc_steps_and_their_containers() {
    sigterm_case("runc", "31.3");
}

fn sigterm_case(runtime: &str, secs: &str) {
    let p = Project::new(&format!(
        "FROM busybox\nRUN echo start && sleep {secs} && echo never > /n\n"
    ));
    let mut child = p
        .cmd(p.store.path(), &["build", "--runtime", runtime])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the step runs (its first output line).
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if l.ends_with(" start") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("the step never started");
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    // The step's process died with rbuild.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let ps = Command::new("pgrep")
        .args(["-f", &format!("sleep {secs}")])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "{runtime}: sandboxed process still running: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
    // The store is usable and repaired: a build succeeds, nothing uncommitted remains.
    p.file("Dockerfile", "FROM busybox\nRUN echo after > /a\n");
    p.build(&["--runtime", runtime])
        .ok()
        .assert_ran("RUN echo after");
    for ent in fs::read_dir(p.store.path().join("snapshots-v1")).unwrap() {
        let dir = ent.unwrap().path();
        assert!(
            dir.join("committed").exists(),
            "{} left uncommitted",
            dir.display()
        );
    }
}

/// Snapshot directories of a store that lack the `committed` marker (partial layers).
fn uncommitted_snapshots(store: &Path) -> Vec<String> {
    fs::read_dir(store.join("snapshots-v1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| !d.join("committed").exists())
        .map(|d| d.display().to_string())
        .collect()
}

#[test]
fn first_failure_kills_the_containers_of_running_runc_steps() {
    let p = Project::new(
        "FROM busybox AS slow\nRUN echo start && sleep 28.9 && touch /done\nFROM busybox AS bad\nRUN sleep 1 && exit 3\nFROM busybox\nCOPY --from=slow /done /done\nCOPY --from=bad /etc/passwd /p\n",
    );
    let b = p.build(&["--max-parallelism", "4", "--runtime", "runc"]);
    assert!(!b.out.status.success());
    let text = b.lines.join("\n");
    assert!(text.contains("exit code 3"), "{text}");
    assert!(
        b.lines.iter().any(|l| l.ends_with(" CANCELED")),
        "the slow step was not cancelled:\n{text}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let ps = Command::new("pgrep")
        .args(["-f", "sleep 28.9"])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "the cancelled runc container still runs: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
}

#[test]
fn first_failure_cancels_running_steps_in_other_branches() {
    let slow = "RUN echo start && sleep 29.3 && touch /done";
    let df = |bad: &str| {
        format!(
            "FROM busybox AS slow\n{slow}\nFROM busybox AS bad\nRUN {bad}\nFROM busybox\nCOPY --from=slow /done /done\nCOPY --from=bad /etc/passwd /p\n"
        )
    };
    let p = Project::new(&df("sleep 1 && exit 3"));
    let b = p.build(&["--max-parallelism", "4"]);
    assert!(!b.out.status.success());
    let text = b.lines.join("\n");
    // The build's error is the failing step's, not the cancellation of the other one.
    let last = b.lines.iter().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        text.contains("exit code 3") && !text.contains("build cancelled"),
        "{text}"
    );
    assert!(!last.contains("cancel"), "{text}");
    // The sleeping step had started and was reported cancelled, never done.
    let n = b
        .lines
        .iter()
        .find(|l| l.contains("[slow 2/2] RUN"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("the slow step never started:\n{text}"))
        .to_string();
    assert!(
        b.lines
            .iter()
            .any(|l| l.starts_with(&format!("{n} ")) && l.ends_with(" start")),
        "the slow step was not running yet:\n{text}"
    );
    assert!(
        b.lines.contains(&format!("{n} CANCELED")),
        "the slow step was not cancelled:\n{text}"
    );
    assert!(!b.lines.contains(&format!("{n} DONE")), "{text}");
    // Its process was killed with the sandbox.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let ps = Command::new("pgrep")
        .args(["-f", "sleep 29.3"])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "cancelled step still running: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
    // No partial layer was committed (checked before any other rbuild repairs the store).
    let left = uncommitted_snapshots(p.store.path());
    assert!(left.is_empty(), "partial snapshots left: {left:?}");

    // With the failing step fixed, the cancelled step is not a cache hit: it runs again.
    p.file("Dockerfile", &df("true"));
    let mut child = p
        .cmd(p.store.path(), &["build", "--max-parallelism", "4"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = Vec::new();
        let mut slow_n: Option<String> = None;
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            seen.push(l.clone());
            if slow_n.is_none() && l.contains("[slow 2/2] RUN") {
                slow_n = l.split_whitespace().next().map(str::to_string);
            }
            let Some(n) = &slow_n else { continue };
            let ran = l.starts_with(&format!("{n} ")) && l.ends_with(" start");
            if ran || l == format!("{n} CACHED") {
                let _ = tx.send((ran, seen.join("\n")));
                return;
            }
        }
        let _ = tx.send((false, seen.join("\n")));
    });
    let (ran, seen) = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("no progress from the rebuild");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(ran, "the cancelled step was reused from the cache:\n{seen}");
}
