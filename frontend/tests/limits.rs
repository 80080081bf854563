//! Resource bounds of the frontend on hostile Dockerfiles (issue 11, item 8).
//!
//! A counting global allocator measures, for each input, the peak of live heap bytes while
//! parsing and lowering it, and the number of allocations and bytes allocated in total (a
//! proxy for the work done). The attacks: doubling chains (`ARG A=$A$A` repeated), `${x//p/r}`
//! growth, nested defaults, glob backtracking, huge lines, many ARGs/ENVs/stages, stages
//! derived from a big stage, heredocs and continuations. Each must either build with a peak a
//! small multiple of the input or fail with a clear error naming the Dockerfile line, and the
//! work must grow linearly: doubling n at most (generously) triples the allocations.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

use common::FakeResolver;
use rbuild_frontend::{build, BuildOpts, FrontendError};

#[path = "common/counting.rs"]
mod counting;

use counting::{COUNT, LIVE, PEAK};

/// Tests in this binary run one at a time so the counters see one build.
static SERIAL: Mutex<()> = Mutex::new(());

struct Cost {
    /// Peak live heap bytes above what was live before.
    peak: usize,
    allocs: usize,
    result: Result<(), FrontendError>,
}

fn measure(dockerfile: &str) -> Cost {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let count0 = COUNT.load(Relaxed);
    let result = build(dockerfile, &BuildOpts::default(), &FakeResolver).map(|_| ());
    let peak = PEAK.load(Relaxed).saturating_sub(base);
    Cost {
        peak,
        allocs: COUNT.load(Relaxed) - count0,
        result,
    }
}

/// Peak memory while handling `dockerfile` stays below `factor` × its size + 64 MiB (the fixed
/// part covers the budgets' constant floor).
fn assert_bounded(name: &str, dockerfile: &str, factor: usize) -> Cost {
    let c = measure(dockerfile);
    let bound = factor * dockerfile.len() + (64 << 20);
    eprintln!(
        "{name}: input {} B, peak {} B ({:.1}x), {} allocs, {:?}",
        dockerfile.len(),
        c.peak,
        c.peak as f64 / dockerfile.len().max(1) as f64,
        c.allocs,
        c.result.as_ref().map_err(ToString::to_string)
    );
    assert!(
        c.peak <= bound,
        "{name}: peak {} B for a {} B Dockerfile (bound {bound})",
        c.peak,
        dockerfile.len()
    );
    c
}

fn assert_limit_error(name: &str, c: &Cost, line: u32) {
    let e = c
        .result
        .as_ref()
        .expect_err(&format!("{name}: should fail with a limit error"));
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("Dockerfile:{line}: ")) && text.contains("limit"),
        "{name}: error should name line {line} and the limit: {text}"
    );
}

/// Work (allocations) for size 2n is at most 3× that for n: linear, not quadratic.
fn assert_linear(name: &str, make: impl Fn(usize) -> String, n: usize) {
    let a = measure(&make(n));
    let b = measure(&make(2 * n));
    eprintln!(
        "{name}: n={n} {} allocs, 2n {} allocs ({:?} / {:?})",
        a.allocs,
        b.allocs,
        a.result.as_ref().err().map(ToString::to_string),
        b.result.as_ref().err().map(ToString::to_string)
    );
    assert!(
        b.allocs <= 3 * a.allocs.max(1),
        "{name}: {} allocations for n={n}, {} for 2n: superlinear",
        a.allocs,
        b.allocs
    );
}

#[test]
fn doubling_arg_chain_is_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The 633-byte class: each line doubles the value; 2^40 bytes if unbounded.
    let mut df = String::from("FROM busybox\nARG A=0123456789abcdef\n");
    for _ in 0..40 {
        df.push_str("ARG A=$A$A\n");
    }
    df.push_str("RUN echo $A\n");
    let c = assert_bounded("arg-doubling", &df, 64);
    assert_limit_error(
        "arg-doubling",
        &c,
        c.result.as_ref().err().and_then(|e| e.line()).unwrap_or(0),
    );
    // Same with ENV and with global ARGs before FROM.
    let mut df = String::from("FROM busybox\nENV A=0123456789abcdef\n");
    for _ in 0..40 {
        df.push_str("ENV A=$A$A$A$A\n");
    }
    let c = assert_bounded("env-doubling", &df, 64);
    assert!(c.result.is_err());
    let mut df = String::from("ARG A=0123456789abcdef\n");
    for _ in 0..40 {
        df.push_str("ARG A=$A$A\n");
    }
    df.push_str("FROM busybox\n");
    let c = assert_bounded("global-arg-doubling", &df, 64);
    assert!(c.result.is_err());
}

#[test]
fn doubling_error_names_the_line() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut df = String::from("FROM busybox\nARG A=0123456789abcdef\n");
    for _ in 0..40 {
        df.push_str("ARG A=$A$A$A$A\n");
    }
    let c = measure(&df);
    let line = c.result.as_ref().err().and_then(FrontendError::line);
    // 16 B × 4^k passes 16 MiB at k = 10 (line 12 = the 10th doubling).
    assert!(
        line.is_some_and(|l| (3..=42).contains(&l)),
        "line: {line:?}"
    );
    assert_limit_error("doubling-line", &c, line.unwrap_or(0));
}

