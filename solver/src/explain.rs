//! Explained cache misses and hits.
//!
//! Every keyed step (image source, exec, file) has a *step identity* that survives edits of
//! the inputs: `sha256(scope, stage, ordinal of the node within its stage)`, where the scope
//! is chosen by the caller (the CLI uses the Dockerfile path and target, plus the platform in
//! a multi-platform build: [`crate::Solver::solve_variant`]). After a step is
//! solved, the store's metadata table remembers, under that identity, the key it had and a
//! [`StepRecord`] with what went into the key (op JSON, each input's key and label, the
//! per-file digests of context selections). The next build whose key differs diffs its
//! record against the remembered one and names the cause: a context file, a build arg or env
//! value, the base image digest, an earlier step, or the instruction itself.
//!
//! Metadata namespaces: `step-key` (identity → key, read on every build, tiny) and `step`
//! (identity → record JSON, written only when the key changed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rbuild_graph::{sha256_digest, Definition, Op, SourceOp};
use serde::{Deserialize, Serialize};

const KEY_NS: &str = "step-key";
const RECORD_NS: &str = "step";
/// How many paths an explanation lists before summarising.
const MAX_PATHS: usize = 5;

/// Per-build cache behaviour chosen by the caller.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Emit [`crate::Event::Explain`] for every keyed step.
    pub explain: bool,
    /// Identifies "the same build" across runs (e.g. Dockerfile path + target); part of the
    /// step identity.
    pub scope: String,
    /// Stages (by name or `stage-N` label) whose steps ignore the cache (`--no-cache-filter`).
    pub no_cache_stages: Vec<String>,
    /// Id of this build, recorded in the index entries it creates.
    pub build_id: String,
    /// Set to stop the build: no new step starts, the solve returns `Cancelled`.
    pub cancel: Arc<AtomicBool>,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            explain: false,
            scope: String::new(),
            no_cache_stages: Vec::new(),
            build_id: new_build_id(),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// A fresh build id: `b` + 12 hex digits derived from the time and the pid.
pub fn new_build_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let d = sha256_digest(format!("{now} {}", std::process::id()).as_bytes());
    let hex = d.trim_start_matches("sha256:");
    format!("b{}", &hex[..12.min(hex.len())])
}

/// One input of a step as remembered for explanations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InputRecord {
    /// Another step or an image: its key and a human label (`base image REF@DIGEST` or the
    /// step's description).
    Key { key: String, label: String },
    /// Context selections: per selector its digest, and per file its entry digest.
    Content {
        selectors: Vec<(String, String)>,
        files: Vec<(String, String)>,
    },
}

/// What went into a step's key, remembered per step identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub key: String,
    /// Canonical op JSON (or `REF@DIGEST` for image sources).
    pub op: String,
    pub inputs: Vec<InputRecord>,
    pub build: String,
    pub time: i64,
}

/// Stable identities of the keyed nodes of a definition (`None` for other nodes).
pub fn step_ids(def: &Definition, scope: &str) -> Vec<Option<String>> {
    let mut counters: BTreeMap<String, usize> = BTreeMap::new();
    def.nodes
        .iter()
        .map(|n| {
            let keyed = matches!(
                n.op,
                Op::Exec(_) | Op::File(_) | Op::Source(SourceOp::Image { .. })
            );
            if !keyed {
                return None;
            }
            let stage = n.meta.stage.clone().unwrap_or_default();
            let c = counters.entry(stage.clone()).or_insert(0);
            let ord = *c;
            *c += 1;
            Some(
                sha256_digest(format!("rbuild-step-v1\n{scope}\n{stage}\n{ord}").as_bytes())
                    .trim_start_matches("sha256:")
                    .to_string(),
            )
        })
        .collect()
}

/// The key remembered for a step identity.
pub(crate) fn previous_key(
    store: &rbuild_cache::Store,
    id: &str,
) -> Result<Option<String>, rbuild_cache::CacheError> {
    store.meta_get(KEY_NS, id)
}

