//! `rbuild images`: the images in the local store, as `docker images` lists them.
//!
//! - rows: tagged images; with `-a` also the base images builds resolved and pulled (the
//!   store's `resolve` memory), which have no tag of their own in the store;
//! - `--filter reference=PATTERN|dangling=BOOL|before=IMAGE|since=IMAGE|label=KEY[=VALUE]`
//!   (docker's; `reference` is a Go `path.Match` pattern against `repo` and `repo:tag`);
//! - `--format`: `table …`, `json` or a template of `{{.Field}}` placeholders (`\t` and `\n`
//!   escapes as docker): fields Repository, Tag, ID, Digest, CreatedSince, CreatedAt, Size,
//!   Platforms; `--digests` adds the DIGEST column; `--no-trunc` full ids;
//! - columns are as wide as their widest cell (docker's tabwriter: 3 spaces between).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use rbuild_oci::{ImageStore, Reference};
use serde_json::{json, Value};

use crate::args::ImagesArgs;
use crate::render::UsageError;

/// One listed image.
#[derive(Debug, Clone)]
struct Row {
    repo: String,
    tag: String,
    /// Config digest (an index: the index digest).
    id: String,
    /// Manifest (or index) digest.
    digest: String,
    size: u64,
    /// Unix seconds of the config's `created`.
    created: Option<i64>,
    platforms: String,
    labels: BTreeMap<String, String>,
}

fn split_name(name: &str) -> (String, String) {
    match Reference::parse(name) {
        Ok(r) => {
            let fam = r.familiar();
            let fam = fam.split('@').next().unwrap_or(&fam).to_string();
            match fam.rsplit_once(':') {
                Some((a, b)) if !b.contains('/') => (a.to_string(), b.to_string()),
                _ => (fam, "<none>".to_string()),
            }
        }
        Err(_) => (name.to_string(), "<none>".to_string()),
    }
}

/// Created time and labels from an image config.
fn config_facts(config: &[u8]) -> (Option<i64>, BTreeMap<String, String>) {
    let v: Value = serde_json::from_slice(config).unwrap_or(Value::Null);
    let created = v["created"]
        .as_str()
        .and_then(rbuild_oci::time::parse_rfc3339);
    let labels = v["config"]["Labels"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    (created, labels)
}

fn rows(store: &rbuild_cache::Store, images: &ImageStore, all: bool) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (name, desc) in images.list()? {
        let (id, size, platforms, config) = if rbuild_oci::index::is_index(&desc) {
            // A multi-platform image: one row, its id the index digest, its platforms listed.
            let index = rbuild_oci::index::read_index(store, &desc)?;
            let mut size = 0;
            let mut platforms = Vec::new();
            let mut config = None;
            for m in &index.manifests {
                let manifest = images.read_manifest(m)?;
                size += manifest.layers.iter().map(|l| l.size).sum::<u64>();
                if config.is_none() {
                    config = store.read_blob(&manifest.config.digest).ok();
                }
                platforms.extend(m.platform.as_ref().map(|p| p.to_string()));
            }
            (desc.digest.clone(), size, platforms.join(","), config)
        } else {
            let manifest = images.read_manifest(&desc)?;
            let size: u64 = manifest.layers.iter().map(|l| l.size).sum();
            let config = store.read_blob(&manifest.config.digest).ok();
            (manifest.config.digest.clone(), size, String::new(), config)
        };
        let (created, labels) = config.as_deref().map(config_facts).unwrap_or_default();
        let (repo, tag) = split_name(&name);
        rows.push(Row {
            repo,
            tag,
            id,
            digest: desc.digest.clone(),
            size,
            created,
            platforms,
            labels,
        });
    }
    if all {
        for (key, json) in store.meta_list("resolve")? {
            let Ok(r) = serde_json::from_str::<rbuild_solver::ResolvedImage>(&json) else {
                continue;
            };
            let (repo, tag) = split_name(&r.reference);
            if rows.iter().any(|x| x.repo == repo && x.tag == tag) {
                continue;
            }
            let (created, labels) = config_facts(&r.config);
            rows.push(Row {
                repo,
                tag,
                id: rbuild_graph::sha256_digest(&r.config),
                digest: r.manifest_digest.clone(),
                size: r.layers.iter().map(|l| l.size).sum(),
                created,
                platforms: key.rsplit('|').next().unwrap_or_default().to_string(),
                labels,
            });
        }
    }
    rows.sort_by(|a, b| (&a.repo, &a.tag, &a.id).cmp(&(&b.repo, &b.tag, &b.id)));
    Ok(rows)
}

