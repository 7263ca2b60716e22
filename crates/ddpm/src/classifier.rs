//! The objective of a noise-conditional classifier for classifier guidance (Dhariwal & Nichol
//! 2021, §4.1): the classifier p_φ(c | x_t, t) is trained on noised data, with t uniform and
//! x_t drawn from q(x_t | x₀) as for the diffusion model itself, by the cross-entropy
//!
//! L(φ) = E_{(x₀, c), t, ε} [ −log p_φ(c | √ᾱ_t x₀ + √(1 − ᾱ_t) ε, t) ].

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

use crate::error::{DdpmError, Result};
use crate::forward::ForwardProcess;

/// The cross-entropy of a noise-conditional classifier on noised data.
#[derive(Clone, Debug)]
pub struct NoisyClassifierLoss {
    /// The forward process the diffusion model uses.
    pub forward: ForwardProcess,
}

impl NoisyClassifierLoss {
    /// The objective for the forward process `forward`.
    pub fn new(forward: ForwardProcess) -> Self {
        Self { forward }
    }

    /// The loss of one batch: `x0` clean samples with their `labels`, `t` one timestep per
    /// sample, `noise` the ε of each sample. `classifier(x_t, t)` returns logits `[n, classes]`
    /// and receives the timesteps as floats on x₀'s device.
    pub fn loss<const D: usize>(
        &self,
        classifier: impl FnOnce(Tensor<D>, Tensor<1>) -> Tensor<2>,
        x0: Tensor<D>,
        labels: &[usize],
        t: &[usize],
        noise: Tensor<D>,
    ) -> Result<Tensor<1>> {
        let x_t = self.forward.sample(x0.clone(), noise, t)?;
        let t_float: Vec<f64> = t.iter().map(|&ti| ti as f64).collect();
        let t_tensor = diffusion_core::tensor::from_f64_like(t_float, [t.len()], &x0);
        cross_entropy(classifier(x_t, t_tensor), labels)
    }
}

/// The mean cross-entropy −(1/n) Σᵢ log softmax(logitsᵢ)\[cᵢ\] of logits `[n, classes]`.
pub fn cross_entropy(logits: Tensor<2>, labels: &[usize]) -> Result<Tensor<1>> {
    let [n, classes] = logits.dims();
    if labels.len() != n {
        return Err(DdpmError::BatchMismatch {
            what: "class labels",
            got: labels.len(),
            batch: n,
        });
    }
    if let Some(&label) = labels.iter().find(|&&c| c >= classes) {
        return Err(DdpmError::LabelOutOfRange { label, classes });
    }
    let index: Vec<i64> = labels.iter().map(|&c| c as i64).collect();
    let index = Tensor::<2, Int>::from_data(TensorData::new(index, [n, 1]), &logits.device());
    Ok(log_softmax(logits, 1).gather(1, index).mean().neg())
}
