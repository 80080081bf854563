//! SSH agent forwarding for `RUN --mount=type=ssh`: a per-step proxy socket with the mount's
//! `mode`, `uid` and `gid`, forwarding every connection to the client's agent socket.
//!
//! BuildKit never exposes the client's socket itself: it listens on a socket of its own inside
//! the step (owner and mode from the mount options, default 0600 root:root) and relays the
//! agent protocol. rbuild does the same with a listening socket in a private temporary
//! directory, bound at the mount target by the sandbox; one thread accepts, two threads per
//! connection copy bytes each way. The proxy stops when the step's mounts are dropped.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A running proxy; dropping it stops accepting (open connections end with the step).
pub(crate) struct SshProxy {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl SshProxy {
    /// Listen on `dir/agent.sock` with `mode`/`uid`/`gid`, relaying to `agent`.
    pub(crate) fn start(
        agent: &Path,
        dir: &Path,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<SshProxy, String> {
        // Fail early (and clearly) when the client's agent is not there.
        UnixStream::connect(agent)
            .map_err(|e| format!("ssh agent socket {}: {e}", agent.display()))?;
        let socket = dir.join("agent.sock");
        let listener = UnixListener::bind(&socket)
            .map_err(|e| format!("ssh proxy socket {}: {e}", socket.display()))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| format!("chmod {}: {e}", socket.display()))?;
        rustix::fs::chown(
            &socket,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .map_err(|e| format!("chown {}: {e}", socket.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let agent = agent.to_path_buf();
        let flag = stop.clone();
        let acceptor = std::thread::Builder::new()
            .name("ssh-proxy".into())
            .spawn(move || accept_loop(listener, agent, flag))
            .map_err(|e| format!("ssh proxy thread: {e}"))?;
        Ok(SshProxy {
            socket,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// The socket to bind at the mount target.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for SshProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept; it sees the flag and returns. Should the wake-up fail,
        // the thread is left detached rather than blocking the step's teardown.
        let woke = UnixStream::connect(&self.socket).is_ok();
        if let Some(t) = self.acceptor.take() {
            if woke {
                let _ = t.join();
            }
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn accept_loop(listener: UnixListener, agent: PathBuf, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = conn else { continue };
        let Ok(upstream) = UnixStream::connect(&agent) else {
            // The agent went away: the client sees its connection closed.
            continue;
        };
        let _ = relay(client, upstream);
    }
}

/// Copy both directions on two detached threads; each half-closes its write side at EOF.
fn relay(a: UnixStream, b: UnixStream) -> io::Result<()> {
    let (a2, b2) = (a.try_clone()?, b.try_clone()?);
    pipe(a, b)?;
    pipe(b2, a2)?;
    Ok(())
}

fn pipe(mut from: UnixStream, mut to: UnixStream) -> io::Result<()> {
    std::thread::Builder::new()
        .name("ssh-relay".into())
        .spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::MetadataExt;

    /// A fake agent answering every line with `agent:<line>`.
    fn fake_agent(path: &Path) {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            // (The proxy's start-up probe connects and hangs up: errors are ignored.)
            for mut c in l.incoming().flatten() {
                let mut line = String::new();
                let Ok(reader) = c.try_clone() else { continue };
                if BufReader::new(reader).read_line(&mut line).is_ok() && !line.is_empty() {
                    let _ = c.write_all(format!("agent:{line}").as_bytes());
                }
            }
        });
    }

    #[test]
    fn relays_each_connection_and_applies_mode_and_owner() {
        let d = tempfile::tempdir().unwrap();
        let agent = d.path().join("real.sock");
        fake_agent(&agent);
        let pd = d.path().join("p");
        std::fs::create_dir(&pd).unwrap();
        let proxy = SshProxy::start(&agent, &pd, 0o640, 1234, 4321).unwrap();
        let md = std::fs::metadata(proxy.socket()).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o640);
        assert_eq!((md.uid(), md.gid()), (1234, 4321));
        for n in 0..3 {
            let mut c = UnixStream::connect(proxy.socket()).unwrap();
            c.write_all(format!("hello {n}\n").as_bytes()).unwrap();
            let mut reply = String::new();
            BufReader::new(c).read_line(&mut reply).unwrap();
            assert_eq!(reply, format!("agent:hello {n}\n"));
        }
        let sock = proxy.socket().to_path_buf();
        drop(proxy);
        assert!(!sock.exists());
        assert!(UnixStream::connect(&sock).is_err());
    }

    #[test]
    fn a_missing_agent_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let e = SshProxy::start(&d.path().join("nope.sock"), d.path(), 0o600, 0, 0)
            .err()
            .unwrap();
        assert!(e.contains("ssh agent socket"), "{e}");
    }
}
