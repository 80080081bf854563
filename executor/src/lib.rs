//! rbuild-executor (being written).
