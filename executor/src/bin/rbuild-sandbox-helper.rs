//! Stand-alone sandbox helper binary (used by tests and as a reference for
//! how the `rbuild` binary must dispatch to [`rbuild_executor::helper_main`]).
#![allow(clippy::print_stderr)] // prints its usage

fn main() {
    if std::env::args().nth(1).as_deref() == Some(rbuild_executor::HELPER_ARG) {
        rbuild_executor::helper_main();
    }
    eprintln!(
        "rbuild-sandbox-helper: internal helper; run with {} (spec on stdin)",
        rbuild_executor::HELPER_ARG
    );
    std::process::exit(2);
}
