// The executor test suite shared by both runtimes: `tests/sandbox.rs` (built-in) and
// `tests/sandbox_runc.rs` (runc) include it with their `RUNTIME`. Real namespaces and overlayfs;
// root is needed: without it the tests fail when `CI=true` and are skipped (with a message)
// otherwise.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rbuild_executor::*;

fn is_root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("sandbox tests need root (namespaces, overlayfs mounts); run them as root");
    }
    eprintln!("skipping: sandbox tests need root");
    false
}

const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "id", "hostname", "ls", "mount", "ps", "sleep", "touch", "rm", "env",
    "pwd", "tr", "test", "readlink", "grep", "wc", "true", "mkdir", "stat", "unshare", "umount",
    "nsenter", "chroot", "kill", "head", "tail", "df",
];

/// A busybox rootfs at `dir` (with /etc/passwd and /etc/group when `etc`).
fn busybox_rootfs(dir: &Path, etc: bool) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(a)).unwrap();
    }
    if etc {
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("etc/group"),
            "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
        )
        .unwrap();
        std::fs::write(dir.join("etc/todelete"), "bye\n").unwrap();
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    base: PathBuf,
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
}

impl Fixture {
    fn new(etc: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_path_buf();
        let lower = base.join("lower");
        busybox_rootfs(&lower, etc);
        let upper = base.join("upper");
        let work = base.join("work");
        std::fs::create_dir(&upper).unwrap();
        std::fs::create_dir(&work).unwrap();
        Fixture {
            _dir: dir,
            base,
            lowers: vec![lower],
            upper,
            work,
        }
    }

    fn spec(&self, script: &str) -> ExecSpec {
        ExecSpec {
            rootfs: Rootfs::Overlay {
                lowers: self.lowers.clone(),
                upper: self.upper.clone(),
                work: self.work.clone(),
            },
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: String::new(),
            hostname: "sandbox".into(),
            network: Network::Isolated,
            extra_mounts: vec![],
            extra_hosts: vec![],
            security: Security::Sandbox,
            shm_size: None,
            rlimits: vec![],
            resources: Default::default(),
        }
    }

    fn upper_entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.upper)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

fn executor() -> Executor {
    Executor::new(Helper {
        program: PathBuf::from(env!("CARGO_BIN_EXE_rbuild-sandbox-helper")),
        args: vec![HELPER_ARG.to_string()],
    })
    .with_runtime(Runtime::from_name(RUNTIME).unwrap())
}

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    chunks: usize,
}

fn run(spec: &ExecSpec) -> Output {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut chunks = 0;
    let status = executor()
        .run(spec, &mut |s, b| {
            chunks += 1;
            match s {
                Stream::Stdout => stdout.extend_from_slice(b),
                Stream::Stderr => stderr.extend_from_slice(b),
            }
        })
        .unwrap_or_else(|e| panic!("run failed: {e}"));
    Output {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        chunks,
    }
}

fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

#[test]
fn echo_output_is_streamed() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    let spec = fx.spec("echo hello; echo oops >&2; sleep 0.3; echo late");
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut leaked = Vec::new();
    let status = executor()
        .run(&spec, &mut |s, b| {
            // While the step runs, none of its mounts are visible on the host.
            let mi = mountinfo();
            if mi.contains(".rbuild-sandbox") || mi.contains(fx.base.to_str().unwrap()) {
                leaked.push(mi);
            }
            match s {
                Stream::Stdout => stdout.extend_from_slice(b),
                Stream::Stderr => stderr.extend_from_slice(b),
            }
        })
        .unwrap();
    assert!(status.success());
    assert!(
        leaked.is_empty(),
        "sandbox mounts visible on the host: {leaked:?}"
    );
    assert_eq!(stdout, b"hello\nlate\n");
    assert_eq!(stderr, b"oops\n");

    let out = run(&fx.spec("echo hello; echo oops >&2"));
    assert!(out.status.success(), "{:?} {}", out.status, out.stderr);
    assert_eq!(out.stdout, "hello\n");
    assert_eq!(out.stderr, "oops\n");
    assert!(out.chunks >= 2);
}

#[test]
fn exit_code_is_propagated() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    let out = run(&fx.spec("exit 3"));
    assert_eq!(out.status.code, Some(3));
    assert_eq!(out.status.signal, None);
    assert!(!out.status.success());
}

