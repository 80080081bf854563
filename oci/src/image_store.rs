//! The local image store: an OCI image layout at `<store root>/layout-v1/` whose `blobs` is a
//! symlink to the content store (`../blobs-v1`), so images share blobs with the build cache.
//! Each tag is a manifest descriptor in `index.json` annotated with
//! `org.opencontainers.image.ref.name` = the full normalised name; `index.json` is rewritten
//! under the store's "images" lock with an atomic rename.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};

use crate::digest::digest_hex;
use crate::reference::Reference;
use crate::store::ContentStore;
use crate::types::{canonical_json, media_types as mt, parse_json, Descriptor, Index, Manifest};
use crate::OciError;

/// Directory of the layout inside the store root.
pub const LAYOUT_DIR: &str = "layout-v1";
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Handle on the local image store. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct ImageStore {
    store: Arc<dyn ContentStore + Send + Sync>,
    layout: PathBuf,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("layout", &self.layout)
            .finish()
    }
}

/// The name recorded for a tag: the normalised reference without a digest.
fn tag_name(name: &Reference) -> String {
    let mut n = name.clone();
    n.digest = None;
    if n.tag.is_none() {
        n.tag = Some("latest".into());
    }
    n.to_string()
}

/// Write `data` to `path` atomically (tmp + fsync + rename + fsync dir), created with `mode`
/// (before the umask).
pub(crate) fn atomic_write_mode(path: &Path, data: &[u8], mode: u32) -> Result<(), OciError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir = match dir.as_os_str().is_empty() {
        true => Path::new("."),
        false => dir,
    };
    let name = path
        .file_name()
        .ok_or_else(|| OciError::io("write", path)(std::io::ErrorKind::InvalidInput.into()))?;
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| OciError::io("open", dir)(e.into()))?;
    write_atomic_at(&fd, dir, name, mode, &mut |f| {
        f.write_all(data).map_err(OciError::io("write", path))
    })
}

/// [`atomic_write_mode`] with mode 0666.
pub(crate) fn atomic_write(path: &Path, data: &[u8]) -> Result<(), OciError> {
    atomic_write_mode(path, data, 0o666)
}

/// Create `name` in the directory `dir` (an fd, `dir_path` for messages) atomically: `fill`
/// writes a new temporary file (`O_EXCL | O_NOFOLLOW`, never a file planted there), which is
/// fsynced and renamed over `name` (a symlink at `name` is replaced, never followed), then the
/// directory is fsynced. On any error the temporary is removed and `name` is unchanged.
pub(crate) fn write_atomic_at(
    dir: &impl AsFd,
    dir_path: &Path,
    name: &OsStr,
    mode: u32,
    fill: &mut dyn FnMut(&mut fs::File) -> Result<(), OciError>,
) -> Result<(), OciError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp_path = dir_path.join(&tmp);
    let fd = rustix::fs::openat(
        dir,
        tmp.as_os_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
    .map_err(|e| OciError::io("create", &tmp_path)(e.into()))?;
    let mut f = fs::File::from(fd);
    let res = (|| {
        fill(&mut f)?;
        f.sync_all().map_err(OciError::io("fsync", &tmp_path))?;
        rustix::fs::renameat(dir, tmp.as_os_str(), dir, name)
            .map_err(|e| OciError::io("rename into", dir_path.join(name))(e.into()))?;
        let _ = rustix::fs::fsync(dir);
        Ok(())
    })();
    if res.is_err() {
        let _ = rustix::fs::unlinkat(dir, tmp.as_os_str(), rustix::fs::AtFlags::empty());
    }
    res
}

