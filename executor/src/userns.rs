//! Rootless mode: the whole rbuild process re-runs inside a new user namespace in which it is
//! uid 0 (the podman/buildah "unshare" approach).
//!
//! [`run_in_user_namespace`] (the unprivileged parent) starts the same program again with
//! [`CHILD_ENV`] set and two pipes on fds 3 (go) and 4 (ready). The child calls
//! [`enter_if_child`] first thing in `main()`: it unshares a user and a mount namespace,
//! reports "ready", and waits until the parent has written its id maps:
//!
//! - with `newuidmap`/`newgidmap` (the `uidmap` package) and ranges for the user in
//!   `/etc/subuid` and `/etc/subgid`: 0 → the user's id, 1.. → the subordinate ranges in
//!   file order;
//! - otherwise a single-id map (0 → the user's id; `setgroups` denied), written by the parent
//!   itself. `RBUILD_USERNS_MAP=single` forces it.
//!
//! The child then runs the whole command as root of that namespace: layers unpack with their
//! owners (inside the mapped range), overlayfs is mounted with `userxattr`, and the sandbox
//! helpers it starts inherit the namespace. The parent ignores terminal interrupts (the child
//! gets them too) and exits with the child's status; the child dies with the parent
//! (`PR_SET_PDEATHSIG` = SIGTERM, handled like Ctrl-C).

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::Signal;
use rustix::thread::UnshareFlags;

use crate::error::ExecutorError;
use crate::sys;

/// Environment variable marking the re-executed child (internal; removed on entry).
pub const CHILD_ENV: &str = "_RBUILD_USERNS_CHILD";
/// `single` forces the single-id map even when subordinate ranges exist.
pub const MAP_ENV: &str = "RBUILD_USERNS_MAP";

const GO_FD: i32 = 3;
const READY_FD: i32 = 4;

/// Whether this process runs in a user namespace other than the initial one (its uid map is
/// not the identity over all ids). Read once.
pub fn in_user_namespace() -> bool {
    static IN: OnceLock<bool> = OnceLock::new();
    *IN.get_or_init(|| {
        std::fs::read_to_string("/proc/self/uid_map")
            .map(|m| {
                let lines: Vec<Vec<&str>> =
                    m.lines().map(|l| l.split_whitespace().collect()).collect();
                lines != [vec!["0", "0", "4294967295"]]
            })
            .unwrap_or(false)
    })
}

/// One line of an id map: `inside outside count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First id inside the namespace.
    pub inside: u32,
    /// First id outside (on the host).
    pub outside: u32,
    /// Number of ids.
    pub count: u32,
}

/// The uid and gid maps chosen for the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMaps {
    /// uid map lines.
    pub uids: Vec<IdRange>,
    /// gid map lines.
    pub gids: Vec<IdRange>,
    /// `newuidmap`/`newgidmap` when the maps use subordinate ranges; `None` = single-id map.
    pub tools: Option<(PathBuf, PathBuf)>,
}

/// Subordinate ranges of `user` (name) or `id` in a `/etc/subuid`-format text, in file order.
pub fn parse_subid(text: &str, user: &str, id: u32) -> Vec<(u32, u32)> {
    let id = id.to_string();
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (who, start, count) = (f.next()?, f.next()?, f.next()?);
            if who != user && who != id {
                return None;
            }
            let (start, count) = (start.parse().ok()?, count.parse::<u32>().ok()?);
            (count > 0).then_some((start, count))
        })
        .collect()
}

fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    crate::user::parse_passwd(&passwd)
        .into_iter()
        .find(|e| e.uid == uid)
        .map(|e| e.name.to_string())
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn ranges(own: u32, subs: &[(u32, u32)]) -> Vec<IdRange> {
    let mut out = vec![IdRange {
        inside: 0,
        outside: own,
        count: 1,
    }];
    let mut next = 1u32;
    for &(start, count) in subs {
        out.push(IdRange {
            inside: next,
            outside: start,
            count,
        });
        next = next.saturating_add(count);
    }
    out
}

