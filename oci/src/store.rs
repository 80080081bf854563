//! The narrow view of the content store this crate needs ([`ContentStore`]), so that registry,
//! image-store and export code is independent of how blobs are kept. `rbuild-cache`'s `Store`
//! implements it; [`DirStore`] is a minimal stand-alone implementation with the same on-disk
//! layout (`<root>/blobs-v1/sha256/<hex>`, checked commits through `<root>/tmp`).

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::{digest_hex, HashingWriter};
use crate::OciError;

/// A held lock; released when dropped.
pub type LockGuard = Box<dyn std::any::Any>;

/// What rbuild-oci needs from a content-addressed blob store.
pub trait ContentStore {
    /// Store root directory (contains `blobs-v1/`).
    fn root(&self) -> PathBuf;
    /// Path of a blob (which may not exist).
    fn blob_path(&self, digest: &str) -> Result<PathBuf, OciError>;
    /// Whether the blob is present.
    fn has_blob(&self, digest: &str) -> bool;
    /// Store bytes; returns (digest, size).
    fn put_blob(&self, data: &[u8]) -> Result<(String, u64), OciError>;
    /// Stream a blob in and commit it only if it matches `digest` and `size`; nothing is stored
    /// on mismatch.
    fn ingest(&self, src: &mut dyn Read, digest: &str, size: u64) -> Result<(), OciError>;
    /// Take an exclusive named lock (e.g. "images").
    fn lock(&self, name: &str) -> Result<LockGuard, OciError>;
    /// Open a blob for reading.
    fn open_blob(&self, digest: &str) -> Result<File, OciError> {
        let p = self.blob_path(digest)?;
        File::open(&p).map_err(OciError::io("open blob", p))
    }
    /// Read a whole blob.
    fn read_blob(&self, digest: &str) -> Result<Vec<u8>, OciError> {
        let p = self.blob_path(digest)?;
        fs::read(&p).map_err(OciError::io("read blob", p))
    }
    /// Store whatever `write` writes (digest computed while writing); returns (digest, size).
    fn write_stream(&self, write: &mut StreamFn<'_>) -> Result<(String, u64), OciError>;
    /// A value from the store's metadata table (`None` when absent or unsupported).
    fn meta_get(&self, _ns: &str, _key: &str) -> Option<String> {
        None
    }
    /// Record a value in the store's metadata table (ignored when unsupported).
    fn meta_put(&self, _ns: &str, _key: &str, _value: &str) {}
}

/// The writer callback of [`ContentStore::write_stream`].
pub type StreamFn<'a> = dyn FnMut(&mut dyn std::io::Write) -> Result<(), OciError> + 'a;

impl ContentStore for rbuild_cache::Store {
    fn root(&self) -> PathBuf {
        rbuild_cache::Store::root(self).to_path_buf()
    }
    fn blob_path(&self, digest: &str) -> Result<PathBuf, OciError> {
        rbuild_cache::Store::blob_path(self, digest).map_err(|e| OciError::Store {
            op: format!("blob path {digest}"),
            reason: e.to_string(),
        })
    }
    fn has_blob(&self, digest: &str) -> bool {
        rbuild_cache::Store::has_blob(self, digest)
    }
    fn put_blob(&self, data: &[u8]) -> Result<(String, u64), OciError> {
        let info = rbuild_cache::Store::write_blob(self, data).map_err(|e| OciError::Store {
            op: "write blob".into(),
            reason: e.to_string(),
        })?;
        Ok((info.digest, info.size))
    }
    fn ingest(&self, src: &mut dyn Read, digest: &str, size: u64) -> Result<(), OciError> {
        let mut w = rbuild_cache::Store::blob_writer(self).map_err(|e| OciError::Store {
            op: format!("ingest {digest}"),
            reason: e.to_string(),
        })?;
        std::io::copy(src, &mut w).map_err(OciError::io("download blob", digest))?;
        w.commit(Some((digest, Some(size)))).map_err(|e| match e {
            rbuild_cache::CacheError::DigestMismatch { expected, actual } => {
                OciError::DigestMismatch {
                    what: format!("blob {digest}"),
                    expected,
                    actual,
                }
            }
            rbuild_cache::CacheError::SizeMismatch {
                expected, actual, ..
            } => OciError::DigestMismatch {
                what: format!("blob {digest}"),
                expected: format!("{expected} bytes"),
                actual: format!("{actual} bytes"),
            },
            other => OciError::Store {
                op: format!("commit blob {digest}"),
                reason: other.to_string(),
            },
        })?;
        Ok(())
    }
    fn write_stream(&self, write: &mut StreamFn<'_>) -> Result<(String, u64), OciError> {
        let mut w = rbuild_cache::Store::blob_writer(self).map_err(|e| OciError::Store {
            op: "write blob".into(),
            reason: e.to_string(),
        })?;
        write(&mut w)?;
        let info = w.commit(None).map_err(|e| OciError::Store {
            op: "commit blob".into(),
            reason: e.to_string(),
        })?;
        Ok((info.digest, info.size))
    }
    fn meta_get(&self, ns: &str, key: &str) -> Option<String> {
        rbuild_cache::Store::meta_get(self, ns, key).ok().flatten()
    }
    fn meta_put(&self, ns: &str, key: &str, value: &str) {
        let _ = rbuild_cache::Store::meta_put(self, ns, key, value);
    }
    fn lock(&self, name: &str) -> Result<LockGuard, OciError> {
        let l = rbuild_cache::Store::lock(self, name).map_err(|e| OciError::Store {
            op: format!("lock {name}"),
            reason: e.to_string(),
        })?;
        Ok(Box::new(l))
    }
}

/// A minimal content store on a directory, with the same layout as rbuild-cache's store.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl DirStore {
    /// Open (creating directories as needed).
    pub fn open(root: impl AsRef<Path>) -> Result<DirStore, OciError> {
        let root = root.as_ref().to_path_buf();
        for d in ["blobs-v1/sha256", "tmp", "locks"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(OciError::io("create", p))?;
        }
        Ok(DirStore { root })
    }

