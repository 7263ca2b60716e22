//! The Gaussian-mixture oracle: an exact model, in every form a network takes.
//!
//! For data p(x₀) = Σₖ wₖ N(μₖ, sₖ² I) in d dimensions and x = α x₀ + σ ε, everything a
//! trained network approximates has a closed form (vₖ = α² sₖ² + σ²):
//!
//! - p(x) = Σₖ wₖ N(x; α μₖ, vₖ I) — the exact density of every noised marginal;
//! - responsibilities rₖ(x) ∝ wₖ N(x; α μₖ, vₖ I);
//! - E[x₀ | x, k] = mₖ = μₖ + (α sₖ²/vₖ)(x − α μₖ), Cov[x₀ | x, k] = (sₖ² σ²/vₖ) I;
//! - the denoiser D(x) = E[x₀ | x] = Σₖ rₖ mₖ, and by Tweedie the score (α D − x)/σ²,
//!   the noise ε̂ = (x − α D)/σ and the velocity v = α ε̂ − σ D;
//! - ∂D/∂x = (α/σ²) Cov[x₀ | x], so div D = (α/σ²) tr Cov[x₀ | x] with
//!   tr Cov = Σₖ rₖ (d sₖ² σ²/vₖ + |mₖ − D|²) — the divergence of the probability-flow ODE;
//! - for the linear flow path from noise (t = 0) to data (t = 1), x_t = (1 − t) ε + t x₀,
//!   the marginal velocity E[x₀ − ε | x_t] = D − ε̂ with α = t, σ = 1 − t.
//!
//! It implements [`Denoiser`] and wraps as a discrete-time ε / x₀ / v model, so a sampler's
//! error can be measured apart from any model error. Everything is computed with tensor ops
//! on the device and in the dtype of the input (f64 on flex for reference tests).

use std::path::Path;

use burn::tensor::activation::softmax;
use burn::tensor::{Tensor, TensorData};
use diffusion_core::noise::{fill_normal, sample_rng, uniform};
use diffusion_core::tensor::{from_f64_like, to_f64};
use diffusion_ddpm::Prediction;
use diffusion_schedules::{DiscreteSchedule, convert};
use serde::{Deserialize, Serialize};

use crate::denoiser::Denoiser;
use crate::level::NoiseLevel;

/// A Gaussian mixture with isotropic components.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GaussianMixture {
    /// Mixture weights, positive, summing to 1.
    pub weights: Vec<f64>,
    /// Component means, one row of `dim` values each.
    pub means: Vec<Vec<f64>>,
    /// Component standard deviations, positive.
    pub stds: Vec<f64>,
}

/// A mixture that cannot be built from the values given.
#[derive(Debug, thiserror::Error)]
pub enum OracleError {
    /// Inconsistent or out-of-range parameters.
    #[error("invalid Gaussian mixture: {0}")]
    Invalid(String),
    /// The file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// How a discrete-time model maps a fractional timestep to a noise level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepInterpolation {
    /// σ interpolated linearly in log σ (k-diffusion's `t_to_sigma`).
    #[default]
    LogSigma,
    /// σ interpolated linearly in t (`np.interp`, diffusers' Euler-type schedulers).
    Sigma,
}

/// The per-sample posterior of the mixture at x.
struct Posterior {
    /// Responsibilities `[n, K]`.
    resp: Tensor<2>,
    /// Component posterior means mₖ, `[n, K, d]`.
    means: Tensor<3>,
    /// D(x) = Σ rₖ mₖ, `[n, d]`.
    denoised: Tensor<2>,
    /// Log-density of x, `[n]`.
    log_prob: Tensor<1>,
    /// Posterior variances sₖ² σ²/vₖ, `[n, K]`.
    comp_var: Tensor<2>,
    /// log p(x, k) (unnormalised responsibilities in log space), `[n, K]`.
    logits: Tensor<2>,
}

