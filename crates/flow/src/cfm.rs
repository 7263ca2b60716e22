//! Conditional flow matching (Lipman et al. 2023, eq. 9; Tong et al. 2023, Algorithm 1–3):
//! draw pairs (x₀, x₁) from a coupling, a time t, a point x_t of the conditional path and its
//! velocity u_t, and regress a velocity model on u_t:
//!
//! L_CFM(θ) = E ‖v_θ(x_t, t) − u_t(x_t | x₀, x₁)‖².
//!
//! Its gradient equals that of the (intractable) flow-matching loss E ‖v_θ − u_t(x_t)‖² with the
//! marginal velocity u_t(x) = E[u_t | x_t = x]: the two differ by E Var(u_t | x_t), which does
//! not depend on θ. torchcfm's matchers are special cases:
//!
//! | torchcfm | path | noise | coupling |
//! |---|---|---|---|
//! | `ConditionalFlowMatcher(σ)` | linear | constant σ | independent |
//! | `TargetConditionalFlowMatcher(σ)` | Lipman OT, σ_min = σ | none (x₀ is the noise) | independent |
//! | `VariancePreservingConditionalFlowMatcher(σ)` | trig | constant σ | independent |
//! | `ExactOptimalTransportConditionalFlowMatcher(σ)` | linear | constant σ | exact OT |
//! | `SchrodingerBridgeConditionalFlowMatcher(σ)` | linear | bridge σ | Sinkhorn, ε = 2σ² |

use burn::tensor::{Int, Tensor, TensorData};
use diffusion_core::tensor::{from_f64_like, per_sample, to_f64};
use serde::{Deserialize, Serialize};

use crate::coupling::{
    Coupling, CouplingError, SinkhornOptions, optimal_assignment, sample_plan, sinkhorn_plan,
    squared_distances,
};
use crate::path::{AffinePath, Interpolant, PathNoise};

/// How pairs are drawn from an exact OT plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanSampling {
    /// Use the optimal permutation itself: every point of both batches once.
    #[default]
    Permutation,
    /// Draw B pairs from the plan with replacement (torchcfm).
    WithReplacement,
}

/// A conditional flow matcher: path, spread and coupling.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowMatcher {
    /// The affine part of the conditional path.
    pub path: AffinePath,
    /// Its spread s(t).
    pub noise: PathNoise,
    /// How the batches are paired.
    pub coupling: Coupling,
    /// How pairs are drawn from an exact plan.
    pub plan_sampling: PlanSampling,
    /// The Sinkhorn iteration of an entropic coupling.
    pub sinkhorn: SinkhornOptions,
}

/// One training batch of a matcher.
#[derive(Clone, Debug)]
pub struct CfmBatch {
    /// The times, one per sample.
    pub t: Vec<f64>,
    /// The sources after the coupling.
    pub x0: Tensor<2>,
    /// The targets after the coupling.
    pub x1: Tensor<2>,
    /// The points of the path.
    pub xt: Tensor<2>,
    /// Their conditional velocities.
    pub ut: Tensor<2>,
}

impl FlowMatcher {
    /// I-CFM (Tong et al. 2023): the linear path with spread σ and independent pairs.
    pub fn independent(sigma: f64) -> Self {
        Self {
            path: AffinePath::Linear,
            noise: PathNoise::Constant(sigma),
            coupling: Coupling::Independent,
            plan_sampling: PlanSampling::Permutation,
            sinkhorn: SinkhornOptions::default(),
        }
    }

    /// OT-CFM: the linear path with spread σ and exact minibatch OT pairs.
    pub fn optimal_transport(sigma: f64) -> Self {
        Self {
            coupling: Coupling::ExactOt,
            ..Self::independent(sigma)
        }
    }

    /// SB-CFM: the Brownian-bridge path of width σ with the entropic plan at ε = 2σ².
    pub fn schrodinger_bridge(sigma: f64) -> Self {
        Self {
            path: AffinePath::Linear,
            noise: PathNoise::Bridge(sigma),
            coupling: Coupling::Sinkhorn {
                reg: 2.0 * sigma * sigma,
            },
            plan_sampling: PlanSampling::WithReplacement,
            sinkhorn: SinkhornOptions::default(),
        }
    }

    /// Lipman et al.'s OT path with σ_min and independent pairs (x₀ is the noise).
    pub fn lipman(sigma_min: f64) -> Self {
        Self {
            path: AffinePath::LipmanOt { sigma_min },
            noise: PathNoise::None,
            coupling: Coupling::Independent,
            plan_sampling: PlanSampling::Permutation,
            sinkhorn: SinkhornOptions::default(),
        }
    }

    /// Rectified flow (Liu et al. 2022): the linear path, no spread; with fixed pairs from a
    /// previous flow this is reflow.
    pub fn rectified() -> Self {
        Self::independent(0.0)
    }

