//! Keys of the steps that read their inputs (exec and file ops): per input either the input's
//! key or, for a local directory, the content checksums of exactly the paths the op selects
//! from it; and the [`StepRecord`] that explains the key.
//!
//! Every exec and file step also has a second key: its input keys replaced by their aliases,
//! and an input read only as a copy source or through bind or cache mounts by the content of
//! the selections read there (BuildKit v0.25's content-based cache keys of `FileOp` copy
//! sources and `ExecOp` mounts: read-only, `rw` (never an output) or the whole result, never
//! the root mount or the copy destination). It needs that result's files, and planning reads keys only, so it
//! is used in the step's work: once the inputs are built, the second key is looked up (under
//! its key lock) before the step runs, and a run records it. A hit there skips the run; the
//! scheduler records the first key for the same result. So rebuilding a stage whose mounted
//! selection did not change keeps the step cached, as in BuildKit (the work notes the reuse in
//! `Solver::reused` and the scheduler reports the step `CACHED`). Second keys stay local: a
//! cache export carries first keys only.

use std::path::Path;

use rbuild_cache::context::{checksum, checksum_tree, ExcludeMatcher, Selector};
use rbuild_graph::{FileAction, MountKind, Op};

use super::{now_secs, Cx, Input, Keyed, Work};
use crate::cachekey::{node_key, InputPart};
use crate::explain::{InputRecord, StepRecord};
use crate::{Chain, Event, SolveError, Solver, Value};

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
                InputPart::Content(sels) | InputPart::Selected(sels) => InputRecord::Content {
                    selectors: sels.clone(),
                    files: files.get(i).cloned().unwrap_or_default(),
                },
            })
            .collect(),
        build: cx.solver.cfg.cache.build_id.clone(),
        time: now_secs(),
    };
    let mounted = mounted_selections(&node.op, inputs);
    let work = second_keyed(cx, key.clone(), parts, mounted, ignore_cache, work);
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

/// Per input read from another step's result only as a copy source or through bind or cache
/// mounts, the selections read there (BuildKit v0.25's content-based keys of `FileOp` copy
/// sources and `ExecOp` mounts). Mount paths are deduplicated as BuildKit's `dedupePaths`
/// (a path below another selected one dropped, `/` the whole result). The root mount's or
/// copy destination's input, local directories and other kinds of use are not listed.
fn mounted_selections(op: &Op, inputs: &[Input]) -> Vec<(usize, Vec<Selector>)> {
    let mut out: Vec<(usize, Vec<Selector>)> = Vec::new();
    let mut excluded: Vec<usize> = Vec::new();
    let mut add = |i: usize, sel: Selector| {
        if !matches!(inputs.get(i).map(|x| &x.value), Some(Value::Chain(_))) {
            return;
        }
        match out.iter_mut().find(|(j, _)| *j == i) {
            Some((_, sels)) => sels.push(sel),
            None => out.push((i, vec![sel])),
        }
    };
    match op {
        Op::Exec(e) => {
            for (n, m) in e.mounts.iter().enumerate() {
                let Some(i) = m.input else { continue };
                let source = match &m.kind {
                    MountKind::Bind { source, .. } if !(n == 0 && m.target == "/") => source,
                    MountKind::Cache { source, .. } => source,
                    _ => {
                        excluded.push(i);
                        continue;
                    }
                };
                add(
                    i,
                    Selector {
                        path: format!("/{}", source.trim_matches('/')),
                        follow_symlinks: true,
                        allow_wildcard: false,
                    },
                );
            }
        }
        Op::File(f) => {
            excluded.extend(f.dest_input);
            for a in &f.actions {
                if let FileAction::Copy(c) = a {
                    // As the copy reads it: the part before a `--parents` pivot whole.
                    let path = match c.src.split_once("/./") {
                        Some((before, _)) if c.parents => before.to_string(),
                        _ => c.src.clone(),
                    };
                    let allow_wildcard = c.allow_wildcard && has_glob(&path);
                    add(
                        c.src_input,
                        Selector {
                            path,
                            follow_symlinks: c.follow_symlinks,
                            allow_wildcard,
                        },
                    );
                }
            }
        }
        _ => {}
    }
    out.retain(|(i, _)| !excluded.contains(i));
    for (_, sels) in &mut out {
        sels.sort_by(|a, b| {
            (&a.path, a.follow_symlinks, a.allow_wildcard).cmp(&(
                &b.path,
                b.follow_symlinks,
                b.allow_wildcard,
            ))
        });
        sels.dedup();
        let plain: Vec<String> = sels
            .iter()
            .filter(|s| !s.allow_wildcard)
            .map(|s| s.path.clone())
            .collect();
        sels.retain(|s| {
            s.allow_wildcard
                || !plain
                    .iter()
                    .any(|q| *q != s.path && (q == "/" || s.path.starts_with(&format!("{q}/"))))
        });
    }
    out
}

