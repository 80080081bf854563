//! Remote sources: `ADD <http(s) url>` and `ADD <git url>`.
//!
//! Each produces a one-layer chain, committed and indexed like any other result:
//!
//! | source | cache key | output |
//! |---|---|---|
//! | http, `--checksum` pinned | the pinned digest + file name (no request on a hit) | one file, mode 0600, mtime from `Last-Modified` |
//! | http, unpinned | the downloaded body's sha256 + file name + `Last-Modified`; a later build asks with `If-None-Match` and a 304 reuses the remembered key (metadata namespace `http-etag`, like BuildKit's ETag check) | same |
//! | git | the commit the ref resolves to (`git ls-remote`) + `keep_git_dir` | the checked-out tree (submodules included), `.git` only with `--keep-git-dir` |
//!
//! Downloads go through [`rbuild_oci::http::fetch`]; git through the `git` CLI.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, UNIX_EPOCH};

use rbuild_graph::Node;

use crate::{Chain, Event, Progress, SolveError, Solver, Value};

/// Parameters of an http source.
pub(crate) struct HttpSource<'a> {
    pub url: &'a str,
    pub checksum: Option<&'a str>,
    pub filename: Option<&'a str>,
}

/// Parameters of a git source.
pub(crate) struct GitSource<'a> {
    pub remote: &'a str,
    pub reference: Option<&'a str>,
    pub keep_git_dir: bool,
    /// Commit the reference must resolve to (`ADD --checksum`); a prefix of it is accepted.
    pub checksum: Option<&'a str>,
}

