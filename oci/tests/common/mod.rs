//! Test helpers: the local test registry (started by .ci/setup.sh) and a tiny HTTP server.
#![allow(dead_code)]

pub mod tars;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};

pub const REG: &str = "127.0.0.1:5055";

/// Make sure the registry answers; run the idempotent setup script otherwise. Fails loudly.
pub fn ensure_registry() {
    let ok = || {
        ureq::get(format!("http://{REG}/v2/library/busybox/tags/list"))
            .call()
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    };
    if ok() {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/setup.sh");
    let st = Command::new("bash")
        .arg(script)
        .status()
        .expect("run .ci/setup.sh");
    assert!(st.success(), ".ci/setup.sh failed");
    assert!(
        ok(),
        "registry {REG} still not answering after .ci/setup.sh"
    );
}

pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers: vec![],
            body: body.into(),
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

/// A tiny HTTP/1.1 server on 127.0.0.1 (one thread, connection: close). Returns its address and
/// the log of requests seen.
pub fn serve(
    handler: impl Fn(&Request, &str) -> Response + Send + 'static,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    let addr2 = addr.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            let mut headers = vec![];
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.trim_end().split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            let req = Request {
                method,
                path,
                headers,
            };
            log2.lock().unwrap().push(format!(
                "{} {} auth={}",
                req.method,
                req.path,
                req.header("authorization").unwrap_or("-")
            ));
            let resp = handler(&req, &addr2);
            let mut out = format!(
                "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                resp.status,
                resp.body.len()
            );
            for (k, v) in &resp.headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            let _ = stream.write_all(out.as_bytes());
            let _ = stream.write_all(&resp.body);
            let _ = stream.flush();
        }
    });
    (addr, log)
}

pub fn sha256(data: &[u8]) -> String {
    rbuild_oci::digest::sha256_digest(data)
}
