//! Security and `RUN --mount` suite through the real CLI: real namespaces, overlayfs, seccomp,
//! the test registry on 127.0.0.1:5055 (seeded with busybox by `.ci/setup.sh`). Every check
//! runs inside a real build step; results are read from the step's output or from the image
//! layers in the store. Needs root; a missing prerequisite fails the test with the reason.
//!
//! The same suite runs with the copy snapshotter (`RBUILD_SNAPSHOTTER=copy`) for the mount
//! kinds, through [`Backend`], and rootless ([`As`]): the real binary run by the unprivileged
//! test users of `.ci/setup.sh`, with subordinate id ranges or a single-id map.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use common::{require_env, Run, REGISTRY};

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use tempfile::TempDir;

/// Docker's default capability set as /proc/self/status prints it.
const DOCKER_CAPS: &str = "00000000a80425fb";
/// The same without `CAP_NET_RAW`: steps on the default (isolated) network (docs/sandbox.md).
const ISOLATED_NET_CAPS: &str = "00000000a80405fb";

#[derive(Clone, Copy, Debug)]
enum Backend {
    /// Built-in sandbox on overlayfs.
    Overlay,
    /// Built-in sandbox with the copy snapshotter.
    Copy,
    /// runc on overlayfs.
    Runc,
}

/// Who runs rbuild.
#[derive(Clone, Copy, Debug, PartialEq)]
enum As {
    /// The test process (root).
    Root,
    /// The unprivileged test user with subordinate id ranges (rootless, newuidmap).
    Rootless,
    /// The same user with `RBUILD_USERNS_MAP=single` (rootless, single-id map).
    RootlessSingle,
    /// A user without subordinate ranges (rootless, single-id map chosen automatically).
    RootlessNoRanges,
}

struct Project {
    dir: TempDir,
    store: TempDir,
    backend: Backend,
    user: Option<common::TestUser>,
    single_map: bool,
}

impl Project {
    fn new(dockerfile: &str) -> Self {
        Self::with_backend(dockerfile, Backend::Overlay)
    }

    fn with_backend(dockerfile: &str, backend: Backend) -> Self {
        Self::run_as(dockerfile, backend, As::Root)
    }

    fn run_as(dockerfile: &str, backend: Backend, who: As) -> Self {
        require_env();
        let user = match who {
            As::Root => None,
            As::Rootless | As::RootlessSingle => Some(common::test_user(common::RANGED_USER)),
            As::RootlessNoRanges => Some(common::test_user(common::SINGLE_USER)),
        };
        let p = Project {
            dir: tempfile::tempdir().unwrap(),
            store: tempfile::tempdir().unwrap(),
            backend,
            user,
            single_map: who == As::RootlessSingle,
        };
        if let Some(u) = &p.user {
            common::open_up(p.dir.path());
            u.own(p.store.path());
        }
        p.file("Dockerfile", dockerfile);
        p
    }

    fn file(&self, rel: &str, content: &str) -> &Self {
        let p = self.dir.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
        self
    }

    /// A tar archive `rel` in the context with one file `name` owned by `uid:gid`.
    fn owned_tar(&self, rel: &str, name: &str, uid: u64, gid: u64) {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_cksum();
        b.append_data(&mut h, name, &b"tar"[..]).unwrap();
        fs::write(self.dir.path().join(rel), b.into_inner().unwrap()).unwrap();
    }

    fn build(&self, args: &[&str]) -> Run {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
        c.arg("build")
            .args(args)
            .arg(".")
            .env("RBUILD_ROOT", self.store.path())
            .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
            .env("RBUILD_PROGRESS", "plain")
            .env(
                "RBUILD_SNAPSHOTTER",
                match self.backend {
                    Backend::Overlay | Backend::Runc => "overlay",
                    Backend::Copy => "copy",
                },
            )
            .env(
                "RBUILD_RUNTIME",
                match self.backend {
                    Backend::Runc => "runc",
                    _ => "builtin",
                },
            )
            .current_dir(self.dir.path());
        if self.single_map {
            c.env("RBUILD_USERNS_MAP", "single");
        }
        if let Some(u) = &self.user {
            // A user builds its own files (overlayfs cannot copy up files of unmapped owners).
            u.own_tree(self.dir.path());
            c = u.wrap(&c);
        }
        Run {
            out: c.output().unwrap(),
        }
    }

