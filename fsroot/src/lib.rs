//! Paths inside an untrusted directory tree (a build context, a layer, a stage's rootfs),
//! resolved beneath the tree's root through file descriptors.
//!
//! This is rbuild's one path resolver. Every component is opened relative to the directory
//! fd of its parent with `O_NOFOLLOW`; a symlink is read with `readlinkat` and its target
//! resolved again inside the root, as if the root were `/`: an absolute target restarts at the
//! root, `..` never climbs above it, and `/proc` magic links are never followed (the kernel is
//! never asked to follow a link). So a symlink planted in the tree, or a directory swapped for
//! a symlink while rbuild walks it (`renameat2(RENAME_EXCHANGE)`), can never make rbuild read,
//! write or mount anything outside the root: at worst the walk sees the attacker's own link and
//! resolves it inside the root, or fails.
//!
//! Operations:
//! * [`Root::resolve`]: the resolved clean relative path plus fds of the parent directory and of
//!   the object (`O_PATH`), following the last component or not;
//! * [`Root::open`]: open beneath the root (`openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`,
//!   the same walk in user space where the kernel has no `openat2`);
//! * [`Root::ensure`]: the same walk, creating missing directories (and a last file) without
//!   following symlinks out of the root;
//! * fd helpers for callers that walk a tree themselves: [`open_dir_at`], [`open_file_at`],
//!   [`list_dir`], [`remove_all_at`], [`fd_path`].
//!
//! No `unsafe`: everything goes through rustix.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Symlinks followed in one resolution before giving up (the kernel's limit is 40).
pub const MAX_SYMLINKS: usize = 40;

/// Errors of this crate. Paths are shown as inside the root (`/a/b`) unless said otherwise.
#[derive(Debug, thiserror::Error)]
pub enum FsRootError {
    /// A system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// An intermediate component (or the object asked for) does not exist.
    #[error("{}: no such file or directory", path.display())]
    NotFound {
        /// The path as asked for.
        path: PathBuf,
    },
    /// More than [`MAX_SYMLINKS`] symlinks.
    #[error("{}: too many levels of symbolic links", path.display())]
    SymlinkLoop {
        /// The path as asked for.
        path: PathBuf,
    },
    /// An intermediate component is not a directory.
    #[error("{}: not a directory", path.display())]
    NotADirectory {
        /// The path as asked for.
        path: PathBuf,
    },
}

impl FsRootError {
    fn io(op: &'static str, path: impl Into<PathBuf>, e: impl Into<io::Error>) -> Self {
        FsRootError::Io {
            op,
            path: path.into(),
            source: e.into(),
        }
    }

    /// The error as an errno (for callers that branch on `ENOENT` and friends).
    pub fn errno(&self) -> Errno {
        match self {
            FsRootError::Io { source, .. } => source
                .raw_os_error()
                .map(Errno::from_raw_os_error)
                .unwrap_or(Errno::IO),
            FsRootError::NotFound { .. } => Errno::NOENT,
            FsRootError::SymlinkLoop { .. } => Errno::LOOP,
            FsRootError::NotADirectory { .. } => Errno::NOTDIR,
        }
    }

    /// True when the path (or one of its parents) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Errno::NOENT | Errno::NOTDIR)
    }
}

/// Result alias.
pub type Result<T, E = FsRootError> = std::result::Result<T, E>;

/// The root of an untrusted tree, held open as an `O_PATH` directory fd.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// The outcome of [`Root::resolve`].
#[derive(Debug)]
pub struct Resolved {
    /// Clean path relative to the root after resolution (`""` = the root itself).
    pub rel: PathBuf,
    /// The directory holding the object (`O_PATH`; the root itself for the root).
    pub parent: OwnedFd,
    /// The object's name in `parent` (`.` for the root).
    pub name: OsString,
    /// The object itself (`O_PATH | O_NOFOLLOW`), `None` when the last component is missing.
    pub fd: Option<OwnedFd>,
}

impl Resolved {
    /// Open the resolved object again with `flags` (never following a symlink that was put
    /// there since: that fails with `ELOOP`).
    pub fn reopen(&self, flags: OFlags) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat(
            &self.parent,
            self.name.as_os_str(),
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    /// `lstat` of the object (None when missing).
    pub fn stat(&self) -> io::Result<Option<rustix::fs::Stat>> {
        match &self.fd {
            Some(fd) => Ok(Some(rustix::fs::fstat(fd)?)),
            None => Ok(None),
        }
    }
}

/// What [`Root::ensure`] creates at the last component when it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// A directory (mode 0755, like the intermediate ones).
    Dir,
    /// An empty regular file with these permission bits.
    File(u32),
}

