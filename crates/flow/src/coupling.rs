//! Couplings of a minibatch of sources x₀ with a minibatch of targets x₁ (Tong et al. 2023,
//! "Improving and generalizing flow-based generative models with minibatch optimal
//! transport"; Pooladian et al. 2023):
//!
//! - independent: pair x₀ⁱ with x₁ⁱ;
//! - exact optimal transport for the squared Euclidean cost: the assignment π minimising
//!   Σᵢ ‖x₀ⁱ − x₁^{π(i)}‖², solved by the Jonker–Volgenant algorithm (the `lapjv` crate),
//!   O(B³) time and O(B²) memory for a batch of B, on the host;
//! - entropic optimal transport (Sinkhorn–Knopp, Cuturi 2013) with regularisation ε: the plan
//!   P = diag(u) K diag(v), K = exp(−M/ε), with uniform marginals, in the log domain with
//!   ε-scaling for stability at small ε, O(B²) per iteration; the Schrödinger-bridge CFM
//!   uses ε = 2σ².
//!
//! A plan that is not a permutation is turned into pairs by drawing B index pairs from it with
//! replacement (torchcfm's `OTPlanSampler`); an exact plan may be used as the permutation
//! itself (every point used once) or sampled the same way.

use serde::{Deserialize, Serialize};

/// How a minibatch is paired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Coupling {
    /// x₀ⁱ with x₁ⁱ.
    #[default]
    Independent,
    /// The exact optimal assignment for the squared Euclidean cost.
    ExactOt,
    /// The entropic plan with regularisation ε (on the raw squared distances).
    Sinkhorn {
        /// ε.
        reg: f64,
    },
}

/// Why a coupling could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CouplingError {
    /// The batches differ in size or are empty.
    #[error("optimal-transport couplings need two non-empty batches of one size, got {0} and {1}")]
    Sizes(usize, usize),
    /// A non-finite cost.
    #[error("the cost matrix has a non-finite entry; check the batches for NaN or infinite values")]
    NonFinite,
    /// The assignment solver failed.
    #[error("the assignment solver failed: {0}")]
    Solver(String),
    /// Bad Sinkhorn settings or no convergence.
    #[error("{0}")]
    Sinkhorn(String),
}

/// The squared Euclidean distances M_ij = ‖aⁱ − bʲ‖² between the rows of `a` (`n × dim`) and
/// `b` (`m × dim`), row-major `n × m`.
pub fn squared_distances(a: &[f64], b: &[f64], dim: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(a.len() / dim * (b.len() / dim));
    for x in a.chunks_exact(dim) {
        for y in b.chunks_exact(dim) {
            out.push(x.iter().zip(y).map(|(p, q)| (p - q) * (p - q)).sum());
        }
    }
    out
}

/// The optimal assignment of an `n × n` cost matrix (row-major): `col[i]` is the column of
/// row i, minimising Σᵢ `cost[i, col[i]]`.
pub fn optimal_assignment(cost: &[f64], n: usize) -> Result<Vec<usize>, CouplingError> {
    if n == 0 || cost.len() != n * n {
        return Err(CouplingError::Sizes(n, cost.len() / n.max(1)));
    }
    if cost.iter().any(|c| !c.is_finite()) {
        return Err(CouplingError::NonFinite);
    }
    if n == 1 {
        return Ok(vec![0]);
    }
    let matrix = lapjv::Matrix::from_shape_vec((n, n), cost.to_vec())
        .map_err(|e| CouplingError::Solver(e.to_string()))?;
    let (rows, _) = lapjv::lapjv(&matrix).map_err(|e| CouplingError::Solver(e.to_string()))?;
    Ok(rows)
}

