//! Build attestations (`--provenance`, `--sbom`, `--attest`): which are wanted, their
//! predicates (SLSA provenance v0.2 or v1 as BuildKit writes them; the SPDX SBOM from
//! `rbuild_oci::sbom`), and the attested index (`rbuild_oci::attest`) that outputs which can
//! hold one (pushes, `type=oci`) get instead of the bare image.
//!
//! Defaults as buildx: min provenance on every output that carries attestations, unless
//! `--provenance=false` or `BUILDX_NO_DEFAULT_ATTESTATIONS` is set; no SBOM unless asked.
//! `type=docker`, `--load`, the local store and `local`/`tar` outputs get the bare image (a
//! docker archive cannot hold an index).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use rbuild_graph::{Definition, NodeId, Op, Platform, SourceOp};
use rbuild_oci::attest::{self, Attested, Statement};
use rbuild_oci::{Descriptor, Reference};
use serde_json::{json, Value};

use crate::args::BuildArgs;
use crate::epoch::{Epoch, GitSource};
use crate::outputs::OutputSpec;
use crate::render::UsageError;

/// SLSA provenance options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// `mode=max`: the build definition too.
    pub max: bool,
    /// `version=v1` (SLSA 1.0); default v0.2 (BuildKit's default).
    pub v1: bool,
    /// `builder-id=`.
    pub builder_id: Option<String>,
}

/// The attestations a build asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opts {
    pub provenance: Option<Provenance>,
    pub sbom: bool,
    /// `generator=` given (ignored: rbuild scans in-process).
    pub generator: Option<String>,
}

fn usage(m: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(m))
}

fn truthy(v: &str) -> Option<bool> {
    match v {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

fn kv(flag: &str, v: &str) -> Result<BTreeMap<String, String>> {
    crate::flags::kv_spec(v).map_err(|e| usage(format!("{flag} {v}: {e}")))
}

fn provenance(flag: &str, v: &str) -> Result<Option<Provenance>> {
    if let Some(on) = truthy(v) {
        return Ok(on.then_some(Provenance {
            max: false,
            v1: false,
            builder_id: None,
        }));
    }
    let mut p = Provenance {
        max: false,
        v1: false,
        builder_id: None,
    };
    for (k, val) in kv(flag, v)? {
        match (k.as_str(), val.as_str()) {
            ("type", "provenance") => {}
            ("disabled", d) if truthy(d).is_some() => {
                if truthy(d) == Some(true) {
                    return Ok(None);
                }
            }
            ("mode", "min") => p.max = false,
            ("mode", "max") => p.max = true,
            ("version", "v0.2") => p.v1 = false,
            ("version", "v1") => p.v1 = true,
            ("builder-id", id) => p.builder_id = Some(id.to_string()),
            _ => {
                return Err(usage(format!(
                    "{flag} {v}: unknown provenance option {k}={val} \
                     (mode=min|max, version=v0.2|v1, builder-id=, disabled=true)"
                )))
            }
        }
    }
    Ok(Some(p))
}

/// `(enabled, generator)` of an SBOM value.
fn sbom(flag: &str, v: &str) -> Result<(bool, Option<String>)> {
    if let Some(on) = truthy(v) {
        return Ok((on, None));
    }
    let mut generator = None;
    for (k, val) in kv(flag, v)? {
        match k.as_str() {
            "type" if val == "sbom" => {}
            "disabled" if truthy(&val).is_some() => {
                if truthy(&val) == Some(true) {
                    return Ok((false, None));
                }
            }
            "generator" => generator = Some(val),
            _ => {
                return Err(usage(format!(
                    "{flag} {v}: unknown sbom option {k}={val} (generator=, disabled=true)"
                )))
            }
        }
    }
    Ok((true, generator))
}

/// Whether an output carries attestations (an index can be written there).
pub fn carries(o: &OutputSpec) -> bool {
    match o.kind.as_str() {
        "registry" | "oci" => true,
        "image" => o.push,
        _ => false,
    }
}

/// The attestations of a build with `outputs`.
pub fn parse(b: &BuildArgs, outputs: &[OutputSpec]) -> Result<Opts> {
    let mut prov: Option<Option<Provenance>> = None;
    let mut sb: Option<(bool, Option<String>)> = None;
    if let Some(v) = &b.provenance {
        prov = Some(provenance("--provenance", v)?);
    }
    if let Some(v) = &b.sbom {
        sb = Some(sbom("--sbom", v)?);
    }
    for a in &b.attests {
        let m = kv("--attest", a)?;
        match m.get("type").map(String::as_str) {
            Some("provenance") => prov = Some(provenance("--attest", a)?),
            Some("sbom") => sb = Some(sbom("--attest", a)?),
            Some(t) => {
                return Err(usage(format!(
                    "--attest {a}: unknown attestation type {t:?} (provenance or sbom)"
                )))
            }
            None => return Err(usage(format!("--attest {a}: type= is required"))),
        }
    }
    let carrying = b.push || outputs.iter().any(carries);
    let defaults = std::env::var("BUILDX_NO_DEFAULT_ATTESTATIONS")
        .map(|v| v.is_empty() || v == "0" || v == "false")
        .unwrap_or(true);
    let provenance = match prov {
        Some(p) => p,
        None if carrying && defaults => Some(Provenance {
            max: false,
            v1: false,
            builder_id: None,
        }),
        None => None,
    };
    let (sbom, generator) = sb.unwrap_or((false, None));
    Ok(Opts {
        provenance,
        sbom,
        generator,
    })
}

impl Opts {
    pub fn any(&self) -> bool {
        self.provenance.is_some() || self.sbom
    }
}

/// What the provenance records about the build.
pub struct BuildInfo<'a> {
    pub args: &'a BuildArgs,
    pub dockerfile_name: &'a str,
    pub dockerfile: &'a str,
    pub context: &'a Path,
    pub epoch: Epoch,
    pub git: Option<GitSource>,
    /// Unix seconds.
    pub started: i64,
}

/// One platform's built image.
pub struct Built<'a> {
    pub platform: &'a Platform,
    pub manifest: Descriptor,
    /// The image id (config digest): the SBOM's root, unchanged when layers are recompressed.
    pub config_digest: String,
    pub definition: &'a Definition,
    /// The image's unpacked layer directories (base first), when all are in the store: the
    /// SBOM scan walks them instead of reading the layer tars.
    pub layer_dirs: Option<Vec<std::path::PathBuf>>,
    /// The graph's root (the final stage).
    pub root: NodeId,
}

