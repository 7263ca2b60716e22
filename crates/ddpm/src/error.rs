//! The error type of `diffusion-ddpm`.

/// Bad input to the forward process or a loss.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DdpmError {
    /// A timestep outside 0 … T−1.
    #[error("timestep {t} is outside the schedule (0 ..= {max})")]
    TimestepOutOfRange {
        /// The timestep.
        t: usize,
        /// The largest valid timestep, T−1.
        max: usize,
    },
    /// Two tensors that must have the same shape do not.
    #[error("{what}: shapes differ, {left:?} vs {right:?}")]
    ShapeMismatch {
        /// What was compared.
        what: &'static str,
        /// The first shape.
        left: Vec<usize>,
        /// The second shape.
        right: Vec<usize>,
    },
    /// A per-sample list whose length is not the batch size.
    #[error("{what}: {got} values for a batch of {batch}")]
    BatchMismatch {
        /// Which list.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The batch size.
        batch: usize,
    },
    /// Learned variance was asked for but the network output has no variance head.
    #[error(
        "the reverse-step variance is learned, but the network output has no variance head: \
         it must have twice the data channels (mean, then variance) along dimension 1"
    )]
    MissingVarianceHead,
    /// A respacing that cannot be built.
    #[error("invalid timestep respacing `{spec}`: {reason}")]
    InvalidRespacing {
        /// The specification.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// A conditioning augmentation that cannot be built.
    #[error("invalid conditioning augmentation: {0}")]
    InvalidAugmentation(String),
    /// A class label outside the classifier's classes.
    #[error("class label {label} is outside the classifier's {classes} classes (0 ..= {})", classes - 1)]
    LabelOutOfRange {
        /// The label.
        label: usize,
        /// The number of classes.
        classes: usize,
    },
    /// A prediction name we do not know.
    #[error("unknown prediction type `{0}`: expected epsilon, sample, v_prediction or score")]
    UnknownPrediction(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = DdpmError> = std::result::Result<T, E>;
