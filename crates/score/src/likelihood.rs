//! Exact likelihoods through the probability-flow ODE (Song et al. 2021, §4.3 and
//! Appendix D.2):
//!
//! log p_ε(x) = log p_T(x_T) + ∫_ε^T ∇·f̃(x_t, t) dt,  with f̃ = f − ½ g² s,
//!
//! integrated by the instantaneous change of variables of `diffusion_samplers::cnf` with
//! adaptive Dormand–Prince. The divergence of the drift comes from the denoiser: with
//! s = (α D − x)/σ² and f = a(t) x, ∇·f̃ = a d − ½ g² (α ∇·D − d)/σ². ∇·D is exact (closed
//! form for the mixture oracle, or d reverse-mode passes through any differentiable
//! denoiser) or Hutchinson's unbiased estimate vᵀ (∂D/∂x) v with one probe v per sample held
//! fixed over the solve (Grathwohl et al. 2019, FFJORD).

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;
use diffusion_core::tensor::to_f64;
use diffusion_samplers::{
    Denoiser, DivergenceField, Dopri5, GaussianMixture, NoiseLevel, OdeError, OdeStats, Probe,
    exact_divergence, hutchinson_divergence, integrate_log_density,
};
use serde::{Deserialize, Serialize};

use crate::sde::Sde;

/// A denoiser with (an estimate of) its divergence ∇·D = tr ∂D/∂x.
pub trait DenoiserDivergence {
    /// (D(x), ∇·D(x)) at `level`, `[n, d]` and `[n]`.
    fn denoise_with_divergence(&self, x: Tensor<2>, level: NoiseLevel) -> (Tensor<2>, Tensor<1>);
}

/// The mixture oracle's divergence is closed form: (α/σ²) tr Cov[x₀ | x].
impl DenoiserDivergence for GaussianMixture {
    fn denoise_with_divergence(&self, x: Tensor<2>, level: NoiseLevel) -> (Tensor<2>, Tensor<1>) {
        let div = self.denoiser_divergence(x.clone(), level);
        (self.denoise(x, level), div)
    }
}

/// The exact divergence of any denoiser differentiable by burn's autodiff: one reverse
/// pass per dimension (d passes; for images prefer [`HutchinsonTrace`]).
pub struct ExactTrace<'a>(pub &'a dyn Denoiser);

impl DenoiserDivergence for ExactTrace<'_> {
    fn denoise_with_divergence(&self, x: Tensor<2>, level: NoiseLevel) -> (Tensor<2>, Tensor<1>) {
        exact_divergence(&|x| self.0.denoise(x, level), &x)
    }
}

/// Hutchinson's estimate vᵀ (∂D/∂x) v with fixed probes v (`[n, d]`).
pub struct HutchinsonTrace<'a> {
    /// The denoiser.
    pub denoiser: &'a dyn Denoiser,
    /// One probe per sample, E[v vᵀ] = I.
    pub probe: Tensor<2>,
}

impl DenoiserDivergence for HutchinsonTrace<'_> {
    fn denoise_with_divergence(&self, x: Tensor<2>, level: NoiseLevel) -> (Tensor<2>, Tensor<1>) {
        hutchinson_divergence(&|x| self.denoiser.denoise(x, level), &x, &self.probe)
    }
}

/// How the divergence is obtained for a plain denoiser.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Divergence {
    /// Exact: d reverse-mode passes per evaluation.
    #[default]
    Exact,
    /// Hutchinson's estimator with one fixed probe per sample.
    Hutchinson(Probe),
}

/// Likelihood evaluation could not complete.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LikelihoodError {
    /// The ODE solver gave up.
    #[error("the probability-flow ODE could not be integrated: {0}")]
    Ode(#[from] OdeError),
    /// Bad settings.
    #[error("{0}")]
    Invalid(String),
}

/// Settings of a likelihood evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct Likelihood {
    /// The SDE whose probability flow is integrated.
    pub sde: Sde,
    /// The start time ε (score_sde: 1e-5).
    pub eps: f64,
    /// The adaptive solver (score_sde: RK45 with rtol = atol = 1e-5).
    pub solver: Dopri5,
}

