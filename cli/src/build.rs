//! `rbuild build`: Dockerfile → frontend → solver → image in the local store → outputs.

use std::collections::BTreeMap;
use std::fs;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use rbuild_frontend::{BuildOpts, ImageResolver, ResolvedImage};
use rbuild_graph::{ImageConfig, Platform};
use rbuild_oci::{ImageStore, Reference};
use rbuild_solver::{Solver, SolverConfig};

use crate::args::BuildArgs;
use crate::progress::{Outcome, Reporter};
use crate::render::{BuildFailed, DockerfileError, UsageError};

/// The loaded inputs of a build.
struct Inputs {
    context: PathBuf,
    dockerfile_name: String,
    dockerfile: String,
    opts: BuildOpts,
}

fn load_inputs(b: &BuildArgs) -> Result<Inputs> {
    let context = fs::canonicalize(&b.context).map_err(|e| {
        anyhow!(
            "unable to prepare context: path {:?} not found: {e}",
            b.context
        )
    })?;
    if !context.is_dir() {
        return Err(UsageError(format!(
            "unable to prepare context: {} is not a directory",
            context.display()
        ))
        .into());
    }
    let dockerfile_path = match &b.file {
        Some(f) => f.clone(),
        // Like BuildKit, a lowercase `dockerfile` is found when there is no `Dockerfile`.
        None if !context.join("Dockerfile").exists() && context.join("dockerfile").exists() => {
            context.join("dockerfile")
        }
        None => context.join("Dockerfile"),
    };
    let dockerfile = fs::read_to_string(&dockerfile_path).map_err(|e| {
        BuildFailed(format!(
            "failed to read dockerfile: {}: {e}",
            dockerfile_path.display()
        ))
    })?;
    let dockerfile_name = dockerfile_path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "Dockerfile".into());
    // <Dockerfile>.dockerignore next to the Dockerfile wins over the context's .dockerignore.
    let specific = PathBuf::from(format!("{}.dockerignore", dockerfile_path.display()));
    let ignore_file = if specific.is_file() {
        Some(specific)
    } else {
        Some(context.join(".dockerignore")).filter(|p| p.is_file())
    };
    let dockerignore = match ignore_file {
        Some(p) => {
            let text =
                fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            rbuild_frontend::dockerignore::parse(&text)
                .map_err(|e| anyhow!("{}: {e}", p.display()))?
        }
        None => Vec::new(),
    };
    let mut build_args = BTreeMap::new();
    for a in &b.build_args {
        match a.split_once('=') {
            Some((k, v)) => {
                build_args.insert(k.to_string(), v.to_string());
            }
            None => {
                // `--build-arg KEY` takes the value from the environment, if set (docker).
                if let Ok(v) = std::env::var(a) {
                    build_args.insert(a.clone(), v);
                }
            }
        }
    }
    let mut labels = BTreeMap::new();
    for l in &b.labels {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        labels.insert(k.to_string(), v.to_string());
    }
    let platform = match b.platforms.first() {
        // buildx: --platform local = the host
        None => Platform::host(),
        Some(p) if p == "local" => Platform::host(),
        Some(p) => crate::flags::parse_platform(p).map_err(UsageError)?,
    };
    let (named_contexts, locals) = crate::context::build_contexts(b)?;
    // A named local context's own .dockerignore applies to it (BuildKit's namedcontext.go).
    let mut named_context_excludes = BTreeMap::new();
    for (name, dir) in &locals {
        let p = dir.join(".dockerignore");
        if p.is_file() {
            let text =
                fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let patterns = rbuild_frontend::dockerignore::parse(&text)
                .map_err(|e| anyhow!("{}: {e}", p.display()))?;
            named_context_excludes.insert(name.clone(), patterns);
        }
    }
    let opts = BuildOpts {
        named_contexts,
        named_context_excludes,
        build_args,
        target: b.target.clone(),
        platform,
        dockerignore,
        no_cache: b.no_cache,
        labels,
    };
    Ok(Inputs {
        context,
        dockerfile_name,
        dockerfile,
        opts,
    })
}

