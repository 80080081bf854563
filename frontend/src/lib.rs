//! rbuild-frontend (being written).
