//! Generic ODE integrators for dx/dt = f(x, t): fixed-step Euler, midpoint, Heun and
//! classical RK4, and the adaptive Dormand–Prince 5(4) pair (Dormand & Prince 1980;
//! Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.4–5) with error control on
//! rtol/atol, the embedded error estimate and first-same-as-last.

use burn::tensor::Tensor;
use diffusion_core::tensor::to_f64;
use serde::{Deserialize, Serialize};

/// An ODE dx/dt = f(x, t) on a batch `[n, features]`.
pub trait OdeSystem {
    /// f(x, t).
    fn derivative(&self, x: Tensor<2>, t: f64) -> Tensor<2>;
}

impl<F: Fn(Tensor<2>, f64) -> Tensor<2>> OdeSystem for F {
    fn derivative(&self, x: Tensor<2>, t: f64) -> Tensor<2> {
        self(x, t)
    }
}

/// A fixed-step explicit Runge–Kutta method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FixedStep {
    /// Forward Euler, order 1, 1 evaluation per step.
    Euler,
    /// The explicit midpoint method, order 2, 2 evaluations.
    Midpoint,
    /// Heun's method (explicit trapezoid), order 2, 2 evaluations.
    Heun,
    /// The classical Runge–Kutta method, order 4, 4 evaluations.
    Rk4,
}

impl FixedStep {
    /// Evaluations of f per step.
    pub fn stages(self) -> usize {
        match self {
            Self::Euler => 1,
            Self::Midpoint | Self::Heun => 2,
            Self::Rk4 => 4,
        }
    }

    /// One step from (x, t) to t + h.
    pub fn step(self, f: &dyn OdeSystem, x: Tensor<2>, t: f64, h: f64) -> Tensor<2> {
        match self {
            Self::Euler => x.clone() + f.derivative(x, t).mul_scalar(h),
            Self::Midpoint => {
                let k1 = f.derivative(x.clone(), t);
                let mid = x.clone() + k1.mul_scalar(0.5 * h);
                x + f.derivative(mid, t + 0.5 * h).mul_scalar(h)
            }
            Self::Heun => {
                let k1 = f.derivative(x.clone(), t);
                let end = x.clone() + k1.clone().mul_scalar(h);
                let k2 = f.derivative(end, t + h);
                x + (k1 + k2).mul_scalar(0.5 * h)
            }
            Self::Rk4 => {
                let k1 = f.derivative(x.clone(), t);
                let k2 = f.derivative(x.clone() + k1.clone().mul_scalar(0.5 * h), t + 0.5 * h);
                let k3 = f.derivative(x.clone() + k2.clone().mul_scalar(0.5 * h), t + 0.5 * h);
                let k4 = f.derivative(x.clone() + k3.clone().mul_scalar(h), t + h);
                x + (k1 + k2.mul_scalar(2.0) + k3.mul_scalar(2.0) + k4).mul_scalar(h / 6.0)
            }
        }
    }

    /// Integrates over the times `ts` (any direction), returning x at `ts.last()`.
    pub fn integrate(self, f: &dyn OdeSystem, mut x: Tensor<2>, ts: &[f64]) -> Tensor<2> {
        for w in ts.windows(2) {
            x = self.step(f, x, w[0], w[1] - w[0]);
        }
        x
    }
}

/// Options of the adaptive Dormand–Prince integrator.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dopri5 {
    /// Relative tolerance.
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// The first step (`None`: Hairer's automatic choice).
    pub h_init: Option<f64>,
    /// The safety factor on the optimal step (0.9).
    pub safety: f64,
    /// The largest growth of the step (10).
    pub max_factor: f64,
    /// The largest shrink of the step (0.2).
    pub min_factor: f64,
    /// Give up after this many attempted steps.
    pub max_steps: usize,
}

impl Default for Dopri5 {
    fn default() -> Self {
        Self {
            rtol: 1e-5,
            atol: 1e-5,
            h_init: None,
            safety: 0.9,
            max_factor: 10.0,
            min_factor: 0.2,
            max_steps: 100_000,
        }
    }
}

/// What an adaptive integration did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OdeStats {
    /// Evaluations of f.
    pub nfe: usize,
    /// Accepted steps.
    pub accepted: usize,
    /// Rejected steps.
    pub rejected: usize,
}

/// The adaptive integration did not reach its end.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OdeError {
    /// The step budget ran out.
    #[error(
        "dopri5 gave up after {steps} steps at t = {t} (of {t_end}): raise max_steps or loosen rtol/atol"
    )]
    TooManySteps {
        /// Steps attempted.
        steps: usize,
        /// Where it stopped.
        t: f64,
        /// Where it was going.
        t_end: f64,
    },
    /// The step size underflowed or the error became NaN.
    #[error("dopri5 failed at t = {t}: {reason}")]
    Failed {
        /// Where.
        t: f64,
        /// Why.
        reason: String,
    },
}

// The Dormand–Prince 5(4) tableau.
const C: [f64; 7] = [0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0];
const A: [&[f64]; 7] = [
    &[],
    &[1.0 / 5.0],
    &[3.0 / 40.0, 9.0 / 40.0],
    &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
    &[
        19372.0 / 6561.0,
        -25360.0 / 2187.0,
        64448.0 / 6561.0,
        -212.0 / 729.0,
    ],
    &[
        9017.0 / 3168.0,
        -355.0 / 33.0,
        46732.0 / 5247.0,
        49.0 / 176.0,
        -5103.0 / 18656.0,
    ],
    &[
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
    ],
];
/// Fifth-order weights (= the last row of A: first same as last).
const B5: [f64; 7] = [
    35.0 / 384.0,
    0.0,
    500.0 / 1113.0,
    125.0 / 192.0,
    -2187.0 / 6784.0,
    11.0 / 84.0,
    0.0,
];
/// Fifth- minus fourth-order weights: the embedded error estimate.
const E: [f64; 7] = [
    35.0 / 384.0 - 5179.0 / 57600.0,
    0.0,
    500.0 / 1113.0 - 7571.0 / 16695.0,
    125.0 / 192.0 - 393.0 / 640.0,
    -2187.0 / 6784.0 + 92097.0 / 339200.0,
    11.0 / 84.0 - 187.0 / 2100.0,
    -1.0 / 40.0,
];

