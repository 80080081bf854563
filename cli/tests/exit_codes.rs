//! Exit codes through the real binary, one test per error path: 1 = the build or command
//! failed (registry refused or unreachable, image missing, no docker daemon, failing step),
//! 2 = usage error (malformed or refused flag values, unknown commands), 3 = a bug in rbuild
//! only (never reached by any input here). Needs root and the test registries
//! (`.ci/setup.sh`: plain 127.0.0.1:5055, TLS + htpasswd 127.0.0.1:5056).
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use common::{require_env, Project, Run, REGISTRY};

use std::fs;
use std::path::PathBuf;

const TLS_REGISTRY: &str = "127.0.0.1:5056";

fn ca_file() -> PathBuf {
    PathBuf::from(
        std::env::var("RBUILD_TEST_WORK").unwrap_or_else(|_| "/tmp/rbuild-test-env".into()),
    )
    .join("tls/ca.crt")
}

fn run(p: &Project, args: &[&str]) -> Run {
    Run {
        out: p.cmd(args).output().unwrap(),
    }
}

fn expect(r: &Run, code: i32, needle: &str) {
    assert_eq!(
        r.code(),
        Some(code),
        "want exit {code}:\nstdout:\n{}\nstderr:\n{}",
        r.stdout(),
        r.stderr()
    );
    assert!(
        r.stderr().contains(needle),
        "stderr lacks {needle:?}:\n{}",
        r.stderr()
    );
    assert!(!r.stderr().contains("panicked"), "{}", r.stderr());
}

/// A project whose store holds busybox as `busybox:latest`.
fn with_busybox() -> Project {
    let p = Project::new("FROM busybox\n");
    run(&p, &["pull", &format!("{REGISTRY}/library/busybox:latest")]);
    let r = run(
        &p,
        &[
            "tag",
            &format!("{REGISTRY}/library/busybox:latest"),
            "busybox:latest",
        ],
    );
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    p
}

