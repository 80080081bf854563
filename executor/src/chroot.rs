//! Chroot isolation ([`crate::Runtime::Chroot`], `--isolation=chroot`): for environments where
//! the namespace sandbox cannot be set up (an unprivileged container: uid 0 without
//! `CAP_SYS_ADMIN` and without user namespaces), as buildah's `--isolation chroot`.
//!
//! The step runs in a chroot of the copy snapshotter's materialized root ([`Rootfs::Dir`]):
//! - each of the pid, ipc and uts namespaces is unshared on its own, and used when that works;
//!   a mount namespace too, and then the root is bound onto itself `nodev` with the allowed
//!   devices bound in (as the sandbox does); without one, the allowed device nodes are made
//!   with `mknod` (the container's device cgroup decides what can be opened);
//! - the network is the host's (the container's), except `network=none`, which needs a new
//!   network namespace and fails clearly when none can be made;
//! - `/etc/hosts` and `/etc/resolv.conf` are written into the root for the step and put back
//!   (content and times) afterwards, like every entry created for it (no `/etc/hostname`, as
//!   in BuildKit's RUN: the hostname is the UTS namespace's);
//! - no `/proc`, `/sys` or `RUN --mount` (they need mounts);
//! - processes the step leaves running are killed when it ends (the helper is their
//!   subreaper), pid namespace or not;
//! - the capabilities are Docker's default set as far as the container has them, minus
//!   `CAP_SYS_CHROOT` and `CAP_MKNOD` (a chroot escape, a device node); seccomp,
//!   `no_new_privs`, closed fds, user, cwd and env as in the sandbox (`sandbox.rs`).
//!
//! Every path in the root is resolved with the `fsroot` resolver (the root is the image's
//! tree: hostile symlinks stay inside it).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rbuild_fsroot::{Create, Root};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::{waitpid, WaitOptions};
use rustix::thread::UnshareFlags;

use crate::error::ExecutorError;
use crate::helper::Scratch;
use crate::mounts::{bind, make_rprivate, remount_nodev};
use crate::protocol::{HelperReport, InitMsg};
use crate::sandbox::ALLOWED_DEVICES;
use crate::sys::{self, Fork};
use crate::{ExecSpec, ExitStatus, Network, Rootfs};

fn setup(message: impl Into<String>) -> ExecutorError {
    ExecutorError::Setup(message.into())
}

fn fs_err(op: &str, e: rbuild_fsroot::FsRootError) -> ExecutorError {
    setup(format!("chroot isolation: {op}: {e}"))
}

/// Run the step of `spec` in chroot isolation (in the helper process, single-threaded).
pub(crate) fn run(spec: &ExecSpec, scratch: &Scratch) -> Result<HelperReport, ExecutorError> {
    let Rootfs::Dir(dir) = &spec.rootfs else {
        return Err(setup(
            "chroot isolation runs steps on the copy snapshotter's materialized root, \
             not on overlayfs",
        ));
    };
    if !spec.extra_mounts.is_empty() {
        return Err(setup(
            "RUN --mount needs mounts, which chroot isolation cannot make \
             (use --isolation=sandbox where the namespace sandbox can be set up)",
        ));
    }
    // Each namespace on its own: whichever this environment allows.
    let uts = sys::unshare(UnshareFlags::NEWUTS).is_ok();
    let _ = sys::unshare(UnshareFlags::NEWIPC);
    let _ = sys::unshare(UnshareFlags::NEWPID);
    if spec.network == Network::None {
        sys::unshare(UnshareFlags::NEWNET).map_err(|e| {
            setup(format!(
                "--network=none (or RUN --network=none): chroot isolation cannot create a \
                 network namespace here ({e}); it shares the host's (container's) network, \
                 so a step without network cannot run in this environment"
            ))
        })?;
    }
    let mount_ns = sys::unshare(UnshareFlags::NEWNS).is_ok() && make_rprivate().is_ok();
    let root = Root::new(dir).map_err(|e| fs_err("open the root", e))?;
    let mut prep = Prepared {
        root: &root,
        created: Vec::new(),
        replaced: Vec::new(),
        dir_times: Vec::new(),
    };
    let result = prep
        .apply(scratch, mount_ns)
        .and_then(|devices| run_child(spec, dir, uts, mount_ns, &devices));
    prep.undo();
    result
}

