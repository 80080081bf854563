//! Mount primitives shared by the sandbox and the in-process file operations:
//! overlayfs (new mount API with `lowerdir+`, falling back to a classic
//! option string compacted with relative paths), read-only binds, and
//! [`with_private_mounts`] / [`Mounter`].

use std::cell::RefCell;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use rustix::io::Errno;
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, mount, mount_bind,
    mount_bind_recursive, mount_change, mount_remount, move_mount, unmount, FsMountFlags,
    FsOpenFlags, MountAttrFlags, MountFlags, MountPropagationFlags, MoveMountFlags, UnmountFlags,
};
use rustix::thread::UnshareFlags;

use crate::error::ExecutorError;
use crate::sys;

/// Largest mount option string the kernel accepts (one page, NUL included).
const MAX_OPTIONS: usize = 4095;

/// Options that keep an upper dir a plain layer diff.
const LAYER_OPTIONS: &[(&str, &str)] = &[
    ("index", "off"),
    ("redirect_dir", "off"),
    ("metacopy", "off"),
];

/// [`LAYER_OPTIONS`] for this mode: with `userxattr` (user namespace) the kernel refuses an
/// explicit `redirect_dir` other than `nofollow` and itself turns redirects and metacopy off.
fn layer_options() -> &'static [(&'static str, &'static str)] {
    if crate::userns::in_user_namespace() {
        &[("index", "off")]
    } else {
        LAYER_OPTIONS
    }
}

/// Mount an overlay of `lowers` (top-most first) at `target`; with
/// `upper_work` it is writable, otherwise read-only (needs ≥ 1 lower).
pub(crate) fn mount_overlay(
    lowers: &[PathBuf],
    upper_work: Option<(&Path, &Path)>,
    target: &Path,
) -> Result<(), ExecutorError> {
    if lowers.is_empty() {
        return Err(ExecutorError::InvalidSpec(
            "overlay mount needs at least one lower directory".into(),
        ));
    }
    if let Some((_, work)) = upper_work {
        // An earlier `volatile` mount of this upper/work pair leaves work/incompat/volatile,
        // which makes overlayfs refuse any later mount of it. Whether the upper's data is
        // trustworthy is the caller's business (the store's commit markers decide), so the
        // marker is cleared for a deliberate re-mount.
        let _ = std::fs::remove_dir_all(work.join("work").join("incompat"));
    }
    match overlay_new_api(lowers, upper_work, target) {
        Ok(()) => Ok(()),
        // ENOSYS: no fsopen; EINVAL on "lowerdir+": kernel older than 6.8.
        Err((_, Errno::NOSYS)) | Err(("fsconfig lowerdir+", Errno::INVAL)) => {
            overlay_legacy(lowers, upper_work, target)
        }
        Err((op, e)) => Err(ExecutorError::sys(
            format!("mount overlay ({op}; lowers {lowers:?}, upper/work {upper_work:?}) at"),
            target,
            e,
        )),
    }
}

/// The xattr overlayfs marks opaque directories with: `user.overlay.opaque` in a user
/// namespace (overlay mounted with `userxattr`), else `trusted.overlay.opaque`.
pub fn opaque_xattr() -> &'static str {
    if crate::userns::in_user_namespace() {
        "user.overlay.opaque"
    } else {
        "trusted.overlay.opaque"
    }
}