#[test]
fn replace_growth_is_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Each char replaced by the whole value: quadratic growth per line.
    let mut df = String::from(
        "FROM busybox\nARG A=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
    );
    for _ in 0..6 {
        df.push_str("ARG A=${A//?/$A}\n");
    }
    let c = assert_bounded("replace-growth", &df, 64);
    assert!(c.result.is_err(), "should hit the limit");
    assert_limit_error(
        "replace-growth",
        &c,
        c.result.as_ref().err().and_then(|e| e.line()).unwrap_or(0),
    );
}

#[test]
fn glob_backtracking_is_bounded() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A non-matching pattern over a long value: cubic tries if unbounded.
    let value = "a".repeat(20_000);
    let df =
        format!("FROM busybox\nARG A={value}\nARG B=${{A//a*b/x}} C=${{A##*a*b}} D=${{A%%a*b*}}\n");
    let c = assert_bounded("glob-backtracking", &df, 64);
    if let Err(e) = &c.result {
        assert!(e.to_string().starts_with("Dockerfile:3: "), "{e}");
    }
}

#[test]
fn nested_defaults_are_bounded() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut word = String::from("x");
    for _ in 0..60 {
        word = format!("${{U:-{word}{word}}}");
        if word.len() > 200_000 {
            break;
        }
    }
    let df = format!("FROM busybox\nENV A={word}\n");
    assert_bounded("nested-defaults", &df, 64);
    let deep = format!(
        "FROM busybox\nENV A={}x{}\n",
        "${U:-".repeat(100_000),
        "}".repeat(100_000)
    );
    let c = assert_bounded("deep-nesting", &deep, 64);
    assert!(c.result.is_err());
}

#[test]
fn huge_line_is_a_small_multiple() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let big = "a".repeat(16 << 20);
    let c = assert_bounded("huge-run", &format!("FROM busybox\nRUN echo {big}\n"), 12);
    assert!(c.result.is_ok());
    let c = assert_bounded("huge-env", &format!("FROM busybox\nENV A={big}\n"), 12);
    assert!(c.result.is_ok());
    let cont = "echo a \\\n".repeat(1 << 20);
    let c = assert_bounded("continuations", &format!("FROM busybox\nRUN {cont}\n"), 12);
    assert!(c.result.is_ok());
    let body = "line\n".repeat(2 << 20);
    let c = assert_bounded(
        "heredoc",
        &format!("FROM busybox\nRUN <<EOF\n{body}EOF\n"),
        12,
    );
    assert!(c.result.is_ok());
    let blank = "\n".repeat(8 << 20);
    let c = assert_bounded(
        "empty-lines",
        &format!("FROM busybox\nRUN a \\\n{blank}b\n"),
        12,
    );
    assert!(c.result.is_ok());
    let c = assert_bounded("empty-lines-bare", &format!("FROM busybox\n{blank}"), 12);
    assert!(c.result.is_ok());
}

#[test]
fn heredoc_and_port_range_floods_are_bounded() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Many heredocs on one RUN: each a few bytes of input.
    let n = 60_000;
    let df = format!(
        "FROM busybox\nRUN {}\n{}",
        "<<A ".repeat(n),
        "A\n".repeat(n)
    );
    let c = assert_bounded("many-heredocs", &df, 24);
    assert!(c.result.is_ok());
    let n = 200_000;
    let df = format!(
        "FROM busybox\nRUN {}\n{}",
        "<<A ".repeat(n),
        "A\n".repeat(n)
    );
    let c = assert_bounded("too-many-heredocs", &df, 24);
    assert_limit_error("too-many-heredocs", &c, 2);
    // Each `EXPOSE 1-65535` line is ~600 KiB of history from 14 bytes: charged, refused.
    let df = format!("FROM busybox\n{}", "EXPOSE 1-65535\n".repeat(2000));
    let c = assert_bounded("expose-ranges", &df, 64);
    let line = c.result.as_ref().err().and_then(|e| e.line()).unwrap_or(0);
    assert_limit_error("expose-ranges", &c, line);
    // ONBUILD triggers copied into many derived stages.
    let mut df = String::from("FROM busybox AS base\n");
    for _ in 0..2000 {
        df.push_str("ONBUILD ENV A=1\n");
    }
    for i in 0..2000 {
        df.push_str(&format!("FROM base AS s{i}\n"));
    }
    df.push_str("FROM busybox\n");
    for i in 0..2000 {
        df.push_str(&format!("COPY --from=s{i} /x /x{i}\n"));
    }
    let c = assert_bounded("onbuild-fan-out", &df, 64);
    let line = c.result.as_ref().err().and_then(|e| e.line()).unwrap_or(0);
    assert_limit_error("onbuild-fan-out", &c, line);
}