    fn blob(&self, digest: &str) -> PathBuf {
        self.store
            .path()
            .join("blobs-v1/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn manifest(&self, name: &str) -> Value {
        let index: Value = serde_json::from_slice(
            &fs::read(self.store.path().join("layout-v1/index.json")).unwrap(),
        )
        .unwrap();
        let full = format!("docker.io/library/{name}:latest");
        let m = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == full.as_str())
            .unwrap_or_else(|| panic!("{full} not in the store"));
        serde_json::from_slice(&fs::read(self.blob(m["digest"].as_str().unwrap())).unwrap())
            .unwrap()
    }

    /// Layer blob paths of an image, bottom first.
    fn layers(&self, name: &str) -> Vec<PathBuf> {
        self.manifest(name)["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| self.blob(l["digest"].as_str().unwrap()))
            .collect()
    }

    /// Every path in every layer of the image (tar -t).
    fn layer_paths(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for l in self.layers(name) {
            let o = Command::new("tar").arg("-tf").arg(&l).output().unwrap();
            assert!(o.status.success(), "tar -tf {}", l.display());
            out.extend(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(|s| format!("/{}", s.trim_start_matches("./").trim_end_matches('/'))),
            );
        }
        out
    }

    /// Contents of `path` in the top-most layer that has it.
    fn read(&self, name: &str, path: &str) -> String {
        for l in self.layers(name).iter().rev() {
            let o = Command::new("tar")
                .arg("-xOf")
                .arg(l)
                .arg(path.trim_start_matches('/'))
                .output()
                .unwrap();
            if o.status.success() {
                return String::from_utf8_lossy(&o.stdout).into_owned();
            }
        }
        panic!("{path} is in no layer of {name}")
    }

    /// Files of the store (blobs, index database, snapshots…) whose bytes contain `needle`.
    fn store_files_containing(&self, needle: &[u8]) -> Vec<PathBuf> {
        let mut hits = Vec::new();
        let mut stack = vec![self.store.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                let t = e.file_type().unwrap();
                if t.is_dir() {
                    stack.push(e.path());
                } else if t.is_file() {
                    let b = fs::read(e.path()).unwrap();
                    if b.windows(needle.len()).any(|w| w == needle) {
                        hits.push(e.path());
                    }
                }
            }
        }
        hits
    }
}

fn mount_kinds(backend: Backend, who: As) {
    let p = Project::run_as(
        r#"FROM busybox AS base
RUN mkdir -p /data/sub && echo base-data > /data/sub/f && ln -s /data/sub /data/link && ln -s / /data/root

FROM busybox
RUN mkdir /keep
RUN --mount=type=bind,target=/ctx cat /ctx/hello.txt > /keep/ctx && (touch /ctx/x 2>/dev/null && echo ctx > /keep/bad || true)
RUN --mount=type=bind,source=hello.txt,target=/one.txt,rw echo changed > /one.txt && cat /one.txt > /keep/rwfile
RUN --mount=type=bind,target=/ctx,rw echo x > /ctx/new && ls /ctx > /keep/rwls
RUN --mount=type=bind,from=base,source=/data/link,target=/m cat /m/f > /keep/from && (touch /m/y 2>/dev/null && echo from > /keep/bad || true)
RUN --mount=type=bind,from=base,source=/data,target=/m,rw echo y > /m/z && cat /m/z /m/sub/f > /keep/fromrw
RUN --mount=type=bind,from=base,source=/data/root/data/sub,target=/m cat /m/f > /keep/escape
RUN --mount=type=tmpfs,target=/t,size=1m df -k /t | tail -1 | awk '{print $2}' > /keep/tmpfs
RUN --mount=type=cache,target=/cache,from=base,source=/data/link ls /cache > /keep/seeded
RUN ls / > /keep/root
"#,
        backend,
        who,
    );
    p.file("hello.txt", "hello-ctx\n");
    let r = p.build(&["-t", "kinds"]).ok();
    assert!(
        !p.layer_paths("kinds").iter().any(|x| x == "/keep/bad"),
        "a read-only bind mount was writable: {}",
        r.all()
    );
    assert_eq!(p.read("kinds", "/keep/ctx"), "hello-ctx\n");
    assert_eq!(p.read("kinds", "/keep/rwfile"), "changed\n");
    assert_eq!(
        p.read("kinds", "/keep/rwls"),
        "Dockerfile\nhello.txt\nnew\n"
    );
    assert_eq!(p.read("kinds", "/keep/from"), "base-data\n");
    assert_eq!(p.read("kinds", "/keep/fromrw"), "y\nbase-data\n");
    assert_eq!(p.read("kinds", "/keep/escape"), "base-data\n");
    assert_eq!(p.read("kinds", "/keep/tmpfs"), "1024\n");
    assert_eq!(p.read("kinds", "/keep/seeded"), "f\n");
    // rw writes were discarded: the context is untouched, the base stage too.
    assert_eq!(
        fs::read_to_string(p.dir.path().join("hello.txt")).unwrap(),
        "hello-ctx\n"
    );
    assert!(!p.dir.path().join("new").exists());
    // No mount target (or stub) in any layer, and the step's root had none.
    let paths = p.layer_paths("kinds");
    for t in ["/ctx", "/one.txt", "/m", "/t", "/cache"] {
        assert!(
            !paths
                .iter()
                .any(|x| x == t || x.starts_with(&format!("{t}/"))),
            "{t} in a layer"
        );
    }
    let root = p.read("kinds", "/keep/root");
    for t in ["ctx", "one.txt", "m", "t", "cache"] {
        assert!(
            !root.lines().any(|l| l == t),
            "{t} left in the rootfs: {root}"
        );
    }
}

