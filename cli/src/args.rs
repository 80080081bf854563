//! Command-line arguments (docker buildx-compatible names where rbuild has the feature).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::cachespec::{self, CacheSpec};
use crate::flags;

const EXAMPLES: &str = "\
Examples:
  rbuild -t app:v1 .                              build ./Dockerfile, tag app:v1 (= rbuild build …)
  rbuild build -f docker/Dockerfile --target prod --build-arg V=2 -t app:prod .
  rbuild build --progress=plain --metadata-file meta.json --iidfile id.txt .
  rbuild build -o type=oci,dest=app.tar .         export an OCI archive
  rbuild build - < Dockerfile                     Dockerfile on stdin, no context
  tar -c . | rbuild build -t app -                tar context on stdin
  rbuild build https://github.com/org/repo.git#main:sub
  rbuild images
  rbuild completion bash > /etc/bash_completion.d/rbuild

Environment: RBUILD_ROOT (store), RBUILD_PROGRESS (auto|tty|plain|rawjson|quiet), NO_COLOR.
Exit codes: 0 success, 1 build or command failed, 2 usage error, 3 a bug in rbuild.";

#[derive(Debug, Parser)]
#[command(
    name = "rbuild",
    version,
    about = "Build container images from Dockerfiles — daemonless, cached, reproducible",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// Store directory [env: RBUILD_ROOT] (default: /var/lib/rbuild as root, $XDG_DATA_HOME/rbuild otherwise)
    // RBUILD_ROOT is read by config::store_root, not by clap: clap would print
    // `--root <ROOT>` in usage lines as if the user had typed it.
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Dockerfile (the default command)
    #[command(after_help = EXAMPLES)]
    Build(BuildArgs),
    /// List tagged images in the local store
    Images(ImagesArgs),
    /// Show the disk usage of the store (blobs, snapshots, index, cache mounts)
    Du,
    /// Remove build cache (unreferenced content; with flags, cache entries too)
    Prune(PruneArgs),
    #[command(flatten)]
    Store(crate::store_cmds::StoreCommand),
    /// Inspect images in registries, create indexes from pushed images
    Imagetools {
        #[command(subcommand)]
        command: crate::imagetools::ImagetoolsCommand,
    },
    /// Developer tools
    Debug {
        #[command(subcommand)]
        command: DebugCommand,
    },
    /// Print version information
    Version,
    /// Print a shell completion script: `rbuild completion bash > /etc/bash_completion.d/rbuild`
    Completion {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Print a man page (roff): `rbuild man | man -l -`, `rbuild man build`
    Man {
        /// The command whose page to print (default: rbuild itself)
        command: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)]
