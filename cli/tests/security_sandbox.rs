//! Security suite for the RUN sandbox through the real CLI: each test performs an attack from
//! a build step (or on rbuild itself) and checks both that it failed and that the host is
//! unchanged afterwards. Runs with both runtimes (built-in, runc), as root and rootless (the
//! unprivileged `rbuild-test` user of `.ci/setup.sh`); a missing runtime, user, tool or the
//! registry fails the test with the fix, never skips it.
//!
//! Covered here (cli/tests/sandbox.rs covers pid/mount isolation, capabilities, seccomp mode,
//! masked /proc and the /dev listing): fds inherited by rbuild (the CVE-2024-21626 class), in
//! steps and in helper programs; device nodes made by a step or carried by a layer; the
//! classic escapes (mount, umount, namespaces, ptrace, keyrings, modules, bpf, perf, shocker,
//! /proc/sys, sysrq, /sys, cgroup files, host environments, chroot); `--shm-size` and tmpfs
//! sizes; steps surviving a `kill -9` of rbuild; stale scratch directories in `$TMPDIR`.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{require_env, require_tools, Run, REGISTRY};
use tempfile::TempDir;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Rt {
    Builtin,
    Runc,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Root,
    Rootless,
}

/// A build context, a store and a `$TMPDIR` of its own, built with one runtime by one user.
struct Case {
    dir: TempDir,
    store: TempDir,
    tmp: TempDir,
    rt: Rt,
    user: Option<common::TestUser>,
    snapshotter: &'static str,
}

impl Case {
    fn new(dockerfile: &str, rt: Rt, who: Who) -> Case {
        require_env();
        if rt == Rt::Runc {
            require_tools(&["runc"]);
        }
        let user = (who == Who::Rootless).then(|| common::test_user(common::RANGED_USER));
        let c = Case {
            dir: tempfile::tempdir().unwrap(),
            store: tempfile::tempdir().unwrap(),
            tmp: tempfile::tempdir().unwrap(),
            rt,
            user,
            snapshotter: "overlay",
        };
        if let Some(u) = &c.user {
            common::open_up(c.dir.path());
            u.own(c.store.path());
            u.own(c.tmp.path());
        }
        c.file("Dockerfile", dockerfile.as_bytes());
        c
    }

    fn copy_snapshotter(mut self) -> Case {
        self.snapshotter = "copy";
        self
    }

    fn file(&self, rel: &str, content: &[u8]) -> &Case {
        let p = self.dir.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        self
    }

    /// `rbuild ARGS…` with the case's environment, as the case's user.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
        c.args(args)
            .env("RBUILD_ROOT", self.store.path())
            .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
            .env("RBUILD_PROGRESS", "plain")
            .env("RBUILD_SNAPSHOTTER", self.snapshotter)
            .env(
                "RBUILD_RUNTIME",
                match self.rt {
                    Rt::Builtin => "builtin",
                    Rt::Runc => "runc",
                },
            )
            .env("TMPDIR", self.tmp.path())
            .env_remove("SOURCE_DATE_EPOCH")
            .current_dir(self.dir.path());
        match &self.user {
            Some(u) => {
                u.own_tree(self.dir.path());
                u.wrap(&c)
            }
            None => c,
        }
    }

    fn build_cmd(&self, args: &[&str]) -> Command {
        let mut a = vec!["build", "--no-cache"];
        a.extend_from_slice(args);
        a.push(".");
        self.command(&a)
    }

    fn build(&self, args: &[&str]) -> Run {
        Run {
            out: self.build_cmd(args).output().unwrap(),
        }
    }

    /// Entries of the case's `$TMPDIR` whose name starts with `prefix`.
    fn tmp_entries(&self, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(prefix))
            .collect();
        v.sort();
        v
    }
}

/// `cmd` run through `sh -c 'exec 7</ 8<SECRET; exec cmd…'`: rbuild starts with fd 7 open on
/// the host's `/` and fd 8 on a host file (opened as root, even for a rootless rbuild), as a
/// careless CI agent or shell leaves them.
fn with_leaked_fds(cmd: &Command, secret: &Path) -> Command {
    let mut c = common::wrapped(
        "sh",
        ["-c", "exec 7</ 8<\"$SBX_SECRET\"; exec \"$@\"", "sh"],
        cmd,
    );
    c.env("SBX_SECRET", secret);
    c
}

