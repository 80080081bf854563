//! The only module of this crate that contains `unsafe` code.
//!
//! Thin, checked wrappers around the few system calls that neither `std` nor
//! `rustix` expose as safe functions: `fork`, `unshare`, fd passing into a
//! spawned child (`pre_exec`), adopting an inherited fd, and the
//! `SIOCSIFFLAGS` ioctl that brings the loopback interface up, ignoring terminal
//! interrupts in the rootless parent, and marking inherited file descriptors close-on-exec.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::process::Pid;
use rustix::thread::UnshareFlags;

/// Result of [`fork_single_threaded`].
pub(crate) enum Fork {
    /// We are the new child process.
    Child,
    /// We are the parent; the child's pid.
    Parent(Pid),
}

/// Number of threads of the current process, from `/proc/self/task`.
fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// `fork(2)`, refused unless the calling process has exactly one thread.
pub(crate) fn fork_single_threaded() -> io::Result<Fork> {
    if thread_count()? != 1 {
        return Err(io::Error::other(
            "fork refused: the process is multi-threaded",
        ));
    }
    // SAFETY: the process has a single thread (checked above), so no other
    // thread can hold a lock (allocator, stdio) that the child would inherit
    // in a locked state; the child is a complete copy of this process.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Fork::Child),
        p => Pid::from_raw(p)
            .map(Fork::Parent)
            .ok_or_else(|| io::Error::other("fork returned an invalid pid")),
    }
}

/// `unshare(2)` for the calling thread. `CLONE_FILES` is refused because
/// it is the flag that can invalidate file descriptors other threads use.
pub(crate) fn unshare(flags: UnshareFlags) -> io::Result<()> {
    if flags.contains(UnshareFlags::FILES) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unshare(CLONE_FILES) is not supported",
        ));
    }
    // SAFETY: rustix marks unshare as unsafe only because CLONE_FILES can
    // make fds observed by other threads invalid in this one; that flag is
    // excluded above. The other namespace/fs flags only change which
    // namespaces this thread sees.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(io::Error::from)
}

/// Arrange for `fd` (open in the parent, typically close-on-exec) to appear
/// as `target` (without close-on-exec) in the process spawned by `cmd`.
/// `fd` must stay open until `cmd` has been spawned.
pub(crate) fn pass_fd_to_child(cmd: &mut Command, fd: RawFd, target: RawFd) {
    let hook = move || -> io::Result<()> {
        let rc = if fd == target {
            // SAFETY: fcntl(F_SETFD) is async-signal-safe and only clears the
            // close-on-exec flag of an fd we own.
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }
        } else {
            // SAFETY: dup2 is async-signal-safe; it duplicates an fd we own
            // onto `target` (the new fd never has close-on-exec).
            unsafe { libc::dup2(fd, target) }
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: the hook runs in the child between fork and exec; it performs
    // only async-signal-safe syscalls (dup2/fcntl), does not allocate and
    // takes no locks.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Make the process spawned by `cmd` receive SIGKILL when the spawning thread dies (runc under
/// the helper: a killed helper must not leave runc creating or running a container).
pub(crate) fn kill_with_parent(cmd: &mut Command) {
    let hook = || -> io::Result<()> {
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
            .map_err(io::Error::from)
    };
    // SAFETY: the hook runs in the child between fork and exec; prctl(PR_SET_PDEATHSIG) is
    // async-signal-safe, allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Take ownership of a file descriptor inherited from our parent (e.g. the
/// status fd 3 of the helper), after checking that it is open. The fd is
/// made close-on-exec.
pub(crate) fn adopt_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only queries flags; it fails with EBADF if `fd` is not
    // open, and touches no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; sets FD_CLOEXEC on an open fd.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is open (checked) and was handed to this process by its
    // parent for exclusive use; nothing else in this process owns it, so
    // wrapping it in an OwnedFd gives it a single owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Mark every file descriptor `>= from` close-on-exec, so that no program this process
/// executes inherits it (an fd leaked into rbuild by its parent — a shell's `exec 7</`, a CI
/// agent — would otherwise reach RUN steps, git, credential helpers and runc: the
/// CVE-2024-21626 class). `close_range(CLOSE_RANGE_CLOEXEC)` (Linux ≥ 5.11), else a walk of
/// `/proc/self/fd`. Nothing is closed: fds this process uses stay valid.
pub(crate) fn cloexec_from(from: u32) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC closes no fd; it only sets FD_CLOEXEC on the
    // open fds of the range, which invalidates nothing this process owns.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            from,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if u32::try_from(fd).is_ok_and(|f| f >= from) {
            // SAFETY: F_GETFD/F_SETFD only read and set the descriptor flags of `fd`; on an fd
            // that is no longer open (the directory stream's own) they fail with EBADF.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
            }
        }
    }
    Ok(())
}

/// Bring the loopback interface `lo` of the current network namespace up.
pub(crate) fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket(2) call with constant arguments.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a freshly created socket fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let sock_fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: ifreq is a plain C struct/union for which all-zero bytes is a
    // valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the interface named in `ifr` and writes its
    // flags into `ifr.ifr_ifru`; `ifr` is a valid, exclusively borrowed ifreq.
    if unsafe { libc::ioctl(sock_fd, libc::SIOCGIFFLAGS as _, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after a successful SIOCGIFFLAGS the `ifru_flags` member is the
    // initialised variant of the union.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    ifr.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads `ifr` (name + flags); valid pointer.
    if unsafe { libc::ioctl(sock_fd, libc::SIOCSIFFLAGS as _, &ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ignore SIGINT and SIGQUIT in this process (the rootless parent, whose child in the user
/// namespace receives the terminal's signals too and handles them).
pub(crate) fn ignore_terminal_interrupts() {
    for sig in [libc::SIGINT, libc::SIGQUIT] {
        // SAFETY: installing SIG_IGN (no handler code runs) for a catchable signal is always
        // sound; the previous disposition is not needed.
        unsafe {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
}
