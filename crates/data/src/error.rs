//! What can go wrong when reading or fetching a data set.

use std::path::PathBuf;

/// Errors of the data crate; each says what was wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not in the format it should be.
    #[error("{path} is not a valid {format} file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The expected format.
        format: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be downloaded (offline, or no downloader).
    #[error(
        "could not download {url} ({reason}).\n  Download it yourself and place it at {path} \
         (MD5 {md5}); it is used from there without a network."
    )]
    Download {
        /// Where it comes from.
        url: String,
        /// Where it must be placed.
        path: PathBuf,
        /// Its published MD5.
        md5: String,
        /// Why the download failed.
        reason: String,
    },
    /// A file's checksum differs from the published one.
    #[error(
        "{path} has MD5 {actual}, but the published file has {expected}: it is corrupt or a \
         different version; delete it to download it again"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The published MD5.
        expected: String,
        /// The file's MD5.
        actual: String,
    },
    /// A folder holds no usable data.
    #[error("{path}: {reason}")]
    Empty {
        /// The folder.
        path: PathBuf,
        /// What was looked for.
        reason: String,
    },
    /// An option is out of range.
    #[error("invalid data option: {0}")]
    Config(String),
}

/// Results of the data crate.
pub type Result<T> = std::result::Result<T, DataError>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DataError {
    let path = path.into();
    move |source| DataError::Io { path, source }
}
