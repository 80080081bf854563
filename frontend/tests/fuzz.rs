//! Fuzzing of the parser, word expansion, lowering and `.dockerignore` parsing on the stable
//! toolchain (cargo-fuzz needs nightly): a deterministic, structure-aware mutator seeded from
//! every Dockerfile under `testdata/` plus built-in seeds, run as normal tests for a fixed time
//! budget.
//!
//! Each input must: not panic, finish (a watchdog aborts the binary with the input printed if
//! one case runs for more than a minute), and keep its peak heap below 96 MiB + 64× its size
//! (measured by the counting allocator; the fixed part covers the expansion budget's floor).
//!
//! `RBUILD_FUZZ_SECS` sets the time per fuzz test (default 3), `RBUILD_FUZZ_SEED` the seed
//! (default fixed; a failing run prints the seed and the input, and writes the input to
//! `target/fuzz-failure-*.txt`).
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;
#[path = "common/counting.rs"]
mod counting;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use common::FakeResolver;
use rbuild_frontend::{build, dockerignore, parser, shell, BuildOpts};

/// xorshift64* — deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T: ?Sized>(&mut self, items: &'a [&'a T]) -> &'a T {
        items[self.below(items.len())]
    }
    fn pick_owned<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const SEEDS: &[&str] = &[
    "ARG BASE=busybox\nFROM ${BASE} AS build\nWORKDIR /src\nCOPY . .\nRUN echo \"built $(cat version.txt)\" > /out.txt\nFROM busybox\nENV GREETING=hello\nCOPY --from=build /out.txt /app/out.txt\nUSER 1000:1000\nEXPOSE 8080\nLABEL org.opencontainers.image.title=demo\nENTRYPOINT [\"cat\"]\nCMD [\"/app/out.txt\"]\n",
    "# escape=`\nFROM scratch\nRUN <<EOF\necho hi\nEOF\nCOPY <<-'A' <<B /x/\n\ta\n\tA\nb\nB\n",
    "FROM busybox\nRUN --mount=type=cache,target=/c,id=x --mount=type=secret,id=s,env=E true\nHEALTHCHECK --interval=1s CMD [\"true\"]\nONBUILD RUN x\nADD https://e.com/a.tgz git@github.com:a/b.git /d/\n",
    "FROM a AS b\nFROM b\nENV A=${B:-${C#x}} D=${E//a/b}\nSHELL [\"/bin/bash\",\"-c\"]\nVOLUME [\"/v\"]\nSTOPSIGNAL 9\n",
    "# check=experimental=all;error=false\n# X the x\nARG X=\nFROM --platform=$TARGETPLATFORM busybox:${X} AS s\nCOPY --parents ./a/./b* --link --exclude=*.md /d/\nADD --checksum=sha256:00 --keep-git-dir=true https://h/r.git#v1:sub /g/\nLABEL l=$UNDEF\nCMD a\nCMD b\n",
    "FROM busybox AS base\nARG A=abc\nENV A=$A$A B=${A//b/$A}\nONBUILD COPY --from=base /x /y\nFROM base\nRUN echo $A $B\n",
];

/// Whole instructions the mutator inserts.
const SNIPPETS: &[&str] = &[
    "ARG A=$A$A",
    "ENV A=${A:-x}${A:+y}",
    "ENV B=${A//?/$A}",
    "ARG C=${A#*} D=${A%%a*}",
    "LABEL \"k\"=\"v\" k2='v 2'",
    "RUN echo \"$A\" '$A' \\$A",
    "RUN [\"sh\", \"-c\", \"echo $A\"]",
    "COPY --from=0 --chown=1:1 --chmod=644 a b /d/",
    "ADD --unpack=true a.tar /x",
    "COPY <<EOF /f\n$A\nEOF",
    "RUN <<-EOT bash\n\techo hi\n\tEOT",
    "RUN <<A <<B\na\nA\nb\nB",
    "WORKDIR $A/sub",
    "EXPOSE 80/tcp 53/udp 1000-1010",
    "VOLUME [\"/a\", \"$A\"]",
    "USER ${U:-root}",
    "ONBUILD RUN echo trigger",
    "FROM busybox AS x",
    "FROM x",
    "FROM scratch",
    "HEALTHCHECK --interval=5s CMD true",
    "SHELL [\"/bin/sh\", \"-e\", \"-c\"]",
    "RUN --mount=type=bind,from=x,target=/m true",
    "MAINTAINER me",
    "STOPSIGNAL SIGTERM",
    "CMD echo $A",
    "ENTRYPOINT [\"a\",",
];

