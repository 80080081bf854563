//! sha256 digests in OCI form (`sha256:<64 lowercase hex>`): computing, validating, and a
//! `Write` and a `Read` adapter that hash and count what passes through them.

use sha2::{Digest as _, Sha256};
use std::io::{self, Read, Write};

use crate::OciError;

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Check that `d` is `sha256:` followed by 64 lowercase hex digits; returns the hex part.
pub fn digest_hex(d: &str) -> Result<&str, OciError> {
    let hex = d
        .strip_prefix("sha256:")
        .ok_or_else(|| OciError::InvalidDigest(d.to_string()))?;
    if hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(hex)
    } else {
        Err(OciError::InvalidDigest(d.to_string()))
    }
}

/// Verify `data` against an expected digest (and size when given).
pub fn verify(what: &str, data: &[u8], digest: &str, size: Option<u64>) -> Result<(), OciError> {
    if let Some(size) = size {
        if data.len() as u64 != size {
            return Err(OciError::DigestMismatch {
                what: what.to_string(),
                expected: format!("{size} bytes"),
                actual: format!("{} bytes", data.len()),
            });
        }
    }
    let actual = sha256_digest(data);
    if actual != digest {
        return Err(OciError::DigestMismatch {
            what: what.to_string(),
            expected: digest.to_string(),
            actual,
        });
    }
    Ok(())
}

/// A writer that hashes (sha256) and counts the bytes written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wrap `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    /// Finish: returns the inner writer, the digest and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        let d = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, d, self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes (sha256) and counts the bytes read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wrap `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    /// Read `inner` to its end (hashing it), then return the digest and the byte count.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        let d = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        Ok((d, self.count))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}
