//! The copy snapshotter ("native"): layers without overlayfs.
//!
//! On hosts where overlayfs cannot be mounted (some nested containers, unusual filesystems,
//! kernels without the module), a step's root filesystem is a plain directory:
//!
//! 1. [`materialize`] builds the merged view of the input chain in an empty directory, reading
//!    the layer directories top-down per path (a whiteout, a character device 0:0, hides the
//!    path below it; a directory with `trusted.overlay.opaque=y` hides everything below it in
//!    lower layers). Every visible entry is copied once, with its mode, owner, mtime and xattrs
//!    (except `trusted.overlay.*`/`user.overlay.*`); hard links within one layer stay hard links.
//! 2. The step runs in that directory (the executor's `Rootfs::Dir` for RUN, the file-op
//!    actions for COPY/WORKDIR/…; the solver's `snapshotter.rs` wires a step to this module).
//! 3. [`diff`] compares the directory with the same merged view of the input chain and writes
//!    the changes into the new snapshot in overlay *upper* format: new and changed entries are
//!    copied, deleted ones become whiteouts, a directory removed and made again during the step
//!    (born after the [`Baseline`]) is written opaque with all its contents, and the parent
//!    directories of every change are written with their metadata (as overlayfs's copy-up
//!    would). So the rest of rbuild (layer tar writer, later overlay or copy mounts) cannot
//!    tell which snapshotter made a layer; for ordinary steps the layer tars are
//!    byte-identical to the overlayfs ones (the end-to-end tests check this).
//!
//! Change detection follows BuildKit's native differ: type, mode, uid/gid, device numbers,
//! symlink target, xattrs, and for non-directories size and mtime (nanoseconds); directories are
//! never "changed" by their mtime alone. When size and mtime are equal, the content is
//! compared unless the file's ctime proves it was not touched after materialization
//! ([`Baseline`], taken right after [`materialize`]); a process cannot set ctime, so this is
//! exact and spares reading the whole base image after each step.
//!
//! Known differences from overlayfs, both harmless for the resulting filesystem: a file
//! rewritten with identical content, metadata and mtime is not in the layer (overlayfs would
//! copy it up), and hard links among lower files are real links in the copy, so writing
//! through one path changes the other too (overlayfs breaks the link on copy-up; a real
//! container on a copy-based snapshotter behaves like rbuild here).
//!
//! [`materialize`] is also how `type=local`/`type=tar` outputs flatten an image's layers
//! (`cli/src/outputs.rs`), so a build and its export resolve every path the same way.
//!
//! [`use_copy_snapshotter`] decides the mode: `RBUILD_SNAPSHOTTER=copy` (or `native`) and
//! `=overlay` force one; otherwise (unset or any other value) overlayfs is used when the
//! caller's probe mount works. This module only reads and writes directories: it mounts
//! nothing and knows nothing of graphs or ops.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags, CWD};
use rustix::io::Errno;

use crate::{read_full, CacheError};

/// Environment variable that picks the snapshotter: `copy` (alias `native`) or `overlay`.
pub const SNAPSHOTTER_ENV: &str = "RBUILD_SNAPSHOTTER";

/// The opaque-directory xattr of this mode (`user.overlay.opaque` rootless).
fn opaque_xattr() -> &'static str {
    crate::overlay::opaque_xattr()
}

/// Whether steps run on the copy snapshotter: `RBUILD_SNAPSHOTTER=copy` forces it,
/// `RBUILD_SNAPSHOTTER=overlay` forces overlayfs, otherwise it is used when `overlay_mounts`
/// (the caller's overlayfs probe; this crate mounts nothing) says overlayfs cannot be mounted
/// here. The probe is not called when the variable decides.
pub fn use_copy_snapshotter(overlay_mounts: impl FnOnce() -> bool) -> bool {
    choose(
        std::env::var(SNAPSHOTTER_ENV).ok().as_deref(),
        overlay_mounts,
    )
}

/// [`use_copy_snapshotter`] for a given value of the variable.
fn choose(value: Option<&str>, overlay_mounts: impl FnOnce() -> bool) -> bool {
    forced_copy(value).unwrap_or_else(|| !overlay_mounts())
}

/// The mode a `RBUILD_SNAPSHOTTER` value forces (`Some(true)`: copy), if any.
pub fn forced_copy(value: Option<&str>) -> Option<bool> {
    match value {
        Some("copy") | Some("native") => Some(true),
        Some("overlay") | Some("overlayfs") => Some(false),
        _ => None,
    }
}

/// Build the merged filesystem of `layers_bottom_first` (overlay upper-format layer
/// directories) in `dest`, an existing empty directory. `dest` itself keeps its own metadata.
pub fn materialize(layers_bottom_first: &[PathBuf], dest: &Path) -> Result<(), CacheError> {
    let mut links = HashMap::new();
    materialize_dir(&root_stack(layers_bottom_first), dest, &mut links)
}

