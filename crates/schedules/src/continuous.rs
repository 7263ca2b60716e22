//! Continuous-time schedules: x_t = α(t) x₀ + σ(t) ε, with the log-SNR
//! λ(t) = 2 ln(α/σ), their time derivatives, and the inverse t(λ).
//!
//! One trait covers the score-SDE family (Song et al. 2021: VP, sub-VP, VE), the cosine
//! schedule, EDM (Karras et al. 2022: σ = t) and the rectified-flow path (α = 1 − t, σ = t).

use serde::{Deserialize, Serialize};

use crate::error::{Result, ScheduleError, positive};
use crate::numeric::{sigmoid, softplus};

/// A continuous noise schedule on the time interval [`t_min`, `t_max`].
pub trait ContinuousSchedule {
    /// The signal coefficient α(t).
    fn alpha(&self, t: f64) -> f64 {
        self.log_alpha(t).exp()
    }
    /// ln α(t).
    fn log_alpha(&self, t: f64) -> f64;
    /// The noise coefficient σ(t).
    fn sigma(&self, t: f64) -> f64;
    /// dα/dt.
    fn d_alpha(&self, t: f64) -> f64;
    /// dσ/dt.
    fn d_sigma(&self, t: f64) -> f64;
    /// The time of a log-SNR λ (the inverse of [`log_snr`](Self::log_snr)).
    fn t_from_log_snr(&self, log_snr: f64) -> f64;
    /// The interval of time on which the schedule is defined.
    fn t_range(&self) -> (f64, f64);

    /// The log signal-to-noise ratio λ(t) = 2 (ln α − ln σ), decreasing in t.
    fn log_snr(&self, t: f64) -> f64 {
        2.0 * (self.log_alpha(t) - self.sigma(t).ln())
    }
    /// dλ/dt = 2 (α'/α − σ'/σ).
    fn d_log_snr(&self, t: f64) -> f64 {
        2.0 * (self.d_alpha(t) / self.alpha(t) - self.d_sigma(t) / self.sigma(t))
    }
    /// The equivalent VE noise level σ(t)/α(t) (the σ of the denoiser D(x, σ)).
    fn ve_sigma(&self, t: f64) -> f64 {
        self.sigma(t) / self.alpha(t)
    }
    /// The time whose VE noise level is `sigma` (λ = −2 ln σ).
    fn t_from_ve_sigma(&self, sigma: f64) -> f64 {
        self.t_from_log_snr(-2.0 * sigma.ln())
    }
}

/// Variance preserving with linear β(t) = β_min + t (β_max − β_min) on [0, 1]
/// (Song et al. 2021, eq. 11 and 29): ln α(t) = −¼ t² (β_max − β_min) − ½ t β_min, σ² = 1 − α².
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct VpLinear {
    /// β at t = 0 (0.1).
    pub beta_min: f64,
    /// β at t = 1 (20).
    pub beta_max: f64,
}

impl Default for VpLinear {
    fn default() -> Self {
        Self {
            beta_min: 0.1,
            beta_max: 20.0,
        }
    }
}

impl VpLinear {
    /// A VP schedule; 0 ≤ β_min < β_max.
    pub fn new(beta_min: f64, beta_max: f64) -> Result<Self> {
        if !(beta_min >= 0.0 && beta_max > beta_min && beta_max.is_finite()) {
            return Err(ScheduleError::param(
                "VP betas",
                format!("need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}"),
            ));
        }
        Ok(Self { beta_min, beta_max })
    }

    /// β(t).
    pub fn beta(&self, t: f64) -> f64 {
        self.beta_min + t * (self.beta_max - self.beta_min)
    }

    /// ∫₀ᵗ β(s) ds.
    pub fn integral_beta(&self, t: f64) -> f64 {
        0.5 * t * t * (self.beta_max - self.beta_min) + t * self.beta_min
    }