impl IdMaps {
    /// The maps for the calling user: subordinate ranges when the tools and ranges for both
    /// uids and gids exist (and [`MAP_ENV`] is not `single`), else a single-id map.
    pub fn for_current_user() -> IdMaps {
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        let single = IdMaps {
            uids: ranges(uid, &[]),
            gids: ranges(gid, &[]),
            tools: None,
        };
        if std::env::var(MAP_ENV).as_deref() == Ok("single") {
            return single;
        }
        let (Some(newuidmap), Some(newgidmap)) = (find_tool("newuidmap"), find_tool("newgidmap"))
        else {
            return single;
        };
        let name = user_name(uid)
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_default();
        let read = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
        let subuids = parse_subid(&read("/etc/subuid"), &name, uid);
        let subgids = parse_subid(&read("/etc/subgid"), &name, uid);
        if subuids.is_empty() || subgids.is_empty() {
            return single;
        }
        IdMaps {
            uids: ranges(uid, &subuids),
            gids: ranges(gid, &subgids),
            tools: Some((newuidmap, newgidmap)),
        }
    }

    fn apply(&self, pid: u32) -> Result<(), ExecutorError> {
        match &self.tools {
            Some((newuidmap, newgidmap)) => {
                run_map_tool(newuidmap, pid, &self.uids)?;
                run_map_tool(newgidmap, pid, &self.gids)
            }
            None => {
                let proc = PathBuf::from(format!("/proc/{pid}"));
                write_proc(&proc.join("uid_map"), &map_text(&self.uids))?;
                // Unprivileged gid maps need setgroups(2) denied first.
                write_proc(&proc.join("setgroups"), "deny")?;
                write_proc(&proc.join("gid_map"), &map_text(&self.gids))
            }
        }
    }
}

fn map_text(r: &[IdRange]) -> String {
    r.iter()
        .map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count))
        .collect()
}

fn write_proc(path: &Path, text: &str) -> Result<(), ExecutorError> {
    std::fs::write(path, text).map_err(|e| ExecutorError::sys("write", path, e))
}

