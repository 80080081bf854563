//! Build-context hashing and selection.
//!
//! * [`ExcludeMatcher`]: `.dockerignore` with moby/patternmatcher semantics.
//! * [`checksum`]: BuildKit-style content checksum of what a [`Selector`] selects.
//! * [`expand`]: the host paths a selector matches (for the copier).
//! * [`glob_match`]: Go `filepath.Match` for one path segment.
//!
//! # Checksum format (v1)
//!
//! Per entry (file, symlink, device, fifo, and a directory's own header) the digest is
//! `sha256("rbuild-ctx-v1\0" ‖ type ‖ mode ‖ size ‖ symlink target ‖ rdev ‖ [uid ‖ gid] ‖ xattrs ‖ content)`,
//! where `mode = st_mode & (S_IFMT | 0o7777)` (symlinks `| 0o777`), size is 0 for non-regular
//! files, and xattrs are sorted, excluding `system.*` and `security.*` other than
//! `security.capability`. The entry's own name is not part of it; never mtime, uid or gid
//! (context files are copied as 0:0, as in BuildKit). [`checksum_tree`] hashes a stage's
//! files, which keep their owners: there uid and gid are in (the bracketed fields), the
//! `trusted.overlay.*`/`user.overlay.*` xattrs are not.
//!
//! A directory's digest is `sha256("dir\0" ‖ header digest ‖ for each included child in byte
//! order: name length ‖ name ‖ child digest)`, so names count and the tree is covered
//! recursively. The context root itself has a fixed header (its mode is an accident of the
//! checkout and is not copied). A non-wildcard selection's digest is the digest of the selected entry; a
//! wildcard selection's digest is `sha256("wildcard\0" ‖ for each match: rel path ‖ NUL ‖
//! digest)`, so renaming a matched file changes it.
//!
//! # Stat cache
//!
//! Entry digests are kept in the `stat_cache` table keyed by absolute host path and validated by
//! (dev, ino, size, mtime ns, ctime ns, mode). Because ctime changes on every content, mode and
//! xattr change, a hit is safe; to avoid the "racy clean" problem (a write within the timestamp
//! granularity right after hashing), a row is trusted only if the file's mtime and ctime were at
//! least [`RACY_WINDOW_NS`] older than the moment it was hashed. Rows of the selected subtree are
//! loaded with one range query and all updates written in one transaction.

mod pattern;

pub use pattern::{glob_match, ExcludeMatcher};

use crate::error::{CacheError, Result};
use crate::store::Store;
use crate::util;
use pattern::{clean_rel, has_meta};
use rbuild_fsroot::Root;
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A stat-cache row is trusted only when the file was last changed at least this long before it
/// was hashed (larger than any kernel timestamp granularity we expect).
pub const RACY_WINDOW_NS: i64 = 50_000_000;

/// What a COPY/ADD source or a bind mount selects in the build context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// Path inside the context, absolute (`/`, `/src/app`, `/*.txt`). `..` is clamped at the root.
    pub path: String,
    /// Follow a symlink named by the last component (intermediate ones are always followed,
    /// inside the context).
    pub follow_symlinks: bool,
    /// Treat `*`, `?`, `[…]`, `\` in path segments as Go `filepath.Match` wildcards.
    pub allow_wildcard: bool,
}

impl Selector {
    /// A plain selector (no wildcard, symlinks not followed at the last component).
    pub fn new(path: impl Into<String>) -> Self {
        Selector {
            path: path.into(),
            follow_symlinks: false,
            allow_wildcard: false,
        }
    }
}

/// Result of [`checksum`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// `sha256:<hex>` of the selection.
    pub digest: String,
    /// Every included entry (relative to the context root, after symlink resolution) with its
    /// entry digest, in walk order. Directories appear with a trailing `/` (the root as `./`)
    /// and their header digest. Useful to explain a cache miss and as the copier's file list.
    pub files: Vec<(String, String)>,
    /// How many regular files had to be read (0 when the stat cache answered everything).
    pub files_read: u64,
}

#[derive(Debug, Clone)]
struct Row {
    dev: u64,
    ino: u64,
    size: i64,
    mtime_ns: i64,
    ctime_ns: i64,
    mode: u32,
    hashed_at_ns: i64,
    digest: [u8; 32],
}