/// What a likelihood evaluation found, per sample.
#[derive(Clone, Debug)]
pub struct LikelihoodOutput {
    /// log p_ε(x) in nats: `prior_log_prob + delta`.
    pub log_prob: Vec<f64>,
    /// log p_T(x_T) under the SDE's prior.
    pub prior_log_prob: Vec<f64>,
    /// Δ = ∫_ε^T ∇·f̃ dt.
    pub delta: Vec<f64>,
    /// The latent x_T.
    pub latent: Tensor<2>,
    /// What the solver did.
    pub stats: OdeStats,
}

impl Likelihood {
    /// score_sde's settings for `sde`.
    pub fn new(sde: Sde) -> Self {
        Self {
            sde,
            eps: 1e-5,
            solver: Dopri5 {
                rtol: 1e-5,
                atol: 1e-5,
                ..Dopri5::default()
            },
        }
    }

    /// log p(x) with the divergence supplied by `model`.
    pub fn evaluate(
        &self,
        model: &dyn DenoiserDivergence,
        x: Tensor<2>,
    ) -> Result<LikelihoodOutput, LikelihoodError> {
        if !(self.eps > 0.0 && self.eps < self.sde.t_end()) {
            return Err(LikelihoodError::Invalid(format!(
                "the start time ε must lie in (0, T = {}), got {}",
                self.sde.t_end(),
                self.eps
            )));
        }
        let flow = ProbabilityFlowDivergence {
            sde: &self.sde,
            model,
        };
        let change = integrate_log_density(&flow, x, self.eps, self.sde.t_end(), &self.solver)?;
        let prior_log_prob = to_f64(&self.sde.prior_log_prob(change.latent.clone()));
        let log_prob = prior_log_prob
            .iter()
            .zip(&change.delta)
            .map(|(p, q)| p + q)
            .collect();
        Ok(LikelihoodOutput {
            log_prob,
            prior_log_prob,
            delta: change.delta,
            latent: change.latent,
            stats: change.stats,
        })
    }

    /// log p(x) of a plain denoiser, its divergence found as `divergence` says (Hutchinson
    /// probes are drawn from `noise`, one per sample, before the solve).
    pub fn evaluate_denoiser(
        &self,
        denoiser: &dyn Denoiser,
        x: Tensor<2>,
        divergence: Divergence,
        noise: &mut dyn NoiseSource,
    ) -> Result<LikelihoodOutput, LikelihoodError> {
        match divergence {
            Divergence::Exact => self.evaluate(&ExactTrace(denoiser), x),
            Divergence::Hutchinson(probe) => {
                let probe = probe.draw(noise, &x);
                self.evaluate(&HutchinsonTrace { denoiser, probe }, x)
            }
        }
    }
}

/// The probability-flow drift f̃ and its divergence, from the denoiser's.
struct ProbabilityFlowDivergence<'a> {
    sde: &'a Sde,
    model: &'a dyn DenoiserDivergence,
}

impl DivergenceField for ProbabilityFlowDivergence<'_> {
    fn value_and_divergence(&self, x: Tensor<2>, t: f64) -> (Tensor<2>, Tensor<1>) {
        let [_, d] = x.dims();
        let (alpha, sigma) = self.sde.marginal(t);
        let level = NoiseLevel {
            alpha,
            sigma,
            timestep: None,
        };
        let (denoised, div_d) = self.model.denoise_with_divergence(x.clone(), level);
        let (a, g2, s2) = (
            self.sde.drift_coefficient(t),
            self.sde.diffusion(t).powi(2),
            sigma * sigma,
        );
        let score = (denoised.mul_scalar(alpha) - x.clone()).div_scalar(s2);
        let drift = x.mul_scalar(a) - score.mul_scalar(0.5 * g2);
        let div = div_d
            .mul_scalar(-0.5 * g2 * alpha / s2)
            .add_scalar(a * d as f64 + 0.5 * g2 * d as f64 / s2);
        (drift, div)
    }
}
