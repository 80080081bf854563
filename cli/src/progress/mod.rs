//! Progress display: turns the solver's [`Event`]s (and the CLI's own steps, such as loading
//! the Dockerfile or naming the image) into one of four displays, chosen with
//! `--progress=auto|tty|plain|rawjson|quiet` or `RBUILD_PROGRESS`:
//!
//! - [`plain`]: BuildKit's plain log (`#N [stage i/n] INSTRUCTION`, `#N 0.123 output`,
//!   `#N CACHED`, `#N DONE 1.2s`, `#N ERROR: …`) for CI logs; output is never clipped;
//! - [`tty`]: a live view redrawn with ANSI escapes (one line per step with a timer, the last
//!   lines of a running step's output, `CACHED` marks, a summary);
//! - [`rawjson`]: BuildKit's SolveStatus JSON, one object per line (docs/progress.md);
//! - quiet: nothing.
//!
//! `auto` is tty when stderr is a terminal (and `TERM` is not `dumb`), else plain.
//! `BUILDKIT_PROGRESS` is honoured when neither the flag nor `RBUILD_PROGRESS` is set.
//!
//! The [`Tracker`] numbers steps in the order they first appear, splits output into lines per
//! stream and keeps what the live view needs; each display is a [`Render`] fed with
//! [`Change`]s.

pub mod plain;
pub mod rawjson;
pub mod tty;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Result};
use rbuild_solver::{Event, Progress};

/// The progress display to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Tty,
    Plain,
    RawJson,
    Quiet,
}

/// Resolve a `--progress` value; `auto` picks tty when stderr is a terminal. When neither the
/// flag nor `RBUILD_PROGRESS` chose a mode, buildx's `BUILDKIT_PROGRESS` is honoured.
pub fn resolve_mode(value: &str, stderr_is_tty: bool) -> Result<Mode> {
    let fallback;
    let value = if value == "auto" && std::env::var_os("RBUILD_PROGRESS").is_none() {
        fallback = std::env::var("BUILDKIT_PROGRESS").unwrap_or_else(|_| "auto".into());
        fallback.as_str()
    } else {
        value
    };
    Ok(match value {
        "auto" | "" => {
            let dumb = std::env::var("TERM").map(|t| t == "dumb").unwrap_or(false);
            if stderr_is_tty && !dumb {
                Mode::Tty
            } else {
                Mode::Plain
            }
        }
        "tty" => Mode::Tty,
        "plain" => Mode::Plain,
        "rawjson" => Mode::RawJson,
        "quiet" | "none" => Mode::Quiet,
        other => bail!("--progress {other:?}: expected auto, tty, plain, rawjson or quiet"),
    })
}

/// Where a step comes from: a node of the build graph, or a step of the CLI itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Graph(usize),
    Cli(usize),
}

/// The state of one step.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Running,
    Cached,
    Done(f64),
    Error(String),
    /// Stopped because another step failed.
    Cancelled,
}

/// Output lines kept per step for the live view and for error reports (the plain and rawjson
/// displays stream everything and keep nothing).
pub const KEEP_LINES: usize = 2000;

/// One step as displays see it.
#[derive(Debug)]
pub struct Vertex {
    /// The `#N` number.
    pub n: usize,
    pub name: String,
    pub status: Status,
    /// When the step started (or was found cached).
    pub started: Instant,
    /// The same moment on the wall clock (rawjson's `started`).
    pub started_at: SystemTime,
    /// When the step finished, failed, was cancelled or found cached (rawjson's `completed`).
    pub completed_at: Option<SystemTime>,
    /// BuildKit's vertex digest: the graph node's definition digest, or for a step of the
    /// CLI one derived from its number and name.
    pub digest: String,
    /// Digests of the graph nodes this step's node takes as inputs.
    pub inputs: Vec<String>,
    /// Blob transfers (pulled layers, pushed blobs) in the order they started.
    pub transfers: Vec<Transfer>,
    /// The last [`KEEP_LINES`] complete output lines.
    pub lines: std::collections::VecDeque<String>,
    /// How many earlier lines were dropped from `lines`.
    pub dropped: usize,
    partial: [Vec<u8>; 2],
}

