//! The cluster configuration file.
