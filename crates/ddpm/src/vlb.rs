//! The variational bound of Ho et al. 2020, eq. 5:
//! L_vlb = L_T + Σ_{t>1} L_{t−1} + L_0 with L_T = KL(q(x_T | x₀) ‖ N(0, I)),
//! L_{t−1} = KL(q(x_{t−1} | x_t, x₀) ‖ p_θ(x_{t−1} | x_t)) and the decoder term
//! L_0 = −log p_θ(x₀ | x₁), for 8-bit data the discretised Gaussian likelihood of their
//! eq. 13. Terms are in bits per dimension (nats / ln 2, averaged over the data dimensions),
//! which is how papers report NLL (e.g. ≤ 3.70 bits/dim for DDPM on CIFAR-10).

use burn::tensor::Tensor;

use crate::error::{DdpmError, Result};
use crate::forward::ForwardProcess;
use crate::parameterization::Prediction;
use crate::posterior::Posterior;
use crate::variance::{ModelVariance, split_variance_head};

/// The mean over every dimension but the first: `[n, …] → [n]`.
pub fn mean_flat<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    let n = x.dims()[0];
    let per = x.shape().num_elements() / n.max(1);
    x.reshape([n, per]).mean_dim(1).reshape([n])
}

/// KL(N(μ₁, e^{ℓ₁}) ‖ N(μ₂, e^{ℓ₂})) elementwise, in nats:
/// ½ (−1 + ℓ₂ − ℓ₁ + e^{ℓ₁ − ℓ₂} + (μ₁ − μ₂)² e^{−ℓ₂}).
pub fn normal_kl<const D: usize>(
    mean1: Tensor<D>,
    logvar1: Tensor<D>,
    mean2: Tensor<D>,
    logvar2: Tensor<D>,
) -> Tensor<D> {
    let diff = (mean1 - mean2).square();
    (logvar2.clone() - logvar1.clone() + (logvar1 - logvar2.clone()).exp() + diff * logvar2.neg().exp())
        .add_scalar(-1.0)
        .mul_scalar(0.5)
}

/// The standard normal CDF by the tanh approximation
/// ½ (1 + tanh(√(2/π) (x + 0.044715 x³))) that Ho et al.'s and Nichol & Dhariwal's code use
/// (kept so that bits/dim agree with theirs to the digit; it differs from Φ by < 2e-4).
pub fn approx_standard_normal_cdf<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let inner =
        (x.clone() + x.powi_scalar(3).mul_scalar(0.044715)).mul_scalar((2.0 / std::f64::consts::PI).sqrt());
    inner.tanh().add_scalar(1.0).mul_scalar(0.5)
}

/// log p(x) of data on the 8-bit grid of [−1, 1] (bins of width 2/255) under N(μ, e^{2 log_scale}),
/// elementwise in nats; the edge bins extend to ±∞ (Ho et al. 2020, eq. 13).
pub fn discretized_gaussian_log_likelihood<const D: usize>(
    x: Tensor<D>,
    means: Tensor<D>,
    log_scales: Tensor<D>,
) -> Tensor<D> {
    let centered = x.clone() - means;
    let inv_stdv = log_scales.neg().exp();
    let cdf_plus = approx_standard_normal_cdf((centered.clone().add_scalar(1.0 / 255.0)) * inv_stdv.clone());
    let cdf_min = approx_standard_normal_cdf((centered.add_scalar(-1.0 / 255.0)) * inv_stdv);
    let log_cdf_plus = cdf_plus.clone().clamp_min(1e-12).log();
    let log_one_minus_cdf_min = cdf_min.clone().neg().add_scalar(1.0).clamp_min(1e-12).log();
    let log_cdf_delta = (cdf_plus - cdf_min).clamp_min(1e-12).log();
    let below = x.clone().lower_elem(-0.999);
    let above = x.greater_elem(0.999);
    log_cdf_delta
        .mask_where(above, log_one_minus_cdf_min)
        .mask_where(below, log_cdf_plus)
}

/// log N(x; μ, e^{ℓ}) elementwise in nats: the continuous decoder (data not quantised).
pub fn gaussian_log_likelihood<const D: usize>(
    x: Tensor<D>,
    mean: Tensor<D>,
    logvar: Tensor<D>,
) -> Tensor<D> {
    let sq = (x - mean).square() * logvar.clone().neg().exp();
    (sq + logvar)
        .add_scalar((2.0 * std::f64::consts::PI).ln())
        .mul_scalar(-0.5)
}

