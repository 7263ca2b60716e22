//! Discrete-time schedules: a table of βₜ for t = 0 … T−1, and the ᾱₜ = ∏ₛ≤ₜ (1 − βₛ)
//! of the forward process q(xₜ | x₀) = N(√ᾱₜ x₀, (1 − ᾱₜ) I) (Ho et al. 2020, eq. 4).

use serde::{Deserialize, Serialize};

use crate::convert;
use crate::error::{Result, ScheduleError, positive};
use crate::numeric::{linspace_torch, sigmoid};

/// The β schedules of the literature, named as in diffusers' `beta_schedule`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "beta_schedule", rename_all = "snake_case")]
pub enum BetaSchedule {
    /// βₜ evenly spaced from `start` to `end` (Ho et al. 2020: 1e-4 … 0.02).
    Linear {
        /// β₀.
        start: f64,
        /// β_{T−1}.
        end: f64,
    },
    /// √βₜ evenly spaced (Latent / Stable Diffusion: 0.00085 … 0.012).
    ScaledLinear {
        /// β₀.
        start: f64,
        /// β_{T−1}.
        end: f64,
    },
    /// Nichol & Dhariwal 2021, eq. 17: ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2), βₜ capped.
    #[serde(rename = "squaredcos_cap_v2")]
    Cosine {
        /// The offset s (0.008).
        s: f64,
        /// The cap on βₜ (0.999).
        max_beta: f64,
    },
    /// ᾱ(t) = e^{−12 t}, discretised like the cosine schedule (diffusers' `exp`).
    Exp,
    /// ᾱ(t) with a Laplace-distributed log-SNR, λ(t) = −½ sign(½ − t) ln(1 − 2|½ − t| + 10⁻⁶),
    /// ᾱ = √(e^λ/(1 + e^λ)) as diffusers defines it (Hang et al. 2024), discretised like
    /// the cosine schedule.
    Laplace,
    /// βₜ = sigmoid(xₜ)·(end − start) + start with xₜ evenly spaced in [−6, 6] (GeoDiff).
    Sigmoid {
        /// Lower asymptote.
        start: f64,
        /// Upper asymptote.
        end: f64,
    },
}

impl BetaSchedule {
    /// The cosine schedule with the paper's s = 0.008 and the cap 0.999.
    pub fn cosine() -> Self {
        Self::Cosine {
            s: 0.008,
            max_beta: 0.999,
        }
    }

    /// The T betas of this schedule.
    pub fn betas(&self, num_train_timesteps: usize) -> Result<Vec<f64>> {
        let t_len = num_train_timesteps;
        if t_len == 0 {
            return Err(ScheduleError::ZeroSteps {
                what: "num_train_timesteps",
            });
        }
        Ok(match *self {
            Self::Linear { start, end } => linspace_torch(start, end, t_len),
            Self::ScaledLinear { start, end } => {
                let (a, b) = (
                    positive("beta start", start)?.sqrt(),
                    positive("beta end", end)?.sqrt(),
                );
                linspace_torch(a, b, t_len).into_iter().map(|x| x * x).collect()
            }
            Self::Cosine { s, max_beta } => {
                if !(s >= 0.0 && s.is_finite()) {
                    return Err(ScheduleError::param(
                        "cosine offset s",
                        format!("{s} must be >= 0"),
                    ));
                }
                if !(max_beta > 0.0 && max_beta <= 1.0) {
                    return Err(ScheduleError::param(
                        "max_beta",
                        format!("{max_beta} must lie in (0, 1]"),
                    ));
                }
                betas_for_alpha_bar(t_len, max_beta, |u| {
                    ((u + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2).cos().powi(2)
                })
            }
            Self::Exp => betas_for_alpha_bar(t_len, 0.999, |u| (-12.0 * u).exp()),
            Self::Laplace => betas_for_alpha_bar(t_len, 0.999, |u| {
                let lambda = -0.5 * (0.5 - u).signum() * (1.0 - 2.0 * (0.5 - u).abs() + 1e-6).ln();
                let snr = lambda.exp();
                (snr / (1.0 + snr)).sqrt()
            }),
            Self::Sigmoid { start, end } => linspace_torch(-6.0, 6.0, t_len)
                .into_iter()
                .map(|x| sigmoid(x) * (end - start) + start)
                .collect(),
        })
    }
}

/// βᵢ = min(1 − ᾱ((i + 1)/T)/ᾱ(i/T), max_beta) for a continuous ᾱ(u) on [0, 1]
/// (Nichol & Dhariwal 2021, eq. 17's discretisation).
fn betas_for_alpha_bar(t_len: usize, max_beta: f64, alpha_bar: impl Fn(f64) -> f64) -> Vec<f64> {
    // i/T in floating point: an integer division here gives 999 zero betas.
    (0..t_len)
        .map(|i| {
            let (u0, u1) = (i as f64 / t_len as f64, (i + 1) as f64 / t_len as f64);
            (1.0 - alpha_bar(u1) / alpha_bar(u0)).min(max_beta)
        })
        .collect()
}

/// A discrete schedule: βₜ and ᾱₜ for t = 0 … T−1.
///
/// Invariants (checked at construction): every β lies in (0, 1], so ᾱ is strictly
/// decreasing in (0, 1) except that the last ᾱ may be exactly 0 (zero terminal SNR).
#[derive(Clone, Debug, PartialEq)]
pub struct DiscreteSchedule {
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    sigmas: Vec<f64>,
    log_sigmas: Vec<f64>,
}

impl DiscreteSchedule {
    /// From a named β schedule with T training timesteps.
    pub fn new(schedule: &BetaSchedule, num_train_timesteps: usize) -> Result<Self> {
        Self::from_betas(schedule.betas(num_train_timesteps)?)
    }

