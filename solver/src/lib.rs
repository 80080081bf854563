//! rbuild-solver: executes a build graph with a content-addressed cache.
//!
//! The solver walks a [`rbuild_graph::Definition`] from a root node, computes a cache key for
//! every reachable node ([`cachekey`]), looks it up in the store's index, and runs the op on a
//! miss through its op ([`ops`]: one kind per file; exec ops reach the sandbox only through
//! the [`executor::StepExecutor`] seam). Independent nodes run in parallel ([`sched`], which
//! knows nothing of what an op does); results are looked up and recorded in one place
//! ([`results`]). Every result is a chain of layers (snapshot directories plus their
//! uncompressed tar blobs). [`image`] turns a chain and a config into an image in the local
//! store. Progress goes out as [`Event`]s; this crate never prints.

pub mod cachekey;
pub mod executor;
pub mod explain;
pub mod gc;
pub mod image;
pub mod ops;
pub mod remote_cache;
mod results;
pub mod runmount;
pub mod sched;
mod snapshotter;
mod sshproxy;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use executor::StepExecutor;
pub use explain::CacheOptions;
pub use image::{finalize_image, ImageResult};
pub use ops::git::{git, resolve_git_ref};
pub use remote_cache::CacheMode;
pub use runmount::{Entitlements, SecretSource};
pub use sched::SolveOutput;

/// Errors from solving a graph.
#[derive(Debug, thiserror::Error)]
pub enum SolveError {
    #[error("{step}: process \"{command}\" did not complete successfully: exit code {code}{note}")]
    ExecFailed {
        step: String,
        command: String,
        code: i32,
        /// Why, when known (`: out of memory …`), else empty.
        note: String,
        /// Last lines of the step's output.
        tail: Vec<String>,
        lines: Option<(u32, u32)>,
    },
    #[error("{step}: {message}")]
    Step {
        step: String,
        message: String,
        lines: Option<(u32, u32)>,
    },
    #[error("pulling {reference}: {source}")]
    Pull {
        reference: String,
        #[source]
        source: Box<rbuild_oci::OciError>,
    },
    #[error(transparent)]
    Cache(#[from] rbuild_cache::CacheError),
    #[error(transparent)]
    Oci(Box<rbuild_oci::OciError>),
    #[error(transparent)]
    Executor(#[from] rbuild_executor::ExecutorError),
    #[error(transparent)]
    Graph(#[from] rbuild_graph::GraphError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt cache record for {key}: {message}")]
    BadRecord { key: String, message: String },
    #[error("build cancelled")]
    Cancelled,
}

impl From<rbuild_oci::OciError> for SolveError {
    fn from(e: rbuild_oci::OciError) -> Self {
        SolveError::Oci(Box::new(e))
    }
}

impl SolveError {
    /// Dockerfile line range the error belongs to, when known.
    pub fn lines(&self) -> Option<(u32, u32)> {
        match self {
            SolveError::ExecFailed { lines, .. } | SolveError::Step { lines, .. } => *lines,
            _ => None,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        SolveError::Io {
            what: what.into(),
            source,
        }
    }
}

/// One layer of a result chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// Snapshot id in the store (the unpacked layer directory).
    pub snapshot: String,
    /// Digest of the uncompressed layer tar.
    pub diff_id: String,
    /// The blob as stored (compressed as pulled, or the uncompressed tar rbuild wrote).
    pub blob: String,
    pub size: u64,
    pub media_type: String,
    /// Unix time the layer was made by a build step (`None` for pulled layers). Image
    /// timestamps derive from it, so a fully cached rebuild yields the same image id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
}

impl Layer {
    /// A layer whose blob is `desc` as stored (pulled, or imported from a cache), unpacked
    /// into `snapshot`.
    pub(crate) fn of_blob(
        snapshot: String,
        diff_id: &str,
        desc: &rbuild_oci::Descriptor,
        created: Option<i64>,
    ) -> Layer {
        Layer {
            snapshot,
            diff_id: diff_id.to_string(),
            blob: desc.digest.clone(),
            size: desc.size,
            media_type: desc.media_type.clone(),
            created,
        }
    }
}

/// The result of a node: the layers of a filesystem, bottom first.
pub type Chain = Vec<Layer>;

/// What a node produced.
#[derive(Debug, Clone)]
pub enum Value {
    Chain(Chain),
    /// A local directory (the build context or a named context).
    Local(LocalDir),
}

/// A local directory input with its exclude patterns.
#[derive(Debug, Clone)]
pub struct LocalDir {
    pub path: PathBuf,
    pub exclude: Vec<String>,
}

/// Progress events. `vertex` is the node's index in the definition. Non-exhaustive: renderers
/// must cope with variants added later (the CLI's rawjson display passes unknown ones on).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    Started {
        vertex: usize,
        name: String,
    },
    Cached {
        vertex: usize,
        name: String,
    },
    Log {
        vertex: usize,
        stderr: bool,
        data: Vec<u8>,
    },
    Done {
        vertex: usize,
        seconds: f64,
    },
    Failed {
        vertex: usize,
        message: String,
    },
    /// Why a step ran or which earlier build its cached result came from (`--explain`).
    Explain {
        vertex: usize,
        reason: String,
    },
    /// Something the build worked around (an imported cache that could not be used).
    Warning {
        vertex: usize,
        message: String,
    },
    /// The step was stopped (its process killed, its partial layer discarded) because
    /// another step of the build failed.
    Cancelled {
        vertex: usize,
    },
    /// Bytes of one blob moved by a step (a base image's layer pulled; later cache imports
    /// and exports): BuildKit's vertex `statuses`.
    Transfer {
        vertex: usize,
        /// The blob digest.
        id: String,
        /// `downloading` or `uploading`.
        action: &'static str,
        current: u64,
        total: u64,
        done: bool,
    },
}

/// Forwards a registry transfer's byte progress as [`Event::Transfer`] of `vertex`.
pub struct VertexTransfers<'a> {
    pub vertex: usize,
    pub progress: &'a dyn Progress,
}

