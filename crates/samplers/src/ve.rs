//! The variance-exploding view shared by the σ-grid samplers (Karras et al. 2022, §2):
//! x = x₀ + σ n, the probability-flow ODE dx/dσ = (x − D(x, σ))/σ, and the pieces every
//! such sampler reuses — the grid, the ODE derivative, "churn" and the ancestral split.

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;
use diffusion_schedules::SigmaGrid;
use serde::{Deserialize, Serialize};

use crate::denoiser::Denoiser;
use crate::level::NoiseLevel;
use crate::sampler::{Observer, SampleError, SampleOutput, Sampler, noise_like};

/// The decreasing noise levels a VE sampler steps through, with, optionally, the timestep
/// the model is evaluated at for each level (diffusers passes its own timesteps instead of
/// recovering them from σ) and the standard deviation of the initial noise.
#[derive(Clone, Debug, PartialEq)]
pub struct VeGrid {
    sigmas: Vec<f64>,
    timesteps: Option<Vec<f64>>,
    init_noise_sigma: Option<f64>,
}

impl From<SigmaGrid> for VeGrid {
    fn from(grid: SigmaGrid) -> Self {
        Self {
            sigmas: grid.into(),
            timesteps: None,
            init_noise_sigma: None,
        }
    }
}

impl VeGrid {
    /// A grid from a validated σ grid.
    pub fn new(grid: SigmaGrid) -> Self {
        grid.into()
    }

    /// A grid from raw values that may repeat a level (diffusers' DPM-Solver with Karras σ
    /// and `final_sigmas_type = "sigma_min"` ends on two equal σ, up to rounding): they must
    /// be finite, ≥ 0 and non-increasing up to a relative 1e-12.
    pub fn from_values(sigmas: Vec<f64>) -> Result<Self, SampleError> {
        let ok = !sigmas.is_empty()
            && sigmas.iter().all(|s| s.is_finite() && *s >= 0.0)
            && sigmas.windows(2).all(|w| w[1] <= w[0] * (1.0 + 1e-12));
        if !ok {
            return Err(SampleError::Invalid(format!(
                "noise levels must be finite, >= 0 and non-increasing: {sigmas:?}"
            )));
        }
        Ok(Self {
            sigmas,
            timesteps: None,
            init_noise_sigma: None,
        })
    }

    /// The same grid, evaluating the model at `timesteps[i]` for `sigmas[i]` (one per
    /// level, or one per level but the last 0).
    ///
    /// # Panics
    /// If the lengths do not fit (a programming error of the caller).
    pub fn with_timesteps(mut self, timesteps: Vec<f64>) -> Self {
        assert!(
            timesteps.len() == self.sigmas.len() || timesteps.len() + 1 == self.sigmas.len(),
            "{} timesteps for {} noise levels",
            timesteps.len(),
            self.sigmas.len()
        );
        self.timesteps = Some(timesteps);
        self
    }

    /// The same grid with the initial noise scaled by `sigma` instead of σ₀ (diffusers'
    /// `init_noise_sigma` with `leading` spacing is √(σ₀² + 1)).
    pub fn with_init_noise_sigma(mut self, sigma: f64) -> Self {
        self.init_noise_sigma = Some(sigma);
        self
    }

    /// σᵢ.
    pub fn sigma(&self, i: usize) -> f64 {
        self.sigmas[i]
    }

    /// All noise levels.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// The number of steps (levels − 1).
    pub fn steps(&self) -> usize {
        self.sigmas.len() - 1
    }

    /// The level of σᵢ, with its timestep when the grid has them.
    pub fn level(&self, i: usize) -> NoiseLevel {
        let level = NoiseLevel::ve(self.sigmas[i]);
        match self.timesteps.as_ref().and_then(|t| t.get(i)) {
            Some(&t) => level.with_timestep(t),
            None => level,
        }
    }

    /// The standard deviation of the initial noise.
    pub fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma.unwrap_or(self.sigmas[0])
    }
}

/// A VE-grid sampler run in variance-preserving coordinates x_VP = x_VE/√(1 + σ²), as
/// diffusers' DPM-Solver and UniPC schedulers hold their samples: the initial noise is
/// standard (init σ = 1), and the result at a final σ > 0 is returned VP-scaled.
pub struct InVpCoordinates {
    inner: Box<dyn Sampler>,
    sigmas: Vec<f64>,
}

impl InVpCoordinates {
    /// Wraps `inner`, whose grid is `sigmas`.
    pub fn new(inner: Box<dyn Sampler>, sigmas: Vec<f64>) -> Self {
        Self { inner, sigmas }
    }

    fn scale(&self, i: usize) -> f64 {
        let s = self.sigmas[i.min(self.sigmas.len() - 1)];
        (1.0 + s * s).sqrt()
    }
}

