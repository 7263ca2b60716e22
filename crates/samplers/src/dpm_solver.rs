//! DPM-Solver (Lu et al. 2022, "DPM-Solver", §3–4) in t = −ln σ with the noise prediction
//! ε(x, t) = (x − D(x, σ))/σ: the singlestep solvers of orders 1–3 (their eq. 3.7 and
//! Algorithms 4–5 with r₁ = ⅓, r₂ = ⅔), DPM-Solver-fast (fixed steps, eq. 4.1's order
//! schedule) and the adaptive DPM-Solver-12 / 23 with k-diffusion's PID step-size control.
//! Both start at σ_max and end at σ_min without a final denoising step.

use std::collections::HashMap;

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;
use diffusion_core::tensor::to_f64;
use diffusion_schedules::numeric::linspace_torch;

use crate::denoiser::{Counted, Denoiser};
use crate::level::NoiseLevel;
use crate::sampler::{Observer, SampleError, SampleOutput, Sampler, noise_like};
use crate::ve::ancestral_step;

fn sigma_of(t: f64) -> f64 {
    (-t).exp()
}

fn t_of(sigma: f64) -> f64 {
    -sigma.ln()
}

/// Noise predictions of one step, cached by stage so that the embedded lower-order
/// solution of the adaptive solver reuses the higher-order one's evaluations.
struct EpsCache<'a> {
    denoiser: &'a dyn Denoiser,
    cache: HashMap<&'static str, Tensor<2>>,
}

impl<'a> EpsCache<'a> {
    fn new(denoiser: &'a dyn Denoiser) -> Self {
        Self {
            denoiser,
            cache: HashMap::new(),
        }
    }

    fn eps(&mut self, key: &'static str, x: &Tensor<2>, t: f64) -> Tensor<2> {
        if let Some(e) = self.cache.get(key) {
            return e.clone();
        }
        let sigma = sigma_of(t);
        let d = self.denoiser.denoise(x.clone(), NoiseLevel::ve(sigma));
        let e = (x.clone() - d).div_scalar(sigma);
        self.cache.insert(key, e.clone());
        e
    }

    /// DPM-Solver-1 (a DDIM step): x − σ(t') (eʰ − 1) ε.
    fn step1(&mut self, x: &Tensor<2>, t: f64, t_next: f64) -> Tensor<2> {
        let h = t_next - t;
        let eps = self.eps("eps", x, t);
        x.clone() - eps.mul_scalar(sigma_of(t_next) * h.exp_m1())
    }

    /// DPM-Solver-2 with intermediate point s₁ = t + r₁ h.
    fn step2(&mut self, x: &Tensor<2>, t: f64, t_next: f64, r1: f64) -> Tensor<2> {
        let h = t_next - t;
        let eps = self.eps("eps", x, t);
        let s1 = t + r1 * h;
        let u1 = x.clone() - eps.clone().mul_scalar(sigma_of(s1) * (r1 * h).exp_m1());
        let eps_r1 = self.eps("eps_r1", &u1, s1);
        let sn = sigma_of(t_next);
        x.clone()
            - eps.clone().mul_scalar(sn * h.exp_m1())
            - (eps_r1 - eps).mul_scalar(sn / (2.0 * r1) * h.exp_m1())
    }

    /// DPM-Solver-3 with r₁ = ⅓, r₂ = ⅔.
    fn step3(&mut self, x: &Tensor<2>, t: f64, t_next: f64) -> Tensor<2> {
        let (r1, r2) = (1.0 / 3.0, 2.0 / 3.0);
        let h = t_next - t;
        let eps = self.eps("eps", x, t);
        let (s1, s2) = (t + r1 * h, t + r2 * h);
        let u1 = x.clone() - eps.clone().mul_scalar(sigma_of(s1) * (r1 * h).exp_m1());
        let eps_r1 = self.eps("eps_r1", &u1, s1);
        let u2 = x.clone()
            - eps.clone().mul_scalar(sigma_of(s2) * (r2 * h).exp_m1())
            - (eps_r1 - eps.clone())
                .mul_scalar(sigma_of(s2) * (r2 / r1) * ((r2 * h).exp_m1() / (r2 * h) - 1.0));
        let eps_r2 = self.eps("eps_r2", &u2, s2);
        let sn = sigma_of(t_next);
        x.clone()
            - eps.clone().mul_scalar(sn * h.exp_m1())
            - (eps_r2 - eps).mul_scalar(sn / r2 * (h.exp_m1() / h - 1.0))
    }
}

/// The time to step to and the noise to add for an ancestral (η > 0) step t → t'.
fn ancestral_target(t: f64, t_next: f64, t_end: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 {
        return (t_next, 0.0);
    }
    let (down, _) = ancestral_step(sigma_of(t), sigma_of(t_next), eta);
    let target = t_end.min(t_of(down));
    let up = (sigma_of(t_next).powi(2) - sigma_of(target).powi(2)).sqrt();
    (target, up)
}

