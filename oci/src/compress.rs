//! Layer compression for export and push (the local store keeps layers uncompressed):
//! parallel gzip (independent 1 MiB chunks compressed on all cores and written as concatenated
//! gzip members, which every gzip reader — Go's, zlib's, `gzip -d` — reads as one stream),
//! multithreaded zstd, and decompression of either for `force-compression` re-encoding.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};

use crate::OciError;

/// Size of the independent chunks of parallel gzip.
const GZIP_CHUNK: usize = 1 << 20;

/// A layer compression algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Compression {
    /// Plain tar.
    Uncompressed,
    /// gzip (the default for registries and archives).
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// Parse `gzip`, `zstd` or `uncompressed`.
    pub fn parse(s: &str) -> Result<Compression, OciError> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "uncompressed" | "none" => Ok(Compression::Uncompressed),
            other => Err(OciError::UnsupportedCompression(format!(
                "{other:?} (expected gzip, zstd or uncompressed)"
            ))),
        }
    }

    /// The name used in options and cache keys.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Uncompressed => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// The compression a layer media type says it has (`None` for non-layer types).
    pub fn of_media_type(mt: &str) -> Option<Compression> {
        if mt.ends_with("+gzip") || mt.ends_with(".tar.gzip") {
            Some(Compression::Gzip)
        } else if mt.ends_with("+zstd") || mt.ends_with(".tar.zstd") {
            Some(Compression::Zstd)
        } else if mt.ends_with(".tar") || mt.ends_with("diff.tar") {
            Some(Compression::Uncompressed)
        } else {
            None
        }
    }

    /// Default level: gzip 6 (zlib's default), zstd 3.
    pub fn default_level(self) -> i32 {
        match self {
            Compression::Gzip => 6,
            Compression::Zstd => 3,
            Compression::Uncompressed => 0,
        }
    }
}

/// Number of worker threads to use: all cores.
pub fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Compress `input` into `out` with `c` at `level` (None: the default) on `threads` threads.
pub fn compress(
    c: Compression,
    level: Option<i32>,
    threads: usize,
    input: &mut dyn Read,
    out: &mut dyn Write,
) -> io::Result<()> {
    let level = level.unwrap_or(c.default_level());
    match c {
        Compression::Uncompressed => io::copy(input, out).map(|_| ()),
        Compression::Gzip => gzip_parallel(input, out, level.clamp(0, 9) as u32, threads),
        Compression::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(out, level)?;
            if threads > 1 {
                enc.multithread(threads as u32)?;
            }
            io::copy(input, &mut enc)?;
            enc.finish()?;
            Ok(())
        }
    }
}

/// A reader that decompresses `input` compressed with `c`.
pub fn decompressor<'a>(c: Compression, input: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::Uncompressed => Box::new(input),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(input))),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(input)?),
    })
}

fn gzip_encode(chunk: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut e = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(
            Vec::with_capacity(chunk.len() / 2 + 64),
            flate2::Compression::new(level),
        );
    e.write_all(chunk)?;
    e.finish()
}

/// Size of `n` bytes as stored deflate blocks in a gzip member: 10-byte header, 5 bytes per
/// block of at most 65535 bytes (at least one block), 8-byte trailer.
fn stored_size(n: usize) -> usize {
    18 + n + 5 * n.div_ceil(65535).max(1)
}

