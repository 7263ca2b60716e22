//! Sampling grids: the decreasing noise levels σ₀ > σ₁ > … a sampler steps through.
//!
//! Noise levels are VE noise levels (the σ of D(x, σ)). The k-diffusion grids hold `n`
//! values plus an appended 0, so that the last step of a sampler lands on the data.

use serde::{Deserialize, Serialize};

use crate::continuous::ContinuousSchedule;
use crate::error::{Result, ScheduleError, positive};
use crate::numeric::linspace_torch;

/// A validated grid of noise levels: finite, ≥ 0 and strictly decreasing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<f64>", into = "Vec<f64>")]
pub struct SigmaGrid(Vec<f64>);

impl TryFrom<Vec<f64>> for SigmaGrid {
    type Error = ScheduleError;
    fn try_from(v: Vec<f64>) -> Result<Self> {
        Self::new(v)
    }
}

impl From<SigmaGrid> for Vec<f64> {
    fn from(g: SigmaGrid) -> Self {
        g.0
    }
}

impl SigmaGrid {
    /// A grid from explicit values; fails unless they are finite, ≥ 0 and strictly decreasing.
    pub fn new(sigmas: Vec<f64>) -> Result<Self> {
        if sigmas.is_empty() {
            return Err(ScheduleError::ZeroSteps { what: "a sigma grid" });
        }
        if let Some((index, &value)) = sigmas
            .iter()
            .enumerate()
            .find(|(_, s)| !(s.is_finite() && **s >= 0.0))
        {
            return Err(ScheduleError::OutOfRange {
                what: "sigmas",
                index,
                value,
                range: "[0, ∞) (finite)",
            });
        }
        crate::error::strictly_decreasing("sigmas", &sigmas)?;
        Ok(Self(sigmas))
    }

