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
//! The frame is redrawn in place every 150 ms and on every step change: cursor up to the
//! frame's first line, then each line erased and rewritten, then the rows the previous frame
//! had beyond the new one erased. The screen is never erased from the home position: tmux
//! (and other terminals) move the whole screen into the scrollback on an erase from the top
//! left, so a frame starting on the first row (after `clear`) would fill the scrollback with
//! one copy per redraw. Running steps show their last [`LOG_LINES`] output lines; finished
//! steps collapse to one line; a failed step keeps its last lines (the error report after
//! the frame shows the last 20). Ctrl-C marks the running steps `CANCELED` in the last frame.
//! The last frame stays on screen, followed by a summary line and the warnings. Lines are
//! cut to the terminal width so the frame's height is known; a frame taller than the
//! terminal keeps its header and newest lines. `NO_COLOR` turns colours off.

use std::io::Write;

use super::{Change, Outcome, Render, Status, Tracker};

/// Output lines shown under a running step (BuildKit's default).
pub const LOG_LINES: usize = 6;

/// Transfers (layers pulled or pushed) shown under a running step.
pub const TRANSFER_LINES: usize = 8;

/// (columns, rows) of the terminal on stderr, if it is one and reports a size.
pub fn terminal_size() -> Option<(usize, usize)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stderr()).ok()?;
    (ws.ws_col > 0).then_some((usize::from(ws.ws_col), usize::from(ws.ws_row)))
}

pub struct Tty {
    /// Fixed (columns, rows; 0 = no height limit) for tests, else the terminal's size.
    size: Option<(usize, usize)>,
    /// Lines of the frame currently on screen.
    drawn: usize,
    dirty: bool,
    warnings: Vec<String>,
    /// `--explain` reasons, printed after the summary.
    explains: Vec<String>,
    color: bool,
}

