//! A residual MLP denoiser for low-dimensional data (2-D toys, Gaussian mixtures).
//!
//! x ↦ Linear → [residual block]ᴮ → LayerNorm → SiLU → Linear, where each block adds the
//! projected time embedding: h + W₂ SiLU(W₁ LN(h) + U e(t)), and e(t) is an MLP of the
//! sinusoidal embedding of the noise-conditioning scalar t. Optionally the input is first
//! lifted by random Fourier features (Tancik et al. 2020): γ(x) = [x, sin(2π B x),
//! cos(2π B x)] with a fixed B ~ N(0, σ²) of m rows, which helps MLPs fit fine detail.
//!
//! [`Mlp::forward_jvp`] also returns the Jacobian-vector product ∂f/∂x · v by forward-mode
//! differentiation written in tensor operations, so that objectives needing input
//! derivatives (sliced and exact score matching) can be trained with burn's first-order
//! reverse-mode autodiff.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};
use diffusion_kernels::silu;

use crate::embedding::{SinusoidalOptions, sinusoidal_embedding};
use crate::init::SeededInit;

/// Configuration of an [`Mlp`].
#[derive(Config, Debug)]
pub struct MlpConfig {
    /// Dimension of the data (the input, and the output unless `out_dim` is set).
    pub data_dim: usize,
    /// Dimension of the output when it is not the data's (e.g. the logits of a noise-
    /// conditional classifier).
    #[config(default = "None")]
    pub out_dim: Option<usize>,
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
    /// The seed of the initial parameters (see [`SeededInit`]).
    #[config(default = 0)]
    pub seed: u64,
    /// Random Fourier features of the input: m frequencies (0: none).
    #[config(default = 0)]
    pub fourier_features: usize,
    /// The scale σ of the Fourier frequencies.
    #[config(default = 1.0)]
    pub fourier_scale: f64,
}

/// One residual block: h + W₂ SiLU(W₁ LN(h) + U e).
#[derive(Module, Debug)]
pub struct MlpBlock {
    norm: LayerNorm,
    fc1: Linear,
    time: Linear,
    fc2: Linear,
}

/// The ε of every layer norm of the MLP (burn's and PyTorch's default).
const LAYER_NORM_EPS: f64 = 1e-5;

impl MlpBlock {
    fn forward(&self, h: Tensor<2>, emb: Tensor<2>) -> Tensor<2> {
        let y = self.fc1.forward(self.norm.forward(h.clone())) + self.time.forward(emb);
        h + self.fc2.forward(silu(y))
    }

    /// (block(h), ∂block/∂h · ḣ).
    fn forward_jvp(&self, h: Tensor<2>, dh: Tensor<2>, emb: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let (n, dn) = layer_norm_jvp(&self.norm, h.clone(), dh.clone());
        let y = self.fc1.forward(n) + self.time.forward(emb);
        let dy = linear_jvp(&self.fc1, dn);
        let (a, da) = silu_jvp(y, dy);
        (h + self.fc2.forward(a), dh + linear_jvp(&self.fc2, da))
    }
}

/// The tangent of a linear layer: W ẋ (the bias drops out).
fn linear_jvp(layer: &Linear, dx: Tensor<2>) -> Tensor<2> {
    dx.matmul(layer.weight.val())
}

/// SiLU and its tangent: silu'(y) = σ(y) (1 + y (1 − σ(y))).
fn silu_jvp(y: Tensor<2>, dy: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let s = sigmoid(y.clone());
    let slope = (y.clone() * s.clone().neg().add_scalar(1.0)).add_scalar(1.0) * s;
    (silu(y), dy * slope)
}

/// Layer norm y = γ (h − μ)/r + β with r = √(var + ε), and its tangent
/// ẏ = γ (ċ − c ṙ/r)/r, where c = h − μ, ċ = ḣ − mean(ḣ), ṙ = mean(c ċ)/r.
fn layer_norm_jvp(norm: &LayerNorm, h: Tensor<2>, dh: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let [_, width] = h.dims();
    let gamma = norm.gamma.val().reshape([1, width]);
    let c = h.clone() - h.clone().mean_dim(1);
    let dc = dh.clone() - dh.mean_dim(1);
    let r = c.clone().square().mean_dim(1).add_scalar(LAYER_NORM_EPS).sqrt();
    let dr = (c.clone() * dc.clone()).mean_dim(1) / r.clone();
    let dy = (dc - c * dr / r.clone()) / r * gamma;
    (norm.forward(h), dy)
}

/// A residual MLP conditioned on a scalar per sample.
#[derive(Module, Debug)]
pub struct Mlp {
    input: Linear,
    #[module(skip)]
    fourier: FourierFeatures,
    time1: Linear,
    time2: Linear,
    blocks: Vec<MlpBlock>,
    out_norm: LayerNorm,
    output: Linear,
    time_embed_dim: usize,
    time_scale: f64,
}