/// The likelihood of x₀ under p_θ(x₀ | x₁).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decoder {
    /// The discretised Gaussian of 8-bit data in [−1, 1] (Ho et al. 2020, eq. 13).
    #[default]
    Discretized8Bit,
    /// A Gaussian density: continuous data (its bound is on −log p(x₀) in nats, not bits/dim
    /// of a discrete image).
    Gaussian,
}

/// The reverse step the network implies at (x_t, t): its mean, log-variance and x̂₀.
#[derive(Clone, Debug)]
pub struct ReverseStep<const D: usize> {
    /// μ_θ(x_t, t) = μ̃_t(x̂₀, x_t).
    pub mean: Tensor<D>,
    /// ln Σ_θ.
    pub log_variance: Tensor<D>,
    /// x̂₀.
    pub x0: Tensor<D>,
}

/// The bound for a network of a given prediction and variance type on a schedule.
#[derive(Clone, Debug)]
pub struct Vlb {
    /// The forward process.
    pub forward: ForwardProcess,
    /// Its posterior tables.
    pub posterior: Posterior,
    /// What the mean head predicts.
    pub prediction: Prediction,
    /// How the variance is chosen.
    pub variance: ModelVariance,
    /// The decoder likelihood at t = 0.
    pub decoder: Decoder,
}

/// The full bound of a batch, every term per sample in bits per dimension.
#[derive(Clone, Debug)]
pub struct VlbReport {
    /// L_T: KL(q(x_T | x₀) ‖ N(0, I)).
    pub prior: Tensor<1>,
    /// L₀: the decoder term.
    pub decoder: Tensor<1>,
    /// L_t for t = 0 … T−1 (L₀ = `decoder`).
    pub terms: Vec<Tensor<1>>,
    /// Σ_t L_t + L_T.
    pub total: Tensor<1>,
    /// ‖x̂₀ − x₀‖² averaged over dimensions, for t = 0 … T−1.
    pub x0_mse: Vec<Tensor<1>>,
    /// ‖ε̂ − ε‖² averaged over dimensions (ε̂ derived from x̂₀), for t = 0 … T−1.
    pub eps_mse: Vec<Tensor<1>>,
}

impl Vlb {
    /// The bound of `forward` for a network predicting `prediction` with variance `variance`.
    pub fn new(forward: ForwardProcess, prediction: Prediction, variance: ModelVariance) -> Self {
        let posterior = Posterior::new(forward.schedule());
        Self {
            forward,
            posterior,
            prediction,
            variance,
            decoder: Decoder::default(),
        }
    }

    /// The same bound with another decoder.
    pub fn with_decoder(mut self, decoder: Decoder) -> Self {
        self.decoder = decoder;
        self
    }

    /// The reverse step of the network output `out` at (x_t, t) (the variance head, when
    /// learned, is the second half of dimension 1). With `frozen_mean`, gradients flow only
    /// through the variance (Improved DDPM's stop-gradient for the hybrid loss).
    pub fn reverse_step<const D: usize>(
        &self,
        out: Tensor<D>,
        x_t: Tensor<D>,
        t: &[usize],
        frozen_mean: bool,
    ) -> Result<ReverseStep<D>> {
        let (mean_out, head) = if self.variance.is_learned() {
            let (m, v) = split_variance_head(out)?;
            (m, Some(v))
        } else {
            (out, None)
        };
        if mean_out.dims() != x_t.dims() {
            return Err(DdpmError::ShapeMismatch {
                what: "network output (mean part) and x_t",
                left: mean_out.dims().to_vec(),
                right: x_t.dims().to_vec(),
            });
        }
        let mean_out = if frozen_mean { mean_out.detach() } else { mean_out };
        let (alpha, sigma) = self.forward.coefficients(t)?;
        let x0 = self.prediction.to_x0(mean_out, x_t.clone(), &alpha, &sigma);
        let mean = self.posterior.mean(x0.clone(), x_t.clone(), t)?;
        let log_variance = self.variance.log_variance(&self.posterior, t, head, &x_t)?;
        Ok(ReverseStep {
            mean,
            log_variance,
            x0,
        })
    }

