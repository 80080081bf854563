//! Sandbox init: runs in the forked child, pid 1 of the new pid namespace.
//! Creates a private mount namespace, mounts the rootfs and the special
//! filesystems (recording every mount-target stub it has to create),
//! pivots into the rootfs, applies the protections, switches user and
//! execs the step's program.

use std::collections::HashSet;
use std::ffi::CStr;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::mount::{mount, mount_bind, unmount, MountFlags, UnmountFlags};
use rustix::process::{pivot_root, Signal};
use rustix::thread::{CapabilitySet, CapabilitySets, UnshareFlags};

use crate::error::ExecutorError;
use crate::helper::{effective_hostname, is_whiteout, Scratch};
use crate::mounts::{bind, make_rprivate, mount_overlay, remount_nodev, remount_readonly};
use crate::private::{mkdir_p, pin, resolve_inside, PrivateTmp};
use crate::protocol::{HelperReport, InitMsg};
use crate::{seccomp, sys, user, ExecSpec, ExtraMount, Network, Rootfs, Security};

/// `PATH` used to find the program when the step's env has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set.
pub(crate) fn default_caps() -> CapabilitySet {
    CapabilitySet::CHOWN
        | CapabilitySet::DAC_OVERRIDE
        | CapabilitySet::FSETID
        | CapabilitySet::FOWNER
        | CapabilitySet::MKNOD
        | CapabilitySet::NET_RAW
        | CapabilitySet::SETGID
        | CapabilitySet::SETUID
        | CapabilitySet::SETFCAP
        | CapabilitySet::SETPCAP
        | CapabilitySet::NET_BIND_SERVICE
        | CapabilitySet::SYS_CHROOT
        | CapabilitySet::KILL
        | CapabilitySet::AUDIT_WRITE
}

/// /proc and /sys paths hidden from the step (like Docker).
pub(crate) const MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// The device nodes a step gets in `/dev` (Docker's default allow-list; `ptmx` and `pts` come
/// from the step's own devpts instance).
pub(crate) const ALLOWED_DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// /proc paths made read-only.
pub(crate) const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

enum InitError {
    Setup(ExecutorError),
    Exec { program: String, message: String },
}

impl From<ExecutorError> for InitError {
    fn from(e: ExecutorError) -> Self {
        InitError::Setup(e)
    }
}

/// Set up the sandbox and exec the step. Returns only on failure, with the
/// report to send to the helper.
pub(crate) fn init(
    spec: &ExecSpec,
    scratch: &Scratch,
    cgroups: &[(String, PathBuf)],
    msgs: &mut File,
) -> HelperReport {
    match setup_and_exec(spec, scratch, cgroups, msgs) {
        // The parent wraps the message in ExecutorError::Setup again: don't say it twice.
        InitError::Setup(ExecutorError::Setup(message)) => HelperReport::SetupFailed { message },
        InitError::Setup(e) => HelperReport::SetupFailed {
            message: e.to_string(),
        },
        InitError::Exec { program, message } => HelperReport::ExecFailed { program, message },
    }
}

pub(crate) fn err(
    op: &str,
    path: impl Into<PathBuf>,
    e: impl Into<std::io::Error>,
) -> ExecutorError {
    ExecutorError::sys(op, path, e)
}