/// `lstat` fields the walk uses (from an fd-relative `statat`/`fstat`, never a path).
#[derive(Debug, Clone, Copy)]
struct Meta {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    mode: u32,
    rdev: u64,
    uid: u32,
    gid: u32,
}

impl Meta {
    #[allow(clippy::unnecessary_cast)]
    fn from_stat(st: &rustix::fs::Stat) -> Meta {
        Meta {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            size: st.st_size.max(0) as u64,
            mtime_ns: (st.st_mtime as i64) * 1_000_000_000 + st.st_mtime_nsec as i64,
            ctime_ns: (st.st_ctime as i64) * 1_000_000_000 + st.st_ctime_nsec as i64,
            mode: st.st_mode as u32,
            rdev: st.st_rdev as u64,
            uid: st.st_uid,
            gid: st.st_gid,
        }
    }

    fn file_type(&self) -> rustix::fs::FileType {
        rustix::fs::FileType::from_raw_mode(self.mode as _)
    }

    fn is_dir(&self) -> bool {
        self.file_type() == rustix::fs::FileType::Directory
    }
}

impl Row {
    fn from_md(md: &Meta, hashed_at_ns: i64, digest: [u8; 32]) -> Row {
        Row {
            dev: md.dev,
            ino: md.ino,
            size: md.size as i64,
            mtime_ns: md.mtime_ns,
            ctime_ns: md.ctime_ns,
            mode: md.mode,
            hashed_at_ns,
            digest,
        }
    }

    fn valid_for(&self, md: &Meta) -> bool {
        let (m, c) = (md.mtime_ns, md.ctime_ns);
        self.dev == md.dev
            && self.ino == md.ino
            && self.size == md.size as i64
            && self.mtime_ns == m
            && self.ctime_ns == c
            && self.mode == md.mode
            && m.max(c) + RACY_WINDOW_NS < self.hashed_at_ns
    }
}

/// A small, fast, non-cryptographic hasher for path keys (FxHash's multiply-rotate), so the
/// warm path does not pay SipHash on 10k keys. Keys are local paths, not attacker-chosen in any
/// way that matters for a short-lived map.
#[derive(Default, Clone, Copy)]
struct FxBuild;

#[derive(Default)]
struct FxHasher(u64);

impl std::hash::BuildHasher for FxBuild {
    type Hasher = FxHasher;
    fn build_hasher(&self) -> FxHasher {
        FxHasher(0)
    }
}

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

struct Walker<'a> {
    /// The stat cache's store; `None` for an immutable tree ([`checksum_tree`]).
    store: Option<&'a Store>,
    /// Owners are part of each entry's digest ([`checksum_tree`]: a stage's files keep
    /// theirs when copied or mounted).
    owners: bool,
    exclude: &'a ExcludeMatcher,
    /// Loaded rows of the selected subtree, with a "seen" flag.
    cache: HashMap<Vec<u8>, (Row, bool), FxBuild>,
    /// Host path prefix covered by `cache` (rows outside are looked up one by one).
    prefix: Vec<u8>,
    updates: Vec<(Vec<u8>, Row)>,
    /// Directories whose full listing was read (rows of vanished children can be pruned).
    listed: std::collections::HashSet<Vec<u8>>,
    files: Vec<(String, String)>,
    files_read: u64,
    buf: Vec<u8>,
}

fn under(prefix: &[u8], path: &[u8]) -> bool {
    path == prefix
        || (path.len() > prefix.len()
            && path.starts_with(prefix)
            && (prefix.ends_with(b"/") || path[prefix.len()] == b'/'))
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Vec<u8>, Row)> {
    let digest: Vec<u8> = r.get(8)?;
    let mut d = [0u8; 32];
    if digest.len() == 32 {
        d.copy_from_slice(&digest);
    }
    Ok((
        r.get(0)?,
        Row {
            dev: r.get::<_, i64>(1)? as u64,
            ino: r.get::<_, i64>(2)? as u64,
            size: r.get(3)?,
            mtime_ns: r.get(4)?,
            ctime_ns: r.get(5)?,
            mode: r.get::<_, i64>(6)? as u32,
            // A malformed digest can never be trusted: make the row look racy.
            hashed_at_ns: if digest.len() == 32 {
                r.get(7)?
            } else {
                i64::MIN
            },
            digest: d,
        },
    ))
}

