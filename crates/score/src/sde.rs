//! The forward SDEs of Song et al. 2021 ("Score-Based Generative Modeling through SDEs",
//! §3.4 and Appendix B), dx = f(x, t) dt + g(t) dw on t ∈ [0, T = 1], with their Gaussian
//! perturbation kernels p_{0t}(x_t | x₀) = N(α(t) x₀, σ(t)² I), priors and the
//! discretisations their samplers use:
//!
//! - VP (eq. 11): f = −½ β(t) x, g = √β(t), β(t) = β_min + t (β_max − β_min); discretised as
//!   DDPM: x_i = √(1 − β_i) x_{i−1} + √β_i z with β_i = β̄_i/N, β̄ evenly spaced;
//! - sub-VP (eq. 12): the VP drift, g = √(β(t)(1 − e^{−2∫₀ᵗβ})); discretised by Euler–Maruyama;
//! - VE (eq. 9): f = 0, g = σ(t) √(2 ln(σ_max/σ_min)) with σ(t) = σ_min (σ_max/σ_min)ᵗ;
//!   discretised as NCSN: x_i = x_{i−1} + √(σ_i² − σ_{i−1}²) z on a geometric ladder.

use burn::tensor::{DType, Device, Tensor};
use diffusion_core::noise::NoiseSource;
use diffusion_schedules::numeric::linspace_torch;
use diffusion_schedules::{ContinuousSchedule, SubVp, VeGeometric, VpLinear};
use serde::{Deserialize, Serialize};

/// Which of the three SDEs (and so which discrete tables its samplers use).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SdeKind {
    /// Variance preserving.
    Vp,
    /// Sub-variance preserving.
    SubVp,
    /// Variance exploding.
    Ve,
}

impl std::str::FromStr for SdeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vp" => Ok(Self::Vp),
            "subvp" | "sub-vp" => Ok(Self::SubVp),
            "ve" => Ok(Self::Ve),
            other => Err(format!("unknown SDE `{other}`: expected vp, subvp or ve")),
        }
    }
}

/// A forward SDE with its discretisation into N steps.
#[derive(Clone, Debug, PartialEq)]
pub struct Sde {
    /// Which SDE.
    pub kind: SdeKind,
    /// β_min / σ_min.
    pub min: f64,
    /// β_max / σ_max.
    pub max: f64,
    /// The number of discretisation steps N.
    pub steps: usize,
}

impl Sde {
    /// VP with β ∈ [β_min, β_max] (0.1, 20) and N steps (1000).
    pub fn vp(beta_min: f64, beta_max: f64, steps: usize) -> Self {
        Self {
            kind: SdeKind::Vp,
            min: beta_min,
            max: beta_max,
            steps,
        }
    }

    /// Sub-VP with β ∈ [β_min, β_max] and N steps.
    pub fn subvp(beta_min: f64, beta_max: f64, steps: usize) -> Self {
        Self {
            kind: SdeKind::SubVp,
            ..Self::vp(beta_min, beta_max, steps)
        }
    }

    /// VE with σ ∈ [σ_min, σ_max] (0.01, 50 for CIFAR-10) and N steps.
    pub fn ve(sigma_min: f64, sigma_max: f64, steps: usize) -> Self {
        Self {
            kind: SdeKind::Ve,
            min: sigma_min,
            max: sigma_max,
            steps,
        }
    }

    /// The defaults of Song et al.: VP/sub-VP β ∈ [0.1, 20], VE σ ∈ [0.01, 50], N = 1000.
    pub fn default_of(kind: SdeKind) -> Self {
        match kind {
            SdeKind::Vp => Self::vp(0.1, 20.0, 1000),
            SdeKind::SubVp => Self::subvp(0.1, 20.0, 1000),
            SdeKind::Ve => Self::ve(0.01, 50.0, 1000),
        }
    }

    /// The end time T.
    pub fn t_end(&self) -> f64 {
        1.0
    }

    fn vp_schedule(&self) -> VpLinear {
        VpLinear {
            beta_min: self.min,
            beta_max: self.max,
        }
    }

    fn ve_schedule(&self) -> VeGeometric {
        VeGeometric {
            sigma_min: self.min,
            sigma_max: self.max,
        }
    }

    /// The drift coefficient f(x, t) = a(t) x of these linear SDEs: returns a(t).
    pub fn drift_coefficient(&self, t: f64) -> f64 {
        match self.kind {
            SdeKind::Vp | SdeKind::SubVp => -0.5 * self.vp_schedule().beta(t),
            SdeKind::Ve => 0.0,
        }
    }

    /// f(x, t).
    pub fn drift(&self, x: Tensor<2>, t: f64) -> Tensor<2> {
        x.mul_scalar(self.drift_coefficient(t))
    }