#[test]
fn every_mount_kind_works_with_overlayfs() {
    mount_kinds(Backend::Overlay, As::Root);
}

#[test]
fn every_mount_kind_works_with_the_copy_snapshotter() {
    mount_kinds(Backend::Copy, As::Root);
}

#[test]
fn every_mount_kind_works_with_runc() {
    mount_kinds(Backend::Runc, As::Root);
}

#[test]
fn a_step_cannot_see_or_reach_the_host() {
    isolation(Backend::Overlay, As::Root);
}

#[test]
fn a_runc_step_cannot_see_or_reach_the_host() {
    isolation(Backend::Runc, As::Root);
}

fn isolation(backend: Backend, who: As) {
    let marker = tempfile::NamedTempFile::new().unwrap();
    fs::write(marker.path(), "host-only").unwrap();
    let m = marker.path().display().to_string();
    let host_pid = std::process::id();
    let p = Project::run_as(
        &format!(
            r#"FROM busybox
RUN (echo "pid1=$(cat /proc/1/comm)"; \
     echo "procs=$(ls -d /proc/[0-9]* | wc -l)"; \
     test -e /proc/self/root/bin/sh && echo control-ok; \
     test -e {m} && echo marker-visible; \
     test -e /proc/self/root{m} && echo via-self-root; \
     test -e /proc/1/root{m} && echo via-1-root; \
     test -e /../../..{m} && echo via-dotdot; \
     ln -s / /hostlink && test -e /hostlink/..{m} && echo via-symlink; \
     test -e /proc/{host_pid} && echo host-pid-visible; \
     mkdir -p /mnt/x && (mount -t tmpfs none /mnt/x 2>/dev/null && echo mounted); \
     (umount /proc 2>/dev/null && echo unmounted); \
     (unshare -U true 2>/dev/null && echo unshared); \
     (nsenter -t 1 -n true 2>/dev/null && echo setns); \
     (kill -0 {host_pid} 2>/dev/null && echo host-pid-signalled); \
     cat /proc/kcore | wc -c | sed 's/^/kcore=/'; \
     (echo 1 > /proc/sys/kernel/ns_last_pid) 2>/dev/null && echo proc-sys-writable; \
     grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; \
     ls /dev | tr '\n' ' '; echo) > /report 2>&1
RUN --network=none ip -o link | awk -F': ' '{{print $2}}' > /links
"#
        ),
        backend,
        who,
    );
    p.build(&["-t", "iso"]).ok();
    let rep = p.read("iso", "/report");
    let lines: Vec<&str> = rep.lines().collect();
    assert_eq!(lines[0], "pid1=sh", "{rep}");
    // sh, the subshell, ls (and the pipe's wc): only the step's own processes.
    let procs: usize = lines[1]
        .trim_start_matches("procs=")
        .trim()
        .parse()
        .unwrap();
    assert!(procs <= 4, "{rep}");
    for bad in [
        "marker-visible",
        "via-self-root",
        "via-1-root",
        "via-dotdot",
        "via-symlink",
        "host-pid-visible",
        "mounted",
        "unmounted",
        "unshared",
        "setns",
        "host-pid-signalled",
        "proc-sys-writable",
    ] {
        assert!(!lines.contains(&bad), "{bad}:\n{rep}");
    }
    assert!(lines.contains(&"control-ok"), "{rep}");
    assert!(lines.contains(&"kcore=0"), "{rep}");
    assert!(
        lines.contains(&format!("CapEff:\t{ISOLATED_NET_CAPS}").as_str()),
        "{rep}"
    );
    assert!(
        lines.contains(&format!("CapBnd:\t{ISOLATED_NET_CAPS}").as_str()),
        "{rep}"
    );
    assert!(lines.contains(&"NoNewPrivs:\t1"), "{rep}");
    assert!(lines.contains(&"Seccomp:\t2"), "{rep}");
    let dev = lines.last().unwrap();
    // `core` (-> /proc/kcore, masked) is optional: runc links it only when kcore exists.
    let mut dev: Vec<&str> = dev.split_whitespace().filter(|d| *d != "core").collect();
    dev.sort();
    assert_eq!(
        dev,
        [
            "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin",
            "stdout", "tty", "urandom", "zero"
        ],
        "{rep}"
    );
    assert_eq!(p.read("iso", "/links"), "lo\n");
}

