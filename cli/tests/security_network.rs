//! Network isolation of RUN steps (issue 11, item 7): the default network is an isolated
//! namespace with outbound access that cannot reach the host's loopback; `--network=host` is an
//! explicit opt-in (`RUN --network=host` only with `--allow network.host`); `--network=none`
//! reaches nothing; no NAT helper outlives rbuild, even after `kill -9`.
//!
//! Traffic never leaves this machine: each test runs the rbuild under test inside a network
//! namespace of its own (`ip netns add`) with `lo` and a dummy interface carrying TEST-NET
//! 192.0.2.1/24, where this process (threads that joined the namespace) serves TCP on
//! 192.0.2.1:7001 (the "outside world"), on that namespace's 127.0.0.1:7002 (the "host's
//! loopback" a RUN must not reach) and a DNS stub on UDP 192.0.2.1:53 (the name server of the
//! `/etc/resolv.conf` rbuild sees there). Every combination of runtime
//! (builtin, runc) and user (root, rootless `rbuild-test`) runs; anything missing fails loudly.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestUser, REGISTRY};

/// The tests count processes by an environment marker: one build at a time in this file.
static SERIAL: Mutex<()> = Mutex::new(());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

const EXT: &str = "192.0.2.1:7001";
const LO: &str = "127.0.0.1:7002";

/// A network namespace with the test servers.
struct TestNet {
    name: String,
    /// DNS queries the stub on 192.0.2.1 received.
    dns_queries: Arc<Mutex<Vec<Vec<u8>>>>,
    /// DNS queries a stub on the namespace's 127.0.0.1:53 received (a host-local resolver).
    lo_dns_queries: Arc<Mutex<Vec<Vec<u8>>>>,
    /// The namespace's resolv.conf (bound over `/etc/resolv.conf` for the commands run in it).
    resolv: PathBuf,
}

