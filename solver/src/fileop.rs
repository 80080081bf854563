//! File ops: COPY/ADD/WORKDIR-style edits of a new layer, done in-process.
//!
//! The destination is an overlay (input chain as lowers, a fresh snapshot as upper) mounted in
//! a private mount namespace that lives only as long as the op's thread; source chains are
//! mounted read-only beside it and the local context is read in place. Paths inside a rootfs
//! are resolved with [`resolve_in_root`], which follows symlinks as if the rootfs were `/`, so
//! a layer's `etc -> /host/etc` style link can never reach outside it.

use std::fs;
use std::io::{self, Read as _};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rbuild_cache::context::{ExcludeMatcher, Selector};
use rbuild_graph::{Chmod, CopyAction, FileAction, FileOp, IdSpec, Node, Owner};

use crate::{Chain, SolveError, Solver, Value};

const MAX_SYMLINKS: usize = 40;

impl Solver {
    pub(crate) fn run_file(
        &self,
        node: &Node,
        op: &FileOp,
        inputs: &[Value],
    ) -> Result<Chain, SolveError> {
        let store = &self.cfg.store;
        let step = node.meta.description.clone();
        let lines = node.meta.lines;
        let fail = |message: String| SolveError::Step {
            step: step.clone(),
            message,
            lines,
        };
        let base: Chain = match op.dest_input {
            Some(i) => match inputs.get(i) {
                Some(Value::Chain(c)) => c.clone(),
                _ => return Err(fail("destination input is not a filesystem".into())),
            },
            None => Vec::new(),
        };
        let snap = store.new_snapshot()?;
        let mnt = store.tmp_dir().join(format!("mnt-{}", snap.id));
        let result = if self.copy_mode() {
            self.file_copy_mode(op, inputs, &base, &snap, &mnt)
        } else {
            self.file_in_namespace(op, inputs, &base, &snap, &mnt)
        };
        let _ = fs::remove_dir_all(&mnt);
        match result {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                let _ = store.remove_snapshot(&snap.id);
                return Err(fail(message));
            }
            Err(e) => {
                let _ = store.remove_snapshot(&snap.id);
                return Err(e);
            }
        }
        let layer = self.commit_layer(&snap)?;
        let mut out = base;
        out.push(layer);
        Ok(out)
    }

    fn file_in_namespace(
        &self,
        op: &FileOp,
        inputs: &[Value],
        base: &Chain,
        snap: &rbuild_cache::Snapshot,
        mnt: &Path,
    ) -> Result<Result<(), String>, SolveError> {
        let root = mnt.join("root");
        fs::create_dir_all(&root)
            .map_err(|e| SolveError::io(format!("creating {}", root.display()), e))?;
        // Which chain inputs are read as copy sources (each gets a read-only mount).
        let mut src_chains: Vec<(usize, PathBuf, Vec<PathBuf>)> = Vec::new();
        for (i, v) in inputs.iter().enumerate() {
            let used = op
                .actions
                .iter()
                .any(|a| matches!(a, FileAction::Copy(c) if c.src_input == i));
            if let (true, Value::Chain(c)) = (used, v) {
                if Some(i) != op.dest_input {
                    let dir = mnt.join(format!("src{i}"));
                    fs::create_dir_all(&dir)
                        .map_err(|e| SolveError::io(format!("creating {}", dir.display()), e))?;
                    src_chains.push((i, dir, self.lowers(c)?));
                }
            }
        }
        let lowers = self.lowers(base)?;
        let r = rbuild_executor::with_private_mounts(|m| -> Result<(), String> {
            m.overlay(&lowers, &snap.fs, &snap.work, &root)
                .map_err(|e| format!("mounting the destination: {e}"))?;
            for (_, dir, l) in &src_chains {
                m.overlay_ro(l, dir)
                    .map_err(|e| format!("mounting a copy source: {e}"))?;
            }
            let src_dirs: Vec<(usize, PathBuf)> =
                src_chains.iter().map(|(i, d, _)| (*i, d.clone())).collect();
            apply_actions(op, inputs, &root, &src_dirs)
        })?;
        Ok(r)
    }
}

