//! Layer tars in overlayfs "upper" format.
//!
//! * [`apply_layer`] extracts a (gzip or uncompressed) layer tar into a directory, turning OCI
//!   whiteouts into overlayfs ones (`.wh.NAME` → char device 0:0, `.wh..wh..opq` →
//!   `trusted.overlay.opaque=y`, or `user.overlay.opaque` in rootless mode). Every path is resolved beneath the destination by `rbuild_fsroot` (`openat2(RESOLVE_IN_ROOT)`) from the
//!   destination, so `..`, absolute paths and symlinks planted by the layer can never lead a write
//!   outside it; the final component is never followed.
//!   [`apply_layer_verified`] also hashes the uncompressed stream and checks it against the
//!   image config's diff_id. Entry kinds: files (PAX sparse files written with their holes),
//!   directories, symlinks, hardlinks, devices, FIFOs; GNU sparse and unknown kinds are refused
//!   (never dropped); pax global headers are ignored. A device node that cannot be created
//!   (no CAP_MKNOD: rootless) is kept as an empty mode-0 file marked with
//!   `user.rbuild.device` (see `rbuild_cache::overlay::DEVICE_XATTR`). `user.rbuild.*` and
//!   overlay xattrs in an archive are dropped.
//! * [`write_layer`] turns an upper directory into a deterministic, uncompressed layer tar (the
//!   reverse mapping), with hardlinks, xattrs as PAX `SCHILY.xattr.*`, device markers as the
//!   devices they stand for, and SOURCE_DATE_EPOCH clamping.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

use rbuild_cache::read_full;

use crate::OciError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

// ---------------------------------------------------------------------------------------------
// apply
// ---------------------------------------------------------------------------------------------

/// Extract a layer blob (gzip, zstd or uncompressed tar; bzip2/xz are refused with a clear
/// error) into `dest` in overlayfs upper format. See the module docs for the safety rules.
pub fn apply_layer(blob: impl Read, dest: &Path) -> Result<(), OciError> {
    extract_mode(blob, dest, true, None, None, None).map(|_| ())
}

/// [`apply_layer`], verifying that the uncompressed stream hashes to `diff_id` (the image
/// config's claim): the stream is hashed as it is applied and read to its end. On a mismatch
/// the error is [`OciError::DiffIdMismatch`] and `dest` holds a partial tree the caller must
/// remove (nothing may be recorded for it). `layer` (the blob digest) names the layer.
pub fn apply_layer_verified(
    blob: impl Read,
    dest: &Path,
    layer: &str,
    diff_id: &str,
) -> Result<(), OciError> {
    extract_mode(blob, dest, true, Some((layer, diff_id)), None, None).map(|_| ())
}

/// [`apply_layer_verified`] that also keeps the uncompressed tar: the stream being applied is
/// written to the content store as a blob, committed only when it hashes to `diff_id` (so the
/// store gets the exact tar the exporting machine had, under its diff_id; nothing on a
/// mismatch). When the store already has that blob it is not written again. Returns the
/// uncompressed blob (digest = `diff_id`, size).
pub fn apply_layer_verified_keeping_tar(
    blob: impl Read,
    dest: &Path,
    blob_digest: &str,
    diff_id: &str,
    store: &rbuild_cache::Store,
) -> Result<rbuild_cache::BlobInfo, OciError> {
    crate::digest::digest_hex(diff_id)?;
    let store_err = |op: String| {
        move |e: rbuild_cache::CacheError| OciError::Store {
            op,
            reason: e.to_string(),
        }
    };
    let mut writer = match store.has_blob(diff_id) {
        true => None,
        false => Some(
            store
                .blob_writer()
                .map_err(store_err(format!("keep layer {diff_id}")))?,
        ),
    };
    let size = extract_mode(
        blob,
        dest,
        true,
        Some((blob_digest, diff_id)),
        None,
        writer.as_mut().map(|w| w as &mut dyn Write),
    )?;
    if let Some(w) = writer {
        return w
            .commit(Some((diff_id, Some(size))))
            .map_err(store_err(format!("commit layer tar {diff_id}")));
    }
    Ok(rbuild_cache::BlobInfo {
        digest: diff_id.to_string(),
        size,
    })
}

/// A reader that copies what it reads into a writer.
pub(crate) struct Tee<'w, R> {
    pub(crate) inner: R,
    pub(crate) out: Option<&'w mut dyn Write>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(w) = self.out.as_mut() {
            w.write_all(&buf[..n])?;
        }
        Ok(n)
    }
}

/// Extract an archive (gzip or uncompressed tar) into `dest` the way `ADD archive.tar.gz /dir`
/// does: the same safe extraction as [`apply_layer`], but `.wh.*` names are ordinary files.
/// With `owner` (`ADD --chown`), every extracted entry gets that uid/gid (BuildKit ≥ v0.23
/// passes the chown to the untar as `ChownOpts`).
pub fn extract_archive(
    archive: impl Read,
    dest: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(), OciError> {
    extract_mode(archive, dest, false, None, owner, None).map(|_| ())
}

/// What [`archive_kind`] found at the start of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    /// Not an archive: copy the file as it is.
    None,
    Tar,
    GzipTar,
    /// A compressed tar rbuild cannot decompress yet (bzip2, xz, zstd).
    Unsupported(&'static str),
}

/// Detect by content (never by name) whether a file is a tar archive ADD should unpack.
pub fn archive_kind(path: &Path) -> Result<ArchiveKind, OciError> {
    let mut f = std::fs::File::open(path).map_err(OciError::io("open", path))?;
    let mut head = [0u8; 512];
    let n = read_full(&mut f, &mut head).map_err(OciError::io("read", path))?;
    let head = &head[..n];
    if head.starts_with(&[0x1f, 0x8b]) {
        let f = std::fs::File::open(path).map_err(OciError::io("open", path))?;
        let mut gz = flate2::read::MultiGzDecoder::new(f);
        let mut inner = [0u8; 512];
        return Ok(match read_full(&mut gz, &mut inner) {
            Ok(512) if is_tar_header(&inner) => ArchiveKind::GzipTar,
            _ => ArchiveKind::None,
        });
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Ok(ArchiveKind::Unsupported("zstd"));
    }
    if head.starts_with(b"BZh") {
        return Ok(ArchiveKind::Unsupported("bzip2"));
    }
    if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Ok(ArchiveKind::Unsupported("xz"));
    }
    if n == 512 && is_tar_header(head) {
        return Ok(ArchiveKind::Tar);
    }
    Ok(ArchiveKind::None)
}