#[test]
fn missing_program_is_an_exec_error() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    let mut spec = fx.spec("");
    spec.args = vec!["no-such-program".into()];
    match executor().run(&spec, &mut |_, _| {}) {
        Err(ExecutorError::Exec { program, message }) => {
            assert_eq!(program, "no-such-program");
            assert!(message.contains("not found"), "{message}");
        }
        other => panic!("expected Exec error, got {other:?}"),
    }
    assert!(fx.upper_entries().is_empty(), "{:?}", fx.upper_entries());
}

#[test]
fn writes_and_deletes_land_in_upper() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    let out = run(&fx.spec("echo data > /newfile && rm /etc/todelete"));
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(fx.upper.join("newfile")).unwrap(),
        "data\n"
    );
    let wh = std::fs::symlink_metadata(fx.upper.join("etc/todelete")).unwrap();
    assert!(wh.file_type().is_char_device(), "not a whiteout: {wh:?}");
    assert_eq!(wh.rdev(), 0);
    // The lower is untouched.
    assert!(fx.lowers[0].join("etc/todelete").exists());
    assert!(!fx.lowers[0].join("newfile").exists());
}

#[test]
fn mount_stubs_do_not_end_up_in_upper() {
    if !is_root() {
        return;
    }
    // Lower without /etc, /proc, /dev, /sys: every stub must be removed.
    let fx = Fixture::new(false);
    let out = run(&fx.spec(
        "test -f /etc/hosts && test -f /etc/resolv.conf && test ! -e /etc/hostname && test -d /proc/1 && test -c /dev/null",
    ));
    assert!(out.status.success(), "{}", out.stderr);
    assert!(fx.upper_entries().is_empty(), "{:?}", fx.upper_entries());

    // Lower with /etc: the copy-up of /etc caused by the stubs is removed too,
    // but a real change in /etc is kept.
    let fx = Fixture::new(true);
    let out = run(&fx.spec("true"));
    assert!(out.status.success(), "{}", out.stderr);
    assert!(fx.upper_entries().is_empty(), "{:?}", fx.upper_entries());
    let out = run(&fx.spec("echo x > /etc/real"));
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(fx.upper_entries(), vec!["etc".to_string()]);
    let mut etc: Vec<String> = std::fs::read_dir(fx.upper.join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    etc.sort();
    assert_eq!(etc, vec!["real".to_string()]);
}

#[test]
fn hostname_and_hosts() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    // No /etc/hostname, as in BuildKit's RUN: the hostname is the UTS namespace's.
    let mut spec =
        fx.spec("hostname; test -e /etc/hostname && echo file || echo no-file; cat /etc/hosts");
    spec.hostname = "mybox".into();
    spec.extra_hosts = vec![("myhost".into(), "10.1.2.3".into())];
    let out = run(&spec);
    assert!(out.status.success(), "{}", out.stderr);
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some("mybox"));
    assert_eq!(lines.next(), Some("no-file"));
    assert!(
        out.stdout.contains("127.0.0.1\tlocalhost mybox"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("10.1.2.3\tmyhost"), "{}", out.stdout);
    let out = run(&fx.spec("cat /etc/resolv.conf"));
    assert!(out.stdout.contains("nameserver"), "{}", out.stdout);
}

/// The helper shields itself from the OOM killer (so a step over its memory limit is the one
/// killed); the step must get the caller's oom_score_adj back, never the shield's value.
#[test]
fn steps_keep_the_callers_oom_score_adj() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    let mine = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
    let mut spec = fx.spec("cat /proc/self/oom_score_adj; sh -c 'cat /proc/self/oom_score_adj'");
    spec.resources.memory = Some(256 << 20);
    for spec in [fx.spec("cat /proc/self/oom_score_adj"), spec] {
        let out = run(&spec);
        assert!(out.status.success(), "{}", out.stderr);
        for line in out.stdout.lines() {
            assert_eq!(line.trim(), mine.trim(), "{}", out.stdout);
        }
    }
}

