//! Content store: sha256-named blobs under `blobs-v1/sha256/<hex>`.
//!
//! Every write is a checked commit: bytes go to a file in `tmp/`, are fsynced, their digest and
//! size are verified, then the file is renamed into place and the directory fsynced. A reader
//! therefore never sees a partial blob, and two processes writing the same blob both succeed.
//!
//! Big blobs are written back while they are written: every [`WRITEBACK_EVERY`] bytes a
//! background thread runs `fdatasync` on the file, so the commit's fsync waits only for the
//! tail instead of the whole blob (the durability is the same; the disk works during the
//! write instead of after it).

use crate::error::{CacheError, Result};
use crate::store::{Store, BLOBS_DIR};
use crate::util;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::thread::JoinHandle;

/// Bytes between two background write-backs of a blob being written.
pub(crate) const WRITEBACK_EVERY: u64 = 8 << 20;

/// A committed blob: its digest (`sha256:<hex>`) and size in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct BlobInfo {
    /// `sha256:<64 hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

impl Store {
    /// Path of a blob in the content store (whether or not it exists). Validates the digest.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, CacheError> {
        let hex = util::parse_digest(digest)?;
        Ok(self.inner.root.join(BLOBS_DIR).join(hex))
    }

    /// Whether the blob is present.
    pub fn has_blob(&self, digest: &str) -> bool {
        match self.blob_path(digest) {
            Ok(p) => fs::metadata(p).map(|m| m.is_file()).unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Read a whole blob, verifying its digest.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, CacheError> {
        let path = self.blob_path(digest)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CacheError::BlobNotFound {
                    digest: digest.to_string(),
                    path,
                })
            }
            Err(e) => return Err(CacheError::io("read blob", &path, e)),
        };
        let actual = util::digest_string(Sha256::new_with_prefix(&bytes));
        if actual != digest {
            return Err(CacheError::CorruptBlob {
                digest: digest.to_string(),
                actual,
                path,
            });
        }
        Ok(bytes)
    }

    /// Open a blob for streaming reads (not verified; the caller hashes if it needs to).
    pub fn open_blob(&self, digest: &str) -> Result<fs::File, CacheError> {
        let path = self.blob_path(digest)?;
        match fs::File::open(&path) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CacheError::BlobNotFound {
                digest: digest.to_string(),
                path,
            }),
            Err(e) => Err(CacheError::io("open blob", &path, e)),
        }
    }

    /// Store `bytes` (a no-op when the blob already exists) and return its digest and size.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<BlobInfo, CacheError> {
        let digest = util::digest_string(Sha256::new_with_prefix(bytes));
        let info = BlobInfo {
            digest,
            size: bytes.len() as u64,
        };
        let path = self.blob_path(&info.digest)?;
        if fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == info.size) {
            return Ok(info);
        }
        let mut w = self.blob_writer()?;
        w.write_all(bytes)
            .map_err(|e| CacheError::io("write", w.tmp.clone(), e))?;
        w.commit(Some((&info.digest, Some(info.size))))
    }

    /// Remove a blob (for GC). Removing a missing blob is not an error.
    pub fn remove_blob(&self, digest: &str) -> Result<(), CacheError> {
        let path = self.blob_path(digest)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CacheError::io("remove blob", &path, e)),
        }
    }

    /// All blobs in the content store with their on-disk sizes, sorted by digest (for GC/`du`).
    pub fn list_blobs(&self) -> Result<Vec<BlobInfo>, CacheError> {
        let dir = self.inner.root.join(BLOBS_DIR);
        let rd = fs::read_dir(&dir).map_err(|e| CacheError::io("read directory", &dir, e))?;
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| CacheError::io("read directory", &dir, e))?;
            let digest = format!("sha256:{}", ent.file_name().to_string_lossy());
            if util::parse_digest(&digest).is_err() {
                continue;
            }
            match ent.metadata() {
                Ok(md) if md.is_file() => out.push(BlobInfo {
                    digest,
                    size: md.len(),
                }),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(CacheError::io("stat", ent.path(), e)),
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// A streaming writer; call [`BlobWriter::commit`] to store the blob.
    pub fn blob_writer(&self) -> Result<BlobWriter, CacheError> {
        let tmp = self.new_tmp_path("blob");
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| CacheError::io("create", &tmp, e))?;
        Ok(BlobWriter {
            store: self.clone(),
            file: Some(file),
            tmp,
            hasher: Sha256::new(),
            size: 0,
            unsynced: 0,
            writeback: None,
        })
    }
}

