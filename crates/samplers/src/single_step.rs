//! One step of the probability-flow ODE dx/dσ = (x − D)/σ from σ to σ', by the
//! single-step methods of the literature. Every σ-grid sampler that is not multistep is one
//! of these steps in a loop ([`crate::edm`], [`crate::ancestral`]).

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::denoiser::Denoiser;
use crate::level::NoiseLevel;
use crate::ve::to_d;

/// A single-step ODE method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OdeMethod {
    /// Euler: x' = x + (σ' − σ) d (Karras et al. 2022, Algorithm 1 without line 9).
    Euler,
    /// Heun's second-order method: average the slopes at σ and at the Euler point σ'
    /// (Karras et al. 2022, Algorithm 1).
    Heun,
    /// DPM-Solver-2 (Lu et al. 2022, Algorithm 1 with r = ½ in log σ): the slope at the
    /// geometric midpoint √(σ σ') carries the whole step.
    Dpm2,
    /// DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1): in t = −ln σ, a data-prediction
    /// step to the midpoint, then the full step with the midpoint's denoised estimate.
    DpmppTwoS,
}

impl OdeMethod {
    /// The number of denoiser evaluations per step beyond the one at σ (the last step to
    /// σ' = 0 is always Euler and needs none).
    pub fn extra_evaluations(self) -> usize {
        match self {
            Self::Euler => 0,
            _ => 1,
        }
    }

    /// The step from (x, σ) with D(x, σ) = `denoised` to the level `to` (σ' = `to.sigma`,
    /// carrying the timestep of σ' when it is a grid point).
    pub fn step(
        self,
        denoiser: &dyn Denoiser,
        x: Tensor<2>,
        sigma: f64,
        denoised: Tensor<2>,
        to: NoiseLevel,
    ) -> Tensor<2> {
        let sigma_next = to.sigma;
        let d = to_d(x.clone(), sigma, denoised.clone());
        if sigma_next == 0.0 || self == Self::Euler {
            return x + d.mul_scalar(sigma_next - sigma);
        }
        match self {
            Self::Euler => unreachable!(),
            Self::Heun => {
                let x2 = x.clone() + d.clone().mul_scalar(sigma_next - sigma);
                let d2 = to_d(x2.clone(), sigma_next, denoiser.denoise(x2, to));
                x + (d + d2).mul_scalar(0.5 * (sigma_next - sigma))
            }
            Self::Dpm2 => {
                let mid = (0.5 * (sigma.ln() + sigma_next.ln())).exp();
                let x2 = x.clone() + d.mul_scalar(mid - sigma);
                let d2 = to_d(x2.clone(), mid, denoiser.denoise(x2, NoiseLevel::ve(mid)));
                x + d2.mul_scalar(sigma_next - sigma)
            }
            Self::DpmppTwoS => {
                let (t, t_next) = (-sigma.ln(), -sigma_next.ln());
                let h = t_next - t;
                let s = t + 0.5 * h;
                let sigma_s = (-s).exp();
                let x2 = x.clone().mul_scalar(sigma_s / sigma) - denoised.mul_scalar((-0.5 * h).exp_m1());
                let denoised2 = denoiser.denoise(x2, NoiseLevel::ve(sigma_s));
                x.mul_scalar((-t_next).exp() / (-t).exp()) - denoised2.mul_scalar((-h).exp_m1())
            }
        }
    }
}
