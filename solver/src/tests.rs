//! Unit tests of the scheduler with fake ops, and of the exec op through the executor seam
//! with a fake executor. The store is real (a temporary directory).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rbuild_executor::{ExecSpec, ExecutorError, ExitStatus, Rootfs, Stream};
use rbuild_graph::{
    Definition, ExecOp, Meta, Mount, MountKind, NetworkMode, Node, NodeId, Op, SecurityMode,
    SourceOp,
};

use crate::ops::{Cx, Input, Keyed, OpKind, Plan};
use crate::{Event, Progress, SolveError, Solver, SolverConfig, StepExecutor};

/// A fake op: its key is its salt plus its inputs' keys; its work counts runs and then
/// succeeds, fails, or waits to be cancelled.
struct FakeOp {
    salt: String,
    runs: AtomicUsize,
    behaviour: Behaviour,
    /// The key leaves the inputs out (as `COPY --link`'s copy does its destination).
    own_key: bool,
}

#[derive(Clone, Copy)]
enum Behaviour {
    Succeed,
    /// Sleep this long, then succeed.
    Slow(Duration),
    /// Sleep this long, then fail.
    Fail(Duration),
    /// Run until the solver aborts (at most 10 s), then end cancelled.
    UntilAborted,
}

impl FakeOp {
    fn new(salt: &str, behaviour: Behaviour) -> Self {
        FakeOp {
            salt: salt.to_string(),
            runs: AtomicUsize::new(0),
            behaviour,
            own_key: false,
        }
    }
    fn own_key(mut self) -> Self {
        self.own_key = true;
        self
    }
    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

impl OpKind for FakeOp {
    fn plan<'a>(&'a self, cx: Cx<'a>, inputs: &[Input]) -> Result<Plan<'a>, SolveError> {
        let mut rec = format!("fake {}", self.salt);
        for i in inputs.iter().filter(|_| !self.own_key) {
            rec.push(' ');
            rec.push_str(&i.key);
        }
        Ok(Plan::Keyed(Keyed {
            key: rbuild_graph::sha256_digest(rec.as_bytes()),
            ignore_cache: false,
            record: None,
            label: None,
            announced: None,
            work: Box::new(move |_: &[Input]| {
                self.runs.fetch_add(1, Ordering::SeqCst);
                match self.behaviour {
                    Behaviour::Succeed => Ok(Vec::new()),
                    Behaviour::Slow(d) => {
                        std::thread::sleep(d);
                        Ok(Vec::new())
                    }
                    Behaviour::Fail(d) => {
                        std::thread::sleep(d);
                        Err(cx.fail(format!("{} broke", self.salt)))
                    }
                    Behaviour::UntilAborted => {
                        let t = Instant::now();
                        while !cx.solver.aborted() && t.elapsed() < Duration::from_secs(10) {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(SolveError::Cancelled)
                    }
                }
            }),
        }))
    }
}

/// A fake executor: remembers the specs it was given, writes `file` into the step's upper
/// directory, prints `output` and exits with `code`.
struct FakeExecutor {
    specs: Mutex<Vec<ExecSpec>>,
    code: i32,
    output: &'static str,
}

impl StepExecutor for FakeExecutor {
    fn run(
        &self,
        spec: &ExecSpec,
        output: &mut dyn FnMut(Stream, &[u8]),
        _cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<ExitStatus, ExecutorError> {
        {
            let (Rootfs::Overlay { upper, .. } | Rootfs::Dir(upper)) = &spec.rootfs;
            std::fs::write(upper.join("made-by-step"), b"x").unwrap();
        }
        output(Stream::Stdout, self.output.as_bytes());
        self.specs.lock().unwrap().push(spec.clone());
        Ok(ExitStatus {
            code: Some(self.code),
            signal: None,
            oom_killed: false,
        })
    }
    fn needs_materialized_root(&self) -> bool {
        false
    }
}

#[derive(Default)]
struct Events(Mutex<Vec<Event>>);
impl Progress for Events {
    fn event(&self, e: Event) {
        self.0.lock().unwrap().push(e);
    }
}
impl Events {
    fn cancelled(&self) -> Vec<usize> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::Cancelled { vertex } => Some(*vertex),
                _ => None,
            })
            .collect()
    }
}

