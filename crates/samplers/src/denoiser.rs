//! The one interface every sampler is written against: a denoiser D(x, σ) ≈ E[x₀ | x].
//!
//! By Tweedie's formula the denoiser, the score ∇ log p(x) = (α D − x)/σ², the noise
//! prediction and the velocity are one object seen four ways (Karras et al. 2022, eq. 3;
//! Efron 2011). So a model is wrapped once as a [`Denoiser`], whatever it predicts, and any
//! sampler samples from it.

use std::cell::Cell;

use burn::tensor::Tensor;
use diffusion_core::tensor::from_f64_like;
use diffusion_ddpm::Prediction;
use diffusion_schedules::DiscreteSchedule;

use crate::level::NoiseLevel;

/// A denoiser: the estimate of x₀ from x = α x₀ + σ ε.
///
/// `x` is a batch of flattened samples `[n, features]` (see
/// [`flatten_batch`](diffusion_core::tensor::flatten_batch)); the result has the same shape.
pub trait Denoiser {
    /// E[x₀ | x] at the noise level `level`.
    fn denoise(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2>;
}

impl<T: Denoiser + ?Sized> Denoiser for &T {
    fn denoise(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2> {
        (**self).denoise(x, level)
    }
}

impl<T: Denoiser + ?Sized> Denoiser for Box<T> {
    fn denoise(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2> {
        (**self).denoise(x, level)
    }
}

/// A denoiser that counts its evaluations (the NFE every sampler reports).
pub struct Counted<'a> {
    inner: &'a dyn Denoiser,
    calls: Cell<usize>,
}

impl<'a> Counted<'a> {
    /// Counts the calls made to `inner`.
    pub fn new(inner: &'a dyn Denoiser) -> Self {
        Self {
            inner,
            calls: Cell::new(0),
        }
    }

    /// The number of evaluations so far.
    pub fn nfe(&self) -> usize {
        self.calls.get()
    }
}

impl Denoiser for Counted<'_> {
    fn denoise(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2> {
        self.calls.set(self.calls.get() + 1);
        self.inner.denoise(x, level)
    }
}

/// A denoiser whose estimate is clamped to [−c, c] (diffusers' `clip_sample`).
pub struct Clipped<'a> {
    inner: &'a dyn Denoiser,
    range: f64,
}

impl<'a> Clipped<'a> {
    /// Clamps the estimates of `inner` to [−range, range].
    pub fn new(inner: &'a dyn Denoiser, range: f64) -> Self {
        Self { inner, range }
    }
}

impl Denoiser for Clipped<'_> {
    fn denoise(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2> {
        self.inner.denoise(x, level).clamp(-self.range, self.range)
    }
}

/// A network trained on a discrete VP schedule, called as `model(x_t, t)` with the
/// VP-scaled input x_t = √ᾱ x₀ + √(1 − ᾱ) ε and the (possibly fractional) timestep t,
/// seen as a denoiser.
///
/// The timestep is the sampler's own where it names one ([`NoiseLevel::timestep`]);
/// otherwise it is recovered from σ/α by interpolation in log σ (k-diffusion's
/// `DiscreteEpsDDPMDenoiser`), or rounded to the nearest timestep with `quantize`.
pub struct DiscreteModel<F> {
    model: F,
    schedule: DiscreteSchedule,
    prediction: Prediction,
    quantize: bool,
}

impl<F> DiscreteModel<F>
where
    F: Fn(Tensor<2>, Tensor<1>) -> Tensor<2>,
{
    /// Wraps `model`, which predicts `prediction` on `schedule`.
    pub fn new(model: F, schedule: DiscreteSchedule, prediction: Prediction) -> Self {
        Self {
            model,
            schedule,
            prediction,
            quantize: false,
        }
    }

    /// Rounds recovered timesteps to the nearest training timestep.
    pub fn quantized(mut self, quantize: bool) -> Self {
        self.quantize = quantize;
        self
    }

    /// The schedule the model was trained on.
    pub fn schedule(&self) -> &DiscreteSchedule {
        &self.schedule
    }

    /// The timestep the model is evaluated at for `level`.
    pub fn timestep(&self, level: &NoiseLevel) -> f64 {
        match level.timestep {
            Some(t) => t,
            None if self.quantize => self.schedule.sigma_to_t_quantized(level.ve_sigma()) as f64,
            None => self.schedule.sigma_to_t(level.ve_sigma()),
        }
    }
}

impl<F> Denoiser for DiscreteModel<F>
where
    F: Fn(Tensor<2>, Tensor<1>) -> Tensor<2>,
{
    fn denoise(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2> {
        let vp = level.to_vp();
        let t = self.timestep(&level);
        let n = x.dims()[0];
        let x_t = x.div_scalar(level.scale());
        let t_tensor = from_f64_like(vec![t; n], [n], &x_t);
        let out = (self.model)(x_t.clone(), t_tensor);
        self.prediction.to_x0(out, x_t, &[vp.alpha], &[vp.sigma])
    }
}

/// The noise estimate ε̂ = (x − α D)/σ of a denoised sample.
pub fn eps_from_x0(x: Tensor<2>, x0: Tensor<2>, level: &NoiseLevel) -> Tensor<2> {
    (x - x0.mul_scalar(level.alpha)).div_scalar(level.sigma)
}
