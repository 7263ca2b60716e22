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
    /// The network's variance head is ln Σ (improved-diffusion's `learned`).
    Learned,
    /// The network's variance head v ∈ [−1, 1] interpolates the logarithms:
    /// ln Σ = ((v + 1)/2) ln β_t + (1 − (v + 1)/2) ln β̃_t (Nichol & Dhariwal 2021, eq. 15).
    LearnedRange,
}

impl VarianceType {
    /// Whether the network must have a variance head.
    pub fn is_learned(self) -> bool {
        matches!(self, Self::Learned | Self::LearnedRange)
    }

    /// The standard deviation of the noise of a fixed-variance `step`.
    pub fn std(self, step: &VpStep) -> f64 {
        match self {
            Self::FixedSmall => step.posterior_variance().sqrt(),
            Self::FixedSmallLog => (0.5 * step.posterior_variance().ln()).exp(),
            Self::FixedLarge => step.beta().sqrt(),
            Self::FixedLargeLog => (0.5 * step.beta().ln()).exp(),
            Self::Learned | Self::LearnedRange => f64::NAN,
        }
    }

    /// The elementwise standard deviation of a learned variance from the network's head;
    /// `clipped_log_posterior` is ln β̃ of the step, clipped as improved-diffusion does.
    fn learned_std(self, head: Tensor<2>, step: &VpStep, clipped_log_posterior: f64) -> Tensor<2> {
        let log_var = match self {
            Self::Learned => head,
            _ => {
                let (min_log, max_log) = (clipped_log_posterior, step.beta().ln());
                head.add_scalar(1.0)
                    .mul_scalar(0.5 * (max_log - min_log))
                    .add_scalar(min_log)
            }
        };
        log_var.mul_scalar(0.5).exp()
    }
}

/// ln β̃ of each step, where the last step (β̃ = 0 onto the data) takes the value of the step
/// before it, as improved-diffusion's `posterior_log_variance_clipped`.
fn clipped_log_posteriors(steps: &[VpStep]) -> Vec<f64> {
    let mut v: Vec<f64> = steps.iter().map(|s| s.posterior_variance().ln()).collect();
    let n = v.len();
    if n > 1 && steps[n - 1].alpha_bar_prev == 1.0 {
        v[n - 1] = v[n - 2];
    }
    v
}

/// The DDPM ancestral sampler over a list of VP steps.
#[derive(Clone, Debug, PartialEq)]
pub struct Ddpm {
    /// The steps, from the noisiest.
    pub steps: Vec<VpStep>,
    /// The reverse-step variance.
    pub variance: VarianceType,
    /// Keep x̂₀ in range: static clipping (diffusers' `clip_sample`) or dynamic thresholding.
    pub clip_sample: Option<diffusion_ddpm::X0Clip>,
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
        let clipped = clipped_log_posteriors(&self.steps);
        for (i, step) in self.steps.iter().enumerate() {
            let level = NoiseLevel::vp(step.alpha_bar).with_timestep(step.timestep);
            let (x0, head) = if self.variance.is_learned() {
                let (x0, head) = counted.denoise_with_variance(x.clone(), level);
                let head = head.ok_or_else(|| {
                    SampleError::Invalid(format!(
                        "variance {:?} is learned but the denoiser has no variance head \
                         (wrap the network with DiscreteModel::with_learned_variance)",
                        self.variance
                    ))
                })?;
                (x0, Some(head))
            } else {
                (counted.denoise(x.clone(), level), None)
            };
            let x0 = clip(x0, self.clip_sample);
            // The posterior mean is linear in (x̂₀, x_t); ε̂ from the clipped x̂₀ keeps it so.
            let eps = eps_from_x0(x, x0.clone(), &level);
            let spread = step.posterior_variance().sqrt();
            let z = step.add_noise.then(|| {
                let z = noise_like(noise, &eps);
                match head {
                    Some(head) => z * self.variance.learned_std(head, step, clipped[i]),
                    None => z.mul_scalar(self.variance.std(step)),
                }
            });
            x = generalized_step(step, x0, eps, spread, z);
            observer(i, &x);
        }
        Ok(SampleOutput {
            x,
            nfe: counted.nfe(),
        })
    }
}