#[test]
fn rlimits_shm_size_and_memory_limit_apply_to_the_step() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    let mut spec = fx.spec("ulimit -n; ulimit -Hn; df -k /dev/shm | tail -n 1");
    spec.rlimits = vec![rbuild_executor::Rlimit {
        name: "nofile".into(),
        soft: 1024,
        hard: 2048,
    }];
    spec.shm_size = Some(32 << 20);
    let out = run(&spec);
    assert!(out.status.success(), "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(&lines[..2], ["1024", "2048"], "{}", out.stdout);
    assert_eq!(
        lines[2].split_whitespace().nth(1),
        Some("32768"),
        "{}",
        out.stdout
    );
    // Default /dev/shm: 64 MiB, like Docker.
    let out = run(&fx.spec("df -k /dev/shm | tail -n 1"));
    assert_eq!(out.stdout.split_whitespace().nth(1), Some("65536"));

    // A step that needs more memory than its cgroup allows is OOM-killed and says so.
    let mut spec = fx.spec("x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived");
    spec.resources.memory = Some(32 << 20);
    let out = run(&spec);
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(out.status.oom_killed, "{:?} {}", out.status, out.stderr);
    let out = run(&fx.spec("x=$(head -c 2000000 /dev/zero | tr '\\0' a); echo survived"));
    assert!(out.status.success() && !out.status.oom_killed);
    // The step reads its own limit (v1 layout here; v2 where the unified hierarchy delegates).
    let mut spec = fx.spec(
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
    );
    spec.resources.memory = Some(64 << 20);
    let out = run(&spec);
    assert_eq!(out.stdout.trim(), "67108864", "{}", out.stderr);
}

#[test]
fn step_process_is_pid_1() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    let out = run(&fx.spec("cat /proc/1/cmdline; echo; echo $$; ps -o pid,args; true"));
    assert!(out.status.success(), "{}", out.stderr);
    let mut lines = out.stdout.lines();
    assert_eq!(
        lines.next(),
        Some("sh\0-c\0cat /proc/1/cmdline; echo; echo $$; ps -o pid,args; true\0")
    );
    assert_eq!(lines.next(), Some("1"));
    // Only our shell and ps are visible.
    let procs: Vec<&str> = lines.skip(1).collect();
    assert_eq!(procs.len(), 2, "{procs:?}");
}

#[test]
fn host_files_are_unreachable() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    let marker = tempfile::NamedTempFile::new().unwrap();
    let name = marker.path().to_str().unwrap().to_string();
    let out = run(&fx.spec(&format!(
        "if test -e {name}; then echo visible; else echo hidden; fi; readlink /proc/1/root; ls /"
    )));
    assert!(out.status.success(), "{}", out.stderr);
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some("hidden"));
    assert_eq!(lines.next(), Some("/"));
    let mut root: Vec<&str> = lines.collect();
    root.sort();
    assert_eq!(root, vec!["bin", "dev", "etc", "proc", "sys"]);
}

#[test]
fn env_is_exactly_as_given() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    let mut spec = fx.spec("");
    spec.args = vec!["env".into()];
    spec.env = vec!["PATH=/bin".into(), "FOO=bar baz".into(), "EMPTY=".into()];
    let out = run(&spec);
    assert!(out.status.success(), "{}", out.stderr);
    let mut got: Vec<&str> = out.stdout.lines().collect();
    got.sort();
    // HOME comes from the user's passwd entry when the env has none (Docker, runc).
    assert_eq!(got, vec!["EMPTY=", "FOO=bar baz", "HOME=/root", "PATH=/bin"]);
    spec.env.push("HOME=/elsewhere".into());
    spec.user = "app".into();
    let out = run(&spec);
    assert!(out.stdout.lines().any(|l| l == "HOME=/elsewhere"), "{}", out.stdout);
}

#[test]
fn cwd_is_created_when_missing() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    let mut spec = fx.spec("pwd");
    spec.cwd = "/work/sub".into();
    let out = run(&spec);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "/work/sub\n");
    assert!(fx.upper.join("work/sub").is_dir());
}

#[test]
fn user_is_resolved_in_rootfs() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    for (user, expected) in [
        ("app", "1000 1000 1000 2000"),
        ("1000:1000", "1000 1000 1000 2000"),
        ("4242", "4242 0 0"),
        ("app:root", "1000 0 0 2000"),
        ("", "0 0 0"),
    ] {
        let mut spec = fx.spec("echo $(id -u) $(id -g) $(id -G)");
        spec.user = user.into();
        let out = run(&spec);
        assert!(out.status.success(), "{user}: {}", out.stderr);
        assert_eq!(out.stdout.trim(), expected, "user {user:?}");
    }
    let mut spec = fx.spec("true");
    spec.user = "nobody".into();
    let err = executor().run(&spec, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("nobody"), "{err}");
}

