//! The build context argument, as `docker buildx build` accepts it:
//!
//! - a directory;
//! - `-`: standard input holds either a tar archive (plain or gzip, detected by content), which
//!   becomes the context, or a Dockerfile, built with an empty context;
//! - a git URL (`https://host/repo.git`, `git://…`, `git@host:repo.git`, `ssh://…`,
//!   `github.com/org/repo`, `file:///path/repo.git`), optionally with `#ref:subdir`: cloned with
//!   the `git` CLI (shallow when the server allows it) into a temporary directory.
//!
//! `-f -` reads the Dockerfile from stdin with a directory context. The result is a
//! [`BuildArgs`] whose context (and Dockerfile) are local paths, plus the temporary directory
//! that must live until the build is over.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::args::BuildArgs;
use crate::epoch::{public_url, GitSource};
use crate::render::UsageError;

/// A context ready to build from.
pub struct Prepared {
    pub args: BuildArgs,
    /// Holds a cloned or unpacked context; removed on drop.
    pub _tmp: Option<tempfile::TempDir>,
}

/// `--build-context NAME=VALUE` values rbuild supports: a local directory or
/// `docker-image://REF` (not `oci-layout://`, git or http URLs, nor bake's `target:`).
pub fn build_context_supported(spec: &str) -> bool {
    let value = spec.split_once('=').map(|(_, v)| v).unwrap_or(spec);
    let remote = ["oci-layout://", "target:", "http://", "https://"]
        .iter()
        .any(|p| value.starts_with(p));
    !remote && !is_git_url(value)
}

/// The `--build-context` flags: what each name means for the frontend, and the local
/// directories (by name) for the solver. Relative paths are relative to the working directory,
/// as in buildx.
pub fn build_contexts(
    b: &BuildArgs,
) -> Result<(
    std::collections::BTreeMap<String, rbuild_frontend::NamedContext>,
    std::collections::BTreeMap<String, PathBuf>,
)> {
    use rbuild_frontend::NamedContext;
    let mut named = std::collections::BTreeMap::new();
    let mut locals = std::collections::BTreeMap::new();
    for spec in &b.build_contexts {
        let usage =
            |m: String| anyhow::Error::new(UsageError(format!("--build-context {spec}: {m}")));
        let (name, value) = spec
            .split_once('=')
            .ok_or_else(|| usage("expected NAME=VALUE".into()))?;
        if name == "context" || name.eq_ignore_ascii_case("scratch") {
            return Err(usage(format!("{name:?} is a reserved name")));
        }
        if let Some(r) = value.strip_prefix("docker-image://") {
            if r.is_empty() {
                return Err(usage("docker-image:// needs an image reference".into()));
            }
            named.insert(name.to_string(), NamedContext::Image(r.to_string()));
            continue;
        }
        let dir = fs::canonicalize(value).map_err(|e| usage(format!("{value}: {e}")))?;
        if !dir.is_dir() {
            return Err(usage(format!("{} is not a directory", dir.display())));
        }
        named.insert(name.to_string(), NamedContext::Local(name.to_string()));
        locals.insert(name.to_string(), dir);
    }
    Ok((named, locals))
}

/// Whether `s` names a git repository rather than a local directory (docker's rules, plus
/// `file://` URLs of repositories).
pub fn is_git_url(s: &str) -> bool {
    let (base, fragment) = s.split_once('#').unwrap_or((s, ""));
    if ["git://", "git@", "github.com/", "ssh://"]
        .iter()
        .any(|p| s.starts_with(p))
    {
        return true;
    }
    if let Some(path) = base.strip_prefix("file://") {
        return base.ends_with(".git")
            || !fragment.is_empty()
            || Path::new(path).join("HEAD").is_file();
    }
    (s.starts_with("https://") || s.starts_with("http://"))
        && (base.ends_with(".git") || !fragment.is_empty())
}

pub fn prepare(b: &BuildArgs) -> Result<Prepared> {
    let mut args = b.clone();
    let ctx = b.context.to_string_lossy().to_string();
    if ctx == "-" {
        if b.file.as_deref() == Some(Path::new("-")) {
            return Err(
                UsageError("-f - and context - cannot both read standard input".into()).into(),
            );
        }
        let mut data = Vec::new();
        std::io::stdin()
            .read_to_end(&mut data)
            .context("reading the context from standard input")?;
        let tmp = tempfile::tempdir().context("creating a temporary context directory")?;
        let dir = tmp.path().join("context");
        fs::create_dir(&dir)?;
        if is_tar(&data) {
            unpack_tar(&data, &dir).context("unpacking the tar context from standard input")?;
        } else {
            // A Dockerfile on stdin: empty context; `-f` is ignored, like docker.
            let df = tmp.path().join("Dockerfile");
            fs::write(&df, &data)?;
            args.file = Some(df);
        }
        args.context = dir;
        return Ok(Prepared {
            args,
            _tmp: Some(tmp),
        });
    }
    let mut tmp = None;
    if is_git_url(&ctx) {
        let t = tempfile::tempdir().context("creating a temporary directory for the clone")?;
        let (dir, git) = clone(&ctx, t.path())?;
        let commit = git.commit.clone();
        // Known provenance of a git context as manifest annotations (first, so an explicit
        // --annotation of the same key wins).
        args.annotations.splice(
            0..0,
            [
                format!(
                    "manifest:org.opencontainers.image.source={}",
                    public_url(&remote_of(&ctx))
                ),
                format!("manifest:org.opencontainers.image.revision={commit}"),
            ],
        );
        // With a remote context, -f is relative to the context (docker).
        if let Some(f) = &b.file {
            if f.is_relative() && f != Path::new("-") {
                args.file = Some(dir.join(f));
            }
        }
        args.context = dir;
        args.git_source = Some(git);
        tmp = Some(t);
    } else if !b.context.exists() {
        return Err(
            UsageError(format!("unable to prepare context: path {ctx:?} not found")).into(),
        );
    }
    if b.file.as_deref() == Some(Path::new("-")) {
        let mut data = Vec::new();
        std::io::stdin()
            .read_to_end(&mut data)
            .context("reading the Dockerfile from standard input")?;
        let t = match tmp.take() {
            Some(t) => t,
            None => tempfile::tempdir()?,
        };
        let df = t.path().join("Dockerfile");
        fs::write(&df, &data)?;
        args.file = Some(df);
        tmp = Some(t);
    }
    Ok(Prepared { args, _tmp: tmp })
}