    /// Linear βₜ from `start` to `end` (Ho et al. 2020 use 1e-4, 0.02, T = 1000).
    pub fn linear(num_train_timesteps: usize, start: f64, end: f64) -> Result<Self> {
        Self::new(&BetaSchedule::Linear { start, end }, num_train_timesteps)
    }

    /// Scaled-linear βₜ (Stable Diffusion uses 0.00085, 0.012, T = 1000).
    pub fn scaled_linear(num_train_timesteps: usize, start: f64, end: f64) -> Result<Self> {
        Self::new(&BetaSchedule::ScaledLinear { start, end }, num_train_timesteps)
    }

    /// The cosine schedule of Improved DDPM (`squaredcos_cap_v2`).
    pub fn cosine(num_train_timesteps: usize) -> Result<Self> {
        Self::new(&BetaSchedule::cosine(), num_train_timesteps)
    }

    /// The sigmoid schedule.
    pub fn sigmoid(num_train_timesteps: usize, start: f64, end: f64) -> Result<Self> {
        Self::new(&BetaSchedule::Sigmoid { start, end }, num_train_timesteps)
    }

    /// From a table of βₜ, each in (0, 1].
    pub fn from_betas(betas: Vec<f64>) -> Result<Self> {
        if betas.is_empty() {
            return Err(ScheduleError::ZeroSteps {
                what: "the beta table",
            });
        }
        if let Some((index, &value)) = betas.iter().enumerate().find(|(_, b)| !(**b > 0.0 && **b <= 1.0)) {
            return Err(ScheduleError::BetaOutOfRange { index, value });
        }
        // Sequential product, as torch.cumprod.
        let mut acc = 1.0;
        let alphas_cumprod = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        Ok(Self::with_tables(betas, alphas_cumprod))
    }

    /// From a table of ᾱₜ: strictly decreasing, in (0, 1), the last may be 0.
    pub fn from_alphas_cumprod(alphas_cumprod: Vec<f64>) -> Result<Self> {
        if alphas_cumprod.is_empty() {
            return Err(ScheduleError::ZeroSteps {
                what: "the alphas_cumprod table",
            });
        }
        let last = alphas_cumprod.len() - 1;
        for (index, &value) in alphas_cumprod.iter().enumerate() {
            let ok = value < 1.0 && (value > 0.0 || (value == 0.0 && index == last));
            if !ok {
                return Err(ScheduleError::OutOfRange {
                    what: "alphas_cumprod",
                    index,
                    value,
                    range: "(0, 1) (only the last entry may be 0)",
                });
            }
        }
        crate::error::strictly_decreasing("alphas_cumprod", &alphas_cumprod)?;
        let betas = (0..alphas_cumprod.len())
            .map(|t| match t {
                0 => 1.0 - alphas_cumprod[0],
                _ => 1.0 - alphas_cumprod[t] / alphas_cumprod[t - 1],
            })
            .collect();
        Ok(Self::with_tables(betas, alphas_cumprod))
    }

    fn with_tables(betas: Vec<f64>, alphas_cumprod: Vec<f64>) -> Self {
        let sigmas: Vec<f64> = alphas_cumprod
            .iter()
            .map(|&a| convert::alpha_bar_to_sigma(a))
            .collect();
        let log_sigmas = sigmas.iter().map(|s| s.ln()).collect();
        Self {
            betas,
            alphas_cumprod,
            sigmas,
            log_sigmas,
        }
    }

