//! Configuration: the store location and registry settings.
//!
//! Sources, later ones winning: `~/.config/rbuild/config.toml` (or `$RBUILD_CONFIG`), then
//! environment variables. Config file format:
//!
//! ```toml
//! [registry."docker.io"]
//! mirrors = ["127.0.0.1:5055"]        # tried before the registry itself
//! [registry."myreg.local:5000"]
//! insecure = true                       # plain HTTP allowed
//! ```
//!
//! `RBUILD_REGISTRY_MIRRORS=docker.io=127.0.0.1:5055,quay.io=mirror.local` and
//! `RBUILD_INSECURE_REGISTRIES=host:port,host2` override/add to the file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
struct FileConfig {
    #[serde(default)]
    registry: BTreeMap<String, RegistryEntry>,
}

#[derive(Debug, Default, Deserialize)]
struct RegistryEntry {
    #[serde(default)]
    mirrors: Vec<String>,
    #[serde(default)]
    insecure: bool,
}

/// The store root: `--root`/`RBUILD_ROOT`, else `/var/lib/rbuild` for root, else
/// `$XDG_DATA_HOME/rbuild` (`~/.local/share/rbuild`).
pub fn store_root(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p);
    }
    if let Some(p) = std::env::var_os("RBUILD_ROOT").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if is_root() {
        return Ok(PathBuf::from("/var/lib/rbuild"));
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("rbuild"));
    }
    let home =
        std::env::var_os("HOME").context("neither RBUILD_ROOT, XDG_DATA_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/share/rbuild"))
}

/// Whether rbuild runs as root (effective uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Registry settings from the config file and the environment.
pub fn registry_config() -> Result<rbuild_oci::RegistryConfig> {
    let path = match std::env::var_os("RBUILD_CONFIG") {
        Some(p) => Some(PathBuf::from(p)),
        None => std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .map(|d| d.join("rbuild/config.toml")),
    };
    let mut file = FileConfig::default();
    if let Some(p) = path.filter(|p| p.exists()) {
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        file = toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
    }
    let mut mirrors: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut insecure = Vec::new();
    for (host, e) in file.registry {
        if !e.mirrors.is_empty() {
            mirrors.insert(host.clone(), e.mirrors);
        }
        if e.insecure {
            insecure.push(host);
        }
    }
    if let Ok(v) = std::env::var("RBUILD_REGISTRY_MIRRORS") {
        let mut from_env: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((host, mirror)) = pair.split_once('=') else {
                bail!("RBUILD_REGISTRY_MIRRORS: expected HOST=MIRROR, got {pair:?}");
            };
            from_env
                .entry(host.to_string())
                .or_default()
                .push(mirror.to_string());
        }
        mirrors.extend(from_env);
    }
    if let Ok(v) = std::env::var("RBUILD_INSECURE_REGISTRIES") {
        insecure.extend(
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        );
    }
    Ok(rbuild_oci::RegistryConfig {
        mirrors,
        insecure,
        user_agent: format!("rbuild/{}", env!("CARGO_PKG_VERSION")),
        docker_config: true,
        certs_dir: std::env::var_os("RBUILD_CERTS_DIR").map(PathBuf::from),
    })
}