/// The record remembered for a step identity (a missing or unreadable one is `None`).
pub(crate) fn previous_record(
    store: &rbuild_cache::Store,
    id: &str,
) -> Result<Option<StepRecord>, rbuild_cache::CacheError> {
    Ok(store
        .meta_get(RECORD_NS, id)?
        .and_then(|j| serde_json::from_str(&j).ok()))
}

/// Remember `rec` for `id` (record first, so a reader never sees a key without its record).
pub(crate) fn remember(
    store: &rbuild_cache::Store,
    id: &str,
    rec: &StepRecord,
) -> Result<(), rbuild_cache::CacheError> {
    let json = serde_json::to_string(rec).unwrap_or_default();
    store.meta_put(RECORD_NS, id, &json)?;
    store.meta_put(KEY_NS, id, &rec.key)
}

/// Why a step ran although an earlier build of it exists (or not).
pub fn explain_miss(prev: Option<&StepRecord>, now: &StepRecord) -> String {
    let Some(prev) = prev else {
        return "no earlier build of this step in the store".to_string();
    };
    if prev.key == now.key {
        return format!(
            "the result of build {} for this key is no longer in the store (pruned)",
            prev.build
        );
    }
    let mut reasons = Vec::new();
    if prev.op != now.op {
        reasons.push(op_change(&prev.op, &now.op));
    }
    for (i, cur) in now.inputs.iter().enumerate() {
        let old = prev.inputs.get(i);
        if old == Some(cur) {
            continue;
        }
        match (old, cur) {
            (
                Some(InputRecord::Key {
                    key: ok,
                    label: olabel,
                }),
                InputRecord::Key { key, label },
            ) => {
                if ok == key {
                    continue;
                }
                if let (Some(o), Some(n)) = (
                    olabel.strip_prefix("base image "),
                    label.strip_prefix("base image "),
                ) {
                    reasons.push(format!("base image changed: {o} → {n}"));
                } else {
                    reasons.push(format!("earlier step changed: {label}"));
                }
            }
            (
                Some(InputRecord::Content {
                    selectors: osel,
                    files: ofiles,
                }),
                InputRecord::Content { selectors, files },
            ) => {
                if osel == selectors {
                    continue;
                }
                reasons.push(files_change(osel, ofiles, selectors, files));
            }
            (_, InputRecord::Key { label, .. }) => {
                reasons.push(format!("input {i} is now {label}"))
            }
            (_, InputRecord::Content { .. }) => {
                reasons.push(format!("input {i} is now the build context"))
            }
        }
    }
    if now.inputs.len() < prev.inputs.len() {
        reasons.push("the step has fewer inputs".to_string());
    }
    if reasons.is_empty() {
        reasons.push("the cache key changed".to_string());
    }
    reasons.join("; ")
}

