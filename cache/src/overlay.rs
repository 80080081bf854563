//! The overlayfs xattr names of the store's layer directories, which depend on the mode:
//! as real root, `trusted.overlay.*`; in a user namespace (rootless mode, where overlayfs is
//! mounted with `userxattr` and `trusted.*` is out of reach) and as root without
//! `CAP_SYS_ADMIN` (an unprivileged container, chroot isolation on the copy snapshotter),
//! `user.overlay.*`. A store keeps the mode it was made in
//! ([`Store::open`](crate::Store::open) refuses the other one).

use std::sync::OnceLock;

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

/// The error for a whiteout (a character device 0:0) that could not be made at `path`.
/// overlayfs refuses to create one (`EPERM`) whoever asks, so a store on overlayfs — the root
/// filesystem of a Docker container or a Kubernetes pod — cannot record deleted files: the
/// message then says so and how to fix it (a volume for the store).
// `f_type`'s type differs between architectures (i64 here).
#[allow(clippy::unnecessary_cast)]
pub fn whiteout_error(path: &std::path::Path, e: rustix::io::Errno) -> std::io::Error {
    let on_overlay = e == rustix::io::Errno::PERM
        && path
            .parent()
            .and_then(|dir| rustix::fs::statfs(dir).ok())
            .is_some_and(|st| st.f_type as i64 == OVERLAYFS_MAGIC);
    if !on_overlay {
        return e.into();
    }
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!(
            "{e}: the store is on overlayfs (a container's root filesystem?), which cannot \
             hold the whiteouts that record deleted files; put the store on a volume: mount \
             one at RBUILD_ROOT (default /var/lib/rbuild as root; e.g. `docker run -v \
             rbuild-store:/var/lib/rbuild`, a Kubernetes emptyDir) or point RBUILD_ROOT/--root \
             at a directory on one (docs/ci.md)"
        ),
    )
}
