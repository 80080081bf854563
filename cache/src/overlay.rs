//! The overlayfs xattr names of the store's layer directories, which depend on the mode:
//! as real root, `trusted.overlay.*`; in a user namespace (rootless mode, where overlayfs is
//! mounted with `userxattr` and `trusted.*` is out of reach) and as root without
//! `CAP_SYS_ADMIN` (an unprivileged container, chroot isolation on the copy snapshotter),
//! `user.overlay.*`. A store keeps the mode it was made in
//! ([`Store::open`](crate::Store::open) refuses the other one).

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::OnceLock;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, XattrFlags};
use rustix::io::Errno;

/// Whether this process runs in a user namespace other than the initial one (its uid map is
/// not the identity over all ids). Read once.
pub fn rootless() -> bool {
    static IN: OnceLock<bool> = OnceLock::new();
    *IN.get_or_init(|| {
        std::fs::read_to_string("/proc/self/uid_map")
            .map(|m| m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
            .unwrap_or(false)
    })
}

/// Whether `trusted.*` xattrs are out of reach: [`rootless`], or no `CAP_SYS_ADMIN` (an
/// unprivileged container). Read once.
fn user_xattrs() -> bool {
    static USER: OnceLock<bool> = OnceLock::new();
    *USER.get_or_init(|| {
        rootless()
            || rustix::thread::capabilities(None).is_ok_and(|c| {
                !c.effective
                    .contains(rustix::thread::CapabilitySet::SYS_ADMIN)
            })
    })
}

/// The store mode name: `rootless` (`user.overlay.*` xattrs: a user namespace, or root
/// without `CAP_SYS_ADMIN`) or `root`.
pub fn mode() -> &'static str {
    if user_xattrs() {
        "rootless"
    } else {
        "root"
    }
}

/// The xattr marking an opaque directory in a layer directory of this mode.
pub fn opaque_xattr() -> &'static str {
    if user_xattrs() {
        "user.overlay.opaque"
    } else {
        "trusted.overlay.opaque"
    }
}

/// Whether `name` is an overlayfs-internal xattr of either mode (never part of a layer's
/// content: not written to layer tars, not applied from them, not copied between layers).
pub fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

/// The message for a chown that failed with `EINVAL` in rootless mode: the id is outside the
/// user namespace's map.
pub fn unmapped_id_message(path: &std::path::Path, uid: u32, gid: u32) -> String {
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let size: u64 = map
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum();
    format!(
        "cannot give {} the owner {uid}:{gid}: rootless mode maps only ids 0..{} \
         (see docs/sandbox.md); give your user a subordinate id range in /etc/subuid and \
         /etc/subgid (e.g. `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 \
         $USER`) and install newuidmap/newgidmap (package uidmap)",
        path.display(),
        size.saturating_sub(1)
    )
}

/// The xattr that marks a device node kept as an empty regular file (mode 0) because this
/// process may not create device nodes (rootless mode, an unprivileged container). Its value is
/// `c|b MAJOR MINOR MODE` (mode in octal); layer tars written from the store turn the file back
/// into that device entry, so root consumers of an exported image get the original node. The
/// RUN sandbox binds the real allowed devices over `/dev` anyway.
pub const DEVICE_XATTR: &str = "user.rbuild.device";

/// Whether `name` is an xattr rbuild keeps for itself in the store (overlay markers and
/// [`DEVICE_XATTR`]): never taken from an archive, never written to a layer tar as an xattr.
pub fn is_store_xattr(name: &[u8]) -> bool {
    is_overlay_xattr(name) || name.starts_with(b"user.rbuild.")
}

/// A device kept as a marker file: `(is_char, major, minor, mode)` from a [`DEVICE_XATTR`]
/// value, or `None` when the value is malformed.
pub fn parse_device_marker(value: &[u8]) -> Option<(bool, u32, u32, u32)> {
    let s = std::str::from_utf8(value).ok()?;
    let mut it = s.split(' ');
    let kind = match it.next()? {
        "c" => true,
        "b" => false,
        _ => return None,
    };
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    let mode = u32::from_str_radix(it.next()?, 8).ok()?;
    if it.next().is_some() || mode > 0o7777 {
        return None;
    }
    Some((kind, major, minor, mode))
}

/// The [`DEVICE_XATTR`] value for a device.
pub fn device_marker(is_char: bool, major: u32, minor: u32, mode: u32) -> String {
    format!(
        "{} {major} {minor} {:o}",
        if is_char { "c" } else { "b" },
        mode & 0o7777
    )
}

/// `statfs` magic of overlayfs.
const OVERLAYFS_MAGIC: i64 = 0x794c_7630;

