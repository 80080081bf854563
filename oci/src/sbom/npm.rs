//! npm packages: `package.json` of installed packages (`…/node_modules/<name>/package.json`,
//! `…/node_modules/@scope/<name>/package.json`) and `package-lock.json` (`packages` map of
//! lockfile v2/v3, `dependencies` of v1); `pkg:npm/<name>@<version>` (`@` of a scope as `%40`).

use serde_json::Value;

use super::{purl_escape, Package};

/// Whether `path` is the `package.json` of a package installed under `node_modules`.
pub(super) fn is_installed_package(path: &str) -> bool {
    let Some((before, rest)) = path.rsplit_once("node_modules/") else {
        return false;
    };
    let _ = before;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [_, "package.json"] => true,
        [scope, _, "package.json"] => scope.starts_with('@'),
        _ => false,
    }
}

fn purl(name: &str, version: &str) -> String {
    let name = match name.split_once('/') {
        Some((scope, n)) => format!("{}/{}", purl_escape(scope), purl_escape(n)),
        None => purl_escape(name),
    };
    format!("pkg:npm/{name}@{}", purl_escape(version))
}

fn package(
    name: &str,
    version: &str,
    license: Option<String>,
    location: &str,
    info: &str,
) -> Package {
    Package {
        ecosystem: "npm",
        name: name.to_string(),
        version: version.to_string(),
        purl: purl(name, version),
        license,
        location: location.to_string(),
        source_info: info.to_string(),
    }
}

fn license_of(v: &Value) -> Option<String> {
    match v.get("license") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o.get("type").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

/// The package a `package.json` under `node_modules` describes.
pub(super) fn parse_package(data: &[u8], location: &str) -> Vec<Package> {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return Vec::new();
    };
    match (
        v.get("name").and_then(Value::as_str),
        v.get("version").and_then(Value::as_str),
    ) {
        (Some(n), Some(ver)) if !n.is_empty() && !ver.is_empty() => vec![package(
            n,
            ver,
            license_of(&v),
            location,
            "acquired package info from installed node module manifest file",
        )],
        _ => Vec::new(),
    }
}

/// The packages a `package-lock.json` pins.
pub(super) fn parse_lock(data: &[u8], location: &str) -> Vec<Package> {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return Vec::new();
    };
    let info = "acquired package info from package-lock.json";
    let mut out = Vec::new();
    if let Some(pkgs) = v.get("packages").and_then(Value::as_object) {
        for (path, p) in pkgs {
            if path.is_empty() || p.get("link").and_then(Value::as_bool) == Some(true) {
                continue; // the project itself; links point at other entries
            }
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .map(String::from)
                .unwrap_or_else(|| {
                    path.rsplit_once("node_modules/")
                        .map_or(path.as_str(), |(_, n)| n)
                        .to_string()
                });
            if let Some(ver) = p.get("version").and_then(Value::as_str) {
                out.push(package(&name, ver, license_of(p), location, info));
            }
        }
    } else if let Some(deps) = v.get("dependencies").and_then(Value::as_object) {
        for (name, p) in deps {
            if let Some(ver) = p.get("version").and_then(Value::as_str) {
                out.push(package(name, ver, None, location, info));
            }
        }
    }
    out
}
