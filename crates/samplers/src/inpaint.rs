//! Inpainting with an unconditional model: the replacement method and RePaint.
//!
//! The known part of a reference x_ref is a linear subspace of the data: pixels under a mask,
//! or the grey level of each pixel (colourisation). Writing P for the orthogonal projection
//! onto it, every step of the reverse chain ends by putting back the known part at the current
//! noise level (Song et al. 2021, App. I.2; Lugmayr et al. 2022, eq. 8):
//!
//! x_{t−1} = (I − P) x_{t−1}^unknown + P (√ᾱ_{t−1} x_ref + √(1 − ᾱ_{t−1}) z),
//!
//! where x_{t−1}^unknown is an ordinary reverse step. That is the *replacement method*; it is
//! biased, because the unknown part never sees the known part of x_t at noise levels where it
//! matters. RePaint (Lugmayr et al. 2022, Algorithm 1) reduces the bias by resampling: after
//! every `jump_length` reverse steps the chain is diffused forward again by q(x_{t+j} | x_t)
//! and re-denoised, `jump_n_sample` times, so that the two parts harmonise.

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;
use diffusion_schedules::DiscreteSchedule;

use crate::denoiser::{Counted, Denoiser, eps_from_x0};
use crate::level::NoiseLevel;
use crate::sampler::{Observer, SampleError, SampleOutput, Sampler, noise_like};
use crate::vp_step::{VpStep, generalized_step};

/// The known part of the data.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // one per sampling run; a box would only add a hop
pub enum KnownRegion {
    /// Features where the mask is 1 are known, 0 unknown; `[n, features]` or `[1, features]`.
    Mask(Tensor<2>),
    /// The grey level of each pixel is known (colourisation): for images of `channels`
    /// channels flattened channel-first, P replaces each pixel's channels by their mean — the
    /// projection onto (1, …, 1)/√C, the first axis of score_sde's decoupling matrix.
    Gray {
        /// The number of colour channels C.
        channels: usize,
    },
}

