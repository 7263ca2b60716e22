//! Divergences ∇·f(x) = tr ∂f/∂x of vector fields on a batch `[n, d]`, by burn's reverse-mode
//! autodiff: exact (one backward pass per dimension) or Hutchinson's unbiased estimate
//! vᵀ (∂f/∂x) v with E[v vᵀ] = I (Hutchinson 1990; Skilling 1989), one pass. The field is
//! evaluated at an autodiff leaf copy of x, so it may be any closure of tensor operations;
//! its constants must be created like its input (`from_f64_like(…, &x)`) or already live on an
//! autodiff device. Values come back off the tape.

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;
use diffusion_core::tensor::{from_f64_like, to_f64};
use serde::{Deserialize, Serialize};

/// The distribution of Hutchinson's probes and of sliced score matching's projections
/// (E[v vᵀ] = I for all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// v ~ N(0, I).
    #[default]
    Gaussian,
    /// Independent ±1 entries (the least-variance choice for Hutchinson's estimator).
    Rademacher,
    /// Uniform on the sphere of radius √d.
    Sphere,
}

impl std::str::FromStr for Probe {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gaussian" => Ok(Self::Gaussian),
            "rademacher" => Ok(Self::Rademacher),
            "sphere" => Ok(Self::Sphere),
            other => Err(format!(
                "unknown probe `{other}`: expected gaussian, rademacher or sphere"
            )),
        }
    }
}

impl Probe {
    /// Probes shaped and typed like `like`, built from standard normal draws (one row per
    /// sample, so per-sample noise streams keep their independence of the batch).
    pub fn draw(self, noise: &mut dyn NoiseSource, like: &Tensor<2>) -> Tensor<2> {
        let [n, d] = like.dims();
        let z = noise.normal_tensor(n, d, &like.device(), like.dtype());
        match self {
            Self::Gaussian => z,
            Self::Rademacher => z.sign(),
            Self::Sphere => {
                let norm = z.clone().square().sum_dim(1).sqrt();
                z.div(norm).mul_scalar((d as f64).sqrt())
            }
        }
    }
}

/// A vector field x ↦ f(x) on `[n, d]` batches (rows independent).
pub type Field<'a> = &'a dyn Fn(Tensor<2>) -> Tensor<2>;

/// (f(x), vᵀ ∂f/∂x) by one reverse pass at a leaf copy of x.
pub fn vector_jacobian(field: Field<'_>, x: &Tensor<2>, v: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let input = x.clone().without_autodiff().autodiff().require_grad();
    let out = field(input.clone());
    let grads = (out.clone() * v.autodiff()).sum().backward();
    let vjp = input
        .grad(&grads)
        .unwrap_or_else(|| x.zeros_like().without_autodiff());
    (out.without_autodiff(), vjp)
}

/// (f(x), ∇·f(x)) exactly: d reverse passes, one per basis vector.
pub fn exact_divergence(field: Field<'_>, x: &Tensor<2>) -> (Tensor<2>, Tensor<1>) {
    let [n, d] = x.dims();
    let mut trace = vec![0.0; n];
    let mut value = None;
    for i in 0..d {
        let unit: Vec<f64> = (0..n * d).map(|k| if k % d == i { 1.0 } else { 0.0 }).collect();
        let (out, vjp) = vector_jacobian(field, x, from_f64_like(unit, [n, d], x));
        for (t, row) in trace.iter_mut().zip(to_f64(&vjp).chunks(d)) {
            *t += row[i];
        }
        value = Some(out);
    }
    let value = value.unwrap_or_else(|| field(x.clone()));
    (value, from_f64_like(trace, [n], x))
}

/// (f(x), vᵀ (∂f/∂x) v): Hutchinson's estimate of ∇·f with the probes `probe` (`[n, d]`).
pub fn hutchinson_divergence(field: Field<'_>, x: &Tensor<2>, probe: &Tensor<2>) -> (Tensor<2>, Tensor<1>) {
    let [n, _] = x.dims();
    let (out, vjp) = vector_jacobian(field, x, probe.clone());
    (out, (vjp * probe.clone()).sum_dim(1).reshape([n]))
}
