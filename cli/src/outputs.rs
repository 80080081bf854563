//! Build outputs (`--output`/`-o`, docker buildx syntax), `--push` and `--load`.
//!
//! | type | what |
//! |---|---|
//! | `image` | the local store (always); `name=a,b` adds names; `push=true` pushes them |
//! | `registry` | `image` + `push=true` |
//! | `oci` / `docker` | OCI layout / docker archive tar at `dest=FILE` or `-` (stdout); with `tar=false` an OCI layout directory at `dest=DIR` (blobs added, the image named in `index.json`, as buildx) |
//! | `local` | the final root filesystem as a directory at `dest=DIR` |
//! | `tar` | the final root filesystem as a tar at `dest=FILE` or `-` |
//!
//! Image outputs take `compression=gzip|zstd|uncompressed` (default gzip), `compression-level=N`,
//! `force-compression=true` and `oci-mediatypes=true|false` (default true, false for `docker`).
//! Compression happens here, never in the local store; compressed layers are cached in the
//! store (see `rbuild_oci::convert`).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use rbuild_oci::{
    ArchiveFormat, ArchiveSink, Compression, ConvertOpts, Descriptor, ImageStore, Reference,
};

/// One `--output` spec.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSpec {
    pub kind: String,
    /// Destination (`-` for stdout); empty for `image`/`registry`.
    pub dest: String,
    /// Extra names (`name=`) for image outputs.
    pub names: Vec<String>,
    /// Push image outputs.
    pub push: bool,
    /// Layer/media-type conversion for image outputs.
    pub compression: Compression,
    pub level: Option<i32>,
    pub force: bool,
    pub oci_media_types: bool,
    /// `tar=false` (`oci`/`docker`): an OCI image layout directory at `dest` instead of a tar.
    pub tar: bool,
}

fn parse_bool(spec: &str, k: &str, v: &str) -> Result<bool> {
    // BuildKit's exporters take an empty value as true.
    match crate::flags::parse_bool(v) {
        Some(b) => Ok(b),
        None if v.is_empty() => Ok(true),
        None => bail!("--output {spec:?}: {k}={v:?} is not true or false"),
    }
}

/// Parse a buildx `--output` spec. A bare path means `type=local,dest=PATH`, `-` means
/// `type=tar,dest=-`.
pub fn parse(spec: &str) -> Result<OutputSpec> {
    let mut o = OutputSpec {
        kind: String::new(),
        dest: String::new(),
        names: Vec::new(),
        push: false,
        compression: Compression::Gzip,
        level: None,
        force: false,
        oci_media_types: true,
        tar: true,
    };
    if !spec.contains('=') {
        if spec.is_empty() {
            bail!("--output: empty spec");
        }
        o.kind = if spec == "-" { "tar" } else { "local" }.into();
        o.dest = spec.to_string();
        return Ok(o);
    }
    let mut kind = None;
    let mut media_types = None;
    for part in crate::flags::csv_fields(spec).map_err(|e| anyhow!("--output: {e}"))? {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            anyhow!("--output {spec:?}: expected key=value pairs such as type=oci,dest=app.tar")
        })?;
        match k {
            "type" => kind = Some(v.to_string()),
            "dest" => o.dest = v.to_string(),
            "name" => o
                .names
                .extend(v.split(',').filter(|n| !n.is_empty()).map(String::from)),
            "push" => o.push = parse_bool(spec, k, v)?,
            "compression" => {
                o.compression = Compression::parse(v).map_err(|e| anyhow!("--output {spec:?}: {e}"))?
            }
            "compression-level" => {
                o.level = Some(v.parse().map_err(|_| {
                    anyhow!("--output {spec:?}: compression-level={v:?} is not a number")
                })?)
            }
            "force-compression" => o.force = parse_bool(spec, k, v)?,
            "oci-mediatypes" => media_types = Some(parse_bool(spec, k, v)?),
            "tar" => o.tar = parse_bool(spec, k, v)?,
            // accepted for compatibility; rbuild always behaves this way
            "store" | "unpack" | "annotation" | "platform-split" => {}
            other => bail!(
                "--output {spec:?}: unknown key {other:?} (supported: type, dest, name, push, compression, compression-level, force-compression, oci-mediatypes)"
            ),
        }
    }
    o.kind = kind.ok_or_else(|| anyhow!("--output {spec:?}: missing type="))?;
    match o.kind.as_str() {
        "image" => {}
        "registry" => o.push = true,
        "oci" | "docker" | "local" | "tar" => {
            if o.dest.is_empty() {
                bail!("--output {spec:?}: missing dest=");
            }
            // buildx: `tar=false` makes the oci and docker exporters write a directory.
            if !o.tar && matches!(o.kind.as_str(), "oci" | "docker") && o.dest == "-" {
                bail!(
                    "--output {spec:?}: dest cannot be stdout with tar=false (it names a directory)"
                );
            }
        }
        other => bail!(
            "--output type={other}: not supported (supported: image, registry, oci, docker, local, tar)"
        ),
    }
    o.oci_media_types = media_types.unwrap_or(o.kind != "docker");
    Ok(o)
}

