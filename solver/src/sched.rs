//! The scheduler: solve the nodes reachable from a root, independent nodes in parallel.
//!
//! Worker threads (at most `max_parallelism`) take ready nodes from a shared queue; a node
//! becomes ready when all its inputs are solved. For each node the worker computes the cache
//! key (see [`crate::cachekey`]), returns the indexed result on a hit, and otherwise runs the
//! op and records the result. The first failure stops new work; running steps finish.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use rbuild_cache::context::{checksum, ExcludeMatcher, Selector};
use rbuild_graph::{Definition, FileAction, MountKind, Node, NodeId, Op, SourceOp};
use serde::{Deserialize, Serialize};

use crate::cachekey::{image_key, node_key, InputPart};
use crate::{Chain, Event, LocalDir, Progress, SolveError, Solver, Value};

/// The result of solving a root node.
#[derive(Debug, Clone)]
pub struct SolveOutput {
    pub chain: Chain,
    pub key: String,
    /// How many nodes ran (were not cache hits), for reporting.
    pub executed: usize,
    pub cached: usize,
}

#[derive(Serialize, Deserialize)]
struct Record {
    chain: Chain,
}

struct State {
    ready: VecDeque<usize>,
    results: Vec<Option<(String, Value)>>,
    waiting: Vec<usize>,
    running: usize,
    failed: Option<SolveError>,
    done: usize,
    executed: usize,
    cached: usize,
}