/// The background thread that writes a blob back while it grows.
struct Writeback {
    wake: SyncSender<()>,
    thread: JoinHandle<()>,
}

impl Writeback {
    fn start(file: &fs::File) -> Option<Writeback> {
        let file = file.try_clone().ok()?;
        // One pending request at most: a queued fdatasync covers everything written before it
        // runs.
        let (wake, requests) = sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("blob-writeback".into())
            .spawn(move || {
                while requests.recv().is_ok() {
                    // Errors show up again in the commit's own fsync.
                    let _ = file.sync_data();
                }
            })
            .ok()?;
        Some(Writeback { wake, thread })
    }

    /// Stop after the pending request, if any.
    fn finish(self) {
        drop(self.wake);
        let _ = self.thread.join();
    }
}

/// Streams bytes into `tmp/`, hashing as it goes. Dropping it without [`commit`](Self::commit)
/// removes the temporary file.
pub struct BlobWriter {
    store: Store,
    file: Option<fs::File>,
    tmp: PathBuf,
    hasher: Sha256,
    size: u64,
    /// Bytes written since the last write-back request.
    unsynced: u64,
    writeback: Option<Writeback>,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("tmp", &self.tmp)
            .field("size", &self.size)
            .finish()
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer already finished"))?;
        let n = f.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        self.unsynced += n as u64;
        if self.unsynced >= WRITEBACK_EVERY {
            self.unsynced = 0;
            if self.writeback.is_none() {
                self.writeback = Writeback::start(f);
            }
            if let Some(w) = &self.writeback {
                match w.wake.try_send(()) {
                    Ok(()) | Err(TrySendError::Full(())) => {}
                    Err(TrySendError::Disconnected(())) => self.writeback = None,
                }
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// fsync, verify against `expected` (digest and, when given, size), rename into the content
    /// store and fsync the directory. On mismatch nothing is stored and the temporary is removed.
    pub fn commit(mut self, expected: Option<(&str, Option<u64>)>) -> Result<BlobInfo, CacheError> {
        let file = self.file.take().ok_or_else(|| {
            CacheError::io(
                "commit",
                self.tmp.clone(),
                io::Error::other("blob writer already finished"),
            )
        })?;
        if let Some(w) = self.writeback.take() {
            w.finish();
        }
        file.sync_all()
            .map_err(|e| CacheError::io("fsync", &self.tmp, e))?;
        let on_disk = file
            .metadata()
            .map_err(|e| CacheError::io("stat", &self.tmp, e))?
            .len();
        drop(file);
        let hasher = std::mem::take(&mut self.hasher);
        let digest = util::digest_string(hasher);
        if on_disk != self.size {
            return Err(CacheError::SizeMismatch {
                digest,
                expected: self.size,
                actual: on_disk,
            });
        }
        if let Some((want, want_size)) = expected {
            util::parse_digest(want)?;
            if want != digest {
                return Err(CacheError::DigestMismatch {
                    expected: want.to_string(),
                    actual: digest,
                });
            }
            if let Some(ws) = want_size {
                if ws != self.size {
                    return Err(CacheError::SizeMismatch {
                        digest,
                        expected: ws,
                        actual: self.size,
                    });
                }
            }
        }
        let dest = self.store.blob_path(&digest)?;
        fs::rename(&self.tmp, &dest).map_err(|e| CacheError::io("rename blob into", &dest, e))?;
        if let Some(dir) = dest.parent() {
            util::fsync_dir(dir)?;
        }
        self.tmp = PathBuf::new();
        Ok(BlobInfo {
            digest,
            size: self.size,
        })
    }

    /// [`commit`](Self::commit) against a known [`BlobInfo`].
    pub fn commit_expecting(self, expected: &BlobInfo) -> Result<BlobInfo, CacheError> {
        self.commit(Some((&expected.digest, Some(expected.size))))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if let Some(w) = self.writeback.take() {
            w.finish();
        }
        self.file = None;
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Hash everything a reader yields (used by tests and by callers verifying streamed blobs).
pub fn sha256_reader(mut r: impl Read) -> io::Result<BlobInfo> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok(BlobInfo {
        digest: util::digest_string(h),
        size,
    })
}
