//! The solver's side of the copy snapshotter ([`rbuild_cache::copysnap`]): whether this build
//! runs steps on it (forced by `RBUILD_SNAPSHOTTER` or chroot isolation, else the overlay
//! probe's answer remembered per kernel boot), a RUN step's materialized root, and a file op
//! run on materialized directories and diffed into its snapshot.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rbuild_cache::copysnap::{self, baseline, diff_since, materialize};
use rbuild_graph::{FileAction, FileOp};

use crate::{Chain, SolveError, Solver, Value};

/// A RUN step's root in copy mode ([`copysnap::WorkRoot`]: removed when dropped).
#[derive(Debug)]
pub(crate) struct WorkRoot(copysnap::WorkRoot);

impl WorkRoot {
    /// The root directory.
    pub(crate) fn dir(&self) -> &Path {
        self.0.dir()
    }

    /// Write the changes made in the root since it was materialized into `upper`.
    pub(crate) fn diff_into(&self, upper: &Path) -> Result<(), SolveError> {
        Ok(self.0.diff_into(upper)?)
    }
}

impl Solver {
    /// Always with chroot isolation ([`rbuild_executor::Runtime::Chroot`]); otherwise
    /// [`copysnap::use_copy_snapshotter`] with the probe's answer remembered in the store per kernel
    /// boot (metadata `host`/`overlay`: `<boot id> yes|no`): the probe mounts an overlay, and
    /// unmounting it syncs the whole filesystem, which a build should not pay every time.
    pub(crate) fn copy_mode(&self) -> bool {
        // Chroot isolation runs steps in a materialized root: no overlayfs.
        // Nor on a store on overlayfs (a container's root filesystem): it cannot be an
        // overlay's upper layer, and its whiteouts are markers only the copy snapshotter reads.
        if self.cfg.executor.needs_materialized_root()
            || rbuild_cache::overlay::on_overlayfs(self.cfg.store.root())
        {
            return true;
        }
        copysnap::use_copy_snapshotter(|| !self.overlay_probe_says_copy())
    }

    /// The overlay probe's answer (`true`: it does not mount here), once per solver and, through
    /// the store, once per kernel boot.
    fn overlay_probe_says_copy(&self) -> bool {
        *self.copy_mode.get_or_init(|| {
            let store = &self.cfg.store;
            let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
            if let (Some(boot), Ok(Some(v))) = (&boot, store.meta_get("host", "overlay")) {
                if let Some((b, ok)) = v.split_once(' ') {
                    if b == boot {
                        return ok != "yes";
                    }
                }
            }
            let ok = rbuild_executor::overlay_supported();
            if let Some(boot) = boot {
                let v = format!("{boot} {}", if ok { "yes" } else { "no" });
                let _ = store.meta_put("host", "overlay", &v);
            }
            !ok
        })
    }

    /// In copy mode, the materialized root of a step on `chain`; `None` when overlayfs is used.
    pub(crate) fn copy_work_root(&self, chain: &Chain) -> Result<Option<WorkRoot>, SolveError> {
        if !self.copy_mode() {
            return Ok(None);
        }
        let mut layers = self.lowers(chain)?;
        layers.reverse();
        let dir = self.cfg.store.new_tmp_path("rootfs");
        Ok(Some(WorkRoot(copysnap::WorkRoot::create(layers, dir)?)))
    }

    /// A file op in copy mode: the destination chain and every other chain read as a copy
    /// source are materialized under `mnt` (a single-layer source is read in place), the
    /// actions run on those directories, and the changes are diffed into `snap`. The caller
    /// removes `mnt`.
    pub(crate) fn file_copy_mode(
        &self,
        op: &FileOp,
        inputs: &[Value],
        base: &Chain,
        snap: &rbuild_cache::Snapshot,
        mnt: &Path,
    ) -> Result<Result<(), String>, SolveError> {
        let root = mnt.join("root");
        fs::create_dir_all(&root).map_err(|e| io("create directory", &root, e))?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
            .map_err(|e| io("chmod", &root, e))?;
        let mut layers = self.lowers(base)?;
        layers.reverse();
        materialize(&layers, &root)?;
        let since = baseline(&root)?;
        let mut src_dirs: Vec<(usize, PathBuf)> = Vec::new();
        for (i, v) in inputs.iter().enumerate() {
            let used = op
                .actions
                .iter()
                .any(|a| matches!(a, FileAction::Copy(c) if c.src_input == i));
            let Value::Chain(c) = v else { continue };
            if !used || Some(i) == op.dest_input {
                continue;
            }
            let mut src_layers = self.lowers(c)?;
            let dir = if src_layers.len() == 1 {
                // One layer is its own merged view (overlay mode bind-mounts it the same way).
                src_layers.remove(0)
            } else {
                let dir = mnt.join(format!("src{i}"));
                fs::create_dir_all(&dir).map_err(|e| io("create directory", &dir, e))?;
                src_layers.reverse();
                materialize(&src_layers, &dir)?;
                dir
            };
            src_dirs.push((i, dir));
        }
        let r = crate::ops::file::apply_actions(op, inputs, &root, &src_dirs);
        if r.is_ok() {
            diff_since(&layers, &root, &snap.fs, Some(&since))?;
        }
        Ok(r)
    }
}

fn io(what: &str, p: &Path, e: std::io::Error) -> SolveError {
    SolveError::io(format!("{what} {}", p.display()), e)
}
