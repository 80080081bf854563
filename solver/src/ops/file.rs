//! File ops: COPY/ADD/WORKDIR-style edits of a new layer, done in-process.
//!
//! The destination is an overlay (input chain as lowers, a fresh snapshot as upper) mounted in
//! a private mount namespace that lives only as long as the op's thread; source chains are
//! mounted read-only beside it and the local context is read in place. Every tree (the
//! context, a source stage, the destination) is read and written through fds beneath its root
//! ([`rbuild_fsroot`]): symlinks resolve as if the tree were `/`, entries are opened with
//! `O_NOFOLLOW` relative to their directory, so neither a layer's `etc -> /host/etc` link nor
//! a context directory swapped for a symlink mid-copy can reach outside the tree.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read as _};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rbuild_fsroot::{Create, Root};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use rbuild_cache::context::{ExcludeMatcher, Selector};
use rbuild_graph::{Chmod, CopyAction, FileAction, FileOp, IdSpec, Node, Owner};

use super::{Cx, Input, OpKind, Plan};
use crate::{Chain, SolveError, Solver, Value};

/// `File`: COPY, ADD (local), mkdir, mkfile, rm, symlink.
pub struct FileKind;

impl OpKind for FileKind {
    fn plan<'a>(&'a self, cx: Cx<'a>, inputs: &[Input]) -> Result<Plan<'a>, SolveError> {
        let rbuild_graph::Op::File(op) = &cx.node.op else {
            return Err(cx.fail("not a file op"));
        };
        let work = Box::new(move |inputs: &[Input]| {
            let values: Vec<Value> = inputs.iter().map(|i| i.value.clone()).collect();
            cx.solver.run_file(cx.node, op, &values)
        });
        super::inputs::keyed_step(cx, inputs, work).map(Plan::Keyed)
    }
}

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
        dest: Root::new(root).map_err(|e| format!("opening the destination: {e}"))?,
        ids: None,
        user_exclude: None,
        from_context: false,
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

/// Resolve `rel` (relative to `root`, may start with `/`) inside `root` with the one resolver
/// ([`rbuild_fsroot`]), following symlinks as if `root` were `/`; the last component only when
/// `follow_last`. A missing last component is kept (so the result can be created). The
/// result is a host path for trees nobody else writes meanwhile (a materialized stage in the
/// store's tmp, a cache mount); a live tree (the build context) is read through fds instead.
pub fn resolve_in_root(root: &Path, rel: &str, follow_last: bool) -> Result<PathBuf, String> {
    let r = Root::new(root)
        .and_then(|r| r.resolve_path(rel, follow_last))
        .map_err(|e| e.to_string())?;
    Ok(root.join(r))
}

/// Split a path inside a root into its parent (resolved physically later, so `..` stays
/// right) and last name; `None` when the last component is not a name (`/`, `..`).
fn parent_and_name(p: &str) -> Option<(PathBuf, std::ffi::OsString)> {
    let path = Path::new(p);
    match path.components().next_back()? {
        Component::Normal(n) => Some((
            path.parent().unwrap_or(Path::new("")).to_path_buf(),
            n.to_os_string(),
        )),
        _ => None,
    }
}

use super::inputs::has_glob;

/// Numeric ids from the destination's /etc/passwd and /etc/group.
struct Ids {
    users: Vec<(String, u32, u32)>,
    groups: Vec<(String, u32)>,
}

struct Ctx<'a> {
    root: &'a Path,
    /// The destination tree, every path in it opened beneath it.
    dest: Root,
    ids: Option<Ids>,
    /// `COPY --exclude` patterns of the copy in progress, with the source-relative path of
    /// the match being copied (patterns match paths below it, or paths from the source root).
    user_exclude: Option<(ExcludeMatcher, PathBuf)>,
    /// The copy in progress reads the build context: a socket there is an empty regular file
    /// (BuildKit's context transfer clears the socket bit; fsutil's stat.go).
    from_context: bool,
}

/// An entry's `lstat`.
type Stat = rustix::fs::Stat;

fn stat_fd(fd: &OwnedFd, what: &Path) -> Result<Stat, String> {
    rustix::fs::fstat(fd).map_err(|e| format!("{}: {e}", what.display()))
}

fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY
}