/// The components of `p` as the walk sees them (`.` and the root dropped, `..` kept).
fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

fn shown(rel: &Path) -> PathBuf {
    Path::new("/").join(rel)
}

const DIR_MODE: u32 = 0o755;

impl Root {
    /// Open the directory `path` as a root. `path` itself is trusted (it is what the user or
    /// the store named) and followed; everything beneath it is not.
    pub fn new(path: impl AsRef<Path>) -> Result<Root> {
        let path = path.as_ref();
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FsRootError::io("open root", path, e))?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The root's path as given to [`Root::new`] (for messages and host paths of results).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The host path of `rel` (for messages; never open it: use the fds).
    pub fn host_path(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.path.clone()
        } else {
            self.path.join(rel)
        }
    }

    /// Resolve `rel` (relative, or absolute meaning "from the root") beneath the root,
    /// following symlinks in intermediate components, and in the last one when
    /// `follow_last`. A missing last component is returned with `fd: None`; a missing
    /// intermediate one is [`FsRootError::NotFound`].
    pub fn resolve(&self, rel: impl AsRef<Path>, follow_last: bool) -> Result<Resolved> {
        self.walk(rel.as_ref(), follow_last, false, None)
            .map(|(r, _)| r)
    }

    /// The resolved clean relative path of `rel`, where missing components (intermediate
    /// ones too) are kept as written (`..` after them is applied lexically): where `rel` would
    /// be once created. For messages and for [`Root::ensure`]; read or write through fds.
    pub fn resolve_path(&self, rel: impl AsRef<Path>, follow_last: bool) -> Result<PathBuf> {
        self.walk(rel.as_ref(), follow_last, true, None)
            .map(|(r, _)| r.rel)
    }

    /// Like [`Root::resolve`], creating what is missing: intermediate directories (0755) and
    /// the last component as `last` says. `hook(rel, is_dir)` runs before each creation (to
    /// record it); `owner` is given to every created entry. Symlinks are followed inside the
    /// root, also at the last component (a mount point or a `mkdir -p` target).
    pub fn ensure(
        &self,
        rel: impl AsRef<Path>,
        last: Create,
        owner: Option<(u32, u32)>,
        hook: &mut dyn FnMut(&Path, bool) -> io::Result<()>,
    ) -> Result<Resolved> {
        self.walk(rel.as_ref(), true, false, Some((last, owner, hook)))
            .map(|(r, _)| r)
    }

    /// Open `rel` beneath the root with `flags` (`O_CLOEXEC` is added; the last component is
    /// followed, inside the root, unless `flags` has `O_NOFOLLOW`). One `openat2` call where
    /// the kernel has it, else the same walk as [`Root::resolve`].
    pub fn open(&self, rel: impl AsRef<Path>, flags: OFlags) -> Result<OwnedFd> {
        let rel = rel.as_ref();
        let stripped = rel.strip_prefix("/").unwrap_or(rel);
        let arg: &Path = if stripped.as_os_str().is_empty() {
            Path::new(".")
        } else {
            stripped
        };
        match rustix::fs::openat2(
            &self.fd,
            arg,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => return Ok(fd),
            // No openat2 (old kernel, or a seccomp filter saying ENOSYS/EPERM), or a rename
            // elsewhere on the filesystem made the kernel ask for a retry: walk ourselves.
            Err(Errno::NOSYS | Errno::PERM | Errno::AGAIN | Errno::XDEV) => {}
            Err(e) => return Err(FsRootError::io("open", shown(rel), e)),
        }
        self.open_by_walk(rel, flags)
    }

    /// [`Root::open`] without `openat2`: the user-space walk of [`Root::resolve`], then an
    /// `O_NOFOLLOW` open of the result relative to its parent.
    fn open_by_walk(&self, rel: &Path, flags: OFlags) -> Result<OwnedFd> {
        let follow = !flags.contains(OFlags::NOFOLLOW);
        let r = self.resolve(rel, follow)?;
        if r.fd.is_none() && !flags.contains(OFlags::CREATE) {
            return Err(FsRootError::NotFound { path: shown(rel) });
        }
        if r.name == "." {
            return rustix::fs::openat(&r.parent, ".", flags | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| FsRootError::io("open", shown(rel), e));
        }
        r.reopen(flags)
            .map_err(|e| FsRootError::io("open", shown(rel), e))
    }

    #[allow(clippy::type_complexity)]
    /// The resolution walk. With `lenient`, a missing intermediate component ends the walk:
    /// the result's `rel` is the whole path (the missing part lexically cleaned), its
    /// `parent` the deepest existing directory. The second value is reserved (empty).
    fn walk(
        &self,
        rel: &Path,
        follow_last: bool,
        lenient: bool,
        mut create: Option<(
            Create,
            Option<(u32, u32)>,
            &mut dyn FnMut(&Path, bool) -> io::Result<()>,
        )>,
    ) -> Result<(Resolved, PathBuf)> {
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| FsRootError::io("dup", shown(rel), e))
        };
        // Directories walked so far (the root first) and their names.
        let mut stack: Vec<OwnedFd> = vec![dup(&self.fd)?];
        let mut done: Vec<OsString> = Vec::new();
        let mut pending = components(rel);
        let mut links = 0usize;
        while let Some(c) = pending.pop_front() {
            if c == ".." {
                if stack.len() > 1 {
                    stack.pop();
                    done.pop();
                }
                continue;
            }
            let last = pending.is_empty();
            let Some(cur) = stack.last() else {
                break;
            };
            let here: PathBuf = done.iter().chain(std::iter::once(&c)).collect();
            let opened = rustix::fs::openat(
                cur,
                c.as_os_str(),
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            );
            let fd = match opened {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    let Some((kind, owner, hook)) = create.as_mut() else {
                        if last || lenient {
                            // The rest, lexically: nothing of it exists to resolve.
                            let mut full: Vec<OsString> = done.clone();
                            full.push(c.clone());
                            for p in pending.drain(..) {
                                if p == ".." {
                                    full.pop();
                                } else {
                                    full.push(p);
                                }
                            }
                            let parent = stack
                                .pop()
                                .ok_or_else(|| FsRootError::NotFound { path: shown(rel) })?;
                            return Ok((
                                Resolved {
                                    rel: full.iter().collect(),
                                    parent,
                                    name: c,
                                    fd: None,
                                },
                                PathBuf::new(),
                            ));
                        }
                        return Err(FsRootError::NotFound { path: shown(rel) });
                    };
                    let as_dir = !last || *kind == Create::Dir;
                    hook(&here, as_dir).map_err(|e| FsRootError::io("create", shown(&here), e))?;
                    let made = if as_dir {
                        rustix::fs::mkdirat(cur, c.as_os_str(), Mode::from_raw_mode(DIR_MODE))
                            .and_then(|()| {
                                rustix::fs::openat(
                                    cur,
                                    c.as_os_str(),
                                    OFlags::RDONLY
                                        | OFlags::DIRECTORY
                                        | OFlags::NOFOLLOW
                                        | OFlags::CLOEXEC,
                                    Mode::empty(),
                                )
                            })
                    } else {
                        let mode = match kind {
                            Create::File(m) => *m,
                            Create::Dir => DIR_MODE,
                        };
                        rustix::fs::openat(
                            cur,
                            c.as_os_str(),
                            OFlags::WRONLY
                                | OFlags::CREATE
                                | OFlags::EXCL
                                | OFlags::NOFOLLOW
                                | OFlags::CLOEXEC,
                            Mode::from_raw_mode(mode & 0o7777),
                        )
                    };
                    let fd = match made {
                        Ok(fd) => fd,
                        // Created by someone else meanwhile: look again (bounded by `links`
                        // when it is a symlink).
                        Err(Errno::EXIST) => {
                            pending.push_front(c);
                            links += 1;
                            if links > MAX_SYMLINKS {
                                return Err(FsRootError::SymlinkLoop { path: shown(rel) });
                            }
                            continue;
                        }
                        Err(e) => return Err(FsRootError::io("create", shown(&here), e)),
                    };
                    let mode = if as_dir {
                        DIR_MODE
                    } else {
                        match kind {
                            Create::File(m) => *m & 0o7777,
                            Create::Dir => DIR_MODE,
                        }
                    };
                    // Exact modes whatever the umask.
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
                        .map_err(|e| FsRootError::io("chmod", shown(&here), e))?;
                    if let Some((u, g)) = owner {
                        rustix::fs::fchown(
                            &fd,
                            Some(rustix::fs::Uid::from_raw(*u)),
                            Some(rustix::fs::Gid::from_raw(*g)),
                        )
                        .map_err(|e| FsRootError::io("chown", shown(&here), e))?;
                    }
                    fd
                }
                Err(Errno::NOTDIR) => return Err(FsRootError::NotADirectory { path: shown(rel) }),
                Err(e) => return Err(FsRootError::io("open", shown(&here), e)),
            };
            let st =
                rustix::fs::fstat(&fd).map_err(|e| FsRootError::io("stat", shown(&here), e))?;
            let ft = FileType::from_raw_mode(st.st_mode);
            if ft == FileType::Symlink && (!last || follow_last) {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(FsRootError::SymlinkLoop { path: shown(rel) });
                }
                let target = rustix::fs::readlinkat(&fd, "", Vec::new())
                    .map_err(|e| FsRootError::io("readlink", shown(&here), e))?;
                let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
                if target.is_absolute() {
                    stack.truncate(1);
                    done.clear();
                }
                let mut more = components(&target);
                more.extend(pending.drain(..));
                pending = more;
                continue;
            }
            if last {
                let parent = stack
                    .pop()
                    .ok_or_else(|| FsRootError::NotFound { path: shown(rel) })?;
                return Ok((
                    Resolved {
                        rel: here,
                        parent,
                        name: c,
                        fd: Some(fd),
                    },
                    PathBuf::new(),
                ));
            }
            if ft != FileType::Directory {
                return Err(FsRootError::NotADirectory { path: shown(rel) });
            }
            stack.push(fd);
            done.push(c);
        }
        // Everything consumed without a last component left: the result is the directory
        // on top of the stack (the root, or where `..`/a link to a directory led).
        let fd = stack
            .pop()
            .ok_or_else(|| FsRootError::NotFound { path: shown(rel) })?;
        let name = done.pop();
        let parent = match (&name, stack.pop()) {
            (Some(_), Some(p)) => p,
            _ => dup(&fd)?,
        };
        let rel: PathBuf = done.iter().chain(name.iter()).collect();
        Ok((
            Resolved {
                rel,
                parent,
                name: name.unwrap_or_else(|| OsString::from(".")),
                fd: Some(fd),
            },
            PathBuf::new(),
        ))
    }
}

