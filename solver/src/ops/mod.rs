//! The ops: what each kind of graph node does, one kind per file, behind one trait.
//!
//! The scheduler ([`crate::sched`]) knows nothing of what an op does. For a node whose inputs
//! are solved it asks the node's op for a [`Plan`]: either the value itself (scratch, local
//! directories, merges: nothing to run, nothing to cache), or a [`Keyed`] step — the cache key,
//! what went into it (for explanations) and the work that produces the result on a miss. The
//! scheduler then runs the one keyed protocol for every kind (lookup, key lock, lookup again,
//! run, record; see [`crate::results`]).
//!
//! | file | graph op | key | work on a miss |
//! |---|---|---|---|
//! | [`local`] | `Source(Scratch)`, `Source(Local)` | constant / the local's name | none (direct) |
//! | [`image`] | `Source(Image)` | manifest digest + platform | pull and unpack the layers |
//! | [`http`] | `Source(Http)` | pinned checksum, else the body's digest | place the downloaded file |
//! | [`git`] | `Source(Git)` | resolved commit | check out the commit |
//! | [`exec`] | `Exec` | op JSON + input keys / context checksums | run in the sandbox ([`crate::executor`]) |
//! | [`file`] | `File` | op JSON + input keys / context checksums | copy/mkdir/… into a new layer |
//! | [`merge`] | `Merge` | the inputs' keys | none (direct: the chains concatenated) |

pub mod exec;
pub mod file;
pub mod git;
pub mod http;
pub mod image;
mod inputs;
pub mod local;
pub mod merge;

use rbuild_graph::{Node, Op as GraphOp, SourceOp};

use crate::explain::StepRecord;
use crate::{Chain, Progress, SolveError, Solver, Value};

/// A solved input of a node: its key, its value and the label explanations of dependents use.
#[derive(Debug, Clone)]
pub struct Input {
    pub key: String,
    /// The value: when planning, an input that is not `ready` holds a placeholder (an
    /// imported lazy chain or an empty one): plans read keys, never results. Work always gets
    /// ready inputs.
    pub value: Value,
    pub label: String,
    pub ready: bool,
}

/// What an op needs from its surroundings while it plans and works.
#[derive(Clone, Copy)]
pub struct Cx<'a> {
    pub solver: &'a Solver,
    /// The node's index in the definition (the progress vertex).
    pub vertex: usize,
    pub node: &'a Node,
    pub progress: &'a dyn Progress,
}

impl Cx<'_> {
    /// An error of this step, with its Dockerfile lines.
    pub(crate) fn fail(&self, message: impl Into<String>) -> SolveError {
        SolveError::Step {
            step: self.node.meta.description.clone(),
            message: message.into(),
            lines: self.node.meta.lines,
        }
    }

    /// `e` as an error of this step (errors that already name a step are kept).
    pub(crate) fn step_error(&self, e: SolveError) -> SolveError {
        match e {
            SolveError::Step { .. } | SolveError::ExecFailed { .. } | SolveError::Cancelled => e,
            other => self.fail(other.to_string()),
        }
    }
}

/// The work of a keyed step on a miss: given the node's inputs, all ready, produces the chain.
pub type Work<'a> = Box<dyn FnOnce(&[Input]) -> Result<Chain, SolveError> + Send + 'a>;

/// What the scheduler does with a node.
pub enum Plan<'a> {
    /// The value is known without running anything; it is not cached.
    Direct { key: String, value: Value },
    /// A cached step.
    Keyed(Keyed<'a>),
}

/// A cached step: its key, what went into it, and the work on a miss.
pub struct Keyed<'a> {
    pub key: String,
    /// Run even when the index has the key (`--no-cache`, `--no-cache-filter`).
    pub ignore_cache: bool,
    /// What went into the key, remembered per step identity for explanations; `None` for
    /// steps that are not explained (http and git sources).
    pub record: Option<StepRecord>,
    /// The label dependents' explanations use (default: the node's description).
    pub label: Option<String>,
    /// The op already announced the step (`Event::Started`) while planning, because planning
    /// did visible work (an unpinned download): the scheduler then ends it with `Done` on a
    /// hit too.
    pub announced: Option<std::time::Instant>,
    pub work: Work<'a>,
}

/// One kind of op.
pub trait OpKind: Sync {
    /// The plan for this node, given its planned inputs (in the node's input order).
    fn plan<'a>(&'a self, cx: Cx<'a>, inputs: &[Input]) -> Result<Plan<'a>, SolveError>;
}

/// The op kind of a graph node.
pub fn kind_of(node: &Node) -> &'static dyn OpKind {
    match &node.op {
        GraphOp::Source(SourceOp::Scratch) | GraphOp::Source(SourceOp::Local { .. }) => {
            &local::LocalOp
        }
        GraphOp::Source(SourceOp::Image { .. }) => &image::ImageOp,
        GraphOp::Source(SourceOp::Http { .. }) => &http::HttpOp,
        GraphOp::Source(SourceOp::Git { .. }) => &git::GitOp,
        GraphOp::Exec(_) => &exec::ExecKind,
        GraphOp::File(_) => &file::FileKind,
        GraphOp::Merge => &merge::MergeOp,
    }
}

pub(crate) use rbuild_oci::time::now_secs;