impl KnownRegion {
    /// P x: the known part of `x`.
    pub fn project(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Mask(mask) => x * mask.clone(),
            Self::Gray { channels } => {
                let [n, f] = x.dims();
                let c = *channels;
                x.reshape([n, c, f / c])
                    .mean_dim(1)
                    .repeat_dim(1, c)
                    .reshape([n, f])
            }
        }
    }

    /// (I − P) unknown + P known: `unknown` with its known part taken from `known`. Under a
    /// 0/1 mask the known features are copied exactly.
    pub fn merge(&self, unknown: Tensor<2>, known: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Mask(mask) => known * mask.clone() + unknown * mask.clone().neg().add_scalar(1.0),
            Self::Gray { .. } => unknown.clone() + self.project(known - unknown),
        }
    }

    /// Checks the region against data of `features` features in batches of `n`.
    pub fn validate(&self, n: usize, features: usize) -> Result<(), SampleError> {
        let invalid = |m: String| Err(SampleError::Invalid(m));
        match self {
            Self::Mask(mask) => {
                let [mn, mf] = mask.dims();
                if mf != features || !(mn == n || mn == 1) {
                    return invalid(format!(
                        "the inpainting mask is [{mn}, {mf}] but the samples are [{n}, {features}]: \
                         give one mask row per sample or a single row"
                    ));
                }
            }
            Self::Gray { channels } => {
                if *channels < 2 || !features.is_multiple_of(*channels) {
                    return invalid(format!(
                        "colourisation needs at least 2 channels dividing the {features} features, \
                         got {channels} channels"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// How RePaint diffuses the chain forward between resamplings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UndoRule {
    /// One exact draw from q(x_{t'} | x_t) = N(√(ᾱ_{t'}/ᾱ_t) x_t, (1 − ᾱ_{t'}/ᾱ_t) I) (the
    /// paper's forward jump).
    #[default]
    Exact,
    /// diffusers' `RePaintScheduler.undo_step`: T/N single-step draws with β_t, …, β_{t+T/N−1}
    /// — off by one step from q(x_{t+T/N} | x_t) (β_{t+1}, …, β_{t+T/N} would be exact). For
    /// reproducing diffusers to the digit.
    Diffusers,
}

/// RePaint (Lugmayr et al. 2022) on a discrete VP schedule; with `jump_n_sample = 1` the
/// plain replacement method. Timesteps and steps follow diffusers' `RePaintScheduler`, so a
/// run reproduces its pipeline given the same noise.
#[derive(Clone, Debug)]
pub struct RePaint {
    /// The training schedule.
    pub schedule: DiscreteSchedule,
    /// N: the reverse chain visits the timesteps k·T/N, k = N−1, …, 0.
    pub num_inference_steps: usize,
    /// j: reverse steps between forward jumps (and the length of each jump).
    pub jump_length: usize,
    /// r: how many times each stretch is resampled (1: no resampling, the replacement method).
    pub jump_n_sample: usize,
    /// η of the reverse step of the unknown part: 1 is DDPM's posterior variance (the paper),
    /// 0 the deterministic DDIM step.
    pub eta: f64,
    /// The forward jump.
    pub undo: UndoRule,
    /// The known part.
    pub region: KnownRegion,
    /// The reference x_ref whose known part is kept, `[n, features]`.
    pub reference: Tensor<2>,
}

/// RePaint's path through the timestep indices (in units of T/N): down from N − 1, and after
/// reaching each multiple of j below N − j, back up j steps, r − 1 times (diffusers'
/// `set_timesteps`, the paper's Figure 10 schedule).
pub fn repaint_path(num_inference_steps: usize, jump_length: usize, jump_n_sample: usize) -> Vec<usize> {
    let n = num_inference_steps;
    let j = jump_length.max(1);
    let mut jumps: std::collections::HashMap<usize, usize> = (0..n.saturating_sub(j))
        .step_by(j)
        .map(|k| (k, jump_n_sample.saturating_sub(1)))
        .collect();
    let mut path = Vec::new();
    let mut t = n;
    while t >= 1 {
        t -= 1;
        path.push(t);
        if let Some(left) = jumps.get_mut(&t).filter(|left| **left > 0) {
            *left -= 1;
            for _ in 0..j {
                t += 1;
                path.push(t);
            }
        }
    }
    path
}

impl RePaint {
    /// The replacement method with DDPM steps: no resampling.
    pub fn replacement(
        schedule: DiscreteSchedule,
        steps: usize,
        region: KnownRegion,
        reference: Tensor<2>,
    ) -> Self {
        Self {
            schedule,
            num_inference_steps: steps,
            jump_length: 10,
            jump_n_sample: 1,
            eta: 1.0,
            undo: UndoRule::Exact,
            region,
            reference,
        }
    }

    /// T / N, the timestep stride.
    fn stride(&self) -> usize {
        self.schedule.len() / self.num_inference_steps
    }

    /// The visited timesteps (diffusers' `scheduler.timesteps`).
    pub fn timesteps(&self) -> Vec<usize> {
        let stride = self.stride();
        repaint_path(self.num_inference_steps, self.jump_length, self.jump_n_sample)
            .into_iter()
            .map(|k| k * stride)
            .collect()
    }

    fn validate(&self, x: &Tensor<2>) -> Result<(), SampleError> {
        let t = self.schedule.len();
        if self.num_inference_steps == 0 || self.num_inference_steps > t || self.jump_length == 0 {
            return Err(SampleError::Invalid(format!(
                "RePaint needs 1 ≤ steps ≤ {t} and a jump length ≥ 1, got {} steps, jump length {}",
                self.num_inference_steps, self.jump_length
            )));
        }
        if self.jump_n_sample == 0 || !(0.0..=1.0).contains(&self.eta) {
            return Err(SampleError::Invalid(format!(
                "RePaint needs jump_n_sample ≥ 1 and η in [0, 1], got {} and {}",
                self.jump_n_sample, self.eta
            )));
        }
        if self.reference.dims() != x.dims() {
            return Err(SampleError::Invalid(format!(
                "the reference is {:?} but the samples are {:?}",
                self.reference.dims(),
                x.dims()
            )));
        }
        let [n, f] = x.dims();
        self.region.validate(n, f)
    }

    /// One reverse step from timestep t to t − T/N: the unknown part by the generalised DDIM
    /// step with spread η σ̃, the known part noised to the new level, both from one draw z.
    fn reverse(
        &self,
        denoiser: &dyn Denoiser,
        x: Tensor<2>,
        t: usize,
        noise: &mut dyn NoiseSource,
    ) -> Tensor<2> {
        let ab = self.schedule.alphas_cumprod();
        let prev = t.checked_sub(self.stride()).map(|p| ab[p]).unwrap_or(1.0);
        let step = VpStep {
            timestep: t as f64,
            alpha_bar: ab[t],
            alpha_bar_prev: prev,
            add_noise: t > 0 && self.eta > 0.0,
        };
        let level = NoiseLevel::vp(step.alpha_bar).with_timestep(step.timestep);
        let x0 = denoiser.denoise(x.clone(), level);
        let eps = eps_from_x0(x, x0.clone(), &level);
        let z = noise_like(noise, &eps);
        let spread = self.eta * step.posterior_variance().sqrt();
        let unknown = generalized_step(
            &step,
            x0,
            eps,
            spread,
            step.add_noise.then(|| z.clone().mul_scalar(spread)),
        );
        let known = self.reference.clone().mul_scalar(prev.sqrt()) + z.mul_scalar((1.0 - prev).sqrt());
        self.region.merge(unknown, known)
    }

    /// The forward jump from timestep `from` to `to` > `from`.
    fn forward_jump(&self, x: Tensor<2>, from: usize, to: usize, noise: &mut dyn NoiseSource) -> Tensor<2> {
        match self.undo {
            UndoRule::Exact => {
                let ab = self.schedule.alphas_cumprod();
                let ratio = ab[to] / ab[from];
                let z = noise_like(noise, &x);
                x.mul_scalar(ratio.sqrt()) + z.mul_scalar((1.0 - ratio).sqrt())
            }
            UndoRule::Diffusers => {
                let betas = self.schedule.betas();
                (from..to).fold(x, |x, i| {
                    let z = noise_like(noise, &x);
                    x.mul_scalar((1.0 - betas[i]).sqrt()) + z.mul_scalar(betas[i].sqrt())
                })
            }
        }
    }
}

impl Sampler for RePaint {
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// Noise order: one draw per reverse step (shared by the two parts, which it touches in
    /// orthogonal subspaces); one draw per forward jump (`Exact`) or T/N (`Diffusers`).
    fn sample_observed(
        &self,
        denoiser: &dyn Denoiser,
        mut x: Tensor<2>,
        noise: &mut dyn NoiseSource,
        observer: Observer<'_>,
    ) -> Result<SampleOutput, SampleError> {
        self.validate(&x)?;
        let counted = Counted::new(denoiser);
        let timesteps = self.timesteps();
        let mut last = timesteps[0] + 1;
        for (i, &t) in timesteps.iter().enumerate() {
            x = if t < last {
                self.reverse(&counted, x, t, noise)
            } else {
                self.forward_jump(x, last, t, noise)
            };
            last = t;
            observer(i, &x);
        }
        Ok(SampleOutput {
            x,
            nfe: counted.nfe(),
        })
    }
}
