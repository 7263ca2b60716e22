//! Ancestral σ-grid samplers: each step goes deterministically from σᵢ down to σ_down and
//! then adds fresh noise of standard deviation σ_up, with σ_down² + σ_up² = σᵢ₊₁²
//! ([`ancestral_step`]). k-diffusion's `sample_euler_ancestral`, `sample_dpm_2_ancestral` and
//! `sample_dpmpp_2s_ancestral`; Euler ancestral with η is DDIM(η) in VE coordinates.

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;

use crate::denoiser::{Counted, Denoiser};
use crate::level::NoiseLevel;
use crate::sampler::{Observer, SampleError, SampleOutput, Sampler, noise_like};
use crate::single_step::OdeMethod;
use crate::ve::{VeGrid, ancestral_step};

/// An ancestral sampler: `method` for the deterministic part, then noise.
///
/// Noise: one draw per step whose target σᵢ₊₁ is positive (none on a final step to 0).
#[derive(Clone, Debug, PartialEq)]
pub struct AncestralSampler {
    /// The noise levels.
    pub grid: VeGrid,
    /// The deterministic part of each step (Euler, DPM-2 or DPM-Solver++(2S)).
    pub method: OdeMethod,
    /// η: 1 is the full ancestral step, 0 deterministic.
    pub eta: f64,
    /// A factor on the added noise.
    pub s_noise: f64,
}

impl AncestralSampler {
    /// The ancestral sampler of `method` with η = 1.
    pub fn new(grid: impl Into<VeGrid>, method: OdeMethod) -> Self {
        Self {
            grid: grid.into(),
            method,
            eta: 1.0,
            s_noise: 1.0,
        }
    }

    /// The same sampler with spread η.
    pub fn with_eta(mut self, eta: f64) -> Self {
        self.eta = eta;
        self
    }
}

impl Sampler for AncestralSampler {
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
        let counted = Counted::new(denoiser);
        for i in 0..self.grid.steps() {
            let (sigma, sigma_next) = (self.grid.sigma(i), self.grid.sigma(i + 1));
            let denoised = counted.denoise(x.clone(), self.grid.level(i));
            let (down, up) = ancestral_step(sigma, sigma_next, self.eta);
            let to = if down == sigma_next {
                self.grid.level(i + 1)
            } else {
                NoiseLevel::ve(down)
            };
            x = self.method.step(&counted, x, sigma, denoised, to);
            if sigma_next > 0.0 {
                let z = noise_like(noise, &x);
                x = x + z.mul_scalar(self.s_noise * up);
            }
            observer(i, &x);
        }
        Ok(SampleOutput {
            x,
            nfe: counted.nfe(),
        })
    }
}