#[test]
fn login_with_a_wrong_password_is_a_failure_not_a_bug() {
    let p = Project::new("FROM busybox\n");
    assert!(
        std::net::TcpStream::connect(TLS_REGISTRY).is_ok(),
        "TLS registry not running: run `bash .ci/setup.sh`"
    );
    let certs = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let d = certs.path().join(TLS_REGISTRY);
    fs::create_dir_all(&d).unwrap();
    fs::copy(ca_file(), d.join("ca.crt")).unwrap();
    let mut c = p.cmd(&["login", TLS_REGISTRY, "-u", "rbuild", "--password-stdin"]);
    c.env("RBUILD_CERTS_DIR", certs.path())
        .env("HOME", home.path())
        .env_remove("DOCKER_CONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"not-the-password\n")
        .unwrap();
    let r = Run {
        out: child.wait_with_output().unwrap(),
    };
    expect(&r, 1, TLS_REGISTRY);
    assert!(
        !home.path().join(".docker/config.json").exists(),
        "no credentials are saved"
    );
}

#[test]
fn login_without_a_username_is_a_usage_error() {
    let p = Project::new("");
    expect(&run(&p, &["login", TLS_REGISTRY]), 2, "-u");
}

#[test]
fn push_to_an_unreachable_registry_is_a_failure() {
    let p = with_busybox();
    // port 9 (discard) on loopback: nothing listens there
    let target = "127.0.0.1:9/x/busybox:1";
    assert_eq!(run(&p, &["tag", "busybox", target]).code(), Some(0));
    let r = run(&p, &["push", target]);
    expect(&r, 1, "127.0.0.1:9");
}

#[test]
fn tag_and_rmi_of_a_missing_image_are_failures() {
    let p = Project::new("");
    expect(&run(&p, &["tag", "nothere:1", "other:1"]), 1, "nothere");
    expect(&run(&p, &["rmi", "nothere:1"]), 1, "nothere");
    expect(&run(&p, &["inspect", "nothere:1"]), 1, "nothere");
    expect(&run(&p, &["history", "nothere:1"]), 1, "nothere");
}

#[test]
fn malformed_image_names_are_usage_errors() {
    let p = Project::new("");
    expect(&run(&p, &["tag", "UPPER:case", "x"]), 2, "UPPER");
    expect(&run(&p, &["rmi", "a b"]), 2, "a b");
    expect(
        &run(&p, &["pull", "busybox", "--platform", "linux"]),
        2,
        "--platform",
    );
    expect(
        &run(&p, &["save", "busybox", "--format", "zip"]),
        2,
        "--format",
    );
}

#[test]
fn bad_prune_flags_are_usage_errors() {
    let p = Project::new("");
    expect(
        &run(&p, &["prune", "-f", "--filter", "color=red"]),
        2,
        "--filter",
    );
    expect(
        &run(&p, &["prune", "-f", "--filter", "until=soon"]),
        2,
        "until",
    );
    expect(
        &run(&p, &["prune", "-f", "--keep-storage", "lots"]),
        2,
        "--keep-storage",
    );
}

#[test]
fn an_ssh_key_file_is_a_usage_error() {
    let p = Project::new("FROM busybox\nRUN --mount=type=ssh true\n");
    p.file("id_ed25519", "-----BEGIN OPENSSH PRIVATE KEY-----\n");
    let key = p.path().join("id_ed25519");
    let r = p.build(&["--ssh", &format!("default={}", key.display())]);
    expect(&r, 2, "not a socket");
}

#[test]
fn load_without_a_docker_daemon_is_a_failure() {
    let p = Project::new("FROM busybox\n");
    let r = Run {
        out: p
            .cmd(&["build", "--load", "-t", "x", "."])
            .env("RBUILD_DOCKER", "/nonexistent/docker")
            .output()
            .unwrap(),
    };
    expect(&r, 1, "no docker daemon");
}

#[test]
fn a_failing_step_and_a_missing_base_image_are_build_failures() {
    let p = Project::new("FROM busybox\nRUN exit 4\n");
    expect(&p.build(&[]), 1, "exit code 4");
    let p = Project::new("FROM no/such-image:1\n");
    expect(&p.build(&[]), 1, "no/such-image");
}

#[test]
fn no_input_reaches_the_bug_status() {
    require_env();
    // a sample of hostile invocations: each must be classified (1 or 2), never 3 or a panic
    let p = Project::new("FROM busybox\n");
    for args in [
        vec!["build", "--platform", "linux/amd64/v1/x", "."],
        vec!["build", "-o", "type=", "."],
        vec!["build", "--build-context", "x=/nonexistent", "."],
        vec!["inspect", ""],
        vec!["load", "-i", "/nonexistent"],
        vec!["save", "-o", "/nonexistent/dir/x.tar", "busybox"],
        vec!["build", "-f", "/dev/null", "."],
    ] {
        let r = run(&p, &args);
        let code = r.code();
        assert!(
            code == Some(1) || code == Some(2),
            "{args:?}: exit {code:?}\n{}",
            r.stderr()
        );
        assert!(!r.stderr().contains("panicked"), "{args:?}: {}", r.stderr());
    }
}

#[test]
fn an_untrusted_tls_registry_says_where_the_ca_goes_instead_of_falling_back_to_http() {
    let p = Project::new("FROM 127.0.0.1:5056/library/busybox\n");
    assert!(
        std::net::TcpStream::connect(TLS_REGISTRY).is_ok(),
        "TLS registry not running: run `bash .ci/setup.sh`"
    );
    let empty = tempfile::tempdir().unwrap();
    for args in [
        vec!["pull", "127.0.0.1:5056/library/busybox"],
        vec!["build", "."],
    ] {
        let r = Run {
            out: p
                .cmd(&args)
                .env("RBUILD_CERTS_DIR", empty.path())
                .env_remove("SSL_CERT_FILE")
                .output()
                .unwrap(),
        };
        expect(&r, 1, "certificate is not trusted");
        let err = r.stderr();
        assert!(
            err.contains(&format!("{}/{TLS_REGISTRY}/ca.crt", empty.path().display())),
            "{err}"
        );
        assert!(
            err.contains("RBUILD_CERTS_DIR") && err.contains("SSL_CERT_FILE"),
            "{err}"
        );
        assert!(
            !err.contains("HTTP 400"),
            "no fall-back to plain HTTP: {err}"
        );
    }
}

#[test]
fn a_registry_without_the_image_names_the_repository_it_was_asked_for() {
    let p = Project::new("FROM nothere-image:1\n");
    // docker.io is mirrored to the plain test registry: the path asked there is library/…
    let r = run(&p, &["pull", "nothere-image:1"]);
    expect(&r, 1, "manifest unknown");
    assert!(
        r.stderr().contains(&format!(
            "registry {REGISTRY} has no library/nothere-image:1"
        )),
        "{}",
        r.stderr()
    );
    let r = p.build(&[]);
    expect(&r, 1, "library/nothere-image:1");
}
