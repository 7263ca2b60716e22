//! The spatial transformer of latent-diffusion U-Nets (Rombach et al. 2022, §3.3; diffusers'
//! `Transformer2DModel` with `BasicTransformerBlock`): cross-attention conditioning on a
//! context sequence τ(y) (text tokens or any embedding sequence).
//!
//! x′ = x + proj_out(T(proj_in(GN(x)))), with each block of T
//! h ← h + SelfAttn(LN₁(h)); h ← h + CrossAttn(LN₂(h), ctx); h ← h + FF(LN₃(h)),
//! FF(h) = W₂ (a ⊙ GELU(g)) with [a, g] = W₁ h (GEGLU, Shazeer 2020).

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm, LayerNormConfig, Linear, PaddingConfig2d};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};
use diffusion_kernels::{self as kernels, conv2d};

use crate::attention::Attention;
use crate::init::SeededInit;
use crate::ops::{from_tokens, group_norm, to_tokens};

/// GEGLU feed-forward: W₂ (a ⊙ GELU(g)), [a, g] = W₁ h, inner width 4 C.
#[derive(Module, Debug)]
pub struct GegluFeedForward {
    /// W₁: C → 8 C (value then gate).
    pub proj: Linear,
    /// W₂: 4 C → C.
    pub out: Linear,
}

impl GegluFeedForward {
    fn forward(&self, h: Tensor<3>) -> Tensor<3> {
        let [b, n, _] = h.dims();
        let a = kernels::linear(&self.proj, h);
        let inner = a.dims()[2] / 2;
        let value = a.clone().slice([0..b, 0..n, 0..inner]);
        let gate = a.slice([0..b, 0..n, inner..2 * inner]);
        kernels::linear(&self.out, value * gelu(gate))
    }
}

/// One transformer block: self-attention, cross-attention, GEGLU feed-forward.
#[derive(Module, Debug)]
pub struct TransformerBlock {
    /// LN₁.
    pub norm1: LayerNorm,
    /// Self-attention.
    pub attn1: Attention,
    /// LN₂.
    pub norm2: LayerNorm,
    /// Cross-attention to the context.
    pub attn2: Attention,
    /// LN₃.
    pub norm3: LayerNorm,
    /// The feed-forward.
    pub ff: GegluFeedForward,
}

/// A spatial transformer over a feature map, conditioned on a context sequence.
#[derive(Module, Debug)]
pub struct SpatialTransformer {
    /// The group norm of the input (ε = 1e-6).
    pub norm: GroupNorm,
    /// 1×1 convolution in.
    pub proj_in: Conv2d,
    /// The blocks.
    pub transformer_blocks: Vec<TransformerBlock>,
    /// 1×1 convolution out.
    pub proj_out: Conv2d,
}

impl SpatialTransformer {
    /// A transformer over `channels` with `heads` heads, attending to a context of width
    /// `context_dim`, `depth` blocks.
    pub fn new(
        init: &mut SeededInit,
        channels: usize,
        heads: usize,
        context_dim: usize,
        groups: usize,
        depth: usize,
        device: &Device,
    ) -> Self {
        let ln = || LayerNormConfig::new(channels).init(device);
        let conv1 =
            |init: &mut SeededInit| init.conv2d(channels, channels, 1, 1, PaddingConfig2d::Valid, device);
        let norm = group_norm(groups, channels, 1e-6, device);
        let proj_in = conv1(init);
        let transformer_blocks = (0..depth)
            .map(|_| TransformerBlock {
                norm1: ln(),
                attn1: Attention::new(init, channels, channels, heads, false, device),
                norm2: ln(),
                attn2: Attention::new(init, channels, context_dim, heads, false, device),
                norm3: ln(),
                ff: GegluFeedForward {
                    proj: init.linear(channels, 8 * channels, device),
                    out: init.linear(4 * channels, channels, device),
                },
            })
            .collect();
        let proj_out = conv1(init);
        Self {
            norm,
            proj_in,
            transformer_blocks,
            proj_out,
        }
    }

    /// Parameters of [`new`](Self::new).
    pub fn num_params(channels: usize, context_dim: usize, depth: usize) -> usize {
        let c = channels;
        let block = 3 * 2 * c
            + Attention::num_params(c, c, false)
            + Attention::num_params(c, context_dim, false)
            + (c * 8 * c + 8 * c)
            + (4 * c * c + c);
        2 * c + 2 * (c * c + c) + depth * block
    }

    /// `x` `[B, C, H, W]` attending to `context` `[B, L, C_ctx]`.
    pub fn forward(&self, x: Tensor<4>, context: &Tensor<3>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let mut t = to_tokens(conv2d(&self.proj_in, kernels::group_norm(&self.norm, x.clone())));
        for block in &self.transformer_blocks {
            t = t.clone() + block.attn1.forward(block.norm1.forward(t), None);
            t = t.clone() + block.attn2.forward(block.norm2.forward(t), Some(context.clone()));
            t = t.clone() + block.ff.forward(block.norm3.forward(t));
        }
        conv2d(&self.proj_out, from_tokens(t, h, w)) + x
    }
}