impl OutputSpec {
    fn convert_opts(&self, annotations: &Annotations) -> ConvertOpts {
        ConvertOpts {
            compression: self.compression,
            level: self.level,
            force: self.force,
            oci_media_types: self.oci_media_types,
            annotations: annotations.manifest.clone(),
            descriptor_annotations: annotations.manifest_descriptor.clone(),
        }
    }
}

/// `--annotation` values by level (buildx: `[TYPE[PLATFORM]:]KEY=VALUE`, default `manifest`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Annotations {
    /// On the image manifest (local store, archives, pushes).
    pub manifest: BTreeMap<String, String>,
    /// On the manifest's descriptor: the entries of an archive's `index.json` and of the
    /// local store's layout (a pushed single manifest has no descriptor to carry them). In a
    /// multi-platform build: the manifest's entry in the index.
    pub manifest_descriptor: BTreeMap<String, String>,
    /// On the image index (multi-platform builds only).
    pub index: BTreeMap<String, String>,
    /// On the index's descriptor: the entries of an OCI archive's `index.json`
    /// (multi-platform builds only).
    pub index_descriptor: BTreeMap<String, String>,
}

/// Parse `--annotation` values for an image of `platform`. A `[os/arch]` qualifier for
/// another platform is skipped (that manifest is not built). `index:` and
/// `index-descriptor:` need an index (`has_index`: a multi-platform build); without one they
/// are refused (BuildKit refuses index annotations on single-platform exports too).
pub fn annotations(
    values: &[String],
    platform: &rbuild_graph::Platform,
    has_index: bool,
) -> Result<Annotations> {
    let mut out = Annotations::default();
    for a in values {
        let (level, qualifier, kv) = match a.split_once(':') {
            Some((l, rest)) if !l.contains('=') => {
                let (name, q) = match l.split_once('[') {
                    Some((n, q)) => (
                        n,
                        Some(q.strip_suffix(']').ok_or_else(|| {
                            anyhow!("--annotation {a:?}: missing ']' after the platform")
                        })?),
                    ),
                    None => (l, None),
                };
                match name {
                    "manifest" | "index" | "manifest-descriptor" | "index-descriptor" => {
                        (name, q, rest)
                    }
                    // a key with a colon and no level (e.g. `a:b=c`)
                    _ => ("manifest", None, a.as_str()),
                }
            }
            _ => ("manifest", None, a.as_str()),
        };
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("--annotation {a:?}: expected KEY=VALUE"))?;
        if k.is_empty() {
            bail!("--annotation {a:?}: empty key");
        }
        if let Some(q) = qualifier {
            let p =
                crate::flags::parse_platform(q).map_err(|e| anyhow!("--annotation {a:?}: {e}"))?;
            if p.os != platform.os
                || p.architecture != platform.architecture
                || (p.variant.is_some() && p.variant != platform.variant)
            {
                continue;
            }
        }
        let map = match level {
            "manifest" => &mut out.manifest,
            "manifest-descriptor" => &mut out.manifest_descriptor,
            "index" if has_index => &mut out.index,
            "index-descriptor" if has_index => &mut out.index_descriptor,
            _ => bail!(
                "--annotation {a:?}: {level} annotations need an image index, and rbuild builds a single-platform image without one (use manifest: or manifest-descriptor:, or build several platforms)"
            ),
        };
        map.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// The reader of stdout went away while an output was written to `-` (`… | head -c1`):
/// `main` exits quietly with 141, like a tool killed by SIGPIPE.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Write to `dest` (a file written next to it and renamed, or stdout for `-`).
pub fn write_dest(dest: &str, f: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    write_dest_sink(dest, |sink| match sink {
        ArchiveSink::File(file) => {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
            f(&mut w)?;
            w.flush()?;
            Ok(())
        }
        ArchiveSink::Stream(w) => f(w),
    })
}

/// [`write_dest`] handing out the file itself when `dest` is a file (archives seek in it).
pub fn write_dest_sink(dest: &str, f: impl FnOnce(ArchiveSink<'_>) -> Result<()>) -> Result<()> {
    if dest == "-" {
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        return f(ArchiveSink::Stream(&mut lock))
            .and_then(|_| lock.flush().map_err(Into::into))
            .map_err(|e| {
                let closed = e.chain().any(|c| {
                    c.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
                });
                if closed {
                    anyhow::Error::new(StdoutClosed)
                } else {
                    e
                }
            });
    }
    let dest = PathBuf::from(dest);
    if dest.is_dir() {
        bail!(
            "{} is a directory: dest= of a tar or archive output names a file (or - for stdout)",
            dest.display()
        );
    }
    let tmp = dest.with_file_name(format!(
        ".{}.rbuild-tmp",
        dest.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    ));
    // A stale temporary (or a symlink planted there) is removed, never followed.
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    if let Err(e) = f(ArchiveSink::File(&mut file)) {
        let _ = fs::remove_file(&tmp);
        return Err(e.context(format!("exporting to {}", dest.display())));
    }
    drop(file);
    fs::rename(&tmp, &dest).with_context(|| format!("writing {}", dest.display()))?;
    Ok(())
}

/// A directory in the store's private `tmp/`, removed when dropped.
pub struct TmpTree(PathBuf);

impl TmpTree {
    pub fn new(store: &rbuild_cache::Store, kind: &str) -> Result<TmpTree> {
        let p = store.new_tmp_path(kind);
        fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TmpTree(p))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpTree {
    fn drop(&mut self) {
        if fs::remove_dir_all(&self.0).is_err() {
            // Directories a build left without write permission.
            let _ = Command::new("chmod")
                .args(["-R", "u+rwx"])
                .arg(&self.0)
                .status();
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// The image's root filesystem, built in the store's private `tmp/`: every layer is applied in
/// overlay upper format exactly as a pull applies it (diff_id verified), then the layers are
/// merged with the copy snapshotter's overlay semantics ([`rbuild_cache::copysnap::materialize`]),
/// so an export reads a layer the way the build's overlay mounts did (one answer for a path
/// that is a symlink in one layer and a directory in the next).
pub fn rootfs_tree(store: &rbuild_cache::Store, manifest: &Descriptor) -> Result<TmpTree> {
    let images = ImageStore::open(store)?;
    let m = images.read_manifest(manifest)?;
    let config: serde_json::Value = serde_json::from_slice(&store.read_blob(&m.config.digest)?)
        .with_context(|| format!("reading image config {}", m.config.digest))?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let uppers = TmpTree::new(store, "layers")?;
    let mut dirs = Vec::with_capacity(m.layers.len());
    for (i, l) in m.layers.iter().enumerate() {
        let dir = uppers.path().join(i.to_string());
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let c = Compression::of_media_type(&l.media_type).unwrap_or(Compression::Uncompressed);
        let f = store.open_blob(&l.digest)?;
        let r = rbuild_oci::compress::decompressor(c, std::io::BufReader::new(f))?;
        match diff_ids.get(i).filter(|_| diff_ids.len() == m.layers.len()) {
            Some(d) => rbuild_oci::apply_layer_verified(r, &dir, &l.digest, d),
            None => rbuild_oci::apply_layer(r, &dir),
        }
        .with_context(|| format!("applying layer {}", l.digest))?;
        dirs.push(dir);
    }
    let tree = TmpTree::new(store, "rootfs")?;
    rbuild_cache::copysnap::materialize(&dirs, tree.path())?;
    Ok(tree)
}

/// Unpack the image's root filesystem into `dir` (`type=local`): built privately
/// ([`rootfs_tree`]), then written into `dir` by [`install_tree`].
pub fn unpack_rootfs(store: &rbuild_cache::Store, manifest: &Descriptor, dir: &Path) -> Result<()> {
    let tree = rootfs_tree(store, manifest)?;
    install_tree(tree.path(), dir)
}

/// `path` made absolute with symlinks resolved as far as it exists (the rest appended).
fn resolve_partly(path: &Path) -> Result<PathBuf> {
    let path = std::path::absolute(path)?;
    let mut existing = path.as_path();
    let mut rest = Vec::new();
    let resolved = loop {
        match fs::canonicalize(existing) {
            Ok(p) => break p,
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_os_string());
                    existing = parent;
                }
                _ => bail!("cannot resolve {}", path.display()),
            },
        }
    };
    let mut full = resolved;
    for c in rest.iter().rev() {
        full.push(c);
    }
    Ok(full)
}

/// Refuse a `type=local` destination that would write over the host's root or the store:
/// `/` itself, the store at `store_root`, anything inside it or any of its parents.
pub fn check_local_dest(store_root: &Path, dest: &str) -> Result<()> {
    let flag = format!("--output type=local,dest={dest}");
    if dest.is_empty() {
        bail!("{flag}: dest is empty");
    }
    let full = resolve_partly(Path::new(dest)).with_context(|| flag.clone())?;
    if full == Path::new("/") {
        bail!(
            "{flag}: refusing to export a root filesystem onto / (it would replace host files); \
             give a new or empty directory"
        );
    }
    let root = resolve_partly(store_root).with_context(|| flag.clone())?;
    if full.starts_with(&root) || root.starts_with(&full) {
        bail!(
            "{flag}: refusing to export into rbuild's store ({}) or a directory that holds it; \
             give a directory outside it",
            root.display()
        );
    }
    Ok(())
}

/// Copy the tree `src` into `dest` (created when missing) without ever reaching outside it:
/// every directory is opened beneath `dest` with `O_NOFOLLOW` (a symlink or non-directory
/// where the image has a directory is an error naming the path, never followed or replaced);
/// existing directories keep their owner, mode and times (only directories this creates get
/// the image's); an existing file or symlink at a path the image writes is replaced (the entry
/// itself, never its target); nothing else in `dest` is touched. Set-user/group-id bits are
/// dropped and device nodes are created usable by their owner only (mode & 0600), so an
/// exported tree never hands other host users a privilege (see docs/cli.md).
pub fn install_tree(src: &Path, dest: &Path) -> Result<()> {
    fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let md = fs::symlink_metadata(dest).with_context(|| format!("reading {}", dest.display()))?;
    if !md.is_dir() {
        bail!("{} is not a directory", dest.display());
    }
    let fd = rustix::fs::open(
        dest,
        rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .with_context(|| format!("opening {}", dest.display()))?;
    let mut ins = Installer {
        dest: dest.to_path_buf(),
        root: fd,
        links: std::collections::HashMap::new(),
    };
    ins.dir(src, &ins.root.try_clone()?, Path::new(""))
}

struct Installer {
    dest: PathBuf,
    root: std::os::fd::OwnedFd,
    /// First path (relative to dest) of each multiply-linked inode of the source.
    links: std::collections::HashMap<(u64, u64), PathBuf>,
}

impl Installer {
    fn dir(&mut self, src: &Path, dfd: &std::os::fd::OwnedFd, rel: &Path) -> Result<()> {
        use rustix::fs::{AtFlags, FileType, Mode, OFlags};
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let mut names: Vec<std::ffi::OsString> = fs::read_dir(src)
            .with_context(|| format!("reading {}", src.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            let s = src.join(&name);
            let r = rel.join(&name);
            let shown = self.dest.join(&r);
            let md = fs::symlink_metadata(&s)?;
            let ft = md.file_type();
            let existing = match rustix::fs::statat(dfd, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => Some(FileType::from_raw_mode(st.st_mode)),
                Err(rustix::io::Errno::NOENT) => None,
                Err(e) => return Err(e).with_context(|| format!("reading {}", shown.display())),
            };
            if ft.is_dir() {
                let created = match existing {
                    None => {
                        rustix::fs::mkdirat(dfd, &name, Mode::from_raw_mode(0o700))
                            .with_context(|| format!("creating {}", shown.display()))?;
                        true
                    }
                    Some(FileType::Directory) => false,
                    Some(_) => bail!(
                        "{} exists and is not a directory (a symlink in the destination is never \
                         followed or replaced): remove it or choose another dest",
                        shown.display()
                    ),
                };
                let child = rustix::fs::openat(
                    dfd,
                    &name,
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .with_context(|| format!("opening {} (not following symlinks)", shown.display()))?;
                self.dir(&s, &child, &r)?;
                if created {
                    self.meta(child.as_fd_ref(), &s, &md, &shown)?;
                }
                continue;
            }
            match existing {
                None => {}
                Some(FileType::Directory) => bail!(
                    "{} exists and is a directory, where the image has a file: remove it or \
                     choose another dest",
                    shown.display()
                ),
                Some(_) => rustix::fs::unlinkat(dfd, &name, AtFlags::empty())
                    .with_context(|| format!("replacing {}", shown.display()))?,
            }
            if md.nlink() > 1 && !ft.is_dir() {
                if let Some(first) = self.links.get(&(md.dev(), md.ino())) {
                    // The first link's directory, reopened beneath dest without symlinks.
                    let parent = first.parent().unwrap_or(Path::new(""));
                    let pfd = rustix::fs::openat2(
                        &self.root,
                        if parent.as_os_str().is_empty() {
                            Path::new(".")
                        } else {
                            parent
                        },
                        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                        Mode::empty(),
                        rustix::fs::ResolveFlags::BENEATH | rustix::fs::ResolveFlags::NO_SYMLINKS,
                    )
                    .with_context(|| format!("linking {}", shown.display()))?;
                    let fname = first.file_name().unwrap_or_default();
                    rustix::fs::linkat(&pfd, fname, dfd, &name, AtFlags::empty())
                        .with_context(|| format!("linking {}", shown.display()))?;
                    continue;
                }
                self.links.insert((md.dev(), md.ino()), r.clone());
            }
            let marker = rbuild_oci::device_marker_of(&s);
            if ft.is_file() && marker.is_none() {
                let out = rustix::fs::openat(
                    dfd,
                    &name,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .with_context(|| format!("creating {}", shown.display()))?;
                let mut out = fs::File::from(out);
                let mut input = fs::File::open(&s)?;
                std::io::copy(&mut input, &mut out)
                    .with_context(|| format!("writing {}", shown.display()))?;
                self.meta(out.as_fd_ref(), &s, &md, &shown)?;
            } else if ft.is_symlink() {
                let target = fs::read_link(&s)?;
                rustix::fs::symlinkat(&target, dfd, &name)
                    .with_context(|| format!("creating {}", shown.display()))?;
                let _ = rustix::fs::chownat(
                    dfd,
                    &name,
                    Some(rustix::fs::Uid::from_raw(md.uid())),
                    Some(rustix::fs::Gid::from_raw(md.gid())),
                    AtFlags::SYMLINK_NOFOLLOW,
                );
                rustix::fs::utimensat(dfd, &name, &times(&md), AtFlags::SYMLINK_NOFOLLOW)
                    .with_context(|| format!("setting times of {}", shown.display()))?;
            } else if ft.is_char_device()
                || ft.is_block_device()
                || ft.is_fifo()
                || marker.is_some()
            {
                let (kind, rdev, mode) = match marker {
                    Some((c, maj, min, mode)) => (
                        if c {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        },
                        rustix::fs::makedev(maj, min),
                        mode,
                    ),
                    None if ft.is_fifo() => (FileType::Fifo, 0, md.mode()),
                    None => (
                        if ft.is_char_device() {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        },
                        md.rdev(),
                        md.mode(),
                    ),
                };
                // Devices: usable by their owner only. A FIFO keeps its mode.
                let mode = if kind == FileType::Fifo {
                    mode & 0o777
                } else {
                    mode & 0o600
                };
                match rustix::fs::mknodat(dfd, &name, kind, Mode::from_raw_mode(mode), rdev) {
                    Ok(()) => {}
                    // Not allowed to create devices here (rootless): leave them out, as a
                    // non-root buildx client does.
                    Err(rustix::io::Errno::PERM) if kind != FileType::Fifo => continue,
                    Err(e) => {
                        return Err(e).with_context(|| format!("creating {}", shown.display()))
                    }
                }
                let _ = rustix::fs::chownat(
                    dfd,
                    &name,
                    Some(rustix::fs::Uid::from_raw(md.uid())),
                    Some(rustix::fs::Gid::from_raw(md.gid())),
                    AtFlags::SYMLINK_NOFOLLOW,
                );
                rustix::fs::chmodat(dfd, &name, Mode::from_raw_mode(mode), AtFlags::empty())
                    .with_context(|| format!("setting the mode of {}", shown.display()))?;
                rustix::fs::utimensat(dfd, &name, &times(&md), AtFlags::SYMLINK_NOFOLLOW)
                    .with_context(|| format!("setting times of {}", shown.display()))?;
            }
            // Sockets are not part of an image.
        }
        Ok(())
    }

    /// Owner, mode (without set-id bits), xattrs and times of `src` onto the open `fd`.
    fn meta(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        src: &Path,
        md: &fs::Metadata,
        shown: &Path,
    ) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        // Ids outside a rootless map cannot be given; a non-root buildx client skips them too.
        let _ = rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(md.uid())),
            Some(rustix::fs::Gid::from_raw(md.gid())),
        );
        rustix::fs::fchmod(fd, rustix::fs::Mode::from_raw_mode(md.mode() & 0o1777))
            .with_context(|| format!("setting the mode of {}", shown.display()))?;
        for (k, v) in rbuild_oci::user_xattrs(src)? {
            let _ = rustix::fs::fsetxattr(fd, k.as_os_str(), &v, rustix::fs::XattrFlags::empty());
        }
        rustix::fs::futimens(fd, &times(md))
            .with_context(|| format!("setting times of {}", shown.display()))?;
        Ok(())
    }
}

trait AsFdRef {
    fn as_fd_ref(&self) -> std::os::fd::BorrowedFd<'_>;
}

impl<T: std::os::fd::AsFd> AsFdRef for T {
    fn as_fd_ref(&self) -> std::os::fd::BorrowedFd<'_> {
        self.as_fd()
    }
}

fn times(md: &fs::Metadata) -> rustix::fs::Timestamps {
    use std::os::unix::fs::MetadataExt;
    let t = |s: i64, n: i64| rustix::fs::Timespec {
        tv_sec: s,
        tv_nsec: n as _,
    };
    rustix::fs::Timestamps {
        last_access: t(md.atime(), md.atime_nsec()),
        last_modification: t(md.mtime(), md.mtime_nsec()),
    }
}

/// A root filesystem tree as a tar (`type=tar`): the layer writer's deterministic format
/// (PAX for long names and xattrs, hardlinks kept, device markers written as devices).
pub(crate) fn tar_dir(dir: &Path, w: &mut dyn Write) -> Result<()> {
    rbuild_oci::write_layer(dir, w, &rbuild_oci::LayerOpts::default())?;
    Ok(())
}

/// Convert (compress, media types, annotations) for an image output.
pub fn converted(
    store: &rbuild_cache::Store,
    manifest: &Descriptor,
    opts: &ConvertOpts,
) -> Result<Descriptor> {
    Ok(rbuild_oci::convert_image(store, manifest, opts)?)
}

/// Push `manifest` (converted with `opts`) to every name; returns the pushed manifest's
/// descriptor (what `--metadata-file` reports as `containerimage.digest`).
pub fn push(
    store: &rbuild_cache::Store,
    manifest: &Descriptor,
    names: &[Reference],
    opts: &ConvertOpts,
    quiet: bool,
    transfers: Option<std::sync::Arc<dyn rbuild_oci::progress::TransferProgress>>,
) -> Result<Descriptor> {
    if names.is_empty() {
        bail!("push: the image has no name; give -t NAME or --output type=registry,name=NAME");
    }
    // An image index (several platforms) is pushed manifest by manifest, then the index.
    let index = rbuild_oci::index::is_index(manifest);
    let client = rbuild_oci::RegistryClient::new(crate::config::registry_config()?)?;
    let desc = if index {
        rbuild_oci::index::convert_index(store, manifest, opts)?
    } else {
        converted(store, manifest, opts)?
    };
    let mut push_opts = rbuild_oci::push::PushOpts::default();
    if let Some(t) = transfers {
        push_opts.progress = t;
    }
    for n in names {
        let rep = if index {
            client.push_index(store, &desc, n, &push_opts)
        } else {
            client.push_image(store, &desc, n, &push_opts)
        }
        .with_context(|| format!("pushing {}", n.familiar()))?;
        if !quiet {
            eprintln!(
                "pushed {}@{} ({}{} uploaded, {} mounted, {} already present)",
                n.familiar(),
                rep.manifest_digest,
                if index { "index; " } else { "" },
                rep.uploaded,
                rep.mounted,
                rep.existing
            );
        }
    }
    Ok(desc)
}

/// Run one output for a built image; returns the pushed manifest's descriptor when it pushed.
pub fn export(
    store: &rbuild_cache::Store,
    manifest: &Descriptor,
    tags: &[Reference],
    o: &OutputSpec,
    annotations: &Annotations,
    quiet: bool,
    transfers: Option<std::sync::Arc<dyn rbuild_oci::progress::TransferProgress>>,
) -> Result<Option<Descriptor>> {
    let mut names: Vec<Reference> = tags.to_vec();
    for n in &o.names {
        names.push(Reference::parse(n).map_err(|e| anyhow!("--output name={n:?}: {e}"))?);
    }
    if rbuild_oci::index::is_index(manifest) && matches!(o.kind.as_str(), "local" | "tar") {
        export_rootfs(store, manifest, o)?;
        return Ok(None);
    }
    match o.kind.as_str() {
        "image" | "registry" => {
            let images = ImageStore::open(store)?;
            for n in &names[tags.len()..] {
                images.tag(n, manifest)?;
            }
            if o.push {
                let opts = o.convert_opts(annotations);
                let d = push(store, manifest, &names, &opts, quiet, transfers)?;
                return Ok(Some(d));
            }
        }
        "oci" | "docker" if !o.tar => {
            check_local_dest(store.root(), &o.dest)?;
            let opts = o.convert_opts(annotations);
            let tmp = TmpTree::new(store, "oci-layout")?;
            let archive = tmp.path().join("image.tar");
            let mut f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&archive)
                .with_context(|| format!("creating {}", archive.display()))?;
            rbuild_oci::export_archive(
                store,
                manifest,
                &opts,
                &names,
                ArchiveFormat::Oci,
                ArchiveSink::File(&mut f),
            )?;
            std::io::Seek::rewind(&mut f)?;
            write_layout_dir(f, Path::new(&o.dest))
                .with_context(|| format!("--output type={},dest={}", o.kind, o.dest))?;
        }
        "oci" | "docker" => {
            let format = if o.kind == "oci" {
                ArchiveFormat::Oci
            } else {
                ArchiveFormat::Docker
            };
            let opts = o.convert_opts(annotations);
            write_dest_sink(&o.dest, |sink| {
                rbuild_oci::export_archive(store, manifest, &opts, &names, format, sink)?;
                Ok(())
            })?;
        }
        "local" => {
            check_local_dest(store.root(), &o.dest)?;
            unpack_rootfs(store, manifest, Path::new(&o.dest))?;
        }
        "tar" => {
            let tree = rootfs_tree(store, manifest)?;
            write_dest(&o.dest, |w| tar_dir(tree.path(), w))?;
        }
        other => bail!("--output type={other}: not supported"),
    }
    Ok(None)
}

/// Unpack an OCI layout tar (as [`rbuild_oci::export_archive`] writes it) into the layout
/// directory `dest`, the way BuildKit's client fills a `tar=false` destination: blobs are added
/// (existing ones kept), `oci-layout` is written and the new manifest entries go into
/// `index.json`, replacing entries of the same name (an unnamed image is named `latest`).
/// Everything is created beneath `dest` through `O_NOFOLLOW` fds and renamed into place.
fn write_layout_dir(archive: impl std::io::Read, dest: &Path) -> Result<()> {
    use rustix::fs::{Mode, OFlags};
    match fs::symlink_metadata(dest) {
        Ok(md) if !md.is_dir() => bail!("destination directory {} is a file", dest.display()),
        Ok(_) => {}
        Err(_) => {
            fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?
        }
    }
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let root = rustix::fs::open(dest, dir_flags, Mode::empty())
        .with_context(|| format!("opening {}", dest.display()))?;
    let subdir = |parent: &std::os::fd::OwnedFd, name: &str| -> Result<std::os::fd::OwnedFd> {
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => bail!("creating {name} in {}: {e}", dest.display()),
        }
        rustix::fs::openat(parent, name, dir_flags, Mode::empty())
            .with_context(|| format!("opening {name} in {} (not a directory?)", dest.display()))
    };
    let blobs = subdir(&root, "blobs")?;
    let sha = subdir(&blobs, "sha256")?;
    let put = |dir: &std::os::fd::OwnedFd, name: &str, r: &mut dyn std::io::Read| -> Result<()> {
        let tmp = format!(".{name}.rbuild-tmp");
        let _ = rustix::fs::unlinkat(dir, tmp.as_str(), rustix::fs::AtFlags::empty());
        let fd = rustix::fs::openat(
            dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .with_context(|| format!("creating {name} in {}", dest.display()))?;
        let mut f = fs::File::from(fd);
        std::io::copy(r, &mut f).with_context(|| format!("writing {name}"))?;
        f.flush()?;
        rustix::fs::renameat(dir, tmp.as_str(), dir, name)
            .with_context(|| format!("renaming {name} in {}", dest.display()))?;
        Ok(())
    };
    let mut new_index: Option<serde_json::Value> = None;
    let mut ar = tar::Archive::new(archive);
    for entry in ar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            if hex.is_empty() {
                continue;
            }
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("unexpected blob name {path:?} in the exported layout");
            }
            if rustix::fs::statat(&sha, hex, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_err() {
                put(&sha, hex, &mut entry)?;
            }
        } else if path == "index.json" {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut buf)?;
            new_index = Some(serde_json::from_slice(&buf)?);
        }
    }
    let new_index = new_index.ok_or_else(|| anyhow!("the exported layout has no index.json"))?;
    const REF_NAME: &str = "org.opencontainers.image.ref.name";
    let mut index = match rustix::fs::openat(
        &root,
        "index.json",
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut fs::File::from(fd), &mut buf)?;
            serde_json::from_slice::<serde_json::Value>(&buf).with_context(|| {
                format!("{}: not an OCI index", dest.join("index.json").display())
            })?
        }
        Err(rustix::io::Errno::NOENT) => serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [],
        }),
        Err(e) => bail!("reading {}: {e}", dest.join("index.json").display()),
    };
    let name_of = |m: &serde_json::Value| {
        (
            m["annotations"][REF_NAME].as_str().map(String::from),
            m["annotations"][ANNOTATION_IMAGE_NAME]
                .as_str()
                .map(String::from),
        )
    };
    let mut added: Vec<serde_json::Value> = Vec::new();
    for m in new_index["manifests"].as_array().into_iter().flatten() {
        let mut m = m.clone();
        if m["annotations"][REF_NAME].is_null() {
            if !m["annotations"].is_object() {
                m["annotations"] = serde_json::json!({});
            }
            m["annotations"][REF_NAME] = "latest".into();
        }
        added.push(m);
    }
    let manifests = index["manifests"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("{}: no manifests list", dest.join("index.json").display()))?;
    manifests.retain(|old| !added.iter().any(|n| name_of(n) == name_of(old)));
    manifests.extend(added);
    let bytes = serde_json::to_vec(&index)?;
    put(
        &root,
        "oci-layout",
        &mut &br#"{"imageLayoutVersion":"1.0.0"}"#[..],
    )?;
    put(&root, "index.json", &mut &bytes[..])?;
    Ok(())
}