fn solver(root: &std::path::Path, executor: Box<dyn StepExecutor>) -> Arc<Solver> {
    Solver::new(SolverConfig {
        store: rbuild_cache::Store::open(root).unwrap(),
        executor,
        registry: rbuild_oci::RegistryClient::new(Default::default()).unwrap(),
        locals: BTreeMap::new(),
        max_parallelism: 4,
        pull: false,
        source_date_epoch: Some(0),
        hostname: "buildkitsandbox".into(),
        secrets: BTreeMap::new(),
        ssh: BTreeMap::new(),
        entitlements: Default::default(),
        cache: Default::default(),
        resources: Default::default(),
        cache_imports: Vec::new(),
    })
}

fn no_executor() -> Box<dyn StepExecutor> {
    Box::new(FakeExecutor {
        specs: Mutex::new(Vec::new()),
        code: 0,
        output: "",
    })
}

/// A graph of placeholder nodes named `n<i>` with the given inputs; the op kinds come from
/// the fakes, by name.
fn graph(inputs: &[&[usize]]) -> Definition {
    let mut def = Definition::new();
    for (i, ins) in inputs.iter().enumerate() {
        def.push(Node {
            op: Op::Merge,
            inputs: ins.iter().map(|&n| NodeId(n)).collect(),
            meta: Meta {
                description: format!("n{i}"),
                ..Meta::default()
            },
        })
        .unwrap();
    }
    def
}

fn by_name<'k>(fakes: &'k [FakeOp]) -> impl Fn(&Node) -> &'k (dyn OpKind + 'k) + Sync {
    move |n: &Node| {
        let i: usize = n.meta.description[1..].parse().unwrap();
        &fakes[i] as &dyn OpKind
    }
}

#[test]
fn a_second_solve_hits_every_keyed_step_and_runs_nothing() {
    let d = tempfile::tempdir().unwrap();
    // A diamond: n0 → n1, n2 → n3.
    let def = graph(&[&[], &[0], &[0], &[1, 2]]);
    let fakes: Vec<FakeOp> = (0..4)
        .map(|i| FakeOp::new(&format!("s{i}"), Behaviour::Succeed))
        .collect();
    let kinds = by_name(&fakes);
    let s = solver(d.path(), no_executor());
    let out = s
        .solve_with(&def, NodeId(3), &Events::default(), "", &kinds)
        .unwrap();
    assert_eq!((out.executed, out.cached), (4, 0));
    assert!(fakes.iter().all(|f| f.runs() == 1));
    // Another solver on the same store: every key is in the index.
    let s2 = solver(d.path(), no_executor());
    let out2 = s2
        .solve_with(&def, NodeId(3), &Events::default(), "", &kinds)
        .unwrap();
    assert_eq!((out2.executed, out2.cached), (0, 4));
    assert_eq!(out2.key, out.key);
    assert!(fakes.iter().all(|f| f.runs() == 1), "nothing ran again");
}

#[test]
fn an_input_change_reruns_its_dependents_only() {
    let d = tempfile::tempdir().unwrap();
    let def = graph(&[&[], &[], &[0], &[1], &[2, 3]]);
    let fakes: Vec<FakeOp> = (0..5)
        .map(|i| FakeOp::new(&format!("s{i}"), Behaviour::Succeed))
        .collect();
    solver(d.path(), no_executor())
        .solve_with(&def, NodeId(4), &Events::default(), "", &by_name(&fakes))
        .unwrap();
    let mut changed: Vec<FakeOp> = (0..5)
        .map(|i| FakeOp::new(&format!("s{i}"), Behaviour::Succeed))
        .collect();
    changed[0] = FakeOp::new("s0-edited", Behaviour::Succeed);
    let out = solver(d.path(), no_executor())
        .solve_with(&def, NodeId(4), &Events::default(), "", &by_name(&changed))
        .unwrap();
    let runs: Vec<usize> = changed.iter().map(FakeOp::runs).collect();
    assert_eq!(runs, [1, 0, 1, 0, 1]);
    assert_eq!((out.executed, out.cached), (3, 2));
}

