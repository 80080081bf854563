//! SBOM generation in-process: the final image's filesystem (its layers, top down, whiteouts
//! honoured) or a directory is walked once, files that package managers leave behind are
//! parsed, and the packages found become an SPDX 2.3 JSON document ([`spdx_document`]).
//!
//! Catalogers (one module each): `dpkg` (`var/lib/dpkg/status`, `status.d/*`), `apk`
//! (`lib/apk/db/installed`), `rpm` (`rpmdb.sqlite`,
//! Berkeley DB `Packages`, ndb `Packages.db`), `python` (`*.dist-info/METADATA`,
//! `*.egg-info/PKG-INFO`), `npm` (`node_modules/**/package.json`, `package-lock.json`), `gobin`
//! (Go build info in executables), `rust` (cargo-auditable `.dep-v0` sections), `java` (jar
//! manifests and `pom.properties`, nested archives, zip64). Purls follow syft's conventions.
//!
//! Every input is hostile: reads are bounded per file ([`Limits`]), entries and packages are
//! counted, parsers never panic and skip what they do not understand, and what was skipped for
//! a limit is reported in [`Scan::notes`] (and the document's comment).

mod apk;
mod dpkg;
mod elf;
mod gobin;
mod java;
mod npm;
mod python;
mod rpm;
mod rust;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Read;
use std::path::Path;

use serde_json::{json, Value};

use crate::compress::{decompressor, Compression};
use crate::store::ContentStore;
use crate::types::{parse_json, Descriptor, Manifest};
use crate::OciError;

/// Bounds of one scan.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest package database or metadata file read (bytes).
    pub max_file: u64,
    /// Largest executable, archive or rpm database read (bytes).
    pub max_binary: u64,
    /// Most filesystem entries looked at (all layers together).
    pub max_entries: u64,
    /// Most packages reported.
    pub max_packages: usize,
    /// Most bytes of paths remembered (to hide lower layers' copies).
    pub max_path_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file: 64 << 20,
            max_binary: 128 << 20,
            max_entries: 2_000_000,
            max_packages: 200_000,
            max_path_bytes: 256 << 20,
        }
    }
}

/// A package found in the filesystem.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    /// Ecosystem (`deb`, `apk`, `rpm`, `pypi`, `npm`, `golang`, `cargo`, `maven`).
    pub ecosystem: &'static str,
    pub name: String,
    pub version: String,
    /// The package URL. For distro packages it gets its `distro` qualifier after the scan.
    pub purl: String,
    /// The license as the package declares it (free text; not an SPDX expression).
    pub license: Option<String>,
    /// The file the package was found in (absolute path in the image).
    pub location: String,
    /// What the information came from (SPDX `sourceInfo`).
    pub source_info: String,
}

/// The result of a scan.
#[derive(Debug, Default)]
pub struct Scan {
    pub packages: Vec<Package>,
    /// Limits that were hit and files that could not be read.
    pub notes: Vec<String>,
    /// `ID` and `VERSION_ID` of `/etc/os-release`.
    pub distro: Option<(String, String)>,
}

/// The walker's state: what upper layers hid or already provided.
struct Walk<'a> {
    limits: &'a Limits,
    entries: u64,
    path_bytes: usize,
    /// Paths seen in upper layers (files and directories).
    seen: HashSet<String>,
    /// Whiteouts and opaque directories of the layers above the current one.
    removed: HashSet<String>,
    opaque: HashSet<String>,
    scan: Scan,
    os_release: Option<String>,
}

/// What kind of file a path is to the catalogers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dpkg,
    DpkgStatusD,
    Apk,
    Rpm,
    PythonMeta,
    NpmPackage,
    NpmLock,
    Jar,
    OsRelease,
    /// An executable regular file (Go, cargo-auditable).
    Executable,
}

/// Where rpm keeps its database (the places syft looks).
fn rpm_db(path: &str) -> bool {
    ["var/lib/rpm/", "usr/lib/sysimage/rpm/", "usr/share/rpm/"]
        .iter()
        .filter_map(|d| path.strip_prefix(d))
        .any(|f| matches!(f, "rpmdb.sqlite" | "Packages" | "Packages.db"))
}