impl Vertex {
    pub fn elapsed(&self) -> f64 {
        match &self.status {
            Status::Done(s) => *s,
            Status::Cached => 0.0,
            _ => self.started.elapsed().as_secs_f64(),
        }
    }
}

/// Byte progress of one blob moved by a step.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// The blob digest.
    pub id: String,
    /// `downloading` or `uploading`.
    pub action: &'static str,
    pub current: u64,
    pub total: u64,
    pub done: bool,
    pub started: Instant,
    pub started_at: SystemTime,
    pub completed_at: Option<SystemTime>,
}

impl Transfer {
    /// Bytes per second since the transfer started.
    pub fn rate(&self) -> f64 {
        let s = self.started.elapsed().as_secs_f64();
        if s > 0.0 {
            self.current as f64 / s
        } else {
            0.0
        }
    }

    /// `sha256:0123456789ab 12.6MB / 95MB` (the digest shortened as BuildKit's view does).
    pub fn text(&self) -> String {
        let short: String = self.id.chars().take(19).collect();
        format!(
            "{short} {} / {}",
            crate::images::human_size(self.current),
            crate::images::human_size(self.total)
        )
    }
}

/// What just happened, for a display.
#[derive(Debug)]
pub enum Change<'a> {
    Started(usize),
    Cached(usize),
    /// A chunk of raw output (rawjson shows chunks as they came).
    Chunk {
        v: usize,
        stderr: bool,
        data: &'a [u8],
    },
    /// A complete output line (without its newline) and the seconds since the step started.
    Line {
        v: usize,
        text: &'a str,
        t: f64,
    },
    Done(usize),
    Error {
        v: usize,
        message: &'a str,
    },
    /// Stopped because another step failed (BuildKit's `CANCELED`).
    Cancelled(usize),
    /// Bytes moved for `vertices[v].transfers[i]`.
    Transfer {
        v: usize,
        i: usize,
    },
    Warning(&'a Warning<'a>),
    /// Why a step ran, or which earlier build its cached result came from (`--explain`).
    Explain {
        v: usize,
        reason: &'a str,
    },
    /// A solver event this version does not know, in Rust debug notation.
    Other(&'a str),
}

/// A Dockerfile warning: its text as the human displays show it (`Dockerfile:3: …`) and,
/// when known, where it points (rawjson's `sourceInfo` and `range`).
#[derive(Debug)]
pub struct Warning<'a> {
    pub text: &'a str,
    pub message: &'a str,
    pub file: Option<&'a str>,
    /// First and last 1-based line.
    pub lines: Option<(u32, u32)>,
}

/// How the build ended, for the closing summary.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub ok: bool,
    /// Stopped by Ctrl-C or SIGTERM.
    pub cancelled: bool,
    pub image_id: Option<String>,
    pub error: Option<String>,
}

/// The step list shared by all displays.
#[derive(Debug)]
pub struct Tracker {
    pub vertices: Vec<Vertex>,
    index: HashMap<Key, usize>,
    /// Graph node ids (as the solver numbers them, offsets included) → digest and inputs.
    graph: HashMap<usize, (String, Vec<usize>)>,
    next_cli: usize,
    pub build_start: Instant,
}

impl Tracker {
    /// Record a byte-progress update of vertex `v`'s transfer `id`; returns its index.
    fn transfer(
        &mut self,
        v: usize,
        id: String,
        action: &'static str,
        current: u64,
        total: u64,
        done: bool,
    ) -> usize {
        let list = &mut self.vertices[v].transfers;
        let i = match list.iter().position(|x| x.id == id && x.action == action) {
            Some(i) => i,
            None => {
                list.push(Transfer {
                    id,
                    action,
                    current: 0,
                    total,
                    done: false,
                    started: Instant::now(),
                    started_at: SystemTime::now(),
                    completed_at: None,
                });
                list.len() - 1
            }
        };
        let x = &mut list[i];
        x.current = current;
        x.total = total;
        if done && !x.done {
            x.completed_at = Some(SystemTime::now());
        }
        x.done = done;
        i
    }

