//! Guidance as denoisers, so that every sampler can use it.
//!
//! - Classifier guidance (Dhariwal & Nichol 2021, eq. 12 in score form): the conditional score
//!   ∇ log p(x | c) = ∇ log p(x) + ∇ log p(c | x), scaled by s; through Tweedie's formula
//!   D(x) = (x + σ² ∇ log p(x))/α this is D_s(x) = D(x) + s (σ²/α) ∇ₓ log p(c | x).
//! - Classifier-free guidance (Ho & Salimans 2022): D_w = D_u + w (D_c − D_u), where D_u is the
//!   unconditional model or, for negative prompting, the model under the negative condition;
//!   with guidance rescale (Lin et al. 2024, eq. 15–16: the guided ε is rescaled to the per-sample
//!   standard deviation of the conditional ε and blended by φ) and a guidance interval in σ
//!   (Kynkäänniemi et al. 2024: outside it the conditional model is used alone).

use burn::tensor::Tensor;

use crate::denoiser::{Denoiser, eps_from_x0};
use crate::level::NoiseLevel;

/// Classifier guidance: a base denoiser plus s (σ²/α) ∇ₓ log p(c | x).
pub struct ClassifierGuidance<D, G> {
    /// The unconditional denoiser.
    pub base: D,
    /// ∇ₓ log p(c | x) at a noise level (a noise-conditional classifier's gradient), `[n, d]`.
    pub grad_log_p: G,
    /// The guidance scale s (an inverse temperature of the classifier; 1: the exact
    /// conditional model when the classifier is exact).
    pub scale: f64,
}