fn classify(path: &str, executable: bool) -> Option<Kind> {
    let name = path.rsplit('/').next().unwrap_or(path);
    Some(match path {
        "var/lib/dpkg/status" => Kind::Dpkg,
        "lib/apk/db/installed" => Kind::Apk,
        _ if rpm_db(path) => Kind::Rpm,
        "etc/os-release" | "usr/lib/os-release" => Kind::OsRelease,
        _ if path.starts_with("var/lib/dpkg/status.d/") && !name.contains('.') => Kind::DpkgStatusD,
        _ if path.ends_with(".dist-info/METADATA")
            || path.ends_with(".egg-info/PKG-INFO")
            || (name.ends_with(".egg-info") && !executable) =>
        {
            Kind::PythonMeta
        }
        _ if name == "package.json" && npm::is_installed_package(path) => Kind::NpmPackage,
        _ if name == "package-lock.json" && !path.contains("node_modules/") => Kind::NpmLock,
        _ if [".jar", ".war", ".ear"].iter().any(|e| name.ends_with(e)) => Kind::Jar,
        _ if executable => Kind::Executable,
        _ => return None,
    })
}

impl Walk<'_> {
    fn hidden(&self, path: &str) -> bool {
        if self.seen.contains(path) || self.removed.contains(path) {
            return true;
        }
        let mut p = path;
        while let Some((parent, _)) = p.rsplit_once('/') {
            if self.removed.contains(parent) || self.opaque.contains(parent) {
                return true;
            }
            p = parent;
        }
        false
    }

    /// Whether a directory of a lower layer is deleted (a whiteout of it or of an ancestor, or an
    /// opaque ancestor) by the layers above.
    fn hidden_dir(&self, path: &str) -> bool {
        if self.removed.contains(path) {
            return true;
        }
        let mut p = path;
        while let Some((parent, _)) = p.rsplit_once('/') {
            if self.removed.contains(parent) || self.opaque.contains(parent) {
                return true;
            }
            p = parent;
        }
        false
    }

    fn note(&mut self, n: String) {
        if self.scan.notes.len() < 100 {
            self.scan.notes.push(n);
        }
    }

    /// Look at one file (`path` relative, no leading `/`). `data` is read only when needed.
    fn visit(&mut self, path: &str, executable: bool, size: u64, data: &mut dyn Read) {
        let Some(kind) = classify(path, executable) else {
            return;
        };
        let limit = match kind {
            Kind::Executable | Kind::Jar | Kind::Rpm => self.limits.max_binary,
            _ => self.limits.max_file,
        };
        if size > limit {
            self.note(format!(
                "/{path}: {size} bytes, over the {limit}-byte limit, not read"
            ));
            return;
        }
        let mut buf = Vec::new();
        if kind == Kind::Executable {
            // only ELF files are read beyond their first bytes
            let mut magic = [0u8; 4];
            if data.read_exact(&mut magic).is_err() || &magic != b"\x7fELF" {
                return;
            }
            buf.extend_from_slice(&magic);
        }
        if let Err(e) = data.take(limit).read_to_end(&mut buf) {
            self.note(format!("/{path}: {e}"));
            return;
        }
        let location = format!("/{path}");
        let found = match kind {
            Kind::Dpkg | Kind::DpkgStatusD => {
                dpkg::parse(&String::from_utf8_lossy(&buf), &location)
            }
            Kind::Apk => apk::parse(&String::from_utf8_lossy(&buf), &location),
            Kind::Rpm => match rpm::parse_db(&buf, &location) {
                Ok(v) => v,
                Err(e) => {
                    self.note(format!("{location}: {e}"));
                    Vec::new()
                }
            },
            Kind::OsRelease => {
                if self.os_release.is_none() {
                    self.os_release = Some(String::from_utf8_lossy(&buf).into_owned());
                }
                Vec::new()
            }
            Kind::PythonMeta => python::parse(&String::from_utf8_lossy(&buf), &location),
            Kind::NpmPackage => npm::parse_package(&buf, &location),
            Kind::NpmLock => npm::parse_lock(&buf, &location),
            Kind::Jar => {
                let mut budget = java::Budget::new(self.limits.max_file, self.limits.max_binary);
                let found = java::parse_jar(&buf, &location, &mut budget);
                for n in budget.notes {
                    self.note(n);
                }
                found
            }
            Kind::Executable => {
                let mut v = gobin::parse(&buf, &location);
                v.extend(rust::parse(&buf, &location, self.limits.max_file));
                v
            }
        };
        let room = self
            .limits
            .max_packages
            .saturating_sub(self.scan.packages.len());
        if found.len() > room {
            self.note(format!(
                "more than {} packages: the rest is left out",
                self.limits.max_packages
            ));
        }
        self.scan.packages.extend(found.into_iter().take(room));
    }

    /// One layer (a tar stream), applied below the layers already walked.
    fn layer(&mut self, r: &mut dyn Read, what: &str) -> Result<(), OciError> {
        let mut ar = tar::Archive::new(r);
        let mut removed = Vec::new();
        let mut opaque = Vec::new();
        let mut here = Vec::new();
        let io = |e: std::io::Error| OciError::Store {
            op: format!("sbom: read {what}"),
            reason: e.to_string(),
        };
        for entry in ar.entries().map_err(io)? {
            let mut entry = entry.map_err(io)?;
            self.entries += 1;
            self.path_bytes += entry.path_bytes().len();
            if self.path_bytes > self.limits.max_path_bytes {
                self.entries = self.limits.max_entries + 1;
                self.note(format!(
                    "paths longer than {} bytes in all: the rest of the image is not scanned",
                    self.limits.max_path_bytes
                ));
                return Ok(());
            }
            if self.entries > self.limits.max_entries {
                self.note(format!(
                    "more than {} files: the rest of the image is not scanned",
                    self.limits.max_entries
                ));
                return Ok(());
            }
            let raw = entry.path_bytes();
            let Some(path) = normalize(&String::from_utf8_lossy(&raw)) else {
                continue;
            };
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
            if name == ".wh..wh..opq" {
                opaque.push(dir.to_string());
                continue;
            }
            if let Some(gone) = name.strip_prefix(".wh.") {
                removed.push(if dir.is_empty() {
                    gone.to_string()
                } else {
                    format!("{dir}/{gone}")
                });
                continue;
            }
            if self.hidden(&path) {
                continue;
            }
            here.push(path.clone());
            let header = entry.header();
            if !header.entry_type().is_file() {
                continue;
            }
            let mode = header.mode().unwrap_or(0);
            let size = header.size().unwrap_or(0);
            self.visit(&path, mode & 0o111 != 0, size, &mut entry);
        }
        self.seen.extend(here);
        self.removed.extend(removed);
        self.opaque.extend(opaque);
        Ok(())
    }

    fn finish(mut self) -> Scan {
        let distro = self.os_release.as_deref().map(os_release);
        if let Some((id, version)) = &distro {
            for p in self.scan.packages.iter_mut() {
                if matches!(p.ecosystem, "deb" | "apk" | "rpm") {
                    p.purl = p.purl.replace("pkg:deb/debian/", &format!("pkg:deb/{id}/"));
                    p.purl = p.purl.replace("pkg:rpm/redhat/", &format!("pkg:rpm/{id}/"));
                    p.purl = with_qualifiers(&p.purl, &[("distro", &format!("{id}-{version}"))]);
                }
            }
        }
        self.scan.distro = distro;
        // the same package found twice (a lock file and node_modules) once
        let mut seen = BTreeSet::new();
        self.scan
            .packages
            .retain(|p| seen.insert((p.purl.clone(), p.location.clone())));
        self.scan.packages.sort();
        self.scan
    }
}

