//! rbuild-executor: runs one build-step process in an isolated sandbox.
//!
//! The solver is multi-threaded and must not fork-and-do-work, so the sandbox
//! is set up by a *helper process*: a re-exec of a binary (the `rbuild`
//! binary in production) with [`HELPER_ARG`] as its first argument. The
//! binary's `main()` must call [`helper_main`] first thing when it sees that
//! argument.
//!
//! Protocol between [`Executor::run`] (parent) and the helper:
//! - the [`ExecSpec`] is written as JSON on the helper's stdin (then closed);
//! - the helper's stdout/stderr are the step's stdout/stderr (streamed to the
//!   caller's callback);
//! - fd 3 of the helper is a status pipe on which it writes one JSON report
//!   (exit status, setup failure or exec failure) before exiting.
//!
//! The helper joins the step's network namespace ([`Network::Isolated`]: one of the
//! executor's pool, see `net.rs`) or unshares one ([`Network::None`]), unshares pid/uts/ipc
//! namespaces,
//! forks a child that becomes pid 1 of the new pid namespace, which creates a
//! private mount namespace, mounts the rootfs (overlayfs), `/proc`, `/sys`
//! (ro), a minimal `/dev`, binds generated `/etc/hosts` and `/etc/resolv.conf` (no
//! `/etc/hostname`: BuildKit's RUN has none), pivots into the rootfs, masks sensitive `/proc` paths,
//! drops capabilities to Docker's default set, sets `no_new_privs`, switches
//! to the requested user, and execs the step's program. Mount-target stubs
//! created in the rootfs are removed from the layer afterwards.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cgroup;
mod chroot;
mod error;
#[allow(clippy::print_stderr)] // the helper reports on stderr when its status fd is gone
mod helper;
mod mounts;
mod net;
mod private;
mod protocol;
mod run;
mod runc;
mod sandbox;
mod seccomp;
#[allow(unsafe_code)] // the only module with unsafe code
mod sys;
mod user;
pub use user::{parse_group, parse_passwd, GroupEntry, PasswdEntry};
pub mod userns;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use error::ExecutorError;
pub use helper::helper_main;
pub use mounts::{
    opaque_xattr, overlay_supported, sandbox_supported, with_private_mounts, Mounter,
};
pub use net::NETNS_ARG;
pub use run::{kill_running_containers, Executor};

/// Mark every file descriptor above stderr close-on-exec, so that nothing the process runs
/// later (sandbox helpers, runc, git, credential helpers, newuidmap…) inherits an fd its own
/// parent leaked into it. Call it first thing in `main()`; [`helper_main`] and the sandbox
/// init do it again for themselves.
pub fn close_inherited_fds() -> Result<(), ExecutorError> {
    sys::cloexec_from(3).map_err(|e| ExecutorError::sys("mark inherited fds close-on-exec", "", e))
}

/// Check a tmpfs size (`/dev/shm`, `RUN --mount=type=tmpfs,size=`): at most the host's
/// physical memory. A larger size limits nothing, and one the kernel's option parser cannot
/// represent wraps to 0, which tmpfs takes as "unlimited".
pub fn check_tmpfs_size(size: u64) -> Result<(), String> {
    let info = rustix::system::sysinfo();
    // `totalram` is a C `unsigned long`: u32 on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let total = u64::from(info.totalram).saturating_mul(u64::from(info.mem_unit.max(1)));
    if size > total {
        return Err(format!(
            "{size} bytes is more than this host's memory ({total} bytes)"
        ));
    }
    Ok(())
}

/// The tmpfs sizes of a spec, checked with [`check_tmpfs_size`].
fn check_spec_sizes(spec: &ExecSpec) -> Result<(), ExecutorError> {
    if let Some(s) = spec.shm_size {
        check_tmpfs_size(s)
            .map_err(|e| ExecutorError::InvalidSpec(format!("/dev/shm size: {e}")))?;
    }
    for m in &spec.extra_mounts {
        if let ExtraMount::Tmpfs {
            target,
            size: Some(s),
        } = m
        {
            check_tmpfs_size(*s).map_err(|e| {
                ExecutorError::InvalidSpec(format!("tmpfs mount {target}: size: {e}"))
            })?;
        }
    }
    Ok(())
}

