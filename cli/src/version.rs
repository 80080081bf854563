//! `rbuild version`, `rbuild completion SHELL` and `rbuild man [COMMAND]` (roff man pages
//! generated from the CLI definition; docs/rbuild.1 and docs/rbuild-build.1 are their output,
//! kept current by cli/tests/help.rs).

use std::io::Write;

use clap::CommandFactory;

/// The version text: rbuild's version, the target it was built for, and the host platform.
pub fn text() -> String {
    format!(
        "rbuild {}\n  target:   {}-{}\n  platform: {}\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS,
        rbuild_graph::Platform::host().to_text()
    )
}

/// Write the completion script for `shell`.
pub fn completion(shell: clap_complete::Shell, out: &mut dyn Write) {
    let mut cmd = crate::args::Cli::command();
    clap_complete::generate(shell, &mut cmd, "rbuild", out);
}

/// Write the man page of `rbuild` or, with `sub`, of `rbuild SUB` (roff, for `man -l -`).
pub fn man(sub: Option<&str>, out: &mut dyn Write) -> anyhow::Result<()> {
    let cmd = crate::args::Cli::command();
    let page = match sub {
        None => cmd,
        Some(name) => {
            let sub = cmd
                .find_subcommand(name)
                .cloned()
                .ok_or_else(|| crate::render::UsageError(format!("man: no command {name:?}")))?;
            // the page's title; clap takes names as &'static str (one page per process)
            let title: &'static str = Box::leak(format!("rbuild-{name}").into_boxed_str());
            sub.name(title).version(env!("CARGO_PKG_VERSION"))
        }
    };
    clap_mangen::Man::new(page).render(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_name_the_subcommands_and_build_flags() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            completion(shell, &mut out);
            let s = String::from_utf8(out).unwrap();
            for word in ["rbuild", "build", "images", "metadata-file", "progress"] {
                assert!(s.contains(word), "{shell:?} completion lacks {word}");
            }
        }
    }

    #[test]
    fn version_text_names_the_version() {
        assert!(text().starts_with(&format!("rbuild {}\n", env!("CARGO_PKG_VERSION"))));
    }
}
