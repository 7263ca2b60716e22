//! What can go wrong when evaluating.

use std::path::PathBuf;

/// Errors of the metrics crate.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Features or statistics of mismatched or unusable shapes.
    #[error("{0}")]
    Shape(String),
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// Results of the metrics crate.
pub type Result<T> = std::result::Result<T, MetricsError>;
