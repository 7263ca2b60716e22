//! The forward-process posterior q(x_{t−1} | x_t, x₀) = N(μ̃_t, β̃_t I) (Ho et al. 2020,
//! eq. 6–7): μ̃_t = c₁ x₀ + c₂ x_t with c₁ = β_t √ᾱ_{t−1}/(1 − ᾱ_t),
//! c₂ = √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t), and β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) β_t.
//!
//! β̃₀ = 0, so its logarithm is clipped: ln β̃₀ is replaced by ln β̃₁ (Nichol & Dhariwal 2021,
//! as in their code), which is what a learned-range variance interpolates from at t = 0.

use burn::tensor::Tensor;
use diffusion_core::tensor::lincomb;
use diffusion_schedules::DiscreteSchedule;

use crate::error::{DdpmError, Result};

/// The tables of q(x_{t−1} | x_t, x₀) for every t of a schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Posterior {
    /// β_t.
    pub betas: Vec<f64>,
    /// ᾱ_{t−1} (1 at t = 0).
    pub alphas_cumprod_prev: Vec<f64>,
    /// c₁, the coefficient of x₀ in μ̃_t.
    pub mean_coef_x0: Vec<f64>,
    /// c₂, the coefficient of x_t in μ̃_t.
    pub mean_coef_xt: Vec<f64>,
    /// β̃_t.
    pub variance: Vec<f64>,
    /// ln β̃_t with ln β̃₀ := ln β̃₁.
    pub log_variance_clipped: Vec<f64>,
}

impl Posterior {
    /// The posterior tables of `schedule`.
    pub fn new(schedule: &DiscreteSchedule) -> Self {
        let betas = schedule.betas().to_vec();
        let ab = schedule.alphas_cumprod();
        let t_len = betas.len();
        let prev: Vec<f64> = (0..t_len).map(|t| if t == 0 { 1.0 } else { ab[t - 1] }).collect();
        let variance: Vec<f64> = (0..t_len)
            .map(|t| betas[t] * (1.0 - prev[t]) / (1.0 - ab[t]))
            .collect();
        let log_variance_clipped = (0..t_len)
            .map(|t| {
                if t == 0 && t_len > 1 {
                    variance[1].ln()
                } else {
                    variance[t].ln()
                }
            })
            .collect();
        Self {
            mean_coef_x0: (0..t_len)
                .map(|t| betas[t] * prev[t].sqrt() / (1.0 - ab[t]))
                .collect(),
            mean_coef_xt: (0..t_len)
                .map(|t| (1.0 - prev[t]) * (1.0 - betas[t]).sqrt() / (1.0 - ab[t]))
                .collect(),
            betas,
            alphas_cumprod_prev: prev,
            variance,
            log_variance_clipped,
        }
    }

    /// The number of timesteps T.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// Values of `table` at the timesteps `t`, checking the range.
    pub fn gather(&self, table: &[f64], t: &[usize]) -> Result<Vec<f64>> {
        t.iter()
            .map(|&ti| {
                table.get(ti).copied().ok_or(DdpmError::TimestepOutOfRange {
                    t: ti,
                    max: self.len() - 1,
                })
            })
            .collect()
    }

    /// μ̃_t(x_t, x₀), one timestep per sample.
    pub fn mean<const D: usize>(&self, x0: Tensor<D>, x_t: Tensor<D>, t: &[usize]) -> Result<Tensor<D>> {
        let c1 = self.gather(&self.mean_coef_x0, t)?;
        let c2 = self.gather(&self.mean_coef_xt, t)?;
        Ok(lincomb(x0, &c1, x_t, &c2))
    }
}
