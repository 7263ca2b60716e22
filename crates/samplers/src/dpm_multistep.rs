//! Multistep DPM-Solver (Lu et al. 2022, "DPM-Solver", §3.3 and "DPM-Solver++",
//! Algorithm 2) and its SDE variants (Lu et al. 2022b, §5; k-diffusion's
//! `sample_dpmpp_2m`, `sample_dpmpp_2m_sde`, `sample_dpmpp_3m_sde`; diffusers'
//! `DPMSolverMultistepScheduler`), written once in VE coordinates.
//!
//! With λ = −ln σ and step h = λ' − λ, the data-prediction ("++") update of order 1 with
//! spread η (0: ODE, 1: SDE) is
//!   x' = (σ'/σ) e^{−ηh} x + (1 − e^{−(1+η)h}) D₀  +  σ' √(1 − e^{−2ηh}) z,
//! and the noise-prediction update x' = x − σ'(eʰ − 1) ε₀ (ODE) or
//! x' = x − 2σ'(eʰ − 1) ε₀ + σ' √(e^{2h} − 1) z (SDE). Orders 2 and 3 add finite differences of
//! the previous model outputs: D₁ = (m₀ − m₁)/r₀ and D₂ as in the papers. A step to σ' = 0 is
//! first order, which gives D₀ exactly.

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;
use serde::{Deserialize, Serialize};

use crate::denoiser::{Counted, Denoiser};
use crate::sampler::{Observer, SampleError, SampleOutput, Sampler, noise_like};
use crate::ve::VeGrid;

/// What the multistep history holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpmAlgorithm {
    /// Data prediction D (DPM-Solver++).
    #[default]
    DataPrediction,
    /// Noise prediction ε (the original DPM-Solver).
    NoisePrediction,
}

/// How the second-order multistep correction is formed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SolverType {
    /// ½ × the first-order gain × D₁.
    #[default]
    Midpoint,
    /// The exponential-integrator weight φ₂ × D₁ ("heun" in k-diffusion and diffusers).
    Heun,
}

/// Whose conventions to follow where the reference libraries differ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpmDialect {
    /// k-diffusion: a third-order run takes its second step in φ₂ (Heun) form, and the
    /// third-order SDE's D₂ weight is −φ₃ = (1 − e^{−2h} − 2h)/(2h)² + ½.
    #[default]
    KDiffusion,
    /// diffusers: a third-order run takes its second step in `solver_type` form, and the
    /// third-order SDE's D₂ weight is (1 − e^{−2h} − 2h)/(2h)² − ½ (diffusers 0.42's sign).
    Diffusers,
}

/// Multistep DPM-Solver(++) of order 1–3 on a σ grid. NFE: one per step. Noise (η > 0): one
/// draw per step to a positive σ'.
#[derive(Clone, Debug, PartialEq)]
pub struct DpmMultistep {
    /// The noise levels.
    pub grid: VeGrid,
    /// 1, 2 or 3.
    pub order: usize,
    /// Data or noise prediction.
    pub algorithm: DpmAlgorithm,
    /// 0 for the ODE solver, 1 for the SDE solver (data prediction also takes values between).
    pub eta: f64,
    /// A factor on the added noise.
    pub s_noise: f64,
    /// The second-order correction.
    pub solver_type: SolverType,
    /// diffusers' `lower_order_final`: runs of fewer than 15 steps end with orders 2 then 1.
    pub lower_order_final: bool,
    /// diffusers' `euler_at_final`: the last step is first order.
    pub euler_at_final: bool,
    /// Library conventions where k-diffusion and diffusers differ.
    pub dialect: DpmDialect,
}