fn overlay_new_api(
    lowers: &[PathBuf],
    upper_work: Option<(&Path, &Path)>,
    target: &Path,
) -> Result<(), (&'static str, Errno)> {
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| ("fsopen", e))?;
    for lower in lowers {
        fsconfig_set_string(&fs, "lowerdir+", lower.as_path())
            .map_err(|e| ("fsconfig lowerdir+", e))?;
    }
    if crate::userns::in_user_namespace() {
        // trusted.* xattrs are out of reach in a user namespace: whiteout/opaque markers
        // are user.overlay.* (kernel ≥ 5.11).
        fsconfig_set_flag(&fs, "userxattr").map_err(|e| ("fsconfig userxattr", e))?;
    }
    if let Some((upper, work)) = upper_work {
        fsconfig_set_string(&fs, "upperdir", upper).map_err(|e| ("fsconfig upperdir", e))?;
        fsconfig_set_string(&fs, "workdir", work).map_err(|e| ("fsconfig workdir", e))?;
        // The upper dir must be a plain layer diff: no redirects, metacopy
        // or index entries, whatever the module defaults are. Best effort: a
        // kernel that does not know an option keeps its default (a failed
        // parameter does not invalidate the fs context).
        for (key, value) in layer_options() {
            let _ = fsconfig_set_string(&fs, *key, *value);
        }
        // No sync of the whole upper filesystem at unmount (kernel ≥ 5.10): the store commits
        // step snapshots with a boot-scoped marker and syncs them in batches instead
        // (rbuild_cache::Store::commit_snapshot_unsynced). Best effort like the options above.
        let _ = rustix::mount::fsconfig_set_flag(&fs, "volatile");
    }
    fsconfig_create(&fs).map_err(|e| ("fsconfig create", e))?;
    let attrs = if upper_work.is_some() {
        MountAttrFlags::empty()
    } else {
        MountAttrFlags::MOUNT_ATTR_RDONLY
    };
    let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(|e| ("fsmount", e))?;
    move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| ("move_mount", e))
}

fn overlay_options(lowers: &[PathBuf], upper_work: Option<(&Path, &Path)>) -> Vec<u8> {
    let mut data = b"lowerdir=".to_vec();
    for (i, l) in lowers.iter().enumerate() {
        if i > 0 {
            data.push(b':');
        }
        data.extend_from_slice(l.as_os_str().as_bytes());
    }
    if crate::userns::in_user_namespace() {
        data.extend_from_slice(b",userxattr");
    }
    if let Some((u, w)) = upper_work {
        data.extend_from_slice(b",upperdir=");
        data.extend_from_slice(u.as_os_str().as_bytes());
        data.extend_from_slice(b",workdir=");
        data.extend_from_slice(w.as_os_str().as_bytes());
        for (key, value) in layer_options() {
            data.extend_from_slice(format!(",{key}={value}").as_bytes());
        }
    }
    data
}

/// Longest common ancestor directory of absolute paths.
fn common_ancestor<'a>(paths: impl Iterator<Item = &'a Path>) -> PathBuf {
    let mut common: Option<Vec<Component<'a>>> = None;
    for p in paths {
        let comps: Vec<Component<'a>> = p.components().collect();
        common = Some(match common {
            None => comps,
            Some(c) => c
                .iter()
                .zip(comps.iter())
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| *a)
                .collect(),
        });
    }
    common.unwrap_or_default().iter().collect()
}

/// Classic `mount(2)`; when the option string does not fit in a page, chdir
/// to the common parent of all dirs and use relative paths. Only call this
/// from a thread/process whose cwd is private (helper, or a thread after
/// `unshare(CLONE_FS)`).
fn overlay_legacy(
    lowers: &[PathBuf],
    upper_work: Option<(&Path, &Path)>,
    target: &Path,
) -> Result<(), ExecutorError> {
    let target =
        std::path::absolute(target).map_err(|e| ExecutorError::sys("absolute path", target, e))?;
    let mut data = overlay_options(lowers, upper_work);
    if data.len() > MAX_OPTIONS {
        let mut all: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
        if let Some((u, w)) = upper_work {
            all.push(u);
            all.push(w);
        }
        let base = common_ancestor(all.iter().copied());
        let rel = |p: &Path| -> PathBuf {
            p.strip_prefix(&base)
                .map(Path::to_path_buf)
                .unwrap_or_else(|_| p.to_path_buf())
        };
        let rl: Vec<PathBuf> = lowers.iter().map(|p| rel(p)).collect();
        let (ru, rw);
        let uw = match upper_work {
            Some((u, w)) => {
                ru = rel(u);
                rw = rel(w);
                Some((ru.as_path(), rw.as_path()))
            }
            None => None,
        };
        data = overlay_options(&rl, uw);
        if data.len() > MAX_OPTIONS {
            return Err(ExecutorError::InvalidSpec(format!(
                "overlay options too long ({} bytes) even relative to {}",
                data.len(),
                base.display()
            )));
        }
        std::env::set_current_dir(&base)
            .map_err(|e| ExecutorError::sys("chdir (overlay lowerdir compaction)", &base, e))?;
    }
    let data = std::ffi::CString::new(data)
        .map_err(|_| ExecutorError::InvalidSpec("overlay path contains a NUL byte".into()))?;
    let flags = if upper_work.is_some() {
        MountFlags::empty()
    } else {
        MountFlags::RDONLY
    };
    mount("overlay", &target, "overlay", flags, data.as_c_str())
        .map_err(|e| ExecutorError::sys("mount overlay (legacy) at", &target, e))
}