    fn new() -> Self {
        Tracker {
            vertices: Vec::new(),
            index: HashMap::new(),
            graph: HashMap::new(),
            next_cli: 0,
            build_start: Instant::now(),
        }
    }

    fn vertex(&mut self, key: Key, name: Option<&str>) -> usize {
        if let Some(&i) = self.index.get(&key) {
            if let Some(name) = name {
                self.vertices[i].name = name.to_string();
            }
            return i;
        }
        let i = self.vertices.len();
        let (digest, inputs) = match key {
            Key::Graph(id) => match self.graph.get(&id) {
                Some((d, ins)) => (
                    d.clone(),
                    ins.iter()
                        .filter_map(|i| self.graph.get(i).map(|(d, _)| d.clone()))
                        .collect(),
                ),
                None => (synthetic_digest("graph", id, ""), Vec::new()),
            },
            Key::Cli(id) => (synthetic_digest("cli", id, name.unwrap_or("")), Vec::new()),
        };
        self.vertices.push(Vertex {
            n: i + 1,
            name: name.unwrap_or("").to_string(),
            status: Status::Running,
            started: Instant::now(),
            started_at: SystemTime::now(),
            completed_at: None,
            digest,
            inputs,
            transfers: Vec::new(),
            lines: Default::default(),
            dropped: 0,
            partial: [Vec::new(), Vec::new()],
        });
        self.index.insert(key, i);
        i
    }

    /// Set a step's state; a final state records when it completed.
    fn set_status(&mut self, v: usize, status: Status) {
        let vx = &mut self.vertices[v];
        if status == Status::Running {
            vx.started = Instant::now();
            vx.started_at = SystemTime::now();
            vx.completed_at = None;
        } else {
            vx.completed_at = Some(SystemTime::now());
        }
        vx.status = status;
    }

    /// Split output into lines; returns the complete lines.
    fn push_output(&mut self, v: usize, stderr: bool, data: &[u8]) -> Vec<String> {
        let vx = &mut self.vertices[v];
        let buf = &mut vx.partial[usize::from(stderr)];
        buf.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1])
                .trim_end_matches('\r')
                .to_string();
            out.push(text);
        }
        for l in &out {
            vx.lines.push_back(l.clone());
            if vx.lines.len() > KEEP_LINES {
                vx.lines.pop_front();
                vx.dropped += 1;
            }
        }
        out
    }

    /// The unterminated rest of a step's output, as lines.
    fn flush_output(&mut self, v: usize) -> Vec<String> {
        let mut out = Vec::new();
        for stderr in [false, true] {
            let buf = std::mem::take(&mut self.vertices[v].partial[usize::from(stderr)]);
            if !buf.is_empty() {
                let text = String::from_utf8_lossy(&buf).to_string();
                self.vertices[v].lines.push_back(text.clone());
                out.push(text);
            }
        }
        out
    }
}

/// A display.
pub trait Render: Send {
    fn change(&mut self, t: &Tracker, c: &Change<'_>, out: &mut dyn Write);
    /// Called periodically by the ticker (only the live view uses it).
    fn tick(&mut self, _t: &Tracker, _out: &mut dyn Write) {}
    /// The build is over: draw the last frame or the summary.
    fn finish(&mut self, t: &Tracker, outcome: &Outcome, out: &mut dyn Write);
}

struct Inner {
    tracker: Tracker,
    render: Box<dyn Render>,
    out: Box<dyn Write + Send>,
    finished: bool,
}

struct Shared {
    inner: Mutex<Inner>,
    stop: Mutex<bool>,
    cv: Condvar,
}

/// The progress sink handed to the solver; also records the CLI's own steps.
pub struct Reporter {
    shared: Arc<Shared>,
    mode: Mode,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

/// A vertex digest for a step that is not a graph node (BuildKit gives such vertexes random
/// digests; these are stable within a build).
fn synthetic_digest(kind: &str, id: usize, name: &str) -> String {
    rbuild_graph::sha256_digest(format!("rbuild-progress/{kind}/{id}/{name}").as_bytes())
}

impl Reporter {
    /// A reporter writing to stderr (the live view follows the terminal's size as it changes).
    pub fn new(mode: Mode) -> Self {
        Self::with_writer(mode, Box::new(std::io::stderr()), None)
    }

