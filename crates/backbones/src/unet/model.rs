//! The U-Net itself: a down path of residual levels pushing skip connections, a middle block,
//! an up path concatenating them back (deepest first), with the timestep (and class)
//! embedding fed to every residual block and an optional context to every transformer.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, GroupNorm, Linear, PaddingConfig2d};
use burn::tensor::{Device, Int, Tensor};
use diffusion_kernels::{conv2d, group_norm_silu, linear, silu};

use super::config::{DownBlockKind, Resampling, UNetConfig, UpBlockKind};
use crate::attention::{Attention, SpatialSelfAttention};
pub use crate::backbone::Conditioning;
use crate::embedding::{SinusoidalOptions, sinusoidal_embedding};
use crate::init::SeededInit;
use crate::ops::{group_norm, upsample_nearest2x};
use crate::resnet::{Resample, ResnetBlock};
use crate::transformer::SpatialTransformer;

/// The timestep MLP: e = W₂ SiLU(W₁ sin(t)).
#[derive(Module, Debug)]
pub struct TimeEmbedding {
    /// W₁.
    pub linear_1: Linear,
    /// W₂.
    pub linear_2: Linear,
}

/// The attention after a residual block: self-attention or a spatial transformer.
#[derive(Module, Debug)]
pub struct AttentionLayer {
    /// Self-attention over the feature map.
    pub spatial: Option<SpatialSelfAttention>,
    /// A spatial transformer attending to a context.
    pub transformer: Option<SpatialTransformer>,
}

impl AttentionLayer {
    fn forward(&self, x: Tensor<4>, context: Option<&Tensor<3>>) -> Tensor<4> {
        match (&self.spatial, &self.transformer, context) {
            (Some(a), _, _) => a.forward(x),
            (None, Some(t), Some(ctx)) => t.forward(x, ctx),
            (None, Some(_), None) => {
                panic!("a cross-attention U-Net needs its context (checked in UNet::forward)")
            }
            (None, None, _) => x,
        }
    }
}

/// A resampling step: a convolution (with nearest upsampling before it, or stride 2) or a
/// residual up/down block.
#[derive(Module, Debug)]
pub struct Resampler {
    /// The convolution of conv resampling.
    pub conv: Option<Conv2d>,
    /// The residual block of resnet resampling.
    pub resnet: Option<ResnetBlock>,
}

impl Resampler {
    fn forward(&self, x: Tensor<4>, emb: &Tensor<2>, up: bool) -> Tensor<4> {
        match (&self.conv, &self.resnet) {
            (_, Some(block)) => block.forward(x, emb),
            (Some(conv), None) if up => conv2d(conv, upsample_nearest2x(x)),
            (Some(conv), None) => conv2d(conv, x),
            (None, None) => x,
        }
    }
}

/// One level of the down path.
#[derive(Module, Debug)]
pub struct DownLevel {
    /// The residual blocks.
    pub resnets: Vec<ResnetBlock>,
    /// One attention per residual block, or none.
    pub attentions: Vec<AttentionLayer>,
    /// The downsampler (none at the deepest level).
    pub downsamplers: Vec<Resampler>,
}

/// One level of the up path.
#[derive(Module, Debug)]
pub struct UpLevel {
    /// The residual blocks (one more than down, for the extra skip).
    pub resnets: Vec<ResnetBlock>,
    /// One attention per residual block, or none.
    pub attentions: Vec<AttentionLayer>,
    /// The upsampler (none at the top level).
    pub upsamplers: Vec<Resampler>,
}

/// The middle block: residual, attention, residual.
#[derive(Module, Debug)]
pub struct MidBlock {
    /// The two residual blocks.
    pub resnets: Vec<ResnetBlock>,
    /// The attention between them, or none.
    pub attentions: Vec<AttentionLayer>,
}

/// A U-Net denoiser.
#[derive(Module, Debug)]
pub struct UNet {
    /// 3×3 input convolution.
    pub conv_in: Conv2d,
    /// The timestep MLP.
    pub time_embedding: TimeEmbedding,
    /// The class embedding table.
    pub class_embedding: Option<Embedding>,
    /// The down levels.
    pub down_blocks: Vec<DownLevel>,
    /// The middle block.
    pub mid_block: MidBlock,
    /// The up levels, deepest first.
    pub up_blocks: Vec<UpLevel>,
    /// The output group norm.
    pub conv_norm_out: GroupNorm,
    /// 3×3 output convolution.
    pub conv_out: Conv2d,
    #[module(skip)]
    embedding: SinusoidalOptions,
    #[module(skip)]
    embed_dim: usize,
    #[module(skip)]
    sample: usize,
}

const PAD1: PaddingConfig2d = PaddingConfig2d::Explicit(1, 1, 1, 1);

struct Builder<'a> {
    config: &'a UNetConfig,
    init: SeededInit,
    device: &'a Device,
}