impl Walk<'_> {
    /// One layer as an unpacked directory in overlay upper format (whiteouts are 0:0 character
    /// devices, opaque directories carry `opaque_xattr` = `y`), below the layers already
    /// walked. Nothing is decompressed and only candidate files are opened: much faster than
    /// reading the layer's tar. Symlinks are never followed.
    fn dir_layer(&mut self, root: &Path, opaque_xattr: &str) {
        use std::os::unix::fs::MetadataExt;
        let mut removed = Vec::new();
        let mut opaque = Vec::new();
        let mut here = Vec::new();
        let mut stack = vec![(root.to_path_buf(), String::new())];
        while let Some((abs, rel)) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&abs) else {
                continue;
            };
            for e in rd.flatten() {
                self.entries += 1;
                let name = e.file_name().to_string_lossy().into_owned();
                self.path_bytes += rel.len() + name.len() + 1;
                if self.entries > self.limits.max_entries
                    || self.path_bytes > self.limits.max_path_bytes
                {
                    self.note(format!(
                        "more than {} files: the rest of the image is not scanned",
                        self.limits.max_entries
                    ));
                    return;
                }
                let path = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let Ok(md) = e.metadata() else { continue };
                let ft = md.file_type();
                if rbuild_cache::overlay::is_whiteout(&e.path(), &md) {
                    removed.push(path);
                    continue;
                }
                if ft.is_dir() {
                    if self.hidden_dir(&path) {
                        continue;
                    }
                    let mut buf = [0u8; 4];
                    if matches!(
                        rustix::fs::lgetxattr(e.path().as_path(), opaque_xattr, &mut buf),
                        Ok(1) if buf[0] == b'y'
                    ) {
                        opaque.push(path.clone());
                    }
                    stack.push((e.path(), path.clone()));
                    here.push(path);
                    continue;
                }
                if self.hidden(&path) {
                    continue;
                }
                here.push(path.clone());
                if ft.is_file() && classify(&path, md.mode() & 0o111 != 0).is_some() {
                    if let Ok(mut f) = std::fs::File::open(e.path()) {
                        self.visit(&path, md.mode() & 0o111 != 0, md.len(), &mut f);
                    }
                }
            }
        }
        self.seen.extend(here);
        self.removed.extend(removed);
        self.opaque.extend(opaque);
    }
}