impl DpmMultistep {
    /// DPM-Solver++(2M), deterministic (k-diffusion's `sample_dpmpp_2m`).
    pub fn two_m(grid: impl Into<VeGrid>) -> Self {
        Self {
            grid: grid.into(),
            order: 2,
            algorithm: DpmAlgorithm::DataPrediction,
            eta: 0.0,
            s_noise: 1.0,
            solver_type: SolverType::Midpoint,
            lower_order_final: false,
            euler_at_final: false,
            dialect: DpmDialect::KDiffusion,
        }
    }

    /// DPM-Solver++(2M) SDE with η = 1 (`sample_dpmpp_2m_sde`).
    pub fn two_m_sde(grid: impl Into<VeGrid>, solver_type: SolverType) -> Self {
        Self {
            eta: 1.0,
            solver_type,
            ..Self::two_m(grid)
        }
    }

    /// DPM-Solver++(3M) SDE with η = 1 (`sample_dpmpp_3m_sde`).
    pub fn three_m_sde(grid: impl Into<VeGrid>) -> Self {
        Self {
            order: 3,
            eta: 1.0,
            ..Self::two_m(grid)
        }
    }

    /// Checks the settings; the noise-prediction solver cannot step to σ = 0, and has no
    /// third-order SDE form.
    pub fn validate(&self) -> Result<(), SampleError> {
        let bad = |m: &str| Err(SampleError::Invalid(m.into()));
        if !(1..=3).contains(&self.order) {
            return bad("the DPM-Solver order must be 1, 2 or 3");
        }
        if self.algorithm == DpmAlgorithm::NoisePrediction {
            if self.grid.sigmas().last() == Some(&0.0) {
                return bad("noise-prediction DPM-Solver cannot step to σ = 0: end the grid at σ_min");
            }
            if self.eta != 0.0 && (self.eta != 1.0 || self.order == 3) {
                return bad("noise-prediction DPM-Solver supports η = 0, or η = 1 with order ≤ 2");
            }
        }
        Ok(())
    }

    /// The order of step `i` given `history` previous outputs (diffusers' rules; k-diffusion
    /// is the special case without `lower_order_final`).
    fn step_order(&self, i: usize, history: usize) -> usize {
        let n = self.grid.steps();
        let final_step = i + 1 == n
            && (self.euler_at_final || (self.lower_order_final && n < 15) || self.grid.sigma(i + 1) == 0.0);
        let second_last = i + 2 == n && self.lower_order_final && n < 15;
        if self.order == 1 || history < 1 || final_step {
            1
        } else if self.order == 2 || history < 2 || second_last {
            2
        } else {
            3
        }
    }
}

impl Sampler for DpmMultistep {
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
        self.validate()?;
        let counted = Counted::new(denoiser);
        // Model outputs (D or ε) and the step h that led to each, most recent first.
        let mut history: Vec<(Tensor<2>, f64)> = Vec::with_capacity(2);
        for i in 0..self.grid.steps() {
            let (sigma, sigma_next) = (self.grid.sigma(i), self.grid.sigma(i + 1));
            let denoised = counted.denoise(x.clone(), self.grid.level(i));
            let m0 = match self.algorithm {
                DpmAlgorithm::DataPrediction => denoised.clone(),
                DpmAlgorithm::NoisePrediction => (x.clone() - denoised.clone()).div_scalar(sigma),
            };
            let order = self.step_order(i, history.len());
            if sigma_next == 0.0 {
                x = denoised;
            } else {
                let h = sigma.ln() - sigma_next.ln();
                x = self.update(x, &m0, &history, order, sigma, sigma_next, h);
                if self.eta > 0.0 {
                    let std = match self.algorithm {
                        DpmAlgorithm::DataPrediction => sigma_next * (-(-2.0 * self.eta * h).exp_m1()).sqrt(),
                        DpmAlgorithm::NoisePrediction => sigma_next * (2.0 * h).exp_m1().sqrt(),
                    };
                    let z = noise_like(noise, &x);
                    x = x + z.mul_scalar(std * self.s_noise);
                }
                history.insert(0, (m0, h));
                history.truncate(2);
            }
            observer(i, &x);
        }
        Ok(SampleOutput {
            x,
            nfe: counted.nfe(),
        })
    }
}