fn setup_and_exec(
    spec: &ExecSpec,
    scratch: &Scratch,
    cgroups: &[(String, PathBuf)],
    msgs: &mut File,
) -> InitError {
    match setup(spec, scratch, cgroups, msgs) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

fn setup(
    spec: &ExecSpec,
    scratch: &Scratch,
    cgroups: &[(String, PathBuf)],
    msgs: &mut File,
) -> Result<Never, InitError> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(|e| err("prctl(PR_SET_PDEATHSIG)", "", e))?;
    sys::unshare(UnshareFlags::NEWNS).map_err(|e| err("unshare(CLONE_NEWNS)", "", e))?;
    make_rprivate()?;
    // Layer contents must not depend on the solver's umask (Docker: 022).
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let profile = match spec.security {
        Security::Sandbox => Some(seccomp::default_profile()?),
        Security::Insecure => None,
    };

    let root = scratch.root.as_path();
    let (layer, overlay_upper) = mount_rootfs(spec, root)?;
    let mut stubs = Stubs {
        root,
        layer,
        overlay_upper,
        msgs,
        copyups: HashSet::new(),
    };

    // /proc (fresh, for the new pid namespace)
    let proc_dir = stubs.ensure("/proc", true)?;
    mount(
        "proc",
        &proc_dir,
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None::<&CStr>,
    )
    .map_err(|e| {
        if e == rustix::io::Errno::PERM && crate::userns::in_user_namespace() {
            // The kernel mounts a new proc in a user namespace only where the proc it sees is
            // fully visible; container runtimes hide parts of it (/proc/kcore, /proc/sys …).
            ExecutorError::Setup(format!(
                "mount proc at {}: {e}: the kernel refuses a new /proc in rbuild's user \
                 namespace because parts of this /proc are hidden (as a container runtime \
                 does); run the container with them visible (Docker: --security-opt \
                 systempaths=unconfined, Kubernetes: procMount: Unmasked), run rbuild as root \
                 in the container, or use --isolation=chroot (docs/sandbox.md)",
                proc_dir.display()
            ))
        } else {
            err("mount proc at", &proc_dir, e)
        }
    })?;

    // /dev
    let dev = stubs.ensure("/dev", true)?;
    setup_dev(&dev, spec.shm_size, spec.security)?;

    // /sys (read-only; best effort: an empty dir when sysfs cannot be mounted)
    let sys_dir = stubs.ensure("/sys", true)?;
    let sysfs = mount(
        "sysfs",
        &sys_dir,
        "sysfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC | MountFlags::RDONLY,
        None::<&CStr>,
    );
    if sysfs.is_err() && crate::userns::in_user_namespace() {
        // Rootless with the host's network: sysfs can only be mounted by the owner of the
        // network namespace, so bind the host's /sys read-only instead (as rootless podman).
        let _ = bind(Path::new("/sys"), &sys_dir, true);
    }
    mount_cgroup_views(root, cgroups)?;

    // generated /etc files (read-only binds)
    for (target, source) in [
        ("/etc/hosts", &scratch.hosts),
        ("/etc/resolv.conf", &scratch.resolv),
    ] {
        let t = stubs.ensure(target, false)?;
        bind(source, &t, true)?;
    }

    let mut private = PrivateTmp::new(&scratch.mnt);
    for (i, m) in spec.extra_mounts.iter().enumerate() {
        let (src, target, is_dir) = prepare_source(m, i, &mut private)?;
        let t = stubs.ensure(target, is_dir)?;
        match src {
            Source::Bind { path, readonly } => bind(&path, &t, readonly)?,
            Source::Tmpfs { size } => {
                let data = match size {
                    Some(s) => format!("mode=1777,size={s}"),
                    None => "mode=1777".to_string(),
                };
                let data = std::ffi::CString::new(data)
                    .map_err(|_| ExecutorError::InvalidSpec("tmpfs options".into()))?;
                mount(
                    "tmpfs",
                    &t,
                    "tmpfs",
                    MountFlags::NOSUID | MountFlags::NODEV,
                    data.as_c_str(),
                )
                .map_err(|e| err("mount tmpfs at", &t, e))?;
            }
        }
    }

    rustix::system::sethostname(effective_hostname(spec).as_bytes())
        .map_err(|e| err("sethostname", "", e))?;
    if spec.network == Network::None {
        sys::loopback_up().map_err(|e| err("bring loopback up", "lo", e))?;
    }

    // pivot_root into the rootfs and detach the host's root.
    rustix::process::chdir(root).map_err(|e| err("chdir", root, e))?;
    pivot_root(".", ".").map_err(|e| err("pivot_root", root, e))?;
    unmount(".", UnmountFlags::DETACH).map_err(|e| err("detach old root", "/", e))?;
    rustix::process::chdir("/").map_err(|e| err("chdir", "/", e))?;

    let insecure = spec.security == Security::Insecure;
    if !insecure {
        protect_proc()?;
    }
    enter_step(spec, profile.as_ref(), crate::net::step_caps(spec.network))
}

