//! rbuild-oci: OCI image references, the registry client (pull, auth, mirrors), layer tar
//! creation and safe extraction in overlayfs format, the local OCI-layout image store, and the
//! OCI / docker archive exporters.
//!
//! The content store lives in `rbuild-cache`; this crate only reads and writes blobs through it.

pub mod attest;
pub mod auth;
pub mod compress;
pub mod convert;
pub mod digest;
pub mod error;
pub mod export;
pub mod http;
pub mod image_store;
pub mod imagetools;
pub mod import;
pub mod index;
pub mod layer;
pub mod progress;
pub mod push;
pub mod reference;
pub mod registry;
pub mod remote_cache;
pub mod sbom;
pub mod store;
pub mod time;
pub mod types;

pub use compress::Compression;
pub use convert::{convert_image, ConvertOpts};
pub use error::OciError;
pub use export::{
    export_archive, export_docker_archive, export_oci_archive, ArchiveFormat, ArchiveSink,
};
pub use image_store::ImageStore;
pub use layer::{
    apply_layer, apply_layer_verified, apply_layer_verified_keeping_tar, archive_kind,
    device_marker_of, extract_archive, layer_diff_id, user_xattrs, write_layer, ArchiveKind,
    LayerOpts,
};
pub use reference::Reference;
pub use registry::{RegistryClient, RegistryConfig, ResolvedManifest};
pub use store::ContentStore;
pub use types::{media_types, Descriptor, Index, Manifest, Platform};
