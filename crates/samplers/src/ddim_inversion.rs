//! DDIM inversion (Song et al. 2021, §4.3; Mokady et al. 2023): the deterministic DDIM
//! update run from data towards noise, x_{t'} = √ᾱ_{t'} x̂₀ + √(1 − ᾱ_{t'}) ε̂ with t' > t,
//! which encodes an image into the latent that DDIM(η = 0) decodes back (approximately:
//! the ODE is discretised, so the round trip errs by O(step)).

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;
use serde::{Deserialize, Serialize};

use crate::denoiser::{Counted, Denoiser, eps_from_x0};
use crate::level::NoiseLevel;
use crate::sampler::{Observer, SampleError, SampleOutput, Sampler};

/// Where the noise prediction of an inversion step is taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InversionEval {
    /// At the step's target timestep t' (diffusers' `DDIMInverseScheduler`: the model sees
    /// x_t labelled t').
    #[default]
    Target,
    /// At the current noise level t (the explicit Euler step of the DDIM ODE).
    Current,
}

/// One inversion step from ᾱ_from (less noisy) to ᾱ_to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InversionStep {
    /// The timestep the model is told.
    pub timestep: f64,
    /// ᾱ of the current sample.
    pub alpha_bar_from: f64,
    /// ᾱ of the result.
    pub alpha_bar_to: f64,
}

/// DDIM inversion over a list of increasing-noise steps.
#[derive(Clone, Debug, PartialEq)]
pub struct DdimInversion {
    /// The steps, from the data.
    pub steps: Vec<InversionStep>,
    /// Where ε̂ is taken.
    pub eval: InversionEval,
    /// Clamp x̂₀ to [−c, c] (ε̂ is kept, as diffusers does).
    pub clip_sample: Option<diffusion_ddpm::X0Clip>,
}

impl Sampler for DdimInversion {
    /// The input is data: no noise scale.
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn sample_observed(
        &self,
        denoiser: &dyn Denoiser,
        mut x: Tensor<2>,
        _noise: &mut dyn NoiseSource,
        observer: Observer<'_>,
    ) -> Result<SampleOutput, SampleError> {
        let counted = Counted::new(denoiser);
        for (i, step) in self.steps.iter().enumerate() {
            let eval = match self.eval {
                InversionEval::Target => NoiseLevel::vp(step.alpha_bar_to),
                InversionEval::Current => NoiseLevel::vp(step.alpha_bar_from),
            }
            .with_timestep(step.timestep);
            let eps = eps_from_x0(x.clone(), counted.denoise(x.clone(), eval), &eval);
            let (a_from, s_from) = (step.alpha_bar_from.sqrt(), (1.0 - step.alpha_bar_from).sqrt());
            let x0 = crate::ddim::clip(
                (x - eps.clone().mul_scalar(s_from)).div_scalar(a_from),
                self.clip_sample,
            );
            x = x0.mul_scalar(step.alpha_bar_to.sqrt()) + eps.mul_scalar((1.0 - step.alpha_bar_to).sqrt());
            observer(i, &x);
        }
        Ok(SampleOutput {
            x,
            nfe: counted.nfe(),
        })
    }
}
