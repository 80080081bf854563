//! The scheduler: solve the nodes reachable from a root, independent nodes in parallel, and
//! run only what the root needs.
//!
//! It knows nothing of what an op does. Every node is first *planned*, bottom-up, as soon as
//! its inputs are planned: its op kind ([`crate::ops`]) gives either a value (scratch, local
//! directories, merges) or a keyed step — the key, what went into it, and the work to run on
//! a miss. Planning needs the inputs' keys, never their results, so it runs nothing. A keyed
//! step is then a local hit, an imported (lazy) hit from a remote cache, or a miss. When every
//! node is planned the root is *demanded*: a demanded miss demands its inputs and runs once
//! they are ready, a demanded imported hit is fetched (and, if that fails, built like a miss),
//! and a miss nobody demands never runs — as in BuildKit, a stage whose result the cache
//! already holds one step later is not built (steps the build is told to rebuild,
//! `--no-cache` and `--no-cache-filter`, are demanded too). Worker threads (at most `max_parallelism`) take
//! plan and run tasks from one queue.
//!
//! The first failure (or [`crate::CacheOptions::cancel`]) stops new work and cancels the
//! running RUN steps: their sandboxes are killed, their snapshots removed and nothing is
//! recorded for them (they are reported with [`Event::Cancelled`]); the first failure is the
//! build's error. File ops and pulls already running finish.
//!
//! Deduplication: running a miss takes the store lock `key-<hex>` (a flock, so it excludes
//! other threads and other rbuild processes on the same store), then looks the key up again;
//! a step that another worker or process was building is thus waited for and reused, not
//! built twice. Results are looked up and recorded in [`crate::results`]; explanations and
//! step records: see [`crate::explain`].

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

/// Where a node is.
enum Status<'a> {
    /// Waiting for its inputs to be planned.
    Unplanned,
    /// Its value is known and local (a hit, a direct value, or it ran).
    Ready(Value),
    /// An imported hit: the value is a lazy chain; the work is kept in case fetching fails.
    /// Announced (`Cached`) once fetched, or at the end when nothing needed it.
    Remote(Value, Keyed<'a>, Imported),
    /// A miss that has not run.
    Pending(Keyed<'a>),
    /// A direct value over inputs that were not ready when planned: planned again once they are.
    Replan,
    /// A worker is planning, running or fetching it.
    Busy,
}

struct Slot<'a> {
    status: Status<'a>,
    /// Key and label, once planned.
    key: String,
    label: String,
    demanded: bool,
}

enum Task {
    /// Plan a node whose inputs are planned.
    Plan(usize),
    /// Plan again a direct node whose inputs are now ready.
    Replan(usize),
    /// Run a demanded miss whose inputs are ready, or fetch a demanded imported hit.
    Run(usize),
}

struct State<'a> {
    slots: Vec<Slot<'a>>,
    queue: VecDeque<Task>,
    /// Per node, how many of its inputs are not planned yet.
    unplanned_inputs: Vec<usize>,
    planned: usize,
    running: usize,
    failed: Option<SolveError>,
    executed: usize,
    cached: usize,
}

