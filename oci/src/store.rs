//! The narrow view of the content store this crate needs ([`ContentStore`]), so that registry,
//! image-store and export code is independent of how blobs are kept. `rbuild-cache`'s `Store`
//! implements it (the one content store; tests use it too).

use std::fs::{self, File};
use std::io::Read;
use std::path::PathBuf;

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