#[test]
fn a_miss_whose_result_nothing_needs_never_runs() {
    let d = tempfile::tempdir().unwrap();
    // n0 → n1 → n2: n1's key does not depend on n0's.
    let def = graph(&[&[], &[0], &[1]]);
    let first = vec![
        FakeOp::new("base", Behaviour::Succeed),
        FakeOp::new("link", Behaviour::Succeed).own_key(),
        FakeOp::new("root", Behaviour::Succeed),
    ];
    solver(d.path(), no_executor())
        .solve_with(&def, NodeId(2), &Events::default(), "", &by_name(&first))
        .unwrap();
    // The base changes: its step misses, but n1 and n2 hit, so nothing reads it.
    let second = vec![
        FakeOp::new("base-edited", Behaviour::Succeed),
        FakeOp::new("link", Behaviour::Succeed).own_key(),
        FakeOp::new("root", Behaviour::Succeed),
    ];
    let events = Events::default();
    let out = solver(d.path(), no_executor())
        .solve_with(&def, NodeId(2), &events, "", &by_name(&second))
        .unwrap();
    let runs: Vec<usize> = second.iter().map(FakeOp::runs).collect();
    assert_eq!(runs, [0, 0, 0]);
    assert_eq!(out.executed, 0);
    let started = events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::Started { .. }))
        .count();
    assert_eq!(started, 0, "no step was announced");
}

#[test]
fn the_first_failure_is_the_error_and_cancels_running_steps() {
    let d = tempfile::tempdir().unwrap();
    let def = graph(&[&[], &[], &[0, 1]]);
    let fakes = vec![
        FakeOp::new("fails", Behaviour::Fail(Duration::from_millis(100))),
        FakeOp::new("long", Behaviour::UntilAborted),
        FakeOp::new("root", Behaviour::Succeed),
    ];
    let events = Events::default();
    let s = solver(d.path(), no_executor());
    let t = Instant::now();
    let err = s
        .solve_with(&def, NodeId(2), &events, "", &by_name(&fakes))
        .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the long step was stopped"
    );
    assert!(err.to_string().contains("fails broke"), "{err}");
    assert_eq!(events.cancelled(), [1]);
    assert_eq!(fakes[2].runs(), 0, "nothing depending on a failure runs");
    // Nothing was recorded for the failed or the cancelled step: both run again.
    let again = vec![
        FakeOp::new("fails", Behaviour::Succeed),
        FakeOp::new("long", Behaviour::Succeed),
        FakeOp::new("root", Behaviour::Succeed),
    ];
    let out = solver(d.path(), no_executor())
        .solve_with(&def, NodeId(2), &Events::default(), "", &by_name(&again))
        .unwrap();
    assert_eq!(out.executed, 3);
}

#[test]
fn two_steps_with_one_key_are_built_once() {
    let d = tempfile::tempdir().unwrap();
    // n1 and n2 have the same key (same salt, same input) and run in parallel.
    let def = graph(&[&[], &[0], &[0], &[1, 2]]);
    let fakes = vec![
        FakeOp::new("base", Behaviour::Succeed),
        FakeOp::new("same", Behaviour::Slow(Duration::from_millis(300))),
        FakeOp::new("same", Behaviour::Slow(Duration::from_millis(300))),
        FakeOp::new("root", Behaviour::Succeed),
    ];
    let out = solver(d.path(), no_executor())
        .solve_with(&def, NodeId(3), &Events::default(), "", &by_name(&fakes))
        .unwrap();
    assert_eq!(
        fakes[1].runs() + fakes[2].runs(),
        1,
        "the key lock deduplicates"
    );
    assert_eq!((out.executed, out.cached), (3, 1));
}

#[test]
fn a_cancelled_build_starts_nothing() {
    let d = tempfile::tempdir().unwrap();
    let def = graph(&[&[], &[0]]);
    let fakes = vec![
        FakeOp::new("a", Behaviour::Succeed),
        FakeOp::new("b", Behaviour::Succeed),
    ];
    let s = solver(d.path(), no_executor());
    s.cfg.cache.cancel.store(true, Ordering::SeqCst);
    let err = s
        .solve_with(&def, NodeId(1), &Events::default(), "", &by_name(&fakes))
        .unwrap_err();
    assert!(matches!(err, SolveError::Cancelled), "{err}");
    assert_eq!(fakes[0].runs() + fakes[1].runs(), 0);
}

