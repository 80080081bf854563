//! The default network of a RUN step: an isolated network namespace with outbound access
//! through a user-space NAT (`slirp4netns`), never the host's loopback.
//!
//! A namespace is held open by a *holder*: a re-exec of the helper binary with [`NETNS_ARG`]
//! that unshares a network namespace, brings `lo` up, reports `ready` on stdout and then blocks
//! reading its stdin. `slirp4netns --configure --disable-host-loopback --disable-dns
//! --enable-sandbox --enable-seccomp` attaches a tap device (10.0.2.100/24, gateway 10.0.2.2)
//! to it. Both get the read end of one *life pipe* whose write end only this process holds
//! (close-on-exec): the holder's stdin and slirp4netns's `--exit-fd`. When rbuild exits —
//! normally, by a signal or `kill -9` — the pipe closes and both end; nothing else keeps them
//! (no bind mount of the namespace, no host firewall or sysctl change).
//!
//! [`NetPool`] keeps the namespaces of one executor (one build) and hands one to each running
//! step: created on first use, reused by later steps, more made when steps run at the same
//! time. A step with every capability (`--security=insecure`) could reconfigure its namespace,
//! so its namespace is thrown away afterwards, as is one whose holder or slirp4netns died. The
//! step's processes are all dead when it ends (pid namespace), so no socket or process of one
//! step survives into the next; without `CAP_NET_ADMIN` a step cannot change interfaces, routes
//! or netfilter, and `/proc/sys` is read-only. Steps here also lose `CAP_NET_RAW`
//! ([`step_caps`]): raw frames could make slirp4netns connect to the host's 127.0.0.1.
//!
//! `/etc/resolv.conf` of such a step lists the host's non-local name servers (reached through
//! the NAT, like Docker's bridge network), not slirp's forwarder (`--disable-dns`): the step
//! must not depend on a path to a host resolver on 127.0.0.x (systemd-resolved, dnsmasq).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::pipe::{pipe_with, PipeFlags};
use rustix::thread::{CapabilitySet, UnshareFlags};

use crate::error::ExecutorError;
use crate::{sys, Helper, Network};

/// Last argument that makes the helper binary hold a network namespace (see the module doc).
pub const NETNS_ARG: &str = "__rbuild-netns";

/// fd number of the life pipe in slirp4netns (`--exit-fd`).
const EXIT_FD: i32 = 3;
/// fd number of slirp4netns's readiness pipe (`--ready-fd`).
const READY_FD: i32 = 4;
/// How long slirp4netns may take to configure the namespace.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The NAT program.
const SLIRP: &str = "slirp4netns";

/// What to do when no isolated network can be made.
const FIX: &str = "install slirp4netns (Debian/Ubuntu: apt-get install slirp4netns; \
                   Fedora: dnf install slirp4netns), or give the build the host's network \
                   explicitly with --network=host (or no network with --network=none)";
/// The alternatives when slirp4netns is there but fails.
const OR_HOST: &str = "or give the build the host's network explicitly with --network=host \
                       (or no network with --network=none)";

/// Entry of the holder process (called by [`crate::helper_main`] when the last argument is
/// [`NETNS_ARG`]). Never returns.
pub(crate) fn holder_main() -> ! {
    let code = match hold() {
        Ok(()) => 0,
        Err(e) => {
            let mut out = std::io::stdout();
            let _ = writeln!(out, "error: {e}");
            let _ = out.flush();
            1
        }
    };
    std::process::exit(code)
}

fn hold() -> Result<(), ExecutorError> {
    sys::unshare(UnshareFlags::NEWNET)
        .map_err(|e| ExecutorError::sys("unshare(CLONE_NEWNET)", "", e))?;
    sys::loopback_up().map_err(|e| ExecutorError::sys("bring loopback up", "lo", e))?;
    // Steps here have no CAP_NET_RAW (see `step_caps`): let every group use ICMP datagram
    // sockets (ping), as Docker does. Best effort (a kernel without the knob).
    let _ = std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647");
    // The terminal's Ctrl-C reaches the whole process group: rbuild decides when we end.
    sys::ignore_terminal_interrupts();
    let mut out = std::io::stdout();
    writeln!(out, "ready")
        .and_then(|_| out.flush())
        .map_err(|e| ExecutorError::sys("report ready", "", e))?;
    // Hold the namespace until rbuild closes the life pipe (exits or is killed).
    let mut buf = [0u8; 64];
    let mut stdin = std::io::stdin();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Ok(()),
        }
    }
}

