//! Progress rendering. `plain` mode prints BuildKit-style lines to stderr:
//! `#N [stage i/n] INSTRUCTION`, `#N 0.123 output`, `#N CACHED`, `#N DONE 0.2s`, `#N ERROR: …`.
//! `quiet` prints nothing. (`auto` is plain for now; a live tty view comes later.)

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use rbuild_solver::{Event, Progress};

pub struct Plain {
    inner: Mutex<Inner>,
    quiet: bool,
}

struct Inner {
    numbers: HashMap<usize, usize>,
    started: HashMap<usize, Instant>,
    partial: HashMap<usize, Vec<u8>>,
    next: usize,
}

impl Plain {
    pub fn new(quiet: bool) -> Self {
        Plain {
            inner: Mutex::new(Inner {
                numbers: HashMap::new(),
                started: HashMap::new(),
                partial: HashMap::new(),
                next: 1,
            }),
            quiet,
        }
    }

    /// Print a line for a step that is not a graph vertex (e.g. loading the Dockerfile).
    pub fn note(&self, text: &str) {
        if self.quiet {
            return;
        }
        if let Ok(mut g) = self.inner.lock() {
            let n = g.next;
            g.next += 1;
            let _ = writeln!(std::io::stderr(), "#{n} {text}\n#{n} DONE 0.0s");
        }
    }
}

impl Inner {
    fn number(&mut self, vertex: usize) -> (usize, bool) {
        if let Some(n) = self.numbers.get(&vertex) {
            return (*n, false);
        }
        let n = self.next;
        self.next += 1;
        self.numbers.insert(vertex, n);
        (n, true)
    }
}

impl Progress for Plain {
    fn event(&self, event: Event) {
        if self.quiet {
            return;
        }
        let Ok(mut g) = self.inner.lock() else { return };
        let mut err = std::io::stderr().lock();
        match event {
            Event::Started { vertex, name } => {
                let (n, _) = g.number(vertex);
                g.started.insert(vertex, Instant::now());
                let _ = writeln!(err, "#{n} {name}");
            }
            Event::Cached { vertex, name } => {
                let (n, _) = g.number(vertex);
                let _ = writeln!(err, "#{n} {name}\n#{n} CACHED");
            }
            Event::Log { vertex, data, .. } => {
                let (n, _) = g.number(vertex);
                let t = g
                    .started
                    .get(&vertex)
                    .map(|s| s.elapsed().as_secs_f64())
                    .unwrap_or(0.0);
                let buf = g.partial.entry(vertex).or_default();
                buf.extend_from_slice(&data);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    let _ = writeln!(err, "#{n} {t:.3} {text}");
                }
            }
            Event::Done { vertex, seconds } => {
                let (n, _) = g.number(vertex);
                if let Some(rest) = g.partial.remove(&vertex).filter(|b| !b.is_empty()) {
                    let _ = writeln!(err, "#{n} {}", String::from_utf8_lossy(&rest));
                }
                let _ = writeln!(err, "#{n} DONE {seconds:.1}s");
            }
            Event::Explain { vertex, reason } => {
                let (n, _) = g.number(vertex);
                let _ = writeln!(err, "#{n} EXPLAIN: {reason}");
            }
            Event::Failed { vertex, message } => {
                let (n, _) = g.number(vertex);
                if let Some(rest) = g.partial.remove(&vertex).filter(|b| !b.is_empty()) {
                    let _ = writeln!(err, "#{n} {}", String::from_utf8_lossy(&rest));
                }
                let _ = writeln!(err, "#{n} ERROR: {message}");
            }
        }
    }
}