/// A tar archive (ustar/GNU magic at offset 257) or gzip data.
pub fn is_tar(data: &[u8]) -> bool {
    data.starts_with(&[0x1f, 0x8b]) || data.get(257..262) == Some(b"ustar".as_slice())
}

/// Unpack a (gzip, zstd or plain) tar context with the `ADD` extractor: paths kept beneath
/// `dir` (`..`, absolute paths and symlinks never lead outside), extension headers bounded,
/// sparse files written with their holes, unsupported entry kinds refused.
fn unpack_tar(data: &[u8], dir: &Path) -> Result<()> {
    rbuild_oci::extract_archive(data, dir, None)?;
    Ok(())
}

/// Run git (`rbuild_solver::git`); returns its trimmed standard output.
fn git(args: &[&str], cwd: Option<&Path>) -> Result<String> {
    rbuild_solver::git(args, cwd)
        .map(|o| o.trim().to_string())
        .map_err(|e| anyhow!(e))
}

/// The repository URL of a git context (no `#fragment`; `github.com/…` → `https://github.com/…`).
fn remote_of(url: &str) -> String {
    let remote = url.split_once('#').map_or(url, |(r, _)| r);
    if remote.starts_with("github.com/") {
        format!("https://{remote}")
    } else {
        remote.to_string()
    }
}

/// Clone `url#ref:subdir` into `into/repo`; returns the context directory and the checkout.
fn clone(url: &str, into: &Path) -> Result<(PathBuf, GitSource)> {
    let fragment = url.split_once('#').map_or("", |(_, f)| f);
    let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    let remote = remote_of(url);
    if reference.starts_with('-') || remote.starts_with('-') {
        return Err(UsageError(format!(
            "invalid git context {url:?}: a ref may not start with '-'"
        ))
        .into());
    }
    let repo = into.join("repo");
    fs::create_dir(&repo)?;
    let r = || -> Result<GitSource> {
        git(&["init", "-q"], Some(&repo))?;
        let want = if reference.is_empty() {
            "HEAD"
        } else {
            reference
        };
        // Shallow fetch first; servers that refuse it (e.g. a commit id) get a full fetch.
        if git(&["fetch", "-q", "--depth", "1", &remote, want], Some(&repo)).is_err() {
            git(&["fetch", "-q", &remote], Some(&repo))?;
            git(&["checkout", "-q", want], Some(&repo))?;
        } else {
            git(&["checkout", "-q", "FETCH_HEAD"], Some(&repo))?;
        }
        rbuild_solver::ops::git::update_submodules(&repo).map_err(|e| anyhow!(e))?;
        let commit = git(&["rev-parse", "HEAD"], Some(&repo))?;
        let body = git(&["cat-file", "commit", &commit], Some(&repo))?;
        let time = crate::epoch::committer_time(&body)
            .ok_or_else(|| anyhow!("commit {commit} has no committer time"))?;
        Ok(GitSource {
            url: public_url(&remote),
            commit,
            time,
        })
    };
    let commit = r().with_context(|| format!("unable to prepare context: cloning {remote}"))?;
    let _ = fs::remove_dir_all(repo.join(".git"));
    let dir = repo.join(subdir.trim_start_matches('/'));
    if !dir.is_dir() {
        bail!("unable to prepare context: {subdir:?} is not a directory in {remote}");
    }
    Ok((dir, commit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_the_source_annotation() {
        assert_eq!(public_url("file:///srv/r.git"), "file:///srv/r.git");
    }

    #[test]
    fn git_urls_are_recognised() {
        assert!(is_git_url("https://github.com/org/repo.git"));
        assert!(is_git_url("https://example.com/repo#main:sub"));
        assert!(is_git_url("git@github.com:org/repo.git"));
        assert!(is_git_url("github.com/org/repo"));
        assert!(is_git_url("file:///srv/repo.git#v1"));
        assert!(!is_git_url("."));
        assert!(!is_git_url("https://example.com/context.tar.gz"));
    }

    #[test]
    fn tar_is_detected_by_content() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(1);
        h.set_cksum();
        b.append_data(&mut h, "a", &b"x"[..]).unwrap();
        let data = b.into_inner().unwrap();
        assert!(is_tar(&data));
        assert!(!is_tar(b"FROM busybox\n"));
        assert!(is_tar(&[0x1f, 0x8b, 8, 0]));
    }
}
