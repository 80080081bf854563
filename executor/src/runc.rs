//! runc backend: the helper process prepares the same root filesystem and mount sources as
//! the built-in sandbox (in its own private mount namespace, so runc — its child — sees them
//! and everything disappears with the helper), writes an OCI runtime bundle (`config.json`
//! built with `oci-spec`: Docker's default capabilities, the same seccomp profile, masked and
//! read-only paths, pid/ipc/uts/mount/cgroup namespaces, a new network namespace for
//! `Network::None` or the pool's namespace for `Network::Isolated`), and runs `runc run`. The step's output goes straight to the helper's
//! stdout/stderr; runc's own errors are read from its JSON log.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceCgroup,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxNamespace, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimit,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use rustix::process::{Pid, PidfdFlags};
use rustix::thread::UnshareFlags;

use crate::error::ExecutorError;
use crate::helper::{effective_hostname, Scratch};
use crate::mounts::make_rprivate;
use crate::private::PrivateTmp;
use crate::protocol::HelperReport;
use crate::sandbox::{
    err, mount_rootfs, prepare_source, rlimit_resource, shm_options, Source, Stubs, MASKED,
};
use crate::{seccomp, sys, user, ExecSpec, ExitStatus, Network, Security};

/// Capability names by number (`capabilities(7)`).
const CAP_NAMES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// /proc paths runc makes read-only (same as the built-in sandbox).
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn setup(msg: impl std::fmt::Display) -> ExecutorError {
    ExecutorError::Setup(msg.to_string())
}

fn caps(mask: u64) -> HashSet<Capability> {
    CAP_NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .filter_map(|(_, n)| n.parse::<Capability>().ok())
        .collect()
}

/// The report, the mount stubs created (path, replaced a whiteout) and the directories
/// copied up for them.
pub(crate) type RuncOutcome = (HelperReport, Vec<(String, bool)>, Vec<String>);

/// Run the step with runc. Called by the helper (single-threaded) instead of forking the
/// built-in sandbox init.
pub(crate) fn run(
    spec: &ExecSpec,
    scratch: &Scratch,
    cgroups: &[(String, PathBuf)],
    runc: &Path,
    netns: Option<&Path>,
    parent: Option<Pid>,
) -> Result<RuncOutcome, ExecutorError> {
    sys::unshare(UnshareFlags::NEWNS).map_err(|e| err("unshare(CLONE_NEWNS)", "", e))?;
    make_rprivate()?;
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let root = scratch.root.as_path();
    let (layer, overlay_upper) = mount_rootfs(spec, root)?;
    let mut msgs: Vec<u8> = Vec::new();
    let mut stubs = Stubs {
        root,
        layer,
        overlay_upper,
        msgs: &mut msgs,
        copyups: HashSet::new(),
    };
    let result = prepare_and_run(spec, scratch, cgroups, runc, netns, parent, &mut stubs);
    drop(stubs);
    // Unmount the rootfs and the private tmpfs before the stubs are removed from the layer and
    // the scratch dir is deleted (a mount point cannot be removed: it was left behind).
    for m in [&scratch.mnt, &scratch.root] {
        let _ = rustix::mount::unmount(m.as_path(), rustix::mount::UnmountFlags::DETACH);
    }
    let mut stub_list = Vec::new();
    let mut copyups = Vec::new();
    for line in msgs.lines().map_while(Result::ok) {
        match serde_json::from_str::<crate::protocol::InitMsg>(&line) {
            Ok(crate::protocol::InitMsg::Stub { path, whiteout }) => {
                stub_list.push((path, whiteout))
            }
            Ok(crate::protocol::InitMsg::CopyUp { path }) => copyups.push(path),
            _ => {}
        }
    }
    let report = match result {
        Ok(r) => r,
        Err(e) => HelperReport::SetupFailed {
            message: e.to_string(),
        },
    };
    Ok((report, stub_list, copyups))
}