pub enum DebugCommand {
    /// Print the build graph (with digests) the Dockerfile lowers to
    DumpGraph(BuildArgs),
    /// Compress stdin to stdout with rbuild's layer compressor (for benchmarks)
    Compress {
        /// gzip, zstd or uncompressed
        #[arg(long, default_value = "gzip")]
        algorithm: String,
        /// Worker threads (default: all cores)
        #[arg(long)]
        threads: Option<usize>,
        /// Compression level
        #[arg(long)]
        level: Option<i32>,
    },
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Do not prompt for confirmation (rbuild never prompts; accepted as docker's flag)
    #[arg(short, long)]
    pub force: bool,
    /// Remove all cache entries, cache mounts and the context stat cache (tagged images stay)
    #[arg(short, long)]
    pub all: bool,
    /// Remove least recently used cache until the store is at most this big (e.g. 10GB)
    #[arg(long, value_name = "SIZE")]
    pub keep_storage: Option<String>,
    /// Filter: until=DURATION removes cache unused for longer than DURATION (e.g. 24h)
    #[arg(long, value_name = "FILTER")]
    pub filter: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Only print image ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Also list the base images builds pulled (they have no tag of their own)
    #[arg(short, long)]
    pub all: bool,
    /// Show digests
    #[arg(long)]
    pub digests: bool,
    /// Filter: reference=PATTERN, dangling=true|false, before=IMAGE, since=IMAGE, label=KEY[=VALUE]; repeatable
    #[arg(short, long, value_name = "FILTER")]
    pub filter: Vec<String>,
    /// Output format: table [TEMPLATE], json, or a template such as '{{.Repository}}:{{.Tag}}'
    /// (fields: .Repository .Tag .ID .Digest .CreatedSince .CreatedAt .Size .Platforms)
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// Do not truncate image ids
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Debug, Args, Clone, Default)]
pub struct BuildArgs {
    /// Name and optionally a tag (name:tag); repeatable
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    pub tags: Vec<String>,
    /// Dockerfile path (default: CONTEXT/Dockerfile; `-` reads it from stdin)
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Build-time variable KEY=VALUE (or KEY to take it from the environment); repeatable
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Additional build context NAME=PATH|docker-image://REF; repeatable (oci-layout://, git and http URLs, target: are rejected: not supported yet)
    #[arg(long = "build-context", value_name = "NAME=VALUE", value_parser = flags::build_context)]
    pub build_contexts: Vec<String>,
    /// Target stage to build
    #[arg(long)]
    pub target: Option<String>,
    /// Target platform(s) os/arch[/variant]; comma-separated or repeated
    #[arg(long = "platform", value_name = "PLATFORM", value_delimiter = ',')]
    pub platforms: Vec<String>,
    /// Do not use the cache
    #[arg(long)]
    pub no_cache: bool,
    /// Do not use the cache for these stages; comma-separated or repeated
    #[arg(long = "no-cache-filter", value_name = "STAGE", value_delimiter = ',')]
    pub no_cache_filter: Vec<String>,
    /// Re-resolve base images from their registries
    #[arg(long)]
    pub pull: bool,
    /// Suppress build output and print the image id on success
    #[arg(short, long)]
    pub quiet: bool,
    /// Output: type=oci|docker|tar,dest=FILE|-, type=local,dest=DIR, type=image|registry[,name=REF][,push=true] (buildx syntax); repeatable
    #[arg(short = 'o', long = "output", value_name = "SPEC", value_parser = flags::output)]
    pub outputs: Vec<String>,
    /// Push the image to its registry (shorthand for --output=type=registry)
    #[arg(long)]
    pub push: bool,
    /// Load the image into docker (shorthand for --output=type=docker)
    #[arg(long)]
    pub load: bool,
    /// External cache source: REF (a cache, or an image with inline cache), type=registry,ref=REF or type=local,src=DIR[,tag=T]; repeatable (docs/cache.md)
    #[arg(long = "cache-from", value_name = "SPEC", value_parser = cachespec::parse_cache_from)]
    pub cache_from: Vec<CacheSpec>,
    /// Cache export: type=registry,ref=REF, type=local,dest=DIR[,tag=T] or type=inline, with [,mode=min|max][,compression=gzip|zstd|uncompressed][,compression-level=N][,force-compression=true][,oci-mediatypes=true|false][,cache-mounts=true][,ignore-error=true]; repeatable (docs/cache.md)
    #[arg(long = "cache-to", value_name = "SPEC", value_parser = cachespec::parse_cache_to)]
    pub cache_to: Vec<CacheSpec>,
    /// Secret for RUN --mount=type=secret: id=ID[,src=FILE] or type=env,id=ID[,env=VAR]
    #[arg(long = "secret", value_name = "SPEC", value_parser = flags::secret)]
    pub secrets: Vec<String>,
    /// SSH agent socket for RUN --mount=type=ssh: default|ID[=SOCKET] (an agent socket; key files are refused)
    #[arg(long = "ssh", value_name = "SPEC", value_parser = flags::ssh)]
    pub ssh: Vec<String>,
    /// Network mode for RUN steps: default (isolated, outbound only), none or host
    #[arg(long, value_name = "MODE", value_parser = flags::network)]
    pub network: Option<String>,
    /// Set an image label KEY=VALUE; repeatable
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = flags::label)]
    pub labels: Vec<String>,
    /// Add an annotation [TYPE[PLATFORM]:]KEY=VALUE; repeatable
    #[arg(long = "annotation", value_name = "KEY=VALUE", value_parser = flags::annotation)]
    pub annotations: Vec<String>,
    /// Progress output: auto, tty, plain, rawjson or quiet
    #[arg(long, default_value = "auto", env = "RBUILD_PROGRESS", value_name = "MODE", value_parser = flags::progress)]
    pub progress: String,
    /// Write the build result (digests, descriptor, names) as JSON to this file
    #[arg(long = "metadata-file", value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// Write the image id to this file
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// Allow extra privileges: network.host, security.insecure; repeatable
    #[arg(long = "allow", value_name = "ENTITLEMENT", value_delimiter = ',', value_parser = flags::entitlement)]
    pub allow: Vec<String>,
    /// Add a host-to-IP mapping HOST:IP to RUN steps' /etc/hosts; repeatable
    #[arg(long = "add-host", value_name = "HOST:IP", value_parser = flags::add_host)]
    pub add_hosts: Vec<String>,
    /// Size of /dev/shm in RUN steps (e.g. 64m)
    #[arg(long = "shm-size", value_name = "BYTES", value_parser = flags::shm_size)]
    pub shm_size: Option<u64>,
    /// Resource limit for RUN steps NAME=SOFT[:HARD] (e.g. nofile=1024:2048); repeatable
    #[arg(long = "ulimit", value_name = "NAME=LIMIT", value_parser = flags::ulimit)]
    pub ulimits: Vec<String>,
    /// Memory limit of each RUN step (e.g. 512m; a cgroup, as `docker build -m`)
    #[arg(short = 'm', long = "memory", value_name = "BYTES", value_parser = flags::bytes)]
    pub memory: Option<u64>,
    /// CPU CFS quota of each RUN step in microseconds per period (as `docker build`)
    #[arg(long = "cpu-quota", value_name = "MICROSECONDS")]
    pub cpu_quota: Option<u64>,
    /// CPU CFS period of each RUN step in microseconds (default 100000)
    #[arg(long = "cpu-period", value_name = "MICROSECONDS")]
    pub cpu_period: Option<u64>,
    /// Number of CPUs each RUN step may use (e.g. 1.5; sets the CFS quota)
    #[arg(long = "cpus", value_name = "DECIMAL")]
    pub cpus: Option<f64>,
    /// Provenance attestation: true, false or mode=min|max[,version=v0.2|v1]
    #[arg(long, value_name = "VALUE", num_args = 0..=1, default_missing_value = "true", value_parser = flags::attest_value)]
    pub provenance: Option<String>,
    /// SBOM attestation: true, false or generator=IMAGE
    #[arg(long, value_name = "VALUE", num_args = 0..=1, default_missing_value = "true", value_parser = flags::attest_value)]
    pub sbom: Option<String>,
    /// Attestation: type=provenance[,mode=min|max,version=v0.2|v1] or type=sbom; repeatable
    #[arg(long = "attest", value_name = "SPEC")]
    pub attests: Vec<String>,
    /// Run the build checks (lint rules) and print their findings without building (= --call=check)
    #[arg(long)]
    pub check: bool,
    /// What to do instead of building: build (default), check, outline, targets; `,format=json` for JSON
    #[arg(long, value_name = "METHOD[,format=json]", value_parser = crate::call::value)]
    pub call: Option<String>,
    /// Maximum number of steps run at once (default: twice the CPUs, at least 4)
    #[arg(long)]
    pub max_parallelism: Option<usize>,
    /// Print, for every step, why it ran or which earlier build its cached result came from
    #[arg(long)]
    pub explain: bool,
    /// Pin every timestamp (SOURCE_DATE_EPOCH=0 unless set) for bit-identical images
    #[arg(long)]
    pub reproducible: bool,
    /// Runtime for RUN steps: builtin (namespace sandbox) or runc
    #[arg(
        long,
        value_name = "NAME",
        env = "RBUILD_RUNTIME",
        default_value = "builtin"
    )]
    pub runtime: String,
    /// Isolation of RUN steps: auto (the namespace sandbox; chroot isolation, with a warning,
    /// where it cannot be set up, e.g. in an unprivileged container), sandbox (fail without
    /// it) or chroot (reduced isolation: the host's network; see docs/sandbox.md)
    #[arg(
        long,
        value_name = "MODE",
        env = "RBUILD_ISOLATION",
        default_value = "auto",
        value_parser = ["auto", "sandbox", "chroot"]
    )]
    pub isolation: String,
    /// Build context: a directory, `-` (a Dockerfile or a tar archive on stdin) or a git URL
    /// (`https://host/repo.git#ref:subdir`, `git@host:repo.git`, `file:///path/repo.git`)
    #[arg(value_name = "CONTEXT")]
    pub context: PathBuf,
    /// The checkout of a git URL context (set when it is cloned, not a flag).
    #[arg(skip)]
    pub git_source: Option<crate::epoch::GitSource>,
}