impl Tty {
    pub fn new(size: Option<(usize, usize)>) -> Self {
        Tty {
            size,
            drawn: 0,
            dirty: true,
            warnings: Vec::new(),
            explains: Vec::new(),
            color: std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn redraw(&mut self, t: &Tracker, outcome: Option<&Outcome>, out: &mut dyn Write) {
        let (width, height) = match self.size {
            Some(s) => s,
            None => terminal_size().unwrap_or((80, 0)),
        };
        let mut lines = frame(t, width, outcome, self.color);
        if outcome.is_none() {
            // the last frame is written whole: what scrolls off stays in the scrollback once
            fit_height(&mut lines, height);
        }
        let mut s = String::new();
        if self.drawn > 0 {
            s.push_str(&format!("\x1b[{}A\r", self.drawn));
        }
        for l in &lines {
            // erase the old line, then write: an erase after a full-width line would take its
            // last character (the cursor waits on the last column)
            s.push_str("\x1b[2K");
            s.push_str(l);
            s.push('\n');
        }
        if self.drawn > lines.len() {
            // rows of the previous, taller frame; the cursor is below the new frame's first
            // line, never at the home position
            s.push_str("\x1b[J");
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

/// A step's output line as the frame may show it: control characters (escape sequences that
/// would move the cursor, clear the screen or change the frame's height) become `?`.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
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
        Some(o) if o.cancelled => " CANCELED",
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
        if v.status == Status::Running {
            // byte progress of the step's transfers (the last few), BuildKit's statuses
            let skip = v.transfers.len().saturating_sub(TRANSFER_LINES);
            for x in v.transfers.iter().skip(skip) {
                let (detail, secs) = if x.done {
                    let took = x
                        .completed_at
                        .and_then(|c| c.duration_since(x.started_at).ok());
                    (" done".to_string(), took)
                } else {
                    (
                        format!(" {}/s", crate::images::human_size(x.rate() as u64)),
                        Some(x.started.elapsed()),
                    )
                };
                let time = format!("{:.1}s", secs.map(|d| d.as_secs_f64()).unwrap_or(0.0));
                let left = cut(
                    &format!(" => => {}{detail}", x.text()),
                    width - time.len() - 1,
                );
                let pad = width - left.chars().count() - time.len();
                lines.push(format!("{left}{}{time}", " ".repeat(pad)));
            }
        }
        let show_logs = matches!(v.status, Status::Running | Status::Error(_));
        if show_logs {
            let skip = v.lines.len().saturating_sub(LOG_LINES);
            for l in v.lines.iter().skip(skip) {
                lines.push(cut(&format!(" => => # {}", printable(l)), width));
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
            Change::Line { .. } | Change::Chunk { .. } | Change::Transfer { .. } => {
                self.dirty = true
            }
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
        // the frame's last lines are all the live view prints of it: the error report
        // after it shows the tail (not the whole output a second time)
        assert!(!last.contains("l1\n"), "{last}");
    }

    /// A terminal model: vt100's screen and scrollback, plus tmux's rule that an erase below
    /// the cursor at the home position moves the screen into the scrollback
    /// (`scroll-on-clear`), which vt100 does not do.
    struct Term {
        parser: vt100::Parser,
        tmux_history: usize,
    }

    impl Term {
        fn new(rows: u16, cols: u16) -> Term {
            let nz = |n: u16| std::num::NonZeroU16::new(n).unwrap();
            Term {
                parser: vt100::Parser::new(nz(rows), nz(cols), 100_000),
                tmux_history: 0,
            }
        }

        fn feed(&mut self, bytes: &[u8]) {
            // the tty driver turns LF into CR LF (ONLCR)
            let mut cooked = Vec::with_capacity(bytes.len());
            for &b in bytes {
                if b == b'\n' {
                    cooked.push(b'\r');
                }
                cooked.push(b);
            }
            let ed = b"\x1b[J";
            let mut rest = &cooked[..];
            while let Some(i) = rest.windows(ed.len()).position(|w| w == ed) {
                self.parser.process(&rest[..i]);
                if self.parser.screen().cursor_position() == (0, 0) {
                    let used = self
                        .parser
                        .screen()
                        .rows(0, 200)
                        .enumerate()
                        .filter(|(_, r)| !r.trim().is_empty())
                        .map(|(n, _)| n + 1)
                        .max()
                        .unwrap_or(0);
                    self.tmux_history += used;
                }
                self.parser.process(ed);
                rest = &rest[i + ed.len()..];
            }
            self.parser.process(rest);
        }

        fn scrollback(&self) -> usize {
            self.parser.screen().scrollback_len() + self.tmux_history
        }

        fn screen(&self) -> Vec<String> {
            self.parser
                .screen()
                .rows(0, 200)
                .map(|r| r.trim_end().to_string())
                .collect()
        }
    }

    /// A build of `steps` RUN steps with 10 output lines each, the live view ticking between
    /// lines, drawn on a `rows`-row terminal that starts empty (as after `clear`).
    fn build_on_screen(steps: usize, rows: u16, fail_last: bool) -> (Term, String) {
        let buf = Buf::default();
        let r = Reporter::with_screen(Mode::Tty, Box::new(buf.clone()), Some((80, rows.into())));
        r.note("[internal] load build definition from Dockerfile");
        for v in 0..steps {
            r.event(Event::Started {
                vertex: v,
                name: format!("[{}/{steps}] RUN step {v}", v + 1),
            });
            for l in 0..10 {
                r.event(Event::Log {
                    vertex: v,
                    stderr: false,
                    data: format!("step {v} line {l}\n").into_bytes(),
                });
                r.tick_now();
            }
            if fail_last && v + 1 == steps {
                r.event(Event::Failed {
                    vertex: v,
                    message: "exit code 1".into(),
                });
            } else {
                r.event(Event::Done {
                    vertex: v,
                    seconds: 0.1,
                });
            }
        }
        r.finish(&Outcome {
            ok: !fail_last,
            ..Default::default()
        });
        let bytes = buf.0.lock().unwrap().clone();
        let mut term = Term::new(rows, 80);
        term.feed(&bytes);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        (term, text)
    }

    #[test]
    fn redraws_from_the_first_row_leave_nothing_in_the_scrollback() {
        // 12 steps: the final frame (13 lines) and the summary fit on 24 rows
        let (term, _) = build_on_screen(12, 24, false);
        assert_eq!(term.scrollback(), 0, "{:#?}", term.screen());
        let screen = term.screen();
        assert!(screen[0].starts_with("[+] Building") && screen[0].ends_with("(13/13) FINISHED"));
        assert!(
            screen[13].starts_with(" => [12/12] RUN step 11"),
            "{screen:#?}"
        );
        assert!(screen[14].starts_with("Built in "), "{screen:#?}");
        assert!(!screen.iter().any(|l| l.contains("=> => #")), "{screen:#?}");
    }

    #[test]
    fn a_frame_taller_than_the_screen_scrolls_once_at_the_end() {
        // 40 steps on 24 rows: frames are cut to the screen while running; the final frame
        // (41 lines + summary) scrolls its top into the scrollback exactly once
        let (term, _) = build_on_screen(40, 24, false);
        let final_lines = 1 + 41 + 1;
        let bound = final_lines - 24 + 1;
        assert!(
            term.scrollback() <= bound,
            "scrollback {} lines, final output {final_lines}",
            term.scrollback()
        );
        let screen = term.screen();
        assert!(
            screen
                .iter()
                .any(|l| l.starts_with(" => [40/40] RUN step 39")),
            "{screen:#?}"
        );
    }

    #[test]
    fn a_failed_steps_output_is_shown_once() {
        let (term, text) = build_on_screen(2, 40, true);
        let screen = term.screen();
        assert!(screen[0].ends_with("FAILED"), "{screen:#?}");
        assert!(screen
            .iter()
            .any(|l| l.starts_with(" => ERROR [2/2] RUN step 1")));
        // the frame keeps the last 6 lines; nothing repeats them after the frame
        let after: Vec<&String> = screen
            .iter()
            .skip_while(|l| !l.contains("ERROR [2/2]"))
            .collect();
        let shown = after.iter().filter(|l| l.contains("step 1 line")).count();
        assert_eq!(shown, LOG_LINES, "{screen:#?}");
        assert!(!text.contains("output of [2/2]"), "{text}");
    }

    #[test]
    fn ctrl_c_marks_running_steps_canceled_in_the_last_frame() {
        let buf = Buf::default();
        let r = Reporter::with_screen(Mode::Tty, Box::new(buf.clone()), Some((80, 24)));
        r.event(Event::Cached {
            vertex: 0,
            name: "[1/3] FROM busybox".into(),
        });
        for v in 1..3 {
            r.event(Event::Started {
                vertex: v,
                name: format!("[{}/3] RUN sleep {v}", v + 1),
            });
        }
        r.event(Event::Log {
            vertex: 1,
            stderr: false,
            data: b"working\n".to_vec(),
        });
        r.tick_now();
        (r.canceller())();
        // events after the cancel (steps killed) and the build's own finish change nothing
        r.event(Event::Cancelled { vertex: 1 });
        r.finish(&Outcome::default());
        let mut term = Term::new(24, 80);
        term.feed(&buf.0.lock().unwrap());
        let screen = term.screen();
        assert!(
            screen[0].ends_with("(1/3) CANCELED") || screen[0].ends_with("(3/3) CANCELED"),
            "{screen:#?}"
        );
        assert!(
            screen[1].starts_with(" => CACHED [1/3] FROM busybox"),
            "{screen:#?}"
        );
        assert!(
            screen[2].starts_with(" => CANCELED [2/3] RUN sleep 1"),
            "{screen:#?}"
        );
        assert!(
            screen[3].starts_with(" => CANCELED [3/3] RUN sleep 2"),
            "{screen:#?}"
        );
        assert_eq!(
            screen
                .iter()
                .filter(|l| l.starts_with("[+] Building"))
                .count(),
            1,
            "{screen:#?}"
        );
        assert_eq!(term.scrollback(), 0);
    }

    #[test]
    fn a_pulling_step_shows_each_layers_bytes_and_rate() {
        let buf = Buf::default();
        let r = Reporter::with_screen(Mode::Tty, Box::new(buf.clone()), Some((100, 24)));
        r.event(Event::Started {
            vertex: 0,
            name: "[1/2] FROM big".into(),
        });
        let digest = format!("sha256:{}", "ab".repeat(32));
        for (current, done) in [(0, false), (31_400_000, false), (95_000_000, true)] {
            r.event(Event::Transfer {
                vertex: 0,
                id: digest.clone(),
                action: "downloading",
                current,
                total: 95_000_000,
                done,
            });
        }
        r.event(Event::Transfer {
            vertex: 0,
            id: format!("sha256:{}", "cd".repeat(32)),
            action: "downloading",
            current: 1_000_000,
            total: 2_000_000,
            done: false,
        });
        r.tick_now();
        let mut term = Term::new(24, 100);
        term.feed(&buf.0.lock().unwrap());
        let screen = term.screen();
        let layer = screen
            .iter()
            .find(|l| l.starts_with(" => => sha256:abababababab 95MB / 95MB done"))
            .unwrap_or_else(|| panic!("{screen:#?}"));
        assert!(layer.ends_with('s'), "{layer}");
        let running = screen
            .iter()
            .find(|l| l.starts_with(" => => sha256:cdcdcdcdcdcd 1MB / 2MB "))
            .unwrap_or_else(|| panic!("{screen:#?}"));
        assert!(running.contains("B/s"), "a rate: {running}");
        r.event(Event::Done {
            vertex: 0,
            seconds: 1.0,
        });
        r.finish(&Outcome {
            ok: true,
            ..Default::default()
        });
        let mut term = Term::new(24, 100);
        term.feed(&buf.0.lock().unwrap());
        assert!(
            !term.screen().iter().any(|l| l.contains("sha256:abab")),
            "a finished step collapses: {:#?}",
            term.screen()
        );
    }

    #[test]
    fn a_steps_escape_sequences_cannot_clear_the_screen_or_move_the_frame() {
        let buf = Buf::default();
        let r = Reporter::with_screen(Mode::Tty, Box::new(buf.clone()), Some((80, 24)));
        r.event(Event::Started {
            vertex: 0,
            name: "[1/1] RUN evil".into(),
        });
        r.event(Event::Log {
            vertex: 0,
            stderr: false,
            data: b"\x1b[2J\x1b[3J\x1b[Hwiped\x1b[10Bdown\x07\r\n".to_vec(),
        });
        r.tick_now();
        let mut term = Term::new(24, 80);
        term.feed(b"kept above\r\n");
        term.feed(&buf.0.lock().unwrap());
        let screen = term.screen();
        assert_eq!(screen[0], "kept above", "{screen:#?}");
        assert!(screen[1].starts_with("[+] Building"), "{screen:#?}");
        assert!(
            screen[3].starts_with(" => => # ?[2J?[3J?[Hwiped?[10Bdown?"),
            "{screen:#?}"
        );
    }
}
