//! The residual block of the DDPM / ADM U-Net (Ho et al. 2020, Appendix B; Dhariwal & Nichol
//! 2021, §3 and BigGAN up/down blocks), as diffusers' `ResnetBlock2D`:
//!
//! h = conv₁(↕(SiLU(GN₁(x)))); t = W SiLU(e);
//! h = GN₂(h + t) (additive) or GN₂(h)(1 + scale) + shift with [scale, shift] = t (scale-shift,
//! ADM's adaptive group norm); h = conv₂(dropout(SiLU(h))); out = skip(↕x) + h,
//!
//! where ↕ is nearest 2× upsampling or 2×2 average pooling in the up/down variants, and skip is
//! a 1×1 convolution when the widths differ.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Dropout, DropoutConfig, GroupNorm, Linear, PaddingConfig2d};
use burn::tensor::{Device, Tensor};
use diffusion_kernels::{self as kernels, conv2d, group_norm_silu, silu};

use crate::init::SeededInit;
use crate::ops::{avg_pool2x, group_norm, upsample_nearest2x};

/// Resampling inside a residual block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// None.
    None,
    /// Nearest 2× upsampling.
    Up,
    /// 2×2 average pooling.
    Down,
}

/// The options of a residual block.
#[derive(Clone, Copy, Debug)]
pub struct ResnetOptions {
    /// Group-norm groups.
    pub groups: usize,
    /// Group-norm ε.
    pub eps: f64,
    /// The width of the conditioning vector e.
    pub temb: usize,
    /// ADM's scale-shift conditioning.
    pub scale_shift: bool,
    /// Dropout before the second convolution.
    pub dropout: f64,
}

/// A residual block with time conditioning.
#[derive(Module, Debug)]
pub struct ResnetBlock {
    /// GN₁.
    pub norm1: GroupNorm,
    /// conv₁ (3×3).
    pub conv1: Conv2d,
    /// The conditioning projection (to C_out, or 2 C_out with scale-shift).
    pub time_emb_proj: Linear,
    /// GN₂.
    pub norm2: GroupNorm,
    /// Dropout.
    pub dropout: Dropout,
    /// conv₂ (3×3).
    pub conv2: Conv2d,
    /// The 1×1 skip convolution when the widths differ.
    pub conv_shortcut: Option<Conv2d>,
    #[module(skip)]
    resample: Resample,
    #[module(skip)]
    scale_shift: bool,
}

const PAD1: PaddingConfig2d = PaddingConfig2d::Explicit(1, 1, 1, 1);

impl ResnetBlock {
    /// A block `c_in → c_out`.
    pub fn new(
        init: &mut SeededInit,
        c_in: usize,
        c_out: usize,
        options: ResnetOptions,
        resample: Resample,
        device: &Device,
    ) -> Self {
        let proj = if options.scale_shift { 2 * c_out } else { c_out };
        Self {
            norm1: group_norm(options.groups, c_in, options.eps, device),
            conv1: init.conv2d(c_in, c_out, 3, 1, PAD1, device),
            time_emb_proj: init.linear(options.temb, proj, device),
            norm2: group_norm(options.groups, c_out, options.eps, device),
            dropout: DropoutConfig::new(options.dropout).init(),
            conv2: init.conv2d(c_out, c_out, 3, 1, PAD1, device),
            conv_shortcut: (c_in != c_out)
                .then(|| init.conv2d(c_in, c_out, 1, 1, PaddingConfig2d::Valid, device)),
            resample,
            scale_shift: options.scale_shift,
        }
    }

    /// Parameters of a block `c_in → c_out`.
    pub fn num_params(c_in: usize, c_out: usize, options: &ResnetOptions) -> usize {
        let proj = if options.scale_shift { 2 * c_out } else { c_out };
        let shortcut = if c_in != c_out { c_in * c_out + c_out } else { 0 };
        2 * c_in
            + (9 * c_in * c_out + c_out)
            + (options.temb * proj + proj)
            + 2 * c_out
            + (9 * c_out * c_out + c_out)
            + shortcut
    }

    /// `x` `[B, C_in, H, W]` with conditioning `emb` `[B, temb]`.
    pub fn forward(&self, x: Tensor<4>, emb: &Tensor<2>) -> Tensor<4> {
        let resample = |t: Tensor<4>| match self.resample {
            Resample::None => t,
            Resample::Up => upsample_nearest2x(t),
            Resample::Down => avg_pool2x(t),
        };
        let h = resample(group_norm_silu(&self.norm1, x.clone()));
        let x = resample(x);
        let h = conv2d(&self.conv1, h);
        let [b, c, _, _] = h.dims();
        let t = kernels::linear(&self.time_emb_proj, silu(emb.clone()));
        let h = if self.scale_shift {
            let scale = t.clone().slice([0..b, 0..c]).reshape([b, c, 1, 1]);
            let shift = t.slice([0..b, c..2 * c]).reshape([b, c, 1, 1]);
            silu(kernels::group_norm(&self.norm2, h) * scale.add_scalar(1.0) + shift)
        } else {
            group_norm_silu(&self.norm2, h + t.reshape([b, c, 1, 1]))
        };
        let h = conv2d(&self.conv2, kernels::dropout(&self.dropout, h));
        let skip = match &self.conv_shortcut {
            Some(conv) => conv2d(conv, x),
            None => x,
        };
        skip + h
    }
}
