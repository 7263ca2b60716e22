//! The configuration of a [`UNet`](super::UNet): the DDPM U-Net (Ho et al. 2020), the ADM
//! U-Net (Dhariwal & Nichol 2021) and the latent-diffusion U-Net with cross-attention
//! (Rombach et al. 2022) are all points of it, as diffusers' `UNet2DModel` and
//! `UNet2DConditionModel` are.

use serde::{Deserialize, Serialize};

use crate::attention::Attention;
use crate::resnet::{ResnetBlock, ResnetOptions};
use crate::transformer::SpatialTransformer;

/// What a down level holds besides its residual blocks, and how it downsamples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownBlockKind {
    /// Residual blocks, then a strided 3×3 convolution (`DownBlock2D`).
    Plain,
    /// Residual blocks each followed by self-attention; downsampling as [`UNetConfig::resample`]
    /// says (`AttnDownBlock2D`).
    Attn,
    /// Residual blocks, then a residual downsampling block (`ResnetDownsampleBlock2D`, ADM's
    /// `resblock_updown`).
    ResnetDown,
    /// Residual blocks each followed by a spatial transformer, then a strided convolution
    /// (`CrossAttnDownBlock2D`).
    CrossAttn,
}

/// What an up level holds besides its residual blocks, and how it upsamples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpBlockKind {
    /// Residual blocks, then nearest 2× upsampling and a 3×3 convolution (`UpBlock2D`).
    Plain,
    /// Residual blocks each followed by self-attention; upsampling as [`UNetConfig::resample`]
    /// says (`AttnUpBlock2D`).
    Attn,
    /// Residual blocks, then a residual upsampling block (`ResnetUpsampleBlock2D`).
    ResnetUp,
    /// Residual blocks each followed by a spatial transformer, then conv upsampling
    /// (`CrossAttnUpBlock2D`).
    CrossAttn,
}

/// How the attention levels resample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resampling {
    /// Strided / upsampling convolutions.
    #[default]
    Conv,
    /// Residual up/down blocks (BigGAN, ADM).
    Resnet,
}

/// How wide the attention heads are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Heads {
    /// One head as wide as the feature map (DDPM).
    Single,
    /// Heads of this width: C/width heads (ADM's `num_head_channels`).
    Width(usize),
    /// This many heads at every width (ADM's `num_heads`; latent diffusion).
    Count(usize),
}

impl Heads {
    /// The number of heads at `channels`.
    pub fn at(&self, channels: usize) -> usize {
        match *self {
            Self::Single => 1,
            Self::Width(w) => channels / w,
            Self::Count(n) => n,
        }
    }
}

/// A U-Net's architecture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    /// The input's height and width.
    pub sample_size: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels (2× the input for a learned variance).
    pub out_channels: usize,
    /// The width of each level.
    pub block_out_channels: Vec<usize>,
    /// Residual blocks per down level (up levels have one more).
    pub layers_per_block: usize,
    /// The kind of each down level.
    pub down_blocks: Vec<DownBlockKind>,
    /// The kind of each up level, deepest first.
    pub up_blocks: Vec<UpBlockKind>,
    /// Attention heads.
    pub heads: Heads,
    /// Self-attention (or a transformer) in the middle block.
    pub mid_attention: bool,
    /// Group-norm groups.
    pub norm_num_groups: usize,
    /// Group-norm ε.
    pub norm_eps: f64,
    /// The groups of the middle attention's norm. With scale-shift conditioning diffusers
    /// drops that norm unless this is set.
    pub attn_norm_num_groups: Option<usize>,
    /// Cosines first in the timestep embedding.
    pub flip_sin_to_cos: bool,
    /// The embedding's frequency shift (1: DDPM, 0: ADM).
    pub freq_shift: f64,
    /// ADM's scale-shift (adaptive group norm) conditioning instead of addition.
    pub scale_shift: bool,
    /// How the attention levels resample.
    pub resample: Resampling,
    /// Padding of the strided downsampling convolution: 1, or 0 for DDPM's one-sided pad.
    pub downsample_padding: usize,
    /// Classes of a class embedding added to the time embedding (the last may serve as the
    /// null class of classifier-free guidance).
    pub num_class_embeds: Option<usize>,
    /// The context width of cross-attention levels.
    pub cross_attention_dim: Option<usize>,
    /// Transformer blocks per spatial transformer.
    pub transformer_depth: usize,
    /// Dropout in the residual blocks.
    pub dropout: f64,
    /// The seed of the initial parameters.
    pub seed: u64,
}

/// A configuration that cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid U-Net configuration: {0}")]
pub struct ConfigError(pub String);