/// First argument that makes a binary act as the sandbox helper.
pub const HELPER_ARG: &str = "__rbuild-sandbox";

/// How to start the helper process: `program args…` (e.g. `current_exe()`
/// with `[HELPER_ARG]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helper {
    /// Program to execute.
    pub program: PathBuf,
    /// Its arguments (must make it call [`helper_main`]).
    pub args: Vec<String>,
}

/// The root filesystem of the step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rootfs {
    /// overlay: lowers top-most FIRST (overlayfs lowerdir order); upper gets
    /// the changes; work is an empty dir on the same fs as upper. With zero
    /// lowers the upper dir itself is bind-mounted read-write.
    Overlay {
        /// Lower layers, top-most first.
        lowers: Vec<PathBuf>,
        /// Upper (writable) directory: receives the step's changes.
        upper: PathBuf,
        /// overlayfs work directory (empty, same filesystem as `upper`).
        work: PathBuf,
    },
    /// Copy fallback: run directly in this directory (bind-mounted read-write
    /// as the root). The caller computes the diff itself.
    Dir(PathBuf),
}

/// Network mode of the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// An isolated network namespace with outbound access through a user-space NAT
    /// (slirp4netns), without the host's loopback; from the executor's pool (see `net.rs`).
    /// The default of RUN steps.
    Isolated,
    /// Share the host's network namespace (`--network=host`, an explicit opt-in).
    Host,
    /// New network namespace with only the loopback interface, up.
    None,
}

/// An additional mount inside the sandbox. `Debug` never shows a file's contents (secrets).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExtraMount {
    /// Recursive bind mount of a host path (file or directory).
    Bind {
        /// Host path.
        source: PathBuf,
        /// Absolute path inside the sandbox.
        target: String,
        /// Mount read-only.
        readonly: bool,
    },
    /// A merged view of layer directories (overlay of `lowers`, top-most first; none = an
    /// empty directory), of which the sub path `source` is bound at `target`. Read-only unless
    /// `writable`; writes then go to a throwaway upper dir on a private tmpfs and are discarded
    /// when the step ends.
    Layers {
        /// Layer directories, top-most first.
        lowers: Vec<PathBuf>,
        /// Path inside the merged view (symlinks resolved inside it); `""` or `/` = all.
        source: String,
        /// Absolute path inside the sandbox.
        target: String,
        /// Writes allowed (and discarded).
        writable: bool,
    },
    /// A read-only file with these contents on a private tmpfs (secrets: the bytes never touch
    /// a disk).
    File {
        /// The file's bytes.
        contents: Vec<u8>,
        /// Absolute path inside the sandbox.
        target: String,
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// A fresh tmpfs.
    Tmpfs {
        /// Absolute path inside the sandbox.
        target: String,
        /// Size limit in bytes (kernel default: half of RAM).
        size: Option<u64>,
    },
}

impl std::fmt::Debug for ExtraMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExtraMount::Bind {
                source,
                target,
                readonly,
            } => f
                .debug_struct("Bind")
                .field("source", source)
                .field("target", target)
                .field("readonly", readonly)
                .finish(),
            ExtraMount::Layers {
                lowers,
                source,
                target,
                writable,
            } => f
                .debug_struct("Layers")
                .field("lowers", lowers)
                .field("source", source)
                .field("target", target)
                .field("writable", writable)
                .finish(),
            ExtraMount::File {
                contents,
                target,
                mode,
                uid,
                gid,
            } => f
                .debug_struct("File")
                .field("contents", &format_args!("<{} bytes>", contents.len()))
                .field("target", target)
                .field("mode", &format_args!("{mode:o}"))
                .field("uid", uid)
                .field("gid", gid)
                .finish(),
            ExtraMount::Tmpfs { target, size } => f
                .debug_struct("Tmpfs")
                .field("target", target)
                .field("size", size)
                .finish(),
        }
    }
}

