//! RUN step mounts and sandbox policy: turns the graph's `RUN --mount` kinds into executor
//! mounts, with BuildKit's semantics.
//!
//! | kind | what the step gets |
//! |---|---|
//! | bind (context) | the context sub path, read-only; `rw`: an overlay whose upper dir is thrown away |
//! | bind (`from=` stage/image) | a merged read-only view of that chain (overlay of its snapshots), sub path `source`; `rw`: throwaway upper |
//! | cache | `cachemounts-v1/<id>` in the store (never in a layer), created with `mode/uid/gid`, seeded from `from`+`source` when new; `sharing=shared` (shared flock), `locked` (exclusive flock, waits), `private` (first instance not in use, else a new one); fresh under `--no-cache` (once per build) |
//! | tmpfs | a fresh tmpfs (`size`) |
//! | secret | the secret's bytes as a read-only file on the sandbox's private tmpfs (`mode/uid/gid`), and/or an env var; missing: skipped unless `required` |
//! | ssh | a per-step proxy socket (`mode/uid/gid`, relaying to the client's agent; `sshproxy.rs`) bound at the target; `SSH_AUTH_SOCK` is set by the frontend |
//!
//! Secret bytes are read when the step starts and travel only through the helper's stdin
//! pipe; they never enter a cache key (the op JSON has only the id), a layer, the history or
//! progress output.
//!
//! Policy (BuildKit entitlements): `RUN --network=host` needs `network.host`
//! (`--allow network.host`, implied by the CLI's `--network=host`), `RUN --security=insecure`
//! needs `security.insecure`.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rbuild_executor::{ExtraMount, Network, Security};
use rbuild_graph::{CacheSharing, Definition, ExecOp, MountKind, NetworkMode, Op, SecurityMode};
use rustix::fs::{flock, FlockOperation, Mode, OFlags};

use crate::ops::file::resolve_in_root;
use crate::sshproxy::SshProxy;
use crate::{Solver, Value};
use rbuild_cache::copysnap::materialize;

/// Where a build secret's bytes come from (CLI `--secret id=…,src=FILE` / `id=…,env=VAR`).
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Read this file when a step uses the secret.
    File(PathBuf),
    /// Read this environment variable (of the rbuild process).
    Env(String),
    /// These bytes.
    Bytes(Vec<u8>),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::File(p) => write!(f, "File({})", p.display()),
            SecretSource::Env(v) => write!(f, "Env({v})"),
            SecretSource::Bytes(b) => write!(f, "Bytes(<{} bytes>)", b.len()),
        }
    }
}

impl SecretSource {
    /// The secret's bytes; `None` when the file or variable does not exist.
    fn read(&self) -> Result<Option<Vec<u8>>, String> {
        match self {
            SecretSource::File(p) => match fs::read(p) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("reading secret file {}: {e}", p.display())),
            },
            SecretSource::Env(v) => Ok(std::env::var_os(v)
                .map(|s| std::os::unix::ffi::OsStrExt::as_bytes(s.as_os_str()).to_vec())),
            SecretSource::Bytes(b) => Ok(Some(b.clone())),
        }
    }
}

/// Entitlements granted to the build (`--allow`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entitlements {
    /// `network.host`: `RUN --network=host`.
    pub network_host: bool,
    /// `security.insecure`: `RUN --security=insecure`.
    pub security_insecure: bool,
}

/// Give every RUN step the build's `--add-host`, `--shm-size` and `--ulimit` settings, as
/// BuildKit's Dockerfile frontend does (they are in the op, so in its cache key; the host
/// addresses are not).
pub fn force_run_options(def: &mut Definition, options: &rbuild_graph::RunOptions) {
    if options.is_empty() {
        return;
    }
    for n in &mut def.nodes {
        if let Op::Exec(e) = &mut n.op {
            e.run_options = options.clone();
        }
    }
}

/// Set the network mode of every RUN step that uses the default (CLI `--network`), like
/// BuildKit's `force-network-mode`: the op changes, so does its cache key.
pub fn force_network(def: &mut Definition, mode: NetworkMode) {
    if mode == NetworkMode::Default {
        return;
    }
    for n in &mut def.nodes {
        if let Op::Exec(e) = &mut n.op {
            if e.network == NetworkMode::Default {
                e.network = mode;
            }
        }
    }
}

