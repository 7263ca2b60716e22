//! Log-likelihoods of a flow model by the instantaneous change of variables
//! (`diffusion_samplers::cnf`): integrating [x, Δ] from the data (t = 1) back to the noise
//! (t = 0) gives log p₁(x) = log N(x₀; 0, I) + Δ with Δ = ∫₁⁰ ∇·v dt = −∫₀¹ ∇·v dt. The
//! divergence is exact (closed form, or d reverse-mode passes through the velocity network)
//! or Hutchinson's estimate with fixed probes.

use burn::tensor::Tensor;
use diffusion_core::tensor::to_f64;
use diffusion_samplers::{
    Denoiser, DivergenceField, Dopri5, NoiseLevel, OdeError, OdeStats, exact_divergence,
    hutchinson_divergence, integrate_log_density,
};

use crate::path::AffinePath;
use crate::velocity::{DenoiserVelocity, VelocityField, path_level};

/// A velocity field with its exact divergence by autodiff.
pub struct ExactVelocityDivergence<'a>(pub &'a dyn VelocityField);

impl DivergenceField for ExactVelocityDivergence<'_> {
    fn value_and_divergence(&self, x: Tensor<2>, t: f64) -> (Tensor<2>, Tensor<1>) {
        exact_divergence(&|x| self.0.velocity(x, t), &x)
    }
}

/// A velocity field with Hutchinson's divergence estimate for fixed probes.
pub struct HutchinsonVelocityDivergence<'a> {
    /// The field.
    pub field: &'a dyn VelocityField,
    /// One probe per sample.
    pub probe: Tensor<2>,
}

impl DivergenceField for HutchinsonVelocityDivergence<'_> {
    fn value_and_divergence(&self, x: Tensor<2>, t: f64) -> (Tensor<2>, Tensor<1>) {
        hutchinson_divergence(&|x| self.field.velocity(x, t), &x, &self.probe)
    }
}

/// The marginal velocity of a path from a denoiser whose divergence is known in closed form
/// (the mixture oracle): ∇·v = (ȧ − ḃ a/b) ∇·D + ḃ d/b.
pub struct ClosedFormVelocityDivergence<'a> {
    /// The denoiser.
    pub denoiser: &'a dyn Denoiser,
    /// ∇·D at a level.
    pub divergence: &'a dyn Fn(Tensor<2>, NoiseLevel) -> Tensor<1>,
    /// The path.
    pub path: AffinePath,
}

impl DivergenceField for ClosedFormVelocityDivergence<'_> {
    fn value_and_divergence(&self, x: Tensor<2>, t: f64) -> (Tensor<2>, Tensor<1>) {
        let [_, d] = x.dims();
        let c = self.path.coefficients(t);
        let v = DenoiserVelocity {
            denoiser: self.denoiser,
            path: self.path,
        }
        .velocity(x.clone(), t);
        let div_d = (self.divergence)(x, path_level(&self.path, t));
        let div = div_d
            .mul_scalar(c.da - c.db * c.a / c.b)
            .add_scalar(c.db * d as f64 / c.b);
        (v, div)
    }
}

/// The result of a flow likelihood evaluation, per sample.
#[derive(Clone, Debug)]
pub struct FlowLikelihood {
    /// log p₁(x) in nats.
    pub log_prob: Vec<f64>,
    /// log N(x₀; 0, I) of the latent.
    pub prior_log_prob: Vec<f64>,
    /// Δ = −∫₀¹ ∇·v dt.
    pub delta: Vec<f64>,
    /// The latent x₀.
    pub latent: Tensor<2>,
    /// What the solver did.
    pub stats: OdeStats,
}

/// log p_{t₁}(x) of data x under the flow of `field` from N(0, I) at t = 0, integrating from
/// `t_start` (1, or just below where a path with b(1) = 0 makes the divergence singular) down
/// to 0.
pub fn flow_log_likelihood(
    field: &dyn DivergenceField,
    x: Tensor<2>,
    t_start: f64,
    solver: &Dopri5,
) -> Result<FlowLikelihood, OdeError> {
    let change = integrate_log_density(field, x, t_start, 0.0, solver)?;
    let [n, d] = change.latent.dims();
    let norm = -0.5 * d as f64 * (2.0 * std::f64::consts::PI).ln();
    let prior_log_prob: Vec<f64> = to_f64(&change.latent.clone().square().sum_dim(1).reshape([n]))
        .iter()
        .map(|s| norm - 0.5 * s)
        .collect();
    let log_prob = prior_log_prob
        .iter()
        .zip(&change.delta)
        .map(|(p, q)| p + q)
        .collect();
    Ok(FlowLikelihood {
        log_prob,
        prior_log_prob,
        delta: change.delta,
        latent: change.latent,
        stats: change.stats,
    })
}
