//! The error type of `diffusion-train`.

use std::path::PathBuf;

/// What stops a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss became NaN or infinite.
    #[error(
        "the loss is {value} at step {step}: training diverged (lower the learning rate, clip gradients, or check the data); {}",
        match last_checkpoint {
            Some(p) => format!("the last good checkpoint is {}", p.display()),
            None => "no checkpoint was written".to_string(),
        }
    )]
    NonFiniteLoss {
        /// The step at which it was seen (1-based: steps completed if it had succeeded).
        step: usize,
        /// The value.
        value: f64,
        /// The last checkpoint written before it, to resume from.
        last_checkpoint: Option<PathBuf>,
    },
    /// A configuration value out of range.
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// A checkpoint could not be written or read.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A checkpoint that does not belong to this run.
    #[error("checkpoint {path} does not match this run: {reason}")]
    Mismatch {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A hook failed.
    #[error("{0}")]
    Hook(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
