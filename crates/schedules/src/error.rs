//! The error type of `diffusion-schedules`.

/// A schedule or grid that cannot be built from the parameters given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    /// A β outside (0, 1] (1 is allowed: the last β of a zero-terminal-SNR schedule).
    #[error("beta[{index}] = {value} is outside (0, 1]; every beta must be a probability of adding noise")]
    BetaOutOfRange {
        /// Position in the table.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// A table that must be strictly monotone is not.
    #[error(
        "{what} must be strictly {direction}, but entry {index} ({value}) does not follow entry {prev_index} ({prev})"
    )]
    NotMonotone {
        /// Which table.
        what: &'static str,
        /// "increasing" or "decreasing".
        direction: &'static str,
        /// Index of the offending entry.
        index: usize,
        /// Its value.
        value: f64,
        /// Index of the previous entry.
        prev_index: usize,
        /// The previous value.
        prev: f64,
    },
    /// A value outside the range it must lie in.
    #[error("{what}[{index}] = {value} is outside {range}")]
    OutOfRange {
        /// Which table.
        what: &'static str,
        /// Position in the table.
        index: usize,
        /// The offending value.
        value: f64,
        /// The allowed range, in words.
        range: &'static str,
    },
    /// Zero training or sampling steps.
    #[error("{what} must be at least 1")]
    ZeroSteps {
        /// Which count.
        what: &'static str,
    },
    /// More sampling steps than the model was trained with.
    #[error(
        "{steps} inference steps asked of a schedule with {train} training timesteps; \
         a discrete schedule can take at most {train} steps"
    )]
    TooManySteps {
        /// Inference steps asked for.
        steps: usize,
        /// Training timesteps of the schedule.
        train: usize,
    },
    /// Any other parameter out of its domain.
    #[error("invalid {name}: {reason}")]
    InvalidParameter {
        /// The parameter.
        name: &'static str,
        /// Why it is invalid.
        reason: String,
    },
}

impl ScheduleError {
    pub(crate) fn param(name: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidParameter {
            name,
            reason: reason.into(),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = ScheduleError> = std::result::Result<T, E>;

/// Checks that `x` is finite and positive.
pub(crate) fn positive(name: &'static str, x: f64) -> Result<f64> {
    if x.is_finite() && x > 0.0 {
        Ok(x)
    } else {
        Err(ScheduleError::param(name, format!("{x} must be finite and > 0")))
    }
}

/// Checks that `values` is strictly decreasing.
pub(crate) fn strictly_decreasing(what: &'static str, values: &[f64]) -> Result<()> {
    for (i, pair) in values.windows(2).enumerate() {
        // `partial_cmp` is `None` for NaN, which is rejected too.
        if pair[0].partial_cmp(&pair[1]) != Some(std::cmp::Ordering::Greater) {
            return Err(ScheduleError::NotMonotone {
                what,
                direction: "decreasing",
                index: i + 1,
                value: pair[1],
                prev_index: i,
                prev: pair[0],
            });
        }
    }
    Ok(())
}
