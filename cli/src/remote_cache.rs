//! The remote cache in a build: `--cache-from` opened before the solve (a failure is a
//! warning and the build goes on without that cache), `--cache-to` written after it (a
//! failure is an error unless `ignore-error=true`), and the inline cache annotation of a
//! pushed image. What is cached and how it is read is the solver's
//! ([`rbuild_solver::remote_cache`]); the format and transport are oci's
//! ([`rbuild_oci::remote_cache`]); docs/cache.md.

use std::sync::Arc;

use anyhow::{anyhow, Result};
use rbuild_oci::remote_cache::{
    export_cache, CacheExportOpts, CacheLocation, ImportedCache, INLINE_ANNOTATION,
};
use rbuild_oci::RegistryClient;
use rbuild_solver::{Chain, Solver};

use crate::cachespec::{CacheKind, CacheMode, CacheSpec};
use crate::progress::Reporter;

/// Where a spec's cache lives (`None` for `type=inline`, which has no location of its own).
fn location(spec: &CacheSpec) -> Option<(CacheLocation, Option<&str>)> {
    match &spec.kind {
        CacheKind::Registry(r) => Some((CacheLocation::Registry(r.clone()), None)),
        CacheKind::Local { dir, tag } => Some((CacheLocation::Local(dir.clone()), Some(tag))),
        CacheKind::Inline => None,
    }
}

/// Open every `--cache-from` cache for the build's (first) platform; each one that cannot be
/// read is a warning naming it and why.
pub fn open_imports(
    registry: &RegistryClient,
    specs: &[CacheSpec],
    platforms: &[String],
    progress: &Reporter,
) -> Vec<ImportedCache> {
    let platform = crate::multiplat::platforms(platforms)
        .ok()
        .and_then(|p| p.into_iter().next())
        .unwrap_or_else(rbuild_oci::Platform::host);
    let mut out = Vec::new();
    for spec in specs {
        let Some((loc, tag)) = location(spec) else {
            continue;
        };
        let step = progress.step(&format!("importing cache manifest from {}", spec.name()));
        match ImportedCache::open_tag(registry, &loc, &platform, tag) {
            Ok(c) => out.push(c),
            Err(e) => progress.warning(&format!(
                "cache import from {} failed: {e}; building without it",
                spec.name()
            )),
        }
        progress.step_done(step);
    }
    out
}

/// The inline cache annotation (`--cache-to type=inline`) of the image made of `chain`.
pub fn inline_annotation(solver: &Solver, chain: &Chain) -> Result<(String, String)> {
    let config = solver.inline_cache(chain)?;
    let json = config.to_canonical_json()?;
    let value = String::from_utf8(json).map_err(|e| anyhow!("inline cache: {e}"))?;
    Ok((INLINE_ANNOTATION.to_string(), value))
}

/// Write every `--cache-to` cache (inline ones ride on the push instead).
pub fn export_all(
    solver: &Solver,
    specs: &[CacheSpec],
    roots: &[Chain],
    progress: &Arc<Reporter>,
) -> Result<()> {
    for spec in specs {
        let Some((loc, tag)) = location(spec) else {
            continue;
        };
        let step = progress.step(&format!("exporting cache to {}", spec.name()));
        let s = &spec.export;
        let mode = match s.mode {
            CacheMode::Min => rbuild_solver::CacheMode::Min,
            CacheMode::Max => rbuild_solver::CacheMode::Max,
        };
        let result = (|| -> Result<()> {
            let data =
                solver.cache_export(roots, mode, s.cache_mounts, &rbuild_solver::NoProgress)?;
            let opts = CacheExportOpts {
                compression: s.compression,
                level: s.level,
                force: s.force_compression,
                oci_media_types: s.oci_media_types,
                tag: tag.unwrap_or("latest").to_string(),
            };
            let transfers = crate::progress::step_transfers(progress, step);
            let none = rbuild_oci::progress::NoTransferProgress;
            let t: &dyn rbuild_oci::progress::TransferProgress = match &transfers {
                Some(t) => t.as_ref(),
                None => &none,
            };
            export_cache(
                &solver.config().registry,
                solver.store(),
                &loc,
                &data,
                &opts,
                t,
            )?;
            Ok(())
        })();
        progress.step_done(step);
        match result {
            Ok(()) => {}
            Err(e) if s.ignore_error => progress.warning(&format!(
                "cache export to {} failed (ignore-error=true): {e:#}",
                spec.name()
            )),
            Err(e) => return Err(e.context(format!("exporting cache to {}", spec.name()))),
        }
    }
    Ok(())
}
