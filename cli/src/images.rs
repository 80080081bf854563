//! `rbuild images`: the tagged images in the local store.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use rbuild_oci::{ImageStore, Reference};

use crate::args::ImagesArgs;

pub fn list(root: &Path, a: &ImagesArgs) -> Result<ExitCode> {
    let store = rbuild_cache::Store::open(root)?;
    let images = ImageStore::open(&store)?;
    let mut rows = Vec::new();
    for (name, desc) in images.list()? {
        let (id, size, platforms) = if rbuild_oci::index::is_index(&desc) {
            // A multi-platform image: one row, its id the index digest, its platforms listed.
            let index = rbuild_oci::index::read_index(&store, &desc)?;
            let mut size = 0;
            let mut platforms = Vec::new();
            for m in &index.manifests {
                size += images
                    .read_manifest(m)?
                    .layers
                    .iter()
                    .map(|l| l.size)
                    .sum::<u64>();
                platforms.extend(m.platform.as_ref().map(|p| p.to_string()));
            }
            (desc.digest.clone(), size, platforms.join(","))
        } else {
            let manifest = images.read_manifest(&desc)?;
            let size: u64 = manifest.layers.iter().map(|l| l.size).sum();
            (manifest.config.digest.clone(), size, String::new())
        };
        let (repo, tag) = match Reference::parse(&name) {
            Ok(r) => {
                let fam = r.familiar();
                match fam.rsplit_once(':') {
                    Some((a, b)) if !b.contains('/') => (a.to_string(), b.to_string()),
                    _ => (fam, "<none>".to_string()),
                }
            }
            Err(_) => (name.clone(), "<none>".to_string()),
        };
        rows.push((repo, tag, id, size, platforms));
    }
    rows.sort();
    if a.quiet {
        for (_, _, id, _, _) in rows {
            println!("{}", short_id(&id));
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<40} {:<16} {:<14} {:>10}  PLATFORMS",
        "REPOSITORY", "TAG", "IMAGE ID", "SIZE"
    );
    for (repo, tag, id, size, platforms) in rows {
        println!(
            "{repo:<40} {tag:<16} {:<14} {:>10}  {platforms}",
            short_id(&id),
            human(size)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn short_id(d: &str) -> String {
    d.trim_start_matches("sha256:").chars().take(12).collect()
}

fn human(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.2}GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1}MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1}kB", f / 1e3)
    } else {
        format!("{n}B")
    }
}