/// Whether a build arg (`--build-arg` or a global `ARG NAME=…` default in the Dockerfile) is
/// true.
fn arg_true(info: &BuildInfo, name: &str) -> bool {
    let from_flag = info.args.build_args.iter().find_map(|a| {
        a.strip_prefix(name)
            .and_then(|r| r.strip_prefix('='))
            .map(String::from)
    });
    let from_file = || {
        info.dockerfile
            .lines()
            .map(str::trim)
            .take_while(|l| !l.to_ascii_uppercase().starts_with("FROM "))
            .filter_map(|l| {
                l.get(..4)
                    .filter(|p| p.eq_ignore_ascii_case("ARG "))
                    .map(|_| l[4..].trim())
            })
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix('='))
                    .map(|v| v.trim_matches('"').to_string())
            })
    };
    from_flag
        .or_else(from_file)
        .is_some_and(|v| truthy(&v) == Some(true))
}

/// Which stages `BUILDKIT_SBOM_SCAN_STAGE` asks to scan besides the final image: `None` for
/// none; an empty set for every stage (`--build-arg BUILDKIT_SBOM_SCAN_STAGE=true`); else the
/// names given (`--build-arg BUILDKIT_SBOM_SCAN_STAGE=a,b`) and the stages that declare
/// `ARG BUILDKIT_SBOM_SCAN_STAGE=true`.
fn stages_to_scan(info: &BuildInfo) -> Option<std::collections::BTreeSet<String>> {
    const NAME: &str = "BUILDKIT_SBOM_SCAN_STAGE";
    let mut set = std::collections::BTreeSet::new();
    if let Some(v) = info.args.build_args.iter().find_map(|a| {
        a.strip_prefix(NAME)
            .and_then(|r| r.strip_prefix('='))
            .map(String::from)
    }) {
        match truthy(&v) {
            Some(true) => return Some(set),
            Some(false) => return None,
            None => set.extend(v.split(',').map(|s| s.trim().to_string())),
        }
    }
    // stages declaring the ARG themselves (`FROM … AS name` then `ARG NAME=true`)
    let mut stage: Option<String> = None;
    let mut index = 0usize;
    for l in info.dockerfile.lines().map(str::trim) {
        let upper = l.to_ascii_uppercase();
        if upper.starts_with("FROM ") {
            let words: Vec<&str> = l.split_whitespace().collect();
            stage = Some(
                match words.iter().position(|w| w.eq_ignore_ascii_case("AS")) {
                    Some(i) => words
                        .get(i + 1)
                        .map_or(index.to_string(), |n| n.to_string()),
                    None => index.to_string(),
                },
            );
            index += 1;
        } else if upper.starts_with("ARG ") {
            let rest = l[4..].trim();
            if let Some(v) = rest.strip_prefix(NAME).and_then(|r| r.strip_prefix('=')) {
                if truthy(v.trim_matches('"')) == Some(true) {
                    if let Some(s) = &stage {
                        set.insert(s.clone());
                    }
                }
            }
        }
    }
    (!set.is_empty()).then_some(set)
}