/// containerd's image-name annotation (BuildKit sets it next to the OCI ref name).
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

/// `--load`: stream a docker archive of the image into `docker load`.
pub fn load_into_docker(
    store: &rbuild_cache::Store,
    manifest: &Descriptor,
    tags: &[Reference],
) -> Result<()> {
    let docker = std::env::var("RBUILD_DOCKER").unwrap_or_else(|_| "docker".into());
    let ok = Command::new(&docker)
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        bail!("--load: no docker daemon answers (`{docker} version` failed); use --output type=docker,dest=FILE and load it elsewhere");
    }
    let opts = ConvertOpts {
        compression: Compression::Uncompressed,
        oci_media_types: false,
        ..Default::default()
    };
    let desc = converted(store, manifest, &opts)?;
    let mut child = Command::new(&docker)
        .arg("load")
        .stdin(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {docker} load"))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("docker load: no stdin"))?;
    let r = rbuild_oci::export_docker_archive(store, &desc, tags, &mut stdin);
    drop(stdin);
    let status = child.wait()?;
    // docker load's own failure explains a broken pipe on its stdin
    if !status.success() {
        bail!("docker load failed ({status})");
    }
    r?;
    Ok(())
}

/// `linux_amd64`, `linux_arm_v7`: buildx's per-platform directory names.
pub(crate) fn platform_dir(p: &rbuild_oci::Platform) -> String {
    let mut s = format!("{}_{}", p.os, p.architecture);
    if let Some(v) = &p.variant {
        s.push('_');
        s.push_str(v);
    }
    s
}

