//! The one interface every sampler is written against: a denoiser D(x, σ) ≈ E[x₀ | x].
//!
//! By Tweedie's formula the denoiser, the score ∇ log p(x) = (α D − x)/σ², the noise
//! prediction and the velocity are one object seen four ways (Karras et al. 2022, eq. 3;
//! Efron 2011). So a model is wrapped once as a [`Denoiser`], whatever it predicts, and any
//! sampler samples from it.

use std::cell::Cell;

use burn::tensor::Tensor;
use diffusion_core::tensor::from_f64_like;
use diffusion_ddpm::{Prediction, X0Clip};
use diffusion_schedules::DiscreteSchedule;

use crate::level::NoiseLevel;

/// A denoiser: the estimate of x₀ from x = α x₀ + σ ε.
///
/// `x` is a batch of flattened samples `[n, features]` (see
/// [`flatten_batch`](diffusion_core::tensor::flatten_batch)); the result has the same shape.
pub trait Denoiser {
    /// E[x₀ | x] at the noise level `level`.
    fn denoise(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2>;

    /// The estimate together with, for a network that learns its reverse-step variance
    /// (Improved DDPM), the raw output of its variance head — from one evaluation.
    fn denoise_with_variance(&self, x: Tensor<2>, level: NoiseLevel) -> (Tensor<2>, Option<Tensor<2>>) {
        (self.denoise(x, level), None)
    }
}

impl<T: Denoiser + ?Sized> Denoiser for &T {
    fn denoise(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2> {
        (**self).denoise(x, level)
    }
    fn denoise_with_variance(&self, x: Tensor<2>, level: NoiseLevel) -> (Tensor<2>, Option<Tensor<2>>) {
        (**self).denoise_with_variance(x, level)
    }
}

impl<T: Denoiser + ?Sized> Denoiser for Box<T> {
    fn denoise(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2> {
        (**self).denoise(x, level)
    }
    fn denoise_with_variance(&self, x: Tensor<2>, level: NoiseLevel) -> (Tensor<2>, Option<Tensor<2>>) {
        (**self).denoise_with_variance(x, level)
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
    fn denoise_with_variance(&self, x: Tensor<2>, level: NoiseLevel) -> (Tensor<2>, Option<Tensor<2>>) {
        self.calls.set(self.calls.get() + 1);
        self.inner.denoise_with_variance(x, level)
    }
}

/// A denoiser whose estimate is kept in range: clipped (diffusers' `clip_sample`) or
/// dynamically thresholded (`thresholding`).
pub struct Clipped<'a> {
    inner: &'a dyn Denoiser,
    clip: X0Clip,
}

impl<'a> Clipped<'a> {
    /// Keeps the estimates of `inner` in range by `clip`.
    pub fn new(inner: &'a dyn Denoiser, clip: X0Clip) -> Self {
        Self { inner, clip }
    }
}

impl Denoiser for Clipped<'_> {
    fn denoise(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2> {
        self.clip.apply(self.inner.denoise(x, level))
    }
    fn denoise_with_variance(&self, x: Tensor<2>, level: NoiseLevel) -> (Tensor<2>, Option<Tensor<2>>) {
        let (x0, head) = self.inner.denoise_with_variance(x, level);
        (self.clip.apply(x0), head)
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
    learned_variance: bool,
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
            learned_variance: false,
        }
    }

    /// The network also outputs a variance head: its output is `[n, 2F]`, the prediction
    /// first and the variance values second (channel-first flattening of `[n, 2C, …]`).
    pub fn with_learned_variance(mut self) -> Self {
        self.learned_variance = true;
        self
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
        model_timestep(&self.schedule, level, self.quantize)
    }
}

impl<F> Denoiser for DiscreteModel<F>
where
    F: Fn(Tensor<2>, Tensor<1>) -> Tensor<2>,
{
    fn denoise(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2> {
        self.denoise_with_variance(x, level).0
    }

    fn denoise_with_variance(&self, x: Tensor<2>, level: NoiseLevel) -> (Tensor<2>, Option<Tensor<2>>) {
        let vp = level.to_vp();
        let t = self.timestep(&level);
        let [n, f] = x.dims();
        let x_t = x.div_scalar(level.scale());
        let t_tensor = from_f64_like(vec![t; n], [n], &x_t);
        let out = (self.model)(x_t.clone(), t_tensor);
        let (mean, head) = if self.learned_variance {
            (out.clone().narrow(1, 0, f), Some(out.narrow(1, f, f)))
        } else {
            (out, None)
        };
        (self.prediction.to_x0(mean, x_t, &[vp.alpha], &[vp.sigma]), head)
    }
}

/// The timestep at which a network trained on `schedule` is evaluated for `level`: the
/// sampler's own where it names one, else recovered from σ/α by interpolation in log σ
/// (rounded to the nearest training timestep with `quantize`).
pub fn model_timestep(schedule: &DiscreteSchedule, level: &NoiseLevel, quantize: bool) -> f64 {
    match level.timestep {
        Some(t) => t,
        None if quantize => schedule.sigma_to_t_quantized(level.ve_sigma()) as f64,
        None => schedule.sigma_to_t(level.ve_sigma()),
    }
}

/// The noise estimate ε̂ = (x − α D)/σ of a denoised sample.
pub fn eps_from_x0(x: Tensor<2>, x0: Tensor<2>, level: &NoiseLevel) -> Tensor<2> {
    (x - x0.mul_scalar(level.alpha)).div_scalar(level.sigma)
}