fn exec_graph(cmd: &str) -> Definition {
    let mut def = Definition::new();
    let scratch = def
        .push(Node {
            op: Op::Source(SourceOp::Scratch),
            inputs: vec![],
            meta: Meta::default(),
        })
        .unwrap();
    def.push(Node {
        op: Op::Exec(ExecOp {
            args: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: String::new(),
            network: NetworkMode::None,
            security: SecurityMode::Sandbox,
            mounts: vec![Mount {
                target: "/".into(),
                input: Some(0),
                kind: MountKind::Bind {
                    source: "/".into(),
                    readonly: false,
                },
            }],
            proxy_env: vec!["HTTP_PROXY=http://proxy:3128".into()],
            run_options: Default::default(),
            platform: None,
            hostname: String::new(),
        }),
        inputs: vec![scratch],
        meta: Meta {
            description: "[2/2] RUN step".into(),
            lines: Some((2, 2)),
            ..Meta::default()
        },
    })
    .unwrap();
    def
}

#[test]
fn the_exec_op_runs_through_the_executor_seam() {
    if !rustix::process::geteuid().is_root() {
        // The overlay probe of the snapshotter choice needs root; CI runs as root.
        assert!(std::env::var("CI").is_err(), "needs root under CI");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let def = exec_graph("make");
    let fake = Arc::new(FakeExecutor {
        specs: Mutex::new(Vec::new()),
        code: 0,
        output: "built\n",
    });
    struct Shared(Arc<FakeExecutor>);
    impl StepExecutor for Shared {
        fn run(
            &self,
            spec: &ExecSpec,
            output: &mut dyn FnMut(Stream, &[u8]),
            cancelled: &(dyn Fn() -> bool + Sync),
        ) -> Result<ExitStatus, ExecutorError> {
            self.0.run(spec, output, cancelled)
        }
        fn needs_materialized_root(&self) -> bool {
            false
        }
    }
    let s = solver(d.path(), Box::new(Shared(fake.clone())));
    let events = Events::default();
    let out = s.solve(&def, NodeId(1), &events).unwrap();
    let specs = fake.specs.lock().unwrap();
    assert_eq!(specs.len(), 1);
    let spec = &specs[0];
    assert_eq!(spec.args, ["/bin/sh", "-c", "make"]);
    // The proxy variable reaches the process (but not the key); the hostname is the build's.
    assert!(spec.env.iter().any(|e| e == "HTTP_PROXY=http://proxy:3128"));
    assert_eq!(spec.hostname, "buildkitsandbox");
    // The step's layer is what the process wrote into the upper directory.
    assert_eq!(out.chain.len(), 1);
    let fs = s.store().snapshot_fs(&out.chain[0].snapshot).unwrap();
    assert!(fs.join("made-by-step").exists());
    let logs: Vec<u8> = events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Log { data, .. } => Some(data.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(logs, b"built\n");
}

#[test]
fn a_failing_process_is_an_exec_error_with_its_output_and_leaves_no_layer() {
    if !rustix::process::geteuid().is_root() {
        assert!(std::env::var("CI").is_err(), "needs root under CI");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let def = exec_graph("exit 3");
    let s = solver(
        d.path(),
        Box::new(FakeExecutor {
            specs: Mutex::new(Vec::new()),
            code: 3,
            output: "first\nlast words\n",
        }),
    );
    let err = s.solve(&def, NodeId(1), &Events::default()).unwrap_err();
    match err {
        SolveError::ExecFailed {
            code, tail, lines, ..
        } => {
            assert_eq!(code, 3);
            assert_eq!(tail, ["first", "last words"]);
            assert_eq!(lines, Some((2, 2)));
        }
        other => panic!("unexpected {other}"),
    }
    let snapshots = std::fs::read_dir(d.path().join("snapshots-v1"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(snapshots, 0, "the failed step's snapshot was removed");
}