impl Solver {
    /// Solve `root` of `def`, emitting progress events.
    pub fn solve(
        &self,
        def: &Definition,
        root: NodeId,
        progress: &dyn Progress,
    ) -> Result<SolveOutput, SolveError> {
        let order = def.reachable(root)?;
        let n = def.nodes.len();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut waiting = vec![0usize; n];
        let mut in_scope = vec![false; n];
        for id in &order {
            in_scope[id.0] = true;
        }
        let mut ready = VecDeque::new();
        for id in &order {
            let node = def.node(*id)?;
            let mut uniq: Vec<usize> = node.inputs.iter().map(|i| i.0).collect();
            uniq.sort_unstable();
            uniq.dedup();
            waiting[id.0] = uniq.len();
            for i in uniq {
                dependents[i].push(id.0);
            }
            if node.inputs.is_empty() {
                ready.push_back(id.0);
            }
        }
        let state = Mutex::new(State {
            ready,
            results: (0..n).map(|_| None).collect(),
            waiting,
            running: 0,
            failed: None,
            done: 0,
            executed: 0,
            cached: 0,
        });
        let cv = Condvar::new();
        let total = order.len();
        let workers = self.cfg.max_parallelism.max(1).min(total.max(1));
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| self.worker(def, &state, &cv, &dependents, total, progress));
            }
        });
        let mut st = state.into_inner().map_err(|_| SolveError::Cancelled)?;
        if let Some(e) = st.failed.take() {
            return Err(e);
        }
        match st.results.get_mut(root.0).and_then(Option::take) {
            Some((key, Value::Chain(chain))) => Ok(SolveOutput {
                chain,
                key,
                executed: st.executed,
                cached: st.cached,
            }),
            Some((key, Value::Local(_))) => Err(SolveError::BadRecord {
                key,
                message: "the build result is a local directory, not a filesystem".into(),
            }),
            None => Err(SolveError::Cancelled),
        }
    }

    fn worker(
        &self,
        def: &Definition,
        state: &Mutex<State>,
        cv: &Condvar,
        dependents: &[Vec<usize>],
        total: usize,
        progress: &dyn Progress,
    ) {
        loop {
            let (id, inputs) = {
                let Ok(mut st) = state.lock() else { return };
                loop {
                    if st.failed.is_some() || st.done == total {
                        cv.notify_all();
                        return;
                    }
                    if let Some(id) = st.ready.pop_front() {
                        st.running += 1;
                        let inputs: Option<Vec<(String, Value)>> = def.nodes[id]
                            .inputs
                            .iter()
                            .map(|i| st.results[i.0].clone())
                            .collect();
                        break (id, inputs);
                    }
                    if st.running == 0 {
                        // Nothing ready, nothing running, not done: a cycle or a bug.
                        st.failed = Some(SolveError::Cancelled);
                        cv.notify_all();
                        return;
                    }
                    st = match cv.wait(st) {
                        Ok(g) => g,
                        Err(_) => return,
                    };
                }
            };
            let result = match inputs {
                Some(inputs) => self.solve_node(id, &def.nodes[id], inputs, progress),
                None => Err(SolveError::Cancelled),
            };
            let Ok(mut st) = state.lock() else { return };
            st.running -= 1;
            match result {
                Ok((key, value, was_cached)) => {
                    if was_cached {
                        st.cached += 1;
                    } else {
                        st.executed += 1;
                    }
                    st.results[id] = Some((key, value));
                    st.done += 1;
                    for &d in &dependents[id] {
                        st.waiting[d] -= 1;
                        if st.waiting[d] == 0 {
                            st.ready.push_back(d);
                        }
                    }
                }
                Err(e) => {
                    progress.event(Event::Failed {
                        vertex: id,
                        message: e.to_string(),
                    });
                    if st.failed.is_none() {
                        st.failed = Some(e);
                    }
                }
            }
            cv.notify_all();
        }
    }

    /// Solve one node whose inputs are solved. Returns (key, value, was_cached).
    fn solve_node(
        &self,
        id: usize,
        node: &Node,
        inputs: Vec<(String, Value)>,
        progress: &dyn Progress,
    ) -> Result<(String, Value, bool), SolveError> {
        let name = node.meta.description.clone();
        let (keys, values): (Vec<String>, Vec<Value>) = inputs.into_iter().unzip();
        match &node.op {
            Op::Source(SourceOp::Scratch) => Ok((
                rbuild_graph::sha256_digest(b"rbuild-key-v1\nscratch"),
                Value::Chain(Vec::new()),
                true,
            )),
            Op::Source(SourceOp::Local {
                name: local,
                exclude,
            }) => {
                let path = self.cfg.locals.get(local).ok_or_else(|| SolveError::Step {
                    step: name.clone(),
                    message: format!("no local directory named {local:?} was given to the build"),
                    lines: node.meta.lines,
                })?;
                Ok((
                    rbuild_graph::sha256_digest(format!("rbuild-key-v1\nlocal {local}").as_bytes()),
                    Value::Local(LocalDir {
                        path: path.clone(),
                        exclude: exclude.clone(),
                    }),
                    true,
                ))
            }
            Op::Source(SourceOp::Image {
                reference,
                digest,
                platform,
            }) => {
                let resolved = self
                    .resolved_for(reference, digest.as_deref(), platform)
                    .map_err(|e| self.step_error(node, e))?;
                let key = image_key(&resolved.manifest_digest, platform);
                if let Some(chain) = self.lookup(&key)? {
                    progress.event(Event::Cached { vertex: id, name });
                    return Ok((key, Value::Chain(chain), true));
                }
                let t = Instant::now();
                progress.event(Event::Started { vertex: id, name });
                let chain = self.pull_layers(&resolved)?;
                self.record(&key, &chain)?;
                progress.event(Event::Done {
                    vertex: id,
                    seconds: t.elapsed().as_secs_f64(),
                });
                Ok((key, Value::Chain(chain), false))
            }
            Op::Source(SourceOp::Http {
                url,
                checksum,
                filename,
            }) => self.solve_http(
                id,
                node,
                &crate::remote::HttpSource {
                    url,
                    checksum: checksum.as_deref(),
                    filename: filename.as_deref(),
                },
                progress,
            ),
            Op::Source(SourceOp::Git {
                remote,
                reference,
                keep_git_dir,
                checksum,
            }) => self.solve_git(
                id,
                node,
                &crate::remote::GitSource {
                    remote,
                    reference: reference.as_deref(),
                    keep_git_dir: *keep_git_dir,
                    checksum: checksum.as_deref(),
                },
                progress,
            ),
            Op::Merge => {
                let parts: Vec<InputPart> = keys.iter().cloned().map(InputPart::Key).collect();
                let key = node_key(&node.op, &parts)?;
                let mut chain = Vec::new();
                for v in &values {
                    if let Value::Chain(c) = v {
                        chain.extend(c.iter().cloned());
                    }
                }
                Ok((key, Value::Chain(chain), true))
            }
            Op::Exec(_) | Op::File(_) => {
                if let Op::Exec(e) = &node.op {
                    self.check_exec_policy(e)
                        .map_err(|message| SolveError::Step {
                            step: name.clone(),
                            message,
                            lines: node.meta.lines,
                        })?;
                }
                let parts = self
                    .input_parts(node, &keys, &values)
                    .map_err(|e| self.step_error(node, e))?;
                let key = node_key(&node.op, &parts)?;
                if !node.meta.ignore_cache {
                    if let Some(chain) = self.lookup(&key)? {
                        progress.event(Event::Cached { vertex: id, name });
                        return Ok((key, Value::Chain(chain), true));
                    }
                }
                let t = Instant::now();
                progress.event(Event::Started {
                    vertex: id,
                    name: name.clone(),
                });
                let chain = match &node.op {
                    Op::Exec(op) => self.run_exec(id, node, op, &values, progress)?,
                    Op::File(op) => self.run_file(node, op, &values)?,
                    _ => Vec::new(),
                };
                self.record(&key, &chain)?;
                progress.event(Event::Done {
                    vertex: id,
                    seconds: t.elapsed().as_secs_f64(),
                });
                Ok((key, Value::Chain(chain), false))
            }
        }
    }

    fn step_error(&self, node: &Node, e: SolveError) -> SolveError {
        match e {
            SolveError::Step { .. } | SolveError::ExecFailed { .. } => e,
            other => SolveError::Step {
                step: node.meta.description.clone(),
                message: other.to_string(),
                lines: node.meta.lines,
            },
        }
    }

    /// Key parts per input: the input's key, or for a local directory the content checksums
    /// of exactly the paths this op reads from it.
    fn input_parts(
        &self,
        node: &Node,
        keys: &[String],
        values: &[Value],
    ) -> Result<Vec<InputPart>, SolveError> {
        let mut parts = Vec::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            match v {
                Value::Chain(_) => parts.push(InputPart::Key(keys[i].clone())),
                Value::Local(dir) => {
                    let exclude = ExcludeMatcher::new(&dir.exclude)?;
                    let mut sels: Vec<Selector> = Vec::new();
                    match &node.op {
                        Op::File(f) => {
                            for a in &f.actions {
                                if let FileAction::Copy(c) = a {
                                    if c.src_input == i {
                                        sels.push(Selector {
                                            path: c.src.clone(),
                                            follow_symlinks: c.follow_symlinks,
                                            allow_wildcard: c.allow_wildcard,
                                        });
                                    }
                                }
                            }
                        }
                        Op::Exec(e) => {
                            for m in &e.mounts {
                                if let (Some(mi), MountKind::Bind { source, .. }) =
                                    (m.input, &m.kind)
                                {
                                    if mi == i {
                                        sels.push(Selector {
                                            path: source.clone(),
                                            follow_symlinks: true,
                                            allow_wildcard: false,
                                        });
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                    let mut sums = Vec::with_capacity(sels.len());
                    for sel in &sels {
                        let sum = match checksum(&self.cfg.store, &dir.path, sel, &exclude) {
                            Ok(s) => s.digest,
                            Err(rbuild_cache::CacheError::NotFound { .. })
                                if sel.allow_wildcard && has_glob(&sel.path) =>
                            {
                                "none".to_string()
                            }
                            Err(rbuild_cache::CacheError::NotFound { .. }) => {
                                return Err(SolveError::Step {
                                    step: node.meta.description.clone(),
                                    message: format!(
                                        "failed to compute cache key: \"{}\" not found in build context",
                                        sel.path
                                    ),
                                    lines: node.meta.lines,
                                })
                            }
                            Err(e) => return Err(e.into()),
                        };
                        sums.push((sel.path.clone(), sum));
                    }
                    parts.push(InputPart::Content(sums));
                }
            }
        }
        Ok(parts)
    }

    fn lookup(&self, key: &str) -> Result<Option<Chain>, SolveError> {
        let Some(entry) = self.cfg.store.index_get(key)? else {
            return Ok(None);
        };
        let Ok(rec) = serde_json::from_str::<Record>(&entry.value) else {
            return Ok(None);
        };
        // A record whose snapshots or blobs were pruned is a miss, not an error.
        let store = &self.cfg.store;
        if rec
            .chain
            .iter()
            .all(|l| store.snapshot_exists(&l.snapshot) && store.has_blob(&l.blob))
        {
            let _ = store.index_touch(key);
            Ok(Some(rec.chain))
        } else {
            Ok(None)
        }
    }

    fn record(&self, key: &str, chain: &Chain) -> Result<(), SolveError> {
        let json = serde_json::to_string(&Record {
            chain: chain.clone(),
        })
        .map_err(|e| SolveError::BadRecord {
            key: key.to_string(),
            message: e.to_string(),
        })?;
        self.cfg.store.index_put(key, &json)?;
        Ok(())
    }
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}