fn op_change(old: &str, new: &str) -> String {
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).ok();
    let (Some(o), Some(n)) = (parse(old), parse(new)) else {
        return format!("source changed: {old} → {new}");
    };
    let env = |v: &serde_json::Value| -> BTreeMap<String, String> {
        v.pointer("/env")
            .and_then(|e| e.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        (k.to_string(), v.to_string())
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (oe, ne) = (env(&o), env(&n));
    let mut parts = Vec::new();
    let names: BTreeSet<&String> = oe.keys().chain(ne.keys()).collect();
    for k in names {
        match (oe.get(k), ne.get(k)) {
            (Some(a), Some(b)) if a != b => parts.push(format!("{k}={a:?} → {k}={b:?}")),
            (None, Some(b)) => parts.push(format!("{k}={b:?} added")),
            (Some(_), None) => parts.push(format!("{k} removed")),
            _ => {}
        }
    }
    let mut o2 = o.clone();
    let mut n2 = n.clone();
    for v in [&mut o2, &mut n2] {
        if let Some(m) = v.as_object_mut() {
            m.remove("env");
        }
    }
    let mut out = Vec::new();
    if !parts.is_empty() {
        out.push(format!("build arg/env changed: {}", parts.join(", ")));
    }
    if o2 != n2 {
        let what = if o.pointer("/args") != n.pointer("/args") {
            "command changed"
        } else {
            "instruction changed"
        };
        out.push(what.to_string());
    }
    if out.is_empty() {
        out.push("instruction changed".to_string());
    }
    out.join("; ")
}

fn files_change(
    osel: &[(String, String)],
    ofiles: &[(String, String)],
    sel: &[(String, String)],
    files: &[(String, String)],
) -> String {
    let old: BTreeMap<&str, &str> = ofiles
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_str()))
        .collect();
    let new: BTreeMap<&str, &str> = files
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_str()))
        .collect();
    let mut changed = Vec::new();
    for (p, d) in &new {
        if p.ends_with('/') {
            continue;
        }
        match old.get(p) {
            Some(od) if od == d => {}
            Some(_) => changed.push(format!("{p} (changed)")),
            None => changed.push(format!("{p} (added)")),
        }
    }
    for p in old.keys() {
        if !p.ends_with('/') && !new.contains_key(p) {
            changed.push(format!("{p} (removed)"));
        }
    }
    if changed.is_empty() {
        // Only directory entries differ (mode of a directory, an empty dir added …), or
        // the selection itself changed.
        let dirs: Vec<&str> = new
            .iter()
            .filter(|(p, d)| p.ends_with('/') && old.get(*p) != Some(*d))
            .map(|(p, _)| *p)
            .collect();
        if !dirs.is_empty() {
            changed.extend(dirs.iter().map(|d| format!("{d} (changed)")));
        } else {
            let o: Vec<&str> = osel.iter().map(|(s, _)| s.as_str()).collect();
            let n: Vec<&str> = sel.iter().map(|(s, _)| s.as_str()).collect();
            return format!("context selection changed: {o:?} → {n:?}");
        }
    }
    let n = changed.len();
    let mut shown: Vec<String> = changed.into_iter().take(MAX_PATHS).collect();
    if n > MAX_PATHS {
        shown.push(format!("and {} more", n - MAX_PATHS));
    }
    format!("context files changed: {}", shown.join(", "))
}

/// `cache hit: from build B (UTC time)`.
pub fn explain_hit(build: Option<&str>, time: Option<i64>) -> String {
    match (build, time) {
        (Some(b), Some(t)) => format!("cache hit: from build {b} at {}", utc(t)),
        (Some(b), None) => format!("cache hit: from build {b}"),
        _ => "cache hit: from an earlier build".to_string(),
    }
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc(secs: i64) -> String {
    rbuild_oci::time::rfc3339(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(op: &str, inputs: Vec<InputRecord>, key: &str) -> StepRecord {
        StepRecord {
            key: key.into(),
            op: op.into(),
            inputs,
            build: "b1".into(),
            time: 0,
        }
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn names_the_changed_file_env_and_base() {
        let files = |d: &str| InputRecord::Content {
            selectors: vec![("/".into(), format!("sha256:{d}"))],
            files: vec![
                ("./".into(), "r".into()),
                ("a.txt".into(), "1".into()),
                ("b.txt".into(), d.into()),
            ],
        };
        let a = rec("{}", vec![files("x")], "k1");
        let b = rec("{}", vec![files("y")], "k2");
        assert_eq!(
            explain_miss(Some(&a), &b),
            "context files changed: b.txt (changed)"
        );
        let e1 = rec(r#"{"args":["sh"],"env":["V=1"]}"#, vec![], "k1");
        let e2 = rec(r#"{"args":["sh"],"env":["V=2"]}"#, vec![], "k2");
        assert_eq!(
            explain_miss(Some(&e1), &e2),
            r#"build arg/env changed: V="1" → V="2""#
        );
        let base = |d: &str| InputRecord::Key {
            key: d.into(),
            label: format!("base image busybox@{d}"),
        };
        let i1 = rec("{}", vec![base("sha256:a")], "k1");
        let i2 = rec("{}", vec![base("sha256:b")], "k2");
        assert_eq!(
            explain_miss(Some(&i1), &i2),
            "base image changed: busybox@sha256:a → busybox@sha256:b"
        );
        assert!(explain_miss(None, &i2).contains("no earlier build"));
        assert!(explain_miss(Some(&i2), &i2).contains("no longer in the store"));
    }
}
