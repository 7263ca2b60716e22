//! Keeping the x₀ estimate in the data range during sampling: static clipping to [−c, c]
//! (Ho et al. 2020's sampler) or dynamic thresholding (Saharia et al. 2022, Imagen §2.3):
//! per sample, s = min(max(1, the p-quantile of |x̂₀|), `max_value`), and
//! x̂₀ ← clamp(x̂₀, −s, s)/s.

use burn::tensor::Tensor;
use diffusion_core::tensor::{per_sample, to_f64};
use serde::{Deserialize, Serialize};

/// How the x₀ estimate is kept in range.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum X0Clip {
    /// clamp(x̂₀, −c, c).
    Static {
        /// c (1 for data in [−1, 1]).
        range: f64,
    },
    /// Dynamic thresholding.
    Dynamic {
        /// The quantile p of |x̂₀| (0.995).
        ratio: f64,
        /// The largest threshold s (diffusers' `sample_max_value`, 1).
        max_value: f64,
    },
}

impl X0Clip {
    /// The clipped estimate; a batch `[n, …]` is thresholded sample by sample over all its
    /// other dimensions.
    pub fn apply<const D: usize>(self, x0: Tensor<D>) -> Tensor<D> {
        match self {
            Self::Static { range } => x0.clamp(-range, range),
            Self::Dynamic { ratio, max_value } => {
                let n = x0.dims()[0];
                let values = to_f64(&x0);
                let per = values.len() / n.max(1);
                let s: Vec<f64> = values
                    .chunks(per.max(1))
                    // max(s, 1) then min(·, max_value), as torch.clamp does (max_value < 1 wins).
                    .map(|row| quantile_abs(row, ratio).max(1.0).min(max_value))
                    .collect();
                let s_t = per_sample(&s, &x0);
                x0.max_pair(s_t.clone().neg()).min_pair(s_t.clone()) / s_t
            }
        }
    }
}

/// The `q`-quantile of |x| with linear interpolation between order statistics (position
/// q·(n − 1), as `torch.quantile`).
pub fn quantile_abs(x: &[f64], q: f64) -> f64 {
    let mut a: Vec<f64> = x.iter().map(|v| v.abs()).collect();
    a.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (a.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    a[lo] + (a[hi] - a[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_like_torch() {
        // torch.quantile(tensor([0., 1., 2., 3.]), 0.5) = 1.5; 0.995 of 0..=99 is 98.505.
        assert_eq!(quantile_abs(&[0.0, -1.0, 2.0, 3.0], 0.5), 1.5);
        let v: Vec<f64> = (0..100).map(f64::from).collect();
        assert!((quantile_abs(&v, 0.995) - 98.505).abs() < 1e-12);
    }
}