impl UNetConfig {
    /// Checks the shape rules a forward pass relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        let levels = self.block_out_channels.len();
        if levels == 0 {
            return bad("block_out_channels is empty".into());
        }
        if self.down_blocks.len() != levels || self.up_blocks.len() != levels {
            return bad(format!(
                "{levels} levels of block_out_channels but {} down and {} up blocks",
                self.down_blocks.len(),
                self.up_blocks.len()
            ));
        }
        if self.layers_per_block == 0 {
            return bad("layers_per_block must be at least 1".into());
        }
        for &c in &self.block_out_channels {
            if c % self.norm_num_groups != 0 {
                return bad(format!(
                    "width {c} is not a multiple of norm_num_groups = {}",
                    self.norm_num_groups
                ));
            }
            let heads = self.heads.at(c);
            if heads == 0 || c % heads != 0 {
                return bad(format!("width {c} cannot be split into {heads} attention heads"));
            }
        }
        let cross = self.down_blocks.contains(&DownBlockKind::CrossAttn)
            || self.up_blocks.contains(&UpBlockKind::CrossAttn);
        if cross && self.cross_attention_dim.is_none() {
            return bad("cross-attention levels need cross_attention_dim".into());
        }
        let downsamplings = levels - 1;
        if !self.sample_size.is_multiple_of(1 << downsamplings) {
            return bad(format!(
                "sample_size {} is not divisible by 2^{downsamplings} (one halving per level but the last)",
                self.sample_size
            ));
        }
        Ok(())
    }

    /// The width of the time embedding (4 × the first level's).
    pub fn time_embed_dim(&self) -> usize {
        4 * self.block_out_channels[0]
    }

    /// The residual block options.
    pub fn resnet_options(&self) -> ResnetOptions {
        ResnetOptions {
            groups: self.norm_num_groups,
            eps: self.norm_eps,
            temb: self.time_embed_dim(),
            scale_shift: self.scale_shift,
            dropout: self.dropout,
        }
    }

    /// Whether the middle attention has its group norm, and with how many groups.
    pub fn mid_attention_groups(&self) -> Option<usize> {
        match self.attn_norm_num_groups {
            Some(g) => Some(g),
            None if !self.scale_shift => Some(self.norm_num_groups),
            None => None,
        }
    }

    /// Whether the model attends to a context sequence.
    pub fn is_conditional(&self) -> bool {
        self.cross_attention_dim.is_some()
    }

    /// The exact number of parameters, from the configuration alone (no allocation).
    pub fn num_params(&self) -> usize {
        let ch = &self.block_out_channels;
        let c0 = ch[0];
        let temb = self.time_embed_dim();
        let opts = self.resnet_options();
        let resnet = |i: usize, o: usize| ResnetBlock::num_params(i, o, &opts);
        let spatial = |c: usize, gn: bool| if gn { 2 * c } else { 0 } + Attention::num_params(c, c, true);
        let transformer = |c: usize| {
            SpatialTransformer::num_params(c, self.cross_attention_dim.unwrap_or(c), self.transformer_depth)
        };
        let conv3 = |i: usize, o: usize| 9 * i * o + o;
        let mut total = conv3(self.in_channels, c0) + (c0 * temb + temb) + (temb * temb + temb);
        total += self.num_class_embeds.map_or(0, |n| n * temb);
        let last = ch.len() - 1;
        let mut c_prev = c0;
        for (i, (&c, kind)) in ch.iter().zip(&self.down_blocks).enumerate() {
            for j in 0..self.layers_per_block {
                total += resnet(if j == 0 { c_prev } else { c }, c);
                total += match kind {
                    DownBlockKind::Attn => spatial(c, true),
                    DownBlockKind::CrossAttn => transformer(c),
                    _ => 0,
                };
            }
            if i < last {
                total += match (kind, self.resample) {
                    (DownBlockKind::ResnetDown, _) | (DownBlockKind::Attn, Resampling::Resnet) => {
                        resnet(c, c)
                    }
                    _ => conv3(c, c),
                };
            }
            c_prev = c;
        }
        let cm = ch[last];
        total += 2 * resnet(cm, cm);
        if self.mid_attention {
            total += if self.is_conditional() {
                transformer(cm)
            } else {
                spatial(cm, self.mid_attention_groups().is_some())
            };
        }
        let skips = self.skip_widths();
        let mut skip = skips.len();
        let mut c_prev = cm;
        for (i, kind) in self.up_blocks.iter().enumerate() {
            let c = ch[last - i];
            for _ in 0..=self.layers_per_block {
                skip -= 1;
                total += resnet(c_prev + skips[skip], c);
                total += match kind {
                    UpBlockKind::Attn => spatial(c, true),
                    UpBlockKind::CrossAttn => transformer(c),
                    _ => 0,
                };
                c_prev = c;
            }
            if i < last {
                total += match (kind, self.resample) {
                    (UpBlockKind::ResnetUp, _) | (UpBlockKind::Attn, Resampling::Resnet) => resnet(c, c),
                    _ => conv3(c, c),
                };
            }
        }
        total + 2 * c0 + conv3(c0, self.out_channels)
    }

    /// The widths of the skip connections in the order the down path pushes them.
    pub fn skip_widths(&self) -> Vec<usize> {
        let ch = &self.block_out_channels;
        let mut skips = vec![ch[0]];
        for (i, &c) in ch.iter().enumerate() {
            skips.extend(std::iter::repeat_n(c, self.layers_per_block));
            if i + 1 < ch.len() {
                skips.push(c);
            }
        }
        skips
    }
}