impl Builder<'_> {
    fn resnet(&mut self, c_in: usize, c_out: usize, resample: Resample) -> ResnetBlock {
        let options = self.config.resnet_options();
        ResnetBlock::new(&mut self.init, c_in, c_out, options, resample, self.device)
    }

    fn spatial(&mut self, c: usize, groups: Option<usize>) -> AttentionLayer {
        let heads = self.config.heads.at(c);
        let eps = self.config.norm_eps;
        AttentionLayer {
            spatial: Some(SpatialSelfAttention {
                group_norm: groups.map(|g| group_norm(g, c, eps, self.device)),
                attn: Attention::new(&mut self.init, c, c, heads, true, self.device),
            }),
            transformer: None,
        }
    }

    fn transformer(&mut self, c: usize) -> AttentionLayer {
        let cfg = self.config;
        let context = cfg.cross_attention_dim.unwrap_or(c);
        AttentionLayer {
            spatial: None,
            transformer: Some(SpatialTransformer::new(
                &mut self.init,
                c,
                cfg.heads.at(c),
                context,
                cfg.norm_num_groups,
                cfg.transformer_depth,
                self.device,
            )),
        }
    }

    fn down_conv(&mut self, c: usize) -> Resampler {
        let padding = match self.config.downsample_padding {
            0 => PaddingConfig2d::Explicit(0, 0, 1, 1),
            p => PaddingConfig2d::Explicit(p, p, p, p),
        };
        Resampler {
            conv: Some(self.init.conv2d(c, c, 3, 2, padding, self.device)),
            resnet: None,
        }
    }

    fn up_conv(&mut self, c: usize) -> Resampler {
        Resampler {
            conv: Some(self.init.conv2d(c, c, 3, 1, PAD1, self.device)),
            resnet: None,
        }
    }

    fn resnet_resampler(&mut self, c: usize, resample: Resample) -> Resampler {
        Resampler {
            conv: None,
            resnet: Some(self.resnet(c, c, resample)),
        }
    }
}

impl UNetConfig {
    /// The network, initialised on `device` from `seed` (PyTorch's default initialisation,
    /// drawn reproducibly on the host).
    ///
    /// # Panics
    /// If the configuration is invalid; check it with [`validate`](Self::validate) first when
    /// it comes from user input.
    pub fn init(&self, device: &Device) -> UNet {
        self.validate().unwrap_or_else(|e| panic!("{e}"));
        let mut b = Builder {
            config: self,
            init: SeededInit::new(self.seed),
            device,
        };
        let ch = self.block_out_channels.clone();
        let (c0, temb, last) = (ch[0], self.time_embed_dim(), ch.len() - 1);
        let conv_in = b.init.conv2d(self.in_channels, c0, 3, 1, PAD1, device);
        let time_embedding = TimeEmbedding {
            linear_1: b.init.linear(c0, temb, device),
            linear_2: b.init.linear(temb, temb, device),
        };
        let class_embedding = self.num_class_embeds.map(|n| b.init.embedding(n, temb, device));
        let mut down_blocks = Vec::new();
        let mut c_prev = c0;
        for (i, (&c, kind)) in ch.iter().zip(&self.down_blocks).enumerate() {
            let mut level = DownLevel {
                resnets: Vec::new(),
                attentions: Vec::new(),
                downsamplers: Vec::new(),
            };
            for j in 0..self.layers_per_block {
                level
                    .resnets
                    .push(b.resnet(if j == 0 { c_prev } else { c }, c, Resample::None));
                match kind {
                    DownBlockKind::Attn => level.attentions.push(b.spatial(c, Some(self.norm_num_groups))),
                    DownBlockKind::CrossAttn => level.attentions.push(b.transformer(c)),
                    _ => {}
                }
            }
            if i < last {
                level.downsamplers.push(match (kind, self.resample) {
                    (DownBlockKind::ResnetDown, _) | (DownBlockKind::Attn, Resampling::Resnet) => {
                        b.resnet_resampler(c, Resample::Down)
                    }
                    _ => b.down_conv(c),
                });
            }
            down_blocks.push(level);
            c_prev = c;
        }
        let cm = ch[last];
        let first = b.resnet(cm, cm, Resample::None);
        let attentions = if !self.mid_attention {
            vec![]
        } else if self.is_conditional() {
            vec![b.transformer(cm)]
        } else {
            vec![b.spatial(cm, self.mid_attention_groups())]
        };
        let second = b.resnet(cm, cm, Resample::None);
        let mid_block = MidBlock {
            resnets: vec![first, second],
            attentions,
        };
        let skips = self.skip_widths();
        let mut skip = skips.len();
        let mut up_blocks = Vec::new();
        let mut c_prev = cm;
        for (i, kind) in self.up_blocks.iter().enumerate() {
            let c = ch[last - i];
            let mut level = UpLevel {
                resnets: Vec::new(),
                attentions: Vec::new(),
                upsamplers: Vec::new(),
            };
            for _ in 0..=self.layers_per_block {
                skip -= 1;
                level
                    .resnets
                    .push(b.resnet(c_prev + skips[skip], c, Resample::None));
                match kind {
                    UpBlockKind::Attn => level.attentions.push(b.spatial(c, Some(self.norm_num_groups))),
                    UpBlockKind::CrossAttn => level.attentions.push(b.transformer(c)),
                    _ => {}
                }
                c_prev = c;
            }
            if i < last {
                level.upsamplers.push(match (kind, self.resample) {
                    (UpBlockKind::ResnetUp, _) | (UpBlockKind::Attn, Resampling::Resnet) => {
                        b.resnet_resampler(c, Resample::Up)
                    }
                    _ => b.up_conv(c),
                });
            }
            up_blocks.push(level);
        }
        let conv_norm_out = group_norm(self.norm_num_groups, c0, self.norm_eps, device);
        let conv_out = b.init.conv2d(c0, self.out_channels, 3, 1, PAD1, device);
        UNet {
            conv_in,
            time_embedding,
            class_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            embedding: SinusoidalOptions {
                flip_sin_to_cos: self.flip_sin_to_cos,
                freq_shift: self.freq_shift,
                ..SinusoidalOptions::default()
            },
            embed_dim: c0,
            sample: self.sample_size,
        }
    }
}

