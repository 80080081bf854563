//! Messages exchanged between the parent, the helper and the sandbox init.

use serde::{Deserialize, Serialize};

use crate::{ExecSpec, ExitStatus, Runtime};

/// File descriptor number of the status pipe in the helper process.
pub(crate) const STATUS_FD: i32 = 3;

/// What the parent writes on the helper's stdin.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HelperInput {
    /// The step.
    pub(crate) spec: ExecSpec,
    /// Which runtime runs it.
    pub(crate) runtime: Runtime,
    /// The network namespace to join (`/proc/<pid>/ns/net`) for [`crate::Network::Isolated`].
    #[serde(default)]
    pub(crate) netns: Option<std::path::PathBuf>,
}

/// Final report from the helper to the parent (one JSON line on fd 3).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum HelperReport {
    /// The step's process ran and ended.
    Exited(ExitStatus),
    /// The sandbox could not be set up.
    SetupFailed {
        /// Human-readable cause with context.
        message: String,
    },
    /// The step's program could not be executed.
    ExecFailed {
        /// `args[0]`.
        program: String,
        /// Why.
        message: String,
    },
}

/// Messages from the sandbox init (pid 1, before exec) to the helper.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum InitMsg {
    /// A mount-target stub was created at this path (relative to the
    /// rootfs); `whiteout` tells that the layer had a whiteout there.
    Stub {
        /// Path relative to the root.
        path: String,
        /// The layer dir had an overlay whiteout at this path before.
        whiteout: bool,
    },
    /// This directory (relative path) was copied up into the upper dir only
    /// because a stub was created inside it.
    CopyUp {
        /// Path relative to the root.
        path: String,
    },
    /// Setup failed; the helper reports this instead of an exit status.
    Failed(HelperReport),
}
