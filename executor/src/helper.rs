//! Helper process side: [`helper_main`] reads the spec, prepares generated
//! files, unshares namespaces, forks the sandbox init (pid 1 of the new pid
//! namespace, see `sandbox.rs`), waits for it, removes mount stubs from the
//! layer and reports the outcome to the parent on fd 3.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::{waitpid, Signal, WaitOptions};
use rustix::thread::UnshareFlags;

use crate::error::ExecutorError;
use crate::protocol::{HelperInput, HelperReport, InitMsg, STATUS_FD};
use crate::sys::{self, Fork};
use crate::{ExecSpec, ExitStatus, Network, Rootfs, Runtime};

/// Hostname used when the spec leaves it empty (same as BuildKit).
const DEFAULT_HOSTNAME: &str = "buildkitsandbox";

/// Entry point for the helper process: the binary's `main()` calls this
/// first thing when `std::env::args().nth(1) == Some(HELPER_ARG)`. Reads the
/// [`ExecSpec`] as JSON from stdin, runs the step, writes the report to fd 3
/// and exits. Never returns.
pub fn helper_main() -> ! {
    match std::env::args().next_back().as_deref() {
        Some(crate::net::NETNS_ARG) => crate::net::holder_main(),
        Some(PROC_PROBE_ARG) => proc_probe_main(),
        _ => {}
    }
    let status = sys::adopt_inherited_fd(STATUS_FD);
    let report = match run_helper() {
        Ok(r) => r,
        // The parent wraps the message in ExecutorError::Setup again: don't say it twice.
        Err(ExecutorError::Setup(message)) => HelperReport::SetupFailed { message },
        Err(e) => HelperReport::SetupFailed {
            message: e.to_string(),
        },
    };
    let line = serde_json::to_string(&report).unwrap_or_else(|e| {
        format!("{{\"SetupFailed\":{{\"message\":\"cannot encode report: {e}\"}}}}")
    });
    match status {
        Ok(fd) => {
            let mut f = File::from(fd);
            let _ = writeln!(f, "{line}");
        }
        Err(e) => eprintln!("rbuild sandbox helper: no status fd ({e}); report: {line}"),
    }
    std::process::exit(0)
}

/// Last argument that makes the helper probe whether the sandbox can mount a new `/proc` here
/// (see [`crate::sandbox_supported`]).
pub(crate) const PROC_PROBE_ARG: &str = "__rbuild-probe-proc";

/// The `/proc` probe: in a new mount and pid namespace, the first process of that pid
/// namespace mounts a proc over `/proc` (as the sandbox's init does); exit status 0 when it
/// could. In a user namespace the kernel refuses it where parts of the current `/proc` are
/// hidden (a container runtime's masked paths). Never returns.
fn proc_probe_main() -> ! {
    let mountable = (|| -> Result<bool, ExecutorError> {
        sys::unshare(UnshareFlags::NEWNS | UnshareFlags::NEWPID)
            .map_err(|e| ExecutorError::sys("unshare", "", e))?;
        crate::mounts::make_rprivate()?;
        match sys::fork_single_threaded().map_err(|e| ExecutorError::sys("fork", "", e))? {
            Fork::Child => {
                let r = rustix::mount::mount(
                    "proc",
                    "/proc",
                    "proc",
                    rustix::mount::MountFlags::NOSUID
                        | rustix::mount::MountFlags::NODEV
                        | rustix::mount::MountFlags::NOEXEC,
                    None::<&std::ffi::CStr>,
                );
                std::process::exit(i32::from(r.is_err()))
            }
            Fork::Parent(pid) => loop {
                match waitpid(Some(pid), WaitOptions::empty()) {
                    Ok(Some((_, st))) => break Ok(st.exit_status() == Some(0)),
                    Ok(None) | Err(Errno::INTR) => continue,
                    Err(e) => break Err(ExecutorError::sys("waitpid", "", e)),
                }
            },
        }
    })();
    std::process::exit(i32::from(!matches!(mountable, Ok(true))))
}

/// Prefix of the scratch directories in `$TMPDIR`.
const SCRATCH_PREFIX: &str = ".rbuild-sandbox-";

/// Scratch directory of one run (host side): the rootfs mount point and the
/// generated files. Removed (non-recursively, file by file) on drop. Its `lock` file is
/// `flock`ed while the helper (or the sandbox init) lives, so that a later rbuild can tell a
/// scratch dir left by a killed helper from a live one ([`sweep_stale_scratch`]).
pub(crate) struct Scratch {
    lock: std::os::fd::OwnedFd,
    pub(crate) base: PathBuf,
    pub(crate) root: PathBuf,
    pub(crate) hosts: PathBuf,
    pub(crate) resolv: PathBuf,
    /// Mount point for the sandbox's private tmpfs (secrets, throwaway uppers, views).
    pub(crate) mnt: PathBuf,
}

