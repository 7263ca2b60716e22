//! The error type of `diffusion-train`.

/// What stops a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss became NaN or infinite.
    #[error(
        "the loss is {value} at step {step}: training diverged (lower the learning rate, or check the data)"
    )]
    NonFiniteLoss {
        /// The step at which it was seen.
        step: usize,
        /// The value.
        value: f64,
    },
    /// A configuration value out of range.
    #[error("invalid training configuration: {0}")]
    Config(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