/// DPM-Solver-fast: `nfe` evaluations spent on ⌊nfe/3⌋ + 1 steps evenly spaced in t, of
/// order 3 except the last ones (k-diffusion's `sample_dpm_fast`).
#[derive(Clone, Debug, PartialEq)]
pub struct DpmSolverFast {
    /// The smallest noise level (where sampling ends).
    pub sigma_min: f64,
    /// The largest noise level (where sampling starts).
    pub sigma_max: f64,
    /// The number of denoiser evaluations.
    pub nfe: usize,
    /// η (0: deterministic).
    pub eta: f64,
    /// A factor on the added noise.
    pub s_noise: f64,
}

impl DpmSolverFast {
    /// The deterministic solver.
    pub fn new(sigma_min: f64, sigma_max: f64, nfe: usize) -> Self {
        Self {
            sigma_min,
            sigma_max,
            nfe,
            eta: 0.0,
            s_noise: 1.0,
        }
    }

    /// The order of each step.
    pub fn orders(&self) -> Vec<usize> {
        let m = self.nfe / 3 + 1;
        if self.nfe.is_multiple_of(3) {
            let mut o = vec![3; m.saturating_sub(2)];
            o.extend([2, 1]);
            o
        } else {
            let mut o = vec![3; m - 1];
            o.push(self.nfe % 3);
            o
        }
    }
}

impl Sampler for DpmSolverFast {
    fn init_noise_sigma(&self) -> f64 {
        self.sigma_max
    }

    fn sample_observed(
        &self,
        denoiser: &dyn Denoiser,
        mut x: Tensor<2>,
        noise: &mut dyn NoiseSource,
        observer: Observer<'_>,
    ) -> Result<SampleOutput, SampleError> {
        let counted = Counted::new(denoiser);
        let (t_start, t_end) = (t_of(self.sigma_max), t_of(self.sigma_min));
        let orders = self.orders();
        let ts = linspace_torch(t_start, t_end, self.nfe / 3 + 2);
        for (i, &order) in orders.iter().enumerate() {
            let (t, t_next) = (ts[i], ts[i + 1]);
            let (target, up) = ancestral_target(t, t_next, t_end, self.eta);
            let mut cache = EpsCache::new(&counted);
            x = match order {
                1 => cache.step1(&x, t, target),
                2 => cache.step2(&x, t, target, 0.5),
                _ => cache.step3(&x, t, target),
            };
            if self.eta > 0.0 {
                let z = noise_like(noise, &x);
                x = x + z.mul_scalar(up * self.s_noise);
            }
            observer(i, &x);
        }
        Ok(SampleOutput {
            x,
            nfe: counted.nfe(),
        })
    }
}

/// DPM-Solver-12 / 23 with adaptive steps (k-diffusion's `sample_dpm_adaptive`): each
/// attempt compares the order-p solution with the embedded order-(p−1) one; a PID
/// controller on the scaled error accepts or rejects it and sets the next step.
///
/// k-diffusion measures the error over the whole batch, so the samples of a batch are
/// coupled; with `per_sample` each sample is integrated on its own (as if in a batch of
/// one), so results do not depend on the batch.
#[derive(Clone, Debug, PartialEq)]
pub struct DpmSolverAdaptive {
    /// The smallest noise level (where sampling ends).
    pub sigma_min: f64,
    /// The largest noise level (where sampling starts).
    pub sigma_max: f64,
    /// 2 or 3.
    pub order: usize,
    /// Relative tolerance (0.05).
    pub rtol: f64,
    /// Absolute tolerance (0.0078, about one 8-bit level).
    pub atol: f64,
    /// The first step in t (0.05).
    pub h_init: f64,
    /// PID proportional coefficient (0).
    pub pcoeff: f64,
    /// PID integral coefficient (1).
    pub icoeff: f64,
    /// PID derivative coefficient (0).
    pub dcoeff: f64,
    /// The step-size factor below which a step is rejected (0.81).
    pub accept_safety: f64,
    /// η (0: deterministic).
    pub eta: f64,
    /// A factor on the added noise.
    pub s_noise: f64,
    /// Integrate each sample on its own.
    pub per_sample: bool,
}

impl DpmSolverAdaptive {
    /// DPM-Solver-23 with k-diffusion's defaults, batch-coupled like k-diffusion.
    pub fn new(sigma_min: f64, sigma_max: f64) -> Self {
        Self {
            sigma_min,
            sigma_max,
            order: 3,
            rtol: 0.05,
            atol: 0.0078,
            h_init: 0.05,
            pcoeff: 0.0,
            icoeff: 1.0,
            dcoeff: 0.0,
            accept_safety: 0.81,
            eta: 0.0,
            s_noise: 1.0,
            per_sample: false,
        }
    }

