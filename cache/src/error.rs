//! The crate's single error type, [`CacheError`], with enough context (paths, digests, ids) to
//! tell a user what went wrong without a backtrace.

use std::path::PathBuf;

/// Every failure of the content store, snapshots, index and build-context hashing.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("open", "rename", "fsync", …).
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Copying an entry (the copy snapshotter) failed.
    #[error("copy {} to {}: {source}", from.display(), to.display())]
    CopyEntry {
        /// The entry copied.
        from: PathBuf,
        /// Where it was being copied.
        to: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Setting an extended attribute (the copy snapshotter) failed.
    #[error("set xattr {name} on {}: {source}", path.display())]
    SetXattr {
        /// The attribute's name.
        name: String,
        /// The entry.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The SQLite index failed.
    #[error("index database {} ({op}): {source}", path.display())]
    Db {
        /// What was being done.
        op: &'static str,
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },
    /// A digest string is not `sha256:<64 lowercase hex>`.
    #[error("invalid digest {digest:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest {
        /// The offending string.
        digest: String,
    },
    /// The blob is not in the content store.
    #[error("blob {digest} not found (looked at {})", path.display())]
    BlobNotFound {
        /// Requested digest.
        digest: String,
        /// Where it would live.
        path: PathBuf,
    },
    /// Content written does not hash to the expected digest; nothing was stored.
    #[error("digest mismatch: expected {expected}, content hashes to {actual}")]
    DigestMismatch {
        /// What the caller expected.
        expected: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// Content written does not have the expected size; nothing was stored.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// Digest of the content actually written.
        digest: String,
        /// Expected size.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
    /// A stored blob no longer hashes to its name.
    #[error("blob {digest} is corrupt: its content hashes to {actual} ({})", path.display())]
    CorruptBlob {
        /// The blob's name.
        digest: String,
        /// What it hashes to now.
        actual: String,
        /// Its file.
        path: PathBuf,
    },
    /// No snapshot with this id.
    #[error("snapshot {id} not found")]
    SnapshotNotFound {
        /// Snapshot id.
        id: String,
    },
    /// The snapshot exists but was never committed.
    #[error("snapshot {id} is not committed")]
    SnapshotNotCommitted {
        /// Snapshot id.
        id: String,
    },
    /// A snapshot id with characters outside `[a-z0-9]` or too long.
    #[error("invalid snapshot id {id:?}")]
    InvalidSnapshotId {
        /// The offending id.
        id: String,
    },
    /// A lock name with characters outside `[A-Za-z0-9._-]`.
    #[error("invalid lock name {name:?}")]
    InvalidLockName {
        /// The offending name.
        name: String,
    },
    /// A path selected in the build context does not exist (or is excluded by .dockerignore).
    #[error("{path}: not found in build context")]
    NotFound {
        /// The selector path, as given.
        path: String,
    },
    /// A .dockerignore pattern is malformed.
    #[error("invalid .dockerignore pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The pattern.
        pattern: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// Symlink resolution inside the build context did not terminate.
    #[error("{path}: too many levels of symbolic links in build context")]
    SymlinkLoop {
        /// The selector path.
        path: String,
    },
    /// The store root cannot be created or written by this user.
    #[error(
        "cannot use the store at {} ({op}: {source}; the directory {} is owned by {owner}): \
         run as that user, or point RBUILD_ROOT (or --root) at a directory you own; rootless \
         builds default to ~/.local/share/rbuild",
        path.display(), at.display()
    )]
    StoreNotWritable {
        /// The store root.
        path: PathBuf,
        /// The operation that failed.
        op: &'static str,
        /// The directory that refused (the root or its nearest existing parent).
        at: PathBuf,
        /// Its owner, as `uid N` (or `unknown`).
        owner: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The store lost its overlay markers: it was copied without device nodes and xattrs.
    #[error(
        "the store at {} was copied or restored without its overlay markers ({what}): copies \
         that drop device nodes and extended attributes (zip, `cp -r`, CI caches of the \
         directory) lose the layers' whiteouts and opaque directories, so deleted files would \
         reappear. Never cache RBUILD_ROOT itself: export the build cache with \
         --cache-to/--cache-from, or remove this store (rm -rf {}) and let rbuild recreate it",
        path.display(), path.display()
    )]
    CopiedStore {
        /// The store root.
        path: PathBuf,
        /// What is missing.
        what: String,
    },
    /// The store was made in the other mode (root vs rootless): its overlay xattrs differ.
    #[error(
        "the store at {} was made in {store} mode and cannot be used in {current} mode \
         (overlay whiteout/opaque markers differ); use a separate store (--root / RBUILD_ROOT)",
        path.display()
    )]
    ModeMismatch {
        /// The store root.
        path: PathBuf,
        /// The mode recorded in the store.
        store: String,
        /// This process's mode.
        current: &'static str,
    },
}

impl CacheError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CacheError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Shorthand used throughout the crate.
pub(crate) type Result<T, E = CacheError> = std::result::Result<T, E>;
