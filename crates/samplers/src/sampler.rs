//! What every sampler returns, and the trait they share.

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;

use crate::denoiser::Denoiser;

/// The result of a sampling run.
#[derive(Clone, Debug)]
pub struct SampleOutput {
    /// The final samples, `[n, features]`.
    pub x: Tensor<2>,
    /// The number of denoiser evaluations (function evaluations, NFE).
    pub nfe: usize,
}

/// A sampling run that could not complete.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SampleError {
    /// An adaptive ODE solver gave up.
    #[error(transparent)]
    Ode(#[from] crate::ode::OdeError),
    /// The sampler's settings do not fit the input.
    #[error("{0}")]
    Invalid(String),
}

/// Called after every step with the step index and the current samples.
pub type Observer<'a> = &'a mut dyn FnMut(usize, &Tensor<2>);

/// A sampler: turns initial noise into samples by repeated calls to a denoiser.
pub trait Sampler {
    /// The standard deviation the initial noise must have: `x_init = z · init_noise_sigma()`
    /// for standard normal z (1 for VP samplers, σ_max for VE grids).
    fn init_noise_sigma(&self) -> f64;

    /// Runs the sampler from `x` (already scaled by [`init_noise_sigma`](Self::init_noise_sigma)),
    /// calling `observer` after every step. Stochastic samplers draw their noise from `noise`,
    /// in a documented order, so that a run is reproducible and sample i does not depend on
    /// the rest of the batch.
    fn sample_observed(
        &self,
        denoiser: &dyn Denoiser,
        x: Tensor<2>,
        noise: &mut dyn NoiseSource,
        observer: Observer<'_>,
    ) -> Result<SampleOutput, SampleError>;

    /// Runs the sampler from `x` (see [`sample_observed`](Self::sample_observed)).
    fn sample(
        &self,
        denoiser: &dyn Denoiser,
        x: Tensor<2>,
        noise: &mut dyn NoiseSource,
    ) -> Result<SampleOutput, SampleError> {
        self.sample_observed(denoiser, x, noise, &mut |_, _| {})
    }
}

/// A sampler whose denoiser's estimates are kept in range (clipped or dynamically
/// thresholded) before the sampler sees them — how diffusers' multistep solvers apply
/// `thresholding` to their data predictions.
pub struct WithClippedDenoiser {
    /// The sampler.
    pub inner: Box<dyn Sampler>,
    /// How x̂₀ is kept in range.
    pub clip: diffusion_ddpm::X0Clip,
}

impl Sampler for WithClippedDenoiser {
    fn init_noise_sigma(&self) -> f64 {
        self.inner.init_noise_sigma()
    }

    fn sample_observed(
        &self,
        denoiser: &dyn Denoiser,
        x: Tensor<2>,
        noise: &mut dyn NoiseSource,
        observer: Observer<'_>,
    ) -> Result<SampleOutput, SampleError> {
        let clipped = crate::denoiser::Clipped::new(denoiser, self.clip);
        self.inner.sample_observed(&clipped, x, noise, observer)
    }
}

/// Standard normal noise shaped and typed like `x`.
pub(crate) fn noise_like(noise: &mut dyn NoiseSource, x: &Tensor<2>) -> Tensor<2> {
    let [n, f] = x.dims();
    noise.normal_tensor(n, f, &x.device(), x.dtype())
}