impl GaussianMixture {
    /// A mixture; fails unless weights are positive and sum to 1 (within 1e-9), standard
    /// deviations are positive and all means have the same dimension.
    pub fn new(weights: Vec<f64>, means: Vec<Vec<f64>>, stds: Vec<f64>) -> Result<Self, OracleError> {
        let bad = |m: String| Err(OracleError::Invalid(m));
        let k = weights.len();
        if k == 0 {
            return bad("it has no components".into());
        }
        if means.len() != k || stds.len() != k {
            return bad(format!(
                "{k} weights but {} means and {} stds; give one of each per component",
                means.len(),
                stds.len()
            ));
        }
        let d = means[0].len();
        if d == 0 || means.iter().any(|m| m.len() != d) {
            return bad("every mean must have the same, non-zero dimension".into());
        }
        if means.iter().flatten().any(|x| !x.is_finite()) {
            return bad("means must be finite".into());
        }
        if weights.iter().any(|w| w.is_nan() || *w <= 0.0) || (weights.iter().sum::<f64>() - 1.0).abs() > 1e-9
        {
            return bad(format!("weights {weights:?} must be positive and sum to 1"));
        }
        if stds.iter().any(|s| !(*s > 0.0 && s.is_finite())) {
            return bad(format!("stds {stds:?} must be positive"));
        }
        Ok(Self { weights, means, stds })
    }

    /// Reads `{"weights": [...], "means": [[...], ...], "stds": [...]}`.
    pub fn from_json(path: &Path) -> Result<Self, OracleError> {
        let file_err = |reason: String| OracleError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        let raw: GaussianMixture = serde_json::from_str(&text).map_err(|e| {
            file_err(format!(
                "{e}; expected {{\"weights\": [...], \"means\": [[...], ...], \"stds\": [...]}}"
            ))
        })?;
        Self::new(raw.weights, raw.means, raw.stds)
    }

    /// The dimension d.
    pub fn dim(&self) -> usize {
        self.means[0].len()
    }

    /// The number of components K.
    pub fn components(&self) -> usize {
        self.weights.len()
    }

    /// Exact samples `range` of seed `seed` (per-sample streams), row-major `[len, d]`.
    pub fn sample_host(&self, seed: u64, range: std::ops::Range<u64>) -> Vec<f64> {
        let d = self.dim();
        let mut out = Vec::with_capacity((range.end - range.start) as usize * d);
        let mut z = vec![0.0; d];
        for i in range {
            let mut rng = sample_rng(seed, i);
            let u = uniform(&mut rng);
            let mut acc = 0.0;
            let k = self
                .weights
                .iter()
                .position(|w| {
                    acc += w;
                    u < acc
                })
                .unwrap_or(self.components() - 1);
            fill_normal(&mut rng, &mut z);
            out.extend(self.means[k].iter().zip(&z).map(|(m, e)| m + self.stds[k] * e));
        }
        out
    }