    /// Rescales to zero terminal SNR (Lin et al. 2024, Algorithm 1): √ᾱ is shifted so that
    /// its last value is 0 and scaled so that its first is unchanged. Afterwards
    /// ᾱ_{T−1} = 0 and β_{T−1} = 1 exactly.
    pub fn rescale_zero_terminal_snr(&self) -> Result<Self> {
        let sqrt_ab: Vec<f64> = self.alphas_cumprod.iter().map(|a| a.sqrt()).collect();
        let (first, last) = (sqrt_ab[0], sqrt_ab[sqrt_ab.len() - 1]);
        if sqrt_ab.len() < 2 || first <= last {
            return Err(ScheduleError::param(
                "schedule",
                "zero-terminal-SNR rescaling needs at least two timesteps with decreasing alphas_cumprod",
            ));
        }
        let scale = first / (first - last);
        let ab: Vec<f64> = sqrt_ab.iter().map(|s| ((s - last) * scale).powi(2)).collect();
        let betas = (0..ab.len())
            .map(|t| {
                if t == 0 {
                    1.0 - ab[0]
                } else {
                    1.0 - ab[t] / ab[t - 1]
                }
            })
            .collect();
        Self::from_betas(betas)
    }

    /// The same schedule with ᾱ_{T−1} replaced by `alpha_bar` (its β recomputed).
    ///
    /// diffusers' Euler-type, DPM-Solver and UniPC schedulers set ᾱ_{T−1} = 2⁻²⁴ after a
    /// zero-terminal-SNR rescale so that σ_max is finite. That value can exceed ᾱ_{T−2},
    /// making σ non-monotone at the last step (σ_{T−1} ≈ 4096 < σ_{T−2}): this is kept as is,
    /// for exactness; σ → t inversion near the end of such a table is then ambiguous.
    pub fn with_terminal_alpha_bar(&self, alpha_bar: f64) -> Result<Self> {
        if !(alpha_bar > 0.0 && alpha_bar < 1.0) {
            return Err(ScheduleError::OutOfRange {
                what: "terminal alphas_cumprod",
                index: self.len() - 1,
                value: alpha_bar,
                range: "(0, 1)",
            });
        }
        let mut ac = self.alphas_cumprod.clone();
        let last = ac.len() - 1;
        ac[last] = alpha_bar;
        let mut betas = self.betas.clone();
        betas[last] = if last == 0 {
            1.0 - alpha_bar
        } else {
            1.0 - alpha_bar / ac[last - 1]
        };
        Ok(Self::with_tables(betas, ac))
    }

    /// The number of training timesteps T.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    /// Always false: a schedule has at least one timestep.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// βₜ.
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// αₜ = 1 − βₜ.
    pub fn alphas(&self) -> Vec<f64> {
        self.betas.iter().map(|b| 1.0 - b).collect()
    }

    /// ᾱₜ = ∏ₛ≤ₜ αₛ.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// The VE noise level of each timestep, σₜ = √((1 − ᾱₜ)/ᾱₜ) (∞ where ᾱₜ = 0).
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// ln σₜ, increasing in t.
    pub fn log_sigmas(&self) -> &[f64] {
        &self.log_sigmas
    }

    /// The smallest σ of the table (t = 0).
    pub fn sigma_min(&self) -> f64 {
        self.sigmas[0]
    }

    /// The largest σ of the table (t = T−1; ∞ after a zero-SNR rescale).
    pub fn sigma_max(&self) -> f64 {
        self.sigmas[self.len() - 1]
    }

    /// The fractional timestep of a noise level: linear interpolation of t in ln σ between
    /// the two table entries around σ, clamped to [0, T−1] (k-diffusion's `sigma_to_t`).
    /// A σ equal to a table entry gives its integer timestep exactly.
    pub fn sigma_to_t(&self, sigma: f64) -> f64 {
        let log_sigma = sigma.ln();
        let n = self.len();
        if n == 1 {
            return 0.0;
        }
        // The last index whose ln σ is <= the query, clamped so that `low + 1` exists.
        let low = self
            .log_sigmas
            .partition_point(|&l| l <= log_sigma)
            .saturating_sub(1)
            .min(n - 2);
        let (lo, hi) = (self.log_sigmas[low], self.log_sigmas[low + 1]);
        let w = if hi.is_infinite() {
            // Zero terminal SNR: only σ = ∞ reaches the last timestep.
            if log_sigma.is_infinite() { 1.0 } else { 0.0 }
        } else {
            ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0)
        };
        (1.0 - w) * low as f64 + w * (low + 1) as f64
    }

    /// The timestep whose ln σ is nearest to ln `sigma` (k-diffusion's `quantize=True`).
    pub fn sigma_to_t_quantized(&self, sigma: f64) -> usize {
        let log_sigma = sigma.ln();
        let mut best = 0;
        for (t, l) in self.log_sigmas.iter().enumerate() {
            if (l - log_sigma).abs() < (self.log_sigmas[best] - log_sigma).abs() {
                best = t;
            }
        }
        best
    }

