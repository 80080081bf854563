//! rbuild-cache: the local store of rbuild.
//!
//! * a content store of sha256-named blobs with checked commits (`blobs-v1/sha256/<hex>`),
//! * snapshots: layer directories in overlayfs "upper" format (`snapshots-v1/<id>/fs`),
//! * the cache index and a small metadata table in SQLite (`index-v1.db`, WAL), shared safely by
//!   several rbuild processes,
//! * advisory locks (`locks/<name>.lock`),
//! * the copy snapshotter for hosts without overlayfs ([`copysnap`]: materialize a chain, diff
//!   a directory back into a layer),
//! * garbage collection ([`gc`]: leases, pruning by age and size, the sweep),
//! * build-context hashing with .dockerignore semantics and a persistent stat cache ([`context`]).
//!
//! A crash at any point leaves a store that [`Store::open`] repairs: ingest files in `tmp/` of dead
//! processes and snapshots that were never committed are removed.

mod blob;
pub mod context;
pub mod copysnap;
mod error;
pub mod gc;
mod index;
pub mod overlay;
mod snapshot;
mod store;
pub mod usage;
mod util;

pub use blob::{sha256_reader, BlobInfo, BlobWriter};
pub use error::CacheError;
pub use index::{IndexEntry, StoreLock};
pub use snapshot::Snapshot;
pub use store::Store;
pub use util::{now_secs, read_full};
