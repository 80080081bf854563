//! Parent side: [`Executor::run`] spawns the helper, feeds it the spec,
//! streams the step's output to the caller and collects the final report.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use rustix::pipe::{pipe_with, PipeFlags};

use crate::error::ExecutorError;
use crate::protocol::{HelperInput, HelperReport, STATUS_FD};
use crate::{sys, ExecSpec, ExitStatus, Helper, Network, Runtime, Stream};

/// How often [`Executor::run_cancellable`] checks whether the step was cancelled.
pub(crate) const CANCEL_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Runs steps in sandboxes through a helper process.
#[derive(Debug, Clone)]
pub struct Executor {
    helper: Helper,
    runtime: Runtime,
    /// Isolated network namespaces, shared by the clones of this executor (one build).
    net: std::sync::Arc<crate::net::NetPool>,
}

impl Executor {
    /// An executor that starts sandboxes with `helper.program helper.args…`.
    pub fn new(helper: Helper) -> Self {
        Executor {
            helper,
            runtime: Runtime::Builtin,
            net: Default::default(),
        }
    }

    /// The same executor running steps with `runtime`.
    pub fn with_runtime(mut self, runtime: Runtime) -> Self {
        self.runtime = runtime;
        self
    }

    /// The runtime steps run with.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Run the step's process; every output chunk is passed to `output` as
    /// it arrives (on the calling thread).
    ///
    /// Returns the process's exit status (non-zero codes and signals are
    /// `Ok`). `Err` means the sandbox failed: the helper could not start,
    /// setup failed ([`ExecutorError::Setup`]), or the program could not be
    /// executed — e.g. not found in `$PATH` — ([`ExecutorError::Exec`]).
    pub fn run(
        &self,
        spec: &ExecSpec,
        output: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<ExitStatus, ExecutorError> {
        self.run_cancellable(spec, output, &|| false)
    }

    /// [`run`](Self::run), killing the sandbox as soon as `cancelled` returns true (polled
    /// every [`CANCEL_POLL`]). The helper is killed with SIGKILL; the step's process tree dies
    /// with it (the sandbox init has `PR_SET_PDEATHSIG` and is pid 1 of its namespace). The
    /// result is then the helper's status as usual (e.g. killed by signal 9): the caller, which
    /// knows why it cancelled, decides what to report.
    pub fn run_cancellable(
        &self,
        spec: &ExecSpec,
        output: &mut dyn FnMut(Stream, &[u8]),
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<ExitStatus, ExecutorError> {
        if spec.args.is_empty() {
            return Err(ExecutorError::InvalidSpec("args is empty".into()));
        }
        crate::check_spec_sizes(spec)?;
        crate::helper::sweep_stale_scratch();
        if !rustix::process::geteuid().is_root() {
            return Err(ExecutorError::Setup(
                "the sandbox needs root, or root of a user namespace (rbuild re-runs itself \
                 in one when started by a non-root user; see docs/sandbox.md)"
                    .into(),
            ));
        }
        // The default network: a namespace of the pool, back in it when the step is over
        // (thrown away after an insecure step, which could have reconfigured it).
        // Chroot isolation has no network namespace of its own: the host's network.
        let lease = match spec.network {
            Network::Isolated if self.runtime != Runtime::Chroot => {
                Some(self.net.acquire(&self.helper)?)
            }
            _ => None,
        };
        let input = HelperInput {
            spec: spec.clone(),
            runtime: self.runtime.clone(),
            netns: lease.as_ref().map(|l| l.path()),
        };
        let result = self.run_helper(&input, output, cancelled);
        if let (Some(l), Ok(_)) = (lease, &result) {
            l.release(spec.security == crate::Security::Insecure);
        }
        result
    }

    fn run_helper(
        &self,
        input: &HelperInput,
        output: &mut dyn FnMut(Stream, &[u8]),
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<ExitStatus, ExecutorError> {
        let json = serde_json::to_vec(input)
            .map_err(|e| ExecutorError::InvalidSpec(format!("serialize: {e}")))?;
        let (status_r, status_w) =
            pipe_with(PipeFlags::CLOEXEC).map_err(|e| ExecutorError::HelperIo {
                op: "create status pipe",
                source: e.into(),
            })?;

        let mut cmd = Command::new(&self.helper.program);
        cmd.args(&self.helper.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        sys::pass_fd_to_child(&mut cmd, status_w.as_raw_fd(), STATUS_FD);
        let mut child = cmd.spawn().map_err(|e| ExecutorError::SpawnHelper {
            program: self.helper.program.clone(),
            source: e,
        })?;
        drop(cmd);
        drop(status_w);

        if let Some(mut stdin) = child.stdin.take() {
            // A helper that dies early closes its stdin: the report (or the
            // missing report) tells what happened, so a write error is ignored.
            let _ = stdin.write_all(&json);
        }
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let pid = rustix::process::Pid::from_child(&child);
        let child_id = child.id();
        let finished = std::sync::atomic::AtomicBool::new(false);
        // A runc container outlives a killed helper (runc's init is not the helper's child):
        // remember it so that cancellation and Ctrl-C can kill it through runc.
        let _runc = match &self.runtime {
            Runtime::Runc { binary } => {
                crate::runc::sweep_stale_state();
                Some(RuncGuard::register(binary, child.id()))
            }
            Runtime::Builtin | Runtime::Chroot => None,
        };

        let status_bytes = std::thread::scope(|scope| {
            // The helper is not waited for before this scope ends, so its pid cannot be reused
            // while the watcher may still signal it.
            let watcher = scope.spawn(|| {
                while !finished.load(std::sync::atomic::Ordering::SeqCst) {
                    if cancelled() {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                        if let Runtime::Runc { binary } = &self.runtime {
                            // runc dies with the helper (parent-death signal); its container
                            // does not.
                            crate::runc::kill_container(binary, child_id);
                        }
                        return;
                    }
                    std::thread::sleep(CANCEL_POLL);
                }
            });
            let (tx, rx) = mpsc::channel::<(Stream, Vec<u8>)>();
            for (stream, pipe) in [
                (
                    Stream::Stdout,
                    stdout.map(|p| Box::new(p) as Box<dyn Read + Send>),
                ),
                (
                    Stream::Stderr,
                    stderr.map(|p| Box::new(p) as Box<dyn Read + Send>),
                ),
            ] {
                if let Some(mut pipe) = pipe {
                    let tx = tx.clone();
                    scope.spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            match pipe.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if tx.send((stream, buf[..n].to_vec())).is_err() {
                                        break;
                                    }
                                }
                                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                                Err(_) => break,
                            }
                        }
                    });
                }
            }
            drop(tx);
            let status_reader = scope.spawn(move || {
                let mut f = std::fs::File::from(status_r);
                let mut v = Vec::new();
                f.read_to_end(&mut v).map(|_| v)
            });
            for (stream, chunk) in rx {
                output(stream, &chunk);
            }
            let r = status_reader.join();
            finished.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = watcher.join();
            r
        });
        let wait = child.wait().map_err(|e| ExecutorError::HelperIo {
            op: "wait for helper",
            source: e,
        })?;
        let status_bytes = match status_bytes {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                return Err(ExecutorError::HelperIo {
                    op: "read status pipe",
                    source: e,
                })
            }
            Err(_) => return Err(ExecutorError::Protocol("status reader panicked".into())),
        };
        let text = String::from_utf8_lossy(&status_bytes);
        let Some(line) = text.lines().rev().find(|l| !l.trim().is_empty()) else {
            return Err(ExecutorError::Protocol(format!(
                "helper {} ended ({wait}) without a report",
                self.helper.program.display()
            )));
        };
        let report: HelperReport = serde_json::from_str(line)
            .map_err(|e| ExecutorError::Protocol(format!("bad report {line:?}: {e}")))?;
        match report {
            HelperReport::Exited(st) => Ok(st),
            HelperReport::SetupFailed { message } => Err(ExecutorError::Setup(message)),
            HelperReport::ExecFailed { program, message } => {
                Err(ExecutorError::Exec { program, message })
            }
        }
    }
}

