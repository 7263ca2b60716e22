//! Score-matching objectives, per sample (`[n]`) so that callers can weight and reduce them:
//!
//! - explicit (Hyvärinen 2005, Theorem 1): J(θ) = E_p[tr ∇ₓ s_θ(x) + ½ ‖s_θ(x)‖²], with the
//!   trace taken exactly from one Jacobian-vector product per dimension;
//! - sliced (Song et al. 2019, eq. 6; projections from `diffusion_samplers::Probe`): E_p E_v[vᵀ ∇ₓ s_θ(x) v + ½ (vᵀ s_θ(x))²], and its
//!   variance-reduced form (eq. 7) with ½ ‖s_θ(x)‖² for Gaussian probes;
//! - denoising (Vincent 2011, eq. 11): ½ ‖s_θ(x̃, σ) + (x̃ − x)/σ²‖² for x̃ = x + σ z, with
//!   NCSN's weighting λ(σ) = σ^p (Song & Ermon 2019, eq. 6; p = 2);
//! - score_sde's continuous-time denoising objective (Song et al. 2021, eq. 7) at per-sample
//!   t, with λ(t) = σ(t)² or the likelihood weighting λ(t) = g(t)² (Song et al. 2021b, eq. 8).
//!
//! Objectives that need input derivatives take a [`ScoreModel`], whose Jacobian-vector
//! product is either exact (forward mode, e.g. `Mlp::forward_jvp`) or a central difference.

use burn::tensor::Tensor;
use diffusion_core::tensor::{from_f64_like, per_sample};
use serde::{Deserialize, Serialize};

use crate::sde::Sde;

/// A conditional score model s_θ(x, c) that objectives can differentiate through.
pub trait ScoreModel {
    /// s(x, c) for `x` `[n, d]` and one conditioning scalar per sample `c` `[n]`.
    fn score(&self, x: Tensor<2>, cond: Tensor<1>) -> Tensor<2>;

    /// (s(x, c), ∂s/∂x · v). The default is the central difference
    /// (s(x + h v) − s(x − h v))/(2h) with h = [`JVP_STEP`] (error O(h²)); models with an
    /// exact forward-mode product override it.
    fn score_jvp(&self, x: Tensor<2>, cond: Tensor<1>, v: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let plus = self.score(x.clone() + v.clone().mul_scalar(JVP_STEP), cond.clone());
        let minus = self.score(x.clone() - v.mul_scalar(JVP_STEP), cond.clone());
        let jvp = (plus - minus).div_scalar(2.0 * JVP_STEP);
        (self.score(x, cond), jvp)
    }
}

/// The step of the default central-difference Jacobian-vector product.
pub const JVP_STEP: f64 = 1e-4;

impl<F: Fn(Tensor<2>, Tensor<1>) -> Tensor<2>> ScoreModel for F {
    fn score(&self, x: Tensor<2>, cond: Tensor<1>) -> Tensor<2> {
        self(x, cond)
    }
}

/// ½ ‖s‖² per sample.
fn half_sq_norm(s: Tensor<2>) -> Tensor<1> {
    let [n, _] = s.dims();
    s.square().sum_dim(1).reshape([n]).mul_scalar(0.5)
}

/// Row-wise dot product, `[n]`.
fn dot(a: Tensor<2>, b: Tensor<2>) -> Tensor<1> {
    let [n, _] = a.dims();
    (a * b).sum_dim(1).reshape([n])
}

/// Explicit score matching (Hyvärinen 2005): tr ∇ₓ s(x) + ½ ‖s(x)‖² per sample, the trace
/// from d Jacobian-vector products along the basis vectors.
pub fn explicit_score_matching(model: &dyn ScoreModel, x: Tensor<2>, cond: Tensor<1>) -> Tensor<1> {
    let [n, d] = x.dims();
    let mut trace: Option<Tensor<1>> = None;
    let mut score = None;
    for i in 0..d {
        let unit: Vec<f64> = (0..n * d).map(|k| if k % d == i { 1.0 } else { 0.0 }).collect();
        let basis = from_f64_like(unit, [n, d], &x);
        let (s, jv) = model.score_jvp(x.clone(), cond.clone(), basis);
        let diag = jv.slice([0..n, i..i + 1]).reshape([n]);
        trace = Some(match trace {
            Some(t) => t + diag,
            None => diag,
        });
        score = Some(s);
    }
    let (trace, score) = (trace.expect("d ≥ 1"), score.expect("d ≥ 1"));
    trace + half_sq_norm(score)
}

