//! A blocking registry client for the OCI distribution spec: manifest resolution with
//! index/platform selection, digest verification of everything fetched, mirrors, bearer-token
//! (anonymous, with credentials, or with an identity token) and basic auth, credentials from
//! docker's config, TLS with the system roots plus per-registry CAs
//! (`/etc/docker/certs.d/<host:port>/*.crt`) and `SSL_CERT_FILE`, plain HTTP for local and
//! insecure registries, retries with backoff on 5xx and connection errors. Push lives in
//! [`crate::push`].

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;

use crate::auth::Credential;
use crate::digest::{sha256_digest, verify};
use crate::reference::{Reference, DOCKER_HUB};
use crate::store::ContentStore;
use crate::types::{media_types as mt, parse_json, Descriptor, Index, Manifest, Platform};
use crate::OciError;

const MAX_MANIFEST: u64 = 8 << 20;
const MAX_CONFIG: u64 = 32 << 20;

/// Registry client configuration.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Registry host → mirror endpoints tried first, e.g. "docker.io" → ["http://127.0.0.1:5055"]
    /// or ["127.0.0.1:5055"] (scheme chosen like for registries).
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Hosts (host or host:port) allowed over plain HTTP besides localhost/127.0.0.1/::1.
    pub insecure: Vec<String>,
    /// User-Agent header; "rbuild" when empty.
    pub user_agent: String,
    /// Read credentials from docker's config (`~/.docker/config.json`, helpers).
    pub docker_config: bool,
    /// Directory of per-registry CA certificates (`<dir>/<host:port>/*.crt`); `None` means
    /// `/etc/docker/certs.d`.
    pub certs_dir: Option<PathBuf>,
}

/// The result of [`RegistryClient::resolve`].
#[derive(Debug, Clone)]
pub struct ResolvedManifest {
    /// The reference as resolved: the requested name and tag, with `digest` set to
    /// `manifest_digest` (the platform-specific manifest).
    pub reference: Reference,
    /// Digest of the image manifest (after index selection).
    pub manifest_digest: String,
    /// Manifest bytes, digest-verified.
    pub manifest: Vec<u8>,
    /// Config bytes, digest-verified.
    pub config: Vec<u8>,
    /// The config descriptor from the manifest.
    pub config_desc: Descriptor,
    /// Layer descriptors from the manifest, base first.
    pub layers: Vec<Descriptor>,
}

/// One place to ask: a base URL and the host used in messages and auth caches.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) base: String,
    pub(crate) host: String,
}

/// A request body that can be sent again (after an auth challenge or a retry).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Body<'a> {
    /// No body.
    Empty,
    /// Bytes in memory.
    Bytes(&'a [u8]),
    /// `len` bytes of a file from `offset`.
    File {
        path: &'a Path,
        offset: u64,
        len: u64,
        /// Counts the bytes sent (upload progress).
        meter: Option<&'a crate::progress::Meter<'a>>,
    },
}

/// A blocking registry client. Cheap to share by reference; token caches are internal.
pub struct RegistryClient {
    agents: Mutex<HashMap<String, ureq::Agent>>,
    pub(crate) cfg: RegistryConfig,
    tokens: Mutex<HashMap<(String, String), String>>,
    creds: Mutex<HashMap<String, Option<Credential>>>,
    schemes: Mutex<HashMap<String, &'static str>>,
}

pub(crate) const RETRIES: u32 = 3;

/// Whether an error is worth retrying (connection trouble or a 5xx answer).
pub(crate) fn retryable(e: &OciError) -> bool {
    matches!(e, OciError::Unreachable { .. })
        || matches!(e, OciError::Http { status, .. } if *status >= 500)
}

/// Backoff before retry `attempt` (1-based): 250 ms, 1 s, 4 s.
pub(crate) fn backoff(attempt: u32) {
    std::thread::sleep(Duration::from_millis(250u64 << (2 * (attempt - 1).min(4))));
}

