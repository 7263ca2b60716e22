//! Pseudo numerical methods for diffusion models (Liu et al. 2022, "PNDM"): the DDIM
//! transfer φ(x_t, ε, t → t') of their eq. 9 driven by a Runge–Kutta (PRK) warm-up and then
//! linear multistep (PLMS, Adams–Bashforth on ε: eq. 12), as diffusers' `PNDMScheduler`.
//!
//! φ(x, ε, t → t') = √(ᾱ'/ᾱ) x − (ᾱ' − ᾱ) ε / (ᾱ √(1 − ᾱ') + √(ᾱ (1 − ᾱ) ᾱ')).

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;
use diffusion_ddpm::Prediction;
use diffusion_schedules::DiscreteSchedule;

use crate::denoiser::{Counted, Denoiser, eps_from_x0};
use crate::level::NoiseLevel;
use crate::sampler::{Observer, SampleError, SampleOutput, Sampler};

/// PNDM over diffusers' timestep lists.
#[derive(Clone, Debug, PartialEq)]
pub struct Pndm {
    schedule: DiscreteSchedule,
    /// The Runge–Kutta timesteps (12, with repeats; empty when PRK is skipped).
    pub prk_timesteps: Vec<usize>,
    /// The multistep timesteps (the second one repeated when PRK is skipped).
    pub plms_timesteps: Vec<usize>,
    /// The distance between inference timesteps, T div N.
    pub step_ratio: usize,
    /// ᾱ past timestep 0 (1, or ᾱ₀ when `set_alpha_to_one` is false).
    pub final_alpha_cumprod: f64,
    /// Skip the PRK warm-up (PLMS with a Heun-like second step).
    pub skip_prk_steps: bool,
    /// The space in which model outputs are combined: ε, or v as diffusers does for a
    /// v-prediction model (the combined v is then converted to ε at the transfer's start).
    pub combine: Prediction,
}

impl Pndm {
    /// PNDM on `schedule` with `steps` inference steps at `timesteps` (increasing, as diffusers'
    /// internal `_timesteps`).
    pub fn new(
        schedule: DiscreteSchedule,
        ascending: &[usize],
        steps: usize,
        skip_prk_steps: bool,
        final_alpha_cumprod: f64,
    ) -> Self {
        let ratio = schedule.len() / steps;
        let half = ratio / 2;
        let (prk, plms) = if skip_prk_steps {
            // [t₀ … t_{N−2}, t_{N−2}, t_{N−1}] reversed: the second timestep repeats.
            let n = ascending.len();
            let mut plms: Vec<usize> = ascending[..n - 1].to_vec();
            plms.extend_from_slice(&ascending[n.saturating_sub(2)..n - 1]);
            plms.push(ascending[n - 1]);
            plms.reverse();
            (Vec::new(), plms)
        } else {
            // The last four timesteps and their half steps, each RK stage twice.
            let last4 = &ascending[ascending.len() - 4..];
            let pairs: Vec<usize> = last4.iter().flat_map(|&t| [t, t + half]).collect();
            let mut prk: Vec<usize> = pairs[..pairs.len() - 1].iter().flat_map(|&t| [t, t]).collect();
            prk = prk[1..prk.len() - 1].to_vec();
            prk.reverse();
            let mut plms: Vec<usize> = ascending[..ascending.len() - 3].to_vec();
            plms.reverse();
            (prk, plms)
        };
        Self {
            schedule,
            prk_timesteps: prk,
            plms_timesteps: plms,
            step_ratio: ratio,
            final_alpha_cumprod,
            skip_prk_steps,
            combine: Prediction::Epsilon,
        }
    }

    /// Every timestep the model is called at, in order.
    pub fn timesteps(&self) -> Vec<usize> {
        self.prk_timesteps
            .iter()
            .chain(&self.plms_timesteps)
            .copied()
            .collect()
    }

    fn alpha_bar(&self, t: i64) -> f64 {
        if t >= 0 {
            self.schedule.alphas_cumprod()[t as usize]
        } else {
            self.final_alpha_cumprod
        }
    }

