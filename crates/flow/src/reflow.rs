//! Rectified flow (Liu et al. 2022, "Flow straight and fast"): reflow, straightness and
//! one-step distillation.
//!
//! - **Reflow.** Given a flow Z, draw noise x₀, integrate it to x₁ = Z₁(x₀), store the pairs,
//!   and train the next flow with the rectified (linear, no spread) matcher on the fixed pairs.
//!   Repeating k times gives the k-rectified flow, whose paths straighten.
//! - **Straightness** S(Z) = ∫₀¹ E ‖(Z₁ − Z₀) − v(Z_t, t)‖² dt (eq. 9), 0 exactly for
//!   straight paths; estimated on the discretised trajectories of N uniform Euler steps, where
//!   Z₁ − Z₀ is the mean of the step velocities.
//! - **Distillation.** A one-step map T(x₀) = x₀ + v(x₀, 0) fitted to the pairs of a
//!   k-rectified flow: the loss ‖x₀ + v(x₀, 0) − x₁‖² (§2.3).

use std::path::Path;

use burn::tensor::Tensor;
use diffusion_core::npy::NpyArray;
use diffusion_core::tensor::{from_f64_like, to_f64};
use diffusion_samplers::FixedStep;

use crate::velocity::{VelocityField, integrate_flow};

/// The coupled pairs (x₀, x₁) of a flow, for the next reflow.
#[derive(Clone, Debug)]
pub struct ReflowPairs {
    /// The noise, `[n, d]`.
    pub x0: Tensor<2>,
    /// Its image under the flow, `[n, d]`.
    pub x1: Tensor<2>,
}

impl ReflowPairs {
    /// Integrates `x0` through `field` with `steps` steps of `method` (Liu et al. use an
    /// accurate solver here: the pairs define the next flow).
    pub fn generate(field: &dyn VelocityField, x0: Tensor<2>, method: FixedStep, steps: usize) -> Self {
        let x1 = integrate_flow(field, x0.clone(), method, steps);
        Self { x0, x1 }
    }

    /// Writes `x0.npy` and `x1.npy` into `dir` (atomically, each).
    pub fn save(&self, dir: &Path) -> Result<(), diffusion_core::Error> {
        std::fs::create_dir_all(dir).map_err(|source| diffusion_core::Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        NpyArray::from_tensor(&self.x0).write(dir.join("x0.npy"))?;
        NpyArray::from_tensor(&self.x1).write(dir.join("x1.npy"))
    }

    /// Reads pairs written by [`save`](Self::save) onto `like`'s device and dtype.
    pub fn load(dir: &Path, like: &Tensor<2>) -> Result<Self, diffusion_core::Error> {
        let read = |name: &str| -> Result<Tensor<2>, diffusion_core::Error> {
            NpyArray::read(dir.join(name))?.to_tensor::<2>(&like.device(), Some(like.dtype()))
        };
        let (x0, x1) = (read("x0.npy")?, read("x1.npy")?);
        if x0.dims() != x1.dims() {
            return Err(diffusion_core::Error::Shape {
                what: format!("{}/x1.npy", dir.display()),
                expected: format!("{:?} (the shape of x0.npy)", x0.dims()),
                got: x1.dims().to_vec(),
            });
        }
        Ok(Self { x0, x1 })
    }
}

/// S(Z) on the trajectories of `steps` uniform Euler steps from `x0`.
pub fn straightness(field: &dyn VelocityField, x0: Tensor<2>, steps: usize) -> f64 {
    let h = 1.0 / steps as f64;
    let mut x = x0;
    let mut velocities = Vec::with_capacity(steps);
    for k in 0..steps {
        let v = field.velocity(x.clone(), k as f64 * h);
        x = x + v.clone().mul_scalar(h);
        velocities.push(v);
    }
    let mean = velocities
        .iter()
        .cloned()
        .reduce(|a, b| a + b)
        .expect("at least one step")
        .div_scalar(steps as f64);
    let [n, _] = mean.dims();
    let total: f64 = velocities
        .into_iter()
        .map(|v| to_f64(&(mean.clone() - v).square().sum()).iter().sum::<f64>())
        .sum();
    total / (steps * n) as f64
}

/// The distillation loss ‖x₀ + v(x₀, 0) − x₁‖² per sample, for a model called as
/// `model(x, t)` with one time per sample.
pub fn distillation_loss(
    model: &dyn Fn(Tensor<2>, Tensor<1>) -> Tensor<2>,
    pairs: &ReflowPairs,
) -> Tensor<1> {
    let [n, _] = pairs.x0.dims();
    let t = from_f64_like(vec![0.0; n], [n], &pairs.x0);
    let jump = pairs.x0.clone() + model(pairs.x0.clone(), t);
    (jump - pairs.x1.clone()).square().sum_dim(1).reshape([n])
}
