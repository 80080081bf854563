//! Error display: one clear line, then (for Dockerfile errors) the lines involved with line
//! numbers, and for failed RUN steps the last lines of output. Exit codes: 1 build failed,
//! 2 usage error (clap), 3 internal error.

use std::fmt;

/// An error tied to Dockerfile lines, carrying the text needed to show them.
#[derive(Debug)]
pub struct DockerfileError {
    pub path: String,
    pub text: String,
    pub lines: (u32, u32),
    pub message: String,
    /// Output tail of a failed step, if any.
    pub tail: Vec<String>,
    pub step: Option<String>,
}

impl fmt::Display for DockerfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for DockerfileError {}

/// A failure of the build itself (as opposed to a bad invocation or an internal error).
#[derive(Debug)]
pub struct BuildFailed(pub String);

impl fmt::Display for BuildFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for BuildFailed {}

pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<DockerfileError>().is_some() || e.downcast_ref::<BuildFailed>().is_some() {
        1
    } else {
        3
    }
}

pub fn print_error(e: &anyhow::Error) {
    let mut out = String::new();
    if let Some(d) = e.downcast_ref::<DockerfileError>() {
        if !d.tail.is_empty() {
            out.push_str("------\n");
            if let Some(step) = &d.step {
                out.push_str(&format!(" > {step}:\n"));
            }
            for l in &d.tail {
                out.push_str(&format!("{l}\n"));
            }
            out.push_str("------\n");
        }
        out.push_str(&snippet(d));
        out.push_str(&format!("ERROR: {}\n", d.message));
    } else {
        out.push_str(&format!("ERROR: {e}"));
        for cause in e.chain().skip(1) {
            let c = cause.to_string();
            if !out.contains(&c) {
                out.push_str(&format!(": {c}"));
            }
        }
        out.push('\n');
    }
    eprint!("{out}");
}

/// The Dockerfile lines around the error, marked with `>>>`.
pub fn snippet(d: &DockerfileError) -> String {
    let lines: Vec<&str> = d.text.lines().collect();
    let (start, end) = d.lines;
    if start == 0 || lines.is_empty() {
        return String::new();
    }
    let from = start.saturating_sub(3).max(1);
    let to = (end + 2).min(lines.len() as u32);
    let width = to.to_string().len();
    let mut s = format!("{}:{}\n--------------------\n", d.path, start);
    for n in from..=to {
        let text = lines.get((n - 1) as usize).copied().unwrap_or("");
        let mark = if n >= start && n <= end { ">>>" } else { "   " };
        s.push_str(&format!(" {n:>width$} | {mark} {text}\n"));
    }
    s.push_str("--------------------\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippet_marks_the_failing_lines() {
        let d = DockerfileError {
            path: "Dockerfile".into(),
            text: "FROM busybox\nRUN true\nRUN exit 3\nCMD x\n".into(),
            lines: (3, 3),
            message: "boom".into(),
            tail: vec![],
            step: None,
        };
        let s = snippet(&d);
        assert!(s.starts_with("Dockerfile:3\n"));
        assert!(s.contains(" 3 | >>> RUN exit 3\n"));
        assert!(s.contains(" 2 |     RUN true\n"));
        assert!(s.contains(" 4 |     CMD x\n"));
    }
}