    /// Pairs the batches as the coupling says. `uniforms` (one per sample, in [0, 1)) are
    /// used only when pairs are drawn from a plan with replacement.
    pub fn couple(
        &self,
        x0: Tensor<2>,
        x1: Tensor<2>,
        uniforms: &[f64],
    ) -> Result<(Tensor<2>, Tensor<2>), CouplingError> {
        let ([n, d], [m, _]) = (x0.dims(), x1.dims());
        if self.coupling == Coupling::Independent {
            return Ok((x0, x1));
        }
        if n != m || n == 0 {
            return Err(CouplingError::Sizes(n, m));
        }
        let cost = squared_distances(&to_f64(&x0), &to_f64(&x1), d);
        let (rows, cols): (Vec<usize>, Vec<usize>) = match (self.coupling, self.plan_sampling) {
            (Coupling::ExactOt, PlanSampling::Permutation) => {
                ((0..n).collect(), optimal_assignment(&cost, n)?)
            }
            (Coupling::ExactOt, PlanSampling::WithReplacement) => {
                let cols = optimal_assignment(&cost, n)?;
                let mut plan = vec![0.0; n * n];
                for (i, j) in cols.iter().enumerate() {
                    plan[i * n + j] = 1.0 / n as f64;
                }
                sample_plan(&plan, n, &check_uniforms(uniforms, n)?)
            }
            (Coupling::Sinkhorn { reg }, _) => {
                let plan = sinkhorn_plan(&cost, n, n, reg, self.sinkhorn)?;
                sample_plan(&plan, n, &check_uniforms(uniforms, n)?)
            }
            (Coupling::Independent, _) => unreachable!("handled above"),
        };
        Ok((select_rows(x0, &rows), select_rows(x1, &cols)))
    }

    /// A batch of the path at times `t` for already coupled pairs, with spread noise `eps`
    /// (required when the path has a spread; shaped like x₀).
    pub fn path_batch(&self, t: &[f64], x0: Tensor<2>, x1: Tensor<2>, eps: Option<Tensor<2>>) -> CfmBatch {
        let mut xt = self.path.interpolate(t, x0.clone(), x1.clone());
        let mut ut = self.path.time_derivative(t, x0.clone(), x1.clone());
        if !self.noise.is_none() {
            let eps = eps.expect("a path with a spread needs its noise ε");
            let (s, ds): (Vec<f64>, Vec<f64>) = t.iter().map(|&t| self.noise.std_and_derivative(t)).unzip();
            xt = xt + eps.clone() * per_sample(&s, &eps);
            ut = ut + eps.clone() * per_sample(&ds, &eps);
        }
        CfmBatch {
            t: t.to_vec(),
            x0,
            x1,
            xt,
            ut,
        }
    }

    /// Couples the batches, then builds the path batch.
    pub fn sample(
        &self,
        x0: Tensor<2>,
        x1: Tensor<2>,
        t: &[f64],
        eps: Option<Tensor<2>>,
        uniforms: &[f64],
    ) -> Result<CfmBatch, CouplingError> {
        let (x0, x1) = self.couple(x0, x1, uniforms)?;
        Ok(self.path_batch(t, x0, x1, eps))
    }
}

fn check_uniforms(uniforms: &[f64], n: usize) -> Result<Vec<f64>, CouplingError> {
    if uniforms.len() != n {
        return Err(CouplingError::Sinkhorn(format!(
            "sampling pairs from a plan needs one uniform per sample: got {} for {n}",
            uniforms.len()
        )));
    }
    Ok(uniforms.to_vec())
}

/// A deterministic path batch of any interpolation (Albergo & Vanden-Eijnden's stochastic
/// interpolants without the latent term): x_t = I(t, x₀, x₁), u_t = ∂I/∂t.
pub fn interpolant_batch(interpolant: &dyn Interpolant, t: &[f64], x0: Tensor<2>, x1: Tensor<2>) -> CfmBatch {
    CfmBatch {
        t: t.to_vec(),
        xt: interpolant.interpolate(t, x0.clone(), x1.clone()),
        ut: interpolant.time_derivative(t, x0.clone(), x1.clone()),
        x0,
        x1,
    }
}

/// Rows `index` of `x`.
pub fn select_rows(x: Tensor<2>, index: &[usize]) -> Tensor<2> {
    let idx: Vec<i64> = index.iter().map(|&i| i as i64).collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [index.len()]), &x.device());
    x.select(0, idx)
}

/// The conditional flow-matching loss per sample, ‖v(x_t, t) − u_t‖² (summed over features;
/// torchcfm's `mean((v − u)²)` is its batch mean divided by d).
pub fn cfm_loss(model: &dyn Fn(Tensor<2>, Tensor<1>) -> Tensor<2>, batch: &CfmBatch) -> Tensor<1> {
    let [n, _] = batch.xt.dims();
    let t = from_f64_like(batch.t.clone(), [n], &batch.xt);
    let v = model(batch.xt.clone(), t);
    (v - batch.ut.clone()).square().sum_dim(1).reshape([n])
}
