//! The sandbox init's private scratch space: a tmpfs mounted (lazily) on the helper's scratch
//! `mnt` directory inside the sandbox's own mount namespace. It holds secret files, throwaway
//! overlay upper dirs of writable bind mounts and the merged views of `from=` mounts. Nothing
//! in it is visible to the host, and it disappears with the mount namespace; after
//! `pivot_root` the step reaches it only through the mounts bound into its root.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use rustix::mount::{mount, MountFlags};

use crate::error::ExecutorError;

/// Lazily mounted private tmpfs.
pub(crate) struct PrivateTmp<'a> {
    at: &'a Path,
    mounted: bool,
}

impl<'a> PrivateTmp<'a> {
    pub(crate) fn new(at: &'a Path) -> Self {
        PrivateTmp { at, mounted: false }
    }

    /// The tmpfs root (mounted on first use).
    pub(crate) fn dir(&mut self) -> Result<&Path, ExecutorError> {
        if !self.mounted {
            mount(
                "tmpfs",
                self.at,
                "tmpfs",
                MountFlags::NOSUID | MountFlags::NODEV,
                c"mode=0700",
            )
            .map_err(|e| ExecutorError::sys("mount private tmpfs at", self.at, e))?;
            self.mounted = true;
        }
        Ok(self.at)
    }
}

/// `mkdir -p`.
pub(crate) fn mkdir_p(p: &Path) -> Result<(), ExecutorError> {
    std::fs::create_dir_all(p).map_err(|e| ExecutorError::sys("mkdir", p, e))
}

/// Resolve `rel` inside `root` like a chroot would: absolute symlinks restart at `root`, `..`
/// never climbs above it. The result must exist.
pub(crate) fn resolve_inside(root: &Path, rel: &str) -> Result<PathBuf, ExecutorError> {
    let mut pending: VecDeque<OsString> = parts(Path::new(rel));
    let mut cur = PathBuf::new();
    let mut hops = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&c);
        let full = root.join(&next);
        let m = std::fs::symlink_metadata(&full)
            .map_err(|e| ExecutorError::sys("mount source", Path::new("/").join(&next), e))?;
        if m.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return Err(ExecutorError::Setup(format!(
                    "too many symlinks resolving mount source {rel}"
                )));
            }
            let link =
                std::fs::read_link(&full).map_err(|e| ExecutorError::sys("readlink", &full, e))?;
            if link.is_absolute() {
                cur = PathBuf::new();
            }
            let mut n = parts(&link);
            n.extend(pending.drain(..));
            pending = n;
        } else {
            cur = next;
        }
    }
    Ok(root.join(cur))
}

/// Like [`resolve_inside`], creating missing directories (mode 0755) on the way.
pub(crate) fn resolve_or_create(root: &Path, rel: &str) -> Result<PathBuf, ExecutorError> {
    let mut pending: VecDeque<OsString> = parts(Path::new(rel));
    let mut cur = PathBuf::new();
    let mut hops = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&c);
        let full = root.join(&next);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(ExecutorError::Setup(format!(
                        "too many symlinks resolving {rel}"
                    )));
                }
                let link = std::fs::read_link(&full)
                    .map_err(|e| ExecutorError::sys("readlink", &full, e))?;
                if link.is_absolute() {
                    cur = PathBuf::new();
                }
                let mut n = parts(&link);
                n.extend(pending.drain(..));
                pending = n;
            }
            Ok(_) => cur = next,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&full).map_err(|e| ExecutorError::sys("mkdir", &full, e))?;
                cur = next;
            }
            Err(e) => return Err(ExecutorError::sys("stat", &full, e)),
        }
    }
    Ok(root.join(cur))
}

fn parts(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_are_resolved_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::write(r.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink("/a", r.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../a/b", r.join("a/up")).unwrap();
        assert_eq!(resolve_inside(r, "/abs/b/f").unwrap(), r.join("a/b/f"));
        assert_eq!(resolve_inside(r, "a/up/f").unwrap(), r.join("a/b/f"));
        assert_eq!(resolve_inside(r, "../../a").unwrap(), r.join("a"));
        assert_eq!(resolve_inside(r, "").unwrap(), r.to_path_buf());
        assert!(resolve_inside(r, "missing").is_err());
    }
}