    /// The time at which ∫₀ᵗ β = `b` (the positive root of the quadratic).
    fn t_from_integral(&self, b: f64) -> f64 {
        let d = self.beta_max - self.beta_min;
        2.0 * b / (self.beta_min + (self.beta_min * self.beta_min + 2.0 * d * b).sqrt())
    }
}

impl ContinuousSchedule for VpLinear {
    fn log_alpha(&self, t: f64) -> f64 {
        -0.5 * self.integral_beta(t)
    }
    fn sigma(&self, t: f64) -> f64 {
        (-(-self.integral_beta(t)).exp_m1()).sqrt()
    }
    fn d_alpha(&self, t: f64) -> f64 {
        -0.5 * self.beta(t) * self.alpha(t)
    }
    fn d_sigma(&self, t: f64) -> f64 {
        let a = self.alpha(t);
        0.5 * self.beta(t) * a * a / self.sigma(t)
    }
    fn t_from_log_snr(&self, log_snr: f64) -> f64 {
        // α² = sigmoid(λ), so ∫β = −ln α² = softplus(−λ).
        self.t_from_integral(softplus(-log_snr))
    }
    fn t_range(&self) -> (f64, f64) {
        (0.0, 1.0)
    }
    fn log_snr(&self, t: f64) -> f64 {
        // λ = ln(α²/(1 − α²)) = −ln(e^{∫β} − 1).
        -self.integral_beta(t).exp_m1().ln()
    }
}

/// Sub-VP (Song et al. 2021, eq. 12): the VP mean, and σ(t) = 1 − e^{−∫₀ᵗ β}.
#[derive(Clone, Copy, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct SubVp(pub VpLinear);

impl ContinuousSchedule for SubVp {
    fn log_alpha(&self, t: f64) -> f64 {
        self.0.log_alpha(t)
    }
    fn sigma(&self, t: f64) -> f64 {
        -(-self.0.integral_beta(t)).exp_m1()
    }
    fn d_alpha(&self, t: f64) -> f64 {
        self.0.d_alpha(t)
    }
    fn d_sigma(&self, t: f64) -> f64 {
        self.0.beta(t) * (-self.0.integral_beta(t)).exp()
    }
    fn t_from_log_snr(&self, log_snr: f64) -> f64 {
        // α / (1 − α²) = r := e^{λ/2}  ⇒  α = 2r / (1 + √(1 + 4r²)); then ∫β = −2 ln α.
        let r = (0.5 * log_snr).exp();
        let alpha = if r.is_infinite() {
            1.0
        } else {
            2.0 * r / (1.0 + (1.0 + 4.0 * r * r).sqrt())
        };
        self.0.t_from_integral(-2.0 * alpha.ln())
    }
    fn t_range(&self) -> (f64, f64) {
        (0.0, 1.0)
    }
}

/// The cosine schedule in continuous time (Nichol & Dhariwal 2021, as in DPM-Solver):
/// α(t) = cos(π/2 · (t + s)/(1 + s)) / cos(π/2 · s/(1 + s)), σ = √(1 − α²), t ∈ [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CosineSchedule {
    /// The offset s (0.008).
    pub s: f64,
}

impl Default for CosineSchedule {
    fn default() -> Self {
        Self { s: 0.008 }
    }
}

impl CosineSchedule {
    fn angle(&self, t: f64) -> f64 {
        std::f64::consts::FRAC_PI_2 * (t + self.s) / (1.0 + self.s)
    }
}