/// PEM certificates from a file (empty when unreadable).
fn pem_certs(path: &Path) -> Vec<ureq::tls::Certificate<'static>> {
    let Ok(data) = std::fs::read(path) else {
        return Vec::new();
    };
    ureq::tls::parse_pem(&data)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect()
}

/// The system trust store: `SSL_CERT_FILE`, else the distribution's bundle.
fn system_roots() -> Vec<ureq::tls::Certificate<'static>> {
    if let Some(f) = std::env::var_os("SSL_CERT_FILE").filter(|v| !v.is_empty()) {
        return pem_certs(Path::new(&f));
    }
    for f in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ] {
        let certs = pem_certs(Path::new(f));
        if !certs.is_empty() {
            return certs;
        }
    }
    Vec::new()
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn is_local_host(host: &str) -> bool {
    let h = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host),
    };
    h == "localhost" || h == "::1" || h.starts_with("127.")
}

/// Parse `Bearer realm="…",service="…",scope="…"` (or `Basic realm=…`).
fn parse_challenge(h: &str) -> Option<(String, BTreeMap<String, String>)> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = BTreeMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remain) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(key, value);
        s = remain.trim_start().trim_start_matches(',').trim_start();
    }
    Some((scheme.to_ascii_lowercase(), params))
}

fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The TLS library's reason when `e` is a server certificate that no trusted CA signed.
fn untrusted_certificate(e: &ureq::Error) -> Option<String> {
    let tls = match e {
        ureq::Error::Rustls(r) => Some(r),
        ureq::Error::Io(io) => io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        _ => None,
    }?;
    matches!(
        tls,
        rustls::Error::InvalidCertificate(_) | rustls::Error::InvalidCertRevocationList(_)
    )
    .then(|| tls.to_string())
}

fn reason_of(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
            std::io::ErrorKind::TimedOut => "timed out".into(),
            std::io::ErrorKind::ConnectionReset => "connection reset".into(),
            _ => io.to_string(),
        },
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::Timeout(_) => "timed out".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        other => other.to_string(),
    }
}

impl RegistryClient {
    /// Build a client.
    pub fn new(cfg: RegistryConfig) -> Result<Self, OciError> {
        Ok(RegistryClient {
            agents: Mutex::new(HashMap::new()),
            cfg,
            tokens: Mutex::new(HashMap::new()),
            creds: Mutex::new(HashMap::new()),
            schemes: Mutex::new(HashMap::new()),
        })
    }

