//! `--isolation=auto|sandbox|chroot` through the real CLI: builds run under the restrictions of
//! an unprivileged container (Docker's default capability set without CAP_SYS_ADMIN, dropped
//! from the bounding set by `setpriv`, and a seccomp filter — cli/tests/isolation/
//! unprivileged.c — that makes unshare, setns, the mount calls and clone with namespace flags
//! fail with EPERM), and chroot isolation forced on this (privileged) host. Images are checked
//! through `--output type=local`; attacks from the step are checked on the host afterwards.
//! Needs root, the test registry, cc and setpriv: a missing one fails the test (never skipped).
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{require_tools, Project, Run};

/// Docker's default capabilities without NET_RAW (as setpriv names them): no SYS_ADMIN.
const DOCKER_CAPS: &str = "-all,+chown,+dac_override,+fowner,+fsetid,+kill,+setgid,+setuid,\
                           +setpcap,+net_bind_service,+sys_chroot,+mknod,+audit_write,+setfcap";

/// The seccomp wrapper, compiled once.
fn wrapper() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        require_tools(&["cc", "setpriv"]);
        let dir =
            std::env::temp_dir().join(format!("rbuild-isolation-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let out = dir.join("unprivileged");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/isolation/unprivileged.c");
        let o = Command::new("cc")
            .args(["-static", "-O1", "-o"])
            .arg(&out)
            .arg(&src)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "cc -static unprivileged.c (install libc6-dev): {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    })
}

/// `rbuild build ARGS… .` of `p` as in an unprivileged container.
fn build_unprivileged(p: &Project, args: &[&str]) -> Run {
    let mut a = vec!["build"];
    a.extend_from_slice(args);
    a.push(".");
    let mut c = common::wrapped(
        wrapper(),
        ["setpriv", "--bounding-set", DOCKER_CAPS, "--"],
        &p.cmd(&a),
    );
    c.env_remove("RBUILD_ISOLATION");
    Run {
        out: c.output().unwrap(),
    }
}

/// The restrictions really are those of an unprivileged container: namespaces and mounts fail.
fn check_restricted() {
    let o = Command::new(wrapper())
        .args(["setpriv", "--bounding-set", DOCKER_CAPS, "--", "sh", "-c"])
        .arg("unshare -m true && echo MOUNT-NS; unshare -U true && echo USER-NS; grep CapEff /proc/self/status")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        !out.contains("MOUNT-NS") && !out.contains("USER-NS"),
        "{out}"
    );
    assert!(out.contains("CapEff:\t00000000a80405fb"), "{out}");
}

const DOCKERFILE: &str = "FROM busybox\n\
    COPY a.txt /app/a.txt\n\
    RUN echo built > /app/b.txt && cat /app/a.txt >> /app/b.txt && echo x > /dev/null \
    && cat /etc/hosts > /app/hosts-seen && id -u > /app/uid\n\
    RUN mkdir /d && echo a > /d/a\n\
    RUN rm -rf /d && mkdir /d && echo b > /d/b\n\
    RUN echo tester:x:1234:1234::/home/app:/bin/sh >> /etc/passwd \
    && mkdir -p /home/app/work && chown -R 1234 /home/app\n\
    USER tester\n\
    ENV GREETING=hello\n\
    WORKDIR /home/app/work\n\
    RUN id -u > id && pwd > pwd && echo \"$GREETING\" > env\n";

fn project() -> Project {
    let p = Project::new(DOCKERFILE);
    p.file("a.txt", "from the context\n");
    p
}

