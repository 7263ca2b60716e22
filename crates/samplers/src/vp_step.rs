//! The generalised DDIM step between two timesteps of a VP schedule (Song et al. 2021,
//! eq. 12), shared by DDIM(η) and DDPM ancestral sampling:
//!
//! x_{t−1} = √ᾱ_{t−1} x̂₀ + √(1 − ᾱ_{t−1} − c²) ε̂ + s·z,
//!
//! with x̂₀ the denoiser's estimate, ε̂ = (x_t − √ᾱ_t x̂₀)/√(1 − ᾱ_t), c the spread that sets
//! the mean and s the standard deviation of the fresh noise z. DDIM takes c = s = η·σ̃_t;
//! DDPM takes c = σ̃_t, the posterior standard deviation, and s by its variance type (Ho et
//! al. 2020, eq. 7: σ̃²_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) · β_t).

use burn::tensor::Tensor;
use diffusion_schedules::DiscreteSchedule;

/// One step from timestep t to the previous one, t' < t.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VpStep {
    /// The timestep t the model is evaluated at.
    pub timestep: f64,
    /// ᾱ_t.
    pub alpha_bar: f64,
    /// ᾱ_{t'} (1 for a final step onto the data).
    pub alpha_bar_prev: f64,
    /// Whether fresh noise is added after this step.
    pub add_noise: bool,
}

impl VpStep {
    /// The effective β of the step, 1 − ᾱ_t/ᾱ_{t'} (β_t itself for consecutive timesteps).
    pub fn beta(&self) -> f64 {
        1.0 - self.alpha_bar / self.alpha_bar_prev
    }

    /// The posterior variance σ̃² = (1 − ᾱ_{t'})/(1 − ᾱ_t) · β, floored at 1e-20 as diffusers does.
    pub fn posterior_variance(&self) -> f64 {
        ((1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar) * self.beta()).max(1e-20)
    }
}

/// Steps through `timesteps` (decreasing) of `schedule`, each to the next one, the last onto
/// the data (ᾱ = 1); noise is added after every step but the last.
pub fn successive_steps(schedule: &DiscreteSchedule, timesteps: &[usize]) -> Vec<VpStep> {
    let ab = schedule.alphas_cumprod();
    timesteps
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let prev = timesteps.get(i + 1).map(|&p| ab[p]).unwrap_or(1.0);
            VpStep {
                timestep: t as f64,
                alpha_bar: ab[t],
                alpha_bar_prev: prev,
                add_noise: i + 1 < timesteps.len(),
            }
        })
        .collect()
}

/// The generalised DDIM update (module documentation), given x̂₀ and ε̂; `scaled_noise` is
/// the fresh-noise term s·z, already scaled.
pub fn generalized_step(
    step: &VpStep,
    x0: Tensor<2>,
    eps: Tensor<2>,
    mean_spread: f64,
    scaled_noise: Option<Tensor<2>>,
) -> Tensor<2> {
    let direction = (1.0 - step.alpha_bar_prev - mean_spread * mean_spread)
        .max(0.0)
        .sqrt();
    let mean = x0.mul_scalar(step.alpha_bar_prev.sqrt()) + eps.mul_scalar(direction);
    match scaled_noise {
        Some(noise) => mean + noise,
        None => mean,
    }
}