/// The lines a build's steps printed (plain progress: `#N 1.234 text`).
fn step_lines(run: &Run) -> Vec<String> {
    run.stderr()
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix('#')?;
            let (n, rest) = rest.split_once(' ')?;
            n.parse::<u32>().ok()?;
            let (t, text) = rest.split_once(' ').unwrap_or((rest, ""));
            t.parse::<f64>().ok()?;
            Some(text.to_string())
        })
        .collect()
}

/// `RESULT name outcome…` lines of the steps, by name.
fn results(run: &Run) -> BTreeMap<String, String> {
    step_lines(run)
        .iter()
        .filter_map(|l| {
            let r = l.strip_prefix("RESULT ")?;
            let (name, outcome) = r.split_once(' ')?;
            Some((name.to_string(), outcome.to_string()))
        })
        .collect()
}

fn marker() -> String {
    format!(
        "{}{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

fn dmesg() -> String {
    let o = Command::new("dmesg").output().unwrap();
    assert!(o.status.success(), "dmesg: {:?}", o);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Inherited file descriptors

fn inherited_fds(rt: Rt, who: Who) {
    let host = tempfile::tempdir().unwrap();
    common::open_up(host.path());
    let secret_path = host.path().join("secret");
    let secret = format!("host-secret-{}", marker());
    fs::write(&secret_path, &secret).unwrap();
    fs::set_permissions(&secret_path, fs::Permissions::from_mode(0o600)).unwrap();
    let victim = host.path().join("pwned");
    let victim_rel = victim.strip_prefix("/").unwrap().display().to_string();
    let case = Case::new(
        &format!(
            r#"FROM busybox
RUN ls /proc/self/fd > /tmp/fds; echo "FDS $(tr '\n' ' ' < /tmp/fds)"; \
    echo INIT-FDS; ls /proc/1/fd; echo END-FDS; \
    for n in $(seq 3 64); do p=/proc/self/fd/$n; \
      head -c 200 $p/etc/shadow $p 2>/dev/null; \
      (echo pwned > $p/{victim_rel}) 2>/dev/null; \
    done; true
"#
        ),
        rt,
        who,
    );
    let run = Run {
        out: with_leaked_fds(&case.build_cmd(&[]), &secret_path)
            .output()
            .unwrap(),
    }
    .ok();
    let lines = step_lines(&run);
    // `ls` itself holds fd 3 (the directory it lists); nothing else but stdio.
    assert!(
        lines.iter().any(|l| l.trim_end() == "FDS 0 1 2 3"),
        "{}",
        run.all()
    );
    // The step's first process (sh, pid 1) has only stdio (listed without a redirection,
    // for which the shell would save stdout on fd 10).
    let init: Vec<&str> = lines
        .iter()
        .skip_while(|l| l.trim_end() != "INIT-FDS")
        .skip(1)
        .take_while(|l| l.trim_end() != "END-FDS")
        .map(|l| l.trim_end())
        .collect();
    assert_eq!(init, ["0", "1", "2"], "{}", run.all());
    assert!(!run.all().contains(&secret), "{}", run.all());
    assert!(!run.all().contains("root:"), "{}", run.all());
    assert!(!victim.exists(), "a step wrote {}", victim.display());
}

#[test]
fn inherited_fds_never_reach_a_builtin_step() {
    inherited_fds(Rt::Builtin, Who::Root);
}

#[test]
fn inherited_fds_never_reach_a_runc_step() {
    inherited_fds(Rt::Runc, Who::Root);
}

#[test]
fn inherited_fds_never_reach_a_rootless_builtin_step() {
    inherited_fds(Rt::Builtin, Who::Rootless);
}

#[test]
fn inherited_fds_never_reach_a_rootless_runc_step() {
    inherited_fds(Rt::Runc, Who::Rootless);
}

/// Helper programs rbuild runs (here a docker credential helper) get no fd rbuild inherited.
#[test]
fn inherited_fds_never_reach_a_credential_helper() {
    require_env();
    let d = tempfile::tempdir().unwrap();
    let secret_path = d.path().join("secret");
    fs::write(&secret_path, "host-secret").unwrap();
    let bin = d.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let log = d.path().join("fds.log");
    let helper = bin.join("docker-credential-sbxfd");
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\nls -l /proc/$$/fd/ > {} 2>&1\ncat > /dev/null\nexit 0\n",
            log.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = d.path().join("docker");
    fs::create_dir(&cfg).unwrap();
    fs::write(
        cfg.join("config.json"),
        r#"{"credHelpers": {"127.0.0.1:9": "sbxfd"}}"#,
    )
    .unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
    c.args(["logout", "127.0.0.1:9"])
        .env("DOCKER_CONFIG", &cfg)
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        );
    let out = with_leaked_fds(&c, &secret_path).output().unwrap();
    let listing = fs::read_to_string(&log).unwrap_or_else(|e| {
        panic!(
            "the credential helper did not run ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(listing.contains(" 0 -> "), "{listing}");
    for l in listing.lines() {
        assert!(
            !l.ends_with(" -> /") && !l.contains(&secret_path.display().to_string()),
            "the credential helper inherited an fd of rbuild's parent: {l}\n{listing}"
        );
    }
}

/// `git` (a git build context) gets no fd rbuild inherited: a `git` wrapper first on the PATH
/// records its fds and runs the real git.
#[test]
fn inherited_fds_never_reach_git() {
    require_env();
    require_tools(&["git"]);
    let d = tempfile::tempdir().unwrap();
    let secret_path = d.path().join("secret");
    fs::write(&secret_path, "host-secret").unwrap();
    let repo = d.path().join("repo.git");
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "git {args:?}: {o:?}");
    };
    fs::create_dir(&repo).unwrap();
    git(&["init", "-q"]);
    fs::write(repo.join("Dockerfile"), "FROM busybox\n").unwrap();
    git(&["add", "Dockerfile"]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-qm",
        "x",
    ]);
    let real_git = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let bin = d.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let log = d.path().join("fds.log");
    fs::write(
        bin.join("git"),
        format!(
            "#!/bin/sh\nls -l /proc/$$/fd/ >> {} 2>&1\nexec {} \"$@\"\n",
            log.display(),
            real_git.trim()
        ),
    )
    .unwrap();
    fs::set_permissions(bin.join("git"), fs::Permissions::from_mode(0o755)).unwrap();
    let store = tempfile::tempdir().unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
    c.args(["build", &format!("file://{}", repo.display())])
        .env("RBUILD_ROOT", store.path())
        .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        );
    let run = Run {
        out: with_leaked_fds(&c, &secret_path).output().unwrap(),
    }
    .ok();
    let listing =
        fs::read_to_string(&log).unwrap_or_else(|e| panic!("git did not run ({e}): {}", run.all()));
    assert!(listing.contains(" 0 -> "), "{listing}");
    for l in listing.lines() {
        assert!(
            !l.ends_with(" -> /") && !l.contains(&secret_path.display().to_string()),
            "git inherited an fd of rbuild's parent: {l}\n{listing}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Device nodes

const DEVICE_PROBE: &str = r#"#!/bin/sh
# Make device nodes wherever the step can write and try to use them; then check the allowed
# devices still work. Prints RESULT lines (DONE = the attack went through).
mark=$1
res() { echo "RESULT $1 $2"; }
isdev() { [ -c "$1" ] || [ -b "$1" ]; }
open_r() { if isdev "$2" && (exec 3<"$2") 2>/dev/null; then res "$1" DONE; else res "$1" refused; fi; }
open_w() { if isdev "$2" && (exec 3>"$2") 2>/dev/null; then res "$1" DONE; else res "$1" refused; fi; }
# None of the host's other nodes is in /dev (checked before this script makes its own there).
for d in kmsg mem kvm fuse tty0 hwrng loop0 sda console; do
  if [ -e "/dev/$d" ]; then res "host-node-$d" DONE; else res "host-node-$d" refused; fi
done
for dir in /tmp /dev /dev/shm /tm /cm /bm; do
  t=$(echo "$dir" | tr / _)
  if mknod "$dir/kmsg" c 1 11 2>/dev/null; then res "mknod$t" made; else res "mknod$t" failed; fi
  if isdev "$dir/kmsg" && (echo "<6>rbuild-sbx-$mark" > "$dir/kmsg") 2>/dev/null; then res "kmsg-write$t" DONE; else res "kmsg-write$t" refused; fi
  open_r "kmsg-read$t" "$dir/kmsg"
  mknod "$dir/mem" c 1 1 2>/dev/null;    open_r "mem$t" "$dir/mem"
  mknod "$dir/loop" b 7 0 2>/dev/null;   open_r "loop$t" "$dir/loop"
  mknod "$dir/fuse" c 10 229 2>/dev/null; open_r "fuse$t" "$dir/fuse"
  mknod "$dir/kvm" c 10 232 2>/dev/null;  open_r "kvm$t" "$dir/kvm"
  mknod "$dir/tty0" c 4 0 2>/dev/null;    open_w "tty0$t" "$dir/tty0"
  mknod "$dir/hwrng" c 10 183 2>/dev/null; open_r "hwrng$t" "$dir/hwrng"
  mknod "$dir/sda" b 8 0 2>/dev/null;     open_r "sda$t" "$dir/sda"
done
open_w layer-node /layer-kmsg
echo x > /dev/null && res null ok
[ "$(head -c 8 /dev/urandom | wc -c)" = 8 ] && res urandom ok
[ "$(head -c 8 /dev/random | wc -c)" = 8 ] && res random ok
[ "$(head -c 8 /dev/zero | wc -c)" = 8 ] && res zero ok
(echo x > /dev/full) 2>/dev/null || res full ok
(exec 3<>/dev/ptmx) && [ -e /dev/pts/ptmx ] && res ptmx ok
true
"#;

fn devices(rt: Rt, who: Who, copy: bool) {
    let mark = marker();
    let case = Case::new(
        &format!(
            r#"FROM busybox AS withnode
RUN mknod /layer-kmsg c 1 11 || touch /layer-kmsg
FROM withnode
COPY probe.sh /probe.sh
RUN --mount=type=tmpfs,target=/tm --mount=type=cache,target=/cm \
    --mount=type=bind,target=/bm,rw sh /probe.sh {mark}
"#
        ),
        rt,
        who,
    );
    let case = if copy { case.copy_snapshotter() } else { case };
    case.file("probe.sh", DEVICE_PROBE.as_bytes());
    let run = case.build(&[]).ok();
    let r = results(&run);
    for ok in ["null", "urandom", "random", "zero", "full", "ptmx"] {
        assert_eq!(
            r.get(ok).map(String::as_str),
            Some("ok"),
            "{ok}: {}",
            run.all()
        );
    }
    // As root the nodes are made (Docker keeps CAP_MKNOD) and only unusable; rootless the
    // kernel refuses to make them.
    let made: Vec<&String> = r
        .iter()
        .filter(|(k, v)| k.starts_with("mknod") && *v == "made")
        .map(|(k, _)| k)
        .collect();
    match who {
        Who::Root => assert_eq!(made.len(), 6, "{}", run.all()),
        Who::Rootless => assert_eq!(made.len(), 0, "{}", run.all()),
    }
    let attacks: Vec<(&String, &String)> = r
        .iter()
        .filter(|(k, v)| *v != "ok" && !k.starts_with("mknod"))
        .collect();
    // 6 directories × 9 attempts, the layer's node, 9 host nodes.
    assert_eq!(attacks.len(), 6 * 9 + 1 + 9, "{}", run.all());
    for (name, outcome) in attacks {
        assert_eq!(outcome, "refused", "{name}: {}", run.all());
    }
    assert!(
        !dmesg().contains(&format!("rbuild-sbx-{mark}")),
        "a step wrote the host's kernel log"
    );
}

#[test]
fn device_nodes_are_unusable_in_a_builtin_step() {
    devices(Rt::Builtin, Who::Root, false);
}

#[test]
fn device_nodes_are_unusable_in_a_builtin_step_with_the_copy_snapshotter() {
    devices(Rt::Builtin, Who::Root, true);
}

#[test]
fn device_nodes_are_unusable_in_a_runc_step() {
    devices(Rt::Runc, Who::Root, false);
}

#[test]
fn device_nodes_are_unusable_in_a_rootless_builtin_step() {
    devices(Rt::Builtin, Who::Rootless, false);
}

#[test]
fn device_nodes_are_unusable_in_a_rootless_step_with_the_copy_snapshotter() {
    devices(Rt::Builtin, Who::Rootless, true);
}

#[test]
fn device_nodes_are_unusable_in_a_rootless_runc_step() {
    devices(Rt::Runc, Who::Rootless, false);
}

// ---------------------------------------------------------------------------------------------
// Classic escapes

/// The attack program (cli/tests/security/attack.c), built statically once.
fn attack_binary() -> &'static [u8] {
    static BIN: OnceLock<Vec<u8>> = OnceLock::new();
    BIN.get_or_init(|| {
        require_tools(&["cc"]);
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("attack");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/security/attack.c");
        let o = Command::new("cc")
            .args(["-static", "-O1", "-o"])
            .arg(&out)
            .arg(&src)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "cc -static attack.c (install libc6-dev): {}",
            String::from_utf8_lossy(&o.stderr)
        );
        fs::read(&out).unwrap()
    })
}

/// Every attempt attack.c makes.
const ATTACKS: &[&str] = &[
    "mount-tmpfs",
    "mount-bind-root",
    "mount-proc",
    "remount-root-rw-dev",
    "umount-proc",
    "umount-etc-hosts",
    "umount-masked-kcore",
    "unshare-user",
    "unshare-mount",
    "unshare-net",
    "setns-mnt",
    "pivot_root",
    "ptrace-attach-host",
    "ptrace-seize-host",
    "add_key",
    "keyctl-join",
    "request_key",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf-map-create",
    "perf_event_open",
    "open_by_handle_at",
    "sethostname",
    "setdomainname",
    "clock_settime",
    "acct",
    "swapon",
    "iopl",
    "ioperm",
    "chroot-escape-sees-host",
];

const SHELL_ATTACKS: &str = r#"#!/bin/sh
# Writes to kernel knobs, sysfs and cgroup files, and a search of every visible process's
# environment for the host's marker. Knobs whose change would matter get their own current
# value written back (a successful write is the failure, the value is harmless).
mark=$1
res() { echo "RESULT $1 $2"; }
w() { if (printf '%s\n' "$3" > "$2") 2>/dev/null; then res "$1" DONE; else res "$1" refused; fi; }
same() { w "$1" "$2" "$(cat "$2" 2>/dev/null)"; }
w proc-sys-core-pattern /proc/sys/kernel/core_pattern "|/tmp/x-$mark"
w proc-sys-hostname /proc/sys/kernel/hostname "x$mark"
same proc-sys-printk /proc/sys/kernel/printk
same proc-sys-panic /proc/sys/kernel/panic
same proc-sys-drop-caches-vm /proc/sys/vm/overcommit_memory
w proc-sysrq-trigger /proc/sysrq-trigger h
same sys-lo-mtu /sys/class/net/lo/mtu
same sys-kernel-mm /sys/kernel/mm/transparent_hugepage/enabled
same sys-module-param /sys/module/printk/parameters/time
if mkdir /sys/fs/cgroup/x-$mark 2>/dev/null; then res cgroup-mkdir DONE; else res cgroup-mkdir refused; fi
w cgroup-release-agent /sys/fs/cgroup/memory/release_agent "/tmp/x-$mark"
w cgroup-limit /sys/fs/cgroup/memory/memory.limit_in_bytes 9999999999
w cgroup-procs /sys/fs/cgroup/memory/cgroup.procs 1
found=refused
for e in /proc/[0-9]*/environ; do grep -q "SBX_HOST_ENV=$mark" "$e" 2>/dev/null && found=DONE; done
res host-environ "$found"
found=refused
for e in /proc/[0-9]*/environ; do grep -q RBUILD_ROOT "$e" 2>/dev/null && found=DONE; done
res rbuild-environ "$found"
true
"#;

const SHELL_NAMES: &[&str] = &[
    "proc-sys-core-pattern",
    "proc-sys-hostname",
    "proc-sys-printk",
    "proc-sys-panic",
    "proc-sys-drop-caches-vm",
    "proc-sysrq-trigger",
    "sys-lo-mtu",
    "sys-kernel-mm",
    "sys-module-param",
    "cgroup-mkdir",
    "cgroup-release-agent",
    "cgroup-limit",
    "cgroup-procs",
    "host-environ",
    "rbuild-environ",
];

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").unwrap()
}

fn classic(rt: Rt, who: Who) {
    let mark = marker();
    let host = tempfile::NamedTempFile::new().unwrap();
    let host_path = host.path().display().to_string();
    let case = Case::new(
        &format!(
            r#"FROM busybox
COPY attack shell-attacks.sh /
RUN /attack {mark} {host_path} {pid} && sh /shell-attacks.sh {mark}
"#,
            pid = std::process::id()
        ),
        rt,
        who,
    );
    case.file("attack", attack_binary());
    case.file("shell-attacks.sh", SHELL_ATTACKS.as_bytes());
    let before = (
        hostname(),
        fs::read_to_string("/proc/sys/kernel/domainname").unwrap(),
        fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        dmesg().matches("sysrq").count(),
    );
    // As root the step also gets a memory limit: its cgroup is then mounted (read-only) in
    // the step. (Rootless has no cgroup delegation here.)
    let mut cmd = case.build_cmd(if who == Who::Root {
        &["--memory", "256m"]
    } else {
        &[]
    });
    cmd.env("SBX_HOST_ENV", &mark);
    let run = Run {
        out: cmd.output().unwrap(),
    }
    .ok();
    let after = (
        hostname(),
        fs::read_to_string("/proc/sys/kernel/domainname").unwrap(),
        fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        dmesg().matches("sysrq").count(),
    );
    assert_eq!(before, after, "the host changed");
    let mounts = fs::read_to_string("/proc/1/mountinfo").unwrap();
    assert!(!mounts.contains(&mark), "a step's mount reached the host");
    let keys = fs::read_to_string("/proc/keys").unwrap_or_default();
    assert!(
        !keys.contains(&mark),
        "a step's key reached the host: {keys}"
    );
    let all = run.all();
    let r = results(&run);
    let done: Vec<&String> = r
        .iter()
        .filter(|(_, v)| v.starts_with("DONE"))
        .map(|(k, _)| k)
        .collect();
    assert!(done.is_empty(), "attacks went through: {done:?}\n{all}");
    for name in ATTACKS.iter().chain(SHELL_NAMES) {
        let got = r.get(*name).map(String::as_str).unwrap_or("missing");
        assert!(got.starts_with("refused"), "{name}: {got}\n{all}");
    }
    // Refused by seccomp/capabilities before the kernel looks at the arguments.
    for name in [
        "init_module",
        "finit_module",
        "bpf-map-create",
        "add_key",
        "keyctl-join",
    ] {
        assert_eq!(r[name], "refused EPERM", "{name}\n{all}");
    }
}

#[test]
fn classic_escapes_fail_in_a_builtin_step() {
    classic(Rt::Builtin, Who::Root);
}

#[test]
fn classic_escapes_fail_in_a_runc_step() {
    classic(Rt::Runc, Who::Root);
}

#[test]
fn classic_escapes_fail_in_a_rootless_builtin_step() {
    classic(Rt::Builtin, Who::Rootless);
}

#[test]
fn classic_escapes_fail_in_a_rootless_runc_step() {
    classic(Rt::Runc, Who::Rootless);
}

// ---------------------------------------------------------------------------------------------
// Resources: tmpfs sizes, killed builds, stale scratch directories

#[test]
fn shm_and_tmpfs_sizes_are_bounded() {
    let case = Case::new(
        "FROM busybox\nRUN df -k /dev/shm | tail -1 | awk '{print \"SHM \" $2}'\n",
        Rt::Builtin,
        Who::Root,
    );
    for size in ["99999999999g", "100000g", "18446744073709551615", "1e30"] {
        let run = case.build(&["--shm-size", size]);
        assert_eq!(run.code(), Some(2), "--shm-size {size}: {}", run.all());
        assert!(run.stderr().contains("--shm-size"), "{}", run.stderr());
    }
    let run = case.build(&["--shm-size", "32m"]).ok();
    assert!(
        step_lines(&run).iter().any(|l| l.trim() == "SHM 32768"),
        "{}",
        run.all()
    );
    for (size, why) in [("99999999999g", "invalid size"), ("100000g", "memory")] {
        case.file(
            "Dockerfile",
            format!("FROM busybox\nRUN --mount=type=tmpfs,target=/t,size={size} df -k /t\n")
                .as_bytes(),
        );
        let run = case.build(&[]);
        assert_eq!(run.code(), Some(1), "size={size}: {}", run.all());
        assert!(
            run.stderr().contains(why) && run.stderr().contains("/t"),
            "size={size}: {}",
            run.stderr()
        );
    }
}

/// Pids of the processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(c) = fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                v.push(pid);
            }
        }
    }
    v
}

