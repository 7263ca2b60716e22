//! Conditional probability paths between a source x₀ (noise, t = 0) and a target x₁ (data,
//! t = 1), in torchcfm's convention:
//!
//! x_t = a(t) x₁ + b(t) x₀ + s(t) ε,   u_t = ȧ(t) x₁ + ḃ(t) x₀ + ṡ(t) ε,
//!
//! with ε ~ N(0, I) independent of the pair. The affine part a, b is an [`AffinePath`]:
//!
//! - [`AffinePath::Linear`]: a = t, b = 1 − t (rectified flow, Liu et al. 2022; I-CFM, Tong
//!   et al. 2023);
//! - [`AffinePath::LipmanOt`]: a = t, b = 1 − (1 − σ_min) t (the optimal-transport path of
//!   Lipman et al. 2023, eq. 20, with x₀ the noise);
//! - [`AffinePath::Trig`]: a = sin(πt/2), b = cos(πt/2) (the variance-preserving path of
//!   Albergo & Vanden-Eijnden 2023 and torchcfm);
//! - [`AffinePath::VpLinear`], [`AffinePath::Cosine`]: a diffusion schedule run backwards,
//!   a(t) = α(1 − t), b(t) = σ(1 − t), so the flow ODE of the marginal velocity is the
//!   probability-flow ODE of that diffusion (and DDIM its discretisation).
//!
//! The spread s(t) is a [`PathNoise`]: none, constant σ (I-CFM, OT-CFM) or the Brownian
//! bridge σ √(t(1 − t)) (Schrödinger-bridge CFM). Any other differentiable interpolation
//! implements [`Interpolant`].

use burn::tensor::Tensor;
use diffusion_core::tensor::per_sample;
use diffusion_schedules::{ContinuousSchedule, CosineSchedule, VpLinear};
use serde::{Deserialize, Serialize};

/// A path x_t = I(t, x₀, x₁) with its time derivative, at one time per sample.
pub trait Interpolant {
    /// I(t, x₀, x₁), `[n, d]`.
    fn interpolate(&self, t: &[f64], x0: Tensor<2>, x1: Tensor<2>) -> Tensor<2>;

    /// ∂I/∂t, the conditional velocity. The default is a second-order finite difference with
    /// h = 1e-4: central inside [h, 1 − h], one-sided three-point stencils at the ends (error
    /// O(h²) everywhere); override it where the derivative is known.
    fn time_derivative(&self, t: &[f64], x0: Tensor<2>, x1: Tensor<2>) -> Tensor<2> {
        let h = 1e-4;
        // Per sample: three times and their weights.
        let stencil = |t: f64| -> [(f64, f64); 3] {
            let w = 1.0 / (2.0 * h);
            if t - h < 0.0 {
                [(t, -3.0 * w), (t + h, 4.0 * w), (t + 2.0 * h, -w)]
            } else if t + h > 1.0 {
                [(t - 2.0 * h, w), (t - h, -4.0 * w), (t, 3.0 * w)]
            } else {
                [(t - h, -w), (t, 0.0), (t + h, w)]
            }
        };
        let stencils: Vec<[(f64, f64); 3]> = t.iter().map(|&t| stencil(t)).collect();
        (0..3)
            .map(|k| {
                let times: Vec<f64> = stencils.iter().map(|s| s[k].0).collect();
                let weights: Vec<f64> = stencils.iter().map(|s| s[k].1).collect();
                self.interpolate(&times, x0.clone(), x1.clone()) * per_sample(&weights, &x0)
            })
            .reduce(|a, b| a + b)
            .expect("three terms")
    }
}

/// a, b and their time derivatives at one time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Coefficients {
    /// The target's coefficient a(t).
    pub a: f64,
    /// The source's coefficient b(t).
    pub b: f64,
    /// ȧ(t).
    pub da: f64,
    /// ḃ(t).
    pub db: f64,
}

/// The affine part of a conditional path.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AffinePath {
    /// a = t, b = 1 − t.
    Linear,
    /// a = t, b = 1 − (1 − σ_min) t.
    LipmanOt {
        /// The width σ_min left at t = 1.
        sigma_min: f64,
    },
    /// a = sin(πt/2), b = cos(πt/2).
    Trig,
    /// The VP SDE's kernel backwards in time: a = α(1 − t), b = σ(1 − t).
    VpLinear(VpLinear),
    /// The cosine schedule's kernel backwards in time.
    Cosine(CosineSchedule),
}

