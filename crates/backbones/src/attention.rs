//! Multi-head attention (Vaswani et al. 2017) as the diffusion backbones use it, through
//! `diffusion_kernels::attention` (on flex, a kernel that keeps one head's scores at a time in
//! training too; elsewhere burn's fused attention op, flash / memory-efficient kernels where the
//! backend has them, so the N×N score matrix of a 16×16 feature map is not materialised in
//! inference):
//!
//! - [`Attention`]: q from x, k and v from x or a context sequence, `heads` heads of width
//!   d = C/heads, softmax(q kᵀ/√d) v, an output projection;
//! - [`SpatialSelfAttention`]: the U-Net's residual self-attention over the H·W positions of
//!   a feature map, after a group norm (DDPM, ADM; diffusers' `Attention` with
//!   `residual_connection`).

use burn::module::Module;
use burn::nn::{GroupNorm, Linear};
use burn::tensor::{Device, Tensor};
use diffusion_kernels::linear;

use crate::init::SeededInit;
use crate::ops::{from_tokens, to_tokens};

/// Multi-head (cross-)attention with projections `to_q`, `to_k`, `to_v`, `to_out`.
#[derive(Module, Debug)]
pub struct Attention {
    /// Query projection.
    pub to_q: Linear,
    /// Key projection (from the context width for cross-attention).
    pub to_k: Linear,
    /// Value projection.
    pub to_v: Linear,
    /// Output projection.
    pub to_out: Linear,
    /// The number of heads.
    pub heads: usize,
}

impl Attention {
    /// `heads` heads over width `dim`, keys and values from width `context_dim`; q/k/v with
    /// or without bias, the output projection always with.
    pub fn new(
        init: &mut SeededInit,
        dim: usize,
        context_dim: usize,
        heads: usize,
        qkv_bias: bool,
        device: &Device,
    ) -> Self {
        let mut proj = |d_in: usize| {
            if qkv_bias {
                init.linear(d_in, dim, device)
            } else {
                init.linear_no_bias(d_in, dim, device)
            }
        };
        let (to_q, to_k, to_v) = (proj(dim), proj(context_dim), proj(context_dim));
        Self {
            to_q,
            to_k,
            to_v,
            to_out: init.linear(dim, dim, device),
            heads,
        }
    }

    /// Parameters of [`new`](Self::new).
    pub fn num_params(dim: usize, context_dim: usize, qkv_bias: bool) -> usize {
        let bias = if qkv_bias { dim } else { 0 };
        dim * dim + 2 * dim * context_dim + 3 * bias + dim * dim + dim
    }

    /// Attends from `x` (`[B, N, C]`) to `context` (`[B, L, C_ctx]`, or `x` itself).
    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>) -> Tensor<3> {
        let context = context.unwrap_or_else(|| x.clone());
        let q = linear(&self.to_q, x);
        let (k, v) = (linear(&self.to_k, context.clone()), linear(&self.to_v, context));
        linear(&self.to_out, diffusion_kernels::attention(q, k, v, self.heads))
    }
}

/// Residual self-attention over the positions of a feature map: x + Attn(GN(x)).
#[derive(Module, Debug)]
pub struct SpatialSelfAttention {
    /// The group norm before the attention (absent in some diffusers mid blocks).
    pub group_norm: Option<GroupNorm>,
    /// The attention.
    pub attn: Attention,
}

impl SpatialSelfAttention {
    /// `x` `[B, C, H, W]` → the same shape.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let normed = match &self.group_norm {
            Some(norm) => diffusion_kernels::group_norm(norm, x.clone()),
            None => x.clone(),
        };
        let out = self.attn.forward(to_tokens(normed), None);
        from_tokens(out, h, w) + x
    }
}