#[test]
fn network_none_has_only_loopback() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    let mut spec = fx.spec("cat /proc/net/dev; cat /sys/class/net/lo/operstate");
    spec.network = Network::None;
    let out = run(&spec);
    assert!(out.status.success(), "{}", out.stderr);
    let ifaces: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim()))
        .collect();
    assert_eq!(ifaces, vec!["lo"], "{}", out.stdout);
    assert_eq!(out.stdout.lines().last(), Some("unknown"), "lo is not up");
}

/// Run `spec` with `exec`, expecting success; stdout.
fn run_with(exec: &Executor, spec: &ExecSpec) -> String {
    let mut stdout = Vec::new();
    let st = exec
        .run(spec, &mut |s, b| {
            if s == Stream::Stdout {
                stdout.extend_from_slice(b)
            }
        })
        .unwrap_or_else(|e| panic!("run failed: {e}"));
    assert!(st.success(), "{st}");
    String::from_utf8_lossy(&stdout).into_owned()
}

#[test]
fn isolated_network_is_a_pooled_namespace_with_a_nat_interface() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    let exec = executor();
    let script = "readlink /proc/self/ns/net; cat /proc/net/dev; cat /proc/net/route";
    let spec = fx.spec(script);
    assert_eq!(spec.network, Network::Isolated);
    let first = run_with(&exec, &spec);
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    let ns = first.lines().next().unwrap().to_string();
    assert_ne!(ns, host_ns.to_string_lossy(), "the step shares the host's network");
    let ifaces: Vec<&str> = first
        .lines()
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim()))
        .filter(|n| !n.contains(' ') && !n.starts_with("net"))
        .collect();
    assert_eq!(ifaces, vec!["lo", "tap0"], "{first}");
    // default route through slirp's gateway 10.0.2.2 (0202000A in /proc/net/route)
    assert!(first.contains("tap0\t00000000\t0202000A"), "{first}");
    // the next step reuses the namespace
    let second = run_with(&exec, &spec);
    assert_eq!(second.lines().next(), Some(ns.as_str()), "not reused");
    // an insecure step's namespace is not reused: it could have reconfigured it
    let mut insecure = fx.spec(script);
    insecure.security = Security::Insecure;
    let third = run_with(&exec, &insecure);
    assert_eq!(third.lines().next(), Some(ns.as_str()));
    let fourth = run_with(&exec, &spec);
    assert_ne!(fourth.lines().next(), Some(ns.as_str()), "reused after insecure");
}

#[test]
fn background_children_die_with_the_step() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    let start = Instant::now();
    let out = run(&fx.spec("sleep 100 & echo started"));
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "started\n");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn capabilities_and_proc_protection() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    let out = run(&fx.spec(
        "grep -E '^Cap(Eff|Bnd)|^NoNewPrivs' /proc/self/status; cat /proc/kcore | wc -c; echo 1 > /proc/sys/kernel/ns_last_pid && echo writable",
    ));
    let lines: Vec<&str> = out.stdout.lines().collect();
    // Docker's default set, without CAP_NET_RAW on the isolated network (raw frames could make
    // the user-space NAT connect to the host's loopback).
    assert!(lines.contains(&"CapEff:\t00000000a80405fb"), "{lines:?}");
    assert!(lines.contains(&"CapBnd:\t00000000a80405fb"), "{lines:?}");
    assert!(lines.contains(&"NoNewPrivs:\t1"), "{lines:?}");
    assert!(lines.contains(&"0"), "kcore not masked: {lines:?}");
    assert!(!out.stdout.contains("writable"), "/proc/sys is writable");
    for (network, caps) in [
        (Network::Host, "00000000a80425fb"),
        (Network::None, "00000000a80425fb"),
    ] {
        let mut spec = fx.spec("grep -E '^Cap(Eff|Bnd)' /proc/self/status");
        spec.network = network;
        let out = run(&spec);
        for l in ["CapEff", "CapBnd"] {
            assert!(
                out.stdout.contains(&format!("{l}:\t{caps}")),
                "{network:?}: {}",
                out.stdout
            );
        }
    }
    let mut spec = fx.spec("grep CapEff /proc/self/status");
    spec.user = "app".into();
    let out = run(&spec);
    assert_eq!(out.stdout.trim(), "CapEff:\t0000000000000000");
}