/// Whether `path` is on overlayfs (the root filesystem of a Docker container or a Kubernetes
/// pod). overlayfs cannot be the upper layer of another overlay mount and refuses to create
/// whiteouts, so a store there runs on the copy snapshotter and keeps whiteouts as markers
/// ([`make_whiteout_at`]).
// `f_type`'s type differs between architectures (i64 here).
#[allow(clippy::unnecessary_cast)]
pub fn on_overlayfs(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|st| st.f_type as i64 == OVERLAYFS_MAGIC)
}

/// The device an empty regular file at `path` stands for when it carries [`DEVICE_XATTR`]:
/// `(is_char, major, minor, mode)`.
pub fn device_marker_of(path: &Path) -> Option<(bool, u32, u32, u32)> {
    let md = std::fs::symlink_metadata(path).ok()?;
    if !md.is_file() || md.len() != 0 {
        return None;
    }
    let mut buf = [0u8; 64];
    let n = rustix::fs::lgetxattr(path, DEVICE_XATTR, &mut buf).ok()?;
    parse_device_marker(&buf[..n])
}

/// Whether the entry at `path`, whose `lstat` is `md`, is a whiteout of a layer directory: a
/// character device 0:0, or an empty regular file marked as one (see [`make_whiteout_at`]).
pub fn is_whiteout(path: &Path, md: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let ft = md.file_type();
    if ft.is_char_device() {
        return md.rdev() == 0;
    }
    ft.is_file() && md.len() == 0 && matches!(device_marker_of(path), Some((true, 0, 0, _)))
}

/// Make a whiteout named `name` in the directory `dir`: a character device 0:0 (overlayfs's
/// format). Where the filesystem refuses one (`EPERM`: overlayfs, which never lets anyone
/// create a whiteout on it; also older kernels in a user namespace) it is kept as a marker like
/// any device node rbuild may not create: an empty mode-0 file whose [`DEVICE_XATTR`] says
/// `c 0 0`, which [`is_whiteout`] (the copy snapshotter, the layer writer) reads as the
/// whiteout. Such a store is never mounted by overlayfs (see [`on_overlayfs`]).
pub fn make_whiteout_at(dir: impl AsFd, name: &OsStr) -> std::io::Result<()> {
    let dir = dir.as_fd();
    let e = match rustix::fs::mknodat(
        dir,
        name,
        FileType::CharacterDevice,
        Mode::empty(),
        rustix::fs::makedev(0, 0),
    ) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    if e != Errno::PERM {
        return Err(e.into());
    }
    let marked = rustix::fs::openat(
        dir,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .and_then(|fd| {
        let value = device_marker(true, 0, 0, 0);
        rustix::fs::fsetxattr(&fd, DEVICE_XATTR, value.as_bytes(), XattrFlags::empty()).inspect_err(
            |_| {
                let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
            },
        )
    });
    marked.map_err(|m| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{e}; keeping it as a marker file failed too ({m}): the store's filesystem \
                 cannot record deleted files; put the store on another filesystem (a volume: \
                 point RBUILD_ROOT/--root at it; docs/ci.md)"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn whiteout_markers_are_whiteouts_and_nothing_else_is() {
        let d = tempfile::tempdir().unwrap();
        let dir = std::fs::File::open(d.path()).unwrap();
        let mark = |name: &str, value: &str| {
            let p = d.path().join(name);
            std::fs::write(&p, b"").unwrap();
            rustix::fs::lsetxattr(&p, DEVICE_XATTR, value.as_bytes(), XattrFlags::empty()).unwrap();
            p
        };
        let is = |p: &Path| is_whiteout(p, &std::fs::symlink_metadata(p).unwrap());
        // The marker make_whiteout_at keeps where mknod is refused (as on overlayfs).
        assert!(is(&mark("wh", &device_marker(true, 0, 0, 0))));
        // Other devices' markers, a marker with content, plain files: not whiteouts.
        assert!(!is(&mark("null", &device_marker(true, 1, 3, 0o666))));
        assert!(!is(&mark("blk", &device_marker(false, 0, 0, 0))));
        let full = mark("full", &device_marker(true, 0, 0, 0));
        std::fs::write(&full, b"x").unwrap();
        assert!(!is(&full));
        std::fs::write(d.path().join("plain"), b"").unwrap();
        assert!(!is(&d.path().join("plain")));
        // A real whiteout, where this process may make one (root on ext4/tmpfs).
        if make_whiteout_at(&dir, OsStr::new("real")).is_ok() {
            assert!(is(&d.path().join("real")));
        }
    }
}