/// Whether a chunk is incompressible (random or already-compressed bytes: media, archives):
/// four 16 KiB windows spread over the chunk, deflated at level 1, save less than 2 % of their
/// size. Deflate at any level can only emit such bytes as stored blocks (or a little bigger),
/// so the chunk is stored without the level-`n` search — the same output size to within
/// 0.01 %, at disk speed instead of ~30 MB/s per core. A chunk with any compressible window is
/// compressed at the real level (the same kind of heuristic as zstd's and btrfs's
/// incompressibility checks).
fn incompressible(chunk: &[u8]) -> bool {
    const WINDOW: usize = 16 << 10;
    const WINDOWS: usize = 4;
    if chunk.len() < WINDOW * WINDOWS {
        return false;
    }
    let step = (chunk.len() - WINDOW) / (WINDOWS - 1);
    let (mut raw, mut packed) = (0usize, 0usize);
    for w in 0..WINDOWS {
        let window = &chunk[w * step..w * step + WINDOW];
        let mut e = flate2::write::DeflateEncoder::new(
            Vec::with_capacity(WINDOW + 64),
            flate2::Compression::fast(),
        );
        if e.write_all(window).is_err() {
            return false;
        }
        match e.finish() {
            Ok(v) => packed += v.len(),
            Err(_) => return false,
        }
        raw += WINDOW;
    }
    packed * 100 >= raw * 98
}

/// One chunk as a gzip member at `level`. Incompressible chunks (see [`incompressible`]) are
/// stored; otherwise, like zlib's per-block choice, when the compressed member comes out
/// bigger than storing the bytes, the member is re-encoded as stored blocks.
fn gzip_member(chunk: &[u8], level: u32) -> io::Result<Vec<u8>> {
    if level > 0 && incompressible(chunk) {
        return gzip_encode(chunk, 0);
    }
    let out = gzip_encode(chunk, level)?;
    if level > 0 && out.len() > stored_size(chunk.len()) {
        return gzip_encode(chunk, 0);
    }
    Ok(out)
}

