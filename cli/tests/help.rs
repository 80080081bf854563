//! `--help`, docs/cli.md, the man pages and behaviour agree: every flag `rbuild build --help`
//! lists is in docs/cli.md's flag table and the other way round; every flag
//! `cli/src/unsupported.rs` rejects says "rejected" in both, and is rejected by the binary
//! (exit 2, "not supported yet"); docs/rbuild.1 and docs/rbuild-build.1 are what `rbuild man`
//! prints (`UPDATE_GOLDEN=1` rewrites them); the usage line does not show `--root` as typed
//! when RBUILD_ROOT is set. No root or registry needed.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rbuild(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .args(args)
        .env(
            "RBUILD_ROOT",
            std::env::temp_dir().join("rbuild-help-test-store"),
        )
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Long flag → its help text, from `rbuild build --help` (clap's long help: the flag line,
/// then indented description lines).
fn help_flags() -> BTreeMap<String, String> {
    let help = stdout(&rbuild(&["build", "--help"]));
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        let flag = if indent <= 6 && t.starts_with('-') {
            t.split([',', ' ', '='])
                .map(|w| w.trim())
                .find(|w| w.starts_with("--"))
        } else {
            None
        };
        match flag {
            Some(f) => {
                flags.insert(f.to_string(), t.to_string());
                current = Some(f.to_string());
            }
            None if t.is_empty() => current = None,
            None => {
                if let Some(c) = &current {
                    if let Some(text) = flags.get_mut(c) {
                        text.push(' ');
                        text.push_str(t);
                    }
                }
            }
        }
    }
    flags.remove("--help");
    flags.remove("--root"); // global; documented above the table
    flags
}

/// Long flag → its table row, from docs/cli.md's "build: flags" table.
fn doc_flags() -> BTreeMap<String, String> {
    let doc = fs::read_to_string(repo().join("docs/cli.md")).unwrap();
    let table = doc
        .split("## build: flags")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("docs/cli.md has a build flags section");
    let mut flags = BTreeMap::new();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split(" | ").next().unwrap_or("");
        for word in first.split('`') {
            for w in word.split([',', ' ']) {
                if w.starts_with("--") {
                    flags.insert(w.to_string(), row.to_string());
                }
            }
        }
    }
    flags
}

/// The flags `unsupported.rs` rejects (as it names them in its messages).
fn rejected_flags() -> BTreeSet<String> {
    let src = fs::read_to_string(repo().join("cli/src/unsupported.rs")).unwrap();
    let mut out = BTreeSet::new();
    for part in src.split("not_yet(").skip(1) {
        let lit = part.trim_start_matches(['&', ' ', '\n']);
        let lit = lit
            .trim_start_matches("format!(")
            .trim_start_matches('\n')
            .trim_start();
        if let Some(rest) = lit.strip_prefix('"') {
            let flag: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if flag.starts_with("--") {
                out.insert(flag);
            }
        }
    }
    out
}

#[test]
fn help_and_docs_list_the_same_build_flags() {
    let help: BTreeSet<String> = help_flags().into_keys().collect();
    let doc: BTreeSet<String> = doc_flags().into_keys().collect();
    assert!(help.len() > 30, "{help:?}");
    let only_help: Vec<_> = help.difference(&doc).collect();
    let only_doc: Vec<_> = doc.difference(&help).collect();
    assert!(
        only_help.is_empty() && only_doc.is_empty(),
        "in --help but not docs/cli.md: {only_help:?}; in docs/cli.md but not --help: {only_doc:?}"
    );
}

#[test]
fn rejected_flags_say_so_in_help_docs_and_behaviour() {
    let rejected = rejected_flags();
    assert!(
        rejected.contains("--build-context"),
        "--build-context not found in unsupported.rs: {rejected:?}"
    );
    let help = help_flags();
    let doc = doc_flags();
    for f in &rejected {
        assert!(
            help[f].contains("rejected"),
            "--help of {f} does not say it is rejected: {}",
            help[f]
        );
        assert!(
            doc[f].contains("rejected"),
            "docs/cli.md row of {f} does not say it is rejected: {}",
            doc[f]
        );
    }
    // and the binary rejects them (before touching the store or the context)
    let ctx = tempfile::tempdir().unwrap();
    fs::write(ctx.path().join("Dockerfile"), "FROM scratch\n").unwrap();
    let dir = ctx.path().to_str().unwrap();
    let o = rbuild(&[
        "build",
        "--build-context",
        "x=https://example.com/r.git",
        dir,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("not supported yet"), "{err}");
    // cache services rbuild has no client for are refused the same way, pointing to the types
    // that work
    for (flag, spec) in [
        ("--cache-from", "type=gha"),
        ("--cache-to", "type=s3,bucket=b"),
    ] {
        let o = rbuild(&["build", flag, spec, dir]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flag} {spec}: {err}");
        assert!(
            err.contains(flag) && err.contains("type=registry") && err.contains("type=local"),
            "{flag} {spec}: {err}"
        );
    }
}

#[test]
fn output_help_names_every_exporter_that_works() {
    let help = help_flags();
    for t in ["oci", "docker", "tar", "local", "image", "registry"] {
        assert!(help["--output"].contains(t), "{}", help["--output"]);
    }
    assert!(
        !help["--build-context"].contains("|git URL"),
        "{}",
        help["--build-context"]
    );
    assert!(!help["--ssh"].contains("KEY[,KEY]"), "{}", help["--ssh"]);
}

#[test]
fn the_usage_line_does_not_show_root_when_rbuild_root_is_set() {
    let o = rbuild(&["build"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("Usage: rbuild build <CONTEXT>"), "{err}");
    assert!(!err.contains("--root"), "{err}");
}

#[test]
fn man_pages_are_current() {
    for (args, file) in [
        (vec!["man"], "docs/rbuild.1"),
        (vec!["man", "build"], "docs/rbuild-build.1"),
    ] {
        let o = rbuild(&args);
        assert!(o.status.success(), "{args:?}");
        let page = stdout(&o);
        assert!(
            page.contains(".TH rbuild") && page.contains(".SH OPTIONS"),
            "{page}"
        );
        let path = repo().join(file);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            fs::write(&path, &page).unwrap();
            continue;
        }
        let want = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{file}: {e} (UPDATE_GOLDEN=1 writes it)"));
        assert_eq!(
            page, want,
            "{file} is stale: UPDATE_GOLDEN=1 cargo test -p rbuild --test help"
        );
    }
    assert!(stdout(&rbuild(&["man", "build"])).contains("metadata\\-file"));
    assert_eq!(rbuild(&["man", "nope"]).status.code(), Some(2));
}