impl ContinuousSchedule for CosineSchedule {
    fn log_alpha(&self, t: f64) -> f64 {
        self.angle(t).cos().max(0.0).ln() - self.angle(0.0).cos().ln()
    }
    fn sigma(&self, t: f64) -> f64 {
        let a = self.alpha(t);
        (1.0 - a * a).max(0.0).sqrt()
    }
    fn d_alpha(&self, t: f64) -> f64 {
        -std::f64::consts::FRAC_PI_2 / (1.0 + self.s) * self.angle(t).sin() / self.angle(0.0).cos()
    }
    fn d_sigma(&self, t: f64) -> f64 {
        -self.alpha(t) * self.d_alpha(t) / self.sigma(t)
    }
    fn t_from_log_snr(&self, log_snr: f64) -> f64 {
        let alpha = sigmoid(log_snr).sqrt();
        let angle = (alpha * self.angle(0.0).cos()).clamp(-1.0, 1.0).acos();
        angle * (1.0 + self.s) / std::f64::consts::FRAC_PI_2 - self.s
    }
    fn t_range(&self) -> (f64, f64) {
        (0.0, 1.0)
    }
}

/// Variance exploding with a geometric σ(t) = σ_min (σ_max/σ_min)ᵗ on [0, 1], α = 1
/// (Song et al. 2021, eq. 30; NCSN's noise ladder in continuous time).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct VeGeometric {
    /// σ at t = 0 (0.01).
    pub sigma_min: f64,
    /// σ at t = 1 (50 for CIFAR-10, 348 for 256² images).
    pub sigma_max: f64,
}

impl Default for VeGeometric {
    fn default() -> Self {
        Self {
            sigma_min: 0.01,
            sigma_max: 50.0,
        }
    }
}

impl VeGeometric {
    /// A VE schedule; 0 < σ_min < σ_max.
    pub fn new(sigma_min: f64, sigma_max: f64) -> Result<Self> {
        positive("sigma_min", sigma_min)?;
        if !(sigma_max > sigma_min && sigma_max.is_finite()) {
            return Err(ScheduleError::param(
                "sigma_max",
                format!("{sigma_max} must be finite and > sigma_min = {sigma_min}"),
            ));
        }
        Ok(Self { sigma_min, sigma_max })
    }

    fn log_ratio(&self) -> f64 {
        (self.sigma_max / self.sigma_min).ln()
    }
}

impl ContinuousSchedule for VeGeometric {
    fn log_alpha(&self, _t: f64) -> f64 {
        0.0
    }
    fn sigma(&self, t: f64) -> f64 {
        self.sigma_min * (t * self.log_ratio()).exp()
    }
    fn d_alpha(&self, _t: f64) -> f64 {
        0.0
    }
    fn d_sigma(&self, t: f64) -> f64 {
        self.sigma(t) * self.log_ratio()
    }
    fn t_from_log_snr(&self, log_snr: f64) -> f64 {
        (-0.5 * log_snr - self.sigma_min.ln()) / self.log_ratio()
    }
    fn t_range(&self) -> (f64, f64) {
        (0.0, 1.0)
    }
}

/// EDM (Karras et al. 2022): α = 1, σ(t) = t, t ∈ [0, ∞).
#[derive(Clone, Copy, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct Edm;

impl ContinuousSchedule for Edm {
    fn log_alpha(&self, _t: f64) -> f64 {
        0.0
    }
    fn sigma(&self, t: f64) -> f64 {
        t
    }
    fn d_alpha(&self, _t: f64) -> f64 {
        0.0
    }
    fn d_sigma(&self, _t: f64) -> f64 {
        1.0
    }
    fn t_from_log_snr(&self, log_snr: f64) -> f64 {
        (-0.5 * log_snr).exp()
    }
    fn t_range(&self) -> (f64, f64) {
        (0.0, f64::INFINITY)
    }
}

/// The rectified-flow / linear path: α = 1 − t, σ = t on [0, 1] (t = 1 is pure noise).
#[derive(Clone, Copy, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct RectifiedFlow;

