//! Attacks on the build context and on stage rootfs paths: a context directory swapped for a
//! symlink to a host directory (renameat2 RENAME_EXCHANGE in a loop) while COPY and
//! `RUN --mount=type=bind` read it, and symlinks planted in a stage rootfs (absolute, `..`
//! climbing, `/proc` magic) used by `COPY --from` and `RUN --mount=type=bind,from=`.
//!
//! The host directory holds a canary file with a random token. After every build the image
//! tar, the local export and every file of the store are searched for the token: it must
//! never appear. Builds must succeed with context (or stage) content or fail cleanly (exit
//! 1 with a message), never crash. Each race test runs for a fixed time budget with a bounded
//! number of builds. Under CI=true the tests fail loudly when they cannot run (root, registry,
//! runc).
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A host directory outside every context with a canary file holding a random token.
struct Canary {
    dir: tempfile::TempDir,
    token: String,
}

impl Canary {
    fn new() -> Canary {
        let dir = tempfile::tempdir().unwrap();
        let mut seed = [0u8; 16];
        std::io::Read::read_exact(&mut fs::File::open("/dev/urandom").unwrap(), &mut seed).unwrap();
        let token = format!(
            "CANARY-{}",
            seed.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        fs::write(dir.path().join("secret"), format!("{token}\n")).unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/secret"), format!("{token}\n")).unwrap();
        Canary { dir, token }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Every regular file under `dir` (symlinks not followed) whose bytes contain `token`.
fn files_containing(dir: &Path, token: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    let needle = token.as_bytes();
    while let Some(d) = todo.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(md) = fs::symlink_metadata(&p) else {
                continue;
            };
            if md.is_dir() {
                todo.push(p);
            } else if md.is_file() {
                if let Ok(bytes) = fs::read(&p) {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        hits.push(p);
                    }
                }
            }
        }
    }
    hits
}

/// Swap `a` and `b` (a directory and a symlink) until stopped: `a` is the symlink for short
/// moments (a few µs to ~0.3 ms) and the directory for longer ones, so builds see both, and the
/// swap lands between a check and a use as often as possible.
fn swapper(a: PathBuf, b: PathBuf, stop: Arc<AtomicBool>, swaps: Arc<AtomicU64>) {
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        // Cheap varying pause (xorshift on the counter), longer while `a` is the directory.
        let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^= x >> 29;
        let pause = if n % 2 == 0 { x % 300 } else { x % 1500 };
        std::thread::sleep(Duration::from_micros(pause));
        // An error ends the swapping (the project is gone); the swap count is checked.
        if rustix::fs::renameat_with(
            rustix::fs::CWD,
            &a,
            rustix::fs::CWD,
            &b,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .is_err()
        {
            break;
        }
        swaps.fetch_add(1, Ordering::Relaxed);
    }
}

/// Outcome of one raced build.
#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    failed: usize,
}

/// Run builds of `p` with `args` while `d` and `l` (a symlink to the canary dir) in the
/// context are swapped, for `budget` or `max_builds` builds. Checks each build and the store.
fn race(p: &Project, canary: &Canary, env: &[(&str, &str)], budget: Duration, max: usize) -> Tally {
    let (d, l) = (p.path().join("d"), p.path().join("l"));
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let t = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        std::thread::spawn(move || swapper(d, l, stop, swaps))
    };
    let start = Instant::now();
    let mut tally = Tally::default();
    let out = p.path().join("out.tar");
    while start.elapsed() < budget && tally.ok + tally.failed < max {
        let _ = fs::remove_file(&out);
        let mut c = p.cmd(&["build", "--no-cache", "-o", "type=tar,dest=out.tar", "."]);
        c.envs(env.iter().copied());
        let r = Run {
            out: c.output().unwrap(),
        };
        match r.code() {
            Some(0) => {
                tally.ok += 1;
                let tar = fs::read(&out).expect("a successful build wrote its tar");
                assert!(
                    !tar.windows(canary.token.len())
                        .any(|w| w == canary.token.as_bytes()),
                    "the host canary is in the exported image"
                );
                // What was copied is the context's own content.
                let text = String::from_utf8_lossy(&tar);
                assert!(text.contains("context-content"), "{}", r.all());
            }
            Some(1) => {
                tally.failed += 1;
                if tally.failed <= 3 {
                    let err = r.stderr();
                    eprintln!("failed: {}", err.lines().last().unwrap_or(""));
                }
                assert!(r.stderr().contains("ERROR"), "unclear failure: {}", r.all());
            }
            other => panic!("build crashed ({other:?}):\n{}", r.all()),
        }
        assert!(
            !r.all().contains(&canary.token),
            "the canary reached rbuild's output:\n{}",
            r.all()
        );
    }
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
    // Put the context back the right way round.
    if fs::symlink_metadata(p.path().join("d"))
        .unwrap()
        .file_type()
        .is_symlink()
    {
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            p.path().join("d"),
            rustix::fs::CWD,
            p.path().join("l"),
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .unwrap();
    }
    let hits = files_containing(p.store.path(), &canary.token);
    assert!(hits.is_empty(), "the host canary is in the store: {hits:?}");
    assert!(
        swaps.load(Ordering::Relaxed) > 100,
        "the swapper barely ran"
    );
    assert!(
        tally.ok + tally.failed >= 3,
        "too few builds ran: {tally:?}"
    );
    eprintln!(
        "{tally:?} with {} swaps in {:?}",
        swaps.load(Ordering::Relaxed),
        start.elapsed()
    );
    tally
}

