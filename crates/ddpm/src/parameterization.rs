//! What a network predicts, and the one conversion layer between the predictions.
//!
//! For a noisy sample x_t = α x₀ + σ ε (any α, σ: variance preserving, VE with α = 1, or a
//! flow path) a network may predict
//! - ε, the noise (Ho et al. 2020);
//! - x₀, the clean sample;
//! - v = α ε − σ x₀ (Salimans & Ho 2022, §4), for which
//!   x₀ = (α x_t − σ v)/(α² + σ²) and ε = (σ x_t + α v)/(α² + σ²);
//! - the score ∇ log p(x_t) = −ε/σ, so that x₀ = (x_t + σ² ∇ log p)/α (Tweedie's formula).
//!
//! Coefficients are host slices of length 1 (shared by the batch) or n (per sample).

use std::str::FromStr;

use burn::tensor::Tensor;
use diffusion_core::tensor::{lincomb, scale};
use serde::{Deserialize, Serialize};

use crate::error::DdpmError;

/// The quantity a network is trained to output (diffusers' `prediction_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Prediction {
    /// The noise ε (`epsilon`).
    #[default]
    #[serde(rename = "epsilon")]
    Epsilon,
    /// The clean sample x₀ (`sample`).
    #[serde(rename = "sample")]
    Sample,
    /// The velocity v = α ε − σ x₀ (`v_prediction`).
    #[serde(rename = "v_prediction")]
    V,
    /// The score ∇ log p(x_t) = −ε/σ.
    #[serde(rename = "score")]
    Score,
}

impl FromStr for Prediction {
    type Err = DdpmError;
    fn from_str(s: &str) -> Result<Self, DdpmError> {
        match s {
            "epsilon" | "eps" => Ok(Self::Epsilon),
            "sample" | "x0" => Ok(Self::Sample),
            "v_prediction" | "v" => Ok(Self::V),
            "score" => Ok(Self::Score),
            other => Err(DdpmError::UnknownPrediction(other.into())),
        }
    }
}

/// `f(aᵢ, bᵢ)` where a list of length 1 stands for the whole batch.
fn map2(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    let n = a.len().max(b.len());
    assert!(
        (a.len() == n || a.len() == 1) && (b.len() == n || b.len() == 1),
        "coefficient lists of lengths {} and {} do not broadcast",
        a.len(),
        b.len()
    );
    let at = |v: &[f64], i: usize| if v.len() == 1 { v[0] } else { v[i] };
    (0..n).map(|i| f(at(a, i), at(b, i))).collect()
}

impl Prediction {
    /// The training target for this prediction, given x₀ and the noise ε.
    pub fn target<const D: usize>(
        self,
        x0: Tensor<D>,
        eps: Tensor<D>,
        alpha: &[f64],
        sigma: &[f64],
    ) -> Tensor<D> {
        match self {
            Self::Epsilon => eps,
            Self::Sample => x0,
            Self::V => lincomb(eps, alpha, x0, &sigma.iter().map(|s| -s).collect::<Vec<_>>()),
            Self::Score => scale(eps, &sigma.iter().map(|s| -1.0 / s).collect::<Vec<_>>()),
        }
    }

    /// The estimate of x₀ implied by a model output at x_t.
    pub fn to_x0<const D: usize>(
        self,
        out: Tensor<D>,
        x_t: Tensor<D>,
        alpha: &[f64],
        sigma: &[f64],
    ) -> Tensor<D> {
        match self {
            Self::Epsilon => lincomb(
                x_t,
                &map2(alpha, sigma, |a, _| 1.0 / a),
                out,
                &map2(alpha, sigma, |a, s| -s / a),
            ),
            Self::Sample => out,
            Self::V => {
                let r2 = map2(alpha, sigma, |a, s| a * a + s * s);
                lincomb(
                    x_t,
                    &map2(alpha, &r2, |a, r| a / r),
                    out,
                    &map2(sigma, &r2, |s, r| -s / r),
                )
            }
            Self::Score => lincomb(
                x_t,
                &map2(alpha, sigma, |a, _| 1.0 / a),
                out,
                &map2(alpha, sigma, |a, s| s * s / a),
            ),
        }
    }

    /// The estimate of ε implied by a model output at x_t.
    pub fn to_eps<const D: usize>(
        self,
        out: Tensor<D>,
        x_t: Tensor<D>,
        alpha: &[f64],
        sigma: &[f64],
    ) -> Tensor<D> {
        match self {
            Self::Epsilon => out,
            Self::Sample => lincomb(
                x_t,
                &map2(alpha, sigma, |_, s| 1.0 / s),
                out,
                &map2(alpha, sigma, |a, s| -a / s),
            ),
            Self::V => {
                let r2 = map2(alpha, sigma, |a, s| a * a + s * s);
                lincomb(
                    x_t,
                    &map2(sigma, &r2, |s, r| s / r),
                    out,
                    &map2(alpha, &r2, |a, r| a / r),
                )
            }
            Self::Score => scale(out, &sigma.iter().map(|s| -s).collect::<Vec<_>>()),
        }
    }

    /// The output a perfect model of this kind gives at x_t when the clean sample is `x0`
    /// (the inverse of [`to_x0`](Self::to_x0)).
    pub fn from_x0<const D: usize>(
        self,
        x0: Tensor<D>,
        x_t: Tensor<D>,
        alpha: &[f64],
        sigma: &[f64],
    ) -> Tensor<D> {
        if self == Self::Sample {
            return x0;
        }
        // ε = (x_t − α x₀)/σ.
        let eps = lincomb(
            x_t,
            &map2(alpha, sigma, |_, s| 1.0 / s),
            x0.clone(),
            &map2(alpha, sigma, |a, s| -a / s),
        );
        self.target(x0, eps, alpha, sigma)
    }
}