/// Sliced score matching (Song et al. 2019, eq. 6) averaged over the given projections
/// (`[n, d]` each): vᵀ (∂s/∂x v) + ½ (vᵀ s)², or with `variance_reduced`, ½ ‖s‖² in place of
/// the last term (eq. 7, exact in expectation for probes with E[v vᵀ] = I).
pub fn sliced_score_matching(
    model: &dyn ScoreModel,
    x: Tensor<2>,
    cond: Tensor<1>,
    projections: &[Tensor<2>],
    variance_reduced: bool,
) -> Tensor<1> {
    assert!(
        !projections.is_empty(),
        "sliced score matching needs at least one projection"
    );
    let mut total: Option<Tensor<1>> = None;
    for v in projections {
        let (s, jv) = model.score_jvp(x.clone(), cond.clone(), v.clone());
        let second = if variance_reduced {
            half_sq_norm(s)
        } else {
            dot(v.clone(), s).square().mul_scalar(0.5)
        };
        let term = dot(v.clone(), jv) + second;
        total = Some(match total {
            Some(t) => t + term,
            None => term,
        });
    }
    total.expect("non-empty").div_scalar(projections.len() as f64)
}

/// Denoising score matching at per-sample noise levels σ with weight σ^p:
/// ½ σ^p ‖s(x + σ z, σ) + z/σ‖² (NCSN's `anneal_dsm_score_estimation`; p = 2 makes the
/// loss ½ ‖σ s + z‖², of the same scale at every level). The model is conditioned on σ.
pub fn denoising_score_matching(
    model: &dyn ScoreModel,
    x0: Tensor<2>,
    sigmas: &[f64],
    z: Tensor<2>,
    power: f64,
) -> Tensor<1> {
    let sigma = per_sample(sigmas, &x0);
    let n = sigmas.len();
    let weights: Vec<f64> = sigmas.iter().map(|s| s.powf(power)).collect();
    let weights = per_sample(&weights, &x0).reshape([n]);
    let noisy = x0 + z.clone() * sigma.clone();
    let cond = from_f64_like(sigmas.to_vec(), [n], &noisy);
    let s = model.score(noisy, cond);
    half_sq_norm(s + z / sigma) * weights
}

/// One level per sample drawn uniformly from a noise ladder (NCSN's training labels), given
/// one uniform u ∈ [0, 1) per sample: σ_⌊u L⌋.
pub fn ladder_draw(ladder: &[f64], uniforms: &[f64]) -> Vec<f64> {
    assert!(!ladder.is_empty(), "the noise ladder is empty");
    uniforms
        .iter()
        .map(|u| ladder[((u * ladder.len() as f64) as usize).min(ladder.len() - 1)])
        .collect()
}

/// How score_sde reduces the squared error over the features of a sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduction {
    /// The mean over features.
    Mean,
    /// Half the sum over features (score_sde's default, `reduce_mean = False`).
    #[default]
    HalfSum,
}

impl Reduction {
    fn apply(self, sq: Tensor<2>) -> Tensor<1> {
        let [n, d] = sq.dims();
        let sum = sq.sum_dim(1).reshape([n]);
        match self {
            Self::Mean => sum.div_scalar(d as f64),
            Self::HalfSum => sum.mul_scalar(0.5),
        }
    }
}

/// score_sde's continuous objective at per-sample times t (Song et al. 2021, eq. 7): with
/// x_t = α(t) x₀ + σ(t) z and the model conditioned on t,
/// ‖σ(t) s(x_t, t) + z‖² reduced over features (λ = σ²), or with `likelihood_weighting`,
/// g(t)² ‖s(x_t, t) + z/σ(t)‖² (λ = g², which makes the loss bound the negative log-likelihood).
pub fn sde_score_matching(
    model: &dyn ScoreModel,
    sde: &Sde,
    x0: Tensor<2>,
    t: &[f64],
    z: Tensor<2>,
    likelihood_weighting: bool,
    reduction: Reduction,
) -> Tensor<1> {
    let (alphas, sigmas): (Vec<f64>, Vec<f64>) = t.iter().map(|&t| sde.marginal(t)).unzip();
    let sigma = per_sample(&sigmas, &x0);
    let noisy = x0.clone() * per_sample(&alphas, &x0) + z.clone() * sigma.clone();
    let cond = from_f64_like(t.to_vec(), [t.len()], &noisy);
    let s = model.score(noisy, cond);
    if likelihood_weighting {
        let g2: Vec<f64> = t.iter().map(|&t| sde.diffusion(t).powi(2)).collect();
        reduction.apply((s + z / sigma).square()) * per_sample(&g2, &x0).reshape([t.len()])
    } else {
        reduction.apply((s * sigma + z).square())
    }
}
