//! Exact likelihoods through the probability-flow ODE (Song et al. 2021, §4.3 and
//! Appendix D.2; Chen et al. 2018, instantaneous change of variables):
//!
//! log p₀(x) = log p_T(x_T) + ∫₀ᵀ ∇·f̃(x_t, t) dt,  with f̃ = f − ½ g² s,
//!
//! integrated from ε to T on the augmented state [x, Δ] by adaptive Dormand–Prince. The
//! divergence of the drift comes from the denoiser: with s = (α D − x)/σ² and f = a(t) x,
//! ∇·f̃ = a d − ½ g² (α ∇·D − d)/σ². ∇·D is exact (closed form for the mixture oracle, or d
//! reverse-mode passes through any differentiable denoiser) or Hutchinson's unbiased
//! estimate vᵀ (∂D/∂x) v with one probe v per sample held fixed over the solve
//! (Grathwohl et al. 2019, FFJORD).

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;
use diffusion_core::tensor::{from_f64_like, to_f64};
use diffusion_samplers::{Denoiser, Dopri5, GaussianMixture, NoiseLevel, OdeError, OdeStats, OdeSystem};
use serde::{Deserialize, Serialize};

use crate::objectives::Probe;
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

/// x as a fresh autodiff leaf that keeps its gradient.
fn leaf(x: &Tensor<2>) -> Tensor<2> {
    x.clone().without_autodiff().autodiff().require_grad()
}

/// vᵀ ∂D/∂x with one reverse-mode pass (D evaluated at a leaf copy of x): (D(x), vᵀ J).
fn vector_jacobian(
    denoiser: &dyn Denoiser,
    x: &Tensor<2>,
    level: NoiseLevel,
    v: Tensor<2>,
) -> (Tensor<2>, Tensor<2>) {
    let input = leaf(x);
    let out = denoiser.denoise(input.clone(), level);
    let grads = (out.clone() * v.autodiff()).sum().backward();
    let vjp = input
        .grad(&grads)
        .expect("the denoiser's output depends on its input");
    (out.without_autodiff(), vjp)
}

/// The exact divergence of any denoiser differentiable by burn's autodiff: one reverse
/// pass per dimension (d passes; for images prefer [`HutchinsonTrace`]).
pub struct ExactTrace<'a>(pub &'a dyn Denoiser);

impl DenoiserDivergence for ExactTrace<'_> {
    fn denoise_with_divergence(&self, x: Tensor<2>, level: NoiseLevel) -> (Tensor<2>, Tensor<1>) {
        let [n, d] = x.dims();
        let mut trace = vec![0.0; n];
        let mut value = None;
        for i in 0..d {
            let unit: Vec<f64> = (0..n * d).map(|k| if k % d == i { 1.0 } else { 0.0 }).collect();
            let (out, vjp) = vector_jacobian(self.0, &x, level, from_f64_like(unit, [n, d], &x));
            for (t, row) in trace.iter_mut().zip(to_f64(&vjp).chunks(d)) {
                *t += row[i];
            }
            value = Some(out);
        }
        let value = value.unwrap_or_else(|| self.0.denoise(x.clone(), level));
        (value, from_f64_like(trace, [n], &x))
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
        let [n, _] = x.dims();
        let (out, vjp) = vector_jacobian(self.denoiser, &x, level, self.probe.clone());
        (out, (vjp * self.probe.clone()).sum_dim(1).reshape([n]))
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
        let [n, d] = x.dims();
        let state = Tensor::cat(vec![x.clone(), x.zeros_like().slice([0..n, 0..1])], 1);
        let system = AugmentedFlow {
            sde: &self.sde,
            model,
            dim: d,
        };
        let (end, stats) = self
            .solver
            .integrate(&system, state, self.eps, self.sde.t_end())?;
        let latent = end.clone().slice([0..n, 0..d]);
        let delta = to_f64(&end.slice([0..n, d..d + 1]));
        let prior_log_prob = to_f64(&self.sde.prior_log_prob(latent.clone()));
        let log_prob = prior_log_prob.iter().zip(&delta).map(|(p, q)| p + q).collect();
        Ok(LikelihoodOutput {
            log_prob,
            prior_log_prob,
            delta,
            latent,
            stats,
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

/// The probability-flow ODE on [x, Δ]: d/dt [x, Δ] = [f̃(x, t), ∇·f̃(x, t)].
struct AugmentedFlow<'a> {
    sde: &'a Sde,
    model: &'a dyn DenoiserDivergence,
    dim: usize,
}

impl OdeSystem for AugmentedFlow<'_> {
    fn derivative(&self, state: Tensor<2>, t: f64) -> Tensor<2> {
        let [n, _] = state.dims();
        let d = self.dim;
        let x = state.slice([0..n, 0..d]);
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
        Tensor::cat(vec![drift, div.reshape([n, 1])], 1)
    }
}