fn run_map_tool(tool: &Path, pid: u32, r: &[IdRange]) -> Result<(), ExecutorError> {
    let mut cmd = Command::new(tool);
    cmd.arg(pid.to_string());
    for r in r {
        cmd.args([
            r.inside.to_string(),
            r.outside.to_string(),
            r.count.to_string(),
        ]);
    }
    let out = cmd
        .output()
        .map_err(|e| ExecutorError::sys("run", tool, e))?;
    if !out.status.success() {
        return Err(ExecutorError::Setup(format!(
            "{} failed ({}): {}; check the ranges of this user in /etc/subuid and /etc/subgid, \
             or set {MAP_ENV}=single",
            tool.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Parent side: run `program args…` (normally `/proc/self/exe` with this process's own
/// arguments) in a new user namespace, with `env` added, and return its exit status as a
/// process exit code (128 + signal when killed). Call it while the process is still
/// single-threaded.
pub fn run_in_user_namespace(
    program: &Path,
    args: &[OsString],
    env: &[(OsString, OsString)],
) -> Result<u8, ExecutorError> {
    let maps = IdMaps::for_current_user();
    let (go_r, go_w) =
        pipe_with(PipeFlags::CLOEXEC).map_err(|e| ExecutorError::sys("pipe", "", e))?;
    let (ready_r, ready_w) =
        pipe_with(PipeFlags::CLOEXEC).map_err(|e| ExecutorError::sys("pipe", "", e))?;
    let mut cmd = Command::new(program);
    cmd.args(args).env(CHILD_ENV, "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    sys::pass_fd_to_child(&mut cmd, go_r.as_raw_fd(), GO_FD);
    sys::pass_fd_to_child(&mut cmd, ready_w.as_raw_fd(), READY_FD);
    let mut child = cmd.spawn().map_err(|e| ExecutorError::SpawnHelper {
        program: program.to_path_buf(),
        source: e,
    })?;
    drop(cmd);
    drop(go_r);
    drop(ready_w);
    // The terminal sends Ctrl-C to the whole process group: the child handles it.
    sys::ignore_terminal_interrupts();
    let mut ready = [0u8; 1];
    let got = File::from(ready_r).read(&mut ready).unwrap_or(0);
    if got == 1 {
        let mut go = File::from(go_w);
        match maps.apply(child.id()) {
            Ok(()) => {
                let _ = go.write_all(b"1");
            }
            Err(e) => {
                drop(go); // the child sees EOF and exits quietly
                let _ = child.wait();
                return Err(e);
            }
        }
    } else {
        drop(go_w);
    }
    let status = child.wait().map_err(|e| ExecutorError::HelperIo {
        op: "wait for the user-namespace child",
        source: e,
    })?;
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(s)) => u8::try_from(128 + s).unwrap_or(1),
        (None, None) => 1,
    })
}

/// Child side, called first thing in `main()`: when [`CHILD_ENV`] is set, enter the new user
/// and mount namespaces and wait for the parent's id maps. Returns `Ok(false)` when this
/// process is not such a child. On `Err` the process must exit (non-zero).
pub fn enter_if_child() -> Result<bool, ExecutorError> {
    if std::env::var_os(CHILD_ENV).is_none() {
        return Ok(false);
    }
    std::env::remove_var(CHILD_ENV);
    let go = File::from(
        sys::adopt_inherited_fd(GO_FD).map_err(|e| ExecutorError::sys("adopt fd 3", "", e))?,
    );
    let mut ready = File::from(
        sys::adopt_inherited_fd(READY_FD).map_err(|e| ExecutorError::sys("adopt fd 4", "", e))?,
    );
    sys::unshare(UnshareFlags::NEWUSER | UnshareFlags::NEWNS).map_err(|e| {
        ExecutorError::sys(
            "unshare(CLONE_NEWUSER) (rootless builds need unprivileged user namespaces; \
             check /proc/sys/user/max_user_namespaces and \
             kernel.apparmor_restrict_unprivileged_userns; inside a container, whose seccomp \
             profile — Docker's default — refuses them, run rbuild as root in the container \
             instead: it then builds with chroot isolation, see docs/ci.md)",
            "",
            e,
        )
    })?;
    ready
        .write_all(b"1")
        .map_err(|e| ExecutorError::sys("write ready pipe", "", e))?;
    drop(ready);
    let mut byte = [0u8; 1];
    let mut go = go;
    if go.read(&mut byte).unwrap_or(0) != 1 {
        // The parent failed to write the maps and reports why.
        std::process::exit(1);
    }
    drop(go);
    // Supplementary groups of the host user are not mapped; drop them when allowed (they
    // stay, shown as the overflow gid, with a single-id map where setgroups is denied).
    let _ = rustix::thread::set_thread_groups(&[]);
    rustix::process::set_parent_process_death_signal(Some(Signal::TERM))
        .map_err(|e| ExecutorError::sys("prctl(PR_SET_PDEATHSIG)", "", e))?;
    crate::mounts::make_rprivate()?;
    Ok(true)
}

/// Whether `id` is mapped in this process's `uid_map` or `gid_map` (`which`).
pub(crate) fn id_mapped(which: &str, id: u32) -> bool {
    let text = std::fs::read_to_string(format!("/proc/self/{which}")).unwrap_or_default();
    text.lines().any(|l| {
        let f: Vec<u64> = l
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        matches!(f[..], [inside, _, count] if (inside..inside + count).contains(&u64::from(id)))
    })
}

/// Human description of this process's id mapping (for messages), e.g. `0 → 1000, 1..65537 →
/// 200000..265536`.
pub fn describe_mapping() -> String {
    let text = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let mut parts = Vec::new();
    for l in text.lines() {
        let f: Vec<u64> = l
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [inside, outside, count] = f[..] {
            if count == 1 {
                parts.push(format!("{inside} → {outside}"));
            } else {
                parts.push(format!(
                    "{inside}..{} → {outside}..{}",
                    inside + count - 1,
                    outside + count - 1
                ));
            }
        }
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subid_ranges_by_name_or_uid_in_file_order() {
        let text = "alice:100000:65536\nbob:200000:10\n1001:300000:5\nbob:400000:0\nbad\nbob:x:1\n";
        assert_eq!(
            parse_subid(text, "bob", 1001),
            vec![(200000, 10), (300000, 5)]
        );
        assert_eq!(parse_subid(text, "carol", 7), Vec::<(u32, u32)>::new());
        let r = ranges(1001, &[(200000, 10), (300000, 5)]);
        assert_eq!(map_text(&r), "0 1001 1\n1 200000 10\n11 300000 5\n");
    }
}
