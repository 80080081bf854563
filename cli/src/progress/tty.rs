//! The live terminal view, like BuildKit's tty display:
//!
//! ```text
//! [+] Building 3.4s (5/6)
//!  => [internal] load build definition from Dockerfile                     0.0s
//!  => CACHED [base 1/3] FROM busybox                                       0.0s
//!  => [base 2/3] RUN make                                                  2.1s
//!  => => # gcc -c main.c
//!  => => # gcc -c util.c
//! ```
//!
//! The frame is redrawn in place (cursor up, erase to the end of the screen) every 150 ms and
//! on every step change. Running steps show their last [`LOG_LINES`] output lines; finished
//! steps collapse to one line. The last frame stays on screen, followed by a summary line,
//! the warnings, and for a failed step its output (everything kept, with an explicit note if
//! earlier lines were dropped). Lines are cut to the terminal width so the frame's height is
//! known; a frame taller than the terminal keeps its header and newest lines. `NO_COLOR`
//! turns colours off.

use std::io::Write;

use super::{Change, Outcome, Render, Status, Tracker};

/// Output lines shown under a running step (BuildKit's default).
pub const LOG_LINES: usize = 6;

/// (columns, rows) of the terminal on stderr, if it is one and reports a size.
pub fn terminal_size() -> Option<(usize, usize)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stderr()).ok()?;
    (ws.ws_col > 0).then_some((usize::from(ws.ws_col), usize::from(ws.ws_row)))
}

pub struct Tty {
    width: Option<usize>,
    /// Lines of the frame currently on screen.
    drawn: usize,
    dirty: bool,
    warnings: Vec<String>,
    /// `--explain` reasons, printed after the summary.
    explains: Vec<String>,
    color: bool,
}

impl Tty {
    pub fn new(width: Option<usize>) -> Self {
        Tty {
            width,
            drawn: 0,
            dirty: true,
            warnings: Vec::new(),
            explains: Vec::new(),
            color: std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn redraw(&mut self, t: &Tracker, outcome: Option<&Outcome>, out: &mut dyn Write) {
        // A fixed width (tests) means a fixed-size screen: no height limit.
        let (width, height) = match self.width {
            Some(w) => (w, 0),
            None => terminal_size().unwrap_or((80, 0)),
        };
        let mut lines = frame(t, width, outcome, self.color);
        fit_height(&mut lines, height);
        let mut s = String::new();
        if self.drawn > 0 {
            s.push_str(&format!("\x1b[{}A\r\x1b[J", self.drawn));
        }
        for l in &lines {
            s.push_str(l);
            s.push('\n');
        }
        let _ = out.write_all(s.as_bytes());
        let _ = out.flush();
        self.drawn = lines.len();
        self.dirty = false;
    }
}

/// Keep a frame within `height` rows (0 = unknown): the header and the newest lines, since
/// lines scrolled off the top cannot be redrawn in place.
fn fit_height(lines: &mut Vec<String>, height: usize) {
    if height > 2 && lines.len() > height - 1 {
        // header + (height - 2) newest lines = height - 1 rows, leaving the cursor row free
        let end = lines.len() - (height - 2);
        lines.drain(1..end);
    }
}

fn paint(color: bool, code: &str, s: String) -> String {
    if color && !code.is_empty() {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s
    }
}

/// Cut `s` to at most `width` characters.
fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut c: String = s.chars().take(width.saturating_sub(1)).collect();
        c.push('…');
        c
    }
}

