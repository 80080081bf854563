//! A local cache directory (an OCI image layout: `oci-layout`, `index.json`, `blobs/sha256/`),
//! read and written through directory fds: the directory the user named is trusted, nothing
//! beneath it is. `blobs`, `blobs/sha256` and every file are opened with `O_NOFOLLOW` (a
//! symlink anywhere in the layout is refused, never followed), files must be regular, every
//! read is bounded, every blob read is verified against its name, every write is a new
//! temporary file renamed into place, and garbage collection removes only regular files of
//! `blobs/sha256` whose names are 64 hex digits.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::digest::{digest_hex, verify};
use crate::image_store::write_atomic_at;
use crate::types::{media_types as mt, parse_json, Descriptor, Index, Manifest};
use crate::OciError;

/// The `oci-layout` file's content.
pub(crate) const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// An open layout directory.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    dir: Arc<OwnedFd>,
    path: PathBuf,
    /// How errors name the layout ("local cache DIR").
    origin: String,
}

fn errno_io(e: rustix::io::Errno) -> std::io::Error {
    e.into()
}

impl Layout {
    /// Open the directory `path` (followed: the user named it).
    pub(crate) fn open(path: &Path, origin: &str) -> Result<Layout, OciError> {
        let dir = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| OciError::io("open", path)(errno_io(e)))?;
        Ok(Layout {
            dir: Arc::new(dir),
            path: path.to_path_buf(),
            origin: origin.to_string(),
        })
    }

    fn invalid(&self, reason: impl Into<String>) -> OciError {
        OciError::InvalidCache {
            origin: self.origin.clone(),
            reason: reason.into(),
        }
    }

    /// The directory `name` in `dir` (shown as `shown`), never through a symlink: a symlink
    /// or non-directory there is refused as such.
    fn subdir(&self, dir: &OwnedFd, name: &str, shown: &str) -> Result<OwnedFd, OciError> {
        rbuild_fsroot::open_dir_at(dir, OsStr::new(name)).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => self.invalid(format!(
                "{shown} is a symlink or not a directory (refused: the blobs of a layout must \
                 be inside it)"
            )),
            Some(libc::ENOENT) => self.invalid(format!("no {shown} directory")),
            _ => OciError::io("open", self.path.join(shown))(e),
        })
    }

    /// The directory `blobs/sha256`, never through a symlink.
    pub(crate) fn blobs(&self) -> Result<OwnedFd, OciError> {
        let blobs = self.subdir(&self.dir, "blobs", "blobs")?;
        self.subdir(&blobs, "sha256", "blobs/sha256")
    }

    /// A regular file of the layout (never a symlink, fifo or device), at most `limit` bytes.
    pub(crate) fn read_file(&self, name: &str, limit: u64) -> Result<Vec<u8>, OciError> {
        read_bounded(
            &self.dir,
            &self.path.join(name),
            OsStr::new(name),
            limit,
            || self.invalid(format!("{name} is larger than {limit} bytes")),
        )
    }

    /// Open the blob `desc` for reading: a regular file of `desc.size` bytes (the caller
    /// verifies the digest while it reads).
    pub(crate) fn open_blob(&self, desc: &Descriptor) -> Result<File, OciError> {
        let hex = digest_hex(&desc.digest)?;
        let shown = self.path.join("blobs/sha256").join(hex);
        let f = rbuild_fsroot::open_file_at(self.blobs()?, OsStr::new(hex)).map_err(|e| match e
            .raw_os_error()
        {
            Some(libc::ENOENT) => self.invalid(format!("blob {} is missing", desc.digest)),
            Some(libc::ELOOP) => self.invalid(format!("blob {} is a symlink", desc.digest)),
            _ => OciError::io("open", &shown)(e),
        })?;
        let size = f.metadata().map_err(OciError::io("stat", &shown))?.len();
        if size != desc.size {
            return Err(OciError::DigestMismatch {
                what: format!("size of blob {} in {}", desc.digest, self.origin),
                expected: format!("{} bytes", desc.size),
                actual: format!("{size} bytes"),
            });
        }
        Ok(f)
    }

    /// A small blob (manifest, config) in memory, at most `limit` bytes, digest- and
    /// size-verified.
    pub(crate) fn read_blob(&self, desc: &Descriptor, limit: u64) -> Result<Vec<u8>, OciError> {
        if desc.size > limit {
            return Err(self.invalid(format!(
                "blob {} is {} bytes (at most {limit} are read)",
                desc.digest, desc.size
            )));
        }
        let mut data = Vec::new();
        self.open_blob(desc)?
            .take(limit + 1)
            .read_to_end(&mut data)
            .map_err(OciError::io("read blob", &desc.digest))?;
        verify(
            &format!("blob {} of {}", desc.digest, self.origin),
            &data,
            &desc.digest,
            Some(desc.size),
        )?;
        Ok(data)
    }

    /// Replace a top-level file (`index.json`, `oci-layout`) atomically.
    pub(crate) fn put_file(&self, name: &str, data: &[u8]) -> Result<(), OciError> {
        let shown = self.path.join(name);
        write_atomic_at(&*self.dir, &self.path, OsStr::new(name), 0o644, &mut |f| {
            use std::io::Write;
            f.write_all(data).map_err(OciError::io("write", &shown))
        })
    }

    /// The layout's `index.json`, parsed (`None` when there is none).
    pub(crate) fn index(&self) -> Result<Option<Index>, OciError> {
        match self.read_file("index.json", super::MAX_MANIFEST) {
            Ok(data) => parse_json(&format!("index.json of {}", self.origin), &data).map(Some),
            Err(OciError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The blobs an `index.json` entry needs (hex names): the manifest or index, and for each
    /// manifest its config and layers; every document read is verified. `None` when the
    /// entry is broken (missing or corrupt blobs, unknown media type).
    pub(crate) fn entry_blobs(&self, entry: &Descriptor) -> Option<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        let mut add = |d: &Descriptor| -> Option<()> {
            out.insert(digest_hex(&d.digest).ok()?.to_string());
            Some(())
        };
        add(entry)?;
        let manifests = if crate::index::is_index(entry) {
            let data = self.read_blob(entry, super::MAX_MANIFEST).ok()?;
            let index: Index = parse_json("index", &data).ok()?;
            for m in &index.manifests {
                add(m)?;
            }
            index.manifests
        } else {
            vec![entry.clone()]
        };
        for m in &manifests {
            if m.media_type != mt::OCI_MANIFEST && m.media_type != mt::DOCKER_MANIFEST {
                return None;
            }
            let data = self.read_blob(m, super::MAX_MANIFEST).ok()?;
            let manifest: Manifest = parse_json("manifest", &data).ok()?;
            add(&manifest.config)?;
            for l in &manifest.layers {
                add(l)?;
            }
        }
        Some(out)
    }
}

/// Read the regular file `name` in `dir` (never through a symlink), at most `limit` bytes.
fn read_bounded(
    dir: &OwnedFd,
    shown: &Path,
    name: &OsStr,
    limit: u64,
    too_big: impl FnOnce() -> OciError,
) -> Result<Vec<u8>, OciError> {
    let f = rbuild_fsroot::open_file_at(dir, name).map_err(OciError::io("open", shown))?;
    let mut data = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(OciError::io("read", shown))?;
    if data.len() as u64 > limit {
        return Err(too_big());
    }
    Ok(data)
}

/// A layout directory being written by one export (an exclusive `flock` on the directory
/// is held while it lives).
pub(crate) struct LayoutWriter {
    pub(crate) layout: Layout,
    sha256: OwnedFd,
}

impl LayoutWriter {
    /// Create or reuse the directory `path`: a missing one is created; an existing one must
    /// be empty or a layout (have an `oci-layout` file), else it is refused and not touched.
    pub(crate) fn prepare(path: &Path) -> Result<LayoutWriter, OciError> {
        let dest = |reason: String| OciError::CacheDest {
            path: path.to_path_buf(),
            reason,
        };
        match std::fs::metadata(path) {
            Ok(m) if !m.is_dir() => return Err(dest("exists and is not a directory".into())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(path).map_err(OciError::io("create", path))?;
            }
            Err(e) => return Err(OciError::io("stat", path)(e)),
        }
        let origin = format!("local cache {}", path.display());
        let layout = Layout::open(path, &origin)?;
        rustix::fs::flock(&*layout.dir, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| OciError::io("lock", path)(errno_io(e)))?;
        let names = rbuild_fsroot::list_dir(&*layout.dir).map_err(OciError::io("list", path))?;
        if !names.is_empty() {
            let is_layout = rbuild_fsroot::lstat_at(&*layout.dir, OsStr::new("oci-layout"))
                .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
                .unwrap_or(false);
            if !is_layout {
                return Err(dest(
                    "exists and is not an OCI layout (it has other files and no oci-layout \
                     file): name a new or empty directory"
                        .into(),
                ));
            }
        }
        // The marker first: a first export killed half-way leaves a directory the next
        // export recognises as its own.
        if layout.read_file("oci-layout", 4096).ok().as_deref() != Some(OCI_LAYOUT) {
            layout.put_file("oci-layout", OCI_LAYOUT)?;
        }
        let refused = |e: OciError| match e {
            OciError::InvalidCache { reason, .. } => dest(reason),
            other => other,
        };
        let mkdir = |parent: &OwnedFd, name: &str, shown: &str| match rustix::fs::mkdirat(
            parent,
            name,
            Mode::from_raw_mode(0o755),
        ) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
            Err(e) => Err(OciError::io("create", path.join(shown))(e.into())),
        };
        mkdir(&layout.dir, "blobs", "blobs")?;
        let blobs = layout
            .subdir(&layout.dir, "blobs", "blobs")
            .map_err(refused)?;
        mkdir(&blobs, "sha256", "blobs/sha256")?;
        let sha256 = layout
            .subdir(&blobs, "sha256", "blobs/sha256")
            .map_err(refused)?;
        Ok(LayoutWriter { layout, sha256 })
    }

    /// The directory as given.
    pub(crate) fn path(&self) -> &Path {
        &self.layout.path
    }

    /// Whether `blobs/sha256/<hex>` is already the blob `desc` (a regular file of its size
    /// whose content hashes to its digest).
    pub(crate) fn has_blob(&self, desc: &Descriptor) -> bool {
        let Ok(hex) = digest_hex(&desc.digest) else {
            return false;
        };
        let Ok(f) = rbuild_fsroot::open_file_at(&self.sha256, OsStr::new(hex)) else {
            return false;
        };
        if f.metadata().map(|m| m.len()).ok() != Some(desc.size) {
            return false;
        }
        rbuild_cache::sha256_reader(std::io::BufReader::with_capacity(1 << 20, f))
            .map(|b| b.digest == desc.digest && b.size == desc.size)
            .unwrap_or(false)
    }

    /// Write the blob `desc` (unless it is there already): `fill` writes its bytes into a
    /// new temporary file, renamed into place once fsynced.
    pub(crate) fn put_blob(
        &self,
        desc: &Descriptor,
        fill: &mut dyn FnMut(&mut File) -> Result<(), OciError>,
    ) -> Result<bool, OciError> {
        let hex = digest_hex(&desc.digest)?;
        if self.has_blob(desc) {
            return Ok(false);
        }
        write_atomic_at(
            &self.sha256,
            &self.layout.path.join("blobs/sha256"),
            OsStr::new(hex),
            0o644,
            fill,
        )?;
        Ok(true)
    }

    /// Remove every regular file of `blobs/sha256` named by 64 hex digits that is not in
    /// `keep` (hex names). Anything else (other names, directories, symlinks) is left alone.
    /// Returns the number removed.
    pub(crate) fn collect_garbage(&self, keep: &BTreeSet<String>) -> Result<usize, OciError> {
        let dir_path = self.layout.path.join("blobs/sha256");
        let names =
            rbuild_fsroot::list_dir(&self.sha256).map_err(OciError::io("list", &dir_path))?;
        let mut removed = 0;
        for name in names {
            let Ok(s) = std::str::from_utf8(name.as_bytes()) else {
                continue;
            };
            if digest_hex(&format!("sha256:{s}")).is_err() || keep.contains(s) {
                continue;
            }
            let regular = rbuild_fsroot::lstat_at(&self.sha256, &name)
                .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
                .unwrap_or(false);
            if !regular {
                continue;
            }
            match rustix::fs::unlinkat(&self.sha256, &name, AtFlags::empty()) {
                Ok(()) => removed += 1,
                Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(OciError::io("remove", dir_path.join(&name))(e.into())),
            }
        }
        let _ = rustix::fs::fsync(&self.sha256);
        Ok(removed)
    }
}
