//! Executor suite with the built-in namespace sandbox (see `suite/mod.rs`).
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

const RUNTIME: &str = "builtin";

include!("suite/mod.rs");
