//! rbuild: the command-line interface.
//!
//! `rbuild -t app:v1 .` (= `rbuild build -t app:v1 .`) parses the Dockerfile (frontend),
//! solves the graph (solver) and stores the image (oci); `--output` exports it. The binary is
//! also the sandbox helper: when re-executed with the executor's marker argument it becomes
//! the helper process before anything else runs, and a non-root user's command re-runs itself
//! in a user namespace (rootless mode).
#![allow(clippy::print_stdout, clippy::print_stderr, unreachable_pub)] // the one crate that prints; a binary, so every `pub` is crate-wide

mod args;
mod attest;
mod build;
mod cachecmd;
mod cachespec;
mod call;
mod check;
mod config;
mod context;
mod emulation;
mod epoch;
mod flags;
mod images;
mod imagetools;
mod metadata;
mod multiplat;
mod outputs;
mod progress;
mod remote_cache;
mod render;
mod sandbox_opts;
mod signals;
mod store_cmds;
mod unsupported;
mod version;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // No fd leaked into rbuild by its parent may reach a RUN step or any helper program.
    if let Err(e) = rbuild_executor::close_inherited_fds() {
        eprintln!("error: {e}");
        return ExitCode::from(3);
    }
    if std::env::args().nth(1).as_deref() == Some(rbuild_executor::HELPER_ARG) {
        rbuild_executor::helper_main();
    }
    if let Err(e) = rbuild_executor::userns::enter_if_child() {
        eprintln!("error: rootless mode: {e}");
        return ExitCode::from(1);
    }
    quiet_broken_pipe();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(message) = args::unknown_command(&argv) {
        eprintln!("ERROR: {message}");
        return ExitCode::from(2);
    }
    let argv = args::with_default_subcommand(argv);
    let cli = args::Cli::parse_from(argv);
    // A panic is a bug in rbuild: the hook printed it; exit with the bug status.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli)));
    signals::exit_if_signalled();
    match result {
        Ok(Ok(code)) => code,
        Ok(Err(e)) if e.is::<outputs::StdoutClosed>() => ExitCode::from(BROKEN_PIPE_STATUS),
        Ok(Err(e)) => {
            render::print_error(&e);
            ExitCode::from(render::exit_code(&e))
        }
        Err(_) => {
            eprintln!("ERROR: internal error (a bug in rbuild, please report it): panic");
            ExitCode::from(render::BUG_STATUS)
        }
    }
}

/// Exit status when stdout's reader went away (`rbuild inspect | head -1`): what a shell
/// reports for a process killed by SIGPIPE (128 + 13), without a message.
const BROKEN_PIPE_STATUS: u8 = 141;

/// Rust ignores SIGPIPE, so writing to a closed pipe fails with EPIPE and `println!` panics.
/// Turn that panic into a quiet exit, like a tool killed by SIGPIPE; any other panic is
/// reported as usual.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to std") && msg.contains("Broken pipe") {
            std::process::exit(i32::from(BROKEN_PIPE_STATUS));
        }
        default(info);
    }));
}

fn run(cli: args::Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        args::Command::Version => {
            print!("{}", version::text());
            return Ok(ExitCode::SUCCESS);
        }
        args::Command::Completion { shell } => {
            version::completion(*shell, &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        args::Command::Man { command } => {
            version::man(command.as_deref(), &mut std::io::stdout())?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let root = config::store_root(cli.root.clone())?;
    if !config::is_root() {
        return rootless(&root);
    }
    match cli.command {
        args::Command::Build(b) => build::run(&root, &b),
        args::Command::Images(i) => images::list(&root, &i),
        args::Command::Du => cachecmd::du(&root),
        args::Command::Prune(p) => cachecmd::prune(&root, &p),
        args::Command::Store(c) => store_cmds::run(&root, c),
        args::Command::Imagetools { command } => imagetools::run(&root, command),
        args::Command::Debug {
            command: args::DebugCommand::DumpGraph(b),
        } => build::dump_graph(&root, &b),
        args::Command::Debug {
            command:
                args::DebugCommand::Compress {
                    algorithm,
                    threads,
                    level,
                },
        } => store_cmds::debug_compress(&algorithm, threads, level),
        args::Command::Version | args::Command::Completion { .. } | args::Command::Man { .. } => {
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Not root: run this same command again as root of a new user namespace (rootless mode,
/// docs/sandbox.md), with the store root chosen for this user.
fn rootless(root: &std::path::Path) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let exe = std::env::current_exe().context("locate the rbuild binary")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let code = rbuild_executor::userns::run_in_user_namespace(
        &exe,
        &args,
        &[("RBUILD_ROOT".into(), root.as_os_str().to_owned())],
    )
    .context("rootless mode: starting rbuild in a user namespace")?;
    Ok(ExitCode::from(code))
}
