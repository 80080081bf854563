//! Sandbox-related build flags (buildx syntax): `--secret`, `--ssh`, `--allow`, `--network`.
//!
//! - `--secret id=ID,src=FILE` (also `source=`), `--secret id=ID,env=VAR`, `--secret id=ID`
//!   (a file or variable named like the id is not guessed: an id alone reads env `ID`, like
//!   buildx), `type=file|env` may be given explicitly;
//! - `--ssh default` (the `SSH_AUTH_SOCK` of rbuild's environment), `--ssh ID=SOCKET`;
//! - `--allow network.host`, `--allow security.insecure`;
//! - `--network default|none|host` (`host` grants `network.host`, as buildx does);
//! - `--isolation auto|sandbox|chroot` ([`isolation`]): the namespace sandbox, or chroot
//!   isolation where the sandbox cannot be set up (unprivileged containers);
//! - `--add-host`, `--shm-size`, `--ulimit` ([`run_options`]) and the cgroup limits `--memory`,
//!   `--cpu-quota`, `--cpu-period`, `--cpus` ([`resources`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use rbuild_executor::Resources;
use rbuild_graph::{ExtraHost, NetworkMode, RunOptions, Ulimit};

use crate::args::BuildArgs;
use crate::render::{BuildFailed, UsageError};
use rbuild_solver::{Entitlements, SecretSource};

/// The parsed sandbox flags.
#[derive(Debug, Default)]
pub struct SandboxOpts {
    pub secrets: BTreeMap<String, SecretSource>,
    pub ssh: BTreeMap<String, PathBuf>,
    pub entitlements: Entitlements,
    pub network: NetworkMode,
}

/// The runtime of RUN steps for `--isolation` (`RBUILD_ISOLATION`) and `--runtime`:
/// `sandbox` requires the namespace sandbox, `chroot` forces chroot isolation, `auto` uses the
/// sandbox when it can be set up here (a mount namespace can be made, and in a user namespace
/// a `/proc` mounted) and chroot isolation otherwise (see [`isolation_warning`]).
pub fn isolation(b: &BuildArgs) -> Result<rbuild_executor::Runtime> {
    let named = || {
        rbuild_executor::Runtime::from_name(&b.runtime)
            .map_err(|e| UsageError(format!("--runtime {}: {e}", b.runtime)))
    };
    Ok(match b.isolation.as_str() {
        "chroot" => {
            if !matches!(b.runtime.as_str(), "builtin" | "") {
                return Err(UsageError(format!(
                    "--isolation=chroot runs steps itself: it cannot be combined with \
                     --runtime {}",
                    b.runtime
                ))
                .into());
            }
            rbuild_executor::Runtime::Chroot
        }
        "sandbox" => {
            if !sandbox_supported()? {
                return Err(BuildFailed(
                    "--isolation=sandbox: the namespace sandbox cannot be set up here (no \
                     mount namespace can be created, or no /proc mounted in it: an \
                     unprivileged container without CAP_SYS_ADMIN or user namespaces, or one \
                     that hides parts of /proc?); use --isolation=chroot or \
                     --isolation=auto for reduced isolation (docs/sandbox.md)"
                        .into(),
                )
                .into());
            }
            named()?
        }
        _ if sandbox_supported()? => named()?,
        _ => rbuild_executor::Runtime::Chroot,
    })
}

/// How the executor starts its helper process: this binary with [`rbuild_executor::HELPER_ARG`].
pub fn helper() -> Result<rbuild_executor::Helper> {
    Ok(rbuild_executor::Helper {
        program: std::env::current_exe().context("locating the rbuild binary")?,
        args: vec![rbuild_executor::HELPER_ARG.to_string()],
    })
}

/// [`rbuild_executor::sandbox_supported`] with this binary as the helper (probed once).
fn sandbox_supported() -> Result<bool> {
    Ok(rbuild_executor::sandbox_supported(&helper()?))
}

/// The one-line warning of `--isolation=auto` when it falls back to chroot isolation.
pub fn isolation_warning(b: &BuildArgs) -> Option<&'static str> {
    (b.isolation == "auto" && !sandbox_supported().unwrap_or(true)).then_some(
        "the namespace sandbox cannot be set up here (unprivileged container?): RUN steps use \
         chroot isolation, with the host's network and weaker isolation (docs/sandbox.md; \
         --isolation=sandbox refuses this)",
    )
}

