//! rbuild-solver (being written).