/// Bind `source` at `target` (recursively), always `nodev` (a device node in a cache mount, a
/// bind source or a layer view must never be usable), read-only when asked.
pub(crate) fn bind(source: &Path, target: &Path, readonly: bool) -> Result<(), ExecutorError> {
    mount_bind_recursive(source, target).map_err(|e| {
        ExecutorError::sys(format!("bind mount {} at", source.display()), target, e)
    })?;
    let mut add = MountFlags::NODEV;
    if readonly {
        add |= MountFlags::RDONLY;
    }
    remount_adding(target, add)
}

/// Remount an existing bind mount read-only.
pub(crate) fn remount_readonly(target: &Path) -> Result<(), ExecutorError> {
    remount_adding(target, MountFlags::RDONLY)
}

/// Make the mount at `target` `nodev`: device nodes on it (made by the step with CAP_MKNOD,
/// or carried by an image layer) cannot be opened. Docker gets the same effect from its device
/// cgroup; this works without one (rootless, cgroup-less hosts) and for every filesystem.
pub(crate) fn remount_nodev(target: &Path) -> Result<(), ExecutorError> {
    remount_adding(target, MountFlags::NODEV)
}

/// Remount the mount at `target` (`MS_REMOUNT|MS_BIND`: per-mount flags only) with `add` on
/// top of the flags it has. The flags it keeps include the ones a user namespace locks
/// (nosuid/nodev/noexec/ro and the atime mode of a mount inherited from the host).
fn remount_adding(target: &Path, add: MountFlags) -> Result<(), ExecutorError> {
    use rustix::fs::StatVfsMountFlags as S;
    let st = rustix::fs::statvfs(target)
        .map_err(|e| ExecutorError::sys("statvfs (remount)", target, e))?;
    let mut flags = MountFlags::BIND | add;
    for (have, keep) in [
        (S::RDONLY, MountFlags::RDONLY),
        (S::NOSUID, MountFlags::NOSUID),
        (S::NODEV, MountFlags::NODEV),
        (S::NOEXEC, MountFlags::NOEXEC),
        (S::NOATIME, MountFlags::NOATIME),
        (S::NODIRATIME, MountFlags::NODIRATIME),
        (S::RELATIME, MountFlags::RELATIME),
    ] {
        if st.f_flag.contains(have) {
            flags |= keep;
        }
    }
    if !st.f_flag.intersects(S::NOATIME | S::RELATIME) {
        flags |= MountFlags::STRICTATIME;
    }
    mount_remount(target, flags, "").map_err(|e| ExecutorError::sys("remount", target, e))
}

/// Make every mount of the current mount namespace private, recursively.
pub(crate) fn make_rprivate() -> Result<(), ExecutorError> {
    mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(|e| ExecutorError::sys("make mounts rprivate", "/", e))
}

