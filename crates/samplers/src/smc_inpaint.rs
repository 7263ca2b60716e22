//! Inpainting by sequential Monte Carlo: SMCDiff (Trippe et al. 2023, Algorithm 1), which
//! samples the exact conditional p(x₀ | P x₀ = P y) as the number of particles grows, where the
//! replacement method and RePaint stay biased ([`inpaint`](crate::inpaint)).
//!
//! The known part is diffused forward once, y_{1:T} ~ q(· | y₀), and is the same for every
//! particle. Each particle carries its unknown part; at every step the particles are weighted
//! by how well the model's reverse kernel predicts the next known part,
//!
//! wᵢ ∝ N(P y_{t−1}; P μ_θ(x_t⁽ⁱ⁾), σ_t² P),   x_t⁽ⁱ⁾ = (I − P) x_t⁽ⁱ⁾ + P y_t,
//!
//! resampled (systematically) when the effective sample size falls below a threshold, and
//! moved by the DDPM kernel x_{t−1} = μ_θ + σ_t z (fixed-small variance). Because y_{1:T}
//! depends on x₀ only through y₀, p(x₀ | y_{0:T}) = p(x₀ | y₀): the particles target the
//! exact conditional. The batch holds groups of `particles` consecutive rows, one population per
//! reference (so several images inpaint at once); within a group the samples depend on each
//! other by design, unlike those of the other samplers.

use burn::tensor::{Int, Tensor, TensorData};
use diffusion_core::noise::NoiseSource;
use diffusion_core::tensor::to_f64;

use crate::denoiser::{Counted, Denoiser, eps_from_x0};
use crate::inpaint::KnownRegion;
use crate::level::NoiseLevel;
use crate::sampler::{Observer, SampleError, SampleOutput, Sampler, noise_like};
use crate::vp_step::{VpStep, generalized_step};

/// SMCDiff inpainting over DDPM steps.
#[derive(Clone, Debug)]
pub struct SmcInpainting {
    /// The DDPM steps, from the noisiest (e.g. [`successive_steps`](crate::successive_steps)).
    pub steps: Vec<VpStep>,
    /// The known part.
    pub region: KnownRegion,
    /// The reference y₀: one row per sample (identical within a group) or one row for all.
    pub reference: Tensor<2>,
    /// K, the particles per reference: the batch is n/K groups of K consecutive rows.
    pub particles: usize,
    /// Resample when the effective sample size falls below this fraction of the particles.
    pub ess_threshold: f64,
}

impl SmcInpainting {
    /// SMCDiff with K = `particles` per reference, resampling at half of them.
    pub fn new(steps: Vec<VpStep>, region: KnownRegion, reference: Tensor<2>, particles: usize) -> Self {
        Self {
            steps,
            region,
            reference,
            particles,
            ess_threshold: 0.5,
        }
    }

    /// The forward trajectory of each group's known part at every step's level and the final
    /// one (entry i at ᾱ of step i; the last at the last step's target level), `[n, f]` each:
    /// one draw per level, of which each group uses its first row.
    fn known_trajectory(&self, x: &Tensor<2>, noise: &mut dyn NoiseSource) -> Vec<Tensor<2>> {
        let [n, f] = x.dims();
        let k = self.particles;
        let leaders = |t: Tensor<2>| select_rows(t, (0..n / k).map(|g| (g * k) as i64).collect());
        let spread = |t: Tensor<2>| t.reshape([n / k, 1, f]).repeat_dim(1, k).reshape([n, f]);
        let reference = if self.reference.dims()[0] == 1 {
            self.reference.clone().repeat_dim(0, n / k)
        } else {
            leaders(self.reference.clone())
        };
        let mut levels: Vec<f64> = self.steps.iter().map(|s| s.alpha_bar).collect();
        levels.push(self.steps.last().map_or(1.0, |s| s.alpha_bar_prev));
        // From the data up: y at ᾱ = 1 is y₀, then q(y_k | y_{k+1}) one level at a time.
        let (mut y, mut at) = (reference, 1.0);
        let mut out = vec![y.clone(); levels.len()];
        for (slot, &level) in out.iter_mut().zip(&levels).rev() {
            let ratio = level / at;
            if ratio < 1.0 {
                let z = leaders(noise_like(noise, x));
                y = y.mul_scalar(ratio.sqrt()) + z.mul_scalar((1.0 - ratio).sqrt());
            }
            at = level;
            *slot = y.clone();
        }
        out.into_iter().map(spread).collect()
    }

    fn validate(&self, x: &Tensor<2>) -> Result<(), SampleError> {
        let [n, f] = x.dims();
        let [rn, rf] = self.reference.dims();
        let k = self.particles;
        if rf != f
            || !(rn == 1 || rn == n)
            || self.steps.is_empty()
            || !(0.0..=1.0).contains(&self.ess_threshold)
        {
            return Err(SampleError::Invalid(format!(
                "SMC inpainting needs steps, an ESS threshold in [0, 1] and a reference of one row \
                 (or one per sample) of {f} features; got {} steps, threshold {}, reference {:?}",
                self.steps.len(),
                self.ess_threshold,
                self.reference.dims()
            )));
        }
        if k == 0 || n % k != 0 {
            return Err(SampleError::Invalid(format!(
                "the batch of {n} is not a whole number of groups of {k} particles"
            )));
        }
        self.region.validate(n, f)
    }
}