impl Solver {
    /// Solve an http source node. Returns (key, value, was_cached).
    pub(crate) fn solve_http(
        &self,
        id: usize,
        node: &Node,
        src: &HttpSource<'_>,
        progress: &dyn Progress,
    ) -> Result<(String, Value, bool), SolveError> {
        let name = node.meta.description.clone();
        let fail = |message: String| SolveError::Step {
            step: name.clone(),
            message,
            lines: node.meta.lines,
        };
        if let Some(c) = src.checksum {
            if !valid_sha256(c) {
                return Err(fail(format!(
                    "invalid checksum {c:?}: expected sha256:<64 hex digits>"
                )));
            }
        }
        let pinned_key = src.checksum.map(|c| {
            rbuild_graph::sha256_digest(
                format!(
                    "rbuild-key-v1\nhttp pinned {c} {}",
                    src.filename.unwrap_or("")
                )
                .as_bytes(),
            )
        });
        if let (Some(key), false) = (&pinned_key, node.meta.ignore_cache) {
            if let Some(chain) = self.lookup_chain(key)? {
                progress.event(Event::Cached { vertex: id, name });
                return Ok((key.clone(), Value::Chain(chain), true));
            }
        }
        let t = Instant::now();
        progress.event(Event::Started {
            vertex: id,
            name: name.clone(),
        });
        let store = &self.cfg.store;
        let tmp = store.new_tmp_path("http");
        fs::create_dir_all(&tmp)
            .map_err(|e| SolveError::io(format!("creating {}", tmp.display()), e))?;
        let body = tmp.join("body");
        // Unpinned: revalidate the remembered download with its ETag.
        let remembered: Option<EtagRecord> = if src.checksum.is_none() && !node.meta.ignore_cache {
            store
                .meta_get(ETAG_NS, src.url)?
                .and_then(|v| serde_json::from_str(&v).ok())
        } else {
            None
        };
        let outcome = rbuild_oci::http::fetch_if_changed(
            &self.cfg.registry,
            src.url,
            &body,
            remembered.as_ref().map(|r| r.etag.as_str()),
        );
        if let (Ok(rbuild_oci::http::Fetch::NotModified), Some(r)) = (&outcome, &remembered) {
            if let Some(chain) = self.lookup_chain(&r.key)? {
                let _ = fs::remove_dir_all(&tmp);
                progress.event(Event::Done {
                    vertex: id,
                    seconds: t.elapsed().as_secs_f64(),
                });
                return Ok((r.key.clone(), Value::Chain(chain), true));
            }
        }
        let fetched = match outcome {
            Ok(rbuild_oci::http::Fetch::Fetched(f)) => Ok(f),
            // A 304 whose result is gone from the store: fetch unconditionally.
            Ok(rbuild_oci::http::Fetch::NotModified) => {
                rbuild_oci::http::fetch(&self.cfg.registry, src.url, &body)
            }
            Err(e) => Err(e),
        };
        let result = (|| {
            let fetched = fetched.map_err(|e| fail(e.to_string()))?;
            if let Some(c) = src.checksum {
                if c != fetched.digest {
                    return Err(fail(format!(
                        "checksum mismatch for {}: expected {c}, got {}",
                        src.url, fetched.digest
                    )));
                }
            }
            let filename = src
                .filename
                .map(str::to_string)
                .or_else(|| fetched.filename.clone())
                .unwrap_or_else(|| url_basename(src.url));
            // The name is one path component inside the layer, never a way out of it.
            let filename = if filename.is_empty()
                || filename == "."
                || filename == ".."
                || filename.contains(['/', '\0'])
            {
                "__unnamed__".to_string()
            } else {
                filename
            };
            let key = match pinned_key {
                Some(k) => k,
                None => rbuild_graph::sha256_digest(
                    format!(
                        "rbuild-key-v2\nhttp {} {} {}",
                        fetched.digest,
                        crate::cachekey::quote(&filename),
                        fetched
                            .last_modified
                            .map_or_else(|| "-".to_string(), |t| t.to_string())
                    )
                    .as_bytes(),
                ),
            };
            if let (Some(etag), None) = (&fetched.etag, src.checksum) {
                let rec = EtagRecord {
                    etag: etag.clone(),
                    key: key.clone(),
                };
                if let Ok(v) = serde_json::to_string(&rec) {
                    store.meta_put(ETAG_NS, src.url, &v)?;
                }
            }
            if !node.meta.ignore_cache {
                if let Some(chain) = self.lookup_chain(&key)? {
                    return Ok((key, chain, true));
                }
            }
            let snap = store.new_snapshot()?;
            let dest = snap.fs.join(&filename);
            let placed = (|| -> std::io::Result<()> {
                if fs::rename(&body, &dest).is_err() {
                    // Different filesystems: copy instead.
                    fs::copy(&body, &dest)?;
                    fs::remove_file(&body)?;
                }
                fs::set_permissions(&dest, fs::Permissions::from_mode(0o600))?;
                if let Some(m) = fetched.last_modified.and_then(|s| u64::try_from(s).ok()) {
                    let f = fs::File::options().write(true).open(&dest)?;
                    f.set_modified(UNIX_EPOCH + Duration::from_secs(m))?;
                }
                Ok(())
            })();
            if let Err(e) = placed {
                let _ = store.remove_snapshot(&snap.id);
                return Err(SolveError::io(format!("placing {}", dest.display()), e));
            }
            let layer = self.commit_layer(&snap)?;
            let chain: Chain = vec![layer];
            self.record_chain(&key, &chain)?;
            Ok((key, chain, false))
        })();
        let _ = fs::remove_dir_all(&tmp);
        let (key, chain, cached) = result?;
        progress.event(Event::Done {
            vertex: id,
            seconds: t.elapsed().as_secs_f64(),
        });
        Ok((key, Value::Chain(chain), cached))
    }