/// The capabilities of a (non-insecure) step on `network`: Docker's default set, without
/// `CAP_NET_RAW` on the isolated network. A user-space NAT is not a kernel: slirp4netns
/// connects to whatever address a TCP SYN names, and a raw frame written to `tap0` (packet
/// socket, or a raw IP socket with `IP_HDRINCL`) can name 127.0.0.1 — past
/// `--disable-host-loopback`, which only guards slirp's 10.0.2.2 alias. (A veth into the host
/// kernel, BuildKit's bridge, drops such martian packets.) Ping still works through ICMP
/// datagram sockets (`ping_group_range`, set by the holder).
pub(crate) fn step_caps(network: Network) -> CapabilitySet {
    let caps = crate::sandbox::default_caps();
    match network {
        Network::Isolated => caps - CapabilitySet::NET_RAW,
        Network::Host | Network::None => caps,
    }
}

/// One isolated network namespace with its NAT.
#[derive(Debug)]
struct Netns {
    holder: Child,
    slirp: Child,
    /// Write end of the life pipe: dropping it ends the holder and slirp4netns.
    life: Option<OwnedFd>,
}

impl Netns {
    /// `/proc/<holder>/ns/net` (the holder is never waited for while this lives, so its pid
    /// cannot be reused).
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.holder.id()))
    }

    /// Both processes still run.
    fn alive(&mut self) -> bool {
        matches!(self.holder.try_wait(), Ok(None)) && matches!(self.slirp.try_wait(), Ok(None))
    }

    fn create(helper: &Helper) -> Result<Netns, ExecutorError> {
        let slirp = crate::find_in_path(SLIRP).ok_or_else(|| {
            ExecutorError::Setup(format!(
                "the default network of RUN steps is an isolated network namespace with \
                 outbound access, which needs {SLIRP}, not found in PATH: {FIX}"
            ))
        })?;
        let (life_r, life_w) = pipe_with(PipeFlags::CLOEXEC)
            .map_err(|e| ExecutorError::sys("pipe (network namespace)", "", e))?;
        let holder_stdin = life_r
            .try_clone()
            .map_err(|e| ExecutorError::sys("dup (network namespace)", "", e))?;
        let mut holder = Command::new(&helper.program)
            .args(&helper.args)
            .arg(NETNS_ARG)
            .stdin(Stdio::from(holder_stdin))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| ExecutorError::SpawnHelper {
                program: helper.program.clone(),
                source: e,
            })?;
        let mut ns = NetnsBuilder {
            holder: Some(holder_ready(&mut holder).map(|()| holder)?),
            life: Some(life_w),
        };
        let holder_pid = ns.holder_pid();
        let (ready_r, ready_w) = pipe_with(PipeFlags::CLOEXEC)
            .map_err(|e| ExecutorError::sys("pipe (slirp4netns ready)", "", e))?;
        // Above the target numbers, so that placing one cannot overwrite the other.
        let high = |fd: &OwnedFd| {
            rustix::io::fcntl_dupfd_cloexec(fd, 10)
                .map_err(|e| ExecutorError::sys("dup (slirp4netns fds)", "", e))
        };
        let (life_r, ready_w) = (high(&life_r)?, high(&ready_w)?);
        let mut cmd = Command::new(&slirp);
        cmd.args([
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            "--disable-dns",
            "--enable-sandbox",
            "--enable-seccomp",
        ])
        .arg(format!("--exit-fd={EXIT_FD}"))
        .arg(format!("--ready-fd={READY_FD}"))
        .arg(holder_pid.to_string())
        .arg("tap0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        sys::pass_fd_to_child(&mut cmd, life_r.as_raw_fd(), EXIT_FD);
        sys::pass_fd_to_child(&mut cmd, ready_w.as_raw_fd(), READY_FD);
        let mut child = cmd
            .spawn()
            .map_err(|e| ExecutorError::sys("run", &slirp, e))?;
        drop(cmd);
        drop(ready_w);
        drop(life_r);
        if let Err(e) = slirp_ready(&mut child, ready_r) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(Netns {
            holder: ns
                .holder
                .take()
                .ok_or_else(|| ExecutorError::Setup("holder".into()))?,
            slirp: child,
            life: ns.life.take(),
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.life = None;
        for c in [&mut self.holder, &mut self.slirp] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A holder being set up (killed if setup fails).
struct NetnsBuilder {
    holder: Option<Child>,
    life: Option<OwnedFd>,
}

impl NetnsBuilder {
    fn holder_pid(&self) -> u32 {
        self.holder.as_ref().map(|h| h.id()).unwrap_or(0)
    }
}

impl Drop for NetnsBuilder {
    fn drop(&mut self) {
        self.life = None;
        if let Some(h) = &mut self.holder {
            let _ = h.kill();
            let _ = h.wait();
        }
    }
}

/// Wait for the holder's `ready` line.
fn holder_ready(holder: &mut Child) -> Result<(), ExecutorError> {
    let mut line = String::new();
    if let Some(out) = holder.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if line.trim() == "ready" {
        return Ok(());
    }
    let _ = holder.kill();
    let _ = holder.wait();
    let why = line.trim().strip_prefix("error: ").unwrap_or(line.trim());
    Err(ExecutorError::Setup(format!(
        "cannot create the isolated network namespace of RUN steps: {}; {OR_HOST}",
        if why.is_empty() {
            "the holder process ended"
        } else {
            why
        }
    )))
}

/// Wait until slirp4netns has configured the namespace (one byte on the ready pipe), or fail
/// with its error output.
fn slirp_ready(child: &mut Child, ready: OwnedFd) -> Result<(), ExecutorError> {
    let mut stderr = child.stderr.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(ready);
        let mut b = [0u8; 1];
        let _ = tx.send(matches!(f.read(&mut b), Ok(1)));
    });
    let start = Instant::now();
    let ok = loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(ok) => break ok,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break false,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if start.elapsed() > READY_TIMEOUT {
                    break false;
                }
            }
        }
    };
    if ok {
        // slirp4netns keeps writing to stderr (warnings): never block it on a full pipe.
        if let Some(mut e) = stderr {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut e, &mut std::io::sink());
            });
        }
        return Ok(());
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut text = String::new();
    if let Some(e) = stderr.as_mut() {
        let _ = e.read_to_string(&mut text);
    }
    let text: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("WARNING"))
        .collect();
    let hint = if text.iter().any(|l| l.contains("/dev/net/tun")) {
        "; /dev/net/tun must be usable (mode 0666, as distributions ship it, for rootless \
         builds)"
    } else {
        ""
    };
    Err(ExecutorError::Setup(format!(
        "cannot set up the isolated network of RUN steps: {SLIRP} failed{}{hint}; {OR_HOST}",
        if text.is_empty() {
            String::new()
        } else {
            format!(" ({})", text.join("; "))
        }
    )))
}