    /// Exact samples of x₀ given its known part: B x₀ = `values` for orthonormal rows `basis`
    /// (B, `[m][d]`; unit vectors eᵢ for inpainting coordinates, (1, …, 1)/√d for a grey
    /// level). Each component being isotropic, B x₀ and (I − BᵀB) x₀ are independent within
    /// it, so the conditional is the mixture with weights ∝ πₖ N(v; B μₖ, sₖ² I) of
    /// Bᵀv + (I − BᵀB)(μₖ + sₖ z). Rows `[len, d]`, per-sample streams of `seed`.
    pub fn sample_conditional_host(
        &self,
        basis: &[Vec<f64>],
        values: &[f64],
        seed: u64,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<f64>, OracleError> {
        let d = self.dim();
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let orthonormal = basis.iter().enumerate().all(|(i, a)| {
            a.len() == d
                && basis
                    .iter()
                    .enumerate()
                    .all(|(j, b)| (dot(a, b) - f64::from(u8::from(i == j))).abs() < 1e-9)
        });
        if !orthonormal || basis.len() != values.len() || basis.len() >= d {
            return Err(OracleError::Invalid(format!(
                "conditioning needs fewer than {d} orthonormal rows of length {d}, one value each; \
                 got {} rows and {} values",
                basis.len(),
                values.len()
            )));
        }
        let project = |x: &[f64]| -> Vec<f64> {
            // (I − BᵀB) x + Bᵀ v
            let mut out = x.to_vec();
            for (b, v) in basis.iter().zip(values) {
                let c = dot(b, x);
                out.iter_mut().zip(b).for_each(|(o, bi)| *o += (v - c) * bi);
            }
            out
        };
        let log_w: Vec<f64> = (0..self.components())
            .map(|k| {
                let s2 = self.stds[k] * self.stds[k];
                let sq: f64 = basis
                    .iter()
                    .zip(values)
                    .map(|(b, v)| (v - dot(b, &self.means[k])).powi(2))
                    .sum();
                self.weights[k].ln()
                    - 0.5 * basis.len() as f64 * (2.0 * std::f64::consts::PI * s2).ln()
                    - sq / (2.0 * s2)
            })
            .collect();
        let max = log_w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = log_w.iter().map(|l| (l - max).exp()).collect();
        let total: f64 = w.iter().sum();
        // Components whose weight underflows to 0 are dropped.
        let kept: Vec<usize> = (0..w.len()).filter(|&k| w[k] > 0.0).collect();
        let conditional = Self::new(
            kept.iter().map(|&k| w[k] / total).collect(),
            kept.iter().map(|&k| self.means[k].clone()).collect(),
            kept.iter().map(|&k| self.stds[k]).collect(),
        )?;
        Ok(conditional
            .sample_host(seed, range)
            .chunks(d)
            .flat_map(project)
            .collect())
    }

    /// Per-sample α and σ as `[n, 1]` tensors like `x`.
    fn coefs(x: &Tensor<2>, alpha: &[f64], sigma: &[f64]) -> (Tensor<2>, Tensor<2>) {
        let n = x.dims()[0];
        let spread = |v: &[f64]| if v.len() == 1 { vec![v[0]; n] } else { v.to_vec() };
        (
            from_f64_like(spread(alpha), [n, 1], x),
            from_f64_like(spread(sigma), [n, 1], x),
        )
    }

    fn posterior(&self, x: Tensor<2>, alpha: &[f64], sigma: &[f64]) -> Posterior {
        let [n, d] = x.dims();
        let k = self.components();
        let (a, s) = Self::coefs(&x, alpha, sigma);
        let means = from_f64_like(self.means.concat(), [1, k, d], &x);
        let var0 = from_f64_like(self.stds.iter().map(|s| s * s).collect(), [1, k], &x);
        let log_w = from_f64_like(self.weights.iter().map(|w| w.ln()).collect(), [1, k], &x);
        // vₖ = α² sₖ² + σ², per sample and component: [n, K].
        let v = a.clone().square() * var0.clone() + s.clone().square();
        let centred = x.clone().reshape([n, 1, d]) - means.clone() * a.clone().reshape([n, 1, 1]); // [n, K, d]
        let sq = centred.clone().square().sum_dim(2).reshape([n, k]);
        let logits = log_w
            - v.clone()
                .log()
                .add_scalar((2.0 * std::f64::consts::PI).ln())
                .mul_scalar(d as f64 / 2.0)
            - sq / v.clone().mul_scalar(2.0);
        let max = logits.clone().max_dim(1); // [n, 1]
        let log_prob = (logits.clone() - max.clone()).exp().sum_dim(1).log() + max;
        let resp = softmax(logits.clone(), 1);
        let gain = (a.clone() * var0.clone() / v.clone()).reshape([n, k, 1]);
        let comp_means = means + centred * gain; // [n, K, d]
        let denoised = (comp_means.clone() * resp.clone().reshape([n, k, 1]))
            .sum_dim(1)
            .reshape([n, d]);
        let comp_var = var0 * s.square() / v;
        Posterior {
            resp,
            means: comp_means,
            denoised,
            log_prob: log_prob.reshape([n]),
            comp_var,
            logits,
        }
    }

    /// The mixture of `components` alone, weights renormalised: with a class per group of
    /// components, the exact class-conditional model p(x₀ | c).
    pub fn restricted(&self, components: &[usize]) -> Result<Self, OracleError> {
        if components.is_empty() || components.iter().any(|&k| k >= self.components()) {
            return Err(OracleError::Invalid(format!(
                "components {components:?} must be a non-empty subset of 0..{}",
                self.components()
            )));
        }
        let total: f64 = components.iter().map(|&k| self.weights[k]).sum();
        Self::new(
            components.iter().map(|&k| self.weights[k] / total).collect(),
            components.iter().map(|&k| self.means[k].clone()).collect(),
            components.iter().map(|&k| self.stds[k]).collect(),
        )
    }

    /// The exact noisy classifier log p(c | x) at `level` (Dhariwal & Nichol's p_φ(y | x_t)),
    /// `[n, C]`, for classes given as groups of components: the log of the responsibility mass
    /// of each group. Differentiable in x (autodiff gives ∇ₓ log p(c | x)).
    pub fn class_log_posterior(&self, x: Tensor<2>, level: NoiseLevel, classes: &[Vec<usize>]) -> Tensor<2> {
        let [n, _] = x.dims();
        let post = self.posterior(x, &[level.alpha], &[level.sigma]);
        let k = self.components();
        // log Σ_{k ∈ c} p(x, k) − log p(x), in log space (no responsibility underflows to 0).
        let columns: Vec<Tensor<2>> = classes
            .iter()
            .map(|group| {
                let outside: Vec<f64> = (0..k)
                    .map(|j| if group.contains(&j) { 0.0 } else { -1e30 })
                    .collect();
                let masked = post.logits.clone() + from_f64_like(outside, [1, k], &post.logits);
                let max = masked.clone().max_dim(1);
                ((masked - max.clone()).exp().sum_dim(1).log() + max).reshape([n, 1])
            })
            .collect();
        Tensor::cat(columns, 1) - post.log_prob.reshape([n, 1])
    }

    /// ∇ₓ log p(c | x) of the exact noisy classifier for class `class`, `[n, d]`, by
    /// reverse-mode autodiff of [`class_log_posterior`](Self::class_log_posterior): the
    /// `grad_log_p` of exact classifier guidance.
    pub fn class_log_posterior_grad(
        &self,
        x: Tensor<2>,
        level: NoiseLevel,
        classes: &[Vec<usize>],
        class: usize,
    ) -> Tensor<2> {
        crate::guidance::grad_log_prob_of(|x| self.class_log_posterior(x, level, classes), x, &[class])
    }

    /// D(x) = E[x₀ | x] at the noise level (α, σ), per sample or shared.
    pub fn denoise_at(&self, x: Tensor<2>, alpha: &[f64], sigma: &[f64]) -> Tensor<2> {
        self.posterior(x, alpha, sigma).denoised
    }

    /// log p(x) of the noised marginal at (α, σ), `[n]`; at σ = 0 and α = 1, the data density.
    pub fn log_prob(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<1> {
        self.posterior(x, &[level.alpha], &[level.sigma]).log_prob
    }

    /// The score ∇ₓ log p(x) = (α D − x)/σ².
    pub fn score(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2> {
        let d = self.denoise(x.clone(), level);
        (d.mul_scalar(level.alpha) - x).div_scalar(level.sigma * level.sigma)
    }

    /// tr Cov[x₀ | x], `[n]`.
    pub fn posterior_trace_cov(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<1> {
        let [n, d] = x.dims();
        let p = self.posterior(x, &[level.alpha], &[level.sigma]);
        let k = self.components();
        let spread = (p.means - p.denoised.reshape([n, 1, d]))
            .square()
            .sum_dim(2)
            .reshape([n, k]);
        let within = p.comp_var.mul_scalar(d as f64);
        ((within + spread) * p.resp).sum_dim(1).reshape([n])
    }

    /// div D(x) = (α/σ²) tr Cov[x₀ | x], `[n]`.
    pub fn denoiser_divergence(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<1> {
        self.posterior_trace_cov(x, level)
            .mul_scalar(level.alpha / (level.sigma * level.sigma))
    }

    /// The output of a perfect network of kind `prediction` at x (ε̂, x̂₀, v̂ or the score).
    pub fn predict(&self, x: Tensor<2>, level: NoiseLevel, prediction: Prediction) -> Tensor<2> {
        let d = self.denoise(x.clone(), level);
        prediction.from_x0(d, x, &[level.alpha], &[level.sigma])
    }

    /// The marginal velocity E[x₀ − ε | x_t] of the linear path x_t = (1 − t) ε + t x₀ from
    /// noise (t = 0) to data (t = 1).
    pub fn flow_velocity(&self, x: Tensor<2>, t: f64) -> Tensor<2> {
        let level = NoiseLevel {
            alpha: t,
            sigma: 1.0 - t,
            timestep: None,
        };
        if t >= 1.0 {
            // At the data end the velocity is x − E[ε | x] = x (ε is independent of x₀ there).
            return x;
        }
        let d = self.denoise(x.clone(), level);
        let eps = (x - d.clone().mul_scalar(t)).div_scalar(1.0 - t);
        d - eps
    }

    /// The oracle as a network of kind `prediction` trained on a discrete VP schedule, called
    /// as `model(x_t, t)` with VP-scaled x_t and (possibly fractional, per-sample) timesteps;
    /// σ at a fractional timestep follows `interpolation`.
    pub fn discrete_model<'a>(
        &'a self,
        schedule: &'a DiscreteSchedule,
        prediction: Prediction,
        interpolation: TimestepInterpolation,
    ) -> impl Fn(Tensor<2>, Tensor<1>) -> Tensor<2> + 'a {
        move |x_t: Tensor<2>, t: Tensor<1>| {
            let (alpha, sigma): (Vec<f64>, Vec<f64>) = to_f64(&t)
                .into_iter()
                .map(|ti| {
                    let ve = match interpolation {
                        TimestepInterpolation::LogSigma => schedule.t_to_sigma(ti),
                        TimestepInterpolation::Sigma => schedule.t_to_sigma_linear(ti),
                    };
                    convert::sigma_to_alpha_sigma(ve)
                })
                .unzip();
            let d = self.denoise_at(x_t.clone(), &alpha, &sigma);
            prediction.from_x0(d, x_t, &alpha, &sigma)
        }
    }

    /// The oracle as a velocity network of the linear path in `convention`, called as
    /// `model(x, t)` with `t = time · time_scale` (the same time for the whole batch).
    pub fn velocity_model(
        &self,
        convention: crate::flow::FlowConvention,
        time_scale: f64,
    ) -> impl Fn(Tensor<2>, Tensor<1>) -> Tensor<2> + '_ {
        move |x: Tensor<2>, t: Tensor<1>| {
            let time = to_f64(&t)[0] / time_scale;
            crate::flow::velocity(self, x, convention.level(time), convention)
        }
    }

    /// The means as a `[K, d]` tensor like `like` (for plotting and tests).
    pub fn means_tensor(&self, like: &Tensor<2>) -> Tensor<2> {
        let data = TensorData::new(self.means.concat(), [self.components(), self.dim()]);
        Tensor::from_data(data, (&like.device(), like.dtype()))
    }
}

impl Denoiser for GaussianMixture {
    fn denoise(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2> {
        self.denoise_at(x, &[level.alpha], &[level.sigma])
    }
}
