//! rpm package databases, told apart by their content, each holding one rpm header blob per
//! package (index entries + data store, big-endian), read here with every offset checked:
//!
//! - sqlite (`rpmdb.sqlite`, Fedora ≥ 33, RHEL ≥ 9): the `Packages` table's `blob` column;
//! - Berkeley DB hash (`Packages`, RHEL/CentOS ≤ 8, SLES ≤ 15.2): the values of the hash
//!   pages, inline or in chains of overflow pages ([`parse_bdb`]);
//! - ndb (`Packages.db`, SUSE ≥ 15.3): the blobs the slot pages point at ([`parse_ndb`]).
//!
//! Packages: `pkg:rpm/<distro>/<name>@<version>-<release>?arch=<arch>[&epoch=N]&upstream=<source rpm>`.

use super::{purl_escape, with_qualifiers, Package};

const NAME: u32 = 1000;
const VERSION: u32 = 1001;
const RELEASE: u32 = 1002;
const EPOCH: u32 = 1003;
const LICENSE: u32 = 1014;
const ARCH: u32 = 1022;
const SOURCERPM: u32 = 1044;

fn be32(d: &[u8], off: usize) -> Option<u32> {
    let b: [u8; 4] = d.get(off..off.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

/// `tag → (type, offset, count)` and the data store of a header blob.
struct Header<'a> {
    entries: Vec<(u32, u32, usize, u32)>,
    data: &'a [u8],
}

impl<'a> Header<'a> {
    fn parse(d: &'a [u8]) -> Option<Header<'a>> {
        let il = usize::try_from(be32(d, 0)?).ok()?;
        let dl = usize::try_from(be32(d, 4)?).ok()?;
        if il > 0x1_0000 || dl > 256 << 20 {
            return None;
        }
        let data_start = 8usize.checked_add(il.checked_mul(16)?)?;
        let data = d.get(data_start..data_start.checked_add(dl)?)?;
        let mut entries = Vec::with_capacity(il);
        for i in 0..il {
            let o = 8 + i * 16;
            entries.push((
                be32(d, o)?,
                be32(d, o + 4)?,
                usize::try_from(be32(d, o + 8)?).ok()?,
                be32(d, o + 12)?,
            ));
        }
        Some(Header { entries, data })
    }

    fn string(&self, tag: u32) -> Option<String> {
        let &(_, ty, off, _) = self.entries.iter().find(|e| e.0 == tag)?;
        // STRING, STRING_ARRAY (first), I18NSTRING (first)
        if !matches!(ty, 6 | 8 | 9) {
            return None;
        }
        let rest = self.data.get(off..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&rest[..end]).into_owned())
    }

    fn int32(&self, tag: u32) -> Option<u32> {
        let &(_, ty, off, _) = self.entries.iter().find(|e| e.0 == tag)?;
        (ty == 4).then_some(())?;
        be32(self.data, off)
    }
}

/// The package of one header blob.
pub(super) fn parse_header(blob: &[u8], location: &str) -> Option<Package> {
    let h = Header::parse(blob)?;
    let name = h.string(NAME)?;
    if name == "gpg-pubkey" {
        return None;
    }
    let version = h.string(VERSION)?;
    let release = h.string(RELEASE).unwrap_or_default();
    let full = if release.is_empty() {
        version
    } else {
        format!("{version}-{release}")
    };
    let epoch = h.int32(EPOCH).map(|e| e.to_string()).unwrap_or_default();
    let purl = with_qualifiers(
        &format!(
            "pkg:rpm/redhat/{}@{}",
            purl_escape(&name),
            purl_escape(&full)
        ),
        &[
            ("arch", &h.string(ARCH).unwrap_or_default()),
            ("epoch", &epoch),
            ("upstream", &h.string(SOURCERPM).unwrap_or_default()),
        ],
    );
    Some(Package {
        ecosystem: "rpm",
        name,
        version: full,
        purl,
        license: h.string(LICENSE),
        location: location.to_string(),
        source_info: "acquired package info from RPM DB".into(),
    })
}

/// Most packages read from one database.
const MAX_PACKAGES: usize = 100_000;

/// The packages of an rpm database of any of the three formats.
pub(super) fn parse_db(db: &[u8], location: &str) -> Result<Vec<Package>, String> {
    if db.starts_with(b"SQLite format 3\0") {
        parse_sqlite(db, location)
    } else if db.starts_with(b"RpmP") {
        parse_ndb(db, location)
    } else if matches!(le32(db, 12), Some(BDB_HASH_MAGIC | BDB_HASH_MAGIC_SWAPPED)) {
        parse_bdb(db, location)
    } else {
        Err("not an rpm database (sqlite, Berkeley DB hash or ndb)".into())
    }
}

fn le32(d: &[u8], off: usize) -> Option<u32> {
    let b: [u8; 4] = d.get(off..off.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

const BDB_HASH_MAGIC: u32 = 0x0006_1561;
const BDB_HASH_MAGIC_SWAPPED: u32 = 0x6115_0600;

/// A Berkeley DB file in the byte order it was written in.
struct Bdb<'a> {
    d: &'a [u8],
    swapped: bool,
    page_size: usize,
    last_page: u32,
}

impl<'a> Bdb<'a> {
    fn u32(&self, off: usize) -> Option<u32> {
        let v = le32(self.d, off)?;
        Some(if self.swapped { v.swap_bytes() } else { v })
    }

    fn u16(&self, off: usize) -> Option<usize> {
        let b: [u8; 2] = self.d.get(off..off.checked_add(2)?)?.try_into().ok()?;
        let v = u16::from_le_bytes(b);
        Some(usize::from(if self.swapped { v.swap_bytes() } else { v }))
    }

    fn page(&self, n: u32) -> Option<&'a [u8]> {
        if n > self.last_page {
            return None;
        }
        let start = usize::try_from(n).ok()?.checked_mul(self.page_size)?;
        self.d.get(start..start.checked_add(self.page_size)?)
    }

    /// The `len` bytes of an overflow chain starting at page `first`; `None` when the chain
    /// breaks, loops (more pages than the file has) or holds other than `len` bytes.
    fn overflow(&self, first: u32, len: usize) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(len.min(self.d.len()));
        let mut n = first;
        for _ in 0..=self.last_page {
            let p = self.page(n)?;
            let base = usize::try_from(n).ok()? * self.page_size;
            // page number, next page, type 7 (overflow); bytes used in the free-offset field
            if self.u32(base + 8)? != n || *p.get(25)? != 7 {
                return None;
            }
            let used = self.u16(base + 22)?;
            out.extend_from_slice(p.get(26..26usize.checked_add(used)?)?);
            if out.len() > len {
                return None;
            }
            let next = self.u32(base + 16)?;
            if next == 0 {
                return (out.len() == len).then_some(out);
            }
            n = next;
        }
        None
    }
}

