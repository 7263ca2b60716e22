//! DDPM ancestral sampling (Ho et al. 2020, Algorithm 2): each step draws from the
//! posterior q(x_{t−1} | x_t, x̂₀), whose mean is the generalised DDIM step with c = σ̃_t
//! and whose variance is fixed (small: σ̃²_t; large: β_t).

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;
use serde::{Deserialize, Serialize};

use crate::ddim::clip;
use crate::denoiser::{Counted, Denoiser, eps_from_x0};
use crate::level::NoiseLevel;
use crate::sampler::{Observer, SampleError, SampleOutput, Sampler, noise_like};
use crate::vp_step::{VpStep, generalized_step};

/// The variance of the reverse step (diffusers' `variance_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    /// σ̃²_t, the variance of the true posterior (the lower bound of Ho et al.).
    #[default]
    FixedSmall,
    /// σ̃²_t, computed through its logarithm.
    FixedSmallLog,
    /// β_t (the upper bound).
    FixedLarge,
    /// β_t, computed through its logarithm.
    FixedLargeLog,
}

impl VarianceType {
    /// The standard deviation of the noise of `step`.
    pub fn std(self, step: &VpStep) -> f64 {
        match self {
            Self::FixedSmall => step.posterior_variance().sqrt(),
            Self::FixedSmallLog => (0.5 * step.posterior_variance().ln()).exp(),
            Self::FixedLarge => step.beta().sqrt(),
            Self::FixedLargeLog => (0.5 * step.beta().ln()).exp(),
        }
    }
}

/// The DDPM ancestral sampler over a list of VP steps.
#[derive(Clone, Debug, PartialEq)]
pub struct Ddpm {
    /// The steps, from the noisiest.
    pub steps: Vec<VpStep>,
    /// The reverse-step variance.
    pub variance: VarianceType,
    /// Clamp x̂₀ to [−c, c] (diffusers' `clip_sample`).
    pub clip_sample: Option<f64>,
}

impl Ddpm {
    /// DDPM with fixed-small variance and no clipping.
    pub fn new(steps: Vec<VpStep>) -> Self {
        Self {
            steps,
            variance: VarianceType::FixedSmall,
            clip_sample: None,
        }
    }
}

impl Sampler for Ddpm {
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn sample_observed(
        &self,
        denoiser: &dyn Denoiser,
        mut x: Tensor<2>,
        noise: &mut dyn NoiseSource,
        observer: Observer<'_>,
    ) -> Result<SampleOutput, SampleError> {
        let counted = Counted::new(denoiser);
        for (i, step) in self.steps.iter().enumerate() {
            let level = NoiseLevel::vp(step.alpha_bar).with_timestep(step.timestep);
            let x0 = clip(counted.denoise(x.clone(), level), self.clip_sample);
            // The posterior mean is linear in (x̂₀, x_t); ε̂ from the clipped x̂₀ keeps it so.
            let eps = eps_from_x0(x, x0.clone(), &level);
            let spread = step.posterior_variance().sqrt();
            let z = step
                .add_noise
                .then(|| (noise_like(noise, &eps), self.variance.std(step)));
            x = generalized_step(step, x0, eps, spread, z);
            observer(i, &x);
        }
        Ok(SampleOutput {
            x,
            nfe: counted.nfe(),
        })
    }
}