fn materialize_dir(stack: &[LayerDir], dest: &Path, links: &mut Links) -> Result<(), CacheError> {
    for (name, v) in view_children(stack)? {
        let dst = dest.join(&name);
        if v.md.is_dir() {
            fs::create_dir(&dst).map_err(|e| ioe("create directory", &dst, e))?;
            materialize_dir(&child_stack(stack, &name)?, &dst, links)?;
            set_meta(&v.path, &v.md, &dst)?;
        } else {
            copy_leaf(&v.path, &v.md, &dst, v.layer, links)?;
        }
    }
    Ok(())
}

/// A point in time on the materialized tree's filesystem clock: any entry whose ctime is
/// earlier was not touched since. Take it with [`baseline`] right after [`materialize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Baseline {
    sec: i64,
    nsec: i64,
}

/// Stamp `dir` (re-setting its own times updates its ctime to "now") and return that ctime.
pub fn baseline(dir: &Path) -> Result<Baseline, CacheError> {
    let md = lstat(dir)?;
    rustix::fs::utimensat(CWD, dir, &times_of(&md), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| ioe("set times of", dir, e))?;
    let md = lstat(dir)?;
    Ok(Baseline {
        sec: md.ctime(),
        nsec: md.ctime_nsec(),
    })
}

/// Write into `upper` (an existing empty directory) the changes between the merged view of
/// `layers_bottom_first` and `merged` (that view after a step ran in it), in overlay upper
/// format. Contents of same-size, same-mtime files are compared byte by byte.
pub fn diff(
    layers_bottom_first: &[PathBuf],
    merged: &Path,
    upper: &Path,
) -> Result<(), CacheError> {
    diff_since(layers_bottom_first, merged, upper, None)
}

/// [`diff`], where entries of `merged` whose ctime is before `since` are known untouched (no
/// content comparison needed).
pub fn diff_since(
    layers_bottom_first: &[PathBuf],
    merged: &Path,
    upper: &Path,
    since: Option<&Baseline>,
) -> Result<(), CacheError> {
    let mut d = Differ {
        since: since.copied(),
        links: HashMap::new(),
    };
    d.dir(&root_stack(layers_bottom_first), merged, upper, None)?;
    Ok(())
}

/// A step's root filesystem in copy mode: the materialized input chain in a work directory
/// under the store's `tmp/`, removed when dropped (success or failure).
#[derive(Debug)]
pub struct WorkRoot {
    dir: PathBuf,
    layers: Vec<PathBuf>,
    since: Option<Baseline>,
}

impl WorkRoot {
    /// Materialize `layers_bottom_first` into `dir` (created; must not exist).
    pub fn create(layers_bottom_first: Vec<PathBuf>, dir: PathBuf) -> Result<Self, CacheError> {
        fs::create_dir(&dir).map_err(|e| ioe("create directory", &dir, e))?;
        let mut w = WorkRoot {
            dir,
            layers: layers_bottom_first,
            since: None,
        };
        fs::set_permissions(&w.dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| ioe("chmod", &w.dir, e))?;
        materialize(&w.layers, &w.dir)?;
        w.since = Some(baseline(&w.dir)?);
        Ok(w)
    }

    /// The root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write the changes made in the root since it was materialized into `upper`.
    pub fn diff_into(&self, upper: &Path) -> Result<(), CacheError> {
        diff_since(&self.layers, &self.dir, upper, self.since.as_ref())
    }
}

impl Drop for WorkRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// The merged view of a chain of layer directories
// ---------------------------------------------------------------------------------------------

/// One layer's copy of a directory of the merged view: (layer index, path).
type LayerDir = (usize, PathBuf);

/// Hard-link memory: (scope, dev, ino) → the first copy made of that inode.
type Links = HashMap<(usize, u64, u64), PathBuf>;

/// A visible entry of the merged view: its top-most copy.
struct Visible {
    path: PathBuf,
    md: Metadata,
    layer: usize,
}

/// The root directory of every layer, top-most first.
fn root_stack(layers_bottom_first: &[PathBuf]) -> Vec<LayerDir> {
    layers_bottom_first
        .iter()
        .enumerate()
        .rev()
        .map(|(i, p)| (i, p.clone()))
        .collect()
}

/// Visible children of a merged directory whose layer copies are `stack` (top-most first):
/// the top-most copy of each name wins; a whiteout hides the name.
fn view_children(stack: &[LayerDir]) -> Result<BTreeMap<OsString, Visible>, CacheError> {
    let mut seen: BTreeMap<OsString, Option<Visible>> = BTreeMap::new();
    for (layer, dir) in stack {
        for name in read_names(dir)? {
            if seen.contains_key(&name) {
                continue;
            }
            let path = dir.join(&name);
            let md = lstat(&path)?;
            let v = if crate::overlay::is_whiteout(&path, &md) {
                None
            } else {
                Some(Visible {
                    path,
                    md,
                    layer: *layer,
                })
            };
            seen.insert(name, v);
        }
    }
    Ok(seen
        .into_iter()
        .filter_map(|(n, v)| v.map(|v| (n, v)))
        .collect())
}