/// The image of [`DOCKERFILE`] (exported to `out`) is right, whichever isolation built it.
fn check_image(out: &Path) {
    let read = |p: &str| fs::read_to_string(out.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("app/a.txt"), "from the context\n");
    assert_eq!(read("app/b.txt"), "built\nfrom the context\n");
    assert!(read("app/hosts-seen").contains("localhost"));
    assert_eq!(read("app/uid"), "0\n");
    assert_eq!(read("home/app/work/id"), "1234\n");
    assert_eq!(read("home/app/work/pwd"), "/home/app/work\n");
    assert_eq!(read("home/app/work/env"), "hello\n");
    assert!(read("etc/passwd").contains("tester:x:1234"));
    // A directory replaced by a step (an opaque directory in the layer, marked with a
    // user.* xattr where trusted.* needs CAP_SYS_ADMIN).
    assert_eq!(fs::read_dir(out.join("d")).unwrap().count(), 1);
    assert_eq!(read("d/b"), "b\n");
    // What the step was given is not in the image: busybox has none of these.
    for gone in ["etc/hosts", "etc/resolv.conf", "etc/hostname", "dev"] {
        assert!(
            fs::symlink_metadata(out.join(gone)).is_err(),
            "{gone} leaked into the image"
        );
    }
}

#[test]
fn auto_falls_back_to_chroot_in_an_unprivileged_container() {
    check_restricted();
    let p = project();
    let out = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", out.path().display());
    let r = build_unprivileged(&p, &["--output", &dest]).ok();
    let warnings: Vec<_> = r
        .stderr()
        .lines()
        .filter(|l| l.contains("chroot isolation"))
        .map(str::to_string)
        .collect();
    assert_eq!(warnings.len(), 1, "one warning: {}", r.stderr());
    assert!(
        warnings[0].contains("WARNING") && warnings[0].contains("host's network"),
        "{}",
        warnings[0]
    );
    check_image(out.path());
}

#[test]
fn sandbox_isolation_fails_clearly_in_an_unprivileged_container() {
    let p = project();
    let r = build_unprivileged(&p, &["--isolation=sandbox"]).fails();
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    let e = r.stderr();
    assert!(
        e.contains("--isolation=sandbox") && e.contains("--isolation=chroot"),
        "{e}"
    );
    assert!(!e.contains("RUN echo"), "nothing ran: {e}");
}

#[test]
fn network_none_fails_clearly_without_a_network_namespace() {
    let p = Project::new("FROM busybox\nRUN --network=none true\n");
    let r = build_unprivileged(&p, &[]).fails();
    let e = r.stderr();
    assert!(
        e.contains("--network=none") && e.contains("network namespace"),
        "{e}"
    );
    // The same through the flag.
    let p = Project::new("FROM busybox\nRUN true\n");
    let e = build_unprivileged(&p, &["--network=none"]).fails().stderr();
    assert!(e.contains("--network=none"), "{e}");
}

#[test]
fn chroot_isolation_on_a_normal_host() {
    let p = project();
    let out = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", out.path().display());
    let r = p.build(&["--isolation=chroot", "--output", &dest]).ok();
    assert!(
        !r.stderr().contains("WARNING"),
        "forced: no warning: {}",
        r.stderr()
    );
    check_image(out.path());
    // Here a network namespace can be made: network=none works.
    let p = Project::new("FROM busybox\nRUN --network=none ip link | grep -c mtu\n");
    let r = p.build(&["--isolation=chroot", "--progress=plain"]).ok();
    assert!(r.stderr().contains(" 1\n"), "only lo: {}", r.stderr());
}

#[test]
fn chroot_isolation_puts_back_generated_files() {
    // The image has its own /etc/hosts: the step sees the generated one, the image keeps its.
    // (A RUN writing /etc/hosts would not keep it either, as in Docker: a COPY puts it there.)
    let p = Project::new(
        "FROM busybox\nCOPY hosts /etc/hosts\n\
         RUN grep -c buildkitsandbox /etc/hosts > /seen\n",
    );
    p.file("hosts", "10.0.0.1 mine\n");
    let out = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", out.path().display());
    build_unprivileged(&p, &["--output", &dest]).ok();
    assert_eq!(
        fs::read_to_string(out.path().join("etc/hosts")).unwrap(),
        "10.0.0.1 mine\n"
    );
    assert_eq!(fs::read_to_string(out.path().join("seen")).unwrap(), "1\n");
}