/// The last node of each stage reachable from `root` (other than the final stage), by stage
/// name (or index), filtered by `wanted` (empty: all).
fn stage_roots(
    def: &Definition,
    root: NodeId,
    wanted: &std::collections::BTreeSet<String>,
) -> Vec<(String, NodeId)> {
    let Ok(order) = def.reachable(root) else {
        return Vec::new();
    };
    let final_stage = def.nodes.get(root.0).and_then(|n| n.meta.stage.clone());
    let mut last: BTreeMap<String, NodeId> = BTreeMap::new();
    for id in order {
        let Some(n) = def.nodes.get(id.0) else {
            continue;
        };
        if let Some(s) = &n.meta.stage {
            if Some(s) != final_stage.as_ref() && (wanted.is_empty() || wanted.contains(s)) {
                let e = last.entry(s.clone()).or_insert(id);
                if id.0 > e.0 {
                    *e = id;
                }
            }
        }
    }
    last.into_iter().collect()
}

/// Solves a stage (a cache hit: it was built for the image) and returns its layer
/// directories, base first.
pub type StageSolver<'s> = dyn Fn(&Definition, NodeId) -> Option<Vec<std::path::PathBuf>> + 's;

/// The attested index over `built` (in platform order) with the wanted statements.
#[allow(clippy::too_many_arguments)]
pub fn attach(
    store: &rbuild_cache::Store,
    opts: &Opts,
    info: &BuildInfo,
    built: &[Built],
    tags: &[Reference],
    index_annotations: &BTreeMap<String, String>,
    progress: &crate::progress::Reporter,
    solve_stage: &StageSolver,
) -> Result<Descriptor> {
    let stages = if opts.sbom {
        stages_to_scan(info)
    } else {
        None
    };
    let created =
        rbuild_oci::time::rfc3339(info.epoch.value.unwrap_or_else(rbuild_oci::time::now_secs));
    let tool = format!("rbuild-{}", env!("CARGO_PKG_VERSION"));
    let limits = rbuild_oci::sbom::Limits::default();
    let context_scan = (opts.sbom && arg_true(info, "BUILDKIT_SBOM_SCAN_CONTEXT"))
        .then(|| rbuild_oci::sbom::scan_dir(info.context, &limits));
    let mut attested = Vec::with_capacity(built.len());
    for b in built {
        let platform = crate::multiplat::oci_platform(b.platform);
        let mut manifest = b.manifest.clone();
        manifest.platform = Some(platform.clone());
        let names: Vec<String> = tags.iter().map(|t| purl(t, &platform)).collect();
        let mut statements = Vec::new();
        if opts.sbom {
            let step = progress.step(&format!("generating SBOM ({})", b.platform.to_text()));
            let scan = match &b.layer_dirs {
                Some(dirs) => rbuild_oci::sbom::scan_layer_dirs(
                    dirs,
                    rbuild_cache::overlay::opaque_xattr(),
                    &limits,
                ),
                None => rbuild_oci::sbom::scan_image(store, &b.manifest, &limits)?,
            };
            let subject = rbuild_oci::sbom::Subject {
                name: tags
                    .first()
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "image".into()),
                digest: Some(b.config_digest.clone()),
            };
            statements.push(Statement {
                predicate_type: attest::PREDICATE_SPDX.into(),
                predicate: rbuild_oci::sbom::spdx_document(&subject, &[&scan], &created, &tool),
            });
            for (name, node) in stages
                .as_ref()
                .map(|w| stage_roots(b.definition, b.root, w))
                .unwrap_or_default()
            {
                let Some(dirs) = solve_stage(b.definition, node) else {
                    progress.warning(&format!("SBOM: stage {name} could not be scanned"));
                    continue;
                };
                let scan = rbuild_oci::sbom::scan_layer_dirs(
                    &dirs,
                    rbuild_cache::overlay::opaque_xattr(),
                    &limits,
                );
                let subject = rbuild_oci::sbom::Subject {
                    name: format!("stage {name}"),
                    digest: None,
                };
                statements.push(Statement {
                    predicate_type: attest::PREDICATE_SPDX.into(),
                    predicate: rbuild_oci::sbom::spdx_document(&subject, &[&scan], &created, &tool),
                });
            }
            if let Some(ctx) = &context_scan {
                let subject = rbuild_oci::sbom::Subject {
                    name: "context".into(),
                    digest: None,
                };
                statements.push(Statement {
                    predicate_type: attest::PREDICATE_SPDX.into(),
                    predicate: rbuild_oci::sbom::spdx_document(&subject, &[ctx], &created, &tool),
                });
            }
            progress.step_done(step);
        }
        if let Some(p) = &opts.provenance {
            statements.push(provenance_statement(p, info, b)?);
        }
        attested.push(Attested {
            manifest,
            names,
            statements,
        });
    }
    Ok(attest::attach(store, &attested, index_annotations)?)
}

