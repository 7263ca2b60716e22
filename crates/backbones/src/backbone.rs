//! The one interface the rest of the library uses for every network: a batch of flattened
//! samples `[n, features]`, one noise-conditioning scalar per sample (a timestep, c_noise(σ) or
//! a flow time) and an optional condition, to an output of the same layout (with twice the
//! features when the network also predicts a variance). Samplers reach it through
//! `diffusion_samplers::DiscreteModel` (or any other wrapper) with a closure
//! `|x, t| net.forward_flat(x, t, &cond)`; losses call it the same way.

use burn::tensor::{Int, Tensor};

use crate::dit::DiT;
use crate::mlp::Mlp;
use crate::unet::UNet;

/// Optional conditioning of a backbone beyond the noise level.
#[derive(Clone, Debug, Default)]
pub struct Conditioning {
    /// Class labels, `[B]` (the null class for unconditional rows under guidance).
    pub class_labels: Option<Tensor<1, Int>>,
    /// A context sequence for cross-attention, `[B, L, C_ctx]`.
    pub context: Option<Tensor<3>>,
}

/// Label dropout for classifier-free guidance training (Ho & Salimans 2022): each label whose
/// uniform draw is below `prob` becomes `null_class` (a dedicated row of the class table:
/// `num_classes` for DiT, the last class of a U-Net built with one extra class).
pub fn drop_labels(labels: &[i64], uniforms: &[f64], prob: f64, null_class: i64) -> Vec<i64> {
    assert_eq!(labels.len(), uniforms.len(), "one uniform per label");
    labels
        .iter()
        .zip(uniforms)
        .map(|(&y, &u)| if u < prob { null_class } else { y })
        .collect()
}

/// A denoising network.
pub trait Backbone {
    /// The shape of one input sample, e.g. `[3, 32, 32]` or `[2]`.
    fn sample_shape(&self) -> Vec<usize>;

    /// Output features per input feature: 1, or 2 with a learned variance.
    fn output_factor(&self) -> usize;

    /// The output for flattened samples `x` `[n, features]` at `noise_cond` `[n]`.
    fn forward_flat(&self, x: Tensor<2>, noise_cond: Tensor<1>, cond: &Conditioning) -> Tensor<2>;
}

fn unflatten(x: Tensor<2>, shape: &[usize]) -> Tensor<4> {
    let n = x.dims()[0];
    x.reshape([n, shape[0], shape[1], shape[2]])
}

fn flatten(y: Tensor<4>) -> Tensor<2> {
    let [n, c, h, w] = y.dims();
    y.reshape([n, c * h * w])
}

impl Backbone for Mlp {
    fn sample_shape(&self) -> Vec<usize> {
        vec![self.data_dim()]
    }

    fn output_factor(&self) -> usize {
        1
    }

    fn forward_flat(&self, x: Tensor<2>, noise_cond: Tensor<1>, _cond: &Conditioning) -> Tensor<2> {
        self.forward(x, noise_cond)
    }
}

impl Backbone for UNet {
    fn sample_shape(&self) -> Vec<usize> {
        let s = self.sample_size();
        vec![self.in_channels(), s, s]
    }

    fn output_factor(&self) -> usize {
        self.out_channels() / self.in_channels()
    }

    fn forward_flat(&self, x: Tensor<2>, noise_cond: Tensor<1>, cond: &Conditioning) -> Tensor<2> {
        flatten(self.forward(unflatten(x, &self.sample_shape()), noise_cond, cond))
    }
}

impl Backbone for DiT {
    fn sample_shape(&self) -> Vec<usize> {
        let s = self.sample_size();
        vec![self.in_channels(), s, s]
    }

    fn output_factor(&self) -> usize {
        self.out_channels() / self.in_channels()
    }

    /// Unlabelled rows get the null class.
    fn forward_flat(&self, x: Tensor<2>, noise_cond: Tensor<1>, cond: &Conditioning) -> Tensor<2> {
        let n = x.dims()[0];
        let labels = cond
            .class_labels
            .clone()
            .unwrap_or_else(|| Tensor::<1, Int>::full([n], self.null_class() as i64, &x.device()));
        flatten(self.forward_with_context(
            unflatten(x, &self.sample_shape()),
            noise_cond,
            labels,
            cond.context.clone(),
        ))
    }
}
