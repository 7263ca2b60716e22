//! The diffusion transformer DiT (Peebles & Xie 2023): patchify, fixed 2-D sin-cos position
//! embedding, transformer blocks with adaLN-Zero conditioning on c = MLP(sin(t)) + E(y),
//! a modulated final layer and unpatchify; class labels with a null class for
//! classifier-free guidance, and optional learned-variance output channels.
//!
//! Block (adaLN-Zero): [γ₁, β₁, α₁, γ₂, β₂, α₂] = W SiLU(c) (zero-initialised);
//! h ← h + α₁ · Attn(LN(h)(1 + γ₁) + β₁); h ← h + α₂ · MLP(LN(h)(1 + γ₂) + β₂).
//!
//! Two layouts: the original shares one conditioning embedder; diffusers'
//! `DiTTransformer2DModel` stores a copy per block, uses frequency shift 1 in the timestep
//! sinusoid and ε = 1e-5 before the MLP. [`DiTConfig`] covers both, so diffusers checkpoints
//! load and reproduce diffusers' outputs.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, Linear, PaddingConfig2d};
use burn::tensor::{Device, Int, Tensor, TensorData};
use diffusion_kernels::{conv2d, gelu_tanh, linear, modulated_layer_norm, silu};
use serde::{Deserialize, Serialize};

use crate::attention::Attention;
use crate::embedding::{SinusoidalOptions, sinusoidal_embedding};
use crate::init::SeededInit;
use crate::unet::ConfigError;

/// The width of DiT's timestep sinusoid.
const FREQ_DIM: usize = 256;

/// A DiT's architecture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiTConfig {
    /// The input's height and width (latent size).
    pub input_size: usize,
    /// The patch size p.
    pub patch_size: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels (2× the input for a learned variance).
    pub out_channels: usize,
    /// The token width D.
    pub hidden_size: usize,
    /// The number of blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// The MLP's width as a multiple of D.
    pub mlp_ratio: usize,
    /// Classes; the label table has one more row, the null class.
    pub num_classes: usize,
    /// The probability of replacing a label by the null class in training.
    pub class_dropout_prob: f64,
    /// ε of the layer norm before the MLP (original 1e-6, diffusers 1e-5).
    pub mlp_norm_eps: f64,
    /// The timestep sinusoid's frequency shift (original 0, diffusers 1).
    pub time_freq_shift: f64,
    /// One conditioning embedder per block (diffusers' layout) instead of a shared one.
    pub per_block_conditioning: bool,
    /// Cross-attention to a context sequence of this width after each block's self-attention
    /// (PixArt-α, Chen et al. 2023: h ← h + CrossAttn(h, ctx), unmodulated).
    #[serde(default)]
    pub cross_attention_dim: Option<usize>,
    /// The seed of the initial parameters.
    pub seed: u64,
}

/// DiT's model sizes (Peebles & Xie 2023, Table 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiTSize {
    /// DiT-S: 12 blocks, D = 384, 6 heads.
    S,
    /// DiT-B: 12 blocks, D = 768, 12 heads.
    B,
    /// DiT-L: 24 blocks, D = 1024, 16 heads.
    L,
    /// DiT-XL: 28 blocks, D = 1152, 16 heads.
    XL,
}

impl DiTConfig {
    /// The paper's model of `size` and patch `p` for ImageNet 256² latents (32 × 32 × 4),
    /// 1000 classes, learned variance, in the original layout.
    pub fn paper(size: DiTSize, patch_size: usize) -> Self {
        let (depth, hidden_size, num_heads) = match size {
            DiTSize::S => (12, 384, 6),
            DiTSize::B => (12, 768, 12),
            DiTSize::L => (24, 1024, 16),
            DiTSize::XL => (28, 1152, 16),
        };
        Self {
            input_size: 32,
            patch_size,
            in_channels: 4,
            out_channels: 8,
            hidden_size,
            depth,
            num_heads,
            mlp_ratio: 4,
            num_classes: 1000,
            class_dropout_prob: 0.1,
            mlp_norm_eps: 1e-6,
            time_freq_shift: 0.0,
            per_block_conditioning: false,
            cross_attention_dim: None,
            seed: 0,
        }
    }

