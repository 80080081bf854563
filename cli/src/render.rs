//! Error display, BuildKit-style: for failed RUN steps the last lines of output (and how many
//! earlier lines are not repeated), then the Dockerfile lines involved with line numbers, a
//! `>>>` marker and a caret line under the failing instruction, the error, and a hint when the
//! cause is a known one. Exit codes (docs/cli.md), decided in one place ([`exit_code`]) from
//! the error types in the chain: 2 usage error (clap's own errors and [`UsageError`]), 3 a bug
//! in rbuild ([`Internal`], a graph the frontend lowered that the solver rejects, a panic),
//! 1 everything else: the build or the command failed (a failing step, a registry that refuses
//! or cannot be reached, an image that is not there, a full disk, no docker daemon).

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
    /// Output lines of the failed step that are not in `tail`.
    pub omitted: usize,
    /// Whether the progress display above printed the step's whole output (plain, rawjson);
    /// the live view shows only its last lines.
    pub log_above: bool,
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

/// A bad invocation: an invalid or unsupported flag value (exit code 2, like clap's errors).
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for UsageError {}

/// A broken invariant of rbuild itself (exit code 3): never caused by input, always a bug.
#[derive(Debug)]
pub struct Internal(pub String);

impl fmt::Display for Internal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "internal error (a bug in rbuild, please report it): {}",
            self.0
        )
    }
}

impl std::error::Error for Internal {}

/// Exit status of a panic: a bug, like [`Internal`].
pub const BUG_STATUS: u8 = 3;

/// The exit code of a failed command: the first classified error in the chain decides.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<UsageError>() {
            return 2;
        }
        if cause.is::<Internal>() {
            return BUG_STATUS;
        }
        if let Some(rbuild_solver::SolveError::Graph(_)) =
            cause.downcast_ref::<rbuild_solver::SolveError>()
        {
            // the frontend produced a graph the solver cannot read
            return BUG_STATUS;
        }
        if cause.is::<DockerfileError>() || cause.is::<BuildFailed>() {
            return 1;
        }
    }
    1
}

/// `Err(e)` → a [`UsageError`] with the whole message (for helpers that check flag values).
pub fn usage(e: anyhow::Error) -> anyhow::Error {
    if e.is::<UsageError>() {
        return e;
    }
    anyhow::Error::new(UsageError(format!("{e:#}")))
}

pub fn print_error(e: &anyhow::Error) {
    let mut out = String::new();
    if let Some(d) = e.downcast_ref::<DockerfileError>() {
        if !d.tail.is_empty() {
            out.push_str("------\n");
            if let Some(step) = &d.step {
                out.push_str(&format!(" > {step}:\n"));
            }
            if d.omitted > 0 {
                let see = if d.log_above {
                    "see the build log above"
                } else {
                    "--progress=plain shows all output"
                };
                out.push_str(&format!(
                    "[{} earlier lines of output not repeated here; {see}]\n",
                    d.omitted
                ));
            }
            for l in &d.tail {
                out.push_str(&format!("{l}\n"));
            }
            out.push_str("------\n");
        }
        out.push_str(&snippet(d));
        out.push_str(&format!("ERROR: {}\n", d.message));
        if let Some(h) = hint(&d.message) {
            out.push_str(&format!("HINT: {h}\n"));
        }
    } else {
        out.push_str(&format!("ERROR: {e}"));
        for cause in e.chain().skip(1) {
            let c = cause.to_string();
            if !out.contains(&c) {
                out.push_str(&format!(": {c}"));
            }
        }
        out.push('\n');
        if let Some(h) = hint(&out) {
            out.push_str(&format!("HINT: {h}\n"));
        }
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
        if n == end {
            // A caret line under the failing instruction.
            let first = lines
                .get((start - 1) as usize)
                .copied()
                .unwrap_or("")
                .trim_end();
            let indent = first.len() - first.trim_start().len();
            let len = first.trim_start().chars().count().max(1);
            s.push_str(&format!(
                " {:>width$} |     {}{}\n",
                "",
                " ".repeat(indent),
                "^".repeat(len)
            ));
        }
    }
    s.push_str("--------------------\n");
    s
}