fn read_chunk(input: &mut dyn Read, size: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; size];
    let n = rbuild_cache::read_full(input, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

type Job = (u64, Vec<u8>);

/// gzip `input` on `threads` threads as concatenated members of [`GZIP_CHUNK`] bytes each.
/// The output is deterministic (no names, mtime 0) and independent of the thread count.
pub fn gzip_parallel(
    input: &mut dyn Read,
    out: &mut dyn Write,
    level: u32,
    threads: usize,
) -> io::Result<()> {
    let threads = threads.max(1);
    if threads == 1 {
        let mut any = false;
        loop {
            let chunk = read_chunk(input, GZIP_CHUNK)?;
            if chunk.is_empty() && any {
                return Ok(());
            }
            out.write_all(&gzip_member(&chunk, level)?)?;
            any = true;
            if chunk.len() < GZIP_CHUNK {
                return Ok(());
            }
        }
    }
    // The calling thread reads and writes (neither side needs to be Send); workers compress.
    // At most 2 × threads chunks are in flight, so memory stays bounded.
    let (job_tx, job_rx) = channel::<Job>();
    let job_rx: Arc<Mutex<Receiver<Job>>> = Arc::new(Mutex::new(job_rx));
    let (res_tx, res_rx) = channel::<(u64, io::Result<Vec<u8>>)>();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let rx = Arc::clone(&job_rx);
            let tx = res_tx.clone();
            s.spawn(move || loop {
                let job = match rx.lock() {
                    Ok(r) => r.recv(),
                    Err(_) => return,
                };
                let Ok((i, chunk)) = job else { return };
                if tx.send((i, gzip_member(&chunk, level))).is_err() {
                    return;
                }
            });
        }
        drop(res_tx);
        let result = (|| -> io::Result<()> {
            let mut pending: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            let mut next_out = 0u64;
            let mut sent = 0u64;
            let mut eof = false;
            let mut flush =
                |pending: &mut BTreeMap<u64, Vec<u8>>, next_out: &mut u64| -> io::Result<()> {
                    while let Some(data) = pending.remove(next_out) {
                        out.write_all(&data)?;
                        *next_out += 1;
                    }
                    Ok(())
                };
            while !eof || next_out < sent {
                if !eof && sent - next_out < (threads as u64) * 2 {
                    let chunk = read_chunk(input, GZIP_CHUNK)?;
                    eof = chunk.len() < GZIP_CHUNK;
                    if chunk.is_empty() && sent > 0 {
                        continue;
                    }
                    job_tx
                        .send((sent, chunk))
                        .map_err(|_| io::Error::other("gzip workers stopped"))?;
                    sent += 1;
                    while let Ok((i, r)) = res_rx.try_recv() {
                        pending.insert(i, r?);
                    }
                } else {
                    let (i, r) = res_rx
                        .recv()
                        .map_err(|_| io::Error::other("gzip workers stopped"))?;
                    pending.insert(i, r?);
                }
                flush(&mut pending, &mut next_out)?;
            }
            Ok(())
        })();
        drop(job_tx);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        // half text-like, half pseudo-random
        let mut v = Vec::with_capacity(n);
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for i in 0..n {
            if (i / 300_000) % 2 == 0 {
                v.push(b"hello layer "[i % 12]);
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push(x as u8);
            }
        }
        v
    }

    #[test]
    fn parallel_gzip_is_standard_gzip_and_independent_of_threads() {
        let input = data(3 * GZIP_CHUNK + 12345);
        let mut one = Vec::new();
        gzip_parallel(&mut &input[..], &mut one, 6, 1).unwrap();
        let mut four = Vec::new();
        gzip_parallel(&mut &input[..], &mut four, 6, 4).unwrap();
        assert_eq!(one, four);
        assert!(one.len() < input.len());
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&one[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, input);
        // the system gzip reads it as one stream
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("x.gz"), &four).unwrap();
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(t.path().join("x.gz"))
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, input);
    }

    #[test]
    fn random_chunks_are_stored_not_expanded() {
        let mut v = Vec::with_capacity(GZIP_CHUNK);
        let mut x: u64 = 0x2545f4914f6cdd1d;
        while v.len() < GZIP_CHUNK {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        let m = gzip_member(&v, 6).unwrap();
        assert!(
            m.len() <= v.len() + v.len() / 1000,
            "{} > {}",
            m.len(),
            v.len()
        );
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&m[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn a_chunk_with_compressible_parts_is_compressed() {
        // Random first half, text second half: one window finds the text, so the chunk is
        // compressed at the real level (much smaller than stored).
        let mut v = Vec::with_capacity(GZIP_CHUNK);
        let mut x: u64 = 0x9e3779b97f4a7c15;
        while v.len() < GZIP_CHUNK / 2 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        while v.len() < GZIP_CHUNK {
            v.extend_from_slice(b"the quick brown fox jumps over the lazy dog\n");
        }
        assert!(!incompressible(&v));
        let m = gzip_member(&v, 6).unwrap();
        assert!(m.len() < v.len() * 6 / 10, "{} bytes", m.len());
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&m[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn empty_input_is_a_valid_gzip_and_zstd_round_trips() {
        let mut e = Vec::new();
        gzip_parallel(&mut &b""[..], &mut e, 6, 2).unwrap();
        let mut back = Vec::new();
        decompressor(Compression::Gzip, &e[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
        let input = data(2 * GZIP_CHUNK);
        let mut z = Vec::new();
        compress(Compression::Zstd, None, 2, &mut &input[..], &mut z).unwrap();
        assert!(z.len() < input.len());
        let mut back = Vec::new();
        decompressor(Compression::Zstd, &z[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, input);
    }

    #[test]
    fn media_types_and_names() {
        use crate::types::media_types as mt;
        assert_eq!(
            Compression::of_media_type(mt::OCI_LAYER_GZIP),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::of_media_type(mt::DOCKER_LAYER_GZIP),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::of_media_type(mt::OCI_LAYER_ZSTD),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::of_media_type(mt::OCI_LAYER_TAR),
            Some(Compression::Uncompressed)
        );
        assert_eq!(Compression::of_media_type(mt::OCI_CONFIG), None);
        assert!(Compression::parse("brotli").is_err());
        assert_eq!(Compression::parse("zstd").unwrap().name(), "zstd");
    }
}
