//! Value syntax of `docker buildx build` flags, checked when the command line is parsed (clap
//! `value_parser`s), so a malformed value is a usage error naming the flag even when the
//! feature behind the flag is not implemented yet.
//!
//! Comma-separated `key=value` lists follow buildx's CSV rules (Go's `encoding/csv`): a whole
//! field may be double-quoted to contain commas (`"src=a,b"`), and `""` inside quotes is a
//! literal quote.

use std::collections::BTreeMap;

/// Split a CSV line into fields as Go's `encoding/csv` reads one record (buildx parses
/// `--output`, `--cache-to`, `--secret`, … with it): a field that starts with `"` is quoted, may
/// contain commas, and `""` inside it is a literal quote; its closing quote must end the field.
/// A quote inside an unquoted field is an error (Go's `ErrBareQuote`), as is an unterminated
/// quoted field or text after a closing quote (`ErrQuote`).
pub fn csv_fields(s: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut rest = s;
    loop {
        let field;
        if let Some(q) = rest.strip_prefix('"') {
            let mut cur = String::new();
            let mut chars = q.char_indices();
            let mut after = None;
            while let Some((i, c)) = chars.next() {
                if c != '"' {
                    cur.push(c);
                } else if q.get(i + 1..).is_some_and(|r| r.starts_with('"')) {
                    chars.next();
                    cur.push('"');
                } else {
                    after = q.get(i + 1..);
                    break;
                }
            }
            let after = after.ok_or_else(|| format!("unterminated quote in {s:?}"))?;
            field = cur;
            rest = match after.strip_prefix(',') {
                Some(r) => r,
                None if after.is_empty() => {
                    fields.push(field);
                    return Ok(fields);
                }
                None => return Err(format!("extraneous or missing \" in quoted field in {s:?}")),
            };
        } else {
            let (f, r) = match rest.split_once(',') {
                Some((f, r)) => (f, Some(r)),
                None => (rest, None),
            };
            if f.contains('"') {
                return Err(format!("bare \" in non-quoted field in {s:?}"));
            }
            field = f.to_string();
            match r {
                Some(r) => rest = r,
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
            }
        }
        fields.push(field);
    }
}

/// A `key=value,…` spec as an ordered map (keys lowercased, as buildx does).
pub fn kv_spec(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut m = BTreeMap::new();
    for f in csv_fields(s)? {
        let f = f.trim();
        if f.is_empty() {
            continue;
        }
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| format!("expected key=value, got {f:?}"))?;
        m.insert(k.trim().to_lowercase(), v.to_string());
    }
    Ok(m)
}

