//! Scores in SDE time: s(x, t) ≈ ∇ₓ log p_t(x), and the bridge from any denoiser to a score by
//! Tweedie's formula, s = (α(t) D(x) − x)/σ(t)² at the SDE's marginal level (α(t), σ(t)).

use burn::tensor::Tensor;
use diffusion_samplers::{Denoiser, NoiseLevel};

use crate::sde::Sde;

/// A score function of the SDE's time.
pub trait ScoreFn {
    /// s(x, t).
    fn score(&self, x: Tensor<2>, t: f64) -> Tensor<2>;
}

impl<F: Fn(Tensor<2>, f64) -> Tensor<2>> ScoreFn for F {
    fn score(&self, x: Tensor<2>, t: f64) -> Tensor<2> {
        self(x, t)
    }
}

/// The score of a denoiser at the marginal noise levels of an SDE.
pub struct DenoiserScore<'a> {
    denoiser: &'a dyn Denoiser,
    sde: &'a Sde,
}

impl<'a> DenoiserScore<'a> {
    /// The score of `denoiser` in the time of `sde`.
    pub fn new(denoiser: &'a dyn Denoiser, sde: &'a Sde) -> Self {
        Self { denoiser, sde }
    }

    /// The noise level of time t.
    pub fn level(&self, t: f64) -> NoiseLevel {
        let (alpha, sigma) = self.sde.marginal(t);
        NoiseLevel {
            alpha,
            sigma,
            timestep: None,
        }
    }
}

impl ScoreFn for DenoiserScore<'_> {
    fn score(&self, x: Tensor<2>, t: f64) -> Tensor<2> {
        let level = self.level(t);
        let d = self.denoiser.denoise(x.clone(), level);
        (d.mul_scalar(level.alpha) - x).div_scalar(level.sigma * level.sigma)
    }
}
