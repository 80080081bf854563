//! Multi-platform builds (`--platform linux/amd64,linux/arm64`, buildx-style): the build
//! lowers once per platform, then solves the platforms' graphs at the same time on one solver
//! (so steps that do not depend on the platform, such as context checksums, are shared), then
//! writes an OCI image index over the per-platform manifests. The index is what gets tagged,
//! exported and pushed; this module holds the outputs of an index.
//!
//! | output | with an index |
//! |---|---|
//! | `image` / `registry` / `--push` | the index is tagged; a push sends each manifest by digest, then the index under the tag (`rbuild_oci::index`) |
//! | `oci` | `index.json` → the index (with `index-descriptor:` annotations); every manifest, config and layer in `blobs/` (`rbuild_oci::export`) |
//! | `docker`, `--load` | refused before the build (a docker archive holds no index; BuildKit's error) |
//! | `local` / `tar` | one directory per platform (`linux_amd64/`, `linux_arm_v7/`), as buildx ([`crate::outputs::export_rootfs`]) |

use std::collections::BTreeMap;

use anyhow::Result;
use rbuild_graph::{Definition, NodeId, Platform};
use rbuild_oci::Descriptor;
use rbuild_solver::{Event, ImageResult, Progress, SolveError, SolveOutput, Solver};

use crate::outputs::{Annotations, OutputSpec};
use crate::render::UsageError;

/// The platforms of a build (`--platform`, comma lists and repeats; `local` = the host),
/// duplicates removed, in the order given; the host when none is given.
pub fn platforms(values: &[String]) -> Result<Vec<Platform>> {
    let mut out: Vec<Platform> = Vec::new();
    for v in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
        let p = if v == "local" {
            Platform::host()
        } else {
            crate::flags::parse_platform(v).map_err(UsageError)?
        };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    if out.is_empty() {
        out.push(Platform::host());
    }
    Ok(out)
}

/// Outputs that cannot hold several platforms, refused before anything is built.
pub fn check_outputs(platforms: &[Platform], outputs: &[OutputSpec], load: bool) -> Result<()> {
    if platforms.len() < 2 {
        return Ok(());
    }
    let list = platforms
        .iter()
        .map(|p| p.to_text())
        .collect::<Vec<_>>()
        .join(",");
    if outputs.iter().any(|o| o.kind == "docker") {
        return Err(UsageError(format!(
            "--output type=docker: docker exporter does not currently support exporting manifest lists (building {list}); build one platform, or use type=oci"
        ))
        .into());
    }
    if load {
        return Err(UsageError(format!(
            "--load: docker exporter does not currently support exporting manifest lists (building {list}); build one platform, or use --push / type=oci"
        ))
        .into());
    }
    Ok(())
}

/// Prefix every step name with its platform, as BuildKit does in multi-platform builds:
/// `[linux/arm64 2/3] COPY …` (`[stage 2/3]` → `[linux/arm64 stage 2/3]`).
pub fn label_steps(def: &mut Definition, platform: &Platform) {
    for n in &mut def.nodes {
        if let Some(rest) = n.meta.description.strip_prefix('[') {
            if !rest.starts_with("internal]") {
                n.meta.description = format!("[{} {rest}", platform.to_text());
            }
        }
    }
}

pub(crate) fn oci_platform(p: &Platform) -> rbuild_oci::Platform {
    rbuild_oci::Platform {
        os: p.os.clone(),
        architecture: p.architecture.clone(),
        variant: p.variant.clone(),
    }
}

/// Write the index over the per-platform images (in platform order). The result stands for
/// the whole build: its `manifest` is the index, its `config_digest` the index digest (what
/// buildx writes to `--iidfile` for a multi-platform build).
pub fn make_index(
    store: &rbuild_cache::Store,
    images: &[(Platform, ImageResult)],
    annotations: &BTreeMap<String, String>,
) -> Result<ImageResult> {
    let manifests: Vec<Descriptor> = images
        .iter()
        .map(|(p, i)| {
            let mut d = i.manifest.clone();
            d.platform = Some(oci_platform(p));
            d
        })
        .collect();
    let index = rbuild_oci::index::put_index(store, &manifests, annotations)?;
    Ok(ImageResult {
        config_digest: index.digest.clone(),
        manifest: index,
        config: Vec::new(),
    })
}

/// The progress of one platform's graph: vertex ids moved past the graphs of the platforms
/// before it, so that the steps of platforms solved at the same time are numbered apart.
pub struct Offset<'a> {
    pub inner: &'a dyn Progress,
    pub base: usize,
}