/// Run a file op's actions on the destination root `root` (an overlay mount or, in copy mode,
/// a plain directory); `src_dirs` are the merged views of the chain inputs read as copy
/// sources, by input index.
pub(crate) fn apply_actions(
    op: &FileOp,
    inputs: &[Value],
    root: &Path,
    src_dirs: &[(usize, PathBuf)],
) -> Result<(), String> {
    let dest_input = op.dest_input;
    let mut ctx = Ctx {
        root,
        ids: None,
        user_exclude: None,
    };
    for action in &op.actions {
        match action {
            FileAction::Copy(c) => {
                let (src_root, exclude, from_context) = match inputs.get(c.src_input) {
                    Some(Value::Local(d)) => (
                        d.path.clone(),
                        ExcludeMatcher::new(&d.exclude).map_err(|e| e.to_string())?,
                        true,
                    ),
                    Some(Value::Chain(_)) if Some(c.src_input) == dest_input => {
                        (root.to_path_buf(), empty_matcher()?, false)
                    }
                    Some(Value::Chain(_)) => {
                        let dir = src_dirs
                            .iter()
                            .find(|(i, _)| *i == c.src_input)
                            .map(|(_, d)| d.clone())
                            .ok_or("copy source not mounted")?;
                        (dir, empty_matcher()?, false)
                    }
                    None => return Err("copy source input missing".into()),
                };
                ctx.copy(c, &src_root, &exclude, from_context)?;
            }
            FileAction::Mkdir {
                path,
                mode,
                make_parents,
                owner,
            } => ctx.mkdir(path, *mode, *make_parents, owner.as_ref())?,
            FileAction::Mkfile {
                path,
                mode,
                data,
                owner,
            } => ctx.mkfile(path, *mode, data, owner.as_ref())?,
            FileAction::Rm {
                path,
                allow_not_found,
                allow_wildcard: _,
            } => ctx.rm(path, *allow_not_found)?,
            FileAction::Symlink {
                target,
                link,
                owner,
            } => ctx.symlink(target, link, owner.as_ref())?,
        }
    }
    Ok(())
}

fn empty_matcher() -> Result<ExcludeMatcher, String> {
    ExcludeMatcher::new(&[]).map_err(|e| e.to_string())
}

/// Resolve `rel` (relative to `root`, may start with `/`) inside `root`, following symlinks as
/// if `root` were `/`. The last component is followed only when `follow_last`. Missing
/// components are kept as they are (so the result can be created).
pub fn resolve_in_root(root: &Path, rel: &str, follow_last: bool) -> Result<PathBuf, String> {
    let mut stack: Vec<String> = Vec::new();
    let mut pending: Vec<String> = components(rel);
    pending.reverse();
    let mut links = 0usize;
    while let Some(c) = pending.pop() {
        if c == ".." {
            stack.pop();
            continue;
        }
        let is_last = pending.is_empty();
        let mut candidate = root.to_path_buf();
        for s in &stack {
            candidate.push(s);
        }
        candidate.push(&c);
        if is_last && !follow_last {
            stack.push(c);
            break;
        }
        match fs::symlink_metadata(&candidate) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(format!("too many levels of symbolic links at {rel}"));
                }
                let target = fs::read_link(&candidate).map_err(|e| e.to_string())?;
                let t = target.to_string_lossy().to_string();
                if t.starts_with('/') {
                    stack.clear();
                }
                let mut more = components(&t);
                more.reverse();
                pending.extend(more);
            }
            _ => stack.push(c),
        }
    }
    let mut out = root.to_path_buf();
    for s in stack {
        out.push(s);
    }
    Ok(out)
}

fn components(p: &str) -> Vec<String> {
    Path::new(p)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().to_string()),
            Component::ParentDir => Some("..".to_string()),
            _ => None,
        })
        .collect()
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Numeric ids from the destination's /etc/passwd and /etc/group.
struct Ids {
    users: Vec<(String, u32, u32)>,
    groups: Vec<(String, u32)>,
}

struct Ctx<'a> {
    root: &'a Path,
    ids: Option<Ids>,
    /// `COPY --exclude` patterns of the copy in progress, with the source-relative path of
    /// the match being copied (patterns match paths below it, or paths from the source root).
    user_exclude: Option<(ExcludeMatcher, PathBuf)>,
}