    /// A reporter writing to `out` (tests use a buffer); `width` fixes the live view's width.
    pub fn with_writer(mode: Mode, out: Box<dyn Write + Send>, width: Option<usize>) -> Self {
        Self::with_screen(mode, out, width.map(|w| (w, 0)))
    }

    /// A reporter writing to `out`; `screen` fixes the live view's (columns, rows), rows 0
    /// meaning no height limit.
    pub fn with_screen(
        mode: Mode,
        out: Box<dyn Write + Send>,
        screen: Option<(usize, usize)>,
    ) -> Self {
        let render: Box<dyn Render> = match mode {
            Mode::Plain => Box::new(plain::Plain::default()),
            Mode::RawJson => Box::new(rawjson::RawJson),
            Mode::Tty => Box::new(tty::Tty::new(screen)),
            Mode::Quiet => Box::new(Silent),
        };
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                tracker: Tracker::new(),
                render,
                out,
                finished: false,
            }),
            stop: Mutex::new(false),
            cv: Condvar::new(),
        });
        let ticker = if mode == Mode::Tty {
            let s = Arc::clone(&shared);
            Some(std::thread::spawn(move || ticker_loop(&s)))
        } else {
            None
        };
        Reporter {
            shared,
            mode,
            ticker: Mutex::new(ticker),
        }
    }

    fn with<F: FnOnce(&mut Inner)>(&self, f: F) {
        if let Ok(mut g) = self.shared.inner.lock() {
            if !g.finished {
                f(&mut g);
            }
        }
    }

    /// Start a CLI step (not a graph node); returns its handle for [`Reporter::step_done`].
    pub fn step(&self, name: &str) -> usize {
        let mut id = 0;
        self.with(|g| {
            id = g.tracker.next_cli;
            g.tracker.next_cli += 1;
            let v = g.tracker.vertex(Key::Cli(id), Some(name));
            let Inner {
                tracker,
                render,
                out,
                ..
            } = g;
            render.change(tracker, &Change::Started(v), out.as_mut());
        });
        id
    }

    pub fn step_done(&self, id: usize) {
        self.with(|g| {
            let v = g.tracker.vertex(Key::Cli(id), None);
            let secs = g.tracker.vertices[v].started.elapsed().as_secs_f64();
            g.tracker.set_status(v, Status::Done(secs));
            let Inner {
                tracker,
                render,
                out,
                ..
            } = g;
            render.change(tracker, &Change::Done(v), out.as_mut());
        });
    }

    /// Byte progress of the CLI step `id` (a push after the build).
    pub fn step_transfer(&self, id: usize, t: &rbuild_oci::progress::Transfer) {
        self.with(|g| {
            let Inner {
                tracker,
                render,
                out,
                ..
            } = g;
            let v = tracker.vertex(Key::Cli(id), None);
            let i = tracker.transfer(v, t.id.clone(), t.action.name(), t.current, t.total, t.done);
            render.change(tracker, &Change::Transfer { v, i }, out.as_mut());
        });
    }

    /// The graph about to be solved, its node ids offset by `base` (as the solver numbers them
    /// for several platforms): gives steps their definition digests and inputs (rawjson).
    pub fn set_graph(&self, base: usize, def: &rbuild_graph::Definition) {
        let Ok(digests) = def.digests() else {
            return;
        };
        if let Ok(mut g) = self.shared.inner.lock() {
            for (i, (node, digest)) in def.nodes.iter().zip(digests).enumerate() {
                let inputs = node.inputs.iter().map(|n| base + n.0).collect();
                g.tracker.graph.insert(base + i, (digest, inputs));
            }
        }
    }

    /// A CLI step that is over as soon as it is shown.
    pub fn note(&self, name: &str) {
        let id = self.step(name);
        self.step_done(id);
    }

    /// A warning that is about no Dockerfile line.
    pub fn warning(&self, text: &str) {
        self.emit_warning(&Warning {
            text,
            message: text,
            file: None,
            lines: None,
        });
    }

    /// A warning about lines `line..=end_line` of the Dockerfile `file`.
    pub fn warning_at(&self, file: &str, line: u32, end_line: u32, message: &str) {
        let text = format!("{file}:{line}: {message}");
        self.emit_warning(&Warning {
            text: &text,
            message,
            file: Some(file),
            lines: (line > 0).then_some((line, end_line.max(line))),
        });
    }

    fn emit_warning(&self, w: &Warning<'_>) {
        self.with(|g| {
            let Inner {
                tracker,
                render,
                out,
                ..
            } = g;
            render.change(tracker, &Change::Warning(w), out.as_mut());
        });
    }

    /// One tick of the live view's timer, now (tests drive frames with it).
    #[cfg(test)]
    pub fn tick_now(&self) {
        self.with(|g| {
            let Inner {
                tracker,
                render,
                out,
                ..
            } = g;
            render.tick(tracker, out.as_mut());
        });
    }

    /// Whether the display prints every output line (plain, rawjson), so an error report
    /// can refer to the log above.
    pub fn prints_all_output(&self) -> bool {
        matches!(self.mode, Mode::Plain | Mode::RawJson)
    }

    /// A function for the Ctrl-C handler: marks the running steps `CANCELED`, draws the last
    /// frame (or writes the last lines) and closes the display, so the terminal shows where
    /// the build stopped. Safe to call from another thread while events arrive.
    pub fn canceller(&self) -> impl Fn() + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || {
            if let Ok(mut s) = shared.stop.lock() {
                *s = true;
            }
            shared.cv.notify_all();
            let Ok(mut g) = shared.inner.lock() else {
                return;
            };
            if g.finished {
                return;
            }
            g.finished = true;
            let Inner {
                tracker,
                render,
                out,
                ..
            } = &mut *g;
            for v in 0..tracker.vertices.len() {
                if tracker.vertices[v].status == Status::Running {
                    emit_rest(tracker, render.as_mut(), v, out.as_mut());
                    tracker.set_status(v, Status::Cancelled);
                    render.change(tracker, &Change::Cancelled(v), out.as_mut());
                }
            }
            let outcome = Outcome {
                ok: false,
                cancelled: true,
                image_id: None,
                error: Some("build cancelled".into()),
            };
            render.finish(tracker, &outcome, out.as_mut());
            let _ = out.flush();
        }
    }

    /// How many output lines the step named `name` printed (for error reports).
    pub fn output_lines(&self, name: &str) -> Option<usize> {
        let g = self.shared.inner.lock().ok()?;
        g.tracker
            .vertices
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.lines.len() + v.dropped)
    }

    /// Close the display (last frame, summary). Later events are ignored.
    pub fn finish(&self, outcome: &Outcome) {
        if let Ok(mut s) = self.shared.stop.lock() {
            *s = true;
        }
        self.shared.cv.notify_all();
        if let Some(h) = self.ticker.lock().ok().and_then(|mut t| t.take()) {
            let _ = h.join();
        }
        self.with(|g| {
            g.finished = true;
            // Unterminated output of unfinished steps is shown, not lost.
            for v in 0..g.tracker.vertices.len() {
                for text in g.tracker.flush_output(v) {
                    let t = g.tracker.vertices[v].started.elapsed().as_secs_f64();
                    let Inner {
                        tracker,
                        render,
                        out,
                        ..
                    } = &mut *g;
                    let c = Change::Line { v, text: &text, t };
                    render.change(tracker, &c, out.as_mut());
                }
            }
            let Inner {
                tracker,
                render,
                out,
                ..
            } = g;
            render.finish(tracker, outcome, out.as_mut());
            let _ = out.flush();
        });
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Ok(mut s) = self.shared.stop.lock() {
            *s = true;
        }
        self.shared.cv.notify_all();
        if let Some(h) = self.ticker.lock().ok().and_then(|mut t| t.take()) {
            let _ = h.join();
        }
    }
}