/// The layer copies of child directory `name` (visible as a directory): from the top-most
/// layer that has it, down to (including) the first opaque copy, stopping at a layer where the
/// name is not a directory (a whiteout or a file hides everything below).
fn child_stack(stack: &[LayerDir], name: &OsStr) -> Result<Vec<LayerDir>, CacheError> {
    let mut out = Vec::new();
    for (layer, dir) in stack {
        let p = dir.join(name);
        match fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => {
                let opaque = is_opaque(&p)?;
                out.push((*layer, p));
                if opaque {
                    break;
                }
            }
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ioe("stat", &p, e)),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// diff
// ---------------------------------------------------------------------------------------------

struct Differ {
    since: Option<Baseline>,
    links: Links,
}

/// Hard links among copied entries of the merged tree share this scope.
const MERGED_SCOPE: usize = usize::MAX;

impl Differ {
    /// Diff a directory that is a directory in both the lower view (`stack`) and `merged`.
    /// `this` is (lower entry, merged metadata) of the directory itself (`None` for the root,
    /// which is never written). Returns whether `upper` was written.
    fn dir(
        &mut self,
        stack: &[LayerDir],
        merged: &Path,
        upper: &Path,
        this: Option<(&Visible, &Metadata)>,
    ) -> Result<bool, CacheError> {
        if let Some((_, m)) = this {
            if self.recreated(m) {
                // Removed and made again during the step: opaque, with all its contents (as
                // overlayfs writes it); nothing below it is compared with the lower view.
                self.copy_new(merged, m, upper)?;
                mark_opaque(upper)?;
                return Ok(true);
            }
        }
        let lower = view_children(stack)?;
        let mut cur: BTreeMap<OsString, Metadata> = BTreeMap::new();
        for name in read_names(merged)? {
            let md = lstat(&merged.join(&name))?;
            // Sockets are not representable in a layer.
            if !md.file_type().is_socket() {
                cur.insert(name, md);
            }
        }
        let names: BTreeSet<&OsString> = lower.keys().chain(cur.keys()).collect();
        let mut wrote = false;
        for name in names {
            let (m_path, u_path) = (merged.join(name), upper.join(name));
            match (lower.get(name), cur.get(name)) {
                (Some(_), None) => {
                    ensure_dir(upper)?;
                    whiteout(&u_path)?;
                    wrote = true;
                }
                (None, Some(m)) => {
                    ensure_dir(upper)?;
                    self.copy_new(&m_path, m, &u_path)?;
                    wrote = true;
                }
                (Some(l), Some(m)) if l.md.is_dir() && m.is_dir() => {
                    let cs = child_stack(stack, name)?;
                    if self.dir(&cs, &m_path, &u_path, Some((l, m)))? {
                        wrote = true;
                    }
                }
                (Some(l), Some(m)) => {
                    if self.changed(l, &m_path, m)? {
                        ensure_dir(upper)?;
                        self.copy_new(&m_path, m, &u_path)?;
                        if m.is_dir() {
                            // made where a non-directory was: overlayfs marks it opaque too
                            mark_opaque(&u_path)?;
                        }
                        wrote = true;
                    }
                }
                (None, None) => {}
            }
        }
        let Some((l, m)) = this else {
            return Ok(wrote);
        };
        let meta_changed = l.md.mode() != m.mode()
            || l.md.uid() != m.uid()
            || l.md.gid() != m.gid()
            || read_xattrs(&l.path)? != read_xattrs(merged)?;
        if !(wrote || meta_changed) {
            return Ok(false);
        }
        ensure_dir(upper)?;
        set_meta(merged, m, upper)?;
        Ok(true)
    }

    /// Whether a directory of the merged tree was created after the baseline (its birth time
    /// is later). Without a baseline or a birth time this is never known, and a removed and
    /// remade directory is written as whiteouts plus new entries instead (same view).
    fn recreated(&self, m: &Metadata) -> bool {
        let (Some(b), Ok(born)) = (self.since, m.created()) else {
            return false;
        };
        let Ok(d) = born.duration_since(std::time::UNIX_EPOCH) else {
            return false;
        };
        let Ok(sec) = i64::try_from(d.as_secs()) else {
            return false;
        };
        Baseline {
            sec,
            nsec: i64::from(d.subsec_nanos()),
        } > b
    }

    /// Whether non-directory-pair entry `m_path` differs from its lower entry `l`.
    fn changed(&self, l: &Visible, m_path: &Path, m: &Metadata) -> Result<bool, CacheError> {
        let lm = &l.md;
        if lm.mode() != m.mode() || lm.uid() != m.uid() || lm.gid() != m.gid() {
            return Ok(true); // st_mode covers the file type too
        }
        let ft = m.file_type();
        if (ft.is_char_device() || ft.is_block_device()) && lm.rdev() != m.rdev() {
            return Ok(true);
        }
        if ft.is_file() && lm.len() != m.len() {
            return Ok(true);
        }
        if (lm.mtime(), lm.mtime_nsec()) != (m.mtime(), m.mtime_nsec()) {
            return Ok(true);
        }
        if ft.is_symlink() {
            let a = fs::read_link(&l.path).map_err(|e| ioe("read symlink", &l.path, e))?;
            let b = fs::read_link(m_path).map_err(|e| ioe("read symlink", m_path, e))?;
            if a != b {
                return Ok(true);
            }
        }
        if read_xattrs(&l.path)? != read_xattrs(m_path)? {
            return Ok(true);
        }
        if ft.is_file() && m.len() > 0 {
            let untouched = self.since.is_some_and(|b| {
                Baseline {
                    sec: m.ctime(),
                    nsec: m.ctime_nsec(),
                } < b
            });
            if !untouched {
                return Ok(!same_content(&l.path, m_path)?);
            }
        }
        Ok(false)
    }

    /// Copy `src` (a new or changed entry of the merged tree; a directory with all its
    /// contents) to `dst` in the upper directory.
    fn copy_new(&mut self, src: &Path, md: &Metadata, dst: &Path) -> Result<(), CacheError> {
        if !md.is_dir() {
            return copy_leaf(src, md, dst, MERGED_SCOPE, &mut self.links);
        }
        fs::create_dir(dst).map_err(|e| ioe("create directory", dst, e))?;
        for name in read_names(src)? {
            let p = src.join(&name);
            let cmd = lstat(&p)?;
            self.copy_new(&p, &cmd, &dst.join(&name))?;
        }
        set_meta(src, md, dst)
    }
}

fn ensure_dir(p: &Path) -> Result<(), CacheError> {
    fs::create_dir_all(p).map_err(|e| ioe("create directory", p, e))
}

fn mark_opaque(dir: &Path) -> Result<(), CacheError> {
    rustix::fs::lsetxattr(dir, opaque_xattr(), b"y", XattrFlags::empty())
        .map_err(|e| ioe("mark opaque", dir, e))
}

/// An overlay whiteout: a character device 0:0, or its marker where the store's filesystem
/// refuses one.
fn whiteout(p: &Path) -> Result<(), CacheError> {
    crate::overlay::make_whiteout_at(CWD, p.as_os_str()).map_err(|e| ioe("create whiteout", p, e))
}

fn same_content(a: &Path, b: &Path) -> Result<bool, CacheError> {
    let mut fa = fs::File::open(a).map_err(|e| ioe("open", a, e))?;
    let mut fb = fs::File::open(b).map_err(|e| ioe("open", b, e))?;
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(|e| ioe("read", a, e))?;
        let nb = read_full(&mut fb, &mut bb).map_err(|e| ioe("read", b, e))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// copying entries with their metadata
// ---------------------------------------------------------------------------------------------

/// Copy a non-directory `src` to `dst` (which must not exist) with its metadata. Inodes with
/// several links are copied once per `scope` and linked after that. Sockets are skipped.
fn copy_leaf(
    src: &Path,
    md: &Metadata,
    dst: &Path,
    scope: usize,
    links: &mut Links,
) -> Result<(), CacheError> {
    let key = (scope, md.dev(), md.ino());
    if md.nlink() > 1 {
        if let Some(first) = links.get(&key) {
            return fs::hard_link(first, dst).map_err(|e| ioe("hard link", dst, e));
        }
    }
    let ft = md.file_type();
    if ft.is_file() {
        fs::copy(src, dst).map_err(|source| CacheError::CopyEntry {
            from: src.to_path_buf(),
            to: dst.to_path_buf(),
            source,
        })?;
    } else if ft.is_symlink() {
        let target = fs::read_link(src).map_err(|e| ioe("read symlink", src, e))?;
        std::os::unix::fs::symlink(&target, dst).map_err(|e| ioe("create symlink", dst, e))?;
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
        let kind = if ft.is_char_device() {
            FileType::CharacterDevice
        } else if ft.is_block_device() {
            FileType::BlockDevice
        } else {
            FileType::Fifo
        };
        rustix::fs::mknodat(
            CWD,
            dst,
            kind,
            Mode::from_raw_mode(md.mode() & 0o7777),
            md.rdev(),
        )
        .map_err(|e| ioe("mknod", dst, e))?;
    } else if ft.is_socket() {
        return Ok(()); // not representable in a layer
    } else {
        return Err(ioe(
            "copy",
            src,
            io::Error::new(io::ErrorKind::InvalidInput, "unexpected file type"),
        ));
    }
    set_meta(src, md, dst)?;
    if md.nlink() > 1 {
        links.insert(key, dst.to_path_buf());
    }
    Ok(())
}

/// Give `dst` the owner, mode, xattrs (but `trusted.overlay.*`) and times of `src`. The owner
/// goes first (chown clears set-id bits and file capabilities), times last.
fn set_meta(src: &Path, md: &Metadata, dst: &Path) -> Result<(), CacheError> {
    rustix::fs::chownat(
        CWD,
        dst,
        Some(Uid::from_raw(md.uid())),
        Some(Gid::from_raw(md.gid())),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| ioe("chown", dst, e))?;
    let symlink = md.file_type().is_symlink();
    if !symlink {
        fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(|e| ioe("chmod", dst, e))?;
    }
    for (k, v) in read_xattrs(src)? {
        match rustix::fs::lsetxattr(dst, OsStr::from_bytes(&k), &v, XattrFlags::empty()) {
            Ok(()) | Err(Errno::OPNOTSUPP) => {}
            // user.* xattrs are not allowed on symlinks.
            Err(Errno::PERM) if symlink => {}
            Err(e) => {
                return Err(CacheError::SetXattr {
                    name: String::from_utf8_lossy(&k).into_owned(),
                    path: dst.to_path_buf(),
                    source: e.into(),
                })
            }
        }
    }
    rustix::fs::utimensat(CWD, dst, &times_of(md), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| ioe("set times of", dst, e))
}

fn times_of(md: &Metadata) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: md.atime(),
            tv_nsec: md.atime_nsec(),
        },
        last_modification: Timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec(),
        },
    }
}

