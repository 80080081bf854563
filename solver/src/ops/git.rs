//! Git sources (`ADD <git url>#ref:subdir`) and rbuild's one git runner.
//!
//! The key is the commit the ref resolves to (`git ls-remote`) and `keep_git_dir`; the remote
//! URL and the ref's name never enter it. On a miss the commit is checked out with the `git`
//! CLI into a one-layer chain (submodules included, `.git` only with `--keep-git-dir`).

use std::fs;
use std::path::Path;
use std::process::Command;

use super::{Cx, Input, Keyed, OpKind, Plan};
use crate::{Chain, SolveError};

/// `Source(Git)`.
pub struct GitOp;

impl OpKind for GitOp {
    fn plan<'a>(&'a self, cx: Cx<'a>, _inputs: &[Input]) -> Result<Plan<'a>, SolveError> {
        let rbuild_graph::Op::Source(rbuild_graph::SourceOp::Git {
            remote,
            reference,
            keep_git_dir,
            checksum,
        }) = &cx.node.op
        else {
            return Err(cx.fail("not a git source"));
        };
        let commit = resolve_git_ref(remote, reference.as_deref()).map_err(|m| cx.fail(m))?;
        if let Some(want) = checksum {
            let want = want.trim().to_ascii_lowercase();
            if want.len() < 7 || !commit.starts_with(&want) {
                return Err(cx.fail(format!(
                    "checksum mismatch for {remote}: expected commit {want}, {} resolves to {commit}",
                    reference.as_deref().unwrap_or("HEAD")
                )));
            }
        }
        let key = rbuild_graph::sha256_digest(
            format!("rbuild-key-v1\ngit {commit} keep_git_dir={keep_git_dir}").as_bytes(),
        );
        Ok(Plan::Keyed(Keyed {
            key,
            ignore_cache: cx.node.meta.ignore_cache,
            record: None,
            label: None,
            announced: None,
            work: Box::new(move |_: &[Input]| {
                let store = &cx.solver.cfg.store;
                let snap = store.new_snapshot()?;
                if let Err(m) = checkout(remote, &commit, &snap.fs, *keep_git_dir) {
                    let _ = store.remove_snapshot(&snap.id);
                    return Err(cx.fail(m));
                }
                let layer = cx.solver.commit_layer(&snap)?;
                let chain: Chain = vec![layer];
                Ok(chain)
            }),
        }))
    }
}

/// Run the `git` CLI: rbuild's one git runner (`ADD <git url>`, git build contexts, the
/// context's commit time). In `dir` when given; never prompts (`GIT_TERMINAL_PROMPT=0`, stdin
/// null); ignores the system config, the caller's `GIT_DIR`/`GIT_WORK_TREE` and a repository's
/// `core.fsmonitor` hook (a context's `.git/config` is untrusted and must not run commands).
/// Returns standard output (untrimmed), or an error naming the command with git's stderr.
pub fn git(args: &[&str], dir: Option<&Path>) -> Result<String, String> {
    let mut cmd = Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    cmd.args([
        "-c",
        "protocol.file.allow=always",
        "-c",
        "advice.detachedHead=false",
        "-c",
        "core.fsmonitor=false",
        "--no-pager",
    ])
    .args(args)
    .env("GIT_TERMINAL_PROMPT", "0")
    .env("GIT_CONFIG_NOSYSTEM", "1")
    .env_remove("GIT_DIR")
    .env_remove("GIT_WORK_TREE")
    .stdin(std::process::Stdio::null());
    let out = cmd.output().map_err(|e| {
        format!("running git (needed for git sources and contexts; install it, e.g. apt-get install git): {e}")
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!("git {}: {}", args.join(" "), err.trim()))
    }
}

fn is_commit_sha(r: &str) -> bool {
    r.len() == 40 && r.chars().all(|c| c.is_ascii_hexdigit())
}

/// Resolve `reference` (branch, tag, full ref or commit; `None` = the remote's HEAD) to a
/// commit id.
pub fn resolve_git_ref(remote: &str, reference: Option<&str>) -> Result<String, String> {
    if let Some(r) = reference.filter(|r| is_commit_sha(r)) {
        return Ok(r.to_ascii_lowercase());
    }
    let want = reference.unwrap_or("HEAD");
    let out = git(&["ls-remote", "--", remote], None)?;
    let refs: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(sha, r)| (sha.trim(), r.trim()))
        .collect();
    let candidates = [
        format!("refs/tags/{want}^{{}}"),
        format!("refs/tags/{want}"),
        format!("refs/heads/{want}"),
        format!("{want}^{{}}"),
        want.to_string(),
    ];
    for c in &candidates {
        if let Some((sha, _)) = refs.iter().find(|(_, r)| r == c) {
            return Ok((*sha).to_string());
        }
    }
    Err(format!("git ref {want:?} not found in {remote}"))
}

/// Check out the submodules of the work tree `dir`, if it has any (shallow, recursive): git
/// build contexts and `ADD <git url>` both include them, as BuildKit does.
pub fn update_submodules(dir: &Path) -> Result<(), String> {
    if dir.join(".gitmodules").is_file() {
        git(
            &[
                "submodule",
                "update",
                "-q",
                "--init",
                "--recursive",
                "--depth",
                "1",
            ],
            Some(dir),
        )?;
    }
    Ok(())
}

/// Check `commit` of `remote` out into `dest` (an empty directory).
fn checkout(remote: &str, commit: &str, dest: &Path, keep_git_dir: bool) -> Result<(), String> {
    git(&["init", "-q"], Some(dest))?;
    git(&["remote", "add", "origin", remote], Some(dest))?;
    if git(
        &["fetch", "-q", "--depth", "1", "origin", commit],
        Some(dest),
    )
    .is_err()
    {
        git(&["fetch", "-q", "--tags", "origin"], Some(dest))?;
    }
    git(&["checkout", "-q", "--detach", commit], Some(dest))?;
    update_submodules(dest)?;
    if !keep_git_dir {
        let g = dest.join(".git");
        fs::remove_dir_all(&g).map_err(|e| format!("removing {}: {e}", g.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_refs_resolve_against_a_local_repo() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("r");
        fs::create_dir(&repo).unwrap();
        let run = |args: &[&str]| {
            let ok = Command::new("git")
                .arg("-C")
                .arg(&repo)
                .args(["-c", "user.name=t", "-c", "user.email=t@e"])
                .args(args)
                .status()
                .unwrap()
                .success();
            assert!(ok, "git {args:?}");
        };
        run(&["init", "-q", "-b", "main"]);
        fs::write(repo.join("f"), "1").unwrap();
        run(&["add", "f"]);
        run(&["commit", "-q", "-m", "one"]);
        run(&["tag", "-a", "v1", "-m", "v1"]);
        fs::write(repo.join("f"), "2").unwrap();
        run(&["commit", "-q", "-am", "two"]);
        let url = format!("file://{}", repo.display());
        let head = resolve_git_ref(&url, None).unwrap();
        let main = resolve_git_ref(&url, Some("main")).unwrap();
        let v1 = resolve_git_ref(&url, Some("v1")).unwrap();
        assert_eq!(head, main);
        assert_ne!(v1, main);
        assert!(is_commit_sha(&v1));
        assert!(resolve_git_ref(&url, Some("nope")).is_err());
        let out = d.path().join("out");
        fs::create_dir(&out).unwrap();
        checkout(&url, &v1, &out, false).unwrap();
        assert_eq!(fs::read_to_string(out.join("f")).unwrap(), "1");
        assert!(!out.join(".git").exists());
    }
}