/// Scan an image given as its unpacked layer directories (overlay upper format, base first):
/// the same result as [`scan_image`] on its layer tars, without reading them.
pub fn scan_layer_dirs(layers: &[std::path::PathBuf], opaque_xattr: &str, limits: &Limits) -> Scan {
    let mut w = new_walk(limits);
    for dir in layers.iter().rev() {
        w.dir_layer(dir, opaque_xattr);
        if w.entries > limits.max_entries {
            break;
        }
    }
    w.finish()
}

fn new_walk(limits: &Limits) -> Walk<'_> {
    Walk {
        limits,
        entries: 0,
        path_bytes: 0,
        seen: HashSet::new(),
        removed: HashSet::new(),
        opaque: HashSet::new(),
        scan: Scan::default(),
        os_release: None,
    }
}

/// `./a//b/` → `a/b`; `None` for the root and for paths with `..`.
fn normalize(p: &str) -> Option<String> {
    let parts: Vec<&str> = p
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") {
        return None;
    }
    Some(parts.join("/"))
}

/// `ID` and `VERSION_ID` of an os-release file.
fn os_release(text: &str) -> (String, String) {
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    (get("ID"), get("VERSION_ID"))
}

/// Scan the image `manifest` in `store`: its layers, top down.
pub fn scan_image(
    store: &dyn ContentStore,
    manifest: &Descriptor,
    limits: &Limits,
) -> Result<Scan, OciError> {
    let m: Manifest = parse_json(
        &format!("manifest {}", manifest.digest),
        &store.read_blob(&manifest.digest)?,
    )?;
    let mut w = new_walk(limits);
    for l in m.layers.iter().rev() {
        let c = Compression::of_media_type(&l.media_type).ok_or_else(|| {
            OciError::UnsupportedMediaType {
                what: format!("sbom: layer {}", l.digest),
                media_type: l.media_type.clone(),
            }
        })?;
        let file = store.open_blob(&l.digest)?;
        let mut r =
            decompressor(c, std::io::BufReader::new(file)).map_err(|e| OciError::Store {
                op: format!("sbom: read layer {}", l.digest),
                reason: e.to_string(),
            })?;
        w.layer(&mut r, &format!("layer {}", l.digest))?;
        if w.entries > limits.max_entries {
            break;
        }
    }
    Ok(w.finish())
}

/// Scan a directory (the build context, for `BUILDKIT_SBOM_SCAN_CONTEXT`). Symlinks are not
/// followed; locations are relative to the directory, prefixed with `/`.
pub fn scan_dir(dir: &Path, limits: &Limits) -> Scan {
    let mut w = new_walk(limits);
    let mut stack = vec![(dir.to_path_buf(), String::new(), 0usize)];
    while let Some((abs, rel, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&abs) else {
            continue;
        };
        let mut names: Vec<_> = rd.flatten().collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            w.entries += 1;
            if w.entries > limits.max_entries || depth > 256 {
                w.note("directory too large or too deep: not all of it was scanned".into());
                return w.finish();
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push((e.path(), r, depth + 1));
            } else if ft.is_file() {
                use std::os::unix::fs::PermissionsExt;
                let Ok(md) = e.metadata() else { continue };
                if let Ok(mut f) = std::fs::File::open(e.path()) {
                    w.visit(&r, md.permissions().mode() & 0o111 != 0, md.len(), &mut f);
                }
            }
        }
    }
    w.finish()
}

