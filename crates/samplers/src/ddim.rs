//! DDIM(η) sampling (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12 and 16):
//! η = 0 is the deterministic DDIM, η = 1 is DDPM's ancestral sampler on the same steps.

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;
use diffusion_ddpm::X0Clip;

use crate::denoiser::{Counted, Denoiser, eps_from_x0};
use crate::level::NoiseLevel;
use crate::sampler::{Observer, SampleError, SampleOutput, Sampler, noise_like};
use crate::vp_step::{VpStep, generalized_step};

/// The DDIM sampler over a list of VP steps.
#[derive(Clone, Debug, PartialEq)]
pub struct Ddim {
    /// The steps, from the noisiest.
    pub steps: Vec<VpStep>,
    /// η: 0 deterministic, 1 ancestral.
    pub eta: f64,
    /// Keep x̂₀ in range: static clipping (diffusers' `clip_sample`) or dynamic thresholding.
    pub clip_sample: Option<X0Clip>,
}

impl Ddim {
    /// DDIM with spread η on `steps`, without clipping.
    pub fn new(steps: Vec<VpStep>, eta: f64) -> Self {
        Self {
            steps,
            eta,
            clip_sample: None,
        }
    }

    /// The spread σ_t(η) = η √((1 − ᾱ_{t−1})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1}) (eq. 16).
    pub fn spread(&self, step: &VpStep) -> f64 {
        self.eta * step.posterior_variance().sqrt()
    }
}

impl Sampler for Ddim {
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
            let x0 = counted.denoise(x.clone(), level);
            // ε̂ comes from the unclipped x̂₀, as diffusers' model output does.
            let eps = eps_from_x0(x, x0.clone(), &level);
            let x0 = clip(x0, self.clip_sample);
            let spread = self.spread(step);
            let z = (step.add_noise && spread > 0.0).then(|| noise_like(noise, &eps).mul_scalar(spread));
            x = generalized_step(step, x0, eps, spread, z);
            observer(i, &x);
        }
        Ok(SampleOutput {
            x,
            nfe: counted.nfe(),
        })
    }
}

/// x̂₀ kept in range when clipping is on.
pub(crate) fn clip(x0: Tensor<2>, clip: Option<X0Clip>) -> Tensor<2> {
    match clip {
        Some(c) => c.apply(x0),
        None => x0,
    }
}
