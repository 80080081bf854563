//! Cache settings of a build (`--explain`, `--no-cache-filter`, the step-identity scope) and
//! the store-management commands.

use std::path::Path;

use rbuild_solver::CacheOptions;

use crate::args::BuildArgs;

/// The solver's cache options for a build. The step-identity scope is the Dockerfile's
/// canonical path and the target, so explanations compare a step with its own earlier runs.
pub fn cache_options(b: &BuildArgs, context: &Path) -> CacheOptions {
    let dockerfile = b
        .file
        .clone()
        .unwrap_or_else(|| context.join("Dockerfile"));
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
