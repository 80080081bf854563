//! Ctrl-C and SIGTERM during a build: stop at once and leave the store consistent.
//!
//! The handler marks the build cancelled (no new step starts), lets the progress display
//! mark the running steps `CANCELED` and close, and exits with status 130.
//! Running steps stop with the process: every sandbox helper is started with
//! `PR_SET_PDEATHSIG` and is the init of its PID namespace, so the helpers and everything
//! they run die with rbuild; the containers of `--runtime runc` steps are killed through runc
//! first. The store needs no cleanup pass here: blobs and snapshots are
//! committed by rename, SQLite rolls back an unfinished transaction, locks are released by
//! the kernel, and the next `Store::open` removes the dead process's `tmp/` entries and
//! uncommitted snapshots.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Set by the handler before it cancels anything: a failure the cancellation causes is seen
/// after it.
static RECEIVED: AtomicBool = AtomicBool::new(false);
/// Held by the handler while it stops the build; it exits the process holding it.
static HANDLING: Mutex<()> = Mutex::new(());

/// Install the handler for this build (once per process; later calls are ignored).
pub fn install(cancel: Arc<AtomicBool>, close_progress: impl Fn() + Send + 'static) {
    let _ = ctrlc::set_handler(move || {
        let _handling = HANDLING.lock();
        RECEIVED.store(true, Ordering::SeqCst);
        cancel.store(true, Ordering::SeqCst);
        close_progress();
        eprintln!("\nbuild cancelled: stopping running steps");
        // runc containers do not die with rbuild by themselves.
        rbuild_executor::kill_running_containers();
        std::process::exit(130);
    });
}

/// When a signal stopped the build, the build's own outcome (a step the cancellation killed,
/// an error) must not decide the exit status: wait for the handler, which exits with 130.
pub fn exit_if_signalled() {
    if RECEIVED.load(Ordering::SeqCst) {
        let _handling = HANDLING.lock();
        std::process::exit(130);
    }
}
