//! Build-wide RUN step settings through the real CLI: `--add-host`, `--shm-size`, `--ulimit`
//! (part of every RUN op and of its cache key, like BuildKit; host addresses are not) and the
//! cgroup limits `--memory`, `--cpus`/`--cpu-quota`/`--cpu-period` (not keyed), with the
//! built-in sandbox and with runc.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use common::Project;

#[test]
fn add_host_entries_reach_every_run_step_and_only_host_names_are_keyed() {
    let p = Project::new("FROM busybox\nRUN cat /etc/hosts\nRUN grep -w db /etc/hosts\n");
    let r = p
        .build(&["--add-host", "db:10.1.2.3", "--add-host", "gw=host-gateway"])
        .ok();
    let out = r.stderr();
    assert_eq!(out.matches("10.1.2.3\tdb").count(), 2, "{out}");
    assert!(out.contains("127.0.0.1\tgw"), "{out}");
    assert!(
        out.contains("127.0.0.1\tlocalhost buildkitsandbox"),
        "{out}"
    );
    // Another address for the same names: cached (BuildKit keys the names, not the addresses).
    let r = p
        .build(&["--add-host", "db:10.9.9.9", "--add-host", "gw=host-gateway"])
        .ok();
    assert_eq!(r.cached(), 3, "{}", r.stderr());
    // Another name: both RUN steps run again.
    let r = p.build(&["--add-host", "db:10.1.2.3"]).ok();
    assert_eq!(r.cached(), 1, "{}", r.stderr());
    // No flag: the plain hosts file, and the ops are the ones a build without the flag has.
    let r = p.build(&[]).fails();
    assert!(!r.stderr().contains("10.1.2.3"), "{}", r.stderr());
}

fn shm_and_ulimit(runtime: &str) {
    let p = Project::new(
        "FROM busybox\nRUN ulimit -n; ulimit -Hn; ulimit -u; df -k /dev/shm | tail -n 1\n",
    );
    let limits = |nofile: &str| {
        p.build(&[
            "--runtime",
            runtime,
            "--shm-size",
            "32m",
            "--ulimit",
            nofile,
            "--ulimit",
            "nproc=300",
        ])
        .ok()
    };
    let r = limits("nofile=1024:2048");
    let out = r.stderr();
    for want in [" 1024\n", " 2048\n", " 300\n"] {
        assert!(out.contains(want), "{want:?} missing in {out}");
    }
    assert!(
        out.lines()
            .any(|l| l.contains("shm") && l.contains(" 32768 ")),
        "{out}"
    );
    // Changed limits change the key (BuildKit keeps them in the exec op).
    let r = limits("nofile=512:2048");
    assert_eq!(r.cached(), 1, "{}", r.stderr());
    assert!(r.stderr().contains(" 512\n"), "{}", r.stderr());
    // Default /dev/shm: 64 MiB, like Docker.
    let r = p.build(&["--runtime", runtime]).ok();
    assert!(
        r.stderr()
            .lines()
            .any(|l| l.contains("shm") && l.contains(" 65536 ")),
        "{}",
        r.stderr()
    );
}

#[test]
fn shm_size_and_ulimits_apply_to_run_steps() {
    shm_and_ulimit("builtin");
}

#[test]
fn shm_size_and_ulimits_apply_to_run_steps_with_runc() {
    shm_and_ulimit("runc");
}

fn memory_limit(runtime: &str) {
    let p = Project::new(
        "FROM busybox\nRUN x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo SURV\"\"IVED\n",
    );
    let r = p.build(&["--runtime", runtime, "--memory", "32m"]).fails();
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    let err = r.stderr();
    assert!(
        err.contains("out of memory: the step reached its memory limit of 33554432 bytes"),
        "{err}"
    );
    assert!(!err.contains("SURVIVED"), "{err}");
    // Limits are not part of the key: a roomy limit runs the same step (nothing cached, since
    // it failed), and a rebuild without a limit is a cache hit.
    p.build(&["--runtime", runtime, "--memory", "1g", "--cpus", "0.5"])
        .ok();
    let r = p.build(&["--runtime", runtime]).ok();
    assert_eq!(r.cached(), 2, "{}", r.stderr());
    // The step can read its limits: its cgroup is mounted read-only under /sys/fs/cgroup.
    let p = Project::new(
        "FROM busybox\nRUN cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max\n",
    );
    let r = p
        .build(&["--runtime", runtime, "--memory", "64m", "--cpus", "0.5"])
        .ok();
    let out = r.stderr();
    assert!(
        out.contains(" 67108864\n")
            && (out.contains(" 50000\n") || out.contains(" 50000 100000\n")),
        "{out}"
    );
}

#[test]
fn a_step_above_its_memory_limit_is_oom_killed_and_the_error_says_so() {
    memory_limit("builtin");
}

#[test]
fn a_step_above_its_memory_limit_is_oom_killed_with_runc() {
    memory_limit("runc");
}

#[test]
fn resource_flags_are_checked_before_the_build() {
    let p = Project::new("FROM busybox\nRUN true\n");
    for (args, msg) in [
        (
            &["--cpus", "1", "--cpu-quota", "50000"][..],
            "--cpus and --cpu-quota",
        ),
        (&["--cpu-period", "10"][..], "--cpu-period"),
        (&["--memory", "1k"][..], "--memory"),
    ] {
        let r = p.build(args).fails();
        assert_eq!(r.code(), Some(2), "{args:?}: {}", r.stderr());
        assert!(r.stderr().contains(msg), "{args:?}: {}", r.stderr());
    }
}
