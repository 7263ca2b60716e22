//! Langevin dynamics (Parisi 1981; Grenander & Miller 1994) and NCSN's annealed Langevin
//! dynamics (Song & Ermon 2019, Algorithm 1), which runs it at a ladder of decreasing noise
//! levels σ₁ > … > σ_L with step α_i = ε σ_i²/σ_L², and the final denoising step of NCSNv2
//! (Song & Ermon 2020, §4.3 / Appendix C.2), x ← x + σ_L² s(x, σ_L) = D(x, σ_L).
//!
//! The update is x ← x + α_i s(x, σ_i) + √(2α_i) z, as in NCSNv2's Algorithm 1 and in the
//! released code of both papers (NCSN's Algorithm 1 prints x + (α/2) s + √α z, but its
//! ε = 2·10⁻⁵ was tuned with the code's form, which is what we reproduce).

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;
use diffusion_core::tensor::scale;
use diffusion_samplers::{Counted, Denoiser, NoiseLevel, Observer, SampleError, SampleOutput, Sampler};

/// One Langevin update with step ε (per sample or shared):
/// x̄ = x + ε ∇ₓ log p(x), x′ = x̄ + √(2ε) z. Returns (x′, x̄).
///
/// NCSN's annealed step uses ε = α_i.
pub fn langevin_update(x: Tensor<2>, score: Tensor<2>, step: &[f64], z: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let noise_scale: Vec<f64> = step.iter().map(|s| (2.0 * s).sqrt()).collect();
    let mean = x + scale(score, step);
    (mean.clone() + scale(z, &noise_scale), mean)
}

/// The score of a denoiser at the VE level σ (Tweedie): s = (D(x, σ) − x)/σ².
pub fn ve_score(denoiser: &dyn Denoiser, x: Tensor<2>, sigma: f64) -> Tensor<2> {
    let d = denoiser.denoise(x.clone(), NoiseLevel::ve(sigma));
    (d - x).div_scalar(sigma * sigma)
}

/// Unadjusted Langevin dynamics at a fixed density: `steps` updates of step ε.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LangevinDynamics {
    /// The step ε (x + ε s + √(2ε) z).
    pub step: f64,
    /// The number of updates.
    pub steps: usize,
}

impl LangevinDynamics {
    /// Runs the chain from `x` with the score function `score`; one noise draw per update.
    pub fn run(
        &self,
        score: &dyn Fn(Tensor<2>) -> Tensor<2>,
        mut x: Tensor<2>,
        noise: &mut dyn NoiseSource,
    ) -> Tensor<2> {
        for _ in 0..self.steps {
            let [n, f] = x.dims();
            let z = noise.normal_tensor(n, f, &x.device(), x.dtype());
            let s = score(x.clone());
            x = langevin_update(x, s, &[self.step], z).0;
        }
        x
    }
}

/// The NCSN noise ladder: L levels spaced geometrically from σ₁ down to σ_L.
pub fn geometric_sigmas(sigma_max: f64, sigma_min: f64, levels: usize) -> Vec<f64> {
    diffusion_schedules::numeric::linspace_numpy(sigma_max.ln(), sigma_min.ln(), levels)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// Annealed Langevin dynamics over a decreasing ladder of noise levels.
///
/// NFE: `steps_per_level` per level, plus one for the final denoising. Noise: one draw per
/// update.
#[derive(Clone, Debug, PartialEq)]
pub struct AnnealedLangevin {
    /// σ₁ > σ₂ > … > σ_L.
    pub sigmas: Vec<f64>,
    /// T, the updates per level.
    pub steps_per_level: usize,
    /// ε, the step at σ_L: α_i = ε σ_i²/σ_L².
    pub step_lr: f64,
    /// Finish with x ← D(x, σ_L) (NCSNv2's denoising).
    pub denoise: bool,
}

impl AnnealedLangevin {
    /// NCSN's setting (Song & Ermon 2019, §5): T = 100, ε = 2·10⁻⁵, no final denoising.
    pub fn ncsn(sigmas: Vec<f64>) -> Self {
        Self {
            sigmas,
            steps_per_level: 100,
            step_lr: 2e-5,
            denoise: false,
        }
    }

    /// NCSNv2's setting (Song & Ermon 2020, Appendix B.1; CIFAR-10: T = 5, ε = 6.2·10⁻⁶ with
    /// σ₁ = 50, L = 232), with the final denoising step.
    pub fn ncsnv2(sigmas: Vec<f64>, steps_per_level: usize, step_lr: f64) -> Self {
        Self {
            sigmas,
            steps_per_level,
            step_lr,
            denoise: true,
        }
    }

    /// α_i = ε σ_i²/σ_L² of level i.
    pub fn alpha(&self, level: usize) -> f64 {
        let last = self.sigmas[self.sigmas.len() - 1];
        self.step_lr * (self.sigmas[level] / last).powi(2)
    }

    /// Checks the ladder (positive, finite, strictly decreasing) and the step ε (positive).
    pub fn validate(&self) -> Result<(), SampleError> {
        if self.sigmas.is_empty() || self.sigmas.iter().any(|s| !(*s > 0.0 && s.is_finite())) {
            return Err(SampleError::Invalid(format!(
                "annealed Langevin needs positive, finite noise levels, got {:?}",
                self.sigmas
            )));
        }
        if self.sigmas.windows(2).any(|w| w[1] >= w[0]) {
            return Err(SampleError::Invalid(
                "annealed Langevin needs strictly decreasing noise levels".into(),
            ));
        }
        if self.step_lr.is_nan() || self.step_lr <= 0.0 {
            return Err(SampleError::Invalid(format!(
                "the step ε must be positive, got {}",
                self.step_lr
            )));
        }
        Ok(())
    }
}

impl Sampler for AnnealedLangevin {
    /// σ₁ (NCSN starts from uniform noise; any start works, this one is the natural prior).
    fn init_noise_sigma(&self) -> f64 {
        self.sigmas.first().copied().unwrap_or(1.0)
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
        let mut step = 0;
        for (level, &sigma) in self.sigmas.iter().enumerate() {
            let epsilon = self.alpha(level);
            for _ in 0..self.steps_per_level {
                let [n, f] = x.dims();
                let z = noise.normal_tensor(n, f, &x.device(), x.dtype());
                let s = ve_score(&counted, x.clone(), sigma);
                x = langevin_update(x, s, &[epsilon], z).0;
                observer(step, &x);
                step += 1;
            }
        }
        if self.denoise {
            let last = self.sigmas[self.sigmas.len() - 1];
            x = counted.denoise(x, NoiseLevel::ve(last));
            observer(step, &x);
        }
        Ok(SampleOutput {
            x,
            nfe: counted.nfe(),
        })
    }
}
