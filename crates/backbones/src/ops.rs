//! Small tensor operations of the image backbones, written with reshapes so that they are
//! exact and differentiable on every backend.

use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::{Device, Tensor};

/// Nearest-neighbour upsampling by 2 (`F.interpolate(scale_factor=2, mode="nearest")`):
/// out[y, x] = in[y/2, x/2].
pub fn upsample_nearest2x(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .repeat_dim(3, 2)
        .repeat_dim(5, 2)
        .reshape([b, c, 2 * h, 2 * w])
}

/// 2×2 average pooling with stride 2 (`AvgPool2d(2, 2)`); odd sizes drop the last row/column.
pub fn avg_pool2x(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let (h2, w2) = (h / 2, w / 2);
    x.slice([0..b, 0..c, 0..2 * h2, 0..2 * w2])
        .reshape([b, c, h2, 2, w2, 2])
        .mean_dim(5)
        .mean_dim(3)
        .reshape([b, c, h2, w2])
}

/// A group norm with affine parameters (ones and zeros).
pub fn group_norm(groups: usize, channels: usize, eps: f64, device: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels)
        .with_epsilon(eps)
        .init(device)
}

/// `[B, C, H, W]` → `[B, H·W, C]` (tokens in row-major order).
pub fn to_tokens(x: Tensor<4>) -> Tensor<3> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h * w]).swap_dims(1, 2)
}

/// `[B, H·W, C]` → `[B, C, H, W]`.
pub fn from_tokens(x: Tensor<3>, h: usize, w: usize) -> Tensor<4> {
    let [b, _, c] = x.dims();
    x.swap_dims(1, 2).reshape([b, c, h, w])
}

/// GELU with the tanh approximation (PyTorch's `gelu(approximate="tanh")`), one pass forward
/// and one backward on flex (re-exported from diffusion-kernels).
pub use diffusion_kernels::gelu_tanh;
