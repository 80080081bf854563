//! Http sources (`ADD <http(s) url>`): one file in a one-layer chain (mode 0600, mtime from
//! `Last-Modified`), downloaded through [`rbuild_oci::http`] (the registry client's agent:
//! certs.d CAs, retries).
//!
//! | case | key | request |
//! |---|---|---|
//! | `--checksum` pinned | the pinned digest + file name | none on a hit |
//! | unpinned | the body's sha256 + file name + `Last-Modified` | `If-None-Match` with the remembered ETag (metadata `http-etag`); a 304 reuses the remembered key, like BuildKit's ETag check |
//!
//! An unpinned download happens while planning (the key is the body's digest), so the step is
//! announced before it and the downloaded body is what the work places.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::{Cx, Input, Keyed, OpKind, Plan};
use crate::{Chain, Event, SolveError};

/// `Source(Http)`.
pub struct HttpOp;

/// Metadata namespace: URL → the ETag of its last download and the key it produced.
const ETAG_NS: &str = "http-etag";

#[derive(serde::Serialize, serde::Deserialize)]
struct EtagRecord {
    etag: String,
    key: String,
}

/// A download directory in the store's `tmp/`, removed when dropped.
struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl OpKind for HttpOp {
    fn plan<'a>(&'a self, cx: Cx<'a>, _inputs: &[Input]) -> Result<Plan<'a>, SolveError> {
        let rbuild_graph::Op::Source(rbuild_graph::SourceOp::Http {
            url,
            checksum,
            filename,
        }) = &cx.node.op
        else {
            return Err(cx.fail("not an http source"));
        };
        let (url, checksum, filename) = (url.as_str(), checksum.as_deref(), filename.as_deref());
        if let Some(c) = checksum {
            if !valid_sha256(c) {
                return Err(cx.fail(format!(
                    "invalid checksum {c:?}: expected sha256:<64 hex digits>"
                )));
            }
        }
        let solver = cx.solver;
        let store = &solver.cfg.store;
        let ignore_cache = cx.node.meta.ignore_cache;
        let new_tmp = || -> Result<TmpDir, SolveError> {
            let tmp = store.new_tmp_path("http");
            fs::create_dir_all(&tmp)
                .map_err(|e| SolveError::io(format!("creating {}", tmp.display()), e))?;
            Ok(TmpDir(tmp))
        };
        // Pinned: the key is known before any request.
        if let Some(c) = checksum {
            let key = rbuild_graph::sha256_digest(
                format!("rbuild-key-v1\nhttp pinned {c} {}", filename.unwrap_or("")).as_bytes(),
            );
            return Ok(Plan::Keyed(Keyed {
                key,
                ignore_cache,
                record: None,
                label: None,
                announced: None,
                work: Box::new(move |_: &[Input]| {
                    let tmp = new_tmp()?;
                    let body = tmp.0.join("body");
                    let fetched = rbuild_oci::http::fetch(&solver.cfg.registry, url, &body)
                        .map_err(|e| cx.fail(e.to_string()))?;
                    if c != fetched.digest {
                        return Err(cx.fail(format!(
                            "checksum mismatch for {url}: expected {c}, got {}",
                            fetched.digest
                        )));
                    }
                    place(cx, &body, filename, &fetched, url)
                }),
            }));
        }
        // Unpinned: the key is the body's digest, so the download (or its revalidation)
        // happens now.
        let started = Instant::now();
        cx.progress.event(Event::Started {
            vertex: cx.vertex,
            name: cx.node.meta.description.clone(),
        });
        let tmp = new_tmp()?;
        let body = tmp.0.join("body");
        let remembered: Option<EtagRecord> = if ignore_cache {
            None
        } else {
            store
                .meta_get(ETAG_NS, url)?
                .and_then(|v| serde_json::from_str(&v).ok())
        };
        let outcome = rbuild_oci::http::fetch_if_changed(
            &solver.cfg.registry,
            url,
            &body,
            remembered.as_ref().map(|r| r.etag.as_str()),
        );
        if let (Ok(rbuild_oci::http::Fetch::NotModified), Some(r)) = (&outcome, &remembered) {
            if solver.lookup_local(&r.key)?.is_some() {
                // Unchanged and still cached: the scheduler's lookup hits. Should the result
                // vanish before it (a concurrent prune), the work downloads again and refuses
                // a body that no longer matches the remembered key.
                let key = r.key.clone();
                return Ok(Plan::Keyed(Keyed {
                    key: key.clone(),
                    ignore_cache,
                    record: None,
                    label: None,
                    announced: Some(started),
                    work: Box::new(move |_: &[Input]| {
                        let _tmp = tmp;
                        let fetched = rbuild_oci::http::fetch(&solver.cfg.registry, url, &body)
                            .map_err(|e| cx.fail(e.to_string()))?;
                        let name = file_name(filename, &fetched, url);
                        if unpinned_key(&fetched, &name) != key {
                            return Err(cx.fail(format!(
                                "{url} changed while it was being built (its ETag did not)"
                            )));
                        }
                        place(cx, &body, filename, &fetched, url)
                    }),
                }));
            }
        }
        let fetched = match outcome {
            Ok(rbuild_oci::http::Fetch::Fetched(f)) => Ok(f),
            // A 304 whose result is gone from the store: fetch unconditionally.
            Ok(rbuild_oci::http::Fetch::NotModified) => {
                rbuild_oci::http::fetch(&solver.cfg.registry, url, &body)
            }
            Err(e) => Err(e),
        }
        .map_err(|e| cx.fail(e.to_string()))?;
        let name = file_name(filename, &fetched, url);
        let key = unpinned_key(&fetched, &name);
        if let Some(etag) = &fetched.etag {
            let rec = EtagRecord {
                etag: etag.clone(),
                key: key.clone(),
            };
            if let Ok(v) = serde_json::to_string(&rec) {
                store.meta_put(ETAG_NS, url, &v)?;
            }
        }
        Ok(Plan::Keyed(Keyed {
            key,
            ignore_cache,
            record: None,
            label: None,
            announced: Some(started),
            work: Box::new(move |_: &[Input]| {
                let _tmp = tmp;
                place(cx, &body, filename, &fetched, url)
            }),
        }))
    }
}

