//! Forward-pass FLOPs of the backbones, counted from the configuration.
//!
//! The count is 2 × the multiply–accumulates of every convolution, linear layer and attention
//! product (QKᵀ and the weighted sum of V), per image: a k × k convolution from C_in to C_out
//! channels at P output positions is 2 k² C_in C_out P; a linear layer from a to b applied to
//! L tokens is 2 a b L; self-attention over L tokens of width C adds 2 · 2 L² C. Norms,
//! activations, softmax, residual additions and embeddings of scalars are left out (they are
//! O(P C), small beside the convolutions). This is the convention of fvcore and of PyTorch's
//! `FlopCounterMode` for these operations; a training step is about three forward passes.

use crate::checkpoint::ModelConfig;
use crate::dit::DiTConfig;
use crate::unet::UNetConfig;
use crate::unet::config::{DownBlockKind, Resampling, UpBlockKind};

fn conv(k: usize, c_in: usize, c_out: usize, positions: usize) -> f64 {
    2.0 * (k * k * c_in * c_out * positions) as f64
}

fn linear(a: usize, b: usize, tokens: usize) -> f64 {
    2.0 * (a * b * tokens) as f64
}

/// Self-attention over `tokens` of width `c` attending to `context` tokens of width `c_ctx`.
fn attention(c: usize, tokens: usize, context: usize, c_ctx: usize) -> f64 {
    linear(c, c, tokens)
        + 2.0 * linear(c_ctx, c, context)
        + linear(c, c, tokens)
        + 4.0 * (tokens * context * c) as f64
}

impl UNetConfig {
    /// Forward FLOPs per image (module documentation).
    pub fn forward_flops(&self) -> f64 {
        let ch = &self.block_out_channels;
        let last = ch.len() - 1;
        let mut p = self.sample_size * self.sample_size;
        let resnet = |i: usize, o: usize, p: usize| {
            conv(3, i, o, p) + conv(3, o, o, p) + if i != o { conv(1, i, o, p) } else { 0.0 }
        };
        // A spatial transformer: projections in and out, and per layer self-attention, the
        // query and output projections of cross-attention (its keys, values and products
        // depend on the context length, which is the caller's, and are left out) and the
        // GEGLU feed-forward.
        let block_attention = |c: usize, p: usize, cross: bool| {
            if cross {
                let layer =
                    attention(c, p, p, c) + 2.0 * linear(c, c, p) + linear(c, 8 * c, p) + linear(4 * c, c, p);
                2.0 * linear(c, c, p) + self.transformer_depth as f64 * layer
            } else {
                attention(c, p, p, c)
            }
        };
        let mut total = conv(3, self.in_channels, ch[0], p);
        let mut c_prev = ch[0];
        for (i, (&c, kind)) in ch.iter().zip(&self.down_blocks).enumerate() {
            for j in 0..self.layers_per_block {
                total += resnet(if j == 0 { c_prev } else { c }, c, p);
                match kind {
                    DownBlockKind::Attn => total += block_attention(c, p, false),
                    DownBlockKind::CrossAttn => total += block_attention(c, p, true),
                    _ => {}
                }
            }
            if i < last {
                let resnet_down = matches!(
                    (kind, self.resample),
                    (DownBlockKind::ResnetDown, _) | (DownBlockKind::Attn, Resampling::Resnet)
                );
                p /= 4;
                total += if resnet_down {
                    resnet(c, c, p)
                } else {
                    conv(3, c, c, p)
                };
            }
            c_prev = c;
        }
        let cm = ch[last];
        total += 2.0 * resnet(cm, cm, p);
        if self.mid_attention {
            total += block_attention(cm, p, self.is_conditional());
        }
        let skips = self.skip_widths();
        let mut skip = skips.len();
        let mut c_prev = cm;
        for (i, kind) in self.up_blocks.iter().enumerate() {
            let c = ch[last - i];
            for _ in 0..=self.layers_per_block {
                skip -= 1;
                total += resnet(c_prev + skips[skip], c, p);
                match kind {
                    UpBlockKind::Attn => total += block_attention(c, p, false),
                    UpBlockKind::CrossAttn => total += block_attention(c, p, true),
                    _ => {}
                }
                c_prev = c;
            }
            if i < last {
                let resnet_up = matches!(
                    (kind, self.resample),
                    (UpBlockKind::ResnetUp, _) | (UpBlockKind::Attn, Resampling::Resnet)
                );
                p *= 4;
                total += if resnet_up {
                    resnet(c, c, p)
                } else {
                    conv(3, c, c, p)
                };
            }
        }
        total + conv(3, ch[0], self.out_channels, p)
    }
}

impl DiTConfig {
    /// Forward FLOPs per image (module documentation).
    pub fn forward_flops(&self) -> f64 {
        let (d, p) = (self.hidden_size, self.patch_size);
        let l = self.grid() * self.grid();
        let inner = self.mlp_ratio * d;
        let block = attention(d, l, l, d) + linear(d, inner, l) + linear(inner, d, l) + linear(d, 6 * d, 1);
        linear(self.in_channels * p * p, d, l)
            + self.depth as f64 * block
            + linear(d, 2 * d, 1)
            + linear(d, p * p * self.out_channels, l)
    }
}

impl ModelConfig {
    /// Forward FLOPs per sample (see [`flops`](crate::flops)).
    pub fn forward_flops(&self) -> f64 {
        match self {
            Self::Unet(c) => c.forward_flops(),
            Self::Dit(c) => c.forward_flops(),
            Self::Mlp(c) => {
                let h = c.hidden;
                let io = c.data_dim + 2 * c.fourier_features;
                linear(io, h, 1)
                    + c.blocks as f64 * 3.0 * linear(h, h, 1)
                    + linear(h, c.out_dim.unwrap_or(c.data_dim), 1)
            }
        }
    }
}