    /// Karras et al. 2022, eq. 5: σᵢ = (σ_max^{1/ρ} + i/(n−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ,
    /// `n` values and an appended 0 (k-diffusion's `get_sigmas_karras`; EDM uses ρ = 7).
    pub fn karras(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Result<Self> {
        check_range(n, sigma_min, sigma_max)?;
        positive("rho", rho)?;
        let (lo, hi) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
        let sigmas = linspace_torch(0.0, 1.0, n)
            .into_iter()
            .map(|r| (hi + r * (lo - hi)).powf(rho));
        Self::with_zero(sigmas.collect())
    }

    /// Evenly spaced in ln σ, `n` values and an appended 0 (`get_sigmas_exponential`).
    pub fn exponential(n: usize, sigma_min: f64, sigma_max: f64) -> Result<Self> {
        check_range(n, sigma_min, sigma_max)?;
        let sigmas = linspace_torch(sigma_max.ln(), sigma_min.ln(), n)
            .into_iter()
            .map(f64::exp);
        Self::with_zero(sigmas.collect())
    }

    /// ln σ polynomial in the step: σᵢ = exp(rᵢ^ρ (ln σ_max − ln σ_min) + ln σ_min) with r
    /// from 1 to 0, `n` values and an appended 0 (`get_sigmas_polyexponential`).
    pub fn polyexponential(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Result<Self> {
        check_range(n, sigma_min, sigma_max)?;
        positive("rho", rho)?;
        let (lmin, lmax) = (sigma_min.ln(), sigma_max.ln());
        let sigmas = linspace_torch(1.0, 0.0, n)
            .into_iter()
            .map(|r| (r.powf(rho) * (lmax - lmin) + lmin).exp());
        Self::with_zero(sigmas.collect())
    }

    /// The VP-SDE grid of Song et al. 2021 in VE terms: t evenly spaced from 1 to ε_s and
    /// σ(t) = √(exp(β_d t²/2 + β_min t) − 1), `n` values and an appended 0 (`get_sigmas_vp`;
    /// defaults β_d = 19.9, β_min = 0.1, ε_s = 1e-3).
    pub fn vp(n: usize, beta_d: f64, beta_min: f64, eps_s: f64) -> Result<Self> {
        if n == 0 {
            return Err(ScheduleError::ZeroSteps { what: "n" });
        }
        positive("beta_d", beta_d)?;
        positive("eps_s", eps_s)?;
        if beta_min.is_nan() || beta_min < 0.0 {
            return Err(ScheduleError::param(
                "beta_min",
                format!("{beta_min} must be >= 0"),
            ));
        }
        let sigmas = linspace_torch(1.0, eps_s, n)
            .into_iter()
            .map(|t| (beta_d * t * t / 2.0 + beta_min * t).exp_m1().sqrt());
        Self::with_zero(sigmas.collect())
    }

    /// Evenly spaced in log-SNR between the schedule's times `t_start` (noisy) and `t_end`,
    /// `steps + 1` noise levels σ/α (DPM-Solver's `logSNR` spacing). No 0 is appended.
    pub fn log_snr_uniform(
        schedule: &impl ContinuousSchedule,
        steps: usize,
        t_start: f64,
        t_end: f64,
    ) -> Result<Self> {
        let times = log_snr_uniform_times(schedule, steps, t_start, t_end)?;
        Self::new(times.into_iter().map(|t| schedule.ve_sigma(t)).collect())
    }

    /// Evenly spaced in time between `t_start` and `t_end`, `steps + 1` noise levels σ/α
    /// (DPM-Solver's `time_uniform`). No 0 is appended.
    pub fn time_uniform(
        schedule: &impl ContinuousSchedule,
        steps: usize,
        t_start: f64,
        t_end: f64,
    ) -> Result<Self> {
        if steps == 0 {
            return Err(ScheduleError::ZeroSteps { what: "steps" });
        }
        Self::new(
            linspace_torch(t_start, t_end, steps + 1)
                .into_iter()
                .map(|t| schedule.ve_sigma(t))
                .collect(),
        )
    }

    /// The grid with a 0 appended (values must stay strictly decreasing).
    pub fn with_zero(mut sigmas: Vec<f64>) -> Result<Self> {
        sigmas.push(0.0);
        Self::new(sigmas)
    }

    /// The noise levels.
    pub fn sigmas(&self) -> &[f64] {
        &self.0
    }

    /// The number of noise levels (steps + 1).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a grid has at least one value.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The number of steps between consecutive levels.
    pub fn steps(&self) -> usize {
        self.0.len() - 1
    }

    /// The first (largest) noise level.
    pub fn sigma_max(&self) -> f64 {
        self.0[0]
    }

    /// The last noise level.
    pub fn last(&self) -> f64 {
        self.0[self.0.len() - 1]
    }

    /// The smallest positive noise level.
    pub fn sigma_min_positive(&self) -> Option<f64> {
        self.0.iter().rev().copied().find(|&s| s > 0.0)
    }

    /// Whether the grid ends at σ = 0.
    pub fn ends_at_zero(&self) -> bool {
        self.last() == 0.0
    }

    /// The consecutive pairs (σᵢ, σᵢ₊₁) of the steps.
    pub fn pairs(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.0.windows(2).map(|w| (w[0], w[1]))
    }
}

/// Times evenly spaced in log-SNR λ between `t_start` and `t_end`, `steps + 1` of them.
pub fn log_snr_uniform_times(
    schedule: &impl ContinuousSchedule,
    steps: usize,
    t_start: f64,
    t_end: f64,
) -> Result<Vec<f64>> {
    if steps == 0 {
        return Err(ScheduleError::ZeroSteps { what: "steps" });
    }
    let (l0, l1) = (schedule.log_snr(t_start), schedule.log_snr(t_end));
    if !(l0.is_finite() && l1.is_finite()) {
        return Err(ScheduleError::param(
            "time range",
            format!("log-SNR must be finite at both ends, got λ({t_start}) = {l0}, λ({t_end}) = {l1}"),
        ));
    }
    Ok(linspace_torch(l0, l1, steps + 1)
        .into_iter()
        .map(|l| schedule.t_from_log_snr(l))
        .collect())
}

/// The time shift of flow-matching models (Esser et al. 2024, SD3): a noise fraction
/// σ ∈ [0, 1] of the path x = (1 − σ) x₀ + σ ε becomes s·σ / (1 + (s − 1) σ).
pub fn flow_time_shift(sigma: f64, shift: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// The inference grid of diffusers' `FlowMatchEulerDiscreteScheduler` (SD3): returns the
/// timesteps (σ·T) and the noise fractions σ of the path x = (1 − σ) x₀ + σ ε, with a final 0.
///
/// The training table σ = shift(t/T), t = T … 1, gives σ_max = 1 and σ_min = shift(1/T);
/// the inference σ are evenly spaced from σ_max to σ_min and then shifted **again**, so
/// σ_min is shifted twice (diffusers' behaviour, kept for exactness).
pub fn flow_match_sigmas(num_train: usize, steps: usize, shift: f64) -> Result<(Vec<f64>, Vec<f64>)> {
    if num_train == 0 || steps == 0 {
        return Err(ScheduleError::ZeroSteps {
            what: "num_train_timesteps and num_inference_steps",
        });
    }
    positive("shift", shift)?;
    let t_len = num_train as f64;
    let sigma_max = flow_time_shift(1.0, shift);
    let sigma_min = flow_time_shift(1.0 / t_len, shift);
    let mut sigmas: Vec<f64> = crate::numeric::linspace_numpy(sigma_max * t_len, sigma_min * t_len, steps)
        .into_iter()
        .map(|t| flow_time_shift(t / t_len, shift))
        .collect();
    let timesteps = sigmas.iter().map(|s| s * t_len).collect();
    sigmas.push(0.0);
    Ok((timesteps, sigmas))
}

fn check_range(n: usize, sigma_min: f64, sigma_max: f64) -> Result<()> {
    if n == 0 {
        return Err(ScheduleError::ZeroSteps { what: "n" });
    }
    positive("sigma_min", sigma_min)?;
    positive("sigma_max", sigma_max)?;
    if sigma_min >= sigma_max && n > 1 {
        return Err(ScheduleError::param(
            "sigma range",
            format!("sigma_min = {sigma_min} must be below sigma_max = {sigma_max}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::continuous::VpLinear;

    #[test]
    fn karras_hits_both_ends_and_appends_zero() {
        let g = SigmaGrid::karras(10, 0.002, 80.0, 7.0).unwrap();
        assert_eq!(g.len(), 11);
        assert!((g.sigma_max() - 80.0).abs() < 1e-12);
        assert!((g.sigmas()[9] - 0.002).abs() < 1e-15);
        assert!(g.ends_at_zero());
        assert_eq!(g.steps(), 10);
    }

    #[test]
    fn log_snr_grid_is_even_in_lambda() {
        let vp = VpLinear::default();
        let g = SigmaGrid::log_snr_uniform(&vp, 8, 1.0, 1e-3).unwrap();
        let lambdas: Vec<f64> = g.sigmas().iter().map(|s| -2.0 * s.ln()).collect();
        let d0 = lambdas[1] - lambdas[0];
        for w in lambdas.windows(2) {
            assert!(((w[1] - w[0]) - d0).abs() < 1e-9);
        }
        assert!((g.sigma_max() - vp.ve_sigma(1.0)).abs() < 1e-9 * vp.ve_sigma(1.0));
    }

    #[test]
    fn bad_grids_are_refused() {
        assert!(SigmaGrid::new(vec![1.0, 2.0]).is_err());
        assert!(SigmaGrid::new(vec![1.0, 1.0]).is_err());
        assert!(SigmaGrid::new(vec![1.0, -0.5]).is_err());
        assert!(SigmaGrid::new(vec![f64::NAN]).is_err());
        assert!(SigmaGrid::new(vec![]).is_err());
        assert!(SigmaGrid::karras(0, 0.1, 1.0, 7.0).is_err());
        assert!(SigmaGrid::karras(5, 1.0, 0.1, 7.0).is_err());
        let g: std::result::Result<SigmaGrid, _> = serde_json::from_str("[3.0, 1.0, 2.0]");
        assert!(g.is_err());
    }

    #[test]
    fn flow_shift_fixes_the_ends() {
        assert_eq!(flow_time_shift(1.0, 3.0), 1.0);
        assert_eq!(flow_time_shift(0.0, 3.0), 0.0);
        assert!((flow_time_shift(0.5, 3.0) - 0.75).abs() < 1e-15);
    }
}
