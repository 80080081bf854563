//! rbuild-frontend: Dockerfile text → build graph + image config.
//!
//! Layers: [`parser`] (text → AST, never fails), [`shell`] (BuildKit-compatible word
//! expansion), [`dockerignore`] (pattern cleaning), and the lowering in `lower` that turns the
//! stages reachable from the target into an [`rbuild_graph::Definition`] plus the final
//! [`ImageConfig`]. Base-image metadata comes through the [`ImageResolver`] the caller hands
//! in; this crate does no I/O of its own.

pub mod dockerignore;
mod error;
mod lint;
mod lower;
pub mod parser;
pub mod shell;
mod util;

use std::collections::BTreeMap;

pub use error::FrontendError;
pub use lower::flags::parse_duration as parse_go_duration;
pub use lower::flags::parse_size;
pub use rbuild_graph::{ImageConfig, Platform};
pub use util::suggest;

/// Options of one build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOpts {
    /// `--build-arg K=V`.
    pub build_args: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// Target platform (host by default).
    pub platform: Platform,
    /// Cleaned `.dockerignore` patterns (from [`dockerignore::parse`]); they become the
    /// `exclude` list of the `context` local source.
    pub dockerignore: Vec<String>,
    /// Sets `Meta.ignore_cache` on every Exec/File node.
    pub no_cache: bool,
    /// `--label`, merged into the final config's Labels.
    pub labels: BTreeMap<String, String>,
    /// `--build-context NAME=…`: what `FROM NAME`, `COPY --from=NAME` and
    /// `RUN --mount=from=NAME` mean when NAME is not a stage of the Dockerfile.
    pub named_contexts: BTreeMap<String, NamedContext>,
    /// Cleaned `.dockerignore` patterns of each named local context (by its local name), as
    /// BuildKit applies the `.dockerignore` at the root of a `--build-context NAME=DIR`.
    pub named_context_excludes: BTreeMap<String, Vec<String>>,
}

/// The value of a named build context (`--build-context NAME=VALUE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// `docker-image://REF`: this image instead.
    Image(String),
    /// A local directory, handed to the solver as the local source with this name.
    Local(String),
}

impl Default for BuildOpts {
    fn default() -> Self {
        BuildOpts {
            build_args: BTreeMap::new(),
            target: None,
            platform: Platform::host(),
            dockerignore: Vec::new(),
            no_cache: false,
            labels: BTreeMap::new(),
            named_contexts: BTreeMap::new(),
            named_context_excludes: BTreeMap::new(),
        }
    }
}

/// Resolves image references to a manifest digest and config (registry access lives elsewhere).
pub trait ImageResolver {
    /// `reference` is the FROM/COPY --from image text after ARG expansion, e.g. "busybox",
    /// "127.0.0.1:5055/x:1".
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage, String>;
}

/// What an [`ImageResolver`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedImage {
    /// Normalised reference, e.g. "docker.io/library/busybox:latest".
    pub reference: String,
    /// Manifest digest "sha256:…".
    pub digest: String,
    /// The image's config (including rootfs.diff_ids and history).
    pub config: ImageConfig,
}

/// A non-fatal finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based Dockerfile line (0 when not tied to a line).
    pub line: u32,
    /// Last line of the instruction the finding points at (`line` for one-line
    /// instructions), so the span can be shown.
    pub end_line: u32,
    pub message: String,
}

/// The result of lowering a Dockerfile for one target.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildPlan {
    pub definition: rbuild_graph::Definition,
    /// The target stage's final state.
    pub root: rbuild_graph::NodeId,
    /// Final config of the target: base config + this build's changes. History = base
    /// history plus one entry per instruction; rootfs.diff_ids = the base image's diff_ids
    /// (the solver appends new layers); `created` left `None`.
    pub image: ImageConfig,
    /// Name of the target stage, or its index as text when unnamed.
    pub target_stage: String,
    pub warnings: Vec<Diagnostic>,
    /// The `# syntax=` directive, if any. Only the official Dockerfile frontend's references
    /// are accepted (rbuild always uses its own frontend, which implements the current
    /// Dockerfile reference); any other value is an error naming the line.
    pub syntax: Option<String>,
}

/// Parse and lower `dockerfile` for `opts.target` (default: the last stage).
pub fn build(
    dockerfile: &str,
    opts: &BuildOpts,
    resolver: &dyn ImageResolver,
) -> Result<BuildPlan, FrontendError> {
    lower::build(dockerfile, opts, resolver)
}