impl Ctx<'_> {
    fn ids(&mut self) -> &Ids {
        let root = self.root;
        self.ids.get_or_insert_with(|| {
            let read = |p: &str| {
                resolve_in_root(root, p, true)
                    .ok()
                    .and_then(|p| fs::read_to_string(p).ok())
                    .unwrap_or_default()
            };
            let users = read("/etc/passwd")
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    Some((
                        f.first()?.to_string(),
                        f.get(2)?.parse().ok()?,
                        f.get(3)?.parse().ok()?,
                    ))
                })
                .collect();
            let groups = read("/etc/group")
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    Some((f.first()?.to_string(), f.get(2)?.parse().ok()?))
                })
                .collect();
            Ids { users, groups }
        })
    }

    /// (uid, gid) for an owner spec. Like BuildKit, a user name without group takes the
    /// user's primary group from /etc/passwd; a numeric uid without group uses the uid as gid.
    fn owner(&mut self, o: &Owner) -> Result<(u32, u32), String> {
        let (uid, primary) = match &o.user {
            IdSpec::Id(n) => (*n, *n),
            IdSpec::Name(n) => self
                .ids()
                .users
                .iter()
                .find(|u| &u.0 == n)
                .map(|u| (u.1, u.2))
                .ok_or_else(|| {
                    format!("unable to find user {n}: no matching entries in passwd file")
                })?,
        };
        let gid = match &o.group {
            None => primary,
            Some(IdSpec::Id(n)) => *n,
            Some(IdSpec::Name(n)) => self
                .ids()
                .groups
                .iter()
                .find(|g| &g.0 == n)
                .map(|g| g.1)
                .ok_or_else(|| {
                    format!("unable to find group {n}: no matching entries in group file")
                })?,
        };
        Ok((uid, gid))
    }

    fn copy(
        &mut self,
        c: &CopyAction,
        src_root: &Path,
        exclude: &ExcludeMatcher,
        from_context: bool,
    ) -> Result<(), String> {
        let wildcard = c.allow_wildcard && has_glob(&c.src);
        // Matches are found without following their last component, so a followed symlink
        // is copied under its own name (BuildKit), then resolved inside the source root.
        let sel = Selector {
            path: c.src.clone(),
            follow_symlinks: false,
            allow_wildcard: c.allow_wildcard,
        };
        let src_root = &fs::canonicalize(src_root)
            .map_err(|e| format!("opening the copy source {}: {e}", src_root.display()))?;
        let matches = match rbuild_cache::context::expand(src_root, &sel, exclude) {
            Ok(m) => m,
            Err(rbuild_cache::CacheError::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.to_string()),
        };
        if matches.is_empty() {
            if wildcard && c.allow_empty_wildcard {
                return Ok(());
            }
            let what = if from_context {
                "build context"
            } else {
                "source stage"
            };
            return Err(format!(
                "failed to compute cache key: \"{}\" not found in {what}",
                c.src
            ));
        }
        let owner = match &c.owner {
            Some(o) => Some(self.owner(o)?),
            None if from_context => Some((0, 0)),
            None => None,
        };
        let user_exclude = if c.exclude.is_empty() {
            None
        } else {
            Some(ExcludeMatcher::new(&c.exclude).map_err(|e| format!("--exclude: {e}"))?)
        };
        // `--parents`: the part of the source path kept under the destination starts after a
        // `/./` pivot, or at the source root.
        let pivot: PathBuf = match c.src.split_once("/./") {
            Some((before, _)) if c.parents => PathBuf::from(before.trim_start_matches('/')),
            _ => PathBuf::new(),
        };
        let dest_rel = c.dest.clone();
        // A wildcard with a single match copies to `dest` as named (BuildKit); several
        // matches need a directory.
        let dest_dir_hint = dest_rel.ends_with('/') || matches.len() > 1 || c.parents;
        let dest_resolved = resolve_in_root(self.root, &dest_rel, true)?;
        let dest_is_dir = dest_dir_hint || dest_resolved.is_dir();
        for named in &matches {
            let rel_in_src = named.strip_prefix(src_root).unwrap_or(named).to_path_buf();
            let is_link = fs::symlink_metadata(named).is_ok_and(|md| md.file_type().is_symlink());
            let resolved;
            let m = if c.follow_symlinks && is_link {
                resolved = resolve_in_root(src_root, &rel_in_src.to_string_lossy(), true)?;
                &resolved
            } else {
                named
            };
            let md = fs::symlink_metadata(m)
                .map_err(|e| format!("{}: {e}", Path::new("/").join(&rel_in_src).display()))?;
            if let Some(ex) = &user_exclude {
                let rel_text = rel_in_src.to_string_lossy();
                let name = named
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if !md.is_dir() && (ex.is_excluded(&rel_text) || ex.is_excluded(&name)) {
                    continue;
                }
            }
            self.user_exclude = user_exclude
                .as_ref()
                .map(|ex| (ex.clone(), rel_in_src.clone()));
            if c.parents {
                let kept = rel_in_src.strip_prefix(&pivot).unwrap_or(&rel_in_src);
                let target = dest_resolved.join(kept);
                if md.is_dir() {
                    self.mkdir_all(&target, owner)?;
                    self.copy_tree(m, &target, &rel_in_src, c, owner, exclude, from_context)?;
                } else {
                    if let Some(parent) = target.parent() {
                        self.mkdir_all(parent, owner)?;
                    }
                    self.copy_leaf(m, &target, &md, c, owner)?;
                }
                continue;
            }
            if c.attempt_unpack && md.is_file() && self.unpack(m, &dest_resolved, owner)? {
                continue;
            }
            if md.is_dir() && c.dir_copy_contents {
                self.mkdir_all(&dest_resolved, owner)?;
                self.copy_tree(
                    m,
                    &dest_resolved,
                    &rel_in_src,
                    c,
                    owner,
                    exclude,
                    from_context,
                )?;
            } else {
                let name = named
                    .file_name()
                    .or_else(|| m.file_name())
                    .map(|n| n.to_os_string())
                    .unwrap_or_default();
                let target = if dest_is_dir {
                    self.mkdir_all(&dest_resolved, owner)?;
                    dest_resolved.join(&name)
                } else {
                    if let Some(parent) = dest_resolved.parent() {
                        self.mkdir_all(parent, owner)?;
                    }
                    dest_resolved.clone()
                };
                if md.is_dir() {
                    let existed = fs::symlink_metadata(&target).is_ok_and(|t| t.is_dir());
                    self.copy_dir_entry(m, &target, &md, c, owner)?;
                    self.copy_tree(m, &target, &rel_in_src, c, owner, exclude, from_context)?;
                    if !existed {
                        finish_dir(&target, &md)?;
                    }
                } else {
                    self.copy_leaf(m, &target, &md, c, owner)?;
                }
            }
        }
        Ok(())
    }

    /// ADD of a local tar (plain or gzip, detected by content): extract into `dest` as a
    /// directory. Returns false when the file is not an archive (it is then copied as is).
    fn unpack(
        &mut self,
        src: &Path,
        dest: &Path,
        owner: Option<(u32, u32)>,
    ) -> Result<bool, String> {
        use rbuild_oci::ArchiveKind;
        match rbuild_oci::archive_kind(src).map_err(|e| e.to_string())? {
            ArchiveKind::None => Ok(false),
            ArchiveKind::Unsupported("bzip2") => {
                let f = fs::File::open(src).map_err(|e| format!("{}: {e}", src.display()))?;
                let dec = bzip2::read::MultiBzDecoder::new(io::BufReader::new(f));
                self.unpack_stream(dec, src, dest, owner)
            }
            ArchiveKind::Unsupported("xz") => {
                // lzma-rs decodes into a writer: stage the inner tar in a temporary file.
                let tmp = std::env::temp_dir().join(format!(
                    "rbuild-xz-{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos())
                        .unwrap_or_default()
                ));
                let staged = (|| -> Result<(), String> {
                    let f = fs::File::open(src).map_err(|e| format!("{}: {e}", src.display()))?;
                    let mut out =
                        fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
                    lzma_rs::xz_decompress(&mut io::BufReader::new(f), &mut out)
                        .map_err(|e| format!("decompressing {}: {e}", src.display()))
                })();
                let r = staged.and_then(|()| {
                    let f = fs::File::open(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
                    self.unpack_stream(io::BufReader::new(f), src, dest, owner)
                });
                let _ = fs::remove_file(&tmp);
                r
            }
            ArchiveKind::Unsupported(kind) => Err(format!(
                "ADD {}: unpacking {kind} archives is not supported yet",
                src.file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default()
            )),
            ArchiveKind::Tar | ArchiveKind::GzipTar => {
                self.mkdir_all(dest, owner)?;
                let f = fs::File::open(src).map_err(|e| format!("{}: {e}", src.display()))?;
                rbuild_oci::extract_archive(io::BufReader::new(f), dest)
                    .map_err(|e| format!("unpacking {}: {e}", src.display()))?;
                Ok(true)
            }
        }
    }

    /// Unpack a decompressed stream when it holds a tar (ustar magic in the first header);
    /// returns false otherwise (the file is then copied as it is, like BuildKit).
    fn unpack_stream(
        &mut self,
        mut r: impl io::Read,
        src: &Path,
        dest: &Path,
        owner: Option<(u32, u32)>,
    ) -> Result<bool, String> {
        let mut head = vec![0u8; 512];
        let mut n = 0;
        while n < head.len() {
            match r.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("decompressing {}: {e}", src.display())),
            }
        }
        if n < 512 || head.get(257..262) != Some(b"ustar".as_slice()) {
            return Ok(false);
        }
        self.mkdir_all(dest, owner)?;
        rbuild_oci::extract_archive(io::Cursor::new(head).chain(r), dest)
            .map_err(|e| format!("unpacking {}: {e}", src.display()))?;
        Ok(true)
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_tree(
        &mut self,
        src: &Path,
        dst: &Path,
        rel: &Path,
        c: &CopyAction,
        owner: Option<(u32, u32)>,
        exclude: &ExcludeMatcher,
        from_context: bool,
    ) -> Result<(), String> {
        let mut entries: Vec<_> = fs::read_dir(src)
            .map_err(|e| format!("{}: {e}", src.display()))?
            .filter_map(|e| e.ok())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            let child_rel = rel.join(&name);
            let rel_text = child_rel.to_string_lossy();
            let (user_excluded, user_can_skip) = match &self.user_exclude {
                Some((ex, base)) => {
                    let below = child_rel.strip_prefix(base).unwrap_or(&child_rel);
                    let below = below.to_string_lossy();
                    let hit = ex.is_excluded(&below) || ex.is_excluded(&rel_text);
                    (hit, hit && ex.can_skip_dir(&below))
                }
                None => (false, false),
            };
            let ignored = from_context && exclude.is_excluded(&rel_text);
            let excluded = ignored || user_excluded;
            let path = e.path();
            let md = fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let target = dst.join(&name);
            if md.is_dir() {
                // An excluded directory is still walked when a `!` pattern may re-include
                // something below it; it is kept only if something was copied into it.
                if (ignored && exclude.can_skip_dir(&rel_text)) || user_can_skip {
                    continue;
                }
                let existed = fs::symlink_metadata(&target).is_ok_and(|t| t.is_dir());
                self.copy_dir_entry(&path, &target, &md, c, owner)?;
                self.copy_tree(&path, &target, &child_rel, c, owner, exclude, from_context)?;
                if excluded && !existed && is_empty_dir(&target) {
                    fs::remove_dir(&target).map_err(|e| format!("{}: {e}", target.display()))?;
                    continue;
                }
                if !existed {
                    finish_dir(&target, &md)?;
                }
            } else if excluded {
                continue;
            } else {
                self.copy_leaf(&path, &target, &md, c, owner)?;
            }
        }
        Ok(())
    }

    fn copy_dir_entry(
        &mut self,
        _src: &Path,
        target: &Path,
        md: &fs::Metadata,
        c: &CopyAction,
        owner: Option<(u32, u32)>,
    ) -> Result<(), String> {
        match fs::symlink_metadata(target) {
            // An existing directory keeps its owner and mode (BuildKit).
            Ok(t) if t.is_dir() => return Ok(()),
            Ok(_) => {
                fs::remove_file(target).map_err(|e| format!("{}: {e}", target.display()))?;
                fs::create_dir(target).map_err(|e| format!("{}: {e}", target.display()))?;
            }
            Err(_) => fs::create_dir(target).map_err(|e| format!("{}: {e}", target.display()))?,
        }
        let mode = apply_chmod(c.mode.as_ref(), md.mode() & 0o7777, true)?;
        fs::set_permissions(target, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: {e}", target.display()))?;
        let (uid, gid) = owner.unwrap_or((md.uid(), md.gid()));
        lchown(target, uid, gid)
    }

    fn copy_leaf(
        &mut self,
        src: &Path,
        target: &Path,
        md: &fs::Metadata,
        c: &CopyAction,
        owner: Option<(u32, u32)>,
    ) -> Result<(), String> {
        let ft = md.file_type();
        let (uid, gid) = owner.unwrap_or((md.uid(), md.gid()));
        // A device node kept as a marker file (rootless unpack) is skipped like a device, so a
        // rootless COPY gives the layer a root one gives.
        if ft.is_file() && md.len() == 0 && rbuild_oci::device_marker_of(src).is_some() {
            return Ok(());
        }
        if ft.is_file() {
            // The common case (nothing at the target yet) costs two opens and fd calls only;
            // whatever is in the way is removed first otherwise.
            let mode = apply_chmod(c.mode.as_ref(), md.mode() & 0o7777, false)?;
            let dst = match create_new(target) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    remove_existing(target)?;
                    create_new(target).map_err(|e| format!("{}: {e}", target.display()))?
                }
                Err(e) => return Err(format!("{}: {e}", target.display())),
            };
            let from = fs::File::open(src).map_err(|e| format!("{}: {e}", src.display()))?;
            copy_data(&from, &dst, md.len())
                .map_err(|e| format!("copying {}: {e}", src.display()))?;
            let t = md.modified().map_err(|e| e.to_string())?;
            std::os::unix::fs::fchown(&dst, Some(uid), Some(gid))
                .map_err(|e| chown_error(target, uid, gid, e))?;
            dst.set_permissions(fs::Permissions::from_mode(mode))
                .and_then(|()| dst.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t)))
                .map_err(|e| format!("{}: {e}", target.display()))?;
            return Ok(());
        }
        remove_existing(target)?;
        if ft.is_symlink() {
            let link = fs::read_link(src).map_err(|e| format!("{}: {e}", src.display()))?;
            symlink(&link, target).map_err(|e| format!("{}: {e}", target.display()))?;
            lchown(target, uid, gid)?;
            return set_mtime(target, md, false);
        }
        // Devices, fifos and sockets are not copied (Docker skips sockets; devices need mknod).
        Ok(())
    }

    /// mkdir -p of a resolved host path inside the root; new dirs get 0755 and `owner`.
    fn mkdir_all(&mut self, path: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
        if path.is_dir() {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut cur = path.to_path_buf();
        while !cur.exists() && cur.starts_with(self.root) && cur != self.root {
            missing.push(cur.clone());
            if !cur.pop() {
                break;
            }
        }
        for dir in missing.iter().rev() {
            fs::create_dir(dir).map_err(|e| format!("creating {}: {e}", self.show(dir)))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("{}: {e}", self.show(dir)))?;
            if let Some((u, g)) = owner {
                lchown(dir, u, g)?;
            }
        }
        if !path.is_dir() {
            return Err(format!("{} exists and is not a directory", self.show(path)));
        }
        Ok(())
    }

    fn show(&self, p: &Path) -> String {
        format!("/{}", p.strip_prefix(self.root).unwrap_or(p).display())
    }

    fn mkdir(
        &mut self,
        path: &str,
        mode: u32,
        parents: bool,
        owner: Option<&Owner>,
    ) -> Result<(), String> {
        let owner = match owner {
            Some(o) => Some(self.owner(o)?),
            None => None,
        };
        let target = resolve_in_root(self.root, path, true)?;
        if target.is_dir() {
            return Ok(());
        }
        if parents {
            if let Some(p) = target.parent() {
                self.mkdir_all(p, owner)?;
            }
        }
        fs::create_dir(&target).map_err(|e| format!("mkdir {path}: {e}"))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("mkdir {path}: {e}"))?;
        if let Some((u, g)) = owner {
            lchown(&target, u, g)?;
        }
        Ok(())
    }

    fn mkfile(
        &mut self,
        path: &str,
        mode: u32,
        data: &[u8],
        owner: Option<&Owner>,
    ) -> Result<(), String> {
        let owner = match owner {
            Some(o) => Some(self.owner(o)?),
            None => None,
        };
        let target = resolve_in_root(self.root, path, false)?;
        if let Some(p) = target.parent() {
            self.mkdir_all(p, owner)?;
        }
        if target.is_dir() {
            return Err(format!("{path} is a directory"));
        }
        let _ = fs::remove_file(&target);
        fs::write(&target, data).map_err(|e| format!("writing {path}: {e}"))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{path}: {e}"))?;
        if let Some((u, g)) = owner {
            lchown(&target, u, g)?;
        }
        Ok(())
    }

    fn rm(&mut self, path: &str, allow_not_found: bool) -> Result<(), String> {
        let target = resolve_in_root(self.root, path, false)?;
        match fs::symlink_metadata(&target) {
            Ok(md) if md.is_dir() => {
                fs::remove_dir_all(&target).map_err(|e| format!("rm {path}: {e}"))
            }
            Ok(_) => fs::remove_file(&target).map_err(|e| format!("rm {path}: {e}")),
            Err(_) if allow_not_found => Ok(()),
            Err(e) => Err(format!("rm {path}: {e}")),
        }
    }

    fn symlink(&mut self, target: &str, link: &str, owner: Option<&Owner>) -> Result<(), String> {
        let owner = match owner {
            Some(o) => Some(self.owner(o)?),
            None => None,
        };
        let at = resolve_in_root(self.root, link, false)?;
        if let Some(p) = at.parent() {
            self.mkdir_all(p, None)?;
        }
        symlink(target, &at).map_err(|e| format!("symlink {link}: {e}"))?;
        if let Some((u, g)) = owner {
            lchown(&at, u, g)?;
        }
        Ok(())
    }
}