impl<D, G> Denoiser for ClassifierGuidance<D, G>
where
    D: Denoiser,
    G: Fn(Tensor<2>, NoiseLevel) -> Tensor<2>,
{
    fn denoise(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2> {
        let base = self.base.denoise(x.clone(), level);
        let grad = (self.grad_log_p)(x, level);
        base + grad.mul_scalar(self.scale * level.sigma * level.sigma / level.alpha)
    }
}

/// Classifier-free guidance of a conditional denoiser against an unconditional (or
/// negative-condition) one.
pub struct ClassifierFree<C, U> {
    /// The conditional denoiser D_c.
    pub cond: C,
    /// The unconditional denoiser D_u, or the model under the negative condition.
    pub uncond: U,
    /// The guidance weight w (1: D_c; 0: D_u).
    pub scale: f64,
    /// φ of guidance rescale (0: none; Lin et al. use 0.7).
    pub rescale: f64,
    /// Guide only for VE noise levels σ/α in [low, high]; elsewhere D_c alone.
    pub interval: Option<(f64, f64)>,
}

impl<C, U> ClassifierFree<C, U> {
    /// Plain classifier-free guidance with weight `scale`.
    pub fn new(cond: C, uncond: U, scale: f64) -> Self {
        Self {
            cond,
            uncond,
            scale,
            rescale: 0.0,
            interval: None,
        }
    }
}

/// The per-sample standard deviation over features (with Bessel's correction, as torch's
/// `std`), `[n, 1]`.
fn row_std(x: Tensor<2>) -> Tensor<2> {
    let [_, f] = x.dims();
    let centred = x.clone() - x.mean_dim(1);
    (centred.square().sum_dim(1).div_scalar((f.max(2) - 1) as f64)).sqrt()
}

impl<C: Denoiser, U: Denoiser> Denoiser for ClassifierFree<C, U> {
    fn denoise(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2> {
        let cond = self.cond.denoise(x.clone(), level);
        let sigma = level.ve_sigma();
        if self.interval.is_some_and(|(lo, hi)| !(lo..=hi).contains(&sigma)) {
            return cond;
        }
        let uncond = self.uncond.denoise(x.clone(), level);
        let guided = uncond.clone() + (cond.clone() - uncond).mul_scalar(self.scale);
        if self.rescale == 0.0 {
            return guided;
        }
        // In ε space, as the method is defined: ε_r = ε_g · std(ε_c)/std(ε_g), blended by φ.
        let eps_g = eps_from_x0(x.clone(), guided, &level);
        let eps_c = eps_from_x0(x.clone(), cond, &level);
        let eps_r = eps_g.clone() * (row_std(eps_c) / row_std(eps_g.clone()));
        let eps = eps_r.mul_scalar(self.rescale) + eps_g.mul_scalar(1.0 - self.rescale);
        (x - eps.mul_scalar(level.sigma)).div_scalar(level.alpha)
    }
}

/// Classifier-free guidance of a class-conditional network in one forward pass: the batch is
/// doubled (each row with its label, then with the null label), and the first `guided`
/// output features become ε_u + w (ε_c − ε_u); the rest (a learned-variance head) are taken
/// from the conditional half. As ε ↦ D is affine at a fixed (x, σ), this equals
/// [`ClassifierFree`] on the two denoisers. Returns the network closure a
/// [`DiscreteModel`](crate::DiscreteModel) wraps.
pub fn batched_cfg<'a, F>(
    net: F,
    labels: Tensor<1, burn::tensor::Int>,
    null_label: i64,
    scale: f64,
    guided: usize,
) -> impl Fn(Tensor<2>, Tensor<1>) -> Tensor<2> + 'a
where
    F: Fn(Tensor<2>, Tensor<1>, Tensor<1, burn::tensor::Int>) -> Tensor<2> + 'a,
{
    move |x: Tensor<2>, t: Tensor<1>| {
        let [n, _] = x.dims();
        let null = labels.clone().zeros_like().add_scalar(null_label);
        let out = net(
            Tensor::cat(vec![x.clone(), x], 0),
            Tensor::cat(vec![t.clone(), t], 0),
            Tensor::cat(vec![labels.clone(), null], 0),
        );
        let f = out.dims()[1];
        let cond = out.clone().narrow(0, 0, n);
        let uncond = out.narrow(0, n, n);
        let g = guided.min(f);
        let guided_part = uncond.clone().narrow(1, 0, g)
            + (cond.clone().narrow(1, 0, g) - uncond.narrow(1, 0, g)).mul_scalar(scale);
        if g == f {
            guided_part
        } else {
            Tensor::cat(vec![guided_part, cond.narrow(1, g, f - g)], 1)
        }
    }
}

/// A noise-conditional classifier p_φ(c | x_t, t) trained on a discrete VP schedule (Dhariwal &
/// Nichol 2021, §4.1; trained with `diffusion_ddpm::NoisyClassifierLoss`), called as
/// `net(x_t, t) → logits [n, classes]`, and the labels to guide towards. Its
/// [`grad_log_prob`](Self::grad_log_prob) is the `grad_log_p` of [`ClassifierGuidance`].
/// The network's parameters must live on an autodiff device (`device.autodiff()`), as the
/// gradient is taken by reverse mode.
pub struct NoisyClassifier<F> {
    /// The classifier network.
    pub net: F,
    /// The schedule it was trained on (for the timestep of a noise level).
    pub schedule: diffusion_schedules::DiscreteSchedule,
    /// The label of each sample (cycled over the batch: one label guides every sample).
    pub labels: Vec<usize>,
}

impl<F> NoisyClassifier<F>
where
    F: Fn(Tensor<2>, Tensor<1>) -> Tensor<2>,
{
    /// log p_φ(c | x) for every class, `[n, classes]`, at the samples `x` of `level` (in the
    /// level's coordinates, x = s·x_t).
    pub fn log_probs(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2> {
        let [n, _] = x.dims();
        let t = crate::denoiser::model_timestep(&self.schedule, &level, false);
        let t = diffusion_core::tensor::from_f64_like(vec![t; n], [n], &x);
        burn::tensor::activation::log_softmax((self.net)(x.div_scalar(level.scale()), t), 1)
    }

    /// ∇ₓ log p_φ(cᵢ | xᵢ) for each sample's label, `[n, d]`, by one reverse pass.
    pub fn grad_log_prob(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2> {
        grad_log_prob_of(|x| self.log_probs(x, level), x, &self.labels)
    }
}

/// ∇ₓ log p(cᵢ | xᵢ), `[n, d]`, of any classifier given as its table of log-probabilities
/// `log_probs(x) → [n, classes]`, by one reverse pass at a leaf copy of x; labels cycle over
/// the batch (one label guides every sample).
pub fn grad_log_prob_of(
    log_probs: impl Fn(Tensor<2>) -> Tensor<2>,
    x: Tensor<2>,
    labels: &[usize],
) -> Tensor<2> {
    let input = x.clone().without_autodiff().autodiff().require_grad();
    let table = log_probs(input.clone());
    let [n, classes] = table.dims();
    let picked = one_hot(labels, n, classes, &table);
    let grads = (table * picked).sum().backward();
    input.grad(&grads).unwrap_or_else(|| x.zeros_like())
}

/// Row i is the indicator of `labels[i % len]`, `[n, classes]`, like `like`.
fn one_hot(labels: &[usize], n: usize, classes: usize, like: &Tensor<2>) -> Tensor<2> {
    let values: Vec<f64> = (0..n)
        .flat_map(|i| (0..classes).map(move |k| (i, k)))
        .map(|(i, k)| f64::from(u8::from(!labels.is_empty() && labels[i % labels.len()] == k)))
        .collect();
    diffusion_core::tensor::from_f64_like(values, [n, classes], like)
}
