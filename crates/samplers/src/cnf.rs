//! The instantaneous change of variables (Chen et al. 2018, Theorem 1): along dx/dt = v(x, t),
//! d log p_t(x_t)/dt = −∇·v(x_t, t), so integrating the augmented state [x, Δ] with
//! dΔ/dt = ∇·v from t₀ to t₁ gives log p_{t₀}(x) = log p_{t₁}(x_{t₁}) + Δ. Score models (the
//! probability-flow ODE) and flow models (their velocity) both compute likelihoods with it.

use burn::tensor::Tensor;
use diffusion_core::tensor::to_f64;

use crate::ode::{Dopri5, OdeError, OdeStats, OdeSystem};

/// A time-dependent vector field with (an estimate of) its divergence.
pub trait DivergenceField {
    /// (v(x, t), ∇·v(x, t)), `[n, d]` and `[n]`.
    fn value_and_divergence(&self, x: Tensor<2>, t: f64) -> (Tensor<2>, Tensor<1>);
}

/// The end of an augmented integration.
#[derive(Clone, Debug)]
pub struct LogDensityChange {
    /// x at t₁.
    pub latent: Tensor<2>,
    /// Δ = ∫_{t₀}^{t₁} ∇·v dt per sample: log p_{t₀}(x) = log p_{t₁}(latent) + Δ.
    pub delta: Vec<f64>,
    /// What the solver did.
    pub stats: OdeStats,
}

/// Integrates [x, Δ] from t₀ to t₁ with the adaptive solver (the error control covers Δ too).
pub fn integrate_log_density(
    field: &dyn DivergenceField,
    x: Tensor<2>,
    t0: f64,
    t1: f64,
    solver: &Dopri5,
) -> Result<LogDensityChange, OdeError> {
    let [n, d] = x.dims();
    let state = Tensor::cat(vec![x.clone(), x.zeros_like().slice([0..n, 0..1])], 1);
    let system = Augmented { field, dim: d };
    let (end, stats) = solver.integrate(&system, state, t0, t1)?;
    Ok(LogDensityChange {
        latent: end.clone().slice([0..n, 0..d]),
        delta: to_f64(&end.slice([0..n, d..d + 1])),
        stats,
    })
}

struct Augmented<'a> {
    field: &'a dyn DivergenceField,
    dim: usize,
}

impl OdeSystem for Augmented<'_> {
    fn derivative(&self, state: Tensor<2>, t: f64) -> Tensor<2> {
        let [n, _] = state.dims();
        let x = state.slice([0..n, 0..self.dim]);
        let (v, div) = self.field.value_and_divergence(x, t);
        Tensor::cat(vec![v, div.reshape([n, 1])], 1)
    }
}