/// docker's `--filter` for images.
fn filter(rows: Vec<Row>, filters: &[String]) -> Result<Vec<Row>> {
    let mut rows = rows;
    for f in filters {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--filter {f:?}: expected KEY=VALUE")))?;
        let find = |name: &str| -> Result<Option<i64>> {
            let (repo, tag) = split_name(name);
            let short = name.trim_start_matches("sha256:");
            rows.iter()
                .find(|r| {
                    (r.repo == repo && r.tag == tag)
                        || (short.len() >= 4
                            && r.id.trim_start_matches("sha256:").starts_with(short))
                })
                .map(|r| r.created)
                .ok_or_else(|| {
                    UsageError(format!(
                        "--filter {k}={v}: no image {v:?} in the local store"
                    ))
                    .into()
                })
        };
        rows = match k {
            "reference" => rows
                .into_iter()
                .filter(|r| {
                    rbuild_cache::context::glob_match(v, &r.repo)
                        || rbuild_cache::context::glob_match(v, &format!("{}:{}", r.repo, r.tag))
                })
                .collect(),
            "dangling" => {
                let want = match v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(UsageError(format!(
                            "--filter dangling={v:?}: expected true or false"
                        ))
                        .into())
                    }
                };
                rows.into_iter()
                    .filter(|r| (r.tag == "<none>") == want)
                    .collect()
            }
            "before" | "since" => {
                let t = find(v)?;
                rows.into_iter()
                    .filter(|r| match (r.created, t) {
                        (Some(c), Some(t)) if k == "before" => c < t,
                        (Some(c), Some(t)) => c > t,
                        _ => false,
                    })
                    .collect()
            }
            "label" => {
                let (lk, lv) = match v.split_once('=') {
                    Some((a, b)) => (a, Some(b)),
                    None => (v, None),
                };
                rows.into_iter()
                    .filter(|r| match (r.labels.get(lk), lv) {
                        (Some(x), Some(want)) => x == want,
                        (Some(_), None) => true,
                        (None, _) => false,
                    })
                    .collect()
            }
            other => {
                return Err(UsageError(format!(
                    "--filter {other:?}: unknown filter (reference, dangling, before, since, label)"
                ))
                .into())
            }
        };
    }
    Ok(rows)
}

/// go-units' HumanDuration, as docker's CREATED column.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s < 1 {
        return "Less than a second".into();
    }
    if s == 1 {
        return "1 second".into();
    }
    if s < 60 {
        return format!("{s} seconds");
    }
    let minutes = s / 60;
    if minutes == 1 {
        return "About a minute".into();
    }
    if minutes < 60 {
        return format!("{minutes} minutes");
    }
    let hours = (s as f64 / 3600.0 + 0.5) as i64;
    if hours == 1 {
        return "About an hour".into();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", s / 3600 / 24 / 365)
}

/// go-units' HumanSizeWithPrecision(n, 3), as docker's SIZE column (decimal units).
pub fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    // three significant digits, trailing zeros dropped (Go's %.3g)
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let mut s = format!("{v:.digits$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{s}{}", units[i])
}