#[test]
fn extra_mounts_work_and_leave_no_stub() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    let src = fx.base.join("bindsrc");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("hello"), "from host\n").unwrap();
    let mut spec = fx.spec(
        "cat /mnt/ro/hello; touch /mnt/ro/x 2>/dev/null && echo ro-writable; echo t > /cache/t && cat /cache/t; echo w > /mnt/rw/w",
    );
    spec.extra_mounts = vec![
        ExtraMount::Bind {
            source: src.clone(),
            target: "/mnt/ro".into(),
            readonly: true,
        },
        ExtraMount::Bind {
            source: src.clone(),
            target: "/mnt/rw".into(),
            readonly: false,
        },
        ExtraMount::Tmpfs {
            target: "/cache".into(),
            size: Some(1 << 20),
        },
    ];
    let out = run(&spec);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "from host\nt\n");
    assert_eq!(std::fs::read_to_string(src.join("w")).unwrap(), "w\n");
    assert!(fx.upper_entries().is_empty(), "{:?}", fx.upper_entries());
}

#[test]
fn many_long_lower_layers() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let long = dir
        .path()
        .join("a-rather-long-directory-name-to-make-the-overlay-options-exceed-one-page");
    let mut lowers = Vec::new();
    for i in 0..60 {
        let l = long.join(format!("layer-number-{i:03}-with-some-padding-text/fs"));
        std::fs::create_dir_all(&l).unwrap();
        std::fs::write(l.join(format!("f{i}")), format!("{i}\n")).unwrap();
        std::fs::write(l.join("shared"), format!("{i}\n")).unwrap();
        lowers.push(l);
    }
    // Bottom-most layer holds busybox; lowers are top-most first.
    busybox_rootfs(lowers.last().unwrap(), true);
    let total: usize = lowers.iter().map(|l| l.as_os_str().len() + 1).sum();
    assert!(total > 4096, "options would fit a page ({total})");
    let upper = dir.path().join("upper");
    let work = dir.path().join("work");
    std::fs::create_dir(&upper).unwrap();
    std::fs::create_dir(&work).unwrap();
    let spec = ExecSpec {
        rootfs: Rootfs::Overlay {
            lowers: lowers.clone(),
            upper: upper.clone(),
            work: work.clone(),
        },
        args: vec!["sh".into(), "-c".into(), "cat /shared /f0 /f30 /f59".into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: String::new(),
        hostname: String::new(),
        network: Network::Host,
        extra_mounts: vec![],
        extra_hosts: vec![],
        security: Security::Sandbox,
        shm_size: None,
        rlimits: vec![],
        resources: Default::default(),
    };
    let out = run(&spec);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "0\n0\n30\n59\n");

    // The same through the Mounter.
    let target = dir.path().join("merged");
    std::fs::create_dir(&target).unwrap();
    let got = with_private_mounts(|m| {
        m.overlay_ro(&lowers, &target).unwrap();
        std::fs::read_to_string(target.join("f45")).unwrap()
    })
    .unwrap();
    assert_eq!(got, "45\n");
    assert!(!mountinfo().contains(target.to_str().unwrap()));
}