fn ticker_loop(shared: &Shared) {
    let mut stop = match shared.stop.lock() {
        Ok(g) => g,
        Err(_) => return,
    };
    loop {
        if *stop {
            return;
        }
        stop = match shared.cv.wait_timeout(stop, Duration::from_millis(150)) {
            Ok((g, _)) => g,
            Err(_) => return,
        };
        if *stop {
            return;
        }
        drop(stop);
        if let Ok(mut g) = shared.inner.lock() {
            if !g.finished {
                let Inner {
                    tracker,
                    render,
                    out,
                    ..
                } = &mut *g;
                render.tick(tracker, out.as_mut());
            }
        }
        stop = match shared.stop.lock() {
            Ok(g) => g,
            Err(_) => return,
        };
    }
}

/// The step name at the start of a solver error (`[stage 2/3] COPY a /a: reason`).
fn name_from_message(message: &str) -> &str {
    if !message.starts_with('[') {
        return "";
    }
    let Some(close) = message.find("] ") else {
        return "";
    };
    match message[close..].find(": ") {
        Some(i) => &message[..close + i],
        None => "",
    }
}

/// Strip the `step name: ` prefix the solver puts in front of error messages.
fn short_message<'a>(name: &str, message: &'a str) -> &'a str {
    message
        .strip_prefix(name)
        .and_then(|m| m.strip_prefix(": "))
        .unwrap_or(message)
}

