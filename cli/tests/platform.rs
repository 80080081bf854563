//! `--platform` for a platform other than the host's, through the real CLI: steps without a
//! process build anywhere; a RUN step of a foreign architecture needs a binfmt_misc emulator,
//! and without one the build stops before it starts, naming the platform and the RUN line.
//! Several platforms at once are rejected clearly (not supported yet).

mod common;

use common::Project;

/// A platform that is not the host's.
fn foreign() -> &'static str {
    if std::env::consts::ARCH == "aarch64" {
        "linux/amd64"
    } else {
        "linux/arm64"
    }
}

#[test]
fn a_copy_only_image_builds_for_a_foreign_platform() {
    let p = Project::new("FROM scratch\nCOPY a.txt /a.txt\n");
    p.file("a.txt", "A");
    let meta = p.path().join("meta.json");
    p.build(&[
        "--platform",
        foreign(),
        "--metadata-file",
        meta.to_str().unwrap(),
    ])
    .ok();
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let config = m["containerimage.config.digest"].as_str().unwrap();
    let blob = p
        .store
        .path()
        .join("blobs-v1/sha256")
        .join(config.trim_start_matches("sha256:"));
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(blob).unwrap()).unwrap();
    let arch = foreign().rsplit('/').next().unwrap();
    assert_eq!(cfg["architecture"], arch, "{cfg}");
    assert_eq!(cfg["os"], "linux");
}

#[test]
fn a_foreign_run_step_without_an_emulator_names_the_platform_and_the_line() {
    let binfmt = std::path::Path::new("/proc/sys/fs/binfmt_misc");
    let qemu = if foreign().ends_with("arm64") {
        "qemu-aarch64"
    } else {
        "qemu-x86_64"
    };
    if binfmt.join(qemu).exists() {
        // This host can emulate the platform: the error cannot happen here.
        return;
    }
    let p = Project::new("FROM scratch\nCOPY a.txt /a.txt\nRUN [\"/a.txt\"]\n");
    p.file("a.txt", "A");
    let r = p.build(&["--platform", foreign()]).fails();
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    let err = r.stderr();
    assert!(err.contains(foreign()), "{err}");
    assert!(err.contains("binfmt_misc"), "{err}");
    assert!(err.contains(">>> RUN [\"/a.txt\"]"), "{err}");
}

#[test]
fn several_platforms_at_once_are_rejected_clearly() {
    let p = Project::new("FROM scratch\n");
    let r = p.build(&["--platform", "linux/amd64,linux/arm64"]).fails();
    assert_eq!(r.code(), Some(2));
    assert!(
        r.stderr()
            .contains("--platform: building several platforms at once is not supported yet"),
        "{}",
        r.stderr()
    );
}
