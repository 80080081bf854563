//! Helpers shared by the CLI integration tests (`mod common;`): running the real `rbuild`
//! binary as the unprivileged test users that `.ci/setup.sh` creates (rootless mode).
//!
//! `rbuild-test` has subordinate id ranges in `/etc/subuid` and `/etc/subgid` (rbuild maps them
//! with newuidmap/newgidmap); `rbuild-nosub` has none (single-id map). A missing user or tool
//! fails the test with the reason; nothing is skipped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The test user with subordinate id ranges.
pub const RANGED_USER: &str = "rbuild-test";
/// The test user without subordinate ranges.
pub const SINGLE_USER: &str = "rbuild-nosub";

/// An unprivileged user of this machine.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// Login name.
    pub name: String,
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Home directory.
    pub home: PathBuf,
}

/// The passwd entry of `name`; panics with the fix when it is missing, or when the tools
/// rootless mode needs are not installed.
pub fn test_user(name: &str) -> TestUser {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let f: Vec<&str> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 5 && f[0] == name)
        .unwrap_or_else(|| {
            panic!("test user {name} does not exist: run `bash .ci/setup.sh` first (as root)")
        });
    for tool in ["newuidmap", "newgidmap", "setpriv"] {
        assert!(
            ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
                .iter()
                .any(|d| Path::new(d).join(tool).is_file()),
            "{tool} is not installed: run `bash .ci/setup.sh` first (packages uidmap, util-linux)"
        );
    }
    if name == RANGED_USER {
        for f in ["/etc/subuid", "/etc/subgid"] {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{name}:"))),
                "{name} has no range in {f}: run `bash .ci/setup.sh` first"
            );
        }
    }
    TestUser {
        name: name.to_string(),
        uid: f[2].parse().unwrap(),
        gid: f[3].parse().unwrap(),
        home: PathBuf::from(f[5]),
    }
}

impl TestUser {
    /// `cmd` (program, arguments, environment, working directory) run as this user through
    /// `setpriv`, with `HOME`, `USER` and `LOGNAME` of the user.
    pub fn wrap(&self, cmd: &Command) -> Command {
        let mut c = super::wrapped(
            "setpriv",
            [
                format!("--reuid={}", self.uid),
                format!("--regid={}", self.gid),
                "--init-groups".into(),
                "--".into(),
            ],
            cmd,
        );
        c.env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name);
        c
    }

    /// Give `dir` to this user (a store root the user's rbuild writes to).
    pub fn own(&self, dir: &Path) {
        std::os::unix::fs::chown(dir, Some(self.uid), Some(self.gid)).unwrap();
    }

    /// Give everything under `dir` to this user (`chown -R`).
    pub fn own_tree(&self, dir: &Path) {
        let st = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", self.uid, self.gid))
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "chown -R {}", dir.display());
    }
}

/// Make a root-created directory (tempfile makes them 0700) readable by other users, e.g. a
/// build context a test user's rbuild reads.
pub fn open_up(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}