impl rbuild_oci::progress::TransferProgress for VertexTransfers<'_> {
    fn transfer(&self, t: &rbuild_oci::progress::Transfer) {
        self.progress.event(Event::Transfer {
            vertex: self.vertex,
            id: t.id.clone(),
            action: t.action.name(),
            current: t.current,
            total: t.total,
            done: t.done,
        });
    }
}

/// Receiver of progress events (the CLI renders them).
pub trait Progress: Send + Sync {
    fn event(&self, event: Event);
}

/// A progress sink that drops everything.
pub struct NoProgress;
impl Progress for NoProgress {
    fn event(&self, _event: Event) {}
}

/// A base image as resolved from a registry (or from the store's memory of it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolvedImage {
    /// Normalised reference, e.g. `docker.io/library/busybox:latest`.
    pub reference: String,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub layers: Vec<rbuild_oci::Descriptor>,
}

/// Everything the solver needs from its environment.
pub struct SolverConfig {
    pub store: rbuild_cache::Store,
    pub executor: Box<dyn executor::StepExecutor>,
    pub registry: rbuild_oci::RegistryClient,
    /// Local directories by name (`context` is the build context).
    pub locals: BTreeMap<String, PathBuf>,
    /// Upper bound on concurrently running nodes.
    pub max_parallelism: usize,
    /// Re-resolve base images even when the store remembers them (`--pull`).
    pub pull: bool,
    /// Clamp new files' mtimes (SOURCE_DATE_EPOCH).
    pub source_date_epoch: Option<i64>,
    /// Hostname inside RUN steps.
    pub hostname: String,
    /// Build secrets by id (`RUN --mount=type=secret`).
    pub secrets: BTreeMap<String, SecretSource>,
    /// SSH agent sockets by id (`RUN --mount=type=ssh`).
    pub ssh: BTreeMap<String, PathBuf>,
    /// Entitlements granted (`--allow`).
    pub entitlements: Entitlements,
    /// Explanations, `--no-cache-filter`, build id, cancellation ([`explain`]).
    pub cache: CacheOptions,
    /// cgroup limits of every RUN step (`--memory`, `--cpu-quota`, `--cpu-period`); not part
    /// of any cache key (as with `docker build`'s limits).
    pub resources: rbuild_executor::Resources,
    /// Caches imported with `--cache-from`, searched after the local index ([`remote_cache`]).
    pub cache_imports: Vec<rbuild_oci::remote_cache::ImportedCache>,
}

/// The solver: owns the config and an in-process memory of resolved images.
pub struct Solver {
    pub(crate) cfg: SolverConfig,
    pub(crate) resolved: Mutex<BTreeMap<String, ResolvedImage>>,
    pub(crate) mounts: runmount::MountState,
    /// Set by the scheduler on the first failure: running RUN steps are killed and no new
    /// step starts ([`Solver::aborted`]).
    pub(crate) abort: std::sync::atomic::AtomicBool,
    /// Whether steps use the copy snapshotter ([`Solver::copy_mode`]), decided once.
    pub(crate) copy_mode: std::sync::OnceLock<bool>,
    /// Imported records by key, lazy layers, and this solver's results for export.
    pub(crate) remote: remote_cache::RemoteState,
    /// Keys whose step's work reused an earlier result instead of running (a second,
    /// content-based key hit, [`ops`]): the scheduler reports them as cached.
    pub(crate) reused: Mutex<std::collections::HashSet<String>>,
}

impl Solver {
    pub fn new(cfg: SolverConfig) -> Arc<Self> {
        let remote = remote_cache::RemoteState::new(&cfg.cache_imports);
        Arc::new(Solver {
            remote,
            reused: Mutex::new(std::collections::HashSet::new()),
            cfg,
            resolved: Mutex::new(BTreeMap::new()),
            mounts: runmount::MountState::default(),
            abort: std::sync::atomic::AtomicBool::new(false),
            copy_mode: std::sync::OnceLock::new(),
        })
    }

    pub fn store(&self) -> &rbuild_cache::Store {
        &self.cfg.store
    }

    pub fn config(&self) -> &SolverConfig {
        &self.cfg
    }

    /// Whether running steps should stop: a step of this build failed, or the build was
    /// cancelled (Ctrl-C / SIGTERM).
    pub(crate) fn aborted(&self) -> bool {
        self.abort.load(std::sync::atomic::Ordering::SeqCst)
            || self
                .cfg
                .cache
                .cancel
                .load(std::sync::atomic::Ordering::SeqCst)
    }
}