/// One extended attribute: (name, value).
type Xattr = (Vec<u8>, Vec<u8>);

/// xattrs of `p` (not following symlinks) except `trusted.overlay.*`, sorted by name.
fn read_xattrs(p: &Path) -> Result<Vec<Xattr>, CacheError> {
    let mut names = Vec::new();
    for _ in 0..8 {
        let size = match rustix::fs::llistxattr_query(p) {
            Ok(n) => n,
            Err(Errno::OPNOTSUPP) => return Ok(Vec::new()),
            Err(e) => return Err(ioe("list xattrs of", p, e)),
        };
        names = vec![0u8; size];
        match rustix::fs::llistxattr(p, &mut names[..]) {
            Ok(n) => {
                names.truncate(n);
                break;
            }
            Err(Errno::RANGE) => continue, // grew meanwhile
            Err(e) => return Err(ioe("list xattrs of", p, e)),
        }
    }
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if crate::overlay::is_overlay_xattr(name) {
            continue;
        }
        let os = OsStr::from_bytes(name);
        let len = match rustix::fs::lgetxattr_query(p, os) {
            Ok(n) => n,
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(ioe("read xattr of", p, e)),
        };
        let mut val = vec![0u8; len];
        let n =
            rustix::fs::lgetxattr(p, os, &mut val[..]).map_err(|e| ioe("read xattr of", p, e))?;
        val.truncate(n);
        out.push((name.to_vec(), val));
    }
    out.sort();
    Ok(out)
}