/// Per-build memory of the mount code: cache ids already made fresh under `--no-cache`.
#[derive(Debug, Default)]
pub struct MountState {
    fresh: Mutex<HashSet<String>>,
    /// Directory names (`cachemounts-v1/<name>`) of the cache mounts this build used.
    used: Mutex<std::collections::BTreeSet<String>>,
    /// Imported cache mounts that could not be used (the directory starts empty instead).
    warnings: Mutex<Vec<String>>,
}

impl MountState {
    /// The cache mount directories this build used (for `--cache-to …,cache-mounts=true`).
    /// The warnings gathered since the last call.
    pub(crate) fn take_warnings(&self) -> Vec<String> {
        self.warnings
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default()
    }

    pub(crate) fn used_names(&self) -> Vec<String> {
        self.used
            .lock()
            .map(|u| u.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// What a step's mounts need while it runs: held locks and temporary directories (removed on
/// drop).
#[derive(Default)]
pub(crate) struct Prepared {
    pub(crate) extra: Vec<ExtraMount>,
    /// `KEY=VALUE` to add to the step's environment (secrets with `env=`).
    pub(crate) env: Vec<String>,
    locks: Vec<OwnedFd>,
    temps: Vec<PathBuf>,
    ssh: Vec<SshProxy>,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // Proxies first: their sockets live in the temporary directories.
        self.ssh.clear();
        self.locks.clear();
        for t in &self.temps {
            let _ = fs::remove_dir_all(t);
        }
    }
}

fn io(what: &str, p: &Path, e: impl std::fmt::Display) -> String {
    format!("{what} {}: {e}", p.display())
}

impl Solver {
    /// Refuse steps whose mode needs an entitlement the build was not given.
    pub(crate) fn check_exec_policy(&self, op: &ExecOp) -> Result<(), String> {
        let ent = self.cfg.entitlements;
        if op.network == NetworkMode::Host && !ent.network_host {
            return Err(
                "network.host is not allowed: RUN --network=host needs --allow network.host".into(),
            );
        }
        if op.security == SecurityMode::Insecure && !ent.security_insecure {
            return Err("security.insecure is not allowed: RUN --security=insecure needs --allow security.insecure".into());
        }
        Ok(())
    }

    /// The executor's network and security for the step.
    pub(crate) fn exec_modes(&self, op: &ExecOp) -> (Network, Security) {
        let net = match op.network {
            NetworkMode::None => Network::None,
            NetworkMode::Default => Network::Isolated,
            NetworkMode::Host => Network::Host,
        };
        let sec = match op.security {
            SecurityMode::Sandbox => Security::Sandbox,
            SecurityMode::Insecure => Security::Insecure,
        };
        (net, sec)
    }

    /// Executor mounts for `op.mounts[1..]`.
    pub(crate) fn prepare_mounts(
        &self,
        op: &ExecOp,
        inputs: &[Value],
        no_cache: bool,
    ) -> Result<Prepared, String> {
        let mut p = Prepared::default();
        for (n, m) in op.mounts.iter().enumerate().skip(1) {
            let input = m.input.and_then(|i| inputs.get(i));
            match &m.kind {
                MountKind::Tmpfs { size } => p.extra.push(ExtraMount::Tmpfs {
                    target: m.target.clone(),
                    size: *size,
                }),
                MountKind::Bind { source, readonly } => {
                    let input =
                        input.ok_or_else(|| format!("bind mount {} has no input", m.target))?;
                    self.bind_mount(&mut p, n, input, source, &m.target, !*readonly)?;
                }
                MountKind::Cache {
                    id,
                    sharing,
                    source,
                    readonly,
                    mode,
                    uid,
                    gid,
                } => {
                    let spec = CacheSpec {
                        id,
                        sharing: *sharing,
                        source,
                        mode: *mode,
                        uid: *uid,
                        gid: *gid,
                    };
                    let dir = self.cache_mount(&mut p, &spec, input, no_cache)?;
                    p.extra.push(ExtraMount::Bind {
                        source: dir,
                        target: m.target.clone(),
                        readonly: *readonly,
                    });
                }
                MountKind::Secret {
                    id,
                    env,
                    required,
                    mode,
                    uid,
                    gid,
                } => {
                    let bytes = match self.cfg.secrets.get(id) {
                        Some(src) => src.read()?,
                        None => None,
                    };
                    let Some(bytes) = bytes else {
                        if *required {
                            return Err(format!("secret {id}: not found"));
                        }
                        continue;
                    };
                    if let Some(var) = env {
                        let text = String::from_utf8(bytes.clone())
                            .map_err(|_| format!("secret {id}: env={var} needs UTF-8 bytes"))?;
                        p.env.push(format!("{var}={text}"));
                    }
                    if !m.target.is_empty() {
                        p.extra.push(ExtraMount::File {
                            contents: bytes,
                            target: m.target.clone(),
                            mode: *mode,
                            uid: *uid,
                            gid: *gid,
                        });
                    }
                }
                MountKind::Ssh {
                    id,
                    required,
                    mode,
                    uid,
                    gid,
                } => match self.cfg.ssh.get(id) {
                    Some(sock) => {
                        let mut dir = self.temp_dir(&mut p, &format!("ssh{n}"))?;
                        if dir.as_os_str().len() > 90 {
                            // A unix socket path must fit in 108 bytes: use the system's
                            // temporary directory when the store's path is too long.
                            dir = std::env::temp_dir()
                                .join(dir.file_name().map(|f| f.to_owned()).unwrap_or_default());
                            fs::create_dir(&dir).map_err(|e| io("mkdir", &dir, e))?;
                            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                                .map_err(|e| io("chmod", &dir, e))?;
                            p.temps.push(dir.clone());
                        }
                        let proxy = SshProxy::start(sock, &dir, *mode, *uid, *gid)?;
                        p.extra.push(ExtraMount::Bind {
                            source: proxy.socket().to_path_buf(),
                            target: m.target.clone(),
                            readonly: false,
                        });
                        p.ssh.push(proxy);
                    }
                    None if *required => {
                        return Err(format!(
                            "no SSH key {id:?} forwarded from the client (use --ssh {id}[=SOCKET])"
                        ))
                    }
                    None => {}
                },
            }
        }
        Ok(p)
    }

    fn bind_mount(
        &self,
        p: &mut Prepared,
        n: usize,
        input: &Value,
        source: &str,
        target: &str,
        writable: bool,
    ) -> Result<(), String> {
        let rel = source.trim_start_matches('/');
        let copy = self.copy_mode();
        match input {
            Value::Local(dir) => {
                // The context is a live directory: it is never bound or read through a
                // resolved path (a component could be swapped for a symlink to the host in
                // between). The sandbox mounts the context root and resolves `source` beneath
                // it through fds, or, in copy mode, the copier reads it through fds.
                let root = rbuild_fsroot::Root::new(&dir.path)
                    .map_err(|e| format!("bind mount source {source}: {e}"))?;
                let r = root
                    .resolve(rel, true)
                    .map_err(|e| format!("bind mount source: {e}"))?;
                let Some(fd) = &r.fd else {
                    return Err(format!(
                        "bind mount source {source}: no such file or directory"
                    ));
                };
                let is_dir = rustix::fs::fstat(fd).is_ok_and(|st| {
                    rustix::fs::FileType::from_raw_mode(st.st_mode)
                        == rustix::fs::FileType::Directory
                });
                if writable && copy {
                    let tmp = self.temp_dir(p, &format!("bind{n}"))?;
                    let dst = tmp.join("src");
                    crate::ops::file::copy_local(&root, &r, &dst, is_dir)
                        .map_err(|e| format!("bind mount source {source}: {e}"))?;
                    p.extra.push(ExtraMount::Bind {
                        source: dst,
                        target: target.to_string(),
                        readonly: false,
                    });
                } else {
                    p.extra.push(ExtraMount::Layers {
                        lowers: vec![dir.path.clone()],
                        source: r.rel.to_string_lossy().into_owned(),
                        target: target.to_string(),
                        writable,
                    });
                }
            }
            Value::Chain(chain) => {
                let lowers = self.lowers(chain).map_err(|e| e.to_string())?;
                if copy {
                    let tmp = self.temp_dir(p, &format!("bind{n}"))?;
                    let root = tmp.join("root");
                    fs::create_dir(&root).map_err(|e| io("mkdir", &root, e))?;
                    let bottom_first: Vec<PathBuf> = lowers.into_iter().rev().collect();
                    materialize(&bottom_first, &root).map_err(|e| e.to_string())?;
                    let path = resolve_in_root(&root, rel, true)
                        .map_err(|e| format!("bind mount source {source}: {e}"))?;
                    fs::symlink_metadata(&path)
                        .map_err(|e| format!("bind mount source {source}: {e}"))?;
                    p.extra.push(ExtraMount::Bind {
                        source: path,
                        target: target.to_string(),
                        readonly: !writable,
                    });
                } else {
                    p.extra.push(ExtraMount::Layers {
                        lowers,
                        source: rel.to_string(),
                        target: target.to_string(),
                        writable,
                    });
                }
            }
        }
        Ok(())
    }

    fn temp_dir(&self, p: &mut Prepared, kind: &str) -> Result<PathBuf, String> {
        let t = self.cfg.store.new_tmp_path(kind);
        fs::create_dir_all(&t).map_err(|e| io("mkdir", &t, e))?;
        p.temps.push(t.clone());
        Ok(t)
    }

    /// The directory of a cache mount for this run, locked as its sharing mode says.
    fn cache_mount(
        &self,
        p: &mut Prepared,
        spec: &CacheSpec<'_>,
        input: Option<&Value>,
        no_cache: bool,
    ) -> Result<PathBuf, String> {
        let base = self.cfg.store.root().join("cachemounts-v1");
        fs::create_dir_all(&base).map_err(|e| io("mkdir", &base, e))?;
        let name = cache_dir_name(spec.id);
        if let Ok(mut used) = self.mounts.used.lock() {
            used.insert(name.clone());
        }
        if no_cache {
            let first = self
                .mounts
                .fresh
                .lock()
                .map(|mut s| s.insert(spec.id.to_string()))
                .unwrap_or(false);
            if first {
                // Exclusive lock on the first instance while its content is dropped.
                let lock = lock_file(&base, &name, 0, FlockOperation::LockExclusive)?;
                let dir = base.join(&name);
                if dir.exists() {
                    let old = self.cfg.store.new_tmp_path("cache-old");
                    fs::rename(&dir, &old).map_err(|e| io("rename", &dir, e))?;
                    let _ = fs::remove_dir_all(&old);
                }
                drop(lock);
            }
        }
        let (instance, lock) = match spec.sharing {
            CacheSharing::Shared => (0, lock_file(&base, &name, 0, FlockOperation::LockShared)?),
            CacheSharing::Locked => (
                0,
                lock_file(&base, &name, 0, FlockOperation::LockExclusive)?,
            ),
            CacheSharing::Private => {
                let mut i = 0u32;
                loop {
                    match try_lock_file(&base, &name, i)? {
                        Some(l) => break (i, l),
                        None => i += 1,
                    }
                }
            }
        };
        p.locks.push(lock);
        let dir = if instance == 0 {
            base.join(&name)
        } else {
            base.join(format!("{name}.{instance}"))
        };
        if !dir.exists() {
            self.create_cache_dir(p, &dir, spec, input)?;
        }
        if input.is_none() && !spec.source.trim_start_matches('/').is_empty() {
            // `source` without `from`: a sub path of the cache itself, kept inside it.
            let sub = resolve_in_root(&dir, spec.source, true)
                .map_err(|e| format!("cache mount source {}: {e}", spec.source))?;
            fs::create_dir_all(&sub).map_err(|e| io("mkdir", &sub, e))?;
            return Ok(sub);
        }
        Ok(dir)
    }

    fn create_cache_dir(
        &self,
        p: &mut Prepared,
        dir: &Path,
        spec: &CacheSpec<'_>,
        input: Option<&Value>,
    ) -> Result<(), String> {
        let tmp = self.temp_dir(p, "cache-new")?;
        let fresh = tmp.join("dir");
        let rel = spec.source.trim_start_matches('/');
        match input {
            None => {
                fs::create_dir(&fresh).map_err(|e| io("mkdir", &fresh, e))?;
                // A new directory starts with what an imported cache holds for it (only
                // the first instance: private copies start empty, as in BuildKit).
                let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if let Err(e) = self.import_cache_mount(name, &fresh) {
                    // A broken import is not the step's failure: it starts empty.
                    let _ = fs::remove_dir_all(&fresh);
                    fs::create_dir(&fresh).map_err(|e| io("mkdir", &fresh, e))?;
                    if let Ok(mut w) = self.mounts.warnings.lock() {
                        w.push(format!("{e}; the cache mount starts empty"));
                    }
                }
            }
            Some(Value::Chain(chain)) => {
                let root = tmp.join("root");
                fs::create_dir(&root).map_err(|e| io("mkdir", &root, e))?;
                let mut layers = self.lowers(chain).map_err(|e| e.to_string())?;
                layers.reverse();
                materialize(&layers, &root).map_err(|e| e.to_string())?;
                let src = resolve_in_root(&root, rel, true)
                    .map_err(|e| format!("cache mount source {}: {e}", spec.source))?;
                if !src.is_dir() {
                    return Err(format!(
                        "cache mount source {}: not a directory in the from= stage",
                        spec.source
                    ));
                }
                fs::rename(&src, &fresh).map_err(|e| io("rename", &src, e))?;
            }
            Some(Value::Local(local)) => {
                // The live context: read through fds beneath its root only.
                let bad = |e: String| format!("cache mount source {}: {e}", spec.source);
                let root = rbuild_fsroot::Root::new(&local.path).map_err(|e| bad(e.to_string()))?;
                let src = root.resolve(rel, true).map_err(|e| bad(e.to_string()))?;
                let is_dir = src.stat().ok().flatten().is_some_and(|st| {
                    rustix::fs::FileType::from_raw_mode(st.st_mode)
                        == rustix::fs::FileType::Directory
                });
                if !is_dir {
                    return Err(bad("not a directory".into()));
                }
                crate::ops::file::copy_local(&root, &src, &fresh, true).map_err(bad)?;
            }
        }
        if input.is_none() {
            fs::set_permissions(&fresh, fs::Permissions::from_mode(spec.mode & 0o7777))
                .map_err(|e| io("chmod", &fresh, e))?;
            rustix::fs::chown(
                &fresh,
                Some(rustix::fs::Uid::from_raw(spec.uid)),
                Some(rustix::fs::Gid::from_raw(spec.gid)),
            )
            .map_err(|e| io("chown", &fresh, e))?;
        }
        // Another build may have created it meanwhile: then its directory wins.
        match fs::rename(&fresh, dir) {
            Ok(()) => Ok(()),
            Err(_) if dir.is_dir() => Ok(()),
            Err(e) => Err(io("rename", &fresh, e)),
        }
    }
}

struct CacheSpec<'a> {
    id: &'a str,
    sharing: CacheSharing,
    source: &'a str,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// Directory name of a cache id: a digest prefix plus a readable, safe part.
fn cache_dir_name(id: &str) -> String {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let digest = rbuild_graph::sha256_digest(id.as_bytes());
    format!("{}-{safe}", &digest[7..19])
}

fn open_lock(base: &Path, name: &str, instance: u32) -> Result<OwnedFd, String> {
    let path = base.join(format!("{name}.{instance}.lock"));
    rustix::fs::open(
        &path,
        OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| io("open lock", &path, e))
}

fn lock_file(
    base: &Path,
    name: &str,
    instance: u32,
    op: FlockOperation,
) -> Result<OwnedFd, String> {
    let fd = open_lock(base, name, instance)?;
    loop {
        match flock(&fd, op) {
            Ok(()) => return Ok(fd),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(format!("locking cache mount {name}: {e}")),
        }
    }
}

fn try_lock_file(base: &Path, name: &str, instance: u32) -> Result<Option<OwnedFd>, String> {
    let fd = open_lock(base, name, instance)?;
    match flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(fd)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(format!("locking cache mount {name}: {e}")),
    }
}

/// Secrets by id, as the CLI passes them.
pub type Secrets = BTreeMap<String, SecretSource>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_never_shows_bytes() {
        let s = SecretSource::Bytes(b"hunter2".to_vec());
        assert_eq!(format!("{s:?}"), "Bytes(<7 bytes>)");
    }

    #[test]
    fn private_instances_are_distinct_while_locked() {
        let d = tempfile::tempdir().unwrap();
        let a = try_lock_file(d.path(), "x", 0).unwrap().unwrap();
        assert!(try_lock_file(d.path(), "x", 0).unwrap().is_none());
        let b = try_lock_file(d.path(), "x", 1).unwrap();
        assert!(b.is_some());
        drop(a);
        assert!(try_lock_file(d.path(), "x", 0).unwrap().is_some());
    }

    #[test]
    fn cache_dir_names_are_safe_and_distinct() {
        let a = cache_dir_name("/root/.cache/go-build");
        let b = cache_dir_name("/root/.cache/go_build");
        assert_ne!(a, b);
        assert!(!a.contains('/'));
    }
}
