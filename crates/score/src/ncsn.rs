//! Noise-conditional score networks (Song & Ermon 2019, 2020): the score model as a
//! denoiser, and NCSNv2's rules for choosing its noise ladder and Langevin step size.
//!
//! - the model's output o(x, σ) is the score (NCSN) or, by NCSNv2's Technique 3, o(x)/σ;
//!   either way the denoiser is Tweedie's D(x, σ) = x + σ² s(x, σ) (for VE noise; for a
//!   level (α, σ), D = (x + σ² s)/α);
//! - Technique 1: σ₁ as large as the largest pairwise distance between training points;
//! - Technique 2: a geometric ladder with ratio γ = σ_{i−1}/σ_i such that
//!   Φ(√(2D)(γ − 1) + 3γ) − Φ(√(2D)(γ − 1) − 3γ) ≈ ½;
//! - Technique 4: the step ε (α_i = ε σ_i²/σ_L², T steps per level) that brings
//!   (1 − ε/σ_L²)^{2T} (γ² − 2ε/(σ_L² − σ_L²(1 − ε/σ_L²)²)) + 2ε/(σ_L² − σ_L²(1 − ε/σ_L²)²)
//!   closest to 1.

use burn::tensor::Tensor;
use diffusion_core::tensor::{from_f64_like, to_f64};
use diffusion_samplers::{Denoiser, NoiseLevel};
use serde::{Deserialize, Serialize};

/// What the network's output o(x, c) means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreOutput {
    /// o = s(x, σ).
    #[default]
    Score,
    /// o = σ s(x, σ) (NCSNv2's unconditional network divided by σ; also score_sde's
    /// continuous VE models, which rescale their output by 1/σ inside).
    ScaledByNoise,
}

/// A score network of noisy data as a denoiser. The network sees `x` and one conditioning
/// scalar per sample, c = `conditioning(σ)` (σ itself by default).
pub struct ScoreModelDenoiser<F> {
    model: F,
    output: ScoreOutput,
    conditioning: fn(&NoiseLevel) -> f64,
}

impl<F: Fn(Tensor<2>, Tensor<1>) -> Tensor<2>> ScoreModelDenoiser<F> {
    /// The denoiser of `model`, whose output means `output`, conditioned on σ.
    pub fn new(model: F, output: ScoreOutput) -> Self {
        Self {
            model,
            output,
            conditioning: |level| level.sigma,
        }
    }

    /// Conditions the network on another function of the level (e.g. a timestep).
    pub fn conditioned_on(mut self, conditioning: fn(&NoiseLevel) -> f64) -> Self {
        self.conditioning = conditioning;
        self
    }

