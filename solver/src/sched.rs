//! The scheduler: solve the nodes reachable from a root, independent nodes in parallel.
//!
//! Worker threads (at most `max_parallelism`) take ready nodes from a shared queue; a node
//! becomes ready when all its inputs are solved. For each node the worker asks the node's op
//! kind ([`crate::ops`]) for a plan: a value, or a keyed step (key, explanation record, work).
//! The scheduler knows nothing of what an op does: for every keyed step it runs the same
//! protocol — the indexed result on a hit ([`crate::results`]), otherwise the op's work, then
//! the record. The first failure (or [`crate::CacheOptions::cancel`]) stops new
//! work and cancels the running RUN steps: their sandboxes are killed, their snapshots removed
//! and nothing is recorded for them (they are reported with [`Event::Cancelled`]); the first
//! failure is the build's error. File ops and pulls already running finish (they are short and
//! leave a complete, correct result).
//!
//! Deduplication: a miss takes the store lock `key-<hex>` (a flock, so it excludes other
//! threads and other rbuild processes on the same store), then looks the key up again; a step
//! that another worker or process was building is thus waited for and reused, not built twice.
//! Explanations and step records: see [`crate::explain`].

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use rbuild_graph::{Definition, Node, NodeId};

use crate::explain;
use crate::ops::{Cx, Input, Keyed, OpKind, Plan};
use crate::results::Record;
use crate::{Chain, Event, Progress, SolveError, Solver, Value};