/// Chroot isolation's init (`chroot.rs`): in the forked child, whatever namespaces could be
/// made already entered; chroot into `root` (no mounts: there may be no mount namespace), then
/// the same user, cwd, rlimits, capabilities, no_new_privs, fd closing and seccomp as the
/// sandbox. `CAP_SYS_CHROOT` and `CAP_MKNOD` are not kept: a root process holding the first
/// could leave the chroot, and a device node it makes could be opened where no `nodev` mount
/// is possible.
/// Returns only on failure, with the report to send to the helper.
pub(crate) fn chroot_init(spec: &ExecSpec, root: &Path, hostname: bool) -> HelperReport {
    let run = || -> Result<Never, InitError> {
        rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
            .map_err(|e| err("prctl(PR_SET_PDEATHSIG)", "", e))?;
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
        let profile = match spec.security {
            Security::Sandbox => Some(seccomp::default_profile()?),
            Security::Insecure => None,
        };
        if hostname {
            rustix::system::sethostname(effective_hostname(spec).as_bytes())
                .map_err(|e| err("sethostname", "", e))?;
        }
        if spec.network == Network::None {
            sys::loopback_up().map_err(|e| err("bring loopback up", "lo", e))?;
        }
        // The chroot has no /proc: read what dropping privileges needs from it now.
        let _ = (
            setgroups_denied(),
            last_cap(),
            crate::userns::in_user_namespace(),
        );
        rustix::process::chroot(root).map_err(|e| err("chroot", root, e))?;
        rustix::process::chdir("/").map_err(|e| err("chdir", "/", e))?;
        enter_step(
            spec,
            profile.as_ref(),
            crate::net::step_caps(spec.network) - CapabilitySet::SYS_CHROOT - CapabilitySet::MKNOD,
        )
    };
    match run() {
        Ok(never) => match never {},
        Err(InitError::Setup(ExecutorError::Setup(message))) => {
            HelperReport::SetupFailed { message }
        }
        Err(InitError::Setup(e)) => HelperReport::SetupFailed {
            message: e.to_string(),
        },
        Err(InitError::Exec { program, message }) => HelperReport::ExecFailed { program, message },
    }
}

/// The common end of both inits, inside the step's root: resolve the user, create the working
/// directory, apply rlimits, drop to `caps` (as far as this process holds them), switch user,
/// close fds, install seccomp and exec the program.
fn enter_step(
    spec: &ExecSpec,
    profile: Option<&seccomp::Profile>,
    caps: CapabilitySet,
) -> Result<Never, InitError> {
    let insecure = spec.security == Security::Insecure;
    // User.
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let creds = user::resolve(&spec.user, &passwd, &group).map_err(ExecutorError::Setup)?;

    // Working directory (created as root, like Docker).
    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    std::fs::create_dir_all(cwd).map_err(|e| err("create working directory", cwd, e))?;

    // Before dropping privileges: raising a hard limit needs CAP_SYS_RESOURCE.
    apply_rlimits(&spec.rlimits)?;
    drop_privileges(&creds, insecure, caps)?;
    rustix::process::chdir(cwd).map_err(|e| err("chdir", cwd, e))?;

    let program = &spec.args[0];
    let path_var = spec
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let Some(resolved) = find_program(program, path_var) else {
        return Err(InitError::Exec {
            program: program.clone(),
            message: "executable file not found in $PATH".into(),
        });
    };
    let mut cmd = Command::new(&resolved);
    cmd.arg0(program).args(&spec.args[1..]).env_clear();
    for e in &spec.env {
        if let Some((k, v)) = e.split_once('=') {
            if !k.is_empty() {
                cmd.env(k, v);
            }
        }
    }
    if !spec.env.iter().any(|e| e.starts_with("HOME=")) {
        cmd.env("HOME", &creds.home);
    }
    // The death signal is cleared by credential changes: set it last.
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(|e| err("prctl(PR_SET_PDEATHSIG)", "", e))?;
    // Only 0-2 reach the step: every other fd (the message pipe, anything inherited or opened
    // during setup) is close-on-exec.
    sys::cloexec_from(3).map_err(|e| err("mark fds close-on-exec", "", e))?;
    // Seccomp last (after no_new_privs), so that the setup above is not filtered.
    if let Some(p) = profile {
        p.install()?;
    }
    let e = cmd.exec();
    Err(InitError::Exec {
        program: program.clone(),
        message: e.to_string(),
    })
}

