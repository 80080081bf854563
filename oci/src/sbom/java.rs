//! Java archives (`.jar`, `.war`, `.ear`): a bounded zip reader (central directory, zip64
//! end records and extra fields, stored or deflated entries, data before the archive such as
//! a launch script) for `META-INF/maven/<group>/<artifact>/pom.properties` (preferred) and
//! `META-INF/MANIFEST.MF`, and the archives nested in it (Spring Boot's `BOOT-INF/lib/*.jar`,
//! a war's `WEB-INF/lib/*.jar`, an ear's modules), whose location is `outer:inner` as syft
//! writes it. Packages: `pkg:maven/<group>/<artifact>@<version>`.
//!
//! Bounds ([`Budget`], per top-level archive): a metadata entry is inflated at most to the
//! file limit, and everything inflated (metadata and nested archives, at every depth) comes
//! out of one byte budget, so a zip bomb, or many entries pointing at one, costs no more than
//! that; nested archives are followed at most [`MAX_DEPTH`] deep, and the central directory
//! entries of all of them together are counted against [`MAX_ENTRIES`]. What a bound cut is
//! reported as a note.

use std::io::Read;

use super::{purl_escape, Package};

/// Archives nested deeper than this are not opened (the top-level archive is depth 0).
const MAX_DEPTH: usize = 4;
/// Central directory entries read in one top-level archive and all archives nested in it.
const MAX_ENTRIES: usize = 200_000;

/// What is left to spend on one top-level archive.
pub(super) struct Budget {
    /// Largest metadata entry inflated (bytes).
    pub file_limit: u64,
    /// Bytes left to inflate (metadata entries and nested archives).
    pub bytes: u64,
    /// Central directory entries left.
    pub entries: usize,
    /// Limits hit, for the scan's notes.
    pub notes: Vec<String>,
}

impl Budget {
    pub(super) fn new(file_limit: u64, bytes: u64) -> Budget {
        Budget {
            file_limit,
            bytes,
            entries: MAX_ENTRIES,
            notes: Vec::new(),
        }
    }

    fn note(&mut self, n: String) {
        if self.notes.len() < 20 {
            self.notes.push(n);
        }
    }
}

fn u16le(d: &[u8], off: usize) -> Option<u64> {
    let b: [u8; 2] = d.get(off..off.checked_add(2)?)?.try_into().ok()?;
    Some(u64::from(u16::from_le_bytes(b)))
}

fn u32le(d: &[u8], off: usize) -> Option<u64> {
    let b: [u8; 4] = d.get(off..off.checked_add(4)?)?.try_into().ok()?;
    Some(u64::from(u32::from_le_bytes(b)))
}

fn u64le(d: &[u8], off: usize) -> Option<u64> {
    let b: [u8; 8] = d.get(off..off.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

fn us(v: u64) -> Option<usize> {
    usize::try_from(v).ok()
}

/// One central directory entry; offsets are from the start of the file.
struct Entry {
    name: String,
    method: u64,
    csize: u64,
    usize: u64,
    local: u64,
}

/// The entries of a zip archive (`None` when it is not one), counted against `budget`.
fn entries(d: &[u8], budget: &mut Budget, location: &str) -> Option<Vec<Entry>> {
    let start = d.len().saturating_sub(65_535 + 22);
    let eocd = (start..d.len().saturating_sub(21))
        .rev()
        .find(|&i| d.get(i..i + 4) == Some(b"PK\x05\x06".as_slice()))?;
    let mut count = u16le(d, eocd + 10)?;
    let mut cd_size = u32le(d, eocd + 12)?;
    let mut cd_off = u32le(d, eocd + 16)?;
    // where the central directory really ends: the zip64 end record when there is one
    let mut cd_end = eocd;
    let locator = eocd.checked_sub(20);
    if let Some(loc) = locator.filter(|&l| d.get(l..l + 4) == Some(b"PK\x06\x07".as_slice())) {
        // zip64: the 32-bit fields may be 0xFFFF… placeholders; the record has the real ones
        let rec = us(u64le(d, loc + 8)?)?;
        let rec = if d.get(rec..rec.checked_add(4)?) == Some(b"PK\x06\x06".as_slice()) {
            rec
        } else {
            // data before the archive shifts the recorded offset: the record sits right
            // before the locator (its fixed part is 56 bytes)
            let guess = loc.checked_sub(56)?;
            (d.get(guess..guess + 4) == Some(b"PK\x06\x06".as_slice())).then_some(guess)?
        };
        count = u64le(d, rec + 32)?;
        cd_size = u64le(d, rec + 40)?;
        cd_off = u64le(d, rec + 48)?;
        cd_end = rec;
    }
    // bytes before the archive (a launch script): the directory ends where the end record
    // starts, so its recorded offset is short by that much
    let base = u64::try_from(cd_end)
        .ok()?
        .checked_sub(cd_size)?
        .checked_sub(cd_off)?;
    let mut off = us(base.checked_add(cd_off)?)?;
    let mut out = Vec::new();
    for _ in 0..count {
        if budget.entries == 0 {
            budget.note(format!(
                "{location}: more than {MAX_ENTRIES} zip entries in it and the archives nested in it: the rest is not read"
            ));
            break;
        }
        budget.entries -= 1;
        if d.get(off..off.checked_add(4)?)? != b"PK\x01\x02" {
            break;
        }
        let method = u16le(d, off + 10)?;
        let mut csize = u32le(d, off + 20)?;
        let mut usize_ = u32le(d, off + 24)?;
        let nlen = us(u16le(d, off + 28)?)?;
        let elen = us(u16le(d, off + 30)?)?;
        let clen = us(u16le(d, off + 32)?)?;
        let mut local = u32le(d, off + 42)?;
        let name_at = off + 46;
        let name = String::from_utf8_lossy(d.get(name_at..name_at + nlen)?).into_owned();
        let extra = d.get(name_at + nlen..name_at + nlen + elen)?;
        zip64_extra(extra, &mut usize_, &mut csize, &mut local);
        out.push(Entry {
            name,
            method,
            csize,
            usize: usize_,
            local: local.checked_add(base)?,
        });
        off = off.checked_add(46 + nlen + elen + clen)?;
    }
    Some(out)
}

/// Apply a zip64 extra field (id 1): 64-bit values for the fields that hold 0xFFFFFFFF, in
/// the order uncompressed size, compressed size, local header offset.
fn zip64_extra(mut extra: &[u8], usize_: &mut u64, csize: &mut u64, local: &mut u64) {
    while let (Some(id), Some(len)) = (u16le(extra, 0), u16le(extra, 2)) {
        let Some(body) = extra.get(4..4 + len as usize) else {
            return;
        };
        if id == 1 {
            let mut at = 0;
            for field in [usize_, csize, local] {
                if *field == 0xFFFF_FFFF {
                    match u64le(body, at) {
                        Some(v) => *field = v,
                        None => return,
                    }
                    at += 8;
                }
            }
            return;
        }
        extra = &extra[4 + len as usize..];
    }
}

/// The stored bytes of entry `e`.
fn raw<'a>(d: &'a [u8], e: &Entry) -> Option<&'a [u8]> {
    let local = us(e.local)?;
    if d.get(local..local.checked_add(4)?)? != b"PK\x03\x04" {
        return None;
    }
    let start = local
        .checked_add(30)?
        .checked_add(us(u16le(d, local + 26)?)?)?
        .checked_add(us(u16le(d, local + 28)?)?)?;
    d.get(start..start.checked_add(us(e.csize)?)?)
}

