//! Executor suite with the runc backend (see `suite/mod.rs`): the same tests as
//! `sandbox.rs`, steps run by `runc run` from an OCI bundle.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

const RUNTIME: &str = "runc";

include!("suite/mod.rs");