#[test]
fn mounter_overlay_and_private_namespace() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| {
        let p = dir.path().join(n);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let (l1, l2, upper, work, rw, ro, one, bare) = (
        d("l1"),
        d("l2"),
        d("upper"),
        d("work"),
        d("rw"),
        d("ro"),
        d("one"),
        d("bare"),
    );
    std::fs::write(l1.join("a"), "top\n").unwrap();
    std::fs::write(l2.join("a"), "bottom\n").unwrap();
    std::fs::write(l2.join("b"), "b\n").unwrap();
    let lowers = vec![l1.clone(), l2.clone()];
    let rw_s = rw.to_str().unwrap().to_string();
    let res = with_private_mounts(|m| {
        m.overlay(&lowers, &upper, &work, &rw).unwrap();
        assert_eq!(std::fs::read_to_string(rw.join("a")).unwrap(), "top\n");
        std::fs::write(rw.join("new"), "n\n").unwrap();
        std::fs::remove_file(rw.join("b")).unwrap();
        m.overlay_ro(&lowers, &ro).unwrap();
        assert_eq!(std::fs::read_to_string(ro.join("b")).unwrap(), "b\n");
        assert!(std::fs::write(ro.join("x"), "x").is_err());
        m.overlay_ro(std::slice::from_ref(&l2), &one).unwrap();
        assert_eq!(std::fs::read_to_string(one.join("a")).unwrap(), "bottom\n");
        assert!(std::fs::write(one.join("x"), "x").is_err());
        m.overlay_ro(&[], &bare).unwrap();
        // Visible in this thread's namespace, not in the process's (host) one.
        let mine = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        assert!(mine.contains(&rw_s));
        assert!(!mountinfo().contains(&rw_s));
        m.unmount(&one).unwrap();
        assert!(!one.join("a").exists());
        // Zero lowers: the upper dir is bound.
        let up2 = dir.path().join("up2");
        std::fs::create_dir(&up2).unwrap();
        std::fs::write(up2.join("z"), "z").unwrap();
        let t2 = dir.path().join("t2");
        std::fs::create_dir(&t2).unwrap();
        m.overlay(&[], &up2, &work, &t2).unwrap();
        assert!(t2.join("z").exists());
        42
    })
    .unwrap();
    assert_eq!(res, 42);
    assert_eq!(std::fs::read_to_string(upper.join("new")).unwrap(), "n\n");
    assert!(std::fs::symlink_metadata(upper.join("b"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(!rw.join("a").exists(), "mount left behind");
    let mi = mountinfo();
    assert!(!mi.contains(dir.path().to_str().unwrap()), "{mi}");
    assert!(overlay_supported());
}

#[test]
fn dir_rootfs_runs_in_place() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    busybox_rootfs(&rootfs, false);
    let mut spec = Fixture::new(true).spec("echo hi > /made; hostname");
    spec.rootfs = Rootfs::Dir(rootfs.clone());
    let out = run(&spec);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "sandbox\n");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("made")).unwrap(),
        "hi\n"
    );
    for stub in ["etc", "proc", "dev", "sys"] {
        assert!(!rootfs.join(stub).exists(), "stub {stub} left");
    }
}

#[test]
fn symlinked_mount_targets_are_resolved_inside_the_rootfs_and_removed() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    // A dangling absolute symlink, like Ubuntu's resolv.conf: it must resolve
    // inside the rootfs (never on the host) and its stub must not remain.
    std::os::unix::fs::symlink(
        "/run/systemd/resolve/stub.conf",
        fx.lowers[0].join("etc/resolv.conf"),
    )
    .unwrap();
    let host_had = Path::new("/run/systemd/resolve/stub.conf").exists();
    let out =
        run(&fx.spec("cat /etc/resolv.conf; test -f /run/systemd/resolve/stub.conf && echo ok"));
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stdout.contains("nameserver"), "{}", out.stdout);
    assert!(out.stdout.ends_with("ok\n"), "{}", out.stdout);
    assert_eq!(
        Path::new("/run/systemd/resolve/stub.conf").exists(),
        host_had,
        "the host path was touched"
    );
    assert!(fx.upper_entries().is_empty(), "{:?}", fx.upper_entries());
}

#[test]
fn zero_lowers_runs_on_the_upper_dir() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(false);
    let mut spec = fx.spec("echo x > /made");
    busybox_rootfs(&fx.upper, false);
    spec.rootfs = Rootfs::Overlay {
        lowers: vec![],
        upper: fx.upper.clone(),
        work: fx.work.clone(),
    };
    let out = run(&spec);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        fx.upper_entries(),
        vec!["bin".to_string(), "made".to_string()]
    );
}

#[test]
fn setup_failures_are_errors() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    let mut spec = fx.spec("true");
    spec.rootfs = Rootfs::Overlay {
        lowers: vec![fx.base.join("does-not-exist")],
        upper: fx.upper.clone(),
        work: fx.work.clone(),
    };
    match executor().run(&spec, &mut |_, _| {}) {
        Err(ExecutorError::Setup(msg)) => assert!(msg.contains("overlay"), "{msg}"),
        other => panic!("expected a setup error, got {other:?}"),
    }
    // A helper program that does not speak the protocol.
    let bogus = Executor::new(Helper {
        program: PathBuf::from("/bin/busybox"),
        args: vec!["true".into()],
    });
    let mut no_net = fx.spec("true");
    no_net.network = Network::None;
    match bogus.run(&no_net, &mut |_, _| {}) {
        Err(ExecutorError::Protocol(msg)) => assert!(msg.contains("without a report"), "{msg}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    // It cannot hold a network namespace either: the default network fails, naming the fix
    // (never a silent fallback to the host's network).
    match bogus.run(&fx.spec("true"), &mut |_, _| {}) {
        Err(ExecutorError::Setup(msg)) => assert!(
            msg.contains("isolated network") && msg.contains("--network=host"),
            "{msg}"
        ),
        other => panic!("expected a setup error, got {other:?}"),
    }
}

#[test]
fn seccomp_blocks_namespace_and_mount_syscalls() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    let out = run(&fx.spec(
        "grep -E '^Seccomp:' /proc/self/status; \
         mkdir -p /m; mount -t tmpfs none /m 2>/dev/null && echo mounted; \
         umount /proc 2>/dev/null && echo unmounted; \
         unshare -m true 2>/dev/null && echo unshared; \
         nsenter -t 1 -m true 2>/dev/null && echo entered; \
         chroot / true && echo chroot-ok",
    ));
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "Seccomp:\t2\nchroot-ok\n", "{}", out.stderr);
}

