//! rbuild-graph: the build graph as pure data.
//!
//! A [`Definition`] is a list of [`Node`]s in topological order (a node's inputs always refer to
//! earlier nodes). Each node holds one [`Op`] (source, exec, file or merge) plus metadata that is
//! *not* part of its identity (description, Dockerfile line, cache hints). Nodes have a
//! definition digest: sha256 over the canonical JSON encoding of the op and its inputs' digests
//! (see [`digest`]). The [`image`] module holds the image-config data the frontend computes
//! and the solver finalises. This crate knows nothing of Dockerfiles or execution.

pub mod digest;
pub mod dump;
pub mod image;
pub mod op;

pub use digest::{canonical_json, sha256_digest};
pub use image::{ContainerConfig, Healthcheck, History, ImageConfig, RootFs};
pub use op::*;

/// Errors produced while validating or encoding a graph.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("node {node} refers to input {input}, which is not an earlier node")]
    BadInput { node: usize, input: usize },
    #[error("node {node}: {what} refers to input index {index} but the node has {len} inputs")]
    BadInputIndex {
        node: usize,
        what: &'static str,
        index: usize,
        len: usize,
    },
    #[error("node id {0} is out of range")]
    NoSuchNode(usize),
    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}
