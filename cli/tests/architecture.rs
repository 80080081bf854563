//! Enforces the crate dependency rule from ARCHITECTURE.md by reading `cargo metadata`:
//! graph → platform; frontend → graph; cache, executor → fsroot; oci → cache, fsroot,
//! platform; solver → graph, cache, executor, oci, fsroot; cli → all. platform and fsroot
//! depend on no workspace crate.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

#[test]
fn workspace_dependency_rule_holds() {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let names: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("rbuild-platform", &[][..]),
        ("rbuild-graph", &["rbuild-platform"][..]),
        ("rbuild-fsroot", &[][..]),
        ("rbuild-frontend", &["rbuild-graph"][..]),
        ("rbuild-cache", &["rbuild-fsroot"][..]),
        ("rbuild-executor", &["rbuild-fsroot"][..]),
        (
            "rbuild-oci",
            &["rbuild-cache", "rbuild-fsroot", "rbuild-platform"][..],
        ),
        (
            "rbuild-solver",
            &[
                "rbuild-graph",
                "rbuild-cache",
                "rbuild-executor",
                "rbuild-oci",
                "rbuild-fsroot",
            ][..],
        ),
        (
            "rbuild",
            &[
                "rbuild-frontend",
                "rbuild-graph",
                "rbuild-solver",
                "rbuild-executor",
                "rbuild-cache",
                "rbuild-oci",
                "rbuild-fsroot",
                "rbuild-platform",
            ][..],
        ),
    ]);
    assert_eq!(
        names,
        allowed
            .keys()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>(),
        "workspace members changed: update the rule here and in ARCHITECTURE.md"
    );
    let mut violations = Vec::new();
    for p in packages {
        let name = p["name"].as_str().unwrap();
        for d in p["dependencies"].as_array().unwrap() {
            let dep = d["name"].as_str().unwrap();
            // dev-dependencies are allowed to reach anywhere (tests only)
            if d["kind"].as_str() == Some("dev") {
                continue;
            }
            if names.contains(dep) && !allowed[name].contains(&dep) {
                violations.push(format!("{name} -> {dep}"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "forbidden crate edges: {violations:?}"
    );
}

#[test]
fn serde_json_preserve_order_is_never_enabled() {
    // Canonical JSON (and so every digest) relies on serde_json's sorted BTreeMap objects.
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-e",
            "features",
            "-i",
            "serde_json",
            "--workspace",
            "--offline",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("serde_json"),
        "unexpected cargo tree output: {text}"
    );
    assert!(
        !text.contains("preserve_order"),
        "serde_json/preserve_order is enabled:\n{text}"
    );
}

#[test]
fn every_module_has_a_doc_header_and_unsafe_stays_in_the_executor_sys_module() {
    let top = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut missing = Vec::new();
    let mut unsafe_outside = Vec::new();
    for krate in [
        "frontend", "graph", "solver", "executor", "cache", "oci", "fsroot", "platform", "cli",
    ] {
        for entry in walk(&format!("{top}/{krate}/src")) {
            let text = std::fs::read_to_string(&entry).unwrap();
            if !text.trim_start().starts_with("//!") {
                missing.push(entry.clone());
            }
            let code_has_unsafe = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .any(|l| {
                    [
                        "unsafe {",
                        "unsafe{",
                        "unsafe fn",
                        "unsafe impl",
                        "unsafe extern",
                        "unsafe trait",
                    ]
                    .iter()
                    .any(|pat| l.contains(pat))
                });
            if code_has_unsafe && !entry.ends_with("executor/src/sys.rs") {
                unsafe_outside.push(entry);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "modules without a //! header: {missing:?}"
    );
    assert!(
        unsafe_outside.is_empty(),
        "unsafe outside executor/src/sys.rs: {unsafe_outside:?}"
    );
}

/// The scheduler knows nothing of what an op does, and only the executor seam reaches the
/// sandbox (ARCHITECTURE.md, invariants).
#[test]
fn the_scheduler_knows_no_op_and_only_the_seam_runs_processes() {
    let top = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let code = |path: &str| -> String {
        std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {path}: {e}"))
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let sched = code(&format!("{top}/solver/src/sched.rs"));
    for word in [
        "Op::",
        "SourceOp",
        "ExecOp",
        "FileOp",
        "FileAction",
        "rbuild_executor",
        "rbuild_oci",
    ] {
        assert!(
            !sched.contains(word),
            "solver/src/sched.rs mentions {word}: the scheduler must not know what an op does"
        );
    }
    for entry in walk(&format!("{top}/solver/src")) {
        if entry.ends_with("solver/src/executor.rs") || entry.ends_with("solver/src/tests.rs") {
            continue;
        }
        let text = code(&entry).replace("rbuild_executor::ExecutorError", "");
        assert!(
            !text.contains("run_cancellable") && !text.contains("rbuild_executor::Executor"),
            "{entry} runs a process itself: go through the StepExecutor seam"
        );
    }
}

fn walk(dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {dir}: {e}"));
    for e in rd {
        let p = e.unwrap_or_else(|e| panic!("reading {dir}: {e}")).path();
        if p.is_dir() {
            out.extend(walk(&p.to_string_lossy()));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p.to_string_lossy().to_string());
        }
    }
    out
}
