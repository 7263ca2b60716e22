//! Flow-matching views of a denoiser, and flow models seen as denoisers.
//!
//! On the linear path between data x₀ and noise ε there are two conventions:
//! - **noise → data** (Lipman et al. 2023; torchcfm): x_t = t x₁ + (1 − t) ε with data x₁ at
//!   t = 1, velocity u = E[x₁ − ε | x_t];
//! - **data → noise** (rectified flow as in SD3 / diffusers' `FlowMatchEulerDiscreteScheduler`):
//!   x_s = (1 − s) x₀ + s ε with noise at s = 1, velocity v = dx/ds = E[ε − x₀ | x_s] = −u.
//!
//! With D = E[data | x] (the denoiser at α = data coefficient, σ = noise coefficient) and
//! ε̂ = (x − α D)/σ, the velocity is D − ε̂ (noise → data). At σ = 0 the noise is independent
//! of x, so ε̂ = E(ε) = 0 and the velocity is D.

use burn::tensor::Tensor;
use diffusion_core::tensor::from_f64_like;
use serde::{Deserialize, Serialize};

use crate::denoiser::Denoiser;
use crate::level::NoiseLevel;

/// Which way a flow's time runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowConvention {
    /// t = 0 is noise, t = 1 is data; the model predicts x₁ − ε.
    #[default]
    NoiseToData,
    /// s = 0 is data, s = 1 is noise; the model predicts ε − x₀ (diffusers, SD3).
    DataToNoise,
}

impl FlowConvention {
    /// The noise level of time `t` on the linear path.
    pub fn level(self, t: f64) -> NoiseLevel {
        match self {
            Self::NoiseToData => NoiseLevel {
                alpha: t,
                sigma: 1.0 - t,
                timestep: None,
            },
            Self::DataToNoise => NoiseLevel::flow(t),
        }
    }

    /// The time of a noise level (brought onto the path by dividing by α + σ).
    pub fn time(self, level: &NoiseLevel) -> f64 {
        let s = level.sigma / (level.alpha + level.sigma);
        match self {
            Self::NoiseToData => 1.0 - s,
            Self::DataToNoise => s,
        }
    }
}

/// The velocity of the flow ODE at (x, `level`) in `convention`, from a denoiser.
pub fn velocity(
    denoiser: &dyn Denoiser,
    x: Tensor<2>,
    level: NoiseLevel,
    convention: FlowConvention,
) -> Tensor<2> {
    let denoised = denoiser.denoise(x.clone(), level);
    let u = if level.sigma == 0.0 {
        denoised
    } else {
        let eps = (x - denoised.clone().mul_scalar(level.alpha)).div_scalar(level.sigma);
        denoised - eps
    };
    match convention {
        FlowConvention::NoiseToData => u,
        FlowConvention::DataToNoise => u.neg(),
    }
}

/// A network that predicts the velocity of the linear path, called as `model(x, t)` with
/// `t = time · time_scale` (diffusers' SD3 transformer takes s · 1000), seen as a denoiser:
/// D = x + (1 − t) u (noise → data) or D = x − s v (data → noise).
pub struct FlowModel<F> {
    model: F,
    convention: FlowConvention,
    time_scale: f64,
}

impl<F> FlowModel<F>
where
    F: Fn(Tensor<2>, Tensor<1>) -> Tensor<2>,
{
    /// Wraps a velocity model.
    pub fn new(model: F, convention: FlowConvention, time_scale: f64) -> Self {
        Self {
            model,
            convention,
            time_scale,
        }
    }
}

impl<F> Denoiser for FlowModel<F>
where
    F: Fn(Tensor<2>, Tensor<1>) -> Tensor<2>,
{
    fn denoise(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2> {
        // Bring x onto the path: x/(α + σ) = α' x₀ + σ' ε with α' + σ' = 1.
        let x = x.div_scalar(level.alpha + level.sigma);
        let time = self.convention.time(&level);
        let t = level.timestep.unwrap_or(time * self.time_scale);
        let n = x.dims()[0];
        let out = (self.model)(x.clone(), from_f64_like(vec![t; n], [n], &x));
        let noise_fraction = match self.convention {
            FlowConvention::NoiseToData => 1.0 - time,
            FlowConvention::DataToNoise => time,
        };
        match self.convention {
            FlowConvention::NoiseToData => x + out.mul_scalar(noise_fraction),
            FlowConvention::DataToNoise => x - out.mul_scalar(noise_fraction),
        }
    }
}
