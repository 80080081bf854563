//! Keys of the steps that read their inputs (exec and file ops): per input either the input's
//! key or, for a local directory, the content checksums of exactly the paths the op selects
//! from it; and the [`StepRecord`] that explains the key.

use rbuild_cache::context::{checksum, ExcludeMatcher, Selector};
use rbuild_graph::{FileAction, MountKind, Op};

use super::{now_secs, Cx, Input, Keyed, Work};
use crate::cachekey::{node_key, InputPart};
use crate::explain::{InputRecord, StepRecord};
use crate::{SolveError, Value};

/// Per-file entry digests of one local input (path, digest).
type FileDigests = Vec<(String, String)>;

/// The keyed plan of an exec or file step whose work is `work`.
pub(crate) fn keyed_step<'a>(
    cx: Cx<'a>,
    inputs: &[Input],
    work: Work<'a>,
) -> Result<Keyed<'a>, SolveError> {
    let node = cx.node;
    let (parts, files) = input_parts(cx, inputs).map_err(|e| cx.step_error(e))?;
    let key = node_key(&node.op, &parts)?;
    let ignore_cache = node.meta.ignore_cache
        || node
            .meta
            .stage
            .as_ref()
            .is_some_and(|s| cx.solver.cfg.cache.no_cache_stages.iter().any(|f| f == s));
    let record = StepRecord {
        key: key.clone(),
        op: String::from_utf8_lossy(
            &rbuild_graph::canonical_json(&node.op, "op").unwrap_or_default(),
        )
        .into_owned(),
        inputs: parts
            .iter()
            .enumerate()
            .map(|(i, p)| match p {
                InputPart::Key(k) => InputRecord::Key {
                    key: k.clone(),
                    label: inputs.get(i).map(|x| x.label.clone()).unwrap_or_default(),
                },
                InputPart::Content(sels) => InputRecord::Content {
                    selectors: sels.clone(),
                    files: files.get(i).cloned().unwrap_or_default(),
                },
            })
            .collect(),
        build: cx.solver.cfg.cache.build_id.clone(),
        time: now_secs(),
    };
    Ok(Keyed {
        key,
        ignore_cache,
        record: Some(record),
        label: None,
        announced: None,
        work,
    })
}

/// Key parts per input: the input's key, or for a local directory the content checksums
/// of exactly the paths this op reads from it.
fn input_parts(
    cx: Cx<'_>,
    inputs: &[Input],
) -> Result<(Vec<InputPart>, Vec<FileDigests>), SolveError> {
    let node = cx.node;
    let store = &cx.solver.cfg.store;
    let mut parts = Vec::with_capacity(inputs.len());
    let mut all_files = vec![Vec::new(); inputs.len()];
    for (i, input) in inputs.iter().enumerate() {
        let dir = match &input.value {
            Value::Chain(_) => {
                parts.push(InputPart::Key(input.key.clone()));
                continue;
            }
            Value::Local(dir) => dir,
        };
        let exclude = ExcludeMatcher::new(&dir.exclude)?;
        let mut sels: Vec<Selector> = Vec::new();
        // Per selector, its `COPY --exclude` patterns (none for RUN mounts).
        let mut copy_excludes: Vec<Option<ExcludeMatcher>> = Vec::new();
        match &node.op {
            Op::File(f) => {
                for a in &f.actions {
                    if let FileAction::Copy(c) = a {
                        if c.src_input == i {
                            // `--parents` past a `/./` pivot copies what an include pattern
                            // (`**` spans directories) selects below the part before it: that
                            // whole part is read.
                            let path = match c.src.split_once("/./") {
                                Some((before, _)) if c.parents => before.to_string(),
                                _ => c.src.clone(),
                            };
                            sels.push(Selector {
                                path,
                                follow_symlinks: c.follow_symlinks,
                                allow_wildcard: c.allow_wildcard,
                            });
                            copy_excludes.push(if c.exclude.is_empty() {
                                None
                            } else {
                                Some(ExcludeMatcher::new(&c.exclude)?)
                            });
                        }
                    }
                }
            }
            Op::Exec(e) => {
                for m in &e.mounts {
                    if let (Some(mi), MountKind::Bind { source, .. }) = (m.input, &m.kind) {
                        if mi == i {
                            sels.push(Selector {
                                path: source.clone(),
                                follow_symlinks: true,
                                allow_wildcard: false,
                            });
                            copy_excludes.push(None);
                        }
                    }
                }
            }
            _ => {}
        }
        let mut sums = Vec::with_capacity(sels.len());
        for (sel, copy_exclude) in sels.iter().zip(&copy_excludes) {
            let sum = match checksum(store, &dir.path, sel, &exclude) {
                Ok(s) => match copy_exclude {
                    Some(ex) => {
                        let (digest, files) = without_excluded(sel, ex, s.files);
                        all_files[i].extend(files);
                        digest
                    }
                    None => {
                        all_files[i].extend(s.files);
                        s.digest
                    }
                },
                Err(rbuild_cache::CacheError::NotFound { .. })
                    if sel.allow_wildcard && has_glob(&sel.path) =>
                {
                    "none".to_string()
                }
                Err(rbuild_cache::CacheError::NotFound { .. }) => {
                    return Err(cx.fail(format!(
                        "failed to compute cache key: \"{}\" not found in build context",
                        sel.path
                    )))
                }
                Err(e) => return Err(e.into()),
            };
            sums.push((sel.path.clone(), sum));
        }
        parts.push(InputPart::Content(sums));
    }
    Ok((parts, all_files))
}

/// A copy selection's digest without the files its `COPY --exclude` patterns leave out, so
/// that editing an excluded file keeps the key (the patterns themselves are in the op's JSON).
/// Only non-directory entries are dropped, and only when the selection has no wildcard and
/// the entry lies under the selection's own path (no symlink resolved away from it); an entry
/// is dropped when a pattern matches the same text the copy tests ([`super::file`]): its path
/// in the context, its path below the selection, or, for a selected file itself, its name. So
/// the key never ignores a file the copy reads; anything less certain stays in the key.
fn without_excluded(
    sel: &Selector,
    ex: &ExcludeMatcher,
    files: Vec<(String, String)>,
) -> (String, Vec<(String, String)>) {
    let prefix = sel.path.trim_matches('/');
    let excluded = |p: &str| {
        if p.ends_with('/') || has_glob(&sel.path) {
            return false;
        }
        if p == prefix {
            let name = p.rsplit('/').next().unwrap_or(p);
            return ex.is_excluded(p) || ex.is_excluded(name);
        }
        let below = if prefix.is_empty() {
            Some(p)
        } else {
            p.strip_prefix(prefix).and_then(|r| r.strip_prefix('/'))
        };
        below.is_some_and(|b| ex.is_excluded(b) || ex.is_excluded(p))
    };
    let kept: Vec<(String, String)> = files.into_iter().filter(|(p, _)| !excluded(p)).collect();
    let mut rec = String::from("rbuild-selection-v1\n");
    for (p, d) in &kept {
        rec.push_str(&crate::cachekey::quote(p));
        rec.push(' ');
        rec.push_str(d);
        rec.push('\n');
    }
    (rbuild_graph::sha256_digest(rec.as_bytes()), kept)
}

pub(crate) fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}