pub fn parse(
    secrets: &[String],
    ssh: &[String],
    allow: &[String],
    network: Option<&str>,
) -> Result<SandboxOpts> {
    let mut o = SandboxOpts::default();
    for s in secrets {
        let (id, src) = parse_secret(s)?;
        o.secrets.insert(id, src);
    }
    for s in ssh {
        let (id, sock) = match s.split_once('=') {
            Some((id, path)) => (
                id.to_string(),
                PathBuf::from(path.split(',').next().unwrap_or(path)),
            ),
            None => {
                let sock = std::env::var_os("SSH_AUTH_SOCK").ok_or_else(|| {
                    anyhow!(
                        "--ssh {s}: SSH_AUTH_SOCK is not set; give the socket as --ssh {s}=PATH"
                    )
                })?;
                (s.clone(), PathBuf::from(sock))
            }
        };
        if id.is_empty() {
            bail!("--ssh {s:?}: empty id");
        }
        let md =
            std::fs::metadata(&sock).map_err(|e| anyhow!("--ssh {id}: {}: {e}", sock.display()))?;
        if !std::os::unix::fs::FileTypeExt::is_socket(&md.file_type()) {
            bail!(
                "--ssh {id}: {} is not a socket (key files are not supported; use an agent)",
                sock.display()
            );
        }
        o.ssh.insert(id, sock);
    }
    for a in allow {
        for e in a.split(',') {
            match e.trim() {
                "network.host" => o.entitlements.network_host = true,
                "security.insecure" => o.entitlements.security_insecure = true,
                other => bail!(
                    "--allow {other:?}: unknown entitlement (network.host, security.insecure)"
                ),
            }
        }
    }
    o.network = network_mode(network)?;
    if o.network == NetworkMode::Host {
        o.entitlements.network_host = true;
    }
    Ok(o)
}

/// The `--network` value.
pub fn network_mode(network: Option<&str>) -> Result<NetworkMode> {
    Ok(match network.map(str::to_ascii_lowercase).as_deref() {
        None | Some("default") => NetworkMode::Default,
        Some("none") => NetworkMode::None,
        Some("host") => NetworkMode::Host,
        Some(other) => bail!("--network {other:?}: expected default, none or host"),
    })
}

/// `--add-host`, `--shm-size`, `--ulimit` as the options every RUN step gets. `host-gateway`
/// is 127.0.0.1: the host only with `--network=host` (the default isolated network never
/// reaches the host's loopback).
pub fn run_options(b: &BuildArgs) -> Result<RunOptions> {
    let mut o = RunOptions {
        shm_size: b.shm_size,
        ..RunOptions::default()
    };
    for h in &b.add_hosts {
        let (host, ip) = h
            .split_once('=')
            .or_else(|| h.split_once(':'))
            .ok_or_else(|| anyhow!("--add-host {h:?}: expected HOST:IP"))?;
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        let ip = if ip == "host-gateway" {
            "127.0.0.1"
        } else {
            ip
        };
        o.extra_hosts.push(ExtraHost {
            host: host.to_string(),
            ip: ip.to_string(),
        });
    }
    for u in &b.ulimits {
        let (name, limits) = u
            .split_once('=')
            .ok_or_else(|| anyhow!("--ulimit {u:?}: expected NAME=SOFT[:HARD]"))?;
        let (soft, hard) = limits.split_once(':').unwrap_or((limits, limits));
        let num = |v: &str| {
            v.parse::<i64>()
                .map_err(|_| anyhow!("--ulimit {u:?}: {v:?} is not a number"))
        };
        o.ulimits.retain(|x| x.name != name);
        o.ulimits.push(Ulimit {
            name: name.to_string(),
            soft: num(soft)?,
            hard: num(hard)?,
        });
    }
    Ok(o)
}

