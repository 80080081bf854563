//! The command-line interface through the real binary: progress displays (plain and rawjson
//! compared with golden files under testdata/cli/ after redacting times and digests; the tty
//! view through a pseudo-terminal made by util-linux `script`, replayed on a small screen
//! model), `--metadata-file`, contexts from stdin, tar and git, exit codes, rejected flags,
//! completion and version. Builds use the test registry on 127.0.0.1:5055 (`.ci/setup.sh`)
//! and need root, like cli/tests/e2e.rs; a missing prerequisite fails the test with the reason.
//!
//! `UPDATE_GOLDEN=1 cargo test -p rbuild --test cli` rewrites the golden files.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use common::{require_env, REGISTRY};

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tempfile::TempDir;

struct Project {
    dir: TempDir,
    store: TempDir,
}

impl Project {
    fn new(dockerfile: &str) -> Self {
        let p = Project {
            dir: tempfile::tempdir().unwrap(),
            store: tempfile::tempdir().unwrap(),
        };
        p.file("Dockerfile", dockerfile);
        p
    }

    fn file(&self, rel: &str, content: &str) -> &Self {
        let p = self.dir.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
        self
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
        c.args(args)
            .env("RBUILD_ROOT", self.store.path())
            .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
            .env_remove("RBUILD_PROGRESS")
            .env_remove("BUILDKIT_PROGRESS")
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .current_dir(self.dir.path());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn run_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "rbuild failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    o
}

/// Replace `sha256:<64 hex>` with `sha256:<digest>`.
fn redact_digests(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("sha256:") {
        out.push_str(&rest[..i + 7]);
        let after = &rest[i + 7..];
        let hex = after.chars().take_while(|c| c.is_ascii_hexdigit()).count();
        if hex == 64 {
            out.push_str("<digest>");
            rest = &after[64..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Plain output with times redacted: `#N 0.123 x` → `#N <t> x`, `DONE 1.2s` → `DONE <d>`.
fn normalize_plain(s: &str) -> String {
    let mut out = String::new();
    for line in redact_digests(s).lines() {
        let mut l = line.to_string();
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.splitn(3, ' ');
            let n = parts.next().unwrap_or("");
            let second = parts.next().unwrap_or("");
            let tail = parts.next();
            if second == "DONE" {
                l = format!("#{n} DONE <d>");
            } else if second.starts_with("sha256:") {
                // byte progress of a layer: only its last line is stable
                match line.strip_suffix(" done") {
                    Some(rest) => {
                        let upto = rest.rsplit_once(' ').map(|(a, _)| a).unwrap_or(rest);
                        l = format!("{upto} <d> done");
                    }
                    None => continue,
                }
            } else if second.contains('.') && second.parse::<f64>().is_ok() {
                l = format!("#{n} <t> {}", tail.unwrap_or(""));
            }
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// rawjson output (BuildKit's SolveStatus lines) with times redacted and consecutive log
/// chunks of one vertex and stream merged (chunk boundaries depend on pipe timing).
fn normalize_rawjson(s: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut events: Vec<Value> = Vec::new();
    for line in s.lines() {
        let mut v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line: {line:?}: {e}"));
        redact_times(&mut v);
        // byte progress: only a transfer's last status is stable (the others are timed)
        if v.get("statuses")
            .is_some_and(|s| s[0].get("completed").is_none())
        {
            continue;
        }
        if let Some(r) = v.get_mut("result") {
            assert!(r["duration"].as_f64().unwrap() >= 0.0);
            r["duration"] = Value::from("<d>");
        }
        if let (Some(prev), Some(log)) = (events.last_mut(), v.get("logs")) {
            let log = &log[0];
            if let Some(p) = prev.get_mut("logs") {
                let p = &mut p[0];
                if p["vertex"] == log["vertex"] && p["stream"] == log["stream"] {
                    let mut data = b64.decode(p["data"].as_str().unwrap()).unwrap();
                    data.extend(b64.decode(log["data"].as_str().unwrap()).unwrap());
                    p["data"] = Value::from(b64.encode(data));
                    continue;
                }
            }
        }
        events.push(v);
    }
    let mut out = String::new();
    for e in events {
        out.push_str(&redact_digests(&e.to_string()));
        out.push('\n');
    }
    out
}

/// Replace the RFC 3339 times of `started`, `completed` and `timestamp` fields with `<time>`.
fn redact_times(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if matches!(k.as_str(), "started" | "completed" | "timestamp") {
                    let t = x.as_str().unwrap_or_default();
                    assert!(
                        t.len() >= 20 && t.as_bytes()[10] == b'T' && t.ends_with('Z'),
                        "{k}: not an RFC 3339 time: {t:?}"
                    );
                    *x = Value::from("<time>");
                } else {
                    redact_times(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact_times),
        _ => {}
    }
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/cli")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, actual).unwrap();
        return;
    }
    let expected = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        actual,
        expected,
        "output differs from {} (UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
}

const GOLDEN_DOCKERFILE: &str =
    "FROM busybox\nCOPY a.txt /a.txt\nRUN echo one; echo two; printf 'no newline'\nRUN echo err >&2\n";
const FAILING_DOCKERFILE: &str =
    "FROM busybox\nRUN echo preparing\nRUN echo 'something broke' >&2; exit 3\nRUN echo never\n";

/// Run a cold, a cached and a failing build in one display mode.
fn three_builds(mode: &str) -> [String; 3] {
    require_env();
    let p = Project::new(GOLDEN_DOCKERFILE);
    p.file("a.txt", "A");
    let args = [
        "build",
        "--progress",
        mode,
        "--max-parallelism",
        "1",
        "-t",
        "g:1",
        ".",
    ];
    let cold = ok(p.run(&args));
    let cached = ok(p.run(&args));
    p.file("Dockerfile", FAILING_DOCKERFILE);
    let failed = p.run(&args);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed.stderr));
    [cold, cached, failed].map(|o| {
        assert!(o.stdout.is_empty(), "progress goes to stderr");
        text(&o.stderr)
    })
}

#[test]
fn plain_output_of_a_cold_a_cached_and_a_failing_build_matches_the_golden_files() {
    let [cold, cached, failed] = three_builds("plain");
    golden("plain-cold.txt", &normalize_plain(&cold));
    golden("plain-cached.txt", &normalize_plain(&cached));
    golden("plain-failed.txt", &normalize_plain(&failed));
}

#[test]
fn rawjson_output_of_a_cold_a_cached_and_a_failing_build_matches_the_golden_files() {
    let [cold, cached, failed] = three_builds("rawjson");
    golden("rawjson-cold.jsonl", &normalize_rawjson(&cold));
    golden("rawjson-cached.jsonl", &normalize_rawjson(&cached));
    // After the JSON lines comes the human-readable error report.
    let (json, report): (Vec<&str>, Vec<&str>) = failed.lines().partition(|l| l.starts_with('{'));
    golden("rawjson-failed.jsonl", &normalize_rawjson(&json.join("\n")));
    assert!(report.join("\n").contains("exit code 3"), "{failed}");
    for out in [&cold, &cached, &json.join("\n")] {
        check_buildx_schema(out);
    }
    assert!(cold.contains("\"logs\":[{"), "{cold}");
}

/// The JSON type of a value, for schema comparison.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Field name → JSON type of every field under `path` (`vertexes`, `logs`, …) in `lines`,
/// nested objects as `a.b`.
fn fields(v: &Value, prefix: &str, out: &mut std::collections::BTreeMap<String, &'static str>) {
    if let Value::Object(o) = v {
        for (k, x) in o {
            let name = format!("{prefix}{k}");
            out.insert(name.clone(), kind(x));
            match x {
                Value::Object(_) => fields(x, &format!("{name}."), out),
                Value::Array(a) => {
                    for e in a {
                        fields(e, &format!("{name}[]."), out);
                    }
                }
                _ => {}
            }
        }
    }
}

/// rbuild's rawjson must use BuildKit's SolveStatus schema: every field rbuild writes is in
/// buildx's sample with the same JSON type, except the extras docs/progress.md lists, and the
/// fields buildx always writes for a vertex or a log are there. The sample
/// (testdata/cli/buildx-rawjson-sample.jsonl) is what `docker buildx build --progress=rawjson`
/// writes for GOLDEN_DOCKERFILE plus a lint warning; it was written from buildx/BuildKit's
/// source (client/graph.go's json tags, progressui's rawJSONDisplay: json.Encoder per
/// SolveStatus, solver/pb's SourceInfo and Range), since no docker daemon runs here.
fn check_buildx_schema(out: &str) {
    let sample = fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/cli/buildx-rawjson-sample.jsonl"),
    )
    .unwrap();
    let mut theirs = std::collections::BTreeMap::new();
    for l in sample.lines() {
        fields(&serde_json::from_str(l).unwrap(), "", &mut theirs);
    }
    let extras = ["explain", "other", "result", "vertexes[].canceled"];
    let mut ours = std::collections::BTreeMap::new();
    for l in out.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        let mut one = std::collections::BTreeMap::new();
        fields(&v, "", &mut one);
        if let Some(Value::Array(vs)) = v.get("vertexes") {
            for vx in vs {
                for required in ["digest", "name", "started"] {
                    assert!(vx.get(required).is_some(), "vertex lacks {required}: {l}");
                }
            }
        }
        if let Some(Value::Array(ls)) = v.get("logs") {
            for log in ls {
                for required in ["vertex", "stream", "data", "timestamp"] {
                    assert!(log.get(required).is_some(), "log lacks {required}: {l}");
                }
            }
        }
        ours.extend(one);
    }
    for (name, k) in &ours {
        if extras
            .iter()
            .any(|e| name == e || name.starts_with(&format!("{e}.")))
        {
            continue;
        }
        assert_eq!(
            theirs.get(name),
            Some(k),
            "rbuild's rawjson field {name} ({k}) is not in buildx's schema"
        );
    }
    assert!(ours.contains_key("vertexes"), "no vertexes in {out}");
}

#[test]
fn long_output_is_never_clipped_in_plain_mode_and_errors_say_what_they_leave_out() {
    require_env();
    let p =
        Project::new("FROM busybox\nRUN for i in $(seq 1 500); do echo line $i; done; exit 2\n");
    let o = p.run(&["--progress=plain", "."]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    for i in [1, 250, 500] {
        assert!(
            err.contains(&format!(" line {i}\n")),
            "line {i} missing:\n{err}"
        );
    }
    assert!(
        err.contains("[480 earlier lines of output not repeated here"),
        "{err}"
    );
}

/// The screen after replaying the tty display on a terminal model (vt100: 500 rows, so
/// nothing scrolls away); returns the screen lines.
fn replay(bytes: &[u8]) -> Vec<String> {
    let nz = |n: u16| std::num::NonZeroU16::new(n).unwrap();
    let mut parser = vt100::Parser::new(nz(500), nz(200), 0);
    parser.process(bytes);
    let mut lines: Vec<String> = parser
        .screen()
        .rows(0, 200)
        .map(|l| l.trim_end().to_string())
        .collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

fn run_in_pty(p: &Project, args: &str) -> (i32, Vec<String>) {
    let out = Command::new("script")
        .args([
            "-qec",
            &format!("{} {args}", env!("CARGO_BIN_EXE_rbuild")),
            "/dev/null",
        ])
        .env("RBUILD_ROOT", p.store.path())
        .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
        .env_remove("RBUILD_PROGRESS")
        .env_remove("BUILDKIT_PROGRESS")
        .env("TERM", "xterm")
        .current_dir(p.dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("util-linux `script` is needed for the tty test (apt-get install bsdutils)");
    (out.status.code().unwrap_or(-1), replay(&out.stdout))
}

#[test]
fn the_tty_view_redraws_in_place_and_its_final_frame_shows_every_step() {
    require_env();
    let p = Project::new(GOLDEN_DOCKERFILE);
    p.file("a.txt", "A");
    // auto picks the tty view on a terminal
    let (code, screen) = run_in_pty(&p, "-t tty:1 .");
    assert_eq!(code, 0, "{screen:#?}");
    let headers = screen
        .iter()
        .filter(|l| l.starts_with("[+] Building"))
        .count();
    assert_eq!(headers, 1, "frames are redrawn in place: {screen:#?}");
    let find = |needle: &str| {
        screen
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not on screen: {screen:#?}"))
            .clone()
    };
    assert!(find("[+] Building").ends_with("FINISHED"));
    assert!(find("FROM busybox").starts_with(" => [1/4] FROM busybox"));
    let run = find("RUN echo one");
    assert!(run.starts_with(" => [3/4] RUN"), "{run}");
    assert!(run.ends_with('s'), "a finished step shows its time: {run}");
    assert!(
        !screen.iter().any(|l| l.contains("=> => # one")),
        "finished steps collapse their output: {screen:#?}"
    );
    assert!(find("Built in").contains("image sha256:"));

    let (code, screen) = run_in_pty(&p, "--progress=tty -t tty:1 .");
    assert_eq!(code, 0);
    for step in ["FROM busybox", "COPY a.txt", "RUN echo one", "RUN echo err"] {
        let l = screen.iter().find(|l| l.contains(step)).unwrap();
        assert!(l.starts_with(" => CACHED "), "{l}");
    }

    p.file("Dockerfile", FAILING_DOCKERFILE);
    let (code, screen) = run_in_pty(&p, "--progress=tty .");
    assert_eq!(code, 1);
    assert!(screen.iter().any(|l| l.ends_with("FAILED")), "{screen:#?}");
    let err = screen
        .iter()
        .position(|l| l.starts_with(" => ERROR [3/4] RUN"));
    let err = err.unwrap_or_else(|| panic!("{screen:#?}"));
    assert_eq!(screen[err + 1], " => => # something broke", "{screen:#?}");
    assert!(screen
        .iter()
        .any(|l| l.contains(">>> RUN echo 'something broke'")));
}

#[test]
fn metadata_file_and_iidfile_name_the_image_that_was_stored() {
    require_env();
    let p = Project::new("FROM busybox\nRUN echo hi > /hi\n");
    ok(p.run(&[
        "--progress=quiet",
        "-t",
        "meta:1",
        "-t",
        "meta:latest",
        "--metadata-file",
        "meta.json",
        "--iidfile",
        "id.txt",
        ".",
    ]));
    let m: Value =
        serde_json::from_str(&fs::read_to_string(p.dir.path().join("meta.json")).unwrap()).unwrap();
    let id = fs::read_to_string(p.dir.path().join("id.txt")).unwrap();
    assert_eq!(m["containerimage.config.digest"], id.as_str());
    assert_eq!(
        m["image.name"],
        "docker.io/library/meta:1,docker.io/library/meta:latest"
    );
    let digest = m["containerimage.digest"].as_str().unwrap();
    assert_eq!(m["containerimage.descriptor"]["digest"], digest);
    // The manifest in the store's OCI layout under that digest has that size and config.
    let index: Value = serde_json::from_str(
        &fs::read_to_string(p.store.path().join("layout-v1/index.json")).unwrap(),
    )
    .unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| {
            d["annotations"]["org.opencontainers.image.ref.name"] == "docker.io/library/meta:1"
        })
        .unwrap();
    assert_eq!(entry["digest"], digest);
    assert_eq!(entry["size"], m["containerimage.descriptor"]["size"]);
    assert_eq!(
        entry["mediaType"],
        m["containerimage.descriptor"]["mediaType"]
    );
    let blob = p
        .store
        .path()
        .join("blobs-v1/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let manifest: Value = serde_json::from_slice(&fs::read(blob).unwrap()).unwrap();
    assert_eq!(manifest["config"]["digest"], id.as_str());
}

#[test]
fn a_dockerfile_or_a_tar_context_on_stdin() {
    require_env();
    let p = Project::new("");
    let o = ok(p.run_stdin(
        &["-q", "-t", "stdin:1", "-"],
        b"FROM busybox\nRUN echo from-stdin > /s\n",
    ));
    assert!(text(&o.stdout).starts_with("sha256:"));

    // a tar context (built with the tar CLI) with a Dockerfile that COPYs from it
    let src = tempfile::tempdir().unwrap();
    fs::write(
        src.path().join("Dockerfile"),
        "FROM busybox\nCOPY hello.txt /hello.txt\nRUN grep -q tarred /hello.txt\n",
    )
    .unwrap();
    fs::write(src.path().join("hello.txt"), "tarred\n").unwrap();
    for flags in ["-c", "-cz"] {
        let tar = Command::new("tar")
            .args([flags, "-C"])
            .arg(src.path())
            .arg(".")
            .output()
            .unwrap();
        assert!(tar.status.success());
        let o = p.run_stdin(&["--progress=plain", "-t", "tarctx:1", "-"], &tar.stdout);
        ok(o);
    }
    // -f - reads the Dockerfile from stdin with a directory context
    p.file("data.txt", "dir-context");
    ok(p.run_stdin(
        &["--progress=plain", "-f", "-", "."],
        b"FROM busybox\nCOPY data.txt /d\nRUN grep -q dir-context /d\n",
    ));
}

fn git(dir: &Path, args: &[&str]) {
    let o = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git is needed for git contexts (apt-get install git)");
    assert!(o.status.success(), "git {args:?}: {}", text(&o.stderr));
}

#[test]
fn a_git_url_context_with_a_ref_and_a_subdirectory() {
    require_env();
    let work = tempfile::tempdir().unwrap();
    let w = work.path().join("w");
    fs::create_dir_all(w.join("app")).unwrap();
    git(&w, &["init", "-q", "-b", "main"]);
    fs::write(
        w.join("app/Dockerfile"),
        "FROM busybox\nCOPY v.txt /v.txt\nRUN grep -q release /v.txt\n",
    )
    .unwrap();
    fs::write(w.join("app/v.txt"), "release\n").unwrap();
    git(&w, &["add", "-A"]);
    git(&w, &["commit", "-q", "-m", "one"]);
    git(&w, &["tag", "v1"]);
    fs::write(w.join("app/v.txt"), "changed\n").unwrap();
    git(&w, &["commit", "-q", "-am", "two"]);
    let bare = work.path().join("repo.git");
    git(work.path(), &["clone", "-q", "--bare", "w", "repo.git"]);
    let p = Project::new("");
    let url = format!("file://{}#v1:app", bare.display());
    let o = ok(p.run(&[
        "--progress=plain",
        "--metadata-file",
        "m.json",
        "-t",
        "gitctx:v1",
        &url,
    ]));
    assert!(
        text(&o.stderr).contains("COPY v.txt"),
        "{}",
        text(&o.stderr)
    );
    // the repository and commit are the manifest's source/revision annotations
    let v1 = Command::new("git")
        .args(["rev-parse", "v1^{commit}"])
        .current_dir(&w)
        .output()
        .unwrap();
    let img: serde_json::Value =
        serde_json::from_slice(&ok(p.run(&["inspect", "gitctx:v1"])).stdout).unwrap();
    let a = &img["Manifest"]["annotations"];
    assert_eq!(
        a["org.opencontainers.image.source"],
        format!("file://{}", bare.display())
    );
    assert_eq!(
        a["org.opencontainers.image.revision"],
        text(&v1.stdout).trim()
    );
    // main has the changed file, so the RUN check fails there: the ref was honoured.
    let url = format!("file://{}#main:app", bare.display());
    let o = p.run(&["--progress=plain", &url]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let o = p.run(&[
        "--progress=plain",
        &format!("file://{}#nosuchref", bare.display()),
    ]);
    assert!(text(&o.stderr).contains("nosuchref"), "{}", text(&o.stderr));
    // a ref that looks like an option is refused before git runs
    let url = format!("file://{}#--upload-pack=x", bare.display());
    let o = p.run(&["--progress=plain", &url]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
}

#[test]
fn unsupported_flags_are_rejected_with_a_message_naming_the_flag() {
    let p = Project::new("FROM busybox\n");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--build-context", "base=oci-layout:///tmp/layout"],
            "--build-context base=oci-layout:///tmp/layout: a build context from oci-layout://",
        ),
        (
            &["--cache-from", "type=gha"],
            "type=gha is not supported: rbuild has no client for that service; use type=registry",
        ),
        (
            &["--cache-to", "type=s3,bucket=b"],
            "type=s3 is not supported",
        ),
        (
            &["--provenance", "mode=huge"],
            "--provenance mode=huge: unknown provenance option",
        ),
        (
            &["--attest", "type=foo"],
            "--attest type=foo: unknown attestation type",
        ),
    ];
    for (args, message) in cases {
        let mut a: Vec<&str> = args.to_vec();
        a.push(".");
        let o = p.run(&a);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(message),
            "{args:?}: expected {message:?} in {err}"
        );
    }
    // Malformed values are usage errors too, naming the flag.
    for (args, flag) in [
        (["--secret", "src=only"], "--secret"),
        (["--add-host", "db:nope"], "--add-host"),
        (["--network", "bridge"], "--network"),
        (["--progress", "fancy"], "--progress"),
        (["--ulimit", "nofile=x"], "--ulimit"),
        (["--memory", "lots"], "--memory"),
        (["--memory", "1m"], "--memory"),
        (["--cpus", "0"], "--cpus"),
        (["--output", "dest=x"], "--output"),
    ] {
        let mut a: Vec<&str> = args.to_vec();
        a.push(".");
        let o = p.run(&a);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains(flag), "{}", text(&o.stderr));
    }
    // Flags that turn a missing feature off are accepted.
    require_env();
    ok(p.run(&[
        "-q",
        "--provenance=false",
        "--sbom=false",
        "--network",
        "default",
        "--platform",
        "local",
        ".",
    ]));
    // buildx's BUILDKIT_PROGRESS picks the display when RBUILD_PROGRESS and --progress do not.
    let o = ok(p
        .cmd(&["."])
        .env("BUILDKIT_PROGRESS", "rawjson")
        .output()
        .unwrap());
    assert!(text(&o.stderr).starts_with('{'), "{}", text(&o.stderr));
}

#[test]
fn exit_codes_separate_usage_errors_from_build_failures() {
    let p = Project::new("FROM busybox\nRUN exit 5\n");
    assert_eq!(p.run(&["--frobnicate", "."]).status.code(), Some(2));
    assert_eq!(p.run(&["no-such-dir"]).status.code(), Some(2));
    assert_eq!(
        p.run(&["Dockerfile"]).status.code(),
        Some(2),
        "not a directory"
    );
    let o = p.run(&["-f", "Missing.Dockerfile", "."]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("failed to read dockerfile"));
    require_env();
    let o = p.run(&["--progress=plain", "."]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
}

#[test]
fn completion_scripts_and_version() {
    let p = Project::new("");
    for shell in ["bash", "zsh", "fish"] {
        let o = ok(p.run(&["completion", shell]));
        let s = text(&o.stdout);
        assert!(
            s.contains("rbuild") && s.contains("metadata-file"),
            "{shell}: {s}"
        );
    }
    assert_eq!(p.run(&["completion", "tcsh"]).status.code(), Some(2));
    let v = text(&ok(p.run(&["version"])).stdout);
    assert!(
        v.starts_with(&format!("rbuild {}", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    let help = text(&ok(p.run(&["build", "--help"])).stdout);
    for word in ["Examples:", "--cache-to", "--metadata-file", "Exit codes"] {
        assert!(help.contains(word), "{word} not in help:\n{help}");
    }
}

/// Issue 11 item 8: Dockerfiles whose expansion doubles or squares a value on every line used
/// to make rbuild abort ("memory allocation … failed", exit 134) under an address-space cap.
/// Under a 2 GiB cap each now fails cleanly: exit 1 and an error naming the line and the limit.
#[test]
fn expansion_bombs_fail_cleanly_under_a_memory_cap() {
    common::require_tools(&["prlimit"]);
    let doubling = format!(
        "ARG A=0123456789abcdef\n{}FROM scratch\n",
        "ARG A=$A$A$A$A\n".repeat(30)
    );
    let in_stage = format!(
        "FROM scratch\nENV A=0123456789abcdef\n{}",
        "ENV A=$A$A$A$A\n".repeat(30)
    );
    let replace = format!(
        "FROM scratch\nARG A=0123456789abcdef0123456789abcdef\n{}",
        "ARG A=${A//?/$A}\n".repeat(8)
    );
    for df in [doubling, in_stage, replace] {
        let p = Project::new(&df);
        let o = Command::new("prlimit")
            .arg(format!("--as={}", 2u64 << 30))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_rbuild"))
            .args(["--progress=plain", "."])
            .env("RBUILD_ROOT", p.store.path())
            .env_remove("SOURCE_DATE_EPOCH")
            .stdin(Stdio::null())
            .current_dir(p.dir.path())
            .output()
            .unwrap();
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{df:.60}…: {err}");
        assert!(
            err.contains("expansion limit exceeded") && err.contains("Dockerfile:"),
            "{err}"
        );
    }
}

#[test]
fn ctrl_c_marks_the_running_step_canceled_and_exits_130() {
    require_env();
    let p = Project::new("FROM busybox\nRUN echo start && sleep 29.3\n");
    let mut child = p
        .cmd(&["--progress=plain", "."])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = Vec::new();
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if l.ends_with(" start") {
                let _ = tx.send(());
            }
            all.push(l);
        }
        all
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("the step never started");
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    let lines = reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "{lines:#?}");
    let run = lines
        .iter()
        .find(|l| l.contains("RUN echo start"))
        .and_then(|l| l.split(' ').next())
        .unwrap()
        .to_string();
    assert!(
        lines.contains(&format!("{run} CANCELED")),
        "the running step is marked: {lines:#?}"
    );
    assert!(lines.iter().any(|l| l.contains("build cancelled")));
}

#[test]
fn pulls_and_pushes_show_per_layer_bytes_in_plain_and_rawjson() {
    require_env();
    let p = Project::new("FROM busybox\nRUN head -c 3000000 /dev/urandom > /big\n");
    let name = format!("{REGISTRY}/rbuild-test/bytes-{}:1", std::process::id());
    ok(p.run(&["build", "-q", "-t", &name, "."]));
    let push = ok(p
        .cmd(&["push", &name])
        .env("RBUILD_PROGRESS", "plain")
        .output()
        .unwrap());
    let err = text(&push.stderr);
    assert!(err.contains(&format!("#1 pushing {name}")), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("#1 sha256:") && l.contains("MB / 3MB") && l.ends_with(" done")),
        "the 3 MB layer's bytes: {err}"
    );
    // a fresh store pulls it
    let store = tempfile::tempdir().unwrap();
    let pull = ok(p
        .cmd(&["pull", &name])
        .env("RBUILD_ROOT", store.path())
        .env("RBUILD_PROGRESS", "plain")
        .output()
        .unwrap());
    let err = text(&pull.stderr);
    assert!(
        err.lines().any(|l| l.starts_with("#1 sha256:")
            && l.contains("3MB / 3MB")
            && l.ends_with(" done")),
        "{err}"
    );
    // a build pulling it: rawjson statuses in BuildKit's schema
    p.file("Dockerfile", &format!("FROM {name}\nRUN true\n"));
    let store = tempfile::tempdir().unwrap();
    let b = ok(p
        .cmd(&["build", "--progress=rawjson", "."])
        .env("RBUILD_ROOT", store.path())
        .output()
        .unwrap());
    let out = text(&b.stderr);
    check_buildx_schema(&out);
    let statuses: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get("statuses").cloned())
        .flat_map(|s| s.as_array().cloned().unwrap_or_default())
        .collect();
    let big = statuses
        .iter()
        .filter(|s| s["total"].as_u64() > Some(2_000_000))
        .collect::<Vec<_>>();
    assert!(!big.is_empty(), "{out}");
    let last = big.last().unwrap();
    assert_eq!(last["current"], last["total"], "{last}");
    assert!(
        last["completed"].is_string() && last["name"] == "downloading",
        "{last}"
    );
    // build --push: the upload's bytes under the build's "pushing image" step
    let pushed = format!(
        "{REGISTRY}/rbuild-test/bytes-build-{}:1",
        std::process::id()
    );
    p.file(
        "Dockerfile",
        "FROM busybox\nRUN head -c 3000000 /dev/urandom > /big2\n",
    );
    let b = ok(p
        .cmd(&["build", "--progress=plain", "--push", "-t", &pushed, "."])
        .output()
        .unwrap());
    let err = text(&b.stderr);
    let step = err
        .lines()
        .find_map(|l| l.strip_suffix(" pushing image").map(str::to_string))
        .unwrap_or_else(|| panic!("no pushing step: {err}"));
    assert!(
        err.lines()
            .any(|l| l.starts_with(&format!("{step} sha256:"))
                && l.contains("MB / 3MB")
                && l.ends_with(" done")),
        "the 3 MB layer's upload bytes under {step}: {err}"
    );
}

#[test]
fn call_outline_targets_and_check_print_buildx_results() {
    require_env();
    let p = Project::new(
        "ARG VERSION=1.2\n# base the build environment\nFROM busybox AS base\nRUN --mount=type=secret,id=token,required true\n\n# app the final image\nfrom base AS app\n# PORT the port to listen on\nARG PORT=8080\nRUN --mount=type=ssh true\n",
    );
    let o = ok(p.run(&["build", "--call=outline", "."]));
    let out = text(&o.stdout);
    assert!(
        out.starts_with("TARGET:      app\nDESCRIPTION: the final image\n\n"),
        "{out}"
    );
    assert!(out.contains("BUILD ARG   VALUE   DESCRIPTION\nVERSION     1.2\nPORT        8080    the port to listen on\n"), "{out}");
    assert!(out.contains("SECRET   REQUIRED\ntoken    true\n"), "{out}");
    assert!(out.contains("SSH       REQUIRED\ndefault\n"), "{out}");
    let o = ok(p.run(&[
        "build",
        "--call=outline,format=json",
        "--target",
        "base",
        ".",
    ]));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["name"], "base");
    assert_eq!(
        v["args"][0],
        serde_json::json!({"name": "VERSION", "value": "1.2", "location": {"sourceIndex": 0, "ranges": [{"start": {"line": 1}, "end": {"line": 1}}]}})
    );
    assert!(v.get("ssh").is_none(), "{v}");
    let o = ok(p.run(&["build", "--call=targets", "."]));
    assert_eq!(
        text(&o.stdout),
        "TARGET        DESCRIPTION\nbase          the build environment\napp (default) the final image\n"
    );
    let o = ok(p.run(&["build", "--call=targets,format=json", "."]));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["targets"][1]["name"], "app");
    assert_eq!(v["targets"][1]["default"], true);
    assert_eq!(v["targets"][0]["base"], "busybox");
    // check: the lowercase `from` is a finding; exit 1 as buildx
    let o = p.run(&["build", "--call=check,format=json", "."]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let w = &v["warnings"][0];
    assert_eq!(w["ruleName"], "ConsistentInstructionCasing", "{v}");
    assert!(w["url"]
        .as_str()
        .unwrap()
        .ends_with("/consistent-instruction-casing/"));
    assert_eq!(w["location"]["ranges"][0]["start"]["line"], 7);
    assert_eq!(v["sources"][0]["filename"], "Dockerfile");
    let o = p.run(&["build", "--call=check", "."]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stdout).contains("WARNING: ConsistentInstructionCasing"));
    // nothing was built
    assert!(text(&ok(p.run(&["images", "-q"])).stdout).is_empty());
    let o = p.run(&["build", "--call=dance", "."]);
    assert_eq!(o.status.code(), Some(2));
    let o = p.run(&["build", "--call=outline", "--target", "nope", "."]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
}
