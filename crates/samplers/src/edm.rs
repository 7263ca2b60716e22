//! The deterministic σ-grid samplers with optional churn: Euler, Heun and DPM-Solver-2
//! (Karras et al. 2022, Algorithms 1 and 2; k-diffusion's `sample_euler`, `sample_heun`,
//! `sample_dpm_2`).

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;

use crate::denoiser::{Clipped, Counted, Denoiser};
use crate::level::NoiseLevel;
use crate::sampler::{Observer, SampleError, SampleOutput, Sampler};
use crate::single_step::OdeMethod;
use crate::ve::{Churn, VeGrid};

/// Euler, Heun or DPM-2 on a σ grid, optionally with EDM's stochastic churn.
///
/// With `churn` off this is EDM Algorithm 1 (Heun) or its first-order (Euler) and
/// midpoint (DPM-2) variants; with churn on, Algorithm 2. NFE: one per step, plus one per
/// step but the last (σ' = 0) for Heun and DPM-2.
#[derive(Clone, Debug, PartialEq)]
pub struct EdmSampler {
    /// The noise levels (usually ending in 0).
    pub grid: VeGrid,
    /// The ODE method of each step.
    pub method: OdeMethod,
    /// Stochastic churn (off by default).
    pub churn: Churn,
    /// Keep the denoised estimates in range (diffusers Heun's `clip_sample`).
    pub clip_sample: Option<diffusion_ddpm::X0Clip>,
}

impl EdmSampler {
    /// The deterministic sampler of `method` on `grid`.
    pub fn new(grid: impl Into<VeGrid>, method: OdeMethod) -> Self {
        Self {
            grid: grid.into(),
            method,
            churn: Churn::default(),
            clip_sample: None,
        }
    }

    /// The same sampler with churn.
    pub fn with_churn(mut self, churn: Churn) -> Self {
        self.churn = churn;
        self
    }
}

impl Sampler for EdmSampler {
    fn init_noise_sigma(&self) -> f64 {
        self.grid.init_noise_sigma()
    }

    fn sample_observed(
        &self,
        denoiser: &dyn Denoiser,
        mut x: Tensor<2>,
        noise: &mut dyn NoiseSource,
        observer: Observer<'_>,
    ) -> Result<SampleOutput, SampleError> {
        let clipped = self.clip_sample.map(|c| Clipped::new(denoiser, c));
        let counted = Counted::new(clipped.as_ref().map_or(denoiser, |c| c as &dyn Denoiser));
        let steps = self.grid.steps();
        for i in 0..steps {
            let sigma = self.grid.sigma(i);
            let (x_hat, sigma_hat) = self.churn.apply(x, sigma, steps, noise);
            let level = if sigma_hat == sigma {
                self.grid.level(i)
            } else {
                NoiseLevel::ve(sigma_hat)
            };
            let denoised = counted.denoise(x_hat.clone(), level);
            x = self
                .method
                .step(&counted, x_hat, sigma_hat, denoised, self.grid.level(i + 1));
            observer(i, &x);
        }
        Ok(SampleOutput {
            x,
            nfe: counted.nfe(),
        })
    }
}