const ROW_COLS: &str = "path, dev, ino, size, mtime_ns, ctime_ns, mode, hashed_at_ns, digest";

impl<'a> Walker<'a> {
    fn new(store: Option<&'a Store>, exclude: &'a ExcludeMatcher, base: &Path) -> Result<Self> {
        let prefix = base.as_os_str().as_bytes().to_vec();
        // [prefix, prefix + "0") covers prefix itself and everything under prefix + "/"
        // ('0' == '/' + 1), plus a few siblings like "prefix-x" that are loaded but harmless.
        let mut hi = prefix.clone();
        hi.push(b'0');
        let mut cache = HashMap::with_hasher(FxBuild);
        if let Some(store) = store {
            let conn = store.db();
            let mut st = conn
                .prepare_cached(&format!(
                    "SELECT {ROW_COLS} FROM stat_cache WHERE path >= ?1 AND path < ?2"
                ))
                .map_err(|e| store.db_err("load stat cache", e))?;
            let rows = st
                .query_map(params![prefix, hi], read_row)
                .map_err(|e| store.db_err("load stat cache", e))?;
            for r in rows {
                let (p, row) = r.map_err(|e| store.db_err("load stat cache", e))?;
                cache.insert(p, (row, false));
            }
        }
        Ok(Walker {
            store,
            owners: store.is_none(),
            exclude,
            cache,
            prefix,
            updates: Vec::new(),
            listed: std::collections::HashSet::new(),
            files: Vec::new(),
            files_read: 0,
            buf: vec![0u8; 256 * 1024],
        })
    }

    fn lookup(&mut self, key: &[u8], md: &Meta) -> Result<Option<[u8; 32]>> {
        if let Some((row, seen)) = self.cache.get_mut(key) {
            *seen = true;
            return Ok(row.valid_for(md).then_some(row.digest));
        }
        let Some(store) = self.store else {
            return Ok(None);
        };
        if under(&self.prefix, key) {
            return Ok(None);
        }
        let conn = store.db();
        let mut st = conn
            .prepare_cached(&format!(
                "SELECT {ROW_COLS} FROM stat_cache WHERE path = ?1"
            ))
            .map_err(|e| store.db_err("read stat cache", e))?;
        let row = st
            .query_row([key], read_row)
            .optional()
            .map_err(|e| store.db_err("read stat cache", e))?;
        Ok(row.and_then(|(_, r)| r.valid_for(md).then_some(r.digest)))
    }