    /// L_t per sample in bits per dimension: the decoder term where t = 0, the KL elsewhere.
    pub fn term<const D: usize>(
        &self,
        step: &ReverseStep<D>,
        x0: Tensor<D>,
        x_t: Tensor<D>,
        t: &[usize],
    ) -> Result<Tensor<1>> {
        let ln2 = std::f64::consts::LN_2;
        let true_mean = self.posterior.mean(x0.clone(), x_t, t)?;
        let true_logvar = crate::variance::broadcast(
            self.posterior.gather(&self.posterior.log_variance_clipped, t)?,
            &x0,
        ) + x0.zeros_like();
        let kl = mean_flat(normal_kl(
            true_mean,
            true_logvar,
            step.mean.clone(),
            step.log_variance.clone(),
        ))
        .div_scalar(ln2);
        if t.iter().all(|&ti| ti > 0) {
            return Ok(kl);
        }
        let decoder = self.decoder_nll(x0, step)?;
        if t.iter().all(|&ti| ti == 0) {
            return Ok(decoder);
        }
        let mask = diffusion_core::tensor::from_f64_like(
            t.iter().map(|&ti| f64::from(u8::from(ti == 0))).collect(),
            [t.len()],
            &kl,
        );
        Ok(decoder * mask.clone() + kl * mask.neg().add_scalar(1.0))
    }

    /// −log p_θ(x₀ | x₁) per sample in bits per dimension.
    fn decoder_nll<const D: usize>(&self, x0: Tensor<D>, step: &ReverseStep<D>) -> Result<Tensor<1>> {
        let ll = match self.decoder {
            Decoder::Discretized8Bit => discretized_gaussian_log_likelihood(
                x0,
                step.mean.clone(),
                step.log_variance.clone().mul_scalar(0.5),
            ),
            Decoder::Gaussian => gaussian_log_likelihood(x0, step.mean.clone(), step.log_variance.clone()),
        };
        Ok(mean_flat(ll).neg().div_scalar(std::f64::consts::LN_2))
    }

    /// L_T = KL(q(x_T | x₀) ‖ N(0, I)) per sample in bits per dimension.
    pub fn prior<const D: usize>(&self, x0: Tensor<D>) -> Result<Tensor<1>> {
        let last = self.forward.num_timesteps() - 1;
        let n = x0.dims()[0];
        let (alpha, sigma) = self.forward.coefficients(&vec![last; n])?;
        let mean = diffusion_core::tensor::scale(x0.clone(), &alpha);
        let logvar = x0.zeros_like().add_scalar((sigma[0] * sigma[0]).ln());
        Ok(
            mean_flat(normal_kl(mean, logvar, x0.zeros_like(), x0.zeros_like()))
                .div_scalar(std::f64::consts::LN_2),
        )
    }

    /// The whole bound of a batch over all T terms (Ho et al. 2020, eq. 5): for each t, from
    /// T−1 down to 0, x_t = q(x_t | x₀) with `noise(t)`, one network call, and L_t; plus L_T.
    pub fn evaluate<const D: usize>(
        &self,
        model: impl Fn(Tensor<D>, Tensor<1>) -> Tensor<D>,
        x0: Tensor<D>,
        mut noise: impl FnMut(usize) -> Tensor<D>,
    ) -> Result<VlbReport> {
        let n = x0.dims()[0];
        let t_len = self.forward.num_timesteps();
        let mut terms = vec![None; t_len];
        let mut x0_mse = vec![None; t_len];
        let mut eps_mse = vec![None; t_len];
        for t in (0..t_len).rev() {
            let ts = vec![t; n];
            let eps = noise(t);
            let x_t = self.forward.sample(x0.clone(), eps.clone(), &ts)?;
            let t_tensor = diffusion_core::tensor::from_f64_like(vec![t as f64; n], [n], &x0);
            let step = self.reverse_step(model(x_t.clone(), t_tensor), x_t.clone(), &ts, false)?;
            terms[t] = Some(self.term(&step, x0.clone(), x_t.clone(), &ts)?);
            let (alpha, sigma) = self.forward.coefficients(&ts)?;
            let eps_hat = Prediction::Epsilon.from_x0(step.x0.clone(), x_t, &alpha, &sigma);
            x0_mse[t] = Some(mean_flat((step.x0 - x0.clone()).square()));
            eps_mse[t] = Some(mean_flat((eps_hat - eps).square()));
        }
        let visited = |v: Vec<Option<Tensor<1>>>| {
            v.into_iter()
                .map(|t| t.expect("every t visited"))
                .collect::<Vec<_>>()
        };
        let terms = visited(terms);
        let prior = self.prior(x0)?;
        let total = terms.iter().cloned().fold(prior.clone(), |acc, t| acc + t);
        Ok(VlbReport {
            decoder: terms[0].clone(),
            prior,
            terms,
            total,
            x0_mse: visited(x0_mse),
            eps_mse: visited(eps_mse),
        })
    }
}