impl Progress for Reporter {
    fn event(&self, event: Event) {
        self.with(|g| {
            let Inner {
                tracker,
                render,
                out,
                ..
            } = g;
            let out = out.as_mut();
            match event {
                Event::Started { vertex, name } => {
                    let v = tracker.vertex(Key::Graph(vertex), Some(&name));
                    tracker.set_status(v, Status::Running);
                    render.change(tracker, &Change::Started(v), out);
                }
                Event::Cached { vertex, name } => {
                    let v = tracker.vertex(Key::Graph(vertex), Some(&name));
                    tracker.set_status(v, Status::Cached);
                    render.change(tracker, &Change::Cached(v), out);
                }
                Event::Log {
                    vertex,
                    stderr,
                    data,
                } => {
                    let v = tracker.vertex(Key::Graph(vertex), None);
                    render.change(
                        tracker,
                        &Change::Chunk {
                            v,
                            stderr,
                            data: &data,
                        },
                        out,
                    );
                    let t = tracker.vertices[v].started.elapsed().as_secs_f64();
                    for text in tracker.push_output(v, stderr, &data) {
                        let c = Change::Line { v, text: &text, t };
                        render.change(tracker, &c, out);
                    }
                }
                Event::Done { vertex, seconds } => {
                    let v = tracker.vertex(Key::Graph(vertex), None);
                    emit_rest(tracker, render.as_mut(), v, out);
                    tracker.set_status(v, Status::Done(seconds));
                    render.change(tracker, &Change::Done(v), out);
                }
                Event::Failed { vertex, message } => {
                    let v = tracker.vertex(Key::Graph(vertex), None);
                    if tracker.vertices[v].name.is_empty() {
                        // Failed before it started (e.g. computing its cache key).
                        tracker.vertices[v].name = name_from_message(&message).to_string();
                    }
                    emit_rest(tracker, render.as_mut(), v, out);
                    let m = short_message(&tracker.vertices[v].name, &message).to_string();
                    tracker.set_status(v, Status::Error(m.clone()));
                    render.change(tracker, &Change::Error { v, message: &m }, out);
                }
                Event::Cancelled { vertex } => {
                    let v = tracker.vertex(Key::Graph(vertex), None);
                    emit_rest(tracker, render.as_mut(), v, out);
                    tracker.set_status(v, Status::Cancelled);
                    render.change(tracker, &Change::Cancelled(v), out);
                }
                Event::Transfer {
                    vertex,
                    id,
                    action,
                    current,
                    total,
                    done,
                } => {
                    let v = tracker.vertex(Key::Graph(vertex), None);
                    let i = tracker.transfer(v, id, action, current, total, done);
                    render.change(tracker, &Change::Transfer { v, i }, out);
                }
                Event::Explain { vertex, reason } => {
                    let v = tracker.vertex(Key::Graph(vertex), None);
                    render.change(tracker, &Change::Explain { v, reason: &reason }, out);
                }
                Event::Warning { message, .. } => {
                    let w = Warning {
                        text: &message,
                        message: &message,
                        file: None,
                        lines: None,
                    };
                    render.change(tracker, &Change::Warning(&w), out);
                }
                // Variants added to the solver later (e.g. cache-miss explanations) are not
                // lost: rawjson passes them on as `other`; the human displays skip them.
                other => {
                    let text = format!("{other:?}");
                    render.change(tracker, &Change::Other(&text), out);
                }
            }
        });
    }
}