fn make_solver(
    root: &Path,
    b: &BuildArgs,
    context: &Path,
    progress: Option<&Reporter>,
) -> Result<Arc<Solver>> {
    let store = rbuild_cache::Store::open(root)
        .with_context(|| format!("opening the store at {}", root.display()))?;
    let registry = rbuild_oci::RegistryClient::new(crate::config::registry_config()?)?;
    let cache_imports = match progress {
        Some(p) => crate::remote_cache::open_imports(&registry, &b.cache_from, &b.platforms, p),
        None => Vec::new(),
    };
    let executor = rbuild_executor::Executor::new(crate::sandbox_opts::helper()?)
        .with_runtime(crate::sandbox_opts::isolation(b)?);
    let (_, mut locals) = crate::context::build_contexts(b)?;
    locals.insert("context".to_string(), context.to_path_buf());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let source_date_epoch = crate::epoch::resolve(b, context)?.value;
    let sandbox = crate::sandbox_opts::parse(&b.secrets, &b.ssh, &b.allow, b.network.as_deref())
        .map_err(crate::render::usage)?;
    let resources = crate::sandbox_opts::resources(b).map_err(|e| UsageError(e.to_string()))?;
    if !resources.is_empty() {
        rbuild_executor::cgroup::check(&resources)
            .map_err(|e| UsageError(format!("{}: {e}", crate::sandbox_opts::resource_flags(b))))?;
    }
    Ok(Solver::new(SolverConfig {
        store,
        executor: Box::new(executor),
        registry,
        locals,
        // Steps mostly wait on processes and disk: at least 4 at once, even on small machines.
        max_parallelism: b.max_parallelism.unwrap_or((2 * cpus).max(4)).max(1),
        pull: b.pull,
        source_date_epoch,
        hostname: "buildkitsandbox".to_string(),
        secrets: sandbox.secrets,
        ssh: sandbox.ssh,
        entitlements: sandbox.entitlements,
        cache: crate::cachecmd::cache_options(b, context),
        resources,
        cache_imports,
    }))
}

/// Adapter: the frontend asks the solver to resolve base images.
struct Resolver<'a>(&'a Solver);

impl ImageResolver for Resolver<'_> {
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage, String> {
        let r = self
            .0
            .resolve_image(reference, platform)
            .map_err(|e| e.to_string())?;
        let config = ImageConfig::from_json(&r.config).map_err(|e| e.to_string())?;
        Ok(ResolvedImage {
            reference: r.reference,
            digest: r.manifest_digest,
            config,
        })
    }
}

fn frontend_error(inputs: &Inputs, e: rbuild_frontend::FrontendError) -> anyhow::Error {
    match e.line() {
        Some(line) => anyhow::Error::new(DockerfileError {
            path: inputs.dockerfile_name.clone(),
            text: inputs.dockerfile.clone(),
            lines: (line, line),
            message: e.to_string(),
            tail: Vec::new(),
            step: None,
            omitted: 0,
            log_above: true,
        }),
        None => anyhow::Error::new(BuildFailed(e.to_string())),
    }
}

fn solve_error(inputs: &Inputs, e: rbuild_solver::SolveError) -> anyhow::Error {
    let (tail, step) = match &e {
        rbuild_solver::SolveError::ExecFailed { tail, step, .. } => {
            (tail.clone(), Some(step.clone()))
        }
        _ => (Vec::new(), None),
    };
    match e.lines() {
        Some(lines) => anyhow::Error::new(DockerfileError {
            path: inputs.dockerfile_name.clone(),
            text: inputs.dockerfile.clone(),
            lines,
            message: e.to_string(),
            tail,
            step,
            omitted: 0,
            log_above: true,
        }),
        None => anyhow::Error::new(BuildFailed(e.to_string())),
    }
}