const SUBCOMMANDS: &[&str] = &[
    "build",
    "imagetools",
    "images",
    "du",
    "prune",
    "debug",
    "version",
    "completion",
    "man",
    "help",
    "tag",
    "rmi",
    "pull",
    "push",
    "inspect",
    "history",
    "save",
    "load",
    "login",
    "logout",
];

/// The first argument that is not a global option, and its index.
fn first_command_arg(argv: &[OsString]) -> Option<(usize, String)> {
    let mut i = 1;
    while i < argv.len() {
        let a = argv[i].to_string_lossy().to_string();
        if a == "--root" {
            i += 2;
            continue;
        }
        if a.starts_with("--root=") {
            i += 1;
            continue;
        }
        return Some((i, a));
    }
    None
}

/// `rbuild imgaes`: a word in the command's place that is neither a subcommand nor a path to
/// build (`rbuild DIR` is `rbuild build DIR`) is an unknown command; the message suggests the
/// closest one (cobra's wording, as docker and buildx).
pub fn unknown_command(argv: &[OsString]) -> Option<String> {
    let (_, a) = first_command_arg(argv)?;
    let looks_like_context = a.starts_with('-')
        || a.contains('/')
        || a.contains(':')
        || a.starts_with('.')
        || a.ends_with(".git")
        || std::path::Path::new(&a).exists();
    if looks_like_context || SUBCOMMANDS.contains(&a.as_str()) {
        return None;
    }
    Some(
        match rbuild_frontend::suggest(&a, SUBCOMMANDS.iter().copied()) {
            Some(s) => format!(
                "unknown command {a:?} for \"rbuild\"\n\nDid you mean this?\n\t{s}\n\nRun 'rbuild --help' for usage; to build a directory, give its path (./{a})."
            ),
            None => format!(
                "unknown command {a:?} for \"rbuild\", and no directory {a:?} to build\n\nRun 'rbuild --help' for usage."
            ),
        },
    )
}