impl ImageStore {
    /// Open (creating the layout files if missing).
    /// The store handle is cloned (rbuild-cache's `Store` is an `Arc` inside).
    pub fn open<S: ContentStore + Clone + Send + Sync + 'static>(
        store: &S,
    ) -> Result<Self, OciError> {
        let store: Arc<dyn ContentStore + Send + Sync> = Arc::new(store.clone());
        let layout = store.root().join(LAYOUT_DIR);
        fs::create_dir_all(&layout).map_err(OciError::io("create", &layout))?;
        let blobs_dir = store.root().join("blobs-v1");
        fs::create_dir_all(blobs_dir.join("sha256")).map_err(OciError::io("create", &blobs_dir))?;
        let link = layout.join("blobs");
        match fs::symlink_metadata(&link) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match std::os::unix::fs::symlink("../blobs-v1", &link) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(OciError::io("create symlink", &link)(e)),
                }
            }
            Err(e) => return Err(OciError::io("stat", &link)(e)),
        }
        let me = ImageStore { store, layout };
        let layout_file = me.layout.join("oci-layout");
        if !layout_file.exists() {
            atomic_write(&layout_file, OCI_LAYOUT)?;
        }
        if !me.index_path().exists() {
            let _lock = me.store.lock("images")?;
            if !me.index_path().exists() {
                me.write_index(&Index {
                    schema_version: 2,
                    media_type: Some(mt::OCI_INDEX.into()),
                    manifests: Vec::new(),
                    annotations: BTreeMap::new(),
                })?;
            }
        }
        Ok(me)
    }

    /// `<store root>/layout-v1`.
    pub fn layout_dir(&self) -> PathBuf {
        self.layout.clone()
    }

    fn index_path(&self) -> PathBuf {
        self.layout.join("index.json")
    }

    fn read_index(&self) -> Result<Index, OciError> {
        let p = self.index_path();
        let data = fs::read(&p).map_err(OciError::io("read", &p))?;
        parse_json(&p.display().to_string(), &data)
    }

    fn write_index(&self, index: &Index) -> Result<(), OciError> {
        let data = canonical_json("index.json", index)?;
        atomic_write(&self.index_path(), &data)
    }

    /// Store config bytes and an OCI image manifest over `layers` (which must already be in the
    /// content store); returns the manifest descriptor. The manifest JSON is canonical, so the
    /// same inputs always give the same digest.
    pub fn put_image(
        &self,
        config: &[u8],
        layers: &[Descriptor],
        annotations: &BTreeMap<String, String>,
    ) -> Result<Descriptor, OciError> {
        for l in layers {
            digest_hex(&l.digest)?;
            if !self.store.has_blob(&l.digest) {
                return Err(OciError::Store {
                    op: format!("put image: layer {}", l.digest),
                    reason: "blob is not in the content store".into(),
                });
            }
        }
        let (cdigest, csize) = self.store.put_blob(config)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(mt::OCI_MANIFEST.into()),
            config: Descriptor::new(mt::OCI_CONFIG, cdigest, csize),
            layers: layers
                .iter()
                .map(|l| Descriptor {
                    platform: None,
                    ..l.clone()
                })
                .collect(),
            annotations: annotations.clone(),
        };
        let bytes = canonical_json("manifest", &manifest)?;
        let (mdigest, msize) = self.store.put_blob(&bytes)?;
        Ok(Descriptor::new(mt::OCI_MANIFEST, mdigest, msize))
    }

    /// Point `name` at `manifest` (replacing any previous target of that name).
    pub fn tag(&self, name: &Reference, manifest: &Descriptor) -> Result<(), OciError> {
        digest_hex(&manifest.digest)?;
        if !self.store.has_blob(&manifest.digest) {
            return Err(OciError::Store {
                op: format!("tag {}: manifest {}", name.familiar(), manifest.digest),
                reason: "blob is not in the content store".into(),
            });
        }
        let full = tag_name(name);
        let _lock = self.store.lock("images")?;
        let mut index = self.read_index()?;
        index
            .manifests
            .retain(|d| d.annotations.get(mt::ANNOTATION_REF_NAME) != Some(&full));
        let mut d = Descriptor::new(
            manifest.media_type.clone(),
            manifest.digest.clone(),
            manifest.size,
        );
        d.annotations.insert(mt::ANNOTATION_REF_NAME.into(), full);
        index.manifests.push(d);
        index.manifests.sort_by(|a, b| {
            a.annotations
                .get(mt::ANNOTATION_REF_NAME)
                .cmp(&b.annotations.get(mt::ANNOTATION_REF_NAME))
        });
        self.write_index(&index)
    }

    /// Remove a name; returns whether it existed. Blobs are left for GC.
    pub fn untag(&self, name: &Reference) -> Result<bool, OciError> {
        let full = tag_name(name);
        let _lock = self.store.lock("images")?;
        let mut index = self.read_index()?;
        let before = index.manifests.len();
        index
            .manifests
            .retain(|d| d.annotations.get(mt::ANNOTATION_REF_NAME) != Some(&full));
        if index.manifests.len() == before {
            return Ok(false);
        }
        self.write_index(&index)?;
        Ok(true)
    }

    /// The manifest descriptor a name points at (without the name annotation).
    pub fn get(&self, name: &Reference) -> Result<Option<Descriptor>, OciError> {
        let full = tag_name(name);
        Ok(self
            .list()?
            .into_iter()
            .find(|(n, _)| *n == full)
            .map(|(_, d)| d))
    }

    /// All (full name, manifest descriptor) pairs, sorted by name.
    pub fn list(&self) -> Result<Vec<(String, Descriptor)>, OciError> {
        let index = self.read_index()?;
        let mut out: Vec<(String, Descriptor)> = index
            .manifests
            .into_iter()
            .filter_map(|mut d| {
                let name = d.annotations.remove(mt::ANNOTATION_REF_NAME)?;
                Some((name, d))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Read and parse a manifest from the content store (digest-verified).
    pub fn read_manifest(&self, desc: &Descriptor) -> Result<Manifest, OciError> {
        read_manifest(self.store.as_ref(), desc)
    }
}

/// Read and parse an image manifest blob, verifying its digest.
pub(crate) fn read_manifest(
    store: &dyn ContentStore,
    desc: &Descriptor,
) -> Result<Manifest, OciError> {
    let data = store.read_blob(&desc.digest)?;
    crate::digest::verify(
        &format!("manifest {}", desc.digest),
        &data,
        &desc.digest,
        None,
    )?;
    parse_json(&format!("manifest {}", desc.digest), &data)
}
