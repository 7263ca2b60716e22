//! The inference timesteps of a discrete schedule, as diffusers chooses them
//! (`timestep_spacing` and `steps_offset`; Lin et al. 2024, Table 2, for why it matters).
//!
//! With T training steps and N inference steps:
//! - `leading`: (0, k, 2k, …)·reversed + offset with k = T div N — the first step is not at
//!   T−1 (it is 980 for T = 1000, N = 50), so sampling starts from a slightly noised image;
//! - `trailing`: round(T, T − T/N, …) − 1 — starts at T−1;
//! - `linspace`: round(linspace(0, T−1, N)) reversed (integers) or left fractional for the
//!   Euler-type schedulers.
//!
//! Rounding is numpy's, halves to even (`trailing` with N = 16 gives 811, not 812).

use serde::{Deserialize, Serialize};

use crate::error::{Result, ScheduleError};
use crate::numeric::{arange_numpy, linspace_numpy, round_half_even};

/// How inference timesteps are placed among the training timesteps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestepSpacing {
    /// Multiples of T div N from 0, plus `steps_offset` (the diffusers default).
    #[default]
    Leading,
    /// Evenly spaced from T−1 down.
    Trailing,
    /// Evenly spaced over [0, T−1].
    Linspace,
}

impl std::str::FromStr for TimestepSpacing {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "leading" => Ok(Self::Leading),
            "trailing" => Ok(Self::Trailing),
            "linspace" => Ok(Self::Linspace),
            other => Err(ScheduleError::param(
                "timestep_spacing",
                format!("`{other}`: expected leading, trailing or linspace"),
            )),
        }
    }
}

fn check(num_train: usize, num_steps: usize) -> Result<()> {
    if num_train == 0 {
        return Err(ScheduleError::ZeroSteps {
            what: "num_train_timesteps",
        });
    }
    if num_steps == 0 {
        return Err(ScheduleError::ZeroSteps {
            what: "num_inference_steps",
        });
    }
    if num_steps > num_train {
        return Err(ScheduleError::TooManySteps {
            steps: num_steps,
            train: num_train,
        });
    }
    Ok(())
}

/// Fractional inference timesteps, decreasing (diffusers' Euler-type schedulers; the
/// `linspace` values are not rounded). `leading` and `trailing` give whole numbers.
pub fn timesteps_fractional(
    num_train: usize,
    num_steps: usize,
    spacing: TimestepSpacing,
    steps_offset: usize,
) -> Result<Vec<f64>> {
    check(num_train, num_steps)?;
    let t_len = num_train as f64;
    Ok(match spacing {
        TimestepSpacing::Leading => {
            let ratio = (num_train / num_steps) as f64;
            (0..num_steps)
                .rev()
                .map(|i| round_half_even(i as f64 * ratio) + steps_offset as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = t_len / num_steps as f64;
            arange_numpy(t_len, 0.0, -ratio)
                .into_iter()
                .map(|t| round_half_even(t) - 1.0)
                .collect()
        }
        TimestepSpacing::Linspace => {
            let mut t = linspace_numpy(0.0, t_len - 1.0, num_steps);
            t.reverse();
            t
        }
    })
}

/// Integer inference timesteps, decreasing (diffusers' DDPM / DDIM / PNDM schedulers).
pub fn timesteps(
    num_train: usize,
    num_steps: usize,
    spacing: TimestepSpacing,
    steps_offset: usize,
) -> Result<Vec<usize>> {
    let t = timesteps_fractional(num_train, num_steps, spacing, steps_offset)?;
    Ok(t.into_iter()
        .map(|x| round_half_even(x).max(0.0) as usize)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_never_reaches_the_last_training_step() {
        let t = timesteps(1000, 50, TimestepSpacing::Leading, 0).unwrap();
        assert_eq!((t[0], t[49]), (980, 0));
        let t = timesteps(1000, 50, TimestepSpacing::Leading, 1).unwrap();
        assert_eq!((t[0], t[49]), (981, 1));
    }

    #[test]
    fn trailing_starts_at_the_last_step_and_rounds_half_to_even() {
        let t = timesteps(1000, 50, TimestepSpacing::Trailing, 0).unwrap();
        assert_eq!((t[0], t[1], t[49]), (999, 979, 19));
        let t = timesteps(1000, 16, TimestepSpacing::Trailing, 0).unwrap();
        assert!(t.contains(&811) && t.contains(&687), "{t:?}");
    }

    #[test]
    fn linspace_is_fractional_for_euler() {
        let t = timesteps_fractional(1000, 10, TimestepSpacing::Linspace, 0).unwrap();
        assert_eq!(t[0], 999.0);
        assert!((t[1] - 888.0).abs() < 1e-12);
        assert_eq!(t[9], 0.0);
        let t = timesteps(1000, 7, TimestepSpacing::Linspace, 0).unwrap();
        assert_eq!(t, vec![999, 832, 666, 500, 333, 166, 0]);
    }

    #[test]
    fn bad_counts_are_errors() {
        assert!(matches!(
            timesteps(1000, 1001, TimestepSpacing::Leading, 0),
            Err(ScheduleError::TooManySteps {
                steps: 1001,
                train: 1000
            })
        ));
        assert!(matches!(
            timesteps(1000, 0, TimestepSpacing::Leading, 0),
            Err(ScheduleError::ZeroSteps { .. })
        ));
        assert!("middle".parse::<TimestepSpacing>().is_err());
    }
}