fn emit_rest(tracker: &mut Tracker, render: &mut dyn Render, v: usize, out: &mut dyn Write) {
    let t = tracker.vertices[v].started.elapsed().as_secs_f64();
    for text in tracker.flush_output(v) {
        let c = Change::Line { v, text: &text, t };
        render.change(tracker, &c, out);
    }
}

/// The quiet display.
struct Silent;

impl Render for Silent {
    fn change(&mut self, _t: &Tracker, _c: &Change<'_>, _out: &mut dyn Write) {}
    fn finish(&mut self, _t: &Tracker, _o: &Outcome, _out: &mut dyn Write) {}
}

#[cfg(test)]
pub(crate) mod testing {
    //! A shared in-memory writer for display tests.
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    pub struct Buf(pub Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_resolve() {
        assert_eq!(resolve_mode("plain", true).unwrap(), Mode::Plain);
        assert_eq!(resolve_mode("tty", false).unwrap(), Mode::Tty);
        assert_eq!(resolve_mode("rawjson", true).unwrap(), Mode::RawJson);
        assert_eq!(resolve_mode("none", true).unwrap(), Mode::Quiet);
        assert_eq!(resolve_mode("auto", false).unwrap(), Mode::Plain);
        let e = resolve_mode("fancy", true).unwrap_err().to_string();
        assert!(e.contains("--progress") && e.contains("rawjson"), "{e}");
    }

    #[test]
    fn output_is_split_into_lines_per_stream() {
        let mut t = Tracker::new();
        let v = t.vertex(Key::Graph(0), Some("x"));
        assert!(t.push_output(v, false, b"ab").is_empty());
        assert!(t.push_output(v, true, b"err\npart").len() == 1);
        assert_eq!(t.push_output(v, false, b"c\r\nd\n"), ["abc", "d"]);
        assert_eq!(t.flush_output(v), ["part"]);
    }

    #[test]
    fn the_step_name_prefix_is_stripped_from_errors() {
        assert_eq!(
            short_message("[a 1/2] RUN x", "[a 1/2] RUN x: boom"),
            "boom"
        );
        assert_eq!(short_message("other", "[a] x: boom"), "[a] x: boom");
        let m = "[s 2/2] COPY a /x: failed to compute cache key: \"/a\" not found";
        assert_eq!(name_from_message(m), "[s 2/2] COPY a /x");
        assert_eq!(name_from_message("pulling x: y"), "");
    }
}

/// Byte progress of one CLI step, for the registry client's uploads and downloads.
pub struct StepTransfers {
    pub step: usize,
    pub reporter: std::sync::Arc<Reporter>,
}

impl rbuild_oci::progress::TransferProgress for StepTransfers {
    fn transfer(&self, t: &rbuild_oci::progress::Transfer) {
        self.reporter.step_transfer(self.step, t);
    }
}

/// The byte-progress receiver of the CLI step `step` (pushes after a build).
pub fn step_transfers(
    reporter: &std::sync::Arc<Reporter>,
    step: usize,
) -> Option<std::sync::Arc<dyn rbuild_oci::progress::TransferProgress>> {
    Some(std::sync::Arc::new(StepTransfers {
        step,
        reporter: std::sync::Arc::clone(reporter),
    }))
}
