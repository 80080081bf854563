//! Registry credentials the way docker keeps them: `$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json` with `auths` (base64 `user:pass` in `auth`, or `username`/`password`,
//! or an `identitytoken`), `credHelpers` (per registry) and `credsStore` (default helper), where a
//! helper is the program `docker-credential-<name>` speaking `get`/`store`/`erase` on stdin and
//! stdout. `login`/`logout` write the same file (or the helper), preserving unknown keys.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::reference::DOCKER_HUB;
use crate::OciError;

/// Key docker uses for Docker Hub in `auths`.
const HUB_KEY: &str = "https://index.docker.io/v1/";

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// Username and password (basic auth, and for bearer-token requests).
    Basic(String, String),
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token endpoint.
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic(u, _) => write!(f, "Basic({u}, ***)"),
            Credential::IdentityToken(_) => write!(f, "IdentityToken(***)"),
        }
    }
}

fn auth_err(host: &str, reason: impl Into<String>) -> OciError {
    OciError::Auth {
        registry: host.to_string(),
        reason: reason.into(),
    }
}

/// Path of docker's config file: `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
pub fn config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

fn read_config() -> Result<(PathBuf, Map<String, Value>), OciError> {
    let path = config_path().ok_or_else(|| OciError::Store {
        op: "docker config".into(),
        reason: "neither DOCKER_CONFIG nor HOME is set".into(),
    })?;
    let map = match std::fs::read(&path) {
        Ok(data) if !data.iter().all(u8::is_ascii_whitespace) => {
            match serde_json::from_slice::<Value>(&data) {
                Ok(Value::Object(m)) => m,
                Ok(_) => {
                    return Err(OciError::InvalidJson {
                        what: path.display().to_string(),
                        reason: "not a JSON object".into(),
                    })
                }
                Err(e) => {
                    return Err(OciError::InvalidJson {
                        what: path.display().to_string(),
                        reason: e.to_string(),
                    })
                }
            }
        }
        Ok(_) => Map::new(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
        Err(e) => return Err(OciError::io("read", &path)(e)),
    };
    Ok((path, map))
}

/// The `auths` keys that may name `host`.
fn keys_for(host: &str) -> Vec<String> {
    if host == DOCKER_HUB || host == "index.docker.io" || host == "registry-1.docker.io" {
        return vec![
            HUB_KEY.into(),
            "index.docker.io".into(),
            "docker.io".into(),
            "registry-1.docker.io".into(),
        ];
    }
    vec![
        host.to_string(),
        format!("https://{host}"),
        format!("http://{host}"),
        format!("https://{host}/v1/"),
        format!("https://{host}/v2/"),
    ]
}

/// The key `login` writes for `host`.
fn key_for(host: &str) -> String {
    if host == DOCKER_HUB || host == "index.docker.io" {
        HUB_KEY.into()
    } else {
        host.to_string()
    }
}

fn helper_get(helper: &str, host: &str) -> Result<Option<Credential>, OciError> {
    let prog = format!("docker-credential-{helper}");
    let server = key_for(host);
    let mut child = Command::new(&prog)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| auth_err(host, format!("running credential helper {prog}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| auth_err(host, format!("credential helper {prog}: {e}")))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if msg.contains("credentials not found") {
            return Ok(None);
        }
        return Err(auth_err(
            host,
            format!("credential helper {prog} get failed: {}", msg.trim()),
        ));
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| auth_err(host, format!("credential helper {prog}: bad JSON: {e}")))?;
    let user = v.get("Username").and_then(Value::as_str).unwrap_or("");
    let secret = v.get("Secret").and_then(Value::as_str).unwrap_or("");
    if secret.is_empty() {
        return Ok(None);
    }
    if user == "<token>" {
        return Ok(Some(Credential::IdentityToken(secret.into())));
    }
    Ok(Some(Credential::Basic(user.into(), secret.into())))
}

fn helper_run(helper: &str, action: &str, input: &[u8], host: &str) -> Result<(), OciError> {
    let prog = format!("docker-credential-{helper}");
    let mut child = Command::new(&prog)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| auth_err(host, format!("running credential helper {prog}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| auth_err(host, format!("credential helper {prog}: {e}")))?;
    if !out.status.success() {
        return Err(auth_err(
            host,
            format!(
                "credential helper {prog} {action} failed: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            ),
        ));
    }
    Ok(())
}

fn from_auth_entry(host: &str, e: &Value) -> Result<Option<Credential>, OciError> {
    if let Some(t) = e.get("identitytoken").and_then(Value::as_str) {
        if !t.is_empty() {
            return Ok(Some(Credential::IdentityToken(t.into())));
        }
    }
    if let Some(a) = e.get("auth").and_then(Value::as_str) {
        if !a.is_empty() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .map_err(|_| auth_err(host, "docker config: `auth` is not valid base64"))?;
            let s = String::from_utf8(raw)
                .map_err(|_| auth_err(host, "docker config: `auth` is not UTF-8"))?;
            let (u, p) = s
                .split_once(':')
                .ok_or_else(|| auth_err(host, "docker config: `auth` is not user:password"))?;
            return Ok(Some(Credential::Basic(u.into(), p.into())));
        }
    }
    let u = e.get("username").and_then(Value::as_str).unwrap_or("");
    let p = e.get("password").and_then(Value::as_str).unwrap_or("");
    if !u.is_empty() && !p.is_empty() {
        return Ok(Some(Credential::Basic(u.into(), p.into())));
    }
    Ok(None)
}

/// Look up credentials for a registry host (`host` or `host:port`): `credHelpers[host]`, then
/// `auths`, then `credsStore`. `Ok(None)` means anonymous.
pub fn lookup(host: &str) -> Result<Option<Credential>, OciError> {
    let (_, cfg) = read_config()?;
    if let Some(h) = cfg
        .get("credHelpers")
        .and_then(Value::as_object)
        .and_then(|m| keys_for(host).iter().find_map(|k| m.get(k).cloned()))
        .and_then(|v| v.as_str().map(str::to_string))
    {
        return helper_get(&h, host);
    }
    if let Some(auths) = cfg.get("auths").and_then(Value::as_object) {
        for k in keys_for(host) {
            if let Some(e) = auths.get(&k) {
                if let Some(c) = from_auth_entry(host, e)? {
                    return Ok(Some(c));
                }
            }
        }
    }
    if let Some(store) = cfg.get("credsStore").and_then(Value::as_str) {
        if !store.is_empty() {
            return helper_get(store, host);
        }
    }
    Ok(None)
}

fn write_config(path: &PathBuf, cfg: &Map<String, Value>) -> Result<(), OciError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(OciError::io("create", dir))?;
    }
    let mut data = serde_json::to_vec_pretty(&Value::Object(cfg.clone())).map_err(|e| {
        OciError::InvalidJson {
            what: path.display().to_string(),
            reason: e.to_string(),
        }
    })?;
    data.push(b'\n');
    // Created 0600: the credentials are never readable by others, not even for a moment.
    crate::image_store::atomic_write_mode(path, &data, 0o600)?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    Ok(())
}

/// The credential helper that stores `host`'s credentials: `credHelpers[key|host]`, else
/// `credsStore`.
fn helper_for(cfg: &Map<String, Value>, key: &str, host: &str) -> Option<String> {
    cfg.get("credHelpers")
        .and_then(Value::as_object)
        .and_then(|m| m.get(key).or_else(|| m.get(host)))
        .and_then(Value::as_str)
        .or_else(|| cfg.get("credsStore").and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Save credentials for `host` (into the credential helper when one is configured for it,
/// else base64 into `auths`). Returns where they went.
pub fn store(host: &str, username: &str, password: &str) -> Result<String, OciError> {
    let (path, mut cfg) = read_config()?;
    let key = key_for(host);
    let helper = helper_for(&cfg, &key, host);
    if let Some(h) = helper {
        let input = json!({"ServerURL": key, "Username": username, "Secret": password});
        helper_run(&h, "store", input.to_string().as_bytes(), host)?;
        // docker records an empty entry so `auths` lists the registry
        let auths = cfg
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = auths {
            m.insert(key, json!({}));
        }
        write_config(&path, &cfg)?;
        return Ok(format!("credential helper docker-credential-{h}"));
    }
    let enc = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let auths = cfg
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    if !auths.is_object() {
        *auths = Value::Object(Map::new());
    }
    if let Value::Object(m) = auths {
        m.insert(key, json!({ "auth": enc }));
    }
    write_config(&path, &cfg)?;
    Ok(path.display().to_string())
}

/// Remove credentials for `host`; returns whether any were found.
pub fn erase(host: &str) -> Result<bool, OciError> {
    let (path, mut cfg) = read_config()?;
    let key = key_for(host);
    let helper = helper_for(&cfg, &key, host);
    let mut found = false;
    if let Some(h) = helper {
        found = helper_run(&h, "erase", key.as_bytes(), host).is_ok();
    }
    if let Some(Value::Object(m)) = cfg.get_mut("auths") {
        for k in keys_for(host) {
            found |= m.remove(&k).is_some();
        }
    }
    write_config(&path, &cfg)?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_entries_decode() {
        let e = json!({"auth": base64::engine::general_purpose::STANDARD.encode("u:p:x")});
        assert_eq!(
            from_auth_entry("h", &e).unwrap(),
            Some(Credential::Basic("u".into(), "p:x".into()))
        );
        let e = json!({"identitytoken": "tok", "auth": ""});
        assert_eq!(
            from_auth_entry("h", &e).unwrap(),
            Some(Credential::IdentityToken("tok".into()))
        );
        assert!(from_auth_entry("h", &json!({"auth": "%%%"})).is_err());
        assert_eq!(from_auth_entry("h", &json!({})).unwrap(), None);
        assert_eq!(key_for("docker.io"), HUB_KEY);
        assert!(keys_for("r:5000").contains(&"https://r:5000".to_string()));
    }
}