/// Percent-encode a purl component (name, version segment or qualifier value) as syft
/// writes it: letters, digits, `-._~` and `:()` stay, everything else (`+`, `@`, `/`, spaces,
/// non-ASCII bytes…) becomes `%XX`. Checked against syft 1.18.1's purls for the same image
/// (docs/attestations.md, "Side by side with BuildKit").
pub(crate) fn purl_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `purl` with the qualifiers `extra` (values not yet escaped; empty ones left out) added to
/// those it has, all sorted by key: the purl spec's canonical form, which syft writes.
pub(crate) fn with_qualifiers(purl: &str, extra: &[(&str, &str)]) -> String {
    let (base, query) = purl.split_once('?').unwrap_or((purl, ""));
    let mut q: Vec<(String, String)> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    q.extend(
        extra
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), purl_escape(v))),
    );
    if q.is_empty() {
        return base.to_string();
    }
    q.sort();
    let q: Vec<String> = q.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{base}?{}", q.join("&"))
}

/// Keep an SPDX id to its allowed characters (`[A-Za-z0-9.-]`).
fn spdx_id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// What describes the document: the image (or directory) scanned.
#[derive(Debug, Clone)]
pub struct Subject {
    /// e.g. `docker.io/library/app:v1` or `context`.
    pub name: String,
    /// The image id (config digest), when an image.
    pub digest: Option<String>,
}

/// An SPDX 2.3 JSON document over `scans` (the image first, then any extra scans such as the
/// build context). `created` is RFC 3339 (the source date epoch when there is one, so the
/// document is reproducible); `tool` is e.g. `rbuild-0.1.0`.
pub fn spdx_document(subject: &Subject, scans: &[&Scan], created: &str, tool: &str) -> Value {
    let mut packages = Vec::new();
    let mut relationships = Vec::new();
    let root_id = "SPDXRef-DocumentRoot-Image";
    let mut root = json!({
        "name": subject.name,
        "SPDXID": root_id,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "CONTAINER",
    });
    if let Some(d) = &subject.digest {
        root["versionInfo"] = json!(d);
        if let Some(hex) = d.strip_prefix("sha256:") {
            root["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": hex}]);
        }
    }
    packages.push(root);
    relationships.push(json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": root_id,
    }));
    let mut ids = BTreeMap::<String, usize>::new();
    let mut notes = Vec::new();
    for scan in scans {
        notes.extend(scan.notes.iter().cloned());
        for p in &scan.packages {
            let base = spdx_id(&format!("SPDXRef-Package-{}-{}", p.ecosystem, p.name));
            let n = ids.entry(base.clone()).or_insert(0);
            *n += 1;
            let id = if *n == 1 { base } else { format!("{base}-{n}") };
            let mut pkg = json!({
                "name": p.name,
                "SPDXID": id,
                "versionInfo": p.version,
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": false,
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": "NOASSERTION",
                "copyrightText": "NOASSERTION",
                "sourceInfo": format!("{} (found in {})", p.source_info, p.location),
                "externalRefs": [{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": p.purl,
                }],
            });
            if let Some(l) = &p.license {
                pkg["licenseComments"] = json!(format!("declared license: {l}"));
            }
            packages.push(pkg);
            relationships.push(json!({
                "spdxElementId": root_id,
                "relationshipType": "CONTAINS",
                "relatedSpdxElement": id,
            }));
        }
    }
    // the namespace is derived from the content, so the same image gives the same document
    let digest = crate::digest::sha256_digest(
        serde_json::to_string(&packages)
            .unwrap_or_default()
            .as_bytes(),
    );
    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": subject.name,
        "documentNamespace": format!(
            "https://rbuild.invalid/spdx/{}",
            digest.trim_start_matches("sha256:")
        ),
        "creationInfo": {
            "created": created,
            "creators": [format!("Tool: {tool}")],
        },
        "packages": packages,
        "relationships": relationships,
    });
    if !notes.is_empty() {
        doc["comment"] = json!(format!("incomplete scan: {}", notes.join("; ")));
    }
    doc
}

#[cfg(test)]
mod tests;