fn prepare_and_run(
    spec: &ExecSpec,
    scratch: &Scratch,
    cgroups: &[(String, PathBuf)],
    runc: &Path,
    netns: Option<&Path>,
    parent: Option<Pid>,
    stubs: &mut Stubs<'_>,
) -> Result<HelperReport, ExecutorError> {
    let root = stubs.root.to_path_buf();
    let insecure = spec.security == Security::Insecure;
    // Mount points runc creates itself: create them here so they are known stubs.
    for (t, dir) in [
        ("/proc", true),
        ("/dev", true),
        ("/sys", true),
        ("/etc/hosts", false),
        ("/etc/resolv.conf", false),
    ] {
        stubs.ensure(t, dir)?;
    }
    let mut mounts: Vec<Mount> = oci_spec::runtime::get_default_mounts();
    // No cgroup filesystem in the step (the built-in sandbox has none either).
    mounts.retain(|m| m.destination() != Path::new("/sys/fs/cgroup"));
    for m in mounts.iter_mut() {
        if m.destination() == Path::new("/dev/shm") {
            let mut opts: Vec<String> = vec!["nosuid".into(), "noexec".into(), "nodev".into()];
            opts.extend(shm_options(spec.shm_size).split(',').map(String::from));
            m.set_options(Some(opts));
        }
    }
    if crate::userns::in_user_namespace() {
        rootless_mounts(&mut mounts, spec.network)?;
    }
    let bind = |src: &Path, dst: &str, ro: bool| -> Result<Mount, ExecutorError> {
        let mut opts = vec![
            "rbind".to_string(),
            "nosuid".to_string(),
            "nodev".to_string(),
        ];
        if ro {
            opts.push("ro".to_string());
        }
        MountBuilder::default()
            .destination(dst)
            .typ("bind")
            .source(src)
            .options(opts)
            .build()
            .map_err(setup)
    };
    // The step's cgroup, read-only, so that it can read its limits: the same view as the
    // built-in sandbox's, assembled on the private tmpfs and bound (recursively, read-only).
    let mut private = PrivateTmp::new(&scratch.mnt);
    if !cgroups.is_empty() {
        let base = private.dir()?.join("cgroup-view");
        let view = base.join("sys/fs/cgroup");
        crate::private::mkdir_p(&view)?;
        crate::sandbox::mount_cgroup_views(&base, cgroups)?;
        mounts.push(bind(&view, "/sys/fs/cgroup", true)?);
    }
    mounts.push(bind(&scratch.hosts, "/etc/hosts", true)?);
    mounts.push(bind(&scratch.resolv, "/etc/resolv.conf", true)?);
    for (i, m) in spec.extra_mounts.iter().enumerate() {
        let (src, target, is_dir) = prepare_source(m, i, &mut private)?;
        let resolved = stubs.ensure(target, is_dir)?;
        let inside = Path::new("/").join(resolved.strip_prefix(&root).unwrap_or(&resolved));
        let inside = inside.to_string_lossy().into_owned();
        mounts.push(match src {
            Source::Bind { path, readonly } => bind(&path, &inside, readonly)?,
            Source::Tmpfs { size } => {
                let mut opts = vec![
                    "nosuid".to_string(),
                    "nodev".to_string(),
                    "mode=1777".to_string(),
                ];
                if let Some(s) = size {
                    opts.push(format!("size={s}"));
                }
                MountBuilder::default()
                    .destination(inside)
                    .typ("tmpfs")
                    .source("tmpfs")
                    .options(opts)
                    .build()
                    .map_err(setup)?
            }
        });
    }

    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    let creds = user::resolve(&spec.user, &passwd, &group).map_err(ExecutorError::Setup)?;
    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    // Created as root like the built-in sandbox (part of the layer, as in Docker).
    let cwd_host = crate::private::resolve_or_create(&root, cwd)?;
    let _ = cwd_host;

    let mask = if insecure {
        rustix::thread::capabilities(None)
            .map_err(|e| err("capget", "", e))?
            .permitted
            .bits()
    } else {
        crate::net::step_caps(spec.network).bits()
    };
    let set = caps(mask);
    let user_caps = if creds.uid == 0 {
        set.clone()
    } else {
        HashSet::new()
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .permitted(user_caps.clone())
        .effective(user_caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(setup)?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(spec.args.clone())
        .env(spec.env.clone())
        .cwd(cwd)
        .user(
            UserBuilder::default()
                .uid(creds.uid)
                .gid(creds.gid)
                .additional_gids(creds.groups.clone())
                .build()
                .map_err(setup)?,
        )
        .capabilities(capabilities)
        .no_new_privileges(!insecure)
        .rlimits(rlimits(&spec.rlimits)?)
        .oom_score_adj(crate::helper::original_oom_score_adj())
        .build()
        .map_err(setup)?;
    let mut namespaces: Vec<LinuxNamespace> = Vec::new();
    let mut kinds = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ];
    if spec.network == Network::None {
        kinds.push(LinuxNamespaceType::Network);
    }
    for k in kinds {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(k)
                .build()
                .map_err(setup)?,
        );
    }
    // The isolated network: the pool's namespace, joined by runc.
    if let Some(path) = netns {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(path)
                .build()
                .map_err(setup)?,
        );
    }
    let mut linux = LinuxBuilder::default().namespaces(namespaces);
    if !insecure {
        linux = linux
            .masked_paths(MASKED.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .readonly_paths(
                READONLY_PATHS
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
            )
            .seccomp(seccomp::oci_profile()?);
        if !crate::userns::in_user_namespace() {
            // Docker's device cgroup: deny everything, then the default allow-list (runc
            // creates those nodes). Rootless runc has no device cgroup; there the kernel
            // refuses to create or open device nodes of the user namespace.
            linux = linux.resources(
                LinuxResourcesBuilder::default()
                    .devices(device_rules()?)
                    .build()
                    .map_err(setup)?,
            );
        }
    }
    let linux = linux.build().map_err(setup)?;
    let mut oci = Spec::default();
    oci.set_root(Some(
        RootBuilder::default()
            .path(root.clone())
            .readonly(false)
            .build()
            .map_err(setup)?,
    ))
    .set_process(Some(process))
    .set_hostname(Some(effective_hostname(spec).to_string()))
    .set_mounts(Some(mounts))
    .set_linux(Some(linux));

    let bundle = scratch.base.join("bundle");
    std::fs::create_dir_all(&bundle).map_err(|e| err("mkdir", &bundle, e))?;
    oci.save(bundle.join("config.json")).map_err(setup)?;
    let state = state_root(std::process::id());
    let log = scratch.base.join("runc.log");
    let id = container_id(std::process::id());
    // runc inherits the helper's shield; the container gets the original value back
    // (`process.oomScoreAdj`), so a step over its memory limit is the one killed.
    crate::helper::shield_from_oom_killer();
    let mut cmd = Command::new(runc);
    cmd.arg("--root")
        .arg(&state)
        .arg("--log")
        .arg(&log)
        .arg("--log-format")
        .arg("json")
        .arg("run")
        .arg("--bundle")
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null());
    crate::sys::kill_with_parent(&mut cmd);
    // From here the helper must outlive a killed rbuild long enough to kill the container,
    // whose processes are no children of ours and would otherwise keep running (ppid 1).
    rustix::process::set_parent_process_death_signal(None)
        .map_err(|e| err("prctl(PR_SET_PDEATHSIG)", "", e))?;
    if rustix::process::getppid() != parent {
        return Err(setup("rbuild exited before the step started"));
    }
    let mut child = cmd.spawn().map_err(|e| err("run", runc, e))?;
    let status = wait(&mut child, runc, parent).map_err(|e| err("wait for", runc, e))?;
    let errors = runc_errors(&log);
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_dir_all(&bundle);
    if !status.success() {
        if let Some(msg) = errors {
            let program = spec.args.first().cloned().unwrap_or_default();
            return Ok(
                if msg.contains("exec")
                    && (msg.contains("not found") || msg.contains("no such file"))
                {
                    HelperReport::ExecFailed {
                        program,
                        message: "executable file not found in $PATH".into(),
                    }
                } else {
                    HelperReport::SetupFailed {
                        message: format!("runc: {msg}"),
                    }
                },
            );
        }
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(HelperReport::Exited(ExitStatus {
        code: status.code(),
        signal: status.signal(),
        oom_killed: false,
    }))
}