/// `rbuild -t x .` means `rbuild build -t x .`: insert `build` when the first argument that is
/// not a global option is not a subcommand.
pub fn with_default_subcommand(mut argv: Vec<OsString>) -> Vec<OsString> {
    if let Some((i, a)) = first_command_arg(&argv) {
        if SUBCOMMANDS.contains(&a.as_str())
            || matches!(a.as_str(), "-h" | "--help" | "-V" | "--version")
        {
            return argv;
        }
        argv.insert(i, OsString::from("build"));
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        with_default_subcommand(args.iter().map(OsString::from).collect())
            .into_iter()
            .map(|s| s.to_string_lossy().to_string())
            .collect()
    }

    #[test]
    fn build_is_the_default_subcommand() {
        assert_eq!(
            v(&["rbuild", "-t", "a", "."]),
            ["rbuild", "build", "-t", "a", "."]
        );
        assert_eq!(v(&["rbuild", "."]), ["rbuild", "build", "."]);
        assert_eq!(
            v(&["rbuild", "--root", "/r", "."]),
            ["rbuild", "--root", "/r", "build", "."]
        );
        assert_eq!(v(&["rbuild", "images"]), ["rbuild", "images"]);
        assert_eq!(v(&["rbuild", "--help"]), ["rbuild", "--help"]);
        assert_eq!(v(&["rbuild"]), ["rbuild"]);
    }

    #[test]
    fn misspelt_commands_are_unknown_and_paths_are_builds() {
        let u = |a: &[&str]| unknown_command(&a.iter().map(OsString::from).collect::<Vec<_>>());
        let m = u(&["rbuild", "imgaes"]).unwrap();
        assert!(
            m.contains("unknown command \"imgaes\"") && m.contains("\timages"),
            "{m}"
        );
        assert!(u(&["rbuild", "--root", "/r", "pussh"])
            .unwrap()
            .contains("\tpush"));
        assert!(u(&["rbuild", "zzzzzz"]).unwrap().contains("no directory"));
        for ok in [
            "images",
            ".",
            "./imgaes",
            "-t",
            "-",
            "https://github.com/a/b.git",
            "git@github.com:a/b.git",
            "/",
        ] {
            assert_eq!(u(&["rbuild", ok]), None, "{ok}");
        }
        assert_eq!(u(&["rbuild"]), None);
    }

    #[test]
    fn every_build_flag_parses() {
        let cli = Cli::try_parse_from(v(&[
            "rbuild",
            "-t",
            "a:1",
            "--tag=b",
            "-f",
            "D",
            "--build-arg",
            "X=1",
            "--build-arg",
            "FROM_ENV",
            "--build-context",
            "base=docker-image://alpine:3",
            "--target",
            "t",
            "--platform",
            "linux/amd64,linux/arm64/v8",
            "--no-cache",
            "--no-cache-filter",
            "a,b",
            "--pull",
            "-q",
            "-o",
            "type=oci,dest=x.tar",
            "--output=type=local,\"dest=a,b\"",
            "--push",
            "--load",
            "--cache-from",
            "user/app:cache",
            "--cache-from",
            "type=local,src=/c",
            "--cache-to",
            "type=registry,ref=r/a:c,mode=max",
            "--secret",
            "id=tok,src=/t",
            "--secret",
            "type=env,id=K",
            "--ssh",
            "default",
            "--network",
            "host",
            "--progress",
            "rawjson",
            "--label",
            "k=v",
            "--annotation",
            "manifest:k=v",
            "--metadata-file",
            "m.json",
            "--iidfile",
            "id",
            "--allow",
            "network.host,security.insecure",
            "--add-host",
            "db:10.0.0.2",
            "--shm-size",
            "64m",
            "--ulimit",
            "nofile=1024:2048",
            "--provenance",
            "--sbom=false",
            "--max-parallelism",
            "3",
            "ctx",
        ]))
        .unwrap();
        let Command::Build(b) = cli.command else {
            panic!("not build")
        };
        assert_eq!(b.tags, ["a:1", "b"]);
        assert_eq!(b.file, Some(PathBuf::from("D")));
        assert_eq!(b.build_args, ["X=1", "FROM_ENV"]);
        assert_eq!(b.build_contexts, ["base=docker-image://alpine:3"]);
        assert_eq!(b.target.as_deref(), Some("t"));
        assert_eq!(b.platforms, ["linux/amd64", "linux/arm64/v8"]);
        assert!(b.no_cache && b.pull && b.quiet && b.push && b.load);
        assert_eq!(b.no_cache_filter, ["a", "b"]);
        assert_eq!(
            b.outputs,
            ["type=oci,dest=x.tar", "type=local,\"dest=a,b\""]
        );
        let texts = |v: &[CacheSpec]| v.iter().map(|c| c.text.clone()).collect::<Vec<_>>();
        assert_eq!(
            texts(&b.cache_from),
            ["user/app:cache", "type=local,src=/c"]
        );
        assert_eq!(texts(&b.cache_to), ["type=registry,ref=r/a:c,mode=max"]);
        assert_eq!(b.cache_to[0].export.mode, cachespec::CacheMode::Max);
        assert_eq!(b.secrets, ["id=tok,src=/t", "type=env,id=K"]);
        assert_eq!(b.ssh, ["default"]);
        assert_eq!(b.network.as_deref(), Some("host"));
        assert_eq!(b.progress, "rawjson");
        assert_eq!(b.labels, ["k=v"]);
        assert_eq!(b.annotations, ["manifest:k=v"]);
        assert_eq!(b.metadata_file, Some(PathBuf::from("m.json")));
        assert_eq!(b.iidfile, Some(PathBuf::from("id")));
        assert_eq!(b.allow, ["network.host", "security.insecure"]);
        assert_eq!(b.add_hosts, ["db:10.0.0.2"]);
        assert_eq!(b.shm_size, Some(64 << 20));
        assert_eq!(b.ulimits, ["nofile=1024:2048"]);
        assert_eq!(b.provenance.as_deref(), Some("true"));
        assert_eq!(b.sbom.as_deref(), Some("false"));
        assert_eq!(b.max_parallelism, Some(3));
        assert_eq!(b.context, PathBuf::from("ctx"));
        // every flag above is supported
        assert_eq!(crate::unsupported::unsupported(&b), None);
    }

    #[test]
    fn a_plain_build_uses_no_unsupported_flag() {
        let cli =
            Cli::try_parse_from(v(&["rbuild", "-t", "x", "--provenance=false", "."])).unwrap();
        let Command::Build(b) = cli.command else {
            panic!("not build")
        };
        assert_eq!(crate::unsupported::unsupported(&b), None);
    }

    #[test]
    fn malformed_values_are_usage_errors_naming_the_flag() {
        for (flag, value) in [
            ("--secret", "src=x"),
            ("--ssh", "=x"),
            ("--cache-to", "type=floppy"),
            ("--cache-to", "type=local,src=/c"),
            ("--cache-to", "type=registry,ref=r/a,colour=blue"),
            ("--cache-from", "type=gha"),
            ("--cache-from", "type=registry,ref=r/a,mode=max"),
            ("--build-context", "noequals"),
            ("--network", "bridge"),
            ("--allow", "root"),
            ("--add-host", "db:notanip"),
            ("--shm-size", "lots"),
            ("--ulimit", "nofile"),
            ("--annotation", "novalue"),
            ("--label", "=v"),
            ("--progress", "fancy"),
            ("--provenance", "a,b"),
            ("--output", "type=local,dest=\"a,b\""),
        ] {
            let e = Cli::try_parse_from(v(&["rbuild", flag, value, "."]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(flag), "{flag} {value}: {e}");
        }
    }

    #[test]
    fn sandbox_flags_parse() {
        let cli = Cli::try_parse_from(v(&[
            "rbuild",
            "--secret",
            "id=a,src=f",
            "--secret",
            "id=b,env=V",
            "--ssh",
            "default",
            "--allow",
            "network.host",
            "--network",
            "none",
            "--runtime",
            "runc",
            ".",
        ]))
        .unwrap();
        let Command::Build(b) = cli.command else {
            panic!("not build")
        };
        assert_eq!(b.secrets, ["id=a,src=f", "id=b,env=V"]);
        assert_eq!(b.ssh, ["default"]);
        assert_eq!(b.allow, ["network.host"]);
        assert_eq!(b.network.as_deref(), Some("none"));
        assert_eq!(b.runtime, "runc");
    }

    #[test]
    fn unknown_flags_are_rejected() {
        assert!(Cli::try_parse_from(v(&["rbuild", "--frobnicate", "."])).is_err());
    }
}