/// `ip netns add NAME` with `lo` up. iproute2 makes /run/netns a shared mount point on first
/// use; when that races with another `ip netns add` (parallel tests, other test runs), the new
/// namespace's bind mount can land under the mount made by the other and `ip -n` then fails
/// with EINVAL. That is the test harness's environment, not rbuild: make the namespace again.
fn add_netns(name: &str) {
    for attempt in 0..5 {
        ip(&["netns", "add", name]);
        let up = Command::new("ip")
            .args(["-n", name, "link", "set", "lo", "up"])
            .output()
            .unwrap();
        if up.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&up.stderr).into_owned();
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        assert!(
            err.contains("Invalid argument") && attempt < 4,
            "ip -n {name} link set lo up: {err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestNet {
    /// A namespace whose `/etc/resolv.conf` is `resolv`.
    fn new(resolv: &str) -> TestNet {
        common::require_tools(&["ip", "slirp4netns", "setpriv"]);
        let name = format!(
            "rbnet-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        add_netns(&name);
        let net = TestNet {
            name: name.clone(),
            dns_queries: Arc::default(),
            lo_dns_queries: Arc::default(),
            resolv: std::env::temp_dir().join(format!("{name}.resolv.conf")),
        };
        // A veth pair (both ends inside: `dummy` is not built into every kernel).
        ip(&[
            "-n", &name, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
        ]);
        ip(&["-n", &name, "addr", "add", "192.0.2.1/24", "dev", "v0"]);
        ip(&["-n", &name, "link", "set", "v0", "up"]);
        ip(&["-n", &name, "link", "set", "v1", "up"]);
        std::fs::write(&net.resolv, resolv).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let ns_path = format!("/run/netns/{name}");
        let queries = net.dns_queries.clone();
        let lo_queries = net.lo_dns_queries.clone();
        std::thread::spawn(move || {
            // Network namespaces are per thread: these sockets live in the test namespace.
            let ns = std::fs::File::open(&ns_path).unwrap();
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap();
            let ext = TcpListener::bind(EXT).unwrap();
            let lo = TcpListener::bind(LO).unwrap();
            let dns = UdpSocket::bind("192.0.2.1:53").unwrap();
            let lo_dns = UdpSocket::bind("127.0.0.1:53").unwrap();
            tx.send(()).unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while let Ok((n, _)) = lo_dns.recv_from(&mut buf) {
                    lo_queries.lock().unwrap().push(buf[..n].to_vec());
                }
            });
            for (l, answer) in [(ext, "EXT-OK\n"), (lo, "LO-OK\n")] {
                std::thread::spawn(move || {
                    for mut c in l.incoming().flatten() {
                        let _ = c.write_all(answer.as_bytes());
                    }
                });
            }
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = dns.recv_from(&mut buf) {
                queries.lock().unwrap().push(buf[..n].to_vec());
                // The query back as an answer: QR set, NXDOMAIN.
                if n >= 12 {
                    let mut a = buf[..n].to_vec();
                    a[2] |= 0x80;
                    a[3] = 0x83;
                    let _ = dns.send_to(&a, from);
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("test servers did not start");
        net
    }

    /// `cmd` run inside the namespace (only its network namespace, so that runc still finds
    /// the cgroup mounts), with the namespace's `/etc/resolv.conf` bound in a mount namespace
    /// of its own. The same pid all the way (every wrapper execs the next).
    fn wrap(&self, cmd: &Command) -> Command {
        let mut prefix: Vec<std::ffi::OsString> =
            vec![format!("--net=/run/netns/{}", self.name).into()];
        prefix.extend(
            [
                "--",
                "unshare",
                "-m",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"",
            ]
            .map(Into::into),
        );
        prefix.push(self.resolv.clone().into());
        common::wrapped("nsenter", prefix, cmd)
    }

    /// Processes whose network namespace is the test namespace (slirp4netns runs there).
    fn pids(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_file(&self.resolv);
    }
}

/// Who runs rbuild.
#[derive(Clone, Copy, Debug)]
enum Who {
    Root,
    /// `rbuild-test`: subordinate id ranges.
    Rootless,
    /// `rbuild-nosub`: a single-id map.
    RootlessSingle,
}

/// A project run by `who` with `runtime` inside a test namespace.
struct Case {
    who: Who,
    runtime: &'static str,
    user: Option<TestUser>,
    dir: tempfile::TempDir,
    store: tempfile::TempDir,
    net: TestNet,
    mark: String,
}

impl Case {
    fn new(who: Who, runtime: &'static str) -> Case {
        Case::with_resolv(who, runtime, "nameserver 192.0.2.1\n")
    }

    fn with_resolv(who: Who, runtime: &'static str, resolv: &str) -> Case {
        common::require_env();
        if runtime == "runc" {
            common::require_tools(&["runc"]);
        }
        let user = match who {
            Who::Root => None,
            Who::Rootless => Some(common::test_user(common::RANGED_USER)),
            Who::RootlessSingle => Some(common::test_user(common::SINGLE_USER)),
        };
        let c = Case {
            who,
            runtime,
            user,
            dir: tempfile::tempdir().unwrap(),
            store: tempfile::tempdir().unwrap(),
            net: TestNet::new(resolv),
            mark: format!(
                "{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::SeqCst)
            ),
        };
        if let Some(u) = &c.user {
            common::open_up(c.dir.path());
            u.own(c.store.path());
        }
        // Resolve and pull busybox from the registry on the real 127.0.0.1 once: the builds in
        // the test namespace use the store's copy (no registry request without --pull).
        c.file("Dockerfile", "FROM busybox\n");
        let pulled = c.run(c.cmd(&["build", "."]), false);
        assert!(pulled.status.success(), "pull: {}", text(&pulled));
        c
    }

    fn file(&self, rel: &str, content: &str) {
        std::fs::write(self.dir.path().join(rel), content).unwrap();
        if self.user.is_some() {
            common::open_up(self.dir.path());
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
        c.args(args)
            .env("RBUILD_ROOT", self.store.path())
            .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
            .env("RBUILD_PROGRESS", "plain")
            .env("RBUILD_RUNTIME", self.runtime)
            .env("RBUILD_NETTEST_MARK", &self.mark)
            .current_dir(self.dir.path());
        c
    }

    /// `cmd` as the case's user, inside the test namespace when `isolated`.
    fn command(&self, cmd: Command, isolated: bool) -> Command {
        let c = match &self.user {
            Some(u) => u.wrap(&cmd),
            None => cmd,
        };
        if isolated {
            self.net.wrap(&c)
        } else {
            c
        }
    }

    fn run(&self, cmd: Command, isolated: bool) -> std::process::Output {
        self.command(cmd, isolated).output().unwrap()
    }

    /// `rbuild build --no-cache ARGS… .` in the test namespace with `dockerfile`.
    fn build(&self, dockerfile: &str, args: &[&str]) -> std::process::Output {
        self.file("Dockerfile", dockerfile);
        let mut a = vec!["build", "--no-cache"];
        a.extend_from_slice(args);
        a.push(".");
        let out = self.run(self.cmd(&a), true);
        self.assert_no_leftovers();
        out
    }

    /// Processes of this case's builds still alive (the marker is in their environment).
    fn marked(&self) -> Vec<String> {
        let needle = format!("RBUILD_NETTEST_MARK={}", self.mark);
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(env) = std::fs::read(e.path().join("environ")) else {
                continue;
            };
            if env.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
                let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                // A zombie has an empty command line: it is gone, only not reaped yet.
                if !cmdline.trim().is_empty() {
                    found.push(format!("{} {cmdline}", e.file_name().to_string_lossy()));
                }
            }
        }
        found
    }

    /// After rbuild ended: no holder, no slirp4netns, nothing in the test namespace.
    fn assert_no_leftovers(&self) {
        let start = Instant::now();
        loop {
            let left = self.marked();
            let pids = self.net.pids();
            if left.is_empty() && pids.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{:?}/{}: processes left behind: {left:?}; in the test namespace: {pids}",
                self.who,
                self.runtime
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One RUN that probes every target and prints one line per probe (never fails).
const PROBE: &str = r#"FROM busybox
RUN for t in 192.0.2.1:7001 127.0.0.1:7002 10.0.2.2:7002 10.0.2.3:7002 10.0.2.2:7001 10.0.2.2:53; do echo "probe $t: $(echo | nc -w 3 ${t%:*} ${t#*:} 2>&1 | tr '\n' ' ')"; done; echo "resolv: $(grep nameserver /etc/resolv.conf | tr '\n' ' ')"; echo "dns: $(nslookup -timeout=3 probe.rbuild.test 2>&1 | tr '\n' ' ')"
"#;

/// The probe lines of a build's output: target → what it answered.
fn probes(out: &std::process::Output) -> Vec<(String, String)> {
    let all = text(out);
    all.lines()
        .filter_map(|l| l.split_once("probe ").map(|(_, r)| r))
        .filter_map(|r| r.split_once(": "))
        .filter(|(t, _)| !t.contains(' '))
        .map(|(t, a)| (t.to_string(), a.trim().to_string()))
        .collect()
}

fn answer<'a>(p: &'a [(String, String)], target: &str) -> &'a str {
    p.iter()
        .find(|(t, _)| t == target)
        .map(|(_, a)| a.as_str())
        .unwrap_or_else(|| panic!("no probe of {target} in {p:?}"))
}

fn check(who: Who, runtime: &'static str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let case = Case::new(who, runtime);
    let ctx = format!("{who:?}/{runtime}");

    // Default: outbound works, the namespace's (= the host's) loopback does not.
    let out = case.build(PROBE, &[]);
    assert!(out.status.success(), "{ctx}: {}", text(&out));
    let p = probes(&out);
    assert_eq!(answer(&p, EXT), "EXT-OK", "{ctx}: outbound: {}", text(&out));
    for t in [LO, "10.0.2.2:7002", "10.0.2.3:7002"] {
        let a = answer(&p, t);
        assert!(
            !a.contains("LO-OK") && a.contains("nc: can't connect"),
            "{ctx}: the default network reached the host's loopback through {t}: {a}"
        );
    }
    // slirp's host alias reaches nothing on the host at all
    for t in ["10.0.2.2:7001", "10.0.2.2:53"] {
        assert!(answer(&p, t).contains("nc: can't connect"), "{ctx}: {t}");
    }
    let all = text(&out);
    assert!(
        all.contains("resolv: nameserver 192.0.2.1"),
        "{ctx}: resolv.conf: {all}"
    );
    assert!(all.contains("NXDOMAIN"), "{ctx}: no DNS answer: {all}");
    assert!(
        case.net
            .dns_queries
            .lock()
            .unwrap()
            .iter()
            .any(|q| q.windows(5).any(|w| w == b"probe")),
        "{ctx}: the name server got no query"
    );

    // Raw frames on tap0 could name 127.0.0.1 and make slirp4netns connect there (it does:
    // see docs/sandbox.md): no packet or raw IP socket on the default network.
    let raw = "FROM busybox\nRUN grep -E '^Cap(Eff|Bnd)' /proc/self/status; \
               arping -c 1 -w 1 -I tap0 10.0.2.2 2>&1 | tail -1; \
               ping -c 1 -W 1 127.0.0.1 2>&1 | tail -1; true\n";
    let out = case.build(raw, &[]);
    let all = text(&out);
    assert!(
        all.contains("CapEff:\t00000000a80405fb") && all.contains("CapBnd:\t00000000a80405fb"),
        "{ctx}: CAP_NET_RAW on the default network: {all}"
    );
    assert!(
        all.contains("arping: socket: Operation not permitted")
            && all.contains("ping: permission denied"),
        "{ctx}: raw sockets on the default network: {all}"
    );

    // --network=default is the same
    let out = case.build(PROBE, &["--network=default"]);
    let p = probes(&out);
    assert_eq!(answer(&p, EXT), "EXT-OK", "{ctx}: {}", text(&out));
    assert!(!answer(&p, LO).contains("LO-OK"), "{ctx}");

    // --network=host: the explicit opt-in reaches the host's loopback
    let out = case.build(PROBE, &["--network=host"]);
    assert!(out.status.success(), "{ctx}: {}", text(&out));
    let p = probes(&out);
    assert_eq!(answer(&p, EXT), "EXT-OK", "{ctx}: {}", text(&out));
    assert_eq!(answer(&p, LO), "LO-OK", "{ctx}: {}", text(&out));

    // --network=none: nothing
    let out = case.build(PROBE, &["--network=none"]);
    assert!(out.status.success(), "{ctx}: {}", text(&out));
    let p = probes(&out);
    for t in [EXT, LO, "10.0.2.2:7002"] {
        let a = answer(&p, t);
        assert!(
            a.contains("nc: can't connect") || a.contains("unreachable"),
            "{ctx}: --network=none reached {t}: {a}"
        );
    }

    // RUN --network=host needs the entitlement
    let host_run = "FROM busybox\nRUN --network=host echo | nc -w 3 127.0.0.1 7002\n";
    let out = case.build(host_run, &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{ctx}: {all}");
    assert!(
        all.contains("--allow network.host") && all.contains("Dockerfile:2"),
        "{ctx}: {all}"
    );
    assert!(!all.contains("LO-OK"), "{ctx}: the step ran: {all}");
    let out = case.build(host_run, &["--allow", "network.host"]);
    assert!(
        out.status.success() && text(&out).contains("LO-OK"),
        "{ctx}: {}",
        text(&out)
    );
    assert_eq!(case.net.pids(), "");

    kill_9_leaves_no_nat_helper(&case, &ctx);
}

/// `kill -9` of rbuild while a step runs on the default network: its holder and slirp4netns
/// end with it.
fn kill_9_leaves_no_nat_helper(case: &Case, ctx: &str) {
    case.file(
        "Dockerfile",
        "FROM busybox\nRUN echo \"step-$((6*7))\"; sleep 60\n",
    );
    let mut child = case
        .command(case.cmd(&["build", "--no-cache", "."]), true)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut seen = String::new();
    let mut err = child.stderr.take().unwrap();
    // wait until the step runs (its output is in the progress)
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    while !seen.contains("step-42") {
        let chunk = rx
            .recv_timeout(Duration::from_secs(60).saturating_sub(start.elapsed()))
            .unwrap_or_else(|_| panic!("{ctx}: the step did not start: {seen}"));
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let nat: Vec<String> = case
        .marked()
        .into_iter()
        .filter(|p| p.contains("slirp4netns") || p.contains("__rbuild-netns"))
        .collect();
    assert!(
        nat.len() >= 2,
        "{ctx}: expected a holder and slirp4netns while the step runs: {nat:?}"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let _ = child.wait();
    let start = Instant::now();
    loop {
        let left: Vec<String> = case
            .marked()
            .into_iter()
            .filter(|p| p.contains("slirp4netns") || p.contains("__rbuild-netns"))
            .collect();
        if left.is_empty() && case.net.pids().is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{ctx}: NAT helpers outlived kill -9 of rbuild: {left:?} {}",
            case.net.pids()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn default_network_is_isolated_builtin_root() {
    check(Who::Root, "builtin");
}

#[test]
fn default_network_is_isolated_runc_root() {
    check(Who::Root, "runc");
}

#[test]
fn default_network_is_isolated_builtin_rootless() {
    check(Who::Rootless, "builtin");
}

#[test]
fn default_network_is_isolated_runc_rootless() {
    check(Who::Rootless, "runc");
}

#[test]
fn default_network_is_isolated_builtin_rootless_single_id_map() {
    check(Who::RootlessSingle, "builtin");
}

/// Without slirp4netns the default network fails with the fix; it never falls back to the host.
#[test]
fn missing_nat_fails_with_the_fix_never_the_host_network() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for runtime in ["builtin", "runc"] {
        let case = Case::new(Who::Root, runtime);
        // A PATH with runc and the test's wrappers but without slirp4netns.
        let bin = tempfile::tempdir().unwrap();
        for tool in ["runc", "nsenter", "unshare", "sh", "mount"] {
            let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .iter()
                .map(|d| std::path::Path::new(d).join(tool))
                .find(|p| p.is_file())
                .unwrap_or_else(|| panic!("{tool} is not installed"));
            std::os::unix::fs::symlink(found, bin.path().join(tool)).unwrap();
        }
        case.file("Dockerfile", PROBE);
        let mut cmd = case.cmd(&["build", "--no-cache", "."]);
        cmd.env("PATH", bin.path());
        let out = case.run(cmd, true);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{runtime}: {all}");
        assert!(
            all.contains("slirp4netns") && all.contains("--network=host"),
            "{runtime}: {all}"
        );
        assert!(!all.contains("EXT-OK") && !all.contains("LO-OK"), "{all}");
        case.assert_no_leftovers();
    }
}

/// A host whose resolver listens on its loopback (systemd-resolved, dnsmasq): the default
/// network neither lists it nor reaches it, through slirp's DNS address or otherwise.
#[test]
fn a_loopback_resolver_of_the_host_stays_unreachable() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for (who, runtime) in [(Who::Root, "builtin"), (Who::Rootless, "runc")] {
        let case = Case::with_resolv(who, runtime, "nameserver 127.0.0.1\n");
        let out = case.build(
            "FROM busybox\nRUN grep nameserver /etc/resolv.conf; \
             nslookup -timeout=2 probe.rbuild.test 10.0.2.3 2>&1; \
             nslookup -timeout=2 probe.rbuild.test 10.0.2.2 2>&1; \
             echo | nc -w 3 10.0.2.3 7002 2>&1; echo | nc -w 3 10.0.2.2 7002 2>&1; true\n",
            &[],
        );
        let all = text(&out);
        assert!(out.status.success(), "{who:?}/{runtime}: {all}");
        assert!(
            !all.contains("nameserver 127.") && all.contains("nameserver "),
            "{who:?}/{runtime}: resolv.conf: {all}"
        );
        assert!(!all.contains("LO-OK"), "{who:?}/{runtime}: {all}");
        assert!(
            case.net.lo_dns_queries.lock().unwrap().is_empty(),
            "{who:?}/{runtime}: the host's loopback resolver got a query: {all}"
        );
    }
}