fn only_keys(m: &BTreeMap<String, String>, allowed: &[&str]) -> Result<(), String> {
    for k in m.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(format!(
                "unexpected key {k:?} (expected one of: {})",
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

/// `--secret id=ID[,src=FILE]`, `type=file,id=ID,src=FILE`, `type=env,id=ID[,env=VAR]`.
pub fn secret(s: &str) -> Result<String, String> {
    let m = kv_spec(s)?;
    only_keys(
        &m,
        &["type", "id", "src", "source", "env", "required", "target"],
    )?;
    match m.get("type").map(String::as_str) {
        None | Some("file") | Some("env") => {}
        Some(t) => {
            return Err(format!(
                "unsupported secret type {t:?} (expected file or env)"
            ))
        }
    }
    if m.get("id").is_none_or(|i| i.is_empty()) {
        return Err("missing id= (e.g. id=mytoken,src=token.txt)".into());
    }
    Ok(s.to_string())
}

/// `--ssh default|ID[=SOCKET|KEY[,KEY]]`.
pub fn ssh(s: &str) -> Result<String, String> {
    let (id, paths) = s.split_once('=').unwrap_or((s, ""));
    if id.is_empty() || id.contains(',') {
        return Err(format!(
            "expected default or ID[=socket|key[,key]], got {s:?}"
        ));
    }
    if s.contains('=') && paths.split(',').any(str::is_empty) {
        return Err(format!("empty socket or key path in {s:?}"));
    }
    Ok(s.to_string())
}

/// A boolean attribute value as buildx reads one (Go's `strconv.ParseBool`): `1 t T TRUE true
/// True` / `0 f F FALSE false False`.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `--build-context name=path|docker-image://ref|oci-layout://path|git url|http url`.
pub fn build_context(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() && !value.is_empty() => Ok(s.to_string()),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

/// `--progress auto|tty|plain|rawjson|quiet` (`none` = quiet, as in buildx).
pub fn progress(s: &str) -> Result<String, String> {
    match s {
        "auto" | "tty" | "plain" | "rawjson" | "quiet" | "none" => Ok(s.to_string()),
        _ => Err(format!(
            "expected auto, tty, plain, rawjson or quiet, got {s:?}"
        )),
    }
}

/// `--network default|none|host`.
pub fn network(s: &str) -> Result<String, String> {
    match s {
        "default" | "none" | "host" => Ok(s.to_string()),
        _ => Err(format!("expected default, none or host, got {s:?}")),
    }
}

/// `--allow network.host|security.insecure|device[=…]`.
pub fn entitlement(s: &str) -> Result<String, String> {
    let name = s.split_once('=').map(|(n, _)| n).unwrap_or(s);
    match name {
        "network.host" | "security.insecure" | "device" | "ssh" => Ok(s.to_string()),
        _ if name.starts_with("fs") => Ok(s.to_string()),
        _ => Err(format!(
            "unknown entitlement {s:?} (expected network.host, security.insecure or device)"
        )),
    }
}

/// `--add-host host:ip` or `host=ip` (ip may be IPv6, or `host-gateway`).
pub fn add_host(s: &str) -> Result<String, String> {
    let (host, ip) = s
        .split_once('=')
        .or_else(|| s.split_once(':'))
        .ok_or_else(|| format!("expected HOST:IP or HOST=IP, got {s:?}"))?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("empty host name in {s:?}"));
    }
    if ip != "host-gateway" && ip.parse::<std::net::IpAddr>().is_err() {
        return Err(format!("invalid IP address {ip:?} in {s:?}"));
    }
    Ok(s.to_string())
}

/// `--memory`, `--shm-size 64m`: a size as docker reads one ([`rbuild_frontend::parse_size`]).
pub fn bytes(s: &str) -> Result<u64, String> {
    rbuild_frontend::parse_size(s)
        .ok_or_else(|| format!("expected a size such as 64m or 1g, got {s:?}"))
}

/// `--shm-size`: [`bytes`], at most the host's physical memory (a tmpfs size the kernel cannot
/// represent ends up unlimited; one larger than memory is no limit either).
pub fn shm_size(s: &str) -> Result<u64, String> {
    let n = bytes(s)?;
    rbuild_executor::check_tmpfs_size(n)?;
    Ok(n)
}

/// `--ulimit name=soft[:hard]`.
pub fn ulimit(s: &str) -> Result<String, String> {
    const NAMES: &[&str] = &[
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
    ];
    let (name, limits) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=SOFT[:HARD], got {s:?}"))?;
    if !NAMES.contains(&name) {
        return Err(format!("unknown ulimit {name:?}"));
    }
    let (soft, hard) = limits.split_once(':').unwrap_or((limits, limits));
    let soft: i64 = soft
        .parse()
        .map_err(|_| format!("invalid soft limit in {s:?}"))?;
    let hard: i64 = hard
        .parse()
        .map_err(|_| format!("invalid hard limit in {s:?}"))?;
    if soft > hard && hard != -1 {
        return Err(format!("soft limit above hard limit in {s:?}"));
    }
    Ok(s.to_string())
}

/// `--annotation [type[platform]:]key=value` (e.g. `manifest:org.opencontainers.image.title=x`).
pub fn annotation(s: &str) -> Result<String, String> {
    let (k, _) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    let key = k.rsplit_once(':').map(|(_, k)| k).unwrap_or(k);
    if key.is_empty() {
        return Err(format!("empty annotation key in {s:?}"));
    }
    Ok(s.to_string())
}

/// `--label key=value`.
pub fn label(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(s.to_string()),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// `--output`: `PATH`, `-`, or `type=…,key=value…` (buildx forms; which types work is decided
/// by the build).
pub fn output(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("empty output".into());
    }
    if s.contains('=') {
        let m = kv_spec(s)?;
        if !m.contains_key("type") {
            return Err(format!("missing type= in {s:?}"));
        }
    }
    Ok(s.to_string())
}

/// `--provenance`/`--sbom`: a boolean or `mode=…`/`generator=…` attributes.
pub fn attest_value(s: &str) -> Result<String, String> {
    match s {
        "true" | "false" | "1" | "0" => Ok(s.to_string()),
        _ => kv_spec(s).map(|_| s.to_string()),
    }
}

/// `--platform` text → platform (`Platform::parse`), with the flag's usage message.
pub(crate) fn parse_platform(s: &str) -> Result<rbuild_graph::Platform, String> {
    rbuild_graph::Platform::parse(s)
        .ok_or_else(|| format!("--platform {s:?}: expected os/arch[/variant]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_never_saturate_or_exceed_memory() {
        assert_eq!(bytes("64m").unwrap(), 64 << 20);
        assert_eq!(bytes("1.5k").unwrap(), 1536);
        for huge in ["99999999999g", "18446744073709551615", "1e30", "inf", "NaN"] {
            assert!(bytes(huge).is_err(), "{huge}");
        }
        assert_eq!(shm_size("64m").unwrap(), 64 << 20);
        assert!(shm_size("100000000g").unwrap_err().contains("memory"));
    }

    #[test]
    fn csv_quotes_protect_commas() {
        assert_eq!(
            csv_fields("a=1,\"b=2,3\",c").unwrap(),
            ["a=1", "b=2,3", "c"]
        );
        assert_eq!(csv_fields("\"src=x,\"\"y\"").unwrap(), ["src=x,\"y"]);
        assert_eq!(csv_fields("a,,\"\"").unwrap(), ["a", "", ""]);
        // encoding/csv without LazyQuotes: quotes only around a whole field.
        assert!(csv_fields("\"a=open").is_err());
        assert!(csv_fields("a=\"x,y\"").is_err());
        assert!(csv_fields("\"a\"b,c").is_err());
    }

    #[test]
    fn buildx_value_forms() {
        assert!(secret("id=tok,src=/t").is_ok());
        assert!(secret("type=env,id=TOK,env=X").is_ok());
        assert!(secret("src=/t").unwrap_err().contains("id="));
        assert!(secret("type=s3,id=a").is_err());
        assert!(ssh("default").is_ok() && ssh("gh=/a/key,/b/key").is_ok());
        assert!(ssh("=x").is_err() && ssh("a=").is_err());
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("yes"), None);
        assert_eq!(parse_bool(""), None);
        assert!(build_context("base=docker-image://alpine:3").is_ok());
        assert!(build_context("x").is_err());
        assert!(network("none").is_ok() && network("bridge").is_err());
        assert!(entitlement("network.host").is_ok() && entitlement("root").is_err());
        assert!(add_host("db:10.0.0.2").is_ok());
        assert!(add_host("db=::1").is_ok());
        assert!(add_host("gw:host-gateway").is_ok());
        assert!(add_host("db:notanip").is_err() && add_host("db").is_err());
        assert_eq!(bytes("64m").unwrap(), 64 << 20);
        assert_eq!(bytes("2g").unwrap(), 2 << 30);
        assert_eq!(bytes("512").unwrap(), 512);
        assert_eq!(bytes("1kb").unwrap(), 1024);
        assert!(bytes("lots").is_err());
        assert!(ulimit("nofile=1024:2048").is_ok() && ulimit("nproc=10").is_ok());
        assert!(ulimit("nofile=9:1").is_err() && ulimit("bogus=1").is_err());
        assert!(annotation("manifest:org.opencontainers.image.title=x").is_ok());
        assert!(annotation("index[linux/amd64]:k=v").is_ok());
        assert!(annotation("novalue").is_err());
        assert!(label("a=b").is_ok() && label("=b").is_err());
        assert!(output("out-dir").is_ok() && output("type=oci,dest=x").is_ok());
        assert!(output("dest=x").is_err());
        assert!(attest_value("mode=max").is_ok() && attest_value("false").is_ok());
    }
}
