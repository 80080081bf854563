//! The scheduler: solve the nodes reachable from a root, independent nodes in parallel.
//!
//! Worker threads (at most `max_parallelism`) take ready nodes from a shared queue; a node
//! becomes ready when all its inputs are solved. For each node the worker computes the cache
//! key (see [`crate::cachekey`]), returns the indexed result on a hit, and otherwise runs the
//! op and records the result. The first failure (or [`crate::CacheOptions::cancel`]) stops new
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

use rbuild_cache::context::{checksum, ExcludeMatcher, Selector};
use rbuild_graph::{Definition, FileAction, MountKind, Node, NodeId, Op, SourceOp};
use serde::{Deserialize, Serialize};

use crate::cachekey::{image_key, node_key, InputPart};
use crate::explain::{self, InputRecord, StepRecord};
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
pub(crate) struct Record {
    pub(crate) chain: Chain,
    /// Build that produced the result, and when (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    build: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time: Option<i64>,
}

/// Per-file entry digests of one local input (path, digest).
type FileDigests = Vec<(String, String)>;

/// A solved node: key, value, and the label dependents' explanations use.
type Solved = (String, Value, String);

/// What one node's solve produced.
struct NodeOut {
    key: String,
    value: Value,
    cached: bool,
    label: String,
}

