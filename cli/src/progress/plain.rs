//! The plain display (CI logs), in BuildKit's format:
//!
//! ```text
//!
//! #3 [base 2/3] RUN make
//! #3 0.412 compiling…
//! #3 DONE 1.2s
//!
//! #4 [base 3/3] COPY a /a
//! #4 CACHED
//!
//! #5 [stage-1 2/2] RUN ./test
//! #5 ERROR: process "/bin/sh -c exit 3" did not complete successfully: exit code 3
//! ```
//!
//! Steps are separated by a blank line, as in BuildKit. Every output line is printed as it arrives, with the seconds since its step started; nothing
//! is clipped. A step's name is repeated (`#N NAME`) when its output resumes after another
//! step's lines, so interleaved parallel steps stay readable.

use std::io::Write;

use super::{Change, Outcome, Render, Tracker};

/// How often a running transfer's bytes are printed (its end always is).
const TRANSFER_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The plain display; remembers which step printed last, to repeat the step's name when
/// output interleaves.
#[derive(Default)]
pub struct Plain {
    last: Option<usize>,
    /// When each running transfer (vertex, index) was last printed.
    transfer_printed: std::collections::HashMap<(usize, usize), std::time::Instant>,
    /// Whether anything was printed yet (steps are separated by a blank line, like BuildKit).
    started: bool,
}

impl Plain {
    fn separate(&mut self, out: &mut dyn Write) {
        if self.started {
            let _ = writeln!(out);
        }
        self.started = true;
    }

    fn header(&mut self, t: &Tracker, v: usize, out: &mut dyn Write) {
        if self.last != Some(v) {
            let vx = &t.vertices[v];
            let _ = writeln!(out, "\n#{} {}", vx.n, vx.name);
        }
        self.started = true;
        self.last = Some(v);
    }
}

impl Render for Plain {
    fn change(&mut self, t: &Tracker, c: &Change<'_>, out: &mut dyn Write) {
        match c {
            Change::Started(v) => {
                let vx = &t.vertices[*v];
                self.separate(out);
                let _ = writeln!(out, "#{} {}", vx.n, vx.name);
                self.last = Some(*v);
            }
            Change::Cached(v) => {
                let vx = &t.vertices[*v];
                self.separate(out);
                let _ = writeln!(out, "#{} {}\n#{} CACHED", vx.n, vx.name, vx.n);
                self.last = None;
            }
            Change::Chunk { .. } => {}
            Change::Line {
                v, text, t: secs, ..
            } => {
                self.header(t, *v, out);
                let _ = writeln!(out, "#{} {secs:.3} {text}", t.vertices[*v].n);
            }
            Change::Done(v) => {
                self.header(t, *v, out);
                let vx = &t.vertices[*v];
                let _ = writeln!(out, "#{} DONE {:.1}s", vx.n, vx.elapsed());
                self.last = None;
            }
            Change::Error { v, message } => {
                let vx = &t.vertices[*v];
                if self.last != Some(*v) {
                    // The step may have failed before it started (e.g. a missing file).
                    self.separate(out);
                    let _ = writeln!(out, "#{} {}", vx.n, vx.name);
                }
                let _ = writeln!(out, "#{} ERROR: {message}", vx.n);
                self.last = None;
            }
            Change::Cancelled(v) => {
                self.header(t, *v, out);
                let _ = writeln!(out, "#{} CANCELED", t.vertices[*v].n);
                self.last = None;
            }
            Change::Transfer { v, i } => {
                let x = &t.vertices[*v].transfers[*i];
                let now = std::time::Instant::now();
                let due = self
                    .transfer_printed
                    .get(&(*v, *i))
                    .is_none_or(|p| now.duration_since(*p) >= TRANSFER_EVERY);
                if x.done || (due && x.current > 0) {
                    self.transfer_printed.insert((*v, *i), now);
                    self.header(t, *v, out);
                    let n = t.vertices[*v].n;
                    if x.done {
                        let secs = x.started.elapsed().as_secs_f64();
                        let _ = writeln!(out, "#{n} {} {secs:.1}s done", x.text());
                    } else {
                        let rate = crate::images::human_size(x.rate() as u64);
                        let _ = writeln!(out, "#{n} {} {rate}/s", x.text());
                    }
                }
            }
            Change::Warning(w) => {
                let _ = writeln!(out, "WARNING: {}", w.text);
            }
            Change::Explain { v, reason } => {
                self.header(t, *v, out);
                let _ = writeln!(out, "#{} EXPLAIN: {reason}", t.vertices[*v].n);
            }
            Change::Other(_) => {}
        }
    }

    fn finish(&mut self, _t: &Tracker, _o: &Outcome, _out: &mut dyn Write) {}
}

#[cfg(test)]
mod tests {
    use super::super::testing::Buf;
    use super::super::{Mode, Outcome, Reporter};
    use rbuild_solver::{Event, Progress};

    #[test]
    fn interleaved_steps_repeat_their_name_and_partial_lines_are_not_lost() {
        let buf = Buf::default();
        let r = Reporter::with_writer(Mode::Plain, Box::new(buf.clone()), None);
        r.note("[internal] load build definition from Dockerfile");
        r.event(Event::Started {
            vertex: 7,
            name: "[a 1/1] RUN x".into(),
        });
        r.event(Event::Started {
            vertex: 9,
            name: "[b 1/1] RUN y".into(),
        });
        let log = |vertex, data: &[u8]| Event::Log {
            vertex,
            stderr: false,
            data: data.to_vec(),
        };
        r.event(log(7, b"one\ntw"));
        r.event(log(9, b"why\n"));
        r.event(log(7, b"o\n"));
        r.event(Event::Done {
            vertex: 9,
            seconds: 0.25,
        });
        r.event(log(7, b"tail"));
        r.event(Event::Failed {
            vertex: 7,
            message: "[a 1/1] RUN x: exit code 2".into(),
        });
        r.event(Event::Cached {
            vertex: 3,
            name: "[c 1/1] COPY a /a".into(),
        });
        r.finish(&Outcome::default());
        let out = buf.text();
        let lines: Vec<String> = out
            .lines()
            .map(|l| {
                // redact the seconds column
                let mut p: Vec<&str> = l.splitn(3, ' ').collect();
                if p.len() == 3 && p[1].parse::<f64>().is_ok() {
                    p[1] = "T";
                }
                p.join(" ")
            })
            .collect();
        assert_eq!(
            lines,
            [
                "#1 [internal] load build definition from Dockerfile",
                "#1 DONE 0.0s",
                "",
                "#2 [a 1/1] RUN x",
                "",
                "#3 [b 1/1] RUN y",
                "",
                "#2 [a 1/1] RUN x",
                "#2 T one",
                "",
                "#3 [b 1/1] RUN y",
                "#3 T why",
                "",
                "#2 [a 1/1] RUN x",
                "#2 T two",
                "",
                "#3 [b 1/1] RUN y",
                "#3 DONE 0.2s",
                "",
                "#2 [a 1/1] RUN x",
                "#2 T tail",
                "#2 ERROR: exit code 2",
                "",
                "#4 [c 1/1] COPY a /a",
                "#4 CACHED",
            ]
        );
    }
}