    /// σ at a fractional timestep by linear interpolation of ln σ (k-diffusion's
    /// `t_to_sigma`, the inverse of [`sigma_to_t`](Self::sigma_to_t)). t is clamped to [0, T−1].
    pub fn t_to_sigma(&self, t: f64) -> f64 {
        let t = t.clamp(0.0, (self.len() - 1) as f64);
        let (low, high) = (t.floor() as usize, t.ceil() as usize);
        let w = t - low as f64;
        if w == 0.0 {
            return self.sigmas[low];
        }
        ((1.0 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()
    }

    /// σ at a fractional timestep by linear interpolation of σ in t (`np.interp`), which is
    /// what diffusers' Euler-type schedulers use.
    pub fn t_to_sigma_linear(&self, t: f64) -> f64 {
        let t = t.clamp(0.0, (self.len() - 1) as f64);
        let (low, high) = (t.floor() as usize, t.ceil() as usize);
        let w = t - low as f64;
        if w == 0.0 {
            return self.sigmas[low];
        }
        (self.sigmas[high] - self.sigmas[low]) * w + self.sigmas[low]
    }

    /// ᾱ at a fractional timestep, through σ interpolated in log σ (ᾱ = 1/(1 + σ²)).
    pub fn alpha_bar_at(&self, t: f64) -> f64 {
        convert::sigma_to_alpha_bar(self.t_to_sigma(t))
    }

    /// The table of ᾱₜ on a device, in `dtype`.
    pub fn alphas_cumprod_tensor(
        &self,
        device: &burn::tensor::Device,
        dtype: burn::tensor::DType,
    ) -> burn::tensor::Tensor<1> {
        diffusion_core::tensor::from_f64(self.alphas_cumprod.clone(), [self.len()], device, dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_has_no_zero_betas() {
        // The integer-division bug gives β = 0 for every t but the last.
        let s = DiscreteSchedule::cosine(1000).unwrap();
        assert!(s.betas().iter().all(|&b| b > 1e-6), "{:?}", &s.betas()[..3]);
        assert_eq!(*s.betas().last().unwrap(), 0.999);
    }

    #[test]
    fn zero_snr_ends_at_exactly_zero() {
        let s = DiscreteSchedule::linear(1000, 1e-4, 0.02)
            .unwrap()
            .rescale_zero_terminal_snr()
            .unwrap();
        assert_eq!(*s.alphas_cumprod().last().unwrap(), 0.0);
        assert_eq!(*s.betas().last().unwrap(), 1.0);
        assert_eq!(s.sigma_max(), f64::INFINITY);
        assert!(s.sigmas().iter().all(|x| !x.is_nan()));
        assert_eq!(s.sigma_to_t(f64::INFINITY), 999.0);
        assert!(!s.sigma_to_t(1e6).is_nan());
        assert!(!s.t_to_sigma(998.5).is_nan());
    }

    #[test]
    fn sigma_to_t_inverts_t_to_sigma() {
        let s = DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap();
        for t in [0.0, 0.5, 1.0, 123.25, 998.75, 999.0] {
            let back = s.sigma_to_t(s.t_to_sigma(t));
            assert!((back - t).abs() < 1e-9, "{t} -> {back}");
        }
        assert_eq!(s.sigma_to_t(s.sigmas()[500]), 500.0);
        assert_eq!(s.sigma_to_t(1e-9), 0.0);
        assert_eq!(s.sigma_to_t(1e9), 999.0);
    }

    #[test]
    fn bad_tables_are_refused() {
        assert!(matches!(
            DiscreteSchedule::from_betas(vec![0.1, 0.0]),
            Err(ScheduleError::BetaOutOfRange { index: 1, .. })
        ));
        assert!(matches!(
            DiscreteSchedule::from_betas(vec![0.1, 1.5]),
            Err(ScheduleError::BetaOutOfRange { index: 1, .. })
        ));
        assert!(DiscreteSchedule::from_betas(vec![0.1, f64::NAN]).is_err());
        assert!(matches!(
            DiscreteSchedule::from_alphas_cumprod(vec![0.9, 0.95]),
            Err(ScheduleError::NotMonotone { index: 1, .. })
        ));
        assert!(DiscreteSchedule::from_alphas_cumprod(vec![0.9, 0.0, 0.0]).is_err());
        assert!(matches!(
            DiscreteSchedule::linear(0, 1e-4, 0.02),
            Err(ScheduleError::ZeroSteps { .. })
        ));
        let msg = DiscreteSchedule::linear(10, 1e-4, 2.0).unwrap_err().to_string();
        assert!(msg.contains("outside (0, 1]"), "{msg}");
    }

    #[test]
    fn from_alphas_cumprod_round_trips() {
        let s = DiscreteSchedule::cosine(50).unwrap();
        let back = DiscreteSchedule::from_alphas_cumprod(s.alphas_cumprod().to_vec()).unwrap();
        for (a, b) in s.betas().iter().zip(back.betas()) {
            assert!((a - b).abs() < 1e-12);
        }
    }
}