struct State {
    ready: VecDeque<usize>,
    results: Vec<Option<Solved>>,
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
                s.spawn(|| self.worker(def, &step_ids, &state, &cv, &dependents, total, progress));
            }
        });
        let mut st = state.into_inner().map_err(|_| SolveError::Cancelled)?;
        if let Some(e) = st.failed.take() {
            return Err(e);
        }
        match st.results.get_mut(root.0).and_then(Option::take) {
            Some((key, Value::Chain(chain), _)) => Ok(SolveOutput {
                chain,
                key,
                executed: st.executed,
                cached: st.cached,
            }),
            Some((key, Value::Local(_), _)) => Err(SolveError::BadRecord {
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
                        let inputs: Option<Vec<Solved>> = def.nodes[id]
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
                    self.solve_node(id, step, &def.nodes[id], inputs, progress)
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
                    st.results[id] = Some((out.key, out.value, out.label));
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

    /// Solve one node whose inputs are solved.
    fn solve_node(
        &self,
        id: usize,
        step: Option<&str>,
        node: &Node,
        inputs: Vec<Solved>,
        progress: &dyn Progress,
    ) -> Result<NodeOut, SolveError> {
        let name = node.meta.description.clone();
        let mut keys = Vec::with_capacity(inputs.len());
        let mut values = Vec::with_capacity(inputs.len());
        let mut labels = Vec::with_capacity(inputs.len());
        for (k, v, l) in inputs {
            keys.push(k);
            values.push(v);
            labels.push(l);
        }
        let out = |key: String, value: Value, cached: bool| NodeOut {
            key,
            value,
            cached,
            label: name.clone(),
        };
        match &node.op {
            Op::Source(SourceOp::Scratch) => Ok(out(
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
                Ok(out(
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
                let at = format!("{}@{}", resolved.reference, resolved.manifest_digest);
                let make_rec = || StepRecord {
                    key: key.clone(),
                    op: at.clone(),
                    inputs: Vec::new(),
                    build: self.cfg.cache.build_id.clone(),
                    time: now_secs(),
                };
                let (chain, cached) = self.keyed(
                    id,
                    step,
                    node,
                    &key,
                    false,
                    &make_rec,
                    progress,
                    &mut || {
                        let transfers = crate::VertexTransfers {
                            vertex: id,
                            progress,
                        };
                        self.pull_layers(&resolved, &transfers)
                    },
                )?;
                Ok(NodeOut {
                    key,
                    value: Value::Chain(chain),
                    cached,
                    label: format!("base image {at}"),
                })
            }
            Op::Source(SourceOp::Http {
                url,
                checksum,
                filename,
            }) => self
                .solve_http(
                    id,
                    node,
                    &crate::remote::HttpSource {
                        url,
                        checksum: checksum.as_deref(),
                        filename: filename.as_deref(),
                    },
                    progress,
                )
                .map(|(key, value, cached)| out(key, value, cached)),
            Op::Source(SourceOp::Git {
                remote,
                reference,
                keep_git_dir,
                checksum,
            }) => self
                .solve_git(
                    id,
                    node,
                    &crate::remote::GitSource {
                        remote,
                        reference: reference.as_deref(),
                        keep_git_dir: *keep_git_dir,
                        checksum: checksum.as_deref(),
                    },
                    progress,
                )
                .map(|(key, value, cached)| out(key, value, cached)),
            Op::Merge => {
                let parts: Vec<InputPart> = keys.iter().cloned().map(InputPart::Key).collect();
                let key = node_key(&node.op, &parts)?;
                let mut chain = Vec::new();
                for v in &values {
                    if let Value::Chain(c) = v {
                        chain.extend(c.iter().cloned());
                    }
                }
                Ok(out(key, Value::Chain(chain), true))
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
                let (parts, files) = self
                    .input_parts(node, &keys, &values)
                    .map_err(|e| self.step_error(node, e))?;
                let key = node_key(&node.op, &parts)?;
                let ignore = node.meta.ignore_cache
                    || node
                        .meta
                        .stage
                        .as_ref()
                        .is_some_and(|s| self.cfg.cache.no_cache_stages.iter().any(|f| f == s));
                let make_rec = || StepRecord {
                    key: key.clone(),
                    op: String::from_utf8_lossy(
                        &rbuild_graph::canonical_json(&node.op, "op").unwrap_or_default(),
                    )
                    .into_owned(),
                    inputs: parts
                        .iter()
                        .enumerate()
                        .map(|(i, p)| match p {
                            InputPart::Key(k) => InputRecord::Key {
                                key: k.clone(),
                                label: labels.get(i).cloned().unwrap_or_default(),
                            },
                            InputPart::Content(sels) => InputRecord::Content {
                                selectors: sels.clone(),
                                files: files.get(i).cloned().unwrap_or_default(),
                            },
                        })
                        .collect(),
                    build: self.cfg.cache.build_id.clone(),
                    time: now_secs(),
                };
                let (chain, cached) = self.keyed(
                    id,
                    step,
                    node,
                    &key,
                    ignore,
                    &make_rec,
                    progress,
                    &mut || match &node.op {
                        Op::Exec(op) => self.run_exec(id, node, op, &values, progress),
                        Op::File(op) => self.run_file(node, op, &values),
                        _ => Ok(Vec::new()),
                    },
                )?;
                Ok(out(key, Value::Chain(chain), cached))
            }
        }
    }

    /// The cache protocol of a keyed step: look up; on a miss take the key's lock, look up
    /// again (another worker or process may have built it meanwhile), run, record. Emits the
    /// progress and explanation events and keeps the step record for later explanations.
    #[allow(clippy::too_many_arguments)]
    fn keyed(
        &self,
        id: usize,
        step: Option<&str>,
        node: &Node,
        key: &str,
        ignore: bool,
        make_rec: &dyn Fn() -> StepRecord,
        progress: &dyn Progress,
        run: &mut dyn FnMut() -> Result<Chain, SolveError>,
    ) -> Result<(Chain, bool), SolveError> {
        let name = node.meta.description.clone();
        let store = &self.cfg.store;
        let explain = self.cfg.cache.explain;
        let hit = |rec: Record| -> Result<(Chain, bool), SolveError> {
            progress.event(Event::Cached {
                vertex: id,
                name: name.clone(),
            });
            if explain {
                progress.event(Event::Explain {
                    vertex: id,
                    reason: explain::explain_hit(rec.build.as_deref(), rec.time),
                });
            }
            if let Some(step) = step {
                if explain::previous_key(store, step)?.as_deref() != Some(key) {
                    explain::remember(store, step, &make_rec())?;
                }
            }
            Ok((rec.chain, true))
        };
        if !ignore {
            if let Some(rec) = self.lookup(key)? {
                return hit(rec);
            }
        }
        let _lock = store.lock(&lock_name(key))?;
        if !ignore {
            if let Some(rec) = self.lookup(key)? {
                return hit(rec);
            }
        }
        if self.aborted() {
            return Err(SolveError::Cancelled);
        }
        let rec = make_rec();
        let t = Instant::now();
        progress.event(Event::Started {
            vertex: id,
            name: name.clone(),
        });
        if explain {
            let reason = if ignore {
                "cache disabled for this step (--no-cache or --no-cache-filter)".to_string()
            } else {
                let prev = match step {
                    Some(s) => explain::previous_record(store, s)?,
                    None => None,
                };
                explain::explain_miss(prev.as_ref(), &rec)
            };
            progress.event(Event::Explain { vertex: id, reason });
        }
        let chain = run()?;
        self.record(key, &chain)?;
        if let Some(step) = step {
            explain::remember(store, step, &rec)?;
        }
        progress.event(Event::Done {
            vertex: id,
            seconds: t.elapsed().as_secs_f64(),
        });
        Ok((chain, false))
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
    ) -> Result<(Vec<InputPart>, Vec<FileDigests>), SolveError> {
        let mut parts = Vec::with_capacity(values.len());
        let mut all_files = vec![Vec::new(); values.len()];
        for (i, v) in values.iter().enumerate() {
            match v {
                Value::Chain(_) => parts.push(InputPart::Key(keys[i].clone())),
                Value::Local(dir) => {
                    let exclude = ExcludeMatcher::new(&dir.exclude)?;
                    let mut sels: Vec<Selector> = Vec::new();
                    // Per selector, its `COPY --exclude` patterns (none for RUN mounts).
                    let mut copy_excludes: Vec<Option<ExcludeMatcher>> = Vec::new();
                    match &node.op {
                        Op::File(f) => {
                            for a in &f.actions {
                                if let FileAction::Copy(c) = a {
                                    if c.src_input == i {
                                        // `--parents` past a `/./` pivot copies what an
                                        // include pattern (`**` spans directories) selects
                                        // below the part before it: that whole part is read.
                                        let path = match c.src.split_once("/./") {
                                            Some((before, _)) if c.parents => before.to_string(),
                                            _ => c.src.clone(),
                                        };
                                        sels.push(Selector {
                                            path,
                                            follow_symlinks: c.follow_symlinks,
                                            allow_wildcard: c.allow_wildcard,
                                        });
                                        copy_excludes.push(if c.exclude.is_empty() {
                                            None
                                        } else {
                                            Some(ExcludeMatcher::new(&c.exclude)?)
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
                                        copy_excludes.push(None);
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                    let mut sums = Vec::with_capacity(sels.len());
                    for (sel, copy_exclude) in sels.iter().zip(&copy_excludes) {
                        let sum = match checksum(&self.cfg.store, &dir.path, sel, &exclude) {
                            Ok(s) => match copy_exclude {
                                Some(ex) => {
                                    let (digest, files) = without_excluded(sel, ex, s.files);
                                    all_files[i].extend(files);
                                    digest
                                }
                                None => {
                                    all_files[i].extend(s.files);
                                    s.digest
                                }
                            },
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
        Ok((parts, all_files))
    }

    fn lookup(&self, key: &str) -> Result<Option<Record>, SolveError> {
        let Some(entry) = self.cfg.store.index_get(key)? else {
            return Ok(None);
        };
        let Ok(rec) = serde_json::from_str::<Record>(&entry.value) else {
            return Ok(None);
        };
        // A record whose snapshots or blobs were pruned is a miss, not an error.
        let store = &self.cfg.store;
        if rec.chain.iter().all(|l| {
            store.snapshot_exists(&l.snapshot) && (l.blob.is_empty() || store.has_blob(&l.blob))
        }) {
            let _ = store.index_touch(key);
            Ok(Some(rec))
        } else {
            Ok(None)
        }
    }

    fn record(&self, key: &str, chain: &Chain) -> Result<(), SolveError> {
        let json = serde_json::to_string(&Record {
            chain: chain.clone(),
            build: Some(self.cfg.cache.build_id.clone()),
            time: Some(now_secs()),
        })
        .map_err(|e| SolveError::BadRecord {
            key: key.to_string(),
            message: e.to_string(),
        })?;
        self.cfg.store.index_put(key, &json)?;
        Ok(())
    }
}

/// The store lock that serialises building one key: `key-<hex>`.
fn lock_name(key: &str) -> String {
    let hex: String = key
        .rsplit(':')
        .next()
        .unwrap_or(key)
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("key-{hex}")
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A copy selection's digest without the files its `COPY --exclude` patterns leave out, so
/// that editing an excluded file keeps the key (the patterns themselves are in the op's JSON).
/// Only non-directory entries are dropped, and only when the selection has no wildcard and
/// the entry lies under the selection's own path (no symlink resolved away from it); an entry
/// is dropped when a pattern matches the same text the copy tests (`fileop`): its path in the
/// context, its path below the selection, or, for a selected file itself, its name. So the key
/// never ignores a file the copy reads; anything less certain stays in the key.
fn without_excluded(
    sel: &Selector,
    ex: &ExcludeMatcher,
    files: Vec<(String, String)>,
) -> (String, Vec<(String, String)>) {
    let prefix = sel.path.trim_matches('/');
    let excluded = |p: &str| {
        if p.ends_with('/') || has_glob(&sel.path) {
            return false;
        }
        if p == prefix {
            let name = p.rsplit('/').next().unwrap_or(p);
            return ex.is_excluded(p) || ex.is_excluded(name);
        }
        let below = if prefix.is_empty() {
            Some(p)
        } else {
            p.strip_prefix(prefix).and_then(|r| r.strip_prefix('/'))
        };
        below.is_some_and(|b| ex.is_excluded(b) || ex.is_excluded(p))
    };
    let kept: Vec<(String, String)> = files.into_iter().filter(|(p, _)| !excluded(p)).collect();
    let mut rec = String::from("rbuild-selection-v1\n");
    for (p, d) in &kept {
        rec.push_str(&crate::cachekey::quote(p));
        rec.push(' ');
        rec.push_str(d);
        rec.push('\n');
    }
    (rbuild_graph::sha256_digest(rec.as_bytes()), kept)
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}