    /// Solve a git source node. Returns (key, value, was_cached).
    pub(crate) fn solve_git(
        &self,
        id: usize,
        node: &Node,
        src: &GitSource<'_>,
        progress: &dyn Progress,
    ) -> Result<(String, Value, bool), SolveError> {
        let name = node.meta.description.clone();
        let fail = |message: String| SolveError::Step {
            step: name.clone(),
            message,
            lines: node.meta.lines,
        };
        let commit = resolve_git_ref(src.remote, src.reference).map_err(&fail)?;
        if let Some(want) = src.checksum {
            let want = want.trim().to_ascii_lowercase();
            if want.len() < 7 || !commit.starts_with(&want) {
                return Err(fail(format!(
                    "checksum mismatch for {}: expected commit {want}, {} resolves to {commit}",
                    src.remote,
                    src.reference.unwrap_or("HEAD")
                )));
            }
        }
        let key = rbuild_graph::sha256_digest(
            format!(
                "rbuild-key-v1\ngit {commit} keep_git_dir={}",
                src.keep_git_dir
            )
            .as_bytes(),
        );
        if !node.meta.ignore_cache {
            if let Some(chain) = self.lookup_chain(&key)? {
                progress.event(Event::Cached { vertex: id, name });
                return Ok((key, Value::Chain(chain), true));
            }
        }
        let t = Instant::now();
        progress.event(Event::Started {
            vertex: id,
            name: name.clone(),
        });
        let store = &self.cfg.store;
        let snap = store.new_snapshot()?;
        if let Err(m) = checkout(src.remote, &commit, &snap.fs, src.keep_git_dir) {
            let _ = store.remove_snapshot(&snap.id);
            return Err(fail(m));
        }
        let layer = self.commit_layer(&snap)?;
        let chain: Chain = vec![layer];
        self.record_chain(&key, &chain)?;
        progress.event(Event::Done {
            vertex: id,
            seconds: t.elapsed().as_secs_f64(),
        });
        Ok((key, Value::Chain(chain), false))
    }

    fn lookup_chain(&self, key: &str) -> Result<Option<Chain>, SolveError> {
        let Some(entry) = self.cfg.store.index_get(key)? else {
            return Ok(None);
        };
        let Ok(rec) = serde_json::from_str::<ChainRecord>(&entry.value) else {
            return Ok(None);
        };
        let store = &self.cfg.store;
        if rec.chain.iter().all(|l| {
            store.snapshot_exists(&l.snapshot) && (l.blob.is_empty() || store.has_blob(&l.blob))
        }) {
            let _ = store.index_touch(key);
            Ok(Some(rec.chain))
        } else {
            Ok(None)
        }
    }

    fn record_chain(&self, key: &str, chain: &Chain) -> Result<(), SolveError> {
        let json = serde_json::to_string(&ChainRecord {
            chain: chain.clone(),
        })
        .map_err(|e| SolveError::BadRecord {
            key: key.to_string(),
            message: e.to_string(),
        })?;
        self.cfg.store.index_put(key, &json)?;
        Ok(())
    }
}

/// Metadata namespace: URL → the ETag of its last download and the key it produced.
const ETAG_NS: &str = "http-etag";

#[derive(serde::Serialize, serde::Deserialize)]
struct EtagRecord {
    etag: String,
    key: String,
}

/// Same shape as the scheduler's index records.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChainRecord {
    chain: Chain,
}

fn valid_sha256(c: &str) -> bool {
    c.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Last path segment of a URL (query and fragment removed), or `__unnamed__` like BuildKit.
pub fn url_basename(url: &str) -> String {
    let no_frag = url.split(['?', '#']).next().unwrap_or(url);
    let path = no_frag
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(no_frag)
        .split_once('/')
        .map(|(_, p)| p)
        .unwrap_or("");
    match path.trim_end_matches('/').rsplit('/').next() {
        Some(b) if !b.is_empty() && b != "." && b != ".." => b.to_string(),
        _ => "__unnamed__".to_string(),
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
    if dest.join(".gitmodules").exists() {
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
            Some(dest),
        )?;
    }
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
    fn url_basenames() {
        assert_eq!(url_basename("https://x.org/a/b.tar.gz?x=1#f"), "b.tar.gz");
        assert_eq!(url_basename("http://x.org/"), "__unnamed__");
        assert_eq!(url_basename("http://x.org"), "__unnamed__");
        assert_eq!(url_basename("http://x.org/dir/"), "dir");
    }

    #[test]
    fn checksum_format() {
        assert!(valid_sha256(&format!("sha256:{}", "a".repeat(64))));
        assert!(!valid_sha256("sha256:abc"));
        assert!(!valid_sha256(&format!("md5:{}", "a".repeat(64))));
    }

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
