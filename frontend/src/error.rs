//! The crate's single error type.
//!
//! Every variant that comes from a Dockerfile instruction carries its 1-based line number, and
//! `Display` renders one line starting with `Dockerfile:<line>:` so the CLI can print it as-is
//! (or decorate it with a snippet using [`FrontendError::line`]).

use rbuild_graph::GraphError;

/// Errors of the Dockerfile frontend.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// A lexical or syntactic problem (bad directive, unterminated heredoc, …).
    #[error("Dockerfile:{line}: {message}")]
    Syntax { line: u32, message: String },
    /// An instruction keyword that does not exist.
    #[error(
        "Dockerfile:{line}: unknown instruction \"{name}\"{}",
        did_you_mean(suggestion)
    )]
    UnknownInstruction {
        line: u32,
        name: String,
        suggestion: Option<String>,
    },
    /// A `--flag` the instruction does not accept.
    #[error(
        "Dockerfile:{line}: {instruction}: unknown flag: --{flag}{}",
        did_you_mean_flag(suggestion)
    )]
    UnknownFlag {
        line: u32,
        instruction: String,
        flag: String,
        suggestion: Option<String>,
    },
    /// A semantic error in one instruction (bad arguments, unsupported feature, …).
    #[error("Dockerfile:{line}: {message}")]
    Instruction { line: u32, message: String },
    /// The image resolver could not resolve a base image or `--from` image.
    #[error("Dockerfile:{line}: {context}: cannot resolve image \"{reference}\": {message}")]
    Resolve {
        line: u32,
        context: String,
        reference: String,
        message: String,
    },
    /// `COPY --from=x` / `--mount from=x`: `x` is no earlier stage and not a resolvable image.
    #[error("Dockerfile:{line}: {instruction}: stage or image \"{name}\" not found: no stage has that name and resolving it as an image failed: {message}{}", did_you_mean_stage(suggestion))]
    FromNotFound {
        line: u32,
        instruction: String,
        name: String,
        message: String,
        suggestion: Option<String>,
    },
    /// `--target` names no stage.
    #[error(
        "--target \"{target}\": no stage named \"{target}\"{}",
        did_you_mean_quoted(suggestion)
    )]
    UnknownTarget {
        target: String,
        suggestion: Option<String>,
    },
    /// The Dockerfile has no FROM at all.
    #[error("Dockerfile: the file contains no stages to build (no FROM instruction)")]
    NoStages,
    /// A word-expansion error (`${v:?msg}`, bad substitution, unterminated quote).
    #[error("{}", expand_text(line, message))]
    Expand { line: Option<u32>, message: String },
    /// A bad `.dockerignore` pattern.
    #[error(".dockerignore:{line}: {message}")]
    Dockerignore { line: u32, message: String },
    /// The produced graph was rejected by the graph crate (a frontend bug).
    #[error("internal error while building the graph: {0}")]
    Graph(#[from] GraphError),
}

fn did_you_mean(s: &Option<String>) -> String {
    match s {
        Some(s) => format!(" (did you mean {s}?)"),
        None => String::new(),
    }
}

fn did_you_mean_flag(s: &Option<String>) -> String {
    match s {
        Some(s) => format!(" (did you mean --{s}?)"),
        None => String::new(),
    }
}

fn did_you_mean_stage(s: &Option<String>) -> String {
    match s {
        Some(s) => format!(" (did you mean stage \"{s}\"?)"),
        None => String::new(),
    }
}

fn did_you_mean_quoted(s: &Option<String>) -> String {
    match s {
        Some(s) => format!(" (did you mean \"{s}\"?)"),
        None => String::new(),
    }
}

fn expand_text(line: &Option<u32>, message: &str) -> String {
    match line {
        Some(l) => format!("Dockerfile:{l}: {message}"),
        None => message.to_string(),
    }
}

impl FrontendError {
    /// The Dockerfile line (1-based) the error refers to, when there is one.
    pub fn line(&self) -> Option<u32> {
        match self {
            FrontendError::Syntax { line, .. }
            | FrontendError::UnknownInstruction { line, .. }
            | FrontendError::UnknownFlag { line, .. }
            | FrontendError::Instruction { line, .. }
            | FrontendError::Resolve { line, .. }
            | FrontendError::FromNotFound { line, .. } => Some(*line),
            FrontendError::Expand { line, .. } => *line,
            FrontendError::UnknownTarget { .. }
            | FrontendError::NoStages
            | FrontendError::Dockerignore { .. }
            | FrontendError::Graph(_) => None,
        }
    }

    /// Attach a Dockerfile line to an expansion error that has none yet.
    pub(crate) fn at_line(self, at: u32) -> Self {
        match self {
            FrontendError::Expand {
                line: None,
                message,
            } => FrontendError::Expand {
                line: Some(at),
                message,
            },
            other => other,
        }
    }

    /// The message without the `Dockerfile:<line>: ` prefix (for renderers that show the
    /// location themselves).
    pub fn detail(&self) -> String {
        let full = self.to_string();
        if let Some(rest) = full.strip_prefix("Dockerfile:") {
            if let Some((num, msg)) = rest.split_once(": ") {
                if num.chars().all(|c| c.is_ascii_digit()) {
                    return msg.to_string();
                }
            }
        }
        full
    }

    pub(crate) fn instr(line: u32, message: impl Into<String>) -> Self {
        FrontendError::Instruction {
            line,
            message: message.into(),
        }
    }
}
