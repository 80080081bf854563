//! Executor suite with the runc backend (see `suite/mod.rs`): the same tests as
//! `sandbox.rs`, steps run by `runc run` from an OCI bundle.

const RUNTIME: &str = "runc";

include!("suite/mod.rs");