/// A forward pass that cannot run on its inputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("U-Net input: {0}")]
pub struct InputError(pub String);

impl UNet {
    /// The input's height and width.
    pub fn sample_size(&self) -> usize {
        self.sample
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.conv_in.weight.dims()[1]
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.conv_out.weight.dims()[0]
    }

    /// The conditioning vector: the MLP of the timestep embedding plus the class embedding.
    pub fn embed(&self, t: Tensor<1>, class_labels: Option<&Tensor<1, Int>>) -> Tensor<2> {
        let sin = sinusoidal_embedding(t, self.embed_dim, &self.embedding);
        let e = &self.time_embedding;
        let emb = linear(&e.linear_2, silu(linear(&e.linear_1, sin)));
        match (&self.class_embedding, class_labels) {
            (Some(table), Some(labels)) => {
                let [n] = labels.dims();
                emb + table
                    .forward(labels.clone().reshape([n, 1]))
                    .reshape([n, self.embed_dim * 4])
            }
            _ => emb,
        }
    }

    /// Checks the conditioning against the architecture.
    pub fn check(&self, x: &Tensor<4>, t: &Tensor<1>, cond: &Conditioning) -> Result<(), InputError> {
        let [b, c, _, _] = x.dims();
        let in_channels = self.conv_in.weight.dims()[1];
        if c != in_channels {
            return Err(InputError(format!(
                "{c} input channels, the model takes {in_channels}"
            )));
        }
        if t.dims()[0] != b {
            return Err(InputError(format!(
                "{} noise levels for a batch of {b}",
                t.dims()[0]
            )));
        }
        let cross = self.mid_block.attentions.iter().any(|a| a.transformer.is_some())
            || self
                .down_blocks
                .iter()
                .any(|l| l.attentions.iter().any(|a| a.transformer.is_some()));
        if cross && cond.context.is_none() {
            return Err(InputError(
                "this U-Net attends to a context: pass Conditioning::context".into(),
            ));
        }
        match (&cond.class_labels, &self.class_embedding) {
            (Some(_), None) => {
                return Err(InputError(
                    "class labels given to a U-Net without a class embedding".into(),
                ));
            }
            // As diffusers: a class-conditional U-Net needs its labels.
            (None, Some(table)) => {
                return Err(InputError(format!(
                    "this U-Net is class-conditional ({} labels): pass Conditioning::class_labels",
                    table.weight.dims()[0]
                )));
            }
            (Some(labels), Some(_)) if labels.dims()[0] != b => {
                return Err(InputError(format!(
                    "{} class labels for a batch of {b}",
                    labels.dims()[0]
                )));
            }
            _ => {}
        }
        Ok(())
    }

    /// The prediction for `x` `[B, C, H, W]` at noise conditioning `t` `[B]` (a timestep or
    /// c_noise(σ)).
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>, cond: &Conditioning) -> Tensor<4> {
        if let Err(e) = self.check(&x, &t, cond) {
            panic!("{e}");
        }
        let emb = self.embed(t, cond.class_labels.as_ref());
        let ctx = cond.context.as_ref();
        let mut h = conv2d(&self.conv_in, x);
        let mut skips = vec![h.clone()];
        for level in &self.down_blocks {
            for (j, resnet) in level.resnets.iter().enumerate() {
                h = resnet.forward(h, &emb);
                if let Some(attn) = level.attentions.get(j) {
                    h = attn.forward(h, ctx);
                }
                skips.push(h.clone());
            }
            for down in &level.downsamplers {
                h = down.forward(h, &emb, false);
                skips.push(h.clone());
            }
        }
        h = self.mid_block.resnets[0].forward(h, &emb);
        for attn in &self.mid_block.attentions {
            h = attn.forward(h, ctx);
        }
        h = self.mid_block.resnets[1].forward(h, &emb);
        for level in &self.up_blocks {
            for (j, resnet) in level.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up residual block");
                h = resnet.forward(Tensor::cat(vec![h, skip], 1), &emb);
                if let Some(attn) = level.attentions.get(j) {
                    h = attn.forward(h, ctx);
                }
            }
            for up in &level.upsamplers {
                h = up.forward(h, &emb, true);
            }
        }
        conv2d(&self.conv_out, group_norm_silu(&self.conv_norm_out, h))
    }
}
