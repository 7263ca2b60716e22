//! CFG++ (Chung et al. 2024, Algorithm 1): classifier-free guidance that stays on the data
//! manifold by renoising with the *unconditional* noise estimate.
//!
//! With D_λ = D_u + λ (D_c − D_u) (equivalently ε̂_λ = ε̂_u + λ (ε̂_c − ε̂_u)), λ ∈ [0, 1],
//! each DDIM step is
//!
//! x_{t−1} = √ᾱ_{t−1} D_λ(x_t) + √(1 − ᾱ_{t−1}) ε̂_u(x_t),
//!
//! where plain CFG would renoise with ε̂_λ. The step depends on the next noise level, so CFG++
//! is a sampler rather than a guided denoiser: it is the generalised DDIM step of [`vp_step`]
//! given x̂₀ = D_λ and ε̂ = ε̂_u.
//!
//! [`vp_step`]: crate::vp_step

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;

use crate::denoiser::{Counted, Denoiser, eps_from_x0};
use crate::level::NoiseLevel;
use crate::sampler::{Observer, SampleError, SampleOutput, Sampler};
use crate::vp_step::{VpStep, generalized_step};

/// CFG++ DDIM sampling; the denoiser passed to [`Sampler::sample`] is the conditional one.
pub struct CfgPlusPlus<'a> {
    /// The DDIM steps, from the noisiest.
    pub steps: Vec<VpStep>,
    /// The unconditional denoiser D_u (or the model under a negative condition).
    pub uncond: &'a dyn Denoiser,
    /// λ ∈ [0, 1] (0: unconditional DDIM; the paper uses 0.2–1.0).
    pub lambda: f64,
}

impl Sampler for CfgPlusPlus<'_> {
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// Deterministic: draws no noise. NFE counts both denoisers.
    fn sample_observed(
        &self,
        denoiser: &dyn Denoiser,
        mut x: Tensor<2>,
        _noise: &mut dyn NoiseSource,
        observer: Observer<'_>,
    ) -> Result<SampleOutput, SampleError> {
        if !(0.0..=1.0).contains(&self.lambda) {
            return Err(SampleError::Invalid(format!(
                "CFG++ takes λ in [0, 1], got {}",
                self.lambda
            )));
        }
        let cond = Counted::new(denoiser);
        let uncond = Counted::new(self.uncond);
        for (i, step) in self.steps.iter().enumerate() {
            let level = NoiseLevel::vp(step.alpha_bar).with_timestep(step.timestep);
            let d_c = cond.denoise(x.clone(), level);
            let d_u = uncond.denoise(x.clone(), level);
            let eps_u = eps_from_x0(x, d_u.clone(), &level);
            let guided = d_u.clone() + (d_c - d_u).mul_scalar(self.lambda);
            x = generalized_step(step, guided, eps_u, 0.0, None);
            observer(i, &x);
        }
        Ok(SampleOutput {
            x,
            nfe: cond.nfe() + uncond.nfe(),
        })
    }
}