impl Scratch {
    fn create(spec: &ExecSpec) -> Result<Self, ExecutorError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let base =
            std::env::temp_dir().join(format!("{SCRATCH_PREFIX}{}-{nanos}", std::process::id()));
        std::fs::create_dir(&base)
            .map_err(|e| ExecutorError::sys("create scratch dir", &base, e))?;
        // The lock file appears under its name only once it is locked (made under another
        // name, locked, renamed): a sweeping process that finds `lock` unlocked knows its
        // helper is gone, and one that finds no `lock` leaves a young directory alone.
        let lock_path = base.join("lock");
        let new_path = base.join("lock.new");
        let lock = rustix::fs::open(
            &new_path,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| ExecutorError::sys("create", &new_path, e))?;
        rustix::fs::flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| ExecutorError::sys("flock", &new_path, e))?;
        std::fs::rename(&new_path, &lock_path)
            .map_err(|e| ExecutorError::sys("rename", &lock_path, e))?;
        let s = Scratch {
            lock,
            root: base.join("root"),
            hosts: base.join("hosts"),
            resolv: base.join("resolv.conf"),
            mnt: base.join("mnt"),
            base,
        };
        std::fs::create_dir(&s.root).map_err(|e| ExecutorError::sys("mkdir", &s.root, e))?;
        std::fs::create_dir(&s.mnt).map_err(|e| ExecutorError::sys("mkdir", &s.mnt, e))?;
        let hostname = effective_hostname(spec);
        let write = |p: &Path, content: String| {
            std::fs::write(p, content).map_err(|e| ExecutorError::sys("write", p, e))
        };
        write(&s.hosts, hosts_file(hostname, &spec.extra_hosts))?;
        write(&s.resolv, resolv_conf())?;
        Ok(s)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for f in [&self.hosts, &self.resolv] {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_file(self.base.join("lock"));
        let _ = &self.lock;
        // Never remove recursively: `root` is a mount point in the sandbox.
        let _ = std::fs::remove_dir(&self.root);
        let _ = std::fs::remove_dir(&self.mnt);
        let _ = std::fs::remove_dir(&self.base);
    }
}

/// Remove the scratch directories of helpers that are gone (killed with rbuild: `kill -9`,
/// OOM, power loss). Once per process. Only directories of this user whose `lock` file nobody
/// holds (or, without one, older than a minute: made by an older rbuild, or a helper killed
/// between `mkdir` and the lock); symlinks are never followed (`$TMPDIR` may be a shared
/// `/tmp` where others plant them) and a live helper's directory is never touched. A dead
/// helper's mounts died with its mount namespace, so what is left are plain files and dirs.
pub(crate) fn sweep_stale_scratch() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        let euid = rustix::process::geteuid().as_raw();
        for ent in dir.flatten() {
            if !ent
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(SCRATCH_PREFIX))
            {
                continue;
            }
            let path = ent.path();
            let Ok(m) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if !m.is_dir() || m.uid() != euid {
                continue;
            }
            let Ok(dirfd) = rustix::fs::open(
                &path,
                OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            ) else {
                continue;
            };
            let lock = rustix::fs::openat(
                &dirfd,
                "lock",
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            );
            let stale = match &lock {
                // `lock` exists only once its helper holds it (see `Scratch::create`).
                Ok(l) => rustix::fs::flock(l, FlockOperation::NonBlockingLockExclusive).is_ok(),
                // Not locked yet (being made), or an old layout: only when a minute old.
                Err(Errno::NOENT) => m
                    .modified()
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(60)),
                Err(_) => false,
            };
            if stale {
                // Symlink-safe: never follows a link inside the tree.
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    });
}

pub(crate) fn effective_hostname(spec: &ExecSpec) -> &str {
    if spec.hostname.is_empty() {
        DEFAULT_HOSTNAME
    } else {
        &spec.hostname
    }
}

fn hosts_file(hostname: &str, extra: &[(String, String)]) -> String {
    let mut s =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (a, b) in extra {
        // (hostname, ip); tolerate (ip, hostname).
        let (host, ip) =
            if a.parse::<std::net::IpAddr>().is_ok() && b.parse::<std::net::IpAddr>().is_err() {
                (b, a)
            } else {
                (a, b)
            };
        s.push_str(&format!("{ip}\t{host}\n"));
    }
    s
}