const DIRECTIVES: &[&str] = &[
    "# escape=`",
    "# escape=\\",
    "# syntax=docker/dockerfile:1",
    "# check=skip=all",
    "# check=error=true",
    "# escape=x",
];

const ALPHABET: &[u8] =
    b"FROMRUNCOPYADDENVARG${}:-+?#%/\\\"'`<<EOF\n\t =[],.*AS--from=0123 scratch";

/// A random expansion word (nested operators, quotes, escapes).
fn gen_word(rng: &mut Rng, depth: usize) -> String {
    let n = 1 + rng.below(4);
    let mut out = String::new();
    for _ in 0..n {
        let choice = if depth > 4 {
            rng.below(3)
        } else {
            rng.below(12)
        };
        match choice {
            0 => out.push_str(rng.pick(&["a", "b c", "*", "?", "x/y", "", " "])),
            1 => {
                out.push('$');
                out.push_str(rng.pick(&["A", "B", "U", "1", "@", "#"]));
            }
            2 => out.push_str(rng.pick(&["\\$", "\\\\", "\\\"", "`$", "\\"])),
            3 => {
                let op = rng.pick(&[
                    ":-", "-", ":+", "+", ":?", "?", "#", "##", "%", "%%", "/", "//",
                ]);
                let inner = gen_word(rng, depth + 1);
                out.push_str(&format!("${{{}{op}{inner}", rng.pick(&["A", "B", "U"])));
                if op.starts_with('/') && rng.chance(2) {
                    out.push('/');
                    out.push_str(&gen_word(rng, depth + 1));
                }
                if !rng.chance(10) {
                    out.push('}');
                }
            }
            4 => out.push_str(&format!("\"{}\"", gen_word(rng, depth + 1))),
            5 => out.push_str(&format!("'{}'", gen_word(rng, depth + 1))),
            6 => out.push_str("${A}"),
            7 => out.push_str(rng.pick(&["${", "${}", "${A:", "${A:x}", "$", "}"])),
            _ => out.push_str(&gen_word(rng, depth + 1)),
        }
    }
    out
}

fn seeds() -> Vec<String> {
    let mut out: Vec<String> = SEEDS.iter().map(|s| s.to_string()).collect();
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata");
    let mut stack: Vec<PathBuf> = vec![top.join("frontend"), top.join("conformance")];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("Dockerfile"))
            {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(
        files.len() > 50,
        "expected the testdata Dockerfiles as seeds, found {}",
        files.len()
    );
    for f in files {
        if let Ok(t) = std::fs::read_to_string(&f) {
            out.push(t);
        }
    }
    out
}