fn lincomb(x: &Tensor<2>, ks: &[Tensor<2>], weights: &[f64], h: f64) -> Tensor<2> {
    let mut out = x.clone();
    for (k, &w) in ks.iter().zip(weights) {
        if w != 0.0 {
            out = out + k.clone().mul_scalar(w * h);
        }
    }
    out
}

/// RMS over all elements of e / (atol + rtol max(|x₀|, |x₁|)).
fn error_norm(err: Tensor<2>, x0: &Tensor<2>, x1: &Tensor<2>, rtol: f64, atol: f64) -> f64 {
    let scale = x0
        .clone()
        .abs()
        .max_pair(x1.clone().abs())
        .mul_scalar(rtol)
        .add_scalar(atol);
    let v = to_f64(&(err / scale));
    (v.iter().map(|e| e * e).sum::<f64>() / v.len().max(1) as f64).sqrt()
}

impl Dopri5 {
    /// Integrates from t₀ to t₁ (either direction). The error norm is taken over the whole
    /// batch (as torchdiffeq does), so the samples of a batch share their steps.
    pub fn integrate(
        &self,
        f: &dyn OdeSystem,
        x: Tensor<2>,
        t0: f64,
        t1: f64,
    ) -> Result<(Tensor<2>, OdeStats), OdeError> {
        let mut stats = OdeStats::default();
        if t0 == t1 {
            return Ok((x, stats));
        }
        let dir = (t1 - t0).signum();
        let mut k1 = f.derivative(x.clone(), t0);
        stats.nfe += 1;
        let mut h = match self.h_init {
            Some(h) => h.abs() * dir,
            None => {
                let (h, extra) = self.initial_step(f, &x, &k1, t0, dir);
                stats.nfe += extra;
                h
            }
        };
        let (mut t, mut x) = (t0, x);
        while (t1 - t) * dir > 0.0 {
            if stats.accepted + stats.rejected >= self.max_steps {
                return Err(OdeError::TooManySteps {
                    steps: self.max_steps,
                    t,
                    t_end: t1,
                });
            }
            if h.abs() < 1e-14 * t.abs().max(1.0) {
                return Err(OdeError::Failed {
                    t,
                    reason: "the step size underflowed".into(),
                });
            }
            if (t + h - t1) * dir > 0.0 {
                h = t1 - t;
            }
            let mut ks = vec![k1.clone()];
            for stage in 1..7 {
                let xs = lincomb(&x, &ks, A[stage], h);
                ks.push(f.derivative(xs, t + C[stage] * h));
            }
            stats.nfe += 6;
            let x_new = lincomb(&x, &ks, &B5, h);
            let err = lincomb(&x.zeros_like(), &ks, &E, h);
            let norm = error_norm(err, &x, &x_new, self.rtol, self.atol);
            if !norm.is_finite() {
                return Err(OdeError::Failed {
                    t,
                    reason: format!("error norm {norm}"),
                });
            }
            let factor = if norm == 0.0 {
                self.max_factor
            } else {
                (self.safety * norm.powf(-0.2)).clamp(self.min_factor, self.max_factor)
            };
            if norm <= 1.0 {
                t = if (t + h - t1) * dir >= 0.0 { t1 } else { t + h };
                x = x_new;
                k1 = ks.pop().expect("seven stages"); // first same as last
                stats.accepted += 1;
            } else {
                stats.rejected += 1;
            }
            h *= if norm <= 1.0 { factor } else { factor.min(1.0) };
        }
        Ok((x, stats))
    }

    /// Hairer's initial step (Solving ODEs I, §II.4): h₀ from the scales of x and f, refined
    /// by one Euler step's second-derivative estimate. Returns (h, evaluations used).
    fn initial_step(
        &self,
        f: &dyn OdeSystem,
        x: &Tensor<2>,
        k1: &Tensor<2>,
        t0: f64,
        dir: f64,
    ) -> (f64, usize) {
        let scale = x.clone().abs().mul_scalar(self.rtol).add_scalar(self.atol);
        let rms = |v: Tensor<2>| {
            let v = to_f64(&(v / scale.clone()));
            (v.iter().map(|e| e * e).sum::<f64>() / v.len().max(1) as f64).sqrt()
        };
        let (d0, d1) = (rms(x.clone()), rms(k1.clone()));
        let h0 = if d0 < 1e-5 || d1 < 1e-5 {
            1e-6
        } else {
            0.01 * d0 / d1
        };
        let x1 = x.clone() + k1.clone().mul_scalar(h0 * dir);
        let k2 = f.derivative(x1, t0 + h0 * dir);
        let d2 = rms(k2 - k1.clone()) / h0;
        let h1 = if d1.max(d2) <= 1e-15 {
            (h0 * 1e-3).max(1e-6)
        } else {
            (0.01 / d1.max(d2)).powf(1.0 / 5.0)
        };
        ((100.0 * h0).min(h1) * dir, 1)
    }
}