impl AsFd for Root {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Open the directory `name` in `dir` for reading, never following a symlink.
pub fn open_dir_at(dir: impl AsFd, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Open the regular file `name` in `dir` for reading, never following a symlink and never
/// blocking on a fifo or device put there instead (those are refused).
pub fn open_file_at(dir: impl AsFd, name: &OsStr) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::other(format!(
            "{} is no longer a regular file",
            Path::new(name).display()
        )));
    }
    Ok(File::from(fd))
}

/// The names in the directory `dir` (an fd of any kind, `O_PATH` too), without `.`/`..`,
/// unsorted.
pub fn list_dir(dir: impl AsFd) -> io::Result<Vec<OsString>> {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut d = rustix::fs::Dir::read_from(&fd)?;
    let mut out = Vec::new();
    while let Some(e) = d.read() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(out)
}

/// `lstat` of `name` in `dir`.
pub fn lstat_at(dir: impl AsFd, name: &OsStr) -> io::Result<rustix::fs::Stat> {
    Ok(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// Remove `name` in `parent`, recursively for a directory, never following symlinks.
pub fn remove_all_at(parent: impl AsFd, name: &OsStr) -> io::Result<()> {
    let parent = parent.as_fd();
    let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Ok(rustix::fs::unlinkat(parent, name, AtFlags::empty())?);
    }
    let dir = open_dir_at(parent, name)?;
    for child in list_dir(&dir)? {
        remove_all_at(&dir, &child)?;
    }
    Ok(rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?)
}

/// The `/proc/self/fd/N` path of `fd`: mount(2) and the path-based xattr calls reach exactly
/// the object the fd holds through it, whatever happened to its name since.
pub fn fd_path(fd: impl AsFd) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
}

#[cfg(test)]
mod tests;