    /// Checks the shape rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        if self.patch_size == 0 || !self.input_size.is_multiple_of(self.patch_size) {
            return bad(format!(
                "input_size {} is not a multiple of patch_size {}",
                self.input_size, self.patch_size
            ));
        }
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            return bad(format!(
                "hidden_size {} cannot be split into {} heads",
                self.hidden_size, self.num_heads
            ));
        }
        if self.depth == 0 {
            return bad("depth must be at least 1".into());
        }
        Ok(())
    }

    /// Tokens per side, G = input/p.
    pub fn grid(&self) -> usize {
        self.input_size / self.patch_size
    }

    fn embedder_params(&self) -> usize {
        let d = self.hidden_size;
        (FREQ_DIM * d + d) + (d * d + d) + (self.num_classes + 1) * d
    }

    /// The exact number of trainable parameters (the position table is a constant).
    pub fn num_params(&self) -> usize {
        let (d, p) = (self.hidden_size, self.patch_size);
        let inner = self.mlp_ratio * d;
        let patch = self.in_channels * p * p * d + d;
        let cross = self
            .cross_attention_dim
            .map_or(0, |c| Attention::num_params(d, c, true));
        let block = Attention::num_params(d, d, true)
            + cross
            + (d * inner + inner)
            + (inner * d + d)
            + (d * 6 * d + 6 * d);
        let embedders = if self.per_block_conditioning {
            self.depth
        } else {
            1
        };
        let out = p * p * self.out_channels;
        patch
            + embedders * self.embedder_params()
            + self.depth * block
            + (d * 2 * d + 2 * d)
            + (d * out + out)
    }

    /// The count the original implementation reports, which includes its fixed position
    /// table (an `nn.Parameter` with `requires_grad=False`): DiT-XL/2 has 675,129,632.
    pub fn original_param_count(&self) -> usize {
        let shared = Self {
            per_block_conditioning: false,
            ..self.clone()
        };
        shared.num_params() + self.grid() * self.grid() * self.hidden_size
    }

    /// The network on `device`, initialised from `seed`: PyTorch's defaults, with the
    /// adaLN modulations and the output projection zero (adaLN-Zero).
    ///
    /// # Panics
    /// If the configuration is invalid (see [`validate`](Self::validate)).
    pub fn init(&self, device: &Device) -> DiT {
        self.validate()
            .unwrap_or_else(|e| panic!("invalid DiT configuration: {e}"));
        let mut init = SeededInit::new(self.seed);
        let (d, p) = (self.hidden_size, self.patch_size);
        let inner = self.mlp_ratio * d;
        let patch_embed = init.conv2d(self.in_channels, d, p, p, PaddingConfig2d::Valid, device);
        let count = if self.per_block_conditioning {
            self.depth
        } else {
            1
        };
        let embedders = (0..count)
            .map(|_| ConditionEmbedder {
                time: TimestepMlp {
                    linear_1: init.linear(FREQ_DIM, d, device),
                    linear_2: init.linear(d, d, device),
                },
                classes: init.embedding(self.num_classes + 1, d, device),
            })
            .collect();
        let transformer_blocks = (0..self.depth)
            .map(|_| DiTBlock {
                attn1: Attention::new(&mut init, d, d, self.num_heads, true, device),
                attn2: self
                    .cross_attention_dim
                    .map(|c| Attention::new(&mut init, d, c, self.num_heads, true, device)),
                ff: GeluMlp {
                    proj: init.linear(d, inner, device),
                    out: init.linear(inner, d, device),
                },
                modulation: init.linear_zeros(d, 6 * d, device),
            })
            .collect();
        DiT {
            patch_embed,
            embedders,
            transformer_blocks,
            proj_out_1: init.linear_zeros(d, 2 * d, device),
            proj_out_2: init.linear_zeros(d, p * p * self.out_channels, device),
            shape: Shape {
                patch: p,
                grid: self.grid(),
                hidden: d,
                out_channels: self.out_channels,
                num_classes: self.num_classes,
                mlp_norm_eps: self.mlp_norm_eps,
                freq_shift: self.time_freq_shift,
            },
        }
    }
}