/// The purl of an image reference (familiar name, tag or `latest`) on `platform`.
fn purl(r: &Reference, platform: &rbuild_oci::Platform) -> String {
    let mut bare = r.clone();
    bare.tag = None;
    bare.digest = None;
    let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
    attest::docker_purl(&bare.familiar(), &tag, Some(platform))
}

/// The materials of a build graph: base images, remote files and repositories, plus the git
/// checkout of the context.
fn materials(def: &Definition, git: Option<&GitSource>) -> Vec<Value> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for n in &def.nodes {
        let Op::Source(s) = &n.op else { continue };
        let m = match s {
            SourceOp::Image {
                reference,
                digest: Some(d),
                platform,
            } => {
                let p = crate::multiplat::oci_platform(platform);
                let uri = match Reference::parse(reference) {
                    Ok(r) => purl(&r, &p),
                    Err(_) => attest::docker_purl(reference, "latest", Some(&p)),
                };
                json!({
                    "uri": uri,
                    "digest": {"sha256": d.trim_start_matches("sha256:")},
                })
            }
            SourceOp::Http {
                url,
                checksum: Some(c),
                ..
            } => json!({"uri": url, "digest": {"sha256": c.trim_start_matches("sha256:")}}),
            SourceOp::Git {
                remote,
                reference,
                checksum,
                ..
            } => {
                let uri = match reference {
                    Some(r) => format!("{}#{r}", crate::epoch::public_url(remote)),
                    None => crate::epoch::public_url(remote),
                };
                match checksum {
                    Some(c) => json!({"uri": uri, "digest": {"sha1": c}}),
                    None => json!({"uri": uri}),
                }
            }
            _ => continue,
        };
        if seen.insert(m.to_string()) {
            out.push(m);
        }
    }
    if let Some(g) = git {
        out.push(json!({"uri": g.url, "digest": {"sha1": g.commit}}));
    }
    out
}

/// The frontend's parameters as BuildKit records them (`build-arg:K`, `label:K`, `target`).
/// Secrets never appear: only their ids exist in rbuild's inputs, and those are left out too.
fn frontend_args(b: &BuildArgs, max: bool) -> BTreeMap<String, String> {
    let mut args = BTreeMap::new();
    // build args and labels only in max mode, as BuildKit (they can carry what the min
    // statement, attached to every push by default, should not publish)
    if max {
        for a in &b.build_args {
            let (k, v) = match a.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => match std::env::var(a) {
                    Ok(v) => (a.clone(), v),
                    Err(_) => continue,
                },
            };
            args.insert(format!("build-arg:{k}"), v);
        }
        for l in &b.labels {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            args.insert(format!("label:{k}"), v.to_string());
        }
    }
    if let Some(t) = &b.target {
        args.insert("target".into(), t.clone());
    }
    // buildx passes `--network` to the frontend as this attribute
    if let Some(n) = b.network.as_deref().filter(|n| *n != "default") {
        args.insert("force-network-mode".into(), n.to_string());
    }
    args
}