#[test]
fn tiny_instruction_floods_are_bounded() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Hundreds of bytes per instruction once parsed and lowered, from 7 bytes of input.
    let df = format!("FROM busybox\n{}", "USER a\n".repeat(1 << 20));
    let c = assert_bounded("tiny-instructions", &df, 64);
    assert_limit_error("tiny-instructions", &c, (1 << 17) + 1);
    let df = format!("FROM busybox\n{}", "USER a\n".repeat(100_000));
    let c = assert_bounded("many-instructions", &df, 96);
    assert!(c.result.is_ok());
}

#[test]
fn dockerignore_checks_are_bounded() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // CopyIgnoredFile matches every literal COPY source against every .dockerignore pattern:
    // 50k × 60k glob matches (minutes) unless bounded; the lint is skipped past 2^22 matches.
    let opts = BuildOpts {
        dockerignore: (0..50_000).map(|i| format!("*x{i}*y*z")).collect(),
        ..BuildOpts::default()
    };
    let srcs: Vec<String> = (0..60_000).map(|i| format!("a/b/c{i}")).collect();
    let df = format!("FROM busybox\nCOPY {} /d/\n", srcs.join(" "));
    let r = build(&df, &opts, &FakeResolver);
    assert!(r.is_ok(), "{:?}", r.err().map(|e| e.to_string()));
    // Still reported while within the bound.
    let opts = BuildOpts {
        dockerignore: vec!["secret.txt".into()],
        ..BuildOpts::default()
    };
    let p = build("FROM busybox\nCOPY secret.txt /s\n", &opts, &FakeResolver).unwrap();
    assert!(p
        .warnings
        .iter()
        .any(|w| w.message.starts_with("CopyIgnoredFile")));
}

#[test]
fn too_many_arguments_are_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Each split word costs dozens of bytes: a line of one-letter words is refused beyond
    // 65536 of them, before it is split.
    let words = "a ".repeat(4 << 20);
    let c = assert_bounded(
        "huge-copy",
        &format!("FROM busybox\nCOPY {words} /d/\n"),
        12,
    );
    assert_limit_error("huge-copy", &c, 2);
    let json = format!("[{}]", vec!["\"a\""; 1 << 20].join(","));
    let c = assert_bounded("json", &format!("FROM busybox\nCMD {json}\n"), 12);
    assert_limit_error("json", &c, 2);
    let flags = "--link ".repeat(1 << 20);
    let c = assert_bounded("flags", &format!("FROM busybox\nCOPY {flags} a /d/\n"), 12);
    assert_limit_error("flags", &c, 2);
    let pairs = "A=1 ".repeat(1 << 20);
    let c = assert_bounded("env-pairs", &format!("FROM busybox\nENV {pairs}\n"), 12);
    assert_limit_error("env-pairs", &c, 2);
    // Just under the limit still builds.
    let words = "a ".repeat(60_000);
    let c = measure(&format!("FROM busybox\nCOPY {words} /d/\n"));
    assert!(
        c.result.is_ok(),
        "{:?}",
        c.result.err().map(|e| e.to_string())
    );
}

fn many_args(n: usize) -> String {
    let mut s = String::from("FROM busybox\n");
    for i in 0..n {
        s.push_str(&format!("ARG A{i}=v{i}\n"));
    }
    s.push_str("RUN true\n");
    s
}

fn many_global_args(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!("# A{i} describes it\nARG A{i}=v{i}\n"));
    }
    s.push_str("FROM busybox\nRUN true\n");
    s
}

fn many_envs(n: usize) -> String {
    let mut s = String::from("FROM busybox\n");
    for i in 0..n {
        s.push_str(&format!("ENV E{i}=$E{}x\n", i.saturating_sub(1)));
    }
    s
}

fn many_stages(n: usize) -> String {
    let mut s = String::from("FROM busybox AS s0\nENV A=1\n");
    for i in 1..n {
        s.push_str(&format!("FROM s{} AS s{i}\nENV A{i}=1\n", i - 1));
    }
    s
}

fn fan_out(n: usize) -> String {
    let mut s = String::from("FROM busybox AS base\n");
    for i in 0..n {
        s.push_str(&format!("LABEL l{i}=v\n"));
    }
    for i in 0..n {
        s.push_str(&format!("FROM base AS s{i}\nRUN true\n"));
    }
    s.push_str("FROM busybox\n");
    for i in 0..n {
        s.push_str(&format!("COPY --from=s{i} /x /x{i}\n"));
    }
    s
}

fn undefined_vars(n: usize) -> String {
    let mut s = String::from("FROM busybox\n");
    for i in 0..n {
        s.push_str(&format!("ENV K{i}=$UNDEF{i}\n"));
    }
    s
}

#[test]
fn many_instructions_are_linear() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert_linear("args", many_args, 2000);
    assert_linear("global-args", many_global_args, 2000);
    assert_linear("envs", many_envs, 2000);
    assert_linear("stage-chain", many_stages, 1000);
    assert_linear("undefined-vars", undefined_vars, 2000);
}

#[test]
fn derived_stages_are_bounded() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // n stages FROM a base with n instructions: n² config entries if each copy is kept.
    let df = fan_out(3000);
    let c = assert_bounded("fan-out", &df, 64);
    if let Err(e) = &c.result {
        assert!(e.to_string().contains("limit"), "{e}");
    }
}