/// A tar header: the checksum field matches the header bytes (ustar or old v7 format).
fn is_tar_header(h: &[u8]) -> bool {
    if h.len() < 512 || h[0] == 0 {
        return false;
    }
    let field = &h[148..156];
    let text: String = field
        .iter()
        .take_while(|b| **b != 0 && **b != b' ')
        .map(|b| *b as char)
        .collect();
    let Ok(stored) = u32::from_str_radix(text.trim(), 8) else {
        return false;
    };
    let sum: u32 = h[..512]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    sum == stored
}

/// The uncompressed stream of a layer blob, its compression recognised by content (gzip,
/// zstd, or none; bzip2/xz are refused).
fn decompress_sniffed<'a>(
    blob: impl Read + 'a,
    what: &Path,
) -> Result<Box<dyn Read + 'a>, OciError> {
    let mut buffered = BufReader::with_capacity(128 * 1024, blob);
    let magic = buffered
        .fill_buf()
        .map_err(OciError::io("read layer for", what))?;
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered)
                .map_err(OciError::io("read zstd layer for", what))?,
        )
    } else if magic.starts_with(b"BZh") {
        return Err(OciError::UnsupportedCompression("bzip2".into()));
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(OciError::UnsupportedCompression("xz".into()));
    } else {
        Box::new(buffered)
    })
}

/// The diff_id (sha256 of the uncompressed tar) of a layer blob, compression by content.
pub fn layer_diff_id(blob: impl Read, what: &Path) -> Result<String, OciError> {
    let r = crate::digest::HashingReader::new(decompress_sniffed(blob, what)?);
    let (d, _) = r.finish().map_err(OciError::io("read layer", what))?;
    Ok(d)
}

fn extract_mode(
    blob: impl Read,
    dest: &Path,
    whiteouts: bool,
    expect: Option<(&str, &str)>,
    owner: Option<(u32, u32)>,
    keep: Option<&mut dyn Write>,
) -> Result<u64, OciError> {
    let reader = Tee {
        inner: decompress_sniffed(blob, dest)?,
        out: keep,
    };
    let root = rbuild_fsroot::Root::new(dest)
        .map_err(|e| OciError::io("open destination", dest)(e.errno().into()))?;
    let mut ex = Extractor {
        root,
        dest: dest.to_path_buf(),
        dir_times: Vec::new(),
        whiteouts,
        owner,
    };
    let mut archive = tar::Archive::new(TarGuard::new(crate::digest::HashingReader::new(reader)));
    let entries = archive
        .entries()
        .map_err(OciError::io("read layer tar for", dest))?;
    for entry in entries {
        let entry = entry.map_err(OciError::io("read layer tar for", dest))?;
        ex.entry(entry)?;
    }
    let mut size = 0;
    if let Some((layer, diff_id)) = expect {
        // The diff_id covers the whole uncompressed stream, end-of-archive blocks included.
        let (actual, n) = archive
            .into_inner()
            .inner
            .finish()
            .map_err(OciError::io("read layer tar for", dest))?;
        if actual != diff_id {
            return Err(OciError::DiffIdMismatch {
                layer: layer.to_string(),
                expected: diff_id.to_string(),
                actual,
            });
        }
        size = n;
    }
    // Directory mtimes last (creating children changes them), deepest first.
    let dir_times = std::mem::take(&mut ex.dir_times);
    for (rel, ts) in dir_times.iter().rev() {
        let fd =
            match ex.try_open_in_root(rel, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW) {
                Ok(fd) => fd,
                // replaced later in the layer by a non-directory or removed by a whiteout
                Err(
                    rustix::io::Errno::NOTDIR | rustix::io::Errno::NOENT | rustix::io::Errno::LOOP,
                ) => continue,
                Err(e) => return Err(ex.err("open", rel)(e)),
            };
        rustix::fs::futimens(&fd, &times(*ts)).map_err(ex.err("set mtime", rel))?;
    }
    Ok(size)
}

/// Largest extension header (PAX `x`/`g`, GNU long name/link `L`/`K`) accepted. The tar crate
/// reads these into memory whole; Go's archive/tar has the same 1 MiB limit.
const MAX_EXTENSION_HEADER: u64 = 1 << 20;

/// A reader between the decompressor and the tar parser that follows the archive's block
/// structure and refuses extension headers over [`MAX_EXTENSION_HEADER`], so a small
/// compressed layer cannot make the parser allocate gigabytes. It tracks PAX `size` records,
/// which change the length of the next entry's data.
pub(crate) struct TarGuard<R> {
    inner: R,
    /// Bytes of the current header block read so far.
    header: Vec<u8>,
    /// Data bytes (with padding) still to pass before the next header.
    skip: u64,
    /// The content of the PAX header being read (to find `size`).
    pax: Option<Vec<u8>>,
    /// Size override for the next entry, from a PAX `size` record.
    next_size: Option<u64>,
    /// Past the end-of-archive block (or a structure not followed): pass bytes through.
    done: bool,
}

impl<R: Read> TarGuard<R> {
    pub(crate) fn new(inner: R) -> Self {
        TarGuard {
            inner,
            header: Vec::with_capacity(512),
            skip: 0,
            pax: None,
            next_size: None,
            done: false,
        }
    }

    fn padded(n: u64) -> u64 {
        n.div_ceil(512).saturating_mul(512)
    }

