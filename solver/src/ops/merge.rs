//! Merge ops (`COPY --link`): the inputs' chains stacked in order; nothing runs.

use super::{Cx, Input, OpKind, Plan};
use crate::cachekey::{node_key, InputPart};
use crate::{SolveError, Value};

/// `Merge`.
pub struct MergeOp;

impl OpKind for MergeOp {
    fn plan<'a>(&'a self, cx: Cx<'a>, inputs: &[Input]) -> Result<Plan<'a>, SolveError> {
        let parts: Vec<InputPart> = inputs
            .iter()
            .map(|i| InputPart::Key(i.key.clone()))
            .collect();
        let key = node_key(&cx.node.op, &parts)?;
        let mut chain = Vec::new();
        for i in inputs {
            if let Value::Chain(c) = &i.value {
                chain.extend(c.iter().cloned());
            }
        }
        Ok(Plan::Direct {
            key,
            value: Value::Chain(chain),
        })
    }
}
