//! The simple DDPM objective, L_simple (Ho et al. 2020, eq. 14): the mean squared error
//! between the network's output at x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε and its target (ε, x₀ or v).

use burn::tensor::Tensor;

use crate::error::{DdpmError, Result};
use crate::forward::ForwardProcess;
use crate::parameterization::Prediction;

/// Mean squared error over every element: ‖a − b‖² / numel.
pub fn mse<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Result<Tensor<1>> {
    check_same(&a, &b)?;
    Ok((a - b).square().mean())
}

/// Squared error averaged within each sample: `[n]`.
pub fn per_sample_mse<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Result<Tensor<1>> {
    check_same(&a, &b)?;
    let n = a.dims()[0];
    let diff = (a - b).square();
    let features = diff.shape().num_elements() / n.max(1);
    Ok(diff.reshape([n, features]).mean_dim(1).reshape([n]))
}

fn check_same<const D: usize>(a: &Tensor<D>, b: &Tensor<D>) -> Result<()> {
    if a.dims() != b.dims() {
        return Err(DdpmError::ShapeMismatch {
            what: "model output and target",
            left: a.dims().to_vec(),
            right: b.dims().to_vec(),
        });
    }
    Ok(())
}

/// L_simple for any network: draw x_t in closed form, ask the network for its prediction at
/// (x_t, t), and compare it with the target of the prediction type.
#[derive(Clone, Debug)]
pub struct SimpleLoss {
    /// The forward process.
    pub forward: ForwardProcess,
    /// What the network predicts.
    pub prediction: Prediction,
}

impl SimpleLoss {
    /// L_simple of a schedule and a prediction type.
    pub fn new(forward: ForwardProcess, prediction: Prediction) -> Self {
        Self { forward, prediction }
    }

    /// The loss of one batch: `x0` clean samples, `t` one timestep per sample, `noise` the ε
    /// of each sample. `model(x_t, t)` receives the timesteps as floats on x₀'s device.
    pub fn loss<const D: usize>(
        &self,
        model: impl FnOnce(Tensor<D>, Tensor<1>) -> Tensor<D>,
        x0: Tensor<D>,
        t: &[usize],
        noise: Tensor<D>,
    ) -> Result<Tensor<1>> {
        let x_t = self.forward.sample(x0.clone(), noise.clone(), t)?;
        let (alpha, sigma) = self.forward.coefficients(t)?;
        let t_float: Vec<f64> = t.iter().map(|&ti| ti as f64).collect();
        let t_tensor = diffusion_core::tensor::from_f64_like(t_float, [t.len()], &x0);
        let out = model(x_t, t_tensor);
        let target = self.prediction.target(x0, noise, &alpha, &sigma);
        mse(out, target)
    }
}

/// What a DDPM is trained to minimise.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LossType {
    /// The (weighted) squared error on the prediction target: L_simple.
    Simple,
    /// L_simple + λ L_vlb (Nichol & Dhariwal 2021, eq. 16; λ = 0.001), the bound estimated as
    /// T · L_t at the sampled t, its mean frozen (stop-gradient) so that it trains only the
    /// variance.
    Hybrid {
        /// λ.
        lambda: f64,
    },
    /// The bound alone, T · L_t in bits/dim (an unbiased estimate of L_vlb with uniform t).
    Vlb,
}

/// The per-sample terms of a DDPM loss (each `[n]`).
#[derive(Clone, Debug)]
pub struct LossTerms {
    /// The loss to minimise.
    pub loss: Tensor<1>,
    /// The weighted squared error, when the loss has one.
    pub mse: Option<Tensor<1>>,
    /// L_t in bits per dimension (unscaled), when the loss has one.
    pub vb: Option<Tensor<1>>,
}

/// Every DDPM objective over one batch: L_simple with a weighting, the hybrid loss and
/// the bound, for a network of any prediction and variance type.
#[derive(Clone, Debug)]
pub struct DdpmLoss {
    /// The bound (forward process, posterior, prediction and variance types, decoder).
    pub vlb: crate::vlb::Vlb,
    /// The objective.
    pub loss_type: LossType,
    /// The weighting of the squared error.
    pub weighting: crate::weighting::Weighting,
}

impl DdpmLoss {
    /// L_simple for `prediction` with fixed-small variance and uniform weighting.
    pub fn simple(forward: ForwardProcess, prediction: Prediction) -> Self {
        Self {
            vlb: crate::vlb::Vlb::new(forward, prediction, crate::variance::ModelVariance::FixedSmall),
            loss_type: LossType::Simple,
            weighting: crate::weighting::Weighting::Uniform,
        }
    }

