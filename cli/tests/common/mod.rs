//! Shared harness for the CLI integration tests: a project directory with its own store, runs
//! of the real `rbuild` binary against the test registry on 127.0.0.1:5055 (mirror of
//! docker.io), and checks of the outcome. Include it with `mod common;`. `users.rs`: running the
//! binary as the unprivileged test users (rootless mode); `image.rs`: skopeo/umoci/tar readers;
//! `progress.rs`: which steps ran, from the plain progress output.

#![allow(dead_code)] // each test crate uses a subset

pub mod image;
pub mod progress;
mod users;
#[allow(unused_imports)] // not every test crate runs as the test users
pub use users::*;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use tempfile::TempDir;

/// The plain test registry (seeded with busybox by `.ci/setup.sh`).
pub const REGISTRY: &str = "127.0.0.1:5055";

/// Fail (never skip) when the tests cannot run here: they need root and the registry.
pub fn require_env() {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let root = status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    assert!(
        root,
        "these tests need root (namespaces, overlayfs, cgroups); run them as root"
    );
    assert!(
        std::net::TcpStream::connect(REGISTRY).is_ok(),
        "the test registry on {REGISTRY} is not running: run `bash .ci/setup.sh` first"
    );
}

/// The host's platform as `linux/<arch>` (Go architecture names).
pub fn host_platform() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "linux/arm64",
        _ => "linux/amd64",
    }
}

/// Fail (never skip) when one of `tools` is not on the PATH.
pub fn require_tools(tools: &[&str]) {
    for tool in tools {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .unwrap()
                .status
                .success(),
            "{tool} is not installed: run `bash .ci/setup.sh` first"
        );
    }
}

/// A build context directory and a store of its own.
pub struct Project {
    pub dir: TempDir,
    pub store: TempDir,
}

/// The outcome of one rbuild run.
pub struct Run {
    pub out: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout(), self.stderr())
    }
    pub fn code(&self) -> Option<i32> {
        self.out.status.code()
    }
    pub fn ok(self) -> Self {
        assert!(
            self.out.status.success(),
            "rbuild failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
            self.out.status,
            self.stdout(),
            self.stderr()
        );
        self
    }
    pub fn fails(self) -> Self {
        assert!(
            !self.out.status.success(),
            "rbuild should have failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }
    /// How many steps the plain progress output marks `CACHED`.
    pub fn cached(&self) -> usize {
        self.stderr().matches("CACHED").count()
    }
}

/// `cmd` (arguments, environment, working directory kept) run through `program PREFIX…`, e.g.
/// a wrapper that restricts it before it execs the command.
pub fn wrapped<I, S>(program: impl AsRef<std::ffi::OsStr>, prefix: I, cmd: &Command) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(program);
    c.args(prefix).arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    c
}

impl Project {
    /// A project whose `Dockerfile` is `dockerfile`.
    pub fn new(dockerfile: &str) -> Self {
        require_env();
        let p = Project {
            dir: tempfile::tempdir().unwrap(),
            store: tempfile::tempdir().unwrap(),
        };
        p.file("Dockerfile", dockerfile);
        p
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write `rel` (parents created) in the project directory.
    pub fn file(&self, rel: &str, content: &str) -> &Self {
        let p = self.dir.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
        self
    }

    /// `rbuild ARGS…` in the project directory with the test environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
        c.args(args)
            .env("RBUILD_ROOT", self.store.path())
            .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
            .env("RBUILD_PROGRESS", "plain")
            .env_remove("RBUILD_RUNTIME")
            .env_remove("SOURCE_DATE_EPOCH")
            .current_dir(self.dir.path());
        c
    }

    /// `rbuild build ARGS… .`
    pub fn build(&self, args: &[&str]) -> Run {
        let mut a = vec!["build"];
        a.extend_from_slice(args);
        a.push(".");
        Run {
            out: self.cmd(&a).output().unwrap(),
        }
    }
}