    /// Digest of one entry (a directory's header only), via the stat cache. The entry is
    /// `name` in the directory `parent` (an fd: nothing is reached through a path that could
    /// have been swapped for a symlink); `host` is its path, for the stat cache and messages.
    fn entry_digest(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        host: &Path,
        md: &Meta,
    ) -> Result<[u8; 32]> {
        use rustix::fs::FileType;
        let key = host.as_os_str().as_bytes();
        if let Some(d) = self.lookup(key, md)? {
            return Ok(d);
        }
        let hashed_at = util::now_ns();
        let (kind, mut mode, size) = match md.file_type() {
            FileType::RegularFile => (b'f', md.mode, md.size),
            FileType::Directory => (b'd', md.mode, 0),
            FileType::Symlink => (b'l', md.mode | 0o777, 0),
            FileType::CharacterDevice => (b'c', md.mode, 0),
            FileType::BlockDevice => (b'b', md.mode, 0),
            FileType::Fifo => (b'p', md.mode, 0),
            _ => (b's', md.mode, 0),
        };
        mode &= libc::S_IFMT | 0o7777;
        let mut h = Sha256::new();
        h.update(b"rbuild-ctx-v1\0");
        h.update([kind]);
        h.update(mode.to_le_bytes());
        h.update(size.to_le_bytes());
        if kind == b'l' {
            let target = rustix::fs::readlinkat(parent, name, Vec::new())
                .map_err(|e| CacheError::io("readlink", host, e.into()))?;
            let t = target.as_bytes();
            h.update((t.len() as u64).to_le_bytes());
            h.update(t);
        } else {
            h.update(0u64.to_le_bytes());
        }
        let rdev = if kind == b'c' || kind == b'b' {
            md.rdev
        } else {
            0
        };
        h.update(rdev.to_le_bytes());
        if self.owners {
            h.update(md.uid.to_le_bytes());
            h.update(md.gid.to_le_bytes());
        }
        // The l*xattr calls reach `name` through the parent's fd (`/proc/self/fd/N/name`,
        // last component not followed), never through the host path.
        let mut xattrs = read_xattrs(&rbuild_fsroot::fd_path(parent).join(name), host)?;
        if self.owners {
            // A layer's own overlay bookkeeping (seen where a single layer is bound, hidden
            // by an overlay mount) is not content.
            xattrs.retain(|(n, _)| {
                !n.starts_with(b"trusted.overlay.") && !n.starts_with(b"user.overlay.")
            });
        }
        h.update((xattrs.len() as u64).to_le_bytes());
        for (name, value) in &xattrs {
            h.update((name.len() as u64).to_le_bytes());
            h.update(name);
            h.update((value.len() as u64).to_le_bytes());
            h.update(value);
        }
        let mut complete = true;
        if kind == b'f' {
            self.files_read += 1;
            let mut f = rbuild_fsroot::open_file_at(parent, name)
                .map_err(|e| CacheError::io("open", host, e))?;
            let now = rustix::fs::fstat(&f).map_err(|e| CacheError::io("stat", host, e.into()))?;
            if Meta::from_stat(&now).ino != md.ino || Meta::from_stat(&now).dev != md.dev {
                return Err(CacheError::io(
                    "read",
                    host,
                    io::Error::other("the file was replaced while the build context was read"),
                ));
            }
            let mut n_total = 0u64;
            loop {
                let n = match f.read(&mut self.buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(CacheError::io("read", host, e)),
                };
                h.update(&self.buf[..n]);
                n_total += n as u64;
            }
            // The file changed while we read it: the digest is of what we read, don't cache it.
            complete = n_total == size;
        }
        let digest: [u8; 32] = h.finalize().into();
        if complete {
            self.updates
                .push((key.to_vec(), Row::from_md(md, hashed_at, digest)));
        }
        Ok(digest)
    }

    fn push_file(&mut self, rel: String, d: &[u8; 32]) {
        self.files.push((rel, format!("sha256:{}", hex::encode(d))));
    }

    /// Digest of the resolved selection `r` (its relative path `rel`). `None` when missing
    /// or excluded.
    fn hash_path(
        &mut self,
        r: &rbuild_fsroot::Resolved,
        host: &Path,
        rel: &str,
    ) -> Result<Option<[u8; 32]>> {
        let Some(fd) = &r.fd else {
            return Ok(None);
        };
        let md = Meta::from_stat(
            &rustix::fs::fstat(fd).map_err(|e| CacheError::io("stat", host, e.into()))?,
        );
        let bits = if rel.is_empty() || self.exclude.is_empty() {
            vec![false; self.exclude.len()]
        } else {
            self.exclude.bits_for(rel)
        };
        if md.is_dir() {
            if !rel.is_empty() && self.exclude.can_skip_with(&bits, rel) {
                return Ok(None);
            }
            let dir = r
                .reopen(rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY)
                .map_err(|e| CacheError::io("open directory", host, e))?;
            self.hash_dir(r.parent.as_fd(), &r.name, &dir, host, rel, &md, &bits)
        } else {
            if !rel.is_empty() && self.exclude.decide(&bits) {
                return Ok(None);
            }
            let d = self.entry_digest(r.parent.as_fd(), &r.name, host, &md)?;
            self.push_file(rel.to_string(), &d);
            Ok(Some(d))
        }
    }