    /// The score s(x, σ) at `level`.
    pub fn score(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2> {
        let [n, _] = x.dims();
        let cond = from_f64_like(vec![(self.conditioning)(&level); n], [n], &x);
        let out = (self.model)(x, cond);
        match self.output {
            ScoreOutput::Score => out,
            ScoreOutput::ScaledByNoise => out.div_scalar(level.sigma),
        }
    }
}

impl<F: Fn(Tensor<2>, Tensor<1>) -> Tensor<2>> Denoiser for ScoreModelDenoiser<F> {
    /// D = (x + σ² s)/α (Tweedie).
    fn denoise(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2> {
        let s = self.score(x.clone(), level);
        (x + s.mul_scalar(level.sigma * level.sigma)).div_scalar(level.alpha)
    }
}

/// Technique 1: the largest Euclidean distance between two rows of `data` (`[n, d]`),
/// NCSNv2's σ₁. O(n²) on the host; pass a subsample of a large data set.
pub fn max_pairwise_distance(data: &Tensor<2>) -> f64 {
    let [_, d] = data.dims();
    let rows = to_f64(data);
    let rows: Vec<&[f64]> = rows.chunks(d).collect();
    let mut best = 0.0f64;
    for (i, a) in rows.iter().enumerate() {
        for b in &rows[i + 1..] {
            let dist = a.iter().zip(*b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>();
            best = best.max(dist);
        }
    }
    best.sqrt()
}

/// Technique 2's overlap Φ(√(2D)(γ − 1) + 3γ) − Φ(√(2D)(γ − 1) − 3γ) of consecutive levels
/// with ratio γ in dimension D.
pub fn ladder_overlap(gamma: f64, dim: usize) -> f64 {
    let c = (2.0 * dim as f64).sqrt() * (gamma - 1.0);
    normal_cdf(c + 3.0 * gamma) - normal_cdf(c - 3.0 * gamma)
}

/// Technique 2: the ratio γ > 1 whose overlap is ½ in dimension D (bisection).
pub fn ladder_ratio(dim: usize) -> f64 {
    // The overlap falls from Φ(3) − Φ(−3) at γ = 1 towards 0 as γ grows.
    let (mut lo, mut hi) = (1.0, 2.0);
    while ladder_overlap(hi, dim) > 0.5 {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if ladder_overlap(mid, dim) > 0.5 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The number of levels of a geometric ladder from σ₁ to σ_L with ratio at most γ.
pub fn ladder_levels(sigma_max: f64, sigma_min: f64, gamma: f64) -> usize {
    ((sigma_max / sigma_min).ln() / gamma.ln()).ceil() as usize + 1
}

/// Technique 4's criterion for step ε at the last level σ_L with T steps per level and
/// ladder ratio γ (1 when the Langevin chain's variance lands exactly on σ_{i}² after
/// starting from σ_{i−1}²).
pub fn step_criterion(eps: f64, gamma: f64, sigma_min: f64, steps_per_level: usize) -> f64 {
    let s2 = sigma_min * sigma_min;
    let decay = 1.0 - eps / s2;
    let q = 2.0 * eps / (s2 - s2 * decay * decay);
    decay.powi(2 * steps_per_level as i32) * (gamma * gamma - q) + q
}

/// Technique 4: the step ε in (0, σ_L²) that brings [`step_criterion`] closest to 1, by
/// golden-section search on a log scale after a coarse scan.
pub fn step_size(gamma: f64, sigma_min: f64, steps_per_level: usize) -> f64 {
    let f = |log_eps: f64| (step_criterion(log_eps.exp(), gamma, sigma_min, steps_per_level) - 1.0).abs();
    let (lo, hi) = (
        (sigma_min * sigma_min * 1e-8).ln(),
        (sigma_min * sigma_min * 0.5).ln(),
    );
    let grid = 400;
    let at = |k: usize| lo + (hi - lo) * k as f64 / grid as f64;
    let best = (0..=grid)
        .min_by(|&a, &b| f(at(a)).total_cmp(&f(at(b))))
        .unwrap_or(0);
    let (mut a, mut b) = (at(best.saturating_sub(1)), at((best + 1).min(grid)));
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..200 {
        let c = b - ratio * (b - a);
        let d = a + ratio * (b - a);
        if f(c) < f(d) {
            b = d;
        } else {
            a = c;
        }
    }
    (0.5 * (a + b)).exp()
}

/// Φ(x), the standard normal CDF, to about 1e-15 relative.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// The complementary error function: the series
/// erf x = (2/√π) e^{−x²} Σₙ 2ⁿ x^{2n+1}/(1·3⋯(2n+1)) (all terms positive) for |x| < 1.5,
/// and the continued fraction erfc x = (e^{−x²}/√π) / (x + ½/(x + 1/(x + (3/2)/(x + …))))
/// (100 terms) beyond; both about 1e-15 relative.
pub fn erfc(x: f64) -> f64 {
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    let pi_sqrt = std::f64::consts::PI.sqrt();
    if x < 1.5 {
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term > sum * 1e-17 {
            n += 1.0;
            term *= 2.0 * x * x / (2.0 * n + 1.0);
            sum += term;
        }
        1.0 - 2.0 / pi_sqrt * (-x * x).exp() * sum
    } else {
        let mut frac = x;
        for k in (1..=100).rev() {
            frac = x + (k as f64 / 2.0) / frac;
        }
        (-x * x).exp() / (pi_sqrt * frac)
    }
}
