//! `rbuild imagetools`: `inspect` an image or index in a registry (with its attestations, in
//! buildx's `--format` vocabulary) and `create` an index from images already pushed (the
//! one-runner-per-architecture CI pattern), without pulling layers.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand};
use rbuild_oci::imagetools::{self, Remote};
use rbuild_oci::{attest, Reference, RegistryClient};
use serde_json::{json, Value};

use crate::render::UsageError;

#[derive(Debug, Clone, Subcommand)]
pub enum ImagetoolsCommand {
    /// Show an image or index in a registry, with its attestations
    Inspect(InspectArgs),
    /// Create an index from images in registries (no layer is pulled)
    Create(CreateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// Print the manifest or index exactly as the registry serves it
    #[arg(long)]
    pub raw: bool,
    /// Go-template subset as buildx: '{{json .Manifest}}', '{{json .Image}}',
    /// '{{json .Provenance}}', '{{json .SBOM}}', '{{.Name}}', '{{.Digest}}'
    #[arg(long)]
    pub format: Option<String>,
    /// Image reference
    pub reference: String,
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Name of the index to push; repeatable
    #[arg(short = 't', long = "tag", value_name = "REF", required = true)]
    pub tags: Vec<String>,
    /// Add an index annotation KEY=VALUE (`index:` prefix accepted); repeatable
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
    /// Print the index instead of pushing it
    #[arg(long)]
    pub dry_run: bool,
    /// Source images or indexes
    #[arg(required = true, value_name = "SOURCE")]
    pub sources: Vec<String>,
}

fn parse_ref(s: &str) -> Result<Reference> {
    Reference::parse(s).map_err(|e| UsageError(format!("invalid reference {s:?}: {e}")).into())
}

fn client() -> Result<RegistryClient> {
    Ok(RegistryClient::new(crate::config::registry_config()?)?)
}

pub fn run(root: &Path, c: ImagetoolsCommand) -> Result<ExitCode> {
    match c {
        ImagetoolsCommand::Inspect(a) => inspect(&a),
        ImagetoolsCommand::Create(a) => create(root, &a),
    }
}

/// What `--format` asks for.
#[derive(Debug, PartialEq, Eq)]
enum Field {
    Name,
    Digest,
    Manifest,
    Image,
    Provenance,
    Sbom,
}

/// `{{json .X}}` or `{{.X}}` → (field, json).
fn parse_format(f: &str) -> Result<(Field, bool)> {
    let inner = f
        .trim()
        .strip_prefix("{{")
        .and_then(|s| s.strip_suffix("}}"))
        .map(str::trim)
        .ok_or_else(|| {
            anyhow!(UsageError(format!(
                "--format {f:?}: expected {{{{json .FIELD}}}}"
            )))
        })?;
    let (json, field) = match inner.strip_prefix("json ") {
        Some(rest) => (true, rest.trim()),
        None => (false, inner),
    };
    let field = match field {
        ".Name" => Field::Name,
        ".Digest" => Field::Digest,
        ".Manifest" => Field::Manifest,
        ".Image" => Field::Image,
        ".Provenance" => Field::Provenance,
        ".SBOM" => Field::Sbom,
        other => {
            return Err(UsageError(format!(
                "--format: unknown field {other:?} (.Name, .Digest, .Manifest, .Image, \
                 .Provenance, .SBOM)"
            ))
            .into())
        }
    };
    Ok((field, json))
}

/// The platform images of a remote (descriptor per platform text), attestations apart.
fn images(remote: &Remote) -> Vec<(String, rbuild_oci::Descriptor)> {
    match &remote.index {
        Some(index) => index
            .manifests
            .iter()
            .filter(|d| !attest::is_attestation(d))
            .take(256)
            .map(|d| {
                let p = d
                    .platform
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "unknown".into());
                (p, d.clone())
            })
            .collect(),
        None => vec![(String::new(), remote.descriptor())],
    }
}

/// `{"SLSA": …}` / `{"SPDX": …}` per platform (a single platform: the object itself), as
/// `docker buildx imagetools inspect --format` prints them.
fn attestation_view(
    client: &RegistryClient,
    remote: &Remote,
    predicate: &dyn Fn(&str) -> Option<&'static str>,
) -> Result<Value> {
    let mut per = serde_json::Map::new();
    let Some(index) = &remote.index else {
        return Ok(json!({}));
    };
    for (platform, image) in images(remote) {
        let mut v = serde_json::Map::new();
        // a hostile index may list thousands: a few per image are read
        for att in index
            .manifests
            .iter()
            .filter(|d| {
                attest::is_attestation(d)
                    && d.annotations.get(attest::REFERENCE_DIGEST) == Some(&image.digest)
            })
            .take(8)
        {
            for (pt, st) in imagetools::statements(client, &remote.reference, att)? {
                if let Some(key) = predicate(&pt) {
                    let p = st.get("predicate").cloned().unwrap_or(Value::Null);
                    // further documents of the kind (the context's or a stage's SBOM) go to
                    // `Additional<KEY>s`, as buildx prints them
                    if v.contains_key(key) {
                        let extra = v
                            .entry(format!("Additional{key}s"))
                            .or_insert_with(|| json!([]));
                        if let Value::Array(a) = extra {
                            a.push(p);
                        }
                    } else {
                        v.insert(key.to_string(), p);
                    }
                }
            }
        }
        per.insert(platform, Value::Object(v));
    }
    Ok(if per.len() == 1 {
        per.into_iter()
            .next()
            .map(|(_, v)| v)
            .unwrap_or(Value::Null)
    } else {
        Value::Object(per)
    })
}