/// Unpack each platform's root filesystem into `dir/<os>_<arch>[_<variant>]/`.
fn unpack_each(store: &rbuild_cache::Store, index: &Descriptor, dir: &Path) -> Result<()> {
    let idx = rbuild_oci::index::read_index(store, index)?;
    for m in &idx.manifests {
        let p = m.platform.as_ref().ok_or_else(|| {
            anyhow!(
                "index {}: manifest {} has no platform",
                index.digest,
                m.digest
            )
        })?;
        unpack_rootfs(store, m, &dir.join(platform_dir(p)))?;
    }
    Ok(())
}

/// `type=local` / `type=tar` of an index: one root filesystem per platform, in
/// `<os>_<arch>[_<variant>]/` (buildx's layout).
pub fn export_rootfs(
    store: &rbuild_cache::Store,
    index: &Descriptor,
    o: &OutputSpec,
) -> Result<()> {
    if o.kind == "local" {
        check_local_dest(store.root(), &o.dest)?;
        return unpack_each(store, index, &PathBuf::from(&o.dest));
    }
    // One tree holding every platform's, tarred once.
    let tree = TmpTree::new(store, "rootfs")?;
    let idx = rbuild_oci::index::read_index(store, index)?;
    for m in &idx.manifests {
        let p = m.platform.as_ref().ok_or_else(|| {
            anyhow!(
                "index {}: manifest {} has no platform",
                index.digest,
                m.digest
            )
        })?;
        let one = rootfs_tree(store, m)?;
        let to = tree.path().join(platform_dir(p));
        fs::rename(one.path(), &to).with_context(|| format!("moving {}", to.display()))?;
        fs::create_dir(one.path()).ok();
    }
    write_dest(&o.dest, |w| tar_dir(tree.path(), w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_specs() {
        let o = parse("type=oci,dest=a.tar").unwrap();
        assert_eq!((o.kind.as_str(), o.dest.as_str()), ("oci", "a.tar"));
        assert_eq!(o.compression, Compression::Gzip);
        assert!(o.oci_media_types);
        let o =
            parse("type=docker,dest=-,compression=zstd,compression-level=9,force-compression=true")
                .unwrap();
        assert!(!o.oci_media_types && o.force);
        assert_eq!((o.compression, o.level), (Compression::Zstd, Some(9)));
        let o = parse(r#"type=image,"name=a:1,b:2",push=true"#).unwrap();
        assert_eq!(o.names, ["a:1", "b:2"]);
        assert!(o.push);
        assert!(parse("type=registry,name=x").unwrap().push);
        assert_eq!(parse("out").unwrap().kind, "local");
        assert_eq!(parse("-").unwrap().kind, "tar");
        assert!(parse("type=local").is_err());
        assert!(parse("type=oci").is_err());
        assert!(parse("type=cacheonly").is_err());
        assert!(parse("type=oci,dest=x,compression=lz4").is_err());
        assert!(parse("dest=x").is_err());
        assert!(parse("type=oci,oops").is_err());
    }

    #[test]
    fn annotation_levels() {
        let host = rbuild_graph::Platform::host();
        let here = format!("manifest[{}/{}]:p=1", host.os, host.architecture);
        let a = annotations(
            &[
                "a=1".into(),
                "manifest:b=2".into(),
                "manifest-descriptor:c=3".into(),
                "manifest[plan9/mips]:skipped=1".into(),
                here,
                "x:y=z".into(),
            ],
            &host,
            false,
        )
        .unwrap();
        assert_eq!(a.manifest["a"], "1");
        assert_eq!(a.manifest["b"], "2");
        assert_eq!(a.manifest["p"], "1");
        assert_eq!(a.manifest["x:y"], "z");
        assert!(!a.manifest.contains_key("skipped"));
        assert_eq!(a.manifest_descriptor["c"], "3");
        for bad in [
            "index:c=3",
            "index-descriptor:c=3",
            "nokey",
            "manifest[linux:k=v",
        ] {
            assert!(annotations(&[bad.into()], &host, false).is_err(), "{bad}");
        }
        // with an index (several platforms), the index levels are kept apart
        let a = annotations(
            &[
                "index:i=1".into(),
                "index-descriptor:d=2".into(),
                "m=3".into(),
            ],
            &host,
            true,
        )
        .unwrap();
        assert_eq!(
            (a.index["i"].as_str(), a.index_descriptor["d"].as_str()),
            ("1", "2")
        );
        assert_eq!(a.manifest["m"], "3");
        assert!(!a.manifest.contains_key("i"));
    }
}
