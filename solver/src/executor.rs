//! The seam between the exec op and the sandbox: ops never call `rbuild_executor` to run a
//! process, they call a [`StepExecutor`]. The real one is [`rbuild_executor::Executor`]
//! (builtin, runc or chroot runtime); tests use a fake that records the spec it was given.

use rbuild_executor::{ExecSpec, ExecutorError, ExitStatus, Runtime, Stream};

/// Runs one RUN step's process.
pub trait StepExecutor: Send + Sync {
    /// Run `spec` to completion, passing its output on; stop it when `cancelled` turns true.
    fn run(
        &self,
        spec: &ExecSpec,
        output: &mut dyn FnMut(Stream, &[u8]),
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<ExitStatus, ExecutorError>;

    /// Whether steps must run in a materialized copy of their root (no overlayfs: chroot
    /// isolation).
    fn needs_materialized_root(&self) -> bool;
}

impl StepExecutor for rbuild_executor::Executor {
    fn run(
        &self,
        spec: &ExecSpec,
        output: &mut dyn FnMut(Stream, &[u8]),
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<ExitStatus, ExecutorError> {
        self.run_cancellable(spec, output, cancelled)
    }

    fn needs_materialized_root(&self) -> bool {
        *self.runtime() == Runtime::Chroot
    }
}
