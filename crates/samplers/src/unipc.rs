//! UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework"): the
//! multistep predictor UniP and corrector UniC of their Algorithms 1–2 with B(h) = h (bh1)
//! or eʰ − 1 (bh2), in data (x₀) or noise prediction, as diffusers'
//! `UniPCMultistepScheduler` — written in VE coordinates with λ = −ln σ.
//!
//! Each step i: convert the model output mᵢ; correct the previous predictor's result with
//! UniC (which uses mᵢ, so it costs no evaluation); then predict x at σᵢ₊₁ with UniP.

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;
use serde::{Deserialize, Serialize};

use crate::denoiser::{Counted, Denoiser};
use crate::sampler::{Observer, SampleError, SampleOutput, Sampler};
use crate::ve::VeGrid;

/// The B(h) of UniPC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UniPcVariant {
    /// B(h) = h.
    Bh1,
    /// B(h) = eʰ − 1 (the default, better at few steps).
    #[default]
    Bh2,
}

/// UniPC multistep predictor–corrector.
#[derive(Clone, Debug, PartialEq)]
pub struct UniPc {
    /// The noise levels.
    pub grid: VeGrid,
    /// The order (1–3 in practice).
    pub order: usize,
    /// bh1 or bh2.
    pub variant: UniPcVariant,
    /// Data prediction (UniPC's `predict_x0`, the default) or noise prediction.
    pub predict_x0: bool,
    /// Lower the order on the last steps (order at step i ≤ N − i).
    pub lower_order_final: bool,
    /// Steps whose result is not corrected.
    pub disable_corrector: Vec<usize>,
}

impl UniPc {
    /// UniPC-bh2 of `order` with data prediction, as diffusers' defaults.
    pub fn new(grid: impl Into<VeGrid>, order: usize) -> Self {
        Self {
            grid: grid.into(),
            order: order.max(1),
            variant: UniPcVariant::Bh2,
            predict_x0: true,
            lower_order_final: true,
            disable_corrector: Vec::new(),
        }
    }

    /// λ = −ln σ of level `i`.
    fn lambda(&self, i: usize) -> f64 {
        -self.grid.sigma(i).ln()
    }

    /// The weights of an update of `order` from σ_s to σ_t = σ_s e^{−h}.
    fn coefficients(&self, h: f64, order: usize, rks: &[f64]) -> Coefficients {
        let hh = if self.predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1();
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut fac = 1.0;
        let b_h = match self.variant {
            UniPcVariant::Bh1 => hh,
            UniPcVariant::Bh2 => hh.exp_m1(),
        };
        let mut r = Vec::with_capacity(order);
        let mut b = Vec::with_capacity(order);
        for k in 1..=order {
            r.push(rks.iter().map(|rk| rk.powi(k as i32 - 1)).collect());
            b.push(h_phi_k * fac / b_h);
            fac *= (k + 1) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / fac;
        }
        Coefficients { h_phi_1, b_h, r, b }
    }

    /// The update x' = (σ_t/σ_s) x − hφ₁ m₀ − B(h) Σ ρₖ Dₖ (data prediction) or
    /// x − σ_t (hφ₁ m₀ + B(h) Σ ρₖ Dₖ) (noise prediction), from level `s` to level `t`.
    fn apply(
        &self,
        x: Tensor<2>,
        (s, t): (usize, usize),
        m0: &Tensor<2>,
        c: &Coefficients,
        res: Option<Tensor<2>>,
    ) -> Tensor<2> {
        let (h_phi_1, b_h) = (c.h_phi_1, c.b_h);
        let (sigma_s, sigma_t) = (self.grid.sigma(s), self.grid.sigma(t));
        let (x_coef, out_coef) = if self.predict_x0 {
            (sigma_t / sigma_s, 1.0)
        } else {
            (1.0, sigma_t)
        };
        let mut out = x.mul_scalar(x_coef) - m0.clone().mul_scalar(out_coef * h_phi_1);
        if let Some(res) = res {
            out = out - res.mul_scalar(out_coef * b_h);
        }
        out
    }

    /// The differences Dₖ = (m_{−k} − m₀)/rₖ of the history (newest first) for an update
    /// from level `s` that uses the levels s − 1, s − 2, …; returns (Dₖ, rks with a final 1).
    fn differences(
        &self,
        history: &[Tensor<2>],
        s: usize,
        h: f64,
        order: usize,
    ) -> (Vec<Tensor<2>>, Vec<f64>) {
        let lambda_s = self.lambda(s);
        let mut ds = Vec::new();
        let mut rks = Vec::new();
        for k in 1..order {
            let rk = (self.lambda(s - k) - lambda_s) / h;
            ds.push((history[k].clone() - history[0].clone()).div_scalar(rk));
            rks.push(rk);
        }
        rks.push(1.0);
        (ds, rks)
    }
}

