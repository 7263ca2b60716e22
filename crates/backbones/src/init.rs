//! Reproducible parameter initialisation: every weight drawn on the host from one seeded
//! ChaCha12 stream (`diffusion_core::noise`), so a model's initial parameters depend only on
//! its configuration and seed — not on the backend, the device's random state, or other
//! tests running beside it. Distributions follow PyTorch's defaults.

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use diffusion_core::noise::{sample_rng, uniform};
use rand_chacha::ChaCha12Rng;

/// A seeded source of initial parameters.
pub struct SeededInit {
    rng: ChaCha12Rng,
}

impl SeededInit {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: sample_rng(seed, u64::MAX),
        }
    }

    /// `count` values uniform on [−bound, bound).
    pub fn uniform(&mut self, count: usize, bound: f64) -> Vec<f32> {
        (0..count)
            .map(|_| ((2.0 * uniform(&mut self.rng) - 1.0) * bound) as f32)
            .collect()
    }

    /// A tensor of `shape` uniform on [−bound, bound), on `device`.
    pub fn tensor<const D: usize>(&mut self, shape: [usize; D], bound: f64, device: &Device) -> Tensor<D> {
        let values = self.uniform(shape.iter().product(), bound);
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    /// A linear layer `d_in → d_out` with PyTorch's default initialisation: weight and bias
    /// uniform on ±1/√d_in (Kaiming uniform with a = √5). burn stores the weight `[d_in, d_out]`.
    pub fn linear(&mut self, d_in: usize, d_out: usize, device: &Device) -> Linear {
        let bound = 1.0 / (d_in as f64).sqrt();
        let weight = self.tensor([d_in, d_out], bound, device);
        let bias = self.tensor([d_out], bound, device);
        Linear {
            weight: Param::from_tensor(weight),
            bias: Some(Param::from_tensor(bias)),
        }
    }
}
