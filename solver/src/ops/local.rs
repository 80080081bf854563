//! Scratch and local-directory sources: values known without running anything.
//!
//! A local directory (the build context or a named context) is not keyed by itself: the ops
//! that read it key on the content checksums of exactly the paths they select
//! ([`super::inputs`]).

use rbuild_graph::{Op, SourceOp};

use super::{Cx, Input, OpKind, Plan};
use crate::{LocalDir, SolveError, Value};

/// `Source(Scratch)` and `Source(Local)`.
pub struct LocalOp;

impl OpKind for LocalOp {
    fn plan<'a>(&'a self, cx: Cx<'a>, _inputs: &[Input]) -> Result<Plan<'a>, SolveError> {
        match &cx.node.op {
            Op::Source(SourceOp::Local { name, exclude }) => {
                let path = cx.solver.cfg.locals.get(name).ok_or_else(|| {
                    cx.fail(format!(
                        "no local directory named {name:?} was given to the build"
                    ))
                })?;
                Ok(Plan::Direct {
                    key: rbuild_graph::sha256_digest(
                        format!("rbuild-key-v1\nlocal {name}").as_bytes(),
                    ),
                    value: Value::Local(LocalDir {
                        path: path.clone(),
                        exclude: exclude.clone(),
                    }),
                })
            }
            _ => Ok(Plan::Direct {
                key: rbuild_graph::sha256_digest(b"rbuild-key-v1\nscratch"),
                value: Value::Chain(Vec::new()),
            }),
        }
    }
}