/// The packages of a Berkeley DB hash database (`Packages`): every hash page's key/value
/// pairs, values inline (`H_KEYDATA`) or on overflow pages (`H_OFFPAGE`), in either byte
/// order. Pages are walked in file order, not through the buckets, so a missing bucket page
/// loses nothing; what is reassembled from overflow pages is bounded by the file size.
pub(super) fn parse_bdb(db: &[u8], location: &str) -> Result<Vec<Package>, String> {
    let swapped = le32(db, 12) == Some(BDB_HASH_MAGIC_SWAPPED);
    let mut b = Bdb {
        d: db,
        swapped,
        page_size: 0,
        last_page: 0,
    };
    let page_size = b.u32(20).ok_or("truncated Berkeley DB metadata page")?;
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("Berkeley DB page size {page_size} is not valid"));
    }
    b.page_size = page_size as usize;
    let in_file = u32::try_from(db.len() / b.page_size).unwrap_or(u32::MAX);
    b.last_page = b
        .u32(32)
        .ok_or("truncated Berkeley DB metadata page")?
        .min(in_file.saturating_sub(1));
    let mut out = Vec::new();
    // bytes reassembled from overflow pages: a value is stored once, so more than the file
    // holds means items sharing chains (hostile)
    let mut budget = db.len();
    for n in 1..=b.last_page {
        let Some(p) = b.page(n) else { break };
        let base = n as usize * b.page_size;
        // hash pages: 13 (sorted), 2 (unsorted, before BDB 4.6)
        if !matches!(p.get(25), Some(2 | 13)) {
            continue;
        }
        let count = b.u16(base + 20).unwrap_or(0).min((b.page_size - 26) / 2);
        let offset = |i: usize| b.u16(base + 26 + 2 * i).filter(|&o| o < b.page_size);
        // entries come in pairs: key (even index), value (odd); items are packed from the
        // end of the page down, so an item ends where the previous one starts
        for k in (0..count.saturating_sub(1)).step_by(2) {
            let (Some(koff), Some(voff)) = (offset(k), offset(k + 1)) else {
                continue;
            };
            let Some(vlen) = koff.checked_sub(voff).filter(|&l| l > 0) else {
                continue;
            };
            let Some(item) = p.get(voff..voff + vlen) else {
                continue;
            };
            let blob = match item[0] {
                1 => item[1..].to_vec(),
                3 if vlen >= 12 => {
                    let (Some(pg), Some(len)) = (b.u32(base + voff + 4), b.u32(base + voff + 8))
                    else {
                        continue;
                    };
                    let len = len as usize;
                    if len > budget {
                        return Err(
                            "overflow items add up to more than the file: not read further".into(),
                        );
                    }
                    budget -= len;
                    match b.overflow(pg, len) {
                        Some(v) => v,
                        None => continue,
                    }
                }
                _ => continue,
            };
            if let Some(pkg) = parse_header(&blob, location) {
                out.push(pkg);
                if out.len() >= MAX_PACKAGES {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

/// The packages of an ndb database (`Packages.db`), little-endian throughout: a 32-byte
/// header (`RpmP`, version 0, generation, number of 4096-byte slot pages), then 16-byte slots
/// (`Slot`, package index, offset and count of 16-byte blocks; offset 0 = free), each
/// pointing at a blob: `BlbS`, package index, generation, length, the header blob, padding,
/// and a tail of adler32 (of all before it), length and `BlbE`. Blobs that do not check out
/// are skipped.
pub(super) fn parse_ndb(db: &[u8], location: &str) -> Result<Vec<Package>, String> {
    const PAGE: usize = 4096;
    if le32(db, 4) != Some(0) {
        return Err("ndb version is not 0".into());
    }
    let pages = le32(db, 12).ok_or("truncated ndb header")? as usize;
    let slots_end = pages
        .checked_mul(PAGE)
        .filter(|&e| e <= db.len())
        .ok_or("ndb slot pages beyond the end of the file")?;
    let mut out = Vec::new();
    for at in (32..slots_end).step_by(16) {
        if db.get(at..at + 4) != Some(b"Slot".as_slice()) {
            return Err(format!("ndb slot at {at} has no magic"));
        }
        let (Some(idx), Some(blkoff), Some(blkcnt)) =
            (le32(db, at + 4), le32(db, at + 8), le32(db, at + 12))
        else {
            break;
        };
        if blkoff == 0 || idx == 0 {
            continue;
        }
        let Some(blob) = ndb_blob(db, idx, blkoff as usize, blkcnt as usize, slots_end) else {
            continue;
        };
        if let Some(pkg) = parse_header(blob, location) {
            out.push(pkg);
            if out.len() >= MAX_PACKAGES {
                break;
            }
        }
    }
    Ok(out)
}

fn ndb_blob(db: &[u8], idx: u32, blkoff: usize, blkcnt: usize, min: usize) -> Option<&[u8]> {
    let start = blkoff.checked_mul(16)?;
    let end = start.checked_add(blkcnt.checked_mul(16)?)?;
    if start < min {
        return None;
    }
    let area = db.get(start..end)?;
    if area.get(..4)? != b"BlbS" || le32(area, 4)? != idx {
        return None;
    }
    let len = le32(area, 12)? as usize;
    if blkcnt != (16 + len.checked_add(12)?).div_ceil(16) {
        return None;
    }
    let tail = area.len() - 12;
    if le32(area, tail + 4)? as usize != len || area.get(tail + 8..)? != b"BlbE" {
        return None;
    }
    if le32(area, tail)? != adler32(&area[..tail]) {
        return None;
    }
    area.get(16..16 + len)
}

/// Adler-32 (RFC 1950).
pub(super) fn adler32(d: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in d.chunks(5552) {
        for &x in chunk {
            a += u32::from(x);
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    (b << 16) | a
}

/// The packages of an `rpmdb.sqlite` file's bytes (copied to a private temporary file for
/// SQLite, opened read-only, removed afterwards).
pub(super) fn parse_sqlite(db: &[u8], location: &str) -> Result<Vec<Package>, String> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "rbuild-rpmdb-{}-{}.sqlite",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(db)
    };
    write().map_err(|e| format!("copying the rpm database: {e}"))?;
    let r = read_db(&path, location);
    let _ = std::fs::remove_file(&path);
    r
}

fn read_db(path: &std::path::Path, location: &str) -> Result<Vec<Package>, String> {
    use rusqlite::{Connection, OpenFlags};
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    let mut stmt = conn
        .prepare("SELECT blob FROM Packages")
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for blob in rows.flatten().take(MAX_PACKAGES) {
        if let Some(p) = parse_header(&blob, location) {
            out.push(p);
        }
    }
    Ok(out)
}