impl MlpConfig {
    /// The network, initialised on `device` from `seed` (PyTorch's default Linear
    /// initialisation, drawn reproducibly on the host).
    pub fn init(&self, device: &Device) -> Mlp {
        let h = self.hidden;
        let e = self.time_embed_dim;
        let mut init = SeededInit::new(self.seed);
        let mut init_fourier = SeededInit::new(self.seed ^ 0xf0c1_e500);
        let mut linear = |a, b| init.linear(a, b, device);
        Mlp {
            fourier: FourierFeatures::new(
                &mut init_fourier,
                self.data_dim,
                self.fourier_features,
                self.fourier_scale,
            ),
            input: linear(self.data_dim + 2 * self.fourier_features, h),
            time1: linear(e, h),
            time2: linear(h, h),
            blocks: (0..self.blocks)
                .map(|_| MlpBlock {
                    norm: layer_norm(h, device),
                    fc1: linear(h, h),
                    time: linear(h, h),
                    fc2: linear(h, h),
                })
                .collect(),
            out_norm: layer_norm(h, device),
            output: linear(h, self.out_dim.unwrap_or(self.data_dim)),
            time_embed_dim: e,
            time_scale: self.time_scale,
        }
    }
}

/// Fixed random Fourier features γ(x) = [x, sin(2π B x), cos(2π B x)].
#[derive(Clone, Debug, Default)]
struct FourierFeatures {
    /// B, row-major `[count, dim]`.
    b: Vec<f32>,
    count: usize,
    dim: usize,
}

impl FourierFeatures {
    fn new(init: &mut SeededInit, dim: usize, count: usize, scale: f64) -> Self {
        let b = init
            .normal(count * dim)
            .into_iter()
            .map(|v| v * scale as f32)
            .collect();
        Self { b, count, dim }
    }

    /// 2π Bᵀ as a `[dim, count]` tensor like `x`.
    fn matrix(&self, x: &Tensor<2>) -> Tensor<2> {
        let two_pi = std::f64::consts::TAU;
        let values: Vec<f64> = (0..self.dim)
            .flat_map(|i| (0..self.count).map(move |k| (i, k)))
            .map(|(i, k)| two_pi * self.b[k * self.dim + i] as f64)
            .collect();
        diffusion_core::tensor::from_f64_like(values, [self.dim, self.count], x)
    }

    fn lift(&self, x: Tensor<2>) -> Tensor<2> {
        if self.count == 0 {
            return x;
        }
        let arg = x.clone().matmul(self.matrix(&x));
        Tensor::cat(vec![x, arg.clone().sin(), arg.cos()], 1)
    }

    /// (γ(x), γ'(x) v).
    fn lift_jvp(&self, x: Tensor<2>, v: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        if self.count == 0 {
            return (x, v);
        }
        let m = self.matrix(&x);
        let arg = x.clone().matmul(m.clone());
        let darg = v.clone().matmul(m);
        let (sin, cos) = (arg.clone().sin(), arg.cos());
        let tangent = Tensor::cat(vec![v, cos.clone() * darg.clone(), sin.clone().neg() * darg], 1);
        (Tensor::cat(vec![x, sin, cos], 1), tangent)
    }
}

fn layer_norm(width: usize, device: &Device) -> LayerNorm {
    LayerNormConfig::new(width)
        .with_epsilon(LAYER_NORM_EPS)
        .init(device)
}

impl Mlp {
    /// The dimension of the data.
    pub fn data_dim(&self) -> usize {
        self.input.weight.dims()[0] - 2 * self.fourier.count
    }

    /// The embedding of the conditioning scalars, `[n, hidden]`.
    fn embed(&self, t: Tensor<1>) -> Tensor<2> {
        let options = SinusoidalOptions {
            scale: self.time_scale,
            ..SinusoidalOptions::default()
        };
        let emb = sinusoidal_embedding(t, self.time_embed_dim, &options);
        silu(self.time2.forward(silu(self.time1.forward(emb))))
    }

    /// The output for inputs `x` (`[n, data_dim]`) at conditioning scalars `t` (`[n]`).
    pub fn forward(&self, x: Tensor<2>, t: Tensor<1>) -> Tensor<2> {
        let emb = self.embed(t);
        let mut h = self.input.forward(self.fourier.lift(x));
        for block in &self.blocks {
            h = block.forward(h, emb.clone());
        }
        self.output.forward(silu(self.out_norm.forward(h)))
    }

    /// The output and its Jacobian-vector product in x: (f(x, t), ∂f/∂x · v), both
    /// `[n, data_dim]`, for tangents `v` shaped like `x`. Exact (forward-mode), and
    /// differentiable in the parameters by reverse mode.
    pub fn forward_jvp(&self, x: Tensor<2>, t: Tensor<1>, v: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let emb = self.embed(t);
        let (x, v) = self.fourier.lift_jvp(x, v);
        let mut h = self.input.forward(x);
        let mut dh = linear_jvp(&self.input, v);
        for block in &self.blocks {
            (h, dh) = block.forward_jvp(h, dh, emb.clone());
        }
        let (n, dn) = layer_norm_jvp(&self.out_norm, h, dh);
        let (a, da) = silu_jvp(n, dn);
        (self.output.forward(a), linear_jvp(&self.output, da))
    }
}
