//! Go executables' build information: the `\xff Go buildinf:` blob (in `.go.buildinfo`, else
//! anywhere 16-byte aligned): the Go version and the module list (`path`, `mod`, `dep`, `=>`
//! replacement lines). Two formats, told apart by flag 2 in byte 15 of the 32-byte
//! header:
//!
//! - Go ≥ 1.18: inline strings, each a uvarint length and its bytes, right after the header;
//! - Go 1.13–1.17: at offset 16 two pointers (byte 14 says their size, 4 or 8; flag 1 set for
//!   big-endian) to Go string headers (data pointer, length) of `runtime.buildVersion`
//!   and `runtime.modinfo`, resolved through the ELF program headers.
//!
//! Every pointer and length is checked against the file and each string is capped at
//! [`MAX_STRING`]. Packages: `pkg:golang/<module>@<version>` and the standard library as
//! `pkg:golang/stdlib@<go version>`.

use super::{purl_escape, Package};

const MAGIC: &[u8] = b"\xff Go buildinf:";

/// The longest version or module string read (Go's own reader stops at the same kind of cap).
const MAX_STRING: u64 = 1 << 20;

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

/// The Go version and module lines of a build-info blob.
pub(super) fn build_info(d: &[u8]) -> Option<(String, String)> {
    let blob = find_blob(d)?;
    let flags = *blob.get(15)?;
    let (version, mut modinfo) = if flags & 2 != 0 {
        let (version, next) = string_at(blob, 32)?;
        let (modinfo, _) = string_at(blob, next)?;
        (version, modinfo)
    } else {
        let ptr_size = usize::from(*blob.get(14)?);
        let big_endian = flags & 1 != 0;
        let version = pointed_string(d, blob, 16, ptr_size, big_endian)?;
        // a binary built without modules has build info but no module text
        let modinfo =
            pointed_string(d, blob, 16 + ptr_size, ptr_size, big_endian).unwrap_or_default();
        (version, modinfo)
    };
    // the module text is framed by 16-byte sentinels
    if modinfo.len() >= 33 && modinfo.as_bytes().get(modinfo.len() - 17) == Some(&b'\n') {
        modinfo = String::from_utf8_lossy(&modinfo.as_bytes()[16..modinfo.len() - 16]).into_owned();
    }
    Some((version, modinfo))
}

/// An unsigned integer of `size` (4 or 8) bytes.
fn word(b: &[u8], size: usize, big_endian: bool) -> Option<u64> {
    let b = b.get(..size)?;
    Some(match (size, big_endian) {
        (4, false) => u64::from(u32::from_le_bytes(b.try_into().ok()?)),
        (4, true) => u64::from(u32::from_be_bytes(b.try_into().ok()?)),
        (8, false) => u64::from_le_bytes(b.try_into().ok()?),
        (8, true) => u64::from_be_bytes(b.try_into().ok()?),
        _ => return None,
    })
}

/// The Go string whose header's address is stored at `blob[at..]` (pre-1.18 format).
fn pointed_string(
    elf: &[u8],
    blob: &[u8],
    at: usize,
    ptr_size: usize,
    big_endian: bool,
) -> Option<String> {
    let header_addr = word(blob.get(at..)?, ptr_size, big_endian)?;
    let size = u64::try_from(ptr_size).ok()?;
    let header = super::elf::at_vaddr(elf, header_addr, size.checked_mul(2)?)?;
    let data_addr = word(header, ptr_size, big_endian)?;
    let len = word(header.get(ptr_size..)?, ptr_size, big_endian)?;
    if len > MAX_STRING {
        return None;
    }
    let bytes = super::elf::at_vaddr(elf, data_addr, len)?;
    Some(String::from_utf8_lossy(bytes).into_owned())
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