    /// g(t).
    pub fn diffusion(&self, t: f64) -> f64 {
        match self.kind {
            SdeKind::Vp => self.vp_schedule().beta(t).sqrt(),
            SdeKind::SubVp => {
                let vp = self.vp_schedule();
                let discount = -(-2.0 * vp.integral_beta(t)).exp_m1();
                (vp.beta(t) * discount).sqrt()
            }
            SdeKind::Ve => self.ve_schedule().sigma(t) * (2.0 * (self.max / self.min).ln()).sqrt(),
        }
    }

    /// The perturbation kernel p_{0t}: (α(t), σ(t)) with x_t = α(t) x₀ + σ(t) ε.
    pub fn marginal(&self, t: f64) -> (f64, f64) {
        match self.kind {
            SdeKind::Vp => {
                let s = self.vp_schedule();
                (s.alpha(t), s.sigma(t))
            }
            SdeKind::SubVp => {
                let s = SubVp(self.vp_schedule());
                (s.alpha(t), s.sigma(t))
            }
            SdeKind::Ve => (1.0, self.ve_schedule().sigma(t)),
        }
    }

    /// The standard deviation of the prior N(0, σ_T² I): 1 (VP, sub-VP) or σ_max (VE).
    pub fn prior_std(&self) -> f64 {
        match self.kind {
            SdeKind::Ve => self.max,
            _ => 1.0,
        }
    }

    /// Draws from the prior N(0, σ_T² I): `[n, d]` on `device` in `dtype`.
    pub fn prior_sample(
        &self,
        noise: &mut dyn NoiseSource,
        n: usize,
        d: usize,
        device: &Device,
        dtype: DType,
    ) -> Tensor<2> {
        noise
            .normal_tensor(n, d, device, dtype)
            .mul_scalar(self.prior_std())
    }

    /// log N(z; 0, σ_T² I) per sample, `[n]`.
    pub fn prior_log_prob(&self, z: Tensor<2>) -> Tensor<1> {
        let [n, d] = z.dims();
        let s2 = self.prior_std().powi(2);
        let norm = -0.5 * d as f64 * (2.0 * std::f64::consts::PI * s2).ln();
        z.square()
            .sum_dim(1)
            .reshape([n])
            .mul_scalar(-0.5 / s2)
            .add_scalar(norm)
    }

    /// The index of the discrete step of time t, ⌊t (N − 1)/T⌋ (score_sde's `timestep`).
    pub fn timestep(&self, t: f64) -> usize {
        ((t * (self.steps - 1) as f64 / self.t_end()) as usize).min(self.steps - 1)
    }

    /// The discrete VP betas β̄_i/N for β̄ evenly spaced from β_min to β_max.
    pub fn discrete_betas(&self) -> Vec<f64> {
        let n = self.steps as f64;
        linspace_torch(self.min / n, self.max / n, self.steps)
    }

    /// The discrete VE noise levels, geometric from σ_min to σ_max.
    pub fn discrete_sigmas(&self) -> Vec<f64> {
        linspace_torch(self.min.ln(), self.max.ln(), self.steps)
            .into_iter()
            .map(f64::exp)
            .collect()
    }

    /// The discretised forward step at time t: x_{i+1} = x_i + f_i + G_i z, returning
    /// (f_i, G_i): DDPM's for VP, NCSN's for VE, Euler–Maruyama (f dt, g √dt) for sub-VP.
    pub fn discretize(&self, x: Tensor<2>, t: f64) -> (Tensor<2>, f64) {
        let i = self.timestep(t);
        match self.kind {
            SdeKind::Vp => {
                let beta = self.discrete_betas()[i];
                (x.mul_scalar((1.0 - beta).sqrt() - 1.0), beta.sqrt())
            }
            SdeKind::Ve => {
                let sigmas = self.discrete_sigmas();
                let prev = if i == 0 { 0.0 } else { sigmas[i - 1] };
                (x.zeros_like(), (sigmas[i] * sigmas[i] - prev * prev).sqrt())
            }
            SdeKind::SubVp => {
                let dt = self.t_end() / self.steps as f64;
                (self.drift(x, t).mul_scalar(dt), self.diffusion(t) * dt.sqrt())
            }
        }
    }

    /// The α of the Langevin corrector's step size at time t: 1 − β_i for VP (and sub-VP),
    /// 1 for VE.
    pub fn langevin_alpha(&self, t: f64) -> f64 {
        match self.kind {
            SdeKind::Vp | SdeKind::SubVp => 1.0 - self.discrete_betas()[self.timestep(t)],
            SdeKind::Ve => 1.0,
        }
    }
}
