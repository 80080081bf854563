//! Byte progress of blob transfers (pulls and pushes; the remote cache's imports and exports
//! use the same): a [`TransferProgress`] sink gets a [`Transfer`] for each blob as bytes move,
//! at most every [`REPORT_EVERY`] and always at the start and the end, like BuildKit's
//! per-layer `statuses` (id = blob digest, current/total bytes).

use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a running transfer is reported.
pub const REPORT_EVERY: Duration = Duration::from_millis(100);

/// What a transfer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Downloading,
    Uploading,
}

impl Action {
    /// BuildKit's status name.
    pub fn name(self) -> &'static str {
        match self {
            Action::Downloading => "downloading",
            Action::Uploading => "uploading",
        }
    }
}

/// The state of one blob's transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The blob digest.
    pub id: String,
    pub action: Action,
    /// Bytes moved so far.
    pub current: u64,
    /// Bytes in all.
    pub total: u64,
    /// The transfer finished (successfully or not).
    pub done: bool,
}

/// Receiver of transfer progress.
pub trait TransferProgress: Send + Sync {
    fn transfer(&self, t: &Transfer);
}

/// A sink that drops everything.
pub struct NoTransferProgress;

impl TransferProgress for NoTransferProgress {
    fn transfer(&self, _t: &Transfer) {}
}

/// Counts the bytes of one blob's transfer (possibly over several requests, e.g. chunks) and
/// reports them to a sink.
pub struct Meter<'a> {
    sink: &'a dyn TransferProgress,
    state: Mutex<(Transfer, Instant)>,
}

impl std::fmt::Debug for Meter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter").finish_non_exhaustive()
    }
}

impl<'a> Meter<'a> {
    /// Start a transfer of `total` bytes of `id` (reported at once, at 0).
    pub fn start(sink: &'a dyn TransferProgress, id: &str, action: Action, total: u64) -> Self {
        let t = Transfer {
            id: id.to_string(),
            action,
            current: 0,
            total,
            done: false,
        };
        sink.transfer(&t);
        Meter {
            sink,
            state: Mutex::new((t, Instant::now())),
        }
    }

    /// `n` more bytes moved.
    pub fn add(&self, n: u64) {
        if let Ok(mut g) = self.state.lock() {
            g.0.current = g.0.current.saturating_add(n);
            if g.1.elapsed() >= REPORT_EVERY {
                g.1 = Instant::now();
                self.sink.transfer(&g.0);
            }
        }
    }

    /// The transfer is over; `complete` sets the count to the total (a blob already there).
    pub fn finish(&self, complete: bool) {
        if let Ok(mut g) = self.state.lock() {
            if complete {
                g.0.current = g.0.total;
            }
            g.0.done = true;
            self.sink.transfer(&g.0);
        }
    }
}

/// A reader that counts what passes through it into a [`Meter`].
pub struct MeteredReader<'m, 'a, R> {
    inner: R,
    meter: &'m Meter<'a>,
}

impl<'m, 'a, R: Read> MeteredReader<'m, 'a, R> {
    pub fn new(inner: R, meter: &'m Meter<'a>) -> Self {
        MeteredReader { inner, meter }
    }
}

impl<R: Read> Read for MeteredReader<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.add(n as u64);
        Ok(n)
    }
}

/// A writer that counts what passes through it into a [`Meter`].
pub struct MeteredWriter<'m, 'a, W> {
    inner: W,
    meter: &'m Meter<'a>,
}

impl<'m, 'a, W: std::io::Write> MeteredWriter<'m, 'a, W> {
    pub fn new(inner: W, meter: &'m Meter<'a>) -> Self {
        MeteredWriter { inner, meter }
    }
}

impl<W: std::io::Write> std::io::Write for MeteredWriter<'_, '_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.meter.add(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Log(Mutex<Vec<Transfer>>);
    impl TransferProgress for Log {
        fn transfer(&self, t: &Transfer) {
            self.0.lock().unwrap().push(t.clone());
        }
    }

    #[test]
    fn a_metered_read_reports_start_progress_and_end() {
        let log = Log(Mutex::new(Vec::new()));
        let data = vec![7u8; 10_000];
        let meter = Meter::start(&log, "sha256:x", Action::Downloading, 10_000);
        let mut r = MeteredReader::new(&data[..], &meter);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        meter.finish(false);
        let l = log.0.lock().unwrap();
        assert_eq!(l.first().unwrap().current, 0);
        assert!(!l.first().unwrap().done);
        let last = l.last().unwrap();
        assert!(last.done && last.current == 10_000 && last.total == 10_000);
        assert_eq!(last.action.name(), "downloading");
    }
}
