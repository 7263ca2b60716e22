//! Velocity fields v(x, t) of flows from noise (t = 0) to data (t = 1), and the bridges to
//! and from the denoiser interface, for any [`AffinePath`]:
//!
//! - a denoiser D(x; α, σ) = E[x₁ | x] gives the marginal velocity of the path,
//!   v = ȧ x̂₁ + ḃ x̂₀ with x̂₁ = D(x; a(t), b(t)) and x̂₀ = (x − a x̂₁)/b ([`DenoiserVelocity`]);
//! - a velocity model gives a denoiser at any noise level (α, σ): the time t with
//!   a(t)/b(t) = α/σ, the input brought onto the path by x·a/α, and x̂₁ solved from
//!   v = ȧ x̂₁ + (ḃ/b)(x − a x̂₁) ([`VelocityDenoiser`]), so every sampler of
//!   `diffusion-samplers` runs on a flow model.

use burn::tensor::Tensor;
use diffusion_core::tensor::from_f64_like;
use diffusion_samplers::{Denoiser, FixedStep, NoiseLevel, OdeSystem};

use crate::path::AffinePath;

/// A velocity field of flow time.
pub trait VelocityField {
    /// v(x, t) for a batch at one time.
    fn velocity(&self, x: Tensor<2>, t: f64) -> Tensor<2>;
}

/// A network called as `model(x, t)` with one time per sample, as a velocity field.
pub struct VelocityModel<F>(pub F);

impl<F: Fn(Tensor<2>, Tensor<1>) -> Tensor<2>> VelocityField for VelocityModel<F> {
    fn velocity(&self, x: Tensor<2>, t: f64) -> Tensor<2> {
        let [n, _] = x.dims();
        let t = from_f64_like(vec![t; n], [n], &x);
        (self.0)(x, t)
    }
}

/// The noise level (α, σ) = (a(t), b(t)) of a path at time t.
pub fn path_level(path: &AffinePath, t: f64) -> NoiseLevel {
    let c = path.coefficients(t);
    NoiseLevel {
        alpha: c.a,
        sigma: c.b,
        timestep: None,
    }
}

/// The marginal velocity of `path` from a denoiser of its data.
pub struct DenoiserVelocity<'a> {
    /// The denoiser, E[x₁ | x] at (α, σ).
    pub denoiser: &'a dyn Denoiser,
    /// The path.
    pub path: AffinePath,
}

impl VelocityField for DenoiserVelocity<'_> {
    fn velocity(&self, x: Tensor<2>, t: f64) -> Tensor<2> {
        let c = self.path.coefficients(t);
        let x1 = self.denoiser.denoise(x.clone(), path_level(&self.path, t));
        if c.b == 0.0 {
            // x₀ no longer moves x: its best estimate is its mean, 0.
            return x1.mul_scalar(c.da);
        }
        let x0 = (x - x1.clone().mul_scalar(c.a)).div_scalar(c.b);
        x1.mul_scalar(c.da) + x0.mul_scalar(c.db)
    }
}

/// A velocity field of `path` seen as a denoiser at any noise level.
pub struct VelocityDenoiser<'a> {
    /// The velocity field.
    pub field: &'a dyn VelocityField,
    /// The path it was trained on.
    pub path: AffinePath,
}

impl Denoiser for VelocityDenoiser<'_> {
    fn denoise(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2> {
        if level.sigma == 0.0 {
            return x.div_scalar(level.alpha);
        }
        let t = self.path.time_of_ratio(level.alpha / level.sigma);
        let c = self.path.coefficients(t);
        // Onto the path: x_path = x (a/α) (= x b/σ, the same ratio).
        let x_path = x.mul_scalar(c.b / level.sigma);
        let v = self.field.velocity(x_path.clone(), t);
        let gain = c.da - c.db * c.a / c.b;
        (v - x_path.mul_scalar(c.db / c.b)).div_scalar(gain)
    }
}

/// The flow ODE dx/dt = v(x, t).
pub struct FlowOde<'a>(pub &'a dyn VelocityField);

impl OdeSystem for FlowOde<'_> {
    fn derivative(&self, x: Tensor<2>, t: f64) -> Tensor<2> {
        self.0.velocity(x, t)
    }
}

/// Integrates the flow from t = 0 to 1 in `steps` uniform steps of `method`.
pub fn integrate_flow(
    field: &dyn VelocityField,
    x0: Tensor<2>,
    method: FixedStep,
    steps: usize,
) -> Tensor<2> {
    let times: Vec<f64> = (0..=steps).map(|i| i as f64 / steps as f64).collect();
    method.integrate(&FlowOde(field), x0, &times)
}
