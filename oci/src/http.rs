//! Plain HTTP(S) downloads for `ADD <url>`: one GET streamed into a file while hashing it,
//! through the registry client's HTTP agent (one client setup: certs.d CAs, retries).
//!
//! Returns what the solver needs to name and key the file: the sha256 of the body, its size,
//! the file name from a `Content-Disposition` header (if any) and the `Last-Modified` time as
//! Unix seconds (if the server sent a parseable one).

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::registry::{backoff, RETRIES};
use crate::{OciError, RegistryClient};

/// What a download produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// `sha256:<hex>` of the body.
    pub digest: String,
    pub size: u64,
    /// File name from `Content-Disposition`, when the server sent one.
    pub filename: Option<String>,
    /// `Last-Modified` as Unix seconds.
    pub last_modified: Option<i64>,
    /// The `ETag` the server sent, for a later conditional request.
    pub etag: Option<String>,
}

/// Result of a conditional download ([`fetch_if_changed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetch {
    /// The server answered 304: the copy fetched with that ETag is still current.
    NotModified,
    Fetched(Fetched),
}

/// GET `url` (following redirects) into `dest` (created or truncated), through `client`'s
/// agent for the URL's host (system roots plus the host's certs.d CAs, its user agent and
/// timeouts); connection errors and 5xx answers are retried with the registry's backoff.
pub fn fetch(client: &RegistryClient, url: &str, dest: &Path) -> Result<Fetched, OciError> {
    match fetch_if_changed(client, url, dest, None)? {
        Fetch::Fetched(f) => Ok(f),
        Fetch::NotModified => Err(OciError::Fetch {
            url: url.to_string(),
            reason: "server answered 304 Not Modified to an unconditional request".into(),
        }),
    }
}

/// Like [`fetch`], but with `If-None-Match: etag` when an ETag from an earlier download is
/// given, so an unchanged resource is not transferred again.
pub fn fetch_if_changed(
    client: &RegistryClient,
    url: &str,
    dest: &Path,
    etag: Option<&str>,
) -> Result<Fetch, OciError> {
    let agent = client.agent_for(host_of(url));
    let fail = |reason: String| OciError::Fetch {
        url: url.to_string(),
        reason,
    };
    let mut attempt = 0;
    let resp = loop {
        attempt += 1;
        let mut req = agent.get(url);
        if let Some(e) = etag {
            req = req.header("If-None-Match", e);
        }
        match req.call() {
            Ok(r) if r.status().as_u16() >= 500 && attempt < RETRIES => backoff(attempt),
            Err(
                ureq::Error::Io(_)
                | ureq::Error::ConnectionFailed
                | ureq::Error::HostNotFound
                | ureq::Error::Timeout(_),
            ) if attempt < RETRIES => backoff(attempt),
            other => break other.map_err(|e| fail(e.to_string()))?,
        }
    };
    let status = resp.status().as_u16();
    if status == 304 && etag.is_some() {
        return Ok(Fetch::NotModified);
    }
    if !(200..300).contains(&status) {
        return Err(fail(format!("server answered HTTP {status}")));
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let filename = header("content-disposition").and_then(|v| disposition_filename(&v));
    let last_modified = header("last-modified").and_then(|v| parse_http_date(&v));
    let etag = header("etag");
    let mut body = resp.into_body();
    let mut reader = body.as_reader();
    let mut file = File::create(dest).map_err(OciError::io("create", dest))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| fail(format!("reading the body: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(OciError::io("write", dest))?;
        size += n as u64;
    }
    file.sync_all().map_err(OciError::io("sync", dest))?;
    Ok(Fetch::Fetched(Fetched {
        digest: format!("sha256:{}", hex::encode(hasher.finalize())),
        size,
        filename,
        last_modified,
        etag,
    }))
}

/// The `host[:port]` of a URL (the certs.d directory name), empty when it has none.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.rsplit_once('@').map_or(authority, |(_, h)| h)
}

/// The `filename` parameter of a `Content-Disposition` value, reduced to its last path
/// component; `None` when absent or unusable.
pub fn disposition_filename(v: &str) -> Option<String> {
    for part in v.split(';').skip(1) {
        let Some((k, val)) = part.trim().split_once('=') else {
            continue;
        };
        if !k.trim().eq_ignore_ascii_case("filename") {
            continue;
        }
        let val = val.trim().trim_matches('"');
        let base = val.rsplit(['/', '\\']).next().unwrap_or("");
        if base.is_empty() || base == "." || base == ".." {
            return None;
        }
        return Some(base.to_string());
    }
    None
}

/// Parse an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) into Unix seconds.
pub fn parse_http_date(v: &str) -> Option<i64> {
    let rest = v.trim().split_once(',').map(|(_, r)| r)?.trim();
    let f: Vec<&str> = rest.split_whitespace().collect();
    if f.len() != 5 || f[4] != "GMT" {
        return None;
    }
    let day: i64 = f[0].parse().ok()?;
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = months.iter().position(|m| *m == f[1])? as i64 + 1;
    let year: i64 = f[2].parse().ok()?;
    let hms: Vec<i64> = f[3]
        .split(':')
        .map(|x| x.parse::<i64>().ok())
        .collect::<Option<Vec<i64>>>()?;
    let [h, mi, se] = hms.as_slice() else {
        return None;
    };
    if !(1..=31).contains(&day) || *h > 23 || *mi > 59 || *se > 60 {
        return None;
    }
    Some(crate::time::days_from_civil(year, month, day) * 86400 + h * 3600 + mi * 60 + se)
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784111777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("garbage"), None);
        assert_eq!(parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT"), None);
    }

    #[test]
    fn content_disposition_names() {
        assert_eq!(
            disposition_filename("attachment; filename=\"report.tar.gz\""),
            Some("report.tar.gz".into())
        );
        assert_eq!(
            disposition_filename("attachment; filename=../../etc/passwd"),
            Some("passwd".into())
        );
        assert_eq!(disposition_filename("inline"), None);
        assert_eq!(disposition_filename("attachment; filename=\"..\""), None);
    }
}