/// How often the helper checks that rbuild is alive while runc runs.
const PARENT_POLL_MS: i64 = 100;

/// Wait for `runc run`; when the helper's parent (rbuild) dies meanwhile — `kill -9`, OOM —,
/// kill the container through runc first (runc itself dies with the helper, its container
/// would not). The wait is a `poll` on runc's pidfd, so a step's end is seen at once; the
/// parent is checked every [`PARENT_POLL_MS`].
fn wait(
    child: &mut std::process::Child,
    runc: &Path,
    parent: Option<Pid>,
) -> std::io::Result<std::process::ExitStatus> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let pidfd = rustix::process::pidfd_open(Pid::from_child(child), PidfdFlags::empty()).ok();
    let timeout = Timespec {
        tv_sec: 0,
        tv_nsec: PARENT_POLL_MS * 1_000_000,
    };
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if rustix::process::getppid() != parent {
            kill_container(runc, std::process::id());
            return child.wait();
        }
        match &pidfd {
            Some(fd) => {
                let _ = poll(&mut [PollFd::new(fd, PollFlags::IN)], Some(&timeout));
            }
            None => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}

/// Docker's default device cgroup rules: deny all; `mknod` of any node (an image may make
/// one; it stays unusable); null, zero, full, random, urandom, tty, console, ptmx and pts.
fn device_rules() -> Result<Vec<LinuxDeviceCgroup>, ExecutorError> {
    let rule = |allow: bool,
                typ: LinuxDeviceType,
                major: Option<i64>,
                minor: Option<i64>,
                access: &str| {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(typ)
            .access(access);
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().map_err(setup)
    };
    use LinuxDeviceType::{A, B, C};
    let mut rules = vec![
        rule(false, A, None, None, "rwm")?,
        rule(true, C, None, None, "m")?,
        rule(true, B, None, None, "m")?,
    ];
    for (major, minor) in [
        (1, Some(3)), // null
        (1, Some(5)), // zero
        (1, Some(7)), // full
        (1, Some(8)), // random
        (1, Some(9)), // urandom
        (5, Some(0)), // tty
        (5, Some(1)), // console
        (5, Some(2)), // ptmx
        (136, None),  // pts/*
    ] {
        rules.push(rule(true, C, Some(major), minor, "rwm")?);
    }
    Ok(rules)
}