/// Which Sinkhorn iteration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkhornMethod {
    /// Log-domain updates of the dual potentials (stable for any ε), run to convergence;
    /// failing to converge is an error.
    #[default]
    LogDomain,
    /// POT's `ot.sinkhorn` (Sinkhorn–Knopp on K = e^{−M/ε}): v = b/(Kᵀu), u = 1/(diag(1/a) K v),
    /// the L2 column error checked every 10th iteration; after `max_iter` it returns the plan
    /// it has (POT warns), which torchcfm then uses. Underflows for small ε/M.
    Pot,
}

/// Settings of the Sinkhorn iteration.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SinkhornOptions {
    /// The iteration.
    pub method: SinkhornMethod,
    /// Stop when the marginal error falls below this (log domain: the largest row error;
    /// POT: the L2 norm of the column error).
    pub tol: f64,
    /// The iteration limit.
    pub max_iter: usize,
}

impl Default for SinkhornOptions {
    fn default() -> Self {
        Self {
            method: SinkhornMethod::LogDomain,
            tol: 1e-12,
            max_iter: 100_000,
        }
    }
}

impl SinkhornOptions {
    /// POT's defaults: Sinkhorn–Knopp, stopThr = 1e-9, numItermax = 1000.
    pub fn pot() -> Self {
        Self {
            method: SinkhornMethod::Pot,
            tol: 1e-9,
            max_iter: 1000,
        }
    }
}

/// The entropic plan between uniform marginals on n and m points for the cost `cost`
/// (`n × m`, row-major) with regularisation `reg`: row-major `n × m`, rows summing to 1/n and
/// columns to 1/m.
pub fn sinkhorn_plan(
    cost: &[f64],
    n: usize,
    m: usize,
    reg: f64,
    options: SinkhornOptions,
) -> Result<Vec<f64>, CouplingError> {
    if n == 0 || m == 0 || cost.len() != n * m {
        return Err(CouplingError::Sizes(n, m));
    }
    if cost.iter().any(|c| !c.is_finite()) {
        return Err(CouplingError::NonFinite);
    }
    if !(reg > 0.0 && reg.is_finite()) {
        return Err(CouplingError::Sinkhorn(format!(
            "the Sinkhorn regularisation must be positive, got {reg}"
        )));
    }
    if options.method == SinkhornMethod::Pot {
        return Ok(sinkhorn_knopp(cost, n, m, reg, options));
    }
    // ε-scaling (Schmitzer 2019): solve at ε₀ = max M, then at halved ε down to the target,
    // each stage warm-started from the previous potentials; only the last must meet `tol`.
    let max_cost = cost.iter().copied().fold(0.0f64, f64::max);
    let mut stages = Vec::new();
    let mut eps = max_cost;
    while eps > 4.0 * reg {
        stages.push(eps);
        eps *= 0.5;
    }
    let (mut f, mut g) = (vec![0.0; n], vec![0.0; m]);
    let mut budget = options.max_iter;
    for eps in stages {
        budget -= log_sinkhorn(cost, (n, m), eps, 1e-3 / n as f64, budget, (&mut f, &mut g)).1;
    }
    let (converged, used) = log_sinkhorn(cost, (n, m), reg, options.tol, budget, (&mut f, &mut g));
    if converged {
        return Ok(plan_of(&f, &g, cost, m, reg));
    }
    Err(CouplingError::Sinkhorn(format!(
        "Sinkhorn did not reach tolerance {} in {} iterations (ε = {reg}); raise ε, max_iter or tol",
        options.tol,
        options.max_iter - budget + used
    )))
}

