//! Command-line arguments (docker buildx-compatible names where rbuild has the feature).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "rbuild",
    version,
    about = "Build container images from Dockerfiles — daemonless, cached, reproducible",
    after_help = "Examples:\n  rbuild -t app:v1 .                     build ./Dockerfile, tag app:v1\n  rbuild build -f docker/Dockerfile --target prod -t app:prod .\n  rbuild build --output type=oci,dest=app.tar .\n  rbuild images"
)]
pub struct Cli {
    /// Store directory (default: /var/lib/rbuild as root, $XDG_DATA_HOME/rbuild otherwise)
    #[arg(long, global = true, env = "RBUILD_ROOT")]
    pub root: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Dockerfile (the default command)
    Build(BuildArgs),
    /// List tagged images in the local store
    Images(ImagesArgs),
    #[command(flatten)]
    Store(crate::store_cmds::StoreCommand),
    /// Developer tools
    Debug {
        #[command(subcommand)]
        command: DebugCommand,
    },
    /// Print the version
    Version,
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
pub struct ImagesArgs {
    /// Only print image ids
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args, Clone)]
pub struct BuildArgs {
    /// Name and optionally a tag (name:tag); repeatable
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    pub tags: Vec<String>,
    /// Dockerfile path (default: CONTEXT/Dockerfile)
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Build-time variable KEY=VALUE (or KEY to take it from the environment); repeatable
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Target stage to build
    #[arg(long)]
    pub target: Option<String>,
    /// Do not use the cache
    #[arg(long)]
    pub no_cache: bool,
    /// Re-resolve base images from their registries
    #[arg(long)]
    pub pull: bool,
    /// Suppress build output and print the image id on success
    #[arg(short, long)]
    pub quiet: bool,
    /// Output destination: type=oci|docker,dest=FILE; repeatable
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    pub outputs: Vec<String>,
    /// Progress output: auto, plain, quiet
    #[arg(long, default_value = "auto", env = "RBUILD_PROGRESS")]
    pub progress: String,
    /// Set an image label KEY=VALUE; repeatable
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Target platform (only the host platform is supported)
    #[arg(long)]
    pub platform: Option<String>,
    /// Write the image id to this file
    #[arg(long)]
    pub iidfile: Option<PathBuf>,
    /// Maximum number of steps run at once (default: number of CPUs)
    #[arg(long)]
    pub max_parallelism: Option<usize>,
    /// Push the image to its registry after the build (= --output type=registry)
    #[arg(long)]
    pub push: bool,
    /// Load the image into the local docker daemon (`docker load`)
    #[arg(long)]
    pub load: bool,
    /// Add a manifest annotation KEY=VALUE (or manifest:KEY=VALUE); repeatable
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
    /// Pin every timestamp (SOURCE_DATE_EPOCH=0 unless set) for bit-identical images
    #[arg(long)]
    pub reproducible: bool,
    /// Build context directory
    #[arg(value_name = "CONTEXT")]
    pub context: PathBuf,
}

const SUBCOMMANDS: &[&str] = &[
    "build", "images", "debug", "version", "help", "tag", "rmi", "pull", "push", "inspect",
    "history", "save", "load", "login", "logout",
];

/// `rbuild -t x .` means `rbuild build -t x .`: insert `build` when the first argument that is
/// not a global option is not a subcommand.
pub fn with_default_subcommand(mut argv: Vec<OsString>) -> Vec<OsString> {
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
        if SUBCOMMANDS.contains(&a.as_str())
            || matches!(a.as_str(), "-h" | "--help" | "-V" | "--version")
        {
            return argv;
        }
        argv.insert(i, OsString::from("build"));
        return argv;
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
    fn every_build_flag_parses() {
        let cli = Cli::try_parse_from(v(&[
            "rbuild",
            "-t",
            "a:1",
            "-t",
            "b",
            "-f",
            "D",
            "--build-arg",
            "X=1",
            "--target",
            "t",
            "--no-cache",
            "--pull",
            "-q",
            "-o",
            "type=oci,dest=x.tar",
            "--progress",
            "plain",
            "--label",
            "k=v",
            "--iidfile",
            "id",
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
        assert_eq!(b.build_args, ["X=1"]);
        assert_eq!(b.target.as_deref(), Some("t"));
        assert!(b.no_cache && b.pull && b.quiet);
        assert_eq!(b.outputs, ["type=oci,dest=x.tar"]);
        assert_eq!(b.labels, ["k=v"]);
        assert_eq!(b.max_parallelism, Some(3));
        assert_eq!(b.context, PathBuf::from("ctx"));
    }

    #[test]
    fn unknown_flags_are_rejected() {
        assert!(Cli::try_parse_from(v(&["rbuild", "--frobnicate", "."])).is_err());
    }
}
