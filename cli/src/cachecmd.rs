//! Cache settings of a build (`--explain`, `--no-cache-filter`, the step-identity scope) and
//! the store-management commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use rbuild_frontend::parse_size;
use rbuild_solver::gc::{self, gc_lock, PruneOptions};

use crate::images::human_size;
use rbuild_solver::CacheOptions;

use crate::args::{BuildArgs, PruneArgs};

/// The solver's cache options for a build. The step-identity scope is the Dockerfile's
/// canonical path and the target, so explanations compare a step with its own earlier runs.
pub fn cache_options(b: &BuildArgs, context: &Path) -> CacheOptions {
    let dockerfile = b.file.clone().unwrap_or_else(|| context.join("Dockerfile"));
    let dockerfile = std::fs::canonicalize(&dockerfile).unwrap_or(dockerfile);
    CacheOptions {
        explain: b.explain,
        scope: format!(
            "{}\n{}",
            dockerfile.display(),
            b.target.as_deref().unwrap_or("")
        ),
        no_cache_stages: b
            .no_cache_filter
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        ..CacheOptions::default()
    }
}

/// `rbuild du`: the store's disk usage by part.
pub fn du(root: &Path) -> Result<ExitCode> {
    let store = open(root)?;
    let u = store.usage()?;
    println!("{:<14} {:>10} {:>12}", "PART", "ENTRIES", "SIZE");
    let row = |name: &str, x: rbuild_cache::usage::Usage| {
        println!("{name:<14} {:>10} {:>12}", x.entries, human_size(x.bytes));
    };
    row("blobs", u.blobs);
    row("snapshots", u.snapshots);
    row("index", u.index);
    row("cache-mounts", u.cache_mounts);
    row("tmp", u.tmp);
    println!("{:<14} {:>10} {:>12}", "total", "", human_size(u.total()));
    println!("total bytes: {}", u.total());
    Ok(ExitCode::SUCCESS)
}

/// `rbuild prune`: waits for running builds, then removes cache (see `rbuild_solver::gc`).
pub fn prune(root: &Path, p: &PruneArgs) -> Result<ExitCode> {
    let opts = prune_options(p).map_err(crate::render::usage)?;
    let store = open(root)?;
    let _gc = gc_lock(&store, true)?;
    let r = gc::prune(&store, &opts)?;
    println!(
        "removed {} cache entries, {} snapshots, {} blobs; reclaimed {} (store {} → {})",
        r.entries_removed,
        r.snapshots_removed,
        r.blobs_removed,
        human_size(r.bytes_before.saturating_sub(r.bytes_after)),
        human_size(r.bytes_before),
        human_size(r.bytes_after)
    );
    Ok(ExitCode::SUCCESS)
}

/// The prune flags as options; an error names the flag (a usage error).
fn prune_options(p: &PruneArgs) -> Result<PruneOptions> {
    let mut opts = PruneOptions {
        all: p.all,
        ..PruneOptions::default()
    };
    if let Some(k) = &p.keep_storage {
        opts.keep_storage = Some(
            parse_size(k)
                .ok_or_else(|| anyhow!("--keep-storage {k:?}: expected a size like 10GB"))?,
        );
    }
    for f in &p.filter {
        match f.split_once('=') {
            Some(("until", d)) => {
                opts.until = Some(parse_until(d).ok_or_else(|| {
                    anyhow!("--filter until={d:?}: expected a duration like 24h, 1h30m, 90m, 7d")
                })?)
            }
            _ => bail!("--filter {f:?}: supported filters: until=DURATION"),
        }
    }
    Ok(opts)
}

/// A prune age: Go's duration syntax (`24h`, `1h30m`, `90m`, as docker) or whole days (`7d`).
fn parse_until(d: &str) -> Option<std::time::Duration> {
    let d = d.trim();
    if let Some(days) = d.strip_suffix('d').and_then(|n| n.parse::<u64>().ok()) {
        return days.checked_mul(86_400).map(std::time::Duration::from_secs);
    }
    rbuild_frontend::parse_go_duration(d).map(std::time::Duration::from_nanos)
}

fn open(root: &Path) -> Result<rbuild_cache::Store> {
    rbuild_cache::Store::open(root)
        .with_context(|| format!("opening the store at {}", root.display()))
}

/// The automatic GC ceiling: `RBUILD_GC_MAX_STORAGE`, else `[gc] max-storage` in the config
/// file; none means no automatic GC.
pub fn gc_ceiling() -> Result<Option<u64>> {
    let text = match std::env::var("RBUILD_GC_MAX_STORAGE") {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ => config_file_gc(),
    };
    text.map(|t| {
        parse_size(&t)
            .ok_or_else(|| anyhow!("RBUILD_GC_MAX_STORAGE={t:?}: expected a size like 10GB"))
    })
    .transpose()
}

fn config_file_gc() -> Option<String> {
    let path = match std::env::var_os("RBUILD_CONFIG") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?
            .join("rbuild/config.toml"),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let v: toml::Value = toml::from_str(&text).ok()?;
    match v.get("gc")?.get("max-storage")? {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Run the automatic GC after a build (never fails the build; a problem is a warning).
pub fn after_build(store: &rbuild_cache::Store, quiet: bool) {
    let ceiling = match gc_ceiling() {
        Ok(Some(c)) => c,
        Ok(None) => return,
        Err(e) => {
            eprintln!("WARNING: automatic GC: {e:#}");
            return;
        }
    };
    match gc::auto_gc(store, ceiling) {
        Ok(Some(r)) if !quiet => eprintln!(
            "automatic GC: removed {} cache entries, reclaimed {} (ceiling {})",
            r.entries_removed,
            human_size(r.bytes_before.saturating_sub(r.bytes_after)),
            human_size(ceiling)
        ),
        Ok(_) => {}
        Err(e) => eprintln!("WARNING: automatic GC: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_until;
    use std::time::Duration;

    #[test]
    fn prune_ages_take_go_durations_and_days() {
        assert_eq!(parse_until("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_until("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_until("90m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_until("2h45m30s"), Some(Duration::from_secs(9930)));
        assert_eq!(parse_until("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_until("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_until("10"), None);
        assert_eq!(parse_until("soon"), None);
        assert_eq!(parse_until("-1h"), None);
    }
}
