//! The sandbox init's private scratch space: a tmpfs mounted (lazily) on the helper's scratch
//! `mnt` directory inside the sandbox's own mount namespace. It holds secret files, throwaway
//! overlay upper dirs of writable bind mounts and the merged views of `from=` mounts. Nothing
//! in it is visible to the host, and it disappears with the mount namespace; after
//! `pivot_root` the step reaches it only through the mounts bound into its root.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rbuild_fsroot::{Create, Root};

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

/// Resolve `rel` inside `root` like a chroot would (absolute symlinks restart at `root`, `..`
/// never climbs above it; [`rbuild_fsroot`]). The result must exist; it is returned open
/// (`O_PATH`), so what is mounted is exactly what was resolved, whatever happens to the
/// path afterwards (a lower directory is the live build context for context binds).
pub(crate) fn resolve_inside(root: &Path, rel: &str) -> Result<OwnedFd, ExecutorError> {
    let r = Root::new(root)
        .and_then(|r| r.resolve(rel, true))
        .map_err(|e| ExecutorError::Setup(format!("mount source: {e}")))?;
    r.fd.ok_or_else(|| {
        ExecutorError::sys(
            "mount source",
            Path::new("/").join(rel),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })
}

/// Like [`resolve_inside`], creating missing directories (mode 0755) on the way; returns the
/// host path of the result.
pub(crate) fn resolve_or_create(root: &Path, rel: &str) -> Result<PathBuf, ExecutorError> {
    let r = Root::new(root)
        .and_then(|r| r.ensure(rel, Create::Dir, None, &mut |_, _| Ok(())))
        .map_err(|e| ExecutorError::Setup(format!("{rel}: {e}")))?;
    Ok(root.join(r.rel))
}

/// Bind the object `fd` holds (through `/proc/self/fd/N`: exactly that object, not whatever
/// its path names now) onto a fresh stub `name` in the private tmpfs; returns the stub, a path
/// nobody else can change, for the runtime to bind into the sandbox.
pub(crate) fn pin(
    private: &mut PrivateTmp<'_>,
    name: &str,
    fd: &OwnedFd,
) -> Result<(PathBuf, bool), ExecutorError> {
    let st = rustix::fs::fstat(fd).map_err(|e| ExecutorError::sys("stat bind source", name, e))?;
    let is_dir = rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory;
    let stub = private.dir()?.join(name);
    if is_dir {
        mkdir_p(&stub)?;
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&stub)
            .map_err(|e| ExecutorError::sys("create bind stub", &stub, e))?;
    }
    rustix::mount::mount_bind_recursive(rbuild_fsroot::fd_path(fd), &stub)
        .map_err(|e| ExecutorError::sys("bind mount source at", &stub, e))?;
    Ok((stub, is_dir))
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
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let fd_ino = |fd: OwnedFd| rustix::fs::fstat(fd).unwrap().st_ino;
        assert_eq!(
            fd_ino(resolve_inside(r, "/abs/b/f").unwrap()),
            ino(&r.join("a/b/f"))
        );
        assert_eq!(
            fd_ino(resolve_inside(r, "a/up/f").unwrap()),
            ino(&r.join("a/b/f"))
        );
        assert_eq!(
            fd_ino(resolve_inside(r, "../../a").unwrap()),
            ino(&r.join("a"))
        );
        assert_eq!(fd_ino(resolve_inside(r, "").unwrap()), ino(r));
        assert!(resolve_inside(r, "missing").is_err());
        std::os::unix::fs::symlink("/x/y", r.join("a/mk")).unwrap();
        assert_eq!(resolve_or_create(r, "/a/mk/z").unwrap(), r.join("x/y/z"));
        assert!(r.join("x/y/z").is_dir());
    }
}
