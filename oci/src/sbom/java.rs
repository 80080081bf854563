//! Java archives (`.jar`, `.war`, `.ear`): a minimal, bounded zip reader (central directory,
//! stored or deflated entries; zip64 and nested archives are not read) for
//! `META-INF/maven/<group>/<artifact>/pom.properties` (preferred) and `META-INF/MANIFEST.MF`.
//! Packages: `pkg:maven/<group>/<artifact>@<version>`. Every entry is inflated at most to the
//! file limit, so a zip bomb costs no more than that.

use std::io::Read;

use super::{purl_escape, Package};

fn u16le(d: &[u8], off: usize) -> Option<usize> {
    let b: [u8; 2] = d.get(off..off.checked_add(2)?)?.try_into().ok()?;
    Some(u16::from_le_bytes(b) as usize)
}

fn u32le(d: &[u8], off: usize) -> Option<usize> {
    let b: [u8; 4] = d.get(off..off.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(b)).ok()
}

/// The entries of a zip archive: `(name, method, compressed size, local header offset)`.
fn entries(d: &[u8]) -> Option<Vec<(String, usize, usize, usize)>> {
    let start = d.len().saturating_sub(65_535 + 22);
    let eocd = (start..d.len().saturating_sub(21))
        .rev()
        .find(|&i| d.get(i..i + 4) == Some(b"PK\x05\x06".as_slice()))?;
    let count = u16le(d, eocd + 10)?;
    let mut off = u32le(d, eocd + 16)?;
    let mut out = Vec::new();
    for _ in 0..count.min(100_000) {
        if d.get(off..off.checked_add(4)?)? != b"PK\x01\x02" {
            break;
        }
        let method = u16le(d, off + 10)?;
        let csize = u32le(d, off + 20)?;
        let nlen = u16le(d, off + 28)?;
        let elen = u16le(d, off + 30)?;
        let clen = u16le(d, off + 32)?;
        let local = u32le(d, off + 42)?;
        let name = String::from_utf8_lossy(d.get(off + 46..off + 46 + nlen)?).into_owned();
        out.push((name, method, csize, local));
        off = off.checked_add(46 + nlen + elen + clen)?;
    }
    Some(out)
}

fn read_entry(d: &[u8], method: usize, csize: usize, local: usize, limit: u64) -> Option<String> {
    if d.get(local..local.checked_add(4)?)? != b"PK\x03\x04" {
        return None;
    }
    let start = local + 30 + u16le(d, local + 26)? + u16le(d, local + 28)?;
    let raw = d.get(start..start.checked_add(csize)?)?;
    let mut out = Vec::new();
    match method {
        0 => out.extend_from_slice(raw.get(..raw.len().min(limit as usize))?),
        8 => {
            flate2::read::DeflateDecoder::new(raw)
                .take(limit)
                .read_to_end(&mut out)
                .ok()?;
        }
        _ => return None,
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn prop<'a>(text: &'a str, key: &str, sep: char) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(sep)?;
        (k.trim() == key)
            .then(|| v.trim())
            .filter(|v| !v.is_empty())
    })
}

/// The package a Java archive declares (at most one per archive).
pub(super) fn parse_jar(d: &[u8], location: &str, limit: u64) -> Vec<Package> {
    let Some(list) = entries(d) else {
        return Vec::new();
    };
    let mut found: Option<(String, String, String)> = None;
    let mut license = None;
    for (name, method, csize, local) in &list {
        if name.starts_with("META-INF/maven/") && name.ends_with("/pom.properties") {
            if let Some(t) = read_entry(d, *method, *csize, *local, limit) {
                if let (Some(g), Some(a), Some(v)) = (
                    prop(&t, "groupId", '='),
                    prop(&t, "artifactId", '='),
                    prop(&t, "version", '='),
                ) {
                    found = Some((g.into(), a.into(), v.into()));
                    break;
                }
            }
        }
    }
    if found.is_none() {
        if let Some((_, method, csize, local)) = list.iter().find(|e| e.0 == "META-INF/MANIFEST.MF")
        {
            if let Some(t) = read_entry(d, *method, *csize, *local, limit) {
                let file = location.rsplit('/').next().unwrap_or(location);
                let stem = file.rsplit_once('.').map_or(file, |(s, _)| s);
                let artifact = prop(&t, "Implementation-Title", ':')
                    .or_else(|| prop(&t, "Bundle-SymbolicName", ':'))
                    .unwrap_or(stem)
                    .to_string();
                let version = prop(&t, "Implementation-Version", ':')
                    .or_else(|| prop(&t, "Bundle-Version", ':'));
                license = prop(&t, "Bundle-License", ':').map(String::from);
                if let Some(v) = version {
                    let group = prop(&t, "Implementation-Vendor-Id", ':')
                        .unwrap_or(&artifact)
                        .to_string();
                    found = Some((group, artifact, v.to_string()));
                }
            }
        }
    }
    let Some((group, artifact, version)) = found else {
        return Vec::new();
    };
    vec![Package {
        ecosystem: "maven",
        purl: format!(
            "pkg:maven/{}/{}@{}",
            purl_escape(&group),
            purl_escape(&artifact),
            purl_escape(&version)
        ),
        name: artifact,
        version,
        license,
        location: location.to_string(),
        source_info: "acquired package info from java archive".into(),
    }]
}
