//! `--build-context NAME=VALUE` through the real CLI: `docker-image://` replacing a `FROM`
//! image, a second local directory read by `COPY --from`, `RUN --mount=from=` and `FROM`, its
//! content in the cache key (a rebuild hits, a changed file misses), and the value kinds that
//! are rejected.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use common::Project;

#[test]
fn a_docker_image_context_replaces_the_from_image() {
    // The test registry has no alpine: the build only works through the named context.
    let p = Project::new(
        "FROM alpine\nRUN busybox | head -n 1\nCOPY --from=alpine /bin/busybox /copied\n",
    );
    let r = p.build(&[]).fails();
    assert!(r.stderr().contains("alpine"), "{}", r.stderr());
    let build = || {
        p.build(&["--build-context", "alpine=docker-image://busybox"])
            .ok()
    };
    let r = build();
    assert!(r.stderr().contains("BusyBox v"), "{}", r.stderr());
    let r = build();
    assert_eq!(r.cached(), 3, "{}", r.stderr());
}

#[test]
fn a_context_named_like_a_stage_replaces_the_stage() {
    let p = Project::new(
        "FROM busybox AS base\nRUN echo built > /s\nFROM base\nRUN cat /s 2>/dev/null || echo NO-S-\"\"FILE\n",
    );
    let r = p.build(&[]).ok();
    assert!(r.stderr().contains(" built\n"), "{}", r.stderr());
    let r = p
        .build(&["--build-context", "base=docker-image://busybox"])
        .ok();
    assert!(r.stderr().contains(" NO-S-FILE\n"), "{}", r.stderr());
}

#[test]
fn a_local_directory_context_feeds_copy_run_mounts_and_from() {
    let p = Project::new(
        "FROM extra AS files\n\
         FROM busybox\n\
         COPY --from=extra /f /f\n\
         COPY --from=files /sub/g /g\n\
         RUN --mount=from=extra,target=/x cat /f /g /x/f\n",
    );
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("f"), "from other\n").unwrap();
    std::fs::create_dir(other.path().join("sub")).unwrap();
    std::fs::write(other.path().join("sub/g"), "g1\n").unwrap();
    let ctx = format!("extra={}", other.path().display());
    let r = p.build(&["--build-context", &ctx]).ok();
    let out = r.stderr();
    assert_eq!(out.matches(" from other\n").count(), 2, "{out}");
    assert!(out.contains(" g1\n"), "{out}");
    // Nothing changed: every step is a cache hit.
    let r = p.build(&["--build-context", &ctx]).ok();
    assert!(!r.stderr().contains(" from other\n"), "{}", r.stderr());
    // A changed file in the other directory misses the steps that read it.
    std::fs::write(other.path().join("f"), "changed\n").unwrap();
    let r = p.build(&["--build-context", &ctx]).ok();
    assert_eq!(
        r.stderr().matches(" changed\n").count(),
        2,
        "{}",
        r.stderr()
    );
    // A relative path is relative to the working directory, as in buildx.
    let rel = p.path().join("rel");
    std::fs::create_dir(&rel).unwrap();
    std::fs::write(rel.join("f"), "relative\n").unwrap();
    std::fs::create_dir(rel.join("sub")).unwrap();
    std::fs::write(rel.join("sub/g"), "g2\n").unwrap();
    let r = p.build(&["--build-context", "extra=./rel"]).ok();
    assert!(r.stderr().contains(" relative\n"), "{}", r.stderr());
}

#[test]
fn bad_build_context_values_are_usage_errors_naming_the_flag() {
    let p = Project::new("FROM busybox\n");
    for (value, msg) in [
        ("extra=./missing", "--build-context extra=./missing"),
        ("context=.", "reserved"),
        ("x=https://example.com/repo.git", "is not supported yet"),
        ("x=docker-image://", "needs an image reference"),
    ] {
        let r = p.build(&["--build-context", value]).fails();
        assert_eq!(r.code(), Some(2), "{value}: {}", r.stderr());
        assert!(r.stderr().contains(msg), "{value}: {}", r.stderr());
    }
}