/// One structure-aware mutation of a Dockerfile.
fn mutate(rng: &mut Rng, text: &str, corpus: &[String]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    let at = rng.below(lines.len() + 1);
    match rng.below(12) {
        0 => {
            // Character-level edits.
            let mut chars: Vec<char> = text.chars().collect();
            for _ in 0..=rng.below(8) {
                let pos = rng.below(chars.len() + 1);
                let c = ALPHABET[rng.below(ALPHABET.len())] as char;
                match rng.below(3) {
                    0 if pos < chars.len() => {
                        chars.remove(pos);
                    }
                    1 if pos < chars.len() => chars[pos] = c,
                    _ => chars.insert(pos, c),
                }
            }
            return chars.into_iter().collect();
        }
        1 => lines.insert(at, rng.pick(SNIPPETS).to_string()),
        2 if !lines.is_empty() => {
            let i = rng.below(lines.len());
            let l = lines[i].clone();
            lines.insert(at, l);
        }
        3 if lines.len() > 1 => {
            lines.remove(rng.below(lines.len()));
        }
        4 if lines.len() > 1 => {
            let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
            lines.swap(a, b);
        }
        5 => {
            // Replace one word of a line by an expansion word.
            let i = rng.below(lines.len());
            let mut words: Vec<String> = lines[i].split(' ').map(str::to_string).collect();
            let w = rng.below(words.len());
            words[w] = gen_word(rng, 0);
            lines[i] = words.join(" ");
        }
        6 => lines.insert(0, rng.pick(DIRECTIVES).to_string()),
        7 => {
            // Line continuation (with blank and comment lines inside).
            let i = rng.below(lines.len());
            let tail = rng.pick(&[" \\", "\\", " `", " \\\n\n#c", " \\\n  "]);
            lines[i].push_str(tail);
        }
        8 => {
            // Splice lines from another seed.
            let other = rng.pick_owned(corpus);
            let ol: Vec<&str> = other.lines().collect();
            if !ol.is_empty() {
                let a = rng.below(ol.len());
                let b = (a + 1 + rng.below(8)).min(ol.len());
                for (k, l) in ol[a..b].iter().enumerate() {
                    lines.insert((at + k).min(lines.len()), l.to_string());
                }
            }
        }
        9 => {
            // Amplify: repeat one line many times (ARG/ENV chains, many stages).
            let i = rng.below(lines.len());
            let l = lines[i].clone();
            for _ in 0..rng.below(300) {
                lines.insert(i, l.clone());
            }
        }
        10 => {
            // A heredoc opened (and maybe not closed).
            let name = rng.pick(&["EOF", "'EOF'", "-EOF", "\"E\""]).to_string();
            lines.insert(at, format!("RUN <<{name} cat"));
            if rng.chance(2) {
                lines.insert((at + 1).min(lines.len()), "body $A \\".to_string());
                lines.insert((at + 2).min(lines.len()), "EOF".to_string());
            }
        }
        _ => {
            // JSON form with hostile elements.
            let elems: Vec<String> = (0..rng.below(5))
                .map(|_| format!("{:?}", gen_word(rng, 2)))
                .collect();
            let kw = rng.pick(&["CMD", "RUN", "ENTRYPOINT", "VOLUME", "SHELL", "COPY"]);
            lines.insert(at, format!("{kw} [{}]", elems.join(", ")));
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

static SERIAL: Mutex<()> = Mutex::new(());
static CURRENT: Mutex<String> = Mutex::new(String::new());
/// Milliseconds since `epoch()` when the running case started (0: none running).
static STARTED: AtomicU64 = AtomicU64::new(0);
static WATCHDOG: Once = Once::new();

fn epoch() -> Instant {
    static E: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Aborts the binary, printing the input, if one case runs for more than 60 s (a hang, not a
/// performance threshold: every case is a few KiB).
fn start_watchdog() {
    WATCHDOG.call_once(|| {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_secs(1));
            let s = STARTED.load(Ordering::Relaxed);
            if s != 0 && now_ms().saturating_sub(s) > 60_000 {
                let input = CURRENT.lock().map(|c| c.clone()).unwrap_or_default();
                let path = failure_file(&input);
                eprintln!(
                    "fuzz case hangs (> 60 s); input written to {}",
                    path.display()
                );
                std::process::abort();
            }
        });
    });
}

fn failure_file(input: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/fuzz-failure-{}.txt", std::process::id()));
    let _ = std::fs::write(&path, input);
    path
}

fn seconds() -> Duration {
    let secs = std::env::var("RBUILD_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs.max(0.0))
}

fn seed() -> u64 {
    std::env::var("RBUILD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9E37_79B9_7F4A_7C15)
}

/// Run every entry point on `text`; panics are caught and reported with the input, memory
/// checked against 96 MiB + 64× the input.
fn check(text: &str, what: &str, seed: u64) {
    if let Ok(mut c) = CURRENT.lock() {
        c.clear();
        c.push_str(text);
    }
    STARTED.store(now_ms(), Ordering::Relaxed);
    let (r, peak) = counting::peak_of(|| {
        catch_unwind(AssertUnwindSafe(|| {
            let ast = parser::parse(text);
            let _ = ast.dump();
            let _ = build(text, &BuildOpts::default(), &FakeResolver);
            let opts = BuildOpts {
                target: Some("b".into()),
                build_args: [("A".to_string(), "x y".to_string())].into(),
                ..BuildOpts::default()
            };
            let _ = build(text, &opts, &FakeResolver);
            let lookup = |k: &str| (k.len() % 2 == 1).then(|| format!("{k} {k}*"));
            let _ = shell::expand(text, &lookup);
            let _ = shell::expand_words(text, &lookup);
            let _ = shell::expand_heredoc(text, &lookup, '`');
            let _ = dockerignore::parse(text);
        }))
    });
    STARTED.store(0, Ordering::Relaxed);
    if r.is_err() {
        let path = failure_file(text);
        panic!(
            "{what}: panic on an input (seed {seed}); input written to {}",
            path.display()
        );
    }
    let bound = (96 << 20) + 64 * text.len();
    if peak > bound {
        let path = failure_file(text);
        panic!(
            "{what}: peak heap {peak} B for a {} B input (bound {bound}; seed {seed}); input written to {}",
            text.len(),
            path.display()
        );
    }
}

fn run_for(what: &str, mut one: impl FnMut(&mut Rng) -> String) -> usize {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    start_watchdog();
    let seed = seed();
    let mut rng = Rng(seed ^ what.len() as u64 ^ 0x5DEE_CE66);
    let deadline = Instant::now() + seconds();
    let mut n = 0usize;
    // At least 200 cases, then until the time budget is spent.
    while n < 200 || Instant::now() < deadline {
        let input = one(&mut rng);
        check(&input, what, seed);
        n += 1;
    }
    eprintln!("{what}: {n} inputs (seed {seed})");
    n
}

#[test]
fn random_bytes() {
    run_for("random-bytes", |rng| {
        let len = rng.below(300);
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                if rng.chance(4) {
                    (rng.next() & 0xff) as u8
                } else {
                    ALPHABET[rng.below(ALPHABET.len())]
                }
            })
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    });
}

#[test]
fn mutated_dockerfiles() {
    let corpus = seeds();
    run_for("mutated-dockerfiles", |rng| {
        let mut text = rng.pick_owned(&corpus).clone();
        for _ in 0..=rng.below(6) {
            text = mutate(rng, &text, &corpus);
        }
        text
    });
}

#[test]
fn expansion_words() {
    run_for("expansion-words", |rng| {
        let w = gen_word(rng, 0);
        let kw = rng.pick(&[
            "ENV A=",
            "ARG A=",
            "LABEL l=",
            "WORKDIR /",
            "COPY ",
            "EXPOSE ",
            "USER ",
        ]);
        format!("FROM busybox\nARG A=abcabc B=\"x y\"\n{kw}{w}\nRUN echo {w}\n")
    });
}

#[test]
fn pathological_inputs_do_not_blow_up() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cases = [
        "${A:-".repeat(5000),
        format!("FROM busybox\nENV X={}\n", "${A:-".repeat(5000)),
        format!("FROM busybox\nENV X=${{V//{}/y}}\n", "*".repeat(2000)),
        "\\\n".repeat(10000),
        "<<EOF ".repeat(1000),
        format!("FROM busybox\nRUN {}\n", "<<A ".repeat(500)),
        format!("FROM busybox\nARG A=x\n{}", "ARG A=$A$A$A$A\n".repeat(64)),
        format!(
            "FROM busybox\nARG A=xxxxxxxx\n{}",
            "ARG A=${A//?/$A}\n".repeat(8)
        ),
        format!("FROM busybox\n{}", "ONBUILD RUN x\n".repeat(2000)),
        format!("FROM busybox\nCOPY {} /d/\n", "'a' ".repeat(70000)),
    ];
    for c in &cases {
        check(c, "pathological", 0);
    }
}