/// The timestep MLP: W₂ SiLU(W₁ sin(t)).
#[derive(Module, Debug)]
pub struct TimestepMlp {
    /// W₁: 256 → D.
    pub linear_1: Linear,
    /// W₂: D → D.
    pub linear_2: Linear,
}

/// c = MLP(sin(t)) + E(y).
#[derive(Module, Debug)]
pub struct ConditionEmbedder {
    /// The timestep MLP.
    pub time: TimestepMlp,
    /// The label table (the last row is the null class).
    pub classes: Embedding,
}

/// The pointwise MLP with tanh-approximate GELU.
#[derive(Module, Debug)]
pub struct GeluMlp {
    /// D → 4D.
    pub proj: Linear,
    /// 4D → D.
    pub out: Linear,
}

/// A DiT block with adaLN-Zero.
#[derive(Module, Debug)]
pub struct DiTBlock {
    /// Self-attention.
    pub attn1: Attention,
    /// Cross-attention to the context, if the model has it.
    pub attn2: Option<Attention>,
    /// The MLP.
    pub ff: GeluMlp,
    /// The modulation W: D → 6D.
    pub modulation: Linear,
}

#[derive(Clone, Copy, Debug)]
struct Shape {
    patch: usize,
    grid: usize,
    hidden: usize,
    out_channels: usize,
    num_classes: usize,
    mlp_norm_eps: f64,
    freq_shift: f64,
}

/// A diffusion transformer.
#[derive(Module, Debug)]
pub struct DiT {
    /// The patch embedding, a p×p convolution with stride p.
    pub patch_embed: Conv2d,
    /// The conditioning embedders (one, or one per block).
    pub embedders: Vec<ConditionEmbedder>,
    /// The blocks.
    pub transformer_blocks: Vec<DiTBlock>,
    /// The final modulation: D → 2D (shift, then scale).
    pub proj_out_1: Linear,
    /// The output projection: D → p² C_out.
    pub proj_out_2: Linear,
    #[module(skip)]
    shape: Shape,
}

/// The 2-D sin-cos table `[G², D]`: token i·G + j gets [E(j) | E(i)] (column, then row), with
/// E(pos) = [sin(pos ω_k) | cos(pos ω_k)], ω_k = 10000^(−k/(D/4)) (MAE; Peebles & Xie).
pub fn sincos_position_table(grid: usize, dim: usize) -> Vec<f32> {
    let q = dim / 4;
    let omega: Vec<f64> = (0..q).map(|k| 1.0 / 10000f64.powf(k as f64 / q as f64)).collect();
    let half = |pos: f64, out: &mut Vec<f32>| {
        out.extend(omega.iter().map(|w| (pos * w).sin() as f32));
        out.extend(omega.iter().map(|w| (pos * w).cos() as f32));
    };
    let mut table = Vec::with_capacity(grid * grid * dim);
    for i in 0..grid {
        for j in 0..grid {
            half(j as f64, &mut table);
            half(i as f64, &mut table);
        }
    }
    table
}

impl DiT {
    /// c = MLP(sin(t)) + E(y) of embedder `k`.
    fn condition(&self, k: usize, t: &Tensor<1>, labels: &Tensor<1, Int>) -> Tensor<2> {
        let e = &self.embedders[k];
        let options = SinusoidalOptions {
            flip_sin_to_cos: true,
            freq_shift: self.shape.freq_shift,
            ..SinusoidalOptions::default()
        };
        let sin = sinusoidal_embedding(t.clone(), FREQ_DIM, &options);
        let time = linear(&e.time.linear_2, silu(linear(&e.time.linear_1, sin)));
        let [n] = labels.dims();
        time + e
            .classes
            .forward(labels.clone().reshape([n, 1]))
            .reshape([n, self.shape.hidden])
    }

