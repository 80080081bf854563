//! The crate's single error type. Every variant carries enough context (reference, registry,
//! digest, path) to be rendered as a one-line message.

use std::path::PathBuf;

/// Errors from image references, registries, layers and the local image store.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// A reference string that is not a valid image name.
    #[error("invalid reference {input:?}: {reason}")]
    InvalidReference {
        /// The text as given.
        input: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The registry said the manifest (tag or digest) does not exist.
    #[error("pull {reference}: manifest unknown: registry {registry} has no {path}")]
    ManifestUnknown {
        /// Familiar form of the reference.
        reference: String,
        /// What was asked for: the repository path with the tag or digest
        /// (`library/busybox:latest`), as the registry (or mirror) sees it.
        path: String,
        /// Host that answered.
        registry: String,
    },
    /// The registry could not be reached at all.
    #[error("cannot reach registry {registry}: {reason}")]
    Unreachable {
        /// Host (and port) tried.
        registry: String,
        /// Short cause (e.g. "connection refused").
        reason: String,
    },
    /// The registry answered with an unexpected status.
    #[error("{op} {reference}: registry {registry} answered HTTP {status}{detail}")]
    Http {
        /// What was being done ("pull", "fetch blob sha256:…", …).
        op: String,
        /// Familiar form of the reference.
        reference: String,
        /// Host that answered.
        registry: String,
        /// HTTP status code.
        status: u16,
        /// Extra detail from the body, prefixed with ": " when present.
        detail: String,
    },
    /// The registry speaks TLS with a certificate no trusted CA signed.
    #[error("registry {registry} speaks TLS but its certificate is not trusted ({reason}): put the registry's CA certificate in {certs_dir}/{registry}/ca.crt (the certs.d directory; RBUILD_CERTS_DIR chooses another one), or add it to the CA bundle that SSL_CERT_FILE names")]
    UntrustedCertificate {
        /// Host (and port).
        registry: String,
        /// The TLS library's reason (e.g. "invalid peer certificate: UnknownIssuer").
        reason: String,
        /// The certs.d directory searched for the host's CA.
        certs_dir: String,
    },
    /// Authentication with the registry failed.
    #[error("auth {registry}: {reason}")]
    Auth {
        /// Host.
        registry: String,
        /// Cause.
        reason: String,
    },
    /// Content did not match the digest (or size) it was requested by.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was checked (manifest, config, blob, with reference).
        what: String,
        /// Expected digest / size.
        expected: String,
        /// Actual digest / size.
        actual: String,
    },
    /// A digest string that is not `sha256:<64 hex>`.
    #[error("invalid digest {0:?}")]
    InvalidDigest(String),
    /// No manifest for the requested platform in an index.
    #[error("pull {reference}: no manifest for platform {platform} (available: {available})")]
    NoMatchingPlatform {
        /// Familiar form of the reference.
        reference: String,
        /// Requested platform.
        platform: String,
        /// Platforms listed in the index.
        available: String,
    },
    /// A manifest, index or config that is not valid JSON of the expected shape.
    #[error("{what}: invalid JSON: {reason}")]
    InvalidJson {
        /// Which document.
        what: String,
        /// Parser message.
        reason: String,
    },
    /// A media type rbuild cannot handle.
    #[error("{what}: unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        /// Which document or blob.
        what: String,
        /// The media type.
        media_type: String,
    },
    /// The layer is compressed with an algorithm not available in this build.
    #[error("layer compressed with {0}, which this build of rbuild cannot decompress")]
    UnsupportedCompression(String),
    /// A tar entry whose path would escape the destination or is otherwise unsafe.
    #[error("unsafe path in layer: {path:?}: {reason}")]
    UnsafePath {
        /// The entry path as in the archive.
        path: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A layer's uncompressed content does not hash to the diff_id its image config claims
    /// (docker's wording).
    #[error(
        "layers from manifest don't match image configuration: layer {layer} unpacks to \
         {actual}, but the image config says {expected}"
    )]
    DiffIdMismatch {
        /// The layer blob (compressed digest).
        layer: String,
        /// The diff_id in the image config.
        expected: String,
        /// The sha256 of the uncompressed layer.
        actual: String,
    },
    /// An archive entry rbuild will not extract, because its data would be lost or misread.
    #[error("archive entry {path:?}: {reason}")]
    UnsupportedEntry {
        /// The entry path as in the archive.
        path: String,
        /// What is unsupported, and what to do.
        reason: String,
    },
    /// Filesystem or stream I/O failure with the path (or object) involved.
    #[error("{op} {path}: {source}")]
    Io {
        /// Operation ("create", "read", "extract", …).
        op: String,
        /// Path or object.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A content-store operation failed.
    #[error("content store: {op}: {reason}")]
    Store {
        /// Operation with its object (e.g. "commit blob sha256:…").
        op: String,
        /// Underlying message.
        reason: String,
    },
    /// An HTTP(S) download (`ADD <url>`) failed.
    #[error("fetching {url}: {reason}")]
    Fetch {
        /// The URL requested.
        url: String,
        /// Cause.
        reason: String,
    },
    /// An image name is not in the local image store.
    #[error("image {0} not found in the local store")]
    ImageNotFound(String),
    /// What a remote cache source holds is not an rbuild cache (a plain image without the
    /// inline annotation, a BuildKit cache, an artifact with another config media type, …).
    #[error("{origin} is not an rbuild cache: {found}")]
    NotACache {
        /// The source as the user named it ("registry cache REF", "local cache DIR").
        origin: String,
        /// What was found there instead.
        found: String,
    },
    /// An rbuild cache whose manifest, config or layout breaks the format's rules.
    #[error("{origin}: invalid cache: {reason}")]
    InvalidCache {
        /// The source as the user named it.
        origin: String,
        /// The rule broken.
        reason: String,
    },
    /// A `--cache-to type=local,dest=DIR` that rbuild refuses to write into.
    #[error("cache destination {path}: {reason}")]
    CacheDest {
        /// The directory.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },
}

impl OciError {
    /// Wrap an I/O error with an operation and a path.
    pub(crate) fn io(
        op: impl Into<String>,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> OciError {
        let op = op.into();
        let path = path.into();
        move |source| OciError::Io { op, path, source }
    }
}