impl Sampler for InVpCoordinates {
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn sample_observed(
        &self,
        denoiser: &dyn Denoiser,
        x: Tensor<2>,
        noise: &mut dyn NoiseSource,
        observer: Observer<'_>,
    ) -> Result<SampleOutput, SampleError> {
        let mut vp_observer = |i: usize, x: &Tensor<2>| observer(i, &x.clone().div_scalar(self.scale(i + 1)));
        let out =
            self.inner
                .sample_observed(denoiser, x.mul_scalar(self.scale(0)), noise, &mut vp_observer)?;
        let last = self.sigmas.len() - 1;
        Ok(SampleOutput {
            x: out.x.div_scalar(self.scale(last)),
            nfe: out.nfe,
        })
    }
}

/// The probability-flow ODE derivative dx/dσ = (x − D)/σ (k-diffusion's `to_d`).
pub fn to_d(x: Tensor<2>, sigma: f64, denoised: Tensor<2>) -> Tensor<2> {
    (x - denoised).div_scalar(sigma)
}

/// The ancestral split of a step σ_from → σ_to (k-diffusion's `get_ancestral_step`): go
/// down deterministically to σ_down, then add fresh noise of standard deviation σ_up, with
/// σ_up = min(σ_to, η σ_to √(σ_from² − σ_to²)/σ_from) and σ_down² + σ_up² = σ_to². At η = 1
/// this is DDPM's posterior step; at η = 0 it is deterministic.
pub fn ancestral_step(sigma_from: f64, sigma_to: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 {
        return (sigma_to, 0.0);
    }
    let up = (eta
        * (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to)
            / (sigma_from * sigma_from))
            .sqrt())
    .min(sigma_to);
    let down = (sigma_to * sigma_to - up * up).sqrt();
    (down, up)
}

/// Stochastic "churn" (Karras et al. 2022, Algorithm 2, lines 4–6): raise σᵢ to
/// σ̂ = (1 + γ) σᵢ by adding noise of standard deviation S_noise √(σ̂² − σᵢ²), with
/// γ = min(S_churn/N, √2 − 1) for σᵢ ∈ [S_tmin, S_tmax] and 0 elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Churn {
    /// S_churn: the total amount of stochasticity (0 turns it off).
    pub s_churn: f64,
    /// S_tmin: the lowest σ that is churned.
    pub s_tmin: f64,
    /// S_tmax: the highest σ that is churned.
    pub s_tmax: f64,
    /// S_noise: the standard deviation of the added noise, slightly above 1 in EDM.
    pub s_noise: f64,
}

impl Default for Churn {
    /// No churn: the deterministic samplers (EDM Algorithm 1).
    fn default() -> Self {
        Self {
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f64::INFINITY,
            s_noise: 1.0,
        }
    }
}

impl Churn {
    /// γᵢ for σᵢ on a grid of `steps` steps.
    pub fn gamma(&self, sigma: f64, steps: usize) -> f64 {
        if self.s_tmin <= sigma && sigma <= self.s_tmax {
            (self.s_churn / steps as f64).min(std::f64::consts::SQRT_2 - 1.0)
        } else {
            0.0
        }
    }

    /// Applies the churn at σᵢ, returning (x̂, σ̂). When churn is on, one noise draw is made
    /// at every step, used or not, as k-diffusion does, so noise streams stay aligned.
    pub fn apply(
        &self,
        x: Tensor<2>,
        sigma: f64,
        steps: usize,
        noise: &mut dyn NoiseSource,
    ) -> (Tensor<2>, f64) {
        if self.s_churn <= 0.0 {
            return (x, sigma);
        }
        let gamma = self.gamma(sigma, steps);
        let z = noise_like(noise, &x);
        let sigma_hat = sigma * (gamma + 1.0);
        if gamma > 0.0 {
            let std = self.s_noise * (sigma_hat * sigma_hat - sigma * sigma).sqrt();
            (x + z.mul_scalar(std), sigma_hat)
        } else {
            (x, sigma_hat)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestral_split_preserves_the_target_variance() {
        let (down, up) = ancestral_step(10.0, 4.0, 1.0);
        assert!((down * down + up * up - 16.0).abs() < 1e-12);
        assert!((up - (16.0f64 * (100.0 - 16.0) / 100.0).sqrt()).abs() < 1e-12);
        assert_eq!(ancestral_step(10.0, 4.0, 0.0), (4.0, 0.0));
        assert_eq!(ancestral_step(1.0, 0.0, 1.0), (0.0, 0.0));
    }

    #[test]
    fn churn_gamma_is_capped_and_windowed() {
        let c = Churn {
            s_churn: 40.0,
            s_tmin: 0.05,
            s_tmax: 50.0,
            s_noise: 1.003,
        };
        assert_eq!(c.gamma(10.0, 18), std::f64::consts::SQRT_2 - 1.0);
        assert_eq!(c.gamma(80.0, 18), 0.0);
        assert_eq!(c.gamma(0.01, 18), 0.0);
        let c = Churn { s_churn: 1.0, ..c };
        assert!((c.gamma(10.0, 10) - 0.1).abs() < 1e-15);
    }
}