/// A hint for errors whose cause is a known one.
pub fn hint(message: &str) -> Option<&'static str> {
    let m = message.to_lowercase();
    if m.contains("did you mean") {
        // The message already carries the suggestion.
        return None;
    }
    let rules: &[(&str, &str)] = &[
        ("exit code 127", "the command was not found in the image: install it in an earlier step (e.g. RUN apk add … or apt-get install …) or check PATH"),
        ("exit code 126", "the command exists but cannot be executed: check its mode (chmod +x) and that it is not a directory"),
        ("reached its memory limit", "the step needs more memory than --memory allows: raise the limit or make the step use less"),
        ("exit code 137", "the process was killed (SIGKILL), often because it ran out of memory"),
        ("not found in build context", "check the path (relative to the context directory) and that .dockerignore does not exclude it"),
        ("manifest unknown", "check the image name and tag: the registry has no such image"),
        ("connection refused", "the registry is unreachable: check the address, RBUILD_REGISTRY_MIRRORS and RBUILD_INSECURE_REGISTRIES"),
        ("cannot reach registry", "the registry is unreachable: check the network, or use a mirror (RBUILD_REGISTRY_MIRRORS=docker.io=mirror:5000)"),
        ("no stage has that name", "--from takes a stage name (FROM … AS name), a stage index, or an image reference"),
        ("unknown instruction", "instructions are FROM, RUN, COPY, ADD, ENV, ARG, WORKDIR, USER, CMD, ENTRYPOINT, EXPOSE, LABEL, VOLUME, SHELL, STOPSIGNAL, HEALTHCHECK, ONBUILD, MAINTAINER"),
        ("cannot use the store at", "the store directory belongs to another user: set RBUILD_ROOT (or --root) to a directory you own"),
        ("permission denied", "rbuild needs root (or user namespaces) to run build steps; try running it as root"),
    ];
    rules
        .iter()
        .find(|(needle, _)| m.contains(needle))
        .map(|(_, h)| *h)
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
            omitted: 0,
            log_above: true,
        };
        let s = snippet(&d);
        assert!(s.starts_with("Dockerfile:3\n"));
        assert!(s.contains(" 3 | >>> RUN exit 3\n"));
        assert!(s.contains(" 2 |     RUN true\n"));
        assert!(s.contains(" 4 |     CMD x\n"));
        assert!(
            s.contains(" 3 | >>> RUN exit 3\n   |     ^^^^^^^^^^\n 4 |"),
            "{s}"
        );
    }

    #[test]
    fn exit_codes_come_from_the_error_types_in_the_chain() {
        use anyhow::Context;
        let bad: anyhow::Error = UsageError("--x".into()).into();
        assert_eq!(exit_code(&bad), 2);
        let wrapped = Err::<(), _>(bad).context("while parsing").unwrap_err();
        assert_eq!(
            exit_code(&wrapped),
            2,
            "a usage error stays one under context"
        );
        assert_eq!(exit_code(&Internal("invariant".into()).into()), 3);
        let graph = rbuild_solver::SolveError::Graph(rbuild_graph::GraphError::NoSuchNode(7));
        assert_eq!(exit_code(&graph.into()), 3);
        let registry = rbuild_oci::OciError::Unreachable {
            registry: "r:1".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(exit_code(&anyhow::Error::new(registry)), 1);
        assert_eq!(exit_code(&anyhow::anyhow!("disk full")), 1);
        assert_eq!(exit_code(&BuildFailed("x".into()).into()), 1);
        assert!(super::usage(anyhow::anyhow!("a")).is::<UsageError>());
    }

    #[test]
    fn known_causes_get_a_hint() {
        assert!(
            hint("process \"/bin/sh -c nope\" did not complete successfully: exit code 127")
                .unwrap()
                .contains("not found")
        );
        assert!(hint("\"x\" not found in build context")
            .unwrap()
            .contains(".dockerignore"));
        assert!(hint("exit code 1").is_none());
        assert!(hint("unknown instruction \"FORM\" (did you mean FROM?)").is_none());
        assert!(hint("unknown instruction \"XYZ\"")
            .unwrap()
            .contains("FROM, RUN"));
    }
}