/// Mount helper handed to [`with_private_mounts`] closures. Every mount made
/// through it lives in the thread's private mount namespace and is unmounted
/// when the closure returns.
pub struct Mounter {
    mounted: RefCell<Vec<PathBuf>>,
}

impl Mounter {
    fn new() -> Self {
        Mounter {
            mounted: RefCell::new(Vec::new()),
        }
    }

    fn record(&self, target: &Path) {
        self.mounted.borrow_mut().push(target.to_path_buf());
    }

    /// Overlay of `lowers` (top-most first) + `upper`/`work`, mounted
    /// read-write at `target` (zero lowers: bind-mount `upper`).
    pub fn overlay(
        &self,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> Result<(), ExecutorError> {
        if lowers.is_empty() {
            mount_bind(upper, target).map_err(|e| {
                ExecutorError::sys(format!("bind mount {} at", upper.display()), target, e)
            })?;
        } else {
            mount_overlay(lowers, Some((upper, work)), target)?;
        }
        self.record(target);
        Ok(())
    }

    /// Read-only merged view of `lowers` at `target` (0 lowers: `target` is
    /// left as it is; 1 lower: read-only bind; ≥ 2: overlay of lowers only).
    pub fn overlay_ro(&self, lowers: &[PathBuf], target: &Path) -> Result<(), ExecutorError> {
        match lowers {
            [] => return Ok(()),
            [one] => {
                mount_bind(one, target).map_err(|e| {
                    ExecutorError::sys(format!("bind mount {} at", one.display()), target, e)
                })?;
                self.record(target);
                remount_readonly(target)?;
            }
            _ => {
                mount_overlay(lowers, None, target)?;
                self.record(target);
            }
        }
        Ok(())
    }

    /// Unmount `target` (lazily when busy).
    pub fn unmount(&self, target: &Path) -> Result<(), ExecutorError> {
        match unmount(target, UnmountFlags::empty()) {
            Ok(()) => {}
            Err(Errno::BUSY) => unmount(target, UnmountFlags::DETACH)
                .map_err(|e| ExecutorError::sys("unmount (detach)", target, e))?,
            Err(e) => return Err(ExecutorError::sys("unmount", target, e)),
        }
        let mut m = self.mounted.borrow_mut();
        if let Some(pos) = m.iter().rposition(|p| p == target) {
            m.remove(pos);
        }
        Ok(())
    }

    fn unmount_all(&self) {
        let all: Vec<PathBuf> = self.mounted.borrow_mut().drain(..).rev().collect();
        for t in all {
            if unmount(&t, UnmountFlags::empty()).is_err() {
                let _ = unmount(&t, UnmountFlags::DETACH);
            }
        }
    }
}

/// Run `f` on a new thread that has its own private mount namespace
/// (`unshare(CLONE_NEWNS|CLONE_FS)`, everything made rprivate), so nothing
/// propagates to the host; mounts made through the [`Mounter`] are unmounted
/// when `f` returns and anything left vanishes with the thread. Returns
/// `f`'s result. Relative paths given to the `Mounter` resolve against the
/// process's cwd at the time of the call.
pub fn with_private_mounts<T: Send>(
    f: impl FnOnce(&Mounter) -> T + Send,
) -> Result<T, ExecutorError> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("rbuild-private-mounts".into())
            .spawn_scoped(scope, move || -> Result<T, ExecutorError> {
                sys::unshare(UnshareFlags::NEWNS | UnshareFlags::FS)
                    .map_err(|e| ExecutorError::sys("unshare(CLONE_NEWNS)", "", e))?;
                make_rprivate()?;
                let mounter = Mounter::new();
                let out = f(&mounter);
                mounter.unmount_all();
                Ok(out)
            })
            .map_err(|e| ExecutorError::Thread(format!("spawn: {e}")))?;
        handle
            .join()
            .map_err(|_| ExecutorError::Thread("the closure panicked".into()))?
    })
}