/// The host's resolv.conf, or Google DNS when it only has local resolvers
/// (which are unreachable from a separate network namespace or a
/// systemd-resolved stub), like Docker.
fn resolv_conf() -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut out = String::new();
    let mut has_remote = false;
    for line in host.lines() {
        let t = line.trim();
        if let Some(ns) = t.strip_prefix("nameserver") {
            let ns = ns.trim();
            let local = ns.starts_with("127.") || ns == "::1" || ns.is_empty();
            if local {
                continue;
            }
            has_remote = true;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !has_remote {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    out
}

fn run_helper() -> Result<HelperReport, ExecutorError> {
    // Whoever started the helper (the executor is a library): no inherited fd but 0-2 may
    // reach runc or the step. The status fd (3) is close-on-exec already.
    sys::cloexec_from(3)
        .map_err(|e| ExecutorError::sys("mark inherited fds close-on-exec", "", e))?;
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| ExecutorError::sys("read spec from stdin", "", e))?;
    let HelperInput {
        spec,
        runtime,
        netns,
    } = serde_json::from_slice(&input)
        .map_err(|e| ExecutorError::InvalidSpec(format!("decode: {e}")))?;
    let netns = match (spec.network, netns) {
        (Network::Isolated, Some(p)) => Some(p),
        // Chroot isolation: the host's network (`chroot.rs`).
        (Network::Isolated, None) if runtime == Runtime::Chroot => None,
        (Network::Isolated, None) => {
            return Err(ExecutorError::InvalidSpec(
                "isolated network without a namespace".into(),
            ))
        }
        _ => None,
    };
    if spec.args.is_empty() {
        return Err(ExecutorError::InvalidSpec("args is empty".into()));
    }
    if !spec.cwd.is_empty() && !spec.cwd.starts_with('/') {
        return Err(ExecutorError::InvalidSpec(format!(
            "cwd {:?} is not absolute",
            spec.cwd
        )));
    }
    let devnull =
        File::open("/dev/null").map_err(|e| ExecutorError::sys("open", "/dev/null", e))?;
    rustix::stdio::dup2_stdin(&devnull)
        .map_err(|e| ExecutorError::sys("dup2 /dev/null to stdin", "", e))?;
    drop(devnull);

    // The executor that started us; the runc path watches for its death (see runc::wait).
    let parent = rustix::process::getppid();
    let scratch = Scratch::create(&spec)?;
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(|e| ExecutorError::sys("prctl(PR_SET_PDEATHSIG)", "", e))?;
    // The step's cgroup (limits): joined before anything of the step starts, so the step's
    // init, runc and every process they start are inside; removed when `cgroup` drops.
    let mut cgroup = crate::cgroup::StepCgroup::create(&spec.resources)?;
    if let Some(cg) = &mut cgroup {
        cg.join()?;
    }
    if let Runtime::Runc { binary } = &runtime {
        let views = cgroup.as_ref().map(|c| c.views()).unwrap_or_default();
        let (report, stubs, copyups) =
            crate::runc::run(&spec, &scratch, &views, binary, netns.as_deref(), parent)?;
        remove_stubs(&spec.rootfs, &stubs, &copyups);
        drop(scratch);
        return Ok(with_oom(report, cgroup.as_ref()));
    }
    if runtime == Runtime::Chroot {
        let report = crate::chroot::run(&spec, &scratch)?;
        drop(scratch);
        return Ok(with_oom(report, cgroup.as_ref()));
    }
    let mut flags = UnshareFlags::NEWPID
        | UnshareFlags::NEWUTS
        | UnshareFlags::NEWIPC
        | UnshareFlags::NEWCGROUP;
    match &netns {
        Some(path) => join_netns(path)?,
        None if spec.network == Network::None => flags |= UnshareFlags::NEWNET,
        None => {}
    }
    sys::unshare(flags).map_err(|e| ExecutorError::sys("unshare namespaces", "", e))?;
    let (msg_r, msg_w) =
        pipe_with(PipeFlags::CLOEXEC).map_err(|e| ExecutorError::sys("pipe", "", e))?;

    match sys::fork_single_threaded().map_err(|e| ExecutorError::sys("fork", "", e))? {
        Fork::Child => {
            drop(msg_r);
            let mut w = File::from(msg_w);
            let views = cgroup.as_ref().map(|c| c.views()).unwrap_or_default();
            let report = crate::sandbox::init(&spec, &scratch, &views, &mut w);
            if let Ok(line) = serde_json::to_string(&InitMsg::Failed(report)) {
                let _ = writeln!(w, "{line}");
            }
            // Exit without running destructors: the helper owns `scratch`.
            std::process::exit(1)
        }
        Fork::Parent(pid) => {
            drop(msg_w);
            // The step (forked above, so it keeps the original value) is the OOM killer's
            // victim when it exceeds its memory limit, never this helper: it leaves the step's
            // cgroup now that the step's init was born inside (a second OOM kill, while the
            // killed step's memory is still charged, could otherwise take the last process
            // left there, this helper, and the step would end without a report).
            shield_from_oom_killer();
            if let Some(cg) = &mut cgroup {
                cg.leave();
            }
            let mut stubs: Vec<(String, bool)> = Vec::new();
            let mut copyups: Vec<String> = Vec::new();
            let mut failed = None;
            for line in BufReader::new(File::from(msg_r)).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<InitMsg>(&line) {
                    Ok(InitMsg::Stub { path, whiteout }) => stubs.push((path, whiteout)),
                    Ok(InitMsg::CopyUp { path }) => copyups.push(path),
                    Ok(InitMsg::Failed(r)) => failed = Some(r),
                    Err(e) => {
                        failed = Some(HelperReport::SetupFailed {
                            message: format!("bad message from sandbox init: {e}"),
                        })
                    }
                }
            }
            let status = loop {
                match waitpid(Some(pid), WaitOptions::empty()) {
                    Ok(Some((_, st))) => break Ok(st),
                    Ok(None) => continue,
                    Err(Errno::INTR) => continue,
                    Err(e) => break Err(e),
                }
            };
            remove_stubs(&spec.rootfs, &stubs, &copyups);
            drop(scratch);
            let status = status.map_err(|e| ExecutorError::sys("waitpid sandbox", "", e))?;
            if let Some(r) = failed {
                return Ok(r);
            }
            let report = HelperReport::Exited(ExitStatus {
                code: status.exit_status(),
                signal: status.terminating_signal(),
                oom_killed: false,
            });
            Ok(with_oom(report, cgroup.as_ref()))
        }
    }
}