/// Mount the step's root filesystem at `root`, `nodev` (a device node the step makes or an
/// image layer carries cannot be opened; the allowed devices are bind mounts of the host's
/// nodes, mounts of their own) unless the step is insecure (privileged); returns the layer dir
/// and, for a real overlay, its upper dir.
pub(crate) fn mount_rootfs<'a>(
    spec: &'a ExecSpec,
    root: &Path,
) -> Result<(&'a Path, Option<&'a Path>), ExecutorError> {
    let mounted = match &spec.rootfs {
        Rootfs::Overlay { lowers, upper, .. } if lowers.is_empty() => {
            mount_bind(upper, root).map_err(|e| err("bind mount upper dir at", root, e))?;
            (upper.as_path(), None)
        }
        Rootfs::Overlay {
            lowers,
            upper,
            work,
        } => {
            mount_overlay(lowers, Some((upper, work)), root)?;
            (upper.as_path(), Some(upper.as_path()))
        }
        Rootfs::Dir(d) => {
            mount_bind(d, root).map_err(|e| err("bind mount rootfs dir at", root, e))?;
            (d.as_path(), None)
        }
    };
    if spec.security != Security::Insecure {
        remount_nodev(root)?;
    }
    Ok(mounted)
}

/// Where an extra mount's content comes from, once prepared.
pub(crate) enum Source {
    /// Bind this path (in the current mount namespace).
    Bind { path: PathBuf, readonly: bool },
    /// A fresh tmpfs.
    Tmpfs { size: Option<u64> },
}

/// Prepare the source of extra mount `i` (views and files go on the private tmpfs); returns
/// the source, the target and whether the target is a directory.
pub(crate) fn prepare_source<'a>(
    m: &'a ExtraMount,
    i: usize,
    private: &mut PrivateTmp<'_>,
) -> Result<(Source, &'a str, bool), ExecutorError> {
    Ok(match m {
        ExtraMount::Bind {
            source,
            target,
            readonly,
        } => {
            let is_dir = std::fs::metadata(source)
                .map_err(|e| err("stat bind source", source, e))?
                .is_dir();
            (
                Source::Bind {
                    path: source.clone(),
                    readonly: *readonly,
                },
                target,
                is_dir,
            )
        }
        ExtraMount::Layers {
            lowers,
            source,
            target,
            writable,
        } => {
            let base = private.dir()?.join(format!("view{i}"));
            let view = base.join("root");
            mkdir_p(&view)?;
            if !lowers.is_empty() {
                if *writable {
                    let (upper, work) = (base.join("upper"), base.join("work"));
                    mkdir_p(&upper)?;
                    mkdir_p(&work)?;
                    mount_overlay(lowers, Some((&upper, &work)), &view)?;
                } else if let [one] = lowers.as_slice() {
                    bind(one, &view, true)?;
                } else {
                    mount_overlay(lowers, None, &view)?;
                }
            }
            // Resolved beneath the view and pinned through its fd: a lower that is the live
            // build context cannot swap a component for a symlink before the mount.
            let src = resolve_inside(&view, source)?;
            let (src, is_dir) = pin(private, &format!("src{i}"), &src)?;
            (
                Source::Bind {
                    path: src,
                    readonly: !*writable,
                },
                target,
                is_dir,
            )
        }
        ExtraMount::File {
            contents,
            target,
            mode,
            uid,
            gid,
        } => {
            let f = private.dir()?.join(format!("file{i}"));
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&f)
                .and_then(|mut w| w.write_all(contents))
                .map_err(|e| err("write file", &f, e))?;
            rustix::fs::chown(
                &f,
                Some(rustix::fs::Uid::from_raw(*uid)),
                Some(rustix::fs::Gid::from_raw(*gid)),
            )
            .map_err(|e| err("chown", &f, e))?;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode & 0o7777))
                .map_err(|e| err("chmod", &f, e))?;
            (
                Source::Bind {
                    path: f,
                    readonly: true,
                },
                target,
                false,
            )
        }
        ExtraMount::Tmpfs { target, size } => (Source::Tmpfs { size: *size }, target, true),
    })
}