#[test]
fn secrets_are_readable_in_the_step_and_nowhere_else() {
    secrets(As::Root);
}

#[test]
fn rootless_secrets_are_readable_in_the_step_and_nowhere_else() {
    secrets(As::Rootless);
}

fn secrets(who: As) {
    const FILE_SECRET: &str = "file-secret-6f1d2c9a";
    const ENV_SECRET: &str = "env-secret-8b3e7d41";
    let p = Project::run_as(
        r#"FROM busybox
RUN --mount=type=secret,id=tok,mode=0440,uid=1000 --mount=source=expected,target=/expected \
    cmp -s /run/secrets/tok /expected/file && echo file-ok; \
    stat -c '%a %u' /run/secrets/tok; \
    (echo x > /run/secrets/tok) 2>/dev/null && echo w > /bad1; \
    echo done > /after
RUN --mount=type=secret,id=envtok,env=MY_TOKEN --mount=source=expected,target=/expected \
    test "$MY_TOKEN" = "$(cat /expected/env)" && echo env-ok; \
    test -e /run/secrets/envtok && echo f > /bad2; echo done > /after2
RUN --mount=type=secret,id=missing echo optional-missing-ok
"#,
        Backend::Overlay,
        who,
    );
    p.file("tok.txt", FILE_SECRET);
    p.file("expected/file", FILE_SECRET);
    p.file("expected/env", ENV_SECRET);
    let mut c_args = vec!["-t", "sec"];
    let src = format!("id=tok,src={}", p.dir.path().join("tok.txt").display());
    c_args.extend([
        "--secret",
        &src,
        "--secret",
        "id=envtok,env=RBUILD_TEST_SECRET",
    ]);
    std::env::set_var("RBUILD_TEST_SECRET", ENV_SECRET);
    let r = p.build(&c_args).ok();
    let out = r.all();
    let said = |w: &str| out.lines().any(|l| l.ends_with(&format!(" {w}")));
    assert!(said("file-ok"), "{out}");
    assert!(said("440 1000"), "{out}");
    assert!(said("env-ok"), "{out}");
    assert!(said("optional-missing-ok"), "{out}");
    for s in [FILE_SECRET, ENV_SECRET] {
        assert!(!out.contains(s), "secret in the progress output: {out}");
        // Not in any layer, config (history), manifest, the cache index or a snapshot.
        let hits = p.store_files_containing(s.as_bytes());
        assert!(hits.is_empty(), "secret {s} found in {hits:?}");
    }
    let paths = p.layer_paths("sec");
    assert!(!paths.iter().any(|x| x.starts_with("/run")), "{paths:?}");
    assert!(paths.iter().any(|x| x == "/after2"), "{paths:?}");
    assert!(
        !paths.iter().any(|x| x == "/bad1" || x == "/bad2"),
        "secret file writable, or env-only secret mounted as a file: {paths:?}"
    );
    // A changed secret value does not invalidate the cache (it is not in the key).
    p.file("tok.txt", "another-value");
    let again = p.build(&c_args).ok();
    assert!(
        !again.all().lines().any(|l| l.ends_with(" file-ok")),
        "{}",
        again.all()
    );
    assert!(again.all().contains("CACHED"), "{}", again.all());
    // required: a missing secret fails the step.
    let q = Project::run_as(
        "FROM busybox\nRUN --mount=type=secret,id=nope,required echo no\n",
        Backend::Overlay,
        who,
    );
    let r = q.build(&[]).fails();
    assert!(r.all().contains("secret nope: not found"), "{}", r.all());
}