    fn tmp_file(&self) -> Result<(PathBuf, File), OciError> {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let p = self
            .root
            .join("tmp")
            .join(format!("ingest-{}-{n}", std::process::id()));
        let f = File::create(&p).map_err(OciError::io("create", &p))?;
        Ok((p, f))
    }

    fn commit_tmp(&self, tmp: &Path, digest: &str) -> Result<(), OciError> {
        let dest = self.blob_path(digest)?;
        fs::rename(tmp, &dest).map_err(OciError::io("commit blob", dest))
    }
}

impl ContentStore for DirStore {
    fn root(&self) -> PathBuf {
        self.root.clone()
    }
    fn blob_path(&self, digest: &str) -> Result<PathBuf, OciError> {
        let hex = digest_hex(digest)?;
        Ok(self.root.join("blobs-v1/sha256").join(hex))
    }
    fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.is_file()).unwrap_or(false)
    }
    fn put_blob(&self, data: &[u8]) -> Result<(String, u64), OciError> {
        let digest = crate::digest::sha256_digest(data);
        if !self.has_blob(&digest) {
            self.ingest(&mut &data[..], &digest, data.len() as u64)?;
        }
        Ok((digest, data.len() as u64))
    }
    fn ingest(&self, src: &mut dyn Read, digest: &str, size: u64) -> Result<(), OciError> {
        digest_hex(digest)?;
        let (tmp, f) = self.tmp_file()?;
        let mut w = HashingWriter::new(f);
        let res = std::io::copy(src, &mut w)
            .map_err(OciError::io("download blob", digest))
            .and_then(|_| {
                let (f, actual, n) = w.finish();
                f.sync_all().map_err(OciError::io("fsync", &tmp))?;
                if n != size {
                    return Err(OciError::DigestMismatch {
                        what: format!("blob {digest}"),
                        expected: format!("{size} bytes"),
                        actual: format!("{n} bytes"),
                    });
                }
                if actual != digest {
                    return Err(OciError::DigestMismatch {
                        what: format!("blob {digest}"),
                        expected: digest.to_string(),
                        actual,
                    });
                }
                Ok(())
            })
            .and_then(|_| self.commit_tmp(&tmp, digest));
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }
    fn write_stream(&self, write: &mut StreamFn<'_>) -> Result<(String, u64), OciError> {
        let (tmp, f) = self.tmp_file()?;
        let mut w = HashingWriter::new(std::io::BufWriter::new(f));
        let res = write(&mut w).and_then(|_| {
            let (bw, digest, n) = w.finish();
            let f = bw
                .into_inner()
                .map_err(|e| OciError::io("write", &tmp)(e.into_error()))?;
            f.sync_all().map_err(OciError::io("fsync", &tmp))?;
            self.commit_tmp(&tmp, &digest)?;
            Ok((digest, n))
        });
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }
    fn lock(&self, name: &str) -> Result<LockGuard, OciError> {
        let p = self.root.join("locks").join(format!("{name}.lock"));
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(OciError::io("open lock", &p))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| OciError::io("lock", &p)(e.into()))?;
        Ok(Box::new(f))
    }
}
