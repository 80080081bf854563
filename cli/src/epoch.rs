//! The build's source date epoch: the one time every timestamp of the image is pinned to, so
//! that two builds of the same source give the same digest without any flag.
//!
//! In order (the first that applies wins):
//! 1. `SOURCE_DATE_EPOCH` in the environment (the reproducible-builds.org convention; buildx
//!    forwards it the same way);
//! 2. `--build-arg SOURCE_DATE_EPOCH=…`;
//! 3. `--reproducible`: 0 (1970-01-01);
//! 4. the commit time of the context's git `HEAD`: a git URL context (the commit checked out), or
//!    a context directory inside a git work tree. The commit time is taken whether or not the
//!    tree is clean: a changed file changes the layer bytes anyway, and its mtime is clamped to
//!    the commit time like every other file. BuildKit's `SOURCE_DATE_EPOCH=context` takes the
//!    commit time for git contexts only; rbuild also does it for directories in a work tree,
//!    the common CI case (a checkout), and `SOURCE_DATE_EPOCH=context` is accepted as a
//!    synonym of this default;
//! 5. none: timestamps are the build time (the time the newest layer was made), as before.
//!
//! The value `SOURCE_DATE_EPOCH=context` (BuildKit's spelling) asks for step 4 explicitly.
//! Which one was used is reported in `--metadata-file` (`rbuild.source-date-epoch`).

use std::path::Path;

use anyhow::Result;

use crate::args::BuildArgs;

/// Where the epoch came from (names used in `--metadata-file` and provenance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Env,
    BuildArg,
    Reproducible,
    GitCommit,
    None,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Env => "env:SOURCE_DATE_EPOCH",
            Source::BuildArg => "build-arg:SOURCE_DATE_EPOCH",
            Source::Reproducible => "--reproducible",
            Source::GitCommit => "git-commit",
            Source::None => "none",
        }
    }
}

/// The resolved epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    pub value: Option<i64>,
    pub source: Source,
}

/// A git checkout the context comes from (commit and public remote URL when known).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitSource {
    /// Remote URL without credentials (may be empty: a repository without `origin`).
    pub url: String,
    pub commit: String,
    /// Committer time of `commit` (unix seconds).
    pub time: i64,
}

/// Resolve the epoch for a build of `context` (a local directory, after cloning a git URL).
pub fn resolve(b: &BuildArgs, context: &Path) -> Result<Epoch> {
    let explicit = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => Some((v, Source::Env)),
        _ => b.build_args.iter().find_map(|a| {
            a.strip_prefix("SOURCE_DATE_EPOCH=")
                .filter(|v| !v.is_empty())
                .map(|v| (v.to_string(), Source::BuildArg))
        }),
    };
    match explicit {
        Some((v, _)) if v == "context" => {}
        Some((v, source)) => {
            let value = v.parse::<i64>().map_err(|_| {
                crate::render::UsageError(format!(
                    "SOURCE_DATE_EPOCH={v:?} is not a number of seconds"
                ))
            })?;
            return Ok(Epoch {
                value: Some(value),
                source,
            });
        }
        None if b.reproducible => {
            return Ok(Epoch {
                value: Some(0),
                source: Source::Reproducible,
            })
        }
        None => {}
    }
    let git = b.git_source.clone().or_else(|| git_source(context));
    Ok(match git {
        Some(g) => Epoch {
            value: Some(g.time),
            source: Source::GitCommit,
        },
        None => Epoch {
            value: None,
            source: Source::None,
        },
    })
}

/// The git checkout a local context directory is part of, if any (`None` when the directory is
/// not in a work tree, git is missing, the repository has no commit or git refuses it, e.g.
/// for dubious ownership: then the build falls back to the build time).
///
/// Only plumbing that runs no configured program is used (`rev-parse`, `cat-file`, `config`):
/// never `log` (signature checks can run `gpg.program`) or anything reading the index
/// (`core.fsmonitor`).
pub fn git_source(context: &Path) -> Option<GitSource> {
    // No git process for contexts outside any work tree (the usual case in tests and temp dirs).
    if !context.ancestors().any(|d| d.join(".git").exists()) {
        return None;
    }
    let commit = git(context, &["rev-parse", "--verify", "-q", "HEAD^{commit}"])?;
    let body = git(context, &["cat-file", "commit", &commit])?;
    let time = committer_time(&body)?;
    let url = git(context, &["config", "--get", "remote.origin.url"])
        .map(|u| public_url(&u))
        .unwrap_or_default();
    Some(GitSource { url, commit, time })
}

/// The committer time of a raw commit object (`committer NAME <EMAIL> SECONDS TZ`).
pub fn committer_time(commit: &str) -> Option<i64> {
    commit
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix("committer "))
        .and_then(|l| l.rsplit(' ').nth(1))
        .and_then(|s| s.parse().ok())
}

/// A git remote without credentials (`https://user:token@host/r.git` → `https://host/r.git`):
/// it goes into images and attestations.
pub fn public_url(remote: &str) -> String {
    if let Some((scheme, rest)) = remote.split_once("://") {
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if let Some((_, host)) = authority.rsplit_once('@') {
            return format!("{scheme}://{host}/{path}");
        }
    }
    remote.to_string()
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    rbuild_solver::git(args, Some(dir))
        .ok()
        .map(|o| o.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committer_time_of_a_commit_object() {
        let c = "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
                 author A <a@x> 1600000000 +0200\n\
                 committer C D <c@x> 1700000000 -0500\n\nmsg\ncommitter X <y> 5 +0000\n";
        assert_eq!(committer_time(c), Some(1_700_000_000));
        assert_eq!(committer_time("tree x\n\ncommitter X <y> 5 +0000\n"), None);
        assert_eq!(committer_time("committer broken"), None);
    }

    #[test]
    fn credentials_never_reach_the_url() {
        assert_eq!(
            public_url("https://user:tok@example.com/org/r.git"),
            "https://example.com/org/r.git"
        );
        assert_eq!(
            public_url("git@github.com:org/r.git"),
            "git@github.com:org/r.git"
        );
    }

    #[test]
    fn no_work_tree_no_epoch() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(git_source(d.path()), None);
    }
}