pub fn run(root: &Path, b: &BuildArgs) -> Result<ExitCode> {
    crate::unsupported::reject_unsupported(b)?;
    let usage = |e: anyhow::Error| anyhow::Error::new(UsageError(e.to_string()));
    let outputs = b
        .outputs
        .iter()
        .map(|o| parse_output(o))
        .collect::<Result<Vec<_>>>()
        .map_err(usage)?;
    // Before anything is built: a local export onto / or the store is a usage error.
    for o in outputs.iter().filter(|o| o.kind == "local") {
        crate::outputs::check_local_dest(root, &o.dest).map_err(usage)?;
    }
    let tags = b
        .tags
        .iter()
        .map(|t| Reference::parse(t).map_err(|e| anyhow!("invalid tag {t:?}: {e}")))
        .collect::<Result<Vec<_>>>()
        .map_err(usage)?;
    let platforms = crate::multiplat::platforms(&b.platforms)?;
    crate::multiplat::check_outputs(&platforms, &outputs, b.load)?;
    let attests = crate::attest::parse(b, &outputs)?;
    let mode = if b.quiet {
        crate::progress::Mode::Quiet
    } else {
        crate::progress::resolve_mode(&b.progress, std::io::stderr().is_terminal())?
    };
    let prepared = crate::context::prepare(b)?;
    let b = &prepared.args;
    let inputs = load_inputs(b)?;
    let call = b
        .call
        .as_deref()
        .map(crate::call::parse)
        .transpose()
        .map_err(UsageError)?;
    match call.map(|c| (c.method, c.json)) {
        Some((crate::call::Method::Outline, json)) => {
            let o = crate::call::outline(&inputs.dockerfile, b.target.as_deref())
                .map_err(BuildFailed)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&o)?);
            } else {
                print!("{}", crate::call::outline_text(&o));
            }
            return Ok(ExitCode::SUCCESS);
        }
        Some((crate::call::Method::Targets, json)) => {
            let l = crate::call::targets(&inputs.dockerfile);
            if json {
                println!("{}", serde_json::to_string_pretty(&l)?);
            } else {
                print!("{}", crate::call::targets_text(&l));
            }
            return Ok(ExitCode::SUCCESS);
        }
        Some((crate::call::Method::Check, json)) => return check_only(root, b, &inputs, json),
        _ if b.check => return check_only(root, b, &inputs, false),
        _ => {}
    }
    let progress = std::sync::Arc::new(Reporter::new(mode));
    let result = build_image(root, b, &inputs, &progress, &tags, &outputs, &attests);
    progress.finish(&Outcome {
        ok: result.is_ok(),
        cancelled: false,
        image_id: result.as_ref().ok().map(|i| i.config_digest.clone()),
        error: result.as_ref().err().map(|e| e.to_string()),
    });
    let image = result.map_err(|e| omitted_lines(e, &progress))?;
    if let Some(p) = &b.iidfile {
        fs::write(p, &image.config_digest).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &b.metadata_file {
        let epoch = crate::epoch::resolve(b, &inputs.context)?;
        let multi = crate::multiplat::platforms(&b.platforms)?.len() > 1;
        crate::metadata::write(p, &image, &tags, &epoch, multi)?;
    }
    if b.quiet {
        println!("{}", image.config_digest);
    }
    let _ = std::io::stdout().flush();
    Ok(ExitCode::SUCCESS)
}