/// Fork the step's init (pid 1 when a pid namespace was made), wait for it, report.
fn run_child(
    spec: &ExecSpec,
    dir: &Path,
    uts: bool,
    mount_ns: bool,
    devices: &[PathBuf],
) -> Result<HelperReport, ExecutorError> {
    // Processes the step leaves behind (daemons) become the helper's children, and are killed
    // when the step ends: without a pid namespace nothing else would end them, and they could
    // signal or trace the next steps.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| ExecutorError::sys("prctl(PR_SET_CHILD_SUBREAPER)", "", e))?;
    let (msg_r, msg_w) =
        pipe_with(PipeFlags::CLOEXEC).map_err(|e| ExecutorError::sys("pipe", "", e))?;
    match sys::fork_single_threaded().map_err(|e| ExecutorError::sys("fork", "", e))? {
        Fork::Child => {
            drop(msg_r);
            let mut w = File::from(msg_w);
            let report = match mount_ns.then(|| nodev_root(dir, devices)) {
                Some(Err(e)) => HelperReport::SetupFailed {
                    message: e.to_string(),
                },
                _ => crate::sandbox::chroot_init(spec, dir, uts),
            };
            if let Ok(line) = serde_json::to_string(&InitMsg::Failed(report)) {
                let _ = writeln!(w, "{line}");
            }
            std::process::exit(1)
        }
        Fork::Parent(pid) => {
            drop(msg_w);
            let mut failed = None;
            for line in BufReader::new(File::from(msg_r)).lines() {
                let Ok(line) = line else { break };
                if let Ok(InitMsg::Failed(r)) = serde_json::from_str::<InitMsg>(&line) {
                    failed = Some(r);
                }
            }
            let status = loop {
                match waitpid(Some(pid), WaitOptions::empty()) {
                    Ok(Some((_, st))) => break st,
                    Ok(None) | Err(Errno::INTR) => continue,
                    Err(e) => return Err(ExecutorError::sys("waitpid step", "", e)),
                }
            };
            kill_leftovers();
            Ok(failed.unwrap_or(HelperReport::Exited(ExitStatus {
                code: status.exit_status(),
                signal: status.terminating_signal(),
                oom_killed: false,
            })))
        }
    }
}

