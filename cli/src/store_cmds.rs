//! Local store and registry commands: `tag`, `rmi`, `pull`, `push`, `inspect`, `history`,
//! `save`, `load`, `login`, `logout` (docker's names and flags).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use rbuild_oci::{Compression, ConvertOpts, Descriptor, ImageStore, Reference};
use serde_json::Value;

use crate::render::UsageError;

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Give an image in the local store another name: tag SOURCE TARGET
    Tag { source: String, target: String },
    /// Remove names from the local store (blobs stay until GC)
    Rmi {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Pull an image from a registry into the local store
    Pull {
        name: String,
        /// Platform to pick from a multi-platform image (default: the host's)
        #[arg(long)]
        platform: Option<String>,
    },
    /// Push an image from the local store to its registry
    Push(PushArgs),
    /// Print an image's manifest and config as JSON (a multi-platform image: its index)
    Inspect {
        name: String,
        /// Of a multi-platform image, inspect this platform's manifest and config
        #[arg(long)]
        platform: Option<String>,
    },
    /// Show the history of an image
    History {
        name: String,
        /// Do not truncate the CREATED BY column
        #[arg(long)]
        no_trunc: bool,
    },
    /// Write images to an archive (docker format by default)
    Save {
        #[arg(required = true)]
        names: Vec<String>,
        /// Output file (default: stdout)
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Archive format: docker or oci
        #[arg(long, default_value = "docker")]
        format: String,
    },
    /// Load images from a docker or OCI archive
    Load {
        /// Input file (default: stdin)
        #[arg(short, long)]
        input: Option<PathBuf>,
        /// Print only the loaded names
        #[arg(short, long)]
        quiet: bool,
    },
    /// Log in to a registry (saves credentials to ~/.docker/config.json or its helper)
    Login(LoginArgs),
    /// Log out from a registry
    Logout {
        /// Registry host (default: docker.io)
        server: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct PushArgs {
    pub name: String,
    /// Layer compression: gzip, zstd, uncompressed
    #[arg(long, default_value = "gzip")]
    pub compression: String,
    /// Compression level
    #[arg(long)]
    pub compression_level: Option<i32>,
    /// Re-compress layers already compressed with another algorithm
    #[arg(long)]
    pub force_compression: bool,
    /// Use Docker media types instead of OCI ones
    #[arg(long)]
    pub docker_mediatypes: bool,
    /// Upload blobs larger than this many MiB in chunks (PATCH) of this size
    #[arg(long, default_value_t = 64)]
    pub chunk_mib: u64,
    /// Suppress progress output
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Registry host (default: docker.io)
    pub server: Option<String>,
    #[arg(short, long)]
    pub username: Option<String>,
    #[arg(short, long)]
    pub password: Option<String>,
    /// Read the password from stdin
    #[arg(long)]
    pub password_stdin: bool,
}

/// An image name given on the command line; a malformed one is a usage error.
fn parse_ref(s: &str) -> Result<Reference> {
    Reference::parse(s).map_err(|e| UsageError(e.to_string()).into())
}

fn open(root: &Path) -> Result<(rbuild_cache::Store, ImageStore)> {
    let store = rbuild_cache::Store::open(root)
        .with_context(|| format!("opening the store at {}", root.display()))?;
    let images = ImageStore::open(&store)?;
    Ok((store, images))
}

fn lookup(images: &ImageStore, name: &str) -> Result<(Reference, Descriptor)> {
    let r = parse_ref(name)?;
    let d = images
        .get(&r)?
        .ok_or_else(|| anyhow!("image {} not found in the local store", r.familiar()))?;
    Ok((r, d))
}

fn registry_host(server: Option<&str>) -> String {
    let s = server.unwrap_or("docker.io");
    let s = s
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let s = s.split('/').next().unwrap_or(s);
    if s == "index.docker.io" || s == "registry-1.docker.io" {
        "docker.io".into()
    } else {
        s.to_string()
    }
}

pub fn run(root: &Path, c: StoreCommand) -> Result<ExitCode> {
    match c {
        StoreCommand::Tag { source, target } => {
            let (_store, images) = open(root)?;
            let (_, d) = lookup(&images, &source)?;
            images.tag(&parse_ref(&target)?, &d)?;
        }
        StoreCommand::Rmi { names } => {
            let (_store, images) = open(root)?;
            let mut missing = Vec::new();
            for n in &names {
                let r = parse_ref(n)?;
                if images.untag(&r)? {
                    println!("Untagged: {}", r.familiar());
                } else {
                    missing.push(r.familiar());
                }
            }
            if !missing.is_empty() {
                bail!("no such image: {}", missing.join(", "));
            }
        }
        StoreCommand::Pull { name, platform } => {
            let (store, images) = open(root)?;
            let r = parse_ref(&name)?;
            let platform = match platform {
                Some(p) => {
                    let parts: Vec<&str> = p.split('/').collect();
                    if parts.len() < 2 || parts.len() > 3 {
                        return Err(UsageError(format!(
                            "--platform {p:?}: expected os/arch[/variant]"
                        ))
                        .into());
                    }
                    rbuild_oci::Platform {
                        os: parts[0].into(),
                        architecture: parts[1].into(),
                        variant: parts.get(2).map(|v| v.to_string()),
                    }
                }
                None => rbuild_oci::Platform::host(),
            };
            let client = rbuild_oci::RegistryClient::new(crate::config::registry_config()?)?;
            let d = with_transfer_progress(false, &format!("pulling {}", r.familiar()), |t| {
                client.pull_image_with_progress(&r, &platform, &store, t)
            })
            .with_context(|| format!("pulling {}", r.familiar()))?;
            if r.tag.is_some() || r.digest.is_none() {
                let mut named = r.clone();
                named.digest = None;
                images.tag(&named, &d)?;
            }
            println!("{}@{}", r.familiar(), d.digest);
        }
        StoreCommand::Push(a) => {
            let (store, images) = open(root)?;
            let (r, d) = lookup(&images, &a.name)?;
            let opts = ConvertOpts {
                compression: Compression::parse(&a.compression)
                    .map_err(|e| UsageError(format!("--compression: {e}")))?,
                level: a.compression_level,
                force: a.force_compression,
                oci_media_types: !a.docker_mediatypes,
                ..Default::default()
            };
            if rbuild_oci::index::is_index(&d) {
                let desc = crate::outputs::push(
                    &store,
                    &d,
                    std::slice::from_ref(&r),
                    &opts,
                    a.quiet,
                    None,
                )?;
                println!("{}@{}", r.familiar(), desc.digest);
                return Ok(ExitCode::SUCCESS);
            }
            let desc = rbuild_oci::convert_image(&store, &d, &opts)?;
            let client = rbuild_oci::RegistryClient::new(crate::config::registry_config()?)?;
            let rep = with_transfer_progress(a.quiet, &format!("pushing {}", r.familiar()), |t| {
                let push_opts = rbuild_oci::push::PushOpts {
                    chunk_size: a.chunk_mib.max(1) << 20,
                    progress: std::sync::Arc::new(t.clone()),
                    ..Default::default()
                };
                client.push_image(&store, &desc, &r, &push_opts)
            })
            .with_context(|| format!("pushing {}", r.familiar()))?;
            if !a.quiet {
                eprintln!(
                    "{} uploaded, {} mounted, {} already present",
                    rep.uploaded, rep.mounted, rep.existing
                );
            }
            println!("{}@{}", r.familiar(), rep.manifest_digest);
        }
        StoreCommand::Inspect { name, platform } => {
            let (store, images) = open(root)?;
            let (r, mut d) = lookup(&images, &name)?;
            if rbuild_oci::index::is_index(&d) {
                let index = rbuild_oci::index::read_index(&store, &d)?;
                match platform {
                    None => {
                        let out = serde_json::json!({
                            "Name": r.to_string(),
                            "Id": d.digest,
                            "Digest": d.digest,
                            "MediaType": d.media_type,
                            "Index": index,
                        });
                        println!("{}", serde_json::to_string_pretty(&out)?);
                        return Ok(ExitCode::SUCCESS);
                    }
                    Some(p) => {
                        let want = crate::multiplat::platforms(std::slice::from_ref(&p))?.remove(0);
                        let want = rbuild_oci::Platform {
                            os: want.os,
                            architecture: want.architecture,
                            variant: want.variant,
                        };
                        d = rbuild_oci::index::pick(&index, &want).ok_or_else(|| {
                            anyhow!(
                                "inspect --platform {p}: {} has no manifest for that platform",
                                r.familiar()
                            )
                        })?;
                    }
                }
            }
            let manifest: Value = serde_json::from_slice(&store.read_blob(&d.digest)?)?;
            let m = images.read_manifest(&d)?;
            let config: Value = serde_json::from_slice(&store.read_blob(&m.config.digest)?)?;
            let out = serde_json::json!({
                "Name": r.to_string(),
                "Id": m.config.digest,
                "Digest": d.digest,
                "MediaType": d.media_type,
                "Manifest": manifest,
                "Config": config,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        StoreCommand::History { name, no_trunc } => {
            let (store, images) = open(root)?;
            let (r, mut d) = lookup(&images, &name)?;
            if rbuild_oci::index::is_index(&d) {
                // a multi-platform image: the host platform's history (as docker)
                let index = rbuild_oci::index::read_index(&store, &d)?;
                d = rbuild_oci::index::pick(&index, &rbuild_oci::Platform::host()).ok_or_else(
                    || {
                        anyhow!(
                            "history: {} has no image for this host's platform {}",
                            r.familiar(),
                            rbuild_oci::Platform::host()
                        )
                    },
                )?;
            }
            let m = images.read_manifest(&d)?;
            let config: Value = serde_json::from_slice(&store.read_blob(&m.config.digest)?)?;
            let empty = Vec::new();
            let history = config["history"].as_array().unwrap_or(&empty);
            let mut layers = m.layers.iter().rev();
            let now = rbuild_oci::time::now_secs();
            let mut lines = vec!["IMAGE\tCREATED\tCREATED BY\tSIZE\tCOMMENT".to_string()];
            for (n, h) in history.iter().rev().enumerate() {
                let size = if h["empty_layer"] == true {
                    0
                } else {
                    match layers.next() {
                        Some(l) => content_size(&store, l)?,
                        None => 0,
                    }
                };
                let mut by = h["created_by"].as_str().unwrap_or("").to_string();
                if !no_trunc && by.chars().count() > 45 {
                    by = by.chars().take(44).collect::<String>() + "…";
                }
                let created = h["created"]
                    .as_str()
                    .and_then(rbuild_oci::time::parse_rfc3339)
                    .map(|c| format!("{} ago", crate::images::human_duration(now - c)))
                    .unwrap_or_default();
                let image = if n == 0 {
                    m.config
                        .digest
                        .trim_start_matches("sha256:")
                        .chars()
                        .take(12)
                        .collect()
                } else {
                    "<missing>".to_string()
                };
                lines.push(format!(
                    "{image}\t{created}\t{}\t{}\t{}",
                    by.replace('\t', " "),
                    crate::images::human_size(size),
                    h["comment"].as_str().unwrap_or("")
                ));
            }
            print!("{}", crate::images::tabulate(&lines));
        }
        StoreCommand::Save {
            names,
            output,
            format,
        } => {
            if format != "docker" && format != "oci" {
                return Err(UsageError(format!(
                    "save --format {format:?}: expected docker or oci"
                ))
                .into());
            }
            let (store, images) = open(root)?;
            let mut refs = Vec::new();
            let mut desc: Option<Descriptor> = None;
            for n in &names {
                let (r, d) = lookup(&images, n)?;
                if let Some(prev) = &desc {
                    if prev.digest != d.digest {
                        bail!(
                            "save: all names must refer to the same image ({} differs)",
                            r.familiar()
                        );
                    }
                }
                desc = Some(d);
                refs.push(r);
            }
            let desc = desc.ok_or_else(|| anyhow!("save: no image given"))?;
            let dest = output
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "-".into());
            crate::outputs::write_dest(&dest, |w| {
                match format.as_str() {
                    "docker" => rbuild_oci::export_docker_archive(&store, &desc, &refs, w)?,
                    "oci" => rbuild_oci::export_oci_archive(&store, &desc, &refs, w)?,
                    other => bail!("save --format {other:?}: expected docker or oci"),
                }
                Ok(())
            })?;
        }
        StoreCommand::Load { input, quiet } => {
            let (store, images) = open(root)?;
            let reader: Box<dyn Read> = match &input {
                Some(p) => Box::new(std::io::BufReader::new(
                    std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
                )),
                None => Box::new(std::io::stdin().lock()),
            };
            let loaded = rbuild_oci::import::import_archive(&store, reader)?;
            if loaded.is_empty() {
                bail!("load: the archive holds no image");
            }
            for img in loaded {
                // check the image is complete before naming it (the import checked an index)
                let id = if rbuild_oci::index::is_index(&img.manifest) {
                    img.manifest.digest.clone()
                } else {
                    let m = images.read_manifest(&img.manifest)?;
                    for b in std::iter::once(&m.config).chain(m.layers.iter()) {
                        if !store.has_blob(&b.digest) {
                            bail!("load: blob {} is missing from the archive", b.digest);
                        }
                    }
                    m.config.digest
                };
                if img.names.is_empty() {
                    println!("Loaded image ID: {id}");
                }
                for n in &img.names {
                    images.tag(n, &img.manifest)?;
                    if quiet {
                        println!("{}", n.familiar());
                    } else {
                        println!("Loaded image: {}", n.familiar());
                    }
                }
            }
        }
        StoreCommand::Login(a) => {
            let host = registry_host(a.server.as_deref());
            let user = match a.username {
                Some(u) => u,
                None => return Err(UsageError("login: give the username with -u".into()).into()),
            };
            let password = if a.password_stdin {
                if a.password.is_some() {
                    return Err(UsageError(
                        "login: --password and --password-stdin are mutually exclusive".into(),
                    )
                    .into());
                }
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s.trim_end_matches(['\n', '\r']).to_string()
            } else {
                match a.password {
                    Some(p) => {
                        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
                        p
                    }
                    None => {
                        return Err(UsageError(
                            "login: give the password with --password-stdin (or -p)".into(),
                        )
                        .into())
                    }
                }
            };
            let client = rbuild_oci::RegistryClient::new(crate::config::registry_config()?)?;
            client.set_basic_auth(&host, &user, &password);
            client
                .check_login(&host)
                .with_context(|| format!("login to {host}"))?;
            let saved = rbuild_oci::auth::store(&host, &user, &password)?;
            eprintln!("credentials saved in {saved}");
            println!("Login Succeeded");
        }
        StoreCommand::Logout { server } => {
            let host = registry_host(server.as_deref());
            if rbuild_oci::auth::erase(&host)? {
                println!("Removing login credentials for {host}");
            } else {
                println!("Not logged in to {host}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Run a registry transfer as one progress step named `name` (the display chosen as for
/// builds: `--progress`'s environment `RBUILD_PROGRESS`, tty on a terminal, else plain), its
/// blobs' byte progress shown under it.
fn with_transfer_progress<T>(
    quiet: bool,
    name: &str,
    f: impl FnOnce(&TransferSink) -> Result<T, rbuild_oci::OciError>,
) -> Result<T> {
    use rbuild_solver::Progress;
    use std::io::IsTerminal;
    let mode = if quiet {
        crate::progress::Mode::Quiet
    } else {
        let value = std::env::var("RBUILD_PROGRESS").unwrap_or_else(|_| "auto".into());
        crate::progress::resolve_mode(&value, std::io::stderr().is_terminal())
            .map_err(crate::render::usage)?
    };
    let reporter = std::sync::Arc::new(crate::progress::Reporter::new(mode));
    reporter.event(rbuild_solver::Event::Started {
        vertex: 0,
        name: name.to_string(),
    });
    let started = std::time::Instant::now();
    let sink = TransferSink(std::sync::Arc::clone(&reporter));
    let result = f(&sink);
    match &result {
        Ok(_) => reporter.event(rbuild_solver::Event::Done {
            vertex: 0,
            seconds: started.elapsed().as_secs_f64(),
        }),
        Err(e) => reporter.event(rbuild_solver::Event::Failed {
            vertex: 0,
            message: e.to_string(),
        }),
    }
    reporter.finish(&crate::progress::Outcome {
        ok: result.is_ok(),
        ..Default::default()
    });
    Ok(result?)
}

/// Byte progress of a `pull` or `push` command, shown as its one step's statuses.
#[derive(Clone)]
struct TransferSink(std::sync::Arc<crate::progress::Reporter>);

impl rbuild_oci::progress::TransferProgress for TransferSink {
    fn transfer(&self, t: &rbuild_oci::progress::Transfer) {
        rbuild_solver::VertexTransfers {
            vertex: 0,
            progress: self.0.as_ref(),
        }
        .transfer(t);
    }
}

/// The size of a layer's content as docker's history shows it: the bytes of its regular
/// files (not the tar, whose headers and padding make a 3-byte file 2048 bytes).
fn content_size(store: &rbuild_cache::Store, layer: &Descriptor) -> Result<u64> {
    let file = store.open_blob(&layer.digest)?;
    let c = Compression::of_media_type(&layer.media_type).unwrap_or(Compression::Uncompressed);
    let reader = rbuild_oci::compress::decompressor(c, std::io::BufReader::new(file))
        .with_context(|| format!("reading layer {}", layer.digest))?;
    let mut archive = tar::Archive::new(reader);
    let mut total = 0u64;
    for entry in archive
        .entries()
        .with_context(|| format!("reading layer {}", layer.digest))?
    {
        let entry = entry.with_context(|| format!("reading layer {}", layer.digest))?;
        if entry.header().entry_type().is_file() {
            total = total.saturating_add(entry.header().size().unwrap_or(0));
        }
    }
    Ok(total)
}

/// `rbuild debug compress`: stdin → stdout through the layer compressor.
pub fn debug_compress(
    algorithm: &str,
    threads: Option<usize>,
    level: Option<i32>,
) -> Result<ExitCode> {
    let c = Compression::parse(algorithm)?;
    let threads = threads.unwrap_or_else(rbuild_oci::compress::cpus);
    let stdin = std::io::stdin();
    let mut input = std::io::BufReader::with_capacity(1 << 20, stdin.lock());
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    rbuild_oci::compress::compress(c, level, threads, &mut input, &mut out)?;
    std::io::Write::flush(&mut out)?;
    Ok(ExitCode::SUCCESS)
}