#[allow(clippy::unnecessary_cast)]
fn times_of(st: &Stat) -> rustix::fs::Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: st.st_mtime as i64,
        tv_nsec: st.st_mtime_nsec as _,
    };
    rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl Ctx<'_> {
    fn ids(&mut self) -> &Ids {
        let dest = &self.dest;
        self.ids.get_or_insert_with(|| {
            let read = |p: &str| {
                let mut s = String::new();
                dest.open(p, OFlags::RDONLY)
                    .ok()
                    .and_then(|fd| fs::File::from(fd).read_to_string(&mut s).ok())
                    .map(|_| s)
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
        self.from_context = from_context;
        // `--parents` with a `/./` pivot (BuildKit's dispatchCopy): the part before the first
        // pivot is the source (wildcards allowed: Go's `filepath.Match` per segment, so a `**`
        // there is `*`), the part after it an include pattern (`**` spans directories) whose
        // matches below each matched directory keep their path below the destination; a
        // matched file is copied whole. Nothing matching the pattern copies nothing.
        let pivot = c
            .src
            .split_once("/./")
            .filter(|_| c.parents)
            .map(|(before, after)| (before.to_string(), after.to_string()));
        let src_path = match &pivot {
            Some((before, _)) => before.clone(),
            None => c.src.clone(),
        };
        let wildcard = c.allow_wildcard && has_glob(&src_path);
        // Matches are found without following their last component, so a followed symlink
        // is copied under its own name (BuildKit), then resolved inside the source root.
        let sel = Selector {
            path: src_path.clone(),
            follow_symlinks: false,
            allow_wildcard: c.allow_wildcard,
        };
        let src_root = &fs::canonicalize(src_root)
            .map_err(|e| format!("opening the copy source {}: {e}", src_root.display()))?;
        // The source tree (for the context: a live directory someone may be changing) is
        // read only through fds beneath this root, never through the matched paths.
        let src = Root::new(src_root)
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
                "failed to compute cache key: \"{src_path}\" not found in {what}"
            ));
        }
        let explicit_owner = match &c.owner {
            Some(o) => Some(self.owner(o)?),
            None => None,
        };
        let owner = match explicit_owner {
            None if from_context => Some((0, 0)),
            o => o,
        };
        let user_exclude = if c.exclude.is_empty() {
            None
        } else {
            Some(ExcludeMatcher::new(&c.exclude).map_err(|e| format!("--exclude: {e}"))?)
        };
        let dest_rel = c.dest.clone();
        // A wildcard with a single match copies to `dest` as named (BuildKit); several
        // matches need a directory.
        let dest_dir_hint = dest_rel.ends_with('/') || matches.len() > 1 || c.parents;
        let drel = self
            .dest
            .resolve_path(&dest_rel, true)
            .map_err(|e| e.to_string())?;
        let dest_is_dir = dest_dir_hint
            || self
                .dest
                .resolve(&drel, true)
                .ok()
                .and_then(|r| r.stat().ok().flatten())
                .is_some_and(|st| is_dir(&st));
        for named in &matches {
            let rel_in_src = named.strip_prefix(src_root).unwrap_or(named).to_path_buf();
            let shown = Path::new("/").join(&rel_in_src);
            // Not following the last component unless asked: a symlink is copied as a link.
            let m = match src.resolve(&rel_in_src, c.follow_symlinks) {
                Ok(m) => m,
                // See below: a wildcard match before a pivot that leads nowhere is skipped.
                Err(e) if e.is_not_found() && pivot.is_some() && wildcard => continue,
                Err(e) => return Err(e.to_string()),
            };
            let Some(mfd) = &m.fd else {
                // A wildcard match before a `--parents` pivot that leads nowhere (a dangling
                // symlink, or one leading out of the source, clamped beneath it) is skipped.
                if pivot.is_some() && wildcard {
                    continue;
                }
                return Err(format!("{}: no such file or directory", shown.display()));
            };
            let md = stat_fd(mfd, &shown)?;
            if let Some(ex) = &user_exclude {
                let rel_text = rel_in_src.to_string_lossy();
                let name = named
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if !is_dir(&md) && (ex.is_excluded(&rel_text) || ex.is_excluded(&name)) {
                    continue;
                }
            }
            self.user_exclude = user_exclude
                .as_ref()
                .map(|ex| (ex.clone(), rel_in_src.clone()));
            let open_src_dir = || {
                m.reopen(dir_flags())
                    .map_err(|e| format!("{}: {e}", shown.display()))
            };
            if let Some((_, pattern)) = &pivot {
                if !is_dir(&md) {
                    // A file before the pivot (named, or matched by a wildcard: `**` there is
                    // Go's `*`, one segment) is the copy's root, which include patterns never
                    // filter (fsutil's copier tests them only below the root): it is copied
                    // under its own name, as BuildKit v0.25 does.
                    let name = named
                        .file_name()
                        .or_else(|| m.rel.file_name())
                        .map(|n| n.to_os_string())
                        .unwrap_or_default();
                    let dst = self.ensure_copy_dir(&drel, owner, c)?;
                    self.copy_leaf(m.parent.as_fd(), &m.name, &md, &dst, &name, c, owner)?;
                    continue;
                }
                let include = ExcludeMatcher::new(std::slice::from_ref(pattern))
                    .map_err(|e| format!("--parents pattern {pattern:?}: {e}"))?;
                self.copy_included(
                    &open_src_dir()?,
                    &rel_in_src,
                    Path::new(""),
                    &include,
                    &drel,
                    c,
                    owner,
                    exclude,
                    from_context,
                )?;
                continue;
            }
            if c.parents {
                // No pivot: the whole source path is kept below the destination.
                let target = drel.join(&rel_in_src);
                if is_dir(&md) {
                    let dst = self.ensure_copy_dir(&target, owner, c)?;
                    self.copy_tree(
                        &open_src_dir()?,
                        &dst,
                        &rel_in_src,
                        c,
                        owner,
                        exclude,
                        from_context,
                    )?;
                } else {
                    let (parent, name) = split_target(&target)?;
                    let dst = self.ensure_copy_dir(&parent, owner, c)?;
                    self.copy_leaf(m.parent.as_fd(), &m.name, &md, &dst, &name, c, owner)?;
                }
                continue;
            }
            if c.attempt_unpack
                && FileType::from_raw_mode(md.st_mode) == FileType::RegularFile
                && self.unpack(&m, &shown, &drel, owner, explicit_owner)?
            {
                continue;
            }
            if is_dir(&md) && c.dir_copy_contents {
                let dst = self.ensure_copy_dir(&drel, owner, c)?;
                self.copy_tree(
                    &open_src_dir()?,
                    &dst,
                    &rel_in_src,
                    c,
                    owner,
                    exclude,
                    from_context,
                )?;
                // The target keeps its owner and mode but takes the source's times (fsutil
                // restores the timestamp of a directory it did not create). `dst` may be an
                // O_PATH fd: the times are set through a real open of it.
                let real =
                    rustix::fs::openat(&dst, ".", dir_flags() | OFlags::CLOEXEC, Mode::empty())
                        .map_err(|e| format!("{}: {e}", self.show(&drel)))?;
                finish_dir(&real, &md)?;
            } else {
                let name = named
                    .file_name()
                    .or_else(|| m.rel.file_name())
                    .map(|n| n.to_os_string())
                    .unwrap_or_default();
                let (dst_dir, dst_name) = if dest_is_dir {
                    (self.ensure_copy_dir(&drel, owner, c)?, name)
                } else {
                    let (parent, n) = split_target(&drel)?;
                    (self.ensure_copy_dir(&parent, owner, c)?, n)
                };
                if is_dir(&md) {
                    let child = self.copy_dir_entry(&dst_dir, &dst_name, &md, c, owner, false)?;
                    self.copy_tree(
                        &open_src_dir()?,
                        &child,
                        &rel_in_src,
                        c,
                        owner,
                        exclude,
                        from_context,
                    )?;
                    finish_dir(&child, &md)?;
                } else {
                    self.copy_leaf(
                        m.parent.as_fd(),
                        &m.name,
                        &md,
                        &dst_dir,
                        &dst_name,
                        c,
                        owner,
                    )?;
                }
            }
        }
        Ok(())
    }

    /// `--parents` below a pivot: walk the source directory `dir` (at `base` in the source)
    /// and copy each topmost entry whose path below `base` matches `include` to the same path
    /// below `dest` (a directory whole, with its contents); directories on the way are walked,
    /// never followed through symlinks.
    #[allow(clippy::too_many_arguments)]
    fn copy_included(
        &mut self,
        dir: &OwnedFd,
        base: &Path,
        sub: &Path,
        include: &ExcludeMatcher,
        dest: &Path,
        c: &CopyAction,
        owner: Option<(u32, u32)>,
        exclude: &ExcludeMatcher,
        from_context: bool,
    ) -> Result<(), String> {
        let shown = Path::new("/").join(base).join(sub);
        let mut names =
            rbuild_fsroot::list_dir(dir).map_err(|e| format!("{}: {e}", shown.display()))?;
        names.sort();
        for name in names {
            let below = sub.join(&name);
            let src_rel = base.join(&below);
            if from_context && exclude.can_skip_dir(&src_rel.to_string_lossy()) {
                continue;
            }
            let md = match lstat_at(dir, &name) {
                Ok(md) => md,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("/{}: {e}", src_rel.display())),
            };
            let matched = include.is_excluded(&below.to_string_lossy());
            if !matched && !is_dir(&md) {
                continue;
            }
            if matched && !is_dir(&md) {
                if from_context && exclude.is_excluded(&src_rel.to_string_lossy()) {
                    continue;
                }
                let target = dest.join(&below);
                let (parent, tname) = split_target(&target)?;
                let dst = self.ensure_copy_dir(&parent, owner, c)?;
                self.copy_leaf(dir.as_fd(), &name, &md, &dst, &tname, c, owner)?;
                continue;
            }
            let child = rbuild_fsroot::open_dir_at(dir, &name)
                .map_err(|e| format!("/{}: {e}", src_rel.display()))?;
            if matched {
                let dst = self.ensure_copy_dir(&dest.join(&below), owner, c)?;
                self.copy_tree(&child, &dst, &src_rel, c, owner, exclude, from_context)?;
                let real =
                    rustix::fs::openat(&dst, ".", dir_flags() | OFlags::CLOEXEC, Mode::empty())
                        .map_err(|e| format!("{}: {e}", self.show(&dest.join(&below))))?;
                finish_dir(&real, &md)?;
            } else {
                self.copy_included(
                    &child,
                    base,
                    &below,
                    include,
                    dest,
                    c,
                    owner,
                    exclude,
                    from_context,
                )?;
            }
        }
        Ok(())
    }

    /// The directory `rel` of the destination, created (0755, `owner`) with its missing
    /// parents, symlinks followed inside the destination only.
    fn ensure_dir(&mut self, rel: &Path, owner: Option<(u32, u32)>) -> Result<OwnedFd, String> {
        self.ensure_dir_mode(rel, owner, None)
    }

    /// [`Ctx::ensure_dir`] for a copy: with an octal `--chmod`, the directories it creates get
    /// that mode (less the daemon's 022 umask), as BuildKit's `MkdirAll(dest, mode)` does.
    fn ensure_copy_dir(
        &mut self,
        rel: &Path,
        owner: Option<(u32, u32)>,
        c: &CopyAction,
    ) -> Result<OwnedFd, String> {
        let mode = match c.mode {
            Some(Chmod::Octal(m)) => Some(m & 0o777 & !0o022),
            _ => None,
        };
        self.ensure_dir_mode(rel, owner, mode)
    }

    fn ensure_dir_mode(
        &mut self,
        rel: &Path,
        owner: Option<(u32, u32)>,
        mode: Option<u32>,
    ) -> Result<OwnedFd, String> {
        let mut created: Vec<PathBuf> = Vec::new();
        let r = self
            .dest
            .ensure(rel, Create::Dir, owner, &mut |p, _| {
                created.push(p.to_path_buf());
                Ok(())
            })
            .map_err(|e| format!("creating {}: {e}", self.show(rel)))?;
        if let Some(mode) = mode.filter(|m| *m != 0o755) {
            for p in &created {
                let fd = self
                    .dest
                    .open(p, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW)
                    .map_err(|e| format!("creating {}: {e}", self.show(p)))?;
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
                    .map_err(|e| format!("chmod {}: {e}", self.show(p)))?;
            }
        }
        let fd =
            r.fd.ok_or_else(|| format!("creating {}: missing", self.show(rel)))?;
        if !is_dir(&stat_fd(&fd, rel)?) {
            return Err(format!(
                "{} exists and is not a directory",
                self.show(&r.rel)
            ));
        }
        Ok(fd)
    }

    /// ADD of a local tar (plain or gzip, detected by content): extract into `dest` as a
    /// directory. Returns false when the file is not an archive (it is then copied as is).
    /// `owner` is for the created `dest`; `chown` (`ADD --chown`) owns every unpacked entry.
    fn unpack(
        &mut self,
        src: &rbuild_fsroot::Resolved,
        shown: &Path,
        dest: &Path,
        owner: Option<(u32, u32)>,
        chown: Option<(u32, u32)>,
    ) -> Result<bool, String> {
        use rbuild_oci::ArchiveKind;
        let open = || {
            rbuild_fsroot::open_file_at(&src.parent, &src.name)
                .map_err(|e| format!("{}: {e}", shown.display()))
        };
        let file = open()?;
        // The archive is sniffed through the open fd (`/proc/self/fd/N`), never by its name.
        let kind = rbuild_oci::archive_kind(&rbuild_fsroot::fd_path(&file))
            .map_err(|e| format!("{}: {e}", shown.display()))?;
        match kind {
            ArchiveKind::None => Ok(false),
            ArchiveKind::Unsupported("bzip2") => {
                let dec = bzip2::read::MultiBzDecoder::new(io::BufReader::new(file));
                self.unpack_stream(dec, shown, dest, owner, chown)
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
                let staged = (|| -> Result<fs::File, String> {
                    let mut out = fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(&tmp)
                        .map_err(|e| format!("{}: {e}", tmp.display()))?;
                    lzma_rs::xz_decompress(&mut io::BufReader::new(file), &mut out)
                        .map_err(|e| format!("decompressing {}: {e}", shown.display()))?;
                    io::Seek::rewind(&mut out).map_err(|e| format!("{}: {e}", tmp.display()))?;
                    Ok(out)
                })();
                let _ = fs::remove_file(&tmp);
                self.unpack_stream(io::BufReader::new(staged?), shown, dest, owner, chown)
            }
            ArchiveKind::Unsupported(kind) => Err(format!(
                "ADD {}: unpacking {kind} archives is not supported yet",
                shown
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default()
            )),
            ArchiveKind::Tar | ArchiveKind::GzipTar => {
                self.ensure_dir(dest, owner)?;
                rbuild_oci::extract_archive(
                    io::BufReader::new(file),
                    &self.dest.host_path(dest),
                    chown,
                )
                .map_err(|e| format!("unpacking {}: {e}", shown.display()))?;
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
        chown: Option<(u32, u32)>,
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
        self.ensure_dir(dest, owner)?;
        rbuild_oci::extract_archive(
            io::Cursor::new(head).chain(r),
            &self.dest.host_path(dest),
            chown,
        )
        .map_err(|e| format!("unpacking {}: {e}", src.display()))?;
        Ok(true)
    }

    /// Copy the contents of the source directory `src` into the destination directory `dst`
    /// (both fds: every entry is reached with `O_NOFOLLOW` relative to its parent).
    #[allow(clippy::too_many_arguments)]
    fn copy_tree(
        &mut self,
        src: &OwnedFd,
        dst: &OwnedFd,
        rel: &Path,
        c: &CopyAction,
        owner: Option<(u32, u32)>,
        exclude: &ExcludeMatcher,
        from_context: bool,
    ) -> Result<(), String> {
        let shown = Path::new("/").join(rel);
        let mut names =
            rbuild_fsroot::list_dir(src).map_err(|e| format!("{}: {e}", shown.display()))?;
        names.sort();
        for name in names {
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
            let md = match lstat_at(src, &name) {
                Ok(md) => md,
                // Removed since the listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("/{}: {e}", child_rel.display())),
            };
            if is_dir(&md) {
                // An excluded directory is still walked when a `!` pattern may re-include
                // something below it; it is kept only if something was copied into it.
                if (ignored && exclude.can_skip_dir(&rel_text)) || user_can_skip {
                    continue;
                }
                let existed = lstat_at(dst, &name).is_ok_and(|t| is_dir(&t));
                // Below the top level, an existing directory takes the source's owner, mode
                // and times (fsutil's overwriteTargetMetadata), unless it is excluded.
                let child_dst = self.copy_dir_entry(dst, &name, &md, c, owner, !excluded)?;
                // O_NOFOLLOW: a directory swapped for a symlink since the listing fails here.
                let child_src = rbuild_fsroot::open_dir_at(src, &name)
                    .map_err(|e| format!("/{}: {e}", child_rel.display()))?;
                self.copy_tree(
                    &child_src,
                    &child_dst,
                    &child_rel,
                    c,
                    owner,
                    exclude,
                    from_context,
                )?;
                if excluded
                    && !existed
                    && rbuild_fsroot::list_dir(&child_dst).is_ok_and(|l| l.is_empty())
                {
                    rustix::fs::unlinkat(dst, &name, AtFlags::REMOVEDIR)
                        .map_err(|e| format!("/{}: {e}", child_rel.display()))?;
                    continue;
                }
                if !existed || !excluded {
                    finish_dir(&child_dst, &md)?;
                }
            } else if excluded {
                continue;
            } else {
                self.copy_leaf(src.as_fd(), &name, &md, dst, &name, c, owner)?;
            }
        }
        Ok(())
    }

    /// Make `name` in `dst` a directory and return it open. An existing one keeps its owner
    /// and mode unless `overwrite` (BuildKit: the top-level target keeps them, directories
    /// below it take the source's); anything else there is replaced.
    fn copy_dir_entry(
        &mut self,
        dst: &OwnedFd,
        name: &OsStr,
        md: &Stat,
        c: &CopyAction,
        owner: Option<(u32, u32)>,
        overwrite: bool,
    ) -> Result<OwnedFd, String> {
        let fail = |e: io::Error| format!("{}: {e}", Path::new(name).display());
        match lstat_at(dst, name) {
            Ok(t) if is_dir(&t) && !overwrite => {
                return rbuild_fsroot::open_dir_at(dst, name).map_err(fail)
            }
            Ok(t) if is_dir(&t) => {}
            Ok(_) => {
                rbuild_fsroot::remove_all_at(dst, name).map_err(fail)?;
                rustix::fs::mkdirat(dst, name, Mode::from_raw_mode(0o700))
                    .map_err(|e| fail(e.into()))?;
            }
            Err(_) => rustix::fs::mkdirat(dst, name, Mode::from_raw_mode(0o700))
                .map_err(|e| fail(e.into()))?,
        }
        let fd = rbuild_fsroot::open_dir_at(dst, name).map_err(fail)?;
        let mode = apply_chmod(c.mode.as_ref(), md.st_mode & 0o7777, true)?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| fail(e.into()))?;
        let (uid, gid) = owner.unwrap_or((md.st_uid, md.st_gid));
        fchown(&fd, Path::new(name), uid, gid)?;
        Ok(fd)
    }

    /// Copy the non-directory `src_name` in `src_dir` to `name` in `dst`.
    #[allow(clippy::too_many_arguments)]
    fn copy_leaf(
        &mut self,
        src_dir: BorrowedFd<'_>,
        src_name: &OsStr,
        md: &Stat,
        dst: &OwnedFd,
        name: &OsStr,
        c: &CopyAction,
        owner: Option<(u32, u32)>,
    ) -> Result<(), String> {
        let ft = FileType::from_raw_mode(md.st_mode);
        let (uid, gid) = owner.unwrap_or((md.st_uid, md.st_gid));
        let shown = Path::new(name);
        let fail = |e: io::Error| format!("{}: {e}", shown.display());
        // A device node kept as a marker file (rootless unpack) is skipped like a device, so a
        // rootless COPY gives the layer a root one gives. (The directory is pinned by its fd;
        // the xattr is read without following the last component.)
        if ft == FileType::RegularFile
            && md.st_size == 0
            && rbuild_oci::device_marker_of(&rbuild_fsroot::fd_path(src_dir).join(src_name))
                .is_some()
        {
            return Ok(());
        }
        // A context socket arrives as an empty regular file with its permissions (BuildKit).
        let context_socket = ft == FileType::Socket && self.from_context;
        if context_socket {
            let mode = apply_chmod(c.mode.as_ref(), md.st_mode & 0o7777, false)?;
            rbuild_fsroot::remove_all_at(dst, name).map_err(fail)?;
            let out = create_new(dst, name).map_err(fail)?;
            fchown(&out, shown, uid, gid)?;
            rustix::fs::fchmod(&out, Mode::from_raw_mode(mode)).map_err(|e| fail(e.into()))?;
            rustix::fs::futimens(&out, &times_of(md)).map_err(|e| fail(e.into()))?;
            return Ok(());
        }
        if ft == FileType::RegularFile {
            // The common case (nothing at the target yet) costs two opens and fd calls only;
            // whatever is in the way is removed first otherwise.
            let mode = apply_chmod(c.mode.as_ref(), md.st_mode & 0o7777, false)?;
            let out = match create_new(dst, name) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    rbuild_fsroot::remove_all_at(dst, name).map_err(fail)?;
                    create_new(dst, name).map_err(fail)?
                }
                Err(e) => return Err(fail(e)),
            };
            let from = rbuild_fsroot::open_file_at(src_dir, src_name)
                .map_err(|e| format!("{}: {e}", Path::new(src_name).display()))?;
            copy_data(&from, &out, md.st_size.max(0) as u64)
                .map_err(|e| format!("copying {}: {e}", Path::new(src_name).display()))?;
            fchown(&out, shown, uid, gid)?;
            rustix::fs::fchmod(&out, Mode::from_raw_mode(mode)).map_err(|e| fail(e.into()))?;
            rustix::fs::futimens(&out, &times_of(md)).map_err(|e| fail(e.into()))?;
            return Ok(());
        }
        rbuild_fsroot::remove_all_at(dst, name).map_err(fail)?;
        if ft == FileType::Symlink {
            let link = rustix::fs::readlinkat(src_dir, src_name, Vec::new())
                .map_err(|e| format!("{}: {e}", Path::new(src_name).display()))?;
            rustix::fs::symlinkat(link.as_c_str(), dst, name).map_err(|e| fail(e.into()))?;
            rustix::fs::chownat(
                dst,
                name,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| chown_error(shown, uid, gid, e.into()))?;
            // Symlink mtimes are left alone; the layer writer clamps them with
            // SOURCE_DATE_EPOCH when reproducibility is asked.
            return Ok(());
        }
        // Devices, fifos and stage sockets are not copied (a layer tar cannot hold a socket;
        // devices need mknod).
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
        let drel = self
            .dest
            .resolve_path(path, true)
            .map_err(|e| format!("mkdir: {e}"))?;
        if parents {
            if let Some(p) = drel.parent() {
                self.ensure_dir(p, owner)?;
            }
        }
        let target = self
            .dest
            .resolve(&drel, true)
            .map_err(|e| format!("mkdir: {e}"))?;
        if target
            .stat()
            .map_err(|e| e.to_string())?
            .is_some_and(|st| is_dir(&st))
        {
            return Ok(());
        }
        if target.name == "." {
            return Ok(());
        }
        let parent = target.parent;
        rustix::fs::mkdirat(&parent, &target.name, Mode::from_raw_mode(0o700))
            .map_err(|e| format!("mkdir {path}: {e}"))?;
        let fd = rbuild_fsroot::open_dir_at(&parent, &target.name)
            .map_err(|e| format!("mkdir {path}: {e}"))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777))
            .map_err(|e| format!("mkdir {path}: {e}"))?;
        if let Some((u, g)) = owner {
            fchown(&fd, Path::new(path), u, g)?;
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
        let (parent, name) = parent_and_name(path).ok_or(format!("{path} is a directory"))?;
        let dir = self.ensure_dir(&parent, owner)?;
        if lstat_at(&dir, &name).is_ok_and(|st| is_dir(&st)) {
            return Err(format!("{path} is a directory"));
        }
        let _ = rustix::fs::unlinkat(&dir, &name, AtFlags::empty());
        let mut f = create_new(&dir, &name).map_err(|e| format!("writing {path}: {e}"))?;
        io::Write::write_all(&mut f, data).map_err(|e| format!("writing {path}: {e}"))?;
        rustix::fs::fchmod(&f, Mode::from_raw_mode(mode & 0o7777))
            .map_err(|e| format!("{path}: {e}"))?;
        if let Some((u, g)) = owner {
            fchown(&f, Path::new(path), u, g)?;
        }
        Ok(())
    }

    fn rm(&mut self, path: &str, allow_not_found: bool) -> Result<(), String> {
        let target = match self.dest.resolve(path, false) {
            Ok(t) if t.fd.is_some() && t.name != "." => t,
            Ok(t) if t.name == "." => return Err(format!("rm {path}: refusing to remove /")),
            _ if allow_not_found => return Ok(()),
            Ok(_) => return Err(format!("rm {path}: no such file or directory")),
            Err(e) => return Err(format!("rm {path}: {e}")),
        };
        rbuild_fsroot::remove_all_at(&target.parent, &target.name)
            .map_err(|e| format!("rm {path}: {e}"))
    }

    fn symlink(&mut self, target: &str, link: &str, owner: Option<&Owner>) -> Result<(), String> {
        let owner = match owner {
            Some(o) => Some(self.owner(o)?),
            None => None,
        };
        let (parent, name) =
            parent_and_name(link).ok_or(format!("symlink {link}: not a file name"))?;
        let dir = self.ensure_dir(&parent, None)?;
        rustix::fs::symlinkat(target, &dir, &name).map_err(|e| format!("symlink {link}: {e}"))?;
        if let Some((u, g)) = owner {
            rustix::fs::chownat(
                &dir,
                &name,
                Some(rustix::fs::Uid::from_raw(u)),
                Some(rustix::fs::Gid::from_raw(g)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| chown_error(Path::new(link), u, g, e.into()))?;
        }
        Ok(())
    }
}