/// Systematic resampling within a group: the particle index of each of the n evenly spaced points
/// (u + i)/n on the cumulative weights.
fn systematic(weights: &[f64], u: f64) -> Vec<i64> {
    let n = weights.len();
    let mut out = Vec::with_capacity(n);
    let (mut cumulative, mut j) = (weights[0], 0);
    for i in 0..n {
        let point = (u + i as f64) / n as f64;
        while point > cumulative && j + 1 < n {
            j += 1;
            cumulative += weights[j];
        }
        out.push(j as i64);
    }
    out
}

/// Normalised weights from log-weights, and their effective sample size 1/Σw².
fn normalise(log_w: &[f64]) -> (Vec<f64>, f64) {
    let max = log_w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = log_w.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = w.iter().sum();
    let w: Vec<f64> = w.into_iter().map(|v| v / total).collect();
    let ess = 1.0 / w.iter().map(|v| v * v).sum::<f64>();
    (w, ess)
}

/// One uniform number on [0, 1) per group from a fresh normal draw: the angle of an isotropic
/// 2-D normal (the first row of each group).
fn uniforms(noise: &mut dyn NoiseSource, n: usize, k: usize) -> Vec<f64> {
    let z = noise.normal(n, 2);
    (0..n / k)
        .map(|g| z[2 * g * k].atan2(z[2 * g * k + 1]) / std::f64::consts::TAU + 0.5)
        .collect()
}

impl SmcInpainting {
    /// Resamples every group whose ESS is below the threshold (all of them with `force`);
    /// returns the rows to keep and resets the resampled groups' log-weights.
    fn resample(&self, log_w: &mut [f64], noise: &mut dyn NoiseSource, force: bool) -> Option<Vec<i64>> {
        let (n, k) = (log_w.len(), self.particles);
        let mut rows: Vec<i64> = (0..n as i64).collect();
        let mut any = false;
        let mut u = None;
        for g in 0..n / k {
            let group = &mut log_w[g * k..(g + 1) * k];
            let (weights, ess) = normalise(group);
            if force || ess < self.ess_threshold * k as f64 {
                let u = u.get_or_insert_with(|| uniforms(noise, n, k));
                for (slot, j) in rows[g * k..(g + 1) * k]
                    .iter_mut()
                    .zip(systematic(&weights, u[g]))
                {
                    *slot = (g * k) as i64 + j;
                }
                group.iter_mut().for_each(|w| *w = 0.0);
                any = true;
            }
        }
        any.then_some(rows)
    }
}

impl Sampler for SmcInpainting {
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// Noise order: the known trajectory (one draw per level); per step a resampling draw
    /// (when some group resamples) and the kernel's draw; a final resampling draw.
    fn sample_observed(
        &self,
        denoiser: &dyn Denoiser,
        x: Tensor<2>,
        noise: &mut dyn NoiseSource,
        observer: Observer<'_>,
    ) -> Result<SampleOutput, SampleError> {
        self.validate(&x)?;
        let counted = Counted::new(denoiser);
        let known = self.known_trajectory(&x, noise);
        let mut x = self.region.merge(x, known[0].clone());
        let mut log_w = vec![0.0; x.dims()[0]];
        for (i, step) in self.steps.iter().enumerate() {
            let level = NoiseLevel::vp(step.alpha_bar).with_timestep(step.timestep);
            let x0 = counted.denoise(x.clone(), level);
            let eps = eps_from_x0(x, x0.clone(), &level);
            let std = step.posterior_variance().sqrt();
            let mut mean = generalized_step(step, x0, eps, std, None);
            if step.add_noise {
                let miss = self
                    .region
                    .project(known[i + 1].clone() - mean.clone())
                    .square()
                    .sum_dim(1);
                for (w, m) in log_w.iter_mut().zip(to_f64(&miss)) {
                    *w -= m / (2.0 * std * std);
                }
                if let Some(rows) = self.resample(&mut log_w, noise, false) {
                    mean = select_rows(mean, rows);
                }
                mean = mean.clone() + noise_like(noise, &mean).mul_scalar(std);
            }
            x = self.region.merge(mean, known[i + 1].clone());
            observer(i, &x);
        }
        if let Some(rows) = self.resample(&mut log_w, noise, true) {
            x = select_rows(x, rows);
        }
        Ok(SampleOutput {
            x,
            nfe: counted.nfe(),
        })
    }
}

fn select_rows(x: Tensor<2>, rows: Vec<i64>) -> Tensor<2> {
    let n = rows.len();
    let index = Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &x.device());
    x.select(0, index)
}