/// Kill and reap every child of this (subreaper) helper left after the step's init ended,
/// round after round: killing one reparents its own children here.
fn kill_leftovers() {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    for _ in 0..1000 {
        let mut left = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`: comm may hold spaces and parentheses.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(me) {
                left.extend(rustix::process::Pid::from_raw(pid));
            }
        }
        if left.is_empty() {
            return;
        }
        // Our children: their pids cannot be reused before they are reaped here.
        for pid in &left {
            let _ = rustix::process::kill_process(*pid, rustix::process::Signal::KILL);
        }
        for pid in left {
            while let Err(Errno::INTR) = waitpid(Some(pid), WaitOptions::empty()) {}
        }
    }
}

/// With a mount namespace: the root bound onto itself `nodev` (a device node the image carries
/// cannot be opened) and the host's allowed devices bound onto their stubs.
/// In a mount namespace of the step's own, so that the helper can remove the stubs after it.
fn nodev_root(dir: &Path, devices: &[PathBuf]) -> Result<(), ExecutorError> {
    sys::unshare(UnshareFlags::NEWNS)
        .map_err(|e| ExecutorError::sys("unshare(CLONE_NEWNS)", "", e))?;
    make_rprivate()?;
    bind(dir, dir, false)?;
    remount_nodev(dir)?;
    for name in ALLOWED_DEVICES {
        let target = devices
            .iter()
            .find(|p| p.file_name() == Some(name.as_ref()));
        if let Some(t) = target {
            let host = Path::new("/dev").join(name);
            // A mount of its own, not `nodev`: the device works, nodes beside it do not.
            rustix::mount::mount_bind(&host, t)
                .map_err(|e| ExecutorError::sys("bind device at", t, e))?;
        }
    }
    Ok(())
}

/// An original file replaced for the step: where, its bytes and times.
struct Replaced {
    parent: OwnedFd,
    name: std::ffi::OsString,
    contents: Vec<u8>,
    times: Timestamps,
}

/// What was changed in the root for the step, to put back afterwards.
struct Prepared<'a> {
    root: &'a Root,
    /// Entries created (relative paths, in creation order).
    created: Vec<PathBuf>,
    replaced: Vec<Replaced>,
    /// Times of directories in which entries were created.
    dir_times: Vec<(PathBuf, Timestamps)>,
}

fn times_of(st: &rustix::fs::Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

impl Prepared<'_> {
    /// Remember the times of the directory `rel` (once) before something is created in it.
    fn note_dir(&mut self, rel: &Path) {
        if self.dir_times.iter().any(|(p, _)| p == rel) {
            return;
        }
        if let Ok(r) = self.root.resolve(rel, false) {
            if let Ok(Some(st)) = r.stat() {
                self.dir_times.push((rel.to_path_buf(), times_of(&st)));
            }
        }
    }

    /// `ensure` recording every entry it creates (and its directory's times).
    fn ensure(
        &mut self,
        rel: &str,
        last: Create,
    ) -> Result<rbuild_fsroot::Resolved, ExecutorError> {
        let mut made: Vec<PathBuf> = Vec::new();
        let r = self.root.ensure(rel, last, None, &mut |p: &Path, _| {
            made.push(p.to_path_buf());
            Ok(())
        });
        for p in &made {
            self.note_dir(p.parent().unwrap_or(Path::new("")));
        }
        self.created.extend(made);
        r.map_err(|e| fs_err(&format!("prepare {rel}"), e))
    }

    /// Generated `/etc` files and `/dev` entries; returns the host paths of the device stubs
    /// to bind devices onto (with a mount namespace).
    fn apply(&mut self, scratch: &Scratch, mount_ns: bool) -> Result<Vec<PathBuf>, ExecutorError> {
        for (rel, source) in [
            ("/etc/hosts", &scratch.hosts),
            ("/etc/resolv.conf", &scratch.resolv),
        ] {
            let contents =
                std::fs::read(source).map_err(|e| ExecutorError::sys("read", source, e))?;
            let existed = self
                .root
                .resolve(rel, true)
                .ok()
                .and_then(|r| r.stat().ok().flatten())
                .is_some();
            let r = self.ensure(rel, Create::File(0o644))?;
            let st = r
                .stat()
                .map_err(|e| ExecutorError::sys("stat", self.root.host_path(&r.rel), e))?;
            if !st.is_some_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::RegularFile) {
                continue; // not a file (a directory the image put there): leave it alone
            }
            let host = self.root.host_path(&r.rel);
            if existed {
                let mut f = File::from(
                    r.reopen(OFlags::RDONLY)
                        .map_err(|e| ExecutorError::sys("open", &host, e))?,
                );
                let st = rustix::fs::fstat(&f).map_err(|e| ExecutorError::sys("stat", &host, e))?;
                let mut old = Vec::new();
                std::io::Read::read_to_end(&mut f, &mut old)
                    .map_err(|e| ExecutorError::sys("read", &host, e))?;
                let parent = rustix::io::fcntl_dupfd_cloexec(&r.parent, 0)
                    .map_err(|e| ExecutorError::sys("dup", &host, e))?;
                self.replaced.push(Replaced {
                    parent,
                    name: r.name.clone(),
                    contents: old,
                    times: times_of(&st),
                });
            }
            let fd = r
                .reopen(OFlags::WRONLY | OFlags::TRUNC)
                .map_err(|e| ExecutorError::sys("open", &host, e))?;
            write_all(&fd, &contents).map_err(|e| ExecutorError::sys("write", &host, e))?;
        }
        let mut devices = Vec::new();
        let dev = self.ensure("/dev", Create::Dir)?;
        let Some(devfd) = dev.reopen(OFlags::RDONLY | OFlags::DIRECTORY).ok() else {
            return Ok(devices);
        };
        for name in ALLOWED_DEVICES {
            if rbuild_fsroot::lstat_at(&devfd, name.as_ref()).is_ok() {
                continue; // the image has one: nodev (with a mount namespace) or the cgroup
            }
            let Ok(host) = std::fs::metadata(Path::new("/dev").join(name)) else {
                continue;
            };
            self.note_dir(&dev.rel);
            let made = if mount_ns {
                rustix::fs::openat(
                    &devfd,
                    *name,
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o666),
                )
                .map(drop)
            } else {
                rustix::fs::mknodat(
                    &devfd,
                    *name,
                    FileType::CharacterDevice,
                    Mode::from_raw_mode(0o666),
                    host.rdev(),
                )
            };
            if made.is_ok() {
                // The helper's umask applied: the nodes are for everyone, like the host's.
                let _ = rustix::fs::chmodat(
                    &devfd,
                    *name,
                    Mode::from_raw_mode(0o666),
                    AtFlags::empty(),
                );
                self.created.push(dev.rel.join(name));
                devices.push(self.root.host_path(&dev.rel.join(name)));
            }
        }
        Ok(devices)
    }

    /// Put back what [`apply`](Self::apply) changed: originals rewritten, created entries
    /// removed (deepest first), directory times restored. Best effort.
    fn undo(&mut self) {
        for r in self.replaced.drain(..) {
            if let Ok(fd) = rustix::fs::openat(
                &r.parent,
                &r.name,
                OFlags::WRONLY | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                let _ = write_all(&fd, &r.contents);
                let _ = rustix::fs::futimens(&fd, &r.times);
            }
        }
        for rel in self.created.iter().rev() {
            if let Ok(r) = self.root.resolve(rel, false) {
                let dir = r
                    .stat()
                    .ok()
                    .flatten()
                    .is_some_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory);
                let flags = if dir {
                    AtFlags::REMOVEDIR
                } else {
                    AtFlags::empty()
                };
                let _ = rustix::fs::unlinkat(&r.parent, &r.name, flags);
            }
        }
        for (rel, times) in self.dir_times.iter().rev() {
            if let Ok(r) = self.root.resolve(rel, false) {
                if let Ok(fd) = r.reopen(OFlags::RDONLY | OFlags::DIRECTORY) {
                    let _ = rustix::fs::futimens(&fd, times);
                }
            }
        }
    }
}

fn write_all(fd: impl AsFd, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        match rustix::io::write(&fd, data) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
