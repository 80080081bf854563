//! rbuild-oci (being written).
