//! rpm's sqlite database (`rpmdb.sqlite`, Fedora ≥ 33, RHEL ≥ 9): the `Packages` table's
//! `blob` column holds one rpm header per package (index entries + data store, big-endian),
//! read here with every offset checked. The Berkeley DB (`Packages`) and ndb (`Packages.db`)
//! formats of older distributions are not read. Packages:
//! `pkg:rpm/<distro>/<name>@<version>-<release>?arch=<arch>[&epoch=N]`.

use super::{purl_escape, Package};

const NAME: u32 = 1000;
const VERSION: u32 = 1001;
const RELEASE: u32 = 1002;
const EPOCH: u32 = 1003;
const LICENSE: u32 = 1014;
const ARCH: u32 = 1022;

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
    let mut purl = format!(
        "pkg:rpm/redhat/{}@{}",
        purl_escape(&name),
        purl_escape(&full)
    );
    let mut q = Vec::new();
    if let Some(a) = h.string(ARCH) {
        q.push(format!("arch={}", purl_escape(&a)));
    }
    if let Some(e) = h.int32(EPOCH) {
        q.push(format!("epoch={e}"));
    }
    if !q.is_empty() {
        purl.push('?');
        purl.push_str(&q.join("&"));
    }
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
    for blob in rows.flatten().take(100_000) {
        if let Some(p) = parse_header(&blob, location) {
            out.push(p);
        }
    }
    Ok(out)
}
