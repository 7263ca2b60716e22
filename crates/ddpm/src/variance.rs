//! The variance of the reverse step p(x_{t−1} | x_t) = N(μ_θ, Σ_θ): fixed (Ho et al. 2020:
//! β̃_t or β_t) or learned (Nichol & Dhariwal 2021, eq. 15: the network outputs v and
//! Σ_θ = exp(v ln β_t + (1 − v) ln β̃_t), with v mapped from [−1, 1] to [0, 1]).

use burn::tensor::Tensor;
use diffusion_core::tensor::{from_f64_like, scale};
use serde::{Deserialize, Serialize};

use crate::error::{DdpmError, Result};
use crate::posterior::Posterior;

/// How the reverse-step variance is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelVariance {
    /// β̃_t, the posterior variance (with ln β̃₀ clipped to ln β̃₁).
    #[default]
    FixedSmall,
    /// β_t, with β̃₁ at t = 0 (as improved-diffusion's `FIXED_LARGE`).
    FixedLarge,
    /// The network outputs ln Σ directly (improved-diffusion's `LEARNED`).
    Learned,
    /// The network outputs v ∈ [−1, 1]; ln Σ = ((v + 1)/2) ln β_t + (1 − (v + 1)/2) ln β̃_t.
    LearnedRange,
}

impl ModelVariance {
    /// Whether the network has a variance head (twice the data channels).
    pub fn is_learned(self) -> bool {
        matches!(self, Self::Learned | Self::LearnedRange)
    }

    /// ln Σ_θ per element at timesteps `t` (one per sample), shaped like `like`; `head` is
    /// the variance half of the network output when the variance is learned.
    pub fn log_variance<const D: usize>(
        self,
        posterior: &Posterior,
        t: &[usize],
        head: Option<Tensor<D>>,
        like: &Tensor<D>,
    ) -> Result<Tensor<D>> {
        let per_sample = |values: Vec<f64>| {
            let ones = like.ones_like();
            scale(ones, &values)
        };
        match (self, head) {
            (Self::FixedSmall, _) => Ok(per_sample(posterior.gather(&posterior.log_variance_clipped, t)?)),
            (Self::FixedLarge, _) => {
                let table: Vec<f64> = (0..posterior.len())
                    .map(|i| {
                        if i == 0 {
                            posterior.variance[1.min(posterior.len() - 1)]
                        } else {
                            posterior.betas[i]
                        }
                        .ln()
                    })
                    .collect();
                Ok(per_sample(posterior.gather(&table, t)?))
            }
            (Self::Learned, Some(head)) => Ok(head),
            (Self::LearnedRange, Some(head)) => {
                let min_log = posterior.gather(&posterior.log_variance_clipped, t)?;
                let max_log: Vec<f64> = posterior
                    .gather(&posterior.betas, t)?
                    .iter()
                    .map(|b| b.ln())
                    .collect();
                let frac = head.add_scalar(1.0).mul_scalar(0.5);
                let span: Vec<f64> = max_log.iter().zip(&min_log).map(|(a, b)| a - b).collect();
                Ok(scale(frac, &span) + per_sample(min_log))
            }
            (_, None) => Err(DdpmError::MissingVarianceHead),
        }
    }
}

/// Splits a network output with a variance head, `[n, 2C, …]`, into its mean part and its
/// variance part, each `[n, C, …]`.
pub fn split_variance_head<const D: usize>(out: Tensor<D>) -> Result<(Tensor<D>, Tensor<D>)> {
    let dims = out.dims();
    if D < 2 || !dims[1].is_multiple_of(2) {
        return Err(DdpmError::MissingVarianceHead);
    }
    let c = dims[1] / 2;
    Ok((out.clone().narrow(1, 0, c), out.narrow(1, c, c)))
}

/// A tensor of the per-sample values `v` broadcast like `like`.
pub(crate) fn broadcast<const D: usize>(v: Vec<f64>, like: &Tensor<D>) -> Tensor<D> {
    let n = like.dims()[0];
    let mut shape = [1usize; D];
    shape[0] = n;
    from_f64_like(v, shape, like)
}