    /// Digest of the directory `dir` (an open fd; `name` in `parent`).
    #[allow(clippy::too_many_arguments)]
    fn hash_dir(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        dir: &OwnedFd,
        host: &Path,
        rel: &str,
        md: &Meta,
        bits: &[bool],
    ) -> Result<Option<[u8; 32]>> {
        let excluded_self = !rel.is_empty() && self.exclude.decide(bits);
        // The context root's own mode/xattrs depend on how the checkout was made (a temp dir is
        // 0700, a clone 0755) and are not copied by `COPY . dst`; give it a fixed header.
        let header: [u8; 32] = if rel.is_empty() {
            Sha256::digest(b"rbuild-ctx-v1\0context-root").into()
        } else {
            self.entry_digest(parent, name, host, md)?
        };
        let mark = self.files.len();
        let label = if rel.is_empty() {
            "./".to_string()
        } else {
            format!("{rel}/")
        };
        self.push_file(label, &header);
        let mut entries: Vec<(OsString, Meta)> = Vec::new();
        let names =
            rbuild_fsroot::list_dir(dir).map_err(|e| CacheError::io("read directory", host, e))?;
        for n in names {
            match rbuild_fsroot::lstat_at(dir, &n) {
                Ok(st) => entries.push((n, Meta::from_stat(&st))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(CacheError::io("stat", host.join(&n), e)),
            }
        }
        entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        self.listed.insert(host.as_os_str().as_bytes().to_vec());
        let mut h = Sha256::new();
        h.update(b"dir\0");
        h.update(header);
        let mut any = false;
        let mut child_host = host.to_path_buf();
        for (name, cmd) in entries {
            let name_s = name.to_string_lossy();
            let child_rel = if rel.is_empty() {
                name_s.into_owned()
            } else {
                format!("{rel}/{name_s}")
            };
            child_host.push(&name);
            let d = if cmd.is_dir() {
                let cbits = if self.exclude.is_empty() {
                    Vec::new()
                } else {
                    self.exclude.child_bits(bits, &child_rel)
                };
                if !self.exclude.is_empty() && self.exclude.can_skip_with(&cbits, &child_rel) {
                    None
                } else {
                    // O_NOFOLLOW: a directory swapped for a symlink since the listing fails
                    // here instead of being followed.
                    let child = rbuild_fsroot::open_dir_at(dir, &name)
                        .map_err(|e| CacheError::io("open directory", &child_host, e))?;
                    self.hash_dir(
                        dir.as_fd(),
                        &name,
                        &child,
                        &child_host,
                        &child_rel,
                        &cmd,
                        &cbits,
                    )?
                }
            } else if !self.exclude.is_empty()
                && self.exclude.excluded_given_parent(bits, &child_rel)
            {
                None
            } else {
                let d = self.entry_digest(dir.as_fd(), &name, &child_host, &cmd)?;
                self.push_file(child_rel, &d);
                Some(d)
            };
            child_host.pop();
            if let Some(d) = d {
                let nb = name.as_bytes();
                h.update((nb.len() as u64).to_le_bytes());
                h.update(nb);
                h.update(d);
                any = true;
            }
        }
        if excluded_self && !any {
            self.files.truncate(mark);
            return Ok(None);
        }
        Ok(Some(h.finalize().into()))
    }

    /// Write new rows and drop rows of vanished paths, in one transaction.
    fn flush(self) -> Result<(Vec<(String, String)>, u64)> {
        let stale: Vec<Vec<u8>> = self
            .cache
            .iter()
            .filter(|(p, (_, seen))| {
                !*seen
                    && Path::new(std::ffi::OsStr::from_bytes(p))
                        .parent()
                        .is_some_and(|d| self.listed.contains(d.as_os_str().as_bytes()))
                    && matches!(
                        fs::symlink_metadata(Path::new(std::ffi::OsStr::from_bytes(p))),
                        Err(ref e) if e.kind() == io::ErrorKind::NotFound
                    )
            })
            .map(|(p, _)| p.clone())
            .collect();
        let Some(store) = self.store else {
            return Ok((self.files, self.files_read));
        };
        if !self.updates.is_empty() || !stale.is_empty() {
            let mut conn = store.db();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| store.db_err("update stat cache", e))?;
            {
                let mut ins = tx
                    .prepare_cached(&format!(
                        "INSERT OR REPLACE INTO stat_cache({ROW_COLS}) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                    ))
                    .map_err(|e| store.db_err("update stat cache", e))?;
                for (p, r) in &self.updates {
                    ins.execute(params![
                        p,
                        r.dev as i64,
                        r.ino as i64,
                        r.size,
                        r.mtime_ns,
                        r.ctime_ns,
                        r.mode as i64,
                        r.hashed_at_ns,
                        &r.digest[..]
                    ])
                    .map_err(|e| store.db_err("update stat cache", e))?;
                }
                let mut del = tx
                    .prepare_cached("DELETE FROM stat_cache WHERE path = ?1")
                    .map_err(|e| store.db_err("prune stat cache", e))?;
                for p in &stale {
                    del.execute([p])
                        .map_err(|e| store.db_err("prune stat cache", e))?;
                }
            }
            tx.commit()
                .map_err(|e| store.db_err("update stat cache", e))?;
        }
        Ok((self.files, self.files_read))
    }
}

/// Sorted, filtered extended attributes of `path` (not following symlinks); `host` names it
/// in errors.
fn read_xattrs(path: &Path, host: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let unsupported = |e: rustix::io::Errno| {
        e == rustix::io::Errno::NOTSUP
            || e == rustix::io::Errno::NODATA
            || e == rustix::io::Errno::NOENT
    };
    let len = match rustix::fs::llistxattr_query(path) {
        Ok(0) => return Ok(Vec::new()),
        Ok(n) => n,
        Err(e) if unsupported(e) => return Ok(Vec::new()),
        Err(e) => return Err(CacheError::io("listxattr", host, e.into())),
    };
    let mut names = vec![0u8; len + 256];
    let n = match rustix::fs::llistxattr(path, &mut names[..]) {
        Ok(n) => n,
        Err(e) if unsupported(e) => return Ok(Vec::new()),
        Err(e) => return Err(CacheError::io("listxattr", host, e.into())),
    };
    let mut out = Vec::new();
    for name in names[..n.min(names.len())].split(|&b| b == 0) {
        if name.is_empty()
            || name.starts_with(b"system.")
            || (name.starts_with(b"security.") && name != b"security.capability")
        {
            continue;
        }
        let name_os = std::ffi::OsStr::from_bytes(name);
        let vlen = match rustix::fs::lgetxattr_query(path, name_os) {
            Ok(v) => v,
            Err(e) if unsupported(e) => continue,
            Err(e) => return Err(CacheError::io("getxattr", host, e.into())),
        };
        let mut value = vec![0u8; vlen];
        let got = if vlen == 0 {
            0
        } else {
            match rustix::fs::lgetxattr(path, name_os, &mut value[..]) {
                Ok(g) => g,
                Err(e) if unsupported(e) => continue,
                Err(e) => return Err(CacheError::io("getxattr", host, e.into())),
            }
        };
        value.truncate(got);
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}

/// Resolve `rel` (clean, relative) inside `root` with the one resolver ([`rbuild_fsroot`]):
/// symlinks in intermediate components (and in the last one when `follow_last`) are followed
/// without ever leaving `root` (absolute targets are taken relative to `root`, `..` stops at
/// `root`). Returns the resolved clean relative path and the fds to reach it; a missing
/// intermediate component is `NotFound`, a missing last component is returned with no fd.
fn resolve(
    root: &Root,
    rel: &str,
    follow_last: bool,
    orig: &str,
) -> Result<(String, rbuild_fsroot::Resolved)> {
    let r = root
        .resolve(rel, follow_last)
        .map_err(|e| fsroot_error(e, root, orig))?;
    Ok((r.rel.to_string_lossy().into_owned(), r))
}

/// A resolver error as the context module reports it.
pub(crate) fn fsroot_error(e: rbuild_fsroot::FsRootError, root: &Root, orig: &str) -> CacheError {
    use rbuild_fsroot::FsRootError as F;
    match e {
        F::NotFound { .. } | F::NotADirectory { .. } => CacheError::NotFound {
            path: orig.to_string(),
        },
        F::SymlinkLoop { .. } => CacheError::SymlinkLoop {
            path: orig.to_string(),
        },
        F::Io { op, path, source } => CacheError::io(
            op,
            root.host_path(path.strip_prefix("/").unwrap_or(&path)),
            source,
        ),
    }
}

/// ENOENT or ENOTDIR: the path does not exist.
fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

fn join_rel(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}/{name}")
    }
}

/// Matches of a selector as resolved relative paths (sorted, deduplicated, existing), plus
/// whether the selector used wildcards and the deepest literal directory (for the stat cache).
fn matches_of(root: &Root, sel: &Selector) -> Result<(Vec<String>, bool, String)> {
    let rel = clean_rel(&sel.path);
    let segs: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
    let wildcard = sel.allow_wildcard && segs.iter().any(|s| has_meta(s));
    if !wildcard {
        let (r, _) = resolve(root, &rel, sel.follow_symlinks, &sel.path)?;
        let base = r.clone();
        return Ok((vec![r], false, base));
    }
    let first_meta = segs.iter().position(|s| has_meta(s)).unwrap_or(segs.len());
    let literal = segs[..first_meta].join("/");
    let (first, _) = resolve(root, &literal, true, &sel.path)?;
    let base = first.clone();
    let mut cur = vec![first];
    for (i, seg) in segs.iter().enumerate().skip(first_meta) {
        let last = i + 1 == segs.len();
        let follow = !last || sel.follow_symlinks;
        let mut next = Vec::new();
        for b in &cur {
            if has_meta(seg) {
                let dir = match root.resolve(b, true) {
                    Ok(rbuild_fsroot::Resolved { fd: Some(fd), .. }) => fd,
                    _ => continue,
                };
                let listed = match rbuild_fsroot::list_dir(&dir) {
                    Ok(l) => l,
                    Err(_) => continue,
                };
                let mut names: Vec<String> = listed
                    .iter()
                    .map(|n| n.to_string_lossy().into_owned())
                    .filter(|n| glob_match(seg, n))
                    .collect();
                names.sort();
                for n in names {
                    next.push(resolve(root, &join_rel(b, &n), follow, &sel.path)?.0);
                }
            } else {
                match resolve(root, &join_rel(b, seg), follow, &sel.path) {
                    Ok((r, _)) => next.push(r),
                    Err(CacheError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        cur = next;
    }
    cur.retain(|r| root.resolve(r, false).is_ok_and(|x| x.fd.is_some()));
    cur.sort();
    cur.dedup();
    Ok((cur, true, base))
}

/// The context root, held open (its own path is the user's and is followed; nothing beneath
/// it is followed out of it).
fn open_root(root: &Path) -> Result<Root> {
    let canon =
        fs::canonicalize(root).map_err(|e| CacheError::io("open build context", root, e))?;
    Root::new(&canon).map_err(|e| match e {
        rbuild_fsroot::FsRootError::Io { source, .. } => {
            CacheError::io("open build context", root, source)
        }
        other => CacheError::io(
            "open build context",
            root,
            io::Error::other(other.to_string()),
        ),
    })
}

/// Content checksum of what `sel` selects in the context directory `root`, skipping paths
/// excluded by `exclude`. See the module docs for the exact format.
pub fn checksum(
    store: &Store,
    root: &Path,
    sel: &Selector,
    exclude: &ExcludeMatcher,
) -> Result<Checksum, CacheError> {
    checksum_with(Some(store), root, sel, exclude)
}

/// Content checksum of what `sel` selects in an immutable tree `root` (a stage's merged
/// layers, mounted or materialized for the call): as [`checksum`], plus each entry's owner
/// (uid, gid) and without the `*.overlay.*` xattrs, with no stat cache (the tree's path is a
/// temporary mount point).
pub fn checksum_tree(root: &Path, sel: &Selector) -> Result<Checksum, CacheError> {
    checksum_with(None, root, sel, &ExcludeMatcher::empty())
}

fn checksum_with(
    store: Option<&Store>,
    root: &Path,
    sel: &Selector,
    exclude: &ExcludeMatcher,
) -> Result<Checksum, CacheError> {
    let root = open_root(root)?;
    let (matches, wildcard, base) = matches_of(&root, sel)?;
    let base_host = root.host_path(Path::new(&base));
    let mut w = Walker::new(store, exclude, &base_host)?;
    let not_found = || CacheError::NotFound {
        path: sel.path.clone(),
    };
    // Each match is resolved again beneath the root, without following its last component
    // (matches are already resolved paths; what is there now is hashed, never followed).
    let hash = |w: &mut Walker<'_>, m: &str| -> Result<Option<[u8; 32]>> {
        let (_, r) = match resolve(&root, m, false, &sel.path) {
            Ok(r) => r,
            Err(CacheError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        w.hash_path(&r, &root.host_path(Path::new(m)), m)
    };
    let digest = if wildcard {
        let mut h = Sha256::new();
        h.update(b"wildcard\0");
        let mut n = 0usize;
        for m in &matches {
            if let Some(d) = hash(&mut w, m)? {
                h.update(m.as_bytes());
                h.update([0u8]);
                h.update(d);
                n += 1;
            }
        }
        if n == 0 {
            return Err(not_found());
        }
        util::digest_string(h)
    } else {
        let m = matches.first().ok_or_else(not_found)?;
        let d = hash(&mut w, m)?.ok_or_else(not_found)?;
        format!("sha256:{}", hex::encode(d))
    };
    let (files, files_read) = w.flush()?;
    Ok(Checksum {
        digest,
        files,
        files_read,
    })
}

/// The host paths a selector matches (wildcards expanded per segment like Go `filepath.Match`,
/// symlinks resolved inside the context), excluding paths `.dockerignore` removes. A directory
/// that is excluded but may contain re-included entries is kept (the copier must apply
/// `exclude` while walking it, or use [`Checksum::files`]). Sorted. No match → `NotFound`.
/// The paths are for naming only: a reader must open them beneath the root again
/// ([`rbuild_fsroot::Root`]), never through the path.
pub fn expand(
    root: &Path,
    sel: &Selector,
    exclude: &ExcludeMatcher,
) -> Result<Vec<PathBuf>, CacheError> {
    let root = open_root(root)?;
    let (matches, _, _) = matches_of(&root, sel)?;
    let mut out = Vec::new();
    for m in matches {
        let md = match root.resolve(&m, false) {
            Ok(rbuild_fsroot::Resolved { fd: Some(fd), .. }) => match rustix::fs::fstat(&fd) {
                Ok(st) => Meta::from_stat(&st),
                Err(_) => continue,
            },
            _ => continue,
        };
        if !m.is_empty() {
            let skip = if md.is_dir() {
                exclude.can_skip_dir(&m)
            } else {
                exclude.is_excluded(&m)
            };
            if skip {
                continue;
            }
        }
        out.push(root.host_path(Path::new(&m)));
    }
    if out.is_empty() {
        return Err(CacheError::NotFound {
            path: sel.path.clone(),
        });
    }
    out.sort();
    Ok(out)
}

/// Drop stat-cache rows whose paths no longer exist (for GC; costs one `lstat` per row).
/// Returns the number of rows removed.
pub fn prune_stat_cache(store: &Store) -> Result<u64, CacheError> {
    let paths: Vec<Vec<u8>> = {
        let conn = store.db();
        let mut st = conn
            .prepare_cached("SELECT path FROM stat_cache")
            .map_err(|e| store.db_err("prune stat cache", e))?;
        let rows = st
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .map_err(|e| store.db_err("prune stat cache", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| store.db_err("prune stat cache", e))?
    };
    let gone: Vec<Vec<u8>> = paths
        .into_iter()
        .filter(|p| {
            matches!(fs::symlink_metadata(Path::new(std::ffi::OsStr::from_bytes(p))),
                Err(ref e) if not_found(e))
        })
        .collect();
    if gone.is_empty() {
        return Ok(0);
    }
    let mut conn = store.db();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| store.db_err("prune stat cache", e))?;
    {
        let mut del = tx
            .prepare_cached("DELETE FROM stat_cache WHERE path = ?1")
            .map_err(|e| store.db_err("prune stat cache", e))?;
        for p in &gone {
            del.execute([p])
                .map_err(|e| store.db_err("prune stat cache", e))?;
        }
    }
    tx.commit()
        .map_err(|e| store.db_err("prune stat cache", e))?;
    Ok(gone.len() as u64)
}