#[test]
fn chroot_isolation_resists_escapes() {
    let marker = std::env::temp_dir().join(format!("rbuild-chroot-escape-{}", std::process::id()));
    let _ = fs::remove_dir_all(&marker);
    let m = marker.display();
    // Symlinks planted where rbuild writes the generated files and device stubs point to the
    // host (resolved inside the root, they must stay inside it); the step then tries the
    // classic chroot escape, a block device node, the host's /proc and /sys, and leaves a
    // process running after it.
    let dockerfile = format!(
        "FROM busybox\n\
         RUN rm -f /etc/hosts && ln -s /../../../../../../..{m}/hosts /etc/hosts \
         && ln -s ../../../../../../../..{m}/dev /dev\n\
         RUN (chroot / /bin/true 2>/dev/null && echo CHROOT-ALLOWED || true) \
         && (mknod /sda b 8 0 2>/dev/null && echo MKNOD-ALLOWED || true) \
         && (ls /proc/1/root/ 2>/dev/null && echo PROC-VISIBLE || true) \
         && (cat /sys/kernel/uevent_seqnum 2>/dev/null && echo SYS-VISIBLE || true) \
         && echo done\n\
         RUN (sleep {sleep} </dev/null >/dev/null 2>&1 &) ; true\n",
        sleep = 7000 + std::process::id() % 1000
    );
    for restricted in [true, false] {
        let p = Project::new(&dockerfile);
        let r = if restricted {
            build_unprivileged(&p, &["--progress=plain"])
        } else {
            p.build(&["--isolation=chroot", "--progress=plain"])
        }
        .ok();
        let e = r.stderr();
        assert!(e.contains(" done\n"), "{e}");
        for bad in [
            "CHROOT-ALLOWED",
            "MKNOD-ALLOWED",
            "PROC-VISIBLE",
            "SYS-VISIBLE",
        ] {
            assert!(
                !e.contains(&format!(" {bad}\n")),
                "{bad} (restricted: {restricted}): {e}"
            );
        }
        let left = Command::new("pgrep")
            .args([
                "-f",
                &format!("^sleep {}$", 7000 + std::process::id() % 1000),
            ])
            .output()
            .unwrap();
        assert!(
            left.stdout.is_empty(),
            "a process of the step outlived it (restricted: {restricted})"
        );
        assert!(
            !marker.exists(),
            "rbuild followed a symlink out of the root to {m} (restricted: {restricted})"
        );
    }
}

#[test]
fn the_isolation_flag_is_checked() {
    let p = Project::new("FROM busybox\n");
    let r = p.build(&["--isolation=jail"]).fails();
    assert_eq!(r.code(), Some(2), "{}", r.stderr());
    assert!(r.stderr().contains("--isolation"), "{}", r.stderr());
    let r = p.build(&["--isolation=chroot", "--runtime=runc"]).fails();
    assert_eq!(r.code(), Some(2), "{}", r.stderr());
    assert!(r.stderr().contains("--isolation=chroot"), "{}", r.stderr());
}

/// `rbuild build ARGS… .` of `p` run by `user` (who gets the project readable and the store),
/// through `wrap` (a restricting wrapper: program and its arguments) when not empty.
fn build_as(user: &common::TestUser, p: &Project, args: &[&str], wrap: &[&str]) -> Run {
    common::open_up(p.path());
    user.own(p.store.path());
    let mut a = vec!["build"];
    a.extend_from_slice(args);
    a.push(".");
    let mut cmd = user.wrap(&p.cmd(&a));
    if let Some((program, prefix)) = wrap.split_first() {
        cmd = common::wrapped(program, prefix, &cmd);
    }
    cmd.env_remove("RBUILD_ISOLATION");
    Run {
        out: cmd.output().unwrap(),
    }
}

/// A directory `user` may write `--output type=local` to, and the flag for it.
fn local_output(user: &common::TestUser) -> (tempfile::TempDir, String) {
    let out = tempfile::tempdir().unwrap();
    user.own(out.path());
    let dest = format!("type=local,dest={}", out.path().display());
    (out, dest)
}