/// The isolated network namespaces of one executor (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct NetPool {
    idle: Mutex<Vec<Netns>>,
}

/// A namespace lent to one step; back to the pool on [`NetLease::release`], thrown away
/// otherwise.
#[derive(Debug)]
pub(crate) struct NetLease<'a> {
    pool: &'a NetPool,
    ns: Option<Netns>,
}

impl NetLease<'_> {
    /// The namespace's path for `setns`/runc.
    pub(crate) fn path(&self) -> PathBuf {
        self.ns.as_ref().map(Netns::path).unwrap_or_default()
    }

    /// The step is over: reuse the namespace unless `dirty` (the step could reconfigure it) or
    /// its processes died.
    pub(crate) fn release(mut self, dirty: bool) {
        if let Some(mut ns) = self.ns.take() {
            if !dirty && ns.alive() {
                if let Ok(mut idle) = self.pool.idle.lock() {
                    idle.push(ns);
                }
            }
        }
    }
}

impl NetPool {
    /// A namespace for one step: an idle one, or a new one.
    pub(crate) fn acquire(&self, helper: &Helper) -> Result<NetLease<'_>, ExecutorError> {
        loop {
            let next = self.idle.lock().ok().and_then(|mut v| v.pop());
            match next {
                Some(mut ns) => {
                    if ns.alive() {
                        return Ok(NetLease {
                            pool: self,
                            ns: Some(ns),
                        });
                    }
                }
                None => break,
            }
        }
        Ok(NetLease {
            pool: self,
            ns: Some(Netns::create(helper)?),
        })
    }
}