/// Helpers running a runc container right now (runc binary, helper pid).
static RUNC_HELPERS: std::sync::Mutex<Vec<(PathBuf, u32)>> = std::sync::Mutex::new(Vec::new());

/// Registration of one runc helper in [`RUNC_HELPERS`] for the duration of its run.
struct RuncGuard {
    helper: u32,
}

impl RuncGuard {
    fn register(binary: &Path, helper: u32) -> RuncGuard {
        if let Ok(mut v) = RUNC_HELPERS.lock() {
            v.push((binary.to_path_buf(), helper));
        }
        RuncGuard { helper }
    }
}

impl Drop for RuncGuard {
    fn drop(&mut self) {
        if let Ok(mut v) = RUNC_HELPERS.lock() {
            v.retain(|(_, h)| *h != self.helper);
        }
    }
}

/// Kill the containers of every runc step this process is running (for Ctrl-C/SIGTERM,
/// before exiting: the built-in runtime's sandboxes die with the process by themselves, runc
/// containers would not).
pub fn kill_running_containers() {
    let running: Vec<(PathBuf, u32)> = match RUNC_HELPERS.lock() {
        Ok(v) => v.clone(),
        Err(_) => return,
    };
    for (binary, helper) in running {
        crate::runc::kill_container(&binary, helper);
    }
}