/// Which runtime runs the steps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Runtime {
    /// The built-in namespace sandbox (default).
    #[default]
    Builtin,
    /// `runc run` of an OCI runtime bundle prepared by the helper.
    Runc {
        /// The runc binary.
        binary: PathBuf,
    },
    /// Reduced isolation for environments where the namespace sandbox cannot be set up
    /// (unprivileged containers): a chroot into the copy snapshotter's root, with the host's
    /// network and whichever namespaces can be made (see `chroot.rs`, docs/sandbox.md).
    Chroot,
}

impl Runtime {
    /// `builtin` or `runc` (found in `PATH`).
    pub fn from_name(name: &str) -> Result<Runtime, ExecutorError> {
        match name {
            "builtin" | "" => Ok(Runtime::Builtin),
            "runc" => find_in_path("runc")
                .map(|binary| Runtime::Runc { binary })
                .ok_or_else(|| ExecutorError::InvalidSpec("runc not found in PATH".into())),
            other => Err(ExecutorError::InvalidSpec(format!(
                "unknown runtime {other:?} (builtin, runc)"
            ))),
        }
    }
}

/// The file `name` in a directory of `PATH`, if there is one.
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Security mode of the step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Security {
    /// Docker's defaults: default capabilities, seccomp, no_new_privs, masked /proc paths.
    #[default]
    Sandbox,
    /// Privileged (`RUN --security=insecure`): every capability, no seccomp, no masking.
    Insecure,
}

/// Everything needed to run one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Root filesystem.
    pub rootfs: Rootfs,
    /// argv; `args[0]` is resolved via `PATH` from `env` when it has no `/`.
    pub args: Vec<String>,
    /// Environment, exactly as given (`KEY=VALUE`).
    pub env: Vec<String>,
    /// Working directory (absolute); created when missing, like Docker.
    pub cwd: String,
    /// `""` = root; `"1000"`, `"1000:1000"`, `"app"`, `"app:grp"`, resolved
    /// against the rootfs's `/etc/passwd` and `/etc/group`.
    pub user: String,
    /// Hostname of the sandbox (its UTS namespace's, and in `/etc/hosts`).
    pub hostname: String,
    /// Network mode.
    pub network: Network,
    /// Additional mounts, applied in order.
    pub extra_mounts: Vec<ExtraMount>,
    /// Extra `/etc/hosts` entries: (hostname, ip).
    pub extra_hosts: Vec<(String, String)>,
    /// Security mode.
    #[serde(default)]
    pub security: Security,
    /// Size of `/dev/shm` in bytes (`None`: 64 MiB, like Docker).
    #[serde(default)]
    pub shm_size: Option<u64>,
    /// Resource limits set before the program starts (`--ulimit`).
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    /// cgroup limits for the step (`--memory`, `--cpu-quota`, …).
    #[serde(default)]
    pub resources: Resources,
}

/// A resource limit (`setrlimit(2)`); `u64::MAX` is unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// Docker's name: `core cpu data fsize locks memlock msgqueue nice nofile nproc rss rtprio
    /// rttime sigpending stack`.
    pub name: String,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// cgroup limits of a step (see [`cgroup`]); all `None` = no cgroup is created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Memory limit in bytes (memory + swap: the step cannot swap beyond it).
    pub memory: Option<u64>,
    /// CPU time in microseconds per period (CFS quota).
    pub cpu_quota: Option<u64>,
    /// CFS period in microseconds (default 100000).
    pub cpu_period: Option<u64>,
}

impl Resources {
    /// True when no limit is set.
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.cpu_quota.is_none() && self.cpu_period.is_none()
    }
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How the step's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code when it exited normally.
    pub code: Option<i32>,
    /// Signal number when it was killed by a signal.
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of the step (its cgroup hit the memory limit).
    #[serde(default)]
    pub oom_killed: bool,
}

impl ExitStatus {
    /// True when the process exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code: {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            (None, None) => write!(f, "unknown exit status"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_file_contents() {
        let m = ExtraMount::File {
            contents: b"hunter2".to_vec(),
            target: "/run/secrets/x".into(),
            mode: 0o400,
            uid: 0,
            gid: 0,
        };
        let text = format!("{m:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("104, 117"),
            "{text}"
        );
        assert!(text.contains("<7 bytes>") && text.contains("400"), "{text}");
    }
}