    /// A complete header block: how much data follows it. Mirrors the tar crate: every
    /// entry's data is its size field (or the pending PAX `size`), whatever its type.
    fn on_header(&mut self) -> io::Result<()> {
        let h = &self.header;
        if h.iter().all(|b| *b == 0) {
            // End of archive: what follows is not parsed.
            self.done = true;
            return Ok(());
        }
        let kind = h[156];
        let field = parse_tar_number(&h[124..136]).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "invalid size in tar header")
        })?;
        let size = self.next_size.unwrap_or(field);
        match kind {
            b'x' | b'g' | b'L' | b'K' if size > MAX_EXTENSION_HEADER => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "tar extension header of {size} bytes (the limit is {MAX_EXTENSION_HEADER})"
                    ),
                ))
            }
            b'x' => self.pax = Some(Vec::with_capacity(size as usize)),
            b'L' | b'K' => {}
            // GNU sparse: extension blocks follow that are not headers; the entry is refused
            // by the extractor, so stop following the structure.
            b'S' => self.done = true,
            _ => self.next_size = None,
        }
        self.skip = Self::padded(size);
        Ok(())
    }

    fn on_pax_done(&mut self) {
        if let Some(body) = self.pax.take() {
            // A new PAX header replaces the previous one.
            self.next_size = None;
            for rec in body.split(|b| *b == b'\n') {
                let Some(sp) = rec.iter().position(|b| *b == b' ') else {
                    continue;
                };
                if let Some(v) = rec[sp + 1..].strip_prefix(b"size=") {
                    self.next_size = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok());
                }
            }
        }
    }
}

/// A tar numeric field: octal text, or base-256 (high bit set).
fn parse_tar_number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(v);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| *b != 0 && *b != b' ')
        .collect();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&text).ok()?, 8).ok()
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return self.inner.read(buf);
        }
        let want = if self.skip > 0 {
            buf.len().min(self.skip.min(usize::MAX as u64) as usize)
        } else {
            buf.len().min(512 - self.header.len())
        };
        let n = self.inner.read(&mut buf[..want])?;
        if self.skip > 0 {
            if let Some(p) = self.pax.as_mut() {
                p.extend_from_slice(&buf[..n]);
            }
            self.skip -= n as u64;
            if self.skip == 0 {
                self.on_pax_done();
            }
        } else {
            self.header.extend_from_slice(&buf[..n]);
            if self.header.len() == 512 {
                let r = self.on_header();
                self.header.clear();
                r?;
                if self.skip == 0 {
                    self.on_pax_done();
                }
            }
        }
        Ok(n)
    }
}

struct Extractor {
    root: rbuild_fsroot::Root,
    dest: PathBuf,
    dir_times: Vec<(String, (i64, u32))>,
    /// Interpret `.wh.` entries as overlay whiteouts (layers) or keep them as files (ADD).
    whiteouts: bool,
    /// `ADD --chown`: every entry gets this owner instead of the archive's.
    owner: Option<(u32, u32)>,
}