/// The metadata namespace of key aliases: a step's first key → its second key.
const ALIAS_NS: &str = "key-alias";

/// `work` behind the step's second key: the key of `parts` with each input key replaced by
/// its alias (the second key the input's step had, so a stage rebuilt to the same content
/// keys its dependents alike) and each mounted input by the content of its selections. When
/// that key differs from the first, it is looked up (under its lock) once the inputs are
/// built and its result returned; otherwise `work` runs and its result is recorded under it
/// too. Either way the first key gets the second as its alias.
fn second_keyed<'a>(
    cx: Cx<'a>,
    first: String,
    parts: Vec<InputPart>,
    mounted: Vec<(usize, Vec<Selector>)>,
    ignore_cache: bool,
    work: Work<'a>,
) -> Work<'a> {
    Box::new(move |inputs: &[Input]| {
        let solver = cx.solver;
        let store = &solver.cfg.store;
        let mut second = parts;
        for part in &mut second {
            if let InputPart::Key(k) = part {
                if let Some(alias) = store.meta_get(ALIAS_NS, k)? {
                    *k = alias;
                }
            }
        }
        for (i, sels) in &mounted {
            let (Some(Value::Chain(chain)), Some(slot)) =
                (inputs.get(*i).map(|x| &x.value), second.get_mut(*i))
            else {
                continue;
            };
            // A selection that is not there keeps the input's key (the mount reports it).
            if let Some(sums) = solver.selection_digests(chain, sels)? {
                *slot = InputPart::Selected(sums);
            }
        }
        let key = node_key(&cx.node.op, &second)?;
        if key == first {
            return work(inputs);
        }
        let _lock = solver.key_lock(&key)?;
        if !ignore_cache {
            if let Some(rec) = solver.lookup_local(&key)? {
                if solver.cfg.cache.explain {
                    cx.progress.event(Event::Explain {
                        vertex: cx.vertex,
                        reason: "what the step reads is unchanged: its result is reused".into(),
                    });
                }
                store.meta_put(ALIAS_NS, &first, &key)?;
                if let Ok(mut reused) = solver.reused.lock() {
                    reused.insert(first.clone());
                }
                return Ok(rec.chain);
            }
        }
        let chain = work(inputs)?;
        solver.record(&key, &chain)?;
        store.meta_put(ALIAS_NS, &first, &key)?;
        Ok(chain)
    })
}

impl Solver {
    /// Content checksums of what `sels` select in the merged view of `chain`: an overlay
    /// mounted read-only in a private mount namespace, or in copy mode a materialized copy.
    /// `None` when a selection matches nothing.
    fn selection_digests(
        &self,
        chain: &Chain,
        sels: &[Selector],
    ) -> Result<Option<Vec<(String, String)>>, SolveError> {
        let sum_all = |root: &Path| -> Result<Option<Vec<(String, String)>>, SolveError> {
            let mut sums = Vec::with_capacity(sels.len());
            for sel in sels {
                // The flags are part of what is read: they label the digest.
                let label = format!(
                    "{}{}{}",
                    sel.path,
                    if sel.follow_symlinks { " follow" } else { "" },
                    if sel.allow_wildcard { " wildcard" } else { "" }
                );
                match checksum_tree(root, sel) {
                    Ok(c) => sums.push((label, c.digest)),
                    Err(rbuild_cache::CacheError::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(Some(sums))
        };
        // Copy mode: a materialized copy, removed when dropped.
        if let Some(root) = self.copy_work_root(chain)? {
            return sum_all(root.dir());
        }
        let lowers = self.lowers(chain)?;
        let dir = self.cfg.store.new_tmp_path("selection");
        std::fs::create_dir_all(&dir)
            .map_err(|e| SolveError::io(format!("creating {}", dir.display()), e))?;
        let result = rbuild_executor::with_private_mounts(|m| {
            m.overlay_ro(&lowers, &dir)?;
            sum_all(&dir)
        });
        let _ = std::fs::remove_dir(&dir);
        result?
    }
}