/// The fields of a row, by docker's template names.
fn fields(r: &Row, no_trunc: bool) -> BTreeMap<&'static str, String> {
    let id = if no_trunc {
        r.id.clone()
    } else {
        short_id(&r.id)
    };
    let mut m = BTreeMap::new();
    m.insert("Repository", r.repo.clone());
    m.insert("Tag", r.tag.clone());
    m.insert("ID", id);
    m.insert(
        "Digest",
        if r.digest.is_empty() {
            "<none>".into()
        } else {
            r.digest.clone()
        },
    );
    m.insert(
        "CreatedSince",
        r.created
            .map(|c| format!("{} ago", human_duration(rbuild_oci::time::now_secs() - c)))
            .unwrap_or_else(|| "N/A".into()),
    );
    m.insert(
        "CreatedAt",
        r.created
            .map(|c| {
                rbuild_oci::time::rfc3339(c)
                    .replace('T', " ")
                    .replace('Z', " +0000 UTC")
            })
            .unwrap_or_else(|| "N/A".into()),
    );
    m.insert("Size", human_size(r.size));
    m.insert("Platforms", r.platforms.clone());
    m
}

fn header(field: &str) -> &str {
    match field {
        "Repository" => "REPOSITORY",
        "Tag" => "TAG",
        "ID" => "IMAGE ID",
        "Digest" => "DIGEST",
        "CreatedSince" => "CREATED",
        "CreatedAt" => "CREATED AT",
        "Size" => "SIZE",
        "Platforms" => "PLATFORMS",
        other => other,
    }
}

