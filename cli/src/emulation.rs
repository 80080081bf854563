//! Building for a platform other than the host's (`--platform linux/arm64` on amd64).
//!
//! Steps without a process (COPY, ADD, `FROM scratch`, base images) need nothing. A RUN step
//! whose filesystem comes from an image of a foreign architecture needs the kernel to run that
//! architecture's binaries through an emulator registered in `binfmt_misc` (qemu-user, as
//! installed by `qemu-user-static`/`binfmt-support` or `tonistiigi/binfmt`). When there is
//! none, the build stops before it starts, naming the platform and the RUN line.

use std::path::Path;

use rbuild_graph::{Definition, NodeId, Op, Platform, SourceOp};

/// Where the kernel lists its `binfmt_misc` handlers.
const BINFMT: &str = "/proc/sys/fs/binfmt_misc";

/// qemu's name of an OCI architecture (the suffix of `qemu-<name>` handlers).
fn qemu_name(arch: &str) -> &str {
    match arch {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "386" => "i386",
        "mips64le" => "mips64el",
        "mipsle" => "mipsel",
        other => other,
    }
}

/// Whether an enabled `binfmt_misc` handler runs `platform`'s binaries (handlers named
/// `qemu-<arch>`, as every common installer registers them).
pub fn can_run(platform: &Platform, binfmt: &Path) -> bool {
    if platform.os != "linux" {
        return false;
    }
    let enabled = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|s| s.lines().next() == Some("enabled"))
            .unwrap_or(false)
    };
    enabled(&binfmt.join("status"))
        && enabled(&binfmt.join(format!("qemu-{}", qemu_name(&platform.architecture))))
}

/// The platform a node's filesystem has: the platform of the image its root comes from
/// (following RUN roots, copy destinations and merges down to their source), `None` for
/// scratch or a local directory.
fn fs_platform(def: &Definition, mut id: NodeId) -> Option<Platform> {
    loop {
        let node = def.nodes.get(id.0)?;
        let next = match &node.op {
            Op::Source(SourceOp::Image { platform, .. }) => return Some(platform.clone()),
            Op::Source(_) => return None,
            Op::Exec(e) => e.mounts.first().and_then(|m| m.input),
            Op::File(f) => f.dest_input,
            Op::Merge => Some(0),
        };
        id = *node.inputs.get(next?)?;
    }
}

/// The first RUN step (reachable from `root`) that would execute a foreign architecture's
/// binaries this host cannot run: its Dockerfile lines and the error message.
pub fn check(
    def: &Definition,
    root: NodeId,
    target: &Platform,
) -> Option<(Option<(u32, u32)>, String)> {
    check_with(def, root, target, Path::new(BINFMT))
}

fn check_with(
    def: &Definition,
    root: NodeId,
    target: &Platform,
    binfmt: &Path,
) -> Option<(Option<(u32, u32)>, String)> {
    let host = Platform::host();
    for id in def.reachable(root).ok()? {
        let node = &def.nodes[id.0];
        if !matches!(node.op, Op::Exec(_)) {
            continue;
        }
        let p = fs_platform(def, id).unwrap_or_else(|| target.clone());
        if p.os == host.os && p.architecture == host.architecture {
            continue;
        }
        if !can_run(&p, binfmt) {
            return Some((
                node.meta.lines,
                format!(
                    "{}: this step runs {} binaries, which this {} host cannot execute: no \
                     binfmt_misc emulator is registered for {} ({BINFMT}/qemu-{} is missing or \
                     disabled); install qemu-user-static (binfmt-support) or build with \
                     --platform {}",
                    node.meta.description,
                    p.to_text(),
                    host.to_text(),
                    p.architecture,
                    qemu_name(&p.architecture),
                    host.to_text()
                ),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handlers_are_found_by_qemu_name_and_must_be_enabled() {
        let d = tempfile::tempdir().unwrap();
        let arm = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: None,
        };
        assert!(!can_run(&arm, d.path()));
        std::fs::write(d.path().join("status"), "enabled\n").unwrap();
        std::fs::write(
            d.path().join("qemu-aarch64"),
            "disabled\ninterpreter /usr/bin/qemu-aarch64\n",
        )
        .unwrap();
        assert!(!can_run(&arm, d.path()));
        std::fs::write(
            d.path().join("qemu-aarch64"),
            "enabled\ninterpreter /usr/bin/qemu-aarch64\n",
        )
        .unwrap();
        assert!(can_run(&arm, d.path()));
    }
}
