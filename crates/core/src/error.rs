//! The error type of `diffusion-core`.

use std::path::PathBuf;

/// Everything that can go wrong at the boundary of the core crate: choosing a device,
/// reading or writing `.npy` files, and tensors of the wrong shape.
///
/// Every message says what was wrong and, where there is one, how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A backend name that is not one of ours.
    #[error(
        "unknown backend `{name}`: expected one of flex, ndarray, wgpu, cuda (optionally `:index`, e.g. `cuda:1`)"
    )]
    UnknownBackend {
        /// What was asked for.
        name: String,
    },
    /// A known backend that this binary was built without.
    #[error(
        "backend `{requested}` was not compiled into this binary (compiled in: {compiled}); \
         rebuild with `--features {requested}`"
    )]
    BackendNotCompiled {
        /// The backend asked for.
        requested: String,
        /// The backends that are compiled in, comma separated.
        compiled: String,
    },
    /// The backend is compiled in but the device does not exist on this machine.
    #[error("no `{backend}` device with index {index} on this machine ({found} found){hint}")]
    DeviceNotFound {
        /// The backend asked for.
        backend: String,
        /// The index asked for.
        index: usize,
        /// How many devices of that backend were found.
        found: usize,
        /// A hint on how to fix it (may be empty).
        hint: String,
    },
    /// A device index given to a backend that has a single device.
    #[error("backend `{backend}` has a single device and takes no index (got `{backend}:{index}`)")]
    NoDeviceIndex {
        /// The backend.
        backend: String,
        /// The index given.
        index: usize,
    },
    /// A floating-point precision name that we do not know.
    #[error("unknown dtype `{name}`: expected f32 or f64")]
    UnknownDtype {
        /// What was asked for.
        name: String,
    },
    /// The backend cannot compute in the requested precision.
    #[error(
        "backend `{backend}` does not support {dtype} arithmetic; use --dtype f32 or another backend (flex supports f64)"
    )]
    UnsupportedDtype {
        /// The backend.
        backend: String,
        /// The precision asked for.
        dtype: String,
    },
    /// The device was already configured (a tensor was created before the precision was set).
    #[error("cannot set the default precision of the `{backend}` device: {reason}")]
    DeviceConfig {
        /// The backend.
        backend: String,
        /// What burn reported.
        reason: String,
    },
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A malformed or unsupported `.npy` file.
    #[error("{path}: not a supported .npy file: {reason}")]
    Npy {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A tensor or array of the wrong shape.
    #[error("{what}: expected shape {expected}, got {got:?}")]
    Shape {
        /// Which tensor.
        what: String,
        /// The expected shape, in words (e.g. `[n, 2]`).
        expected: String,
        /// The shape received.
        got: Vec<usize>,
    },
    /// A parameter outside its valid range.
    #[error("invalid {name}: {reason}")]
    InvalidArgument {
        /// Which parameter.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::InvalidArgument`].
    pub fn invalid(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            name: name.into(),
            reason: reason.into(),
        }
    }
}