#[test]
fn cache_mounts_persist_between_builds_and_never_enter_layers() {
    cache_mounts(As::Root);
}

#[test]
fn rootless_cache_mounts_persist_between_builds_and_never_enter_layers() {
    cache_mounts(As::Rootless);
}

fn cache_mounts(who: As) {
    let df = r#"FROM busybox
ARG RUNID
RUN --mount=type=cache,target=/root/.cache,id=shared-cache \
    echo "$RUNID" >> /root/.cache/runs && wc -l < /root/.cache/runs > /count && ls -ld /root/.cache | awk '{print $1}' > /perm
RUN --mount=type=cache,target=/locked,sharing=locked,mode=0700,uid=7 stat -c '%a %u' /locked > /lockedmeta
RUN --mount=type=cache,target=/private,sharing=private touch /private/p && ls /private > /privatels
"#;
    let p = Project::run_as(df, Backend::Overlay, who);
    p.build(&["-t", "c", "--build-arg", "RUNID=one"]).ok();
    assert_eq!(p.read("c", "/count"), "1\n");
    assert_eq!(p.read("c", "/perm"), "drwxr-xr-x\n");
    assert_eq!(p.read("c", "/lockedmeta"), "700 7\n");
    assert_eq!(p.read("c", "/privatels"), "p\n");
    p.build(&["-t", "c", "--build-arg", "RUNID=two"]).ok();
    assert_eq!(p.read("c", "/count"), "2\n");
    // --no-cache gives the step a fresh cache mount, which later builds then reuse.
    p.build(&["-t", "c", "--no-cache", "--build-arg", "RUNID=three"])
        .ok();
    assert_eq!(p.read("c", "/count"), "1\n");
    p.build(&["-t", "c", "--build-arg", "RUNID=four"]).ok();
    assert_eq!(p.read("c", "/count"), "2\n");
    let paths = p.layer_paths("c");
    for t in ["/root/.cache", "/locked", "/private"] {
        assert!(
            !paths
                .iter()
                .any(|x| x == t || x.starts_with(&format!("{t}/"))),
            "{t} in a layer: {paths:?}"
        );
    }
    let hits = p.store_files_containing(b"four\n");
    assert!(
        hits.iter()
            .all(|h| h.starts_with(p.store.path().join("cachemounts-v1"))),
        "cache content outside cachemounts-v1: {hits:?}"
    );
}

#[test]
fn network_and_security_modes_need_their_entitlements() {
    let host = Project::new("FROM busybox\nRUN --network=host ip -o link | wc -l\n");
    let r = host.build(&[]).fails();
    assert!(
        r.all().contains("network.host is not allowed"),
        "{}",
        r.all()
    );
    host.build(&["--allow", "network.host"]).ok();

    let ins = Project::new(
        "FROM busybox\nRUN --security=insecure grep -E '^(CapEff|Seccomp):' /proc/self/status > /st\n",
    );
    let r = ins.build(&[]).fails();
    assert!(
        r.all().contains("security.insecure is not allowed"),
        "{}",
        r.all()
    );
    ins.build(&["-t", "ins", "--allow", "security.insecure"])
        .ok();
    let st = ins.read("ins", "/st");
    assert!(st.contains("Seccomp:\t0"), "{st}");
    assert!(!st.contains(DOCKER_CAPS), "{st}");

    // CLI --network=none applies to every RUN without its own --network.
    let none = Project::new("FROM busybox\nRUN ip -o link | awk -F': ' '{print $2}' > /links\n");
    none.build(&["-t", "none", "--network", "none"]).ok();
    assert_eq!(none.read("none", "/links"), "lo\n");
}