fn is_opaque(p: &Path) -> Result<bool, CacheError> {
    let mut buf = [0u8; 8];
    match rustix::fs::lgetxattr(p, opaque_xattr(), &mut buf) {
        Ok(n) => Ok(buf.get(..n) == Some(b"y".as_slice())),
        Err(Errno::NODATA) | Err(Errno::OPNOTSUPP) | Err(Errno::RANGE) => Ok(false),
        Err(e) => Err(ioe("read xattr of", p, e)),
    }
}

/// Names in a directory, sorted by bytes.
fn read_names(dir: &Path) -> Result<Vec<OsString>, CacheError> {
    let mut names = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| ioe("read directory", dir, e))? {
        names.push(e.map_err(|e| ioe("read directory", dir, e))?.file_name());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

fn lstat(p: &Path) -> Result<Metadata, CacheError> {
    fs::symlink_metadata(p).map_err(|e| ioe("stat", p, e))
}

fn ioe(op: &'static str, p: &Path, e: impl Into<io::Error>) -> CacheError {
    CacheError::io(op, p, e.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root_or_skip() -> bool {
        if rustix::process::geteuid().is_root() {
            return true;
        }
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "copy snapshotter tests need root (mknod, chown, trusted xattrs)"
        );
        eprintln!("skipping: copy snapshotter tests need root");
        false
    }

    fn write(p: &Path, data: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    fn mknod(p: &Path, kind: FileType, mode: u32, maj: u32, min: u32) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        rustix::fs::mknodat(
            CWD,
            p,
            kind,
            Mode::from_raw_mode(mode),
            rustix::fs::makedev(maj, min),
        )
        .unwrap();
    }

    fn wh(p: &Path) {
        mknod(p, FileType::CharacterDevice, 0, 0, 0);
    }

    fn chown(p: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
    }

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn xattr(p: &Path, k: &str) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 256];
        rustix::fs::lgetxattr(p, k, &mut buf[..]).ok().map(|n| {
            buf.truncate(n);
            buf
        })
    }

    /// Every entry below `root` (root itself excluded) → a description of its type, mode,
    /// owner, device, content or symlink target, xattrs and, for non-directories, mtime.
    fn tree(root: &Path) -> BTreeMap<String, String> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
            for name in read_names(dir).unwrap() {
                let p = dir.join(&name);
                let md = fs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                let ft = md.file_type();
                let what = if ft.is_dir() {
                    "dir".to_string()
                } else if ft.is_symlink() {
                    format!("link->{}", fs::read_link(&p).unwrap().display())
                } else if ft.is_file() {
                    format!("file:{:?}", String::from_utf8_lossy(&fs::read(&p).unwrap()))
                } else {
                    format!(
                        "node {}:{}",
                        rustix::fs::major(md.rdev()),
                        rustix::fs::minor(md.rdev())
                    )
                };
                let time = if ft.is_dir() {
                    String::new()
                } else {
                    format!(" t={}.{}", md.mtime(), md.mtime_nsec())
                };
                let xs: Vec<String> = read_xattrs(&p)
                    .unwrap()
                    .into_iter()
                    .map(|(k, v)| {
                        format!(
                            "{}={}",
                            String::from_utf8_lossy(&k),
                            String::from_utf8_lossy(&v)
                        )
                    })
                    .collect();
                out.insert(
                    rel,
                    format!(
                        "{what} mode={:o} {}:{}{time} xattrs={xs:?}",
                        md.mode(),
                        md.uid(),
                        md.gid()
                    ),
                );
                if ft.is_dir() {
                    walk(root, &p, out);
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(root, root, &mut out);
        out
    }

    fn names(t: &BTreeMap<String, String>) -> Vec<&str> {
        t.keys().map(String::as_str).collect()
    }

    /// The kernel's view of `layers_top_first` (overlayfs, read-only), described by [`tree`].
    fn overlay_tree(layers_top_first: &[PathBuf], at: &Path) -> BTreeMap<String, String> {
        fs::create_dir_all(at).unwrap();
        rbuild_executor::with_private_mounts(|m| {
            m.overlay_ro(layers_top_first, at).unwrap();
            let t = tree(at);
            m.unmount(at).unwrap();
            t
        })
        .unwrap()
    }

    /// Two layers: l0 is a base; l1 makes /a opaque, whites out /b/x and /gone, adds files.
    fn chain(base: &Path) -> Vec<PathBuf> {
        let (l0, l1) = (base.join("l0"), base.join("l1"));
        write(&l0.join("a/1"), "one");
        write(&l0.join("a/2"), "two");
        write(&l0.join("b/x"), "x");
        write(&l0.join("keep"), "keep");
        rustix::fs::lsetxattr(l0.join("keep"), "user.k", b"v", XattrFlags::empty()).unwrap();
        symlink("keep", l0.join("link")).unwrap();
        mknod(&l0.join("dev/null"), FileType::CharacterDevice, 0o666, 1, 3);
        mknod(&l0.join("fifo"), FileType::Fifo, 0o640, 0, 0);
        write(&l0.join("h1"), "hard");
        fs::hard_link(l0.join("h1"), l0.join("h2")).unwrap();
        write(&l0.join("sub/deep/f"), "deep");
        write(&l0.join("gone"), "gone");
        chmod(&l0.join("sub"), 0o750);
        chown(&l0.join("sub"), 7, 8);

        fs::create_dir_all(l1.join("a")).unwrap();
        rustix::fs::lsetxattr(l1.join("a"), opaque_xattr(), b"y", XattrFlags::empty()).unwrap();
        write(&l1.join("a/3"), "three");
        wh(&l1.join("b/x"));
        write(&l1.join("b/y"), "y");
        write(&l1.join("c"), "c");
        chmod(&l1.join("c"), 0o600);
        chown(&l1.join("c"), 1000, 1000);
        wh(&l1.join("gone"));
        vec![l0, l1]
    }

    #[test]
    fn materialize_applies_whiteouts_opaque_dirs_and_metadata() {
        if !root_or_skip() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let layers = chain(t.path());
        let dest = t.path().join("merged");
        fs::create_dir(&dest).unwrap();
        materialize(&layers, &dest).unwrap();
        let got = tree(&dest);
        assert_eq!(
            names(&got),
            [
                "a",
                "a/3",
                "b",
                "b/y",
                "c",
                "dev",
                "dev/null",
                "fifo",
                "h1",
                "h2",
                "keep",
                "link",
                "sub",
                "sub/deep",
                "sub/deep/f"
            ]
        );
        assert_eq!(fs::read_to_string(dest.join("a/3")).unwrap(), "three");
        assert_eq!(xattr(&dest.join("a"), opaque_xattr()), None);
        assert_eq!(xattr(&dest.join("keep"), "user.k"), Some(b"v".to_vec()));
        let c = fs::metadata(dest.join("c")).unwrap();
        assert_eq!((c.mode() & 0o7777, c.uid(), c.gid()), (0o600, 1000, 1000));
        let sub = fs::metadata(dest.join("sub")).unwrap();
        assert_eq!((sub.mode() & 0o7777, sub.uid(), sub.gid()), (0o750, 7, 8));
        let null = fs::symlink_metadata(dest.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
        assert!(fs::symlink_metadata(dest.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert_eq!(fs::read_link(dest.join("link")).unwrap(), Path::new("keep"));
        let (h1, h2) = (
            fs::metadata(dest.join("h1")).unwrap(),
            fs::metadata(dest.join("h2")).unwrap(),
        );
        assert_eq!(h1.ino(), h2.ino(), "hard links within a layer are kept");
        // mtimes of non-directories are kept to the nanosecond
        let src = fs::metadata(layers[0].join("keep")).unwrap();
        let dst = fs::metadata(dest.join("keep")).unwrap();
        assert_eq!(
            (src.mtime(), src.mtime_nsec()),
            (dst.mtime(), dst.mtime_nsec())
        );
        // The kernel's overlayfs agrees on every entry.
        let top_first: Vec<PathBuf> = layers.iter().rev().cloned().collect();
        assert_eq!(overlay_tree(&top_first, &t.path().join("ovl")), got);
    }

    /// The step's changes, applied to a materialized copy of [`chain`].
    fn mutate(m: &Path) {
        write(&m.join("new"), "new");
        // same size, mtime put back: only the content tells
        let old = fs::metadata(m.join("keep")).unwrap();
        fs::write(m.join("keep"), "KEEP").unwrap();
        rustix::fs::utimensat(CWD, m.join("keep"), &times_of(&old), AtFlags::empty()).unwrap();
        chmod(&m.join("b/y"), 0o700);
        chown(&m.join("link"), 1, 1);
        fs::remove_file(m.join("h1")).unwrap();
        fs::remove_dir_all(m.join("a")).unwrap();
        fs::create_dir(m.join("a")).unwrap();
        write(&m.join("a/4"), "four");
        write(&m.join("d/e/f"), "f");
        fs::remove_file(m.join("sub/deep/f")).unwrap();
        rustix::fs::lsetxattr(m.join("c"), "user.n", b"1", XattrFlags::empty()).unwrap();
    }

    /// `recreated`: whether the diff knew /a was removed and made again (then it is opaque;
    /// otherwise its old entry /a/3 is whited out).
    fn check_upper(u: &Path, recreated: bool) {
        let got = tree(u);
        let mut want = vec!["a"];
        if !recreated {
            want.push("a/3");
        }
        want.extend([
            "a/4",
            "b",
            "b/y",
            "c",
            "d",
            "d/e",
            "d/e/f",
            "h1",
            "keep",
            "link",
            "new",
            "sub",
            "sub/deep",
            "sub/deep/f",
        ]);
        assert_eq!(names(&got), want, "{got:#?}");
        let mut whiteouts = vec!["h1", "sub/deep/f"];
        if !recreated {
            whiteouts.push("a/3");
        }
        for w in whiteouts {
            let md = fs::symlink_metadata(u.join(w)).unwrap();
            assert!(
                md.file_type().is_char_device() && md.rdev() == 0,
                "{w} is a whiteout"
            );
        }
        let opaque = recreated.then(|| b"y".to_vec());
        assert_eq!(xattr(&u.join("a"), opaque_xattr()), opaque);
        assert_eq!(xattr(&u.join("b"), opaque_xattr()), None);
        assert_eq!(xattr(&u.join("sub"), opaque_xattr()), None);
        assert_eq!(fs::read_to_string(u.join("keep")).unwrap(), "KEEP");
        assert_eq!(fs::metadata(u.join("b/y")).unwrap().mode() & 0o7777, 0o700);
        let sub = fs::metadata(u.join("sub")).unwrap();
        assert_eq!(
            (sub.mode() & 0o7777, sub.uid(), sub.gid()),
            (0o750, 7, 8),
            "parents of changes carry their metadata"
        );
        assert_eq!(fs::symlink_metadata(u.join("link")).unwrap().uid(), 1);
        assert_eq!(xattr(&u.join("c"), "user.n"), Some(b"1".to_vec()));
    }

    #[test]
    fn diff_writes_an_overlay_upper_and_round_trips() {
        if !root_or_skip() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let layers = chain(t.path());
        let merged = t.path().join("merged");
        fs::create_dir(&merged).unwrap();
        materialize(&layers, &merged).unwrap();
        let since = baseline(&merged).unwrap();
        mutate(&merged);
        let want = tree(&merged);

        // with the ctime baseline (what the solver uses) and without it
        let upper = t.path().join("upper");
        fs::create_dir(&upper).unwrap();
        diff_since(&layers, &merged, &upper, Some(&since)).unwrap();
        check_upper(&upper, true);
        let upper2 = t.path().join("upper2");
        fs::create_dir(&upper2).unwrap();
        diff(&layers, &merged, &upper2).unwrap();
        check_upper(&upper2, false);

        for (i, u) in [upper, upper2].into_iter().enumerate() {
            // round trip: the chain plus the diff is the merged tree again
            let mut all = layers.clone();
            all.push(u);
            let again = t.path().join(format!("again{i}"));
            fs::create_dir(&again).unwrap();
            materialize(&all, &again).unwrap();
            assert_eq!(tree(&again), want);
            // and overlayfs reads the diff the same way
            let top_first: Vec<PathBuf> = all.iter().rev().cloned().collect();
            assert_eq!(
                overlay_tree(&top_first, &t.path().join(format!("ovl{i}"))),
                want
            );
        }
    }

    #[test]
    fn diff_of_an_untouched_tree_is_empty_and_type_changes_are_replacements() {
        if !root_or_skip() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let layers = chain(t.path());
        let merged = t.path().join("merged");
        fs::create_dir(&merged).unwrap();
        materialize(&layers, &merged).unwrap();
        let since = baseline(&merged).unwrap();
        let upper = t.path().join("upper");
        fs::create_dir(&upper).unwrap();
        diff_since(&layers, &merged, &upper, Some(&since)).unwrap();
        assert!(tree(&upper).is_empty(), "{:#?}", tree(&upper));
        diff(&layers, &merged, &upper).unwrap();
        assert!(tree(&upper).is_empty(), "{:#?}", tree(&upper));

        // file → dir, dir → file, symlink retargeted, fifo → symlink
        fs::remove_file(merged.join("c")).unwrap();
        write(&merged.join("c/inner"), "i");
        fs::remove_dir_all(merged.join("sub")).unwrap();
        write(&merged.join("sub"), "now a file");
        fs::remove_file(merged.join("link")).unwrap();
        symlink("/elsewhere", merged.join("link")).unwrap();
        fs::remove_file(merged.join("fifo")).unwrap();
        symlink("keep", merged.join("fifo")).unwrap();
        // new hard links stay linked in the layer
        write(&merged.join("n1"), "linked");
        fs::hard_link(merged.join("n1"), merged.join("n2")).unwrap();
        let want = tree(&merged);
        diff_since(&layers, &merged, &upper, Some(&since)).unwrap();
        let got = tree(&upper);
        assert_eq!(
            names(&got),
            ["c", "c/inner", "fifo", "link", "n1", "n2", "sub"],
            "{got:#?}"
        );
        assert_eq!(
            fs::metadata(upper.join("n1")).unwrap().ino(),
            fs::metadata(upper.join("n2")).unwrap().ino()
        );
        // a directory made where a file was is opaque, as overlayfs writes it
        assert_eq!(xattr(&upper.join("c"), opaque_xattr()), Some(b"y".to_vec()));
        let mut all = layers.clone();
        all.push(upper.clone());
        let again = t.path().join("again");
        fs::create_dir(&again).unwrap();
        materialize(&all, &again).unwrap();
        assert_eq!(tree(&again), want);
    }

    #[test]
    fn the_environment_value_picks_the_snapshotter() {
        assert_eq!(forced_copy(Some("copy")), Some(true));
        assert_eq!(forced_copy(Some("native")), Some(true));
        assert_eq!(forced_copy(Some("overlay")), Some(false));
        assert_eq!(forced_copy(Some("auto")), None);
        assert_eq!(forced_copy(None), None);
    }

    #[test]
    fn the_probe_decides_only_when_the_variable_does_not() {
        let probed = std::cell::Cell::new(0);
        let probe = |mounts: bool| {
            let probed = &probed;
            move || {
                probed.set(probed.get() + 1);
                mounts
            }
        };
        assert!(choose(Some("copy"), probe(true)));
        assert!(!choose(Some("overlay"), probe(false)));
        assert_eq!(probed.get(), 0, "a forced mode never mounts the probe");
        assert!(choose(None, probe(false)));
        assert!(!choose(Some("auto"), probe(true)));
        assert_eq!(probed.get(), 2);
    }
}