    fn solve(
        &self,
        denoiser: &Counted<'_>,
        mut x: Tensor<2>,
        noise: &mut dyn NoiseSource,
        observer: Observer<'_>,
    ) -> Tensor<2> {
        let (t_start, t_end) = (t_of(self.sigma_max), t_of(self.sigma_min));
        let order = if self.order == 2 { 2 } else { 3 };
        let mut pid = PidController::new(
            self.h_init.abs(),
            self.pcoeff,
            self.icoeff,
            self.dcoeff,
            if self.eta > 0.0 { 1.5 } else { order as f64 },
            self.accept_safety,
        );
        let numel = x.shape().num_elements() as f64;
        let mut x_prev = x.clone();
        let mut s = t_start;
        let mut attempt = 0;
        while s < t_end - 1e-5 {
            let t = t_end.min(s + pid.h);
            let (target, up) = ancestral_target(s, t, t_end, self.eta);
            let mut cache = EpsCache::new(denoiser);
            let (low, high) = if order == 2 {
                (cache.step1(&x, s, target), cache.step2(&x, s, target, 0.5))
            } else {
                (cache.step2(&x, s, target, 1.0 / 3.0), cache.step3(&x, s, target))
            };
            let scale = low
                .clone()
                .abs()
                .max_pair(x_prev.clone().abs())
                .mul_scalar(self.rtol)
                .clamp_min(self.atol);
            let ratio = to_f64(&((low.clone() - high.clone()) / scale));
            let error = ratio.iter().map(|r| r * r).sum::<f64>().sqrt() / numel.sqrt();
            if pid.propose_step(error) {
                x_prev = low;
                x = high;
                if self.eta > 0.0 {
                    let z = noise_like(noise, &x);
                    x = x + z.mul_scalar(up * self.s_noise);
                }
                s = t;
            }
            observer(attempt, &x);
            attempt += 1;
        }
        x
    }
}

impl Sampler for DpmSolverAdaptive {
    fn init_noise_sigma(&self) -> f64 {
        self.sigma_max
    }

    fn sample_observed(
        &self,
        denoiser: &dyn Denoiser,
        x: Tensor<2>,
        noise: &mut dyn NoiseSource,
        observer: Observer<'_>,
    ) -> Result<SampleOutput, SampleError> {
        let counted = Counted::new(denoiser);
        let x = if self.per_sample {
            let [n, f] = x.dims();
            let shared = std::cell::RefCell::new(BatchDraws {
                inner: noise,
                rows: n,
                draws: Vec::new(),
            });
            let rows: Vec<Tensor<2>> = (0..n)
                .map(|row| {
                    let mut own = RowNoise {
                        shared: &shared,
                        row,
                        next: 0,
                    };
                    self.solve(
                        &counted,
                        x.clone().slice([row..row + 1, 0..f]),
                        &mut own,
                        &mut |_, _| {},
                    )
                })
                .collect();
            let x = Tensor::cat(rows, 0);
            observer(0, &x);
            x
        } else {
            self.solve(&counted, x, noise, observer)
        };
        Ok(SampleOutput {
            x,
            nfe: counted.nfe(),
        })
    }
}

/// The batch draws of a noise source, kept so that each row can take its own in order.
struct BatchDraws<'a> {
    inner: &'a mut dyn NoiseSource,
    rows: usize,
    draws: Vec<Vec<f64>>,
}

/// One row's view of a batch noise source: its k-th draw is row `row` of the batch's k-th
/// draw, which is what it would get if the batch were integrated together (with per-sample
/// streams, its own stream).
struct RowNoise<'a, 'b> {
    shared: &'b std::cell::RefCell<BatchDraws<'a>>,
    row: usize,
    next: usize,
}

impl NoiseSource for RowNoise<'_, '_> {
    fn normal(&mut self, n: usize, features: usize) -> Vec<f64> {
        debug_assert_eq!(n, 1);
        let mut shared = self.shared.borrow_mut();
        while shared.draws.len() <= self.next {
            let rows = shared.rows;
            let draw = shared.inner.normal(rows, features);
            shared.draws.push(draw);
        }
        self.next += 1;
        shared.draws[self.next - 1][self.row * features..(self.row + 1) * features].to_vec()
    }
}

/// k-diffusion's PID step-size controller (Söderlind 2003) with an arctan limiter.
struct PidController {
    h: f64,
    b1: f64,
    b2: f64,
    b3: f64,
    accept_safety: f64,
    errs: Option<[f64; 3]>,
}

impl PidController {
    fn new(h: f64, pcoeff: f64, icoeff: f64, dcoeff: f64, order: f64, accept_safety: f64) -> Self {
        Self {
            h,
            b1: (pcoeff + icoeff + dcoeff) / order,
            b2: -(pcoeff + 2.0 * dcoeff) / order,
            b3: dcoeff / order,
            accept_safety,
            errs: None,
        }
    }

    /// Updates the step size from the scaled error; returns whether the step is accepted.
    fn propose_step(&mut self, error: f64) -> bool {
        let inv = 1.0 / (error + 1e-8);
        let errs = self.errs.get_or_insert([inv; 3]);
        errs[0] = inv;
        let factor = errs[0].powf(self.b1) * errs[1].powf(self.b2) * errs[2].powf(self.b3);
        let factor = 1.0 + (factor - 1.0).atan();
        let accept = factor >= self.accept_safety;
        if accept {
            errs[2] = errs[1];
            errs[1] = errs[0];
        }
        self.h *= factor;
        accept
    }
}