/// The oom_score_adj this process started with (the step gets it back).
pub(crate) fn original_oom_score_adj() -> i32 {
    static ORIGINAL: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    *ORIGINAL.get_or_init(|| {
        std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// Make this helper (and runc, started after it) the last process of the step's cgroup the OOM
/// killer picks, as Docker does for containerd-shim: a step over its memory limit must be the
/// one killed, so that the helper reports "out of memory" instead of vanishing. Best effort:
/// lowering the value needs CAP_SYS_RESOURCE, which rootless mode does not have.
pub(crate) fn shield_from_oom_killer() {
    let _ = original_oom_score_adj();
    let _ = std::fs::write("/proc/self/oom_score_adj", "-999");
}

/// Move this (single-threaded) process into the network namespace at `path`.
fn join_netns(path: &Path) -> Result<(), ExecutorError> {
    let ns = File::open(path).map_err(|e| ExecutorError::sys("open network namespace", path, e))?;
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&ns),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(|e| ExecutorError::sys("join network namespace", path, e))
}

/// Mark an exit status with the cgroup's OOM kill, if any.
fn with_oom(report: HelperReport, cgroup: Option<&crate::cgroup::StepCgroup>) -> HelperReport {
    match report {
        HelperReport::Exited(mut st) => {
            let killed = st.signal == Some(9) || st.code == Some(137);
            st.oom_killed = cgroup.is_some_and(|c| c.oom_killed(killed));
            HelperReport::Exited(st)
        }
        other => other,
    }
}

pub(crate) fn is_whiteout(m: &std::fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

/// Remove mount-target stubs (and directories copied up only because of
/// them) from the layer directory, deepest first; restore whiteouts that a
/// stub replaced.
fn remove_stubs(rootfs: &Rootfs, stubs: &[(String, bool)], copyups: &[String]) {
    let (layer, lowers): (&Path, &[PathBuf]) = match rootfs {
        Rootfs::Overlay { lowers, upper, .. } => (upper, lowers),
        Rootfs::Dir(d) => (d, &[]),
    };
    for (rel, whiteout) in stubs.iter().rev() {
        let p = layer.join(rel);
        let removed = match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir(&p).is_ok(),
            Ok(m) if m.is_file() && m.len() == 0 => std::fs::remove_file(&p).is_ok(),
            _ => false,
        };
        if removed && *whiteout {
            let _ = rustix::fs::mknodat(
                rustix::fs::CWD,
                &p,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                rustix::fs::makedev(0, 0),
            );
        }
    }
    let mut copyups: Vec<&String> = copyups.iter().collect();
    copyups.sort_by_key(|p| std::cmp::Reverse(Path::new(p).components().count()));
    copyups.dedup();
    for rel in copyups {
        let p = layer.join(rel);
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let empty = std::fs::read_dir(&p)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        let opaque =
            rustix::fs::lgetxattr(&p, crate::mounts::opaque_xattr(), &mut [0u8; 8]).is_ok();
        if !m.is_dir() || !empty || opaque {
            continue;
        }
        let lower = lowers
            .iter()
            .find_map(|l| std::fs::symlink_metadata(l.join(rel)).ok());
        if let Some(l) = lower {
            if l.is_dir() && l.mode() == m.mode() && l.uid() == m.uid() && l.gid() == m.gid() {
                let _ = std::fs::remove_dir(&p);
            }
        }
    }
}
