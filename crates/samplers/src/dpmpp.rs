//! DPM-Solver++ multistep (Lu et al. 2022b, "DPM-Solver++", Algorithm 2) and its SDE
//! variants (Gonzalez et al. 2023's SDE-DPM-Solver++ as in k-diffusion's
//! `sample_dpmpp_2m`, `sample_dpmpp_2m_sde`, `sample_dpmpp_3m_sde`).
//!
//! In t = −ln σ with step h = t' − t and η ≥ 0 (η = 0: the ODE solver), the first-order
//! update of the data-prediction ODE/SDE is
//!   x' = (σ'/σ) e^{−ηh} x + (1 − e^{−(1+η)h}) D,
//! plus σ' √(1 − e^{−2ηh}) z of fresh noise; the second- and third-order updates add
//! finite-difference corrections built from the previous denoised estimates.

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;
use serde::{Deserialize, Serialize};

use crate::denoiser::{Counted, Denoiser};
use crate::sampler::{Observer, SampleError, SampleOutput, Sampler, noise_like};
use crate::ve::VeGrid;

/// How the second-order multistep correction is formed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SolverType {
    /// ½ (1 − e^{−(1+η)h}) (D − D₋₁)/r (DPM-Solver++(2M)).
    #[default]
    Midpoint,
    /// ((1 − e^{−(1+η)h})/(−(1+η)h) + 1) (D − D₋₁)/r, i.e. φ₂ (D − D₋₁)/r.
    Heun,
}

/// DPM-Solver++(2M) / (2M) SDE / (3M) SDE on a σ grid. A step to σ' = 0 returns D.
/// NFE: one per step. Noise (η > 0): one draw per step to a positive σ'.
#[derive(Clone, Debug, PartialEq)]
pub struct DpmppMultistep {
    /// The noise levels.
    pub grid: VeGrid,
    /// 2 or 3 (the first steps use the lower orders their history allows).
    pub order: usize,
    /// η: 0 for the ODE solver, 1 for the SDE solver.
    pub eta: f64,
    /// A factor on the added noise.
    pub s_noise: f64,
    /// The form of the second-order correction (order 2 only; order 3 uses Heun's form for
    /// its second step, as k-diffusion does).
    pub solver_type: SolverType,
}

impl DpmppMultistep {
    /// DPM-Solver++(2M), deterministic.
    pub fn two_m(grid: impl Into<VeGrid>) -> Self {
        Self {
            grid: grid.into(),
            order: 2,
            eta: 0.0,
            s_noise: 1.0,
            solver_type: SolverType::Midpoint,
        }
    }

    /// DPM-Solver++(2M) SDE with η = 1.
    pub fn two_m_sde(grid: impl Into<VeGrid>, solver_type: SolverType) -> Self {
        Self {
            eta: 1.0,
            solver_type,
            ..Self::two_m(grid)
        }
    }

    /// DPM-Solver++(3M) SDE with η = 1.
    pub fn three_m_sde(grid: impl Into<VeGrid>) -> Self {
        Self {
            order: 3,
            eta: 1.0,
            ..Self::two_m(grid)
        }
    }
}

impl Sampler for DpmppMultistep {
    fn init_noise_sigma(&self) -> f64 {
        self.grid.init_noise_sigma()
    }

    fn sample_observed(
        &self,
        denoiser: &dyn Denoiser,
        mut x: Tensor<2>,
        noise: &mut dyn NoiseSource,
        observer: Observer<'_>,
    ) -> Result<SampleOutput, SampleError> {
        let counted = Counted::new(denoiser);
        // (D, h) of the previous two steps, most recent first.
        let mut history: Vec<(Tensor<2>, f64)> = Vec::with_capacity(2);
        for i in 0..self.grid.steps() {
            let (sigma, sigma_next) = (self.grid.sigma(i), self.grid.sigma(i + 1));
            let denoised = counted.denoise(x.clone(), self.grid.level(i));
            if sigma_next == 0.0 {
                x = denoised;
                observer(i, &x);
                continue;
            }
            let h = sigma.ln() - sigma_next.ln();
            let h_eta = h * (self.eta + 1.0);
            let gain = -(-h_eta).exp_m1(); // 1 − e^{−(1+η)h}
            x = x.mul_scalar(sigma_next / sigma * (-self.eta * h).exp()) + denoised.clone().mul_scalar(gain);
            x = x + self.correction(&denoised, &history, h, h_eta, gain);
            if self.eta > 0.0 {
                let std = sigma_next * (-(-2.0 * self.eta * h).exp_m1()).sqrt() * self.s_noise;
                let z = noise_like(noise, &x);
                x = x + z.mul_scalar(std);
            }
            history.insert(0, (denoised, h));
            history.truncate(2);
            observer(i, &x);
        }
        Ok(SampleOutput {
            x,
            nfe: counted.nfe(),
        })
    }
}

impl DpmppMultistep {
    /// The multistep correction to the first-order update (zero on the first step).
    fn correction(
        &self,
        denoised: &Tensor<2>,
        history: &[(Tensor<2>, f64)],
        h: f64,
        h_eta: f64,
        gain: f64,
    ) -> Tensor<2> {
        // φ₂ = (e^{−h_η} − 1)/h_η + 1, φ₃ = φ₂/h_η − ½.
        let phi2 = (-h_eta).exp_m1() / h_eta + 1.0;
        match (self.order, history) {
            (_, []) => denoised.zeros_like(),
            (3, [(d1, h1), (d2, h2), ..]) => {
                let (r0, r1) = (h1 / h, h2 / h);
                let d1_0 = (denoised.clone() - d1.clone()).div_scalar(r0);
                let d1_1 = (d1.clone() - d2.clone()).div_scalar(r1);
                let first = d1_0.clone() + (d1_0.clone() - d1_1.clone()).mul_scalar(r0 / (r0 + r1));
                let second = (d1_0 - d1_1).div_scalar(r0 + r1);
                let phi3 = phi2 / h_eta - 0.5;
                first.mul_scalar(phi2) - second.mul_scalar(phi3)
            }
            (3, [(d1, h1)]) => (denoised.clone() - d1.clone()).mul_scalar(phi2 * h / h1),
            (_, [(d1, h1), ..]) => {
                let coef = match self.solver_type {
                    SolverType::Midpoint => 0.5 * gain,
                    SolverType::Heun => phi2,
                };
                (denoised.clone() - d1.clone()).mul_scalar(coef * h / h1)
            }
        }
    }
}
