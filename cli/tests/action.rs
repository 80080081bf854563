//! The GitHub Action (action.yml) run locally by scripts/test-action.sh with the binary under
//! test: its steps run with temporary GITHUB_OUTPUT/GITHUB_STEP_SUMMARY files and the outputs
//! (imageid, digest, metadata) and job summary are checked against the store. Needs root and
//! the test registry (`.ci/setup.sh`), like the end-to-end tests.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

use std::process::Command;

#[test]
fn the_action_builds_and_reports_imageid_digest_metadata_and_a_summary() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/test-action.sh");
    let out = Command::new("bash")
        .arg(script)
        .env("RBUILD_BIN", env!("CARGO_BIN_EXE_rbuild"))
        .env_remove("RBUILD_PROGRESS")
        .env_remove("BUILDKIT_PROGRESS")
        .output()
        .expect("running bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/test-action.sh failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("test-action: 1 passed, 0 failed"),
        "{stdout}"
    );
}