/// The lines of one frame (without newlines). `outcome` is set for the last frame.
pub fn frame(t: &Tracker, width: usize, outcome: Option<&Outcome>, color: bool) -> Vec<String> {
    let width = width.max(40);
    let total = t.vertices.len();
    let finished = t
        .vertices
        .iter()
        .filter(|v| v.status != Status::Running)
        .count();
    let state = match outcome {
        Some(o) if o.ok => " FINISHED",
        Some(_) => " FAILED",
        None => "",
    };
    let header = format!(
        "[+] Building {:.1}s ({finished}/{total}){state}",
        t.build_start.elapsed().as_secs_f64()
    );
    let mut lines = vec![paint(
        color,
        if outcome.is_some() { "34" } else { "" },
        header,
    )];
    for v in &t.vertices {
        let (mark, code) = match &v.status {
            Status::Running => ("", "34"),
            Status::Cached => ("CACHED ", ""),
            Status::Done(_) => ("", ""),
            Status::Error(_) => ("ERROR ", "31"),
            Status::Cancelled => ("CANCELED ", "33"),
        };
        let time = format!("{:.1}s", v.elapsed());
        let left = cut(&format!(" => {mark}{}", v.name), width - time.len() - 1);
        let pad = width - left.chars().count() - time.len();
        lines.push(paint(
            color,
            code,
            format!("{left}{}{time}", " ".repeat(pad)),
        ));
        let show_logs = matches!(v.status, Status::Running | Status::Error(_));
        if show_logs {
            let skip = v.lines.len().saturating_sub(LOG_LINES);
            for l in v.lines.iter().skip(skip) {
                lines.push(cut(&format!(" => => # {l}"), width));
            }
        }
    }
    lines
}

impl Render for Tty {
    fn change(&mut self, t: &Tracker, c: &Change<'_>, out: &mut dyn Write) {
        match c {
            Change::Started(_)
            | Change::Cached(_)
            | Change::Done(_)
            | Change::Error { .. }
            | Change::Cancelled(_) => self.redraw(t, None, out),
            Change::Line { .. } | Change::Chunk { .. } => self.dirty = true,
            Change::Warning(w) => self.warnings.push(w.text.to_string()),
            Change::Explain { v, reason } => {
                let vx = &t.vertices[*v];
                self.explains
                    .push(format!("#{} {}: {reason}", vx.n, vx.name));
            }
            Change::Other(_) => {}
        }
    }

    fn tick(&mut self, t: &Tracker, out: &mut dyn Write) {
        let running = t.vertices.iter().any(|v| v.status == Status::Running);
        if self.dirty || running {
            self.redraw(t, None, out);
        }
    }