/// Parse a Go-template-like format into (is a field, text) parts: `{{.Field}}` (spaces
/// inside the braces allowed), `\t` and `\n` escapes; any other action is a usage error
/// naming it.
pub fn parse_template(format: &str, known: &[&str]) -> Result<Vec<(bool, String)>> {
    let format = format.replace("\\t", "\t").replace("\\n", "\n");
    let mut parts = Vec::new();
    let mut rest = format.as_str();
    while let Some(i) = rest.find("{{") {
        if i > 0 {
            parts.push((false, rest[..i].to_string()));
        }
        let after = &rest[i + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| UsageError(format!("--format {format:?}: unclosed {{{{")))?;
        let action = after[..end].trim();
        let field = action
            .strip_prefix('.')
            .filter(|f| known.contains(f))
            .ok_or_else(|| {
                UsageError(format!(
                    "--format: unsupported {{{{{action}}}}} (fields: {})",
                    known
                        .iter()
                        .map(|k| format!(".{k}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        parts.push((true, field.to_string()));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        parts.push((false, rest.to_string()));
    }
    Ok(parts)
}

fn fill(parts: &[(bool, String)], f: &dyn Fn(&str) -> String) -> String {
    parts
        .iter()
        .map(|(is_field, s)| if *is_field { f(s) } else { s.clone() })
        .collect()
}

/// Lay out tab-separated cells like Go's tabwriter with docker's settings (minimum width 10,
/// padding 3): every column but the last as wide as its widest cell plus 3.
pub fn tabulate(lines: &[String]) -> String {
    tabulate_with(lines, 10, 3)
}

/// Go's tabwriter with `minwidth` and `padding`: every column but the last as wide as its
/// widest cell plus `padding`, at least `minwidth`.
pub fn tabulate_with(lines: &[String], minwidth: usize, padding: usize) -> String {
    let cells: Vec<Vec<&str>> = lines.iter().map(|l| l.split('\t').collect()).collect();
    let cols = cells.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for row in &cells {
        for (i, c) in row.iter().enumerate() {
            if i + 1 < row.len() {
                widths[i] = widths[i].max((c.chars().count() + padding).max(minwidth));
            }
        }
    }
    let mut out = String::new();
    for row in &cells {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            line.push_str(c);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(widths[i] - c.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

const FIELDS: &[&str] = &[
    "Repository",
    "Tag",
    "ID",
    "Digest",
    "CreatedSince",
    "CreatedAt",
    "Size",
    "Platforms",
];

pub fn list(root: &Path, a: &ImagesArgs) -> Result<ExitCode> {
    let store = rbuild_cache::Store::open(root)?;
    let images = ImageStore::open(&store)?;
    let rows = filter(rows(&store, &images, a.all)?, &a.filter)?;
    if a.quiet {
        // one id per row, as docker (an image with two tags prints its id twice)
        for r in rows {
            let id = if a.no_trunc {
                r.id.clone()
            } else {
                short_id(&r.id)
            };
            println!("{id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let format = match a.format.as_deref() {
        Some("json") => {
            for r in &rows {
                let f = fields(r, a.no_trunc);
                let mut o = json!({
                    "Containers": "N/A",
                    "SharedSize": "N/A",
                    "UniqueSize": "N/A",
                    "VirtualSize": f["Size"],
                });
                for (k, v) in f {
                    o[k] = json!(v);
                }
                println!("{o}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        Some(f) if !f.starts_with("table") => {
            let parts = parse_template(f, FIELDS)?;
            for r in &rows {
                let f = fields(r, a.no_trunc);
                println!("{}", fill(&parts, &|k| f[k].clone()));
            }
            return Ok(ExitCode::SUCCESS);
        }
        Some(f) => f.trim_start_matches("table").trim_start().to_string(),
        None => {
            let digest = if a.digests { "\\t{{.Digest}}" } else { "" };
            let platforms = if rows.iter().any(|r| !r.platforms.is_empty()) {
                "\\t{{.Platforms}}"
            } else {
                ""
            };
            format!(
                "{{{{.Repository}}}}\\t{{{{.Tag}}}}{digest}\\t{{{{.ID}}}}\\t{{{{.CreatedSince}}}}\\t{{{{.Size}}}}{platforms}"
            )
        }
    };
    let parts = parse_template(&format, FIELDS)?;
    let mut lines = vec![fill(&parts, &|k| header(k).to_string())];
    for r in &rows {
        let f = fields(r, a.no_trunc);
        lines.push(fill(&parts, &|k| f[k].clone()));
    }
    print!("{}", tabulate(&lines));
    Ok(ExitCode::SUCCESS)
}

fn short_id(d: &str) -> String {
    d.trim_start_matches("sha256:").chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_261_000), "4.26MB");
        assert_eq!(human_size(42_600_000), "42.6MB");
        assert_eq!(human_size(426_000_000), "426MB");
        assert_eq!(human_size(1_200_000_000), "1.2GB");
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(30), "30 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(3600), "About an hour");
        assert_eq!(human_duration(5 * 3600), "5 hours");
        assert_eq!(human_duration(3 * 86400), "3 days");
        assert_eq!(human_duration(21 * 86400), "3 weeks");
        assert_eq!(human_duration(90 * 86400), "3 months");
        assert_eq!(human_duration(800 * 86400), "2 years");
    }

    #[test]
    fn templates_take_known_fields_and_reject_others() {
        let p = parse_template("{{.Repository}}:{{ .Tag }}\\t{{.ID}}", FIELDS).unwrap();
        assert_eq!(
            p,
            [
                (true, "Repository".to_string()),
                (false, ":".to_string()),
                (true, "Tag".to_string()),
                (false, "\t".to_string()),
                (true, "ID".to_string()),
            ]
        );
        let e = parse_template("{{.Nope}}", FIELDS).unwrap_err();
        assert!(
            e.is::<UsageError>() && e.to_string().contains(".Repository"),
            "{e}"
        );
        assert!(parse_template("{{.Tag", FIELDS).is_err());
        assert!(parse_template("{{range .}}", FIELDS).is_err());
    }

    #[test]
    fn columns_grow_with_their_widest_cell() {
        let long = "registry.example.com/team/a-very-long-repository-name-for-tests";
        let t = tabulate(&[
            "REPOSITORY\tTAG\tIMAGE ID".to_string(),
            format!("{long}\tv1\tabc"),
            "a\tlatest\tdef".to_string(),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        let col = lines[0].find("TAG").unwrap();
        assert_eq!(col, long.len() + 3);
        assert_eq!(lines[1].find("v1"), Some(col));
        assert_eq!(lines[2].find("latest"), Some(col));
        assert_eq!(lines[0].find("IMAGE ID"), lines[2].find("def"));
    }
}