/// runc's state directory for the container of the helper with this pid: known to the parent,
/// which kills the container through it when the step is cancelled ([`kill_container`]).
pub(crate) fn state_root(helper_pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!(".rbuild-runc-{helper_pid}"))
}

/// The container id of the helper with this pid.
pub(crate) fn container_id(helper_pid: u32) -> String {
    format!("rbuild-{helper_pid}")
}

/// Kill (SIGKILL to its init: the kernel then kills its whole pid namespace) and delete the
/// container of a helper, if it runs; then remove its state directory. Best effort.
pub(crate) fn kill_container(runc: &Path, helper_pid: u32) {
    let state = state_root(helper_pid);
    if !state.exists() {
        return;
    }
    let id = container_id(helper_pid);
    for args in [
        vec!["kill", id.as_str(), "KILL"],
        vec!["delete", "--force", id.as_str()],
    ] {
        let _ = Command::new(runc)
            .arg("--root")
            .arg(&state)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = std::fs::remove_dir_all(&state);
}

/// Remove the runc state directories of helpers that are gone (a Ctrl-C can leave an empty
/// one behind: runc may still be tidying it up when rbuild exits). Once per process.
pub(crate) fn sweep_stale_state() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for ent in dir.flatten() {
            let name = ent.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(".rbuild-runc-"))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            // Only this user's directories, never a symlink (a shared /tmp).
            let ours = std::fs::symlink_metadata(ent.path()).is_ok_and(|m| {
                m.is_dir()
                    && std::os::unix::fs::MetadataExt::uid(&m)
                        == rustix::process::geteuid().as_raw()
            });
            if ours && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(ent.path());
            }
        }
    });
}

/// `process.rlimits` of the OCI spec (`RLIMIT_NOFILE` …).
fn rlimits(limits: &[crate::Rlimit]) -> Result<Vec<PosixRlimit>, ExecutorError> {
    limits
        .iter()
        .map(|l| {
            if rlimit_resource(&l.name).is_none() {
                return Err(ExecutorError::InvalidSpec(format!(
                    "unknown ulimit {:?}",
                    l.name
                )));
            }
            let typ: PosixRlimitType = format!("RLIMIT_{}", l.name.to_ascii_uppercase())
                .parse()
                .map_err(|_| ExecutorError::InvalidSpec(format!("unknown ulimit {:?}", l.name)))?;
            PosixRlimitBuilder::default()
                .typ(typ)
                .soft(l.soft)
                .hard(l.hard)
                .build()
                .map_err(setup)
        })
        .collect()
}

/// Error-level messages of runc's JSON log, joined.
/// Rootless (runc runs as root of rbuild's user namespace): sysfs cannot be mounted without
/// owning the network namespace, so a step on the host network gets the host's `/sys` bound
/// read-only (as the built-in sandbox does); devpts drops `gid=5` when gid 5 is not mapped
/// (single-id map).
fn rootless_mounts(mounts: &mut [Mount], network: Network) -> Result<(), ExecutorError> {
    for m in mounts.iter_mut() {
        if m.destination() == Path::new("/sys") && network == Network::Host {
            *m = MountBuilder::default()
                .destination("/sys")
                .typ("bind")
                .source("/sys")
                .options(
                    ["rbind", "nosuid", "noexec", "nodev", "ro"]
                        .map(String::from)
                        .to_vec(),
                )
                .build()
                .map_err(setup)?;
        }
        if m.typ().as_deref() == Some("devpts") && !crate::userns::id_mapped("gid_map", 5) {
            let opts: Vec<String> = m
                .options()
                .iter()
                .flatten()
                .filter(|o| !o.starts_with("gid="))
                .cloned()
                .collect();
            m.set_options(Some(opts));
        }
    }
    Ok(())
}

fn runc_errors(log: &PathBuf) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let msgs: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "error" || v["level"] == "fatal")
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .collect();
    if msgs.is_empty() {
        None
    } else {
        Some(msgs.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_parse() {
        let set = caps(crate::sandbox::default_caps().bits());
        assert_eq!(set.len(), 14);
        assert!(set.contains(&Capability::Chown) && set.contains(&Capability::NetRaw));
        assert!(!set.contains(&Capability::SysAdmin));
        assert_eq!(caps(u64::MAX >> 23).len(), CAP_NAMES.len());
    }
}