/// Log-domain Sinkhorn iterations on the potentials (f, g), P_ij = exp((f_i + g_j − M_ij)/ε),
/// until the largest row error is below `tol` (checked every 10 iterations; the columns are
/// exact after each g update). Returns (converged, iterations used).
fn log_sinkhorn(
    cost: &[f64],
    (n, m): (usize, usize),
    reg: f64,
    tol: f64,
    max_iter: usize,
    (f, g): (&mut [f64], &mut [f64]),
) -> (bool, usize) {
    let (log_a, log_b) = (-(n as f64).ln(), -(m as f64).ln());
    let lse = |values: &mut dyn Iterator<Item = f64>| {
        let v: Vec<f64> = values.collect();
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        max + v.iter().map(|x| (x - max).exp()).sum::<f64>().ln()
    };
    for iter in 0..max_iter {
        for i in 0..n {
            f[i] = reg * (log_a - lse(&mut (0..m).map(|j| (g[j] - cost[i * m + j]) / reg)));
        }
        for j in 0..m {
            g[j] = reg * (log_b - lse(&mut (0..n).map(|i| (f[i] - cost[i * m + j]) / reg)));
        }
        if iter % 10 == 9 || iter + 1 == max_iter {
            let violation = (0..n)
                .map(|i| {
                    let row: f64 = (0..m)
                        .map(|j| ((f[i] + g[j] - cost[i * m + j]) / reg).exp())
                        .sum();
                    (row - 1.0 / n as f64).abs()
                })
                .fold(0.0, f64::max);
            if violation < tol {
                return (true, iter + 1);
            }
        }
    }
    (false, max_iter)
}

/// POT's Sinkhorn–Knopp loop, step for step.
fn sinkhorn_knopp(cost: &[f64], n: usize, m: usize, reg: f64, options: SinkhornOptions) -> Vec<f64> {
    let (a, b) = (1.0 / n as f64, 1.0 / m as f64);
    let k: Vec<f64> = cost.iter().map(|c| (c / -reg).exp()).collect();
    let (mut u, mut v) = (vec![1.0 / n as f64; n], vec![1.0 / m as f64; m]);
    for ii in 0..options.max_iter {
        for j in 0..m {
            let ktu: f64 = (0..n).map(|i| k[i * m + j] * u[i]).sum();
            v[j] = b / ktu;
        }
        for i in 0..n {
            let kv: f64 = (0..m).map(|j| k[i * m + j] / a * v[j]).sum();
            u[i] = 1.0 / kv;
        }
        if ii % 10 == 0 {
            let err = (0..m)
                .map(|j| {
                    let col: f64 = (0..n).map(|i| u[i] * k[i * m + j] * v[j]).sum();
                    (col - b).powi(2)
                })
                .sum::<f64>()
                .sqrt();
            if err < options.tol {
                break;
            }
        }
    }
    let mut plan = Vec::with_capacity(n * m);
    for i in 0..n {
        for j in 0..m {
            plan.push(u[i] * k[i * m + j] * v[j]);
        }
    }
    plan
}

fn plan_of(f: &[f64], g: &[f64], cost: &[f64], m: usize, reg: f64) -> Vec<f64> {
    let mut plan = Vec::with_capacity(f.len() * m);
    for (i, fi) in f.iter().enumerate() {
        for (j, gj) in g.iter().enumerate() {
            plan.push(((fi + gj - cost[i * m + j]) / reg).exp());
        }
    }
    plan
}

/// Draws `uniforms.len()` index pairs (i, j) from a plan (`n × m`, row-major, non-negative)
/// with replacement: the flat index k is the first whose cumulative mass exceeds u times the
/// total (numpy's `choice(p=…)`, which torchcfm uses).
pub fn sample_plan(plan: &[f64], m: usize, uniforms: &[f64]) -> (Vec<usize>, Vec<usize>) {
    let mut cdf = Vec::with_capacity(plan.len());
    let mut acc = 0.0;
    for p in plan {
        acc += p;
        cdf.push(acc);
    }
    let total = acc;
    cdf.iter_mut().for_each(|c| *c /= total);
    uniforms
        .iter()
        .map(|u| {
            let k = cdf.partition_point(|c| *c <= *u).min(plan.len() - 1);
            (k / m, k % m)
        })
        .unzip()
}

/// The total squared-distance cost Σᵢ ‖x₀ⁱ − x₁^{col(i)}‖² of an assignment.
pub fn assignment_cost(cost: &[f64], n: usize, cols: &[usize]) -> f64 {
    (0..n).map(|i| cost[i * n + cols[i]]).sum()
}