    /// PNDM's transfer φ (eq. 9): the DDIM step from t to t_prev with the combined output
    /// (ε, or v converted to ε = √ᾱ v + √(1 − ᾱ) x at the start).
    fn transfer(&self, x: Tensor<2>, t: i64, t_prev: i64, output: Tensor<2>) -> Tensor<2> {
        let (a_t, a_p) = (self.alpha_bar(t), self.alpha_bar(t_prev));
        let (b_t, b_p) = (1.0 - a_t, 1.0 - a_p);
        let eps = match self.combine {
            Prediction::V => output.mul_scalar(a_t.sqrt()) + x.clone().mul_scalar(b_t.sqrt()),
            _ => output,
        };
        let denom = a_t * b_p.sqrt() + (a_t * b_t * a_p).sqrt();
        x.mul_scalar((a_p / a_t).sqrt()) - eps.mul_scalar((a_p - a_t) / denom)
    }
}

/// The state PNDM carries between model calls.
struct State {
    ets: Vec<Tensor<2>>,
    counter: usize,
    cur_model_output: Option<Tensor<2>>,
    cur_sample: Option<Tensor<2>>,
}

impl Sampler for Pndm {
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn sample_observed(
        &self,
        denoiser: &dyn Denoiser,
        mut x: Tensor<2>,
        _noise: &mut dyn NoiseSource,
        observer: Observer<'_>,
    ) -> Result<SampleOutput, SampleError> {
        let counted = Counted::new(denoiser);
        let mut state = State {
            ets: Vec::new(),
            counter: 0,
            cur_model_output: None,
            cur_sample: None,
        };
        let half = (self.step_ratio / 2) as i64;
        let ratio = self.step_ratio as i64;
        for (i, t) in self.timesteps().into_iter().enumerate() {
            let level = NoiseLevel::vp(self.schedule.alphas_cumprod()[t]).with_timestep(t as f64);
            let denoised = counted.denoise(x.clone(), level);
            let e = match self.combine {
                Prediction::V => Prediction::V.from_x0(denoised, x.clone(), &[level.alpha], &[level.sigma]),
                _ => eps_from_x0(x.clone(), denoised, &level),
            };
            let t = t as i64;
            x = if state.counter < self.prk_timesteps.len() && !self.skip_prk_steps {
                // Runge–Kutta: four stages from the same start, averaged as RK4.
                let t_prev = t - if state.counter % 2 == 1 { 0 } else { half };
                let t_start = self.prk_timesteps[state.counter / 4 * 4] as i64;
                let acc = state.cur_model_output.take();
                let e_used = match state.counter % 4 {
                    0 => {
                        state.cur_model_output = Some(e.clone().div_scalar(6.0));
                        state.ets.push(e.clone());
                        state.cur_sample = Some(x.clone());
                        e
                    }
                    1 | 2 => {
                        state.cur_model_output = Some(acc.expect("stage 0 ran") + e.clone().div_scalar(3.0));
                        e
                    }
                    _ => acc.expect("stages 0-2 ran") + e.div_scalar(6.0),
                };
                let start = state.cur_sample.clone().expect("stage 0 ran");
                state.counter += 1;
                self.transfer(start, t_start, t_prev, e_used)
            } else {
                // Linear multistep on ε.
                let (mut t_prev, mut t_at) = (t - ratio, t);
                if state.counter != 1 {
                    let keep = state.ets.len().saturating_sub(3);
                    state.ets.drain(..keep);
                    state.ets.push(e.clone());
                } else {
                    t_prev = t;
                    t_at = t + ratio;
                }
                let ets = &state.ets;
                let n = ets.len();
                let (e_used, from) = if n == 1 && state.counter == 0 {
                    state.cur_sample = Some(x.clone());
                    (e, x)
                } else if n == 1 && state.counter == 1 {
                    let start = state.cur_sample.take().expect("the first PLMS step saved it");
                    ((e + ets[0].clone()).div_scalar(2.0), start)
                } else if n == 2 {
                    (
                        (ets[1].clone().mul_scalar(3.0) - ets[0].clone()).div_scalar(2.0),
                        x,
                    )
                } else if n == 3 {
                    (
                        (ets[2].clone().mul_scalar(23.0) - ets[1].clone().mul_scalar(16.0)
                            + ets[0].clone().mul_scalar(5.0))
                        .div_scalar(12.0),
                        x,
                    )
                } else {
                    (
                        (ets[3].clone().mul_scalar(55.0) - ets[2].clone().mul_scalar(59.0)
                            + ets[1].clone().mul_scalar(37.0)
                            - ets[0].clone().mul_scalar(9.0))
                        .div_scalar(24.0),
                        x,
                    )
                };
                state.counter += 1;
                self.transfer(from, t_at, t_prev, e_used)
            };
            observer(i, &x);
        }
        Ok(SampleOutput {
            x,
            nfe: counted.nfe(),
        })
    }
}