impl AffinePath {
    /// a, b, ȧ, ḃ at time t.
    pub fn coefficients(&self, t: f64) -> Coefficients {
        use std::f64::consts::FRAC_PI_2;
        let reversed = |s: &dyn ContinuousSchedule| {
            let tau = 1.0 - t;
            Coefficients {
                a: s.alpha(tau),
                b: s.sigma(tau),
                da: -s.d_alpha(tau),
                db: -s.d_sigma(tau),
            }
        };
        match *self {
            Self::Linear => Coefficients {
                a: t,
                b: 1.0 - t,
                da: 1.0,
                db: -1.0,
            },
            Self::LipmanOt { sigma_min } => Coefficients {
                a: t,
                b: 1.0 - (1.0 - sigma_min) * t,
                da: 1.0,
                db: -(1.0 - sigma_min),
            },
            Self::Trig => Coefficients {
                a: (FRAC_PI_2 * t).sin(),
                b: (FRAC_PI_2 * t).cos(),
                da: FRAC_PI_2 * (FRAC_PI_2 * t).cos(),
                db: -FRAC_PI_2 * (FRAC_PI_2 * t).sin(),
            },
            Self::VpLinear(s) => reversed(&s),
            Self::Cosine(s) => reversed(&s),
        }
    }

    /// The time whose signal-to-noise ratio a/b is `ratio` (bisection; a/b increases in t).
    pub fn time_of_ratio(&self, ratio: f64) -> f64 {
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            let c = self.coefficients(mid);
            if c.a < ratio * c.b {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        0.5 * (lo + hi)
    }
}

/// Per-sample coefficient vectors (a, b, ȧ, ḃ) for times `t`.
fn coefficient_columns(path: &AffinePath, t: &[f64]) -> [Vec<f64>; 4] {
    let c: Vec<Coefficients> = t.iter().map(|&t| path.coefficients(t)).collect();
    [
        c.iter().map(|c| c.a).collect(),
        c.iter().map(|c| c.b).collect(),
        c.iter().map(|c| c.da).collect(),
        c.iter().map(|c| c.db).collect(),
    ]
}

impl Interpolant for AffinePath {
    fn interpolate(&self, t: &[f64], x0: Tensor<2>, x1: Tensor<2>) -> Tensor<2> {
        let [a, b, _, _] = coefficient_columns(self, t);
        x1.clone() * per_sample(&a, &x1) + x0.clone() * per_sample(&b, &x0)
    }

    fn time_derivative(&self, t: &[f64], x0: Tensor<2>, x1: Tensor<2>) -> Tensor<2> {
        let [_, _, da, db] = coefficient_columns(self, t);
        x1.clone() * per_sample(&da, &x1) + x0.clone() * per_sample(&db, &x0)
    }
}

/// The spread s(t) of a conditional path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathNoise {
    /// s = 0: a deterministic interpolation.
    #[default]
    None,
    /// s = σ (I-CFM, OT-CFM with σ > 0).
    Constant(f64),
    /// s = σ √(t(1 − t)) (Schrödinger-bridge CFM), with torchcfm's regularised derivative
    /// ṡ = s (1 − 2t)/(2t(1 − t) + 10⁻⁸): within 1.2e-7 of the exact σ(1 − 2t)/(2√(t(1 − t)))
    /// inside (0, 1), and 0 instead of infinite at the ends.
    Bridge(f64),
}

impl PathNoise {
    /// (s(t), ṡ(t)).
    pub fn std_and_derivative(&self, t: f64) -> (f64, f64) {
        match *self {
            Self::None => (0.0, 0.0),
            Self::Constant(sigma) => (sigma, 0.0),
            Self::Bridge(sigma) => {
                let s = sigma * (t * (1.0 - t)).sqrt();
                (s, s * (1.0 - 2.0 * t) / (2.0 * t * (1.0 - t) + 1e-8))
            }
        }
    }

    /// Whether the path has a spread at all.
    pub fn is_none(&self) -> bool {
        match *self {
            Self::None => true,
            Self::Constant(s) | Self::Bridge(s) => s == 0.0,
        }
    }
}