    /// The HTTP agent for a host: trusts the system roots plus the host's CAs from the
    /// certs.d directory (docker/containerd convention: `<dir>/<host:port>/*.crt`).
    pub(crate) fn agent_for(&self, host: &str) -> ureq::Agent {
        if let Some(a) = self.agents.lock().ok().and_then(|m| m.get(host).cloned()) {
            return a;
        }
        let ua = if self.cfg.user_agent.is_empty() {
            "rbuild".to_string()
        } else {
            self.cfg.user_agent.clone()
        };
        let certs_dir = self.certs_dir();
        let mut extra = Vec::new();
        if let Ok(rd) = std::fs::read_dir(certs_dir.join(host)) {
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "crt"))
                .collect();
            files.sort();
            for f in files {
                extra.extend(pem_certs(&f));
            }
        }
        let mut roots = system_roots();
        let root_certs = if roots.is_empty() && extra.is_empty() {
            ureq::tls::RootCerts::WebPki
        } else {
            roots.extend(extra);
            ureq::tls::RootCerts::new_with_certs(&roots)
        };
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .user_agent(ua)
            .max_redirects(10)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(root_certs)
                    .build(),
            )
            .build();
        let agent = ureq::Agent::new_with_config(config);
        if let Ok(mut m) = self.agents.lock() {
            m.insert(host.to_string(), agent.clone());
        }
        agent
    }

    /// Register basic-auth credentials for a registry host (used for Basic challenges and
    /// for token requests); they win over docker's config.
    pub fn set_basic_auth(&self, host: &str, username: &str, password: &str) {
        if let Ok(mut m) = self.creds.lock() {
            m.insert(
                host.to_string(),
                Some(Credential::Basic(
                    username.to_string(),
                    password.to_string(),
                )),
            );
        }
    }

    /// Credentials for a host: set explicitly, else from docker's config (looked up once).
    fn credential(&self, host: &str) -> Result<Option<Credential>, OciError> {
        if let Some(c) = self.creds.lock().ok().and_then(|m| m.get(host).cloned()) {
            return Ok(c);
        }
        let c = if self.cfg.docker_config {
            crate::auth::lookup(host)?
        } else {
            None
        };
        if let Ok(mut m) = self.creds.lock() {
            m.insert(host.to_string(), c.clone());
        }
        Ok(c)
    }

    /// The endpoint for a registry host as configured (scheme by locality/insecure list).
    pub(crate) fn registry_endpoint(&self, r: &Reference) -> Endpoint {
        if r.registry == DOCKER_HUB {
            Endpoint {
                base: "https://registry-1.docker.io".into(),
                host: DOCKER_HUB.into(),
            }
        } else {
            self.endpoint(&r.registry)
        }
    }

    /// Check that the registry answers and that the credentials are accepted (for `login`):
    /// `GET /v2/`, answering any challenge.
    pub fn check_login(&self, registry: &str) -> Result<(), OciError> {
        let r = Reference::parse(&format!("{registry}/login-check"))?;
        let ep = self.registry_endpoint(&r);
        let url = format!("{}/v2/", ep.base);
        let resp = self.send(&ep, "GET", &url, "", &[], Body::Empty, true)?;
        if resp.status().is_success() {
            return Ok(());
        }
        Err(Self::http_err("login", &r, &ep, resp))
    }

    /// Send one request with auth: a 401 is answered once (bearer token or basic), then the
    /// request is sent again. With `retry`, connection errors and 5xx are retried with backoff.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send(
        &self,
        ep: &Endpoint,
        method: &str,
        url: &str,
        scope: &str,
        headers: &[(&str, String)],
        body: Body<'_>,
        retry: bool,
    ) -> Result<ureq::http::Response<ureq::Body>, OciError> {
        let mut auth = self.cached_auth(&ep.host, scope);
        let mut answered = false;
        loop {
            let mut attempt = 0;
            let resp = loop {
                attempt += 1;
                let r = self.send_once(ep, method, url, headers, auth.as_deref(), body);
                match r {
                    Ok(resp) if retry && resp.status().as_u16() >= 500 && attempt < RETRIES => {
                        backoff(attempt)
                    }
                    Err(e) if retry && retryable(&e) && attempt < RETRIES => backoff(attempt),
                    other => break other?,
                }
            };
            if resp.status().as_u16() != 401 || answered {
                if resp.status().as_u16() == 401 && answered {
                    return Err(self.denied(ep));
                }
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            auth = Some(self.answer_challenge(ep, &challenge, scope)?);
            answered = true;
        }
    }

    fn denied(&self, ep: &Endpoint) -> OciError {
        let has = self.credential(&ep.host).ok().flatten().is_some();
        OciError::Auth {
            registry: ep.host.clone(),
            reason: if has {
                "access denied: the registry rejected the credentials (wrong username or password? run `rbuild login`)".into()
            } else {
                "access denied: the registry requires credentials (run `rbuild login`)".into()
            },
        }
    }

    fn send_once(
        &self,
        ep: &Endpoint,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        auth: Option<&str>,
        body: Body<'_>,
    ) -> Result<ureq::http::Response<ureq::Body>, OciError> {
        let mut req = ureq::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let unreachable = |reason: String| OciError::Unreachable {
            registry: ep.host.clone(),
            reason,
        };
        let agent = self.agent_for(&ep.host);
        let result = match body {
            Body::Empty => {
                let req = req
                    .body(())
                    .map_err(|e| unreachable(format!("bad request {url}: {e}")))?;
                agent.run(req)
            }
            Body::Bytes(b) => {
                let req = req
                    .header("Content-Length", b.len().to_string())
                    .body(b)
                    .map_err(|e| unreachable(format!("bad request {url}: {e}")))?;
                agent.run(req)
            }
            Body::File {
                path,
                offset,
                len,
                meter,
            } => {
                let mut f = std::fs::File::open(path).map_err(OciError::io("open", path))?;
                f.seek(std::io::SeekFrom::Start(offset))
                    .map_err(OciError::io("seek", path))?;
                let take = std::io::BufReader::with_capacity(1 << 20, f).take(len);
                let mut reader: Box<dyn Read> = match meter {
                    Some(m) => Box::new(crate::progress::MeteredReader::new(take, m)),
                    None => Box::new(take),
                };
                let req = req
                    .header("Content-Length", len.to_string())
                    .body(ureq::SendBody::from_reader(&mut reader))
                    .map_err(|e| unreachable(format!("bad request {url}: {e}")))?;
                agent.run(req)
            }
        };
        result.map_err(|e| match untrusted_certificate(&e) {
            Some(reason) => self.untrusted(&ep.host, reason),
            None => unreachable(reason_of(&e)),
        })
    }

    fn untrusted(&self, host: &str, reason: String) -> OciError {
        OciError::UntrustedCertificate {
            registry: host.to_string(),
            reason,
            certs_dir: self.certs_dir().display().to_string(),
        }
    }

    /// The certs.d directory (docker/containerd convention: `<dir>/<host:port>/*.crt`).
    fn certs_dir(&self) -> PathBuf {
        self.cfg
            .certs_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/docker/certs.d"))
    }

    /// Whether plain HTTP is allowed for `host` (local, or marked insecure).
    pub(crate) fn allows_http(&self, host: &str) -> bool {
        is_local_host(host) || self.cfg.insecure.iter().any(|h| h == host)
    }

    /// `https`, except for hosts that allow plain HTTP: like docker, those get HTTPS when
    /// they speak it and HTTP otherwise. A host that speaks TLS with a certificate rbuild
    /// does not trust stays HTTPS (its requests then fail naming the certificate and where
    /// the CA goes), never a silent fall-back to HTTP. The answer is remembered per client.
    fn scheme_for(&self, host: &str) -> &'static str {
        if !self.allows_http(host) {
            return "https";
        }
        if let Some(s) = self.schemes.lock().ok().and_then(|m| m.get(host).copied()) {
            return s;
        }
        let probe = self
            .agent_for(host)
            .get(&format!("https://{host}/v2/"))
            .config()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .call();
        let scheme = match &probe {
            Ok(_) => "https",
            Err(e) if untrusted_certificate(e).is_some() => "https",
            Err(_) => "http",
        };
        if let Ok(mut m) = self.schemes.lock() {
            m.insert(host.to_string(), scheme);
        }
        scheme
    }

    fn endpoint(&self, spec: &str) -> Endpoint {
        let spec = spec.trim_end_matches('/');
        if let Some(host) = spec.strip_prefix("http://") {
            Endpoint {
                base: spec.to_string(),
                host: host.to_string(),
            }
        } else if let Some(host) = spec.strip_prefix("https://") {
            Endpoint {
                base: spec.to_string(),
                host: host.to_string(),
            }
        } else {
            Endpoint {
                base: format!("{}://{spec}", self.scheme_for(spec)),
                host: spec.to_string(),
            }
        }
    }

    /// Mirrors for the reference's registry, then the registry itself.
    fn endpoints(&self, r: &Reference) -> Vec<Endpoint> {
        let mut out: Vec<Endpoint> = self
            .cfg
            .mirrors
            .get(&r.registry)
            .map(|m| m.iter().map(|s| self.endpoint(s)).collect())
            .unwrap_or_default();
        if r.registry == DOCKER_HUB {
            out.push(Endpoint {
                base: "https://registry-1.docker.io".into(),
                host: DOCKER_HUB.into(),
            });
        } else {
            out.push(self.endpoint(&r.registry));
        }
        out
    }

    /// Try each endpoint in turn. A definitive "manifest unknown" wins over connection errors
    /// from other endpoints; otherwise the last error is returned.
    fn with_endpoints<T>(
        &self,
        r: &Reference,
        mut f: impl FnMut(&Endpoint) -> Result<T, OciError>,
    ) -> Result<T, OciError> {
        let mut first_unknown = None;
        let mut last = None;
        for ep in self.endpoints(r) {
            match f(&ep) {
                Ok(v) => return Ok(v),
                Err(e @ OciError::DigestMismatch { .. }) => return Err(e),
                Err(e @ OciError::ManifestUnknown { .. }) => {
                    if first_unknown.is_none() {
                        first_unknown = Some(e);
                    }
                }
                Err(e) => last = Some(e),
            }
        }
        Err(first_unknown
            .or(last)
            .unwrap_or_else(|| OciError::Unreachable {
                registry: r.registry.clone(),
                reason: "no endpoint configured".into(),
            }))
    }

    /// GET `path` on `ep`, handling bearer/basic challenges once, with retries.
    fn get(
        &self,
        ep: &Endpoint,
        r: &Reference,
        path: &str,
        accept: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, OciError> {
        let url = format!("{}{}", ep.base, path);
        let scope = format!("repository:{}:pull", r.repository);
        let headers: Vec<(&str, String)> = accept
            .map(|a| vec![("Accept", a.to_string())])
            .unwrap_or_default();
        self.send(ep, "GET", &url, &scope, &headers, Body::Empty, true)
    }

    fn cached_auth(&self, host: &str, scope: &str) -> Option<String> {
        self.tokens
            .lock()
            .ok()
            .and_then(|m| m.get(&(host.to_string(), scope.to_string())).cloned())
    }

    fn basic_header(&self, host: &str) -> Result<Option<String>, OciError> {
        Ok(match self.credential(host)? {
            Some(Credential::Basic(u, p)) => {
                let enc = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                Some(format!("Basic {enc}"))
            }
            _ => None,
        })
    }

    fn answer_challenge(
        &self,
        ep: &Endpoint,
        challenge: &str,
        scope: &str,
    ) -> Result<String, OciError> {
        let auth_err = |reason: String| OciError::Auth {
            registry: ep.host.clone(),
            reason,
        };
        if challenge.trim().is_empty() {
            return Err(auth_err(
                "access denied (HTTP 401 without a WWW-Authenticate challenge)".into(),
            ));
        }
        let (scheme, params) = parse_challenge(challenge)
            .ok_or_else(|| auth_err(format!("unparsable WWW-Authenticate {challenge:?}")))?;
        let header = match scheme.as_str() {
            "basic" => self.basic_header(&ep.host)?.ok_or_else(|| {
                auth_err(
                    "registry requires basic auth and no credentials are configured (run `rbuild login`)"
                        .into(),
                )
            })?,
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| auth_err("bearer challenge without realm".into()))?;
                let mut url = realm.clone();
                let mut sep = if url.contains('?') { '&' } else { '?' };
                if let Some(service) = params.get("service") {
                    url.push_str(&format!("{sep}service={}", pct(service)));
                    sep = '&';
                }
                let sc = if scope.is_empty() {
                    params.get("scope").map(String::as_str).unwrap_or("")
                } else {
                    scope
                };
                for one in sc.split(' ').filter(|x| !x.is_empty()) {
                    url.push_str(&format!("{sep}scope={}", pct(one)));
                    sep = '&';
                }
                let realm_host = realm
                    .split("://")
                    .nth(1)
                    .and_then(|r| r.split('/').next())
                    .unwrap_or(&ep.host)
                    .to_string();
                let agent = self.agent_for(&realm_host);
                let call = match self.credential(&ep.host)? {
                    Some(Credential::IdentityToken(tok)) => {
                        // OAuth2 refresh-token grant (docker's identity tokens).
                        let mut form = format!(
                            "grant_type=refresh_token&client_id=rbuild&refresh_token={}",
                            pct(&tok)
                        );
                        if let Some(service) = params.get("service") {
                            form.push_str(&format!("&service={}", pct(service)));
                        }
                        form.push_str(&format!("&scope={}", pct(sc)));
                        agent
                            .post(realm.as_str())
                            .header("Content-Type", "application/x-www-form-urlencoded")
                            .send(form.as_bytes())
                    }
                    Some(Credential::Basic(u, p)) => {
                        let enc =
                            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                        agent
                            .get(&url)
                            .header("Authorization", format!("Basic {enc}"))
                            .call()
                    }
                    None => agent.get(&url).call(),
                };
                let mut resp = call.map_err(|e| OciError::Unreachable {
                    registry: realm.clone(),
                    reason: reason_of(&e),
                })?;
                if resp.status().as_u16() == 401 || resp.status().as_u16() == 403 {
                    return Err(self.denied(ep));
                }
                if !resp.status().is_success() {
                    return Err(auth_err(format!(
                        "token endpoint {realm} answered HTTP {}",
                        resp.status().as_u16()
                    )));
                }
                let body = resp
                    .body_mut()
                    .with_config()
                    .limit(1 << 20)
                    .read_to_vec()
                    .map_err(|e| auth_err(format!("reading token: {e}")))?;
                let v: serde_json::Value = parse_json("token response", &body)?;
                let token = v
                    .get("token")
                    .or_else(|| v.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| auth_err("token response without token".into()))?;
                format!("Bearer {token}")
            }
            other => return Err(auth_err(format!("unsupported auth scheme {other:?}"))),
        };
        if let Ok(mut m) = self.tokens.lock() {
            m.insert((ep.host.clone(), scope.to_string()), header.clone());
        }
        Ok(header)
    }

    pub(crate) fn http_err(
        op: &str,
        r: &Reference,
        ep: &Endpoint,
        mut resp: ureq::http::Response<ureq::Body>,
    ) -> OciError {
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(4096)
            .read_to_vec()
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        let detail = match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v) => v
                .pointer("/errors/0/message")
                .and_then(|m| m.as_str())
                .map(|m| format!(": {m}"))
                .unwrap_or_default(),
            Err(_) if !text.trim().is_empty() => {
                format!(": {}", text.trim().chars().take(200).collect::<String>())
            }
            Err(_) => String::new(),
        };
        if status == 401 || status == 403 {
            return OciError::Auth {
                registry: ep.host.clone(),
                reason: format!(
                    "{op} {}: access denied (HTTP {status}){detail}",
                    r.familiar()
                ),
            };
        }
        OciError::Http {
            op: op.to_string(),
            reference: r.familiar(),
            registry: ep.host.clone(),
            status,
            detail,
        }
    }

    /// GET a manifest (by tag or digest) from one endpoint; returns (bytes, media type, digest).
    fn get_manifest(
        &self,
        ep: &Endpoint,
        r: &Reference,
        object: &str,
    ) -> Result<(Vec<u8>, String, String), OciError> {
        let accept = [
            mt::OCI_MANIFEST,
            mt::OCI_INDEX,
            mt::DOCKER_MANIFEST,
            mt::DOCKER_MANIFEST_LIST,
        ]
        .join(", ");
        let path = format!("/v2/{}/manifests/{}", r.repository, object);
        let mut resp = self.get(ep, r, &path, Some(&accept))?;
        let status = resp.status().as_u16();
        if status == 404 {
            let sep = if object.starts_with("sha256:") {
                '@'
            } else {
                ':'
            };
            return Err(OciError::ManifestUnknown {
                reference: r.familiar(),
                path: format!("{}{sep}{object}", r.repository),
                registry: ep.host.clone(),
            });
        }
        if !resp.status().is_success() {
            return Err(Self::http_err("pull", r, ep, resp));
        }
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_MANIFEST)
            .read_to_vec()
            .map_err(|e| OciError::Unreachable {
                registry: ep.host.clone(),
                reason: format!("reading manifest of {}: {}", r.familiar(), reason_of(&e)),
            })?;
        let what = format!("manifest of {}", r.familiar());
        let digest = if object.starts_with("sha256:") {
            verify(&what, &body, object, None)?;
            object.to_string()
        } else {
            let d = sha256_digest(&body);
            if let Some(h) = header_digest.filter(|h| h.starts_with("sha256:")) {
                if h != d {
                    return Err(OciError::DigestMismatch {
                        what,
                        expected: h,
                        actual: d,
                    });
                }
            }
            d
        };
        // Prefer the document's own mediaType when the server is vague.
        let media_type = match serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            }) {
            Some(m) => m,
            None => ctype,
        };
        Ok((body, media_type, digest))
    }

    fn get_blob_bytes(
        &self,
        ep: &Endpoint,
        r: &Reference,
        desc: &Descriptor,
        limit: u64,
    ) -> Result<Vec<u8>, OciError> {
        let path = format!("/v2/{}/blobs/{}", r.repository, desc.digest);
        let mut resp = self.get(ep, r, &path, None)?;
        if !resp.status().is_success() {
            return Err(Self::http_err(
                &format!("fetch blob {} of", desc.digest),
                r,
                ep,
                resp,
            ));
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| OciError::Unreachable {
                registry: ep.host.clone(),
                reason: format!("reading blob {}: {}", desc.digest, reason_of(&e)),
            })?;
        verify(
            &format!("blob {} of {}", desc.digest, r.familiar()),
            &body,
            &desc.digest,
            Some(desc.size),
        )?;
        Ok(body)
    }

    /// GET a manifest or index by tag or digest as it is (no platform resolution): its bytes,
    /// media type and verified digest.
    pub fn fetch_manifest(
        &self,
        r: &Reference,
        object: &str,
    ) -> Result<(Vec<u8>, String, String), OciError> {
        self.with_endpoints(r, |ep| self.get_manifest(ep, r, object))
    }

    /// A small blob (config, attestation statement) in memory, digest- and size-verified, at
    /// most `limit` bytes.
    pub fn fetch_blob_bytes(
        &self,
        r: &Reference,
        desc: &Descriptor,
        limit: u64,
    ) -> Result<Vec<u8>, OciError> {
        crate::digest::digest_hex(&desc.digest)?;
        self.with_endpoints(r, |ep| self.get_blob_bytes(ep, r, desc, limit))
    }

    /// Resolve a reference to the image manifest for `platform` (see [`ResolvedManifest`]).
    pub fn resolve(
        &self,
        r: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedManifest, OciError> {
        self.with_endpoints(r, |ep| self.resolve_at(ep, r, platform))
    }

    fn resolve_at(
        &self,
        ep: &Endpoint,
        r: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedManifest, OciError> {
        let (mut body, mut media_type, mut digest) = self.get_manifest(ep, r, r.object())?;
        let is_index = |m: &str, b: &[u8]| {
            m == mt::OCI_INDEX
                || m == mt::DOCKER_MANIFEST_LIST
                || (m.is_empty()
                    && serde_json::from_slice::<serde_json::Value>(b)
                        .map(|v| v.get("manifests").is_some())
                        .unwrap_or(false))
        };
        if is_index(&media_type, &body) {
            let index: Index = parse_json(&format!("index of {}", r.familiar()), &body)?;
            let chosen = index
                .manifests
                .iter()
                .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
                .ok_or_else(|| OciError::NoMatchingPlatform {
                    reference: r.familiar(),
                    platform: platform.to_string(),
                    available: index
                        .manifests
                        .iter()
                        .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?
                .clone();
            let (b, m, d) = self.get_manifest(ep, r, &chosen.digest)?;
            if is_index(&m, &b) {
                return Err(OciError::UnsupportedMediaType {
                    what: format!("manifest {} of {}", chosen.digest, r.familiar()),
                    media_type: m,
                });
            }
            body = b;
            media_type = if m.is_empty() { chosen.media_type } else { m };
            digest = d;
        }
        if !media_type.is_empty()
            && media_type != mt::OCI_MANIFEST
            && media_type != mt::DOCKER_MANIFEST
        {
            return Err(OciError::UnsupportedMediaType {
                what: format!("manifest of {}", r.familiar()),
                media_type,
            });
        }
        let manifest: Manifest = parse_json(&format!("manifest of {}", r.familiar()), &body)?;
        let config = self.get_blob_bytes(ep, r, &manifest.config, MAX_CONFIG)?;
        let mut reference = r.clone();
        reference.digest = Some(digest.clone());
        Ok(ResolvedManifest {
            reference,
            manifest_digest: digest,
            manifest: body,
            config,
            config_desc: manifest.config,
            layers: manifest.layers,
        })
    }

    /// Download a blob into the store, streaming and verifying digest and size; a blob already
    /// present is not fetched again. Nothing is stored when verification fails.
    pub fn fetch_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
        store: &dyn ContentStore,
    ) -> Result<(), OciError> {
        self.fetch_blob_with_progress(r, desc, store, &crate::progress::NoTransferProgress)
    }

    /// Open a blob for reading as it arrives, at most `desc.size + 1` bytes: nothing is
    /// verified here, the caller checks digest and size of what it read (and commits nothing
    /// that does not match).
    pub fn open_blob_stream(
        &self,
        r: &Reference,
        desc: &Descriptor,
    ) -> Result<Box<dyn Read + Send>, OciError> {
        crate::digest::digest_hex(&desc.digest)?;
        self.with_endpoints(r, |ep| self.blob_body(ep, r, desc))
    }

    /// The body of a blob GET from one endpoint, at most `desc.size + 1` bytes.
    fn blob_body(
        &self,
        ep: &Endpoint,
        r: &Reference,
        desc: &Descriptor,
    ) -> Result<Box<dyn Read + Send>, OciError> {
        let path = format!("/v2/{}/blobs/{}", r.repository, desc.digest);
        let resp = self.get(ep, r, &path, None)?;
        if !resp.status().is_success() {
            return Err(Self::http_err(
                &format!("fetch blob {} of", desc.digest),
                r,
                ep,
                resp,
            ));
        }
        Ok(Box::new(
            resp.into_body()
                .into_with_config()
                .limit(desc.size.saturating_add(1))
                .reader(),
        ))
    }

    /// [`RegistryClient::fetch_blob`], reporting the bytes received to `progress`.
    pub fn fetch_blob_with_progress(
        &self,
        r: &Reference,
        desc: &Descriptor,
        store: &dyn ContentStore,
        progress: &dyn crate::progress::TransferProgress,
    ) -> Result<(), OciError> {
        crate::digest::digest_hex(&desc.digest)?;
        if store.has_blob(&desc.digest) {
            return Ok(());
        }
        let meter = crate::progress::Meter::start(
            progress,
            &desc.digest,
            crate::progress::Action::Downloading,
            desc.size,
        );
        let result = self.with_endpoints(r, |ep| {
            let reader = self.blob_body(ep, r, desc)?;
            let mut reader = crate::progress::MeteredReader::new(reader, &meter);
            let mut reader: &mut dyn Read = &mut reader;
            store.ingest(&mut reader, &desc.digest, desc.size)
        });
        meter.finish(result.is_ok());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parsing() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .unwrap();
        assert_eq!(scheme, "bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/busybox:pull");
        let (scheme, p) = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(scheme, "basic");
        assert_eq!(p["realm"], "Registry Realm");
        let (_, p) = parse_challenge("Bearer realm=http://x/token, service=x").unwrap();
        assert_eq!(p["realm"], "http://x/token");
        assert_eq!(p["service"], "x");
    }

    #[test]
    fn local_hosts_use_http() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5055",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_local_host(h), "{h}");
        }
        for h in ["docker.io", "10.0.0.1:5000", "ghcr.io"] {
            assert!(!is_local_host(h), "{h}");
        }
        let c = RegistryClient::new(RegistryConfig {
            insecure: vec!["10.0.0.1:5000".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(c.allows_http("10.0.0.1:5000"));
        assert!(!c.allows_http("10.0.0.2:5000"));
        assert_eq!(c.endpoint("ghcr.io").base, "https://ghcr.io");
        assert_eq!(
            c.endpoint("https://127.0.0.1:5055/").base,
            "https://127.0.0.1:5055"
        );
    }
}
