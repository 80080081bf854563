//! rbuild-cache (being written).