/// The graph's shape, shared by the workers.
struct Shape<'d> {
    def: &'d Definition,
    root: usize,
    /// Per node, the distinct nodes reading it (within the reachable set).
    dependents: Vec<Vec<usize>>,
    total: usize,
    step_ids: Vec<Option<String>>,
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
        let mut unplanned_inputs = vec![0usize; n];
        let mut queue = VecDeque::new();
        for id in &order {
            let node = def.node(*id)?;
            let mut uniq: Vec<usize> = node.inputs.iter().map(|i| i.0).collect();
            uniq.sort_unstable();
            uniq.dedup();
            unplanned_inputs[id.0] = uniq.len();
            for i in uniq {
                dependents[i].push(id.0);
            }
            if node.inputs.is_empty() {
                queue.push_back(Task::Plan(id.0));
            }
        }
        let state = Mutex::new(State {
            slots: (0..n)
                .map(|_| Slot {
                    status: Status::Unplanned,
                    key: String::new(),
                    label: String::new(),
                    demanded: false,
                })
                .collect(),
            queue,
            unplanned_inputs,
            planned: 0,
            running: 0,
            failed: None,
            executed: 0,
            cached: 0,
        });
        let step_ids = match variant {
            "" => explain::step_ids(def, &self.cfg.cache.scope),
            v => explain::step_ids(def, &format!("{}\n{v}", self.cfg.cache.scope)),
        };
        let shape = Shape {
            def,
            root: root.0,
            dependents,
            total: order.len(),
            step_ids,
        };
        let cv = Condvar::new();
        let workers = self.cfg.max_parallelism.max(1).min(order.len().max(1));
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| self.worker(&shape, &state, &cv, kinds, progress));
            }
        });
        let mut st = state.into_inner().map_err(|_| SolveError::Cancelled)?;
        if let Some(e) = st.failed.take() {
            return Err(e);
        }
        // Imported hits nothing needed: cached all the same (nothing was fetched for them).
        let mut cached = st.cached;
        for (id, slot) in st.slots.iter_mut().enumerate() {
            let status = std::mem::replace(&mut slot.status, Status::Busy);
            if let Status::Remote(Value::Chain(chain), k, imported) = status {
                let node = &def.nodes[id];
                let step = shape.step_ids.get(id).and_then(|s| s.as_deref());
                let rec = Record {
                    chain,
                    build: imported.build,
                    time: imported.time,
                };
                self.hit(id, step, node, &k, rec, Some(&imported.origin), progress)?;
                cached += 1;
            } else {
                slot.status = status;
            }
        }
        let executed = st.executed;
        let slot = st.slots.swap_remove(root.0);
        match slot.status {
            Status::Ready(Value::Chain(chain)) => Ok(SolveOutput {
                chain,
                key: slot.key,
                executed,
                cached,
            }),
            Status::Ready(Value::Local(_)) => Err(SolveError::BadRecord {
                key: slot.key,
                message: "the build result is a local directory, not a filesystem".into(),
            }),
            _ => Err(SolveError::Cancelled),
        }
    }

    fn worker<'a, 'k: 'a>(
        &'a self,
        shape: &Shape<'a>,
        state: &Mutex<State<'a>>,
        cv: &Condvar,
        kinds: KindOf<'_, 'k>,
        progress: &'a dyn Progress,
    ) {
        loop {
            // Take a task and what it needs, under the lock.
            let (task, inputs, job) = {
                let Ok(mut st) = state.lock() else { return };
                loop {
                    if self.cfg.cache.cancel.load(Ordering::SeqCst) && st.failed.is_none() {
                        st.failed = Some(SolveError::Cancelled);
                    }
                    let finished = st.failed.is_some()
                        || (st.planned == shape.total
                            && st.queue.is_empty()
                            && matches!(st.slots[shape.root].status, Status::Ready(_)));
                    if finished && st.running == 0 {
                        cv.notify_all();
                        return;
                    }
                    if !finished {
                        if let Some(task) = st.queue.pop_front() {
                            let id = match task {
                                Task::Plan(i) | Task::Replan(i) | Task::Run(i) => i,
                            };
                            let inputs = gather_inputs(&st, shape.def, id);
                            let job = match task {
                                Task::Run(_) => {
                                    std::mem::replace(&mut st.slots[id].status, Status::Busy)
                                }
                                _ => Status::Busy,
                            };
                            st.running += 1;
                            break (task, inputs, job);
                        }
                        if st.running == 0 {
                            // Nothing to do, nothing running, not done: a cycle or a bug.
                            st.failed = Some(SolveError::BadRecord {
                                key: String::new(),
                                message: "the build graph cannot be scheduled".into(),
                            });
                            cv.notify_all();
                            return;
                        }
                    }
                    st = match cv.wait(st) {
                        Ok(g) => g,
                        Err(_) => return,
                    };
                }
            };
            let result = match task {
                Task::Plan(id) | Task::Replan(id) => {
                    self.plan_node(shape, id, &inputs, kinds, progress)
                }
                Task::Run(id) => self.run_node(shape, id, job, &inputs, progress),
            };
            let Ok(mut st) = state.lock() else { return };
            st.running -= 1;
            match (task, result) {
                (Task::Plan(id), Ok(done)) => {
                    self.settle(&mut st, shape, id, done);
                    st.planned += 1;
                    for &d in &shape.dependents[id] {
                        st.unplanned_inputs[d] -= 1;
                        if st.unplanned_inputs[d] == 0 {
                            st.queue.push_back(Task::Plan(d));
                        }
                    }
                    if st.planned == shape.total {
                        demand(&mut st, shape, shape.root);
                        // Steps the build was told to run (`--no-cache`, `--no-cache-filter`)
                        // run even when nothing reads them, and so do steps whose planning
                        // already did their visible work (an unpinned download, announced).
                        let forced: Vec<usize> = (0..st.slots.len())
                            .filter(|&i| {
                                matches!(&st.slots[i].status,
                                    Status::Pending(k) if k.ignore_cache || k.announced.is_some())
                            })
                            .collect();
                        for i in forced {
                            demand(&mut st, shape, i);
                        }
                    }
                }
                (Task::Replan(id) | Task::Run(id), Ok(done)) => {
                    self.settle(&mut st, shape, id, done);
                    if st.slots[id].demanded {
                        // A fetch that failed becomes a miss: it demands its inputs now.
                        let again = std::mem::replace(&mut st.slots[id].demanded, false);
                        if again {
                            demand(&mut st, shape, id);
                        }
                    }
                }
                (task, Err(e)) => {
                    let id = match task {
                        Task::Plan(i) | Task::Replan(i) | Task::Run(i) => i,
                    };
                    match e {
                        SolveError::Cancelled if st.failed.is_some() || self.aborted() => {
                            progress.event(Event::Cancelled { vertex: id });
                            if st.failed.is_none() {
                                st.failed = Some(SolveError::Cancelled);
                            }
                        }
                        e => {
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
                }
            }
            cv.notify_all();
        }
    }

    /// Record what a plan or run produced in the node's slot; a node that became ready lets
    /// its demanded dependents go on.
    fn settle<'a>(&self, st: &mut State<'a>, shape: &Shape<'_>, id: usize, done: Done<'a>) {
        match done {
            Done::Ready {
                key,
                label,
                value,
                ran,
            } => {
                if ran {
                    st.executed += 1;
                } else {
                    st.cached += 1;
                }
                let slot = &mut st.slots[id];
                slot.key = key;
                slot.label = label;
                slot.status = Status::Ready(value);
                for &d in &shape.dependents[id] {
                    if st.slots[d].demanded && inputs_ready(st, shape.def, d) {
                        match st.slots[d].status {
                            Status::Pending(_) => st.queue.push_back(Task::Run(d)),
                            Status::Replan => {
                                st.slots[d].status = Status::Busy;
                                st.queue.push_back(Task::Replan(d));
                            }
                            _ => {}
                        }
                    }
                }
            }
            Done::Planned { key, label, status } => {
                let slot = &mut st.slots[id];
                slot.key = key;
                slot.label = label;
                slot.status = status;
            }
        }
    }

    /// Plan one node whose inputs are planned.
    fn plan_node<'a, 'k: 'a>(
        &'a self,
        shape: &Shape<'a>,
        id: usize,
        inputs: &[Input],
        kinds: KindOf<'_, 'k>,
        progress: &'a dyn Progress,
    ) -> Result<Done<'a>, SolveError> {
        let node = &shape.def.nodes[id];
        let cx = Cx {
            solver: self,
            vertex: id,
            node,
            progress,
        };
        let description = || node.meta.description.clone();
        match kinds(node).plan(cx, inputs)? {
            Plan::Direct { key, value } => {
                let ready = inputs.iter().all(|i| i.ready);
                Ok(if ready {
                    Done::Ready {
                        key,
                        label: description(),
                        value,
                        ran: false,
                    }
                } else {
                    Done::Planned {
                        key,
                        label: description(),
                        status: Status::Replan,
                    }
                })
            }
            Plan::Keyed(k) => {
                let key = k.key.clone();
                let label = k.label.clone().unwrap_or_else(description);
                let step = shape.step_ids.get(id).and_then(|s| s.as_deref());
                if !k.ignore_cache {
                    if let Some(rec) = self.lookup_local(&key)? {
                        let chain = self.hit(id, step, node, &k, rec, None, progress)?;
                        return Ok(Done::Ready {
                            key,
                            label,
                            value: Value::Chain(chain),
                            ran: false,
                        });
                    }
                    // The imported caches: a lazy chain, fetched only when demanded.
                    if let Some((origin, rec)) = self.lookup_remote(&key)? {
                        let imported = Imported {
                            origin,
                            build: rec.build,
                            time: rec.time,
                        };
                        return Ok(Done::Planned {
                            key,
                            label,
                            status: Status::Remote(Value::Chain(rec.chain), k, imported),
                        });
                    }
                }
                Ok(Done::Planned {
                    key,
                    label,
                    status: Status::Pending(k),
                })
            }
        }
    }

    /// Run a demanded node: fetch an imported hit, or run a miss whose inputs are ready.
    fn run_node<'a>(
        &'a self,
        shape: &Shape<'a>,
        id: usize,
        job: Status<'a>,
        inputs: &[Input],
        progress: &'a dyn Progress,
    ) -> Result<Done<'a>, SolveError> {
        let node = &shape.def.nodes[id];
        let step = shape.step_ids.get(id).and_then(|s| s.as_deref());
        match job {
            Status::Remote(Value::Chain(chain), k, imported) => {
                match self.ensure_local(&k.key, &chain, id, progress) {
                    Ok(local) => {
                        let rec = Record {
                            chain: local,
                            build: imported.build,
                            time: imported.time,
                        };
                        let local =
                            self.hit(id, step, node, &k, rec, Some(&imported.origin), progress)?;
                        Ok(Done::Ready {
                            key: k.key.clone(),
                            label: k
                                .label
                                .clone()
                                .unwrap_or_else(|| node.meta.description.clone()),
                            value: Value::Chain(local),
                            ran: false,
                        })
                    }
                    Err(e) => {
                        // The import let us down (gone, truncated, tampered): build it.
                        progress.event(Event::Warning {
                            vertex: id,
                            message: format!(
                                "{}: the imported cache could not be used ({e}); building the step",
                                node.meta.description
                            ),
                        });
                        Ok(Done::Planned {
                            key: k.key.clone(),
                            label: k
                                .label
                                .clone()
                                .unwrap_or_else(|| node.meta.description.clone()),
                            status: Status::Pending(k),
                        })
                    }
                }
            }
            Status::Pending(k) => {
                let key = k.key.clone();
                let label = k
                    .label
                    .clone()
                    .unwrap_or_else(|| node.meta.description.clone());
                let (chain, ran) = self.run_keyed(id, step, node, k, inputs, progress)?;
                Ok(Done::Ready {
                    key,
                    label,
                    value: Value::Chain(chain),
                    ran,
                })
            }
            _ => Err(SolveError::BadRecord {
                key: String::new(),
                message: format!("step {id} was scheduled twice"),
            }),
        }
    }

    /// A hit (local, or imported from `origin`): progress and explanation events, and the
    /// step record kept for later explanations.
    #[allow(clippy::too_many_arguments)]
    fn hit(
        &self,
        id: usize,
        step: Option<&str>,
        node: &Node,
        k: &Keyed<'_>,
        rec: Record,
        origin: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<Chain, SolveError> {
        let store = &self.cfg.store;
        match k.announced {
            Some(t) => progress.event(Event::Done {
                vertex: id,
                seconds: t.elapsed().as_secs_f64(),
            }),
            None => progress.event(Event::Cached {
                vertex: id,
                name: node.meta.description.clone(),
            }),
        }
        if self.cfg.cache.explain && k.record.is_some() {
            let why = explain::explain_hit(rec.build.as_deref(), rec.time);
            progress.event(Event::Explain {
                vertex: id,
                reason: match origin {
                    Some(o) => format!("{why} (imported from {o})"),
                    None => why,
                },
            });
        }
        if let (Some(step), Some(r)) = (step, &k.record) {
            if explain::previous_key(store, step)?.as_deref() != Some(k.key.as_str()) {
                explain::remember(store, step, r)?;
            }
        }
        self.remember_solved(&k.key, &rec.chain);
        Ok(rec.chain)
    }

    /// The keyed protocol of a miss: take the key's lock, look up again (another worker or
    /// process may have built it meanwhile), run, record. Returns the chain and whether the
    /// step ran.
    fn run_keyed(
        &self,
        id: usize,
        step: Option<&str>,
        node: &Node,
        k: Keyed<'_>,
        inputs: &[Input],
        progress: &dyn Progress,
    ) -> Result<(Chain, bool), SolveError> {
        let store = &self.cfg.store;
        let _lock = self.key_lock(&k.key)?;
        if !k.ignore_cache {
            if let Some(rec) = self.lookup_local(&k.key)? {
                let chain = self.hit(id, step, node, &k, rec, None, progress)?;
                return Ok((chain, false));
            }
        }
        if self.aborted() {
            return Err(SolveError::Cancelled);
        }
        let t = match k.announced {
            Some(t) => t,
            None => {
                progress.event(Event::Started {
                    vertex: id,
                    name: node.meta.description.clone(),
                });
                Instant::now()
            }
        };
        if self.cfg.cache.explain {
            if let Some(r) = &k.record {
                let reason = if k.ignore_cache {
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
        let Keyed {
            key, record, work, ..
        } = k;
        let chain = work(inputs)?;
        self.record(&key, &chain)?;
        if let (Some(step), Some(r)) = (step, &record) {
            explain::remember(store, step, r)?;
        }
        self.remember_solved(&key, &chain);
        // The work may have found its result under a second key instead of running.
        let reused = self
            .reused
            .lock()
            .map(|mut r| r.remove(&key))
            .unwrap_or(false);
        if reused {
            progress.event(Event::Cached {
                vertex: id,
                name: node.meta.description.clone(),
            });
            return Ok((chain, false));
        }
        progress.event(Event::Done {
            vertex: id,
            seconds: t.elapsed().as_secs_f64(),
        });
        Ok((chain, true))
    }

    /// Keep a keyed result of this solver's builds for a cache export.
    fn remember_solved(&self, key: &str, chain: &Chain) {
        if let Ok(mut solved) = self.remote.solved.lock() {
            solved.insert(key.to_string(), chain.clone());
        }
    }
}

/// Where an imported hit came from, for its announcement.
struct Imported {
    origin: String,
    build: Option<String>,
    time: Option<i64>,
}

/// What a plan or run task produced (short-lived: the size difference does not matter).
#[allow(clippy::large_enum_variant)]
enum Done<'a> {
    /// The value is ready (and local).
    Ready {
        key: String,
        label: String,
        value: Value,
        /// The step ran (not a hit, not direct).
        ran: bool,
    },
    /// Planned, not ready: pending, remote, or to be planned again.
    Planned {
        key: String,
        label: String,
        status: Status<'a>,
    },
}

/// The node's inputs as planned so far: key, label and value (a placeholder empty chain for
/// an input that is not ready: planning reads keys only).
fn gather_inputs(st: &State<'_>, def: &Definition, id: usize) -> Vec<Input> {
    def.nodes[id]
        .inputs
        .iter()
        .map(|i| {
            let slot = &st.slots[i.0];
            let (value, ready) = match &slot.status {
                Status::Ready(v) => (v.clone(), true),
                Status::Remote(v, ..) => (v.clone(), false),
                _ => (Value::Chain(Vec::new()), false),
            };
            Input {
                key: slot.key.clone(),
                value,
                label: slot.label.clone(),
                ready,
            }
        })
        .collect()
}

fn inputs_ready(st: &State<'_>, def: &Definition, id: usize) -> bool {
    def.nodes[id]
        .inputs
        .iter()
        .all(|i| matches!(st.slots[i.0].status, Status::Ready(_)))
}

/// Demand `id` and, transitively, what it needs: misses demand their inputs and are queued
/// once those are ready; imported hits are queued to be fetched. (An explicit stack: graphs
/// may be deep.)
fn demand(st: &mut State<'_>, shape: &Shape<'_>, id: usize) {
    let mut stack = vec![id];
    while let Some(n) = stack.pop() {
        if st.slots[n].demanded {
            continue;
        }
        st.slots[n].demanded = true;
        match st.slots[n].status {
            Status::Remote(..) => st.queue.push_back(Task::Run(n)),
            Status::Pending(_) | Status::Replan => {
                if inputs_ready(st, shape.def, n) {
                    if matches!(st.slots[n].status, Status::Replan) {
                        st.slots[n].status = Status::Busy;
                        st.queue.push_back(Task::Replan(n));
                    } else {
                        st.queue.push_back(Task::Run(n));
                    }
                } else {
                    for i in &shape.def.nodes[n].inputs {
                        stack.push(i.0);
                    }
                }
            }
            _ => {}
        }
    }
}
