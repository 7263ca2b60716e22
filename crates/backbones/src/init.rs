//! Reproducible parameter initialisation: every weight drawn on the host from one seeded
//! ChaCha12 stream (`diffusion_core::noise`), so a model's initial parameters depend only on
//! its configuration and seed — not on the backend, the device's random state, or other
//! tests running beside it. Distributions follow PyTorch's defaults.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, Linear, PaddingConfig2d};
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

impl SeededInit {
    /// Standard normal values (Box–Muller on the stream).
    pub fn normal(&mut self, count: usize) -> Vec<f32> {
        let mut out = vec![0.0f64; count];
        diffusion_core::noise::fill_normal(&mut self.rng, &mut out);
        out.into_iter().map(|v| v as f32).collect()
    }

    /// A 2-D convolution `c_in → c_out` with a k×k kernel, with PyTorch's default
    /// initialisation (weight and bias uniform on ±1/√(c_in k²)).
    pub fn conv2d(
        &mut self,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: PaddingConfig2d,
        device: &Device,
    ) -> Conv2d {
        let bound = 1.0 / ((c_in * kernel * kernel) as f64).sqrt();
        Conv2d {
            weight: Param::from_tensor(self.tensor([c_out, c_in, kernel, kernel], bound, device)),
            bias: Some(Param::from_tensor(self.tensor([c_out], bound, device))),
            stride: [stride, stride],
            kernel_size: [kernel, kernel],
            dilation: [1, 1],
            groups: 1,
            padding,
        }
    }

    /// An embedding table `[count, dim]` with PyTorch's N(0, 1) initialisation.
    pub fn embedding(&mut self, count: usize, dim: usize, device: &Device) -> Embedding {
        let values = self.normal(count * dim);
        Embedding {
            weight: Param::from_tensor(Tensor::from_data(TensorData::new(values, [count, dim]), device)),
        }
    }

    /// A linear layer without bias.
    pub fn linear_no_bias(&mut self, d_in: usize, d_out: usize, device: &Device) -> Linear {
        let bound = 1.0 / (d_in as f64).sqrt();
        Linear {
            weight: Param::from_tensor(self.tensor([d_in, d_out], bound, device)),
            bias: None,
        }
    }

    /// A linear layer whose weight and bias are zero (adaLN-Zero's modulation, DiT's output).
    pub fn linear_zeros(&mut self, d_in: usize, d_out: usize, device: &Device) -> Linear {
        Linear {
            weight: Param::from_tensor(Tensor::zeros([d_in, d_out], device)),
            bias: Some(Param::from_tensor(Tensor::zeros([d_out], device))),
        }
    }
}