/// A context with `d/` (context content) and `l` → the canary directory (absolute link).
fn raced_project(dockerfile: &str, canary: &Canary) -> Project {
    let p = Project::new(dockerfile);
    p.file("d/secret", "context-content\n");
    p.file("d/sub/secret", "context-content\n");
    std::os::unix::fs::symlink(canary.path(), p.path().join("l")).unwrap();
    p
}

const COPY_DOCKERFILE: &str = "FROM busybox\n\
    COPY d /copied\n\
    COPY d/sub/secret /one\n\
    COPY . /all\n";

const BIND_DOCKERFILE: &str = "FROM busybox\n\
    RUN --mount=type=bind,source=d,target=/m cat /m/secret /m/sub/secret > /bound\n\
    RUN --mount=type=bind,source=d/sub,target=/m,rw cat /m/secret > /bound-rw; echo x > /m/w\n\
    RUN --mount=type=bind,source=d/secret,target=/f cat /f > /bound-file\n";

#[test]
fn copy_from_a_context_swapped_with_a_host_symlink_never_copies_host_files() {
    let canary = Canary::new();
    let p = raced_project(COPY_DOCKERFILE, &canary);
    race(&p, &canary, &[], Duration::from_secs(12), 40);
}

#[test]
fn bind_mounts_of_a_context_swapped_with_a_host_symlink_never_expose_host_files() {
    let canary = Canary::new();
    let p = raced_project(BIND_DOCKERFILE, &canary);
    race(&p, &canary, &[], Duration::from_secs(12), 30);
}

#[test]
fn runc_bind_mounts_of_a_swapped_context_never_expose_host_files() {
    require_tools(&["runc"]);
    let canary = Canary::new();
    let p = raced_project(BIND_DOCKERFILE, &canary);
    let mut c = p.cmd(&["build", "--no-cache", "."]);
    c.env("RBUILD_RUNTIME", "runc");
    // One build outside the race proves the runtime works here.
    let first = c.output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    race(
        &p,
        &canary,
        &[("RBUILD_RUNTIME", "runc")],
        Duration::from_secs(8),
        20,
    );
}

/// Symlinks planted in a stage's rootfs that point at the canary's host path: absolute, by
/// `..` climbing, and through `/proc` magic links. The stage has its own file at the same
/// path, so a correct build copies the stage's content and a host-resolving one leaks.
#[test]
fn stage_rootfs_symlinks_resolve_inside_the_stage() {
    let canary = Canary::new();
    let host = canary.path().to_string_lossy().into_owned();
    let up = "../".repeat(12);
    let stage = format!(
        "FROM busybox AS s\n\
         RUN mkdir -p {host} /data && echo stage-content > {host}/secret \
         && ln -s {host} /data/abs && ln -s {up}{host} /data/rel \
         && ln -s /proc/self/root{host} /data/magic \
         && ln -s /proc/1/root{host}/secret /data/magic-file\n"
    );
    let cases: &[(&str, bool)] = &[
        ("COPY --from=s /data/abs/secret /got\n", true),
        ("COPY --from=s /data/rel/secret /got\n", true),
        ("COPY --from=s /data/abs /got\n", true),
        ("COPY --from=s /data/magic/secret /got\n", false),
        ("COPY --from=s /data/magic-file /got\n", false),
        (
            "RUN --mount=type=bind,from=s,source=/data/abs,target=/m cat /m/secret > /got\n",
            true,
        ),
        (
            "RUN --mount=type=bind,from=s,source=/data/rel/secret,target=/m cat /m > /got\n",
            true,
        ),
        (
            "RUN --mount=type=bind,from=s,source=/data/magic,target=/m cat /m/secret > /got\n",
            false,
        ),
    ];
    for (i, (line, should_work)) in cases.iter().enumerate() {
        let df = format!("{stage}FROM busybox\n{line}");
        let p = Project::new(&df);
        let r = p.build(&["-o", "type=local,dest=out"]);
        let all = r.all();
        assert!(!all.contains(&canary.token), "case {i} leaked: {all}");
        let hits = files_containing(p.path(), &canary.token);
        assert!(hits.is_empty(), "case {i} ({line}) leaked into {hits:?}");
        let hits = files_containing(p.store.path(), &canary.token);
        assert!(hits.is_empty(), "case {i} ({line}) leaked into {hits:?}");
        if *should_work {
            assert_eq!(r.code(), Some(0), "case {i} ({line}): {all}");
            let got = p.path().join("out/got");
            let text = if got.is_dir() {
                fs::read_to_string(got.join("secret")).unwrap()
            } else {
                fs::read_to_string(&got).unwrap()
            };
            assert_eq!(text, "stage-content\n", "case {i} ({line})");
        } else {
            assert_eq!(
                r.code(),
                Some(1),
                "case {i} ({line}) must fail cleanly: {all}"
            );
            assert!(all.contains("ERROR"), "case {i}: {all}");
        }
    }
}
