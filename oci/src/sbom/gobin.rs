//! Go executables' build information: the `\xff Go buildinf:` blob (in `.go.buildinfo`, else
//! anywhere 16-byte aligned) written by Go ≥ 1.18 with inline strings (flag bit 2): the Go
//! version and the module list (`path`, `mod`, `dep`, `=>` replacement lines). Older binaries
//! (pointer format) are skipped. Packages: `pkg:golang/<module>@<version>` and the standard
//! library as `pkg:golang/stdlib@<go version>`.

use super::{purl_escape, Package};

const MAGIC: &[u8] = b"\xff Go buildinf:";

fn uvarint(d: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, &b) in d.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn string_at(d: &[u8], off: usize) -> Option<(String, usize)> {
    let (len, n) = uvarint(d.get(off..)?)?;
    let start = off.checked_add(n)?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    Some((
        String::from_utf8_lossy(d.get(start..end)?).into_owned(),
        end,
    ))
}

fn find_blob(d: &[u8]) -> Option<&[u8]> {
    if let Some(s) = super::elf::section(d, ".go.buildinfo") {
        if s.starts_with(MAGIC) {
            return Some(s);
        }
    }
    (0..d.len())
        .step_by(16)
        .find(|&i| d[i..].starts_with(MAGIC))
        .map(|i| &d[i..])
}

/// The Go version and module lines of a build-info blob (inline-string format only).
pub(super) fn build_info(d: &[u8]) -> Option<(String, String)> {
    let blob = find_blob(d)?;
    let flags = *blob.get(15)?;
    if flags & 2 == 0 {
        return None;
    }
    let (version, next) = string_at(blob, 32)?;
    let (mut modinfo, _) = string_at(blob, next)?;
    // the module text is framed by 16-byte sentinels
    if modinfo.len() >= 33 && modinfo.as_bytes().get(modinfo.len() - 17) == Some(&b'\n') {
        modinfo = String::from_utf8_lossy(&modinfo.as_bytes()[16..modinfo.len() - 16]).into_owned();
    }
    Some((version, modinfo))
}

/// The Go modules of an executable.
pub(super) fn parse(d: &[u8], location: &str) -> Vec<Package> {
    let Some((go, modinfo)) = build_info(d) else {
        return Vec::new();
    };
    let mut mods: Vec<(String, String)> = Vec::new();
    for line in modinfo.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["mod", path, version, ..] | ["dep", path, version, ..] => {
                mods.push((path.to_string(), version.to_string()))
            }
            ["=>", path, version, ..] => {
                if let Some(last) = mods.last_mut() {
                    *last = (path.to_string(), version.to_string());
                }
            }
            _ => {}
        }
    }
    let info = "acquired package info from go module information";
    let mut out: Vec<Package> = mods
        .into_iter()
        .filter(|(p, _)| !p.is_empty())
        .map(|(path, version)| Package {
            ecosystem: "golang",
            purl: format!(
                "pkg:golang/{}@{}",
                path.split('/')
                    .map(purl_escape)
                    .collect::<Vec<_>>()
                    .join("/"),
                purl_escape(&version)
            ),
            name: path,
            version,
            license: None,
            location: location.to_string(),
            source_info: info.into(),
        })
        .collect();
    if let Some(v) = go.strip_prefix("go") {
        out.push(Package {
            ecosystem: "golang",
            name: "stdlib".into(),
            version: go.clone(),
            purl: format!("pkg:golang/stdlib@{}", purl_escape(v)),
            license: Some("BSD-3-Clause".into()),
            location: location.to_string(),
            source_info: info.into(),
        });
    }
    out
}