/// Whether the namespace sandbox can be set up here: a mount namespace can be made (probed
/// once, on a throwaway thread) and, in a user namespace, a new `/proc` mounted (probed once by
/// `helper` run with the probe argument: a new pid namespace needs a new process). False in an
/// unprivileged container (no `CAP_SYS_ADMIN`, no user namespaces; or user namespaces under a
/// runtime that hides parts of `/proc`), where only [`crate::Runtime::Chroot`] can run steps.
pub fn sandbox_supported(helper: &crate::Helper) -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        with_private_mounts(|_| ()).is_ok()
            && (!crate::userns::in_user_namespace()
                || std::process::Command::new(&helper.program)
                    .args(&helper.args)
                    .arg(crate::helper::PROC_PROBE_ARG)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()))
    })
}

/// Whether overlayfs mounts work here (probed once, with a real mount in a
/// private mount namespace).
pub fn overlay_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(probe_overlay)
}

fn probe_overlay() -> bool {
    let base = std::env::temp_dir().join(format!(
        ".rbuild-overlay-probe-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    // create_dir: never a directory (or symlink) someone else made at that name.
    if std::fs::create_dir(&base).is_err() {
        return false;
    }
    let dirs = ["lower", "upper", "work", "merged"].map(|d| base.join(d));
    let ok = dirs.iter().all(|d| std::fs::create_dir(d).is_ok())
        && with_private_mounts(|m| {
            m.overlay(std::slice::from_ref(&dirs[0]), &dirs[1], &dirs[2], &dirs[3])
                .is_ok()
        })
        .unwrap_or(false);
    // The work dir holds overlayfs's own `work/incompat/volatile/dirty` (the mount is
    // `volatile`): remove the whole tree. The mount died with the thread's namespace, so it is
    // a plain directory tree that this call created; remove_dir_all follows no symlink.
    let _ = std::fs::remove_dir_all(&base);
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_ancestor_of_paths() {
        let a = PathBuf::from("/a/b/c/d");
        let b = PathBuf::from("/a/b/x");
        assert_eq!(
            common_ancestor([a.as_path(), b.as_path()].into_iter()),
            PathBuf::from("/a/b")
        );
    }

    fn root_or_skip() -> bool {
        if rustix::process::geteuid().is_root() {
            return true;
        }
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "mount tests need root"
        );
        eprintln!("skipping: mount tests need root");
        false
    }

    /// The classic mount(2) fallback (used on kernels without `lowerdir+`)
    /// compacts an option string longer than a page with relative paths.
    #[test]
    fn legacy_overlay_with_long_lowerdir_list() {
        if !root_or_skip() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut lowers = Vec::new();
        for i in 0..60 {
            let l = dir.path().join(format!(
                "quite-a-long-directory-name-for-layer-{i:03}-to-overflow-a-page/diff"
            ));
            std::fs::create_dir_all(&l).unwrap();
            std::fs::write(l.join(format!("f{i}")), format!("{i}")).unwrap();
            std::fs::write(l.join("shared"), format!("{i}")).unwrap();
            lowers.push(l);
        }
        let (upper, work, target) = (
            dir.path().join("upper"),
            dir.path().join("work"),
            dir.path().join("merged"),
        );
        for d in [&upper, &work, &target] {
            std::fs::create_dir(d).unwrap();
        }
        assert!(overlay_options(&lowers, Some((&upper, &work))).len() > MAX_OPTIONS);
        let got = with_private_mounts(|_| {
            overlay_legacy(&lowers, Some((&upper, &work)), &target).unwrap();
            let r = (
                std::fs::read_to_string(target.join("shared")).unwrap(),
                std::fs::read_to_string(target.join("f59")).unwrap(),
            );
            std::fs::write(target.join("new"), "n").unwrap();
            unmount(&target, UnmountFlags::empty()).unwrap();
            r
        })
        .unwrap();
        assert_eq!(got, ("0".to_string(), "59".to_string()));
        assert_eq!(std::fs::read_to_string(upper.join("new")).unwrap(), "n");
    }
}
