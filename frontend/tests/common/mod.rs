//! Shared test helpers: a fake image resolver and options parsing for golden cases.

#![allow(dead_code)]

use rbuild_frontend::{BuildOpts, ImageConfig, ImageResolver, Platform, ResolvedImage};
use rbuild_graph::{ContainerConfig, History, RootFs};

pub struct FakeResolver;

pub fn normalise(reference: &str) -> String {
    let (name, tag) = match reference.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n.to_string(), t.to_string()),
        _ => (reference.to_string(), "latest".to_string()),
    };
    let name = if name.contains('/') {
        let first = name.split('/').next().unwrap();
        if first.contains('.') || first.contains(':') || first == "localhost" {
            name
        } else {
            format!("docker.io/{name}")
        }
    } else {
        format!("docker.io/library/{name}")
    };
    format!("{name}:{tag}")
}

impl ImageResolver for FakeResolver {
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage, String> {
        if reference.contains("nope") {
            return Err("manifest unknown".to_string());
        }
        let mut config = ContainerConfig {
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cmd: Some(vec!["sh".into()]),
            ..Default::default()
        };
        if reference.contains("onbuild") {
            config.on_build = vec!["RUN echo triggered".into(), "ENV FROM_TRIGGER=1".into()];
        }
        if reference.contains("nopath") {
            config.env.clear();
        }
        let mut platform = platform.clone();
        if reference.contains("armonly") {
            platform.architecture = "arm64".into();
        }
        Ok(ResolvedImage {
            reference: normalise(reference),
            digest: format!("sha256:{}", "0".repeat(64)),
            config: ImageConfig {
                architecture: platform.architecture.clone(),
                os: platform.os.clone(),
                variant: platform.variant.clone(),
                config,
                rootfs: RootFs {
                    kind: "layers".into(),
                    diff_ids: vec![format!("sha256:{}", "1".repeat(64))],
                },
                history: vec![History {
                    created_by: Some("BusyBox 1.36.1 (glibc), Debian 12".into()),
                    ..Default::default()
                }],
                ..Default::default()
            },
        })
    }
}

/// Fixed platform so golden output does not depend on the test machine.
pub fn amd64() -> Platform {
    Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    }
}

/// Options from an `args.txt`: lines `build-arg K=V`, `target X`, `no-cache`, `label K=V`,
/// `platform os/arch[/v]`, `ignore PATTERN`.
pub fn opts_from(text: &str) -> BuildOpts {
    let mut o = BuildOpts {
        platform: amd64(),
        ..BuildOpts::default()
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once(' ').unwrap_or((line, ""));
        match k {
            "build-arg" => {
                let (a, b) = v.split_once('=').unwrap();
                o.build_args.insert(a.into(), b.into());
            }
            "label" => {
                let (a, b) = v.split_once('=').unwrap();
                o.labels.insert(a.into(), b.into());
            }
            "target" => o.target = Some(v.into()),
            "no-cache" => o.no_cache = true,
            "ignore" => o.dockerignore.push(v.into()),
            "platform" => {
                let p: Vec<&str> = v.split('/').collect();
                o.platform = Platform {
                    os: p[0].into(),
                    architecture: p[1].into(),
                    variant: p.get(2).map(|s| s.to_string()),
                };
            }
            other => panic!("unknown args.txt key {other}"),
        }
    }
    o
}
