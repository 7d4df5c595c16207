//! Errors: every one names the file, the key and the problem.

use std::fmt;
use std::path::PathBuf;

/// Why a configuration could not be loaded.
///
/// `Display` gives one line in compiler style:
/// `FILE:LINE:COLUMN: KEY: PROBLEM` (`FILE: KEY: PROBLEM` when the position is
/// unknown). `KEY` is the dotted path of the key, with sequence indexes in
/// brackets: `nodes[1].paxos_port`, `credentials.replication.password_env`;
/// `(top level)` for the document itself.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the configuration file: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed, has the wrong shape, or fails validation.
    #[error("{}", Invalid { file, key, position: *position, problem })]
    Invalid {
        file: PathBuf,
        /// Key path, e.g. `nodes[1].paxos_port`.
        key: String,
        /// 1-based line and column, where the YAML parser knows them.
        position: Option<(u64, u64)>,
        problem: String,
    },
    /// `--node NAME` names no node of the file.
    #[error("{}: nodes: no node named `{name}` (the file has: {})", file.display(), known.join(", "))]
    UnknownNode {
        file: PathBuf,
        name: String,
        known: Vec<String>,
    },
}

struct Invalid<'a> {
    file: &'a PathBuf,
    key: &'a str,
    position: Option<(u64, u64)>,
    problem: &'a str,
}

impl fmt::Display for Invalid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": {}: {}", self.key, self.problem)
    }
}

impl ConfigError {
    /// The configuration file the error is about.
    pub fn file(&self) -> &std::path::Path {
        match self {
            ConfigError::Read { file, .. }
            | ConfigError::Invalid { file, .. }
            | ConfigError::UnknownNode { file, .. } => file,
        }
    }

    /// The key path the error is about (`nodes` for an unknown node name, `None`
    /// for an unreadable file).
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::UnknownNode { .. } => Some("nodes"),
        }
    }

    /// 1-based (line, column), when known.
    pub fn position(&self) -> Option<(u64, u64)> {
        match self {
            ConfigError::Invalid { position, .. } => *position,
            _ => None,
        }
    }
}