impl DpmMultistep {
    /// The deterministic part of a step of `order` (the noise is added by the caller).
    #[allow(clippy::too_many_arguments)]
    fn update(
        &self,
        x: Tensor<2>,
        m0: &Tensor<2>,
        history: &[(Tensor<2>, f64)],
        order: usize,
        sigma: f64,
        sigma_next: f64,
        h: f64,
    ) -> Tensor<2> {
        // First differences D₁ (and D₂) of the outputs, scaled by r = h_prev/h.
        let d1 = |k: usize| -> Tensor<2> {
            let (prev, h_prev) = &history[k];
            let newer = if k == 0 { m0 } else { &history[k - 1].0 };
            (newer.clone() - prev.clone()).mul_scalar(h / h_prev)
        };
        match self.algorithm {
            DpmAlgorithm::DataPrediction => {
                let h_eta = h * (1.0 + self.eta);
                let gain = -(-h_eta).exp_m1(); // 1 − e^{−(1+η)h}
                let phi2 = (-h_eta).exp_m1() / h_eta + 1.0;
                let base =
                    x.mul_scalar(sigma_next / sigma * (-self.eta * h).exp()) + m0.clone().mul_scalar(gain);
                let heun_form = self.solver_type == SolverType::Heun
                    || (self.order == 3 && self.dialect == DpmDialect::KDiffusion);
                match order {
                    1 => base,
                    2 => base + d1(0).mul_scalar(if heun_form { phi2 } else { 0.5 * gain }),
                    _ => {
                        let (first, second) = third_order_differences(d1(0), d1(1), h, &history[..2]);
                        let phi3 = phi2 / h_eta - 0.5;
                        let d2_weight = if self.eta > 0.0 && self.dialect == DpmDialect::Diffusers {
                            -phi3 - 1.0
                        } else {
                            -phi3
                        };
                        base + first.mul_scalar(phi2) + second.mul_scalar(d2_weight)
                    }
                }
            }
            DpmAlgorithm::NoisePrediction => {
                let e = h.exp_m1(); // eʰ − 1
                let sde = self.eta > 0.0;
                let base = x - m0
                    .clone()
                    .mul_scalar(sigma_next * e * if sde { 2.0 } else { 1.0 });
                let heun = e / h - 1.0;
                match order {
                    1 => base,
                    2 => {
                        let w = match (self.solver_type, sde) {
                            (SolverType::Midpoint, false) => 0.5 * e,
                            (SolverType::Midpoint, true) => e,
                            (SolverType::Heun, false) => heun,
                            (SolverType::Heun, true) => 2.0 * heun,
                        };
                        base - d1(0).mul_scalar(sigma_next * w)
                    }
                    _ => {
                        let (first, second) = third_order_differences(d1(0), d1(1), h, &history[..2]);
                        let w2 = (e - h) / (h * h) - 0.5;
                        base - first.mul_scalar(sigma_next * heun) - second.mul_scalar(sigma_next * w2)
                    }
                }
            }
        }
    }
}

/// The third-order differences: with D1_0 = (m₀ − m₁)/r₀, D1_1 = (m₁ − m₂)/r₁,
/// D₁ = D1_0 + r₀/(r₀ + r₁) (D1_0 − D1_1) and D₂ = (D1_0 − D1_1)/(r₀ + r₁).
fn third_order_differences(
    d1_0: Tensor<2>,
    d1_1: Tensor<2>,
    h: f64,
    history: &[(Tensor<2>, f64)],
) -> (Tensor<2>, Tensor<2>) {
    let (r0, r1) = (history[0].1 / h, history[1].1 / h);
    let diff = d1_0.clone() - d1_1;
    (
        d1_0 + diff.clone().mul_scalar(r0 / (r0 + r1)),
        diff.div_scalar(r0 + r1),
    )
}
