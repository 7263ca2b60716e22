//! The forward (noising) process of a discrete schedule, in closed form:
//! q(x_t | x₀) = N(√ᾱ_t x₀, (1 − ᾱ_t) I), i.e. x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε
//! (Ho et al. 2020, eq. 4).

use burn::tensor::Tensor;
use diffusion_core::tensor::lincomb;
use diffusion_schedules::DiscreteSchedule;

use crate::error::{DdpmError, Result};

/// The forward process of a discrete schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardProcess {
    schedule: DiscreteSchedule,
}

impl ForwardProcess {
    /// The forward process of `schedule`.
    pub fn new(schedule: DiscreteSchedule) -> Self {
        Self { schedule }
    }

    /// The schedule.
    pub fn schedule(&self) -> &DiscreteSchedule {
        &self.schedule
    }

    /// The number of timesteps T.
    pub fn num_timesteps(&self) -> usize {
        self.schedule.len()
    }

    /// (√ᾱ_t, √(1 − ᾱ_t)) for each timestep: the α and σ of x_t = α x₀ + σ ε.
    pub fn coefficients(&self, t: &[usize]) -> Result<(Vec<f64>, Vec<f64>)> {
        let ab = self.schedule.alphas_cumprod();
        let max = ab.len() - 1;
        let mut alpha = Vec::with_capacity(t.len());
        let mut sigma = Vec::with_capacity(t.len());
        for &ti in t {
            let a = *ab.get(ti).ok_or(DdpmError::TimestepOutOfRange { t: ti, max })?;
            alpha.push(a.sqrt());
            sigma.push((1.0 - a).sqrt());
        }
        Ok((alpha, sigma))
    }

    /// A draw from q(x_t | x₀) with the given noise ε: √ᾱ_t x₀ + √(1 − ᾱ_t) ε, one timestep
    /// per sample.
    pub fn sample<const D: usize>(&self, x0: Tensor<D>, noise: Tensor<D>, t: &[usize]) -> Result<Tensor<D>> {
        if x0.dims() != noise.dims() {
            return Err(DdpmError::ShapeMismatch {
                what: "x0 and noise",
                left: x0.dims().to_vec(),
                right: noise.dims().to_vec(),
            });
        }
        let n = x0.dims()[0];
        if t.len() != n {
            return Err(DdpmError::BatchMismatch {
                what: "timesteps",
                got: t.len(),
                batch: n,
            });
        }
        let (alpha, sigma) = self.coefficients(t)?;
        Ok(lincomb(x0, &alpha, noise, &sigma))
    }
}