#[test]
fn insecure_mode_has_every_capability_and_no_seccomp() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    let mut spec = fx.spec("grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/self/status");
    spec.security = Security::Insecure;
    let out = run(&spec);
    assert!(out.status.success(), "{}", out.stderr);
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let cap_eff = ours.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    assert_ne!(cap_eff, "CapEff:\t00000000a80425fb");
    assert_eq!(
        out.stdout,
        format!("{cap_eff}\nNoNewPrivs:\t0\nSeccomp:\t0\n")
    );
}

#[test]
fn layer_views_are_merged_read_only_or_throwaway_writable() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    let bottom = fx.base.join("v-bottom");
    let top = fx.base.join("v-top");
    std::fs::create_dir_all(bottom.join("out/sub")).unwrap();
    std::fs::create_dir_all(top.join("out")).unwrap();
    std::fs::write(bottom.join("out/a"), "bottom-a\n").unwrap();
    std::fs::write(bottom.join("out/sub/b"), "bottom-b\n").unwrap();
    std::fs::write(top.join("out/a"), "top-a\n").unwrap();
    std::os::unix::fs::symlink("/out/sub", top.join("link")).unwrap();
    let mut spec = fx.spec(
        "cat /ro/a /ro/sub/b; touch /ro/x 2>/dev/null && echo ro-writable; \
         echo new > /rw/new && cat /rw/new && echo changed > /rw/a && cat /rw/a; \
         cat /linked/b; ls /empty | wc -l",
    );
    let lowers = vec![top.clone(), bottom.clone()];
    spec.extra_mounts = vec![
        ExtraMount::Layers {
            lowers: lowers.clone(),
            source: "/out".into(),
            target: "/ro".into(),
            writable: false,
        },
        ExtraMount::Layers {
            lowers: lowers.clone(),
            source: "out".into(),
            target: "/rw".into(),
            writable: true,
        },
        ExtraMount::Layers {
            lowers,
            source: "/link".into(),
            target: "/linked".into(),
            writable: false,
        },
        ExtraMount::Layers {
            lowers: vec![],
            source: "/".into(),
            target: "/empty".into(),
            writable: false,
        },
    ];
    let out = run(&spec);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "top-a\nbottom-b\nnew\nchanged\nbottom-b\n0\n");
    // Writes were discarded, the layers are untouched, no stub is left in the layer.
    assert_eq!(
        std::fs::read_to_string(top.join("out/a")).unwrap(),
        "top-a\n"
    );
    assert!(!top.join("out/new").exists() && !bottom.join("out/new").exists());
    assert!(fx.upper_entries().is_empty(), "{:?}", fx.upper_entries());
}

#[test]
fn file_mounts_hold_secrets_in_memory_only() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(true);
    let mut spec = fx.spec(
        "cat /run/secrets/tok; stat -c '%a %u %g' /run/secrets/tok; \
         echo x > /run/secrets/tok 2>/dev/null && echo writable; \
         grep -c ' /run/secrets/tok ' /proc/self/mountinfo",
    );
    spec.extra_mounts = vec![ExtraMount::File {
        contents: b"s3cr3t-value".to_vec(),
        target: "/run/secrets/tok".into(),
        mode: 0o400,
        uid: 1000,
        gid: 1000,
    }];
    let out = run(&spec);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "s3cr3t-value400 1000 1000\n1\n");
    assert!(fx.upper_entries().is_empty(), "{:?}", fx.upper_entries());
}
