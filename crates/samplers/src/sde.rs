//! Stochastic differential equations dx = f(x, t) dt + g(t) dw and the Euler–Maruyama
//! scheme (Kloeden & Platen 1992, §9.1), with the reverse-time SDE of the VE process
//! (Song et al. 2021, eq. 6 with Anderson 1982) as a sampler.

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;

use crate::denoiser::{Counted, Denoiser};
use crate::level::NoiseLevel;
use crate::sampler::{Observer, SampleError, SampleOutput, Sampler, noise_like};
use crate::ve::VeGrid;

/// An Itô SDE dx = f(x, t) dt + g(t) dw with scalar diffusion, on a batch `[n, features]`.
pub trait SdeSystem {
    /// The drift f(x, t).
    fn drift(&self, x: Tensor<2>, t: f64) -> Tensor<2>;
    /// The diffusion coefficient g(t).
    fn diffusion(&self, t: f64) -> f64;
}

/// One Euler–Maruyama step from t to t + h (h may be negative for a reverse-time SDE,
/// whose noise then has variance g² |h|): x + f h + g √|h| z.
pub fn euler_maruyama_step(
    system: &dyn SdeSystem,
    x: Tensor<2>,
    t: f64,
    h: f64,
    noise: &mut dyn NoiseSource,
) -> Tensor<2> {
    let z = noise_like(noise, &x);
    let drift = system.drift(x.clone(), t);
    x + drift.mul_scalar(h) + z.mul_scalar(system.diffusion(t) * h.abs().sqrt())
}

/// The reverse-time SDE of x = x₀ + σ n in the time σ (decreasing):
/// dx = −2σ ∇log p dσ + √(2σ) dw̄ = 2 (x − D)/σ dσ + √(2σ) dw̄.
pub struct ReverseVeSde<'a> {
    denoiser: &'a dyn Denoiser,
}

impl<'a> ReverseVeSde<'a> {
    /// The reverse SDE of `denoiser`.
    pub fn new(denoiser: &'a dyn Denoiser) -> Self {
        Self { denoiser }
    }
}

impl SdeSystem for ReverseVeSde<'_> {
    fn drift(&self, x: Tensor<2>, sigma: f64) -> Tensor<2> {
        let d = self.denoiser.denoise(x.clone(), NoiseLevel::ve(sigma));
        (x - d).mul_scalar(2.0 / sigma)
    }

    fn diffusion(&self, sigma: f64) -> f64 {
        (2.0 * sigma).sqrt()
    }
}

/// Euler–Maruyama on the reverse VE SDE over a σ grid; a final step to σ = 0 returns
/// D(x, σ) (the score-SDE "denoise" step). NFE: one per step. Noise: one draw per step to a
/// positive σ.
#[derive(Clone, Debug, PartialEq)]
pub struct EulerMaruyama {
    /// The noise levels.
    pub grid: VeGrid,
}

impl EulerMaruyama {
    /// Euler–Maruyama on `grid`.
    pub fn new(grid: impl Into<VeGrid>) -> Self {
        Self { grid: grid.into() }
    }
}

impl Sampler for EulerMaruyama {
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
        let sde = ReverseVeSde::new(&counted);
        for i in 0..self.grid.steps() {
            let (sigma, next) = (self.grid.sigma(i), self.grid.sigma(i + 1));
            x = if next == 0.0 {
                counted.denoise(x, self.grid.level(i))
            } else {
                euler_maruyama_step(&sde, x, sigma, next - sigma, noise)
            };
            observer(i, &x);
        }
        Ok(SampleOutput {
            x,
            nfe: counted.nfe(),
        })
    }
}