    fn finish(&mut self, t: &Tracker, o: &Outcome, out: &mut dyn Write) {
        self.redraw(t, Some(o), out);
        let cached = t
            .vertices
            .iter()
            .filter(|v| v.status == Status::Cached)
            .count();
        let secs = t.build_start.elapsed().as_secs_f64();
        let mut s = String::new();
        if o.ok {
            s.push_str(&format!(
                "Built in {secs:.1}s: {} steps, {cached} cached, {} run",
                t.vertices.len(),
                t.vertices.len() - cached
            ));
            if let Some(id) = &o.image_id {
                s.push_str(&format!("; image {id}"));
            }
            s.push('\n');
        }
        for w in &self.warnings {
            s.push_str(&paint(self.color, "33", format!("WARNING: {w}")));
            s.push('\n');
        }
        for e in &self.explains {
            s.push_str(&format!("EXPLAIN {e}\n"));
        }
        // The full output of failed steps: the frame only showed its last lines.
        for v in t.vertices.iter() {
            if let Status::Error(_) = v.status {
                if v.lines.len() > LOG_LINES || v.dropped > 0 {
                    s.push_str(&format!("------\n > output of {}:\n", v.name));
                    if v.dropped > 0 {
                        s.push_str(&format!(
                            "[{} earlier lines not kept; --progress=plain shows all output]\n",
                            v.dropped
                        ));
                    }
                    for l in &v.lines {
                        s.push_str(l);
                        s.push('\n');
                    }
                    s.push_str("------\n");
                }
            }
        }
        let _ = out.write_all(s.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Buf;
    use super::super::{Mode, Outcome, Reporter};
    use super::*;
    use rbuild_solver::{Event, Progress};

    fn strip_times(l: &str) -> String {
        l.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.' || c == 's')
            .trim_end()
            .to_string()
    }

    #[test]
    fn running_steps_show_their_last_lines_and_finished_steps_collapse() {
        let r = Reporter::with_writer(Mode::Tty, Box::new(Buf::default()), Some(60));
        r.event(Event::Cached {
            vertex: 0,
            name: "[s 1/3] FROM busybox".into(),
        });
        r.event(Event::Started {
            vertex: 1,
            name: "[s 2/3] RUN a-very-long-command ".to_string() + &"x".repeat(80),
        });
        let mut data = Vec::new();
        for i in 1..=8 {
            data.extend_from_slice(format!("out {i}\n").as_bytes());
        }
        r.event(Event::Log {
            vertex: 1,
            stderr: true,
            data,
        });
        let g = r.shared.inner.lock().unwrap();
        let f = frame(&g.tracker, 60, None, false);
        drop(g);
        assert!(
            f[0].starts_with("[+] Building ") && f[0].ends_with("(1/2)"),
            "{f:?}"
        );
        assert_eq!(strip_times(&f[1]), " => CACHED [s 1/3] FROM busybox");
        assert!(f.iter().all(|l| l.chars().count() <= 60), "{f:#?}");
        assert!(f[2].contains('…'), "long names are cut: {}", f[2]);
        let logs: Vec<&str> = f[3..].iter().map(String::as_str).collect();
        assert_eq!(
            logs,
            [
                " => => # out 3",
                " => => # out 4",
                " => => # out 5",
                " => => # out 6",
                " => => # out 7",
                " => => # out 8"
            ]
        );
        r.event(Event::Done {
            vertex: 1,
            seconds: 1.5,
        });
        let g = r.shared.inner.lock().unwrap();
        let f = frame(
            &g.tracker,
            60,
            Some(&Outcome {
                ok: true,
                ..Default::default()
            }),
            false,
        );
        drop(g);
        assert_eq!(f.len(), 3, "output collapses when done: {f:#?}");
        assert!(f[0].ends_with("(2/2) FINISHED"));
        assert!(f[2].ends_with(" 1.5s"));
    }

    #[test]
    fn frames_taller_than_the_terminal_keep_the_header_and_the_newest_lines() {
        let mut lines: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        fit_height(&mut lines, 5);
        assert_eq!(lines, ["0", "7", "8", "9"]);
        let mut lines: Vec<String> = (0..3).map(|i| i.to_string()).collect();
        fit_height(&mut lines, 0);
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn the_last_frame_is_followed_by_the_summary_and_the_failed_steps_output() {
        let buf = Buf::default();
        let r = Reporter::with_writer(Mode::Tty, Box::new(buf.clone()), Some(80));
        r.event(Event::Started {
            vertex: 1,
            name: "[s 1/1] RUN make".into(),
        });
        let data: Vec<u8> = (1..=10)
            .flat_map(|i| format!("l{i}\n").into_bytes())
            .collect();
        r.event(Event::Log {
            vertex: 1,
            stderr: false,
            data,
        });
        r.event(Event::Failed {
            vertex: 1,
            message: "[s 1/1] RUN make: exit code 2".into(),
        });
        r.warning_at("Dockerfile", 1, 1, "something odd");
        r.finish(&Outcome::default());
        let out = buf.text();
        let last = &out[out.rfind("[+] Building").unwrap()..];
        assert!(last.contains("FAILED"), "{last}");
        assert!(last.contains(" => ERROR [s 1/1] RUN make"), "{last}");
        assert!(last.contains(" => => # l10\n"), "{last}");
        assert!(
            !last.contains(" => => # l4\n"),
            "the frame shows the last 6 lines"
        );
        assert!(
            last.contains("WARNING: Dockerfile:1: something odd"),
            "{last}"
        );
        // the whole output of the failed step follows the frame
        assert!(
            last.contains("------\n > output of [s 1/1] RUN make:\nl1\nl2\n"),
            "{last}"
        );
    }
}