impl ContinuousSchedule for RectifiedFlow {
    fn log_alpha(&self, t: f64) -> f64 {
        (-t).ln_1p()
    }
    fn sigma(&self, t: f64) -> f64 {
        t
    }
    fn d_alpha(&self, _t: f64) -> f64 {
        -1.0
    }
    fn d_sigma(&self, _t: f64) -> f64 {
        1.0
    }
    fn t_from_log_snr(&self, log_snr: f64) -> f64 {
        // α/σ = (1 − t)/t = e^{λ/2}.
        sigmoid(-0.5 * log_snr)
    }
    fn t_range(&self) -> (f64, f64) {
        (0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedules() -> Vec<(&'static str, Box<dyn ContinuousSchedule>, Vec<f64>)> {
        let inner = vec![1e-3, 0.05, 0.3, 0.5, 0.8, 0.99];
        vec![
            ("vp", Box::new(VpLinear::default()), inner.clone()),
            ("subvp", Box::new(SubVp::default()), inner.clone()),
            ("cosine", Box::new(CosineSchedule::default()), inner.clone()),
            ("ve", Box::new(VeGeometric::default()), inner.clone()),
            ("edm", Box::new(Edm), vec![0.002, 0.1, 1.0, 80.0]),
            ("rf", Box::new(RectifiedFlow), inner),
        ]
    }

    #[test]
    fn derivatives_match_central_differences() {
        for (name, s, ts) in schedules() {
            for &t in &ts {
                let h = 1e-6 * t.max(1e-3);
                let fd = |f: &dyn Fn(f64) -> f64| (f(t + h) - f(t - h)) / (2.0 * h);
                let checks = [
                    ("alpha", s.d_alpha(t), fd(&|u| s.alpha(u))),
                    ("sigma", s.d_sigma(t), fd(&|u| s.sigma(u))),
                    ("log_snr", s.d_log_snr(t), fd(&|u| s.log_snr(u))),
                ];
                for (what, exact, approx) in checks {
                    let tol = 1e-6 * exact.abs().max(1.0);
                    assert!(
                        (exact - approx).abs() < tol,
                        "{name} d{what}({t}): {exact} vs {approx}"
                    );
                }
            }
        }
    }

    #[test]
    fn log_snr_inverts() {
        for (name, s, ts) in schedules() {
            for &t in &ts {
                let back = s.t_from_log_snr(s.log_snr(t));
                assert!((back - t).abs() < 1e-9 * t.max(1.0), "{name}: t={t} back={back}");
                let back = s.t_from_ve_sigma(s.ve_sigma(t));
                assert!(
                    (back - t).abs() < 1e-9 * t.max(1.0),
                    "{name}: t={t} via sigma {back}"
                );
            }
        }
    }

    #[test]
    fn vp_keeps_variance_and_matches_score_sde() {
        let vp = VpLinear::default();
        for t in [1e-5, 0.5, 1.0] {
            let (a, s) = (vp.alpha(t), vp.sigma(t));
            assert!((a * a + s * s - 1.0).abs() < 1e-14);
        }
        // score_sde marginal_prob at t = 1: log_mean_coeff = -0.25 * 19.9 - 0.5 * 0.1 = -5.025.
        assert!((vp.log_alpha(1.0) + 5.025).abs() < 1e-15);
        // Sub-VP std at t = 1: 1 - exp(-10.05).
        assert!((SubVp::default().sigma(1.0) - (1.0 - (-10.05f64).exp())).abs() < 1e-15);
        // Tiny t: σ stays accurate (no cancellation in 1 - α²).
        assert!((vp.sigma(1e-8) - (0.1f64 * 1e-8).sqrt()).abs() / (0.1f64 * 1e-8).sqrt() < 1e-6);
    }

    #[test]
    fn endpoints_are_finite_or_exact() {
        assert_eq!(RectifiedFlow.alpha(1.0), 0.0);
        assert_eq!(RectifiedFlow.log_snr(0.0), f64::INFINITY);
        assert_eq!(RectifiedFlow.t_from_log_snr(f64::INFINITY), 0.0);
        let cos = CosineSchedule::default();
        assert!(cos.alpha(1.0) < 1e-15);
        assert!(!cos.sigma(0.0).is_nan());
        assert!(VeGeometric::new(1.0, 0.5).is_err());
        assert!(VpLinear::new(1.0, 0.5).is_err());
    }
}