/// BuildKit's `source` metadata (`mode=max`): the Dockerfile itself and the lines each step
/// comes from, keyed by the step ids of the build definition.
fn source_metadata(info: &BuildInfo, def: &Definition) -> Value {
    use base64::Engine;
    let mut locations = serde_json::Map::new();
    for (i, n) in def.nodes.iter().enumerate() {
        // a step from no line (the context) is an empty entry, as BuildKit writes it
        let at = n.meta.lines.map_or(json!({}), |(a, b)| {
            json!({"locations": [{"ranges": [{"start": {"line": a}, "end": {"line": b}}]}]})
        });
        locations.insert(format!("step{i}"), at);
    }
    json!({
        "infos": [{
            "filename": info.dockerfile_name,
            "language": "Dockerfile",
            "data": base64::engine::general_purpose::STANDARD.encode(info.dockerfile),
        }],
        "locations": locations,
    })
}

/// The build definition (`mode=max`): every node of the graph with its op and inputs.
fn build_config(def: &Definition) -> Value {
    let steps: Vec<Value> = def
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut s = json!({
                "id": format!("step{i}"),
                "op": serde_json::to_value(&n.op).unwrap_or(Value::Null),
                "inputs": n.inputs.iter().map(|x| format!("step{}:0", x.0)).collect::<Vec<_>>(),
            });
            if !n.meta.description.is_empty() {
                s["description"] = json!(n.meta.description);
            }
            if let Some((a, b)) = n.meta.lines {
                s["lines"] = json!([a, b]);
            }
            s
        })
        .collect();
    json!({"llbDefinition": steps})
}

fn provenance_statement(p: &Provenance, info: &BuildInfo, b: &Built) -> Result<Statement> {
    let materials = materials(b.definition, info.git.as_ref());
    let mut config_source = json!({"entryPoint": info.dockerfile_name});
    if let Some(g) = &info.git {
        config_source["uri"] = json!(g.url);
        config_source["digest"] = json!({"sha1": g.commit});
    }
    let args = frontend_args(info.args, p.max);
    let locals = json!([{"name": "context"}, {"name": "dockerfile"}]);
    let platform = b.platform.to_text();
    // With a source date epoch the build is meant to be reproducible: the statement is too
    // (no wall-clock times, an invocation id derived from the image), so a pushed index keeps
    // its digest. Without one, the real start and finish times are recorded.
    let reproducible = info.epoch.value.is_some();
    let (started, finished) = if reproducible {
        (None, None)
    } else {
        (
            Some(rbuild_oci::time::rfc3339(info.started)),
            Some(rbuild_oci::time::rfc3339(rbuild_oci::time::now_secs())),
        )
    };
    let seed = if reproducible {
        b.manifest.digest.clone()
    } else {
        format!(
            "{}|{}|{}",
            b.manifest.digest,
            info.started,
            std::process::id()
        )
    };
    let invocation_id = rbuild_graph::sha256_digest(seed.as_bytes());
    let invocation_id = invocation_id.trim_start_matches("sha256:")[..26].to_string();
    let mut bk_meta = json!({});
    if let Some(g) = &info.git {
        bk_meta["vcs"] = json!({"source": g.url, "revision": g.commit});
    }
    bk_meta["source-date-epoch"] =
        json!({"value": info.epoch.value, "source": info.epoch.source.as_str()});
    if p.max {
        bk_meta["source"] = source_metadata(info, b.definition);
    }
    let builder_id = p
        .builder_id
        .clone()
        .or_else(github_run_url)
        .unwrap_or_default();
    let completeness = json!({"parameters": p.max, "environment": true, "materials": false});
    if !p.v1 {
        let mut pred = json!({
            "builder": {"id": builder_id},
            "buildType": "https://mobyproject.org/buildkit@v1",
            "materials": materials,
            "invocation": {
                "configSource": config_source,
                "parameters": {"frontend": "dockerfile.v0", "args": args, "locals": locals},
                "environment": {"platform": platform},
            },
            "metadata": {
                "buildInvocationID": invocation_id,
                "completeness": completeness,
                "reproducible": reproducible,
                "https://mobyproject.org/buildkit@v1#metadata": bk_meta,
            },
        });
        if let (Some(s), Some(f)) = (&started, &finished) {
            pred["metadata"]["buildStartedOn"] = json!(s);
            pred["metadata"]["buildFinishedOn"] = json!(f);
        }
        if p.max {
            pred["buildConfig"] = build_config(b.definition);
        }
        return Ok(Statement {
            predicate_type: attest::PREDICATE_SLSA02.into(),
            predicate: pred,
        });
    }
    let resolved: Vec<Value> = materials;
    let mut internal = json!({"builderPlatform": Platform::host().to_text()});
    if p.max {
        internal["buildConfig"] = build_config(b.definition);
    }
    let mut pred = json!({
        "buildDefinition": {
            "buildType": "https://github.com/moby/buildkit/blob/master/docs/attestations/slsa-definitions.md",
            "externalParameters": {
                "configSource": config_source,
                "request": {"frontend": "dockerfile.v0", "args": args, "locals": locals},
            },
            "internalParameters": internal,
            "resolvedDependencies": resolved,
        },
        "runDetails": {
            "builder": {"id": builder_id},
            "metadata": {
                "invocationID": invocation_id,
                "buildkit_completeness": {"request": p.max, "resolvedDependencies": false},
                "buildkit_reproducible": reproducible,
                "buildkit_metadata": bk_meta,
            },
        },
    });
    if let (Some(s), Some(f)) = (&started, &finished) {
        pred["runDetails"]["metadata"]["startedOn"] = json!(s);
        pred["runDetails"]["metadata"]["finishedOn"] = json!(f);
    }
    Ok(Statement {
        predicate_type: attest::PREDICATE_SLSA1.into(),
        predicate: pred,
    })
}