/// The weights of one UniPC update: hφ₁, B(h) and the system R ρ = b of the ρs.
struct Coefficients {
    h_phi_1: f64,
    b_h: f64,
    r: Vec<Vec<f64>>,
    b: Vec<f64>,
}

/// Solves the small linear system A ρ = b by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .expect("non-empty");
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..n {
            let f = a[row][col] / a[col][col];
            let (upper, lower) = a.split_at_mut(row);
            for (target, pivot) in lower[0][col..].iter_mut().zip(&upper[col][col..]) {
                *target -= f * pivot;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x
}

fn weighted(ds: &[Tensor<2>], rhos: &[f64]) -> Option<Tensor<2>> {
    ds.iter()
        .zip(rhos)
        .map(|(d, r)| d.clone().mul_scalar(*r))
        .reduce(|a, b| a + b)
}

impl Sampler for UniPc {
    fn init_noise_sigma(&self) -> f64 {
        self.grid.init_noise_sigma()
    }

    fn sample_observed(
        &self,
        denoiser: &dyn Denoiser,
        mut x: Tensor<2>,
        _noise: &mut dyn NoiseSource,
        observer: Observer<'_>,
    ) -> Result<SampleOutput, SampleError> {
        let counted = Counted::new(denoiser);
        let n = self.grid.steps();
        let mut history: Vec<Tensor<2>> = Vec::with_capacity(self.order);
        let mut last_sample: Option<Tensor<2>> = None;
        let (mut lower_order_nums, mut prev_order) = (0usize, 1usize);
        for i in 0..n {
            let sigma = self.grid.sigma(i);
            let denoised = counted.denoise(x.clone(), self.grid.level(i));
            let m = if self.predict_x0 {
                denoised
            } else {
                (x.clone() - denoised).div_scalar(sigma)
            };
            // UniC: correct the previous prediction with the new output.
            if let Some(prev) = last_sample
                .take()
                .filter(|_| i > 0 && !self.disable_corrector.contains(&(i - 1)))
            {
                let h = self.lambda(i) - self.lambda(i - 1);
                let (ds, rks) = self.differences(&history, i - 1, h, prev_order);
                let c = self.coefficients(h, prev_order, &rks);
                let rhos = if prev_order == 1 {
                    vec![0.5]
                } else {
                    solve(c.r.clone(), c.b.clone())
                };
                let d1_t = m.clone() - history[0].clone();
                let res = weighted(&ds, &rhos[..rhos.len() - 1])
                    .map_or(d1_t.clone().mul_scalar(rhos[rhos.len() - 1]), |c| {
                        c + d1_t.clone().mul_scalar(rhos[rhos.len() - 1])
                    });
                x = self.apply(prev, (i - 1, i), &history[0], &c, Some(res));
            }
            history.insert(0, m);
            history.truncate(self.order);
            let limit = if self.lower_order_final {
                self.order.min(n - i)
            } else {
                self.order
            };
            let order = limit.min(lower_order_nums + 1);
            last_sample = Some(x.clone());
            // UniP: predict the next level (a repeated level, h = 0, leaves x as it is).
            let h = self.lambda(i + 1) - self.lambda(i);
            if h == 0.0 {
                prev_order = order;
                lower_order_nums = (lower_order_nums + 1).min(self.order);
                observer(i, &x);
                continue;
            }
            let (ds, rks) = self.differences(&history, i, h, order);
            let c = self.coefficients(h, order, &rks);
            let rhos: Vec<f64> = match order {
                1 => Vec::new(),
                2 => vec![0.5],
                _ => solve(
                    c.r[..order - 1]
                        .iter()
                        .map(|row| row[..order - 1].to_vec())
                        .collect(),
                    c.b[..order - 1].to_vec(),
                ),
            };
            x = self.apply(x, (i, i + 1), &history[0], &c, weighted(&ds, &rhos));
            prev_order = order;
            lower_order_nums = (lower_order_nums + 1).min(self.order);
            observer(i, &x);
        }
        Ok(SampleOutput {
            x,
            nfe: counted.nfe(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::solve;

    #[test]
    fn solves_small_systems() {
        let x = solve(
            vec![vec![0.0, 2.0, 1.0], vec![1.0, 1.0, 1.0], vec![2.0, 1.0, 3.0]],
            vec![7.0, 6.0, 13.0],
        );
        for (a, b) in x.iter().zip([1.0, 2.0, 3.0]) {
            assert!((a - b).abs() < 1e-12, "{x:?}");
        }
    }
}
