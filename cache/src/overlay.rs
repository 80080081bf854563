//! The overlayfs xattr names of the store's layer directories, which depend on the mode:
//! as real root, `trusted.overlay.*`; in a user namespace (rootless mode, where overlayfs is
//! mounted with `userxattr` and `trusted.*` is out of reach), `user.overlay.*`. A store keeps
//! the mode it was made in ([`Store::open`](crate::Store::open) refuses the other one).

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

/// The store mode name: `rootless` or `root`.
pub fn mode() -> &'static str {
    if rootless() {
        "rootless"
    } else {
        "root"
    }
}

/// The xattr marking an opaque directory in a layer directory of this mode.
pub fn opaque_xattr() -> &'static str {
    if rootless() {
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