#[test]
fn a_plain_user_still_gets_the_sandbox_and_can_force_chroot() {
    let user = common::test_user(common::RANGED_USER);
    let p = Project::new("FROM busybox\nRUN grep -c ^Pid: /proc/self/status > /seen\n");
    let (out, dest) = local_output(&user);
    let r = build_as(&user, &p, &["--output", &dest], &[]).ok();
    // auto: the user-namespace sandbox (with /proc), no fallback warning.
    assert!(!r.stderr().contains("chroot isolation"), "{}", r.stderr());
    assert_eq!(fs::read_to_string(out.path().join("seen")).unwrap(), "1\n");
    // Forced: chroot isolation inside rbuild's user namespace (no /proc there).
    let p = Project::new("FROM busybox\nRUN echo forced > /f && test ! -e /proc/self\n");
    build_as(&user, &p, &["--isolation=chroot"], &[]).ok();
}

#[test]
fn chroot_isolation_with_a_single_id_map() {
    // A plain user without subordinate ids (setgroups denied in rbuild's namespace), as a
    // non-root user in a container that allows user namespaces: the chroot has no /proc, so
    // what dropping privileges reads there must have been read before.
    let user = common::test_user(common::SINGLE_USER);
    let p = Project::new("FROM busybox\nRUN id -u > /uid && echo forced > /f\n");
    let (out, dest) = local_output(&user);
    build_as(&user, &p, &["--isolation=chroot", "--output", &dest], &[]).ok();
    assert_eq!(fs::read_to_string(out.path().join("uid")).unwrap(), "0\n");
    assert_eq!(
        fs::read_to_string(out.path().join("f")).unwrap(),
        "forced\n"
    );
}

#[test]
fn a_plain_user_without_user_namespaces_is_told_the_fix() {
    // A non-root user in a container whose seccomp profile refuses user namespaces (Docker's
    // default): the error says to run rbuild as root there.
    let user = common::test_user(common::RANGED_USER);
    let p = Project::new("FROM busybox\nRUN true\n");
    let r = build_as(&user, &p, &[], &[wrapper().to_str().unwrap()]).fails();
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    let e = r.stderr();
    assert!(
        e.contains("unshare(CLONE_NEWUSER)")
            && e.contains("run rbuild as root in the container")
            && !e.contains(") :"),
        "{e}"
    );
}

/// An overlayfs mount over a temporary directory (a container's root filesystem), unmounted
/// on drop.
struct OverlayDir {
    base: tempfile::TempDir,
}

impl OverlayDir {
    fn new() -> Self {
        let base = tempfile::tempdir().unwrap();
        for d in ["lower", "upper", "work", "merged"] {
            fs::create_dir(base.path().join(d)).unwrap();
        }
        let b = base.path().display();
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={b}/lower,upperdir={b}/upper,workdir={b}/work"
            ))
            .arg(base.path().join("merged"))
            .status()
            .unwrap();
        assert!(st.success(), "mount overlayfs at {b}/merged");
        OverlayDir { base }
    }
    fn merged(&self) -> PathBuf {
        self.base.path().join("merged")
    }
}

impl Drop for OverlayDir {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.merged()).status();
    }
}