/// Split an archive path into safe components: leading `/` and `.` are dropped (paths are
/// relative to the layer root); `..` is refused.
fn clean_components(raw: &[u8]) -> Result<Vec<&[u8]>, OciError> {
    let mut out = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                return Err(OciError::UnsafePath {
                    path: String::from_utf8_lossy(raw).into_owned(),
                    reason: "contains a '..' component".into(),
                })
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

fn join(comps: &[&[u8]]) -> String {
    let v: Vec<String> = comps
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    v.join("/")
}

fn times((sec, nsec): (i64, u32)) -> Timestamps {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec.into(),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

struct EntryMeta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: (i64, u32),
    xattrs: Vec<(OsString, Vec<u8>)>,
    /// A PAX-format GNU sparse file (`GNU.sparse.*` records).
    sparse: Option<Sparse>,
}

/// A PAX-format GNU sparse file (formats 0.0, 0.1 and 1.0, as GNU tar and Go's archive/tar
/// write them): its real name and size, and where the data chunks go.
#[derive(Debug, Default)]
struct Sparse {
    /// `GNU.sparse.name`: the real path (the header's is `…/GNUSparseFile.N/name`).
    name: Option<Vec<u8>>,
    /// `GNU.sparse.size` / `GNU.sparse.realsize`.
    size: Option<u64>,
    /// Format 1.0: the map is at the start of the entry's data.
    map_in_data: bool,
    /// Formats 0.0/0.1: (offset, length) pairs from the PAX records.
    map: Vec<u64>,
    major: Option<String>,
    minor: Option<String>,
}

/// Most data chunks a sparse file may list (a bound on the map's memory).
const MAX_SPARSE_CHUNKS: usize = 1 << 20;

fn parse_pax_time(v: &str) -> Option<(i64, u32)> {
    let (s, frac) = match v.split_once('.') {
        Some((s, f)) => (s, f),
        None => (v, ""),
    };
    let sec: i64 = s.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = digits.parse().ok()?;
    Some((sec, nsec))
}

impl Extractor {
    fn err<'a>(
        &'a self,
        op: &'a str,
        rel: &'a str,
    ) -> impl FnOnce(rustix::io::Errno) -> OciError + 'a {
        move |e| OciError::Io {
            op: op.to_string(),
            path: self.dest.join(rel),
            source: e.into(),
        }
    }

    /// A failed chown; in rootless mode `EINVAL` means an id outside the namespace's map.
    fn chown_err(&self, e: rustix::io::Errno, meta: &EntryMeta, rel: &str) -> OciError {
        let path = self.dest.join(rel);
        if e == rustix::io::Errno::INVAL && rbuild_cache::overlay::rootless() {
            let msg = rbuild_cache::overlay::unmapped_id_message(
                Path::new(rel),
                meta.uid as u32,
                meta.gid as u32,
            );
            return OciError::Io {
                op: "unpack layer:".into(),
                path,
                source: io::Error::other(msg),
            };
        }
        self.err("chown", rel)(e)
    }

    /// Open `rel` (already cleaned) with the destination as the filesystem root.
    fn open_in_root(&self, rel: &str, flags: OFlags) -> Result<OwnedFd, OciError> {
        self.try_open_in_root(rel, flags)
            .map_err(|e| OciError::io("open", self.dest.join(rel))(e.into()))
    }

    fn try_open_in_root(&self, rel: &str, flags: OFlags) -> Result<OwnedFd, rustix::io::Errno> {
        // The one resolver (rbuild-fsroot): openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS),
        // or the same fd walk where the kernel has no openat2.
        self.root.open(rel, flags).map_err(|e| e.errno())
    }

    /// Open (creating missing directories) the directory `comps` inside the root.
    fn ensure_dir(&self, comps: &[&[u8]]) -> Result<OwnedFd, OciError> {
        let dirflags = OFlags::DIRECTORY | OFlags::RDONLY;
        let full = join(comps);
        match self.try_open_in_root(&full, dirflags) {
            Ok(fd) => return Ok(fd),
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => {
                return Err(OciError::io("open directory", self.dest.join(&full))(
                    e.into(),
                ))
            }
        }
        let mut cur = self.open_in_root("", dirflags)?;
        for i in 0..comps.len() {
            let prefix = join(&comps[..=i]);
            match self.try_open_in_root(&prefix, dirflags) {
                Ok(fd) => cur = fd,
                Err(rustix::io::Errno::NOENT) => {
                    match rustix::fs::mkdirat(
                        &cur,
                        OsStr::from_bytes(comps[i]),
                        Mode::from_raw_mode(0o755),
                    ) {
                        Ok(()) => cur = self.open_in_root(&prefix, dirflags)?,
                        Err(rustix::io::Errno::EXIST) => {
                            // Something that is not a directory we can reach: a dangling or
                            // escaping symlink. Refuse rather than create its target.
                            return Err(OciError::UnsafePath {
                                path: prefix,
                                reason: "parent is a symlink that does not resolve to a directory inside the layer".into(),
                            });
                        }
                        Err(e) => return Err(self.err("create directory", &prefix)(e)),
                    }
                }
                Err(e) => return Err(self.err("open directory", &prefix)(e)),
            }
        }
        Ok(cur)
    }

    /// Remove whatever is at `name` in `parent` (recursively for directories). When `keep_dir`
    /// and the existing object is a directory, it is kept and `true` is returned.
    fn clear(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        rel: &str,
        keep_dir: bool,
    ) -> Result<bool, OciError> {
        let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Ok(false),
            Err(e) => return Err(self.err("stat", rel)(e)),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            if keep_dir {
                return Ok(true);
            }
            rbuild_fsroot::remove_all_at(parent, name).map_err(|source| OciError::Io {
                op: "remove".to_string(),
                path: self.dest.join(rel),
                source,
            })?;
        } else {
            rustix::fs::unlinkat(parent, name, AtFlags::empty())
                .map_err(self.err("remove", rel))?;
        }
        Ok(false)
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), OciError> {
        let kind = entry.header().entry_type();
        let shown = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let unsupported = |reason: &str| OciError::UnsupportedEntry {
            path: shown.clone(),
            reason: reason.to_string(),
        };
        match kind {
            tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::Directory
            | tar::EntryType::Symlink
            | tar::EntryType::Link
            | tar::EntryType::Char
            | tar::EntryType::Block
            | tar::EntryType::Fifo => {}
            // A pax global header carries defaults for later entries that no layer writer
            // uses for anything but comments; GNU tar and Go ignore it the same way.
            tar::EntryType::XGlobalHeader => return Ok(()),
            tar::EntryType::GNUSparse => {
                return Err(unsupported(
                    "GNU sparse entries (tar --sparse in the old GNU format) are not supported, \
                     as in BuildKit; recreate the archive with `tar --sparse --format=pax` or \
                     without --sparse",
                ))
            }
            other => {
                return Err(unsupported(&format!(
                    "unsupported tar entry type {:?} (byte {:?}); only files, directories, \
                     links, devices and FIFOs can be extracted",
                    other,
                    char::from(other.as_byte())
                )))
            }
        }
        let meta = self.entry_meta(&mut entry)?;
        let raw_path = match meta.sparse.as_ref().and_then(|sp| sp.name.clone()) {
            Some(n) => n,
            None => entry.path_bytes().into_owned(),
        };
        let comps = clean_components(&raw_path)?;
        let Some((name, parent_comps)) = comps.split_last() else {
            return Ok(()); // the layer root itself: its metadata is not applied
        };
        let rel = join(&comps);
        let name_os = OsStr::from_bytes(name);

        // Whiteouts.
        if self.whiteouts && *name == OPAQUE_MARKER.as_bytes() {
            let dir = self.ensure_dir(parent_comps)?;
            rustix::fs::fsetxattr(
                &dir,
                rbuild_cache::overlay::opaque_xattr(),
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(self.err("set opaque xattr on", &join(parent_comps)))?;
            return Ok(());
        }
        if let Some(target) = name
            .strip_prefix(WHITEOUT_PREFIX.as_bytes())
            .filter(|_| self.whiteouts)
        {
            if target.is_empty() || target == b"." || target == b".." || target.contains(&b'/') {
                return Err(OciError::UnsafePath {
                    path: String::from_utf8_lossy(&raw_path).into_owned(),
                    reason: "invalid whiteout name".into(),
                });
            }
            let parent = self.ensure_dir(parent_comps)?;
            let target = OsStr::from_bytes(target);
            self.clear(&parent, target, &rel, false)?;
            rbuild_cache::overlay::make_whiteout_at(&parent, target)
                .map_err(OciError::io("create whiteout", self.dest.join(&rel)))?;
            let mtime = entry.header().mtime().unwrap_or(0) as i64;
            rustix::fs::utimensat(
                &parent,
                target,
                &times((mtime, 0)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(self.err("set mtime", &rel))?;
            return Ok(());
        }

        if meta.sparse.is_some() && kind != tar::EntryType::Regular {
            return Err(unsupported(
                "GNU.sparse records on an entry that is not a file",
            ));
        }
        let header = entry.header().clone();
        let parent = self.ensure_dir(parent_comps)?;
        match kind {
            tar::EntryType::Directory => {
                let existed = self.clear(&parent, name_os, &rel, true)?;
                if !existed {
                    rustix::fs::mkdirat(&parent, name_os, Mode::from_raw_mode(0o700))
                        .map_err(self.err("create directory", &rel))?;
                }
                let fd = rustix::fs::openat(
                    &parent,
                    name_os,
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(self.err("open directory", &rel))?;
                self.set_meta_fd(fd.as_fd(), &meta, &rel, false)?;
                self.dir_times.push((rel, meta.mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.clear(&parent, name_os, &rel, false)?;
                let fd = rustix::fs::openat(
                    &parent,
                    name_os,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(self.err("create file", &rel))?;
                let mut file = File::from(fd);
                match &meta.sparse {
                    Some(sp) => self.write_sparse(&mut entry, &mut file, sp, &rel)?,
                    None => {
                        io::copy(&mut entry, &mut file)
                            .map_err(OciError::io("write", self.dest.join(&rel)))?;
                    }
                }
                self.set_meta_fd(file.as_fd(), &meta, &rel, true)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .ok_or_else(|| OciError::UnsafePath {
                        path: rel.clone(),
                        reason: "symlink without target".into(),
                    })?;
                self.clear(&parent, name_os, &rel, false)?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent, name_os)
                    .map_err(self.err("create symlink", &rel))?;
                self.set_meta_at(&parent, name_os, &meta, &rel)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .ok_or_else(|| OciError::UnsafePath {
                        path: rel.clone(),
                        reason: "hardlink without target".into(),
                    })?;
                let tcomps = clean_components(&target)?;
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(OciError::UnsafePath {
                        path: rel,
                        reason: "hardlink to the layer root".into(),
                    });
                };
                let trel = join(tparent);
                let tdir = self.open_in_root(&trel, OFlags::DIRECTORY | OFlags::RDONLY)?;
                self.clear(&parent, name_os, &rel, false)?;
                rustix::fs::linkat(
                    &tdir,
                    OsStr::from_bytes(tname),
                    &parent,
                    name_os,
                    AtFlags::empty(),
                )
                .map_err(self.err("create hardlink", &rel))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (ft, dev) = match kind {
                    tar::EntryType::Char => (FileType::CharacterDevice, true),
                    tar::EntryType::Block => (FileType::BlockDevice, true),
                    _ => (FileType::Fifo, false),
                };
                let rdev = if dev {
                    let maj = header.device_major().ok().flatten().unwrap_or(0);
                    let min = header.device_minor().ok().flatten().unwrap_or(0);
                    rustix::fs::makedev(maj, min)
                } else {
                    0
                };
                self.clear(&parent, name_os, &rel, false)?;
                match rustix::fs::mknodat(
                    &parent,
                    name_os,
                    ft,
                    Mode::from_raw_mode(meta.mode & 0o7777),
                    rdev,
                ) {
                    Ok(()) => {}
                    // No CAP_MKNOD here (rootless, an unprivileged container): keep the node
                    // as a marker file that layer tars turn back into the device.
                    Err(rustix::io::Errno::PERM) if dev => {
                        self.device_marker(&parent, name_os, &header, &meta, &rel)?;
                        return Ok(());
                    }
                    Err(e) => return Err(self.err("create device node", &rel)(e)),
                }
                self.set_meta_at(&parent, name_os, &meta, &rel)?;
                let _ = rustix::fs::chmodat(
                    &parent,
                    name_os,
                    Mode::from_raw_mode(meta.mode & 0o7777),
                    AtFlags::empty(),
                );
            }
            // Every other kind was refused or skipped above.
            _ => {}
        }
        Ok(())
    }

    /// Keep a device node this process may not create as an empty mode-0 file carrying
    /// [`rbuild_cache::overlay::DEVICE_XATTR`].
    fn device_marker(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        header: &tar::Header,
        meta: &EntryMeta,
        rel: &str,
    ) -> Result<(), OciError> {
        let is_char = header.entry_type() == tar::EntryType::Char;
        let maj = header.device_major().ok().flatten().unwrap_or(0);
        let min = header.device_minor().ok().flatten().unwrap_or(0);
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(self.err("create device marker", rel))?;
        let value = rbuild_cache::overlay::device_marker(is_char, maj, min, meta.mode);
        rustix::fs::fsetxattr(
            &fd,
            rbuild_cache::overlay::DEVICE_XATTR,
            value.as_bytes(),
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(self.err("mark device node", rel))?;
        let plain = EntryMeta {
            mode: 0,
            uid: meta.uid,
            gid: meta.gid,
            mtime: meta.mtime,
            xattrs: Vec::new(),
            sparse: None,
        };
        self.set_meta_fd(fd.as_fd(), &plain, rel, true)
    }

    /// Write a PAX sparse file's data chunks at their offsets (holes stay holes) and give the
    /// file its real size. The map must be ordered, inside the size, and account for exactly
    /// the entry's data.
    fn write_sparse<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        file: &mut File,
        sp: &Sparse,
        rel: &str,
    ) -> Result<(), OciError> {
        use std::io::{Seek, SeekFrom};
        let bad = |why: &str| OciError::UnsupportedEntry {
            path: rel.to_string(),
            reason: format!("invalid PAX sparse file: {why}"),
        };
        let version = (sp.major.as_deref(), sp.minor.as_deref());
        match version {
            (Some("1"), Some("0")) | (Some("0"), Some("0")) | (Some("0"), Some("1")) => {}
            (None, None) => {}
            _ => return Err(bad("unknown GNU.sparse format version")),
        }
        let size = sp
            .size
            .ok_or_else(|| bad("no GNU.sparse.size or realsize"))?;
        let mut data_left = entry.size();
        let map: Vec<u64> = if sp.map_in_data {
            let (map, used) = read_sparse_map(entry).map_err(|e| bad(&e))?;
            data_left = data_left
                .checked_sub(used)
                .ok_or_else(|| bad("map longer than the entry"))?;
            map
        } else {
            sp.map.clone()
        };
        if map.len() % 2 != 0 {
            return Err(bad("odd number of map values"));
        }
        let mut cur = 0u64;
        let mut total = 0u64;
        for pair in map.chunks(2) {
            let (off, len) = (pair[0], pair[1]);
            let end = off.checked_add(len).ok_or_else(|| bad("chunk overflows"))?;
            if off < cur || end > size {
                return Err(bad("chunks out of order, overlapping or beyond the size"));
            }
            cur = end;
            total = total
                .checked_add(len)
                .ok_or_else(|| bad("chunk overflows"))?;
        }
        if total != data_left {
            return Err(bad("the chunks do not account for the entry's data"));
        }
        let path = self.dest.join(rel);
        for pair in map.chunks(2) {
            let (off, len) = (pair[0], pair[1]);
            if len == 0 {
                continue;
            }
            file.seek(SeekFrom::Start(off))
                .map_err(OciError::io("seek in", &path))?;
            let n = io::copy(&mut (&mut *entry).take(len), file)
                .map_err(OciError::io("write", &path))?;
            if n != len {
                return Err(bad("truncated data"));
            }
        }
        file.set_len(size)
            .map_err(OciError::io("set size of", &path))?;
        Ok(())
    }

    fn entry_meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> Result<EntryMeta, OciError> {
        let h = entry.header();
        let path_str = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let bad = |what: &str| OciError::UnsafePath {
            path: path_str.clone(),
            reason: format!("invalid {what} in header"),
        };
        let mut meta = EntryMeta {
            mode: h.mode().map_err(|_| bad("mode"))?,
            uid: h.uid().map_err(|_| bad("uid"))?,
            gid: h.gid().map_err(|_| bad("gid"))?,
            mtime: (h.mtime().map_err(|_| bad("mtime"))? as i64, 0),
            xattrs: Vec::new(),
            sparse: None,
        };
        let mut sparse = Sparse::default();
        let mut is_sparse = false;
        if let Some(exts) = entry
            .pax_extensions()
            .map_err(OciError::io("read PAX header of", &path_str))?
        {
            for ext in exts {
                let ext = ext.map_err(OciError::io("read PAX header of", &path_str))?;
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                if let Some(x) = key.strip_prefix(PAX_XATTR_PREFIX) {
                    if !rbuild_cache::overlay::is_store_xattr(x.as_bytes()) {
                        meta.xattrs.push((OsString::from(x), value.to_vec()));
                    }
                } else {
                    let s = String::from_utf8_lossy(value);
                    match key {
                        "uid" => meta.uid = s.trim().parse().map_err(|_| bad("PAX uid"))?,
                        "gid" => meta.gid = s.trim().parse().map_err(|_| bad("PAX gid"))?,
                        "mtime" => {
                            meta.mtime = parse_pax_time(s.trim()).ok_or_else(|| bad("PAX mtime"))?
                        }
                        k if k.starts_with("GNU.sparse.") => {
                            is_sparse = true;
                            let num = || s.trim().parse::<u64>().map_err(|_| bad(k));
                            match k {
                                "GNU.sparse.name" => sparse.name = Some(value.to_vec()),
                                "GNU.sparse.size" | "GNU.sparse.realsize" => {
                                    sparse.size = Some(num()?)
                                }
                                "GNU.sparse.major" => sparse.major = Some(s.trim().to_string()),
                                "GNU.sparse.minor" => sparse.minor = Some(s.trim().to_string()),
                                "GNU.sparse.offset" | "GNU.sparse.numbytes" => {
                                    sparse.map.push(num()?)
                                }
                                "GNU.sparse.map" => {
                                    for v in s.trim().split(',').filter(|v| !v.is_empty()) {
                                        sparse
                                            .map
                                            .push(v.parse().map_err(|_| bad("GNU.sparse.map"))?);
                                    }
                                }
                                _ => {}
                            }
                            if sparse.map.len() > 2 * MAX_SPARSE_CHUNKS {
                                return Err(bad("GNU.sparse map (too many chunks)"));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        if let Some((uid, gid)) = self.owner {
            meta.uid = uid.into();
            meta.gid = gid.into();
        }
        if is_sparse {
            sparse.map_in_data =
                sparse.major.as_deref() == Some("1") && sparse.minor.as_deref() == Some("0");
            meta.sparse = Some(sparse);
        }
        Ok(meta)
    }

    fn set_meta_fd(
        &self,
        fd: BorrowedFd<'_>,
        meta: &EntryMeta,
        rel: &str,
        with_times: bool,
    ) -> Result<(), OciError> {
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(meta.uid as u32)),
            Some(rustix::fs::Gid::from_raw(meta.gid as u32)),
        )
        .map_err(|e| self.chown_err(e, meta, rel))?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode & 0o7777))
            .map_err(self.err("chmod", rel))?;
        for (k, v) in &meta.xattrs {
            match rustix::fs::fsetxattr(fd, k.as_os_str(), v, rustix::fs::XattrFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => {}
                Err(e) => return Err(self.err("set xattr on", rel)(e)),
            }
        }
        if with_times {
            rustix::fs::futimens(fd, &times(meta.mtime)).map_err(self.err("set mtime", rel))?;
        }
        Ok(())
    }

    fn set_meta_at(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        meta: &EntryMeta,
        rel: &str,
    ) -> Result<(), OciError> {
        rustix::fs::chownat(
            parent,
            name,
            Some(rustix::fs::Uid::from_raw(meta.uid as u32)),
            Some(rustix::fs::Gid::from_raw(meta.gid as u32)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.chown_err(e, meta, rel))?;
        rustix::fs::utimensat(parent, name, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(self.err("set mtime", rel))?;
        Ok(())
    }
}

/// Read a PAX 1.0 sparse map from the start of an entry's data: decimal numbers, each ending in
/// a newline (the count, then offset/length pairs), padded to a 512-byte block. Returns the
/// pairs and the bytes the map took.
fn read_sparse_map(r: &mut impl Read) -> Result<(Vec<u64>, u64), String> {
    let mut block = [0u8; 512];
    let mut used = 0u64;
    let mut tokens: Vec<u64> = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let mut want: Option<usize> = None;
    loop {
        read_full(r, &mut block)
            .and_then(|n| {
                if n == 512 {
                    Ok(())
                } else {
                    Err(io::Error::from(io::ErrorKind::UnexpectedEof))
                }
            })
            .map_err(|_| "truncated sparse map".to_string())?;
        used += 512;
        for &b in &block {
            if want.is_some_and(|w| tokens.len() >= w) {
                break;
            }
            if b == b'\n' {
                let text = std::str::from_utf8(&cur).map_err(|_| "bad map number")?;
                let v: u64 = text.parse().map_err(|_| "bad map number")?;
                cur.clear();
                if want.is_none() {
                    let n = usize::try_from(v).map_err(|_| "too many chunks")?;
                    if n > MAX_SPARSE_CHUNKS {
                        return Err("too many chunks".into());
                    }
                    want = Some(2 * n);
                } else {
                    tokens.push(v);
                }
            } else if b.is_ascii_digit() && cur.len() < 20 {
                cur.push(b);
            } else {
                return Err("bad map number".into());
            }
        }
        if want.is_some_and(|w| tokens.len() >= w) {
            return Ok((tokens, used));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// write
// ---------------------------------------------------------------------------------------------

/// Options for [`write_layer`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerOpts {
    /// Clamp every mtime to at most this (SOURCE_DATE_EPOCH).
    pub source_date_epoch: Option<i64>,
}

/// Write a deterministic, uncompressed layer tar of the overlay upper directory `upper`.
pub fn write_layer(upper: &Path, out: impl Write, opts: &LayerOpts) -> Result<(), OciError> {
    let mut w = LayerWriter {
        builder: tar::Builder::new(out),
        opts: opts.clone(),
        links: HashMap::new(),
    };
    w.walk(upper, b"")?;
    w.builder
        .finish()
        .map_err(OciError::io("write layer tar of", upper))?;
    Ok(())
}

struct LayerWriter<W: Write> {
    builder: tar::Builder<W>,
    opts: LayerOpts,
    links: HashMap<(u64, u64), Vec<u8>>,
}

/// One extended attribute: (name, value).
type Xattr = (Vec<u8>, Vec<u8>);

/// xattrs of `path` (not following symlinks), sorted by name.
fn list_xattrs(path: &Path) -> Result<Vec<Xattr>, OciError> {
    let errmap = |op: &'static str| move |e: rustix::io::Errno| OciError::io(op, path)(e.into());
    let size = match rustix::fs::llistxattr_query(path) {
        Ok(n) => n,
        Err(rustix::io::Errno::OPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(errmap("list xattrs of")(e)),
    };
    if size == 0 {
        return Ok(Vec::new());
    }
    let mut names = vec![0u8; size];
    let n = rustix::fs::llistxattr(path, &mut names[..]).map_err(errmap("list xattrs of"))?;
    names.truncate(n);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name_os = OsStr::from_bytes(name);
        let vlen = match rustix::fs::lgetxattr_query(path, name_os) {
            Ok(n) => n,
            Err(rustix::io::Errno::NODATA) => continue,
            Err(e) => return Err(errmap("read xattr of")(e)),
        };
        let mut val = vec![0u8; vlen];
        let got =
            rustix::fs::lgetxattr(path, name_os, &mut val[..]).map_err(errmap("read xattr of"))?;
        val.truncate(got);
        out.push((name.to_vec(), val));
    }
    out.sort();
    Ok(out)
}

/// The xattrs of `path` (not following symlinks) that are content, not rbuild's store
/// markers (overlay xattrs, `user.rbuild.*`), sorted by name.
pub fn user_xattrs(path: &Path) -> Result<Vec<(OsString, Vec<u8>)>, OciError> {
    Ok(list_xattrs(path)?
        .into_iter()
        .filter(|(k, _)| !rbuild_cache::overlay::is_store_xattr(k))
        .map(|(k, v)| (OsString::from_vec(k), v))
        .collect())
}

pub use rbuild_cache::overlay::device_marker_of;

/// One PAX record: "<len> <key>=<value>\n", where len counts the whole record.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = base + base.to_string().len();
    if len.to_string().len() != base.to_string().len() {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// A reader yielding exactly `len` bytes: the file's, then zeros if it shrank meanwhile.
struct ExactLen<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for ExactLen<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        let n = if n == 0 {
            buf[..max].fill(0);
            max
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

fn set_field(field: &mut [u8], value: &[u8]) {
    field.fill(0);
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

impl<W: Write> LayerWriter<W> {
    fn clamp(&self, mtime: i64) -> u64 {
        let t = match self.opts.source_date_epoch {
            Some(epoch) if mtime > epoch => epoch,
            _ => mtime,
        };
        t.max(0) as u64
    }

    fn one(&mut self, path: &Path, rel: &[u8], name: &OsStr) -> Result<(), OciError> {
        let md = std::fs::symlink_metadata(path).map_err(OciError::io("stat", path))?;
        let ft = md.file_type();
        let mtime = self.clamp(md.mtime());
        let xattrs: Vec<Xattr> = list_xattrs(path)?;
        let mut header = tar::Header::new_ustar();
        header.set_mode(md.mode() & 0o7777);
        header.set_uid(md.uid() as u64);
        header.set_gid(md.gid() as u64);
        header.set_mtime(mtime);
        header.set_size(0);

        if rbuild_cache::overlay::is_whiteout(path, &md) {
            // overlay whiteout (or its marker) → .wh.NAME
            let mut wrel = match rel.iter().rposition(|b| *b == b'/') {
                Some(i) => rel[..=i].to_vec(),
                None => Vec::new(),
            };
            wrel.extend_from_slice(WHITEOUT_PREFIX.as_bytes());
            wrel.extend_from_slice(name.as_bytes());
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(mtime);
            h.set_size(0);
            return self.emit(h, &wrel, None, &[], io::empty(), path);
        }
        let user_xattrs: Vec<Xattr> = xattrs
            .iter()
            .filter(|(k, _)| !rbuild_cache::overlay::is_store_xattr(k))
            .cloned()
            .collect();
        // A device node kept as a marker file (unpacked without CAP_MKNOD): the device again.
        let marker = xattrs
            .iter()
            .find(|(k, _)| k == rbuild_cache::overlay::DEVICE_XATTR.as_bytes())
            .and_then(|(_, v)| rbuild_cache::overlay::parse_device_marker(v))
            .filter(|_| ft.is_file() && md.len() == 0);
        if let Some((is_char, major, minor, mode)) = marker {
            header.set_entry_type(if is_char {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            // A chmod after the unpack (the marker is made mode 0) is the mode that counts.
            let own = md.mode() & 0o7777;
            header.set_mode(if own != 0 { own } else { mode });
            header
                .set_device_major(major)
                .map_err(OciError::io("device number of", path))?;
            header
                .set_device_minor(minor)
                .map_err(OciError::io("device number of", path))?;
            return self.emit(header, rel, None, &user_xattrs, io::empty(), path);
        }
        if ft.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            let mut drel = rel.to_vec();
            drel.push(b'/');
            self.emit(header.clone(), &drel, None, &user_xattrs, io::empty(), path)?;
            let opaque = xattrs
                .iter()
                .any(|(k, v)| k == rbuild_cache::overlay::opaque_xattr().as_bytes() && v == b"y");
            if opaque {
                let mut orel = drel.clone();
                orel.extend_from_slice(OPAQUE_MARKER.as_bytes());
                let mut h = header;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                self.emit(h, &orel, None, &[], io::empty(), path)?;
            }
            return self.walk(path, rel);
        }
        if !ft.is_dir() && md.nlink() > 1 {
            let key = (md.dev(), md.ino());
            if let Some(first) = self.links.get(&key).cloned() {
                header.set_entry_type(tar::EntryType::Link);
                return self.emit(header, rel, Some(&first), &user_xattrs, io::empty(), path);
            }
            self.links.insert(key, rel.to_vec());
        }
        if ft.is_file() {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(md.len());
            let f = rustix::fs::open(
                path,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| OciError::io("open", path)(e.into()))?;
            let reader = ExactLen {
                inner: File::from(f),
                left: md.len(),
            };
            self.emit(header, rel, None, &user_xattrs, reader, path)
        } else if ft.is_symlink() {
            header.set_entry_type(tar::EntryType::Symlink);
            let target = std::fs::read_link(path).map_err(OciError::io("read symlink", path))?;
            let target = target.into_os_string().into_vec();
            self.emit(header, rel, Some(&target), &user_xattrs, io::empty(), path)
        } else if ft.is_char_device() || ft.is_block_device() {
            header.set_entry_type(if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            let rdev = md.rdev();
            header
                .set_device_major(rustix::fs::major(rdev))
                .map_err(OciError::io("device number of", path))?;
            header
                .set_device_minor(rustix::fs::minor(rdev))
                .map_err(OciError::io("device number of", path))?;
            self.emit(header, rel, None, &user_xattrs, io::empty(), path)
        } else if ft.is_fifo() {
            header.set_entry_type(tar::EntryType::Fifo);
            self.emit(header, rel, None, &user_xattrs, io::empty(), path)
        } else {
            Ok(()) // sockets are not representable in layers
        }
    }

    fn walk(&mut self, dir: &Path, rel: &[u8]) -> Result<(), OciError> {
        let mut names: Vec<OsString> = std::fs::read_dir(dir)
            .map_err(OciError::io("read directory", dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(OciError::io("read directory", dir))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let mut child = rel.to_vec();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(name.as_bytes());
            self.one(&dir.join(&name), &child, &name)?;
        }
        Ok(())
    }

    /// Append one entry: a PAX header first when needed (long path/link, xattrs), then the
    /// ustar header with the (possibly truncated) names, then the data.
    fn emit(
        &mut self,
        mut header: tar::Header,
        rel: &[u8],
        link: Option<&[u8]>,
        xattrs: &[Xattr],
        data: impl Read,
        src: &Path,
    ) -> Result<(), OciError> {
        let mut pax = Vec::new();
        if rel.len() > 100 {
            pax_record(&mut pax, b"path", rel);
        }
        if let Some(l) = link {
            if l.len() > 100 {
                pax_record(&mut pax, b"linkpath", l);
            }
        }
        for (k, v) in xattrs {
            let mut key = PAX_XATTR_PREFIX.as_bytes().to_vec();
            key.extend_from_slice(k);
            pax_record(&mut pax, &key, v);
        }
        if !pax.is_empty() {
            let mut ph = tar::Header::new_ustar();
            ph.set_entry_type(tar::EntryType::XHeader);
            let base = rel
                .rsplit(|b| *b == b'/')
                .find(|c| !c.is_empty())
                .unwrap_or(b"entry");
            let mut pname = b"PaxHeaders/".to_vec();
            pname.extend_from_slice(&base[..base.len().min(80)]);
            set_field(&mut ph.as_old_mut().name, &pname);
            ph.set_mode(0o644);
            ph.set_uid(0);
            ph.set_gid(0);
            ph.set_mtime(header.mtime().unwrap_or(0));
            ph.set_size(pax.len() as u64);
            ph.set_cksum();
            self.builder
                .append(&ph, &pax[..])
                .map_err(OciError::io("write layer entry for", src))?;
        }
        set_field(&mut header.as_old_mut().name, &rel[..rel.len().min(100)]);
        if let Some(l) = link {
            set_field(&mut header.as_old_mut().linkname, &l[..l.len().min(100)]);
        }
        header.set_cksum();
        self.builder
            .append(&header, data)
            .map_err(OciError::io("write layer entry for", src))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_are_self_consistent() {
        for (k, vlen) in [
            ("path", 1usize),
            ("path", 90),
            ("path", 93),
            ("path", 994),
            ("linkpath", 5000),
        ] {
            let v = vec![b'x'; vlen];
            let mut out = Vec::new();
            pax_record(&mut out, k.as_bytes(), &v);
            let sp = out.iter().position(|b| *b == b' ').unwrap_or(0);
            let n: usize = std::str::from_utf8(&out[..sp])
                .unwrap_or("0")
                .parse()
                .unwrap_or(0);
            assert_eq!(n, out.len(), "{k} {vlen}");
        }
    }

    #[test]
    fn component_cleaning() {
        assert_eq!(
            clean_components(b"/a/./b//c/").ok(),
            Some(vec![&b"a"[..], b"b", b"c"])
        );
        assert!(clean_components(b"a/../b").is_err());
        assert_eq!(clean_components(b"./").ok(), Some(vec![]));
        assert_eq!(
            parse_pax_time("1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time("12"), Some((12, 0)));
    }
}