/// Minimal /dev on a tmpfs: Docker's allowed device nodes (`ALLOWED_DEVICES`) bound from the
/// host, devpts (new instance: pts and ptmx), /dev/shm, and the usual symlinks. The tmpfs is
/// `nodev` (unless insecure): a node the step makes in it cannot be opened, while the binds,
/// mounts of their own, keep working.
fn setup_dev(dev: &Path, shm_size: Option<u64>, security: Security) -> Result<(), ExecutorError> {
    let mut flags = MountFlags::NOSUID | MountFlags::NOEXEC | MountFlags::STRICTATIME;
    if security != Security::Insecure {
        flags |= MountFlags::NODEV;
    }
    mount("tmpfs", dev, "tmpfs", flags, c"mode=755,size=65536k")
        .map_err(|e| err("mount tmpfs at", dev, e))?;
    for name in ALLOWED_DEVICES {
        let host = Path::new("/dev").join(name);
        let target = dev.join(name);
        if std::fs::symlink_metadata(&host).is_err() {
            continue;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(&target)
            .map_err(|e| err("create device stub", &target, e))?;
        mount_bind(&host, &target).map_err(|e| err("bind device at", &target, e))?;
    }
    let pts = dev.join("pts");
    std::fs::create_dir(&pts).map_err(|e| err("mkdir", &pts, e))?;
    // gid 5 (tty) is not mapped in a single-id rootless namespace.
    let devpts_opts = if crate::userns::id_mapped("gid_map", 5) {
        c"newinstance,ptmxmode=0666,mode=0620,gid=5"
    } else {
        c"newinstance,ptmxmode=0666,mode=0620"
    };
    mount(
        "devpts",
        &pts,
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        devpts_opts,
    )
    .map_err(|e| err("mount devpts at", &pts, e))?;
    let shm = dev.join("shm");
    std::fs::create_dir(&shm).map_err(|e| err("mkdir", &shm, e))?;
    let shm_opts = std::ffi::CString::new(shm_options(shm_size))
        .map_err(|_| ExecutorError::InvalidSpec("shm options".into()))?;
    mount(
        "shm",
        &shm,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        shm_opts.as_c_str(),
    )
    .map_err(|e| err("mount tmpfs at", &shm, e))?;
    // POSIX message queues of the step's IPC namespace (best effort).
    let mqueue = dev.join("mqueue");
    std::fs::create_dir(&mqueue).map_err(|e| err("mkdir", &mqueue, e))?;
    let _ = mount(
        "mqueue",
        &mqueue,
        "mqueue",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None::<&CStr>,
    );
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        let p = dev.join(link);
        std::os::unix::fs::symlink(to, &p).map_err(|e| err("symlink", &p, e))?;
    }
    Ok(())
}

/// The step's own cgroup directories, read-only at `/sys/fs/cgroup` (v2) or
/// `/sys/fs/cgroup/<controller>` (v1, on a tmpfs), so that it can read its limits. Nothing when
/// the step has no cgroup or sysfs is not mounted.
pub(crate) fn mount_cgroup_views(
    root: &Path,
    cgroups: &[(String, PathBuf)],
) -> Result<(), ExecutorError> {
    let base = root.join("sys/fs/cgroup");
    if cgroups.is_empty() || !base.is_dir() {
        return Ok(());
    }
    let inside = |t: &str| root.join(t.trim_start_matches('/'));
    if cgroups.iter().any(|(t, _)| t != "/sys/fs/cgroup") {
        mount(
            "tmpfs",
            &base,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            c"mode=755,size=64k",
        )
        .map_err(|e| err("mount tmpfs at", &base, e))?;
        for (t, _) in cgroups {
            mkdir_p(&inside(t))?;
        }
    }
    for (t, host) in cgroups {
        bind(host, &inside(t), true)?;
    }
    if cgroups.iter().any(|(t, _)| t != "/sys/fs/cgroup") {
        remount_readonly(&base)?;
    }
    Ok(())
}

/// tmpfs options of `/dev/shm`: Docker's 64 MiB unless `--shm-size` says otherwise.
pub(crate) fn shm_options(size: Option<u64>) -> String {
    match size {
        Some(s) if s > 0 => format!("mode=1777,size={s}"),
        _ => "mode=1777,size=65536k".to_string(),
    }
}

/// The rlimit resource of a Docker ulimit name.
pub(crate) fn rlimit_resource(name: &str) -> Option<rustix::process::Resource> {
    use rustix::process::Resource as R;
    Some(match name {
        "core" => R::Core,
        "cpu" => R::Cpu,
        "data" => R::Data,
        "fsize" => R::Fsize,
        "locks" => R::Locks,
        "memlock" => R::Memlock,
        "msgqueue" => R::Msgqueue,
        "nice" => R::Nice,
        "nofile" => R::Nofile,
        "nproc" => R::Nproc,
        "rss" => R::Rss,
        "rtprio" => R::Rtprio,
        "rttime" => R::Rttime,
        "sigpending" => R::Sigpending,
        "stack" => R::Stack,
        "as" => R::As,
        _ => return None,
    })
}

