//! A residual MLP denoiser for low-dimensional data (2-D toys, Gaussian mixtures).
//!
//! x ↦ Linear → [residual block]ᴮ → LayerNorm → SiLU → Linear, where each block adds the
//! projected time embedding: h + W₂ SiLU(W₁ LN(h) + U e(t)), and e(t) is an MLP of the
//! sinusoidal embedding of the noise-conditioning scalar t.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use crate::embedding::{SinusoidalOptions, sinusoidal_embedding};

/// Configuration of an [`Mlp`].
#[derive(Config, Debug)]
pub struct MlpConfig {
    /// Dimension of the data (input and output).
    pub data_dim: usize,
    /// Width of the hidden layers.
    #[config(default = 256)]
    pub hidden: usize,
    /// Number of residual blocks.
    #[config(default = 3)]
    pub blocks: usize,
    /// Dimension of the sinusoidal embedding of t.
    #[config(default = 128)]
    pub time_embed_dim: usize,
    /// Factor on t before the embedding (e.g. 1000 when t lies in [0, 1]).
    #[config(default = 1.0)]
    pub time_scale: f64,
}

/// One residual block: h + W₂ SiLU(W₁ LN(h) + U e).
#[derive(Module, Debug)]
pub struct MlpBlock {
    norm: LayerNorm,
    fc1: Linear,
    time: Linear,
    fc2: Linear,
}

impl MlpBlock {
    fn forward(&self, h: Tensor<2>, emb: Tensor<2>) -> Tensor<2> {
        let y = self.fc1.forward(self.norm.forward(h.clone())) + self.time.forward(emb);
        h + self.fc2.forward(silu(y))
    }
}

/// A residual MLP conditioned on a scalar per sample.
#[derive(Module, Debug)]
pub struct Mlp {
    input: Linear,
    time1: Linear,
    time2: Linear,
    blocks: Vec<MlpBlock>,
    out_norm: LayerNorm,
    output: Linear,
    time_embed_dim: usize,
    time_scale: f64,
}

impl MlpConfig {
    /// The network, initialised on `device` (PyTorch's default Linear initialisation).
    pub fn init(&self, device: &Device) -> Mlp {
        let h = self.hidden;
        let e = self.time_embed_dim;
        let linear = |a, b| LinearConfig::new(a, b).init(device);
        Mlp {
            input: linear(self.data_dim, h),
            time1: linear(e, h),
            time2: linear(h, h),
            blocks: (0..self.blocks)
                .map(|_| MlpBlock {
                    norm: LayerNormConfig::new(h).init(device),
                    fc1: linear(h, h),
                    time: linear(h, h),
                    fc2: linear(h, h),
                })
                .collect(),
            out_norm: LayerNormConfig::new(h).init(device),
            output: linear(h, self.data_dim),
            time_embed_dim: e,
            time_scale: self.time_scale,
        }
    }
}

impl Mlp {
    /// The output for inputs `x` (`[n, data_dim]`) at conditioning scalars `t` (`[n]`).
    pub fn forward(&self, x: Tensor<2>, t: Tensor<1>) -> Tensor<2> {
        let options = SinusoidalOptions {
            scale: self.time_scale,
            ..SinusoidalOptions::default()
        };
        let emb = sinusoidal_embedding(t, self.time_embed_dim, &options);
        let emb = self.time2.forward(silu(self.time1.forward(emb)));
        let emb = silu(emb);
        let mut h = self.input.forward(x);
        for block in &self.blocks {
            h = block.forward(h, emb.clone());
        }
        self.output.forward(silu(self.out_norm.forward(h)))
    }
}