/// Copy the entry `r` (resolved beneath `root`, the live build context) to the new path
/// `dst` (in the store's tmp), owners and modes kept, reading only through fds beneath the
/// root: for a writable bind or a cache mount seeded from the context in copy mode.
pub(crate) fn copy_local(
    root: &Root,
    r: &rbuild_fsroot::Resolved,
    dst: &Path,
    is_dir: bool,
) -> Result<(), String> {
    let (parent, name) = match (dst.parent(), dst.file_name()) {
        (Some(p), Some(n)) => (p, n),
        _ => return Err(format!("{}: not a file name", dst.display())),
    };
    let shown = root.host_path(&r.rel);
    let fd =
        r.fd.as_ref()
            .ok_or_else(|| format!("{}: no such file or directory", shown.display()))?;
    let md = stat_fd(fd, &shown)?;
    let dest = Root::new(parent).map_err(|e| e.to_string())?;
    let dst_dir = dest.open("", dir_flags()).map_err(|e| e.to_string())?;
    let mut ctx = Ctx {
        root: parent,
        dest,
        ids: None,
        user_exclude: None,
        from_context: true,
    };
    let c = CopyAction {
        src_input: 0,
        src: String::new(),
        dest: String::new(),
        owner: None,
        mode: None,
        follow_symlinks: false,
        dir_copy_contents: true,
        attempt_unpack: false,
        create_dest_path: false,
        allow_wildcard: false,
        allow_empty_wildcard: false,
        exclude: Vec::new(),
        parents: false,
    };
    if is_dir {
        let child = ctx.copy_dir_entry(&dst_dir, name, &md, &c, None, false)?;
        let src = r
            .reopen(dir_flags())
            .map_err(|e| format!("{}: {e}", shown.display()))?;
        ctx.copy_tree(
            &src,
            &child,
            Path::new(""),
            &c,
            None,
            &empty_matcher()?,
            false,
        )?;
        finish_dir(&child, &md)
    } else {
        ctx.copy_leaf(r.parent.as_fd(), &r.name, &md, &dst_dir, name, &c, None)
    }
}

/// The parent directory and name of a destination path (already resolved).
fn split_target(p: &Path) -> Result<(PathBuf, std::ffi::OsString), String> {
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => Ok((parent.to_path_buf(), name.to_os_string())),
        _ => Err("cannot copy a file onto the root directory".into()),
    }
}

/// Create a regular file `name` in `dir` that must not exist yet (never following a symlink).
fn create_new(dir: &OwnedFd, name: &OsStr) -> io::Result<fs::File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(fs::File::from(fd))
}

fn lstat_at(dir: &OwnedFd, name: &OsStr) -> io::Result<Stat> {
    rbuild_fsroot::lstat_at(dir, name)
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

fn finish_dir(dir: &OwnedFd, md: &Stat) -> Result<(), String> {
    rustix::fs::futimens(dir, &times_of(md)).map_err(|e| format!("set times: {e}"))
}

fn fchown(fd: &impl AsFd, p: &Path, uid: u32, gid: u32) -> Result<(), String> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .map_err(|e| chown_error(p, uid, gid, e.into()))
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
    use std::os::unix::fs::symlink;

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