#[test]
fn a_store_on_overlayfs_keeps_deleted_files_deleted() {
    // overlayfs (a container's root filesystem, where the default store is) refuses to create
    // whiteouts: a store there keeps them as marker files. Files deleted by a pulled layer and
    // by steps stay deleted in later steps, outputs and the layers written, with chroot
    // isolation (as in an unprivileged container) and with the sandbox, which a store on
    // overlayfs puts on the copy snapshotter.
    let ovl = OverlayDir::new();
    let base = format!(
        "{}/rbuild-test/whiteouts-{}:1",
        common::REGISTRY,
        std::process::id()
    );
    Project::new("FROM busybox\nRUN rm /bin/vi && mkdir /d && echo a > /d/a\nRUN rm /d/a\n")
        .build(&["--push", "-t", &base])
        .ok();
    for (i, isolation) in ["--isolation=chroot", "--isolation=sandbox"]
        .into_iter()
        .enumerate()
    {
        let store = ovl.merged().join(format!("store{i}"));
        let p = Project::new(&format!(
            "FROM {base}\n\
             RUN test ! -e /bin/vi && test ! -e /d/a && rm /bin/ls && echo gone > /gone\n\
             RUN test ! -e /bin/ls && ls -A /d | wc -l > /count\n"
        ));
        let out = tempfile::tempdir().unwrap();
        let dest = format!("type=local,dest={}", out.path().display());
        let mut c = p.cmd(&["build", isolation, "-t", "wh:1", "--output", &dest, "."]);
        c.env("RBUILD_ROOT", &store);
        Run {
            out: c.output().unwrap(),
        }
        .ok();
        for gone in ["bin/vi", "bin/ls", "d/a"] {
            assert!(
                fs::symlink_metadata(out.path().join(gone)).is_err(),
                "{gone} is back ({isolation})"
            );
        }
        assert_eq!(fs::read_to_string(out.path().join("count")).unwrap(), "0\n");
        assert!(out.path().join("bin/busybox").is_file());
        // The layers written from the store carry real whiteouts.
        let layout = format!("{}/layout-v1:docker.io/library/wh:1", store.display());
        let manifest = common::image::skopeo_inspect("--raw", &layout);
        let listing: String = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let digest = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
                common::image::tar_listing(&store.join("blobs-v1/sha256").join(digest))
            })
            .collect();
        for wh in ["bin/.wh.vi", "d/.wh.a", "bin/.wh.ls"] {
            assert!(listing.contains(wh), "{wh} ({isolation}): {listing}");
        }
        // A copy that lost the xattrs (`cp -r`, a CI cache) lost the markers too: refused at
        // open, as any store that lost its whiteouts.
        let copy = ovl.merged().join(format!("copy{i}"));
        assert!(Command::new("cp")
            .arg("-r")
            .arg(&store)
            .arg(&copy)
            .status()
            .unwrap()
            .success());
        let mut c = p.cmd(&["build", isolation, "."]);
        c.env("RBUILD_ROOT", &copy);
        let r = Run {
            out: c.output().unwrap(),
        }
        .fails();
        assert!(
            r.stderr()
                .contains("copied or restored without its overlay markers"),
            "{}",
            r.stderr()
        );
    }
}

#[test]
fn a_plain_user_under_a_masked_proc_falls_back_to_chroot() {
    // A non-root user in a container that allows user namespaces but hides parts of /proc
    // (Docker's masked paths, /proc/keys among them; Kubernetes' procMount: Default): the
    // kernel refuses the sandbox a new /proc in rbuild's user namespace, so auto isolation
    // falls back to chroot isolation with its warning, and --isolation=sandbox refuses.
    let user = common::test_user(common::RANGED_USER);
    let masked = |p: &Project, args: &[&str]| {
        let hide = "mount --bind /dev/null /proc/keys && exec \"$@\"";
        let wrap = [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            hide,
            "sh",
        ];
        build_as(&user, p, args, &wrap)
    };
    let p = Project::new("FROM busybox\nRUN echo built && test ! -e /proc/self\n");
    let r = masked(&p, &["--network=host"]).ok();
    let e = r.stderr();
    assert!(
        e.contains(" built\n") && e.matches("chroot isolation").count() == 1,
        "{e}"
    );
    let p = Project::new("FROM busybox\nRUN true\n");
    let r = masked(&p, &["--isolation=sandbox"]).fails();
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    assert!(
        r.stderr().contains("--isolation=sandbox") && r.stderr().contains("/proc"),
        "{}",
        r.stderr()
    );
    // Unmasked, the same user gets the sandbox (with /proc), no warning.
    let p = Project::new("FROM busybox\nRUN test -e /proc/self\n");
    let r = build_as(&user, &p, &["--network=host"], &[]).ok();
    assert!(!r.stderr().contains("chroot isolation"), "{}", r.stderr());
}