    /// Improved DDPM's hybrid objective: ε prediction, learned-range variance, λ = 0.001.
    pub fn improved(forward: ForwardProcess) -> Self {
        Self {
            vlb: crate::vlb::Vlb::new(
                forward,
                Prediction::Epsilon,
                crate::variance::ModelVariance::LearnedRange,
            ),
            loss_type: LossType::Hybrid { lambda: 0.001 },
            weighting: crate::weighting::Weighting::Uniform,
        }
    }

    /// The terms of one batch: `x0` clean samples, `t` one timestep per sample, `noise` the ε
    /// of each sample; `model(x_t, t)` returns the prediction (with the variance head as the
    /// second half of dimension 1 when the variance is learned).
    pub fn terms<const D: usize>(
        &self,
        model: impl FnOnce(Tensor<D>, Tensor<1>) -> Tensor<D>,
        x0: Tensor<D>,
        t: &[usize],
        noise: Tensor<D>,
    ) -> Result<LossTerms> {
        let forward = &self.vlb.forward;
        let x_t = forward.sample(x0.clone(), noise.clone(), t)?;
        let t_tensor =
            diffusion_core::tensor::from_f64_like(t.iter().map(|&ti| ti as f64).collect(), [t.len()], &x0);
        let out = model(x_t.clone(), t_tensor);
        let (mean_out, full) = if self.vlb.variance.is_learned() {
            let (m, _) = crate::variance::split_variance_head(out.clone())?;
            (m, out)
        } else {
            (out.clone(), out)
        };
        let (alpha, sigma) = forward.coefficients(t)?;
        let prediction = self.vlb.prediction;
        let mse = if self.loss_type == LossType::Vlb {
            None
        } else {
            let target = prediction.target(x0.clone(), noise, &alpha, &sigma);
            let weights: Vec<f64> = alpha
                .iter()
                .zip(&sigma)
                .map(|(a, s)| self.weighting.weight(prediction, a * a / (s * s)))
                .collect();
            Some(diffusion_core::tensor::scale(
                per_sample_mse(mean_out, target)?,
                &weights,
            ))
        };
        let vb = match self.loss_type {
            LossType::Simple => None,
            LossType::Hybrid { .. } | LossType::Vlb => {
                let frozen = matches!(self.loss_type, LossType::Hybrid { .. });
                let step = self.vlb.reverse_step(full, x_t.clone(), t, frozen)?;
                Some(self.vlb.term(&step, x0, x_t, t)?)
            }
        };
        let t_len = forward.num_timesteps() as f64;
        let loss = match (self.loss_type, &mse, &vb) {
            (LossType::Simple, Some(m), _) => m.clone(),
            (LossType::Hybrid { lambda }, Some(m), Some(v)) => {
                m.clone() + v.clone().mul_scalar(lambda * t_len)
            }
            (LossType::Vlb, _, Some(v)) => v.clone().mul_scalar(t_len),
            _ => unreachable!("every loss type has its terms"),
        };
        Ok(LossTerms { loss, mse, vb })
    }

    /// The mean loss of a batch, each sample weighted by `importance` (the 1/(T p_t) of a
    /// non-uniform timestep sampler; `None` for uniform sampling).
    pub fn loss<const D: usize>(
        &self,
        model: impl FnOnce(Tensor<D>, Tensor<1>) -> Tensor<D>,
        x0: Tensor<D>,
        t: &[usize],
        noise: Tensor<D>,
        importance: Option<&[f64]>,
    ) -> Result<Tensor<1>> {
        let terms = self.terms(model, x0, t, noise)?;
        let per_sample = match importance {
            Some(w) => diffusion_core::tensor::scale(terms.loss, w),
            None => terms.loss,
        };
        Ok(per_sample.mean())
    }
}

/// Offset noise (Guttenberg 2023): ε + s δ with δ ~ N(0, 1) shared by every element of a
/// channel of a sample — `offsets` is `[n, C]` (one per channel) or `[n, 1]` (one per
/// sample), broadcast over the remaining dimensions — which lets a model learn to change the
/// mean brightness of an image.
pub fn offset_noise<const D: usize>(noise: Tensor<D>, offsets: Tensor<2>, strength: f64) -> Tensor<D> {
    let [n, c] = offsets.dims();
    let mut shape = [1usize; D];
    shape[0] = n;
    if D > 1 {
        shape[1] = c;
    }
    noise + offsets.reshape(shape).mul_scalar(strength)
}