/// Create a regular file that must not exist yet (never following a symlink at `p`).
fn create_new(p: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
}

/// Remove whatever is at `p` (a directory recursively); nothing there is fine.
fn remove_existing(p: &Path) -> Result<(), String> {
    match fs::symlink_metadata(p) {
        Ok(t) if t.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(_) => Ok(()),
    }
    .map_err(|e| format!("{}: {e}", p.display()))
}

/// Copy a file's `len` bytes with sendfile (no user-space copy, one call for a small file);
/// falls back to read/write where the filesystems do not support it.
fn copy_data(from: &fs::File, to: &fs::File, len: u64) -> io::Result<()> {
    let mut done = 0u64;
    loop {
        let want = (len.saturating_sub(done)).clamp(1 << 16, 1 << 30) as usize;
        match rustix::fs::sendfile(to, from, None, want) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                done += n as u64;
                // The size stat saw when the step's cache key was computed: done.
                if done >= len {
                    return Ok(());
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) if done == 0 => {
                let (mut r, mut w) = (from, to);
                io::copy(&mut r, &mut w)?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn is_empty_dir(p: &Path) -> bool {
    fs::read_dir(p)
        .map(|mut r| r.next().is_none())
        .unwrap_or(false)
}

fn finish_dir(target: &Path, md: &fs::Metadata) -> Result<(), String> {
    set_mtime(target, md, true)
}

fn lchown(p: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(|e| chown_error(p, uid, gid, e))
}

/// A failed chown; rootless, EINVAL means an id outside the user namespace's map.
fn chown_error(p: &Path, uid: u32, gid: u32, e: io::Error) -> String {
    if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
        && rbuild_cache::overlay::rootless()
    {
        return rbuild_cache::overlay::unmapped_id_message(p, uid, gid);
    }
    format!("chown {}: {e}", p.display())
}

fn set_mtime(p: &Path, md: &fs::Metadata, follow: bool) -> Result<(), String> {
    let t = md.modified().map_err(|e| e.to_string())?;
    let times = fs::FileTimes::new().set_modified(t).set_accessed(t);
    if follow {
        let f = fs::File::options()
            .read(true)
            .open(p)
            .or_else(|_| fs::File::open(p))
            .map_err(|e| format!("{}: {e}", p.display()))?;
        f.set_times(times)
            .map_err(|e| format!("{}: {e}", p.display()))
    } else {
        // Symlink mtimes are not settable portably without utimensat(AT_SYMLINK_NOFOLLOW);
        // the layer writer clamps them with SOURCE_DATE_EPOCH when reproducibility is asked.
        Ok(())
    }
}

/// Apply a `--chmod` to a mode. Octal replaces the permission bits; symbolic edits them.
pub fn apply_chmod(chmod: Option<&Chmod>, mode: u32, is_dir: bool) -> Result<u32, String> {
    match chmod {
        None => Ok(mode),
        Some(Chmod::Octal(m)) => Ok(*m & 0o7777),
        Some(Chmod::Symbolic(s)) => symbolic_mode(s, mode, is_dir),
    }
}

/// Parse and apply a symbolic mode such as `u+x,g-w,o=r` or `a+X`.
pub fn symbolic_mode(spec: &str, mut mode: u32, is_dir: bool) -> Result<u32, String> {
    for clause in spec.split(',') {
        let bad = || format!("invalid chmod {spec:?}");
        let op_pos = clause.find(['+', '-', '=']).ok_or_else(bad)?;
        let (who, rest) = clause.split_at(op_pos);
        let mut mask = 0u32;
        for ch in who.chars() {
            mask |= match ch {
                'u' => 0o4700,
                'g' => 0o2070,
                'o' => 0o1007,
                'a' => 0o7777,
                _ => return Err(bad()),
            };
        }
        if who.is_empty() {
            mask = 0o7777;
        }
        let mut chars = rest.chars();
        let op = chars.next().ok_or_else(bad)?;
        let mut bits = 0u32;
        for ch in chars {
            bits |= match ch {
                'r' => 0o444,
                'w' => 0o222,
                'x' => 0o111,
                'X' if is_dir || mode & 0o111 != 0 => 0o111,
                'X' => 0,
                's' => 0o6000,
                't' => 0o1000,
                _ => return Err(bad()),
            };
        }
        let bits = bits & mask;
        match op {
            '+' => mode |= bits,
            '-' => mode &= !bits,
            _ => mode = (mode & !(mask & 0o777)) | bits,
        }
    }
    Ok(mode & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_in_root_clamps_absolute_and_dotdot_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        symlink("/usr/bin", root.join("bin")).unwrap();
        symlink("../../../../etc", root.join("usr/escape")).unwrap();
        assert_eq!(
            resolve_in_root(root, "/bin/sh", true).unwrap(),
            root.join("usr/bin/sh")
        );
        assert_eq!(
            resolve_in_root(root, "/usr/escape/passwd", true).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(root, "/../../x", true).unwrap(),
            root.join("x")
        );
        // last component not followed
        assert_eq!(
            resolve_in_root(root, "/bin", false).unwrap(),
            root.join("bin")
        );
        symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_in_root(root, "/loop/x", true).is_err());
    }

    #[test]
    fn symbolic_chmod() {
        assert_eq!(symbolic_mode("u+x", 0o644, false).unwrap(), 0o744);
        assert_eq!(symbolic_mode("go-r", 0o644, false).unwrap(), 0o600);
        assert_eq!(symbolic_mode("a=r", 0o755, false).unwrap(), 0o444);
        assert_eq!(symbolic_mode("a+X", 0o644, true).unwrap(), 0o755);
        assert_eq!(symbolic_mode("a+X", 0o644, false).unwrap(), 0o644);
        assert_eq!(symbolic_mode("u=rwx,g=rx,o=", 0o000, false).unwrap(), 0o750);
        assert!(symbolic_mode("z+x", 0o644, false).is_err());
        assert_eq!(
            apply_chmod(Some(&Chmod::Octal(0o600)), 0o755, false).unwrap(),
            0o600
        );
    }
}
