//! Exec ops: run a RUN step in the sandbox on top of its input chain.
//!
//! The rootfs is an overlay of the input chain's snapshots with a fresh snapshot as the upper
//! dir, so the upper dir *is* the step's layer (overlay whiteouts record deletions). After a
//! successful run the layer is written as a deterministic tar into the content store. Where
//! overlayfs cannot be mounted, the step runs in a materialized copy of the chain instead and
//! the layer is computed by a diff ([`rbuild_cache::copysnap`]). The process runs through the
//! [`crate::executor::StepExecutor`] seam, never through the sandbox directly.

use std::collections::VecDeque;
use std::path::PathBuf;

use rbuild_executor::{ExecSpec, Rootfs, Stream};
use rbuild_graph::{ExecOp, Node, Op};

use super::{Cx, Input, OpKind, Plan};
use crate::{Chain, Event, Progress, SolveError, Solver, Value};

/// `Exec`: a RUN step.
pub struct ExecKind;

impl OpKind for ExecKind {
    fn plan<'a>(&'a self, cx: Cx<'a>, inputs: &[Input]) -> Result<Plan<'a>, SolveError> {
        let Op::Exec(op) = &cx.node.op else {
            return Err(cx.fail("not an exec op"));
        };
        cx.solver.check_exec_policy(op).map_err(|m| cx.fail(m))?;
        let work = Box::new(move |inputs: &[Input]| {
            let values: Vec<Value> = inputs.iter().map(|i| i.value.clone()).collect();
            cx.solver
                .run_exec(cx.vertex, cx.node, op, &values, cx.progress)
        });
        super::inputs::keyed_step(cx, inputs, work).map(Plan::Keyed)
    }
}

/// How many output lines a failed step reports.
pub const TAIL_LINES: usize = 20;

impl Solver {
    pub(crate) fn run_exec(
        &self,
        vertex: usize,
        node: &Node,
        op: &ExecOp,
        inputs: &[Value],
        progress: &dyn Progress,
    ) -> Result<Chain, SolveError> {
        let store = &self.cfg.store;
        let step = node.meta.description.clone();
        let fail = |message: String| SolveError::Step {
            step: step.clone(),
            message,
            lines: node.meta.lines,
        };
        let root = op
            .mounts
            .first()
            .filter(|m| m.target == "/")
            .ok_or_else(|| fail("exec has no root mount".into()))?;
        let chain: Chain = match root.input {
            Some(i) => match inputs.get(i) {
                Some(Value::Chain(c)) => c.clone(),
                _ => return Err(fail("root mount input is not a filesystem".into())),
            },
            None => Vec::new(),
        };
        let prepared = self
            .prepare_mounts(op, inputs, node.meta.ignore_cache)
            .map_err(&fail)?;
        for message in self.mounts.take_warnings() {
            progress.event(Event::Warning { vertex, message });
        }
        let (network, security) = self.exec_modes(op);
        // Copy snapshotter: the step runs in a materialized copy of its input (removed on drop).
        let work_root = self.copy_work_root(&chain)?;
        let snap = store.new_snapshot()?;
        let lowers = self.lowers(&chain)?;
        let mut env = op.env.clone();
        env.extend(op.proxy_env.iter().cloned());
        env.extend(prepared.env.iter().cloned());
        let spec = ExecSpec {
            rootfs: match &work_root {
                Some(w) => Rootfs::Dir(w.dir().to_path_buf()),
                None => Rootfs::Overlay {
                    lowers,
                    upper: snap.fs.clone(),
                    work: snap.work.clone(),
                },
            },
            args: op.args.clone(),
            env,
            cwd: op.cwd.clone(),
            user: op.user.clone(),
            hostname: if op.hostname.is_empty() {
                self.cfg.hostname.clone()
            } else {
                op.hostname.clone()
            },
            network,
            extra_mounts: prepared.extra.clone(),
            extra_hosts: op
                .run_options
                .extra_hosts
                .iter()
                .map(|h| (h.host.clone(), h.ip.clone()))
                .collect(),
            security,
            shm_size: op.run_options.shm_size,
            rlimits: op
                .run_options
                .ulimits
                .iter()
                .map(|u| rbuild_executor::Rlimit {
                    name: u.name.clone(),
                    soft: u64::try_from(u.soft).unwrap_or(u64::MAX),
                    hard: u64::try_from(u.hard).unwrap_or(u64::MAX),
                })
                .collect(),
            resources: self.cfg.resources.clone(),
        };
        let mut tail = Tail::default();
        let aborted = || self.aborted();
        let status = self.cfg.executor.run(
            &spec,
            &mut |stream, data| {
                tail.push(data);
                progress.event(Event::Log {
                    vertex,
                    stderr: matches!(stream, Stream::Stderr),
                    data: data.to_vec(),
                });
            },
            &aborted,
        );
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                let _ = store.remove_snapshot(&snap.id);
                // A killed helper reports nothing: the cancellation is the reason.
                return Err(if self.aborted() {
                    SolveError::Cancelled
                } else {
                    e.into()
                });
            }
        };
        if !status.success() {
            let _ = store.remove_snapshot(&snap.id);
            if self.aborted() {
                // Killed because another step failed (or Ctrl-C): not this step's failure.
                return Err(SolveError::Cancelled);
            }
            let code = status
                .code
                .unwrap_or_else(|| 128 + status.signal.unwrap_or(0));
            let note = match self.cfg.resources.memory {
                Some(limit) if status.oom_killed => {
                    format!(": out of memory: the step reached its memory limit of {limit} bytes")
                }
                _ if status.oom_killed => ": out of memory (killed by the OOM killer)".into(),
                _ => String::new(),
            };
            return Err(SolveError::ExecFailed {
                step,
                command: shown_command(&op.args),
                code,
                note,
                tail: tail.lines(),
                lines: node.meta.lines,
            });
        }
        if let Some(w) = work_root {
            if let Err(e) = w.diff_into(&snap.fs) {
                let _ = store.remove_snapshot(&snap.id);
                return Err(e);
            }
        }
        let layer = self.commit_layer(&snap)?;
        let mut out = chain;
        out.push(layer);
        Ok(out)
    }

    /// Snapshot dirs of a chain, top-most first (overlayfs lowerdir order).
    pub(crate) fn lowers(&self, chain: &Chain) -> Result<Vec<PathBuf>, SolveError> {
        chain
            .iter()
            .rev()
            .map(|l| {
                self.cfg
                    .store
                    .snapshot_fs(&l.snapshot)
                    .map_err(SolveError::from)
            })
            .collect()
    }
}

fn shown_command(args: &[String]) -> String {
    if args.len() >= 3 && args[1] == "-c" {
        format!("{} -c {}", args[0], args[2..].join(" "))
    } else {
        args.join(" ")
    }
}

/// The last lines of a step's output.
#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    partial: Vec<u8>,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        for &b in data {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                self.lines.push_back(line);
                if self.lines.len() > TAIL_LINES {
                    self.lines.pop_front();
                }
            } else {
                self.partial.push(b);
            }
        }
    }

    fn lines(mut self) -> Vec<String> {
        if !self.partial.is_empty() {
            self.lines
                .push_back(String::from_utf8_lossy(&self.partial).into_owned());
            if self.lines.len() > TAIL_LINES {
                self.lines.pop_front();
            }
        }
        self.lines.into_iter().collect()
    }
}