fn apply_rlimits(limits: &[crate::Rlimit]) -> Result<(), ExecutorError> {
    for l in limits {
        let res = rlimit_resource(&l.name)
            .ok_or_else(|| ExecutorError::InvalidSpec(format!("unknown ulimit {:?}", l.name)))?;
        let v = |x: u64| (x != u64::MAX).then_some(x);
        rustix::process::setrlimit(
            res,
            rustix::process::Rlimit {
                current: v(l.soft),
                maximum: v(l.hard),
            },
        )
        .map_err(|e| {
            err(
                &format!("setrlimit {}={}:{}", l.name, l.soft, l.hard),
                "",
                e,
            )
        })?;
    }
    Ok(())
}

/// Mask sensitive /proc and /sys paths and make kernel knobs read-only.
fn protect_proc() -> Result<(), ExecutorError> {
    for p in MASKED {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => mount(
                "tmpfs",
                *p,
                "tmpfs",
                MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
                None::<&CStr>,
            )
            .map_err(|e| err("mask (tmpfs)", *p, e))?,
            Ok(_) => {
                mount_bind("/dev/null", *p).map_err(|e| err("mask (bind /dev/null)", *p, e))?
            }
            Err(_) => {}
        }
    }
    for p in READONLY {
        if std::fs::symlink_metadata(p).is_ok() {
            mount_bind(*p, *p).map_err(|e| err("bind (for read-only)", *p, e))?;
            remount_readonly(Path::new(p))?;
        }
    }
    Ok(())
}

fn drop_privileges(
    creds: &user::Credentials,
    insecure: bool,
    caps: CapabilitySet,
) -> Result<(), ExecutorError> {
    use rustix::thread::{
        clear_ambient_capability_set, remove_capability_from_bounding_set, set_capabilities,
        set_no_new_privs, set_thread_groups, set_thread_res_gid, set_thread_res_uid,
    };
    use rustix::{fs::Gid, fs::Uid};
    if creds.uid == u32::MAX || creds.gid == u32::MAX || creds.groups.contains(&u32::MAX) {
        return Err(ExecutorError::Setup("invalid uid/gid -1".into()));
    }
    let last = last_cap();
    // Everything this process holds (the host's full set when root on the host; less in an
    // unprivileged container, where no more can be kept).
    let held = rustix::thread::capabilities(None)
        .map_err(|e| err("capget", "", e))?
        .permitted;
    let keep = if insecure { held } else { caps & held };
    for bit in 0..=last {
        let cap = CapabilitySet::from_bits_retain(1u64 << bit);
        if !keep.contains(cap) {
            match remove_capability_from_bounding_set(cap) {
                Ok(()) | Err(rustix::io::Errno::INVAL) => {}
                Err(e) => return Err(err("drop capability from bounding set", "", e)),
            }
        }
    }
    let _ = clear_ambient_capability_set();
    let groups: Vec<Gid> = creds.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    match set_thread_groups(&groups) {
        Ok(()) => {}
        // Rootless with a single-id map: setgroups(2) is denied in the namespace.
        Err(rustix::io::Errno::PERM) if setgroups_denied() => {}
        Err(e) => return Err(err("setgroups", "", e)),
    }
    let gid = Gid::from_raw(creds.gid);
    set_thread_res_gid(gid, gid, gid).map_err(|e| unmapped("setresgid", creds.gid, e))?;
    let uid = Uid::from_raw(creds.uid);
    set_thread_res_uid(uid, uid, uid).map_err(|e| unmapped("setresuid", creds.uid, e))?;
    if creds.uid == 0 {
        set_capabilities(
            None,
            CapabilitySets {
                effective: keep,
                permitted: keep,
                inheritable: CapabilitySet::empty(),
            },
        )
        .map_err(|e| err("capset", "", e))?;
    }
    if !insecure {
        set_no_new_privs(true).map_err(|e| err("prctl(PR_SET_NO_NEW_PRIVS)", "", e))?;
    }
    Ok(())
}