/// The GitHub Actions run URL as builder id (buildx does the same in Actions).
fn github_run_url() -> Option<String> {
    let server = std::env::var("GITHUB_SERVER_URL").ok()?;
    let repo = std::env::var("GITHUB_REPOSITORY").ok()?;
    let run = std::env::var("GITHUB_RUN_ID").ok()?;
    Some(format!("{server}/{repo}/actions/runs/{run}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str], outputs: &[&str]) -> Result<Opts> {
        use clap::Parser;
        let mut v = vec!["rbuild", "build"];
        v.extend_from_slice(args);
        v.push(".");
        let cli = crate::args::Cli::try_parse_from(v).unwrap();
        let crate::args::Command::Build(b) = cli.command else {
            panic!()
        };
        let outs: Vec<OutputSpec> = outputs
            .iter()
            .map(|o| crate::outputs::parse(o).unwrap())
            .collect();
        parse(&b, &outs)
    }

    #[test]
    fn defaults_follow_buildx() {
        let min = Some(Provenance {
            max: false,
            v1: false,
            builder_id: None,
        });
        // nothing that can hold attestations: none
        assert_eq!(opts(&[], &[]).unwrap(), Opts::default());
        assert_eq!(
            opts(&[], &["type=docker,dest=x.tar"]).unwrap(),
            Opts::default()
        );
        // pushed or OCI: min provenance
        assert_eq!(opts(&["--push", "-t", "a"], &[]).unwrap().provenance, min);
        assert_eq!(opts(&[], &["type=oci,dest=x.tar"]).unwrap().provenance, min);
        assert_eq!(
            opts(&[], &["type=image,name=a,push=true"])
                .unwrap()
                .provenance,
            min
        );
        assert_eq!(
            opts(&["--provenance=false"], &["type=oci,dest=x"]).unwrap(),
            Opts::default()
        );
        let o = opts(&["--provenance", "mode=max,version=v1", "--sbom=true"], &[]).unwrap();
        assert!(o.sbom && o.provenance.as_ref().is_some_and(|p| p.max && p.v1));
        let o = opts(
            &[
                "--attest",
                "type=sbom,generator=x/y",
                "--attest",
                "type=provenance,disabled=true",
            ],
            &["type=oci,dest=x"],
        )
        .unwrap();
        assert!(o.sbom && o.provenance.is_none() && o.generator.as_deref() == Some("x/y"));
        for bad in [
            vec!["--attest", "type=foo"],
            vec!["--attest", "mode=max"],
            vec!["--provenance", "mode=huge"],
            vec!["--sbom", "scanner=x"],
        ] {
            assert!(opts(&bad, &[]).is_err(), "{bad:?}");
        }
    }
}