fn inspect(a: &InspectArgs) -> Result<ExitCode> {
    let r = parse_ref(&a.reference)?;
    let format = a.format.as_deref().map(parse_format).transpose()?;
    let client = client()?;
    let remote =
        imagetools::fetch(&client, &r).with_context(|| format!("inspecting {}", r.familiar()))?;
    let mut out = std::io::stdout().lock();
    if a.raw {
        out.write_all(&remote.raw)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some((field, as_json)) = format else {
        print_summary(&mut out, &remote)?;
        return Ok(ExitCode::SUCCESS);
    };
    let value = match field {
        Field::Name => json!(r.to_string()),
        Field::Digest => json!(remote.digest),
        Field::Manifest => serde_json::from_slice(&remote.raw)?,
        Field::Image => {
            let list = images(&remote);
            let mut per = serde_json::Map::new();
            for (p, d) in &list {
                per.insert(p.clone(), imagetools::config(&client, &r, d)?);
            }
            if per.len() == 1 {
                per.into_iter()
                    .next()
                    .map(|(_, v)| v)
                    .unwrap_or(Value::Null)
            } else {
                Value::Object(per)
            }
        }
        Field::Provenance => attestation_view(&client, &remote, &|pt| {
            pt.starts_with("https://slsa.dev/provenance/")
                .then_some("SLSA")
        })?,
        Field::Sbom => attestation_view(&client, &remote, &|pt| {
            (pt == attest::PREDICATE_SPDX).then_some("SPDX")
        })?,
    };
    match (as_json, &value) {
        (false, Value::String(s)) => writeln!(out, "{s}")?,
        _ => writeln!(out, "{}", serde_json::to_string(&value)?)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(out: &mut dyn Write, remote: &Remote) -> Result<()> {
    writeln!(out, "Name:      {}", remote.reference)?;
    writeln!(out, "MediaType: {}", remote.media_type)?;
    writeln!(out, "Digest:    {}", remote.digest)?;
    if let Some(index) = &remote.index {
        writeln!(out, "\nManifests:")?;
        let mut bare = remote.reference.clone();
        bare.tag = None;
        bare.digest = None;
        for (i, d) in index.manifests.iter().enumerate() {
            if i > 0 {
                writeln!(out)?;
            }
            writeln!(out, "  Name:        {}@{}", bare, d.digest)?;
            writeln!(out, "  MediaType:   {}", d.media_type)?;
            if let Some(p) = &d.platform {
                writeln!(out, "  Platform:    {p}")?;
            }
            if !d.annotations.is_empty() {
                writeln!(out, "  Annotations:")?;
                let w = d.annotations.keys().map(String::len).max().unwrap_or(0);
                for (k, v) in &d.annotations {
                    writeln!(out, "    {:w$} {v}", format!("{k}:"), w = w + 1)?;
                }
            }
        }
    }
    Ok(())
}

fn create(root: &Path, a: &CreateArgs) -> Result<ExitCode> {
    let targets = a
        .tags
        .iter()
        .map(|t| parse_ref(t))
        .collect::<Result<Vec<_>>>()?;
    let sources = a
        .sources
        .iter()
        .map(|s| parse_ref(s))
        .collect::<Result<Vec<_>>>()?;
    let mut annotations = BTreeMap::new();
    for an in &a.annotations {
        let an = an.strip_prefix("index:").unwrap_or(an);
        let (k, v) = an
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--annotation {an:?}: expected KEY=VALUE")))?;
        annotations.insert(k.to_string(), v.to_string());
    }
    let store = rbuild_cache::Store::open(root)
        .with_context(|| format!("opening the store at {}", root.display()))?;
    let client = client()?;
    let (desc, bytes) =
        imagetools::create(&client, &store, &sources, &targets, &annotations, a.dry_run)?;
    if a.dry_run {
        let v: Value = serde_json::from_slice(&bytes)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for t in &targets {
            eprintln!("pushed {}@{}", t.familiar(), desc.digest);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(
            parse_format("{{json .Provenance}}").unwrap(),
            (Field::Provenance, true)
        );
        assert_eq!(parse_format("{{ .Name }}").unwrap(), (Field::Name, false));
        assert!(parse_format("{{json .Nope}}").is_err());
        assert!(parse_format("json .SBOM").is_err());
    }
}