/// The highest capability number of this kernel. Read once (chroot isolation reads it before
/// it enters a root without `/proc`).
fn last_cap() -> u32 {
    static LAST: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40)
            .min(63)
    })
}

/// Whether `setgroups(2)` is denied in this user namespace (single-id rootless map). Read once
/// (chroot isolation reads it before it enters a root without `/proc`).
fn setgroups_denied() -> bool {
    static DENIED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DENIED.get_or_init(|| {
        std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny")
    })
}

/// A failed set*id: an id outside the rootless user namespace's map gets a message saying so.
fn unmapped(op: &str, id: u32, e: rustix::io::Errno) -> ExecutorError {
    if e == rustix::io::Errno::INVAL && crate::userns::in_user_namespace() {
        return ExecutorError::Setup(format!(
            "{op}({id}): id {id} is not mapped in rbuild's rootless user namespace ({}); \
             give the user a subordinate id range in /etc/subuid and /etc/subgid \
             (and install newuidmap/newgidmap) to run steps as other users",
            crate::userns::describe_mapping()
        ));
    }
    err(op, "", e)
}

/// Resolve `program` like `execvp` with the step's `PATH`.
fn find_program(program: &str, path_var: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    if program.is_empty() {
        return None;
    }
    path_var.split(':').find_map(|dir| {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = Path::new(dir).join(program);
        match std::fs::metadata(&cand) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Some(cand),
            _ => None,
        }
    })
}

/// Creates mount targets inside the rootfs, resolving symlinks within the
/// root, and reports every path it had to create to the helper so that it
/// can be removed from the layer after the run.
pub(crate) struct Stubs<'a> {
    pub(crate) root: &'a Path,
    pub(crate) layer: &'a Path,
    pub(crate) overlay_upper: Option<&'a Path>,
    pub(crate) msgs: &'a mut dyn Write,
    pub(crate) copyups: HashSet<PathBuf>,
}

impl Stubs<'_> {
    fn send(&mut self, msg: &InitMsg) -> Result<(), ExecutorError> {
        let line = serde_json::to_string(msg)
            .map_err(|e| ExecutorError::Setup(format!("encode init message: {e}")))?;
        writeln!(self.msgs, "{line}").map_err(|e| err("report stub", "", e))
    }

    /// Make sure `target` (absolute inside the sandbox) exists as a directory
    /// (or a file when `!dir`); returns its host path under the root. Resolved and created
    /// beneath the root by [`rbuild_fsroot`] (symlinks followed inside the rootfs only).
    pub(crate) fn ensure(&mut self, target: &str, dir: bool) -> Result<PathBuf, ExecutorError> {
        let root = rbuild_fsroot::Root::new(self.root)
            .map_err(|e| ExecutorError::Setup(format!("mount target {target}: {e}")))?;
        let kind = if dir {
            rbuild_fsroot::Create::Dir
        } else {
            rbuild_fsroot::Create::File(0o644)
        };
        let r = root
            .ensure(target, kind, None, &mut |rel, _| {
                self.before_create(rel).map_err(std::io::Error::other)
            })
            .map_err(|e| ExecutorError::Setup(format!("mount target {target}: {e}")))?;
        Ok(self.root.join(r.rel))
    }

    /// Record a stub about to be created at `rel` (copy-up of its missing overlay parents
    /// first), so that a failure still gets cleaned up.
    fn before_create(&mut self, rel: &Path) -> Result<(), ExecutorError> {
        if let Some(upper) = self.overlay_upper {
            let mut missing = Vec::new();
            for anc in rel.ancestors().skip(1) {
                if anc.as_os_str().is_empty() {
                    break;
                }
                if std::fs::symlink_metadata(upper.join(anc)).is_err()
                    && self.copyups.insert(anc.to_path_buf())
                {
                    missing.push(anc.to_path_buf());
                }
            }
            for m in missing {
                self.send(&InitMsg::CopyUp {
                    path: m.to_string_lossy().into_owned(),
                })?;
            }
        }
        let whiteout = std::fs::symlink_metadata(self.layer.join(rel))
            .map(|m| is_whiteout(&m))
            .unwrap_or(false);
        self.send(&InitMsg::Stub {
            path: rel.to_string_lossy().into_owned(),
            whiteout,
        })
    }
}
