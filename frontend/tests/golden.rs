//! Data-driven golden tests over `testdata/frontend/{parse,lower,errors}/<case>/`.
//! Set `UPDATE_GOLDEN=1` to rewrite the `expected.txt` files (then review the diff).
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{opts_from, FakeResolver};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/frontend")
}

fn cases(kind: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(root().join(kind))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Dockerfile").exists())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no {kind} cases found");
    v
}

fn check(dir: &Path, actual: &str, failures: &mut Vec<String>) {
    let exp_path = dir.join("expected.txt");
    if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        fs::write(&exp_path, actual).unwrap();
        return;
    }
    let expected = fs::read_to_string(&exp_path).unwrap_or_default();
    if expected != actual {
        failures.push(format!(
            "{}: output differs\n--- expected\n{expected}\n--- actual\n{actual}",
            dir.display()
        ));
    }
}

fn finish(failures: Vec<String>) {
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn parse_golden() {
    let mut failures = Vec::new();
    for dir in cases("parse") {
        let text = fs::read_to_string(dir.join("Dockerfile")).unwrap();
        let ast = rbuild_frontend::parser::parse(&text);
        check(&dir, &ast.dump(), &mut failures);
    }
    finish(failures);
}

fn lower_dump(dir: &Path) -> String {
    let text = fs::read_to_string(dir.join("Dockerfile")).unwrap();
    let args = fs::read_to_string(dir.join("args.txt")).unwrap_or_default();
    let opts = opts_from(&args);
    let plan = match rbuild_frontend::build(&text, &opts, &FakeResolver) {
        Ok(p) => p,
        Err(e) => return format!("ERROR: {e}\n"),
    };
    let mut out = String::new();
    out.push_str(&format!("target: {}\n", plan.target_stage));
    if let Some(s) = &plan.syntax {
        out.push_str(&format!("syntax: {s}\n"));
    }
    out.push_str("== definition ==\n");
    out.push_str(&plan.definition.dump(plan.root).unwrap());
    out.push_str("== meta ==\n");
    for id in plan.definition.reachable(plan.root).unwrap() {
        let m = &plan.definition.nodes[id.0].meta;
        out.push_str(&format!(
            "n{} {:?} stage={:?} lines={:?} ignore_cache={}\n",
            id.0, m.description, m.stage, m.lines, m.ignore_cache
        ));
    }
    out.push_str("== proxy_env ==\n");
    for id in plan.definition.reachable(plan.root).unwrap() {
        if let rbuild_graph::Op::Exec(e) = &plan.definition.nodes[id.0].op {
            if !e.proxy_env.is_empty() {
                out.push_str(&format!("n{} {:?}\n", id.0, e.proxy_env));
            }
        }
    }
    out.push_str("== image ==\n");
    let v = serde_json::to_value(&plan.image).unwrap();
    out.push_str(&serde_json::to_string_pretty(&v).unwrap());
    out.push_str("\n== warnings ==\n");
    for w in &plan.warnings {
        if w.end_line > w.line {
            out.push_str(&format!("{}-{}: {}\n", w.line, w.end_line, w.message));
        } else {
            out.push_str(&format!("{}: {}\n", w.line, w.message));
        }
    }
    out
}

#[test]
fn lower_golden() {
    let mut failures = Vec::new();
    for dir in cases("lower") {
        let actual = lower_dump(&dir);
        if actual.starts_with("ERROR") {
            failures.push(format!("{}: unexpected {actual}", dir.display()));
            continue;
        }
        check(&dir, &actual, &mut failures);
    }
    finish(failures);
}

#[test]
fn error_golden() {
    let mut failures = Vec::new();
    for dir in cases("errors") {
        let text = fs::read_to_string(dir.join("Dockerfile")).unwrap();
        let args = fs::read_to_string(dir.join("args.txt")).unwrap_or_default();
        let opts = opts_from(&args);
        let actual = match rbuild_frontend::build(&text, &opts, &FakeResolver) {
            Ok(_) => "OK (expected an error)\n".to_string(),
            Err(e) => {
                let s = e.to_string();
                assert!(!s.contains('\n'), "error must be one line: {s}");
                format!("{s}\n")
            }
        };
        check(&dir, &actual, &mut failures);
    }
    finish(failures);
}
