//! Executor suite with the built-in namespace sandbox (see `suite/mod.rs`).

const RUNTIME: &str = "builtin";

include!("suite/mod.rs");