fn killed_build(rt: Rt, who: Who) {
    let n = 100_000 + (std::process::id() % 800_000);
    let case = Case::new(
        &format!("FROM busybox\nRUN sleep {n}.{}\n", rt as u8 + 2 * who as u8),
        rt,
        who,
    );
    let needle = format!("sleep {n}.{}", rt as u8 + 2 * who as u8);
    let mut child = case
        .build_cmd(&[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while processes_with(&needle).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the step never started"
        );
        assert!(child.try_wait().unwrap().is_none(), "rbuild ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let start = Instant::now();
    while !processes_with(&needle).is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = processes_with(&needle);
    for p in &left {
        let _ = Command::new("kill").arg("-9").arg(p.to_string()).status();
    }
    assert!(
        left.is_empty(),
        "step processes survived kill -9 of rbuild: {left:?}"
    );
    // Nothing of the killed build stays in $TMPDIR: the next build sweeps what is stale, and a
    // runc helper still tidying up after its container (`runc delete`) removes its own state
    // directory a moment later.
    case.file("Dockerfile", b"FROM busybox\nRUN true\n");
    // Under load the killed build's runc helper may still be tidying when the next build
    // sweeps (it then skips the directory of a live helper): the build after that takes it.
    for _ in 0..2 {
        case.build(&[]).ok();
        let start = Instant::now();
        while !case.tmp_entries(".rbuild-").is_empty() && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        if case.tmp_entries(".rbuild-").is_empty() {
            break;
        }
    }
    assert_eq!(case.tmp_entries(".rbuild-"), Vec::<String>::new());
}

#[test]
fn a_killed_build_leaves_no_builtin_step_running() {
    killed_build(Rt::Builtin, Who::Root);
}

#[test]
fn a_killed_build_leaves_no_runc_step_running() {
    killed_build(Rt::Runc, Who::Root);
}

#[test]
fn a_killed_rootless_build_leaves_no_builtin_step_running() {
    killed_build(Rt::Builtin, Who::Rootless);
}

#[test]
fn a_killed_rootless_build_leaves_no_runc_step_running() {
    killed_build(Rt::Runc, Who::Rootless);
}

/// The sweep removes only dead helpers' directories of its own user, never through symlinks.
#[test]
fn stale_scratch_dirs_are_swept_safely() {
    let case = Case::new("FROM busybox\nRUN true\n", Rt::Builtin, Who::Root);
    let tmp = case.tmp.path();
    // `old`: last changed two minutes ago (a directory without a `lock` yet is being made: it is
    // swept only when a minute old; `lock` appears only once its helper holds it).
    let mk = |name: &str, lock: bool, old: bool| -> PathBuf {
        let d = tmp.join(name);
        fs::create_dir_all(d.join("root")).unwrap();
        fs::write(d.join("hosts"), "x").unwrap();
        if lock {
            fs::write(d.join("lock"), "").unwrap();
        }
        if old {
            let then = std::time::SystemTime::now() - Duration::from_secs(120);
            fs::File::open(&d).unwrap().set_modified(then).unwrap();
        }
        d
    };
    let dead = mk(".rbuild-sandbox-1-1", true, true);
    let live = mk(".rbuild-sandbox-2-2", true, true);
    let fresh_unlocked = mk(".rbuild-sandbox-3-3", false, false);
    let foreign = mk(".rbuild-sandbox-4-4", true, true);
    let old_unlocked = mk(".rbuild-sandbox-6-6", false, true);
    let u = common::test_user(common::RANGED_USER);
    u.own_tree(&foreign);
    let victim = tempfile::tempdir().unwrap();
    fs::write(victim.path().join("keep"), "x").unwrap();
    std::os::unix::fs::symlink(victim.path(), tmp.join(".rbuild-sandbox-5-5")).unwrap();
    require_tools(&["flock"]);
    let mut holder = Command::new("flock")
        .arg(live.join("lock"))
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    case.build(&[]).ok();
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(!dead.exists(), "a dead helper's dir was kept");
    assert!(
        live.join("hosts").exists(),
        "a live helper's dir was removed"
    );
    assert!(fresh_unlocked.join("hosts").exists());
    assert!(!old_unlocked.exists(), "an old dir without a lock was kept");
    assert!(
        foreign.join("hosts").exists(),
        "another user's dir was removed"
    );
    assert!(
        victim.path().join("keep").exists(),
        "the sweep followed a symlink"
    );
    assert!(fs::symlink_metadata(tmp.join(".rbuild-sandbox-5-5")).is_ok());
}