#[test]
fn ssh_agent_socket_is_forwarded() {
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let p = Project::new(concat!(
        "FROM busybox\n",
        "RUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && echo \"sock=$SSH_AUTH_SOCK\" > /ssh",
        " && stat -c '%a %u %g' \"$SSH_AUTH_SOCK\" >> /ssh\n",
        "RUN --mount=type=ssh,target=/agent,mode=0660,uid=1000,gid=2000 stat -c '%a %u %g' /agent > /ssh2\n",
    ));
    let arg = format!("default={}", sock.display());
    p.build(&["-t", "ssh", "--ssh", &arg]).ok();
    // BuildKit's defaults: the step gets its own socket, 0600 root:root.
    assert_eq!(
        p.read("ssh", "/ssh"),
        "sock=/run/buildkit/ssh_agent.0\n600 0 0\n"
    );
    assert_eq!(p.read("ssh", "/ssh2"), "660 1000 2000\n");
    let paths = p.layer_paths("ssh");
    assert!(!paths.iter().any(|x| x.starts_with("/run")), "{paths:?}");
    let q = Project::new("FROM busybox\nRUN --mount=type=ssh,required echo x\n");
    let r = q.build(&[]).fails();
    assert!(r.all().contains("no SSH key"), "{}", r.all());
}

// ---------------------------------------------------------------------------------------------
// Rootless: the same suite as an unprivileged user, plus what only rootless mode has.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_rootless_step_cannot_see_or_reach_the_host() {
    isolation(Backend::Overlay, As::Rootless);
}

#[test]
fn a_rootless_step_with_a_single_id_map_cannot_see_or_reach_the_host() {
    isolation(Backend::Overlay, As::RootlessSingle);
}

#[test]
fn a_rootless_runc_step_cannot_see_or_reach_the_host() {
    isolation(Backend::Runc, As::Rootless);
}

#[test]
fn every_mount_kind_works_rootless() {
    mount_kinds(Backend::Overlay, As::Rootless);
}

#[test]
fn every_mount_kind_works_rootless_with_the_copy_snapshotter() {
    mount_kinds(Backend::Copy, As::Rootless);
}

/// Layer entries as `tar -tv --numeric-owner` prints them: (owner "uid/gid", path).
fn owners_and_paths(p: &Project, name: &str, layer: usize) -> Vec<(String, String)> {
    let l = &p.layers(name)[layer];
    let o = Command::new("tar")
        .args(["--numeric-owner", "-tvf"])
        .arg(l)
        .output()
        .unwrap();
    assert!(o.status.success(), "tar -tvf {}", l.display());
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f[1].to_string(), f[5].trim_end_matches('/').to_string())
        })
        .collect()
}

fn rootless_layers(backend: Backend) {
    let p = Project::run_as(
        r#"FROM busybox
COPY --chown=1000:1000 f /f
ADD owned.tar /
RUN touch /g && chown 1000:1000 /g && chown 65534:65534 /home && rm /etc/group && rm -rf /root && mkdir /root && echo n > /root/new
"#,
        backend,
        As::Rootless,
    );
    p.file("f", "context file\n");
    p.owned_tar("owned.tar", "tarred", 4242, 4343);
    p.build(&["-t", "owners"]).ok();
    let layers = p.layers("owners");
    let copy = owners_and_paths(&p, "owners", layers.len() - 3);
    assert!(copy.contains(&("1000/1000".into(), "f".into())), "{copy:?}");
    let add = owners_and_paths(&p, "owners", layers.len() - 2);
    assert!(
        add.contains(&("4242/4343".into(), "tarred".into())),
        "{add:?}"
    );
    let run = owners_and_paths(&p, "owners", layers.len() - 1);
    for want in [
        ("1000/1000", "g"),
        ("65534/65534", "home"),
        ("0/0", "etc/.wh.group"),
        ("0/0", "root/.wh..wh..opq"),
        ("0/0", "root/new"),
    ] {
        assert!(
            run.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} not in {run:?}"
        );
    }
    assert_eq!(p.read("owners", "/root/new"), "n\n");
    // The store was made rootless: its layer dirs mark opaque dirs with user.overlay.* (a
    // root process refuses the store rather than misreading it).
    let root_run = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .arg("images")
        .env("RBUILD_ROOT", p.store.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&root_run.stderr);
    assert!(!root_run.status.success(), "{err}");
    assert!(
        err.contains("made in rootless mode") && err.contains("root mode"),
        "{err}"
    );
}