    /// The input's height and width.
    pub fn sample_size(&self) -> usize {
        self.shape.grid * self.shape.patch
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.patch_embed.weight.dims()[1]
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.shape.out_channels
    }

    /// The null-class label of classifier-free guidance.
    pub fn null_class(&self) -> usize {
        self.shape.num_classes
    }

    /// Label dropout for classifier-free guidance training: labels whose uniform draw is
    /// below `prob` become the null class.
    pub fn drop_labels(&self, labels: &[i64], uniforms: &[f64], prob: f64) -> Vec<i64> {
        labels
            .iter()
            .zip(uniforms)
            .map(|(&y, &u)| {
                if u < prob {
                    self.shape.num_classes as i64
                } else {
                    y
                }
            })
            .collect()
    }

    /// The prediction for `x` `[B, C, H, W]` at noise conditioning `t` `[B]` and class
    /// `labels` `[B]` (the null class for unconditional rows).
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>, labels: Tensor<1, Int>) -> Tensor<4> {
        self.forward_with_context(x, t, labels, None)
    }

    /// [`forward`](Self::forward) with a context sequence `[B, L, C_ctx]` for the
    /// cross-attention blocks.
    ///
    /// # Panics
    /// If the model has cross-attention and no context is given, or the reverse.
    pub fn forward_with_context(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        labels: Tensor<1, Int>,
        context: Option<Tensor<3>>,
    ) -> Tensor<4> {
        let cross = self.transformer_blocks.first().is_some_and(|b| b.attn2.is_some());
        assert_eq!(
            cross,
            context.is_some(),
            "a DiT with cross-attention needs a context, and one without takes none"
        );
        let s = self.shape;
        let (g, d, p) = (s.grid, s.hidden, s.patch);
        let tokens = conv2d(&self.patch_embed, x);
        let b = tokens.dims()[0];
        let mut h = tokens.reshape([b, d, g * g]).swap_dims(1, 2);
        let pos = Tensor::<2>::from_data(
            TensorData::new(sincos_position_table(g, d), [g * g, d]),
            &h.device(),
        )
        .cast(h.dtype());
        h = h + pos.reshape([1, g * g, d]);
        let shared = self.condition(0, &t, &labels);
        for (k, block) in self.transformer_blocks.iter().enumerate() {
            let c = if self.embedders.len() > 1 {
                self.condition(k, &t, &labels)
            } else {
                shared.clone()
            };
            let m = linear(&block.modulation, silu(c));
            let chunk = |i: usize| m.clone().slice([0..b, i * d..(i + 1) * d]);
            let (shift_msa, scale_msa, gate_msa) = (chunk(0), chunk(1), chunk(2));
            let (shift_mlp, scale_mlp, gate_mlp) = (chunk(3), chunk(4), chunk(5));
            let n = modulated_layer_norm(h.clone(), shift_msa, scale_msa, 1e-6);
            h = h + block.attn1.forward(n, None) * gate_msa.reshape([b, 1, d]);
            if let (Some(attn2), Some(ctx)) = (&block.attn2, &context) {
                h = h.clone() + attn2.forward(h, Some(ctx.clone()));
            }
            let n = modulated_layer_norm(h.clone(), shift_mlp, scale_mlp, s.mlp_norm_eps);
            let mlp = linear(&block.ff.out, gelu_tanh(linear(&block.ff.proj, n)));
            h = h + mlp * gate_mlp.reshape([b, 1, d]);
        }
        let m = linear(&self.proj_out_1, silu(shared));
        let (shift, scale) = (m.clone().slice([0..b, 0..d]), m.slice([0..b, d..2 * d]));
        let h = linear(&self.proj_out_2, modulated_layer_norm(h, shift, scale, 1e-6));
        // Unpatchify: token (i, j), within it (r, s, c) → out[c, i p + r, j p + s].
        h.reshape([b, g, g, p, p, s.out_channels])
            .permute([0, 5, 1, 3, 2, 4])
            .reshape([b, s.out_channels, g * p, g * p])
    }
}