/// Entry `e` inflated, at most `limit` bytes of it and never more than the budget has left
/// (`None` for other methods and when the budget is spent).
fn read_entry(d: &[u8], e: &Entry, limit: u64, budget: &mut Budget) -> Option<Vec<u8>> {
    let raw = raw(d, e)?;
    if budget.bytes == 0 {
        budget.note(format!(
            "{}: the inflating budget of its archive is spent, not read",
            e.name
        ));
        return None;
    }
    let limit = limit.min(budget.bytes);
    let mut out = Vec::new();
    match e.method {
        0 => out.extend_from_slice(raw.get(..raw.len().min(us(limit)?))?),
        8 => {
            let _ = flate2::read::DeflateDecoder::new(raw)
                .take(limit)
                .read_to_end(&mut out);
        }
        _ => return None,
    }
    budget.bytes = budget
        .bytes
        .saturating_sub(u64::try_from(out.len()).unwrap_or(u64::MAX));
    Some(out)
}

fn read_text(d: &[u8], e: &Entry, budget: &mut Budget) -> Option<String> {
    let limit = budget.file_limit;
    read_entry(d, e, limit, budget).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn is_archive(name: &str) -> bool {
    [".jar", ".war", ".ear"].iter().any(|x| name.ends_with(x))
}

fn prop<'a>(text: &'a str, key: &str, sep: char) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(sep)?;
        (k.trim() == key)
            .then(|| v.trim())
            .filter(|v| !v.is_empty())
    })
}

/// The packages of a Java archive: the one it declares and those of the archives nested in
/// it, within `budget`.
pub(super) fn parse_jar(d: &[u8], location: &str, budget: &mut Budget) -> Vec<Package> {
    let mut out = Vec::new();
    walk(d, location, 0, budget, &mut out);
    out
}

fn walk(d: &[u8], location: &str, depth: usize, budget: &mut Budget, out: &mut Vec<Package>) {
    let Some(list) = entries(d, budget, location) else {
        return;
    };
    out.extend(declared(d, &list, location, budget));
    for e in list.iter().filter(|e| is_archive(&e.name)) {
        let inner = format!("{location}:{}", e.name);
        if depth + 1 > MAX_DEPTH {
            budget.note(format!(
                "{inner}: nested more than {MAX_DEPTH} archives deep, not read"
            ));
            continue;
        }
        if e.method == 0 {
            // stored (as Spring Boot requires): read in place, nothing to spend
            if let Some(r) = raw(d, e) {
                walk(r, &inner, depth + 1, budget, out);
            }
            continue;
        }
        if e.usize > budget.bytes {
            budget.note(format!(
                "{inner}: {} bytes inflated, over what is left of its archive's budget, not read",
                e.usize
            ));
            continue;
        }
        // the declared size may lie: inflate one byte more than it to notice
        let Some(bytes) = read_entry(d, e, e.usize.saturating_add(1), budget) else {
            continue;
        };
        if u64::try_from(bytes.len()).ok() != Some(e.usize) {
            budget.note(format!(
                "{inner}: not the size its directory entry says, not read"
            ));
            continue;
        }
        walk(&bytes, &inner, depth + 1, budget, out);
    }
}

/// The package an archive declares itself (at most one).
fn declared(d: &[u8], list: &[Entry], location: &str, budget: &mut Budget) -> Option<Package> {
    let mut found: Option<(String, String, String)> = None;
    let mut license = None;
    for e in list {
        if e.name.starts_with("META-INF/maven/") && e.name.ends_with("/pom.properties") {
            if let Some(t) = read_text(d, e, budget) {
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
        if let Some(e) = list.iter().find(|e| e.name == "META-INF/MANIFEST.MF") {
            if let Some(t) = read_text(d, e, budget) {
                let file = location.rsplit(['/', ':']).next().unwrap_or(location);
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
    let (group, artifact, version) = found?;
    Some(Package {
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
    })
}