#[test]
fn rootless_layers_record_owners_whiteouts_and_opaque_dirs() {
    rootless_layers(Backend::Overlay);
}

#[test]
fn rootless_layers_record_owners_whiteouts_and_opaque_dirs_with_the_copy_snapshotter() {
    rootless_layers(Backend::Copy);
}

#[test]
fn a_single_id_map_builds_as_root_and_names_the_fix_for_other_ids() {
    for who in [As::RootlessNoRanges, As::RootlessSingle] {
        let p = Project::run_as(
            "FROM busybox\nRUN cat /proc/self/uid_map > /map && echo ok > /ok\n",
            Backend::Overlay,
            who,
        );
        p.build(&["-t", "single"]).ok();
        assert_eq!(p.read("single", "/ok"), "ok\n");
        let map: Vec<String> = p
            .read("single", "/map")
            .split_whitespace()
            .map(String::from)
            .collect();
        // The namespace's map: 0 → the host user, one id.
        let uid = p.user.as_ref().unwrap().uid.to_string();
        assert_eq!(map, ["0", uid.as_str(), "1"], "{who:?}");

        let user = Project::run_as("FROM busybox\nUSER 1000\nRUN id\n", Backend::Overlay, who);
        let err = user.build(&[]).fails().all();
        assert!(
            err.contains("not mapped in rbuild's rootless user namespace")
                && err.contains("/etc/subuid"),
            "{who:?}: {err}"
        );
        let chown = Project::run_as(
            "FROM busybox\nCOPY --chown=1000 f /f\n",
            Backend::Overlay,
            who,
        );
        chown.file("f", "x");
        let err = chown.build(&[]).fails().all();
        assert!(
            err.contains("rootless mode maps only ids 0..0") && err.contains("/etc/subuid"),
            "{who:?}: {err}"
        );
        // Unpacking a tar (as for a layer) with an unmapped owner names the file.
        let add = Project::run_as("FROM busybox\nADD owned.tar /\n", Backend::Overlay, who);
        add.owned_tar("owned.tar", "tarred", 1000, 1000);
        let err = add.build(&[]).fails().all();
        assert!(
            err.contains("cannot give tarred the owner 1000:1000")
                && err.contains("rootless mode maps only ids 0..0"),
            "{who:?}: {err}"
        );
    }
}

#[test]
fn a_rootless_user_gets_a_store_in_its_home_by_default() {
    require_env();
    let user = common::test_user(common::RANGED_USER);
    let dir = tempfile::tempdir().unwrap();
    common::open_up(dir.path());
    fs::write(dir.path().join("Dockerfile"), "FROM busybox\nRUN true\n").unwrap();
    let home = tempfile::tempdir().unwrap();
    user.own(home.path());
    let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
    c.args(["build", "-t", "home", "."])
        .env_remove("RBUILD_ROOT")
        .env_remove("XDG_DATA_HOME")
        .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
        .env("RBUILD_PROGRESS", "plain")
        .current_dir(dir.path());
    let mut c = user.wrap(&c);
    c.env("HOME", home.path());
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = home.path().join(".local/share/rbuild");
    assert!(store.join("index-v1.db").is_file(), "no store in {store:?}");
    // The user's rbuild lists and prunes it (files owned by subordinate ids included).
    let mut images = Command::new(env!("CARGO_BIN_EXE_rbuild"));
    images.arg("images");
    let mut images = user.wrap(&images);
    images.env("HOME", home.path());
    let out = images.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("home"), "{text}");
}
