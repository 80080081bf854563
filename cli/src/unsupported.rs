//! Flags that parse (with buildx's value syntax) but whose feature rbuild does not have yet.
//! They are rejected here, in one place, with a message naming the flag: never silently
//! ignored. When a feature lands, its line below is removed.

use anyhow::Result;

use crate::args::BuildArgs;
use crate::render::UsageError;

/// The first unsupported flag in `b`, as a message, or `None` when everything is supported.
pub fn unsupported(b: &BuildArgs) -> Option<String> {
    let not_yet = |flag: &str, what: &str| Some(format!("{flag}: {what} is not supported yet"));
    if let Some(c) = b
        .build_contexts
        .iter()
        .find(|c| !crate::context::build_context_supported(c))
    {
        return not_yet(
            &format!("--build-context {c}"),
            "a build context from oci-layout://, a git or http URL or target:",
        );
    }
    None
}

/// Fail with a usage error (exit code 2) when `b` uses a flag rbuild cannot honour yet.
pub fn reject_unsupported(b: &BuildArgs) -> Result<()> {
    match unsupported(b) {
        Some(msg) => Err(UsageError(msg).into()),
        None => Ok(()),
    }
}