/// `--check`: lower the Dockerfile (resolving base images for ONBUILD and config-dependent
/// rules) and report the build checks' findings without building.
fn check_only(root: &Path, b: &BuildArgs, inputs: &Inputs, json: bool) -> Result<ExitCode> {
    let solver = make_solver(root, b, &inputs.context, None)?;
    let plan = rbuild_frontend::build(&inputs.dockerfile, &inputs.opts, &Resolver(&solver))
        .map_err(|e| frontend_error(inputs, e))?;
    if json {
        let r = crate::call::lint_json(&inputs.dockerfile_name, &inputs.dockerfile, &plan.warnings);
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(if plan.warnings.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    Ok(crate::check::report(
        &inputs.dockerfile_name,
        &inputs.dockerfile,
        &plan.warnings,
    ))
}

/// Record how many output lines of a failed step the error's tail leaves out.
fn omitted_lines(mut e: anyhow::Error, progress: &Reporter) -> anyhow::Error {
    if let Some(d) = e.downcast_mut::<DockerfileError>() {
        if let Some(total) = d.step.as_deref().and_then(|s| progress.output_lines(s)) {
            d.omitted = total.saturating_sub(d.tail.len());
            d.log_above = progress.prints_all_output();
        }
    }
    e
}

fn build_image(
    root: &Path,
    b: &BuildArgs,
    inputs: &Inputs,
    progress: &std::sync::Arc<Reporter>,
    tags: &[Reference],
    outputs: &[OutputSpec],
    attests: &crate::attest::Opts,
) -> Result<rbuild_solver::ImageResult> {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let solver = make_solver(root, b, &inputs.context, Some(progress))?;
    if let Some(w) = crate::sandbox_opts::isolation_warning(b) {
        progress.warning(w);
    }
    // Held until the image is tagged and exported: GC never removes what this build uses.
    let lease = rbuild_solver::gc::lease(solver.store())?;
    crate::signals::install(solver.config().cache.cancel.clone(), progress.canceller());
    progress.note(&format!(
        "[internal] load build definition from {}",
        inputs.dockerfile_name
    ));
    // One lowering per platform; every platform's RUN steps are checked before anything runs.
    let platforms = crate::multiplat::platforms(&b.platforms)?;
    let mut plans = Vec::with_capacity(platforms.len());
    for platform in &platforms {
        let mut opts = inputs.opts.clone();
        opts.platform = platform.clone();
        let mut plan = rbuild_frontend::build(&inputs.dockerfile, &opts, &Resolver(&solver))
            .map_err(|e| frontend_error(inputs, e))?;
        apply_build_flags(&mut plan.definition, b)?;
        if let Some((lines, message)) =
            crate::emulation::check(&plan.definition, plan.root, platform)
        {
            return Err(match lines {
                Some(lines) => anyhow::Error::new(DockerfileError {
                    path: inputs.dockerfile_name.clone(),
                    text: inputs.dockerfile.clone(),
                    lines,
                    message,
                    tail: Vec::new(),
                    step: None,
                    omitted: 0,
                    log_above: true,
                }),
                None => anyhow::Error::new(BuildFailed(message)),
            });
        }
        if platforms.len() > 1 {
            crate::multiplat::label_steps(&mut plan.definition, platform);
        }
        plans.push((platform.clone(), plan));
    }
    if let Some((_, plan)) = plans.first() {
        for w in &plan.warnings {
            progress.warning_at(&inputs.dockerfile_name, w.line, w.end_line, &w.message);
        }
    }
    let multi = plans.len() > 1;
    let annotations = platforms
        .iter()
        .map(|p| crate::outputs::annotations(&b.annotations, p, multi))
        .collect::<Result<Vec<_>>>()
        .map_err(|e| UsageError(e.to_string()))?;
    // Platforms are solved at the same time on one solver: shared steps are computed once.
    let graphs: Vec<_> = plans
        .iter()
        .map(|(platform, plan)| (platform, &plan.definition, plan.root))
        .collect();
    for ((_, def, _), base) in graphs.iter().zip(crate::multiplat::progress_bases(&graphs)) {
        progress.set_graph(base, def);
    }
    let mut outs = crate::multiplat::solve_all(&solver, &graphs, progress.as_ref());
    // A failing platform stops the others (the solver's abort flag): its error is the
    // build's, not the other platforms' `Cancelled`.
    if let Some(i) = outs
        .iter()
        .position(|o| matches!(o, Err(e) if !matches!(e, rbuild_solver::SolveError::Cancelled)))
    {
        if let Err(e) = outs.swap_remove(i) {
            return Err(solve_error(inputs, e));
        }
    }
    let mut built = Vec::with_capacity(plans.len());
    let pushes = b.push || outputs.iter().any(|o| o.push);
    let inline_cache = pushes
        && b.cache_to
            .iter()
            .any(|s| s.kind == crate::cachespec::CacheKind::Inline);
    if let Some(w) = crate::cachespec::inline_without_push_warning(&b.cache_to, pushes) {
        progress.warning(&w);
    }
    if inline_cache && multi {
        progress.warning(
            "--cache-to type=inline: not written for a multi-platform image (use type=registry)",
        );
    }
    // the inline cache annotation of the pushed manifest (`--cache-to type=inline`)
    let mut inline: Option<(String, String)> = None;
    // each platform's layer directories (base first), for the SBOM scan
    let mut layer_dirs = Vec::with_capacity(plans.len());
    // each platform's result chain, what a `mode=min` cache export holds
    let mut roots = Vec::with_capacity(plans.len());
    for (((platform, plan), out), annotations) in plans.iter().zip(outs).zip(&annotations) {
        let out = out.map_err(|e| solve_error(inputs, e))?;
        roots.push(out.chain.clone());
        layer_dirs.push(
            out.chain
                .iter()
                .map(|l| solver.store().snapshot_fs(&l.snapshot).ok())
                .collect::<Option<Vec<_>>>(),
        );
        let step = progress.step(&if multi {
            format!("exporting to image ({})", platform.to_text())
        } else {
            "exporting to image".to_string()
        });
        let mut image = rbuild_solver::finalize_image(
            solver.store(),
            &out.chain,
            &plan.image,
            solver.config().source_date_epoch,
            &annotations.manifest,
        )?;
        if inline_cache && !multi {
            inline = Some(crate::remote_cache::inline_annotation(&solver, &out.chain)?);
        }
        progress.step_done(step);
        if multi {
            // in an index, `manifest-descriptor:` annotations go on the manifest's entry
            image.manifest.annotations = annotations.manifest_descriptor.clone();
        }
        built.push((platform.clone(), image));
    }
    // the index levels are the same for every platform; an index's manifests have theirs
    let annotations = annotations.into_iter().next().unwrap_or_default();
    let annotations = if multi {
        crate::multiplat::output_annotations(&annotations)
    } else {
        annotations
    };
    // outputs that can hold an index get the image with its attestations
    let attested = if attests.any() && (b.push || outputs.iter().any(crate::attest::carries)) {
        if let Some(g) = &attests.generator {
            progress.warning(&format!(
                "SBOM generator {g} ignored: rbuild generates the SBOM itself, in-process"
            ));
        }
        let info = crate::attest::BuildInfo {
            args: b,
            dockerfile_name: &inputs.dockerfile_name,
            dockerfile: &inputs.dockerfile,
            context: &inputs.context,
            epoch: crate::epoch::resolve(b, &inputs.context)?,
            git: b
                .git_source
                .clone()
                .or_else(|| crate::epoch::git_source(&inputs.context)),
            started,
        };
        let list: Vec<crate::attest::Built> = built
            .iter()
            .zip(&plans)
            .zip(&layer_dirs)
            .map(
                |(((platform, image), (_, plan)), dirs)| crate::attest::Built {
                    platform,
                    layer_dirs: dirs.clone(),
                    manifest: image.manifest.clone(),
                    config_digest: image.config_digest.clone(),
                    definition: &plan.definition,
                    root: plan.root,
                },
            )
            .collect();
        let index_annotations = if multi {
            annotations.index.clone()
        } else {
            BTreeMap::new()
        };
        Some(crate::attest::attach(
            solver.store(),
            attests,
            &info,
            &list,
            tags,
            &index_annotations,
            progress,
            &|def: &rbuild_graph::Definition, node: rbuild_graph::NodeId| {
                let out = solver.solve(def, node, &rbuild_solver::NoProgress).ok()?;
                out.chain
                    .iter()
                    .map(|l| solver.store().snapshot_fs(&l.snapshot).ok())
                    .collect()
            },
        )?)
    } else {
        if attests.any() {
            progress.warning(
                "attestations are attached to pushed images and OCI archives only \
                 (--push, type=registry, type=image,push=true, type=oci): none written",
            );
        }
        None
    };
    let mut image = match built.len() {
        1 => built.remove(0).1,
        _ => crate::multiplat::make_index(solver.store(), &built, &annotations.index)?,
    };
    let attested_or_image = attested.as_ref().unwrap_or(&image.manifest).clone();
    let images = ImageStore::open(solver.store())?;
    progress.note(&format!("writing image {}", image.config_digest));
    for t in tags {
        // A fully cached rebuild leaves the tag as it is: no index.json rewrite (and fsync).
        if images.get(t)?.map(|d| d.digest) != Some(image.manifest.digest.clone()) {
            images.tag(t, &image.manifest)?;
        }
        progress.note(&format!("naming to {t}"));
    }
    // buildx reports the pushed manifest (compressed layers) in --metadata-file
    let mut pushed = None;
    for o in outputs {
        let step = progress.step(&format!("exporting to {} {}", o.kind, o.dest));
        let m = if crate::attest::carries(o) {
            &attested_or_image
        } else {
            &image.manifest
        };
        let transfers = crate::progress::step_transfers(progress, step);
        let mut with_inline;
        let annotations = match (&inline, o.push) {
            (Some((k, v)), true) => {
                with_inline = annotations.clone();
                with_inline.manifest.insert(k.clone(), v.clone());
                &with_inline
            }
            _ => &annotations,
        };
        let p = crate::outputs::export(solver.store(), m, tags, o, annotations, true, transfers)?;
        pushed = pushed.or(p);
        progress.step_done(step);
    }
    if b.push && !outputs.iter().any(|o| o.push) {
        let step = progress.step("pushing image");
        let mut manifest_annotations = annotations.manifest.clone();
        if let Some((k, v)) = &inline {
            manifest_annotations.insert(k.clone(), v.clone());
        }
        let opts = rbuild_oci::ConvertOpts {
            annotations: manifest_annotations,
            ..Default::default()
        };
        let transfers = crate::progress::step_transfers(progress, step);
        let p = crate::outputs::push(
            solver.store(),
            &attested_or_image,
            tags,
            &opts,
            true,
            transfers,
        )?;
        pushed = pushed.or(Some(p));
        progress.step_done(step);
    }
    crate::remote_cache::export_all(&solver, &b.cache_to, &roots, progress)?;
    if b.load {
        let step = progress.step("loading into docker");
        crate::outputs::load_into_docker(solver.store(), &image.manifest, tags)?;
        progress.step_done(step);
    }
    drop(lease);
    crate::cachecmd::after_build(solver.store(), b.quiet);
    if let Some(d) = pushed {
        image.manifest = d;
    }
    Ok(image)
}

/// The build-wide RUN settings (`--network`, `--add-host`, `--shm-size`, `--ulimit`) on every
/// exec op of the lowered graph (they are part of the ops, so of their keys).
fn apply_build_flags(def: &mut rbuild_graph::Definition, b: &BuildArgs) -> Result<()> {
    rbuild_solver::runmount::force_network(
        def,
        crate::sandbox_opts::network_mode(b.network.as_deref())?,
    );
    rbuild_solver::runmount::force_run_options(
        def,
        &crate::sandbox_opts::run_options(b).map_err(|e| UsageError(e.to_string()))?,
    );
    Ok(())
}

pub fn dump_graph(root: &Path, b: &BuildArgs) -> Result<ExitCode> {
    let prepared = crate::context::prepare(b)?;
    let b = &prepared.args;
    let inputs = load_inputs(b)?;
    let solver = make_solver(root, b, &inputs.context, None)?;
    let mut plan = rbuild_frontend::build(&inputs.dockerfile, &inputs.opts, &Resolver(&solver))
        .map_err(|e| frontend_error(&inputs, e))?;
    apply_build_flags(&mut plan.definition, b)?;
    print!("{}", plan.definition.dump(plan.root)?);
    let cfg = plan.image.to_canonical_json()?;
    println!("image config: {}", String::from_utf8_lossy(&cfg));
    Ok(ExitCode::SUCCESS)
}

pub use crate::outputs::OutputSpec;

/// Parse a buildx `--output` spec (see `crate::outputs`).
pub fn parse_output(spec: &str) -> Result<OutputSpec> {
    crate::outputs::parse(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_specs() {
        let o = parse_output("type=oci,dest=a.tar").unwrap();
        assert_eq!((o.kind.as_str(), o.dest.as_str()), ("oci", "a.tar"));
        assert!(parse_output("type=oci").is_err());
        assert!(parse_output("dest=x").is_err());
    }

    #[test]
    fn platforms() {
        assert_eq!(
            crate::flags::parse_platform("linux/arm64/v8")
                .unwrap()
                .variant
                .as_deref(),
            Some("v8")
        );
        assert!(crate::flags::parse_platform("linux").is_err());
    }
}