/// The key of an unpinned download.
fn unpinned_key(fetched: &rbuild_oci::http::Fetched, name: &str) -> String {
    rbuild_graph::sha256_digest(
        format!(
            "rbuild-key-v2\nhttp {} {} {}",
            fetched.digest,
            crate::cachekey::quote(name),
            fetched
                .last_modified
                .map_or_else(|| "-".to_string(), |t| t.to_string())
        )
        .as_bytes(),
    )
}

/// The file's name in the layer: the op's explicit name, the server's, or the URL's last
/// segment; one path component, never a way out of the layer.
fn file_name(explicit: Option<&str>, fetched: &rbuild_oci::http::Fetched, url: &str) -> String {
    let name = explicit
        .map(str::to_string)
        .or_else(|| fetched.filename.clone())
        .unwrap_or_else(|| url_basename(url));
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        "__unnamed__".to_string()
    } else {
        name
    }
}

/// Move the downloaded body into a new one-layer chain.
fn place(
    cx: Cx<'_>,
    body: &Path,
    filename: Option<&str>,
    fetched: &rbuild_oci::http::Fetched,
    url: &str,
) -> Result<Chain, SolveError> {
    let store = &cx.solver.cfg.store;
    let name = file_name(filename, fetched, url);
    let snap = store.new_snapshot()?;
    let dest = snap.fs.join(&name);
    let placed = (|| -> std::io::Result<()> {
        if fs::rename(body, &dest).is_err() {
            // Different filesystems: copy instead.
            fs::copy(body, &dest)?;
            fs::remove_file(body)?;
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
    Ok(vec![cx.solver.commit_layer(&snap)?])
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
}