impl Progress for Offset<'_> {
    fn event(&self, event: Event) {
        let b = self.base;
        self.inner.event(match event {
            Event::Started { vertex, name } => Event::Started {
                vertex: vertex + b,
                name,
            },
            Event::Cached { vertex, name } => Event::Cached {
                vertex: vertex + b,
                name,
            },
            Event::Log {
                vertex,
                stderr,
                data,
            } => Event::Log {
                vertex: vertex + b,
                stderr,
                data,
            },
            Event::Done { vertex, seconds } => Event::Done {
                vertex: vertex + b,
                seconds,
            },
            Event::Failed { vertex, message } => Event::Failed {
                vertex: vertex + b,
                message,
            },
            Event::Explain { vertex, reason } => Event::Explain {
                vertex: vertex + b,
                reason,
            },
            Event::Cancelled { vertex } => Event::Cancelled { vertex: vertex + b },
            other => other,
        });
    }
}

/// Solve every platform's graph at the same time (as BuildKit does) on one solver, so steps
/// they share (context checksums, base layers, `FROM --platform=$BUILDPLATFORM` stages) are
/// computed once: a step another solve is building is waited for through its key lock.
/// Results in platform order; the first platform's error wins.
/// The offset added to each graph's node ids in progress events when several platforms are
/// solved at once (none for a single graph).
pub fn progress_bases(graphs: &[(&Platform, &Definition, NodeId)]) -> Vec<usize> {
    let mut bases = Vec::with_capacity(graphs.len());
    let mut base = 0;
    for (_, def, _) in graphs {
        bases.push(if graphs.len() == 1 { 0 } else { base });
        base += def.nodes.len();
    }
    bases
}

pub fn solve_all(
    solver: &Solver,
    graphs: &[(&Platform, &Definition, NodeId)],
    progress: &dyn Progress,
) -> Vec<Result<SolveOutput, SolveError>> {
    if let [(_, def, root)] = graphs {
        return vec![solver.solve(def, *root, progress)];
    }
    let bases = progress_bases(graphs);
    std::thread::scope(|s| {
        let handles: Vec<_> = graphs
            .iter()
            .zip(bases)
            .map(|(&(platform, def, root), base)| {
                s.spawn(move || {
                    let progress = Offset {
                        inner: progress,
                        base,
                    };
                    // explain identities per platform (`--explain` compares like with like)
                    solver.solve_variant(def, root, &progress, &platform.to_text())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// The annotations of an index's outputs and pushes: its manifests carry their own
/// (`manifest:`, per platform) and their entries' (`manifest-descriptor:`) already, so
/// conversion adds none; the index's descriptor (an OCI archive's `index.json` entry) takes
/// `index-descriptor:`.
pub fn output_annotations(a: &Annotations) -> Annotations {
    Annotations {
        manifest: BTreeMap::new(),
        manifest_descriptor: a.index_descriptor.clone(),
        ..a.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_lists() {
        let ps = platforms(&[
            "linux/amd64".into(),
            "linux/arm64".into(),
            "linux/amd64".into(),
        ])
        .unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[1].architecture, "arm64");
        assert_eq!(platforms(&[]).unwrap(), vec![Platform::host()]);
        assert!(platforms(&["linux".into()]).is_err());
        assert_eq!(
            crate::outputs::platform_dir(&rbuild_oci::Platform {
                os: "linux".into(),
                architecture: "arm".into(),
                variant: Some("v7".into()),
            }),
            "linux_arm_v7"
        );
    }

    #[test]
    fn each_platforms_vertices_are_numbered_apart() {
        struct Seen(std::sync::Mutex<Vec<usize>>);
        impl Progress for Seen {
            fn event(&self, e: Event) {
                if let Event::Started { vertex, .. } | Event::Done { vertex, .. } = e {
                    self.0.lock().unwrap().push(vertex);
                }
            }
        }
        let seen = Seen(Default::default());
        let o = Offset {
            inner: &seen,
            base: 7,
        };
        o.event(Event::Started {
            vertex: 2,
            name: "x".into(),
        });
        o.event(Event::Done {
            vertex: 2,
            seconds: 0.0,
        });
        assert_eq!(*seen.0.lock().unwrap(), [9, 9]);
    }

    #[test]
    fn step_labels_carry_the_platform() {
        let mut def = Definition::default();
        def.nodes.push(rbuild_graph::Node {
            op: rbuild_graph::Op::Merge,
            inputs: Vec::new(),
            meta: rbuild_graph::Meta {
                description: "[2/3] COPY a b".into(),
                ..Default::default()
            },
        });
        let mut p = Platform::host();
        p.architecture = "arm64".into();
        label_steps(&mut def, &p);
        assert_eq!(def.nodes[0].meta.description, "[linux/arm64 2/3] COPY a b");
    }
}