/// Which op kind handles a node ([`crate::ops::kind_of`]; tests pass fakes).
pub(crate) type KindOf<'f, 'k> = &'f (dyn Fn(&Node) -> &'k (dyn OpKind + 'k) + Sync);

/// The result of solving a root node.
#[derive(Debug, Clone)]
pub struct SolveOutput {
    pub chain: Chain,
    pub key: String,
    /// How many nodes ran (were not cache hits), for reporting.
    pub executed: usize,
    pub cached: usize,
}

/// What one node's solve produced.
struct NodeOut {
    key: String,
    value: Value,
    cached: bool,
    label: String,
}

struct State {
    ready: VecDeque<usize>,
    results: Vec<Option<Input>>,
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
        self.solve_variant(def, root, progress, "")
    }

    /// [`Solver::solve`] for one variant of the build (a multi-platform build solves one
    /// graph per platform): `variant` joins the scope of the step identities (see
    /// [`crate::explain`]), so each platform's steps are remembered and explained apart.
    pub fn solve_variant(
        &self,
        def: &Definition,
        root: NodeId,
        progress: &dyn Progress,
        variant: &str,
    ) -> Result<SolveOutput, SolveError> {
        self.solve_with(def, root, progress, variant, &crate::ops::kind_of)
    }

    /// [`Solver::solve_variant`] with the op kinds given by `kinds`.
    pub(crate) fn solve_with(
        &self,
        def: &Definition,
        root: NodeId,
        progress: &dyn Progress,
        variant: &str,
        kinds: KindOf<'_, '_>,
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
        let step_ids = match variant {
            "" => explain::step_ids(def, &self.cfg.cache.scope),
            v => explain::step_ids(def, &format!("{}\n{v}", self.cfg.cache.scope)),
        };
        let workers = self.cfg.max_parallelism.max(1).min(total.max(1));
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    self.worker(
                        def,
                        &step_ids,
                        &state,
                        &cv,
                        &dependents,
                        total,
                        kinds,
                        progress,
                    )
                });
            }
        });
        let mut st = state.into_inner().map_err(|_| SolveError::Cancelled)?;
        if let Some(e) = st.failed.take() {
            return Err(e);
        }
        match st.results.get_mut(root.0).and_then(Option::take) {
            Some(Input {
                key,
                value: Value::Chain(chain),
                ..
            }) => Ok(SolveOutput {
                // The result is what the image is made of: its imported layers are fetched.
                chain: self.ensure_local(&key, &chain, root.0, progress)?,
                key,
                executed: st.executed,
                cached: st.cached,
            }),
            Some(Input {
                key,
                value: Value::Local(_),
                ..
            }) => Err(SolveError::BadRecord {
                key,
                message: "the build result is a local directory, not a filesystem".into(),
            }),
            None => Err(SolveError::Cancelled),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn worker(
        &self,
        def: &Definition,
        step_ids: &[Option<String>],
        state: &Mutex<State>,
        cv: &Condvar,
        dependents: &[Vec<usize>],
        total: usize,
        kinds: KindOf<'_, '_>,
        progress: &dyn Progress,
    ) {
        loop {
            let (id, inputs) = {
                let Ok(mut st) = state.lock() else { return };
                loop {
                    if self.cfg.cache.cancel.load(Ordering::SeqCst) && st.failed.is_none() {
                        st.failed = Some(SolveError::Cancelled);
                    }
                    if st.failed.is_some() || st.done == total {
                        cv.notify_all();
                        return;
                    }
                    if let Some(id) = st.ready.pop_front() {
                        st.running += 1;
                        let inputs: Option<Vec<Input>> = def.nodes[id]
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
                Some(inputs) => {
                    let step = step_ids.get(id).and_then(|s| s.as_deref());
                    self.solve_node(id, step, &def.nodes[id], inputs, kinds, progress)
                }
                None => Err(SolveError::Cancelled),
            };
            let Ok(mut st) = state.lock() else { return };
            st.running -= 1;
            match result {
                Ok(out) => {
                    if out.cached {
                        st.cached += 1;
                    } else {
                        st.executed += 1;
                    }
                    st.results[id] = Some(Input {
                        key: out.key,
                        value: out.value,
                        label: out.label,
                    });
                    st.done += 1;
                    for &d in &dependents[id] {
                        st.waiting[d] -= 1;
                        if st.waiting[d] == 0 {
                            st.ready.push_back(d);
                        }
                    }
                }
                Err(SolveError::Cancelled) if st.failed.is_some() || self.aborted() => {
                    progress.event(Event::Cancelled { vertex: id });
                    if st.failed.is_none() {
                        st.failed = Some(SolveError::Cancelled);
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
                    // Stop the steps still running in other branches.
                    self.abort.store(true, Ordering::SeqCst);
                }
            }
            cv.notify_all();
        }
    }

    /// Solve one node whose inputs are solved: ask its op for a plan, then either take the
    /// value it gives or run the keyed protocol.
    fn solve_node(
        &self,
        id: usize,
        step: Option<&str>,
        node: &Node,
        inputs: Vec<Input>,
        kinds: KindOf<'_, '_>,
        progress: &dyn Progress,
    ) -> Result<NodeOut, SolveError> {
        let cx = Cx {
            solver: self,
            vertex: id,
            node,
            progress,
        };
        let plan = kinds(node).plan(&cx, &inputs)?;
        let out = match plan {
            Plan::Direct { key, value } => Ok(NodeOut {
                key,
                value,
                cached: true,
                label: node.meta.description.clone(),
            }),
            Plan::Keyed(k) => {
                let key = k.key.clone();
                let label = k
                    .label
                    .clone()
                    .unwrap_or_else(|| node.meta.description.clone());
                let (chain, cached) = self.keyed(id, step, node, k, progress)?;
                if let Ok(mut solved) = self.remote.solved.lock() {
                    solved.insert(key.clone(), chain.clone());
                }
                Ok(NodeOut {
                    key,
                    value: Value::Chain(chain),
                    cached,
                    label,
                })
            }
        };
        out
    }

    /// The cache protocol of a keyed step: look up; on a miss take the key's lock, look up
    /// again (another worker or process may have built it meanwhile), run, record. Emits the
    /// progress and explanation events and keeps the step record for later explanations.
    fn keyed(
        &self,
        id: usize,
        step: Option<&str>,
        node: &Node,
        plan: Keyed<'_>,
        progress: &dyn Progress,
    ) -> Result<(Chain, bool), SolveError> {
        let name = node.meta.description.clone();
        let store = &self.cfg.store;
        let explain = self.cfg.cache.explain;
        let Keyed {
            key,
            ignore_cache: ignore,
            record,
            announced,
            work,
            ..
        } = plan;
        let hit = |rec: Record, origin: Option<&str>| -> Result<(Chain, bool), SolveError> {
            match announced {
                Some(t) => progress.event(Event::Done {
                    vertex: id,
                    seconds: t.elapsed().as_secs_f64(),
                }),
                None => progress.event(Event::Cached {
                    vertex: id,
                    name: name.clone(),
                }),
            }
            if explain && record.is_some() {
                progress.event(Event::Explain {
                    vertex: id,
                    reason: match origin {
                        Some(o) => format!(
                            "{} (imported from {o})",
                            explain::explain_hit(rec.build.as_deref(), rec.time)
                        ),
                        None => explain::explain_hit(rec.build.as_deref(), rec.time),
                    },
                });
            }
            if let (Some(step), Some(r)) = (step, &record) {
                if explain::previous_key(store, step)?.as_deref() != Some(key.as_str()) {
                    explain::remember(store, step, r)?;
                }
            }
            Ok((rec.chain, true))
        };
        if !ignore {
            if let Some(rec) = self.lookup_local(&key)? {
                return hit(rec, None);
            }
        }
        let _lock = self.key_lock(&key)?;
        if !ignore {
            if let Some(rec) = self.lookup_local(&key)? {
                return hit(rec, None);
            }
            // The imported caches: a lazy chain, fetched only when something reads it.
            if let Some((origin, rec)) = self.lookup_remote(&key)? {
                return hit(rec, Some(&origin));
            }
        }
        if self.aborted() {
            return Err(SolveError::Cancelled);
        }
        let t = match announced {
            Some(t) => t,
            None => {
                progress.event(Event::Started {
                    vertex: id,
                    name: name.clone(),
                });
                Instant::now()
            }
        };
        if explain {
            if let Some(r) = &record {
                let reason = if ignore {
                    "cache disabled for this step (--no-cache or --no-cache-filter)".to_string()
                } else {
                    let prev = match step {
                        Some(s) => explain::previous_record(store, s)?,
                        None => None,
                    };
                    let why = explain::explain_miss(prev.as_ref(), r);
                    match self.import_origins() {
                        Some(o) => format!("{why}; not in {o}"),
                        None => why,
                    }
                };
                progress.event(Event::Explain { vertex: id, reason });
            }
        }
        let chain = work()?;
        self.record(&key, &chain)?;
        if let (Some(step), Some(r)) = (step, &record) {
            explain::remember(store, step, r)?;
        }
        progress.event(Event::Done {
            vertex: id,
            seconds: t.elapsed().as_secs_f64(),
        });
        Ok((chain, false))
    }
}