/// `--memory`, `--cpu-quota`, `--cpu-period`, `--cpus` as cgroup limits.
pub fn resources(b: &BuildArgs) -> Result<Resources> {
    let period = b.cpu_period;
    let quota = match (b.cpus, b.cpu_quota) {
        (Some(_), Some(_)) => bail!("--cpus and --cpu-quota cannot be used together"),
        (Some(c), None) if !(c > 0.0 && c.is_finite()) => {
            bail!("--cpus {c}: expected a positive number of CPUs")
        }
        (Some(c), None) => Some((c * period.unwrap_or(100_000) as f64).round() as u64),
        (None, q) => q,
    };
    if period.is_some_and(|p| !(1_000..=1_000_000).contains(&p)) {
        bail!("--cpu-period: expected 1000 to 1000000 microseconds");
    }
    if quota.is_some_and(|q| q < 1_000) {
        bail!("--cpu-quota: expected at least 1000 microseconds");
    }
    if b.memory.is_some_and(|m| m < 6 << 20) {
        bail!("--memory: the minimum memory limit is 6m (as Docker)");
    }
    Ok(Resources {
        memory: b.memory,
        cpu_quota: quota,
        cpu_period: period,
    })
}

/// The flags that set `r`, for error messages (`--memory/--cpus`).
pub fn resource_flags(b: &BuildArgs) -> String {
    let mut v = Vec::new();
    for (set, name) in [
        (b.memory.is_some(), "--memory"),
        (b.cpu_quota.is_some(), "--cpu-quota"),
        (b.cpu_period.is_some(), "--cpu-period"),
        (b.cpus.is_some(), "--cpus"),
    ] {
        if set {
            v.push(name);
        }
    }
    v.join("/")
}

fn parse_secret(s: &str) -> Result<(String, SecretSource)> {
    let mut id = None;
    let mut src = None;
    let mut env = None;
    let mut typ = None;
    for field in s.split(',') {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| anyhow!("--secret {s:?}: expected key=value fields"))?;
        match k.trim().to_ascii_lowercase().as_str() {
            "id" => id = Some(v.to_string()),
            "src" | "source" => src = Some(v.to_string()),
            "env" => env = Some(v.to_string()),
            "type" => typ = Some(v.to_string()),
            other => bail!("--secret {s:?}: unknown field {other:?} (id, src, env, type)"),
        }
    }
    let id = match (id, &src, &env) {
        (Some(id), _, _) => id,
        (None, Some(p), _) => std::path::Path::new(p)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        (None, None, Some(e)) => e.clone(),
        (None, None, None) => String::new(),
    };
    if id.is_empty() {
        bail!("--secret {s:?}: an id is required");
    }
    let source = match (typ.as_deref(), src, env) {
        (Some("env"), Some(v), None) | (_, None, Some(v)) => SecretSource::Env(v),
        (Some("file") | None, Some(p), None) => SecretSource::File(PathBuf::from(p)),
        (None, None, None) => SecretSource::Env(id.clone()),
        (Some("file"), None, None) => SecretSource::File(PathBuf::from(&id)),
        (Some("env"), None, None) => SecretSource::Env(id.clone()),
        _ => bail!("--secret {s:?}: give either src=FILE or env=VAR"),
    };
    if let SecretSource::File(p) = &source {
        if !p.is_file() {
            bail!("--secret {id}: {}: no such file", p.display());
        }
    }
    Ok((id, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_parse_like_buildx() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("tok");
        std::fs::write(&f, "x").unwrap();
        let o = parse(
            &[
                format!("id=a,src={}", f.display()),
                "id=b,env=HOME".into(),
                format!("source={}", f.display()),
                "id=c".into(),
            ],
            &[],
            &["network.host".into()],
            Some("none"),
        )
        .unwrap();
        assert_eq!(o.secrets["a"], SecretSource::File(f.clone()));
        assert_eq!(o.secrets["b"], SecretSource::Env("HOME".into()));
        assert_eq!(o.secrets["tok"], SecretSource::File(f));
        assert_eq!(o.secrets["c"], SecretSource::Env("c".into()));
        assert!(o.entitlements.network_host && !o.entitlements.security_insecure);
        assert_eq!(o.network, NetworkMode::None);
        assert!(parse(&["id=x,src=/nonexistent/file".into()], &[], &[], None).is_err());
        assert!(parse(&[], &[], &["device".into()], None).is_err());
        assert!(parse(&[], &[], &[], Some("bridge")).is_err());
        let h = parse(&[], &[], &[], Some("host")).unwrap();
        assert!(h.entitlements.network_host);
    }

    #[test]
    fn ssh_needs_a_socket() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("key");
        std::fs::write(&f, "x").unwrap();
        assert!(parse(&[], &[format!("default={}", f.display())], &[], None).is_err());
        let sock = d.path().join("agent.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let o = parse(&[], &[format!("default={}", sock.display())], &[], None).unwrap();
        assert_eq!(o.ssh["default"], sock);
    }
}
