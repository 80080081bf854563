//! The crate's single error type.

use std::path::PathBuf;

/// Errors from the sandbox executor and the mount helpers.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The helper process could not be started.
    #[error("spawning sandbox helper {program}: {source}")]
    SpawnHelper {
        /// Helper program that failed to start.
        program: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// I/O with the helper process (pipes, wait) failed.
    #[error("sandbox helper I/O ({op}): {source}")]
    HelperIo {
        /// What was being done.
        op: &'static str,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The helper did not follow the protocol (crashed, garbage report).
    #[error("sandbox helper protocol error: {0}")]
    Protocol(String),
    /// Setting up the sandbox failed (reported by the helper).
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    /// The step's program could not be executed (not found in `$PATH`, not
    /// executable, bad interpreter...). No process ran.
    #[error("exec {program:?}: {message}")]
    Exec {
        /// `args[0]` of the step.
        program: String,
        /// Why it failed.
        message: String,
    },
    /// The spec is unusable (empty args, bad paths...).
    #[error("invalid exec spec: {0}")]
    InvalidSpec(String),
    /// A system call failed.
    #[error("{op}{}: {source}", path_suffix(.path))]
    Sys {
        /// The operation (e.g. "mount overlay").
        op: String,
        /// The path involved (may be empty).
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The private-mount worker thread failed.
    #[error("private mount thread: {0}")]
    Thread(String),
}

impl ExecutorError {
    /// Shorthand for [`ExecutorError::Sys`].
    pub(crate) fn sys(
        op: impl Into<String>,
        path: impl Into<PathBuf>,
        source: impl Into<std::io::Error>,
    ) -> Self {
        ExecutorError::Sys {
            op: op.into(),
            path: path.into(),
            source: source.into(),
        }
    }
}

/// ` PATH` for an error message, nothing when there is no path.
fn path_suffix(path: &std::path::Path) -> String {
    if path.as_os_str().is_empty() {
        String::new()
    } else {
        format!(" {}", path.display())
    }
}
